//! Counters, lock-free and allocation-free on the request path, rendered in the Prometheus text
//! format at `/stats/prometheus`.
//!
//! Label cardinality is bounded: `source_trust_domain` takes the trust domains the configuration
//! names (ours, aliases, the allow-list, `cluster.local`) and `other`; `code` is the status
//! code, 100 to 599.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use meshgate_config::model::TrustSettings;

use crate::identity::PeerError;
use crate::origin::Origin;

/// Process-wide counters.
#[derive(Debug)]
pub struct Metrics {
    handshakes_ok: AtomicU64,
    handshakes_rejected: [AtomicU64; PeerError::REASONS.len()],
    /// Indexed by `(origin * trust_domains + td) * CODES + (code - 100)`.
    requests: Box<[AtomicU64]>,
    trust_domains: Vec<String>,
    active_connections: AtomicI64,
    /// Configuration reloads: succeeded, failed.
    reloads: [AtomicU64; 2],
    connections_refused: AtomicU64,
    /// Request durations (to the response head): one counter per bucket of `BUCKETS_MS`, then
    /// the sum in microseconds and the count.
    duration_buckets: [AtomicU64; BUCKETS_MS.len()],
    duration_sum_us: AtomicU64,
    duration_count: AtomicU64,
}

/// The origin label of a request: no identity (plaintext), local or remote.
fn origin_index(origin: Option<Origin>) -> usize {
    match origin {
        None => 0,
        Some(Origin::Local) => 1,
        Some(Origin::Remote) => 2,
    }
}

impl Metrics {
    /// Counters for the trust domains `trust` names.
    pub fn new(trust: &TrustSettings) -> Self {
        let mut tds: Vec<String> = vec![String::new(), trust.trust_domain.to_string()];
        for td in trust
            .aliases
            .iter()
            .chain(trust.allowed_trust_domains.iter().flatten())
        {
            tds.push(td.to_string());
        }
        tds.push("cluster.local".into());
        tds.push(OTHER.into());
        let mut seen = std::collections::HashSet::new();
        tds.retain(|t| seen.insert(t.clone()));
        let len = 3 * tds.len() * CODES;
        Self {
            handshakes_ok: AtomicU64::new(0),
            handshakes_rejected: Default::default(),
            requests: (0..len).map(|_| AtomicU64::new(0)).collect(),
            trust_domains: tds,
            active_connections: AtomicI64::new(0),
            reloads: Default::default(),
            connections_refused: AtomicU64::new(0),
            duration_buckets: Default::default(),
            duration_sum_us: AtomicU64::new(0),
            duration_count: AtomicU64::new(0),
        }
    }

    /// The label index of a trust domain (`""` for none), computed once per connection.
    pub fn trust_domain_index(&self, td: Option<&str>) -> usize {
        let td = td.unwrap_or("");
        self.trust_domains
            .iter()
            .position(|t| t == td)
            .unwrap_or(self.trust_domains.len() - 1)
    }

    /// Counts a completed handshake.
    pub fn handshake_ok(&self) {
        self.handshakes_ok.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused handshake by its reason.
    pub fn handshake_rejected(&self, e: &PeerError) {
        if let Some(i) = PeerError::REASONS.iter().position(|r| *r == e.reason()) {
            self.handshakes_rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rejections counted for `reason`, for tests and the admin page.
    pub fn handshakes_rejected(&self, reason: &str) -> u64 {
        PeerError::REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.handshakes_rejected[i].load(Ordering::Relaxed))
    }

    /// Counts a finished request and how long it took to its response head.
    pub fn request(
        &self,
        origin: Option<Origin>,
        td: usize,
        status: u16,
        took: std::time::Duration,
    ) {
        let ms = took.as_millis() as u64;
        if let Some(b) = BUCKETS_MS.iter().position(|le| ms <= *le) {
            self.duration_buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        self.duration_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        let code = usize::from(status.clamp(100, 599)) - 100;
        let i = (origin_index(origin) * self.trust_domains.len() + td) * CODES + code;
        if let Some(c) = self.requests.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a connection closed at accept because its listener is full.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.active_connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// The Prometheus 0.0.4 text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP meshgate_handshakes_total TLS handshakes on ISTIO_MUTUAL listeners.\n",
        );
        out.push_str("# TYPE meshgate_handshakes_total counter\n");
        let _ = writeln!(
            out,
            "meshgate_handshakes_total{{result=\"success\",reason=\"\"}} {}",
            self.handshakes_ok.load(Ordering::Relaxed)
        );
        for (reason, c) in PeerError::REASONS.iter().zip(&self.handshakes_rejected) {
            let _ = writeln!(
                out,
                "meshgate_handshakes_total{{result=\"rejected\",reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP meshgate_requests_total HTTP requests by caller origin, trust domain and status.\n");
        out.push_str("# TYPE meshgate_requests_total counter\n");
        let n = self.trust_domains.len();
        for (i, c) in self.requests.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            let code = i % CODES + 100;
            let td = &self.trust_domains[(i / CODES) % n];
            let origin = ["none", "local", "remote"][i / CODES / n];
            let _ = writeln!(
                out,
                "meshgate_requests_total{{origin=\"{origin}\",source_trust_domain=\"{td}\",code=\"{code}\"}} {v}"
            );
        }
        out.push_str("# HELP meshgate_config_reloads_total Configuration reloads by result.\n");
        out.push_str("# TYPE meshgate_config_reloads_total counter\n");
        for (result, c) in ["success", "failure"].iter().zip(&self.reloads) {
            let _ = writeln!(
                out,
                "meshgate_config_reloads_total{{result=\"{result}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP meshgate_request_duration_seconds Time to the response head.\n");
        out.push_str("# TYPE meshgate_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (le, c) in BUCKETS_MS.iter().zip(&self.duration_buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "meshgate_request_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *le as f64 / 1000.0
            );
        }
        let count = self.duration_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "meshgate_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "meshgate_request_duration_seconds_sum {}",
            self.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "meshgate_request_duration_seconds_count {count}");
        out.push_str("# HELP meshgate_connections_refused_total Connections closed at accept: the listener was full.\n");
        out.push_str("# TYPE meshgate_connections_refused_total counter\n");
        let _ = writeln!(
            out,
            "meshgate_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        out.push_str("# HELP meshgate_connections_active Downstream connections open now.\n");
        out.push_str("# TYPE meshgate_connections_active gauge\n");
        let _ = writeln!(
            out,
            "meshgate_connections_active {}",
            self.active_connections.load(Ordering::Relaxed)
        );
        out
    }
}

/// Upper bounds of the duration histogram's buckets, in milliseconds.
const BUCKETS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Status codes 100..=599.
const CODES: usize = 500;
/// The label of every trust domain the configuration does not name.
const OTHER: &str = "other";
