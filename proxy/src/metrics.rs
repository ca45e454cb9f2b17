//! Counters, lock-free and allocation-free on the request path, rendered in the Prometheus text
//! format at `/stats/prometheus`.
//!
//! Two kinds of series. Fixed ones (handshakes, reloads, connections) live in `Metrics` for the
//! life of the process. Series whose labels come from the
//! configuration (trust domains, listeners and routes, backends, and the duration histograms by
//! listener) live in a `Family`: a
//! configuration takes its series from the family when it is built (`ModelCounters::new`, a
//! lock then, never per request), and a series the old and the new configuration both name is
//! the same counters — a reload neither resets nor loses a count, even for requests still
//! finishing on the old configuration. A series no live configuration names any more is
//! dropped at the next reload.
//!
//! Label cardinality is bounded by the configuration: `source_trust_domain` takes the trust
//! domains it names (ours, aliases, the allow-list, `cluster.local`), `""` without a peer, and
//! `other`; `code` is the status code, 100 to 599; routes and backends are the configured ones.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meshgate_config::model::TrustSettings;
use meshgate_config::Model;

use crate::authorize::ShadowAction;
use crate::identity::PeerError;
use crate::origin::Origin;

/// Process-wide counters, and the families configurations take their series from.
#[derive(Debug)]
pub struct Metrics {
    handshakes_ok: AtomicU64,
    handshakes_rejected: [AtomicU64; PeerError::REASONS.len()],
    active_connections: AtomicI64,
    /// Configuration reloads: succeeded, failed.
    reloads: [AtomicU64; 2],
    connections_refused: AtomicU64,
    /// Dry-run decisions: (deny set, allow set) x (allowed, denied).
    dry_run: [AtomicU64; 4],
    /// `meshgate_requests_total`, per source trust domain: origin x status code.
    trust_domains: Family,
    /// `meshgate_route_requests_total`, per listener and route: origin x code class.
    routes: Family,
    /// `meshgate_upstream_connections_total`, per backend: made, failed.
    upstreams: Family,
    /// `meshgate_request_duration_seconds`, per listener: for each origin, one counter per
    /// bucket of `BUCKETS_MS`, then the sum in microseconds and the count.
    durations: Family,
}

/// What one configuration counts into: its series, taken from the families once, in lists the
/// request path indexes.
#[derive(Debug)]
pub struct ModelCounters {
    /// `""` (no peer) first and `other` last.
    trust_domains: Vec<(Box<str>, Counts)>,
    /// Per listener: requests no route took, then one series per route by `Route::index`.
    routes: Vec<Box<[Counts]>>,
    /// Per backend of the model.
    upstreams: Vec<UpstreamCounts>,
    /// Per listener of the model.
    durations: Vec<Counts>,
}

/// One backend's connection counters.
#[derive(Debug, Clone)]
pub struct UpstreamCounts(Counts);

