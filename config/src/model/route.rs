//! Routes compiled from VirtualServices: virtual hosts, request matches, actions.
//!
//! The predicates here are the per-field checks; choosing a virtual host and the first matching
//! route is `meshgate-proxy`'s `route` stage.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use serde::{Serialize, Serializer};

use super::header_format::{FormatContext, HeaderValueSource};
use super::HostMatcher;

/// The routes for a set of hosts: one VirtualService's, or on a Gateway those of every
/// VirtualService that answers the hosts, merged as Istio merges them.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualHost {
    /// `VirtualService namespace/name`, or several joined by `, ` when merged.
    pub source: String,
    pub hosts: Vec<HostMatcher>,
    /// On an HTTPS listener, for each of `hosts`, the TLS groups (`Listener::tls`, one per
    /// server) that serve it for these routes' Gateways: a connection whose SNI chose another
    /// server does not see it, as each of Envoy's filter chains has a route configuration of
    /// its own. `None`: every group (other listeners).
    #[serde(skip)]
    pub host_groups: Option<Vec<TlsGroups>>,
    /// In order: the first route whose match succeeds wins.
    pub routes: Vec<Route>,
}

impl VirtualHost {
    /// The TLS groups that see `hosts[k]`.
    pub fn groups_of(&self, k: usize) -> TlsGroups {
        match &self.host_groups {
            None => TlsGroups::All,
            // A host added without its groups is seen by none.
            Some(groups) => groups.get(k).cloned().unwrap_or_default(),
        }
    }
}

/// One `http` rule of a VirtualService.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub name: Option<String>,
    /// The resource that declares it (`VirtualService namespace/name`).
    pub source: String,
    /// Its position in the resource's `http` list: the route's metrics label when it has no
    /// name.
    pub position: usize,
    /// Its position among all the routes of its listener, numbered by `RouteTable::new`: the
    /// proxy keeps per-route counters in a list by this index.
    #[serde(skip)]
    pub index: usize,
    /// Any one must match (OR); empty matches every request.
    pub matches: Vec<RequestMatch>,
    pub action: RouteAction,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// What the header values of the route and its destinations need of a request, worked
    /// out once (`Route::header_commands_of`) rather than per request.
    #[serde(skip)]
    pub header_commands: HeaderCommands,
    /// `rewrite.uri` or `rewrite.uriRegexRewrite`.
    pub rewrite_uri: Option<UriRewrite>,
    #[serde(serialize_with = "serialize_opt_header_value")]
    pub rewrite_authority: Option<HeaderValue>,
    /// The whole request's deadline, retries included; `None` means none, as Istio's default.
    pub timeout: Option<Duration>,
    /// When a failed try is tried again; `None`: never (`retries.attempts: 0`).
    pub retry: Option<super::Retry>,
    /// Backends that get a copy of a share of the requests (`mirror`, `mirrors`).
    pub mirrors: Vec<Mirror>,
    /// Faults to inject before forwarding (Envoy's fault filter, per route).
    pub fault: Option<Fault>,
    /// CORS (Envoy's CORS filter, per route).
    pub cors: Option<Cors>,
}

/// A set of a listener's TLS groups (`Listener::tls`, one per TLS server), or all of them (a
/// listener without TLS): those that see a host or take a `tcp` route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum TlsGroups {
    /// One group (a host one server serves: the common case, kept without a heap word).
    One(usize),
    /// Group `g` is bit `g % 64` of word `g / 64`.
    Some(Vec<u64>),
    /// Every group, and a connection without TLS.
    All,
    /// None.
    #[default]
    Empty,
}

impl TlsGroups {
    /// Group `group` alone.
    pub fn one(group: usize) -> Self {
        Self::One(group)
    }

