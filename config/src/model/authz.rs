//! AuthorizationPolicies, compiled: the policies that apply to this proxy, by action, with
//! every value parsed into what it is compared with (addresses, ports, path templates, service
//! accounts) and the trust-domain expansion already done. The predicates here check one field;
//! the evaluation order (DENY, then ALLOW) is `meshgate-proxy`'s `authorize` stage.
//!
//! Nothing here parses at request time and nothing allocates: a value that could not be
//! parsed was refused when the configuration was compiled.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use serde::{Serialize, Serializer};

/// Every field of an AuthorizationPolicy rule that meshgate implements, as Istio names it.
/// The README's table and the end-to-end test that proves each one denies what it names both
/// read this list.
pub const SUPPORTED_FIELDS: &[&str] = &[
    "from.source.principals",
    "from.source.notPrincipals",
    "from.source.namespaces",
    "from.source.notNamespaces",
    "from.source.trustDomains",
    "from.source.notTrustDomains",
    "from.source.serviceAccounts",
    "from.source.notServiceAccounts",
    "from.source.ipBlocks",
    "from.source.notIpBlocks",
    "from.source.remoteIpBlocks",
    "from.source.notRemoteIpBlocks",
    "to.operation.hosts",
    "to.operation.notHosts",
    "to.operation.ports",
    "to.operation.notPorts",
    "to.operation.methods",
    "to.operation.notMethods",
    "to.operation.paths",
    "to.operation.notPaths",
    "when.source.principal",
    "when.source.namespace",
    "when.source.serviceAccount",
    "when.source.ip",
    "when.remote.ip",
    "when.destination.ip",
    "when.destination.port",
    "when.request.headers[NAME]",
    "when.connection.sni",
];

/// The policies that apply to this proxy.
#[derive(Debug, Default, Serialize)]
pub struct Policies {
    pub deny: Vec<Policy>,
    pub allow: Vec<Policy>,
    /// Matches are logged; they change nothing.
    pub audit: Vec<Policy>,
    /// Policies annotated `istio.io/dry-run: "true"`: evaluated as Istio's shadow rules are,
    /// logged and counted, never enforced.
    pub dry_run: DryRunPolicies,
}

/// The dry-run policies, by action. Each set is decided on its own, as if it were the only
/// one: a dry-run ALLOW set would deny a request none of its policies matches.
#[derive(Debug, Default, Serialize)]
pub struct DryRunPolicies {
    pub deny: Vec<Policy>,
    pub allow: Vec<Policy>,
}

impl Policies {
    /// Whether there is nothing to evaluate: every request is allowed without a look.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && self.dry_run.deny.is_empty()
            && self.dry_run.allow.is_empty()
    }
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
    pub service_accounts: Option<Vec<ServiceAccount>>,
    pub not_service_accounts: Option<Vec<ServiceAccount>>,
    pub ip_blocks: Option<Vec<Cidr>>,
    pub not_ip_blocks: Option<Vec<Cidr>>,
    pub remote_ip_blocks: Option<Vec<Cidr>>,
    pub not_remote_ip_blocks: Option<Vec<Cidr>>,
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
    pub paths: Option<Vec<PathMatch>>,
    pub not_paths: Option<Vec<PathMatch>>,
}

/// One `when` condition: a key and its values, parsed into the type the key compares.
#[derive(Debug, Serialize)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Option<ConditionValues>,
    pub not_values: Option<ConditionValues>,
}

/// The `when` keys meshgate implements.
#[derive(Debug, Clone, Serialize)]
pub enum ConditionKey {
    SourcePrincipal,
    SourceNamespace,
    SourceServiceAccount,
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    RequestHeader(#[serde(serialize_with = "super::route::serialize_display")] HeaderName),
    ConnectionSni,
}

/// A condition's values, in the type its key compares.
#[derive(Debug, Serialize)]
pub enum ConditionValues {
    Strings(Values),
    Addresses(Vec<Cidr>),
    Ports(Vec<u16>),
    ServiceAccounts(Vec<ServiceAccount>),
}

/// What a request offers to the policies.
#[derive(Debug)]
pub struct Attributes<'a> {
    /// `td/ns/<ns>/sa/<sa>`; `None` on plaintext listeners.
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub trust_domain: Option<&'a str>,
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The client's address as the gateway trusts it (`remote.ip`, `remoteIpBlocks`).
    pub remote_ip: IpAddr,
    /// The local address the connection was accepted on.
    pub destination_ip: IpAddr,
    /// The request's authority, as sent (with its port, if any).
    pub authority: &'a str,
    /// The authority without its port.
    pub host: &'a str,
    /// The listener's Gateway port.
    pub port: u16,
    pub method: &'a str,
    /// The normalized path, without its query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub sni: Option<&'a str>,
}

