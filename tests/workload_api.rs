//! The SPIFFE Workload API as the identity's source (`spec.identity.workloadApi`): the gateway
//! takes its X509-SVID, its bundle and the federated bundles from a Workload API server on a
//! Unix socket, as from a SPIRE agent, and follows the stream: a new SVID is presented to new
//! connections while open ones carry on, federated bundles verify their trust domain alone,
//! and an update it cannot use leaves the identity in use serving.

mod support;

use http::StatusCode;

use meshgate_pki::Workload;
use meshgate_proxy::echo::Echo;
use support::client::{Client, Conn};
use support::pki::Pki;
use support::proxy::{echo, gateway_yaml, route_to, Proxy};
use support::workload_api::{ders, Served, ServedSvid, WorkloadApiServer};
use support::{eventually, TempDir};

const HOST: &str = "httpbin.example-target.com";
const GATEWAY_ID: &str = "spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway";
const SLEEP_ID: &str = "spiffe://example.com/ns/default/sa/sleep";

/// The gateway of `gateway_yaml` with its identity from the Workload API at `endpoint`.
fn gateway(endpoint: &str, backend: std::net::SocketAddr) -> String {
    gateway_yaml(&route_to(HOST, backend))
        .replacen(
            "identity: {certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}",
            &format!("identity: {{workloadApi: {{socket: \"{endpoint}\", startTimeout: 5s}}}}"),
            1,
        )
        .replacen("  listen:", "  admin: {address: \"127.0.0.1:0\"}\n  listen:", 1)
}

/// The leaf the gateway presents to a new connection.
async fn presented_leaf(proxy: &Proxy, client: &Client) -> Vec<u8> {
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn status(client: &Client, proxy: &Proxy) -> Option<StatusCode> {
    client
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .ok()
        .map(|r| r.status)
}

/// What the API serves: `svid` as the gateway's SVID, and `federated` bundles.
fn serving(svid: &Workload, federated: &[(&str, &Pki)]) -> Served {
    Served {
        svids: vec![ServedSvid::of(GATEWAY_ID, svid)],
        federated: federated
            .iter()
            .map(|(td, pki)| (td.to_string(), ders(&pki.root.cert_pem)))
            .collect(),
    }
}

/// A gateway whose identity comes from a Workload API server on a socket of its own, serving
/// `served`; `files` is what `certs/` holds (unused until a reload to the files); `edit`
/// changes the YAML.
struct Setup {
    api: WorkloadApiServer,
    proxy: Proxy,
    backend: Echo,
    _dir: TempDir,
}

impl Setup {
    async fn start(served: Served, files: &Workload, edit: impl FnOnce(String) -> String) -> Self {
        let dir = TempDir::new("wapi");
        let api = WorkloadApiServer::start(&dir.path().join("agent.sock"), served);
        let backend = echo();
        let yaml = edit(gateway(&api.endpoint(), backend.address));
        let proxy = Proxy::start(&yaml, files).await;
        Self {
            api,
            proxy,
            backend,
            _dir: dir,
        }
    }

    /// `applied` and `refused` Workload API updates so far.
    fn updates(&self) -> (u64, u64) {
        let m = &self.proxy.running.metrics;
        (
            m.workload_api_updates("applied"),
            m.workload_api_updates("refused"),
        )
    }
}

/// A client of example.com, from `pki`, trusting `pki`'s root.
fn sleep_client(pki: &Pki) -> Client {
    let sleep = pki.workload("example.com", SLEEP_ID);
    Client::new(Some(&sleep), &pki.root.cert_pem, &[b"http/1.1"])
}

#[tokio::test]
async fn the_gateway_serves_istio_mutual_with_the_svid_and_bundle_the_api_streams() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let gateway_svid = pki.workload("example-target.com", GATEWAY_ID);
    // `certs/` holds a different leaf, which must not be what is served.
    let unused = pki.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/x/sa/files",
    );
    let setup = Setup::start(serving(&gateway_svid, &[]), &unused, |y| y).await;
    let (api, proxy) = (&setup.api, &setup.proxy);
    let client = sleep_client(&pki);
    assert_eq!(presented_leaf(proxy, &client).await, gateway_svid.leaf_der);
    let reply = client
        .get(proxy.addr(443), HOST, HOST, "/", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply
            .echoed("x-forwarded-client-cert")
            .unwrap_or_default()
            .split(';')
            .next(),
        Some(format!("By={GATEWAY_ID}").as_str()),
        "XFCC By= is the SVID's SPIFFE ID"
    );

    // `/certs` says where the identity came from.
    let admin = proxy.running.admin.unwrap();
    let certs = support::client::plain_get(admin, "admin", "/certs", &[])
        .await
        .unwrap();
    let certs = certs.json();
    assert_eq!(certs["spiffe_id"], GATEWAY_ID, "{certs}");
    assert_eq!(
        certs["cert_chain"]["workload_api"],
        api.endpoint(),
        "{certs}"
    );
}

