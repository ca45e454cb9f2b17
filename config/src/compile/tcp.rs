//! `TCP` listeners: VirtualService `tcp` routes, and what AuthorizationPolicy means there.
//!
//! A Gateway server with `protocol: TCP`, or `protocol: TLS` with a terminating mode, forwards
//! the bytes of a connection (after the handshake, when there is one) to the destination of the
//! first `tcp` route whose match fits the connection: its port and the address it came in on.
//! Destinations originate the DestinationRule's TLS as HTTP routes do.
//!
//! No HTTP is read there, so a policy rule naming an HTTP field cannot be decided on such a
//! port. Istio fails closed both ways, and so does meshgate: an ALLOW rule with HTTP fields
//! never matches, and a DENY rule is applied with them left out (so it denies more). `check`
//! warns about each such rule, as istiod does when it builds the TCP filter.

use super::destination_rule::Rules;
use super::passthrough::{l4_match, weighted};
use super::service_entry::Backends;
use super::virtual_service::{qualify, qualify_gateways, MESH_GATEWAY};
use super::Origin;
use crate::error::ConfigError;
use crate::model::authz::Policies;
use crate::model::{
    HostMatcher, L4Match, Listener, ListenerProtocol, ServerHost, TcpRoute, TlsGroups,
};
use crate::raw::authorization_policy::AuthorizationPolicySpec;
use crate::raw::virtual_service::{TcpRoute as RawTcpRoute, VirtualServiceSpec};
use crate::warning::{Code, Warning};

/// VirtualService `tcp` routes onto the `TCP` listeners whose servers their `gateways` name. A
/// `tcp` route that reaches no such server is an error: the outbound listener (`mesh`) reads
/// HTTP, and HTTP and passthrough servers take other routes.
pub(crate) fn bind_tcp_routes(
    found: &[(Origin, VirtualServiceSpec)],
    exported: &[Option<super::export::Seen>],
    listeners: &mut [Listener],
    backends: &mut Backends,
    rules: &Rules,
    errors: &mut Vec<ConfigError>,
) {
    // A VirtualService not exported to this proxy's namespace routes nothing here.
    let found = found
        .iter()
        .zip(exported)
        .filter_map(|(vs, seen)| seen.map(|_| vs));
    for (o, spec) in found {
        let Some(routes) = &spec.tcp else {
            continue;
        };
        for (i, route) in routes.iter().enumerate() {
            for (j, m) in route.matches.iter().enumerate() {
                o.unsupported(
                    errors,
                    &format!("spec.tcp[{i}].match[{j}]"),
                    &[
                        ("sourceLabels", m.source_labels.is_some()),
                        ("sourceNamespace", m.source_namespace.is_some()),
                        ("sourceSubnet", m.source_subnet.is_some()),
                    ],
                );
            }
        }
        let gateways: Vec<String> = match &spec.gateways {
            None => vec![MESH_GATEWAY.to_string()],
            Some(list) => qualify_gateways(list, &o.namespace),
        };
        // The hosts as the HTTP binding reads them (which reports the ones that do not parse).
        let hosts: Vec<HostMatcher> = spec
            .hosts
            .iter()
            .map(|h| {
                if h == "*" {
                    h.clone()
                } else {
                    qualify(h, &o.namespace)
                }
            })
            .filter_map(|h| HostMatcher::parse(&h))
            .collect();
        let mut bound = false;
        for listener in listeners
            .iter_mut()
            .filter(|l| l.protocol == ListenerProtocol::Tcp)
        {
            let servers: Vec<&ServerHost> = listener
                .servers
                .iter()
                .filter(|s| gateways.contains(&s.gateway) && s.namespace.admits(&o.namespace))
                .collect();
            if servers.is_empty() {
                continue;
            }
            bound = true;
            // With TLS terminated the SNI chose a server: Gateway by Gateway, as Istio builds
            // each server's `tcp_proxy` from its own Gateway's VirtualServices (a match's
            // `gateways` naming that Gateway), only the routes of a Gateway whose servers of
            // the connection's TLS group serve the VirtualService's hosts (Istio's
            // `pickMatchingGatewayHosts`) take it. Plaintext: the port's one `tcp_proxy`.
            let names: Vec<String> = servers.iter().map(|s| s.gateway.clone()).collect();
            let readings: Vec<(Vec<String>, TlsGroups)> = if listener.tls.is_empty() {
                vec![(names.clone(), TlsGroups::All)]
            } else {
                let mut each: Vec<(Vec<String>, TlsGroups)> = Vec::new();
                for s in &servers {
                    if !hosts.iter().any(|h| s.host.intersects(h)) {
                        continue;
                    }
                    let Some(group) = s.tls else {
                        continue;
                    };
                    match each.iter_mut().find(|(g, _)| g.first() == Some(&s.gateway)) {
                        Some((_, set)) => set.insert(group),
                        None => each.push((vec![s.gateway.clone()], TlsGroups::one(group))),
                    }
                }
                // A Gateway whose servers here are all plaintext takes no TLS connection.
                each.retain(|(_, set)| !set.is_empty());
                each
            };
            for (i, route) in routes.iter().enumerate() {
                let path = format!("spec.tcp[{i}]");
                // Read once for the listener: its errors said once, its destinations one
                // backend (one connection limit) whichever Gateway's connections take it.
                let Some(made) = tcp_route(o, &path, route, &names, backends, rules, errors) else {
                    continue;
                };
                for (gateways, tls_groups) in &readings {
                    // Said above, for every Gateway at once.
                    let mut again = Vec::new();
                    if let Some(matches) = l4_matches(o, &path, route, gateways, &mut again) {
                        listener.tcp_routes.push(TcpRoute {
                            source: made.source.clone(),
                            matches,
                            backends: made.backends.clone(),
                            tls_groups: tls_groups.clone(),
                        });
                    }
                }
            }
        }
        if !bound && !routes.is_empty() {
            errors.push(o.error(
                "spec.tcp",
                "tcp routes apply to Gateway servers with protocol TCP, or TLS with tls.mode \
                 SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL, and none of spec.gateways has \
                 one here (the outbound listener, `mesh`, routes HTTP)",
            ));
        }
    }
}

