//! How upstream connections are made: TCP with nodelay and a connect timeout. Plaintext for
//! now; TLS and ISTIO_MUTUAL origination wrap this connector (issue 3).

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

/// The TCP connector every upstream pool uses.
pub fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(connect_timeout));
    c.set_keepalive(Some(Duration::from_secs(60)));
    c
}
