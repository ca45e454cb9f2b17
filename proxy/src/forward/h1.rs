//! meshgate's own HTTP/1.1 client, for requests without a body (most of a gateway's, and
//! every request of a load test's GET): the request's task writes the head and reads the
//! response on the connection itself, and the response body reads on from it as the client
//! takes it. hyper's client runs each connection in a task of its own and hands it every
//! request and response through channels; for one request that costs about as much CPU as
//! the rest of the upstream side (BENCHMARKS.md). Requests with a body still go through
//! hyper's client.
//!
//! The response is framed as RFC 9112 section 6.3 says, strictly: a head larger than
//! `MAX_HEAD` or with more than `MAX_FIELDS` fields, a `Content-Length` that is not one
//! number, both `Content-Length` and `Transfer-Encoding`, or a malformed chunk is an error,
//! and the connection is closed. A connection is pooled again only when its response ended
//! exactly where its framing said (no byte after it) and neither side said `close`.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::connect::UpstreamStream;
use crate::head::HopByHop;

/// The most bytes a response head may take, status line and fields: Envoy's default for
/// `max_response_headers_kb` (60 KiB). The same bound holds for a chunked body's trailers.
pub const MAX_HEAD: usize = 60 * 1024;
/// The most fields in a response head or in trailers: Envoy's default `max_headers_count`.
pub const MAX_FIELDS: usize = 100;
/// The longest chunk-size line (size and extensions) read before the line is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Room kept free in the read buffer before each read.
const READ_AHEAD: usize = 8 * 1024;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("connection closed before the response was complete")]
    Closed,
    /// The upstream closed or reset the connection before a byte of the response: on a pooled
    /// connection, most likely closed while idle, as the request was sent.
    #[error("connection closed before any byte of a response")]
    NoResponse,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes or {MAX_FIELDS} fields")]
    HeadTooLarge,
}

/// An HTTP/1.1 connection to an upstream.
#[derive(Debug)]
pub struct Conn {
    io: UpstreamStream,
    /// Bytes read and not used yet.
    buf: BytesMut,
    /// The request head being written; its room is kept for the next one.
    out: Vec<u8>,
    /// The field names of the last response head, in its order.
    names: Names,
}

/// A response's field names as they came (the bytes) and as parsed, by position: a backend
/// sends the same fields in the same order response after response, and comparing the bytes
/// costs less than parsing a name again (lowercasing, looking for a standard name, and for
/// another name an allocation).
type Names = Vec<(Box<[u8]>, HeaderName)>;

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: `HEAD`, 204, 304, or `Content-Length: 0`.
    Empty,
    /// `Content-Length`: the bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection (no length, or a transfer coding that is not
    /// chunked last); the connection is not reused.
    Close,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// Bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

impl Conn {
    pub fn new(io: UpstreamStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Whether an idle connection can no longer carry a request: the upstream closed it, it
    /// failed, or it sent bytes no request asked for. Reads only what the reactor has seen
    /// arrive; a connection with nothing to read costs no system call.
    ///
    /// Outside tokio's cooperative budget: a task that spent it would read `Pending` from any
    /// socket, and take a closed or dirty connection for an open one.
    pub fn closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let io = &mut self.io;
        let mut peek = tokio::task::coop::unconstrained(std::future::poll_fn(|cx| {
            Pin::new(&mut *io).poll_read(cx, &mut ReadBuf::new(&mut byte))
        }));
        // Ready means the end of the stream, a stray byte, or an error.
        Pin::new(&mut peek).poll(&mut cx).is_ready()
    }

