//! TCP Gateway servers with VirtualService `tcp` routes: plaintext, and TLS terminated with
//! `ISTIO_MUTUAL` so the client's SPIFFE ID decides AuthorizationPolicy, with Istio's TCP
//! semantics for rules that name HTTP fields; and TCP between two meshes that share a root,
//! the source gateway originating `ISTIO_MUTUAL` as a sidecar does.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use meshgate_proxy::echo::Echo;
use support::client::Client;
use support::pki::Pki;
use support::proxy::Proxy;
use support::{eventually, json_lines};

const SLEEP: &str = "spiffe://example.com/ns/default/sa/sleep";
const OTHER: &str = "spiffe://example.com/ns/default/sa/other";
const TARGET: &str = "spiffe://example-target.com/ns/istio-system/sa/target-gateway";
const SOURCE: &str = "spiffe://example.com/ns/istio-system/sa/source-gateway";
/// What an Istio sidecar offers when it originates mTLS for TCP.
const SIDECAR_TCP_ALPN: &[&[u8]] = &[b"istio-peer-exchange", b"istio"];

fn tcp_echo() -> Echo {
    Echo::start_tcp("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// The target mesh's gateway: TCP on 9000 and 9001, TLS `ISTIO_MUTUAL` on 9443, every port
/// routed by `tcp` routes to `db.internal:5432` (the echo), and policies that name HTTP fields.
fn target_yaml(backend: SocketAddr) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: target-gateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{9000: 0, 9001: 0, 9443: 0}}}}
  accessLog: {{path: access.log}}
