//! Downstream limits: slow clients are cut off at the timeouts and cost nothing afterwards;
//! connections over a listener's maximum are refused while the admitted ones keep working.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use support::client::{Client, Conn};
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

async fn gateway(pki: &Pki, limits: &str) -> (Proxy, meshgate_proxy::echo::Echo) {
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address)).replacen(
        "  listen:",
        &format!("  limits: {limits}\n  listen:"),
        1,
    );
    (
        Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await,
        backend,
    )
}

/// Reads until the server closes and returns what it sent; panics if it does not close
/// within the test timeout.
async fn closed_by_server(mut s: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut buf = [0u8; 512];
    let mut sent = Vec::new();
    let closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => sent.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(support::TIMEOUT, closed)
        .await
        .expect("the server never closed the connection");
    String::from_utf8_lossy(&sent).into_owned()
}

/// Envoy's answer to a request head that did not arrive in time, and nothing after it.
fn assert_head_timeout_answer(sent: &str) {
    assert!(
        sent.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "not a 408: {sent:?}"
    );
    assert!(sent.contains("\r\nconnection: close\r\n"), "{sent:?}");
    assert!(sent.ends_with("\r\n\r\nrequest header timeout"), "{sent:?}");
}

fn closed_for(proxy: &Proxy, reason: &str) -> u64 {
    proxy.running.metrics.connections_closed(reason)
}

fn active(proxy: &Proxy) -> bool {
    proxy
        .running
        .metrics
        .render()
        .contains("meshgate_connections_active 0")
}

#[tokio::test]
async fn slow_clients_are_cut_off_at_the_timeouts() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway(
        &pki,
        "{handshakeTimeout: 300ms, requestHeaderTimeout: 300ms}",
    )
    .await;
    let addr = proxy.addr(443);

    // Before the handshake: nothing at all, then a TLS record header and a stall.
    closed_by_server(TcpStream::connect(addr).await.unwrap()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    closed_by_server(s).await;
    support::eventually("two handshake timeouts", || proxy.rejected("timeout") == 2).await;

    // After the handshake: half a request head, then a stall.
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let mut tls = client.connect(addr, HOST).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: httpbin.example-target.com\r\n")
        .await
        .unwrap();
    assert_head_timeout_answer(&closed_by_server(tls).await);
    support::eventually("the close counted", || {
        closed_for(&proxy, "request_header_timeout") == 1
    })
    .await;
    assert!(proxy
        .running
        .metrics
        .render()
        .contains("meshgate_connections_closed_total{reason=\"request_header_timeout\"} 1"));

    // Nothing is left behind, and well-behaved clients are served.
    support::eventually("no connection left open", || active(&proxy)).await;
    let r = client.get(addr, HOST, HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn connections_over_the_maximum_are_refused_and_the_admitted_keep_working() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway(&pki, "{maxConnectionsPerListener: 2}").await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);

    let mut admitted = Vec::new();
    for _ in 0..2 {
        let tls = client.connect(addr, HOST).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        admitted.push(send);
    }
    // The third is closed at once.
    assert!(client.connect(addr, HOST).await.is_err());
    assert!(proxy
        .running
        .metrics
        .render()
        .contains("meshgate_connections_refused_total 1"));
    for send in &mut admitted {
        let req = Request::get("/")
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            send.send_request(req).await.unwrap().status(),
            StatusCode::OK
        );
    }
    // Once one goes, there is room again.
    drop(admitted.pop());
    support::eventually("a slot to free up", || {
        proxy
            .running
            .metrics
            .render()
            .contains("meshgate_connections_active 1")
    })
    .await;
    assert_eq!(
        client.get(addr, HOST, HOST, "/", &[]).await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let idle = std::time::Duration::from_millis(400);
    let slow = support::proxy::slow_backend("tick", 4, std::time::Duration::from_millis(200)).await;
    let yaml = gateway_yaml(&format!(
        "{}{}",
        route_to(HOST, echo_address()),
        route_to("slow.example-target.com", slow)
    ))
    .replacen("  listen:", "  limits: {idleTimeout: 400ms}\n  listen:", 1);
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");

    for alpn in [&b"http/1.1"[..], b"h2"] {
        let client = Client::new(Some(&caller), &pki.root.cert_pem, &[alpn]);
        let tls = client.connect(addr, HOST).await.unwrap();
        let opened = std::time::Instant::now();
        let (mut send, conn) = Conn::open(tls, alpn == b"h2").await.unwrap();
        // A response head that takes longer than the idle timeout, then a body that streams
        // for longer than it: the connection is busy throughout, and stays open.
        let r = send.get(HOST, "/delay/600").await;
        assert_eq!(r.0, StatusCode::OK, "{alpn:?}");
        let r = send.get("slow.example-target.com", "/").await;
        assert_eq!(
            (r.0, &r.1[..]),
            (StatusCode::OK, &b"ticktickticktick"[..]),
            "{alpn:?}"
        );
        let busy_until = std::time::Instant::now();
        // Then nothing: the proxy closes it (HTTP/2 with a GOAWAY first), not before the
        // timeout.
        let closed = tokio::time::timeout(support::TIMEOUT, conn)
            .await
            .expect("the idle connection was never closed")
            .unwrap();
        assert!(closed, "{alpn:?}: the connection did not end cleanly");
        // The proxy's idle clock starts when it has sent the last byte, which this client
        // (on a loaded machine) sees somewhat later: half the timeout is the margin.
        assert!(
            busy_until.elapsed() >= idle / 2,
            "{alpn:?}: closed while busy"
        );
        assert!(opened.elapsed() >= idle * 3);
    }
    support::eventually("no connection left open", || active(&proxy)).await;
    assert_eq!(closed_for(&proxy, "idle_timeout"), 2);
    assert_eq!(closed_for(&proxy, "request_header_timeout"), 0);
}

