//! PROXY protocol in (HAProxy's v1 text and v2 binary headers, parsed by the `ppp` crate): on a
//! Gateway listener behind an L4 load balancer, a connection from a trusted peer starts with a
//! header that names the client; its source address then stands for the client everywhere
//! (tags, `x-forwarded-for`, `remoteIpBlocks` and `source.ip`, the access log), as Envoy's
//! proxy_protocol listener filter does. A `LOCAL` header (v2's health checks) keeps the peer's
//! own address and the connection is served as any other.
//!
//! The header is read with `peek` and then consumed exactly, so the TLS handshake or the
//! ClientHello that follows is read from the socket untouched.
//!
//! PROXY protocol out (`header`): what a DestinationRule's `proxyProtocol` puts at the start of
//! a backend connection of a `tcp` or `tls` route.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v1;
use ppp::v2;
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use meshgate_config::model::ProxyVersion;

/// The most a header may take: v2 with a few TLVs (AWS and GCP load balancers add some), or
/// with the SPIFFE ID TLV `header` writes (an ID is at most 2048 bytes).
const MAX_HEADER: usize = 4096;

/// The longest v1 header, its `\r\n` included (HAProxy's specification).
const MAX_V1: usize = 107;

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// `PROXY`: the client's address.
    Proxied(SocketAddr),
    /// `LOCAL` (v2), or v1 `UNKNOWN`: the load balancer itself; the peer's address stands.
    Local,
}

/// Reads and consumes the header at the start of `stream`, within `timeout`.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> Result<Header, String> {
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no PROXY header within {timeout:?}")),
    }
}

async fn read_header(stream: &mut TcpStream) -> Result<Header, String> {
    // On the heap, for this read only: not part of every connection's task.
    let mut buf = vec![0u8; MAX_HEADER];
    let mut seen = 0;
    loop {
        let n = stream
            .peek(&mut buf)
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        if n == 0 {
            return Err("closed before a PROXY header".into());
        }
        // `peek` fills at most `buf`.
        let Some(peeked) = buf.get(..n) else {
            return Err("PROXY header too large".into());
        };
        // A v1 header is whole only with its `\r\n`: before that, `ppp` may take a cut
        // through it (before the destination port, say) for a bad header.
        let v1_open =
            peeked.starts_with(b"PROXY ") && !peeked.windows(2).any(|w| w == b"\r\n") && n < MAX_V1;
        let parsed = HeaderResult::parse(peeked);
        if v1_open || parsed.is_incomplete() {
            if n == MAX_HEADER {
                return Err("PROXY header too large".into());
            }
            if n == seen {
                // Peeking returns at once while any byte is there: wait for more.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen = n;
            continue;
        }
        let (length, header) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), from_v1(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.header.len(), from_v2(h.command, &h.addresses)),
            HeaderResult::V1(Err(e)) => return Err(format!("not a PROXY header: {e}")),
            HeaderResult::V2(Err(e)) => return Err(format!("not a PROXY header: {e}")),
        };
        // The header again, now taken off the socket; what follows stays there. It was parsed
        // from what was peeked, so it fits.
        let Some(header_bytes) = buf.get_mut(..length) else {
            return Err("PROXY header too large".into());
        };
        stream
            .read_exact(header_bytes)
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        return Ok(header);
    }
}

