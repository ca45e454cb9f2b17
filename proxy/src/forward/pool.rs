//! Upstream pools, on hyper's connection API.
//!
//! Each backend has its own connector (so a connection is only reused for the endpoint, TLS
//! settings and identity that shaped it) and its endpoints. An endpoint keeps its idle HTTP/1.1
//! connections in a list behind a mutex that one worker holds for a push or a pop, and its
//! shared HTTP/2 connections, as many as the streams in flight need (Envoy's HTTP/2 pool): a
//! connection takes at most `maxConcurrentStreams` streams, or as many as its server allows
//! when that is fewer (`settings`). `maxConnections` bounds them too, though an endpoint may
//! always have one; a request that finds every stream taken and no connection left to open
//! waits for a stream, pending as an HTTP/1.1 request waits for a connection. A request
//! leases an HTTP/1.1 connection; the lease rides on the response
//! body and puts the connection back when the body ends (`maxRequestsPerConnection` retires it
//! instead). `maxConnections` is a semaphore: an HTTP/1.1 connection carries one request at a
//! time, so at most that many requests, and connections, at once; a request waiting for a
//! permit is pending, and more pending than `http1MaxPendingRequests` overflow (Envoy's circuit
//! breakers, as are `http2MaxRequests` for the requests in flight, and `maxRetries` for the
//! retries in flight). Idle connections are closed after `idleTimeout` by a sweeper per
//! endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use meshgate_config::model::{Backend, BackendProtocol, Endpoints, Model};

use super::balance::{Balancer, Candidate, Health, Outcome};
use super::connect::{ConnectError, Connector};
use super::h1;
use super::retry::Tried;
use super::{ForwardError, UpstreamError};
use crate::body::RequestBody;
use crate::material::Material;
use crate::metrics::{Series, UpstreamCounts};
use crate::runtime::BuildError;
use crate::tls::client::origination;
use crate::tls::credentials::Credentials;

/// Every backend of the model, ready to forward to.
#[derive(Debug)]
pub struct Upstreams {
    backends: Vec<Arc<UpstreamBackend>>,
}

/// One backend at run time.
#[derive(Debug)]
pub struct UpstreamBackend {
    pub protocol: BackendProtocol,
    connector: Connector,
    balancer: Balancer,
    endpoints: Vec<Arc<Endpoint>>,
    /// `maxConnections`, as permits.
    connections: Option<Arc<Semaphore>>,
    /// Requests waiting for a permit, and how many may (`http1MaxPendingRequests`).
    pending: Gauge,
    /// Requests in flight, from the try to the end of its response, and how many may be
    /// (`http2MaxRequests`): counted only when limited.
    requests: Option<(Arc<AtomicUsize>, usize)>,
    /// Retries in flight, and how many may be (`maxRetries`).
    retries: Gauge,
    /// Mirrored copies in flight to this backend.
    mirrors: Arc<AtomicUsize>,
    max_requests_per_connection: Option<u32>,
    /// `maxConcurrentStreams`: requests at once on one HTTP/2 connection.
    max_concurrent_streams: Option<u32>,
    /// `proxyProtocol`: the PROXY header version streams open with.
    proxy_protocol: Option<meshgate_config::model::ProxyVersion>,
    idle_timeout: Duration,
    /// `maxConnectionDuration`: a connection this old takes no new request.
    max_age: Option<Duration>,
    /// The top-level `tcp.idleTimeout` and `maxConnectionDuration`, for streams `open_stream`
    /// opened.
    stream_idle: Option<Duration>,
    stream_max_age: Option<Duration>,
    /// Connections made, and attempts that failed, for `/stats/prometheus`.
    counts: UpstreamCounts,
    /// A subset no DestinationRule defines: every request is a 503 (`NC`).
    undefined: bool,
    /// The endpoint's port is each request's (`Backend::port` 0): one endpoint per port seen,
    /// made on first use.
    by_port: Option<Mutex<Vec<Arc<Endpoint>>>>,
}

/// The most mirrored copies in flight to one backend; more are not sent (a mirror never
/// holds up the main request, and a slow one must not hold the proxy's memory either).
pub const MIRRORS_IN_FLIGHT: usize = 1024;

/// A count of things in flight and its limit.
#[derive(Debug)]
struct Gauge {
    now: AtomicUsize,
    max: usize,
}

impl Gauge {
    fn new(max: Option<u32>) -> Self {
        Self {
            now: AtomicUsize::new(0),
            max: max.map_or(usize::MAX, |n| n as usize),
        }
    }

    /// One more, unless the limit is reached.
    fn enter(&self) -> Option<Entered<'_>> {
        if self.now.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.now.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Entered(&self.now))
    }
}

/// One of a gauge's, until dropped.
#[derive(Debug)]
pub struct Entered<'a>(&'a AtomicUsize);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request counted in flight on its backend until its response ends.
#[derive(Debug)]
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a try goes.
#[derive(Debug)]
pub enum Target {
    /// The backend's endpoint at this index.
    Endpoint(usize),
    /// The endpoint for the request's port.
    Port(Arc<Endpoint>),
}

impl Target {
    /// The index of the backend's endpoint, for outlier detection.
    pub fn index(&self) -> Option<usize> {
        match self {
            Target::Endpoint(i) => Some(*i),
            Target::Port(_) => None,
        }
    }
}

/// A try that got no response: why, and the request when it was never sent (so it can be
/// tried again as it is).
#[derive(Debug)]
pub struct Failed {
    pub error: ForwardError,
    /// Boxed: a failure is rare, and every try's result would carry the room for a request.
    pub unsent: Option<Box<Request<RequestBody>>>,
}

impl Failed {
    pub(super) fn unsent(error: ForwardError, req: Request<RequestBody>) -> Self {
        Self {
            error,
            unsent: Some(Box::new(req)),
        }
    }