fn echo_address() -> std::net::SocketAddr {
    // Kept running for the whole test binary: an echo per test would be dropped here.
    static ECHO: std::sync::OnceLock<meshgate_proxy::echo::Echo> = std::sync::OnceLock::new();
    ECHO.get_or_init(echo).address
}

#[tokio::test]
async fn the_request_header_timeout_runs_from_the_first_byte_of_a_head_not_between_requests() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway(&pki, "{requestHeaderTimeout: 300ms, idleTimeout: 5s}").await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let head = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n");

    // A keep-alive connection waits, idle, longer than the header timeout between requests
    // (as a client's connection pool does) and is still served.
    let mut tls = client.connect(addr, HOST).await.unwrap();
    for _ in 0..2 {
        tls.write_all(head.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&response).contains("\"body_bytes\"") {
            let n = tokio::time::timeout(support::TIMEOUT, tls.read(&mut buf))
                .await
                .expect("no response")
                .unwrap();
            assert!(n > 0, "closed instead of answering");
            response.extend_from_slice(&buf[..n]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }

    // The same wait in the middle of a head, on that connection, ends it.
    let started = std::time::Instant::now();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: ").await.unwrap();
    assert_head_timeout_answer(&closed_by_server(tls).await);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    support::eventually("the close counted", || {
        closed_for(&proxy, "request_header_timeout") == 1
    })
    .await;
    assert_eq!(closed_for(&proxy, "idle_timeout"), 0);
}

#[tokio::test]
async fn on_plaintext_the_header_timeout_cuts_http1_heads_and_leaves_http2_alone() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address))
        .replace(
            "    tls: {mode: ISTIO_MUTUAL}\n",
            "    tls: {mode: ISTIO_MUTUAL}\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*.example-target.com\"]\n",
        )
        .replace("portOverrides: {443: 0}", "portOverrides: {443: 0, 8080: 0}")
        .replacen(
            "  listen:",
            "  limits: {requestHeaderTimeout: 300ms, idleTimeout: 5s}\n  listen:",
            1,
        );
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let addr = proxy.addr(8080);

    // HTTP/2 with prior knowledge: frames flow while no request is in flight (its preface,
    // SETTINGS), none of them a request head.
    let (mut h2, _conn) = Conn::open(TcpStream::connect(addr).await.unwrap(), true)
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(h2.get(HOST, "/").await.0, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    assert_eq!(h2.get(HOST, "/").await.0, StatusCode::OK);

    // HTTP/1.1: half a head, then nothing.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: ").await.unwrap();
    assert_head_timeout_answer(&closed_by_server(tcp).await);
}

/// hyper closes an HTTP/1.1 connection that waits 30 s for a request head unless told not to,
/// which would cut every idle keep-alive connection at 30 s whatever `idleTimeout` says.
#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_hypers_default_header_timeout() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway(&pki, "{idleTimeout: 1h}").await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let (mut h1, conn) = Conn::open(client.connect(addr, HOST).await.unwrap(), false)
        .await
        .unwrap();
    assert_eq!(h1.get(HOST, "/").await.0, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_secs(31)).await;
    assert!(!conn.is_finished(), "the proxy closed the idle connection");
    assert_eq!(h1.get(HOST, "/").await.0, StatusCode::OK);
}

