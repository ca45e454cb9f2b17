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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    pub status: u16,
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
    /// Envoy's response flag: `NR`, `UF`, `UH`, `UC`, `UT`, `UR`, `DC`, `RBAC`, `DPE`, or `-`.
    pub response_flags: &'a str,
}

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
            self.status,
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

/// `SystemTime` as RFC 3339 UTC with milliseconds, as Envoy's `%START_TIME%`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Lines the writer may fall behind by before lines are dropped.
const QUEUE: usize = 8192;

#[cfg(test)]
mod tests {
    use super::*;

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
