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

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use meshgate_config::model::DirectResponse;

use crate::body::ResponseBody;
use crate::head::HeadError;

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
    /// Upstream: the backend has no endpoint (a DNS ServiceEntry whose names all failed to
    /// parse).
    #[error("no upstream endpoint")]
    NoEndpoint,
    /// Upstream: the connection could not be made (refused, unresolvable, connect timeout,
    /// TLS refused).
    #[error("upstream connect: {0}")]
    UpstreamConnect(#[source] crate::forward::connect::ConnectError),
    /// Upstream: the connection failed after it was made (reset, protocol error).
    #[error("upstream: {0}")]
    Upstream(#[source] hyper::Error),
    /// Upstream: no response within the route's timeout.
    #[error("upstream timeout")]
    UpstreamTimeout,
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Head(HeadError::Connect) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Head(_) => StatusCode::BAD_REQUEST,
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoint | Self::UpstreamConnect(_) | Self::Upstream(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Envoy's response flag, for the access log.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::BadRequest(_) | Self::Head(_) => "DPE",
            Self::Denied(_) => "RBAC",
            Self::NoRoute => "NR",
            Self::NoEndpoint => "UH",
            Self::UpstreamConnect(_) => "UF",
            Self::Upstream(_) => "UC",
            Self::UpstreamTimeout => "UT",
        }
    }

    fn body(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad request\n",
            Self::Head(HeadError::Connect) => "CONNECT is not supported\n",
            Self::Head(_) => "bad request\n",
            // Envoy's body, byte for byte: clients and tests look for it.
            Self::Denied(_) => "RBAC: access denied",
            Self::NoRoute => "no route\n",
            Self::NoEndpoint => "no healthy upstream\n",
            Self::UpstreamConnect(_) => "upstream connect error\n",
            Self::Upstream(_) => "upstream reset\n",
            Self::UpstreamTimeout => "upstream request timeout\n",
        }
    }
}

/// The response for a failed request.
pub fn error(e: &ProxyError) -> Response<ResponseBody> {
    plain(e.status(), Bytes::from_static(e.body().as_bytes()))
}

/// Envoy's answer to `require_tls`: 301 to the same URL over HTTPS, no body.
pub fn redirect(location: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::new()));
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

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
