//! Cross-mesh: the source mesh's proxy takes plaintext from an app and originates ISTIO_MUTUAL
//! to the target mesh's gateway, as an Istio ServiceEntry and DestinationRule describe.

mod support;

use std::net::SocketAddr;

use http::StatusCode;

use support::client::plain_get;
use support::observer::Observer;
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, source_yaml, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const SOURCE_ID: &str = "spiffe://example.com/ns/default/sa/sleep";
const ISTIO_MUTUAL: &str = "{tls: {mode: ISTIO_MUTUAL}}";

fn pki() -> Pki {
    Pki::new(&["example-target.com", "example.com"])
}

/// The target mesh's gateway in front of an echo backend.
async fn target(pki: &Pki) -> (Proxy, meshgate_proxy::echo::Echo) {
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address));
    (
        Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await,
        backend,
    )
}

async fn source(pki: &Pki, target: SocketAddr, policy: &str) -> Proxy {
    Proxy::start(
        &source_yaml(target, policy),
        &pki.workload("example.com", SOURCE_ID),
    )
    .await
}

#[tokio::test]
async fn the_two_mesh_path_with_pooled_connections() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;
    let source = source(&pki, target.addr(443), ISTIO_MUTUAL).await;
    let spoof = [
        ("x-mesh-origin", "local"),
        ("x-source-principal", "example-target.com/ns/x/sa/admin"),
    ];
    let reply = plain_get(source.outbound(), HOST, "/get", &spoof)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echoed("x-mesh-origin").as_deref(), Some("remote"));
    assert_eq!(
        reply.echoed("x-source-trust-domain").as_deref(),
        Some("example.com")
    );
    assert_eq!(
        reply.echoed("x-source-principal").as_deref(),
        Some("example.com/ns/default/sa/sleep")
    );
    assert!(reply
        .echoed("x-forwarded-client-cert")
        .unwrap()
        .starts_with(&format!("By={GATEWAY_ID};")));
    // Path and query travel unchanged.
    let r = plain_get(source.outbound(), HOST, "/anything?x=1", &[])
        .await
        .unwrap();
    assert_eq!(r.json()["path"], "/anything?x=1");
    // Many requests, one upstream mTLS connection: the target counted one handshake.
    for _ in 0..30 {
        let r = plain_get(source.outbound(), &format!("{HOST}:80"), "/get", &[])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    let metrics = target.running.metrics.render();
    assert!(
        metrics.contains(r#"meshgate_handshakes_total{result="success",reason=""} 1"#),
        "{metrics}"
    );
    // A host no ServiceEntry declares is not routed.
    let r = plain_get(source.outbound(), "unknown.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Nor is another port of a declared host.
    let r = plain_get(source.outbound(), &format!("{HOST}:8080"), "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sni_alpn_and_identity_are_what_an_istio_sidecar_sends() {
    let pki = pki();
    let gateway = pki.workload("example-target.com", GATEWAY_ID);
    let observer = Observer::start(
        &gateway,
        &pki.root.cert_pem,
        &[b"istio-http/1.1", b"http/1.1"],
    )
    .await;
    let source = source(&pki, observer.address, ISTIO_MUTUAL).await;
    let reply = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(&reply.body[..], b"observed");
    let seen = observer.seen();
    assert_eq!(
        seen[0].sni.as_deref(),
        Some("outbound_.80_._.httpbin.example-target.com")
    );
    assert_eq!(seen[0].alpn, ["istio-http/1.1", "istio", "http/1.1"]);
    assert_eq!(seen[0].client_uri.as_deref(), Some(SOURCE_ID));

    // tls.sni overrides the SNI; an HTTP2 port offers Istio's h2 tokens.
    let h2 = source_yaml(
        observer.address,
        "{tls: {mode: ISTIO_MUTUAL, sni: gateway.example-target.com}}",
    )
    .replace("protocol: HTTP,", "protocol: HTTP2,");
    let source = Proxy::start(&h2, &pki.workload("example.com", SOURCE_ID)).await;
    let _ = plain_get(source.outbound(), HOST, "/", &[]).await;
    let seen = observer.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.sni.as_deref(), Some("gateway.example-target.com"));
    assert_eq!(last.alpn, ["istio-h2", "istio", "h2"]);
}

#[tokio::test]
async fn subject_alt_names_select_the_servers_accepted() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;
    let allowed = format!("{{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{GATEWAY_ID}]}}}}");
    let source = self::source(&pki, target.addr(443), &allowed).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);

    let other = "{tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://example-target.com/ns/istio-system/sa/other]}}";
    let source = self::source(&pki, target.addr(443), other).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&r.body[..], b"upstream connect error\n");
}

