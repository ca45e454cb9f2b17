//! Gateways selected by this proxy's labels -> listeners, one per port.
//!
//! Servers on one port must all speak one protocol: plaintext HTTP, HTTPS, TCP (plaintext or
//! TLS terminated), PASSTHROUGH or AUTO_PASSTHROUGH. Each TLS-terminating server is a TLS group
//! of its own, as each is one of Envoy's filter chains with its own route configuration
//! (`https.<port>.<portName>.<gateway>.<namespace>`): a connection's SNI picks the server (the
//! proxy's handshake), and the request's host must then be a host that server serves. A host
//! that two TLS servers of a port serve is an error (Istio skips the second).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::credential::Credentials;
use super::mesh_gateway::ListenSettings;
use super::{relative_to, Origin};
use crate::error::ConfigError;
use crate::model::{
    ClientCertChecks, HostMatcher, Listener, ListenerKind, ListenerProtocol, NamespaceFilter,
    RouteTable, ServerCertificate, ServerHost, ServerTls, ServerTlsMode, TlsVersion, CIPHER_SUITES,
};
use crate::raw::gateway::{listed, GatewaySpec, Server, ServerTls as RawTls};

pub(crate) fn compile(
    found: &[(Origin, GatewaySpec)],
    labels: &BTreeMap<String, String>,
    listen: &ListenSettings,
    credentials: &mut Credentials,
    errors: &mut Vec<ConfigError>,
) -> Vec<Listener> {
    let mut listeners: Vec<Listener> = Vec::new();
    for (o, spec) in found {
        // Istio applies a Gateway to the workloads whose labels include its selector.
        if !spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        if spec.servers.is_empty() {
            errors.push(o.error("spec.servers", "at least one server is required"));
        }
        let mut port_names: Vec<(&str, usize)> = Vec::new();
        for (i, server) in spec.servers.iter().enumerate() {
            let path = format!("spec.servers[{i}]");
            // Istio's validation: a Gateway's port names are unique (an HTTPS server's name
            // is its route configuration's).
            if let Some(name) = server.port.name.as_deref().filter(|n| !n.is_empty()) {
                if let Some((_, j)) = port_names.iter().find(|(n, _)| *n == name) {
                    errors.push(o.error(
                        format!("{path}.port.name"),
                        format!(
                            "`{name}` already names spec.servers[{j}].port: port names are \
                             unique in a Gateway, as Istio validates them"
                        ),
                    ));
                    continue;
                }
                port_names.push((name, i));
            }
            let Some((mut compiled, tls)) =
                compile_server(o, &path, server, listen, credentials, errors)
            else {
                continue;
            };
            let Some(listener) = listeners.iter_mut().find(|l| l.port == compiled.port) else {
                if let Some(tls) = tls {
                    compiled.tls.push(tls);
                    for s in &mut compiled.servers {
                        s.tls = Some(0);
                    }
                }
                listeners.push(compiled);
                continue;
            };
            if listener.protocol != compiled.protocol {
                errors.push(o.error(
                    format!("{path}.port"),
                    format!(
                        "port {} is already served as {}: servers sharing a port must all be \
                         plaintext HTTP, all HTTPS, all TCP (or TLS terminated), all PASSTHROUGH \
                         or all AUTO_PASSTHROUGH",
                        compiled.port,
                        match listener.protocol {
                            ListenerProtocol::Https => "HTTPS",
                            ListenerProtocol::Http => "plaintext HTTP",
                            ListenerProtocol::AutoPassthrough => "AUTO_PASSTHROUGH",
                            ListenerProtocol::TlsPassthrough => "PASSTHROUGH",
                            ListenerProtocol::Tcp => "TCP",
                        }
                    ),
                ));
                continue;
            }
            // A TCP port terminates TLS for all its servers or for none (Istio skips a server
            // that would mix them).
            let plaintext_here = listener.servers.iter().any(|s| s.tls.is_none());
            if compiled.protocol == ListenerProtocol::Tcp
                && (tls.is_some() && plaintext_here || tls.is_none() && !listener.tls.is_empty())
            {
                errors.push(o.error(
                    format!("{path}.port"),
                    format!(
                        "port {} already serves TCP {} TLS: its servers must all terminate TLS \
                         (protocol TLS) or none (protocol TCP)",
                        compiled.port,
                        if plaintext_here { "without" } else { "with" }
                    ),
                ));
                continue;
            }
            // TLS servers sharing a port are told apart by SNI, each a group of its own (as
            // each is a filter chain of Envoy's with a route configuration of its own), and a
            // host may not be served by two: Istio skips such a server as a duplicate.
            let mut clash = false;
            for s in &compiled.servers {
                if let Some(other) = listener
                    .servers
                    .iter()
                    .find(|e| e.host == s.host && e.tls.is_some())
                {
                    clash = true;
                    errors.push(o.error(
                        format!("{path}.hosts"),
                        format!(
                            "`{}` is already served with TLS on port {} (Gateway {}): the SNI \
                             could not choose between the two servers (Istio skips this one as \
                             a duplicate host)",
                            s.host, compiled.port, other.gateway
                        ),
                    ));
                }
            }
            if clash {
                continue;
            }
            let group = tls.map(|tls| {
                listener.tls.push(tls);
                listener.tls.len().saturating_sub(1)
            });
            for s in &mut compiled.servers {
                s.tls = group;
            }
            listener.servers.append(&mut compiled.servers);
        }
    }
    listeners
}

