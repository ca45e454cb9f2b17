//! `security.istio.io RequestAuthentication`: read only to decide whether it applies to this
//! proxy (it does not: skipped with a warning) or asks for JWT validation here (refused).

use serde::Deserialize;

use super::authorization_policy::Selector;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    pub selector: Option<Selector>,
    /// Counted, not read: any rule here means JWT validation.
    #[serde(default)]
    pub jwt_rules: Vec<serde::de::IgnoredAny>,
    pub target_ref: Option<serde::de::IgnoredAny>,
    pub target_refs: Option<serde::de::IgnoredAny>,
}
