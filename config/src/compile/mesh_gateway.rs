//! MeshGateway -> `ProxySettings`; Kyma `Istio` and `IstioOperator` -> `TrustSettings`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::HeaderName;

use super::virtual_service::parse_duration;
use super::{relative_to, Origin, Parsed};
use crate::error::ConfigError;
use crate::model::path::{NormalizationMode, PathNormalization};
use crate::model::{
    EcdhCurve, ForwardClientCert, HttpSettings, IdentityFiles, IssuerBinding, IssuerKey, Limits,
    ProxySettings, Tagging, TrustSettings, UnderscoreHeaders,
};
use crate::raw::mesh_gateway::MeshGatewaySpec;
use crate::spiffe::TrustDomain;

/// Where Gateway ports bind, and the DNS overrides for upstream names.
pub(crate) struct ListenSettings {
    pub address: IpAddr,
    pub port_overrides: BTreeMap<u16, u16>,
    /// (host, port) -> address, from `spec.resolve`.
    pub resolve: Vec<((String, u16), SocketAddr)>,
}

/// The one MeshGateway.
pub(crate) fn compile(
    found: &[(Origin, MeshGatewaySpec)],
    path_normalization: PathNormalization,
    errors: &mut Vec<ConfigError>,
) -> Option<(ProxySettings, ListenSettings)> {
    let (o, spec) = match found {
        [one] => one,
        [] => {
            errors.push(ConfigError::global(
                "no MeshGateway (apiVersion meshgate.dev/v1alpha1) found: exactly one is required",
            ));
            return None;
        }
        [_, rest @ ..] => {
            for (o, _) in rest {
                errors.push(o.error("metadata", "a second MeshGateway: exactly one is required"));
            }
            return None;
        }
    };
    let before = errors.len();
    let identity = spec.identity.as_ref().map(|id| IdentityFiles {
        cert_chain: relative_to(&o.file, &id.cert_chain),
        private_key: relative_to(&o.file, &id.private_key),
        root_certs: relative_to(&o.file, &id.root_certs),
    });
    let socket = |field: &str, value: &str, errors: &mut Vec<ConfigError>| {
        value
            .parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(o.error(field, format!("`{value}` is not an ip:port address")))
            })
            .ok()
    };
    let admin = spec
        .admin
        .as_ref()
        .and_then(|a| socket("spec.admin.address", &a.address, errors));
    let outbound = spec
        .outbound
        .as_ref()
        .and_then(|a| socket("spec.outbound.address", &a.address, errors));
    let mut listen = ListenSettings {
        address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port_overrides: BTreeMap::new(),
        resolve: Vec::new(),
    };
    for (i, r) in spec.resolve.iter().enumerate() {
        let field = format!("spec.resolve[{i}]");
        match (u16::try_from(r.port), r.address.parse::<SocketAddr>()) {
            (Ok(port), Ok(address)) if port > 0 => listen
                .resolve
                .push(((r.host.to_ascii_lowercase(), port), address)),
            (Err(_), _) | (Ok(0), _) => {
                errors.push(o.error(format!("{field}.port"), "ports are 1 to 65535"))
            }
            _ => errors.push(o.error(
                format!("{field}.address"),
                format!("`{}` is not an ip:port address", r.address),
            )),
        }
    }
    if let Some(l) = &spec.listen {
        if let Some(address) = &l.address {
            match address.parse() {
                Ok(ip) => listen.address = ip,
                Err(_) => errors.push(o.error(
                    "spec.listen.address",
                    format!("`{address}` is not an IP address"),
                )),
            }
        }
        for (&from, &to) in &l.port_overrides {
            // `to: 0` binds an ephemeral port (tests, or several proxies on one host).
            match (u16::try_from(from), u16::try_from(to)) {
                (Ok(from), Ok(to)) if from > 0 => {
                    listen.port_overrides.insert(from, to);
                }
                _ => errors.push(o.error(
                    format!("spec.listen.portOverrides.{from}"),
                    "ports are 1 to 65535 (0 as the local port binds an ephemeral one)",
                )),
            }
        }
    }
    let tagging = tagging(o, spec, errors);
    if errors.len() > before {
        return None;
    }
    let proxy = ProxySettings {
        name: o.key(),
        labels: spec.labels.clone(),
        identity,
        admin,
        outbound,
        tagging: tagging?,
        access_log: spec
            .access_log
            .as_ref()
            .map(|a| relative_to(&o.file, &a.path)),
        reload_poll: reload_poll(o, spec, errors),
        limits: limits(o, spec, errors),
        http: HttpSettings {
            path_normalization,
            headers_with_underscores: underscores(o, spec, errors),
        },
        session_resumption: spec
            .tls
            .as_ref()
            .and_then(|t| t.session_resumption)
            .unwrap_or(true),
    };
    Some((proxy, listen))
}

