//! The certificate files of `SIMPLE` and `MUTUAL` Gateway servers (`serverCertificate`,
//! `privateKey`, `caCertificates`, `caCrl`), as read into the configuration's material (so
//! again on every reload, as the identity files are).
//!
//! Refuses a key that does not match its certificate, an expired server certificate, and a
//! file without the PEM blocks it should hold, naming the file.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls::{SignatureAlgorithm, SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion};

use meshgate_config::model::{Listener, ServerCertificate};
use meshgate_config::Model;

use super::credentials::OwnCertificate;
use crate::material::Material;
use crate::runtime::BuildError;

/// The loaded files of every SIMPLE and MUTUAL group, by listener and group.
#[derive(Debug, Default)]
pub struct ServerFiles {
    loaded: Vec<((u16, usize), LoadedServerCertificate)>,
}

/// One server's certificate, key and client CAs.
#[derive(Debug)]
pub struct LoadedServerCertificate {
    pub certified_key: Arc<CertifiedKey>,
    /// Its RSA or ECDSA twin (`credentialNames`, `tlsCertificates`).
    pub second: Option<Arc<CertifiedKey>>,
    /// `caCertificates` (MUTUAL).
    pub client_roots: Option<Arc<RootCertStore>>,
    /// `caCrl` (MUTUAL).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl ServerFiles {
    /// The files of every SIMPLE and MUTUAL server of `model`, from `material`.
    pub fn load(
        model: &Model,
        material: &Material,
        provider: &CryptoProvider,
    ) -> Result<Self, BuildError> {
        let mut loaded = Vec::new();
        for l in &model.listeners {
            for (i, tls) in l.tls.iter().enumerate() {
                if let Some(files) = tls.mode.files() {
                    loaded.push(((l.port, i), load(files, material, provider)?));
                }
            }
        }
        Ok(Self { loaded })
    }

    /// The files of group `group` of `listener`.
    pub fn get(&self, listener: &Listener, group: usize) -> Option<&LoadedServerCertificate> {
        self.loaded
            .iter()
            .find(|(key, _)| *key == (listener.port, group))
            .map(|(_, files)| files)
    }
}

fn load(
    files: &ServerCertificate,
    material: &Material,
    provider: &CryptoProvider,
) -> Result<LoadedServerCertificate, BuildError> {
    let certified_key = certified(&files.certificate, &files.private_key, material, provider)?;
    let second = match &files.second {
        Some((certificate, key)) => {
            let second = certified(certificate, key, material, provider)?;
            let algorithm = second.key.algorithm();
            if algorithm == certified_key.key.algorithm() {
                return Err(error(
                    certificate,
                    format!(
                        "has a {algorithm:?} key, as the server's first certificate has: the \
                         second of a server's two is its twin of the other key type (RSA beside \
                         ECDSA)"
                    ),
                ));
            }
            Some(Arc::new(second))
        }
        None => None,
    };
    let client_roots = match &files.ca_certificates {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in material.certificates(path)? {
                roots
                    .add(cert.clone())
                    .map_err(|e| error(path, format!("unusable CA certificate: {e}")))?;
            }
            Some(Arc::new(roots))
        }
    };
    let crls = match &files.ca_crl {
        None => Vec::new(),
        Some(path) => material.usable_crls(path)?,
    };
    Ok(LoadedServerCertificate {
        certified_key: Arc::new(certified_key),
        second,
        client_roots,
        crls,
    })
}

/// The chain of `certificate` with the key of `key`: refused if they do not match, or if the
/// certificate has expired.
fn certified(
    certificate: &Path,
    key: &Path,
    material: &Material,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, BuildError> {
    let chain = material.certificates(certificate)?.to_vec();
    let certified = CertifiedKey::from_der(chain, material.key(key)?, provider).map_err(|e| {
        error(
            key,
            format!(
                "does not match the certificate of {}: {e}",
                certificate.display()
            ),
        )
    })?;
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(material.leaf(certificate)?) {
        let not_after = cert.validity().not_after;
        if not_after.timestamp() < now_unix() {
            return Err(error(
                certificate,
                format!("expired at {}", not_after.to_rfc2822().unwrap_or_default()),
            ));
        }
    }
    Ok(certified)
}

impl LoadedServerCertificate {
    /// What presents its certificate: the one, or of the two the one a client can take with
    /// the protocol `versions` and the cipher suites of `provider` the server speaks.
    pub fn resolver(
        &self,
        provider: &CryptoProvider,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<dyn ResolvesServerCert> {
        let Some(second) = &self.second else {
            return Arc::new(OwnCertificate(self.certified_key.clone()));
        };
        let suites = provider
            .cipher_suites
            .iter()
            .filter(|s| versions.contains(&s.version()))
            .copied()
            .collect();
        Arc::new(Twins {
            twins: [Twin::new(&self.certified_key), Twin::new(second)],
            suites,
        })
    }
}

/// One of a server's two certificates, with what it can sign, worked out once.
#[derive(Debug)]
struct Twin {
    key: Arc<CertifiedKey>,
    algorithm: SignatureAlgorithm,
    schemes: Vec<SignatureScheme>,
}

impl Twin {
    fn new(key: &Arc<CertifiedKey>) -> Self {
        let schemes = SCHEMES
            .iter()
            .filter(|s| key.key.choose_scheme(&[**s]).is_some())
            .copied()
            .collect();
        Self {
            key: key.clone(),
            algorithm: key.key.algorithm(),
            schemes,
        }
    }
}

/// The signature schemes a server key may sign with.
const SCHEMES: [SignatureScheme; 10] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// Two certificates of one server (RSA beside ECDSA): a handshake gets the first whose key
/// signs with a scheme the client offers and goes with a cipher suite both speak (any TLS 1.3
/// suite; on TLS 1.2, one of the key's algorithm), an ECDSA one before an RSA one, as Envoy
/// prefers ECDSA when the client supports it; when neither fits, the first, and the handshake
/// fails as it would with it alone.
#[derive(Debug)]
struct Twins {
    twins: [Twin; 2],
    /// The cipher suites of the versions the server speaks.
    suites: Vec<SupportedCipherSuite>,
}

impl ResolvesServerCert for Twins {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        let fits = |t: &&Twin| {
            t.schemes.iter().any(|s| offered.contains(s))
                && hello.cipher_suites().iter().any(|c| {
                    self.suites
                        .iter()
                        .any(|s| s.suite() == *c && s.usable_for_signature_algorithm(t.algorithm))
                })
        };
        let [first, _] = &self.twins;
        self.twins
            .iter()
            .filter(fits)
            .min_by_key(|t| t.algorithm != SignatureAlgorithm::ECDSA)
            .unwrap_or(first)
            .key
            .clone()
            .into()
    }
}

fn error(path: &Path, message: String) -> BuildError {
    BuildError::File {
        path: path.to_path_buf(),
        message,
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
