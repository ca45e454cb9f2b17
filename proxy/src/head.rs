//! Head: the request head made canonical before anything reads it, or refused.
//!
//! Receives a request as hyper parsed it; hands on a request with
//!
//! - one authority, which routing, AuthorizationPolicy, the access log and the upstream all
//!   use: lowercase, no trailing dot, in the `Host` header (HTTP/1.1) or the URI (HTTP/2). An
//!   HTTP/1.1 absolute-form target replaces `Host`, as RFC 9112 3.2.2 tells a proxy to do; an
//!   HTTP/2 `host` header that disagrees with `:authority` is refused (RFC 9113 8.3.1), as is a
//!   second `Host`, userinfo, or a character no host name has;
//! - one path, normalized as `meshConfig.pathNormalization` says (see `model::path`);
//! - no hop-by-hop headers: `Connection` and the headers it nominates are removed, `TE` is kept
//!   only as `trailers`. Nominating a header the proxy owns (or `host`, `x-forwarded-host`, a
//!   pseudo-header), or ten or more headers, is refused, as Envoy refuses nominations of its
//!   `x-forwarded-*` headers;
//! - headers whose name holds `_` dropped, kept or refused per
//!   `spec.http.headersWithUnderscoresAction`; the underscore spelling of an owned header
//!   (`x_mesh_origin`) is dropped whatever the setting, since some backends read `_` as `-`.
//!
//! It refuses (400) what it cannot make canonical, and CONNECT (405): meshgate does not tunnel.
//! The tags are set after this stage and nothing after them edits the request's headers.
//! Nothing here allocates for a head that is already canonical.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Version};

use meshgate_config::model::path::PathError;
use meshgate_config::model::{HttpSettings, UnderscoreHeaders};

use crate::tag::Owned;

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// No `Host` (HTTP/1.1) and no `:authority` (HTTP/2).
    #[error("no authority")]
    NoAuthority,
    /// More than one `Host` header (RFC 9112 3.2).
    #[error("more than one Host header")]
    DuplicateHost,
    /// An authority that is not `host[:port]`: userinfo, an empty host, a bad port, or a
    /// character no host name holds.
    #[error("malformed authority")]
    BadAuthority,
    /// HTTP/2 `:authority` and `host` name different hosts (RFC 9113 8.3.1).
    #[error(":authority and host disagree")]
    AuthorityMismatch,
    /// The path could not be normalized.
    #[error("{0}")]
    Path(#[from] PathError),
    /// `Connection` nominates a header the proxy owns, `host`, `x-forwarded-host` or a
    /// pseudo-header: removing it would change who the caller is or where it goes.
    #[error("Connection nominates a header the proxy owns")]
    NominatesOwned,
    /// `Connection` nominates ten or more headers (Envoy's limit).
    #[error("Connection nominates too many headers")]
    TooManyNominations,
    /// A header that is not text where text is required.
    #[error("malformed header")]
    BadHeader,
    /// A header name holds `_` and `headersWithUnderscoresAction` is `REJECT_REQUEST`.
    #[error("a header name holds an underscore")]
    Underscore,
    /// CONNECT: meshgate routes requests, it does not tunnel.
    #[error("CONNECT is not supported")]
    Connect,
}

/// Makes `req`'s head canonical in place, or says why it cannot be.
pub fn canonicalize<B>(
    req: &mut Request<B>,
    settings: &HttpSettings,
    owned: &Owned,
) -> Result<(), HeadError> {
    if req.method() == Method::CONNECT {
        return Err(HeadError::Connect);
    }
    authority(req)?;
    let path = req.uri().path();
    if let Cow::Owned(normalized) = settings.path_normalization.apply(path)? {
        set_path(req.uri_mut(), &normalized)?;
    }
    let headers = req.headers_mut();
    // One pass over the names for both: most heads have neither.
    let (found, underscore) = HopByHop::scan_request(headers);
    hop_by_hop(headers, found, owned)?;
    if underscore {
        underscores(headers, settings.headers_with_underscores, owned)?;
    }
    Ok(())
}

