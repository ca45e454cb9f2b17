//! The inbound data path, top to bottom: `serve_connection` (accept to HTTP) and
//! `handle_request` (tag to forward). Each is a short sequence of calls into one module per
//! stage; reading these two functions explains the product.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use meshgate_config::model::authz::Attributes;
use meshgate_config::model::header_format::{FormatContext, PeerUris};
use meshgate_config::model::{ListenerKind, ListenerProtocol, OutboundPolicy, RouteAction};

use crate::access_log::{self, HandshakeEntry, RequestEntry};
use crate::access_log::{ResponseFlag, ResponseFlags};
use crate::authorize::{self, Decision, ShadowAction};
use crate::body::{Done, End, RequestBody, Tracked};
use crate::cors;
use crate::drain::Watch;
use crate::fault;
use crate::forward;
use crate::head;
use crate::identity::PeerIdentity;
use crate::origin::{origin, Origin};
use crate::respond::{self, ProxyError, ResponseBody};
use crate::route::{self, RouteRequest};
use crate::runtime::Runtime;
use crate::serve::{Activity, ClosedBy, Pacing};
use crate::stream::{self, StreamClock};
use crate::tag::{self, ConnectionTags};
use crate::tls::server::{handshake, Accepted, HttpVersion, Peer};

/// What every request of one connection shares, computed once when it opens.
struct Connection {
    runtime: Arc<Runtime>,
    listener: usize,
    /// The TLS group the SNI chose (`Listener::tls`); the request's host must be among its
    /// servers' hosts.
    group: Option<usize>,
    tags: ConnectionTags,
    origin: Option<Origin>,
    /// The request counters of the peer's trust domain.
    trust_domain: crate::metrics::TrustDomainSeries,
    peer: Option<PeerIdentity>,
    /// A `MUTUAL` client certificate's URI SANs (`%DOWNSTREAM_PEER_URI_SAN%`).
    certificate_uris: Box<[String]>,
    peer_addr: SocketAddr,
    /// The local address the connection was accepted on (`destination.ip`).
    local_addr: SocketAddr,
    /// The SNI the client sent, for `connection.sni` conditions.
    sni: Option<Box<str>>,
    /// Requests in flight, for the idle timeout.
    activity: Arc<Activity>,
}

