//! VirtualServices bound to this proxy's Gateways -> virtual hosts on listeners.
//!
//! A VirtualService binds to the listeners of the Gateways it names (`mesh`: the outbound
//! listener). Inside it, a `match` applies on a listener as Istio's `sourceMatchHTTP` decides:
//! one with `gateways` where one of them is the listener's (its `sourceLabels` are then not
//! looked at), one without where its `sourceLabels` are among the MeshGateway's labels and its
//! `sourceNamespace` is the MeshGateway's namespace. A route whose matches all fail on a
//! listener is not on it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use super::destination_rule::Rules;
use super::export::{ExportTo, Seen};
use super::service_entry::Backends;
use super::Origin;
use crate::error::ConfigError;
use crate::model::header_format::HeaderValueSource;
use crate::model::{
    AbortStatus, Cors, DestinationHeaders, DirectResponse, Fault, FaultAbort, FaultDelay,
    HeaderCommands, HeaderMatch, HeaderOps, HostMatcher, Listener, ListenerKind, ListenerProtocol,
    Mirror, QueryParamMatch, Redirect, RedirectPort, RequestMatch, Retry, RetryOn, Route,
    RouteAction, RouteTable, StringMatcher, TlsGroups, UriRewrite, VirtualHost, WeightedBackend,
};
use crate::raw::virtual_service::{
    CorsPolicy as CorsSpec, Destination as DestinationSpec, Fault as FaultSpec, HeaderOperations,
    Headers, HttpMatch, HttpRoute, Percent, Redirect as RedirectSpec,
    RegexRewrite as RegexRewriteSpec, Retries as RetriesSpec, VirtualServiceSpec,
};
use crate::raw::{Labels, StringMatch};
use crate::warning::{Code, Warning};

/// The gateway name that binds a VirtualService to sidecars rather than to a Gateway.
pub(crate) const MESH_GATEWAY: &str = "mesh";

/// The workload this proxy is, as `sourceLabels` and `sourceNamespace` see it.
pub(crate) struct Proxy<'a> {
    pub namespace: &'a str,
    pub labels: &'a Labels,
    /// How it sees each VirtualService (`exported`).
    pub exported: &'a [Option<Seen>],
}