fn compile_server(
    o: &Origin,
    path: &str,
    server: &Server,
    listen: &ListenSettings,
    credentials: &mut Credentials,
    errors: &mut Vec<ConfigError>,
) -> Option<(Listener, Option<ServerTls>)> {
    let before = errors.len();
    o.unsupported(
        errors,
        path,
        &[
            ("bind", server.bind.is_some()),
            ("defaultEndpoint", server.default_endpoint.is_some()),
        ],
    );
    o.unsupported(
        errors,
        &format!("{path}.port"),
        &[("targetPort", server.port.target_port.is_some())],
    );
    let port = match u16::try_from(server.port.number) {
        Ok(p) if p > 0 => p,
        _ => {
            errors.push(o.error(format!("{path}.port.number"), "ports must be 1 to 65535"));
            0
        }
    };
    let protocol = server.port.protocol.to_ascii_uppercase();
    let tls_path = format!("{path}.tls");
    let mut https_redirect = false;
    let mut passthrough = false;
    let mut sni_routed = false;
    let tcp = matches!(protocol.as_str(), "TCP" | "TLS");
    let tls = match (protocol.as_str(), &server.tls) {
        ("HTTP" | "HTTP2" | "GRPC" | "TCP", None) => None,
        ("HTTP" | "HTTP2" | "GRPC" | "TCP", Some(tls)) => {
            // Istio: on a plaintext server, `tls` may only ask for the redirect.
            https_redirect = tls.https_redirect.unwrap_or(false);
            let other = tls.mode.is_some() || tls.termination_fields().any(|(_, set)| set);
            if other {
                errors.push(o.error(
                    tls_path.clone(),
                    format!(
                        "protocol {protocol} is plaintext: only httpsRedirect may be set here; \
                         use protocol HTTPS for TLS"
                    ),
                ));
            }
            None
        }
        ("HTTPS", None) => {
            errors.push(o.error(
                tls_path.clone(),
                "protocol HTTPS needs tls (mode SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL)",
            ));
            None
        }
        ("HTTPS", Some(tls)) if tls.mode.as_deref() == Some("AUTO_PASSTHROUGH") => {
            errors.push(o.error(
                format!("{path}.port.protocol"),
                "AUTO_PASSTHROUGH forwards TLS it does not terminate: use protocol TLS",
            ));
            None
        }
        ("TLS" | "HTTPS", Some(tls))
            if matches!(
                tls.mode.as_deref(),
                Some("AUTO_PASSTHROUGH" | "PASSTHROUGH")
            ) =>
        {
            passthrough = true;
            sni_routed = tls.mode.as_deref() == Some("PASSTHROUGH");
            let redirect = ("httpsRedirect", tls.https_redirect.unwrap_or(false));
            for (field, set) in tls.termination_fields().chain([redirect]) {
                if set {
                    errors.push(o.error(
                        format!("{tls_path}.{field}"),
                        "PASSTHROUGH and AUTO_PASSTHROUGH do not terminate TLS: the client's \
                         TLS goes through to the destination, so no TLS setting applies here",
                    ));
                }
            }
            None
        }
        // TLS terminated, then bytes routed by `tcp` routes.
        ("HTTPS" | "TLS", Some(tls)) => server_tls(o, &tls_path, tls, credentials, errors),
        ("TLS", None) => {
            errors.push(o.error(
                tls_path.clone(),
                "protocol TLS needs tls: PASSTHROUGH or AUTO_PASSTHROUGH to pass it through, \
                 or SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL to terminate it",
            ));
            None
        }
        (other, _) => {
            errors.push(o.error(
                format!("{path}.port.protocol"),
                format!(
                    "`{other}` is not implemented: meshgate serves HTTP, HTTP2, GRPC, HTTPS, TCP \
                     and TLS"
                ),
            ));
            None
        }
    };
    if server.hosts.is_empty() {
        errors.push(o.error(format!("{path}.hosts"), "at least one host is required"));
    }
    let mut servers = Vec::new();
    for (h, host) in server.hosts.iter().enumerate() {
        let (namespace, name) = match host.split_once('/') {
            None | Some(("*", _)) => (
                NamespaceFilter::Any,
                host.rsplit('/').next().unwrap_or(host),
            ),
            Some((".", name)) => (NamespaceFilter::Exact(o.namespace.clone()), name),
            Some((ns, name)) => (NamespaceFilter::Exact(ns.to_string()), name),
        };
        match HostMatcher::parse(name) {
            Some(host) => servers.push(ServerHost {
                gateway: o.key(),
                namespace,
                host,
                tls: None,
                https_redirect,
            }),
            None => errors.push(o.error(
                format!("{path}.hosts[{h}]"),
                format!(
                    "`{host}` is not a host, `*.suffix` or `*` (optionally after `namespace/`)"
                ),
            )),
        }
    }
    if errors.len() > before {
        return None;
    }
    let bind_port = listen.port_overrides.get(&port).copied().unwrap_or(port);
    let listener = Listener {
        name: server
            .port
            .name
            .clone()
            .unwrap_or_else(|| format!("port-{port}")),
        kind: ListenerKind::Gateway,
        port,
        address: SocketAddr::new(listen.address, bind_port),
        protocol: if sni_routed {
            ListenerProtocol::TlsPassthrough
        } else if passthrough {
            ListenerProtocol::AutoPassthrough
        } else if tcp {
            ListenerProtocol::Tcp
        } else if tls.is_some() {
            ListenerProtocol::Https
        } else {
            ListenerProtocol::Http
        },
        tls: Vec::new(),
        servers,
        routes: RouteTable::default(),
        passthrough: Default::default(),
        sni_routes: Vec::new(),
        tcp_routes: Vec::new(),
    };
    Some((listener, tls))
}

