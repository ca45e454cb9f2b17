//! A sidecar-like proxy started from YAML: a MeshGateway in `default` with an outbound
//! listener, for tests that route as a workload's sidecar does.

use std::net::SocketAddr;

use http::StatusCode;

use super::client::plain_get;
use super::TempDir;

/// A sidecar-like proxy: a MeshGateway in `default` with an outbound listener, and `extra`.
pub struct Sidecar {
    pub running: meshgate_proxy::Running,
    _dir: TempDir,
}

impl Sidecar {
    pub async fn start(extra: &str) -> Self {
        Self::start_with_files(extra, &[]).await
    }

    /// As `start`, with `files` (name, contents) written beside the configuration.
    pub async fn start_with_files(extra: &str, files: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("sidecar");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
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

    pub fn addr(&self) -> SocketAddr {
        self.running
            .listeners
            .iter()
            .find(|l| l.name == "outbound")
            .unwrap()
            .address
    }

    /// Which echo answered a GET of `path` from `host`, by its address.
    pub async fn server(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let r = plain_get(self.addr(), host, path, headers).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{host}{path}: {:?}", r.body);
        r.json()["server"].as_str().unwrap().to_string()
    }
}
