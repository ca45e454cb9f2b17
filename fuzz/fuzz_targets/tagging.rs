//! `tag::tag`, which strips every client-sent copy of the headers the proxy owns and sets its
//! own, on arbitrary client headers, an arbitrary peer (SPIFFE identity, plain TLS client
//! certificate, or plaintext), either forwarding mode, any `numTrustedProxies` and peer address.
//! And `Owned::strip_trailers` on the same headers sent as trailers.
//!
//! Input: byte 0 holds flags (bit 0 custom tag names, bit 1 `SANITIZE` instead of
//! `SANITIZE_SET`, bit 2 gateway (`external`), bit 3 underscores allowed, bits 4-5 the peer:
//! SPIFFE local, SPIFFE remote, TLS client certificate, plaintext), byte 1 the number of trusted
//! proxies (mod 8); then lines: the peer address, the peer's SPIFFE ID (or the certificate
//! subject), our own SPIFFE ID (or the certificate's SANs, space-separated, `DNS:` for DNS
//! names), the leaf hash, and `name: value` header lines (`fuzz/seeds/tagging/` has examples).
//!
//! Checks (besides never panicking): after tagging, the tags, `x-forwarded-client-cert` and
//! `x-forwarded-proto` hold exactly what tagging a request without headers gives (the
//! connection's values, or nothing), whatever the client sent; `x-forwarded-for` is one header,
//! the client's chain followed by the peer address (the one owned header that keeps a client
//! value, as Envoy appends to it); `x-envoy-external-address` is exactly the trusted client
//! address at a gateway and absent otherwise; that address is the peer unless proxies are
//! trusted, and then an address the client sent; every header the proxy does not own is left
//! as it came. Trailers keep no owned header (nor its `_` spelling).
#![no_main]

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshgate_config::model::{
    ForwardClientCert, Tagging, UnderscoreHeaders, X_ENVOY_EXTERNAL_ADDRESS,
    X_FORWARDED_CLIENT_CERT, X_FORWARDED_FOR, X_FORWARDED_PROTO,
};
use meshgate_proxy::identity::{ClientCertificate, PeerIdentity};
use meshgate_proxy::origin::Origin;
use meshgate_proxy::tag::{tag, ConnectionTags, Owned};
use meshgate_spiffe::SpiffeId;

fn values(h: &HeaderMap, name: &HeaderName) -> Vec<HeaderValue> {
    h.get_all(name).iter().cloned().collect()
}

fn spiffe(text: &str) -> SpiffeId {
    SpiffeId::parse(text)
        .unwrap_or_else(|_| SpiffeId::parse("spiffe://example.com/ns/default/sa/sleep").unwrap())
}