#[tokio::test]
async fn a_rotated_svid_goes_to_new_connections_and_open_ones_carry_on() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let first = pki.workload("example-target.com", GATEWAY_ID);
    let setup = Setup::start(serving(&first, &[]), &first, |y| y).await;
    let (api, proxy) = (&setup.api, &setup.proxy);
    let client = sleep_client(&pki);

    // A keep-alive connection opened on the first SVID.
    let tls = client.connect(proxy.addr(443), HOST).await.unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        first.leaf_der
    );
    let (mut open, closed) = Conn::open(tls, false).await.unwrap();
    assert_eq!(open.get(HOST, "/").await.0, StatusCode::OK);

    let second = pki.workload("example-target.com", GATEWAY_ID);
    assert_ne!(second.leaf_der, first.leaf_der);
    api.serve(serving(&second, &[]));
    eventually("the rotation", || setup.updates() == (1, 0)).await;
    assert_eq!(presented_leaf(proxy, &client).await, second.leaf_der);
    assert_eq!(status(&client, proxy).await, Some(StatusCode::OK));
    // The connection opened before the rotation still serves, on its first handshake.
    assert_eq!(open.get(HOST, "/").await.0, StatusCode::OK);
    assert!(!closed.is_finished(), "the open connection was not closed");
}

#[tokio::test]
async fn a_federated_bundle_verifies_its_trust_domain_alone() {
    // The gateway's mesh, and a federated mesh with a root of its own; each root has a CA for
    // both trust domains, so each can mint the other's identities.
    let target = Pki::named("target mesh root", &["example-target.com", "example.com"]);
    let federated = Pki::named("federated mesh root", &["example.com"]);
    let gateway_svid = target.workload("example-target.com", GATEWAY_ID);
    let served = serving(&gateway_svid, &[("example.com", &federated)]);
    let setup = Setup::start(served, &gateway_svid, |y| y).await;
    let (api, proxy) = (&setup.api, &setup.proxy);
    let server_root = &target.root.cert_pem;

    let sleep = federated.workload("example.com", SLEEP_ID);
    let client = Client::new(Some(&sleep), server_root, &[b"http/1.1"]);
    assert_eq!(
        status(&client, proxy).await,
        Some(StatusCode::OK),
        "federated root"
    );
    let local = target.workload(
        "example-target.com",
        "spiffe://example-target.com/ns/default/sa/client",
    );
    let client = Client::new(Some(&local), server_root, &[b"http/1.1"]);
    assert_eq!(
        status(&client, proxy).await,
        Some(StatusCode::OK),
        "own bundle"
    );
    // example.com minted under the gateway's own root chains to its bundle, but example.com
    // has a federated bundle of its own: refused.
    let forged = target.workload("example.com", SLEEP_ID);
    let client = Client::new(Some(&forged), server_root, &[b"http/1.1"]);
    assert_eq!(status(&client, proxy).await, None, "forged example.com");
    assert_eq!(proxy.rejected("unknown_issuer"), 1);

    // The federated bundle goes away: example.com falls back to the gateway's own bundle, as
    // without a bundle of its own, and the federated mesh's callers are refused.
    api.serve(serving(&gateway_svid, &[]));
    eventually("the update", || setup.updates() == (1, 0)).await;
    let client = Client::new(Some(&sleep), server_root, &[b"http/1.1"]);
    assert_eq!(
        status(&client, proxy).await,
        None,
        "federated root withdrawn"
    );
}