/// How a proxy in `proxy_namespace` sees each VirtualService of `found` (`exportTo`); `None`:
/// not exported to it, which `check` reports (MG0119).
pub(crate) fn exported(
    found: &[(Origin, VirtualServiceSpec)],
    proxy_namespace: &str,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Vec<Option<Seen>> {
    found
        .iter()
        .map(|(o, spec)| {
            let export = ExportTo::parse(o, spec.export_to.as_deref(), false, errors);
            let seen = export.seen_from(&o.namespace, proxy_namespace);
            if seen.is_none() {
                warnings.push(export.not_exported(o, proxy_namespace, "routes nothing"));
            }
            seen
        })
        .collect()
}

/// A virtual host's place on its listener: its Gateway's rank there, its VirtualService's
/// place in Istio's order and in `found`.
type Key = (usize, usize, usize);

/// Where one `match` applies.
#[derive(Debug, Clone)]
enum Scope {
    /// `gateways` given: on these (qualified) only.
    Gateways(Vec<String>),
    /// No `gateways`: on every listener of the VirtualService, if the source fits this proxy.
    Source(bool),
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bind(
    found: &[(Origin, VirtualServiceSpec)],
    listeners: &mut [Listener],
    backends: &mut Backends,
    rules: &Rules,
    owned: &[HeaderName],
    proxy: &Proxy<'_>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    let proxy_namespace = proxy.namespace;
    // Each VirtualService's virtual host for each Gateway on each listener, keyed by the
    // Gateway's rank on the listener, the VirtualService's place in Istio's order and its place
    // in `found`.
    let mut tables: Vec<Vec<(Key, VirtualHost)>> = listeners.iter().map(|_| Vec::new()).collect();
    let seen = proxy.exported;
    // Istio's order, as it lists them for this proxy (`VirtualServicesForGateway`): those
    // private to its namespace, then those exported to it by name, then the public ones, each
    // in `istio_order`. The key of each VirtualService's routes among those of its host.
    let mut ordered = super::istio_order(found);
    ordered.sort_by_key(|&i| seen.get(i).copied().flatten());
    let mut place = vec![0; found.len()];
    for (p, i) in ordered.into_iter().enumerate() {
        if let Some(slot) = place.get_mut(i) {
            *slot = p;
        }
    }
    for (vs, (o, spec)) in found.iter().enumerate() {
        if seen.get(vs).copied().flatten().is_none() {
            continue;
        }
        let rank_in_order = place.get(vs).copied().unwrap_or(vs);
        let gateways: Vec<String> = match &spec.gateways {
            None => vec![MESH_GATEWAY.to_string()],
            Some(list) => qualify_gateways(list, &o.namespace),
        };
        let mut hosts = Vec::new();
        if spec.hosts.is_empty() {
            errors.push(o.error("spec.hosts", "at least one host is required"));
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            // Istio's ResolveShortnameToFQDN: a name without a dot is a Kubernetes service in
            // the VirtualService's namespace.
            let host = if host == "*" {
                host.clone()
            } else {
                qualify(host, &o.namespace)
            };
            match HostMatcher::parse(&host) {
                Some(h) => hosts.push(h),
                None => errors.push(o.error(
                    format!("spec.hosts[{i}]"),
                    format!("`{host}` is not a host"),
                )),
            }
        }
        backends.outbound_only(gateways.iter().all(|g| g == MESH_GATEWAY));
        let routes: Vec<(Route, Vec<Scope>)> = spec
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let scopes = r
                    .matches
                    .iter()
                    .map(|m| scope(m, &o.namespace, proxy))
                    .collect();
                // A delegate's rule, merged: its errors name the delegate and its rule.
                let (ro, path) = match spec.delegated.get(i).and_then(Option::as_ref) {
                    Some(d) => (&d.origin, d.path.clone()),
                    None => (o, format!("spec.http[{i}]")),
                };
                let route = compile_route(ro, &path, r, backends, rules, owned, errors, warnings);
                route.map(|route| {
                    (
                        Route {
                            position: i,
                            // Counted under the VirtualService that holds the host.
                            source: o.resource(),
                            ..route
                        },
                        scopes,
                    )
                })
            })
            .collect();
        backends.outbound_only(false);
        for (listener, table) in listeners.iter().zip(tables.iter_mut()) {
            let servers: Vec<_> = listener
                .servers
                .iter()
                .filter(|s| gateways.contains(&s.gateway) && s.namespace.admits(&o.namespace))
                .collect();
            let Some(first) = servers.first() else {
                continue;
            };
            if listener.protocol == ListenerProtocol::AutoPassthrough {
                if spec.http.is_empty() {
                    continue;
                }
                errors.push(o.error(
                    "spec.gateways",
                    format!(
                        "Gateway {} serves port {} with AUTO_PASSTHROUGH: the SNI names the \
                         service and no route applies; bind the routes to another server",
                        first.gateway, listener.port
                    ),
                ));
                continue;
            }
            if listener.protocol == ListenerProtocol::TlsPassthrough {
                if !spec.http.is_empty() {
                    errors.push(o.error(
                        "spec.http",
                        format!(
                            "Gateway {} serves port {} with PASSTHROUGH: TLS is not terminated \
                             there, so only `tls` routes (by SNI) apply",
                            first.gateway, listener.port
                        ),
                    ));
                }
                continue;
            }
            if listener.protocol == ListenerProtocol::Tcp {
                if !spec.http.is_empty() {
                    errors.push(o.error(
                        "spec.http",
                        format!(
                            "Gateway {} serves port {} as TCP: no HTTP is read there, so only \
                             `tcp` routes apply (use protocol HTTP or HTTPS for http routes)",
                            first.gateway, listener.port
                        ),
                    ));
                }
                continue;
            }
            // One virtual host per Gateway of the VirtualService on the listener, as Istio
            // builds a VirtualService's routes for each server with that server's Gateway
            // alone (a match's `gateways` apply to it), ranked by the Gateway's first server.
            let mut gateways_here: Vec<(usize, &str)> = Vec::new();
            for s in &servers {
                if !gateways_here.iter().any(|(_, g)| *g == s.gateway) {
                    let rank = listener
                        .servers
                        .iter()
                        .position(|l| l.gateway == s.gateway)
                        .unwrap_or_default();
                    gateways_here.push((rank, &s.gateway));
                }
            }
            for (rank, gateway) in gateways_here {
                // Each host as far as a server of this Gateway serves it (a `*.example.com`
                // bound to a server of `a.example.com` answers that host only, not the hosts
                // other Gateways serve on the port), as Istio binds them.
                // With the TLS groups of the servers that serve each (their bits or'd; every
                // bit on a listener without TLS).
                let mut bound: Vec<HostMatcher> = Vec::new();
                let mut groups: Vec<TlsGroups> = Vec::new();
                for h in &hosts {
                    for s in servers.iter().filter(|s| s.gateway == gateway) {
                        let Some(common) = s.host.intersection(h) else {
                            continue;
                        };
                        // A server without TLS is seen by every connection only where no
                        // server has TLS.
                        let set = match s.tls {
                            Some(g) => TlsGroups::one(g),
                            None if listener.tls.is_empty() => TlsGroups::All,
                            None => TlsGroups::Empty,
                        };
                        match bound.iter().position(|b| *b == common) {
                            Some(i) => {
                                if let Some(g) = groups.get_mut(i) {
                                    g.extend(&set);
                                }
                            }
                            None => {
                                bound.push(common);
                                groups.push(set);
                            }
                        }
                    }
                }
                if listener.kind == ListenerKind::Outbound {
                    let short: Vec<HostMatcher> = bound
                        .iter()
                        .flat_map(|h| sidecar_names(h, proxy_namespace))
                        .collect();
                    bound.extend(short);
                }
                // `check` says why (analyze.rs: MG0103).
                if bound.is_empty() {
                    continue;
                }
                let on_listener = routes
                    .iter()
                    .filter_map(|(route, scopes)| on(route, scopes, gateway))
                    .collect();
                table.push((
                    (rank, rank_in_order, vs),
                    VirtualHost {
                        source: o.resource(),
                        hosts: bound,
                        // Only an HTTPS listener tells its servers apart by SNI.
                        host_groups: (!listener.tls.is_empty()).then_some(groups),
                        routes: on_listener,
                    },
                ));
            }
        }
    }
    for (listener, mut table) in listeners.iter_mut().zip(tables) {
        // Gateway by Gateway, and for each the VirtualServices in Istio's order.
        table.sort_by_key(|(key, _)| *key);
        let merged = merge(table, listener, found, warnings);
        listener.routes = RouteTable::new(merged);
    }
}

