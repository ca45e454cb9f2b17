//! The service registry: ServiceEntries (with their endpoints, or the WorkloadEntries their
//! `workloadSelector` picks) and Kubernetes Services declare (host, port)s; routes then name
//! backends as Istio names clusters, `outbound|port|subset|host`, made here when first named.
//!
//! A backend's endpoints are its service's, narrowed to a subset's labels when a route names
//! one; its policy is the DestinationRules' for that host, port and subset. A ServiceEntry port
//! meshgate cannot proxy (TCP, or HTTPS it would have to pass through) is declared all the
//! same: only a route to it is an error, so one port never refuses the rest of the entry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::destination_rule::Rules;
use super::export::{ExportTo, Seen};
use super::Origin;
use crate::error::ConfigError;
use crate::model::{Backend, BackendProtocol, Endpoints, UpstreamTls};
use crate::raw::service_entry::{ServiceEntrySpec, WorkloadEntry};
use crate::raw::Labels;
use crate::warning::{Code, Warning};

/// What a declared port carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortProtocol {
    Http(BackendProtocol),
    /// `HTTPS` or `TLS`: TLS from the client, which meshgate can only originate, not pass.
    Tls,
    /// Anything else (`TCP`, `MONGO`, `UDP`, ...), by its name.
    Other(String),
}

/// The namespace of a resource named `Kind ns/name` (`""` when it is not so named).
pub(crate) fn source_namespace(source: &str) -> &str {
    let name = source.split_once(' ').map_or("", |(_, n)| n);
    name.split_once('/').map_or("", |(ns, _)| ns)
}

/// A (host, port) a ServiceEntry or Service declares.
#[derive(Debug)]
pub(crate) struct Declared {
    /// `ServiceEntry ns/name` or `Service ns/name`.
    pub source: String,
    pub protocol: PortProtocol,
    endpoints: DeclaredEndpoints,
}

impl Declared {
    /// The namespace of the declaring resource (`source` is `Kind ns/name`).
    pub fn namespace(&self) -> &str {
        source_namespace(&self.source)
    }

    /// The protocol as the resource named it.
    pub fn protocol_name(&self) -> &str {
        match &self.protocol {
            PortProtocol::Http(BackendProtocol::Http1) => "HTTP",
            PortProtocol::Http(BackendProtocol::Http2) => "HTTP2",
            PortProtocol::Http(BackendProtocol::Opaque) => "TCP",
            PortProtocol::Tls => "HTTPS/TLS",
            PortProtocol::Other(name) => name,
        }
    }
}

/// The endpoints of a declared port, with the labels subsets select by.
#[derive(Debug)]
enum DeclaredEndpoints {
    Static(Vec<(SocketAddr, Labels)>),
    Dns(Vec<((String, u16), Labels)>),
    /// A Kubernetes Service: its name, resolved by DNS; which pods stand behind it, and their
    /// labels, meshgate cannot know.
    Service((String, u16)),
}

/// The backends made so far, and the ports declared.
pub(crate) struct Backends {
    list: Vec<Backend>,
    index: HashMap<(String, u16, Option<String>), usize>,
    declared: Vec<((String, u16), Declared)>,
    declared_index: HashMap<(String, u16), usize>,
    /// The routes being resolved are the outbound listener's alone: a host nothing declares
    /// may leave out its port, which is then the request's.
    request_port: bool,
}

/// A route destination, resolved.
pub(crate) struct Resolved {
    pub backend: usize,
    /// Nothing declares the host: it is resolved by DNS when a request comes.
    pub implicit: bool,
    /// The subset is defined by no DestinationRule: requests get 503 (`NC`), as in Istio.
    pub undefined_subset: bool,
}

impl Backends {
    pub fn new() -> Self {
        Self {
            list: Vec::new(),
            index: HashMap::new(),
            declared: Vec::new(),
            declared_index: HashMap::new(),
            request_port: false,
        }
    }

