//! DestinationRules -> the upstream policy of each backend, and the subsets routes name.
//!
//! For a backend (host, port, subset), the DestinationRule with the most specific matching
//! `host` applies (exact, then the longest `*.suffix`, then `*`; the first declared on a tie; a
//! short host is a Kubernetes service in the rule's namespace). Its policy is merged as Istio's
//! `MergeTrafficPolicy` does: a `portLevelSettings` entry for the port replaces the top-level
//! policy entirely (omitted blocks take their defaults, they are not inherited); a subset's
//! `trafficPolicy` then replaces each block it sets (`tls`, `loadBalancer`, `connectionPool`),
//! and a subset's own `portLevelSettings` entry for the port replaces them all.

use std::time::Duration;

use super::virtual_service::{parse_duration, qualify};
use super::{relative_to, Origin};
use crate::error::ConfigError;
use crate::model::{
    ClientTls, HostMatcher, LoadBalancer, TcpKeepalive, UpstreamPolicy, UpstreamTls,
};
use crate::raw::destination_rule::{self as raw, DestinationRuleSpec};
use crate::raw::Labels;

/// The blocks of a traffic policy that one level sets.
#[derive(Debug, Clone, Default)]
struct Blocks {
    tls: Option<UpstreamTls>,
    load_balancer: Option<LoadBalancer>,
    pool: Option<Pool>,
}

#[derive(Debug, Clone, Default)]
struct Pool {
    connect_timeout: Option<Duration>,
    tcp_keepalive: Option<TcpKeepalive>,
    idle_timeout: Option<Duration>,
    max_connections: Option<u32>,
    max_requests_per_connection: Option<u32>,
    max_pending_requests: Option<u32>,
    max_requests: Option<u32>,
    max_retries: Option<u32>,
}

/// A `trafficPolicy`: its blocks, and the per-port replacements.
#[derive(Debug, Default)]
struct Policy {
    top: Blocks,
    ports: Vec<(u16, Blocks)>,
}

impl Policy {
    /// The blocks for `port`: its `portLevelSettings` entry, whole, or the top level.
    fn for_port(&self, port: u16) -> &Blocks {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(&self.top, |(_, b)| b)
    }
}

/// One subset of a DestinationRule.
#[derive(Debug)]
pub(crate) struct Subset {
    pub labels: Labels,
    name: String,
    policy: Option<Policy>,
}

/// Compiled DestinationRules.
pub(crate) struct Rules(Vec<Rule>);

struct Rule {
    source: String,
    host: HostMatcher,
    policy: Policy,
    subsets: Vec<Subset>,
}

pub(crate) fn compile(
    found: &[(Origin, DestinationRuleSpec)],
    errors: &mut Vec<ConfigError>,
) -> Rules {
    let mut rules = Vec::new();
    for (o, spec) in found {
        o.unsupported(
            errors,
            "spec",
            &[
                ("exportTo", spec.export_to.is_some()),
                ("workloadSelector", spec.workload_selector.is_some()),
            ],
        );
        let host = if spec.host == "*" {
            spec.host.clone()
        } else {
            qualify(&spec.host, &o.namespace)
        };
        let Some(host) = HostMatcher::parse(&host) else {
            errors.push(o.error("spec.host", format!("`{}` is not a host", spec.host)));
            continue;
        };
        let policy = spec
            .traffic_policy
            .as_ref()
            .map(|tp| traffic_policy(o, "spec.trafficPolicy", tp, errors))
            .unwrap_or_default();
        let mut subsets: Vec<Subset> = Vec::new();
        for (i, s) in spec.subsets.iter().enumerate() {
            let path = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                errors.push(o.error(format!("{path}.name"), "required"));
                continue;
            }
            if subsets.iter().any(|other| other.name == s.name) {
                errors.push(o.error(
                    format!("{path}.name"),
                    format!("subset `{}` is defined twice", s.name),
                ));
                continue;
            }
            subsets.push(Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
                policy: s
                    .traffic_policy
                    .as_ref()
                    .map(|tp| traffic_policy(o, &format!("{path}.trafficPolicy"), tp, errors)),
            });
        }
        rules.push(Rule {
            source: o.resource(),
            host,
            policy,
            subsets,
        });
    }
    Rules(rules)
}

/// One `trafficPolicy`, top level or a subset's.
fn traffic_policy(
    o: &Origin,
    path: &str,
    tp: &raw::TrafficPolicy,
    errors: &mut Vec<ConfigError>,
) -> Policy {
    o.unsupported(
        errors,
        path,
        &[
            ("outlierDetection", tp.outlier_detection.is_some()),
            ("tunnel", tp.tunnel.is_some()),
            ("proxyProtocol", tp.proxy_protocol.is_some()),
            ("retryBudget", tp.retry_budget.is_some()),
        ],
    );
    let top = patch(
        o,
        path,
        tp.tls.as_ref(),
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        errors,
    );
    let mut ports = Vec::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let path = format!("{path}.portLevelSettings[{i}]");
        o.unsupported(
            errors,
            &path,
            &[("outlierDetection", p.outlier_detection.is_some())],
        );
        let Some(port) = p
            .port
            .as_ref()
            .and_then(|p| u16::try_from(p.number).ok())
            .filter(|p| *p > 0)
        else {
            errors.push(o.error(format!("{path}.port.number"), "required, 1 to 65535"));
            continue;
        };
        let blocks = patch(
            o,
            &path,
            p.tls.as_ref(),
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            errors,
        );
        ports.push((port, blocks));
    }
    Policy { top, ports }
}

