//! HTTP: the negotiated version -> a hyper connection serving one service.
//!
//! TLS connections speak what ALPN chose, served by hyper's own HTTP/1.1 or HTTP/2 connection
//! (no version sniffing, no rewind buffer); plaintext connections are detected (HTTP/1.1, or
//! HTTP/2 with prior knowledge).

use std::error::Error as StdError;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};

use meshgate_config::model::Limits;

use crate::body::ResponseBody;
use crate::tls::server::HttpVersion;

/// The server builders, configured once.
#[derive(Debug, Clone)]
pub struct HttpServers {
    detect: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// A connection's failure, whichever builder served it.
pub type ServeError = Box<dyn StdError + Send + Sync>;

impl HttpServers {
    /// Builders with the MeshGateway's limits.
    pub fn new(limits: &Limits) -> Self {
        let header_bytes = limits.max_request_header_bytes as usize;
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_header_timeout)
            .max_buf_size(header_bytes)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_request_header_bytes);
        let mut detect = auto::Builder::new(TokioExecutor::new());
        detect
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_header_timeout)
            .max_buf_size(header_bytes)
            .keep_alive(true);
        detect
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_request_header_bytes);
        Self {
            detect,
            http1,
            http2,
        }
    }

    /// Serves `io` until the client is done or shutdown drains it.
    pub async fn serve<I, S>(
        &self,
        io: I,
        version: Option<HttpVersion>,
        service: S,
        watcher: Watcher,
    ) -> Result<(), ServeError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<ResponseBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<ServeError>,
    {
        let io = TokioIo::new(io);
        match version {
            Some(HttpVersion::Http1) => Ok(watcher
                .watch(self.http1.serve_connection(io, service))
                .await?),
            Some(HttpVersion::Http2) => Ok(watcher
                .watch(self.http2.serve_connection(io, service))
                .await?),
            None => {
                watcher
                    .watch(self.detect.serve_connection(io, service).into_owned())
                    .await
            }
        }
    }
}
