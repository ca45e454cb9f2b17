//! How upstream connections are made: TCP (names resolved when connecting, nodelay, keepalive,
//! a connect timeout), then TLS when the backend's DestinationRule originates it.

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use meshgate_config::model::TcpKeepalive;

use crate::tls::client::Origination;

/// Makes connections for one backend.
#[derive(Debug, Clone)]
pub struct Connector {
    connect_timeout: Duration,
    keepalive: socket2::TcpKeepalive,
    tls: Option<Origination>,
}

/// Why a connection could not be made. All of them answer 503.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection (TCP, then TLS when originated) within `connectTimeout`.
    #[error("connect timeout after {0:?}")]
    Timeout(Duration),
    /// Refused, unreachable, or a name that does not resolve.
    #[error("connect: {0}")]
    Tcp(#[source] io::Error),
    /// The TLS handshake failed: wrong root, identity not allowed, refused certificate; said
    /// as a refused client is (reason, then what was expected and presented).
    #[error("TLS handshake refused ({reason}): {0}", reason = .0.reason())]
    Tls(#[source] crate::identity::PeerError),
    /// The HTTP handshake on the new connection failed.
    #[error("HTTP handshake: {0}")]
    Http(#[source] hyper::Error),
    /// The HTTP/2 connection this request waited for, which another request was opening,
    /// failed to open.
    #[error("the HTTP/2 connection this request waited for failed to open")]
    Shared,
}

impl Connector {
    pub fn new(
        connect_timeout: Duration,
        keepalive: &TcpKeepalive,
        tls: Option<Origination>,
    ) -> Self {
        let mut probes = socket2::TcpKeepalive::new().with_time(keepalive.time);
        if let Some(i) = keepalive.interval {
            probes = probes.with_interval(i);
        }
        if let Some(n) = keepalive.probes {
            probes = probes.with_retries(n);
        }
        Self {
            connect_timeout,
            keepalive: probes,
            tls,
        }
    }

    /// A new connection to `host:port` (a name is resolved now, every address tried), with
    /// `preface` (a PROXY header) written before anything else, TLS included. All of it within
    /// `connectTimeout`, as Envoy's connect timer runs until the connection is up, its TLS
    /// handshake done: an upstream that takes the TCP connection and never answers TLS does
    /// not hold the request.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        preface: Option<&[u8]>,
    ) -> Result<UpstreamStream, ConnectError> {
        tokio::time::timeout(
            self.connect_timeout,
            self.connect_within(host, port, preface),
        )
        .await
        .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
    }

    async fn connect_within(
        &self,
        host: &str,
        port: u16,
        preface: Option<&[u8]>,
    ) -> Result<UpstreamStream, ConnectError> {
        let mut tcp = TcpStream::connect((host, port))
            .await
            .map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&self.keepalive);
        if let Some(preface) = preface {
            tcp.write_all(preface).await.map_err(ConnectError::Tcp)?;
        }
        match &self.tls {
            None => Ok(Either::Left(tcp)),
            Some(o) => {
                let tls = TlsConnector::from(o.config.clone())
                    .connect(o.server_name.clone(), tcp)
                    .await
                    .map_err(|e| ConnectError::Tls(crate::tls::verify::peer_error(e)))?;
                Ok(Either::Right(Box::new(tls)))
            }
        }
    }
}

/// A connection to an upstream, plaintext (`Left`) or TLS (`Right`, boxed: the TLS state is
/// large and most upstreams are plaintext).
pub type UpstreamStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_follows_the_destination_rule() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keepalive = TcpKeepalive {
            time: Duration::from_secs(30),
            interval: Some(Duration::from_secs(5)),
            probes: Some(3),
        };
        let connector = Connector::new(Duration::from_secs(1), &keepalive, None);
        let Either::Left(tcp) = connector.connect("127.0.0.1", port, None).await.unwrap() else {
            panic!("plaintext expected")
        };
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
    }
}
