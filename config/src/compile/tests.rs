//! Compilation, table-driven: what each resource becomes, and the error each mistake gives.

use crate::load_str;
use crate::model::{
    AccessLogEncoding, Endpoints, ListenerProtocol, OutboundPolicy, RouteAction, UpstreamTls,
};
use crate::warning::Code;

const MESH_GATEWAY: &str = r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {name: gw, namespace: istio-system}
spec:
  labels: {istio: ingressgateway, app: edge}
  identity: {certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}
"#;

fn with_gateway(extra: &str) -> String {
    format!("{MESH_GATEWAY}---\n{extra}")
}

/// The messages of a failed load, each as `check` prints it.
fn errors(yaml: &str) -> Vec<String> {
    match load_str("t.yaml", yaml) {
        Ok(_) => panic!("loaded without error:\n{yaml}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// Each configuration of `cases` fails to load with an error containing its text.
fn assert_errors(cases: &[(String, &str)]) {
    for (yaml, want) in cases {
        let got = errors(yaml);
        assert!(
            got.iter().any(|e| e.contains(want)),
            "want `{want}`, got {got:#?}"
        );
    }
}

#[test]
fn trust_domain_sources_and_defaults() {
    let model = load_str("t.yaml", MESH_GATEWAY).unwrap();
    assert_eq!(model.trust.trust_domain.as_str(), "cluster.local");
    assert!(model.trust.cluster_local_is_local);

    let yaml = with_gateway(
        r#"apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: istio, namespace: istio-system}
spec:
  profile: default
  meshConfig:
    trustDomain: new.example.com
    trustDomainAliases: [old.example.com]
---
apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {name: default, namespace: kyma-system}
spec:
  config: {trustDomain: new.example.com}
  components: {pilot: {k8s: {resources: {}}}}
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    assert_eq!(model.trust.trust_domain.as_str(), "new.example.com");
    assert_eq!(model.trust.aliases[0].as_str(), "old.example.com");
    assert!(model.trust.is_local("old.example.com"));
    assert!(model.trust.is_local("cluster.local"));
    assert!(!model.trust.is_local("example.com"));
}

#[test]
fn disagreeing_trust_domains_are_an_error_naming_both() {
    let yaml = with_gateway(
        r#"apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {name: default, namespace: kyma-system}
spec:
  config: {trustDomain: a.example.com}
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: istio, namespace: istio-system}
spec:
  meshConfig: {trustDomain: b.example.com}
"#,
    );
    let e = errors(&yaml);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("`a.example.com` (Istio kyma-system/default spec.config.trustDomain)"),
        "{e:?}"
    );
    assert!(
        e[0].contains(
            "`b.example.com` (IstioOperator istio-system/istio spec.meshConfig.trustDomain)"
        ),
        "{e:?}"
    );
}

#[test]
fn kyma_trust_domain_with_underscore_is_a_warning() {
    let yaml = with_gateway(
        "apiVersion: operator.kyma-project.io/v1alpha2\nkind: Istio\nmetadata: {name: default}\nspec:\n  config: {trustDomain: my_mesh.local}\n",
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.to_string().contains("`my_mesh.local` contains `_`")),
        "{:?}",
        model.warnings
    );
}

#[test]
fn gateways_apply_by_selector_and_group_servers_by_port() {
    let yaml = with_gateway(
        r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: mine, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["./a.example.com", "team/b.example.com"]
    tls: {mode: ISTIO_MUTUAL, minProtocolVersion: TLSV1_3}
  - port: {number: 443, name: https-2, protocol: HTTPS}
    hosts: ["*/c.example.com"]
    tls: {mode: ISTIO_MUTUAL, minProtocolVersion: TLSV1_3}
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: other, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL}
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    assert_eq!(
        model.listeners.len(),
        2,
        "the east-west Gateway selects another workload"
    );
    let https = &model.listeners[0];
    assert_eq!((https.port, https.protocol), (443, ListenerProtocol::Https));
    assert_eq!(https.servers.len(), 3);
    assert!(https.servers[0].namespace.admits("istio-system"));
    assert!(!https.servers[0].namespace.admits("default"));
    assert!(https.servers[1].namespace.admits("team"));
    assert!(https.servers[2].namespace.admits("anything"));
    assert_eq!(model.listeners[1].protocol, ListenerProtocol::Http);
    assert_eq!(model.listeners[1].address.to_string(), "0.0.0.0:8080");
}

#[test]
fn virtual_services_bind_by_gateway_namespace_and_host() {
    let yaml = with_gateway(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["team/*.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bound, namespace: team}
spec:
  hosts: [a.example.com, a.example.org]
  gateways: [istio-system/gw]
  http: [{route: [{destination: {host: reviews, port: {number: 9080}}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wrong-namespace, namespace: default}
spec:
  hosts: [b.example.com]
  gateways: [istio-system/gw]
  http: [{directResponse: {status: 200}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sidecars-only, namespace: team}
spec:
  hosts: [c.example.com]
  http: [{directResponse: {status: 200}}]
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let vhosts = model.listeners[0].routes.virtual_hosts();
    assert_eq!(vhosts.len(), 1, "{vhosts:?}");
    assert_eq!(vhosts[0].source, "VirtualService team/bound");
    // Only the host that intersects the server's hosts is bound.
    assert_eq!(vhosts[0].hosts.len(), 1);
    assert_eq!(vhosts[0].hosts[0].to_string(), "a.example.com");
    // A short destination host takes the VirtualService's namespace, and, declared by no
    // ServiceEntry, is resolved by DNS with a warning.
    let RouteAction::Forward(dest) = &vhosts[0].routes[0].action else {
        panic!()
    };
    let backend = &model.backends[dest[0].backend];
    assert_eq!(backend.host, "reviews.team.svc.cluster.local");
    assert!(
        matches!(&backend.endpoints, Endpoints::Dns(e) if e[0] == ("reviews.team.svc.cluster.local".to_string(), 9080))
    );
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.to_string().contains("declared by no ServiceEntry")),
        "{:?}",
        model.warnings
    );
}

#[test]
fn each_mistake_names_file_resource_and_field() {
    let gw = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
"#;
    let vs = |http: &str| {
        with_gateway(&format!(
            "{gw}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: ns}}\nspec:\n  hosts: [a.b]\n  gateways: [istio-system/gw]\n  http:\n  - {http}\n"
        ))
    };
    let cases: &[(String, &str)] = &[
        (vs("{route: [{destination: {host: x.y}}]}"), "t.yaml: VirtualService ns/vs: spec.http[0].route[0].destination: `x.y` has no declared port: add destination.port.number, or a Service or ServiceEntry"),
        (vs("{directResponse: {status: 200}, route: [{destination: {host: x.y, port: {number: 1}}}]}"), "t.yaml: VirtualService ns/vs: spec.http[0]: route and directResponse are exclusive"),
        (vs("{match: [{uri: {regex: \"(\"}}], directResponse: {status: 200}}"), "t.yaml: VirtualService ns/vs: spec.http[0].match[0].uri: invalid regex"),
        (vs("{match: [{statPrefix: x}], directResponse: {status: 200}}"), "t.yaml: VirtualService ns/vs: spec.http[0].match[0].statPrefix: this Istio field is not implemented by meshgate"),
        (vs("{timeout: soon, directResponse: {status: 200}}"), "t.yaml: VirtualService ns/vs: spec.http[0].timeout: `soon` is not a duration"),
        (vs("{directResponse: {status: 1000}}"), "t.yaml: VirtualService ns/vs: spec.http[0].directResponse.status: not an HTTP status code"),
        (vs("{route: [{destination: {host: x.y, port: {number: 1}}, weight: 0}]}"), "t.yaml: VirtualService ns/vs: spec.http[0].route: every destination has weight 0"),
        (vs("{mirror: {host: x, port: {number: 80}}, directResponse: {status: 200}}"), "t.yaml: VirtualService ns/vs: spec.http[0]: a mirror copies requests a route forwards"),
        (vs("{directResponse: {status: 200}, retires: {attempts: 1}}"), "t.yaml:25:37: VirtualService ns/vs: spec.http[0].retires: unknown field `retires`"),
        (MESH_GATEWAY.replace("labels:", "labelz:"), "t.yaml:6:3: MeshGateway istio-system/gw: spec.labelz: unknown field `labelz`"),
        (format!("{MESH_GATEWAY}---\n{MESH_GATEWAY}"), "t.yaml: MeshGateway istio-system/gw: metadata: a second MeshGateway"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".to_string(), "no MeshGateway (apiVersion meshgate.dev/v1alpha1) found"),
        (with_gateway("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext}\nspec: {action: CUSTOM, provider: {name: opa}}\n"), "t.yaml: AuthorizationPolicy default/ext: spec.action: CUSTOM (an external authorizer) is not implemented"),
        (with_gateway("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: jwt}\nspec: {rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}\n"), "t.yaml: AuthorizationPolicy default/jwt: spec.rules[0].from[0].source.requestPrincipals: this Istio field is not implemented by meshgate"),
        (with_gateway("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: k}\nspec: {rules: [{when: [{key: \"request.auth.claims[iss]\", values: [x]}]}]}\n"), "t.yaml: AuthorizationPolicy default/k: spec.rules[0].when[0].key: `request.auth.claims[iss]` needs JWT authentication"),
        (with_gateway("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ip}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}\n"), "t.yaml: AuthorizationPolicy default/ip: spec.rules[0].from[0].source.ipBlocks[0]: `10.0.0.0/40` is not an address or CIDR block"),
        (vs("{route: [{destination: {host: x.y}}]}") + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [x.y]\n  ports: [{number: 80, protocol: TCP}]\n  resolution: DNS\n", "t.yaml: VirtualService ns/vs: spec.http[0].route[0].destination: port 80 of `x.y` is TCP: meshgate proxies HTTP"),
        (with_gateway("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec:\n  hosts: [x.y]\n  ports: [{number: 80, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: x.example.com}]\n"), "t.yaml: ServiceEntry default/se: spec.endpoints[0].address: `x.example.com` is not an IP address"),
        (MESH_GATEWAY.replace("spec:\n", "spec:\n  tagging: {forwardClientCert: APPEND_FORWARD}\n"), "t.yaml: MeshGateway istio-system/gw: spec.tagging.forwardClientCert: `APPEND_FORWARD` is not supported"),
        (MESH_GATEWAY.replace("spec:\n", "spec:\n  trust: {trustDomains: [Bad.Domain]}\n"), "t.yaml: MeshGateway istio-system/gw: spec.trust.trustDomains[0]: `Bad.Domain` is not a valid trust domain"),
        (MESH_GATEWAY.replace("  identity: {certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}\n", "") + "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: ISTIO_MUTUAL}}]\n", "t.yaml: MeshGateway istio-system/gw: spec.identity: required: listener https (port 443) is ISTIO_MUTUAL"),
    ];
    for (yaml, want) in cases {
        let got = errors(yaml);
        assert!(
            got.iter().any(|e| e.starts_with(want)),
            "want `{want}`, got {got:#?}"
        );
    }
}

#[test]
fn tcp_servers_and_routes() {
    let gateway = |servers: &str| {
        with_gateway(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: db, namespace: ns}}\nspec:\n  hosts: [db.internal]\n  ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  resolution: DNS\n"
        ))
    };
    let tcp = "  - {port: {number: 9000, name: tcp, protocol: TCP}, hosts: ['*']}\n";
    let tls = "  - {port: {number: 9443, name: tls, protocol: TLS}, hosts: ['*'], tls: {mode: ISTIO_MUTUAL}}\n";
    let vs = |spec: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: ns}}\nspec:\n  hosts: ['*']\n  gateways: [istio-system/gw]\n{spec}")
    };
    let route = "  tcp:\n  - match: [{port: 9443}]\n    route: [{destination: {host: db.internal}}]\n  - route: [{destination: {host: db.internal, port: {number: 5432}}}]\n";
    let model = load_str("t.yaml", &(gateway(&format!("{tcp}{tls}")) + &vs(route))).unwrap();
    for (port, tls_groups) in [(9000, 0), (9443, 1)] {
        let l = model.listeners.iter().find(|l| l.port == port).unwrap();
        assert_eq!(l.protocol, ListenerProtocol::Tcp);
        assert_eq!(l.tls.len(), tls_groups, "port {port}");
        assert_eq!(l.tcp_routes.len(), 2, "port {port}");
        let b = &model.backends[l.tcp_routes[0].backends[0].backend];
        assert_eq!((b.host.as_str(), b.port), ("db.internal", 5432));
    }
    let l = model.listeners.iter().find(|l| l.port == 9443).unwrap();
    assert!(l.tcp_routes[0].matches[0].matches(9443, [10, 0, 0, 1].into()));
    assert!(!l.tcp_routes[0].matches[0].matches(9000, [10, 0, 0, 1].into()));
    assert!(l.tcp_routes[1].matches.is_empty());

    let cases: &[(String, &str)] = &[
        (gateway("  - {port: {number: 9443, name: tls, protocol: TLS}, hosts: ['*']}\n"), "t.yaml: Gateway istio-system/gw: spec.servers[0].tls: protocol TLS needs tls"),
        (gateway(&format!("{tcp}  - {{port: {{number: 9000, name: h, protocol: HTTP}}, hosts: ['*']}}\n")), "t.yaml: Gateway istio-system/gw: spec.servers[1].port: port 9000 is already served as TCP"),
        (gateway("  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}\n") + &vs(route), "t.yaml: VirtualService ns/vs: spec.tcp: tcp routes apply to Gateway servers with protocol TCP"),
        (gateway(tcp) + &vs("  http:\n  - directResponse: {status: 200}\n"), "t.yaml: VirtualService ns/vs: spec.http: Gateway istio-system/gw serves port 9000 as TCP"),
        (gateway(tcp) + &vs("  tcp:\n  - match: [{sourceLabels: {app: x}}]\n    route: [{destination: {host: db.internal}}]\n"), "t.yaml: VirtualService ns/vs: spec.tcp[0].match[0].sourceLabels: this Istio field is not implemented by meshgate"),
        (gateway(tcp) + &vs("  tcp:\n  - match: [{destinationSubnets: [10.0.0.0/33]}]\n    route: [{destination: {host: db.internal}}]\n"), "t.yaml: VirtualService ns/vs: spec.tcp[0].match[0].destinationSubnets[0]: `10.0.0.0/33` is not an address or CIDR block"),
        (gateway(tcp) + &vs("  tcp:\n  - route: [{destination: {host: db.internal, port: {number: 5432}}, weight: 0}]\n"), "t.yaml: VirtualService ns/vs: spec.tcp[0].route: every destination has weight 0"),
        (gateway(tcp) + &vs("  tcp:\n  - route: [{destination: {host: other.internal}}]\n"), "t.yaml: VirtualService ns/vs: spec.tcp[0].route[0].destination.port: `other.internal` has no declared port"),
    ];
    for (yaml, want) in cases {
        let got = errors(yaml);
        assert!(
            got.iter().any(|e| e.starts_with(want)),
            "want `{want}`, got {got:#?}"
        );
    }
}

#[test]
fn destination_rules_most_specific_host_and_port_level_settings() {
    use crate::model::{LoadBalancer, UpstreamTls};
    let yaml = MESH_GATEWAY.replace("spec:\n", "spec:\n  outbound: {address: \"127.0.0.1:15001\"}\n  resolve: [{host: api.example.com, port: 443, address: \"127.0.0.1:18443\"}]\n")
        + r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}, {number: 8080, name: alt, protocol: HTTP2}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wide}
spec:
  host: "*.example.com"
  trafficPolicy: {tls: {mode: SIMPLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: narrow}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL, sni: api.mesh}
    loadBalancer: {simple: LEAST_REQUEST}
    portLevelSettings:
    - port: {number: 8080}
      tls: {mode: DISABLE}
"#;
    let model = load_str("t.yaml", &yaml).unwrap();
    let by_port = |p: u16| model.backends.iter().find(|b| b.port == p).unwrap();
    let b80 = by_port(80);
    assert!(
        matches!(&b80.policy.tls, UpstreamTls::IstioMutual(t) if t.sni.as_deref() == Some("api.mesh"))
    );
    assert_eq!(b80.policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(
        b80.policy.source.as_deref(),
        Some("DestinationRule default/narrow")
    );
    // The resolve override replaced the DNS endpoint for port 443.
    assert!(
        matches!(&b80.endpoints, Endpoints::Dns(e) if e == &[("127.0.0.1".to_string(), 18443)])
    );
    // Port-level tls replaces the top-level one; the load balancer is inherited.
    let b8080 = by_port(8080);
    assert!(matches!(b8080.policy.tls, UpstreamTls::Disable));
    assert_eq!(b8080.policy.load_balancer, LoadBalancer::LeastRequest);
    // The outbound listener routes both ports of the ServiceEntry host.
    let outbound = model
        .listeners
        .iter()
        .find(|l| l.name == "outbound")
        .unwrap();
    assert_eq!(outbound.routes.virtual_hosts()[0].routes.len(), 2);
}

