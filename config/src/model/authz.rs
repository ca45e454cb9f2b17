//! AuthorizationPolicies, compiled: the policies that apply to this proxy, by action, with
//! every value parsed and the trust-domain expansion already done. The predicates here check
//! one field; the evaluation order (DENY, then ALLOW) is `meshgate-proxy`'s `authorize` stage.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use serde::{Serialize, Serializer};

/// The policies that apply to this proxy.
#[derive(Debug, Default, Serialize)]
pub struct Policies {
    pub deny: Vec<Policy>,
    pub allow: Vec<Policy>,
    /// Matches are logged; they change nothing.
    pub audit: Vec<Policy>,
}

/// One AuthorizationPolicy.
#[derive(Debug, Serialize)]
pub struct Policy {
    /// `AuthorizationPolicy namespace/name`, for logs.
    pub name: String,
    /// A request matches the policy when any rule matches. A policy without rules matches
    /// nothing; `rules: [{}]` matches everything (Istio).
    pub rules: Vec<Rule>,
}

/// One rule: every present part must match.
#[derive(Debug, Default, Serialize)]
pub struct Rule {
    /// Any one must match; empty matches every source.
    pub from: Vec<Source>,
    /// Any one must match; empty matches every operation.
    pub to: Vec<Operation>,
    /// All must match.
    pub when: Vec<Condition>,
}

/// `from.source`: each present field must match (AND); inside a field, any value (OR).
#[derive(Debug, Default, Serialize)]
pub struct Source {
    pub principals: Option<Values>,
    pub not_principals: Option<Values>,
    pub namespaces: Option<Values>,
    pub not_namespaces: Option<Values>,
    pub trust_domains: Option<Values>,
    pub not_trust_domains: Option<Values>,
    pub ip_blocks: Option<Vec<Cidr>>,
    pub not_ip_blocks: Option<Vec<Cidr>>,
}

/// `to.operation`.
#[derive(Debug, Default, Serialize)]
pub struct Operation {
    pub hosts: Option<Values>,
    pub not_hosts: Option<Values>,
    pub ports: Option<Vec<u16>>,
    pub not_ports: Option<Vec<u16>>,
    pub methods: Option<Values>,
    pub not_methods: Option<Values>,
    pub paths: Option<Values>,
    pub not_paths: Option<Values>,
}

/// One `when` condition.
#[derive(Debug, Serialize)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Option<Values>,
    pub not_values: Option<Values>,
}

/// The `when` keys meshgate implements.
#[derive(Debug, Clone, Serialize)]
pub enum ConditionKey {
    SourcePrincipal,
    SourceNamespace,
    SourceIp,
    RequestHeader(#[serde(serialize_with = "super::route::serialize_display")] HeaderName),
    DestinationPort,
    ConnectionSni,
}

/// What a request offers to the policies.
#[derive(Debug)]
pub struct Attributes<'a> {
    /// `td/ns/<ns>/sa/<sa>`; `None` on plaintext listeners.
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub trust_domain: Option<&'a str>,
    pub source_ip: IpAddr,
    /// The authority without its port.
    pub host: &'a str,
    /// The listener's Gateway port.
    pub port: u16,
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub sni: Option<&'a str>,
}

impl Policy {
    /// Whether any rule matches.
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(a))
    }
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a))
    }
}

impl Source {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let ip = |blocks: &Vec<Cidr>| blocks.iter().any(|b| b.contains(a.source_ip));
        positive(&self.principals, a.principal)
            && negative(&self.not_principals, a.principal)
            && positive(&self.namespaces, a.namespace)
            && negative(&self.not_namespaces, a.namespace)
            && positive(&self.trust_domains, a.trust_domain)
            && negative(&self.not_trust_domains, a.trust_domain)
            && self.ip_blocks.as_ref().is_none_or(ip)
            && !self.not_ip_blocks.as_ref().is_some_and(ip)
    }
}

impl Operation {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let host = |v: &Values| v.matches_ignore_case(a.host);
        self.hosts.as_ref().is_none_or(host)
            && !self.not_hosts.as_ref().is_some_and(host)
            && self.ports.as_ref().is_none_or(|p| p.contains(&a.port))
            && !self.not_ports.as_ref().is_some_and(|p| p.contains(&a.port))
            && positive(&self.methods, Some(a.method))
            && negative(&self.not_methods, Some(a.method))
            && positive(&self.paths, Some(a.path))
            && negative(&self.not_paths, Some(a.path))
    }
}

