//! `retries`: when a request is tried again, as Istio's `ConvertPolicy` sets Envoy's
//! RetryPolicy (`retry_on`, `num_retries`, `per_try_timeout`, the backoff, and the
//! `previous_hosts` predicate).

use std::time::Duration;

use serde::Serialize;

/// A route's retry policy. A route without one (`attempts: 0`) tries once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retry {
    /// Tries after the first (`attempts`; Istio's default is 2).
    pub attempts: u32,
    /// Each try's deadline for the response head; `None`: only the route's `timeout`.
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    /// The status codes `retriable-status-codes` retries (the numbers in `retryOn`).
    pub status_codes: Vec<u16>,
    /// The backoff's base interval (`backoff`; Envoy's default 25 ms). The wait before retry n
    /// is random in [0, (2^n - 1) * base], at most 10 times the base.
    pub backoff: Duration,
    /// A retry goes to an endpoint not tried yet, when there is one (`retryIgnorePreviousHosts`,
    /// on by default). Consistent hashing keeps the endpoint the hash chose.
    pub other_hosts: bool,
}

impl Retry {
    /// Istio's policy for a route without `retries`: 2 retries on connect failures, refused
    /// HTTP/2 streams and gRPC `UNAVAILABLE` and `CANCELLED` (its `retriable-status-codes`
    /// names no code, so it retries none).
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn::ISTIO_DEFAULT,
            status_codes: Vec::new(),
            backoff: Self::BASE_INTERVAL,
            other_hosts: true,
        }
    }

    /// Envoy's default base interval.
    pub const BASE_INTERVAL: Duration = Duration::from_millis(25);
}

/// Envoy's `retry_on` conditions, a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u16);

impl RetryOn {
    /// Any 5xx response, or no response at all (connect failure, reset, per-try timeout).
    pub const FIVE_XX: Self = Self(1);
    /// A 502, 503 or 504 response, or no response at all.
    pub const GATEWAY_ERROR: Self = Self(1 << 1);
    /// No response at all: connect failure, reset, per-try timeout.
    pub const RESET: Self = Self(1 << 2);
    /// The connection could not be made.
    pub const CONNECT_FAILURE: Self = Self(1 << 3);
    /// A 409 response.
    pub const RETRIABLE_4XX: Self = Self(1 << 4);
    /// The HTTP/2 upstream refused the stream (`REFUSED_STREAM`).
    pub const REFUSED_STREAM: Self = Self(1 << 5);
    /// A response whose status is among `status_codes`.
    pub const RETRIABLE_STATUS_CODES: Self = Self(1 << 6);
    /// A reset before the request was sent (a connect failure, or a pooled connection found
    /// closed).
    pub const RESET_BEFORE_REQUEST: Self = Self(1 << 7);
    /// A response with `x-envoy-ratelimited`.
    pub const ENVOY_RATELIMITED: Self = Self(1 << 8);
    /// gRPC responses by `grpc-status`: 1 CANCELLED, 4 DEADLINE_EXCEEDED, 13 INTERNAL,
    /// 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE.
    pub const CANCELLED: Self = Self(1 << 9);
    pub const DEADLINE_EXCEEDED: Self = Self(1 << 10);
    pub const INTERNAL: Self = Self(1 << 11);
    pub const RESOURCE_EXHAUSTED: Self = Self(1 << 12);
    pub const UNAVAILABLE: Self = Self(1 << 13);

    /// Istio's default `retryOn`.
    pub const ISTIO_DEFAULT: Self = Self(
        Self::CONNECT_FAILURE.0
            | Self::REFUSED_STREAM.0
            | Self::UNAVAILABLE.0
            | Self::CANCELLED.0
            | Self::RETRIABLE_STATUS_CODES.0,
    );

    /// Every gRPC condition.
    pub const GRPC: Self = Self(
        Self::CANCELLED.0
            | Self::DEADLINE_EXCEEDED.0
            | Self::INTERNAL.0
            | Self::RESOURCE_EXHAUSTED.0
            | Self::UNAVAILABLE.0,
    );

    /// The conditions Envoy knows by name, as `retryOn` writes them.
    pub const NAMES: [(&'static str, Self); 14] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("reset", Self::RESET),
        ("reset-before-request", Self::RESET_BEFORE_REQUEST),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("envoy-ratelimited", Self::ENVOY_RATELIMITED),
        ("retriable-4xx", Self::RETRIABLE_4XX),
        ("refused-stream", Self::REFUSED_STREAM),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("cancelled", Self::CANCELLED),
        ("deadline-exceeded", Self::DEADLINE_EXCEEDED),
        ("internal", Self::INTERNAL),
        ("resource-exhausted", Self::RESOURCE_EXHAUSTED),
        ("unavailable", Self::UNAVAILABLE),
    ];

    /// The condition named `name`, as Envoy spells it.
    pub fn named(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
    }

    /// Both sets' conditions.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether any of `other`'s conditions is in the set.
    pub fn any(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(_, c)| self.any(*c))
            .map(|(n, _)| *n)
            .collect();
        s.serialize_str(&names.join(","))
    }
}
