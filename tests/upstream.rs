//! Upstream behaviour: HTTP/2 to HTTP2/GRPC ports, DNS resolution, round robin over
//! endpoints, streamed bodies both ways, connection reuse (and a pooled connection the
//! upstream closed as a request went out), and the TLS versions a Gateway allows.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use support::client::Client;
use support::pki::Pki;
use support::proxy::{counting_backend, echo, gateway_yaml, one_answer_backend, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

fn virtual_service(destination: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [istio-system/multi-mesh-gateway]
  http: [{{route: [{{destination: {{host: {destination}, port: {{number: 80}}}}}}]}}]
"#
    )
}

async fn start(pki: &Pki, extra: &str) -> Proxy {
    Proxy::start(
        &gateway_yaml(extra),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await
}

fn caller(pki: &Pki) -> Client {
    let w = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    Client::plain(Some(&w), &pki.root.cert_pem)
}

#[tokio::test]
async fn http2_service_ports_are_reached_over_http2() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    for protocol in ["HTTP2", "GRPC", "HTTP"] {
        let extra = format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: h2}}\nspec:\n  hosts: [h2.internal]\n  ports: [{{number: 80, name: p, protocol: {protocol}, targetPort: {}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n",
            virtual_service("h2.internal"),
            backend.address.port()
        );
        let proxy = start(&pki, &extra).await;
        // The client speaks HTTP/1.1 to the gateway; the upstream hop follows the port protocol.
        let client = Client::new(
            Some(&pki.workload("example.com", "spiffe://example.com/ns/a/sa/b")),
            &pki.root.cert_pem,
            &[b"http/1.1"],
        );
        let reply = client
            .get(proxy.addr(443), HOST, HOST, "/", &[])
            .await
            .unwrap();
        let want = if protocol == "HTTP" {
            "HTTP/1.1"
        } else {
            "HTTP/2.0"
        };
        assert_eq!(reply.json()["version"], want, "{protocol}");
        assert_eq!(reply.echoed("x-mesh-origin").as_deref(), Some("remote"));
    }
}

#[tokio::test]
async fn dns_resolution_and_round_robin_over_endpoints() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (a, b) = (echo(), echo());
    // DNS: the endpoint is a name, resolved when connecting.
    let dns = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: dns}}\nspec:\n  hosts: [dns.internal]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {}}}]\n  resolution: DNS\n  endpoints: [{{address: localhost}}]\n",
        virtual_service("dns.internal"),
        a.address.port()
    );
    let proxy = start(&pki, &dns).await;
    let reply = caller(&pki)
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json()["server"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", a.address.port())));

    // STATIC with two endpoints on their own ports (by port name), ROUND_ROBIN (Istio's default
    // without a DestinationRule is LEAST_REQUEST).
    let rr = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: rr}}\nspec:\n  hosts: [rr.internal]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {}}}}}\n  - {{address: 127.0.0.1, ports: {{http: {}}}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: rr}}\nspec: {{host: rr.internal, trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}}}\n",
        virtual_service("rr.internal"),
        a.address.port(),
        b.address.port()
    );
    let proxy = start(&pki, &rr).await;
    let client = caller(&pki);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let reply = client
            .get(proxy.addr(443), HOST, HOST, "/", &[])
            .await
            .unwrap();
        seen.push(reply.json()["server"].as_str().unwrap().to_string());
    }
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {seen:?}");
    }
    assert!(seen.contains(&a.address.to_string()) && seen.contains(&b.address.to_string()));
}

