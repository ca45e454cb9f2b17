//! Client-certificate verification: rustls' WebPKI verifier (chain to the bundle, validity,
//! clientAuth usage), then the X509-SVID checks and the trust-domain allow-list.
//!
//! A failure of our own checks travels as `CertificateError::Other` holding the `PeerError`,
//! so the client gets a TLS alert and the reason survives to the log and the metric.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use meshgate_config::model::{ClientCertChecks, TrustSettings};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::credentials::{Revocation, TrustRoots};
use super::verified::{ChainKey, VerifiedChains};
use crate::identity::{peer_identity, sha256_hex, PeerError, PeerIdentity};

/// WebPKI plus SPIFFE.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    /// Against `rootCerts`: for peers whose trust domain has no bundle of its own.
    default: Bundle,
    /// Its verifier (`rootCerts` is never empty): root hints and signatures.
    inner: Arc<dyn ClientCertVerifier>,
    /// Trust domain -> the verifier of its own bundle, sorted by trust domain.
    domains: Vec<(String, Bundle)>,
    trust: TrustSettings,
    /// Issuer binding (none when `spec.trust.issuers` is empty).
    binding: IssuerBinding,
    /// Chains that verified, with the path found: sidecars reconnect with the same chain.
    verified: VerifiedChains,
}

/// One bundle's roots and rustls' verifier over them; no verifier while there are no roots
/// (a bundle endpoint not fetched yet).
#[derive(Debug)]
struct Bundle {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    roots: Arc<RootCertStore>,
}

impl Bundle {
    fn new(
        roots: &Arc<RootCertStore>,
        provider: &Arc<CryptoProvider>,
        revocation: &Revocation,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let verifier = if roots.is_empty() {
            None
        } else {
            Some(Self::verifier(roots, provider, revocation)?)
        };
        Ok(Self {
            verifier,
            roots: roots.clone(),
        })
    }

    fn verifier(
        roots: &Arc<RootCertStore>,
        provider: &Arc<CryptoProvider>,
        revocation: &Revocation,
    ) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        if !revocation.crls.is_empty() {
            builder = builder
                .with_crls(revocation.crls.iter().cloned())
                .allow_unknown_revocation_status();
            if revocation.deny_expired {
                builder = builder.enforce_revocation_expiration();
            }
        }
        builder.build()
    }
}

impl SpiffeClientVerifier {
    /// A verifier for `roots` that admits the trust domains `trust` allows.
    /// `issuers` are the resolved `spec.trust.issuers`: SPKI SHA-256 and trust domains.
    /// `revocation`'s CRLs refuse a revoked leaf or intermediate (`revoked`); a CA they do not
    /// cover (another mesh's) is not refused for that.
    pub fn new(
        roots: &TrustRoots,
        trust: TrustSettings,
        issuers: Vec<(String, Vec<String>)>,
        provider: Arc<CryptoProvider>,
        revocation: &Revocation,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let inner = Bundle::verifier(&roots.default, &provider, revocation)?;
        let default = Bundle {
            verifier: Some(inner.clone()),
            roots: roots.default.clone(),
        };
        let domains = roots
            .domains
            .iter()
            .map(|(td, r)| Ok((td.clone(), Bundle::new(r, &provider, revocation)?)))
            .collect::<Result<Vec<_>, rustls::server::VerifierBuilderError>>()?;
        Ok(Self {
            default,
            inner,
            domains,
            trust,
            binding: IssuerBinding::new(issuers, provider, revocation),
            verified: VerifiedChains::new(&revocation.crls, revocation.deny_expired),
        })
    }
}

/// Issuer binding: which CA may issue which trust domains, and what it takes to find the CAs
/// on a verified path (the signature algorithms, the CRLs).
#[derive(Debug)]
struct IssuerBinding {
    /// SPKI SHA-256 (hex) of a CA and the trust domains it may issue.
    issuers: Vec<(String, Vec<String>)>,
    provider: Arc<CryptoProvider>,
    /// The CRLs, parsed, for the path verified here.
    crls: Vec<webpki::CertRevocationList<'static>>,
    deny_expired_crl: bool,
}

impl IssuerBinding {
    fn new(
        issuers: Vec<(String, Vec<String>)>,
        provider: Arc<CryptoProvider>,
        revocation: &Revocation,
    ) -> Self {
        let crls = revocation
            .crls
            .iter()
            .filter_map(|der| webpki::OwnedCertRevocationList::from_der(der).ok())
            .map(webpki::CertRevocationList::from)
            .collect();
        Self {
            issuers,
            provider,
            crls,
            deny_expired_crl: revocation.deny_expired,
        }
    }

    fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies the chain for `usage` and returns the SPKI SHA-256 of the CAs on the verified
    /// path, nearest first: the issuer, the CAs above it, the trust anchor.
    fn verified_path(
        &self,
        roots: &RootCertStore,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<Vec<String>, rustls::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| reject(PeerError::InvalidCertificate(format!("{e:?}"))))?;
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crls).ok().map(|b| {
            b.with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .with_expiration_policy(if self.deny_expired_crl {
                    webpki::ExpirationPolicy::Enforce
                } else {
                    webpki::ExpirationPolicy::Ignore
                })
                .build()
        });
        let path = ee
            .verify_for_usage(
                self.provider.signature_verification_algorithms.all,
                &roots.roots,
                intermediates,
                now,
                usage,
                revocation,
                None,
            )
            .map_err(|e| reject(path_error(e)))?;
        let mut up = vec![sha256_hex(path.issuer_spki().as_ref())];
        up.extend(
            path.intermediate_certificates()
                .map(|c| sha256_hex(c.subject_public_key_info().as_ref())),
        );
        up.push(sha256_hex(webpki::spki_for_anchor(path.anchor()).as_ref()));
        Ok(up)
    }

    /// Issuer binding: the nearest listed CA on the verified path (the issuer, then the CAs
    /// above it, then the trust anchor, so that a per-mesh root in `meshConfig.caCertificates`
    /// binds every leaf under it) must be bound to the leaf's trust domain.
    fn check_issuer(&self, path: &[String], td: &str) -> Result<(), rustls::Error> {
        let bound = path
            .iter()
            .find_map(|spki| self.issuers.iter().find(|(hash, _)| hash == spki));
        match bound {
            None => Err(reject(PeerError::IssuerNotAllowed(format!(
                "issuing CA (SPKI SHA-256 {}) is not in spec.trust.issuers",
                path.first().map_or("", String::as_str)
            )))),
            Some((spki, tds)) if !tds.iter().any(|t| t == td) => {
                Err(reject(PeerError::IssuerNotAllowed(format!(
                    "issuing CA (SPKI SHA-256 {spki}) may not issue trust domain `{td}`"
                ))))
            }
            Some(_) => Ok(()),
        }
    }
}

/// How long ago a certificate expired, for the log.
fn expired(time: UnixTime, not_after: UnixTime) -> String {
    let ago = time.as_secs().saturating_sub(not_after.as_secs());
    format!("{} ago", crate::identity::span(ago))
}

/// How long until a certificate becomes valid, for the log.
fn not_yet(time: UnixTime, not_before: UnixTime) -> String {
    let until = not_before.as_secs().saturating_sub(time.as_secs());
    format!("valid in {}", crate::identity::span(until))
}

