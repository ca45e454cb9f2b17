//! The inbound gateway end to end: real mTLS on 127.0.0.1, certificates made at test time
//! (shared root -> per-mesh intermediate -> Istio-style leaf), the proxy in process, the echo
//! backend, and a real rustls + hyper client.

mod support;

use http::StatusCode;

use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec, OffsetDateTime};
use support::client::Client;
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

fn pki() -> Pki {
    Pki::new(&["example-target.com", "example.com", "cluster.local"])
}

/// A gateway for `HOST` forwarding to a fresh echo backend.
async fn gateway(pki: &Pki) -> (Proxy, meshgate_proxy::echo::Echo) {
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address));
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    (proxy, backend)
}

#[tokio::test]
async fn local_remote_and_cluster_local_callers_are_tagged() {
    let pki = pki();
    let (proxy, _backend) = gateway(&pki).await;
    let addr = proxy.addr(443);
    let cases = [
        (
            "example-target.com",
            "spiffe://example-target.com/ns/default/sa/curl",
            "local",
        ),
        (
            "example.com",
            "spiffe://example.com/ns/default/sa/sleep",
            "remote",
        ),
        // Istio's default trust domain: still local while workloads hold old certificates.
        (
            "cluster.local",
            "spiffe://cluster.local/ns/legacy/sa/app",
            "local",
        ),
    ];
    for (mesh, id, want_origin) in cases {
        let caller = pki.workload(mesh, id);
        let client = Client::plain(Some(&caller), &pki.root.cert_pem);
        let reply = client.get(addr, HOST, HOST, "/get", &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{id}");
        let principal = id.strip_prefix("spiffe://").unwrap();
        assert_eq!(
            reply.echoed("x-mesh-origin").as_deref(),
            Some(want_origin),
            "{id}"
        );
        assert_eq!(
            reply.echoed("x-source-trust-domain").as_deref(),
            Some(mesh),
            "{id}"
        );
        assert_eq!(
            reply.echoed("x-source-principal").as_deref(),
            Some(principal),
            "{id}"
        );
        let leaf_hash = meshgate_proxy::identity::sha256_hex(&caller.leaf_der);
        assert_eq!(
            reply.echoed("x-forwarded-client-cert").unwrap(),
            format!("By={GATEWAY_ID};Hash={leaf_hash};Subject=\"\";URI={id}"),
        );
        assert_eq!(reply.echoed("x-forwarded-proto").as_deref(), Some("https"));
    }
    let metrics = proxy.running.metrics.render();
    assert!(
        metrics.contains(
            r#"meshgate_requests_total{origin="remote",source_trust_domain="example.com",code="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"meshgate_requests_total{origin="local",source_trust_domain="example-target.com",code="200"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"meshgate_handshakes_total{result="success",reason=""} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn spoofed_tag_headers_from_a_remote_caller_are_replaced() {
    let pki = pki();
    let (proxy, _backend) = gateway(&pki).await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::plain(Some(&caller), &pki.root.cert_pem);
    let spoofed = [
        ("x-mesh-origin", "local"),
        ("x-source-trust-domain", "example-target.com"),
        (
            "x-source-principal",
            "example-target.com/ns/istio-system/sa/admin",
        ),
        (
            "x-forwarded-client-cert",
            "By=spiffe://x/y;URI=spiffe://example-target.com/ns/istio-system/sa/admin",
        ),
    ];
    // Both HTTP/1.1 and HTTP/2 must strip every copy.
    for client in [
        client.clone(),
        Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]),
    ] {
        let reply = client
            .get(proxy.addr(443), HOST, HOST, "/", &spoofed)
            .await
            .unwrap();
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
            .ends_with("URI=spiffe://example.com/ns/default/sa/sleep"));
    }
}