impl Policy {
    /// Whether any rule matches, for a policy of this kind (`allow`: an ALLOW policy; see
    /// `Condition::matches` for what the kind changes).
    pub fn matches(&self, a: &Attributes<'_>, allow: bool) -> bool {
        self.rules.iter().any(|r| r.matches(a, allow))
    }

    /// Whether any rule matches a connection that is not HTTP (see `Rule::matches_connection`).
    pub fn matches_connection(&self, a: &Attributes<'_>, allow: bool) -> bool {
        self.rules.iter().any(|r| r.matches_connection(a, allow))
    }
}

impl Rule {
    /// The first field the rule names that only a terminated connection or an HTTP request
    /// has (a peer identity, a host, method, path or header), if any.
    pub fn request_field(&self) -> Option<&'static str> {
        for s in &self.from {
            let named = [
                (s.principals.is_some(), "from.source.principals"),
                (s.not_principals.is_some(), "from.source.notPrincipals"),
                (s.namespaces.is_some(), "from.source.namespaces"),
                (s.not_namespaces.is_some(), "from.source.notNamespaces"),
                (s.trust_domains.is_some(), "from.source.trustDomains"),
                (s.not_trust_domains.is_some(), "from.source.notTrustDomains"),
                (s.service_accounts.is_some(), "from.source.serviceAccounts"),
                (
                    s.not_service_accounts.is_some(),
                    "from.source.notServiceAccounts",
                ),
            ];
            if let Some((_, name)) = named.into_iter().find(|(set, _)| *set) {
                return Some(name);
            }
        }
        if let Some(name) = self.operation_http_field() {
            return Some(name);
        }
        self.when.iter().find_map(|c| match c.key {
            ConditionKey::SourcePrincipal => Some("when source.principal"),
            ConditionKey::SourceNamespace => Some("when source.namespace"),
            ConditionKey::SourceServiceAccount => Some("when source.serviceAccount"),
            ConditionKey::RequestHeader(_) => Some("when request.headers"),
            _ => None,
        })
    }

    /// The first field the rule names that only an HTTP request has (a host, method, path or
    /// header), if any: on a TCP port, Istio leaves a rule naming one out of ALLOW policies and
    /// applies it without them in DENY policies.
    pub fn http_field(&self) -> Option<&'static str> {
        self.operation_http_field().or_else(|| {
            self.when.iter().find_map(|c| match c.key {
                ConditionKey::RequestHeader(_) => Some("when request.headers"),
                _ => None,
            })
        })
    }

    /// The first `to.operation` field the rule names that only an HTTP request has.
    fn operation_http_field(&self) -> Option<&'static str> {
        self.to.iter().find_map(|o| {
            [
                (o.hosts.is_some(), "to.operation.hosts"),
                (o.not_hosts.is_some(), "to.operation.notHosts"),
                (o.methods.is_some(), "to.operation.methods"),
                (o.not_methods.is_some(), "to.operation.notMethods"),
                (o.paths.is_some(), "to.operation.paths"),
                (o.not_paths.is_some(), "to.operation.notPaths"),
            ]
            .into_iter()
            .find_map(|(set, name)| set.then_some(name))
        })
    }

    /// Whether the rule matches a connection whose bytes are not HTTP (`a` has no method, path
    /// or headers), for a policy of this kind: an ALLOW rule naming an HTTP field never does; any
    /// other is decided without its HTTP fields.
    pub fn matches_connection(&self, a: &Attributes<'_>, allow: bool) -> bool {
        if allow && self.http_field().is_some() {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches_port(a.port)))
            && self
                .when
                .iter()
                .filter(|c| !matches!(c.key, ConditionKey::RequestHeader(_)))
                .all(|c| c.matches(a, allow))
    }

    /// Whether the rule can match a connection to Gateway port `port`: not when every
    /// operation it names lists other ports.
    pub fn reaches_port(&self, port: u16) -> bool {
        self.to.is_empty()
            || self.to.iter().any(|o| {
                o.ports.as_ref().is_none_or(|p| p.contains(&port))
                    && o.not_ports.as_ref().is_none_or(|p| !p.contains(&port))
            })
    }

    fn matches(&self, a: &Attributes<'_>, allow: bool) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a, allow))
    }
}

