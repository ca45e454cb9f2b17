//! What an idle mTLS connection holds on the heap once it is parked: no more than a
//! connection that has only completed its handshake, give or take the state that waits for
//! the next request (hyper's 16 KiB of buffers and its header map are gone). Measured with a
//! counting global allocator in this test binary, over the proxy's allocations only: the
//! clients run on a thread of their own, which is not counted.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use support::client::Client;
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, Proxy};

struct Counting;

/// Bytes live on the heap, from counted threads.
static LIVE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(true) };
}

fn note(size: usize, sign: i64) {
    if COUNTED.try_with(Cell::get).unwrap_or(true) {
        LIVE.fetch_add(sign * size as i64, Ordering::Relaxed);
    }
}

// Delegates to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), 1);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(layout.size(), -1);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const CONNECTIONS: usize = 100;

/// A step of the clients' thread, told to the test and waited for by it.
async fn step(to: &mpsc::UnboundedSender<()>, from: &mut mpsc::UnboundedReceiver<()>) {
    to.send(()).unwrap();
    from.recv().await.unwrap();
}

fn parked(proxy: &Proxy) -> usize {
    let metrics = proxy.running.metrics.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("meshgate_connections_parked "))
        .unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_parked_connection_holds_little_more_than_one_that_has_only_handshaken() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address));
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let get = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    let (to_test, mut from_clients) = mpsc::unbounded_channel();
    let (to_clients, mut from_test) = mpsc::unbounded_channel();
    let clients = std::thread::spawn(move || {
        COUNTED.with(|c| c.set(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut buf = vec![0u8; 1 << 16];
            // One connection served and closed first, so that what the first request makes
            // once (the upstream connection, the pools) is there before the measuring.
            let mut first = client.connect(addr, HOST).await.unwrap();
            first.write_all(get.as_bytes()).await.unwrap();
            assert!(first.read(&mut buf).await.unwrap() > 0);
            drop(first);
            step(&to_test, &mut from_test).await;
            let mut conns = Vec::new();
            for _ in 0..CONNECTIONS {
                conns.push(client.connect(addr, HOST).await.unwrap());
            }
            step(&to_test, &mut from_test).await;
            for c in &mut conns {
                c.write_all(get.as_bytes()).await.unwrap();
                let n = c.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
            }
            step(&to_test, &mut from_test).await;
        });
    });
    from_clients.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = LIVE.load(Ordering::Relaxed);
    step(&to_clients, &mut from_clients).await;
    // The server verifies the client's certificate after the client's last handshake flight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handshaken = LIVE.load(Ordering::Relaxed);
    step(&to_clients, &mut from_clients).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while parked(&proxy) < CONNECTIONS {
        assert!(tokio::time::Instant::now() < deadline, "not all parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle = LIVE.load(Ordering::Relaxed);
    to_clients.send(()).unwrap();
    clients.join().unwrap();

    let n = CONNECTIONS as i64;
    let handshake_only = (handshaken - before) / n;
    let added = (idle - handshaken) / n;
    println!("per connection: handshake only {handshake_only} bytes, parked +{added} bytes");
    // A handshaken connection holds its TLS session and the connection's task; hyper's
    // buffers alone are 16 KiB.
    assert!(handshake_only > 4096, "{handshake_only}");
    assert!(
        added < 4096,
        "a parked connection holds {added} bytes more than a handshaken one"
    );
}
