//! Bodies on their way through: `RequestBody`, a request body going upstream (its bytes
//! counted, its trailers stripped of owned headers), and `Tracked`, which wraps a response body
//! on the proxy's listeners to see the response through to its end.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::tag::Owned;

/// A request body on its way upstream, its bytes counted when the access log wants them, and
/// its trailers stripped of every header the proxy owns.
#[derive(Debug)]
pub struct RequestBody {
    body: Incoming,
    /// Bytes read so far; `None` when nobody reads the count.
    counted: Option<Arc<AtomicU64>>,
    owned: Arc<Owned>,
}

impl RequestBody {
    /// `body`, counting its bytes into `counted` when given.
    pub fn new(body: Incoming, counted: Option<Arc<AtomicU64>>, owned: Arc<Owned>) -> Self {
        Self {
            body,
            counted,
            owned,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(counted) = &this.counted {
            counted.fetch_add(data_len(&frame), Ordering::Relaxed);
        }
        if let Poll::Ready(Some(Ok(f))) = &mut frame {
            if let Some(trailers) = f.trailers_mut() {
                this.owned.strip_trailers(trailers);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that knows when it is over: it counts the bytes sent and how it ended,
/// and when dropped tells its `Done` (then drops it).
pub struct Tracked<B, D: Done> {
    body: B,
    done: D,
    bytes: u64,
    end: End,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Not yet, or never: the client went away first (Envoy's `DC`).
    Open,
    /// Its last byte was sent.
    Complete,
    /// The upstream broke off in the middle (Envoy's `UR`).
    UpstreamFailed,
}

/// What happens when a response is over.
pub trait Done {
    /// Called once, when the body is dropped, with the bytes sent and how it ended.
    fn done(&mut self, bytes: u64, end: End);
}

impl<B: Body, D: Done> Tracked<B, D> {
    pub fn new(body: B, done: D) -> Self {
        let end = if body.is_end_stream() {
            End::Complete
        } else {
            End::Open
        };
        Self {
            body,
            done,
            bytes: 0,
            end,
        }
    }
}

impl<B, D> Body for Tracked<B, D>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
    D: Done + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        this.bytes += data_len(&frame);
        match &frame {
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.end = End::Complete,
            Poll::Ready(Some(Err(_))) => this.end = End::UpstreamFailed,
            Poll::Ready(None) => this.end = End::Complete,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B, D: Done> Drop for Tracked<B, D> {
    fn drop(&mut self) {
        self.done.done(self.bytes, self.end);
    }
}

/// The data bytes a polled frame carries (0 for trailers, errors and the end).
fn data_len<E>(frame: &Poll<Option<Result<Frame<Bytes>, E>>>) -> u64 {
    match frame {
        Poll::Ready(Some(Ok(f))) => f.data_ref().map_or(0, |d| d.len() as u64),
        _ => 0,
    }
}
