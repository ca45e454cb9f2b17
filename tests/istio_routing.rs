//! Istio routing as operators write it, through the outbound listener (a sidecar's view) and
//! the gateway: short host names, subsets, Kubernetes Services, and the rest of the
//! VirtualService and DestinationRule fields, each against running echo backends.

mod support;

use http::StatusCode;

use meshgate_proxy::echo::Echo;
use support::client::plain_get;
use support::proxy::echo;
use support::sidecar::Sidecar;
use support::TempDir;

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

/// Three versions of a service, as bookinfo's reviews, each an echo on its own port.
struct Versions {
    v1: Echo,
    v2: Echo,
    v3: Echo,
}

impl Versions {
    fn new() -> Self {
        Self {
            v1: echo(),
            v2: echo(),
            v3: echo(),
        }
    }

    /// A ServiceEntry for `reviews.default.svc.cluster.local:9080` whose endpoints carry
    /// bookinfo's version labels, and the DestinationRule with a subset per version.
    fn registry(&self) -> String {
        format!(
            r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: reviews, version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: reviews, version: v2}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: reviews, version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
"#,
            self.v1.address.port(),
            self.v2.address.port(),
            self.v3.address.port()
        )
    }
}

#[tokio::test]
async fn bookinfo_subsets_route_by_version_label() {
    let v = Versions::new();
    // bookinfo's virtual-service-reviews-test-v2.yaml and -50-v3.yaml, together.
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v3}, weight: 50}
"#;
    let sidecar = Sidecar::start(&format!("{}{vs}", v.registry())).await;
    for _ in 0..5 {
        assert_eq!(
            sidecar
                .server("reviews:9080", "/", &[("end-user", "jason")])
                .await,
            v.v2.address.to_string()
        );
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        seen.insert(sidecar.server("reviews:9080", "/", &[]).await);
    }
    let want: std::collections::HashSet<String> =
        [v.v1.address.to_string(), v.v3.address.to_string()].into();
    assert_eq!(seen, want, "v1 and v3 only, never v2");
}

#[tokio::test]
async fn workload_entries_picked_by_a_workload_selector_carry_the_subset_labels() {
    let (v1, v2) = (echo(), echo());
    let extra = format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-vm-1, namespace: default, labels: {{version: v1}}}}
spec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-vm-2, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: ratings, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: elsewhere, namespace: other}}
spec: {{address: 127.0.0.2, labels: {{app: ratings, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.vm.internal]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: default}}
spec:
  host: ratings.vm.internal
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.vm.internal]
  http:
  - match: [{{uri: {{prefix: /v2}}}}]
    route: [{{destination: {{host: ratings.vm.internal, subset: v2}}}}]
  - route: [{{destination: {{host: ratings.vm.internal, subset: v1}}}}]
"#,
        v1.address.port(),
        v2.address.port()
    );
    let sidecar = Sidecar::start(&extra).await;
    for _ in 0..4 {
        assert_eq!(
            sidecar.server("ratings.vm.internal:9080", "/v2", &[]).await,
            v2.address.to_string()
        );
        assert_eq!(
            sidecar.server("ratings.vm.internal:9080", "/", &[]).await,
            v1.address.to_string()
        );
    }
}

#[tokio::test]
async fn a_subset_no_destination_rule_defines_is_a_503_as_in_istio() {
    let v = Versions::new();
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v9}}]}]
"#;
    let sidecar = Sidecar::start(&format!("{}{vs}", v.registry())).await;
    let r = plain_get(sidecar.addr(), "reviews", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&r.body[..], b"cluster not found\n");
    assert!(sidecar.running.model().warnings.iter().any(|w| w
        .to_string()
        .contains("`v9` is defined by no DestinationRule")));
}

