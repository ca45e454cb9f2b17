//! HTTP: the negotiated version -> a hyper connection serving one service.
//!
//! TLS connections speak what ALPN chose, served by hyper's own HTTP/1.1 or HTTP/2 connection
//! (no version sniffing, no rewind buffer); plaintext connections are detected (HTTP/1.1, or
//! HTTP/2 with prior knowledge).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use atomic_waker::AtomicWaker;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use meshgate_config::model::Limits;

use crate::drain::Watch;
use crate::metrics::Metrics;
use crate::stream::{StreamClock, StreamExecutor, Streams};
use crate::tls::server::HttpVersion;

/// The server builders, configured once.
#[derive(Debug, Clone)]
pub struct HttpServers {
    detect: auto::Builder<StreamExecutor>,
    http1: http1::Builder,
    http2: http2::Builder<StreamExecutor>,
    /// `limits.requestHeaderTimeout`, kept by `HeadTimeout` rather than hyper (whose timer also
    /// runs while an HTTP/1.1 connection waits, idle, for its next request).
    request_header_timeout: Duration,
    /// `limits.idleTimeout`.
    idle_timeout: Option<Duration>,
    /// `limits.streamIdleTimeout`.
    stream_idle_timeout: Option<Duration>,
    /// `limits.maxRequestHeaderBytes`.
    header_bytes: usize,
    /// Counts the parked HTTP/1.1 connections.
    metrics: Arc<Metrics>,
}

/// A connection's failure, whichever builder served it.
pub type ServeError = Box<dyn StdError + Send + Sync>;

impl HttpServers {
    /// Builders with the MeshGateway's limits.
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        let header_bytes = limits.max_request_header_bytes as usize;
        let streams = StreamExecutor {
            stream_idle_timeout: limits.stream_idle_timeout,
        };
        let send_buffer = limits.stream_write_buffer_bytes as usize;
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // hyper's own (30 s unless turned off) would run between requests too.
            .header_read_timeout(None)
            .max_buf_size(header_bytes)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(streams);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_request_header_bytes)
            .max_send_buf_size(send_buffer);
        let mut detect = auto::Builder::new(streams);
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
            .max_header_list_size(limits.max_request_header_bytes)
            .max_send_buf_size(send_buffer);
        Self {
            detect,
            http1,
            http2,
            request_header_timeout: limits.request_header_timeout,
            idle_timeout: limits.idle_timeout,
            stream_idle_timeout: limits.stream_idle_timeout,
            header_bytes,
            metrics,
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
        S: RequestService<B>,
        B: Body<Data = Bytes, Error = crate::forward::UpstreamError> + Send + 'static,
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
            () = &mut idle => {
                activity.closed_by(ClosedBy::Idle);
                return Ok(());
            }
        }
        // Boxed: until then the connection's task holds no room for hyper's connection.
        Box::pin(self.serve_http(io, version, service, activity, drain, idle)).await
    }

    /// `serve` from the client's first bytes.
    async fn serve_http<I, S, B>(
        &self,
        io: I,
        version: Option<HttpVersion>,
        service: S,
        activity: Arc<Activity>,
        drain: Watch,
        idle: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), ServeError>
    where
        I: Downstream,
        S: RequestService<B>,
        B: Body<Data = Bytes, Error = crate::forward::UpstreamError> + Send + 'static,
    {
        // HTTP/2 (by ALPN) has no request heads to time here; plaintext may turn out to be
        // HTTP/2 with prior knowledge, which `HeadTimeout` recognises by its preface.
        let timed = version != Some(HttpVersion::Http2);
        // HTTP/1.1's requests, one at a time, are watched on the connection's clock; each
        // HTTP/2 stream on its own (`StreamExecutor`).
        let watched = activity.clone();
        let stream_idle = self.stream_idle_timeout.filter(|_| timed);
        let stalled = async move {
            match stream_idle {
                Some(timeout) => {
                    let stream = watched.stream.clone();
                    stream.watch(timeout, || watched.busy()).await;
                    // Noted now: the response body sees the expiry too and may end the
                    // connection first.
                    watched.closed_by(ClosedBy::StreamIdle);
                }
                None => std::future::pending().await,
            }
        };
        let closing = activity.clone();
        let io = TokioIo::new(Metered::new(
            io,
            activity,
            timed.then_some(self.request_header_timeout),
            self.header_bytes,
        ));
        // Held here until the connection is over, whichever way it ends.
        let mut drain = drain;
        let ends = Ends {
            drain: &mut drain,
            idle,
            stalled,
            activity: &closing,
        };
        match version {
            Some(HttpVersion::Http1) => {
                crate::park::serve(&self.http1, io, service, ends, &self.metrics).await
            }
            // Boxed, each: an HTTP/1.1 connection, parked for most of its life, keeps no room
            // for their state.
            Some(HttpVersion::Http2) => {
                let conn = self.http2.serve_connection(io, service);
                let serving = until_closed(conn, |c| c.graceful_shutdown(), ends);
                let streams = Arc::new(Streams::default());
                let running = streams.clone();
                // The streams are watched for as long as the connection runs, its graceful end
                // included, and for as long as any of them still runs after it.
                let mut watch = self.stream_idle_timeout.map(|timeout| {
                    let watch = streams.clone();
                    Gated::new(Box::pin(async move {
                        watch.watch(timeout).await;
                    }))
                });
                let connection = async move {
                    let mut serving = std::pin::pin!(serving);
                    let mut done = None;
                    std::future::poll_fn(|cx| {
                        if done.is_none() {
                            if let Poll::Ready(d) = serving.as_mut().poll(cx) {
                                done = Some(d);
                            }
                        }
                        let streams = running.run(cx);
                        if let Some(watch) = &mut watch {
                            let _ = Pin::new(watch).poll(cx);
                        }
                        // Over when the connection is and no stream is left.
                        match done.take_if(|_| streams.is_ready()) {
                            Some(d) => Poll::Ready(d),
                            None => Poll::Pending,
                        }
                    })
                    .await
                };
                Box::pin(streams.scope(connection)).await
            }
            None => {
                let conn = self.detect.serve_connection(io, service).into_owned();
                Box::pin(until_closed(conn, |c| c.graceful_shutdown(), ends)).await
            }
        }
    }
}

