//! `meshgate demo`: the two-mesh scenario on one machine, end to end.
//!
//! In a temporary directory: a shared root, one CA per mesh (`example-target.com`, the target;
//! `example.com`, the source), the target's gateway and the source's proxy started from the
//! YAML in `examples/` (only addresses changed), an east-west gateway in front of the target,
//! and an echo backend. Then five callers, and a table of what the backend saw. Exits non-zero
//! if any outcome is not the expected one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use meshgate_config::spiffe::TrustDomain;
use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec, Workload};
use meshgate_proxy::echo::Echo;
use meshgate_proxy::tls::verify::SpiffeServerVerifier;

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const SOURCE_ID: &str = "spiffe://example.com/ns/default/sa/sleep";

/// The example files, compiled in so the demo runs wherever the binary is.
const TARGET: [(&str, &str); 5] = [
    (
        "istio.yaml",
        include_str!("../examples/target-mesh/istio.yaml"),
    ),
    (
        "gateway.yaml",
        include_str!("../examples/target-mesh/gateway.yaml"),
    ),
    (
        "virtual-service.yaml",
        include_str!("../examples/target-mesh/virtual-service.yaml"),
    ),
    (
        "service-entry.yaml",
        include_str!("../examples/target-mesh/service-entry.yaml"),
    ),
    (
        "meshgateway.yaml",
        include_str!("../examples/target-mesh/meshgateway.yaml"),
    ),
];
const SOURCE: [(&str, &str); 4] = [
    (
        "istio.yaml",
        include_str!("../examples/source-mesh/istio.yaml"),
    ),
    (
        "service-entry.yaml",
        include_str!("../examples/source-mesh/service-entry.yaml"),
    ),
    (
        "destination-rule.yaml",
        include_str!("../examples/source-mesh/destination-rule.yaml"),
    ),
    (
        "meshgateway.yaml",
        include_str!("../examples/source-mesh/meshgateway.yaml"),
    ),
];

const EAST_WEST: [(&str, &str); 3] = [
    (
        "gateway.yaml",
        include_str!("../examples/east-west/gateway.yaml"),
    ),
    (
        "service-entry.yaml",
        include_str!("../examples/east-west/service-entry.yaml"),
    ),
    (
        "meshgateway.yaml",
        include_str!("../examples/east-west/meshgateway.yaml"),
    ),
];

/// One caller and what it should see.
struct Case {
    caller: &'static str,
    path: &'static str,
    expect_status: Option<u16>,
    expect_origin: Option<&'static str>,
    expect_principal: Option<&'static str>,
}

/// What a caller saw.
struct Outcome {
    status: String,
    origin: String,
    principal: String,
}

