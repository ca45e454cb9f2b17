//! What `meshgate check` explains beyond errors, as `istioctl analyze` does: references that
//! lead nowhere. Each warning names the file, the resource and the field, with its code.
//!
//! - MG0101: a VirtualService bound to a Gateway that no loaded file defines (a short name is
//!   a Gateway in the VirtualService's own namespace, as Istio resolves it);
//! - MG0102: bound to a Gateway that selects other workloads than this proxy;
//! - MG0103: a VirtualService host its Gateway's servers do not have, or whose `ns/host` form
//!   keeps the VirtualService's namespace out;
//! - MG0104: a Gateway server host no VirtualService route answers (requests get 404);
//! - MG0105: a DestinationRule whose host no backend has.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::export::ExportTo;
use super::Parsed;
use crate::model::{
    Backend, HostMatcher, Listener, ListenerKind, ListenerProtocol, NamespaceFilter,
};
use crate::warning::{Code, Warning};

/// MG0101, MG0102, MG0103 for every VirtualService; MG0104 for every served Gateway.
pub(crate) fn bindings(
    parsed: &Parsed,
    exported: &[Option<super::export::Seen>],
    labels: &BTreeMap<String, String>,
    listeners: &[Listener],
    warnings: &mut Vec<Warning>,
) {
    let served = |selector: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let gateways: BTreeMap<String, bool> = parsed
        .gateways
        .iter()
        .map(|(o, spec)| (o.key(), served(&spec.selector)))
        .collect();
    // A VirtualService not exported to this proxy is reported as such (MG0119) and no more.
    let visible = parsed
        .virtual_services
        .iter()
        .zip(exported)
        .filter_map(|(vs, seen)| seen.map(|_| vs));
    for (o, spec) in visible {
        for (i, written) in spec.gateways.iter().flatten().enumerate() {
            let name = super::gateway::resolve_name(written, &o.namespace);
            if name == "mesh" {
                continue;
            }
            let field = format!("spec.gateways[{i}]");
            match gateways.get(&name) {
                None => {
                    let hint = if written.contains('/') || written.contains('.') {
                        String::new()
                    } else {
                        format!(
                            " (a name without a namespace is a Gateway in the VirtualService's \
                             namespace `{}`; write `istio-system/{written}` for a Gateway there)",
                            o.namespace
                        )
                    };
                    warnings.push(o.warn(
                        Code::GatewayNotFound,
                        Some(&field),
                        format!("Gateway `{name}` is not defined in any file loaded{hint}"),
                    ));
                }
                Some(false) => warnings.push(o.warn(
                    Code::GatewayNotServed,
                    Some(&field),
                    format!(
                        "Gateway `{name}` selects other workloads than this proxy (its selector \
                         is not among the MeshGateway's labels {labels:?}): these routes do \
                         nothing here"
                    ),
                )),
                Some(true) => hosts_in_gateway(o, spec, &name, listeners, warnings),
            }
        }
        sni_hosts_served(o, spec, listeners, warnings);
    }
    not_routed(parsed, labels, listeners, warnings);
}

/// MG0103 for `tls` routes: an SNI host that no PASSTHROUGH server of the VirtualService's
/// Gateways serves (to its namespace) routes nothing, as Istio builds no filter chain for it.
fn sni_hosts_served(
    o: &super::Origin,
    spec: &crate::raw::virtual_service::VirtualServiceSpec,
    listeners: &[Listener],
    warnings: &mut Vec<Warning>,
) {
    let Some(routes) = &spec.tls else {
        return;
    };
    let names: Vec<String> = spec
        .gateways
        .iter()
        .flatten()
        .map(|g| super::gateway::resolve_name(g, &o.namespace))
        .collect();
    let servers: Vec<_> = listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::TlsPassthrough)
        .flat_map(|l| &l.servers)
        .filter(|s| names.contains(&s.gateway) && s.namespace.admits(&o.namespace))
        .collect();
    if servers.is_empty() {
        return;
    }
    for (i, route) in routes.iter().enumerate() {
        for (j, m) in route.matches.iter().enumerate() {
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let Some(h) = HostMatcher::parse(sni) else {
                    continue;
                };
                if servers.iter().any(|s| s.host.intersects(&h)) {
                    continue;
                }
                let all: Vec<String> = servers.iter().map(|s| s.host.to_string()).collect();
                warnings.push(o.warn(
                    Code::VirtualServiceHostNotInGateway,
                    Some(&format!("spec.tls[{i}].match[{j}].sniHosts[{k}]")),
                    format!(
                        "`{sni}` is not among the hosts of the PASSTHROUGH servers of its \
                         Gateways ({}): no connection with that SNI is routed by it",
                        all.join(", ")
                    ),
                ));
            }
        }
    }
}

