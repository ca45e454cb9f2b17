//! Retries, timeouts and circuit breakers as Istio configures Envoy's router and cluster,
//! through the outbound listener to scripted backends that fail on cue.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};

use support::client::{plain_get, plain_request};
use support::scripted::{Answer, Scripted};
use support::sidecar::Sidecar;
use support::TempDir;

/// A ServiceEntry for `host` port 80 whose endpoints are `ports` on 127.0.0.1, in order, and a
/// DestinationRule balancing them round robin (plus `pool`, a `connectionPool` when not empty),
/// and a VirtualService with `http`.
fn service(host: &str, ports: &[u16], pool: &str, http: &str) -> String {
    let pool = if pool.is_empty() {
        String::new()
    } else {
        format!(", connectionPool: {pool}")
    };
    service_with(
        host,
        ports,
        &format!("{{loadBalancer: {{simple: ROUND_ROBIN}}{pool}}}"),
        http,
    )
}

/// As `service`, with the DestinationRule's whole `trafficPolicy`.
fn service_with(host: &str, ports: &[u16], traffic_policy: &str, http: &str) -> String {
    let endpoints: Vec<String> = ports
        .iter()
        .map(|p| format!("{{address: 127.0.0.1, ports: {{http: {p}}}}}"))
        .collect();
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc, namespace: default}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{endpoints}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc, namespace: default}}
spec:
  host: {host}
  trafficPolicy: {traffic_policy}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc, namespace: default}}
spec:
  hosts: [{host}]
  http:
{http}"#,
        endpoints = endpoints.join(", ")
    )
}

/// A sidecar in front of `backend` alone, as `service` has it (pool and http).
async fn one_backend(backend: &Scripted, pool: &str, http: &str) -> Sidecar {
    Sidecar::start(&service(
        "svc.internal",
        &[backend.address.port()],
        pool,
        http,
    ))
    .await
}

/// A sidecar in front of `backend` as `service` has it (pool and http), writing its access
/// log to `access.log` in a directory of its own; the directory lives as long as the sidecar.
async fn logged_sidecar(
    name: &str,
    backend: &Scripted,
    pool: &str,
    http: &str,
) -> (Sidecar, TempDir, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let log = dir.path().join("access.log");
    let extra = format!(
        "  accessLog: {{path: {}}}\n{}",
        log.display(),
        service("svc.internal", &[backend.address.port()], pool, http)
    );
    (Sidecar::start(&extra).await, dir, log)
}

/// A loopback port nothing listens on.
async fn dead_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn post(addr: SocketAddr, path: &str, body: &'static [u8]) -> support::client::Reply {
    plain_request(
        addr,
        Method::POST,
        "svc.internal",
        path,
        &[],
        Bytes::from_static(body),
    )
    .await
    .unwrap()
}

