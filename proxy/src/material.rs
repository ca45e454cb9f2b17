//! Material: every certificate, key and CRL file a configuration names, read once and in one
//! go, so that building a runtime from it is pure.
//!
//! Reading is the only part of a (re)load that touches the disk, and it blocks: the proxy runs
//! it in `spawn_blocking`, so that a reload never stalls the requests of a one-worker runtime.
//! Every file that cannot be read or is not PEM is reported at once, each with its path and
//! the underlying error kept as the source; a file is read once however many parts of the
//! configuration name it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, SectionKind};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use meshgate_config::Model;

/// The parsed contents of every file a model names, by path.
#[derive(Debug, Default)]
pub struct Material {
    files: HashMap<PathBuf, FileMaterial>,
    /// The roots each bundle endpoint served last, by URL (`tls::federation`).
    fetched: HashMap<String, Vec<CertificateDer<'static>>>,
    /// What the Workload API served last (`tls::workload_api`).
    svid: Option<std::sync::Arc<crate::tls::workload_api::Svid>>,
}

/// What one file holds.
#[derive(Debug, Default)]
struct FileMaterial {
    certificates: Vec<CertificateDer<'static>>,
    keys: Vec<PrivateKeyDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// The bytes as read, for a DER CRL (Envoy takes one too).
    raw: Vec<u8>,
}

/// A file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be opened or read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Its PEM is broken.
    #[error("{}: bad PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// It is JSON but not a usable SPIFFE bundle.
    #[error("{}: {message}", path.display())]
    Bundle { path: PathBuf, message: String },
}

/// Every file that could not be read, in the order the configuration names them. Never empty.
#[derive(Debug, thiserror::Error)]
pub struct FileErrors(pub Vec<FileError>);

impl std::fmt::Display for FileErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// What a file lacks: the runtime build says so, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct Missing {
    pub path: PathBuf,
    pub message: String,
}

impl Material {
    /// Reads every file `model` names. This blocks: run it off the async workers.
    pub fn read(model: &Model) -> Result<Self, FileErrors> {
        let mut files = HashMap::new();
        let mut errors = Vec::new();
        for path in model.certificate_files() {
            match read_file(&path) {
                Ok(m) => {
                    files.insert(path, m);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Self {
                files,
                fetched: HashMap::new(),
                svid: None,
            })
        } else {
            Err(FileErrors(errors))
        }
    }

    /// With the roots the bundle endpoints served.
    pub fn with_fetched(mut self, fetched: HashMap<String, Vec<CertificateDer<'static>>>) -> Self {
        self.fetched = fetched;
        self
    }

    /// With what the Workload API served.
    pub fn with_svid(
        mut self,
        svid: Option<std::sync::Arc<crate::tls::workload_api::Svid>>,
    ) -> Self {
        self.svid = svid;
        self
    }

    /// What the Workload API served, if the identity comes from it.
    pub fn svid(&self) -> Option<&std::sync::Arc<crate::tls::workload_api::Svid>> {
        self.svid.as_ref()
    }

    /// What the bundle endpoint at `url` served last: nothing before its first fetch.
    pub fn fetched(&self, url: &str) -> &[CertificateDer<'static>] {
        self.fetched.get(url).map_or(&[], Vec::as_slice)
    }

    /// The certificates of `path`, at least one.
    pub fn certificates(&self, path: &Path) -> Result<&[CertificateDer<'static>], Missing> {
        let certs = &self.file(path)?.certificates;
        if certs.is_empty() {
            return Err(missing(path, "holds no CERTIFICATE"));
        }
        Ok(certs)
    }

    /// The first certificate of `path` (the leaf of a chain).
    pub fn leaf(&self, path: &Path) -> Result<&CertificateDer<'static>, Missing> {
        self.file(path)?
            .certificates
            .first()
            .ok_or_else(|| missing(path, "holds no CERTIFICATE"))
    }