#[test]
fn destination_rule_mistakes() {
    let dr = |policy: &str| {
        with_gateway(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr}}\nspec:\n  host: x.example.com\n  trafficPolicy: {policy}\n"
        ))
    };
    let cases: &[(String, &str)] = &[
        (dr("{tls: {mode: ISTIO_MUTUAL, clientCertificate: c.pem}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.tls.clientCertificate: not used with ISTIO_MUTUAL"),
        (dr("{tls: {mode: MUTUAL}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.tls: MUTUAL needs clientCertificate and privateKey"),
        (dr("{tls: {mode: ISTIO_MUTUAL, caCrl: crl.pem}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.tls.caCrl: not used with ISTIO_MUTUAL"),
        (dr("{tls: {mode: SOMETIMES}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.tls.mode: unknown TLS mode `SOMETIMES`"),
        (dr("{loadBalancer: {simple: PASSTHROUGH}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.loadBalancer.simple: `PASSTHROUGH` is not implemented"),
        (dr("{connectionPool: {http: {useClientProtocol: true}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.connectionPool.http.useClientProtocol: this Istio field is not implemented by meshgate"),
        (dr("{connectionPool: {http: {maxConcurrentStreams: -1}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.connectionPool.http.maxConcurrentStreams: `-1` is not a number of streams from 0 to 2147483647"),
        (dr("{connectionPool: {tcp: {idleTimeout: -1s}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.connectionPool.tcp.idleTimeout: `-1s` is not a positive duration"),
        (dr("{connectionPool: {tcp: {maxConnectionDuration: 500us}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration: `500us` is not a duration of 1ms or more in whole milliseconds"),
        (dr("{connectionPool: {tcp: {maxConnectionDuration: 1.5ms}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration: `1.5ms` is not a duration of 1ms or more in whole milliseconds"),
        (dr("{outlierDetection: {maxEjectionPercent: 120}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.outlierDetection.maxEjectionPercent: `120` is not a percentage"),
        (dr("{loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.loadBalancer: simple and consistentHash are exclusive"),
        (dr("{loadBalancer: {consistentHash: {useSourceIp: true, httpHeaderName: x-user}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.loadBalancer.consistentHash: exactly one of"),
        (dr("{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: `1000` is not a prime"),
        // The largest 64-bit prime: refused by its size, not after 2^32 trial divisions.
        (dr("{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 18446744073709551557}}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: `18446744073709551557` is not a prime"),
        (dr("{connectionPool: {http: {h2UpgradePolicy: ALWAYS}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: `ALWAYS` is not DEFAULT"),
        (dr("{portLevelSettings: [{tls: {mode: DISABLE}}]}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.portLevelSettings[0].port.number: required"),
        (dr("{connectionPool: {tcp: {connectTimeout: never}}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.connectionPool.tcp.connectTimeout: `never` is not a positive duration"),
        (dr("{proxyProtocol: {version: V3}}"), "t.yaml: DestinationRule default/dr: spec.trafficPolicy.proxyProtocol.version: `V3` is not a PROXY protocol version: V1 or V2"),
        (dr("{portLevelSettings: [{port: {number: 80}, proxyProtocol: {version: V2}}]}"), "t.yaml:14:60: DestinationRule default/dr: spec.trafficPolicy.portLevelSettings[0].proxyProtocol: unknown field `proxyProtocol`"),
        (dr("{proxyProtocol: {}}") + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [a.b]\n  http:\n  - route: [{destination: {host: x.example.com, port: {number: 80}}}]\n", "t.yaml: VirtualService default/vs: spec.http[0].route[0].destination: DestinationRule default/dr sets trafficPolicy.proxyProtocol for `x.example.com`: meshgate sends a PROXY header on the connections of tcp and tls routes"),
        (MESH_GATEWAY.replace("spec:\n", "spec:\n  tagging: {proxyProtocolTlv: 5}\n"), "t.yaml: MeshGateway istio-system/gw: spec.tagging.proxyProtocolTlv: 5 is not a custom PROXY v2 TLV type"),
        (MESH_GATEWAY.replace("rootCerts: r.pem}", "rootCerts: r.pem, crl: c.pem, expiredCrl: IGNORE}"), "t.yaml: MeshGateway istio-system/gw: spec.identity.expiredCrl: `IGNORE` is not USE or DENY"),
        (MESH_GATEWAY.replace("rootCerts: r.pem}", "rootCerts: r.pem, workloadApi: {socket: \"unix:///run/spire/agent.sock\"}}"), "t.yaml: MeshGateway istio-system/gw: spec.identity.certChain: not with `workloadApi`: the Workload API serves the chain, key and bundle"),
        (MESH_GATEWAY.replace("{certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}", "{certChain: c.pem, privateKey: k.pem}"), "t.yaml: MeshGateway istio-system/gw: spec.identity.rootCerts: required (or `workloadApi` instead of the three files)"),
        (MESH_GATEWAY.replace("{certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}", "{workloadApi: {socket: /run/spire/agent.sock}}"), "t.yaml: MeshGateway istio-system/gw: spec.identity.workloadApi.socket: `/run/spire/agent.sock`: not unix:///path or tcp://ip:port (SPIFFE_ENDPOINT_SOCKET syntax)"),
        (MESH_GATEWAY.replace("{certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}", "{workloadApi: {socket: \"unix:run/agent.sock\"}}"), "t.yaml: MeshGateway istio-system/gw: spec.identity.workloadApi.socket: `unix:run/agent.sock`: a unix: address needs an absolute path"),
        (MESH_GATEWAY.replace("{certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}", "{workloadApi: {socket: \"tcp://spire-agent:8081\"}}"), "t.yaml: MeshGateway istio-system/gw: spec.identity.workloadApi.socket: `tcp://spire-agent:8081`: a tcp:// address is an IP address and a port, no host name"),
        (MESH_GATEWAY.replace("{certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}", "{workloadApi: {spiffeId: \"spiffe://a/b?c\"}}"), "t.yaml: MeshGateway istio-system/gw: spec.identity.workloadApi.spiffeId: `spiffe://a/b?c`"),
        (MESH_GATEWAY.replace("{certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}", "{workloadApi: {startTimeout: 0s}}"), "t.yaml: MeshGateway istio-system/gw: spec.identity.workloadApi.startTimeout: `0s` is not a duration from 100ms to 1h"),
        (MESH_GATEWAY.replace("{certChain: c.pem, privateKey: k.pem, rootCerts: r.pem}", "{workloadApi: {path: /x}}"), "t.yaml:7:28: MeshGateway istio-system/gw: spec.identity.workloadApi.path: unknown field `path`"),
    ];
    for (yaml, want) in cases {
        let got = errors(yaml);
        assert!(
            got.iter().any(|e| e.starts_with(want)),
            "want `{want}`, got {got:#?}"
        );
    }
}

#[test]
fn check_warns_where_the_setup_is_weak_or_cannot_work() {
    let gateway = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ["*"], tls: {mode: ISTIO_MUTUAL}}]
"#;
    // No allow-list, no issuer binding, on an ISTIO_MUTUAL gateway.
    let model = load_str("t.yaml", &with_gateway(gateway)).unwrap();
    assert!(
        model.warnings.iter().any(|w| w
            .to_string()
            .contains("neither a trustDomains allow-list nor issuer binding")),
        "{:?}",
        model.warnings
    );

    // With an allow-list: no such warning, but a principal of a trust domain that can never
    // connect is pointed out.
    let trusted = with_gateway(gateway).replacen(
        "  identity:",
        "  trust: {trustDomains: [example.com]}\n  identity:",
        1,
    ) + r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: istio-system}
spec:
  rules: [{from: [{source: {principals: [partner.org/ns/a/sa/b, example.com/ns/a/sa/b]}}]}]
"#;
    let model = load_str("t.yaml", &trusted).unwrap();
    assert!(
        !model
            .warnings
            .iter()
            .any(|w| w.to_string().contains("neither a trustDomains")),
        "{:?}",
        model.warnings
    );
    let unreachable: Vec<_> = model
        .warnings
        .iter()
        .filter(|w| w.to_string().contains("can never match"))
        .collect();
    assert_eq!(unreachable.len(), 1, "{:?}", model.warnings);
    assert!(unreachable[0].to_string().contains("partner.org/ns/a/sa/b"));
    // An allow-list without issuer binding still lets one mesh's CA mint another allowed
    // domain's identities, this mesh's own included.
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.to_string().contains("spec.trust.issuers: empty")),
        "{:?}",
        model.warnings
    );
    let bound = trusted.replacen(
        "  trust: {trustDomains: [example.com]}",
        "  trust: {trustDomains: [example.com], issuers: [{spkiSha256: \"00000000000000000000000000000000000000000000000000000000000000aa\", trustDomains: [example.com]}]}",
        1,
    );
    let model = load_str("t.yaml", &bound).unwrap();
    assert!(
        !model
            .warnings
            .iter()
            .any(|w| w.code == Code::NoIssuerBinding || w.code == Code::IssuerNotBound),
        "{:?}",
        model.warnings
    );

    // Issuer binding that no CA of an accepted trust domain, or of an ISTIO_MUTUAL upstream's
    // expected one, is in: those handshakes would all fail.
    let partly = bound.replacen(
        "trust: {trustDomains: [example.com],",
        "trust: {trustDomains: [example.com, partner.org],",
        1,
    ) + r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: remote, namespace: istio-system}
spec:
  hosts: [api.remote.org]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: remote, namespace: istio-system}
spec:
  host: api.remote.org
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://remote.org/ns/istio-system/sa/gw, spiffe://example.com/ns/a/sa/b]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: remote, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: api.remote.org, port: {number: 443}}}]}]
"#;
    let model = load_str("t.yaml", &partly).unwrap();
    let not_bound: Vec<String> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::IssuerNotBound)
        .map(|w| w.message.clone())
        .collect();
    assert_eq!(not_bound.len(), 2, "{not_bound:?}");
    assert!(
        not_bound[0].starts_with("no CA listed may issue `partner.org`, which the handshake"),
        "{not_bound:?}"
    );
    assert!(
        not_bound[1].contains("`remote.org`, the trust domain DestinationRule istio-system/remote expects of ISTIO_MUTUAL upstream api.remote.org:443"),
        "{not_bound:?}"
    );
}

#[test]
fn an_outbound_listener_off_loopback_is_a_warning() {
    let open = MESH_GATEWAY.replace(
        "spec:\n",
        "spec:\n  outbound: {address: \"0.0.0.0:15001\"}\n",
    );
    let model = load_str("t.yaml", &open).unwrap();
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.to_string().contains("is not a loopback address")),
        "{:?}",
        model.warnings
    );
    let local = MESH_GATEWAY.replace(
        "spec:\n",
        "spec:\n  outbound: {address: \"127.0.0.1:15001\"}\n",
    );
    let model = load_str("t.yaml", &local).unwrap();
    assert!(
        !model
            .warnings
            .iter()
            .any(|w| w.to_string().contains("loopback")),
        "{:?}",
        model.warnings
    );
}

#[test]
fn limits_defaults_overrides_and_mistakes() {
    use std::time::Duration;
    let model = load_str("t.yaml", MESH_GATEWAY).unwrap();
    let limits = &model.proxy.limits;
    assert_eq!(limits.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(limits.handshake_timeout, Duration::from_secs(10));
    // The stream bounds: Envoy's defaults (5 min; no request timeout); 0s turns either off.
    assert_eq!(limits.stream_idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(limits.request_timeout, None);

    let with =
        |limits: &str| MESH_GATEWAY.replace("spec:\n", &format!("spec:\n  limits: {limits}\n"));
    let model = load_str(
        "t.yaml",
        &with("{idleTimeout: 90s, handshakeTimeout: 2s, maxConnectionsPerListener: 5}"),
    )
    .unwrap();
    let limits = &model.proxy.limits;
    assert_eq!(limits.idle_timeout, Some(Duration::from_secs(90)));
    assert_eq!(limits.handshake_timeout, Duration::from_secs(2));
    assert_eq!(limits.max_connections_per_listener, Some(5));
    // As Envoy's idle_timeout: 0 turns it off; 0 connections is no limit.
    let model = load_str(
        "t.yaml",
        &with("{idleTimeout: 0s, maxConnectionsPerListener: 0}"),
    )
    .unwrap();
    assert_eq!(model.proxy.limits.idle_timeout, None);
    assert_eq!(model.proxy.limits.max_connections_per_listener, None);
    let model = load_str(
        "t.yaml",
        &with("{streamIdleTimeout: 0s, requestTimeout: 90s, streamWriteBufferBytes: 16384}"),
    )
    .unwrap();
    let limits = &model.proxy.limits;
    assert_eq!(limits.stream_idle_timeout, None);
    assert_eq!(limits.request_timeout, Some(Duration::from_secs(90)));
    assert_eq!(limits.stream_write_buffer_bytes, 16384);
    // The extremes of each range load.
    let model = load_str("t.yaml", &with("{handshakeTimeout: 100ms, requestHeaderTimeout: 24h, idleTimeout: 1s, maxRequestHeaderBytes: 1048576, maxConnectionsPerListener: 1000000, http2MaxConcurrentStreams: 2147483647}")).unwrap();
    assert_eq!(
        model.proxy.limits.handshake_timeout,
        Duration::from_millis(100)
    );

    let cases = [
        ("{idleTimeout: soon}", "spec.limits.idleTimeout: `soon` is not a duration from 100ms to 86400s, or 0s for none"),
        ("{idleTimeout: 25h}", "spec.limits.idleTimeout: `25h` is not a duration from"),
        ("{handshakeTimeout: 0s}", "spec.limits.handshakeTimeout: `0s` is not a duration from 100ms to 86400s"),
        ("{handshakeTimeout: 1ns}", "spec.limits.handshakeTimeout: `1ns` is not a duration from"),
        ("{requestHeaderTimeout: 99ms}", "spec.limits.requestHeaderTimeout: `99ms` is not a duration from"),
        ("{maxRequestHeaderBytes: 100}", "spec.limits.maxRequestHeaderBytes: 100 is not from 8192 to 1048576"),
        ("{maxRequestHeaderBytes: 4294967295}", "spec.limits.maxRequestHeaderBytes: 4294967295 is not from 8192 to 1048576"),
        ("{maxConnectionsPerListener: 1000001}", "spec.limits.maxConnectionsPerListener: 1000001 is not from 1 to 1000000"),
        ("{http2MaxConcurrentStreams: 0}", "spec.limits.http2MaxConcurrentStreams: 0 is not from 1 to 2147483647"),
        ("{streamIdleTimeout: 10ms}", "spec.limits.streamIdleTimeout: `10ms` is not a duration from 100ms to 86400s, or 0s for none"),
        ("{requestTimeout: 9999999999999999999s}", "spec.limits.requestTimeout: `9999999999999999999s` is not a duration from"),
        ("{streamWriteBufferBytes: 1024}", "spec.limits.streamWriteBufferBytes: 1024 is not from 16384 to 16777216"),
        ("{keepalive: 1s}", "keepalive"),
    ];
    for (reload, want) in [
        ("{pollInterval: 1ns}", "spec.reload.pollInterval: `1ns` is not a duration from 10ms to 86400s, or 0s for never"),
        ("{pollInterval: 9999999999999999999s}", "spec.reload.pollInterval: `9999999999999999999s` is not a duration from"),
        ("{pollInterval: 25h}", "spec.reload.pollInterval: `25h` is not"),
    ] {
        let errs = errors(&MESH_GATEWAY.replace("spec:\n", &format!("spec:\n  reload: {reload}\n")));
        assert!(errs.iter().any(|e| e.contains(want)), "{reload}: {errs:?}");
    }
    for (limits, want) in cases {
        let errs = errors(&with(limits));
        assert!(
            errs.iter().any(|e| e.contains("t.yaml")
                && e.contains("MeshGateway istio-system/gw")
                && e.contains(want)),
            "{limits}: {errs:?}"
        );
    }
}

/// An AuthorizationPolicy in the MeshGateway's namespace with `spec` as given.
fn policy(name: &str, spec: &str) -> String {
    with_gateway(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: istio-system}}\nspec: {spec}\n"
    ))
}

#[test]
fn policy_values_that_cannot_match_are_errors() {
    let rule = |r: &str| policy("p", &format!("{{action: DENY, rules: [{r}]}}"));
    let cases: &[(String, &str)] = &[
        (rule("{when: [{key: source.ip, values: [10.0.0.0/33]}]}"), "spec.rules[0].when[0].values[0]: `10.0.0.0/33` is not an address or CIDR block"),
        (rule("{when: [{key: remote.ip, notValues: [not-an-ip]}]}"), "spec.rules[0].when[0].notValues[0]: `not-an-ip` is not an address"),
        (rule("{when: [{key: destination.ip, values: [10.0.0.1/x]}]}"), "spec.rules[0].when[0].values[0]: `10.0.0.1/x` is not an address"),
        (rule("{when: [{key: destination.port, values: [80a]}]}"), "spec.rules[0].when[0].values[0]: `80a` is not a port"),
        (rule("{to: [{operation: {ports: [\"0\"]}}]}"), "spec.rules[0].to[0].operation.ports[0]: `0` is not a port"),
        (rule("{from: [{source: {principals: [\"example.com/ns/*/sa/app\"]}}]}"), "spec.rules[0].from[0].source.principals[0]: `example.com/ns/*/sa/app` has a `*`"),
        (rule("{from: [{source: {principals: [\"spiffe://example.com/ns/a/sa/b\"]}}]}"), "starts with spiffe://"),
        (rule("{from: [{source: {principals: [\"example.com\"]}}]}"), "`example.com` is not a principal"),
        (rule("{from: [{source: {trustDomains: [Example.com]}}]}"), "spec.rules[0].from[0].source.trustDomains[0]: `Example.com` is not a trust domain"),
        (rule("{from: [{source: {namespaces: [\"a b\"]}}]}"), "spec.rules[0].from[0].source.namespaces[0]: `a b` has ` `"),
        (rule("{from: [{source: {namespaces: [\"\"]}}]}"), "`` is empty"),
        (rule("{to: [{operation: {hosts: [\"a.*.com\"]}}]}"), "spec.rules[0].to[0].operation.hosts[0]: `a.*.com` has a `*`"),
        (rule("{to: [{operation: {methods: [\"G E\"]}}]}"), "operation.methods[0]: `G E` has ` `"),
        (rule("{to: [{operation: {paths: [\"/foo{*}\"]}}]}"), "operation.paths[0]: `/foo{*}` has segment `foo{*}`"),
        (rule("{to: [{operation: {paths: [\"/{**}/{*}\"]}}]}"), "{**} must be the last operator"),
        (rule("{to: [{operation: {paths: [\"/a//{*}\"]}}]}"), "has an empty segment"),
        (rule("{to: [{operation: {paths: [\"/api/{id}\"]}}]}"), "has segment `{id}`"),
        (rule("{to: [{operation: {paths: [\"admin/*\"]}}]}"), "`admin/*` does not start with `/`"),
        (rule("{to: [{operation: {paths: [\"/a/*/b\"]}}]}"), "`/a/*/b` has a `*` inside"),
        (rule("{to: [{operation: {paths: [\"//admin\"]}}]}"), "`//admin` is never seen"),
        (rule("{to: [{operation: {paths: [\"/admin?x=1\"]}}]}"), "holds a query"),
        (rule("{when: [{key: \"request.headers[x-a]\"}]}"), "spec.rules[0].when[0]: values or notValues is required"),
        (rule("{when: [{key: \"request.headers[]\", values: [a]}]}"), "is not a header name"),
        (rule("{when: [{key: \"destination.labels[app]\", values: [a]}]}"), "`destination.labels[app]` is not a key Istio supports"),
        (rule("{from: []}"), "spec.rules[0].from: empty"),
        (rule("{to: []}"), "spec.rules[0].to: empty"),
        (rule("{from: [{source: {}}]}"), "spec.rules[0].from[0].source: an empty source"),
        (rule("{to: [{operation: {}}]}"), "spec.rules[0].to[0].operation: an empty operation"),
        (rule("{from: [{source: {serviceAccounts: [ns/a], principals: [\"*\"]}}]}"), "serviceAccounts cannot be set with principals or namespaces"),
        (rule("{from: [{source: {serviceAccounts: [\"ns/*\"]}}]}"), "service accounts take no wildcard"),
        (rule("{from: [{source: {serviceAccounts: [a/b/c]}}]}"), "`a/b/c` is not `<namespace>/<service-account>`"),
        (policy("p", "{action: DENY}"), "spec.rules: a DENY policy needs rules"),
        (policy("p", "{selector: {matchLabels: {app: \"*\"}}, rules: [{}]}"), "spec.selector.matchLabels.app"),
        (with_gateway("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system, annotations: {istio.io/dry-run: maybe}}\nspec: {rules: [{}]}\n"), "metadata.annotations.istio.io/dry-run: `maybe` is not true or false"),
        (with_gateway("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: AUDIT, rules: [{}]}\n"), "dry-run applies to ALLOW and DENY policies only"),
    ];
    for (yaml, want) in cases {
        let got = errors(yaml);
        assert!(
            got.iter()
                .any(|e| e.contains(want) && e.contains("AuthorizationPolicy istio-system/p")),
            "want `{want}`, got {got:#?}"
        );
    }
}

#[test]
fn policy_values_are_parsed_at_load() {
    use crate::model::authz::{ConditionValues, PathMatch};
    let yaml = policy(
        "p",
        r#"
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin/{*}", "/files/{**}", "/exact", "/pre*", "*.png", "*"]}}]
    when: [{key: destination.port, values: ["443"]}, {key: source.ip, values: [10.0.0.0/8]}]
  - from: [{source: {serviceAccounts: [team/app, local-sa], trustDomains: [cluster.local]}}]
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let rules = &model.policies.deny[0].rules;
    let paths = rules[0].to[0].paths.as_ref().unwrap();
    assert!(
        matches!(&paths[0], PathMatch::Template(t) if t.matches("/admin/x") && !t.matches("/admin/x/y"))
    );
    assert!(matches!(&paths[1], PathMatch::Template(t) if t.matches("/files/a/b")));
    assert!(matches!(&paths[2], PathMatch::Exact(_)));
    assert!(matches!(&paths[3], PathMatch::Prefix(_)));
    assert!(matches!(&paths[4], PathMatch::Suffix(_)));
    assert!(matches!(&paths[5], PathMatch::Any));
    assert!(matches!(rules[0].when[0].values, Some(ConditionValues::Ports(ref p)) if p == &[443]));
    assert!(matches!(
        rules[0].when[1].values,
        Some(ConditionValues::Addresses(_))
    ));
    let accounts = rules[1].from[0].service_accounts.as_ref().unwrap();
    assert_eq!(accounts[0].namespace, "team");
    assert_eq!(
        accounts[1].namespace, "istio-system",
        "a bare name takes the policy's namespace"
    );
}

#[test]
fn dry_run_policies_are_kept_apart() {
    let yaml = with_gateway(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: trial
  namespace: istio-system
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/{**}"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: enforced, namespace: istio-system, annotations: {istio.io/dry-run: "false"}}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/secret"]}}]}]
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    assert_eq!(model.policies.dry_run.deny.len(), 1);
    assert_eq!(
        model.policies.dry_run.deny[0].name,
        "AuthorizationPolicy istio-system/trial"
    );
    assert_eq!(model.policies.deny.len(), 1);
    assert_eq!(
        model.policies.deny[0].name,
        "AuthorizationPolicy istio-system/enforced"
    );
}

#[test]
fn path_normalization_from_mesh_config() {
    use crate::model::path::{EscapedSlashes, NormalizationMode};
    let model = load_str("t.yaml", MESH_GATEWAY).unwrap();
    let p = model.proxy.http.path_normalization;
    assert_eq!(
        (p.mode, p.merge_slashes, p.escaped_slashes),
        (None, true, EscapedSlashes::Reject)
    );
    let yaml = with_gateway(
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: i, namespace: istio-system}\nspec: {meshConfig: {pathNormalization: {normalization: BASE}}}\n",
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let p = model.proxy.http.path_normalization;
    assert_eq!(
        (p.mode, p.merge_slashes, p.escaped_slashes),
        (Some(NormalizationMode::Base), false, EscapedSlashes::Keep)
    );
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.to_string().contains("dodge a policy")),
        "{:?}",
        model.warnings
    );
    let yaml = with_gateway(
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: i, namespace: istio-system}\nspec: {meshConfig: {pathNormalization: {normalization: SOMETIMES}}}\n",
    );
    assert!(errors(&yaml)[0]
        .contains("spec.meshConfig.pathNormalization.normalization: `SOMETIMES` is not NONE"));
}

