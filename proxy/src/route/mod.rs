//! Route: request head -> the matched route -> the upstream to forward to.
//!
//! Istio's semantics: the authority (port removed) must match a host of the listener's Gateway
//! servers; the most specific VirtualService host that matches wins (exact, then the longest
//! wildcard suffix, then `*`, by the listener's precomputed host index); inside it the first
//! route whose match succeeds wins. Pure: no I/O, no locks, no allocation.

use http::{HeaderMap, Uri};

pub use meshgate_config::model::MatchInput;
use meshgate_config::model::{Listener, RequestMatch, Route, WeightedBackend};

/// What routing looks at: what a route's match reads, the host (without its port) and the
/// Gateway port of the listener.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    pub input: MatchInput<'a>,
    /// Host without port.
    pub authority: &'a str,
    /// The Gateway port of the listener.
    pub port: u16,
}

/// The route a request takes, and which of its matches selected it.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    pub route: &'a Route,
    /// `None` for a route without matches (it takes every request).
    pub matched: Option<&'a RequestMatch>,
}

/// The route for a request, or `None` (404). On an HTTPS listener, `group` is the TLS group
/// the connection's SNI chose: the authority must be a host of its servers, as Envoy's route
/// configuration belongs to the filter chain the SNI selected.
pub fn route<'a>(
    listener: &'a Listener,
    group: Option<usize>,
    req: &RouteRequest<'_>,
) -> Option<Selected<'a>> {
    // With TLS, the virtual hosts a group sees hold only hosts its server serves (each bound
    // host is a server host narrowed by a VirtualService's), so `find_for` alone decides;
    // without, the host must still be one of a server's.
    if group.is_none()
        && !listener
            .servers
            .iter()
            .any(|s| s.host.matches(req.authority))
    {
        return None;
    }
    // Only the virtual hosts of the servers the SNI chose.
    let vh = listener.routes.find_for(req.authority, group)?;
    vh.routes.iter().find_map(|route| {
        if route.matches.is_empty() {
            return Some(Selected {
                route,
                matched: None,
            });
        }
        route
            .matches
            .iter()
            .find(|m| m.matches(&req.input, req.port))
            .map(|m| Selected {
                route,
                matched: Some(m),
            })
    })
}

/// Whether the server host that `authority` matches most specifically asks for a redirect to
/// HTTPS (`tls.httpsRedirect` on a plaintext server; Envoy's `require_tls`).
pub fn https_redirect(listener: &Listener, authority: &str) -> bool {
    listener
        .servers
        .iter()
        .filter(|s| s.host.matches(authority))
        .min_by_key(|s| std::cmp::Reverse(s.host.specificity()))
        .is_some_and(|s| s.https_redirect)
}

/// The authority of an HTTPS redirect: as sent, without an explicit `:80` (Envoy drops the
/// port only when it is HTTP's default).
pub fn redirect_authority(authority: &str) -> &str {
    authority.strip_suffix(":80").unwrap_or(authority)
}

/// Picks a destination by weight. One destination takes everything, without a random draw.
pub fn pick(backends: &[WeightedBackend]) -> Option<&WeightedBackend> {
    match backends {
        [] => None,
        [one] => Some(one),
        many => {
            // Weights are any `u32`: their sum saturates rather than overflows (a later
            // destination's share shrinks when they add up to more than 2^32 - 1).
            let total = many.iter().fold(0u32, |t, b| t.saturating_add(b.weight));
            let mut draw = fastrand::u32(0..total.max(1));
            many.iter().find(|b| {
                if draw < b.weight {
                    true
                } else {
                    draw = draw.saturating_sub(b.weight);
                    false
                }
            })
        }
    }
}

/// The request's authority without its port: the URI's (HTTP/2) or the Host header's.
pub fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    full_authority(uri, headers).map(strip_port)
}

/// The request's authority as sent, with its port if it names one. After the `head` stage
/// there is exactly one: the URI's (HTTP/2) or the Host header's.
pub fn full_authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => Some(a.as_str()),
        None => headers.get(http::header::HOST)?.to_str().ok(),
    }
}

/// The port of the request's authority: the one written, else 80 (the outbound listener
/// matches ServiceEntry ports with it, as a sidecar does with the destination port).
pub fn authority_port(uri: &Uri, headers: &HeaderMap) -> u16 {
    let raw = match uri.authority() {
        Some(a) => a.as_str(),
        None => match headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            Some(h) => h,
            None => return DEFAULT_PORT,
        },
    };
    let host = strip_port(raw);
    raw[host.len()..]
        .strip_prefix(':')
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_PORT)
}

/// The port of an authority that names none.
const DEFAULT_PORT: u16 = 80;

/// The host of an authority: `[::1]:443` keeps its brackets, `host:443` loses its port.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        if let Some(end) = authority.find(']') {
            return authority.get(..=end).unwrap_or(authority);
        }
    }
    // Bytes, not a `str` pattern: this runs for every request.
    let Some(colon) = authority.bytes().rposition(|b| b == b':') else {
        return authority;
    };
    match authority.split_at_checked(colon) {
        Some((host, port)) if port.bytes().skip(1).all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests;
