//! Raw resources to the runtime model, one file per kind, collecting every error.
//!
//! Order: parse every document by its kind (kinds that cannot change this proxy are skipped
//! with a warning, every unknown field is reported); then the installation resources (Kyma's
//! `Istio`, `IstioOperator`), the MeshGateway and the trust domain; then ServiceEntries
//! (backends); then Gateways selected by this proxy's labels (listeners); then VirtualServices
//! bound to those Gateways (routes); then what `check` explains (`analyze`).

mod analyze;
mod authorization_policy;
mod credential;
mod delegate;
mod destination_rule;
mod export;
mod gateway;
mod install;
mod mesh_gateway;
mod outbound;
mod passthrough;
mod request_authentication;
mod service_entry;
mod tcp;
mod virtual_service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::ConfigError;
use crate::model::Model;
use crate::raw::{self, Resource};
use crate::source::{self, Document, PathSegment, Read};
use crate::warning::{Code, Warning};

/// Compiles what `source::read` found into a model, or returns `None` with the problems in
/// `errors`. The warnings found go into the model, or stay in `warnings` when there is none.
/// `secret_files` gets the files of the Secrets named (`Model::secret_files`) either way, so
/// that a load that failed for a Secret is tried again once the Secret changes.
pub fn compile(
    read: Read,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
    secret_files: &mut Vec<PathBuf>,
) -> Option<Model> {
    let Read {
        documents,
        files,
        warnings: skipped,
    } = read;
    warnings.extend(skipped);
    let mut parsed = Parsed::default();
    for doc in &documents {
        parse_document(doc, &mut parsed, errors, warnings);
    }
    duplicates(&parsed, errors);
    drop(documents);
    delegate::expand(&mut parsed.virtual_services, errors, warnings);
    let install = install::compile(&parsed, errors, warnings);
    let proxy = mesh_gateway::compile(&parsed.mesh_gateways, &install, errors);
    let mut credentials = credential::Credentials::new(&parsed.mesh_gateways, errors);
    let trust = mesh_gateway::trust(&parsed, &install, errors);
    let proxy_namespace = parsed
        .mesh_gateways
        .first()
        .map_or(DEFAULT_NAMESPACE, |(o, _)| o.namespace.as_str());
    let mut backends = service_entry::Backends::new();
    service_entry::compile(
        &parsed.service_entries,
        &parsed.services,
        &parsed.workload_entries,
        proxy_namespace,
        &mut backends,
        errors,
        warnings,
    );
    for (o, spec) in &parsed.services {
        service_entry::service(o, spec, &mut backends, errors);
    }
    let root_namespace = proxy
        .as_ref()
        .map_or(ROOT_NAMESPACE, |(p, _)| p.root_namespace.as_str());
    let no_labels = raw::Labels::new();
    let rules = destination_rule::compile(
        &parsed.destination_rules,
        proxy_namespace,
        proxy.as_ref().map_or(&no_labels, |(p, _)| &p.labels),
        root_namespace,
        errors,
        warnings,
    );
    let mut listeners = match &proxy {
        Some((proxy, listen)) => gateway::compile(
            &parsed.gateways,
            &proxy.labels,
            listen,
            &mut credentials,
            errors,
        ),
        None => Vec::new(),
    };
    if let Some(address) = proxy.as_ref().and_then(|(p, _)| p.outbound) {
        if !address.ip().is_loopback() {
            warnings.push(mesh_gateway_warning(
                &parsed,
                Code::OutboundNotLoopback,
                "spec.outbound.address",
                format!(
                    "{address} is not a loopback address: any client that can reach it can send \
                     requests as this proxy's identity"
                ),
            ));
        }
    }
    let outbound = proxy.as_ref().and_then(|(p, _)| p.outbound).map(|address| {
        let index = listeners.len();
        listeners.push(outbound::listener(address));
        index
    });
    let owned = proxy
        .as_ref()
        .map(|(p, _)| p.tagging.owned().to_vec())
        .unwrap_or_default();
    let exported =
        virtual_service::exported(&parsed.virtual_services, proxy_namespace, errors, warnings);
    let workload = virtual_service::Proxy {
        namespace: proxy_namespace,
        labels: proxy.as_ref().map_or(&no_labels, |(p, _)| &p.labels),
        exported: &exported,
    };
    virtual_service::bind(
        &parsed.virtual_services,
        &mut listeners,
        &mut backends,
        &rules,
        &owned,
        &workload,
        errors,
        warnings,
    );
    if let Some(listener) = outbound.and_then(|i| listeners.get_mut(i)) {
        outbound::add_services(listener, &mut backends, &rules, proxy_namespace);
        for (host, port, d) in backends.declared_other() {
            warnings.push(Warning {
                resource: Some(d.source.clone()),
                ..Warning::global(
                    Code::PortNotServed,
                    format!(
                        "port {port} of `{host}` is {}: the outbound listener does not serve it \
                         (meshgate proxies HTTP; originate TLS from an HTTP port with a \
                         DestinationRule instead)",
                        d.protocol_name()
                    ),
                )
            });
        }
    }
    passthrough::expose(&mut listeners, &mut backends, &rules, warnings);
    passthrough::bind_tls_routes(
        &parsed.virtual_services,
        &exported,
        &mut listeners,
        &mut backends,
        &rules,
        errors,
    );
    tcp::bind_tcp_routes(
        &parsed.virtual_services,
        &exported,
        &mut listeners,
        &mut backends,
        &rules,
        errors,
    );
    if let Some((proxy, _)) = &proxy {
        analyze::bindings(&parsed, &exported, &proxy.labels, &listeners, warnings);
    }
    analyze::destination_rules(
        &parsed,
        backends.list(),
        [proxy_namespace, root_namespace],
        proxy.as_ref().map_or(&no_labels, |(p, _)| &p.labels),
        warnings,
    );
    if let Some((_, listen)) = &proxy {
        service_entry::resolve(backends.list_mut(), &listen.resolve);
    }
    credentials.resolve_upstreams(backends.list_mut(), errors);
    let workload = match (parsed.mesh_gateways.first(), &proxy) {
        (Some((o, spec)), Some((p, _))) => Some(authorization_policy::Workload {
            namespace: &o.namespace,
            root_namespace: &p.root_namespace,
            labels: &spec.labels,
        }),
        _ => None,
    };
    let paths = install.path_normalization.unwrap_or_default();
    let policies = authorization_policy::compile(
        &parsed.authorization_policies,
        workload.as_ref(),
        trust.as_ref(),
        &paths,
        errors,
        warnings,
    );
    passthrough::check_policies(
        &parsed.authorization_policies,
        &policies,
        &listeners,
        errors,
    );
    tcp::check_policies(
        &parsed.authorization_policies,
        &policies,
        &listeners,
        warnings,
    );
    if let Some(w) = &workload {
        request_authentication::compile(&parsed.request_authentications, w, errors, warnings);
    }
    if let Some(t) = trust
        .as_ref()
        .filter(|_| listeners.iter().any(|l| l.istio_mutual()))
    {
        if t.allowed_trust_domains.is_none() && t.issuers.is_empty() {
            warnings.push(mesh_gateway_warning(
                &parsed,
                Code::NoIssuerBinding,
                "spec.trust",
                "neither a trustDomains allow-list nor issuer binding: any mesh whose \
                 certificates chain to the shared root is accepted at the handshake, and one \
                 mesh's CA can issue another mesh's identities",
            ));
        } else if t.issuers.is_empty() {
            warnings.push(mesh_gateway_warning(
                &parsed,
                Code::NoIssuerBinding,
                "spec.trust.issuers",
                format!(
                    "empty: under a shared root, any mesh's CA can issue identities of every \
                     trust domain the allow-list admits, `{}` (this mesh) included; bind each \
                     intermediate CA to its trust domains",
                    t.trust_domain
                ),
            ));
        }
    }
    if let Some(t) = &trust {
        issuers_not_bound(&parsed, t, &listeners, backends.list(), warnings);
    }
    if let (Some((p, _)), [(o, _)]) = (&proxy, parsed.mesh_gateways.as_slice()) {
        if p.identity.is_none() {
            for l in listeners.iter().filter(|l| l.istio_mutual()) {
                errors.push(o.error(
                    "spec.identity",
                    format!(
                        "required: listener {} (port {}) is ISTIO_MUTUAL",
                        l.name, l.port
                    ),
                ));
            }
        }
    }
    if listeners.is_empty() && proxy.as_ref().is_some_and(|(p, _)| p.outbound.is_none()) {
        warnings.push(mesh_gateway_warning(
            &parsed,
            Code::NoListener,
            "spec.labels",
            "no Gateway selects this MeshGateway's labels: no listener will be bound",
        ));
    }
    *secret_files = credentials.into_watched();
    if !errors.is_empty() {
        return None;
    }
    let (proxy, _) = proxy?;
    Some(Model {
        proxy,
        trust: trust?,
        listeners,
        backends: backends.into_backends(),
        policies,
        files,
        secret_files: secret_files.clone(),
        warnings: std::mem::take(warnings),
    })
}