    pub(super) fn sent(error: ForwardError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// A connection being opened.
type Opening<'a, T> = Pin<Box<dyn Future<Output = Result<T, ForwardError>> + Send + 'a>>;

/// One address of a backend and its connections.
#[derive(Debug)]
pub struct Endpoint {
    host: Box<str>,
    port: u16,
    /// Requests sent and not yet answered, for LEAST_REQUEST.
    in_flight: AtomicUsize,
    /// Its consecutive errors and ejection, for outlier detection.
    health: Health,
    idle: Mutex<Vec<Idle>>,
    /// Idle connections of meshgate's own HTTP/1.1 client (requests without a body).
    own: Mutex<Vec<OwnIdle>>,
    http2: Mutex<Http2Pool>,
    /// Signalled when an HTTP/2 stream ends, when an HTTP/2
    /// connection goes, and when one being opened is ready (or failed).
    freed: Arc<Notify>,
    /// HTTP/2 connections alive, in the pool or leaving it.
    http2_live: Arc<AtomicUsize>,
    sweeper: AtomicBool,
}

#[derive(Debug)]
struct OwnIdle {
    conn: h1::Conn,
    used: u32,
    since: Instant,
    retire_at: RetireAt,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    used: u32,
    since: Instant,
    retire_at: RetireAt,
}

/// An endpoint's HTTP/2 connections.
#[derive(Debug, Default)]
struct Http2Pool {
    /// The connections that take new streams. A connection that leaves the list closes once
    /// its streams end.
    shared: Vec<Shared>,
    /// Connections being opened, and the requests counting on them (their openers among
    /// them). A request that finds no stream waits for one being opened while it has room (as
    /// Envoy's pool counts a connecting connection's streams), rather than opening its own.
    opening: usize,
    promised: usize,
    /// Connections that failed to open: those counting on one fail with it, as Envoy fails
    /// the pending requests of a connection that could not connect.
    failed: u64,
}

#[derive(Debug)]
struct Shared {
    sender: http2::SendRequest<RequestBody>,
    /// The streams at once the server allows on it, as its task last saw them.
    allowed: Arc<AtomicUsize>,
    /// Requests given this connection, for `maxRequestsPerConnection`: counted under the
    /// pool's lock as they are given.
    used: usize,
    retire_at: RetireAt,
    streams: Arc<Streams>,
}

impl Shared {
    /// Whether the connection may take a new stream: open, short of `limit` requests
    /// (`maxRequestsPerConnection`), not retired by age.
    fn takes_streams(&self, limit: usize) -> bool {
        !self.sender.is_closed() && self.used < limit && young(self.retire_at)
    }
}

/// What one HTTP/2 connection carries while it lives, in the pool or leaving it: its streams
/// in flight and its `maxConnections` permit. Both
/// go with the last of the connection's streams, which wakes a request waiting for room.
#[derive(Debug)]
struct Streams {
    now: AtomicUsize,
    /// When its last stream ended (`retire_clock` milliseconds), for the idle timeout of a
    /// connection past the endpoint's first.
    idle_since: AtomicU64,
    freed: Arc<Notify>,
    live: Arc<AtomicUsize>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Streams {
    fn drop(&mut self) {
        // The permit and the count first, then the wake-up: the request woken finds them.
        drop(self.permit.take());
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// Waits for a stream or a connection of the endpoint to go (`freed`), or for a permit of
/// `permits`, which another endpoint may give back: the permit, when that came first.
async fn room(
    freed: Pin<Box<tokio::sync::futures::Notified<'_>>>,
    permits: &Arc<Semaphore>,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        () = freed => None,
        permit = permits.clone().acquire_owned() => permit.ok(),
    }
}

/// What `next_stream` decided.
enum Next<'e> {
    Stream(http2::SendRequest<RequestBody>, StreamSlot),
    /// Wait, counting on a connection being opened (with a promise), or for a stream to end
    /// or a connection to go (with `full`: every connection `maxConnections` allows is open).
    Wait {
        promise: Option<Promise<'e>>,
        full: bool,
        freed: Pin<Box<tokio::sync::futures::Notified<'e>>>,
    },
    Open(Connecting<'e>),
}

/// A request's count among those a connection being opened is to take, and how many
/// connections had failed to open when it began to count: given back when it looks again.
struct Promise<'e> {
    endpoint: &'e Endpoint,
    failed: u64,
}

impl Drop for Promise<'_> {
    fn drop(&mut self) {
        let mut pool = self
            .endpoint
            .http2
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pool.promised = pool.promised.saturating_sub(1);
    }
}

/// A connection being opened, with its `maxConnections` permit until the connection takes
/// it. Dropped once the connection is in the pool, or when opening failed or was given up
/// (its request gone): either way those counting on it look again. After a failure, which
/// `send_http2` counts first, they fail too.
struct Connecting<'e> {
    endpoint: &'e Endpoint,
    permit: Option<OwnedSemaphorePermit>,
    /// The streams at once its server is expected to allow until it says.
    expected: usize,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        {
            let mut pool = self
                .endpoint
                .http2
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            pool.opening = pool.opening.saturating_sub(1);
            pool.promised = pool.promised.saturating_sub(1);
        }
        self.endpoint.freed.notify_waiters();
    }
}

/// One stream's place on its connection, held by the response body: freed when the body ends
/// or is dropped, which wakes a request waiting for one.
#[derive(Debug)]
struct StreamSlot(Arc<Streams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.now.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(retire_clock(), Ordering::Relaxed);
        }
        self.0.freed.notify_one();
    }
}

/// The streams a connection takes: at most `cap`, and at most what its server allows. A
/// server that allows none for now (RFC 9113 wants that short) has requests queued on its
/// connection rather than a connection opened for each.
fn stream_room(allowed: usize, cap: Option<usize>) -> usize {
    let allowed = if allowed == 0 { usize::MAX } else { allowed };
    allowed.min(cap.unwrap_or(usize::MAX))
}

