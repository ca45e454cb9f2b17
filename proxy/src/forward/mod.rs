//! Forward: request -> upstream response, over a pooled connection.
//!
//! Applies the route's URI and authority rewrites, hands the request to the backend's pool
//! (which picks the endpoint and the connection), tries again as the route's retry policy says,
//! and streams both bodies. The request's hop-by-hop headers are gone already (`head`), and its
//! headers are not edited here: the owned ones were set last. The response's hop-by-hop headers
//! are dropped. The route's timeout runs from the end of the request body to the end of the
//! response, every try and backoff included: past it a body being streamed is cut (`UT`), as
//! Envoy's; `perTryTimeout` bounds each try up to its response head, the first from the end
//! of the request body too (`deadline`).

pub mod balance;
pub mod connect;
pub(crate) mod deadline;
pub mod h1;
pub mod pool;
pub mod retry;
mod settings;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use tokio::time::Instant;

use meshgate_config::model::{BackendProtocol, RequestMatch, Retry, StringMatcher, UriRewrite};

use deadline::{Deadline, Expired, RouteTimer, Within};
pub use pool::{PooledBody, Upstreams};

use crate::body::{Replayable, RequestBody};
use crate::head::HopByHop;
use crate::route::Selected;
use pool::{Failed, UpstreamBackend};
use retry::{Failure, Tried};

/// Why a request got no upstream response. All of them are the upstream's fault (503, 504),
/// but for a request whose authority cannot be sent on (400).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request's authority cannot be written upstream.
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// The backend has no endpoint (a subset whose labels select none).
    #[error("no upstream endpoint")]
    NoEndpoint,
    /// The route names a subset no DestinationRule defines (Envoy's missing cluster).
    #[error("no cluster for the route's destination subset")]
    NoCluster,
    /// The connection could not be made (refused, unresolvable, connect timeout, TLS refused).
    #[error("upstream connect: {0}")]
    Connect(#[source] connect::ConnectError),
    /// The connection failed after it was made (reset, protocol error).
    #[error("upstream: {0}")]
    Upstream(#[source] UpstreamError),
    /// No response within the route's timeout (or, on the last try, its `perTryTimeout`).
    #[error("upstream timeout")]
    Timeout,
    /// A circuit breaker is open: too many requests pending or in flight.
    #[error("upstream overflow")]
    Overflow,
}

/// How an upstream connection failed once it carried a request: as hyper's client read it
/// (requests with a body, HTTP/2), or as meshgate's own HTTP/1.1 client did (`h1`). A
/// response body that breaks off says so with the same error.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Http1(#[from] h1::Error),
    /// The route's timeout passed while the body was coming.
    #[error("upstream request timeout")]
    Timeout,
}

/// How a request's tries went, for its response flags and the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tries {
    /// Tries after the first.
    pub retries: u32,
    /// The last try failed in a way the policy retries, and no retry was left.
    pub limit_exceeded: bool,
}

/// The most of a request body kept for a retry: Envoy's default per-request buffer limit. A
/// larger body is sent on as it comes and not retried once any of it was sent.
pub const RETRY_BUFFER_BYTES: usize = 1 << 20;

