//! AuthorizationPolicy evaluation with N rules, the request matching only the last one (or
//! none): `authorize/allow-N` walks N ALLOW rules to allow; `authorize/deny-N` walks N DENY
//! rules and denies on the last. The `-template` variants write each rule's path as an Istio
//! path template (`/api/{*}/items/{**}`) instead of a prefix (`/api/*`).

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};

use meshgate_config::model::authz::Attributes;
use meshgate_proxy::authorize::{authorize, Decision};

fn config(action: &str, n: usize, path: &str) -> String {
    let mut yaml = String::from(
        "apiVersion: meshgate.dev/v1alpha1\nkind: MeshGateway\nmetadata: {name: gw, namespace: istio-system}\nspec: {labels: {istio: ingressgateway}}\n---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: istio, namespace: istio-system}\nspec: {meshConfig: {trustDomain: example-target.com}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec:\n",
    );
    let _ = writeln!(yaml, "  action: {action}\n  rules:");
    for i in 0..n {
        // Every rule names a principal and a path; only the last one fits the request.
        let ns = if i == n - 1 {
            "team".to_string()
        } else {
            format!("team-{i}")
        };
        let _ = writeln!(
            yaml,
            "  - from: [{{source: {{principals: [\"example.com/ns/{ns}/*\"]}}}}]\n    to: [{{operation: {{methods: [GET], paths: [\"{path}\"]}}}}]\n    when: [{{key: \"request.headers[x-mesh-origin]\", values: [remote]}}]"
        );
    }
    yaml
}

fn bench(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("x-mesh-origin", HeaderValue::from_static("remote"));
    let attributes = Attributes {
        principal: Some("example.com/ns/team/sa/app"),
        namespace: Some("team"),
        trust_domain: Some("example.com"),
        source_ip: "127.0.0.1".parse::<IpAddr>().unwrap(),
        remote_ip: "127.0.0.1".parse::<IpAddr>().unwrap(),
        destination_ip: "127.0.0.1".parse::<IpAddr>().unwrap(),
        authority: "api.example-target.com",
        host: "api.example-target.com",
        port: 443,
        method: "GET",
        path: "/api/v1/items/42/detail",
        headers: &headers,
        sni: None,
    };
    let mut group = c.benchmark_group("authorize");
    let cases = [
        ("ALLOW", "allow", true, "/api/*"),
        ("DENY", "deny", false, "/api/*"),
        ("ALLOW", "allow-template", true, "/api/{*}/items/{**}"),
        ("DENY", "deny-template", false, "/api/{*}/items/{**}"),
    ];
    for (action, kind, want, path) in cases {
        for n in [10usize, 100, 1000] {
            let model = meshgate_config::load_str("bench.yaml", &config(action, n, path)).unwrap();
            assert_eq!(
                authorize(&model.policies, &attributes) == Decision::Allow,
                want
            );
            group.bench_with_input(BenchmarkId::new(kind, n), &n, |b, _| {
                b.iter(|| authorize(black_box(&model.policies), black_box(&attributes)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