/// When a connection retires (`maxConnectionDuration`): milliseconds on the pools' clock
/// (`retire_clock`), 0 for never. Eight bytes rather than an `Option<Instant>`'s sixteen:
/// it rides in every response body's lease, which is moved as the response goes.
type RetireAt = u64;

/// The pools' clock for `RetireAt`: milliseconds since it was first read.
fn retire_clock() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Whether a connection that retires at `retire_at` may still take a request; no clock is
/// read for one that never retires.
fn young(retire_at: RetireAt) -> bool {
    retire_at == 0 || retire_clock() < retire_at
}

impl Upstreams {
    /// Pools and TLS origination for every backend of `model`; `issuers` are the resolved
    /// `spec.trust.issuers`.
    pub fn new(
        model: &Model,
        credentials: Option<&Credentials>,
        issuers: &[(String, Vec<String>)],
        material: &Material,
        provider: &Arc<CryptoProvider>,
        series: &Series<'_>,
    ) -> Result<Self, BuildError> {
        let backends = model
            .backends
            .iter()
            .map(|b| {
                let counts = series.upstream(b);
                UpstreamBackend::new(b, credentials, issuers, material, provider, counts)
                    .map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { backends })
    }

    /// Every backend, in model order.
    pub fn all(&self) -> &[Arc<UpstreamBackend>] {
        &self.backends
    }

    /// Backend `i` of the model (an index the compiled model guarantees).
    // Routes name backends by their index in `Model::backends` (set when the configuration
    // compiles), and `new` makes one pool per model backend, in order.
    #[allow(clippy::indexing_slicing)]
    pub fn backend(&self, i: usize) -> &Arc<UpstreamBackend> {
        &self.backends[i]
    }
}

impl UpstreamBackend {
    fn new(
        b: &Backend,
        credentials: Option<&Credentials>,
        issuers: &[(String, Vec<String>)],
        material: &Material,
        provider: &Arc<CryptoProvider>,
        counts: UpstreamCounts,
    ) -> Result<Self, BuildError> {
        let connector = Connector::new(
            b.policy.connect_timeout,
            &b.policy.tcp_keepalive,
            origination(b, credentials, issuers, material, provider)?,
        );
        let addresses: Vec<(Box<str>, u16)> = match &b.endpoints {
            Endpoints::Static(list) => list
                .iter()
                .map(|a| (a.ip().to_string().into(), a.port()))
                .collect(),
            Endpoints::Dns(list) => list.iter().map(|(h, p)| (h.as_str().into(), *p)).collect(),
            Endpoints::Undefined => Vec::new(),
        };
        let names: Vec<String> = addresses.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        Ok(Self {
            protocol: b.protocol,
            connector,
            balancer: Balancer::new(
                &b.policy.load_balancer,
                b.policy.outlier_detection.as_ref(),
                &names,
            ),
            endpoints: addresses
                .into_iter()
                .map(|(host, port)| Arc::new(Endpoint::new(host, port)))
                .collect(),
            connections: b
                .policy
                .max_connections
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            pending: Gauge::new(b.policy.max_pending_requests),
            requests: b
                .policy
                .max_requests
                .map(|n| (Arc::new(AtomicUsize::new(0)), n as usize)),
            retries: Gauge::new(b.policy.max_retries),
            mirrors: Arc::new(AtomicUsize::new(0)),
            max_requests_per_connection: b.policy.max_requests_per_connection,
            max_concurrent_streams: b.policy.max_concurrent_streams,
            proxy_protocol: b.policy.proxy_protocol,
            idle_timeout: b.policy.idle_timeout,
            max_age: b.policy.max_connection_duration,
            stream_idle: b.policy.tcp_idle_timeout,
            stream_max_age: b.policy.tcp_max_connection_duration,
            counts,
            undefined: matches!(b.endpoints, Endpoints::Undefined),
            by_port: (b.port == 0).then(|| Mutex::new(Vec::new())),
        })
    }

    /// Sends `req` to the next endpoint (see `pick`) and returns the response, whose body
    /// holds the lease.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        key: Option<u64>,
        tried: &mut Tried,
        other_hosts: bool,
    ) -> Result<Response<PooledBody>, Failed> {
        match self.pick(&req, key, tried, other_hosts) {
            Ok(target) => self.send_to(target, req).await,
            Err(e) => Err(Failed::unsent(e, req)),
        }
    }

    /// The endpoint for the next try of `req`: by `key` under consistent hashing; one not in
    /// `tried` when `other_hosts` and there is one; added to `tried`. On a backend whose port
    /// is each request's, the endpoint for the request's port.
    pub fn pick(
        &self,
        req: &Request<RequestBody>,
        key: Option<u64>,
        tried: &mut Tried,
        other_hosts: bool,
    ) -> Result<Target, ForwardError> {
        if self.undefined {
            return Err(ForwardError::NoCluster);
        }
        if let Some(ports) = &self.by_port {
            return Ok(Target::Port(self.port_endpoint(ports, req)));
        }
        let other_hosts = other_hosts && self.balancer.retries_elsewhere();
        let i = self
            .balancer
            .pick(&self.endpoints, key, *tried, other_hosts)
            .ok_or(ForwardError::NoEndpoint)?;
        tried.add(i);
        Ok(Target::Endpoint(i))
    }

    /// The endpoint for the port of the request's authority (80 when it names none), on a
    /// backend whose port is each request's.
    fn port_endpoint(
        &self,
        ports: &Mutex<Vec<Arc<Endpoint>>>,
        req: &Request<RequestBody>,
    ) -> Arc<Endpoint> {
        let port = crate::route::authority_port(req.uri(), req.headers());
        let mut ports = ports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = ports.iter().find(|e| e.port == port) {
            return e.clone();
        }
        let host = self.endpoints.first().map_or("", |e| &e.host);
        let endpoint = Arc::new(Endpoint::new(host.into(), port));
        ports.push(endpoint.clone());
        endpoint
    }