---
apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {{name: default, namespace: kyma-system}}
spec:
  config: {{trustDomain: example-target.com}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9000, name: tcp-a, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: 9001, name: tcp-b, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: 9443, name: tls-db, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [tcp]
  tcp:
  - match: [{{port: 9001, destinationSubnets: [10.0.0.0/8]}}]
    route: [{{destination: {{host: nowhere.internal, port: {{number: 1}}}}}}]
  - match: [{{port: 9000}}, {{port: 9001}}, {{port: 9443}}]
    route:
    - destination: {{host: db.internal, port: {{number: 5432}}}}
      weight: 100
    - destination: {{host: nowhere.internal, port: {{number: 1}}}}
      weight: 0
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: [db.internal]
  ports: [{{number: 5432, name: tcp-postgres, protocol: TCP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: nowhere, namespace: istio-system}}
spec:
  hosts: [nowhere.internal]
  ports: [{{number: 1, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: db-clients, namespace: istio-system}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [example.com/ns/default/sa/sleep, example.com/ns/istio-system/sa/source-gateway]}}}}]
    to: [{{operation: {{ports: ["9443"]}}}}]
  # On HTTP this would let `other` in for anything but POST; on TCP it never matches.
  - from: [{{source: {{principals: [example.com/ns/default/sa/other]}}}}]
    to: [{{operation: {{notMethods: [POST], ports: ["9443"]}}}}]
  - to: [{{operation: {{ports: ["9000", "9001"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-posts, namespace: istio-system}}
spec:
  action: DENY
  rules:
  # On HTTP this would deny POSTs to 9000 only; on TCP it denies every connection to 9000.
  - to: [{{operation: {{methods: [POST], ports: ["9000"]}}}}]
"#,
        port = backend.port()
    )
}

/// Writes `message` and reads back as many bytes, or what came before the connection closed,
/// then closes.
async fn echoed<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, message: &[u8]) -> Vec<u8> {
    if s.write_all(message).await.is_err() {
        return Vec::new();
    }
    let mut got = vec![0; message.len()];
    let mut n = 0;
    while n < got.len() {
        match s.read(&mut got[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    got.truncate(n);
    // A clean close (TLS close_notify, then FIN), so the proxy sees the connection end well.
    let _ = s.shutdown().await;
    got
}

#[tokio::test]
async fn tcp_routes_with_istio_mutual_identity_and_istios_tcp_policy_semantics() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = tcp_echo();
    let yaml = target_yaml(backend.address);
    let target = Proxy::start(&yaml, &pki.workload("example-target.com", TARGET)).await;

    // Both policies name HTTP fields on TCP ports: `check` says what they do there.
    let model = meshgate_config::load(&[target.config()]).unwrap();
    let warnings: Vec<String> = model.warnings.iter().map(|w| w.to_string()).collect();
    let on_tcp: Vec<&String> = warnings.iter().filter(|w| w.contains("MG0115")).collect();
    assert_eq!(on_tcp.len(), 2, "{warnings:#?}");
    assert!(
        on_tcp
            .iter()
            .any(|w| w.contains("db-clients") && w.contains("never matches")),
        "{on_tcp:#?}"
    );
    assert!(
        on_tcp
            .iter()
            .any(|w| w.contains("no-posts") && w.contains("matches more")),
        "{on_tcp:#?}"
    );

    // `check` shows the listeners and where their tcp routes go, and the warnings.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["check", "-c", target.config().to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for line in [
        "listener tcp-a port 9000 on 127.0.0.1:0: TCP, hosts *",
        "listener tls-db port 9443 on 127.0.0.1:0: TCP over TLS ISTIO_MUTUAL",
        "  VirtualService istio-system/db tcp route: port 9001 to 10.0.0.0/8 -> nowhere.internal:1 (100%)",
        "  VirtualService istio-system/db tcp route: port 9000 or port 9001 or port 9443 -> db.internal:5432 (100%)",
        "[MG0115]",
    ] {
        assert!(text.contains(line), "`{line}` not in:\n{text}");
    }

    // A sidecar's TCP mTLS: answered `istio`, never `istio-peer-exchange`; the bytes go
    // through to the backend and back.
    let sleep = pki.workload("example.com", SLEEP);
    let client = Client::new(Some(&sleep), &sleep.root_pem, SIDECAR_TCP_ALPN);
    let sni = "outbound_.5432_._.db.internal";
    let tls = client.connect(target.addr(9443), sni).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"istio"[..]));
    assert_eq!(echoed(tls, b"SELECT 1;\n").await, b"SELECT 1;\n");

    // `other` is let in by no rule: the ALLOW rule naming notMethods never matches on TCP.
    let other = pki.workload("example.com", OTHER);
    let client = Client::new(Some(&other), &other.root_pem, SIDECAR_TCP_ALPN);
    let tls = client.connect(target.addr(9443), sni).await.unwrap();
    assert_eq!(echoed(tls, b"SELECT 2;\n").await, b"");

    // Plaintext: 9001 is allowed (the first route's subnet does not match 127.0.0.1, the
    // second route takes it); the DENY rule on 9000, without its method, denies every
    // connection there.
    let plain = TcpStream::connect(target.addr(9001)).await.unwrap();
    assert_eq!(echoed(plain, b"plain\n").await, b"plain\n");
    let plain = TcpStream::connect(target.addr(9000)).await.unwrap();
    assert_eq!(echoed(plain, b"plain\n").await, b"");

    let metrics = &target.running.metrics;
    eventually("the connections counted", || {
        metrics.tcp_ended("closed") == 2 && metrics.tcp_ended("denied") == 2
    })
    .await;
    let log = json_lines(&target.dir.path().join("access.log"), 4).await;
    let tcp: Vec<_> = log.iter().filter(|l| l["event"] == "tcp").collect();
    assert_eq!(tcp.len(), 4, "{log:#?}");
    let sleep_line = tcp
        .iter()
        .find(|l| l["principal"] == SLEEP)
        .unwrap_or_else(|| panic!("{tcp:#?}"));
    assert_eq!(sleep_line["end"], "closed");
    assert_eq!(sleep_line["sni"], sni);
    assert_eq!(sleep_line["upstream"], "db.internal:5432");
    assert_eq!(sleep_line["bytes_received"], 10);
    assert_eq!(sleep_line["bytes_sent"], 10);
    let other_line = tcp.iter().find(|l| l["principal"] == OTHER).unwrap();
    assert_eq!(other_line["end"], "denied");
    assert_eq!(other_line["detail"], "no ALLOW policy matched");
    let denied_plain = tcp
        .iter()
        .find(|l| l["end"] == "denied" && l["principal"].is_null())
        .unwrap();
    assert_eq!(
        denied_plain["detail"], "denied by AuthorizationPolicy istio-system/no-posts",
        "{denied_plain}"
    );
}