/// The downstream side of a request, for consistent hashing: the client's address (the
/// trusted one) and the connection's two ends (the seed of a generated cookie, as Envoy's).
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    pub client: IpAddr,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// Sends `req` to backend `backend` of the model and returns the upstream's response.
///
/// An async block rather than an `async fn`, which would keep the request twice (see
/// `route_and_forward`).
// Not an `async fn` on purpose (above).
#[allow(clippy::manual_async_fn)]
pub fn forward<'a>(
    upstreams: &'a Upstreams,
    backend: usize,
    selected: Selected<'a>,
    mut req: Request<RequestBody>,
    downstream: &'a Downstream,
    tries: &'a mut Tries,
) -> impl Future<Output = Result<Response<PooledBody>, ForwardError>> + Send + 'a {
    async move {
        let upstream = upstreams.backend(backend);
        let route = selected.route;

        // The upstream sees the original host (or the rewritten one), as Envoy sends it.
        let host = match &route.rewrite_authority {
            Some(a) => a.clone(),
            None => match req.headers().get(header::HOST) {
                Some(h) => h.clone(),
                // HTTP/2 carries the authority in the URI, not in a Host header.
                None => req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    .ok_or(ForwardError::BadRequest("no authority"))?,
            },
        };
        let path = rewritten_path(selected, req.uri()).unwrap_or_else(|| {
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        });
        let policy = route.retry.as_ref();
        // The content type is looked up only for a policy with gRPC conditions.
        let grpc = || {
            req.headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        };
        let http2 = upstream.protocol == BackendProtocol::Http2;
        let again = policy.is_some_and(|p| retry::may_retry_after_send(p, http2, grpc));
        // Read before the body is taken to be kept: the route's timeout, and the first try's
        // `perTryTimeout`, start when it is in, as Envoy starts them.
        let per_try_timeout = policy.and_then(|p| p.per_try_timeout);
        let arriving = (route.timeout.is_some() || per_try_timeout.is_some())
            .then(|| req.body().arriving().cloned())
            .flatten();
        let deadline = route
            .timeout
            .and_then(|t| Deadline::new(t, arriving.as_ref()));
        let replay = keep_and_mirror(&mut req, again, upstreams, route, &host, &path);
        to_upstream(&mut req, host, path, upstream.protocol)?;

        let key = upstream
            .balancer()
            .key(req.headers(), req.uri(), downstream.client, || {
                let seed = format!("{}{}", downstream.peer, downstream.local);
                format!("{:016x}", balance::hash(seed.as_bytes()))
            });
        let attempt = Attempt {
            upstream,
            key: key.hash,
            deadline,
        };
        // The first try, here rather than in a function of its own: every request's future holds
        // it, and each layer of `async fn` would hold the request once more.
        let other_hosts = policy.is_some_and(|p| p.other_hosts);
        let per_try = per_try_timeout.and_then(|t| Deadline::new(t, arriving.as_ref()));
        let kept = replay.filter(|_| again).map(|body| Kept::new(&req, body));
        let mut tried = Tried::default();
        let (result, failure) = match upstream.pick(&req, attempt.key, &mut tried, other_hosts) {
            Err(e) => (Err(Failed::unsent(e, req)), None),
            Ok(target) => {
                let index = target.index();
                let sending = pin!(upstream.send_to(target, req));
                let sent = Within::new(per_try.as_ref(), attempt.deadline.as_ref(), sending).await;
                attempt.ended(sent, index)
            }
        };
        let mut response = match policy {
            // A response can be retried only when the request was kept (`again`).
            Some(policy) if (again || result.is_err()) && retriable(policy, &result, failure) => {
                Box::pin(attempt.retry(policy, result, kept, tried, tries)).await?
            }
            _ => finish(result)?,
        };
        if let Some(cookie) = key.set_cookie {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        // Envoy's route timeout runs until the response is whole, its body included. On an
        // HTTP/2 stream its executor runs it: hyper polls no body the client's window keeps
        // paused, and the executor resets the stream when it passes.
        let timer = attempt.deadline.as_ref().and_then(RouteTimer::new);
        if let Some(timer) = timer.filter(|_| !http_body::Body::is_end_stream(response.body())) {
            match crate::stream::StreamClock::current() {
                Some(stream) => {
                    stream.route_deadline(timer);
                    response.body_mut().stream_deadline(stream);
                }
                None => response.body_mut().deadline(Box::pin(timer)),
            }
        }
        Ok(response)
    }
}

/// What every try of one request shares.
struct Attempt<'a> {
    upstream: &'a UpstreamBackend,
    /// The consistent-hash key.
    key: Option<u64>,
    /// The route's timeout.
    deadline: Option<Deadline>,
}

