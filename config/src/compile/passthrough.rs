//! `AUTO_PASSTHROUGH` listeners: the services they expose, by the SNI Istio's sidecars send.
//!
//! A sidecar reaching a service behind an east-west gateway keeps its mTLS end to end and
//! names the service in the SNI: `outbound_.<port>_.<subset>_.<host>`, `_` for no subset (as
//! Istio's `BuildDNSSrvSubsetKey` writes it). The gateway reads it without terminating and
//! forwards the bytes. Exposed are the declared service ports (ServiceEntry and Service ports
//! of any protocol: the bytes are opaque here) whose host a server's `hosts` admits, each
//! without subset and with every subset its DestinationRule defines.

use super::destination_rule::Rules;
use super::service_entry::Backends;
use super::virtual_service::{qualify, qualify_gateways, MESH_GATEWAY};
use super::Origin;
use crate::error::ConfigError;
use crate::model::authz::{Cidr, Policies};
use crate::model::{
    HostMatcher, Listener, ListenerProtocol, ServerHost, SniMatch, SniRoute, WeightedBackend,
};
use crate::raw::authorization_policy::AuthorizationPolicySpec;
use crate::raw::virtual_service::{RouteDestination, TlsRoute, VirtualServiceSpec};
use crate::warning::{Code, Warning};

/// Istio's SNI for (host, port, subset).
pub fn sni(host: &str, port: u16, subset: Option<&str>) -> String {
    format!(
        "outbound_.{port}_.{}_.{}",
        subset.unwrap_or(""),
        host.to_ascii_lowercase()
    )
}

pub(crate) fn expose(
    listeners: &mut [Listener],
    backends: &mut Backends,
    rules: &Rules,
    warnings: &mut Vec<Warning>,
) {
    let declared = backends.declared_all();
    for listener in listeners
        .iter_mut()
        .filter(|l| l.protocol == ListenerProtocol::AutoPassthrough)
    {
        for (host, port, namespace) in &declared {
            let exposed = listener
                .servers
                .iter()
                .any(|s| s.namespace.admits(namespace) && s.host.matches(host));
            if !exposed {
                continue;
            }
            let subsets = rules.subset_names(host, Some(namespace));
            let all = std::iter::once(None).chain(subsets.into_iter().map(Some));
            for subset in all {
                let name = sni(host, *port, subset);
                if listener.passthrough.contains_key(&name) {
                    continue;
                }
                match backends.passthrough(host, *port, subset, rules) {
                    Ok(backend) => {
                        listener.passthrough.insert(name, backend);
                    }
                    Err(why) => warnings.push(Warning::global(
                        Code::NotExposed,
                        format!(
                            "listener {} does not forward `{name}`: {why}",
                            listener.name
                        ),
                    )),
                }
            }
        }
    }
}

