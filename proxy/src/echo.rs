//! `meshgate echo`: a backend answering every request with JSON of what it received (method,
//! path, version, headers, body size, and the address it was reached on), for tests, demos and
//! load tests. Request trailers are echoed beside the headers.
//!
//! `/status/<code>` answers with that status; `/delay/<ms>` waits that long first. With `--tcp`
//! it echoes bytes instead.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::sync::watch;

use crate::listen::{accept_loop, bind};
use crate::respond::ResponseBody;

/// A running echo server.
#[derive(Debug)]
pub struct Echo {
    pub address: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl Echo {
    /// Binds `address` and serves HTTP/1.1 and h2c until dropped.
    pub fn start(address: SocketAddr) -> std::io::Result<Self> {
        let listener = bind(address)?;
        let address = listener.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let builder = Arc::new(Builder::new(TokioExecutor::new()));
        tokio::spawn(accept_loop(listener, rx, move |stream, _| {
            let builder = builder.clone();
            tokio::spawn(async move {
                let server = stream.local_addr().ok();
                let service = hyper::service::service_fn(move |req| echo(req, server));
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
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

async fn echo(
    req: Request<Incoming>,
    server: Option<SocketAddr>,
) -> Result<Response<ResponseBody>, Infallible> {
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
    Ok(response)
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