impl Attempt<'_> {
    /// Tries again after `result`, a try the policy retries, until a try succeeds or the
    /// policy says to stop.
    async fn retry(
        &self,
        policy: &Retry,
        mut result: Result<Response<PooledBody>, Failed>,
        kept: Option<Kept>,
        mut tried: Tried,
        tries: &mut Tries,
    ) -> Result<Response<PooledBody>, ForwardError> {
        let upstream = self.upstream;
        let mut slot = None;
        loop {
            if tries.retries >= policy.attempts {
                tries.limit_exceeded = true;
                upstream.counts().retry_limit_exceeded();
                return finish(result);
            }
            // `maxRetries`: the retries in flight on this backend.
            drop(slot.take());
            let Some(entered) = upstream.retry_slot() else {
                upstream.counts().retry_overflow();
                return finish(result);
            };
            slot = Some(entered);
            // The request again: as it came back unsent, or rebuilt from what was kept.
            let next = match result {
                Err(Failed {
                    unsent: Some(unsent),
                    ..
                }) => *unsent,
                result => match kept.as_ref().and_then(Kept::again) {
                    Some(again) => again,
                    // The body outgrew what is kept: the last answer stands.
                    None => return finish(result),
                },
            };
            tries.retries = tries.retries.saturating_add(1);
            upstream.counts().retried();
            let wait = retry::backoff(policy.backoff, tries.retries);
            // The route's deadline, once known, bounds the backoff too (while the body is
            // still coming, it is further off than the timeout itself).
            match self.deadline.as_ref().and_then(Deadline::known) {
                Some(d) if Instant::now().checked_add(wait).is_none_or(|t| t >= d) => {
                    tokio::time::sleep_until(d).await;
                    return Err(ForwardError::Timeout);
                }
                _ => tokio::time::sleep(wait).await,
            }
            let failure;
            (result, failure) = self
                .once(next, policy.per_try_timeout, &mut tried, policy.other_hosts)
                .await;
            if !retriable(policy, &result, failure) {
                if result.is_ok() {
                    upstream.counts().retry_succeeded();
                }
                return finish(result);
            }
        }
    }

    /// How a try to endpoint `index` ended (`Err`: a timeout passed), and how it failed, for
    /// the retry policy (`None`: a failure no policy retries, or the route's timeout).
    fn ended(
        &self,
        sent: Result<Result<Response<PooledBody>, Failed>, Expired>,
        index: Option<usize>,
    ) -> (Result<Response<PooledBody>, Failed>, Option<Failure>) {
        let result = match sent {
            Ok(result) => result,
            Err(expired) => {
                if let Some(i) = index {
                    self.upstream.record(i, balance::Outcome::Timeout);
                }
                let failure = (expired == Expired::PerTry).then_some(Failure::PerTryTimeout);
                return (Err(Failed::sent(ForwardError::Timeout)), failure);
            }
        };
        let failure = match &result {
            Ok(_) => None,
            Err(f) => match &f.error {
                ForwardError::Connect(_) => Some(Failure::Connect),
                ForwardError::Upstream(e) => Some(Failure::Reset {
                    sent: f.unsent.is_none(),
                    refused: refused_stream(e),
                }),
                _ => None,
            },
        };
        (result, failure)
    }

    /// One try of a retry.
    async fn once(
        &self,
        req: Request<RequestBody>,
        per_try: Option<Duration>,
        tried: &mut Tried,
        other_hosts: bool,
    ) -> (Result<Response<PooledBody>, Failed>, Option<Failure>) {
        let target = match self.upstream.pick(&req, self.key, tried, other_hosts) {
            Ok(target) => target,
            Err(e) => return (Err(Failed::unsent(e, req)), None),
        };
        let index = target.index();
        let sending = pin!(self.upstream.send_to(target, req));
        // A retry's request is in whole: its `perTryTimeout` runs from now.
        let per_try = per_try.and_then(|t| Deadline::new(t, None));
        let sent = Within::new(per_try.as_ref(), self.deadline.as_ref(), sending).await;
        self.ended(sent, index)
    }
}

/// Whether `policy` tries again after a try that ended so.
fn retriable(
    policy: &Retry,
    result: &Result<Response<PooledBody>, Failed>,
    failure: Option<Failure>,
) -> bool {
    match (result, failure) {
        (Ok(response), _) => retry::retries_response(policy, response),
        (Err(_), Some(failure)) => retry::retries_failure(policy, failure),
        (Err(_), None) => false,
    }
}

