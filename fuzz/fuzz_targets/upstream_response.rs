//! Upstream responses: meshgate's own HTTP/1.1 client (`proxy/src/forward/h1.rs`, what reads a
//! backend's answer to a request without a body) reading any bytes an upstream sends, over a
//! real loopback connection, beside hyper's client reading the same bytes.
//!
//! The first input byte chooses the request's method (bit 0: `HEAD`, else `GET`) and where
//! the rest is cut into two writes (the other bits); the rest is what the upstream sends
//! before it closes the connection.
//!
//! Checks (besides never panicking or hanging):
//! - a response meshgate reads whole, hyper's client reads whole too, with the same status,
//!   fields (hyper's without the hop-by-hop ones, as meshgate forwards them), body and
//!   trailers. meshgate may refuse what hyper takes (it is the stricter), never
//!   take what hyper refuses or read it differently;
//! - a connection meshgate would pool again, hyper's would keep too: the same bytes are sent
//!   again by an upstream that then keeps the connection open, and once they have all arrived
//!   a connection meshgate still finds fit to reuse (`reusable`, then `closed`: no stray byte)
//!   must be one hyper's client is ready to send on.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use libfuzzer_sys::fuzz_target;
use meshgate_proxy::fuzzing::h1_conn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Net {
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
    address: SocketAddr,
}

fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        Net {
            runtime,
            listener,
            address,
        }
    })
}

/// A response as a client read it whole.
#[derive(Debug, PartialEq)]
struct Read {
    status: u16,
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
}

impl Read {
    fn new(parts: &http::response::Parts, body: Vec<u8>, trailers: Option<HeaderMap>) -> Self {
        Self {
            status: parts.status.as_u16(),
            fields: fields(&parts.headers),
            body,
            trailers: trailers.as_ref().map(fields),
        }
    }
}

/// What meshgate passes on of a response head, written here apart from the proxy's code: no
/// hop-by-hop field (RFC 9110 7.6.1), and none that a `Connection` token names.
fn remove_hop_by_hop(map: &mut HeaderMap) {
    const HOP_BY_HOP: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ];
    let named: Vec<String> = map
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| std::str::from_utf8(t.trim_ascii()).ok())
        .map(str::to_ascii_lowercase)
        .collect();
    let fields: Vec<(http::HeaderName, http::HeaderValue)> =
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    map.clear();
    for (name, value) in fields {
        let name_text = name.as_str();
        if !HOP_BY_HOP.contains(&name_text) && !named.iter().any(|n| n == name_text) {
            map.append(name, value);
        }
    }
}

/// The fields by name (a stable sort: each name's values in their order), as removing fields
/// from a map reorders the others.
fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<_> = map
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

/// Reads a whole body: its data and trailers, or why it broke off.
async fn whole<B>(body: &mut B) -> Result<(Vec<u8>, Option<HeaderMap>), String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => {
                assert!(trailers.is_none(), "two trailer sections");
                trailers = frame.into_trailers().ok();
            }
        }
    }
    Ok((data, trailers))
}

/// The upstream's side of a connection: its task, and word that it wrote all its bytes.
struct Upstream {
    served: tokio::task::JoinHandle<()>,
    written: tokio::sync::oneshot::Receiver<()>,
}

impl Upstream {
    /// Waits until the upstream wrote everything, then `SETTLE` for the bytes to be seen.
    async fn settle(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.written).await;
        tokio::time::sleep(SETTLE).await;
    }
}

/// A connection to the upstream, which reads the request head, then writes `bytes` in two
/// pieces (cut at `cut`) and closes its side when `close`.
async fn connect(bytes: Vec<u8>, cut: usize, close: bool) -> (TcpStream, Upstream) {
    let (done, written) = tokio::sync::oneshot::channel();
    let net = net();
    let client = TcpStream::connect(net.address).await.unwrap();
    let (mut upstream, _) = net.listener.accept().await.unwrap();
    let served = tokio::spawn(async move {
        // The head, so that closing does not reset the connection over unread bytes.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            match upstream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let (first, second) = bytes.split_at(cut.min(bytes.len()));
        if upstream.write_all(first).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
        if upstream.write_all(second).await.is_err() {
            return;
        }
        if close {
            let _ = upstream.shutdown().await;
        }
        let _ = done.send(());
        // Until the client is gone.
        let mut rest = Vec::new();
        let _ = upstream.read_to_end(&mut rest).await;
    });
    (client, Upstream { served, written })
}