/// What `HttpServers::serve` answers requests with: a hyper service whose futures and errors
/// can cross to the connection's task. `Unpin` (futures boxed), so that an HTTP/1.1 connection
/// can be taken apart when it is parked.
pub trait RequestService<B>:
    Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + Unpin + 'static,
        Error: Into<ServeError>,
    > + Clone
    + Send
    + Unpin
    + 'static
{
}

impl<S, B> RequestService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + Unpin + 'static,
            Error: Into<ServeError>,
        > + Clone
        + Send
        + Unpin
        + 'static
{
}

/// What ends a connection besides its client: the drain, the idle timeout (both graceful) and
/// a stalled HTTP/1.1 response (at once); the timeouts are noted in `activity`.
pub(crate) struct Ends<'a, I, S> {
    pub(crate) drain: &'a mut Watch,
    pub(crate) idle: I,
    pub(crate) stalled: S,
    pub(crate) activity: &'a Activity,
}

impl<I: Future<Output = ()>, S: Future<Output = ()>> Ends<'_, I, S> {
    /// Resolves with how the connection must end when one of the ends comes: gracefully for
    /// the drain and the idle timeout (noted), at once for a stalled response.
    pub(crate) async fn stop(self) -> Stop {
        let Ends {
            drain,
            idle,
            stalled,
            activity,
        } = self;
        tokio::select! {
            () = drain.signaled() => Stop::Gracefully,
            () = idle => {
                debug!("idle timeout: closing the connection");
                activity.closed_by(ClosedBy::Idle);
                Stop::Gracefully
            }
            () = stalled => Stop::Now,
        }
    }
}

/// Runs `conn` to its end; when the drain starts or `idle` resolves first, `shutdown` asks it
/// to finish and it is run to its end still. The watch is held until then. When `stalled`
/// resolves, the connection is dropped: its response cannot go on, and hyper would wait for it.
async fn until_closed<C, E>(
    conn: C,
    shutdown: impl FnOnce(Pin<&mut C>),
    ends: Ends<'_, impl Future<Output = ()>, impl Future<Output = ()>>,
) -> Result<(), ServeError>
where
    C: Future<Output = Result<(), E>>,
    E: Into<ServeError>,
{
    tokio::pin!(conn);
    let stop = ends.stop();
    tokio::pin!(stop);
    let mut stop = Gated::new(stop);
    let stop = tokio::select! {
        biased;
        done = &mut conn => return done.map_err(Into::into),
        stop = &mut stop => stop,
    };
    if stop == Stop::Now {
        debug!("stream idle timeout: closing the connection");
        return Err(ServeError::from("stream idle timeout"));
    }
    shutdown(conn.as_mut());
    conn.await.map_err(Into::into)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Gracefully,
    Now,
}

