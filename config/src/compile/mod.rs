//! Raw resources to the runtime model, one file per kind, collecting every error.
//!
//! Order: parse every document by its kind; then the MeshGateway and trust domain; then
//! ServiceEntries (backends); then Gateways selected by this proxy's labels (listeners); then
//! VirtualServices bound to those Gateways (routes).

mod authorization_policy;
mod destination_rule;
mod gateway;
mod mesh_gateway;
mod outbound;
mod service_entry;
mod virtual_service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::ConfigError;
use crate::model::Model;
use crate::raw::{self, Resource};
use crate::source::Document;

/// Compiles documents into a model, or returns `None` with the problems in `errors`.
pub fn compile(
    documents: &[Document],
    files: Vec<PathBuf>,
    errors: &mut Vec<ConfigError>,
) -> Option<Model> {
    let mut parsed = Parsed::default();
    for doc in documents {
        parse_document(doc, &mut parsed, errors);
    }
    duplicates(&parsed, errors);
    let mut warnings = Vec::new();
    let paths = mesh_gateway::path_normalization(&parsed, errors, &mut warnings);
    let proxy = mesh_gateway::compile(&parsed.mesh_gateways, paths, errors);
    let trust = mesh_gateway::trust(&parsed, errors, &mut warnings);
    let mut backends = service_entry::Backends::new();
    service_entry::compile(
        &parsed.service_entries,
        &parsed.workload_entries,
        &mut backends,
        errors,
    );
    for (o, spec) in &parsed.services {
        service_entry::service(o, spec, &mut backends, errors);
    }
    let rules = destination_rule::compile(&parsed.destination_rules, errors);
    let mut listeners = match &proxy {
        Some((proxy, listen)) => gateway::compile(&parsed.gateways, &proxy.labels, listen, errors),
        None => Vec::new(),
    };
    if let Some(address) = proxy.as_ref().and_then(|(p, _)| p.outbound) {
        if !address.ip().is_loopback() {
            warnings.push(format!(
                "spec.outbound.address {address} is not a loopback address: any client that can \
                 reach it can send requests as this proxy's identity"
            ));
        }
    }
    let outbound = proxy.as_ref().and_then(|(p, _)| p.outbound).map(|address| {
        listeners.push(outbound::listener(address));
        listeners.len() - 1
    });
    let owned = proxy
        .as_ref()
        .map(|(p, _)| p.tagging.owned().to_vec())
        .unwrap_or_default();
    let proxy_namespace = parsed
        .mesh_gateways
        .first()
        .map_or(DEFAULT_NAMESPACE, |(o, _)| o.namespace.as_str());
    let no_labels = raw::Labels::new();
    let workload = virtual_service::Proxy {
        namespace: proxy_namespace,
        labels: proxy.as_ref().map_or(&no_labels, |(p, _)| &p.labels),
    };
    virtual_service::bind(
        &parsed.virtual_services,
        &mut listeners,
        &mut backends,
        &rules,
        &owned,
        &workload,
        errors,
        &mut warnings,
    );
    if let Some(i) = outbound {
        outbound::add_services(&mut listeners[i], &mut backends, &rules, proxy_namespace);
        for (host, port, d) in backends.declared_other() {
            warnings.push(format!(
                "{}: port {port} of `{host}` is {}: the outbound listener does not serve it \
                 (meshgate proxies HTTP; originate TLS from an HTTP port with a DestinationRule \
                 instead)",
                d.source,
                d.protocol_name()
            ));
        }
    }
    for (rule, host, subset) in rules.subsets() {
        let used = backends.list().iter().any(|b| {
            b.subset.as_deref() == Some(subset)
                && crate::model::HostMatcher::parse(&host).is_some_and(|h| h.matches(&b.host))
        });
        if !used {
            warnings.push(format!(
                "{rule}: subset `{subset}` of `{host}` is named by no route"
            ));
        }
    }
    if let Some((_, listen)) = &proxy {
        service_entry::resolve(backends.list_mut(), &listen.resolve);
    }
    let workload = parsed
        .mesh_gateways
        .first()
        .map(|(o, spec)| authorization_policy::Workload {
            namespace: &o.namespace,
            root_namespace: spec.root_namespace.as_deref().unwrap_or(ROOT_NAMESPACE),
            labels: &spec.labels,
        });
    let policies = authorization_policy::compile(
        &parsed.authorization_policies,
        workload.as_ref(),
        trust.as_ref(),
        &paths,
        errors,
        &mut warnings,
    );
    if let Some(t) = trust
        .as_ref()
        .filter(|_| listeners.iter().any(|l| l.tls.is_some()))
    {
        if t.allowed_trust_domains.is_none() && t.issuers.is_empty() {
            warnings.push(
                "spec.trust has neither a trustDomains allow-list nor issuer binding: any mesh whose \
                 certificates chain to the shared root is accepted at the handshake, and one mesh's \
                 CA can issue another mesh's identities"
                    .into(),
            );
        } else if t.issuers.is_empty() {
            warnings.push(format!(
                "spec.trust.issuers is empty: under a shared root, any mesh's CA can issue \
                 identities of every trust domain the allow-list admits, `{}` (this mesh) \
                 included; bind each intermediate CA to its trust domains",
                t.trust_domain
            ));
        }
    }
    if let (Some((p, _)), [(o, _)]) = (&proxy, parsed.mesh_gateways.as_slice()) {
        if p.identity.is_none() {
            for l in listeners.iter().filter(|l| l.tls.is_some()) {
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
        warnings
            .push("no Gateway selects this MeshGateway's labels: no listener will be bound".into());
    }
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
        warnings,
    })
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
    pub line: usize,
    /// `metadata.labels` (WorkloadEntries are selected by them).
    pub labels: BTreeMap<String, String>,
}