/// One authority, canonical, in one place.
fn authority<B>(req: &mut Request<B>) -> Result<(), HeadError> {
    let h2 = req.version() == Version::HTTP_2;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::DuplicateHost);
    }
    match (req.uri().authority(), host) {
        // HTTP/2 with `:authority`: a `host` header must say the same, and goes.
        (Some(a), host) if h2 => {
            let canonical = canonical(a.as_str())?;
            let had_host = match host {
                None => false,
                Some(host) => {
                    let host = host.to_str().map_err(|_| HeadError::BadAuthority)?;
                    if *self::canonical(host)? != *canonical {
                        return Err(HeadError::AuthorityMismatch);
                    }
                    true
                }
            };
            let rewritten = match canonical {
                Cow::Owned(c) => Some(c),
                Cow::Borrowed(_) => None,
            };
            if had_host {
                req.headers_mut().remove(header::HOST);
            }
            if let Some(c) = rewritten {
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.authority = Some(c.parse().map_err(|_| HeadError::BadAuthority)?);
                *req.uri_mut() = Uri::from_parts(parts).map_err(|_| HeadError::BadAuthority)?;
            }
        }
        // HTTP/1.1 absolute form: the target's authority replaces Host (RFC 9112 3.2.2), and
        // the target becomes origin form.
        (Some(a), _) => {
            let value = HeaderValue::from_str(&canonical(a.as_str())?)
                .map_err(|_| HeadError::BadAuthority)?;
            req.headers_mut().insert(header::HOST, value);
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = None;
            parts.authority = None;
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| HeadError::BadAuthority)?;
        }
        (None, Some(host)) => {
            let text = host.to_str().map_err(|_| HeadError::BadAuthority)?;
            if let Cow::Owned(c) = canonical(text)? {
                let value = HeaderValue::from_str(&c).map_err(|_| HeadError::BadAuthority)?;
                req.headers_mut().insert(header::HOST, value);
            }
        }
        (None, None) => return Err(HeadError::NoAuthority),
    }
    Ok(())
}

/// `host[:port]` lowercase, without a trailing dot on the host or an empty port; borrowed
/// when it already is. Refuses anything else.
pub fn canonical(authority: &str) -> Result<Cow<'_, str>, HeadError> {
    let (host, port) = split_port(authority)?;
    let literal = host.starts_with('[');
    // One pass over the host's bytes: refused, or kept and whether it needs lowercasing.
    let mut upper = false;
    if literal {
        // `split_port` ends a literal at its `]`.
        let valid = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|inner| {
                !inner.is_empty()
                    && inner
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            });
        if !valid {
            return Err(HeadError::BadAuthority);
        }
        upper = host.bytes().any(|b| b.is_ascii_uppercase());
    } else {
        if host.is_empty() {
            return Err(HeadError::BadAuthority);
        }
        for b in host.bytes() {
            match HOST_BYTES.get(usize::from(b)).copied().unwrap_or(INVALID) {
                KEPT => {}
                UPPER => upper = true,
                _ => return Err(HeadError::BadAuthority),
            }
        }
    }
    let trimmed = if literal {
        host
    } else {
        host.strip_suffix('.').unwrap_or(host)
    };
    if trimmed.is_empty() || trimmed.ends_with('.') {
        return Err(HeadError::BadAuthority);
    }
    let unchanged = trimmed.len() == host.len() && !upper && port.is_none_or(|p| !p.is_empty());
    if unchanged {
        return Ok(Cow::Borrowed(authority));
    }
    let mut out = trimmed.to_ascii_lowercase();
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(':');
        out.push_str(p);
    }
    Ok(Cow::Owned(out))
}

/// What each byte of a registered name is: a table lookup per byte of every request's host.
// Built at compile time, where an index out of bounds fails the build.
#[allow(clippy::indexing_slicing)]
const HOST_BYTES: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut b = 0u8;
    loop {
        table[b as usize] = match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => KEPT,
            b'A'..=b'Z' => UPPER,
            _ => INVALID,
        };
        if b == u8::MAX {
            break;
        }
        b += 1;
    }
    table
};
const INVALID: u8 = 0;
const KEPT: u8 = 1;
const UPPER: u8 = 2;

/// Splits off `:port` (digits, at most 65535; empty allowed, as RFC 3986's `*DIGIT`).
fn split_port(authority: &str) -> Result<(&str, Option<&str>), HeadError> {
    let cut = if authority.starts_with('[') {
        authority
            .find(']')
            .map(|i| i.saturating_add(1))
            .ok_or(HeadError::BadAuthority)?
    } else {
        authority.rfind(':').unwrap_or(authority.len())
    };
    let (host, rest) = authority
        .split_at_checked(cut)
        .ok_or(HeadError::BadAuthority)?;
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        None => return Err(HeadError::BadAuthority),
        Some(p) => {
            let number_ok = p.is_empty()
                || (p.len() <= 5
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u32>().is_ok_and(|n| n <= 65535));
            if !number_ok {
                return Err(HeadError::BadAuthority);
            }
            Some(p)
        }
    };
    Ok((host, port))
}

/// Replaces the URI's path, keeping its query (and scheme and authority on HTTP/2).
fn set_path(uri: &mut Uri, path: &str) -> Result<(), HeadError> {
    let mut parts = std::mem::take(uri).into_parts();
    let query = parts.path_and_query.as_ref().and_then(|p| p.query());
    let text = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    parts.path_and_query =
        Some(PathAndQuery::try_from(text).map_err(|_| HeadError::Path(PathError::NotAbsolute))?);
    *uri = Uri::from_parts(parts).map_err(|_| HeadError::Path(PathError::NotAbsolute))?;
    Ok(())
}

