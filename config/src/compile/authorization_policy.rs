//! AuthorizationPolicies -> the policies that apply to this proxy.
//!
//! A policy applies when it is in the root namespace or in the MeshGateway's namespace, and its
//! `selector.matchLabels` (if any) are among the MeshGateway's labels, as Istio selects
//! workloads. Trust domains follow Istio's bundle rules: a principal (or `trustDomains` value)
//! whose trust domain is the local one, an alias, or `cluster.local` is expanded to every
//! member of the bundle (the trust domain and its aliases, plus `cluster.local` while
//! `clusterLocalIsLocal` is on — meshgate's migration rule; off, this is exactly Istio's
//! bundle). Namespaces match whatever the trust domain.
//!
//! Every value is parsed here, once: addresses, ports, methods, header names, hosts, SNI
//! patterns, principals, trust domains, service accounts and path templates. A value that
//! can never match a request (a malformed CIDR, a port `80a`, a principal with `*` in its
//! middle, a path the normalizer would rewrite) is an error naming its field, because in a
//! DENY rule it would silently deny nothing.

use http::HeaderName;

use super::Origin;
use crate::error::ConfigError;
use crate::model::authz::{
    is_template_char, Cidr, Condition, ConditionKey, ConditionValues, Operation, PathMatch,
    PathTemplate, Policies, Policy, Rule, ServiceAccount, Source, TemplateSegment, ValueMatch,
    Values,
};
use crate::model::path::PathNormalization;
use crate::model::TrustSettings;
use crate::raw::authorization_policy as raw;
use crate::raw::Labels;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::warning::{Code, Warning};

/// What decides whether a policy applies.
pub(crate) struct Workload<'a> {
    pub namespace: &'a str,
    pub root_namespace: &'a str,
    pub labels: &'a Labels,
}

impl Workload<'_> {
    /// Whether a policy-like resource in `o`'s namespace with `selector` applies here, as Istio
    /// decides for a workload: in the root namespace or the workload's, with every selector
    /// label among the workload's.
    pub(crate) fn selects(&self, o: &Origin, selector: Option<&Labels>) -> bool {
        let in_scope = o.namespace == self.root_namespace || o.namespace == self.namespace;
        in_scope && selector.is_none_or(|s| s.iter().all(|(k, v)| self.labels.get(k) == Some(v)))
    }
}

/// The annotation that makes a policy a trial: evaluated and logged, never enforced.
const DRY_RUN: &str = "istio.io/dry-run";

pub(crate) fn compile(
    found: &[(Origin, raw::AuthorizationPolicySpec)],
    workload: Option<&Workload<'_>>,
    trust: Option<&TrustSettings>,
    paths: &PathNormalization,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Policies {
    let mut policies = Policies::default();
    let bundle: Vec<String> = trust.map(bundle).unwrap_or_default();
    for (o, spec) in found {
        let before = errors.len();
        let mut cx = Context {
            o,
            bundle: &bundle,
            trust,
            paths,
            errors,
            warnings,
        };
        let Some((action, dry_run)) = cx.action(spec) else {
            continue;
        };
        let rules: Vec<Rule> = spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| cx.rule(&format!("spec.rules[{i}]"), r))
            .collect();
        if let Some(selector) = &spec.selector {
            for (k, v) in &selector.match_labels {
                if k.contains('*') || v.contains('*') {
                    cx.error(
                        format!("spec.selector.matchLabels.{k}"),
                        "a `*` in a selector label matches nothing: labels are compared exactly",
                    );
                }
            }
        }
        if errors.len() > before {
            continue;
        }
        let Some(w) = workload else { continue };
        if !w.selects(o, spec.selector.as_ref().map(|s| &s.match_labels)) {
            warnings.push(o.warn(
                Code::PolicyNotApplied,
                None,
                format!(
                    "selects no workload of this proxy (namespace {} or root namespace {}, \
                     labels {:?})",
                    w.namespace, w.root_namespace, w.labels
                ),
            ));
            continue;
        }
        let policy = Policy {
            name: o.resource(),
            rules,
        };
        let list = match (action, dry_run) {
            (Action::Allow, false) => &mut policies.allow,
            (Action::Deny, false) => &mut policies.deny,
            (Action::Audit, _) => &mut policies.audit,
            (Action::Allow, true) => &mut policies.dry_run.allow,
            (Action::Deny, true) => &mut policies.dry_run.deny,
        };
        list.push(policy);
    }
    policies
}