    /// Adds group `group`.
    pub fn insert(&mut self, group: usize) {
        let (word, bit) = (group >> 6, 1u64 << (group & 63));
        match self {
            Self::All => {}
            Self::Empty => *self = Self::One(group),
            Self::One(g) if *g == group => {}
            Self::One(g) => {
                let first = *g;
                *self = Self::Some(Vec::new());
                self.insert(first);
                self.insert(group);
            }
            Self::Some(words) => {
                if words.len() <= word {
                    words.resize(word.saturating_add(1), 0);
                }
                if let Some(w) = words.get_mut(word) {
                    *w |= bit;
                }
            }
        }
    }

    /// Adds every group of `other`.
    pub fn extend(&mut self, other: &Self) {
        match other {
            Self::All => *self = Self::All,
            Self::Empty => {}
            Self::One(_) | Self::Some(_) => other.groups().for_each(|g| self.insert(g)),
        }
    }

    /// The groups, in order (none for `All`, which names no group).
    pub fn groups(&self) -> impl Iterator<Item = usize> + '_ {
        let (one, words) = match self {
            Self::One(g) => (Some(*g), &[][..]),
            Self::Some(words) => (None, words.as_slice()),
            Self::All | Self::Empty => (None, &[][..]),
        };
        one.into_iter()
            .chain(words.iter().enumerate().flat_map(|(w, &word)| {
                (0..64usize)
                    .filter(move |b| word & (1u64 << b) != 0)
                    .map(move |b| (w << 6) | b)
            }))
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::All | Self::One(_) => false,
            Self::Some(words) => words.iter().all(|w| *w == 0),
        }
    }

    /// Whether a connection of TLS group `group` is in it; `None` (a listener without TLS) is
    /// in every set.
    #[inline]
    pub fn admits(&self, group: Option<usize>) -> bool {
        let Some(g) = group else {
            return true;
        };
        match self {
            Self::All => true,
            Self::Empty => false,
            Self::One(one) => *one == g,
            Self::Some(words) => words
                .get(g >> 6)
                .is_some_and(|w| w & (1u64 << (g & 63)) != 0),
        }
    }
}

/// How a route rewrites the path it forwards (the query is kept either way).
#[derive(Debug, Clone, Serialize)]
pub enum UriRewrite {
    /// `rewrite.uri`: replaces the matched path prefix (the whole path for an exact or regex
    /// match), Envoy's `prefix_rewrite`.
    Prefix(String),
    /// `rewrite.uriRegexRewrite`: every match of the pattern in the path replaced, Envoy's
    /// `regex_rewrite` (RE2's `GlobalReplace`).
    Regex {
        #[serde(serialize_with = "serialize_display")]
        pattern: Regex,
        /// The rewrite in `regex`'s syntax: `\1` written `${1}`, a `$` as `$$`.
        replacement: String,
    },
}

impl UriRewrite {
    /// `path` with every match of a `Regex` rewrite's pattern replaced; a `Prefix` rewrite
    /// (which needs the match that chose the route) leaves it as it is.
    pub fn replace_all<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        match self {
            Self::Regex {
                pattern,
                replacement,
            } => pattern.replace_all(path, replacement.as_str()),
            Self::Prefix(_) => std::borrow::Cow::Borrowed(path),
        }
    }

    /// `rewrite` of `uriRegexRewrite` (RE2's: `\0`-`\9` a group, `\\` a backslash) in
    /// `regex`'s syntax, for a pattern of `groups` capture groups (the whole match included).
    pub fn regex_replacement(rewrite: &str, groups: usize) -> Result<String, String> {
        let mut out = String::with_capacity(rewrite.len());
        let mut chars = rewrite.chars();
        while let Some(c) = chars.next() {
            match c {
                '$' => out.push_str("$$"),
                '\\' => match chars.next() {
                    Some('\\') => out.push('\\'),
                    Some(d @ '0'..='9') => {
                        let n = d.to_digit(10).unwrap_or(0) as usize;
                        if n >= groups {
                            return Err(format!(
                                "`\\{n}` names a group the pattern does not have (it has {})",
                                groups.saturating_sub(1)
                            ));
                        }
                        out.push_str("${");
                        out.push(d);
                        out.push('}');
                    }
                    _ => {
                        return Err(
                            "a `\\` is followed by a group digit (`\\1`) or another `\\`".into(),
                        )
                    }
                },
                c => out.push(c),
            }
        }
        Ok(out)
    }
}

