//! `exportTo`: which namespaces' proxies see a VirtualService, DestinationRule or ServiceEntry.
//! meshgate is one proxy, in its MeshGateway's namespace: a resource not exported there is not
//! applied (`check` says so, MG0119), as istiod would not send it to this proxy.

use super::Origin;
use crate::error::ConfigError;
use crate::warning::{Code, Warning};

/// How a proxy sees a resource exported to it, in the order Istio lists them for the proxy
/// (`servicesExportedToNamespace`, `VirtualServicesForGateway`): those private to its own
/// namespace first, then those exported to it by name, then the public ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seen {
    Private,
    Named,
    Public,
}

/// A resource's `exportTo`: its values as written, sorted, once each (Istio compares them as a
/// set). Empty: Istio's default, every namespace (meshgate accepts no other
/// `default*ExportTo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExportTo(Vec<String>);

impl ExportTo {
    /// `values` of resource `o`; `~` (no namespace at all) is for ServiceEntries alone.
    pub(crate) fn parse(
        o: &Origin,
        values: Option<&[String]>,
        none_allowed: bool,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let values = values.unwrap_or_default();
        let mut seen: Vec<&str> = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let field = format!("spec.exportTo[{i}]");
            let valid = match v.as_str() {
                "." | "*" => true,
                "~" => none_allowed,
                ns => is_namespace_name(ns),
            };
            if !valid {
                let also = if none_allowed { ", `~`" } else { "" };
                errors.push(o.error(
                    field,
                    format!("`{v}` is not `.`, `*`{also} or a namespace name"),
                ));
                continue;
            }
            // `.` is the resource's own namespace.
            let key = if v == "." { o.namespace.as_str() } else { v };
            if seen.contains(&key) {
                errors.push(o.error(field, format!("`{v}` is listed twice")));
            }
            seen.push(key);
        }
        for alone in ["*", "~"] {
            if values.len() > 1 && values.iter().any(|v| v == alone) {
                errors.push(o.error(
                    "spec.exportTo",
                    format!("`{alone}` cannot be listed with other values"),
                ));
            }
        }
        Self::written(Some(values))
    }

    /// `values` as a set, unchecked (`parse` checks them).
    pub(crate) fn written(values: Option<&[String]>) -> Self {
        let mut values = values.unwrap_or_default().to_vec();
        values.sort();
        values.dedup();
        Self(values)
    }

    fn has(&self, value: &str) -> bool {
        self.0.iter().any(|v| v == value)
    }

    /// Whether `.` is written among the values (Istio compares `exportTo` as the set written).
    pub(crate) fn lists_dot(&self) -> bool {
        self.has(".")
    }

    /// How a proxy in `proxy` sees the resource of namespace `own`: `None` when it does not.
    pub(crate) fn seen_from(&self, own: &str, proxy: &str) -> Option<Seen> {
        if self.0.is_empty() || self.has("*") {
            Some(Seen::Public)
        } else if self.has("~") {
            None
        } else if own == proxy && (self.has(".") || self.has(own)) {
            Some(Seen::Private)
        } else if self.has(proxy) {
            Some(Seen::Named)
        } else {
            None
        }
    }

    /// Whether a DestinationRule of namespace `own` is among those a proxy in `proxy` looks at
    /// first: of its own namespace and exported to it at all (Istio's `namespaceLocal`), or,
    /// for a proxy in the root namespace `root`, exported to it alone (`rootNamespaceLocal`).
    pub(crate) fn local_for(&self, own: &str, proxy: &str, root: &str) -> bool {
        if proxy == root {
            own == root && self.private_only(own)
        } else {
            own == proxy && (self.0.is_empty() || self.has("*") || self.has(".") || self.has(own))
        }
    }

    /// Exported to its own namespace `own` alone: a DestinationRule that only proxies of that
    /// namespace may look up.
    pub(crate) fn private_only(&self, own: &str) -> bool {
        matches!(self.0.as_slice(), [v] if v == "." || v == own)
    }

    /// Exported to namespace `proxy` from another namespace (a DestinationRule of the
    /// service's or of the root namespace, which Istio looks up for a proxy in `proxy`).
    pub(crate) fn exported_to(&self, own: &str, proxy: &str) -> bool {
        !self.private_only(own) && (self.0.is_empty() || self.has("*") || self.has(proxy))
    }

    /// MG0119 for resource `o`, which this leaves out of `proxy`'s view: what it then does
    /// (`declares nothing`, `routes nothing`, ...).
    pub(crate) fn not_exported(&self, o: &Origin, proxy: &str, so: &str) -> Warning {
        o.warn(
            Code::NotExported,
            Some("spec.exportTo"),
            format!(
                "exported to [{}], which leaves out this proxy's namespace `{proxy}`: Istio does \
                 not give this {} to the proxy, so it {so}",
                self.0.join(", "),
                o.kind
            ),
        )
    }
}

/// A Kubernetes namespace name (an RFC 1123 label).
fn is_namespace_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
