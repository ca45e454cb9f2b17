//! Istio routing through the gateway: routes by mesh origin, weighted destinations, direct
//! responses, rewrites and header operations, and the statuses the proxy makes itself.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::client::Client;
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, Proxy};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

fn service_entry(name: &str, port: u16) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#
    )
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    pki: Pki,
    proxy: Proxy,
    local_pool: meshgate_proxy::echo::Echo,
    remote_pool: meshgate_proxy::echo::Echo,
}

impl Setup {
    async fn new() -> Self {
        let pki = Pki::new(&["example-target.com", "example.com"]);
        let local_pool = echo();
        let remote_pool = echo();
        let vs = format!(
            r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [istio-system/multi-mesh-gateway]
  http:
  - name: by-origin
    match: [{{uri: {{prefix: /origin}}, headers: {{x-mesh-origin: {{exact: remote}}}}}}]
    route: [{{destination: {{host: remote-pool.internal, port: {{number: 80}}}}}}]
  - name: origin-local
    match: [{{uri: {{prefix: /origin}}}}]
    route: [{{destination: {{host: local-pool.internal, port: {{number: 80}}}}}}]
  - name: weighted
    match: [{{uri: {{prefix: /weighted}}}}]
    route:
    - {{destination: {{host: local-pool.internal}}, weight: 75}}
    - {{destination: {{host: remote-pool.internal}}, weight: 25}}
  - name: direct
    match: [{{uri: {{exact: /health}}}}]
    directResponse: {{status: 418, body: {{string: "short and stout"}}}}
    headers: {{response: {{set: {{x-direct: "yes"}}}}}}
  - name: rewritten
    match: [{{uri: {{prefix: /api/v1/}}}}]
    rewrite: {{uri: /v2/, authority: backend.internal}}
    headers:
      request: {{set: {{x-added: "1", x-path-received: "%REQ(:path)%"}}, remove: [x-secret]}}
      response:
        add: {{x-served-by: meshgate}}
        set: {{x-path-sent: "%REQ(:path)%", x-authority-sent: "%REQ(:authority)%"}}
    route: [{{destination: {{host: local-pool.internal}}}}]
  - name: commands
    match: [{{uri: {{prefix: /commands}}}}]
    headers:
      request:
        set:
          x-client: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
          x-peer: "%DOWNSTREAM_PEER_URI_SAN%"
          x-protocol: "%PROTOCOL%"
          x-request-start: "t=%START_TIME(%s.%3f)%"
          x-copied: "%REQ(x-request-id)%"
          x-share: "100%%"
          x-missing: "%REQ(x-not-sent)%"
          x-blank: ""
        add: {{x-local-port: "%DOWNSTREAM_LOCAL_PORT%", x-authority: "%REQ(:authority)%"}}
      response:
        set: {{x-echo-id: "%REQ(x-request-id)%", x-seen-copied: "%REQ(x-copied):2%"}}
    route: [{{destination: {{host: local-pool.internal}}}}]
  - name: one-destination
    match: [{{uri: {{prefix: /one-destination}}}}]
    headers:
      request: {{set: {{x-level: rule, x-rule: "1"}}}}
      response: {{set: {{x-level: rule}}}}
    route:
    - destination: {{host: local-pool.internal}}
      headers:
        request: {{set: {{x-level: destination}}, remove: [x-rule]}}
        response: {{set: {{x-level: destination}}, add: {{x-destination: local}}}}
  - name: one-weighted
    match: [{{uri: {{prefix: /one-weighted}}}}]
    headers:
      request: {{set: {{x-level: rule}}}}
    route:
    - destination: {{host: local-pool.internal}}
      weight: 100
      headers: {{request: {{set: {{x-level: destination}}}}}}
    - destination: {{host: remote-pool.internal}}
      weight: 0
      headers: {{request: {{set: {{x-destination: remote}}}}}}
  - name: two-destinations
    match: [{{uri: {{prefix: /two-destinations}}}}]
    headers:
      request: {{set: {{x-level: rule}}}}
      response: {{set: {{x-level: rule}}}}
    route:
    - destination: {{host: local-pool.internal}}
      weight: 50
      headers:
        request: {{set: {{x-level: destination, x-destination: local}}}}
        response: {{set: {{x-level: destination}}, add: {{x-destination: "%REQ(x-destination)%"}}}}
    - destination: {{host: remote-pool.internal}}
      weight: 50
      headers:
        request: {{set: {{x-level: destination, x-destination: remote}}}}
        response: {{add: {{x-destination: "%REQ(x-destination)%"}}}}
  - name: delayed-commands
    match: [{{uri: {{prefix: /delayed-commands}}}}]
    fault: {{delay: {{fixedDelay: 1s, percentage: {{value: 100}}}}}}
    headers: {{request: {{set: {{x-request-start: "%START_TIME(%s.%3f)%"}}}}}}
    route: [{{destination: {{host: local-pool.internal}}}}]
  - name: scheme-http
    match: [{{uri: {{prefix: /scheme}}, scheme: {{exact: http}}}}]
    directResponse: {{status: 200, body: {{string: plaintext}}}}
  - name: scheme-https
    match: [{{uri: {{prefix: /scheme}}, scheme: {{prefix: https}}}}]
    directResponse: {{status: 200, body: {{string: tls}}}}
  - name: refused
    match: [{{uri: {{prefix: /refused}}}}]
    route: [{{destination: {{host: nowhere.internal}}}}]
  - name: slow
    match: [{{uri: {{prefix: /delay}}}}]
    timeout: 200ms
    route: [{{destination: {{host: local-pool.internal}}}}]
"#
        );
        let extra = format!(
            "{vs}{}{}{}",
            service_entry("local-pool", local_pool.address.port()),
            service_entry("remote-pool", remote_pool.address.port()),
            service_entry("nowhere", closed_port()),
        );
        let proxy = Proxy::start(
            &gateway_yaml(&extra),
            &pki.workload("example-target.com", GATEWAY_ID),
        )
        .await;
        Self {
            pki,
            proxy,
            local_pool,
            remote_pool,
        }
    }

