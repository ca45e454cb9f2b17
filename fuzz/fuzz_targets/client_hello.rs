//! `passthrough::hello::parse`, the ClientHello reader of passthrough listeners, on arbitrary
//! bytes (as read so far from a connection; the reader is called again as more arrive).
//!
//! Checks: it never panics; the SNI and ALPN protocols it returns are bytes of the handshake the records carry; a
//! whole ClientHello stays the same whole ClientHello when more bytes follow it, and a prefix
//! that is already whole says what the whole input says; and `Partial` (read more) is only
//! answered while fewer than `MAX_HELLO` bytes have been read, the bound its documentation
//! gives ("records included"), so a client cannot make the proxy buffer more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_proxy::passthrough::hello::{parse, Parsed, MAX_HELLO};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The handshake bytes: the fragments of the TLS records at the start of `data`, joined.
fn handshake(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [_, _, _, hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        out.extend_from_slice(&tail[..n]);
        rest = &tail[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    match &parsed {
        Parsed::Hello(hello) => {
            let carried = handshake(data);
            if let Some(sni) = &hello.sni {
                assert!(contains(&carried, sni.as_bytes()));
            }
            for protocol in &hello.alpn {
                assert!(contains(&carried, protocol));
            }
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x00]);
            assert_eq!(
                parse(&longer),
                parsed,
                "bytes after a whole ClientHello changed it"
            );
        }
        Parsed::Partial => {
            assert!(
                data.len() < MAX_HELLO,
                "Partial after {} bytes: the buffer may grow past MAX_HELLO",
                data.len()
            );
        }
        Parsed::Invalid(_) => {}
    }
    let prefix = &data[..data.len() / 2];
    if let hello @ Parsed::Hello(_) = parse(prefix) {
        assert_eq!(parsed, hello, "a whole prefix and the whole input disagree");
    }
});
