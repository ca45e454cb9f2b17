//! The client side: TLS origination to upstreams, as a DestinationRule's `tls` describes it.
//!
//! `ISTIO_MUTUAL` presents our own workload chain, trusts the mesh bundle, sends the SNI and
//! ALPN an Istio sidecar sends (`outbound_.<port>_._.<host>`; `istio-http/1.1, istio,
//! http/1.1` or `istio-h2, istio, h2`), and accepts the server by its SPIFFE ID (one of
//! `subjectAltNames` when given, else any valid SPIFFE ID chained to the bundle, as Istio).
//! `SIMPLE` and `MUTUAL` verify the server's name (or `subjectAltNames`) against
//! `caCertificates` or the bundle. Sessions are resumed (rustls' client session cache).

use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};

use meshgate_config::model::{Backend, BackendProtocol, ClientTls, UpstreamTls};

use super::credentials::{Credentials, TrustRoots};
use super::verify::{SpiffeServerVerifier, UnverifiedServer};
use crate::material::Material;
use crate::runtime::BuildError;

/// What the connector needs to originate TLS to one backend.
#[derive(Debug, Clone)]
pub struct Origination {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// The origination for `backend`, or `None` for plaintext.
/// `issuers` (the resolved `spec.trust.issuers`) bind an ISTIO_MUTUAL server's identity to
/// the CAs that may issue it, as they bind a client's.
pub fn origination(
    backend: &Backend,
    credentials: Option<&Credentials>,
    issuers: &[(String, Vec<String>)],
    material: &Material,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Origination>, BuildError> {
    let (settings, mutual, istio) = match &backend.policy.tls {
        UpstreamTls::Disable => return Ok(None),
        UpstreamTls::Simple(s) => (s, false, false),
        UpstreamTls::Mutual(s) => (s, true, false),
        UpstreamTls::IstioMutual(s) => (s, true, true),
    };
    let what = || {
        let source = backend
            .policy
            .source
            .as_deref()
            .unwrap_or("DestinationRule");
        format!("{source} for {}:{}", backend.host, backend.port)
    };
    // A Secret's CA is read where its rule applies: one still missing here would leave SIMPLE
    // verifying by the mesh bundle instead, so it is refused rather than fallen back from.
    if let Some(secret) = &settings.secret {
        if settings.ca_certificates.is_none() && !settings.insecure_skip_verify {
            return Err(BuildError::Tls(format!(
                "{}: the CA of Secret `{}` was not read",
                what(),
                secret.name
            )));
        }
    }
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        if settings.insecure_skip_verify && !istio {
            Arc::new(UnverifiedServer::new(provider.clone()))
        } else {
            Arc::new(server_verifier(
                settings,
                istio,
                credentials,
                issuers,
                material,
                provider,
                &what,
            )?)
        };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (mutual, istio) {
        (false, _) => builder.with_no_client_auth(),
        (true, true) => {
            let creds = credentials.ok_or_else(|| {
                BuildError::Tls(format!(
                    "{}: ISTIO_MUTUAL needs the MeshGateway identity",
                    what()
                ))
            })?;
            builder.with_client_cert_resolver(Arc::new(OwnClientCertificate(
                creds.certified_key.clone(),
            )))
        }
        (true, false) => {
            let (chain, key) = read_client_files(settings, material, &what)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| BuildError::Tls(format!("{}: client certificate: {e}", what())))?
        }
    };
    config.alpn_protocols = alpn(istio, backend.protocol);
    let sni = match &settings.sni {
        Some(sni) => sni.clone(),
        // Istio's sidecar SNI names the service port, subset (empty: none) and host.
        None if istio => format!(
            "outbound_.{}_.{}_.{}",
            backend.port,
            backend.subset.as_deref().unwrap_or(""),
            backend.host
        ),
        None => backend.host.clone(),
    };
    let server_name = ServerName::try_from(sni.clone())
        .map_err(|_| BuildError::Tls(format!("{}: `{sni}` is not a valid SNI", what())))?;
    Ok(Some(Origination {
        config: Arc::new(config),
        server_name,
    }))
}

/// The verifier of a server: by the mesh bundle (ISTIO_MUTUAL, and SIMPLE or MUTUAL without
/// `caCertificates`) or by `caCertificates`, with the CRLs that go with it.
fn server_verifier(
    settings: &ClientTls,
    istio: bool,
    credentials: Option<&Credentials>,
    issuers: &[(String, Vec<String>)],
    material: &Material,
    provider: &Arc<CryptoProvider>,
    what: &dyn Fn() -> String,
) -> Result<SpiffeServerVerifier, BuildError> {
    // The mesh's CRLs go with the mesh's bundle, and `caCrl` with them when the bundle
    // verifies (SIMPLE or MUTUAL without caCertificates); with `caCertificates`, `caCrl` alone.
    let ca_crls = match &settings.ca_crl {
        Some(path) if !istio => material.usable_crls(path)?,
        _ => Vec::new(),
    };
    let own = super::credentials::Revocation {
        crls: ca_crls.clone(),
        deny_expired: false,
    };
    let with_mesh = credentials.map(|c| super::credentials::Revocation {
        crls: c.revocation.crls.iter().cloned().chain(ca_crls).collect(),
        deny_expired: c.revocation.deny_expired,
    });
    let (roots, revocation) = match (&settings.ca_certificates, credentials) {
        (Some(path), _) if !istio => (
            TrustRoots::single(Arc::new(read_roots(path, material)?)),
            &own,
        ),
        (_, Some(c)) => (c.roots.clone(), with_mesh.as_ref().unwrap_or(&c.revocation)),
        (_, None) => {
            return Err(BuildError::Tls(format!(
                "{}: {} needs the MeshGateway identity (its trust bundle{})",
                what(),
                if istio {
                    "ISTIO_MUTUAL"
                } else {
                    "SIMPLE without caCertificates"
                },
                if istio { " and certificate" } else { "" }
            )))
        }
    };
    SpiffeServerVerifier::new(
        &roots,
        settings.subject_alt_names.clone(),
        istio,
        issuers,
        provider.clone(),
        revocation,
    )
    .map_err(|e| BuildError::Tls(format!("{}: {e}", what())))
}

fn alpn(istio: bool, protocol: BackendProtocol) -> Vec<Vec<u8>> {
    let list: &[&[u8]] = match (istio, protocol) {
        (true, BackendProtocol::Http1) => &[b"istio-http/1.1", b"istio", b"http/1.1"],
        (true, BackendProtocol::Http2) => &[b"istio-h2", b"istio", b"h2"],
        (false, BackendProtocol::Http1) => &[b"http/1.1"],
        (false, BackendProtocol::Http2) => &[b"h2"],
        // A sidecar's TCP: Istio's metadata exchange first, then plain Istio mTLS (a meshgate
        // server answers `istio`).
        (true, BackendProtocol::Opaque) => &[b"istio-peer-exchange", b"istio"],
        (false, BackendProtocol::Opaque) => &[],
    };
    list.iter().map(|p| p.to_vec()).collect()
}

/// Presents our workload chain to every upstream that asks.
#[derive(Debug)]
struct OwnClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OwnClientCertificate {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_roots(path: &Path, material: &Material) -> Result<RootCertStore, BuildError> {
    let mut roots = RootCertStore::empty();
    for cert in material.certificates(path)? {
        roots.add(cert.clone()).map_err(|e| BuildError::File {
            path: path.to_path_buf(),
            message: format!("unusable root: {e}"),
        })?;
    }
    Ok(roots)
}

fn read_client_files(
    settings: &ClientTls,
    material: &Material,
    what: &dyn Fn() -> String,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BuildError> {
    let (Some(cert), Some(key)) = (&settings.client_certificate, &settings.private_key) else {
        return Err(BuildError::Tls(format!(
            "{}: MUTUAL needs clientCertificate and privateKey",
            what()
        )));
    };
    Ok((material.certificates(cert)?.to_vec(), material.key(key)?))
}
