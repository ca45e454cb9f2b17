//! Authorize: request attributes + the AuthorizationPolicies -> `Decision::{Allow, Deny}`.
//!
//! Istio's order: a matching DENY policy denies; then, if any ALLOW policy applies, a request
//! that matches none of them is denied; otherwise it is allowed. AUDIT policies change nothing
//! (`audited` names the ones that match, for the log). Pure: no I/O, no locks, no allocation.

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
    if let Some(p) = policies.deny.iter().find(|p| p.matches(a)) {
        return Decision::Deny(Some(&p.name));
    }
    if policies.allow.is_empty() || policies.allow.iter().any(|p| p.matches(a)) {
        Decision::Allow
    } else {
        Decision::Deny(None)
    }
}

/// The AUDIT policies a request matches.
pub fn audited<'a>(
    policies: &'a Policies,
    a: &'a Attributes<'_>,
) -> impl Iterator<Item = &'a Policy> {
    policies.audit.iter().filter(move |p| p.matches(a))
}

#[cfg(test)]
mod tests;