#[tokio::test]
async fn a_kubernetes_service_supplies_the_host_and_its_only_port() {
    let backend = echo();
    let extra = format!(
        r#"  resolve: [{{host: ratings.default.svc.cluster.local, port: 9080, address: "{}"}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ratings, namespace: default, labels: {{app: ratings, service: ratings}}}}
spec:
  ports: [{{port: 9080, name: http}}]
  selector: {{app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings]
  http: [{{route: [{{destination: {{host: ratings}}}}]}}]
"#,
        backend.address
    );
    // `resolve` continues the MeshGateway's spec: the Service's name points at the echo.
    let sidecar = Sidecar::start(&extra).await;
    for host in [
        "ratings",
        "ratings.default",
        "ratings.default.svc.cluster.local:9080",
    ] {
        assert_eq!(
            sidecar.server(host, "/", &[]).await,
            backend.address.to_string(),
            "{host}"
        );
    }
}

#[tokio::test]
async fn match_gateways_and_source_labels_choose_the_routes_that_apply_here() {
    let (a, b, c) = (echo(), echo(), echo());
    let extra = format!(
        r#"{}{}{}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.internal]
  gateways: [mesh, istio-system/ingress]
  http:
  - match: [{{sourceLabels: {{app: reviews}}}}]
    route: [{{destination: {{host: a.internal}}}}]
  - match: [{{gateways: [istio-system/ingress], sourceLabels: {{app: productpage}}}}]
    route: [{{destination: {{host: b.internal}}}}]
  - match: [{{sourceLabels: {{app: productpage}}, sourceNamespace: other}}]
    route: [{{destination: {{host: b.internal}}}}]
  - match: [{{gateways: [mesh], uri: {{prefix: /mesh}}}}, {{sourceLabels: {{app: productpage}}, uri: {{prefix: /labels}}}}]
    route: [{{destination: {{host: c.internal}}}}]
"#,
        service_entry("a", "a.internal", 80, &a),
        service_entry("b", "b.internal", 80, &b),
        service_entry("c", "c.internal", 80, &c),
    );
    let sidecar = Sidecar::start(&extra).await;
    assert_eq!(
        sidecar.server("ratings.internal", "/mesh", &[]).await,
        c.address.to_string()
    );
    assert_eq!(
        sidecar.server("ratings.internal", "/labels", &[]).await,
        c.address.to_string()
    );
    // Nothing else applies here: the first route is for reviews, the second for the ingress,
    // the third for another namespace.
    let r = plain_get(sidecar.addr(), "ratings.internal", "/other", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// `queryParams` route by the query the client sent, through the outbound listener: the
/// first value of the parameter, or its presence.
#[tokio::test]
async fn query_parameters_choose_the_route_by_the_query_sent() {
    let (a, b) = (echo(), echo());
    let http = "  - match: [{queryParams: {version: {exact: v2}}}, {queryParams: {canary: {}}}]\n    route: [{destination: {host: b.internal}}]\n  - route: [{destination: {host: ratings.internal}}]\n";
    let extra = format!(
        "{}{}",
        ratings(&a, http),
        service_entry("b", "b.internal", 80, &b)
    );
    let sidecar = Sidecar::start(&extra).await;
    for (path, backend) in [
        ("/r?version=v2", &b),
        ("/r?x=1&canary", &b),
        ("/r?version=v1&version=v2", &a),
        ("/r", &a),
    ] {
        assert_eq!(
            sidecar.server("ratings.internal", path, &[]).await,
            backend.address.to_string(),
            "{path}"
        );
    }
}

/// A TLS server for `edition.cnn.com` (its certificate names it), chained to a test root.
async fn tls_origin() -> (support::pki::Pki, support::observer::Observer) {
    let pki = support::pki::Pki::new(&["example.com"]);
    let mut spec = meshgate_pki::LeafSpec::spiffe("spiffe://example.com/ns/web/sa/cnn");
    spec.dns = vec!["edition.cnn.com".into()];
    let server = pki.leaf("example.com", &spec);
    let observer =
        support::observer::Observer::start_with(&server, &pki.root.cert_pem, &[b"http/1.1"], false)
            .await;
    (pki, observer)
}

/// Istio's egress TLS origination task, as published now: the app sends plain HTTP to port
/// 80, which targets 443; the DestinationRule originates TLS on port 80.
#[tokio::test]
async fn tls_origination_on_the_http_port_as_istios_egress_task() {
    let (pki, observer) = tls_origin().await;
    let extra = format!(
        r#"  resolve: [{{host: edition.cnn.com, port: 443, address: "{}"}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: edition-cnn-com, namespace: default}}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: 443}}
  - {{number: 443, name: https-port, protocol: HTTPS}}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: edition-cnn-com, namespace: default}}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, caCertificates: root.pem}}
"#,
        observer.address
    );
    let sidecar = Sidecar::start_with_files(&extra, &[("root.pem", &pki.root.cert_pem)]).await;
    let r = plain_get(sidecar.addr(), "edition.cnn.com", "/politics", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"observed");
    assert_eq!(observer.seen()[0].sni.as_deref(), Some("edition.cnn.com"));
}