    /// Whether the routes resolved from now on are the outbound listener's alone (a
    /// VirtualService bound to `mesh` only).
    pub fn outbound_only(&mut self, yes: bool) {
        self.request_port = yes;
    }

    /// The backend for a route destination. An omitted port is the service's only port. A
    /// host nothing declares becomes a DNS backend (as a Kubernetes service name would be
    /// resolved), and needs its port, but on the outbound listener alone, where it is the
    /// request's (port 0 here), as a sidecar's listener for that port would send it on.
    pub fn resolve(
        &mut self,
        host: &str,
        port: Option<u16>,
        subset: Option<&str>,
        rules: &Rules,
    ) -> Result<Resolved, String> {
        let port = match port {
            Some(p) => p,
            None if self.request_port && !self.declared.iter().any(|((h, _), _)| h == host) => 0,
            None => self.only_port(host)?,
        };
        let key = (host.to_string(), port, subset.map(str::to_string));
        let declared = self
            .declared_index
            .get(&(host.to_string(), port))
            .and_then(|&i| self.declared.get(i))
            .map(|(_, d)| d);
        let namespace = declared.map(|d| d.namespace());
        let undefined_subset = subset.is_some_and(|s| rules.subset(host, namespace, s).is_none());
        if let Some(&i) = self.index.get(&key) {
            return Ok(Resolved {
                backend: i,
                implicit: declared.is_none(),
                undefined_subset,
            });
        }
        let policy = rules.policy(host, namespace, port, subset);
        if let (Some(_), Some(rule)) = (policy.proxy_protocol, &policy.source) {
            return Err(format!(
                "{rule} sets trafficPolicy.proxyProtocol for `{host}`: meshgate \
                 sends a PROXY header on the connections of tcp and tls routes, not on the \
                 pooled connections of http routes"
            ));
        }
        let protocol = match declared.map(|d| &d.protocol) {
            // `h2UpgradePolicy: UPGRADE` upgrades HTTP ports (as Istio: not HTTPS or TLS).
            None | Some(PortProtocol::Http(BackendProtocol::Http1)) if policy.h2_upgrade => {
                BackendProtocol::Http2
            }
            None => BackendProtocol::Http1,
            Some(PortProtocol::Http(p)) => *p,
            Some(PortProtocol::Tls) => {
                if matches!(policy.tls, UpstreamTls::Disable) {
                    return Err(format!(
                        "port {port} of `{host}` is HTTPS/TLS: meshgate does not pass TLS \
                         through; originate it with a DestinationRule `tls.mode: SIMPLE` (or \
                         MUTUAL, ISTIO_MUTUAL) on this port, or route to an HTTP port"
                    ));
                }
                BackendProtocol::Http1
            }
            Some(PortProtocol::Other(name)) => {
                return Err(format!(
                    "port {port} of `{host}` is {name}: meshgate proxies HTTP, HTTP2 and GRPC \
                     with http routes; forward its bytes with a `tcp` route on a Gateway server \
                     with protocol TCP or TLS"
                ))
            }
        };
        let endpoints = endpoints(host, port, subset, declared, rules)?;
        let i = self.list.len();
        self.list.push(Backend {
            host: host.to_string(),
            port,
            subset: subset.map(str::to_string),
            protocol,
            endpoints,
            source: declared.map(|d| d.source.clone()),
            policy,
        });
        self.index.insert(key, i);
        Ok(Resolved {
            backend: i,
            implicit: declared.is_none(),
            undefined_subset,
        })
    }

    /// The backend an `AUTO_PASSTHROUGH` listener forwards Istio's SNI for (host, port,
    /// subset) to: the declared endpoints, connected to as they are (the caller's TLS passes
    /// through, so no DestinationRule TLS applies); `Err` when they cannot be known.
    pub fn passthrough(
        &mut self,
        host: &str,
        port: u16,
        subset: Option<&str>,
        rules: &Rules,
    ) -> Result<usize, String> {
        let backend = self.opaque(host, port, subset, rules, false)?;
        // As Istio's SNI-DNAT clusters: no PROXY header either.
        if let Some(b) = self.list.get_mut(backend) {
            b.policy.proxy_protocol = None;
        }
        Ok(backend)
    }

