//! Runtime: a compiled `Model` plus everything built from it once — our credentials, the
//! rustls configs, the upstream pools, the HTTP server builders. Connections hold an
//! `Arc<Runtime>`; the request path takes no lock.

use std::sync::Arc;

use meshgate_config::model::ListenerProtocol;
use meshgate_config::{Code, Model, Warning};

use crate::access_log::AccessLog;
use crate::forward::Upstreams;
use crate::metrics::{Metrics, ModelCounters};
use crate::serve::HttpServers;
use crate::tag::Owned;
use crate::tls::credentials::Credentials;
use crate::tls::files::ServerFiles;
use crate::tls::server::ServerTlsConfigs;
use crate::StartError;

/// One configuration, ready to serve.
#[derive(Debug)]
pub struct Runtime {
    pub model: Arc<Model>,
    /// Our workload identity, when the configuration names one.
    pub credentials: Option<Credentials>,
    /// Per listener of the model: the TLS configs of an HTTPS listener.
    pub listeners: Vec<Option<ServerTlsConfigs>>,
    pub upstreams: Upstreams,
    pub http: HttpServers,
    pub metrics: Arc<Metrics>,
    /// This configuration's series of `metrics`.
    pub counters: ModelCounters,
    /// The access log, when the MeshGateway asks for one.
    pub access_log: Option<AccessLog>,
    /// The request headers the proxy owns; shared with every request body, for its trailers.
    pub owned: Arc<Owned>,
    /// What building found worth a warning (our identity's trust domain).
    pub warnings: Vec<Warning>,
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
    let files = model.proxy.identity.as_ref();
    vec![Warning {
        code: Code::TrustDomainMismatch,
        file: files.map(|f| f.cert_chain.clone()),
        resource: Some(format!("MeshGateway {}", model.proxy.name)),
        field: Some("spec.identity.certChain".into()),
        message: format!(
            "this proxy's identity {id} is of trust domain `{own}`, but the configured trust \
             domain is `{configured}`{alias}"
        ),
    }]
}

impl Runtime {
    /// Loads the identity files and builds every config; fails without side effects.
    pub fn build(
        model: Arc<Model>,
        metrics: Arc<Metrics>,
        access_log: Option<AccessLog>,
    ) -> Result<Self, StartError> {
        let provider = crate::tls::provider(model.trust.ecdh_curves.as_deref());
        let credentials = match &model.proxy.identity {
            Some(files) => Some(Credentials::load(files, &provider)?),
            None => None,
        };
        let files = ServerFiles::load(&model, &provider)?;
        let mut listeners = Vec::with_capacity(model.listeners.len());
        for l in &model.listeners {
            if l.istio_mutual() && credentials.is_none() {
                return Err(StartError::Tls(format!(
                    "listener {} is ISTIO_MUTUAL but the MeshGateway has no spec.identity",
                    l.name
                )));
            }
            let tls = match l.protocol {
                ListenerProtocol::Https => Some(
                    ServerTlsConfigs::new(credentials.as_ref(), l, &files, &model, &provider)
                        .map_err(|e| StartError::Tls(format!("listener {}: {e}", l.name)))?,
                ),
                ListenerProtocol::Http => None,
            };
            listeners.push(tls);
        }
        let warnings = identity_warnings(&model, credentials.as_ref());
        let counters = ModelCounters::new(&metrics, &model);
        Ok(Self {
            upstreams: Upstreams::new(&model, credentials.as_ref(), &provider, &counters)?,
            counters,
            http: HttpServers::new(&model.proxy.limits),
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
        })
    }
}