/// Accept to HTTP: handshake (on TLS listeners), identity, origin, tags, then serve HTTP.
pub async fn serve_connection(
    runtime: Arc<Runtime>,
    listener: usize,
    mut stream: TcpStream,
    peer_addr: SocketAddr,
    watch: Watch,
) {
    let metrics = runtime.metrics.clone();
    metrics.connection(1);
    // Behind an L4 load balancer: the client's address from its PROXY header.
    let peer_addr = match &runtime.model.proxy.proxy_protocol {
        Some(pp)
            if pp.expects(peer_addr.ip())
                && runtime.model_listener(listener).kind == ListenerKind::Gateway =>
        {
            let timeout = runtime.model.proxy.limits.handshake_timeout;
            // Boxed, as the other states a connection leaves behind: the task is sized for
            // its largest state, and keeps that size for the connection's life.
            let header = Box::pin(crate::proxy_protocol::read(&mut stream, timeout)).await;
            match header {
                Ok(crate::proxy_protocol::Header::Proxied(client)) => {
                    metrics.proxy_protocol("proxied");
                    client
                }
                Ok(crate::proxy_protocol::Header::Local) => {
                    metrics.proxy_protocol("local");
                    peer_addr
                }
                Err(e) => {
                    metrics.proxy_protocol("rejected");
                    if let Some(log) = &runtime.access_log {
                        log.log(&HandshakeEntry {
                            start_time: &access_log::rfc3339(SystemTime::now()),
                            event: "proxy_protocol_rejected",
                            listener: &runtime.model_listener(listener).name,
                            peer: peer_addr.to_string(),
                            reason: "no_proxy_header",
                            detail: e.clone(),
                        });
                    }
                    warn!(peer = %peer_addr, listener = %runtime.model_listener(listener).name, "PROXY header refused: {e}");
                    metrics.connection(-1);
                    return;
                }
            }
        }
        _ => peer_addr,
    };
    match runtime.model_listener(listener).protocol {
        ListenerProtocol::AutoPassthrough | ListenerProtocol::TlsPassthrough => {
            Box::pin(crate::passthrough::serve(
                runtime, listener, stream, peer_addr, watch,
            ))
            .await;
            metrics.connection(-1);
            return;
        }
        ListenerProtocol::Tcp => {
            Box::pin(crate::tcp::serve(
                runtime, listener, stream, peer_addr, watch,
            ))
            .await;
            metrics.connection(-1);
            return;
        }
        ListenerProtocol::Http | ListenerProtocol::Https => {}
    }
    let tagging = &runtime.model.proxy.tagging;
    let local_addr = stream.local_addr().unwrap_or(peer_addr);
    // The connection's clock from the end of its handshake, which also notes the limit that
    // closed the connection, if one did.
    let mut activity = None;
    let served = match &runtime.listener_runtime(listener).tls {
        Some(tls) => {
            let servers = &runtime.model_listener(listener).servers;
            let timeout = runtime.model.proxy.limits.handshake_timeout;
            // A local, not the match's scrutinee: a scrutinee's temporary lives to the end of
            // the match, and so in the connection's task for the connection's life.
            let accepted = handshake(stream, tls, servers, timeout).await;
            match accepted {
                Err(e) => {
                    handshake_rejected(&runtime, listener, peer_addr, &e);
                    Ok(())
                }
                Ok(accepted) => {
                    metrics.handshake_ok();
                    let clock = activity.insert(Arc::new(Activity::new())).clone();
                    let addrs = (peer_addr, local_addr);
                    let (conn, tls, version) =
                        connection(&runtime, listener, accepted, addrs, clock);
                    serve(Arc::new(conn), tls, Some(version), watch).await
                }
            }
        }
        None => {
            let clock = activity.insert(Arc::new(Activity::new()));
            let conn = Connection {
                tags: ConnectionTags::new(None, None, tagging, peer_addr, None),
                origin: None,
                trust_domain: runtime.trust_domains.series(None),
                peer: None,
                certificate_uris: Box::default(),
                runtime: runtime.clone(),
                listener,
                group: None,
                peer_addr,
                local_addr,
                sni: None,
                activity: clock.clone(),
            };
            serve(Arc::new(conn), stream, None, watch).await
        }
    };
    let mut closed = activity.and_then(|a| a.closed());
    if let Err(e) = served {
        debug!(peer = %peer_addr, "connection ended: {e}");
        closed = closed.or_else(|| ClosedBy::refused_head(&*e));
    }
    if let Some(why) = closed {
        metrics.connection_closed(why);
        if let Some(log) = &runtime.access_log {
            log.log(&HandshakeEntry {
                start_time: &access_log::rfc3339(SystemTime::now()),
                event: "connection_closed",
                listener: &runtime.model_listener(listener).name,
                peer: peer_addr.to_string(),
                reason: why.reason(),
                detail: why.detail().to_owned(),
            });
        }
    }
    metrics.connection(-1);
}