impl Source {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let source = |blocks: &Vec<Cidr>| blocks.iter().any(|b| b.contains(a.source_ip));
        let remote = |blocks: &Vec<Cidr>| blocks.iter().any(|b| b.contains(a.remote_ip));
        let account = |list: &Vec<ServiceAccount>| {
            a.principal
                .is_some_and(|p| list.iter().any(|sa| sa.matches(p)))
        };
        positive(&self.principals, a.principal)
            && negative(&self.not_principals, a.principal)
            && positive(&self.namespaces, a.namespace)
            && negative(&self.not_namespaces, a.namespace)
            && positive(&self.trust_domains, a.trust_domain)
            && negative(&self.not_trust_domains, a.trust_domain)
            && self.service_accounts.as_ref().is_none_or(account)
            && !self.not_service_accounts.as_ref().is_some_and(account)
            && self.ip_blocks.as_ref().is_none_or(source)
            && !self.not_ip_blocks.as_ref().is_some_and(source)
            && self.remote_ip_blocks.as_ref().is_none_or(remote)
            && !self.not_remote_ip_blocks.as_ref().is_some_and(remote)
    }
}

impl Operation {
    /// The operation's `ports` and `notPorts` alone.
    fn matches_port(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(&port))
            && !self.not_ports.as_ref().is_some_and(|p| p.contains(&port))
    }

    fn matches(&self, a: &Attributes<'_>) -> bool {
        let host = |v: &Values| v.matches_host(a.authority, a.host);
        let path = |list: &Vec<PathMatch>| list.iter().any(|p| p.matches(a.path));
        self.hosts.as_ref().is_none_or(host)
            && !self.not_hosts.as_ref().is_some_and(host)
            && self.ports.as_ref().is_none_or(|p| p.contains(&a.port))
            && !self.not_ports.as_ref().is_some_and(|p| p.contains(&a.port))
            && positive(&self.methods, Some(a.method))
            && negative(&self.not_methods, Some(a.method))
            && self.paths.as_ref().is_none_or(path)
            && !self.not_paths.as_ref().is_some_and(path)
    }
}

impl Condition {
    /// Whether the condition holds, for a policy of this kind (`allow`: an ALLOW policy).
    fn matches(&self, a: &Attributes<'_>, allow: bool) -> bool {
        // A repeated request header is ambiguous: the client chose its copies, and which one
        // the backend reads is the backend's affair. The ambiguity goes against the request
        // both ways: in an ALLOW policy `values` must hold for every copy and `notValues` for
        // none; in any other, one copy in `values` matches, and so does one copy outside
        // `notValues`. An attribute with one value is the same under both readings.
        let values = self.values.as_ref().is_none_or(|v| match allow {
            true => self.key.every(v, a),
            false => self.key.any(v, a),
        });
        let not_values = self.not_values.as_ref().is_none_or(|v| match allow {
            true => !self.key.any(v, a),
            false => !self.key.every(v, a),
        });
        values && not_values
    }
}

impl ConditionKey {
    /// Whether the request has this key and some value of it is among `values`. A request
    /// without the value (no identity, no such header, no SNI) is among none.
    fn any(&self, values: &ConditionValues, a: &Attributes<'_>) -> bool {
        match self.header(a) {
            Some(mut copies) => copies.any(|v| bytes(values, v)),
            None => self.single(values, a),
        }
    }

    /// Whether the request has this key and every value of it is among `values`.
    fn every(&self, values: &ConditionValues, a: &Attributes<'_>) -> bool {
        match self.header(a) {
            Some(mut copies) => {
                let mut any = false;
                copies.all(|v| {
                    any = true;
                    bytes(values, v)
                }) && any
            }
            None => self.single(values, a),
        }
    }

    /// A request header's copies, as the bytes they are (not all header values are text).
    /// `host` is read by `single`: the request's authority, on HTTP/1.1 and HTTP/2 alike.
    fn header<'a>(&self, a: &'a Attributes<'_>) -> Option<Copies<'a>> {
        match self {
            Self::RequestHeader(name) if name != http::header::HOST => {
                Some(a.headers.get_all(name).iter())
            }
            _ => None,
        }
    }

