//! meshgate data plane.
//!
//! ```text
//! accept     listen.rs       listener -> TcpStream (nodelay, backlog)
//! handshake  tls/server.rs   -> TLS stream; client cert REQUIRED, chained to the bundle
//! identity   identity.rs     -> PeerIdentity: exactly one SPIFFE URI SAN, leaf not a CA
//! origin     origin.rs       -> Origin::{Local, Remote}: trust domain, aliases, cluster.local
//! HTTP       serve.rs        -> hyper HTTP/1.1 or HTTP/2, chosen by ALPN
//!            park.rs         -> HTTP/1.1 between requests: parked without hyper's buffers
//! stream     stream.rs       -> per-stream idle and request timeouts (408, cut, SI)
//! head       head.rs         -> one authority, normalized path, hop-by-hop gone (400, 405)
//! tag        tag.rs          -> client copies stripped; x-mesh-origin, principal, XFCC set
//! authorize  authorize/      -> AuthorizationPolicy: DENY, then ALLOW (403 RBAC: access denied)
//! route      route/          -> Gateway server host, VirtualService route, weighted backend
//! cors       cors.rs         -> preflights answered, allowed origins marked (route corsPolicy)
//! fault      fault.rs        -> delay, abort (route fault)
//! forward    forward/        -> pooled upstream connection, bodies streamed
//! respond    respond.rs      -> every response the proxy makes itself (400, 404, 503, 504)
//! ```
//!
//! `inbound.rs` drives the path, top to bottom. Around it: `server.rs` binds and accepts and
//! swaps configurations; `material.rs` reads the files a configuration names (off the async
//! workers); `runtime.rs` builds, purely, what one configuration serves with; `reload.rs` says
//! when to reload; `admin.rs`, `metrics.rs` and `access_log.rs` show what happens.
//! `ARCHITECTURE.md` at the repository's root draws the whole.

#![forbid(unsafe_code)]
// No input, configuration or network bytes, may panic the process: the workspace's lints deny
// unwrap, expect, panic, unchecked arithmetic and indexing here (Cargo.toml), and where an
// invariant makes an index or an operation safe, a narrowly scoped `allow` says why. Unit tests
// may unwrap, index and panic (clippy.toml), and compute freely:
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

pub mod authorize;
mod cors;
mod fault;
mod forward;
mod head;
pub mod identity;
mod listen;
pub mod origin;
mod park;
pub mod passthrough;
mod proxy_protocol;
mod respond;
pub mod route;
mod serve;
mod stream;
pub mod tag;
pub mod tcp;
pub mod tls;

mod access_log;
mod admin;
mod body;
mod drain;
pub mod echo;
mod inbound;
pub mod material;
pub mod metrics;
pub mod reload;
pub mod runtime;
mod server;

pub use server::{start, BoundListener, Running, StartError};

/// What the fuzz targets in `fuzz/` call that is not public otherwise. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::forward::h1::{Body as H1Body, Conn as H1Conn, Error as H1Error};
    pub use crate::head::{canonical, canonicalize, HeadError};
    pub use crate::proxy_protocol::{header, read, Header};

    /// meshgate's HTTP/1.1 client on a plaintext upstream connection.
    pub fn h1_conn(tcp: tokio::net::TcpStream) -> H1Conn {
        H1Conn::new(tokio_util::either::Either::Left(tcp))
    }
}