/// What a chain that leads to no root sent, and the roots it was tried against: the issuer of
/// the topmost certificate sent, and the roots' SPKI SHA-256 (16 hex digits each).
fn unknown_issuer(
    roots: &RootCertStore,
    bundle: Option<&str>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> String {
    let top = intermediates.last().unwrap_or(end_entity);
    let issuer = x509_parser::parse_x509_certificate(top)
        .map(|(_, c)| c.issuer().to_string())
        .unwrap_or_else(|_| "unparsable".into());
    let tried: Vec<String> = roots
        .roots
        .iter()
        .map(|a| {
            let mut h = sha256_hex(a.subject_public_key_info.as_ref());
            h.truncate(16);
            h
        })
        .collect();
    let bundle = match bundle {
        Some(td) => format!("the bundle of trust domain `{td}`"),
        None => "the bundle".to_string(),
    };
    format!(
        "the topmost certificate sent is issued by `{issuer}`, which is none of the {} root(s) \
         of {bundle} (SPKI SHA-256 {})",
        tried.len(),
        tried.join(", ")
    )
}

/// What a webpki path failure means for the peer, as rustls maps the same errors.
fn path_error(e: webpki::Error) -> PeerError {
    match e {
        webpki::Error::UnknownIssuer => PeerError::UnknownIssuer(String::new()),
        webpki::Error::CertExpired { time, not_after } => {
            PeerError::Expired(expired(time, not_after))
        }
        webpki::Error::CertNotValidYet { time, not_before } => {
            PeerError::NotYetValid(not_yet(time, not_before))
        }
        webpki::Error::CaUsedAsEndEntity => PeerError::CaLeaf,
        webpki::Error::CertRevoked => PeerError::Revoked,
        webpki::Error::CrlExpired { .. } => PeerError::CrlExpired,
        other => PeerError::InvalidCertificate(format!("{other:?}")),
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The bundle: the one of the trust domain the leaf names, if it has its own. The name is
        // read before the chain is verified only to choose the roots; it is trusted after.
        let named = (!self.domains.is_empty())
            .then(|| peer_identity(end_entity).ok())
            .flatten();
        let own = named.as_ref().and_then(|p| {
            let td = p.spiffe_id.trust_domain();
            self.domains
                .binary_search_by(|(d, _)| d.as_str().cmp(td))
                .ok()
                .and_then(|i| self.domains.get(i))
        });
        let (bundle_name, bundle) = match own {
            Some((td, b)) => (Some(td.as_str()), b),
            None => (None, &self.default),
        };
        // With issuer binding the path is needed: verify it once, here, instead of in rustls'
        // verifier too.
        let Some(verifier) = &bundle.verifier else {
            return Err(reject(PeerError::UnknownIssuer(format!(
                "the bundle of trust domain `{}` has no roots yet (its bundle endpoint has not \
                 answered)",
                bundle_name.unwrap_or("")
            ))));
        };
        let key = ChainKey::of(end_entity, intermediates);
        let kept = self.verified.get(&key, now);
        let fresh;
        let path = match kept.as_ref().and_then(|g| g.as_ref()) {
            Some(verified) => verified.path.as_deref(),
            None => {
                let verified = if self.binding.is_empty() {
                    verifier
                        .verify_client_cert(end_entity, intermediates, now)
                        .map(|_| None)
                } else {
                    let usage = webpki::KeyUsage::client_auth();
                    self.binding
                        .verified_path(&bundle.roots, end_entity, intermediates, now, usage)
                        .map(Some)
                };
                let path = verified.map_err(|e| match rustls_peer_error(&e) {
                    // Said in full: what was sent, and the roots it was tried against.
                    PeerError::UnknownIssuer(_) => reject(PeerError::UnknownIssuer(
                        unknown_issuer(&bundle.roots, bundle_name, end_entity, intermediates),
                    )),
                    _ => e,
                })?;
                self.verified
                    .insert(key, end_entity, intermediates, now, path.clone());
                fresh = path;
                fresh.as_deref()
            }
        };
        let peer = match named {
            Some(peer) => peer,
            None => peer_identity(end_entity).map_err(reject)?,
        };
        let td = peer.spiffe_id.trust_domain();
        if !self.trust.admits(td) {
            let allowed: Vec<&str> = self
                .trust
                .allowed_trust_domains
                .iter()
                .flatten()
                .map(|t| t.as_str())
                .collect();
            return Err(reject(PeerError::TrustDomainNotAllowed(
                td.to_string(),
                allowed.join(", "),
            )));
        }
        if let Some(path) = path {
            self.binding.check_issuer(path, td)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client verifier that refuses a chain of more than `most` certificates (leaf included)
/// before any signature is checked (path building over many fake CAs costs many times a
/// normal handshake's CPU, and an Istio chain has two or three), then has `inner` verify it,
/// then applies the server's `checks` to the leaf (`check_client`).
#[derive(Debug)]
pub struct ChainLimit {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub most: usize,
    pub checks: ClientCertChecks,
}

impl ClientCertVerifier for ChainLimit {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let length = intermediates.len().saturating_add(1);
        if length > self.most {
            return Err(reject(PeerError::ChainTooLong(length)));
        }
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_client(&self.checks, end_entity).map_err(reject)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A Gateway server's `subjectAltNames`, `verifyCertificateSpki` and `verifyCertificateHash`,
/// once the chain has verified: the leaf must also carry one of the names and, when pins are
/// given, match one of them (Envoy's `DefaultCertValidator`: `fail_verify_san`, then
/// `fail_verify_cert_hash`). A resumed session was checked when it was made.
fn check_client(checks: &ClientCertChecks, leaf: &CertificateDer<'_>) -> Result<(), PeerError> {
    if checks.is_empty() {
        return Ok(());
    }
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| PeerError::InvalidCertificate(format!("unparsable leaf: {e}")))?;
    if !checks.subject_alt_names.is_empty() {
        let names = subject_alt_names(&cert);
        let allowed = names.iter().any(|name| {
            checks
                .subject_alt_names
                .iter()
                .any(|wanted| name.matches(wanted))
        });
        if !allowed {
            let shown: Vec<String> = names.iter().map(ToString::to_string).collect();
            return Err(PeerError::SanNotAllowed(format!(
                "it names {}; subjectAltNames: {}",
                if shown.is_empty() {
                    "nothing".to_string()
                } else {
                    shown.join(", ")
                },
                checks.subject_alt_names.join(", ")
            )));
        }
    }
    if !checks.cert_sha256.is_empty() || !checks.spki_sha256.is_empty() {
        let hash = sha256_hex(leaf);
        let spki = sha256_hex(cert.tbs_certificate.subject_pki.raw);
        if !checks.cert_sha256.contains(&hash) && !checks.spki_sha256.contains(&spki) {
            return Err(PeerError::NotPinned(format!(
                "certificate SHA-256 {hash}, SubjectPublicKeyInfo SHA-256 {spki}"
            )));
        }
    }
    Ok(())
}

/// One subjectAltName of a leaf, of the kinds Envoy matches `subjectAltNames` against.
#[derive(Debug, PartialEq)]
enum San<'a> {
    Dns(&'a str),
    Uri(&'a str),
    Email(&'a str),
    Ip(IpAddr),
}

impl San<'_> {
    /// Envoy's `StringSanMatcher` with an exact matcher: a DNS SAN by `dnsNameMatch` (no case;
    /// a `*.` SAN matches one more label, not an empty one nor two), the others as they are.
    fn matches(&self, wanted: &str) -> bool {
        match self {
            San::Dns(san) => {
                if san.eq_ignore_ascii_case(wanted) {
                    return true;
                }
                let Some(suffix) = san.strip_prefix('*') else {
                    return false;
                };
                if !suffix.starts_with('.') {
                    return false;
                }
                let Some(split) = wanted.len().checked_sub(suffix.len()) else {
                    return false;
                };
                match (wanted.get(..split), wanted.get(split..)) {
                    (Some(label), Some(rest)) => {
                        !label.is_empty()
                            && !label.contains('.')
                            && rest.eq_ignore_ascii_case(suffix)
                    }
                    _ => false,
                }
            }
            San::Uri(san) | San::Email(san) => *san == wanted,
            San::Ip(ip) => wanted.parse::<IpAddr>().is_ok_and(|w| w == *ip),
        }
    }
}

impl std::fmt::Display for San<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(n) => write!(f, "DNS:{n}"),
            San::Uri(n) => write!(f, "URI:{n}"),
            San::Email(n) => write!(f, "email:{n}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// The DNS, URI, email and IP address SANs of `cert`.
fn subject_alt_names<'a>(cert: &'a X509Certificate<'_>) -> Vec<San<'a>> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(n) => Some(San::Dns(n)),
            GeneralName::URI(n) => Some(San::Uri(n)),
            GeneralName::RFC822Name(n) => Some(San::Email(n)),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| San::Ip(IpAddr::from(b))),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| San::Ip(IpAddr::from(b))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn reject(e: PeerError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Recovers the `PeerError` from a handshake failure, by the error rustls reports.
pub fn peer_error(e: std::io::Error) -> PeerError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => rustls_peer_error(tls),
        None => PeerError::Io(e),
    }
}

/// What a verifier's (or rustls') error means for the peer.
pub fn rustls_peer_error(tls: &rustls::Error) -> PeerError {
    match tls {
        rustls::Error::NoCertificatesPresented => PeerError::NoCertificate,
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => PeerError::UnknownIssuer(String::new()),
            CertificateError::ExpiredContext { time, not_after } => {
                PeerError::Expired(expired(*time, *not_after))
            }
            CertificateError::Expired => PeerError::Expired(String::new()),
            CertificateError::NotValidYetContext { time, not_before } => {
                PeerError::NotYetValid(not_yet(*time, *not_before))
            }
            CertificateError::NotValidYet => PeerError::NotYetValid(String::new()),
            CertificateError::Revoked => PeerError::Revoked,
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => PeerError::CrlExpired,
            CertificateError::Other(OtherError(inner)) => {
                match (
                    inner.downcast_ref::<PeerError>(),
                    inner.downcast_ref::<webpki::Error>(),
                ) {
                    (Some(p), _) => copy(p),
                    // rustls passes webpki's refusal of a CA as the leaf on as it is.
                    (None, Some(webpki::Error::CaUsedAsEndEntity)) => PeerError::CaLeaf,
                    (None, _) => PeerError::InvalidCertificate(inner.to_string()),
                }
            }
            other => PeerError::InvalidCertificate(format!("{other:?}")),
        },
        other => PeerError::Tls(other.clone()),
    }
}

/// The verifier's errors, out of the `Arc` rustls keeps them in.
fn copy(e: &PeerError) -> PeerError {
    match e {
        PeerError::NoUriSan => PeerError::NoUriSan,
        PeerError::MultipleUriSans(n) => PeerError::MultipleUriSans(*n),
        PeerError::InvalidSpiffeId(s) => PeerError::InvalidSpiffeId(*s),
        PeerError::CaLeaf => PeerError::CaLeaf,
        PeerError::TrustDomainNotAllowed(td, allowed) => {
            PeerError::TrustDomainNotAllowed(td.clone(), allowed.clone())
        }
        PeerError::IssuerNotAllowed(why) => PeerError::IssuerNotAllowed(why.clone()),
        PeerError::UnknownIssuer(d) => PeerError::UnknownIssuer(d.clone()),
        PeerError::Expired(d) => PeerError::Expired(d.clone()),
        PeerError::NotYetValid(d) => PeerError::NotYetValid(d.clone()),
        PeerError::ChainTooLong(n) => PeerError::ChainTooLong(*n),
        PeerError::Revoked => PeerError::Revoked,
        PeerError::CrlExpired => PeerError::CrlExpired,
        PeerError::IdentityNotAllowed(d) => PeerError::IdentityNotAllowed(d.clone()),
        PeerError::SanNotAllowed(d) => PeerError::SanNotAllowed(d.clone()),
        PeerError::NotPinned(d) => PeerError::NotPinned(d.clone()),
        PeerError::InvalidCertificate(d) => PeerError::InvalidCertificate(d.clone()),
        other => PeerError::InvalidCertificate(other.to_string()),
    }
}

/// Server verification for TLS origination: the chain to the bundle always (the bundle of the
/// server's trust domain when it has its own); then either the SNI name (SIMPLE and MUTUAL
/// without `subjectAltNames`), one of `subjectAltNames` (URI or DNS SAN), or — ISTIO_MUTUAL
/// without them — any valid SPIFFE ID, as Istio accepts. An ISTIO_MUTUAL server is held to
/// issuer binding as clients are: under a shared root, another mesh's CA cannot mint the
/// identity of the server meshgate expects.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    /// Trust domain -> the verifier of its own bundle (none while it has no roots), sorted by
    /// trust domain.
    domains: Vec<(String, Option<Arc<rustls::client::WebPkiServerVerifier>>)>,
    /// The roots behind them, to say what a chain was tried against.
    roots: TrustRoots,
    subject_alt_names: Vec<String>,
    istio: bool,
    /// ISTIO_MUTUAL with `spec.trust.issuers`.
    binding: Option<IssuerBinding>,
}

impl SpiffeServerVerifier {
    /// `issuers` are the resolved `spec.trust.issuers`, applied to ISTIO_MUTUAL servers.
    pub fn new(
        roots: &TrustRoots,
        subject_alt_names: Vec<String>,
        istio: bool,
        issuers: &[(String, Vec<String>)],
        provider: Arc<CryptoProvider>,
        revocation: &Revocation,
    ) -> Result<Self, rustls::client::VerifierBuilderError> {
        let build = |roots: &Arc<RootCertStore>| {
            let mut builder = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            );
            if !revocation.crls.is_empty() {
                builder = builder
                    .with_crls(revocation.crls.iter().cloned())
                    .allow_unknown_revocation_status();
                if revocation.deny_expired {
                    builder = builder.enforce_revocation_expiration();
                }
            }
            builder.build()
        };
        let domains = roots
            .domains
            .iter()
            .map(|(td, r)| {
                let verifier = if r.is_empty() { None } else { Some(build(r)?) };
                Ok((td.clone(), verifier))
            })
            .collect::<Result<Vec<_>, rustls::client::VerifierBuilderError>>()?;
        let binding = (istio && !issuers.is_empty())
            .then(|| IssuerBinding::new(issuers.to_vec(), provider.clone(), revocation));
        Ok(Self {
            inner: build(&roots.default)?,
            domains,
            roots: roots.clone(),
            subject_alt_names,
            istio,
            binding,
        })
    }

    /// The verifier of the bundle the server's certificate names by its SPIFFE ID's trust
    /// domain, or the default one, with the trust domain when it has its own; and the identity
    /// read to choose it (trusted only once the chain verifies), so that it is parsed once.
    fn bundle_of(&self, end_entity: &CertificateDer<'_>) -> ChosenBundle<'_> {
        if self.domains.is_empty() {
            return (Some(&*self.inner), None, None);
        }
        let Ok(peer) = peer_identity(end_entity) else {
            return (Some(&*self.inner), None, None);
        };
        let td = peer.spiffe_id.trust_domain();
        let (verifier, bundle) = self
            .domains
            .binary_search_by(|(d, _)| d.as_str().cmp(td))
            .ok()
            .and_then(|i| self.domains.get(i))
            .map_or((Some(&*self.inner), None), |(td, v)| {
                (v.as_deref(), Some(td.as_str()))
            });
        (verifier, bundle, Some(peer))
    }
}

/// A server verifier's choice of bundle: its verifier (`None`: no roots yet), the trust domain
/// when it has a bundle of its own, and the identity the choice was made by.
type ChosenBundle<'a> = (
    Option<&'a rustls::client::WebPkiServerVerifier>,
    Option<&'a str>,
    Option<PeerIdentity>,
);

impl rustls::client::danger::ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let by_name = self.subject_alt_names.is_empty() && !self.istio;
        let (verifier, bundle, named) = self.bundle_of(end_entity);
        // What the server presented, said with every refusal: its SANs, as the expected names
        // are written.
        let presented = || {
            let names = san_names(end_entity);
            if names.is_empty() {
                "no SAN".to_string()
            } else {
                names.join(", ")
            }
        };
        let Some(verifier) = verifier else {
            return Err(reject(presented_by(
                PeerError::UnknownIssuer(format!(
                    "the bundle of trust domain `{}` has no roots yet (its bundle endpoint has \
                     not answered)",
                    bundle.unwrap_or("")
                )),
                &presented(),
            )));
        };
        match verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) if by_name => return Ok(v),
            Ok(_) => {}
            // The chain verified; only the name did not, and the name is not what we check.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !by_name => {}
            Err(e) => {
                let roots = bundle
                    .and_then(|td| self.roots.of_domain(td))
                    .unwrap_or(&self.roots.default);
                let wrong_name = matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                            | CertificateError::NotValidForNameContext { .. }
                    )
                );
                let e = match rustls_peer_error(&e) {
                    PeerError::UnknownIssuer(_) => PeerError::UnknownIssuer(unknown_issuer(
                        roots,
                        bundle,
                        end_entity,
                        intermediates,
                    )),
                    _ if wrong_name => PeerError::IdentityNotAllowed(format!(
                        "not valid for the name `{}`",
                        server_name.to_str()
                    )),
                    other => other,
                };
                return Err(reject(presented_by(e, &presented())));
            }
        }
        if let Some(binding) = &self.binding {
            // The chain verified; find the CAs on its path (a second verification, once per
            // upstream connection) and hold the server's trust domain to them.
            let roots = bundle
                .and_then(|td| self.roots.of_domain(td))
                .unwrap_or(&self.roots.default);
            let usage = webpki::KeyUsage::server_auth();
            let path = binding
                .verified_path(roots, end_entity, intermediates, now, usage)
                .map_err(|e| reject(presented_by(rustls_peer_error(&e), &presented())))?;
            let peer = match &named {
                Some(peer) => peer.spiffe_id.trust_domain().to_string(),
                None => peer_identity(end_entity)
                    .map_err(|e| {
                        reject(PeerError::IdentityNotAllowed(format!(
                            "not an X509-SVID ({e}); the server presented {}",
                            presented()
                        )))
                    })?
                    .spiffe_id
                    .trust_domain()
                    .to_string(),
            };
            binding
                .check_issuer(&path, &peer)
                .map_err(|e| reject(presented_by(rustls_peer_error(&e), &presented())))?;
        }
        if self.subject_alt_names.is_empty() {
            // ISTIO_MUTUAL: any workload of a mesh under the bundle.
            if named.is_none() {
                peer_identity(end_entity).map_err(|e| {
                    reject(PeerError::IdentityNotAllowed(format!(
                        "not an X509-SVID ({e}); the server presented {}",
                        presented()
                    )))
                })?;
            }
        } else {
            let names = san_names(end_entity);
            if !names.iter().any(|n| self.subject_alt_names.contains(n)) {
                return Err(reject(PeerError::IdentityNotAllowed(format!(
                    "the server presented {}, expected one of {} (subjectAltNames)",
                    presented(),
                    self.subject_alt_names.join(", ")
                ))));
            }
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// DestinationRule `insecureSkipVerify`: any server certificate is accepted, as Envoy without a
/// validation context accepts it. The handshake signature is still checked, so the server
/// proves it holds the key of the certificate it presented.
#[derive(Debug)]
pub struct UnverifiedServer {
    provider: Arc<CryptoProvider>,
}

impl UnverifiedServer {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl rustls::client::danger::ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `e` with what the server presented added to its detail.
fn presented_by(e: PeerError, presented: &str) -> PeerError {
    let add = |d: String| {
        if d.is_empty() {
            format!("the server presented {presented}")
        } else {
            format!("{d}; the server presented {presented}")
        }
    };
    match e {
        PeerError::UnknownIssuer(d) => PeerError::UnknownIssuer(add(d)),
        PeerError::Expired(d) => PeerError::Expired(add(d)),
        PeerError::NotYetValid(d) => PeerError::NotYetValid(add(d)),
        PeerError::InvalidCertificate(d) => PeerError::InvalidCertificate(add(d)),
        PeerError::IdentityNotAllowed(d) => PeerError::IdentityNotAllowed(add(d)),
        other => other,
    }
}

/// The URI and DNS SANs of a certificate.
fn san_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(cert) else {
        return Vec::new();
    };
    let names = meshgate_spiffe::svid::SanNames::of(&cert);
    names.uris.into_iter().chain(names.dns).collect()
}

#[cfg(test)]
mod san_tests {
    use super::San;

    /// Envoy's `dnsNameMatch` for a DNS SAN, exact comparison for the other kinds.
    #[test]
    fn subject_alt_names_match_as_envoy_matches_them() {
        let dns = San::Dns("*.Example.org");
        assert!(dns.matches("a.example.ORG"));
        assert!(dns.matches("*.example.org"));
        assert!(!dns.matches("a.b.example.org"), "one label only");
        assert!(!dns.matches(".example.org"), "not an empty label");
        assert!(!dns.matches("example.org"));
        assert!(!dns.matches("aexample.org"));
        assert!(San::Dns("api.example.org").matches("API.example.org"));
        assert!(!San::Dns("a*.example.org").matches("ab.example.org"));
        assert!(!San::Dns("api.example.org").matches("*.example.org"));
        let uri = San::Uri("spiffe://example.com/ns/a/sa/b");
        assert!(uri.matches("spiffe://example.com/ns/a/sa/b"));
        assert!(!uri.matches("spiffe://EXAMPLE.com/ns/a/sa/b"));
        assert!(San::Email("ops@example.org").matches("ops@example.org"));
        let ip = San::Ip("2001:db8::1".parse().unwrap());
        assert!(ip.matches("2001:db8:0::1"));
        assert!(!ip.matches("2001:db8::2"));
        assert!(!ip.matches("not an address"));
    }
}

#[cfg(test)]
mod tests {
    //! The verdicts kept for chains verified before: the checks that depend on the time, the
    //! CRLs and the configuration still decide on every handshake.

    use meshgate_config::model::TrustSettings;
    use meshgate_pki::{Authority, Duration, KeyAlgorithm, LeafSpec, OffsetDateTime};
    use meshgate_spiffe::TrustDomain;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
    use rustls::server::danger::ClientCertVerifier;
    use rustls::RootCertStore;

    use super::{SpiffeClientVerifier, SpiffeServerVerifier};
    use crate::identity::PeerError;
    use crate::tls::credentials::{Revocation, TrustRoots};

    const SLEEP: &str = "spiffe://example.com/ns/default/sa/sleep";

    struct Mesh {
        root: Authority,
        ca: Authority,
    }

    impl Mesh {
        fn new(root: &str) -> Self {
            let root = Authority::root(root, KeyAlgorithm::EcdsaP256).unwrap();
            let td = TrustDomain::new("example.com").unwrap();
            let ca = root.intermediate(&td, KeyAlgorithm::EcdsaP256).unwrap();
            Self { root, ca }
        }

        /// `spiffe_id`'s chain (leaf, intermediate), valid from `from` until `until`.
        fn chain(
            &self,
            spiffe_id: &str,
            from: OffsetDateTime,
            until: OffsetDateTime,
        ) -> Vec<CertificateDer<'static>> {
            let spec = LeafSpec {
                not_before: from,
                not_after: until,
                ..LeafSpec::spiffe(spiffe_id)
            };
            let leaf = self.ca.issue(&spec).unwrap();
            CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap()
        }

        fn verifier(
            &self,
            allowed: Option<&[&str]>,
            issuers: Vec<(String, Vec<String>)>,
            revocation: &Revocation,
        ) -> SpiffeClientVerifier {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(self.root.cert_pem.as_bytes()).unwrap())
                .unwrap();
            let trust = TrustSettings {
                trust_domain: TrustDomain::new("example-target.com").unwrap(),
                aliases: Vec::new(),
                cluster_local_is_local: true,
                allowed_trust_domains: allowed
                    .map(|a| a.iter().map(|t| TrustDomain::new(t).unwrap()).collect()),
                issuers: Vec::new(),
                bundles: Vec::new(),
                ecdh_curves: None,
            };
            SpiffeClientVerifier::new(
                &TrustRoots::single(std::sync::Arc::new(roots)),
                trust,
                issuers,
                crate::tls::provider(None),
                revocation,
            )
            .unwrap()
        }

        /// The SPKI SHA-256 of the mesh CA, as `spec.trust.issuers` resolves it.
        fn ca_spki(&self) -> String {
            let der = CertificateDer::from_pem_slice(self.ca.cert_pem.as_bytes()).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            crate::identity::sha256_hex(cert.tbs_certificate.subject_pki.raw)
        }
    }

    fn at(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
    }

    fn verify(
        v: &SpiffeClientVerifier,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<(), PeerError> {
        v.verify_client_cert(&chain[0], &chain[1..], now)
            .map(|_| ())
            .map_err(|e| super::rustls_peer_error(&e))
    }

    fn reason(r: Result<(), PeerError>) -> &'static str {
        r.map_or_else(|e| e.reason(), |()| "ok")
    }

    #[test]
    fn a_chain_verified_before_is_taken_again_only_while_every_certificate_is_valid() {
        let mesh = Mesh::new("root");
        let now = OffsetDateTime::now_utc();
        let (from, until) = (now - Duration::minutes(5), now + Duration::hours(1));
        let chain = mesh.chain(SLEEP, from, until);
        let v = mesh.verifier(None, Vec::new(), &Revocation::default());
        assert_eq!(reason(verify(&v, &chain, at(now))), "ok");
        assert_eq!(v.verified.hits(), 0);
        assert_eq!(reason(verify(&v, &chain, at(now))), "ok");
        assert_eq!(v.verified.hits(), 1);
        // The leaf's last second still holds; after it, and before its first, webpki decides.
        assert_eq!(reason(verify(&v, &chain, at(until))), "ok");
        assert_eq!(v.verified.hits(), 2);
        let after = verify(&v, &chain, at(until + Duration::seconds(1)));
        assert_eq!(reason(after), "expired");
        let before = verify(&v, &chain, at(from - Duration::seconds(1)));
        assert_eq!(reason(before), "not_yet_valid");
        assert_eq!(v.verified.hits(), 2);
    }

    #[test]
    fn a_chain_that_failed_is_verified_again_every_time() {
        let mesh = Mesh::new("root");
        let other = Mesh::new("another root");
        let now = OffsetDateTime::now_utc();
        let forged = other.chain(SLEEP, now - Duration::minutes(5), now + Duration::hours(1));
        let v = mesh.verifier(None, Vec::new(), &Revocation::default());
        for _ in 0..2 {
            assert_eq!(reason(verify(&v, &forged, at(now))), "unknown_issuer");
        }
        assert_eq!(v.verified.hits(), 0);
        // A chain differing in one certificate is another chain: the other mesh's intermediate
        // after our leaf.
        let chain = mesh.chain(SLEEP, now - Duration::minutes(5), now + Duration::hours(1));
        assert_eq!(reason(verify(&v, &chain, at(now))), "ok");
        let spliced = [chain[0].clone(), forged[1].clone()];
        assert_eq!(reason(verify(&v, &spliced, at(now))), "unknown_issuer");
        assert_eq!(v.verified.hits(), 0);
    }

    #[test]
    fn the_allow_list_and_issuer_binding_decide_on_a_chain_verified_before() {
        let mesh = Mesh::new("root");
        let now = OffsetDateTime::now_utc();
        let chain = mesh.chain(SLEEP, now - Duration::minutes(5), now + Duration::hours(1));
        // Verified, then taken again: the decision is the same both times.
        let twice = |v: &SpiffeClientVerifier, expected: &str| {
            for _ in 0..2 {
                assert_eq!(reason(verify(v, &chain, at(now))), expected);
            }
            assert_eq!(v.verified.hits(), 1);
        };
        let none = Revocation::default();
        let allowed = mesh.verifier(Some(&["example-target.com"]), Vec::new(), &none);
        twice(&allowed, "trust_domain_not_allowed");
        let bound = vec![(mesh.ca_spki(), vec!["example-target.com".to_string()])];
        twice(&mesh.verifier(None, bound, &none), "issuer_not_allowed");
        let right = vec![(mesh.ca_spki(), vec!["example.com".to_string()])];
        twice(&mesh.verifier(None, right, &none), "ok");
    }

    /// An ISTIO_MUTUAL server is held to issuer binding as a client is; SIMPLE and MUTUAL
    /// servers, which need no SPIFFE identity, are not.
    #[test]
    fn issuer_binding_holds_istio_mutual_servers() {
        use rustls::client::danger::ServerCertVerifier;
        let mesh = Mesh::new("root");
        let now = OffsetDateTime::now_utc();
        let chain = mesh.chain(SLEEP, now - Duration::minutes(5), now + Duration::hours(1));
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(mesh.root.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let roots = TrustRoots::single(std::sync::Arc::new(roots));
        let name = rustls::pki_types::ServerName::try_from("outbound_.443_._.example.com").unwrap();
        let verify = |istio: bool, sans: &[&str], issuers: &[(String, Vec<String>)]| {
            let sans = sans.iter().map(|s| s.to_string()).collect();
            let provider = crate::tls::provider(None);
            let none = Revocation::default();
            let v =
                SpiffeServerVerifier::new(&roots, sans, istio, issuers, provider, &none).unwrap();
            v.verify_server_cert(&chain[0], &chain[1..], &name, &[], at(now))
                .map(|_| ())
                .map_err(|e| super::rustls_peer_error(&e))
        };
        let wrong = [(mesh.ca_spki(), vec!["example-target.com".to_string()])];
        let right = [(mesh.ca_spki(), vec!["example.com".to_string()])];
        let unlisted = [("00".repeat(32), vec!["example.com".to_string()])];
        assert_eq!(reason(verify(true, &[], &[])), "ok");
        assert_eq!(reason(verify(true, &[], &wrong)), "issuer_not_allowed");
        assert_eq!(reason(verify(true, &[SLEEP], &wrong)), "issuer_not_allowed");
        assert_eq!(reason(verify(true, &[], &unlisted)), "issuer_not_allowed");
        assert_eq!(reason(verify(true, &[SLEEP], &right)), "ok");
        assert_eq!(reason(verify(false, &[SLEEP], &wrong)), "ok");
    }

    #[test]
    fn a_chain_verified_before_fails_once_a_denied_crl_expires() {
        let mesh = Mesh::new("root");
        let now = OffsetDateTime::now_utc();
        let chain = mesh.chain(SLEEP, now - Duration::minutes(5), now + Duration::hours(2));
        let next_update = now + Duration::hours(1);
        let pem = mesh.ca.crl(&[], next_update).unwrap();
        let crl = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
        let revocation = Revocation {
            crls: vec![crl],
            deny_expired: true,
        };
        let v = mesh.verifier(None, Vec::new(), &revocation);
        assert_eq!(reason(verify(&v, &chain, at(now))), "ok");
        assert_eq!(reason(verify(&v, &chain, at(now))), "ok");
        assert_eq!(v.verified.hits(), 1);
        let expired = verify(&v, &chain, at(next_update));
        assert_eq!(reason(expired), "crl_expired");
        // Ignored expiry: the same chain is kept past the CRL's nextUpdate.
        let revocation = Revocation {
            deny_expired: false,
            ..revocation
        };
        let v = mesh.verifier(None, Vec::new(), &revocation);
        assert_eq!(reason(verify(&v, &chain, at(now))), "ok");
        assert_eq!(reason(verify(&v, &chain, at(next_update))), "ok");
        assert_eq!(v.verified.hits(), 1);
    }
}

