//! Istio's AuthorizationPolicy semantics, table-driven, on compiled configuration.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};

use super::*;

/// A MeshGateway in istio-system with `istio: ingressgateway`, an IstioOperator with `mesh`,
/// and the policies.
fn policies(mesh: &str, cluster_local_is_local: bool, policies: &str) -> meshgate_config::Model {
    let yaml = format!(
        r#"apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  trust: {{clusterLocalIsLocal: {cluster_local_is_local}}}
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: istio, namespace: istio-system}}
spec:
  meshConfig: {mesh}
{policies}"#
    );
    meshgate_config::load_str("authz.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

struct Req {
    principal: Option<&'static str>,
    ip: &'static str,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    port: u16,
    headers: Vec<(&'static str, &'static str)>,
    /// Header values that need not be text.
    raw: Vec<(&'static str, &'static [u8])>,
    sni: Option<&'static str>,
}

fn req(principal: &'static str) -> Req {
    Req {
        principal: Some(principal),
        ip: "127.0.0.1",
        method: "GET",
        path: "/",
        host: "httpbin.example-target.com",
        port: 443,
        headers: Vec::new(),
        raw: Vec::new(),
        sni: None,
    }
}

fn decide(model: &meshgate_config::Model, r: &Req) -> bool {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(*k, HeaderValue::from_static(v));
    }
    for (k, v) in &r.raw {
        headers.append(*k, HeaderValue::from_bytes(v).unwrap());
    }
    let id = r
        .principal
        .map(|p| meshgate_config::spiffe::SpiffeId::parse(&format!("spiffe://{p}")).unwrap());
    let a = Attributes {
        principal: id.as_ref().map(|i| i.principal()),
        namespace: id.as_ref().and_then(|i| i.namespace()),
        trust_domain: id.as_ref().map(|i| i.trust_domain()),
        source_ip: r.ip.parse::<IpAddr>().unwrap(),
        remote_ip: r.ip.parse::<IpAddr>().unwrap(),
        destination_ip: "127.0.0.1".parse::<IpAddr>().unwrap(),
        authority: r.host,
        host: r.host.split_once(':').map_or(r.host, |(host, _)| host),
        port: r.port,
        method: r.method,
        path: r.path,
        headers: &headers,
        sni: r.sni,
    };
    authorize(&model.policies, &a) == Decision::Allow
}

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  action: {action}\n{rules}\n"
    )
}

#[test]
fn trust_domain_migration_as_in_istios_guide() {
    // Istio's task: a policy written for old-td; the mesh moves to new-td.
    let allow_old = policy(
        "allow-sleep",
        "ALLOW",
        "  rules: [{from: [{source: {principals: [old-td/ns/foo/sa/sleep]}}]}]",
    );
    let sleep_new = req("new-td/ns/foo/sa/sleep");
    let sleep_old = req("old-td/ns/foo/sa/sleep");
    // Before: trust domain old-td.
    let m = policies("{trustDomain: old-td}", false, &allow_old);
    assert!(decide(&m, &sleep_old));
    // After, without an alias: the workload's new identity is denied.
    let m = policies("{trustDomain: new-td}", false, &allow_old);
    assert!(!decide(&m, &sleep_new));
    // With old-td as an alias: allowed again, under both identities.
    let m = policies(
        "{trustDomain: new-td, trustDomainAliases: [old-td]}",
        false,
        &allow_old,
    );
    assert!(decide(&m, &sleep_new));
    assert!(decide(&m, &sleep_old));
    // Another mesh's workload of the same name never matches.
    assert!(!decide(&m, &req("other-td/ns/foo/sa/sleep")));
}

#[test]
fn cluster_local_principals_stand_for_the_local_bundle() {
    let allow = policy(
        "allow",
        "ALLOW",
        "  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]",
    );
    let m = policies("{trustDomain: example-target.com}", false, &allow);
    assert!(decide(&m, &req("example-target.com/ns/foo/sa/sleep")));
    // Istio's bundle: cluster.local is a pointer to the local trust domain, not a member.
    assert!(!decide(&m, &req("cluster.local/ns/foo/sa/sleep")));
    // meshgate's migration rule (clusterLocalIsLocal) makes it a member.
    let m = policies("{trustDomain: example-target.com}", true, &allow);
    assert!(decide(&m, &req("cluster.local/ns/foo/sa/sleep")));
    assert!(!decide(&m, &req("example.com/ns/foo/sa/sleep")));
}

