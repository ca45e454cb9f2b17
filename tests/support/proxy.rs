//! Start the proxy in process from YAML, with its identity written to a temp directory.

use std::net::SocketAddr;

use meshgate_pki::Workload;
use meshgate_proxy::echo::Echo;
use meshgate_proxy::Running;

use super::TempDir;

/// A running proxy and the directory holding its config and certificates.
pub struct Proxy {
    pub running: Running,
    pub dir: TempDir,
}

impl Proxy {
    /// Writes `identity` to `certs/` and `yaml` to `config.yaml`, then loads and starts it.
    /// `yaml` may use `certs/cert-chain.pem`, `certs/key.pem`, `certs/root-cert.pem`.
    pub async fn start(yaml: &str, identity: &Workload) -> Self {
        Self::start_with_bundle(yaml, identity, &identity.root_pem).await
    }

    /// As `start`, with more files (path relative to the config's directory, contents) written
    /// first: server certificates of SIMPLE and MUTUAL Gateway servers, say.
    pub async fn start_with_files(yaml: &str, identity: &Workload, files: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("proxy");
        for (path, contents) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        Self::start_in(dir, yaml, identity, &identity.root_pem).await
    }

    /// As `start`, with `bundle` (one or more PEM roots) as `certs/root-cert.pem`.
    pub async fn start_with_bundle(yaml: &str, identity: &Workload, bundle: &str) -> Self {
        Self::start_in(TempDir::new("proxy"), yaml, identity, bundle).await
    }

    async fn start_in(dir: TempDir, yaml: &str, identity: &Workload, bundle: &str) -> Self {
        identity.write(&dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/root-cert.pem"), bundle).unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let model = meshgate_config::load(&[config]).unwrap_or_else(|e| panic!("config: {e}"));
        let running = meshgate_proxy::start(model)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        Self { running, dir }
    }

    /// The configuration file.
    pub fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// The bound address of Gateway port `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        self.running
            .address(port)
            .expect("no listener for that port")
    }

    /// How many handshakes were refused for `reason`.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.running.metrics.handshakes_rejected(reason)
    }
}

/// An echo backend on an ephemeral loopback port.
pub fn echo() -> Echo {
    Echo::start("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// The MeshGateway + Kyma Istio + ISTIO_MUTUAL Gateway every inbound test starts from: trust
/// domain `example-target.com`, port 443 bound to an ephemeral port, hosts `*.example-target.com`.
pub fn gateway_yaml(extra: &str) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: target-gateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{443: 0}}}}
---
apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {{name: default, namespace: kyma-system}}
spec:
  config: {{trustDomain: example-target.com}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: multi-mesh-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*.example-target.com"]
    tls: {{mode: ISTIO_MUTUAL}}
{extra}"#
    )
}

/// A VirtualService for `host` on the gateway, routing everything to `backend` (an echo).
pub fn route_to(host: &str, backend: SocketAddr) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: ["{host}"]
  gateways: [istio-system/multi-mesh-gateway]
  http:
  - route:
    - destination: {{host: {name}.backend.internal, port: {{number: 80}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.backend.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
        name = host.split('.').next().unwrap(),
        port = backend.port(),
    )
}

impl Proxy {
    /// The bound address of the outbound listener.
    pub fn outbound(&self) -> SocketAddr {
        self.running
            .listeners
            .iter()
            .find(|l| l.name == "outbound")
            .map(|l| l.address)
            .expect("no outbound listener")
    }
}

/// The source mesh's proxy: trust domain `example.com`, an outbound listener, the
/// ServiceEntry for `httpbin.example-target.com` (80 -> 443, DNS) with `httpbin...:443`
/// resolved to `target`, and a DestinationRule whose `trafficPolicy` is `policy`.
pub fn source_yaml(target: SocketAddr, policy: &str) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: source-egress, namespace: default}}
spec:
  labels: {{app: sleep}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  outbound: {{address: "127.0.0.1:0"}}
  resolve: [{{host: httpbin.example-target.com, port: 443, address: "{target}"}}]
---
apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {{name: default, namespace: kyma-system}}
spec:
  config: {{trustDomain: example.com}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin-example-target, namespace: default}}
