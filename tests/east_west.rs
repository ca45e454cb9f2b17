//! An east-west gateway (`AUTO_PASSTHROUGH`) between two meshes that share a root: a source
//! workload's mTLS, with Istio's SNI and ALPN, passes through one meshgate unterminated and is
//! terminated by the target mesh's meshgate gateway, which sees the source workload's own
//! SPIFFE ID. What is not Istio mTLS, or names a service not exposed, is closed and counted.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::client::Client;
use support::pki::Pki;
use support::proxy::{echo, Proxy};
use support::{eventually, json_lines};

const SLEEP: &str = "spiffe://example.com/ns/default/sa/sleep";
const TARGET_GATEWAY: &str = "spiffe://example-target.com/ns/istio-system/sa/target-gateway";
const EAST_WEST: &str = "spiffe://example-target.com/ns/istio-system/sa/eastwest-gateway";
const HOST: &str = "httpbin.default.svc.cluster.local";
const ISTIO_ALPN: &[&[u8]] = &[b"istio-http/1.1", b"istio", b"http/1.1"];

/// The target mesh's ingress: ISTIO_MUTUAL for `*.local`, routing `HOST` to `backend`.
fn target_yaml(backend: SocketAddr) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: target-gateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{8443: 0}}}}
---
apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {{name: default, namespace: kyma-system}}
spec:
  config: {{trustDomain: example-target.com}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: mtls, protocol: HTTPS}}
    hosts: ["*.local"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [{HOST}]
  gateways: [istio-system/ingress]
  http:
  - route: [{{destination: {{host: echo.internal, port: {{number: 80}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
        port = backend.port()
    )
}

/// The east-west gateway, as Istio's `expose-services.yaml` writes it, with `HOST` declared on
/// port 8000 and its endpoints: `v1` at `target`, `v2` at `other`; `ratings` on port 9080 at
/// `target` alone. `extra` is appended.
fn east_west_yaml(target: SocketAddr, other: SocketAddr, extra: &str) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: eastwest-gateway, namespace: istio-system}}
spec:
  labels: {{istio: eastwestgateway}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{15443: 0, 8443: 0}}}}
  accessLog: {{path: access.log}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network-gateway, namespace: istio-system}}
spec:
  selector: {{istio: eastwestgateway}}
  servers:
  - port: {{number: 15443, name: tls, protocol: TLS}}
    tls: {{mode: AUTO_PASSTHROUGH}}
    hosts: ["*.local"]
  - port: {{number: 8443, name: https-passthrough, protocol: HTTPS}}
    tls: {{mode: PASSTHROUGH}}
    hosts: ["*.local"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: by-sni, namespace: istio-system}}
