//! HTTP/1.1 over TLS between requests: a connection idle for `PARK_AFTER` is parked without
//! hyper's state.
//!
//! hyper's HTTP/1.1 connection keeps its read buffer (8 KiB, adaptive up to the head limit),
//! its write buffer (8 KiB) and the header map of the last request for as long as it lives,
//! idle or not, and has no way to give them back while it waits for the next request. So when
//! an exchange is complete (the request body read to its end, the response written and
//! flushed, no head begun since) and a check every `PARK_AFTER` finds it so, the hyper
//! connection is asked to close, which it does at once only when it is idle, and is taken
//! apart without shutting the TLS stream down (`poll_without_shutdown`, `into_parts`). The
//! stream then waits for readability alone; the next request's first bytes start a new hyper
//! connection on the same stream, with whatever hyper had read and not parsed handed back to
//! it first.
//!
//! Parking after every response instead would make a hyper connection, its buffers and header
//! map anew for each request; one timer per connection that fires every `PARK_AFTER` costs
//! nothing measurable per request.
//!
//! Every other end is hyper's, with the shutdown hyper would have done: a client that asked
//! for `Connection: close`, an error (no shutdown), the drain and the idle timeout (closed
//! gracefully), a stalled response (dropped at once). An exchange the check misjudged as over
//! is finished with keep-alive off and ends the connection, as the drain would.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::debug;

use crate::metrics::Metrics;
use crate::serve::{Downstream, Ends, Gated, Metered, RequestService, ServeError, Stop};

/// How often a served HTTP/1.1 connection is checked for being idle, and parked if it is: a
/// connection idle for twice this long holds no HTTP state.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 on `io` until the client is done or an end in `ends` comes, parking the
/// connection between requests.
pub(crate) async fn serve<I, S, B>(
    builder: &http1::Builder,
    io: TokioIo<Metered<I>>,
    service: S,
    ends: Ends<'_, impl Future<Output = ()>, impl Future<Output = ()>>,
    metrics: &Metrics,
) -> Result<(), ServeError>
where
    I: Downstream,
    S: RequestService<B>,
    B: Body<Data = Bytes, Error = crate::forward::UpstreamError> + Send + 'static,
{
    let activity = ends.activity;
    let stop = ends.stop();
    tokio::pin!(stop);
    let mut stop = Gated::new(stop);
    let park = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(park);
    // Polled on its own wake-ups only, not on each of the connection's.
    let mut park = Gated::new(park);
    let mut io = io;
    let mut service = service;
    loop {
        park.inner_mut().as_mut().reset(next_check());
        park.rearm();
        // Boxed, so that a parked connection keeps no room for it.
        let mut conn = Box::new(builder.serve_connection(io, service));
        let mut may_park = true;
        let ended = loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(done) = conn.poll_without_shutdown(cx) {
                    return Poll::Ready(Event::Ended(done));
                }
                if may_park && Pin::new(&mut park).poll(cx).is_ready() {
                    if activity.parkable() {
                        return Poll::Ready(Event::Idle);
                    }
                    park.inner_mut().as_mut().reset(next_check());
                    park.rearm();
                    // Registers the timer again; it has not expired yet.
                    let _ = Pin::new(&mut park).poll(cx);
                }
                Pin::new(&mut stop).poll(cx).map(Event::Stop)
            });
            match event.await {
                Event::Ended(done) => break End::Closed(done),
                Event::Stop(Stop::Now) => {
                    debug!("stream idle timeout: closing the connection");
                    return Err(ServeError::from("stream idle timeout"));
                }
                Event::Stop(Stop::Gracefully) => {
                    Pin::new(&mut *conn).graceful_shutdown();
                    let done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
                    break End::Closed(done);
                }
                Event::Idle => {
                    // An idle hyper connection closes at once when asked to; one that is not
                    // (an exchange this side did not see end) goes on, finishes its exchange
                    // with keep-alive off and ends as above.
                    Pin::new(&mut *conn).graceful_shutdown();
                    let closed =
                        std::future::poll_fn(|cx| Poll::Ready(conn.poll_without_shutdown(cx)))
                            .await;
                    match closed {
                        Poll::Ready(done) => {
                            done?;
                            break End::Parked;
                        }
                        Poll::Pending => may_park = false,
                    }
                }
            }
        };
        // Moved into the block and out of its box there, so that the box is freed at once,
        // not at the end of the loop.
        let parts = {
            let conn = conn;
            (*conn).into_parts()
        };
        let mut metered = parts.io.into_inner();
        if let End::Closed(done) = ended {
            // hyper's own end: the shutdown it would have done (none after an error).
            done?;
            metered.shutdown().await?;
            return Ok(());
        }
        service = parts.service;
        let read_buf = parts.read_buf;
        if read_buf.is_empty() {
            // Even empty, it holds hyper's whole read buffer: gone before the wait.
            drop(read_buf);
            let parked = Parked::new(metrics);
            let woke = tokio::select! {
                biased;
                ready = metered.first_bytes() => Ok(ready),
                stop = &mut stop => Err(stop),
            };
            drop(parked);
            match woke {
                Ok(ready) => ready?,
                Err(stop) => {
                    if stop == Stop::Gracefully {
                        metered.shutdown().await?;
                    }
                    return Ok(());
                }
            }
        } else {
            // Bytes of a next request hyper had read: the next connection reads them first.
            metered.unread(read_buf);
        }
        io = TokioIo::new(metered);
    }
}

/// When an idle check is due next.
fn next_check() -> Instant {
    let now = Instant::now();
    // Overflow is out of reach (a clock a few centuries on); checking at once is harmless.
    now.checked_add(PARK_AFTER).unwrap_or(now)
}

/// What the served connection's poll came to.
enum Event<E> {
    /// hyper ended the connection.
    Ended(Result<(), E>),
    /// No exchange is in flight and the client has sent nothing more.
    Idle,
    /// The drain, the idle timeout or a stalled response.
    Stop(Stop),
}

/// How a hyper connection on the stream ended.
enum End<E> {
    /// By the client, an error, or a graceful stop: the connection is over.
    Closed(Result<(), E>),
    /// Idle, taken apart: the stream waits for the next request.
    Parked,
}

/// A parked connection, counted in `meshgate_connections_parked` while it lives.
struct Parked<'a>(&'a Metrics);

impl<'a> Parked<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.parked(1);
        Self(metrics)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.parked(-1);
    }
}
