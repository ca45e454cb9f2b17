//! `AUTO_PASSTHROUGH`, an east-west gateway: the ClientHello is read without terminating, the
//! service Istio's SNI names is looked up among those the listener exposes, and the bytes go
//! on as they came, replayed and then spliced both ways. The caller's mTLS reaches the
//! destination's sidecar, so the identity the destination sees is the caller's own.
//! `PASSTHROUGH` is the same splice, with the destination chosen by the VirtualService `tls`
//! routes that match the SNI (by weight), and any TLS client let through.
//!
//! On `AUTO_PASSTHROUGH`, only a ClientHello offering one of Istio's mTLS ALPN protocols is forwarded, as Istio's
//! gateway matches its filter chain on them: plain TLS cannot ride through to a sidecar's
//! port. Nothing is decrypted, so AuthorizationPolicy sees L4 facts only (the configuration
//! refuses rules that would need more).

pub mod hello;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use meshgate_config::model::authz::Attributes;
use meshgate_config::model::{Backend, ListenerProtocol, WeightedBackend};

use crate::access_log::{self, Entry};
use crate::authorize::{self, Decision};
use crate::drain::Watch;
use crate::runtime::Runtime;

/// The ALPN protocols Istio's sidecars offer on the mTLS they originate.
pub const ISTIO_ALPN: [&[u8]; 5] = [
    b"istio",
    b"istio-peer-exchange",
    b"istio-http/1.0",
    b"istio-http/1.1",
    b"istio-h2",
];

/// How a passed-through connection ended, as counted and logged.
pub const ENDS: [&str; 11] = [
    "closed",
    "idle_timeout",
    "max_connection_duration",
    "reset",
    "hello_timeout",
    "invalid_hello",
    "not_istio_mtls",
    "no_sni",
    "not_exposed",
    "denied",
    "connect_failed",
];

/// One passed-through connection, as logged when it ends.
#[derive(Debug, Serialize)]
pub struct ConnectionEntry<'a> {
    pub start_time: &'a str,
    pub event: &'static str,
    pub listener: &'a str,
    pub peer: String,
    pub sni: Option<&'a str>,
    /// The client's SPIFFE ID, where a TCP listener terminated `ISTIO_MUTUAL` (passed-through
    /// TLS has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<&'a str>,
    /// The backend (`host:port (subset)`) and the endpoint connected to.
    pub upstream: Option<String>,
    /// One of `ENDS`.
    pub end: &'static str,
    pub detail: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
}

impl Entry for ConnectionEntry<'_> {
    fn text(&self) -> String {
        format!(
            "[{}] {} {} {} sni={} principal={} upstream={} {} in={} out={} {}ms{}{}",
            self.start_time,
            self.event,
            self.listener,
            self.peer,
            self.sni.unwrap_or("-"),
            self.principal.unwrap_or("-"),
            self.upstream.as_deref().unwrap_or("-"),
            self.end,
            self.bytes_received,
            self.bytes_sent,
            self.duration_ms,
            if self.detail.is_empty() { "" } else { ": " },
            self.detail,
        )
    }
}

