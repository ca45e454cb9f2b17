//! HTTP: the negotiated version -> a hyper connection serving one service.
//!
//! TLS connections speak what ALPN chose, served by hyper's own HTTP/1.1 or HTTP/2 connection
//! (no version sniffing, no rewind buffer); plaintext connections are detected (HTTP/1.1, or
//! HTTP/2 with prior knowledge).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use meshgate_config::model::Limits;

use crate::drain::Watch;
use crate::tls::server::HttpVersion;

/// The server builders, configured once.
#[derive(Debug, Clone)]
pub struct HttpServers {
    detect: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// A connection's failure, whichever builder served it.
pub type ServeError = Box<dyn StdError + Send + Sync>;

impl HttpServers {
    /// Builders with the MeshGateway's limits.
    pub fn new(limits: &Limits) -> Self {
        let header_bytes = limits.max_request_header_bytes as usize;
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_header_timeout)
            .max_buf_size(header_bytes)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_request_header_bytes);
        let mut detect = auto::Builder::new(TokioExecutor::new());
        detect
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_header_timeout)
            .max_buf_size(header_bytes)
            .keep_alive(true);
        detect
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_request_header_bytes);
        Self {
            detect,
            http1,
            http2,
        }
    }

    /// Serves `io` until the client is done, the drain starts or `idle` resolves; the last
    /// two close the connection gracefully (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close` on the
    /// response in flight, or at once when there is none).
    pub async fn serve<I, S, B>(
        &self,
        io: I,
        version: Option<HttpVersion>,
        service: S,
        drain: Watch,
        idle: impl Future<Output = ()>,
    ) -> Result<(), ServeError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<ServeError>,
        B: Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
    {
        let io = TokioIo::new(io);
        match version {
            Some(HttpVersion::Http1) => {
                let conn = self.http1.serve_connection(io, service);
                Ok(until_closed(conn, |c| c.graceful_shutdown(), drain, idle).await?)
            }
            Some(HttpVersion::Http2) => {
                let conn = self.http2.serve_connection(io, service);
                Ok(until_closed(conn, |c| c.graceful_shutdown(), drain, idle).await?)
            }
            None => {
                let conn = self.detect.serve_connection(io, service).into_owned();
                until_closed(conn, |c| c.graceful_shutdown(), drain, idle).await
            }
        }
    }
}

/// Runs `conn` to its end; when the drain starts or `idle` resolves first, `shutdown` asks it
/// to finish and it is run to its end still. The watch is held until then.
async fn until_closed<C, E>(
    conn: C,
    shutdown: impl FnOnce(Pin<&mut C>),
    mut drain: Watch,
    idle: impl Future<Output = ()>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::pin!(idle);
    tokio::select! {
        biased;
        done = &mut conn => return done,
        () = drain.signaled() => {}
        () = &mut idle => debug!("idle timeout: closing the connection"),
    }
    shutdown(conn.as_mut());
    conn.await
}

/// One connection's requests in flight and since when it has had none: the clock of
/// `limits.idleTimeout` (Envoy's `idle_timeout`: a connection with no active request for that
/// long is closed). A request counts from its head until its response body is done.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    active: AtomicU32,
    /// When the last request ended, in milliseconds after `opened`.
    idle_since_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            opened: Instant::now(),
            active: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    pub fn request_ended(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.idle_since_ms.store(now, Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves once no request has been in flight for `timeout`. One timer, re-armed only
    /// when it fires.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let wait = if self.active.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                let idle = self.opened.elapsed().saturating_sub(since);
                match timeout.checked_sub(idle) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