#[cfg(test)]
mod unverified_tests {
    //! `insecureSkipVerify` skips the certificate, never the proof of its key.

    use std::sync::Arc;

    use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec, Workload};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

    use super::UnverifiedServer;

    #[derive(Debug)]
    struct Presents(Arc<CertifiedKey>);

    impl ResolvesServerCert for Presents {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// A handshake of an `UnverifiedServer` client with a server presenting `chain_of`'s
    /// certificate and signing with `key_of`'s key.
    fn handshake(chain_of: &Workload, key_of: &Workload) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_of.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_of.key_pem.as_bytes()).unwrap();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Presents(Arc::new(CertifiedKey::new(
                chain, signing,
            )))));
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UnverifiedServer::new(provider)))
            .with_no_client_auth();
        let name = ServerName::try_from("api.example.com").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut &wire[..]).unwrap();
            // The server's own failures are not what is tested.
            let _ = s.process_new_packets();
            wire.clear();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not end");
    }

    #[test]
    fn any_certificate_is_accepted_but_its_key_must_sign() {
        let ca = Authority::root("unknown CA", KeyAlgorithm::EcdsaP256).unwrap();
        let leaf = || {
            let mut spec = LeafSpec::spiffe("spiffe://unused");
            spec.uris.clear();
            spec.dns = vec!["elsewhere.example.org".into()];
            ca.issue(&spec).unwrap()
        };
        let (a, b) = (leaf(), leaf());
        // A CA nobody trusts, a name that is not the SNI: accepted.
        handshake(&a, &a).unwrap();
        // A certificate without its key: refused.
        let e = handshake(&a, &b).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
                    | rustls::Error::PeerMisbehaved(_)
            ),
            "{e:?}"
        );
    }
}