/// Serves one connection of an `AUTO_PASSTHROUGH` listener, to its end.
pub async fn serve(
    runtime: Arc<Runtime>,
    listener: usize,
    mut client: TcpStream,
    peer: SocketAddr,
    watch: Watch,
) {
    let start = (SystemTime::now(), Instant::now());
    let local = client.local_addr().unwrap_or(peer);
    let mut buf = Vec::with_capacity(2048);
    let mut sni = None;
    let mut upstream = None;
    let (end, detail, bytes) = match forward(
        &runtime,
        listener,
        &mut client,
        (peer, local),
        &mut buf,
        &mut sni,
        &mut upstream,
    )
    .await
    {
        Ok((end, bytes)) => (end, String::new(), bytes),
        Err((end, detail)) => (end, detail, (0, 0)),
    };
    drop(watch);
    runtime.metrics.passthrough(end, bytes.0, bytes.1);
    debug!(peer = %peer, sni = ?sni, end, "passthrough connection ended {detail}");
    if let Some(log) = &runtime.access_log {
        log.log(&ConnectionEntry {
            start_time: &access_log::rfc3339(start.0),
            event: "passthrough",
            listener: &runtime.model_listener(listener).name,
            peer: peer.to_string(),
            sni: sni.as_deref(),
            principal: None,
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

/// Why a connection was not forwarded, and the detail for the log.
type Refused = (&'static str, String);

/// Reads the ClientHello, chooses and connects the upstream, and splices. The bytes passed
/// each way (from the client, to the client) and how it ended.
async fn forward(
    runtime: &Runtime,
    listener: usize,
    client: &mut TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    buf: &mut Vec<u8>,
    sni_out: &mut Option<String>,
    upstream_out: &mut Option<usize>,
) -> Result<(&'static str, (u64, u64)), Refused> {
    let model = runtime.model_listener(listener);
    let timeout = runtime.model.proxy.limits.handshake_timeout;
    let hello = match tokio::time::timeout(timeout, read_hello(client, buf)).await {
        Err(_) => {
            return Err((
                "hello_timeout",
                format!("no ClientHello within {timeout:?}"),
            ))
        }
        Ok(Err(why)) => return Err(("invalid_hello", why)),
        Ok(Ok(hello)) => hello,
    };
    // Where Envoy's `tcp_proxy` starts `maxConnectionDuration`: after its listener filters.
    let since = Instant::now();
    let auto = model.protocol == ListenerProtocol::AutoPassthrough;
    if auto
        && !hello
            .alpn
            .iter()
            .any(|p| ISTIO_ALPN.contains(&p.as_slice()))
    {
        let offered: Vec<_> = hello
            .alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        return Err((
            "not_istio_mtls",
            format!("ALPN {offered:?} offers none of Istio's mTLS protocols"),
        ));
    }
    let Some(sni) = hello.sni.map(|s| s.to_ascii_lowercase()) else {
        return Err(("no_sni", "the ClientHello names no server".into()));
    };
    // The backend, and the one whose rule gives the route's limits: the route's first, as
    // Istio builds one `tcp_proxy` for weighted destinations.
    let backend = if auto {
        model.passthrough.get(&sni).map(|&b| (b, b))
    } else {
        model
            .sni_route(&sni, local.ip())
            .and_then(|r| Some((pick(&r.backends)?, r.backends.first()?.backend)))
    };
    let sni = sni_out.insert(sni);
    let Some((backend, first)) = backend else {
        let why = if auto {
            "no exposed service has this SNI"
        } else {
            "no tls route matches this SNI"
        };
        return Err(("not_exposed", why.into()));
    };
    let attributes = Attributes {
        principal: None,
        namespace: None,
        trust_domain: None,
        source_ip: peer.ip(),
        remote_ip: peer.ip(),
        destination_ip: local.ip(),
        authority: "",
        host: "",
        port: model.port,
        method: "",
        path: "",
        headers: &HeaderMap::new(),
        sni: Some(sni),
    };
    if let Decision::Deny(policy) = authorize::authorize(&runtime.model.policies, &attributes) {
        let by = policy.map_or("no ALLOW policy matched".into(), |p| {
            format!("denied by {p}")
        });
        return Err(("denied", by));
    }
    *upstream_out = Some(backend);
    let limits = runtime
        .upstreams
        .backend(first)
        .stream_limits(runtime.model.proxy.limits.idle_timeout, since);
    let pool = runtime.upstreams.backend(backend);
    let mut server = pool
        .open_stream(peer, local, None)
        .await
        .map_err(|e| ("connect_failed", e.to_string()))?;
    // Past its end already (a slow connect): not a byte is passed on.
    if past_end(limits.1) {
        return Ok(("max_connection_duration", (0, 0)));
    }
    if let Err(e) = server.write_all(buf).await {
        return Err(("reset", format!("replaying the ClientHello: {e}")));
    }
    let replayed = buf.len() as u64;
    let (end, received, sent) = splice(client, &mut server, limits).await;
    Ok((end, (received.saturating_add(replayed), sent)))
}

/// A backend by weight (all weights > 0), as `route::pick` draws it; `None` for none.
pub(crate) fn pick(backends: &[WeightedBackend]) -> Option<usize> {
    crate::route::pick(backends).map(|b| b.backend)
}

/// Reads until `buf` holds a whole ClientHello.
async fn read_hello(client: &mut TcpStream, buf: &mut Vec<u8>) -> Result<hello::Hello, String> {
    loop {
        match hello::parse(buf) {
            hello::Parsed::Hello(hello) => return Ok(hello),
            hello::Parsed::Invalid(why) => return Err(why.to_string()),
            hello::Parsed::Partial => {}
        }
        let n = client
            .read_buf(buf)
            .await
            .map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("closed before a whole ClientHello".into());
        }
    }
}

/// Copies both ways until both sides have closed, one fails, nothing moves for `idle`, or
/// `end` passes (the route's `maxConnectionDuration`, Envoy's
/// `max_downstream_connection_duration`); nothing is copied once it has. How it ended, and the
/// bytes from the client and to the client.
pub(crate) async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    (idle, end): (Option<Duration>, Option<Instant>),
) -> (&'static str, u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (received, sent) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut a = Counted {
        io: a,
        received: &received,
        sent: &sent,
    };
    let spliced = async {
        let copy = tokio::io::copy_bidirectional(&mut a, b);
        tokio::pin!(copy);
        match idle {
            None => ended(copy.await),
            Some(idle) => {
                // The idle clock: checked a few times per timeout, against the bytes moved.
                let tick = idle
                    .checked_div(4)
                    .unwrap_or(idle)
                    .max(Duration::from_millis(10));
                // Compared for a change only: wrapping keeps telling one.
                let moved = || {
                    received
                        .load(Ordering::Relaxed)
                        .wrapping_add(sent.load(Ordering::Relaxed))
                };
                let (mut seen, mut quiet) = (moved(), Duration::ZERO);
                loop {
                    tokio::select! {
                        done = &mut copy => break ended(done),
                        _ = tokio::time::sleep(tick) => {
                            let now = moved();
                            if now != seen {
                                (seen, quiet) = (now, Duration::ZERO);
                            } else {
                                quiet = quiet.saturating_add(tick);
                                if quiet >= idle {
                                    break "idle_timeout";
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let end = match end {
        None => spliced.await,
        // Already as old as it may be: nothing is passed on.
        Some(_) if past_end(end) => "max_connection_duration",
        Some(at) => tokio::time::timeout_at(at.into(), spliced)
            .await
            .unwrap_or("max_connection_duration"),
    };
    (
        end,
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
    )
}

/// Whether `end`, a connection's `maxConnectionDuration` as `stream_limits` gives it, has
/// passed.
pub(crate) fn past_end(end: Option<Instant>) -> bool {
    end.is_some_and(|end| end <= Instant::now())
}

fn ended(copied: std::io::Result<(u64, u64)>) -> &'static str {
    match copied {
        Ok(_) => "closed",
        Err(_) => "reset",
    }
}

/// The client's side, counting the bytes read from it and written to it.
struct Counted<'a, T> {
    io: &'a mut T,
    received: &'a AtomicU64,
    sent: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut *self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut *self.io).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            self.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