    /// Whether the request's one value for this key (not a header) is among `values`.
    fn single(&self, values: &ConditionValues, a: &Attributes<'_>) -> bool {
        let ip = |ip: IpAddr| match values {
            ConditionValues::Addresses(list) => list.iter().any(|c| c.contains(ip)),
            _ => false,
        };
        match self {
            Self::SourcePrincipal => text(values, a.principal),
            Self::SourceNamespace => text(values, a.namespace),
            Self::SourceServiceAccount => match (values, a.principal) {
                (ConditionValues::ServiceAccounts(list), Some(p)) => {
                    list.iter().any(|sa| sa.matches(p))
                }
                _ => false,
            },
            Self::SourceIp => ip(a.source_ip),
            Self::RemoteIp => ip(a.remote_ip),
            Self::DestinationIp => ip(a.destination_ip),
            Self::DestinationPort => match values {
                ConditionValues::Ports(list) => list.contains(&a.port),
                _ => false,
            },
            Self::ConnectionSni => text(values, a.sni),
            // `host`: the authority as sent or without its port, either form (as `hosts` is
            // read), so that a port in the authority does not step around a value.
            Self::RequestHeader(_) => text(values, Some(a.authority)) || text(values, Some(a.host)),
        }
    }
}

/// The copies of a request header that a condition reads.
type Copies<'a> = http::header::ValueIter<'a, HeaderValue>;

/// Whether a header value's bytes are among string `values`: matched as bytes, so that a value
/// that is not UTF-8 still matches `*`, a prefix or a suffix it has.
fn bytes(values: &ConditionValues, value: &HeaderValue) -> bool {
    match values {
        ConditionValues::Strings(v) => v.matches_bytes(value.as_bytes()),
        _ => false,
    }
}

/// Whether a text value is among string `values`; no value is among none.
fn text(values: &ConditionValues, value: Option<&str>) -> bool {
    match (values, value) {
        (ConditionValues::Strings(v), Some(x)) => v.matches(x),
        _ => false,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ValueMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl ValueMatch {
    /// Parses Istio's notation. A `*` anywhere else is a literal character (Istio's exact
    /// match), which the compiler refuses where no value can contain it.
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

    /// The characters the value itself is made of (its wildcard removed).
    pub fn text(&self) -> &str {
        match self {
            Self::Any => "",
            Self::Exact(s) | Self::Prefix(s) | Self::Suffix(s) => s,
        }
    }

    fn matches_bytes(&self, v: &[u8]) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => v == e.as_bytes(),
            Self::Prefix(p) => v.starts_with(p.as_bytes()),
            Self::Suffix(s) => v.ends_with(s.as_bytes()),
        }
    }

    fn matches_ignore_case(&self, v: &str) -> bool {
        let v = v.as_bytes();
        match self {
            Self::Any => true,
            Self::Exact(e) => v.eq_ignore_ascii_case(e.as_bytes()),
            Self::Prefix(p) => v
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
            Self::Suffix(s) => v
                .len()
                .checked_sub(s.len())
                .and_then(|at| v.get(at..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(s.as_bytes())),
        }
    }
}

impl Values {
    pub fn matches(&self, v: &str) -> bool {
        self.matches_bytes(v.as_bytes())
    }

    pub fn matches_bytes(&self, v: &[u8]) -> bool {
        self.0.iter().any(|m| m.matches_bytes(v))
    }

    /// `hosts`: case-insensitive, against the authority as sent and against it without its
    /// port, so that `*.example.com` also covers `a.example.com:443` (Istio compares the
    /// authority only, and its own guide asks for `example.com:*` beside `example.com`; both
    /// forms work here).
    fn matches_host(&self, authority: &str, host: &str) -> bool {
        self.0
            .iter()
            .any(|m| m.matches_ignore_case(authority) || m.matches_ignore_case(host))
    }
}

/// One `paths` value: Istio's string forms, or a path template (Istio 1.22+).
#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    /// `*`: any path.
    Any,
    Exact(String),
    /// `/prefix*`.
    Prefix(String),
    /// `*suffix`.
    Suffix(String),
    /// A path with `{*}` or `{**}` segments, as Envoy's `uri_template` matcher.
    Template(PathTemplate),
}