#[tokio::test]
async fn upstream_failures_are_clean() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;

    // A source identity under another root: the target refuses it, the source answers 503.
    let stranger = Pki::new(&["example.com"]);
    let source = Proxy::start(
        &source_yaml(target.addr(443), ISTIO_MUTUAL),
        &stranger.workload("example.com", SOURCE_ID),
    )
    .await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // The source trusts only its own root, so it refuses the target's certificate first.
    let metrics = target.running.metrics.render();
    assert!(
        metrics.contains(r#"meshgate_handshakes_total{result="success",reason=""} 0"#),
        "{metrics}"
    );

    // SIMPLE TLS (no client certificate) to an ISTIO_MUTUAL gateway.
    let source = self::source(&pki, target.addr(443), "{tls: {mode: SIMPLE, sni: httpbin.example-target.com, subjectAltNames: [spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway]}}").await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // Plaintext to a TLS port.
    let source = self::source(&pki, target.addr(443), "{tls: {mode: DISABLE}}").await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let source = self::source(&pki, closed, ISTIO_MUTUAL).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // A name that does not resolve (`.invalid` never does, RFC 2606).
    let yaml = source_yaml(closed, ISTIO_MUTUAL).replace(
        "  resolution: DNS\n",
        "  resolution: DNS\n  endpoints: [{address: nowhere.invalid}]\n",
    );
    assert!(yaml.contains("nowhere.invalid"));
    let source = Proxy::start(&yaml, &pki.workload("example.com", SOURCE_ID)).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn mutual_tls_with_explicit_files() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;
    // The files of another workload of the source mesh, named in the DestinationRule.
    let dir = support::TempDir::new("mutual");
    let files = pki.workload("example.com", "spiffe://example.com/ns/payments/sa/batch");
    files.write(dir.path()).unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let policy = format!(
        "{{tls: {{mode: MUTUAL, clientCertificate: {}, privateKey: {}, caCertificates: {}, sni: {HOST}, subjectAltNames: [{GATEWAY_ID}]}}}}",
        p("cert-chain.pem"),
        p("key.pem"),
        p("root-cert.pem")
    );
    let source = self::source(&pki, target.addr(443), &policy).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.echoed("x-source-principal").as_deref(),
        Some("example.com/ns/payments/sa/batch")
    );
}

/// `insecureSkipVerify` accepts a server no root of the source vouches for, and only with it.
#[tokio::test]
async fn insecure_skip_verify_accepts_a_server_the_bundle_does_not_vouch_for() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;
    // The source's own mesh trusts another root; its client certificate is one the target
    // trusts, named in the DestinationRule.
    let stranger = Pki::new(&["example.com"]);
    let dir = support::TempDir::new("insecure");
    pki.workload("example.com", "spiffe://example.com/ns/payments/sa/batch")
        .write(dir.path())
        .unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let policy = |extra: &str| {
        format!(
            "{{tls: {{mode: MUTUAL, clientCertificate: {}, privateKey: {}, sni: {HOST}{extra}}}}}",
            p("cert-chain.pem"),
            p("key.pem"),
        )
    };
    let verified = format!(", subjectAltNames: [{GATEWAY_ID}]");
    for (identity, extra, want) in [
        // The control: a bundle that trusts the target's root verifies it.
        (&pki, verified.clone(), StatusCode::OK),
        (&stranger, verified.clone(), StatusCode::SERVICE_UNAVAILABLE),
        (
            &stranger,
            format!("{verified}, insecureSkipVerify: false"),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            &stranger,
            ", insecureSkipVerify: true".to_string(),
            StatusCode::OK,
        ),
    ] {
        let source = Proxy::start(
            &source_yaml(target.addr(443), &policy(&extra)),
            &identity.workload("example.com", SOURCE_ID),
        )
        .await;
        let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
        assert_eq!(r.status, want, "{extra}");
    }
}

