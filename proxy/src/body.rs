//! Bodies on their way through: `RequestBody`, a request body going upstream (its bytes
//! counted, its trailers stripped of owned headers), `Replayable`, which keeps one for another
//! try, and `Tracked`, which wraps a response body on the proxy's listeners to see the response
//! through to its end.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::forward::UpstreamError;
use crate::serve::Pacing;
use crate::stream::StreamClock;
use crate::tag::Owned;

/// A request body on its way upstream: the client's, its bytes counted when the access log
/// wants them and its trailers stripped of every header the proxy owns; or one try's reading of
/// a body kept for retries.
#[derive(Debug)]
pub struct RequestBody(Source);

#[derive(Debug)]
enum Source {
    Client(ClientBody),
    /// One try's reading of a kept body.
    Replay(Reader),
    /// A whole body read before, sent again (a mirror's copy).
    Copy(Complete, usize),
    /// No body.
    Empty,
}

#[derive(Debug)]
struct ClientBody {
    body: Incoming,
    /// Bytes read so far; `None` when nobody reads the count.
    counted: Option<Arc<AtomicU64>>,
    owned: Arc<Owned>,
    /// The connection's, to be told when the client breaks the body.
    activity: Option<Arc<crate::serve::Activity>>,
    /// The stream's, told of each frame and of the end.
    clock: Option<Arc<StreamClock>>,
    /// The clock's request when the body began (`StreamClock::generation`).
    generation: u32,
    /// Whether the clock was told some of the body was read.
    read: bool,
}

/// Why a request body stopped.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a client body failure is bytes that are not HTTP (Envoy's `DPE`: a bad chunk, a
/// body longer than its length) rather than a client that went away (`DC`).
fn malformed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        source = s.source();
    }
    e.is_parse()
}

impl RequestBody {
    /// `body`, counting its bytes into `counted` when given.
    pub fn new(
        body: Incoming,
        counted: Option<Arc<AtomicU64>>,
        owned: Arc<Owned>,
        activity: Option<Arc<crate::serve::Activity>>,
        clock: Option<Arc<StreamClock>>,
    ) -> Self {
        // A body already at its end is not read through here: `handle_request` passes an
        // empty one, and noted it received when the request started.
        let generation = clock.as_ref().map_or(0, |c| c.generation());
        Self(Source::Client(ClientBody {
            body,
            counted,
            owned,
            activity,
            clock,
            generation,
            read: false,
        }))
    }

    /// No body.
    pub fn empty() -> Self {
        Self(Source::Empty)
    }

    /// The stream's clock while the client's body is still coming (`None`: it is in, or there
    /// is none), which notes when it is in: the route's timeout starts there.
    pub fn arriving(&self) -> Option<&Arc<StreamClock>> {
        match &self.0 {
            Source::Client(body) if !body.body.is_end_stream() => body.clock.as_ref(),
            _ => None,
        }
    }
}

