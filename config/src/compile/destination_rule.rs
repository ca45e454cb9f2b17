//! DestinationRules -> the upstream policy of each backend, and the subsets routes name.
//!
//! A backend's DestinationRule is chosen as Istio's `PushContext.destinationRule` chooses it:
//! among the rules of the proxy's namespace exported to it (`exportTo` empty, `*`, `.` or the
//! namespace; in the root namespace, only those exported to it alone), then those of the
//! service's (the namespace of the ServiceEntry or Service that declares the host), then
//! those of the root namespace, each exported to the proxy's namespace, the most
//! specific matching `host` of the first namespace that has one (exact, then the longest
//! `*.suffix`, then `*`; a short host is a Kubernetes service in the rule's namespace). A rule
//! of another namespace does not apply, as in Istio; a Kubernetes service host is in the
//! namespace its name says; any other host nothing declares (resolved by DNS, which Istio does
//! not do) takes the most specific rule of any namespace after those.
//!
//! DestinationRules of one namespace naming one host are merged as Istio merges them, in its
//! order (`istio_order`): the subsets of each, a later rule's subset of a name already defined
//! ignored, and the first top-level `trafficPolicy` (`check` reports what is ignored, MG0117).
//!
//! A rule with a `workloadSelector` applies only in its own namespace, to the workloads it
//! selects (Istio's `SidecarScope.DestinationRule`): here, when that is the proxy's namespace
//! and its `matchLabels` are among the MeshGateway's labels; otherwise it applies to nothing
//! (MG0111). Istio orders such rules before the others, keeps them private to their namespace,
//! and a selecting rule of a host applies in place of the rules without a selector: it merges
//! only with rules of the same selector, and with rules without one whose `exportTo` lists `.`
//! (Istio's `mergeDestinationRule` with `EnableEnhancedDestinationRuleMerge`).
//!
//! The chosen rule's policy is merged as Istio's `MergeTrafficPolicy` does: a `portLevelSettings` entry for the port replaces the top-level
//! policy entirely (omitted blocks take their defaults, they are not inherited); a subset's
//! `trafficPolicy` then replaces each block it sets (`tls`, `loadBalancer`, `connectionPool`),
//! and a subset's own `portLevelSettings` entry for the port replaces them all.

use std::collections::HashMap;
use std::time::Duration;

use super::credential;
use super::export::ExportTo;
use super::virtual_service::{parse_duration, qualify};
use super::{relative_to, Origin};
use crate::error::ConfigError;
use crate::model::{
    ClientTls, ConsistentHash, HashKey, HashTable, HostMatcher, LoadBalancer, OutlierDetection,
    ProxyVersion, SecretRef, TcpKeepalive, UpstreamPolicy, UpstreamTls,
};
use crate::raw::destination_rule::{self as raw, DestinationRuleSpec};
use crate::raw::Labels;
use crate::warning::{Code, Warning};

/// The blocks of a traffic policy that one level sets.
#[derive(Debug, Clone, Default)]
struct Blocks {
    tls: Option<UpstreamTls>,
    load_balancer: Option<LoadBalancer>,
    pool: Option<Pool>,
    outlier: Option<OutlierDetection>,
}

#[derive(Debug, Clone, Default)]
struct Pool {
    connect_timeout: Option<Duration>,
    tcp_keepalive: Option<TcpKeepalive>,
    idle_timeout: Option<Duration>,
    /// `tcp.idleTimeout` alone, which `idle_timeout` merges with `http.idleTimeout`.
    tcp_idle_timeout: Option<Duration>,
    max_connection_duration: Option<Duration>,
    max_connections: Option<u32>,
    max_requests_per_connection: Option<u32>,
    max_concurrent_streams: Option<u32>,
    max_pending_requests: Option<u32>,
    max_requests: Option<u32>,
    max_retries: Option<u32>,
    h2_upgrade: bool,
}

/// A `trafficPolicy`: its blocks, and the per-port replacements.
#[derive(Debug, Clone, Default)]
struct Policy {
    top: Blocks,
    ports: Vec<(u16, Blocks)>,
    /// `proxyProtocol`: top level only, and kept whatever `portLevelSettings` say, as Istio
    /// merges it.
    proxy_protocol: Option<ProxyVersion>,
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
#[derive(Debug, Clone)]
pub(crate) struct Subset {
    pub labels: Labels,
    name: String,
    policy: Option<Policy>,
    /// The DestinationRule that defines it.
    source: String,
}

/// Compiled DestinationRules, indexed by namespace and exact host: every backend looks its
/// rule up, so a scan of all rules per backend would make loading quadratic in a large mesh.
pub(crate) struct Rules {
    rules: Vec<Rule>,
    /// Where this proxy looks first (Istio's `namespaceLocal`): the rules of its own namespace
    /// exported to it; in the root namespace, those exported to it alone
    /// (`rootNamespaceLocal`).
    local: Index,
    /// The rules of each namespace exported to this proxy's (`exportedByNamespace`, less those
    /// exported elsewhere only), looked up in the service's namespace, then the root's.
    exported: HashMap<String, Index>,
    /// Every rule this proxy sees, for hosts nothing declares.
    all: Index,
    root_namespace: String,
}

/// The two lists of rules a proxy looks a rule up in; one DestinationRule may be in both, and
/// the rules of one host are merged in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum View {
    Local,
    Exported,
}

