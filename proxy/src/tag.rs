//! Tag: strip every client-sent copy of the headers the proxy owns, then set ours.
//!
//! Runs after `head` has removed what `Connection` nominates and the underscore spellings of
//! owned headers, and nothing after it edits the request's headers (route header operations
//! may not name an owned header), so what the backend receives is what is set here. Request
//! trailers cannot carry an owned header either: `Owned::strip_trailers` removes them.
//!
//! The values depend only on the connection (the verified peer, its origin, our identity), so
//! they are built once per connection in `ConnectionTags::new` and each request only clones
//! them (a reference-count increment). XFCC follows Envoy's `SANITIZE_SET`:
//! `By=<our SPIFFE ID>;Hash=<sha256 of the peer leaf>;Subject="<subject>";URI=<peer SPIFFE ID>`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use meshgate_config::model::{
    ForwardClientCert, Tagging, UnderscoreHeaders, X_ENVOY_EXTERNAL_ADDRESS,
    X_FORWARDED_CLIENT_CERT, X_FORWARDED_FOR, X_FORWARDED_PROTO,
};
use meshgate_config::spiffe::SpiffeId;

use crate::identity::{ClientCertificate, PeerIdentity};
use crate::origin::Origin;

/// The header values of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionTags {
    /// `None` on plaintext, `SIMPLE` and `MUTUAL` listeners: no SPIFFE identity, so the tags
    /// are only stripped.
    identity: Option<IdentityTags>,
    /// XFCC for a `MUTUAL` client certificate.
    certificate_xfcc: Option<HeaderValue>,
    peer: IpAddr,
    forwarded_for: HeaderValue,
    forwarded_proto: HeaderValue,
}

#[derive(Debug, Clone)]
struct IdentityTags {
    origin: HeaderValue,
    trust_domain: HeaderValue,
    principal: HeaderValue,
    xfcc: Option<HeaderValue>,
}

impl ConnectionTags {
    /// Builds the values for a connection from `peer_addr`, verified as `peer` when it is TLS;
    /// `pem` is what `client_pem` made of its chain, when XFCC carries it.
    pub fn new(
        peer: Option<(&PeerIdentity, Origin)>,
        own_id: Option<&SpiffeId>,
        tagging: &Tagging,
        peer_addr: SocketAddr,
        pem: Option<&str>,
    ) -> Self {
        let identity = peer.map(|(peer, origin)| {
            let id = &peer.spiffe_id;
            let xfcc = match (tagging.forward_client_cert, own_id) {
                (ForwardClientCert::SanitizeSet, Some(own)) => xfcc(
                    Some(own.as_str()),
                    &peer.leaf_sha256,
                    &peer.subject,
                    std::iter::once(peer.spiffe_id.as_str()),
                    pem,
                    &peer.dns,
                ),
                _ => None,
            };
            IdentityTags {
                origin: HeaderValue::from_static(origin.as_str()),
                trust_domain: value(id.trust_domain()),
                principal: value(id.principal()),
                xfcc,
            }
        });
        Self {
            certificate_xfcc: None,
            peer: peer_addr.ip(),
            forwarded_for: value(&peer_addr.ip().to_string()),
            forwarded_proto: HeaderValue::from_static(if identity.is_some() {
                "https"
            } else {
                "http"
            }),
            identity,
        }
    }

    /// The values for a `SIMPLE` (no `certificate`) or `MUTUAL` connection: HTTPS without a
    /// SPIFFE identity. The tags are only stripped; with `SANITIZE_SET`, a client certificate
    /// sets XFCC as Envoy does at an Istio gateway (`Hash`, `Subject`, `URI`, `DNS`).
    pub fn tls(
        certificate: Option<&ClientCertificate>,
        tagging: &Tagging,
        peer_addr: SocketAddr,
        pem: Option<&str>,
    ) -> Self {
        // No `By`: a gateway's own certificate has no URI SAN.
        let certificate_xfcc = match (tagging.forward_client_cert, certificate) {
            (ForwardClientCert::SanitizeSet, Some(cert)) => xfcc(
                None,
                &cert.leaf_sha256,
                &cert.subject,
                cert.uris.iter().map(String::as_str),
                pem,
                &cert.dns,
            ),
            _ => None,
        };
        Self {
            certificate_xfcc,
            forwarded_proto: HeaderValue::from_static("https"),
            ..Self::new(None, None, tagging, peer_addr, None)
        }
    }
}

/// What `tag` decided about the client.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The trusted client address (Envoy's downstream remote address): the peer, or with
    /// `numTrustedProxies` N, the Nth address from the right of `x-forwarded-for` as received.
    pub address: IpAddr,
}