    /// Drops the room a large response left in the buffers of a connection going idle.
    fn shrink(&mut self) {
        if self.buf.capacity() > 2 * READ_AHEAD {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > 2 * READ_AHEAD {
            self.out = Vec::new();
        }
    }

    /// Writes the head of `req`, a request without a body, as hyper's client would: the
    /// request target in origin form, the fields as they are but `Transfer-Encoding` (no
    /// body is coming).
    pub async fn write_head<B>(&mut self, req: &Request<B>) -> io::Result<()> {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in req.headers() {
            if name == header::TRANSFER_ENCODING {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.io.write_all(&self.out).await?;
        // TLS holds what it encrypted until flushed; plaintext has nothing to flush.
        self.io.flush().await
    }

    /// Reads the response to a request with `method`: its head, with the body to read on from
    /// the connection. Informational (1xx) responses are passed over. The head comes without
    /// its hop-by-hop fields and those its `Connection` names, as `forward::remove_hop_by_hop`
    /// would leave it, the other fields in the upstream's order (each name's values together,
    /// as in any `HeaderMap`).
    ///
    /// The fields go into `room`, emptied first: the map of the request just sent, whose
    /// allocation the response then reuses (and hyper's server after it, for the next request
    /// on the downstream connection). A room larger than `ROOM_KEPT_UP_TO` fields is let go.
    pub async fn read_response(
        mut self,
        method: &Method,
        mut room: HeaderMap,
    ) -> Result<Response<Body>, Error> {
        let mut any = false;
        loop {
            if let Some((head, used)) = parse_head(&self.buf, &mut self.names, &mut room)? {
                self.buf.advance(used);
                let Head {
                    status,
                    version,
                    headers,
                    keep_alive,
                    framing,
                } = head;
                if status.is_informational() {
                    if status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Error::Malformed("101 to a request that asked no upgrade"));
                    }
                    // The final head takes the same room.
                    room = headers;
                    continue;
                }
                let framing = match framing {
                    _ if method == Method::HEAD
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED =>
                    {
                        Framing::Empty
                    }
                    Framing::Length(0) => Framing::Empty,
                    other => other,
                };
                let mut response = Response::new(Body {
                    conn: Some(self),
                    framing,
                    keep_alive: keep_alive && framing != Framing::Close,
                });
                *response.status_mut() = status;
                *response.version_mut() = version;
                *response.headers_mut() = headers;
                return Ok(response);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if !any => return Err(Error::NoResponse),
                Ok(0) => return Err(Error::Closed),
                Ok(_) => any = true,
                Err(e) if !any && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(Error::NoResponse)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads what the connection has into the buffer: the number of bytes, 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity().saturating_sub(self.buf.len()) < READ_AHEAD / 2 {
            self.buf.reserve(READ_AHEAD);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A response head, parsed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    keep_alive: bool,
    framing: Framing,
}

/// `headers` without the fields a `Connection` of `fields` names, the others in their order.
/// Rare: built anew rather than removed from, as a removal moves the last field into the
/// removed one's place.
fn without_nominated(headers: HeaderMap, fields: &[httparse::Header<'_>]) -> HeaderMap {
    let named: Vec<HeaderName> = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .flat_map(|f| HopByHop::nominated(f.value))
        .collect();
    if named.is_empty() {
        return headers;
    }
    let mut kept = HeaderMap::with_capacity(headers.capacity());
    let mut current: Option<HeaderName> = None;
    // Each name comes once, before its values.
    for (name, value) in headers {
        if let Some(name) = name {
            current = Some(name);
        }
        if let Some(name) = current.as_ref().filter(|n| !named.contains(n)) {
            kept.append(name.clone(), value);
        }
    }
    kept
}

/// How many places of a response's field names a connection keeps (`Names`).
const KEPT_NAMES: usize = 16;

/// The fields a response's new map has room for at least, when its request's map is not
/// reused: a request's usual dozen and the tags (`tag.rs`) besides.
const RECYCLED_FIELDS: usize = 24;

/// The largest map (in fields it has room for) a response reuses from its request. What a
/// map keeps besides for repeated names is not counted there; the limits on a request head
/// bound it (hyper's 100 fields over HTTP/1.1, the header list size over HTTP/2).
const ROOM_KEPT_UP_TO: usize = 4 * RECYCLED_FIELDS;

/// The response head at the start of `buf` and its length, or `None` while it is incomplete.
/// Its fields are put in `room` (emptied first), which is left empty when the head is complete.
fn parse_head(
    buf: &BytesMut,
    names: &mut Names,
    room: &mut HeaderMap,
) -> Result<Option<(Head, usize)>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let used = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(used)) if used > MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
        Err(_) => return Err(Error::Malformed("response head")),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Malformed("status code"))?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Field values are slices of one copy of the head, shared by them; the connection's
    // buffer stays its own, to be read into again.
    let start = buf.as_ptr() as usize;
    let head = Bytes::copy_from_slice(buf.get(..used).unwrap_or_default());
    // The room is the request's map. hyper's HTTP/1.1 server keeps the map of the response
    // it wrote, emptied, for the next request's head on the connection, to which meshgate then
    // adds its tags: the request's map already has room for those, and is kept as it is (grown
    // only for a response with more fields). One a client made large with many fields is let
    // go, for a map with room for a usual request and the tags.
    let fields = response.headers.len();
    let mut headers = match std::mem::take(room) {
        mut room if room.capacity() <= ROOM_KEPT_UP_TO => {
            room.clear();
            room.reserve(fields);
            room
        }
        _ => HeaderMap::with_capacity(fields.max(RECYCLED_FIELDS)),
    };
    let mut length: Option<u64> = None;
    let mut chunked = None;
    // `close` wins wherever it stands; HTTP/1.0 keeps a connection only when asked to.
    let (mut close, mut keep) = (false, false);
    // Whether a `Connection` value names fields to remove besides the hop-by-hop ones.
    let mut nominates = false;
    for (i, field) in response.headers.iter().enumerate() {
        let name = match names.get(i) {
            Some((raw, name)) if **raw == *field.name.as_bytes() => name.clone(),
            _ => {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| Error::Malformed("field name"))?;
                // Only the first `KEPT_NAMES` places, and names of at most 32 bytes (every
                // standard one), so that what a connection keeps stays small whatever its
                // upstream sends.
                if i < KEPT_NAMES && field.name.len() <= 32 {
                    let parsed = (Box::from(field.name.as_bytes()), name.clone());
                    match names.get_mut(i) {
                        Some(slot) => *slot = parsed,
                        None => names.push(parsed),
                    }
                }
                name
            }
        };
        let from = (field.value.as_ptr() as usize).saturating_sub(start);
        let value = head
            .get(from..from.saturating_add(field.value.len()))
            .map(|v| head.slice_ref(v))
            .ok_or(Error::Malformed("field value"))?;
        let value =
            HeaderValue::from_maybe_shared(value).map_err(|_| Error::Malformed("field value"))?;
        if name == header::CONTENT_LENGTH {
            for n in field.value.split(|b| *b == b',') {
                let n = content_length(n.trim_ascii()).ok_or(Error::Malformed("Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("Content-Length"));
                }
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            // Codings are tokens: anything else (obs-text) is refused rather than guessed at,
            // and HTTP/1.0 has none (RFC 9112 6.1).
            if value.to_str().is_err() || version == Version::HTTP_10 {
                return Err(Error::Malformed("Transfer-Encoding"));
            }
            // Only the last coding decides: chunked or not.
            let last = field
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in field.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
                // Whatever else it names is looked at again below (`close` too: a field of
                // that name is not passed on either).
                nominates |= !token.is_empty() && !HopByHop::names(token);
            }
        }
        // The hop-by-hop fields describe this connection only, and are not passed on.
        if HopByHop::bit(&name) == 0 {
            headers.append(name, value);
        }
    }
    names.truncate(response.headers.len().min(KEPT_NAMES));
    if nominates {
        headers = without_nominated(headers, response.headers);
    }
    let framing = match (chunked, length) {
        // Either could be the smuggler's; the response is refused (RFC 9112 6.3, 3).
        (Some(_), Some(_)) => {
            return Err(Error::Malformed("Content-Length with Transfer-Encoding"))
        }
        (Some(true), None) => Framing::Chunked(Chunk::Size),
        (Some(false), None) | (None, None) => Framing::Close,
        (None, Some(n)) => Framing::Length(n),
    };
    let head = Head {
        status,
        version,
        headers,
        keep_alive: !close && (keep || version == Version::HTTP_11),
        framing,
    };
    Ok(Some((head, used)))
}

/// A `Content-Length` value: digits only, and no more than a u64 holds.
fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let d = d
            .is_ascii_digit()
            .then(|| u64::from(d.wrapping_sub(b'0')))?;
        n.checked_mul(10)?.checked_add(d)
    })
}