/// MG0207: with issuer binding, a trust domain this proxy accepts at an `ISTIO_MUTUAL`
/// handshake (the allow-list's; without one, this mesh's and its aliases) or expects of an
/// `ISTIO_MUTUAL` upstream (its `subjectAltNames`) that no listed CA may issue: every such
/// handshake fails.
fn issuers_not_bound(
    parsed: &Parsed,
    t: &crate::model::TrustSettings,
    listeners: &[crate::model::Listener],
    backends: &[crate::model::Backend],
    warnings: &mut Vec<Warning>,
) {
    if t.issuers.is_empty() {
        return;
    }
    let issuable = |td: &str| {
        t.issuers
            .iter()
            .any(|b| b.trust_domains.iter().any(|d| d.as_str() == td))
    };
    let mut warned: Vec<String> = Vec::new();
    if listeners.iter().any(|l| l.istio_mutual()) {
        // Without an allow-list any trust domain may connect: this mesh's own (and its
        // aliases) are the ones bound to have callers.
        let callers: Vec<&crate::spiffe::TrustDomain> = match &t.allowed_trust_domains {
            Some(list) => list.iter().collect(),
            None => std::iter::once(&t.trust_domain).chain(&t.aliases).collect(),
        };
        for td in callers.into_iter().filter(|td| !issuable(td.as_str())) {
            warned.push(td.to_string());
            warnings.push(mesh_gateway_warning(
                parsed,
                Code::IssuerNotBound,
                "spec.trust.issuers",
                format!(
                    "no CA listed may issue `{td}`, which the handshake accepts: its callers \
                     are refused (issuer_not_allowed); bind the CA that issues it"
                ),
            ));
        }
    }
    for b in backends {
        let crate::model::UpstreamTls::IstioMutual(tls) = &b.policy.tls else {
            continue;
        };
        for san in &tls.subject_alt_names {
            let Ok(id) = crate::spiffe::SpiffeId::parse(san) else {
                continue;
            };
            let td = id.trust_domain();
            if issuable(td) || warned.iter().any(|w| w == td) {
                continue;
            }
            warned.push(td.to_string());
            let by = b.policy.source.as_deref().unwrap_or("its DestinationRule");
            warnings.push(mesh_gateway_warning(
                parsed,
                Code::IssuerNotBound,
                "spec.trust.issuers",
                format!(
                    "no CA listed may issue `{td}`, the trust domain {by} expects of \
                     ISTIO_MUTUAL upstream {}:{}: connections to it fail \
                     (issuer_not_allowed); bind the CA that issues it",
                    b.host, b.port
                ),
            ));
        }
    }
}

