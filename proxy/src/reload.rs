//! What triggers a reload: SIGHUP, and a change to any configuration file (directories are
//! listed again) or to any certificate or key file the configuration names.
//!
//! Changes are found by polling (`MeshGateway.spec.reload.pollInterval`, default 2 s) and
//! comparing contents, not by inotify: reading through the path follows Kubernetes' `..data`
//! symlink swap, which a watch on the file itself misses. A file half-written when polled fails
//! the reload, which keeps the running configuration; the next poll sees it complete and
//! reloads again.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{error, info, warn};

use meshgate_config::Model;

use crate::Running;

/// The SIGHUP handler, registered now: a SIGHUP before the handler exists would end the
/// process. Call it before the proxy starts.
pub fn hangup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("SIGHUP will not reload: {e}");
            None
        }
    }
}

/// What the watched files held when a load read them: the configuration files at the paths,
/// and the certificate files the configuration names (with every file its Secrets could hold).
/// Each part is taken just before its files are read, so a file that changes while a load
/// reads it differs from the fingerprint and is read again at the next poll; a change is never
/// taken for the state already loaded. The load itself looks into Secrets (which keys they
/// hold): a reload the watcher starts keeps the digest it took before the load when the files
/// stay the same, so that a Secret that changes during the load is seen at the next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    config: u64,
    certificate_files: Vec<PathBuf>,
    certificates: u64,
}

impl Fingerprint {
    /// Of the configuration files `paths` stand for now. Take it before loading them. This
    /// blocks: run it off the async workers once serving.
    pub fn config(paths: &[PathBuf]) -> Self {
        Self {
            config: digest(&meshgate_config::source::files(paths)),
            certificate_files: Vec::new(),
            certificates: 0,
        }
    }

    /// With the certificate files `model` names, as they are now. Take it before the runtime
    /// reads them. This blocks.
    pub fn with_certificates(self, model: &Model) -> Self {
        self.with_certificate_files(certificate_files(model), None)
    }

    /// After a load that failed: the certificate files of `running`, which stays, and the files
    /// of the Secrets the failed configuration named, so that a fix to either reloads.
    fn after_failure(
        self,
        running: &Model,
        secret_files: &[PathBuf],
        before: Option<&Fingerprint>,
    ) -> Self {
        let mut files = certificate_files(running);
        files.extend(secret_files.iter().cloned());
        self.with_certificate_files(files, before)
    }

    /// With `files` as they are now; or, when `before` (taken before the load) has the same
    /// files, as they were then.
    fn with_certificate_files(mut self, files: Vec<PathBuf>, before: Option<&Fingerprint>) -> Self {
        self.certificates = match before {
            Some(b) if b.certificate_files == files => b.certificates,
            _ => digest(&files),
        };
        self.certificate_files = files;
        self
    }

    /// The same files as `self`, as they are now.
    pub fn again(&self, paths: &[PathBuf]) -> Self {
        Self::config(paths).with_certificate_files(self.certificate_files.clone(), None)
    }
}

/// Reloads `running` from `paths` on `hangup` (SIGHUP) and on file changes, until `stop`
/// resolves. `seen` is the fingerprint of what `running` was loaded from, taken before it was
/// loaded.
pub async fn run(
    running: &Running,
    paths: &[PathBuf],
    mut seen: Fingerprint,
    mut hangup: Option<Signal>,
    stop: impl Future<Output = ()>,
) {
    let mut period = running.model().proxy.reload_poll;
    let mut ticker = period.map(interval);
    tokio::pin!(stop);
    loop {
        // SPIFFE bundle endpoints: fetched at once, then by their refresh hints.
        let bundles_due = running.next_bundle_refresh();
        tokio::select! {
            _ = &mut stop => return,
            () = until(bundles_due) => {
                running.refresh_bundles(false).await;
            }
            _ = hangup_recv(&mut hangup) => {
                info!("SIGHUP: reloading");
                seen = reload(running, paths).await.unwrap_or(seen);
            }
            _ = tick(&mut ticker) => {
                let (before, paths_now) = (seen.clone(), paths.to_vec());
                let now = tokio::task::spawn_blocking(move || before.again(&paths_now)).await;
                if now.as_ref().map_or(true, |now| *now == seen) {
                    continue;
                }
                info!("configuration or certificate files changed: reloading");
                seen = reload_after(running, paths, now.ok()).await.unwrap_or(seen);
            }
        }
        let configured = running.model().proxy.reload_poll;
        if configured != period {
            period = configured;
            ticker = period.map(interval);
        }
    }
}