/// Rules indexed by host.
#[derive(Default)]
struct Index {
    /// The rule of each exact (lowercase) host, the first in Istio's order.
    exact: HashMap<Box<str>, usize>,
    /// The `*.suffix` and `*` rules, in declaration order.
    wildcards: Vec<usize>,
}

impl Index {
    fn add(&mut self, i: usize, host: &HostMatcher) {
        match host {
            HostMatcher::Exact(h) => {
                self.exact.entry(h.clone()).or_insert(i);
            }
            _ => self.wildcards.push(i),
        }
    }

    /// The rule for `host` (lowercase): the most specific, the first in Istio's order on a tie.
    fn most_specific<'a>(&self, rules: &'a [Rule], host: &str) -> Option<&'a Rule> {
        // An exact host is more specific than any pattern.
        if let Some(rule) = self.exact.get(host).and_then(|&i| rules.get(i)) {
            return Some(rule);
        }
        self.wildcards
            .iter()
            .filter_map(|&i| rules.get(i))
            .filter(|r| r.host.matches(host))
            .fold(None::<&Rule>, |best, r| match best {
                Some(b) if b.host.specificity() >= r.host.specificity() => Some(b),
                _ => Some(r),
            })
    }
}

/// The DestinationRules of one host in one namespace, merged.
#[derive(Clone)]
struct Rule {
    namespace: String,
    /// The DestinationRule whose top-level `trafficPolicy` applies: the first that has
    /// one, else the first (in Istio's order).
    source: String,
    host: HostMatcher,
    /// The top-level `trafficPolicy`; `None` when no rule of the host has one.
    policy: Option<Policy>,
    subsets: Vec<Subset>,
    /// Its `exportTo` (the rules merged into it have the same).
    export: ExportTo,
    /// Exported to this proxy's namespace. A rule of the exported list that is not still
    /// takes its place there: the most specific host is found first, then its export
    /// checked (`getExportedDestinationRuleFromNamespace`).
    visible: bool,
    /// The `workloadSelector` of a rule that selects this proxy.
    selector: Option<Labels>,
}

