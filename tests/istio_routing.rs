//! Istio routing as operators write it, through the outbound listener (a sidecar's view) and
//! the gateway: short host names, subsets, Kubernetes Services, and the rest of the
//! VirtualService and DestinationRule fields, each against running echo backends.

mod support;

use std::net::SocketAddr;

use http::StatusCode;

use meshgate_proxy::echo::Echo;
use support::client::plain_get;
use support::proxy::echo;
use support::TempDir;

/// A sidecar-like proxy: a MeshGateway in `default` with an outbound listener, and `extra`.
struct Sidecar {
    running: meshgate_proxy::Running,
    _dir: TempDir,
}

impl Sidecar {
    async fn start(extra: &str) -> Self {
        let dir = TempDir::new("sidecar");
        let yaml = format!(
            r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: sidecar, namespace: default}}
spec:
  labels: {{app: productpage, version: v1}}
  outbound: {{address: "127.0.0.1:0"}}
{extra}"#
        );
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let model = meshgate_config::load(&[config]).unwrap_or_else(|e| panic!("config: {e}"));
        let running = meshgate_proxy::start(model)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        Self { running, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.running
            .listeners
            .iter()
            .find(|l| l.name == "outbound")
            .unwrap()
            .address
    }

    /// Which echo answered a GET of `path` from `host`, by its address.
    async fn server(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let r = plain_get(self.addr(), host, path, headers).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{host}{path}: {:?}", r.body);
        r.json()["server"].as_str().unwrap().to_string()
    }
}

/// A ServiceEntry `name` in `default` for `host` port `port`, on the echo's port.
fn service_entry(name: &str, host: &str, port: u16, backend: &Echo) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: http, protocol: HTTP, targetPort: {target}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
        target = backend.address.port()
    )
}

#[tokio::test]
async fn a_short_virtual_service_host_is_the_kubernetes_service_and_its_short_names() {
    let (v1, v2) = (echo(), echo());
    let extra = format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews-v2.internal, port: {{number: 9080}}}}}}]
  - route: [{{destination: {{host: reviews.default.svc.cluster.local, port: {{number: 9080}}}}}}]
{}{}"#,
        service_entry("reviews", "reviews.default.svc.cluster.local", 9080, &v1),
        service_entry("reviews-v2", "reviews-v2.internal", 9080, &v2),
    );
    let sidecar = Sidecar::start(&extra).await;
    let (one, two) = (v1.address.to_string(), v2.address.to_string());
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default:9080",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
    ] {
        // The VirtualService's rules apply to every name, the full one (which a ServiceEntry
        // also declares) included.
        assert_eq!(
            sidecar.server(host, "/", &[("end-user", "jason")]).await,
            two,
            "{host}"
        );
        assert_eq!(sidecar.server(host, "/", &[]).await, one, "{host}");
    }
}