    fn client(&self, mesh: &str) -> Client {
        let id = format!("spiffe://{mesh}/ns/default/sa/app");
        Client::plain(Some(&self.pki.workload(mesh, &id)), &self.pki.root.cert_pem)
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr(443)
    }
}

#[tokio::test]
async fn routes_by_mesh_origin() {
    let s = Setup::new().await;
    let local = s
        .client("example-target.com")
        .get(s.addr(), HOST, HOST, "/origin", &[])
        .await
        .unwrap();
    assert_eq!(local.json()["server"], s.local_pool.address.to_string());
    let remote = s
        .client("example.com")
        .get(s.addr(), HOST, HOST, "/origin", &[])
        .await
        .unwrap();
    assert_eq!(remote.json()["server"], s.remote_pool.address.to_string());
    // A local caller claiming to be remote is routed by what the proxy knows, not what it sent.
    let spoofed = s
        .client("example-target.com")
        .get(
            s.addr(),
            HOST,
            HOST,
            "/origin",
            &[("x-mesh-origin", "remote")],
        )
        .await
        .unwrap();
    assert_eq!(spoofed.json()["server"], s.local_pool.address.to_string());
}

#[tokio::test]
async fn weighted_destinations_share_traffic() {
    let s = Setup::new().await;
    let client = s.client("example-target.com");
    let mut local = 0;
    let n = 200;
    for _ in 0..n {
        let reply = client
            .get(s.addr(), HOST, HOST, "/weighted", &[])
            .await
            .unwrap();
        if reply.json()["server"] == s.local_pool.address.to_string() {
            local += 1;
        }
    }
    // 150 expected (75%); the bounds are about five standard deviations (6.1) either way.
    assert!(
        (120..=180).contains(&local),
        "{local} of {n} went to the 75% destination"
    );
}