/// `spec.reload.pollInterval`: default 2 s; `0s` turns polling off.
fn reload_poll(
    o: &Origin,
    spec: &MeshGatewaySpec,
    errors: &mut Vec<ConfigError>,
) -> Option<Duration> {
    let Some(text) = spec.reload.as_ref().and_then(|r| r.poll_interval.as_ref()) else {
        return Some(DEFAULT_RELOAD_POLL);
    };
    match parse_duration(text) {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => {
            errors.push(o.error(
                "spec.reload.pollInterval",
                format!("`{text}` is not a duration such as 2s"),
            ));
            None
        }
    }
}

/// `spec.limits`, over the defaults.
fn limits(o: &Origin, spec: &MeshGatewaySpec, errors: &mut Vec<ConfigError>) -> Limits {
    let mut out = Limits::default();
    let Some(l) = &spec.limits else { return out };
    if let Some(text) = &l.idle_timeout {
        match parse_duration(text) {
            Some(d) => out.idle_timeout = (!d.is_zero()).then_some(d),
            None => errors.push(o.error(
                "spec.limits.idleTimeout",
                format!("`{text}` is not a duration such as 1h, or 0s for none"),
            )),
        }
    }
    let mut duration = |field: &str, v: &Option<String>, into: &mut Duration| {
        if let Some(text) = v {
            match parse_duration(text) {
                Some(d) if !d.is_zero() => *into = d,
                _ => errors.push(o.error(
                    format!("spec.limits.{field}"),
                    format!("`{text}` is not a positive duration such as 10s"),
                )),
            }
        }
    };
    duration(
        "handshakeTimeout",
        &l.handshake_timeout,
        &mut out.handshake_timeout,
    );
    duration(
        "requestHeaderTimeout",
        &l.request_header_timeout,
        &mut out.request_header_timeout,
    );
    let mut positive = |field: &str, v: Option<u32>, min: u32| match v {
        Some(n) if n < min => {
            errors.push(o.error(
                format!("spec.limits.{field}"),
                format!("must be at least {min}"),
            ));
            None
        }
        other => other,
    };
    if let Some(n) = positive("maxRequestHeaderBytes", l.max_request_header_bytes, 8192) {
        out.max_request_header_bytes = n;
    }
    out.max_connections_per_listener = positive(
        "maxConnectionsPerListener",
        l.max_connections_per_listener,
        1,
    );
    if let Some(n) = positive(
        "http2MaxConcurrentStreams",
        l.http2_max_concurrent_streams,
        1,
    ) {
        out.http2_max_concurrent_streams = n;
    }
    out
}

/// `spec.http.headersWithUnderscoresAction`, Envoy's names.
fn underscores(
    o: &Origin,
    spec: &MeshGatewaySpec,
    errors: &mut Vec<ConfigError>,
) -> UnderscoreHeaders {
    let action = spec
        .http
        .as_ref()
        .and_then(|h| h.headers_with_underscores_action.as_deref());
    match action {
        None => UnderscoreHeaders::default(),
        Some("ALLOW") => UnderscoreHeaders::Allow,
        Some("DROP_HEADER") => UnderscoreHeaders::DropHeader,
        Some("REJECT_REQUEST") => UnderscoreHeaders::RejectRequest,
        Some(other) => {
            errors.push(o.error(
                "spec.http.headersWithUnderscoresAction",
                format!("`{other}` is not ALLOW, DROP_HEADER or REJECT_REQUEST"),
            ));
            UnderscoreHeaders::default()
        }
    }
}