/// Removes `Connection`, what it nominates, and the other hop-by-hop headers.
fn hop_by_hop(headers: &mut HeaderMap, found: HopByHop, owned: &Owned) -> Result<(), HeadError> {
    if found.is_empty() {
        return Ok(());
    }
    if found.has(&header::CONNECTION) {
        let mut nominated = Vec::new();
        let mut count = 0usize;
        for value in headers.get_all(header::CONNECTION) {
            let text = value.to_str().map_err(|_| HeadError::BadHeader)?;
            for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                count = count.saturating_add(1);
                if count >= MAX_NOMINATIONS {
                    return Err(HeadError::TooManyNominations);
                }
                if token.starts_with(':') {
                    return Err(HeadError::NominatesOwned);
                }
                // Hop-by-hop already, or the connection's own options.
                if ["close", "keep-alive", "upgrade", "http2-settings", "te"]
                    .iter()
                    .any(|t| token.eq_ignore_ascii_case(t))
                {
                    continue;
                }
                let name =
                    HeaderName::from_bytes(token.as_bytes()).map_err(|_| HeadError::BadHeader)?;
                if owned.contains(&name) || name == header::HOST || name == X_FORWARDED_HOST {
                    return Err(HeadError::NominatesOwned);
                }
                nominated.push(name);
            }
        }
        for name in nominated {
            headers.remove(name);
        }
    }
    // TE survives only as `trailers` (gRPC backends ask for it), as Envoy keeps it.
    let trailers = found.has(&header::TE)
        && headers.get(header::TE).is_some_and(|te| {
            te.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    found.remove_from(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(())
}

/// The hop-by-hop headers (RFC 9110 7.6.1) a head holds, found in one pass over its names.
/// Most heads hold none or one of the six, and looking each up costs a hash and a probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HopByHop(u8);

impl HopByHop {
    pub(crate) fn scan(headers: &HeaderMap) -> Self {
        let mut found = 0u8;
        for name in headers.keys() {
            found |= Self::bit(name);
        }
        Self(found)
    }

    /// `scan`, and whether a name holds `_`.
    fn scan_request(headers: &HeaderMap) -> (Self, bool) {
        let mut found = 0u8;
        let mut underscore = false;
        for name in headers.keys() {
            found |= Self::bit(name);
            underscore |= name.as_str().bytes().any(|b| b == b'_');
        }
        (Self(found), underscore)
    }

    /// `name`'s bit: its position in `HOP_BY_HOP`. A match on the spelling rather than a
    /// search of the array: it runs for every field of every request, and each use of the
    /// `const` array builds its six names and drops them again.
    pub(crate) fn bit(name: &HeaderName) -> u8 {
        Self::bit_of(name.as_str().as_bytes())
    }

    /// The bit of a lowercase name, 0 for one not in `HOP_BY_HOP`.
    fn bit_of(lower: &[u8]) -> u8 {
        match lower {
            b"connection" => 1,
            b"keep-alive" => 1 << 1,
            b"proxy-connection" => 1 << 2,
            b"transfer-encoding" => 1 << 3,
            b"upgrade" => 1 << 4,
            b"te" => 1 << 5,
            _ => 0,
        }
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the head held `name`, one of `HOP_BY_HOP`.
    pub(crate) fn has(self, name: &HeaderName) -> bool {
        self.0 & Self::bit(name) != 0
    }

    /// Whether `token` (as a Connection header nominates it) is one of `HOP_BY_HOP`, in any
    /// case.
    pub(crate) fn names(token: &[u8]) -> bool {
        // As long as the longest, `transfer-encoding`.
        let mut lower = [0u8; 17];
        let Some(lower) = lower.get_mut(..token.len()) else {
            return false;
        };
        lower.copy_from_slice(token);
        lower.make_ascii_lowercase();
        Self::bit_of(lower) != 0
    }

    /// The fields a response's `Connection` value nominates for removal (RFC 9110 7.6.1), but
    /// the hop-by-hop ones (removed anyway): each comma-separated token that is a field name,
    /// whatever the other tokens hold.
    pub(crate) fn nominated(value: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
        value
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|n| !Self::names(n))
            .filter_map(|n| HeaderName::from_bytes(n).ok())
    }

    /// Removes every one the head held.
    pub(crate) fn remove_from(self, headers: &mut HeaderMap) {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }
}

/// Headers whose name holds `_` (the head has one).
fn underscores(
    headers: &mut HeaderMap,
    action: UnderscoreHeaders,
    owned: &Owned,
) -> Result<(), HeadError> {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        match action {
            UnderscoreHeaders::RejectRequest => return Err(HeadError::Underscore),
            UnderscoreHeaders::DropHeader => {
                headers.remove(&name);
            }
            UnderscoreHeaders::Allow => {
                if owned.spelled_with_underscores(name.as_str()) {
                    headers.remove(&name);
                }
            }
        }
    }
    Ok(())
}

/// Envoy refuses more nominations than this.
const MAX_NOMINATIONS: usize = 10;

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

#[cfg(test)]
mod tests;