fn request(method: &Method) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "backend")
        .body(Empty::new())
        .unwrap()
}

/// How long the bytes after a response get, once written, to be seen before a connection is
/// judged.
const SETTLE: Duration = Duration::from_millis(5);

/// meshgate's reading, and whether it would pool the connection again (after `SETTLE`, when
/// the upstream keeps the connection open).
async fn meshgate(
    method: &Method,
    bytes: Vec<u8>,
    cut: usize,
    close: bool,
) -> (Result<Read, String>, bool) {
    let (tcp, mut upstream) = connect(bytes, cut, close).await;
    let mut conn = h1_conn(tcp);
    let mut req = request(method);
    conn.write_head(&req).await.unwrap();
    // The request's map takes the response, as in the pool.
    let room = std::mem::take(req.headers_mut());
    let result = match conn.read_response(method, room).await {
        Ok(response) => {
            let (parts, mut body) = response.into_parts();
            let read = whole(&mut body)
                .await
                .map(|(data, trailers)| Read::new(&parts, data, trailers));
            let kept = match body.reusable() {
                Some(mut conn) if !close => {
                    upstream.settle().await;
                    !conn.closed()
                }
                Some(_) => true,
                None => false,
            };
            (read, kept)
        }
        Err(e) => (Err(e.to_string()), false),
    };
    upstream.served.abort();
    result
}

/// hyper's client's reading, and whether its connection is ready for another request (after
/// `SETTLE`, when the upstream keeps the connection open).
async fn hyper(
    method: &Method,
    bytes: Vec<u8>,
    cut: usize,
    close: bool,
) -> (Result<Read, String>, bool) {
    let (tcp, mut upstream) = connect(bytes, cut, close).await;
    let (read, sender) = hyper_read(method, tcp).await;
    let ready = match sender {
        Some(sender) if read.is_ok() && !close => {
            upstream.settle().await;
            !sender.is_closed() && sender.is_ready()
        }
        _ => false,
    };
    upstream.served.abort();
    (read, ready)
}

async fn hyper_read(
    method: &Method,
    tcp: TcpStream,
) -> (
    Result<Read, String>,
    Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
) {
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await {
            Ok(handshake) => handshake,
            Err(e) => return (Err(e.to_string()), None),
        };
    // Ends with the runtime's next turn once the sender and the connection are dropped.
    tokio::spawn(conn);
    let result = async {
        let response = sender
            .send_request(request(method))
            .await
            .map_err(|e| e.to_string())?;
        let (mut parts, mut body) = response.into_parts();
        // As meshgate forwards a response from hyper's client; its own client reads the head
        // without these.
        remove_hop_by_hop(&mut parts.headers);
        let (data, trailers) = whole(&mut body).await?;
        Ok(Read::new(&parts, data, trailers))
    }
    .await;
    (result, Some(sender))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let method = if mode & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let cut = usize::from(mode >> 1) * bytes.len() / 127;
    let net = net();
    let within = Duration::from_secs(10);
    let run = |close: bool| {
        net.runtime.block_on(async {
            let ours = tokio::time::timeout(within, meshgate(&method, bytes.to_vec(), cut, close))
                .await
                .expect("meshgate's client hung");
            if ours.0.is_err() {
                return (ours, (Err(String::new()), false));
            }
            let theirs = tokio::time::timeout(within, hyper(&method, bytes.to_vec(), cut, close))
                .await
                .expect("hyper's client hung");
            (ours, theirs)
        })
    };
    let ((ours, kept), (theirs, _)) = run(true);
    let Ok(ours) = ours else {
        return;
    };
    match theirs {
        Ok(theirs) => assert_eq!(
            ours, theirs,
            "meshgate and hyper read the response differently"
        ),
        Err(e) => panic!("meshgate took a response hyper refuses ({e}): {ours:?}"),
    }
    if !kept {
        return;
    }
    // Framed, so both end without the upstream's close.
    let ((ours, reuse), (theirs, ready)) = run(false);
    if let (Ok(_), Ok(_), true) = (&ours, &theirs, reuse) {
        assert!(
            ready,
            "meshgate would reuse a connection hyper's client would not: {ours:?}"
        );
    }
});
