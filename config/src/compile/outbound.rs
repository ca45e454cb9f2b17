//! The plaintext egress listener (`MeshGateway.spec.outbound`), as a sidecar's outbound side:
//! VirtualServices bound to `mesh` first, then every ServiceEntry host and port directly.

use std::net::SocketAddr;

use super::service_entry::Backends;
use crate::model::{
    HeaderOps, HostMatcher, Listener, ListenerKind, ListenerProtocol, NamespaceFilter,
    RequestMatch, Route, RouteAction, RouteTable, ServerHost, VirtualHost, WeightedBackend,
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

/// Adds a virtual host per ServiceEntry host, after those of the `mesh` VirtualServices (which
/// therefore take over a host they declare, as in Istio), routing each port to its backend.
pub(crate) fn add_service_entries(listener: &mut Listener, backends: &Backends) {
    let mut vhosts = std::mem::take(&mut listener.routes).into_virtual_hosts();
    for (i, b) in backends.list().iter().enumerate() {
        let Some(source) = &b.source else { continue };
        let route = Route {
            name: Some(format!("{}:{}", b.host, b.port)),
            index: 0,
            matches: vec![RequestMatch {
                port: Some(b.port),
                ..RequestMatch::default()
            }],
            action: RouteAction::Forward(vec![WeightedBackend {
                backend: i,
                weight: 1,
            }]),
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rewrite_uri: None,
            rewrite_authority: None,
            timeout: None,
        };
        let host = HostMatcher::Exact(b.host.as_str().into());
        match vhosts
            .iter_mut()
            .find(|v| v.source == *source && v.hosts == [host.clone()])
        {
            Some(v) => v.routes.push(route),
            None => vhosts.push(VirtualHost {
                source: source.clone(),
                hosts: vec![host],
                routes: vec![route],
            }),
        }
    }
    listener.routes = RouteTable::new(vhosts);
}