    /// Sends `req` to `target` and returns the response, whose body holds the lease. The
    /// outlier detector counts how it ended.
    pub async fn send_to(
        &self,
        target: Target,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, Failed> {
        let (endpoint, index) = match &target {
            // `pick` gives indices of `endpoints`.
            Target::Endpoint(i) => match self.endpoints.get(*i) {
                Some(e) => (e, Some(*i)),
                None => return Err(Failed::unsent(ForwardError::NoEndpoint, req)),
            },
            Target::Port(e) => (e, None),
        };
        let active = match &self.requests {
            None => None,
            Some((now, max)) => {
                if now.fetch_add(1, Ordering::AcqRel) >= *max {
                    now.fetch_sub(1, Ordering::AcqRel);
                    self.counts.overflow();
                    return Err(Failed::unsent(ForwardError::Overflow, req));
                }
                Some(Active(now.clone()))
            }
        };
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        let _answered = InFlight(&endpoint.in_flight);
        let mut result = match self.protocol {
            // HTTP routes never lead to an opaque backend (the configuration keeps them apart).
            BackendProtocol::Http1 | BackendProtocol::Opaque => {
                self.send_http1(endpoint, req).await
            }
            BackendProtocol::Http2 => self.send_http2(endpoint, req).await,
        };
        let outcome = match &result {
            Ok(response) => Some(Outcome::Status(response.status().as_u16())),
            Err(f) => match f.error {
                ForwardError::Connect(_) | ForwardError::Upstream(_) => Some(Outcome::LocalFailure),
                _ => None,
            },
        };
        if let (Some(i), Some(outcome)) = (index, outcome) {
            self.record(i, outcome);
        }
        // Set in place: the response is not moved once more for it.
        if let Ok(response) = &mut result {
            response.body_mut().active = active;
            // Before anything reads the head (the retry policy, then the client): meshgate's
            // own client leaves these out as it reads it, hyper's does not.
            if !response.body().hop_by_hop_removed() {
                super::remove_hop_by_hop(response.headers_mut());
            }
        }
        result
    }

    /// How long a stream opened by `open_stream` may stay idle, and when it ends, as
    /// `splice` takes them: the DestinationRule's top-level `tcp.idleTimeout` (else
    /// `default_idle`, the listener's `limits.idleTimeout`; 0s: never), and `since` (where
    /// Envoy's `tcp_proxy` starts its clock) plus `maxConnectionDuration`.
    pub fn stream_limits(
        &self,
        default_idle: Option<Duration>,
        since: Instant,
    ) -> (Option<Duration>, Option<Instant>) {
        let idle = match self.stream_idle {
            Some(idle) if idle.is_zero() => None,
            Some(idle) => Some(idle),
            None => default_idle,
        };
        let end = self.stream_max_age.and_then(|max| since.checked_add(max));
        (idle, end)
    }

    /// A new connection, not pooled, to the next endpoint, for bytes the proxy passes on as
    /// they are: each connection is balanced as a request would be (without a hash key), and
    /// a failed connect counts for outlier detection.
    ///
    /// With the DestinationRule's `proxyProtocol`, the connection opens with a PROXY header
    /// naming `client` (source) and `local` (the address it reached us at), and on v2 the TLV
    /// `spiffe` gives (type, the client's SPIFFE ID), when there is one.
    pub async fn open_stream(
        &self,
        client: std::net::SocketAddr,
        local: std::net::SocketAddr,
        spiffe: Option<(u8, &str)>,
    ) -> Result<super::connect::UpstreamStream, ForwardError> {
        if self.undefined {
            return Err(ForwardError::NoCluster);
        }
        let (i, endpoint) = self
            .balancer
            .pick(&self.endpoints, None, Tried::default(), false)
            .and_then(|i| Some((i, self.endpoints.get(i)?)))
            .ok_or(ForwardError::NoEndpoint)?;
        let header = self
            .proxy_protocol
            .map(|v| crate::proxy_protocol::header(v, client, local, spiffe));
        let result = self.connect_with(endpoint, header.as_deref()).await;
        if result.is_err() {
            self.record(i, Outcome::LocalFailure);
        }
        result
    }

    /// Counts how a try on endpoint `i` ended, for outlier detection.
    pub fn record(&self, i: usize, outcome: Outcome) {
        if self.balancer.record(&self.endpoints, i, outcome) {
            self.counts.ejected();
        }
    }

    /// The hash key of a request, under consistent hashing (see `Balancer::key`).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Endpoints ejected by outlier detection now.
    pub fn ejected(&self) -> usize {
        self.balancer.ejected_now(&self.endpoints)
    }

    /// A mirrored copy's place among those in flight to this backend, unless
    /// `MIRRORS_IN_FLIGHT` are.
    pub fn mirror_slot(&self) -> Option<impl Drop + Send + 'static> {
        if self.mirrors.fetch_add(1, Ordering::AcqRel) >= MIRRORS_IN_FLIGHT {
            self.mirrors.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Active(self.mirrors.clone()))
    }

