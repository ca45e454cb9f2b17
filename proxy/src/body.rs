//! Bodies. `ResponseBody`, of every response meshgate sends: streamed from upstream, or a
//! buffer the proxy made — an enum rather than a boxed trait object, so responses cost no extra
//! allocation. `Tracked` wraps it on the proxy's listeners to see the response through to its
//! end; `RequestBody` is a request body going upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::forward::pool::PooledBody;
use crate::tag::Owned;

/// A response body.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from the upstream, never buffered whole.
    Upstream(PooledBody),
    /// Made by the proxy (errors, direct responses, admin, echo).
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        Self::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream(body) => Pin::new(body).poll_frame(cx),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

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

/// A response body that knows when it is over: it counts the bytes sent and whether it ended
/// or was cut short, and when dropped tells its `Done` (then drops it).
pub struct Tracked<D: Done> {
    body: ResponseBody,
    done: D,
    bytes: u64,
    ended: bool,
    failed: bool,
}

/// What happens when a response is over.
pub trait Done {
    /// Called once, when the body is dropped: `bytes` sent; `ended` when the body reached its
    /// end, `failed` when the upstream's body broke off.
    fn done(&mut self, bytes: u64, ended: bool, failed: bool);
}

impl<D: Done> Tracked<D> {
    pub fn new(body: ResponseBody, done: D) -> Self {
        let ended = body.is_end_stream();
        Self {
            body,
            done,
            bytes: 0,
            ended,
            failed: false,
        }
    }
}

impl<D: Done + Unpin> Body for Tracked<D> {
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
            Poll::Ready(Some(Ok(_))) => this.ended = this.body.is_end_stream(),
            Poll::Ready(Some(Err(_))) => this.failed = true,
            Poll::Ready(None) => this.ended = true,
            Poll::Pending => {}
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

impl<D: Done> Drop for Tracked<D> {
    fn drop(&mut self) {
        self.done.done(self.bytes, self.ended, self.failed);
    }
}

/// The data bytes a polled frame carries (0 for trailers, errors and the end).
fn data_len<E>(frame: &Poll<Option<Result<Frame<Bytes>, E>>>) -> u64 {
    match frame {
        Poll::Ready(Some(Ok(f))) => f.data_ref().map_or(0, |d| d.len() as u64),
        _ => 0,
    }
}
