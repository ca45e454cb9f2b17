//! MeshGateway -> `ProxySettings`; Kyma `Istio` and `IstioOperator` -> `TrustSettings`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::HeaderName;

use super::install::{self, Install};
use super::virtual_service::parse_duration;
use super::{relative_to, Origin, Parsed};
use crate::error::ConfigError;
use crate::model::authz::Cidr;
use crate::model::{
    AccessLogEncoding, AdminSettings, BundleEndpoint, BundleSource, EndpointProfile,
    ForwardClientCert, HttpSettings, Identity, IdentitySource, IssuerBinding, IssuerKey, Limits,
    ProxyProtocol, ProxySettings, Tagging, TrustBundle, TrustSettings, UnderscoreHeaders,
    WorkloadApi,
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

/// `spec.identity`: the three files, or the Workload API; and the CRLs.
fn identity(
    o: &Origin,
    id: &crate::raw::mesh_gateway::Identity,
    errors: &mut Vec<ConfigError>,
) -> Option<Identity> {
    let deny_expired_crl = match id.expired_crl.as_deref() {
        None | Some("USE") => false,
        Some("DENY") => true,
        Some(other) => {
            errors.push(o.error(
                "spec.identity.expiredCrl",
                format!("`{other}` is not USE or DENY"),
            ));
            false
        }
    };
    let files = [
        ("certChain", &id.cert_chain),
        ("privateKey", &id.private_key),
        ("rootCerts", &id.root_certs),
    ];
    let source = match (
        &id.workload_api,
        &id.cert_chain,
        &id.private_key,
        &id.root_certs,
    ) {
        (None, Some(cert_chain), Some(private_key), Some(root_certs)) => IdentitySource::Files {
            cert_chain: relative_to(&o.file, cert_chain),
            private_key: relative_to(&o.file, private_key),
            root_certs: relative_to(&o.file, root_certs),
        },
        (None, ..) => {
            for (name, _) in files.iter().filter(|(_, f)| f.is_none()) {
                errors.push(o.error(
                    format!("spec.identity.{name}"),
                    "required (or `workloadApi` instead of the three files)",
                ));
            }
            return None;
        }
        (Some(api), ..) => {
            for (name, _) in files.iter().filter(|(_, f)| f.is_some()) {
                errors.push(o.error(
                    format!("spec.identity.{name}"),
                    "not with `workloadApi`: the Workload API serves the chain, key and bundle",
                ));
            }
            IdentitySource::WorkloadApi(workload_api(o, api, errors)?)
        }
    };
    Some(Identity {
        source,
        crl: id.crl.as_ref().map(|c| relative_to(&o.file, c)),
        deny_expired_crl,
    })
}

/// `spec.identity.workloadApi`.
fn workload_api(
    o: &Origin,
    api: &crate::raw::mesh_gateway::WorkloadApi,
    errors: &mut Vec<ConfigError>,
) -> Option<WorkloadApi> {
    let before = errors.len();
    if let Some(socket) = &api.socket {
        if let Err(why) = check_endpoint(socket) {
            errors.push(o.error(
                "spec.identity.workloadApi.socket",
                format!("`{socket}`: {why}"),
            ));
        }
    }
    if let Some(id) = &api.spiffe_id {
        if let Err(e) = meshgate_spiffe::SpiffeId::parse(id) {
            errors.push(o.error("spec.identity.workloadApi.spiffeId", format!("`{id}`: {e}")));
        }
    }
    let start_timeout = match &api.start_timeout {
        None => Duration::from_secs(30),
        Some(t) => match parse_duration(t) {
            Some(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(3600) => d,
            _ => {
                errors.push(o.error(
                    "spec.identity.workloadApi.startTimeout",
                    format!("`{t}` is not a duration from 100ms to 1h"),
                ));
                Duration::ZERO
            }
        },
    };
    (errors.len() == before).then(|| WorkloadApi {
        socket: api.socket.clone(),
        spiffe_id: api.spiffe_id.clone(),
        start_timeout,
    })
}

/// A SPIFFE Workload API endpoint address, as the SPIFFE Workload Endpoint spec defines it:
/// `unix:` with an absolute path (`unix:///run/spire/agent.sock`, `unix:/run/...`), or
/// `tcp://` with an IP address and port.
fn check_endpoint(socket: &str) -> Result<(), &'static str> {
    if let Some(rest) = socket.strip_prefix("unix:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if !path.starts_with('/') || path.len() < 2 {
            return Err("a unix: address needs an absolute path (unix:///path/to/agent.sock)");
        }
        if path.contains(['?', '#']) {
            return Err("a unix: address has no query or fragment");
        }
        return Ok(());
    }
    if let Some(rest) = socket.strip_prefix("tcp://") {
        return match rest.parse::<SocketAddr>() {
            Ok(_) => Ok(()),
            Err(_) => Err("a tcp:// address is an IP address and a port, no host name"),
        };
    }
    Err("not unix:///path or tcp://ip:port (SPIFFE_ENDPOINT_SOCKET syntax)")
}

