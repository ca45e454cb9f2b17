//! `/stats/prometheus` series that come from the configuration: requests by listener and
//! route with their code class, by source trust domain, upstream connections per backend —
//! and what a reload does to them (nothing is reset, labels follow the new configuration).

mod support;

use http::StatusCode;

use support::client::Client;
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

/// Two routes (one named, one not, one forwarding to `backend`), a DENY policy on `/denied`,
/// and with `allow_example_com` an allow-list naming both meshes (without, no trust domain
/// the configuration does not name gets a label).
fn config(backend: std::net::SocketAddr, allow_example_com: bool) -> String {
    let yaml = gateway_yaml(&format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [istio-system/multi-mesh-gateway]
  http:
  - name: tea
    match: [{{uri: {{prefix: /tea}}}}]
    directResponse: {{status: 418, body: {{string: teapot}}}}
  - route:
    - destination: {{host: echo.internal, port: {{number: 80}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-denied, namespace: istio-system}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/denied]}}}}]}}]
"#,
        port = backend.port()
    ));
    if allow_example_com {
        yaml.replacen(
            "  listen:",
            "  trust: {trustDomains: [example-target.com, example.com]}\n  listen:",
            1,
        )
    } else {
        // No trust domain of its own for callers the configuration does not name: they count
        // as `other`.
        yaml.replacen(
            "  listen:",
            "  limits: {trustDomainLabels: 0}\n  listen:",
            1,
        )
    }
}

/// The value of the series whose line starts with `series`, or 0 when it is absent.
fn value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn route_series(resource: &str, route: &str, origin: &str, class: &str) -> String {
    format!(
        r#"meshgate_route_requests_total{{listener="https",resource="{resource}",route="{route}",origin="{origin}",code_class="{class}"}}"#
    )
}

#[tokio::test]
async fn requests_are_counted_by_listener_route_and_trust_domain_across_reloads() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let proxy = Proxy::start(
        &config(backend.address, false),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await;
    let addr = proxy.addr(443);
    let local = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/default/sa/app",
    );
    let local = Client::new(Some(&local), &pki.root.cert_pem, &[b"http/1.1"]);
    let remote = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let remote = Client::new(Some(&remote), &pki.root.cert_pem, &[b"h2"]);
    let get = |client: &Client, path: &'static str, host: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(addr, HOST, host, path, &[])
                .await
                .unwrap()
                .status
        }
    };

    assert_eq!(get(&local, "/tea/pot", HOST).await, StatusCode::IM_A_TEAPOT);
    assert_eq!(get(&local, "/tea", HOST).await, StatusCode::IM_A_TEAPOT);
    assert_eq!(get(&local, "/get", HOST).await, StatusCode::OK);
    assert_eq!(get(&remote, "/get", HOST).await, StatusCode::OK);
    // Denied: counted under the route the request would have taken.
    assert_eq!(get(&remote, "/denied", HOST).await, StatusCode::FORBIDDEN);
    // No route: counted under the listener with an empty route.
    assert_eq!(
        get(&remote, "/", "other.example-target.com").await,
        StatusCode::NOT_FOUND
    );

    let metrics = proxy.running.metrics.render();
    let vs = "VirtualService default/api";
    let expect = [
        (route_series(vs, "tea", "local", "4xx"), 2),
        (route_series(vs, "1", "local", "2xx"), 1),
        (route_series(vs, "1", "remote", "2xx"), 1),
        (route_series(vs, "1", "remote", "4xx"), 1),
        (route_series("", "", "remote", "4xx"), 1),
        (
            r#"meshgate_requests_total{origin="local",source_trust_domain="example-target.com",code="418"}"#.into(),
            2,
        ),
        // example.com is named nowhere in this configuration, and no other gets a label.
        (
            r#"meshgate_requests_total{origin="remote",source_trust_domain="other",code="200"}"#.into(),
            1,
        ),
        ("meshgate_trust_domain_labels_overflow_total".into(), 3),
        (
            r#"meshgate_upstream_connections_total{backend="echo.internal:80",result="success"}"#
                .into(),
            // The second request reused the pooled connection.
            1,
        ),
    ];
    for (series, want) in &expect {
        assert_eq!(value(&metrics, series), *want, "{series}\n{metrics}");
    }
    assert!(
        !metrics.contains(&route_series(vs, "tea", "remote", "4xx")),
        "{metrics}"
    );

    // A reload that names example.com: its callers get their own label from now on, and
    // every series both configurations name carries on from where it was.
    std::fs::write(
        proxy.dir.path().join("config.yaml"),
        config(backend.address, true),
    )
    .unwrap();
    let model = meshgate_config::load(&[proxy.dir.path().join("config.yaml")]).unwrap();
    proxy.running.reload(model).await.unwrap();
    // Each request opens a new connection, so these run on the new configuration.
    assert_eq!(get(&local, "/tea", HOST).await, StatusCode::IM_A_TEAPOT);
    assert_eq!(get(&remote, "/get", HOST).await, StatusCode::OK);

    let metrics = proxy.running.metrics.render();
    let expect = [
        (route_series(vs, "tea", "local", "4xx"), 3),
        (route_series(vs, "1", "remote", "2xx"), 2),
        (
            r#"meshgate_requests_total{origin="local",source_trust_domain="example-target.com",code="418"}"#.into(),
            3,
        ),
        (
            r#"meshgate_requests_total{origin="remote",source_trust_domain="other",code="200"}"#.into(),
            1,
        ),
        (
            r#"meshgate_requests_total{origin="remote",source_trust_domain="example.com",code="200"}"#.into(),
            1,
        ),
        (
            r#"meshgate_upstream_connections_total{backend="echo.internal:80",result="success"}"#
                .into(),
            // The new configuration has pools of its own.
            2,
        ),
    ];
    for (series, want) in &expect {
        assert_eq!(value(&metrics, series), *want, "{series}\n{metrics}");
    }
}

#[tokio::test]
async fn trust_domains_seen_get_labels_up_to_the_cap() {
    let pki = Pki::new(&["example-target.com", "example.com", "third.example"]);
    let backend = echo();
    let yaml = config(backend.address, false).replace(
        "  limits: {trustDomainLabels: 0}\n",
        "  limits: {trustDomainLabels: 1}\n",
    );
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    for (td, times) in [("example.com", 2), ("third.example", 1)] {
        let caller = pki.workload(td, &format!("spiffe://{td}/ns/default/sa/app"));
        let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
        for _ in 0..times {
            let r = client
                .get(proxy.addr(443), HOST, HOST, "/get", &[])
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    let metrics = proxy.running.metrics.render();
    let series = |td: &str| {
        format!(
            r#"meshgate_requests_total{{origin="remote",source_trust_domain="{td}",code="200"}}"#
        )
    };
    // The first trust domain seen gets its label; the second is over the cap of one.
    assert_eq!(value(&metrics, &series("example.com")), 2, "{metrics}");
    assert_eq!(value(&metrics, &series("other")), 1, "{metrics}");
    assert!(!metrics.contains("third.example"), "{metrics}");
    assert_eq!(
        value(&metrics, "meshgate_trust_domain_labels_overflow_total"),
        1
    );
}