/// MG0103: each host of the VirtualService must be among the hosts of `gateway`'s servers
/// that admit the VirtualService's namespace.
fn hosts_in_gateway(
    o: &super::Origin,
    spec: &crate::raw::virtual_service::VirtualServiceSpec,
    gateway: &str,
    listeners: &[Listener],
    warnings: &mut Vec<Warning>,
) {
    let servers: Vec<_> = listeners
        .iter()
        .flat_map(|l| &l.servers)
        .filter(|s| s.gateway == gateway)
        .collect();
    for (i, host) in spec.hosts.iter().enumerate() {
        let Some(h) = HostMatcher::parse(host) else {
            continue;
        };
        if servers
            .iter()
            .any(|s| s.host.intersects(&h) && s.namespace.admits(&o.namespace))
        {
            continue;
        }
        let excluded: Vec<String> = servers
            .iter()
            .filter(|s| s.host.intersects(&h))
            .map(|s| match &s.namespace {
                NamespaceFilter::Exact(ns) => format!("{ns}/{}", s.host),
                NamespaceFilter::Any => s.host.to_string(),
            })
            .collect();
        let message = if excluded.is_empty() {
            let all: Vec<String> = servers.iter().map(|s| s.host.to_string()).collect();
            format!(
                "`{host}` is not among the hosts of Gateway `{gateway}` ({}): it is not \
                 routed there",
                all.join(", ")
            )
        } else {
            format!(
                "`{host}` is on Gateway `{gateway}` only as {}: only VirtualServices of that \
                 namespace may bind it, not of `{}`",
                excluded.join(", "),
                o.namespace
            )
        };
        warnings.push(o.warn(
            Code::VirtualServiceHostNotInGateway,
            Some(&format!("spec.hosts[{i}]")),
            message,
        ));
    }
}

/// MG0104: a host of a served Gateway server that no bound VirtualService route answers.
fn not_routed(
    parsed: &Parsed,
    labels: &BTreeMap<String, String>,
    listeners: &[Listener],
    warnings: &mut Vec<Warning>,
) {
    for (o, spec) in &parsed.gateways {
        if !spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let key = o.key();
        for (i, server) in spec.servers.iter().enumerate() {
            let redirect = server
                .tls
                .as_ref()
                .and_then(|t| t.https_redirect)
                .unwrap_or(false);
            let Some(listener) = listeners.iter().find(|l| {
                l.kind == ListenerKind::Gateway && u32::from(l.port) == server.port.number
            }) else {
                continue;
            };
            if (redirect && listener.tls.is_empty())
                || listener.protocol == ListenerProtocol::AutoPassthrough
                || listener.protocol == ListenerProtocol::TlsPassthrough
                || listener.protocol == ListenerProtocol::Tcp
            {
                continue;
            }
            for (j, written) in server.hosts.iter().enumerate() {
                let name = written.rsplit('/').next().unwrap_or(written);
                let Some(host) = HostMatcher::parse(name) else {
                    continue;
                };
                if !listener.servers.iter().any(|s| s.gateway == key) {
                    continue;
                }
                let answered = listener.routes.virtual_hosts().iter().any(|vh| {
                    !vh.routes.is_empty() && vh.hosts.iter().any(|h| h.intersects(&host))
                });
                if !answered {
                    warnings.push(o.warn(
                        Code::HostNotRouted,
                        Some(&format!("spec.servers[{i}].hosts[{j}]")),
                        format!(
                            "no VirtualService route answers `{written}` on port {}: requests \
                             for it get 404",
                            listener.port
                        ),
                    ));
                }
            }
        }
    }
}

