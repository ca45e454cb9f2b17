//! `http[].delegate`: a VirtualService rule that hands its requests to the rules of another
//! VirtualService, one without hosts, as istiod merges them before it builds any route
//! (`mergeVirtualServicesIfNeeded`):
//!
//! - A VirtualService without hosts is a delegate: never applied on its own, only through a
//!   rule that names it (`namespace` defaults to the delegating VirtualService's) and that its
//!   `exportTo` admits.
//! - The delegating rule is replaced, where it stands, by one rule per delegate rule. Each
//!   delegate match is joined with every root match it does not conflict with (a delegate's
//!   `uri` must narrow the root's, a header both name must agree, ...); a delegate rule with a
//!   match that fits no root match is dropped whole. The delegate's fields win; the root's
//!   `rewrite`, `timeout`, `retries`, `fault`, mirrors, `corsPolicy`, `headers` and
//!   `directResponse` fill those the delegate leaves out.
//! - A missing or unexported delegate drops the rule that names it; the rest of the
//!   VirtualService stands.
//!
//! Short names are resolved in the namespace of the VirtualService that wrote them, before the
//! merge, as istiod resolves them; errors in a merged rule name the delegate's file, resource
//! and rule, and the rule that delegated to it.

use std::collections::{BTreeMap, HashMap};

use super::export::ExportTo;
use super::virtual_service::{qualify, qualify_gateways};
use super::Origin;
use crate::error::ConfigError;
use crate::raw::virtual_service::{
    Delegated, HttpMatch, HttpRoute, MirrorPolicy, Percent, VirtualServiceSpec,
};
use crate::raw::StringMatch;
use crate::warning::{Code, Warning};

/// A delegate VirtualService, checked, with what its `exportTo` admits.
struct Delegate {
    origin: Origin,
    spec: VirtualServiceSpec,
    export: ExportTo,
}

/// Each `field` of `out` that is `None` takes `root`'s: the delegate's value wins, the root's
/// fills in.
macro_rules! inherit {
    ($out:ident, $root:ident; $($field:ident),* $(,)?) => {
        $(if $out.$field.is_none() {
            $out.$field = $root.$field.clone();
        })*
    };
}

/// Replaces every delegating rule of `found` by its delegate's rules, merged, and takes the
/// delegates (VirtualServices without hosts) out.
pub(crate) fn expand(
    found: &mut Vec<(Origin, VirtualServiceSpec)>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    let mut delegates: HashMap<(String, String), Delegate> = HashMap::new();
    let mut roots = Vec::with_capacity(found.len());
    for (o, spec) in std::mem::take(found) {
        if !spec.hosts.is_empty() {
            roots.push((o, spec));
            continue;
        }
        check_delegate(&o, &spec, errors);
        let export = ExportTo::parse(&o, spec.export_to.as_deref(), false, errors);
        let key = (o.namespace.clone(), o.name.clone());
        delegates.insert(
            key,
            Delegate {
                origin: o,
                spec,
                export,
            },
        );
    }
    for (o, mut spec) in roots {
        if spec.http.iter().any(|r| r.delegate.is_some()) {
            let rules = std::mem::take(&mut spec.http);
            let mut http = Vec::with_capacity(rules.len());
            let mut delegated = Vec::with_capacity(rules.len());
            for (i, rule) in rules.into_iter().enumerate() {
                if rule.delegate.is_none() {
                    http.push(rule);
                    delegated.push(None);
                    continue;
                }
                for (merged, from) in delegate_rule(&o, i, &rule, &delegates, errors, warnings) {
                    http.push(merged);
                    delegated.push(Some(from));
                }
            }
            spec.http = http;
            spec.delegated = delegated;
        }
        found.push((o, spec));
    }
}

/// What a delegate VirtualService may not have: Istio's validation of one.
fn check_delegate(o: &Origin, spec: &VirtualServiceSpec, errors: &mut Vec<ConfigError>) {
    if spec.gateways.as_ref().is_some_and(|g| !g.is_empty()) {
        errors.push(o.error(
            "spec.gateways",
            "a VirtualService without hosts is a delegate: it is bound where the rule that \
             delegates to it is, and may not name gateways",
        ));
    }
    if spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
        errors.push(o.error("spec.tls", "a delegate (no hosts) has http rules only"));
    }
    if spec.tcp.as_ref().is_some_and(|t| !t.is_empty()) {
        errors.push(o.error("spec.tcp", "a delegate (no hosts) has http rules only"));
    }
    for (i, rule) in spec.http.iter().enumerate() {
        if rule.delegate.is_some() {
            errors.push(o.error(
                format!("spec.http[{i}].delegate"),
                "a delegate's rule cannot delegate again: Istio delegates one level only",
            ));
        }
    }
}

