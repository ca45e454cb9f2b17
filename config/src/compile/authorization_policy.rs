//! AuthorizationPolicies -> the policies that apply to this proxy.
//!
//! A policy applies when it is in the root namespace or in the MeshGateway's namespace, and its
//! `selector.matchLabels` (if any) are among the MeshGateway's labels, as Istio selects
//! workloads. Trust domains follow Istio's bundle rules: a principal (or `trustDomains` value)
//! whose trust domain is the local one, an alias, or `cluster.local` is expanded to every
//! member of the bundle (the trust domain and its aliases, plus `cluster.local` while
//! `clusterLocalIsLocal` is on — meshgate's migration rule; off, this is exactly Istio's
//! bundle). Namespaces match whatever the trust domain.

use http::HeaderName;

use super::Origin;
use crate::error::ConfigError;
use crate::model::authz::{
    Cidr, Condition, ConditionKey, Operation, Policies, Policy, Rule, Source, ValueMatch, Values,
};
use crate::model::TrustSettings;
use crate::raw::authorization_policy as raw;
use crate::raw::Labels;

/// What decides whether a policy applies.
pub(crate) struct Workload<'a> {
    pub namespace: &'a str,
    pub root_namespace: &'a str,
    pub labels: &'a Labels,
}

pub(crate) fn compile(
    found: &[(Origin, raw::AuthorizationPolicySpec)],
    workload: Option<&Workload<'_>>,
    trust: Option<&TrustSettings>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Policies {
    let mut policies = Policies::default();
    let bundle: Vec<String> = trust.map(bundle).unwrap_or_default();
    for (o, spec) in found {
        o.unsupported(
            errors,
            "spec",
            &[
                ("provider", spec.provider.is_some()),
                ("targetRef", spec.target_ref.is_some()),
                ("targetRefs", spec.target_refs.is_some()),
            ],
        );
        let action = match spec.action.as_deref() {
            None | Some("ALLOW") => Action::Allow,
            Some("DENY") => Action::Deny,
            Some("AUDIT") => Action::Audit,
            Some("CUSTOM") => {
                errors.push(o.error(
                    "spec.action",
                    "CUSTOM (an external authorizer) is not implemented by meshgate",
                ));
                continue;
            }
            Some(other) => {
                errors.push(o.error(
                    "spec.action",
                    format!("`{other}` is not ALLOW, DENY or AUDIT"),
                ));
                continue;
            }
        };
        let before = errors.len();
        let rules: Vec<Rule> = spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                rule(
                    o,
                    &format!("spec.rules[{i}]"),
                    r,
                    &bundle,
                    trust,
                    errors,
                    warnings,
                )
            })
            .collect();
        if errors.len() > before {
            continue;
        }
        let Some(w) = workload else { continue };
        let in_scope = o.namespace == w.root_namespace || o.namespace == w.namespace;
        let selected = spec.selector.as_ref().is_none_or(|s| {
            s.match_labels
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
        });
        if !(in_scope && selected) {
            warnings.push(format!(
                "{}: selects no workload of this proxy (namespace {} or root namespace {}, labels {:?})",
                o.resource(),
                w.namespace,
                w.root_namespace,
                w.labels
            ));
            continue;
        }
        let policy = Policy {
            name: o.resource(),
            rules,
        };
        match action {
            Action::Allow => policies.allow.push(policy),
            Action::Deny => policies.deny.push(policy),
            Action::Audit => policies.audit.push(policy),
        }
    }
    policies
}

enum Action {
    Allow,
    Deny,
    Audit,
}

/// The local trust domain, its aliases, and `cluster.local` when it counts as local.
fn bundle(trust: &TrustSettings) -> Vec<String> {
    let mut b = vec![trust.trust_domain.to_string()];
    b.extend(trust.aliases.iter().map(|a| a.to_string()));
    if trust.cluster_local_is_local {
        b.push("cluster.local".into());
    }
    b.dedup();
    b
}

fn rule(
    o: &Origin,
    path: &str,
    r: &raw::Rule,
    bundle: &[String],
    trust: Option<&TrustSettings>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Rule {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| {
            source(
                o,
                &format!("{path}.from[{i}].source"),
                &f.source,
                bundle,
                trust,
                errors,
                warnings,
            )
        })
        .collect();
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, t)| {
                operation(
                    o,
                    &format!("{path}.to[{i}].operation"),
                    &t.operation,
                    errors,
                )
            })
            .collect();
    let when = r
        .when
        .iter()
        .enumerate()
        .filter_map(|(i, c)| condition(o, &format!("{path}.when[{i}]"), c, bundle, errors))
        .collect();
    Rule { from, to, when }
}

fn source(
    o: &Origin,
    path: &str,
    s: &raw::Source,
    bundle: &[String],
    trust: Option<&TrustSettings>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Source {
    o.unsupported(
        errors,
        path,
        &[
            ("requestPrincipals", s.request_principals.is_some()),
            ("notRequestPrincipals", s.not_request_principals.is_some()),
            ("remoteIpBlocks", s.remote_ip_blocks.is_some()),
            ("notRemoteIpBlocks", s.not_remote_ip_blocks.is_some()),
            ("serviceAccounts", s.service_accounts.is_some()),
            ("notServiceAccounts", s.not_service_accounts.is_some()),
        ],
    );
    for list in [&s.principals, &s.not_principals].into_iter().flatten() {
        for p in list {
            warn_unreachable(o, path, p, bundle, trust, warnings);
        }
    }
    let blocks = |field: &str, list: &Option<Vec<String>>, errors: &mut Vec<ConfigError>| {
        list.as_ref().map(|l| {
            l.iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let c = Cidr::parse(b);
                    if c.is_none() {
                        errors.push(o.error(
                            format!("{path}.{field}[{i}]"),
                            format!("`{b}` is not an address or CIDR block"),
                        ));
                    }
                    c
                })
                .collect()
        })
    };
    Source {
        principals: s.principals.as_ref().map(|l| principals(l, bundle)),
        not_principals: s.not_principals.as_ref().map(|l| principals(l, bundle)),
        namespaces: s.namespaces.as_ref().map(|l| values(l)),
        not_namespaces: s.not_namespaces.as_ref().map(|l| values(l)),
        trust_domains: s.trust_domains.as_ref().map(|l| trust_domains(l, bundle)),
        not_trust_domains: s
            .not_trust_domains
            .as_ref()
            .map(|l| trust_domains(l, bundle)),
        ip_blocks: blocks("ipBlocks", &s.ip_blocks, errors),
        not_ip_blocks: blocks("notIpBlocks", &s.not_ip_blocks, errors),
    }
}

