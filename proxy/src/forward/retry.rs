//! Whether a try is tried again, as Envoy's router decides it for the route's `RetryPolicy`:
//! the conditions (`retryOn`), the endpoints already tried, and the jittered backoff.

use std::time::Duration;

use http::{HeaderName, Response};

use meshgate_config::model::{Retry, RetryOn};

/// How a try ended without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: nothing was sent.
    Connect,
    /// The connection broke (or the stream was reset) before the response head. `sent`: the
    /// request may have reached the upstream; `refused`: an HTTP/2 `REFUSED_STREAM`.
    Reset { sent: bool, refused: bool },
    /// The try's `perTryTimeout` passed.
    PerTryTimeout,
}

/// Any response, or no response at all.
const NO_RESPONSE: RetryOn = RetryOn::FIVE_XX
    .union(RetryOn::GATEWAY_ERROR)
    .union(RetryOn::RESET);

/// Whether `policy` retries a try that ended with `failure`.
pub fn retries_failure(policy: &Retry, failure: Failure) -> bool {
    let on = policy.on;
    match failure {
        Failure::Connect => on.any(
            NO_RESPONSE
                .union(RetryOn::CONNECT_FAILURE)
                .union(RetryOn::RESET_BEFORE_REQUEST),
        ),
        Failure::Reset { sent: false, .. } => {
            on.any(NO_RESPONSE.union(RetryOn::RESET_BEFORE_REQUEST))
        }
        Failure::Reset { refused: true, .. } => on.any(NO_RESPONSE.union(RetryOn::REFUSED_STREAM)),
        Failure::Reset { .. } | Failure::PerTryTimeout => on.any(NO_RESPONSE),
    }
}

/// Whether `policy` retries a try answered with `response`. A response the upstream marked
/// `x-envoy-overloaded` is never retried, as Envoy does not.
pub fn retries_response<B>(policy: &Retry, response: &Response<B>) -> bool {
    let on = policy.on;
    let headers = response.headers();
    if headers.contains_key(OVERLOADED) {
        return false;
    }
    let status = response.status().as_u16();
    (on.any(RetryOn::FIVE_XX) && status >= 500)
        || (on.any(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
        || (on.any(RetryOn::RETRIABLE_4XX) && status == 409)
        || (on.any(RetryOn::RETRIABLE_STATUS_CODES) && policy.status_codes.contains(&status))
        || (on.any(RetryOn::ENVOY_RATELIMITED) && headers.contains_key(RATELIMITED))
        || (on.any(RetryOn::GRPC) && grpc_retries(on, headers))
}

// Names made once, not parsed from text at every lookup.
const OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
const RATELIMITED: HeaderName = HeaderName::from_static("x-envoy-ratelimited");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// gRPC: the status of a trailers-only response, in its head.
fn grpc_retries(on: RetryOn, headers: &http::HeaderMap) -> bool {
    let Some(code) = headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok())
    else {
        return false;
    };
    let condition = match code {
        1 => RetryOn::CANCELLED,
        4 => RetryOn::DEADLINE_EXCEEDED,
        8 => RetryOn::RESOURCE_EXHAUSTED,
        13 => RetryOn::INTERNAL,
        14 => RetryOn::UNAVAILABLE,
        _ => return false,
    };
    on.any(condition)
}

/// Whether `policy` could retry this request once it has been sent, so that its head and body
/// must be kept: not for Istio's default conditions on an HTTP/1.1 upstream and a request that
/// is not gRPC (connect failures and connections found closed give the request back unsent).
pub fn may_retry_after_send(policy: &Retry, http2: bool, grpc: impl FnOnce() -> bool) -> bool {
    let on = policy.on;
    on.any(
        NO_RESPONSE
            .union(RetryOn::RETRIABLE_4XX)
            .union(RetryOn::ENVOY_RATELIMITED),
    ) || (on.any(RetryOn::RETRIABLE_STATUS_CODES) && !policy.status_codes.is_empty())
        || (http2 && on.any(RetryOn::REFUSED_STREAM))
        || (on.any(RetryOn::GRPC) && grpc())
}

/// The wait before retry `n` (1 for the first): random in [0, (2^n - 1) * base], at most 10
/// times the base, as Envoy's jittered exponential backoff.
pub fn backoff(base: Duration, n: u32) -> Duration {
    let most = base.saturating_mul(10);
    let ceiling = base
        .checked_mul((1u32 << n.min(16)).saturating_sub(1))
        .map_or(most, |c| c.min(most));
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(..=nanos))
}

/// The endpoints of one request's tries, to prefer one not tried yet (Envoy's
/// `previous_hosts` predicate): a bit per endpoint, for the first 64; and the last one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried {
    set: u64,
    last: Option<usize>,
}

