//! HTTPS ingress as Istio's Gateway servers configure it, over real handshakes: `SIMPLE`,
//! `MUTUAL` and `OPTIONAL_MUTUAL` servers with certificate files beside an `ISTIO_MUTUAL` one
//! on the same port, chosen by SNI; the request host must be one of the chosen server's hosts;
//! client certificates checked against `subjectAltNames` and pins; `cipherSuites` and
//! protocol versions; `httpsRedirect`; certificate files reloaded.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec, Workload};
use meshgate_proxy::echo::Echo;
use support::client::{Client, Conn, Reply};
use support::pki::Pki;
use support::proxy::{echo, Proxy};
use support::TIMEOUT;

const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const CALLER: &str = "spiffe://example.com/ns/default/sa/sleep";

/// A server certificate as a public CA would issue it: DNS SANs only.
fn server_cert(ca: &Authority, dns: &str) -> Workload {
    let mut spec = LeafSpec::spiffe("spiffe://unused");
    spec.uris.clear();
    spec.dns = vec![dns.to_string()];
    ca.issue(&spec).unwrap()
}

/// The certificate files `config` names: `a`'s and `b`'s certificates, and the client CAs.
fn config_files<'a>(
    a: &'a Workload,
    b: &'a Workload,
    clients: &'a str,
) -> Vec<(&'static str, &'a str)> {
    vec![
        ("tls/a.pem", &a.chain_pem),
        ("tls/a-key.pem", &a.key_pem),
        ("tls/b.pem", &b.chain_pem),
        ("tls/b-key.pem", &b.key_pem),
        ("tls/clients.pem", clients),
    ]
}

