//! Upstream pools: one hyper client per HTTP version, keyed inside by endpoint authority, and
//! the endpoints of every backend with their round-robin cursor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use meshgate_config::model::{BackendProtocol, Endpoints, Model};

use super::connect::connector;

/// Every backend's endpoints and the pooled clients that reach them.
#[derive(Debug)]
pub struct Upstreams {
    http1: Client<HttpConnector, Incoming>,
    http2: Client<HttpConnector, Incoming>,
    backends: Vec<UpstreamBackend>,
}

/// One backend at run time.
#[derive(Debug)]
pub struct UpstreamBackend {
    pub protocol: BackendProtocol,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
}

impl Upstreams {
    /// Pools for every backend of `model`.
    pub fn new(model: &Model) -> Self {
        let connect = connector(CONNECT_TIMEOUT);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connect.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connect);
        let backends = model
            .backends
            .iter()
            .map(|b| {
                let endpoints = match &b.endpoints {
                    Endpoints::Static(list) => list
                        .iter()
                        .filter_map(|a| Authority::try_from(a.to_string()).ok())
                        .collect(),
                    Endpoints::Dns(list) => list
                        .iter()
                        .filter_map(|(host, port)| {
                            Authority::try_from(format!("{host}:{port}")).ok()
                        })
                        .collect(),
                };
                UpstreamBackend {
                    protocol: b.protocol,
                    endpoints,
                    next: AtomicUsize::new(0),
                }
            })
            .collect();
        Self {
            http1,
            http2,
            backends,
        }
    }

    /// Backend `i` of the model.
    pub fn backend(&self, i: usize) -> &UpstreamBackend {
        &self.backends[i]
    }

    /// The client for a protocol.
    pub fn client(&self, protocol: BackendProtocol) -> &Client<HttpConnector, Incoming> {
        match protocol {
            BackendProtocol::Http1 => &self.http1,
            BackendProtocol::Http2 => &self.http2,
        }
    }
}

impl UpstreamBackend {
    /// The next endpoint, round robin.
    pub fn next_endpoint(&self) -> Option<&Authority> {
        match self.endpoints.as_slice() {
            [] => None,
            [one] => Some(one),
            many => Some(&many[self.next.fetch_add(1, Ordering::Relaxed) % many.len()]),
        }
    }
}

/// Istio's default `connectTimeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