/// The value of `meshgate_upstream_retries_total` for `outcome`, summed over backends.
async fn retries(sidecar: &Sidecar, outcome: &str) -> u64 {
    let text = sidecar.running.metrics.render();
    text.lines()
        .filter(|l| {
            l.starts_with("meshgate_upstream_retries_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn without_retries_istio_retries_connect_failures_twice_and_never_a_5xx() {
    let good = Scripted::start("good", &[]).await;
    let dead = dead_port().await;
    let http = "  - route: [{destination: {host: svc.internal}}]\n";
    let sidecar = Sidecar::start(&service(
        "svc.internal",
        &[dead, good.address.port()],
        "",
        http,
    ))
    .await;
    // Round robin over a dead and a live endpoint: every request that met the dead one is
    // tried again, on the other.
    for _ in 0..10 {
        let r = plain_get(sidecar.addr(), "svc.internal", "/", &[])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    assert!(retries(&sidecar, "retried").await >= 4);

    // A 503 is the upstream's answer, not retried by Istio's default policy.
    good.then(&[Answer::Status(503)]);
    let before = good.seen().len();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(
            plain_get(sidecar.addr(), "svc.internal", "/", &[])
                .await
                .unwrap()
                .status,
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| s.as_u16() == 503).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(good.seen().len() - before, 2, "one try per request");

    // gRPC UNAVAILABLE (14) is retried by default; INTERNAL (13) is not.
    good.then(&[Answer::Grpc(14)]);
    let before = good.seen().len();
    let mut r = plain_get(
        sidecar.addr(),
        "svc.internal",
        "/",
        &[("content-type", "application/grpc")],
    )
    .await
    .unwrap();
    if r.headers.get("grpc-status").is_none() {
        // Round robin sent the first try to the dead endpoint; the retry got UNAVAILABLE.
        r = plain_get(
            sidecar.addr(),
            "svc.internal",
            "/",
            &[("content-type", "application/grpc")],
        )
        .await
        .unwrap();
    }
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        good.seen().len() - before >= 2,
        "UNAVAILABLE was not retried"
    );
}

#[tokio::test]
async fn retries_on_5xx_replay_the_body_and_stop_at_the_attempts() {
    let backend = Scripted::start("b", &[Answer::Status(503), Answer::Reset]).await;
    let http = "  - retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: svc.internal}}]\n";
    let (sidecar, _dir, log) = logged_sidecar("retry-log", &backend, "", http).await;

    // 503, then a reset, then 200: three tries, each with the whole body.
    let r = post(sidecar.addr(), "/once", b"hello, retries").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let seen = backend.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|s| s.body == b"hello, retries"), "{seen:?}");
    assert_eq!(retries(&sidecar, "retried").await, 2);
    assert_eq!(retries(&sidecar, "succeeded").await, 1);

    // Always 500: the first try and 3 retries, then the last answer, flagged URX.
    backend.then(&[Answer::Status(500); 4]);
    let r = post(sidecar.addr(), "/exhausted", b"again").await;
    assert_eq!(r.status.as_u16(), 500);
    assert_eq!(backend.seen().len(), 3 + 4);
    assert_eq!(retries(&sidecar, "limit_exceeded").await, 1);
    let lines = support::json_lines(&log, 2).await;
    let flags = |path: &str| {
        lines.iter().find(|l| l["path"] == path).unwrap()["response_flags"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(flags("/once"), "-");
    assert_eq!(flags("/exhausted"), "URX");
}

#[tokio::test]
async fn retry_conditions_are_envoys_status_codes_4xx_and_gateway_errors() {
    let backend = Scripted::start("b", &[]).await;
    let http = r#"  - match: [{uri: {prefix: /codes}}]
    retries: {attempts: 2, retryOn: "429,connect-failure"}
    route: [{destination: {host: svc.internal}}]
  - match: [{uri: {prefix: /gateway}}]
    retries: {attempts: 2, retryOn: gateway-error}
    route: [{destination: {host: svc.internal}}]
  - match: [{uri: {prefix: /off}}]
    retries: {attempts: 0}
    route: [{destination: {host: svc.internal}}]
"#;
    let sidecar = one_backend(&backend, "", http).await;
    let tries = |path: &'static str, script: &'static [Answer]| {
        let backend = backend.clone();
        let addr = sidecar.addr();
        async move {
            let before = backend.seen().len();
            backend.then(script);
            let r = plain_get(addr, "svc.internal", path, &[]).await.unwrap();
            (r.status.as_u16(), backend.seen().len() - before)
        }
    };
    assert_eq!(tries("/codes", &[Answer::Status(429)]).await, (200, 2));
    assert_eq!(tries("/codes", &[Answer::Status(503)]).await, (503, 1));
    assert_eq!(
        tries("/gateway", &[Answer::Status(502), Answer::Status(504)]).await,
        (200, 3)
    );
    assert_eq!(tries("/gateway", &[Answer::Status(500)]).await, (500, 1));
    // `attempts: 0` turns retries off, Istio's default conditions included.
    let r = tries("/off", &[Answer::Reset]).await;
    assert_eq!(r, (503, 1));
}

#[tokio::test]
async fn per_try_timeout_retries_a_slow_try_and_the_route_timeout_bounds_them_all() {
    let backend = Scripted::start("b", &[Answer::Slow(Duration::from_secs(2), 200)]).await;
    let http = r#"  - match: [{uri: {prefix: /per-try}}]
    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}
    route: [{destination: {host: svc.internal}}]
  - match: [{uri: {prefix: /bounded}}]
    timeout: 500ms
    retries: {attempts: 10, perTryTimeout: 200ms, retryOn: reset}
    route: [{destination: {host: svc.internal}}]
"#;
    let sidecar = one_backend(&backend, "", http).await;
    let started = Instant::now();
    let r = plain_get(sidecar.addr(), "svc.internal", "/per-try", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(backend.seen().len(), 2);

    backend.then(&[Answer::Slow(Duration::from_secs(2), 200); 10]);
    let started = Instant::now();
    let r = plain_get(sidecar.addr(), "svc.internal", "/bounded", &[])
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // 200 ms a try within 500 ms: two or three tries, never ten.
    let tries = backend.seen().len() - 2;
    assert!((2..=3).contains(&tries), "{tries} tries");
}

/// Envoy's route timeout runs until the response is whole: a body still coming when it passes
/// is cut, and the access log says `UT`; without a timeout the same body arrives whole.
#[tokio::test]
async fn the_route_timeout_cuts_a_body_still_coming_when_it_passes() {
    let trickle = Answer::Trickle(Duration::from_millis(100), 12);
    let backend = Scripted::start("b", &[trickle, trickle]).await;
    let http = r#"  - match: [{uri: {prefix: /bounded}}]
    timeout: 500ms
    route: [{destination: {host: svc.internal}}]
  - route: [{destination: {host: svc.internal}}]
"#;
    let (sidecar, _dir, log) = logged_sidecar("timeout-log", &backend, "", http).await;
    let started = Instant::now();
    let cut = plain_get(sidecar.addr(), "svc.internal", "/bounded", &[]).await;
    let took = started.elapsed();
    let e = cut.expect_err("the body outlived the route timeout");
    assert!(e.starts_with("body:"), "{e}");
    assert!(took < Duration::from_millis(1100), "{took:?}");

    let whole = plain_get(sidecar.addr(), "svc.internal", "/free", &[])
        .await
        .unwrap();
    assert_eq!(whole.body.len(), 12);

    let lines = support::json_lines(&log, 2).await;
    let flags: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap(),
                l["response_flags"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(flags, [("/bounded", "UT"), ("/free", "-")], "{lines:?}");
    assert_eq!(lines[0]["status"], 200);
}

/// Envoy's route timeout, and the first try's `perTryTimeout`, start once the whole request is
/// in: an upload slower than both is not cut, and they then bound the wait for the answer.
#[tokio::test]
async fn the_route_timeout_starts_when_the_request_body_is_in() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slow = Answer::Slow(Duration::from_millis(900), 200);
    let backend = Scripted::start("b", &[Answer::Status(200), slow, slow, slow]).await;
    // Retries on: the body is kept for another try, and the timers still wait for its end.
    let http = "  - timeout: 500ms\n    retries: {attempts: 2, perTryTimeout: 300ms, retryOn: 5xx}\n    route: [{destination: {host: svc.internal}}]\n";
    let sidecar = one_backend(&backend, "", http).await;
    // Ten bytes 100 ms apart: the body is in after about a second.
    let upload = |addr: SocketAddr| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PUT /up HTTP/1.1\r\nhost: svc.internal\r\ncontent-length: 10\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tcp.write_all(b"x").await.unwrap();
        }
        let sent = Instant::now();
        let mut answer = vec![0u8; 1024];
        let n = tcp.read(&mut answer).await.unwrap();
        (
            String::from_utf8_lossy(&answer[..n]).to_string(),
            sent.elapsed(),
        )
    };
    let (answer, _) = upload(sidecar.addr()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.seen()[0].body, b"xxxxxxxxxx");
    // The answers take 900 ms: a try is given up 300 ms after the body's end, the next one
    // at the route's 500 ms.
    let (answer, waited) = upload(sidecar.addr()).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(880),
        "{waited:?}"
    );
    // One try for the first upload (its per-try timer did not run during it), two for the
    // second.
    assert_eq!(backend.seen().len(), 3);
}

