//! The readable summary `meshgate check` prints.

use std::fmt::Write as _;

use meshgate_config::model::{
    Endpoints, ListenerProtocol, RouteAction, ServerTlsMode, UpstreamTls,
};
use meshgate_config::Model;
use meshgate_proxy::runtime::Runtime;

pub fn summary(model: &Model, runtime: Option<&Runtime>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "MeshGateway {}", model.proxy.name);
    let trust = &model.trust;
    let _ = writeln!(out, "  trust domain: {}", trust.trust_domain);
    let aliases: Vec<_> = trust.aliases.iter().map(|a| a.as_str()).collect();
    let _ = writeln!(
        out,
        "  aliases: {}",
        if aliases.is_empty() {
            "(none)".into()
        } else {
            aliases.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "  cluster.local counts as local: {}",
        trust.cluster_local_is_local
    );
    if let Some(allowed) = &trust.allowed_trust_domains {
        let list: Vec<_> = allowed.iter().map(|a| a.as_str()).collect();
        let _ = writeln!(
            out,
            "  trust domains accepted at the handshake: {}",
            list.join(", ")
        );
    }
    if let Some(id) = runtime.and_then(|r| r.credentials.as_ref()) {
        let _ = writeln!(out, "  identity: {}", id.spiffe_id);
    }
    if let Some(a) = &model.proxy.admin {
        let _ = writeln!(out, "  admin: {}", a.address);
        if let Some(p) = a.probes {
            let _ = writeln!(out, "  admin probes and metrics: {p}");
        }
    }
    let p = &model.proxy;
    let _ = writeln!(
        out,
        "  trusted proxies in front: {}; root namespace: {}; outbound policy: {:?}; tracing: {}",
        p.num_trusted_proxies, p.root_namespace, p.outbound_policy, p.tracing
    );
    if let Some(path) = &p.access_log {
        let _ = writeln!(
            out,
            "  access log: {} ({:?})",
            path.display(),
            p.access_log_encoding
        );
    }
    let l = &model.proxy.limits;
    let _ = writeln!(
        out,
        "  limits: handshake {:?}, request head {:?}, idle {}, request head size {} bytes, {} connections per listener, {} HTTP/2 streams",
        l.handshake_timeout,
        l.request_header_timeout,
        l.idle_timeout.map_or("never".into(), |d| format!("{d:?}")),
        l.max_request_header_bytes,
        l.max_connections_per_listener
            .map_or("unlimited".into(), |n| n.to_string()),
        l.http2_max_concurrent_streams,
    );
    for l in &model.listeners {
        let tls = if l.protocol == ListenerProtocol::AutoPassthrough {
            "TLS AUTO_PASSTHROUGH".to_string()
        } else if l.protocol == ListenerProtocol::TlsPassthrough {
            "TLS PASSTHROUGH".to_string()
        } else if l.tls.is_empty() && l.protocol == ListenerProtocol::Tcp {
            "TCP".to_string()
        } else if l.tls.is_empty() {
            "HTTP".to_string()
        } else {
            let groups: Vec<String> = l
                .tls
                .iter()
                .map(|t| {
                    let mode = match &t.mode {
                        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL".to_string(),
                        ServerTlsMode::Simple(c) => format!("SIMPLE {}", certificates(c)),
                        ServerTlsMode::Mutual(c) => format!(
                            "MUTUAL {} (clients of {})",
                            certificates(c),
                            c.ca_certificates
                                .as_ref()
                                .map_or("-".into(), |p| p.display().to_string())
                        ),
                        ServerTlsMode::OptionalMutual(c) => format!(
                            "OPTIONAL_MUTUAL {} (clients of {}, or none)",
                            certificates(c),
                            c.ca_certificates
                                .as_ref()
                                .map_or("-".into(), |p| p.display().to_string())
                        ),
                    };
                    let ciphers = if t.cipher_suites.is_empty() {
                        String::new()
                    } else {
                        format!(", TLS 1.2 suites {}", t.cipher_suites.join(":"))
                    };
                    format!("{mode} ({:?}..{:?}{ciphers})", t.min_version, t.max_version)
                })
                .collect();
            let over = match l.protocol {
                ListenerProtocol::Tcp => "TCP over TLS",
                _ => "HTTPS",
            };
            format!("{over} {}", groups.join("; "))
        };
        let hosts: Vec<_> = l
            .servers
            .iter()
            .map(|s| {
                if s.https_redirect {
                    format!("{} (301 to https)", s.host)
                } else {
                    s.host.to_string()
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "listener {} port {} on {}: {tls}, hosts {}",
            l.name,
            l.port,
            l.address,
            hosts.join(", ")
        );
        for r in &l.sni_routes {
            let hosts: Vec<String> = r
                .matches
                .iter()
                .flat_map(|m| m.sni_hosts.iter().map(|h| h.to_string()))
                .collect();
            let to: Vec<String> = r
                .backends
                .iter()
                .map(|w| format!("{} ({}%)", model.backends[w.backend].name(), w.weight))
                .collect();
            let _ = writeln!(
                out,
                "  {} tls route: SNI {} -> {}",
                r.source,
                hosts.join(", "),
                to.join(", ")
            );
        }
        for r in &l.tcp_routes {
            let matches: Vec<String> = r
                .matches
                .iter()
                .map(|m| {
                    let mut parts = Vec::new();
                    if let Some(p) = m.port {
                        parts.push(format!("port {p}"));
                    }
                    if !m.destination_subnets.is_empty() {
                        let nets: Vec<_> = m
                            .destination_subnets
                            .iter()
                            .map(|c| c.to_string())
                            .collect();
                        parts.push(format!("to {}", nets.join(", ")));
                    }
                    parts.join(" ")
                })
                .collect();
            let to: Vec<String> = r
                .backends
                .iter()
                .map(|w| format!("{} ({}%)", model.backends[w.backend].name(), w.weight))
                .collect();
            let _ = writeln!(
                out,
                "  {} tcp route: {} -> {}",
                r.source,
                if matches.is_empty() {
                    "any connection".to_string()
                } else {
                    matches.join(" or ")
                },
                to.join(", ")
            );
        }
        for (sni, &backend) in &l.passthrough {
            let b = &model.backends[backend];
            let _ = writeln!(out, "  SNI {sni} -> {}", endpoints(&b.endpoints));
        }
        for vh in l.routes.virtual_hosts() {
            let hosts: Vec<_> = vh.hosts.iter().map(|h| h.to_string()).collect();
            let _ = writeln!(out, "  {} hosts {}", vh.source, hosts.join(", "));
            let merged = vh.routes.iter().any(|r| r.source != vh.source);
            for r in &vh.routes {
                let mut name = r.name.clone().unwrap_or_else(|| format!("#{}", r.position));
                if merged {
                    let _ = write!(name, " of {}", r.source);
                }
                let what = destinations(model, &r.action);
                let matches = if r.matches.is_empty() {
                    "any request".to_string()
                } else {
                    format!("{} match(es)", r.matches.len())
                };
                let _ = writeln!(out, "    route {name}: {matches} -> {what}");
            }
        }
    }
    for l in &model.listeners {
        for vh in l.routes.virtual_hosts() {
            if !vh.source.starts_with("VirtualService ") {
                continue;
            }
            let routes: Vec<String> = vh
                .routes
                .iter()
                .map(|r| {
                    let name = r
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("http[{}]", r.position));
                    let mut line = format!("{name} -> {}", destinations(model, &r.action));
                    for m in &r.mirrors {
                        let share = f64::from(m.per_million) / 10_000.0;
                        let _ = write!(
                            line,
                            ", mirror {} {share}%",
                            model.backends[m.backend].name()
                        );
                    }
                    line
                })
                .collect();
            let _ = writeln!(out, "{} on {}: {}", vh.source, l.name, routes.join("; "));
        }
    }
    for b in &model.backends {
        let endpoints = endpoints(&b.endpoints);
        let source = b.source.as_deref().unwrap_or("no ServiceEntry or Service");
        let tls = match &b.policy.tls {
            UpstreamTls::Disable => "plaintext",
            UpstreamTls::Simple(_) => "TLS SIMPLE",
            UpstreamTls::Mutual(_) => "TLS MUTUAL",
            UpstreamTls::IstioMutual(_) => "ISTIO_MUTUAL",
        };
        let policy = b
            .policy
            .source
            .as_deref()
            .map(|s| format!(", {s}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "backend {} {:?} {tls} {:?} -> {endpoints} [{source}{policy}]",
            b.name(),
            b.protocol,
            b.policy.load_balancer
        );
    }
    out
}

/// Where a route goes: each backend (host, port, subset) with its weight and endpoints, or
/// its direct response, as `istioctl x describe` shows a route.
fn destinations(model: &Model, action: &RouteAction) -> String {
    match action {
        RouteAction::Direct(d) => format!("direct response {}", d.status.as_u16()),
        RouteAction::Redirect(r) => format!(
            "redirect {} to {}{}",
            r.code.as_u16(),
            r.authority.as_deref().unwrap_or("(same host)"),
            r.uri.as_deref().unwrap_or("")
        ),
        RouteAction::Forward(list) => list
            .iter()
            .map(|w| {
                let b = &model.backends[w.backend];
                format!(
                    "{} weight {} [{}]",
                    b.name(),
                    w.weight,
                    endpoints(&b.endpoints)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn endpoints(e: &Endpoints) -> String {
    match e {
        Endpoints::Static(list) if list.is_empty() => "no endpoint".into(),
        Endpoints::Static(list) => list
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        Endpoints::Dns(list) if list.is_empty() => "no endpoint".into(),
        Endpoints::Dns(list) => list
            .iter()
            .map(|(h, p)| match p {
                0 => format!("{h}:<the request's port> (DNS)"),
                p => format!("{h}:{p} (DNS)"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Endpoints::Undefined => "subset not defined: 503".into(),
    }
}

/// A server's certificate file, and its twin's.
fn certificates(c: &meshgate_config::model::ServerCertificate) -> String {
    match &c.second {
        Some((second, _)) => format!("{} + {}", c.certificate.display(), second.display()),
        None => c.certificate.display().to_string(),
    }
}
