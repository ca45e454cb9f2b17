//! What `meshgate echo` served, shown at `/stats/prometheus` on its own port: a latency
//! histogram by status class and request, byte and connection counters. Every count is an
//! atomic bumped in place, so a request takes no lock and allocates nothing to be counted;
//! only rendering allocates.
//!
//! A request's latency runs from its head to its response's head: the wait for the request
//! body and any `delay` are in it, the time to write the response body is not. Labels are
//! bounded: `code_class` is `1xx` to `9xx` (a status is 100 to 999) and `mode` is `json` or
//! `fortio`. Requests for `/stats/prometheus` itself are not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::metrics::{labels, Encoder};

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// meshgate's JSON description of the request.
    Json,
    /// fortio's echo parameters.
    Fortio,
}

/// The echo server's counters.
#[derive(Debug)]
pub struct Stats {
    /// By status class, `1xx` first.
    durations: [Histogram; CLASSES.len()],
    /// By mode (`MODES`), then status class.
    requests: [[AtomicU64; CLASSES.len()]; MODES.len()],
    /// Request and response body bytes.
    received: AtomicU64,
    sent: AtomicU64,
    connections: AtomicU64,
    /// Connections closed because a request asked for it (`close`).
    closed: AtomicU64,
}

/// One status class's latencies: a count per bucket of `BUCKETS` (not cumulative: the sum is
/// taken when rendering), their sum in nanoseconds, and how many.
#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Stats {
    pub const fn new() -> Self {
        Self {
            durations: [const { Histogram::new() }; CLASSES.len()],
            requests: [const { [const { AtomicU64::new(0) }; CLASSES.len()] }; MODES.len()],
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        }
    }

    /// Counts one answered request: its latency, its status and its body bytes each way.
    pub fn request(
        &self,
        mode: Mode,
        status: StatusCode,
        took: Duration,
        received: u64,
        sent: u64,
    ) {
        let class = usize::from(status.as_u16().checked_div(100).unwrap_or(0)).saturating_sub(1);
        if let Some(h) = self.durations.get(class) {
            h.observe(took);
        }
        let by_mode = match mode {
            Mode::Json => self.requests.first(),
            Mode::Fortio => self.requests.get(1),
        };
        if let Some(c) = by_mode.and_then(|classes| classes.get(class)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.received.fetch_add(received, Ordering::Relaxed);
        self.sent.fetch_add(sent, Ordering::Relaxed);
    }

    /// Counts an accepted connection.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection a request asked to close.
    pub fn closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut e = Encoder::default();
        e.family(
            "meshgate_echo_requests_total",
            "counter",
            "Requests the echo server answered, by mode (json, fortio) and status class.",
        );
        for (mode, classes) in MODES.iter().zip(&self.requests) {
            for (class, c) in CLASSES.iter().zip(classes) {
                let n = c.load(Ordering::Relaxed);
                if n != 0 {
                    let l = labels(&[("mode", mode), ("code_class", class)]);
                    e.sample("meshgate_echo_requests_total", &l, n);
                }
            }
        }
        e.family(
            "meshgate_echo_request_duration_seconds",
            "histogram",
            "From the request head to the response head (request body and delay included), \
             by status class.",
        );
        for (class, h) in CLASSES.iter().zip(&self.durations) {
            h.encode(&mut e, class);
        }
        for (name, help, c) in [
            (
                "meshgate_echo_received_bytes_total",
                "Request body bytes received.",
                &self.received,
            ),
            (
                "meshgate_echo_sent_bytes_total",
                "Response body bytes sent.",
                &self.sent,
            ),
            (
                "meshgate_echo_connections_total",
                "Connections accepted.",
                &self.connections,
            ),
            (
                "meshgate_echo_closed_connections_total",
                "Connections closed after a response because the request asked (close).",
                &self.closed,
            ),
        ] {
            e.family(name, "counter", help);
            e.sample(name, "", c.load(Ordering::Relaxed));
        }
        e.finish()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // Past the last bucket is counted by `count` alone: `+Inf` is the count.
        if let Some((_, c)) = BUCKETS
            .iter()
            .zip(&self.buckets)
            .find(|((le, _), _)| ns <= *le)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn encode(&self, e: &mut Encoder, class: &str) {
        const NAME: &str = "meshgate_echo_request_duration_seconds";
        // Buckets are read before the count, and bumped before it: a request counted in a
        // bucket but not yet in the count only makes `+Inf` catch up below.
        let mut cumulative = 0u64;
        let mut samples = [0u64; BUCKETS.len()];
        for (sample, c) in samples.iter_mut().zip(&self.buckets) {
            cumulative = cumulative.saturating_add(c.load(Ordering::Relaxed));
            *sample = cumulative;
        }
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        if count == 0 {
            return;
        }
        let class_label = labels(&[("code_class", class)]);
        for ((_, le), n) in BUCKETS.iter().zip(samples) {
            let l = labels(&[("code_class", class), ("le", le)]);
            e.sample(&format!("{NAME}_bucket"), &l, n);
        }
        let l = labels(&[("code_class", class), ("le", "+Inf")]);
        e.sample(&format!("{NAME}_bucket"), &l, count);
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        e.sample(&format!("{NAME}_sum"), &class_label, sum);
        e.sample(&format!("{NAME}_count"), &class_label, count);
    }
}