fn from_v1(addresses: &v1::Addresses) -> Header {
    match addresses {
        v1::Addresses::Tcp4(a) => {
            Header::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        v1::Addresses::Tcp6(a) => {
            Header::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        v1::Addresses::Unknown => Header::Local,
    }
}

fn from_v2(command: v2::Command, addresses: &v2::Addresses) -> Header {
    match (command, addresses) {
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
            Header::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
            Header::Proxied(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        _ => Header::Local,
    }
}

/// The PROXY header a backend's connection opens with (a DestinationRule's `proxyProtocol`):
/// the client at `source` reached us at `destination`. On v2, `spiffe` adds a TLV of that type
/// holding the client's SPIFFE ID (UTF-8), which the v1 text form cannot carry. Addresses of two
/// families (never the case on one socket) give v1's `UNKNOWN` and v2's unspecified form.
pub fn header(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
    spiffe: Option<(u8, &str)>,
) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => {
            let build = |tlv: Option<(u8, &str)>| {
                let builder = v2::Builder::with_addresses(
                    v2::Version::Two | v2::Command::Proxy,
                    v2::Protocol::Stream,
                    (source, destination),
                );
                match tlv {
                    Some((kind, id)) => builder.write_tlv(kind, id.as_bytes())?,
                    None => builder,
                }
                .build()
            };
            // Writing to a Vec fails only past the 64 KiB a header may hold, which a SPIFFE ID
            // (at most 2048 bytes) does not reach.
            build(spiffe).or_else(|_| build(None)).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_out_read_back_as_written() {
        let (client, local) = (
            "10.1.2.3:40000".parse().unwrap(),
            "192.168.0.9:9443".parse().unwrap(),
        );
        assert_eq!(
            header(
                ProxyVersion::V1,
                client,
                local,
                Some((0xE0, "spiffe://a/b"))
            ),
            b"PROXY TCP4 10.1.2.3 192.168.0.9 40000 9443\r\n"
        );
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(
            header(ProxyVersion::V1, v6, local, None),
            b"PROXY UNKNOWN\r\n"
        );
        let bytes = header(
            ProxyVersion::V2,
            client,
            local,
            Some((0xE0, "spiffe://a/b")),
        );
        let parsed = v2::Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(parsed.command, v2::Command::Proxy);
        assert_eq!(parsed.addresses, v2::Addresses::from((client, local)));
        let tlvs: Vec<_> = parsed.tlvs().map(|t| t.unwrap()).collect();
        assert_eq!(tlvs.len(), 1);
        assert_eq!(tlvs[0].kind, 0xE0);
        assert_eq!(&*tlvs[0].value, b"spiffe://a/b");
    }

    /// A connected pair on 127.0.0.1: what the client writes, `read` reads on the server.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (client, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn a_v1_header_cut_anywhere_is_read_once_whole() {
        use tokio::io::AsyncWriteExt;
        let whole = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET";
        // Cut before the destination port's last digit, and before its first.
        for cut in [29, 30] {
            let (mut client, mut server) = pair().await;
            client.write_all(&whole[..cut]).await.unwrap();
            let reading = tokio::spawn(async move {
                let header = read(&mut server, Duration::from_secs(5)).await;
                let mut rest = [0u8; 3];
                server.read_exact(&mut rest).await.unwrap();
                (header, rest)
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&whole[cut..]).await.unwrap();
            let (header, rest) = reading.await.unwrap();
            assert_eq!(
                header,
                Ok(Header::Proxied("1.2.3.4:1".parse().unwrap())),
                "{cut}"
            );
            assert_eq!(&rest, b"GET");
        }
    }

    #[tokio::test]
    async fn what_header_writes_read_reads_even_with_the_longest_spiffe_id() {
        use tokio::io::AsyncWriteExt;
        let id = format!("spiffe://example.com/{}", "a".repeat(2048 - 21));
        assert_eq!(id.len(), 2048);
        let (client, local) = (
            "10.1.2.3:40000".parse().unwrap(),
            "[2001:db8::9]:9443".parse().unwrap(),
        );
        let written = header(ProxyVersion::V2, client, local, Some((0xE0, &id)));
        assert!(written.len() > 2048);
        let (mut tx, mut rx) = pair().await;
        tx.write_all(&written).await.unwrap();
        // Mixed families: the unspecified form, which reads as LOCAL.
        assert_eq!(
            read(&mut rx, Duration::from_secs(5)).await,
            Ok(Header::Local)
        );
        let local: SocketAddr = "192.168.0.9:9443".parse().unwrap();
        let written = header(ProxyVersion::V2, client, local, Some((0xE0, &id)));
        tx.write_all(&written).await.unwrap();
        assert_eq!(
            read(&mut rx, Duration::from_secs(5)).await,
            Ok(Header::Proxied(client))
        );
    }
}