/// HTTP starts when the client first sends something: a connection opened ahead of need is
/// served whenever its first request comes, and closed by the idle timeout if none does.
#[tokio::test]
async fn a_connection_that_has_sent_nothing_yet_is_served_later_or_closed_when_idle() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway(&pki, "{idleTimeout: 600ms}").await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let client = Client::new(Some(&caller), &pki.root.cert_pem, &[alpn]);
        let silent = client.connect(addr, HOST).await.unwrap();
        let opened = std::time::Instant::now();

        // A pause after the handshake, then requests.
        let tls = client.connect(addr, HOST).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (mut sender, _conn) = Conn::open(tls, alpn == b"h2").await.unwrap();
        for _ in 0..2 {
            assert_eq!(sender.get(HOST, "/").await.0, StatusCode::OK, "{alpn:?}");
        }

        // The silent one goes at the idle timeout, counted from the handshake.
        closed_by_server(silent).await;
        assert!(opened.elapsed() >= std::time::Duration::from_millis(600));
    }
    support::eventually("no connection left open", || active(&proxy)).await;
    // The two silent ones at least (the used ones may have idled out too before they went).
    assert!(closed_for(&proxy, "idle_timeout") >= 2);
}

/// Writes `bytes` one at a time, `gap` apart, until the server closes the connection; returns
/// how many it took, or `None` if all of them went through.
async fn trickle<S>(stream: S, bytes: &[u8], gap: std::time::Duration) -> Option<usize>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let mut closed = Box::pin(async move {
        let mut buf = [0u8; 512];
        while !matches!(read.read(&mut buf).await, Ok(0) | Err(_)) {}
    });
    for (i, b) in bytes.iter().enumerate() {
        tokio::select! {
            () = &mut closed => return Some(i),
            () = tokio::time::sleep(gap) => {}
        }
        if write.write_all(&[*b]).await.is_err() {
            return Some(i);
        }
    }
    None
}

#[tokio::test]
async fn a_trickle_does_not_stretch_the_timeouts() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway(
        &pki,
        "{handshakeTimeout: 300ms, requestHeaderTimeout: 300ms}",
    )
    .await;
    let addr = proxy.addr(443);
    let gap = std::time::Duration::from_millis(50);

    // Before the handshake: a ClientHello's first bytes, one every 50 ms, for up to 3 s.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.resize(60, 0);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let sent = trickle(tcp, &hello, gap).await;
    assert!(
        sent.is_some_and(|n| n < 30),
        "still open after {sent:?} bytes"
    );

    // After it: a request head, one byte every 50 ms.
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let tls = client.connect(addr, HOST).await.unwrap();
    let mut head = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nx-padding: ").into_bytes();
    head.resize(60, b'a');
    let sent = trickle(tls, &head, gap).await;
    assert!(
        sent.is_some_and(|n| n < 30),
        "still open after {sent:?} bytes"
    );
    support::eventually("no connection left open", || active(&proxy)).await;
}

#[tokio::test]
async fn a_client_chain_over_the_limit_is_refused_before_it_is_verified() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    // The leaf, its intermediate, and eight more copies of it: ten certificates, each of which
    // a verifier would otherwise try as a path.
    let intermediate = pki.ca("example.com").cert_pem.clone();
    let long = meshgate_pki::Workload {
        chain_pem: caller.chain_pem.clone() + &intermediate.repeat(8),
        key_pem: caller.key_pem.clone(),
        root_pem: caller.root_pem.clone(),
        leaf_der: caller.leaf_der.clone(),
    };
    for (limits, reason) in [
        ("{}", Some("chain_too_long")),
        ("{maxCertificateChainLength: 16}", None),
    ] {
        let (proxy, _backend) = gateway(&pki, limits).await;
        let client = Client::plain(Some(&long), &pki.root.cert_pem);
        let result = client.get(proxy.addr(443), HOST, HOST, "/get", &[]).await;
        match reason {
            Some(reason) => {
                assert!(result.is_err(), "{limits}: {result:?}");
                support::eventually(&format!("counted as {reason}"), || {
                    proxy.rejected(reason) == 1
                })
                .await;
            }
            None => assert_eq!(result.unwrap().status, StatusCode::OK, "{limits}"),
        }
        // The usual two-certificate chain is served either way.
        let client = Client::plain(Some(&caller), &pki.root.cert_pem);
        let result = client.get(proxy.addr(443), HOST, HOST, "/get", &[]).await;
        assert_eq!(result.unwrap().status, StatusCode::OK, "{limits}");
    }
}

/// A gateway with `limits` and an access log, routing `HOST` to an echo and
/// `silent.`/`slow.`/`firehose.`/`abrupt.example-target.com` to backends that never answer,
/// stream four ticks 200 ms apart, send 64 MiB as fast as they are taken, and close right after
/// a response head.
async fn streams_gateway(pki: &Pki, limits: &str) -> (Proxy, meshgate_proxy::echo::Echo) {
    let backend = echo();
    let routes = [
        route_to(HOST, backend.address),
        route_to(
            "silent.example-target.com",
            support::proxy::silent_backend().await,
        ),
        route_to(
            "slow.example-target.com",
            support::proxy::slow_backend("tick", 4, std::time::Duration::from_millis(200)).await,
        ),
        route_to(
            "firehose.example-target.com",
            support::proxy::firehose_backend(64 << 20).await,
        ),
        route_to(
            "abrupt.example-target.com",
            support::proxy::abrupt_backend("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n").await,
        ),
    ];
    let yaml = gateway_yaml(&routes.concat()).replacen(
        "  listen:",
        &format!("  limits: {limits}\n  accessLog: {{path: access.log}}\n  listen:"),
        1,
    );
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    (proxy, backend)
}