#[tokio::test]
async fn an_update_that_cannot_be_used_is_refused_and_the_identity_in_use_stays() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let first = pki.workload("example-target.com", GATEWAY_ID);
    let setup = Setup::start(serving(&first, &[]), &first, |y| y).await;
    let (api, proxy) = (&setup.api, &setup.proxy);
    let client = sleep_client(&pki);

    // A new leaf with another workload's key: the SVID is well formed, the pair is not.
    let other = pki.workload("example-target.com", GATEWAY_ID);
    let mut broken = ServedSvid::of(GATEWAY_ID, &other);
    broken.key = ServedSvid::of(GATEWAY_ID, &first).key;
    api.serve(Served {
        svids: vec![broken],
        federated: vec![],
    });
    eventually("the refusal", || setup.updates() == (0, 1)).await;
    assert_eq!(presented_leaf(proxy, &client).await, first.leaf_der);
    assert_eq!(status(&client, proxy).await, Some(StatusCode::OK));
    let metrics = support::client::plain_get(
        proxy.running.admin.unwrap(),
        "admin",
        "/stats/prometheus",
        &[],
    )
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("meshgate_workload_api_updates_total{result=\"refused\"} 1"),
        "counted"
    );
}

#[tokio::test]
async fn the_svid_of_the_configured_spiffe_id_is_chosen_among_several() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let other_id = "spiffe://example-target.com/ns/istio-system/sa/other";
    let other = pki.workload("example-target.com", other_id);
    let gateway_svid = pki.workload("example-target.com", GATEWAY_ID);
    let mut served = serving(&gateway_svid, &[]);
    served.svids.insert(0, ServedSvid::of(other_id, &other));
    let pick = format!("startTimeout: 5s, spiffeId: \"{GATEWAY_ID}\"");
    let setup = Setup::start(served, &gateway_svid, |y| {
        y.replacen("startTimeout: 5s", &pick, 1)
    })
    .await;
    let client = sleep_client(&pki);
    assert_eq!(
        presented_leaf(&setup.proxy, &client).await,
        gateway_svid.leaf_der
    );
}

#[tokio::test]
async fn without_a_workload_api_the_proxy_does_not_start_and_says_where_it_looked() {
    let pki = Pki::new(&["example-target.com"]);
    let dir = TempDir::new("wapi");
    let socket = dir.path().join("absent.sock");
    let yaml = gateway(&format!("unix://{}", socket.display()), echo().address).replacen(
        "startTimeout: 5s",
        "startTimeout: 300ms",
        1,
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    let model = meshgate_config::load(&[config]).unwrap();
    let Err(e) = meshgate_proxy::start(model).await else {
        panic!("started without an SVID");
    };
    let e = e.to_string();
    assert!(e.contains(&socket.display().to_string()), "{e}");
    assert!(e.contains("no usable X509-SVID within 300ms"), "{e}");
    drop(pki);
}

#[tokio::test]
async fn a_reload_to_files_stops_following_the_api_and_back_follows_it_again() {
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let served = pki.workload("example-target.com", GATEWAY_ID);
    let files = pki.workload("example-target.com", GATEWAY_ID);
    let setup = Setup::start(serving(&served, &[]), &files, |y| y).await;
    let (api, proxy, backend) = (&setup.api, &setup.proxy, &setup.backend);
    let client = sleep_client(&pki);
    assert_eq!(presented_leaf(proxy, &client).await, served.leaf_der);

    // To the files (`certs/` holds `files`).
    std::fs::write(
        proxy.config(),
        gateway_yaml(&route_to(HOST, backend.address)),
    )
    .unwrap();
    meshgate_proxy::reload::reload(&proxy.running, &[proxy.config()]).await;
    assert_eq!(presented_leaf(proxy, &client).await, files.leaf_der);
    // What the API streams now changes nothing.
    let ignored = pki.workload("example-target.com", GATEWAY_ID);
    api.serve(serving(&ignored, &[]));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(presented_leaf(proxy, &client).await, files.leaf_der);
    assert_eq!(setup.updates(), (0, 0));

    // And back: the API's current SVID.
    std::fs::write(proxy.config(), gateway(&api.endpoint(), backend.address)).unwrap();
    meshgate_proxy::reload::reload(&proxy.running, &[proxy.config()]).await;
    assert_eq!(presented_leaf(proxy, &client).await, ignored.leaf_der);
}

/// `meshgate check` and `meshgate pki inspect` take the identity and bundles from the API as
/// `run` does: the check fails naming the socket while nothing serves it, and inspect verifies
/// against the federated bundle of the caller's trust domain.
#[tokio::test]
async fn check_and_inspect_take_the_svid_and_bundles_from_the_api() {
    let target = Pki::named("target mesh root", &["example-target.com", "example.com"]);
    let federated = Pki::named("federated mesh root", &["example.com"]);
    let dir = TempDir::new("wapi-cli");
    let socket = dir.path().join("agent.sock");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        gateway(&format!("unix://{}", socket.display()), echo().address).replacen(
            "startTimeout: 5s",
            "startTimeout: 500ms",
            1,
        ),
    )
    .unwrap();
    // Off the test's runtime, which serves the API.
    let run = |args: Vec<String>| async move {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
                .args(args)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let check = || {
        vec![
            "check".to_string(),
            "-c".into(),
            config.display().to_string(),
        ]
    };

    let (ok, text) = run(check()).await;
    assert!(!ok, "{text}");
    assert!(text.contains(&socket.display().to_string()), "{text}");

    let gateway_svid = target.workload("example-target.com", GATEWAY_ID);
    let _api = WorkloadApiServer::start(
        &socket,
        serving(&gateway_svid, &[("example.com", &federated)]),
    );
    let (ok, text) = run(check()).await;
    assert!(ok, "{text}");

    let inspect = |name: &str, chain: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, chain).unwrap();
        vec![
            "pki".to_string(),
            "inspect".into(),
            file.display().to_string(),
            "-c".into(),
            config.display().to_string(),
        ]
    };
    let sleep = federated.workload("example.com", SLEEP_ID);
    let (ok, text) = run(inspect("sleep.pem", &sleep.chain_pem)).await;
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "accepted by MeshGateway istio-system/target-gateway: {SLEEP_ID}"
        )),
        "{text}"
    );
    let forged = target.workload("example.com", SLEEP_ID);
    let (ok, text) = run(inspect("forged.pem", &forged.chain_pem)).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("refused by MeshGateway istio-system/target-gateway: unknown_issuer"),
        "{text}"
    );
}

