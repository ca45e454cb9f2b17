//! Warnings: problems that do not stop the proxy, each with a documented code (as `istioctl
//! analyze` gives `IST0101`), so that users can look one up and suppress it
//! (`meshgate check --suppress MG0101`).
//!
//! A warning names the file, the resource (`Kind namespace/name`) and the field path where it
//! knows them, like a [`ConfigError`](crate::ConfigError). `check`, `run` and every reload
//! print them; `check --output json` serialises them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub code: Code,
    /// The file the warning is about; `None` for the configuration as a whole.
    pub file: Option<PathBuf>,
    /// `Kind namespace/name`.
    pub resource: Option<String>,
    /// The field path inside the resource, such as `spec.gateways[0]`.
    pub field: Option<String>,
    pub message: String,
}

impl Warning {
    /// A warning about the configuration as a whole.
    pub fn global(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            file: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    /// A warning about a file.
    pub fn file(code: Code, file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: Some(file.to_path_buf()),
            ..Self::global(code, message)
        }
    }

    /// Whether `rule` (`CODE`, or `CODE=Kind ns/name` with `*` as a wildcard in the resource,
    /// as `istioctl analyze --suppress`) suppresses this warning.
    pub fn suppressed_by(&self, rule: &str) -> bool {
        let (code, resource) = match rule.split_once('=') {
            Some((code, resource)) => (code.trim(), Some(resource.trim())),
            None => (rule.trim(), None),
        };
        if !code.eq_ignore_ascii_case(self.code.id())
            && !code.eq_ignore_ascii_case(self.code.name())
        {
            return false;
        }
        match (resource, &self.resource) {
            (None, _) => true,
            (Some(pattern), Some(resource)) => glob(pattern, resource),
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.code.id())?;
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        for part in [&self.resource, &self.field].into_iter().flatten() {
            write!(f, "{part}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(mut tail) = text.strip_prefix(head) else {
                return false;
            };
            loop {
                if glob(rest, tail) {
                    return true;
                }
                let mut chars = tail.chars();
                if chars.next().is_none() {
                    return false;
                }
                tail = chars.as_str();
            }
        }
    }
}

macro_rules! codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $id:literal,)*) => {
        /// Every warning meshgate gives, by its documented code. README's "Bringing your Istio
        /// files" has an example of each.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Code {
            /// Every code, in numerical order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code users search for and suppress, such as `MG0101`.
            pub fn id(self) -> &'static str {
                match self { $(Code::$variant => $id,)* }
            }

            /// The code's name, such as `GatewayNotFound`.
            pub fn name(self) -> &'static str {
                match self { $(Code::$variant => stringify!($variant),)* }
            }

            /// What the code means, in one line.
            pub fn summary(self) -> &'static str {
                match self { $(Code::$variant => concat!($($doc),*).trim_ascii(),)* }
            }
        }
    };
}

