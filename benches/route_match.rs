//! Route selection over N VirtualServices, the request for the last one (worst case).
//! `exact-N`: N exact hosts; `suffix-N`: N `*.team-i.example.com` hosts.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use std::fmt::Write as _;
use std::hint::black_box;

use meshgate_proxy::route::{route, MatchInput, RouteRequest};

fn config(n: usize, suffix: bool) -> String {
    let mut yaml = String::from(
        r#"apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {name: gw, namespace: istio-system}
spec: {labels: {istio: ingressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"#,
    );
    for i in 0..n {
        let host = if suffix {
            format!("*.team-{i}.example.com")
        } else {
            format!("svc-{i}.example.com")
        };
        let _ = write!(
            yaml,
            r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs-{i}, namespace: default}}
spec:
  hosts: ["{host}"]
  gateways: [istio-system/gw]
  http:
  - match: [{{headers: {{x-mesh-origin: {{exact: remote}}}}, uri: {{prefix: /remote}}}}]
    directResponse: {{status: 200}}
  - directResponse: {{status: 200}}
"#
        );
    }
    yaml
}

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    let mut headers = HeaderMap::new();
    headers.insert("x-mesh-origin", HeaderValue::from_static("remote"));
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    for (kind, suffix) in [("exact", false), ("suffix", true)] {
        for n in [10usize, 100, 1000] {
            let model = meshgate_config::load_str("bench.yaml", &config(n, suffix)).unwrap();
            let listener = &model.listeners[0];
            let authority = if suffix {
                format!("api.team-{}.example.com", n - 1)
            } else {
                format!("svc-{}.example.com", n - 1)
            };
            let method = Method::GET;
            group.bench_with_input(BenchmarkId::new(kind, n), &authority, |b, authority| {
                b.iter(|| {
                    let req = RouteRequest {
                        input: MatchInput {
                            method: &method,
                            path: black_box("/remote/items"),
                            query: None,
                            full_authority: black_box(authority),
                            scheme: "https",
                            headers: &headers,
                        },
                        authority: black_box(authority),
                        port: 80,
                    };
                    route(listener, None, &req).unwrap();
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, route_match);
criterion_main!(benches);