impl PathMatch {
    /// Whether the normalized path (no query) matches. Case-sensitive, as Istio's.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => !path.is_empty(),
            Self::Exact(e) => path == e,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Suffix(s) => path.ends_with(s.as_str()),
            Self::Template(t) => t.matches(path),
        }
    }
}

/// A path template: `/` then its segments joined by `/`. `{*}` is one segment of one or more
/// path characters; `{**}` is zero or more characters including `/`; the others are literal.
/// Envoy's `uri_template` defines it so, and Istio compiles `{*}`/`{**}` paths to it.
#[derive(Debug, Clone, Serialize)]
#[serde(into = "String")]
pub struct PathTemplate {
    segments: Vec<TemplateSegment>,
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSegment {
    Literal(String),
    /// `{*}`.
    One,
    /// `{**}`.
    Rest,
}

impl PathTemplate {
    /// A template from its segments (the compiler checks them first).
    pub fn new(segments: Vec<TemplateSegment>) -> Self {
        Self { segments }
    }

    /// Whether `path` matches the whole template.
    pub fn matches(&self, path: &str) -> bool {
        match_segments(&self.segments, path.as_bytes())
    }
}

/// `/` + segment, for each segment, must consume `path` exactly. Only `{**}` can take a
/// variable length, and at most one `{**}` stands in a template Istio accepts, so the
/// backtracking below stays linear in practice.
fn match_segments(segments: &[TemplateSegment], path: &[u8]) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return path.is_empty();
    };
    let Some(after) = path.strip_prefix(b"/") else {
        return false;
    };
    match first {
        TemplateSegment::Literal(l) => after
            .strip_prefix(l.as_bytes())
            .is_some_and(|next| match_segments(rest, next)),
        TemplateSegment::One => {
            let run = after.iter().take_while(|b| is_template_char(**b)).count();
            run > 0
                && after
                    .get(run..)
                    .is_some_and(|next| match_segments(rest, next))
        }
        TemplateSegment::Rest => {
            let run = after
                .iter()
                .take_while(|b| **b == b'/' || is_template_char(**b))
                .count();
            (0..=run).rev().any(|taken| {
                after
                    .get(taken..)
                    .is_some_and(|next| match_segments(rest, next))
            })
        }
    }
}

/// The characters Envoy's `uri_template` lets a `*` or `**` segment take (besides `/` for
/// `**`): RFC 3986 `pchar` without `*`, percent escapes kept as written.
pub fn is_template_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

impl From<PathTemplate> for String {
    fn from(t: PathTemplate) -> String {
        let mut out = String::new();
        for s in &t.segments {
            out.push('/');
            match s {
                TemplateSegment::Literal(l) => out.push_str(l),
                TemplateSegment::One => out.push_str("{*}"),
                TemplateSegment::Rest => out.push_str("{**}"),
            }
        }
        out
    }
}