/// Loads and compiles the configuration again and swaps it in; any error keeps the running
/// configuration, logged and counted. Reading and compiling run off the async workers, as the
/// runtime's build does: a reload never stalls a connection.
///
/// Returns the fingerprint of what it read, taken before reading: after a failed load, the
/// files that failed, so that they are read again once they change (a file half-written when
/// read fails the load and is complete at the next poll). Nothing when the reader itself
/// failed.
pub async fn reload(running: &Running, paths: &[PathBuf]) -> Option<Fingerprint> {
    reload_after(running, paths, None).await
}

/// `reload`, with `before`: the fingerprint of the running configuration's files taken just
/// before (by the watcher's poll).
async fn reload_after(
    running: &Running,
    paths: &[PathBuf],
    before: Option<Fingerprint>,
) -> Option<Fingerprint> {
    let (owned, running_model) = (paths.to_vec(), running.model());
    let loaded = tokio::task::spawn_blocking(move || {
        let seen = Fingerprint::config(&owned);
        let model = meshgate_config::load(&owned);
        // The certificate files of the configuration that will be built, or (when it does not
        // load) of the one that stays.
        let seen = match &model {
            Ok(model) => seen.with_certificate_files(certificate_files(model), before.as_ref()),
            Err(e) => seen.after_failure(&running_model, &e.1, before.as_ref()),
        };
        (seen, model)
    })
    .await;
    let (seen, loaded) = match loaded {
        Ok((seen, loaded)) => (seen, loaded),
        Err(e) => {
            error!("reload failed, the running configuration stays: {e}");
            running.metrics.reload(false);
            return None;
        }
    };
    match loaded {
        Ok(model) => {
            for w in &model.warnings {
                warn!("{w}");
            }
            if let Err(e) = running.reload(model).await {
                error!("reload failed, the running configuration stays: {e}");
            }
        }
        Err(errors) => {
            for e in &errors.0 {
                error!("reload failed, the running configuration stays: {e}");
            }
            running.metrics.reload(false);
        }
    }
    Some(seen)
}

/// The files of `model` whose change reloads: those it reads, and those its Secrets could hold.
fn certificate_files(model: &Model) -> Vec<PathBuf> {
    let mut files = model.certificate_files();
    files.extend(model.secret_files.iter().cloned());
    files
}

/// A hash of the contents of `files` (a missing file counts as such). Only regular files are
/// read: a FIFO or device named as configuration counts by its name, as reading it here would
/// take what the load is to read.
fn digest(files: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        let regular = std::fs::metadata(f).is_ok_and(|m| m.is_file());
        regular.hash(&mut h);
        if regular {
            std::fs::read(f).ok().hash(&mut h);
        }
    }
    h.finish()
}

fn interval(period: Duration) -> Interval {
    // `pollInterval` is 10 ms to a day (the configuration refuses others); tokio's interval
    // would panic on a zero one.
    let period = period.max(Duration::from_millis(1));
    let now = tokio::time::Instant::now();
    let mut i = tokio::time::interval_at(now.checked_add(period).unwrap_or(now), period);
    i.set_missed_tick_behavior(MissedTickBehavior::Skip);
    i
}

/// Resolves at `at`; never without one.
async fn until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn hangup_recv(hangup: &mut Option<Signal>) {
    match hangup {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
