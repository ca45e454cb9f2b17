//! The installation resources: Kyma's `Istio` and `IstioOperator` (as `istioctl install -f`
//! takes it). Fields with a meaning for meshgate are typed; installation-only fields are
//! declared as [`Skipped`] (one warning per resource lists them); mesh settings that would
//! change traffic and are not implemented are [`Unsupported`] (an error each).

use serde::Deserialize;

use super::Unsupported;

/// Accepted and skipped with a warning: an installation-only or telemetry-only setting.
pub type Skipped = Option<serde::de::IgnoredAny>;

/// `operator.kyma-project.io/v1alpha1, v1alpha2 Istio`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KymaIstioSpec {
    #[serde(default)]
    pub config: Option<KymaConfig>,
    /// Replicas, resources, HPA, strategy of istiod, gateways, CNI, proxies.
    pub components: Skipped,
    /// Feature flags of the installation (alpha Gateway API, ambient).
    pub experimental: Skipped,
    /// Environment flags of istiod.
    pub compatibility_mode: Skipped,
    /// Kubernetes NetworkPolicies for the module's namespaces.
    pub network_policies_enabled: Skipped,
}

/// Kyma's `spec.config`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KymaConfig {
    pub trust_domain: Option<String>,
    pub num_trusted_proxies: Option<u32>,
    pub forward_client_cert_details: Option<String>,
    /// The Kubernetes Service's `externalTrafficPolicy`.
    pub gateway_external_traffic_policy: Skipped,
    /// Sidecars' DNS capture.
    #[serde(rename = "enableDNSProxying")]
    pub enable_dns_proxying: Skipped,
    /// Extension providers for `CUSTOM` policies, which meshgate refuses where they are used.
    pub authorizers: Skipped,
    /// Prometheus merge of sidecars' metrics.
    pub telemetry: Skipped,
    /// Which Envoy statistics sidecars keep.
    pub proxy_stats_matcher: Skipped,
}

/// `install.istio.io/v1alpha1 IstioOperator`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioOperatorSpec {
    #[serde(default)]
    pub mesh_config: Option<MeshConfig>,
    // Installation-only: which images and components to install, where, and their Helm values.
    pub profile: Skipped,
    pub install_package_path: Skipped,
    pub hub: Skipped,
    pub tag: Skipped,
    pub resource_suffix: Skipped,
    pub revision: Skipped,
    pub compatibility_version: Skipped,
    pub namespace: Skipped,
    pub components: Skipped,
    pub addon_components: Skipped,
    pub values: Skipped,
    pub unvalidated_values: Skipped,
}

/// `spec.meshConfig` (Istio's `MeshConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    pub root_namespace: Option<String>,
    pub access_log_file: Option<String>,
    pub access_log_encoding: Option<String>,
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    pub enable_tracing: Option<bool>,
    pub default_config: Option<ProxyConfig>,
    pub ca_certificates: Option<Vec<CertificateData>>,
    pub tls_defaults: Option<TlsDefaults>,
    pub path_normalization: Option<PathNormalization>,
    pub h2_upgrade_policy: Option<String>,
    pub default_service_export_to: Option<Vec<String>>,
    pub default_virtual_service_export_to: Option<Vec<String>>,
    pub default_destination_rule_export_to: Option<Vec<String>>,

    // Settings of sidecars, of istiod, or of telemetry: nothing a gateway's traffic depends on.
    pub access_log_format: Skipped,
    pub enable_envoy_access_log_service: Skipped,
    pub disable_envoy_listener_log: Skipped,
    pub enable_prometheus_merge: Skipped,
    pub extension_providers: Skipped,
    pub default_providers: Skipped,
    pub ingress_class: Skipped,
    pub ingress_service: Skipped,
    pub ingress_controller_mode: Skipped,
    pub ingress_selector: Skipped,
    pub proxy_listen_port: Skipped,
    pub proxy_inbound_listen_port: Skipped,
    pub proxy_http_port: Skipped,
    pub protocol_detection_timeout: Skipped,
    pub inbound_traffic_policy: Skipped,
    pub enable_auto_mtls: Skipped,
    pub config_sources: Skipped,
    pub inbound_cluster_stat_name: Skipped,
    pub outbound_cluster_stat_name: Skipped,
    pub certificates: Skipped,
    pub ca: Skipped,
    pub verify_certificate_at_client: Skipped,
    pub service_settings: Skipped,
    pub service_scope_configs: Skipped,
    #[serde(rename = "meshMTLS")]
    pub mesh_mtls: Skipped,

    // Mesh settings that change traffic, not implemented.
    pub connect_timeout: Unsupported,
    pub tcp_keepalive: Unsupported,
    pub locality_lb_setting: Unsupported,
    pub dns_refresh_rate: Unsupported,
    pub discovery_selectors: Unsupported,
    pub default_http_retry_policy: Unsupported,
    pub compliance_policy: Unsupported,
}

/// `meshConfig.outboundTrafficPolicy`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    pub mode: Option<String>,
}

/// `meshConfig.defaultConfig` (Istio's `ProxyConfig`): what a gateway takes from it is its
/// topology; the rest configures the agent, the sidecar's injection or telemetry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    pub gateway_topology: Option<GatewayTopology>,
    pub hold_application_until_proxy_starts: Skipped,
    pub proxy_metadata: Skipped,
    pub discovery_address: Skipped,
    pub tracing: Skipped,
    pub concurrency: Skipped,
    pub termination_drain_duration: Skipped,
    pub proxy_stats_matcher: Skipped,
    pub image: Skipped,
    pub status_port: Skipped,
    pub drain_duration: Skipped,
    pub config_path: Skipped,
    pub binary_path: Skipped,
    pub service_cluster: Skipped,
    pub tracing_service_name: Skipped,
    pub private_key_provider: Skipped,
    pub ca_certificates_pem: Skipped,
    pub readiness_probe: Skipped,
    pub extra_stat_tags: Skipped,
    pub envoy_metrics_service: Skipped,
    pub envoy_access_log_service: Skipped,
    pub stat_name_length: Skipped,
    pub proxy_admin_port: Skipped,
    pub control_plane_auth_policy: Skipped,
    pub custom_config_file: Skipped,
    pub sds: Skipped,
    pub interception_mode: Skipped,
    pub runtime_values: Skipped,
    pub file_flush_interval: Skipped,
    pub file_flush_min_size_kb: Skipped,
    pub proxy_bootstrap_template_path: Skipped,
    pub mesh_id: Skipped,
    pub istio_versions: Skipped,
    pub proxy_headers: Unsupported,
}

/// `defaultConfig.gatewayTopology`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTopology {
    pub num_trusted_proxies: Option<u32>,
    pub forward_client_cert_details: Option<String>,
    /// Istio's `ProxyProtocolConfiguration`: an empty message; present means on.
    pub proxy_protocol: Option<Empty>,
    pub set_current_client_cert_details: Unsupported,
}

/// A message without fields (`{}`).
#[derive(Debug, Default, Deserialize)]
pub struct Empty {}

/// `meshConfig.caCertificates[]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateData {
    pub pem: Option<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    pub spiffe_bundle_url: Option<String>,
    pub cert_signers: Unsupported,
}

/// `meshConfig.pathNormalization`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathNormalization {
    pub normalization: Option<String>,
}

/// `meshConfig.tlsDefaults`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsDefaults {
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    pub cipher_suites: Unsupported,
    pub min_protocol_version: Unsupported,
}

/// Which of `fields` are present, by their YAML names.
pub fn present<'a>(fields: &[(&'a str, &Skipped)]) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(name, _)| *name)
        .collect()
}