    /// A retry's place among the backend's retries in flight, unless `maxRetries` are.
    pub fn retry_slot(&self) -> Option<Entered<'_>> {
        self.retries.enter()
    }

    /// The backend's counters.
    pub fn counts(&self) -> &UpstreamCounts {
        &self.counts
    }

    /// A new HTTP/1.1 connection to `endpoint`, its task spawned.
    ///
    /// Boxed, as `open_http2`: connecting and the TLS handshake need a large state, rarely, and
    /// inline it would make every request's future larger (hyper allocates room for one per
    /// downstream connection).
    fn open_http1<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
    ) -> Opening<'a, http1::SendRequest<RequestBody>> {
        Box::pin(async move {
            let io = self.connect(endpoint).await?;
            let (sender, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| ForwardError::Connect(ConnectError::Http(e)))?;
            tokio::spawn(conn);
            self.start_sweeper(endpoint);
            Ok(sender)
        })
    }

    /// A new HTTP/2 connection to `endpoint`, its task spawned, with the streams at once its
    /// server allows (`SETTINGS_MAX_CONCURRENT_STREAMS`) as its reads have seen them:
    /// `expected` until its server's SETTINGS come.
    fn open_http2<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        expected: usize,
    ) -> Opening<'a, (http2::SendRequest<RequestBody>, Arc<AtomicUsize>)> {
        Box::pin(async move {
            let io = self.connect(endpoint).await?;
            let allowed = Arc::new(AtomicUsize::new(expected));
            let io = super::settings::Watched::new(io, allowed.clone());
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| ForwardError::Connect(ConnectError::Http(e)))?;
            tokio::spawn(conn);
            Ok((sender, allowed))
        })
    }

    /// A new connection to `endpoint`, counted.
    async fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> Result<super::connect::UpstreamStream, ForwardError> {
        self.connect_with(endpoint, None).await
    }

    async fn connect_with(
        &self,
        endpoint: &Endpoint,
        preface: Option<&[u8]>,
    ) -> Result<super::connect::UpstreamStream, ForwardError> {
        match self
            .connector
            .connect(&endpoint.host, endpoint.port, preface)
            .await
        {
            Ok(io) => {
                self.counts.connect(true);
                Ok(io)
            }
            Err(e) => {
                self.counts.connect(false);
                Err(ForwardError::Connect(e))
            }
        }
    }

    /// Idle HTTP/1.1 connections in the pool now.
    pub fn idle(&self) -> usize {
        self.endpoints
            .iter()
            .map(|e| {
                let hyper = e.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
                let own = e.own.lock().unwrap_or_else(|p| p.into_inner()).len();
                hyper.saturating_add(own)
            })
            .sum()
    }

    /// An async block rather than an `async fn`: an `async fn` keeps its arguments and the
    /// locals it moves them into, and this future holds the request for its whole life.
    // Not an `async fn` on purpose (above).
    #[allow(clippy::manual_async_fn)]
    fn send_http1<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        mut req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<PooledBody>, Failed>> + Send + 'a {
        async move {
            let permit = match &self.connections {
                None => None,
                // The semaphore is never closed.
                Some(s) => match s.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        let Some(_pending) = self.pending.enter() else {
                            self.counts.overflow();
                            return Err(Failed::unsent(ForwardError::Overflow, req));
                        };
                        s.clone().acquire_owned().await.ok()
                    }
                },
            };
            if req.body().is_end_stream() {
                return self.send_own(endpoint, req, permit).await;
            }
            // Pooled connections first; one the server closed meanwhile gives the request back
            // unsent, and the next one is tried.
            while let Some(mut idle) = endpoint.take_idle(self.idle_timeout) {
                // Ready at once unless its last response is still being wound up; an error means
                // the server closed it.
                if idle.sender.ready().await.is_err() {
                    continue;
                }
                match idle.sender.try_send_request(req).await {
                    Ok(response) => {
                        return Ok(self.lease(
                            response.map(Inner::Hyper),
                            endpoint,
                            Lease1::new(
                                Held::Hyper(idle.sender),
                                (idle.used, idle.retire_at),
                                permit,
                            ),
                        ))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => {
                            return Err(Failed::sent(ForwardError::Upstream(e.into_error().into())))
                        }
                    },
                }
            }
            let mut sender = match self.open_http1(endpoint).await {
                Ok(sender) => sender,
                Err(e) => return Err(Failed::unsent(e, req)),
            };
            // An idle connection of meshgate's own client may make room for this one.
            self.make_room(endpoint, &endpoint.own);
            match sender.try_send_request(req).await {
                Ok(response) => Ok(self.lease(
                    response.map(Inner::Hyper),
                    endpoint,
                    Lease1::new(Held::Hyper(sender), (0, self.retire_at()), permit),
                )),
                Err(mut e) => Err(Failed {
                    unsent: e.take_message().map(Box::new),
                    error: ForwardError::Upstream(e.into_error().into()),
                }),
            }
        }
    }

    /// Closes an idle connection of `other` (the other client's idle list) when the one just
    /// opened for a request holding a permit takes the endpoint past `maxConnections`: the
    /// connections in use (one per permit held) and the idle ones of both clients. Counted per
    /// endpoint, as the idle lists are.
    fn make_room<T>(&self, endpoint: &Endpoint, other: &Mutex<Vec<T>>) {
        let Some(permits) = &self.connections else {
            return;
        };
        let hyper = endpoint
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let own = endpoint.own.lock().unwrap_or_else(|p| p.into_inner()).len();
        if hyper.saturating_add(own) > permits.available_permits() {
            drop(other.lock().unwrap_or_else(|p| p.into_inner()).pop());
        }
    }

    /// A request without a body, on meshgate's own HTTP/1.1 client (`h1`): on an idle
    /// connection of the endpoint's, or a new one. A pooled connection whose write fails had
    /// the request refused before the upstream saw it, so the next one is tried.
    ///
    /// A pooled connection that ends before a byte of the response (the upstream closed it
    /// while idle, as the request went out) fails the try, as with hyper's client and in
    /// Envoy: the route's retry policy decides (`reset`), never a resend behind its back.
    ///
    /// An async block rather than an `async fn`, which would keep the request twice (see
    /// `route_and_forward`); connecting is boxed, as in `open_http1`, so that the state of a
    /// connect and its TLS handshake is not in every request's future.
    // Not an `async fn` on purpose (above).
    #[allow(clippy::manual_async_fn)]
    fn send_own<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        mut req: Request<RequestBody>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> impl Future<Output = Result<Response<PooledBody>, Failed>> + Send + 'a {
        async move {
            let method = req.method().clone();
            loop {
                let (mut conn, used, reused) = match endpoint.take_own(self.idle_timeout) {
                    Some(idle) => (idle.conn, (idle.used, idle.retire_at), true),
                    None => {
                        let io = match Box::pin(self.connect(endpoint)).await {
                            Ok(io) => io,
                            Err(e) => return Err(Failed::unsent(e, req)),
                        };
                        self.start_sweeper(endpoint);
                        // An idle connection of hyper's client may make room for this one.
                        self.make_room(endpoint, &endpoint.idle);
                        (h1::Conn::new(io), (0, self.retire_at()), false)
                    }
                };
                if let Err(e) = conn.write_head(&req).await {
                    if reused {
                        continue;
                    }
                    // Not all of the head was written: the upstream cannot have acted on it.
                    let e = ForwardError::Upstream(h1::Error::Io(e).into());
                    return Err(Failed::unsent(e, req));
                }
                // The request is not sent again from here: its map takes the response's fields.
                let room = std::mem::take(req.headers_mut());
                match conn.read_response(&method, room).await {
                    Ok(response) => {
                        return Ok(self.lease(
                            response.map(Inner::Own),
                            endpoint,
                            Lease1::new(Held::Own, used, permit),
                        ))
                    }
                    Err(e) => return Err(Failed::sent(ForwardError::Upstream(e.into()))),
                }
            }
        }
    }

    async fn send_http2(
        &self,
        endpoint: &Arc<Endpoint>,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, Failed> {
        let limit = self.request_limit();
        let cap = self.max_concurrent_streams.map(|n| n as usize);
        // Waiting for a stream, as Envoy counts a pending request (`http1MaxPendingRequests`).
        let mut pending = None;
        // A `maxConnections` permit this request waited for.
        let mut held = None;
        let (mut sender, slot) = loop {
            let next = {
                let mut pool = endpoint.http2.lock().unwrap_or_else(|p| p.into_inner());
                self.next_stream(&mut pool, endpoint, (cap, limit), &mut held)
            };
            let mut connecting = match next {
                Next::Stream(sender, slot) => break (sender, slot),
                Next::Open(connecting) => connecting,
                Next::Wait {
                    promise,
                    full,
                    freed,
                } => {
                    if pending.is_none() {
                        pending = self.pending.enter();
                        if pending.is_none() {
                            self.counts.overflow();
                            return Err(Failed::unsent(ForwardError::Overflow, req));
                        }
                    }
                    match (&self.connections, full) {
                        // Room may also come from another endpoint giving back a permit.
                        (Some(permits), true) => held = Box::pin(room(freed, permits)).await,
                        _ => freed.await,
                    }
                    if let Some(promise) = promise {
                        let failed = endpoint
                            .http2
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .failed;
                        if failed != promise.failed {
                            let e = ForwardError::Connect(ConnectError::Shared);
                            return Err(Failed::unsent(e, req));
                        }
                    }
                    continue;
                }
            };
            let expected = connecting.expected;
            let (sender, allowed) = match self.open_http2(endpoint, expected).await {
                Ok(opened) => opened,
                Err(e) => {
                    // Those counting on this connection fail with it (`connecting`, dropped,
                    // wakes them).
                    let mut pool = endpoint.http2.lock().unwrap_or_else(|p| p.into_inner());
                    pool.failed = pool.failed.wrapping_add(1);
                    drop(pool);
                    return Err(Failed::unsent(e, req));
                }
            };
            endpoint.http2_live.fetch_add(1, Ordering::AcqRel);
            let streams = Arc::new(Streams {
                now: AtomicUsize::new(1),
                idle_since: AtomicU64::new(0),
                freed: endpoint.freed.clone(),
                live: endpoint.http2_live.clone(),
                permit: connecting.permit.take(),
            });
            let slot = StreamSlot(streams.clone());
            let mut pool = endpoint.http2.lock().unwrap_or_else(|p| p.into_inner());
            // The sweeper lets go of connections that aged, and of extra ones gone idle.
            if self.max_age.is_some() || !pool.shared.is_empty() {
                self.start_sweeper(endpoint);
            }
            pool.shared.push(Shared {
                sender: sender.clone(),
                allowed,
                used: 1,
                retire_at: self.retire_at(),
                streams,
            });
            drop(pool);
            drop(connecting);
            break (sender, slot);
        };
        drop(pending);
        if let Err(e) = sender.ready().await {
            return Err(Failed::unsent(ForwardError::Upstream(e.into()), req));
        }
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response.map(|body| PooledBody {
                body: Inner::Bounded(body, Some(slot)),
                lease: None,
                active: None,
                deadline: None,
            })),
            Err(mut e) => Err(Failed {
                unsent: e.take_message().map(Box::new),
                error: ForwardError::Upstream(e.into_error().into()),
            }),
        }
    }

    /// What a request does for a stream, decided under `pool`'s lock: take one on a shared
    /// connection (its slot and its count for `maxRequestsPerConnection` taken here, so two
    /// requests never take a connection's last), wait for a connection being opened that has
    /// room or for a stream or a permit to come free, or open a connection: within
    /// `maxConnections` (with `held`, a permit waited for, or one free now), or without a
    /// permit when the endpoint has no connection at all, as an endpoint may always have one.
    fn next_stream<'e>(
        &self,
        pool: &mut Http2Pool,
        endpoint: &'e Endpoint,
        (cap, limit): (Option<usize>, usize),
        held: &mut Option<OwnedSemaphorePermit>,
    ) -> Next<'e> {
        // A connection that takes no new stream leaves; it closes once its streams end.
        pool.shared.retain(|s| s.takes_streams(limit));
        for s in &mut pool.shared {
            // The configured cap, or the server's own limit when lower, as Envoy's pool takes
            // the least of the two.
            let room = stream_room(s.allowed.load(Ordering::Relaxed), cap);
            if s.streams.now.load(Ordering::Acquire) >= room {
                continue;
            }
            s.streams.now.fetch_add(1, Ordering::AcqRel);
            let slot = StreamSlot(s.streams.clone());
            s.used = s.used.saturating_add(1);
            // A permit waited for and not needed goes back.
            drop(held.take());
            return Next::Stream(s.sender.clone(), slot);
        }
        // Registered under the lock, so that a stream, a connection or a permit coming free
        // after this look is not missed (one before it left a permit in the `Notify`).
        let wait = |promise, full| {
            let mut freed = Box::pin(endpoint.freed.notified());
            freed.as_mut().enable();
            Next::Wait {
                promise,
                full,
                freed,
            }
        };
        // The streams a connection being opened has room for: those its server allows, as the
        // endpoint's connection has seen them (h2's first guess before any), within the cap.
        let expected = pool.shared.first().map_or(super::settings::INITIAL, |s| {
            s.allowed.load(Ordering::Relaxed)
        });
        let room = pool
            .opening
            .saturating_mul(stream_room(expected, cap).min(limit));
        if pool.promised < room {
            // A permit waited for is not needed to wait for this connection.
            drop(held.take());
            pool.promised = pool.promised.saturating_add(1);
            let promise = Promise {
                endpoint,
                failed: pool.failed,
            };
            return wait(Some(promise), false);
        }
        let permit = match (&self.connections, held.take()) {
            (None, _) => None,
            (Some(_), Some(permit)) => Some(permit),
            (Some(permits), None) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) if pool.opening == 0 && endpoint.http2_live.load(Ordering::Acquire) == 0 => {
                    None
                }
                Err(_) => return wait(None, true),
            },
        };
        pool.opening = pool.opening.saturating_add(1);
        pool.promised = pool.promised.saturating_add(1);
        Next::Open(Connecting {
            endpoint,
            permit,
            expected,
        })
    }

    fn lease(
        &self,
        response: Response<Inner>,
        endpoint: &Arc<Endpoint>,
        mut lease: Lease1,
    ) -> Response<PooledBody> {
        lease.used = lease.used.saturating_add(1);
        lease.endpoint = Some(endpoint.clone());
        lease.last = self
            .max_requests_per_connection
            .is_some_and(|max| lease.used >= max);
        let lease = Some(lease);
        response.map(|body| {
            let mut pooled = PooledBody {
                body,
                lease,
                active: None,
                deadline: None,
            };
            // A response without a body (204, HEAD, Content-Length: 0) is done already.
            if pooled.body.is_end_stream() {
                pooled.release();
            }
            pooled
        })
    }

    /// When a connection opened now retires (`maxConnectionDuration`).
    fn retire_at(&self) -> RetireAt {
        self.max_age.map_or(0, |d| {
            let d = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            retire_clock().saturating_add(d).max(1)
        })
    }

    /// `maxRequestsPerConnection` as a count to compare with; unlimited without one.
    fn request_limit(&self) -> usize {
        self.max_requests_per_connection
            .map_or(usize::MAX, |n| n as usize)
    }

    /// One sweeper per endpoint, started with its first connection; it ends with the backend.
    fn start_sweeper(&self, endpoint: &Arc<Endpoint>) {
        if endpoint.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Endpoint> = Arc::downgrade(endpoint);
        let timeout = self.idle_timeout;
        let idle_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let limit = self.request_limit();
        tokio::spawn(async move {
            let period = timeout
                .checked_div(2)
                .unwrap_or(timeout)
                .clamp(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                tokio::time::sleep(period).await;
                let Some(endpoint) = weak.upgrade() else {
                    return;
                };
                endpoint
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|c| {
                        c.since.elapsed() < timeout && !c.sender.is_closed() && young(c.retire_at)
                    });
                endpoint
                    .own
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain_mut(|c| {
                        c.since.elapsed() < timeout && !c.conn.closed() && young(c.retire_at)
                    });
                // HTTP/2 connections that take no new stream are let go (each closes once its
                // streams end), and so are connections past the first usable one that have had
                // no stream for the idle timeout, as Envoy closes idle upstream connections.
                let now = retire_clock();
                let mut pool = endpoint.http2.lock().unwrap_or_else(|p| p.into_inner());
                let mut first = true;
                pool.shared.retain(|s| {
                    if !s.takes_streams(limit) {
                        return false;
                    }
                    let idle = s.streams.now.load(Ordering::Acquire) == 0
                        && now.saturating_sub(s.streams.idle_since.load(Ordering::Relaxed))
                            >= idle_ms;
                    let keep = first || !idle;
                    first = false;
                    keep
                });
                drop(pool);
            }
        });
    }
}