/// What a route's header values need of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderCommands {
    /// A value of the route or of a destination has command operators.
    pub formats: bool,
    /// A response value reads the request (`%REQ(...)%`).
    pub response_reads_request: bool,
}

impl Route {
    /// `header_commands` for the route's operations and its destinations'.
    pub fn header_commands_of(&self) -> HeaderCommands {
        let destinations = match &self.action {
            RouteAction::Forward(backends) => backends.as_slice(),
            _ => &[],
        };
        let own = || destinations.iter().filter_map(|b| b.headers.as_deref());
        HeaderCommands {
            formats: self.request_headers.formats()
                || self.response_headers.formats()
                || own().any(DestinationHeaders::formats),
            response_reads_request: self.response_headers.reads_request()
                || own().any(|h| h.response.reads_request()),
        }
    }
}

/// A copy of a share of a route's requests, sent and forgotten (Envoy's shadow).
#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    /// Index into `Model::backends`.
    pub backend: usize,
    /// The share copied, in millionths.
    pub per_million: u32,
}

/// What a matched route does.
#[derive(Debug, Clone, Serialize)]
pub enum RouteAction {
    /// Forward to one of the weighted backends.
    Forward(Vec<WeightedBackend>),
    /// Answer directly (`directResponse`).
    Direct(DirectResponse),
    /// Answer with a redirect (`redirect`).
    Redirect(Redirect),
}

/// `redirect`, as Istio sets Envoy's RedirectAction: the path is replaced whole, the query
/// kept unless `uri` has one.
#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    pub uri: Option<String>,
    /// Replaces the host (and any port the request named).
    pub authority: Option<String>,
    pub port: RedirectPort,
    /// `None`: `https` on a TLS listener, `http` otherwise.
    pub scheme: Option<String>,
    #[serde(serialize_with = "serialize_status")]
    pub code: StatusCode,
}

/// The port of a redirect's location. A port that is its scheme's default is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RedirectPort {
    /// Neither `port` nor `derivePort`: the authority's port as it is.
    Unchanged,
    Fixed(u16),
    /// `derivePort: FROM_REQUEST_PORT`: the listener's port (as Istio: Envoy cannot derive it
    /// from the request).
    Listener,
    /// `derivePort: FROM_PROTOCOL_DEFAULT`: none.
    ProtocolDefault,
}

/// `fault`: a delay, then an abort, each for a share of requests.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultDelay {
    pub fixed: Duration,
    /// Requests delayed, per million.
    pub per_million: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultAbort {
    pub status: AbortStatus,
    /// Requests aborted, per million.
    pub per_million: u32,
}

/// What an abort answers.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum AbortStatus {
    Http(#[serde(serialize_with = "serialize_status")] StatusCode),
    /// A gRPC status code, answered as gRPC does: HTTP 200 with `grpc-status`.
    Grpc(u32),
}

/// `corsPolicy`, compiled: the origins allowed and the headers each answer carries.
#[derive(Debug, Clone, Serialize)]
pub struct Cors {
    pub allow_origins: Vec<StringMatcher>,
    #[serde(serialize_with = "serialize_opt_header_value")]
    pub allow_methods: Option<HeaderValue>,
    #[serde(serialize_with = "serialize_opt_header_value")]
    pub allow_headers: Option<HeaderValue>,
    #[serde(serialize_with = "serialize_opt_header_value")]
    pub expose_headers: Option<HeaderValue>,
    #[serde(serialize_with = "serialize_opt_header_value")]
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    /// `unmatchedPreflights: FORWARD` (the default): a preflight from an origin not allowed
    /// goes upstream; `IGNORE`: it is answered here, without `access-control-allow-origin`.
    pub forward_unmatched_preflights: bool,
}