/// A client that takes nothing of a long body holds it paused: the route timeout still cuts
/// it there (`UT`), long before the stream idle timeout would.
#[tokio::test]
async fn the_route_timeout_cuts_a_body_paused_for_a_client_that_reads_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Scripted::start("b", &[Answer::Body(64 << 20)]).await;
    let http = "  - timeout: 500ms\n    route: [{destination: {host: svc.internal}}]\n";
    let (sidecar, _dir, log) = logged_sidecar("paused-log", &backend, "", http).await;
    let mut tcp = tokio::net::TcpStream::connect(sidecar.addr())
        .await
        .unwrap();
    tcp.write_all(b"GET /big HTTP/1.1\r\nhost: svc.internal\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // Nothing more is read: the proxy's writes fill the socket, and the body pauses.
    let lines = support::json_lines(&log, 1).await;
    assert_eq!(lines[0]["response_flags"], "UT", "{lines:?}");
    assert!(lines[0]["bytes_out"].as_u64().unwrap() < 64 << 20);
    drop(tcp);
}

/// Over HTTP/2 a client that takes nothing holds the body paused by its flow-control window,
/// where hyper polls it no more: the route timeout still resets the stream (`UT`), and only
/// the stream: the connection goes on serving.
#[tokio::test]
async fn the_route_timeout_resets_an_http2_stream_paused_by_flow_control() {
    use http_body_util::BodyExt;
    let backend = Scripted::start("b", &[Answer::Body(64 << 20), Answer::Status(200)]).await;
    let http = "  - timeout: 500ms\n    route: [{destination: {host: svc.internal}}]\n";
    let (sidecar, _dir, log) = logged_sidecar("paused-h2-log", &backend, "", http).await;
    let tcp = tokio::net::TcpStream::connect(sidecar.addr())
        .await
        .unwrap();
    let (mut conn, _task) = support::client::Conn::open(tcp, true).await.unwrap();
    let started = Instant::now();
    let big = conn.send("svc.internal", "/big", &[]).await.unwrap();
    assert_eq!(big.status(), StatusCode::OK);
    // Nothing of the body is read: the client's window fills, and the stream pauses.
    let lines = support::json_lines(&log, 1).await;
    assert_eq!(lines[0]["response_flags"], "UT", "{lines:?}");
    // Held by the window (hyper's client opens 2 MiB a stream), not cut mid-flow.
    assert!(
        lines[0]["bytes_out"].as_u64().unwrap() < 8 << 20,
        "{lines:?}"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // What the window let through, then the reset.
    let e = big.into_body().collect().await.expect_err("a reset stream");
    assert!(format!("{e:?}").contains("CANCEL"), "{e:?}");
    let (status, _) = conn.get("svc.internal", "/next").await;
    assert_eq!(status, StatusCode::OK);
}

/// Envoy's route timeout ends with the upstream's response: a body read whole from the
/// upstream, its last part still waiting for the client's window, is delivered, not reset.
#[tokio::test]
async fn the_route_timeout_ends_when_the_upstream_response_is_whole() {
    let backend = Scripted::start("b", &[Answer::Halves(Duration::from_millis(150), 1000)]).await;
    let http = "  - timeout: 400ms\n    route: [{destination: {host: svc.internal}}]\n";
    let (sidecar, _dir, log) = logged_sidecar("whole-h2-log", &backend, "", http).await;
    let tcp = tokio::net::TcpStream::connect(sidecar.addr())
        .await
        .unwrap();
    // A window of one half: the first fills it, the second waits in the proxy.
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(1000)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://svc.internal/whole")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Past the route timeout with the window shut; the upstream finished long before.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut body = response.into_body();
    let mut got = 0;
    while let Some(data) = body.data().await {
        let data = data.expect("the whole body, not a reset");
        got += data.len();
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    assert_eq!(got, 2000);
    let lines = support::json_lines(&log, 1).await;
    assert_eq!(lines[0]["response_flags"], "-", "{lines:?}");
}

#[tokio::test]
async fn a_body_over_the_retry_buffer_is_sent_once_and_its_answer_stands() {
    let backend = Scripted::start("b", &[Answer::Status(503)]).await;
    let http = "  - retries: {attempts: 2, retryOn: 5xx}\n    route: [{destination: {host: svc.internal}}]\n";
    let sidecar = one_backend(&backend, "", http).await;
    let big = Bytes::from(vec![b'x'; 2 << 20]);
    let r = plain_request(
        sidecar.addr(),
        Method::PUT,
        "svc.internal",
        "/big",
        &[],
        big,
    )
    .await
    .unwrap();
    assert_eq!(r.status.as_u16(), 503);
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), 2 << 20);
}

