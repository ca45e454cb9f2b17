//! Counters, lock-free and allocation-free on the request path, rendered in the Prometheus text
//! format at `/stats/prometheus`.
//!
//! Two kinds of series. Fixed ones (handshakes, reloads, connections) live in `Metrics` for the
//! life of the process. Series whose labels come from the configuration (trust domains,
//! listeners and routes, backends, the duration histograms by listener) live in a `Family`: a
//! configuration takes its series when it is built (`Metrics::series`, a lock then, never per
//! request) and keeps them in the per-listener and per-backend state that uses them; a series
//! the old and the new configuration both name is the same counters — a reload neither resets
//! nor loses a count, even for requests still finishing on the old configuration. A series no
//! live configuration names any more is dropped at the next reload.
//!
//! Label cardinality is bounded by the configuration: `source_trust_domain` takes the trust
//! domains it names (ours, aliases, the allow-list, `cluster.local`), `""` without a peer, and
//! `other`; `code` is the status code, 100 to 599; routes and backends are the configured ones.
//!
//! Every line of the exposition goes through one `Encoder`, the one place label values and
//! help texts are escaped.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meshgate_config::model::{Backend, Listener, TrustSettings};

use crate::authorize::ShadowAction;
use crate::identity::PeerError;
use crate::origin::Origin;
use crate::serve::ClosedBy;

/// How a PROXY protocol header ended.
const PROXY_PROTOCOL: [&str; 3] = ["proxied", "local", "rejected"];

/// Process-wide counters, and the families configurations take their series from.
/// What a bundle endpoint fetch came to: new roots, the same roots, or no bundle.
const BUNDLE_FETCHES: [&str; 3] = ["changed", "unchanged", "failed"];
/// What became of an update the Workload API streamed.
const WORKLOAD_API_UPDATES: [&str; 2] = ["applied", "refused"];

#[derive(Debug)]
pub struct Metrics {
    handshakes_ok: AtomicU64,
    handshakes_rejected: [AtomicU64; PeerError::REASONS.len()],
    active_connections: AtomicI64,
    /// HTTP/1.1 connections parked between requests, without HTTP state (`park`).
    parked_connections: AtomicI64,
    /// Configuration reloads: succeeded, failed.
    reloads: [AtomicU64; 2],
    connections_refused: AtomicU64,
    /// Bundle endpoint fetches by result (`BUNDLE_FETCHES`).
    bundle_fetches: [AtomicU64; BUNDLE_FETCHES.len()],
    /// Workload API updates by result (`WORKLOAD_API_UPDATES`).
    workload_api_updates: [AtomicU64; WORKLOAD_API_UPDATES.len()],
    /// HTTP connections a limit or a refused request head closed, by reason (`ClosedBy::ALL`).
    connections_closed: [AtomicU64; ClosedBy::ALL.len()],
    /// Passed-through connections by how they ended (`passthrough::ENDS`).
    passthrough: [AtomicU64; crate::passthrough::ENDS.len()],
    /// Bytes passed through: from clients, to clients.
    passthrough_bytes: [AtomicU64; 2],
    /// Connections of TCP listeners by how they ended (`tcp::ENDS`).
    tcp: [AtomicU64; crate::tcp::ENDS.len()],
    /// Bytes of TCP listeners' connections: from the clients, to the clients.
    tcp_bytes: [AtomicU64; 2],
    /// PROXY protocol headers: proxied, local, rejected.
    proxy_protocol: [AtomicU64; 3],
    /// Dry-run decisions: (deny set, allow set) x (allowed, denied).
    dry_run: [AtomicU64; 4],
    /// `meshgate_requests_total`, per source trust domain: origin x status code.
    trust_domains: Arc<Family>,
    seen_trust_domains: Arc<SeenTrustDomains>,
    /// `meshgate_route_requests_total`, per listener and route: origin x code class.
    routes: Family,
    /// `meshgate_upstream_connections_total`, per backend: made, failed.
    upstreams: Family,
    /// `meshgate_request_duration_seconds`, per listener: for each origin, one counter per
    /// bucket of `BUCKETS_MS`, then the sum in microseconds and the count.
    durations: Family,
}

