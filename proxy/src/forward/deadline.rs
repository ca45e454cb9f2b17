//! The route's timeout as Envoy's global route timeout runs: from the moment the whole request
//! is in (at once, for a request without a body) until the response is whole, every try and
//! backoff included; and `perTryTimeout` up to each try's response head, the first try's from
//! that same moment, as Envoy defers it (a retry's request is in whole).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::stream::StreamClock;

/// When the route's timeout ends.
#[derive(Debug, Clone)]
pub(crate) enum Deadline {
    /// Known: the request was in when it was routed.
    At(Instant),
    /// This long after the request body is in, which its stream's clock notes; until some of
    /// it is read (no try has taken it yet), this long after routing (the instant given).
    AfterBody(Arc<StreamClock>, Duration, Instant),
}

impl Deadline {
    /// The route's `timeout` for a request whose body is still `arriving`
    /// (`RequestBody::arriving`); `None` past what the clock can say.
    pub(crate) fn new(timeout: Duration, arriving: Option<&Arc<StreamClock>>) -> Option<Self> {
        match arriving {
            Some(clock) => Some(Self::AfterBody(clock.clone(), timeout, Instant::now())),
            None => Instant::now().checked_add(timeout).map(Self::At),
        }
    }

    /// The deadline, once it is known.
    pub(crate) fn known(&self) -> Option<Instant> {
        match self {
            Self::At(at) => Some(*at),
            Self::AfterBody(clock, timeout, routed) => match clock.received_at() {
                Some(t) => Instant::from_std(t).checked_add(*timeout),
                // A body nobody reads yet (a try waiting for a connection) does not hold the
                // timeout off: Envoy would have read it.
                None if !clock.is_body_read() => routed.checked_add(*timeout),
                None => None,
            },
        }
    }

    /// When to look again: the deadline once known; while the body is still coming, the
    /// timeout from now, as the deadline cannot come sooner. `None`: never.
    fn next(&self) -> Option<Instant> {
        match (self, self.known()) {
            (Self::AfterBody(_, timeout, _), None) => Instant::now().checked_add(*timeout),
            (_, known) => known,
        }
    }
}

pin_project_lite::pin_project! {
    /// A timer that fires at a `Deadline`.
    #[derive(Debug)]
    pub(crate) struct RouteTimer {
        deadline: Deadline,
        #[pin]
        sleep: Sleep,
    }
}

impl RouteTimer {
    /// `None` when the deadline never comes.
    pub(crate) fn new(deadline: &Deadline) -> Option<Self> {
        let next = deadline.next()?;
        Some(Self {
            deadline: deadline.clone(),
            sleep: tokio::time::sleep_until(next),
        })
    }

    /// Ready once the deadline has passed, and every time after; pending, the waker
    /// registered, before.
    pub(crate) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if this.deadline.known().is_some_and(|at| at <= Instant::now()) {
                return Poll::Ready(());
            }
            match this.deadline.next() {
                Some(next) => this.sleep.as_mut().reset(next),
                None => return Poll::Pending,
            }
        }
    }
}

/// Which timeout ended a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The try's `perTryTimeout`: a retry may follow.
    PerTry,
    /// The route's timeout: the request is over.
    Route,
}

pin_project_lite::pin_project! {
    /// `inner`, given up at the try's `perTryTimeout` or the route's deadline.
    pub(crate) struct Within<F> {
        #[pin]
        inner: F,
        #[pin]
        per_try: Option<RouteTimer>,
        #[pin]
        route: Option<RouteTimer>,
    }
}

impl<F: Future> Within<F> {
    pub(crate) fn new(per_try: Option<&Deadline>, deadline: Option<&Deadline>, inner: F) -> Self {
        Self {
            inner,
            per_try: per_try.and_then(RouteTimer::new),
            route: deadline.and_then(RouteTimer::new),
        }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Expired>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // The route's first: when both have passed, no retry could follow.
        if let Some(route) = this.route.as_pin_mut() {
            if route.poll_expired(cx).is_ready() {
                return Poll::Ready(Err(Expired::Route));
            }
        }
        if let Some(per_try) = this.per_try.as_pin_mut() {
            if per_try.poll_expired(cx).is_ready() {
                return Poll::Ready(Err(Expired::PerTry));
            }
        }
        Poll::Pending
    }
}
