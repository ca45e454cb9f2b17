//! Every response the proxy makes itself, with its status chosen in one place.
//!
//! | case | status |
//! |---|---|
//! | AuthorizationPolicy denies | 403, body `RBAC: access denied` |
//! | no Gateway host / VirtualService route matches | 404 |
//! | upstream refused, reset, unresolvable | 503 |
//! | upstream timeout | 504 |
//! | malformed request | 400 |
//! | CONNECT | 405 |
//! | route `fault.abort` | its status, body `fault filter abort` (gRPC: 200 and `grpc-status`) |
//! | route `redirect` | its code, `location` |

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use meshgate_config::model::{AbortStatus, DirectResponse, Redirect, RedirectPort};

use crate::access_log::ResponseFlag;
use crate::forward::{ForwardError, PooledBody, UpstreamError};
use crate::head::HeadError;
use crate::stream::StreamTimeout;

/// The body of every response meshgate sends: streamed from upstream, or a buffer the proxy
/// made — an enum rather than a boxed trait object, so responses cost no extra allocation.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from the upstream, never buffered whole.
    Upstream(PooledBody),
    /// Made by the proxy (errors, direct responses, admin, echo).
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        Self::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl crate::body::Deadline for ResponseBody {
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<UpstreamError> {
        match self {
            Self::Upstream(body) => body.poll_deadline(cx),
            Self::Full(_) => Poll::Pending,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            Self::Upstream(body) => Pin::new(body).poll_frame(cx),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Why a request was not forwarded, or failed upstream. The variant says who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream: the request has no usable authority or path.
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// Downstream: the request head cannot be made canonical (or is a CONNECT).
    #[error("malformed request: {0}")]
    Head(#[from] HeadError),
    /// Downstream: an AuthorizationPolicy denies the request (the DENY policy, or none when no
    /// ALLOW policy matched).
    #[error("RBAC: access denied ({})", .0.as_deref().unwrap_or("no ALLOW policy matched"))]
    Denied(Option<String>),
    /// Downstream: no Gateway host or VirtualService route matches.
    #[error("no route")]
    NoRoute,
    /// Upstream (or, for an authority that cannot be sent on, downstream): the forward failed.
    #[error("{0}")]
    Forward(#[from] ForwardError),
    /// The route's `fault.abort` drew this request.
    #[error("fault injected: abort")]
    FaultAbort(AbortStatus),
    /// Downstream: the client's body was malformed or cut short, so the forward failed.
    #[error("the client's request body {}", if *.malformed { "was malformed" } else { "was cut short" })]
    ClientBody { malformed: bool },
    /// Downstream: the stream stalled, or the request body did not come in time.
    #[error("{0}")]
    Timeout(#[from] StreamTimeout),
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ClientBody { .. } => StatusCode::BAD_REQUEST,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Head(HeadError::Connect) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Head(_) => StatusCode::BAD_REQUEST,
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Forward(ForwardError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            Self::Forward(ForwardError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Self::Forward(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::FaultAbort(AbortStatus::Http(status)) => *status,
            // gRPC carries its status in `grpc-status`, over HTTP 200.
            Self::FaultAbort(AbortStatus::Grpc(_)) => StatusCode::OK,
        }
    }

    /// The upstream TLS handshake's refusal, when that is what failed.
    pub fn upstream_tls_failure(&self) -> Option<&crate::identity::PeerError> {
        match self {
            Self::Forward(ForwardError::Connect(crate::forward::connect::ConnectError::Tls(e))) => {
                Some(e)
            }
            _ => None,
        }
    }

    /// Envoy's response flag, for the access log (none for the request timeout, as Envoy).
    pub fn flag(&self) -> Option<ResponseFlag> {
        Some(match self {
            Self::Timeout(StreamTimeout::Idle) => ResponseFlag::StreamIdleTimeout,
            Self::Timeout(StreamTimeout::Request) => return None,
            Self::ClientBody { malformed: true } => ResponseFlag::DownstreamProtocolError,
            Self::ClientBody { malformed: false } => ResponseFlag::DownstreamConnectionTermination,
            Self::BadRequest(_) | Self::Head(_) | Self::Forward(ForwardError::BadRequest(_)) => {
                ResponseFlag::DownstreamProtocolError
            }
            Self::Denied(_) => ResponseFlag::RbacDenied,
            Self::NoRoute => ResponseFlag::NoRoute,
            Self::Forward(ForwardError::NoEndpoint) => ResponseFlag::NoHealthyUpstream,
            Self::Forward(ForwardError::NoCluster) => ResponseFlag::NoCluster,
            Self::Forward(ForwardError::Connect(_)) => ResponseFlag::UpstreamConnectionFailure,
            Self::Forward(ForwardError::Upstream(_)) => ResponseFlag::UpstreamConnectionTermination,
            Self::Forward(ForwardError::Timeout) => ResponseFlag::UpstreamRequestTimeout,
            Self::Forward(ForwardError::Overflow) => ResponseFlag::UpstreamOverflow,
            Self::FaultAbort(_) => ResponseFlag::FaultInjected,
        })
    }

    fn body(&self) -> &'static str {
        match self {
            Self::ClientBody { .. } => "bad request body\n",
            // Envoy's bodies.
            Self::Timeout(StreamTimeout::Idle) => "stream timeout",
            Self::Timeout(StreamTimeout::Request) => "request timeout",
            Self::BadRequest(_) => "bad request\n",
            Self::Head(HeadError::Connect) => "CONNECT is not supported\n",
            Self::Head(_) => "bad request\n",
            // Envoy's body, byte for byte: clients and tests look for it.
            Self::Denied(_) => "RBAC: access denied",
            Self::NoRoute => "no route\n",
            Self::Forward(ForwardError::BadRequest(_)) => "bad request\n",
            Self::Forward(ForwardError::NoEndpoint) => "no healthy upstream\n",
            Self::Forward(ForwardError::NoCluster) => "cluster not found\n",
            Self::Forward(ForwardError::Connect(_)) => "upstream connect error\n",
            Self::Forward(ForwardError::Upstream(_)) => "upstream reset\n",
            Self::Forward(ForwardError::Timeout) => "upstream request timeout\n",
            // Envoy's body, byte for byte.
            Self::Forward(ForwardError::Overflow) => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            }
            // Envoy's body, byte for byte.
            Self::FaultAbort(_) => "fault filter abort",
        }
    }
}

/// The response for a failed request.
pub fn error(e: &ProxyError) -> Response<ResponseBody> {
    let mut response = plain(e.status(), Bytes::from_static(e.body().as_bytes()));
    if let ProxyError::FaultAbort(AbortStatus::Grpc(code)) = e {
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(GRPC_STATUS, HeaderValue::from(*code));
        headers.insert(GRPC_MESSAGE, HeaderValue::from_static("fault filter abort"));
    }
    if let ProxyError::Forward(ForwardError::Overflow) = e {
        // Envoy marks its circuit breakers' answers so that callers' retries back off.
        response.headers_mut().insert(
            HeaderName::from_static("x-envoy-overloaded"),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// A route's `redirect`: the location built from the request's authority and path, as Istio
/// sets Envoy's RedirectAction. `tls` and `listener_port` describe the listener the request
/// came in on (the default scheme, and `derivePort: FROM_REQUEST_PORT`).
pub fn redirect(
    r: &Redirect,
    authority: &str,
    path_and_query: &str,
    tls: bool,
    listener_port: u16,
) -> Response<ResponseBody> {
    let scheme = r
        .scheme
        .as_deref()
        .unwrap_or(if tls { "https" } else { "http" });
    let written = r.authority.as_deref().unwrap_or(authority);
    let host = crate::route::strip_port(written);
    let own_port = written[host.len()..]
        .strip_prefix(':')
        .and_then(|p| p.parse::<u16>().ok());
    let default = |scheme: &str, port: u16| matches!((scheme, port), ("http", 80) | ("https", 443));
    let from = if tls { "https" } else { "http" };
    let port = match r.port {
        // The request's own port, which goes when it is the default one of the new scheme, or
        // of the request's when the scheme changes (Envoy's `processRequestHost`); a port
        // written in `authority` stays as written.
        RedirectPort::Unchanged if r.authority.is_some() => own_port,
        RedirectPort::Unchanged => own_port.filter(|&p| !(scheme != from && default(from, p))),
        RedirectPort::Fixed(p) => Some(p),
        RedirectPort::Listener => Some(listener_port),
        RedirectPort::ProtocolDefault => None,
    }
    .filter(|&p| !default(scheme, p));
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut location = format!("{scheme}://{host}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    match &r.uri {
        // A query in `uri` replaces the request's; otherwise the request's is kept.
        Some(uri) if uri.contains('?') => location.push_str(uri),
        Some(uri) => push_path(&mut location, uri, query),
        None => push_path(&mut location, path, query),
    }
    let mut response = Response::new(ResponseBody::full(Bytes::new()));
    *response.status_mut() = r.code;
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// Envoy's answer to `require_tls` (a Gateway server's `tls.httpsRedirect`): 301 to the same
/// URL over HTTPS, no body.
pub fn https_redirect(location: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::new()));
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn push_path(location: &mut String, path: &str, query: Option<&str>) {
    location.push_str(path);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// A route's `directResponse`.
pub fn direct(d: &DirectResponse) -> Response<ResponseBody> {
    plain(d.status, d.body.clone())
}

fn plain(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
