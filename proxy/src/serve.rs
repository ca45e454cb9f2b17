//! HTTP: the negotiated version -> a hyper connection serving one service.
//!
//! TLS connections speak what ALPN chose, served by hyper's own HTTP/1.1 or HTTP/2 connection
//! (no version sniffing, no rewind buffer); plaintext connections are detected (HTTP/1.1, or
//! HTTP/2 with prior knowledge).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
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
    /// `limits.requestHeaderTimeout`, kept by `HeadTimeout` rather than hyper (whose timer also
    /// runs while an HTTP/1.1 connection waits, idle, for its next request).
    request_header_timeout: Duration,
    /// `limits.idleTimeout`.
    idle_timeout: Option<Duration>,
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
            // hyper's own (30 s unless turned off) would run between requests too.
            .header_read_timeout(None)
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
            // hyper's own (30 s unless turned off) would run between requests too.
            .header_read_timeout(None)
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
            request_header_timeout: limits.request_header_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// Serves `io` until the client is done, the drain starts or the connection has been idle
    /// (`activity`) for the idle timeout; the last two close the connection gracefully (HTTP/2
    /// GOAWAY, HTTP/1.1 `Connection: close` on the response in flight, or at once when there
    /// is none). An HTTP/1.1 request head must arrive within the request header timeout of its
    /// first byte.
    pub async fn serve<I, S, B>(
        &self,
        io: I,
        version: Option<HttpVersion>,
        service: S,
        activity: Arc<Activity>,
        drain: Watch,
    ) -> Result<(), ServeError>
    where
        I: Downstream,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<ServeError>,
        B: Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
    {
        let idle_timeout = self.idle_timeout;
        let clock = activity.clone();
        let idle = async move {
            match idle_timeout {
                Some(timeout) => clock.idle_for(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(idle);
        let mut drain = drain;
        let mut io = io;
        // No HTTP state exists until the client sends something: hyper allocates its buffers
        // (16 KiB for HTTP/1.1) and room for a request as soon as it starts, and a connection
        // opened ahead of need, as pools and browsers open them, may idle for a long time.
        tokio::select! {
            biased;
            sent = io.first_bytes() => sent?,
            () = drain.signaled() => return Ok(()),
            () = &mut idle => return Ok(()),
        }
        // HTTP/2 (by ALPN) has no request heads to time here; plaintext may turn out to be
        // HTTP/2 with prior knowledge, which `HeadTimeout` recognises by its preface.
        let timed = version != Some(HttpVersion::Http2);
        let io = TokioIo::new(HeadTimeout::new(
            io,
            activity,
            timed.then_some(self.request_header_timeout),
        ));
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
    let stop = async {
        tokio::select! {
            () = drain.signaled() => {}
            () = idle => debug!("idle timeout: closing the connection"),
        }
    };
    tokio::pin!(stop);
    let mut stop = Gated::new(stop);
    tokio::select! {
        biased;
        done = &mut conn => return done,
        () = &mut stop => {}
    }
    shutdown(conn.as_mut());
    conn.await
}

/// Polls `inner` only when its own waker has fired since it was last polled (and the first
/// time). Beside a connection in one task, the drain signal and the idle timer are then
/// polled on their own wake-ups only, not on each of the connection's.
struct Gated<F> {
    inner: F,
    flag: Arc<Flag>,
}

/// The waker `Gated` gives its future: it raises the flag and wakes the task.
struct Flag {
    woken: AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl<F> Gated<F> {
    fn new(inner: F) -> Self {
        Self {
            inner,
            flag: Arc::new(Flag {
                woken: AtomicBool::new(true),
                task: std::sync::Mutex::new(None),
            }),
        }
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(|p| p.into_inner()) {
            task.wake_by_ref();
        }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // A load, not a swap, on the common path. A wake-up between the load and the store is
        // not lost: the inner future is polled after the store.
        if !this.flag.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        this.flag.woken.store(false, Ordering::Release);
        {
            let mut task = this.flag.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let waker = Waker::from(this.flag.clone());
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&waker))
    }
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
    /// Request bodies the client broke off or malformed, so that the failure of a forward
    /// they caused is blamed on the client (`DPE`, `DC`), not on the upstream.
    body_faults: AtomicU32,
    /// Whether the last of them was malformed (rather than cut short).
    malformed: std::sync::atomic::AtomicBool,
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
            body_faults: AtomicU32::new(0),
            malformed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A request body of this connection failed on the client's side.
    pub fn body_failed(&self, malformed: bool) {
        self.malformed.store(malformed, Ordering::Relaxed);
        self.body_faults.fetch_add(1, Ordering::AcqRel);
    }

    /// How many request bodies failed so far: compared before and after a forward.
    pub fn body_faults(&self) -> u32 {
        self.body_faults.load(Ordering::Acquire)
    }

    /// Whether the last body failure was malformed bytes (`DPE`) rather than a client that
    /// went away (`DC`).
    pub fn last_body_fault_malformed(&self) -> bool {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Whether a request is in flight.
    pub fn busy(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// A request ended `at` (the caller's clock reading, to spare another).
    pub fn request_ended(&self, at: Instant) {
        let since = at.saturating_duration_since(self.opened).as_millis() as u64;
        self.idle_since_ms.store(since, Ordering::Release);
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

/// Downstream I/O that keeps Envoy's `request_headers_timeout` for HTTP/1.1: from the first
/// byte of a request head until the head is complete, which is when the request reaches the
/// proxy and `Activity` counts it in flight. A connection waiting, idle, for its next request
/// is not timed here (the idle timeout is its clock), nor is a request body.
///
/// Bytes read while no request is in flight are a request head. The timer exists only while
/// such a head is incomplete and the client has sent nothing more, so a head that arrives
/// whole and alone (the usual case) costs no timer at all. A partial head that arrives pipelined behind
/// a request still in flight is left to the idle timeout.
pub struct HeadTimeout<I> {
    io: I,
    activity: Arc<Activity>,
    /// `None`: nothing to time (HTTP/2).
    timeout: Option<Duration>,
    /// Nothing was read yet: the first bytes may be the HTTP/2 preface.
    first: bool,
    /// Bytes of a head have arrived and its request has not started.
    in_head: bool,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<I> HeadTimeout<I> {
    pub fn new(io: I, activity: Arc<Activity>, timeout: Option<Duration>) -> Self {
        Self {
            io,
            activity,
            timeout,
            first: true,
            in_head: false,
            deadline: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(timeout) = this.timeout else {
            return read;
        };
        if this.activity.busy() {
            this.in_head = false;
            this.deadline = None;
            return read;
        }
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if std::mem::take(&mut this.first) && buf.filled()[before..].starts_with(b"PRI") {
                    // `PRI * HTTP/2.0`: HTTP/2 with prior knowledge.
                    this.timeout = None;
                } else {
                    // Bytes that end with the blank line that ends a head complete it (the
                    // usual request without a body): nothing to time.
                    this.in_head = !buf.filled()[before..].ends_with(b"\r\n\r\n");
                    if !this.in_head {
                        this.deadline = None;
                    }
                }
            }
            Poll::Pending if this.in_head => {
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head timeout",
                    )));
                }
            }
            _ => {}
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A downstream connection, plaintext or TLS, that can wait for the client's first bytes
/// without reading them.
pub trait Downstream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves once the client has sent something (or closed): at once when the TLS layer
    /// already holds data that arrived with the end of the handshake.
    fn first_bytes(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl Downstream for TcpStream {
    async fn first_bytes(&mut self) -> std::io::Result<()> {
        self.readable().await
    }
}

impl Downstream for TlsStream<TcpStream> {
    async fn first_bytes(&mut self) -> std::io::Result<()> {
        let (tcp, tls) = self.get_mut();
        // Records read with the handshake's last flight (a client often sends its request
        // right behind its Finished) are in rustls already; the socket may have nothing more.
        let state = tls.process_new_packets().map_err(std::io::Error::other)?;
        if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
            return Ok(());
        }
        tcp.readable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its polls and keeps the waker it was given.
    struct Probe {
        polls: usize,
        waker: Option<Waker>,
    }

    impl Future for Probe {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_gated_future_is_polled_on_its_own_wake_ups_only() {
        let mut gated = Gated::new(Probe {
            polls: 0,
            waker: None,
        });
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(gated.inner.polls, 1, "polled although nothing woke it");
        gated.inner.waker.take().unwrap().wake();
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(gated.inner.polls, 2);
    }
}