/// The `tls` of an HTTPS server: `ISTIO_MUTUAL` with our identity, `SIMPLE`, `MUTUAL` or
/// `OPTIONAL_MUTUAL` with certificate files (relative to the Gateway's file, as meshgate's other paths).
fn server_tls(
    o: &Origin,
    tls_path: &str,
    tls: &RawTls,
    credentials: &mut Credentials,
    errors: &mut Vec<ConfigError>,
) -> Option<ServerTls> {
    let before = errors.len();
    let mode = match tls.mode.as_deref() {
        Some("ISTIO_MUTUAL") => {
            for (field, set) in tls.certificate_fields() {
                if set {
                    errors.push(o.error(
                        format!("{tls_path}.{field}"),
                        "ISTIO_MUTUAL presents the MeshGateway's identity and trusts its bundle: \
                         certificates are for SIMPLE and MUTUAL",
                    ));
                }
            }
            Some(ServerTlsMode::IstioMutual)
        }
        Some(mode @ ("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL")) => {
            let mutual = mode != "SIMPLE";
            if !mutual {
                for (field, set) in [
                    ("caCertificates", tls.ca_certificates.is_some()),
                    ("caCrl", tls.ca_crl.is_some()),
                    ("subjectAltNames", tls.subject_alt_names.is_some()),
                    (
                        "verifyCertificateSpki",
                        tls.verify_certificate_spki.is_some(),
                    ),
                    (
                        "verifyCertificateHash",
                        tls.verify_certificate_hash.is_some(),
                    ),
                ] {
                    if set {
                        errors.push(o.error(
                            format!("{tls_path}.{field}"),
                            "SIMPLE asks for no client certificate: use mode MUTUAL (or \
                             OPTIONAL_MUTUAL) to verify one",
                        ));
                    }
                }
            }
            let files = certificates(o, tls_path, tls, mutual, credentials, errors);
            files.map(|files| match mode {
                "MUTUAL" => ServerTlsMode::Mutual(files),
                "OPTIONAL_MUTUAL" => ServerTlsMode::OptionalMutual(files),
                _ => ServerTlsMode::Simple(files),
            })
        }
        Some(other @ ("PASSTHROUGH" | "AUTO_PASSTHROUGH")) => {
            errors.push(o.error(
                format!("{tls_path}.mode"),
                format!(
                    "{other} is not implemented: meshgate terminates SIMPLE, MUTUAL, \
                     OPTIONAL_MUTUAL and ISTIO_MUTUAL"
                ),
            ));
            None
        }
        Some(other) => {
            errors.push(o.error(
                format!("{tls_path}.mode"),
                format!("unknown TLS mode `{other}`"),
            ));
            None
        }
        None => {
            errors.push(o.error(
                format!("{tls_path}.mode"),
                "required (SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL)",
            ));
            None
        }
    };
    let version =
        |field: &str, value: Option<&str>, default, errors: &mut Vec<ConfigError>| match value {
            None | Some("TLS_AUTO") => default,
            Some("TLSV1_2") => TlsVersion::V1_2,
            Some("TLSV1_3") => TlsVersion::V1_3,
            Some(other) => {
                errors.push(o.error(
                    format!("{tls_path}.{field}"),
                    format!("`{other}` is not supported: meshgate speaks TLSV1_2 and TLSV1_3"),
                ));
                default
            }
        };
    let min_version = version(
        "minProtocolVersion",
        tls.min_protocol_version.as_deref(),
        TlsVersion::V1_2,
        errors,
    );
    let max_version = version(
        "maxProtocolVersion",
        tls.max_protocol_version.as_deref(),
        TlsVersion::V1_3,
        errors,
    );
    if min_version > max_version {
        errors.push(o.error(
            format!("{tls_path}.minProtocolVersion"),
            "is above maxProtocolVersion",
        ));
    }
    let mut cipher_suites = Vec::new();
    for (i, name) in tls.cipher_suites.iter().flatten().enumerate() {
        let field = format!("{tls_path}.cipherSuites[{i}]");
        if CIPHER_SUITES.contains(&name.as_str()) {
            if !cipher_suites.contains(name) {
                cipher_suites.push(name.clone());
            }
        } else if name.starts_with("TLS_AES_") || name.starts_with("TLS_CHACHA20_") {
            errors.push(o.error(
                field,
                format!(
                    "`{name}` is a TLS 1.3 suite: those are not configurable (as in Envoy); \
                     cipherSuites applies to TLS 1.2"
                ),
            ));
        } else {
            errors.push(o.error(
                field,
                format!(
                    "`{name}` is not offered by meshgate's TLS (rustls), which offers {}",
                    CIPHER_SUITES.join(", ")
                ),
            ));
        }
    }
    if !cipher_suites.is_empty() && min_version == TlsVersion::V1_3 {
        errors.push(o.error(
            format!("{tls_path}.cipherSuites"),
            "applies to TLS 1.2 only, and minProtocolVersion is TLSV1_3",
        ));
    }
    let client_checks = client_checks(o, tls_path, tls, errors);
    if errors.len() > before {
        return None;
    }
    mode.map(|mode| ServerTls {
        mode,
        min_version,
        max_version,
        cipher_suites,
        client_checks,
    })
}