#[test]
fn route_header_operations_may_not_touch_owned_headers() {
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]\n---\n";
    let vs = |http: &str| {
        with_gateway(&format!(
            "{gw}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: ns}}\nspec:\n  hosts: [a.b]\n  gateways: [istio-system/gw]\n  http:\n  - {http}\n"
        ))
    };
    let cases = [
        (vs("{headers: {request: {set: {x-mesh-origin: local}}}, directResponse: {status: 200}}"), "spec.http[0].headers.request.set.x-mesh-origin: `x-mesh-origin` is owned by the proxy"),
        (vs("{headers: {request: {remove: [X-Forwarded-Client-Cert]}}, directResponse: {status: 200}}"), "spec.http[0].headers.request.remove[0]: `x-forwarded-client-cert` is owned"),
        (vs("{headers: {request: {add: {x-forwarded-for: 1.2.3.4}}}, directResponse: {status: 200}}"), "headers.request.add.x-forwarded-for"),
        (vs("{headers: {request: {set: {host: x}}}, directResponse: {status: 200}}"), "use rewrite.authority"),
        (vs("{match: [{method: {exact: CONNECT}}], directResponse: {status: 200}}"), "spec.http[0].match[0].method: CONNECT cannot be routed"),
        (vs("{route: [{destination: {host: a.b}, headers: {request: {set: {x-mesh-origin: local}}}}]}"), "spec.http[0].route[0].headers.request.set.x-mesh-origin: `x-mesh-origin` is owned by the proxy"),
        (vs("{route: [{destination: {host: a.b}, headers: {request: {set: {host: x}}}}]}"), "spec.http[0].route[0].headers.request.set.host: `host` is the request's authority"),
        (vs("{headers: {request: {set: {content-length: \"%REQ(x-len)%\"}}}, directResponse: {status: 200}}"), "spec.http[0].headers.request.set.content-length: `content-length` describes the message on one connection"),
        (vs("{headers: {response: {remove: [Transfer-Encoding]}}, directResponse: {status: 200}}"), "spec.http[0].headers.response.remove[0]: `transfer-encoding` describes"),
        (vs("{route: [{destination: {host: a.b}, headers: {request: {add: {connection: close}}}}]}"), "spec.http[0].route[0].headers.request.add.connection: `connection` describes"),
        (vs("{rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}, route: [{destination: {host: a.b}}]}"), "spec.http[0].rewrite.uriRegexRewrite: rewrite may only contain one of uri and uriRegexRewrite"),
        (vs("{rewrite: {uriRegexRewrite: {rewrite: /b}}, route: [{destination: {host: a.b}}]}"), "spec.http[0].rewrite.uriRegexRewrite.match: required, with rewrite"),
        (vs("{rewrite: {uriRegexRewrite: {match: '(', rewrite: /b}}, route: [{destination: {host: a.b}}]}"), "spec.http[0].rewrite.uriRegexRewrite.match: invalid regex"),
        (vs("{rewrite: {uriRegexRewrite: {match: '^/(a)', rewrite: '/\\2'}}, route: [{destination: {host: a.b}}]}"), "spec.http[0].rewrite.uriRegexRewrite.rewrite: `\\2` names a group the pattern does not have (it has 1)"),
        (vs("{rewrite: {uriRegexRewrite: {match: a}}, route: [{destination: {host: a.b}}]}"), "spec.http[0].rewrite.uriRegexRewrite.rewrite: required, with match"),
        // Envoy refuses a value it cannot read as text and command operators; so does meshgate,
        // and a command it does not render is never sent as its own text.
        (vs("{headers: {request: {set: {x-share: 100%}}}, directResponse: {status: 200}}"), "spec.http[0].headers.request.set.x-share: `100%`: `%` starts no command operator (at byte 3; a `%` of the value itself is written `%%`)"),
        (vs("{headers: {response: {add: {x-up: \"%UPSTREAM_HOST%\"}}}, directResponse: {status: 200}}"), "spec.http[0].headers.response.add.x-up: `%UPSTREAM_HOST%`: `%UPSTREAM_HOST%` is not a command operator meshgate renders"),
        (vs("{headers: {request: {set: {x-t: \"%START_TIME(%Q)%\"}}}, directResponse: {status: 200}}"), "spec.http[0].headers.request.set.x-t: `%START_TIME(%Q)%`: `START_TIME(%Q)`: `%Q` is not a specifier"),
    ];
    assert_errors(&cases);
    // Response headers are the backend's: setting them is fine.
    load_str(
        "t.yaml",
        &vs("{headers: {response: {set: {x-forwarded-for: x}}}, directResponse: {status: 200}}"),
    )
    .unwrap();
}

#[test]
fn a_resource_declared_twice_is_an_error_naming_both_places() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http: [{directResponse: {status: 200}}]\n";
    let yaml = with_gateway(&format!("{vs}---\n{vs}"));
    let got = errors(&yaml);
    assert!(
        got.iter().any(|e| e.contains("VirtualService default/reviews: metadata.name: declared twice: at t.yaml:9 and at t.yaml:16")),
        "{got:#?}"
    );
    // One name in two kinds, or in two namespaces, is two resources.
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec: {host: reviews}\n";
    let other = vs.replace("namespace: default", "namespace: other");
    load_str(
        "t.yaml",
        &with_gateway(&format!("{vs}---\n{dr}---\n{other}")),
    )
    .unwrap();
}

/// A MeshGateway in `default` with an outbound listener (a sidecar), and `extra`.
fn sidecar(extra: &str) -> String {
    format!(
        "apiVersion: meshgate.dev/v1alpha1\nkind: MeshGateway\nmetadata: {{name: sidecar, namespace: default}}\nspec:\n  labels: {{app: productpage}}\n  outbound: {{address: \"127.0.0.1:15001\"}}\n---\n{extra}"
    )
}

const BOOKINFO_REVIEWS: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {app: reviews, version: v1}}
  - {address: 10.0.0.2, labels: {app: reviews, version: v2}}
  - {address: 10.0.0.3, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
  - {name: v3, labels: {version: v3}}
  - name: all
"#;

#[test]
fn subsets_select_endpoints_by_label_and_merge_policies() {
    use crate::model::LoadBalancer;
    let yaml = sidecar(&format!(
        "{BOOKINFO_REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 50}}\n    - {{destination: {{host: reviews, subset: v3}}, weight: 50}}\n"
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    let find = |subset: Option<&str>| {
        model
            .backends
            .iter()
            .find(|b| {
                b.host == "reviews.default.svc.cluster.local" && b.subset.as_deref() == subset
            })
            .unwrap_or_else(|| panic!("no backend for {subset:?}"))
    };
    let ip = |b: &crate::model::Backend| match &b.endpoints {
        Endpoints::Static(list) => list.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ip(find(Some("v1"))), ["10.0.0.1:9080"]);
    assert_eq!(ip(find(Some("v2"))), ["10.0.0.2:9080"]);
    assert_eq!(ip(find(Some("v3"))), ["10.0.0.3:9080"]);
    assert_eq!(
        ip(find(None)).len(),
        3,
        "the outbound route to the service itself"
    );
    // The subset's block replaces the rule's; the others inherit it.
    assert_eq!(
        find(Some("v2")).policy.load_balancer,
        LoadBalancer::RoundRobin
    );
    assert_eq!(find(Some("v1")).policy.load_balancer, LoadBalancer::Random);
    // `all` is named by no route.
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.code == Code::SubsetUnused && w.message.contains("subset `all`")),
        "{:?}",
        model.warnings
    );
}

#[test]
fn destination_rules_of_one_host_merge_as_istio_does() {
    use crate::model::LoadBalancer;
    let route = |subsets: &[&str]| {
        let destinations: Vec<String> = subsets
            .iter()
            .map(|s| format!("    - {{destination: {{host: reviews, subset: {s}}}, weight: 1}}\n"))
            .collect();
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n{}",
            destinations.concat()
        )
    };
    // A second rule of the host, created later: its new subset joins; its `v1` and its
    // top-level policy come after the first rule's and are ignored.
    let yaml = sidecar(&format!(
        "{BOOKINFO_REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews-canary, namespace: default, creationTimestamp: \"2024-05-01T12:00:00Z\"}}\nspec:\n  host: reviews.default.svc.cluster.local\n  trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}\n  subsets:\n  - {{name: canary, labels: {{version: v3}}}}\n  - {{name: v1, labels: {{version: v2}}}}\n{}",
        route(&["v1", "canary"])
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    let find = |subset: &str| {
        model
            .backends
            .iter()
            .find(|b| b.subset.as_deref() == Some(subset))
            .unwrap_or_else(|| panic!("no backend for {subset}"))
    };
    let ip = |b: &crate::model::Backend| match &b.endpoints {
        Endpoints::Static(list) => list.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ip(find("canary")), ["10.0.0.3:9080"]);
    assert_eq!(ip(find("v1")), ["10.0.0.1:9080"]);
    for subset in ["canary", "v1"] {
        assert_eq!(find(subset).policy.load_balancer, LoadBalancer::Random);
        assert_eq!(
            find(subset).policy.source.as_deref(),
            Some("DestinationRule default/reviews")
        );
    }
    let ignored: Vec<(&str, &str)> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::DestinationRuleSettingIgnored)
        .map(|w| (w.resource.as_deref().unwrap(), w.field.as_deref().unwrap()))
        .collect();
    assert_eq!(
        ignored,
        [
            ("DestinationRule default/reviews-canary", "spec.subsets[1]"),
            (
                "DestinationRule default/reviews-canary",
                "spec.trafficPolicy"
            ),
        ]
    );

    // The first rule (by name: none has a creationTimestamp) has no top-level policy: a later
    // rule's applies.
    let yaml = sidecar(&format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: a-subsets, namespace: default}}\nspec:\n  host: reviews\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: b-policy, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}\n  subsets: [{{name: v2, labels: {{version: v2}}}}]\n{}",
        BOOKINFO_REVIEWS.split("---").next().unwrap(),
        route(&["v1", "v2"])
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    for subset in ["v1", "v2"] {
        let b = model
            .backends
            .iter()
            .find(|b| b.subset.as_deref() == Some(subset))
            .unwrap();
        assert_eq!(b.policy.load_balancer, LoadBalancer::LeastRequest);
        assert_eq!(
            b.policy.source.as_deref(),
            Some("DestinationRule default/b-policy")
        );
    }
    assert!(
        !model
            .warnings
            .iter()
            .any(|w| w.code == Code::DestinationRuleSettingIgnored),
        "{:?}",
        model.warnings
    );

    // The order rests on timestamps as Kubernetes writes them: anything else is an error.
    let bad = sidecar(&BOOKINFO_REVIEWS.replacen(
        "metadata: {name: reviews, namespace: default}",
        "metadata: {name: reviews, namespace: default, creationTimestamp: yesterday}",
        1,
    ));
    let e = errors(&bad);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("ServiceEntry default/reviews: metadata.creationTimestamp: `yesterday`"),
        "{e:?}"
    );
}

/// A DestinationRule's `workloadSelector`, as Istio's `SidecarScope.DestinationRule` applies
/// it to one workload (this MeshGateway: namespace `default`, labels `app: productpage`).
#[test]
fn destination_rules_with_a_workload_selector_apply_to_the_workloads_they_select() {
    use crate::model::LoadBalancer;
    let selected = |name: &str, ns: &str, created: &str, labels: &str, extra: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  host: reviews.default.svc.cluster.local\n  workloadSelector: {{matchLabels: {labels}}}\n  trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}\n{extra}"
        )
    };
    let route = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /v1}}]\n    route: [{destination: {host: reviews, subset: v1}}]\n  - route: [{destination: {host: reviews}}]\n";
    // BOOKINFO_REVIEWS' rule (RANDOM, subsets v1..v3) has no timestamp: Istio orders it first
    // among rules without a selector, and a selecting rule before all of them.
    let load = |rules: &str| {
        let yaml = sidecar(&format!("{BOOKINFO_REVIEWS}{rules}{route}"));
        load_str("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"))
    };
    let backend = |model: &crate::model::Model, subset: Option<&str>| {
        model
            .backends
            .iter()
            .find(|b| {
                b.host == "reviews.default.svc.cluster.local" && b.subset.as_deref() == subset
            })
            .map(|b| {
                (
                    b.policy.source.clone().unwrap_or_default(),
                    b.policy.load_balancer.clone(),
                )
            })
    };
    let warned = |model: &crate::model::Model, code: Code| -> Vec<String> {
        model
            .warnings
            .iter()
            .filter(|w| w.code == code)
            .map(|w| w.resource.clone().unwrap_or_default())
            .collect()
    };

    // Selecting this proxy, created after the rule without a selector: it applies in its
    // place. That rule's subsets do not join it (its exportTo does not list `.`).
    let model = load(&selected(
        "mine",
        "default",
        "2024-01-01T00:00:00Z",
        "{app: productpage}",
        "",
    ));
    assert_eq!(
        backend(&model, None),
        Some((
            "DestinationRule default/mine".into(),
            LoadBalancer::LeastRequest
        ))
    );
    assert_eq!(
        warned(&model, Code::DestinationRuleSettingIgnored),
        ["DestinationRule default/reviews"]
    );
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.code == Code::SubsetNotFound && w.message.contains("`v1`")),
        "{:?}",
        model.warnings
    );

    // A rule without a selector whose exportTo lists `.` (alone or with more, Istio's set
    // comparison) merges into it: its subsets join, the selecting rule's top-level policy
    // stays. Listing the namespace by name is another set: it stays apart.
    let versions = |export: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: versions, namespace: default}}\nspec:\n  host: reviews\n  exportTo: {export}\n  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n"
        )
    };
    let mine = selected(
        "mine",
        "default",
        "2024-01-01T00:00:00Z",
        "{app: productpage}",
        "",
    );
    for (export, joins) in [("[.]", true), ("[., team]", true), ("[default]", false)] {
        let model = load(&format!("{mine}{}", versions(export)));
        for subset in [None, Some("v1")] {
            assert_eq!(
                backend(&model, subset),
                Some((
                    "DestinationRule default/mine".into(),
                    LoadBalancer::LeastRequest
                )),
                "{export} {subset:?}"
            );
        }
        let not_found = model
            .warnings
            .iter()
            .any(|w| w.code == Code::SubsetNotFound && w.message.contains("`v1`"));
        assert_eq!(not_found, !joins, "{export}: {:?}", model.warnings);
        let v1 = model
            .backends
            .iter()
            .find(|b| b.subset.as_deref() == Some("v1"))
            .unwrap();
        let endpoints = match &v1.endpoints {
            Endpoints::Static(list) => list.len(),
            Endpoints::Undefined => 0,
            other => panic!("{other:?}"),
        };
        assert_eq!(endpoints, if joins { 1 } else { 0 }, "{export}");
    }

    // Rules without a selector kept apart by their exportTo would be refused together; with a
    // selecting rule answering for the host here, their lists are never looked at.
    let model = load(&format!(
        "{mine}{}{}",
        versions("['*']"),
        versions("[team]").replace("name: versions,", "name: versions-team,")
    ));
    assert_eq!(
        backend(&model, None).unwrap().0,
        "DestinationRule default/mine"
    );

    // Selecting other workloads, or in another namespace: it applies to nothing here. (Istio's
    // lookup lets such a rule of the proxy's namespace still stand for its host, so that a less
    // specific rule does not apply either; meshgate follows the documented behaviour.)
    for (ns, labels) in [
        ("default", "{app: reviews}"),
        ("team", "{app: productpage}"),
    ] {
        let model = load(&selected("theirs", ns, "2024-01-01T00:00:00Z", labels, ""));
        assert_eq!(
            backend(&model, None),
            Some((
                "DestinationRule default/reviews".into(),
                LoadBalancer::Random
            )),
            "{ns} {labels}"
        );
        assert_eq!(
            warned(&model, Code::PolicyNotApplied),
            [format!("DestinationRule {ns}/theirs")]
        );
    }

    // Two rules that select this proxy with other selectors: the first in Istio's order
    // applies; the later one, and exportTo on a selecting rule, are reported.
    let model = load(&format!(
        "{}{}",
        selected(
            "later",
            "default",
            "2024-02-01T00:00:00Z",
            "{}",
            "  exportTo: ['*']\n  subsets: [{name: v1, labels: {version: v1}}]\n"
        ),
        selected(
            "first",
            "default",
            "2024-01-01T00:00:00Z",
            "{app: productpage}",
            ""
        )
    ));
    assert_eq!(
        backend(&model, None).unwrap().0,
        "DestinationRule default/first"
    );
    let ignored: Vec<(String, Option<String>)> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::DestinationRuleSettingIgnored)
        .map(|w| (w.resource.clone().unwrap_or_default(), w.field.clone()))
        .collect();
    assert!(
        ignored.contains(&(
            "DestinationRule default/later".into(),
            Some("spec.exportTo".into())
        )),
        "{ignored:?}"
    );
    assert!(
        ignored.contains(&("DestinationRule default/later".into(), None)),
        "{ignored:?}"
    );

    // A `*` or an empty key matches nothing: refused, as Istio's validation refuses it.
    let e = errors(&sidecar(&format!(
        "{BOOKINFO_REVIEWS}{}",
        selected("bad", "default", "2024-01-01T00:00:00Z", "{app: '*'}", "")
    )));
    assert_eq!(
        e,
        ["t.yaml: DestinationRule default/bad: spec.workloadSelector.matchLabels.app: an empty key or a `*` matches nothing: labels are compared exactly"]
    );
}