impl Endpoint {
    fn new(host: Box<str>, port: u16) -> Self {
        Self {
            host,
            port,
            in_flight: AtomicUsize::new(0),
            health: Health::default(),
            idle: Mutex::new(Vec::new()),
            own: Mutex::new(Vec::new()),
            http2: Mutex::new(Http2Pool::default()),
            freed: Arc::new(Notify::new()),
            http2_live: Arc::new(AtomicUsize::new(0)),
            sweeper: AtomicBool::new(false),
        }
    }

    /// The most recently used idle connection still open and fresh.
    fn take_idle(&self, idle_timeout: Duration) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < idle_timeout && !c.sender.is_closed() && young(c.retire_at) {
                return Some(c);
            }
        }
        None
    }

    /// The most recently used idle connection of meshgate's own client still open and fresh.
    /// Checked outside the lock, which other workers take.
    fn take_own(&self, idle_timeout: Duration) -> Option<OwnIdle> {
        loop {
            let mut c = self.own.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if c.since.elapsed() < idle_timeout && !c.conn.closed() && young(c.retire_at) {
                return Some(c);
            }
        }
    }
}

impl Candidate for Arc<Endpoint> {
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

/// Counts a request as answered when the response head is back, or the request failed.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/1.1 connection lent to one request.
#[derive(Debug)]
struct Lease1 {
    held: Held,
    used: u32,
    /// `maxConnectionDuration`: when the connection takes no more requests.
    retire_at: RetireAt,
    /// It served its last request (`maxRequestsPerConnection`), worked out when lent.
    last: bool,
    endpoint: Option<Arc<Endpoint>>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Where a lent HTTP/1.1 connection is while its response is read.
#[derive(Debug)]
enum Held {
    /// In hyper's task, reached by this sender.
    Hyper(http1::SendRequest<RequestBody>),
    /// In the response body (`h1::Body`), which gives it back when it ends.
    Own,
}

impl Lease1 {
    /// `used`: requests the connection served before, and when it retires.
    fn new(
        held: Held,
        (used, retire_at): (u32, RetireAt),
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            held,
            used,
            retire_at,
            last: false,
            endpoint: None,
            _permit: permit,
        }
    }