    /// The backend a `PASSTHROUGH` server's `tls` route forwards to: as for `tcp` routes, but
    /// the client's TLS passes through, so no DestinationRule TLS applies.
    pub fn tls_route(
        &mut self,
        host: &str,
        port: u16,
        subset: Option<&str>,
        rules: &Rules,
    ) -> Result<usize, String> {
        self.opaque(host, port, subset, rules, false)
    }

    /// The backend a `tcp` route forwards bytes to: the declared endpoints (or DNS), with the
    /// DestinationRule's TLS originated as for HTTP routes. Any port protocol will do.
    pub fn tcp(
        &mut self,
        host: &str,
        port: u16,
        subset: Option<&str>,
        rules: &Rules,
    ) -> Result<usize, String> {
        self.opaque(host, port, subset, rules, true)
    }

    fn opaque(
        &mut self,
        host: &str,
        port: u16,
        subset: Option<&str>,
        rules: &Rules,
        originate: bool,
    ) -> Result<usize, String> {
        let declared = self
            .declared_index
            .get(&(host.to_string(), port))
            .and_then(|&i| self.declared.get(i))
            .map(|(_, d)| d);
        let endpoints = endpoints(host, port, subset, declared, rules)?;
        let mut policy = rules.policy(host, declared.map(|d| d.namespace()), port, subset);
        let index = self.list.len();
        if !originate {
            policy.tls = UpstreamTls::Disable;
        }
        self.list.push(Backend {
            host: host.to_string(),
            port,
            subset: subset.map(str::to_string),
            protocol: BackendProtocol::Opaque,
            endpoints,
            source: declared.map(|d| d.source.clone()),
            policy,
        });
        Ok(index)
    }

    /// Every declared (host, port), whatever its protocol, with the namespace of the resource
    /// that declares it.
    pub fn declared_all(&self) -> Vec<(String, u16, String)> {
        self.declared
            .iter()
            .map(|((h, p), d)| (h.clone(), *p, d.namespace().to_string()))
            .collect()
    }

