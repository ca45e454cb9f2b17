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
    /// Which of the fields that name certificates are set (an empty list or name is not).
    pub fn certificate_fields(&self) -> [(&'static str, bool); 7] {
        [
            ("serverCertificate", self.server_certificate.is_some()),
            ("privateKey", self.private_key.is_some()),
            ("caCertificates", self.ca_certificates.is_some()),
            ("caCrl", self.ca_crl.is_some()),
            ("credentialName", self.credential().is_some()),
            ("credentialNames", listed(&self.credential_names)),
            ("tlsCertificates", listed(&self.tls_certificates)),
        ]
    }

    /// Which of the fields a terminating server reads, besides `mode`, are set.
    pub fn termination_fields(&self) -> impl Iterator<Item = (&'static str, bool)> {
        self.certificate_fields().into_iter().chain([
            ("subjectAltNames", self.subject_alt_names.is_some()),
            (
                "verifyCertificateSpki",
                self.verify_certificate_spki.is_some(),
            ),
            (
                "verifyCertificateHash",
                self.verify_certificate_hash.is_some(),
            ),
            ("minProtocolVersion", self.min_protocol_version.is_some()),
            ("maxProtocolVersion", self.max_protocol_version.is_some()),
            ("cipherSuites", self.cipher_suites.is_some()),
        ])
    }

    /// `credentialName`, where it names something: Istio reads an empty one as not set.
    pub fn credential(&self) -> Option<&str> {
        self.credential_name.as_deref().filter(|n| !n.is_empty())
    }
}

/// A list that is given and not empty (Istio reads an empty one as not set).
pub fn listed<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|l| !l.is_empty())
}