/// `caCrl` beside `caCertificates`: a server whose certificate the CRL revokes is refused, as
/// Envoy's upstream validation context refuses it; one it does not revoke is served.
#[tokio::test]
async fn tls_origination_refuses_a_server_that_ca_crl_revokes() {
    let pki = support::pki::Pki::new(&["example.com"]);
    let mut spec = meshgate_pki::LeafSpec::spiffe("spiffe://example.com/ns/web/sa/cnn");
    spec.dns = vec!["edition.cnn.com".into()];
    let server = pki.leaf("example.com", &spec);
    let other = pki.leaf("example.com", &spec);
    let tomorrow = meshgate_pki::OffsetDateTime::now_utc() + meshgate_pki::Duration::days(1);
    let observer =
        support::observer::Observer::start_with(&server, &pki.root.cert_pem, &[b"http/1.1"], false)
            .await;
    for (revoked, status) in [
        (&other, StatusCode::OK),
        (&server, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let crl = pki
            .ca("example.com")
            .crl(&[&revoked.leaf_der], tomorrow)
            .unwrap();
        let extra = format!(
            r#"  resolve: [{{host: edition.cnn.com, port: 443, address: "{}"}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: edition-cnn-com, namespace: default}}
spec:
  hosts: [edition.cnn.com]
  ports: [{{number: 80, name: http-port, protocol: HTTP, targetPort: 443}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: edition-cnn-com, namespace: default}}
spec:
  host: edition.cnn.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: root.pem, caCrl: crl.pem}}
"#,
            observer.address
        );
        let sidecar = Sidecar::start_with_files(
            &extra,
            &[("root.pem", &pki.root.cert_pem), ("crl.pem", &crl)],
        )
        .await;
        let r = plain_get(sidecar.addr(), "edition.cnn.com", "/", &[])
            .await
            .unwrap();
        assert_eq!(r.status, status);
    }
}

/// The same task as Istio published it before: a VirtualService sends port 80 to the HTTPS
/// port 443, through a subset whose port-level policy originates TLS.
#[tokio::test]
async fn tls_origination_through_a_subset_on_the_https_port() {
    let (pki, observer) = tls_origin().await;
    let extra = format!(
        r#"  resolve: [{{host: edition.cnn.com, port: 443, address: "{}"}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: edition-cnn-com, namespace: default}}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP}}
  - {{number: 443, name: https-port-for-tls-origination, protocol: HTTPS}}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edition-cnn-com, namespace: default}}
spec:
  hosts: [edition.cnn.com]
  http:
  - match: [{{port: 80}}]
    route:
    - destination: {{host: edition.cnn.com, subset: tls-origination, port: {{number: 443}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: edition-cnn-com, namespace: default}}
spec:
  host: edition.cnn.com
  subsets:
  - name: tls-origination
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 443}}
        tls: {{mode: SIMPLE, caCertificates: root.pem}}
"#,
        observer.address
    );
    let sidecar = Sidecar::start_with_files(&extra, &[("root.pem", &pki.root.cert_pem)]).await;
    let r = plain_get(sidecar.addr(), "edition.cnn.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"observed", "{:?}", r.status);
    assert_eq!(observer.seen()[0].sni.as_deref(), Some("edition.cnn.com"));
}

/// A VirtualService for `ratings.internal` with `http` rules, and the echo behind it.
fn ratings(backend: &Echo, http: &str) -> String {
    format!(
        r#"{}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.internal]
  http:
{http}"#,
        service_entry("ratings", "ratings.internal", 80, backend)
    )
}

