//! The certificate files of `SIMPLE` and `MUTUAL` Gateway servers (`serverCertificate`,
//! `privateKey`, `caCertificates`, `caCrl`), read once per configuration and again on every
//! reload, as the identity files are.
//!
//! Refuses a key that does not match its certificate, an expired server certificate, and a
//! file without the PEM blocks it should hold, naming the file.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use meshgate_config::model::{Listener, ServerCertificate, ServerTlsMode};
use meshgate_config::Model;

use crate::StartError;

/// The loaded files of every SIMPLE and MUTUAL group, by listener and group.
#[derive(Debug, Default)]
pub struct ServerFiles {
    loaded: Vec<((u16, usize), LoadedServerCertificate)>,
}

/// One server's certificate, key and client CAs.
#[derive(Debug)]
pub struct LoadedServerCertificate {
    pub certified_key: Arc<CertifiedKey>,
    /// `caCertificates` (MUTUAL).
    pub client_roots: Option<Arc<RootCertStore>>,
    /// `caCrl` (MUTUAL).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl ServerFiles {
    /// Reads the files of every SIMPLE and MUTUAL server of `model`.
    pub fn load(model: &Model, provider: &CryptoProvider) -> Result<Self, StartError> {
        let mut loaded = Vec::new();
        for l in &model.listeners {
            for (i, tls) in l.tls.iter().enumerate() {
                if let ServerTlsMode::Simple(files) | ServerTlsMode::Mutual(files) = &tls.mode {
                    loaded.push(((l.port, i), load(files, provider)?));
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
    provider: &CryptoProvider,
) -> Result<LoadedServerCertificate, StartError> {
    let chain = certificates(&files.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&files.private_key)
        .map_err(|e| error(&files.private_key, format!("no usable private key: {e}")))?;
    let certified_key = CertifiedKey::from_der(chain.clone(), key, provider).map_err(|e| {
        error(
            &files.private_key,
            format!(
                "does not match the certificate of {}: {e}",
                files.certificate.display()
            ),
        )
    })?;
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(&chain[0]) {
        let not_after = cert.validity().not_after;
        if not_after.timestamp() < now_unix() {
            return Err(error(
                &files.certificate,
                format!("expired at {}", not_after.to_rfc2822().unwrap_or_default()),
            ));
        }
    }
    let client_roots = match &files.ca_certificates {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| error(path, format!("unusable CA certificate: {e}")))?;
            }
            Some(Arc::new(roots))
        }
    };
    let crls = match &files.ca_crl {
        None => Vec::new(),
        Some(path) => {
            let pem: Result<Vec<_>, _> = CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| error(path, format!("cannot read: {e}")))?
                .collect();
            let crls = pem.map_err(|e| error(path, format!("bad PEM: {e}")))?;
            if crls.is_empty() {
                // DER, as Envoy also takes.
                let der =
                    std::fs::read(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
                vec![CertificateRevocationListDer::from(der)]
            } else {
                crls
            }
        }
    };
    Ok(LoadedServerCertificate {
        certified_key: Arc::new(certified_key),
        client_roots,
        crls,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error(path, "holds no CERTIFICATE".into()));
    }
    Ok(certs)
}

fn error(path: &Path, message: String) -> StartError {
    StartError::Identity {
        path: path.to_path_buf(),
        message,
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