fn finish(
    result: Result<Response<PooledBody>, Failed>,
) -> Result<Response<PooledBody>, ForwardError> {
    result.map_err(|f| f.error)
}

/// Whether an HTTP/2 upstream refused the stream (`REFUSED_STREAM`): the request was not
/// processed, and can be tried again.
fn refused_stream(e: &UpstreamError) -> bool {
    let UpstreamError::Hyper(e) = e else {
        return false;
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// A request's head and body, kept for another try.
struct Kept {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Replayable,
}

impl Kept {
    /// Keeps the head of `req`, the first try's, and its `body`.
    fn new(req: &Request<RequestBody>, body: Replayable) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        }
    }

    /// The request for the next try; `None` when the body is no longer whole.
    fn again(&self) -> Option<Request<RequestBody>> {
        let body = self.body.next_try()?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

/// Writes the authority and path as the upstream's HTTP version carries them: HTTP/1.1 in
/// origin form with `Host`, HTTP/2 with `:authority`.
fn to_upstream(
    req: &mut Request<RequestBody>,
    host: HeaderValue,
    path: PathAndQuery,
    protocol: BackendProtocol,
) -> Result<(), ForwardError> {
    let mut parts = http::uri::Parts::default();
    match protocol {
        BackendProtocol::Http1 | BackendProtocol::Opaque => {
            *req.version_mut() = Version::HTTP_11;
            // Most requests already carry both as the upstream is to see them: a look is
            // cheaper than a map insert and a new URI.
            if req.headers().get(header::HOST) != Some(&host) {
                req.headers_mut().insert(header::HOST, host);
            }
            let uri = req.uri();
            if uri.scheme().is_none()
                && uri.authority().is_none()
                && uri.path_and_query() == Some(&path)
            {
                return Ok(());
            }
        }
        BackendProtocol::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(
                Authority::try_from(host.as_bytes())
                    .map_err(|_| ForwardError::BadRequest("authority"))?,
            );
            req.headers_mut().remove(header::HOST);
        }
    }
    parts.path_and_query = Some(path);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ForwardError::BadRequest("uri"))?;
    Ok(())
}

/// Keeps the body of `req` when a try that was sent may be tried `again`, or for the route's
/// mirrors that draw this request, and sends those their copies.
fn keep_and_mirror(
    req: &mut Request<RequestBody>,
    again: bool,
    upstreams: &Upstreams,
    route: &meshgate_config::model::Route,
    host: &HeaderValue,
    path: &PathAndQuery,
) -> Option<Replayable> {
    let mut mirrors = route
        .mirrors
        .iter()
        .filter(|m| drawn(m.per_million))
        .peekable();
    if !again && mirrors.peek().is_none() {
        return None;
    }
    let body = std::mem::replace(req.body_mut(), RequestBody::empty());
    let kept = Replayable::new(body, RETRY_BUFFER_BYTES);
    *req.body_mut() = kept.next_try().unwrap_or_else(RequestBody::empty);
    for m in mirrors {
        mirror(
            upstreams.backend(m.backend),
            req,
            host,
            path,
            &kept,
            route.timeout,
        );
    }
    Some(kept)
}

/// Whether a share of `per_million` takes this request.
fn drawn(per_million: u32) -> bool {
    per_million >= 1_000_000 || (per_million > 0 && fastrand::u32(..1_000_000) < per_million)
}

/// Sends a copy of `req` (its method and headers; its body once the client has sent it whole)
/// to `backend`, with `-shadow` added to the host as Envoy does (before any port), and forgets
/// it: the copy never holds up or fails the request. Dropped, and counted, when too many copies
/// are in flight to the backend or the body outgrows what is kept.
fn mirror(
    backend: &Arc<UpstreamBackend>,
    req: &Request<RequestBody>,
    host: &HeaderValue,
    path: &PathAndQuery,
    body: &Replayable,
    timeout: Option<Duration>,
) {
    let Some(slot) = backend.mirror_slot() else {
        backend.counts().mirrored(false);
        return;
    };
    let Some(host) = shadow_host(host) else {
        backend.counts().mirrored(false);
        return;
    };
    let (method, headers, path) = (req.method().clone(), req.headers().clone(), path.clone());
    let complete = body.complete();
    let backend = backend.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let Ok(body) = complete.await else {
            backend.counts().mirrored(false);
            return;
        };
        let mut copy = Request::new(body.body());
        *copy.method_mut() = method;
        *copy.headers_mut() = headers;
        if to_upstream(&mut copy, host, path, backend.protocol).is_err() {
            backend.counts().mirrored(false);
            return;
        }
        backend.counts().mirrored(true);
        let mut tried = Tried::default();
        let send = backend.send(copy, None, &mut tried, false);
        let response = match timeout {
            Some(t) => tokio::time::timeout(t, send).await.ok(),
            None => Some(send.await),
        };
        // The answer is read to its end, so that the connection goes back to its pool.
        if let Some(Ok(response)) = response {
            let mut body = response.into_body();
            while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
        }
    });
}

