//! Runtime: a compiled `Model` plus everything built from it and its material (the files it
//! names, read beforehand) — our credentials, the rustls configs, the upstream pools, the HTTP
//! server builders, the metric series. Building is pure: no file is read here. Connections
//! hold an `Arc<Runtime>`; the request path takes no lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use meshgate_config::model::{IdentitySource, Listener, ListenerProtocol};
use meshgate_config::{Code, Model, Warning};

use crate::access_log::AccessLog;
use crate::forward::Upstreams;
use crate::material::{Material, Missing};
use crate::metrics::{ListenerCounts, Metrics, TrustDomainCounts};
use crate::serve::HttpServers;
use crate::tag::Owned;
use crate::tls::credentials::{issuer_bindings, Credentials};
use crate::tls::files::ServerFiles;
use crate::tls::server::ServerTlsConfigs;

/// One configuration, ready to serve.
#[derive(Debug)]
pub struct Runtime {
    pub model: Arc<Model>,
    /// Our workload identity, when the configuration names one.
    pub credentials: Option<Credentials>,
    /// Per listener of the model, in model order.
    pub listeners: Vec<ListenerRuntime>,
    pub upstreams: Upstreams,
    pub http: HttpServers,
    pub metrics: Arc<Metrics>,
    /// This configuration's requests by source trust domain.
    pub trust_domains: TrustDomainCounts,
    /// The access log, when the MeshGateway asks for one.
    pub access_log: Option<AccessLog>,
    /// The request headers the proxy owns; shared with every request body, for its trailers.
    pub owned: Arc<Owned>,
    /// What building found worth a warning (our identity's trust domain).
    pub warnings: Vec<Warning>,
    /// 1 for the configuration started with, one more for each swapped in after it
    /// (`/config_dump`): kept with the configuration, so the two are always read together.
    pub version: u64,
    /// Listener index by (Gateway port, configured address), for the accept loops.
    by_key: HashMap<ListenerKey, usize>,
}

/// A listener across reloads: its Gateway port and configured address.
pub type ListenerKey = (u16, SocketAddr);

/// What one listener of a configuration needs at run time.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// The TLS configs of an HTTPS listener.
    pub tls: Option<ServerTlsConfigs>,
    /// Its requests by route, and its duration histogram.
    pub counts: ListenerCounts,
}

/// Why a runtime could not be built from a model and its material.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file lacks what the configuration needs from it.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// A file holds something unusable: a key that does not match its certificate, an expired
    /// chain, a leaf that is not an X509-SVID.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A TLS configuration could not be built.
    #[error("{0}")]
    Tls(String),
}

impl Runtime {
    /// Builds every config of `model` from `material`; fails without side effects.
    pub fn build(
        model: Arc<Model>,
        material: &Material,
        metrics: Arc<Metrics>,
        access_log: Option<AccessLog>,
    ) -> Result<Self, BuildError> {
        let provider = crate::tls::provider(model.trust.ecdh_curves.as_deref());
        crate::tls::seed_random(&provider)?;
        let credentials = match &model.proxy.identity {
            Some(files) => Some(Credentials::load(
                files,
                &model.trust.bundles,
                material,
                &provider,
            )?),
            None => None,
        };
        let files = ServerFiles::load(&model, material, &provider)?;
        let issuers = issuer_bindings(&model.trust.issuers, material)?;
        let series = metrics.series();
        let mut listeners = Vec::with_capacity(model.listeners.len());
        for l in &model.listeners {
            if l.istio_mutual() && credentials.is_none() {
                return Err(BuildError::Tls(format!(
                    "listener {} is ISTIO_MUTUAL but the MeshGateway has no spec.identity",
                    l.name
                )));
            }
            let tls = match l.protocol {
                ListenerProtocol::Https | ListenerProtocol::Tcp if !l.tls.is_empty() => Some(
                    ServerTlsConfigs::new(
                        credentials.as_ref(),
                        l,
                        &files,
                        &issuers,
                        &model,
                        &provider,
                    )
                    .map_err(|e| BuildError::Tls(format!("listener {}: {e}", l.name)))?,
                ),
                _ => None,
            };
            listeners.push(ListenerRuntime {
                tls,
                counts: series.listener(l),
            });
        }
        let warnings = identity_warnings(&model, credentials.as_ref());
        let upstreams = Upstreams::new(
            &model,
            credentials.as_ref(),
            &issuers,
            material,
            &provider,
            &series,
        )?;
        Ok(Self {
            upstreams,
            trust_domains: series.trust_domains(
                &model.trust,
                model.proxy.limits.trust_domain_labels as usize,
            ),
            http: HttpServers::new(&model.proxy.limits, metrics.clone()),
            by_key: model
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| (key(l), i))
                .collect(),
            credentials,
            listeners,
            metrics,
            access_log,
            owned: Arc::new(Owned::new(
                &model.proxy.tagging,
                model.proxy.http.headers_with_underscores,
            )),
            model,
            warnings,
            version: 1,
        })
    }

    /// The index of the listener configured as `key`, if this configuration has it.
    pub fn listener(&self, key: ListenerKey) -> Option<usize> {
        self.by_key.get(&key).copied()
    }

    /// Listener `index` of the model, an index `listener` gave for this runtime.
    // `by_key` holds the indices of `model.listeners`, and neither changes after `build`.
    #[allow(clippy::indexing_slicing)]
    pub fn model_listener(&self, index: usize) -> &Listener {
        &self.model.listeners[index]
    }

    /// What listener `index` needs at run time, an index `listener` gave for this runtime.
    // `build` makes one `ListenerRuntime` per model listener, in model order.
    #[allow(clippy::indexing_slicing)]
    pub fn listener_runtime(&self, index: usize) -> &ListenerRuntime {
        &self.listeners[index]
    }
}

/// The key of a model listener.
pub fn key(l: &Listener) -> ListenerKey {
    (l.port, l.address)
}

/// Whether `model` has the listener `key`.
pub fn key_in(model: &Model, key: ListenerKey) -> bool {
    model.listeners.iter().any(|l| self::key(l) == key)
}

/// MG0108: our own identity is of another trust domain than the configured one, so Istio
/// peers of this mesh would not take it for one of theirs.
fn identity_warnings(model: &Model, credentials: Option<&Credentials>) -> Vec<Warning> {
    let Some(id) = credentials.map(|c| &c.spiffe_id) else {
        return Vec::new();
    };
    let own = id.trust_domain();
    let configured = model.trust.trust_domain.as_str();
    if own == configured {
        return Vec::new();
    }
    let alias = if model.trust.aliases.iter().any(|a| a.as_str() == own) {
        " (one of its aliases: fine while migrating, but peers that check the trust domain see \
         the old one)"
    } else {
        ""
    };
    let (file, field) = match model.proxy.identity.as_ref().map(|i| &i.source) {
        Some(IdentitySource::Files { cert_chain, .. }) => {
            (Some(cert_chain.clone()), "spec.identity.certChain")
        }
        _ => (None, "spec.identity.workloadApi"),
    };
    vec![Warning {
        code: Code::TrustDomainMismatch,
        file,
        resource: Some(format!("MeshGateway {}", model.proxy.name)),
        field: Some(field.into()),
        message: format!(
            "this proxy's identity {id} is of trust domain `{own}`, but the configured trust \
             domain is `{configured}`{alias}"
        ),
    }]
}