/// The `mode` label values, in the order of `Stats::requests`.
const MODES: [&str; 2] = ["json", "fortio"];

/// The `code_class` label values: a status is 100 to 999.
const CLASSES: [&str; 9] = [
    "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
];

/// Histogram bucket bounds in nanoseconds, with their `le` labels: from 100 µs (a loopback
/// echo) to a minute (the longest `/delay/<ms>`).
const BUCKETS: [(u64, &str); 18] = [
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
    (30_000_000_000, "30"),
    (60_000_000_000, "60"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_by_class() {
        let s = Stats::new();
        let ok = StatusCode::OK;
        s.request(Mode::Fortio, ok, Duration::from_micros(50), 3, 4);
        s.request(Mode::Fortio, ok, Duration::from_millis(30), 0, 0);
        s.request(Mode::Json, ok, Duration::from_secs(120), 0, 0);
        s.request(
            Mode::Fortio,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::ZERO,
            0,
            0,
        );
        let text = s.render();
        let has = |line: &str| {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        };
        has(r#"meshgate_echo_request_duration_seconds_bucket{code_class="2xx",le="0.0001"} 1"#);
        has(r#"meshgate_echo_request_duration_seconds_bucket{code_class="2xx",le="0.025"} 1"#);
        has(r#"meshgate_echo_request_duration_seconds_bucket{code_class="2xx",le="0.05"} 2"#);
        has(r#"meshgate_echo_request_duration_seconds_bucket{code_class="2xx",le="60"} 2"#);
        has(r#"meshgate_echo_request_duration_seconds_bucket{code_class="2xx",le="+Inf"} 3"#);
        has(r#"meshgate_echo_request_duration_seconds_count{code_class="2xx"} 3"#);
        let sum = r#"meshgate_echo_request_duration_seconds_sum{code_class="2xx"} 120.03"#;
        assert!(text.contains(sum), "no {sum:?} in\n{text}");
        has(r#"meshgate_echo_request_duration_seconds_count{code_class="5xx"} 1"#);
        has(r#"meshgate_echo_requests_total{mode="fortio",code_class="2xx"} 2"#);
        has(r#"meshgate_echo_requests_total{mode="json",code_class="2xx"} 1"#);
        has(r#"meshgate_echo_requests_total{mode="fortio",code_class="5xx"} 1"#);
        has("meshgate_echo_received_bytes_total 3");
        has("meshgate_echo_sent_bytes_total 4");
        assert!(!text.contains("4xx"), "no empty series:\n{text}");
    }
}
