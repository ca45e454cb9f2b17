//! `meshgate.dev/v1alpha1 MeshGateway`: this proxy's own settings.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Labels;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshGatewaySpec {
    #[serde(default)]
    pub labels: Labels,
    pub identity: Option<Identity>,
    pub listen: Option<Listen>,
    pub outbound: Option<Outbound>,
    pub admin: Option<Admin>,
    pub trust: Option<Trust>,
    pub tagging: Option<Tagging>,
    pub tls: Option<DownstreamTls>,
    #[serde(default)]
    pub resolve: Vec<Resolve>,
    /// Istio's root namespace: policies there without a selector apply mesh-wide.
    pub root_namespace: Option<String>,
    pub access_log: Option<AccessLog>,
    pub reload: Option<Reload>,
    pub limits: Option<Limits>,
    pub http: Option<Http>,
    pub credentials: Option<Credentials>,
}

/// Where Kubernetes Secrets named by `credentialName` are mounted.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// The Secret `name` is the directory `<directory>/name`.
    #[serde(default)]
    pub directory: String,
}

/// Request handling that Istio leaves to Envoy's defaults.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Http {
    pub headers_with_underscores_action: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub handshake_timeout: Option<String>,
    pub request_header_timeout: Option<String>,
    pub max_request_header_bytes: Option<u32>,
    pub max_connections_per_listener: Option<u32>,
    pub http2_max_concurrent_streams: Option<u32>,
    pub idle_timeout: Option<String>,
    pub stream_idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub stream_write_buffer_bytes: Option<u32>,
    pub max_certificate_chain_length: Option<u32>,
    pub trust_domain_labels: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reload {
    pub poll_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessLog {
    pub path: String,
}

/// A DNS override, as curl's `--resolve host:port:address`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolve {
    pub host: String,
    pub port: u32,
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownstreamTls {
    pub session_resumption: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub cert_chain: Option<String>,
    pub private_key: Option<String>,
    pub root_certs: Option<String>,
    pub workload_api: Option<WorkloadApi>,
    pub crl: Option<String>,
    pub expired_crl: Option<String>,
}

/// The SPIFFE Workload API as the certificate source (a SPIRE agent's socket).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadApi {
    pub socket: Option<String>,
    pub spiffe_id: Option<String>,
    pub start_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listen {
    pub address: Option<String>,
    #[serde(default)]
    pub port_overrides: BTreeMap<u32, u32>,
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// `listen.proxyProtocol`: PROXY protocol v1/v2 headers on the Gateway listeners.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProtocol {
    /// The peers a header is read from (address or CIDR); absent: every peer.
    pub trusted_sources: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outbound {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admin {
    pub address: String,
    pub probes: Option<String>,
    pub debug_endpoints: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trust {
    pub cluster_local_is_local: Option<bool>,
    pub trust_domains: Option<Vec<String>>,
    pub issuers: Option<Vec<Issuer>>,
    pub bundles: Option<Vec<Bundle>>,
}

/// The roots of one trust domain, from a PEM file or a SPIFFE bundle (JWKS) document.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub trust_domain: Option<String>,
    pub file: Option<String>,
    pub endpoint: Option<BundleEndpoint>,
}

/// A SPIFFE bundle endpoint (SPIFFE Federation): where, and how its server is authenticated.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEndpoint {
    pub url: Option<String>,
    pub profile: Option<String>,
    pub ca_certificates: Option<String>,
    pub spiffe_id: Option<String>,
    pub refresh: Option<String>,
}

/// An intermediate CA, by its certificate or SPKI hash, and the trust domains it may issue.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Issuer {
    pub certificate: Option<String>,
    pub spki_sha256: Option<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tagging {
    pub origin_header: Option<String>,
    pub trust_domain_header: Option<String>,
    pub principal_header: Option<String>,
    pub forward_client_cert: Option<String>,
    pub set_current_client_cert_details: Option<ClientCertDetails>,
    pub proxy_protocol_tlv: Option<u32>,
}

/// Envoy's `set_current_client_cert_details`, for what Istio's gateways leave off: `By`, `Hash`,
/// `Subject`, `URI` and `DNS` are always set.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertDetails {
    pub cert: Option<bool>,
    pub chain: Option<bool>,
}