/// Hands out a configuration's series (see `Metrics::series`).
#[derive(Debug)]
pub struct Series<'a>(&'a Metrics);

/// A configuration's requests by source trust domain: those it names, `""` (no peer) first and
/// `other` last; and, up to `cap`, each other trust domain a verified connection comes from.
#[derive(Debug)]
pub struct TrustDomainCounts {
    named: Vec<(Box<str>, Counts)>,
    cap: usize,
    family: Arc<Family>,
    seen: Arc<SeenTrustDomains>,
}

/// The trust domains verified connections came from that no configuration named, each with its
/// series: kept across reloads, so the cap bounds the labels for the life of the process.
#[derive(Debug, Default)]
struct SeenTrustDomains {
    series: Mutex<std::collections::HashMap<Box<str>, Counts>>,
    /// Connections from a trust domain over the cap, counted under `other`.
    overflow: AtomicU64,
}

/// One listener's requests by route, and its duration histogram.
#[derive(Debug)]
pub struct ListenerCounts {
    /// Requests no route took, then one series per route by `Route::index`.
    routes: Box<[Counts]>,
    duration: Counts,
}

/// One backend's connection counters.
#[derive(Debug, Clone)]
pub struct UpstreamCounts(Counts);

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
            parked_connections: AtomicI64::new(0),
            reloads: Default::default(),
            connections_refused: AtomicU64::new(0),
            bundle_fetches: Default::default(),
            workload_api_updates: Default::default(),
            connections_closed: Default::default(),
            passthrough: Default::default(),
            passthrough_bytes: Default::default(),
            tcp: Default::default(),
            tcp_bytes: Default::default(),
            proxy_protocol: Default::default(),
            dry_run: Default::default(),
            trust_domains: Arc::new(Family::new(TRUST_DOMAIN_WIDTH)),
            seen_trust_domains: Default::default(),
            routes: Family::new(ROUTE_WIDTH),
            upstreams: Family::new(UPSTREAM_SLOTS),
            durations: Family::new(DURATION_WIDTH),
        }
    }

    /// Starts taking the series of a new configuration, after dropping those no configuration
    /// holds any more.
    pub fn series(&self) -> Series<'_> {
        for family in [
            &*self.trust_domains,
            &self.routes,
            &self.upstreams,
            &self.durations,
        ] {
            family.retain_used();
        }
        Series(self)
    }

    /// Counts a completed handshake.
    pub fn handshake_ok(&self) {
        self.handshakes_ok.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused handshake by its reason.
    pub fn handshake_rejected(&self, e: &PeerError) {
        if let Some(c) = counter(&PeerError::REASONS, &self.handshakes_rejected, e.reason()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rejections counted for `reason`, for tests and the admin page.
    pub fn handshakes_rejected(&self, reason: &str) -> u64 {
        counter(&PeerError::REASONS, &self.handshakes_rejected, reason)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a passed-through connection that ended so (one of `passthrough::ENDS`), and the
    /// bytes it carried each way.
    pub fn passthrough(&self, end: &str, received: u64, sent: u64) {
        if let Some(c) = counter(&crate::passthrough::ENDS, &self.passthrough, end) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.passthrough_bytes[0].fetch_add(received, Ordering::Relaxed);
        self.passthrough_bytes[1].fetch_add(sent, Ordering::Relaxed);
    }

    /// Counts a connection of a TCP listener that ended so (one of `tcp::ENDS`), and the bytes
    /// it carried each way.
    pub fn tcp(&self, end: &str, received: u64, sent: u64) {
        if let Some(c) = counter(&crate::tcp::ENDS, &self.tcp, end) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.tcp_bytes[0].fetch_add(received, Ordering::Relaxed);
        self.tcp_bytes[1].fetch_add(sent, Ordering::Relaxed);
    }

    /// TCP listeners' connections that ended so, for tests.
    pub fn tcp_ended(&self, end: &str) -> u64 {
        counter(&crate::tcp::ENDS, &self.tcp, end).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a PROXY header by its result (`proxied`, `local`, `rejected`).
    pub fn proxy_protocol(&self, result: &str) {
        if let Some(c) = counter(&PROXY_PROTOCOL, &self.proxy_protocol, result) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// PROXY headers counted with `result`, for tests.
    pub fn proxy_protocol_count(&self, result: &str) -> u64 {
        counter(&PROXY_PROTOCOL, &self.proxy_protocol, result)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Passed-through connections that ended so, for tests.
    pub fn passthrough_ended(&self, end: &str) -> u64 {
        counter(&crate::passthrough::ENDS, &self.passthrough, end)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a connection closed at accept because its listener is full.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a bundle endpoint fetch by its result (`BUNDLE_FETCHES`).
    pub fn bundle_fetch(&self, result: &str) {
        if let Some(c) = counter(&BUNDLE_FETCHES, &self.bundle_fetches, result) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a Workload API update by its result (`WORKLOAD_API_UPDATES`).
    pub fn workload_api_update(&self, result: &str) {
        if let Some(c) = counter(&WORKLOAD_API_UPDATES, &self.workload_api_updates, result) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Workload API updates with `result` so far, for tests.
    pub fn workload_api_updates(&self, result: &str) -> u64 {
        WORKLOAD_API_UPDATES
            .iter()
            .zip(&self.workload_api_updates)
            .find(|(r, _)| **r == result)
            .map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }

    /// Counts an HTTP connection a limit closed.
    pub fn connection_closed(&self, why: ClosedBy) {
        let counters = ClosedBy::ALL.iter().zip(&self.connections_closed);
        if let Some((_, c)) = counters.into_iter().find(|(w, _)| **w == why) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections closed for `reason` (`ClosedBy::reason`) so far, for tests.
    pub fn connections_closed(&self, reason: &str) -> u64 {
        ClosedBy::ALL
            .iter()
            .zip(&self.connections_closed)
            .find(|(why, _)| why.reason() == reason)
            .map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }

    /// Counts what a set of dry-run policies would have decided.
    pub fn dry_run(&self, action: ShadowAction, allowed: bool) {
        self.dry_run_counter(action, allowed)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Dry-run decisions counted, for tests.
    pub fn dry_runs(&self, action: ShadowAction, allowed: bool) -> u64 {
        self.dry_run_counter(action, allowed)
            .load(Ordering::Relaxed)
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        let [succeeded, failed] = &self.reloads;
        let counter = if ok { succeeded } else { failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.active_connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// An HTTP/1.1 connection was parked (1) or served again or closed while parked (-1).
    pub fn parked(&self, delta: i64) {
        self.parked_connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// The dry-run counter of a set's action and its result, in `dry_run`'s order.
    fn dry_run_counter(&self, action: ShadowAction, allowed: bool) -> &AtomicU64 {
        let [deny_allowed, deny_denied, allow_allowed, allow_denied] = &self.dry_run;
        match (action, allowed) {
            (ShadowAction::Deny, true) => deny_allowed,
            (ShadowAction::Deny, false) => deny_denied,
            (ShadowAction::Allow, true) => allow_allowed,
            (ShadowAction::Allow, false) => allow_denied,
        }
    }

    /// The Prometheus 0.0.4 text exposition of the process counters and of every series a
    /// live configuration holds.
    pub fn render(&self) -> String {
        let mut e = Encoder::default();
        self.encode(&mut e);
        e.finish()
    }

    /// Writes the process counters and the live series into `e`.
    pub fn encode(&self, e: &mut Encoder) {
        e.family(
            "meshgate_handshakes_total",
            "counter",
            "TLS handshakes on ISTIO_MUTUAL listeners.",
        );
        e.sample(
            "meshgate_handshakes_total",
            &labels(&[("result", "success"), ("reason", "")]),
            self.handshakes_ok.load(Ordering::Relaxed),
        );
        for (reason, c) in PeerError::REASONS.iter().zip(&self.handshakes_rejected) {
            e.sample(
                "meshgate_handshakes_total",
                &labels(&[("result", "rejected"), ("reason", reason)]),
                c.load(Ordering::Relaxed),
            );
        }

        e.family(
            "meshgate_requests_total",
            "counter",
            "HTTP requests by caller origin, source trust domain and status code.",
        );
        for (family, counts) in self.trust_domains.snapshot() {
            for (origin, codes) in ORIGINS.iter().zip(counts.chunks_exact(CODES)) {
                for (code, c) in (100..=599u16).zip(codes) {
                    let v = c.load(Ordering::Relaxed);
                    if v != 0 {
                        let origin = labels(&[("origin", origin)]);
                        let code = labels(&[("code", &code.to_string())]);
                        e.sample(
                            "meshgate_requests_total",
                            &join(&[&origin, &family, &code]),
                            v,
                        );
                    }
                }
            }
        }

        e.family(
            "meshgate_route_requests_total",
            "counter",
            "HTTP requests by listener, route (resource and route name; empty when no route \
             matched), caller origin and status code class.",
        );
        for (family, counts) in self.routes.snapshot() {
            for (origin, classes) in ORIGINS.iter().zip(counts.chunks_exact(CLASSES)) {
                for (class, c) in (1..=CLASSES).zip(classes) {
                    let v = c.load(Ordering::Relaxed);
                    if v != 0 {
                        let class = format!("{class}xx");
                        let extra = labels(&[("origin", origin), ("code_class", &class)]);
                        e.sample(
                            "meshgate_route_requests_total",
                            &join(&[&family, &extra]),
                            v,
                        );
                    }
                }
            }
        }

        e.family(
            "meshgate_request_duration_seconds",
            "histogram",
            "From the request head to the end of the response, by listener and caller origin.",
        );
        for (family, counts) in self.durations.snapshot() {
            for (origin, slots) in ORIGINS.iter().zip(counts.chunks_exact(SLOTS)) {
                let [buckets @ .., sum, count] = slots else {
                    continue;
                };
                let count = count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let series = join(&[&family, &labels(&[("origin", origin)])]);
                let mut cumulative = 0u64;
                for (le, c) in BUCKETS_MS.iter().zip(buckets) {
                    cumulative = cumulative.saturating_add(c.load(Ordering::Relaxed));
                    let le = (*le as f64 / 1000.0).to_string();
                    e.sample(
                        "meshgate_request_duration_seconds_bucket",
                        &join(&[&series, &labels(&[("le", &le)])]),
                        cumulative,
                    );
                }
                e.sample(
                    "meshgate_request_duration_seconds_bucket",
                    &join(&[&series, &labels(&[("le", "+Inf")])]),
                    count,
                );
                let sum = sum.load(Ordering::Relaxed) as f64 / 1e6;
                e.sample("meshgate_request_duration_seconds_sum", &series, sum);
                e.sample("meshgate_request_duration_seconds_count", &series, count);
            }
        }

        e.family(
            "meshgate_upstream_connections_total",
            "counter",
            "Upstream connections made, by backend and result.",
        );
        for (family, counts) in self.upstreams.snapshot() {
            for (result, c) in ["success", "failure"].iter().zip(counts.iter()) {
                e.sample(
                    "meshgate_upstream_connections_total",
                    &join(&[&family, &labels(&[("result", result)])]),
                    c.load(Ordering::Relaxed),
                );
            }
        }

        e.family(
            "meshgate_upstream_retries_total",
            "counter",
            "Retries by backend and outcome: retried (a try was tried again), succeeded (a \
             retried request got an answer no retry was needed for), overflow (not retried: \
             maxRetries in flight), limit_exceeded (not retried: the route's attempts used up).",
        );
        let upstreams = self.upstreams.snapshot();
        for (family, counts) in &upstreams {
            for (outcome, slot) in RETRY_SLOTS {
                e.sample(
                    "meshgate_upstream_retries_total",
                    &join(&[family, &labels(&[("outcome", outcome)])]),
                    load(counts, slot),
                );
            }
        }
        e.family(
            "meshgate_upstream_overflow_total",
            "counter",
            "Requests a circuit breaker (http1MaxPendingRequests, http2MaxRequests) answered \
             with 503, by backend.",
        );
        for (family, counts) in &upstreams {
            e.sample(
                "meshgate_upstream_overflow_total",
                family,
                load(counts, OVERFLOW_SLOT),
            );
        }

        e.family(
            "meshgate_upstream_ejections_total",
            "counter",
            "Endpoints outlier detection ejected, by backend.",
        );
        for (family, counts) in &upstreams {
            e.sample(
                "meshgate_upstream_ejections_total",
                family,
                load(counts, EJECTED_SLOT),
            );
        }

        e.family(
            "meshgate_upstream_mirrors_total",
            "counter",
            "Mirrored copies by the backend they go to and result: sent, or dropped (too many \
             in flight, or a body over the buffer limit).",
        );
        for (family, counts) in &upstreams {
            for (result, slot) in MIRROR_SLOTS {
                e.sample(
                    "meshgate_upstream_mirrors_total",
                    &join(&[family, &labels(&[("result", result)])]),
                    load(counts, slot),
                );
            }
        }

        e.family(
            "meshgate_authorization_dry_run_total",
            "counter",
            "What the dry-run (istio.io/dry-run) AuthorizationPolicies would have decided, by \
             the action of the set and its result; never enforced.",
        );
        let cells = ["deny", "allow"]
            .into_iter()
            .flat_map(|action| ["allowed", "denied"].map(|result| (action, result)));
        for ((action, result), c) in cells.zip(&self.dry_run) {
            e.sample(
                "meshgate_authorization_dry_run_total",
                &labels(&[("action", action), ("result", result)]),
                c.load(Ordering::Relaxed),
            );
        }

        e.family(
            "meshgate_config_reloads_total",
            "counter",
            "Configuration reloads by result.",
        );
        for (result, c) in ["success", "failure"].iter().zip(&self.reloads) {
            e.sample(
                "meshgate_config_reloads_total",
                &labels(&[("result", result)]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_trust_domain_labels_overflow_total",
            "counter",
            "Connections from a trust domain counted as `other` because limits.trustDomainLabels \
             trust domains already have series of their own.",
        );
        e.sample(
            "meshgate_trust_domain_labels_overflow_total",
            "",
            self.seen_trust_domains.overflow.load(Ordering::Relaxed),
        );
        e.family(
            "meshgate_connections_refused_total",
            "counter",
            "Connections closed at accept: the listener was full.",
        );
        e.sample(
            "meshgate_connections_refused_total",
            "",
            self.connections_refused.load(Ordering::Relaxed),
        );
        e.family(
            "meshgate_bundle_fetches_total",
            "counter",
            "SPIFFE bundle endpoint fetches, by result.",
        );
        for (result, c) in BUNDLE_FETCHES.iter().zip(&self.bundle_fetches) {
            e.sample(
                "meshgate_bundle_fetches_total",
                &labels(&[("result", result)]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_workload_api_updates_total",
            "counter",
            "SVID and bundle updates streamed by the SPIFFE Workload API, by what became of them.",
        );
        for (result, c) in WORKLOAD_API_UPDATES.iter().zip(&self.workload_api_updates) {
            e.sample(
                "meshgate_workload_api_updates_total",
                &labels(&[("result", result)]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_connections_closed_total",
            "counter",
            "HTTP connections the proxy closed on a limit or after refusing a request head, by reason.",
        );
        for (why, c) in ClosedBy::ALL.iter().zip(&self.connections_closed) {
            e.sample(
                "meshgate_connections_closed_total",
                &labels(&[("reason", why.reason())]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_passthrough_connections_total",
            "counter",
            "Connections on AUTO_PASSTHROUGH listeners by how they ended.",
        );
        for (end, c) in crate::passthrough::ENDS.iter().zip(&self.passthrough) {
            e.sample(
                "meshgate_passthrough_connections_total",
                &labels(&[("end", end)]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_proxy_protocol_total",
            "counter",
            "PROXY protocol headers on Gateway listeners by result.",
        );
        for (result, c) in PROXY_PROTOCOL.iter().zip(&self.proxy_protocol) {
            e.sample(
                "meshgate_proxy_protocol_total",
                &labels(&[("result", result)]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_passthrough_bytes_total",
            "counter",
            "Bytes passed through, by direction.",
        );
        for (direction, c) in ["received", "sent"].iter().zip(&self.passthrough_bytes) {
            e.sample(
                "meshgate_passthrough_bytes_total",
                &labels(&[("direction", direction)]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_tcp_connections_total",
            "counter",
            "Connections on TCP listeners (plaintext or TLS terminated) by how they ended.",
        );
        for (end, c) in crate::tcp::ENDS.iter().zip(&self.tcp) {
            e.sample(
                "meshgate_tcp_connections_total",
                &labels(&[("end", end)]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_tcp_bytes_total",
            "counter",
            "Bytes forwarded on TCP listeners, by direction.",
        );
        for (direction, c) in ["received", "sent"].iter().zip(&self.tcp_bytes) {
            e.sample(
                "meshgate_tcp_bytes_total",
                &labels(&[("direction", direction)]),
                c.load(Ordering::Relaxed),
            );
        }
        e.family(
            "meshgate_connections_active",
            "gauge",
            "Downstream connections open now.",
        );
        e.sample(
            "meshgate_connections_active",
            "",
            self.active_connections.load(Ordering::Relaxed),
        );
        e.family(
            "meshgate_connections_parked",
            "gauge",
            "Idle HTTP/1.1 connections held between requests without HTTP state (buffers released).",
        );
        e.sample(
            "meshgate_connections_parked",
            "",
            self.parked_connections.load(Ordering::Relaxed),
        );
    }
}

impl Series<'_> {
    /// The requests-by-trust-domain series of a configuration with `trust`.
    /// `cap`: how many trust domains the configuration does not name get series of their own.
    pub fn trust_domains(&self, trust: &TrustSettings, cap: usize) -> TrustDomainCounts {
        TrustDomainCounts {
            named: trust_domain_labels(trust)
                .into_iter()
                .map(|td| {
                    let counts = self
                        .0
                        .trust_domains
                        .series(labels(&[("source_trust_domain", &td)]));
                    (td.into_boxed_str(), counts)
                })
                .collect(),
            cap,
            family: self.0.trust_domains.clone(),
            seen: self.0.seen_trust_domains.clone(),
        }
    }

    /// The series of listener `l`: its routes and its duration histogram.
    pub fn listener(&self, l: &Listener) -> ListenerCounts {
        let family = &self.0.routes;
        let unrouted = family.series(labels(&[
            ("listener", &l.name),
            ("resource", ""),
            ("route", ""),
        ]));
        let mut routes = vec![unrouted; l.routes.route_count().saturating_add(1)];
        for r in l.routes.virtual_hosts().iter().flat_map(|vh| &vh.routes) {
            let position = r.position.to_string();
            let name = r.name.as_deref().unwrap_or(&position);
            // `Route::index` numbers the table's routes from 0: every one has a slot. A route
            // that several virtual hosts hold shares its series.
            if let Some(slot) = routes.get_mut(r.index.saturating_add(1)) {
                *slot = family.series(labels(&[
                    ("listener", &l.name),
                    ("resource", &r.source),
                    ("route", name),
                ]));
            }
        }
        ListenerCounts {
            routes: routes.into_boxed_slice(),
            duration: self.0.durations.series(labels(&[("listener", &l.name)])),
        }
    }

    /// The connection counters of backend `b`.
    pub fn upstream(&self, b: &Backend) -> UpstreamCounts {
        UpstreamCounts(self.0.upstreams.series(labels(&[("backend", &b.name())])))
    }
}

/// The request counters of one source trust domain, held by a connection.
#[derive(Debug, Clone)]
pub struct TrustDomainSeries(Counts);

impl TrustDomainCounts {
    /// The series of a peer's trust domain (`None`: no peer), taken once per connection (the
    /// trust domain of a verified chain): one the configuration names, else one of its own
    /// while fewer than the cap have been seen, else `other`.
    pub fn series(&self, td: Option<&str>) -> TrustDomainSeries {
        let td = td.unwrap_or("");
        if let Some((_, counts)) = self.named.iter().find(|(t, _)| &**t == td) {
            return TrustDomainSeries(counts.clone());
        }
        let mut seen = self.seen.series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counts) = seen.get(td) {
            return TrustDomainSeries(counts.clone());
        }
        if seen.len() < self.cap {
            let counts = self.family.series(labels(&[("source_trust_domain", td)]));
            seen.insert(td.into(), counts.clone());
            return TrustDomainSeries(counts);
        }
        self.seen.overflow.fetch_add(1, Ordering::Relaxed);
        // `other` is always last.
        let other = self.named.last().map(|(_, c)| c.clone());
        TrustDomainSeries(other.unwrap_or_else(|| self.family.series(String::new())))
    }
}

impl TrustDomainSeries {
    /// Counts a request with its origin and status code.
    pub fn request(&self, origin: Option<Origin>, status: u16) {
        let code = usize::from(status.clamp(100, 599).saturating_sub(100));
        let codes = self.0.chunks_exact(CODES).nth(origin_index(origin));
        if let Some(c) = codes.and_then(|codes| codes.get(code)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl ListenerCounts {
    /// Counts a request under its route (`Route::index`; `None` when none matched) with its
    /// origin and the class of its status code.
    pub fn request(&self, route: Option<usize>, origin: Option<Origin>, status: u16) {
        let class = (usize::from(status.clamp(100, 599)) / 100).saturating_sub(1);
        let counts = self.routes.get(route.map_or(0, |r| r.saturating_add(1)));
        let classes = counts.and_then(|c| c.chunks_exact(CLASSES).nth(origin_index(origin)));
        if let Some(c) = classes.and_then(|classes| classes.get(class)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a request's time, from its head to the end of its response, to the histogram of
    /// its origin.
    pub fn duration(&self, origin: Option<Origin>, took: Duration) {
        let slots = self.duration.chunks_exact(SLOTS).nth(origin_index(origin));
        let Some([buckets @ .., sum, count]) = slots else {
            return;
        };
        let ms = took.as_millis() as u64;
        if let Some((_, c)) = BUCKETS_MS.iter().zip(buckets).find(|(le, _)| ms <= **le) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        sum.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A backend's counters, by slot: connections made and failed, then the retry outcomes (as
/// Envoy's `upstream_rq_retry`, `_retry_success`, `_retry_overflow`,
/// `_retry_limit_exceeded`), then requests a circuit breaker refused, then ejections, then
/// mirrored copies sent and dropped.
const UPSTREAM_SLOTS: usize = 10;
const RETRY_SLOTS: [(&str, usize); 4] = [
    ("retried", 2),
    ("succeeded", 3),
    ("overflow", 4),
    ("limit_exceeded", 5),
];
const OVERFLOW_SLOT: usize = 6;
const EJECTED_SLOT: usize = 7;
const MIRROR_SLOTS: [(&str, usize); 2] = [("sent", 8), ("dropped", 9)];

impl UpstreamCounts {
    /// Counts a connection attempt.
    pub fn connect(&self, ok: bool) {
        self.add(usize::from(!ok));
    }

    fn add(&self, slot: usize) {
        if let Some(c) = self.0.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A try was tried again.
    pub fn retried(&self) {
        self.add(2);
    }

    /// A request that was retried got a response no retry was needed for.
    pub fn retry_succeeded(&self) {
        self.add(3);
    }

    /// A retry was not made: `maxRetries` retries were in flight.
    pub fn retry_overflow(&self) {
        self.add(4);
    }

    /// A retry was not made: the route's attempts were used up.
    pub fn retry_limit_exceeded(&self) {
        self.add(5);
    }

    /// A request was refused by `http1MaxPendingRequests` or `http2MaxRequests`.
    pub fn overflow(&self) {
        self.add(OVERFLOW_SLOT);
    }

    /// Outlier detection ejected an endpoint.
    pub fn ejected(&self) {
        self.add(EJECTED_SLOT);
    }

    /// A mirrored copy was sent (`true`), or dropped: too many in flight, or its body was
    /// not kept whole.
    pub fn mirrored(&self, sent: bool) {
        self.add(if sent { 8 } else { 9 });
    }
}

/// Writes the Prometheus 0.0.4 text format: `# HELP` and `# TYPE` lines, then samples.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// Starts a metric family. Help text escapes `\` and newlines, as the format requires.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` as `labels()` renders them (empty for none).
    pub fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// `a="x",b="y"`, with the values escaped as the text format requires (`\`, `"`, newline):
/// the one place label values are written.
pub fn labels(pairs: &[(&str, &str)]) -> String {
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

/// Rendered label sets, joined in order (empty ones left out).
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// The origin label of a request: no identity (plaintext), local or remote.
fn origin_index(origin: Option<Origin>) -> usize {
    match origin {
        None => 0,
        Some(Origin::Local) => 1,
        Some(Origin::Remote) => 2,
    }
}

/// The counter of `key` in `counters`, which hold one per entry of `keys`, in order.
fn counter<'a>(keys: &[&str], counters: &'a [AtomicU64], key: &str) -> Option<&'a AtomicU64> {
    keys.iter()
        .zip(counters)
        .find_map(|(k, c)| (*k == key).then_some(c))
}

/// Counter `slot` of a series (0 for a slot it does not have).
fn load(counts: &[AtomicU64], slot: usize) -> u64 {
    counts.get(slot).map_or(0, |c| c.load(Ordering::Relaxed))
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
/// The counters of a series of each family with an `origin` label: one run per origin.
const TRUST_DOMAIN_WIDTH: usize = ORIGINS.len() * CODES;
const ROUTE_WIDTH: usize = ORIGINS.len() * CLASSES;
const DURATION_WIDTH: usize = ORIGINS.len() * SLOTS;
/// The label of every trust domain the configuration does not name.
const OTHER: &str = "other";

#[cfg(test)]
mod tests {
    use super::*;

    /// The text format's rules (Prometheus `exposition_formats.md`): a sample line is a metric
    /// name, optional `{label="value",...}`, a space and a value; label values escape `\`, `"`
    /// and newline; help text escapes `\` and newline.
    #[test]
    fn the_exposition_follows_the_text_format() {
        assert_eq!(
            labels(&[("a", "x"), ("b", "q\"uo\\te\nd")]),
            r#"a="x",b="q\"uo\\te\nd""#
        );
        let mut e = Encoder::default();
        e.family("m_total", "counter", "Line one\nback\\slash.");
        e.sample("m_total", &labels(&[("subject", "CN=\"a\\b\"")]), 3);
        e.sample("m_total", "", 1.5);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP m_total Line one\\nback\\\\slash.\n# TYPE m_total counter\n\
             m_total{subject=\"CN=\\\"a\\\\b\\\"\"} 3\nm_total 1.5\n"
        );
        for line in Metrics::new().render().lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
        }
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