#[tokio::test]
async fn circuit_breakers_answer_overflow_with_503_uo_and_count_it() {
    let slow = Answer::Slow(Duration::from_millis(600), 200);
    let backend = Scripted::start("b", &[slow; 3]).await;
    let http = "  - route: [{destination: {host: svc.internal}}]\n";
    // Istio's circuit-breaking task: one connection, one request pending.
    let pool = "{tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}";
    let (sidecar, _dir, log) = logged_sidecar("breaker-log", &backend, pool, http).await;
    let addr = sidecar.addr();
    let mut calls = Vec::new();
    for i in 0..3 {
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            plain_get(addr, "svc.internal", "/", &[]).await.unwrap()
        }));
    }
    let mut replies = Vec::new();
    for c in calls {
        replies.push(c.await.unwrap());
    }
    let overflowed: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(overflowed.len(), 1, "{replies:?}");
    assert_eq!(overflowed[0].headers["x-envoy-overloaded"], "true");
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count(),
        2
    );
    let metrics = sidecar.running.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshgate_upstream_overflow_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
    let lines = support::json_lines(&log, 3).await;
    assert_eq!(
        lines.iter().filter(|l| l["response_flags"] == "UO").count(),
        1,
        "{lines:?}"
    );
}

#[tokio::test]
async fn http2_max_requests_limits_the_requests_in_flight_to_a_backend() {
    let slow = Answer::Slow(Duration::from_millis(500), 200);
    let backend = Scripted::start("b", &[slow; 3]).await;
    let http = "  - route: [{destination: {host: svc.internal}}]\n";
    let sidecar = one_backend(&backend, "{http: {http2MaxRequests: 2}}", http).await;
    let addr = sidecar.addr();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                plain_get(addr, "svc.internal", "/", &[])
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503]);
    // Once they are answered, there is room again.
    let r = plain_get(addr, "svc.internal", "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn max_retries_caps_the_retries_in_flight_on_a_backend() {
    let fail = Answer::Slow(Duration::from_millis(300), 503);
    let backend = Scripted::start("b", &[fail; 2]).await;
    backend.then(&[Answer::Slow(Duration::from_millis(300), 200)]);
    let http = "  - retries: {attempts: 2, retryOn: 5xx}\n    route: [{destination: {host: svc.internal}}]\n";
    let sidecar = one_backend(&backend, "{http: {maxRetries: 1}}", http).await;
    let addr = sidecar.addr();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                plain_get(addr, "svc.internal", "/", &[])
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().as_u16());
    }
    statuses.sort();
    // Both failed together; one retry was in flight, so the other's answer stood.
    assert_eq!(statuses, [200, 503]);
    assert_eq!(retries(&sidecar, "overflow").await, 1);
    assert_eq!(retries(&sidecar, "retried").await, 1);
}

