//! The SPIFFE Workload API as the identity's source (`spec.identity.workloadApi`): the X509-SVID
//! (chain and key), the bundle of its trust domain and the federated bundles, streamed by a
//! SPIRE agent (or any Workload API server) over its Unix socket.
//!
//! The `spiffe` crate's `X509Source` holds the stream: it reconnects with backoff, keeps the
//! last good material while the agent is away, and checks every SVID as the X509-SVID spec
//! says. What it serves is copied here into a [`Svid`], the form a runtime build takes (as
//! `Material`), and every update rebuilds the runtime: new connections get the new SVID and
//! bundles, open ones keep theirs, as with rotated files.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::{X509Source, X509SourceUpdates, X509Svid};

use meshgate_config::model::{IdentitySource, WorkloadApi};
use meshgate_config::Model;

/// What the Workload API served, as a runtime build takes it.
#[derive(Debug)]
pub struct Svid {
    /// Where it came from (`unix:///...`), for `/certs` and errors.
    pub endpoint: String,
    pub spiffe_id: String,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8, as the Workload API sends it.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The roots of the SVID's own trust domain.
    pub bundle: Vec<CertificateDer<'static>>,
    /// Every other trust domain's roots, by trust domain name, sorted.
    pub federated: Vec<(String, Vec<CertificateDer<'static>>)>,
}

impl Svid {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Whether `other` holds the same chain, key and bundles.
    pub fn same(&self, other: &Svid) -> bool {
        self.chain == other.chain
            && self.key.secret_pkcs8_der() == other.key.secret_pkcs8_der()
            && self.bundle == other.bundle
            && self.federated == other.federated
    }
}

/// A connected Workload API stream, for one `workloadApi` setting.
#[derive(Debug, Clone)]
pub struct Source {
    pub settings: WorkloadApi,
    endpoint: String,
    source: X509Source,
}

/// The Workload API's endpoint when the configuration names none.
const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

impl Source {
    /// Connects and waits for the first SVID, for at most `startTimeout`.
    pub async fn connect(settings: &WorkloadApi) -> Result<Self, String> {
        let endpoint = match &settings.socket {
            Some(s) => s.clone(),
            None => std::env::var(ENDPOINT_ENV).map_err(|_| {
                format!("spec.identity.workloadApi has no socket and {ENDPOINT_ENV} is not set")
            })?,
        };
        let mut builder = X509Source::builder()
            .endpoint(&endpoint)
            .reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10))
            .initial_sync_timeout(settings.start_timeout);
        if let Some(id) = &settings.spiffe_id {
            builder = builder.picker(ById(id.clone()));
        }
        let source = builder.build().await.map_err(|e| {
            format!(
                "Workload API {endpoint}: no usable X509-SVID within {:?}: {}",
                settings.start_timeout,
                chain(&e)
            )
        })?;
        Ok(Self {
            settings: settings.clone(),
            endpoint,
            source,
        })
    }

    /// Updates after the first: `changed()` resolves on each new SVID or bundle, and fails once
    /// the source is closed.
    pub fn updated(&self) -> X509SourceUpdates {
        self.source.updated()
    }

    /// The material served last.
    pub fn current(&self) -> Result<Arc<Svid>, String> {
        let fail =
            |e: &dyn std::error::Error| format!("Workload API {}: {}", self.endpoint, chain(e));
        let svid = self.source.svid().map_err(|e| fail(&e))?;
        let bundles = self.source.bundle_set().map_err(|e| fail(&e))?;
        let own = svid.spiffe_id().trust_domain_name().to_string();
        let mut bundle = Vec::new();
        let mut federated = Vec::new();
        for (td, b) in bundles.iter() {
            let roots: Vec<_> = b
                .authorities()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect();
            if td.as_str() == own {
                bundle = roots;
            } else {
                federated.push((td.as_str().to_string(), roots));
            }
        }
        federated.sort_by(|a, b| a.0.cmp(&b.0));
        if bundle.is_empty() {
            return Err(format!(
                "Workload API {}: no bundle for the SVID's trust domain `{own}`",
                self.endpoint
            ));
        }
        Ok(Arc::new(Svid {
            endpoint: self.endpoint.clone(),
            spiffe_id: svid.spiffe_id().to_string(),
            chain: svid
                .cert_chain()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect(),
            key: PrivatePkcs8KeyDer::from(svid.private_key().as_bytes().to_vec()),
            bundle,
            federated,
        }))
    }

    /// Stops the stream.
    pub async fn shutdown(&self) {
        self.source.shutdown().await;
    }
}

/// `workloadApi.spiffeId`: the SVID of that ID, among those served.
struct ById(String);

impl spiffe::x509_source::SvidPicker for ById {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        svids
            .iter()
            .position(|s| s.spiffe_id().to_string() == self.0)
    }
}

/// An error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// What the Workload API of `model`'s identity serves now, fetched once on a runtime of its
/// own, for the commands that build a configuration without running it (`meshgate check`,
/// `meshgate pki inspect`). `None` for an identity from files.
pub fn fetch_once(model: &Model) -> Result<Option<Arc<Svid>>, String> {
    let Some(IdentitySource::WorkloadApi(settings)) =
        model.proxy.identity.as_ref().map(|i| &i.source)
    else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("Workload API: {e}"))?;
    runtime.block_on(async {
        let source = Source::connect(settings).await?;
        let svid = source.current();
        source.shutdown().await;
        svid.map(Some)
    })
}