/// The connection an mTLS handshake made: identity, origin and tags read from it once. Not
/// async, so that nothing it borrows from the handshake stays in the connection's task, which
/// keeps room for every local an await may still see.
fn connection(
    runtime: &Arc<Runtime>,
    listener: usize,
    accepted: Accepted,
    (peer_addr, local_addr): (SocketAddr, SocketAddr),
    activity: Arc<Activity>,
) -> (Connection, Box<TlsStream<TcpStream>>, HttpVersion) {
    let tagging = &runtime.model.proxy.tagging;
    let Accepted {
        tls,
        peer,
        version,
        group,
        hello_at: _,
    } = accepted;
    let sni = tls.get_ref().1.server_name().map(Into::into);
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let pem = tag::client_pem(chain, tagging);
    let pem = pem.as_deref();
    let mut certificate_uris = Box::default();
    let (tags, origin, peer) = match peer {
        Peer::Spiffe(peer) => {
            let origin = origin(&peer, &runtime.model.trust);
            let own = runtime.credentials.as_ref().map(|c| &c.spiffe_id);
            let peer_tags = Some((&peer, origin));
            let tags = ConnectionTags::new(peer_tags, own, tagging, peer_addr, pem);
            (tags, Some(origin), Some(peer))
        }
        Peer::Certificate(cert) => {
            let tags = ConnectionTags::tls(Some(&cert), tagging, peer_addr, pem);
            certificate_uris = cert.uris.into();
            (tags, None, None)
        }
        Peer::Anonymous => (
            ConnectionTags::tls(None, tagging, peer_addr, None),
            None,
            None,
        ),
    };
    let conn = Connection {
        tags,
        origin,
        trust_domain: runtime
            .trust_domains
            .series(peer.as_ref().map(|p| p.spiffe_id.trust_domain())),
        peer,
        certificate_uris,
        runtime: runtime.clone(),
        listener,
        group: Some(group),
        peer_addr,
        local_addr,
        sni,
        activity,
    };
    (conn, tls, version)
}

async fn serve<I>(
    conn: Arc<Connection>,
    io: I,
    version: Option<crate::tls::server::HttpVersion>,
    watch: Watch,
) -> Result<(), crate::serve::ServeError>
where
    I: crate::serve::Downstream,
{
    let runtime = conn.runtime.clone();
    let activity = conn.activity.clone();
    // Boxed per request: hyper keeps room for one request's future in every HTTP/1.1
    // connection for its life (4.5 KiB of an idle connection's memory), and an HTTP/2
    // stream's future would be sized for it and moved whole when it starts (memmove was 14%
    // of the CPU of HTTP/2 requests when streams were tasks). A box is allocated while a
    // request is served, and its future moved once.
    //
    // The box is allocated before the future is made, which lets the optimiser make the future
    // in it: with `Box::pin(handle_request(..))` it was made on the stack and copied whole.
    let service = hyper::service::service_fn(move |req| {
        Box::into_pin(Box::write(
            Box::new_uninit(),
            handle_request(conn.clone(), req),
        ))
    });
    runtime
        .http
        .serve(io, version, service, activity, watch)
        .await
}

/// Head to forward: make the head canonical, tag, route, authorize, forward (or answer
/// directly), count. The response body carries the `Exchange` to the end of the response.
/// Counts, logs and traces a refused handshake.
pub(crate) fn handshake_rejected(
    runtime: &Runtime,
    listener: usize,
    peer: SocketAddr,
    e: &crate::identity::PeerError,
) {
    let name = &runtime.model_listener(listener).name;
    if let Some(log) = &runtime.access_log {
        log.log(&HandshakeEntry {
            start_time: &access_log::rfc3339(std::time::SystemTime::now()),
            event: "handshake_rejected",
            listener: name,
            peer: peer.to_string(),
            reason: e.reason(),
            detail: e.to_string(),
        });
    }
    warn!(%peer, listener = %name, reason = e.reason(), "handshake rejected: {e}");
    // Counted last: whoever sees the count (a test, the demo) finds the lines written.
    runtime.metrics.handshake_rejected(e);
}