#[tokio::test]
async fn rejected_certificates_never_reach_http_and_are_counted_by_reason() {
    let pki = pki();
    let (proxy, _backend) = gateway(&pki).await;
    let addr = proxy.addr(443);
    let now = OffsetDateTime::now_utc();
    let day = meshgate_pki::Duration::days(1);
    let spec = |f: &dyn Fn(&mut LeafSpec)| {
        let mut s = LeafSpec::spiffe("spiffe://example.com/ns/default/sa/sleep");
        f(&mut s);
        s
    };
    let other_root = Authority::root("an unrelated root", KeyAlgorithm::EcdsaP256).unwrap();
    let foreign = other_root
        .intermediate(
            &meshgate_config::spiffe::TrustDomain::new("example.com").unwrap(),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap()
        .issue(&LeafSpec::spiffe(
            "spiffe://example.com/ns/default/sa/sleep",
        ))
        .unwrap();
    let cases: Vec<(&str, Option<meshgate_pki::Workload>, &str)> = vec![
        ("no client certificate", None, "no_client_certificate"),
        ("untrusted root", Some(foreign), "unknown_issuer"),
        (
            "expired",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.not_before = now - day * 3;
                    s.not_after = now - day;
                }),
            )),
            "expired",
        ),
        (
            "not yet valid",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.not_before = now + day;
                    s.not_after = now + day * 2;
                }),
            )),
            "not_yet_valid",
        ),
        (
            "DNS SAN only",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.uris.clear();
                    s.dns = vec!["sleep.default.svc".into()];
                }),
            )),
            "no_uri_san",
        ),
        (
            "two URI SANs",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.uris
                        .push("spiffe://example.com/ns/default/sa/other".into());
                }),
            )),
            "multiple_uri_sans",
        ),
        (
            "non-SPIFFE URI",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.uris = vec!["https://example.com/sleep".into()];
                }),
            )),
            "invalid_spiffe_id",
        ),
        (
            "uppercase trust domain",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.uris = vec!["spiffe://Example.com/ns/default/sa/sleep".into()];
                }),
            )),
            "invalid_spiffe_id",
        ),
        (
            "dot segment",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.uris = vec!["spiffe://example.com/ns/../sa/sleep".into()];
                }),
            )),
            "invalid_spiffe_id",
        ),
        (
            "query in SPIFFE ID",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.uris = vec!["spiffe://example.com/ns/default/sa/sleep?admin=1".into()];
                }),
            )),
            "invalid_spiffe_id",
        ),
        (
            "trust domain only",
            Some(pki.leaf(
                "example.com",
                &spec(&|s| {
                    s.uris = vec!["spiffe://example.com".into()];
                }),
            )),
            "invalid_spiffe_id",
        ),
        // webpki refuses a CA as an end entity before our own X509-SVID check runs; its
        // refusal is told apart.
        (
            "CA leaf",
            Some(pki.leaf("example.com", &spec(&|s| s.ca = true))),
            "ca_leaf",
        ),
    ];
    for (name, identity, reason) in cases {
        let before = proxy.rejected(reason);
        let client = Client::plain(identity.as_ref(), &pki.root.cert_pem);
        let result = client.get(addr, HOST, HOST, "/get", &[]).await;
        assert!(result.is_err(), "{name}: request got through: {result:?}");
        support::eventually(&format!("{name} counted as {reason}"), || {
            proxy.rejected(reason) == before + 1
        })
        .await;
    }
    // Nothing was forwarded and nothing was counted as a request.
    let metrics = proxy.running.metrics.render();
    assert!(!metrics.contains("meshgate_requests_total{"), "{metrics}");
    assert!(
        metrics.contains(r#"meshgate_handshakes_total{result="success",reason=""} 0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_istio_sidecar_client_is_served() {
    let pki = pki();
    let (proxy, _backend) = gateway(&pki).await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let sni = "outbound_.443_._.httpbin.example-target.com";
    let cases: [(&[&[u8]], http::Version); 4] = [
        (
            &[b"istio-http/1.1", b"istio", b"http/1.1"],
            http::Version::HTTP_11,
        ),
        (&[b"istio-h2", b"istio", b"h2"], http::Version::HTTP_2),
        (&[b"istio-h2", b"istio"], http::Version::HTTP_2),
        // No token in common: the handshake still completes, without ALPN, as HTTP/1.1.
        (&[b"istio-peer-exchange"], http::Version::HTTP_11),
    ];
    for (alpn, version) in cases {
        let client = Client::new(Some(&caller), &pki.root.cert_pem, alpn);
        let tls = client.connect(proxy.addr(443), sni).await.unwrap();
        let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        assert_ne!(negotiated.as_deref(), Some(&b"istio-peer-exchange"[..]));
        drop(tls);
        let reply = client
            .get(proxy.addr(443), sni, HOST, "/get", &[])
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{alpn:?}");
        assert_eq!(reply.version, version, "{alpn:?}");
        assert_eq!(reply.echoed("x-mesh-origin").as_deref(), Some("remote"));
    }
}

#[tokio::test]
async fn an_sni_for_another_host_is_refused() {
    let pki = pki();
    let (proxy, _backend) = gateway(&pki).await;
    let caller = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/default/sa/curl",
    );
    let client = Client::plain(Some(&caller), &pki.root.cert_pem);
    let result = client
        .get(proxy.addr(443), "httpbin.example.org", HOST, "/", &[])
        .await;
    assert!(result.is_err(), "{result:?}");
    support::eventually("sni_mismatch counted", || {
        proxy.rejected("sni_mismatch") == 1
    })
    .await;
}