/// The admin endpoint's `/stats/prometheus`.
async fn admin_stats(sidecar: &Sidecar) -> String {
    let admin = sidecar.running.admin.expect("admin bound");
    let r = plain_get(admin, "admin", "/stats/prometheus", &[])
        .await
        .unwrap();
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test]
async fn outlier_detection_ejects_an_endpoint_after_consecutive_5xx_and_shows_it() {
    let failing = Scripted::start("failing", &[Answer::Status(503); 50]).await;
    let healthy = Scripted::start("healthy", &[]).await;
    let http = "  - retries: {attempts: 0}\n    route: [{destination: {host: svc.internal}}]\n";
    let policy = "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}}";
    let extra = format!(
        "  admin: {{address: \"127.0.0.1:0\"}}\n{}",
        service_with(
            "svc.internal",
            &[failing.address.port(), healthy.address.port()],
            policy,
            http
        )
    );
    let sidecar = Sidecar::start(&extra).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = plain_get(sidecar.addr(), "svc.internal", "/", &[])
            .await
            .unwrap();
        statuses.push(r.status.as_u16());
    }
    // Round robin: the failing endpoint's first two answers eject it; the rest go to the other.
    assert_eq!(failing.seen().len(), 2, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
    assert!(statuses[4..].iter().all(|s| *s == 200), "{statuses:?}");
    let stats = admin_stats(&sidecar).await;
    assert!(
        stats.contains("meshgate_upstream_ejections_total{backend=\"svc.internal:80\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("meshgate_upstream_ejected_endpoints{backend=\"svc.internal:80\"} 1"),
        "{stats}"
    );
}

#[tokio::test]
async fn consistent_hashing_keeps_a_user_a_cookie_and_a_source_on_one_endpoint() {
    let backends = [
        Scripted::start("a", &[]).await,
        Scripted::start("b", &[]).await,
        Scripted::start("c", &[]).await,
    ];
    let ports: Vec<u16> = backends.iter().map(|b| b.address.port()).collect();
    let http = "  - route: [{destination: {host: svc.internal}}]\n";
    let which = |r: &support::client::Reply| r.headers["x-backend"].to_str().unwrap().to_string();

    let header = Sidecar::start(&service_with(
        "svc.internal",
        &ports,
        "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
        http,
    ))
    .await;
    let mut chosen = std::collections::BTreeMap::new();
    for round in 0..4 {
        for user in ["ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal"] {
            let r = plain_get(header.addr(), "svc.internal", "/", &[("x-user", user)])
                .await
                .unwrap();
            let got = which(&r);
            let first = chosen.entry(user).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "{user} moved in round {round}");
        }
    }
    let spread: std::collections::BTreeSet<_> = chosen.values().collect();
    assert!(spread.len() >= 2, "eight users on one endpoint: {chosen:?}");

    let source = Sidecar::start(&service_with(
        "svc.internal",
        &ports,
        "{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}",
        http,
    ))
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(which(
            &plain_get(source.addr(), "svc.internal", "/", &[])
                .await
                .unwrap(),
        ));
    }
    assert_eq!(seen.len(), 1, "one client address, one endpoint: {seen:?}");

    let cookie = Sidecar::start(&service_with(
        "svc.internal",
        &ports,
        "{loadBalancer: {consistentHash: {httpCookie: {name: affinity, path: /, ttl: 60s}}}}",
        http,
    ))
    .await;
    let first = plain_get(cookie.addr(), "svc.internal", "/", &[])
        .await
        .unwrap();
    let set = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("affinity=\"") && set.ends_with("; Max-Age=60; Path=/; HttpOnly"),
        "{set}"
    );
    let value = set.split(';').next().unwrap().to_string();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let r = plain_get(cookie.addr(), "svc.internal", "/", &[("cookie", &value)])
            .await
            .unwrap();
        assert!(r.headers.get("set-cookie").is_none());
        seen.insert(which(&r));
    }
    assert_eq!(seen.len(), 1, "one cookie, one endpoint: {seen:?}");
}