impl Tried {
    pub fn add(&mut self, endpoint: usize) {
        if endpoint < 64 {
            self.set |= 1 << endpoint;
        }
        self.last = Some(endpoint);
    }

    pub fn contains(self, endpoint: usize) -> bool {
        endpoint < 64 && self.set & (1 << endpoint) != 0
    }

    /// The endpoint of the latest try.
    pub fn last(self) -> Option<usize> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &str) -> Retry {
        let mut p = Retry::istio_default();
        p.on = RetryOn::default();
        for part in on.split(',') {
            match RetryOn::named(part) {
                Some(c) => p.on.insert(c),
                None => p.status_codes.push(part.parse().unwrap()),
            }
        }
        p
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn istio_default_retries_connect_failures_refused_streams_and_grpc_unavailable_only() {
        let p = Retry::istio_default();
        assert!(retries_failure(&p, Failure::Connect));
        assert!(retries_failure(
            &p,
            Failure::Reset {
                sent: true,
                refused: true
            }
        ));
        assert!(!retries_failure(
            &p,
            Failure::Reset {
                sent: true,
                refused: false
            }
        ));
        assert!(!retries_failure(&p, Failure::PerTryTimeout));
        for status in [500, 502, 503, 504, 409] {
            assert!(!retries_response(&p, &response(status, &[])), "{status}");
        }
        assert!(retries_response(
            &p,
            &response(200, &[("grpc-status", "14")])
        ));
        assert!(retries_response(
            &p,
            &response(200, &[("grpc-status", "1")])
        ));
        assert!(!retries_response(
            &p,
            &response(200, &[("grpc-status", "13")])
        ));
        assert!(!may_retry_after_send(&p, false, || false));
        assert!(may_retry_after_send(&p, true, || false));
        assert!(may_retry_after_send(&p, false, || true));
    }

    /// Condition, status, response headers, whether it is retried.
    type Case<'a> = (&'a str, u16, &'a [(&'a str, &'a str)], bool);

    #[test]
    fn each_condition_retries_what_envoy_documents() {
        let cases: &[Case] = &[
            ("5xx", 500, &[], true),
            ("5xx", 503, &[("x-envoy-overloaded", "true")], false),
            ("5xx", 404, &[], false),
            ("gateway-error", 502, &[], true),
            ("gateway-error", 504, &[], true),
            ("gateway-error", 500, &[], false),
            ("retriable-4xx", 409, &[], true),
            ("retriable-4xx", 429, &[], false),
            ("retriable-status-codes,429", 429, &[], true),
            ("retriable-status-codes,429", 430, &[], false),
            (
                "envoy-ratelimited",
                429,
                &[("x-envoy-ratelimited", "true")],
                true,
            ),
            ("envoy-ratelimited", 429, &[], false),
            ("internal", 200, &[("grpc-status", "13")], true),
            ("resource-exhausted", 200, &[("grpc-status", "8")], true),
            ("deadline-exceeded", 200, &[("grpc-status", "4")], true),
            ("deadline-exceeded", 200, &[("grpc-status", "14")], false),
            ("reset", 503, &[], false),
            ("connect-failure", 503, &[], false),
        ];
        for (on, status, headers, want) in cases {
            assert_eq!(
                retries_response(&policy(on), &response(*status, headers)),
                *want,
                "{on} {status} {headers:?}"
            );
        }
        let sent = Failure::Reset {
            sent: true,
            refused: false,
        };
        let unsent = Failure::Reset {
            sent: false,
            refused: false,
        };
        for (on, failure, want) in [
            ("5xx", Failure::Connect, true),
            ("5xx", sent, true),
            ("5xx", Failure::PerTryTimeout, true),
            ("gateway-error", Failure::PerTryTimeout, true),
            ("reset", sent, true),
            ("reset", Failure::PerTryTimeout, true),
            ("connect-failure", Failure::Connect, true),
            ("connect-failure", sent, false),
            ("reset-before-request", unsent, true),
            ("reset-before-request", Failure::Connect, true),
            ("reset-before-request", sent, false),
            ("refused-stream", sent, false),
            ("retriable-4xx", Failure::Connect, false),
        ] {
            assert_eq!(
                retries_failure(&policy(on), failure),
                want,
                "{on} {failure:?}"
            );
        }
    }

    #[test]
    fn backoff_is_jittered_below_the_exponential_ceiling_and_capped_at_ten_times_the_base() {
        let base = Duration::from_millis(25);
        for _ in 0..200 {
            assert!(backoff(base, 1) <= Duration::from_millis(25));
            assert!(backoff(base, 2) <= Duration::from_millis(75));
            assert!(backoff(base, 3) <= Duration::from_millis(175));
            assert!(backoff(base, 30) <= Duration::from_millis(250));
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| backoff(base, 3)).collect();
        assert!(spread.len() > 10, "not jittered: {spread:?}");
    }
}