/// A response body read from its connection as the client takes it. The connection goes
/// with it, and back to its pool (`reusable`) once the body ended as framed.
#[derive(Debug)]
pub struct Body {
    /// `None` once the body failed.
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
}

impl Body {
    /// The connection, when the body ended where its framing said, nothing follows it, and
    /// the connection may be kept.
    pub fn reusable(&mut self) -> Option<Conn> {
        let ended = matches!(self.framing, Framing::Done | Framing::Empty);
        if !ended || !self.keep_alive {
            return None;
        }
        let mut conn = self.conn.take().filter(|c| c.buf.is_empty())?;
        conn.shrink();
        Some(conn)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match self.framing {
                Framing::Empty | Framing::Done => return Poll::Ready(None),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    }
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(take).freeze();
                    let left = left.saturating_sub(take as u64);
                    self.framing = match (self.framing, left) {
                        (Framing::Length(_), 0) => Framing::Done,
                        (Framing::Length(_), left) => Framing::Length(left),
                        (_, 0) => Framing::Chunked(Chunk::DataEnd),
                        (_, left) => Framing::Chunked(Chunk::Data(left)),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Size) => match chunk_size(&conn.buf)? {
                    Some((used, size)) => {
                        conn.buf.advance(used);
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    None if conn.buf.len() > MAX_CHUNK_LINE => {
                        return Poll::Ready(Some(Err(Error::Malformed("chunk size line"))));
                    }
                    None => {
                        if ready!(conn.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(Error::Closed)));
                        }
                    }
                },
                Framing::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() < 2 {
                        if ready!(conn.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(Error::Closed)));
                        }
                        continue;
                    }
                    if !conn.buf.starts_with(b"\r\n") {
                        return Poll::Ready(Some(Err(Error::Malformed("chunk data end"))));
                    }
                    conn.buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    if let Some((trailers, used)) = parse_trailers(&conn.buf)? {
                        conn.buf.advance(used);
                        self.framing = Framing::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    if conn.buf.len() >= MAX_HEAD {
                        return Poll::Ready(Some(Err(Error::HeadTooLarge)));
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    }
                }
            }
        }
    }
}

