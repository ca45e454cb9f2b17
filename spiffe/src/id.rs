//! SPIFFE identities, parsed by the rules of the SPIFFE-ID specification.
//!
//! `TrustDomain` and `SpiffeId` (with Istio's principal form) are shared by the config (trust
//! domains, aliases, policies), the proxy (peer identities) and `meshgate pki`. A value that
//! exists is valid: the constructors refuse anything the specification forbids.

use std::fmt;

use serde::Serialize;

/// Why a string is not a valid SPIFFE ID or trust domain name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("empty")]
    Empty,
    /// The string does not start with `spiffe://` (the scheme is lowercase only).
    #[error("scheme is not `spiffe://`")]
    Scheme,
    /// The trust domain component is empty.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain holds a character outside `[a-z0-9._-]` (uppercase, port, userinfo).
    #[error("trust domain contains a character outside [a-z0-9._-]")]
    TrustDomainChar,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    /// A path segment holds a character outside `[A-Za-z0-9._-]` (query, fragment, percent).
    #[error("path contains a character outside [A-Za-z0-9._-]")]
    PathChar,
    /// A path segment is empty: `//` or a trailing `/`.
    #[error("path has an empty segment")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    /// The whole ID is longer than 2048 bytes.
    #[error("longer than 2048 bytes")]
    TooLong,
}

/// A SPIFFE trust domain name: lowercase letters, digits, `.`, `-` and `_`, at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TrustDomain(Box<str>);

impl TrustDomain {
    /// Parses a bare trust domain name such as `example.com` (not a `spiffe://` URI).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.into()))
    }

    /// Istio's default trust domain, compatible with every custom one during a migration.
    pub fn cluster_local() -> Self {
        Self(CLUSTER_LOCAL.into())
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `cluster.local`.
    pub fn is_cluster_local(&self) -> bool {
        &*self.0 == CLUSTER_LOCAL
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID (`spiffe://<trust-domain>/<path>`), with a non-empty path: a workload identity,
/// not a bare trust domain ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct SpiffeId {
    /// The whole URI; `td_end` is the end of the trust domain within it.
    uri: Box<str>,
    td_end: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID per the SPIFFE-ID specification. The path must not be
    /// empty: an X509-SVID names a workload.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if uri.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if path.is_empty() {
            // `spiffe://td` names the trust domain itself, never a workload.
            return Err(SpiffeIdError::EmptySegment);
        }
        for segment in path[1..].split('/') {
            validate_segment(segment)?;
        }
        Ok(Self {
            uri: uri.into(),
            td_end: SCHEME.len().saturating_add(td.len()),
        })
    }

    /// The full URI, `spiffe://example.com/ns/default/sa/sleep`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain name, `example.com`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The path with its leading `/`, `/ns/default/sa/sleep`.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// Istio's principal: the ID without its scheme, `example.com/ns/default/sa/sleep`.
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    /// The Kubernetes namespace of an Istio identity (`/ns/<ns>/sa/<sa>`), if it has that form.
    pub fn namespace(&self) -> Option<&str> {
        let mut parts = self.path()[1..].split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(_)) if parts.next().is_none() => Some(ns),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.uri.into()
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    let ok = td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::TrustDomainChar)
    }
}

fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        s if s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
        {
            Ok(())
        }
        _ => Err(SpiffeIdError::PathChar),
    }
}

const SCHEME: &str = "spiffe://";
const CLUSTER_LOCAL: &str = "cluster.local";
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_from_the_spec_and_istio() {
        let cases = [
            ("spiffe://example.org/workload", "example.org", "/workload"),
            (
                "spiffe://cluster.local/ns/default/sa/sleep",
                "cluster.local",
                "/ns/default/sa/sleep",
            ),
            (
                "spiffe://example_td-1.org/a/b.c/D-_.e",
                "example_td-1.org",
                "/a/b.c/D-_.e",
            ),
            ("spiffe://1.2.3.4/ns/a/sa/b", "1.2.3.4", "/ns/a/sa/b"),
            ("spiffe://td/...", "td", "/..."),
        ];
        for (uri, td, path) in cases {
            let id = SpiffeId::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(id.trust_domain(), td, "{uri}");
            assert_eq!(id.path(), path, "{uri}");
            assert_eq!(id.as_str(), uri);
        }
    }

    #[test]
    fn invalid_ids_from_the_spec() {
        use SpiffeIdError::*;
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        let long_id = format!("spiffe://td/{}", "a".repeat(2040));
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("http://example.org/a", Scheme),
            ("SPIFFE://example.org/a", Scheme),
            ("spiffe:/example.org/a", Scheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///a", EmptyTrustDomain),
            ("spiffe://Example.org/a", TrustDomainChar),
            ("spiffe://example.org:8080/a", TrustDomainChar),
            ("spiffe://user@example.org/a", TrustDomainChar),
            ("spiffe://exa mple.org/a", TrustDomainChar),
            ("spiffe://example.org", EmptySegment),
            ("spiffe://example.org/", EmptySegment),
            ("spiffe://example.org/a/", EmptySegment),
            ("spiffe://example.org//a", EmptySegment),
            ("spiffe://example.org/./a", DotSegment),
            ("spiffe://example.org/a/..", DotSegment),
            ("spiffe://example.org/a?b=c", PathChar),
            ("spiffe://example.org/a#frag", PathChar),
            ("spiffe://example.org/a%20b", PathChar),
            ("spiffe://example.org/a b", PathChar),
            (&long_td, TrustDomainTooLong),
            (&long_id, TooLong),
        ];
        for (uri, want) in cases {
            assert_eq!(SpiffeId::parse(uri), Err(*want), "{uri}");
        }
    }

    #[test]
    fn principal_and_namespace_follow_istio() {
        let id = SpiffeId::parse("spiffe://example.com/ns/default/sa/sleep").unwrap();
        assert_eq!(id.principal(), "example.com/ns/default/sa/sleep");
        assert_eq!(id.namespace(), Some("default"));
        let id = SpiffeId::parse("spiffe://example.com/ns/default/sa/sleep/extra").unwrap();
        assert_eq!(id.namespace(), None);
        let id = SpiffeId::parse("spiffe://example.com/workload").unwrap();
        assert_eq!(id.namespace(), None);
    }

    #[test]
    fn trust_domain_names() {
        assert!(TrustDomain::new("example-target.com").is_ok());
        assert!(TrustDomain::new("cluster.local")
            .unwrap()
            .is_cluster_local());
        assert_eq!(
            TrustDomain::new("Upper.com"),
            Err(SpiffeIdError::TrustDomainChar)
        );
        assert_eq!(TrustDomain::new(""), Err(SpiffeIdError::EmptyTrustDomain));
        assert_eq!(
            TrustDomain::new("spiffe://x"),
            Err(SpiffeIdError::TrustDomainChar)
        );
    }
}