async fn handle_request(
    conn: Arc<Connection>,
    mut req: Request<Incoming>,
) -> Result<Response<Tracked<ResponseBody, Exchange>>, Infallible> {
    let version = req.version();
    let mut exchange = Exchange::start(conn, &req);
    // The exchange owns the connection's handle from here: no second one per request.
    let conn = &*exchange.conn;
    let runtime = &conn.runtime;
    let model = &runtime.model;
    let canonical = head::canonicalize(&mut req, &model.proxy.http, &runtime.owned);
    if let Some(log) = &mut exchange.log {
        log.describe(&req);
    }
    let mut chosen = Chosen::default();
    let result = match canonical {
        Err(e) => Err(ProxyError::Head(e)),
        Ok(()) => {
            let gateway = runtime.model_listener(conn.listener).kind == ListenerKind::Gateway;
            if model.proxy.tracing {
                tag::request_id(req.headers_mut());
            }
            // Last edit of the request's headers: nothing after this may change them.
            let client = tag::tag(
                req.headers_mut(),
                &conn.tags,
                &model.proxy.tagging,
                model.proxy.num_trusted_proxies,
                gateway,
            );
            if let Some(log) = &mut exchange.log {
                log.client = Some(client.address);
            }
            let req = req.map(|body| {
                // Nothing more comes of a body already at its end (its end was noted when the
                // request started): the handles a body's reader needs are not taken for it.
                if http_body::Body::is_end_stream(&body) {
                    return RequestBody::empty();
                }
                let bytes_in = exchange.log.as_ref().map(|l| l.bytes_in.clone());
                let activity = Some(conn.activity.clone());
                let clock = Some(exchange.clock().clone());
                RequestBody::new(body, bytes_in, runtime.owned.clone(), activity, clock)
            });
            let limits = &model.proxy.limits;
            // Pinned where it is built: `bounded` takes a reference, not a copy of the whole
            // request future (memcpy showed up per request when it was moved in).
            let forward =
                route_and_forward(conn, req, (client.address, exchange.started), &mut chosen);
            tokio::pin!(forward);
            if limits.stream_idle_timeout.is_some() || limits.request_timeout.is_some() {
                stream::bounded(forward, exchange.clock(), limits.request_timeout).await
            } else {
                forward.await
            }
        }
    };
    let mut flags = ResponseFlags::default();
    if chosen.delayed {
        flags.insert(ResponseFlag::DelayInjected);
    }
    if chosen.tries.limit_exceeded {
        flags.insert(ResponseFlag::UpstreamRetryLimitExceeded);
    }
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            if let Some(flag) = e.flag() {
                flags.insert(flag);
            }
            let listener = &runtime.model_listener(conn.listener).name;
            let principal = conn
                .peer
                .as_ref()
                .map(|p| p.spiffe_id.principal())
                .unwrap_or("");
            let flag = e.flag().map_or("-", ResponseFlag::code);
            warn!(peer = %conn.peer_addr, %listener, principal, flag, "{e}");
            if let (Some(log), Some(tls)) = (&mut exchange.log, e.upstream_tls_failure()) {
                log.transport_failure = Some(format!("{}: {tls}", tls.reason()));
            }
            respond::error(&e)
        }
    };
    let status = response.status().as_u16();
    conn.trust_domain.request(conn.origin, status);
    runtime
        .listener_runtime(conn.listener)
        .counts
        .request(chosen.route, conn.origin, status);
    if let Some(log) = &mut exchange.log {
        log.head = Some(exchange.started.elapsed());
        log.status = Some(status);
        log.backend = chosen.backend;
        log.flags = flags;
    }
    exchange.clock().responding();
    // HTTP/2 bounds what waits for the client by the stream's send buffer.
    let pacing = (version != http::Version::HTTP_2).then(|| {
        Pacing::new(
            conn.activity.clone(),
            model.proxy.limits.stream_write_buffer_bytes,
        )
    });
    Ok(response.map(|body| Tracked::new(body, exchange, pacing)))
}