/// `meshConfig.pathNormalization.normalization` of the IstioOperator, or meshgate's default.
pub(crate) fn path_normalization(
    parsed: &Parsed,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> PathNormalization {
    let mut chosen = PathNormalization::default();
    for (o, spec) in &parsed.operators {
        let Some(mode) = spec
            .mesh_config
            .as_ref()
            .and_then(|m| m.path_normalization.as_ref())
            .and_then(|p| p.normalization.as_deref())
        else {
            continue;
        };
        let field = "spec.meshConfig.pathNormalization.normalization";
        let mode = match mode {
            "NONE" => NormalizationMode::None,
            // Istio maps DEFAULT to BASE.
            "BASE" | "DEFAULT" => NormalizationMode::Base,
            "MERGE_SLASHES" => NormalizationMode::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => NormalizationMode::DecodeAndMergeSlashes,
            other => {
                errors.push(o.error(
                    field,
                    format!(
                        "`{other}` is not NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
                    ),
                ));
                continue;
            }
        };
        if matches!(mode, NormalizationMode::None | NormalizationMode::Base) {
            warnings.push(format!(
                "{}: {field} {mode:?}: `//admin` and `/admin%2Fsecret` reach the backend                  unchanged and dodge a policy on `/admin/*`; MERGE_SLASHES or                  DECODE_AND_MERGE_SLASHES close that (meshgate's default, without this                  setting, merges slashes and refuses escaped ones)",
                o.resource()
            ));
        }
        chosen = PathNormalization::istio(mode);
    }
    chosen
}

/// How often files are checked for changes by default.
const DEFAULT_RELOAD_POLL: Duration = Duration::from_secs(2);

fn tagging(o: &Origin, spec: &MeshGatewaySpec, errors: &mut Vec<ConfigError>) -> Option<Tagging> {
    let t = spec.tagging.as_ref();
    let mut header = |field: &str, value: Option<&String>, default: &'static str| {
        let Some(value) = value else {
            return Some(HeaderName::from_static(default));
        };
        match HeaderName::from_bytes(value.as_bytes()) {
            Ok(h) if h.as_str() == value => Some(h),
            _ => {
                errors.push(o.error(
                    format!("spec.tagging.{field}"),
                    format!("`{value}` is not a lowercase HTTP header name"),
                ));
                None
            }
        }
    };
    let origin = header(
        "originHeader",
        t.and_then(|t| t.origin_header.as_ref()),
        "x-mesh-origin",
    );
    let trust_domain = header(
        "trustDomainHeader",
        t.and_then(|t| t.trust_domain_header.as_ref()),
        "x-source-trust-domain",
    );
    let principal = header(
        "principalHeader",
        t.and_then(|t| t.principal_header.as_ref()),
        "x-source-principal",
    );
    let forward_client_cert = match t.and_then(|t| t.forward_client_cert.as_deref()) {
        None | Some("SANITIZE_SET") => ForwardClientCert::SanitizeSet,
        Some("SANITIZE") => ForwardClientCert::Sanitize,
        Some(other) => {
            errors.push(o.error(
                "spec.tagging.forwardClientCert",
                format!(
                    "`{other}` is not supported: meshgate owns x-forwarded-client-cert and never \
                     forwards a client's copy; use SANITIZE_SET or SANITIZE"
                ),
            ));
            return None;
        }
    };
    Some(Tagging {
        origin: origin?,
        trust_domain: trust_domain?,
        principal: principal?,
        forward_client_cert,
    })
}