    /// The port of a service that declares exactly one.
    pub fn only_port(&self, host: &str) -> Result<u16, String> {
        let ports: Vec<u16> = self
            .declared
            .iter()
            .filter(|((h, _), _)| h == host)
            .map(|((_, p), _)| *p)
            .collect();
        match ports.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!(
                "`{host}` has no declared port: add destination.port.number, or a Service or \
                 ServiceEntry that declares `{host}` (on the outbound listener alone, a \
                 VirtualService bound to `mesh` only, the request's port is taken)"
            )),
            many => Err(format!(
                "`{host}` has several ports ({}): name one in destination.port.number",
                many.iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Declares (host, port); a second declaration of one (host, port) is an error.
    pub fn declare(&mut self, host: String, port: u16, declared: Declared) -> Result<(), String> {
        let key = (host, port);
        if let Some((_, d)) = self
            .declared_index
            .get(&key)
            .and_then(|&i| self.declared.get(i))
        {
            return Err(format!(
                "{}:{} is already declared by {}",
                key.0, key.1, d.source
            ));
        }
        self.declared_index.insert(key.clone(), self.declared.len());
        self.declared.push((key, declared));
        Ok(())
    }

    /// Every declared (host, port) that an HTTP route can reach, in declaration order.
    pub fn declared_http(&self) -> impl Iterator<Item = (&str, u16, &Declared)> {
        self.declared
            .iter()
            .filter(|(_, d)| matches!(d.protocol, PortProtocol::Http(_)))
            .map(|((h, p), d)| (h.as_str(), *p, d))
    }

    /// Every declared (host, port) meshgate cannot serve on its own, for `check`.
    pub fn declared_other(&self) -> impl Iterator<Item = (&str, u16, &Declared)> {
        self.declared
            .iter()
            .filter(|(_, d)| !matches!(d.protocol, PortProtocol::Http(_)))
            .map(|((h, p), d)| (h.as_str(), *p, d))
    }

    pub fn into_backends(self) -> Vec<Backend> {
        self.list
    }

    /// Every backend so far.
    pub fn list_mut(&mut self) -> &mut [Backend] {
        &mut self.list
    }

    /// Every backend so far.
    pub fn list(&self) -> &[Backend] {
        &self.list
    }
}

/// The endpoints of backend (host, port, subset): those declared, or the host by DNS, and of
/// a subset with labels, those it selects.
fn endpoints(
    host: &str,
    port: u16,
    subset: Option<&str>,
    declared: Option<&Declared>,
    rules: &Rules,
) -> Result<Endpoints, String> {
    let mut endpoints = match declared.map(|d| &d.endpoints) {
        None => Endpoints::Dns(vec![(host.to_string(), port)]),
        Some(DeclaredEndpoints::Static(list)) => {
            Endpoints::Static(list.iter().map(|(a, _)| *a).collect())
        }
        Some(DeclaredEndpoints::Dns(list)) => {
            Endpoints::Dns(list.iter().map(|(a, _)| a.clone()).collect())
        }
        Some(DeclaredEndpoints::Service(a)) => Endpoints::Dns(vec![a.clone()]),
    };
    if let Some(name) = subset {
        match rules.subset(host, declared.map(|d| d.namespace()), name) {
            None => endpoints = Endpoints::Undefined,
            Some((s, _)) if s.labels.is_empty() => {}
            Some((s, rule)) => {
                endpoints = match declared.map(|d| &d.endpoints) {
                    Some(DeclaredEndpoints::Static(list)) => Endpoints::Static(
                        list.iter()
                            .filter(|(_, l)| selects(&s.labels, l))
                            .map(|(a, _)| *a)
                            .collect(),
                    ),
                    Some(DeclaredEndpoints::Dns(list)) => Endpoints::Dns(
                        list.iter()
                            .filter(|(_, l)| selects(&s.labels, l))
                            .map(|(a, _)| a.clone())
                            .collect(),
                    ),
                    _ => {
                        return Err(format!(
                            "subset `{name}` of {rule} selects endpoints by labels {:?}, but \
                             the endpoints of `{host}` are not known here ({}); declare them \
                             with their labels: a ServiceEntry with `endpoints[].labels`, or \
                             WorkloadEntries its `workloadSelector` picks",
                            s.labels,
                            match declared {
                                Some(d) => format!("{} is resolved by DNS", d.source),
                                None => "no ServiceEntry declares it".to_string(),
                            }
                        ))
                    }
                };
            }
        }
    }
    Ok(endpoints)
}

/// Whether a subset's labels are all among an endpoint's.
fn selects(subset: &Labels, endpoint: &Labels) -> bool {
    subset.iter().all(|(k, v)| endpoint.get(k) == Some(v))
}

/// Applies `MeshGateway.spec.resolve`: a DNS endpoint named there connects to the given
/// address instead.
pub(crate) fn resolve(backends: &mut [Backend], overrides: &[((String, u16), SocketAddr)]) {
    for b in backends {
        if let Endpoints::Dns(list) = &mut b.endpoints {
            for (host, port) in list.iter_mut() {
                let key = (host.to_ascii_lowercase(), *port);
                if let Some((_, address)) = overrides.iter().find(|(k, _)| *k == key) {
                    *host = address.ip().to_string();
                    *port = address.port();
                }
            }
        }
    }
}

/// Declares the ports of every ServiceEntry.
pub(crate) fn compile(
    found: &[(Origin, ServiceEntrySpec)],
    services: &[(Origin, crate::raw::kubernetes::ServiceSpec)],
    workloads: &[(Origin, WorkloadEntry)],
    proxy_namespace: &str,
    backends: &mut Backends,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    // The entries exported to this proxy's namespace, and how it sees each.
    let mut exported: Vec<(&(Origin, ServiceEntrySpec), Seen)> = Vec::new();
    for entry in found {
        let (o, spec) = entry;
        let export = ExportTo::parse(o, spec.export_to.as_deref(), true, errors);
        match export.seen_from(&o.namespace, proxy_namespace) {
            Some(seen) => exported.push((entry, seen)),
            None => warnings.push(export.not_exported(o, proxy_namespace, "declares nothing")),
        }
    }
    let owners = owners(&exported, services);
    for ((o, spec), seen) in exported {
        compile_one(
            (o, spec, seen),
            &owners,
            workloads,
            backends,
            errors,
            warnings,
        );
    }
    for (o, w) in workloads {
        check_endpoint(o, "spec", w, true, errors);
    }
}

/// Who declares a host. Istio keeps one Service per host for a proxy
/// (`appendSidecarServices`): a Kubernetes Service's before any ServiceEntry's; else the
/// first ServiceEntry as the proxy's namespace lists them (`servicesExportedToNamespace`:
/// those private to it, then those exported to it by name, then the public ones, each by
/// `creationTimestamp`, then namespace, as a ServiceEntry's Service is named by its host), and
/// the entries of that namespace merge into it when they agree on resolution, labels and
/// workload selector. Every other declaration of the host is ignored.
enum Owner<'a> {
    /// A Kubernetes Service (`Kind namespace/name`).
    Service(String),
    /// The first ServiceEntry, and how this proxy sees it.
    Entry(&'a Origin, &'a ServiceEntrySpec, Seen),
}

fn owners<'a>(
    found: &[(&'a (Origin, ServiceEntrySpec), Seen)],
    services: &[(Origin, crate::raw::kubernetes::ServiceSpec)],
) -> HashMap<String, Owner<'a>> {
    let mut owners = HashMap::new();
    for (o, _) in services {
        let host = format!("{}.{}.svc.cluster.local", o.name, o.namespace);
        owners
            .entry(host)
            .or_insert_with(|| Owner::Service(o.resource()));
    }
    // Stable: entries created in the same second in one namespace keep the files' order.
    let mut order: Vec<&(&(Origin, ServiceEntrySpec), Seen)> = found.iter().collect();
    order.sort_by_cached_key(|((o, _), seen)| {
        (
            *seen,
            o.created.clone().unwrap_or_default(),
            o.namespace.clone(),
        )
    });
    for ((o, spec), seen) in order {
        for host in &spec.hosts {
            owners
                .entry(host.to_ascii_lowercase())
                .or_insert(Owner::Entry(o, spec, *seen));
        }
    }
    owners
}

/// Why Istio would not merge ServiceEntry `b` into `a`, of one host and namespace
/// (`canMergeServices`).
fn unmergeable(
    a: &ServiceEntrySpec,
    a_origin: &Origin,
    b: &ServiceEntrySpec,
    b_origin: &Origin,
) -> Option<&'static str> {
    let resolution = |s: &ServiceEntrySpec| {
        s.resolution
            .as_deref()
            .unwrap_or("NONE")
            .to_ascii_uppercase()
    };
    let selector = |s: &ServiceEntrySpec| s.workload_selector.as_ref().map(|w| w.labels.clone());
    // As written: `.` and the namespace's name are two values to Istio here.
    let export = |s: &ServiceEntrySpec| ExportTo::written(s.export_to.as_deref());
    if resolution(a) != resolution(b) {
        Some("resolution")
    } else if a_origin.labels != b_origin.labels {
        Some("metadata.labels")
    } else if selector(a) != selector(b) {
        Some("workloadSelector")
    } else if export(a) != export(b) {
        Some("exportTo")
    } else {
        None
    }
}