#[tokio::test]
async fn tcp_between_meshes_over_istio_mutual_keeps_the_source_identity() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = tcp_echo();
    let target = Proxy::start(
        &target_yaml(backend.address),
        &pki.workload("example-target.com", TARGET),
    )
    .await;
    // The source mesh's gateway takes plaintext TCP from its apps and originates ISTIO_MUTUAL to
    // the target's TLS port, as a ServiceEntry and a DestinationRule describe it.
    let source_yaml = format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: source-gateway, namespace: istio-system}}
spec:
  labels: {{istio: egressgateway}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{5432: 0}}}}
---
apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {{name: default, namespace: kyma-system}}
spec:
  config: {{trustDomain: example.com}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 5432, name: tcp-postgres, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [egress]
  tcp:
  - route: [{{destination: {{host: db.target.example, port: {{number: 9443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db-target, namespace: istio-system}}
spec:
  hosts: [db.target.example]
  location: MESH_EXTERNAL
  ports: [{{number: 9443, name: tls, protocol: TLS, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db-target, namespace: istio-system}}
spec:
  host: db.target.example
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: ["{TARGET}"]}}
"#,
        port = target.addr(9443).port()
    );
    let source = Proxy::start(&source_yaml, &pki.workload("example.com", SOURCE)).await;

    let app = TcpStream::connect(source.addr(5432)).await.unwrap();
    let message = vec![b'x'; 100_000];
    assert_eq!(echoed(app, &message).await, message);

    let log = json_lines(&target.dir.path().join("access.log"), 1).await;
    assert_eq!(log[0]["event"], "tcp", "{log:#?}");
    // The target sees the source gateway's own identity, verified at its handshake.
    assert_eq!(log[0]["principal"], SOURCE, "{log:#?}");
    assert_eq!(log[0]["sni"], "outbound_.9443_._.db.target.example");
    assert_eq!(log[0]["bytes_received"], 100_000);
    eventually("the source counted the connection", || {
        source.running.metrics.tcp_ended("closed") == 1
    })
    .await;
}

/// A PROXY v2 header as a backend reads it: the source and destination, and the TLVs.
#[derive(Debug)]
struct ProxyV2 {
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: Vec<(u8, Vec<u8>)>,
}

/// A backend that reads one PROXY v2 header per connection (parsed here by hand, after the
/// spec, not by the crate meshgate writes it with), hands it over, and echoes the rest.
async fn proxy_v2_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<ProxyV2>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut fixed = [0u8; 16];
                s.read_exact(&mut fixed).await.unwrap();
                assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "the v2 signature");
                assert_eq!(fixed[12], 0x21, "version 2, PROXY");
                assert_eq!(fixed[13], 0x11, "TCP over IPv4");
                let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
                let mut rest = vec![0u8; len];
                s.read_exact(&mut rest).await.unwrap();
                let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                let source = SocketAddr::from((ip(&rest[0..4]), port(&rest[8..10])));
                let destination = SocketAddr::from((ip(&rest[4..8]), port(&rest[10..12])));
                let mut tlvs = Vec::new();
                let mut at = 12;
                while at + 3 <= rest.len() {
                    let n = u16::from_be_bytes([rest[at + 1], rest[at + 2]]) as usize;
                    tlvs.push((rest[at], rest[at + 3..at + 3 + n].to_vec()));
                    at += 3 + n;
                }
                tx.send(ProxyV2 {
                    source,
                    destination,
                    tlvs,
                })
                .unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (address, rx)
}

#[tokio::test]
async fn proxy_protocol_v2_out_names_the_client_and_its_spiffe_id() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let (backend, mut headers) = proxy_v2_backend().await;
    let yaml = target_yaml(backend).replace(
        "  accessLog: {path: access.log}\n",
        "  accessLog: {path: access.log}\n  tagging: {proxyProtocolTlv: 224}\n",
    ) + r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: istio-system}