/// The access log's lines once it has `n`.
async fn log_lines(proxy: &Proxy, n: usize) -> Vec<serde_json::Value> {
    support::json_lines(&proxy.dir.path().join("access.log"), n).await
}

/// Access-log lines split into connection events (`event`) and requests.
fn by_event(lines: &[serde_json::Value]) -> (Vec<&serde_json::Value>, Vec<&serde_json::Value>) {
    lines.iter().partition(|l| l.get("event").is_some())
}

#[tokio::test]
async fn a_stream_on_which_nothing_moves_is_answered_408_and_one_that_moves_outlives_the_timeout() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = streams_gateway(&pki, "{streamIdleTimeout: 500ms}").await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let client = Client::new(Some(&caller), &pki.root.cert_pem, &[alpn]);
        let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
        let (mut send, _conn) = Conn::open(tls, alpn == b"h2").await.unwrap();
        // An upstream that never answers: Envoy's local reply, once nothing moved for 500 ms.
        let started = std::time::Instant::now();
        let (status, body) = send.get("silent.example-target.com", "/").await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::REQUEST_TIMEOUT, &b"stream timeout"[..]),
            "{alpn:?}"
        );
        assert!(started.elapsed() >= std::time::Duration::from_millis(500));
        // A response that takes 800 ms but moves every 200 ms is whole.
        let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
        let (mut send, _conn) = Conn::open(tls, alpn == b"h2").await.unwrap();
        let (status, body) = send.get("slow.example-target.com", "/").await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"ticktickticktick"[..]),
            "{alpn:?}"
        );
    }
    let lines = log_lines(&proxy, 4).await;
    let flags = |status: u64| {
        lines
            .iter()
            .filter(|l| l["status"] == status)
            .map(|l| l["response_flags"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(flags(408), ["SI", "SI"]);
    assert_eq!(flags(200), ["-", "-"]);
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_at_most_the_write_buffer_and_is_cut_at_the_stream_idle_timeout(
) {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = streams_gateway(&pki, "{streamIdleTimeout: 500ms}").await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");

    // HTTP/1.1: the head, then nothing read. Once cut, what reached the client is read out.
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let mut tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: firehose.example-target.com\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0);
        received.extend_from_slice(&buf[..n]);
    }
    // The request's line, and the line of the connection it cut.
    let lines = log_lines(&proxy, 2).await;
    let (events, requests) = by_event(&lines);
    assert_eq!(events.len(), 1, "{lines:?}");
    assert_eq!(events[0]["event"], "connection_closed");
    assert_eq!(events[0]["reason"], "stream_idle_timeout");
    let line = requests[0];
    assert_eq!(line["response_flags"], "SI", "{line}");
    let mut taken = received.len() as u64;
    loop {
        match tokio::time::timeout(support::TIMEOUT, tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => taken += n as u64,
            Ok(_) => break,
            Err(_) => panic!("the connection was not closed"),
        }
    }
    support::eventually("the cut counted", || {
        closed_for(&proxy, "stream_idle_timeout") == 1
    })
    .await;
    // Handed to hyper but never written: at most the 64 KiB write buffer, plus what rustls
    // had encrypted (its own 64 KiB) when the connection was dropped. Without the bound this
    // is one upstream read per queued chunk, megabytes.
    let bytes_out = line["bytes_out"].as_u64().unwrap();
    assert!(bytes_out > 0, "{line}");
    let held = bytes_out.saturating_sub(taken);
    assert!(
        held <= 192 * 1024,
        "{held} bytes held for a client that did not read"
    );

    // HTTP/2: the stalled stream is reset, and its connection goes on serving.
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"h2"]);
    let (mut send, _conn, stalled) = firehose_over_h2(&proxy, &client).await;
    let lines = log_lines(&proxy, 3).await;
    let (events, requests) = by_event(&lines);
    assert_eq!(events.len(), 1, "{lines:?}");
    let line = requests[1];
    assert_eq!(line["response_flags"], "SI", "{line}");
    let read = tokio::time::timeout(support::TIMEOUT, stalled.into_body().collect())
        .await
        .expect("the stalled stream was not reset");
    assert!(read.is_err(), "the stalled stream ended as if complete");
    assert_eq!(send.get(HOST, "/get").await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_http2_stream_that_stalls_during_the_drain_is_still_cut_at_the_stream_idle_timeout() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = streams_gateway(&pki, "{streamIdleTimeout: 500ms}").await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"h2"]);
    let (_send, _conn, stalled) = firehose_over_h2(&proxy, &client).await;

    // The drain waits for the stream (GOAWAY, then the streams in flight finish) for up to a
    // minute; the stalled one is still cut at the stream idle timeout, and the drain ends.
    let (running, dir) = (proxy.running, proxy.dir);
    let drain = tokio::spawn(running.shutdown(std::time::Duration::from_secs(60)));
    let lines = support::json_lines(&dir.path().join("access.log"), 1).await;
    let (_, requests) = by_event(&lines);
    assert_eq!(requests.len(), 1, "{lines:?}");
    assert_eq!(requests[0]["response_flags"], "SI", "{lines:?}");
    let read = tokio::time::timeout(support::TIMEOUT, stalled.into_body().collect())
        .await
        .expect("the stalled stream was not cut during the drain");
    assert!(read.is_err(), "the stalled stream ended as if complete");
    tokio::time::timeout(support::TIMEOUT, drain)
        .await
        .expect("the drain waited for the stalled stream")
        .unwrap();
    drop(dir);
}

