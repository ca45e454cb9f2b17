//! The built binary: `check` on good and bad input, the shipped examples, `run` start-up
//! failures, `--concurrency`, and a clean SIGTERM that lets a request in flight finish.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use http::StatusCode;

use support::client::Client;
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to};
use support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

fn meshgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_reports_every_error_with_file_resource_and_field() {
    let dir = TempDir::new("bad-config");
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "a.yaml",
        r#"apiVersion: meshgate.dev/v1alpha1
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
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: SIMPLE, credentialName: foo}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: default}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  http:
  - retries: {attempts: 3, retryOn: sometimes}
    match: [{uri: {prefix: /a, exact: /b}}]
    route: [{destination: {host: x.internal, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: Frobnicator
metadata: {name: f}
spec: {}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {namespace: istio-system}
spec:
  selector: {app: other}
  servres: []
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"], bogus: 1}]
"#,
    );
    write(
        "b.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se\nspec:\n  hosts: [x.internal]\n  ports:\n  - number: eighty\n  resolution: {dns: yes}\n",
    );
    write("notes.txt", "not configuration");
    write("c.yaml", "apiVersion: v1\nkind: [\n");
    let missing = dir.path().join("missing.yaml");
    let out = meshgate(&[
        "check",
        "-c",
        dir.path().to_str().unwrap(),
        "-c",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let text = text(&out);
    let a = dir.path().join("a.yaml").display().to_string();
    let b = dir.path().join("b.yaml").display().to_string();
    let c = dir.path().join("c.yaml").display().to_string();
    let expected = [
        format!("{a}: Gateway istio-system/gw: spec.servers[0].tls.credentialName: names the Kubernetes Secret `foo`: mount it under the directory set as MeshGateway spec.credentials.directory"),
        format!("{a}: VirtualService default/vs: spec.http[0].retries.retryOn: `sometimes` is not a retry condition meshgate implements; use 5xx, gateway-error"),
        format!("{a}: VirtualService default/vs: spec.http[0].match[0].uri: only one of exact, prefix and regex may be set"),
        format!("{a}: Frobnicator default/f: kind: unknown kind `Frobnicator`"),
        // A resource without a name: that, and every other error it has.
        format!("{a}:33:1: Gateway istio-system/<no name>: metadata.name: required"),
        format!("{a}:38:3: Gateway istio-system/<no name>: spec.servres: unknown field `servres`"),
        format!("{a}:39:76: Gateway istio-system/<no name>: spec.servers[0].bogus: unknown field `bogus`"),
        // Every type error of a resource, not only the first.
        format!("{b}:8:13: ServiceEntry default/se: spec.ports[0].number: "),
        format!("{b}:9:15: ServiceEntry default/se: spec.resolution: "),
        format!("{c}:2:7: "),
        format!("{}: cannot read", missing.display()),
    ];
    for line in expected {
        assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    }
    assert!(text.contains("11 error(s)"), "{text}");
    // What was skipped is shown beside the errors.
    assert!(
        text.contains("warning") && text.contains("notes.txt"),
        "{text}"
    );
}

/// Writes a gateway config for `yaml` into a temp dir, with the gateway's identity in certs/.
fn config_dir(pki: &Pki, yaml: &str) -> TempDir {
    let dir = TempDir::new("cli");
    pki.workload("example-target.com", GATEWAY_ID)
        .write(&dir.path().join("certs"))
        .unwrap();
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    dir
}

#[test]
fn check_refuses_identity_files_that_do_not_fit() {
    let pki = Pki::new(&["example-target.com"]);
    let dir = config_dir(&pki, &gateway_yaml(""));
    let certs = dir.path().join("certs");
    let config = dir.path().to_str().unwrap();

    let ok = meshgate(&["check", "-c", config]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains(&format!("identity: {GATEWAY_ID}")),
        "{}",
        text(&ok)
    );
    assert!(
        text(&ok).contains("limits: handshake 10s, request head 30s, idle 3600s, request head size 65536 bytes, 10000 connections per listener, 1024 HTTP/2 streams"),
        "{}",
        text(&ok)
    );

    // A key from another workload.
    let other = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/a/sa/b",
    );
    std::fs::write(certs.join("key.pem"), &other.key_pem).unwrap();
    let out = meshgate(&["check", "-c", config]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("key.pem: does not match the leaf"),
        "{}",
        text(&out)
    );

    // An empty bundle.
    std::fs::write(
        certs.join("key.pem"),
        pki.workload("example-target.com", GATEWAY_ID).key_pem,
    )
    .unwrap();
    let fresh = pki.workload("example-target.com", GATEWAY_ID);
    fresh.write(&certs).unwrap();
    std::fs::write(certs.join("root-cert.pem"), "").unwrap();
    let out = meshgate(&["check", "-c", config]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("root-cert.pem: holds no CERTIFICATE"),
        "{}",
        text(&out)
    );
}

#[test]
fn every_example_passes_check() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let example = entry.unwrap().path();
        if !example.is_dir() {
            continue;
        }
        // Copy the YAML, and give it certificates as the README's pki commands would.
        let dir = TempDir::new("example");
        for file in std::fs::read_dir(&example).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
            }
        }
        pki.workload("example-target.com", GATEWAY_ID)
            .write(&dir.path().join("certs"))
            .unwrap();
        let out = meshgate(&["check", "-c", dir.path().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            example.display(),
            text(&out)
        );
        let summary = text(&out);
        assert!(summary.contains("configuration OK"));
        // Each backend once.
        let backends: Vec<&str> = summary
            .lines()
            .filter(|l| l.starts_with("backend "))
            .collect();
        let mut unique = backends.clone();
        unique.dedup_by_key(|l| l.split(' ').nth(1));
        assert_eq!(backends.len(), unique.len(), "{summary}");
        checked += 1;
    }
    assert!(
        checked >= 1,
        "no example found under {}",
        examples.display()
    );
}