/// The positions of `found` in Istio's order (`sortConfigByCreationTime`): by
/// `metadata.creationTimestamp`, then, created in the same second or without one, by name,
/// then by namespace. Routes of several VirtualServices and DestinationRules of one host are
/// merged in that order.
pub(crate) fn istio_order<T>(found: &[(Origin, T)]) -> Vec<usize> {
    let key = |i: &usize| {
        found.get(*i).map(|(o, _)| {
            (
                o.created.clone().unwrap_or_default(),
                o.name.clone(),
                o.namespace.clone(),
            )
        })
    };
    let mut order: Vec<usize> = (0..found.len()).collect();
    order.sort_by_cached_key(key);
    order
}

/// Whether `t` is a time as Kubernetes writes one (`metav1.Time`: RFC 3339 in UTC, to the
/// second), which sorts as text.
fn is_kubernetes_time(t: &str) -> bool {
    const SHAPE: &[u8; 20] = b"dddd-dd-ddTdd:dd:ddZ";
    t.len() == SHAPE.len()
        && t.bytes().zip(SHAPE).all(|(c, s)| match s {
            b'd' => c.is_ascii_digit(),
            s => c == *s,
        })
}

/// A warning about a field of the (first) MeshGateway.
fn mesh_gateway_warning(
    parsed: &Parsed,
    code: Code,
    field: &str,
    message: impl Into<String>,
) -> Warning {
    match parsed.mesh_gateways.first() {
        Some((o, _)) => o.warn(code, Some(field), message),
        None => Warning::global(code, message),
    }
}

