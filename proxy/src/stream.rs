//! Per-stream bounds, as Envoy's connection manager keeps them: `stream_idle_timeout` (a
//! request or HTTP/2 stream on which nothing moves either way for that long is answered 408
//! before its response head, and cut after it) and `request_timeout` (a request body not
//! received whole in time is answered 408).
//!
//! A `StreamClock` is what one stream's parts tell each other: progress (request bytes read,
//! response bytes written), whether the response has begun, and whether the request body is
//! in. The watcher that reads it is one timer per connection, ticking while the connection
//! lives: an HTTP/1.1 request costs it nothing, an HTTP/2 stream a place in the connection's
//! `Streams`. A stall is seen within a quarter of the timeout after it is due.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::time::Sleep;

use crate::forward::deadline::RouteTimer;

/// One stream's progress and state, shared by its request body, its response body, the
/// request's task and the watcher.
#[derive(Debug, Default)]
pub struct StreamClock {
    /// Bumped by progress either way.
    progress: AtomicU32,
    /// The response head went to the client: a stall from now on cuts the stream.
    responding: AtomicBool,
    /// The whole request body was received: the request timeout no longer runs.
    received: AtomicBool,
    /// When a request body read through `RequestBody` came in whole, in nanoseconds after
    /// `epoch()`, plus one; 0 while it has not (or for a request without a body).
    received_at: AtomicU64,
    /// Some of that body has been read (an upstream try takes it).
    body_read: AtomicBool,
    /// Bumped by `restart`: a body of an earlier request on the connection, still read after
    /// the next one began, does not speak for it.
    generation: AtomicU32,
    /// The stream idle timeout expired.
    expired: AtomicBool,
    /// It expired after the response head: the stream is to be cut.
    cut: AtomicBool,
    /// The request's task, woken when the timeout expires before its response head.
    task: AtomicWaker,
    /// An HTTP/2 stream's route timeout, once its response head is out (`route_deadline`):
    /// run by the stream's executor, which also sees it pass while flow control keeps the
    /// response body from being polled.
    route: Mutex<Option<Pin<Box<RouteTimer>>>>,
    /// `route` holds a timer: what the executor looks at on every poll.
    route_armed: AtomicBool,
    /// The route's timeout cut the stream (Envoy's `UT`).
    route_cut: AtomicBool,
}

/// The instant `received_at` counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

tokio::task_local! {
    /// The clock of the HTTP/2 stream being polled (HTTP/1.1 requests use their
    /// connection's, one request at a time).
    static STREAM: Arc<StreamClock>;
}