/// Originating `ISTIO_MUTUAL` from a sidecar whose identity comes from the API: the target
/// gateway sees the SVID's leaf (XFCC `Hash=`), and after a rotation the new one, on new
/// upstream connections.
#[tokio::test]
async fn an_outbound_listener_originates_with_the_svid_and_its_rotation() {
    const SOURCE_ID: &str = "spiffe://example.com/ns/default/sa/sleep";
    let pki = Pki::new(&["example-target.com", "example.com"]);
    let backend = echo();
    let target = Proxy::start(
        &gateway_yaml(&route_to(HOST, backend.address)),
        &pki.workload("example-target.com", GATEWAY_ID),
    )
    .await;
    let dir = TempDir::new("wapi-source");
    let first = pki.workload("example.com", SOURCE_ID);
    let api = WorkloadApiServer::start(
        &dir.path().join("agent.sock"),
        Served {
            svids: vec![ServedSvid::of(SOURCE_ID, &first)],
            federated: vec![],
        },
    );
    let yaml = support::proxy::source_yaml(target.addr(443), "{tls: {mode: ISTIO_MUTUAL}}").replacen(
        "identity: {certChain: certs/cert-chain.pem, privateKey: certs/key.pem, rootCerts: certs/root-cert.pem}",
        &format!("identity: {{workloadApi: {{socket: \"{}\"}}}}", api.endpoint()),
        1,
    );
    let source = Proxy::start(&yaml, &first).await;
    let hash = |leaf: &[u8]| meshgate_proxy::identity::sha256_hex(leaf);
    let xfcc = || async {
        let reply = support::client::plain_get(source.outbound(), HOST, "/", &[])
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        reply.echoed("x-forwarded-client-cert").unwrap()
    };
    let seen = xfcc().await;
    assert!(
        seen.contains(&format!("Hash={}", hash(&first.leaf_der))),
        "{seen}"
    );
    assert!(seen.contains(&format!("URI={SOURCE_ID}")), "{seen}");

    let second = pki.workload("example.com", SOURCE_ID);
    api.serve(Served {
        svids: vec![ServedSvid::of(SOURCE_ID, &second)],
        federated: vec![],
    });
    eventually("the rotation", || {
        source.running.metrics.workload_api_updates("applied") == 1
    })
    .await;
    let seen = xfcc().await;
    assert!(
        seen.contains(&format!("Hash={}", hash(&second.leaf_der))),
        "{seen}"
    );
}
