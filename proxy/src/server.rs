//! Server: binds the listeners and the admin address, starts the accept loops, and swaps a new
//! runtime in on reload. Each (re)load reads every file it needs off the async workers (the
//! configuration, then its material, in `spawn_blocking`) and builds the runtime there too, so
//! that a reload never stalls a connection, even on a one-worker runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use meshgate_config::model::{BundleSource, IdentitySource};
use meshgate_config::Model;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::drain::Drain;
use crate::inbound;
use crate::listen;
use crate::material::{FileErrors, Material};
use crate::metrics::Metrics;
use crate::runtime::{self, BuildError, ListenerKey, Runtime};
use crate::tls::federation::Fetched;
use crate::tls::workload_api::{self, Svid};

/// Why the proxy could not start. Nothing is left running when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound (in use, not local, no permission).
    #[error("cannot bind {name} on {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Files the configuration names could not be read (every one is listed).
    #[error(transparent)]
    Files(#[from] FileErrors),
    /// The runtime could not be built from the configuration and its files.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The access log could not be opened.
    #[error("{}: cannot open the access log: {source}", path.display())]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The SPIFFE Workload API served no usable SVID (or none in time).
    #[error("{0}")]
    WorkloadApi(String),
    /// The blocking task that read the files ended abnormally.
    #[error("reading the configuration's files: {0}")]
    Reader(#[source] tokio::task::JoinError),
}

/// A listener as bound.
#[derive(Debug, Clone)]
pub struct BoundListener {
    pub name: String,
    /// The Gateway port.
    pub port: u16,
    /// The local address, with the actual port when 0 was asked for.
    pub address: SocketAddr,
}

/// A running proxy.
pub struct Running {
    /// The Gateway listeners as first bound.
    pub listeners: Vec<BoundListener>,
    pub admin: Option<SocketAddr>,
    /// The bound address of `admin.probes`, if any.
    pub admin_probes: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    state: Arc<AdminState>,
    /// The configuration every new connection starts with; a reload swaps it.
    shared: Arc<ArcSwap<Runtime>>,
    /// The accept loops, by Gateway port and the address their listener was configured with
    /// (several may be configured with port 0).
    active: tokio::sync::Mutex<Vec<Active>>,
    admin_stop: watch::Sender<bool>,
    /// Shared with the accept loops, which hand a watch to each connection.
    drain: Arc<Drain>,
    /// What the bundle endpoints served, kept across reloads.
    pub bundles: Arc<Fetched>,
    /// The Workload API stream the identity comes from, if it does; the rotation task follows
    /// it, and a reload that changes `workloadApi` replaces it.
    workload: Arc<watch::Sender<Option<workload_api::Source>>>,
    /// Held by whatever builds and swaps a runtime (reload, bundle refresh, SVID rotation), so
    /// that the last one swapped in is built from the latest of everything.
    rebuilding: Arc<tokio::sync::Mutex<()>>,
}

/// What one round of bundle endpoint fetches did.
#[derive(Debug, Default)]
pub struct BundlesRefreshed {
    /// Endpoints fetched.
    pub fetched: usize,
    /// Whether any trust domain's roots changed (the runtime was rebuilt with them).
    pub changed: bool,
    /// `url: why` of each failed fetch (the last good bundle stays).
    pub failures: Vec<String>,
}

/// One open connection of a listener, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accept loop.
struct Active {
    key: ListenerKey,
    info: BoundListener,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Builds the runtime, binds every listener and the admin address, and starts serving. On
/// error nothing stays bound.
pub async fn start(model: Model) -> Result<Running, StartError> {
    let model = Arc::new(model);
    let metrics = Arc::new(Metrics::new());
    let access_log = match &model.proxy.access_log {
        Some(path) => Some(
            AccessLog::open(path, model.proxy.access_log_encoding).map_err(|source| {
                StartError::AccessLog {
                    path: path.clone(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    let source = connect_source(&model, None).await?;
    let svid = source.as_ref().map(current).transpose()?;
    // Nothing is served yet, so the files are read here, on this thread: no blocking thread is
    // started for it (with `--concurrency 1` the proxy stays one thread until a reload).
    let material = Material::read(&model)?.with_svid(svid);
    let runtime = Arc::new(Runtime::build(
        model.clone(),
        &material,
        metrics.clone(),
        access_log,
    )?);
    drop(material);
    let bound = bind_all(&model, &[])?;
    let mut admin_listeners = Vec::new();
    if let Some(a) = &model.proxy.admin {
        let endpoints = admin::Endpoints::of_admin(a.address, a.debug_endpoints);
        let probes = a
            .probes
            .map(|p| ("admin probes", p, admin::Endpoints::Probes));
        for (name, address, endpoints) in
            [("admin", a.address, endpoints)].into_iter().chain(probes)
        {
            let listener = listen::bind(address).map_err(|source| StartError::Bind {
                name: name.into(),
                address,
                source,
            })?;
            admin_listeners.push((name, listener, endpoints));
        }
    }

    let shared = Arc::new(ArcSwap::new(runtime));
    let drain = Arc::new(Drain::new());
    let state = Arc::new(AdminState {
        ready: false.into(),
        metrics: metrics.clone(),
        shared: shared.clone(),
    });
    let (admin_stop, admin_rx) = watch::channel(false);
    let mut active = Vec::new();
    let mut listeners = Vec::new();
    for (key, listener, info) in bound {
        active.push(spawn_accept(key, listener, &info, &shared, &drain));
        listeners.push(info);
    }
    let mut admin = None;
    let mut admin_probes = None;
    for (name, listener, endpoints) in admin_listeners {
        let address = listener.local_addr().ok();
        if let Some(a) = address {
            info!(address = %a, "{name} listening");
        }
        tokio::spawn(admin::serve(
            listener,
            state.clone(),
            endpoints,
            admin_rx.clone(),
        ));
        match endpoints {
            admin::Endpoints::Probes => admin_probes = address,
            _ => admin = address,
        }
    }
    state.ready.store(true, Ordering::Release);
    let bundles = Arc::new(Fetched::default());
    let workload = Arc::new(watch::Sender::new(source));
    let rebuilding = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(follow_workload_api(Rebuild {
        shared: shared.clone(),
        metrics: metrics.clone(),
        bundles: bundles.clone(),
        workload: workload.subscribe(),
        rebuilding: rebuilding.clone(),
    }));
    Ok(Running {
        listeners,
        admin,
        admin_probes,
        metrics,
        state,
        shared,
        active: tokio::sync::Mutex::new(active),
        admin_stop,
        drain,
        bundles,
        workload,
        rebuilding,
    })
}

/// The Workload API stream `model`'s identity comes from: `current` when it has the same
/// settings, else a new one (connected, first SVID received). `None` for file identities.
async fn connect_source(
    model: &Model,
    current: Option<&workload_api::Source>,
) -> Result<Option<workload_api::Source>, StartError> {
    let Some(IdentitySource::WorkloadApi(settings)) =
        model.proxy.identity.as_ref().map(|i| &i.source)
    else {
        return Ok(None);
    };
    if let Some(c) = current.filter(|c| &c.settings == settings) {
        return Ok(Some(c.clone()));
    }
    let source = workload_api::Source::connect(settings)
        .await
        .map_err(StartError::WorkloadApi)?;
    if let Ok(svid) = source.current() {
        info!(spiffe_id = %svid.spiffe_id, endpoint = %svid.endpoint, "identity from the Workload API");
    }
    Ok(Some(source))
}

fn current(source: &workload_api::Source) -> Result<Arc<Svid>, StartError> {
    source.current().map_err(StartError::WorkloadApi)
}

/// What a runtime is rebuilt from when something it took from outside the configuration
/// changed (a bundle endpoint's roots, the Workload API's SVID or bundles).
struct Rebuild {
    shared: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    bundles: Arc<Fetched>,
    workload: watch::Receiver<Option<workload_api::Source>>,
    rebuilding: Arc<tokio::sync::Mutex<()>>,
}

impl Rebuild {
    /// Builds the running configuration again, with `svid`, and swaps it in.
    async fn swap(&self, svid: Option<Arc<Svid>>) -> Result<(), StartError> {
        let runtime = self.shared.load_full();
        let mut rebuilt = build(
            runtime.model.clone(),
            self.metrics.clone(),
            runtime.access_log.clone(),
            &self.bundles,
            svid,
        )
        .await?;
        rebuilt.version = runtime.version.saturating_add(1);
        self.shared.store(Arc::new(rebuilt));
        Ok(())
    }

    /// Puts what `source` serves now in place, unless the running configuration has it.
    async fn rotate(&self, source: &workload_api::Source) {
        let _one = self.rebuilding.lock().await;
        let svid = match source.current() {
            Ok(svid) => svid,
            Err(e) => {
                self.metrics.workload_api_update("refused");
                warn!("Workload API update not usable, the identity in use stays: {e}");
                return;
            }
        };
        let running = self.shared.load();
        if running
            .credentials
            .as_ref()
            .and_then(|c| c.svid.as_deref())
            .is_some_and(|s| s.same(&svid))
        {
            return;
        }
        let spiffe_id = svid.spiffe_id.clone();
        match self.swap(Some(svid)).await {
            Ok(()) => {
                self.metrics.workload_api_update("applied");
                info!(%spiffe_id, "identity rotated from the Workload API");
            }
            Err(e) => {
                self.metrics.workload_api_update("refused");
                warn!("Workload API update refused, the identity in use stays: {e}");
            }
        }
    }
}

/// Follows the Workload API stream of the running configuration: every new SVID or bundle
/// rebuilds the runtime. Ends with the `Running` (its sender dropped).
async fn follow_workload_api(mut rebuild: Rebuild) {
    loop {
        let source = rebuild.workload.borrow_and_update().clone();
        let Some(source) = source else {
            if rebuild.workload.changed().await.is_err() {
                return;
            }
            continue;
        };
        // Subscribed before the catch-up, so that nothing served in between is missed.
        let mut updates = source.updated();
        rebuild.rotate(&source).await;
        loop {
            tokio::select! {
                replaced = rebuild.workload.changed() => {
                    if replaced.is_err() {
                        return;
                    }
                    break;
                }
                update = updates.changed() => {
                    if update.is_err() {
                        // Closed: nothing more comes from it until a reload replaces it.
                        if rebuild.workload.changed().await.is_err() {
                            return;
                        }
                        break;
                    }
                    rebuild.rotate(&source).await;
                }
            }
        }
    }
}

/// Reads the files `model` names and builds its runtime, both off the async workers, for a
/// reload while connections are being served.
async fn build(
    model: Arc<Model>,
    metrics: Arc<Metrics>,
    access_log: Option<AccessLog>,
    bundles: &Fetched,
    svid: Option<Arc<Svid>>,
) -> Result<Runtime, StartError> {
    let fetched = bundles.roots();
    tokio::task::spawn_blocking(move || {
        let material = Material::read(&model)?
            .with_fetched(fetched)
            .with_svid(svid);
        Ok(Runtime::build(model, &material, metrics, access_log)?)
    })
    .await
    .map_err(StartError::Reader)?
}

/// Binds every listener of `model` whose configured address is not in `existing`.
fn bind_all(
    model: &Model,
    existing: &[ListenerKey],
) -> Result<Vec<(ListenerKey, tokio::net::TcpListener, BoundListener)>, StartError> {
    let mut bound = Vec::new();
    for l in model
        .listeners
        .iter()
        .filter(|l| !existing.contains(&runtime::key(l)))
    {
        let listener = listen::bind(l.address).map_err(|source| StartError::Bind {
            name: l.name.clone(),
            address: l.address,
            source,
        })?;
        let address = listener.local_addr().unwrap_or(l.address);
        let info = BoundListener {
            name: l.name.clone(),
            port: l.port,
            address,
        };
        bound.push((runtime::key(l), listener, info));
    }
    Ok(bound)
}

/// Accepts on `listener`; every connection starts with the runtime current at its accept, and
/// finds its listener there by the configured address.
fn spawn_accept(
    key: ListenerKey,
    listener: tokio::net::TcpListener,
    info: &BoundListener,
    shared: &Arc<ArcSwap<Runtime>>,
    drain: &Arc<Drain>,
) -> Active {
    info!(listener = %info.name, port = info.port, address = %info.address, "listening");
    let (stop, rx) = watch::channel(false);
    let shared = shared.clone();
    let drain = drain.clone();
    let open = Arc::new(AtomicUsize::new(0));
    let handle = tokio::spawn(listen::accept_loop(listener, rx, move |stream, peer| {
        let runtime = shared.load_full();
        let Some(index) = runtime.listener(key) else {
            return;
        };
        // `maxConnectionsPerListener`: one over the limit is closed at once; the others carry on.
        let limit = runtime.model.proxy.limits.max_connections_per_listener;
        if limit.is_some_and(|max| open.load(Ordering::Relaxed) >= max as usize) {
            runtime.metrics.connection_refused();
            return;
        }
        let slot = Slot::take(&open);
        let watch = drain.watch();
        tokio::spawn(async move {
            inbound::serve_connection(runtime, index, stream, peer, watch).await;
            drop(slot);
        });
    }));
    Active {
        key,
        info: info.clone(),
        stop,
        handle,
    }
}

impl Running {
    /// The bound address of the listener for Gateway port `port`, as first bound; after a
    /// reload that adds or removes listeners, see `bound()`.
    pub fn address(&self, port: u16) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.port == port)
            .map(|l| l.address)
    }

    /// What building the running configuration found worth a warning (beside the model's).
    pub fn warnings(&self) -> Vec<meshgate_config::Warning> {
        self.shared.load().warnings.clone()
    }

    /// The configuration new connections get now.
    pub fn model(&self) -> Arc<Model> {
        self.shared.load().model.clone()
    }

    /// The listeners bound now (after any reload).
    pub async fn bound(&self) -> Vec<BoundListener> {
        self.active
            .lock()
            .await
            .iter()
            .map(|a| a.info.clone())
            .collect()
    }

    /// Replaces the configuration: builds the new runtime completely, off the async workers
    /// (every file it names read again, TLS configs, pools), binds the listeners it adds, swaps
    /// it in for new connections, and stops accepting on the listeners it removes.
    /// Connections already open keep the configuration they started with. On error nothing
    /// changes.
    pub async fn reload(&self, model: Model) -> Result<(), StartError> {
        let result = self.try_reload(model).await;
        self.metrics.reload(result.is_ok());
        result
    }

    async fn try_reload(&self, model: Model) -> Result<(), StartError> {
        let _one = self.rebuilding.lock().await;
        let model = Arc::new(model);
        // The access log keeps its file; moving it needs a restart.
        let access_log = self.shared.load().access_log.clone();
        let running_source = self.workload.borrow().clone();
        let source = connect_source(&model, running_source.as_ref()).await?;
        let svid = source.as_ref().map(current).transpose()?;
        let mut built = build(
            model.clone(),
            self.metrics.clone(),
            access_log,
            &self.bundles,
            svid,
        )
        .await?;
        built.version = self.shared.load().version.saturating_add(1);
        let runtime = Arc::new(built);
        let mut active = self.active.lock().await;
        let existing: Vec<ListenerKey> = active.iter().map(|a| a.key).collect();
        let fresh = bind_all(&model, &existing)?;
        self.shared.store(runtime);
        let replaced = self.workload.send_replace(source.clone());
        if let Some(old) =
            replaced.filter(|old| source.as_ref().is_none_or(|s| s.settings != old.settings))
        {
            tokio::spawn(async move { old.shutdown().await });
        }
        for (key, listener, info) in fresh {
            active.push(spawn_accept(
                key,
                listener,
                &info,
                &self.shared,
                &self.drain,
            ));
        }
        active.retain(|a| {
            let keep = runtime::key_in(&model, a.key);
            if !keep {
                info!(port = a.key.0, address = %a.key.1, "listener removed");
                let _ = a.stop.send(true);
            }
            keep
        });
        for w in &self.shared.load().warnings {
            tracing::warn!("{w}");
        }
        info!(listeners = model.listeners.len(), "configuration reloaded");
        Ok(())
    }

    /// Fetches the bundle endpoints that are due (`all`: every one), keeps what they serve,
    /// and rebuilds the running configuration when a trust domain's roots changed. A failed
    /// fetch keeps the last good bundle and is tried again within 30 s.
    pub async fn refresh_bundles(&self, all: bool) -> BundlesRefreshed {
        let runtime = self.shared.load_full();
        let model = runtime.model.clone();
        let provider = crate::tls::provider(model.trust.ecdh_curves.as_deref());
        let trust = runtime.credentials.as_ref().map(|c| &c.roots);
        let mut done = BundlesRefreshed::default();
        let mut seen = Vec::new();
        let now = std::time::Instant::now();
        for endpoint in model.trust.bundles.iter().filter_map(|b| match &b.source {
            BundleSource::Endpoint(e) => Some(e),
            _ => None,
        }) {
            if seen.contains(&&endpoint.url) || !(all || self.bundles.due(&endpoint.url, now)) {
                continue;
            }
            seen.push(&endpoint.url);
            done.fetched = done.fetched.saturating_add(1);
            match crate::tls::federation::fetch(endpoint, trust, &provider).await {
                Ok(bundle) => {
                    let roots = bundle.x509_authorities.len();
                    let changed = self.bundles.store(&endpoint.url, bundle, endpoint.refresh);
                    self.metrics
                        .bundle_fetch(if changed { "changed" } else { "unchanged" });
                    if changed {
                        info!(url = %endpoint.url, roots, "trust bundle fetched: roots changed");
                    }
                    done.changed |= changed;
                }
                Err(e) => {
                    self.metrics.bundle_fetch("failed");
                    warn!(url = %endpoint.url, "trust bundle fetch failed, the last good bundle stays: {e}");
                    self.bundles
                        .failed(&endpoint.url, endpoint.refresh.min(Duration::from_secs(30)));
                    done.failures.push(format!("{}: {e}", endpoint.url));
                }
            }
        }
        if done.changed {
            let _one = self.rebuilding.lock().await;
            let svid = match self.workload.borrow().as_ref().map(current).transpose() {
                Ok(svid) => svid,
                Err(e) => {
                    done.failures.push(e.to_string());
                    return done;
                }
            };
            match self.rebuild().swap(svid).await {
                Ok(()) => {}
                Err(e) => {
                    warn!("the fetched trust bundles could not be put in place: {e}");
                    done.failures.push(e.to_string());
                }
            }
        }
        done
    }

    fn rebuild(&self) -> Rebuild {
        Rebuild {
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
            bundles: self.bundles.clone(),
            workload: self.workload.subscribe(),
            rebuilding: self.rebuilding.clone(),
        }
    }

    /// When the next bundle endpoint is due: `None` without endpoints, now when one was never
    /// fetched.
    pub fn next_bundle_refresh(&self) -> Option<std::time::Instant> {
        let model = self.model();
        let mut urls = model
            .trust
            .bundles
            .iter()
            .filter_map(|b| match &b.source {
                BundleSource::Endpoint(e) => Some(e.url.as_str()),
                _ => None,
            })
            .peekable();
        urls.peek()?;
        Some(
            self.bundles
                .next_due(urls)
                .unwrap_or_else(std::time::Instant::now),
        )
    }

    /// Stops accepting, asks open connections to finish (HTTP/2 GOAWAY, HTTP/1.1 close after
    /// the current response) and waits for them for at most `drain`.
    ///
    /// `/ready` answers 503 from the start, and the admin listener keeps answering until the
    /// drain ends, so that a load balancer's readiness probe sees the proxy leave.
    pub async fn shutdown(self, drain: Duration) {
        self.state.ready.store(false, Ordering::Release);
        for a in self.active.into_inner() {
            let _ = a.stop.send(true);
            let _ = a.handle.await;
        }
        if tokio::time::timeout(drain, self.drain.drain())
            .await
            .is_err()
        {
            info!("drain timeout passed with connections still open");
        }
        let _ = self.admin_stop.send(true);
        if let Some(source) = self.workload.send_replace(None) {
            source.shutdown().await;
        }
    }
}
