//! The server side of the handshake: TCP stream -> TLS stream, peer and HTTP version.
//!
//! Reads the ClientHello first, so that the SNI chooses among the listener's Gateway servers
//! (Istio's `outbound_.<port>_.<subset>_.<host>` form included) the TLS settings to use —
//! `ISTIO_MUTUAL` with our identity, `SIMPLE` or `MUTUAL` with the server's certificate files —
//! and so that a client whose ALPN list shares nothing with ours still completes the handshake
//! (a handshake must not fail only because the ALPN lists share nothing). Istio's `istio-h2` selects HTTP/2;
//! `istio-http/1.x` and `istio` select HTTP/1.1; `istio-peer-exchange` is never selected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::server::{
    Acceptor, NoServerSessionStorage, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use meshgate_config::model::{
    HostMatcher, Listener, ListenerProtocol, ServerHost, ServerTls, ServerTlsMode, TlsVersion,
};
use meshgate_config::Model;

use super::credentials::{Credentials, OwnCertificate};
use super::files::{LoadedServerCertificate, ServerFiles};
use super::verify::{peer_error, ChainLimit, SpiffeClientVerifier};
use crate::identity::{
    client_certificate, peer_identity, ClientCertificate, PeerError, PeerIdentity,
};

/// The HTTP version a connection speaks, from ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// What a handshake tells about the client.
#[derive(Debug)]
pub enum Peer {
    /// `ISTIO_MUTUAL`: a verified SPIFFE identity.
    Spiffe(PeerIdentity),
    /// `MUTUAL`: a client certificate chained to the server's CAs.
    Certificate(ClientCertificate),
    /// `SIMPLE`: no client certificate.
    Anonymous,
}

/// A completed handshake.
pub struct Accepted {
    /// Boxed: a connection's futures pass it on by value, and an async fn keeps room for each
    /// argument twice (1.2 KiB each time, in the connection's task for its life).
    pub tls: Box<TlsStream<TcpStream>>,
    pub peer: Peer,
    pub version: HttpVersion,
    /// The TLS group (`Listener::tls` index) the SNI chose: the request's host must be one of
    /// its servers' hosts.
    pub group: usize,
    /// When the ClientHello had been read: where Envoy's listener filters end and a TCP
    /// route's `maxConnectionDuration` starts.
    pub hello_at: Instant,
}

/// The server configs of one HTTPS listener: one group per TLS server, chosen by SNI.
#[derive(Debug, Clone)]
pub struct ServerTlsConfigs {
    groups: Vec<Group>,
}

/// The two configs of one group: with our ALPN list, and with none for clients whose list
/// shares nothing with ours.
#[derive(Debug, Clone)]
struct Group {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
    /// The protocols `with_alpn` offers.
    alpn: &'static [&'static [u8]],
    mode: GroupMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupMode {
    IstioMutual,
    Simple,
    /// A client certificate is required (`MUTUAL`) or optional (`OPTIONAL_MUTUAL`).
    Mutual {
        required: bool,
    },
}

impl ServerTlsConfigs {
    /// Builds the configs of every TLS group of `listener`, with the certificate files read
    /// in `files` (for SIMPLE and MUTUAL groups) and our credentials (ISTIO_MUTUAL).
    pub fn new(
        credentials: Option<&Credentials>,
        listener: &Listener,
        files: &ServerFiles,
        issuers: &[(String, Vec<String>)],
        model: &Model,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, rustls::Error> {
        let alpn: &'static [&'static [u8]] = match listener.protocol {
            ListenerProtocol::Tcp => &TCP_ALPN,
            _ => &ALPN,
        };
        // One session store for the listener's servers: a session is resumed only with the
        // SNI it was made with (rustls, RFC 6066), and an SNI always chooses the same server,
        // so no session crosses servers; one store keeps a port of many servers from
        // reserving one each.
        let sessions: Arc<dyn StoresServerSessions> = if model.proxy.session_resumption {
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)
        } else {
            Arc::new(NoServerSessionStorage {})
        };
        let port = Port {
            credentials,
            issuers,
            alpn,
            model,
            provider,
            sessions,
        };
        let mut groups = Vec::new();
        for (i, tls) in listener.tls.iter().enumerate() {
            groups.push(group(&port, tls, files.get(listener, i))?);
        }
        Ok(Self { groups })
    }
}

/// What every TLS server of a listener shares.
struct Port<'a> {
    credentials: Option<&'a Credentials>,
    issuers: &'a [(String, Vec<String>)],
    alpn: &'static [&'static [u8]],
    model: &'a Model,
    provider: &'a Arc<CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions>,
}

