//! DestinationRules -> the upstream policy of each backend.
//!
//! For a backend (host, port), the DestinationRule with the most specific matching `host`
//! applies (exact, then the longest `*.suffix`, then `*`; the first declared on a tie); its
//! `portLevelSettings` for the port replace `tls`, `loadBalancer` and `connectionPool` of the
//! top-level `trafficPolicy`, each as a whole, as Istio does.

use std::time::Duration;

use super::virtual_service::parse_duration;
use super::{relative_to, Origin};
use crate::error::ConfigError;
use crate::model::{Backend, ClientTls, HostMatcher, LoadBalancer, UpstreamPolicy, UpstreamTls};
use crate::raw::destination_rule::{self as raw, DestinationRuleSpec};

/// The parts of a traffic policy that a level sets.
#[derive(Debug, Clone, Default)]
struct Patch {
    tls: Option<UpstreamTls>,
    load_balancer: Option<LoadBalancer>,
    pool: Option<Pool>,
}

#[derive(Debug, Clone, Default)]
struct Pool {
    connect_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: Option<u32>,
    max_requests_per_connection: Option<u32>,
}

/// Compiled DestinationRules.
pub(crate) struct Rules(Vec<Rule>);

struct Rule {
    source: String,
    host: HostMatcher,
    top: Patch,
    ports: Vec<(u16, Patch)>,
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
                ("subsets", spec.subsets.is_some()),
                ("exportTo", spec.export_to.is_some()),
                ("workloadSelector", spec.workload_selector.is_some()),
            ],
        );
        let Some(host) = HostMatcher::parse(&spec.host) else {
            errors.push(o.error("spec.host", format!("`{}` is not a host", spec.host)));
            continue;
        };
        let mut rule = Rule {
            source: o.resource(),
            host,
            top: Patch::default(),
            ports: Vec::new(),
        };
        if let Some(tp) = &spec.traffic_policy {
            let path = "spec.trafficPolicy";
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
            rule.top = patch(
                o,
                path,
                tp.tls.as_ref(),
                tp.load_balancer.as_ref(),
                tp.connection_pool.as_ref(),
                errors,
            );
            for (i, p) in tp.port_level_settings.iter().enumerate() {
                let path = format!("{path}.portLevelSettings[{i}]");
                o.unsupported(
                    errors,
                    &path,
                    &[("outlierDetection", p.outlier_detection.is_some())],
                );
                let Some(port) = p.port.as_ref().and_then(|p| u16::try_from(p.number).ok()) else {
                    errors.push(o.error(format!("{path}.port.number"), "required, 1 to 65535"));
                    continue;
                };
                let settings = patch(
                    o,
                    &path,
                    p.tls.as_ref(),
                    p.load_balancer.as_ref(),
                    p.connection_pool.as_ref(),
                    errors,
                );
                rule.ports.push((port, settings));
            }
        }
        rules.push(rule);
    }
    Rules(rules)
}

impl Rules {
    /// Sets the policy of every backend from the rule that applies to it.
    pub fn apply(&self, backends: &mut [Backend]) {
        for backend in backends {
            let best = self
                .0
                .iter()
                .filter(|r| r.host.matches(&backend.host))
                .fold(None::<&Rule>, |best, r| match best {
                    Some(b) if b.host.specificity() >= r.host.specificity() => Some(b),
                    _ => Some(r),
                });
            let Some(rule) = best else { continue };
            let mut policy = UpstreamPolicy {
                source: Some(rule.source.clone()),
                ..UpstreamPolicy::default()
            };
            let port = rule
                .ports
                .iter()
                .find(|(p, _)| *p == backend.port)
                .map(|(_, p)| p);
            let pick = |f: fn(&Patch) -> bool| port.filter(|p| f(p)).unwrap_or(&rule.top);
            if let Some(tls) = &pick(|p| p.tls.is_some()).tls {
                policy.tls = tls.clone();
            }
            if let Some(lb) = pick(|p| p.load_balancer.is_some()).load_balancer {
                policy.load_balancer = lb;
            }
            if let Some(pool) = &pick(|p| p.pool.is_some()).pool {
                if let Some(t) = pool.connect_timeout {
                    policy.connect_timeout = t;
                }
                if let Some(t) = pool.idle_timeout {
                    policy.idle_timeout = t;
                }
                policy.max_connections = pool.max_connections;
                policy.max_requests_per_connection = pool.max_requests_per_connection;
            }
            backend.policy = policy;
        }
    }
}

fn patch(
    o: &Origin,
    path: &str,
    tls: Option<&raw::ClientTls>,
    lb: Option<&raw::LoadBalancer>,
    pool: Option<&raw::ConnectionPool>,
    errors: &mut Vec<ConfigError>,
) -> Patch {
    Patch {
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
                Some("ROUND_ROBIN") | Some("UNSPECIFIED") | None => Some(LoadBalancer::RoundRobin),
                Some("LEAST_REQUEST") | Some("LEAST_CONN") => Some(LoadBalancer::LeastRequest),
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
                        ("tcpKeepalive", tcp.tcp_keepalive.is_some()),
                        ("maxConnectionDuration", tcp.max_connection_duration.is_some()),
                        ("idleTimeout", tcp.idle_timeout.is_some()),
                    ],
                );
                out.connect_timeout = duration(format!("{path}.tcp.connectTimeout"), &tcp.connect_timeout, errors);
                out.max_connections = positive(o, format!("{path}.tcp.maxConnections"), tcp.max_connections, errors);
            }
            if let Some(http) = &p.http {
                o.unsupported(
                    errors,
                    &format!("{path}.http"),
                    &[
                        ("http1MaxPendingRequests", http.http1_max_pending_requests.is_some()),
                        ("http2MaxRequests", http.http2_max_requests.is_some()),
                        ("maxRetries", http.max_retries.is_some()),
                        ("h2UpgradePolicy", http.h2_upgrade_policy.is_some()),
                        ("useClientProtocol", http.use_client_protocol.is_some()),
                        ("maxConcurrentStreams", http.max_concurrent_streams.is_some()),
                    ],
                );
                out.idle_timeout = duration(format!("{path}.http.idleTimeout"), &http.idle_timeout, errors);
                out.max_requests_per_connection = positive(
                    o,
                    format!("{path}.http.maxRequestsPerConnection"),
                    http.max_requests_per_connection,
                    errors,
                );
            }
            out
        }),
    }
}

/// Istio's limits are positive; 0 would stop all traffic.
fn positive(
    o: &Origin,
    field: String,
    v: Option<u32>,
    errors: &mut Vec<ConfigError>,
) -> Option<u32> {
    match v {
        Some(0) => {
            errors.push(o.error(field, "must be at least 1"));
            None
        }
        other => other,
    }
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
