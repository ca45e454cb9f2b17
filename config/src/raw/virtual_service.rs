//! `networking.istio.io VirtualService`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{StringMatch, Unsupported};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub gateways: Option<Vec<String>>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    pub tls: Unsupported,
    pub tcp: Unsupported,
    pub export_to: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
    pub redirect: Unsupported,
    pub delegate: Unsupported,
    pub retries: Unsupported,
    pub fault: Unsupported,
    pub mirror: Unsupported,
    pub mirrors: Unsupported,
    pub mirror_percentage: Unsupported,
    pub mirror_percent: Unsupported,
    pub cors_policy: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
    pub scheme: Unsupported,
    pub query_params: Unsupported,
    pub ignore_uri_case: Unsupported,
    pub stat_prefix: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<u32>,
    pub headers: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    pub port: Option<PortSelector>,
    pub subset: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u32,
    pub body: Option<HttpBody>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    pub string: Option<String>,
    pub bytes: Unsupported,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Unsupported,
}
