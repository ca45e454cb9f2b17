use http::{HeaderMap, HeaderValue, Method};

use super::*;
use meshgate_config::model::RouteAction;

const CONFIG: &str = r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {name: gw, namespace: istio-system}
spec:
  labels: {istio: ingressgateway}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*.example.com", "exact.other.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wildcard, namespace: istio-system}
spec:
  hosts: ["*.example.com"]
  gateways: [gw]
  http:
  - name: admin-host
    match: [{headers: {host: {prefix: admin.}}}]
    directResponse: {status: 200, body: {string: admin-host}}
  - name: wildcard
    directResponse: {status: 200, body: {string: wildcard}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: exact, namespace: istio-system}
spec:
  hosts: ["api.example.com"]
  gateways: [istio-system/gw]
  http:
  - name: remote-only
    match: [{headers: {x-mesh-origin: {exact: remote}}}]
    directResponse: {status: 200, body: {string: remote}}
  - name: admin-prefix
    match: [{uri: {prefix: /admin}, method: {exact: POST}}]
    directResponse: {status: 200, body: {string: admin}}
  - name: regex
    match: [{uri: {regex: "/v[0-9]+/items"}}]
    directResponse: {status: 200, body: {string: regex}}
  - name: no-debug
    match: [{uri: {exact: /debug}, withoutHeaders: {x-debug: {}}}]
    directResponse: {status: 200, body: {string: no-debug}}
  - name: port
    match: [{port: 9999}]
    directResponse: {status: 200, body: {string: port}}
  - name: authority-port
    match: [{authority: {exact: "api.example.com:9443"}}]
    directResponse: {status: 200, body: {string: authority-port}}
  - name: authority
    match: [{authority: {exact: "api.example.com"}, uri: {exact: /exact-authority}}]
    directResponse: {status: 200, body: {string: authority}}
  - name: case-prefix
    match: [{uri: {prefix: /Case/}, ignoreUriCase: true}]
    directResponse: {status: 200, body: {string: case-prefix}}
  - name: case-exact
    match: [{uri: {exact: /Exact-Path}, ignoreUriCase: true}]
    directResponse: {status: 200, body: {string: case-exact}}
  - name: case-regex
    match: [{uri: {regex: "/Rx/[a-z]+"}, ignoreUriCase: true}]
    directResponse: {status: 200, body: {string: case-regex}}
  - name: query-exact
    match: [{uri: {prefix: /q}, queryParams: {version: {exact: v2}}}]
    directResponse: {status: 200, body: {string: query-exact}}
  - name: query-regex
    match: [{uri: {prefix: /q}, queryParams: {id: {regex: "[0-9]+"}}}]
    directResponse: {status: 200, body: {string: query-regex}}
  - name: query-present
    match: [{uri: {prefix: /q}, queryParams: {debug: {}}}]
    directResponse: {status: 200, body: {string: query-present}}
  - name: query-empty
    match: [{uri: {prefix: /q}, queryParams: {flag: {exact: ""}}}]
    directResponse: {status: 200, body: {string: query-empty}}
  - name: fallback
    directResponse: {status: 200, body: {string: fallback}}
"#;

fn listener() -> meshgate_config::model::Listener {
    let mut model = meshgate_config::load_str("route.yaml", CONFIG).unwrap();
    model.listeners.remove(0)
}

fn name(
    l: &meshgate_config::model::Listener,
    method: Method,
    path: &str,
    authority: &str,
    headers: &[(&'static str, &'static str)],
) -> Option<String> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(*k, HeaderValue::from_static(v));
    }
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let req = RouteRequest {
        input: MatchInput {
            method: &method,
            path,
            query,
            full_authority: authority,
            scheme: "https",
            headers: &h,
        },
        authority: strip_port(authority),
        port: 8080,
    };
    route(l, None, &req).map(|r| match &r.route.action {
        RouteAction::Direct(d) => String::from_utf8(d.body.to_vec()).unwrap(),
        RouteAction::Forward(_) => "forward".into(),
        RouteAction::Redirect(_) => "redirect".into(),
    })
}

/// Method, path, authority, headers, the route chosen.
type Case<'a> = (
    Method,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
);

