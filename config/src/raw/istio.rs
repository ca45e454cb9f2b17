//! The installation resources meshgate reads the trust domain from: Kyma's `Istio` and
//! `IstioOperator`. Their installation-only sections are accepted and skipped; any mesh
//! setting other than the trust domain is an error.

use serde::Deserialize;

use super::Unsupported;

/// `operator.kyma-project.io/v1alpha2 Istio`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KymaIstioSpec {
    #[serde(default)]
    pub config: Option<KymaConfig>,
    /// Installation-only (replicas, resources, HPA): nothing for a data plane to do.
    #[serde(default)]
    pub components: Option<serde::de::IgnoredAny>,
    /// Installation-only feature flags.
    #[serde(default)]
    pub experimental: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KymaConfig {
    pub trust_domain: Option<String>,
    pub num_trusted_proxies: Unsupported,
    pub authorizers: Unsupported,
    pub gateway_external_traffic_policy: Unsupported,
    pub forward_client_cert_details: Unsupported,
    pub telemetry: Unsupported,
}

/// `install.istio.io/v1alpha1 IstioOperator`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioOperatorSpec {
    #[serde(default)]
    pub mesh_config: Option<MeshConfig>,
    // Installation-only: which images and components to install, and where.
    #[serde(default)]
    pub profile: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub hub: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub tag: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub revision: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub namespace: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub components: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub values: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    pub default_config: Unsupported,
    pub outbound_traffic_policy: Unsupported,
    pub access_log_file: Unsupported,
    pub enable_tracing: Unsupported,
    pub extension_providers: Unsupported,
    pub ca_certificates: Unsupported,
    pub root_namespace: Unsupported,
    pub tls_defaults: Option<TlsDefaults>,
    pub path_normalization: Option<PathNormalization>,
}

/// `meshConfig.pathNormalization`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathNormalization {
    pub normalization: Option<String>,
}

/// `meshConfig.tlsDefaults`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsDefaults {
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    pub cipher_suites: Unsupported,
    pub min_protocol_version: Unsupported,
}
