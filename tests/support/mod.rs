//! Test support, read like linkerd's integration DSL: make a PKI, start echo backends, start
//! the proxy from a YAML string, send real requests over real mTLS, assert on what came back.

#![allow(dead_code)]

pub mod client;
pub mod observer;
pub mod pki;
pub mod proxy;
pub mod scripted;
pub mod sidecar;
pub mod workload_api;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("meshgate-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every network wait in the tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `check` until it holds or `TIMEOUT` passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the JSON-lines file at `path` has `n` lines, and parses them.
pub async fn json_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    eventually(&format!("{n} lines in {}", path.display()), || {
        read().lines().count() == n
    })
    .await;
    read()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