/// Whether the declaration of `host` by `entry` (seen by this proxy as its `Seen` says) stands,
/// as Istio keeps one Service per host (`Owner`); a warning says why not, or an error when
/// Istio's choice cannot be known.
fn owns(
    entry: (&Origin, &ServiceEntrySpec, Seen),
    host: &str,
    field: &str,
    owners: &HashMap<String, Owner<'_>>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> bool {
    let (o, spec, seen) = entry;
    let ignored = match owners.get(host) {
        Some(Owner::Service(by)) => format!(
            "`{host}` is the host of {by}: Istio keeps a Kubernetes Service over ServiceEntries, \
             so this entry's ports and endpoints for it are ignored"
        ),
        Some(Owner::Entry(first, _, first_seen)) if first.namespace != o.namespace => {
            // Istio's resources always have a creation time; hand-written files may not, and
            // then which of the two Istio would keep is not known. A new file must not take a
            // host from another namespace by leaving it out.
            if *first_seen == seen && (first.created.is_none() || o.created.is_none()) {
                errors.push(o.error(
                    field,
                    format!(
                        "`{host}` is also declared by {} in namespace `{}`: Istio keeps the \
                         older of the two, which cannot be told without \
                         `metadata.creationTimestamp` on both (as `kubectl get -o yaml` gives \
                         it): add it, or declare the host in one namespace",
                        first.resource(),
                        first.namespace
                    ),
                ));
                return false;
            }
            format!(
                "`{host}` is also declared by {} in namespace `{}`, first in Istio's order for \
                 this proxy (private to its namespace, exported to it by name, then public; then \
                 creationTimestamp, then namespace): Istio keeps that one's ports and endpoints, \
                 so this entry's for it are ignored",
                first.resource(),
                first.namespace
            )
        }
        Some(Owner::Entry(first, first_spec, _)) => {
            match unmergeable(first_spec, first, spec, o).filter(|_| !std::ptr::eq(*first, o)) {
                None => return true,
                Some(what) => format!(
                    "`{host}` is also declared by {}, first in Istio's order, with another \
                     `{what}`: Istio merges the ServiceEntries of one host and namespace only \
                     when they agree on resolution, labels, workloadSelector and exportTo, so \
                     this entry's ports and endpoints for it are ignored",
                    first.resource()
                ),
            }
        }
        None => return true,
    };
    warnings.push(o.warn(Code::ServiceEntryHostIgnored, Some(field), ignored));
    false
}