#[test]
fn istio_route_selection() {
    let l = listener();
    let cases: &[Case] = &[
        (Method::GET, "/", "www.example.com", &[], Some("wildcard")),
        (Method::GET, "/", "WWW.Example.COM", &[], Some("wildcard")),
        // A header match on `host` reads the authority, which HTTP/2 carries in no field.
        (
            Method::GET,
            "/",
            "admin.example.com",
            &[],
            Some("admin-host"),
        ),
        (
            Method::GET,
            "/",
            "www.example.com",
            &[("host", "admin.example.com")],
            Some("wildcard"),
        ),
        (Method::GET, "/", "api.example.com", &[], Some("fallback")),
        (
            Method::GET,
            "/",
            "api.example.com",
            &[("x-mesh-origin", "remote")],
            Some("remote"),
        ),
        (
            Method::GET,
            "/",
            "api.example.com",
            &[("x-mesh-origin", "local")],
            Some("fallback"),
        ),
        (
            Method::POST,
            "/admin/users",
            "api.example.com",
            &[],
            Some("admin"),
        ),
        (
            Method::GET,
            "/admin/users",
            "api.example.com",
            &[],
            Some("fallback"),
        ),
        (
            Method::GET,
            "/v12/items",
            "api.example.com",
            &[],
            Some("regex"),
        ),
        (
            Method::GET,
            "/v12/items/x",
            "api.example.com",
            &[],
            Some("fallback"),
        ),
        (
            Method::GET,
            "/debug",
            "api.example.com",
            &[],
            Some("no-debug"),
        ),
        (
            Method::GET,
            "/debug",
            "api.example.com",
            &[("x-debug", "1")],
            Some("fallback"),
        ),
        // `authority` matches the authority as sent, its port included, as Envoy's
        // `:authority` header matcher does.
        (
            Method::GET,
            "/",
            "api.example.com:9443",
            &[],
            Some("authority-port"),
        ),
        (
            Method::GET,
            "/exact-authority",
            "api.example.com",
            &[],
            Some("authority"),
        ),
        (
            Method::GET,
            "/exact-authority",
            "api.example.com:8080",
            &[],
            Some("fallback"),
        ),
        // A host of the Gateway server, but no VirtualService for it.
        (Method::GET, "/", "exact.other.com", &[], None),
        // Not a host of the Gateway server at all.
        (Method::GET, "/", "api.example.org", &[], None),
        (Method::GET, "/", "example.com", &[], None),
    ];
    for (method, path, authority, headers, want) in cases {
        let got = name(&l, method.clone(), path, authority, headers);
        assert_eq!(
            got.as_deref(),
            *want,
            "{method} {authority}{path} {headers:?}"
        );
    }
}

#[test]
fn weighted_pick_follows_weights() {
    let backends = [
        WeightedBackend {
            backend: 0,
            weight: 90,
            headers: None,
        },
        WeightedBackend {
            backend: 1,
            weight: 10,
            headers: None,
        },
    ];
    let mut counts = [0u32; 2];
    for _ in 0..10_000 {
        counts[pick(&backends).unwrap().backend] += 1;
    }
    // 9000 expected; five standard deviations (150) either way.
    assert!((8250..=9750).contains(&counts[0]), "{counts:?}");
    assert_eq!(pick(&[]).map(|b| b.backend), None);
}

#[test]
fn weights_over_u32_pick_without_overflow() {
    // Any `u32` weight compiles: their sum wrapped (a panic in debug builds, and on tcp and
    // tls routes a draw in `..0`, a panic in release builds too).
    let backends = [
        WeightedBackend {
            backend: 0,
            weight: u32::MAX,
            headers: None,
        },
        WeightedBackend {
            backend: 1,
            weight: 1,
            headers: None,
        },
    ];
    for _ in 0..100 {
        assert!(pick(&backends).is_some());
        assert!(crate::passthrough::pick(&backends).is_some());
    }
}

#[test]
fn authority_loses_its_port() {
    let h = HeaderMap::new();
    let uri: Uri = "https://httpbin.example-target.com:18443/get"
        .parse()
        .unwrap();
    assert_eq!(authority(&uri, &h), Some("httpbin.example-target.com"));
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("[::1]:8080"));
    assert_eq!(authority(&"/".parse().unwrap(), &h), Some("[::1]"));
    h.insert("host", HeaderValue::from_static("plain.example.com"));
    assert_eq!(
        authority(&"/".parse().unwrap(), &h),
        Some("plain.example.com")
    );
}