/// The DestinationRules `found`, for a proxy in `proxy_namespace` with Istio's root namespace
/// `root_namespace`.
pub(crate) fn compile(
    found: &[(Origin, DestinationRuleSpec)],
    proxy_namespace: &str,
    proxy_labels: &Labels,
    root_namespace: &str,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Rules {
    let mut rules: Vec<(View, Rule)> = Vec::new();
    // The rule of each (list, namespace, host), to merge a later DestinationRule of the three
    // into.
    let mut of_host: HashMap<(View, String, HostMatcher), usize> = HashMap::new();
    // What merging says, once however many lists a rule is merged in.
    let mut merged: Vec<Warning> = Vec::new();
    // Istio merges the rules of a host in its order: those with a workload selector first,
    // then by creation, then by name (`sortConfigBySelectorAndCreationTime`).
    let mut ordered = super::istio_order(found);
    ordered.sort_by_key(|&i| {
        found
            .get(i)
            .is_none_or(|(_, spec)| spec.workload_selector.is_none())
    });
    for (o, spec) in ordered.iter().filter_map(|&i| found.get(i)) {
        let selector = spec.workload_selector.as_ref().map(|s| &s.match_labels);
        let mut export = ExportTo::parse(o, spec.export_to.as_deref(), false, errors);
        // A rule whose selector selects no workload here is still checked, then left out.
        let mut selects_none = false;
        if let Some(selector) = selector {
            let before = errors.len();
            for (k, v) in selector {
                if k.is_empty() || k.contains('*') || v.contains('*') {
                    errors.push(o.error(
                        format!("spec.workloadSelector.matchLabels.{k}"),
                        "an empty key or a `*` matches nothing: labels are compared exactly",
                    ));
                }
            }
            if errors.len() > before {
                continue;
            }
            let selects = o.namespace == proxy_namespace
                && selector.iter().all(|(k, v)| proxy_labels.get(k) == Some(v));
            if !selects {
                warnings.push(o.warn(
                    Code::PolicyNotApplied,
                    Some("spec.workloadSelector"),
                    format!(
                        "selects no workload of this proxy (namespace {proxy_namespace}, labels \
                         {proxy_labels:?}): a DestinationRule with a workloadSelector applies \
                         only to the workloads of its own namespace that it selects"
                    ),
                ));
                selects_none = true;
            } else if spec.export_to.is_some() {
                warnings.push(o.warn(
                    Code::DestinationRuleSettingIgnored,
                    Some("spec.exportTo"),
                    "Istio keeps a DestinationRule with a workloadSelector to its own \
                     namespace, whatever its exportTo",
                ));
            }
            export = ExportTo::written(Some(&[".".to_string()]));
        }
        let ns = o.namespace.as_str();
        let local = export.local_for(ns, proxy_namespace, root_namespace);
        let visible = export.exported_to(ns, proxy_namespace);
        let views: Vec<View> = [
            local.then_some(View::Local),
            (!export.private_only(ns)).then_some(View::Exported),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !local && !visible && !selects_none {
            warnings.push(export.not_exported(o, proxy_namespace, "applies to nothing"));
        }
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
            .map(|tp| traffic_policy(o, "spec.trafficPolicy", tp, errors));
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
                source: o.resource(),
            });
        }
        if selects_none {
            continue;
        }
        if local || visible {
            unverified_servers(o, spec, warnings);
        }
        let rule = Rule {
            namespace: o.namespace.clone(),
            source: o.resource(),
            host,
            policy,
            subsets,
            export,
            visible: true,
            selector: selector.cloned(),
        };
        let mut refused = false;
        for view in views {
            let rule = Rule {
                visible: view == View::Local || visible,
                ..rule.clone()
            };
            let key = (view, rule.namespace.clone(), rule.host.clone());
            // Rules this proxy's own list answers for by a selecting rule: their exported list
            // is never looked at here, so rules kept apart there are no conflict.
            let shadowed = view == View::Exported
                && of_host
                    .get(&(View::Local, rule.namespace.clone(), rule.host.clone()))
                    .and_then(|&i| rules.get(i))
                    .is_some_and(|(_, local)| local.selector.is_some());
            match of_host.get(&key).and_then(|&i| rules.get_mut(i)) {
                // A rule that selects this proxy by its labels (ordered first) applies in place
                // of those without a selector. Those merge into it only with `.` among their
                // `exportTo`, as Istio's set comparison has it; otherwise they stand apart, for
                // the workloads it does not select.
                Some((_, first)) if first.selector.is_some() => {
                    let joins = match &rule.selector {
                        Some(selector) => first.selector.as_ref() == Some(selector),
                        None => rule.export.lists_dot(),
                    };
                    if joins {
                        first.merge(o, rule, &mut merged);
                    } else {
                        merged.push(o.warn(
                            Code::DestinationRuleSettingIgnored,
                            None,
                            format!(
                                "{} has a workloadSelector that selects this proxy: it applies \
                                 to `{}` here in place of this rule",
                                first.source, first.host
                            ),
                        ));
                    }
                }
                // Istio keeps rules of one host with another exportTo apart. Of the exported
                // ones it takes those exported to the proxy's namespace: when only one of the
                // two is, that one stands (still the host's most specific rule there).
                Some((_, first))
                    if first.export != rule.export && first.visible != rule.visible =>
                {
                    if rule.visible {
                        *first = rule;
                    }
                }
                Some((_, first)) if first.export != rule.export && !first.visible => {}
                Some((_, first)) if first.export != rule.export && shadowed => {}
                // Both apply to this proxy, and Istio would apply one of them, which meshgate
                // does not reproduce.
                Some((_, first)) if first.export != rule.export => {
                    if !refused {
                        refused = true;
                        errors.push(o.error(
                            "spec.exportTo",
                            format!(
                                "{} names the same host in this namespace with another \
                                 exportTo: Istio then keeps the two apart and applies one of \
                                 them, which meshgate does not: give them one exportTo",
                                first.source
                            ),
                        ));
                    }
                }
                Some((_, first)) => first.merge(o, rule, &mut merged),
                None => {
                    of_host.insert(key, rules.len());
                    rules.push((view, rule));
                }
            }
        }
    }
    for w in merged {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    let mut local = Index::default();
    let mut exported: HashMap<String, Index> = HashMap::new();
    let mut all = Index::default();
    for (i, (view, r)) in rules.iter().enumerate() {
        match view {
            View::Local => local.add(i, &r.host),
            View::Exported => exported
                .entry(r.namespace.clone())
                .or_default()
                .add(i, &r.host),
        }
        if r.visible {
            all.add(i, &r.host);
        }
    }
    Rules {
        rules: rules.into_iter().map(|(_, r)| r).collect(),
        local,
        exported,
        all,
        root_namespace: root_namespace.to_string(),
    }
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
            ("tunnel", tp.tunnel.is_some()),
            ("retryBudget", tp.retry_budget.is_some()),
        ],
    );
    let proxy_protocol = tp
        .proxy_protocol
        .as_ref()
        .and_then(|pp| match pp.version.as_deref() {
            None | Some("V1") => Some(ProxyVersion::V1),
            Some("V2") => Some(ProxyVersion::V2),
            Some(other) => {
                errors.push(o.error(
                    format!("{path}.proxyProtocol.version"),
                    format!("`{other}` is not a PROXY protocol version: V1 or V2"),
                ));
                None
            }
        });
    let tls = tp
        .tls
        .as_ref()
        .and_then(|t| client_tls(o, &format!("{path}.tls"), t, errors));
    let top = patch(
        o,
        path,
        tls,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        errors,
    );
    let mut ports = Vec::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let path = format!("{path}.portLevelSettings[{i}]");
        let Some(port) = p
            .port
            .as_ref()
            .and_then(|p| u16::try_from(p.number).ok())
            .filter(|p| *p > 0)
        else {
            errors.push(o.error(format!("{path}.port.number"), "required, 1 to 65535"));
            continue;
        };
        let tls = p
            .tls
            .as_ref()
            .and_then(|t| client_tls(o, &format!("{path}.tls"), t, errors));
        let blocks = patch(
            o,
            &path,
            tls,
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            errors,
        );
        ports.push((port, blocks));
    }
    Policy {
        top,
        ports,
        proxy_protocol,
    }
}