spec:
  host: db.internal
  trafficPolicy:
    proxyProtocol: {version: V2}
"#;
    let target = Proxy::start(&yaml, &pki.workload("example-target.com", TARGET)).await;

    let sleep = pki.workload("example.com", SLEEP);
    let client = Client::new(Some(&sleep), &sleep.root_pem, SIDECAR_TCP_ALPN);
    let tls = client
        .connect(target.addr(9443), "outbound_.5432_._.db.internal")
        .await
        .unwrap();
    let client_addr = tls.get_ref().0.local_addr().unwrap();
    assert_eq!(
        echoed(tls, b"after the header\n").await,
        b"after the header\n"
    );
    let header = headers.recv().await.unwrap();
    assert_eq!(header.source, client_addr);
    assert_eq!(header.destination, target.addr(9443));
    assert_eq!(header.tlvs, vec![(0xE0, SLEEP.as_bytes().to_vec())]);

    // Plaintext TCP: the addresses, and no identity to carry.
    let plain = TcpStream::connect(target.addr(9001)).await.unwrap();
    let client_addr = plain.local_addr().unwrap();
    assert_eq!(echoed(plain, b"plain\n").await, b"plain\n");
    let header = headers.recv().await.unwrap();
    assert_eq!(header.source, client_addr);
    assert_eq!(header.destination, target.addr(9001));
    assert!(header.tlvs.is_empty(), "{header:?}");
}

/// A DestinationRule for `db.internal` with `connectionPool` `pool` at its top level.
fn db_pool(pool: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db, namespace: istio-system}}\nspec:\n  host: db.internal\n  trafficPolicy: {{connectionPool: {pool}}}\n"
    )
}

/// A DestinationRule's `maxConnectionDuration` on a TCP route's backend: the connection is
/// closed at that age however busy it is (Envoy's `max_downstream_connection_duration`),
/// counted and logged as such.
#[tokio::test]
async fn tcp_connections_close_at_the_backends_max_connection_duration() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = tcp_echo();
    let yaml = target_yaml(backend.address) + &db_pool("{tcp: {maxConnectionDuration: 1s}}");
    let target = Proxy::start(&yaml, &pki.workload("example-target.com", TARGET)).await;
    let mut conn = TcpStream::connect(target.addr(9001)).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    // Busy until the proxy closes it: an echo every 50 ms.
    let closed_after = loop {
        if conn.write_all(b"ping").await.is_err() {
            break started.elapsed();
        }
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("no echo and no close within 5 s"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}"
    );

    // On a TLS listener the age counts from the ClientHello, where Envoy's listener filters
    // end and its `tcp_proxy` starts the clock: a client slow to start its handshake still
    // gets the whole duration.
    let sleep = pki.workload("example.com", SLEEP);
    let client = Client::new(Some(&sleep), &sleep.root_pem, SIDECAR_TCP_ALPN);
    let tcp = TcpStream::connect(target.addr(9443)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let hello = std::time::Instant::now();
    let mut tls = client
        .handshake(tcp, "outbound_.5432_._.db.internal")
        .await
        .unwrap();
    tls.write_all(b"slow start\n").await.unwrap();
    let mut got = [0u8; 11];
    tls.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"slow start\n");
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let closed_after = hello.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "closed {closed_after:?} after the ClientHello"
    );
    eventually("the ends counted", || {
        target
            .running
            .metrics
            .render()
            .contains(r#"meshgate_tcp_connections_total{end="max_connection_duration"} 2"#)
    })
    .await;
}

/// A TCP route with weighted destinations takes its limits from the first destination's
/// DestinationRule, whichever is picked, as Istio builds one `tcp_proxy` for them.
#[tokio::test]
async fn weighted_tcp_destinations_share_the_first_ones_limits() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = tcp_echo();
    let yaml = target_yaml(backend.address)
        .replace(
            "    - destination: {host: nowhere.internal, port: {number: 1}}\n      weight: 0\n",
            "    - destination: {host: db2.internal, port: {number: 5432}}\n      weight: 50\n",
        )
        .replace("      weight: 100\n", "      weight: 50\n")
        + &format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db2, namespace: istio-system}}
