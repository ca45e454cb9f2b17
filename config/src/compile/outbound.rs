//! The plaintext egress listener (`MeshGateway.spec.outbound`), as a sidecar's outbound side:
//! VirtualServices bound to `mesh` first, then every ServiceEntry and Kubernetes Service host
//! and port directly.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;

use super::destination_rule::Rules;
use super::service_entry::Backends;
use super::virtual_service::sidecar_names;
use crate::model::{
    HeaderCommands, HeaderOps, HostMatcher, Listener, ListenerKind, ListenerProtocol,
    NamespaceFilter, RequestMatch, Route, RouteAction, RouteTable, ServerHost, VirtualHost,
    WeightedBackend,
};

/// The Gateway name VirtualServices use to bind to sidecars.
pub(crate) const MESH: &str = "mesh";

/// The outbound listener, before VirtualServices are bound to it.
pub(crate) fn listener(address: SocketAddr) -> Listener {
    Listener {
        name: "outbound".into(),
        kind: ListenerKind::Outbound,
        port: address.port(),
        address,
        protocol: ListenerProtocol::Http,
        passthrough: Default::default(),
        sni_routes: Vec::new(),
        tcp_routes: Vec::new(),
        tls: Vec::new(),
        servers: vec![ServerHost {
            gateway: MESH.into(),
            namespace: NamespaceFilter::Any,
            host: HostMatcher::Any,
            tls: None,
            https_redirect: false,
        }],
        routes: RouteTable::default(),
    }
}

/// Adds a virtual host per declared HTTP service (ServiceEntry or Kubernetes Service host),
/// after those of the `mesh` VirtualServices (which therefore take over a host they declare,
/// as in Istio), routing each port to its backend.
pub(crate) fn add_services(
    listener: &mut Listener,
    backends: &mut Backends,
    rules: &Rules,
    proxy_namespace: &str,
) {
    let mut vhosts = std::mem::take(&mut listener.routes).into_virtual_hosts();
    // The virtual host made for each (source, host), so that a service's second port joins
    // its first without a scan of all of them (linear in a large mesh).
    let mut made: HashMap<(String, String), usize> = HashMap::new();
    let declared: Vec<(String, u16, String)> = backends
        .declared_http()
        .map(|(h, p, d)| (h.to_string(), p, d.source.clone()))
        .collect();
    for (host, port, source) in declared {
        // Declared HTTP ports always resolve: only TLS and other protocols are refused.
        let Ok(resolved) = backends.resolve(&host, Some(port), None, rules) else {
            continue;
        };
        let route = Route {
            name: Some(format!("{host}:{port}")),
            source: source.clone(),
            position: 0,
            index: 0,
            matches: vec![RequestMatch {
                port: Some(port),
                ..RequestMatch::default()
            }],
            action: RouteAction::Forward(vec![WeightedBackend {
                backend: resolved.backend,
                weight: 1,
                headers: None,
            }]),
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            header_commands: HeaderCommands::default(),
            rewrite_uri: None,
            rewrite_authority: None,
            timeout: None,
            // Istio's default route for a service retries as a VirtualService route does.
            retry: Some(crate::model::Retry::istio_default()),
            mirrors: Vec::new(),
            fault: None,
            cors: None,
        };
        match made.entry((source, host)) {
            Entry::Occupied(e) => {
                // `made` holds indices of `vhosts`, pushed below.
                if let Some(vhost) = vhosts.get_mut(*e.get()) {
                    vhost.routes.push(route);
                }
            }
            Entry::Vacant(e) => {
                let (source, host) = e.key().clone();
                let exact = HostMatcher::Exact(host.as_str().into());
                let mut hosts = vec![exact.clone()];
                hosts.extend(sidecar_names(&exact, proxy_namespace));
                e.insert(vhosts.len());
                vhosts.push(VirtualHost {
                    host_groups: None,
                    source,
                    hosts,
                    routes: vec![route],
                })
            }
        }
    }
    listener.routes = RouteTable::new(vhosts);
}
