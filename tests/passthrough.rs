//! `meshConfig.outboundTrafficPolicy` on the outbound listener, and the TEXT access log of
//! `meshConfig.accessLogFile`: a real local app's plaintext request, a real echo backend.

mod support;

use http::StatusCode;

use support::client::plain_get;
use support::pki::Pki;
use support::proxy::{echo, source_yaml, Proxy};

const SLEEP: &str = "spiffe://example.com/ns/default/sa/sleep";

fn install(mode: &str) -> String {
    format!(
        r#"
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    accessLogFile: access.log
    outboundTrafficPolicy: {{mode: {mode}}}
"#
    )
}

#[tokio::test]
async fn allow_any_forwards_unknown_hosts_registry_only_does_not() {
    let pki = Pki::new(&["example.com"]);
    let backend = echo();
    let unknown = format!("localhost:{}", backend.address.port());
    for (mode, status) in [
        ("ALLOW_ANY", StatusCode::OK),
        ("REGISTRY_ONLY", StatusCode::NOT_FOUND),
    ] {
        let yaml =
            source_yaml("127.0.0.1:9".parse().unwrap(), "{tls: {mode: DISABLE}}") + &install(mode);
        let proxy = Proxy::start(&yaml, &pki.workload("example.com", SLEEP)).await;
        let r = plain_get(proxy.outbound(), &unknown, "/anything?x=1", &[])
            .await
            .unwrap();
        assert_eq!(r.status, status, "{mode}");
        if status == StatusCode::OK {
            let json = r.json();
            assert_eq!(json["path"], "/anything?x=1", "{json}");
            assert_eq!(r.echoed("host").as_deref(), Some(unknown.as_str()));
        }
        // Istio's default encoding: one text line, Envoy's fields first.
        let log = proxy.dir.path().join("access.log");
        support::eventually("an access log line", || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 1)
        })
        .await;
        let line = std::fs::read_to_string(&log).unwrap();
        assert!(line.starts_with('['), "{line}");
        assert!(
            line.contains(&format!("\"GET /anything?x=1\" {}", status.as_u16())),
            "{line}"
        );
        assert!(!line.trim_start().starts_with('{'), "{line}");
    }
}