/// The server's certificates, and its client CAs on MUTUAL and OPTIONAL_MUTUAL, from one of
/// Istio's four sources (only one may be given): `serverCertificate` and `privateKey`,
/// `credentialName`, `credentialNames` or `tlsCertificates` (the last two: one or two
/// certificates, RSA beside ECDSA, with the server's `caCertificates` or the first Secret's CA).
fn certificates(
    o: &Origin,
    tls_path: &str,
    tls: &RawTls,
    mutual: bool,
    credentials: &mut Credentials,
    errors: &mut Vec<ConfigError>,
) -> Option<ServerCertificate> {
    let sources = [
        (
            "serverCertificate",
            tls.server_certificate.is_some() || tls.private_key.is_some(),
        ),
        ("credentialName", tls.credential().is_some()),
        ("credentialNames", listed(&tls.credential_names)),
        ("tlsCertificates", listed(&tls.tls_certificates)),
    ];
    let mut given = sources.iter().filter(|(_, set)| *set).map(|(f, _)| *f);
    let first = given.next();
    let mut refused = false;
    for other in given {
        refused = true;
        errors.push(o.error(
            format!("{tls_path}.{other}"),
            format!(
                "`{}` is given: only one of serverCertificate and privateKey, credentialName, \
                 credentialNames and tlsCertificates names a server's certificates",
                first.unwrap_or_default()
            ),
        ));
    }
    if refused {
        return None;
    }
    let file = |field: &str, value: &Option<String>, errors: &mut Vec<ConfigError>| match value {
        Some(v) if !v.is_empty() => Some(relative_to(&o.file, v)),
        _ => {
            errors.push(o.error(format!("{tls_path}.{field}"), "required"));
            None
        }
    };
    // The client CAs of the files, the server's own (also with tlsCertificates).
    let own_ca = |errors: &mut Vec<ConfigError>| {
        if mutual {
            let ca = file("caCertificates", &tls.ca_certificates, errors);
            (ca, tls.ca_crl.as_ref().map(|c| relative_to(&o.file, c)))
        } else {
            (None, None)
        }
    };
    match first {
        Some("credentialName") => {
            let name = tls.credential().unwrap_or_default();
            let field = format!("{tls_path}.credentialName");
            from_secrets(
                o,
                tls_path,
                tls,
                &[(name, field)],
                mutual,
                credentials,
                errors,
            )
        }
        Some("credentialNames") => {
            let names: Vec<(&str, String)> = tls
                .credential_names
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, n)| (n.as_str(), format!("{tls_path}.credentialNames[{i}]")))
                .collect();
            if names.is_empty() || names.len() > 2 {
                errors.push(o.error(
                    format!("{tls_path}.credentialNames"),
                    "one or two Secrets (a certificate and its RSA or ECDSA twin), as Istio \
                     allows",
                ));
                return None;
            }
            from_secrets(o, tls_path, tls, &names, mutual, credentials, errors)
        }
        Some("tlsCertificates") => {
            let list = tls.tls_certificates.as_deref().unwrap_or_default();
            if list.is_empty() || list.len() > 2 {
                errors.push(o.error(
                    format!("{tls_path}.tlsCertificates"),
                    "one or two certificates (a certificate and its RSA or ECDSA twin), as \
                     Istio allows",
                ));
                return None;
            }
            let before = errors.len();
            let mut pairs = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let at = format!("tlsCertificates[{i}]");
                if c.ca_certificates.is_some() {
                    errors.push(o.error(
                        format!("{tls_path}.{at}.caCertificates"),
                        "clients are verified with one CA bundle for all the certificates (as \
                         Envoy does; Istio drops this one unsaid): give it as the server's \
                         caCertificates",
                    ));
                }
                let certificate = file(
                    &format!("{at}.serverCertificate"),
                    &c.server_certificate,
                    errors,
                );
                let key = file(&format!("{at}.privateKey"), &c.private_key, errors);
                pairs.push((certificate, key));
            }
            let (ca_certificates, ca_crl) = own_ca(errors);
            if errors.len() > before {
                return None;
            }
            let mut pairs = pairs.into_iter().filter_map(|(c, k)| Some((c?, k?)));
            let (certificate, private_key) = pairs.next()?;
            Some(ServerCertificate {
                certificate,
                private_key,
                second: pairs.next(),
                ca_certificates,
                ca_crl,
            })
        }
        _ => {
            let certificate = file("serverCertificate", &tls.server_certificate, errors);
            let private_key = file("privateKey", &tls.private_key, errors);
            let (ca_certificates, ca_crl) = own_ca(errors);
            Some(ServerCertificate {
                certificate: certificate?,
                private_key: private_key?,
                second: None,
                ca_certificates,
                ca_crl,
            })
        }
    }
}