impl Origin {
    /// `Kind namespace/name`.
    pub fn resource(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
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
}

fn parse_document(doc: &Document, parsed: &mut Parsed, errors: &mut Vec<ConfigError>) {
    let header: raw::Header = match parse(doc) {
        Ok(h) => h,
        Err(e) => return errors.push(e),
    };
    let (Some(api_version), Some(kind)) = (header.api_version, header.kind) else {
        return errors.push(ConfigError {
            message: format!("document {} has no apiVersion or kind", doc.index + 1),
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
        line: first_line(&doc.text),
        labels: header.metadata.labels.unwrap_or_default(),
        kind: kind.clone(),
    };
    if origin.name.is_empty() {
        return errors.push(origin.error("metadata.name", "required"));
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    macro_rules! take {
        ($list:ident) => {
            match parse::<Resource<_>>(doc) {
                Ok(r) => parsed.$list.push((origin, r.spec)),
                Err(e) => errors.push(ConfigError {
                    resource: Some(origin.resource()),
                    ..e
                }),
            }
        };
    }
    match (group, version, kind.as_str()) {
        ("meshgate.dev", "v1alpha1", "MeshGateway") => take!(mesh_gateways),
        ("operator.kyma-project.io", "v1alpha1" | "v1alpha2", "Istio") => take!(kyma),
        ("install.istio.io", "v1alpha1", "IstioOperator") => take!(operators),
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
        _ => errors.push(origin.error(
            "kind",
            format!("unknown kind `{kind}` of apiVersion `{api_version}`"),
        )),
    }
}

/// The 1-based line of a document's first line with content (documents are padded with the
/// lines before them).
fn first_line(text: &str) -> usize {
    text.lines()
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---"
        })
        .map_or(1, |i| i + 1)
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

/// Deserializes one document, keeping the field path and the line and column of an error.
fn parse<T: DeserializeOwned>(doc: &Document) -> Result<T, ConfigError> {
    let mut path = None;
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let result = serde_saphyr::with_deserializer_from_str_with_options(&doc.text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    result.map_err(|e| ConfigError {
        file: doc.file.clone(),
        position: e.location().map(|l| (l.line(), l.column())),
        resource: None,
        field: path.filter(|p| p != "."),
        message: yaml_message(&e),
    })
}

/// The parser's message without the position it appends (we print the position first).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
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
const ROOT_NAMESPACE: &str = "istio-system";

/// Kubernetes' namespace for a resource that names none.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

#[cfg(test)]
mod tests;