    /// Puts the connection back (`own`: the one the response body gave back, if it may be
    /// kept), unless it served its last request or is closed; dropping the sender closes the
    /// connection once its response is done.
    fn release(self, own: Option<h1::Conn>) {
        let retire = self.last || !young(self.retire_at);
        let Some(endpoint) = self.endpoint.as_ref().filter(|_| !retire) else {
            return;
        };
        match (self.held, own) {
            (Held::Hyper(sender), _) if !sender.is_closed() => endpoint
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Idle {
                    sender,
                    used: self.used,
                    since: Instant::now(),
                    retire_at: self.retire_at,
                }),
            (Held::Own, Some(conn)) => {
                endpoint
                    .own
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(OwnIdle {
                        conn,
                        used: self.used,
                        since: Instant::now(),
                        retire_at: self.retire_at,
                    })
            }
            _ => {}
        }
    }
}

/// An upstream response body; an HTTP/1.1 connection goes back to its pool when it ends.
#[derive(Debug)]
pub struct PooledBody {
    body: Inner,
    lease: Option<Lease1>,
    /// The request's place among the backend's requests in flight, when they are limited.
    active: Option<Active>,
    /// The route's timeout, when it has one.
    deadline: Option<BodyDeadline>,
}

/// Where a response body's route timeout runs.
#[derive(Debug)]
enum BodyDeadline {
    /// Here: the body is cut when it passes (HTTP/1.1 downstream).
    Timer(Pin<Box<super::deadline::RouteTimer>>),
    /// In the HTTP/2 stream's executor, which resets the stream when it passes; the body ends
    /// it when the upstream's response is whole, as Envoy's does.
    Stream(Arc<crate::stream::StreamClock>),
}

