//! Peer identity: the verified leaf certificate -> `PeerIdentity`.
//!
//! Receives the leaf that rustls has already chained to the trust bundle. Applies the X509-SVID
//! rules (exactly one URI SAN, a valid SPIFFE ID, not a CA) and keeps owned values — the SPIFFE
//! ID, the leaf's SHA-256 and its subject — so that nothing downstream re-parses DER. Refuses,
//! with a `PeerError` whose `reason()` feeds the log and the metric label, every leaf that
//! breaks a rule; such a peer never reaches HTTP.

use std::fmt::Write as _;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

pub use meshgate_spiffe::sha256_hex;
use meshgate_spiffe::svid::{self, SanNames, SvidError};
use meshgate_spiffe::{SpiffeId, SpiffeIdError};

/// The verified caller of a connection.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The one SPIFFE ID of the leaf.
    pub spiffe_id: SpiffeId,
    /// SHA-256 of the leaf's DER, lowercase hex (Envoy's XFCC `Hash=`).
    pub leaf_sha256: String,
    /// The leaf's subject in RFC 2253 form (empty for Istio leaves).
    pub subject: String,
    /// The leaf's DNS SANs (XFCC `DNS=`).
    pub dns: Vec<String>,
}

/// A client certificate verified against a `MUTUAL` server's CAs: no SPIFFE identity, only
/// what Envoy's XFCC says of it.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// SHA-256 of the leaf's DER, lowercase hex.
    pub leaf_sha256: String,
    /// The leaf's subject in RFC 2253 form.
    pub subject: String,
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
}

/// Reads what XFCC shows of a client certificate that already chains to a `MUTUAL` server's
/// CAs.
pub fn client_certificate(leaf: &CertificateDer<'_>) -> Result<ClientCertificate, PeerError> {
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| PeerError::InvalidCertificate(format!("unparsable leaf: {e}")))?;
    let SanNames { uris, dns } = SanNames::of(&cert);
    Ok(ClientCertificate {
        leaf_sha256: sha256_hex(leaf),
        subject: rfc2253(&cert),
        uris,
        dns,
    })
}

/// Why a peer was refused at the handshake. `reason()` is the log and metric label.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The client sent no certificate; ISTIO_MUTUAL requires one.
    #[error("no client certificate")]
    NoCertificate,
    /// The chain does not lead to a root of the trust bundle; with what was sent and the roots
    /// tried, when known.
    #[error("certificate chain does not verify to the trust bundle{}", detail(.0))]
    UnknownIssuer(String),
    /// The leaf (or a CA in its chain) is past its notAfter; by how long, when known.
    #[error("certificate expired{}", detail(.0))]
    Expired(String),
    /// The leaf (or a CA in its chain) is before its notBefore; for how long, when known.
    #[error("certificate not yet valid{}", detail(.0))]
    NotYetValid(String),
    /// Another X.509 failure: bad signature, wrong key usage, bad encoding.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The leaf carries no URI SAN.
    #[error("leaf has no URI SAN")]
    NoUriSan,
    /// The leaf carries more than one URI SAN (X509-SVID allows exactly one).
    #[error("leaf has {0} URI SANs; an X509-SVID has exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(#[source] SpiffeIdError),
    /// The leaf is a CA certificate or may sign certificates, which X509-SVID forbids.
    #[error("leaf is a CA certificate")]
    CaLeaf,
    /// The client sent more certificates than `limits.maxCertificateChainLength`.
    #[error("chain of {0} certificates, more than the limit")]
    ChainTooLong(usize),
    /// A CRL of `identity.crl` revokes the leaf or an intermediate.
    #[error("certificate revoked")]
    Revoked,
    /// A CRL covering the chain is past its `nextUpdate`, and `identity.expiredCrl` is DENY.
    #[error("a CRL covering the chain has expired")]
    CrlExpired,
    /// The peer's trust domain is not in `MeshGateway.spec.trust.trustDomains`.
    #[error("trust domain `{0}` is not allowed (spec.trust.trustDomains: {1})")]
    TrustDomainNotAllowed(String, String),
    /// The leaf's issuing CA is not bound to its trust domain (`spec.trust.issuers`): under a
    /// shared root, one mesh's CA minting another mesh's identity.
    #[error("issuer not allowed: {0}")]
    IssuerNotAllowed(String),
    /// An upstream's identity is not one of the DestinationRule's `subjectAltNames`, or (for
    /// ISTIO_MUTUAL without them) is not a SPIFFE ID.
    #[error("server identity not allowed: {0}")]
    IdentityNotAllowed(String),
    /// A client's certificate names none of its Gateway server's `subjectAltNames`.
    #[error("client certificate names none of subjectAltNames: {0}")]
    SanNotAllowed(String),
    /// A client's certificate matches none of its Gateway server's `verifyCertificateHash` and
    /// `verifyCertificateSpki`.
    #[error("certificate not pinned: {0}")]
    NotPinned(String),
    /// The SNI names no host of this listener's Gateway servers.
    #[error("SNI `{0}` matches no Gateway server host")]
    SniMismatch(String),
    /// The handshake took longer than the TLS handshake timeout.
    #[error("handshake timed out")]
    Timeout,
    /// A TLS protocol failure (no shared version or cipher, bad message).
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// The socket failed or closed during the handshake.
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
}

