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

/// Reloads `running` from `paths` on `hangup` (SIGHUP) and on file changes, until `stop`
/// resolves.
pub async fn run(
    running: &Running,
    paths: &[PathBuf],
    mut hangup: Option<Signal>,
    stop: impl Future<Output = ()>,
) {
    let mut period = running.model().proxy.reload_poll;
    let mut ticker = period.map(interval);
    let mut seen = match period {
        Some(_) => fingerprint(running, paths).await,
        None => 0,
    };
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
                reload(running, paths).await;
            }
            _ = tick(&mut ticker) => {
                let now = fingerprint(running, paths).await;
                if now == seen {
                    continue;
                }
                info!("configuration or certificate files changed: reloading");
                reload(running, paths).await;
            }
        }
        let configured = running.model().proxy.reload_poll;
        if configured.is_some() {
            seen = fingerprint(running, paths).await;
        }
        if configured != period {
            period = configured;
            ticker = period.map(interval);
        }
    }
}

/// Loads and compiles the configuration again and swaps it in; any error keeps the running
/// configuration, logged and counted. Reading and compiling run off the async workers, as the
/// runtime's build does: a reload never stalls a connection.
pub async fn reload(running: &Running, paths: &[PathBuf]) {
    let paths = paths.to_vec();
    let loaded = tokio::task::spawn_blocking(move || meshgate_config::load(&paths)).await;
    match loaded {
        Ok(Ok(model)) => {
            for w in &model.warnings {
                warn!("{w}");
            }
            if let Err(e) = running.reload(model).await {
                error!("reload failed, the running configuration stays: {e}");
            }
        }
        Ok(Err(errors)) => {
            for e in &errors.0 {
                error!("reload failed, the running configuration stays: {e}");
            }
            running.metrics.reload(false);
        }
        Err(e) => {
            error!("reload failed, the running configuration stays: {e}");
            running.metrics.reload(false);
        }
    }
}

/// A hash of the contents of every watched file (a missing one counts as such).
async fn fingerprint(running: &Running, paths: &[PathBuf]) -> u64 {
    let mut files = meshgate_config::source::files(paths);
    files.extend(running.model().certificate_files());
    tokio::task::spawn_blocking(move || {
        let mut h = DefaultHasher::new();
        for f in &files {
            f.hash(&mut h);
            std::fs::read(f).ok().hash(&mut h);
        }
        h.finish()
    })
    .await
    .unwrap_or_default()
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