impl Rules {
    /// The rule for `host`: the most specific, the first declared on a tie.
    fn rule(&self, host: &str) -> Option<&Rule> {
        self.0
            .iter()
            .filter(|r| r.host.matches(host))
            .fold(None::<&Rule>, |best, r| match best {
                Some(b) if b.host.specificity() >= r.host.specificity() => Some(b),
                _ => Some(r),
            })
    }

    /// The subset `name` of the rule for `host`, with the rule's name; `None` when the rule
    /// (or any rule) does not define it.
    pub fn subset(&self, host: &str, name: &str) -> Option<(&Subset, &str)> {
        let rule = self.rule(host)?;
        let subset = rule.subsets.iter().find(|s| s.name == name)?;
        Some((subset, &rule.source))
    }

    /// The policy of backend (host, port, subset), merged as Istio merges it.
    pub fn policy(&self, host: &str, port: u16, subset: Option<&str>) -> UpstreamPolicy {
        let Some(rule) = self.rule(host) else {
            return UpstreamPolicy::default();
        };
        let mut blocks = rule.policy.for_port(port).clone();
        let subset_policy = subset
            .and_then(|name| rule.subsets.iter().find(|s| s.name == name))
            .and_then(|s| s.policy.as_ref());
        if let Some(sp) = subset_policy {
            match sp.ports.iter().find(|(p, _)| *p == port) {
                // Istio: "port level policies do not inherit".
                Some((_, whole)) => blocks = whole.clone(),
                None => {
                    if sp.top.tls.is_some() {
                        blocks.tls = sp.top.tls.clone();
                    }
                    if sp.top.load_balancer.is_some() {
                        blocks.load_balancer = sp.top.load_balancer;
                    }
                    if sp.top.pool.is_some() {
                        blocks.pool = sp.top.pool.clone();
                    }
                }
            }
        }
        let mut policy = UpstreamPolicy {
            source: Some(rule.source.clone()),
            ..UpstreamPolicy::default()
        };
        if let Some(tls) = blocks.tls {
            policy.tls = tls;
        }
        if let Some(lb) = blocks.load_balancer {
            policy.load_balancer = lb;
        }
        if let Some(pool) = blocks.pool {
            if let Some(t) = pool.connect_timeout {
                policy.connect_timeout = t;
            }
            if let Some(k) = pool.tcp_keepalive {
                policy.tcp_keepalive = k;
            }
            if let Some(t) = pool.idle_timeout {
                policy.idle_timeout = t;
            }
            policy.max_connections = pool.max_connections;
            policy.max_requests_per_connection = pool.max_requests_per_connection;
            policy.max_pending_requests = pool.max_pending_requests;
            policy.max_requests = pool.max_requests;
            policy.max_retries = pool.max_retries;
        }
        policy
    }
}