/// Istio's `PushContext.destinationRule`: the proxy's namespace first, then the service's,
/// then the root namespace; a rule of any other namespace does not apply.
#[test]
fn destination_rules_apply_by_namespace_as_istio_chooses_them() {
    use crate::model::{LoadBalancer, UpstreamTls};
    let dr = |ns: &str, name: &str, host: &str, policy: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: \"{host}\"\n  trafficPolicy: {policy}\n"
        )
    };
    let service = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: team}\nspec:\n  hosts: [api.team.example]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";
    let other = dr(
        "other",
        "downgrade",
        "api.team.example",
        "{tls: {mode: SIMPLE}}",
    );
    let root = dr(
        "istio-system",
        "mesh",
        "*.team.example",
        "{tls: {mode: ISTIO_MUTUAL}}",
    );
    let team = dr("team", "api", "api.team.example", "{tls: {mode: DISABLE}}");
    let own = dr(
        "default",
        "mine",
        "*.example",
        "{loadBalancer: {simple: RANDOM}}",
    );
    let policy = |docs: &[&str]| {
        let model = load_str("t.yaml", &sidecar(&format!("{service}{}", docs.concat()))).unwrap();
        let b = model
            .backends
            .iter()
            .find(|b| b.host == "api.team.example")
            .unwrap();
        (b.policy.clone(), model.warnings)
    };
    // Another namespace's rule, first in order and as specific, does not apply: the root's does.
    let (p, warnings) = policy(&[&other, &root]);
    assert!(matches!(p.tls, UpstreamTls::IstioMutual(_)), "{:?}", p.tls);
    assert_eq!(
        p.source.as_deref(),
        Some("DestinationRule istio-system/mesh")
    );
    let out_of_scope: Vec<_> = warnings
        .iter()
        .filter(|w| w.code == Code::DestinationRuleUnused)
        .map(|w| (w.resource.as_deref().unwrap(), w.field.as_deref().unwrap()))
        .collect();
    assert_eq!(
        out_of_scope,
        [("DestinationRule other/downgrade", "metadata.namespace")]
    );
    // The service's namespace before the root.
    let (p, _) = policy(&[&root, &team]);
    assert!(matches!(p.tls, UpstreamTls::Disable), "{:?}", p.tls);
    assert_eq!(p.source.as_deref(), Some("DestinationRule team/api"));
    // The proxy's namespace before the service's, however much less specific its host.
    let (p, _) = policy(&[&root, &team, &own]);
    assert_eq!(p.load_balancer, LoadBalancer::Random);
    assert_eq!(p.source.as_deref(), Some("DestinationRule default/mine"));

    // A proxy in the root namespace (a gateway in istio-system) looks at the service's
    // namespace first: Istio's step for its own namespace takes only rules exported to it
    // alone (push_context_test: "dr in the svc ns takes effect on proxy in root ns").
    let gateway = |docs: &[&str]| {
        let yaml = sidecar(&format!("{service}{}", docs.concat())).replacen(
            "name: sidecar, namespace: default",
            "name: gw, namespace: istio-system",
            1,
        );
        let model = load_str("t.yaml", &yaml).unwrap();
        let b = model
            .backends
            .iter()
            .find(|b| b.host == "api.team.example")
            .unwrap();
        b.policy.source.clone()
    };
    // A Kubernetes service nothing here declares is in the namespace its name says: another
    // namespace's rule, loaded first, does not apply to it.
    let k8s = "reviews.team.svc.cluster.local";
    let route = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: default}}\nspec:\n  hosts: [r.example]\n  http: [{{route: [{{destination: {{host: {k8s}, port: {{number: 9080}}}}}}]}}]\n"
    );
    let yaml = sidecar(&format!(
        "{service}{route}{}{}",
        dr("other", "a", k8s, "{tls: {mode: SIMPLE}}"),
        dr("team", "b", k8s, "{tls: {mode: ISTIO_MUTUAL}}")
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    let b = model.backends.iter().find(|b| b.host == k8s).unwrap();
    assert_eq!(b.policy.source.as_deref(), Some("DestinationRule team/b"));

    let root_exact = dr(
        "istio-system",
        "exact",
        "api.team.example",
        "{tls: {mode: ISTIO_MUTUAL}}",
    );
    assert_eq!(
        gateway(&[&root_exact, &team]).as_deref(),
        Some("DestinationRule team/api")
    );
    assert_eq!(
        gateway(&[&root_exact, &other]).as_deref(),
        Some("DestinationRule istio-system/exact")
    );
}

#[test]
fn mesh_virtual_services_of_one_host_do_not_merge() {
    let vs = |name: &str, subset: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{uri: {{prefix: /{name}}}}}]\n    route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
        )
    };
    // Loaded second, `first` comes first in Istio's order (by name, without timestamps).
    let yaml = sidecar(&format!(
        "{BOOKINFO_REVIEWS}{}{}",
        vs("second", "v2"),
        vs("first", "v1")
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    let outbound = model
        .listeners
        .iter()
        .find(|l| l.name == "outbound")
        .unwrap();
    let vh = outbound.routes.find("reviews").unwrap();
    assert_eq!(vh.source, "VirtualService default/first");
    assert_eq!(vh.routes.len(), 1);
    let conflicts: Vec<&str> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::ConflictingMeshVirtualServiceHosts)
        .map(|w| w.resource.as_deref().unwrap())
        .collect();
    assert_eq!(conflicts, ["VirtualService default/second"]);
}

#[test]
fn port_level_settings_replace_the_whole_policy_as_istio_documents() {
    use crate::model::{LoadBalancer, UpstreamTls};
    let yaml = sidecar(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: http-alt, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.example.com
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 7, idleTimeout: 90s, tcpKeepalive: {time: 30s, interval: 5s, probes: 3}}}
    portLevelSettings:
    - port: {number: 8080}
      tls: {mode: SIMPLE}
  subsets:
  - name: pinned
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 3}}
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: ROUND_ROBIN}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  http:
  - match: [{port: 81}]
    route: [{destination: {host: api.example.com, port: {number: 80}, subset: pinned}}]
  - match: [{port: 82}]
    route: [{destination: {host: api.example.com, port: {number: 8080}, subset: pinned}}]
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let b = |port: u16, subset: Option<&str>| {
        model
            .backends
            .iter()
            .find(|b| b.port == port && b.subset.as_deref() == subset)
            .unwrap()
    };
    // Port 8080's entry replaces everything: RANDOM and maxConnections are not inherited.
    let p = &b(8080, None).policy;
    assert!(matches!(p.tls, UpstreamTls::Simple(_)));
    assert_eq!(p.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(p.max_connections, None);
    // Port 80 has no entry: the top level.
    let p = &b(80, None).policy;
    assert_eq!(
        (p.load_balancer.clone(), p.max_connections),
        (LoadBalancer::Random, Some(7))
    );
    // The subset's own port entry for 80 replaces every block.
    let p = &b(80, Some("pinned")).policy;
    assert_eq!(
        (p.load_balancer.clone(), p.max_connections),
        (LoadBalancer::RoundRobin, None)
    );
    // On 8080 the subset has no port entry: its connectionPool replaces that block only.
    let p = &b(8080, Some("pinned")).policy;
    assert!(matches!(p.tls, UpstreamTls::Simple(_)));
    assert_eq!(p.max_connections, Some(3));
    // The HTTPS port is declared, not served on the outbound listener, and said so.
    assert!(
        model.warnings.iter().any(|w| w.code == Code::PortNotServed
            && w.message
                .contains("port 443 of `api.example.com` is HTTPS/TLS")),
        "{:?}",
        model.warnings
    );
}

#[test]
fn subset_and_port_mistakes() {
    let route = |dest: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: default}}\nspec:\n  hosts: [reviews]\n  http: [{{route: [{{destination: {dest}}}]}}]\n")
    };
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080, targetPort: 9080}]\n";
    let two_ports = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  ports: [{name: http, port: 9080}, {name: grpc-api, port: 9090}]\n";
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}]\n";
    let cases = [
        (
            sidecar(&format!("{service}---\n{dr}---\n{}", route("{host: reviews, subset: v1}"))),
            "subset `v1` of DestinationRule default/reviews selects endpoints by labels {\"version\": \"v1\"}, but the endpoints of `reviews.default.svc.cluster.local` are not known here (Service default/reviews is resolved by DNS); declare them with their labels",
        ),
        (
            sidecar(&format!("{dr}---\n{}", route("{host: reviews, port: {number: 9080}, subset: v1}"))),
            "no ServiceEntry declares it",
        ),
        (
            sidecar(&format!("{two_ports}---\n{}", route("{host: reviews}"))),
            "`reviews.default.svc.cluster.local` has several ports (9080, 9090): name one in destination.port.number",
        ),
        (
            // Bound to a Gateway too: no request port to take.
            sidecar(&route("{host: reviews}").replace("  http:", "  gateways: [mesh, istio-system/gw]\n  http:")),
            "has no declared port: add destination.port.number, or a Service or ServiceEntry",
        ),
        (
            sidecar(&format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext, namespace: default}}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  ports: [{{number: 443, name: https, protocol: HTTPS}}]\n  resolution: DNS\n---\n{}", route("{host: reviews, port: {number: 443}}"))),
            "port 443 of `reviews.default.svc.cluster.local` is HTTPS/TLS: meshgate does not pass TLS through; originate it with a DestinationRule `tls.mode: SIMPLE`",
        ),
    ];
    assert_errors(&cases);
}

#[test]
fn kubernetes_services_declare_ports_and_protocols() {
    use crate::model::BackendProtocol;
    let yaml = sidecar(
        r#"apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default, labels: {app: ratings}}
spec:
  selector: {app: ratings}
  type: ClusterIP
  ports:
  - {name: http, port: 9080, targetPort: 9080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: default}
spec:
  ports: [{name: api, port: 50051, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http: [{route: [{destination: {host: ratings}}]}]
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let ratings = model
        .backends
        .iter()
        .find(|b| b.host == "ratings.default.svc.cluster.local")
        .unwrap();
    assert_eq!(
        ratings.port, 9080,
        "the only port, destination.port omitted"
    );
    assert_eq!(ratings.source.as_deref(), Some("Service default/ratings"));
    let grpc = model
        .backends
        .iter()
        .find(|b| b.host == "grpc.default.svc.cluster.local")
        .unwrap();
    assert_eq!(grpc.protocol, BackendProtocol::Http2, "appProtocol grpc");
    assert!(
        model.backends.iter().all(|b| !b.host.starts_with("db.")),
        "TCP: not routed"
    );
    // The outbound listener answers the Services by their short names.
    let outbound = model
        .listeners
        .iter()
        .find(|l| l.name == "outbound")
        .unwrap();
    for name in ["grpc", "grpc.default", "grpc.default.svc.cluster.local"] {
        assert!(outbound.routes.find(name).is_some(), "{name}");
    }
}

#[test]
fn fault_redirect_and_cors_mistakes() {
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]\n---\n";
    let vs = |http: &str| {
        with_gateway(&format!(
            "{gw}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: ns}}\nspec:\n  hosts: [a.b]\n  gateways: [istio-system/gw]\n  http:\n  - {http}\n"
        ))
    };
    let cases = [
        (vs("{fault: {abort: {httpStatus: 700, percentage: {value: 10}}}, directResponse: {status: 200}}"), "spec.http[0].fault.abort.httpStatus: `700` is not an HTTP status code"),
        (vs("{fault: {abort: {grpcStatus: BROKEN}}, directResponse: {status: 200}}"), "spec.http[0].fault.abort.grpcStatus: `BROKEN` is not a gRPC status name"),
        (vs("{fault: {abort: {http2Error: PROTOCOL_ERROR}}, directResponse: {status: 200}}"), "spec.http[0].fault.abort.http2Error: this Istio field is not implemented"),
        (vs("{fault: {delay: {fixedDelay: soon, percentage: {value: 10}}}, directResponse: {status: 200}}"), "spec.http[0].fault.delay.fixedDelay: not a duration"),
        (vs("{fault: {delay: {fixedDelay: 1s, percentage: {value: 101}}}, directResponse: {status: 200}}"), "spec.http[0].fault.delay.percentage.value: `101` is not a percentage"),
        (vs("{fault: {}, directResponse: {status: 200}}"), "spec.http[0].fault: a delay or an abort is required"),
        (vs("{redirect: {uri: /x, redirectCode: 200}}"), "spec.http[0].redirect.redirectCode: `200` is not a redirect code"),
        (vs("{redirect: {uri: /x}, rewrite: {uri: /y}}"), "spec.http[0].rewrite: rewrite and redirect are exclusive"),
        (vs("{redirect: {uri: /x}, directResponse: {status: 200}}"), "spec.http[0]: redirect is exclusive"),
        (vs("{redirect: {port: 80, derivePort: FROM_REQUEST_PORT}}"), "spec.http[0].redirect: port and derivePort are exclusive"),
        (vs("{corsPolicy: {allowOrigins: [{}]}, directResponse: {status: 200}}"), "spec.http[0].corsPolicy.allowOrigins[0]: one of exact, prefix or regex is required"),
        (vs("{corsPolicy: {maxAge: forever}, directResponse: {status: 200}}"), "spec.http[0].corsPolicy.maxAge: not a duration"),
        (vs("{corsPolicy: {unmatchedPreflights: DROP}, directResponse: {status: 200}}"), "spec.http[0].corsPolicy.unmatchedPreflights: `DROP` is not FORWARD or IGNORE"),
    ];
    assert_errors(&cases);
}

/// `istioctl install -f` files: no name needed; what meshgate honours is honoured; one warning
/// lists the install-only settings; a traffic setting meshgate lacks stays an error.
#[test]
fn istio_operator_as_istioctl_takes_it() {
    let yaml = with_gateway(
        r#"apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  profile: demo
  hub: docker.io/istio
  meshConfig:
    accessLogFile: /dev/stdout
    accessLogEncoding: JSON
    rootNamespace: mesh-root
    trustDomain: example-target.com
    trustDomainAliases: [old.example.com]
    outboundTrafficPolicy: {mode: ALLOW_ANY}
    enableTracing: true
    enablePrometheusMerge: true
    defaultConfig:
      holdApplicationUntilProxyStarts: true
      gatewayTopology: {numTrustedProxies: 2}
  components:
    ingressGateways: [{name: istio-ingressgateway, enabled: true}]
  values:
    global: {proxy: {privileged: false}}
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let p = &model.proxy;
    assert_eq!(
        p.access_log.as_deref(),
        Some(std::path::Path::new("/dev/stdout"))
    );
    assert_eq!(p.access_log_encoding, AccessLogEncoding::Json);
    assert_eq!(p.root_namespace, "mesh-root");
    assert_eq!(p.outbound_policy, OutboundPolicy::AllowAny);
    assert!(p.tracing);
    assert_eq!(p.num_trusted_proxies, 2);
    assert_eq!(model.trust.trust_domain.as_str(), "example-target.com");
    let skipped: Vec<_> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::InstallSettingsSkipped)
        .collect();
    assert_eq!(skipped.len(), 1, "{:?}", model.warnings);
    let w = skipped[0].to_string();
    for field in [
        "spec.profile",
        "spec.hub",
        "spec.components",
        "spec.values",
        "spec.meshConfig.enablePrometheusMerge",
        "spec.meshConfig.defaultConfig.holdApplicationUntilProxyStarts",
    ] {
        assert!(w.contains(field), "{w}");
    }
    assert!(
        w.starts_with("[MG0003] t.yaml: IstioOperator default/<no name>:"),
        "{w}"
    );
    // Istio's default encoding is TEXT.
    let text = with_gateway(
        "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {meshConfig: {accessLogFile: /dev/stdout, outboundTrafficPolicy: {mode: REGISTRY_ONLY}}}\n",
    );
    let model = load_str("t.yaml", &text).unwrap();
    assert_eq!(model.proxy.access_log_encoding, AccessLogEncoding::Text);
    assert_eq!(model.proxy.outbound_policy, OutboundPolicy::RegistryOnly);
}

#[test]
fn install_files_refuse_what_would_change_traffic() {
    let op = |mesh: &str| {
        with_gateway(&format!(
            "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {{name: op, namespace: istio-system}}\nspec:\n  meshConfig: {mesh}\n"
        ))
    };
    let kyma = |config: &str| {
        with_gateway(&format!(
            "apiVersion: operator.kyma-project.io/v1alpha2\nkind: Istio\nmetadata: {{name: default, namespace: kyma-system}}\nspec:\n  config: {config}\n"
        ))
    };
    let cases: &[(String, &str)] = &[
        (op("{outboundTrafficPolicy: {mode: VIRTUAL_SERVICE_ONLY}}"), "t.yaml: IstioOperator istio-system/op: spec.meshConfig.outboundTrafficPolicy.mode: `VIRTUAL_SERVICE_ONLY` is not ALLOW_ANY or REGISTRY_ONLY"),
        (op("{accessLogEncoding: XML}"), "spec.meshConfig.accessLogEncoding: `XML` is not TEXT or JSON"),
        (op("{localityLbSetting: {enabled: true}}"), "spec.meshConfig.localityLbSetting: this Istio field is not implemented by meshgate"),
        (op("{defaultConfig: {gatewayTopology: {setCurrentClientCertDetails: {uri: true}}}}"), "spec.meshConfig.defaultConfig.gatewayTopology.setCurrentClientCertDetails: this Istio field is not implemented"),
        (op("{defaultConfig: {gatewayTopology: {proxyProtocol: {v2Only: true}}}}"), "spec.meshConfig.defaultConfig.gatewayTopology.proxyProtocol.v2Only: unknown field"),
        (op("{h2UpgradePolicy: UPGRADE}"), "spec.meshConfig.h2UpgradePolicy: `UPGRADE` is not implemented"),
        (op("{defaultVirtualServiceExportTo: [\".\"]}"), "spec.meshConfig.defaultVirtualServiceExportTo: only `*` is implemented"),
        (op("{caCertificates: [{spiffeBundleUrl: https://x.example/bundle}]}"), "spec.meshConfig.caCertificates[0].trustDomains: required by meshgate: the trust domains whose bundle the endpoint serves"),
        (op("{caCertificates: [{spiffeBundleUrl: \"http://x.example/bundle\", trustDomains: [x.example]}]}"), "spec.meshConfig.caCertificates[0].spiffeBundleUrl: `http://x.example/bundle` is not an https URL"),
        (op("{caCertificates: [{pem: nope, trustDomains: [a.example]}]}"), "spec.meshConfig.caCertificates[0].pem: holds no PEM CERTIFICATE"),
        (op("{trustDomian: x}"), "spec.meshConfig.trustDomian: unknown field `trustDomian`"),
        (kyma("{forwardClientCertDetails: APPEND_FORWARD}"), "t.yaml: Istio kyma-system/default: spec.config.forwardClientCertDetails: `APPEND_FORWARD` is not supported"),
        (kyma("{numTrustedProxies: 1}") + "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {meshConfig: {defaultConfig: {gatewayTopology: {numTrustedProxies: 2}}}}\n", "`numTrustedProxies` is set twice and disagrees: `1` (Istio kyma-system/default spec.config.numTrustedProxies) and `2` (IstioOperator default/<no name> spec.meshConfig.defaultConfig.gatewayTopology.numTrustedProxies)"),
        (op("{rootNamespace: a}").replacen("spec:\n", "spec:\n  rootNamespace: b\n", 1), "`rootNamespace` is set twice and disagrees"),
    ];
    for (yaml, want) in cases {
        let e = errors(yaml);
        assert!(
            e.iter().any(|e| e.contains(want)),
            "want `{want}` in {e:#?}"
        );
    }
}

/// A flow-YAML tree built from dotted paths (`http[].match[].scheme`), each `[]` a list of one
/// map: the smallest resource that sets a field.
#[derive(Default)]
struct Tree(Vec<(String, bool, Node)>);

enum Node {
    Leaf(String),
    Map(Tree),
}

impl Tree {
    fn set(&mut self, path: &str, value: &str) {
        let (head, rest) = match path.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (path, None),
        };
        let (name, list) = match head.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (head, false),
        };
        let i = match self.0.iter().position(|(n, _, _)| n == name) {
            Some(i) => i,
            None => {
                let node = match rest {
                    Some(_) => Node::Map(Tree::default()),
                    None => Node::Leaf(value.to_string()),
                };
                self.0.push((name.to_string(), list, node));
                self.0.len() - 1
            }
        };
        if let (Some(rest), Node::Map(t)) = (rest, &mut self.0[i].2) {
            t.set(rest, value);
        }
    }

    fn render(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, list, node)| {
                let v = match node {
                    Node::Leaf(v) => v.clone(),
                    Node::Map(t) => t.render(),
                };
                if *list {
                    format!("{name}: [{v}]")
                } else {
                    format!("{name}: {v}")
                }
            })
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// A kind, its apiVersion, and the (field path, value) pairs of a minimal valid resource.
type Base<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn every_refused_networking_field_is_refused_by_name_with_its_advice() {
    use crate::fields::{table_path, Support, FIELDS};
    let base: &[Base] = &[
        (
            "Gateway",
            "networking.istio.io/v1",
            &[
                ("servers[].port.number", "443"),
                ("servers[].port.protocol", "HTTPS"),
                ("servers[].port.name", "https"),
                ("servers[].hosts", "['*']"),
                ("servers[].tls.mode", "ISTIO_MUTUAL"),
            ],
        ),
        (
            "VirtualService",
            "networking.istio.io/v1",
            &[("hosts", "[a.b]")],
        ),
        (
            "DestinationRule",
            "networking.istio.io/v1",
            &[("host", "a.b")],
        ),
        (
            "ServiceEntry",
            "networking.istio.io/v1",
            &[
                ("hosts", "[a.b]"),
                ("ports[].number", "80"),
                ("ports[].protocol", "HTTP"),
                ("resolution", "STATIC"),
                ("endpoints[].address", "10.0.0.1"),
            ],
        ),
        (
            "WorkloadEntry",
            "networking.istio.io/v1",
            &[("address", "10.0.0.1")],
        ),
    ];
    let mut checked = 0;
    for field in FIELDS {
        let Support::Refused(advice) = field.support else {
            continue;
        };
        let (_, api, required) = base
            .iter()
            .find(|(k, _, _)| *k == field.kind)
            .unwrap_or_else(|| panic!("no base for {}", field.kind));
        let mut tree = Tree::default();
        for (path, value) in *required {
            tree.set(path, value);
        }
        if field.path.starts_with("http[].route[]") {
            tree.set("http[].route[].destination.host", "a.b");
            tree.set("http[].route[].destination.port.number", "80");
        } else if field.path.starts_with("http[]") {
            tree.set("http[].directResponse.status", "200");
        }
        tree.set(field.path, "x");
        let yaml = with_gateway(&format!(
            "apiVersion: {api}\nkind: {}\nmetadata: {{name: x, namespace: default}}\nspec: {}\n",
            field.kind,
            tree.render()
        ));
        let errors = match load_str("t.yaml", &yaml) {
            Ok(_) => panic!("{} {} was accepted:\n{yaml}", field.kind, field.path),
            Err(e) => e.0,
        };
        let named = errors.iter().find(|e| {
            e.resource.as_deref() == Some(&format!("{} default/x", field.kind))
                && e.field.as_deref().map(table_path).as_deref() == Some(field.path)
        });
        let Some(e) = named else {
            panic!(
                "{} {}: no error names it: {errors:#?}",
                field.kind, field.path
            )
        };
        assert!(e.message.contains("not implemented by meshgate"), "{e}");
        if let Some(advice) = advice {
            assert!(e.message.contains(advice), "{e}");
        }
        checked += 1;
    }
    assert!(checked >= 29, "{checked}");
}