/// The trust domain, aliases and handshake policy, from every source that names them.
pub(crate) fn trust(
    parsed: &Parsed,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<TrustSettings> {
    let before = errors.len();
    // (value, where it was set), to report a disagreement with both places.
    let mut named: Vec<(TrustDomain, String)> = Vec::new();
    let mut aliases = Vec::new();
    let mut curves = None;
    let trust_domain = |o: &Origin, field: &str, value: &str, errors: &mut Vec<ConfigError>| {
        match TrustDomain::new(value) {
            Ok(td) => Some(td),
            Err(e) => {
                errors.push(o.error(field, format!("`{value}` is not a valid trust domain: {e}")));
                None
            }
        }
    };
    for (o, spec) in &parsed.kyma {
        let Some(config) = &spec.config else { continue };
        o.unsupported(
            errors,
            "spec.config",
            &[
                ("numTrustedProxies", config.num_trusted_proxies.is_some()),
                ("authorizers", config.authorizers.is_some()),
                (
                    "gatewayExternalTrafficPolicy",
                    config.gateway_external_traffic_policy.is_some(),
                ),
                (
                    "forwardClientCertDetails",
                    config.forward_client_cert_details.is_some(),
                ),
                ("telemetry", config.telemetry.is_some()),
            ],
        );
        if let Some(value) = &config.trust_domain {
            if value.contains('_') {
                warnings.push(format!(
                    "{}: spec.config.trustDomain `{value}` contains `_`, which Istio rejects",
                    o.resource()
                ));
            }
            if let Some(td) = trust_domain(o, "spec.config.trustDomain", value, errors) {
                named.push((td, format!("{} spec.config.trustDomain", o.resource())));
            }
        }
    }
    for (o, spec) in &parsed.operators {
        let Some(mesh) = &spec.mesh_config else {
            continue;
        };
        o.unsupported(
            errors,
            "spec.meshConfig",
            &[
                ("defaultConfig", mesh.default_config.is_some()),
                (
                    "outboundTrafficPolicy",
                    mesh.outbound_traffic_policy.is_some(),
                ),
                ("accessLogFile", mesh.access_log_file.is_some()),
                ("enableTracing", mesh.enable_tracing.is_some()),
                ("extensionProviders", mesh.extension_providers.is_some()),
                ("caCertificates", mesh.ca_certificates.is_some()),
                ("rootNamespace", mesh.root_namespace.is_some()),
            ],
        );
        if let Some(tls) = &mesh.tls_defaults {
            o.unsupported(
                errors,
                "spec.meshConfig.tlsDefaults",
                &[
                    ("cipherSuites", tls.cipher_suites.is_some()),
                    ("minProtocolVersion", tls.min_protocol_version.is_some()),
                ],
            );
            let mut list = Vec::new();
            for (i, name) in tls.ecdh_curves.iter().enumerate() {
                match EcdhCurve::parse(name) {
                    Some(c) => list.push(c),
                    None => errors.push(o.error(
                        format!("spec.meshConfig.tlsDefaults.ecdhCurves[{i}]"),
                        format!("`{name}` is not X25519, P-256, P-384 or X25519MLKEM768"),
                    )),
                }
            }
            if !list.is_empty() {
                curves = Some(list);
            }
        }
        if let Some(value) = &mesh.trust_domain {
            if let Some(td) = trust_domain(o, "spec.meshConfig.trustDomain", value, errors) {
                named.push((td, format!("{} spec.meshConfig.trustDomain", o.resource())));
            }
        }
        for (i, value) in mesh.trust_domain_aliases.iter().enumerate() {
            let field = format!("spec.meshConfig.trustDomainAliases[{i}]");
            aliases.extend(trust_domain(o, &field, value, errors));
        }
    }
    if let Some((first, at)) = named.first() {
        for (other, other_at) in &named[1..] {
            if other != first {
                errors.push(ConfigError::global(format!(
                    "the trust domain is set twice and disagrees: `{first}` ({at}) and `{other}` ({other_at})"
                )));
            }
        }
    }
    let mut settings = TrustSettings {
        trust_domain: named
            .first()
            .map(|(td, _)| td.clone())
            .unwrap_or_else(TrustDomain::cluster_local),
        aliases,
        cluster_local_is_local: true,
        allowed_trust_domains: None,
        issuers: Vec::new(),
        ecdh_curves: curves,
    };
    if let [(o, spec)] = parsed.mesh_gateways.as_slice() {
        if let Some(trust) = &spec.trust {
            settings.cluster_local_is_local = trust.cluster_local_is_local.unwrap_or(true);
            for (i, issuer) in trust.issuers.iter().flatten().enumerate() {
                let path = format!("spec.trust.issuers[{i}]");
                let key = match (&issuer.certificate, &issuer.spki_sha256) {
                    (Some(file), None) => Some(IssuerKey::Certificate(relative_to(&o.file, file))),
                    (None, Some(hex))
                        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
                    {
                        Some(IssuerKey::SpkiSha256(hex.to_ascii_lowercase()))
                    }
                    (None, Some(hex)) => {
                        errors.push(o.error(
                            format!("{path}.spkiSha256"),
                            format!("`{hex}` is not 64 hex digits"),
                        ));
                        None
                    }
                    _ => {
                        errors.push(o.error(
                            path.clone(),
                            "exactly one of certificate and spkiSha256 is required",
                        ));
                        None
                    }
                };
                if issuer.trust_domains.is_empty() {
                    errors.push(o.error(
                        format!("{path}.trustDomains"),
                        "at least one trust domain is required",
                    ));
                }
                let mut tds = Vec::new();
                for (j, td) in issuer.trust_domains.iter().enumerate() {
                    tds.extend(trust_domain(
                        o,
                        &format!("{path}.trustDomains[{j}]"),
                        td,
                        errors,
                    ));
                }
                if let Some(issuer) = key {
                    settings.issuers.push(IssuerBinding {
                        issuer,
                        trust_domains: tds,
                    });
                }
            }
            if let Some(list) = &trust.trust_domains {
                let mut allowed = Vec::new();
                for (i, value) in list.iter().enumerate() {
                    let field = format!("spec.trust.trustDomains[{i}]");
                    allowed.extend(trust_domain(o, &field, value, errors));
                }
                settings.allowed_trust_domains = Some(allowed);
            }
        }
    }
    (errors.len() == before).then_some(settings)
}
