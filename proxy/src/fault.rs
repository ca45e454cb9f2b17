//! Fault injection, as Envoy's fault filter does it for a route's `fault`: a delay for its
//! share of requests, then an abort for its share (each drawn on its own, so a request may be
//! delayed and then aborted). What was injected is said by Envoy's flags, `DI` and `FI`.

use meshgate_config::model::{AbortStatus, Fault};

/// What the dice decided for one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Injected {
    pub delayed: bool,
    pub abort: Option<AbortStatus>,
}

/// Delays the request if its draw says so, then says whether to abort it.
pub async fn inject(fault: &Fault) -> Injected {
    let mut injected = Injected::default();
    if let Some(d) = &fault.delay {
        if draw(d.per_million) {
            tokio::time::sleep(d.fixed).await;
            injected.delayed = true;
        }
    }
    if let Some(a) = &fault.abort {
        if draw(a.per_million) {
            injected.abort = Some(a.status);
        }
    }
    injected
}

/// True for `per_million` requests in a million.
fn draw(per_million: u32) -> bool {
    per_million >= 1_000_000 || (per_million > 0 && fastrand::u32(0..1_000_000) < per_million)
}