#[test]
fn authority_port_defaults_to_80() {
    let h = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static(v));
        h
    };
    let origin: Uri = "/".parse().unwrap();
    assert_eq!(
        authority_port(&origin, &h("httpbin.example-target.com")),
        80
    );
    assert_eq!(
        authority_port(&origin, &h("httpbin.example-target.com:8080")),
        8080
    );
    assert_eq!(authority_port(&origin, &h("[::1]:9000")), 9000);
    assert_eq!(authority_port(&origin, &h("[::1]")), 80);
    assert_eq!(
        authority_port(&"http://a.b:81/".parse().unwrap(), &HeaderMap::new()),
        81
    );
}

/// A VirtualService host binds to a server of its own Gateway as far as that server serves it:
/// `*.example.com` on team A's server for `a.example.com` answers `a.example.com` only, and a
/// host only team B's Gateway serves on the same port has no route (404), as Istio binds them.
#[test]
fn a_wildcard_virtual_service_answers_only_its_own_gateways_hosts() {
    let l = ingress(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: team-a, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http-a, protocol: HTTP}, hosts: [a.example.com]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: team-b, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http-b, protocol: HTTP}, hosts: [b.example.com]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: team-a, namespace: istio-system}
spec:
  hosts: ["*.example.com"]
  gateways: [team-a]
  http: [{name: team-a, directResponse: {status: 200, body: {string: team-a}}}]
"#,
    );
    assert_eq!(
        name(&l, Method::GET, "/", "a.example.com", &[]).as_deref(),
        Some("team-a")
    );
    assert_eq!(name(&l, Method::GET, "/", "b.example.com", &[]), None);
    assert_eq!(name(&l, Method::GET, "/", "c.example.com", &[]), None);
}

/// A wildcard VirtualService bound to a server of one host joins the VirtualServices that name
/// that host, in the order of their creation, as Istio keys a gateway's virtual hosts by host.
#[test]
fn a_wildcard_narrowed_to_a_host_merges_with_the_virtual_service_naming_it() {
    let l = ingress_behind(
        &[("gw", "api.example.com, web.example.com")],
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wildcard, namespace: istio-system, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: ["*.example.com"]
  gateways: [gw]
  http:
  - {match: [{uri: {prefix: /wild}}], directResponse: {status: 200, body: {string: wildcard-path}}}
  - {directResponse: {status: 200, body: {string: wildcard}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: istio-system, creationTimestamp: "2024-06-01T00:00:00Z"}
spec:
  hosts: [api.example.com]
  gateways: [gw]
  http:
  - {match: [{uri: {prefix: /api}}], directResponse: {status: 200, body: {string: api-path}}}
  - {directResponse: {status: 200, body: {string: api}}}
"#,
    );
    let cases = [
        ("api.example.com", "/wild", "wildcard-path"),
        // The wildcard's catch-all goes after the other VirtualService's paths...
        ("api.example.com", "/api/v1", "api-path"),
        // ...and, created first, before its catch-all (by name, `api` would come first).
        ("api.example.com", "/", "wildcard"),
        ("web.example.com", "/api/v1", "wildcard"),
        ("web.example.com", "/wild", "wildcard-path"),
    ];
    for (host, path, want) in cases {
        assert_eq!(
            name(&l, Method::GET, path, host, &[]).as_deref(),
            Some(want),
            "{host}{path}"
        );
    }
}

/// Several VirtualServices for one Gateway host: their routes in Istio's order (here by name),
/// catch-all routes last (Istio's `SortVHostRoutes`), each VirtualService's routes ending at
/// its first catch-all.
#[test]
fn virtual_services_of_one_gateway_host_merge_with_catch_alls_last() {
    let l = ingress_behind(
        &[("gw", "shop.example.com")],
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /}, headers: {x-canary: {exact: "1"}}}]
    directResponse: {status: 200, body: {string: canary}}
  - match: [{uri: {prefix: /v1}}, {uri: {prefix: /}}, {uri: {prefix: /never}}]
    directResponse: {status: 200, body: {string: mixed}}
  - match: [{uri: {prefix: /late}}]
    directResponse: {status: 200, body: {string: after-catch-all}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: second, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /cart}}]
    directResponse: {status: 200, body: {string: cart}}
  - match: [{uri: {prefix: /v1}}]
    directResponse: {status: 200, body: {string: second-v1}}
  - match: [{uri: {prefix: /late}}]
    directResponse: {status: 200, body: {string: second-late}}
  - match: [{method: {exact: POST}, uri: {prefix: /}}]
    directResponse: {status: 200, body: {string: post}}
  - directResponse: {status: 200, body: {string: second-root}}