impl Cors {
    /// Whether `origin` is allowed. A matcher that matches `*` allows every origin, as Envoy's.
    pub fn allows(&self, origin: &[u8]) -> bool {
        self.allow_origins
            .iter()
            .any(|m| m.matches(b"*") || m.matches(origin))
    }
}

/// A route destination: a backend and its weight.
#[derive(Debug, Clone, Serialize)]
pub struct WeightedBackend {
    /// Index into `Model::backends`.
    pub backend: usize,
    /// Relative weight; all weights of a route are > 0 after compilation.
    pub weight: u32,
    /// The destination's own `headers`, when the route has several destinations (Envoy's
    /// weighted cluster level: applied before the route's, which win a conflict). A lone
    /// destination's are merged into the route's, after them, as Istio merges them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<DestinationHeaders>>,
}

/// `http[].route[].headers`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationHeaders {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl DestinationHeaders {
    /// Whether a value has command operators.
    pub fn formats(&self) -> bool {
        self.request.formats() || self.response.formats()
    }
}

/// `directResponse`.
#[derive(Debug, Clone, Serialize)]
pub struct DirectResponse {
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    #[serde(serialize_with = "serialize_bytes_lossy")]
    pub body: Bytes,
}

/// One `match` entry: all present fields must match (AND).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatcher>,
    pub authority: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    /// `scheme`: Envoy's `:scheme` header matcher.
    pub scheme: Option<StringMatcher>,
    /// Header name and value matcher; `None` means "present".
    pub headers: Vec<HeaderMatch>,
    /// Header name and value matcher; `None` means "absent".
    pub without_headers: Vec<HeaderMatch>,
    /// Query parameter conditions (`queryParams`).
    pub query_params: Vec<QueryParamMatch>,
    /// `ignoreUriCase`: an `exact` or `prefix` `uri` compares ASCII letters without their case
    /// (Envoy's `case_sensitive: false`; a regex is not affected).
    pub ignore_uri_case: bool,
    pub port: Option<u16>,
}

/// A query parameter condition, as Envoy's `QueryParameterMatcher` reads it: the parameter's
/// first value in the query as sent (not percent-decoded; `?key` has the value `""`), which
/// must be there and, with a matcher, match it.
#[derive(Debug, Clone, Serialize)]
pub struct QueryParamMatch {
    pub name: String,
    /// `None`: present with any value.
    pub value: Option<StringMatcher>,
}

impl QueryParamMatch {
    /// Whether the first value of the parameter in `query` satisfies the condition.
    fn holds(&self, query: Option<&str>) -> bool {
        let first = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name == self.name).then_some(value)
            });
        match (first, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(v.as_bytes()),
        }
    }
}

/// A header condition.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "serialize_display")]
    pub name: HeaderName,
    pub value: Option<StringMatcher>,
}

impl RequestMatch {
    /// Whether it matches every request on a listener of `port`, as Istio's `IsCatchAllRoute`
    /// reads the Envoy route it becomes: no `uri`, the prefix `/` or the regex `.*`, and no
    /// condition Envoy checks as a header (method, authority, headers). A `port` is checked
    /// when routes are built, as Istio does.
    pub fn is_catch_all(&self, port: u16) -> bool {
        let any_path = match &self.uri {
            None => true,
            Some(StringMatcher::Prefix(p)) => p == "/",
            // As compiled from the regex `.*`.
            Some(StringMatcher::Regex(re)) => re.as_str() == "^(?:.*)$",
            Some(StringMatcher::Exact(_)) => false,
        };
        any_path
            && self.method.is_none()
            && self.authority.is_none()
            && self.scheme.is_none()
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query_params.is_empty()
            && self.port.is_none_or(|p| p == port)
    }

