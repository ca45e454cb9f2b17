//! Trust bundles per trust domain: a peer is verified against the roots of the trust domain
//! its SPIFFE ID names when that trust domain has a bundle of its own (`spec.trust.bundles`,
//! PEM or SPIFFE bundle JSON; `meshConfig.caCertificates` with `trustDomains`), and against
//! `rootCerts` otherwise. Two meshes with roots of their own, each CA also minting the other
//! mesh's trust domain, show that no trust domain's CA can vouch for another's identities.

mod support;

use http::StatusCode;

use support::client::Client;
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, source_yaml, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const SLEEP_ID: &str = "spiffe://example.com/ns/default/sa/sleep";
const TARGET_CLIENT_ID: &str = "spiffe://example-target.com/ns/default/sa/client";

/// The target mesh (root B) and the source mesh (root A); each root has an intermediate for
/// both trust domains, so each can mint the other's identities.
fn two_roots() -> (Pki, Pki) {
    let target = Pki::named("target mesh root", &["example-target.com", "example.com"]);
    let source = Pki::named("source mesh root", &["example.com", "example-target.com"]);
    (target, source)
}

/// A SPIFFE bundle document (JWK Set) with the certificates of `pem` as `x509-svid` keys.
fn spiffe_bundle(pem: &str, sequence: u64) -> String {
    let keys: Vec<serde_json::Value> = pem
        .split("-----END CERTIFICATE-----")
        .filter_map(|block| block.split("-----BEGIN CERTIFICATE-----").nth(1))
        .map(|b64| {
            let b64: String = b64.split_whitespace().collect();
            serde_json::json!({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": [b64]})
        })
        .collect();
    serde_json::json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": 300,
    })
    .to_string()
}

/// A gateway of the target mesh (root B as `rootCerts`) with `trust` under `spec`.
fn gateway(trust: &str, backend: std::net::SocketAddr) -> String {
    gateway_yaml(&route_to(HOST, backend)).replacen(
        "  listen:",
        &format!("  trust: {trust}\n  listen:"),
        1,
    )
}

async fn call(
    pki_root_pem: &str,
    caller: &meshgate_pki::Workload,
    proxy: &Proxy,
) -> Option<StatusCode> {
    let client = Client::new(Some(caller), pki_root_pem, &[b"http/1.1"]);
    client
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .ok()
        .map(|r| r.status)
}

/// At a gateway of the target mesh that gives example.com the source mesh's root: example.com
/// from that root is accepted, though `rootCerts` does not hold it; the gateway's own trust
/// domain still goes by `rootCerts`; example.com minted under `rootCerts` is refused, although
/// it chains there. Returns the accepted and the refused example.com workloads.
async fn assert_isolated(
    target: &Pki,
    source: &Pki,
    proxy: &Proxy,
) -> (meshgate_pki::Workload, meshgate_pki::Workload) {
    let server_root = &target.root.cert_pem;
    let sleep = source.workload("example.com", SLEEP_ID);
    assert_eq!(call(server_root, &sleep, proxy).await, Some(StatusCode::OK));
    let local = target.workload("example-target.com", TARGET_CLIENT_ID);
    assert_eq!(call(server_root, &local, proxy).await, Some(StatusCode::OK));
    let forged = target.workload("example.com", SLEEP_ID);
    assert_eq!(call(server_root, &forged, proxy).await, None);
    (sleep, forged)
}