#[tokio::test]
async fn direct_responses_rewrites_and_header_operations() {
    let s = Setup::new().await;
    let client = s.client("example.com");
    let direct = client
        .get(s.addr(), HOST, HOST, "/health", &[])
        .await
        .unwrap();
    assert_eq!(direct.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(&direct.body[..], b"short and stout");
    assert_eq!(direct.headers["x-direct"], "yes");

    let rewritten = client
        .get(
            s.addr(),
            HOST,
            HOST,
            "/api/v1/items?page=2",
            &[("x-secret", "s3cr3t")],
        )
        .await
        .unwrap();
    assert_eq!(rewritten.json()["path"], "/v2/items?page=2");
    assert_eq!(
        rewritten.echoed("host").as_deref(),
        Some("backend.internal")
    );
    assert_eq!(rewritten.echoed("x-added").as_deref(), Some("1"));
    assert!(rewritten.json()["headers"].get("x-secret").is_none());
    assert_eq!(rewritten.headers["x-served-by"], "meshgate");
    // As in Envoy: request values read the request as received, response values read it as
    // it was sent, after the rewrites.
    assert_eq!(
        rewritten.echoed("x-path-received").as_deref(),
        Some("/api/v1/items?page=2")
    );
    assert_eq!(rewritten.headers["x-path-sent"], "/v2/items?page=2");
    assert_eq!(rewritten.headers["x-authority-sent"], "backend.internal");
}

/// Envoy's command operators in header values are rendered for each request, from what the
/// proxy knows of it: the verified peer, the connection, the request's head as routed.
#[tokio::test]
async fn header_values_render_envoy_command_operators() {
    let s = Setup::new().await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let r = s
        .client("example.com")
        .get(
            s.addr(),
            HOST,
            HOST,
            "/commands",
            &[("x-request-id", "abc-123"), ("x-peer", "spiffe://forged")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echoed("x-client").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        r.echoed("x-peer").as_deref(),
        Some("spiffe://example.com/ns/default/sa/app")
    );
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.echoed("x-protocol").as_deref(), Some("HTTP/2"));
    assert_eq!(r.echoed("x-copied").as_deref(), Some("abc-123"));
    assert_eq!(r.echoed("x-share").as_deref(), Some("100%"));
    assert_eq!(r.echoed("x-authority").as_deref(), Some(HOST));
    let port = s.addr().port().to_string();
    assert_eq!(r.echoed("x-local-port"), Some(port));
    // Rendered empty, or empty as written: left out, as Envoy leaves it.
    assert!(r.json()["headers"].get("x-missing").is_none());
    assert!(r.json()["headers"].get("x-blank").is_none());
    let start = r.echoed("x-request-start").unwrap();
    let (secs, millis) = start.strip_prefix("t=").unwrap().split_once('.').unwrap();
    assert_eq!(millis.len(), 3, "{start}");
    let at: f64 = format!("{secs}.{millis}").parse().unwrap();
    assert!(
        at >= before.floor() && at < before + 60.0,
        "{start} against {before}"
    );
    // The response's values read the request as the route left it.
    assert_eq!(r.headers["x-echo-id"], "abc-123");
    assert_eq!(r.headers["x-seen-copied"], "ab");

    // The start is when the request came, not when a fault's delay let it go on.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let r = s
        .client("example.com")
        .get(s.addr(), HOST, HOST, "/delayed-commands", &[])
        .await
        .unwrap();
    let start: f64 = r.echoed("x-request-start").unwrap().parse().unwrap();
    assert!(start < before + 0.5, "started {start}, sent at {before}");
}

/// `match.scheme` reads Envoy's `:scheme`: `https` for a request that came over TLS.
#[tokio::test]
async fn scheme_matches_read_the_request_scheme() {
    let s = Setup::new().await;
    let r = s
        .client("example.com")
        .get(s.addr(), HOST, HOST, "/scheme", &[])
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"tls");
    // HTTP/1.1 carries no scheme: the connection's.
    let caller = s
        .pki
        .workload("example.com", "spiffe://example.com/ns/default/sa/app");
    let h1 = Client::new(Some(&caller), &s.pki.root.cert_pem, &[b"http/1.1"]);
    let r = h1.get(s.addr(), HOST, HOST, "/scheme", &[]).await.unwrap();
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(&r.body[..], b"tls");
}

