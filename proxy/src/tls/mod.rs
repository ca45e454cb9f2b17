//! TLS: our own credentials, the client-certificate verifier with the SPIFFE checks, and the
//! server side of the handshake.

pub mod credentials;
pub mod server;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider: aws-lc-rs (X25519MLKEM768 included), never ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