/// An HTTP/2 request for the firehose backend's 64 MiB body, answered, its body not read;
/// with its connection, kept open.
async fn firehose_over_h2(
    proxy: &Proxy,
    client: &Client,
) -> (
    Conn,
    tokio::task::JoinHandle<bool>,
    http::Response<hyper::body::Incoming>,
) {
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    let (mut send, conn) = Conn::open(tls, true).await.unwrap();
    let stalled = send
        .send("firehose.example-target.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    (send, conn, stalled)
}

/// Sends `head` and then `body` one byte every `gap`, and returns the response's first line.
async fn trickled_request(
    client: &Client,
    proxy: &Proxy,
    head: &str,
    body: &[u8],
    gap: std::time::Duration,
) -> String {
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    write.write_all(head.as_bytes()).await.unwrap();
    let sending = async {
        if gap.is_zero() {
            let _ = write.write_all(body).await;
        }
        for b in body.iter().filter(|_| !gap.is_zero()) {
            tokio::time::sleep(gap).await;
            if write.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    let mut response = Vec::new();
    let reading = async {
        let mut buf = [0u8; 1024];
        while !response.windows(2).any(|w| w == b"\r\n") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(support::TIMEOUT, async {
        tokio::select! {
            () = sending => {}
            () = reading => {}
        }
    })
    .await
    .expect("no response");
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_request_body_that_stalls_or_crawls_past_the_request_timeout_is_answered_408() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) =
        streams_gateway(&pki, "{streamIdleTimeout: 1s, requestTimeout: 2s}").await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let head = format!("POST /post HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 1000\r\n\r\n");

    // Ten bytes, then nothing: the stream idle timeout.
    let started = std::time::Instant::now();
    let first = trickled_request(&client, &proxy, &head, &[b'x'; 10], ms(10)).await;
    assert_eq!(first, "HTTP/1.1 408 Request Timeout");
    assert!(started.elapsed() >= ms(1000));

    // A byte every 100 ms keeps it moving, but the whole body does not come within 2 s.
    let started = std::time::Instant::now();
    let first = trickled_request(&client, &proxy, &head, &[b'x'; 1000], ms(100)).await;
    assert_eq!(first, "HTTP/1.1 408 Request Timeout");
    assert!(started.elapsed() >= ms(2000));

    // A body that is in on time is served.
    let first = trickled_request(&client, &proxy, &head, &[b'x'; 1000], ms(0)).await;
    assert_eq!(first, "HTTP/1.1 200 OK");
    let lines = log_lines(&proxy, 3).await;
    let flags: Vec<_> = lines
        .iter()
        .map(|l| (l["status"].clone(), l["response_flags"].clone()))
        .collect();
    assert_eq!(
        flags,
        [
            (408.into(), "SI".into()),
            (408.into(), "-".into()),
            (200.into(), "-".into())
        ]
    );
}

/// A head over the limit is answered 431, one that does not parse 400: each ends its
/// connection, and is counted and logged as what closed it, as Envoy counts its local replies.
#[tokio::test]
async fn a_request_head_over_the_limit_is_refused_even_when_it_arrives_in_one_burst() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = streams_gateway(&pki, "{maxRequestHeaderBytes: 65536}").await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    for (padding, status) in [(60_000, "200 OK"), (70_000, "431"), (120_000, "431")] {
        let head = format!(
            "GET /get HTTP/1.1\r\nhost: {HOST}\r\nx-padding: {}\r\n\r\n",
            "a".repeat(padding)
        );
        let first = trickled_request(&client, &proxy, &head, &[], ms(0)).await;
        assert!(
            first.starts_with(&format!("HTTP/1.1 {status}")),
            "{padding}: {first}"
        );
    }
    let malformed = format!("GET /get HTTP/1.1\r\nhost: {HOST}\r\nno colon here\r\n\r\n");
    let first = trickled_request(&client, &proxy, &malformed, &[], ms(0)).await;
    assert!(first.starts_with("HTTP/1.1 400"), "{first}");

    let lines = log_lines(&proxy, 4).await;
    let (events, requests) = by_event(&lines);
    assert_eq!(requests.len(), 1, "{lines:?}");
    let mut reasons: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "connection_closed")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "bad_request",
            "request_header_too_large",
            "request_header_too_large"
        ]
    );
    let metrics = &proxy.running.metrics;
    assert_eq!(metrics.connections_closed("request_header_too_large"), 2);
    assert_eq!(metrics.connections_closed("bad_request"), 1);

    // With room for a longer head, a request target over hyper's 65534 bytes is answered 414.
    let (proxy, _backend) = streams_gateway(&pki, "{maxRequestHeaderBytes: 131072}").await;
    let long = format!(
        "GET /{} HTTP/1.1\r\nhost: {HOST}\r\n\r\n",
        "a".repeat(70_000)
    );
    let first = trickled_request(&client, &proxy, &long, &[], ms(0)).await;
    assert!(first.starts_with("HTTP/1.1 414"), "{first}");
    let lines = log_lines(&proxy, 1).await;
    assert_eq!(lines[0]["reason"], "uri_too_long", "{lines:?}");
    assert_eq!(proxy.running.metrics.connections_closed("uri_too_long"), 1);
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