/// The virtual hosts of a listener, from each VirtualService's there for each of its Gateways
/// (in `table`'s order, `Key`): one per set of them that answer the same hosts.
///
/// On a Gateway's listener, as Istio builds a gateway's routes: every VirtualService that
/// answers a host (naming it, or by a wildcard a server's host narrows to it) adds its routes,
/// Gateway by Gateway in the order of their servers and for each in Istio's order
/// (`istio_order`), and the catch-all routes then go last (`SortVHostRoutes`), so that a
/// later VirtualService's `/api` answers before an earlier one's `/`. A VirtualService's own
/// routes stop at its first catch-all, where Istio stops building them.
///
/// On the outbound listener (`mesh`) Istio merges nothing: the VirtualService first in that
/// order answers the host, and `istioctl analyze` reports the others (IST0109), as `check` does
/// (MG0116).
fn merge(
    table: Vec<(Key, VirtualHost)>,
    listener: &Listener,
    found: &[(Origin, VirtualServiceSpec)],
    warnings: &mut Vec<Warning>,
) -> Vec<VirtualHost> {
    let on_gateway = listener.kind != ListenerKind::Outbound;
    // The virtual hosts answering each host, in `table`'s order; the hosts in the order met.
    // On an HTTPS listener a host is taken group by group (each TLS group that sees it, as
    // its own bit): what answers it for one group's connections is what its servers of that
    // group serve, as each of Envoy's filter chains has its own route configuration.
    let https = !listener.tls.is_empty();
    // The group is `None` on a listener without TLS, where every connection sees every host.
    let mut answering: HashMap<(&HostMatcher, Option<usize>), Vec<usize>> = HashMap::new();
    let mut hosts: Vec<(&HostMatcher, Option<usize>)> = Vec::new();
    for (i, (_, vh)) in table.iter().enumerate() {
        for (k, h) in vh.hosts.iter().enumerate() {
            let groups: Vec<Option<usize>> = if !https {
                vec![None]
            } else {
                vh.groups_of(k).groups().map(Some).collect()
            };
            for group in groups {
                let key = (h, group);
                let list = answering.entry(key).or_insert_with(|| {
                    hosts.push(key);
                    Vec::new()
                });
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
    }
    // Hosts that the same virtual hosts answer share one virtual host.
    let mut groups: Vec<(Vec<usize>, Vec<HostMatcher>, Vec<TlsGroups>)> = Vec::new();
    let mut group_of: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut reported: HashSet<(usize, usize)> = HashSet::new();
    for (h, tls_group) in hosts {
        let Some(mut list) = answering.get(&(h, tls_group)).cloned() else {
            continue;
        };
        if !on_gateway {
            if let [first, rest @ ..] = list.as_slice() {
                for later in rest {
                    if reported.insert((*first, *later)) {
                        conflict(&table, found, *first, *later, h, warnings);
                    }
                }
            }
            list.truncate(1);
        }
        let g = match group_of.get(&list) {
            Some(&g) => g,
            None => {
                group_of.insert(list.clone(), groups.len());
                groups.push((list, Vec::new(), Vec::new()));
                groups.len().saturating_sub(1)
            }
        };
        if let Some((_, group_hosts, host_groups)) = groups.get_mut(g) {
            // One host seen the same way by several groups is one entry for them all.
            let set = tls_group.map_or(TlsGroups::All, TlsGroups::one);
            match group_hosts.iter().position(|known| known == h) {
                Some(k) => {
                    if let Some(seen_by) = host_groups.get_mut(k) {
                        seen_by.extend(&set);
                    }
                }
                None => {
                    group_hosts.push(h.clone());
                    host_groups.push(set);
                }
            }
        }
    }
    let prepared: Vec<(String, Vec<Route>, Option<Route>)> = table
        .into_iter()
        .map(|(_, vh)| {
            let (routes, catch_all) = until_catch_all(vh.routes, listener.port);
            (vh.source, routes, catch_all)
        })
        .collect();
    groups
        .into_iter()
        .map(|(members, hosts, host_groups)| {
            let parts: Vec<_> = members.iter().filter_map(|&i| prepared.get(i)).collect();
            // A VirtualService on two Gateways of the port is one part per Gateway.
            let mut sources: Vec<&str> = Vec::new();
            for (s, _, _) in &parts {
                if !sources.contains(&s.as_str()) {
                    sources.push(s);
                }
            }
            let routes = parts
                .iter()
                .flat_map(|(_, routes, _)| routes)
                .chain(
                    parts
                        .iter()
                        .filter_map(|(_, _, catch_all)| catch_all.as_ref()),
                )
                .cloned()
                .collect();
            VirtualHost {
                source: sources.join(", "),
                hosts,
                host_groups: https.then_some(host_groups),
                routes,
            }
        })
        .collect()
}

/// A VirtualService's routes as Envoy gets them: they end at the first match that takes
/// every request (a route without matches, or one whose match is catch-all), and that
/// route, with the catch-all match alone, is given apart; its matches before that one stay
/// in place as a route of their own.
fn until_catch_all(routes: Vec<Route>, port: u16) -> (Vec<Route>, Option<Route>) {
    let mut kept = Vec::new();
    for route in routes {
        let catch_all = if route.matches.is_empty() {
            Some(0)
        } else {
            route.matches.iter().position(|m| m.is_catch_all(port))
        };
        let Some(k) = catch_all else {
            kept.push(route);
            continue;
        };
        if k > 0 {
            kept.push(Route {
                matches: route.matches.iter().take(k).cloned().collect(),
                ..route.clone()
            });
        }
        let matches = route.matches.iter().skip(k).take(1).cloned().collect();
        return (kept, Some(Route { matches, ..route }));
    }
    (kept, None)
}

/// MG0116: VirtualService `later` names a host of the outbound listener that `first`, before
/// it in Istio's order, answers.
fn conflict(
    table: &[(Key, VirtualHost)],
    found: &[(Origin, VirtualServiceSpec)],
    first: usize,
    later: usize,
    host: &HostMatcher,
    warnings: &mut Vec<Warning>,
) {
    let (Some((_, winner)), Some((o, _))) = (
        table.get(first),
        table.get(later).and_then(|((_, _, f), _)| found.get(*f)),
    ) else {
        return;
    };
    warnings.push(o.warn(
        Code::ConflictingMeshVirtualServiceHosts,
        Some("spec.hosts"),
        format!(
            "`{host}` is also a host of {}, first in Istio's order (creationTimestamp, then \
             name), which answers it on the outbound listener: Istio merges the \
             VirtualServices of a host on Gateways only (IST0109)",
            winner.source
        ),
    ));
}

/// `gateways` names as `namespace/name`, by Istio's rules (`mesh` stays).
pub(crate) fn qualify_gateways(list: &[String], namespace: &str) -> Vec<String> {
    list.iter()
        .map(|g| super::gateway::resolve_name(g, namespace))
        .collect()
}

fn scope(m: &HttpMatch, namespace: &str, proxy: &Proxy<'_>) -> Scope {
    match &m.gateways {
        Some(list) => Scope::Gateways(qualify_gateways(list, namespace)),
        None => Scope::Source(
            m.source_labels
                .iter()
                .all(|(k, v)| proxy.labels.get(k) == Some(v))
                && m.source_namespace
                    .as_deref()
                    .is_none_or(|ns| ns == proxy.namespace),
        ),
    }
}

/// The route as it stands on a server of `gateway`: only the matches that apply there; `None`
/// when none does.
fn on(route: &Route, scopes: &[Scope], gateway: &str) -> Option<Route> {
    if route.matches.is_empty() {
        return Some(route.clone());
    }
    let applies = |s: &Scope| match s {
        Scope::Gateways(list) => list.iter().any(|g| g == gateway),
        Scope::Source(fits) => *fits,
    };
    if scopes.iter().all(applies) {
        return Some(route.clone());
    }
    let matches: Vec<RequestMatch> = route
        .matches
        .iter()
        .zip(scopes)
        .filter(|(_, s)| applies(s))
        .map(|(m, _)| m.clone())
        .collect();
    (!matches.is_empty()).then(|| Route {
        matches,
        ..route.clone()
    })
}

#[allow(clippy::too_many_arguments)]
fn compile_route(
    o: &Origin,
    path: &str,
    r: &HttpRoute,
    backends: &mut Backends,
    rules: &Rules,
    owned: &[HeaderName],
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Option<Route> {
    let before = errors.len();
    o.unsupported(errors, path, &[("delegate", r.delegate.is_some())]);
    let matches = r
        .matches
        .iter()
        .enumerate()
        .filter_map(|(i, m)| compile_match(o, &format!("{path}.match[{i}]"), m, errors))
        .collect();
    let mut action = match (&r.redirect, &r.direct_response, r.route.is_empty()) {
        (Some(rd), None, true) => {
            if r.rewrite.is_some() {
                errors.push(o.error(
                    format!("{path}.rewrite"),
                    "rewrite and redirect are exclusive (Istio refuses both)",
                ));
            }
            redirect(o, &format!("{path}.redirect"), rd, errors).map(RouteAction::Redirect)
        }
        (Some(_), _, _) => {
            errors.push(o.error(path, "redirect is exclusive with route and directResponse"));
            None
        }
        (None, Some(_), false) => {
            errors.push(o.error(path, "route and directResponse are exclusive"));
            None
        }
        (None, None, true) => {
            errors.push(o.error(
                format!("{path}.route"),
                "a route, a redirect or a directResponse is required",
            ));
            None
        }
        (None, Some(d), true) => {
            let p = format!("{path}.directResponse");
            // Istio's `HTTPBody` is a oneof: `string`, or `bytes` in base64 as protobuf's JSON
            // writes bytes.
            let body = match d.body.as_ref().map(|b| (&b.string, &b.bytes)) {
                None | Some((None, None)) => Bytes::new(),
                Some((Some(text), None)) => Bytes::from(text.clone()),
                Some((None, Some(encoded))) => match super::decode_base64(encoded) {
                    Some(decoded) => Bytes::from(decoded),
                    None => {
                        errors.push(o.error(
                            format!("{p}.body.bytes"),
                            "not base64 (standard or URL-safe, padding optional)",
                        ));
                        Bytes::new()
                    }
                },
                Some((Some(_), Some(_))) => {
                    errors.push(o.error(
                        format!("{p}.body"),
                        "string and bytes are exclusive: give one",
                    ));
                    Bytes::new()
                }
            };
            match u16::try_from(d.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                Some(status) => Some(RouteAction::Direct(DirectResponse { status, body })),
                None => {
                    errors.push(o.error(format!("{p}.status"), "not an HTTP status code"));
                    None
                }
            }
        }
        (None, None, false) => {
            let mut list = Vec::new();
            let weighted = r.route.iter().any(|d| d.weight.is_some());
            for (i, d) in r.route.iter().enumerate() {
                let p = format!("{path}.route[{i}]");
                let headers = d
                    .headers
                    .as_ref()
                    .map(|h| Box::new(headers(o, &format!("{p}.headers"), h, owned, errors)));
                // Istio: a lone destination takes all traffic; otherwise weights are relative.
                let weight = if weighted { d.weight.unwrap_or(0) } else { 1 };
                let Some(backend) =
                    destination(o, &p, &d.destination, backends, rules, errors, warnings)
                else {
                    continue;
                };
                if weight > 0 {
                    list.push(WeightedBackend {
                        backend,
                        weight,
                        headers,
                    });
                }
            }
            if list.is_empty() && errors.len() == before {
                errors.push(o.error(format!("{path}.route"), "every destination has weight 0"));
            }
            Some(RouteAction::Forward(list))
        }
    };
    let DestinationHeaders {
        request: mut request_headers,
        response: mut response_headers,
    } = r
        .headers
        .as_ref()
        .map(|h| headers(o, &format!("{path}.headers"), h, owned, errors))
        .unwrap_or_default();
    // Istio appends a lone destination's operations to its rule's (`processDestination`): one
    // level, where the destination's `set` comes last and wins. Several destinations keep
    // theirs apart (Envoy's weighted clusters).
    if let (Some(RouteAction::Forward(list)), [_]) = (action.as_mut(), r.route.as_slice()) {
        if let Some(own) = list.first_mut().and_then(|b| b.headers.take()) {
            request_headers.extend(own.request);
            response_headers.extend(own.response);
        }
    }
    let mut rewrite_uri = None;
    let mut rewrite_authority = None;
    if let Some(rw) = &r.rewrite {
        if let Some(uri) = &rw.uri {
            if !uri.starts_with('/') {
                errors.push(o.error(format!("{path}.rewrite.uri"), "must start with `/`"));
            }
            rewrite_uri = Some(UriRewrite::Prefix(uri.clone()));
        }
        if let Some(regex) = &rw.uri_regex_rewrite {
            let at = format!("{path}.rewrite.uriRegexRewrite");
            if rw.uri.is_some() {
                errors.push(o.error(
                    &at,
                    "rewrite may only contain one of uri and uriRegexRewrite (Istio refuses both)",
                ));
            }
            match regex_rewrite(regex) {
                Ok(rewrite) => rewrite_uri = Some(rewrite),
                Err((field, e)) => errors.push(o.error(format!("{at}.{field}"), e)),
            }
        }
        if let Some(a) = &rw.authority {
            match HeaderValue::from_str(a) {
                Ok(v) if !a.is_empty() => rewrite_authority = Some(v),
                _ => errors
                    .push(o.error(format!("{path}.rewrite.authority"), "not a valid authority")),
            }
        }
    }
    let timeout = match &r.timeout {
        None => None,
        Some(t) => match parse_duration(t) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => {
                errors.push(o.error(
                    format!("{path}.timeout"),
                    format!("`{t}` is not a duration such as 10s or 500ms"),
                ));
                None
            }
        },
    };
    let fault = r
        .fault
        .as_ref()
        .and_then(|f| fault(o, &format!("{path}.fault"), f, errors, warnings));
    let cors = r
        .cors_policy
        .as_ref()
        .and_then(|c| cors(o, &format!("{path}.corsPolicy"), c, errors));
    let mirrors = mirrors(o, path, r, backends, rules, errors, warnings);
    if !mirrors.is_empty() && r.route.is_empty() {
        errors.push(o.error(
            path,
            "a mirror copies requests a route forwards: this rule answers itself (directResponse or redirect)",
        ));
    }
    let retry = match &r.retries {
        None => Some(Retry::istio_default()),
        Some(spec) => retries(o, &format!("{path}.retries"), spec, errors),
    };
    if errors.len() > before {
        return None;
    }
    let mut route = Route {
        fault,
        cors,
        name: r.name.clone(),
        source: o.resource(),
        position: 0,
        index: 0,
        matches,
        action: action?,
        request_headers,
        response_headers,
        header_commands: HeaderCommands::default(),
        rewrite_uri,
        rewrite_authority,
        timeout,
        retry,
        mirrors,
    };
    route.header_commands = route.header_commands_of();
    Some(route)
}

/// A route's or a mirror's `destination`: its backend, with a warning for a host nothing
/// declares and for a subset no DestinationRule defines.
fn destination(
    o: &Origin,
    p: &str,
    d: &DestinationSpec,
    backends: &mut Backends,
    rules: &Rules,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Option<usize> {
    let host = qualify(&d.host, &o.namespace);
    let port = match d.port.as_ref().map(|p| u16::try_from(p.number)) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => {
            errors.push(o.error(
                format!("{p}.destination.port.number"),
                "ports must be 1 to 65535",
            ));
            return None;
        }
    };
    let subset = d.subset.as_deref();
    match backends.resolve(&host, port, subset, rules) {
        Ok(resolved) => {
            if resolved.implicit {
                warnings.push(o.warn(
                    Code::DestinationNotDeclared,
                    Some(&format!("{p}.destination.host")),
                    format!(
                        "`{host}` is declared by no ServiceEntry or Service; it will be \
                         resolved by DNS when a request comes"
                    ),
                ));
            }
            if resolved.undefined_subset {
                warnings.push(o.warn(
                    Code::SubsetNotFound,
                    Some(&format!("{p}.destination.subset")),
                    format!(
                        "`{}` is defined by no DestinationRule for `{host}`: requests routed \
                         here get 503, as in Istio",
                        subset.unwrap_or_default()
                    ),
                ));
            }
            Some(resolved.backend)
        }
        Err(message) => {
            errors.push(o.error(format!("{p}.destination"), message));
            None
        }
    }
}

/// `mirror` with `mirrorPercentage` (or the deprecated `mirrorPercent`), or `mirrors`: each
/// destination with its share, 100% when none is given, as Istio.
#[allow(clippy::too_many_arguments)]
fn mirrors(
    o: &Origin,
    path: &str,
    r: &HttpRoute,
    backends: &mut Backends,
    rules: &Rules,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Vec<Mirror> {
    let share =
        |field: String, p: Option<&Percent>, legacy: Option<u32>, errors: &mut Vec<ConfigError>| {
            let value = match (p.and_then(|p| p.value), legacy) {
                (Some(v), _) => v,
                (None, Some(n)) => f64::from(n),
                (None, None) => 100.0,
            };
            if !(0.0..=100.0).contains(&value) {
                errors.push(o.error(field, format!("`{value}` is not a percentage (0 to 100)")));
                return 0;
            }
            (value * 10_000.0).round() as u32
        };
    let mut out = Vec::new();
    match (&r.mirror, &r.mirrors) {
        (Some(_), Some(_)) => {
            errors.push(o.error(path, "mirror and mirrors are exclusive"));
        }
        (Some(d), None) => {
            let per_million = share(
                format!("{path}.mirrorPercentage.value"),
                r.mirror_percentage.as_ref(),
                r.mirror_percent,
                errors,
            );
            let p = format!("{path}.mirror");
            if let Some(backend) = destination(o, &p, d, backends, rules, errors, warnings) {
                out.push(Mirror {
                    backend,
                    per_million,
                });
            }
        }
        (None, Some(list)) => {
            if r.mirror_percentage.is_some() || r.mirror_percent.is_some() {
                errors.push(o.error(
                    format!("{path}.mirrorPercentage"),
                    "goes with mirror; each of mirrors has its own percentage",
                ));
            }
            for (i, m) in list.iter().enumerate() {
                let p = format!("{path}.mirrors[{i}]");
                let per_million = share(
                    format!("{p}.percentage.value"),
                    m.percentage.as_ref(),
                    None,
                    errors,
                );
                if let Some(backend) =
                    destination(o, &p, &m.destination, backends, rules, errors, warnings)
                {
                    out.push(Mirror {
                        backend,
                        per_million,
                    });
                }
            }
        }
        (None, None) => {
            if r.mirror_percentage.is_some() || r.mirror_percent.is_some() {
                errors.push(o.error(format!("{path}.mirrorPercentage"), "set without a mirror"));
            }
        }
    }
    out
}

/// `retries`, as Istio's `ConvertPolicy`: `attempts: 0` turns retries off; an omitted
/// `retryOn` keeps Istio's default conditions; numbers in `retryOn` are status codes for
/// `retriable-status-codes`, which they imply.
fn retries(
    o: &Origin,
    path: &str,
    spec: &RetriesSpec,
    errors: &mut Vec<ConfigError>,
) -> Option<Retry> {
    let before = errors.len();
    let mut retry = Retry::istio_default();
    let attempts = spec.attempts.unwrap_or(0);
    match u32::try_from(attempts) {
        Ok(n) => retry.attempts = n,
        Err(_) => errors.push(o.error(
            format!("{path}.attempts"),
            format!("`{attempts}` is not a number of attempts (0 or more)"),
        )),
    }
    o.unsupported(
        errors,
        path,
        &[(
            "retryRemoteLocalities",
            spec.retry_remote_localities.is_some(),
        )],
    );
    if let Some(other) = spec.retry_ignore_previous_hosts {
        retry.other_hosts = other;
    }
    let duration = |field: &str, v: &Option<String>, errors: &mut Vec<ConfigError>| {
        v.as_deref().and_then(|t| match parse_duration(t) {
            Some(d) if d >= Duration::from_millis(1) => Some(d),
            _ => {
                errors.push(o.error(
                    format!("{path}.{field}"),
                    format!("`{t}` is not a duration of 1ms or more"),
                ));
                None
            }
        })
    };
    retry.per_try_timeout = duration("perTryTimeout", &spec.per_try_timeout, errors);
    if let Some(base) = duration("backoff", &spec.backoff, errors) {
        retry.backoff = base;
    }
    if let Some(on) = spec.retry_on.as_deref() {
        retry.on = RetryOn::default();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(condition) = RetryOn::named(part) {
                retry.on.insert(condition);
            } else if let Some(code) = part.parse::<u16>().ok().filter(|c| (100..=599).contains(c))
            {
                retry.status_codes.push(code);
                retry.on.insert(RetryOn::RETRIABLE_STATUS_CODES);
            } else {
                let advice = match part {
                    "retriable-headers" => {
                        ": it needs retriable response headers, which Istio cannot configure"
                    }
                    "http3-post-connect-failure" => ": meshgate does not speak HTTP/3",
                    _ => "",
                };
                errors.push(o.error(
                    format!("{path}.retryOn"),
                    format!(
                        "`{part}` is not a retry condition meshgate implements{advice}; use {} or \
                         an HTTP status code",
                        RetryOn::NAMES.map(|(n, _)| n).join(", ")
                    ),
                ));
            }
        }
    }
    // Istio: `attempts` 0 (or left out) turns retries off.
    (errors.len() == before && retry.attempts > 0).then_some(retry)
}

/// `redirect`, as Istio's `ApplyRedirect` sets Envoy's RedirectAction.
fn redirect(
    o: &Origin,
    path: &str,
    rd: &RedirectSpec,
    errors: &mut Vec<ConfigError>,
) -> Option<Redirect> {
    let before = errors.len();
    let code = match rd.redirect_code.unwrap_or(301) {
        0 | 301 => StatusCode::MOVED_PERMANENTLY,
        c @ (302 | 303 | 307 | 308) => StatusCode::from_u16(c as u16).ok()?,
        other => {
            errors.push(o.error(
                format!("{path}.redirectCode"),
                format!("`{other}` is not a redirect code Istio accepts (301, 302, 303, 307, 308)"),
            ));
            StatusCode::MOVED_PERMANENTLY
        }
    };
    let port = match (rd.port, rd.derive_port.as_deref()) {
        (Some(_), Some(_)) => {
            errors.push(o.error(path, "port and derivePort are exclusive"));
            RedirectPort::Unchanged
        }
        (Some(p), None) => match u16::try_from(p).ok().filter(|p| *p > 0) {
            Some(p) => RedirectPort::Fixed(p),
            None => {
                errors.push(o.error(format!("{path}.port"), "ports must be 1 to 65535"));
                RedirectPort::Unchanged
            }
        },
        (None, None) => RedirectPort::Unchanged,
        (None, Some("FROM_REQUEST_PORT")) => RedirectPort::Listener,
        (None, Some("FROM_PROTOCOL_DEFAULT")) => RedirectPort::ProtocolDefault,
        (None, Some(other)) => {
            errors.push(o.error(
                format!("{path}.derivePort"),
                format!("`{other}` is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"),
            ));
            RedirectPort::Unchanged
        }
    };
    if let Some(uri) = &rd.uri {
        if !uri.starts_with('/') {
            errors.push(o.error(format!("{path}.uri"), "must start with `/`"));
        }
    }
    if let Some(a) = &rd.authority {
        if a.is_empty() || HeaderValue::from_str(a).is_err() || a.contains('/') {
            errors.push(o.error(format!("{path}.authority"), "not a valid authority"));
        }
    }
    if let Some(scheme) = &rd.scheme {
        if !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            errors.push(o.error(format!("{path}.scheme"), "not a URI scheme"));
        }
    }
    (errors.len() == before).then(|| Redirect {
        uri: rd.uri.clone(),
        authority: rd.authority.as_ref().map(|a| a.to_ascii_lowercase()),
        port,
        scheme: rd.scheme.as_ref().map(|s| s.to_ascii_lowercase()),
        code,
    })
}

/// `fault`. Istio injects nothing for a share it is not given: an absent `percentage` is 0.
fn fault(
    o: &Origin,
    path: &str,
    f: &FaultSpec,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Option<Fault> {
    let before = errors.len();
    let share =
        |field: String, p: Option<&Percent>, legacy: Option<u32>, errors: &mut Vec<ConfigError>| {
            let value = match (p.and_then(|p| p.value), legacy) {
                (Some(v), _) => v,
                (None, Some(n)) => f64::from(n),
                (None, None) => 0.0,
            };
            if !(0.0..=100.0).contains(&value) {
                errors.push(o.error(field, format!("`{value}` is not a percentage (0 to 100)")));
                return 0;
            }
            (value * 10_000.0).round() as u32
        };
    let delay = f.delay.as_ref().and_then(|d| {
        let p = format!("{path}.delay");
        o.unsupported(
            errors,
            &p,
            &[("exponentialDelay", d.exponential_delay.is_some())],
        );
        let per_million = share(
            format!("{p}.percentage.value"),
            d.percentage.as_ref(),
            d.percent,
            errors,
        );
        let fixed = match d.fixed_delay.as_deref().map(parse_duration) {
            Some(Some(t)) => t,
            Some(None) => {
                errors.push(o.error(format!("{p}.fixedDelay"), "not a duration such as 5s"));
                return None;
            }
            None => {
                errors.push(o.error(format!("{p}.fixedDelay"), "required"));
                return None;
            }
        };
        if per_million == 0 {
            warnings.push(o.warn(
                Code::FaultNeverInjected,
                Some(&p),
                "has no percentage: it delays no request (Istio's default is 0%)",
            ));
        }
        Some(FaultDelay { fixed, per_million })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let p = format!("{path}.abort");
        o.unsupported(errors, &p, &[("http2Error", a.http2_error.is_some())]);
        let per_million = share(
            format!("{p}.percentage.value"),
            a.percentage.as_ref(),
            None,
            errors,
        );
        let status = match (a.http_status, &a.grpc_status) {
            (Some(code), None) => match u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(s) if (200..=599).contains(&s.as_u16()) => AbortStatus::Http(s),
                _ => {
                    errors.push(o.error(
                        format!("{p}.httpStatus"),
                        format!("`{code}` is not an HTTP status code of 200 to 599"),
                    ));
                    return None;
                }
            },
            (None, Some(name)) => match GRPC_STATUS.iter().position(|n| n == name) {
                Some(code) => AbortStatus::Grpc(code as u32),
                None => {
                    errors.push(o.error(
                        format!("{p}.grpcStatus"),
                        format!("`{name}` is not a gRPC status name such as UNAVAILABLE"),
                    ));
                    return None;
                }
            },
            _ => {
                errors.push(o.error(
                    p.clone(),
                    "exactly one of httpStatus and grpcStatus is required",
                ));
                return None;
            }
        };
        if per_million == 0 {
            warnings.push(o.warn(
                Code::FaultNeverInjected,
                Some(&p),
                "has no percentage: it aborts no request (Istio's default is 0%)",
            ));
        }
        Some(FaultAbort {
            status,
            per_million,
        })
    });
    if f.delay.is_none() && f.abort.is_none() {
        errors.push(o.error(path, "a delay or an abort is required"));
    }
    (errors.len() == before).then_some(Fault { delay, abort })
}

/// gRPC status names, by code.
const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `corsPolicy`, as Istio's `TranslateCORSPolicy` sets Envoy's CORS filter.
fn cors(o: &Origin, path: &str, c: &CorsSpec, errors: &mut Vec<ConfigError>) -> Option<Cors> {
    let before = errors.len();
    let mut allow_origins = Vec::new();
    for (i, m) in c.allow_origins.iter().flatten().enumerate() {
        match string_matcher(m) {
            Ok(Some(m)) => allow_origins.push(m),
            Ok(None) => errors.push(o.error(
                format!("{path}.allowOrigins[{i}]"),
                "one of exact, prefix or regex is required",
            )),
            Err(e) => errors.push(o.error(format!("{path}.allowOrigins[{i}]"), e)),
        }
    }
    allow_origins.extend(
        c.allow_origin
            .iter()
            .flatten()
            .map(|e| StringMatcher::Exact(e.clone())),
    );
    let mut joined = |field: &str, list: &[String]| {
        if list.is_empty() {
            return None;
        }
        match HeaderValue::from_str(&list.join(",")) {
            Ok(v) => Some(v),
            Err(_) => {
                errors.push(o.error(format!("{path}.{field}"), "not valid header text"));
                None
            }
        }
    };
    let allow_methods = joined("allowMethods", &c.allow_methods);
    let allow_headers = joined("allowHeaders", &c.allow_headers);
    let expose_headers = joined("exposeHeaders", &c.expose_headers);
    let max_age = match c.max_age.as_deref().map(parse_duration) {
        None => None,
        Some(Some(d)) => Some(HeaderValue::from(d.as_secs())),
        Some(None) => {
            errors.push(o.error(format!("{path}.maxAge"), "not a duration such as 24h"));
            None
        }
    };
    let forward_unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED") | Some("FORWARD") => true,
        Some("IGNORE") => false,
        Some(other) => {
            errors.push(o.error(
                format!("{path}.unmatchedPreflights"),
                format!("`{other}` is not FORWARD or IGNORE"),
            ));
            true
        }
    };
    (errors.len() == before).then_some(Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights,
    })
}

