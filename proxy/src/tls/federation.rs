//! SPIFFE bundle endpoints (SPIFFE Federation): a trust domain's bundle fetched over HTTPS and
//! refreshed by its `spiffe_refresh_hint`, the server authenticated as the endpoint's profile
//! says: `https_web` (Web PKI: a certificate valid for the URL's host, under the configured or
//! the system's roots) or `https_spiffe` (the endpoint's SPIFFE ID, verified against the bundle
//! of its trust domain as the proxy holds it).
//!
//! What was fetched outlives configurations: it is kept here by URL, and every runtime build
//! takes the roots from it (`Material`), so a reload does not forget a bundle and a fetch
//! rebuilds the runtime only when the roots changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

use meshgate_config::model::{BundleEndpoint, EndpointProfile};

use super::bundle::SpiffeBundle;
use super::credentials::{Revocation, TrustRoots};
use super::verify::SpiffeServerVerifier;

/// The largest bundle document read.
const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// How long one fetch may take, connection to the last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Where Linux distributions keep the system's roots (as Go's crypto/x509 looks for them).
const SYSTEM_ROOTS: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The bundles fetched so far, by URL.
#[derive(Debug, Default)]
pub struct Fetched {
    bundles: Mutex<HashMap<String, FetchedBundle>>,
}

/// One endpoint's last good bundle, and when to fetch it again.
#[derive(Debug, Clone)]
struct FetchedBundle {
    roots: Vec<CertificateDer<'static>>,
    sequence: Option<u64>,
    next: Instant,
}

impl Fetched {
    /// Every URL's roots, for a runtime build.
    pub fn roots(&self) -> HashMap<String, Vec<CertificateDer<'static>>> {
        self.lock()
            .iter()
            .map(|(url, b)| (url.clone(), b.roots.clone()))
            .collect()
    }

    /// Whether `url` is due for a fetch (never fetched, or its refresh has come).
    pub fn due(&self, url: &str, now: Instant) -> bool {
        self.lock().get(url).is_none_or(|b| b.next <= now)
    }

    /// The earliest time any of `urls` is due; `None` when one never was fetched.
    pub fn next_due<'a>(&self, urls: impl Iterator<Item = &'a str>) -> Option<Instant> {
        let bundles = self.lock();
        let mut next: Option<Instant> = None;
        for url in urls {
            let at = bundles.get(url)?.next;
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// Keeps what `url` served; whether its roots changed.
    pub fn store(&self, url: &str, bundle: SpiffeBundle, refresh: Duration) -> bool {
        let hinted = bundle
            .refresh_hint
            .map(Duration::from_secs)
            .map(|h| h.clamp(Duration::from_secs(1), Duration::from_secs(86_400)));
        let next = Instant::now()
            .checked_add(hinted.unwrap_or(refresh))
            .unwrap_or_else(Instant::now);
        let mut bundles = self.lock();
        let changed = bundles
            .get(url)
            .is_none_or(|b| b.roots != bundle.x509_authorities);
        bundles.insert(
            url.to_string(),
            FetchedBundle {
                roots: bundle.x509_authorities,
                sequence: bundle.sequence,
                next,
            },
        );
        changed
    }

    /// A failed fetch of `url`: tried again after `retry` (the last good bundle stays).
    pub fn failed(&self, url: &str, retry: Duration) {
        let next = Instant::now()
            .checked_add(retry)
            .unwrap_or_else(Instant::now);
        if let Some(b) = self.lock().get_mut(url) {
            b.next = next;
        }
    }

    /// `spiffe_sequence` of the bundle `url` served last, for `/certs`.
    pub fn sequence(&self, url: &str) -> Option<u64> {
        self.lock().get(url).and_then(|b| b.sequence)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FetchedBundle>> {
        self.bundles.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Fetches the bundle `endpoint` serves. `trust` is what the proxy trusts now (for
/// `https_spiffe`: the bundle of the endpoint's own trust domain, or `rootCerts`).
pub async fn fetch(
    endpoint: &BundleEndpoint,
    trust: Option<&TrustRoots>,
    provider: &Arc<CryptoProvider>,
) -> Result<SpiffeBundle, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(endpoint, trust, provider))
        .await
        .map_err(|_| format!("no bundle within {FETCH_TIMEOUT:?}"))?
}

async fn fetch_inner(
    endpoint: &BundleEndpoint,
    trust: Option<&TrustRoots>,
    provider: &Arc<CryptoProvider>,
) -> Result<SpiffeBundle, String> {
    let uri: http::Uri = endpoint.url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let config = client_config(endpoint, trust, provider)?;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .map_err(|e| format!("`{host}` is not a server name: {e}"))?;
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let e = super::verify::peer_error(e);
            format!("TLS handshake refused ({}): {e}", e.reason())
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the bundle: {e}"))?
        .to_bytes();
    super::bundle::parse(&body)
}

/// The TLS client of a profile.
fn client_config(
    endpoint: &BundleEndpoint,
    trust: Option<&TrustRoots>,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match &endpoint.profile {
        EndpointProfile::HttpsWeb { ca_certificates } => {
            let roots = web_roots(ca_certificates.as_deref())?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        EndpointProfile::HttpsSpiffe { spiffe_id } => {
            let trust = trust.ok_or("https_spiffe needs the MeshGateway identity's bundle")?;
            let td = spiffe_id
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or("");
            let roots = trust.of_domain(td).unwrap_or(&trust.default).clone();
            if roots.is_empty() {
                return Err(format!(
                    "no roots of trust domain `{td}` yet to authenticate the endpoint"
                ));
            }
            let verifier = SpiffeServerVerifier::new(
                &TrustRoots::single(roots),
                vec![spiffe_id.clone()],
                false,
                &[],
                provider.clone(),
                &Revocation::default(),
            )
            .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `https_web` roots: the configured file, or the system's.
fn web_roots(file: Option<&std::path::Path>) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_ROOTS
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
            .ok_or("no system roots found (give caCertificates)")?,
    };
    let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        // A system bundle may hold a certificate webpki cannot use; the rest still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!("{}: no usable root", path.display()));
    }
    Ok(roots)
}
