//! The server side of the handshake: TCP stream -> TLS stream, peer identity and HTTP version.
//!
//! Reads the ClientHello first, so that the SNI can be checked against the listener's Gateway
//! server hosts (Istio's `outbound_.<port>_.<subset>_.<host>` form included) and so that a
//! client whose ALPN list shares nothing with ours still completes the handshake (DESIGN.md:
//! a handshake must not fail only because of ALPN). Istio's `istio-h2` selects HTTP/2;
//! `istio-http/1.x` and `istio` select HTTP/1.1; `istio-peer-exchange` is never selected.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{Acceptor, NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use meshgate_config::model::{ServerHost, ServerTls, TlsVersion};
use meshgate_config::Model;

use super::credentials::{Credentials, OwnCertificate};
use super::verify::{peer_error, SpiffeClientVerifier};
use crate::identity::{peer_identity, PeerError, PeerIdentity};

/// The HTTP version a connection speaks, from ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// The two server configs of one listener: with our ALPN list, and with none for clients
/// whose list shares nothing with ours.
#[derive(Debug, Clone)]
pub struct ServerTlsConfigs {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
}

impl ServerTlsConfigs {
    /// Builds the configs for an ISTIO_MUTUAL listener.
    pub fn new(
        credentials: &Credentials,
        tls: &ServerTls,
        model: &Model,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::Error> {
        let versions: Vec<_> = [
            (TlsVersion::V1_2, &rustls::version::TLS12),
            (TlsVersion::V1_3, &rustls::version::TLS13),
        ]
        .into_iter()
        .filter(|(v, _)| *v >= tls.min_version && *v <= tls.max_version)
        .map(|(_, v)| v)
        .collect();
        let issuers = super::credentials::issuer_bindings(&model.trust.issuers)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = SpiffeClientVerifier::new(
            credentials.roots.clone(),
            model.trust.clone(),
            issuers,
            provider.clone(),
        )
        .map_err(|e| rustls::Error::General(format!("trust bundle: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(OwnCertificate(credentials.certified_key.clone())));
        if model.proxy.session_resumption {
            config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        } else {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        let without_alpn = Arc::new(config.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            with_alpn: Arc::new(config),
            without_alpn,
        })
    }
}

/// Completes the server handshake, or says why the peer was refused.
pub async fn handshake(
    stream: TcpStream,
    configs: &ServerTlsConfigs,
    servers: &[ServerHost],
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, PeerIdentity, HttpVersion), PeerError> {
    // Boxed: the handshake's state is large and needed only until it ends; inline it would sit
    // in every connection's task for the connection's whole life, beside the HTTP state.
    let inner = Box::pin(handshake_inner(stream, configs, servers));
    match tokio::time::timeout(timeout, inner).await {
        Ok(result) => result,
        Err(_) => Err(PeerError::Timeout),
    }
}

async fn handshake_inner(
    stream: TcpStream,
    configs: &ServerTlsConfigs,
    servers: &[ServerHost],
) -> Result<(TlsStream<TcpStream>, PeerIdentity, HttpVersion), PeerError> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
        .await
        .map_err(peer_error)?;
    let hello = start.client_hello();
    if let Some(sni) = hello.server_name() {
        if !sni_admitted(sni, servers) {
            return Err(PeerError::SniMismatch(sni.to_string()));
        }
    }
    let shares_alpn = hello
        .alpn()
        .is_none_or(|mut offered| offered.any(|p| ALPN.contains(&p)));
    let config = if shares_alpn {
        &configs.with_alpn
    } else {
        &configs.without_alpn
    };
    let tls = start
        .into_stream(config.clone())
        .await
        .map_err(peer_error)?;
    let (_, conn) = tls.get_ref();
    // rustls verified the chain (or resumed a session that it had verified); the leaf is there.
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(PeerError::NoCertificate)?;
    let peer = peer_identity(leaf)?;
    let version = match conn.alpn_protocol() {
        Some(b"h2") | Some(b"istio-h2") => HttpVersion::Http2,
        _ => HttpVersion::Http1,
    };
    Ok((tls, peer, version))
}

/// Whether an SNI names a host of the listener's servers, directly or in Istio's
/// `outbound_.<port>_.<subset>_.<host>` form.
fn sni_admitted(sni: &str, servers: &[ServerHost]) -> bool {
    let istio_host = istio_sni_host(sni);
    servers
        .iter()
        .any(|s| s.host.matches(sni) || istio_host.is_some_and(|h| s.host.matches(h)))
}

/// The host inside an Istio outbound SNI: `outbound_.80_._.httpbin.example.com` -> `httpbin.example.com`.
fn istio_sni_host(sni: &str) -> Option<&str> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (_port, rest) = rest.split_once("_.")?;
    let (_subset, host) = rest.split_once("_.")?;
    (!host.is_empty()).then_some(host)
}

/// Our ALPN list, in preference order. `istio-peer-exchange` is deliberately absent.
const ALPN: [&[u8]; 6] = [
    b"h2",
    b"http/1.1",
    b"istio-h2",
    b"istio-http/1.1",
    b"istio-http/1.0",
    b"istio",
];

/// Sessions kept for TLS 1.3 resumption (stateful tickets) per listener.
const SESSION_CACHE_SIZE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_outbound_sni() {
        assert_eq!(
            istio_sni_host("outbound_.80_._.httpbin.example.com"),
            Some("httpbin.example.com")
        );
        assert_eq!(
            istio_sni_host("outbound_.443_.v1_.reviews.default.svc.cluster.local"),
            Some("reviews.default.svc.cluster.local")
        );
        assert_eq!(istio_sni_host("httpbin.example.com"), None);
        assert_eq!(istio_sni_host("outbound_.80_._."), None);
    }
}