/// Kyma's published samples: no spec, a spec with only a comment, and the documented fields.
#[test]
fn kyma_istio_samples_load() {
    for sample in [
        "apiVersion: operator.kyma-project.io/v1alpha1\nkind: Istio\nmetadata:\n  name: istio-sample\n  labels:\n    app.kubernetes.io/name: istio-sample\n",
        "apiVersion: operator.kyma-project.io/v1alpha2\nkind: Istio\nmetadata:\n  labels:\n    app.kubernetes.io/name: istio\n  name: istio-sample\nspec:\n  # TODO(user): Add fields here\n",
    ] {
        let model = load_str("t.yaml", &with_gateway(sample)).unwrap();
        assert_eq!(model.proxy.num_trusted_proxies, 0);
        assert!(model.warnings.iter().all(|w| w.code != Code::InstallSettingsSkipped));
    }
    let full = with_gateway(
        r#"apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {name: default, namespace: kyma-system}
spec:
  compatibilityMode: true
  config:
    numTrustedProxies: 1
    gatewayExternalTrafficPolicy: Local
    forwardClientCertDetails: SANITIZE
    enableDNSProxying: true
    telemetry: {metrics: {prometheusMerge: true}}
    authorizers:
    - {name: ext-authz, service: ext-authz.ext-authz.svc.cluster.local, port: 8000}
  components:
    ingressGateway:
      k8s:
        hpaSpec: {maxReplicas: 5, minReplicas: 2}
        resources: {limits: {cpu: 1000m, memory: 1Gi}}
  experimental:
    pilot: {enableAlphaGatewayAPI: true}
"#,
    );
    let model = load_str("t.yaml", &full).unwrap();
    assert_eq!(model.proxy.num_trusted_proxies, 1);
    assert_eq!(
        model.proxy.tagging.forward_client_cert,
        crate::model::ForwardClientCert::Sanitize
    );
    let w: Vec<_> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::InstallSettingsSkipped)
        .map(|w| w.to_string())
        .collect();
    assert_eq!(w.len(), 1, "{w:?}");
    for field in [
        "spec.config.gatewayExternalTrafficPolicy",
        "spec.config.enableDNSProxying",
        "spec.components",
        "spec.experimental",
        "spec.compatibilityMode",
    ] {
        assert!(w[0].contains(field), "{w:?}");
    }
}

/// `kubectl get -o yaml` of a namespace: what cannot change the proxy is skipped with one
/// warning each (a Secret's data never printed), List unwrapped, unknown kinds refused.
#[test]
fn a_namespace_dump_loads() {
    let yaml = with_gateway(
        r#"apiVersion: v1
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: httpbin, namespace: default}
  spec: {replicas: 1}
- apiVersion: v1
  kind: Secret
  metadata: {name: httpbin-credential, namespace: default}
  data: {tls.key: c2VjcmV0LWtleS1ieXRlcw==}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: scripts, namespace: default}
  data:
    run.sh: |
      echo start
      ---
      echo still the same script
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: default}
  spec: {mtls: {mode: STRICT}}
- apiVersion: networking.istio.io/v1
  kind: Sidecar
  metadata: {name: default, namespace: default}
  spec: {egress: [{hosts: ["./*"]}]}
- apiVersion: telemetry.istio.io/v1
  kind: Telemetry
  metadata: {name: mesh-default, namespace: istio-system}
  spec: {accessLogging: [{providers: [{name: envoy}]}]}
- apiVersion: security.istio.io/v1
  kind: RequestAuthentication
  metadata: {name: jwt, namespace: default}
  spec:
    selector: {matchLabels: {app: httpbin}}
    jwtRules: [{issuer: "testing@secure.istio.io"}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: view, namespace: default}
- apiVersion: autoscaling/v2
  kind: HorizontalPodAutoscaler
  metadata: {name: httpbin, namespace: default}
- apiVersion: policy/v1
  kind: PodDisruptionBudget
  metadata: {name: httpbin, namespace: default}
- apiVersion: v1
  kind: ServiceAccount
  metadata: {name: httpbin, namespace: default}
- apiVersion: v1
  kind: Namespace
  metadata: {name: default}
kind: List
metadata: {resourceVersion: ""}
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let skipped: Vec<String> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::ResourceSkipped)
        .map(|w| w.to_string())
        .collect();
    assert_eq!(skipped.len(), 12, "{skipped:#?}");
    for resource in [
        "Deployment default/httpbin",
        "Secret default/httpbin-credential",
        "ConfigMap default/scripts",
        "PeerAuthentication default/default",
        "Sidecar default/default",
        "Telemetry istio-system/mesh-default",
        "RequestAuthentication default/jwt",
        "RoleBinding default/view",
        "HorizontalPodAutoscaler default/httpbin",
        "PodDisruptionBudget default/httpbin",
        "ServiceAccount default/httpbin",
        "Namespace default/default",
    ] {
        assert!(
            skipped
                .iter()
                .any(|w| w.contains(&format!("{resource}: skipped"))),
            "{resource}: {skipped:#?}"
        );
    }
    assert!(!format!("{:?}", model.warnings).contains("c2VjcmV0"));
    // An unknown kind stays an error; a RequestAuthentication that applies here is refused.
    let e = errors(&with_gateway(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: lua}\nspec: {}\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: istio-system}\nspec: {jwtRules: [{issuer: x}]}\n",
    ));
    assert!(
        e.iter()
            .any(|e| e.contains("EnvoyFilter default/lua: kind: unknown kind")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains("RequestAuthentication istio-system/jwt: spec.jwtRules: JWT validation is not implemented")),
        "{e:?}"
    );
}

/// Gateway TLS as Istio's ServerTLSSettings: each mistake names its field.
#[test]
fn gateway_tls_settings() {
    let gw = |servers: &str| {
        with_gateway(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
        ))
    };
    let simple = "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, serverCertificate: a.pem, privateKey: a-key.pem, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256], minProtocolVersion: TLSV1_2}\n";
    let mutual = "  - port: {number: 443, name: https-b, protocol: HTTPS}\n    hosts: [b.example.com]\n    tls: {mode: MUTUAL, serverCertificate: b.pem, privateKey: b-key.pem, caCertificates: ca.pem}\n";
    let istio = "  - port: {number: 443, name: mtls, protocol: HTTPS}\n    hosts: [\"*.mesh.example.com\"]\n    tls: {mode: ISTIO_MUTUAL}\n";
    let redirect = "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [a.example.com]\n    tls: {httpsRedirect: true}\n";
    let optional = "  - port: {number: 443, name: https-c, protocol: HTTPS}\n    hosts: [c.example.com]\n    tls: {mode: OPTIONAL_MUTUAL, serverCertificate: c.pem, privateKey: c-key.pem, caCertificates: c-ca.pem}\n";
    let model = load_str(
        "t.yaml",
        &gw(&format!("{simple}{mutual}{istio}{optional}{redirect}")),
    )
    .unwrap();
    let https = &model.listeners[0];
    assert_eq!(https.tls.len(), 4, "one TLS group per server");
    assert_eq!(
        https.servers.iter().map(|s| s.tls).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2), Some(3)]
    );
    assert!(matches!(
        &https.tls[3].mode,
        crate::model::ServerTlsMode::OptionalMutual(f) if f.ca_certificates.as_ref().is_some_and(|p| p.ends_with("c-ca.pem"))
    ));
    assert_eq!(https.tls[0].cipher_suites, ["ECDHE-RSA-AES128-GCM-SHA256"]);
    assert!(model.listeners[1].servers[0].https_redirect);
    // Servers with the same settings are groups of their own: each sees its own routes.
    let two = load_str(
        "t.yaml",
        &gw(&format!(
            "{istio}{}",
            istio
                .replace("name: mtls", "name: mtls-2")
                .replace("*.mesh.example.com", "*.other.example.com")
        )),
    )
    .unwrap();
    assert_eq!(two.listeners[0].tls.len(), 2);
    assert_eq!(
        two.listeners[0]
            .servers
            .iter()
            .map(|s| s.tls)
            .collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
    let files = model.certificate_files();
    for f in [
        "a.pem",
        "a-key.pem",
        "b.pem",
        "b-key.pem",
        "ca.pem",
        "c.pem",
        "c-key.pem",
        "c-ca.pem",
    ] {
        assert!(
            files.iter().any(|p| p.ends_with(f)),
            "{f} reloads: {files:?}"
        );
    }
    let cases: &[(String, &str)] = &[
        (gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: a-cert}\n"), "spec.servers[0].tls.credentialName: names the Kubernetes Secret `a-cert`: mount it under the directory set as MeshGateway spec.credentials.directory"),
        (gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, privateKey: k.pem}\n"), "spec.servers[0].tls.serverCertificate: required"),
        (gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: MUTUAL, serverCertificate: a.pem, privateKey: k.pem}\n"), "spec.servers[0].tls.caCertificates: required"),
        (gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: OPTIONAL_MUTUAL, serverCertificate: a.pem, privateKey: k.pem}\n"), "spec.servers[0].tls.caCertificates: required"),
        (gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, serverCertificate: a.pem, privateKey: k.pem, caCertificates: ca.pem}\n"), "spec.servers[0].tls.caCertificates: SIMPLE asks for no client certificate: use mode MUTUAL (or OPTIONAL_MUTUAL) to verify one"),
        (gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, serverCertificate: a.pem, privateKey: k.pem, cipherSuites: [AES128-SHA]}\n"), "spec.servers[0].tls.cipherSuites[0]: `AES128-SHA` is not offered by meshgate's TLS (rustls)"),
        (gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, serverCertificate: a.pem, privateKey: k.pem, maxProtocolVersion: TLSV1_1}\n"), "spec.servers[0].tls.maxProtocolVersion: `TLSV1_1` is not supported"),
        (gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: ISTIO_MUTUAL, serverCertificate: a.pem}\n"), "spec.servers[0].tls.serverCertificate: ISTIO_MUTUAL presents the MeshGateway's identity"),
        (gw("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE}\n"), "spec.servers[0].tls: protocol HTTP is plaintext: only httpsRedirect may be set here"),
        (gw(&format!("{simple}  - port: {{number: 443, name: https-2, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {{mode: ISTIO_MUTUAL}}\n")), "spec.servers[1].hosts: `a.example.com` is already served with TLS on port 443 (Gateway istio-system/gw): the SNI could not choose between the two servers"),
        // The same settings too: each TLS server is a filter chain of its own.
        (gw(&format!("{simple}{}", simple.replace("name: https,", "name: https-2,"))), "spec.servers[1].hosts: `a.example.com` is already served with TLS on port 443"),
        (gw(&format!("{simple}{redirect}  - port: {{number: 443, name: x, protocol: HTTP}}\n    hosts: [c.example.com]\n")), "spec.servers[2].port: port 443 is already served as HTTPS"),
        (gw(&format!("{simple}{}", simple.replace("a.example.com", "b.example.com"))), "spec.servers[1].port.name: `https` already names spec.servers[0].port: port names are unique in a Gateway"),
        (gw("  - port: {number: 9000, name: tcp, protocol: TCP}\n    hosts: [a.example.com]\n  - port: {number: 9000, name: tls, protocol: TLS}\n    hosts: [b.example.com]\n    tls: {mode: ISTIO_MUTUAL}\n"), "spec.servers[1].port: port 9000 already serves TCP without TLS"),
        (gw("  - port: {number: 9000, name: tls, protocol: TLS}\n    hosts: [b.example.com]\n    tls: {mode: ISTIO_MUTUAL}\n  - port: {number: 9000, name: tcp, protocol: TCP}\n    hosts: [a.example.com]\n"), "spec.servers[1].port: port 9000 already serves TCP with TLS"),
    ];
    for (yaml, want) in cases {
        let e = errors(yaml);
        assert!(
            e.iter().any(|e| e.contains(want)),
            "want `{want}` in {e:#?}"
        );
    }
}

/// `subjectAltNames`, `verifyCertificateSpki` and `verifyCertificateHash` of a server that
/// verifies client certificates, read as Envoy reads them; each malformed entry names itself.
#[test]
fn gateway_client_certificate_checks() {
    let gw = |tls: &str| {
        with_gateway(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [b.example.com]\n    tls: {tls}\n"
        ))
    };
    let mutual =
        "mode: MUTUAL, serverCertificate: b.pem, privateKey: b-key.pem, caCertificates: ca.pem";
    // SHA-256 of "abc", as Envoy's documentation writes a hash: upper case with colons.
    let hash = "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD";
    let model = load_str(
        "t.yaml",
        &gw(&format!(
            "{{{mutual}, subjectAltNames: [partner.example.org, partner.example.org, 'spiffe://partner/x'], verifyCertificateHash: ['{hash}'], verifyCertificateSpki: [ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=, ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0]}}"
        )),
    )
    .unwrap();
    let checks = &model.listeners[0].tls[0].client_checks;
    assert_eq!(
        checks.subject_alt_names,
        ["partner.example.org", "spiffe://partner/x"]
    );
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(checks.cert_sha256, [abc]);
    // Standard and URL-safe base64, padded or not, as protobuf's JSON reads bytes.
    assert_eq!(checks.spki_sha256, [abc, abc]);
    // ISTIO_MUTUAL takes them too: Istio passes subjectAltNames to the mesh's validation.
    let model = load_str(
        "t.yaml",
        &gw("{mode: ISTIO_MUTUAL, subjectAltNames: ['spiffe://example.com/ns/a/sa/b']}"),
    )
    .unwrap();
    assert_eq!(
        model.listeners[0].tls[0].client_checks.subject_alt_names,
        ["spiffe://example.com/ns/a/sa/b"]
    );
    // Servers that differ only in them are two TLS groups.
    let two = with_gateway(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: a, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {{{mutual}}}\n  - port: {{number: 443, name: b, protocol: HTTPS}}\n    hosts: [b.example.com]\n    tls: {{{mutual}, subjectAltNames: [x]}}\n"
    ));
    assert_eq!(load_str("t.yaml", &two).unwrap().listeners[0].tls.len(), 2);

    let simple = "mode: SIMPLE, serverCertificate: b.pem, privateKey: b-key.pem";
    let server = |protocol: &str, tls: &str| {
        with_gateway(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: p, protocol: {protocol}}}\n    hosts: [b.example.com]\n    tls: {tls}\n"
        ))
    };
    assert_errors(&[
        (server("TLS", "{mode: PASSTHROUGH, subjectAltNames: [x]}"), "spec.servers[0].tls.subjectAltNames: PASSTHROUGH and AUTO_PASSTHROUGH do not terminate TLS"),
        (server("TLS", &format!("{{mode: AUTO_PASSTHROUGH, verifyCertificateHash: ['{hash}']}}")), "spec.servers[0].tls.verifyCertificateHash: PASSTHROUGH and AUTO_PASSTHROUGH do not terminate TLS"),
        (server("HTTP", "{httpsRedirect: true, verifyCertificateSpki: [x]}"), "spec.servers[0].tls: protocol HTTP is plaintext: only httpsRedirect may be set here"),
        (server("TCP", "{caCrl: crl.pem}"), "spec.servers[0].tls: protocol TCP is plaintext"),

        (gw(&format!("{{{simple}, subjectAltNames: [x]}}")), "t.yaml: Gateway istio-system/gw: spec.servers[0].tls.subjectAltNames: SIMPLE asks for no client certificate"),
        (gw(&format!("{{{simple}, verifyCertificateHash: ['{hash}']}}")), "spec.servers[0].tls.verifyCertificateHash: SIMPLE asks for no client certificate"),
        (gw(&format!("{{{mutual}, subjectAltNames: [a, '']}}")), "spec.servers[0].tls.subjectAltNames[1]: empty"),
        (gw(&format!("{{{mutual}, verifyCertificateHash: [ba7816bf]}}")), "spec.servers[0].tls.verifyCertificateHash[0]: `ba7816bf` is not a hex-encoded SHA-256 digest"),
        (gw(&format!("{{{mutual}, verifyCertificateHash: ['{}zz']}}", &abc[..62])), "spec.servers[0].tls.verifyCertificateHash[0]"),
        (gw(&format!("{{{mutual}, verifyCertificateSpki: [YWJj]}}")), "spec.servers[0].tls.verifyCertificateSpki[0]: `YWJj` is not a base64-encoded SHA-256 digest (32 bytes)"),
        (gw(&format!("{{{mutual}, verifyCertificateSpki: ['ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0!']}}")), "spec.servers[0].tls.verifyCertificateSpki[0]"),
    ]);
}

