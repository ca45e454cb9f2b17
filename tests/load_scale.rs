//! Loading grows linearly with the number of resources: ten times the ServiceEntries take
//! about ten times the time and the memory, measured here (time as the CPU time of the loading
//! thread, so that other work on the machine does not skew the ratio; memory by a counting
//! global allocator's peak of live bytes), as ratios rather than absolute numbers.
//! `BENCHMARKS.md` has the absolute figures of a release build.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Peak;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// Delegates to the system allocator and only counts the bytes live and their peak.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            let grown = new_size - layout.size();
            let live = LIVE.fetch_add(grown, Ordering::Relaxed) + grown;
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// A MeshGateway, a Gateway and a VirtualService, then `n` ServiceEntries with a
/// DestinationRule each, as a large mesh's egress configuration has them.
fn config(n: usize) -> String {
    let mut text = String::from(
        "apiVersion: meshgate.dev/v1alpha1\nkind: MeshGateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  labels: {istio: egressgateway}\n  outbound: {address: 127.0.0.1:15001}\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se{i}, namespace: ns{}}}\nspec:\n  hosts: [api{i}.example.com]\n  ports: [{{number: 443, name: https, protocol: HTTPS}}, {{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n  location: MESH_EXTERNAL\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr{i}, namespace: ns{}}}\nspec:\n  host: api{i}.example.com\n  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 100}}}}}}\n",
            i % 50,
            i % 50
        ));
    }
    text
}

/// The time and the peak of live heap bytes a load of `n` resources pairs takes: the faster of
/// The CPU time this thread has run (`/proc/thread-self/schedstat`, nanoseconds), or the clock
/// where the kernel does not say.
fn now() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| START.get_or_init(Instant::now).elapsed())
}

/// `rounds` loads, and the peak over them.
fn load(n: usize, rounds: usize) -> (Duration, usize) {
    let text = config(n);
    let mut fastest = Duration::MAX;
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    for _ in 0..rounds {
        let start = now();
        let model = meshgate_config::load_str("scale.yaml", &text)
            .unwrap_or_else(|e| panic!("{n} resources: {e}"));
        fastest = fastest.min(now().saturating_sub(start));
        assert!(
            model.backends.len() >= n,
            "each service a backend on the outbound listener"
        );
        drop(model);
    }
    (fastest, PEAK.load(Ordering::Relaxed) - base)
}

#[test]
fn ten_times_the_resources_take_about_ten_times_the_time_and_memory() {
    let (small_time, small_memory) = load(500, 3);
    let (large_time, large_memory) = load(5_000, 1);
    let time = large_time.as_secs_f64() / small_time.as_secs_f64();
    let memory = large_memory as f64 / small_memory as f64;
    eprintln!(
        "500 resources: {small_time:?} CPU, {small_memory} bytes at peak; 5,000: {large_time:?}, \
         {large_memory} bytes; ratios {time:.1} and {memory:.1}"
    );
    // Linear is about 10, quadratic about 100. A load's CPU time moves by half on a shared
    // machine (9.7x to 15.1x measured for this linear loader), so the bound sits between.
    assert!(time < 30.0, "time grew {time:.1}x for 10x the resources");
    assert!(
        memory < 15.0,
        "memory grew {memory:.1}x for 10x the resources"
    );
}