/// A destination's own `headers`, as Istio hands them to Envoy: a lone destination's join its
/// rule's as one level (removals first, the destination's `set` last), while each of several
/// destinations is a weighted cluster, applied before the rule's, which win.
#[tokio::test]
async fn destination_headers_apply_as_istio_orders_them() {
    let s = Setup::new().await;
    let client = s.client("example.com");
    let one = client
        .get(
            s.addr(),
            HOST,
            HOST,
            "/one-destination",
            &[("x-rule", "sent")],
        )
        .await
        .unwrap();
    assert_eq!(one.echoed("x-level").as_deref(), Some("destination"));
    // One level: the removal ran before the rule's own `set`.
    assert_eq!(one.echoed("x-rule").as_deref(), Some("1"));
    assert_eq!(one.headers["x-level"], "destination");
    assert_eq!(one.headers["x-destination"], "local");

    // Two destinations, one of weight 0: still a weighted cluster in Istio (only a rule's
    // lone destination joins its level), so the rule's `set` wins.
    let one = client
        .get(s.addr(), HOST, HOST, "/one-weighted", &[])
        .await
        .unwrap();
    assert_eq!(one.json()["server"], s.local_pool.address.to_string());
    assert_eq!(one.echoed("x-level").as_deref(), Some("rule"));
    assert!(one.json()["headers"].get("x-destination").is_none());

    // Several destinations: whichever answers, its own operations ran first and the rule's won.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let two = client
            .get(s.addr(), HOST, HOST, "/two-destinations", &[])
            .await
            .unwrap();
        let server = two.json()["server"].as_str().unwrap().to_string();
        let which = if server == s.local_pool.address.to_string() {
            "local"
        } else {
            assert_eq!(server, s.remote_pool.address.to_string());
            "remote"
        };
        seen.insert(which);
        assert_eq!(two.echoed("x-level").as_deref(), Some("rule"));
        assert_eq!(two.echoed("x-destination").as_deref(), Some(which));
        assert_eq!(two.headers["x-level"], "rule");
        // The destination's response values read the request as its operations left it.
        assert_eq!(two.headers["x-destination"], which);
    }
    assert_eq!(
        seen.len(),
        2,
        "40 requests at 50/50 reached one destination only"
    );
}