/// The chunk-size line at the start of `buf` (RFC 9112 7.1: hex digits, optional whitespace,
/// extensions of visible characters, CRLF): its length and the size, or `None` while it is
/// incomplete. A bare LF, a control character or more than 16 digits is refused.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let malformed = Error::Malformed("chunk size");
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > 16 {
        return Err(malformed);
    }
    let rest = buf.get(digits..).unwrap_or_default();
    if rest.is_empty() {
        return Ok(None);
    }
    let hex = buf.get(..digits).unwrap_or_default();
    let size = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or(malformed)?;
    let blank = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let mut rest = rest.get(blank..).unwrap_or_default();
    if let Some((b';', extensions)) = rest.split_first() {
        let visible = extensions
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | 0x21..=0x7e))
            .count();
        rest = extensions.get(visible..).unwrap_or_default();
    }
    match rest {
        [] | [b'\r'] => Ok(None),
        [b'\r', b'\n', ..] => {
            let used = buf.len().saturating_sub(rest.len()).saturating_add(2);
            if used > MAX_CHUNK_LINE {
                return Err(Error::Malformed("chunk size line"));
            }
            Ok(Some((used, size)))
        }
        _ => Err(Error::Malformed("chunk size")),
    }
}

/// The trailer section at the start of `buf` (its fields, the empty line after them) and its
/// length, or `None` while it is incomplete.
fn parse_trailers(buf: &BytesMut) -> Result<Option<(HeaderMap, usize)>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let (used, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((used, _))) if used > MAX_HEAD => {
            return Err(Error::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
        Err(_) => return Err(Error::Malformed("trailers")),
    };
    // Every line ends in CRLF: a bare LF could end the section early for one reader and not
    // for another.
    let section = buf.get(..used).unwrap_or_default();
    let bare_lf = section
        .windows(2)
        .any(|w| w.get(1) == Some(&b'\n') && w.first() != Some(&b'\r'))
        || section.first() == Some(&b'\n');
    if bare_lf {
        return Err(Error::Malformed("trailers"));
    }
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Malformed("trailer name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| Error::Malformed("trailer value"))?;
        trailers.append(name, value);
    }
    Ok(Some((trailers, used)))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let frame = this.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = frame {
            // The connection is in an unknown state: closed, never pooled.
            this.conn = None;
            this.framing = Framing::Done;
            this.keep_alive = false;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Empty | Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty | Framing::Done => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Chunked(_) | Framing::Close => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