    /// Whether `path` starts with the `uri` prefix `prefix`, without the case of ASCII letters
    /// under `ignoreUriCase` (then the path's first `prefix.len()` bytes are still a whole
    /// number of characters: only ASCII letters may differ).
    pub fn has_uri_prefix(&self, path: &str, prefix: &str) -> bool {
        if self.ignore_uri_case {
            path.as_bytes()
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
        } else {
            path.starts_with(prefix)
        }
    }

    /// Whether a request with this method, path, query, authority (as sent, its port
    /// included: what the `authority` match and a header match on `host` read), headers and
    /// listener port matches.
    pub fn matches(&self, req: &MatchInput<'_>, port: u16) -> bool {
        let MatchInput {
            method,
            path,
            query,
            full_authority,
            scheme,
            headers,
        } = *req;
        self.port.is_none_or(|p| p == port)
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(method.as_str().as_bytes()))
            && self.uri.as_ref().is_none_or(|m| match m {
                StringMatcher::Exact(e) if self.ignore_uri_case => path.eq_ignore_ascii_case(e),
                StringMatcher::Prefix(p) => self.has_uri_prefix(path, p),
                m => m.matches(path.as_bytes()),
            })
            // Envoy's `:authority` matcher: the authority as sent, its port included.
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.matches(full_authority.as_bytes()))
            && self
                .scheme
                .as_ref()
                .is_none_or(|m| m.matches(scheme.as_bytes()))
            && self
                .headers
                .iter()
                .all(|h| h.present_in(headers, full_authority))
            && !self
                .without_headers
                .iter()
                .any(|h| h.present_in(headers, full_authority))
            && self.query_params.iter().all(|q| q.holds(query))
    }
}

/// What a request match reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct MatchInput<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The query as sent, without its `?`.
    pub query: Option<&'a str>,
    /// The authority with its port, if it has one.
    pub full_authority: &'a str,
    /// Envoy's `:scheme`: an HTTP/2 request's as sent (`http` or `https`), otherwise `https` on
    /// TLS and `http` on plaintext.
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

impl HeaderMatch {
    /// Whether some value of the header satisfies the condition. `host` is the request's
    /// authority (`full_authority`) on HTTP/1.1 and HTTP/2 alike, as Envoy reads it: HTTP/2
    /// has no `Host` field, and HTTP/1.1's is the authority.
    fn present_in(&self, headers: &HeaderMap, full_authority: &str) -> bool {
        if self.name == http::header::HOST {
            return self
                .value
                .as_ref()
                .is_none_or(|m| m.matches(full_authority.as_bytes()));
        }
        let mut values = headers.get_all(&self.name).iter();
        match &self.value {
            None => values.next().is_some(),
            Some(m) => values.any(|v| m.matches(v.as_bytes())),
        }
    }
}

/// Istio's `StringMatch`, compiled. Regexes are RE2 syntax, matched against the whole value.
#[derive(Debug, Clone, Serialize)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "serialize_display")] Regex),
}

impl StringMatcher {
    /// Whether `value` matches. A non-UTF-8 value never matches a regex.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(s) => value == s.as_bytes(),
            Self::Prefix(s) => value.starts_with(s.as_bytes()),
            Self::Regex(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
        }
    }
}