/// As Istio's egress TLS origination with a client Secret: `credentialName` names the Secret
/// (`tls.crt`, `tls.key`, `ca.crt`, as `kubectl create secret generic client-credential`
/// writes it) mounted under the MeshGateway's credentials directory.
#[tokio::test]
async fn mutual_tls_with_a_credential_name() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;
    let secrets = support::TempDir::new("secrets");
    let batch = pki.workload("example.com", "spiffe://example.com/ns/payments/sa/batch");
    let secret = secrets.path().join("client-credential");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("tls.crt"), &batch.chain_pem).unwrap();
    std::fs::write(secret.join("tls.key"), &batch.key_pem).unwrap();
    std::fs::write(secret.join("ca.crt"), &batch.root_pem).unwrap();
    let yaml = source_yaml(
        target.addr(443),
        &format!("{{tls: {{mode: MUTUAL, credentialName: client-credential, sni: {HOST}, subjectAltNames: [{GATEWAY_ID}]}}}}"),
    )
    .replacen(
        "  outbound:",
        &format!("  credentials: {{directory: {}}}\n  outbound:", secrets.path().display()),
        1,
    );
    let source = Proxy::start(&yaml, &pki.workload("example.com", SOURCE_ID)).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // The Secret's certificate, not the proxy's identity, authenticated the origination.
    assert_eq!(
        r.echoed("x-source-principal").as_deref(),
        Some("example.com/ns/payments/sa/batch")
    );

    // The Secret's CA rotated to one that does not issue the target's certificate: once the
    // running proxy reloads, its originations fail at the handshake.
    let stranger = Pki::new(&["example-target.com"]);
    std::fs::write(secret.join("ca.crt"), &stranger.root.cert_pem).unwrap();
    meshgate_proxy::reload::reload(&source.running, &[source.config()]).await;
    let failed = |source: &Proxy| {
        let metrics = source.running.metrics.render();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("meshgate_upstream_connections_total{")
                    && l.contains("result=\"failure\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    let before = failed(&source);
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(failed(&source) > before);
    // And back.
    std::fs::write(secret.join("ca.crt"), &batch.root_pem).unwrap();
    meshgate_proxy::reload::reload(&source.running, &[source.config()]).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_gateway_forwards_into_another_mesh_over_istio_mutual() {
    let pki = pki();
    // Gateway B in front of echo; gateway A routes httpbin to B with ISTIO_MUTUAL.
    let (b, _backend) = target(&pki).await;
    let a_id = "spiffe://example-target.com/ns/istio-system/sa/edge";
    let a_routes = format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: to-b, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [istio-system/multi-mesh-gateway]
  http: [{{route: [{{destination: {{host: gateway-b.example-target.com, port: {{number: 443}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: gateway-b, namespace: default}}
spec:
  hosts: [gateway-b.example-target.com]
  ports: [{{number: 443, name: https, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{https: {}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: gateway-b, namespace: default}}
spec:
  host: "*.example-target.com"
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{GATEWAY_ID}]}}}}
"#,
        b.addr(443).port()
    );
    let a = Proxy::start(
        &gateway_yaml(&a_routes),
        &pki.workload("example-target.com", a_id),
    )
    .await;
    let caller = pki.workload("example.com", SOURCE_ID);
    let client = support::client::Client::plain(Some(&caller), &pki.root.cert_pem);
    let r = client.get(a.addr(443), HOST, HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // B saw gateway A as its (local) caller; A's own view of the first caller travelled as
    // headers that B replaced, since B owns them.
    assert_eq!(
        r.echoed("x-source-principal").as_deref(),
        Some("example-target.com/ns/istio-system/sa/edge")
    );
    assert_eq!(r.echoed("x-mesh-origin").as_deref(), Some("local"));
}

#[tokio::test]
async fn load_balancers_spread_requests_over_endpoints() {
    let (e1, e2) = (echo(), echo());
    for lb in ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"] {
        let yaml = format!(
            r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: egress, namespace: default}}
spec:
  outbound: {{address: "127.0.0.1:0"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pool}}
spec:
  hosts: [pool.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pool}}
spec:
  host: pool.internal
  trafficPolicy: {{loadBalancer: {{simple: {lb}}}, connectionPool: {{tcp: {{connectTimeout: 2s}}, http: {{idleTimeout: 30s}}}}}}
"#,
            e1.address.port(),
            e2.address.port()
        );
        let model = meshgate_config::load_str("lb.yaml", &yaml).unwrap();
        let running = meshgate_proxy::start(model).await.unwrap();
        let outbound = running.listeners[0].address;
        let mut first = 0;
        for _ in 0..60 {
            let r = plain_get(outbound, "pool.internal", "/", &[])
                .await
                .unwrap();
            if r.json()["server"] == e1.address.to_string() {
                first += 1;
            }
        }
        // Sequential requests: every policy must use both endpoints, none only one.
        assert!(
            (10..=50).contains(&first),
            "{lb}: {first} of 60 to the first endpoint"
        );
        running.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

/// How many mTLS connections the target gateway accepted.
fn accepted(target: &Proxy) -> u64 {
    let metrics = target.running.metrics.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"meshgate_handshakes_total{result="success""#))
        .unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn max_requests_per_connection_retires_connections() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;
    let policy =
        "{tls: {mode: ISTIO_MUTUAL}, connectionPool: {http: {maxRequestsPerConnection: 2}}}";
    let source = source(&pki, target.addr(443), policy).await;
    for _ in 0..10 {
        let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(accepted(&target), 5);
}

/// `maxConnectionDuration`: a pooled connection that old takes no new request, and one that
/// comes of age with a request in flight finishes it and is not used again; over HTTP/1.1 and
/// over HTTP/2 (`h2UpgradePolicy: UPGRADE`) to the peer gateway.
#[tokio::test]
async fn max_connection_duration_retires_old_connections() {
    let pki = pki();
    for upgrade in ["", ", h2UpgradePolicy: UPGRADE"] {
        let (target, _backend) = target(&pki).await;
        let policy = format!(
            "{{tls: {{mode: ISTIO_MUTUAL}}, connectionPool: {{tcp: {{maxConnectionDuration: 1500ms}}, http: {{idleTimeout: 1h{upgrade}}}}}}}"
        );
        let source = source(&pki, target.addr(443), &policy).await;
        for _ in 0..3 {
            let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
            assert_eq!(r.status, StatusCode::OK);
        }
        assert_eq!(accepted(&target), 1, "{upgrade}");
        tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
        let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(accepted(&target), 2, "{upgrade}");
        // Comes of age while its request is in flight: the request is answered.
        let r = plain_get(source.outbound(), HOST, "/delay/1700", &[])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(accepted(&target), 3, "{upgrade}");
    }
}

#[tokio::test]
async fn max_connections_queues_requests_on_the_allowed_connections() {
    let pki = pki();
    for (limit, policy) in [
        (
            Some(1),
            "{tls: {mode: ISTIO_MUTUAL}, connectionPool: {tcp: {maxConnections: 1}}}",
        ),
        (None, ISTIO_MUTUAL),
    ] {
        let (target, _backend) = target(&pki).await;
        let source = source(&pki, target.addr(443), policy).await;
        let outbound = source.outbound();
        // Four slow requests at once.
        let requests: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(async move { plain_get(outbound, HOST, "/delay/300", &[]).await })
            })
            .collect();
        for r in requests {
            assert_eq!(r.await.unwrap().unwrap().status, StatusCode::OK);
        }
        match limit {
            Some(n) => assert_eq!(accepted(&target), n),
            // Without the limit each concurrent request needed its own connection.
            None => assert_eq!(accepted(&target), 4),
        }
    }
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;
    let policy = "{tls: {mode: ISTIO_MUTUAL}, connectionPool: {http: {idleTimeout: 200ms}}}";
    let source = source(&pki, target.addr(443), policy).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // The source closes its idle connection; the target sees it go.
    support::eventually("the idle upstream connection to close", || {
        target
            .running
            .metrics
            .render()
            .contains("meshgate_connections_active 0")
    })
    .await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(accepted(&target), 2);
}

#[tokio::test]
async fn simple_tls_checks_the_server_name_and_sessions_are_resumed() {
    let pki = pki();
    // A plain TLS server (no client certificate) whose certificate names the host.
    let mut spec = meshgate_pki::LeafSpec::spiffe("spiffe://example-target.com/ns/default/sa/web");
    spec.dns = vec![HOST.into()];
    let server = pki.leaf("example-target.com", &spec);
    let observer = Observer::start_with(&server, &pki.root.cert_pem, &[b"http/1.1"], false).await;
    // A new connection per request, so every request is a handshake.
    let policy = "{tls: {mode: SIMPLE}, connectionPool: {http: {maxRequestsPerConnection: 1}}}";
    let source = source(&pki, observer.address, policy).await;
    for _ in 0..3 {
        let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
        assert_eq!(&r.body[..], b"observed");
    }
    let seen = observer.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].sni.as_deref(), Some(HOST));
    assert_eq!(
        seen[0].client_uri, None,
        "SIMPLE sends no client certificate"
    );
    assert!(!seen[0].resumed);
    assert!(
        seen[1..].iter().all(|o| o.resumed),
        "later handshakes resume: {seen:?}"
    );

    // The same server under another name fails the name check.
    let wrong = "{tls: {mode: SIMPLE, sni: other.example-target.com}}";
    let source = self::source(&pki, observer.address, wrong).await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // `caCrl` without `caCertificates`: the mesh bundle verifies, and the CRL adds to its own.
    let tomorrow = meshgate_pki::OffsetDateTime::now_utc() + meshgate_pki::Duration::days(1);
    let other = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/x/sa/y",
    );
    for (revoked, status) in [
        (&other, StatusCode::OK),
        (&server, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let crl = pki
            .ca("example-target.com")
            .crl(&[&revoked.leaf_der], tomorrow)
            .unwrap();
        let source = Proxy::start_with_files(
            &source_yaml(observer.address, "{tls: {mode: SIMPLE, caCrl: crl.pem}}"),
            &pki.workload("example.com", SOURCE_ID),
            &[("crl.pem", &crl)],
        )
        .await;
        let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
        assert_eq!(r.status, status);
    }
}

#[tokio::test]
async fn the_outbound_listener_speaks_h2c_with_prior_knowledge() {
    let pki = pki();
    let (target, _backend) = target(&pki).await;
    let source = source(&pki, target.addr(443), ISTIO_MUTUAL).await;
    let tcp = tokio::net::TcpStream::connect(source.outbound())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{HOST}/h2c"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(support::TIMEOUT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/h2c");
    assert_eq!(json["headers"]["x-mesh-origin"][0], "remote");
}