#[tokio::test]
async fn a_trust_domain_with_its_own_bundle_is_verified_against_it_alone() {
    let (target, source) = two_roots();
    let backend = echo();
    let yaml = gateway(
        "{bundles: [{trustDomain: example.com, file: certs/example-com.json}]}",
        backend.address,
    );
    let bundle = spiffe_bundle(&source.root.cert_pem, 1);
    let proxy = Proxy::start_with_files(
        &yaml,
        &target.workload("example-target.com", GATEWAY_ID),
        &[("certs/example-com.json", &bundle)],
    )
    .await;
    let server_root = &target.root.cert_pem;
    let (sleep, forged) = assert_isolated(&target, &source, &proxy).await;
    // And the other way: example-target.com minted by the source mesh's root.
    let forged_local = source.workload("example-target.com", TARGET_CLIENT_ID);
    assert_eq!(call(server_root, &forged_local, &proxy).await, None);

    // `meshgate pki inspect`'s verdict says which bundle the chain was tried against.
    let model = meshgate_config::load(&[proxy.config()]).unwrap();
    let material = meshgate_proxy::material::Material::read(&model).unwrap();
    let chain = |w: &meshgate_pki::Workload| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(w.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let verdict = meshgate_proxy::tls::inspect::would_accept(&model, &material, &chain(&forged))
        .unwrap()
        .unwrap_err();
    assert_eq!(verdict.reason(), "unknown_issuer", "{verdict}");
    assert!(
        verdict
            .to_string()
            .contains("the bundle of trust domain `example.com`"),
        "{verdict}"
    );
    let verdict =
        meshgate_proxy::tls::inspect::would_accept(&model, &material, &chain(&forged_local))
            .unwrap()
            .unwrap_err();
    assert!(
        !verdict.to_string().contains("trust domain `"),
        "tried against rootCerts: {verdict}"
    );
    assert!(
        meshgate_proxy::tls::inspect::would_accept(&model, &material, &chain(&sleep))
            .unwrap()
            .is_ok()
    );
    support::eventually("two refusals counted", || {
        proxy.rejected("unknown_issuer") == 2
    })
    .await;
}

#[tokio::test]
async fn a_bundle_file_change_is_reloaded_and_a_broken_one_is_refused_with_the_old_kept() {
    let (target, source) = two_roots();
    let backend = echo();
    let yaml = gateway(
        "{bundles: [{trustDomain: example.com, file: certs/example-com.pem}]}",
        backend.address,
    );
    // A PEM bundle this time.
    let proxy = Proxy::start_with_files(
        &yaml,
        &target.workload("example-target.com", GATEWAY_ID),
        &[("certs/example-com.pem", &source.root.cert_pem)],
    )
    .await;
    let server_root = &target.root.cert_pem;
    let sleep = source.workload("example.com", SLEEP_ID);
    assert_eq!(
        call(server_root, &sleep, &proxy).await,
        Some(StatusCode::OK)
    );

    // The source mesh rotates to a new root: its bundle becomes a SPIFFE bundle with the new
    // root only. The old one's workloads are refused after the reload; the new one's accepted.
    let rotated = Pki::named("source mesh root 2", &["example.com"]);
    let file = proxy.dir.path().join("certs/example-com.pem");
    std::fs::write(&file, spiffe_bundle(&rotated.root.cert_pem, 2)).unwrap();
    meshgate_proxy::reload::reload(&proxy.running, &[proxy.config()]).await;
    assert_eq!(call(server_root, &sleep, &proxy).await, None);
    let renewed = rotated.workload("example.com", SLEEP_ID);
    assert_eq!(
        call(server_root, &renewed, &proxy).await,
        Some(StatusCode::OK)
    );

    // A bundle that holds no X.509 authority is refused, naming the file; the old one serves.
    std::fs::write(&file, r#"{"keys": [{"use": "jwt-svid", "kty": "EC"}]}"#).unwrap();
    let model = meshgate_config::load(&[proxy.config()]).unwrap();
    let e = proxy.running.reload(model).await.unwrap_err().to_string();
    assert!(e.contains("example-com.pem"), "{e}");
    assert!(e.contains("x509-svid"), "{e}");
    assert_eq!(
        call(server_root, &renewed, &proxy).await,
        Some(StatusCode::OK)
    );
}

#[tokio::test]
async fn mesh_config_ca_certificates_with_trust_domains_are_those_trust_domains_roots() {
    let (target, source) = two_roots();
    let backend = echo();
    // Istio's field: the source mesh's root for example.com. Issuer binding comes with it, so
    // the target mesh's own CA is bound to its trust domain too.
    let indented: String = source
        .root
        .cert_pem
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    let yaml = format!(
        "{}\n---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  meshConfig:\n    trustDomain: example-target.com\n    caCertificates:\n    - trustDomains: [example.com]\n      pem: |\n{indented}",
        gateway(
            "{issuers: [{certificate: certs/target-ca.pem, trustDomains: [example-target.com]}]}",
            backend.address,
        )
        .replace(
            "---\napiVersion: operator.kyma-project.io/v1alpha2\nkind: Istio\nmetadata: {name: default, namespace: kyma-system}\nspec:\n  config: {trustDomain: example-target.com}\n",
            "",
        )
    );
    let proxy = Proxy::start_with_files(
        &yaml,
        &target.workload("example-target.com", GATEWAY_ID),
        &[(
            "certs/target-ca.pem",
            &target.ca("example-target.com").cert_pem,
        )],
    )
    .await;
    assert_isolated(&target, &source, &proxy).await;
    support::eventually("the refusal counted", || {
        proxy.rejected("unknown_issuer") == 1
    })
    .await;
}

#[tokio::test]
async fn originating_istio_mutual_verifies_the_remote_mesh_against_its_bundle_and_says_why_not() {
    let (target, source) = two_roots();
    let backend = echo();
    let gateway_proxy = Proxy::start_with_files(
        &gateway(
            "{bundles: [{trustDomain: example.com, file: certs/example-com.json}]}",
            backend.address,
        ),
        &target.workload("example-target.com", GATEWAY_ID),
        &[(
            "certs/example-com.json",
            &spiffe_bundle(&source.root.cert_pem, 1),
        )],
    )
    .await;
    let target_addr = gateway_proxy.addr(443);
    let sleep = source.workload(
        "example.com",
        "spiffe://example.com/ns/istio-system/sa/egress",
    );

    // The source proxy's `rootCerts` is its own root; the target mesh's root comes as the
    // bundle of example-target.com.
    let source_config = source_yaml(target_addr, "{tls: {mode: ISTIO_MUTUAL}}").replacen(
        "  outbound:",
        "  trust: {bundles: [{trustDomain: example-target.com, file: certs/target.pem}]}\n  outbound:",
        1,
    );
    let sidecar = Proxy::start_with_files(
        &source_config,
        &sleep,
        &[("certs/target.pem", &target.root.cert_pem)],
    )
    .await;
    let r = support::client::plain_get(sidecar.outbound(), HOST, "/get", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    // Without the bundle the target mesh's server does not chain to `rootCerts`: refused, and
    // the access log says why, with what the server presented (Envoy's
    // `%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    let logged = |yaml: String| {
        yaml.replacen(
            "  outbound:",
            "  accessLog: {path: access.log}\n  outbound:",
            1,
        )
    };
    let no_bundle = Proxy::start(
        &logged(source_yaml(target_addr, "{tls: {mode: ISTIO_MUTUAL}}")),
        &sleep,
    )
    .await;
    let r = support::client::plain_get(no_bundle.outbound(), HOST, "/get", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let line = &support::json_lines(&no_bundle.dir.path().join("access.log"), 1).await[0];
    let reason = line["upstream_transport_failure_reason"].as_str().unwrap();
    assert!(reason.starts_with("unknown_issuer: "), "{reason}");
    assert!(
        reason.contains("target mesh root"),
        "the issuer sent: {reason}"
    );
    assert!(
        reason.contains(&format!("the server presented {GATEWAY_ID}")),
        "{reason}"
    );

    // The chain is fine but the identity is not the one asked for.
    let other = "spiffe://example-target.com/ns/istio-system/sa/other";
    let wrong_name = Proxy::start_with_files(
        &logged(source_config.replace(
            "{tls: {mode: ISTIO_MUTUAL}}",
            &format!("{{tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{other}]}}}}"),
        )),
        &sleep,
        &[("certs/target.pem", &target.root.cert_pem)],
    )
    .await;
    let r = support::client::plain_get(wrong_name.outbound(), HOST, "/get", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let line = &support::json_lines(&wrong_name.dir.path().join("access.log"), 1).await[0];
    assert_eq!(
        line["upstream_transport_failure_reason"],
        format!(
            "identity_not_allowed: server identity not allowed: the server presented \
             {GATEWAY_ID}, expected one of {other} (subjectAltNames)"
        )
    );
    assert_eq!(line["response_flags"], "UF,URX");
}

/// A SPIFFE bundle endpoint on 127.0.0.1: HTTPS with `identity`'s certificate, answering every
/// request with the current document (or closing, once stopped).
struct BundleServer {
    port: u16,
    document: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl BundleServer {
    async fn start(identity: &meshgate_pki::Workload, document: String) -> Self {
        use rustls::pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let chain =
            rustls::pki_types::CertificateDer::pem_slice_iter(identity.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let document = std::sync::Arc::new(std::sync::Mutex::new(Some(document)));
        let serving = document.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, serving) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = serving.lock().unwrap().clone();
                    let Some(body) = body else { return };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { port, document }
    }

    fn serve(&self, document: Option<String>) {
        *self.document.lock().unwrap() = document;
    }
}

/// A web server's leaf for `localhost`, issued under `pki`'s root.
fn localhost(pki: &Pki) -> meshgate_pki::Workload {
    let mut spec = meshgate_pki::LeafSpec::spiffe("spiffe://web.example/unused");
    spec.uris.clear();
    spec.dns = vec!["localhost".into()];
    pki.leaf("web.example", &spec)
}

fn fetches(proxy: &Proxy, result: &str) -> bool {
    let line = format!("meshgate_bundle_fetches_total{{result=\"{result}\"}}");
    proxy
        .running
        .metrics
        .render()
        .lines()
        .any(|l| l.starts_with(&line) && l.ends_with(" 1"))
}

#[tokio::test]
async fn a_bundle_endpoint_over_https_web_is_fetched_refreshed_and_kept_when_it_fails() {
    let (target, source) = two_roots();
    let web = Pki::named("web root", &["web.example"]);
    let server =
        BundleServer::start(&localhost(&web), spiffe_bundle(&source.root.cert_pem, 1)).await;
    let backend = echo();
    let yaml = gateway(
        &format!(
            "{{bundles: [{{trustDomain: example.com, endpoint: {{url: \"https://localhost:{}/bundle\", profile: https_web, caCertificates: certs/web-root.pem}}}}]}}\n  accessLog: {{path: access.log}}",
            server.port
        ),
        backend.address,
    );
    let proxy = Proxy::start_with_files(
        &yaml,
        &target.workload("example-target.com", GATEWAY_ID),
        &[("certs/web-root.pem", &web.root.cert_pem)],
    )
    .await;
    let server_root = &target.root.cert_pem;
    let sleep = source.workload("example.com", SLEEP_ID);

    // Before the first fetch the trust domain has no roots: refused, and said so.
    assert_eq!(call(server_root, &sleep, &proxy).await, None);
    let line = &support::json_lines(&proxy.dir.path().join("access.log"), 1).await[0];
    assert_eq!(line["reason"], "unknown_issuer");
    let detail = line["detail"].as_str().unwrap();
    assert!(
        detail.contains("bundle of trust domain `example.com` has no roots yet"),
        "{detail}"
    );

    let fetched = proxy.running.refresh_bundles(true).await;
    assert!(
        fetched.changed && fetched.failures.is_empty(),
        "{fetched:?}"
    );
    assert_eq!(
        call(server_root, &sleep, &proxy).await,
        Some(StatusCode::OK)
    );
    // The gateway's own trust domain is still verified against rootCerts.
    let local = target.workload("example-target.com", TARGET_CLIENT_ID);
    assert_eq!(
        call(server_root, &local, &proxy).await,
        Some(StatusCode::OK)
    );

    // The endpoint rotates to a new root: the next fetch puts it in place of the old one.
    let rotated = Pki::named("source mesh root 2", &["example.com"]);
    server.serve(Some(spiffe_bundle(&rotated.root.cert_pem, 2)));
    let fetched = proxy.running.refresh_bundles(true).await;
    assert!(fetched.changed, "{fetched:?}");
    assert_eq!(call(server_root, &sleep, &proxy).await, None);
    let renewed = rotated.workload("example.com", SLEEP_ID);
    assert_eq!(
        call(server_root, &renewed, &proxy).await,
        Some(StatusCode::OK)
    );
    // The same bundle again changes nothing.
    assert!(!proxy.running.refresh_bundles(true).await.changed);

    // The endpoint stops answering: the fetch fails, the last good roots stay.
    server.serve(None);
    let fetched = proxy.running.refresh_bundles(true).await;
    assert_eq!(fetched.failures.len(), 1, "{fetched:?}");
    assert_eq!(
        call(server_root, &renewed, &proxy).await,
        Some(StatusCode::OK)
    );
    assert!(fetches(&proxy, "unchanged") && fetches(&proxy, "failed"));

    // A reload keeps what was fetched.
    meshgate_proxy::reload::reload(&proxy.running, &[proxy.config()]).await;
    assert_eq!(
        call(server_root, &renewed, &proxy).await,
        Some(StatusCode::OK)
    );
}

#[tokio::test]
async fn a_bundle_endpoint_over_https_spiffe_is_authenticated_by_its_spiffe_id() {
    let (target, source) = two_roots();
    const ENDPOINT_ID: &str = "spiffe://example.com/spire/server";
    let rotated = Pki::named("source mesh root 2", &["example.com"]);
    // The endpoint serves both roots while the source mesh rotates.
    let both = format!("{}{}", source.root.cert_pem, rotated.root.cert_pem);
    let server = BundleServer::start(
        &source.workload("example.com", ENDPOINT_ID),
        spiffe_bundle(&both, 5),
    )
    .await;
    let backend = echo();
    let config = |id: &str| {
        gateway(
            &format!(
                "{{bundles: [{{trustDomain: example.com, file: certs/example-com.json}}, {{trustDomain: example.com, endpoint: {{url: \"https://127.0.0.1:{}/\", profile: https_spiffe, spiffeId: \"{id}\"}}}}]}}",
                server.port
            ),
            backend.address,
        )
    };
    // Bootstrapped from the file, as SPIFFE federation starts: the endpoint is authenticated
    // with the trust domain's bundle as the proxy holds it.
    let files = [(
        "certs/example-com.json",
        spiffe_bundle(&source.root.cert_pem, 1),
    )];
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let proxy = Proxy::start_with_files(
        &config(ENDPOINT_ID),
        &target.workload("example-target.com", GATEWAY_ID),
        &files,
    )
    .await;
    let server_root = &target.root.cert_pem;
    let renewed = rotated.workload("example.com", SLEEP_ID);
    assert_eq!(call(server_root, &renewed, &proxy).await, None);
    let fetched = proxy.running.refresh_bundles(true).await;
    assert!(
        fetched.changed && fetched.failures.is_empty(),
        "{fetched:?}"
    );
    assert_eq!(
        call(server_root, &renewed, &proxy).await,
        Some(StatusCode::OK)
    );
    let sleep = source.workload("example.com", SLEEP_ID);
    assert_eq!(
        call(server_root, &sleep, &proxy).await,
        Some(StatusCode::OK)
    );

    // An endpoint that is not the SPIFFE ID configured is not believed.
    let other = Proxy::start_with_files(
        &config("spiffe://example.com/spire/other"),
        &target.workload("example-target.com", GATEWAY_ID),
        &files,
    )
    .await;
    let fetched = other.running.refresh_bundles(true).await;
    assert!(!fetched.changed);
    let failure = &fetched.failures[0];
    assert!(failure.contains("identity_not_allowed"), "{failure}");
    assert!(
        failure.contains(&format!("the server presented {ENDPOINT_ID}")),
        "{failure}"
    );
    assert_eq!(call(server_root, &renewed, &other).await, None);
}

#[test]
fn istio_spiffe_bundle_url_is_a_bundle_endpoint_over_web_pki() {
    let yaml = format!(
        "{}\n---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  meshConfig:\n    caCertificates:\n    - spiffeBundleUrl: spire.example.com:8443\n      trustDomains: [example.com, example.org]\n",
        gateway_yaml("")
    );
    let model = meshgate_config::load_str("mesh.yaml", &yaml).unwrap();
    let endpoints: Vec<String> = model
        .trust
        .bundles
        .iter()
        .map(|b| match &b.source {
            meshgate_config::model::BundleSource::Endpoint(e) => format!(
                "{} {} {:?} {:?}",
                b.trust_domain, e.url, e.profile, e.refresh
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            "example.com https://spire.example.com:8443 HttpsWeb { ca_certificates: None } 300s",
            "example.org https://spire.example.com:8443 HttpsWeb { ca_certificates: None } 300s",
        ]
    );
}