#[tokio::test]
async fn an_upstream_that_closes_after_the_head_leaves_the_client_the_head_and_a_reset() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = streams_gateway(&pki, "{}").await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");

    // HTTP/1.1: the head, then the connection closes short of the 100 bytes it announced.
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let mut tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: abrupt.example-target.com\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(support::TIMEOUT, tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            Ok(_) => break,
            Err(_) => panic!("the connection was left open"),
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.contains("content-length: 100\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");

    // HTTP/2: the head, then the stream is reset.
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"h2"]);
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    let (mut send, _conn) = Conn::open(tls, true).await.unwrap();
    let response = send
        .send("abrupt.example-target.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());

    let lines = log_lines(&proxy, 2).await;
    for line in &lines {
        assert_eq!(
            (line["status"].as_u64(), line["response_flags"].as_str()),
            (Some(200), Some("UR")),
            "{line}"
        );
    }
}

/// Reads from `s` until `n` echo responses have arrived whole, and returns their status lines.
async fn echo_responses(s: &mut (impl tokio::io::AsyncRead + Unpin), n: usize) -> Vec<String> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&received)
        .matches("\"body_bytes\"")
        .count()
        < n
    {
        let read = tokio::time::timeout(support::TIMEOUT, s.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(read > 0, "closed instead of answering");
        received.extend_from_slice(&buf[..read]);
    }
    // A response starts right after the body before it, with no line break between.
    let received = String::from_utf8_lossy(&received).into_owned();
    received
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| received[at..].split("\r\n").next().unwrap().to_owned())
        .collect()
}

/// How many HTTP/1.1 connections are parked without HTTP state now.
fn parked(proxy: &Proxy) -> u64 {
    let metrics = proxy.running.metrics.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("meshgate_connections_parked "))
        .expect("no parked gauge");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits until `n` connections are parked (an idle one is within 2 s).
async fn until_parked(proxy: &Proxy, n: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while parked(proxy) != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} parked, not {n}",
            parked(proxy)
        );
        tokio::time::sleep(ms(50)).await;
    }
}

/// A gateway with `limits` and one HTTP/1.1 mTLS connection to it.
async fn connected(
    limits: &str,
) -> (
    Proxy,
    meshgate_proxy::echo::Echo,
    tokio_rustls::client::TlsStream<TcpStream>,
) {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, backend) = gateway(&pki, limits).await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    (proxy, backend, tls)
}