fn authorize(
    conn: &Connection,
    head: &RouteRequest<'_>,
    authority: &str,
    client: IpAddr,
) -> Result<(), ProxyError> {
    let policies = &conn.runtime.model.policies;
    if policies.is_empty() {
        return Ok(());
    }
    let id = conn.peer.as_ref().map(|p| &p.spiffe_id);
    let attributes = Attributes {
        principal: id.map(|i| i.principal()),
        namespace: id.and_then(|i| i.namespace()),
        trust_domain: id.map(|i| i.trust_domain()),
        source_ip: conn.peer_addr.ip(),
        // Istio: `remote.ip` and `remoteIpBlocks` see the trusted client address (from
        // x-forwarded-for with numTrustedProxies), `source.ip` the peer.
        remote_ip: client,
        destination_ip: conn.local_addr.ip(),
        authority,
        host: head.authority,
        port: head.port,
        method: head.input.method.as_str(),
        path: head.input.path,
        headers: head.input.headers,
        sni: conn.sni.as_deref(),
    };
    let principal = attributes.principal.unwrap_or("");
    for p in authorize::audited(policies, &attributes) {
        info!(policy = %p.name, principal, path = head.input.path, "AUDIT");
    }
    for shadow in authorize::dry_run(policies, &attributes)
        .into_iter()
        .flatten()
    {
        conn.runtime.metrics.dry_run(shadow.action, shadow.allowed);
        let (action, result) = match (shadow.action, shadow.allowed) {
            (ShadowAction::Deny, _) => ("DENY", shadow.allowed),
            (ShadowAction::Allow, _) => ("ALLOW", shadow.allowed),
        };
        info!(
            policy = shadow.policy.unwrap_or("-"),
            action,
            principal,
            path = head.input.path,
            result = if result { "would-allow" } else { "would-deny" },
            "dry-run"
        );
    }
    match authorize::authorize(policies, &attributes) {
        Decision::Allow => Ok(()),
        Decision::Deny(policy) => Err(ProxyError::Denied(policy.map(str::to_string))),
    }
}

/// What routing chose for a request, for its counters and its access log line.
#[derive(Debug, Default)]
struct Chosen {
    /// `Route::index` of the route taken.
    route: Option<usize>,
    /// The backend forwarded to.
    backend: Option<usize>,
    /// The route's fault delayed the request (Envoy's `DI`).
    delayed: bool,
    /// How the request's tries went.
    tries: forward::Tries,
}