impl PeerError {
    /// The label for logs and `meshgate_handshakes_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_client_certificate",
            Self::UnknownIssuer(_) => "unknown_issuer",
            Self::Expired(_) => "expired",
            Self::NotYetValid(_) => "not_yet_valid",
            Self::InvalidCertificate(_) => "invalid_certificate",
            Self::NoUriSan => "no_uri_san",
            Self::MultipleUriSans(_) => "multiple_uri_sans",
            Self::InvalidSpiffeId(_) => "invalid_spiffe_id",
            Self::CaLeaf => "ca_leaf",
            Self::ChainTooLong(_) => "chain_too_long",
            Self::Revoked => "revoked",
            Self::CrlExpired => "crl_expired",
            Self::TrustDomainNotAllowed(..) => "trust_domain_not_allowed",
            Self::IssuerNotAllowed(_) => "issuer_not_allowed",
            Self::IdentityNotAllowed(_) => "identity_not_allowed",
            Self::SanNotAllowed(_) => "san_not_allowed",
            Self::NotPinned(_) => "certificate_not_pinned",
            Self::SniMismatch(_) => "sni_mismatch",
            Self::Timeout => "timeout",
            Self::Tls(_) => "tls_error",
            Self::Io(_) => "io_error",
        }
    }

    /// Every reason, for pre-registering metric series.
    pub const REASONS: [&'static str; 21] = [
        "no_client_certificate",
        "unknown_issuer",
        "expired",
        "not_yet_valid",
        "invalid_certificate",
        "no_uri_san",
        "multiple_uri_sans",
        "invalid_spiffe_id",
        "ca_leaf",
        "chain_too_long",
        "revoked",
        "crl_expired",
        "trust_domain_not_allowed",
        "issuer_not_allowed",
        "identity_not_allowed",
        "san_not_allowed",
        "certificate_not_pinned",
        "sni_mismatch",
        "timeout",
        "tls_error",
        "io_error",
    ];
}

/// `: detail`, or nothing for no detail.
fn detail(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

/// A span of time as people read it: `42s`, `17m`, `5h`, `3d`.
pub fn span(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Reads the identity of a leaf that already chains to the bundle.
///
/// A sidecar reconnects with the same certificate for the certificate's life, and reading a
/// leaf (DER, SHA-256, subject) costs about 4 µs: twice per full handshake (in the verifier and
/// when the handshake is done) and once per resumed one. So each thread keeps the identities
/// it read last (`KEPT`), each with the whole leaf it was read from: a kept identity answers
/// only for a leaf equal to that one byte for byte. The identity is a function of those bytes
/// alone; whether they chain to the bundle is still rustls' verdict on every handshake.
pub fn peer_identity(leaf: &CertificateDer<'_>) -> Result<PeerIdentity, PeerError> {
    let slot = kept_slot(leaf);
    let kept = READ.with_borrow(|read| {
        read.get(slot)
            .and_then(Option::as_ref)
            .filter(|(der, _)| **der == **leaf)
            .map(|(_, id)| id.clone())
    });
    if let Some(id) = kept {
        return Ok(id);
    }
    let id = read_identity(leaf)?;
    READ.with_borrow_mut(|read| {
        if read.is_empty() {
            read.resize_with(KEPT, || None);
        }
        if let Some(s) = read.get_mut(slot) {
            *s = Some((leaf.as_ref().into(), id.clone()));
        }
    });
    Ok(id)
}

/// Identities kept per thread (a power of two): the callers a gateway's worker sees.
const KEPT: usize = 64;

/// An identity and the leaf it was read from.
type Read = Option<(Box<[u8]>, PeerIdentity)>;

thread_local! {
    /// Identities read on this thread, `KEPT` slots once one is.
    static READ: std::cell::RefCell<Vec<Read>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A leaf's slot: from its last bytes, which are its signature's, so spread evenly.
fn kept_slot(leaf: &[u8]) -> usize {
    let tail: [u8; 8] = leaf
        .len()
        .checked_sub(8)
        .and_then(|start| leaf.get(start..))
        .and_then(|bytes| bytes.try_into().ok())
        .unwrap_or_default();
    u64::from_le_bytes(tail)
        .checked_rem(KEPT as u64)
        .unwrap_or(0) as usize
}

fn read_identity(leaf: &CertificateDer<'_>) -> Result<PeerIdentity, PeerError> {
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| PeerError::InvalidCertificate(format!("unparsable leaf: {e}")))?;
    let spiffe_id = svid::spiffe_id(&cert).map_err(|e| match e {
        SvidError::NoUriSan => PeerError::NoUriSan,
        SvidError::MultipleUriSans(n) => PeerError::MultipleUriSans(n),
        SvidError::InvalidSpiffeId(e) => PeerError::InvalidSpiffeId(e),
        SvidError::CaLeaf => PeerError::CaLeaf,
    })?;
    Ok(PeerIdentity {
        spiffe_id,
        leaf_sha256: sha256_hex(leaf),
        subject: rfc2253(&cert),
        dns: SanNames::of(&cert).dns,
    })
}

/// The subject as OpenSSL's `XN_FLAG_RFC2253` prints it, which is what Envoy puts in XFCC:
/// the RDNs in reverse order, joined by `,`.
fn rfc2253(cert: &X509Certificate<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = cert.subject().iter().collect();
    for rdn in rdns.iter().rev() {
        for attr in rdn.iter() {
            if !out.is_empty() {
                out.push(',');
            }
            let key = x509_parser::objects::oid2abbrev(
                attr.attr_type(),
                x509_parser::objects::oid_registry(),
            )
            .map(str::to_string)
            .unwrap_or_else(|_| attr.attr_type().to_id_string());
            let value = attr.as_str().unwrap_or("");
            let _ = write!(out, "{key}=");
            escape_2253(value, &mut out);
        }
    }
    out
}

/// One attribute value as `XN_FLAG_RFC2253` escapes it: `,+"\\<>;` and a leading `#` or space
/// or a trailing space with a backslash; a control character, and each byte of a character
/// outside ASCII, as `\\XX`.
fn escape_2253(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && matches!(c, '#' | ' ')) || (i == last && c == ' ');
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            _ if edge => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => push_bytes_hex(out, c, '\\'),
        }
    }
}

