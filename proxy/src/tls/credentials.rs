//! Our own identity, in Istio's file-mounted layout: `cert-chain.pem` (leaf first), `key.pem`
//! and `root-cert.pem` (the trust bundle, one or more roots).
//!
//! Refuses a chain whose leaf is not an X509-SVID, a chain with an expired certificate, a key
//! that does not match the leaf, and an empty or unparsable bundle, naming the file.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use meshgate_config::model::{
    BundleSource, Identity, IdentitySource, IssuerBinding, IssuerKey, TrustBundle,
};
use meshgate_config::spiffe::SpiffeId;

use crate::identity::{peer_identity, sha256_hex};
use crate::material::Material;
use crate::runtime::BuildError;

/// The workload certificate this proxy presents, and the bundle it trusts.
#[derive(Debug)]
pub struct Credentials {
    /// Chain and key, for rustls.
    pub certified_key: Arc<CertifiedKey>,
    /// The trust bundle (`rootCerts`), and the bundles of trust domains that have their own.
    pub roots: TrustRoots,
    /// Our SPIFFE ID (XFCC `By=`).
    pub spiffe_id: SpiffeId,
    /// What `/certs` shows: our chain and the bundle, summarised at load.
    pub summary: serde_json::Value,
    /// `identity.crl`: checked on the chains of ISTIO_MUTUAL clients and upstreams.
    pub revocation: Revocation,
    /// What the Workload API served, when the identity comes from it.
    pub svid: Option<Arc<crate::tls::workload_api::Svid>>,
}

/// The roots a peer is verified against: its trust domain's own bundle when it has one
/// (`spec.trust.bundles`, `meshConfig.caCertificates` with `trustDomains`), else the identity's
/// `rootCerts`. A peer is chosen a bundle by the trust domain of the SPIFFE ID it presents, and
/// is then verified against that bundle only, as Envoy's SPIFFE validator does: one trust
/// domain's CA cannot vouch for another's identities.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    /// `rootCerts`.
    pub default: Arc<RootCertStore>,
    /// Trust domain -> its roots (entries for one trust domain merged), sorted by name.
    pub domains: Vec<(String, Arc<RootCertStore>)>,
}

impl TrustRoots {
    /// One bundle for every peer.
    pub fn single(roots: Arc<RootCertStore>) -> Self {
        Self {
            default: roots,
            domains: Vec::new(),
        }
    }

    /// The bundle of `trust_domain`, if it has its own.
    pub fn of_domain(&self, trust_domain: &str) -> Option<&Arc<RootCertStore>> {
        self.domains
            .binary_search_by(|(td, _)| td.as_str().cmp(trust_domain))
            .ok()
            .and_then(|i| self.domains.get(i))
            .map(|(_, roots)| roots)
    }
}

/// The roots of every trust domain that has a bundle of its own, merged per trust domain, and
/// what `/certs` shows of them.
type DomainRoots = (Vec<(String, Arc<RootCertStore>)>, serde_json::Value);

fn domain_roots(
    bundles: &[TrustBundle],
    federated: &[(String, Vec<CertificateDer<'static>>)],
    material: &Material,
) -> Result<DomainRoots, BuildError> {
    let mut by_domain = std::collections::BTreeMap::<String, RootCertStore>::new();
    let mut summary = serde_json::Map::new();
    for b in bundles {
        let place = |b: &TrustBundle| match &b.source {
            BundleSource::File(path) => path.clone(),
            BundleSource::Pem(_) => {
                std::path::PathBuf::from(format!("meshConfig.caCertificates ({})", b.trust_domain))
            }
            BundleSource::Endpoint(e) => std::path::PathBuf::from(&e.url),
        };
        let certs = match &b.source {
            BundleSource::File(path) => material.certificates(path)?.to_vec(),
            // Nothing before the first fetch: the trust domain's peers are refused until then.
            BundleSource::Endpoint(e) => material.fetched(&e.url).to_vec(),
            BundleSource::Pem(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| identity_error(&place(b), format!("bad PEM: {e}")))?,
        };
        let described = summary
            .entry(b.trust_domain.to_string())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(list) = described {
            list.extend(certs.iter().map(|c| describe(c)));
        }
        let store = by_domain
            .entry(b.trust_domain.to_string())
            .or_insert_with(RootCertStore::empty);
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| identity_error(&place(b), format!("unusable root: {e}")))?;
        }
    }
    // The Workload API's federated bundles, beside (merged with) the configured ones.
    for (td, certs) in federated {
        let described = summary
            .entry(td.clone())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(list) = described {
            list.extend(certs.iter().map(|c| describe(c)));
        }
        let store = by_domain
            .entry(td.clone())
            .or_insert_with(RootCertStore::empty);
        for cert in certs {
            store.add(cert.clone()).map_err(|e| {
                BuildError::Tls(format!(
                    "Workload API: unusable root in the federated bundle of `{td}`: {e}"
                ))
            })?;
        }
    }
    let domains = by_domain
        .into_iter()
        .map(|(td, roots)| (td, Arc::new(roots)))
        .collect();
    Ok((domains, serde_json::Value::Object(summary)))
}

