//! Client addresses as Istio's gateways handle them (Envoy's `use_remote_address` and
//! `xff_num_trusted_hops` = `numTrustedProxies`), against a running gateway with real mTLS
//! callers: spoofed and chained `x-forwarded-for`, `x-envoy-external-address` never taken from
//! the client, `remoteIpBlocks` deciding on the trusted address, and the access log.

mod support;

use http::StatusCode;

use meshgate_proxy::echo::Echo;
use support::client::{Client, Reply};
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, Proxy};

const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const CALLER: &str = "spiffe://example.com/ns/default/sa/sleep";
const HOST: &str = "httpbin.example-target.com";

/// Requests from 203.0.113.0/24, as the gateway trusts the client address, are denied.
const DENY_BLOCK: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-block, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]
"#;

struct Setup {
    pki: Pki,
    proxy: Proxy,
    _echo: Echo,
}

impl Setup {
    /// The gateway with `trusted` proxies in front (from the install file named by `source`).
    async fn new(install: &str) -> Self {
        let pki = Pki::new(&["example-target.com", "example.com"]);
        let backend = echo();
        let yaml = gateway_yaml(&format!(
            "{}{DENY_BLOCK}{install}",
            route_to(HOST, backend.address)
        ))
        .replace("  listen:", "  accessLog: {path: access.log}\n  listen:");
        let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
        Self {
            pki,
            proxy,
            _echo: backend,
        }
    }

    async fn get(&self, headers: &[(&str, &str)]) -> Reply {
        let caller = self.pki.workload("example.com", CALLER);
        Client::plain(Some(&caller), &self.pki.root.cert_pem)
            .get(self.proxy.addr(443), HOST, HOST, "/", headers)
            .await
            .unwrap()
    }
}

const TWO_PROXIES_KYMA: &str = r#"
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    defaultConfig:
      gatewayTopology: {numTrustedProxies: 2}
"#;

#[tokio::test]
async fn two_trusted_proxies_take_the_second_address_from_the_right() {
    let s = Setup::new(TWO_PROXIES_KYMA).await;
    // (x-forwarded-for sent, status, x-envoy-external-address, x-forwarded-for received)
    let cases = [
        // The client behind two proxies is 198.51.100.7; the spoofed left part is ignored.
        (
            "203.0.113.66, 198.51.100.7, 10.0.0.1",
            200,
            "198.51.100.7",
            "203.0.113.66, 198.51.100.7, 10.0.0.1, 127.0.0.1",
        ),
        // The client is in the denied block.
        ("198.51.100.7, 203.0.113.9, 10.0.0.1", 403, "", ""),
        // Fewer entries than trusted proxies: the peer is the client.
        ("203.0.113.9", 200, "127.0.0.1", "203.0.113.9, 127.0.0.1"),
        // Not an address where the client should be: the peer.
        (
            "evil, 10.0.0.1",
            200,
            "127.0.0.1",
            "evil, 10.0.0.1, 127.0.0.1",
        ),
    ];
    for (xff, status, external, forwarded) in cases {
        let r = s
            .get(&[
                ("x-forwarded-for", xff),
                ("x-envoy-external-address", "203.0.113.1"),
            ])
            .await;
        assert_eq!(r.status.as_u16(), status, "{xff}");
        if status == 200 {
            assert_eq!(
                r.echoed("x-envoy-external-address").as_deref(),
                Some(external),
                "{xff}"
            );
            assert_eq!(
                r.echoed("x-forwarded-for").as_deref(),
                Some(forwarded),
                "{xff}"
            );
        }
    }
    let log = support::json_lines(&s.proxy.dir.path().join("access.log"), cases.len()).await;
    assert_eq!(log[0]["client_address"], "198.51.100.7");
    assert_eq!(log[1]["client_address"], "203.0.113.9");
    assert_eq!(log[1]["status"], 403);
    assert_eq!(
        log[0]["peer"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn without_trusted_proxies_a_spoofed_address_changes_nothing() {
    let s = Setup::new("").await;
    let r = s
        .get(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-envoy-external-address", "203.0.113.9"),
        ])
        .await;
    assert_eq!(r.status, StatusCode::OK, "the peer decides, not the header");
    assert_eq!(
        r.echoed("x-envoy-external-address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.echoed("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
}

#[tokio::test]
async fn kyma_num_trusted_proxies_is_honoured() {
    let kyma = gateway_yaml("").replace(
        "  config: {trustDomain: example-target.com}",
        "  config: {trustDomain: example-target.com, numTrustedProxies: 1}",
    );
    let model = meshgate_config::load_str("k.yaml", &kyma).unwrap();
    assert_eq!(model.proxy.num_trusted_proxies, 1);
}