"#,
    );
    let cases: [Case; 9] = [
        // The first VirtualService's routes keep their order before the second's...
        (
            Method::GET,
            "/v1/items",
            "shop.example.com",
            &[],
            Some("mixed"),
        ),
        (
            Method::GET,
            "/cart",
            "shop.example.com",
            &[("x-canary", "1")],
            Some("canary"),
        ),
        // ...but its catch-all (`/` among the matches of `mixed`) goes last.
        (Method::GET, "/cart", "shop.example.com", &[], Some("cart")),
        // A method is a header to Envoy: not a catch-all.
        (
            Method::POST,
            "/anything",
            "shop.example.com",
            &[],
            Some("post"),
        ),
        (
            Method::GET,
            "/anything",
            "shop.example.com",
            &[],
            Some("mixed"),
        ),
        (
            Method::GET,
            "/never",
            "shop.example.com",
            &[],
            Some("mixed"),
        ),
        // Istio builds no route after a catch-all: the first's `/late` is gone.
        (
            Method::GET,
            "/late",
            "shop.example.com",
            &[],
            Some("second-late"),
        ),
        (
            Method::GET,
            "/late",
            "SHOP.example.com:8080",
            &[],
            Some("second-late"),
        ),
        (Method::GET, "/", "other.example.com", &[], None),
    ];
    for (method, path, host, headers, want) in cases {
        assert_eq!(
            name(&l, method.clone(), path, host, headers).as_deref(),
            want,
            "{method} {host}{path} {headers:?}"
        );
    }
    // The second's catch-all is never reached: the first's comes before it.
    let vh = &l.routes.virtual_hosts()[0];
    assert_eq!(
        vh.source,
        "VirtualService istio-system/first, VirtualService istio-system/second"
    );
    let last: Vec<(&str, usize)> = vh
        .routes
        .iter()
        .rev()
        .take(2)
        .map(|r| (r.source.as_str(), r.position))
        .collect();
    assert_eq!(
        last,
        [
            ("VirtualService istio-system/second", 4),
            ("VirtualService istio-system/first", 1)
        ]
    );
}