/// VirtualService `tls` routes onto the `PASSTHROUGH` listeners whose servers their `gateways`
/// name. A `tls` route that reaches no such server is an error: a sidecar's outbound listener
/// (`mesh`) and terminating servers do not route TLS by SNI.
pub(crate) fn bind_tls_routes(
    found: &[(Origin, VirtualServiceSpec)],
    exported: &[Option<super::export::Seen>],
    listeners: &mut [Listener],
    backends: &mut Backends,
    rules: &Rules,
    errors: &mut Vec<ConfigError>,
) {
    // A VirtualService not exported to this proxy's namespace routes nothing here.
    // In Istio's order, which decides between routes of equally specific SNI hosts.
    let found = super::istio_order(found)
        .into_iter()
        .filter(|&i| exported.get(i).is_some_and(Option::is_some))
        .filter_map(|i| found.get(i));
    for (o, spec) in found {
        let Some(routes) = &spec.tls else {
            continue;
        };
        // Istio's validation: each SNI host is within one of the VirtualService's hosts, so
        // that a VirtualService routes only the names it declares.
        let declared: Vec<HostMatcher> = spec
            .hosts
            .iter()
            .filter_map(|h| HostMatcher::parse(h))
            .collect();
        for (i, route) in routes.iter().enumerate() {
            for (j, m) in route.matches.iter().enumerate() {
                o.unsupported(
                    errors,
                    &format!("spec.tls[{i}].match[{j}]"),
                    &[
                        ("sourceLabels", m.source_labels.is_some()),
                        ("sourceNamespace", m.source_namespace.is_some()),
                    ],
                );
                for (k, sni) in m.sni_hosts.iter().enumerate() {
                    let Some(sni) = HostMatcher::parse(sni) else {
                        continue;
                    };
                    let within = declared
                        .iter()
                        .any(|h| h.intersection(&sni).as_ref() == Some(&sni));
                    if !within {
                        errors.push(o.error(
                            format!("spec.tls[{i}].match[{j}].sniHosts[{k}]"),
                            format!(
                                "`{sni}` is not within the VirtualService's hosts ({}): a \
                                 VirtualService routes only the names it declares",
                                spec.hosts.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        let gateways: Vec<String> = match &spec.gateways {
            None => vec![MESH_GATEWAY.to_string()],
            Some(list) => qualify_gateways(list, &o.namespace),
        };
        let mut bound = false;
        for listener in listeners
            .iter_mut()
            .filter(|l| l.protocol == ListenerProtocol::TlsPassthrough)
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
            // Gateway by Gateway, as Istio builds each server's filter chains from its own
            // Gateway's VirtualServices (a match's `gateways` naming that Gateway), each
            // match's `sniHosts` narrowed to the hosts that Gateway's servers serve: an SNI no
            // server of the Gateway serves is not routed by it.
            // Each Gateway here, with the hosts its servers serve.
            let mut gateways_here: Vec<([String; 1], Vec<&HostMatcher>)> = Vec::new();
            for s in &servers {
                match gateways_here.iter_mut().find(|(g, _)| g[0] == s.gateway) {
                    Some((_, serving)) => serving.push(&s.host),
                    None => gateways_here.push(([s.gateway.clone()], vec![&s.host])),
                }
            }
            let names: Vec<String> = servers.iter().map(|s| s.gateway.clone()).collect();
            let mut made = Vec::new();
            for (i, route) in routes.iter().enumerate() {
                let path = format!("spec.tls[{i}]");
                // Read once for the listener, its SNIs as written: its errors said once, its
                // destinations one backend whichever Gateway's connections take it.
                let every = [&HostMatcher::Any];
                let Some(read) =
                    sni_route(o, &path, route, (&names, &every), backends, rules, errors)
                else {
                    continue;
                };
                for (one, serving) in &gateways_here {
                    // Said above, for every Gateway at once.
                    let mut again = Vec::new();
                    if let Some(matches) = sni_matches(o, &path, route, (one, serving), &mut again)
                    {
                        made.push(SniRoute {
                            source: read.source.clone(),
                            matches,
                            backends: read.backends.clone(),
                        });
                    }
                }
            }
            listener.sni_routes.extend(made);
        }
        if !bound && !routes.is_empty() {
            errors.push(o.error(
                "spec.tls",
                "tls routes apply to Gateway servers with tls.mode PASSTHROUGH, and none of \
                 spec.gateways has one here (a sidecar's outbound listener, `mesh`, routes HTTP)",
            ));
        }
    }
}

/// The matches of a `tls[]` route that apply to servers of `gateways` serving `serving`, each
/// `sniHosts` narrowed to those hosts; `None` when none applies there.
fn sni_matches(
    o: &Origin,
    path: &str,
    route: &TlsRoute,
    (gateways, serving): (&[String], &[&HostMatcher]),
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<SniMatch>> {
    let mut matches = Vec::new();
    for (j, m) in route.matches.iter().enumerate() {
        let mp = format!("{path}.match[{j}]");
        if let Some(list) = &m.gateways {
            let list = qualify_gateways(list, &o.namespace);
            if !list.iter().any(|g| gateways.contains(g)) {
                continue;
            }
        }
        if m.sni_hosts.is_empty() {
            errors.push(o.error(format!("{mp}.sniHosts"), "required"));
        }
        let mut sni_hosts: Vec<HostMatcher> = Vec::new();
        for (k, h) in m.sni_hosts.iter().enumerate() {
            match HostMatcher::parse(h) {
                Some(h) => {
                    for common in serving.iter().filter_map(|s| s.intersection(&h)) {
                        if !sni_hosts.contains(&common) {
                            sni_hosts.push(common);
                        }
                    }
                }
                None => errors.push(o.error(
                    format!("{mp}.sniHosts[{k}]"),
                    format!("`{h}` is not a host, `*.suffix` or `*`"),
                )),
            }
        }
        let (port, destination_subnets) =
            l4_match(o, &mp, m.port, m.destination_subnets.as_deref(), errors);
        // No SNI of this match is served here: it matches nothing.
        if sni_hosts.is_empty() && !m.sni_hosts.is_empty() {
            continue;
        }
        matches.push(SniMatch {
            sni_hosts,
            port,
            destination_subnets,
        });
    }
    (!matches.is_empty() || route.matches.is_empty()).then_some(matches)
}

/// One `tls[]` route as it stands on a listener for one Gateway (`gateways`, the hosts its
/// servers there serve); `None` when its matches all name other gateways or no SNI they serve,
/// or on error.
fn sni_route(
    o: &Origin,
    path: &str,
    route: &TlsRoute,
    (gateways, serving): (&[String], &[&HostMatcher]),
    backends: &mut Backends,
    rules: &Rules,
    errors: &mut Vec<ConfigError>,
) -> Option<SniRoute> {
    let before = errors.len();
    if route.matches.is_empty() {
        errors.push(o.error(
            format!("{path}.match"),
            "required: a tls route matches on sniHosts",
        ));
    }
    let matches = sni_matches(o, path, route, (gateways, serving), errors)?;
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
        |b: &mut Backends, host: &str, port, subset| b.tls_route(host, port, subset, rules),
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
    Some(SniRoute {
        source: o.resource(),
        matches,
        backends: out,
    })
}

/// The `port` and `destinationSubnets` of a `tls` or `tcp` route's match at `path`.
pub(super) fn l4_match(
    o: &Origin,
    path: &str,
    port: Option<u32>,
    subnets: Option<&[String]>,
    errors: &mut Vec<ConfigError>,
) -> (Option<u16>, Vec<Cidr>) {
    let port = port.map(|p| match u16::try_from(p) {
        Ok(p) if p > 0 => p,
        _ => {
            errors.push(o.error(format!("{path}.port"), "ports must be 1 to 65535"));
            0
        }
    });
    let mut destination_subnets = Vec::new();
    for (k, s) in subnets.into_iter().flatten().enumerate() {
        match Cidr::parse(s) {
            Some(c) => destination_subnets.push(c),
            None => errors.push(o.error(
                format!("{path}.destinationSubnets[{k}]"),
                format!("`{s}` is not an address or CIDR block"),
            )),
        }
    }
    (port, destination_subnets)
}

/// The destinations of a `tls` or `tcp` route at `path` with weight > 0, each made a backend by
/// `resolve` (host, port, subset): a lone destination needs no weight, a port may be left out
/// when the service declares one.
pub(super) fn weighted(
    o: &Origin,
    path: &str,
    route: &[RouteDestination],
    backends: &mut Backends,
    mut resolve: impl FnMut(&mut Backends, &str, u16, Option<&str>) -> Result<usize, String>,
    errors: &mut Vec<ConfigError>,
) -> Vec<WeightedBackend> {
    let one = route.len() == 1;
    let mut out = Vec::new();
    for (j, d) in route.iter().enumerate() {
        let dp = format!("{path}.route[{j}]");
        o.unsupported(errors, &dp, &[("headers", d.headers.is_some())]);
        let host = qualify(&d.destination.host, &o.namespace);
        let port = match &d.destination.port {
            Some(p) => u16::try_from(p.number).ok().filter(|p| *p > 0),
            None => match backends.only_port(&host) {
                Ok(p) => Some(p),
                Err(why) => {
                    errors.push(o.error(format!("{dp}.destination.port"), why));
                    continue;
                }
            },
        };
        let Some(port) = port else {
            errors.push(o.error(
                format!("{dp}.destination.port.number"),
                "ports must be 1 to 65535",
            ));
            continue;
        };
        let weight = d.weight.unwrap_or(if one { 100 } else { 0 });
        if weight == 0 {
            continue;
        }
        match resolve(backends, &host, port, d.destination.subset.as_deref()) {
            Ok(backend) => out.push(WeightedBackend {
                backend,
                weight,
                headers: None,
            }),
            Err(why) => errors.push(o.error(format!("{dp}.destination"), why)),
        }
    }
    out
}

/// An `AUTO_PASSTHROUGH` listener terminates nothing: a policy rule that can reach its port may
/// only use what a connection shows before any byte is decrypted (addresses, ports, the SNI).
/// A rule naming an identity or an HTTP field there is an error, not a rule that silently never
/// (or always) matches.
pub(crate) fn check_policies(
    found: &[(Origin, AuthorizationPolicySpec)],
    policies: &Policies,
    listeners: &[Listener],
    errors: &mut Vec<ConfigError>,
) {
    let ports: Vec<u16> = listeners
        .iter()
        .filter(|l| {
            matches!(
                l.protocol,
                ListenerProtocol::AutoPassthrough | ListenerProtocol::TlsPassthrough
            )
        })
        .map(|l| l.port)
        .collect();
    if ports.is_empty() {
        return;
    }
    let all = [
        &policies.deny,
        &policies.allow,
        &policies.audit,
        &policies.dry_run.deny,
        &policies.dry_run.allow,
    ];
    for policy in all.into_iter().flatten() {
        let Some((o, _)) = found.iter().find(|(o, _)| o.resource() == policy.name) else {
            continue;
        };
        for (i, rule) in policy.rules.iter().enumerate() {
            let (Some(field), Some(port)) = (
                rule.request_field(),
                ports.iter().find(|p| rule.reaches_port(**p)),
            ) else {
                continue;
            };
            errors.push(o.error(
                format!("spec.rules[{i}]"),
                format!(
                    "{field} needs a terminated connection, but port {port} passes TLS through \
                     (PASSTHROUGH or AUTO_PASSTHROUGH): there only ipBlocks, remoteIpBlocks, ports and the \
                     source.ip, remote.ip, destination.ip, destination.port and connection.sni \
                     conditions apply; scope this rule to other ports with to.operation.ports, \
                     or leave the identity check to the destination's sidecar"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn istio_writes_the_sni_so() {
        assert_eq!(
            super::sni("Reviews.default.svc.cluster.local", 9080, Some("v1")),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        assert_eq!(super::sni("a.b", 80, None), "outbound_.80_._.a.b");
    }
}