impl Rule {
    /// Merges `later`, a DestinationRule of the same host loaded after this one's, as Istio's
    /// `combineSingleDestinationRule`: its subsets of new names join, and its top-level policy
    /// applies when none loaded before has one.
    fn merge(&mut self, o: &Origin, later: Rule, warnings: &mut Vec<Warning>) {
        for (i, subset) in later.subsets.into_iter().enumerate() {
            match self.subsets.iter().find(|s| s.name == subset.name) {
                Some(defined) => warnings.push(o.warn(
                    Code::DestinationRuleSettingIgnored,
                    Some(&format!("spec.subsets[{i}]")),
                    format!(
                        "subset `{}` is also defined by {}, first in Istio's order \
                         (creationTimestamp, then name): that definition applies, as Istio \
                         merges DestinationRules of one host",
                        subset.name, defined.source
                    ),
                )),
                None => self.subsets.push(subset),
            }
        }
        match (&self.policy, later.policy) {
            (None, Some(policy)) => {
                self.policy = Some(policy);
                self.source = later.source;
            }
            (Some(_), Some(_)) => warnings.push(o.warn(
                Code::DestinationRuleSettingIgnored,
                Some("spec.trafficPolicy"),
                format!(
                    "{} sets the top-level trafficPolicy of `{}`, first in Istio's order \
                     (creationTimestamp, then name): that one applies, as Istio merges \
                     DestinationRules of one host",
                    self.source, self.host
                ),
            )),
            (_, None) => {}
        }
    }
}

/// The namespace of a Kubernetes service host (`reviews.bookinfo.svc.cluster.local`).
pub(crate) fn kubernetes_namespace(host: &str) -> Option<&str> {
    let (_, namespace) = host.strip_suffix(".svc.cluster.local")?.rsplit_once('.')?;
    Some(namespace)
}

impl Rules {
    /// The rule for `host`, declared in `service_namespace` (`None`: declared by nothing), as
    /// Istio chooses it for this proxy.
    fn rule(&self, host: &str, service_namespace: Option<&str>) -> Option<&Rule> {
        let host = host.to_ascii_lowercase();
        // A Kubernetes service's name says its namespace, declared or not.
        let service_namespace = service_namespace.or_else(|| kubernetes_namespace(&host));
        let exported = [service_namespace, Some(self.root_namespace.as_str())]
            .into_iter()
            .flatten()
            .filter_map(|ns| self.exported.get(ns));
        // In each list in turn, the most specific rule, if it is exported to this proxy's
        // namespace: one that is not gives nothing there (a less specific one of the same
        // namespace does not stand in for it), and the next list is looked at.
        let scoped = std::iter::once(&self.local)
            .chain(exported)
            .find_map(|index| {
                index
                    .most_specific(&self.rules, &host)
                    .filter(|rule| rule.visible)
            });
        match scoped {
            Some(rule) => Some(rule),
            None if service_namespace.is_none() => self.all.most_specific(&self.rules, &host),
            None => None,
        }
    }

