//! HTTP: the negotiated version -> a hyper connection serving one service.
//!
//! TLS connections speak what ALPN chose; plaintext connections are detected (HTTP/1.1, or
//! HTTP/2 with prior knowledge).

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;

use crate::tls::server::HttpVersion;

/// The three server builders, configured once.
#[derive(Debug, Clone)]
pub struct HttpServers {
    detect: Builder<TokioExecutor>,
    http1: Builder<TokioExecutor>,
    http2: Builder<TokioExecutor>,
}

impl HttpServers {
    /// Builders with the header-read timeout applied to HTTP/1.1.
    pub fn new() -> Self {
        let mut detect = Builder::new(TokioExecutor::new());
        detect
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        detect.http2().timer(TokioTimer::new());
        Self {
            http1: detect.clone().http1_only(),
            http2: detect.clone().http2_only(),
            detect,
        }
    }

    /// The builder for a negotiated version, or the detecting one for plaintext.
    pub fn for_version(&self, version: Option<HttpVersion>) -> &Builder<TokioExecutor> {
        match version {
            None => &self.detect,
            Some(HttpVersion::Http1) => &self.http1,
            Some(HttpVersion::Http2) => &self.http2,
        }
    }
}

impl Default for HttpServers {
    fn default() -> Self {
        Self::new()
    }
}

/// How long an HTTP/1.1 client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
