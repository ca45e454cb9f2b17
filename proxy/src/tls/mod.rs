//! TLS: our own credentials, the client-certificate verifier with the SPIFFE checks, and the
//! server side of the handshake.

pub mod client;
pub mod credentials;
pub mod server;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};

use meshgate_config::model::EcdhCurve;

/// The one crypto provider: aws-lc-rs (X25519MLKEM768 included), never ring. `curves`
/// (Istio's `meshConfig.tlsDefaults.ecdhCurves`) restricts and orders the key exchanges.
pub fn provider(curves: Option<&[EcdhCurve]>) -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    if let Some(curves) = curves {
        provider.kx_groups = curves.iter().map(|c| kx(*c)).collect();
    }
    Arc::new(provider)
}

fn kx(curve: EcdhCurve) -> &'static dyn SupportedKxGroup {
    match curve {
        EcdhCurve::X25519 => kx_group::X25519,
        EcdhCurve::P256 => kx_group::SECP256R1,
        EcdhCurve::P384 => kx_group::SECP384R1,
        EcdhCurve::X25519Mlkem768 => kx_group::X25519MLKEM768,
    }
}