#[derive(Clone, Copy)]
enum Action {
    Allow,
    Deny,
    Audit,
}

/// One policy being compiled: where it came from and where its problems go.
struct Context<'a> {
    o: &'a Origin,
    bundle: &'a [String],
    trust: Option<&'a TrustSettings>,
    paths: &'a PathNormalization,
    errors: &'a mut Vec<ConfigError>,
    warnings: &'a mut Vec<Warning>,
}

/// What the values of a string field are made of, to refuse those that cannot match.
#[derive(Clone, Copy)]
enum Kind {
    Principal,
    Namespace,
    TrustDomain,
    Host,
    Method,
    Sni,
    HeaderValue,
}

impl Context<'_> {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(self.o.error(field, message));
    }

    /// The action, and whether the policy is a dry run; `None` after an error.
    fn action(&mut self, spec: &raw::AuthorizationPolicySpec) -> Option<(Action, bool)> {
        let before = self.errors.len();
        self.o.unsupported(
            self.errors,
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
                self.error(
                    "spec.action",
                    "CUSTOM (an external authorizer) is not implemented by meshgate",
                );
                return None;
            }
            Some(other) => {
                self.error(
                    "spec.action",
                    format!("`{other}` is not ALLOW, DENY or AUDIT"),
                );
                return None;
            }
        };
        if matches!(action, Action::Deny) && spec.rules.as_ref().is_none_or(Vec::is_empty) {
            self.error(
                "spec.rules",
                "a DENY policy needs rules (Istio refuses one without)",
            );
        }
        let dry_run = match self.o.annotations.get(DRY_RUN).map(String::as_str) {
            None => false,
            // Go's strconv.ParseBool, which Istio uses.
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
            Some(other) => {
                self.error(
                    format!("metadata.annotations.{DRY_RUN}"),
                    format!("`{other}` is not true or false"),
                );
                false
            }
        };
        if dry_run && matches!(action, Action::Audit) {
            self.error(
                format!("metadata.annotations.{DRY_RUN}"),
                "dry-run applies to ALLOW and DENY policies only, as in Istio",
            );
        }
        (self.errors.len() == before).then_some((action, dry_run))
    }

    fn rule(&mut self, path: &str, r: &raw::Rule) -> Rule {
        if r.from.as_ref().is_some_and(Vec::is_empty) {
            self.error(format!("{path}.from"), "empty: remove it, or name a source");
        }
        if r.to.as_ref().is_some_and(Vec::is_empty) {
            self.error(
                format!("{path}.to"),
                "empty: remove it, or name an operation",
            );
        }
        let from = r
            .from
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, f)| self.source(&format!("{path}.from[{i}].source"), &f.source))
            .collect();
        let to =
            r.to.iter()
                .flatten()
                .enumerate()
                .map(|(i, t)| self.operation(&format!("{path}.to[{i}].operation"), &t.operation))
                .collect();
        let when = r
            .when
            .iter()
            .enumerate()
            .filter_map(|(i, c)| self.condition(&format!("{path}.when[{i}]"), c))
            .collect();
        Rule { from, to, when }
    }

    fn source(&mut self, path: &str, s: &raw::Source) -> Source {
        self.o.unsupported(
            self.errors,
            path,
            &[
                ("requestPrincipals", s.request_principals.is_some()),
                ("notRequestPrincipals", s.not_request_principals.is_some()),
            ],
        );
        let accounts = [&s.service_accounts, &s.not_service_accounts];
        let others = [
            &s.principals,
            &s.not_principals,
            &s.namespaces,
            &s.not_namespaces,
        ];
        if accounts.iter().any(|l| is_set(l)) && others.iter().any(|l| is_set(l)) {
            self.error(
                path,
                "serviceAccounts cannot be set with principals or namespaces (Istio refuses it)",
            );
        }
        for list in [&s.principals, &s.not_principals].into_iter().flatten() {
            for p in list {
                self.warn_unreachable(path, p);
            }
        }
        let source = Source {
            principals: self.strings(path, "principals", &s.principals, Kind::Principal),
            not_principals: self.strings(path, "notPrincipals", &s.not_principals, Kind::Principal),
            namespaces: self.strings(path, "namespaces", &s.namespaces, Kind::Namespace),
            not_namespaces: self.strings(path, "notNamespaces", &s.not_namespaces, Kind::Namespace),
            trust_domains: self.strings(path, "trustDomains", &s.trust_domains, Kind::TrustDomain),
            not_trust_domains: self.strings(
                path,
                "notTrustDomains",
                &s.not_trust_domains,
                Kind::TrustDomain,
            ),
            service_accounts: self.accounts(path, "serviceAccounts", &s.service_accounts),
            not_service_accounts: self.accounts(
                path,
                "notServiceAccounts",
                &s.not_service_accounts,
            ),
            ip_blocks: self.cidrs(path, "ipBlocks", &s.ip_blocks),
            not_ip_blocks: self.cidrs(path, "notIpBlocks", &s.not_ip_blocks),
            remote_ip_blocks: self.cidrs(path, "remoteIpBlocks", &s.remote_ip_blocks),
            not_remote_ip_blocks: self.cidrs(path, "notRemoteIpBlocks", &s.not_remote_ip_blocks),
        };
        let empty = source.principals.is_none()
            && source.not_principals.is_none()
            && source.namespaces.is_none()
            && source.not_namespaces.is_none()
            && source.trust_domains.is_none()
            && source.not_trust_domains.is_none()
            && source.service_accounts.is_none()
            && source.not_service_accounts.is_none()
            && source.ip_blocks.is_none()
            && source.not_ip_blocks.is_none()
            && source.remote_ip_blocks.is_none()
            && source.not_remote_ip_blocks.is_none()
            && s.request_principals.is_none()
            && s.not_request_principals.is_none();
        if empty {
            self.error(
                path,
                "an empty source: Istio refuses it; name at least one field",
            );
        }
        source
    }

    fn operation(&mut self, path: &str, op: &raw::Operation) -> Operation {
        let operation = Operation {
            hosts: self.strings(path, "hosts", &op.hosts, Kind::Host),
            not_hosts: self.strings(path, "notHosts", &op.not_hosts, Kind::Host),
            ports: self.ports(path, "ports", &op.ports),
            not_ports: self.ports(path, "notPorts", &op.not_ports),
            methods: self.strings(path, "methods", &op.methods, Kind::Method),
            not_methods: self.strings(path, "notMethods", &op.not_methods, Kind::Method),
            paths: self.paths(path, "paths", &op.paths),
            not_paths: self.paths(path, "notPaths", &op.not_paths),
        };
        let empty = operation.hosts.is_none()
            && operation.not_hosts.is_none()
            && operation.ports.is_none()
            && operation.not_ports.is_none()
            && operation.methods.is_none()
            && operation.not_methods.is_none()
            && operation.paths.is_none()
            && operation.not_paths.is_none();
        if empty {
            self.error(
                path,
                "an empty operation: Istio refuses it; name at least one field",
            );
        }
        operation
    }

    fn condition(&mut self, path: &str, c: &raw::Condition) -> Option<Condition> {
        let key = self.condition_key(path, &c.key)?;
        if !is_set(&c.values) && !is_set(&c.not_values) {
            self.error(path, "values or notValues is required");
            return None;
        }
        let before = self.errors.len();
        let mut convert = |field: &str, list: &Option<Vec<String>>| {
            let list = list.as_ref().filter(|l| !l.is_empty())?;
            let values = match &key {
                ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                    ConditionValues::Addresses(self.cidrs(path, field, &Some(list.clone()))?)
                }
                ConditionKey::DestinationPort => {
                    ConditionValues::Ports(self.ports(path, field, &Some(list.clone()))?)
                }
                ConditionKey::SourceServiceAccount => ConditionValues::ServiceAccounts(
                    self.accounts(path, field, &Some(list.clone()))?,
                ),
                ConditionKey::SourcePrincipal => ConditionValues::Strings(self.strings(
                    path,
                    field,
                    &Some(list.clone()),
                    Kind::Principal,
                )?),
                ConditionKey::SourceNamespace => ConditionValues::Strings(self.strings(
                    path,
                    field,
                    &Some(list.clone()),
                    Kind::Namespace,
                )?),
                ConditionKey::ConnectionSni => ConditionValues::Strings(self.strings(
                    path,
                    field,
                    &Some(list.clone()),
                    Kind::Sni,
                )?),
                ConditionKey::RequestHeader(_) => ConditionValues::Strings(self.strings(
                    path,
                    field,
                    &Some(list.clone()),
                    Kind::HeaderValue,
                )?),
            };
            Some(values)
        };
        let values = convert("values", &c.values);
        let not_values = convert("notValues", &c.not_values);
        (self.errors.len() == before).then_some(Condition {
            key,
            values,
            not_values,
        })
    }

    fn condition_key(&mut self, path: &str, key: &str) -> Option<ConditionKey> {
        let field = format!("{path}.key");
        Some(match key {
            "source.principal" => ConditionKey::SourcePrincipal,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.serviceAccount" => ConditionKey::SourceServiceAccount,
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "connection.sni" => ConditionKey::ConnectionSni,
            k if k.starts_with("request.auth.") => {
                self.error(
                    field,
                    format!("`{k}` needs JWT authentication (RequestAuthentication), which meshgate does not implement"),
                );
                return None;
            }
            k if UNSUPPORTED_BY_ISTIO.iter().any(|d| k.starts_with(d)) => {
                self.error(field, format!("`{k}` is not a key Istio supports"));
                return None;
            }
            k => match k
                .strip_prefix("request.headers[")
                .and_then(|h| h.strip_suffix(']'))
            {
                Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(name) if !h.is_empty() => ConditionKey::RequestHeader(name),
                    _ => {
                        self.error(field, format!("`{h}` is not a header name"));
                        return None;
                    }
                },
                None => {
                    self.error(
                        field,
                        format!(
                            "`{k}` is not implemented: meshgate knows source.principal, \
                             source.namespace, source.serviceAccount, source.ip, remote.ip, \
                             destination.ip, destination.port, request.headers[NAME] and \
                             connection.sni"
                        ),
                    );
                    return None;
                }
            },
        })
    }

    /// A string field: each value checked for what its kind can be, principals and trust
    /// domains expanded over the bundle. An empty list is no constraint, as in Istio (proto3).
    fn strings(
        &mut self,
        path: &str,
        field: &str,
        list: &Option<Vec<String>>,
        kind: Kind,
    ) -> Option<Values> {
        let list = list.as_ref().filter(|l| !l.is_empty())?;
        let mut out = Vec::new();
        for (i, value) in list.iter().enumerate() {
            let at = format!("{path}.{field}[{i}]");
            if let Err(why) = self.check(kind, value) {
                self.error(at, format!("`{value}` {why}"));
                continue;
            }
            match kind {
                Kind::Principal => self.expand_principal(value, &mut out),
                Kind::TrustDomain if self.bundle.iter().any(|b| b == value) => {
                    out.extend(self.bundle.iter().map(|b| ValueMatch::Exact(b.clone())))
                }
                _ => out.push(ValueMatch::parse(value)),
            }
        }
        Some(Values(out))
    }

    /// Why `value` can never match a request's value of this kind, if it cannot.
    fn check(&mut self, kind: Kind, value: &str) -> Result<(), String> {
        if value.is_empty() {
            return Err("is empty: Istio refuses empty values".into());
        }
        let m = ValueMatch::parse(value);
        let text = m.text();
        if !matches!(kind, Kind::HeaderValue) && text.contains('*') {
            return Err(
                "has a `*` that is neither its first nor its last character: Istio matches it \
                 literally, and no request carries one"
                    .into(),
            );
        }
        let chars = |allowed: &dyn Fn(char) -> bool, what: &str| match text
            .chars()
            .find(|c| !allowed(*c))
        {
            Some(c) => Err(format!("has `{c}`, which {what} never contains")),
            None => Ok(()),
        };
        let segment = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        match kind {
            Kind::Principal => {
                if value.starts_with("spiffe://") {
                    return Err(
                        "starts with spiffe://: a principal is the SPIFFE ID without it, \
                         `trust-domain/ns/<namespace>/sa/<account>`"
                            .into(),
                    );
                }
                chars(&|c| segment(c) || c == '/', "a SPIFFE ID")?;
                if let ValueMatch::Exact(p) = &m {
                    SpiffeId::parse(&format!("spiffe://{p}"))
                        .map_err(|e| format!("is not a principal (trust-domain/path): {e}"))?;
                }
                Ok(())
            }
            Kind::Namespace => chars(&segment, "a SPIFFE ID's namespace"),
            Kind::TrustDomain => match &m {
                ValueMatch::Exact(td) => TrustDomain::new(td)
                    .map(|_| ())
                    .map_err(|e| format!("is not a trust domain: {e}")),
                _ => chars(
                    &|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
                    },
                    "a trust domain",
                ),
            },
            Kind::Host => chars(
                &|c| segment(c) || matches!(c, ':' | '[' | ']'),
                "an authority",
            ),
            Kind::Sni => chars(&segment, "a TLS server name"),
            Kind::Method => {
                chars(
                    &|c| c.is_ascii_alphanumeric() || "!#$%&'+-.^_`|~".contains(c),
                    "an HTTP method",
                )?;
                let upper = value.to_ascii_uppercase();
                if upper != value && STANDARD_METHODS.contains(&upper.as_str()) {
                    let w = self.o.warn(
                        Code::PolicyValueNeverMatches,
                        None,
                        format!(
                            "method `{value}` is compared case-sensitively, as in Istio: it \
                             does not match `{upper}`"
                        ),
                    );
                    self.warnings.push(w);
                }
                Ok(())
            }
            Kind::HeaderValue => Ok(()),
        }
    }

    /// Istio's `ReplaceTrustDomainAliases`: a principal whose trust domain is in the bundle
    /// (or is `cluster.local`) stands for the same workload in every bundle member.
    fn expand_principal(&self, p: &str, out: &mut Vec<ValueMatch>) {
        match p.split_once('/') {
            Some((td, rest))
                if !td.contains('*')
                    && (self.bundle.iter().any(|b| b == td) || td == "cluster.local") =>
            {
                for member in self.bundle {
                    out.push(ValueMatch::parse(&format!("{member}/{rest}")));
                }
            }
            _ => out.push(ValueMatch::parse(p)),
        }
    }

    fn cidrs(&mut self, path: &str, field: &str, list: &Option<Vec<String>>) -> Option<Vec<Cidr>> {
        let list = list.as_ref().filter(|l| !l.is_empty())?;
        let mut out = Vec::new();
        for (i, b) in list.iter().enumerate() {
            match Cidr::parse(b) {
                Some(c) => out.push(c),
                None => self.error(
                    format!("{path}.{field}[{i}]"),
                    format!("`{b}` is not an address or CIDR block"),
                ),
            }
        }
        Some(out)
    }

    fn ports(&mut self, path: &str, field: &str, list: &Option<Vec<String>>) -> Option<Vec<u16>> {
        let list = list.as_ref().filter(|l| !l.is_empty())?;
        let mut out = Vec::new();
        for (i, p) in list.iter().enumerate() {
            match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => out.push(n),
                _ => self.error(
                    format!("{path}.{field}[{i}]"),
                    format!("`{p}` is not a port (1 to 65535)"),
                ),
            }
        }
        Some(out)
    }

    /// `serviceAccounts`: `ns/sa`, or `sa` in the policy's namespace; no wildcard (Istio).
    fn accounts(
        &mut self,
        path: &str,
        field: &str,
        list: &Option<Vec<String>>,
    ) -> Option<Vec<ServiceAccount>> {
        let list = list.as_ref().filter(|l| !l.is_empty())?;
        if list.len() > MAX_SERVICE_ACCOUNTS {
            self.error(
                format!("{path}.{field}"),
                format!("at most {MAX_SERVICE_ACCOUNTS} service accounts (Istio's limit)"),
            );
        }
        let mut out = Vec::new();
        let segment = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        for (i, v) in list.iter().enumerate() {
            let (namespace, name) = v.split_once('/').unwrap_or((&self.o.namespace, v));
            if v.contains('*') {
                self.error(
                    format!("{path}.{field}[{i}]"),
                    format!("`{v}`: service accounts take no wildcard (Istio)"),
                );
            } else if v.len() > 320 || !segment(namespace) || !segment(name) {
                self.error(
                    format!("{path}.{field}[{i}]"),
                    format!("`{v}` is not `<namespace>/<service-account>` or `<service-account>`"),
                );
            } else {
                out.push(ServiceAccount {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                });
            }
        }
        Some(out)
    }

    /// `paths`: Istio's exact, `prefix*`, `*suffix`, `*`, or a path template with `{*}` and
    /// `{**}` segments. Requests are matched on their normalized path, so a value the
    /// normalizer would rewrite can never match.
    fn paths(
        &mut self,
        path: &str,
        field: &str,
        list: &Option<Vec<String>>,
    ) -> Option<Vec<PathMatch>> {
        let list = list.as_ref().filter(|l| !l.is_empty())?;
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            match self.path_match(v) {
                Ok(m) => out.push(m),
                Err(why) => self.error(format!("{path}.{field}[{i}]"), format!("`{v}` {why}")),
            }
        }
        Some(out)
    }

    fn path_match(&self, v: &str) -> Result<PathMatch, String> {
        if v.is_empty() {
            return Err("is empty: Istio refuses empty values".into());
        }
        if v.contains('{') || v.contains('}') {
            return template(v).map(PathMatch::Template);
        }
        let m = match ValueMatch::parse(v) {
            ValueMatch::Any => return Ok(PathMatch::Any),
            ValueMatch::Suffix(s) => PathMatch::Suffix(s),
            ValueMatch::Prefix(p) => PathMatch::Prefix(p),
            ValueMatch::Exact(e) => PathMatch::Exact(e),
        };
        let text = match &m {
            PathMatch::Exact(t) | PathMatch::Prefix(t) | PathMatch::Suffix(t) => t,
            // Returned above already.
            PathMatch::Any | PathMatch::Template(_) => return Ok(m),
        };
        if text.contains('*') {
            return Err(
                "has a `*` inside: Istio matches it literally; use a path template ({*} for one \
                 segment, {**} for any number)"
                    .into(),
            );
        }
        if text.contains('?') || text.contains('#') {
            return Err("holds a query or fragment: paths are matched without them".into());
        }
        if !matches!(m, PathMatch::Suffix(_)) && !text.starts_with('/') {
            return Err("does not start with `/`: no request path can match it".into());
        }
        if matches!(m, PathMatch::Exact(_)) {
            if let Ok(normalized) = self.paths.apply(text) {
                if normalized != text.as_str() {
                    return Err(format!(
                        "is never seen: paths are normalized before policies see them, and it \
                         becomes `{normalized}`"
                    ));
                }
            }
        }
        Ok(m)
    }

    /// `check` warns about a principal whose trust domain can never connect: outside the
    /// bundle and outside the handshake allow-list.
    fn warn_unreachable(&mut self, path: &str, principal: &str) {
        let Some((td, _)) = principal.split_once('/') else {
            return;
        };
        let Some(allowed) = self.trust.and_then(|t| t.allowed_trust_domains.as_ref()) else {
            return;
        };
        if td.contains('*') || self.bundle.iter().any(|b| b == td) || td == "cluster.local" {
            return;
        }
        if !allowed.iter().any(|a| a.as_str() == td) {
            let w = self.o.warn(
                Code::PolicyValueNeverMatches,
                Some(path),
                format!(
                    "principal `{principal}` is of trust domain `{td}`, which the handshake \
                     does not accept (spec.trust.trustDomains): it can never match"
                ),
            );
            self.warnings.push(w);
        }
    }
}