#[tokio::test]
async fn fault_injection_delays_and_aborts_as_envoys_fault_filter() {
    let backend = echo();
    let dir = TempDir::new("fault-log");
    let log = dir.path().join("access.log");
    let http = r#"  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    route: [{destination: {host: ratings.internal}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 555, percentage: {value: 100.0}}}
    route: [{destination: {host: ratings.internal}}]
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: ratings.internal}}]
  - match: [{uri: {prefix: /half}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: ratings.internal}}]
  - match: [{uri: {prefix: /unset}}]
    fault: {abort: {httpStatus: 503}}
    route: [{destination: {host: ratings.internal}}]
  - match: [{uri: {prefix: /legacy}}]
    fault: {delay: {fixedDelay: 1ms, percent: 100}}
    route: [{destination: {host: ratings.internal}}]
"#;
    let extra = format!(
        "  accessLog: {{path: {}}}\n{}",
        log.display(),
        ratings(&backend, http)
    );
    let sidecar = Sidecar::start(&extra).await;
    let get = |path: &'static str| plain_get(sidecar.addr(), "ratings.internal", path, &[]);

    let started = std::time::Instant::now();
    let r = get("/delay").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));

    let r = get("/abort").await.unwrap();
    assert_eq!(r.status.as_u16(), 555);
    assert_eq!(&r.body[..], b"fault filter abort");

    let r = get("/grpc").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "14");

    let mut aborted = 0;
    for _ in 0..200 {
        if get("/half").await.unwrap().status == StatusCode::SERVICE_UNAVAILABLE {
            aborted += 1;
        }
    }
    // 100 expected; about five standard deviations (7.1) either way.
    assert!((65..=135).contains(&aborted), "{aborted} of 200 aborted");

    // Istio's default share is 0%: nothing is aborted, and `check` says so.
    for _ in 0..20 {
        assert_eq!(get("/unset").await.unwrap().status, StatusCode::OK);
    }
    assert!(sidecar
        .running
        .model()
        .warnings
        .iter()
        .any(|w| w.to_string().contains("abort: has no percentage")));
    assert_eq!(get("/legacy").await.unwrap().status, StatusCode::OK);

    let lines = support::json_lines(&log, 224).await;
    let flag = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .map(|l| l["response_flags"].as_str().unwrap().to_string())
    };
    assert_eq!(flag("/delay").as_deref(), Some("DI"));
    assert_eq!(flag("/abort").as_deref(), Some("FI"));
    assert_eq!(
        flag("/legacy").as_deref(),
        Some("DI"),
        "the deprecated integer percent"
    );
}

#[tokio::test]
async fn redirects_build_the_location_as_istio_configures_envoy() {
    let backend = echo();
    let http = r#"  - match: [{uri: {exact: /v1/getProductRatings}}]
    redirect: {uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local}
  - match: [{uri: {prefix: /secure}}]
    redirect: {scheme: https, redirectCode: 308}
  - match: [{uri: {prefix: /port}}]
    redirect: {port: 8443, scheme: https}
  - match: [{uri: {prefix: /derived}}]
    redirect: {derivePort: FROM_REQUEST_PORT, uri: "/moved?from=derived"}
  - match: [{uri: {prefix: /written-port}}]
    redirect: {scheme: https, authority: "other.internal:80"}
  - match: [{uri: {prefix: /default-port}}]
    redirect: {derivePort: FROM_PROTOCOL_DEFAULT, authority: "other.internal:9090"}
"#;
    let sidecar = Sidecar::start(&ratings(&backend, http)).await;
    let cases = [
        (
            "ratings.internal",
            "/v1/getProductRatings?id=1",
            301,
            "http://newratings.default.svc.cluster.local/v1/bookRatings?id=1".to_string(),
        ),
        (
            "ratings.internal:8080",
            "/secure/x",
            308,
            "https://ratings.internal:8080/secure/x".to_string(),
        ),
        // The request's own port stays, but not the default one of the scheme it leaves
        // (Envoy's `processRequestHost`).
        (
            "ratings.internal:80",
            "/secure/x",
            308,
            "https://ratings.internal/secure/x".to_string(),
        ),
        (
            "ratings.internal",
            "/port",
            301,
            "https://ratings.internal:8443/port".to_string(),
        ),
        (
            "ratings.internal",
            "/derived?q=1",
            301,
            // On the outbound listener, the port the request was for (80 when it names none).
            "http://ratings.internal/moved?from=derived".to_string(),
        ),
        (
            "ratings.internal:9080",
            "/derived",
            301,
            "http://ratings.internal:9080/moved?from=derived".to_string(),
        ),
        // A port written in `authority` stays as written.
        (
            "ratings.internal:80",
            "/written-port",
            301,
            "https://other.internal:80/written-port".to_string(),
        ),
        (
            "ratings.internal",
            "/default-port",
            301,
            "http://other.internal/default-port".to_string(),
        ),
    ];
    for (host, path, code, location) in cases {
        let r = plain_get(sidecar.addr(), host, path, &[]).await.unwrap();
        assert_eq!(r.status.as_u16(), code, "{path}");
        assert_eq!(r.headers["location"], location.as_str(), "{path}");
    }
}