/// On a TLS-terminating TCP port, each Gateway's `tcp` routes are read for that Gateway (its
/// `match.gateways`) and seen only by the TLS groups of its servers that serve the
/// VirtualService's hosts.
#[test]
fn tls_tcp_routes_are_seen_by_their_own_servers_groups() {
    let yaml = with_gateway(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: restricted, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9443, name: db, protocol: TLS}
    hosts: [db.internal]
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://example.com/ns/a/sa/db-client"]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: open, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9443, name: cache, protocol: TLS}
    hosts: [cache.internal, queue.internal]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: both, namespace: istio-system}
spec:
  hosts: [db.internal, cache.internal]
  gateways: [restricted, open]
  tcp:
  - match: [{gateways: [restricted]}]
    route: [{destination: {host: db.internal, port: {number: 5432}}}]
  - match: [{gateways: [open]}]
    route: [{destination: {host: cache.internal, port: {number: 6379}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere, namespace: istio-system}
spec:
  hosts: [other.internal]
  gateways: [open]
  tcp: [{route: [{destination: {host: cache.internal, port: {number: 6379}}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: stores, namespace: istio-system}
spec:
  hosts: [db.internal, cache.internal]
  ports: [{number: 5432, name: tcp-db, protocol: TCP}, {number: 6379, name: tcp-cache, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let l = &model.listeners[0];
    assert_eq!(l.tls.len(), 2);
    let db = model
        .backends
        .iter()
        .position(|b| b.host == "db.internal")
        .unwrap();
    // (group, backend) of each route, in order; `elsewhere` names no host `open` serves.
    let seen: Vec<(Vec<usize>, usize)> = l
        .tcp_routes
        .iter()
        .map(|r| {
            let groups = (0..2).filter(|g| r.admits_tls_group(Some(*g))).collect();
            (groups, r.backends[0].backend)
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], (vec![0], db));
    assert_eq!(seen[1].0, vec![1]);
    assert_ne!(seen[1].1, db);
}

/// A PASSTHROUGH `tls` route's `sniHosts` are narrowed to the hosts its own Gateway's servers
/// serve, as Istio builds each server's filter chains: one team's VirtualService does not
/// capture an SNI that another team's server serves.
#[test]
fn passthrough_sni_hosts_are_those_their_gateways_servers_serve() {
    let gateway = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: {name}, protocol: TLS}}\n    hosts: [{host}]\n    tls: {{mode: PASSTHROUGH}}\n---\n"
        )
    };
    let yaml = with_gateway(&format!(
        "{}{}{}",
        gateway("team-a", "a.example.com"),
        gateway("team-b", "b.example.com"),
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: istio-system}
spec:
  hosts: ["*.example.com"]
  gateways: [team-a, team-b]
  tls:
  - match: [{sniHosts: [b.example.com], gateways: [team-a]}]
    route: [{destination: {host: a.internal, port: {number: 443}}}]
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: a.internal, port: {number: 443}}}]
  - match: [{sniHosts: [c.example.com]}]
    route: [{destination: {host: a.internal, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: istio-system}
spec:
  hosts: [a.internal]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"#
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    let l = &model.listeners[0];
    let hosts: Vec<Vec<String>> = l
        .sni_routes
        .iter()
        .map(|r| {
            r.matches
                .iter()
                .flat_map(|m| m.sni_hosts.iter().map(|h| h.to_string()))
                .collect()
        })
        .collect();
    // The first route names team-a for b.example.com, which team-a does not serve: gone.
    // The second is read once for each Gateway, narrowed to its own server's host.
    assert_eq!(
        hosts,
        [vec!["a.example.com"], vec!["b.example.com"]],
        "{hosts:?}"
    );
    // An SNI host no server of its Gateways serves routes nothing, and `check` says so.
    let said: Vec<String> = model.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        said.iter().any(|w| w.contains("MG0103")
            && w.contains("spec.tls[2].match[0].sniHosts[0]")
            && w.contains("`c.example.com` is not among the hosts of the PASSTHROUGH servers")),
        "{said:#?}"
    );
    assert_eq!(
        said.iter().filter(|w| w.contains("sniHosts")).count(),
        1,
        "{said:#?}"
    );

    // The most specific SNI host wins, whatever the order: a wildcard team listed first does
    // not take an exact host another team serves.
    let yaml = with_gateway(&format!(
        "{}{}{}",
        gateway("team-b", "\"*.example.com\""),
        gateway("team-a", "a.example.com"),
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: istio-system}
spec:
  hosts: ["*.example.com"]
  gateways: [team-b]
  tls: [{match: [{sniHosts: ["*.example.com"]}], route: [{destination: {host: b.internal, port: {number: 443}}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [team-a]
  tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: a.internal, port: {number: 443}}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: both, namespace: istio-system}
spec:
  hosts: [a.internal, b.internal]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"#
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    let l = &model.listeners[0];
    let local = "127.0.0.1".parse().unwrap();
    let source = |sni: &str| l.sni_route(sni, local).map(|r| r.source.clone());
    assert_eq!(
        source("a.example.com").as_deref(),
        Some("VirtualService istio-system/a")
    );
    assert_eq!(
        source("c.example.com").as_deref(),
        Some("VirtualService istio-system/b")
    );
    assert_eq!(source("c.example.org"), None);

    // An SNI host outside the VirtualService's hosts is refused, as Istio's validation does.
    let stray = yaml.replace(
        "hosts: [a.example.com]\n  gateways: [team-a]\n  tls: [{match: [{sniHosts: [a.example.com]}]",
        "hosts: [a.example.com]\n  gateways: [team-a]\n  tls: [{match: [{sniHosts: [a.example.com, pay.b.example.com]}]",
    );
    assert_ne!(stray, yaml);
    assert_errors(&[(stray, "t.yaml: VirtualService istio-system/a: spec.tls[0].match[0].sniHosts[1]: `pay.b.example.com` is not within the VirtualService's hosts (a.example.com)")]);
}

#[test]
fn base64_as_protobuf_json_reads_bytes() {
    use super::decode_base64;
    for (text, want) in [
        ("", Some(&b""[..])),
        ("YQ==", Some(b"a")),
        ("YQ", Some(b"a")),
        ("YWI=", Some(b"ab")),
        ("YWJj", Some(b"abc")),
        ("-_8=", Some(&[0xfb, 0xff][..])),
        ("+/8", Some(&[0xfb, 0xff][..])),
        ("Y", None),
        ("YQ=", None),
        ("YQ===", None),
        ("Y=Q=", None),
        ("YW J", None),
        // Line breaks, as a YAML block writes a long value, are skipped.
        ("YWJj\nZGVm", Some(b"abcdef")),
        ("YW\r\nJj", Some(b"abc")),
        // One value, one alphabet.
        ("+_8", None),
    ] {
        assert_eq!(decode_base64(text).as_deref(), want, "{text}");
    }
}

/// `directResponse.body` as Istio's oneof: `string`, or `bytes` in base64.
#[test]
fn direct_response_body_bytes() {
    let vs = |body: &str| {
        with_gateway(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ['*']}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: istio-system}}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  http: [{{directResponse: {{status: 503, body: {body}}}}}]\n"
        ))
    };
    let model = load_str("t.yaml", &vs("{bytes: 3q2+7w==}")).unwrap();
    let route = &model.listeners[0].routes.virtual_hosts()[0].routes[0];
    match &route.action {
        RouteAction::Direct(d) => assert_eq!(&d.body[..], [0xde, 0xad, 0xbe, 0xef]),
        other => panic!("{other:?}"),
    }
    assert_errors(&[
        (vs("{bytes: 'not base64!'}"), "t.yaml: VirtualService istio-system/vs: spec.http[0].directResponse.body.bytes: not base64"),
        (vs("{string: a, bytes: YQ==}"), "spec.http[0].directResponse.body: string and bytes are exclusive"),
    ]);
}

/// What `check` explains, each with its code, file, resource and field.
#[test]
fn check_explains_references_that_lead_nowhere() {
    let yaml = with_gateway(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["team/*.example.com", "unrouted.example.org"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: eastwest, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers: [{port: {number: 15443, name: tls, protocol: HTTPS}, hosts: ["*"], tls: {mode: ISTIO_MUTUAL}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: team}
spec:
  hosts: [shop.example.com, shop.example.net]
  gateways: [istio-system/public, public, istio-system/eastwest]
  http: [{directResponse: {status: 200}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: intruder, namespace: other}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/public]
  http: [{directResponse: {status: 200}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: nothing, namespace: team}
spec:
  host: nothing.example.com
  trafficPolicy: {tls: {mode: SIMPLE}}
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let shown: Vec<String> = model.warnings.iter().map(|w| w.to_string()).collect();
    for want in [
        "[MG0101] t.yaml: VirtualService team/shop: spec.gateways[1]: Gateway `team/public` is not defined in any file loaded (a name without a namespace is a Gateway in the VirtualService's namespace `team`",
        "[MG0102] t.yaml: VirtualService team/shop: spec.gateways[2]: Gateway `istio-system/eastwest` selects other workloads",
        "[MG0103] t.yaml: VirtualService team/shop: spec.hosts[1]: `shop.example.net` is not among the hosts of Gateway `istio-system/public`",
        "[MG0103] t.yaml: VirtualService other/intruder: spec.hosts[0]: `shop.example.com` is on Gateway `istio-system/public` only as team/*.example.com",
        "[MG0104] t.yaml: Gateway istio-system/public: spec.servers[0].hosts[1]: no VirtualService route answers `unrouted.example.org` on port 80",
        "[MG0105] t.yaml: DestinationRule team/nothing: spec.host: `nothing.example.com` is the host of no ServiceEntry",
    ] {
        assert!(shown.iter().any(|w| w.starts_with(want)), "want `{want}` in {shown:#?}");
    }
    assert!(
        !shown
            .iter()
            .any(|w| w.contains("MG0104") && w.contains("team/*.example.com")),
        "{shown:#?}"
    );
}

#[test]
fn every_unknown_field_of_a_route_is_reported_at_once() {
    let yaml = sidecar(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: default}\nspec:\n  hosts: [a.b]\n  http:\n  - retires: {attempts: 3}\n    directResponse: {status: 200, bodee: x}\n  - match: [{urii: {exact: /}}]\n    directResponse: {status: 200}\n",
    );
    let got = errors(&yaml);
    for want in [
        "spec.http[0].retires: unknown field `retires`",
        "spec.http[0].directResponse.bodee: unknown field `bodee`",
        "spec.http[1].match[0].urii: unknown field `urii`",
    ] {
        assert!(
            got.iter().any(|e| e.contains(want)),
            "want `{want}`, got {got:#?}"
        );
    }
}

#[test]
fn every_type_error_of_a_resource_is_reported_at_once_with_its_place() {
    let yaml = sidecar(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {namespace: default}\nspec:\n  hosts: [a.b]\n  http:\n  - timeout: [1s]\n    directResponse: {status: two hundred}\n  - match: [{uri: {exact: /}, port: http}]\n    retries: {attempts: many}\n    route:\n    - destination: {host: a.b, port: {number: 80}}\n      weight: x\n  - route:\n    - destination: {port: {number: 80}}\n",
    );
    let got = errors(&yaml);
    // Lines are those of the VirtualService in the file `sidecar` builds.
    let line = |text: &str| yaml[..yaml.find(text).unwrap()].matches('\n').count() + 1;
    for (want, at) in [
        (
            "metadata.name: required",
            "apiVersion: networking.istio.io/v1\nkind: Virtual",
        ),
        ("spec.http[0].timeout", "timeout: [1s]"),
        ("spec.http[0].directResponse.status", "status: two"),
        ("spec.http[1].match[0].port", "port: http"),
        ("spec.http[1].retries.attempts", "attempts: many"),
        ("spec.http[1].route[0].weight", "weight: x"),
        ("missing field `host`", "- destination: {port"),
    ] {
        let want_line = format!(":{}:", line(at));
        assert!(
            got.iter()
                .any(|e| e.contains(want) && e.contains(&want_line)),
            "want `{want}` at line {}, got {got:#?}",
            line(at)
        );
    }
    assert_eq!(got.len(), 7, "each mistake once: {got:#?}");

    // A field missing because its entry was wrong is not reported again; JSON (flow style)
    // recovers as YAML does.
    let json = r#"{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
 "metadata": {"name": "dr", "namespace": "default"},
 "spec": {"host": ["a.b"], "trafficPolicy": {"tls": {"mode": ["SIMPLE"]}},
  "subsets": [{"name": {"v": 1}, "labels": {"v": "1"}}]}}"#;
    let got = errors(&with_gateway(json));
    for want in [
        "spec.host",
        "spec.trafficPolicy.tls.mode",
        "spec.subsets[0].name",
    ] {
        assert!(
            got.iter().any(|e| e.contains(&format!("{want}: "))),
            "want `{want}`, got {got:#?}"
        );
    }
    assert!(!got.iter().any(|e| e.contains("missing field")), "{got:#?}");
    assert_eq!(got.len(), 3, "{got:#?}");
}

/// Istio keeps one Service per host (`appendSidecarServices`): a Kubernetes Service's before
/// any ServiceEntry's, else the ServiceEntry's first by creationTimestamp, then namespace; the
/// entries of its namespace merge into it when they agree on resolution, labels and workload
/// selector. Every other declaration of the host is ignored, and `check` says so.
#[test]
fn one_service_per_host_as_istio_keeps_them() {
    let entry = |ns: &str,
                 name: &str,
                 created: &str,
                 host: &str,
                 ports: &[u16],
                 resolution: &str| {
        let ports: Vec<String> = ports
            .iter()
            .map(|p| format!("{{number: {p}, name: http-{p}, protocol: HTTP}}"))
            .collect();
        let endpoints = if resolution == "STATIC" {
            "\n  endpoints: [{address: 10.0.0.9}]"
        } else {
            ""
        };
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [{host}]\n  ports: [{}]\n  resolution: {resolution}{endpoints}\n",
            ports.join(", ")
        )
    };
    let ports = |model: &crate::model::Model, host: &str| {
        let mut found: Vec<(u16, String)> = model
            .backends
            .iter()
            .filter(|b| b.host == host && b.subset.is_none())
            .map(|b| (b.port, b.source.clone().unwrap_or_default()))
            .collect();
        found.sort();
        found.dedup();
        found
    };
    let ignored = |model: &crate::model::Model| -> Vec<(String, String)> {
        model
            .warnings
            .iter()
            .filter(|w| w.code == Code::ServiceEntryHostIgnored)
            .map(|w| (w.resource.clone().unwrap_or_default(), w.message.clone()))
            .collect()
    };

    // Two teams declare one external API; the older entry (team-b's) keeps the host, in file
    // order or not, and team-a's ports (one of them the same) are ignored rather than refused.
    let yaml = sidecar(&format!(
        "{}{}",
        entry(
            "team-a",
            "api",
            "2024-06-01T00:00:00Z",
            "api.example.com",
            &[80, 8080],
            "DNS"
        ),
        entry(
            "team-b",
            "api",
            "2024-01-01T00:00:00Z",
            "api.example.com",
            &[80, 9000],
            "DNS"
        ),
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    let b = "ServiceEntry team-b/api".to_string();
    // team-b's entry of the API, in the cases below that add another to it.
    let older_b = &entry(
        "team-b",
        "api",
        "2024-01-01T00:00:00Z",
        "api.example.com",
        &[80],
        "DNS",
    );
    assert_eq!(
        ports(&model, "api.example.com"),
        [(80, b.clone()), (9000, b.clone())]
    );
    let warned = ignored(&model);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].0, "ServiceEntry team-a/api");
    assert!(
        warned[0].1.contains("ServiceEntry team-b/api"),
        "{warned:?}"
    );

    // Created in the same second: the namespace decides.
    let yaml = sidecar(&format!(
        "{}{}",
        older_b,
        entry(
            "team-a",
            "api",
            "2024-01-01T00:00:00Z",
            "api.example.com",
            &[8080],
            "DNS"
        ),
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    assert_eq!(
        ports(&model, "api.example.com"),
        [(8080, "ServiceEntry team-a/api".to_string())]
    );

    // One namespace, entries that agree: their ports merge, without a warning.
    let yaml = sidecar(&format!(
        "{}{}",
        older_b,
        entry(
            "team-b",
            "api-admin",
            "2024-02-01T00:00:00Z",
            "api.example.com",
            &[9000],
            "DNS"
        ),
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    assert_eq!(
        ports(&model, "api.example.com"),
        [
            (80, b.clone()),
            (9000, "ServiceEntry team-b/api-admin".to_string())
        ]
    );
    assert!(ignored(&model).is_empty());

    // One namespace, another resolution: the later entry is ignored.
    let yaml = sidecar(&format!(
        "{}{}",
        older_b,
        entry(
            "team-b",
            "api-static",
            "2024-02-01T00:00:00Z",
            "api.example.com",
            &[9000],
            "STATIC"
        ),
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    assert_eq!(ports(&model, "api.example.com"), [(80, b.clone())]);
    let warned = ignored(&model);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].1.contains("`resolution`"), "{warned:?}");

    // One namespace, one port twice: Istio would serve both entries' endpoints, which
    // meshgate does not merge; that stays an error naming the first.
    let yaml = sidecar(&format!(
        "{}{}",
        older_b,
        entry(
            "team-b",
            "api-again",
            "2024-02-01T00:00:00Z",
            "api.example.com",
            &[80],
            "DNS"
        ),
    ));
    let e = errors(&yaml);
    assert!(
        e.iter().any(|e| e.contains("ServiceEntry team-b/api-again")
            && e.contains("already declared by ServiceEntry team-b/api")),
        "{e:?}"
    );

    // A Kubernetes Service keeps its host over a ServiceEntry, even an older one.
    let yaml = sidecar(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: default, creationTimestamp: \"2025-01-01T00:00:00Z\"}}\nspec:\n  ports: [{{port: 9080, name: http}}]\n{}",
        entry("default", "squat", "2020-01-01T00:00:00Z", "reviews.default.svc.cluster.local", &[9080, 9999], "DNS"),
    ));
    let model = load_str("t.yaml", &yaml).unwrap();
    assert_eq!(
        ports(&model, "reviews.default.svc.cluster.local"),
        [(9080, "Service default/reviews".to_string())]
    );
    let warned = ignored(&model);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].0, "ServiceEntry default/squat");
    assert!(
        warned[0].1.contains("Service default/reviews"),
        "{warned:?}"
    );
}

/// `exportTo`, as istiod reads it for this proxy (its MeshGateway's namespace): a resource not
/// exported there is not applied (MG0119); those private to the proxy's namespace come before
/// those exported to it by name, and those before the public ones; DestinationRules are looked
/// up among the ones exported to the proxy's namespace.
#[test]
fn export_to_decides_what_this_proxy_sees() {
    let se = |ns: &str, name: &str, created: &str, export: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [api.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n  exportTo: {export}\n"
        )
    };
    let load = |docs: &[String]| load_str("t.yaml", &sidecar(&docs.concat())).unwrap();
    let not_exported = |model: &crate::model::Model| -> Vec<String> {
        model
            .warnings
            .iter()
            .filter(|w| w.code == Code::NotExported)
            .map(|w| w.resource.clone().unwrap_or_default())
            .collect()
    };
    let owner = |model: &crate::model::Model| {
        model
            .backends
            .iter()
            .find(|b| b.host == "api.example.com" && b.subset.is_none())
            .and_then(|b| b.source.clone())
    };

    // Private to another namespace: not this proxy's; exported to it by name: its own.
    let model = load(&[se("team", "api", "2024-01-01T00:00:00Z", "[.]")]);
    assert_eq!(owner(&model), None);
    assert_eq!(not_exported(&model), ["ServiceEntry team/api"]);
    let model = load(&[se(
        "team",
        "api",
        "2024-01-01T00:00:00Z",
        "[default, other]",
    )]);
    assert_eq!(owner(&model).as_deref(), Some("ServiceEntry team/api"));
    assert!(not_exported(&model).is_empty());

    // The proxy's own private entry before an older public one, and one exported to it by
    // name before an older public one.
    let model = load(&[
        se("aaa", "public", "2020-01-01T00:00:00Z", "['*']"),
        se("default", "mine", "2024-01-01T00:00:00Z", "[.]"),
    ]);
    assert_eq!(owner(&model).as_deref(), Some("ServiceEntry default/mine"));
    let model = load(&[
        se("aaa", "public", "2020-01-01T00:00:00Z", "[]"),
        se("team", "named", "2024-01-01T00:00:00Z", "[default]"),
    ]);
    assert_eq!(owner(&model).as_deref(), Some("ServiceEntry team/named"));

    // VirtualServices bound to `mesh`: one private elsewhere routes nothing here; of two for a
    // host, the proxy's private one answers it before an older public one.
    let vs = |ns: &str, name: &str, created: &str, export: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [api.example.com]\n  exportTo: {export}\n  http: [{{route: [{{destination: {{host: api.example.com}}}}]}}]\n"
        )
    };
    let service = se("team", "api", "2024-01-01T00:00:00Z", "['*']");
    let answered = |yaml: &str| {
        let model = load_str("t.yaml", &sidecar(yaml)).unwrap();
        let outbound = model
            .listeners
            .iter()
            .find(|l| l.name == "outbound")
            .unwrap();
        let source = outbound
            .routes
            .find("api.example.com")
            .map(|vh| vh.source.clone());
        (source, not_exported(&model))
    };
    let (source, warned) = answered(&format!(
        "{service}{}",
        vs("team", "private", "2020-01-01T00:00:00Z", "[.]")
    ));
    assert_ne!(source.as_deref(), Some("VirtualService team/private"));
    assert_eq!(warned, ["VirtualService team/private"]);
    let (source, _) = answered(&format!(
        "{service}{}{}",
        vs("aaa", "public", "2020-01-01T00:00:00Z", "['*']"),
        vs("default", "mine", "2024-01-01T00:00:00Z", "[.]")
    ));
    assert_eq!(source.as_deref(), Some("VirtualService default/mine"));

    // DestinationRules: the service's namespace's rule applies only when exported to the
    // proxy's namespace; the root's private rule applies only to a proxy in the root namespace,
    // and to it first.
    let dr = |ns: &str, name: &str, export: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: api.example.com\n  exportTo: {export}\n  trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}\n"
        )
    };
    let rule = |yaml: String, proxy_namespace: &str| {
        let yaml = sidecar(&yaml).replacen(
            "name: sidecar, namespace: default",
            &format!("name: sidecar, namespace: {proxy_namespace}"),
            1,
        );
        let model = load_str("t.yaml", &yaml).unwrap();
        let b = model
            .backends
            .iter()
            .find(|b| b.host == "api.example.com" && b.subset.is_none())
            .unwrap();
        (b.policy.source.clone(), not_exported(&model))
    };
    let (source, warned) = rule(format!("{service}{}", dr("team", "api", "[.]")), "default");
    assert_eq!(source, None);
    assert_eq!(warned, ["DestinationRule team/api"]);
    let (source, _) = rule(
        format!("{service}{}", dr("team", "api", "[default]")),
        "default",
    );
    assert_eq!(source.as_deref(), Some("DestinationRule team/api"));
    let both = format!(
        "{service}{}{}",
        dr("team", "api", "['*']"),
        dr("istio-system", "root", "[.]")
    );
    let (source, _) = rule(both.clone(), "default");
    assert_eq!(source.as_deref(), Some("DestinationRule team/api"));
    let (source, _) = rule(both, "istio-system");
    assert_eq!(source.as_deref(), Some("DestinationRule istio-system/root"));

    // The most specific rule of the service's namespace is not exported here: that namespace
    // gives nothing (its wildcard does not stand in), and the root's applies.
    let dr_host = |ns: &str, name: &str, host: &str, export: &str| {
        dr(ns, name, export).replacen("host: api.example.com", &format!("host: \"{host}\""), 1)
    };
    let (source, _) = rule(
        format!(
            "{service}{}{}{}",
            dr_host("team", "wide", "*.example.com", "['*']"),
            dr_host("team", "exact", "api.example.com", "[frontend]"),
            dr("istio-system", "root", "['*']")
        ),
        "default",
    );
    assert_eq!(source.as_deref(), Some("DestinationRule istio-system/root"));
    // A proxy in the root namespace takes the root's public rules after the service's.
    let (source, _) = rule(
        format!(
            "{service}{}{}",
            dr("istio-system", "root", "['*']"),
            dr("team", "api", "['*']")
        ),
        "istio-system",
    );
    assert_eq!(source.as_deref(), Some("DestinationRule team/api"));
    // The root's private rule is not this proxy's, even with nothing else.
    let (source, warned) = rule(
        format!("{service}{}", dr("istio-system", "root", "[.]")),
        "default",
    );
    assert_eq!(source, None);
    assert_eq!(warned, ["DestinationRule istio-system/root"]);
    // Rules of one host and namespace with another exportTo: Istio keeps them apart. When both
    // apply to this proxy, which one Istio takes is not reproduced: an error, once for the rule
    // (the order of the values does not count).
    let e = errors(&sidecar(&format!(
        "{service}{}{}",
        dr("team", "a", "['*']"),
        dr("team", "b", "[default]"),
    )));
    let refused: Vec<&String> = e
        .iter()
        .filter(|e| e.contains("another exportTo"))
        .collect();
    assert_eq!(refused.len(), 1, "{e:?}");
    assert!(refused[0].contains("DestinationRule team/b"), "{e:?}");
    let (source, _) = rule(
        format!(
            "{service}{}{}",
            dr("team", "c", "[default, other]"),
            dr("team", "d", "[other, default]")
        ),
        "default",
    );
    assert_eq!(source.as_deref(), Some("DestinationRule team/c"));
    // When one of them is exported here, that one applies; when neither is, nothing does.
    let (source, _) = rule(
        format!(
            "{service}{}{}",
            dr("team", "a", "[other]"),
            dr("team", "b", "[default]")
        ),
        "default",
    );
    assert_eq!(source.as_deref(), Some("DestinationRule team/b"));
    let (source, warned) = rule(
        format!(
            "{service}{}{}",
            dr("team", "a", "[other]"),
            dr("team", "b", "[backend]")
        ),
        "default",
    );
    assert_eq!(source, None);
    assert_eq!(warned, ["DestinationRule team/a", "DestinationRule team/b"]);

    // ServiceEntries of one host and namespace merge only with the same exportTo.
    let model = load(&[
        se("default", "a", "2024-01-01T00:00:00Z", "[.]"),
        se("default", "b", "2024-02-01T00:00:00Z", "[]")
            .replace("number: 80, name: http", "number: 81, name: http"),
    ]);
    assert!(
        !model
            .backends
            .iter()
            .any(|b| b.host == "api.example.com" && b.port == 81),
        "merged"
    );
    assert!(model
        .warnings
        .iter()
        .any(|w| w.code == Code::ServiceEntryHostIgnored && w.message.contains("`exportTo`")));
    // Without a creation time on both, which of two namespaces Istio would keep cannot be
    // told: a new file does not take a host by leaving it out.
    let undated = se("team", "api", "x", "['*']").replace(", creationTimestamp: \"x\"", "");
    let e = errors(&sidecar(&format!(
        "{}{undated}",
        se("aaa", "api", "2024-01-01T00:00:00Z", "['*']")
    )));
    assert!(
        e.iter().any(
            |e| e.contains("ServiceEntry team/api") && e.contains("metadata.creationTimestamp")
        ),
        "{e:?}"
    );

    // What Istio's validation refuses.
    let e = errors(&sidecar(&format!(
        "{}{}{}",
        se("team", "a", "2024-01-01T00:00:00Z", "['*', .]"),
        vs("team", "b", "2024-01-01T00:00:00Z", "['~']"),
        se("team", "c", "2024-01-01T00:00:00Z", "[., team, Bad_NS]"),
    )));
    for (resource, message) in [
        (
            "ServiceEntry team/a",
            "`*` cannot be listed with other values",
        ),
        (
            "VirtualService team/b",
            "`~` is not `.`, `*` or a namespace name",
        ),
        ("ServiceEntry team/c", "`team` is listed twice"),
        ("ServiceEntry team/c", "`Bad_NS` is not"),
    ] {
        assert!(
            e.iter()
                .any(|e| e.contains(resource) && e.contains(message)),
            "{resource}: {message}: {e:?}"
        );
    }
}