// An async block rather than an `async fn`: an `async fn` keeps its arguments and the locals it
// moves them into, and every request's future would hold the request twice more.
// Not an `async fn` on purpose (above).
#[allow(clippy::manual_async_fn)]
fn route_and_forward<'a>(
    conn: &'a Connection,
    mut req: Request<RequestBody>,
    (client, started): (IpAddr, Instant),
    chosen: &'a mut Chosen,
) -> impl std::future::Future<Output = Result<Response<ResponseBody>, ProxyError>> + Send + 'a {
    async move {
        let listener = conn.runtime.model_listener(conn.listener);
        let full = route::full_authority(req.uri(), req.headers())
            .ok_or(ProxyError::BadRequest("no authority"))?;
        let port = match listener.kind {
            ListenerKind::Gateway => listener.port,
            ListenerKind::Outbound => route::authority_port(req.uri(), req.headers()),
        };
        // Envoy's `:scheme`: an HTTP/2 client's, when it is one Envoy accepts; otherwise the
        // connection's.
        let scheme = match req.uri().scheme_str() {
            Some("http") => "http",
            Some("https") => "https",
            _ if listener.tls.is_empty() => "http",
            _ => "https",
        };
        let head = RouteRequest {
            input: route::MatchInput {
                method: req.method(),
                path: req.uri().path(),
                query: req.uri().query(),
                full_authority: full,
                scheme,
                headers: req.headers(),
            },
            authority: route::strip_port(full),
            port,
        };
        // The route is chosen first so that a denied request is counted under it; the policy
        // still answers before a missing route does, as Envoy's RBAC filter runs before its router.
        let selected = route::route(listener, conn.group, &head);
        chosen.route = selected.map(|s| s.route.index);
        // AuthorizationPolicies guard the Gateway's listeners, as Istio's apply to a workload's
        // inbound side; the outbound listener serves local apps.
        if listener.kind == ListenerKind::Gateway {
            authorize(conn, &head, full, client)?;
            // `tls.httpsRedirect`: Envoy's `require_tls`, after its RBAC filter.
            if route::https_redirect(listener, head.authority) {
                let target = format!(
                    "https://{}{}",
                    route::redirect_authority(full),
                    req.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                return Ok(respond::https_redirect(&target));
            }
        }
        let selected = match selected {
            Some(selected) => selected,
            None => {
                if listener.kind == ListenerKind::Outbound
                    && conn.runtime.model.proxy.outbound_policy == OutboundPolicy::AllowAny
                {
                    let port = route::authority_port(req.uri(), req.headers());
                    let host = head.authority.to_string();
                    let response = forward::passthrough(&host, port, req).await?;
                    return Ok(response.map(ResponseBody::Upstream));
                }
                return Err(ProxyError::NoRoute);
            }
        };
        let route = selected.route;
        if let Some(cors) = &route.cors {
            if let Some(answer) = cors::preflight(cors, req.method(), req.headers()) {
                return Ok(answer);
            }
        }
        if let Some(fault) = &route.fault {
            let injected = fault::inject(fault).await;
            chosen.delayed = injected.delayed;
            if let Some(status) = injected.abort {
                return Err(ProxyError::FaultAbort(status));
            }
        }
        let origin = route
            .cors
            .as_ref()
            .and_then(|_| req.headers().get(http::header::ORIGIN).cloned());
        // What command operators in the route's header values read, taken only when there
        // are some (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(...)%`, ...).
        let commands = route.header_commands;
        let mut facts = commands
            .formats
            .then(|| Box::new(RequestFacts::of(&req, full, scheme, started)));
        let response_reads_request = commands.response_reads_request;
        // The chosen destination's own response operations (several destinations only).
        let mut destination_response = None;
        if response_reads_request && !matches!(route.action, RouteAction::Forward(_)) {
            if let Some(facts) = facts.as_deref_mut() {
                facts.headers = Some(req.headers().clone());
            }
        }
        let mut response = match &route.action {
            RouteAction::Direct(direct) => respond::direct(direct),
            RouteAction::Redirect(redirect) => {
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                // The port a request arrived for: the Gateway port, or on the outbound listener the
                // authority's, as a sidecar's listener is per service port.
                respond::redirect(redirect, full, target, !listener.tls.is_empty(), port)
            }
            RouteAction::Forward(backends) => {
                let picked = route::pick(backends).ok_or(ProxyError::NoRoute)?;
                let backend = picked.backend;
                chosen.backend = Some(backend);
                let cx = facts.as_deref().map(|f| f.context(conn, client));
                // Envoy's weighted cluster level first, then the route's, which wins.
                if let Some(own) = &picked.headers {
                    own.request.apply(req.headers_mut(), cx.as_ref(), None);
                    destination_response = Some(&own.response);
                }
                route
                    .request_headers
                    .apply(req.headers_mut(), cx.as_ref(), None);
                if response_reads_request {
                    if let Some(facts) = facts.as_deref_mut() {
                        // As Envoy's response values see the request: with the route's header
                        // operations, and its path and authority rewritten.
                        facts.headers = Some(req.headers().clone());
                        if let Some(path) = forward::rewritten_path(selected, req.uri()) {
                            facts.path = path.as_str().to_string();
                        }
                        if let Some(authority) = &route.rewrite_authority {
                            facts.authority =
                                String::from_utf8_lossy(authority.as_bytes()).into_owned();
                        }
                    }
                }
                let upstreams = &conn.runtime.upstreams;
                let downstream = forward::Downstream {
                    client,
                    peer: conn.peer_addr,
                    local: conn.local_addr,
                };
                let tries = &mut chosen.tries;
                let faults = conn.activity.body_faults();
                let forwarded =
                    forward::forward(upstreams, backend, selected, req, &downstream, tries).await;
                let upstream = match forwarded {
                    Ok(upstream) => upstream,
                    // The client broke its body meanwhile: the failure is the client's.
                    Err(_) if conn.activity.body_faults() != faults => {
                        return Err(ProxyError::ClientBody {
                            malformed: conn.activity.last_body_fault_malformed(),
                        })
                    }
                    Err(e) => return Err(e.into()),
                };
                upstream.map(ResponseBody::Upstream)
            }
        };
        if destination_response.is_some() || !route.response_headers.is_empty() {
            let cx = facts.as_deref().map(|f| f.context(conn, client));
            let request = facts.as_deref().and_then(|f| f.headers.as_ref());
            let no_request = http::HeaderMap::new();
            let request = Some(request.unwrap_or(&no_request));
            if let Some(own) = destination_response {
                own.apply(response.headers_mut(), cx.as_ref(), request);
            }
            route
                .response_headers
                .apply(response.headers_mut(), cx.as_ref(), request);
        }
        if let Some(cors) = &route.cors {
            cors::decorate(cors, origin.as_ref(), response.headers_mut());
        }
        Ok(response)
    }
}

