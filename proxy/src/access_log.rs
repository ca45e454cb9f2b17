//! The access log: one JSON line per request, and one per refused handshake, written by a task
//! of its own so that the request path never waits on the disk.
//!
//! The request path formats its line and hands it over without blocking; if the writer falls
//! more than `QUEUE` lines behind, lines are dropped and counted (`dropped()`), never queued
//! without bound.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use meshgate_config::model::AccessLogEncoding;
use tokio::sync::mpsc;

/// A handle to the writer.
#[derive(Debug, Clone)]
pub struct AccessLog {
    lines: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
    encoding: AccessLogEncoding,
}

/// An entry, in either encoding.
pub trait Entry: Serialize {
    /// The entry as one line of text (`meshConfig.accessLogEncoding: TEXT`), without its
    /// newline.
    fn text(&self) -> String;
}

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct RequestEntry<'a> {
    pub start_time: &'a str,
    pub listener: &'a str,
    pub peer: String,
    /// The trusted client address (`numTrustedProxies`): Envoy's `%DOWNSTREAM_REMOTE_ADDRESS%`,
    /// where `peer` is `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`.
    pub client_address: String,
    pub origin: Option<&'a str>,
    pub source_trust_domain: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// The response's status; absent when there was no response (the client went away
    /// first).
    pub status: Option<u16>,
    /// `host:port` of the backend, when the request was forwarded.
    pub upstream: Option<String>,
    /// From the request head to the end of the response (Envoy's `%DURATION%`).
    pub duration_ms: f64,
    /// From the request head to the response head (Envoy's `%RESPONSE_DURATION%`); absent
    /// when there was no response.
    pub response_duration_ms: Option<f64>,
    /// Body bytes received from the client and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Envoy's response flags, comma-separated, or `-`.
    pub response_flags: ResponseFlags,
    /// Why the TLS handshake with the upstream failed (Envoy's
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`): `<reason>: <detail>`, the reason as a refused
    /// client's, the detail with what was expected and what the server presented. Left out
    /// when there was none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_transport_failure_reason: Option<&'a str>,
}

/// One of Envoy's response flags: what went differently for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// `DPE`: the request head was malformed.
    DownstreamProtocolError,
    /// `RBAC`: an AuthorizationPolicy denied it.
    RbacDenied,
    /// `NR`: no route.
    NoRoute,
    /// `NC`: the route's cluster (subset) does not exist.
    NoCluster,
    /// `UH`: no healthy upstream endpoint.
    NoHealthyUpstream,
    /// `UF`: the upstream connection could not be made.
    UpstreamConnectionFailure,
    /// `UC`: the upstream connection broke before the response head.
    UpstreamConnectionTermination,
    /// `UT`: the route's timeout passed.
    UpstreamRequestTimeout,
    /// `UR`: the upstream broke off the response body.
    UpstreamRemoteReset,
    /// `DC`: the client went away before the response ended.
    DownstreamConnectionTermination,
    /// `DI`: the route's fault delayed the request.
    DelayInjected,
    /// `FI`: the route's fault aborted the request.
    FaultInjected,
    /// `UO`: a circuit breaker (`http1MaxPendingRequests`, `http2MaxRequests`) refused it.
    UpstreamOverflow,
    /// `URX`: the last try failed too, and the route's retries were used up.
    UpstreamRetryLimitExceeded,
    /// `SI`: nothing moved on the stream for `limits.streamIdleTimeout`.
    StreamIdleTimeout,
}

impl ResponseFlag {
    /// Envoy's short code.
    pub fn code(self) -> &'static str {
        match self {
            Self::DownstreamProtocolError => "DPE",
            Self::RbacDenied => "RBAC",
            Self::NoRoute => "NR",
            Self::NoCluster => "NC",
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamConnectionTermination => "UC",
            Self::UpstreamRequestTimeout => "UT",
            Self::UpstreamRemoteReset => "UR",
            Self::DownstreamConnectionTermination => "DC",
            Self::DelayInjected => "DI",
            Self::FaultInjected => "FI",
            Self::UpstreamOverflow => "UO",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::StreamIdleTimeout => "SI",
        }
    }
}

/// The flags of one request: a set, printed as Envoy prints `%RESPONSE_FLAGS%` (codes joined
/// by `,`, or `-` for none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    pub fn insert(&mut self, flag: ResponseFlag) {
        self.0 |= 1 << flag as u16;
    }

    pub fn contains(self, flag: ResponseFlag) -> bool {
        self.0 & (1 << flag as u16) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for flag in ALL_FLAGS {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(flag.code())?;
                first = false;
            }
        }
        Ok(())
    }
}

impl Serialize for ResponseFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Every flag, in the order they are printed.
const ALL_FLAGS: [ResponseFlag; 15] = [
    ResponseFlag::DownstreamProtocolError,
    ResponseFlag::RbacDenied,
    ResponseFlag::NoRoute,
    ResponseFlag::NoCluster,
    ResponseFlag::NoHealthyUpstream,
    ResponseFlag::UpstreamConnectionFailure,
    ResponseFlag::UpstreamConnectionTermination,
    ResponseFlag::UpstreamRequestTimeout,
    ResponseFlag::UpstreamRemoteReset,
    ResponseFlag::DownstreamConnectionTermination,
    ResponseFlag::DelayInjected,
    ResponseFlag::FaultInjected,
    ResponseFlag::UpstreamOverflow,
    ResponseFlag::UpstreamRetryLimitExceeded,
    ResponseFlag::StreamIdleTimeout,
];

/// One refused handshake, as logged.
#[derive(Debug, Serialize)]
pub struct HandshakeEntry<'a> {
    pub start_time: &'a str,
    pub event: &'static str,
    pub listener: &'a str,
    pub peer: String,
    pub reason: &'static str,
    pub detail: String,
}

impl AccessLog {
    /// Opens (appending, creating) `path` and starts the writer task.
    pub fn open(path: &Path, encoding: AccessLogEncoding) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (lines, mut rx) = mpsc::channel::<String>(QUEUE);
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            while let Some(line) = rx.blocking_recv() {
                let _ = out.write_all(line.as_bytes());
                // Flush whenever the queue is drained, so lines appear promptly when quiet.
                while let Ok(line) = rx.try_recv() {
                    let _ = out.write_all(line.as_bytes());
                }
                let _ = out.flush();
            }
        });
        Ok(Self {
            lines,
            dropped: Arc::new(AtomicU64::new(0)),
            encoding,
        })
    }

    /// Logs one entry without waiting.
    pub fn log(&self, entry: &impl Entry) {
        let mut line = match self.encoding {
            AccessLogEncoding::Json => match serde_json::to_string(entry) {
                Ok(line) => line,
                Err(_) => return,
            },
            AccessLogEncoding::Text => entry.text(),
        };
        line.push('\n');
        if self.lines.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Entry for RequestEntry<'_> {
    /// Envoy's default format's order, as far as meshgate has the fields: `[start] "METHOD
    /// PATH" STATUS FLAGS BYTES_IN BYTES_OUT DURATION_MS "CLIENT" "AUTHORITY" "UPSTREAM"`, then
    /// the listener, the peer, the origin and the principal (`-` for none).
    fn text(&self) -> String {
        let or = |v: Option<&str>| v.unwrap_or("-").to_string();
        format!(
            "[{}] \"{} {}\" {} {} {} {} {:.0} \"{}\" \"{}\" \"{}\" {} {} {} {}",
            self.start_time,
            self.method,
            self.path,
            self.status.unwrap_or(0),
            self.response_flags,
            self.bytes_in,
            self.bytes_out,
            self.duration_ms,
            self.client_address,
            self.authority,
            or(self.upstream.as_deref()),
            self.listener,
            self.peer,
            or(self.origin),
            or(self.principal),
        )
    }
}

impl Entry for HandshakeEntry<'_> {
    fn text(&self) -> String {
        format!(
            "[{}] {} {} {} {}: {}",
            self.start_time, self.event, self.listener, self.peer, self.reason, self.detail
        )
    }
}

/// `SystemTime` as RFC 3339 UTC with milliseconds, as Envoy's `%START_TIME%`
/// (`%Y-%m-%dT%H:%M:%S.%3fZ`), the calendar from the `time` crate.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Lines the writer may fall behind by before lines are dropped.
const QUEUE: usize = 8192;

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn flags_print_as_envoys() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.to_string(), "-");
        f.insert(ResponseFlag::DelayInjected);
        f.insert(ResponseFlag::UpstreamConnectionFailure);
        assert_eq!(f.to_string(), "UF,DI");
        assert!(f.contains(ResponseFlag::DelayInjected));
        assert!(!f.contains(ResponseFlag::NoRoute));
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64, ms: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_944_723, 456), "2026-11-29T09:32:03.456Z");
    }
}