impl StreamClock {
    /// The clock of the HTTP/2 stream being polled, if it is one.
    pub fn current() -> Option<Arc<StreamClock>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// A new request on a connection's clock (HTTP/1.1 reuses it).
    pub fn restart(&self) {
        self.responding.store(false, Ordering::Relaxed);
        self.received.store(false, Ordering::Relaxed);
        self.received_at.store(0, Ordering::Relaxed);
        self.body_read.store(false, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.expired.store(false, Ordering::Relaxed);
        self.moved();
    }

    /// Something moved on the stream.
    ///
    /// A locked add: the request's body (read by the upstream's task) and the response's side
    /// (the connection's task) move the same clock at once, and a load and a store could put a
    /// stale count back over a newer one, which the watcher would take for a stall.
    #[inline]
    pub fn moved(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// The response head is out.
    pub fn responding(&self) {
        self.responding.store(true, Ordering::Release);
        self.moved();
    }

    /// The request body is in.
    pub fn received(&self) {
        self.received.store(true, Ordering::Release);
    }

    /// The request this clock times now, to tell its body from an earlier request's.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Some of the request body of `generation` has been read.
    pub fn body_read(&self, generation: u32) {
        if generation == self.generation() {
            self.body_read.store(true, Ordering::Release);
        }
    }

    /// Whether some of the request body has been read.
    pub fn is_body_read(&self) -> bool {
        self.body_read.load(Ordering::Acquire)
    }

    /// The request body of `generation`, read through `RequestBody`, is in, now: the route's
    /// timeout starts. A body of an earlier request says nothing.
    pub fn received_now(&self, generation: u32) {
        if generation != self.generation() {
            return;
        }
        // tokio's clock, as the timers that read it.
        let now = tokio::time::Instant::now().into_std();
        let since = now.saturating_duration_since(epoch());
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.received_at
            .store(nanos.saturating_add(1), Ordering::Release);
        self.received();
    }

    /// When the request body read through `RequestBody` came in whole, once it has.
    pub fn received_at(&self) -> Option<Instant> {
        let nanos = self.received_at.load(Ordering::Acquire).checked_sub(1)?;
        epoch().checked_add(Duration::from_nanos(nanos))
    }

    /// Whether the request body is in.
    pub fn is_received(&self) -> bool {
        self.received.load(Ordering::Acquire)
    }

    /// Runs the route's timeout over the rest of this HTTP/2 stream's response: when it
    /// passes before the response ends, the stream's executor resets the stream, even while
    /// the client's flow-control window keeps hyper from polling the body.
    pub(crate) fn route_deadline(&self, timer: RouteTimer) {
        *self.route.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::pin(timer));
        self.route_armed.store(true, Ordering::Release);
    }

    /// The route's timeout is over without cutting the stream: the upstream's response is
    /// whole, or the stream ended. The timer goes, and with it the clock it may hold.
    pub(crate) fn end_route_deadline(&self) {
        // Every stream ends here: a plain load spares the locked swap when none was armed.
        if self.route_armed.load(Ordering::Acquire)
            && self.route_armed.swap(false, Ordering::AcqRel)
        {
            *self.route.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Whether the route's timeout cut the stream (Envoy's `UT`).
    pub fn route_cut(&self) -> bool {
        self.route_cut.load(Ordering::Acquire)
    }

    /// Ready once the route's timeout has passed (the stream is to be cut); pending, with the
    /// waker registered, before, and always without one.
    fn poll_route(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.route_armed.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut route = self.route.lock().unwrap_or_else(|p| p.into_inner());
        let Some(timer) = route.as_mut() else {
            return Poll::Pending;
        };
        if timer.as_mut().poll_expired(cx).is_pending() {
            return Poll::Pending;
        }
        *route = None;
        self.route_armed.store(false, Ordering::Release);
        self.route_cut.store(true, Ordering::Release);
        Poll::Ready(())
    }

    /// Whether the stream idle timeout expired on it (Envoy's `SI`).
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    fn expire(&self) {
        self.expired.store(true, Ordering::Release);
        self.task.wake();
    }

    /// One tick of a watch over this clock: progress (or no stream, `busy` false) restarts
    /// `stall`; `timeout` without it expires the clock and says whether the stream is to be
    /// cut (its response had begun), which is then noted for `cut_off`.
    fn tick(&self, stall: &mut Stall, tick: Duration, timeout: Duration, busy: bool) -> bool {
        let now = self.progress.load(Ordering::Relaxed);
        if now != stall.seen || !busy {
            stall.seen = now;
            stall.stalled = Duration::ZERO;
            return false;
        }
        stall.stalled = stall.stalled.saturating_add(tick);
        if stall.stalled < timeout {
            return false;
        }
        stall.stalled = Duration::ZERO;
        let responding = self.responding.load(Ordering::Acquire);
        if responding {
            self.cut.store(true, Ordering::Release);
        }
        self.expire();
        responding
    }

    /// Resolves when the connection's watcher cut the stream.
    fn cut_off(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            self.task.register(cx.waker());
            if self.cut.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Resolves when the stream stalled for `timeout` with its response begun (it is to be
    /// cut). A stall before the response head expires the clock, which the request's
    /// `bounded` answers, and the watch goes on. `busy` says whether a stream is there at all
    /// (an HTTP/1.1 connection between requests has none).
    pub async fn watch(&self, timeout: Duration, busy: impl Fn() -> bool) {
        let tick = timeout.checked_div(4).unwrap_or(timeout);
        let mut stall = Stall::from(self.progress.load(Ordering::Relaxed));
        loop {
            tokio::time::sleep(tick).await;
            if self.tick(&mut stall, tick, timeout, busy()) {
                return;
            }
        }
    }
}

/// A watch's count over one clock: the progress it saw last and how long nothing has moved.
#[derive(Debug)]
struct Stall {
    seen: u32,
    stalled: Duration,
}

impl From<u32> for Stall {
    fn from(seen: u32) -> Self {
        Self {
            seen,
            stalled: Duration::ZERO,
        }
    }
}

/// The HTTP/2 streams of one connection, run in the connection's task and watched by the
/// connection's one timer: a stream costs a place in a list, not a timer of its own
/// (registering and removing one is 2% of an HTTP/2 request's instructions).
#[derive(Debug, Default)]
pub struct Streams {
    watched: Mutex<Vec<Watched>>,
    /// The streams themselves, run in the connection's task (`run`).
    running: Mutex<FuturesUnordered<StreamTask>>,
}

/// One HTTP/2 stream's work, as hyper hands it to the executor.
type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug)]
struct Watched {
    clock: Arc<StreamClock>,
    stall: Stall,
}

tokio::task_local! {
    /// The streams of the HTTP/2 connection whose task this is.
    static CONNECTION: Arc<Streams>;
}

impl Streams {
    /// Runs `conn`, an HTTP/2 connection, with the streams it starts watched here.
    pub fn scope<F: Future>(self: Arc<Self>, conn: F) -> impl Future<Output = F::Output> {
        CONNECTION.scope(self, conn)
    }

    fn add(&self, clock: &Arc<StreamClock>) {
        // Not what it is now: the connection's next tick may come at once, and only resets the
        // count, so a stream is given its whole timeout from its start, or up to a tick more.
        let seen = clock.progress.load(Ordering::Relaxed).wrapping_sub(1);
        let mut watched = self.lock();
        // Streams that are over go before the list would grow: it holds about twice the
        // streams open at most, however many a client opens between two ticks.
        if watched.len() == watched.capacity() {
            watched.retain(|w| Arc::strong_count(&w.clock) > 1);
        }
        watched.push(Watched {
            clock: clock.clone(),
            stall: Stall::from(seen),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `stream` in the connection's task, or gives it back when the streams are being
    /// polled (a stream that starts another). Pushing wakes nothing: the connection's poll
    /// calls `run` after the connection, which is where hyper starts streams.
    fn start(&self, stream: StreamTask) -> Result<(), StreamTask> {
        match self.running.try_lock() {
            Ok(running) => {
                running.push(stream);
                Ok(())
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().push(stream);
                Ok(())
            }
            Err(std::sync::TryLockError::WouldBlock) => Err(stream),
        }
    }

    /// Polls the streams that were woken (or are new); ready when none is left.
    pub fn run(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match running.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => {}
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Every quarter of `timeout`, expires the streams on which nothing moved for `timeout`
    /// (see `StreamClock::watch`) and forgets those that are over. Never resolves.
    pub async fn watch(&self, timeout: Duration) {
        let tick = timeout.checked_div(4).unwrap_or(timeout);
        loop {
            tokio::time::sleep(tick).await;
            let mut watched = self.lock();
            watched.retain_mut(|w| {
                // Over: nothing but this list holds its clock.
                if Arc::strong_count(&w.clock) == 1 {
                    return false;
                }
                // Cut: its task drops it.
                !w.clock.tick(&mut w.stall, tick, timeout, true)
            });
            // Room a burst of streams left behind goes back.
            if watched.capacity() > 64 && watched.len() < watched.capacity() / 4 {
                let keep = watched.len().saturating_mul(2);
                watched.shrink_to(keep);
            }
        }
    }
}

/// Ends a stream's route timer when dropped (`StreamClock::end_route_deadline`).
struct RouteEnded<'a>(&'a StreamClock);

impl Drop for RouteEnded<'_> {
    fn drop(&mut self) {
        self.0.end_route_deadline();
    }
}

/// Why a request was cut before its response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamTimeout {
    /// Nothing moved for `streamIdleTimeout` (Envoy's `SI`, "stream timeout").
    #[error("stream timeout")]
    Idle,
    /// The request body was not in within `requestTimeout` ("request timeout").
    #[error("request timeout")]
    Request,
}

/// Runs `work` (the request up to its response head) unless its stream's clock expires or its
/// body is not in within `request_timeout` first.
pub async fn bounded<T, E: From<StreamTimeout>>(
    work: impl Future<Output = Result<T, E>>,
    clock: &StreamClock,
    request_timeout: Option<Duration>,
) -> Result<T, E> {
    let expiry = Expiry {
        clock,
        deadline: request_timeout.map(|t| Box::pin(tokio::time::sleep(t))),
    };
    tokio::select! {
        biased;
        done = work => done,
        timeout = expiry => Err(timeout.into()),
    }
}

/// Resolves when the clock expires or the request timeout passes with the body not in.
struct Expiry<'a> {
    clock: &'a StreamClock,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Future for Expiry<'_> {
    type Output = StreamTimeout;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<StreamTimeout> {
        let clock = self.clock;
        clock.task.register(cx.waker());
        if clock.expired() {
            return Poll::Ready(StreamTimeout::Idle);
        }
        if let Some(deadline) = &mut self.deadline {
            if clock.received.load(Ordering::Acquire) {
                self.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(StreamTimeout::Request);
            }
        }
        Poll::Pending
    }
}

/// The executor hyper's HTTP/2 server runs each stream on: in its connection's task, beside
/// the connection (`Streams::run`; a task of its own outside one), with a clock
/// (`StreamClock::current`), watched, with a stream idle timeout, by its connection's
/// `Streams` (or by a timer of its own outside one). A stream cut by it is dropped, which
/// resets it (`RST_STREAM`). No task per stream: spawning one and freeing it was about 1.5% of
/// an HTTP/2 request's instructions.
#[derive(Debug, Clone, Copy)]
pub struct StreamExecutor {
    pub stream_idle_timeout: Option<Duration>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let clock = Arc::new(StreamClock::default());
        let timeout = self.stream_idle_timeout;
        let listed = timeout.is_some() && CONNECTION.try_with(|s| s.add(&clock)).is_ok();
        let stream_clock = clock.clone();
        let run = async move {
            // However the stream ends, its route timer goes: it may hold this clock.
            let _ended = RouteEnded(&clock);
            let idle = async {
                match timeout {
                    None => std::future::pending().await,
                    Some(_) if listed => clock.cut_off().await,
                    Some(timeout) => clock.watch(timeout, || true).await,
                }
            };
            let mut idle = std::pin::pin!(idle);
            // Polled after the stream, which arms the route's timer as its response head
            // goes out.
            let cut = std::future::poll_fn(|cx| {
                if idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready("stream idle timeout");
                }
                clock.poll_route(cx).map(|()| "route timeout")
            });
            tokio::select! {
                biased;
                () = stream => {}
                why = cut => {
                    tracing::debug!("{why}: resetting the stream");
                }
            }
        };
        // A panic ends its stream only (hyper resets it), as in a task of its own. The box is
        // allocated first, which lets the optimiser make the future in it rather than copy it.
        let run = Box::into_pin(Box::write(
            Box::new_uninit(),
            AssertUnwindSafe(STREAM.scope(stream_clock, run))
                .catch_unwind()
                .map(drop),
        ));
        let mut run: Option<StreamTask> = Some(run);
        let _ = CONNECTION.try_with(|s| {
            if let Some(run) = run.take() {
                if let Err(stream) = s.start(run) {
                    tokio::spawn(stream);
                }
            }
        });
        // Outside an HTTP/2 connection's scope (HTTP/2 found by its preface on plaintext).
        if let Some(run) = run {
            tokio::spawn(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 request with a body and a route timeout: the timer's deadline holds the
    /// stream's own clock, and the stream's end must still free both.
    #[tokio::test]
    async fn a_stream_that_ends_frees_its_clock_and_its_route_timer() {
        use crate::forward::deadline::Deadline;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let executor = StreamExecutor {
            stream_idle_timeout: Some(Duration::from_secs(300)),
        };
        hyper::rt::Executor::execute(&executor, async move {
            let clock = StreamClock::current().unwrap();
            let routed = tokio::time::Instant::now();
            let deadline = Deadline::AfterBody(clock.clone(), Duration::from_secs(60), routed);
            clock.route_deadline(RouteTimer::new(&deadline).unwrap());
            let _ = tx.send(Arc::downgrade(&clock));
        });
        let clock = rx.await.unwrap();
        for _ in 0..100 {
            if clock.upgrade().is_none() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(clock.upgrade().is_none(), "the clock outlived its stream");
    }

    #[tokio::test]
    async fn a_connection_forgets_its_streams_that_are_over_and_cuts_the_stalled_ones() {
        let streams = Arc::new(Streams::default());
        let added = tokio::time::Instant::now();
        let (over, waiting, stalled, moving) = Default::default();
        let clocks: [&Arc<StreamClock>; 4] = [&over, &waiting, &stalled, &moving];
        for clock in clocks {
            streams.add(clock);
        }
        drop(over);
        stalled.responding();
        let watch = tokio::spawn({
            let streams = streams.clone();
            async move { streams.watch(Duration::from_millis(200)).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !stalled.cut.load(Ordering::Acquire) {
            assert!(tokio::time::Instant::now() < deadline, "never cut");
            moving.moved();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Not before the whole timeout, however the connection's ticks fall.
        assert!(added.elapsed() >= Duration::from_millis(200));
        // Before its response head a stall expires the clock (the request answers 408) and
        // the stream stays watched; after it, the stream is cut and forgotten.
        assert!(waiting.expired() && !waiting.cut.load(Ordering::Acquire));
        assert!(stalled.expired());
        assert!(!moving.expired());
        let left: Vec<*const StreamClock> = streams
            .lock()
            .iter()
            .map(|w| Arc::as_ptr(&w.clock))
            .collect();
        assert_eq!(left, [Arc::as_ptr(&waiting), Arc::as_ptr(&moving)]);
        watch.abort();
    }

    #[test]
    fn the_list_holds_the_open_streams_not_every_stream_since_the_last_tick() {
        let streams = Streams::default();
        let open: Vec<Arc<StreamClock>> = (0..10).map(|_| Arc::default()).collect();
        for (i, clock) in open.iter().enumerate() {
            streams.add(clock);
            for _ in 0..100 * i {
                streams.add(&Arc::default());
            }
        }
        let watched = streams.lock();
        assert!(watched.capacity() <= 32, "{}", watched.capacity());
        for clock in &open {
            assert!(watched.iter().any(|w| Arc::ptr_eq(&w.clock, clock)));
        }
    }

    #[tokio::test]
    async fn a_connection_runs_its_streams_in_its_own_task_until_the_last_one_ends() {
        let streams = Arc::new(Streams::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let first = done_tx.clone();
        assert!(streams
            .start(Box::pin(async move {
                let _ = rx.await;
                let _ = first.send("waited");
            }))
            .is_ok());
        // A stream that starts another while the streams are polled gets it back, to run
        // elsewhere, instead of locking the set it is polled from.
        let inner = streams.clone();
        let second = done_tx.clone();
        assert!(streams
            .start(Box::pin(async move {
                let nested = inner.start(Box::pin(async {}));
                let _ = second.send(if nested.is_err() {
                    "given back"
                } else {
                    "nested"
                });
            }))
            .is_ok());
        let run = streams.clone();
        let mut running = tokio::spawn(std::future::poll_fn(move |cx| run.run(cx)));
        async fn next(
            rx: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>,
        ) -> Option<&'static str> {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a stream in the set was never polled")
        }
        assert_eq!(next(&mut done_rx).await, Some("given back"));
        // Still running: one stream waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut running)
                .await
                .is_err()
        );
        let _ = tx.send(());
        assert_eq!(next(&mut done_rx).await, Some("waited"));
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the set ends with its last stream")
            .expect("no panic");
    }

    #[tokio::test]
    async fn the_executor_runs_a_connections_streams_in_its_set_and_a_panic_ends_one_stream() {
        let streams = Arc::new(Streams::default());
        let executor = StreamExecutor {
            stream_idle_timeout: Some(Duration::from_secs(60)),
        };
        let ran = Arc::new(AtomicU32::new(0));
        let connection = {
            let streams = streams.clone();
            let ran = ran.clone();
            async move {
                for n in 0..3 {
                    let ran = ran.clone();
                    hyper::rt::Executor::execute(&executor, async move {
                        if n == 1 {
                            panic!("a stream's own fault");
                        }
                        ran.fetch_add(1, Ordering::Relaxed);
                    });
                }
                // Not a task each: nothing runs until the connection polls its set.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                assert_eq!(ran.load(Ordering::Relaxed), 0);
                assert_eq!(streams.lock().len(), 3, "each stream is watched");
                std::future::poll_fn(|cx| streams.run(cx)).await;
                assert_eq!(ran.load(Ordering::Relaxed), 2);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), streams.clone().scope(connection))
            .await
            .expect("the set ends with its last stream");
    }
}