/// Each byte of `c`'s UTF-8 as `escape` and two uppercase hex digits.
pub(crate) fn push_bytes_hex(out: &mut String, c: char, escape: char) {
    let mut utf8 = [0; 4];
    for b in c.encode_utf8(&mut utf8).bytes() {
        let _ = write!(out, "{escape}{b:02X}");
    }
}

#[cfg(test)]
mod tests {
    use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec};
    use rustls::pki_types::CertificateDer;

    use super::{escape_2253, kept_slot, peer_identity};

    /// Subject values as OpenSSL's `XN_FLAG_RFC2253` prints them (Envoy's XFCC `Subject`).
    #[test]
    fn subject_values_escape_as_rfc2253() {
        let cases = [
            ("plain value", "plain value"),
            ("a,b+c\"d\\e<f>g;h", "a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h"),
            ("#lead", "\\#lead"),
            (" both ", "\\ both\\ "),
            ("mid#dle", "mid#dle"),
            ("tab\there", "tab\\09here"),
            ("m\u{fc}ller", "m\\C3\\BCller"),
        ];
        for (value, want) in cases {
            let mut out = String::new();
            escape_2253(value, &mut out);
            assert_eq!(out, want, "{value:?}");
        }
    }

    fn leaf(ca: &Authority, id: &str) -> Vec<u8> {
        ca.issue(&LeafSpec::spiffe(id)).unwrap().leaf_der
    }

    fn principal(der: &[u8]) -> String {
        let id = peer_identity(&CertificateDer::from(der)).unwrap();
        id.spiffe_id.principal().to_string()
    }

    #[test]
    fn a_kept_identity_answers_only_for_its_own_leaf() {
        let ca = Authority::root("root", KeyAlgorithm::EcdsaP256).unwrap();
        let a = leaf(&ca, "spiffe://example.com/ns/default/sa/aaaa");
        let b = leaf(&ca, "spiffe://example.com/ns/default/sa/bbbb");
        for _ in 0..2 {
            assert_eq!(principal(&a), "example.com/ns/default/sa/aaaa");
            assert_eq!(principal(&b), "example.com/ns/default/sa/bbbb");
        }
        // The same signature bytes (so the same slot) over another SPIFFE ID: read anew.
        let at = a
            .windows(4)
            .position(|w| w == b"aaaa")
            .expect("the SPIFFE ID is in the DER");
        let mut forged = a.clone();
        forged.get_mut(at..at + 4).unwrap().copy_from_slice(b"cccc");
        assert_eq!(kept_slot(&forged), kept_slot(&a));
        assert_eq!(principal(&a), "example.com/ns/default/sa/aaaa");
        assert_eq!(principal(&forged), "example.com/ns/default/sa/cccc");
        assert_eq!(principal(&a), "example.com/ns/default/sa/aaaa");
    }
}
