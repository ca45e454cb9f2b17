//! Certificates the way Istio issues them: a shared root, a per-mesh intermediate CA written in
//! Istio's `cacerts` layout, and SPIFFE workload leaves written in the file-mounted layout
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`).
//!
//! Behind `meshgate pki` and behind every test: nothing in meshgate's tests is a checked-in key.

#![forbid(unsafe_code)]

mod inspect;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
pub use time::{Duration, OffsetDateTime};

pub use inspect::{inspect, CertSummary};
use meshgate_spiffe::TrustDomain;
use rustls::pki_types::pem::PemObject;

/// What went wrong making, reading or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate or key generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A SAN value is not valid IA5 text.
    #[error("SAN `{0}` is not ASCII")]
    San(String),
}

/// Key type of a generated certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256, what istio-agent asks for with `ECC_SIGNATURE_ALGORITHM=ECDSA`
    /// (and meshgate's default: smaller, and faster to handshake).
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256, istio-agent's default workload key.
    Rsa2048,
}

/// A certificate authority: a root or an intermediate, with its key.
pub struct Authority {
    /// This CA's certificate.
    pub cert_pem: String,
    /// This CA's private key (PKCS#8).
    pub key_pem: String,
    /// The intermediates from this CA up to, not including, the root (empty for a root).
    pub intermediates_pem: String,
    /// The root at the top of the chain.
    pub root_pem: String,
}

/// A workload certificate in Istio's file-mounted layout.
pub struct Workload {
    /// The leaf followed by its intermediates.
    pub chain_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
    /// The trust bundle.
    pub root_pem: String,
    /// The leaf alone, DER.
    pub leaf_der: Vec<u8>,
}

/// What a leaf certificate carries. `LeafSpec::spiffe` is what Istio issues; the fields are
/// public so that tests can make the certificates Istio never would (expired, two URIs, CA).
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Marks the leaf as a CA, which the X509-SVID spec forbids.
    pub ca: bool,
    pub key: KeyAlgorithm,
}

impl LeafSpec {
    /// An Istio workload leaf for `spiffe_id`: URI SAN only, empty subject, valid for 24 hours
    /// from five minutes ago (Istio back-dates for clock skew).
    pub fn spiffe(spiffe_id: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![spiffe_id.to_string()],
            dns: Vec::new(),
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::hours(24),
            ca: false,
            key: KeyAlgorithm::EcdsaP256,
        }
    }
}

impl Authority {
    /// A self-signed root CA, valid for ten years.
    pub fn root(common_name: &str, key: KeyAlgorithm) -> Result<Self, PkiError> {
        let key_pair = generate_key(key)?;
        let params = ca_params(common_name, "meshgate", BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key_pair)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            intermediates_pem: String::new(),
            root_pem: cert.pem(),
        })
    }

    /// A mesh CA for `trust_domain`, signed by this CA, valid for five years. Like Istio's
    /// plugged-in CAs it may sign leaves only (path length 0).
    pub fn intermediate(
        &self,
        trust_domain: &TrustDomain,
        key: KeyAlgorithm,
    ) -> Result<Self, PkiError> {
        let key_pair = generate_key(key)?;
        let mut params = ca_params(
            &format!("meshgate mesh CA {trust_domain}"),
            trust_domain.as_str(),
            BasicConstraints::Constrained(0),
        );
        params.not_after = OffsetDateTime::now_utc() + Duration::days(5 * 365);
        let cert = params.signed_by(&key_pair, &self.issuer()?)?;
        Ok(Self {
            intermediates_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            root_pem: self.root_pem.clone(),
        })
    }

    /// A leaf signed by this CA.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Workload, PkiError> {
        let key_pair = generate_key(spec.key)?;
        let mut params = CertificateParams::default();
        // Istio leaves have an empty subject; rcgen then marks the SAN extension critical, as
        // RFC 5280 requires.
        params.distinguished_name = DistinguishedName::new();
        params.serial_number = Some(serial()?);
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        for uri in &spec.uris {
            let ia5 = uri
                .as_str()
                .try_into()
                .map_err(|_| PkiError::San(uri.clone()))?;
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        for dns in &spec.dns {
            let ia5 = dns
                .as_str()
                .try_into()
                .map_err(|_| PkiError::San(dns.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        if spec.ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key_pair, &self.issuer()?)?;
        Ok(Workload {
            chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            key_pem: key_pair.serialize_pem(),
            root_pem: self.root_pem.clone(),
            leaf_der: cert.der().to_vec(),
        })
    }

    /// Writes a root as `root-cert.pem` and `root-key.pem` (mode 0600).
    pub fn write_root(&self, dir: &Path) -> Result<(), PkiError> {
        write(dir, "root-cert.pem", &self.cert_pem, false)?;
        write(dir, "root-key.pem", &self.key_pem, true)
    }

    /// Writes an intermediate in Istio's `cacerts` layout: `ca-cert.pem`, `ca-key.pem` (0600),
    /// `root-cert.pem`, and `cert-chain.pem` (the CA up to and including the root).
    pub fn write_cacerts(&self, dir: &Path) -> Result<(), PkiError> {
        write(dir, "ca-cert.pem", &self.cert_pem, false)?;
        write(dir, "ca-key.pem", &self.key_pem, true)?;
        write(dir, "root-cert.pem", &self.root_pem, false)?;
        write(
            dir,
            "cert-chain.pem",
            &format!("{}{}", self.intermediates_pem, self.root_pem),
            false,
        )
    }

    /// Reads a CA written by `write_cacerts` (an intermediate) or `write_root` (a root).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        if dir.join("ca-cert.pem").exists() {
            let chain = read(dir, "cert-chain.pem")?;
            let root_pem = read(dir, "root-cert.pem")?;
            // cert-chain.pem ends with the root; what comes before it are the intermediates.
            let intermediates_pem = chain.strip_suffix(&root_pem).unwrap_or(&chain).to_string();
            Ok(Self {
                cert_pem: read(dir, "ca-cert.pem")?,
                key_pem: read(dir, "ca-key.pem")?,
                intermediates_pem,
                root_pem,
            })
        } else {
            let cert_pem = read(dir, "root-cert.pem")?;
            Ok(Self {
                key_pem: read(dir, "root-key.pem")?,
                intermediates_pem: String::new(),
                root_pem: cert_pem.clone(),
                cert_pem,
            })
        }
    }

    /// The trust domain of a mesh CA made by `intermediate` (its subject's organization, as
    /// Istio names its CAs); `None` for a root, which serves every mesh.
    pub fn mesh_trust_domain(&self) -> Option<String> {
        if self.intermediates_pem.is_empty() {
            return None;
        }
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let organization = cert.subject().iter_organization().next()?;
        organization.as_str().ok().map(str::to_string)
    }

    /// A CRL signed by this CA that revokes the leaves given (DER), valid from an hour ago
    /// until `next_update`, in PEM: as Istio's plugged-in CA distributes `ca-crl.pem`.
    pub fn crl(&self, revoked: &[&[u8]], next_update: OffsetDateTime) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for der in revoked {
            let (_, cert) =
                x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Invalid {
                    path: PathBuf::from("<revoked leaf>"),
                    message: e.to_string(),
                })?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: now - Duration::minutes(30),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?)?.pem()?)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }
}

impl Workload {
    /// Writes `cert-chain.pem`, `key.pem` (0600) and `root-cert.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        write(dir, "cert-chain.pem", &self.chain_pem, false)?;
        write(dir, "key.pem", &self.key_pem, true)?;
        write(dir, "root-cert.pem", &self.root_pem, false)
    }
}