fn compile_match(
    o: &Origin,
    path: &str,
    m: &HttpMatch,
    errors: &mut Vec<ConfigError>,
) -> Option<RequestMatch> {
    o.unsupported(errors, path, &[("statPrefix", m.stat_prefix.is_some())]);
    let mut required = |field: &str, sm: Option<&StringMatch>| {
        sm.and_then(|sm| match string_matcher(sm) {
            Ok(Some(m)) => Some(m),
            Ok(None) => {
                errors.push(o.error(
                    format!("{path}.{field}"),
                    "one of exact, prefix or regex is required",
                ));
                None
            }
            Err(e) => {
                errors.push(o.error(format!("{path}.{field}"), e));
                None
            }
        })
    };
    let uri = required("uri", m.uri.as_ref());
    let authority = required("authority", m.authority.as_ref());
    let method = required("method", m.method.as_ref());
    let scheme = required("scheme", m.scheme.as_ref());
    if matches!(&method, Some(StringMatcher::Exact(m)) if m == "CONNECT") {
        errors.push(o.error(
            format!("{path}.method"),
            "CONNECT cannot be routed: meshgate does not tunnel, and answers CONNECT with 405",
        ));
    }
    let headers = header_matches(o, &format!("{path}.headers"), &m.headers, errors);
    let without_headers = header_matches(
        o,
        &format!("{path}.withoutHeaders"),
        &m.without_headers,
        errors,
    );
    let port = match m.port.map(u16::try_from) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => {
            errors.push(o.error(format!("{path}.port"), "ports must be 1 to 65535"));
            None
        }
    };
    let query_params = query_params(o, &format!("{path}.queryParams"), &m.query_params, errors);
    Some(RequestMatch {
        name: m.name.clone(),
        uri,
        authority,
        method,
        scheme,
        headers,
        without_headers,
        query_params,
        ignore_uri_case: m.ignore_uri_case,
        port,
    })
}

