//! Certificate revocation lists (`MeshGateway.spec.identity.crl`, as Istio's plugged-in CA
//! distributes `ca-crl.pem`): a revoked client leaf (with and without issuer binding) or
//! intermediate fails the handshake with reason `revoked`; a CA the CRLs do not cover (another
//! mesh's) is not refused for it; a new CRL file is taken at reload; an upstream whose
//! certificate is revoked is not originated to; and `expiredCrl: DENY` refuses chains an
//! expired CRL covers.

mod support;

use http::StatusCode;

use meshgate_pki::{Duration, OffsetDateTime};
use support::client::{plain_get, Client};
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, source_yaml, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const SLEEP: &str = "spiffe://example.com/ns/default/sa/sleep";
const REVOKED: &str = "spiffe://example.com/ns/default/sa/stolen";
const LOCAL: &str = "spiffe://example-target.com/ns/default/sa/local";

/// The gateway with `identity.crl` (and `extra` identity settings).
fn yaml(backend: std::net::SocketAddr, identity_extra: &str, trust: &str) -> String {
    gateway_yaml(&route_to(HOST, backend))
        .replacen(
            "rootCerts: certs/root-cert.pem}",
            &format!("rootCerts: certs/root-cert.pem, crl: certs/ca-crl.pem{identity_extra}}}"),
            1,
        )
        .replacen("  listen:", &format!("{trust}  listen:"), 1)
}

async fn get(pki: &Pki, proxy: &Proxy, caller: &meshgate_pki::Workload) -> Result<u16, String> {
    let client = Client::plain(Some(caller), &pki.root.cert_pem);
    client
        .get(proxy.addr(443), HOST, HOST, "/get", &[])
        .await
        .map(|r| r.status.as_u16())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_revoked_client_is_refused_and_a_new_crl_is_taken_at_reload() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = echo();
    let sleep = pki.workload("example.com", SLEEP);
    let stolen = pki.workload("example.com", REVOKED);
    let local = pki.workload("example-target.com", LOCAL);
    let mesh_ca = pki.ca("example.com");
    let tomorrow = OffsetDateTime::now_utc() + Duration::days(1);
    let crl = mesh_ca.crl(&[&stolen.leaf_der], tomorrow).unwrap();
    let trust_ca = pki.ca("example-target.com").cert_pem.clone();
    let issuers = "  trust:\n    issuers:\n    - {certificate: certs/a.pem, trustDomains: [example.com]}\n    - {certificate: certs/b.pem, trustDomains: [example-target.com]}\n";
    // Without issuer binding (rustls checks the chain), and with it (meshgate checks the path).
    for trust in ["", issuers] {
        let proxy = Proxy::start_with_files(
            &yaml(backend.address, "", trust),
            &pki.workload("example-target.com", GATEWAY_ID),
            &[
                ("certs/ca-crl.pem", &crl),
                ("certs/a.pem", &mesh_ca.cert_pem),
                ("certs/b.pem", &trust_ca),
            ],
        )
        .await;
        assert_eq!(get(&pki, &proxy, &sleep).await, Ok(200), "{trust}");
        assert!(get(&pki, &proxy, &stolen).await.is_err(), "{trust}");
        support::eventually("counted as revoked", || proxy.rejected("revoked") == 1).await;
        // The CRL is the example.com CA's: example-target.com's leaves are not covered by it.
        assert_eq!(get(&pki, &proxy, &local).await, Ok(200), "{trust}");

        // A new CRL that revokes `sleep` too, written in place: a reload (SIGHUP, or the poll
        // that sees the file change) takes it.
        let both = mesh_ca
            .crl(&[&stolen.leaf_der, &sleep.leaf_der], tomorrow)
            .unwrap();
        let file = proxy.dir.path().join("certs/ca-crl.pem");
        std::fs::write(&file, both).unwrap();
        meshgate_proxy::reload::reload(&proxy.running, &[proxy.config()]).await;
        assert!(get(&pki, &proxy, &sleep).await.is_err(), "{trust}");
        // A file that is no CRL is refused at reload, and the last one keeps serving.
        std::fs::write(&file, "not a CRL").unwrap();
        meshgate_proxy::reload::reload(&proxy.running, &[proxy.config()]).await;
        let metrics = proxy.running.metrics.render();
        assert!(
            metrics.contains(r#"meshgate_config_reloads_total{result="failure"} 1"#),
            "{metrics}"
        );
        assert!(get(&pki, &proxy, &sleep).await.is_err(), "{trust}");
        assert_eq!(get(&pki, &proxy, &local).await, Ok(200), "{trust}");
    }
}

#[tokio::test]
async fn a_revoked_intermediate_refuses_every_leaf_it_issued() {
    use rustls::pki_types::pem::PemObject;
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = echo();
    let mesh_ca = rustls::pki_types::CertificateDer::from_pem_slice(
        pki.ca("example.com").cert_pem.as_bytes(),
    )
    .unwrap();
    // The root's list, revoking example.com's CA.
    let tomorrow = OffsetDateTime::now_utc() + Duration::days(1);
    let crl = pki.root.crl(&[mesh_ca.as_ref()], tomorrow).unwrap();
    let proxy = Proxy::start_with_files(
        &yaml(backend.address, "", ""),
        &pki.workload("example-target.com", GATEWAY_ID),
        &[("certs/ca-crl.pem", &crl)],
    )
    .await;
    assert!(get(&pki, &proxy, &pki.workload("example.com", SLEEP))
        .await
        .is_err());
    support::eventually("counted as revoked", || proxy.rejected("revoked") == 1).await;
    let local = pki.workload("example-target.com", LOCAL);
    assert_eq!(get(&pki, &proxy, &local).await, Ok(200));
}

#[tokio::test]
async fn an_expired_crl_revokes_by_default_and_fails_every_chain_it_covers_when_denied() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = echo();
    let sleep = pki.workload("example.com", SLEEP);
    let stolen = pki.workload("example.com", REVOKED);
    let past = OffsetDateTime::now_utc() - Duration::minutes(10);
    let crl = pki
        .ca("example.com")
        .crl(&[&stolen.leaf_der], past)
        .unwrap();
    for (setting, sleep_served) in [("", true), (", expiredCrl: DENY", false)] {
        let proxy = Proxy::start_with_files(
            &yaml(backend.address, setting, ""),
            &pki.workload("example-target.com", GATEWAY_ID),
            &[("certs/ca-crl.pem", &crl)],
        )
        .await;
        assert!(get(&pki, &proxy, &stolen).await.is_err(), "{setting}");
        let served = get(&pki, &proxy, &sleep).await;
        assert_eq!(served.is_ok(), sleep_served, "{setting}: {served:?}");
        if !sleep_served {
            support::eventually("counted as crl_expired", || {
                proxy.rejected("crl_expired") >= 1
            })
            .await;
        }
    }
}