impl UpstreamCounts {
    /// Counts a connection attempt.
    pub fn connect(&self, ok: bool) {
        self.0[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }
}

/// The origin label of a request: no identity (plaintext), local or remote.
fn origin_index(origin: Option<Origin>) -> usize {
    match origin {
        None => 0,
        Some(Origin::Local) => 1,
        Some(Origin::Remote) => 2,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every counter at zero, no series yet.
    pub fn new() -> Self {
        Self {
            handshakes_ok: AtomicU64::new(0),
            handshakes_rejected: Default::default(),
            active_connections: AtomicI64::new(0),
            reloads: Default::default(),
            connections_refused: AtomicU64::new(0),
            dry_run: Default::default(),
            trust_domains: Family::new(ORIGINS.len() * CODES),
            routes: Family::new(ORIGINS.len() * CLASSES),
            upstreams: Family::new(2),
            durations: Family::new(ORIGINS.len() * SLOTS),
        }
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

    /// Counts a connection closed at accept because its listener is full.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what a set of dry-run policies would have decided.
    pub fn dry_run(&self, action: ShadowAction, allowed: bool) {
        let i = usize::from(action == ShadowAction::Allow) * 2 + usize::from(!allowed);
        self.dry_run[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Dry-run decisions counted, for tests.
    pub fn dry_runs(&self, action: ShadowAction, allowed: bool) -> u64 {
        let i = usize::from(action == ShadowAction::Allow) * 2 + usize::from(!allowed);
        self.dry_run[i].load(Ordering::Relaxed)
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
        header(
            &mut out,
            "meshgate_handshakes_total",
            "counter",
            "TLS handshakes on ISTIO_MUTUAL listeners.",
        );
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

        header(
            &mut out,
            "meshgate_requests_total",
            "counter",
            "HTTP requests by caller origin, source trust domain and status code.",
        );
        for (labels, counts) in self.trust_domains.snapshot() {
            for (i, c) in counts.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v != 0 {
                    let (origin, code) = (ORIGINS[i / CODES], i % CODES + 100);
                    let _ = writeln!(
                        out,
                        "meshgate_requests_total{{origin=\"{origin}\",{labels},code=\"{code}\"}} {v}"
                    );
                }
            }
        }

        header(
            &mut out,
            "meshgate_route_requests_total",
            "counter",
            "HTTP requests by listener, route (resource and route name; empty when no route \
             matched), caller origin and status code class.",
        );
        for (labels, counts) in self.routes.snapshot() {
            for (i, c) in counts.iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v != 0 {
                    let (origin, class) = (ORIGINS[i / CLASSES], i % CLASSES + 1);
                    let _ = writeln!(
                        out,
                        "meshgate_route_requests_total{{{labels},origin=\"{origin}\",code_class=\"{class}xx\"}} {v}"
                    );
                }
            }
        }

        header(
            &mut out,
            "meshgate_request_duration_seconds",
            "histogram",
            "From the request head to the end of the response, by listener and caller origin.",
        );
        for (labels, counts) in self.durations.snapshot() {
            for (o, origin) in ORIGINS.iter().enumerate() {
                let slots = &counts[o * SLOTS..(o + 1) * SLOTS];
                let count = slots[SLOTS - 1].load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let series = format!("{labels},origin=\"{origin}\"");
                let mut cumulative = 0;
                for (le, c) in BUCKETS_MS.iter().zip(slots) {
                    cumulative += c.load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "meshgate_request_duration_seconds_bucket{{{series},le=\"{}\"}} {cumulative}",
                        *le as f64 / 1000.0
                    );
                }
                let sum = slots[SLOTS - 2].load(Ordering::Relaxed) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "meshgate_request_duration_seconds_bucket{{{series},le=\"+Inf\"}} {count}\n\
                     meshgate_request_duration_seconds_sum{{{series}}} {sum}\n\
                     meshgate_request_duration_seconds_count{{{series}}} {count}"
                );
            }
        }

        header(
            &mut out,
            "meshgate_upstream_connections_total",
            "counter",
            "Upstream connections made, by backend and result.",
        );
        for (labels, counts) in self.upstreams.snapshot() {
            for (result, c) in ["success", "failure"].iter().zip(counts.iter()) {
                let _ = writeln!(
                    out,
                    "meshgate_upstream_connections_total{{{labels},result=\"{result}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }

        header(
            &mut out,
            "meshgate_authorization_dry_run_total",
            "counter",
            "What the dry-run (istio.io/dry-run) AuthorizationPolicies would have decided, by \
             the action of the set and its result; never enforced.",
        );
        for (i, c) in self.dry_run.iter().enumerate() {
            let _ = writeln!(
                out,
                "meshgate_authorization_dry_run_total{{action=\"{}\",result=\"{}\"}} {}",
                ["deny", "allow"][i / 2],
                ["allowed", "denied"][i % 2],
                c.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            "meshgate_config_reloads_total",
            "counter",
            "Configuration reloads by result.",
        );
        for (result, c) in ["success", "failure"].iter().zip(&self.reloads) {
            let _ = writeln!(
                out,
                "meshgate_config_reloads_total{{result=\"{result}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "meshgate_connections_refused_total",
            "counter",
            "Connections closed at accept: the listener was full.",
        );
        let _ = writeln!(
            out,
            "meshgate_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "meshgate_connections_active",
            "gauge",
            "Downstream connections open now.",
        );
        let _ = writeln!(
            out,
            "meshgate_connections_active {}",
            self.active_connections.load(Ordering::Relaxed)
        );
        out
    }
}

impl ModelCounters {
    /// Takes the series `model` names from the families of `metrics` (creating those it is
    /// the first to name), after dropping those no configuration holds any more.
    pub fn new(metrics: &Metrics, model: &Model) -> Self {
        for family in [
            &metrics.trust_domains,
            &metrics.routes,
            &metrics.upstreams,
            &metrics.durations,
        ] {
            family.retain_used();
        }
        let trust_domains = trust_domain_labels(&model.trust)
            .into_iter()
            .map(|td| {
                let counts = metrics
                    .trust_domains
                    .series(labels(&[("source_trust_domain", &td)]));
                (td.into_boxed_str(), counts)
            })
            .collect();
        let routes = model
            .listeners
            .iter()
            .map(|l| {
                let unrouted = metrics.routes.series(labels(&[
                    ("listener", &l.name),
                    ("resource", ""),
                    ("route", ""),
                ]));
                let mut list = vec![unrouted; 1 + l.routes.route_count()];
                for vh in l.routes.virtual_hosts() {
                    for (i, r) in vh.routes.iter().enumerate() {
                        let position = i.to_string();
                        let name = r.name.as_deref().unwrap_or(&position);
                        list[1 + r.index] = metrics.routes.series(labels(&[
                            ("listener", &l.name),
                            ("resource", &vh.source),
                            ("route", name),
                        ]));
                    }
                }
                list.into_boxed_slice()
            })
            .collect();
        let upstreams = model
            .backends
            .iter()
            .map(|b| {
                let name = format!("{}:{}", b.host, b.port);
                UpstreamCounts(metrics.upstreams.series(labels(&[("backend", &name)])))
            })
            .collect();
        let durations = model
            .listeners
            .iter()
            .map(|l| metrics.durations.series(labels(&[("listener", &l.name)])))
            .collect();
        Self {
            trust_domains,
            routes,
            upstreams,
            durations,
        }
    }

    /// The index of a peer's trust domain (`None`: no peer) for `request`, computed once per
    /// connection; a trust domain the configuration does not name counts as `other`.
    pub fn trust_domain_index(&self, td: Option<&str>) -> usize {
        let td = td.unwrap_or("");
        self.trust_domains
            .iter()
            .position(|(t, _)| &**t == td)
            .unwrap_or(self.trust_domains.len() - 1)
    }

    /// Counts a request: by its peer's origin and trust domain (`trust_domain_index`) with its
    /// status code, and by listener and route (`Route::index`, `None` when none matched) with
    /// the code's class.
    pub fn request(
        &self,
        listener: usize,
        route: Option<usize>,
        origin: Option<Origin>,
        trust_domain: usize,
        status: u16,
    ) {
        let status = usize::from(status.clamp(100, 599));
        let origin = origin_index(origin);
        if let Some((_, counts)) = self.trust_domains.get(trust_domain) {
            counts[origin * CODES + status - 100].fetch_add(1, Ordering::Relaxed);
        }
        let series = self
            .routes
            .get(listener)
            .and_then(|l| l.get(route.map_or(0, |r| r + 1)));
        if let Some(counts) = series {
            counts[origin * CLASSES + status / 100 - 1].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a request's time, from its head to the end of its response, to the histogram of
    /// its listener and origin.
    pub fn request_duration(&self, listener: usize, origin: Option<Origin>, took: Duration) {
        let Some(counts) = self.durations.get(listener) else {
            return;
        };
        let slots = &counts[origin_index(origin) * SLOTS..][..SLOTS];
        let ms = took.as_millis() as u64;
        if let Some(b) = BUCKETS_MS.iter().position(|le| ms <= *le) {
            slots[b].fetch_add(1, Ordering::Relaxed);
        }
        slots[SLOTS - 2].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        slots[SLOTS - 1].fetch_add(1, Ordering::Relaxed);
    }

    /// The connection counters of backend `i` of the model.
    pub fn upstream(&self, i: usize) -> UpstreamCounts {
        self.upstreams[i].clone()
    }
}

/// The trust domain labels of a configuration: none, ours, aliases, the allow-list,
/// `cluster.local`, then `other`; each once.
fn trust_domain_labels(trust: &TrustSettings) -> Vec<String> {
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
    // `other` stays last: a configuration that names a trust domain "other" shares its series.
    if let Some(i) = tds.iter().position(|t| t == OTHER) {
        let other = tds.remove(i);
        tds.push(other);
    }
    tds
}

/// A run of counters: one per combination of the labels a family adds to a series.
type Counts = Arc<[AtomicU64]>;

/// Series whose label sets come from the configuration, keyed by their rendered labels. The
/// lock is taken when a configuration is built and when `/stats/prometheus` is read.
#[derive(Debug)]
struct Family {
    width: usize,
    series: Mutex<BTreeMap<String, Counts>>,
}

impl Family {
    fn new(width: usize) -> Self {
        Self {
            width,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The series with these labels, created at zero the first time.
    fn series(&self, labels: String) -> Counts {
        self.lock()
            .entry(labels)
            .or_insert_with(|| (0..self.width).map(|_| AtomicU64::new(0)).collect())
            .clone()
    }

    /// Drops the series that only the family holds: no configuration names them any more.
    fn retain_used(&self) {
        self.lock()
            .retain(|_, counts| Arc::strong_count(counts) > 1);
    }

    /// The series some configuration holds now (not those of a configuration that failed to
    /// build, nor of one gone since), copied so that rendering does not hold the lock.
    fn snapshot(&self) -> Vec<(String, Counts)> {
        self.lock()
            .iter()
            .filter(|(_, v)| Arc::strong_count(v) > 1)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Counts>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `a="x",b="y"`, with the values escaped as the text format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Upper bounds of the duration histogram's buckets, in milliseconds.
const BUCKETS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
/// Counters per origin in a duration histogram: the buckets, the sum (µs), the count.
const SLOTS: usize = BUCKETS_MS.len() + 2;

/// The `origin` label values, by `origin_index`.
const ORIGINS: [&str; 3] = ["none", "local", "remote"];
/// Status codes 100..=599.
const CODES: usize = 500;
/// Code classes 1xx..=5xx.
const CLASSES: usize = 5;
/// The label of every trust domain the configuration does not name.
const OTHER: &str = "other";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("a", "x"), ("b", "q\"uo\\te\nd")]),
            r#"a="x",b="q\"uo\\te\nd""#
        );
    }

    #[test]
    fn a_series_outlives_one_holder_and_goes_with_the_last() {
        let family = Family::new(2);
        let first = family.series("k=\"1\"".into());
        let again = family.series("k=\"1\"".into());
        first[0].fetch_add(3, Ordering::Relaxed);
        assert_eq!(
            again[0].load(Ordering::Relaxed),
            3,
            "same labels, same counters"
        );
        drop(first);
        family.retain_used();
        assert_eq!(family.snapshot().len(), 1, "still held");
        drop(again);
        assert!(family.snapshot().is_empty(), "shown while nobody holds it");
        family.retain_used();
        assert!(family.lock().is_empty());
    }
}