#[test]
fn istio_evaluation_order_and_empty_rules() {
    let mesh = "{trustDomain: example-target.com}";
    let caller = req("example.com/ns/foo/sa/sleep");
    let cases: &[(&str, String, bool)] = &[
        ("no policy allows", String::new(), true),
        (
            "ALLOW without rules denies all",
            policy("a", "ALLOW", ""),
            false,
        ),
        (
            "ALLOW rules: [{}] allows all",
            policy("a", "ALLOW", "  rules: [{}]"),
            true,
        ),
        (
            "DENY rules: [{}] denies all",
            policy("d", "DENY", "  rules: [{}]"),
            false,
        ),
        (
            "DENY wins over ALLOW",
            policy("a", "ALLOW", "  rules: [{}]") + &policy("d", "DENY", "  rules: [{}]"),
            false,
        ),
        (
            "AUDIT changes nothing",
            policy("audit", "AUDIT", "  rules: [{}]"),
            true,
        ),
        (
            "one of several ALLOW policies suffices",
            policy(
                "a1",
                "ALLOW",
                "  rules: [{from: [{source: {namespaces: [bar]}}]}]",
            ) + &policy(
                "a2",
                "ALLOW",
                "  rules: [{from: [{source: {namespaces: [foo]}}]}]",
            ),
            true,
        ),
    ];
    for (name, yaml, want) in cases {
        let m = policies(mesh, true, yaml);
        assert_eq!(decide(&m, &caller), *want, "{name}");
    }
}