spec:
  hosts: ["*.local"]
  gateways: [cross-network-gateway]
  tls:
  - match: [{{port: 8443, sniHosts: [{HOST}], destinationSubnets: [127.0.0.0/8]}}]
    route:
    - destination: {{host: ratings.default.svc.cluster.local}}
      weight: 100
    - destination: {{host: {HOST}, port: {{number: 8000}}, subset: v2}}
      weight: 0
  - match: [{{sniHosts: ["*.svc.cluster.local"], port: 9999}}]
    route: [{{destination: {{host: {HOST}, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {target_port}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.2, ports: {{http: {other_port}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {target_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: outside, namespace: default}}
spec:
  hosts: [api.example.org]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {target_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin, namespace: default}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
{extra}"#,
        target_port = target.port(),
        other_port = other.port(),
    )
}

struct Meshes {
    pki: Pki,
    target: Proxy,
    east_west: Proxy,
    _backend: meshgate_proxy::echo::Echo,
}

impl Meshes {
    async fn start(extra: &str) -> Self {
        let pki = Pki::new(&["example.com", "example-target.com"]);
        let backend = echo();
        let target = Proxy::start(
            &target_yaml(backend.address),
            &pki.workload("example-target.com", TARGET_GATEWAY),
        )
        .await;
        // `v2` is a port nothing listens on: a connection to it fails.
        let closed = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let other = closed.local_addr().unwrap();
        drop(closed);
        let east_west = Proxy::start(
            &east_west_yaml(target.addr(8443), other, extra),
            &pki.workload("example-target.com", EAST_WEST),
        )
        .await;
        Self {
            pki,
            target,
            east_west,
            _backend: backend,
        }
    }

    fn sleep(&self, alpn: &[&[u8]]) -> Client {
        let sleep = self.pki.workload("example.com", SLEEP);
        Client::new(Some(&sleep), &sleep.root_pem, alpn)
    }

    fn ended(&self, end: &str) -> u64 {
        self.east_west.running.metrics.passthrough_ended(end)
    }
}

#[tokio::test]
async fn a_source_workloads_identity_survives_the_east_west_hop() {
    let meshes = Meshes::start("").await;
    let gateway = meshes.east_west.addr(15443);
    for sni in [
        "outbound_.9080_._.ratings.default.svc.cluster.local".to_string(),
        format!("outbound_.8000_.v1_.{HOST}"),
        // SNI is case-insensitive.
        format!("outbound_.8000_.v1_.{}", HOST.to_uppercase()),
    ] {
        let reply = meshes
            .sleep(ISTIO_ALPN)
            .get(gateway, &sni, HOST, "/headers", &[])
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(reply.status, StatusCode::OK, "{sni}");
        // The target terminated the source's own mTLS: its ID, not the east-west gateway's.
        let xfcc = reply.echoed("x-forwarded-client-cert").unwrap();
        assert!(xfcc.contains(&format!("URI={SLEEP}")), "{xfcc}");
        assert!(!xfcc.contains(EAST_WEST), "{xfcc}");
        assert_eq!(reply.echoed("x-mesh-origin").as_deref(), Some("remote"));
    }
    eventually("three forwarded connections counted", || {
        meshes.ended("closed") == 3
    })
    .await;
    // The target counted three handshakes of its own: nothing was terminated on the way.
    let metrics = meshes.target.running.metrics.render();
    assert!(
        metrics.contains("meshgate_handshakes_total{result=\"success\",reason=\"\"} 3"),
        "{metrics}"
    );
    let log = json_lines(&meshes.east_west.dir.path().join("access.log"), 3).await;
    let line = &log[0];
    assert_eq!(line["event"], "passthrough", "{line}");
    assert_eq!(line["end"], "closed", "{line}");
    assert_eq!(
        line["upstream"], "ratings.default.svc.cluster.local:9080",
        "{line}"
    );
    assert!(line["bytes_received"].as_u64().unwrap() > 1200, "{line}");
    assert!(line["bytes_sent"].as_u64().unwrap() > 500, "{line}");
}

#[tokio::test]
async fn only_istio_mtls_to_an_exposed_service_passes() {
    let meshes = Meshes::start("").await;
    let gateway = meshes.east_west.addr(15443);
    let sni = format!("outbound_.8000_._.{HOST}");

    // Plain TLS (no Istio ALPN) to the same service: closed before a byte reaches it.
    let plain = meshes.sleep(&[b"h2", b"http/1.1"]);
    assert!(plain.connect(gateway, &sni).await.is_err());
    eventually("not_istio_mtls counted", || {
        meshes.ended("not_istio_mtls") == 1
    })
    .await;

    // Istio mTLS, but to services the gateway does not expose: a host outside `*.local`, a
    // port not declared, a subset not defined, a name that is not Istio's form.
    let istio = meshes.sleep(ISTIO_ALPN);
    for sni in [
        "outbound_.443_._.api.example.org".to_string(),
        format!("outbound_.9000_._.{HOST}"),
        format!("outbound_.8000_.v3_.{HOST}"),
        HOST.to_string(),
    ] {
        assert!(istio.connect(gateway, &sni).await.is_err(), "{sni}");
    }
    eventually("not_exposed counted", || meshes.ended("not_exposed") == 4).await;

    // Not TLS at all.
    let mut tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{rest:?}");
    eventually("invalid_hello counted", || {
        meshes.ended("invalid_hello") == 1
    })
    .await;

    // The subset whose endpoint refuses: the connection fails and is counted so.
    assert!(istio
        .connect(gateway, &format!("outbound_.8000_.v2_.{HOST}"))
        .await
        .is_err());
    eventually("connect_failed counted", || {
        meshes.ended("connect_failed") == 1
    })
    .await;
    assert_eq!(meshes.ended("closed"), 0);
    let metrics = meshes.east_west.running.metrics.render();
    assert!(
        metrics.contains("meshgate_passthrough_connections_total{end=\"not_exposed\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn authorization_on_a_passthrough_port_sees_addresses_and_the_sni() {
    let policy = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-lab, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: eastwestgateway}}
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [127.0.0.3/32]}}]
  - when: [{key: connection.sni, values: ["outbound_.8000_.v1_.*"]}]
"#;
    let meshes = Meshes::start(policy).await;
    let gateway = meshes.east_west.addr(15443);
    let istio = meshes.sleep(ISTIO_ALPN);
    let sni = "outbound_.9080_._.ratings.default.svc.cluster.local";
    let reply = istio.get(gateway, sni, HOST, "/", &[]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let from = "127.0.0.3".parse().unwrap();
    assert!(istio.connect_from(from, gateway, sni).await.is_err());
    let v1 = format!("outbound_.8000_.v1_.{HOST}");
    assert!(istio.connect(gateway, &v1).await.is_err());
    eventually("two denied", || meshes.ended("denied") == 2).await;
}

#[test]
fn a_rule_that_needs_termination_is_refused_on_a_passthrough_port() {
    let yaml = east_west_yaml(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-identity, namespace: istio-system}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
  - to: [{operation: {ports: ["9443"], paths: ["/admin"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes, namespace: default}
spec:
  hosts: [a.local]
  gateways: [istio-system/cross-network-gateway]
  http: [{directResponse: {status: 200}}]
"#,
    );
    let errors = match meshgate_config::load_str("ew.yaml", &yaml) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        errors.contains("AuthorizationPolicy istio-system/by-identity: spec.rules[0]: from.source.principals needs a terminated connection, but port 15443 passes TLS through"),
        "{errors}"
    );
    // The rule scoped to another port is fine.
    assert!(!errors.contains("spec.rules[1]"), "{errors}");
    assert!(
        errors.contains("VirtualService default/routes: spec.gateways: Gateway istio-system/cross-network-gateway serves port 15443 with AUTO_PASSTHROUGH"),
        "{errors}"
    );
}

#[test]
fn a_label_subset_of_endpoints_meshgate_cannot_know_is_not_forwarded_and_said_so() {
    let yaml = east_west_yaml(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        r#"
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  ports: [{port: 9080, name: http}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
"#,
    );
    let model = meshgate_config::load_str("ew.yaml", &yaml).unwrap();
    let listener = &model.listeners[0];
    let exposed: Vec<&str> = listener.passthrough.keys().map(String::as_str).collect();
    assert!(
        exposed.contains(&"outbound_.9080_._.reviews.default.svc.cluster.local"),
        "{exposed:?}"
    );
    assert!(
        !exposed.contains(&"outbound_.9080_.v1_.reviews.default.svc.cluster.local"),
        "{exposed:?}"
    );
    let warning = model
        .warnings
        .iter()
        .map(|w| w.to_string())
        .find(|w| w.contains("MG0114"))
        .expect("a warning");
    assert!(
        warning.contains("outbound_.9080_.v1_.reviews.default.svc.cluster.local")
            && warning.contains("declare them with their labels"),
        "{warning}"
    );
    // A host outside `*.local` is not exposed at all.
    assert!(
        !exposed.iter().any(|s| s.contains("api.example.org")),
        "{exposed:?}"
    );
}

#[tokio::test]
async fn passthrough_routes_any_tls_by_sni_with_vs_tls_routes() {
    let meshes = Meshes::start("").await;
    let gateway = meshes.east_west.addr(8443);
    // Plain TLS from any client: PASSTHROUGH asks for no Istio ALPN. The weight-0 destination
    // (whose endpoint refuses) is never chosen.
    let plain = meshes.sleep(&[b"h2", b"http/1.1"]);
    for _ in 0..5 {
        let reply = plain.get(gateway, HOST, HOST, "/", &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let xfcc = reply.echoed("x-forwarded-client-cert").unwrap();
        assert!(xfcc.contains(&format!("URI={SLEEP}")), "{xfcc}");
    }
    eventually("five forwarded", || meshes.ended("closed") == 5).await;
    // An SNI no tls route matches on this port (the second route is for port 9999).
    assert!(plain
        .connect(gateway, "ratings.default.svc.cluster.local")
        .await
        .is_err());
    eventually("not routed", || meshes.ended("not_exposed") == 1).await;
    assert_eq!(meshes.ended("connect_failed"), 0);
}

#[test]
fn tls_routes_need_a_passthrough_server() {
    let yaml = east_west_yaml(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: from-sidecars, namespace: default}
spec:
  hosts: [a.local]
  tls:
  - match: [{sniHosts: [a.local], sourceLabels: {app: x}}]
    route: [{destination: {host: a.local, port: {number: 443}}, weight: 100}]
"#,
    );
    let errors = match meshgate_config::load_str("ew.yaml", &yaml) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        errors.contains("VirtualService default/from-sidecars: spec.tls: tls routes apply to Gateway servers with tls.mode PASSTHROUGH"),
        "{errors}"
    );
    assert!(
        errors.contains("spec.tls[0].match[0].sourceLabels: this Istio field is not implemented"),
        "{errors}"
    );
}

/// A PASSTHROUGH gateway in front of a TCP echo, with short ClientHello and idle timeouts.
fn echo_passthrough_yaml(echo: SocketAddr) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  labels: {{istio: edge}}
  listen: {{address: 127.0.0.1, portOverrides: {{443: 0}}}}
  limits: {{handshakeTimeout: 300ms, idleTimeout: 400ms}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: edge}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [edge]
  tls:
  - match: [{{sniHosts: ["*.example.org"]}}]
    route: [{{destination: {{host: echo.internal, port: {{number: {port}}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: istio-system}}
spec:
  hosts: [echo.internal]
  ports: [{{number: {port}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
        port = echo.port()
    )
}

/// The bytes of a rustls ClientHello for `sni`, as a client sends them first.
fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[tokio::test]
async fn spliced_bytes_arrive_unchanged_and_quiet_connections_are_timed_out() {
    let echo = meshgate_proxy::echo::Echo::start_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let pki = Pki::new(&["example.org"]);
    let identity = pki.workload("example.org", "spiffe://example.org/ns/edge/sa/edge");
    let edge = Proxy::start(&echo_passthrough_yaml(echo.address), &identity).await;
    let gateway = edge.addr(443);
    let ended = |end: &str| edge.running.metrics.passthrough_ended(end);

    // The ClientHello, sent in three pieces, then more bytes: the echo sends all of it back,
    // byte for byte, through the splice.
    let hello = client_hello("api.example.org");
    let mut sent = hello.clone();
    sent.extend((0..100_000u32).map(|i| (i % 253) as u8));
    let mut tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    for piece in [&sent[..100], &sent[100..700], &sent[700..]] {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut back = vec![0; sent.len()];
    tcp.read_exact(&mut back).await.unwrap();
    assert!(back == sent, "the splice changed the bytes");
    // Then nothing moves: after the idle timeout the gateway closes both sides.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    within(tcp.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    eventually("idle_timeout counted", || ended("idle_timeout") == 1).await;

    // A client that connects and never sends its ClientHello is closed at the timeout.
    let mut silent = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let mut nothing = Vec::new();
    within(silent.read_to_end(&mut nothing)).await.unwrap();
    eventually("hello_timeout counted", || ended("hello_timeout") == 1).await;
    // An SNI no route matches, and a ClientHello without SNI, are closed.
    for hello in [client_hello("api.example.com"), client_hello("127.0.0.1")] {
        let mut tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
        let mut nothing = Vec::new();
        let _ = within(tcp.read_to_end(&mut nothing)).await;
        assert!(nothing.is_empty());
    }
    eventually("not routed, no SNI", || {
        ended("not_exposed") == 1 && ended("no_sni") == 1
    })
    .await;
}

/// `f`, or a panic when the gateway has not closed within 5 s.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(5), f)
        .await
        .expect("the gateway did not close the connection")
}

#[tokio::test]
async fn a_go_crypto_tls_client_with_istio_sni_and_alpn_passes_through() {
    let meshes = Meshes::start("").await;
    let sleep = meshes.pki.workload("example.com", SLEEP);
    let dir = support::TempDir::new("go-client");
    sleep.write(dir.path()).unwrap();
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/go-istio-client/main.go");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let mut go = std::process::Command::new("go");
    go.arg("run")
        .arg(&program)
        .arg(meshes.east_west.addr(15443).to_string())
        .arg("outbound_.9080_._.ratings.default.svc.cluster.local")
        .args([
            file("cert-chain.pem"),
            file("key.pem"),
            file("root-cert.pem"),
        ])
        .args([TARGET_GATEWAY, HOST])
        .env("GOCACHE", dir.path().join("gocache"))
        .env("GOPATH", dir.path().join("gopath"));
    // The proxies run on this test's runtime: wait for the client off it.
    let out = tokio::task::spawn_blocking(move || go.output())
        .await
        .unwrap()
        .expect("`go` runs this test's Go client: apt-get install golang-go (.ci/run does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The target gateway chose HTTP/1.1 from Go's Istio ALPN list, and its backend saw the
    // source workload's own identity.
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first == "alpn=http/1.1 status=200" || first == "alpn=istio-http/1.1 status=200",
        "{stdout}"
    );
    assert!(stdout.contains(&format!("URI={SLEEP}")), "{stdout}");
    assert!(stdout.contains("\"remote\""), "{stdout}");
}
