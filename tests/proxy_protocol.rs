//! PROXY protocol in, behind an L4 load balancer: v1 and v2 headers from a trusted peer name the
//! client for tags, `x-forwarded-for`, `remoteIpBlocks` and the access log; v2 `LOCAL` keeps the
//! peer's address; a trusted peer without a header is refused; an untrusted peer's header is
//! never read, so it cannot claim an address.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use support::client::{Client, Conn};
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, Proxy};
use support::{eventually, json_lines};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const CALLER: &str = "spiffe://example.com/ns/default/sa/sleep";

const DENY_BLOCK: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-block, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]
"#;

/// A v2 header: PROXY (or LOCAL) over TCP/IPv4 from `client` to 127.0.0.1:443.
fn v2(local: bool, client: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    if local {
        h.extend([0x20, 0x00, 0, 0]);
        return h;
    }
    h.extend([0x21, 0x11, 0, 12]);
    let SocketAddr::V4(c) = client else {
        panic!("IPv4 only here")
    };
    h.extend(c.ip().octets());
    h.extend([127, 0, 0, 1]);
    h.extend(c.port().to_be_bytes());
    h.extend(443u16.to_be_bytes());
    h
}

struct Setup {
    pki: Pki,
    proxy: Proxy,
    _echo: meshgate_proxy::echo::Echo,
}

impl Setup {
    async fn new() -> Self {
        let pki = Pki::new(&["example-target.com", "example.com"]);
        let backend = echo();
        let yaml = gateway_yaml(&format!("{}{DENY_BLOCK}", route_to(HOST, backend.address)))
            .replace(
                "  listen:",
                "  accessLog: {path: access.log}\n  limits: {handshakeTimeout: 500ms}\n  listen:",
            )
            .replace(
                "portOverrides: {443: 0}}",
                "portOverrides: {443: 0}, proxyProtocol: {trustedSources: [127.0.0.1/32]}}",
            );
        assert!(yaml.contains("trustedSources"), "{yaml}");
        let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
        Self {
            pki,
            proxy,
            _echo: backend,
        }
    }

    /// From local address `from`, `header` first, then mTLS and one GET: the status and the
    /// echoed `x-forwarded-for` and `x-envoy-external-address`.
    async fn get(
        &self,
        from: &str,
        header: &[u8],
    ) -> Result<(StatusCode, Option<String>, Option<String>), String> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut tcp: TcpStream = socket.connect(self.proxy.addr(443)).await.unwrap();
        tcp.write_all(header).await.unwrap();
        let caller = self.pki.workload("example.com", CALLER);
        let tls = Client::new(Some(&caller), &self.pki.root.cert_pem, &[b"http/1.1"])
            .handshake(tcp, HOST)
            .await
            .map_err(|e| e.to_string())?;
        let (mut conn, _) = Conn::open(tls, false).await?;
        let (status, body) = conn.get(HOST, "/").await;
        if status != StatusCode::OK {
            return Ok((status, None, None));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let header = |name: &str| json["headers"][name][0].as_str().map(str::to_string);
        Ok((
            status,
            header("x-forwarded-for"),
            header("x-envoy-external-address"),
        ))
    }
}

#[tokio::test]
async fn the_client_named_by_a_trusted_proxy_header_is_the_client_everywhere() {
    let s = Setup::new().await;
    let metrics = &s.proxy.running.metrics;

    // v1 and v2 from the trusted load balancer: the header's source is the client.
    let v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 443\r\n";
    let (status, xff, external) = s.get("127.0.0.1", v1).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(xff.as_deref(), Some("198.51.100.7"));
    assert_eq!(external.as_deref(), Some("198.51.100.7"));
    let (status, xff, _) = s
        .get(
            "127.0.0.1",
            &v2(false, "198.51.100.9:6000".parse().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(xff.as_deref(), Some("198.51.100.9"));

    // The address counts for policies: remoteIpBlocks denies 203.0.113.0/24.
    let (status, ..) = s
        .get("127.0.0.1", &v2(false, "203.0.113.5:7000".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);

    // LOCAL (the load balancer's health check): served with the peer's own address.
    let (status, xff, _) = s
        .get("127.0.0.1", &v2(true, "0.0.0.0:0".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(xff.as_deref(), Some("127.0.0.1"));

    // A trusted peer without a header: refused (its TLS is not a PROXY header).
    assert!(s.get("127.0.0.1", b"").await.is_err());
    eventually("one refused", || {
        metrics.proxy_protocol_count("rejected") == 1
    })
    .await;

    // An untrusted peer is served as it is, and its header is not read: it cannot claim
    // another address (the bytes break its own TLS instead).
    let (status, xff, _) = s.get("127.0.0.2", b"").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(xff.as_deref(), Some("127.0.0.2"));
    assert!(s.get("127.0.0.2", v1).await.is_err());

    assert_eq!(metrics.proxy_protocol_count("proxied"), 3);
    assert_eq!(metrics.proxy_protocol_count("local"), 1);
    // Five requests, the refused header and the untrusted peer's broken handshake.
    let log = json_lines(&s.proxy.dir.path().join("access.log"), 7).await;
    let text: Vec<String> = log.iter().map(|l| l.to_string()).collect();
    assert!(text.iter().any(|l| l.contains("198.51.100.7")), "{text:#?}");
    assert!(
        text.iter()
            .any(|l| l.contains("proxy_protocol_rejected") && l.contains("127.0.0.1")),
        "{text:#?}"
    );
}

#[test]
fn istio_gateway_topology_turns_it_on_for_every_peer() {
    let yaml = gateway_yaml(
        r#"
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    defaultConfig:
      gatewayTopology: {proxyProtocol: {}}
"#,
    );
    let model = meshgate_config::load_str("pp.yaml", &yaml).unwrap();
    let pp = model.proxy.proxy_protocol.expect("on");
    assert!(pp.expects("10.1.2.3".parse().unwrap()));
    let bad = gateway_yaml("").replace(
        "portOverrides: {443: 0}}",
        "portOverrides: {443: 0}, proxyProtocol: {trustedSources: [lb.internal]}}",
    );
    let errors = meshgate_config::load_str("pp.yaml", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("spec.listen.proxyProtocol.trustedSources[0]: `lb.internal` is not an address or CIDR block"),
        "{errors}"
    );
}
