//! Gateways selected by this proxy's labels -> listeners, one per port.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::mesh_gateway::ListenSettings;
use super::Origin;
use crate::error::ConfigError;
use crate::model::{
    HostMatcher, Listener, ListenerKind, ListenerProtocol, NamespaceFilter, RouteTable, ServerHost,
    ServerTls, ServerTlsMode, TlsVersion,
};
use crate::raw::gateway::{GatewaySpec, Server};

pub(crate) fn compile(
    found: &[(Origin, GatewaySpec)],
    labels: &BTreeMap<String, String>,
    listen: &ListenSettings,
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
        for (i, server) in spec.servers.iter().enumerate() {
            let path = format!("spec.servers[{i}]");
            let Some(compiled) = compile_server(o, &path, server, listen, errors) else {
                continue;
            };
            match listeners.iter_mut().find(|l| l.port == compiled.port) {
                None => listeners.push(compiled),
                Some(existing) => {
                    let same_tls = match (&existing.tls, &compiled.tls) {
                        (None, None) => true,
                        (Some(a), Some(b)) => {
                            a.mode == b.mode
                                && a.min_version == b.min_version
                                && a.max_version == b.max_version
                        }
                        _ => false,
                    };
                    if existing.protocol != compiled.protocol || !same_tls {
                        errors.push(o.error(
                            format!("{path}.port"),
                            format!(
                                "port {} is already served with other protocol or TLS settings; \
                                 servers sharing a port must agree",
                                compiled.port
                            ),
                        ));
                        continue;
                    }
                    existing.servers.extend(compiled.servers);
                }
            }
        }
    }
    listeners
}

fn compile_server(
    o: &Origin,
    path: &str,
    server: &Server,
    listen: &ListenSettings,
    errors: &mut Vec<ConfigError>,
) -> Option<Listener> {
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
    let tls = match (protocol.as_str(), &server.tls) {
        ("HTTP" | "HTTP2" | "GRPC", None) => None,
        ("HTTP" | "HTTP2" | "GRPC", Some(_)) => {
            errors.push(o.error(
                format!("{path}.tls"),
                format!("protocol {protocol} is plaintext: use protocol HTTPS for TLS"),
            ));
            None
        }
        ("HTTPS", None) => {
            errors.push(o.error(
                format!("{path}.tls"),
                "protocol HTTPS needs tls (mode ISTIO_MUTUAL)",
            ));
            None
        }
        ("HTTPS", Some(tls)) => {
            let tls_path = format!("{path}.tls");
            o.unsupported(
                errors,
                &tls_path,
                &[
                    ("httpsRedirect", tls.https_redirect.is_some()),
                    ("serverCertificate", tls.server_certificate.is_some()),
                    ("privateKey", tls.private_key.is_some()),
                    ("caCertificates", tls.ca_certificates.is_some()),
                    ("caCrl", tls.ca_crl.is_some()),
                    ("credentialName", tls.credential_name.is_some()),
                    ("credentialNames", tls.credential_names.is_some()),
                    ("tlsCertificates", tls.tls_certificates.is_some()),
                    ("subjectAltNames", tls.subject_alt_names.is_some()),
                    (
                        "verifyCertificateSpki",
                        tls.verify_certificate_spki.is_some(),
                    ),
                    (
                        "verifyCertificateHash",
                        tls.verify_certificate_hash.is_some(),
                    ),
                    ("cipherSuites", tls.cipher_suites.is_some()),
                ],
            );
            let mode = match tls.mode.as_deref() {
                Some("ISTIO_MUTUAL") => Some(ServerTlsMode::IstioMutual),
                Some(
                    other @ ("SIMPLE" | "MUTUAL" | "PASSTHROUGH" | "AUTO_PASSTHROUGH"
                    | "OPTIONAL_MUTUAL"),
                ) => {
                    errors.push(o.error(
                        format!("{tls_path}.mode"),
                        format!("{other} is not implemented: meshgate terminates ISTIO_MUTUAL"),
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
                    errors.push(o.error(format!("{tls_path}.mode"), "required (ISTIO_MUTUAL)"));
                    None
                }
            };
            let version = |field: &str,
                           value: Option<&str>,
                           default,
                           errors: &mut Vec<ConfigError>| match value {
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
            mode.map(|mode| ServerTls {
                mode,
                min_version,
                max_version,
            })
        }
        (other, _) => {
            errors.push(o.error(
                format!("{path}.port.protocol"),
                format!(
                    "`{other}` is not implemented: meshgate serves HTTP, HTTP2, GRPC and HTTPS"
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
    Some(Listener {
        name: server
            .port
            .name
            .clone()
            .unwrap_or_else(|| format!("port-{port}")),
        kind: ListenerKind::Gateway,
        port,
        address: SocketAddr::new(listen.address, bind_port),
        protocol: if tls.is_some() {
            ListenerProtocol::Https
        } else {
            ListenerProtocol::Http
        },
        tls,
        servers,
        routes: RouteTable::default(),
    })
}