    /// The private key of `path`.
    pub fn key(&self, path: &Path) -> Result<PrivateKeyDer<'static>, Missing> {
        self.file(path)?
            .keys
            .first()
            .map(PrivateKeyDer::clone_key)
            .ok_or_else(|| missing(path, "holds no PRIVATE KEY"))
    }

    /// The CRLs of `path`: its PEM X509 CRL blocks, or the whole file as one DER CRL.
    pub fn crls(&self, path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Missing> {
        let file = self.file(path)?;
        if !file.crls.is_empty() {
            return Ok(file.crls.clone());
        }
        if file.certificates.is_empty() && file.keys.is_empty() && !file.raw.is_empty() {
            return Ok(vec![CertificateRevocationListDer::from(file.raw.clone())]);
        }
        Err(missing(path, "holds no X509 CRL"))
    }

    /// As `crls`, each parsed now: a file that does not hold usable CRLs is refused at load,
    /// naming it, and the configuration serving keeps its own.
    pub fn usable_crls(
        &self,
        path: &Path,
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, Missing> {
        let crls = self.crls(path)?;
        for der in &crls {
            webpki::OwnedCertRevocationList::from_der(der)
                .map_err(|e| missing(path, &format!("unusable CRL: {e:?}")))?;
        }
        Ok(crls)
    }

    fn file(&self, path: &Path) -> Result<&FileMaterial, Missing> {
        // Every path a model names was read; a model built without its material is a bug of
        // the caller, reported rather than trusted.
        self.files
            .get(path)
            .ok_or_else(|| missing(path, "was not read with this configuration"))
    }
}

fn read_file(path: &Path) -> Result<FileMaterial, FileError> {
    let raw = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut m = FileMaterial::default();
    if crate::tls::bundle::is_json(&raw) {
        // A SPIFFE bundle document: its X.509 authorities are the file's certificates.
        let bundle = crate::tls::bundle::parse(&raw).map_err(|message| FileError::Bundle {
            path: path.to_path_buf(),
            message,
        })?;
        m.certificates = bundle.x509_authorities;
        return Ok(m);
    }
    let mut rest: &[u8] = &raw;
    loop {
        let section = pem::from_buf(&mut rest).map_err(|source| FileError::Pem {
            path: path.to_path_buf(),
            source,
        });
        let section = match section {
            Ok(Some(section)) => section,
            Ok(None) => break,
            // Not PEM at all: a DER CRL, or nothing usable; what is needed decides.
            Err(_) if !contains(&raw, b"-----BEGIN ") => break,
            Err(e) => return Err(e),
        };
        match section {
            (SectionKind::Certificate, der) => m.certificates.push(CertificateDer::from(der)),
            (SectionKind::PrivateKey, der) => m
                .keys
                .push(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
            (SectionKind::RsaPrivateKey, der) => m
                .keys
                .push(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
            (SectionKind::EcPrivateKey, der) => m
                .keys
                .push(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
            (SectionKind::Crl, der) => m.crls.push(CertificateRevocationListDer::from(der)),
            _ => {}
        }
    }
    m.raw = raw;
    Ok(m)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn missing(path: &Path, message: &str) -> Missing {
    Missing {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unreadable_file_is_reported_once_with_its_cause() {
        let dir = std::env::temp_dir().join(format!("meshgate-material-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.pem");
        let bad = dir.join("bad.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let m = read_file(&good).unwrap();
        assert_eq!(m.certificates.len(), 1);
        assert!(matches!(read_file(&bad), Err(FileError::Pem { .. })));
        let gone = dir.join("gone.pem");
        let e = read_file(&gone).unwrap_err();
        assert!(matches!(&e, FileError::Read { path, .. } if path == &gone));
        assert!(
            std::error::Error::source(&e).is_some(),
            "the io::Error is kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `caCrl` whose PEM block is not a CRL is refused at load, naming the file.
    #[test]
    fn a_crl_that_does_not_parse_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("meshgate-crl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("crl.pem");
        std::fs::write(
            &bad,
            "-----BEGIN X509 CRL-----\nAAAAAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let mut material = Material::default();
        material.files.insert(bad.clone(), read_file(&bad).unwrap());
        assert_eq!(material.crls(&bad).unwrap().len(), 1, "read as a CRL block");
        let e = material.usable_crls(&bad).unwrap_err();
        assert_eq!(e.path, bad);
        assert!(e.message.starts_with("unusable CRL"), "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