#[tokio::test]
async fn http2_and_http1_clients_reach_the_backend() {
    let pki = pki();
    let (proxy, backend) = gateway(&pki).await;
    let caller = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/default/sa/curl",
    );
    for (alpn, version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let client = Client::new(Some(&caller), &pki.root.cert_pem, &[alpn]);
        let reply = client
            .get(
                proxy.addr(443),
                HOST,
                &format!("{HOST}:18443"),
                "/anything?x=1",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, version);
        let json = reply.json();
        assert_eq!(json["path"], "/anything?x=1");
        assert_eq!(json["server"], backend.address.to_string());
        // The upstream sees the authority the client sent, port included.
        assert_eq!(
            reply.echoed("host").as_deref(),
            Some("httpbin.example-target.com:18443")
        );
    }
}

#[tokio::test]
async fn resumed_sessions_keep_their_identity_and_resumption_can_be_turned_off() {
    let pki = pki();
    let backend = echo();
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let yaml = gateway_yaml(&route_to(HOST, backend.address));
    for (resumption, want) in [
        (true, rustls::HandshakeKind::Resumed),
        (false, rustls::HandshakeKind::Full),
    ] {
        let yaml = yaml.replacen(
            "  labels: {istio: ingressgateway}",
            &format!(
                "  labels: {{istio: ingressgateway}}\n  tls: {{sessionResumption: {resumption}}}"
            ),
            1,
        );
        let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
        // One client config keeps rustls' session cache between connections.
        let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
        let first = client
            .get(proxy.addr(443), HOST, HOST, "/", &[])
            .await
            .unwrap();
        assert_eq!(
            first.echoed("x-source-principal").as_deref(),
            Some("example.com/ns/default/sa/sleep")
        );
        let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
        // TLS 1.3 tickets arrive after the handshake: a second connection may need a moment.
        let kind = tls.get_ref().1.handshake_kind();
        drop(tls);
        let kind = if kind == Some(want) {
            kind
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            client
                .connect(proxy.addr(443), HOST)
                .await
                .unwrap()
                .get_ref()
                .1
                .handshake_kind()
        };
        assert_eq!(kind, Some(want), "sessionResumption: {resumption}");
        // Whether resumed or not, the request carries the caller's identity.
        let again = client
            .get(proxy.addr(443), HOST, HOST, "/", &[])
            .await
            .unwrap();
        assert_eq!(
            again.echoed("x-source-principal").as_deref(),
            Some("example.com/ns/default/sa/sleep")
        );
        assert_eq!(again.echoed("x-mesh-origin").as_deref(), Some("remote"));
    }
}

#[tokio::test]
async fn mesh_config_ecdh_curves_choose_the_key_exchange() {
    let pki = pki();
    let backend = echo();
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let operator = |curves: &str| {
        format!(
            "{}---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {{name: istio, namespace: istio-system}}\nspec:\n  meshConfig:\n    trustDomain: example-target.com\n    tlsDefaults: {{ecdhCurves: [{curves}]}}\n",
            route_to(HOST, backend.address)
        )
    };
    for (curves, want) in [
        ("X25519", rustls::NamedGroup::X25519),
        ("P-256", rustls::NamedGroup::secp256r1),
        ("X25519MLKEM768, X25519", rustls::NamedGroup::X25519MLKEM768),
    ] {
        let proxy = Proxy::start(
            &gateway_yaml(&operator(curves)),
            &pki.workload("example-target.com", GATEWAY_ID),
        )
        .await;
        // A fresh client each time: rustls remembers a server's key-exchange group per name.
        let client = Client::plain(Some(&caller), &pki.root.cert_pem);
        let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        assert_eq!(group, Some(want), "{curves}");
    }
}