/// The files of the Secrets `names` (with the path of the field that names each): their
/// certificates, and on MUTUAL and OPTIONAL_MUTUAL the CA of the first (as Istio: one CA for
/// all, `<first>-cacert` or the first's own).
fn from_secrets(
    o: &Origin,
    tls_path: &str,
    tls: &RawTls,
    names: &[(&str, String)],
    mutual: bool,
    credentials: &mut Credentials,
    errors: &mut Vec<ConfigError>,
) -> Option<ServerCertificate> {
    let before = errors.len();
    for (field, set) in [
        // On SIMPLE these are refused as such already.
        ("caCertificates", mutual && tls.ca_certificates.is_some()),
        ("caCrl", mutual && tls.ca_crl.is_some()),
    ] {
        if set {
            errors.push(o.error(
                format!("{tls_path}.{field}"),
                "a Secret names the certificates: it holds the CA (and the CRL as `crl` or \
                 `ca.crl`), so the files are not given as well",
            ));
        }
    }
    let mut pairs = Vec::new();
    for (name, field) in names {
        match credentials.key_pair(name) {
            Ok(pair) => pairs.push(pair),
            // Not mounted says it once, for the certificate.
            Err(e) => errors.push(o.error(field.clone(), e)),
        }
    }
    if errors.len() > before {
        return None;
    }
    let (first, first_field) = names.first()?;
    let ca = if mutual {
        match credentials.ca(first) {
            Ok(ca) => Some(ca),
            Err(e) => {
                errors.push(o.error(first_field.clone(), e));
                return None;
            }
        }
    } else {
        None
    };
    let mut pairs = pairs.into_iter();
    let pair = pairs.next()?;
    Some(ServerCertificate {
        certificate: pair.certificate,
        private_key: pair.private_key,
        second: pairs.next().map(|p| (p.certificate, p.private_key)),
        ca_certificates: ca.as_ref().map(|c| c.certificates.clone()),
        ca_crl: ca.and_then(|c| c.crl),
    })
}