/// A response body as hyper's client reads it, or meshgate's own.
#[derive(Debug)]
enum Inner {
    Hyper(Incoming),
    /// An HTTP/2 stream, its place on its connection held until the body ends.
    Bounded(Incoming, Option<StreamSlot>),
    Own(h1::Body),
}

impl PooledBody {
    /// Whether the head came without its hop-by-hop fields: meshgate's own client leaves
    /// them out as it reads it.
    pub(crate) fn hop_by_hop_removed(&self) -> bool {
        matches!(self.body, Inner::Own(_))
    }

    /// The body of a response on a connection that is not pooled.
    pub(crate) fn unpooled(body: Incoming) -> Self {
        Self {
            body: Inner::Hyper(body),
            lease: None,
            active: None,
            deadline: None,
        }
    }

    /// Cuts the body when `timer` fires (`UpstreamError::Timeout`) if it has not ended by
    /// then.
    pub(crate) fn deadline(&mut self, timer: Pin<Box<super::deadline::RouteTimer>>) {
        if !self.body.is_end_stream() {
            self.deadline = Some(BodyDeadline::Timer(timer));
        }
    }

    /// Has `stream`'s route timer, which its executor runs (`StreamClock::route_deadline`),
    /// end when this body's upstream response does.
    pub(crate) fn stream_deadline(&mut self, stream: Arc<crate::stream::StreamClock>) {
        self.deadline = Some(BodyDeadline::Stream(stream));
    }

    /// Ready with `UpstreamError::Timeout` once the deadline has passed, and every time after
    /// (the body is cut for good); pending, the waker registered, before.
    pub(crate) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<UpstreamError> {
        // Looked at for every frame: a route without a timeout costs one branch.
        if self.deadline.is_none() {
            return Poll::Pending;
        }
        // Envoy's route timeout ends with the upstream's response.
        if self.body.is_end_stream() {
            self.end_deadline();
        }
        let Some(BodyDeadline::Timer(timer)) = &mut self.deadline else {
            return Poll::Pending;
        };
        if timer.as_mut().poll_expired(cx).is_pending() {
            return Poll::Pending;
        }
        // Cut mid-body: the connection is not reused.
        self.lease = None;
        self.active = None;
        Poll::Ready(UpstreamError::Timeout)
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            let own = match &mut self.body {
                Inner::Own(body) => body.reusable(),
                Inner::Hyper(_) | Inner::Bounded(..) => None,
            };
            lease.release(own);
        }
        if let Inner::Bounded(_, slot) = &mut self.body {
            *slot = None;
        }
        self.active = None;
        self.end_deadline();
    }

    /// The upstream's response is whole: the route's timeout ends.
    fn end_deadline(&mut self) {
        if let Some(BodyDeadline::Stream(stream)) = self.deadline.take() {
            stream.end_route_deadline();
        }
    }
}

impl Body for Inner {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            Self::Hyper(body) | Self::Bounded(body, _) => {
                Pin::new(body).poll_frame(cx).map_err(UpstreamError::from)
            }
            Self::Own(body) => Pin::new(body).poll_frame(cx).map_err(UpstreamError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(body) | Self::Bounded(body, _) => body.is_end_stream(),
            Self::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(body) | Self::Bounded(body, _) => body.size_hint(),
            Self::Own(body) => body.size_hint(),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.poll_deadline(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        let mut frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &mut frame {
            if let Some(trailers) = f.trailers_mut() {
                super::sanitize_trailers(trailers);
            }
        }
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // A failed body leaves the connection in an unknown state: it is not reused.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