    /// The subset `name` of the rule for `host`, with the name of the DestinationRule that
    /// defines it; `None` when the rule (or any rule) does not define it.
    pub fn subset(
        &self,
        host: &str,
        service_namespace: Option<&str>,
        name: &str,
    ) -> Option<(&Subset, &str)> {
        let rule = self.rule(host, service_namespace)?;
        let subset = rule.subsets.iter().find(|s| s.name == name)?;
        Some((subset, &subset.source))
    }

    /// The names of the subsets the rule for `host` defines.
    pub fn subset_names(&self, host: &str, service_namespace: Option<&str>) -> Vec<&str> {
        self.rule(host, service_namespace)
            .map(|r| r.subsets.iter().map(|s| s.name.as_str()).collect())
            .unwrap_or_default()
    }

    /// The policy of backend (host, port, subset), merged as Istio merges it.
    pub fn policy(
        &self,
        host: &str,
        service_namespace: Option<&str>,
        port: u16,
        subset: Option<&str>,
    ) -> UpstreamPolicy {
        let Some(rule) = self.rule(host, service_namespace) else {
            return UpstreamPolicy::default();
        };
        let mut blocks = rule
            .policy
            .as_ref()
            .map(|p| p.for_port(port).clone())
            .unwrap_or_default();
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
                        blocks.load_balancer = sp.top.load_balancer.clone();
                    }
                    if sp.top.pool.is_some() {
                        blocks.pool = sp.top.pool.clone();
                    }
                    if sp.top.outlier.is_some() {
                        blocks.outlier = sp.top.outlier.clone();
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
            policy.max_connection_duration = pool.max_connection_duration;
            policy.max_connections = pool.max_connections;
            policy.max_requests_per_connection = pool.max_requests_per_connection;
            policy.max_concurrent_streams = pool.max_concurrent_streams;
            policy.max_pending_requests = pool.max_pending_requests;
            policy.max_requests = pool.max_requests;
            policy.max_retries = pool.max_retries;
            policy.h2_upgrade = pool.h2_upgrade;
        }
        policy.outlier_detection = blocks.outlier;
        // A TCP route's limits are the rule's top-level ones alone, whatever the subset or
        // port says, as Istio's `tcp_proxy` reads them.
        let top_pool = rule.policy.as_ref().and_then(|p| p.top.pool.as_ref());
        policy.tcp_max_connection_duration = top_pool.and_then(|p| p.max_connection_duration);
        policy.tcp_idle_timeout = top_pool.and_then(|p| p.tcp_idle_timeout);
        // Istio: the subset's, else the rule's, on every port.
        policy.proxy_protocol = subset_policy
            .and_then(|sp| sp.proxy_protocol)
            .or(rule.policy.as_ref().and_then(|p| p.proxy_protocol));
        policy
    }
}

