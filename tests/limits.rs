//! Downstream limits: slow clients are cut off at the timeouts and cost nothing afterwards;
//! connections over a listener's maximum are refused while the admitted ones keep working.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::client::Client;
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

async fn gateway(pki: &Pki, limits: &str) -> (Proxy, meshgate_proxy::echo::Echo) {
    let backend = echo();
    let yaml = gateway_yaml(&route_to(HOST, backend.address)).replacen(
        "  listen:",
        &format!("  limits: {limits}\n  listen:"),
        1,
    );
    (
        Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await,
        backend,
    )
}

/// Reads until the server closes; panics if it does not within the test timeout.
async fn closed_by_server(mut s: impl tokio::io::AsyncRead + Unpin) {
    let mut buf = [0u8; 512];
    let closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(support::TIMEOUT, closed)
        .await
        .expect("the server never closed the connection");
}

fn active(proxy: &Proxy) -> bool {
    proxy
        .running
        .metrics
        .render()
        .contains("meshgate_connections_active 0")
}

#[tokio::test]
async fn slow_clients_are_cut_off_at_the_timeouts() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway(
        &pki,
        "{handshakeTimeout: 300ms, requestHeaderTimeout: 300ms}",
    )
    .await;
    let addr = proxy.addr(443);

    // Before the handshake: nothing at all, then a TLS record header and a stall.
    closed_by_server(TcpStream::connect(addr).await.unwrap()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    closed_by_server(s).await;
    support::eventually("two handshake timeouts", || proxy.rejected("timeout") == 2).await;

    // After the handshake: half a request head, then a stall.
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let mut tls = client.connect(addr, HOST).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: httpbin.example-target.com\r\n")
        .await
        .unwrap();
    closed_by_server(tls).await;

    // Nothing is left behind, and well-behaved clients are served.
    support::eventually("no connection left open", || active(&proxy)).await;
    let r = client.get(addr, HOST, HOST, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn connections_over_the_maximum_are_refused_and_the_admitted_keep_working() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let (proxy, _backend) = gateway(&pki, "{maxConnectionsPerListener: 2}").await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);

    let mut admitted = Vec::new();
    for _ in 0..2 {
        let tls = client.connect(addr, HOST).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        admitted.push(send);
    }
    // The third is closed at once.
    assert!(client.connect(addr, HOST).await.is_err());
    assert!(proxy
        .running
        .metrics
        .render()
        .contains("meshgate_connections_refused_total 1"));
    for send in &mut admitted {
        let req = Request::get("/")
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            send.send_request(req).await.unwrap().status(),
            StatusCode::OK
        );
    }
    // Once one goes, there is room again.
    drop(admitted.pop());
    support::eventually("a slot to free up", || {
        proxy
            .running
            .metrics
            .render()
            .contains("meshgate_connections_active 1")
    })
    .await;
    assert_eq!(
        client.get(addr, HOST, HOST, "/", &[]).await.unwrap().status,
        StatusCode::OK
    );
}