fn ca_params(
    common_name: &str,
    organization: &str,
    constraints: BasicConstraints,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(10 * 365);
    params.use_authority_key_identifier_extension = true;
    if let Ok(serial) = serial() {
        params.serial_number = Some(serial);
    }
    params
}

fn generate_key(key: KeyAlgorithm) -> Result<KeyPair, PkiError> {
    Ok(match key {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        }
    })
}

/// A random positive 128-bit serial, as RFC 5280 recommends.
fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| PkiError::Generate(rcgen::Error::RingUnspecified))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<(), PkiError> {
    let path = dir.join(name);
    let io = |source| PkiError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    // Write a sibling and rename it into place, so that a watcher never reads half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)
}

fn read(dir: &Path, name: &str) -> Result<String, PkiError> {
    let path = dir.join(name);
    fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meshgate-pki-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn cacerts_layout_round_trips_and_issues_chained_leaves() {
        let dir = temp("cacerts");
        let root = Authority::root("r", KeyAlgorithm::EcdsaP256).unwrap();
        let td = TrustDomain::new("example.com").unwrap();
        root.intermediate(&td, KeyAlgorithm::EcdsaP256)
            .unwrap()
            .write_cacerts(&dir)
            .unwrap();
        let loaded = Authority::load(&dir).unwrap();
        assert_eq!(loaded.root_pem, root.cert_pem);
        let leaf = loaded
            .issue(&LeafSpec::spiffe("spiffe://example.com/ns/a/sa/b"))
            .unwrap();
        // Leaf, then the intermediate; the root travels separately.
        assert_eq!(leaf.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let mode = |f: &str| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode("ca-key.pem"), 0o600);
        assert_eq!(mode("ca-cert.pem"), 0o644);
        let chain = fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
        assert!(
            chain.ends_with(&root.cert_pem),
            "cert-chain.pem ends with the root"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rsa_and_ecdsa_leaves_are_istio_shaped() {
        let dir = temp("leaf");
        let root = Authority::root("r", KeyAlgorithm::Rsa2048).unwrap();
        let ca = root
            .intermediate(
                &TrustDomain::new("example.com").unwrap(),
                KeyAlgorithm::Rsa2048,
            )
            .unwrap();
        for (key, want) in [
            (KeyAlgorithm::Rsa2048, "RSA (2048 bits)"),
            (KeyAlgorithm::EcdsaP256, "ECDSA (256 bits)"),
        ] {
            let mut spec = LeafSpec::spiffe("spiffe://example.com/ns/default/sa/sleep");
            spec.key = key;
            ca.issue(&spec).unwrap().write(&dir).unwrap();
            let certs = inspect(&dir.join("cert-chain.pem")).unwrap();
            let leaf = &certs[0];
            assert_eq!(leaf.key_type, want);
            assert_eq!(leaf.subject, "", "Istio leaves have an empty subject");
            assert!(!leaf.is_ca);
            assert_eq!(
                leaf.spiffe_id.as_ref().map(|i| i.as_str()),
                Some("spiffe://example.com/ns/default/sa/sleep")
            );
            assert_eq!(certs[1].spki_sha256.len(), 64);
            // The SAN is critical when the subject is empty (RFC 5280 4.2.1.6).
            let der = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("cert-chain.pem"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            let san = cert.subject_alternative_name().unwrap().unwrap();
            assert!(san.critical);
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