#[tokio::test]
async fn cors_preflights_are_answered_and_allowed_origins_marked() {
    let backend = echo();
    let http = r#"  - match: [{uri: {prefix: /ignore}}]
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}]
      allowMethods: [GET]
      unmatchedPreflights: IGNORE
    route: [{destination: {host: ratings.internal}}]
  - corsPolicy:
      allowOrigins: [{exact: "https://example.com"}, {regex: "https://.*\\.example\\.org"}]
      allowMethods: [POST, GET]
      allowHeaders: [x-custom-header]
      exposeHeaders: [x-served-by]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: ratings.internal}}]
"#;
    let sidecar = Sidecar::start(&ratings(&backend, http)).await;
    let addr = sidecar.addr();
    let options = |path: &'static str, origin: &'static str| async move {
        use http_body_util::{BodyExt, Full};
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::options(path)
            .header("host", "ratings.internal")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = send.send_request(req).await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    };

    // An allowed origin's preflight is answered here.
    let (status, h, body) = options("/", "https://a.example.org").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty(), "answered by the proxy, not the echo");
    assert_eq!(h["access-control-allow-origin"], "https://a.example.org");
    assert_eq!(h["access-control-allow-methods"], "POST,GET");
    assert_eq!(h["access-control-allow-headers"], "x-custom-header");
    assert_eq!(h["access-control-max-age"], "86400");
    assert_eq!(h["access-control-allow-credentials"], "true");
    // Another origin's goes upstream (FORWARD).
    let (status, h, body) = options("/", "https://evil.example.net").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.is_empty(), "the echo answered");
    assert!(h.get("access-control-allow-origin").is_none());
    // With IGNORE it is answered here, without allowing the origin.
    let (status, h, body) = options("/ignore", "https://evil.example.net").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert!(h.get("access-control-allow-origin").is_none());
    assert_eq!(h["access-control-allow-methods"], "GET");

    // Actual requests: marked for an allowed origin only.
    let r = plain_get(
        sidecar.addr(),
        "ratings.internal",
        "/",
        &[("origin", "https://example.com")],
    )
    .await
    .unwrap();
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://example.com"
    );
    assert_eq!(r.headers["access-control-expose-headers"], "x-served-by");
    let r = plain_get(
        sidecar.addr(),
        "ratings.internal",
        "/",
        &[("origin", "https://evil.example.net")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn on_the_outbound_listener_an_undeclared_host_without_a_port_takes_the_requests_port() {
    let backend = echo();
    let port = backend.address.port();
    // An address for a host: resolved as a name is, when the request comes.
    let sidecar = Sidecar::start(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: plain, namespace: default}
spec:
  hosts: [127.0.0.1]
  http: [{route: [{destination: {host: 127.0.0.1}}]}]
"#,
    )
    .await;
    let authority = format!("127.0.0.1:{port}");
    let r = plain_get(sidecar.addr(), &authority, "/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["path"], "/x");

    // Bound to a Gateway as well, the route has no port to take: the error says what to add.
    let yaml = r#"apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {name: gw, namespace: default}
spec: {labels: {istio: ingressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: plain, namespace: default}
spec:
  hosts: [plain.example.test]
  gateways: [gw, mesh]
  http: [{route: [{destination: {host: plain.example.test}}]}]
"#;
    let e = meshgate_config::load_str("t.yaml", yaml)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.http[0].route[0].destination: `plain.example.test` has no declared port: add destination.port.number"),
        "{e}"
    );
}