fn patch(
    o: &Origin,
    path: &str,
    tls: Option<UpstreamTls>,
    lb: Option<&raw::LoadBalancer>,
    pool: Option<&raw::ConnectionPool>,
    outlier: Option<&raw::OutlierDetection>,
    errors: &mut Vec<ConfigError>,
) -> Blocks {
    Blocks {
        outlier: outlier
            .and_then(|od| outlier_detection(o, &format!("{path}.outlierDetection"), od, errors)),
        tls,
        load_balancer: lb.and_then(|lb| {
            let path = format!("{path}.loadBalancer");
            o.unsupported(
                errors,
                &path,
                &[
                    ("localityLbSetting", lb.locality_lb_setting.is_some()),
                    ("warmupDurationSecs", lb.warmup_duration_secs.is_some()),
                    ("warmup", lb.warmup.is_some()),
                ],
            );
            if let Some(ch) = &lb.consistent_hash {
                if lb.simple.is_some() {
                    errors.push(o.error(path.clone(), "simple and consistentHash are exclusive"));
                    return None;
                }
                return consistent_hash(o, &format!("{path}.consistentHash"), ch, errors)
                    .map(LoadBalancer::ConsistentHash);
            }
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
                // Istio's `ValidateDuration`: 1ms or more, in whole milliseconds.
                out.max_connection_duration = tcp.max_connection_duration.as_ref().and_then(|t| {
                    match parse_duration(t) {
                        Some(d) if d >= Duration::from_millis(1) && d.subsec_nanos() % 1_000_000 == 0 => Some(d),
                        _ => {
                            errors.push(o.error(
                                format!("{path}.tcp.maxConnectionDuration"),
                                format!("`{t}` is not a duration of 1ms or more in whole milliseconds"),
                            ));
                            None
                        }
                    }
                });
                // Istio: http.idleTimeout, else tcp.idleTimeout.
                // 0s turns the timeout off, as Istio documents (and its validation takes since
                // istio/istio#55409).
                out.tcp_idle_timeout = match tcp.idle_timeout.as_deref().map(parse_duration) {
                    Some(Some(d)) if d.is_zero() => Some(Duration::ZERO),
                    _ => duration(format!("{path}.tcp.idleTimeout"), &tcp.idle_timeout, errors),
                };
                out.idle_timeout = out.tcp_idle_timeout.map(|d| if d.is_zero() { Duration::MAX } else { d });
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
                    &[("useClientProtocol", http.use_client_protocol.is_some())],
                );
                // Istio: an int32, 0 for Envoy's default (no limit); a negative one is refused.
                out.max_concurrent_streams = match http.max_concurrent_streams {
                    None | Some(0) => None,
                    Some(n) => match u32::try_from(n) {
                        Ok(n) if n <= i32::MAX as u32 => Some(n),
                        _ => {
                            errors.push(o.error(
                                format!("{path}.http.maxConcurrentStreams"),
                                format!("`{n}` is not a number of streams from 0 to 2147483647"),
                            ));
                            None
                        }
                    },
                };
                if let Some(t) = duration(format!("{path}.http.idleTimeout"), &http.idle_timeout, errors) {
                    out.idle_timeout = Some(t);
                }
                out.max_requests_per_connection = limit(http.max_requests_per_connection);
                out.max_pending_requests = limit(http.http1_max_pending_requests);
                out.max_requests = limit(http.http2_max_requests);
                out.max_retries = limit(http.max_retries);
                out.h2_upgrade = match http.h2_upgrade_policy.as_deref() {
                    None | Some("DEFAULT") | Some("DO_NOT_UPGRADE") => false,
                    Some("UPGRADE") => true,
                    Some(other) => {
                        errors.push(o.error(
                            format!("{path}.http.h2UpgradePolicy"),
                            format!("`{other}` is not DEFAULT, DO_NOT_UPGRADE or UPGRADE"),
                        ));
                        false
                    }
                };
            }
            out
        }),
    }
}

/// `consistentHash`: exactly one key; `ringHash` (the default) or `maglev`.
fn consistent_hash(
    o: &Origin,
    path: &str,
    ch: &raw::ConsistentHash,
    errors: &mut Vec<ConfigError>,
) -> Option<ConsistentHash> {
    let before = errors.len();
    let mut keys = Vec::new();
    if let Some(name) = &ch.http_header_name {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => keys.push(HashKey::Header(h)),
            Err(_) => errors.push(o.error(
                format!("{path}.httpHeaderName"),
                format!("`{name}` is not a header name"),
            )),
        }
    }
    if let Some(c) = &ch.http_cookie {
        let p = format!("{path}.httpCookie");
        o.unsupported(errors, &p, &[("attributes", c.attributes.is_some())]);
        let name = c.name.clone().unwrap_or_default();
        if name.is_empty() {
            errors.push(o.error(format!("{p}.name"), "required"));
        }
        let ttl = c.ttl.as_deref().and_then(|t| match parse_duration(t) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => {
                errors.push(o.error(
                    format!("{p}.ttl"),
                    format!("`{t}` is not a duration such as 10s"),
                ));
                None
            }
        });
        keys.push(HashKey::Cookie {
            name,
            path: c.path.clone(),
            ttl,
        });
    }
    if ch.use_source_ip == Some(true) {
        keys.push(HashKey::SourceIp);
    }
    if let Some(q) = &ch.http_query_parameter_name {
        keys.push(HashKey::QueryParameter(q.clone()));
    }
    if keys.len() != 1 {
        errors.push(o.error(
            path,
            "exactly one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName is required",
        ));
    }
    let table = match (&ch.ring_hash, &ch.maglev, ch.minimum_ring_size) {
        (Some(_), Some(_), _) => {
            errors.push(o.error(path, "ringHash and maglev are exclusive"));
            HashTable::Ring { minimum_size: 1024 }
        }
        (None, Some(m), _) => {
            let size = m.table_size.unwrap_or(65537);
            // The bound first: trial division of a 64-bit prime takes 2^32 steps.
            if size > 5_000_011 || !is_prime(size) {
                errors.push(o.error(
                    format!("{path}.maglev.tableSize"),
                    format!("`{size}` is not a prime of at most 5000011"),
                ));
            }
            HashTable::Maglev { size }
        }
        (ring, None, legacy) => {
            let minimum_size = ring
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(legacy)
                .filter(|n| *n > 0)
                .unwrap_or(1024);
            if minimum_size > 8_388_608 {
                errors.push(o.error(
                    format!("{path}.ringHash.minimumRingSize"),
                    "at most 8388608 (Envoy's limit)",
                ));
            }
            HashTable::Ring { minimum_size }
        }
    };
    (errors.len() == before).then(|| ConsistentHash {
        key: keys.remove(0),
        table,
    })
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u64| d.checked_mul(*d).is_some_and(|square| square <= n))
            .all(|d| n.checked_rem(d).is_some_and(|r| r != 0))
}

