//! Forward: request -> upstream response, over a pooled connection.
//!
//! Applies the route's URI and authority rewrites, hands the request to the backend's pool
//! (which picks the endpoint and the connection), and streams both bodies. The request's
//! hop-by-hop headers are gone already (`head`), and its headers are not edited here: the
//! owned ones were set last. The response's hop-by-hop headers are dropped. The route's
//! timeout bounds the wait for the response head.

pub mod connect;
pub mod pool;

use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};

use meshgate_config::model::{BackendProtocol, RequestMatch, StringMatcher};

pub use pool::{PooledBody, Upstreams};

use crate::body::RequestBody;
use crate::route::Selected;

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
    Upstream(#[source] hyper::Error),
    /// No response within the route's timeout.
    #[error("upstream timeout")]
    Timeout,
}

/// Sends `req` to backend `backend` of the model and returns the upstream's response.
pub async fn forward(
    upstreams: &Upstreams,
    backend: usize,
    selected: Selected<'_>,
    mut req: Request<RequestBody>,
) -> Result<Response<PooledBody>, ForwardError> {
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
    let path = match &route.rewrite_uri {
        Some(new) => rewrite_path(req.uri(), new, selected.matched),
        None => req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path);
    match upstream.protocol {
        // Origin form, with the authority in Host.
        BackendProtocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            req.headers_mut().insert(header::HOST, host);
        }
        // The authority travels as :authority.
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
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ForwardError::BadRequest("uri"))?;

    let send = upstream.send(req);
    let mut response = match route.timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| ForwardError::Timeout)??,
        None => send.await?,
    };
    remove_hop_by_hop(response.headers_mut());
    Ok(response)
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
        .connect(host, port)
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
        .map_err(ForwardError::Upstream)?;
    remove_hop_by_hop(response.headers_mut());
    Ok(response.map(PooledBody::unpooled))
}

/// Istio's default `connectTimeout`.
const PASSTHROUGH_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    let replaced = match matched.and_then(|m| m.uri.as_ref()) {
        Some(StringMatcher::Prefix(p)) if path.starts_with(p.as_str()) => p.len(),
        Some(StringMatcher::Prefix(_))
        | Some(StringMatcher::Exact(_))
        | Some(StringMatcher::Regex(_)) => path.len(),
        None => usize::from(path.starts_with('/')),
    };
    let rest = &path[replaced..];
    let mut text = String::with_capacity(new.len() + rest.len() + 16);
    text.push_str(new);
    text.push_str(rest);
    if let Some(q) = original.query() {
        text.push('?');
        text.push_str(q);
    }
    PathAndQuery::try_from(text).unwrap_or(original)
}

/// Drops from a response the headers that describe one hop (RFC 9110 7.6.1), and those its
/// Connection header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];