/// The rules that take the place of rule `i` of `o`, which delegates.
fn delegate_rule(
    o: &Origin,
    i: usize,
    rule: &HttpRoute,
    delegates: &HashMap<(String, String), Delegate>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Vec<(HttpRoute, Delegated)> {
    let path = format!("spec.http[{i}]");
    let Some(target) = &rule.delegate else {
        return Vec::new();
    };
    let before = errors.len();
    if !rule.route.is_empty() {
        errors.push(o.error(
            format!("{path}.route"),
            "a rule that delegates may not route: its delegate's rules do",
        ));
    }
    if rule.redirect.is_some() {
        errors.push(o.error(
            format!("{path}.redirect"),
            "a rule that delegates may not redirect: its delegate's rules do",
        ));
    }
    let name = target.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        errors.push(o.error(format!("{path}.delegate.name"), "required"));
    }
    if errors.len() > before {
        return Vec::new();
    }
    let namespace = target
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(&o.namespace);
    let key = (namespace.to_string(), name.to_string());
    let Some(delegate) = delegates.get(&key) else {
        let why = format!("no VirtualService {namespace}/{name} without hosts is loaded");
        missing(o, i, &why, warnings);
        return Vec::new();
    };
    let d = &delegate.origin;
    if delegate
        .export
        .seen_from(&d.namespace, &o.namespace)
        .is_none()
    {
        let why = format!(
            "VirtualService {namespace}/{name} is not exported to namespace `{}`",
            o.namespace
        );
        missing(o, i, &why, warnings);
        return Vec::new();
    }
    let root = resolved(rule, &o.namespace);
    let mut out = Vec::new();
    for (j, leaf) in delegate.spec.http.iter().enumerate() {
        let leaf_path = format!("spec.http[{j}]");
        let leaf = resolved(leaf, &d.namespace);
        match merge(&root, &leaf) {
            Some(merged) => out.push((
                merged,
                Delegated {
                    origin: d.clone(),
                    path: format!("{leaf_path} (delegated to by {} {path})", o.resource()),
                },
            )),
            None => warnings.push(d.warn(
                Code::DelegateRuleConflicts,
                Some(&leaf_path),
                format!(
                    "a match of this rule fits no match of {} {path}, which delegates to it \
                     (a delegate's conditions must narrow the root's): Istio drops the rule",
                    o.resource()
                ),
            )),
        }
    }
    out
}

/// MG0120 for rule `i` of `o`.
fn missing(o: &Origin, i: usize, why: &str, warnings: &mut Vec<Warning>) {
    warnings.push(o.warn(
        Code::DelegateNotFound,
        Some(&format!("spec.http[{i}].delegate")),
        format!("{why}: this rule routes nothing, as in Istio"),
    ));
}

/// `rule` with the names its VirtualService (in `namespace`) wrote resolved there: hosts of
/// destinations and mirrors, and gateways of matches.
fn resolved(rule: &HttpRoute, namespace: &str) -> HttpRoute {
    let mut rule = rule.clone();
    for d in &mut rule.route {
        d.destination.host = qualify(&d.destination.host, namespace);
    }
    if let Some(m) = &mut rule.mirror {
        m.host = qualify(&m.host, namespace);
    }
    for m in rule.mirrors.iter_mut().flatten() {
        m.destination.host = qualify(&m.destination.host, namespace);
    }
    for m in &mut rule.matches {
        if let Some(g) = &mut m.gateways {
            *g = qualify_gateways(g, namespace);
        }
    }
    rule
}

/// `leaf` (a delegate's rule) merged into `root` (the rule that delegates to it), or `None`
/// when a match of `leaf` fits no match of `root` (`mergeHTTPRoute`).
fn merge(root: &HttpRoute, leaf: &HttpRoute) -> Option<HttpRoute> {
    let matches = merge_matches(&root.matches, &leaf.matches)?;
    let mut out = leaf.clone();
    out.matches = matches;
    out.name = joined(root.name.as_deref(), leaf.name.as_deref());
    out.delegate = None;
    inherit!(out, root;
        rewrite,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percentage,
        mirror_percent,
        mirrors,
        cors_policy,
        headers,
        direct_response
    );
    // What each resource's validation keeps apart can meet in a merged rule, one field the
    // delegate's and the other inherited; Istio then builds the route as `translateRoute`
    // reads it: a redirect first (without rewrite), then a direct response (without
    // destinations), and mirrors only on a rule that forwards. Fields the delegate itself sets
    // together are left for its own validation to refuse.
    if out.redirect.is_some() {
        if leaf.direct_response.is_none() {
            out.direct_response = None;
        }
        if leaf.rewrite.is_none() {
            out.rewrite = None;
        }
    } else if out.direct_response.is_some() && leaf.direct_response.is_none() {
        out.route.clear();
    }
    let own_answer = leaf.redirect.is_some() || leaf.direct_response.is_some();
    if !own_answer && out.direct_response.is_some() {
        // The inherited answer: no destination, so no mirror of either.
        out.mirror = None;
        out.mirror_percentage = None;
        out.mirror_percent = None;
        out.mirrors = None;
    } else if own_answer {
        if leaf.mirror.is_none() {
            out.mirror = None;
            out.mirror_percentage = leaf.mirror_percentage.clone();
            out.mirror_percent = leaf.mirror_percent;
        }
        if leaf.mirrors.is_none() {
            out.mirrors = None;
        }
    }
    // A root's `mirror` and a delegate's `mirrors` (or the other way round): both apply, the
    // `mirror` first, as `applyHTTPRouteDestination` lists them.
    let one_inherited = leaf.mirror.is_none() || leaf.mirrors.is_none();
    if one_inherited && out.mirror.is_some() && out.mirrors.is_some() {
        let percentage = match (out.mirror_percentage.take(), out.mirror_percent.take()) {
            (Some(p), _) => Some(p),
            (None, Some(n)) => Some(Percent {
                value: Some(f64::from(n)),
            }),
            (None, None) => None,
        };
        if let (Some(mirror), Some(list)) = (out.mirror.take(), out.mirrors.as_mut()) {
            list.insert(
                0,
                MirrorPolicy {
                    destination: mirror,
                    percentage,
                },
            );
        }
    }
    Some(out)
}