/// `serviceAccounts` value: a Kubernetes service account in a namespace, matched as Istio
/// does, against the peer's principal in any trust domain: `<td>/ns/<ns>/[...]/sa/<sa>[/...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// Whether `principal` (`td/path`) is this service account's: Istio's regex
    /// `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`, without the regex.
    pub fn matches(&self, principal: &str) -> bool {
        let ns = &*self.namespace;
        let mut from = 0;
        // Overlapping occurrences count (`/ns/ns/`), so not `match_indices`.
        while let Some(i) = principal.get(from..).and_then(|p| p.find("/ns/")) {
            let at = from.saturating_add(i);
            from = at.saturating_add(1);
            if at == 0 {
                continue;
            }
            let Some(rest) = principal
                .get(at.saturating_add("/ns/".len())..)
                .and_then(|r| r.strip_prefix(ns))
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            if self.account_at(rest) {
                return true;
            }
        }
        false
    }

    /// `(.+/|)sa/<sa>(/.+)?` against the whole of `rest`.
    fn account_at(&self, rest: &str) -> bool {
        let tail_ok = |after: &str| after.is_empty() || after.len() > 1 && after.starts_with('/');
        let here = |s: &str| {
            s.strip_prefix("sa/")
                .and_then(|r| r.strip_prefix(&*self.name))
                .is_some_and(tail_ok)
        };
        if here(rest) {
            return true;
        }
        rest.match_indices("/sa/").any(|(i, _)| {
            i > 0
                && rest
                    .get(i..)
                    .and_then(|r| r.strip_prefix('/'))
                    .is_some_and(here)
        })
    }
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`ipnet` does the
/// arithmetic).
#[derive(Debug, Clone, Copy)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Parses `addr/len` or a bare address.
    pub fn parse(s: &str) -> Option<Self> {
        match s.parse::<IpNet>() {
            Ok(net) => Some(Self(net)),
            Err(_) => s.parse::<IpAddr>().ok().map(|ip| Self(IpNet::from(ip))),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.0, ip) {
            // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
            (IpNet::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        self.0.contains(&ip)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
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
                ValueMatch::parse(pattern).matches_bytes(value.as_bytes()),
                want,
                "{pattern} vs {value}"
            );
        }
    }

    #[test]
    fn hosts_match_with_and_without_the_port_in_any_case() {
        let v = |p: &str| Values(vec![ValueMatch::parse(p)]);
        let cases = [
            ("*.Example.com", "api.example.COM", true),
            ("*.example.com", "api.example.com:443", true),
            ("example.com", "EXAMPLE.com:8443", true),
            ("example.com:*", "example.com:8443", true),
            ("example.com:8443", "example.com:8443", true),
            ("example.com:8443", "example.com:443", false),
            ("example.com", "example.com.evil", false),
            ("*", "anything", true),
        ];
        for (pattern, authority, want) in cases {
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            assert_eq!(
                v(pattern).matches_host(authority, host),
                want,
                "{pattern} vs {authority}"
            );
        }
    }

    #[test]
    fn path_templates_follow_envoys_uri_template() {
        use TemplateSegment::{Literal, One, Rest};
        let lit = |s: &str| Literal(s.into());
        let t = |segments: Vec<TemplateSegment>| PathTemplate::new(segments);
        let cases = [
            // /foo/{*}
            (t(vec![lit("foo"), One]), "/foo/bar", true),
            (t(vec![lit("foo"), One]), "/foo/bar/baz", false),
            (t(vec![lit("foo"), One]), "/foo/", false),
            (t(vec![lit("foo"), One]), "/foo", false),
            // /foo/{*}/bar
            (t(vec![lit("foo"), One, lit("bar")]), "/foo/x/bar", true),
            (t(vec![lit("foo"), One, lit("bar")]), "/foo/x/y/bar", false),
            // /foo/{**}: zero or more characters after `/foo/`, slashes included.
            (t(vec![lit("foo"), Rest]), "/foo/", true),
            (t(vec![lit("foo"), Rest]), "/foo/a/b/c", true),
            (t(vec![lit("foo"), Rest]), "/foo", false),
            (t(vec![lit("foo"), Rest]), "/foobar", false),
            // /{**}/secret: a literal after {**}, as Istio accepts.
            (t(vec![Rest, lit("secret")]), "/a/b/secret", true),
            (t(vec![Rest, lit("secret")]), "//secret", true),
            (t(vec![Rest, lit("secret")]), "/a/b/secrets", false),
            // /foo/{**}/: a trailing slash is an empty last segment.
            (t(vec![lit("foo"), Rest, lit("")]), "/foo/a/b/", true),
            (t(vec![lit("foo"), Rest, lit("")]), "/foo/a/b", false),
            // Characters outside the template set stop a segment.
            (t(vec![lit("foo"), One]), "/foo/a*b", false),
            (t(vec![lit("foo"), One]), "/foo/a%2Fb", true),
        ];
        for (template, path, want) in cases {
            assert_eq!(
                template.matches(path),
                want,
                "{} vs {path}",
                String::from(template.clone())
            );
        }
    }

    #[test]
    fn service_accounts_match_istios_regex() {
        let sa = ServiceAccount {
            namespace: "default".into(),
            name: "sleep".into(),
        };
        let cases = [
            ("example.com/ns/default/sa/sleep", true),
            ("cluster.local/ns/default/sa/sleep", true),
            ("example.com/ns/default/x/sa/sleep", true),
            ("example.com/ns/default/sa/sleep/extra", true),
            ("example.com/ns/default/sa/sleeper", false),
            ("example.com/ns/other/sa/sleep", false),
            ("example.com/ns/default/sa/sleep/", false),
            ("example.com/ns/defaults/sa/sleep", false),
        ];
        for (principal, want) in cases {
            assert_eq!(sa.matches(principal), want, "{principal}");
        }
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
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/+8", "10.0.0.0/", ""] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }
}