/// The admin endpoints reachable from the pod network are the probes and the metrics; the
/// configuration and the trust it holds stay on loopback unless asked for.
#[tokio::test]
async fn admin_off_loopback_serves_probes_and_metrics_but_not_the_config_or_certs() {
    let pki = pki();
    let backend = echo();
    let identity = pki.workload("example-target.com", GATEWAY_ID);
    let status = |addr: std::net::SocketAddr, path: &'static str| async move {
        // A wildcard bind is reached over loopback here, as a kubelet reaches the pod IP.
        let addr = std::net::SocketAddr::new([127, 0, 0, 1].into(), addr.port());
        support::client::plain_get(addr, "admin", path, &[])
            .await
            .unwrap()
            .status
    };
    let admin = |fields: &str| {
        gateway_yaml(&route_to(HOST, backend.address)).replacen(
            "  listen:",
            &format!("  admin: {fields}\n  listen:"),
            1,
        )
    };

    let proxy = Proxy::start(
        &admin("{address: \"0.0.0.0:0\", probes: \"0.0.0.0:0\"}"),
        &identity,
    )
    .await;
    let (full, probes) = (
        proxy.running.admin.unwrap(),
        proxy.running.admin_probes.expect("probes bound"),
    );
    for path in ["/ready", "/healthz", "/stats/prometheus"] {
        assert_eq!(status(full, path).await, StatusCode::OK, "{path}");
        assert_eq!(status(probes, path).await, StatusCode::OK, "{path}");
    }
    for path in ["/config_dump", "/certs"] {
        assert_eq!(status(full, path).await, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(status(probes, path).await, StatusCode::NOT_FOUND, "{path}");
    }
    drop(proxy);

    // Asked for: served on any address.
    let proxy = Proxy::start(
        &admin("{address: \"0.0.0.0:0\", debugEndpoints: true}"),
        &identity,
    )
    .await;
    let full = proxy.running.admin.unwrap();
    assert_eq!(status(full, "/config_dump").await, StatusCode::OK);
    assert_eq!(status(full, "/certs").await, StatusCode::OK);
    assert_eq!(proxy.running.admin_probes, None);
}