fuzz_target!(|data: &[u8]| {
    let [flags, trusted_proxies, rest @ ..] = data else {
        return;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let mut text = || String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let peer_addr: SocketAddr = text().parse().unwrap_or(([10, 1, 2, 3], 5000).into());
    let (peer_text, own_text, leaf_sha256) = (text(), text(), text());
    let external = flags & 4 != 0;
    let allow_underscores = flags & 8 != 0;

    let (origin, trust_domain, principal) = if flags & 1 != 0 {
        ("x-origin", "x-peer-td", "x-peer")
    } else {
        (
            "x-mesh-origin",
            "x-source-trust-domain",
            "x-source-principal",
        )
    };
    let tagging = Tagging {
        origin: HeaderName::from_static(origin),
        trust_domain: HeaderName::from_static(trust_domain),
        principal: HeaderName::from_static(principal),
        forward_client_cert: if flags & 2 == 0 {
            ForwardClientCert::SanitizeSet
        } else {
            ForwardClientCert::Sanitize
        },
        client_cert: flags & 4 != 0,
        client_chain: flags & 8 != 0,
        proxy_protocol_tlv: None,
    };
    // A chain of made-up certificates, as XFCC's `Cert` and `Chain` encode whatever was sent.
    let chain = [peer_text.as_bytes().to_vec(), own_text.as_bytes().to_vec()];
    let pem = meshgate_proxy::tag::client_pem(&chain, &tagging);
    let owned_names = tagging.owned();

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let received = headers.clone();

    let tags = match (flags >> 4) & 3 {
        kind @ (0 | 1) => {
            let peer = PeerIdentity {
                spiffe_id: spiffe(&peer_text),
                leaf_sha256,
                subject: peer_text.clone(),
                dns: own_text.split(' ').map(str::to_string).collect(),
            };
            let own = SpiffeId::parse(&own_text).ok();
            let origin = if kind == 0 {
                Origin::Local
            } else {
                Origin::Remote
            };
            ConnectionTags::new(
                Some((&peer, origin)),
                own.as_ref(),
                &tagging,
                peer_addr,
                pem.as_deref(),
            )
        }
        2 => {
            let (dns, uris): (Vec<&str>, Vec<&str>) = own_text
                .split(' ')
                .filter(|s| !s.is_empty())
                .partition(|s| s.starts_with("DNS:"));
            let cert = ClientCertificate {
                leaf_sha256,
                subject: peer_text,
                uris: uris.into_iter().map(str::to_string).collect(),
                dns: dns.into_iter().map(|d| d[4..].to_string()).collect(),
            };
            ConnectionTags::tls(Some(&cert), &tagging, peer_addr, pem.as_deref())
        }
        _ => ConnectionTags::new(None, None, &tagging, peer_addr, None),
    };
    let hops = u32::from(trusted_proxies % 8);

    // What the connection alone sets.
    let mut reference = HeaderMap::new();
    tag(&mut reference, &tags, &tagging, 0, false);

    let client = tag(&mut headers, &tags, &tagging, hops, external);

    let replaced = [
        &tagging.origin,
        &tagging.trust_domain,
        &tagging.principal,
        &X_FORWARDED_CLIENT_CERT,
        &X_FORWARDED_PROTO,
    ];
    for name in replaced {
        assert_eq!(
            values(&headers, name),
            values(&reference, name),
            "{name} keeps a client value"
        );
    }

    let peer_ip = peer_addr.ip();
    let sent: Vec<&[u8]> = received
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        // An empty value adds no element (Envoy appends without a delimiter to an empty one).
        .filter(|v| !v.trim_ascii().is_empty())
        .collect();
    let mut chain = sent.join(&b", "[..]);
    if !chain.is_empty() {
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(peer_ip.to_string().as_bytes());
    assert_eq!(
        values(&headers, &X_FORWARDED_FOR),
        [HeaderValue::from_bytes(&chain).unwrap()],
        "x-forwarded-for is not the client's chain and the peer"
    );

    if hops == 0 || client.address != peer_ip {
        let from_client = sent
            .iter()
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|e| e.trim().parse::<IpAddr>() == Ok(client.address));
        assert!(
            client.address == peer_ip || (hops > 0 && from_client),
            "trusted client address {} out of nowhere",
            client.address
        );
    }
    let external_address = values(&headers, &X_ENVOY_EXTERNAL_ADDRESS);
    if external {
        let text = external_address
            .first()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(external_address.len(), 1);
        assert_eq!(text.parse::<IpAddr>().ok(), Some(client.address));
    } else {
        assert!(
            external_address.is_empty(),
            "a client's x-envoy-external-address survived"
        );
    }

    for name in received.keys().chain(headers.keys()) {
        if !owned_names.contains(name) {
            assert_eq!(
                values(&headers, name),
                values(&received, name),
                "{name} is not owned but changed"
            );
        }
    }

    // The same headers as request trailers.
    let underscores = if allow_underscores {
        UnderscoreHeaders::Allow
    } else {
        UnderscoreHeaders::DropHeader
    };
    let owned = Owned::new(&tagging, underscores);
    let mut trailers = received;
    owned.strip_trailers(&mut trailers);
    for name in trailers.keys() {
        assert!(!owned.contains(name), "trailer {name} is owned");
        assert!(
            !owned.spelled_with_underscores(name.as_str()),
            "trailer {name}"
        );
        if !allow_underscores {
            assert!(!name.as_str().contains('_'), "trailer {name}");
        }
    }
});