#[tokio::test]
async fn an_upstream_that_resets_is_a_503() {
    let pki = pki();
    // Accepts, reads the request, and closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
        }
    });
    let source = source(&pki, address, "{tls: {mode: DISABLE}}").await;
    let r = plain_get(source.outbound(), HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&r.body[..], b"upstream reset\n");
}

/// Issuer binding holds an upstream to it as it holds a client: under the shared root, another
/// mesh's CA (the source's own here) can mint the target gateway's identity, and with
/// `trust.issuers` an ISTIO_MUTUAL upstream presenting it is refused, `subjectAltNames` or not.
#[tokio::test]
async fn issuer_binding_refuses_an_upstream_another_mesh_minted() {
    let pki = pki();
    let forged = pki.workload("example.com", GATEWAY_ID);
    let impostor = Observer::start(&forged, &pki.root.cert_pem, &[b"http/1.1"]).await;
    let (target, _backend) = target(&pki).await;

    let dir = support::TempDir::new("upstream-issuers");
    let trust = pki.issuer_binding(dir.path());
    let pinned = format!("{{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{GATEWAY_ID}]}}}}");
    for policy in [ISTIO_MUTUAL, pinned.as_str()] {
        // Unbound, the minted identity passes, even the pinned name.
        let open = source(&pki, impostor.address, policy).await;
        let r = plain_get(open.outbound(), HOST, "/", &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{policy}");

        let caller = pki.workload("example.com", SOURCE_ID);
        for (to, want) in [
            (impostor.address, StatusCode::SERVICE_UNAVAILABLE),
            (target.addr(443), StatusCode::OK),
        ] {
            let yaml =
                source_yaml(to, policy).replacen("  outbound:", &format!("{trust}  outbound:"), 1);
            assert!(yaml.contains("issuers"));
            let bound = Proxy::start(&yaml, &caller).await;
            let r = plain_get(bound.outbound(), HOST, "/", &[]).await.unwrap();
            assert_eq!(r.status, want, "{policy} to {to}");
            if want != StatusCode::OK {
                assert_eq!(&r.body[..], b"upstream connect error\n");
            }
        }
    }
}