/// `outlierDetection`, as Istio's `applyOutlierDetection` sets Envoy's detector.
fn outlier_detection(
    o: &Origin,
    path: &str,
    od: &raw::OutlierDetection,
    errors: &mut Vec<ConfigError>,
) -> Option<OutlierDetection> {
    let before = errors.len();
    let mut out = OutlierDetection::default();
    // A wrapper set to 0 turns the check off; left out, Envoy's default stands.
    if let Some(n) = od.consecutive_5xx_errors {
        out.consecutive_5xx = (n > 0).then_some(n);
    }
    if let Some(n) = od.consecutive_gateway_errors {
        out.consecutive_gateway = (n > 0).then_some(n);
    }
    // Deprecated: gateway errors only, as Istio first defined it.
    if let Some(n) = od.consecutive_errors.filter(|n| *n > 0) {
        out.consecutive_gateway = Some(u32::try_from(n).unwrap_or(u32::MAX));
        if od.consecutive_5xx_errors.is_none() {
            out.consecutive_5xx = None;
        }
    }
    if od.split_external_local_origin_errors == Some(true) {
        out.split_local = true;
        out.consecutive_local =
            Some(od.consecutive_local_origin_failures.unwrap_or(5)).filter(|n| *n > 0);
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
    if let Some(d) = duration("interval", &od.interval, errors) {
        out.interval = d;
    }
    if let Some(d) = duration("baseEjectionTime", &od.base_ejection_time, errors) {
        out.base_ejection_time = d;
    }
    let percent = |field: &str, v: Option<i64>, errors: &mut Vec<ConfigError>| match v {
        Some(p) if (0..=100).contains(&p) => Some(p as u32),
        Some(p) => {
            errors.push(o.error(
                format!("{path}.{field}"),
                format!("`{p}` is not a percentage (0 to 100)"),
            ));
            None
        }
        None => None,
    };
    if let Some(p) =
        percent("maxEjectionPercent", od.max_ejection_percent, errors).filter(|p| *p > 0)
    {
        out.max_ejection_percent = p;
    }
    if let Some(p) = percent("minHealthPercent", od.min_health_percent, errors) {
        out.min_health_percent = p;
    }
    (errors.len() == before).then_some(out)
}

/// MG0208 for each `tls` of `spec` that turns off verification of the server.
fn unverified_servers(o: &Origin, spec: &DestinationRuleSpec, warnings: &mut Vec<Warning>) {
    let policies = spec
        .traffic_policy
        .iter()
        .map(|tp| ("spec.trafficPolicy".to_string(), tp))
        .chain(spec.subsets.iter().enumerate().filter_map(|(i, s)| {
            let path = format!("spec.subsets[{i}].trafficPolicy");
            s.traffic_policy.as_ref().map(|tp| (path, tp))
        }));
    for (path, tp) in policies {
        let ports = tp
            .port_level_settings
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("{path}.portLevelSettings[{i}]"), p.tls.as_ref()));
        for (path, tls) in std::iter::once((path.clone(), tp.tls.as_ref())).chain(ports) {
            let originating =
                |t: &raw::ClientTls| matches!(t.mode.as_deref(), Some("SIMPLE" | "MUTUAL"));
            if tls.is_some_and(|t| t.insecure_skip_verify == Some(true) && originating(t)) {
                warnings.push(o.warn(
                    Code::UnverifiedUpstream,
                    Some(&format!("{path}.tls.insecureSkipVerify")),
                    "the server's certificate is not verified: anyone on the path to it can \
                     pose as it and read what is sent",
                ));
            }
        }
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
    let insecure = t.insecure_skip_verify.unwrap_or(false);
    let credential_name = t.credential_name.as_deref().filter(|n| !n.is_empty());
    if insecure {
        // Istio's validation: nothing that verifies the server goes with insecureSkipVerify
        // (and `caCrl`, which Istio would then drop unsaid). Beside credentialName the files
        // are refused as such already.
        let files = credential_name.is_none();
        let verifying: &[(&str, bool)] = match t.mode.as_deref() {
            Some("SIMPLE") => &[
                ("caCertificates", files && t.ca_certificates.is_some()),
                ("caCrl", files && t.ca_crl.is_some()),
                ("credentialName", credential_name.is_some()),
                ("subjectAltNames", !t.subject_alt_names.is_empty()),
            ],
            Some("MUTUAL") => &[
                ("caCertificates", files && t.ca_certificates.is_some()),
                ("caCrl", files && t.ca_crl.is_some()),
                ("subjectAltNames", !t.subject_alt_names.is_empty()),
            ],
            _ => &[],
        };
        for (field, set) in verifying {
            if *set {
                errors.push(o.error(
                    format!("{path}.{field}"),
                    "insecureSkipVerify is true: the server is not verified, so nothing that \
                     verifies it may be given",
                ));
            }
        }
        // Istio drops it on these modes unsaid; meshgate says so.
        let refused = match t.mode.as_deref() {
            Some("ISTIO_MUTUAL") => Some("ISTIO_MUTUAL always verifies the server"),
            Some("DISABLE") => Some("DISABLE originates no TLS"),
            _ => None,
        };
        if let Some(why) = refused {
            errors.push(o.error(
                format!("{path}.insecureSkipVerify"),
                format!("applies to SIMPLE and MUTUAL only: {why}"),
            ));
        }
    }
    let file = |v: &Option<String>| v.as_ref().map(|p| relative_to(&o.file, p));
    let mut settings = ClientTls {
        sni: t.sni.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        ca_certificates: file(&t.ca_certificates),
        ca_crl: file(&t.ca_crl),
        client_certificate: file(&t.client_certificate),
        private_key: file(&t.private_key),
        insecure_skip_verify: insecure,
        secret: None,
    };
    if let (Some(name), Some("SIMPLE" | "MUTUAL")) = (credential_name, t.mode.as_deref()) {
        let before = errors.len();
        secret_ref(o, path, t, name, &mut settings, errors);
        if errors.len() > before {
            return None;
        }
    }
    let no_files = |mode: &str, errors: &mut Vec<ConfigError>| {
        let why =
            format!("not used with {mode}: ISTIO_MUTUAL uses the MeshGateway identity and bundle");
        refuse_files(o, path, t, &why, errors);
    };
    match t.mode.as_deref() {
        Some(mode @ ("ISTIO_MUTUAL" | "DISABLE")) if credential_name.is_some() => {
            errors.push(o.error(
                format!("{path}.credentialName"),
                format!("not used with {mode}: a Secret's certificates are for SIMPLE and MUTUAL"),
            ));
            None
        }
        Some("DISABLE") => Some(UpstreamTls::Disable),
        Some("SIMPLE") => Some(UpstreamTls::Simple(settings)),
        Some("MUTUAL") => {
            let files = settings.client_certificate.is_some() && settings.private_key.is_some();
            if !files && settings.secret.is_none() {
                errors.push(o.error(
                    path,
                    "MUTUAL needs clientCertificate and privateKey, or credentialName",
                ));
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

/// `credentialName` into `settings`, read once the rule applies (Istio: only one of the
/// certificate files and `credentialName` may be given).
fn secret_ref(
    o: &Origin,
    path: &str,
    t: &raw::ClientTls,
    name: &str,
    settings: &mut ClientTls,
    errors: &mut Vec<ConfigError>,
) {
    refuse_files(
        o,
        path,
        t,
        "credentialName is set: the Secret holds the certificates (and the CRL as `crl` or \
         `ca.crl`), so the files are not given as well",
        errors,
    );
    let field = format!("{path}.credentialName");
    if let Err(e) = credential::check_name(name) {
        errors.push(o.error(field, e));
        return;
    }
    settings.secret = Some(SecretRef {
        name: name.to_string(),
        file: o.file.clone(),
        resource: o.resource(),
        field,
    });
}

/// An error `why` for each certificate file `t` names.
fn refuse_files(
    o: &Origin,
    path: &str,
    t: &raw::ClientTls,
    why: &str,
    errors: &mut Vec<ConfigError>,
) {
    for (field, set) in [
        ("clientCertificate", t.client_certificate.is_some()),
        ("privateKey", t.private_key.is_some()),
        ("caCertificates", t.ca_certificates.is_some()),
        ("caCrl", t.ca_crl.is_some()),
    ] {
        if set {
            errors.push(o.error(format!("{path}.{field}"), why));
        }
    }
}
