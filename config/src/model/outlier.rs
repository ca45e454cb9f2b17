//! `outlierDetection`: endpoints that keep failing are ejected from a backend's load balancing
//! for a while, as Istio configures Envoy's outlier detector (consecutive errors only; Istio
//! turns success-rate detection off).

use std::time::Duration;

use serde::Serialize;

/// A backend's outlier detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (and, unless split, local failures: connect failure, reset,
    /// timeout) that eject an endpoint; `None`: not enforced. Envoy's default 5.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502, 503, 504 answers (and, unless split, local failures); `None`: not
    /// enforced, Istio's default.
    pub consecutive_gateway: Option<u32>,
    /// `splitExternalLocalOriginErrors`: local failures count on their own, against
    /// `consecutive_local`, and not as 5xx.
    pub split_local: bool,
    /// `consecutiveLocalOriginFailures` when split; `None`: not enforced.
    pub consecutive_local: Option<u32>,
    /// How often the ejection count of an endpoint that stayed in decays by one (Envoy's
    /// `interval`, default 10 s).
    pub interval: Duration,
    /// An ejection lasts this times the endpoint's ejection count (default 30 s), at most
    /// `MAX_EJECTION_TIME` or the base if larger.
    pub base_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at once (default 10); one endpoint may
    /// always be, as Envoy's detector checks the share ejected before the ejection.
    pub max_ejection_percent: u32,
    /// Below this share of endpoints in, the ejections are ignored and every endpoint takes
    /// traffic (Envoy's panic threshold, Istio's `minHealthPercent`; 0, the default, never).
    pub min_health_percent: u32,
}

impl OutlierDetection {
    /// Envoy's `max_ejection_time` default.
    pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            split_local: false,
            consecutive_local: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}
