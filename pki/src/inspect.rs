//! `meshgate pki inspect`: what a PEM file's certificates say, for operators pasting values
//! (SPIFFE ID, SPKI SHA-256) into the config.

use std::fmt;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;
use meshgate_spiffe::svid::SanNames;
use meshgate_spiffe::{sha256_hex, SpiffeId};

/// One certificate, summarised.
#[derive(Debug, Clone)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub is_ca: bool,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    /// The SPIFFE ID, if there is exactly one URI SAN and it is valid.
    pub spiffe_id: Option<SpiffeId>,
    pub key_type: String,
    /// SHA-256 of the SubjectPublicKeyInfo, hex: what issuer binding pins.
    pub spki_sha256: String,
    /// SHA-256 of the whole certificate, hex.
    pub cert_sha256: String,
}

/// Summarises every certificate in a PEM file, in file order.
pub fn inspect(path: &Path) -> Result<Vec<CertSummary>, PkiError> {
    let bytes = std::fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |message: String| PkiError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut out = Vec::new();
    for der in CertificateDer::pem_slice_iter(&bytes) {
        let der = der.map_err(|e| invalid(format!("bad PEM: {e}")))?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| invalid(format!("bad certificate: {e}")))?;
        out.push(summarise(&der, &cert));
    }
    if out.is_empty() {
        return Err(invalid("no CERTIFICATE block".into()));
    }
    Ok(out)
}

fn summarise(der: &[u8], cert: &X509Certificate<'_>) -> CertSummary {
    let SanNames { uris, dns } = SanNames::of(cert);
    let spiffe_id = match uris.as_slice() {
        [one] => SpiffeId::parse(one).ok(),
        _ => None,
    };
    let key_type = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => format!("ECDSA ({} bits)", ec.key_size()),
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            format!("RSA ({} bits)", rsa.key_size())
        }
        Ok(_) => "other".to_string(),
        Err(_) => "unparsable".to_string(),
    };
    CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        is_ca: cert.is_ca(),
        uris,
        dns,
        spiffe_id,
        key_type,
        spki_sha256: sha256_hex(cert.public_key().raw),
        cert_sha256: sha256_hex(der),
    }
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let empty = |s: &str| {
            if s.is_empty() {
                "(empty)".to_string()
            } else {
                s.to_string()
            }
        };
        writeln!(f, "subject:      {}", empty(&self.subject))?;
        writeln!(f, "issuer:       {}", empty(&self.issuer))?;
        writeln!(f, "serial:       {}", self.serial)?;
        writeln!(f, "validity:     {} .. {}", self.not_before, self.not_after)?;
        writeln!(f, "ca:           {}", self.is_ca)?;
        match &self.spiffe_id {
            Some(id) => {
                writeln!(f, "spiffe id:    {id}")?;
                writeln!(f, "trust domain: {}", id.trust_domain())?;
            }
            None if !self.uris.is_empty() => writeln!(
                f,
                "uri sans:     {} (not one valid SPIFFE ID)",
                self.uris.join(", ")
            )?,
            None => {}
        }
        if !self.dns.is_empty() {
            writeln!(f, "dns sans:     {}", self.dns.join(", "))?;
        }
        writeln!(f, "key:          {}", self.key_type)?;
        writeln!(f, "spki sha256:  {}", self.spki_sha256)?;
        write!(f, "cert sha256:  {}", self.cert_sha256)
    }
}