fn compile_one(
    entry: (&Origin, &ServiceEntrySpec, Seen),
    owners: &HashMap<String, Owner<'_>>,
    workloads: &[(Origin, WorkloadEntry)],
    out: &mut Backends,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    let (o, spec, _) = entry;
    o.unsupported(
        errors,
        "spec",
        &[
            ("addresses", spec.addresses.is_some()),
            ("subjectAltNames", spec.subject_alt_names.is_some()),
        ],
    );
    if spec.hosts.is_empty() {
        errors.push(o.error("spec.hosts", "at least one host is required"));
    }
    if spec.ports.is_empty() {
        errors.push(o.error("spec.ports", "at least one port is required"));
    }
    match spec.location.as_deref() {
        None | Some("MESH_EXTERNAL") | Some("MESH_INTERNAL") => {}
        Some(other) => errors.push(o.error(
            "spec.location",
            format!("`{other}` is not MESH_EXTERNAL or MESH_INTERNAL"),
        )),
    }
    let dns = match spec.resolution.as_deref() {
        Some("STATIC") => false,
        Some("DNS") | Some("DNS_ROUND_ROBIN") => true,
        None | Some("NONE") => return errors.push(o.error(
            "spec.resolution",
            "NONE (pass-through to the original destination) is not implemented: use STATIC or DNS",
        )),
        Some(other) => {
            return errors
                .push(o.error("spec.resolution", format!("`{other}` is not STATIC or DNS")))
        }
    };
    // Endpoints: listed, or the WorkloadEntries the selector picks (Istio: one or the other).
    let mut entries: Vec<(&WorkloadEntry, Labels)> = Vec::new();
    if let Some(selector) = &spec.workload_selector {
        if !spec.endpoints.is_empty() {
            errors.push(o.error(
                "spec.workloadSelector",
                "endpoints and workloadSelector are exclusive (Istio refuses both)",
            ));
        }
        for (wo, w) in workloads
            .iter()
            .filter(|(wo, _)| wo.namespace == o.namespace)
        {
            let mut labels = w.labels.clone();
            labels.extend(wo.labels.clone());
            if selects(&selector.labels, &labels) {
                entries.push((w, labels));
            }
        }
    } else {
        for (i, e) in spec.endpoints.iter().enumerate() {
            if check_endpoint(o, &format!("spec.endpoints[{i}]"), e, !dns, errors) {
                entries.push((e, e.labels.clone()));
            }
        }
    }
    if !dns && entries.is_empty() && spec.workload_selector.is_none() {
        errors.push(o.error(
            "spec.endpoints",
            "resolution STATIC needs at least one endpoint",
        ));
    }
    for (h, host) in spec.hosts.iter().enumerate() {
        if host.contains('*') || host.is_empty() {
            errors.push(o.error(
                format!("spec.hosts[{h}]"),
                "wildcard hosts need resolution NONE, which is not implemented",
            ));
            continue;
        }
        let host = host.to_ascii_lowercase();
        if !owns(
            entry,
            &host,
            &format!("spec.hosts[{h}]"),
            owners,
            errors,
            warnings,
        ) {
            continue;
        }
        for (p, port) in spec.ports.iter().enumerate() {
            let path = format!("spec.ports[{p}]");
            let Some(number) = u16::try_from(port.number).ok().filter(|n| *n > 0) else {
                errors.push(o.error(format!("{path}.number"), "ports must be 1 to 65535"));
                continue;
            };
            let protocol = match port
                .protocol
                .as_deref()
                .map(str::to_ascii_uppercase)
                .as_deref()
            {
                Some("HTTP") => PortProtocol::Http(BackendProtocol::Http1),
                Some("HTTP2") | Some("GRPC") => PortProtocol::Http(BackendProtocol::Http2),
                Some("HTTPS") | Some("TLS") => PortProtocol::Tls,
                Some(other) => PortProtocol::Other(other.to_string()),
                None => {
                    errors.push(o.error(format!("{path}.protocol"), "required"));
                    continue;
                }
            };
            let target = port.target_port.unwrap_or(port.number);
            let endpoint_port = |ports: &std::collections::BTreeMap<String, u32>| {
                let named = port.name.as_ref().and_then(|n| ports.get(n)).copied();
                u16::try_from(named.unwrap_or(target)).ok()
            };
            let endpoints = if dns && entries.is_empty() && spec.workload_selector.is_none() {
                // DNS with no endpoints: the host itself, without labels.
                DeclaredEndpoints::Dns(
                    u16::try_from(target)
                        .ok()
                        .map(|t| ((host.clone(), t), Labels::new()))
                        .into_iter()
                        .collect(),
                )
            } else if dns {
                DeclaredEndpoints::Dns(
                    entries
                        .iter()
                        .filter_map(|(e, l)| {
                            Some(((e.address.clone()?, endpoint_port(&e.ports)?), l.clone()))
                        })
                        .collect(),
                )
            } else {
                DeclaredEndpoints::Static(
                    entries
                        .iter()
                        .filter_map(|(e, l)| {
                            let ip: IpAddr = e.address.as_ref()?.parse().ok()?;
                            Some((SocketAddr::new(ip, endpoint_port(&e.ports)?), l.clone()))
                        })
                        .collect(),
                )
            };
            let declared = Declared {
                source: o.resource(),
                protocol,
                endpoints,
            };
            if let Err(e) = out.declare(host.clone(), number, declared) {
                errors.push(o.error(format!("spec.hosts[{h}]"), e));
            }
        }
    }
}