fn group(
    port: &Port<'_>,
    tls: &ServerTls,
    files: Option<&LoadedServerCertificate>,
) -> Result<Group, rustls::Error> {
    let (credentials, issuers, alpn) = (port.credentials, port.issuers, port.alpn);
    let (model, provider, sessions) = (port.model, port.provider, &port.sessions);
    let versions: Vec<_> = [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| *v >= tls.min_version && *v <= tls.max_version)
    .map(|(_, v)| v)
    .collect();
    let provider = super::with_cipher_suites(provider, &tls.cipher_suites);
    let twins = |files: &LoadedServerCertificate| files.resolver(&provider, &versions);
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let missing = |what: &str| rustls::Error::General(format!("{what} not loaded"));
    let most = model.proxy.limits.max_certificate_chain_length as usize;
    let (mut config, mode) = match &tls.mode {
        ServerTlsMode::IstioMutual => {
            let credentials = credentials.ok_or_else(|| missing("the MeshGateway identity"))?;
            let verifier = SpiffeClientVerifier::new(
                &credentials.roots,
                model.trust.clone(),
                issuers.to_vec(),
                provider.clone(),
                &credentials.revocation,
            )
            .map_err(|e| rustls::Error::General(format!("trust bundle: {e}")))?;
            let verifier = ChainLimit {
                inner: Arc::new(verifier),
                most,
                checks: tls.client_checks.clone(),
            };
            let config = builder
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(Arc::new(OwnCertificate(credentials.certified_key.clone())));
            (config, GroupMode::IstioMutual)
        }
        ServerTlsMode::Simple(_) => {
            let files = files.ok_or_else(|| missing("the server certificate"))?;
            let config = builder
                .with_no_client_auth()
                .with_cert_resolver(twins(files));
            (config, GroupMode::Simple)
        }
        ServerTlsMode::Mutual(_) | ServerTlsMode::OptionalMutual(_) => {
            let required = matches!(tls.mode, ServerTlsMode::Mutual(_));
            let files = files.ok_or_else(|| missing("the server certificate"))?;
            let roots = files
                .client_roots
                .clone()
                .ok_or_else(|| missing("caCertificates"))?;
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots,
                provider.clone(),
            );
            if !files.crls.is_empty() {
                // A CRL file need not cover every CA of the bundle.
                verifier = verifier
                    .with_crls(files.crls.iter().cloned())
                    .allow_unknown_revocation_status();
            }
            if !required {
                // Asked for, verified when sent, not required (Envoy's
                // `require_client_certificate: false` with a validation context).
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| rustls::Error::General(format!("caCertificates: {e}")))?;
            let verifier = ChainLimit {
                inner: verifier,
                most,
                checks: tls.client_checks.clone(),
            };
            let config = builder
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(twins(files));
            (config, GroupMode::Mutual { required })
        }
    };
    // The server's order decides, as Envoy's listeners do: AES-128-GCM first (`tls::provider`),
    // or the Gateway's `cipherSuites` order for TLS 1.2.
    config.ignore_client_order = true;
    config.session_storage = sessions.clone();
    if !model.proxy.session_resumption {
        config.send_tls13_tickets = 0;
    }
    let without_alpn = Arc::new(config.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Group {
        with_alpn: Arc::new(config),
        without_alpn,
        alpn,
        mode,
    })
}

/// Completes the server handshake, or says why the peer was refused.
pub async fn handshake(
    stream: TcpStream,
    configs: &ServerTlsConfigs,
    servers: &[ServerHost],
    timeout: Duration,
) -> Result<Accepted, PeerError> {
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
) -> Result<Accepted, PeerError> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
        .await
        .map_err(peer_error)?;
    let hello_at = Instant::now();
    let hello = start.client_hello();
    let index = choose_group(hello.server_name(), servers, configs.groups.len())?;
    let group = configs
        .groups
        .get(index)
        .ok_or_else(|| PeerError::SniMismatch(hello.server_name().unwrap_or("").into()))?;
    let shares_alpn = hello
        .alpn()
        .is_none_or(|mut offered| offered.any(|p| group.alpn.contains(&p)));
    let config = if shares_alpn {
        &group.with_alpn
    } else {
        &group.without_alpn
    };
    // Each session carries the server it was made on. The listener's servers share one session
    // store, and rustls resumes a session only with the SNI it was made with, which always
    // chooses the same server; the tag holds that if the choice ever depends on more, as a
    // resumed session skips the server's own certificate checks.
    let tag = index.to_be_bytes();
    let tls = start
        .into_stream_with(config.clone(), |conn| conn.set_resumption_data(&tag))
        .await
        .map_err(peer_error)?;
    let (_, conn) = tls.get_ref();
    if conn.received_resumption_data().is_some_and(|d| d != tag) {
        return Err(PeerError::SniMismatch(format!(
            "{}: a session made with another server of the port",
            conn.server_name().unwrap_or("")
        )));
    }
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let peer = match group.mode {
        // rustls verified the chain (or resumed a session that it had verified).
        GroupMode::IstioMutual => {
            Peer::Spiffe(peer_identity(leaf.ok_or(PeerError::NoCertificate)?)?)
        }
        GroupMode::Mutual { required } => match leaf {
            Some(leaf) => Peer::Certificate(client_certificate(leaf)?),
            None if required => return Err(PeerError::NoCertificate),
            None => Peer::Anonymous,
        },
        GroupMode::Simple => Peer::Anonymous,
    };
    let version = match conn.alpn_protocol() {
        Some(b"h2") | Some(b"istio-h2") => HttpVersion::Http2,
        _ => HttpVersion::Http1,
    };
    Ok(Accepted {
        tls: Box::new(tls),
        peer,
        version,
        group: index,
        hello_at,
    })
}

