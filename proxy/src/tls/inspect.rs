//! `meshgate pki inspect CERT -c CONFIG`: would this gateway accept the certificate from a
//! client of its `ISTIO_MUTUAL` servers, now, and if not, why — decided by the verifier the
//! handshake uses, with the configuration's bundle, trust domains, issuer binding, CRLs and
//! chain limit, so the answer is the handshake's own.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use meshgate_config::Model;

use super::credentials::{issuer_bindings, Credentials};
use super::verify::{rustls_peer_error, ChainLimit, SpiffeClientVerifier};
use crate::identity::{peer_identity, PeerError, PeerIdentity};
use crate::material::Material;
use crate::runtime::BuildError;

/// The identity an `ISTIO_MUTUAL` server of `model` would read from `chain` (leaf first), or
/// why the handshake would fail. `Err` when the configuration itself cannot be built.
pub fn would_accept(
    model: &Model,
    material: &Material,
    chain: &[CertificateDer<'static>],
) -> Result<Result<PeerIdentity, PeerError>, BuildError> {
    let provider = crate::tls::provider(model.trust.ecdh_curves.as_deref());
    let files = model.proxy.identity.as_ref().ok_or_else(|| {
        BuildError::Tls("the MeshGateway has no spec.identity: no ISTIO_MUTUAL server".into())
    })?;
    let credentials = Credentials::load(files, &model.trust.bundles, material, &provider)?;
    let issuers = issuer_bindings(&model.trust.issuers, material)?;
    let verifier = SpiffeClientVerifier::new(
        &credentials.roots,
        model.trust.clone(),
        issuers,
        provider.clone(),
        &credentials.revocation,
    )
    .map_err(|e| BuildError::Tls(format!("trust bundle: {e}")))?;
    // The bundle's verdict: a server's own subjectAltNames and pins are not asked here.
    let verifier = ChainLimit {
        inner: Arc::new(verifier),
        most: model.proxy.limits.max_certificate_chain_length as usize,
        checks: Default::default(),
    };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Ok(Err(PeerError::NoCertificate));
    };
    Ok(
        match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            Ok(_) => peer_identity(leaf),
            Err(e) => Err(rustls_peer_error(&e)),
        },
    )
}
