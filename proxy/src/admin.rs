//! The admin listener: `/ready`, `/healthz`, `/stats/prometheus`, `/config_dump` (the
//! effective compiled configuration as JSON, no key material), `/certs` (our SPIFFE ID, chain
//! and bundle with their expiry).
//!
//! `/ready` answers 200 once every listener is bound and the identity is loaded, and 503 again
//! once shutdown starts; `/healthz` answers 200 while the process runs.
//!
//! What a listener serves (`Endpoints`): the admin address everything, but `/config_dump` and
//! `/certs` (the configuration and the trust it holds: for the operator on the node, not the
//! cluster) only on a loopback address or with `admin.debugEndpoints`; `admin.probes` only
//! what the kubelet and Prometheus read.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::listen::accept_loop;
use crate::metrics::{labels, Encoder, Metrics};
use crate::respond::ResponseBody;
use crate::runtime::Runtime;

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct AdminState {
    pub ready: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// The configuration new connections get.
    pub shared: Arc<ArcSwap<Runtime>>,
}

/// Which endpoints one admin listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Everything.
    All,
    /// Everything but `/config_dump` and `/certs` (a non-loopback admin address).
    WithoutDebug,
    /// `/ready`, `/healthz` and `/stats/prometheus` (`admin.probes`).
    Probes,
}

impl Endpoints {
    /// The admin address's: all on loopback, or when debug endpoints are asked for.
    pub fn of_admin(address: std::net::SocketAddr, debug_endpoints: bool) -> Self {
        if debug_endpoints || address.ip().is_loopback() {
            Self::All
        } else {
            Self::WithoutDebug
        }
    }
}

/// Serves the admin endpoints until shutdown.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    endpoints: Endpoints,
    shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    accept_loop(listener, shutdown, move |stream, _| {
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| respond(state.clone(), endpoints, req));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    })
    .await;
}

async fn respond(
    state: Arc<AdminState>,
    endpoints: Endpoints,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let path = req.uri().path();
    let debug = matches!(path, "/config_dump" | "/certs");
    let probe = matches!(path, "/ready" | "/healthz" | "/stats/prometheus");
    let (status, content_type, body) = match (req.method(), path) {
        _ if endpoints == Endpoints::Probes && !probe => (
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"not found: this listener serves /ready, /healthz and /stats/prometheus\n"),
        ),
        _ if endpoints == Endpoints::WithoutDebug && debug => (
            StatusCode::FORBIDDEN,
            TEXT,
            Bytes::from_static(
                b"served on a loopback admin address only (or with spec.admin.debugEndpoints: true)\n",
            ),
        ),
        (&Method::GET, "/ready") if state.ready.load(Ordering::Acquire) => {
            (StatusCode::OK, TEXT, Bytes::from_static(b"LIVE\n"))
        }
        (&Method::GET, "/ready") => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            Bytes::from_static(b"NOT READY\n"),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, TEXT, Bytes::from_static(b"OK\n")),
        (&Method::GET, "/stats/prometheus") => (
            StatusCode::OK,
            PROMETHEUS,
            Bytes::from(render_metrics(&state)),
        ),
        (&Method::GET, "/config_dump") => {
            let runtime = state.shared.load();
            let dump = serde_json::json!({ "version": runtime.version, "config": &*runtime.model });
            (StatusCode::OK, JSON, Bytes::from(pretty(&dump)))
        }
        (&Method::GET, "/certs") => match &state.shared.load().credentials {
            Some(c) => (StatusCode::OK, JSON, Bytes::from(pretty(&c.summary))),
            None => (
                StatusCode::NOT_FOUND,
                TEXT,
                Bytes::from_static(b"no identity configured\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// The process counters, and what the current configuration adds: idle upstream connections
/// per backend, the expiry of our certificates, and the access log lines dropped.
fn render_metrics(state: &AdminState) -> String {
    let mut e = Encoder::default();
    state.metrics.encode(&mut e);
    let runtime = state.shared.load();
    e.family(
        "meshgate_upstream_idle_connections",
        "gauge",
        "Idle pooled upstream connections, by backend.",
    );
    for (b, u) in runtime.model.backends.iter().zip(runtime.upstreams.all()) {
        e.sample(
            "meshgate_upstream_idle_connections",
            &labels(&[("backend", &b.name())]),
            u.idle(),
        );
    }
    e.family(
        "meshgate_upstream_ejected_endpoints",
        "gauge",
        "Endpoints outlier detection holds out now, by backend.",
    );
    for (b, u) in runtime.model.backends.iter().zip(runtime.upstreams.all()) {
        e.sample(
            "meshgate_upstream_ejected_endpoints",
            &labels(&[("backend", &b.name())]),
            u.ejected(),
        );
    }
    if let Some(c) = &runtime.credentials {
        e.family(
            "meshgate_certificate_expiry_timestamp_seconds",
            "gauge",
            "notAfter of our chain and bundle.",
        );
        for (kind, list) in [("chain", "cert_chain"), ("root", "root_certs")] {
            let certificates = c
                .summary
                .get(list)
                .and_then(|l| l.get("certificates"))
                .and_then(serde_json::Value::as_array);
            for (i, cert) in certificates.into_iter().flatten().enumerate() {
                let index = i.to_string();
                let subject = cert["subject"].as_str().unwrap_or("");
                e.sample(
                    "meshgate_certificate_expiry_timestamp_seconds",
                    &labels(&[("kind", kind), ("index", &index), ("subject", subject)]),
                    cert["not_after_unix"].as_i64().unwrap_or(0),
                );
            }
        }
    }
    if let Some(log) = &runtime.access_log {
        e.family(
            "meshgate_access_log_dropped_total",
            "counter",
            "Access log lines dropped because the writer fell behind.",
        );
        e.sample("meshgate_access_log_dropped_total", "", log.dropped());
    }
    e.finish()
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

const TEXT: &str = "text/plain";
const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4";
