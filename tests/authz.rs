//! AuthorizationPolicy end to end: real mTLS callers from two meshes, a backend that counts
//! what reaches it, 403 `RBAC: access denied` for what does not.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use support::client::Client;
use support::pki::Pki;
use support::proxy::{gateway_yaml, route_to, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

/// An HTTP backend that counts the requests it receives.
async fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            b"{}",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (address, count)
}

/// Caller, path, extra request headers, expected status.
type Case<'a> = (&'a Client, &'a str, &'a [(&'a str, &'a str)], StatusCode);

const POLICIES: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-and-partners, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/*"]}}]
  - from: [{source: {trustDomains: [example.com], namespaces: [partners]}}]
    to: [{operation: {methods: [GET], paths: ["/public/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-remote-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
    when: [{key: "request.headers[x-mesh-origin]", values: [remote]}]
"#;

#[tokio::test]
async fn policies_decide_before_anything_reaches_the_backend() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (backend, reached) = counting_backend().await;
    let yaml = gateway_yaml(&format!("{}{POLICIES}", route_to(HOST, backend)));
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let client =
        |mesh: &str, id: &str| Client::plain(Some(&pki.workload(mesh, id)), &pki.root.cert_pem);
    let local = client(
        "example-target.com",
        "spiffe://example-target.com/ns/apps/sa/web",
    );
    let partner = client("example.com", "spiffe://example.com/ns/partners/sa/billing");
    let stranger = client("example.com", "spiffe://example.com/ns/other/sa/scraper");

    let cases: [Case; 7] = [
        // cluster.local/* stands for the local bundle: every local workload.
        (&local, "/anything", &[], StatusCode::OK),
        (&local, "/admin/users", &[], StatusCode::OK),
        (&partner, "/public/prices", &[], StatusCode::OK),
        (&partner, "/private", &[], StatusCode::FORBIDDEN),
        (&stranger, "/public/prices", &[], StatusCode::FORBIDDEN),
        // DENY wins, and the header it reads is the proxy's, not the client's.
        (&partner, "/admin/public/x", &[], StatusCode::FORBIDDEN),
        (
            &local,
            "/admin",
            &[("x-mesh-origin", "remote")],
            StatusCode::OK,
        ),
    ];
    let mut allowed = 0;
    for (client, path, headers, want) in cases {
        let r = client
            .get(proxy.addr(443), HOST, HOST, path, headers)
            .await
            .unwrap();
        assert_eq!(r.status, want, "{path} {headers:?}");
        if want == StatusCode::FORBIDDEN {
            assert_eq!(&r.body[..], b"RBAC: access denied");
        } else {
            allowed += 1;
        }
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        allowed,
        "a denied request reached the backend"
    );
    let metrics = proxy.running.metrics.render();
    assert!(
        // example.com is named by no trust setting: a trust domain seen, with a label of its own.
        metrics.contains(r#"origin="remote",source_trust_domain="example.com",code="403"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn issuer_binding_stops_one_mesh_minting_another_meshs_identities() {
    let pki = Pki::new(&["example-target.com", "example.com", "example.org"]);
    let backend = meshgate_proxy::echo::Echo::start("127.0.0.1:0".parse().unwrap()).unwrap();
    // example.com's CA signs a leaf that claims to be a workload of example-target.com.
    let forged = pki.workload(
        "example.com",
        "spiffe://example-target.com/ns/istio-system/sa/admin",
    );
    let local = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/apps/sa/web",
    );
    let remote = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let get = |proxy: &Proxy, who: &meshgate_pki::Workload| {
        let client = Client::plain(Some(who), &pki.root.cert_pem);
        let addr = proxy.addr(443);
        async move { client.get(addr, HOST, HOST, "/", &[]).await }
    };

    // Plain chain verification accepts it, and it would even pass as local.
    let open = Proxy::start(
        &gateway_yaml(&route_to(HOST, backend.address)),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await;
    let r = get(&open, &forged).await.unwrap();
    assert_eq!(r.echoed("x-mesh-origin").as_deref(), Some("local"));

    // Bound: the target CA by SPKI hash (as `meshgate pki inspect` prints it), the source CA
    // by its certificate file.
    let dir = support::TempDir::new("issuers");
    let source_ca = dir.path().join("example-com-ca.pem");
    std::fs::write(&source_ca, &pki.ca("example.com").cert_pem).unwrap();
    let target_ca = dir.path().join("example-target-ca.pem");
    std::fs::write(&target_ca, &pki.ca("example-target.com").cert_pem).unwrap();
    let target_spki = meshgate_pki::inspect(&target_ca).unwrap()[0]
        .spki_sha256
        .clone();
    let trust = format!(
        "  trust:\n    issuers:\n    - {{spkiSha256: {target_spki}, trustDomains: [example-target.com]}}\n    - {{certificate: {}, trustDomains: [example.com]}}\n",
        source_ca.display()
    );
    let yaml = gateway_yaml(&route_to(HOST, backend.address)).replacen(
        "  listen:",
        &format!("{trust}  listen:"),
        1,
    );
    let bound = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    assert!(
        get(&bound, &forged).await.is_err(),
        "the forged identity got through"
    );
    support::eventually("issuer_not_allowed counted", || {
        bound.rejected("issuer_not_allowed") == 1
    })
    .await;
    for who in [&local, &remote] {
        assert_eq!(get(&bound, who).await.unwrap().status, StatusCode::OK);
    }
    // A mesh CA under the same root that the binding does not name is refused as well.
    let unlisted = pki.workload("example.org", "spiffe://example.org/ns/default/sa/sleep");
    assert!(get(&bound, &unlisted).await.is_err());
    support::eventually("issuer_not_allowed counted twice", || {
        bound.rejected("issuer_not_allowed") == 2
    })
    .await;

    // With binding on, the chain is verified once, by the binding's own path check: its
    // failures keep their reasons.
    let mut spec = meshgate_pki::LeafSpec::spiffe("spiffe://example.com/ns/default/sa/old");
    spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = pki.leaf("example.com", &spec);
    assert!(get(&bound, &expired).await.is_err());
    support::eventually("expired counted", || bound.rejected("expired") == 1).await;
    let other_root =
        meshgate_pki::Authority::root("another root", meshgate_pki::KeyAlgorithm::EcdsaP256)
            .unwrap();
    let other_ca = other_root
        .intermediate(
            &meshgate_config::spiffe::TrustDomain::new("example.com").unwrap(),
            meshgate_pki::KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
    let foreign = other_ca
        .issue(&meshgate_pki::LeafSpec::spiffe(
            "spiffe://example.com/ns/default/sa/sleep",
        ))
        .unwrap();
    let client = Client::plain(Some(&foreign), &pki.root.cert_pem);
    assert!(client
        .get(bound.addr(443), HOST, HOST, "/", &[])
        .await
        .is_err());
    support::eventually("unknown_issuer counted", || {
        bound.rejected("unknown_issuer") == 1
    })
    .await;
}