/// What a route's header values read of a request (Envoy's command operators), kept apart
/// from it: the request's own header operations change its head, and its response's come after
/// it has gone upstream.
struct RequestFacts {
    start: SystemTime,
    method: http::Method,
    authority: String,
    path: String,
    scheme: &'static str,
    version: http::Version,
    /// The request's headers, for a response value that reads them (`%REQ(...)%`).
    headers: Option<http::HeaderMap>,
}

impl RequestFacts {
    /// `started`: when the request's head was read, before any fault delay.
    fn of<B>(req: &Request<B>, authority: &str, scheme: &'static str, started: Instant) -> Self {
        let now = SystemTime::now();
        Self {
            start: now.checked_sub(started.elapsed()).unwrap_or(now),
            method: req.method().clone(),
            authority: authority.to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            scheme,
            version: req.version(),
            headers: None,
        }
    }

    fn context<'a>(&'a self, conn: &'a Connection, client: IpAddr) -> FormatContext<'a> {
        // The trusted client: the peer itself (its port known), or an address
        // `x-forwarded-for` gave, whose port Envoy prints as 0.
        let remote = if client == conn.peer_addr.ip() {
            conn.peer_addr
        } else {
            SocketAddr::new(client, 0)
        };
        let peer_uris = match (&conn.peer, conn.certificate_uris.as_ref()) {
            (Some(peer), _) => PeerUris::One(peer.spiffe_id.as_str()),
            (None, []) => PeerUris::None,
            (None, uris) => PeerUris::Many(uris),
        };
        FormatContext {
            remote,
            local: conn.local_addr,
            peer_uris,
            version: self.version,
            start: self.start,
            method: &self.method,
            authority: Some(&self.authority),
            path: &self.path,
            scheme: self.scheme,
        }
    }
}

/// One request, from its head until its response is over (sent, or cut short): in flight on
/// its connection's idle clock until then, and timed and logged when it ends.
struct Exchange {
    conn: Arc<Connection>,
    started: Instant,
    /// What the access log needs, only when there is one.
    log: Option<Box<Logged>>,
    /// When `done` ran.
    finished: Option<Instant>,
    /// An HTTP/2 stream's own progress (`limits.streamIdleTimeout`); `None` for an HTTP/1.1
    /// request, which uses its connection's clock (`clock()`), with no handle of its own.
    stream_clock: Option<Arc<StreamClock>>,
}

/// The request as the access log shows it, taken before the request moves on, and its
/// response as it goes.
struct Logged {
    start_time: SystemTime,
    method: http::Method,
    authority: String,
    path: String,
    /// The trusted client address.
    client: Option<IpAddr>,
    /// Counted by the request body on its way upstream.
    bytes_in: Arc<AtomicU64>,
    /// The response head: when it was ready, its status (`None`: there was none), where
    /// from, and the flags of how it came about.
    head: Option<Duration>,
    status: Option<u16>,
    backend: Option<usize>,
    flags: ResponseFlags,
    /// The upstream TLS handshake's failure, said in full.
    transport_failure: Option<String>,
}

impl Exchange {
    fn start(conn: Arc<Connection>, req: &Request<Incoming>) -> Self {
        conn.activity.request_started();
        // An HTTP/2 stream has its own clock; HTTP/1.1 requests take turns on the connection's.
        let stream_clock = StreamClock::current();
        let clock = match &stream_clock {
            Some(clock) => clock,
            None => {
                conn.activity.stream.restart();
                &conn.activity.stream
            }
        };
        // A request without a body is in whole, whether or not it is forwarded (its
        // `RequestBody` notes the others' ends).
        if http_body::Body::is_end_stream(req.body()) {
            clock.received();
        }
        let log = conn.runtime.access_log.as_ref().map(|_| {
            Box::new(Logged {
                start_time: SystemTime::now(),
                method: req.method().clone(),
                authority: String::new(),
                path: String::new(),
                client: None,
                bytes_in: Arc::new(AtomicU64::new(0)),
                head: None,
                status: None,
                backend: None,
                flags: ResponseFlags::default(),
                transport_failure: None,
            })
        });
        Self {
            conn,
            started: Instant::now(),
            log,
            finished: None,
            stream_clock,
        }
    }