#[tokio::test]
async fn large_bodies_stream_both_ways_over_one_connection() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let extra = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: big}}\nspec:\n  hosts: [big.internal]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n",
        virtual_service("big.internal"),
        backend.address.port()
    );
    let proxy = start(&pki, &extra).await;
    let w = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&w), &pki.root.cert_pem, &[b"h2"]);
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = Bytes::from(vec![b'x'; 8 * 1024 * 1024]);
    // Several requests on one downstream connection; the upstream pool is reused too.
    for _ in 0..3 {
        let req = Request::post(format!("https://{HOST}/upload"))
            .body(Full::new(body.clone()))
            .unwrap();
        let response = tokio::time::timeout(support::TIMEOUT, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["body_bytes"], 8 * 1024 * 1024);
        assert_eq!(json["method"], "POST");
    }
    let metrics = proxy.running.metrics.render();
    assert!(
        metrics.contains(r#"meshgate_handshakes_total{result="success",reason=""} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn tls_versions_follow_the_gateway() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let w = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let tls12_only = {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.root.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(w.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(w.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap()
    };
    let connect = |addr| {
        let config = Arc::new(tls12_only.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
        }
    };
    let route = support::proxy::route_to(HOST, backend.address);
    // Default: TLS 1.2 and 1.3. The gateway's certificate has no DNS SAN, so the 1.2 client
    // stops at the name check — after the server accepted TLS 1.2.
    let proxy = start(&pki, &route).await;
    let err = connect(proxy.addr(443)).await.unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // minProtocolVersion TLSV1_3: the server refuses TLS 1.2 outright.
    let strict = gateway_yaml(&route).replace(
        "tls: {mode: ISTIO_MUTUAL}",
        "tls: {mode: ISTIO_MUTUAL, minProtocolVersion: TLSV1_3}",
    );
    let proxy = Proxy::start(&strict, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let err = connect(proxy.addr(443)).await.unwrap_err();
    assert!(err.to_string().contains("ProtocolVersion"), "{err}");
    support::eventually("tls_error counted", || proxy.rejected("tls_error") == 1).await;
    // TLS 1.3 clients still get through.
    let reply = caller(&pki)
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_pooled_connection_closed_as_a_request_went_out_is_retried_only_as_the_route_says() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let backend = one_answer_backend(connections.clone()).await;
    let extra = format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [istio-system/multi-mesh-gateway]
  http:
  - match: [{{uri: {{prefix: /reset}}}}]
    retries: {{attempts: 1, retryOn: reset}}
    route: [{{destination: {{host: stale.internal}}}}]
  - route: [{{destination: {{host: stale.internal}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: stale}}
spec:
  hosts: [stale.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
        port = backend.port()
    );
    let proxy = start(&pki, &extra).await;
    let client = caller(&pki);
    let get = |path: &'static str| client.get(proxy.addr(443), HOST, HOST, path, &[]);
    let first = get("/").await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["server"], "1");
    // The connection the first left in the pool is closed unanswered as the next request goes
    // out on it: Istio's default retry conditions do not cover that (Envoy's `UC`).
    let second = get("/").await.unwrap();
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    // The third takes a new connection; the fourth goes out on the one the third left, is
    // closed unanswered too, and with `retryOn: reset` is tried again on a new connection.
    let third = get("/reset").await.unwrap();
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(third.headers["server"], "2");
    let fourth = get("/reset").await.unwrap();
    assert_eq!(fourth.status, StatusCode::OK);
    assert_eq!(fourth.headers["server"], "3");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn requests_with_and_without_a_body_keep_their_connections_under_max_connections() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let backend = counting_backend(connections.clone()).await;
    let extra = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: mixed}}\nspec:\n  hosts: [mixed.internal]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: mixed}}\nspec: {{host: mixed.internal, trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 10}}}}}}}}\n",
        virtual_service("mixed.internal"),
        backend.port()
    );
    let proxy = start(&pki, &extra).await;
    let client = caller(&pki);
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let (mut conn, _task) = support::client::Conn::open(tls, h2).await.unwrap();
    // GETs go on meshgate's own client, POSTs with a body on hyper's: one connection each,
    // kept, however they alternate.
    for n in 0..6 {
        let body = if n % 2 == 0 { "" } else { "a body" };
        let req = Request::builder()
            .method(if n % 2 == 0 { "GET" } else { "POST" })
            .uri(format!("https://{HOST}/"))
            .header("host", HOST)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = match &mut conn {
            support::client::Conn::H1(send) => send.send_request(req).await,
            support::client::Conn::H2(send) => send.send_request(req).await,
        }
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {n}");
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// DestinationRule `http.maxConcurrentStreams` on an HTTP/2 backend: at most that many
/// requests at once on one connection, more opening another (Envoy's HTTP/2 pool), within
/// `maxConnections` past the endpoint's first; a request that finds no stream and no connection
/// left waits as a pending request, and past `http1MaxPendingRequests` is answered 503.
#[tokio::test]
async fn http2_streams_per_connection_follow_max_concurrent_streams() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let cases = [
        ("{}", 1, 0),
        ("{http: {maxConcurrentStreams: 1}}", 3, 0),
        ("{http: {maxConcurrentStreams: 2}}", 2, 0),
        ("{tcp: {maxConnections: 1}, http: {maxConcurrentStreams: 1}}", 1, 0),
        (
            "{tcp: {maxConnections: 1}, http: {maxConcurrentStreams: 1, http1MaxPendingRequests: 1}}",
            1,
            1,
        ),
    ];
    for (pool, connections, refused) in cases {
        let extra = format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: h2}}\nspec:\n  hosts: [h2.internal]\n  ports: [{{number: 80, name: grpc, protocol: GRPC, targetPort: {}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: h2}}\nspec:\n  host: h2.internal\n  trafficPolicy: {{connectionPool: {pool}}}\n",
            virtual_service("h2.internal"),
            backend.address.port()
        );
        let proxy = start(&pki, &extra).await;
        let client = caller(&pki);
        // Three requests at once, each answered after 1.5 s: time for all three to reach the
        // pool while the others are in flight, even on a loaded machine.
        let get = || client.get(proxy.addr(443), HOST, HOST, "/delay/1500", &[]);
        let (a, b, c) = tokio::join!(get(), get(), get());
        let mut statuses: Vec<u16> = [a, b, c]
            .into_iter()
            .map(|r| r.unwrap().status.as_u16())
            .collect();
        statuses.sort_unstable();
        let mut want = vec![200; 3 - refused];
        want.extend(std::iter::repeat_n(503, refused));
        assert_eq!(statuses, want, "{pool}");
        let made = format!(
            "meshgate_upstream_connections_total{{backend=\"h2.internal:80\",result=\"success\"}} {connections}\n"
        );
        let metrics = proxy.running.metrics.render();
        assert!(metrics.contains(&made), "{pool}: want {made}{metrics}");
    }

    // A connection that does not open (TCP taken, TLS never answered) until `connectTimeout`:
    // the requests counting on it fail with it, together, not one connect timeout after the
    // other as each tries its own in turn.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: httpbin, namespace: default}}\nspec:\n  hosts: [\"{HOST}\"]\n  gateways: [istio-system/multi-mesh-gateway]\n  http: [{{retries: {{attempts: 0}}, route: [{{destination: {{host: h2.internal, port: {{number: 80}}}}}}]}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: h2}}\nspec:\n  hosts: [h2.internal]\n  ports: [{{number: 80, name: grpc, protocol: GRPC, targetPort: {}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: h2}}\nspec:\n  host: h2.internal\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}, connectionPool: {{tcp: {{connectTimeout: 2s}}}}}}\n",
        silent.local_addr().unwrap().port()
    );
    let proxy = start(&pki, &extra).await;
    let client = caller(&pki);
    let get = || client.get(proxy.addr(443), HOST, HOST, "/", &[]);
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(get(), get(), get());
    let took = started.elapsed();
    for r in [a, b, c] {
        assert_eq!(r.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        took < std::time::Duration::from_millis(4500),
        "three requests on one failing connect took {took:?}, not one connect timeout (2 s)"
    );
    drop(silent);

    // A connection that cannot be opened: the requests counting on it, waiting, are not left
    // waiting; each gets its answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: h2}}\nspec:\n  hosts: [h2.internal]\n  ports: [{{number: 80, name: grpc, protocol: GRPC, targetPort: {closed}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n",
        virtual_service("h2.internal"),
    );
    let proxy = start(&pki, &extra).await;
    let client = caller(&pki);
    let get = || client.get(proxy.addr(443), HOST, HOST, "/", &[]);
    let answered = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(get(), get(), get())
    })
    .await
    .expect("requests left waiting on a failed connect");
    for r in [answered.0, answered.1, answered.2] {
        assert_eq!(r.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// An HTTP/2 backend that allows one stream at a time (`SETTINGS_MAX_CONCURRENT_STREAMS` 1)
/// gets a connection for each request in flight, as Envoy's pool takes the least of its own
/// cap and the server's, rather than every request queued behind one stream; once idle for
/// the rule's `idleTimeout`, the connections past the first are closed.
#[tokio::test]
async fn an_http2_servers_own_stream_limit_opens_more_connections() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = {
        let (connections, closed) = (connections.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"slow"),
                        )))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .max_concurrent_streams(1)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                    closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        })
    };
    let extra = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: h2}}\nspec:\n  hosts: [h2.internal]\n  ports: [{{number: 80, name: grpc, protocol: GRPC, targetPort: {port}}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: h2}}\nspec:\n  host: h2.internal\n  trafficPolicy: {{connectionPool: {{http: {{idleTimeout: 500ms}}}}}}\n",
        virtual_service("h2.internal"),
    );
    let proxy = start(&pki, &extra).await;
    let client = caller(&pki);
    // One request first, so that the connection has the server's SETTINGS.
    let first = client
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let get = || client.get(proxy.addr(443), HOST, HOST, "/", &[]);
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(get(), get(), get());
    let took = started.elapsed();
    for r in [a, b, c] {
        assert_eq!(r.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one connection per request in flight"
    );
    assert!(
        took < std::time::Duration::from_millis(4000),
        "three requests of 1.5 s each took {took:?}: queued behind one stream"
    );
    support::eventually("the idle connections past the first closed", || {
        closed.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    // The first stays, and serves the next request.
    let again = client
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(closed.load(std::sync::atomic::Ordering::SeqCst), 2);
    server.abort();
}
