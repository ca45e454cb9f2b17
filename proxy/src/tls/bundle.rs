//! The SPIFFE bundle format (SPIFFE Trust Domain and Bundle, section 4; X509-SVID, section
//! 6.2): a JWK Set whose `x509-svid` entries each carry one CA certificate in `x5c`, with an
//! optional `spiffe_sequence` and `spiffe_refresh_hint`.

use rustls::pki_types::CertificateDer;
use serde::Deserialize;

/// What a SPIFFE bundle document holds for X.509.
#[derive(Debug, Default)]
pub struct SpiffeBundle {
    /// The X.509 authorities: the first `x5c` value of every `x509-svid` entry.
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// `spiffe_sequence`.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, in seconds.
    pub refresh_hint: Option<u64>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<Key>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Deserialize)]
struct Key {
    #[serde(rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

/// Whether `bytes` look like a JSON document rather than PEM.
pub fn is_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Parses a SPIFFE bundle. Entries of another use (`jwt-svid`) are left aside, and an
/// `x509-svid` entry without `x5c` is ignored, as the X509-SVID specification says; a bundle
/// with no X.509 authority at all, or an `x5c` value that is not base64, is an error.
pub fn parse(bytes: &[u8]) -> Result<SpiffeBundle, String> {
    let doc: Document =
        serde_json::from_slice(bytes).map_err(|e| format!("not a SPIFFE bundle: {e}"))?;
    let mut authorities = Vec::new();
    for (i, key) in doc.keys.iter().enumerate() {
        if key.usage.as_deref() != Some("x509-svid") {
            continue;
        }
        let Some(first) = key.x5c.first() else {
            continue;
        };
        let der = data_encoding::BASE64
            .decode(first.as_bytes())
            .map_err(|e| format!("keys[{i}].x5c[0]: not base64: {e}"))?;
        authorities.push(CertificateDer::from(der));
    }
    if authorities.is_empty() {
        return Err("holds no `x509-svid` key with a certificate (`x5c`)".into());
    }
    Ok(SpiffeBundle {
        x509_authorities: authorities,
        sequence: doc.spiffe_sequence,
        refresh_hint: doc.spiffe_refresh_hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x509_authorities_are_the_first_x5c_of_each_x509_svid_entry() {
        let doc = br#"{
            "keys": [
                {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": ["AQID", "BAUG"]},
                {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"},
                {"use": "x509-svid", "kty": "EC"},
                {"use": "x509-svid", "kty": "RSA", "x5c": ["BwgJ"]}
            ],
            "spiffe_sequence": 7,
            "spiffe_refresh_hint": 300
        }"#;
        assert!(is_json(doc));
        let b = parse(doc).unwrap();
        let ders: Vec<&[u8]> = b.x509_authorities.iter().map(|c| c.as_ref()).collect();
        assert_eq!(ders, [&[1u8, 2, 3][..], &[7, 8, 9][..]]);
        assert_eq!((b.sequence, b.refresh_hint), (Some(7), Some(300)));
    }

    #[test]
    fn a_bundle_without_x509_authorities_or_with_broken_ones_is_refused() {
        let jwt_only = br#"{"keys": [{"use": "jwt-svid", "kty": "EC"}]}"#;
        assert!(parse(jwt_only).unwrap_err().contains("x509-svid"));
        let bad = br#"{"keys": [{"use": "x509-svid", "x5c": ["not base64!"]}]}"#;
        assert!(parse(bad).unwrap_err().contains("keys[0].x5c[0]"));
        assert!(parse(b"{").unwrap_err().contains("not a SPIFFE bundle"));
        assert!(!is_json(b"-----BEGIN CERTIFICATE-----"));
    }
}
