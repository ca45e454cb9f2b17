//! `meshgate echo`: a backend for tests, demos and load tests. It answers in one of two ways:
//!
//! - **JSON** (the default): what it received (method, path, version, headers, request
//!   trailers, body size, and the address it was reached on). `/status/<code>` answers with
//!   that status; `/delay/<ms>` waits that long first (at most a minute).
//! - **fortio**: when the query holds any of fortio's echo parameters (`delay`, `status`,
//!   `size`, `header`, `close`), or the path is `/echo` or under `/echo/`, it answers as
//!   `fortio server`'s echo does: the request body sent back (with its `Content-Type`), or
//!   `size` bytes of payload, shaped by those parameters (`fortio.rs` has them and the choices
//!   made where fortio leaves one). The path is not read then, as fortio does not read it. A bad
//!   value is a 400 that says what is wrong with it.
//!
//! `GET /stats/prometheus` is reserved: the latency histogram and counters of what it served
//! (`stats.rs`). With `--tcp` it echoes bytes instead.

mod fortio;
mod stats;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::sync::{watch, Notify};

use crate::listen::{accept_loop, bind};
use crate::respond::ResponseBody;

pub use fortio::{parse_duration, Limits};
use stats::{Mode, Stats};

/// A running echo server.
#[derive(Debug)]
pub struct Echo {
    pub address: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl Echo {
    /// Binds `address` and serves HTTP/1.1 and h2c until dropped, with fortio's default limits.
    pub fn start(address: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(address, Limits::default())
    }

    /// As `start`, with the longest `delay` and the largest `size` a request may ask for.
    pub fn start_with(address: SocketAddr, limits: Limits) -> std::io::Result<Self> {
        let listener = bind(address)?;
        let address = listener.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let builder = Arc::new(Builder::new(TokioExecutor::new()));
        let shared = Arc::new(Shared {
            payload: payload(limits.max_payload),
            limits,
            stats: Stats::new(),
        });
        tokio::spawn(accept_loop(listener, rx, move |stream, _| {
            let builder = builder.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                shared.stats.connection();
                let conn = Arc::new(Conn {
                    server: stream.local_addr().ok(),
                    close: Notify::new(),
                    shared,
                });
                let service = {
                    let conn = conn.clone();
                    hyper::service::service_fn(move |req| serve(req, conn.clone()))
                };
                let serving = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(serving);
                tokio::select! {
                    _ = serving.as_mut() => {}
                    // `close`: the response in flight is finished, then the connection ends
                    // (HTTP/1.1 after that response; HTTP/2 with a GOAWAY).
                    () = conn.close.notified() => {
                        serving.as_mut().graceful_shutdown();
                        let _ = serving.await;
                    }
                }
            });
        }));
        Ok(Self { address, shutdown })
    }

    /// Binds `address` and sends back every byte each connection sends, until the connection
    /// closes its side (`meshgate echo --tcp`): a backend for TCP and passthrough tests.
    pub fn start_tcp(address: SocketAddr) -> std::io::Result<Self> {
        let listener = bind(address)?;
        let address = listener.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, rx, |mut stream, _| {
            tokio::spawn(async move {
                let (mut from, mut to) = stream.split();
                if tokio::io::copy(&mut from, &mut to).await.is_ok() {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut to).await;
                }
            });
        }));
        Ok(Self { address, shutdown })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Default for Limits {
    /// fortio's defaults: `-max-echo-delay` 1.5 s (to exceed Envoy's default 1 s timeout) and
    /// `-maxpayloadsizekb` 256.
    fn default() -> Self {
        Self {
            max_delay: Duration::from_millis(1500),
            max_payload: 256 * 1024,
        }
    }
}

/// What every connection of one echo server shares.
#[derive(Debug)]
struct Shared {
    limits: Limits,
    /// `limits.max_payload` bytes that `size` responses are cut from.
    payload: Bytes,
    stats: Stats,
}

/// One connection: the address it was accepted on, and the signal that a request asked to
/// close it.
#[derive(Debug)]
struct Conn {
    server: Option<SocketAddr>,
    close: Notify,
    shared: Arc<Shared>,
}

