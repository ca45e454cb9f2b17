//! Authorize: request attributes + the AuthorizationPolicies -> `Decision::{Allow, Deny}`.
//!
//! Istio's order: a matching DENY policy denies; then, if any ALLOW policy applies, a request
//! that matches none of them is denied; otherwise it is allowed. AUDIT policies change nothing
//! (`audited` names the ones that match, for the log). Dry-run policies change nothing either:
//! `dry_run` decides each of their sets as Istio's shadow rules do, for the log and a metric.
//! A condition on a repeated request header is read against the request, whichever the policy's
//! action (`Condition::matches` in the compiled model).
//! Pure: no I/O, no locks, no allocation.

use meshgate_config::model::authz::{Attributes, Policies, Policy};

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow,
    /// Denied by this DENY policy, or (`None`) because no ALLOW policy matched.
    Deny(Option<&'a str>),
}

/// Decides a request.
pub fn authorize<'a>(policies: &'a Policies, a: &Attributes<'_>) -> Decision<'a> {
    if let Some(p) = policies.deny.iter().find(|p| p.matches(a, false)) {
        return Decision::Deny(Some(&p.name));
    }
    if policies.allow.is_empty() || policies.allow.iter().any(|p| p.matches(a, true)) {
        Decision::Allow
    } else {
        Decision::Deny(None)
    }
}

/// Decides a connection whose bytes are not HTTP, as Istio's TCP filter does: an ALLOW rule
/// that names an HTTP field never matches, a DENY rule is applied without its HTTP fields.
pub fn authorize_connection<'a>(policies: &'a Policies, a: &Attributes<'_>) -> Decision<'a> {
    if let Some(p) = policies
        .deny
        .iter()
        .find(|p| p.matches_connection(a, false))
    {
        return Decision::Deny(Some(&p.name));
    }
    if policies.allow.is_empty() || policies.allow.iter().any(|p| p.matches_connection(a, true)) {
        Decision::Allow
    } else {
        Decision::Deny(None)
    }
}

/// What a set of dry-run policies would have decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shadow<'a> {
    /// Which set: the dry-run DENY policies or the dry-run ALLOW policies.
    pub action: ShadowAction,
    /// The policy that decided (Envoy's `shadow_effective_policy_id`), if one matched.
    pub policy: Option<&'a str>,
    pub allowed: bool,
}

/// The action of a set of dry-run policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowAction {
    Deny,
    Allow,
}

/// Decides the dry-run policies: each set on its own, as if it were the only one enforced. A
/// DENY set would deny the request a policy of it matches; an ALLOW set would deny the request
/// none of its policies matches. An empty set decides nothing.
pub fn dry_run<'a>(policies: &'a Policies, a: &Attributes<'_>) -> [Option<Shadow<'a>>; 2] {
    let set = &policies.dry_run;
    let deny = (!set.deny.is_empty()).then(|| {
        let hit = set.deny.iter().find(|p| p.matches(a, false));
        Shadow {
            action: ShadowAction::Deny,
            policy: hit.map(|p| p.name.as_str()),
            allowed: hit.is_none(),
        }
    });
    let allow = (!set.allow.is_empty()).then(|| {
        let hit = set.allow.iter().find(|p| p.matches(a, true));
        Shadow {
            action: ShadowAction::Allow,
            policy: hit.map(|p| p.name.as_str()),
            allowed: hit.is_some(),
        }
    });
    [deny, allow]
}

/// The AUDIT policies a request matches.
pub fn audited<'a>(
    policies: &'a Policies,
    a: &'a Attributes<'_>,
) -> impl Iterator<Item = &'a Policy> {
    // Read as DENY policies are: a repeated header is logged when any copy matches.
    policies.audit.iter().filter(move |p| p.matches(a, false))
}

#[cfg(test)]
mod tests;
