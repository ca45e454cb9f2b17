//! ClientHellos as rustls writes them (with its post-quantum key share), whole, in pieces and
//! re-cut into several records; and what is not one.

use std::sync::Arc;

use super::*;

/// The first flight of a rustls client: its ClientHello, in one record.
fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// The same handshake bytes cut into records of at most `size` bytes.
fn recut(hello: &[u8], size: usize) -> Vec<u8> {
    let message = &hello[5..];
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

const SNI: &str = "outbound_.9080_.v1_.reviews.default.svc.cluster.local";

fn expected() -> Hello {
    Hello {
        sni: Some(SNI.to_string()),
        alpn: vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()],
    }
}

#[test]
fn a_post_quantum_client_hello_is_read_whole_and_only_whole() {
    let hello = client_hello(SNI, &[b"istio-peer-exchange", b"istio"]);
    assert!(
        hello.len() > 1200,
        "a post-quantum key share: {} bytes",
        hello.len()
    );
    assert_eq!(parse(&hello), Parsed::Hello(expected()));
    for cut in 0..hello.len() {
        assert_eq!(parse(&hello[..cut]), Parsed::Partial, "cut at {cut}");
    }
    // What follows the ClientHello is not its business.
    let mut more = hello.clone();
    more.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
    assert_eq!(parse(&more), Parsed::Hello(expected()));
}

#[test]
fn a_client_hello_over_several_records_is_gathered() {
    let hello = client_hello(SNI, &[b"istio-peer-exchange", b"istio"]);
    for size in [1, 7, 100, 512] {
        let records = recut(&hello, size);
        assert_eq!(
            parse(&records),
            Parsed::Hello(expected()),
            "records of {size}"
        );
        assert_eq!(parse(&records[..records.len() - 1]), Parsed::Partial);
    }
}

#[test]
fn no_alpn_and_plain_names_are_read_as_sent() {
    let hello = client_hello("example.com", &[]);
    assert_eq!(
        parse(&hello),
        Parsed::Hello(Hello {
            sni: Some("example.com".into()),
            alpn: Vec::new()
        })
    );
}

#[test]
fn what_is_not_a_client_hello_is_refused_with_a_reason() {
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        Parsed::Invalid("not a TLS handshake record")
    );
    // A record that says it holds more than TLS allows.
    assert_eq!(
        parse(&[22, 3, 1, 0xff, 0xff, 1]),
        Parsed::Invalid("bad TLS record length")
    );
    // A handshake message that is not a ClientHello.
    assert_eq!(
        parse(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
        Parsed::Invalid("first handshake message is not a ClientHello")
    );
    // A ClientHello whose extensions run past its end.
    let mut hello = client_hello(SNI, &[b"istio"]);
    let last = hello.len() - 1;
    hello.truncate(last);
    let len = (hello.len() - 5) as u16;
    hello[3..5].copy_from_slice(&len.to_be_bytes());
    let body = (hello.len() - 9) as u32;
    hello[6..9].copy_from_slice(&body.to_be_bytes()[1..]);
    assert_eq!(parse(&hello), Parsed::Invalid("malformed ClientHello"));
    // Never more than MAX_HELLO is waited for.
    let mut big = vec![22, 3, 1, 0x40, 0x00, 1, 0x00, 0xff, 0xff];
    big.resize(MAX_HELLO + 10, 0);
    assert_eq!(parse(&big), Parsed::Invalid("ClientHello too large"));
    // Nor in one-byte records, each a 5-byte header and one byte of a ClientHello that claims
    // 16,000 bytes: refused once MAX_HELLO bytes are buffered, though no record header is whole.
    let message = [&[1u8, 0x00, 0x3e, 0x80][..], &[0u8; 4000][..]].concat();
    let tiny = recut(&[&[0u8; 5][..], &message[..]].concat(), 1);
    // Cut three bytes into a record header, just past MAX_HELLO (and six bytes before it).
    let at_limit = MAX_HELLO / 6 * 6 + 9;
    assert_eq!(parse(&tiny[..at_limit - 6]), Parsed::Partial);
    assert_eq!(
        parse(&tiny[..at_limit]),
        Parsed::Invalid("ClientHello too large")
    );
}