/// Answers one request, and counts it.
async fn serve(
    req: Request<Incoming>,
    conn: Arc<Conn>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    if req.uri().path() == STATS_PATH {
        return Ok(stats(req.method(), &conn.shared.stats));
    }
    let (mode, (response, received)) = if fortio::asked(req.uri().path(), req.uri().query()) {
        (Mode::Fortio, fortio_echo(req, &conn).await)
    } else {
        (Mode::Json, json_echo(req, conn.server).await)
    };
    let sent = response.body().size_hint().exact().unwrap_or(0);
    conn.shared
        .stats
        .request(mode, response.status(), started.elapsed(), received, sent);
    Ok(response)
}

/// fortio's echo: the parameters drawn, then the body read, the delay slept, and the request
/// body (or `size` payload bytes) sent back. Returns the response and the request body's size.
async fn fortio_echo(req: Request<Incoming>, conn: &Conn) -> (Response<ResponseBody>, u64) {
    let shared = &conn.shared;
    let query = req.uri().query().unwrap_or("");
    let answer = fortio::answer(query, shared.limits, &mut || fastrand::u32(..1_000_000));
    // The body is read even for a refused request, so the connection stays usable.
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes());
    let received = body.as_ref().map_or(0, |b| b.len() as u64);
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            return (
                plain(
                    StatusCode::BAD_REQUEST,
                    format!("bad echo parameter: {e}\n"),
                ),
                received,
            )
        }
    };
    let Ok(body) = body else {
        return (
            plain(
                StatusCode::BAD_REQUEST,
                "cannot read the request body\n".into(),
            ),
            received,
        );
    };
    if let Some(delay) = answer.delay.filter(|d| !d.is_zero()) {
        tokio::time::sleep(delay).await;
    }
    let (content, content_type) = match answer.size {
        Some(n) => (
            shared.payload.slice(..n.min(shared.payload.len())),
            Some(HeaderValue::from_static("application/octet-stream")),
        ),
        None => (body, parts.headers.get(header::CONTENT_TYPE).cloned()),
    };
    let mut response = Response::new(ResponseBody::full(content));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    // A `header=` replaces a header of the same name the echo set (Content-Type).
    for name in answer.headers.keys() {
        headers.remove(name);
    }
    headers.extend(answer.headers);
    if answer.close {
        if parts.version < Version::HTTP_2 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        conn.close.notify_one();
        shared.stats.closed();
    }
    (response, received)
}

/// meshgate's JSON echo. Returns the response and the request body's size.
async fn json_echo(
    req: Request<Incoming>,
    server: Option<SocketAddr>,
) -> (Response<ResponseBody>, u64) {
    let (parts, body) = req.into_parts();
    let (body_bytes, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers = collected
                .trailers()
                .map(names_and_values)
                .unwrap_or_default();
            (collected.to_bytes().len(), trailers)
        }
        Err(_) => (0, BTreeMap::new()),
    };
    let mut status = StatusCode::OK;
    let path = parts.uri.path();
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
    }
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", parts.version),
        "headers": names_and_values(&parts.headers),
        "trailers": trailers,
        "body_bytes": body_bytes,
        "server": server.map(|a| a.to_string()),
    });
    let mut response = Response::new(ResponseBody::full(Bytes::from(json.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (response, body_bytes as u64)
}

/// `/stats/prometheus`: GET (or HEAD) only.
fn stats(method: &Method, stats: &Stats) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{STATS_PATH} answers GET\n"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(ResponseBody::full(Bytes::from(stats.render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

fn plain(status: StatusCode, text: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `len` bytes that do not compress (a fixed seed, so every run sends the same bytes), as
/// fortio's payload is pseudo-random: made once per server, and sliced without a copy.
fn payload(len: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(0x6d65_7368_6761_7465);
    let mut bytes = vec![0; len];
    rng.fill(&mut bytes);
    Bytes::from(bytes)
}

/// Every value of every header, by name.
fn names_and_values(headers: &http::HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        out.entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}

/// The reserved path of the echo server's own statistics.
const STATS_PATH: &str = "/stats/prometheus";
