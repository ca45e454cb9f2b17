//! X509-SVID: a certificate's SPIFFE identity, by the X509-SVID specification — exactly one
//! URI SAN, a valid SPIFFE ID, and a leaf that is not a CA (no CA basic constraint, no
//! keyCertSign or cRLSign). And the two hashes meshgate shows of certificates.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::{SpiffeId, SpiffeIdError};

/// Why a leaf is not an X509-SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// No URI SAN.
    #[error("leaf has no URI SAN")]
    NoUriSan,
    /// More than one URI SAN: an X509-SVID has exactly one.
    #[error("leaf has {0} URI SANs; an X509-SVID has exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(#[source] SpiffeIdError),
    /// A CA certificate, or one that may sign certificates or CRLs.
    #[error("leaf is a CA certificate")]
    CaLeaf,
}

/// The SPIFFE ID of an X509-SVID leaf.
pub fn spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    if cert.is_ca() {
        return Err(SvidError::CaLeaf);
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err(SvidError::CaLeaf);
        }
    }
    let names = SanNames::of(cert);
    match names.uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [one] => SpiffeId::parse(one).map_err(SvidError::InvalidSpiffeId),
        many => Err(SvidError::MultipleUriSans(many.len())),
    }
}

/// The URI and DNS names of a certificate's subjectAltName.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SanNames {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

impl SanNames {
    /// The names of `cert` (none when it has no readable subjectAltName).
    pub fn of(cert: &X509Certificate<'_>) -> Self {
        let mut names = Self::default();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => names.uris.push(u.to_string()),
                    GeneralName::DNSName(d) => names.dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
        names
    }
}

/// Lowercase hex SHA-256: of a certificate's DER (Envoy's XFCC `Hash=`), or of a
/// SubjectPublicKeyInfo (issuer binding's `spkiSha256`).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_the_empty_string() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
