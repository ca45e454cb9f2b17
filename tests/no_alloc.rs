//! The per-request decisions allocate nothing: AuthorizationPolicy evaluation, route matching
//! and counting the request, measured with a counting global allocator in this test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderValue, Method};

use meshgate_config::model::authz::Attributes;
use meshgate_proxy::authorize::{authorize, Decision};
use meshgate_proxy::metrics::Metrics;
use meshgate_proxy::origin::Origin;
use meshgate_proxy::route::{route, MatchInput, RouteRequest};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY-free: delegates to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {name: gw, namespace: istio-system}
spec: {labels: {istio: ingressgateway}}
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: istio, namespace: istio-system}
spec: {meshConfig: {trustDomain: example-target.com, trustDomainAliases: [old.example.com]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*.example-target.com"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*.example-target.com", api.example-target.com]
  gateways: [gw]
  http:
  - name: query
    match: [{queryParams: {v: {exact: x}}}, {uri: {prefix: /V1/}, ignoreUriCase: true, queryParams: {a: {}, v: {regex: "[a-z]"}}}]
    directResponse: {status: 200}
  - match: [{uri: {regex: "/v[0-9]+/.*"}, headers: {x-mesh-origin: {exact: remote}}}]
    directResponse: {status: 200}
  - directResponse: {status: 404}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}], when: [{key: destination.port, values: ["9999"]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: istio-system}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/a/sa/b], ipBlocks: [10.0.0.0/8]}}]
  - from: [{source: {trustDomains: [example.com], namespaces: ["team-*"]}}]
    to: [{operation: {methods: [GET], paths: ["/v1/*"], hosts: ["*.example-target.com"]}}]
    when: [{key: "request.headers[x-mesh-origin]", values: [remote]}, {key: connection.sni, values: ["*"]}]
"#;

#[test]
fn authorize_route_and_count_allocate_nothing() {
    let model = meshgate_config::load_str("no-alloc.yaml", CONFIG).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-mesh-origin", HeaderValue::from_static("remote"));
    let attributes = Attributes {
        principal: Some("example.com/ns/team-a/sa/app"),
        namespace: Some("team-a"),
        trust_domain: Some("example.com"),
        source_ip: "127.0.0.1".parse::<IpAddr>().unwrap(),
        remote_ip: "127.0.0.1".parse::<IpAddr>().unwrap(),
        destination_ip: "127.0.0.1".parse::<IpAddr>().unwrap(),
        authority: "API.example-target.com",
        host: "API.example-target.com",
        port: 8080,
        method: "GET",
        path: "/v1/items",
        headers: &headers,
        sni: Some("outbound_.443_._.api.example-target.com"),
    };
    let method = Method::GET;
    let request = RouteRequest {
        input: MatchInput {
            method: &method,
            path: "/v1/items",
            query: Some("a=1&v=y"),
            full_authority: "API.example-target.com",
            scheme: "https",
            headers: &headers,
        },
        authority: "API.example-target.com",
        port: 8080,
    };
    let listener = &model.listeners[0];
    let metrics = Metrics::new();
    let series = metrics.series();
    // No label for a trust domain the configuration does not name: counted as `other`.
    let trust_domains = series.trust_domains(&model.trust, 0);
    let counts = series.listener(listener);
    let td = trust_domains.series(Some("example.com"));
    // Warm up anything lazily initialised (the regex engine's caches).
    assert_eq!(authorize(&model.policies, &attributes), Decision::Allow);
    // The route that reads the query and ignores the path's case is the one chosen.
    let chosen = route(listener, None, &request).unwrap();
    assert_eq!(chosen.route.name.as_deref(), Some("query"));

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        assert_eq!(authorize(&model.policies, &attributes), Decision::Allow);
        let chosen = route(listener, None, &request).map(|r| r.route.index);
        assert!(chosen.is_some());
        td.request(Some(Origin::Remote), 200);
        counts.request(chosen, Some(Origin::Remote), 200);
        counts.duration(Some(Origin::Remote), std::time::Duration::from_micros(300));
    }
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocated, 0, "{allocated} allocations in 1000 decisions");
    let rendered = metrics.render();
    for series in [
        r#"meshgate_requests_total{origin="remote",source_trust_domain="other",code="200"} 1000"#,
        r#"meshgate_request_duration_seconds_bucket{listener="http",origin="remote",le="0.001"} 1000"#,
        r#"meshgate_request_duration_seconds_count{listener="http",origin="remote"} 1000"#,
    ] {
        assert!(rendered.contains(series), "{series}\n{rendered}");
    }
}