codes! {
    /// A file in a configuration directory was not read (not `*.yaml`, `*.yml` or `*.json`).
    FileSkipped = "MG0001",
    /// A resource of a kind that cannot change what meshgate does (a Deployment, a Secret,
    /// a PeerAuthentication, ...) was skipped.
    ResourceSkipped = "MG0002",
    /// Installation-only settings of an IstioOperator or Kyma Istio resource (components,
    /// values, resources, Helm values, ...) were skipped.
    InstallSettingsSkipped = "MG0003",
    /// A VirtualService is bound to a Gateway that no loaded file defines.
    GatewayNotFound = "MG0101",
    /// A VirtualService is bound to a Gateway that selects other workloads than this proxy.
    GatewayNotServed = "MG0102",
    /// A VirtualService host is not among the hosts of the Gateway servers it binds to (or
    /// their `namespace/host` form excludes the VirtualService's namespace).
    VirtualServiceHostNotInGateway = "MG0103",
    /// A Gateway server host that no VirtualService route answers: requests for it get 404.
    HostNotRouted = "MG0104",
    /// A DestinationRule whose host matches no backend any route or ServiceEntry uses.
    DestinationRuleUnused = "MG0105",
    /// A DestinationRule subset that no route uses.
    SubsetUnused = "MG0106",
    /// A route names a DestinationRule subset that is not defined.
    SubsetNotFound = "MG0107",
    /// The trust domain of this proxy's own identity is not the configured trust domain.
    TrustDomainMismatch = "MG0108",
    /// A route destination that no ServiceEntry declares: it is resolved by DNS per request.
    DestinationNotDeclared = "MG0109",
    /// No Gateway selects this MeshGateway's labels: no listener is bound.
    NoListener = "MG0110",
    /// An AuthorizationPolicy, or a DestinationRule with a `workloadSelector`, that applies to
    /// no workload of this proxy.
    PolicyNotApplied = "MG0111",
    /// A route's fault has no percentage: Istio's default is 0%, so it injects nothing.
    FaultNeverInjected = "MG0112",
    /// A ServiceEntry or Service port the outbound listener does not serve (TCP, or TLS it
    /// would have to pass through).
    PortNotServed = "MG0113",
    /// A service port or subset an `AUTO_PASSTHROUGH` listener's hosts admit but that it
    /// cannot forward to (a subset selecting by labels endpoints meshgate cannot know).
    NotExposed = "MG0114",
    /// An AuthorizationPolicy rule naming HTTP fields that reaches a TCP port: there an ALLOW
    /// rule never matches and a DENY rule is applied without them, as Istio does.
    HttpFieldsOnTcp = "MG0115",
    /// Several VirtualServices bound to `mesh` name one host: Istio merges them on Gateways
    /// only, so the one loaded first answers it on the outbound listener (IST0109).
    ConflictingMeshVirtualServiceHosts = "MG0116",
    /// A setting of a DestinationRule that another of the same host, loaded first, already
    /// makes (a subset's name, the top-level `trafficPolicy`): Istio keeps the first.
    DestinationRuleSettingIgnored = "MG0117",
    /// A ServiceEntry host that a Kubernetes Service, or a ServiceEntry first in Istio's order
    /// in another namespace (or in this one but with another resolution, labels or workload
    /// selector), already declares: Istio keeps that one's ports and endpoints.
    ServiceEntryHostIgnored = "MG0118",
    /// A VirtualService, DestinationRule or ServiceEntry whose `exportTo` leaves out this
    /// proxy's namespace: Istio would not give it to this proxy, so it is not applied.
    NotExported = "MG0119",
    /// A VirtualService rule delegates to a VirtualService that is not loaded, has hosts, or
    /// is not exported to the delegating one's namespace: the rule routes nothing.
    DelegateNotFound = "MG0120",
    /// A delegate VirtualService's rule with a match that no match of the rule delegating to
    /// it admits (a delegate must narrow the root's conditions): Istio drops the rule.
    DelegateRuleConflicts = "MG0121",
    /// The outbound listener is not on a loopback address.
    OutboundNotLoopback = "MG0201",
    /// An ISTIO_MUTUAL gateway without issuer binding.
    NoIssuerBinding = "MG0202",
    /// Path normalization `NONE` or `BASE` lets `//admin` and `/admin%2F..` dodge path policies.
    WeakPathNormalization = "MG0203",
    /// A trust domain that Istio itself would reject.
    TrustDomainRejectedByIstio = "MG0204",
    /// An AuthorizationPolicy value that can never match (a lowercase method, a principal of a
    /// trust domain the handshake refuses).
    PolicyValueNeverMatches = "MG0205",
    /// A setting accepted with an effect narrower than Istio's (tracing without spans).
    PartialSupport = "MG0206",
    /// With issuer binding, a trust domain the proxy accepts at an ISTIO_MUTUAL handshake, or
    /// expects of an ISTIO_MUTUAL upstream, that no listed CA may issue: those handshakes fail.
    IssuerNotBound = "MG0207",
    /// A DestinationRule that does not verify the server it originates TLS to
    /// (`insecureSkipVerify`).
    UnverifiedUpstream = "MG0208",
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_suppressible_by_id_name_and_resource() {
        let mut ids: Vec<_> = Code::ALL.iter().map(|c| c.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), Code::ALL.len());
        let w = Warning {
            resource: Some("VirtualService team/reviews".into()),
            ..Warning::global(Code::GatewayNotFound, "x")
        };
        assert!(w.suppressed_by("MG0101"));
        assert!(w.suppressed_by("mg0101"));
        assert!(w.suppressed_by("GatewayNotFound"));
        assert!(w.suppressed_by("MG0101=VirtualService team/*"));
        assert!(w.suppressed_by("MG0101=*reviews"));
        assert!(!w.suppressed_by("MG0101=VirtualService other/*"));
        assert!(!w.suppressed_by("MG0102"));
        assert!(!Code::HostNotRouted.summary().is_empty());
    }
}