#[tokio::test]
async fn admin_shows_the_effective_config_and_certificates_without_keys() {
    let pki = pki();
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address)).replacen(
        "  listen:",
        "  admin: {address: \"127.0.0.1:0\"}\n  listen:",
        1,
    );
    let identity = pki.workload("example-target.com", GATEWAY_ID);
    let proxy = Proxy::start(&yaml, &identity).await;
    let admin = proxy.running.admin.expect("admin bound");

    let dump = support::client::plain_get(admin, "admin", "/config_dump", &[])
        .await
        .unwrap();
    assert_eq!(dump.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&dump.body);
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
        "key material in /config_dump"
    );
    let json = dump.json();
    assert_eq!(json["version"], 1);
    assert_eq!(
        json["config"]["trust"]["trust_domain"],
        "example-target.com"
    );
    assert_eq!(json["config"]["listeners"][0]["name"], "https");
    assert_eq!(
        json["config"]["listeners"][0]["servers"][0]["host"],
        "*.example-target.com"
    );
    assert_eq!(
        json["config"]["backends"][0]["host"],
        "httpbin.backend.internal"
    );

    let certs = support::client::plain_get(admin, "admin", "/certs", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(certs["spiffe_id"], GATEWAY_ID);
    let chain = certs["cert_chain"]["certificates"].as_array().unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let leaf_expiry = chain[0]["not_after_unix"].as_i64().unwrap();
    assert!(
        leaf_expiry > now && leaf_expiry <= now + 25 * 3600,
        "{leaf_expiry}"
    );
    assert_eq!(
        chain[1]["subject"],
        "O=example-target.com, CN=meshgate mesh CA example-target.com"
    );
    assert_eq!(
        certs["root_certs"]["certificates"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // One request through: the histogram, the upstream pool and the expiry gauges show it.
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    assert_eq!(
        client
            .get(proxy.addr(443), HOST, HOST, "/", &[])
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    let stats = support::client::plain_get(admin, "admin", "/stats/prometheus", &[])
        .await
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.body).into_owned();
    for line in [
        "meshgate_request_duration_seconds_count{listener=\"https\",origin=\"remote\"} 1".to_string(),
        "meshgate_request_duration_seconds_bucket{listener=\"https\",origin=\"remote\",le=\"+Inf\"} 1".to_string(),
        "meshgate_upstream_connections_total{backend=\"httpbin.backend.internal:80\",result=\"success\"} 1".to_string(),
        "meshgate_upstream_connections_total{backend=\"httpbin.backend.internal:80\",result=\"failure\"} 0".to_string(),
        "meshgate_upstream_idle_connections{backend=\"httpbin.backend.internal:80\"} 1".to_string(),
        format!("meshgate_certificate_expiry_timestamp_seconds{{kind=\"chain\",index=\"0\",subject=\"\"}} {leaf_expiry}"),
    ] {
        assert!(stats.contains(&line), "missing `{line}` in:\n{stats}");
    }
}

#[tokio::test]
async fn a_bundle_of_several_roots_admits_callers_of_each() {
    // Two roots, as during a root rotation or with meshes that do not share one.
    let old = pki();
    let new = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let bundle = format!("{}{}", old.root.cert_pem, new.root.cert_pem);
    let yaml = gateway_yaml(&route_to(HOST, backend.address));
    let proxy = Proxy::start_with_bundle(
        &yaml,
        &old.workload("example-target.com", GATEWAY_ID),
        &bundle,
    )
    .await;
    for (pki, id) in [
        (&old, "spiffe://example.com/ns/a/sa/old"),
        (&new, "spiffe://example.com/ns/a/sa/new"),
    ] {
        let caller = pki.workload("example.com", id);
        // The client trusts the gateway's root.
        let client = Client::plain(Some(&caller), &old.root.cert_pem);
        let reply = client
            .get(proxy.addr(443), HOST, HOST, "/", &[])
            .await
            .unwrap();
        assert_eq!(
            reply.echoed("x-source-principal").as_deref(),
            Some(&id["spiffe://".len()..])
        );
    }
    // A third root is still a stranger.
    let stranger = Pki::new(&["example.com"]);
    let caller = stranger.workload("example.com", "spiffe://example.com/ns/a/sa/x");
    let client = Client::plain(Some(&caller), &old.root.cert_pem);
    assert!(client
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .is_err());
}

#[tokio::test]
async fn the_access_log_has_a_json_line_per_request_and_refused_handshake() {
    let pki = pki();
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address)).replacen(
        "  listen:",
        "  accessLog: {path: access.log}\n  listen:",
        1,
    );
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    assert_eq!(
        client
            .get(proxy.addr(443), HOST, HOST, "/get?x=1", &[])
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    let other = "other.example-target.com";
    assert_eq!(
        client
            .get(proxy.addr(443), HOST, other, "/", &[])
            .await
            .unwrap()
            .status,
        StatusCode::NOT_FOUND
    );
    assert!(Client::plain(None, &pki.root.cert_pem)
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .is_err());

    let lines = support::json_lines(&proxy.dir.path().join("access.log"), 3).await;
    let ok = lines
        .iter()
        .find(|l| l["status"] == 200)
        .expect("a 200 line");
    assert_eq!(ok["listener"], "https");
    assert_eq!(ok["origin"], "remote");
    assert_eq!(ok["source_trust_domain"], "example.com");
    assert_eq!(ok["principal"], "example.com/ns/default/sa/sleep");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["authority"], HOST);
    assert_eq!(ok["path"], "/get?x=1");
    assert_eq!(ok["upstream"], "httpbin.backend.internal:80");
    assert_eq!(ok["response_flags"], "-");
    assert!(ok["bytes_out"].as_u64().unwrap() > 100);
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(ok["start_time"].as_str().unwrap().ends_with('Z'));
    let not_found = lines
        .iter()
        .find(|l| l["status"] == 404)
        .expect("a 404 line");
    assert_eq!(not_found["response_flags"], "NR");
    assert_eq!(not_found["upstream"], serde_json::Value::Null);
    let refused = lines
        .iter()
        .find(|l| l["event"] == "handshake_rejected")
        .expect("a handshake line");
    assert_eq!(refused["reason"], "no_client_certificate");
}