/// Removes the client's copies of the owned headers and sets the connection's values.
///
/// `x-forwarded-for` follows Envoy at an edge (`use_remote_address`, `xff_num_trusted_hops` =
/// `trusted_proxies`): the trusted client address is read from it as received, then the peer is
/// appended. At a gateway (`external`), `x-envoy-external-address` is set to the trusted
/// client address; a client's copy is never kept.
pub fn tag(
    headers: &mut HeaderMap,
    tags: &ConnectionTags,
    tagging: &Tagging,
    trusted_proxies: u32,
    external: bool,
) -> Client {
    let client = trusted_client(headers, tags.peer, trusted_proxies);
    // `insert` replaces every existing value; `remove` drops every one.
    let owned = [&tagging.origin, &tagging.trust_domain, &tagging.principal];
    match &tags.identity {
        Some(id) => {
            headers.insert(tagging.origin.clone(), id.origin.clone());
            headers.insert(tagging.trust_domain.clone(), id.trust_domain.clone());
            headers.insert(tagging.principal.clone(), id.principal.clone());
            match &id.xfcc {
                Some(x) => {
                    headers.insert(XFCC, x.clone());
                }
                None => {
                    headers.remove(XFCC);
                }
            }
        }
        None => {
            for name in owned {
                headers.remove(name);
            }
            match &tags.certificate_xfcc {
                Some(x) => {
                    headers.insert(XFCC, x.clone());
                }
                None => {
                    headers.remove(XFCC);
                }
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, tags.forwarded_proto.clone());
    append_forwarded_for(headers, &tags.forwarded_for);
    if external {
        let address = if client == tags.peer {
            tags.forwarded_for.clone()
        } else {
            value(&client.to_string())
        };
        headers.insert(X_ENVOY_EXTERNAL_ADDRESS, address);
    } else {
        headers.remove(X_ENVOY_EXTERNAL_ADDRESS);
    }
    Client { address: client }
}

/// `meshConfig.enableTracing`: a request without `x-request-id` gets one (a random UUID v4, as
/// Envoy generates it), so that the backend's spans and logs can be joined.
pub fn request_id(headers: &mut HeaderMap) {
    if headers.contains_key(X_REQUEST_ID) {
        return;
    }
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    // 8-4-4-4-12 hex digits, written in place: one allocation, the header value's own.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut nibbles = b.iter().flat_map(|byte| [byte >> 4, byte & 0x0f]);
    let mut id = [b'-'; 36];
    for (i, slot) in id.iter_mut().enumerate() {
        if !matches!(i, 8 | 13 | 18 | 23) {
            let nibble = nibbles.next().unwrap_or(0);
            *slot = HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
        }
    }
    if let Ok(id) = HeaderValue::from_bytes(&id) {
        headers.insert(X_REQUEST_ID, id);
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Envoy's trusted client address: with `hops` trusted proxies in front, the `hops`th address
/// from the right of the `x-forwarded-for` the request arrived with; the peer when there are
/// none, too few entries, or the entry is not an IP address.
fn trusted_client(headers: &HeaderMap, peer: IpAddr, hops: u32) -> IpAddr {
    if hops == 0 {
        return peer;
    }
    let mut remaining = hops;
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for entry in text.rsplit(',') {
            // At least 1 here: it returns at 0.
            remaining = remaining.saturating_sub(1);
            if remaining == 0 {
                return entry.trim().parse().unwrap_or(peer);
            }
        }
    }
    peer
}

/// Envoy appends the peer address to `x-forwarded-for` (use_remote_address at the edge).
fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    // Empty values (a client's bare `x-forwarded-for:`) add no element: the peer is then first.
    let joined = {
        let mut existing = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter(|e| !e.as_bytes().trim_ascii().is_empty())
            .peekable();
        if existing.peek().is_none() {
            None
        } else {
            let mut v = Vec::new();
            for (i, e) in existing.enumerate() {
                if i > 0 {
                    v.extend_from_slice(b", ");
                }
                v.extend_from_slice(e.as_bytes());
            }
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
    };
    headers.insert(X_FORWARDED_FOR, joined.unwrap_or_else(|| peer.clone()));
}

/// Envoy's XFCC element for this connection, in Envoy's order: `By`, `Hash`, `Subject`, each
/// `URI`, `Cert` and `Chain` (already encoded, `client_pem`), each `DNS`.
///
/// A value is written as XFCC's grammar has it (`xfcc_value`), so that what a certificate's
/// names hold cannot end a value, add a key or start another element for the backend: a DNS
/// name is whatever the issuing CA wrote.
fn xfcc<'a>(
    by: Option<&str>,
    hash: &str,
    subject: &str,
    uris: impl Iterator<Item = &'a str>,
    pem: Option<&str>,
    dns: &[String],
) -> Option<HeaderValue> {
    let mut text = String::new();
    if let Some(by) = by {
        text.push_str("By=");
        xfcc_value(&mut text, by, false);
        text.push(';');
    }
    text.push_str("Hash=");
    text.push_str(hash);
    text.push_str(";Subject=");
    // Quoted always, as Envoy writes it.
    xfcc_value(&mut text, subject, true);
    for uri in uris {
        text.push_str(";URI=");
        xfcc_value(&mut text, uri, false);
    }
    if let Some(pem) = pem {
        text.push_str(pem);
    }
    for name in dns {
        text.push_str(";DNS=");
        xfcc_value(&mut text, name, false);
    }
    HeaderValue::from_str(&text).ok()
}

/// One XFCC value: as it is, or (`quote`, or when it holds `,` `;` `=` `"` or `\`)
/// double-quoted with `"` and `\` escaped by a backslash, Envoy's documented rule. A byte no
/// header value may hold (a control character), one outside ASCII, and `%` itself are written
/// `%XX`, as URIs escape them: the header is always valid, and never dropped for a name's sake.
fn xfcc_value(out: &mut String, value: &str, quote: bool) {
    let quote = quote || value.contains([',', ';', '=', '"', '\\']);
    if quote {
        out.push('"');
    }
    for c in value.chars() {
        match c {
            '"' | '\\' if quote => {
                out.push('\\');
                out.push(c);
            }
            // `%` too, so that an escape reads back as one.
            ' '..='$' | '&'..='~' => out.push(c),
            _ => crate::identity::push_bytes_hex(out, c, '%'),
        }
    }
    if quote {
        out.push('"');
    }
}

/// `;Cert="…"` and `;Chain="…"` as `tagging` asks (Envoy's `set_current_client_cert_details`):
/// the client's leaf and its whole chain as sent (leaf first), PEM, URL-encoded as Envoy encodes
/// them. Made once per connection; `None` when neither is asked for.
pub fn client_pem(chain: &[impl AsRef<[u8]>], tagging: &Tagging) -> Option<String> {
    if !(tagging.client_cert || tagging.client_chain) {
        return None;
    }
    let mut out = String::new();
    if tagging.client_cert {
        if let Some(leaf) = chain.first() {
            out.push_str(";Cert=\"");
            url_encode(&pem(leaf.as_ref()), &mut out);
            out.push('"');
        }
    }
    if tagging.client_chain && !chain.is_empty() {
        out.push_str(";Chain=\"");
        let all: String = chain.iter().map(|c| pem(c.as_ref())).collect();
        url_encode(&all, &mut out);
        out.push('"');
    }
    Some(out)
}

/// One certificate as PEM, 64 characters a line.
fn pem(der: &[u8]) -> String {
    let base64 = data_encoding::BASE64.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in base64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn url_encode(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn value(s: &str) -> HeaderValue {
    // SPIFFE IDs, trust domains and IP addresses are visible ASCII by construction.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Envoy's client-certificate header.
pub const XFCC: HeaderName = X_FORWARDED_CLIENT_CERT;

/// The request headers the proxy owns (`Tagging::owned`), built once per configuration.
#[derive(Debug)]
pub struct Owned {
    names: [HeaderName; 7],
    underscores: UnderscoreHeaders,
}

impl Owned {
    pub fn new(tagging: &Tagging, underscores: UnderscoreHeaders) -> Self {
        Self {
            names: tagging.owned(),
            underscores,
        }
    }

    /// Whether the proxy owns `name`.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.names.contains(name)
    }

    /// Whether `name` is an owned header spelled with `_` for some `-` (`x_mesh_origin`).
    pub fn spelled_with_underscores(&self, name: &str) -> bool {
        self.names.iter().any(|owned| {
            let (a, b) = (owned.as_str().as_bytes(), name.as_bytes());
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x == y || (*x == b'-' && *y == b'_'))
        })
    }

    /// Removes from request trailers every owned header, its underscore spellings, and (unless
    /// underscores are allowed) every name with `_`: trailers must not say what the head may
    /// not.
    pub fn strip_trailers(&self, trailers: &mut HeaderMap) {
        for name in &self.names {
            trailers.remove(name);
        }
        if trailers.keys().any(|k| k.as_str().contains('_')) {
            let names: Vec<HeaderName> = trailers
                .keys()
                .filter(|k| {
                    let k = k.as_str();
                    k.contains('_')
                        && (self.underscores != UnderscoreHeaders::Allow
                            || self.spelled_with_underscores(k))
                })
                .cloned()
                .collect();
            for name in names {
                trailers.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's names are values in XFCC, whatever they hold: quoted where XFCC's
    /// separators or a quote would read as syntax, and escaped where a header could not carry
    /// them.
    #[test]
    fn xfcc_values_cannot_read_as_syntax() {
        let value = |v: &str, quote: bool| {
            let mut out = String::new();
            xfcc_value(&mut out, v, quote);
            out
        };
        let cases = [
            (
                "spiffe://example.com/ns/a/sa/b",
                false,
                "spiffe://example.com/ns/a/sa/b",
            ),
            ("a.example.com", true, "\"a.example.com\""),
            ("a;URI=x", false, "\"a;URI=x\""),
            ("a,By=x", false, "\"a,By=x\""),
            ("a=b", false, "\"a=b\""),
            ("say \"hi\"", false, "\"say \\\"hi\\\"\""),
            ("back\\slash", false, "\"back\\\\slash\""),
            ("CN=a\\,b", true, "\"CN=a\\\\,b\""),
            ("line\nbreak", false, "line%0Abreak"),
            ("m\u{fc}ller", false, "m%C3%BCller"),
            ("100%0A", false, "100%250A"),
            ("", true, "\"\""),
        ];
        for (input, quote, want) in cases {
            assert_eq!(value(input, quote), want, "{input:?}");
        }
        // A header value, always: nothing a name holds drops XFCC.
        let dns = ["a\r\nx-evil: 1".to_string(), "\u{7f}".to_string()];
        let header =
            xfcc(None, "00", "CN=a", ["u\tv"].into_iter(), None, &dns).expect("XFCC is kept");
        assert_eq!(
            header,
            "Hash=00;Subject=\"CN=a\";URI=u%09v;DNS=a%0D%0Ax-evil: 1;DNS=%7F"
        );
    }

    fn tagging() -> Tagging {
        Tagging {
            origin: HeaderName::from_static("x-mesh-origin"),
            trust_domain: HeaderName::from_static("x-source-trust-domain"),
            principal: HeaderName::from_static("x-source-principal"),
            forward_client_cert: ForwardClientCert::SanitizeSet,
            client_cert: false,
            client_chain: false,
            proxy_protocol_tlv: None,
        }
    }

    fn peer() -> PeerIdentity {
        PeerIdentity {
            spiffe_id: SpiffeId::parse("spiffe://example.com/ns/default/sa/sleep").unwrap(),
            leaf_sha256: "ab".repeat(32),
            subject: String::new(),
            dns: Vec::new(),
        }
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-mesh-origin", "local"),
            ("x-mesh-origin", "local"),
            ("x-source-trust-domain", "example-target.com"),
            ("x-source-principal", "example-target.com/ns/admin/sa/root"),
            (
                "x-forwarded-client-cert",
                "By=x;URI=spiffe://example-target.com/ns/admin/sa/root",
            ),
            ("x-forwarded-proto", "http"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn spoofed_headers_are_replaced_on_tls_connections() {
        let own = SpiffeId::parse("spiffe://example-target.com/ns/istio-system/sa/gw").unwrap();
        let peer = peer();
        let tags = ConnectionTags::new(
            Some((&peer, Origin::Remote)),
            Some(&own),
            &tagging(),
            "10.1.2.3:5000".parse().unwrap(),
            None,
        );
        let mut h = spoofed();
        h.insert(
            "x-envoy-external-address",
            HeaderValue::from_static("1.1.1.1"),
        );
        let client = tag(&mut h, &tags, &tagging(), 0, true);
        assert_eq!(client.address.to_string(), "10.1.2.3");
        let all = |name: &str| {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-mesh-origin"), ["remote"]);
        assert_eq!(all("x-source-trust-domain"), ["example.com"]);
        assert_eq!(
            all("x-source-principal"),
            ["example.com/ns/default/sa/sleep"]
        );
        assert_eq!(
            all("x-forwarded-client-cert"),
            [format!(
                "By=spiffe://example-target.com/ns/istio-system/sa/gw;Hash={};Subject=\"\";URI=spiffe://example.com/ns/default/sa/sleep",
                "ab".repeat(32)
            )]
        );
        assert_eq!(all("x-forwarded-proto"), ["https"]);
        assert_eq!(all("x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(all("x-envoy-external-address"), ["10.1.2.3"]);
    }

    /// Envoy's `xff_num_trusted_hops` examples, and what a client cannot make of them.
    #[test]
    fn trusted_proxies_choose_the_client_address_from_the_right() {
        let peer = "192.0.2.5:1000".parse().unwrap();
        let tags = ConnectionTags::new(None, None, &tagging(), peer, None);
        let cases: &[(&[&str], u32, &str, &str)] = &[
            // (x-forwarded-for as received, trusted proxies, client, x-forwarded-for sent)
            (&[], 0, "192.0.2.5", "192.0.2.5"),
            (
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                0,
                "192.0.2.5",
                "203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5",
            ),
            (
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                2,
                "203.0.113.10",
                "203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5",
            ),
            (
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                1,
                "203.0.113.1",
                "203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5",
            ),
            // Fewer entries than trusted proxies: the peer.
            (&["203.0.113.1"], 2, "192.0.2.5", "203.0.113.1, 192.0.2.5"),
            // Two headers count as one list.
            (
                &["198.51.100.7", "203.0.113.1"],
                2,
                "198.51.100.7",
                "198.51.100.7, 203.0.113.1, 192.0.2.5",
            ),
            // Not an address: the peer.
            (
                &["evil, 203.0.113.1"],
                2,
                "192.0.2.5",
                "evil, 203.0.113.1, 192.0.2.5",
            ),
            (&["2001:db8::7"], 1, "2001:db8::7", "2001:db8::7, 192.0.2.5"),
        ];
        for (xff, hops, client, sent) in cases {
            let mut h = HeaderMap::new();
            for v in *xff {
                h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            h.insert(
                "x-envoy-external-address",
                HeaderValue::from_static("6.6.6.6"),
            );
            let got = tag(&mut h, &tags, &tagging(), *hops, true);
            assert_eq!(got.address.to_string(), *client, "{xff:?} {hops}");
            assert_eq!(h["x-forwarded-for"], *sent, "{xff:?} {hops}");
            assert_eq!(h["x-envoy-external-address"], *client, "{xff:?} {hops}");
            let mut h = HeaderMap::new();
            h.insert(
                "x-envoy-external-address",
                HeaderValue::from_static("6.6.6.6"),
            );
            tag(&mut h, &tags, &tagging(), *hops, false);
            assert!(h.get("x-envoy-external-address").is_none());
        }
    }

    #[test]
    fn plaintext_connections_only_strip() {
        let tags =
            ConnectionTags::new(None, None, &tagging(), "127.0.0.1:1".parse().unwrap(), None);
        let mut h = spoofed();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        tag(&mut h, &tags, &tagging(), 0, true);
        for name in [
            "x-mesh-origin",
            "x-source-trust-domain",
            "x-source-principal",
            "x-forwarded-client-cert",
        ] {
            assert!(h.get(name).is_none(), "{name} survived");
        }
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
    }

    #[test]
    fn sanitize_mode_removes_xfcc_without_setting_it() {
        let mut t = tagging();
        t.forward_client_cert = ForwardClientCert::Sanitize;
        let own = SpiffeId::parse("spiffe://example-target.com/ns/istio-system/sa/gw").unwrap();
        let peer = peer();
        let tags = ConnectionTags::new(
            Some((&peer, Origin::Local)),
            Some(&own),
            &t,
            "127.0.0.1:1".parse().unwrap(),
            None,
        );
        let mut h = spoofed();
        tag(&mut h, &tags, &t, 0, true);
        assert!(h.get("x-forwarded-client-cert").is_none());
        assert_eq!(h["x-mesh-origin"], "local");
    }

    #[test]
    fn a_request_without_an_id_gets_a_random_uuid_v4_and_one_with_an_id_keeps_it() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let mut h = HeaderMap::new();
            request_id(&mut h);
            let id = h["x-request-id"].to_str().unwrap().to_string();
            assert_eq!(id.len(), 36, "{id}");
            for (i, c) in id.chars().enumerate() {
                match i {
                    8 | 13 | 18 | 23 => assert_eq!(c, '-', "{id}"),
                    14 => assert_eq!(c, '4', "{id}"),
                    19 => assert!("89ab".contains(c), "{id}"),
                    _ => assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{id}"),
                }
            }
            assert!(seen.insert(id));
        }
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("from-the-client"));
        request_id(&mut h);
        assert_eq!(h["x-request-id"], "from-the-client");
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    }
}