/// Polls `inner` only when its own waker has fired since it was last polled (and the first
/// time). Beside a connection in one task, the drain signal and the idle timer are then
/// polled on their own wake-ups only, not on each of the connection's.
pub(crate) struct Gated<F> {
    inner: F,
    flag: Arc<Flag>,
}

/// The waker `Gated` gives its future: it raises the flag and wakes the task.
struct Flag {
    woken: AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl<F> Gated<F> {
    pub(crate) fn new(inner: F) -> Self {
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

impl<F> Gated<F> {
    /// The future, to change it; `rearm` then has it polled again.
    pub(crate) fn inner_mut(&mut self) -> &mut F {
        &mut self.inner
    }

    /// Polls the future on the next poll, woken or not.
    pub(crate) fn rearm(&self) {
        self.flag.woken.store(true, Ordering::Release);
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
    /// Requests started so far: a head is read between two of them.
    started: AtomicU32,
    /// When the last request ended, in milliseconds after `opened`.
    idle_since_ms: AtomicU64,
    /// Request bodies the client broke off or malformed, so that the failure of a forward
    /// they caused is blamed on the client (`DPE`, `DC`), not on the upstream.
    body_faults: AtomicU32,
    /// Whether the last of them was malformed (rather than cut short).
    malformed: AtomicBool,
    /// The stream clock of the HTTP/1.1 request in flight (one at a time).
    pub stream: Arc<StreamClock>,
    /// Bytes written to the client so far.
    written: AtomicU64,
    /// A response body waits for the client to take what is buffered (`Pacing`).
    write_paused: AtomicBool,
    writer: AtomicWaker,
    /// The timeout that closed the connection (`ClosedBy`), 0 while none did.
    closed: AtomicU8,
    /// An incomplete request head was read when `started` was this less one; 0: none
    /// (`Metered`). A head's timer runs only while the connection is served, so such a
    /// connection is not parked.
    partial_head: AtomicU64,
    /// Everything written has been flushed, and no write is waiting for room.
    write_settled: AtomicBool,
}

/// What closed a downstream connection rather than its client, an error of its own or the
/// drain: a timeout of the proxy's, or a request head it refused (hyper's answer to it is the
/// connection's last). Counted and logged once the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClosedBy {
    /// `requestHeaderTimeout` (after a `408`, when the connection had nothing else to send).
    RequestHeader = 1,
    /// `idleTimeout`.
    Idle = 2,
    /// `streamIdleTimeout` on an HTTP/1.1 response the client stopped taking.
    StreamIdle = 3,
    /// An HTTP/1.1 head that does not parse: `400`.
    BadRequest = 4,
    /// An HTTP/1.1 head over `maxRequestHeaderBytes`: `431`.
    HeadTooLarge = 5,
    /// An HTTP/1.1 request target over hyper's limit (65534 bytes): `414`.
    UriTooLong = 6,
}

impl ClosedBy {
    /// Every reason, in the order of their counters.
    pub const ALL: [Self; 6] = [
        Self::RequestHeader,
        Self::Idle,
        Self::StreamIdle,
        Self::BadRequest,
        Self::HeadTooLarge,
        Self::UriTooLong,
    ];

    /// The `reason` of the metric and the access-log line.
    pub fn reason(self) -> &'static str {
        match self {
            Self::RequestHeader => "request_header_timeout",
            Self::Idle => "idle_timeout",
            Self::StreamIdle => "stream_idle_timeout",
            Self::BadRequest => "bad_request",
            Self::HeadTooLarge => "request_header_too_large",
            Self::UriTooLong => "uri_too_long",
        }
    }

    /// What happened, for the access-log line.
    pub fn detail(self) -> &'static str {
        match self {
            Self::RequestHeader => {
                "a request head was not complete within limits.requestHeaderTimeout of its first byte"
            }
            Self::Idle => "no request in flight for limits.idleTimeout",
            Self::StreamIdle => {
                "nothing moved on the HTTP/1.1 response in flight for limits.streamIdleTimeout (cut)"
            }
            Self::BadRequest => "a request head that does not parse: answered 400",
            Self::HeadTooLarge => {
                "a request head over limits.maxRequestHeaderBytes: answered 431"
            }
            Self::UriTooLong => "a request target over 65534 bytes: answered 414",
        }
    }

    /// The refused request head that ended a connection with `error`, when one did: hyper
    /// answers it itself (`400`, `431`, `414`) and ends the connection, before any service.
    pub fn refused_head(error: &(dyn StdError + 'static)) -> Option<Self> {
        let e = error.downcast_ref::<hyper::Error>()?;
        if e.is_parse_too_large() {
            // hyper tells the two apart by its message only.
            return Some(if e.to_string().contains("URI") {
                Self::UriTooLong
            } else {
                Self::HeadTooLarge
            });
        }
        // A parse error hyper does not answer: the HTTP/2 preface on an HTTP/1.1-only
        // connection, and its internal errors.
        (e.is_parse() && !e.is_parse_version_h2() && !e.to_string().contains("internal"))
            .then_some(Self::BadRequest)
    }
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
            started: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            body_faults: AtomicU32::new(0),
            malformed: AtomicBool::new(false),
            stream: Arc::default(),
            written: AtomicU64::new(0),
            write_paused: AtomicBool::new(false),
            writer: AtomicWaker::new(),
            closed: AtomicU8::new(0),
            partial_head: AtomicU64::new(0),
            write_settled: AtomicBool::new(true),
        }
    }