#[test]
fn sources_operations_and_conditions() {
    let mesh = "{trustDomain: example-target.com, trustDomainAliases: [old-target.com]}";
    let remote = || req("example.com/ns/foo/sa/sleep");
    let local = || req("example-target.com/ns/admin/sa/ops");
    let with = |mut r: Req, f: &dyn Fn(&mut Req)| {
        f(&mut r);
        r
    };
    let allow = |rules: &str| policy("p", "ALLOW", &format!("  rules: [{rules}]"));
    let cases: Vec<(&str, String, Req, bool)> = vec![
        (
            "namespaces match any trust domain",
            allow("{from: [{source: {namespaces: [foo]}}]}"),
            remote(),
            true,
        ),
        (
            "namespaces",
            allow("{from: [{source: {namespaces: [foo]}}]}"),
            local(),
            false,
        ),
        (
            "notNamespaces",
            allow("{from: [{source: {notNamespaces: [admin]}}]}"),
            local(),
            false,
        ),
        (
            "principal prefix",
            allow("{from: [{source: {principals: [\"example.com/*\"]}}]}"),
            remote(),
            true,
        ),
        (
            "principal suffix",
            allow("{from: [{source: {principals: [\"*/sa/ops\"]}}]}"),
            local(),
            true,
        ),
        (
            "notPrincipals",
            allow("{from: [{source: {notPrincipals: [\"example.com/*\"]}}]}"),
            remote(),
            false,
        ),
        (
            "trustDomains",
            allow("{from: [{source: {trustDomains: [example.com]}}]}"),
            remote(),
            true,
        ),
        (
            "trustDomains: a bundle member stands for all",
            allow("{from: [{source: {trustDomains: [old-target.com]}}]}"),
            local(),
            true,
        ),
        (
            "notTrustDomains",
            allow("{from: [{source: {notTrustDomains: [example.com]}}]}"),
            remote(),
            false,
        ),
        (
            "ipBlocks",
            allow("{from: [{source: {ipBlocks: [127.0.0.0/8]}}]}"),
            remote(),
            true,
        ),
        (
            "ipBlocks miss",
            allow("{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}"),
            remote(),
            false,
        ),
        (
            "notIpBlocks",
            allow("{from: [{source: {notIpBlocks: [127.0.0.1]}}]}"),
            remote(),
            false,
        ),
        (
            "all fields of a source must match",
            allow("{from: [{source: {namespaces: [foo], trustDomains: [example-target.com]}}]}"),
            remote(),
            false,
        ),
        (
            "methods",
            allow("{to: [{operation: {methods: [GET, HEAD]}}]}"),
            remote(),
            true,
        ),
        (
            "notMethods",
            allow("{to: [{operation: {notMethods: [GET]}}]}"),
            remote(),
            false,
        ),
        (
            "paths prefix",
            allow("{to: [{operation: {paths: [\"/public/*\"]}}]}"),
            with(remote(), &|r| r.path = "/public/x"),
            true,
        ),
        (
            "paths miss",
            allow("{to: [{operation: {paths: [\"/public/*\"]}}]}"),
            with(remote(), &|r| r.path = "/private"),
            false,
        ),
        (
            "notPaths",
            allow("{to: [{operation: {notPaths: [\"/admin*\"]}}]}"),
            with(remote(), &|r| r.path = "/admin/users"),
            false,
        ),
        (
            "hosts, case-insensitive",
            allow("{to: [{operation: {hosts: [\"*.Example-Target.com\"]}}]}"),
            remote(),
            true,
        ),
        (
            "notHosts",
            allow("{to: [{operation: {notHosts: [httpbin.example-target.com]}}]}"),
            remote(),
            false,
        ),
        (
            "ports",
            allow("{to: [{operation: {ports: [\"443\"]}}]}"),
            remote(),
            true,
        ),
        (
            "notPorts",
            allow("{to: [{operation: {notPorts: [\"443\"]}}]}"),
            remote(),
            false,
        ),
        (
            "when request.headers",
            allow("{when: [{key: \"request.headers[x-mesh-origin]\", values: [remote]}]}"),
            with(remote(), &|r| r.headers = vec![("x-mesh-origin", "remote")]),
            true,
        ),
        (
            "when request.headers absent",
            allow("{when: [{key: \"request.headers[x-mesh-origin]\", values: [remote]}]}"),
            remote(),
            false,
        ),
        (
            "when notValues",
            allow("{when: [{key: source.namespace, notValues: [foo]}]}"),
            remote(),
            false,
        ),
        (
            "when source.principal expands",
            allow("{when: [{key: source.principal, values: [cluster.local/ns/admin/sa/ops]}]}"),
            local(),
            true,
        ),
        (
            "when source.ip",
            allow("{when: [{key: source.ip, values: [127.0.0.0/8]}]}"),
            remote(),
            true,
        ),
        (
            "when destination.port",
            allow("{when: [{key: destination.port, values: [\"443\"]}]}"),
            remote(),
            true,
        ),
        (
            "when connection.sni",
            allow("{when: [{key: connection.sni, values: [\"outbound_.443_._.*\"]}]}"),
            with(remote(), &|r| {
                r.sni = Some("outbound_.443_._.httpbin.example-target.com")
            }),
            true,
        ),
        (
            "a rule needs both its from and its to",
            allow("{from: [{source: {namespaces: [foo]}}], to: [{operation: {methods: [POST]}}]}"),
            remote(),
            false,
        ),
        (
            "no identity: principals never match",
            allow("{from: [{source: {principals: [\"*\"]}}]}"),
            with(remote(), &|r| r.principal = None),
            false,
        ),
        (
            "no identity: notPrincipals pass",
            allow("{from: [{source: {notPrincipals: [\"example.com/*\"]}}]}"),
            with(remote(), &|r| r.principal = None),
            true,
        ),
    ];
    for (name, yaml, r, want) in cases {
        let m = policies(mesh, true, &yaml);
        assert_eq!(decide(&m, &r), want, "{name}");
    }
}

