//! meshgate data plane.
//!
//! ```text
//! accept     listen.rs       listener -> TcpStream (nodelay, backlog)
//! handshake  tls/server.rs   -> TLS stream; client cert REQUIRED, chained to the bundle
//! identity   identity.rs     -> PeerIdentity: exactly one SPIFFE URI SAN, leaf not a CA
//! origin     origin.rs       -> Origin::{Local, Remote}: trust domain, aliases, cluster.local
//! HTTP       serve.rs        -> hyper HTTP/1.1 or HTTP/2, chosen by ALPN
//! tag        tag.rs          -> client copies stripped; x-mesh-origin, principal, XFCC set
//! authorize  authorize/      -> AuthorizationPolicy: DENY, then ALLOW (403 RBAC: access denied)
//! route      route.rs        -> Gateway server host, VirtualService route, weighted backend
//! forward    forward/        -> pooled upstream connection, bodies streamed
//! respond    respond.rs      -> every response the proxy makes itself (400, 404, 503, 504)
//! ```
//!
//! `inbound.rs` drives the path; `runtime.rs` holds what is built once per configuration.

#![forbid(unsafe_code)]

pub mod authorize;
pub mod forward;
pub mod identity;
pub mod listen;
pub mod origin;
pub mod respond;
pub mod route;
pub mod serve;
pub mod tag;
pub mod tls;

pub mod access_log;
pub mod admin;
pub mod body;
pub mod echo;
mod inbound;
pub mod metrics;
pub mod runtime;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use meshgate_config::Model;

use crate::access_log::AccessLog;
use crate::admin::AdminState;
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// Why the proxy could not start. Nothing is left running when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound (in use, not local, no permission).
    #[error("cannot bind {name} on {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// An identity file is missing, unreadable or inconsistent.
    #[error("{}: {message}", path.display())]
    Identity { path: PathBuf, message: String },
    /// A TLS configuration could not be built.
    #[error("{0}")]
    Tls(String),
}

/// A listener as bound.
#[derive(Debug, Clone)]
pub struct BoundListener {
    pub name: String,
    /// The Gateway port.
    pub port: u16,
    /// The local address, with the actual port when 0 was asked for.
    pub address: SocketAddr,
}

/// A running proxy.
pub struct Running {
    pub listeners: Vec<BoundListener>,
    pub admin: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    state: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<()>>,
    /// Shared with the accept loops, which hand a watcher to each connection.
    graceful: Arc<GracefulShutdown>,
}

/// Builds the runtime, binds every listener and the admin address, and starts serving. On
/// error nothing stays bound.
pub async fn start(model: Model) -> Result<Running, StartError> {
    let model = Arc::new(model);
    let metrics = Arc::new(Metrics::new(&model.trust));
    let access_log = match &model.proxy.access_log {
        Some(path) => Some(AccessLog::open(path).map_err(|e| StartError::Identity {
            path: path.clone(),
            message: format!("cannot open the access log: {e}"),
        })?),
        None => None,
    };
    let runtime = Arc::new(Runtime::build(model.clone(), metrics.clone(), access_log)?);

    let mut bound = Vec::new();
    for l in &model.listeners {
        let listener = listen::bind(l.address).map_err(|source| StartError::Bind {
            name: l.name.clone(),
            address: l.address,
            source,
        })?;
        let address = listener.local_addr().unwrap_or(l.address);
        bound.push((
            listener,
            BoundListener {
                name: l.name.clone(),
                port: l.port,
                address,
            },
        ));
    }
    let admin_listener = match model.proxy.admin {
        Some(address) => Some(listen::bind(address).map_err(|source| StartError::Bind {
            name: "admin".into(),
            address,
            source,
        })?),
        None => None,
    };

    let (shutdown, rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let state = Arc::new(AdminState {
        ready: false.into(),
        metrics: metrics.clone(),
        runtime: runtime.clone(),
        version: 1,
    });
    let mut accept_loops = Vec::new();
    let mut listeners = Vec::new();
    for (index, (listener, info)) in bound.into_iter().enumerate() {
        info!(listener = %info.name, port = info.port, address = %info.address, "listening");
        let runtime = runtime.clone();
        let graceful = graceful.clone();
        accept_loops.push(tokio::spawn(listen::accept_loop(
            listener,
            rx.clone(),
            move |stream, peer| {
                tokio::spawn(inbound::serve_connection(
                    runtime.clone(),
                    index,
                    stream,
                    peer,
                    graceful.watcher(),
                ));
            },
        )));
        listeners.push(info);
    }
    let admin = match admin_listener {
        Some(listener) => {
            let address = listener.local_addr().ok();
            if let Some(a) = address {
                info!(address = %a, "admin listening");
            }
            tokio::spawn(admin::serve(listener, state.clone(), rx.clone()));
            address
        }
        None => None,
    };
    state.ready.store(true, Ordering::Release);
    Ok(Running {
        listeners,
        admin,
        metrics,
        state,
        shutdown,
        accept_loops,
        graceful,
    })
}

impl Running {
    /// The bound address of the listener for Gateway port `port`.
    pub fn address(&self, port: u16) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.port == port)
            .map(|l| l.address)
    }

    /// Stops accepting, asks open connections to finish (HTTP/2 GOAWAY, HTTP/1.1 close after
    /// the current response) and waits for them for at most `drain`.
    pub async fn shutdown(self, drain: Duration) {
        self.state.ready.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        for handle in self.accept_loops {
            let _ = handle.await;
        }
        // The accept loops have ended and dropped their handles: ours is the last one.
        let Ok(graceful) = Arc::try_unwrap(self.graceful) else {
            return;
        };
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            info!("drain timeout passed with connections still open");
        }
    }
}

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
