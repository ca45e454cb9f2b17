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
use rustls::SignatureAlgorithm;

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
            Some(Arc::new(certified(certificate, key, material, provider)?))
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
    /// What presents its certificate: the one, or of the two the one a client can take.
    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        match &self.second {
            None => Arc::new(OwnCertificate(self.certified_key.clone())),
            Some(second) => Arc::new(Twins([self.certified_key.clone(), second.clone()])),
        }
    }
}

/// Two certificates of one server (RSA beside ECDSA): a handshake gets the first whose key
/// signs with a scheme the client offers (and, on TLS 1.2, that a cipher suite it offers
/// allows), an ECDSA one before an RSA one, as Envoy prefers ECDSA when the client supports
/// it; when neither fits, the first, and the handshake fails as it would with it alone.
#[derive(Debug)]
struct Twins([Arc<CertifiedKey>; 2]);

impl ResolvesServerCert for Twins {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let fits = |k: &&Arc<CertifiedKey>| fits(k, &hello);
        let ecdsa = |k: &&Arc<CertifiedKey>| k.key.algorithm() == SignatureAlgorithm::ECDSA;
        let [first, second] = &self.0;
        [first, second]
            .into_iter()
            .filter(fits)
            .min_by_key(|k| !ecdsa(k))
            .or(Some(first))
            .cloned()
    }
}

/// Whether `hello` can take `key`: a signature scheme it offers, and a cipher suite that goes
/// with the key (any TLS 1.3 suite; on TLS 1.2, an ECDHE suite of the key's algorithm).
fn fits(key: &CertifiedKey, hello: &ClientHello<'_>) -> bool {
    if key.key.choose_scheme(hello.signature_schemes()).is_none() {
        return false;
    }
    let algorithm = key.key.algorithm();
    hello.cipher_suites().iter().any(|suite| {
        use rustls::CipherSuite as S;
        match suite {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS13_AES_256_GCM_SHA384
            | S::TLS13_CHACHA20_POLY1305_SHA256 => true,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
                algorithm == SignatureAlgorithm::ECDSA
            }
            S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
                algorithm == SignatureAlgorithm::RSA
            }
            _ => false,
        }
    })
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