/// `host-shadow`, or `host-shadow:port`.
fn shadow_host(host: &HeaderValue) -> Option<HeaderValue> {
    let text = host.to_str().ok()?;
    let name = crate::route::strip_port(text);
    let port = &text[name.len()..];
    HeaderValue::from_str(&format!("{name}-shadow{port}")).ok()
}

/// `outboundTrafficPolicy: ALLOW_ANY` on the outbound listener: a request for a host that no
/// route or ServiceEntry names goes, plaintext HTTP/1.1, to that host and the port of its
/// authority, resolved by DNS now (Istio's `PassthroughCluster`). One connection per request:
/// such traffic is the exception, and a pool per arbitrary host would grow without bound.
pub async fn passthrough(
    host: &str,
    port: u16,
    mut req: Request<RequestBody>,
) -> Result<Response<PooledBody>, ForwardError> {
    let connector = connect::Connector::new(
        PASSTHROUGH_CONNECT_TIMEOUT,
        &meshgate_config::model::TcpKeepalive::default(),
        None,
    );
    let io = connector
        .connect(host, port, None)
        .await
        .map_err(ForwardError::Connect)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| ForwardError::Connect(connect::ConnectError::Http(e)))?;
    tokio::spawn(conn);
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !req.headers().contains_key(header::HOST) {
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            req.headers_mut().insert(header::HOST, value);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = Uri::from(path);
    let mut response = sender
        .send_request(req)
        .await
        .map_err(|e| ForwardError::Upstream(e.into()))?;
    remove_hop_by_hop(response.headers_mut());
    Ok(response.map(PooledBody::unpooled))
}

/// Istio's default `connectTimeout`.
const PASSTHROUGH_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The path and query the route's `rewrite.uri` or `rewrite.uriRegexRewrite` makes of `uri`;
/// `None` for a route without either.
pub fn rewritten_path(selected: Selected<'_>, uri: &Uri) -> Option<PathAndQuery> {
    match &selected.route.rewrite_uri {
        Some(UriRewrite::Prefix(new)) => Some(rewrite_path(uri, new, selected.matched)),
        Some(regex @ UriRewrite::Regex { .. }) => Some(regex_rewrite_path(uri, regex)),
        None => None,
    }
}

/// Istio's `rewrite.uri`, as Envoy's `prefix_rewrite` on the route Istio makes of the match
/// that selected the request: a `prefix` match has that prefix replaced; an `exact` or `regex`
/// match has the whole path replaced; a match without `uri` (or a route without matches) is
/// Envoy's prefix `/`, so only the leading `/` is replaced. The query is kept.
fn rewrite_path(uri: &Uri, new: &str, matched: Option<&RequestMatch>) -> PathAndQuery {
    let original = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let path = original.path();
    let replaced = match matched.and_then(|m| Some((m, m.uri.as_ref()?))) {
        // With `ignoreUriCase`, the prefix as the path has it, whatever its case.
        Some((m, StringMatcher::Prefix(p))) if m.has_uri_prefix(path, p) => p.len(),
        Some((_, StringMatcher::Prefix(_)))
        | Some((_, StringMatcher::Exact(_)))
        | Some((_, StringMatcher::Regex(_))) => path.len(),
        None => usize::from(path.starts_with('/')),
    };
    let rest = &path[replaced..];
    let mut text = String::with_capacity(new.len().saturating_add(rest.len()).saturating_add(16));
    text.push_str(new);
    text.push_str(rest);
    if let Some(q) = original.query() {
        text.push('?');
        text.push_str(q);
    }
    PathAndQuery::try_from(text).unwrap_or(original)
}

