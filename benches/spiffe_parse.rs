//! SPIFFE ID parsing and the per-handshake leaf inspection (`peer_identity`).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

use meshgate_config::spiffe::SpiffeId;
use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec};
use rustls::pki_types::CertificateDer;

fn spiffe_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("spiffe_parse");
    group.bench_function("istio_workload", |b| {
        b.iter(|| {
            SpiffeId::parse(black_box(
                "spiffe://example-target.com/ns/default/sa/httpbin",
            ))
        })
    });
    let long = format!("spiffe://example.com/{}", "segment/".repeat(60) + "end");
    group.bench_function("60_segments", |b| {
        b.iter(|| SpiffeId::parse(black_box(&long)))
    });
    group.bench_function("invalid_uppercase_td", |b| {
        b.iter(|| SpiffeId::parse(black_box("spiffe://Example.com/ns/default/sa/httpbin")))
    });
    group.finish();

    let root = Authority::root("bench root", KeyAlgorithm::EcdsaP256).unwrap();
    let td = meshgate_config::spiffe::TrustDomain::new("example.com").unwrap();
    let leaf = root
        .intermediate(&td, KeyAlgorithm::EcdsaP256)
        .unwrap()
        .issue(&LeafSpec::spiffe(
            "spiffe://example.com/ns/default/sa/sleep",
        ))
        .unwrap();
    let der = CertificateDer::from(leaf.leaf_der);
    // A leaf read before on this thread: the identity is kept with the leaf's bytes.
    c.bench_function("peer_identity/istio_leaf_kept", |b| {
        b.iter(|| meshgate_proxy::identity::peer_identity(black_box(&der)).unwrap())
    });
    // A leaf not read before: its last two bytes (the signature's) changed on every call, so
    // each is read in full.
    let mut next = 0u16;
    c.bench_function("peer_identity/istio_leaf_new", |b| {
        b.iter_batched(
            || {
                next = next.wrapping_add(1);
                let mut der = der.to_vec();
                let at = der.len() - 2;
                der[at..].copy_from_slice(&next.to_be_bytes());
                der
            },
            |der| meshgate_proxy::identity::peer_identity(&CertificateDer::from(der)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, spiffe_parse);
criterion_main!(benches);