    /// The clock of this request's stream: its own on HTTP/2, the connection's on HTTP/1.1.
    fn clock(&self) -> &Arc<StreamClock> {
        self.stream_clock
            .as_ref()
            .unwrap_or(&self.conn.activity.stream)
    }
}

impl Logged {
    /// Takes the authority and path the access log shows: the canonical ones, or as received
    /// when the head was refused.
    fn describe<B>(&mut self, req: &Request<B>) {
        self.authority = route::full_authority(req.uri(), req.headers())
            .unwrap_or("")
            .to_string();
        self.path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
    }
}

impl Done for Exchange {
    fn moved(&self) {
        self.clock().moved();
    }

    fn done(&mut self, bytes_out: u64, end: End) {
        let now = Instant::now();
        self.finished = Some(now);
        let took = now.saturating_duration_since(self.started);
        self.conn
            .runtime
            .listener_runtime(self.conn.listener)
            .counts
            .duration(self.conn.origin, took);
        let (Some(log), Some(logged)) = (&self.conn.runtime.access_log, self.log.take()) else {
            return;
        };
        // Envoy's flags for a response that did not finish: the upstream broke off (UR), or
        // the client went away first (DC). A response that may have no body (to HEAD, 204,
        // 304) is not read by the server at all.
        let bodiless =
            logged.method == http::Method::HEAD || matches!(logged.status, Some(204 | 304));
        let mut flags = logged.flags;
        let mut end = end;
        if end == End::Open && self.clock().route_cut() {
            // An HTTP/2 stream its executor reset at the route's timeout.
            end = End::RouteTimeout;
        } else if end == End::Open && self.clock().expired() {
            flags.insert(ResponseFlag::StreamIdleTimeout);
        }
        match end {
            End::UpstreamFailed if flags.is_empty() => {
                flags.insert(ResponseFlag::UpstreamRemoteReset)
            }
            End::RouteTimeout => flags.insert(ResponseFlag::UpstreamRequestTimeout),
            End::Open if flags.is_empty() && !bodiless => {
                flags.insert(ResponseFlag::DownstreamConnectionTermination)
            }
            _ => {}
        }
        let conn = &self.conn;
        let model = &conn.runtime.model;
        let id = conn.peer.as_ref().map(|p| &p.spiffe_id);
        log.log(&RequestEntry {
            start_time: &access_log::rfc3339(logged.start_time),
            listener: &conn.runtime.model_listener(conn.listener).name,
            peer: conn.peer_addr.to_string(),
            client_address: logged.client.unwrap_or(conn.peer_addr.ip()).to_string(),
            origin: conn.origin.map(Origin::as_str),
            source_trust_domain: id.map(|i| i.trust_domain()),
            principal: id.map(|i| i.principal()),
            method: logged.method.as_str(),
            authority: &logged.authority,
            path: &logged.path,
            status: logged.status,
            upstream: logged
                .backend
                .and_then(|b| model.backends.get(b))
                .map(|b| match b.port {
                    0 => format!("{}:*", b.host),
                    port => format!("{}:{port}", b.host),
                }),
            duration_ms: millis(took),
            response_duration_ms: logged.head.map(millis),
            bytes_in: logged.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            response_flags: flags,
            upstream_transport_failure_reason: logged.transport_failure.as_deref(),
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // A request dropped before its response head (the client reset the stream or closed
        // the connection) is still timed and logged.
        let ended = match self.finished {
            Some(at) => at,
            None => {
                self.done(0, End::Open);
                self.finished.unwrap_or_else(Instant::now)
            }
        };
        self.conn.activity.request_ended(ended);
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