/// `uri`'s path with every match of `pattern` replaced, its query kept: Envoy's
/// `regex_rewrite` (RE2's `GlobalReplace` on the path alone).
fn regex_rewrite_path(uri: &Uri, rewrite: &UriRewrite) -> PathAndQuery {
    let original = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut text = rewrite.replace_all(original.path()).into_owned();
    if let Some(q) = original.query() {
        text.push('?');
        text.push_str(q);
    }
    PathAndQuery::try_from(text).unwrap_or(original)
}

/// Drops from a response the headers that describe one hop (RFC 9110 7.6.1), and those its
/// Connection header names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let found = HopByHop::scan(headers);
    if found.is_empty() {
        return;
    }
    if found.has(&header::CONNECTION) {
        // The hop-by-hop ones go below.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| HopByHop::nominated(v.as_bytes()))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    found.remove_from(headers);
}

/// Drops from an upstream's trailers what no trailer may carry on to the client (RFC 9110
/// 6.5.1): the hop-by-hop fields, those `Connection` names, and `Content-Length`. HTTP/2 has no
/// place for them at all (a stream whose trailers held one would be reset).
pub(crate) fn sanitize_trailers(trailers: &mut HeaderMap) {
    remove_hop_by_hop(trailers);
    trailers.remove(header::CONTENT_LENGTH);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    /// `to_upstream` on a request with `uri` and `host` (`None`: no Host field), for an
    /// upstream that is to see `authority` and `path`: its Host values, URI and version.
    fn upstream_head(
        uri: &str,
        host: Option<&str>,
        authority: &str,
        path: &str,
        protocol: BackendProtocol,
    ) -> (Vec<String>, String, Version) {
        let mut req = Request::builder().uri(uri);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let mut req = req.body(RequestBody::empty()).unwrap();
        let authority = HeaderValue::from_str(authority).unwrap();
        let path = PathAndQuery::try_from(path).unwrap();
        to_upstream(&mut req, authority, path, protocol).unwrap();
        let hosts = req
            .headers()
            .get_all(header::HOST)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (hosts, req.uri().to_string(), req.version())
    }

    #[test]
    fn an_http1_upstream_sees_host_and_origin_form_whether_or_not_they_change() {
        use BackendProtocol::Http1;
        let cases = [
            // As received: nothing to change.
            ("/a?b=1", Some("svc.example"), "svc.example", "/a?b=1"),
            // The authority rewritten, the path not.
            ("/a", Some("old.example"), "new.example", "/a"),
            // The path rewritten, the authority not.
            ("/old?q", Some("svc.example"), "svc.example", "/new?q"),
            // From HTTP/2: the authority in the URI and no Host field.
            ("https://svc.example/a", None, "svc.example", "/a"),
        ];
        for (uri, host, authority, path) in cases {
            let (hosts, uri, version) = upstream_head(uri, host, authority, path, Http1);
            assert_eq!(hosts, [authority], "{uri}");
            assert_eq!(uri, path);
            assert_eq!(version, Version::HTTP_11);
        }
    }

    #[test]
    fn an_http2_upstream_sees_the_authority_in_the_uri_and_no_host() {
        let (hosts, uri, version) = upstream_head(
            "/a",
            Some("old.example"),
            "new.example",
            "/a",
            BackendProtocol::Http2,
        );
        assert!(hosts.is_empty());
        assert_eq!(uri, "http://new.example/a");
        assert_eq!(version, Version::HTTP_2);
    }

    #[test]
    fn a_response_loses_its_hop_by_hop_headers_and_what_connection_names() {
        let mut h = headers(&[
            ("content-type", "text/plain"),
            ("connection", "keep-alive, X-Private"),
            ("connection", "close"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-kept"]);

        let mut h = headers(&[("keep-alive", "timeout=5"), ("x-kept", "1")]);
        remove_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