/// MG0105: a DestinationRule whose host matches no backend (a ServiceEntry host, or a route
/// destination), or only backends it is not in scope for: declared in another namespace than
/// its own, when that is neither the proxy's nor the root namespace (`proxy_namespaces`).
pub(crate) fn destination_rules(
    parsed: &Parsed,
    backends: &[Backend],
    proxy_namespaces: [&str; 2],
    proxy_labels: &crate::raw::Labels,
    warnings: &mut Vec<Warning>,
) {
    // Whether a rule of `namespace` may apply to backend `b`: the namespace of the resource
    // that declares it (any, for a host nothing declares).
    let in_scope = |namespace: &str, b: &Backend| {
        let declared_in = match b.source.as_deref() {
            Some(s) => Some(super::service_entry::source_namespace(s)),
            None => super::destination_rule::kubernetes_namespace(&b.host),
        };
        proxy_namespaces.contains(&namespace) || declared_in.is_none_or(|ns| ns == namespace)
    };
    // Hosts (lowercase) and (host, subset)s in use, so that an exact DestinationRule host is
    // looked up rather than compared with every backend (linear in a large mesh).
    let mut hosts: HashMap<String, Vec<&Backend>> = HashMap::new();
    for b in backends {
        hosts
            .entry(b.host.to_ascii_lowercase())
            .or_default()
            .push(b);
    }
    let subsets: HashSet<(String, &str)> = backends
        .iter()
        .filter_map(|b| Some((b.host.to_ascii_lowercase(), b.subset.as_deref()?)))
        .collect();
    let [proxy, root] = proxy_namespaces;
    for (o, spec) in &parsed.destination_rules {
        // One not exported to this proxy is reported as such (MG0119) and no more.
        let export = ExportTo::parse(o, spec.export_to.as_deref(), false, &mut Vec::new());
        if !export.local_for(&o.namespace, proxy, root) && !export.exported_to(&o.namespace, proxy)
        {
            continue;
        }
        // One whose workloadSelector selects no workload here is reported as such (MG0111).
        if let Some(selector) = spec.workload_selector.as_ref().map(|s| &s.match_labels) {
            let selects = o.namespace == proxy
                && selector.iter().all(|(k, v)| proxy_labels.get(k) == Some(v));
            if !selects {
                continue;
            }
        }
        let host = if spec.host == "*" {
            spec.host.clone()
        } else {
            super::virtual_service::qualify(&spec.host, &o.namespace)
        };
        let Some(host) = HostMatcher::parse(&host) else {
            continue;
        };
        let matching: Vec<&Backend> = match &host {
            HostMatcher::Exact(h) => hosts.get(&**h).cloned().unwrap_or_default(),
            _ => backends.iter().filter(|b| host.matches(&b.host)).collect(),
        };
        let used = !matching.is_empty();
        if !used {
            warnings.push(o.warn(
                Code::DestinationRuleUnused,
                Some("spec.host"),
                format!(
                    "`{}` is the host of no ServiceEntry, Service or route destination: this \
                     DestinationRule applies to nothing",
                    spec.host
                ),
            ));
            continue;
        }
        let scoped = matching.iter().any(|b| in_scope(&o.namespace, b));
        if !scoped {
            warnings.push(o.warn(
                Code::DestinationRuleUnused,
                Some("metadata.namespace"),
                format!(
                    "`{}` is declared in another namespace than `{}`, which is neither this \
                     proxy's (`{proxy}`) nor the root namespace (`{root}`): as in Istio, this \
                     DestinationRule does not apply to it here",
                    spec.host, o.namespace
                ),
            ));
            continue;
        }
        for (i, subset) in spec.subsets.iter().enumerate() {
            let used = match &host {
                HostMatcher::Exact(h) => subsets.contains(&(h.to_string(), &*subset.name)),
                _ => backends
                    .iter()
                    .any(|b| b.subset.as_deref() == Some(&*subset.name) && host.matches(&b.host)),
            };
            if !used {
                warnings.push(o.warn(
                    Code::SubsetUnused,
                    Some(&format!("spec.subsets[{i}]")),
                    format!("subset `{}` is named by no route", subset.name),
                ));
            }
        }
    }
}
