//! `TCP` listeners: the bytes of a connection, after the TLS handshake when the Gateway server
//! terminates it (`protocol: TLS` with `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`), go to the
//! destination of the first VirtualService `tcp` route that matches the connection, chosen by
//! weight, over the DestinationRule's TLS when it originates some.
//!
//! AuthorizationPolicy decides each connection once, before it is forwarded, on what a
//! connection shows: addresses, the port, the SNI and, after `ISTIO_MUTUAL`, the client's SPIFFE
//! identity. Rules naming HTTP fields are treated as Istio's TCP filter treats them
//! (`authorize::authorize_connection`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use meshgate_config::model::authz::Attributes;
use meshgate_config::model::Backend;

use crate::access_log;
use crate::authorize::{self, Decision};
use crate::drain::Watch;
use crate::identity::PeerIdentity;
use crate::passthrough::{pick, splice, ConnectionEntry};
use crate::runtime::Runtime;
use crate::tls::server::{handshake, Peer};

/// How a connection of a TCP listener ended, as counted and logged.
pub const ENDS: [&str; 8] = [
    "closed",
    "idle_timeout",
    "max_connection_duration",
    "reset",
    "handshake_rejected",
    "no_route",
    "denied",
    "connect_failed",
];

/// Why a connection was not forwarded, and the detail for the log.
type Refused = (&'static str, String);

/// What is known of a connection before its bytes are forwarded.
struct Downstream<'a> {
    peer: SocketAddr,
    local: SocketAddr,
    sni: Option<&'a str>,
    identity: Option<&'a PeerIdentity>,
    /// The TLS group the SNI chose (`None`: plaintext): only its Gateways' routes apply.
    group: Option<usize>,
    /// Where `maxConnectionDuration` starts, as Envoy's `tcp_proxy` starts it after the
    /// listener filters: the accept, or on a TLS listener the ClientHello read.
    since: Instant,
}

/// Serves one connection of a `TCP` listener, to its end.
pub async fn serve(
    runtime: Arc<Runtime>,
    listener: usize,
    client: TcpStream,
    peer: SocketAddr,
    watch: Watch,
) {
    let start = (SystemTime::now(), Instant::now());
    let local = client.local_addr().unwrap_or(peer);
    let mut sni = None;
    let mut principal = None;
    let mut upstream = None;
    let outcome = match &runtime.listener_runtime(listener).tls {
        None => {
            let down = Downstream {
                peer,
                local,
                sni: None,
                identity: None,
                group: None,
                since: start.1,
            };
            forward(&runtime, listener, client, &down, &mut upstream).await
        }
        Some(tls) => {
            let servers = &runtime.model_listener(listener).servers;
            let timeout = runtime.model.proxy.limits.handshake_timeout;
            match handshake(client, tls, servers, timeout).await {
                Err(e) => {
                    crate::inbound::handshake_rejected(&runtime, listener, peer, &e);
                    Err(("handshake_rejected", e.to_string()))
                }
                Ok(accepted) => {
                    runtime.metrics.handshake_ok();
                    sni = accepted.tls.get_ref().1.server_name().map(str::to_string);
                    let identity = match &accepted.peer {
                        Peer::Spiffe(id) => Some(id),
                        Peer::Certificate(_) | Peer::Anonymous => None,
                    };
                    principal = identity.map(|id| id.spiffe_id.as_str().to_string());
                    let down = Downstream {
                        peer,
                        local,
                        sni: sni.as_deref(),
                        identity,
                        group: Some(accepted.group),
                        since: accepted.hello_at,
                    };
                    forward(&runtime, listener, accepted.tls, &down, &mut upstream).await
                }
            }
        }
    };
    let (end, detail, bytes) = match outcome {
        Ok((end, bytes)) => (end, String::new(), bytes),
        Err((end, detail)) => (end, detail, (0, 0)),
    };
    drop(watch);
    runtime.metrics.tcp(end, bytes.0, bytes.1);
    debug!(%peer, principal, end, "tcp connection ended {detail}");
    if let Some(log) = &runtime.access_log {
        log.log(&ConnectionEntry {
            start_time: &access_log::rfc3339(start.0),
            event: "tcp",
            listener: &runtime.model_listener(listener).name,
            peer: peer.to_string(),
            sni: sni.as_deref(),
            principal: principal.as_deref(),
            upstream: upstream
                .and_then(|b| runtime.model.backends.get(b))
                .map(Backend::name),
            end,
            detail,
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
            duration_ms: start.1.elapsed().as_millis() as u64,
        });
    }
}

/// Authorizes the connection, chooses and connects the upstream, and splices. The bytes
/// passed each way (from the client, to the client) and how it ended.
async fn forward<C: AsyncRead + AsyncWrite + Unpin>(
    runtime: &Runtime,
    listener: usize,
    mut client: C,
    down: &Downstream<'_>,
    upstream_out: &mut Option<usize>,
) -> Result<(&'static str, (u64, u64)), Refused> {
    let model = runtime.model_listener(listener);
    let id = down.identity.map(|p| &p.spiffe_id);
    let attributes = Attributes {
        principal: id.map(|i| i.principal()),
        namespace: id.and_then(|i| i.namespace()),
        trust_domain: id.map(|i| i.trust_domain()),
        source_ip: down.peer.ip(),
        remote_ip: down.peer.ip(),
        destination_ip: down.local.ip(),
        authority: "",
        host: "",
        port: model.port,
        method: "",
        path: "",
        headers: &HeaderMap::new(),
        sni: down.sni,
    };
    let decision = authorize::authorize_connection(&runtime.model.policies, &attributes);
    if let Decision::Deny(policy) = decision {
        let by = policy.map_or("no ALLOW policy matched".into(), |p| {
            format!("denied by {p}")
        });
        return Err(("denied", by));
    }
    let route = model.tcp_routes.iter().find(|r| {
        r.admits_tls_group(down.group)
            && (r.matches.is_empty()
                || r.matches
                    .iter()
                    .any(|m| m.matches(model.port, down.local.ip())))
    });
    // A compiled route has a backend.
    let Some((backend, first)) =
        route.and_then(|r| Some((pick(&r.backends)?, r.backends.first()?)))
    else {
        return Err(("no_route", "no tcp route matches this connection".into()));
    };
    *upstream_out = Some(backend);
    // The route's limits are its first destination's rule's, whichever is picked, as Istio
    // builds one `tcp_proxy` for weighted destinations.
    let limits = runtime
        .upstreams
        .backend(first.backend)
        .stream_limits(runtime.model.proxy.limits.idle_timeout, down.since);
    if crate::passthrough::past_end(limits.1) {
        return Ok(("max_connection_duration", (0, 0)));
    }
    // With a PROXY v2 header, the identity this listener verified, when configured.
    let spiffe = runtime
        .model
        .proxy
        .tagging
        .proxy_protocol_tlv
        .zip(id.map(|i| i.as_str()));
    let pool = runtime.upstreams.backend(backend);
    let mut server = pool
        .open_stream(down.peer, down.local, spiffe)
        .await
        .map_err(|e| ("connect_failed", e.to_string()))?;
    let (end, received, sent) = splice(&mut client, &mut server, limits).await;
    Ok((end, (received, sent)))
}