/// The one MeshGateway.
pub(crate) fn compile(
    found: &[(Origin, MeshGatewaySpec)],
    install: &Install,
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
    let identity = spec
        .identity
        .as_ref()
        .and_then(|id| identity(o, id, errors));
    let socket = |field: &str, value: &str, errors: &mut Vec<ConfigError>| {
        value
            .parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(o.error(field, format!("`{value}` is not an ip:port address")))
            })
            .ok()
    };
    let admin = spec.admin.as_ref().and_then(|a| {
        let address = socket("spec.admin.address", &a.address, errors);
        let probes = match &a.probes {
            Some(p) => Some(socket("spec.admin.probes", p, errors)?),
            None => None,
        };
        Some(AdminSettings {
            address: address?,
            probes,
            debug_endpoints: a.debug_endpoints.unwrap_or(false),
        })
    });
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
    let tagging = tagging(o, spec, install, errors);
    // Settings that the MeshGateway and the installation resources may both give: they must
    // agree.
    let mut access_log = install.access_log.clone();
    if let Some(a) = &spec.access_log {
        let path = Some(relative_to(&o.file, &a.path));
        install::set(&mut access_log, path, o, "spec.accessLog.path", errors);
    }
    let mut root_namespace = install.root_namespace.clone();
    if let Some(ns) = &spec.root_namespace {
        install::set(
            &mut root_namespace,
            ns.clone(),
            o,
            "spec.rootNamespace",
            errors,
        );
    }
    if errors.len() > before {
        return None;
    }
    // Istio's default encoding is TEXT; a MeshGateway's own access log, without meshConfig,
    // keeps meshgate's JSON lines.
    let access_log_encoding = match (&install.access_log_encoding, &install.access_log) {
        (Some(e), _) => e.value,
        (None, Some(_)) => AccessLogEncoding::Text,
        (None, None) => AccessLogEncoding::Json,
    };
    let proxy = ProxySettings {
        name: o.key(),
        labels: spec.labels.clone(),
        identity,
        admin,
        outbound,
        tagging: tagging?,
        access_log: access_log.and_then(|a| a.value),
        access_log_encoding,
        outbound_policy: install
            .outbound
            .as_ref()
            .map(|s| s.value)
            .unwrap_or_default(),
        tracing: install.tracing.as_ref().is_some_and(|s| s.value),
        num_trusted_proxies: install.num_trusted_proxies.as_ref().map_or(0, |s| s.value),
        proxy_protocol: proxy_protocol(o, spec, install, errors),
        root_namespace: root_namespace
            .map(|s| s.value)
            .unwrap_or_else(|| super::ROOT_NAMESPACE.to_string()),
        reload_poll: reload_poll(o, spec, errors),
        limits: limits(o, spec, errors),
        http: HttpSettings {
            path_normalization: install.path_normalization.unwrap_or_default(),
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

/// `spec.reload.pollInterval`: default 2 s; `0s` turns polling off. From 10 ms (each poll
/// reads every file) to 24 h.
fn reload_poll(
    o: &Origin,
    spec: &MeshGatewaySpec,
    errors: &mut Vec<ConfigError>,
) -> Option<Duration> {
    let Some(text) = spec.reload.as_ref().and_then(|r| r.poll_interval.as_ref()) else {
        return Some(DEFAULT_RELOAD_POLL);
    };
    let (least, most) = RELOAD_POLL;
    match parse_duration(text) {
        Some(d) if d.is_zero() => None,
        Some(d) if (least..=most).contains(&d) => Some(d),
        _ => {
            errors.push(o.error(
                "spec.reload.pollInterval",
                format!("`{text}` is not a duration from {least:?} to {most:?}, or 0s for never"),
            ));
            None
        }
    }
}

/// A bundle endpoint: an `https` URL, its profile and what the profile needs.
fn bundle_endpoint(
    o: &Origin,
    path: &str,
    e: &crate::raw::mesh_gateway::BundleEndpoint,
    errors: &mut Vec<ConfigError>,
) -> Option<BundleEndpoint> {
    let before = errors.len();
    let url = match &e.url {
        Some(url) => {
            let ok = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("https") && u.host().is_some());
            if ok.is_none() {
                errors.push(o.error(
                    format!("{path}.url"),
                    format!("`{url}` is not an https://host[:port]/path URL"),
                ));
            }
            url.clone()
        }
        None => {
            errors.push(o.error(format!("{path}.url"), "required"));
            String::new()
        }
    };
    let profile = match (e.profile.as_deref(), &e.spiffe_id, &e.ca_certificates) {
        (Some("https_web"), None, ca) => Some(EndpointProfile::HttpsWeb {
            ca_certificates: ca.as_ref().map(|f| relative_to(&o.file, f)),
        }),
        (Some("https_spiffe"), Some(id), None) => match meshgate_spiffe::SpiffeId::parse(id) {
            Ok(_) => Some(EndpointProfile::HttpsSpiffe {
                spiffe_id: id.clone(),
            }),
            Err(err) => {
                errors.push(o.error(
                    format!("{path}.spiffeId"),
                    format!("`{id}` is not a SPIFFE ID: {err}"),
                ));
                None
            }
        },
        (Some("https_web"), Some(_), _) => {
            errors.push(o.error(
                format!("{path}.spiffeId"),
                "only with profile https_spiffe (https_web authenticates the server by its name)",
            ));
            None
        }
        (Some("https_spiffe"), None, _) => {
            errors.push(o.error(
                format!("{path}.spiffeId"),
                "required with profile https_spiffe: the endpoint server's SPIFFE ID",
            ));
            None
        }
        (Some("https_spiffe"), Some(_), Some(_)) => {
            errors.push(o.error(
                format!("{path}.caCertificates"),
                "only with profile https_web (https_spiffe verifies against the trust domain's bundle)",
            ));
            None
        }
        (other, _, _) => {
            errors.push(o.error(
                format!("{path}.profile"),
                format!(
                    "{}: https_web or https_spiffe",
                    other.map_or("required".to_string(), |p| format!(
                        "`{p}` is not a profile"
                    ))
                ),
            ));
            None
        }
    };
    let refresh = match &e.refresh {
        None => DEFAULT_BUNDLE_REFRESH,
        Some(text) => match parse_duration(text) {
            Some(d) if (BUNDLE_REFRESH.0..=BUNDLE_REFRESH.1).contains(&d) => d,
            _ => {
                errors.push(o.error(
                    format!("{path}.refresh"),
                    format!(
                        "`{text}` is not a duration from {:?} to {:?}",
                        BUNDLE_REFRESH.0, BUNDLE_REFRESH.1
                    ),
                ));
                DEFAULT_BUNDLE_REFRESH
            }
        },
    };
    (errors.len() == before).then_some(BundleEndpoint {
        url,
        profile: profile?,
        refresh,
    })
}

/// How often a bundle endpoint is fetched when its bundle gives no refresh hint.
const DEFAULT_BUNDLE_REFRESH: Duration = Duration::from_secs(300);

/// The range of a bundle endpoint's `refresh` (and of the refresh hints honoured).
pub const BUNDLE_REFRESH: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(86_400));