#[tokio::test]
async fn statuses_the_proxy_makes_itself() {
    let s = Setup::new().await;
    let client = s.client("example.com");
    // A host the Gateway serves but no VirtualService routes.
    let r = client
        .get(s.addr(), HOST, "other.example-target.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A host the Gateway does not serve at all (SNI of a served host, so the handshake passes).
    let r = client
        .get(s.addr(), HOST, "httpbin.example.org", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = client
        .get(s.addr(), HOST, HOST, "/refused", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&r.body[..], b"upstream connect error\n");
    let r = client
        .get(s.addr(), HOST, HOST, "/delay/3000", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let metrics = s.proxy.running.metrics.render();
    for code in ["404\"} 2", "503\"} 1", "504\"} 1"] {
        assert!(metrics.contains(code), "{code} not counted:\n{metrics}");
    }
}

#[tokio::test]
async fn a_request_without_host_is_a_400() {
    let s = Setup::new().await;
    let caller = s
        .pki
        .workload("example.com", "spiffe://example.com/ns/default/sa/app");
    let client = Client::new(Some(&caller), &s.pki.root.cert_pem, &[b"http/1.1"]);
    let addr = s.addr();
    // Raw HTTP/1.1 with no Host header, over a real TLS connection.
    let mut tls = client.connect(addr, HOST).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(support::TIMEOUT, tls.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    let response = String::from_utf8_lossy(&out);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[tokio::test]
async fn rewrite_uri_replaces_the_prefix_of_the_match_that_selected_the_route() {
    let pki = Pki::new(&["example-target.com"]);
    let backend = echo();
    let vs = format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: rewrites, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [istio-system/multi-mesh-gateway]
  http:
  - match:
    - {{uri: {{prefix: /api/}}, headers: {{x-version: {{exact: "2"}}}}}}
    - {{uri: {{prefix: /api/v1/}}}}
    - {{uri: {{exact: /legacy}}}}
    rewrite: {{uri: /new/}}
    route: [{{destination: {{host: echo.internal}}}}]
  - match: [{{headers: {{x-any: {{exact: "1"}}}}}}]
    rewrite: {{uri: /v2/}}
    route: [{{destination: {{host: echo.internal}}}}]
  - match: [{{uri: {{prefix: /Case/}}, ignoreUriCase: true}}]
    rewrite: {{uri: /cased/}}
    route: [{{destination: {{host: echo.internal}}}}]
  - match: [{{uri: {{prefix: /service/}}}}]
    rewrite: {{uriRegexRewrite: {{match: '^/service/([^/]+)(/.*)$', rewrite: '/customprefix\2/\1'}}}}
    route: [{{destination: {{host: echo.internal}}}}]
  - match: [{{uri: {{prefix: /every/}}}}]
    rewrite: {{uriRegexRewrite: {{match: '/v1(/|$)', rewrite: '/v2\1'}}}}
    route: [{{destination: {{host: echo.internal}}}}]
{}"#,
        service_entry("echo", backend.address.port())
    );
    let proxy = Proxy::start(
        &gateway_yaml(&vs),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await;
    let caller = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/default/sa/app",
    );
    let client = Client::plain(Some(&caller), &pki.root.cert_pem);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 10] = [
        // The second match selected the route: its prefix goes, not the first one's.
        ("/api/v1/items?x=1", &[], "/new/items?x=1"),
        ("/api/v1/items", &[("x-version", "2")], "/new/v1/items"),
        // An exact match has its whole path replaced.
        ("/legacy", &[], "/new/"),
        // A match without a uri is Envoy's prefix `/`: only the leading slash goes.
        ("/foo/bar", &[("x-any", "1")], "/v2/foo/bar"),
        ("/", &[("x-any", "1")], "/v2/"),
        // With ignoreUriCase, the prefix goes in whatever case the path has it.
        ("/CASE/x", &[], "/cased/x"),
        // uriRegexRewrite: groups, the path alone (the query kept), every match replaced.
        (
            "/service/orders/list?page=2",
            &[],
            "/customprefix/list/orders?page=2",
        ),
        ("/every/v1/a/v1?q=/v1/", &[], "/every/v2/a/v2?q=/v1/"),
        ("/every/v1x/v1/", &[], "/every/v1x/v2/"),
        // No match: the path as it was.
        ("/service/", &[], "/service/"),
    ];
    for (path, headers, want) in cases {
        let r = client
            .get(proxy.addr(443), HOST, HOST, path, headers)
            .await
            .unwrap();
        assert_eq!(r.json()["path"], want, "{path} {headers:?}");
    }
}

/// A Gateway's VirtualService that delegates a path to another team's VirtualService, as
/// istiod merges them: requests go by the delegate's rules within the root's match, the root's
/// settings apply where the delegate sets none, and a delegate that is missing leaves its rule
/// out while the rest of the VirtualService serves.
#[tokio::test]
async fn delegated_rules_route_within_the_root_match() {
    let pki = Pki::new(&["example-target.com"]);
    let shop = echo();
    let shop_v2 = echo();
    let yaml = format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: root, namespace: default}}
spec:
  hosts: ["{HOST}"]
  gateways: [istio-system/multi-mesh-gateway]
  http:
  - name: shop
    match: [{{uri: {{prefix: /shop}}}}]
    headers: {{response: {{set: {{x-root: "yes"}}}}}}
    delegate: {{name: shop, namespace: team-a}}
  - match: [{{uri: {{prefix: /gone}}}}]
    delegate: {{name: nothing}}
  - directResponse: {{status: 200, body: {{string: fallback}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: team-a}}
spec:
  http:
  - name: v2
    match: [{{uri: {{prefix: /shop/v2}}}}]
    headers: {{response: {{set: {{x-leaf: v2}}}}}}
    route: [{{destination: {{host: shop-v2.internal}}}}]
  - match: [{{uri: {{prefix: /elsewhere}}}}]
    route: [{{destination: {{host: shop-v2.internal}}}}]
  - route: [{{destination: {{host: shop.internal}}}}]
{}{}"#,
        service_entry("shop", shop.address.port()),
        service_entry("shop-v2", shop_v2.address.port()),
    );
    let proxy = Proxy::start(
        &gateway_yaml(&yaml),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await;
    let caller = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/default/sa/app",
    );
    let client = Client::plain(Some(&caller), &pki.root.cert_pem);
    let get = |path: &'static str| client.get(proxy.addr(443), HOST, HOST, path, &[]);

    let v2 = get("/shop/v2/cart").await.unwrap();
    assert_eq!(v2.json()["server"], shop_v2.address.to_string());
    // The delegate's own headers replace the root's.
    assert_eq!(v2.headers["x-leaf"], "v2");
    assert!(v2.headers.get("x-root").is_none());

    let rest = get("/shop/items").await.unwrap();
    assert_eq!(rest.json()["server"], shop.address.to_string());
    assert_eq!(rest.headers["x-root"], "yes");

    // Outside the root's match the delegate's rules do not apply, even one that names the path.
    for path in ["/elsewhere", "/gone/x", "/"] {
        let r = get(path).await.unwrap();
        assert_eq!(&r.body[..], b"fallback", "{path}");
    }
}
