//! Reload: a new configuration (and the identity files read again) swapped in for new
//! connections, with none dropped; a reload that cannot be built changes nothing.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use meshgate_proxy::reload::Fingerprint;
use support::client::Client;
use support::pki::Pki;
use support::proxy::gateway_yaml;

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";

/// A gateway answering `body` directly; with `plain`, also a plaintext listener on port 8080.
fn config(body: &str, plain: bool) -> String {
    let extra_server = if plain {
        "  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*.example-target.com\"]\n"
    } else {
        ""
    };
    let vs = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: default}}\nspec:\n  hosts: [\"{HOST}\"]\n  gateways: [istio-system/multi-mesh-gateway]\n  http: [{{directResponse: {{status: 200, body: {{string: {body}}}}}}}]\n"
    );
    gateway_yaml(&vs)
        .replace(
            "    tls: {mode: ISTIO_MUTUAL}\n",
            &format!("    tls: {{mode: ISTIO_MUTUAL}}\n{extra_server}"),
        )
        .replace(
            "portOverrides: {443: 0}",
            "portOverrides: {443: 0, 8080: 0}",
        )
}

fn serial_of(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    cert.raw_serial_as_string()
}

#[tokio::test]
async fn reload_swaps_config_and_identity_for_new_connections_without_dropping_any() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let proxy = support::proxy::Proxy::start(
        &config("v1", false),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let body = |r: &support::client::Reply| String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(
        body(&client.get(addr, HOST, HOST, "/", &[]).await.unwrap()),
        "v1"
    );

    // A keep-alive connection opened before the reload.
    let tls = client.connect(addr, HOST).await.unwrap();
    let old_serial = serial_of(&tls);
    let (mut kept, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Requests on new connections, one after another, across the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, saw_v2) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = {
        let (client, stop, ok, failed, saw_v2) = (
            client.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            saw_v2.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(addr, HOST, HOST, "/", &[]).await {
                    Ok(r) if r.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if &r.body[..] == b"v2" {
                            saw_v2.store(true, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    support::eventually("requests before the reload", || {
        ok.load(Ordering::Relaxed) >= 20
    })
    .await;

    // New identity files (a new leaf: rotation) and a new configuration with a new listener.
    pki.workload("example-target.com", GATEWAY_ID)
        .write(&proxy.dir.path().join("certs"))
        .unwrap();
    let config_file = proxy.dir.path().join("config.yaml");
    std::fs::write(&config_file, config("v2", true)).unwrap();
    let model = meshgate_config::load(std::slice::from_ref(&config_file)).unwrap();
    proxy.running.reload(model).await.unwrap();
    support::eventually("v2 on new connections", || saw_v2.load(Ordering::Relaxed)).await;
    let after = ok.load(Ordering::Relaxed);
    support::eventually("requests after the reload", || {
        ok.load(Ordering::Relaxed) >= after + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the reload"
    );

    // The connection from before still runs on the configuration it started with.
    let req = Request::get("/")
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = kept.send_request(req).await.unwrap();
    assert_eq!(
        &response.into_body().collect().await.unwrap().to_bytes()[..],
        b"v1"
    );
    // The listener the reload added serves too (plaintext: no identity, tags only stripped).
    let bound = proxy.running.bound().await;
    let plain = bound
        .iter()
        .find(|l| l.port == 8080)
        .expect("the new listener")
        .address;
    let r = support::client::plain_get(plain, HOST, "/", &[("x-mesh-origin", "local")])
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"v2");
    assert_eq!(bound.len(), 2);
    // New handshakes present the new certificate.
    let tls = client.connect(addr, HOST).await.unwrap();
    assert_ne!(serial_of(&tls), old_serial);

    // A reload whose identity cannot be read changes nothing.
    std::fs::write(proxy.dir.path().join("certs/key.pem"), "not a key").unwrap();
    std::fs::write(&config_file, config("v3", true)).unwrap();
    let model = meshgate_config::load(&[config_file]).unwrap();
    let err = proxy.running.reload(model).await.unwrap_err();
    assert!(err.to_string().contains("key.pem"), "{err}");
    assert_eq!(
        body(&client.get(addr, HOST, HOST, "/", &[]).await.unwrap()),
        "v2"
    );
    // A reload that removes the plaintext server stops accepting on its port.
    pki.workload("example-target.com", GATEWAY_ID)
        .write(&proxy.dir.path().join("certs"))
        .unwrap();
    std::fs::write(proxy.dir.path().join("config.yaml"), config("v4", false)).unwrap();
    let model = meshgate_config::load(&[proxy.dir.path().join("config.yaml")]).unwrap();
    proxy.running.reload(model).await.unwrap();
    assert_eq!(
        body(&client.get(addr, HOST, HOST, "/", &[]).await.unwrap()),
        "v4"
    );
    assert_eq!(proxy.running.bound().await.len(), 1);
    support::eventually("the removed listener to close", || {
        std::net::TcpStream::connect(plain).is_err()
    })
    .await;

    let metrics = proxy.running.metrics.render();
    assert!(
        metrics.contains(r#"meshgate_config_reloads_total{result="success"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meshgate_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn rotating_the_leaf_and_the_bundle_under_load_drops_nothing() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let other_root = Pki::new(&["example.com"]);
    let yaml =
        config("ok", false).replacen("  listen:", "  reload: {pollInterval: 50ms}\n  listen:", 1);
    let proxy =
        support::proxy::Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let addr = proxy.addr(443);
    let paths = vec![proxy.dir.path().join("config.yaml")];
    let (stop_watch, watch_rx) = tokio::sync::oneshot::channel::<()>();
    let running = &proxy.running;
    let seen = Fingerprint::config(&paths).with_certificates(&running.model());
    let watcher = meshgate_proxy::reload::run(running, &paths, seen, None, async {
        let _ = watch_rx.await;
    });
    let scenario = async {
        let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
        let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
        let stranger =
            other_root.workload("example.com", "spiffe://example.com/ns/default/sa/other");
        let stranger = Client::plain(Some(&stranger), &pki.root.cert_pem);
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let load = {
            let (client, stop, ok, failed) =
                (client.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.get(addr, HOST, HOST, "/", &[]).await {
                        Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        };
        let certs = proxy.dir.path().join("certs");
        let current_serial = || async { serial_of(&client.connect(addr, HOST).await.unwrap()) };
        for _ in 0..5 {
            let before = current_serial().await;
            pki.workload("example-target.com", GATEWAY_ID)
                .write(&certs)
                .unwrap();
            let deadline = tokio::time::Instant::now() + support::TIMEOUT;
            while current_serial().await == before {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the new leaf was never presented"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        // Bundle rotation: a second root joins (its callers get in), then leaves again.
        assert!(stranger.get(addr, HOST, HOST, "/", &[]).await.is_err());
        let bundle =
            |pems: &[&str]| std::fs::write(certs.join("root-cert.pem"), pems.concat()).unwrap();
        bundle(&[&pki.root.cert_pem, &other_root.root.cert_pem]);
        let deadline = tokio::time::Instant::now() + support::TIMEOUT;
        while stranger.get(addr, HOST, HOST, "/", &[]).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the added root was never trusted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        bundle(&[&pki.root.cert_pem]);
        let deadline = tokio::time::Instant::now() + support::TIMEOUT;
        while stranger.get(addr, HOST, HOST, "/", &[]).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the removed root was still trusted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap();
        assert!(ok.load(Ordering::Relaxed) > 0);
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "requests failed during the rotations"
        );
        let _ = stop_watch.send(());
    };
    tokio::join!(watcher, scenario);
    let metrics = proxy.running.metrics.render();
    let reloads: u64 = metrics
        .lines()
        .find(|l| l.starts_with(r#"meshgate_config_reloads_total{result="success"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(reloads >= 7, "{metrics}");
}

/// Lays out `w` as a Kubernetes Secret volume does: `..<version>/` holding the files,
/// `..data -> ..<version>`, and each file a link through `..data`. A new version is swapped in
/// by renaming a new `..data` link over the old one, atomically.
fn secret_volume(dir: &std::path::Path, version: u32, w: &meshgate_pki::Workload) {
    let versioned = dir.join(format!("..v{version}"));
    w.write(&versioned).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn a_kubernetes_secret_volume_swap_rotates_the_identity() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let volume = support::TempDir::new("secret");
    secret_volume(
        volume.path(),
        1,
        &pki.workload("example-target.com", GATEWAY_ID),
    );
    let yaml = config("ok", false)
        .replacen("  listen:", "  reload: {pollInterval: 50ms}\n  listen:", 1)
        .replace("certs/", &format!("{}/", volume.path().display()));
    let proxy =
        support::proxy::Proxy::start(&yaml, &pki.workload("example-target.com", GATEWAY_ID)).await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let before = serial_of(&client.connect(addr, HOST).await.unwrap());
    let paths = vec![proxy.dir.path().join("config.yaml")];
    // What the proxy was loaded from; the volume is then swapped before the watcher starts, as
    // it can be between the initial load and the watcher's first poll.
    let seen = Fingerprint::config(&paths).with_certificates(&proxy.running.model());
    secret_volume(
        volume.path(),
        2,
        &pki.workload("example-target.com", GATEWAY_ID),
    );
    let (stop_watch, watch_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = meshgate_proxy::reload::run(&proxy.running, &paths, seen, None, async {
        let _ = watch_rx.await;
    });
    let scenario = async {
        let deadline = tokio::time::Instant::now() + support::TIMEOUT;
        while serial_of(&client.connect(addr, HOST).await.unwrap()) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the swapped identity was never presented"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = stop_watch.send(());
    };
    tokio::join!(watcher, scenario);
}

/// A gateway answering `body`, and a FIFO `name` beside its configuration, which a load
/// reading it waits on until something writes it.
async fn with_fifo(body: &str, name: &str) -> (Pki, support::proxy::Proxy, std::path::PathBuf) {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let proxy = support::proxy::Proxy::start(
        &config(body, false),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await;
    let fifo = proxy.dir.path().join(name);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    (pki, proxy, fifo)
}

/// A file that changes while a reload reads the configuration is read again: the reload's
/// fingerprint is of the files before it read them, so the watcher's next poll differs from it.
/// A FIFO among the configuration paths holds the load open, after it has read `config.yaml`
/// and before it ends, while `config.yaml` changes.
#[tokio::test]
async fn a_file_changed_while_a_reload_reads_it_is_read_again() {
    let (pki, proxy, fifo) = with_fifo("v1", "z-held.yaml").await;
    let config_file = proxy.dir.path().join("config.yaml");
    let paths = vec![config_file.clone(), fifo.clone()];
    std::fs::write(&config_file, config("v2", false)).unwrap();
    let writer = {
        let config_file = config_file.clone();
        std::thread::spawn(move || {
            // Opening a FIFO to write waits for its reader: the load, past `config.yaml`.
            let mut held = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            std::fs::write(&config_file, config("v3", false)).unwrap();
            std::io::Write::write_all(&mut held, b"# nothing more\n").unwrap();
        })
    };
    let seen = meshgate_proxy::reload::reload(&proxy.running, &paths)
        .await
        .unwrap();
    writer.join().unwrap();
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let addr = proxy.addr(443);
    let served = client.get(addr, HOST, HOST, "/", &[]).await.unwrap();
    assert_eq!(
        served.body,
        "v2".as_bytes(),
        "the reload loaded what it read"
    );
    assert_ne!(
        seen,
        seen.again(&paths),
        "a file changed during the load counts as changed, to be read again"
    );
}

#[tokio::test]
async fn a_broken_or_expired_new_identity_keeps_the_old_one_serving() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let proxy = support::proxy::Proxy::start(
        &config("ok", false),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await;
    let addr = proxy.addr(443);
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let serial = serial_of(&client.connect(addr, HOST).await.unwrap());
    let certs = proxy.dir.path().join("certs");
    let config_file = proxy.dir.path().join("config.yaml");

    let mut expired = meshgate_pki::LeafSpec::spiffe(GATEWAY_ID);
    expired.not_before = meshgate_pki::OffsetDateTime::now_utc() - meshgate_pki::Duration::days(2);
    expired.not_after = meshgate_pki::OffsetDateTime::now_utc() - meshgate_pki::Duration::days(1);
    // An expired leaf, then a chain file that does not parse.
    for (i, expect) in ["expired", "cert-chain.pem"].into_iter().enumerate() {
        if i == 0 {
            pki.leaf("example-target.com", &expired)
                .write(&certs)
                .unwrap();
        } else {
            let garbage = "-----BEGIN CERTIFICATE-----\nnot base64\n";
            std::fs::write(certs.join("cert-chain.pem"), garbage).unwrap();
        }
        let model = meshgate_config::load(std::slice::from_ref(&config_file)).unwrap();
        let err = proxy.running.reload(model).await.unwrap_err().to_string();
        assert!(
            err.contains("cert-chain.pem") && err.contains(expect),
            "{err}"
        );
        // The identity in use still serves, to new connections too.
        let tls = client.connect(addr, HOST).await.unwrap();
        assert_eq!(serial_of(&tls), serial);
        let r = client.get(addr, HOST, HOST, "/", &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let metrics = proxy.running.metrics.render();
        let failures = format!(
            "meshgate_config_reloads_total{{result=\"failure\"}} {}",
            i + 1
        );
        assert!(metrics.contains(&failures), "{metrics}");
    }
}

/// A reload reads its files and builds off the async workers: on a one-worker runtime (as
/// `--concurrency 1` runs), a reload whose read blocks — here on a FIFO nobody writes yet —
/// does not stall the requests being served meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_reload_does_not_stall_requests_on_a_one_worker_runtime() {
    let (pki, proxy, fifo) = with_fifo("served", "slow.yaml").await;
    // The writer: releases the reload once the request is answered (or after 5 s, so that a
    // reload that blocks the worker fails this test instead of hanging it).
    let written = Arc::new(AtomicBool::new(false));
    let (answered, wait) = std::sync::mpsc::channel::<()>();
    let writer = {
        let (fifo, written) = (fifo.clone(), written.clone());
        std::thread::spawn(move || {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(5));
            written.store(true, Ordering::SeqCst);
            std::fs::write(&fifo, "# nothing more\n").unwrap();
        })
    };
    let caller = pki.workload("example.com", "spiffe://example.com/ns/default/sa/sleep");
    let client = Client::new(Some(&caller), &pki.root.cert_pem, &[b"http/1.1"]);
    let paths = [proxy.dir.path().join("config.yaml"), fifo];
    let addr = proxy.addr(443);
    let request = async {
        // Let the reload start and block first.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let reply = client.get(addr, HOST, HOST, "/", &[]).await;
        let before_release = !written.load(Ordering::SeqCst);
        let _ = answered.send(());
        (reply, before_release)
    };
    let ((reply, before_release), _) = tokio::join!(
        request,
        meshgate_proxy::reload::reload(&proxy.running, &paths)
    );
    writer.join().unwrap();
    assert_eq!(reply.unwrap().status, StatusCode::OK);
    assert!(
        before_release,
        "the request waited for the reload's blocked read"
    );
    assert!(proxy
        .running
        .metrics
        .render()
        .contains("meshgate_config_reloads_total{result=\"success\"} 1"));
}
