//! Upstream pools: one hyper client per backend (its own connector, so connections are keyed
//! by everything that shapes them: endpoint, TLS mode, SNI, identity), and the load balancer
//! that picks an endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use meshgate_config::model::{BackendProtocol, Endpoints, LoadBalancer, Model};
use rustls::crypto::CryptoProvider;

use super::connect::Connector;
use crate::tls::client::origination;
use crate::tls::credentials::Credentials;
use crate::StartError;

/// Every backend of the model, ready to forward to.
#[derive(Debug)]
pub struct Upstreams {
    backends: Vec<UpstreamBackend>,
}

/// One backend at run time.
#[derive(Debug)]
pub struct UpstreamBackend {
    pub protocol: BackendProtocol,
    pub client: Client<Connector, Incoming>,
    /// Whether connections are TLS (the URI scheme the pool keys on).
    pub tls: bool,
    load_balancer: LoadBalancer,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Endpoint {
    authority: Authority,
    /// Requests waiting for a response head, for LEAST_REQUEST.
    in_flight: Arc<AtomicUsize>,
}

/// Decrements an endpoint's in-flight count when the request is answered or dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstreams {
    /// Pools and TLS origination for every backend of `model`.
    pub fn new(
        model: &Model,
        credentials: Option<&Credentials>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, StartError> {
        let mut backends = Vec::with_capacity(model.backends.len());
        for b in &model.backends {
            let tls = origination(b, credentials, provider)?;
            let is_tls = tls.is_some();
            let connector = Connector::new(b.policy.connect_timeout, tls);
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(b.policy.idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            if b.protocol == BackendProtocol::Http2 {
                builder.http2_only(true);
            }
            let endpoints = match &b.endpoints {
                Endpoints::Static(list) => list
                    .iter()
                    .filter_map(|a| Authority::try_from(a.to_string()).ok())
                    .collect::<Vec<_>>(),
                Endpoints::Dns(list) => list
                    .iter()
                    .filter_map(|(host, port)| {
                        // An IP (from `spec.resolve`) needs brackets when it is IPv6.
                        let text = match host.parse::<std::net::IpAddr>() {
                            Ok(ip) => std::net::SocketAddr::new(ip, *port).to_string(),
                            Err(_) => format!("{host}:{port}"),
                        };
                        Authority::try_from(text).ok()
                    })
                    .collect(),
            };
            backends.push(UpstreamBackend {
                protocol: b.protocol,
                client: builder.build(connector),
                tls: is_tls,
                load_balancer: b.policy.load_balancer,
                endpoints: endpoints
                    .into_iter()
                    .map(|authority| Endpoint {
                        authority,
                        in_flight: Arc::new(AtomicUsize::new(0)),
                    })
                    .collect(),
                next: AtomicUsize::new(0),
            });
        }
        Ok(Self { backends })
    }

    /// Backend `i` of the model (an index the compiled model guarantees).
    pub fn backend(&self, i: usize) -> &UpstreamBackend {
        &self.backends[i]
    }
}

impl UpstreamBackend {
    /// The endpoint for the next request, by the backend's load balancer, with its in-flight
    /// guard.
    pub fn pick(&self) -> Option<(&Authority, InFlight)> {
        let n = self.endpoints.len();
        let e = match (n, self.load_balancer) {
            (0, _) => return None,
            (1, _) => &self.endpoints[0],
            (_, LoadBalancer::RoundRobin) => {
                &self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n]
            }
            (_, LoadBalancer::Random) => &self.endpoints[fastrand::usize(..n)],
            // Envoy's LEAST_REQUEST: the less busy of two random choices.
            (_, LoadBalancer::LeastRequest) => {
                let a = &self.endpoints[fastrand::usize(..n)];
                let b = &self.endpoints[fastrand::usize(..n)];
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
        };
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((&e.authority, InFlight(e.in_flight.clone())))
    }
}