/// One request served on `tls`, then the wait until the connection is parked.
async fn served_then_parked(proxy: &Proxy, tls: &mut (impl AsyncWriteExt + AsyncReadExt + Unpin)) {
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(echo_responses(tls, 1).await, ["HTTP/1.1 200 OK"]);
    until_parked(proxy, 1).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_parked_and_serve_every_request_whole_after() {
    let (proxy, _backend, mut tls) =
        connected("{requestHeaderTimeout: 5s, idleTimeout: 30s}").await;
    let get = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n");

    // A request with a body, then a wait with nothing in flight: parked.
    let post = format!("POST / HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 5\r\n\r\nhello");
    tls.write_all(post.as_bytes()).await.unwrap();
    assert_eq!(echo_responses(&mut tls, 1).await, ["HTTP/1.1 200 OK"]);
    until_parked(&proxy, 1).await;

    // A request with the start of the next one behind it: served, and not parked while the
    // head is incomplete (longer than a connection waits to be parked); then the rest.
    let (start, rest) = get.split_at(20);
    tls.write_all(format!("{get}{start}").as_bytes())
        .await
        .unwrap();
    assert_eq!(echo_responses(&mut tls, 1).await, ["HTTP/1.1 200 OK"]);
    tokio::time::sleep(ms(2500)).await;
    assert_eq!(parked(&proxy), 0, "parked with half a head read");
    tls.write_all(rest.as_bytes()).await.unwrap();
    assert_eq!(echo_responses(&mut tls, 1).await, ["HTTP/1.1 200 OK"]);
    until_parked(&proxy, 1).await;

    // Two requests in one write, on a parked connection.
    tls.write_all(format!("{get}{get}").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        echo_responses(&mut tls, 2).await,
        ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]
    );
    until_parked(&proxy, 1).await;

    // A client that asks for the close gets it, after its response.
    let close = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n");
    tls.write_all(close.as_bytes()).await.unwrap();
    let sent = closed_by_server(tls).await;
    assert!(sent.starts_with("HTTP/1.1 200 OK\r\n"), "{sent:?}");
    assert_eq!(parked(&proxy), 0);
    assert_eq!(closed_for(&proxy, "request_header_timeout"), 0);
    assert_eq!(closed_for(&proxy, "idle_timeout"), 0);
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_the_idle_timeout_and_a_denied_one_is_parked_too() {
    let (proxy, _backend, mut tls) = connected("{idleTimeout: 4s}").await;
    // No route for this host: answered by the proxy, the request never forwarded.
    tls.write_all(b"GET / HTTP/1.1\r\nhost: nowhere.example\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 404");
    until_parked(&proxy, 1).await;
    closed_by_server(tls).await;
    assert_eq!(closed_for(&proxy, "idle_timeout"), 1);
    assert_eq!(parked(&proxy), 0);
}

#[tokio::test]
async fn the_drain_closes_a_parked_connection_with_a_tls_close() {
    let (proxy, _backend, mut tls) = connected("{idleTimeout: 30s}").await;
    served_then_parked(&proxy, &mut tls).await;

    let (running, dir) = (proxy.running, proxy.dir);
    let drain = tokio::spawn(running.shutdown(std::time::Duration::from_secs(5)));
    // A clean end of the stream: the proxy sent close_notify before its FIN.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(support::TIMEOUT, tls.read(&mut buf))
        .await
        .expect("the parked connection stayed open through the drain");
    assert_eq!(read.unwrap(), 0);
    tokio::time::timeout(support::TIMEOUT, drain)
        .await
        .unwrap()
        .unwrap();
    drop(dir);
}

#[tokio::test]
async fn a_head_begun_on_a_parked_connection_is_still_cut_at_the_request_header_timeout() {
    let (proxy, _backend, mut tls) =
        connected("{requestHeaderTimeout: 1s, idleTimeout: 30s}").await;
    served_then_parked(&proxy, &mut tls).await;
    let get = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n");

    // Half a head wakes the connection, which then waits for the rest no longer than the
    // timeout allows a head.
    tls.write_all(&get.as_bytes()[..20]).await.unwrap();
    let sent = closed_by_server(tls).await;
    assert_head_timeout_answer(&sent);
    assert_eq!(closed_for(&proxy, "request_header_timeout"), 1);
    assert_eq!(parked(&proxy), 0);
}

const LIMITS: &str = "{requestHeaderTimeout: 300ms, idleTimeout: 30s}";

/// The gateway with `LIMITS`, its mTLS port 443 and a plaintext HTTP port 8080.
async fn gateway_with_http(pki: &Pki) -> (Proxy, meshgate_proxy::echo::Echo) {
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address))
        .replace(
            "    tls: {mode: ISTIO_MUTUAL}\n",
            "    tls: {mode: ISTIO_MUTUAL}\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*.example-target.com\"]\n",
        )
        .replace("portOverrides: {443: 0}", "portOverrides: {443: 0, 8080: 0}")
        .replacen("  listen:", &format!("  limits: {LIMITS}\n  listen:"), 1);
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    (proxy, backend)
}