/// A repeated request header is read against the request: an ALLOW condition must hold for
/// every copy (and `notValues` for none), a DENY condition holds when one copy matches (or
/// one copy is outside `notValues`). `request.headers[host]` is the authority, whether or not
/// the map has a `Host` field (HTTP/2 has none).
#[test]
fn repeated_headers_and_host_are_read_against_the_request() {
    let mesh = "{trustDomain: example-target.com}";
    let when = |action: &str, condition: &str| {
        policy(
            "p",
            action,
            &format!("  rules: [{{when: [{{key: \"request.headers[{condition}}}]}}]"),
        )
    };
    let tenant = |copies: &[&'static str]| {
        let mut r = req("example.com/ns/foo/sa/sleep");
        r.headers = copies.iter().map(|v| ("x-tenant", *v)).collect();
        r
    };
    let raw = |copies: &[&'static [u8]]| {
        let mut r = req("example.com/ns/foo/sa/sleep");
        r.raw = copies.iter().map(|v| ("x-tenant", *v)).collect();
        r
    };
    let host = |authority: &'static str| {
        let mut r = req("example.com/ns/foo/sa/sleep");
        r.host = authority;
        r
    };
    let cases: Vec<(&str, String, Req, bool)> = vec![
        (
            "ALLOW values: the copy",
            when("ALLOW", "x-tenant]\", values: [blue]"),
            tenant(&["blue"]),
            true,
        ),
        (
            "ALLOW values: another copy too",
            when("ALLOW", "x-tenant]\", values: [blue]"),
            tenant(&["blue", "red"]),
            false,
        ),
        (
            "ALLOW values: every copy listed",
            when("ALLOW", "x-tenant]\", values: [blue, red]"),
            tenant(&["blue", "red"]),
            true,
        ),
        (
            "ALLOW values: no copy",
            when("ALLOW", "x-tenant]\", values: [\"*\"]"),
            tenant(&[]),
            false,
        ),
        (
            "ALLOW notValues: one copy listed",
            when("ALLOW", "x-tenant]\", notValues: [red]"),
            tenant(&["blue", "red"]),
            false,
        ),
        (
            "ALLOW notValues: none listed",
            when("ALLOW", "x-tenant]\", notValues: [red]"),
            tenant(&["blue", "green"]),
            true,
        ),
        (
            "ALLOW notValues: no copy",
            when("ALLOW", "x-tenant]\", notValues: [red]"),
            tenant(&[]),
            true,
        ),
        (
            "DENY values: one copy",
            when("DENY", "x-tenant]\", values: [admin]"),
            tenant(&["user", "admin"]),
            false,
        ),
        (
            "DENY values: no copy listed",
            when("DENY", "x-tenant]\", values: [admin]"),
            tenant(&["user", "guest"]),
            true,
        ),
        (
            "DENY notValues: one copy outside",
            when("DENY", "x-tenant]\", notValues: [blue]"),
            tenant(&["blue", "red"]),
            false,
        ),
        (
            "DENY notValues: every copy listed",
            when("DENY", "x-tenant]\", notValues: [blue]"),
            tenant(&["blue", "blue"]),
            true,
        ),
        (
            "DENY notValues: no copy",
            when("DENY", "x-tenant]\", notValues: [blue]"),
            tenant(&[]),
            false,
        ),
        (
            "DENY host: the authority",
            when("DENY", "host]\", values: [admin.example-target.com]"),
            host("admin.example-target.com"),
            false,
        ),
        (
            "DENY host: another authority",
            when("DENY", "host]\", values: [admin.example-target.com]"),
            host("www.example-target.com"),
            true,
        ),
        (
            "ALLOW host: with its port",
            when("ALLOW", "host]\", values: [\"*:8443\"]"),
            host("www.example-target.com:8443"),
            true,
        ),
        (
            "DENY host: a port does not step around it",
            when("DENY", "host]\", values: [admin.example-target.com]"),
            host("admin.example-target.com:443"),
            false,
        ),
        (
            "DENY values: a copy that is not text",
            when("DENY", "x-tenant]\", values: [\"adm*\"]"),
            raw(&[b"admin\xff"]),
            false,
        ),
        (
            "DENY values: any copy, text or not",
            when("DENY", "x-tenant]\", values: [\"*\"]"),
            raw(&[b"\x80"]),
            false,
        ),
        (
            "ALLOW values: a copy that is not text",
            when("ALLOW", "x-tenant]\", values: [blue]"),
            raw(&[b"blue", b"\x80"]),
            false,
        ),
    ];
    for (name, yaml, r, want) in cases {
        let m = policies(mesh, true, &yaml);
        assert_eq!(decide(&m, &r), want, "{name}");
    }
}

#[test]
fn policies_apply_by_namespace_and_selector() {
    let mesh = "{trustDomain: example-target.com}";
    let deny_all = |ns: &str, selector: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: deny, namespace: {ns}}}\nspec:\n  {selector}\n  action: DENY\n  rules: [{{}}]\n"
        )
    };
    let cases = [
        (
            "root namespace, no selector: mesh-wide",
            deny_all("istio-system", ""),
            false,
        ),
        (
            "our namespace, matching selector",
            deny_all(
                "istio-system",
                "selector: {matchLabels: {istio: ingressgateway}}",
            ),
            false,
        ),
        (
            "other selector",
            deny_all("istio-system", "selector: {matchLabels: {app: other}}"),
            true,
        ),
        ("another namespace", deny_all("default", ""), true),
    ];
    for (name, yaml, want) in cases {
        let m = policies(mesh, true, &yaml);
        assert_eq!(
            decide(&m, &req("example.com/ns/foo/sa/sleep")),
            want,
            "{name}"
        );
        if want {
            assert!(
                m.warnings
                    .iter()
                    .any(|w| w.message.contains("selects no workload")),
                "{name}: {:?}",
                m.warnings
            );
        }
    }
}