/// `queryParams`, as Istio gives them to Envoy: `exact`, `prefix` or `regex`; a match with
/// none of them asks for the parameter only. An empty `prefix` or `regex` is refused, as
/// Envoy's and Istio's validation refuse them.
fn query_params(
    o: &Origin,
    path: &str,
    map: &std::collections::BTreeMap<String, StringMatch>,
    errors: &mut Vec<ConfigError>,
) -> Vec<QueryParamMatch> {
    let mut out = Vec::new();
    for (name, sm) in map {
        let field = format!("{path}.{name}");
        if name.is_empty() {
            errors.push(o.error(field, "a query parameter needs a name"));
            continue;
        }
        for (what, value) in [("prefix", &sm.prefix), ("regex", &sm.regex)] {
            if value.as_deref() == Some("") {
                errors.push(o.error(format!("{field}.{what}"), "may not be empty"));
            }
        }
        match string_matcher(sm) {
            Ok(value) => out.push(QueryParamMatch {
                name: name.clone(),
                value,
            }),
            Err(e) => errors.push(o.error(field, e)),
        }
    }
    out
}

fn header_matches(
    o: &Origin,
    path: &str,
    map: &std::collections::BTreeMap<String, StringMatch>,
    errors: &mut Vec<ConfigError>,
) -> Vec<HeaderMatch> {
    let mut out = Vec::new();
    for (name, sm) in map {
        let field = format!("{path}.{name}");
        let Some(name) = header_name(name) else {
            errors.push(o.error(field, "not a lowercase HTTP header name"));
            continue;
        };
        match string_matcher(sm) {
            Ok(value) => out.push(HeaderMatch { name, value }),
            Err(e) => errors.push(o.error(field, e)),
        }
    }
    out
}