/// `queryParams`: `exact`, `prefix`, `regex` and an empty match (presence) compile, as Istio
/// gives them to Envoy; an empty `prefix` or `regex` is refused.
#[test]
fn query_parameter_matches_compile_as_istio_gives_them_to_envoy() {
    let vs = |params: &str| {
        sidecar(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: q, namespace: default}}\nspec:\n  hosts: [q.example]\n  http:\n  - match: [{{queryParams: {params}}}]\n    directResponse: {{status: 200}}\n"
        ))
    };
    let model = load_str(
        "t.yaml",
        &vs("{a: {exact: x}, b: {regex: '[0-9]+'}, c: {}, d: {prefix: v}}"),
    )
    .unwrap();
    let outbound = model
        .listeners
        .iter()
        .find(|l| l.name == "outbound")
        .unwrap();
    let m = &outbound.routes.find("q.example").unwrap().routes[0].matches[0];
    let names: Vec<(&str, bool)> = m
        .query_params
        .iter()
        .map(|q| (q.name.as_str(), q.value.is_some()))
        .collect();
    assert_eq!(names, [("a", true), ("b", true), ("c", false), ("d", true)]);
    let e = errors(&vs("{a: {prefix: ''}, b: {regex: ''}}"));
    for field in ["queryParams.a.prefix", "queryParams.b.regex"] {
        assert!(
            e.iter()
                .any(|e| e.contains(field) && e.contains("may not be empty")),
            "{field}: {e:?}"
        );
    }
}

/// `delegate`, as istiod merges it: the delegate's rules take the delegating rule's place, each
/// match narrowed by the root's, short names resolved where they were written, the root's
/// settings filling what the delegate leaves out; what cannot apply is dropped with a warning.
#[test]
fn delegate_rules_take_the_place_of_the_rule_that_names_them() {
    use crate::model::StringMatcher;
    let yaml = with_gateway(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*/bookinfo.com"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: istio-system}
spec:
  hosts: [bookinfo.com]
  gateways: [gw]
  http:
  - name: pp
    match: [{uri: {prefix: /productpage}}]
    timeout: 5s
    delegate: {name: productpage, namespace: ns-a}
  - match: [{uri: {prefix: /gone}}]
    delegate: {name: nothing}
  - match: [{uri: {prefix: /hidden}}]
    delegate: {name: private, namespace: ns-a}
  - directResponse: {status: 404}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: productpage, namespace: ns-a}
spec:
  http:
  - name: v1
    match: [{uri: {prefix: /productpage/v1/}}]
    route: [{destination: {host: productpage-v1, port: {number: 9080}}}]
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
  - timeout: 1s
    route: [{destination: {host: productpage, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: ns-a}
spec:
  exportTo: [.]
  http: [{route: [{destination: {host: secret, port: {number: 9080}}}]}]
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let vhosts = model.listeners[0].routes.virtual_hosts();
    assert_eq!(vhosts.len(), 1, "{vhosts:?}");
    let routes = &vhosts[0].routes;
    // The two delegate rules that narrow `/productpage`, then the root's own last rule.
    assert_eq!(routes.len(), 3, "{routes:#?}");
    let uri = |i: usize| match routes[i].matches.first().and_then(|m| m.uri.as_ref()) {
        Some(StringMatcher::Prefix(p)) => p.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(uri(0), "/productpage/v1/");
    assert_eq!(uri(1), "/productpage");
    assert_eq!(routes[0].name.as_deref(), Some("pp-v1"));
    assert_eq!(routes[1].name.as_deref(), Some("pp"));
    // The root's timeout where the delegate sets none; the delegate's own where it does.
    assert_eq!(routes[0].timeout, Some(std::time::Duration::from_secs(5)));
    assert_eq!(routes[1].timeout, Some(std::time::Duration::from_secs(1)));
    assert_eq!(routes[0].source, "VirtualService istio-system/bookinfo");
    // Short names resolve in the delegate's namespace, where they were written.
    let host = |i: usize| match &routes[i].action {
        RouteAction::Forward(b) => model.backends[b[0].backend].host.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(host(0), "productpage-v1.ns-a.svc.cluster.local");
    assert_eq!(host(1), "productpage.ns-a.svc.cluster.local");
    assert!(matches!(routes[2].action, RouteAction::Direct(_)));
    let warned = |code: Code, text: &str| {
        assert!(
            model
                .warnings
                .iter()
                .any(|w| w.code == code && w.to_string().contains(text)),
            "{code:?} `{text}` in {:#?}",
            model.warnings
        );
    };
    warned(
        Code::DelegateRuleConflicts,
        "VirtualService ns-a/productpage: spec.http[1]: a match of this rule fits no match of VirtualService istio-system/bookinfo spec.http[0]",
    );
    warned(
        Code::DelegateNotFound,
        "VirtualService istio-system/bookinfo: spec.http[1].delegate: no VirtualService istio-system/nothing without hosts is loaded",
    );
    warned(
        Code::DelegateNotFound,
        "spec.http[2].delegate: VirtualService ns-a/private is not exported to namespace `istio-system`",
    );

    // An error in a delegate's rule names the delegate and the rule that delegated to it.
    let broken = yaml.replace("timeout: 1s", "timeout: soon");
    let got = errors(&broken);
    assert!(
        got.iter().any(|e| e.contains("VirtualService ns-a/productpage: spec.http[2] (delegated to by VirtualService istio-system/bookinfo spec.http[0]).timeout: `soon` is not a duration")),
        "{got:#?}"
    );
}

#[test]
fn delegation_mistakes_are_errors() {
    let root = |rule: &str| {
        with_gateway(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: root, namespace: ns}}\nspec:\n  hosts: [a.b]\n  http:\n  - {rule}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: leaf, namespace: ns}}\nspec:\n  http: [{{route: [{{destination: {{host: a.b}}}}]}}]\n"
        ))
    };
    let cases = [
        (root("{delegate: {name: leaf}, route: [{destination: {host: a.b}}]}"), "VirtualService ns/root: spec.http[0].route: a rule that delegates may not route"),
        (root("{delegate: {name: leaf}, redirect: {uri: /x}}"), "spec.http[0].redirect: a rule that delegates may not redirect"),
        (root("{delegate: {namespace: ns}}"), "spec.http[0].delegate.name: required"),
        (root("{delegate: {name: leaf}}").replace("  http: [{route", "  gateways: [gw]\n  http: [{route"), "VirtualService ns/leaf: spec.gateways: a VirtualService without hosts is a delegate"),
        (root("{delegate: {name: leaf}}").replace("  http: [{route: [{destination: {host: a.b}}]}]", "  http: [{delegate: {name: root}}]"), "VirtualService ns/leaf: spec.http[0].delegate: a delegate's rule cannot delegate again"),
    ];
    assert_errors(&cases);
}