/// A `meshgate run` child, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn run(config: &Path, extra: &[&str]) -> Self {
        let child = Command::new(BIN)
            .args([
                "--log-format",
                "json",
                "run",
                "-c",
                config.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self(child)
    }

    /// Reads the JSON log until the listener and admin addresses are known.
    fn addresses(&mut self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        use std::io::BufRead;
        let stderr = self.0.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let (mut listener, mut admin) = (None, None);
        while listener.is_none() || admin.is_none() {
            let line = lines
                .next()
                .expect("meshgate exited before listening")
                .unwrap();
            let json: serde_json::Value = serde_json::from_str(&line).unwrap();
            let address = json["fields"]["address"]
                .as_str()
                .map(|a| a.parse().unwrap());
            match json["fields"]["message"].as_str() {
                Some("listening") => listener = address,
                Some("admin listening") => admin = address,
                _ => {}
            }
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (listener.unwrap(), admin.unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn gateway_with_admin(extra: &str) -> String {
    gateway_yaml(extra).replacen(
        "  listen: {address: 127.0.0.1",
        "  admin: {address: \"127.0.0.1:0\"}\n  listen: {address: 127.0.0.1",
        1,
    )
}

#[test]
fn run_fails_clearly_when_the_port_is_taken() {
    let pki = Pki::new(&["example-target.com"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = gateway_yaml("").replace(
        "portOverrides: {443: 0}",
        &format!("portOverrides: {{443: {port}}}"),
    );
    let dir = config_dir(&pki, &yaml);
    let out = meshgate(&["run", "-c", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let text = text(&out);
    assert!(
        text.contains(&format!("cannot bind https on 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("Address already in use"), "{text}");
}

#[test]
fn concurrency_sets_the_worker_threads() {
    let pki = Pki::new(&["example-target.com"]);
    // No file polling: its reads would add Tokio's (same-named) blocking thread.
    let yaml =
        gateway_with_admin("").replacen("  listen:", "  reload: {pollInterval: 0s}\n  listen:", 1);
    let dir = config_dir(&pki, &yaml);
    let threads = |pid: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .map(|comm| comm.trim().to_string())
            .collect()
    };
    // One worker: a single event loop on the main thread, nothing else.
    let mut proc = Proc::run(dir.path(), &["--concurrency", "1"]);
    proc.addresses();
    assert_eq!(threads(proc.pid()), ["meshgate"]);
    drop(proc);
    let mut proc = Proc::run(dir.path(), &["--concurrency", "3"]);
    proc.addresses();
    // A thread names itself once it runs: poll rather than read once.
    let workers = || {
        threads(proc.pid())
            .iter()
            .filter(|c| *c == "meshgate-worker")
            .count()
    };
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    while workers() != 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(workers(), 3);
}

#[tokio::test]
async fn sigterm_drains_a_request_in_flight_then_exits_cleanly() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let dir = config_dir(
        &pki,
        &gateway_with_admin(&route_to("httpbin.example-target.com", backend.address)),
    );
    let mut proc = Proc::run(dir.path(), &["--drain-timeout", "5"]);
    let (listener, admin) = proc.addresses();

    let ready = reqwest_ready(admin).await;
    assert_eq!(ready, 200);

    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::plain(Some(&caller), &pki.root.cert_pem);
    let host = "httpbin.example-target.com";
    let in_flight =
        tokio::spawn(async move { client.get(listener, host, host, "/delay/700", &[]).await });
    // Let the request reach the backend, then ask the proxy to stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let status = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Polls GET /ready on the admin port until it answers; returns the last status.
async fn reqwest_ready(admin: std::net::SocketAddr) -> u16 {
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let status = admin_get(admin, "/ready").await;
        if status == 200 || tokio::time::Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The status of a GET on the admin port, with a plain HTTP/1.1 client.
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(support::TIMEOUT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out[9..12].parse().unwrap()
}

/// The README's quickstart, with `meshgate pki` making the certificates and curl as the
/// client; only the fixed ports are swapped for ephemeral ones.
#[test]
fn readme_quickstart_with_curl() {
    let work = TempDir::new("readme");
    let p = |s: &str| work.path().join(s).display().to_string();
    let pki_steps: [&[&str]; 4] = [
        &["pki", "root", "--out", &p("root")],
        &[
            "pki",
            "intermediate",
            "--root",
            &p("root"),
            "--trust-domain",
            "example-target.com",
            "--out",
            &p("target"),
        ],
        &[
            "pki",
            "intermediate",
            "--root",
            &p("root"),
            "--trust-domain",
            "example.com",
            "--out",
            &p("source"),
        ],
        &[
            "pki",
            "workload",
            "--ca",
            &p("source"),
            "--out",
            &p("sleep"),
            "--spiffe-id",
            "spiffe://example.com/ns/default/sa/sleep",
        ],
    ];
    for args in pki_steps {
        let out = meshgate(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let config = work.path().join("config");
    let gateway_cert = [
        "pki",
        "workload",
        "--ca",
        &p("target"),
        "--out",
        &p("config/certs"),
        "--spiffe-id",
        GATEWAY_ID,
        "--dns",
        "*.example-target.com",
    ];
    assert!(meshgate(&gateway_cert).status.success());
    assert_eq!(
        std::fs::metadata(config.join("certs/key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // The echo backend runs on a Tokio runtime of its own; the rest of this test blocks.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let backend = echo();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/target-mesh");
    for file in std::fs::read_dir(&example).unwrap() {
        let file = file.unwrap().path();
        if file.extension().is_some_and(|e| e == "yaml") {
            let yaml = std::fs::read_to_string(&file)
                .unwrap()
                .replace("443: 18443", "443: 0")
                .replace("127.0.0.1:15000", "\"127.0.0.1:0\"")
                .replace(
                    "targetPort: 8080",
                    &format!("targetPort: {}", backend.address.port()),
                );
            std::fs::write(config.join(file.file_name().unwrap()), yaml).unwrap();
        }
    }
    let mut proc = Proc::run(&config, &[]);
    let (listener, _admin) = proc.addresses();
    let port = listener.port();
    let curl = |extra: &[&str]| {
        let resolve = format!("httpbin.example-target.com:{port}:127.0.0.1");
        let url = format!("https://httpbin.example-target.com:{port}/get");
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
                "--cacert",
                &p("root/root-cert.pem"),
            ])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let out = curl(&[
        "--cert",
        &p("sleep/cert-chain.pem"),
        "--key",
        &p("sleep/key.pem"),
        "-H",
        "x-mesh-origin: local",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["headers"]["x-mesh-origin"],
        serde_json::json!(["remote"])
    );
    assert_eq!(
        json["headers"]["x-source-principal"],
        serde_json::json!(["example.com/ns/default/sa/sleep"])
    );

    // Without a client certificate curl gets a TLS alert, not a response.
    let out = curl(&[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn sigint_stops_the_proxy_and_healthz_answers_until_then() {
    let pki = Pki::new(&["example-target.com"]);
    let dir = config_dir(&pki, &gateway_with_admin(""));
    let mut proc = Proc::run(dir.path(), &[]);
    let (_listener, admin) = proc.addresses();
    assert_eq!(reqwest_ready(admin).await, 200);
    assert_eq!(admin_get(admin, "/healthz").await, 200);
    assert_eq!(admin_get(admin, "/nope").await, 404);
    let killed = Command::new("kill")
        .args(["-INT", &proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// `--keep-running`: the table is whole (the refused caller's WARN comes before it, on the
/// same terminal), the printed `pki inspect` command runs as printed, and the demo's directory
/// is gone once it is stopped.
#[test]
fn demo_keeps_its_table_whole_and_its_commands_runnable_and_cleans_up_when_stopped() {
    let dir = TempDir::new("demo-out");
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Proc(
        Command::new(BIN)
            .args(["demo", "--keep-running"])
            .env_remove("MESHGATE_LOG")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap(),
    );
    let read = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !read().contains("Still running") {
        assert!(std::time::Instant::now() < deadline, "{}", read());
        assert!(child.0.try_wait().unwrap().is_none(), "exited: {}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = read();
    let lines: Vec<&str> = output.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("caller"))
        .unwrap();
    let end = lines
        .iter()
        .position(|l| l.starts_with("target gateway:"))
        .unwrap();
    assert!(
        lines[header..end].iter().all(|l| !l.contains("WARN")),
        "a log line inside the table:\n{output}"
    );
    assert!(
        lines[..header]
            .iter()
            .any(|l| l.contains("WARN") && l.contains("handshake rejected")),
        "the refusal's WARN line before the table:\n{output}"
    );

    let inspect = lines.iter().find(|l| l.contains(" pki inspect ")).unwrap();
    let words: Vec<&str> = inspect.split_whitespace().collect();
    assert!(
        Path::new(words[0]).is_absolute(),
        "not runnable off PATH: {inspect}"
    );
    let verdict = Command::new(words[0]).args(&words[1..]).output().unwrap();
    assert!(verdict.status.success(), "{inspect}: {}", text(&verdict));
    assert!(String::from_utf8_lossy(&verdict.stdout).contains("accepted"));

    let configs = lines.iter().find(|l| l.contains("configs: ")).unwrap();
    let demo_dir = configs
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(',')
        .trim_end_matches("/target")
        .to_string();
    assert!(Path::new(&demo_dir).join("target").is_dir(), "{demo_dir}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}: {}", read());
    assert!(!Path::new(&demo_dir).exists(), "{demo_dir} left behind");
}

#[test]
fn demo_runs_two_meshes_end_to_end() {
    let out = meshgate(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    let row = |caller: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(caller))
            .unwrap_or_else(|| panic!("no row for {caller}:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        row("target-mesh workload").ends_with("200 local example-target.com/ns/default/sa/curl ok")
    );
    assert!(row("source-mesh app").ends_with("200 remote example.com/ns/default/sa/sleep ok"));
    assert!(row("legacy cluster.local workload")
        .ends_with("200 local cluster.local/ns/default/sa/legacy ok"));
    // Through the east-west gateway, the target still sees the source workload itself.
    assert!(row("source-mesh workload").ends_with(
        "mTLS -> east-west AUTO_PASSTHROUGH -> gateway 200 remote example.com/ns/default/sa/sleep ok"
    ));
    let untrusted = row("caller from an untrusted root");
    // TLS 1.3: the client may read the server's close before its alert; the gateway's counter
    // below says why either way.
    assert!(untrusted.contains("refused: "), "{untrusted}");
    assert!(untrusted.ends_with(" ok"));
    assert!(stdout.contains(r#"reason="unknown_issuer"} 1"#), "{stdout}");
}

/// Runs `meshgate check` on YAML files written to a temp dir, with the identity paths they name
/// (`identity_dir`) pointing at freshly made certificates instead.
fn check_copy(files: &[(String, String)], identity_dir: &str) -> Output {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let dir = TempDir::new("docker");
    let certs = dir.path().join("certs");
    pki.workload("example-target.com", GATEWAY_ID)
        .write(&certs)
        .unwrap();
    for (name, text) in files {
        let text = text.replace(identity_dir, &format!("{}/", certs.display()));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    meshgate(&["check", "-c", dir.path().to_str().unwrap()])
}

fn yaml_files(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_container_and_kubernetes_config_passes_check() {
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker");
    for (mesh, identity) in [("target", "/pki/target/"), ("source", "/pki/source/")] {
        let files = yaml_files(&docker.join("config").join(mesh));
        assert!(files.len() >= 4, "{mesh}: {files:?}");
        let out = check_copy(&files, identity);
        assert!(out.status.success(), "docker/config/{mesh}: {}", text(&out));
    }
    // The meshgate configuration each Kubernetes overlay turns into its ConfigMap
    // (deploy/kubernetes/validate.sh checks the rendered manifests too, with kubectl).
    let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/overlays");
    let mut checked = Vec::new();
    for overlay in std::fs::read_dir(&overlays).unwrap() {
        let overlay = overlay.unwrap().path();
        let files = yaml_files(&overlay.join("config"));
        let out = check_copy(&files, "/etc/meshgate/identity/");
        assert!(
            out.status.success(),
            "{}: {}",
            overlay.display(),
            text(&out)
        );
        checked.push(overlay.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        ["eastwest-gateway", "egress-sidecar", "ingress-gateway"]
    );
}

/// The body of a GET on the admin port.
async fn admin_text(admin: std::net::SocketAddr, path: &str) -> String {
    support::client::plain_get(admin, "admin", path, &[])
        .await
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_file_keeps_the_running_config() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let vs = |body: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: default}}\nspec:\n  hosts: [\"httpbin.example-target.com\"]\n  gateways: [istio-system/multi-mesh-gateway]\n  http: [{{directResponse: {{status: 200, body: {{string: {body}}}}}}}]\n"
        )
    };
    // Only SIGHUP reloads here: no polling of the files.
    let config = |body: &str| {
        gateway_with_admin(&vs(body)).replacen(
            "  listen:",
            "  reload: {pollInterval: 0s}\n  listen:",
            1,
        )
    };
    let dir = config_dir(&pki, &config("v1"));
    let mut proc = Proc::run(dir.path(), &[]);
    let (listener, admin) = proc.addresses();
    assert_eq!(reqwest_ready(admin).await, 200);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::plain(Some(&caller), &pki.root.cert_pem);
    let host = "httpbin.example-target.com";
    let get = || async {
        client
            .get(listener, host, host, "/", &[])
            .await
            .map(|r| r.body)
    };
    assert_eq!(&get().await.unwrap()[..], b"v1");
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &proc.pid().to_string()])
            .status()
            .unwrap()
    };

    // A field meshgate does not know: the reload fails, v1 keeps serving.
    let file = dir.path().join("gateway.yaml");
    std::fs::write(
        &file,
        config("v2").replace("  http: [", "  bogus: true\n  http: ["),
    )
    .unwrap();
    assert!(hup().success());
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while !admin_text(admin, "/stats/prometheus")
        .await
        .contains(r#"meshgate_config_reloads_total{result="failure"} 1"#)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed reload was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(&get().await.unwrap()[..], b"v1");

    // Fixed: the next SIGHUP swaps it in.
    std::fs::write(&file, config("v2")).unwrap();
    assert!(hup().success());
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while &get().await.unwrap()[..] != b"v2" {
        assert!(tokio::time::Instant::now() < deadline, "v2 never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dump = admin_text(admin, "/config_dump").await;
    assert!(dump.contains("\"version\": 2"), "{dump}");
}

/// A namespace's manifests as `kubectl get -o yaml` and `istioctl install -f` take them: check
/// loads the directory, explains with coded warnings, suppresses by code and resource, and
/// speaks JSON for CI.
#[test]
fn check_explains_a_namespace_directory_with_codes() {
    let pki = Pki::new(&["example.com"]);
    let dir = TempDir::new("namespace");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/namespace");
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    // An identity of another trust domain than the configured example-target.com.
    pki.workload("example.com", "spiffe://example.com/ns/istio-system/sa/gw")
        .write(&dir.path().join("certs"))
        .unwrap();
    let config = dir.path().to_str().unwrap();
    let out = meshgate(&["check", "-c", config]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for want in [
        "warning [MG0001] ",
        "README.md: skipped: not a *.yaml, *.yml or *.json file",
        "[MG0002] ",
        "bookinfo.yaml: Deployment bookinfo/productpage-v1: skipped",
        "bookinfo.yaml: Secret bookinfo/productpage-credential: skipped",
        "bookinfo.yaml: ConfigMap bookinfo/productpage-scripts: skipped",
        "bookinfo.yaml: PeerAuthentication bookinfo/default: skipped",
        "istio-operator.yaml: IstioOperator default/<no name>: installation-only settings skipped",
        "kyma-istio.yaml: Istio kyma-system/default: installation-only settings skipped (nothing for this proxy's traffic): spec.components, spec.config.gatewayExternalTrafficPolicy",
        "[MG0101] ",
        "bookinfo.yaml: VirtualService bookinfo/bookinfo: spec.gateways[0]: Gateway `bookinfo/bookinfo-gateway` is not defined",
        "[MG0104] ",
        "gateway.yaml: Gateway istio-system/bookinfo-gateway: spec.servers[0].hosts[0]: no VirtualService route answers",
        "[MG0105] ",
        "bookinfo.yaml: DestinationRule bookinfo/reviews: spec.host",
        "[MG0108] ",
        "this proxy's identity spiffe://example.com/ns/istio-system/sa/gw is of trust domain `example.com`, but the configured trust domain is `example-target.com`",
        "trusted proxies in front: 1",
        "configuration OK",
    ] {
        assert!(shown.contains(want), "missing `{want}` in:\n{shown}");
    }
    assert!(
        !shown.contains("c2VjcmV0"),
        "a Secret's data was printed:\n{shown}"
    );

    let out = meshgate(&[
        "check",
        "-c",
        config,
        "--suppress",
        "MG0002",
        "--suppress",
        "GatewayNotFound=VirtualService bookinfo/*",
    ]);
    let quiet = text(&out);
    assert!(out.status.success(), "{quiet}");
    assert!(
        !quiet.contains("[MG0002]") && !quiet.contains("[MG0101]"),
        "{quiet}"
    );
    assert!(quiet.contains("[MG0104]"), "{quiet}");
    assert!(quiet.contains("(6 warning(s) suppressed)"), "{quiet}");

    let out = meshgate(&[
        "check",
        "-c",
        config,
        "--output",
        "json",
        "--suppress",
        "MG0001",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["suppressed"], 1);
    let warnings = json["warnings"].as_array().unwrap();
    let gateway = warnings
        .iter()
        .find(|w| w["code"] == "MG0101")
        .expect("MG0101 in JSON");
    assert_eq!(gateway["name"], "GatewayNotFound");
    assert_eq!(gateway["resource"], "VirtualService bookinfo/bookinfo");
    assert_eq!(gateway["field"], "spec.gateways[0]");
    assert!(gateway["file"].as_str().unwrap().ends_with("bookinfo.yaml"));
    assert!(warnings.iter().all(|w| w["code"] != "MG0001"));

    // Errors in JSON carry their position.
    std::fs::write(dir.path().join("broken.yaml"), "apiVersion: v1\nkind: [\n").unwrap();
    let out = meshgate(&["check", "-c", config, "-o", "json"]);
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["errors"][0]["line"], 2);
}

/// Istio's mirroring and circuit-breaking task files, with the httpbin Service: `check` says
/// where each VirtualService's routes go, mirrors included, as `istioctl x describe` would.
#[test]
fn check_prints_where_each_virtual_service_route_goes() {
    let dir = TempDir::new("describe");
    std::fs::write(
        dir.path().join("config.yaml"),
        r#"apiVersion: meshgate.dev/v1alpha1
kind: MeshGateway
metadata: {name: sleep, namespace: default}
spec:
  labels: {app: sleep}
  outbound: {address: "127.0.0.1:15001"}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, labels: {app: httpbin}}
spec:
  ports: [{name: http, port: 8000, targetPort: 8080}]
  selector: {app: httpbin}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
  subsets: [{name: v1}, {name: v2}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - route: [{destination: {host: httpbin, subset: v1}, weight: 100}]
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 50.0}
"#,
    )
    .unwrap();
    let out = meshgate(&["check", "-c", dir.path().to_str().unwrap()]);
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("VirtualService default/httpbin on outbound: http[0] -> httpbin.default.svc.cluster.local:8000 (v1) weight 100 [httpbin.default.svc.cluster.local:8000 (DNS)], mirror httpbin.default.svc.cluster.local:8000 (v2) 50%"),
        "{text}"
    );
}

/// `meshgate echo` with `args` on a free loopback port, and a connection to it.
fn echo_connected(args: &[&str]) -> (Proc, std::net::TcpStream) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let echo = Proc(
        Command::new(BIN)
            .args(["echo", "--listen", &listen])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(&listen) {
            Ok(c) => return (echo, c),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("echo {args:?} never listened: {e}"),
        }
    }
}

#[test]
fn echo_tcp_sends_every_byte_back_until_the_client_closes() {
    use std::io::{Read, Write};
    let (_echo, mut conn) = echo_connected(&["--tcp"]);
    // Not HTTP, and more than one read's worth.
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    conn.write_all(&sent).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), sent.len());
    assert!(back == sent, "the bytes came back changed");
}

#[test]
fn echo_takes_fortios_limits_and_refuses_a_bad_one() {
    use std::io::{Read, Write};
    let out = meshgate(&["echo", "--max-delay", "soon"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"soon\" is not a duration"), "{err}");

    let (_echo, mut conn) = echo_connected(&[
        "--concurrency",
        "1",
        "--max-payload-kb",
        "1",
        "--max-delay",
        "10ms",
    ]);
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // A size over --max-payload-kb is cut to it; an hour's delay to 10 ms; close= closes.
    conn.write_all(b"GET /?size=5000&delay=1h&close=true HTTP/1.1\r\nhost: echo\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 1024\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[test]
fn pki_inspect_with_a_config_says_whether_the_gateway_would_accept_the_certificate() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    // The gateway admits only its own trust domain at the handshake.
    let yaml = gateway_yaml("").replacen(
        "  listen:",
        "  trust: {trustDomains: [example-target.com]}\n  listen:",
        1,
    );
    let dir = config_dir(&pki, &yaml);
    let config = dir.path().join("gateway.yaml");
    let inspect = |name: &str, chain: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, chain).unwrap();
        meshgate(&[
            "pki",
            "inspect",
            file.to_str().unwrap(),
            "-c",
            config.to_str().unwrap(),
        ])
    };
    let local = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/default/sa/app",
    );
    let out = inspect("local.pem", &local.chain_pem);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "accepted by MeshGateway istio-system/target-gateway: spiffe://example-target.com/ns/default/sa/app (Local caller)"
        ),
        "{}",
        text(&out)
    );
    let remote = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let out = inspect("remote.pem", &remote.chain_pem);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refused by MeshGateway istio-system/target-gateway: trust_domain_not_allowed: trust domain `example.com` is not allowed (spec.trust.trustDomains: example-target.com)"),
        "{}",
        text(&out)
    );
    // A chain from a CA outside the bundle.
    let stranger = meshgate_pki::Authority::root("elsewhere", Default::default())
        .unwrap()
        .issue(&meshgate_pki::LeafSpec::spiffe(
            "spiffe://example-target.com/ns/default/sa/app",
        ))
        .unwrap();
    let out = inspect("stranger.pem", &stranger.chain_pem);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(": unknown_issuer: certificate chain does not verify to the trust bundle: the topmost certificate sent is issued by `O=meshgate, CN=elsewhere`"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("which is none of the 1 root(s) of the bundle (SPKI SHA-256 "),
        "{}",
        text(&out)
    );
    // Expired three hours ago: by how long.
    let mut spec = meshgate_pki::LeafSpec::spiffe("spiffe://example-target.com/ns/default/sa/app");
    spec.not_before -= meshgate_pki::Duration::hours(24);
    spec.not_after = meshgate_pki::OffsetDateTime::now_utc() - meshgate_pki::Duration::hours(3);
    let old = pki.leaf("example-target.com", &spec);
    let out = inspect("old.pem", &old.chain_pem);
    assert!(
        text(&out).contains(": expired: certificate expired: 3h ago"),
        "{}",
        text(&out)
    );
}

/// A mesh CA issues only its own trust domain's identities unless told otherwise: one mesh's CA
/// issuing another's is exactly what issuer binding refuses.
#[test]
fn pki_workload_refuses_another_trust_domains_identity_unless_allowed() {
    let work = TempDir::new("foreign");
    let p = |s: &str| work.path().join(s).display().to_string();
    let root = meshgate(&["pki", "root", "--out", &p("root")]);
    assert!(root.status.success(), "{}", text(&root));
    let ca = [
        "pki",
        "intermediate",
        "--root",
        &p("root"),
        "--trust-domain",
        "example.com",
        "--out",
        &p("source"),
    ];
    assert!(meshgate(&ca).status.success());
    let workload = |id: &str, extra: &[&str]| {
        let (ca, out) = (p("source"), p("leaf"));
        let mut args = vec![
            "pki",
            "workload",
            "--ca",
            &ca,
            "--out",
            &out,
            "--spiffe-id",
            id,
        ];
        args.extend(extra);
        meshgate(&args)
    };
    let own = workload("spiffe://example.com/ns/default/sa/sleep", &[]);
    assert!(own.status.success(), "{}", text(&own));
    let foreign = "spiffe://example-target.com/ns/default/sa/sleep";
    std::fs::remove_dir_all(p("leaf")).unwrap();
    let refused = workload(foreign, &[]);
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(
        message.contains("mesh CA of trust domain `example.com`")
            && message.contains("--allow-foreign-trust-domain"),
        "{message}"
    );
    assert!(!work.path().join("leaf/cert-chain.pem").exists());
    let allowed = workload(foreign, &["--allow-foreign-trust-domain"]);
    assert!(allowed.status.success(), "{}", text(&allowed));
    // A root serves every mesh: no trust domain of its own to hold a leaf to.
    let from_root = meshgate(&[
        "pki",
        "workload",
        "--ca",
        &p("root"),
        "--out",
        &p("root-leaf"),
        "--spiffe-id",
        foreign,
    ]);
    assert!(from_root.status.success(), "{}", text(&from_root));
}

/// `meshgate probe`, the container HEALTHCHECK: exit 0 on 200 only.
#[tokio::test]
async fn probe_exits_zero_only_on_a_200() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let yaml = gateway_yaml(&route_to("httpbin.example-target.com", backend.address)).replacen(
        "  listen:",
        "  admin: {address: \"127.0.0.1:0\"}\n  listen:",
        1,
    );
    let proxy =
        support::proxy::Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let admin = proxy.running.admin.unwrap();
    let probe = |path: String| {
        tokio::task::spawn_blocking(move || meshgate(&["probe", &format!("http://{admin}{path}")]))
    };
    let ready = probe("/ready".into()).await.unwrap();
    assert!(ready.status.success(), "{}", text(&ready));
    assert!(String::from_utf8_lossy(&ready.stdout).ends_with(": 200\n"));
    let missing = probe("/nothing-here".into()).await.unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stdout).ends_with(": 404\n"));
    drop(proxy);
    // The admin listener closes when the runtime drops its task; a connection made before
    // that lands in the listener's backlog and is reset instead of refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(admin).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the admin listener stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed = probe("/ready".into()).await.unwrap();
    assert!(!closed.status.success());
    assert!(text(&closed).contains("connect"), "{}", text(&closed));
}