#[tokio::test]
async fn an_upstream_whose_certificate_is_revoked_is_not_originated_to() {
    let pki = Pki::new(&["example.com", "example-target.com"]);
    let backend = echo();
    let gateway = pki.workload("example-target.com", GATEWAY_ID);
    let target = Proxy::start(&gateway_yaml(&route_to(HOST, backend.address)), &gateway).await;
    let tomorrow = OffsetDateTime::now_utc() + Duration::days(1);
    let target_ca = pki.ca("example-target.com");
    for (revoked, status) in [
        (false, StatusCode::OK),
        (true, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let list: Vec<&[u8]> = if revoked {
            vec![&gateway.leaf_der]
        } else {
            Vec::new()
        };
        let crl = target_ca.crl(&list, tomorrow).unwrap();
        let yaml = source_yaml(target.addr(443), "{tls: {mode: ISTIO_MUTUAL}}").replacen(
            "rootCerts: certs/root-cert.pem}",
            "rootCerts: certs/root-cert.pem, crl: certs/ca-crl.pem}",
            1,
        );
        let source = Proxy::start_with_files(
            &yaml,
            &pki.workload("example.com", SLEEP),
            &[("certs/ca-crl.pem", &crl)],
        )
        .await;
        let r = plain_get(source.outbound(), HOST, "/get", &[])
            .await
            .unwrap();
        assert_eq!(r.status, status, "revoked: {revoked}");
    }
}
