//! TLS: our own credentials, the client-certificate verifier with the SPIFFE checks, and the
//! server side of the handshake.

pub mod bundle;
pub mod client;
pub mod credentials;
pub mod federation;
pub mod files;
pub mod inspect;
pub mod server;
mod verified;
pub mod verify;
pub mod workload_api;

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};

use meshgate_config::model::EcdhCurve;

/// The one crypto provider: aws-lc-rs (X25519MLKEM768 included), never ring. `curves`
/// (Istio's `meshConfig.tlsDefaults.ecdhCurves`) restricts and orders the key exchanges.
///
/// Cipher suites in Envoy's default order, AES-128-GCM first (rustls' own puts AES-256-GCM
/// first): what Istio's proxies negotiate with each other, and cheaper on both sides: 10 AES
/// rounds instead of 14 per block, and a TLS 1.3 key schedule on SHA-256, which x86 does in
/// hardware, instead of SHA-384.
pub fn provider(curves: Option<&[EcdhCurve]>) -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    if let Some(curves) = curves {
        provider.kx_groups = curves.iter().map(|c| kx(*c)).collect();
    }
    Arc::new(provider)
}

/// Seeds the provider's random generator now. aws-lc gathers CPU jitter entropy for its seed
/// on first use, about 40 ms of CPU: done while the configuration is built, before anything is
/// served, the first caller's handshake does not wait for it. Later calls cost a draw.
pub fn seed_random(provider: &CryptoProvider) -> Result<(), crate::runtime::BuildError> {
    provider
        .secure_random
        .fill(&mut [0; 16])
        .map_err(|_| crate::runtime::BuildError::Tls("the random number generator failed".into()))
}

fn kx(curve: EcdhCurve) -> &'static dyn SupportedKxGroup {
    match curve {
        EcdhCurve::X25519 => kx_group::X25519,
        EcdhCurve::P256 => kx_group::SECP256R1,
        EcdhCurve::P384 => kx_group::SECP384R1,
        EcdhCurve::X25519Mlkem768 => kx_group::X25519MLKEM768,
    }
}

/// `provider` with its TLS 1.2 suites restricted to `names` (OpenSSL names, in preference
/// order); TLS 1.3 suites stay, as Envoy's `cipher_suites` leave them. Empty: unchanged.
pub fn with_cipher_suites(provider: &Arc<CryptoProvider>, names: &[String]) -> Arc<CryptoProvider> {
    if names.is_empty() {
        return provider.clone();
    }
    let mut restricted = (**provider).clone();
    let tls13 = provider
        .cipher_suites
        .iter()
        .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)));
    let tls12 = names.iter().filter_map(|name| suite(name));
    restricted.cipher_suites = tls13.copied().chain(tls12).collect();
    Arc::new(restricted)
}

/// A TLS 1.2 suite by its OpenSSL name (`meshgate_config::model::CIPHER_SUITES`).
fn suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    Some(match name {
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}