/// `subjectAltNames`, `verifyCertificateSpki` (base64 SHA-256 of a SubjectPublicKeyInfo) and
/// `verifyCertificateHash` (hex SHA-256 of a certificate, colons allowed), checked as Envoy
/// checks them when it loads a validation context.
fn client_checks(
    o: &Origin,
    tls_path: &str,
    tls: &RawTls,
    errors: &mut Vec<ConfigError>,
) -> ClientCertChecks {
    let mut checks = ClientCertChecks::default();
    for (i, name) in tls.subject_alt_names.iter().flatten().enumerate() {
        if name.is_empty() {
            errors.push(o.error(format!("{tls_path}.subjectAltNames[{i}]"), "empty"));
        } else if !checks.subject_alt_names.contains(name) {
            checks.subject_alt_names.push(name.clone());
        }
    }
    for (i, text) in tls.verify_certificate_spki.iter().flatten().enumerate() {
        match super::decode_base64(text).filter(|d| d.len() == 32) {
            Some(digest) => checks.spki_sha256.push(hex(&digest)),
            None => errors.push(o.error(
                format!("{tls_path}.verifyCertificateSpki[{i}]"),
                format!("`{text}` is not a base64-encoded SHA-256 digest (32 bytes)"),
            )),
        }
    }
    for (i, text) in tls.verify_certificate_hash.iter().flatten().enumerate() {
        let digits: String = text.chars().filter(|c| *c != ':').collect();
        if digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            checks.cert_sha256.push(digits.to_ascii_lowercase());
        } else {
            errors.push(o.error(
                format!("{tls_path}.verifyCertificateHash[{i}]"),
                format!(
                    "`{text}` is not a hex-encoded SHA-256 digest (64 hex digits, colons allowed)"
                ),
            ));
        }
    }
    checks
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A VirtualService's `gateways` entry as `namespace/name`, by Istio's `resolveGatewayName`:
/// `ns/name` as written (`./name` in the VirtualService's namespace); a short `name` in the
/// VirtualService's namespace; the legacy `name.ns.svc.cluster.local` (or `name.ns`) form as
/// `ns/name`; `mesh` stays `mesh`.
pub(crate) fn resolve_name(gateway: &str, namespace: &str) -> String {
    if gateway == "mesh" {
        return gateway.to_string();
    }
    match gateway.split_once('/') {
        Some((".", name)) => format!("{namespace}/{name}"),
        Some(_) => gateway.to_string(),
        None => match gateway.split_once('.') {
            None => format!("{namespace}/{gateway}"),
            Some((name, rest)) => {
                let ns = rest.split('.').next().unwrap_or(rest);
                format!("{ns}/{name}")
            }
        },
    }
}