/// Writes `first`, then `then` every `gap`, for `lasting`; returns what the server sent if it
/// closed the connection in that time, `None` if the connection was still open at the end.
async fn closed_within<S>(
    stream: S,
    first: &[u8],
    then: &[u8],
    gap: Duration,
    lasting: Duration,
) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let mut sent = Vec::new();
    let closed = async {
        let mut buf = [0u8; 512];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => sent.extend_from_slice(&buf[..n]),
            }
        }
    };
    let writing = async {
        let _ = write.write_all(first).await;
        loop {
            tokio::time::sleep(gap).await;
            if !then.is_empty() && write.write_all(then).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let result = tokio::time::timeout(lasting, async {
        tokio::select! {
            () = closed => {}
            () = writing => {}
        }
    })
    .await;
    result
        .ok()
        .map(|()| String::from_utf8_lossy(&sent).into_owned())
}

/// That `sent` (what the server wrote before it closed; `None`: still open after the test's
/// 3 s) is the head timeout's 408, counted once.
fn head_timed_out(proxy: &Proxy, sent: Option<String>, what: &str) {
    let sent = sent.unwrap_or_else(|| {
        panic!(
            "{what} was still open 3 s after its first byte (requestHeaderTimeout 300ms; {} \
             head timeouts counted)",
            head_timeouts(proxy)
        )
    });
    assert!(sent.starts_with("HTTP/1.1 408"), "{what}: {sent:?}");
    assert_eq!(head_timeouts(proxy), 1, "{what}");
}

fn head_timeouts(proxy: &Proxy) -> u64 {
    proxy
        .running
        .metrics
        .connections_closed("request_header_timeout")
}

/// Empty lines are no head (the parser passes over them before a request line): one
/// `\r\n\r\n` every 200 ms is cut at the 300 ms the head is allowed, as any stalled head is.
#[tokio::test]
async fn a_head_fed_as_empty_lines_is_cut_at_the_request_header_timeout() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway_with_http(&pki).await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    let sent = closed_within(
        tls,
        b"\r\n\r\n",
        b"\r\n\r\n",
        Duration::from_millis(200),
        Duration::from_secs(3),
    )
    .await;
    head_timed_out(&proxy, sent, "a head of empty lines");
}

/// On the plaintext listener, an HTTP/1.1 head that starts with `PRI` but is not the HTTP/2
/// preface is timed as a head.
#[tokio::test]
async fn a_plaintext_http1_head_starting_with_pri_is_cut_at_the_request_header_timeout() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway_with_http(&pki).await;
    let tcp = TcpStream::connect(proxy.addr(8080)).await.unwrap();
    let sent = closed_within(
        tcp,
        format!("PRI /get HTTP/1.1\r\nhost: {HOST}\r\nx-slow: ").as_bytes(),
        b"",
        Duration::from_millis(200),
        Duration::from_secs(3),
    )
    .await;
    head_timed_out(&proxy, sent, "a plaintext head starting with PRI");
}

/// HTTP/2 with prior knowledge whose preface arrives in two pieces (the second with the
/// client's SETTINGS): no head to time once it is whole, so the connection outlives the head
/// timeout and serves a request after it.
#[tokio::test]
async fn a_split_http2_preface_is_not_a_stalled_head() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway_with_http(&pki).await;
    let mut tcp = TcpStream::connect(proxy.addr(8080)).await.unwrap();
    tcp.write_all(&PREFACE[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(TokioIo::new(SplitPreface::after(tcp, 10)))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Idle past the 300 ms head timeout, then a request on the same connection.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let req = Request::get(format!("http://{HOST}/get"))
        .version(http::Version::HTTP_2)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("answered")
        .expect("the connection is still open");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(head_timeouts(&proxy), 0);
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection on which the first bytes of the HTTP/2 preface went already: the client's own
/// preface is taken as written, and the rest of ours goes out with its next write (its
/// SETTINGS).
struct SplitPreface {
    tcp: TcpStream,
    /// Preface bytes of the client's still to take as written.
    skip: usize,
    /// The rest of the preface, to send before the client's next bytes.
    rest: Vec<u8>,
}

impl SplitPreface {
    fn after(tcp: TcpStream, sent: usize) -> Self {
        Self {
            tcp,
            skip: PREFACE.len(),
            rest: PREFACE[sent..].to_vec(),
        }
    }
}

impl AsyncRead for SplitPreface {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SplitPreface {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return std::task::Poll::Ready(Ok(n));
        }
        if !self.rest.is_empty() {
            // Written whole, with the client's bytes, in one write.
            let mut joined = std::mem::take(&mut self.rest);
            joined.extend_from_slice(buf);
            let tcp = &mut self.tcp;
            let mut wrote = 0;
            while wrote < joined.len() {
                match std::pin::Pin::new(&mut *tcp).poll_write(cx, &joined[wrote..]) {
                    std::task::Poll::Ready(Ok(n)) => wrote += n,
                    other => panic!("a loopback write of {} bytes: {other:?}", joined.len()),
                }
            }
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