/// Istio's longest regex (`validateStringRegexp`).
const MAX_REGEX_LEN: usize = 1024;

/// `rewrite.uriRegexRewrite`, or the field that is wrong and why.
fn regex_rewrite(spec: &RegexRewriteSpec) -> Result<UriRewrite, (&'static str, String)> {
    let pattern = match spec.pattern.as_deref() {
        None | Some("") => return Err(("match", "required, with rewrite".into())),
        Some(p) if p.len() > MAX_REGEX_LEN => {
            return Err(("match", format!("longer than {MAX_REGEX_LEN} bytes")))
        }
        Some(p) => Regex::new(p).map_err(|e| ("match", format!("invalid regex: {e}")))?,
    };
    let rewrite = match spec.rewrite.as_deref() {
        None | Some("") => return Err(("rewrite", "required, with match".into())),
        Some(r) => r,
    };
    let replacement = UriRewrite::regex_replacement(rewrite, pattern.captures_len())
        .map_err(|e| ("rewrite", e))?;
    Ok(UriRewrite::Regex {
        pattern,
        replacement,
    })
}

/// `Ok(None)` for an empty `StringMatch` (which means "present" for headers).
fn string_matcher(sm: &StringMatch) -> Result<Option<StringMatcher>, String> {
    match (&sm.exact, &sm.prefix, &sm.regex) {
        (None, None, None) => Ok(None),
        (Some(e), None, None) => Ok(Some(StringMatcher::Exact(e.clone()))),
        (None, Some(p), None) => Ok(Some(StringMatcher::Prefix(p.clone()))),
        (None, None, Some(r)) => Regex::new(&format!("^(?:{r})$"))
            .map(|re| Some(StringMatcher::Regex(re)))
            .map_err(|e| format!("invalid regex: {e}")),
        _ => Err("only one of exact, prefix and regex may be set".into()),
    }
}