/// The matches of a `tcp[]` route that apply to servers of `gateways`; `None` when all name
/// other gateways (the route is not there).
fn l4_matches(
    o: &Origin,
    path: &str,
    route: &RawTcpRoute,
    gateways: &[String],
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<L4Match>> {
    let mut matches = Vec::new();
    for (j, m) in route.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        if let Some(list) = &m.gateways {
            let list = qualify_gateways(list, &o.namespace);
            if !list.iter().any(|g| gateways.contains(g)) {
                continue;
            }
        }
        let (port, destination_subnets) =
            l4_match(o, &mp, m.port, m.destination_subnets.as_deref(), errors);
        matches.push(L4Match {
            port,
            destination_subnets,
        });
    }
    (!matches.is_empty() || route.matches.is_empty()).then_some(matches)
}

/// One `tcp[]` route as it stands on a listener whose servers belong to `gateways`; `None`
/// when its matches all name other gateways, or on error.
fn tcp_route(
    o: &Origin,
    path: &str,
    route: &RawTcpRoute,
    gateways: &[String],
    backends: &mut Backends,
    rules: &Rules,
    errors: &mut Vec<ConfigError>,
) -> Option<TcpRoute> {
    let before = errors.len();
    let matches = l4_matches(o, path, route, gateways, errors)?;
    if route.route.is_empty() {
        errors.push(o.error(
            format!("{path}.route"),
            "at least one destination is required",
        ));
    }
    let out = weighted(
        o,
        path,
        &route.route,
        backends,
        |b: &mut Backends, host: &str, port, subset| b.tcp(host, port, subset, rules),
        errors,
    );
    if errors.len() > before {
        return None;
    }
    if out.is_empty() {
        errors.push(o.error(
            format!("{path}.route"),
            "every destination has weight 0: no connection could go anywhere",
        ));
        return None;
    }
    Some(TcpRoute {
        source: o.resource(),
        matches,
        backends: out,
        tls_groups: TlsGroups::All,
    })
}

/// Warns about each policy rule that names an HTTP field and can reach a `TCP` port: what it
/// does there is not what it says (MG0115).
pub(crate) fn check_policies(
    found: &[(Origin, AuthorizationPolicySpec)],
    policies: &Policies,
    listeners: &[Listener],
    warnings: &mut Vec<Warning>,
) {
    let ports: Vec<u16> = listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::Tcp)
        .map(|l| l.port)
        .collect();
    if ports.is_empty() {
        return;
    }
    let sets = [
        (&policies.deny, "DENY"),
        (&policies.allow, "ALLOW"),
        (&policies.audit, "AUDIT"),
        (&policies.dry_run.deny, "DENY"),
        (&policies.dry_run.allow, "ALLOW"),
    ];
    for (set, action) in sets {
        for policy in set {
            let Some((o, _)) = found.iter().find(|(o, _)| o.resource() == policy.name) else {
                continue;
            };
            for (i, rule) in policy.rules.iter().enumerate() {
                let (Some(field), Some(port)) = (
                    rule.http_field(),
                    ports.iter().find(|p| rule.reaches_port(**p)),
                ) else {
                    continue;
                };
                let effect = if action == "ALLOW" {
                    "this ALLOW rule never matches a connection there"
                } else {
                    "this rule is applied there without its HTTP fields, so it matches more \
                     connections"
                };
                warnings.push(o.warn(
                    Code::HttpFieldsOnTcp,
                    Some(&format!("spec.rules[{i}]")),
                    format!(
                        "{field} is an HTTP field and port {port} is TCP: {effect}, as Istio \
                         does; scope the rule with to.operation.ports to the HTTP ports"
                    ),
                ));
            }
        }
    }
}
