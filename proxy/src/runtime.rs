//! Runtime: a compiled `Model` plus everything built from it once — our credentials, the
//! rustls configs, the upstream pools, the HTTP server builders. Connections hold an
//! `Arc<Runtime>`; the request path takes no lock.

use std::sync::Arc;

use meshgate_config::model::ListenerProtocol;
use meshgate_config::Model;

use crate::access_log::AccessLog;
use crate::forward::Upstreams;
use crate::metrics::{Metrics, ModelCounters};
use crate::serve::HttpServers;
use crate::tag::Owned;
use crate::tls::credentials::Credentials;
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
        let mut listeners = Vec::with_capacity(model.listeners.len());
        for l in &model.listeners {
            let tls = match (&l.tls, l.protocol, &credentials) {
                (Some(tls), ListenerProtocol::Https, Some(creds)) => Some(
                    ServerTlsConfigs::new(creds, tls, &model, provider.clone())
                        .map_err(|e| StartError::Tls(format!("listener {}: {e}", l.name)))?,
                ),
                (Some(_), _, None) => {
                    return Err(StartError::Tls(format!(
                        "listener {} is ISTIO_MUTUAL but the MeshGateway has no spec.identity",
                        l.name
                    )))
                }
                _ => None,
            };
            listeners.push(tls);
        }
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
        })
    }
}
