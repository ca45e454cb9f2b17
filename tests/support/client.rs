//! A real client: rustls with a workload certificate, any SNI and ALPN, then hyper HTTP/1.1 or
//! HTTP/2 as ALPN chose.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use meshgate_pki::Workload;

use super::TIMEOUT;

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Reads the whole response.
    pub async fn read(response: http::Response<hyper::body::Incoming>) -> Result<Self, String> {
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// The body as the JSON `meshgate echo` sends.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The single value of a request header as the echo backend saw it.
    pub fn echoed(&self, name: &str) -> Option<String> {
        let values = self.json()["headers"][name].as_array()?.clone();
        assert_eq!(
            values.len(),
            1,
            "{name} arrived {} times: {values:?}",
            values.len()
        );
        values[0].as_str().map(str::to_string)
    }
}

/// A TLS client configuration.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
}

impl Client {
    /// A client presenting `identity` (or no certificate), trusting `roots_pem`, offering `alpn`.
    pub fn new(identity: Option<&Workload>, roots_pem: &str, alpn: &[&[u8]]) -> Self {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        Self::build(
            identity,
            roots_pem,
            alpn,
            provider,
            rustls::DEFAULT_VERSIONS,
        )
    }

    /// A TLS 1.2-only client offering only `suites`.
    pub fn tls12(
        identity: Option<&Workload>,
        roots_pem: &str,
        suites: &[rustls::SupportedCipherSuite],
    ) -> Self {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = suites.to_vec();
        Self::build(
            identity,
            roots_pem,
            &[b"http/1.1"],
            provider,
            &[&rustls::version::TLS12],
        )
    }

    fn build(
        identity: Option<&Workload>,
        roots_pem: &str,
        alpn: &[&[u8]],
        provider: rustls::crypto::CryptoProvider,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(provider);
        let verifier = Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap(),
        ));
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match identity {
            Some(w) => {
                let chain = CertificateDer::pem_slice_iter(w.chain_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(w.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Self {
            config: Arc::new(config),
        }
    }

    /// The plain `h2, http/1.1` client most HTTP clients are.
    pub fn plain(identity: Option<&Workload>, roots_pem: &str) -> Self {
        Self::new(identity, roots_pem, &[b"h2", b"http/1.1"])
    }

    /// Connects and completes the TLS handshake.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        self.handshake(TcpStream::connect(addr).await?, sni).await
    }

    /// As `connect`, from the local address `from` (any 127.x.y.z works on loopback).
    pub async fn connect_from(
        &self,
        from: std::net::IpAddr,
        addr: std::net::SocketAddr,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(from, 0))?;
        self.handshake(socket.connect(addr).await?, sni).await
    }

    /// The TLS handshake over `tcp`, with `sni`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }

    /// One GET on a new connection. `authority` goes into Host (HTTP/1.1) or :authority (h2).
    pub async fn get(
        &self,
        addr: std::net::SocketAddr,
        sni: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        tokio::time::timeout(TIMEOUT, self.get_inner(addr, sni, authority, path, headers))
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn get_inner(
        &self,
        addr: std::net::SocketAddr,
        sni: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let tls = self
            .connect(addr, sni)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let h2 = matches!(
            tls.get_ref().1.alpn_protocol(),
            Some(b"h2") | Some(b"istio-h2")
        );
        let (mut conn, _task) = Conn::open(tls, h2).await?;
        let response = conn.send(authority, path, headers).await?;
        Reply::read(response).await
    }
}

/// Verifies the server's chain to the bundle but not its name: an Istio gateway presents a
/// workload certificate whose only SAN is its SPIFFE ID.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// One plaintext HTTP/1.1 GET, as a local app sends it to the outbound listener.
pub async fn plain_get(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    plain_request(addr, http::Method::GET, host, path, headers, Bytes::new()).await
}

/// One plaintext HTTP/1.1 request with a body, on a connection of its own.
pub async fn plain_request(
    addr: std::net::SocketAddr,
    method: http::Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let run = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("h1: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = send
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .map_err(|e| format!("request: {e}"))?;
        Reply::read(response).await
    };
    tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// One HTTP/1.1 or HTTP/2 client connection kept open across requests, over any stream.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// The HTTP handshake over `io` (HTTP/2 when `h2`), and the connection's task, which ends
    /// `true` when the server closed the connection cleanly.
    pub async fn open<I>(io: I, h2: bool) -> Result<(Self, tokio::task::JoinHandle<bool>), String>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        Ok(if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2: {e}"))?;
            (
                Conn::H2(send),
                tokio::spawn(async move { conn.await.is_ok() }),
            )
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("h1: {e}"))?;
            (
                Conn::H1(send),
                tokio::spawn(async move { conn.await.is_ok() }),
            )
        })
    }

    /// A GET for `path` from `authority` with `headers`: origin-form with Host on HTTP/1.1,
    /// the authority in the URI on HTTP/2.
    pub async fn send(
        &mut self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.request(http::Method::GET, authority, path, headers)
            .await
    }

    /// As `send`, with any method.
    pub async fn request(
        &mut self,
        method: http::Method,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let h2 = matches!(self, Conn::H2(_));
        let mut req = if h2 {
            Request::builder()
                .method(method)
                .uri(format!("https://{authority}{path}"))
                .version(Version::HTTP_2)
        } else {
            Request::builder()
                .method(method)
                .uri(path)
                .header("host", authority)
                .version(Version::HTTP_11)
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        match self {
            Conn::H1(s) => s.send_request(req).await,
            Conn::H2(s) => s.send_request(req).await,
        }
        .map_err(|e| format!("request: {e}"))
    }

    /// GETs `path` from `authority` and reads the whole body.
    pub async fn get(&mut self, authority: &str, path: &str) -> (StatusCode, Bytes) {
        let response = self.send(authority, path, &[]).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }
}