/// Fields that frame a message or describe one hop: no header operation may name them.
const FRAMING: [HeaderName; 7] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::header::TE,
    http::header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// A rule's or a destination's `headers`.
fn headers(
    o: &Origin,
    path: &str,
    h: &Headers,
    owned: &[HeaderName],
    errors: &mut Vec<ConfigError>,
) -> DestinationHeaders {
    DestinationHeaders {
        request: header_ops(
            o,
            &format!("{path}.request"),
            h.request.as_ref(),
            owned,
            errors,
        ),
        response: header_ops(
            o,
            &format!("{path}.response"),
            h.response.as_ref(),
            &[],
            errors,
        ),
    }
}

/// `headers.request` or `headers.response`. Request operations may not name a header the
/// proxy owns (`owned`), nor `host`: the proxy sets those last, from the connection and the
/// one authority of the request.
fn header_ops(
    o: &Origin,
    path: &str,
    ops: Option<&HeaderOperations>,
    owned: &[HeaderName],
    errors: &mut Vec<ConfigError>,
) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let refused = |field: String, name: &HeaderName, errors: &mut Vec<ConfigError>| {
        let request = path.ends_with(".request");
        if FRAMING.contains(name) {
            errors.push(o.error(
                field,
                format!(
                    "`{name}` describes the message on one connection: the proxy writes it for \
                     each hop, and a value from a header operation could desynchronise the peer"
                ),
            ));
            true
        } else if request && name == http::header::HOST {
            errors.push(o.error(
                field,
                "`host` is the request's authority: use rewrite.authority",
            ));
            true
        } else if owned.contains(name) {
            errors.push(o.error(
                field,
                format!(
                    "`{name}` is owned by the proxy: it is set from the verified connection \
                     after every other change to the request, so this would never take effect"
                ),
            ));
            true
        } else {
            false
        }
    };
    let pairs =
        |field: &str, map: &std::collections::BTreeMap<String, String>, errors: &mut Vec<_>| {
            let mut out = Vec::new();
            for (k, v) in map {
                let at = format!("{path}.{field}.{k}");
                match (header_name(k), HeaderValueSource::parse(v)) {
                    (Some(k), Ok(v)) => {
                        if !refused(at.clone(), &k, errors) {
                            out.push((k, v));
                        }
                    }
                    (None, _) => errors.push(o.error(at, "not a valid header name")),
                    (Some(_), Err(e)) => errors.push(o.error(at, format!("`{v}`: {e}"))),
                }
            }
            out
        };
    let set = pairs("set", &ops.set, errors);
    let add = pairs("add", &ops.add, errors);
    let mut remove = Vec::new();
    for (i, k) in ops.remove.iter().enumerate() {
        let at = format!("{path}.remove[{i}]");
        match header_name(k) {
            Some(k) => {
                if !refused(at, &k, errors) {
                    remove.push(k);
                }
            }
            None => errors.push(o.error(at, "not a valid header name")),
        }
    }
    HeaderOps { set, add, remove }
}

fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()
}

/// The other names a sidecar answers for a Kubernetes service host, as Istio's outbound
/// routes do: `reviews.default.svc.cluster.local` is also `reviews.default.svc` and
/// `reviews.default`, and `reviews` from a proxy in namespace `default`. (The port is removed
/// from the authority before matching, so `reviews:9080` is covered too.)
pub(crate) fn sidecar_names(host: &HostMatcher, proxy_namespace: &str) -> Vec<HostMatcher> {
    let HostMatcher::Exact(name) = host else {
        return Vec::new();
    };
    let Some(service) = name.strip_suffix(CLUSTER_DOMAIN) else {
        return Vec::new();
    };
    let Some((short, namespace)) = service.strip_suffix(".svc").and_then(|s| s.split_once('.'))
    else {
        return Vec::new();
    };
    if namespace.contains('.') {
        return Vec::new();
    }
    let mut names = vec![
        HostMatcher::Exact(format!("{short}.{namespace}.svc").into()),
        HostMatcher::Exact(format!("{short}.{namespace}").into()),
    ];
    if namespace == proxy_namespace {
        names.push(HostMatcher::Exact(short.into()));
    }
    names
}

/// The Kubernetes cluster domain Istio appends to short names.
const CLUSTER_DOMAIN: &str = ".cluster.local";

/// Istio expands a short destination host (`reviews`) with the VirtualService's namespace.
pub(crate) fn qualify(host: &str, namespace: &str) -> String {
    if host.contains('.') {
        host.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.svc.cluster.local",
            host.to_ascii_lowercase()
        )
    }
}

/// A duration as Istio writes it, which is Go's `time.ParseDuration` format: decimal numbers
/// with units, one or more (`10s`, `1.5s`, `250ms`, `1h30m`, `100us`), and `0` alone.
/// Durations over ten years are refused: none of Istio's settings means one, and the timers
/// they would arm overflow.
///
/// Written here rather than taken from a crate: the small duration crates (humantime and
/// friends) read other formats, with spaces and long unit names, and not Go's.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut seconds = 0.0_f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(digits);
        if number.is_empty() || number == "." {
            return None;
        }
        let n: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += n * scale;
        rest = next;
    }
    if seconds > MAX_DURATION_SECS {
        return None;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// Ten years.
const MAX_DURATION_SECS: f64 = 10.0 * 365.0 * 86_400.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("100us"), Some(Duration::from_micros(100)));
        assert_eq!(parse_duration("2µs"), Some(Duration::from_micros(2)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1 s"), None);
        assert_eq!(parse_duration("9999999999999999999s"), None);
    }

    #[test]
    fn short_hosts_are_qualified_with_the_namespace() {
        assert_eq!(
            qualify("reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(qualify("Echo.Internal", "x"), "echo.internal");
    }
}