/// Checks an endpoint (or a WorkloadEntry's spec); whether it is usable.
fn check_endpoint(
    o: &Origin,
    path: &str,
    e: &WorkloadEntry,
    static_address: bool,
    errors: &mut Vec<ConfigError>,
) -> bool {
    let before = errors.len();
    o.unsupported(
        errors,
        path,
        &[
            ("weight", e.weight.is_some()),
            ("network", e.network.is_some()),
            ("locality", e.locality.is_some()),
            ("serviceAccount", e.service_account.is_some()),
        ],
    );
    match &e.address {
        None => errors.push(o.error(format!("{path}.address"), "required")),
        Some(a) if static_address && a.parse::<IpAddr>().is_err() => errors.push(o.error(
            format!("{path}.address"),
            format!("`{a}` is not an IP address, as resolution STATIC needs"),
        )),
        Some(_) => {}
    }
    errors.len() == before
}

/// Declares the ports of a Kubernetes Service: `name.namespace.svc.cluster.local`, resolved by
/// DNS (or its `externalName`), each port's protocol from `appProtocol` or the port name's
/// prefix, as Istio reads them.
pub(crate) fn service(
    o: &Origin,
    spec: &crate::raw::kubernetes::ServiceSpec,
    backends: &mut Backends,
    errors: &mut Vec<ConfigError>,
) {
    let host = format!("{}.{}.svc.cluster.local", o.name, o.namespace);
    let target = match (spec.kind.as_deref(), &spec.external_name) {
        (Some("ExternalName"), Some(name)) => name.to_ascii_lowercase(),
        (Some("ExternalName"), None) => {
            return errors.push(o.error("spec.externalName", "required with type ExternalName"))
        }
        _ => host.clone(),
    };
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let Some(number) = u16::try_from(p.port).ok().filter(|n| *n > 0) else {
            errors.push(o.error(format!("{path}.port"), "ports must be 1 to 65535"));
            continue;
        };
        let declared = Declared {
            source: o.resource(),
            protocol: kubernetes_protocol(p),
            endpoints: DeclaredEndpoints::Service((target.clone(), number)),
        };
        if let Err(e) = backends.declare(host.clone(), number, declared) {
            errors.push(o.error(path, e));
        }
    }
}