/// `headers.request` or `headers.response`, as Envoy applies one level of them: the removals,
/// then every value rendered (against the headers as the removals left them), then the sets,
/// then the adds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOps {
    #[serde(serialize_with = "serialize_sources")]
    pub set: Vec<(HeaderName, HeaderValueSource)>,
    #[serde(serialize_with = "serialize_sources")]
    pub add: Vec<(HeaderName, HeaderValueSource)>,
    #[serde(serialize_with = "serialize_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a value reads the request (`%REQ(...)%`): a response's operations then need
    /// the request's head, kept from before it was forwarded.
    pub fn reads_request(&self) -> bool {
        self.values().any(HeaderValueSource::reads_request)
    }

    fn values(&self) -> impl Iterator<Item = &HeaderValueSource> {
        self.set.iter().chain(&self.add).map(|(_, v)| v)
    }

    /// `other`'s operations after these, as one level: Istio appends a lone destination's
    /// operations to its rule's.
    pub fn extend(&mut self, other: HeaderOps) {
        self.set.extend(other.set);
        self.add.extend(other.add);
        self.remove.extend(other.remove);
    }

    /// Whether a value has command operators: `apply` then needs a context.
    pub fn formats(&self) -> bool {
        self.values()
            .any(|v| matches!(v, HeaderValueSource::Formatted(_)))
    }

    /// Applies the operations to `headers`. `cx` is what command operators read, given
    /// whenever `formats()`; `request` is the request's header map that `%REQ(...)%` reads,
    /// `None` when `headers` are the request's own.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        cx: Option<&FormatContext<'_>>,
        request: Option<&HeaderMap>,
    ) {
        for name in &self.remove {
            headers.remove(name);
        }
        debug_assert!(
            cx.is_some() || !self.formats(),
            "command operators without a context"
        );
        // An empty value is left out, as Envoy leaves it (`keep_empty_value` is false).
        let Some(cx) = cx.filter(|_| self.formats()) else {
            for (name, value) in &self.set {
                if let HeaderValueSource::Fixed(value) = value {
                    if !value.is_empty() {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
            for (name, value) in &self.add {
                if let HeaderValueSource::Fixed(value) = value {
                    if !value.is_empty() {
                        headers.append(name.clone(), value.clone());
                    }
                }
            }
            return;
        };
        // Every value from the headers as they are now, before any is set.
        let rendered: Vec<Option<HeaderValue>> = {
            let read = request.unwrap_or(headers);
            self.values().map(|v| v.render(cx, read)).collect()
        };
        let (sets, adds) = rendered.split_at(self.set.len().min(rendered.len()));
        for ((name, _), value) in self.set.iter().zip(sets) {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
        for ((name, _), value) in self.add.iter().zip(adds) {
            if let Some(value) = value {
                headers.append(name.clone(), value.clone());
            }
        }
    }
}

pub(crate) fn serialize_display<T: std::fmt::Display, S: Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn serialize_status<S: Serializer>(v: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(v.as_u16())
}

fn serialize_bytes_lossy<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v))
}

fn serialize_opt_header_value<S: Serializer>(
    v: &Option<HeaderValue>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&String::from_utf8_lossy(v.as_bytes())),
        None => s.serialize_none(),
    }
}

fn serialize_sources<S: Serializer>(
    v: &[(HeaderName, HeaderValueSource)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, v)| (k.as_str(), v.as_written())))
}