/// Certificate revocation lists and how strictly they are taken.
#[derive(Debug, Clone, Default)]
pub struct Revocation {
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// A CRL past its `nextUpdate` fails the chains it covers (`expiredCrl: DENY`).
    pub deny_expired: bool,
}

impl Credentials {
    /// Checks the identity (the three files or what the Workload API served), and the bundles
    /// of trust domains that have their own, as read into `material`.
    pub fn load(
        identity: &Identity,
        bundles: &[TrustBundle],
        material: &Material,
        provider: &CryptoProvider,
    ) -> Result<Self, BuildError> {
        let source = Source::of(identity, material)?;
        let chain = source.chain;
        let certified_key =
            CertifiedKey::from_der(chain.clone(), source.key, provider).map_err(|e| {
                identity_error(
                    &source.key_place,
                    format!(
                        "does not match the leaf of {}: {e}",
                        source.chain_place.display()
                    ),
                )
            })?;
        let leaf = chain
            .first()
            .ok_or_else(|| identity_error(&source.chain_place, "holds no CERTIFICATE".into()))?;
        let spiffe_id = peer_identity(leaf)
            .map_err(|e| {
                identity_error(
                    &source.chain_place,
                    format!("leaf is not an X509-SVID: {e}"),
                )
            })?
            .spiffe_id;
        let files = &source.chain_place;
        // Peers would refuse an expired chain: a rotation to one is refused instead, and the
        // identity in use keeps serving.
        for (i, der) in chain.iter().enumerate() {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
                let not_after = cert.validity().not_after;
                if not_after.timestamp() < now_unix() {
                    let which = if i == 0 {
                        "the leaf"
                    } else {
                        "an intermediate"
                    };
                    return Err(identity_error(
                        files,
                        format!(
                            "{which} expired at {}",
                            not_after.to_rfc2822().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        let mut roots = RootCertStore::empty();
        let root_ders = source.roots;
        for cert in root_ders.iter().cloned() {
            roots
                .add(cert)
                .map_err(|e| identity_error(&source.roots_place, format!("unusable root: {e}")))?;
        }
        let revocation = match &identity.crl {
            None => Revocation::default(),
            // Parsed now, so that a broken file is refused at load and the old one kept.
            Some(path) => Revocation {
                crls: material.usable_crls(path)?,
                deny_expired: identity.deny_expired_crl,
            },
        };
        let (domains, bundle_summary) = domain_roots(bundles, &source.federated, material)?;
        let (from, chain_from, roots_from) = match &identity.source {
            IdentitySource::Files { .. } => (
                "file",
                source.chain_place.display().to_string(),
                source.roots_place.display().to_string(),
            ),
            IdentitySource::WorkloadApi(_) => {
                let endpoint = material
                    .svid()
                    .map(|s| s.endpoint.clone())
                    .unwrap_or_default();
                ("workload_api", endpoint.clone(), endpoint)
            }
        };
        let summary = serde_json::json!({
            "spiffe_id": spiffe_id.as_str(),
            "cert_chain": { from: chain_from, "certificates": chain.iter().map(|c| describe(c)).collect::<Vec<_>>() },
            "root_certs": { from: roots_from, "certificates": root_ders.iter().map(|c| describe(c)).collect::<Vec<_>>() },
            "trust_domain_bundles": bundle_summary,
        });
        Ok(Self {
            certified_key: Arc::new(certified_key),
            roots: TrustRoots {
                default: Arc::new(roots),
                domains,
            },
            spiffe_id,
            summary,
            revocation,
            svid: match &identity.source {
                IdentitySource::WorkloadApi(_) => material.svid().cloned(),
                IdentitySource::Files { .. } => None,
            },
        })
    }
}

/// The chain, key and roots of an identity, and where each came from (for errors).
struct Source {
    chain: Vec<CertificateDer<'static>>,
    chain_place: std::path::PathBuf,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    key_place: std::path::PathBuf,
    roots: Vec<CertificateDer<'static>>,
    roots_place: std::path::PathBuf,
    federated: Vec<(String, Vec<CertificateDer<'static>>)>,
}

impl Source {
    fn of(identity: &Identity, material: &Material) -> Result<Self, BuildError> {
        Ok(match &identity.source {
            IdentitySource::Files {
                cert_chain,
                private_key,
                root_certs,
            } => Self {
                chain: material.certificates(cert_chain)?.to_vec(),
                chain_place: cert_chain.clone(),
                key: material.key(private_key)?,
                key_place: private_key.clone(),
                roots: material.certificates(root_certs)?.to_vec(),
                roots_place: root_certs.clone(),
                federated: Vec::new(),
            },
            IdentitySource::WorkloadApi(_) => {
                let svid = material.svid().ok_or_else(|| {
                    BuildError::Tls("no X509-SVID from the Workload API yet".into())
                })?;
                let place = std::path::PathBuf::from(format!("Workload API {}", svid.endpoint));
                Self {
                    chain: svid.chain.clone(),
                    chain_place: place.clone(),
                    key: svid.key(),
                    key_place: place.clone(),
                    roots: svid.bundle.clone(),
                    roots_place: place,
                    federated: svid.federated.clone(),
                }
            }
        })
    }
}

/// Resolves `spec.trust.issuers` to (SPKI SHA-256 hex, trust domains), from the certificate
/// files as read into `material`.
pub fn issuer_bindings(
    bindings: &[IssuerBinding],
    material: &Material,
) -> Result<Vec<(String, Vec<String>)>, BuildError> {
    bindings
        .iter()
        .map(|b| {
            let spki = match &b.issuer {
                IssuerKey::SpkiSha256(hex) => hex.clone(),
                IssuerKey::Certificate(path) => {
                    let der = material.leaf(path)?;
                    let (_, cert) = x509_parser::parse_x509_certificate(der)
                        .map_err(|e| identity_error(path, format!("bad certificate: {e}")))?;
                    sha256_hex(cert.public_key().raw)
                }
                IssuerKey::Pem(pem) => {
                    let place = std::path::Path::new("meshConfig.caCertificates");
                    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
                        .next()
                        .and_then(Result::ok)
                        .ok_or_else(|| {
                            identity_error(place, "holds no usable PEM CERTIFICATE".into())
                        })?;
                    let (_, cert) = x509_parser::parse_x509_certificate(&der)
                        .map_err(|e| identity_error(place, format!("bad certificate: {e}")))?;
                    sha256_hex(cert.public_key().raw)
                }
            };
            Ok((
                spki,
                b.trust_domains.iter().map(|t| t.to_string()).collect(),
            ))
        })
        .collect()
}

/// Subject, issuer, serial, validity and SPKI hash of a certificate, for `/certs`.
fn describe(der: &CertificateDer<'_>) -> serde_json::Value {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => serde_json::json!({
            "subject": cert.subject().to_string(),
            "issuer": cert.issuer().to_string(),
            "serial": cert.raw_serial_as_string(),
            "not_before": cert.validity().not_before.to_rfc2822().unwrap_or_default(),
            "not_after": cert.validity().not_after.to_rfc2822().unwrap_or_default(),
            "not_after_unix": cert.validity().not_after.timestamp(),
            "spki_sha256": sha256_hex(cert.public_key().raw),
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

/// Presents our one chain, whatever the SNI.
#[derive(Debug)]
pub struct OwnCertificate(pub Arc<CertifiedKey>);

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn identity_error(path: &Path, message: String) -> BuildError {
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