/// Delegation as Istio reads the merged rule: a delegate private to the root's namespace is
/// visible, a root's exact header value is not widened by a delegate's presence check, and
/// fields that one resource's validation keeps apart meet as `translateRoute` reads them.
#[test]
fn delegate_merges_follow_istio_where_the_two_resources_meet() {
    let yaml = with_gateway(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*/shop.com"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: shop}
spec:
  hosts: [shop.com]
  gateways: [istio-system/gw]
  http:
  - match: [{headers: {x-tenant: {exact: a}}}]
    rewrite: {uri: /tenant-a/}
    mirror: {host: audit.shop.svc.cluster.local, port: {number: 80}}
    delegate: {name: leaf}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: leaf, namespace: shop}
spec:
  exportTo: [.]
  http:
  - match: [{headers: {x-tenant: {}}}]
    route: [{destination: {host: wide, port: {number: 80}}}]
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
  - mirrors: [{destination: {host: copy, port: {number: 80}}}]
    route: [{destination: {host: narrow, port: {number: 80}}}]
  - route: [{destination: {host: plain, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: answers, namespace: shop}
spec:
  hosts: [shop.com]
  gateways: [istio-system/gw]
  http:
  - match: [{uri: {prefix: /closed}}]
    directResponse: {status: 503}
    delegate: {name: leaf}
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let routes = &model.listeners[0].routes.virtual_hosts()[0].routes;
    // VirtualService shop/answers first (by name), then shop/root.
    assert_eq!(routes.len(), 6, "{routes:#?}");
    // An inherited directResponse answers instead of the delegate's destinations, and with no
    // destination no mirror applies, the delegate's own included.
    for r in &routes[..3] {
        assert!(matches!(r.action, RouteAction::Direct(_)), "{r:#?}");
        assert!(r.mirrors.is_empty(), "{r:#?}");
    }
    // In shop/root, the presence check would widen `x-tenant: a`: that rule is dropped.
    assert!(model.warnings.iter().any(
        |w| w.code == Code::DelegateRuleConflicts && w.field.as_deref() == Some("spec.http[0]")
    ));
    // The redirect keeps no rewrite and no mirror of the root's.
    assert!(matches!(routes[3].action, RouteAction::Redirect(_)));
    assert!(routes[3].rewrite_uri.is_none());
    assert!(routes[3].mirrors.is_empty());
    // Both mirrors: the root's `mirror` and the delegate's `mirrors`, the root's first.
    let mirrored = |i: usize| -> Vec<&str> {
        routes[i]
            .mirrors
            .iter()
            .map(|m| model.backends[m.backend].host.as_str())
            .collect()
    };
    assert_eq!(
        mirrored(4),
        [
            "audit.shop.svc.cluster.local",
            "copy.shop.svc.cluster.local"
        ]
    );
    assert!(routes[4].rewrite_uri.is_some());
    // A rule that only inherits the root's `mirror` keeps it.
    assert_eq!(mirrored(5), ["audit.shop.svc.cluster.local"]);
}

/// `maxConnectionDuration`: the merged policy's for HTTP connections (Envoy's cluster
/// setting, by port and subset as the rest of the pool); for a TCP route's connections the
/// rule's top-level one alone, as Istio's `tcp_proxy` reads it.
#[test]
fn max_connection_duration_for_http_by_port_and_for_tcp_from_the_top_level() {
    let yaml = with_gateway(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: istio-system}
spec:
  hosts: [db.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}, {number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: istio-system}
spec:
  host: db.internal
  trafficPolicy:
    connectionPool: {tcp: {maxConnectionDuration: 10m}}
    portLevelSettings:
    - port: {number: 5432}
      connectionPool: {tcp: {maxConnectionDuration: 1m}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw-tcp, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 9000, name: tcp, protocol: TCP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw-http, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [db.internal]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db-tcp, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw-tcp]
  tcp: [{route: [{destination: {host: db.internal, port: {number: 5432}}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db-http, namespace: istio-system}
spec:
  hosts: [db.internal]
  gateways: [gw-http]
  http: [{route: [{destination: {host: db.internal, port: {number: 80}}}]}]
"#,
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let port = |p: u16| {
        model
            .backends
            .iter()
            .find(|b| b.host == "db.internal" && b.port == p)
            .unwrap_or_else(|| panic!("no backend for port {p}: {:#?}", model.backends))
    };
    let minutes = |m: u64| Some(std::time::Duration::from_secs(60 * m));
    assert_eq!(port(5432).policy.max_connection_duration, minutes(1));
    assert_eq!(port(5432).policy.tcp_max_connection_duration, minutes(10));
    assert_eq!(port(80).policy.max_connection_duration, minutes(10));
}

/// `credentialName` of a Gateway server and of a DestinationRule: the mounted Secret's files,
/// chosen by the keys Istio reads, and every mistake named by its field.
#[test]
fn credential_names_resolve_to_the_mounted_secret_files() {
    let dir = std::env::temp_dir().join(format!("meshgate-credentials-{}", std::process::id()));
    let write = |path: &str, contents: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    };
    write("tls-only/tls.crt", "c");
    write("tls-only/tls.key", "k");
    // An optional volume of a Secret not created yet: the kubelet's entries only.
    write("tls-only-cacert/..data/.keep", "");
    write("opaque/cert", "c");
    write("opaque/key", "k");
    write("opaque/tls.crt", "c");
    write("opaque/tls.key", "k");
    write("opaque/cacert", "ca");
    write("opaque/crl", "crl");
    write("opaque/ca.crt", "ca");
    // An empty key is no key, as Istio reads a Secret.
    write("split/cert", "");
    write("split/key", "k");
    write("split/tls.crt", "c");
    write("split/tls.key", "k");
    write("split/ca.crt", "ignored: split-cacert is mounted");
    write("split-cacert/ca.crt", "ca");
    write("split-cacert/ca.crl", "crl");
    write("no-ca/cert", "c");
    write("no-ca/key", "k");
    write("empty-ca/cert", "c");
    write("empty-ca/key", "k");
    write("empty-ca/ca.crt", "");
    write("empty-pair/tls.crt", "c");
    write("empty-pair/tls.key", "");
    write("ca-only/ca.crt", "ca");
    let mesh_gateway = MESH_GATEWAY.replace(
        "  identity:",
        &format!(
            "  credentials: {{directory: {}}}\n  outbound: {{address: \"127.0.0.1:15001\"}}\n  identity:",
            dir.display()
        ),
    );
    let yaml = |rest: &str| format!("{mesh_gateway}---\n{rest}");
    let gw = |tls: &str| {
        yaml(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {tls}\n"
        ))
    };
    let server = |tls: &str| {
        let model = load_str("t.yaml", &gw(tls)).unwrap();
        let files = model.listeners[0].tls[0].mode.files().unwrap().clone();
        (model, files)
    };
    let (model, files) = server("{mode: SIMPLE, credentialName: tls-only}");
    assert_eq!(files.certificate, dir.join("tls-only/tls.crt"));
    assert_eq!(files.private_key, dir.join("tls-only/tls.key"));
    assert_eq!(files.ca_certificates, None);
    // Every key the Secret could hold is watched, the -cacert Secret's too once a CA is read.
    assert!(model.secret_files.contains(&dir.join("tls-only/cert")));
    let (model, files) = server("{mode: MUTUAL, credentialName: opaque}");
    assert_eq!(
        (files.certificate, files.private_key),
        (dir.join("opaque/cert"), dir.join("opaque/key"))
    );
    assert_eq!(files.ca_certificates, Some(dir.join("opaque/cacert")));
    assert_eq!(files.ca_crl, Some(dir.join("opaque/crl")));
    assert!(model
        .secret_files
        .contains(&dir.join("opaque-cacert/ca.crt")));
    let (_, files) = server("{mode: OPTIONAL_MUTUAL, credentialName: split}");
    assert_eq!(files.certificate, dir.join("split/tls.crt"));
    assert_eq!(files.ca_certificates, Some(dir.join("split-cacert/ca.crt")));
    assert_eq!(files.ca_crl, Some(dir.join("split-cacert/ca.crl")));
    // An empty name is no name, as Istio reads one.
    let (_, files) =
        server("{mode: SIMPLE, credentialName: \"\", serverCertificate: a.pem, privateKey: k.pem}");
    assert!(files.certificate.ends_with("a.pem"));

    let service = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: istio-system}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n---\n";
    let dr_for = |host: &str, tls: &str| {
        yaml(&format!(
            "{service}apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: istio-system}}\nspec:\n  host: {host}\n  trafficPolicy: {{tls: {tls}}}\n"
        ))
    };
    let dr = |tls: &str| dr_for("api.example.com", tls);
    let upstream = |tls: &str| {
        let model = load_str("t.yaml", &dr(tls)).unwrap();
        match &model.backends[0].policy.tls {
            UpstreamTls::Simple(t) | UpstreamTls::Mutual(t) => t.clone(),
            other => panic!("{other:?}"),
        }
    };
    let t = upstream("{mode: SIMPLE, credentialName: ca-only, sni: api.example.com}");
    assert_eq!(t.ca_certificates, Some(dir.join("ca-only/ca.crt")));
    assert_eq!((t.client_certificate, t.ca_crl), (None, None));
    let t = upstream("{mode: MUTUAL, credentialName: split}");
    assert_eq!(t.client_certificate, Some(dir.join("split/tls.crt")));
    assert_eq!(t.private_key, Some(dir.join("split/tls.key")));
    assert_eq!(t.ca_certificates, Some(dir.join("split-cacert/ca.crt")));
    // insecureSkipVerify needs no CA of the Secret.
    let t = upstream("{mode: MUTUAL, credentialName: no-ca, insecureSkipVerify: true}");
    assert_eq!(t.client_certificate, Some(dir.join("no-ca/cert")));
    assert_eq!(t.ca_certificates, None);
    // A rule that reaches no backend of this proxy needs no Secret mounted here: for another
    // host, or for another workload.
    load_str(
        "t.yaml",
        &dr_for(
            "other.example.com",
            "{mode: MUTUAL, credentialName: missing}",
        ),
    )
    .unwrap();
    load_str(
        "t.yaml",
        &dr("{mode: MUTUAL, credentialName: missing}").replace(
            "  host: api.example.com\n",
            "  host: api.example.com\n  workloadSelector: {matchLabels: {app: other}}\n",
        ),
    )
    .unwrap();
    // Two backends of one rule (two ports): one error for its Secret.
    let two_ports = dr("{mode: SIMPLE, credentialName: missing}").replace(
        "  ports: [{number: 80, name: http, protocol: HTTP}]",
        "  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: http-alt, protocol: HTTP}]",
    );
    let e = errors(&two_ports);
    assert_eq!(
        e.iter().filter(|e| e.contains("credentialName")).count(),
        1,
        "{e:#?}"
    );
    let both = load_str("t.yaml", &two_ports.replace("missing", "ca-only")).unwrap();
    let read = both.backends.iter().filter(|b| {
        matches!(&b.policy.tls, UpstreamTls::Simple(t) if t.ca_certificates == Some(dir.join("ca-only/ca.crt")))
    });
    assert_eq!(read.count(), 2);

    let dirs = |a: &str| dir.join(a).display().to_string();
    // Twins: from Secrets (the CA of the first) or files (the server's CA).
    let (_, files) = server("{mode: MUTUAL, credentialNames: [opaque, tls-only]}");
    assert_eq!(files.certificate, dir.join("opaque/cert"));
    assert_eq!(
        files.second,
        Some((dir.join("tls-only/tls.crt"), dir.join("tls-only/tls.key")))
    );
    assert_eq!(files.ca_certificates, Some(dir.join("opaque/cacert")));
    let (model, files) = server(
        "{mode: MUTUAL, caCertificates: ca.pem, tlsCertificates: [{serverCertificate: e.pem, privateKey: e-key.pem}, {serverCertificate: r.pem, privateKey: r-key.pem}]}",
    );
    assert!(files.certificate.ends_with("e.pem") && files.ca_certificates.is_some());
    let (second, second_key) = files.second.clone().unwrap();
    assert!(second.ends_with("r.pem") && second_key.ends_with("r-key.pem"));
    assert!(model.certificate_files().contains(&second_key));
    let (_, files) = server("{mode: SIMPLE, credentialNames: [tls-only]}");
    assert_eq!(files.second, None);

    assert_errors(&[
        (gw("{mode: SIMPLE, credentialNames: [a, b, c]}"), "spec.servers[0].tls.credentialNames: one or two Secrets"),
        // An empty list is none (as an empty credentialName is).
        (gw("{mode: SIMPLE, tlsCertificates: []}"), "spec.servers[0].tls.serverCertificate: required"),
        (gw("{mode: SIMPLE, tlsCertificates: [{serverCertificate: a.pem, privateKey: a-key.pem}, {serverCertificate: b.pem, privateKey: b-key.pem}, {serverCertificate: c.pem, privateKey: c-key.pem}]}"), "spec.servers[0].tls.tlsCertificates: one or two certificates"),
        (gw("{mode: SIMPLE, credentialName: opaque, credentialNames: [opaque]}"), "spec.servers[0].tls.credentialNames: `credentialName` is given: only one of"),
        (gw("{mode: SIMPLE, serverCertificate: a.pem, privateKey: k.pem, tlsCertificates: [{serverCertificate: e.pem, privateKey: e-key.pem}]}"), "spec.servers[0].tls.tlsCertificates: `serverCertificate` is given"),
        (gw("{mode: MUTUAL, tlsCertificates: [{serverCertificate: e.pem, privateKey: e-key.pem}]}"), "spec.servers[0].tls.caCertificates: required"),
        (gw("{mode: MUTUAL, caCertificates: ca.pem, tlsCertificates: [{serverCertificate: e.pem, privateKey: e-key.pem, caCertificates: other.pem}]}"), "spec.servers[0].tls.tlsCertificates[0].caCertificates: clients are verified with one CA bundle"),
        (gw("{mode: SIMPLE, tlsCertificates: [{serverCertificate: e.pem}]}"), "spec.servers[0].tls.tlsCertificates[0].privateKey: required"),
        (gw("{mode: SIMPLE, credentialNames: [opaque, missing]}"), "spec.servers[0].tls.credentialNames[1]: Secret `missing` is not mounted"),
        (gw("{mode: ISTIO_MUTUAL, tlsCertificates: [{serverCertificate: e.pem, privateKey: e-key.pem}]}"), "spec.servers[0].tls.tlsCertificates: ISTIO_MUTUAL presents the MeshGateway's identity"),
        (gw("{mode: ISTIO_MUTUAL, credentialNames: [opaque]}"), "spec.servers[0].tls.credentialNames: ISTIO_MUTUAL presents the MeshGateway's identity"),
        (gw("{mode: SIMPLE, credentialName: ../opaque}"), "spec.servers[0].tls.credentialName: `../opaque` is not a Secret name"),
        (gw("{mode: SIMPLE, credentialName: missing}"), &format!("spec.servers[0].tls.credentialName: Secret `missing` is not mounted: {} is not a directory holding its keys", dirs("missing"))),
        (gw("{mode: SIMPLE, credentialName: ca-only}"), &format!("spec.servers[0].tls.credentialName: Secret `ca-only` ({}) holds neither `cert` and `key` nor `tls.crt` and `tls.key`", dirs("ca-only"))),
        (gw("{mode: SIMPLE, credentialName: empty-pair}"), "Secret `empty-pair` ("),
        (gw("{mode: SIMPLE, credentialName: empty-pair}"), ") has the keys `tls.crt` and `tls.key`, but one is empty"),
        (gw("{mode: MUTUAL, credentialName: no-ca}"), &format!("spec.servers[0].tls.credentialName: Secret `no-ca` ({}) holds neither `cacert` nor `ca.crt`", dirs("no-ca"))),
        (gw("{mode: MUTUAL, credentialName: empty-ca}"), "has the key `cacert` or `ca.crt`, but it is empty"),
        // The empty -cacert mount is passed over for the Secret itself.
        (gw("{mode: MUTUAL, credentialName: tls-only}"), &format!("Secret `tls-only` ({}) holds neither `cacert` nor `ca.crt`", dirs("tls-only"))),
        (gw("{mode: SIMPLE, credentialName: opaque, serverCertificate: a.pem}"), "spec.servers[0].tls.credentialName: `serverCertificate` is given: only one of serverCertificate and privateKey, credentialName, credentialNames and tlsCertificates names a server's certificates"),
        (gw("{mode: MUTUAL, credentialName: opaque, caCrl: crl.pem}"), "spec.servers[0].tls.caCrl: a Secret names the certificates: it holds the CA"),
        (gw("{mode: ISTIO_MUTUAL, credentialName: opaque}"), "spec.servers[0].tls.credentialName: ISTIO_MUTUAL presents the MeshGateway's identity"),
        (dr("{mode: SIMPLE, credentialName: tls-only}"), &format!("spec.trafficPolicy.tls.credentialName: Secret `tls-only` ({}) holds neither `cacert` nor `ca.crt`", dirs("tls-only"))),
        (dr("{mode: SIMPLE, credentialName: missing}"), &format!("spec.trafficPolicy.tls.credentialName: neither the Secret `missing-cacert` nor the Secret `missing` is mounted under {}", dir.display())),
        (dr("{mode: MUTUAL, credentialName: ca-only}"), "spec.trafficPolicy.tls.credentialName: Secret `ca-only` ("),
        (dr("{mode: MUTUAL, credentialName: opaque, caCertificates: ca.pem}"), "spec.trafficPolicy.tls.caCertificates: credentialName is set"),
        (dr("{mode: MUTUAL, credentialName: UPPER}"), "spec.trafficPolicy.tls.credentialName: `UPPER` is not a Secret name"),
        (dr("{mode: ISTIO_MUTUAL, credentialName: opaque}"), "spec.trafficPolicy.tls.credentialName: not used with ISTIO_MUTUAL"),
        (MESH_GATEWAY.replace("  identity:", "  credentials: {directory: \"\"}\n  identity:"), "spec.credentials.directory: required"),
    ]);
    // One error for a Secret that is not mounted, not one per key it lacks.
    let e = errors(&gw("{mode: MUTUAL, credentialName: missing}"));
    assert_eq!(
        e.iter().filter(|e| e.contains("credentialName")).count(),
        1,
        "{e:#?}"
    );
    let e = errors(&gw(
        "{mode: SIMPLE, credentialName: opaque, caCertificates: ca.pem}",
    ));
    assert_eq!(
        e.iter().filter(|e| e.contains("caCertificates")).count(),
        1,
        "{e:#?}"
    );
    // A load that fails for a Secret still names the Secret's files, to watch them.
    let e = load_str("t.yaml", &gw("{mode: MUTUAL, credentialName: no-ca}")).unwrap_err();
    assert!(e.1.contains(&dir.join("no-ca/ca.crt")), "{:?}", e.1);
    assert!(e.1.contains(&dir.join("no-ca-cacert/cacert")), "{:?}", e.1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `insecureSkipVerify`: on SIMPLE and MUTUAL, alone (Istio refuses what would verify the
/// server beside it), and said by `check`.
#[test]
fn insecure_skip_verify_turns_off_server_verification_and_is_warned() {
    let yaml = |tls: &str| {
        sidecar(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: api, namespace: default}}\nspec:\n  hosts: [api.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: default}}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    portLevelSettings: [{{port: {{number: 80}}, tls: {tls}}}]\n"
        ))
    };
    let model = load_str(
        "t.yaml",
        &yaml(
            "{mode: MUTUAL, clientCertificate: c.pem, privateKey: k.pem, insecureSkipVerify: true}",
        ),
    )
    .unwrap();
    let UpstreamTls::Mutual(t) = &model.backends[0].policy.tls else {
        panic!("{:?}", model.backends[0].policy.tls);
    };
    assert!(t.insecure_skip_verify);
    let w: Vec<_> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::UnverifiedUpstream)
        .collect();
    assert_eq!(w.len(), 1, "{:?}", model.warnings);
    assert_eq!(
        w[0].field.as_deref(),
        Some("spec.trafficPolicy.portLevelSettings[0].tls.insecureSkipVerify")
    );
    let model = load_str("t.yaml", &yaml("{mode: SIMPLE, insecureSkipVerify: false}")).unwrap();
    let UpstreamTls::Simple(t) = &model.backends[0].policy.tls else {
        panic!("{:?}", model.backends[0].policy.tls);
    };
    assert!(!t.insecure_skip_verify);
    assert!(model
        .warnings
        .iter()
        .all(|w| w.code != Code::UnverifiedUpstream));
    let field = "spec.trafficPolicy.portLevelSettings[0].tls";
    assert_errors(&[
        (yaml("{mode: SIMPLE, caCertificates: ca.pem, insecureSkipVerify: true}"), &format!("{field}.caCertificates: insecureSkipVerify is true: the server is not verified")),
        (yaml("{mode: SIMPLE, subjectAltNames: [api.example.com], insecureSkipVerify: true}"), &format!("{field}.subjectAltNames: insecureSkipVerify is true")),
        (yaml("{mode: SIMPLE, credentialName: api, insecureSkipVerify: true}"), &format!("{field}.credentialName: insecureSkipVerify is true")),
        (yaml("{mode: MUTUAL, clientCertificate: c.pem, privateKey: k.pem, caCrl: crl.pem, insecureSkipVerify: true}"), &format!("{field}.caCrl: insecureSkipVerify is true")),
        (yaml("{mode: ISTIO_MUTUAL, insecureSkipVerify: true}"), &format!("{field}.insecureSkipVerify: applies to SIMPLE and MUTUAL only: ISTIO_MUTUAL always verifies the server")),
        (yaml("{mode: DISABLE, insecureSkipVerify: true}"), &format!("{field}.insecureSkipVerify: applies to SIMPLE and MUTUAL only: DISABLE originates no TLS")),
    ]);
    // Beside credentialName the files are refused once, as such.
    let e = errors(&yaml(
        "{mode: MUTUAL, credentialName: api, caCertificates: ca.pem, insecureSkipVerify: true}",
    ));
    assert_eq!(
        e.iter().filter(|e| e.contains(".caCertificates")).count(),
        1,
        "{e:#?}"
    );
    // A subset's, warned at its own path; a rule that selects another workload, not at all.
    let subset = yaml("{mode: SIMPLE}").replace(
        "    portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}]\n",
        "    tls: {mode: SIMPLE}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true}}\n",
    );
    let model = load_str("t.yaml", &subset).unwrap();
    let fields: Vec<_> = model
        .warnings
        .iter()
        .filter(|w| w.code == Code::UnverifiedUpstream)
        .map(|w| w.field.as_deref())
        .collect();
    assert_eq!(
        fields,
        [Some("spec.subsets[0].trafficPolicy.tls.insecureSkipVerify")]
    );
    let elsewhere = yaml("{mode: SIMPLE, insecureSkipVerify: true}").replace(
        "  host: api.example.com\n",
        "  host: api.example.com\n  workloadSelector: {matchLabels: {app: other}}\n",
    );
    let model = load_str("t.yaml", &elsewhere).unwrap();
    assert!(model
        .warnings
        .iter()
        .all(|w| w.code != Code::UnverifiedUpstream));
}

/// A DestinationRule whose workloadSelector selects another workload is reported once, as
/// such, and not again for a host nothing here uses.
#[test]
fn a_rule_for_another_workload_is_reported_once() {
    let yaml = sidecar(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: default}\nspec:\n  host: nothing.example.com\n  workloadSelector: {matchLabels: {app: other}}\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n",
    );
    let model = load_str("t.yaml", &yaml).unwrap();
    let codes: Vec<Code> = model.warnings.iter().map(|w| w.code).collect();
    assert_eq!(codes, [Code::PolicyNotApplied], "{:?}", model.warnings);
    // Selecting this proxy, the unused host is reported.
    let model = load_str("t.yaml", &yaml.replace("app: other", "app: productpage")).unwrap();
    let codes: Vec<Code> = model.warnings.iter().map(|w| w.code).collect();
    assert_eq!(codes, [Code::DestinationRuleUnused], "{:?}", model.warnings);
}