#[tokio::test]
async fn h2_upgrade_policy_speaks_http2_to_an_http_port() {
    let backend = support::proxy::echo();
    let http = "  - route: [{destination: {host: svc.internal}}]\n";
    let sidecar = Sidecar::start(&service_with(
        "svc.internal",
        &[backend.address.port()],
        "{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}",
        http,
    ))
    .await;
    let r = plain_get(sidecar.addr(), "svc.internal", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"], "HTTP/2.0");

    let plain = Sidecar::start(&service_with(
        "svc.internal",
        &[backend.address.port()],
        "{connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}}",
        http,
    ))
    .await;
    let r = plain_get(plain.addr(), "svc.internal", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.json()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn mirrors_get_a_copy_with_the_shadow_host_and_never_hold_up_the_request() {
    let main = Scripted::start("main", &[]).await;
    let shadow = Scripted::start("shadow", &[Answer::Slow(Duration::from_secs(2), 500)]).await;
    let http = r#"  - match: [{uri: {prefix: /all}}]
    route: [{destination: {host: svc.internal}}]
    mirror: {host: mirror.internal}
    mirrorPercentage: {value: 100.0}
  - match: [{uri: {prefix: /none}}]
    route: [{destination: {host: svc.internal}}]
    mirrors: [{destination: {host: mirror.internal}, percentage: {value: 0}}]
"#;
    let extra = format!(
        r#"{}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mirror, namespace: default}}
spec:
  hosts: [mirror.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
"#,
        service("svc.internal", &[main.address.port()], "", http),
        shadow.address.port()
    );
    let sidecar = Sidecar::start(&extra).await;

    // The shadow answers 500 after 2 s; the request is answered by the main backend at once.
    let started = Instant::now();
    let r = post(sidecar.addr(), "/all", b"copy me").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    support::eventually("the shadow saw the copy", || shadow.seen().len() == 1).await;
    let copy = &shadow.seen()[0];
    assert_eq!(copy.path, "/all");
    assert_eq!(copy.body, b"copy me");
    assert_eq!(copy.host, "svc.internal-shadow");
    assert_eq!(main.seen()[0].host, "svc.internal");

    for _ in 0..20 {
        assert_eq!(
            post(sidecar.addr(), "/none", b"x").await.status,
            StatusCode::OK
        );
    }
    let stats = sidecar.running.metrics.render();
    assert!(
        stats.contains(
            "meshgate_upstream_mirrors_total{backend=\"mirror.internal:80\",result=\"sent\"} 1"
        ),
        "{stats}"
    );
    assert_eq!(shadow.seen().len(), 1, "a 0% mirror copied a request");
}

#[test]
fn mirror_shares_and_exclusive_fields_are_checked() {
    let yaml = |http: &str| {
        format!(
            "apiVersion: meshgate.dev/v1alpha1\nkind: MeshGateway\nmetadata: {{name: gw, namespace: default}}\nspec: {{outbound: {{address: \"127.0.0.1:0\"}}}}\n{}",
            service("svc.internal", &[80], "", http)
        )
    };
    for (http, want) in [
        (
            "  - route: [{destination: {host: svc.internal}}]\n    mirror: {host: svc.internal}\n    mirrors: [{destination: {host: svc.internal}}]\n",
            "spec.http[0]: mirror and mirrors are exclusive",
        ),
        (
            "  - route: [{destination: {host: svc.internal}}]\n    mirror: {host: svc.internal}\n    mirrorPercentage: {value: 150}\n",
            "spec.http[0].mirrorPercentage.value: `150` is not a percentage",
        ),
        (
            "  - route: [{destination: {host: svc.internal}}]\n    mirrorPercentage: {value: 50}\n",
            "spec.http[0].mirrorPercentage: set without a mirror",
        ),
    ] {
        let e = meshgate_config::load_str("t.yaml", &yaml(http)).unwrap_err().to_string();
        assert!(e.contains(want), "want `{want}` in {e}");
    }
}
