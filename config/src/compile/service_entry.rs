//! ServiceEntry -> backends, keyed by (host, port).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::Origin;
use crate::error::ConfigError;
use crate::model::{Backend, BackendProtocol, Endpoints, UpstreamPolicy};
use crate::raw::service_entry::ServiceEntrySpec;

/// The backends found so far, with their (host, port) index.
pub(crate) struct Backends {
    list: Vec<Backend>,
    index: HashMap<(String, u16), usize>,
}

impl Backends {
    /// The backend for a route destination, by host and optional port. A host no ServiceEntry
    /// declares becomes a DNS backend (as a Kubernetes service name would be resolved).
    pub fn resolve(&mut self, host: &str, port: Option<u16>) -> Result<(usize, bool), String> {
        let port = match port {
            Some(p) => p,
            None => {
                let mut ports = self
                    .index
                    .keys()
                    .filter(|(h, _)| h == host)
                    .map(|(_, p)| *p);
                match (ports.next(), ports.next()) {
                    (Some(p), None) => p,
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "`{host}` has several ports: name one in port.number"
                        ))
                    }
                    (None, _) => {
                        return Err(format!(
                            "no ServiceEntry declares `{host}`: port.number is required"
                        ))
                    }
                }
            }
        };
        if let Some(&i) = self.index.get(&(host.to_string(), port)) {
            return Ok((i, false));
        }
        let i = self.list.len();
        self.list.push(Backend {
            host: host.to_string(),
            port,
            protocol: BackendProtocol::Http1,
            endpoints: Endpoints::Dns(vec![(host.to_string(), port)]),
            source: None,
            policy: UpstreamPolicy::default(),
        });
        self.index.insert((host.to_string(), port), i);
        Ok((i, true))
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

pub(crate) fn compile(
    found: &[(Origin, ServiceEntrySpec)],
    errors: &mut Vec<ConfigError>,
) -> Backends {
    let mut backends = Backends {
        list: Vec::new(),
        index: HashMap::new(),
    };
    for (o, spec) in found {
        compile_one(o, spec, &mut backends, errors);
    }
    backends
}

fn compile_one(
    o: &Origin,
    spec: &ServiceEntrySpec,
    out: &mut Backends,
    errors: &mut Vec<ConfigError>,
) {
    o.unsupported(
        errors,
        "spec",
        &[
            ("addresses", spec.addresses.is_some()),
            ("workloadSelector", spec.workload_selector.is_some()),
            ("exportTo", spec.export_to.is_some()),
            ("subjectAltNames", spec.subject_alt_names.is_some()),
        ],
    );
    if spec.hosts.is_empty() {
        errors.push(o.error("spec.hosts", "at least one host is required"));
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
    if !dns && spec.endpoints.is_empty() {
        errors.push(o.error(
            "spec.endpoints",
            "resolution STATIC needs at least one endpoint",
        ));
    }
    for (i, e) in spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        o.unsupported(
            errors,
            &path,
            &[
                ("weight", e.weight.is_some()),
                ("network", e.network.is_some()),
                ("locality", e.locality.is_some()),
                ("serviceAccount", e.service_account.is_some()),
            ],
        );
        match &e.address {
            None => errors.push(o.error(format!("{path}.address"), "required")),
            Some(a) if !dns && a.parse::<IpAddr>().is_err() => errors.push(o.error(
                format!("{path}.address"),
                format!("`{a}` is not an IP address, as resolution STATIC needs"),
            )),
            Some(_) => {}
        }
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
        for (p, port) in spec.ports.iter().enumerate() {
            let path = format!("spec.ports[{p}]");
            let Ok(number) = u16::try_from(port.number) else {
                errors.push(o.error(format!("{path}.number"), "ports must be 1 to 65535"));
                continue;
            };
            let protocol = match port
                .protocol
                .as_deref()
                .map(str::to_ascii_uppercase)
                .as_deref()
            {
                Some("HTTP") => BackendProtocol::Http1,
                Some("HTTP2") | Some("GRPC") => BackendProtocol::Http2,
                Some(other) => {
                    errors.push(o.error(
                        format!("{path}.protocol"),
                        format!(
                            "`{other}` is not implemented: meshgate proxies HTTP, HTTP2 and GRPC"
                        ),
                    ));
                    continue;
                }
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
            let endpoints = if dns {
                let list: Vec<_> = if spec.endpoints.is_empty() {
                    u16::try_from(target)
                        .ok()
                        .map(|t| (host.clone(), t))
                        .into_iter()
                        .collect()
                } else {
                    spec.endpoints
                        .iter()
                        .filter_map(|e| Some((e.address.clone()?, endpoint_port(&e.ports)?)))
                        .collect()
                };
                Endpoints::Dns(list)
            } else {
                Endpoints::Static(
                    spec.endpoints
                        .iter()
                        .filter_map(|e| {
                            let ip: IpAddr = e.address.as_ref()?.parse().ok()?;
                            Some(SocketAddr::new(ip, endpoint_port(&e.ports)?))
                        })
                        .collect(),
                )
            };
            let key = (host.clone(), number);
            if out.index.contains_key(&key) {
                errors.push(o.error(
                    format!("spec.hosts[{h}]"),
                    format!("{host}:{number} is already declared by another ServiceEntry"),
                ));
                continue;
            }
            out.index.insert(key, out.list.len());
            out.list.push(Backend {
                host: host.clone(),
                port: number,
                protocol,
                endpoints,
                source: Some(o.resource()),
                policy: UpstreamPolicy::default(),
            });
        }
    }
    if spec.ports.is_empty() {
        errors.push(o.error("spec.ports", "at least one port is required"));
    }
}