fn config(backend: SocketAddr, a_ciphers: &str) -> String {
    format!(
        r#"
apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  labels: {{istio: ingressgateway}}
  identity: {{certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}}
  listen: {{address: 127.0.0.1, portOverrides: {{443: 0, 80: 0}}}}
  reload: {{pollInterval: 0s}}
---
apiVersion: operator.kyma-project.io/v1alpha2
kind: Istio
metadata: {{name: default, namespace: kyma-system}}
spec: {{config: {{trustDomain: example-target.com}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-a, protocol: HTTPS}}
    hosts: [a.example.com]
    tls:
      mode: SIMPLE
      serverCertificate: tls/a.pem
      privateKey: tls/a-key.pem
      maxProtocolVersion: TLSV1_3
      cipherSuites: [{a_ciphers}]
  - port: {{number: 443, name: https-b, protocol: HTTPS}}
    hosts: [b.example.com]
    tls: {{mode: MUTUAL, serverCertificate: tls/b.pem, privateKey: tls/b-key.pem, caCertificates: tls/clients.pem}}
  - port: {{number: 443, name: mtls, protocol: HTTPS}}
    hosts: ["*.example-target.com"]
    tls: {{mode: ISTIO_MUTUAL}}
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [a.example.com]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: all, namespace: istio-system}}
spec:
  hosts: [a.example.com, b.example.com, "*.example-target.com"]
  gateways: [edge]
  http: [{{route: [{{destination: {{host: echo.internal, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: istio-system}}
spec:
  hosts: [echo.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#,
        port = backend.port()
    )
}

struct Setup {
    pki: Pki,
    public: Authority,
    clients: Authority,
    a: Workload,
    proxy: Proxy,
    _echo: Echo,
}

impl Setup {
    async fn new(a_ciphers: &str) -> Self {
        let pki = Pki::new(&["example-target.com", "example.com"]);
        let public = Authority::root("public web CA", KeyAlgorithm::EcdsaP256).unwrap();
        let clients = Authority::root("partner client CA", KeyAlgorithm::EcdsaP256).unwrap();
        let a = server_cert(&public, "a.example.com");
        let b = server_cert(&public, "b.example.com");
        let backend = echo();
        let proxy = Proxy::start_with_files(
            &config(backend.address, a_ciphers),
            &pki.workload("example-target.com", GATEWAY_ID),
            &config_files(&a, &b, &clients.cert_pem),
        )
        .await;
        Self {
            pki,
            public,
            clients,
            a,
            proxy,
            _echo: backend,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr(443)
    }

    /// A browser-like client: trusts the public CA, no certificate.
    fn anonymous(&self) -> Client {
        Client::plain(None, &self.public.cert_pem)
    }

    /// The leaf the server presented for `sni`.
    async fn presented(&self, client: &Client, sni: &str) -> Vec<u8> {
        let tls = client.connect(self.addr(), sni).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }
}

#[tokio::test]
async fn simple_mutual_and_istio_mutual_share_a_port_by_sni() {
    let s = Setup::new("ECDHE-ECDSA-AES128-GCM-SHA256").await;

    // SIMPLE: the server's own certificate, no client certificate, no identity tags.
    assert_eq!(
        s.presented(&s.anonymous(), "a.example.com").await,
        s.a.leaf_der
    );
    let r = s
        .anonymous()
        .get(
            s.addr(),
            "a.example.com",
            "a.example.com",
            "/get",
            &[
                ("x-mesh-origin", "local"),
                ("x-forwarded-client-cert", "By=x"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let json = r.json();
    assert!(json["headers"].get("x-mesh-origin").is_none(), "{json}");
    assert!(
        json["headers"].get("x-forwarded-client-cert").is_none(),
        "{json}"
    );
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("https"));

    // The host must be one of the chosen server's hosts, as Envoy's route configuration
    // belongs to the filter chain the SNI chose.
    let r = s
        .anonymous()
        .get(s.addr(), "a.example.com", "b.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // MUTUAL: a client certificate of the configured CA is required; XFCC describes it.
    let refused = s
        .anonymous()
        .get(s.addr(), "b.example.com", "b.example.com", "/", &[])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let mut spec = LeafSpec::spiffe("spiffe://unused");
    spec.uris.clear();
    spec.dns = vec!["partner.example.org".into()];
    let partner = s.clients.issue(&spec).unwrap();
    let client = Client::plain(Some(&partner), &s.public.cert_pem);
    let r = client
        .get(
            s.addr(),
            "b.example.com",
            "b.example.com",
            "/",
            &[("x-mesh-origin", "local")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let xfcc = r.echoed("x-forwarded-client-cert").unwrap();
    let hash = meshgate_proxy::identity::sha256_hex(&partner.leaf_der);
    assert_eq!(
        xfcc,
        format!("Hash={hash};Subject=\"\";DNS=partner.example.org")
    );
    assert!(r.json()["headers"].get("x-mesh-origin").is_none());
    // A mesh workload's certificate is not of the partner CA.
    let mesh = s.pki.workload("example.com", CALLER);
    let wrong = Client::plain(Some(&mesh), &s.public.cert_pem)
        .get(s.addr(), "b.example.com", "b.example.com", "/", &[])
        .await;
    assert!(wrong.is_err(), "{wrong:?}");
    assert!(s.proxy.rejected("no_client_certificate") >= 1);
    assert!(s.proxy.rejected("unknown_issuer") >= 1);

    // ISTIO_MUTUAL on the same port: the mesh identity and its tags.
    let istio = Client::plain(Some(&mesh), &s.pki.root.cert_pem);
    let r = istio
        .get(
            s.addr(),
            "outbound_.443_._.httpbin.example-target.com",
            "httpbin.example-target.com",
            "/",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echoed("x-mesh-origin").as_deref(), Some("remote"));

    // An SNI no server has.
    let r = s
        .anonymous()
        .get(s.addr(), "c.example.org", "c.example.org", "/", &[])
        .await;
    assert!(r.is_err());
    assert_eq!(s.proxy.rejected("sni_mismatch"), 1);
}

#[tokio::test]
async fn cipher_suites_restrict_tls12_as_envoy_does() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let s = Setup::new("ECDHE-ECDSA-AES128-GCM-SHA256").await;
    let listed = Client::tls12(
        None,
        &s.public.cert_pem,
        &[cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
    );
    let r = listed
        .get(s.addr(), "a.example.com", "a.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let other = Client::tls12(
        None,
        &s.public.cert_pem,
        &[cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
    );
    let refused = other
        .get(s.addr(), "a.example.com", "a.example.com", "/", &[])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // The ISTIO_MUTUAL server has no list: the same suite is fine there.
    let mesh = s.pki.workload("example.com", CALLER);
    let istio = Client::tls12(
        Some(&mesh),
        &s.pki.root.cert_pem,
        &[cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
    );
    let r = istio
        .get(
            s.addr(),
            "httpbin.example-target.com",
            "httpbin.example-target.com",
            "/",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

/// The server's order decides the suite, as at Envoy's listeners: AES-128-GCM for TLS 1.3
/// whatever the client prefers (rustls clients list AES-256-GCM first), and the Gateway's
/// `cipherSuites` order for TLS 1.2.
#[tokio::test]
async fn the_server_order_chooses_the_cipher_suite() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let s = Setup::new("ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES128-GCM-SHA256").await;
    let addr = s.addr();
    let suite = |client: Client, sni: &'static str| async move {
        let tls = client.connect(addr, sni).await.unwrap();
        tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
    };
    let mesh = s.pki.workload("example.com", CALLER);
    let offered = Client::new(Some(&mesh), &s.pki.root.cert_pem, &[b"http/1.1"]);
    assert_eq!(
        suite(offered, "httpbin.example-target.com").await,
        cs::TLS13_AES_128_GCM_SHA256.suite()
    );
    let tls12 = Client::tls12(
        None,
        &s.public.cert_pem,
        &[
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ],
    );
    assert_eq!(
        suite(tls12, "a.example.com").await,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384.suite()
    );
}

/// Raw HTTP/1.1 over plaintext: the status line and the `location` header.
async fn plain(addr: SocketAddr, host: &str, target: &str) -> (u16, Option<String>) {
    let run = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    };
    let text = tokio::time::timeout(TIMEOUT, run).await.unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .map(str::to_string);
    (status, location)
}

#[tokio::test]
async fn https_redirect_answers_301_to_the_same_url() {
    let s = Setup::new("ECDHE-ECDSA-AES128-GCM-SHA256").await;
    let http = s.proxy.addr(80);
    let (status, location) = plain(http, "a.example.com:8080", "/path?q=1").await;
    assert_eq!(status, 301);
    assert_eq!(
        location.as_deref(),
        Some("https://a.example.com:8080/path?q=1")
    );
    // Envoy drops HTTP's default port.
    let (status, location) = plain(http, "a.example.com:80", "/").await;
    assert_eq!(
        (status, location.as_deref()),
        (301, Some("https://a.example.com/"))
    );
    // A host the server does not have.
    let (status, _) = plain(http, "other.example.com", "/").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn server_certificates_reload_like_identity_files() {
    let s = Setup::new("ECDHE-ECDSA-AES128-GCM-SHA256").await;
    // An open connection keeps working across the rotation.
    let tls = s
        .anonymous()
        .connect(s.addr(), "a.example.com")
        .await
        .unwrap();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let (mut open, _task) = Conn::open(tls, h2).await.unwrap();

    let rotated = server_cert(&s.public, "a.example.com");
    let dir = s.proxy.dir.path();
    std::fs::write(dir.join("tls/a.pem"), &rotated.chain_pem).unwrap();
    std::fs::write(dir.join("tls/a-key.pem"), &rotated.key_pem).unwrap();
    meshgate_proxy::reload::reload(&s.proxy.running, &[s.proxy.config()]).await;
    assert_eq!(
        s.presented(&s.anonymous(), "a.example.com").await,
        rotated.leaf_der
    );
    let (status, _) = open.get("a.example.com", "/").await;
    assert_eq!(status, StatusCode::OK);

    // A key that does not match keeps the serving certificate.
    std::fs::write(dir.join("tls/a-key.pem"), &s.a.key_pem).unwrap();
    meshgate_proxy::reload::reload(&s.proxy.running, &[s.proxy.config()]).await;
    assert_eq!(
        s.presented(&s.anonymous(), "a.example.com").await,
        rotated.leaf_der
    );
    let r: Reply = s
        .anonymous()
        .get(s.addr(), "a.example.com", "a.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

/// Standard base64 with padding, as `verifyCertificateSpki` is written.
fn base64(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(DIGITS[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-256 of the leaf's SubjectPublicKeyInfo.
fn spki_sha256(w: &Workload) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(&w.leaf_der).unwrap();
    let hex = meshgate_proxy::identity::sha256_hex(cert.public_key().raw);
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// A certificate of the partner CA with these DNS SANs.
fn partner_cert(ca: &Authority, dns: &[&str]) -> Workload {
    let mut spec = LeafSpec::spiffe("spiffe://unused");
    spec.uris.clear();
    spec.dns = dns.iter().map(|d| d.to_string()).collect();
    ca.issue(&spec).unwrap()
}

#[tokio::test]
async fn mutual_servers_check_names_and_pins_and_may_make_the_certificate_optional() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let public = Authority::root("public web CA", KeyAlgorithm::EcdsaP256).unwrap();
    let clients = Authority::root("partner client CA", KeyAlgorithm::EcdsaP256).unwrap();
    let server = server_cert(&public, "*.example.com");
    let partner = partner_cert(&clients, &["partner.example.org"]);
    let other = partner_cert(&clients, &["other.example.org"]);
    let wildcard = partner_cert(&clients, &["*.example.org"]);
    let two_labels = partner_cert(&clients, &["*.example.net"]);
    // Envoy's documented form of a certificate hash: upper case, colon-separated.
    let partner_hash = meshgate_proxy::identity::sha256_hex(&partner.leaf_der)
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let other_spki = base64(&spki_sha256(&other));
    let backend = echo();
    let files =
        "serverCertificate: tls/s.pem, privateKey: tls/s-key.pem, caCertificates: tls/clients.pem";
    let yaml = config(backend.address, "ECDHE-ECDSA-AES128-GCM-SHA256").replace(
        "  - port: {number: 80, name: http, protocol: HTTP}",
        &format!(
            r#"  - port: {{number: 443, name: names, protocol: HTTPS}}
    hosts: [names.example.com]
    tls: {{mode: MUTUAL, {files}, subjectAltNames: [partner.example.org, deep.sub.example.net]}}
  - port: {{number: 443, name: pins, protocol: HTTPS}}
    hosts: [pins.example.com]
    tls: {{mode: MUTUAL, {files}, verifyCertificateHash: ["{partner_hash}"], verifyCertificateSpki: ["{other_spki}"]}}
  - port: {{number: 443, name: optional, protocol: HTTPS}}
    hosts: [optional.example.com]
    tls: {{mode: OPTIONAL_MUTUAL, {files}, subjectAltNames: [partner.example.org]}}
  - port: {{number: 443, name: mesh-names, protocol: HTTPS}}
    hosts: ["*.mesh.example-target.com"]
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: ["{CALLER}"]}}
  - port: {{number: 80, name: http, protocol: HTTP}}"#
        ),
    );
    let yaml = yaml.replace(
        r#"hosts: [a.example.com, b.example.com, "*.example-target.com"]"#,
        r#"hosts: [a.example.com, b.example.com, names.example.com, pins.example.com, optional.example.com, "*.example-target.com"]"#,
    );
    // A second and a third Gateway on the port: a partner API behind a MUTUAL server with a
    // name list, and an open SIMPLE server whose wildcard also covers the partner's host.
    let yaml = format!(
        r#"{yaml}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: partners, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: partner, protocol: HTTPS}}
    hosts: [partner.example.net, files.example.net]
    tls: {{mode: MUTUAL, serverCertificate: tls/net.pem, privateKey: tls/net-key.pem, caCertificates: tls/clients.pem, subjectAltNames: [partner.example.org]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: open, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: open, protocol: HTTPS}}
    hosts: ["*.example.net"]
    tls: {{mode: SIMPLE, serverCertificate: tls/net.pem, privateKey: tls/net-key.pem}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner-api, namespace: istio-system}}
spec:
  hosts: [partner.example.net, files.example.net]
  gateways: [partners]
  http: [{{route: [{{destination: {{host: echo.internal, port: {{number: 80}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: open-site, namespace: istio-system}}
spec:
  hosts: ["*.example.net"]
  gateways: [open]
  http: [{{directResponse: {{status: 418, body: {{string: the open site}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: open-notice, namespace: istio-system}}
spec:
  hosts: [partner.example.net]
  gateways: [open]
  http: [{{directResponse: {{status: 451, body: {{string: ask for a partner certificate}}}}}}]
"#
    );
    let net = server_cert(&public, "*.example.net");
    let a = server_cert(&public, "a.example.com");
    let proxy = Proxy::start_with_files(
        &yaml,
        &pki.workload("example-target.com", GATEWAY_ID),
        &[
            config_files(&a, &a, &clients.cert_pem),
            vec![
                ("tls/s.pem", &server.chain_pem),
                ("tls/s-key.pem", &server.key_pem),
                ("tls/net.pem", &net.chain_pem),
                ("tls/net-key.pem", &net.key_pem),
            ],
        ]
        .concat(),
    )
    .await;
    let addr = proxy.addr(443);

    // The partner API is reached through its own server only. A client that the open
    // server's SNI admits without a certificate, asking for the partner's host, gets the open
    // Gateway's answer for it: each server answers with its own Gateway's routes, as each of
    // Envoy's filter chains has its own route configuration: the same host's routes of two
    // Gateways are kept apart, and a host that only the other Gateway names exactly falls to
    // this one's wildcard.
    let anonymous = Client::plain(None, &public.cert_pem);
    for (host, status) in [
        (
            "partner.example.net",
            StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
        ),
        ("files.example.net", StatusCode::IM_A_TEAPOT),
        ("api.example.net", StatusCode::IM_A_TEAPOT),
    ] {
        let r = anonymous
            .get(addr, "www.example.net", host, "/", &[])
            .await
            .unwrap();
        assert_eq!(r.status, status, "{host}");
    }
    let r = Client::plain(Some(&partner), &public.cert_pem)
        .get(addr, "partner.example.net", "partner.example.net", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(Client::plain(Some(&other), &public.cert_pem)
        .get(addr, "partner.example.net", "partner.example.net", "/", &[])
        .await
        .is_err());
    let san_refusals = 1;
    let get = |cert: &Workload, host: &'static str| {
        let client = Client::plain(Some(cert), &public.cert_pem);
        async move { client.get(addr, host, host, "/", &[]).await }
    };

    // subjectAltNames: a listed DNS name, or a `*.` SAN one label above it, as Envoy matches
    // them; a wildcard does not stand for two labels, and another name is refused.
    assert_eq!(
        get(&partner, "names.example.com").await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(
        get(&wildcard, "names.example.com").await.unwrap().status,
        StatusCode::OK
    );
    assert!(get(&other, "names.example.com").await.is_err());
    assert!(get(&two_labels, "names.example.com").await.is_err());
    assert_eq!(proxy.rejected("san_not_allowed"), san_refusals + 2);

    // Pins: the certificate's hash or its key's, either list accepting it.
    let r = get(&partner, "pins.example.com").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .echoed("x-forwarded-client-cert")
        .unwrap()
        .contains("DNS=partner.example.org"));
    assert_eq!(
        get(&other, "pins.example.com").await.unwrap().status,
        StatusCode::OK
    );
    assert!(get(&wildcard, "pins.example.com").await.is_err());
    assert_eq!(proxy.rejected("certificate_not_pinned"), 1);
    // The chain is still verified first: a pinned hash does not admit another CA's leaf.
    let stranger = partner_cert(&public, &["partner.example.org"]);
    assert!(get(&stranger, "names.example.com").await.is_err());
    assert_eq!(proxy.rejected("unknown_issuer"), 1);

    // OPTIONAL_MUTUAL: no certificate is an anonymous client, whose XFCC is not passed on; a
    // certificate sent is verified and checked as on MUTUAL, and described in XFCC.
    let r = anonymous
        .get(
            addr,
            "optional.example.com",
            "optional.example.com",
            "/",
            &[("x-forwarded-client-cert", "Hash=forged")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echoed("x-forwarded-client-cert"), None);
    let r = get(&partner, "optional.example.com").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .echoed("x-forwarded-client-cert")
        .unwrap()
        .contains("DNS=partner.example.org"));
    assert!(get(&other, "optional.example.com").await.is_err());
    assert_eq!(proxy.rejected("san_not_allowed"), san_refusals + 3);
    assert!(get(&stranger, "optional.example.com").await.is_err());
    assert_eq!(proxy.rejected("unknown_issuer"), 2);
    // The same client without a certificate is refused where one is required.
    assert!(anonymous
        .get(addr, "names.example.com", "names.example.com", "/", &[])
        .await
        .is_err());
    assert_eq!(proxy.rejected("no_client_certificate"), 1);

    // ISTIO_MUTUAL: the mesh's chain and trust domains, then the listed SPIFFE IDs.
    let mesh = |id: &str| Client::plain(Some(&pki.workload("example.com", id)), &pki.root.cert_pem);
    let sni = "outbound_.443_._.api.mesh.example-target.com";
    let host = "api.mesh.example-target.com";
    let r = mesh(CALLER).get(addr, sni, host, "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echoed("x-mesh-origin").as_deref(), Some("remote"));
    let refused = mesh("spiffe://example.com/ns/default/sa/other")
        .get(addr, sni, host, "/", &[])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(proxy.rejected("san_not_allowed"), san_refusals + 4);
    // Another ISTIO_MUTUAL server of the listener, without the list, still admits it.
    let r = mesh("spiffe://example.com/ns/default/sa/other")
        .get(
            addr,
            "outbound_.443_._.httpbin.example-target.com",
            "httpbin.example-target.com",
            "/",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

/// `credentialName` reads a Kubernetes Secret where it is mounted, with the keys Istio reads:
/// an Opaque Secret's `cert` and `key` before a TLS Secret's `tls.crt` and `tls.key`, and the CA
/// of a `<name>-cacert` Secret before the Secret's own once it exists (its optional volume is
/// mounted empty until then). A Secret that fails a reload is watched, and fixing it reloads.
#[tokio::test]
async fn credential_name_reads_the_mounted_secret_as_istio_reads_it() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let public = Authority::root("public web CA", KeyAlgorithm::EcdsaP256).unwrap();
    let old_clients = Authority::root("old partner CA", KeyAlgorithm::EcdsaP256).unwrap();
    let new_clients = Authority::root("new partner CA", KeyAlgorithm::EcdsaP256).unwrap();
    let a = server_cert(&public, "a.example.com");
    let b = server_cert(&public, "b.example.com");
    let b_tls_keys = server_cert(&public, "b.example.com");
    let c = server_cert(&public, "c.example.com");
    let old_partner = partner_cert(&old_clients, &["partner.example.org"]);
    let new_partner = partner_cert(&new_clients, &["partner.example.org"]);
    let backend = echo();
    let yaml = config(backend.address, "ECDHE-ECDSA-AES128-GCM-SHA256")
        .replacen(
            "  reload: {pollInterval: 0s}",
            "  reload: {pollInterval: 50ms}\n  credentials: {directory: secrets}",
            1,
        )
        .replace(
            "      serverCertificate: tls/a.pem\n      privateKey: tls/a-key.pem\n",
            "      credentialName: a-credential\n",
        )
        .replace(
            "tls: {mode: MUTUAL, serverCertificate: tls/b.pem, privateKey: tls/b-key.pem, caCertificates: tls/clients.pem}",
            "tls: {mode: MUTUAL, credentialName: b-credential}",
        );
    let proxy = Proxy::start_with_files(
        &yaml,
        &pki.workload("example-target.com", GATEWAY_ID),
        &[
            ("secrets/a-credential/tls.crt", &a.chain_pem),
            ("secrets/a-credential/tls.key", &a.key_pem),
            ("secrets/b-credential/cert", &b.chain_pem),
            ("secrets/b-credential/key", &b.key_pem),
            ("secrets/b-credential/tls.crt", &b_tls_keys.chain_pem),
            ("secrets/b-credential/tls.key", &b_tls_keys.key_pem),
            ("secrets/b-credential/cacert", &old_clients.cert_pem),
            // The kubelet's own entry of an optional volume whose Secret does not exist yet.
            ("secrets/b-credential-cacert/..data/.keep", ""),
            ("secrets/c-credential/tls.crt", &c.chain_pem),
            ("secrets/c-credential/tls.key", &c.key_pem),
        ],
    )
    .await;
    let addr = proxy.addr(443);
    let anonymous = Client::plain(None, &public.cert_pem);
    let presented = |sni: &'static str| {
        let anonymous = anonymous.clone();
        async move {
            let tls = anonymous.connect(addr, sni).await.unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
    };
    assert_eq!(presented("a.example.com").await, a.leaf_der);
    // The Opaque keys win.
    assert_eq!(presented("b.example.com").await, b.leaf_der);
    let status = |client: Client, host: &'static str| async move {
        client
            .get(addr, host, host, "/", &[])
            .await
            .map(|r| r.status)
    };
    let old = || Client::plain(Some(&old_partner), &public.cert_pem);
    let new = || Client::plain(Some(&new_partner), &public.cert_pem);
    assert_eq!(status(old(), "b.example.com").await, Ok(StatusCode::OK));
    assert!(status(new(), "b.example.com").await.is_err());
    assert!(status(anonymous.clone(), "b.example.com").await.is_err());

    let paths = vec![proxy.config()];
    let seen = meshgate_proxy::reload::Fingerprint::config(&paths)
        .with_certificates(&proxy.running.model());
    let (stop_watch, watch_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = meshgate_proxy::reload::run(&proxy.running, &paths, seen, None, async {
        let _ = watch_rx.await;
    });
    let dir = proxy.dir.path().to_path_buf();
    let until = |what: &'static str, client: Client, host: &'static str| async move {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while status(client.clone(), host).await != Ok(StatusCode::OK) {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let scenario = async {
        // `b-credential-cacert` created: the watcher reloads, and its CA alone verifies clients.
        std::fs::write(
            dir.join("secrets/b-credential-cacert/ca.crt"),
            &new_clients.cert_pem,
        )
        .unwrap();
        until("the -cacert Secret was never read", new(), "b.example.com").await;
        assert!(status(old(), "b.example.com").await.is_err());

        // A MUTUAL server whose Secret has no CA yet: that reload fails and the running
        // configuration stays; the CA added to the Secret then reloads.
        let failures = || {
            proxy
                .running
                .metrics
                .render()
                .lines()
                .find(|l| l.starts_with("meshgate_config_reloads_total{result=\"failure\"}"))
                .map(str::to_string)
        };
        let before = failures();
        let edited = std::fs::read_to_string(proxy.config()).unwrap().replace(
            "  - port: {number: 443, name: mtls, protocol: HTTPS}",
            "  - port: {number: 443, name: https-c, protocol: HTTPS}\n    hosts: [c.example.com]\n    tls: {mode: MUTUAL, credentialName: c-credential}\n  - port: {number: 443, name: mtls, protocol: HTTPS}",
        ).replace(
            "hosts: [a.example.com, b.example.com, ",
            "hosts: [a.example.com, b.example.com, c.example.com, e.example.com, ",
        );
        std::fs::write(proxy.config(), edited).unwrap();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while failures() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the edit was never loaded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(presented("a.example.com").await, a.leaf_der);
        std::fs::write(
            dir.join("secrets/c-credential/ca.crt"),
            &old_clients.cert_pem,
        )
        .unwrap();
        until("the fixed Secret was never read", old(), "c.example.com").await;
        let _ = stop_watch.send(());
    };
    tokio::join!(watcher, scenario);
}

/// Two Gateways' ISTIO_MUTUAL servers on one port, with the same settings: a connection sees
/// only the routes of the server its SNI chose, as each is a filter chain of Envoy's with a
/// route configuration of its own; another Gateway's host through it is a 404.
#[tokio::test]
async fn servers_with_the_same_settings_keep_their_routes_apart() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let yaml = config(backend.address, "ECDHE-ECDSA-AES128-GCM-SHA256")
        .replace(
            "    hosts: [\"*.example-target.com\"]\n    tls: {mode: ISTIO_MUTUAL}",
            "    hosts: [a.example-target.com]\n    tls: {mode: ISTIO_MUTUAL}",
        )
        .replace(
            r#"hosts: [a.example.com, b.example.com, "*.example-target.com"]"#,
            "hosts: [a.example.com, b.example.com, a.example-target.com]",
        );
    let yaml = format!(
        r#"{yaml}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: team-b, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: mtls, protocol: HTTPS}}
    hosts: [b.example-target.com]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: team-b, namespace: istio-system}}
spec:
  hosts: [b.example-target.com]
  gateways: [team-b]
  http: [{{directResponse: {{status: 200, body: {{string: team-b}}}}}}]
"#
    );
    let public = Authority::root("public web CA", KeyAlgorithm::EcdsaP256).unwrap();
    let (a, b) = (
        server_cert(&public, "a.example.com"),
        server_cert(&public, "b.example.com"),
    );
    let proxy = Proxy::start_with_files(
        &yaml,
        &pki.workload("example-target.com", GATEWAY_ID),
        &config_files(&a, &b, &public.cert_pem),
    )
    .await;
    let caller = pki.workload("example.com", CALLER);
    let client = Client::plain(Some(&caller), &pki.root.cert_pem);
    let get = |sni: &'static str, host: &'static str| {
        let client = client.clone();
        let addr = proxy.addr(443);
        async move {
            let r = client.get(addr, sni, host, "/", &[]).await.unwrap();
            (r.status, r.body)
        }
    };
    let (status, body) = get("b.example-target.com", "b.example-target.com").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"team-b"[..]));
    let (status, _) = get("a.example-target.com", "a.example-target.com").await;
    assert_eq!(status, StatusCode::OK);
    // Team b's host through team a's server, and the other way round.
    let (status, _) = get("a.example-target.com", "b.example-target.com").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get("b.example-target.com", "a.example-target.com").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A certificate and its RSA twin (`tlsCertificates`, `credentialNames`): a client gets the
/// ECDSA one when it can take it, the RSA one when only RSA fits its signature schemes or its
/// TLS 1.2 cipher suites, as Envoy chooses; clients are verified with the one CA bundle.
#[tokio::test]
async fn twin_certificates_go_to_the_clients_that_can_take_them() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let public = Authority::root("public web CA", KeyAlgorithm::EcdsaP256).unwrap();
    let clients = Authority::root("partner client CA", KeyAlgorithm::EcdsaP256).unwrap();
    let rsa = |dns: &str| {
        let mut spec = LeafSpec::spiffe("spiffe://unused");
        spec.uris.clear();
        spec.dns = vec![dns.to_string()];
        spec.key = KeyAlgorithm::Rsa2048;
        public.issue(&spec).unwrap()
    };
    let (b, b_rsa) = (server_cert(&public, "b.example.com"), rsa("b.example.com"));
    let (c, c_rsa) = (server_cert(&public, "c.example.com"), rsa("c.example.com"));
    let (e, e_rsa) = (server_cert(&public, "e.example.com"), rsa("e.example.com"));
    let partner = partner_cert(&clients, &["partner.example.org"]);
    let backend = echo();
    let yaml = config(backend.address, "ECDHE-ECDSA-AES128-GCM-SHA256")
        .replacen(
            "  reload: {pollInterval: 0s}",
            "  reload: {pollInterval: 0s}\n  credentials: {directory: secrets}",
            1,
        )
        .replace(
            "tls: {mode: MUTUAL, serverCertificate: tls/b.pem, privateKey: tls/b-key.pem, caCertificates: tls/clients.pem}",
            "tls: {mode: MUTUAL, caCertificates: tls/clients.pem, tlsCertificates: [{serverCertificate: tls/b.pem, privateKey: tls/b-key.pem}, {serverCertificate: tls/b-rsa.pem, privateKey: tls/b-rsa-key.pem}]}\n  - port: {number: 443, name: https-c, protocol: HTTPS}\n    hosts: [c.example.com]\n    tls: {mode: SIMPLE, credentialNames: [c-rsa, c-ecdsa]}\n  - port: {number: 443, name: https-e, protocol: HTTPS}\n    hosts: [e.example.com]\n    tls: {mode: SIMPLE, maxProtocolVersion: TLSV1_2, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256], tlsCertificates: [{serverCertificate: tls/e.pem, privateKey: tls/e-key.pem}, {serverCertificate: tls/e-rsa.pem, privateKey: tls/e-rsa-key.pem}]}",
        )
        .replace(
            "hosts: [a.example.com, b.example.com, ",
            "hosts: [a.example.com, b.example.com, c.example.com, ",
        );
    let a = server_cert(&public, "a.example.com");
    let proxy = Proxy::start_with_files(
        &yaml,
        &pki.workload("example-target.com", GATEWAY_ID),
        &[
            config_files(&a, &b, &clients.cert_pem),
            vec![
                ("tls/b-rsa.pem", &b_rsa.chain_pem),
                ("tls/b-rsa-key.pem", &b_rsa.key_pem),
                ("tls/e.pem", &e.chain_pem),
                ("tls/e-key.pem", &e.key_pem),
                ("tls/e-rsa.pem", &e_rsa.chain_pem),
                ("tls/e-rsa-key.pem", &e_rsa.key_pem),
                ("secrets/c-rsa/cert", &c_rsa.chain_pem),
                ("secrets/c-rsa/key", &c_rsa.key_pem),
                ("secrets/c-ecdsa/tls.crt", &c.chain_pem),
                ("secrets/c-ecdsa/tls.key", &c.key_pem),
            ],
        ]
        .concat(),
    )
    .await;
    let addr = proxy.addr(443);
    let presented = |client: Client, sni: &'static str| async move {
        let tls = client.connect(addr, sni).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    // TLS 1.3, every scheme: ECDSA, whichever is listed first.
    let any = Client::plain(Some(&partner), &public.cert_pem);
    assert_eq!(presented(any.clone(), "b.example.com").await, b.leaf_der);
    assert_eq!(presented(any.clone(), "c.example.com").await, c.leaf_der);
    // TLS 1.2 with RSA suites only: the RSA twin; with ECDSA suites only, the first.
    let rsa_suites = Client::tls12(
        Some(&partner),
        &public.cert_pem,
        &[cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
    );
    assert_eq!(
        presented(rsa_suites.clone(), "b.example.com").await,
        b_rsa.leaf_der
    );
    assert_eq!(presented(rsa_suites, "c.example.com").await, c_rsa.leaf_der);
    let ecdsa_suites = Client::tls12(
        Some(&partner),
        &public.cert_pem,
        &[cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
    );
    assert_eq!(
        presented(ecdsa_suites.clone(), "b.example.com").await,
        b.leaf_der
    );
    assert_eq!(presented(ecdsa_suites, "c.example.com").await, c.leaf_der);
    // A server of TLS 1.2 and RSA suites only: the RSA twin, whatever the client offers.
    assert_eq!(
        presented(any.clone(), "e.example.com").await,
        e_rsa.leaf_der
    );
    // The client certificate is verified whichever certificate was presented.
    let r = any
        .get(addr, "b.example.com", "b.example.com", "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(Client::plain(None, &public.cert_pem)
        .get(addr, "b.example.com", "b.example.com", "/", &[])
        .await
        .is_err());

    // openssl offering RSA signature schemes only, over TLS 1.3: the RSA twin.
    let peer_signature = move |sigalgs: Option<&'static str>| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "c.example.com",
        ]);
        if let Some(s) = sigalgs {
            cmd.args(["-sigalgs", s]);
        }
        let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("Peer signature type: "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no peer signature in:\n{text}"))
    };
    let (default, rsa_only) = tokio::task::spawn_blocking(move || {
        (
            peer_signature(None),
            peer_signature(Some("RSA-PSS+SHA256:RSA+SHA256")),
        )
    })
    .await
    .unwrap();
    assert_eq!(default, "ECDSA");
    assert_eq!(rsa_only, "RSA-PSS");
}

/// A server's second certificate must be the twin of the other key type: two of one type are
/// refused at load, naming the second file.
#[tokio::test]
async fn twin_certificates_of_one_key_type_are_refused() {
    let pki = Pki::new(&["example-target.com"]);
    let public = Authority::root("public web CA", KeyAlgorithm::EcdsaP256).unwrap();
    let (one, two) = (
        server_cert(&public, "b.example.com"),
        server_cert(&public, "b.example.com"),
    );
    let dir = support::TempDir::new("twins");
    for (name, text) in [
        ("one.pem", &one.chain_pem),
        ("one-key.pem", &one.key_pem),
        ("two.pem", &two.chain_pem),
        ("two-key.pem", &two.key_pem),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    pki.workload("example-target.com", GATEWAY_ID)
        .write(&dir.path().join("certs"))
        .unwrap();
    let yaml = config(echo().address, "ECDHE-ECDSA-AES128-GCM-SHA256")
        .replace(
            "tls: {mode: MUTUAL, serverCertificate: tls/b.pem, privateKey: tls/b-key.pem, caCertificates: tls/clients.pem}",
            "tls: {mode: SIMPLE, tlsCertificates: [{serverCertificate: one.pem, privateKey: one-key.pem}, {serverCertificate: two.pem, privateKey: two-key.pem}]}",
        )
        .replace("      serverCertificate: tls/a.pem\n      privateKey: tls/a-key.pem\n", "      serverCertificate: one.pem\n      privateKey: one-key.pem\n");
    std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
    let model = meshgate_config::load(&[dir.path().join("config.yaml")]).unwrap();
    let e = match meshgate_proxy::start(model).await {
        Ok(_) => panic!("two ECDSA certificates were taken as twins"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("two.pem") && e.contains("has a ECDSA key"),
        "{e}"
    );
}