/// Two Gateways on one port: Istio builds a VirtualService's routes once per server, with that
/// server's Gateway alone, so a match scoped to the first Gateway ends only that Gateway's
/// routes; the virtual host takes them Gateway by Gateway, catch-alls last.
#[test]
fn a_virtual_service_on_two_gateways_of_a_port_is_built_for_each() {
    let l = ingress_behind(
        &[("gw1", "shop.example.com"), ("gw2", "shop.example.com")],
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: both, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [gw1, gw2]
  http:
  - match: [{gateways: [gw1], uri: {prefix: /}}]
    directResponse: {status: 200, body: {string: gw1-root}}
  - match: [{uri: {prefix: /x}}]
    directResponse: {status: 200, body: {string: x}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: late, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [gw2]
  http:
  - match: [{uri: {regex: ".*"}}]
    directResponse: {status: 200, body: {string: late-any}}
  - match: [{uri: {prefix: /y}}]
    directResponse: {status: 200, body: {string: "y"}}
"#,
    );
    let cases = [
        ("/x", "x"),
        ("/", "gw1-root"),
        // `late`'s regex `.*` is a catch-all: its `/y` is never built.
        ("/y", "gw1-root"),
    ];
    for (path, want) in cases {
        assert_eq!(
            name(&l, Method::GET, path, "shop.example.com", &[]).as_deref(),
            Some(want),
            "{path}"
        );
    }
}

/// As `ingress`, behind Gateways (name, hosts) of one plaintext server each on port 8080.
fn ingress_behind(gateways: &[(&str, &str)], docs: &str) -> meshgate_config::model::Listener {
    let gateways: String = gateways
        .iter()
        .map(|(name, hosts)| {
            format!(
                "\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers: [{{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: [{hosts}]}}]\n---"
            )
        })
        .collect();
    ingress(&format!("{gateways}{docs}"))
}

/// The first listener of a MeshGateway with `istio: ingressgateway` and the Istio `docs`.
fn ingress(docs: &str) -> meshgate_config::model::Listener {
    let yaml = format!(
        "apiVersion: meshgate.dev/v1alpha1\nkind: MeshGateway\n\
         metadata: {{name: gw, namespace: istio-system}}\nspec:\n  labels: {{istio: ingressgateway}}\n---{docs}"
    );
    let mut model = meshgate_config::load_str("ingress.yaml", &yaml).unwrap();
    model.listeners.remove(0)
}

/// `queryParams` as Envoy matches them: the first value of the parameter as sent (not
/// decoded; `?flag` has the value `""`), which must be there; `exact`, a whole-value `regex`,
/// or, with neither, presence alone.
#[test]
fn query_parameters_match_their_first_value_as_sent() {
    let l = listener();
    let get = |uri: &str| name(&l, Method::GET, uri, "api.example.com", &[]);
    for (uri, want) in [
        ("/q?version=v2", "query-exact"),
        ("/q?a=1&version=v2&b", "query-exact"),
        // The first value decides, and the value is not decoded.
        ("/q?version=v1&version=v2", "fallback"),
        ("/q?version=v%32", "fallback"),
        ("/q?Version=v2", "fallback"),
        ("/q?id=42", "query-regex"),
        ("/q?id=42a", "fallback"),
        ("/q?debug", "query-present"),
        ("/q?debug=anything", "query-present"),
        ("/q?flag", "query-empty"),
        ("/q?flag=", "query-empty"),
        ("/q?flag=1", "fallback"),
        ("/q", "fallback"),
    ] {
        assert_eq!(get(uri).as_deref(), Some(want), "{uri}");
    }
}

/// `ignoreUriCase`, as Envoy's `case_sensitive: false`: an exact or prefix `uri` compares ASCII
/// letters without their case; a regex keeps its own.
#[test]
fn ignore_uri_case_applies_to_exact_and_prefix_uris() {
    let l = listener();
    let get = |uri: &str| name(&l, Method::GET, uri, "api.example.com", &[]);
    for (uri, want) in [
        ("/case/x", "case-prefix"),
        ("/CASE/x", "case-prefix"),
        ("/cas", "fallback"),
        ("/exact-path", "case-exact"),
        ("/EXACT-PATH", "case-exact"),
        ("/exact-path/", "fallback"),
        ("/Rx/abc", "case-regex"),
        ("/rx/abc", "fallback"),
    ] {
        assert_eq!(get(uri).as_deref(), Some(want), "{uri}");
    }
}

/// The body of the direct response that answers a GET of `path` at `authority` on port 443,
/// for a connection of TLS group `group`.
fn answer(
    l: &meshgate_config::model::Listener,
    group: usize,
    authority: &str,
    path: &str,
) -> Option<String> {
    let h = HeaderMap::new();
    let req = RouteRequest {
        input: MatchInput {
            method: &Method::GET,
            path,
            query: None,
            full_authority: authority,
            scheme: "https",
            headers: &h,
        },
        authority,
        port: 443,
    };
    route(l, Some(group), &req).map(|r| match &r.route.action {
        RouteAction::Direct(d) => String::from_utf8(d.body.to_vec()).unwrap(),
        _ => "other".into(),
    })
}

/// The first listener of the Gateways and VirtualServices in `yaml`, on the MeshGateway
/// `istio: ingressgateway` with an identity.
fn https_listener(yaml: &str) -> meshgate_config::model::Listener {
    let config = format!("{}---\n{yaml}", MESH_GATEWAY_WITH_IDENTITY);
    let mut model = meshgate_config::load_str("https.yaml", &config).unwrap();
    model.listeners.remove(0)
}

const MESH_GATEWAY_WITH_IDENTITY: &str = "apiVersion: meshgate.dev/v1alpha1\nkind: MeshGateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  labels: {istio: ingressgateway}\n  identity: {certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}\n";

/// On one HTTPS port, a connection sees the hosts the server its SNI chose serves, and no
/// other, as each server has a route configuration of its own in Envoy: the same
/// VirtualService answers a host through one server and not through another, even of the same
/// TLS settings.
#[test]
fn an_https_connection_sees_the_hosts_its_tls_group_serves() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g1, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: partners, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: MUTUAL, serverCertificate: k.pem, privateKey: k-key.pem, caCertificates: ca.pem}
  - port: {number: 443, name: public-x, protocol: HTTPS}
    hosts: [x.example.com]
    tls: {mode: SIMPLE, serverCertificate: k.pem, privateKey: k-key.pem}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g2, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: public, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, serverCertificate: k.pem, privateKey: k-key.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: admin, namespace: istio-system}