/// Where a resource came from, to name it in errors.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub file: PathBuf,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `metadata.annotations`; meshgate reads `istio.io/dry-run`.
    pub annotations: BTreeMap<String, String>,
    /// The line its document starts on, to tell two declarations apart.
    pub line: u64,
    /// `metadata.labels` (WorkloadEntries are selected by them).
    pub labels: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` (`2024-05-01T12:00:00Z`), as a namespace dump has it.
    pub created: Option<String>,
}

impl Origin {
    /// `Kind namespace/name` (`Kind namespace/<no name>` for a resource without one).
    pub fn resource(&self) -> String {
        let name = if self.name.is_empty() {
            "<no name>"
        } else {
            &self.name
        };
        format!("{} {}/{name}", self.kind, self.namespace)
    }

    /// A warning about `field` (or the whole resource) of this resource.
    pub fn warn(&self, code: Code, field: Option<&str>, message: impl Into<String>) -> Warning {
        Warning {
            code,
            file: Some(self.file.clone()),
            resource: Some(self.resource()),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// An error in `field` of this resource.
    pub fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            position: None,
            resource: Some(self.resource()),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// One error for each declared-but-unimplemented field that is present, with the nearest
    /// supported way where `fields::FIELDS` knows one.
    pub fn unsupported(&self, errors: &mut Vec<ConfigError>, path: &str, fields: &[(&str, bool)]) {
        for (name, present) in fields {
            if *present {
                let field = format!("{path}.{name}");
                let message = match crate::fields::advice(&self.kind, &field) {
                    Some(advice) => {
                        format!("this Istio field is not implemented by meshgate: {advice}")
                    }
                    None => "this Istio field is not implemented by meshgate".to_string(),
                };
                errors.push(self.error(field, message));
            }
        }
    }
}

/// Every recognised resource, typed.
#[derive(Default)]
pub(crate) struct Parsed {
    pub mesh_gateways: Vec<(Origin, raw::mesh_gateway::MeshGatewaySpec)>,
    pub kyma: Vec<(Origin, raw::istio::KymaIstioSpec)>,
    pub operators: Vec<(Origin, raw::istio::IstioOperatorSpec)>,
    pub gateways: Vec<(Origin, raw::gateway::GatewaySpec)>,
    pub virtual_services: Vec<(Origin, raw::virtual_service::VirtualServiceSpec)>,
    pub service_entries: Vec<(Origin, raw::service_entry::ServiceEntrySpec)>,
    pub destination_rules: Vec<(Origin, raw::destination_rule::DestinationRuleSpec)>,
    pub authorization_policies: Vec<(Origin, raw::authorization_policy::AuthorizationPolicySpec)>,
    pub services: Vec<(Origin, raw::kubernetes::ServiceSpec)>,
    pub workload_entries: Vec<(Origin, raw::service_entry::WorkloadEntry)>,
    pub request_authentications: Vec<(
        Origin,
        raw::request_authentication::RequestAuthenticationSpec,
    )>,
}

fn parse_document(
    doc: &Document,
    parsed: &mut Parsed,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    let header: raw::Header = match parse(doc, &mut Vec::new()) {
        Ok(h) => h,
        Err(e) => return errors.push(e),
    };
    let (Some(api_version), Some(kind)) = (header.api_version, header.kind) else {
        return errors.push(ConfigError {
            message: format!("{} has no apiVersion or kind", doc.describe()),
            position: Some((doc.line, 1)),
            ..ConfigError::file(&doc.file, "")
        });
    };
    let origin = Origin {
        file: doc.file.clone(),
        namespace: header
            .metadata
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        name: header.metadata.name.unwrap_or_default(),
        annotations: header.metadata.annotations.unwrap_or_default(),
        line: doc.line.saturating_add(first_content_line(&doc.text)),
        labels: header.metadata.labels.unwrap_or_default(),
        kind: kind.clone(),
        created: header.metadata.creation_timestamp,
    };
    if let Some(t) = origin.created.as_deref().filter(|t| !is_kubernetes_time(t)) {
        errors.push(origin.error(
            "metadata.creationTimestamp",
            format!("`{t}` is not a Kubernetes time such as 2024-05-01T12:00:00Z"),
        ));
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    if let Some(why) = skipped(group, &kind) {
        return warnings.push(origin.warn(Code::ResourceSkipped, None, format!("skipped: {why}")));
    }
    // `istioctl install -f` takes an IstioOperator without a name; every other kind needs one.
    // The resource's other errors are reported beside this one.
    if origin.name.is_empty() && kind != "IstioOperator" {
        errors.push(ConfigError {
            position: Some((origin.line, 1)),
            ..origin.error("metadata.name", "required")
        });
    }
    macro_rules! take {
        ($list:ident) => {
            take!($list, |origin: &Origin, errors: &mut Vec<ConfigError>| {
                errors.push(origin.error("spec", "required"));
                None
            })
        };
        ($list:ident, $absent:expr) => {{
            let mut unknown = Vec::new();
            match parse_all::<Resource<_>>(doc, &mut unknown) {
                Ok(r) => {
                    let spec = match r.spec {
                        Some(spec) => Some(spec),
                        None => ($absent)(&origin, errors),
                    };
                    report_unknown(doc, &origin, &unknown, errors);
                    if let Some(spec) = spec {
                        parsed.$list.push((origin, spec));
                    }
                }
                Err(found) => {
                    report_unknown(doc, &origin, &unknown, errors);
                    errors.extend(found.into_iter().map(|e| ConfigError {
                        resource: Some(origin.resource()),
                        ..e
                    }))
                }
            }
        }};
    }
    // Kyma's published samples have no spec, or `spec:` with only a comment: defaults.
    fn defaults<S: Default>(_: &Origin, _: &mut Vec<ConfigError>) -> Option<S> {
        Some(S::default())
    }
    match (group, version, kind.as_str()) {
        ("meshgate.dev", "v1alpha1", "MeshGateway") => take!(mesh_gateways),
        ("operator.kyma-project.io", "v1alpha1" | "v1alpha2", "Istio") => take!(kyma, defaults),
        ("install.istio.io", "v1alpha1", "IstioOperator") => take!(operators, defaults),
        ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "Gateway") => take!(gateways),
        ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "VirtualService") => {
            take!(virtual_services)
        }
        ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "ServiceEntry") => {
            take!(service_entries)
        }
        ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "DestinationRule") => {
            take!(destination_rules)
        }
        ("security.istio.io", "v1" | "v1beta1", "AuthorizationPolicy") => {
            take!(authorization_policies)
        }
        ("networking.istio.io", "v1" | "v1beta1" | "v1alpha3", "WorkloadEntry") => {
            take!(workload_entries)
        }
        ("", "v1", "Service") => take!(services),
        ("security.istio.io", "v1" | "v1beta1", "RequestAuthentication") => {
            take!(request_authentications)
        }
        _ => errors.push(origin.error(
            "kind",
            format!("unknown kind `{kind}` of apiVersion `{api_version}`"),
        )),
    }
}

/// How many lines into `text` its first line with content is (0 for the first).
fn first_content_line(text: &str) -> u64 {
    text.lines()
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---"
        })
        .unwrap_or(0) as u64
}

/// Two resources of one kind with one `namespace/name`: Kubernetes would keep one, silently;
/// meshgate refuses both, naming where each is.
fn duplicates(parsed: &Parsed, errors: &mut Vec<ConfigError>) {
    let origins = parsed
        .mesh_gateways
        .iter()
        .map(|(o, _)| o)
        .chain(parsed.kyma.iter().map(|(o, _)| o))
        .chain(parsed.operators.iter().map(|(o, _)| o))
        .chain(parsed.gateways.iter().map(|(o, _)| o))
        .chain(parsed.virtual_services.iter().map(|(o, _)| o))
        .chain(parsed.service_entries.iter().map(|(o, _)| o))
        .chain(parsed.destination_rules.iter().map(|(o, _)| o))
        .chain(parsed.authorization_policies.iter().map(|(o, _)| o))
        .chain(parsed.services.iter().map(|(o, _)| o))
        .chain(parsed.workload_entries.iter().map(|(o, _)| o));
    let mut seen: std::collections::HashMap<(&str, &str, &str), &Origin> =
        std::collections::HashMap::new();
    for o in origins {
        let key = (o.kind.as_str(), o.namespace.as_str(), o.name.as_str());
        if let Some(first) = seen.insert(key, o) {
            errors.push(o.error(
                "metadata.name",
                format!(
                    "declared twice: at {}:{} and at {}:{}; Kubernetes would keep only one",
                    first.file.display(),
                    first.line,
                    o.file.display(),
                    o.line
                ),
            ));
        }
    }
}

/// Why a kind is skipped, when it cannot change what this proxy does.
fn skipped(group: &str, kind: &str) -> Option<&'static str> {
    Some(match (group, kind) {
        (
            "apps",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ControllerRevision",
        )
        | ("", "Pod" | "ReplicationController")
        | ("batch", "Job" | "CronJob") => {
            "a workload: meshgate runs no Pods; its MeshGateway says what this proxy is"
        }
        ("", "ServiceAccount") => {
            "an identity's name: meshgate's identity is in its certificate files"
        }
        ("", "ConfigMap") => "configuration for Pods: meshgate reads its files with -c",
        ("", "Secret") => {
            "its contents are never read nor printed: name certificate files in the MeshGateway \
             or a Gateway server"
        }
        ("", "Namespace" | "ResourceQuota" | "LimitRange") => "a Kubernetes namespace setting",
        (
            "rbac.authorization.k8s.io",
            "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding",
        ) => "Kubernetes API permissions",
        ("autoscaling", "HorizontalPodAutoscaler") | ("policy", "PodDisruptionBudget") => {
            "scaling and disruption of Pods"
        }
        ("security.istio.io", "PeerAuthentication") => {
            "it sets sidecars' inbound mTLS; a gateway's TLS is set by its Gateway servers"
        }
        ("telemetry.istio.io", "Telemetry") => {
            "metrics, tracing and access log providers; meshgate's are its own (see accessLogFile)"
        }
        ("networking.istio.io", "Sidecar") => "it configures sidecars, not gateways",
        _ => return None,
    })
}

/// Fields of the document that no struct declares, each an error with its position.
fn report_unknown(
    doc: &Document,
    o: &Origin,
    unknown: &[Vec<PathSegment>],
    errors: &mut Vec<ConfigError>,
) {
    for path in unknown {
        let Some(PathSegment::Key(name)) = path.last() else {
            continue;
        };
        errors.push(ConfigError {
            position: source::locate(doc, path),
            ..o.error(field_path(path), format!("unknown field `{name}`"))
        });
    }
}

/// `spec.servers[0].tls`.
fn field_path(path: &[PathSegment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            PathSegment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Deserializes one document as `parse` does and, when that fails, finds every other error in
/// it: the value at fault is made null (most fields are optional) and the document read again;
/// a field that must have a value is then left out. This goes on until the document reads or
/// nothing is left to take out. Errors that only follow from these changes are not reported.
fn parse_all<T: DeserializeOwned>(
    doc: &Document,
    unknown: &mut Vec<Vec<PathSegment>>,
) -> Result<T, Vec<ConfigError>> {
    /// Enough for any resource written by hand; a bound on the work a broken file can cause.
    const MOST: usize = 64;
    let (mut error, mut path) = match parse_at(doc, unknown) {
        Ok(value) => return Ok(value),
        Err(found) => *found,
    };
    let mut found = Vec::new();
    // The entry changed last, and whether it was left out (else made null).
    let mut last: Option<(Vec<PathSegment>, bool)> = None;
    let mut left_out: Vec<Vec<PathSegment>> = Vec::new();
    let mut scratch = Document {
        file: doc.file.clone(),
        index: doc.index,
        item: doc.item,
        text: doc.text.clone(),
        line: doc.line,
    };
    for _ in 0..MOST {
        let missing = missing_field(&error.message).map(str::to_string);
        let caused = match &missing {
            // Only a field left out: any other is missing as written.
            Some(field) => left_out.iter().any(|gone| {
                gone.len() == path.len().saturating_add(1)
                    && gone.starts_with(&path)
                    && gone.last() == Some(&PathSegment::Key(field.clone()))
            }),
            // A null where a value must be, reported at the entry or at its mapping (which is
            // null itself when its only entry was left out).
            None => last
                .as_ref()
                .is_some_and(|(changed, _)| changed.starts_with(&path)),
        };
        if !caused {
            found.push(error);
        }
        let (target, leave_out) = match last.take() {
            Some((changed, false)) if caused && missing.is_none() => (changed, true),
            _ => {
                // The entry the error is in, or for a missing field, its mapping.
                while !matches!(path.last(), None | Some(PathSegment::Key(_))) {
                    path.pop();
                }
                (path, false)
            }
        };
        let changed = if leave_out {
            source::blank_entry(&scratch.text, &target)
        } else {
            source::null_value(&scratch.text, &target)
        };
        let Some(text) = changed else {
            break;
        };
        scratch.text = text;
        if leave_out {
            left_out.push(target.clone());
        }
        last = Some((target, leave_out));
        match parse_at::<T>(&scratch, unknown) {
            Ok(_) => break,
            Err(next) => (error, path) = *next,
        }
    }
    let mut seen = Vec::new();
    unknown.retain(|p| {
        let new = !seen.contains(p);
        seen.push(p.clone());
        new
    });
    Err(found)
}

/// The field a "missing field `name`" error names.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Deserializes one document, keeping the field path and the line and column of an error, and
/// collecting into `unknown` the path of every field that no struct declares (the metadata
/// Kubernetes adds and `status` are not collected).
fn parse<T: DeserializeOwned>(
    doc: &Document,
    unknown: &mut Vec<Vec<PathSegment>>,
) -> Result<T, ConfigError> {
    parse_at(doc, unknown).map_err(|found| found.0)
}

/// `parse`, with the path of the error as segments.
fn parse_at<T: DeserializeOwned>(
    doc: &Document,
    unknown: &mut Vec<Vec<PathSegment>>,
) -> Result<T, Box<(ConfigError, Vec<PathSegment>)>> {
    let mut path = None;
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut ignored = |p: serde_ignored::Path<'_>| {
        let segments = segments(&p);
        // Declared `Option<IgnoredAny>` fields (skipped or unsupported settings) end in `Some`;
        // counted lists end in an index. Only a map key is a field nobody declared.
        let declared = !matches!(p, serde_ignored::Path::Map { .. });
        let kubernetes = matches!(
            segments.first(),
            Some(PathSegment::Key(k)) if k == "metadata" || k == "status"
        );
        if !declared && !kubernetes {
            unknown.push(segments);
        }
    };
    let result = serde_saphyr::with_deserializer_from_str_with_options(&doc.text, options, |de| {
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut ignored))
            .map_err(|e| {
                path = Some(e.path().clone());
                e.into_inner()
            })
    });
    result.map_err(|e| {
        let segments = path.as_ref().map_or_else(Vec::new, |p| {
            p.iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Seq { index } => Some(PathSegment::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => {
                        Some(PathSegment::Key(key.clone()))
                    }
                    _ => None,
                })
                .collect()
        });
        let error = ConfigError {
            file: doc.file.clone(),
            // Both lines are 1-based.
            position: e.location().map(|l| {
                (
                    l.line().saturating_add(doc.line).saturating_sub(1),
                    l.column(),
                )
            }),
            resource: None,
            field: path.map(|p| p.to_string()).filter(|p| p != "."),
            message: yaml_message(&e),
        };
        Box::new((error, segments))
    })
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<PathSegment> {
    let mut out = match path {
        serde_ignored::Path::Root => return Vec::new(),
        serde_ignored::Path::Seq { parent, .. }
        | serde_ignored::Path::Map { parent, .. }
        | serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        serde_ignored::Path::Seq { index, .. } => out.push(PathSegment::Index(*index)),
        serde_ignored::Path::Map { key, .. } => out.push(PathSegment::Key(key.clone())),
        _ => {}
    }
    out
}

/// The parser's message without the position it appends (we print the position first).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Decodes a protobuf `bytes` field as its JSON mapping writes it (Istio's YAML is that JSON):
/// standard or URL-safe base64 (not both in one value), with or without padding, line breaks
/// skipped as Go's decoder skips them. `None` for anything else.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    let standard = text.contains(['+', '/']);
    let url_safe = text.contains(['-', '_']);
    if standard && url_safe {
        return None;
    }
    let digits = text.trim_end_matches('=');
    // Padding completes a group of four, and is at most two.
    let padding = text.len().saturating_sub(digits.len());
    if padding > 2 || (padding > 0 && !text.len().is_multiple_of(4)) {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len());
    let mut group: u32 = 0;
    let mut bits: u32 = 0;
    for c in digits.bytes() {
        let c = match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        };
        let value = DIGITS.iter().position(|&d| d == c)?;
        group = group.wrapping_shl(6) | value as u32;
        bits = bits.wrapping_add(6);
        if bits >= 8 {
            bits = bits.wrapping_sub(8);
            out.push(group.wrapping_shr(bits) as u8);
            group &= 1u32.wrapping_shl(bits).wrapping_sub(1);
        }
    }
    // One digit past a whole group carries less than a byte.
    (bits < 6).then_some(out)
}

/// Resolves a path named in `file` relative to that file's directory.
pub(crate) fn relative_to(file: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    file.parent().unwrap_or(Path::new(".")).join(p)
}

/// Istio's default root namespace.
pub(crate) const ROOT_NAMESPACE: &str = "istio-system";

/// Kubernetes' namespace for a resource that names none.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

#[cfg(test)]
mod tests;