fn operation(
    o: &Origin,
    path: &str,
    op: &raw::Operation,
    errors: &mut Vec<ConfigError>,
) -> Operation {
    let ports = |field: &str, list: &Option<Vec<String>>, errors: &mut Vec<ConfigError>| {
        list.as_ref().map(|l| {
            l.iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let n = p.parse::<u16>().ok().filter(|n| *n > 0);
                    if n.is_none() {
                        errors.push(o.error(
                            format!("{path}.{field}[{i}]"),
                            format!("`{p}` is not a port"),
                        ));
                    }
                    n
                })
                .collect()
        })
    };
    Operation {
        hosts: op.hosts.as_ref().map(|l| values(l)),
        not_hosts: op.not_hosts.as_ref().map(|l| values(l)),
        ports: ports("ports", &op.ports, errors),
        not_ports: ports("notPorts", &op.not_ports, errors),
        methods: op.methods.as_ref().map(|l| values(l)),
        not_methods: op.not_methods.as_ref().map(|l| values(l)),
        paths: op.paths.as_ref().map(|l| values(l)),
        not_paths: op.not_paths.as_ref().map(|l| values(l)),
    }
}

fn condition(
    o: &Origin,
    path: &str,
    c: &raw::Condition,
    bundle: &[String],
    errors: &mut Vec<ConfigError>,
) -> Option<Condition> {
    let key = match c.key.as_str() {
        "source.principal" => ConditionKey::SourcePrincipal,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.ip" => ConditionKey::SourceIp,
        "destination.port" => ConditionKey::DestinationPort,
        "connection.sni" => ConditionKey::ConnectionSni,
        k => match k
            .strip_prefix("request.headers[")
            .and_then(|h| h.strip_suffix(']'))
        {
            Some(h) => match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(name) => ConditionKey::RequestHeader(name),
                Err(_) => {
                    errors.push(
                        o.error(format!("{path}.key"), format!("`{h}` is not a header name")),
                    );
                    return None;
                }
            },
            None => {
                errors.push(o.error(
                    format!("{path}.key"),
                    format!(
                        "`{k}` is not implemented: meshgate knows source.principal, source.namespace, \
                         source.ip, request.headers[NAME], destination.port and connection.sni"
                    ),
                ));
                return None;
            }
        },
    };
    if c.values.is_none() && c.not_values.is_none() {
        errors.push(o.error(path, "values or notValues is required"));
        return None;
    }
    let convert = |l: &Vec<String>| match key {
        ConditionKey::SourcePrincipal => principals(l, bundle),
        _ => values(l),
    };
    Some(Condition {
        values: c.values.as_ref().map(convert),
        not_values: c.not_values.as_ref().map(convert),
        key,
    })
}

fn values(list: &[String]) -> Values {
    Values(list.iter().map(|v| ValueMatch::parse(v)).collect())
}

/// Istio's `ReplaceTrustDomainAliases`: a principal whose trust domain is in the bundle (or is
/// `cluster.local`) stands for the same workload in every bundle member.
fn principals(list: &[String], bundle: &[String]) -> Values {
    let mut out = Vec::new();
    for p in list {
        match p.split_once('/') {
            Some((td, rest))
                if !td.contains('*')
                    && (bundle.iter().any(|b| b == td) || td == "cluster.local") =>
            {
                for member in bundle {
                    out.push(ValueMatch::parse(&format!("{member}/{rest}")));
                }
            }
            _ => out.push(ValueMatch::parse(p)),
        }
    }
    Values(out)
}

/// A `trustDomains` value that is a bundle member stands for every member.
fn trust_domains(list: &[String], bundle: &[String]) -> Values {
    let mut out = Vec::new();
    for td in list {
        if bundle.iter().any(|b| b == td) {
            out.extend(bundle.iter().map(|b| ValueMatch::Exact(b.clone())));
        } else {
            out.push(ValueMatch::parse(td));
        }
    }
    Values(out)
}

/// `check` warns about a principal whose trust domain can never connect: outside the bundle
/// and outside the handshake allow-list.
fn warn_unreachable(
    o: &Origin,
    path: &str,
    principal: &str,
    bundle: &[String],
    trust: Option<&TrustSettings>,
    warnings: &mut Vec<String>,
) {
    let Some((td, _)) = principal.split_once('/') else {
        return;
    };
    let Some(allowed) = trust.and_then(|t| t.allowed_trust_domains.as_ref()) else {
        return;
    };
    if td.contains('*') || bundle.iter().any(|b| b == td) || td == "cluster.local" {
        return;
    }
    if !allowed.iter().any(|a| a.as_str() == td) {
        warnings.push(format!(
            "{}: {path}: principal `{principal}` is of trust domain `{td}`, which the handshake does not accept (spec.trust.trustDomains): it can never match",
            o.resource()
        ));
    }
}