    /// Whether the HTTP/1.1 exchange is over on both sides: no request in flight, the last
    /// request's body read to its end, every response byte flushed, and no head begun since.
    pub(crate) fn parkable(&self) -> bool {
        self.write_settled.load(Ordering::Relaxed)
            && !self.busy()
            && self.stream.is_received()
            && !self.head_incomplete()
    }

    /// Whether bytes of a request head were read that no request has started from yet.
    fn head_incomplete(&self) -> bool {
        match self.partial_head.load(Ordering::Relaxed) {
            0 => false,
            at => at.saturating_sub(1) == u64::from(self.started.load(Ordering::Relaxed)),
        }
    }

    /// Notes whether the last read left a request head incomplete.
    fn head_read(&self, incomplete: bool) {
        let at = match incomplete {
            true => u64::from(self.started.load(Ordering::Relaxed)).saturating_add(1),
            false => 0,
        };
        self.partial_head.store(at, Ordering::Relaxed);
    }

    /// A limit is closing the connection.
    pub fn closed_by(&self, why: ClosedBy) {
        self.closed.store(why as u8, Ordering::Relaxed);
    }

    /// The limit that closed the connection, if one did.
    pub fn closed(&self) -> Option<ClosedBy> {
        let code = self.closed.load(Ordering::Relaxed);
        ClosedBy::ALL.into_iter().find(|c| *c as u8 == code)
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
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// A request ended `at` (the caller's clock reading, to spare another).
    pub fn request_ended(&self, at: Instant) {
        let since = at.saturating_duration_since(self.opened).as_millis() as u64;
        self.idle_since_ms.store(since, Ordering::Release);
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Bytes written to the client so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The client took `n` more bytes: a paused response body may go on.
    fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        self.stream.moved();
        if self.write_paused.load(Ordering::Relaxed) {
            self.write_paused.store(false, Ordering::Relaxed);
            self.writer.wake();
        }
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

/// An HTTP/1.1 response body's share of what is buffered for the client: hyper takes body
/// chunks while it has room for sixteen of them, whatever their size, so a client that does
/// not read would leave megabytes of an upstream's response in memory. The body hands on no
/// more than `limit` bytes the client has not taken yet (a larger chunk goes in parts), and
/// then waits until the client takes some.
#[derive(Debug)]
pub struct Pacing {
    activity: Arc<Activity>,
    /// `written()` when the response began.
    start: u64,
    limit: u64,
}

impl Pacing {
    pub fn new(activity: Arc<Activity>, limit: u32) -> Self {
        let start = activity.written();
        Self {
            activity,
            start,
            limit: u64::from(limit),
        }
    }

    /// How many more bytes a body that handed `sent` bytes on may hand on now; `None` when
    /// it must wait, and then it is woken when the client takes more.
    pub fn room(&self, sent: u64, cx: &mut Context<'_>) -> Option<u64> {
        let room = |a: &Activity| {
            let unwritten = sent.saturating_sub(a.written().wrapping_sub(self.start));
            Some(self.limit.saturating_sub(unwritten)).filter(|r| *r > 0)
        };
        let activity = &*self.activity;
        if let Some(r) = room(activity) {
            return Some(r);
        }
        activity.writer.register(cx.waker());
        activity.write_paused.store(true, Ordering::Relaxed);
        // Written meanwhile (another task's write): go on.
        room(activity)
    }
}

/// Downstream I/O, metered: the progress of the request in flight (`StreamClock`), the bytes
/// the client took (`Pacing`), the size of a request head, and Envoy's
/// `request_headers_timeout` for HTTP/1.1: from the first byte of a request head until the head
/// is complete, which is when the request reaches the proxy and `Activity` counts it in flight.
/// A connection waiting, idle, for its next request is not timed here (the idle timeout is its
/// clock), nor is a request body.
///
/// Bytes read while no request is in flight are a request head. The timer exists only while
/// such a head is incomplete and the client has sent nothing more, so a head that arrives
/// whole and alone (the usual case) costs no timer at all. A partial head that arrives pipelined behind
/// a request still in flight is left to the idle timeout.
///
/// hyper refuses a head that does not fit `max_buf_size` only after a read that leaves it
/// incomplete, and a read may take twice that much; here no more than the limit of head bytes is
/// read between two requests, so hyper's check is exact.
pub struct Metered<I> {
    io: I,
    activity: Arc<Activity>,
    /// `None`: nothing to time or to bound (HTTP/2).
    timeout: Option<Duration>,
    /// How much of the HTTP/2 preface (`PREFACE`) the bytes read so far are; `None` once they
    /// are something else.
    preface: Option<usize>,
    /// Bytes of a head have arrived and its request has not started.
    in_head: bool,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The most bytes of one request head (`maxRequestHeaderBytes`).
    head_limit: usize,
    /// Bytes read since `requests` requests had started.
    head_bytes: usize,
    requests: u32,
    /// Everything written has been flushed: hyper has no response bytes of its own queued.
    flushed: bool,
    /// The head timed out: how much of `HEAD_TIMEOUT_ANSWER` is written.
    answering: Option<usize>,
    /// Bytes an HTTP/1.1 connection had read and not parsed when it was parked: read again
    /// first.
    unread: Bytes,
}

/// Envoy's answer when a request head times out (`request_header_timeout`), before the
/// connection is closed.
const HEAD_TIMEOUT_ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 22\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nrequest header timeout";

/// The HTTP/2 connection preface (RFC 9113 3.4): HTTP/2 with prior knowledge.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<I> Metered<I> {
    pub fn new(
        io: I,
        activity: Arc<Activity>,
        timeout: Option<Duration>,
        head_limit: usize,
    ) -> Self {
        Self {
            io,
            activity,
            timeout,
            preface: Some(0),
            in_head: false,
            deadline: None,
            head_limit,
            head_bytes: 0,
            requests: 0,
            flushed: true,
            answering: None,
            unread: Bytes::new(),
        }
    }

    /// Bytes to read again before the stream's.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        self.unread = bytes;
    }
}

impl<I: Downstream> Metered<I> {
    /// Resolves once the client has sent something more (or closed), at once when bytes are
    /// to be read again.
    pub(crate) async fn first_bytes(&mut self) -> std::io::Result<()> {
        match self.unread.is_empty() {
            true => self.io.first_bytes().await,
            false => Ok(()),
        }
    }
}

impl<I: AsyncWrite + Unpin> Metered<I> {
    /// Writes the 408 of a timed-out head and shuts the connection down; then fails the read,
    /// which ends the connection. Skipped when hyper still has bytes of its own on the way:
    /// the 408 could not be told apart from them.
    fn answer_timeout(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let timed_out = || {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head timeout",
            )))
        };
        if !self.flushed {
            return timed_out();
        }
        let mut sent = self.answering.unwrap_or(0);
        while let Some(rest) = HEAD_TIMEOUT_ANSWER.get(sent..).filter(|r| !r.is_empty()) {
            match Pin::new(&mut self.io).poll_write(cx, rest) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    sent = sent.saturating_add(n);
                    self.answering = Some(sent);
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => return timed_out(),
            }
        }
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => timed_out(),
        }
    }
}