fn serialize_names<S: Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(HeaderName::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(m: StringMatcher) -> RequestMatch {
        RequestMatch {
            uri: Some(m),
            ..RequestMatch::default()
        }
    }

    /// RE2's rewrite strings (`\\1`, `\\\\`) in `regex`'s syntax, a `$` kept as itself.
    #[test]
    fn regex_rewrites_translate_from_re2() {
        let re = Regex::new("^/(a)(b)?").unwrap();
        let groups = re.captures_len();
        let ok = [
            (r"/x/\1", "/x/${1}"),
            (r"\0\2", "${0}${2}"),
            (r"/\\/$1", r"/\/$$1"),
        ];
        for (rewrite, want) in ok {
            assert_eq!(
                UriRewrite::regex_replacement(rewrite, groups).unwrap(),
                want
            );
        }
        let rw = UriRewrite::Regex {
            pattern: re.clone(),
            replacement: UriRewrite::regex_replacement(r"/$\1\2", groups).unwrap(),
        };
        assert_eq!(rw.replace_all("/ab/c"), "/$ab/c");
        assert_eq!(rw.replace_all("/a/c"), "/$a/c");
        assert_eq!(rw.replace_all("/c"), "/c");
        for (rewrite, want) in [
            (r"\3", "names a group the pattern does not have (it has 2)"),
            (r"\x", "followed by a group digit"),
        ] {
            let err = UriRewrite::regex_replacement(rewrite, groups).unwrap_err();
            assert!(err.contains(want), "{rewrite}: {err}");
        }
    }

    /// Istio's `IsCatchAllRoute` on the Envoy route each match becomes, on a listener of port
    /// 8080.
    #[test]
    fn catch_all_matches_as_istio_reads_them() {
        let header = |name: &'static str| HeaderMatch {
            name: HeaderName::from_static(name),
            value: None,
        };
        let exact = || Some(StringMatcher::Exact("x".into()));
        let cases: [(&str, RequestMatch, bool); 14] = [
            (
                "a scheme",
                RequestMatch {
                    scheme: exact(),
                    ..RequestMatch::default()
                },
                false,
            ),
            ("no condition", RequestMatch::default(), true),
            ("prefix /", uri(StringMatcher::Prefix("/".into())), true),
            (
                "regex .*",
                uri(StringMatcher::Regex(Regex::new("^(?:.*)$").unwrap())),
                true,
            ),
            (
                "regex .+",
                uri(StringMatcher::Regex(Regex::new("^(?:.+)$").unwrap())),
                false,
            ),
            ("prefix /a", uri(StringMatcher::Prefix("/a".into())), false),
            ("exact /", uri(StringMatcher::Exact("/".into())), false),
            (
                "the listener's port",
                RequestMatch {
                    port: Some(8080),
                    ..RequestMatch::default()
                },
                true,
            ),
            (
                "another port",
                RequestMatch {
                    port: Some(9090),
                    ..RequestMatch::default()
                },
                false,
            ),
            (
                "method",
                RequestMatch {
                    method: exact(),
                    ..RequestMatch::default()
                },
                false,
            ),
            (
                "authority",
                RequestMatch {
                    authority: exact(),
                    ..RequestMatch::default()
                },
                false,
            ),
            (
                "header",
                RequestMatch {
                    headers: vec![header("x-a")],
                    ..RequestMatch::default()
                },
                false,
            ),
            (
                "without header",
                RequestMatch {
                    without_headers: vec![header("x-a")],
                    ..RequestMatch::default()
                },
                false,
            ),
            (
                "query parameter",
                RequestMatch {
                    query_params: vec![QueryParamMatch {
                        name: "a".into(),
                        value: None,
                    }],
                    ..RequestMatch::default()
                },
                false,
            ),
        ];
        for (what, m, want) in cases {
            assert_eq!(m.is_catch_all(8080), want, "{what}");
        }
    }
}

#[cfg(test)]
mod tls_group_tests {
    use super::TlsGroups;

    #[test]
    fn a_set_of_groups_holds_any_number() {
        let mut set = TlsGroups::default();
        assert!(set.is_empty() && !set.admits(Some(0)) && set.admits(None));
        for g in [3, 64, 200] {
            set.insert(g);
        }
        assert!(!set.is_empty());
        assert_eq!(set.groups().collect::<Vec<_>>(), [3, 64, 200]);
        for (g, held) in [
            (3, true),
            (64, true),
            (200, true),
            (0, false),
            (63, false),
            (65, false),
            (199, false),
            (1000, false),
        ] {
            assert_eq!(set.admits(Some(g)), held, "{g}");
        }
        let mut more = TlsGroups::one(5);
        more.extend(&set);
        assert_eq!(more.groups().collect::<Vec<_>>(), [3, 5, 64, 200]);
        more.extend(&TlsGroups::All);
        assert!(more.admits(Some(7)) && more.admits(Some(100_000)));
        assert_eq!(TlsGroups::All.groups().count(), 0);
    }
}