fn patch(
    o: &Origin,
    path: &str,
    tls: Option<&raw::ClientTls>,
    lb: Option<&raw::LoadBalancer>,
    pool: Option<&raw::ConnectionPool>,
    errors: &mut Vec<ConfigError>,
) -> Blocks {
    Blocks {
        tls: tls.and_then(|t| client_tls(o, &format!("{path}.tls"), t, errors)),
        load_balancer: lb.and_then(|lb| {
            let path = format!("{path}.loadBalancer");
            o.unsupported(
                errors,
                &path,
                &[
                    ("consistentHash", lb.consistent_hash.is_some()),
                    ("localityLbSetting", lb.locality_lb_setting.is_some()),
                    ("warmupDurationSecs", lb.warmup_duration_secs.is_some()),
                    ("warmup", lb.warmup.is_some()),
                ],
            );
            match lb.simple.as_deref() {
                Some("ROUND_ROBIN") => Some(LoadBalancer::RoundRobin),
                // Istio: UNSPECIFIED (or no `simple`) is LEAST_REQUEST; LEAST_CONN its old name.
                Some("LEAST_REQUEST") | Some("LEAST_CONN") | Some("UNSPECIFIED") | None => {
                    Some(LoadBalancer::LeastRequest)
                }
                Some("RANDOM") => Some(LoadBalancer::Random),
                Some(other) => {
                    errors.push(o.error(
                        format!("{path}.simple"),
                        format!("`{other}` is not implemented: use ROUND_ROBIN, LEAST_REQUEST or RANDOM"),
                    ));
                    None
                }
            }
        }),
        pool: pool.map(|p| {
            let path = format!("{path}.connectionPool");
            let duration = |field: String, v: &Option<String>, errors: &mut Vec<ConfigError>| {
                v.as_ref().and_then(|t| match parse_duration(t) {
                    Some(d) if !d.is_zero() => Some(d),
                    _ => {
                        errors.push(o.error(field, format!("`{t}` is not a positive duration such as 10s")));
                        None
                    }
                })
            };
            let mut out = Pool::default();
            if let Some(tcp) = &p.tcp {
                o.unsupported(
                    errors,
                    &format!("{path}.tcp"),
                    &[
                        ("maxConnectionDuration", tcp.max_connection_duration.is_some()),
                    ],
                );
                // Istio: http.idleTimeout, else tcp.idleTimeout.
                out.idle_timeout = duration(format!("{path}.tcp.idleTimeout"), &tcp.idle_timeout, errors);
                if let Some(k) = &tcp.tcp_keepalive {
                    let p = format!("{path}.tcp.tcpKeepalive");
                    let mut keepalive = TcpKeepalive::default();
                    if let Some(t) = duration(format!("{p}.time"), &k.time, errors) {
                        keepalive.time = t;
                    }
                    keepalive.interval = duration(format!("{p}.interval"), &k.interval, errors);
                    keepalive.probes = limit(k.probes);
                    out.tcp_keepalive = Some(keepalive);
                }
                out.connect_timeout = duration(format!("{path}.tcp.connectTimeout"), &tcp.connect_timeout, errors);
                out.max_connections = limit(tcp.max_connections);
            }
            if let Some(http) = &p.http {
                o.unsupported(
                    errors,
                    &format!("{path}.http"),
                    &[
                        ("h2UpgradePolicy", http.h2_upgrade_policy.is_some()),
                        ("useClientProtocol", http.use_client_protocol.is_some()),
                        ("maxConcurrentStreams", http.max_concurrent_streams.is_some()),
                    ],
                );
                if let Some(t) = duration(format!("{path}.http.idleTimeout"), &http.idle_timeout, errors) {
                    out.idle_timeout = Some(t);
                }
                out.max_requests_per_connection = limit(http.max_requests_per_connection);
                out.max_pending_requests = limit(http.http1_max_pending_requests);
                out.max_requests = limit(http.http2_max_requests);
                out.max_retries = limit(http.max_retries);
            }
            out
        }),
    }
}

/// Istio's limits: 0 is the field's zero value, which Istio reads as not set (its default,
/// unlimited), not as "none at all".
fn limit(v: Option<u32>) -> Option<u32> {
    v.filter(|n| *n > 0)
}

fn client_tls(
    o: &Origin,
    path: &str,
    t: &raw::ClientTls,
    errors: &mut Vec<ConfigError>,
) -> Option<UpstreamTls> {
    o.unsupported(
        errors,
        path,
        &[
            ("credentialName", t.credential_name.is_some()),
            ("caCrl", t.ca_crl.is_some()),
            ("insecureSkipVerify", t.insecure_skip_verify.is_some()),
        ],
    );
    let file = |v: &Option<String>| v.as_ref().map(|p| relative_to(&o.file, p));
    let settings = ClientTls {
        sni: t.sni.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        ca_certificates: file(&t.ca_certificates),
        client_certificate: file(&t.client_certificate),
        private_key: file(&t.private_key),
    };
    let no_files = |mode: &str, errors: &mut Vec<ConfigError>| {
        for (field, set) in [
            ("clientCertificate", t.client_certificate.is_some()),
            ("privateKey", t.private_key.is_some()),
            ("caCertificates", t.ca_certificates.is_some()),
        ] {
            if set {
                errors.push(o.error(
                    format!("{path}.{field}"),
                    format!("not used with {mode}: ISTIO_MUTUAL uses the MeshGateway identity and bundle"),
                ));
            }
        }
    };
    match t.mode.as_deref() {
        Some("DISABLE") => Some(UpstreamTls::Disable),
        Some("SIMPLE") => Some(UpstreamTls::Simple(settings)),
        Some("MUTUAL") => {
            if t.client_certificate.is_none() || t.private_key.is_none() {
                errors.push(o.error(path, "MUTUAL needs clientCertificate and privateKey"));
                return None;
            }
            Some(UpstreamTls::Mutual(settings))
        }
        Some("ISTIO_MUTUAL") => {
            no_files("ISTIO_MUTUAL", errors);
            Some(UpstreamTls::IstioMutual(settings))
        }
        Some(other) => {
            errors.push(o.error(
                format!("{path}.mode"),
                format!("unknown TLS mode `{other}`"),
            ));
            None
        }
        None => {
            errors.push(o.error(format!("{path}.mode"), "required"));
            None
        }
    }
}