impl Condition {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let mut buf = itoa_buf();
        let value: Option<&str> = match &self.key {
            ConditionKey::SourcePrincipal => a.principal,
            ConditionKey::SourceNamespace => a.namespace,
            ConditionKey::SourceIp => {
                return self
                    .values
                    .as_ref()
                    .is_none_or(|v| v.matches_ip(a.source_ip))
                    && !self
                        .not_values
                        .as_ref()
                        .is_some_and(|v| v.matches_ip(a.source_ip))
            }
            ConditionKey::RequestHeader(name) => a.headers.get(name).and_then(|v| v.to_str().ok()),
            ConditionKey::DestinationPort => Some(format_port(&mut buf, a.port)),
            ConditionKey::ConnectionSni => a.sni,
        };
        positive(&self.values, value) && negative(&self.not_values, value)
    }
}

/// A present list must match the value; an absent value matches no list.
fn positive(list: &Option<Values>, value: Option<&str>) -> bool {
    match list {
        None => true,
        Some(v) => value.is_some_and(|x| v.matches(x)),
    }
}

/// A present `not` list must not match the value. An absent value (no identity) matches
/// nothing, so it passes every `not` list — as Istio does for plaintext requests.
fn negative(list: &Option<Values>, value: Option<&str>) -> bool {
    match (list, value) {
        (Some(v), Some(x)) => !v.matches(x),
        _ => true,
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any value, empty included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Values(pub Vec<ValueMatch>);

#[derive(Debug, Clone, Serialize)]
pub enum ValueMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl ValueMatch {
    /// Parses Istio's notation.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Self::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Self::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Self::Suffix(p.to_string())
        } else {
            Self::Exact(s.to_string())
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => v == e,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Suffix(s) => v.ends_with(s.as_str()),
        }
    }

    fn matches_ignore_case(&self, v: &str) -> bool {
        let (v, n) = (v.as_bytes(), |s: &str| s.len());
        match self {
            Self::Any => true,
            Self::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
            Self::Prefix(p) => v.len() >= n(p) && v[..n(p)].eq_ignore_ascii_case(p.as_bytes()),
            Self::Suffix(s) => {
                v.len() >= n(s) && v[v.len() - n(s)..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

impl Values {
    pub fn matches(&self, v: &str) -> bool {
        self.0.iter().any(|m| m.matches(v))
    }

    fn matches_ignore_case(&self, v: &str) -> bool {
        self.0.iter().any(|m| m.matches_ignore_case(v))
    }

    /// `source.ip` values are addresses or CIDR blocks.
    fn matches_ip(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|m| match m {
            ValueMatch::Any => true,
            ValueMatch::Exact(e) => Cidr::parse(e).is_some_and(|c| c.contains(ip)),
            _ => false,
        })
    }
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/len` or a bare address.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            Some(l) => l.parse().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.network, self.prefix))
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = (usize::from(prefix / 8), prefix % 8);
    if a[..bytes] != b[..bytes] {
        return false;
    }
    bits == 0 || (a[bytes] ^ b[bytes]) >> (8 - bits) == 0
}

fn itoa_buf() -> [u8; 5] {
    [0; 5]
}

/// The port as text, without allocating.
fn format_port(buf: &mut [u8; 5], port: u16) -> &str {
    let mut n = port;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_value_matching() {
        let cases = [
            ("*", "anything", true),
            ("*", "", true),
            (
                "example.com/ns/default/*",
                "example.com/ns/default/sa/sleep",
                true,
            ),
            (
                "example.com/ns/default/*",
                "example.com/ns/other/sa/sleep",
                false,
            ),
            ("*/sa/sleep", "example.com/ns/default/sa/sleep", true),
            ("*/sa/sleep", "example.com/ns/default/sa/sleeper", false),
            ("GET", "GET", true),
            ("GET", "get", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                ValueMatch::parse(pattern).matches(value),
                want,
                "{pattern} vs {value}"
            );
        }
        assert!(ValueMatch::parse("*.Example.com").matches_ignore_case("api.example.COM"));
    }

    #[test]
    fn cidr_blocks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.128/25", "192.168.1.200", true),
            ("192.168.1.128/25", "192.168.1.100", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("2001:db8::/32", "2001:db8:1::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("10.0.0.0/8", "::1", false),
        ];
        for (block, addr, want) in cases {
            assert_eq!(
                Cidr::parse(block).unwrap().contains(ip(addr)),
                want,
                "{block} vs {addr}"
            );
        }
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("example.com").is_none());
    }

    #[test]
    fn ports_format_without_allocating() {
        let mut buf = itoa_buf();
        assert_eq!(format_port(&mut buf, 443), "443");
        assert_eq!(format_port(&mut buf, 0), "0");
        assert_eq!(format_port(&mut buf, 65535), "65535");
    }
}