spec:
  hosts: [httpbin.example-target.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin-example-target, namespace: default}}
spec:
  host: httpbin.example-target.com
  trafficPolicy: {policy}
"#
    )
}

/// A raw TCP backend on an ephemeral loopback port: `serve` runs on each accepted connection,
/// in a task of its own.
async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    address
}

/// A raw HTTP/1.1 backend on an ephemeral loopback port that answers every request with a
/// chunked body of `chunks` copies of `chunk`, one every `gap`: a response still streaming long
/// after its head.
pub async fn slow_backend(
    chunk: &'static str,
    chunks: usize,
    gap: std::time::Duration,
) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    raw_backend(move |mut tcp| async move {
        // Request after request on one connection, as the proxy's pool expects.
        while read_head(&mut tcp).await {
            let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..chunks {
                out.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
                if tcp.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                tokio::time::sleep(gap).await;
            }
            if tcp.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A raw HTTP/1.1 backend that starts a chunked response, sends `chunk`, and closes the
/// connection without ending the body: an upstream that breaks off mid-response.
pub async fn broken_backend(chunk: &'static str) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    raw_backend(move |mut tcp| async move {
        if !read_head(&mut tcp).await {
            return;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
            chunk.len()
        );
        let _ = tcp.write_all(response.as_bytes()).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    })
    .await
}

/// A raw HTTP/1.1 backend that answers each request with `response` (any bytes) and closes
/// the connection at once.
pub async fn abrupt_backend(response: &'static str) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    raw_backend(move |mut tcp| async move {
        if read_head(&mut tcp).await {
            let _ = tcp.write_all(response.as_bytes()).await;
        }
    })
    .await
}

/// A raw HTTP/1.1 backend that answers the first request of each connection (keep-alive,
/// `server: <connection number>`) and closes the connection, unanswered, once the next request
/// arrives: a pooled connection closed just as a request went out on it. `connections` counts
/// the connections made.
pub async fn one_answer_backend(
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    raw_backend(move |mut tcp| {
        let n = connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        async move {
            if !read_head(&mut tcp).await {
                return;
            }
            let response = format!("HTTP/1.1 200 OK\r\nserver: {n}\r\ncontent-length: 2\r\n\r\nok");
            if tcp.write_all(response.as_bytes()).await.is_ok() {
                read_head(&mut tcp).await;
            }
        }
    })
    .await
}

/// A raw HTTP/1.1 backend that answers every request `200 ok` on a kept connection, reading
/// a request body of the `content-length` it names; `connections` counts the connections made.
pub async fn counting_backend(
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw_backend(move |mut tcp| {
        connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let mut pending = Vec::new();
            loop {
                while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0u8; 1024];
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                let end = pending.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while pending.len() < end + length {
                    let mut buf = [0u8; 1024];
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                pending.drain(..end + length);
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if tcp.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// Reads one request head from `tcp`; `false` when the connection ended first.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A raw HTTP/1.1 backend that reads each request head and never answers.
pub async fn silent_backend() -> SocketAddr {
    raw_backend(|mut tcp| async move {
        if read_head(&mut tcp).await {
            // Holds the connection open, silent, until the proxy goes.
            let mut rest = [0u8; 64];
            while matches!(tokio::io::AsyncReadExt::read(&mut tcp, &mut rest).await, Ok(n) if n > 0)
            {
            }
        }
    })
    .await
}

/// A raw HTTP/1.1 backend that answers each request with `bytes` bytes, written as fast as
/// the proxy takes them.
pub async fn firehose_backend(bytes: usize) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    raw_backend(move |mut tcp| async move {
        let chunk = vec![b'x'; 256 * 1024];
        while read_head(&mut tcp).await {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {bytes}\r\n\r\n");
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                if tcp.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
        }
    })
    .await
}
