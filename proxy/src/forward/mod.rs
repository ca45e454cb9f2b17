//! Forward: request -> upstream response, over a pooled connection.
//!
//! Picks the backend's next endpoint (round robin), rewrites the URI to it, applies the route's
//! URI and authority rewrites, drops hop-by-hop headers, and streams both bodies. The route's
//! timeout bounds the wait for the response head.

mod connect;
pub mod pool;

use http::header::{self, HeaderMap, HeaderName};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;

use meshgate_config::model::{BackendProtocol, Route};

pub use pool::Upstreams;

use crate::respond::ProxyError;

/// Sends `req` to backend `backend` of the model and returns the upstream's response.
pub async fn forward(
    upstreams: &Upstreams,
    backend: usize,
    route: &Route,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, ProxyError> {
    let upstream = upstreams.backend(backend);
    let (endpoint, _in_flight) = upstream.pick().ok_or(ProxyError::NoRoute)?;

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
                .ok_or(ProxyError::BadRequest("no authority"))?,
        },
    };
    let path = rewrite_path(req.uri(), route);
    let mut parts = http::uri::Parts::default();
    // The scheme keys the pool; the connector already knows whether to originate TLS.
    parts.scheme = Some(if upstream.tls {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    parts.authority = Some(endpoint.clone());
    parts.path_and_query = Some(path);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("uri"))?;
    remove_hop_by_hop(req.headers_mut());
    req.headers_mut().insert(header::HOST, host);
    *req.version_mut() = match upstream.protocol {
        BackendProtocol::Http1 => Version::HTTP_11,
        BackendProtocol::Http2 => Version::HTTP_2,
    };

    let send = upstream.client.request(req);
    let result = match route.timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)?,
        None => send.await,
    };
    let mut response = result.map_err(|e| {
        if e.is_connect() {
            ProxyError::UpstreamConnect(e)
        } else {
            ProxyError::Upstream(e)
        }
    })?;
    remove_hop_by_hop(response.headers_mut());
    Ok(response)
}

/// Istio's `rewrite.uri`: replaces the matched prefix (for prefix matches) or the whole path.
fn rewrite_path(uri: &Uri, route: &Route) -> PathAndQuery {
    let original = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Some(new) = &route.rewrite_uri else {
        return original;
    };
    let path = original.path();
    let prefix = route.matches.iter().find_map(|m| match &m.uri {
        Some(meshgate_config::model::StringMatcher::Prefix(p)) if path.starts_with(p.as_str()) => {
            Some(p.len())
        }
        _ => None,
    });
    let rest = match prefix {
        Some(n) => &path[n..],
        None => "",
    };
    let mut text = String::with_capacity(new.len() + rest.len() + 16);
    text.push_str(new);
    text.push_str(rest);
    if let Some(q) = original.query() {
        text.push('?');
        text.push_str(q);
    }
    PathAndQuery::try_from(text).unwrap_or(original)
}

/// Drops the headers that describe one hop (RFC 9110 7.6.1), and those the Connection header
/// names.
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