spec:
  hosts: ["*.example.com"]
  gateways: [g1]
  http: [{directResponse: {status: 200, body: {string: admin}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: site, namespace: istio-system}
spec:
  hosts: [www.example.org, x.example.com]
  gateways: [g2]
  http: [{directResponse: {status: 200, body: {string: site}}}]
"#;
    let l = https_listener(yaml);
    assert_eq!(
        l.tls.len(),
        3,
        "one group per server, shared settings or not"
    );
    let seen = |group: usize, authority: &str| answer(&l, group, authority, "/");
    // Through the MUTUAL server, g1's wildcard answers.
    assert_eq!(seen(0, "secret.example.com").as_deref(), Some("admin"));
    // Through g1's SIMPLE server, x.example.com only: not another host of g1's wildcard, and
    // not what g2's `*` server of the same settings serves.
    assert_eq!(seen(1, "secret.example.com"), None);
    assert_eq!(seen(1, "www.example.org"), None);
    assert_eq!(seen(1, "x.example.com").as_deref(), Some("admin"));
    // Through g2's server, g2's VirtualService, x.example.com included.
    assert_eq!(seen(2, "www.example.org").as_deref(), Some("site"));
    assert_eq!(seen(2, "x.example.com").as_deref(), Some("site"));
    assert_eq!(seen(2, "secret.example.com"), None);
    assert_eq!(seen(0, "x.example.com").as_deref(), Some("admin"));
    assert_eq!(seen(0, "www.example.org"), None);
}

/// One host seen by two TLS groups of a Gateway: for each group, the VirtualServices that its
/// servers of that group serve answer it, merged as in that server's route configuration.
#[test]
fn a_host_is_merged_group_by_group() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: a, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, serverCertificate: k.pem, privateKey: k-key.pem}
  - port: {number: 443, name: partners, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: MUTUAL, serverCertificate: k.pem, privateKey: k-key.pem, caCertificates: ca.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [gw]
  http: [{match: [{uri: {prefix: /a}}], directResponse: {status: 200, body: {string: a}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: istio-system}
spec:
  hosts: ["*.example.com"]
  gateways: [gw]
  http: [{match: [{uri: {prefix: /b}}], directResponse: {status: 200, body: {string: b}}}]
"#;
    let l = https_listener(yaml);
    let seen = |group: usize, authority: &str, path: &str| answer(&l, group, authority, path);
    // SIMPLE `a.example.com`: both VirtualServices reach it there, merged.
    assert_eq!(seen(0, "a.example.com", "/a").as_deref(), Some("a"));
    assert_eq!(seen(0, "a.example.com", "/b").as_deref(), Some("b"));
    assert_eq!(seen(0, "z.example.com", "/b"), None);
    // MUTUAL `*.example.com`: `a.example.com` is its own virtual host there, as in Envoy's
    // route configuration of that server; other hosts take the wildcard.
    assert_eq!(seen(1, "a.example.com", "/a").as_deref(), Some("a"));
    assert_eq!(seen(1, "a.example.com", "/b"), None);
    assert_eq!(seen(1, "z.example.com", "/b").as_deref(), Some("b"));
}

/// Many TLS servers on one port (past 64, where one machine word of groups ends): each still
/// sees its own host's routes and no other's.
#[test]
fn a_port_keeps_many_servers_apart() {
    let mut yaml = String::new();
    for i in 0..130 {
        // Group 128 (bit 0 of its third word, where group 0 is bit 0 of the first) serves
        // every host of the domain.
        let host = if i == 128 {
            "\"*.example.com\"".to_string()
        } else {
            format!("h{i}.example.com")
        };
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g{i}, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: mtls, protocol: HTTPS}}\n    hosts: [{host}]\n    tls: {{mode: ISTIO_MUTUAL}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v{i}, namespace: istio-system}}\nspec:\n  hosts: [\"*.example.com\"]\n  gateways: [g{i}]\n  http: [{{directResponse: {{status: 200, body: {{string: v{i}}}}}}}]\n"
        ));
    }
    let l = https_listener(&yaml);
    assert_eq!(l.tls.len(), 130);
    for i in [0usize, 63, 64, 65, 127, 129] {
        let own = format!("h{i}.example.com");
        assert_eq!(answer(&l, i, &own, "/"), Some(format!("v{i}")), "{own}");
        for other in [0usize, 64, 129] {
            if other != i {
                let host = format!("h{other}.example.com");
                assert_eq!(answer(&l, i, &host, "/"), None, "{host} through {i}");
            }
        }
    }
    // Through the wildcard server, every host is its VirtualService's, never the server of
    // that host's.
    for host in ["h0.example.com", "h64.example.com", "other.example.com"] {
        assert_eq!(
            answer(&l, 128, host, "/").as_deref(),
            Some("v128"),
            "{host}"
        );
    }
}