#[tokio::test]
async fn the_access_log_counts_body_bytes_to_the_end_and_flags_responses_cut_short() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let pki = pki();
    let backend = echo();
    let gap = std::time::Duration::from_millis(100);
    let slow = support::proxy::slow_backend("tick", 4, gap).await;
    let broken = support::proxy::broken_backend("half").await;
    let yaml = gateway_yaml(&format!(
        "{}{}{}",
        route_to(HOST, backend.address),
        route_to("slow.example-target.com", slow),
        route_to("broken.example-target.com", broken)
    ))
    .replacen("  listen:", "  accessLog: {path: access.log}\n  listen:", 1);
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"h2"]);
    let connect = || async {
        let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        (send, tokio::spawn(conn))
    };

    // A request body with no Content-Length (HTTP/2 need not declare one), echoed back.
    let (mut send, _conn) = connect().await;
    let upload = Bytes::from(vec![b'x'; 5000]);
    let req = http::Request::post(format!("https://{HOST}/post"))
        .body(Full::new(upload.clone()))
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    let echoed_json: serde_json::Value = serde_json::from_slice(&echoed).unwrap();
    assert_eq!(echoed_json["body_bytes"], 5000);

    // A streamed response read to its end; then one the client walks away from.
    let slow_get = || {
        http::Request::get("https://slow.example-target.com/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let response = send.send_request(slow_get()).await.unwrap();
    let whole = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&whole[..], b"ticktickticktick");
    let (mut send, conn) = connect().await;
    let mut body = send.send_request(slow_get()).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"tick");
    drop((body, send));
    conn.abort();

    // An upstream that breaks off in the middle of its body: the client's body fails too.
    let (mut send, _conn) = connect().await;
    let req = http::Request::get("https://broken.example-target.com/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());

    let lines = support::json_lines(&proxy.dir.path().join("access.log"), 4).await;
    let post = lines.iter().find(|l| l["method"] == "POST").unwrap();
    assert_eq!(post["bytes_in"], 5000);
    assert_eq!(post["bytes_out"], echoed.len() as u64);
    assert_eq!(post["response_flags"], "-");
    let slow: Vec<_> = lines
        .iter()
        .filter(|l| l["authority"] == "slow.example-target.com")
        .collect();
    let (whole_line, cut) = (slow[0], slow[1]);
    assert_eq!(whole_line["bytes_out"], 16);
    assert_eq!(whole_line["response_flags"], "-");
    // The duration runs to the last byte; the response head came before the first tick.
    let (total, head) = (
        whole_line["duration_ms"].as_f64().unwrap(),
        whole_line["response_duration_ms"].as_f64().unwrap(),
    );
    assert!(total >= (3 * gap).as_secs_f64() * 1000.0, "{whole_line}");
    assert!(head <= total, "{whole_line}");
    assert_eq!(cut["status"], 200);
    assert_eq!(cut["response_flags"], "DC", "{cut}");
    assert!(cut["bytes_out"].as_u64().unwrap() < 16, "{cut}");
    let broken = lines
        .iter()
        .find(|l| l["authority"] == "broken.example-target.com")
        .unwrap();
    assert_eq!(broken["response_flags"], "UR", "{broken}");
    assert_eq!(broken["bytes_out"], 4, "{broken}");
}