pub async fn run(keep_running: bool) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("meshgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = demo(&dir, keep_running).await;
    // Kept while the demo runs (`--keep-running` until Ctrl-C or SIGTERM), never after.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn demo(dir: &Path, keep_running: bool) -> anyhow::Result<bool> {
    let p = |s: &str| dir.join(s);
    // The PKI, as `meshgate pki` writes it.
    let root = Authority::root("meshgate demo shared root", KeyAlgorithm::EcdsaP256)?;
    root.write_root(&p("pki/root"))?;
    let target_ca = root.intermediate(
        &TrustDomain::new("example-target.com")?,
        KeyAlgorithm::EcdsaP256,
    )?;
    let source_ca =
        root.intermediate(&TrustDomain::new("example.com")?, KeyAlgorithm::EcdsaP256)?;
    target_ca.write_cacerts(&p("pki/example-target.com"))?;
    source_ca.write_cacerts(&p("pki/example.com"))?;
    let mut gateway_leaf = LeafSpec::spiffe(GATEWAY_ID);
    gateway_leaf.dns = vec!["*.example-target.com".into()];
    target_ca.issue(&gateway_leaf)?.write(&p("target/certs"))?;
    let sleep = source_ca.issue(&LeafSpec::spiffe(SOURCE_ID))?;
    sleep.write(&p("source/certs"))?;
    target_ca
        .issue(&LeafSpec::spiffe(
            "spiffe://example-target.com/ns/istio-system/sa/eastwest-gateway",
        ))?
        .write(&p("east-west/certs"))?;
    let curl = target_ca.issue(&LeafSpec::spiffe(
        "spiffe://example-target.com/ns/default/sa/curl",
    ))?;
    curl.write(&p("callers/target-curl"))?;
    let legacy = target_ca.issue(&LeafSpec::spiffe(
        "spiffe://cluster.local/ns/default/sa/legacy",
    ))?;
    legacy.write(&p("callers/legacy"))?;
    let stranger_root = Authority::root("an unrelated root", KeyAlgorithm::EcdsaP256)?;
    let stranger = stranger_root
        .intermediate(&TrustDomain::new("example.com")?, KeyAlgorithm::EcdsaP256)?
        .issue(&LeafSpec::spiffe(
            "spiffe://example.com/ns/default/sa/intruder",
        ))?;
    stranger.write(&p("callers/untrusted"))?;

    // The backend, the target gateway, then the source proxy pointed at it.
    let echo = Echo::start("127.0.0.1:0".parse()?)?;
    let target_yaml = write_config(&p("target"), &TARGET, |text| {
        text.replace("443: 18443", "443: 0")
            .replace("127.0.0.1:15000", "\"127.0.0.1:0\"")
            .replace(
                "targetPort: 8080",
                &format!("targetPort: {}", echo.address.port()),
            )
    })?;
    let target = start(&target_yaml).await?;
    let gateway = target
        .address(443)
        .context("the target gateway has no port 443")?;
    let source_yaml = write_config(&p("source"), &SOURCE, |text| {
        text.replace("127.0.0.1:15001", "\"127.0.0.1:0\"")
            .replace("127.0.0.1:15010", "\"127.0.0.1:0\"")
            .replace("127.0.0.1:18443", &gateway.to_string())
    })?;
    let source = start(&source_yaml).await?;
    let east_west_yaml = write_config(&p("east-west"), &EAST_WEST, |text| {
        text.replace("15443: 15443", "15443: 0")
            .replace("tls: 18443", &format!("tls: {}", gateway.port()))
    })?;
    let east_west = start(&east_west_yaml).await?;
    let border = east_west
        .address(15443)
        .context("the east-west gateway has no port 15443")?;
    let outbound = source
        .listeners
        .iter()
        .find(|l| l.name == "outbound")
        .map(|l| l.address)
        .context("the source proxy has no outbound listener")?;

    let cases = [
        Case {
            caller: "target-mesh workload",
            path: "mTLS -> gateway",
            expect_status: Some(200),
            expect_origin: Some("local"),
            expect_principal: Some("example-target.com/ns/default/sa/curl"),
        },
        Case {
            caller: "source-mesh app",
            path: "plaintext -> source proxy -> ISTIO_MUTUAL -> gateway",
            expect_status: Some(200),
            expect_origin: Some("remote"),
            expect_principal: Some("example.com/ns/default/sa/sleep"),
        },
        Case {
            caller: "legacy cluster.local workload",
            path: "mTLS -> gateway",
            expect_status: Some(200),
            expect_origin: Some("local"),
            expect_principal: Some("cluster.local/ns/default/sa/legacy"),
        },
        Case {
            caller: "source-mesh workload",
            path: "mTLS -> east-west AUTO_PASSTHROUGH -> gateway",
            expect_status: Some(200),
            expect_origin: Some("remote"),
            expect_principal: Some("example.com/ns/default/sa/sleep"),
        },
        Case {
            caller: "caller from an untrusted root",
            path: "mTLS -> gateway",
            expect_status: None,
            expect_origin: None,
            expect_principal: None,
        },
    ];
    let roots = &target_ca.root_pem;
    let outcomes = [
        mtls_get(gateway, &curl, roots).await,
        plain_get(outbound).await,
        mtls_get(gateway, &legacy, roots).await,
        mtls_get(border, &sleep, roots).await,
        mtls_get(gateway, &stranger, roots).await,
    ];

    let mut all_ok = true;
    println!("meshgate demo: two meshes under one root, on this machine\n");
    println!("  target gateway   https://{HOST} -> {gateway} (trust domain example-target.com)");
    println!(
        "  source proxy     http://{outbound} (trust domain example.com, ISTIO_MUTUAL upstream)"
    );
    println!("  east-west        {border} (AUTO_PASSTHROUGH, terminates nothing)");
    println!("  backend (echo)   {}\n", echo.address);
    let header = [
        "caller",
        "path",
        "status",
        "origin",
        "principal seen by the backend",
        "",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for (case, outcome) in cases.iter().zip(&outcomes) {
        let ok = match (outcome, case.expect_status) {
            (Ok(o), Some(status)) => {
                o.status == status.to_string()
                    && Some(o.origin.as_str()) == case.expect_origin
                    && Some(o.principal.as_str()) == case.expect_principal
            }
            (Err(_), None) => true,
            _ => false,
        };
        all_ok &= ok;
        let (status, origin, principal) = match outcome {
            Ok(o) => (o.status.clone(), o.origin.clone(), o.principal.clone()),
            Err(e) => (format!("refused: {e}"), "-".into(), "-".into()),
        };
        let mark = if ok { "ok" } else { "UNEXPECTED" };
        rows.push(vec![
            case.caller.into(),
            case.path.into(),
            status,
            origin,
            principal,
            mark.into(),
        ]);
    }
    // The client sees the alert before the gateway's task has counted the rejection, which
    // it does after its WARN line: waited for first, so the line comes before the table.
    let mut rejected = 0;
    for _ in 0..100 {
        rejected = target.metrics.handshakes_rejected("unknown_issuer");
        if rejected > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    print_table(&rows);
    println!("\ntarget gateway: meshgate_handshakes_total{{result=\"rejected\",reason=\"unknown_issuer\"}} {rejected}");
    all_ok &= rejected == 1;

    if keep_running {
        let d = dir.display();
        println!("\nStill running; press Ctrl-C to stop. Try:\n");
        println!("  curl -H 'Host: {HOST}' http://{outbound}/get");
        println!(
            "  curl --resolve {HOST}:{port}:127.0.0.1 --cacert {d}/pki/root/root-cert.pem \\\n       --cert {d}/callers/target-curl/cert-chain.pem --key {d}/callers/target-curl/key.pem \\\n       https://{HOST}:{port}/get",
            port = gateway.port()
        );
        // This binary, wherever it is: `meshgate` need not be on PATH.
        let me = std::env::current_exe()
            .map_or_else(|_| "meshgate".to_string(), |p| p.display().to_string());
        println!("  {me} pki inspect {d}/source/certs/cert-chain.pem -c {d}/target");
        println!("  configs: {d}/target, {d}/source and {d}/east-west");
        println!("  (the directory is removed on exit)");
        stopped().await;
    }
    east_west.shutdown(Duration::from_secs(1)).await;
    source.shutdown(Duration::from_secs(1)).await;
    target.shutdown(Duration::from_secs(1)).await;
    drop(echo);
    Ok(all_ok)
}

fn write_config(
    dir: &Path,
    files: &[(&str, &str)],
    edit: impl Fn(&str) -> String,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in files {
        std::fs::write(dir.join(name), edit(text))?;
    }
    Ok(dir.to_path_buf())
}

async fn start(dir: &Path) -> anyhow::Result<meshgate_proxy::Running> {
    let model = meshgate_config::load(&[dir.to_path_buf()]).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(meshgate_proxy::start(model).await?)
}

/// A workload calling the gateway directly, verifying the gateway's SPIFFE ID as Istio does.
async fn mtls_get(
    gateway: SocketAddr,
    identity: &Workload,
    roots_pem: &str,
) -> Result<Outcome, String> {
    let run = async {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = SpiffeServerVerifier::new(
            &meshgate_proxy::tls::credentials::TrustRoots::single(Arc::new(roots)),
            vec![GATEWAY_ID.into()],
            true,
            &[],
            provider.clone(),
            &meshgate_proxy::tls::credentials::Revocation::default(),
        )
        .map_err(|e| e.to_string())?;
        let chain = CertificateDer::pem_slice_iter(identity.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![
            b"istio-http/1.1".to_vec(),
            b"istio".to_vec(),
            b"http/1.1".to_vec(),
        ];
        let tcp = TcpStream::connect(gateway)
            .await
            .map_err(|e| e.to_string())?;
        let sni =
            ServerName::try_from(format!("outbound_.443_._.{HOST}")).map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(sni, tcp)
            .await
            .map_err(short)?;
        request(TokioIo::new(tls), HOST).await
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// An app of the source mesh calling its proxy in plaintext.
async fn plain_get(outbound: SocketAddr) -> Result<Outcome, String> {
    let run = async {
        let tcp = TcpStream::connect(outbound)
            .await
            .map_err(|e| e.to_string())?;
        request(TokioIo::new(tcp), HOST).await
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn request<I>(io: TokioIo<I>, host: &str) -> Result<Outcome, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // A caller may claim any origin; the gateway decides.
    let req = Request::get("/get")
        .header("host", host)
        .header("x-mesh-origin", "local")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = send.send_request(req).await.map_err(short)?;
    let status = response.status().as_u16().to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let header = |name: &str| json["headers"][name][0].as_str().unwrap_or("-").to_string();
    Ok(Outcome {
        status,
        origin: header("x-mesh-origin"),
        principal: header("x-source-principal"),
    })
}

/// The error, or the TLS alert somewhere in its chain.
fn short(e: impl std::error::Error + 'static) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        // rustls' error travels inside an io::Error, whose source() skips it.
        let io_inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        let tls = c
            .downcast_ref::<rustls::Error>()
            .or_else(|| io_inner.and_then(|i| i.downcast_ref()));
        if let Some(tls) = tls {
            return format!("TLS {tls}");
        }
        cause = c.source();
    }
    e.to_string()
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", cells.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("  {}", rule.join("  "));
        }
    }
}
