//! Serde structs mirroring the YAML, one file per kind, no logic.
//!
//! Fields no struct declares are collected while parsing (every one of them, not only the
//! first) and reported by `compile` as unknown. Istio fields that meshgate parses but does not
//! implement are declared as [`Unsupported`] so that `compile` can name them in its error.

pub mod authorization_policy;
pub mod destination_rule;
pub mod gateway;
pub mod istio;
pub mod kubernetes;
pub mod mesh_gateway;
pub mod request_authentication;
pub mod service_entry;
pub mod virtual_service;

use std::collections::BTreeMap;

use serde::Deserialize;

/// A field meshgate recognises but does not implement: present means an error.
pub type Unsupported = Option<serde::de::IgnoredAny>;

/// The envelope every resource shares. `status` is what a cluster reports, and is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    /// Absent or null: `compile` decides whether the kind needs one (Kyma's `Istio` does not).
    #[serde(default = "none")]
    pub spec: Option<S>,
    #[serde(default)]
    pub status: Option<serde::de::IgnoredAny>,
}

fn none<S>() -> Option<S> {
    None
}

/// Kubernetes object metadata. `name`, `namespace` and the annotations meshgate reads
/// (`istio.io/dry-run`) mean anything to meshgate; the rest (labels, uid, resourceVersion,
/// managedFields, ...) is what `kubectl get -o yaml` prints and is skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "creationTimestamp")]
    pub creation_timestamp: Option<String>,
}

/// What is read of every document before its kind is known.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
}

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex`; empty means "present".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// A label map such as `selector` or `matchLabels`.
pub type Labels = BTreeMap<String, String>;
