//! Host matching as Istio and Envoy do it: exact, `*.suffix` (any depth), or `*`; case
//! insensitive; the port removed from the request's authority before matching.

use serde::Serialize;

/// A host pattern, precomputed for matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum HostMatcher {
    /// `*`: every host.
    Any,
    /// `*.example.com`, kept as `.example.com` (lowercase).
    Suffix(Box<str>),
    /// `httpbin.example.com` (lowercase).
    Exact(Box<str>),
}

impl HostMatcher {
    /// Parses an Istio host: `*`, `*.suffix` or an exact name. Returns `None` for anything else
    /// (an empty name, a `*` inside the name).
    pub fn parse(host: &str) -> Option<Self> {
        if host == "*" {
            return Some(Self::Any);
        }
        let lower = host.to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix('*') {
            if suffix.len() > 1 && suffix.starts_with('.') && !suffix.contains('*') {
                return Some(Self::Suffix(suffix.into()));
            }
            return None;
        }
        if lower.is_empty() || lower.contains('*') || lower.contains('/') {
            return None;
        }
        Some(Self::Exact(lower.into()))
    }

    /// Whether `host` (no port; any case) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => host.eq_ignore_ascii_case(name),
            // At least one character before the suffix.
            Self::Suffix(suffix) => match host.len().checked_sub(suffix.len()) {
                Some(at) if at > 0 => host
                    .as_bytes()
                    .get(at..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes())),
                _ => false,
            },
        }
    }

    /// How specific a match is: exact beats any suffix, a longer suffix beats a shorter one,
    /// and `*` is last, as Envoy picks a virtual host.
    pub fn specificity(&self) -> usize {
        match self {
            Self::Any => 0,
            Self::Suffix(s) => s.len(),
            Self::Exact(_) => usize::MAX,
        }
    }

    /// Whether two patterns can match a common host (Istio binds a VirtualService host to a
    /// Gateway server host when they intersect).
    pub fn intersects(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Any, _) | (_, Self::Any) => true,
            (Self::Exact(a), b) => b.matches(a),
            (a, Self::Exact(b)) => a.matches(b),
            (Self::Suffix(a), Self::Suffix(b)) => a.ends_with(&**b) || b.ends_with(&**a),
        }
    }
}

impl HostMatcher {
    /// The hosts two patterns have in common, as one pattern (the narrower of the two), or
    /// `None` when they have none: what Istio binds a VirtualService host to on a Gateway
    /// server with another host.
    pub fn intersection(&self, other: &Self) -> Option<Self> {
        if !self.intersects(other) {
            return None;
        }
        Some(if self.specificity() >= other.specificity() {
            self.clone()
        } else {
            other.clone()
        })
    }
}

impl std::fmt::Display for HostMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Exact(s) => f.write_str(s),
        }
    }
}

impl From<HostMatcher> for String {
    fn from(m: HostMatcher) -> String {
        m.to_string()
    }
}

/// The namespace part of a Gateway server host (`ns/host`, `./host`, `*/host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NamespaceFilter {
    /// `*/` or no prefix: VirtualServices of every namespace.
    Any,
    /// `ns/` (or `./`, resolved to the Gateway's namespace).
    Exact(String),
}

impl NamespaceFilter {
    /// Whether a VirtualService in `namespace` may bind.
    pub fn admits(&self, namespace: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(ns) => ns == namespace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let cases = [
            ("*.example-target.com", "httpbin.example-target.com", true),
            (
                "*.example-target.com",
                "outbound_.80_._.httpbin.example-target.com",
                true,
            ),
            ("*.example-target.com", "HTTPBIN.Example-Target.com", true),
            ("*.example-target.com", "example-target.com", false),
            ("*.example-target.com", "evil-example-target.com", false),
            ("httpbin.example.com", "httpbin.example.com", true),
            ("httpbin.example.com", "Httpbin.Example.Com", true),
            ("httpbin.example.com", "httpbin.example.com.evil", false),
            ("*", "anything", true),
        ];
        for (pattern, host, want) in cases {
            let m = HostMatcher::parse(pattern).unwrap();
            assert_eq!(m.matches(host), want, "{pattern} vs {host}");
        }
    }

    #[test]
    fn invalid_patterns() {
        for bad in ["", "a.*.com", "*example.com", "*.", "ns/host"] {
            assert_eq!(HostMatcher::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn intersections() {
        let p = |s| HostMatcher::parse(s).unwrap();
        assert!(p("*.example.com").intersects(&p("a.example.com")));
        assert!(p("*.example.com").intersects(&p("*.a.example.com")));
        assert!(!p("*.example.com").intersects(&p("a.other.com")));
        assert!(p("*").intersects(&p("a.other.com")));
        assert!(p("a.b").intersects(&p("a.b")));
        assert!(!p("a.b").intersects(&p("a.c")));
    }

    #[test]
    fn specificity_orders_exact_longest_suffix_any() {
        let p = |s| HostMatcher::parse(s).unwrap();
        assert!(p("a.example.com").specificity() > p("*.a.example.com").specificity());
        assert!(p("*.a.example.com").specificity() > p("*.example.com").specificity());
        assert!(p("*.example.com").specificity() > p("*").specificity());
    }
}
