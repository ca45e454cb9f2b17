//! `networking.istio.io Gateway`.

use serde::Deserialize;

use super::{Labels, Unsupported};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub selector: Labels,
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub port: Port,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub tls: Option<ServerTls>,
    pub name: Option<String>,
    pub bind: Unsupported,
    pub default_endpoint: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub number: u32,
    pub name: Option<String>,
    pub protocol: String,
    pub target_port: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    pub mode: Option<String>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub https_redirect: Option<bool>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    pub credential_name: Option<String>,
    pub credential_names: Option<Vec<String>>,
    pub tls_certificates: Option<Vec<TlsCertificate>>,
    pub subject_alt_names: Option<Vec<String>>,
    pub verify_certificate_spki: Option<Vec<String>>,
    pub verify_certificate_hash: Option<Vec<String>>,
}

/// `tls.tlsCertificates[]`: one of a server's certificates (RSA beside ECDSA).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificate {
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
}

impl ServerTls {
    /// `credentialName`, where it names something: Istio reads an empty one as not set.
    pub fn credential(&self) -> Option<&str> {
        self.credential_name.as_deref().filter(|n| !n.is_empty())
    }
}