#[tokio::test]
async fn drain_answers_not_ready_closes_idle_connections_and_finishes_requests() {
    let pki = pki();
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address)).replacen(
        "  listen:",
        "  admin: {address: \"127.0.0.1:0\"}\n  listen:",
        1,
    );
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let (addr, admin) = (proxy.addr(443), proxy.running.admin.unwrap());
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let h1 = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let h2 = Client::new(Some(&caller), &pki.root.cert_pem, &[b"h2"]);

    // An idle HTTP/1.1 connection and an idle HTTP/2 one, and a request in flight.
    let idle1 = h1.connect(addr, HOST).await.unwrap();
    let (mut idle2, conn2) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2.connect(addr, HOST).await.unwrap()),
    )
    .await
    .unwrap();
    let conn2 = tokio::spawn(conn2);
    let in_flight = tokio::spawn({
        let h1 = h1.clone();
        async move { h1.get(addr, HOST, HOST, "/delay/500", &[]).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let (proxy_parts, dir) = (proxy.running, proxy.dir);
    let drain = tokio::spawn(proxy_parts.shutdown(std::time::Duration::from_secs(5)));
    // Not ready as soon as the drain starts, while the admin listener still answers.
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let r = support::client::plain_get(admin, "admin", "/ready", &[])
            .await
            .unwrap();
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready never answered 503"
        );
    }
    // The request in flight finishes, told that its connection closes after it.
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    // The idle HTTP/1.1 connection is closed; the HTTP/2 one got GOAWAY and ended.
    let mut idle1 = idle1;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        support::TIMEOUT,
        tokio::io::AsyncReadExt::read(&mut idle1, &mut buf),
    )
    .await
    .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    tokio::time::timeout(support::TIMEOUT, conn2)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let req = http::Request::get(format!("https://{HOST}/"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert!(idle2.send_request(req).await.is_err());
    tokio::time::timeout(support::TIMEOUT, drain)
        .await
        .unwrap()
        .unwrap();
    drop(dir);
}

/// Envoy's `set_current_client_cert_details.{cert, chain}`: XFCC carries the client's leaf and
/// the chain it sent, URL-encoded PEM, after its URI and before its DNS names; off by default.
#[tokio::test]
async fn xfcc_carries_the_client_certificate_and_chain_when_configured() {
    let pki = pki();
    let backend = echo();
    let id = "spiffe://example.com/ns/default/sa/sleep";
    let mut spec = LeafSpec::spiffe(id);
    spec.dns = vec!["sleep.example.com".into()];
    let caller = pki.leaf("example.com", &spec);
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let leaf_hash = meshgate_proxy::identity::sha256_hex(&caller.leaf_der);
    let plain = format!("By={GATEWAY_ID};Hash={leaf_hash};Subject=\"\";URI={id}");

    let yaml = gateway_yaml(&route_to(HOST, backend.address));
    let identity = pki.workload("example-target.com", GATEWAY_ID);
    let proxy = Proxy::start(&yaml, &identity).await;
    let reply = client
        .get(proxy.addr(443), HOST, HOST, "/get", &[])
        .await
        .unwrap();
    assert_eq!(
        reply.echoed("x-forwarded-client-cert").unwrap(),
        format!("{plain};DNS=sleep.example.com")
    );

    let yaml = yaml.replacen(
        "  listen:",
        "  tagging: {setCurrentClientCertDetails: {cert: true, chain: true}}\n  listen:",
        1,
    );
    let proxy = Proxy::start(&yaml, &identity).await;
    let reply = client
        .get(proxy.addr(443), HOST, HOST, "/get", &[])
        .await
        .unwrap();
    let xfcc = reply.echoed("x-forwarded-client-cert").unwrap();
    let rest = xfcc.strip_prefix(&format!("{plain};Cert=\"")).expect(&xfcc);
    let (cert, rest) = rest.split_once("\";Chain=\"").expect(&xfcc);
    let (chain, rest) = rest.split_once('"').expect(&xfcc);
    assert_eq!(rest, ";DNS=sleep.example.com");
    // Only unreserved characters are left as they are.
    assert!(cert
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
    let decode = |encoded: &str| {
        let mut out = Vec::new();
        let mut bytes = encoded.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hex = [bytes.next().unwrap(), bytes.next().unwrap()];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
            } else {
                out.push(b);
            }
        }
        String::from_utf8(out).unwrap()
    };
    let ders = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(ders(&decode(cert)), std::slice::from_ref(&caller.leaf_der));
    // The chain as the client sent it: its leaf, then its mesh CA.
    assert_eq!(ders(&decode(chain)), ders(&caller.chain_pem));
    assert_eq!(ders(&caller.chain_pem).len(), 2);
}
