//! A TLS server that records what each client sent: SNI, ALPN list, and the URI SAN of its
//! certificate; then answers HTTP/1.1 `200 observed`. It requires a client certificate chained
//! to the given root, as an Istio gateway does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::LazyConfigAcceptor;

use meshgate_pki::Workload;

/// What one client sent.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub client_uri: Option<String>,
    pub negotiated: Option<String>,
    pub resumed: bool,
}

pub struct Observer {
    pub address: SocketAddr,
    pub seen: Arc<Mutex<Vec<Observed>>>,
}

impl Observer {
    /// Serves with `identity`, requiring client certificates chained to `root_pem`, offering
    /// `alpn` (in order).
    pub async fn start(identity: &Workload, root_pem: &str, alpn: &[&[u8]]) -> Self {
        Self::start_with(identity, root_pem, alpn, true).await
    }

    /// As `start`; without `client_auth` no client certificate is asked for (a plain TLS
    /// server, for SIMPLE origination).
    pub async fn start_with(
        identity: &Workload,
        root_pem: &str,
        alpn: &[&[u8]],
        client_auth: bool,
    ) -> Self {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = if client_auth {
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap()
        } else {
            WebPkiClientVerifier::no_client_auth()
        };
        let chain = CertificateDer::pem_slice_iter(identity.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let config = config.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let Ok(start) = LazyConfigAcceptor::new(Acceptor::default(), tcp).await else {
                        return;
                    };
                    let hello = start.client_hello();
                    let mut observed = Observed {
                        sni: hello.server_name().map(str::to_string),
                        alpn: hello
                            .alpn()
                            .map(|a| a.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                            .unwrap_or_default(),
                        ..Observed::default()
                    };
                    let Ok(tls) = start.into_stream(config).await else {
                        record.lock().unwrap().push(observed);
                        return;
                    };
                    let conn = tls.get_ref().1;
                    observed.negotiated = conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    observed.resumed =
                        conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    observed.client_uri = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|leaf| {
                            let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
                            let san = cert.subject_alternative_name().ok()??;
                            san.value.general_names.iter().find_map(|n| match n {
                                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                                _ => None,
                            })
                        });
                    record.lock().unwrap().push(observed);
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"observed"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { address, seen }
    }

    pub fn seen(&self) -> Vec<Observed> {
        self.seen.lock().unwrap().clone()
    }
}