impl<I: AsyncRead + Unpin> Metered<I> {
    /// Reads, no more than what is left of the head limit while no request is in flight.
    fn read_within(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let started = self.activity.started.load(Ordering::Relaxed);
        if started != self.requests || self.activity.busy() {
            self.requests = started;
            self.head_bytes = 0;
        }
        // HTTP/2 (no head timeout) bounds its header lists itself.
        let left = match self.timeout {
            Some(_) => self.head_limit.saturating_sub(self.head_bytes),
            None => usize::MAX,
        };
        if left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            )));
        }
        let before = buf.filled().len();
        let read = if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining()).min(left);
            buf.put_slice(&self.unread.split_to(n));
            if self.unread.is_empty() {
                // An empty slice still holds hyper's old read buffer.
                self.unread = Bytes::new();
            }
            Poll::Ready(Ok(()))
        } else if buf.remaining() <= left {
            Pin::new(&mut self.io).poll_read(cx, buf)
        } else {
            let mut within = ReadBuf::new(buf.initialize_unfilled_to(left));
            let read = Pin::new(&mut self.io).poll_read(cx, &mut within);
            let n = within.filled().len();
            buf.advance(n);
            read
        };
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            if !self.activity.busy() {
                self.head_bytes = self.head_bytes.saturating_add(n);
            }
            self.activity.stream.moved();
        }
        read
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Metered<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.answering.is_some() {
            return this.answer_timeout(cx);
        }
        let before = buf.filled().len();
        let read = this.read_within(cx, buf);
        let read = this.time_head(cx, buf, before, read);
        this.activity.head_read(this.in_head);
        read
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Metered<I> {
    /// Keeps the request header timeout for what a read brought (`before`: how much of `buf`
    /// was filled before it).
    fn time_head(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        before: usize,
        read: Poll<std::io::Result<()>>,
    ) -> Poll<std::io::Result<()>> {
        let this = self;
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
                let read_now = buf.filled().get(before..).unwrap_or_default();
                if let Some(matched) = this.preface.take() {
                    let rest = PREFACE.get(matched..).unwrap_or_default();
                    if read_now.starts_with(rest) {
                        // The whole preface: HTTP/2 with prior knowledge, no heads to time.
                        this.timeout = None;
                        this.in_head = false;
                        this.deadline = None;
                        return read;
                    }
                    if rest.starts_with(read_now) {
                        // Part of it, so far: timed as a head until it is whole.
                        this.preface = Some(matched.saturating_add(read_now.len()));
                        this.in_head = true;
                        return read;
                    }
                }
                // Bytes that end with the blank line that ends a head complete it (the usual
                // request without a body): nothing to time. Empty lines alone are no head (the
                // parser passes over them before a request line), and keep the timer running.
                let blank = read_now.iter().all(|b| matches!(b, b'\r' | b'\n'));
                this.in_head = blank || !read_now.ends_with(b"\r\n\r\n");
                if !this.in_head {
                    this.deadline = None;
                }
            }
            Poll::Pending if this.in_head => {
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_ready() {
                    this.activity.closed_by(ClosedBy::RequestHeader);
                    this.answering = Some(0);
                    return this.answer_timeout(cx);
                }
            }
            _ => {}
        }
        read
    }
}

impl<I> Metered<I> {
    /// Notes a write's outcome: bytes the client took, and whether anything is left unflushed
    /// (a write that waits for room leaves hyper holding bytes).
    fn wrote(&mut self, written: &Poll<std::io::Result<usize>>) {
        match written {
            Poll::Ready(Ok(n)) => {
                self.flushed = false;
                self.activity.write_settled.store(false, Ordering::Relaxed);
                self.activity.wrote(*n);
            }
            Poll::Pending => self.activity.write_settled.store(false, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Metered<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.flushed = true;
            this.activity.write_settled.store(true, Ordering::Relaxed);
        }
        flushed
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

impl Downstream for Box<TlsStream<TcpStream>> {
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
