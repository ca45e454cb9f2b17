//! Nothing a client sends changes who it is, where it goes, or what a policy decides. Real mTLS
//! callers against a running gateway: every header the proxy owns against every shape a client
//! can send it in, one authority per request, paths normalized before policies see them,
//! dry-run policies, and every AuthorizationPolicy field proven to deny what it names.

mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use meshgate_config::model::authz::SUPPORTED_FIELDS;
use meshgate_pki::LeafSpec;
use meshgate_proxy::authorize::ShadowAction;
use meshgate_proxy::echo::Echo;
use support::client::{Client, Conn, Reply};
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, Proxy};
use support::TIMEOUT;

const HOST: &str = "httpbin.example-target.com";
/// Routed to the same echo backend over HTTP/2, which carries request trailers as they come.
const H2_HOST: &str = "grpc.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const CALLER: &str = "spiffe://example.com/ns/default/sa/sleep";

/// Every header the proxy owns with the default tagging.
const OWNED: [&str; 7] = [
    "x-mesh-origin",
    "x-source-trust-domain",
    "x-source-principal",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-external-address",
];

/// `*.example-target.com` to the echo backend over HTTP/1.1, `grpc.` over HTTP/2.
fn routes(backend: SocketAddr) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: everything, namespace: default}}
spec:
  hosts: ["*.example-target.com"]
  gateways: [istio-system/multi-mesh-gateway]
  http: [{{route: [{{destination: {{host: echo.internal, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: grpc, namespace: default}}
spec:
  hosts: ["{H2_HOST}"]
  gateways: [istio-system/multi-mesh-gateway]
  http: [{{route: [{{destination: {{host: echo-h2.internal, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo-h2, namespace: default}}
spec:
  hosts: [echo-h2.internal]
  ports: [{{number: 80, name: grpc, protocol: GRPC, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
        port = backend.port()
    )
}

struct Setup {
    pki: Pki,
    proxy: Proxy,
    _echo: Echo,
}

impl Setup {
    /// The gateway, its routes to an echo backend, and `extra` resources.
    async fn new(extra: &str) -> Self {
        let pki = Pki::new(&["example-target.com", "example.com"]);
        let backend = echo();
        let yaml = gateway_yaml(&format!("{}{extra}", routes(backend.address)));
        let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
        Self {
            pki,
            proxy,
            _echo: backend,
        }
    }

    fn client(&self, alpn: &[&[u8]]) -> Client {
        let caller = self.pki.workload("example.com", CALLER);
        Client::new(Some(&caller), &self.pki.root.cert_pem, alpn)
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr(443)
    }

    /// Raw HTTP/1.1 bytes over a real mTLS connection; the whole response (the connection is
    /// closed after it).
    async fn raw(&self, request: &[u8]) -> RawReply {
        let mut tls = self
            .client(&[b"http/1.1"])
            .connect(self.addr(), HOST)
            .await
            .unwrap();
        tls.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut out))
            .await
            .expect("response in time")
            .ok();
        RawReply::parse(&out)
    }

    /// One GET over HTTP/1.1 or HTTP/2 with `headers`.
    async fn get(&self, h2: bool, authority: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        self.client(alpn)
            .get(self.addr(), HOST, authority, path, headers)
            .await
            .unwrap()
    }
}

/// A response read off the wire.
#[derive(Debug)]
struct RawReply {
    status: u16,
    body: String,
}

impl RawReply {
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        Self {
            status,
            body: body.to_string(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// What the proxy sets each owned header to for `CALLER` from 127.0.0.1.
fn expected(name: &str, value: &str) -> bool {
    match name {
        "x-mesh-origin" => value == "remote",
        "x-source-trust-domain" => value == "example.com",
        "x-source-principal" => value == "example.com/ns/default/sa/sleep",
        "x-forwarded-client-cert" => {
            value.starts_with(&format!("By={GATEWAY_ID};Hash="))
                && value.ends_with(&format!(";URI={CALLER}"))
        }
        // Appended to: the client's hops stay, ours is last.
        "x-forwarded-for" => value.ends_with("127.0.0.1"),
        "x-forwarded-proto" => value == "https",
        // The trusted client address: the peer, with no proxies trusted in front.
        "x-envoy-external-address" => value == "127.0.0.1",
        _ => unreachable!("{name}"),
    }
}

#[tokio::test]
async fn owned_headers_are_set_once_whatever_the_client_sends() {
    let s = Setup::new("").await;
    for h2 in [false, true] {
        for name in OWNED {
            let underscored = name.replace('-', "_");
            let headers = [
                (name, "spoofed-1"),
                (name, "spoofed-2"),
                (underscored.as_str(), "spoofed-3"),
            ];
            let r = s.get(h2, HOST, "/", &headers).await;
            assert_eq!(r.status, StatusCode::OK, "{name} h2={h2}");
            let json = r.json();
            let values = json["headers"][name].as_array().unwrap();
            assert_eq!(values.len(), 1, "{name} h2={h2}: {values:?}");
            let value = values[0].as_str().unwrap();
            assert!(expected(name, value), "{name} h2={h2}: {value}");
            assert!(
                !value.contains("spoofed") || name == "x-forwarded-for",
                "{name}: {value}"
            );
            assert!(
                json["headers"].get(&underscored).is_none(),
                "{underscored} reached the backend h2={h2}"
            );
        }
    }
}

#[tokio::test]
async fn a_connection_header_cannot_remove_an_owned_header() {
    let s = Setup::new("").await;
    for name in OWNED.iter().chain(&["x-forwarded-host", "host"]) {
        let r = s
            .raw(
                format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close, {name}\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        assert_eq!(r.status, 400, "Connection: {name}");
    }
    // A header the proxy does not own is removed as the client asked, and the tags stay.
    let r = s
        .raw(
            format!(
                "GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close, x-hop\r\nx-hop: 1\r\n\
                 x-end: 1\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    let json = r.json();
    assert!(json["headers"].get("x-hop").is_none());
    assert_eq!(json["headers"]["x-end"][0], "1");
    assert_eq!(json["headers"]["x-mesh-origin"][0], "remote");
}

#[tokio::test]
async fn request_trailers_cannot_carry_an_owned_header() {
    let s = Setup::new("").await;
    // HTTP/1.1 chunked trailers, declared in `Trailer` as a client must, to an HTTP/1.1 and an
    // HTTP/2 backend.
    for host in [HOST, H2_HOST] {
        let mut request = format!(
            "POST / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\
             trailer: x-ok, {}\r\n\r\n5\r\nhello\r\n0\r\nx-ok: 1\r\n",
            OWNED.join(", ")
        );
        for name in OWNED {
            request.push_str(&format!(
                "{name}: spoofed\r\n{}: spoofed\r\n",
                name.replace('-', "_")
            ));
        }
        request.push_str("\r\n");
        let r = s.raw(request.as_bytes()).await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        let trailers = &r.json()["trailers"];
        assert_eq!(
            trailers["x-ok"][0], "1",
            "{host}: trailers do pass: {trailers}"
        );
        for name in OWNED {
            assert!(trailers.get(name).is_none(), "{host}: {name} in {trailers}");
            assert!(
                trailers.get(name.replace('-', "_")).is_none(),
                "{host}: {trailers}"
            );
        }
    }

    // HTTP/2 trailers.
    let tls = s.client(&[b"h2"]).connect(s.addr(), HOST).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-ok", HeaderValue::from_static("1"));
    for name in OWNED {
        trailers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static("spoofed"),
        );
    }
    let req = Request::post(format!("https://{H2_HOST}/"))
        .version(Version::HTTP_2)
        .body(WithTrailers {
            data: Some(Bytes::from_static(b"hello")),
            trailers: Some(trailers),
        })
        .unwrap();
    let response = tokio::time::timeout(TIMEOUT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let r = Reply::read(response).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let trailers = &r.json()["trailers"];
    assert_eq!(trailers["x-ok"][0], "1", "{trailers}");
    for name in OWNED {
        assert!(trailers.get(name).is_none(), "{name} in {trailers}");
    }
}

/// A body of one data frame, then trailers.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

const DENY_ADMIN_HOST: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-host, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {hosts: [admin.example-target.com]}}]}]
"#;

#[tokio::test]
async fn one_authority_routes_authorizes_and_reaches_the_backend() {
    let s = Setup::new(DENY_ADMIN_HOST).await;
    let allowed = "allowed.example-target.com";
    let admin = "admin.example-target.com";

    // HTTP/1.1 absolute form: the target's authority replaces Host, everywhere.
    let r = s
        .raw(
            format!(
                "GET https://{allowed}/x HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["host"][0], allowed);
    assert_eq!(r.json()["path"], "/x");
    let r = s
        .raw(
            format!(
                "GET https://{admin}/x HTTP/1.1\r\nhost: {allowed}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // HTTP/2: a host header that disagrees with :authority is refused.
    let r = s.get(true, allowed, "/", &[("host", admin)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = s.get(true, admin, "/", &[("host", admin)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = s
        .get(
            true,
            allowed,
            "/",
            &[("host", "Allowed.Example-Target.com")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Spellings of the denied host are the denied host.
    for spelled in [
        "ADMIN.Example-Target.COM",
        "admin.example-target.com.",
        "admin.example-target.com:443",
        "admin.example-target.com.:8443",
    ] {
        for h2 in [false, true] {
            let r = s.get(h2, spelled, "/", &[]).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{spelled} h2={h2}");
        }
    }
    let r = s.get(false, "Allowed.Example-Target.com.", "/", &[]).await;
    assert_eq!(
        r.echoed("host").as_deref(),
        Some(allowed),
        "sent upstream canonical"
    );

    // Two Host headers, userinfo, and CONNECT.
    let r = s
        .raw(
            format!(
                "GET / HTTP/1.1\r\nhost: {allowed}\r\nhost: {admin}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .raw(
            format!("GET / HTTP/1.1\r\nhost: {allowed}@{admin}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .raw(
            format!(
                "CONNECT {admin}:443 HTTP/1.1\r\nhost: {admin}:443\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 405);
}

const DENY_ADMIN_PATHS: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-paths, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/{*}", "/files/{**}/secret"]}}]}]
"#;

/// Path, status, and the path the backend received when it was served.
type PathCase = (&'static str, u16, Option<&'static str>);

async fn paths(s: &Setup, cases: &[PathCase]) {
    for (path, status, seen) in cases {
        let r = s
            .raw(
                format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        assert_eq!(r.status, *status, "{path}: {}", r.body);
        if let Some(seen) = seen {
            assert_eq!(r.json()["path"], *seen, "{path}");
        }
    }
}

#[tokio::test]
async fn path_templates_decide_on_the_normalized_path() {
    let s = Setup::new(DENY_ADMIN_PATHS).await;
    paths(
        &s,
        &[
            ("/admin/secret", 403, None),
            // {*} is one segment.
            ("/admin/a/b", 200, Some("/admin/a/b")),
            ("/admin/", 200, Some("/admin/")),
            ("/files/a/b/secret", 403, None),
            ("/files/secret", 200, Some("/files/secret")),
            // Spellings of /admin/secret.
            ("/admin/../admin/secret", 403, None),
            ("/public/../admin/secret", 403, None),
            ("//admin/secret", 403, None),
            ("/admin//secret", 403, None),
            ("/admin/./secret", 403, None),
            ("/%61dmin/secret", 403, None),
            ("/admin/%2e/secret", 403, None),
            ("/admin%2Fsecret", 400, None),
            ("/admin%5csecret", 400, None),
            // Case matters to Istio's matchers and to the backend alike: what the policy saw
            // is what the backend gets.
            ("/ADMIN/secret", 200, Some("/ADMIN/secret")),
            ("//public/./x?a=1", 200, Some("/public/x?a=1")),
        ],
    )
    .await;
}

#[tokio::test]
async fn istio_base_normalization_is_istios() {
    let mode = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: istio, namespace: istio-system}\nspec: {meshConfig: {pathNormalization: {normalization: BASE}}}\n";
    let s = Setup::new(&format!("{DENY_ADMIN_PATHS}{mode}")).await;
    paths(
        &s,
        &[
            ("/admin/secret", 403, None),
            ("/admin/../admin/secret", 403, None),
            // BASE resolves dot segments only: as in Istio, these pass unchanged (and `check`
            // warns about it).
            ("//admin/secret", 200, Some("//admin/secret")),
            ("/admin%2Fsecret", 200, Some("/admin%2Fsecret")),
        ],
    )
    .await;
}

#[tokio::test]
async fn dry_run_policies_are_counted_never_enforced() {
    let policies = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: trial-deny
  namespace: istio-system
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/trial/{**}"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: trial-allow
  namespace: istio-system
  annotations: {istio.io/dry-run: "true"}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["example.com/ns/partners/*"]}}]}]
"#;
    let s = Setup::new(policies).await;
    let m = &s.proxy.running.metrics;
    for path in ["/trial/x", "/other", "/trial/y"] {
        let r = s.get(false, HOST, path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: never enforced");
    }
    // `allowed: false` counts what the set would have denied.
    assert_eq!(m.dry_runs(ShadowAction::Deny, false), 2);
    assert_eq!(m.dry_runs(ShadowAction::Deny, true), 1);
    // The caller is not a partner: the dry-run ALLOW set would have denied all three.
    assert_eq!(m.dry_runs(ShadowAction::Allow, false), 3);
    assert_eq!(m.dry_runs(ShadowAction::Allow, true), 0);
    let text = m.render();
    assert!(
        text.contains("meshgate_authorization_dry_run_total{action=\"deny\",result=\"denied\"} 2"),
        "{text}"
    );
}

/// One request's every attribute, as a policy sees it.
#[derive(Clone, Copy)]
struct Probe {
    caller: (&'static str, &'static str),
    from: &'static str,
    to: &'static str,
    port: u16,
    sni: &'static str,
    authority: &'static str,
    method: &'static str,
    path: &'static str,
    header: &'static str,
}

/// The probe every rule names.
const A: Probe = Probe {
    caller: ("example.com", "spiffe://example.com/ns/team-a/sa/alpha"),
    from: "127.0.0.1",
    to: "127.0.0.1",
    port: 443,
    sni: "a.example-target.com",
    authority: "a.example-target.com",
    method: "GET",
    path: "/a",
    header: "a",
};

/// A probe that differs from `A` in every attribute.
const B: Probe = Probe {
    caller: (
        "example-target.com",
        "spiffe://example-target.com/ns/team-b/sa/beta",
    ),
    from: "127.0.0.2",
    to: "127.0.0.3",
    port: 8443,
    sni: "b.example-target.com",
    authority: "b.example-target.com",
    method: "POST",
    path: "/b",
    header: "b",
};

/// For each supported field, a DENY rule that names `A` (for `not*` fields: names `B`, so
/// that `A`, which is not `B`, is denied).
fn rule_for(field: &str) -> Option<&'static str> {
    Some(match field {
        "from.source.principals" => {
            r#"{from: [{source: {principals: ["example.com/ns/team-a/sa/alpha"]}}]}"#
        }
        "from.source.notPrincipals" => {
            r#"{from: [{source: {notPrincipals: ["example-target.com/ns/team-b/sa/beta"]}}]}"#
        }
        "from.source.namespaces" => "{from: [{source: {namespaces: [team-a]}}]}",
        "from.source.notNamespaces" => "{from: [{source: {notNamespaces: [team-b]}}]}",
        "from.source.trustDomains" => "{from: [{source: {trustDomains: [example.com]}}]}",
        "from.source.notTrustDomains" => {
            "{from: [{source: {notTrustDomains: [example-target.com]}}]}"
        }
        "from.source.serviceAccounts" => "{from: [{source: {serviceAccounts: [team-a/alpha]}}]}",
        "from.source.notServiceAccounts" => {
            "{from: [{source: {notServiceAccounts: [team-b/beta]}}]}"
        }
        "from.source.ipBlocks" => "{from: [{source: {ipBlocks: [127.0.0.1/32]}}]}",
        "from.source.notIpBlocks" => "{from: [{source: {notIpBlocks: [127.0.0.2]}}]}",
        "from.source.remoteIpBlocks" => "{from: [{source: {remoteIpBlocks: [127.0.0.1]}}]}",
        "from.source.notRemoteIpBlocks" => {
            "{from: [{source: {notRemoteIpBlocks: [127.0.0.2/32]}}]}"
        }
        "to.operation.hosts" => "{to: [{operation: {hosts: [a.example-target.com]}}]}",
        "to.operation.notHosts" => "{to: [{operation: {notHosts: [b.example-target.com]}}]}",
        "to.operation.ports" => r#"{to: [{operation: {ports: ["443"]}}]}"#,
        "to.operation.notPorts" => r#"{to: [{operation: {notPorts: ["8443"]}}]}"#,
        "to.operation.methods" => "{to: [{operation: {methods: [GET]}}]}",
        "to.operation.notMethods" => "{to: [{operation: {notMethods: [POST]}}]}",
        "to.operation.paths" => r#"{to: [{operation: {paths: ["/a"]}}]}"#,
        "to.operation.notPaths" => r#"{to: [{operation: {notPaths: ["/b"]}}]}"#,
        "when.source.principal" => {
            r#"{when: [{key: source.principal, values: ["example.com/ns/team-a/sa/alpha"]}]}"#
        }
        "when.source.namespace" => "{when: [{key: source.namespace, values: [team-a]}]}",
        "when.source.serviceAccount" => {
            "{when: [{key: source.serviceAccount, values: [team-a/alpha]}]}"
        }
        "when.source.ip" => "{when: [{key: source.ip, values: [127.0.0.1]}]}",
        "when.remote.ip" => "{when: [{key: remote.ip, values: [127.0.0.0/31]}]}",
        "when.destination.ip" => "{when: [{key: destination.ip, values: [127.0.0.1]}]}",
        "when.destination.port" => r#"{when: [{key: destination.port, values: ["443"]}]}"#,
        "when.request.headers[NAME]" => {
            r#"{when: [{key: "request.headers[x-probe]", values: [a]}]}"#
        }
        "when.connection.sni" => "{when: [{key: connection.sni, values: [a.example-target.com]}]}",
        _ => return None,
    })
}

/// A gateway on every local address, ports 443 and 8443, routing everything to an echo.
fn probe_gateway(backend: SocketAddr, rule: &str) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: target-gateway, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  listen: {{address: 0.0.0.0, portOverrides: {{443: 0, 8443: 0}}}}
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
  - port: {{number: 8443, name: https-alt, protocol: HTTPS}}
    hosts: ["*.example-target.com"]
    tls: {{mode: ISTIO_MUTUAL}}
{routes}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: probe, namespace: istio-system}}
spec:
  action: DENY
  rules: [{rule}]
"#,
        routes = routes(backend)
    )
}

async fn send(pki: &Pki, proxy: &Proxy, p: Probe) -> StatusCode {
    let caller = pki.workload(p.caller.0, p.caller.1);
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let port = proxy.addr(p.port).port();
    let to = SocketAddr::new(p.to.parse().unwrap(), port);
    let from: IpAddr = p.from.parse().unwrap();
    let tls = client.connect_from(from, to, p.sni).await.unwrap();
    let (mut conn, _task) = Conn::open(tls, false).await.unwrap();
    let method = Method::from_bytes(p.method.as_bytes()).unwrap();
    let response = tokio::time::timeout(
        TIMEOUT,
        conn.request(method, p.authority, p.path, &[("x-probe", p.header)]),
    )
    .await
    .unwrap()
    .unwrap();
    response.status()
}

#[tokio::test]
async fn every_policy_field_denies_what_it_names() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let identity = pki.workload("example-target.com", GATEWAY_ID);
    let missing: Vec<_> = SUPPORTED_FIELDS
        .iter()
        .filter(|f| rule_for(f).is_none())
        .collect();
    assert!(missing.is_empty(), "fields without a case: {missing:?}");
    for field in SUPPORTED_FIELDS {
        let rule = rule_for(field).unwrap();
        let proxy = Proxy::start(&probe_gateway(backend.address, rule), &identity).await;
        assert_eq!(
            send(&pki, &proxy, A).await,
            StatusCode::FORBIDDEN,
            "{field}: A"
        );
        assert_eq!(send(&pki, &proxy, B).await, StatusCode::OK, "{field}: B");
    }
}

#[tokio::test]
async fn a_policy_typo_at_reload_keeps_the_old_policies_serving() {
    let s = Setup::new(DENY_ADMIN_PATHS).await;
    let config = s.proxy.dir.path().join("config.yaml");
    let original = std::fs::read_to_string(&config).unwrap();
    let typo = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-partners, namespace: istio-system}
spec:
  action: DENY
  rules: [{when: [{key: source.ip, values: [127.0.0.0/33]}]}]
"#;
    std::fs::write(&config, format!("{original}{typo}")).unwrap();
    meshgate_proxy::reload::reload(&s.proxy.running, std::slice::from_ref(&config)).await;
    assert!(s
        .proxy
        .running
        .metrics
        .render()
        .contains("meshgate_config_reloads_total{result=\"failure\"} 1"));
    assert_eq!(
        s.get(false, HOST, "/admin/x", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.get(false, HOST, "/public", &[]).await.status,
        StatusCode::OK
    );

    // Corrected, it takes effect.
    std::fs::write(&config, format!("{original}{}", typo.replace("/33", "/8"))).unwrap();
    meshgate_proxy::reload::reload(&s.proxy.running, std::slice::from_ref(&config)).await;
    assert_eq!(
        s.get(false, HOST, "/public", &[]).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_fault_not_the_upstreams() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let yaml = gateway_yaml(&routes(backend.address)).replacen(
        "  listen:",
        "  accessLog: {path: access.log}\n  listen:",
        1,
    );
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let caller = pki.workload("example.com", CALLER);
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    // A chunk size that is not hex, to an HTTP/1.1 and an HTTP/2 backend.
    for host in [HOST, H2_HOST] {
        let mut tls = client.connect(proxy.addr(443), HOST).await.unwrap();
        let request = format!(
            "POST / HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut out))
            .await
            .expect("an answer in time")
            .ok();
        let r = RawReply::parse(&out);
        assert_eq!(r.status, 400, "{host}: {}", String::from_utf8_lossy(&out));
        assert_eq!(r.body, "bad request body\n", "{host}");
    }
    // A body cut short: ten of a hundred bytes, then the client closes its side.
    let mut tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    tls.write_all(
        format!("POST / HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 100\r\n\r\n0123456789")
            .as_bytes(),
    )
    .await
    .unwrap();
    tls.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut out)).await;
    let log = support::json_lines(&proxy.dir.path().join("access.log"), 3).await;
    for line in &log[..2] {
        assert_eq!(line["status"], 400, "{line}");
        assert_eq!(line["response_flags"], "DPE", "{line}");
    }
    assert_eq!(log[2]["response_flags"], "DC", "{}", log[2]);
    // None of it is an upstream's failure.
    let metrics = proxy.running.metrics.render();
    assert!(!metrics.contains("code=\"503\""), "{metrics}");
}

const ADMIN: &str = "spiffe://example-target.com/ns/istio-system/sa/admin";

/// Splits `s` on `sep` outside double quotes (a backslash escapes the next character).
fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == '"' {
            cur.push(c);
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// An XFCC header as a backend reads it by Envoy's rules: elements of (key, unquoted value).
fn parse_xfcc(header: &str) -> Vec<Vec<(String, String)>> {
    split_unquoted(header, ',')
        .into_iter()
        .map(|element| {
            split_unquoted(&element, ';')
                .into_iter()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((&pair, ""));
                    let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
                        None => v.to_string(),
                    };
                    (k.to_ascii_lowercase(), v)
                })
                .collect()
        })
        .collect()
}

/// example.com's CA, bound by issuer binding to example.com only, issues one of its own
/// workloads a leaf whose DNS SANs hold XFCC syntax. The gateway accepts it (a valid
/// example.com SVID), and XFCC must carry the names as values: a backend that reads XFCC by
/// Envoy's rules must find no second URI and no second element naming a workload of the local
/// mesh, the identity issuer binding stops that CA from asserting.
#[tokio::test]
async fn dns_names_cannot_add_fields_or_elements_to_xfcc() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();

    let dir = support::TempDir::new("xfcc-names");
    let trust = pki.issuer_binding(dir.path());
    let yaml = gateway_yaml(&route_to(HOST, backend.address)).replacen(
        "  listen:",
        &format!("{trust}  listen:"),
        1,
    );
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;

    let in_element = format!("sleep.example.com;URI={ADMIN}");
    let new_element = format!("x.example.com,By={GATEWAY_ID};Hash=00;Subject=\"\";URI={ADMIN}");
    let mut spec = LeafSpec::spiffe(CALLER);
    spec.dns = vec![in_element.clone(), new_element.clone()];
    let caller = pki.leaf("example.com", &spec);
    let client = Client::plain(Some(&caller), &pki.root.cert_pem);

    let reply = client
        .get(proxy.addr(443), HOST, HOST, "/get", &[])
        .await
        .expect("a valid example.com SVID is accepted");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.echoed("x-source-principal").as_deref(),
        Some(&CALLER[9..])
    );
    let xfcc = reply.echoed("x-forwarded-client-cert").unwrap();

    let elements = parse_xfcc(&xfcc);
    assert_eq!(
        elements.len(),
        1,
        "one connection, one XFCC element; the backend reads {}: {xfcc}",
        elements.len()
    );
    let values = |key: &str| -> Vec<String> {
        elements
            .iter()
            .flatten()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        values("uri"),
        [CALLER],
        "URIs the backend reads from {xfcc}"
    );
    assert_eq!(
        values("by"),
        [GATEWAY_ID],
        "By the backend reads from {xfcc}"
    );
    assert_eq!(
        values("dns"),
        [in_element, new_element],
        "DNS names the backend reads from {xfcc}"
    );
}

/// An upstream's trailers reach the client without what no trailer may carry on: the
/// hop-by-hop fields, those its `Connection` names, and `Content-Length`. Over HTTP/2 a stream
/// whose trailers held one would be reset instead.
#[tokio::test]
async fn response_trailers_lose_what_no_trailer_may_carry() {
    let backend = support::proxy::abrupt_backend(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-ok\r\n\r\n\
         5\r\nhello\r\n0\r\nx-ok: 1\r\nconnection: x-named\r\nx-named: 1\r\n\
         keep-alive: timeout=5\r\ncontent-length: 5\r\n\r\n",
    )
    .await;
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let yaml = gateway_yaml(&route_to(HOST, backend));
    let proxy = Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let caller = pki.workload("example.com", CALLER);
    let tls = Client::new(Some(&caller), &pki.root.cert_pem, &[b"h2"])
        .connect(proxy.addr(443), HOST)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://{HOST}/"))
        .version(Version::HTTP_2)
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(TIMEOUT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(TIMEOUT, http_body_util::BodyExt::collect(response))
        .await
        .unwrap()
        .expect("the stream ends cleanly");
    let trailers = body.trailers().cloned().expect("trailers");
    let body = body.to_bytes();
    assert_eq!(&body[..], b"hello");
    assert_eq!(trailers["x-ok"], "1");
    for name in ["connection", "x-named", "keep-alive", "content-length"] {
        assert!(!trailers.contains_key(name), "{name} in {trailers:?}");
    }
}

/// `request.headers[host]` is the request's authority (Envoy reads the `host` name as
/// `:authority`), over HTTP/1.1 and HTTP/2 alike: HTTP/2 has no `Host` field to read, and the
/// choice of protocol must not get a request past a DENY policy.
#[tokio::test]
async fn a_host_condition_reads_the_authority_over_both_protocols() {
    let s = Setup::new(
        r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-host, namespace: istio-system}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[host]", values: [admin.example-target.com]}]}]
"#,
    )
    .await;
    let admin = "admin.example-target.com";
    let r = s.get(false, admin, "/", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "HTTP/1.1");
    let r = s.get(false, "ADMIN.example-target.com.", "/", &[]).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "HTTP/1.1, another spelling"
    );
    // A control: another host passes over HTTP/2.
    let r = s.get(true, "allowed.example-target.com", "/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.get(true, admin, "/", &[]).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "HTTP/2 to {admin} passed the DENY policy; the backend saw authority {:?}",
        r.json()["headers"]["host"]
    );
}

/// A client that repeats a header chooses which copy a policy would read, and the backend may
/// read another: an ALLOW condition must hold for every copy, and a DENY condition holds when
/// any copy matches.
#[tokio::test]
async fn repeated_headers_are_read_against_the_request() {
    let policy = |name: &str, action: &str, header: &str, value: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: istio-system}}\n\
             spec:\n  action: {action}\n  \
             rules: [{{when: [{{key: \"request.headers[{header}]\", values: [{value}]}}]}}]\n"
        )
    };
    let (ok, denied) = (StatusCode::OK, StatusCode::FORBIDDEN);
    // The requests under one policy: their headers and the status each must get.
    type Requests<'a> = Vec<(Vec<(&'a str, &'a str)>, StatusCode)>;
    let cases: [(String, Requests); 2] = [
        (
            policy("blue-only", "ALLOW", "x-tenant", "blue"),
            vec![
                (vec![("x-tenant", "blue")], ok),
                (vec![("x-tenant", "red")], denied),
                (vec![("x-tenant", "blue"), ("x-tenant", "red")], denied),
                (vec![("x-tenant", "blue"), ("x-tenant", "blue")], ok),
            ],
        ),
        (
            policy("no-admins", "DENY", "x-role", "admin"),
            vec![
                (vec![("x-role", "user")], ok),
                (vec![("x-role", "user"), ("x-role", "admin")], denied),
            ],
        ),
    ];
    for (yaml, requests) in cases {
        let s = Setup::new(&yaml).await;
        for h2 in [false, true] {
            for (headers, want) in &requests {
                let r = s.get(h2, HOST, "/", headers).await;
                assert_eq!(r.status, *want, "h2={h2}, {headers:?} under\n{yaml}");
            }
        }
    }
}