impl ClientBody {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(counted) = &self.counted {
            counted.fetch_add(data_len(&frame), Ordering::Relaxed);
        }
        if let Poll::Ready(Some(Ok(f))) = &mut frame {
            if let Some(trailers) = f.trailers_mut() {
                self.owned.strip_trailers(trailers);
            }
        }
        if let Some(clock) = &self.clock {
            if !self.read {
                self.read = true;
                clock.body_read(self.generation);
            }
            if let Poll::Ready(read) = &frame {
                match read {
                    Some(Ok(_)) if !self.body.is_end_stream() => clock.moved(),
                    Some(Ok(_)) | None => clock.received_now(self.generation),
                    Some(Err(_)) => {}
                }
            }
        }
        frame.map_err(|e| {
            // Told to the connection: the forward's failure is then the client's.
            if let Some(activity) = &self.activity {
                activity.body_failed(malformed(&e));
            }
            e.into()
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            Source::Client(body) => body.poll_frame(cx),
            Source::Replay(reader) => reader.poll_frame(cx),
            Source::Copy(all, next) => {
                let frame = all.0.get(*next).map(|f| Ok(f.frame()));
                *next = next.saturating_add(1);
                Poll::Ready(frame)
            }
            Source::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Source::Client(c) => c.body.is_end_stream(),
            Source::Replay(reader) => reader.is_end_stream(),
            Source::Copy(all, next) => *next >= all.0.len(),
            Source::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Source::Client(c) => c.body.size_hint(),
            Source::Replay(reader) => reader.size_hint(),
            Source::Copy(all, next) => SizeHint::with_exact(
                all.0
                    .get(*next..)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| match f {
                        Stored::Data(b) => b.len() as u64,
                        Stored::Trailers(_) => 0,
                    })
                    .sum(),
            ),
            Source::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A request body kept for another try: the frames the client has sent so far are kept (up to
/// a limit), so that each try reads them from the start and then, like the first, on from the
/// client. Only the newest try reads: an older one, still being written by a connection that
/// was given up, fails. A body larger than the limit is not kept, and then only the try that
/// read past the limit can go on.
#[derive(Debug)]
pub enum Replayable {
    /// A request without a body: every try has none.
    Empty,
    Kept(Arc<Mutex<Kept>>),
    /// A body that cannot be kept: for the first try only.
    Once(Mutex<Option<RequestBody>>),
}

#[derive(Debug)]
pub struct Kept {
    source: ClientBody,
    /// Every frame read so far, while they fit the limit.
    frames: Vec<Stored>,
    /// Frames read from the client so far.
    read: usize,
    bytes: usize,
    limit: usize,
    /// The frames went over the limit and are not kept.
    overflowed: bool,
    ended: bool,
    /// The body's length, when the client declared it.
    exact: Option<u64>,
    /// The try allowed to read.
    current: u32,
    /// Copies waiting for the whole body (mirrors); dropped, they learn it will not come.
    waiting: Vec<oneshot::Sender<Complete>>,
}

#[derive(Debug, Clone)]
enum Stored {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

impl Stored {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Stored::Data(b) => Frame::data(b.clone()),
            Stored::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

/// A whole request body, as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct Complete(Arc<[Stored]>);

impl Complete {
    /// A body that sends this again.
    pub fn body(&self) -> RequestBody {
        RequestBody(Source::Copy(self.clone(), 0))
    }
}

/// One try's reading of a kept body.
#[derive(Debug)]
struct Reader {
    kept: Arc<Mutex<Kept>>,
    id: u32,
    /// The next frame to read.
    next: usize,
    /// Data bytes read.
    sent: u64,
}

impl Replayable {
    /// Keeps `body` for as many tries as it takes, holding at most `limit` bytes of it.
    pub fn new(body: RequestBody, limit: usize) -> Self {
        match body.0 {
            Source::Client(c) if !c.body.is_end_stream() => {
                let exact = c.body.size_hint().exact();
                Self::Kept(Arc::new(Mutex::new(Kept {
                    source: c,
                    frames: Vec::new(),
                    read: 0,
                    bytes: 0,
                    limit,
                    overflowed: false,
                    ended: false,
                    exact,
                    current: 0,
                    waiting: Vec::new(),
                })))
            }
            Source::Client(_) | Source::Empty => Self::Empty,
            // A try's or a copy's body is not kept again: it goes once.
            other => Self::Once(Mutex::new(Some(RequestBody(other)))),
        }
    }

    /// The whole body once the tries have read it to its end; never (the sender dropped) when
    /// it outgrows the limit or the request goes away first.
    pub fn complete(&self) -> oneshot::Receiver<Complete> {
        let (tx, rx) = oneshot::channel();
        match self {
            Self::Empty => {
                let _ = tx.send(Complete::default());
            }
            Self::Once(_) => {}
            Self::Kept(kept) => {
                let mut k = lock(kept);
                if k.ended && !k.overflowed {
                    let _ = tx.send(Complete(k.frames.clone().into()));
                } else if !k.overflowed {
                    k.waiting.push(tx);
                }
            }
        }
        rx
    }

    /// The body for the next try, which from now on is the only one that reads; `None` when
    /// the body outgrew the limit after a try read some of it.
    pub fn next_try(&self) -> Option<RequestBody> {
        match self {
            Self::Empty => Some(RequestBody::empty()),
            Self::Once(body) => body.lock().unwrap_or_else(|p| p.into_inner()).take(),
            Self::Kept(kept) => {
                let mut k = lock(kept);
                if k.overflowed && k.read > 0 {
                    return None;
                }
                // An identity, compared for equality only.
                k.current = k.current.wrapping_add(1);
                Some(RequestBody(Source::Replay(Reader {
                    kept: kept.clone(),
                    id: k.current,
                    next: 0,
                    sent: 0,
                })))
            }
        }
    }
}

fn lock(kept: &Mutex<Kept>) -> std::sync::MutexGuard<'_, Kept> {
    kept.lock().unwrap_or_else(|p| p.into_inner())
}

impl Kept {
    /// The client's body is over: the copies waiting for it get it whole.
    fn end(&mut self) {
        self.ended = true;
        if !self.overflowed {
            let all = Complete(self.frames.clone().into());
            for tx in self.waiting.drain(..) {
                let _ = tx.send(all.clone());
            }
        }
    }
}

/// A try that was given up for a newer one.
#[derive(Debug, thiserror::Error)]
#[error("request body: superseded by a retry")]
struct Superseded;

/// A try that would replay a frame the kept body does not hold (never: `next_try` refuses a
/// try once frames were dropped).
#[derive(Debug, thiserror::Error)]
#[error("request body: a frame to replay was not kept")]
struct NotKept;

impl Reader {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut k = lock(&self.kept);
        if k.current != self.id {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if self.next < k.read {
            // Kept: `next_try` refuses a try once frames were dropped.
            let Some(stored) = k.frames.get(self.next) else {
                return Poll::Ready(Some(Err(NotKept.into())));
            };
            if let Stored::Data(b) = stored {
                self.sent = self.sent.saturating_add(b.len() as u64);
            }
            let frame = stored.frame();
            self.next = self.next.saturating_add(1);
            return Poll::Ready(Some(Ok(frame)));
        }
        if k.ended {
            return Poll::Ready(None);
        }
        let k = &mut *k;
        let frame = k.source.poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(f))) => {
                k.read = k.read.saturating_add(1);
                self.next = self.next.saturating_add(1);
                let stored = match (f.data_ref(), f.trailers_ref()) {
                    (Some(d), _) => {
                        self.sent = self.sent.saturating_add(d.len() as u64);
                        k.bytes = k.bytes.saturating_add(d.len());
                        Some(Stored::Data(d.clone()))
                    }
                    (None, Some(t)) => Some(Stored::Trailers(t.clone())),
                    (None, None) => None,
                };
                if k.bytes > k.limit {
                    k.overflowed = true;
                    k.frames = Vec::new();
                    k.waiting.clear();
                } else if let (false, Some(stored)) = (k.overflowed, stored) {
                    k.frames.push(stored);
                }
                // A body of known length ends with its last bytes: the sender need not poll
                // again to learn it.
                if k.source.body.is_end_stream() {
                    k.end();
                }
            }
            Poll::Ready(None) => k.end(),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        let k = lock(&self.kept);
        k.current == self.id && k.ended && self.next >= k.read
    }

    fn size_hint(&self) -> SizeHint {
        let k = lock(&self.kept);
        match k.exact {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

/// A response body that knows when it is over: it counts the bytes sent and how it ended,
/// and when dropped tells its `Done` (then drops it).
pub struct Tracked<B, D: Done> {
    body: B,
    done: D,
    bytes: u64,
    end: End,
    /// An HTTP/1.1 body's bound on what waits for the client.
    pacing: Option<Pacing>,
    /// The rest of a data frame larger than the room `pacing` left.
    held: Option<Bytes>,
    /// The upstream's failure, passed on one poll late (`poll_frame`).
    failed: Option<UpstreamError>,
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
    /// The route's timeout cut it in the middle (Envoy's `UT`).
    RouteTimeout,
}

/// A response body the route's timeout may cut, also while the client takes nothing of it.
pub trait Deadline {
    /// Ready with the error once the deadline has passed; pending, the waker registered,
    /// before (and always, without a deadline).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<UpstreamError>;
}

/// What happens when a response is over.
pub trait Done {
    /// Called once, when the body is dropped, with the bytes sent and how it ended.
    fn done(&mut self, bytes: u64, end: End);

    /// Another frame went on to the client.
    fn moved(&self) {}
}

impl<B: Body, D: Done> Tracked<B, D> {
    pub fn new(body: B, done: D, pacing: Option<Pacing>) -> Self {
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
            pacing,
            held: None,
            failed: None,
        }
    }
}

impl<B, D> Body for Tracked<B, D>
where
    B: Body<Data = Bytes, Error = UpstreamError> + Deadline + Unpin,
    D: Done + Unpin,
{
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let room = match &this.pacing {
            Some(pacing) => match pacing.room(this.bytes, cx) {
                Some(room) => room,
                // Paused for a client that takes nothing: the route's timeout still runs.
                None => {
                    return match this.body.poll_deadline(cx) {
                        Poll::Ready(e) => {
                            this.end = End::RouteTimeout;
                            Poll::Ready(Some(Err(e)))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            },
            None => u64::MAX,
        };
        let mut frame = match this.held.take() {
            Some(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(f))) = &mut frame {
            if let Some(data) = f.data_mut().filter(|d| d.len() as u64 > room) {
                this.held = Some(data.split_off(room as usize));
            }
            this.done.moved();
        }
        this.bytes = this.bytes.saturating_add(data_len(&frame));
        match frame {
            Poll::Ready(Some(Ok(_))) if this.is_end_stream() => this.end = End::Complete,
            Poll::Ready(Some(Err(e))) => {
                // An error ends hyper's HTTP/1.1 connection at once, dropping what it has
                // not written yet: the response head, when the upstream broke off right after
                // it, and the client would see an empty reply. One poll later, what is
                // buffered has been flushed, and the client sees the head and then the reset.
                this.end = match e {
                    UpstreamError::Timeout => End::RouteTimeout,
                    _ => End::UpstreamFailed,
                };
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(None) => this.end = End::Complete,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        if let Some(held) = &self.held {
            let held = held.len() as u64;
            // Upper first: each setter checks the pair is still ordered.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(held));
            }
            hint.set_lower(hint.lower().saturating_add(held));
        }
        hint
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