/// Istio's name of a merged rule or match: the root's and the delegate's, joined by `-`.
fn joined(root: Option<&str>, leaf: Option<&str>) -> Option<String> {
    match (
        root.filter(|r| !r.is_empty()),
        leaf.filter(|l| !l.is_empty()),
    ) {
        (Some(r), Some(l)) => Some(format!("{r}-{l}")),
        (r, None) => r.map(str::to_string),
        (None, l) => l.map(str::to_string),
    }
}

/// Every delegate match joined with each root match it does not conflict with, or `None` when
/// one fits none (`mergeHTTPMatchRequests`).
fn merge_matches(root: &[HttpMatch], leaf: &[HttpMatch]) -> Option<Vec<HttpMatch>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for l in leaf {
        let before = out.len();
        for r in root {
            if !conflict(r, l) {
                out.push(merge_match(r, l));
            }
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

/// `leaf` with what it leaves out taken from `root`; maps joined, `leaf`'s keys winning.
fn merge_match(root: &HttpMatch, leaf: &HttpMatch) -> HttpMatch {
    let mut out = leaf.clone();
    out.name = joined(root.name.as_deref(), leaf.name.as_deref());
    inherit!(out, root;
        uri,
        scheme,
        method,
        authority,
        port,
        source_namespace,
        stat_prefix
    );
    if out.port == Some(0) {
        out.port = root.port;
    }
    if out.gateways.as_ref().is_none_or(Vec::is_empty) {
        out.gateways = root.gateways.clone();
    }
    let union = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        let mut m = r.clone();
        m.extend(l.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    };
    out.headers = union(&root.headers, &leaf.headers);
    out.without_headers = union(&root.without_headers, &leaf.without_headers);
    out.query_params = union(&root.query_params, &leaf.query_params);
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.clone());
    out.source_labels = labels;
    out
}

/// Whether `leaf` asks for something `root` excludes (`hasConflict`).
fn conflict(root: &HttpMatch, leaf: &HttpMatch) -> bool {
    let strings = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if strings
        .iter()
        .any(|(r, l)| string_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let maps = [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ];
    let maps_conflict = maps
        .iter()
        .any(|(r, l)| l.iter().any(|(k, lv)| string_conflict(r.get(k), Some(lv))));
    if maps_conflict || root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if let (Some(r), Some(l)) = (root.port.filter(|p| *p != 0), leaf.port.filter(|p| *p != 0)) {
        if r != l {
            return true;
        }
    }
    if let Some(r) = root.source_namespace.as_deref().filter(|r| !r.is_empty()) {
        if leaf.source_namespace.as_deref() != Some(r) {
            return true;
        }
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
    {
        return true;
    }
    match (root.gateways.as_deref(), leaf.gateways.as_deref()) {
        (Some(r), Some(l)) if !r.is_empty() && !l.is_empty() => !l.iter().all(|g| r.contains(g)),
        _ => false,
    }
}

/// Whether a delegate's string condition can hold where the root's does
/// (`stringMatchConflict`): a prefix narrows a prefix, an exact value sits under a prefix or
/// repeats an exact one; a regex is never compared, and conflicts.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    if root.regex.is_some() || leaf.regex.is_some() {
        return true;
    }
    if let Some(r) = root.exact.as_deref().filter(|r| !r.is_empty()) {
        return leaf.prefix.is_some() || leaf.exact.as_deref() != Some(r);
    }
    if let Some(r) = root.prefix.as_deref().filter(|r| !r.is_empty()) {
        let narrows = |l: Option<&str>| l.is_some_and(|l| l.starts_with(r));
        return !(narrows(leaf.prefix.as_deref()) || narrows(leaf.exact.as_deref()));
    }
    true
}
