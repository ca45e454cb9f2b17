//! `networking.istio.io VirtualService`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{StringMatch, Unsupported};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub gateways: Option<Vec<String>>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    pub tls: Option<Vec<TlsRoute>>,
    pub tcp: Option<Vec<TcpRoute>>,
    pub export_to: Option<Vec<String>>,
    /// For each of `http`, where it came from when it is a delegate's rule merged into the
    /// rule that delegated to it (`compile::delegate`).
    #[serde(skip)]
    pub(crate) delegated: Vec<Option<Delegated>>,
}

/// A rule of a delegate VirtualService, merged: where errors in it are reported.
#[derive(Debug, Clone)]
pub(crate) struct Delegated {
    /// The delegate's file and resource.
    pub(crate) origin: crate::compile::Origin,
    /// The delegate's rule (`spec.http[1]`) and the rule that delegated to it.
    pub path: String,
}

/// `tcp[]`: a route for bytes a `TCP` server (plaintext, or TLS it terminates) forwards.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `L4MatchAttributes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Match {
    pub destination_subnets: Option<Vec<String>>,
    pub port: Option<u32>,
    pub gateways: Option<Vec<String>>,
    pub source_labels: Unsupported,
    pub source_namespace: Unsupported,
    pub source_subnet: Unsupported,
}

/// `tls[]`: a route for TLS a `PASSTHROUGH` server does not terminate, chosen by SNI.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatch {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    pub destination_subnets: Option<Vec<String>>,
    pub port: Option<u32>,
    pub gateways: Option<Vec<String>>,
    pub source_labels: Unsupported,
    pub source_namespace: Unsupported,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    pub direct_response: Option<DirectResponse>,
    pub headers: Option<Headers>,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<String>,
    pub redirect: Option<Redirect>,
    pub fault: Option<Fault>,
    pub cors_policy: Option<CorsPolicy>,
    pub delegate: Option<Delegate>,
    pub retries: Option<Retries>,
    pub mirror: Option<Destination>,
    pub mirrors: Option<Vec<MirrorPolicy>>,
    pub mirror_percentage: Option<Percent>,
    /// Deprecated: an integer percentage.
    pub mirror_percent: Option<u32>,
}

/// `delegate`: the VirtualService (without hosts) whose rules take this rule's place.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delegate {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// `retries`: Envoy's RetryPolicy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    pub attempts: Option<i64>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Unsupported,
    pub retry_ignore_previous_hosts: Option<bool>,
    pub backoff: Option<String>,
}

/// `redirect`: Envoy's RedirectAction.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub derive_port: Option<String>,
    pub scheme: Option<String>,
    pub redirect_code: Option<u32>,
}

/// `fault`: Envoy's HTTP fault filter, per route.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    pub fixed_delay: Option<String>,
    pub percentage: Option<Percent>,
    /// Deprecated: an integer percentage.
    pub percent: Option<u32>,
    pub exponential_delay: Unsupported,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    pub http_status: Option<u32>,
    pub grpc_status: Option<String>,
    pub percentage: Option<Percent>,
    pub http2_error: Unsupported,
}

/// Istio's `Percent`: a double, 0 to 100.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    pub value: Option<f64>,
}

/// `corsPolicy`: Envoy's CORS filter, per route.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    pub allow_origins: Option<Vec<StringMatch>>,
    /// Deprecated: exact origins.
    pub allow_origin: Option<Vec<String>>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    pub max_age: Option<String>,
    pub allow_credentials: Option<bool>,
    pub unmatched_preflights: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    pub port: Option<u32>,
    pub gateways: Option<Vec<String>>,
    #[serde(default)]
    pub source_labels: super::Labels,
    pub source_namespace: Option<String>,
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    pub stat_prefix: Unsupported,
}

/// One of `mirrors`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorPolicy {
    pub destination: Destination,
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<u32>,
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    pub port: Option<PortSelector>,
    pub subset: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    pub status: u32,
    pub body: Option<HttpBody>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBody {
    pub string: Option<String>,
    pub bytes: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `rewrite.uriRegexRewrite`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    pub rewrite: Option<String>,
}