/// The TLS group for an SNI, as Envoy chooses a filter chain by `server_names`: the server
/// whose host matches it most specifically (exact, then the longest `*.suffix`, then `*`),
/// directly or in Istio's `outbound_.<port>_.<subset>_.<host>` form. Without SNI: the group of
/// a `*` server, or the only group.
fn choose_group(
    sni: Option<&str>,
    servers: &[ServerHost],
    groups: usize,
) -> Result<usize, PeerError> {
    let Some(sni) = sni else {
        if groups == 1 {
            return Ok(0);
        }
        return servers
            .iter()
            .find(|s| s.host == HostMatcher::Any)
            .and_then(|s| s.tls)
            .ok_or_else(|| PeerError::SniMismatch(String::new()));
    };
    // The SNI as sent first, as Envoy's `server_names` match it; the host inside Istio's
    // outbound form only where no server host matches the SNI itself.
    let most_specific = |name: &str| {
        servers
            .iter()
            .filter(|s| s.host.matches(name))
            .min_by_key(|s| std::cmp::Reverse(s.host.specificity()))
    };
    most_specific(sni)
        .or_else(|| istio_sni_host(sni).and_then(most_specific))
        .and_then(|s| s.tls)
        .ok_or_else(|| PeerError::SniMismatch(sni.to_string()))
}

/// The host inside an Istio outbound SNI: `outbound_.80_._.httpbin.example.com` -> `httpbin.example.com`.
fn istio_sni_host(sni: &str) -> Option<&str> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (_port, rest) = rest.split_once("_.")?;
    let (_subset, host) = rest.split_once("_.")?;
    (!host.is_empty()).then_some(host)
}

/// Our ALPN list, in preference order. `istio-peer-exchange` is deliberately absent.
/// What a TCP listener answers a sidecar's `istio-peer-exchange, istio`: `istio`, plain Istio
/// mTLS. Never `istio-peer-exchange`: its metadata exchange is not spoken here, and a sidecar
/// that got it would send its metadata into the forwarded bytes.
const TCP_ALPN: [&[u8]; 1] = [b"istio"];

const ALPN: [&[u8]; 6] = [
    b"h2",
    b"http/1.1",
    b"istio-h2",
    b"istio-http/1.1",
    b"istio-http/1.0",
    b"istio",
];

/// Sessions kept for resumption (TLS 1.3 stateful tickets, TLS 1.2 session IDs) per listener.
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

    /// As Envoy's `server_names`: the SNI itself first, the most specific host winning; the
    /// host inside an Istio outbound SNI only where nothing matches the SNI itself.
    #[test]
    fn the_sni_itself_chooses_before_the_host_inside_it() {
        let server = |host: &str, group: usize| ServerHost {
            gateway: "istio-system/gw".into(),
            namespace: meshgate_config::model::NamespaceFilter::Any,
            host: HostMatcher::parse(host).unwrap(),
            tls: Some(group),
            https_redirect: false,
        };
        let servers = [
            server("*.example-target.com", 0),
            server("httpbin.example-target.com", 1),
            server("api.internal", 2),
        ];
        let chosen = |sni: &str| choose_group(Some(sni), &servers, 3).ok();
        assert_eq!(chosen("httpbin.example-target.com"), Some(1));
        assert_eq!(chosen("other.example-target.com"), Some(0));
        // The wildcard matches the outbound SNI itself, as in Envoy.
        assert_eq!(
            chosen("outbound_.80_._.httpbin.example-target.com"),
            Some(0)
        );
        // Nothing matches the SNI itself: the host inside it chooses.
        assert_eq!(chosen("outbound_.80_._.api.internal"), Some(2));
        assert_eq!(chosen("outbound_.80_._.nowhere.example.org"), None);
        assert_eq!(chosen("api.internal.example.org"), None);
    }
}
