//! Tagging one request: strip client copies, set origin, trust domain, principal, XFCC.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::hint::black_box;

use meshgate_config::model::{ForwardClientCert, Tagging};
use meshgate_config::spiffe::SpiffeId;
use meshgate_proxy::identity::PeerIdentity;
use meshgate_proxy::origin::Origin;
use meshgate_proxy::tag::{tag, ConnectionTags};

fn bench(c: &mut Criterion) {
    let tagging = Tagging {
        origin: HeaderName::from_static("x-mesh-origin"),
        trust_domain: HeaderName::from_static("x-source-trust-domain"),
        principal: HeaderName::from_static("x-source-principal"),
        forward_client_cert: ForwardClientCert::SanitizeSet,
        client_cert: false,
        client_chain: false,
        proxy_protocol_tlv: None,
    };
    let peer = PeerIdentity {
        spiffe_id: SpiffeId::parse("spiffe://example.com/ns/default/sa/sleep").unwrap(),
        leaf_sha256: "ab".repeat(32),
        subject: String::new(),
        dns: Vec::new(),
    };
    let own = SpiffeId::parse("spiffe://example-target.com/ns/istio-system/sa/gw").unwrap();
    let tags = ConnectionTags::new(
        Some((&peer, Origin::Remote)),
        Some(&own),
        &tagging,
        "127.0.0.1:4000".parse().unwrap(),
        None,
    );
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "httpbin.example-target.com"),
        ("user-agent", "curl/8"),
        ("accept", "*/*"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let mut spoofed = base.clone();
    spoofed.insert("x-mesh-origin", HeaderValue::from_static("local"));
    spoofed.insert("x-forwarded-client-cert", HeaderValue::from_static("By=x"));
    let mut group = c.benchmark_group("tag");
    for (name, headers) in [("clean_request", &base), ("spoofed_request", &spoofed)] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| tag(black_box(h), &tags, &tagging, 0, true),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