/// Istio's `ConvertProtocol`: UDP is UDP; else `appProtocol`, or the port name up to its first
/// `-`, names the protocol. A name Istio does not know is sniffed by Istio; meshgate treats it
/// as HTTP/1.1.
fn kubernetes_protocol(p: &crate::raw::kubernetes::ServicePort) -> PortProtocol {
    if p.protocol
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("TCP"))
    {
        return PortProtocol::Other(p.protocol.clone().unwrap_or_default().to_ascii_uppercase());
    }
    let name = p
        .app_protocol
        .as_deref()
        .or(p.name.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase();
    if name == "kubernetes.io/h2c" {
        return PortProtocol::Http(BackendProtocol::Http2);
    }
    if name.starts_with("grpc-web") {
        return PortProtocol::Http(BackendProtocol::Http1);
    }
    let prefix = name.split('-').next().unwrap_or("");
    match prefix {
        "http" | "http_proxy" | "kubernetes.io/ws" => PortProtocol::Http(BackendProtocol::Http1),
        "http2" | "grpc" => PortProtocol::Http(BackendProtocol::Http2),
        "https" | "tls" | "kubernetes.io/wss" => PortProtocol::Tls,
        "tcp" | "udp" | "mongo" | "redis" | "mysql" => {
            PortProtocol::Other(prefix.to_ascii_uppercase())
        }
        _ if matches!(p.port, 25 | 53 | 3306 | 27017) => PortProtocol::Other("TCP".into()),
        _ => PortProtocol::Http(BackendProtocol::Http1),
    }
}
