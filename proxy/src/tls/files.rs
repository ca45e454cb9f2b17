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
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use meshgate_config::model::{Listener, ServerCertificate};
use meshgate_config::Model;

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
    let chain = material.certificates(&files.certificate)?.to_vec();
    let key = material.key(&files.private_key)?;
    let certified_key = CertifiedKey::from_der(chain.clone(), key, provider).map_err(|e| {
        error(
            &files.private_key,
            format!(
                "does not match the certificate of {}: {e}",
                files.certificate.display()
            ),
        )
    })?;
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(material.leaf(&files.certificate)?) {
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
        client_roots,
        crls,
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