/// A path template, checked as Istio's `CheckValidPathTemplate` and Envoy's parser do: each
/// segment is `{*}`, `{**}` or literal path characters; no operator after `{**}`; no `{`/`}`
/// inside a literal; a trailing `/` is an empty last segment.
fn template(v: &str) -> Result<PathTemplate, String> {
    let Some(rest) = v.strip_prefix('/') else {
        return Err("does not start with `/`, as a path template must".into());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    // `split` yields at least one part.
    let last = parts.len().saturating_sub(1);
    let mut segments = Vec::new();
    let mut after_rest = false;
    for (i, part) in parts.iter().enumerate() {
        let segment = match *part {
            "{*}" | "{**}" if after_rest => {
                return Err("has an operator after {**}: {**} must be the last operator".into())
            }
            "{*}" => TemplateSegment::One,
            "{**}" => {
                after_rest = true;
                TemplateSegment::Rest
            }
            p if p.contains('{') || p.contains('}') => {
                return Err(format!(
                    "has segment `{p}`: `{{*}}` and `{{**}}` must stand alone as a segment"
                ))
            }
            "" if i == last => TemplateSegment::Literal(String::new()),
            "" => return Err("has an empty segment (`//`)".into()),
            p if !p.bytes().all(is_template_char) => {
                return Err(format!(
                    "has segment `{p}` with characters a path template does not allow"
                ))
            }
            p => TemplateSegment::Literal(p.to_string()),
        };
        segments.push(segment);
    }
    Ok(PathTemplate::new(segments))
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

fn is_set(list: &Option<Vec<String>>) -> bool {
    list.as_ref().is_some_and(|l| !l.is_empty())
}

/// `when` keys Istio itself refuses.
const UNSUPPORTED_BY_ISTIO: &[&str] = &[
    "destination.labels",
    "destination.name",
    "destination.namespace",
    "destination.user",
];

/// Istio's limit on `serviceAccounts` values.
const MAX_SERVICE_ACCOUNTS: usize = 16;

/// Methods whose lowercase spelling is almost surely a typo.
const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