/// The range of `spec.reload.pollInterval`.
const RELOAD_POLL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(86_400));

/// `spec.limits`, over the defaults. Every value has a range (`Limits::RANGES`), so that no
/// setting can stall a connection's first byte forever, overflow a deadline, or starve the
/// handshake of its time.
fn limits(o: &Origin, spec: &MeshGatewaySpec, errors: &mut Vec<ConfigError>) -> Limits {
    let mut out = Limits::default();
    let Some(l) = &spec.limits else { return out };
    let (least, most) = Limits::TIMEOUTS;
    let mut duration = |field: &str, v: &Option<String>, zero_is_never: bool| {
        let text = v.as_ref()?;
        match parse_duration(text) {
            Some(d) if d.is_zero() && zero_is_never => Some(None),
            Some(d) if (least..=most).contains(&d) => Some(Some(d)),
            _ => {
                errors.push(o.error(
                    format!("spec.limits.{field}"),
                    format!(
                        "`{text}` is not a duration from {least:?} to {most:?}{}",
                        if zero_is_never {
                            ", or 0s for none"
                        } else {
                            ""
                        }
                    ),
                ));
                None
            }
        }
    };
    if let Some(d) = duration("idleTimeout", &l.idle_timeout, true) {
        out.idle_timeout = d;
    }
    if let Some(d) = duration("streamIdleTimeout", &l.stream_idle_timeout, true) {
        out.stream_idle_timeout = d;
    }
    if let Some(d) = duration("requestTimeout", &l.request_timeout, true) {
        out.request_timeout = d;
    }
    if let Some(Some(d)) = duration("handshakeTimeout", &l.handshake_timeout, false) {
        out.handshake_timeout = d;
    }
    if let Some(Some(d)) = duration("requestHeaderTimeout", &l.request_header_timeout, false) {
        out.request_header_timeout = d;
    }
    let mut count = |field: &str, v: Option<u32>, (min, max): (u32, u32)| match v {
        Some(n) if !(min..=max).contains(&n) => {
            errors.push(o.error(
                format!("spec.limits.{field}"),
                format!("{n} is not from {min} to {max}"),
            ));
            None
        }
        other => other,
    };
    if let Some(n) = count(
        "maxRequestHeaderBytes",
        l.max_request_header_bytes,
        Limits::REQUEST_HEADER_BYTES,
    ) {
        out.max_request_header_bytes = n;
    }
    if let Some(n) = count(
        "streamWriteBufferBytes",
        l.stream_write_buffer_bytes,
        Limits::STREAM_WRITE_BUFFER_BYTES,
    ) {
        out.stream_write_buffer_bytes = n;
    }
    // 0: no limit.
    match l.max_connections_per_listener {
        Some(0) => out.max_connections_per_listener = None,
        v => {
            if let Some(n) = count(
                "maxConnectionsPerListener",
                v,
                Limits::CONNECTIONS_PER_LISTENER,
            ) {
                out.max_connections_per_listener = Some(n);
            }
        }
    }
    if let Some(n) = count(
        "http2MaxConcurrentStreams",
        l.http2_max_concurrent_streams,
        Limits::HTTP2_STREAMS,
    ) {
        out.http2_max_concurrent_streams = n;
    }
    if let Some(n) = count(
        "maxCertificateChainLength",
        l.max_certificate_chain_length,
        Limits::CERTIFICATE_CHAIN,
    ) {
        out.max_certificate_chain_length = n;
    }
    if let Some(n) = count(
        "trustDomainLabels",
        l.trust_domain_labels,
        Limits::TRUST_DOMAIN_LABELS,
    ) {
        out.trust_domain_labels = n;
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

/// How often files are checked for changes by default.
const DEFAULT_RELOAD_POLL: Duration = Duration::from_secs(2);

fn tagging(
    o: &Origin,
    spec: &MeshGatewaySpec,
    install: &Install,
    errors: &mut Vec<ConfigError>,
) -> Option<Tagging> {
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
    let mut chosen = install.forward_client_cert.clone();
    let own = match t.and_then(|t| t.forward_client_cert.as_deref()) {
        None => None,
        Some("SANITIZE_SET") => Some(ForwardClientCert::SanitizeSet),
        Some("SANITIZE") => Some(ForwardClientCert::Sanitize),
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
    if let Some(mode) = own {
        install::set(
            &mut chosen,
            mode,
            o,
            "spec.tagging.forwardClientCert",
            errors,
        );
    }
    let details = t.and_then(|t| t.set_current_client_cert_details.as_ref());
    let proxy_protocol_tlv = match t.and_then(|t| t.proxy_protocol_tlv) {
        None => None,
        Some(kind @ 0xE0..=0xEF) => Some(kind as u8),
        Some(other) => {
            errors.push(o.error(
                "spec.tagging.proxyProtocolTlv",
                format!(
                    "{other} is not a custom PROXY v2 TLV type: use one of 224 to 239 (0xE0 to \
                     0xEF, PP2_TYPE_MIN_CUSTOM to PP2_TYPE_MAX_CUSTOM)"
                ),
            ));
            return None;
        }
    };
    Some(Tagging {
        origin: origin?,
        trust_domain: trust_domain?,
        principal: principal?,
        forward_client_cert: chosen.map_or(ForwardClientCert::SanitizeSet, |s| s.value),
        client_cert: details.is_some_and(|d| d.cert == Some(true)),
        client_chain: details.is_some_and(|d| d.chain == Some(true)),
        proxy_protocol_tlv,
    })
}

/// The trust domain, aliases and handshake policy, from the installation resources and the
/// MeshGateway's `spec.trust`.
pub(crate) fn trust(
    parsed: &Parsed,
    install: &Install,
    errors: &mut Vec<ConfigError>,
) -> Option<TrustSettings> {
    let before = errors.len();
    let trust_domain = |o: &Origin, field: &str, value: &str, errors: &mut Vec<ConfigError>| {
        match TrustDomain::new(value) {
            Ok(td) => Some(td),
            Err(e) => {
                errors.push(o.error(field, format!("`{value}` is not a valid trust domain: {e}")));
                None
            }
        }
    };
    let mut settings = TrustSettings {
        trust_domain: install
            .trust_domain
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_else(TrustDomain::cluster_local),
        aliases: install.aliases.clone(),
        cluster_local_is_local: true,
        allowed_trust_domains: None,
        issuers: install.issuers.clone(),
        bundles: install.bundles.clone(),
        ecdh_curves: install.ecdh_curves.clone(),
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
            for (i, bundle) in trust.bundles.iter().flatten().enumerate() {
                let path = format!("spec.trust.bundles[{i}]");
                let td = match &bundle.trust_domain {
                    Some(td) => trust_domain(o, &format!("{path}.trustDomain"), td, errors),
                    None => {
                        errors.push(o.error(format!("{path}.trustDomain"), "required"));
                        None
                    }
                };
                let source = match (&bundle.file, &bundle.endpoint) {
                    (Some(file), None) => Some(BundleSource::File(relative_to(&o.file, file))),
                    (None, Some(e)) => bundle_endpoint(o, &format!("{path}.endpoint"), e, errors)
                        .map(BundleSource::Endpoint),
                    _ => {
                        errors.push(o.error(
                            path.clone(),
                            "exactly one of file (PEM or a SPIFFE bundle) and endpoint is required",
                        ));
                        None
                    }
                };
                if let (Some(trust_domain), Some(source)) = (td, source) {
                    settings.bundles.push(TrustBundle {
                        trust_domain,
                        source,
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

/// `listen.proxyProtocol` (its trusted sources), or Istio's `gatewayTopology.proxyProtocol`
/// alone (every peer).
fn proxy_protocol(
    o: &Origin,
    spec: &MeshGatewaySpec,
    install: &Install,
    errors: &mut Vec<ConfigError>,
) -> Option<ProxyProtocol> {
    let ours = spec.listen.as_ref().and_then(|l| l.proxy_protocol.as_ref());
    if ours.is_none() && !install.proxy_protocol {
        return None;
    }
    let mut trusted_sources = Vec::new();
    for (i, s) in ours
        .and_then(|p| p.trusted_sources.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        match Cidr::parse(s) {
            Some(c) => trusted_sources.push(c),
            None => errors.push(o.error(
                format!("spec.listen.proxyProtocol.trustedSources[{i}]"),
                format!("`{s}` is not an address or CIDR block"),
            )),
        }
    }
    Some(ProxyProtocol { trusted_sources })
}