spec:
  hosts: [db2.internal]
  ports: [{{number: 5432, name: tcp-postgres, protocol: TCP, targetPort: {}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
            backend.address.port()
        )
        + &db_pool("{tcp: {maxConnectionDuration: 1s}}");
    assert!(yaml.contains("db2.internal, port"), "{yaml}");
    let target = Proxy::start(&yaml, &pki.workload("example-target.com", TARGET)).await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut conn = TcpStream::connect(target.addr(9001)).await.unwrap();
        assert_eq!(echoed_keep(&mut conn, b"ping").await, b"ping");
        conns.push(conn);
    }
    for mut conn in conns {
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    eventually("every end counted", || {
        target
            .running
            .metrics
            .render()
            .contains(r#"meshgate_tcp_connections_total{end="max_connection_duration"} 8"#)
    })
    .await;
}

/// Writes `message` and reads back as many bytes, keeping the connection.
async fn echoed_keep(s: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    s.write_all(message).await.unwrap();
    let mut got = vec![0u8; message.len()];
    s.read_exact(&mut got).await.unwrap();
    got
}

/// A DestinationRule's top-level `tcp.idleTimeout` on a TCP route's backend replaces
/// `limits.idleTimeout` (1 h here) as Istio sets `tcp_proxy`'s `idle_timeout`: traffic either
/// way keeps the connection, and quiet for that long closes it, counted as `idle_timeout`; 0s
/// turns it off, where `limits.idleTimeout` would close it.
#[tokio::test]
async fn tcp_connections_close_at_the_backends_idle_timeout() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = tcp_echo();
    let yaml = target_yaml(backend.address) + &db_pool("{tcp: {idleTimeout: 300ms}}");
    let target = Proxy::start(&yaml, &pki.workload("example-target.com", TARGET)).await;
    let mut conn = TcpStream::connect(target.addr(9001)).await.unwrap();
    let mut buf = [0u8; 64];
    // Busy for twice the idle timeout: an echo every 50 ms keeps it open.
    let busy = std::time::Instant::now();
    while busy.elapsed() < Duration::from_millis(600) {
        conn.write_all(b"ping").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("no echo within 5 s")
            .unwrap();
        assert!(n > 0, "closed while busy, after {:?}", busy.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then quiet: closed by the proxy.
    let quiet = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "not closed within 5 s of quiet: {read:?}"
    );
    let closed_after = quiet.elapsed();
    assert!(
        closed_after >= Duration::from_millis(200) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?} of quiet"
    );
    eventually("the end counted", || {
        target
            .running
            .metrics
            .render()
            .contains(r#"meshgate_tcp_connections_total{end="idle_timeout"} 1"#)
    })
    .await;

    // 0s: never, with `limits.idleTimeout` at 1s.
    let yaml = yaml
        .replace("tcp: {idleTimeout: 300ms}", "tcp: {idleTimeout: 0s}")
        .replacen(
            "  accessLog:",
            "  limits: {idleTimeout: 1s}\n  accessLog:",
            1,
        );
    let target = Proxy::start(&yaml, &pki.workload("example-target.com", TARGET)).await;
    let mut conn = TcpStream::connect(target.addr(9001)).await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    conn.read_exact(&mut buf[..4]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    conn.write_all(b"pong").await.unwrap();
    conn.read_exact(&mut buf[..4]).await.unwrap();
    assert_eq!(&buf[..4], b"pong", "open after 1.6 s of quiet");
}

/// Two Gateways' TLS servers on port 9444: `db.internal` (its server's TLS with `db_checks`
/// added) routed to `backend`, and `cache.internal` routed to a port where nothing listens.
fn two_tls_servers_yaml(backend: SocketAddr, db_checks: &str) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: target-gateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{9444: 0}}}}
---
apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {{name: default, namespace: kyma-system}}
spec:
  config: {{trustDomain: example-target.com}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: restricted, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9444, name: tls-db, protocol: TLS}}
    hosts: [db.internal]
    tls: {{mode: ISTIO_MUTUAL{db_checks}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: open, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9444, name: tls-cache, protocol: TLS}}
    hosts: [cache.internal]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: [db.internal]
  gateways: [restricted]
  tcp: [{{route: [{{destination: {{host: db.internal, port: {{number: 5432}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cache, namespace: istio-system}}
spec:
  hosts: [cache.internal]
  gateways: [open]
  tcp: [{{route: [{{destination: {{host: cache.internal, port: {{number: 1}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: istio-system}}
spec:
  hosts: [db.internal]
  ports: [{{number: 5432, name: tcp-postgres, protocol: TCP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cache, namespace: istio-system}}
spec:
  hosts: [cache.internal]
  ports: [{{number: 1, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
        port = backend.port()
    )
}

/// Two Gateways' TLS servers on one port, told apart by SNI: each connection takes a `tcp`
/// route of the Gateway whose server its SNI chose, naming that server's hosts, as each of
/// Envoy's filter chains has its own `tcp_proxy`.
#[tokio::test]
async fn a_tls_tcp_connection_takes_only_its_own_servers_routes() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = tcp_echo();
    let yaml = two_tls_servers_yaml(
        backend.address,
        &format!(", subjectAltNames: [\"{SLEEP}\"]"),
    );
    let target = Proxy::start(&yaml, &pki.workload("example-target.com", TARGET)).await;
    let addr = target.addr(9444);
    let db = "outbound_.5432_._.db.internal";
    let cache = "outbound_.1_._.cache.internal";

    let sleep = pki.workload("example.com", SLEEP);
    let client = Client::new(Some(&sleep), &sleep.root_pem, SIDECAR_TCP_ALPN);
    let tls = client.connect(addr, db).await.unwrap();
    assert_eq!(echoed(tls, b"SELECT 1;\n").await, b"SELECT 1;\n");

    // `other` is not on the database server's list; through the cache server's SNI it gets
    // the cache's route (nothing listens there), never the database's.
    let other = pki.workload("example.com", OTHER);
    let client = Client::new(Some(&other), &other.root_pem, SIDECAR_TCP_ALPN);
    assert!(
        echoed(client.connect(addr, db).await.unwrap(), b"SELECT 2;\n")
            .await
            .is_empty()
    );
    assert_eq!(target.rejected("san_not_allowed"), 1);
    let tls = client.connect(addr, cache).await.unwrap();
    assert_eq!(echoed(tls, b"SELECT 3;\n").await, b"");
    let metrics = &target.running.metrics;
    eventually("the connections counted", || {
        metrics.tcp_ended("closed") == 1 && metrics.tcp_ended("connect_failed") == 1
    })
    .await;
}

/// Two TLS servers of the same settings, each with its own VirtualService: the SNI chooses the
/// server, and each connection takes its own server's route, as each server is a filter chain
/// of Envoy's with its own `tcp_proxy`.
#[tokio::test]
async fn tls_tcp_servers_with_the_same_settings_keep_their_routes_apart() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = tcp_echo();
    let yaml = two_tls_servers_yaml(backend.address, "");
    let target = Proxy::start(&yaml, &pki.workload("example-target.com", TARGET)).await;
    let addr = target.addr(9444);
    let sleep = pki.workload("example.com", SLEEP);
    let client = Client::new(Some(&sleep), &sleep.root_pem, SIDECAR_TCP_ALPN);
    let tls = client
        .connect(addr, "outbound_.5432_._.db.internal")
        .await
        .unwrap();
    assert_eq!(echoed(tls, b"SELECT 1;\n").await, b"SELECT 1;\n");
    // The cache's SNI takes the cache's route, where nothing listens: never the database's.
    let tls = client
        .connect(addr, "outbound_.1_._.cache.internal")
        .await
        .unwrap();
    assert_eq!(echoed(tls, b"SELECT 2;\n").await, b"");
    let metrics = &target.running.metrics;
    eventually("the connections counted", || {
        metrics.tcp_ended("closed") == 1 && metrics.tcp_ended("connect_failed") == 1
    })
    .await;
}
