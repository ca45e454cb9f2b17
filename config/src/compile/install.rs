//! Kyma's `Istio` and `IstioOperator` -> the mesh settings meshgate honours.
//!
//! Honoured: the trust domain and its aliases, `rootNamespace`, `accessLogFile` and
//! `accessLogEncoding`, `outboundTrafficPolicy.mode`, `enableTracing`,
//! `defaultConfig.gatewayTopology.{numTrustedProxies, forwardClientCertDetails}` (Kyma's
//! `numTrustedProxies` and `forwardClientCertDetails`), `caCertificates` (onto issuer binding),
//! `tlsDefaults.ecdhCurves` and `pathNormalization`. Installation-only settings are skipped with
//! one warning per resource that lists them; a mesh setting that would change traffic and is
//! not implemented is an error. A setting given twice with different values is an error that
//! names both places.

use std::path::PathBuf;

use super::{relative_to, Origin, Parsed};
use crate::error::ConfigError;
use crate::model::path::{NormalizationMode, PathNormalization};
use crate::model::{
    AccessLogEncoding, BundleEndpoint, BundleSource, EcdhCurve, EndpointProfile, ForwardClientCert,
    IssuerBinding, IssuerKey, OutboundPolicy, TrustBundle,
};
use crate::raw::istio::{present, IstioOperatorSpec, KymaIstioSpec, MeshConfig};
use crate::spiffe::TrustDomain;
use crate::warning::{Code, Warning};

/// A value and the place that set it (`IstioOperator istio-system/x spec.meshConfig.y`).
#[derive(Debug, Clone)]
pub(crate) struct Set<T> {
    pub value: T,
    pub at: String,
}

/// What the installation resources say, each setting with where it was set.
#[derive(Debug, Default)]
pub(crate) struct Install {
    pub trust_domain: Option<Set<TrustDomain>>,
    pub aliases: Vec<TrustDomain>,
    pub root_namespace: Option<Set<String>>,
    /// `accessLogFile`: `None` inside when set to the empty string (off).
    pub access_log: Option<Set<Option<PathBuf>>>,
    pub access_log_encoding: Option<Set<AccessLogEncoding>>,
    pub outbound: Option<Set<OutboundPolicy>>,
    pub tracing: Option<Set<bool>>,
    pub num_trusted_proxies: Option<Set<u32>>,
    /// `gatewayTopology.proxyProtocol` is present.
    pub proxy_protocol: bool,
    pub forward_client_cert: Option<Set<ForwardClientCert>>,
    pub issuers: Vec<IssuerBinding>,
    /// `meshConfig.caCertificates[]` with `trustDomains`, as roots of those trust domains.
    pub bundles: Vec<TrustBundle>,
    pub ecdh_curves: Option<Vec<EcdhCurve>>,
    pub path_normalization: Option<PathNormalization>,
}

/// Reads every Kyma `Istio` and `IstioOperator`.
pub(crate) fn compile(
    parsed: &Parsed,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Install {
    let mut install = Install::default();
    for (o, spec) in &parsed.kyma {
        kyma(o, spec, &mut install, errors, warnings);
    }
    for (o, spec) in &parsed.operators {
        operator(o, spec, &mut install, errors, warnings);
    }
    install
}

fn kyma(
    o: &Origin,
    spec: &KymaIstioSpec,
    install: &mut Install,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    let mut skipped = present(&[
        ("spec.components", &spec.components),
        ("spec.experimental", &spec.experimental),
        ("spec.compatibilityMode", &spec.compatibility_mode),
        (
            "spec.networkPoliciesEnabled",
            &spec.network_policies_enabled,
        ),
    ]);
    if let Some(config) = &spec.config {
        skipped.extend(present(&[
            (
                "spec.config.gatewayExternalTrafficPolicy",
                &config.gateway_external_traffic_policy,
            ),
            ("spec.config.enableDNSProxying", &config.enable_dns_proxying),
            ("spec.config.authorizers", &config.authorizers),
            ("spec.config.telemetry", &config.telemetry),
            ("spec.config.proxyStatsMatcher", &config.proxy_stats_matcher),
        ]));
        if let Some(value) = &config.trust_domain {
            let field = "spec.config.trustDomain";
            if value.contains('_') {
                warnings.push(o.warn(
                    Code::TrustDomainRejectedByIstio,
                    Some(field),
                    format!("`{value}` contains `_`, which Istio rejects"),
                ));
            }
            if let Some(td) = trust_domain(o, field, value, errors) {
                set(&mut install.trust_domain, td, o, field, errors);
            }
        }
        if let Some(n) = config.num_trusted_proxies {
            let field = "spec.config.numTrustedProxies";
            set(&mut install.num_trusted_proxies, n, o, field, errors);
        }
        if let Some(value) = &config.forward_client_cert_details {
            let field = "spec.config.forwardClientCertDetails";
            if let Some(mode) = forward_client_cert(o, field, value, errors) {
                set(&mut install.forward_client_cert, mode, o, field, errors);
            }
        }
    }
    skipped_warning(o, &skipped, warnings);
}

fn operator(
    o: &Origin,
    spec: &IstioOperatorSpec,
    install: &mut Install,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    let mut skipped = present(&[
        ("spec.profile", &spec.profile),
        ("spec.installPackagePath", &spec.install_package_path),
        ("spec.hub", &spec.hub),
        ("spec.tag", &spec.tag),
        ("spec.resourceSuffix", &spec.resource_suffix),
        ("spec.revision", &spec.revision),
        ("spec.compatibilityVersion", &spec.compatibility_version),
        ("spec.namespace", &spec.namespace),
        ("spec.components", &spec.components),
        ("spec.addonComponents", &spec.addon_components),
        ("spec.values", &spec.values),
        ("spec.unvalidatedValues", &spec.unvalidated_values),
    ]);
    if let Some(mesh) = &spec.mesh_config {
        skipped.extend(mesh_config(o, mesh, install, errors, warnings));
    }
    skipped_warning(o, &skipped, warnings);
}

/// Reads `spec.meshConfig`; returns the fields it skipped.
fn mesh_config(
    o: &Origin,
    mesh: &MeshConfig,
    install: &mut Install,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Vec<&'static str> {
    let path = "spec.meshConfig";
    o.unsupported(
        errors,
        path,
        &[
            ("connectTimeout", mesh.connect_timeout.is_some()),
            ("tcpKeepalive", mesh.tcp_keepalive.is_some()),
            ("localityLbSetting", mesh.locality_lb_setting.is_some()),
            ("dnsRefreshRate", mesh.dns_refresh_rate.is_some()),
            ("discoverySelectors", mesh.discovery_selectors.is_some()),
            (
                "defaultHttpRetryPolicy",
                mesh.default_http_retry_policy.is_some(),
            ),
            ("compliancePolicy", mesh.compliance_policy.is_some()),
        ],
    );
    let mut skipped = present(&[
        ("spec.meshConfig.accessLogFormat", &mesh.access_log_format),
        (
            "spec.meshConfig.enableEnvoyAccessLogService",
            &mesh.enable_envoy_access_log_service,
        ),
        (
            "spec.meshConfig.disableEnvoyListenerLog",
            &mesh.disable_envoy_listener_log,
        ),
        (
            "spec.meshConfig.enablePrometheusMerge",
            &mesh.enable_prometheus_merge,
        ),
        (
            "spec.meshConfig.extensionProviders",
            &mesh.extension_providers,
        ),
        ("spec.meshConfig.defaultProviders", &mesh.default_providers),
        ("spec.meshConfig.ingressClass", &mesh.ingress_class),
        ("spec.meshConfig.ingressService", &mesh.ingress_service),
        (
            "spec.meshConfig.ingressControllerMode",
            &mesh.ingress_controller_mode,
        ),
        ("spec.meshConfig.ingressSelector", &mesh.ingress_selector),
        ("spec.meshConfig.proxyListenPort", &mesh.proxy_listen_port),
        (
            "spec.meshConfig.proxyInboundListenPort",
            &mesh.proxy_inbound_listen_port,
        ),
        ("spec.meshConfig.proxyHttpPort", &mesh.proxy_http_port),
        (
            "spec.meshConfig.protocolDetectionTimeout",
            &mesh.protocol_detection_timeout,
        ),
        (
            "spec.meshConfig.inboundTrafficPolicy",
            &mesh.inbound_traffic_policy,
        ),
        ("spec.meshConfig.enableAutoMtls", &mesh.enable_auto_mtls),
        ("spec.meshConfig.configSources", &mesh.config_sources),
        (
            "spec.meshConfig.inboundClusterStatName",
            &mesh.inbound_cluster_stat_name,
        ),
        (
            "spec.meshConfig.outboundClusterStatName",
            &mesh.outbound_cluster_stat_name,
        ),
        ("spec.meshConfig.certificates", &mesh.certificates),
        ("spec.meshConfig.ca", &mesh.ca),
        (
            "spec.meshConfig.verifyCertificateAtClient",
            &mesh.verify_certificate_at_client,
        ),
        ("spec.meshConfig.serviceSettings", &mesh.service_settings),
        (
            "spec.meshConfig.serviceScopeConfigs",
            &mesh.service_scope_configs,
        ),
        ("spec.meshConfig.meshMTLS", &mesh.mesh_mtls),
    ]);
    if let Some(value) = &mesh.trust_domain {
        let field = "spec.meshConfig.trustDomain";
        if let Some(td) = trust_domain(o, field, value, errors) {
            set(&mut install.trust_domain, td, o, field, errors);
        }
    }
    for (i, value) in mesh.trust_domain_aliases.iter().enumerate() {
        let field = format!("spec.meshConfig.trustDomainAliases[{i}]");
        install
            .aliases
            .extend(trust_domain(o, &field, value, errors));
    }
    if let Some(ns) = &mesh.root_namespace {
        let field = "spec.meshConfig.rootNamespace";
        if ns.is_empty() {
            errors.push(o.error(field, "must not be empty"));
        } else {
            set(&mut install.root_namespace, ns.clone(), o, field, errors);
        }
    }
    if let Some(file) = &mesh.access_log_file {
        // Istio: an empty value turns the access log off.
        let path = (!file.is_empty()).then(|| relative_to(&o.file, file));
        set(
            &mut install.access_log,
            path,
            o,
            "spec.meshConfig.accessLogFile",
            errors,
        );
    }
    if let Some(encoding) = &mesh.access_log_encoding {
        let field = "spec.meshConfig.accessLogEncoding";
        let value = match encoding.as_str() {
            "TEXT" => Some(AccessLogEncoding::Text),
            "JSON" => Some(AccessLogEncoding::Json),
            other => {
                errors.push(o.error(field, format!("`{other}` is not TEXT or JSON")));
                None
            }
        };
        if let Some(v) = value {
            set(&mut install.access_log_encoding, v, o, field, errors);
        }
    }
    if let Some(policy) = &mesh.outbound_traffic_policy {
        let field = "spec.meshConfig.outboundTrafficPolicy.mode";
        let value = match policy.mode.as_deref() {
            None | Some("ALLOW_ANY") => Some(OutboundPolicy::AllowAny),
            Some("REGISTRY_ONLY") => Some(OutboundPolicy::RegistryOnly),
            Some(other) => {
                errors.push(o.error(
                    field,
                    format!("`{other}` is not ALLOW_ANY or REGISTRY_ONLY"),
                ));
                None
            }
        };
        if let Some(v) = value {
            set(&mut install.outbound, v, o, field, errors);
        }
    }
    if let Some(on) = mesh.enable_tracing {
        set(
            &mut install.tracing,
            on,
            o,
            "spec.meshConfig.enableTracing",
            errors,
        );
    }
    if let Some(policy) = &mesh.h2_upgrade_policy {
        if policy != "DO_NOT_UPGRADE" {
            errors.push(o.error(
                "spec.meshConfig.h2UpgradePolicy",
                format!(
                    "`{policy}` is not implemented: meshgate speaks HTTP/2 upstream only to \
                     HTTP2 and GRPC ports (DO_NOT_UPGRADE)"
                ),
            ));
        }
    }
    for (field, list) in [
        ("defaultServiceExportTo", &mesh.default_service_export_to),
        (
            "defaultVirtualServiceExportTo",
            &mesh.default_virtual_service_export_to,
        ),
        (
            "defaultDestinationRuleExportTo",
            &mesh.default_destination_rule_export_to,
        ),
    ] {
        if list.as_ref().is_some_and(|l| l.iter().any(|v| v != "*")) {
            errors.push(o.error(
                format!("{path}.{field}"),
                "only `*` is implemented: meshgate reads every resource it is given",
            ));
        }
    }
    if let Some(config) = &mesh.default_config {
        let dc = "spec.meshConfig.defaultConfig";
        o.unsupported(
            errors,
            dc,
            &[("proxyHeaders", config.proxy_headers.is_some())],
        );
        skipped.extend(present(&[
            (
                "spec.meshConfig.defaultConfig.holdApplicationUntilProxyStarts",
                &config.hold_application_until_proxy_starts,
            ),
            (
                "spec.meshConfig.defaultConfig.proxyMetadata",
                &config.proxy_metadata,
            ),
            (
                "spec.meshConfig.defaultConfig.discoveryAddress",
                &config.discovery_address,
            ),
            ("spec.meshConfig.defaultConfig.tracing", &config.tracing),
            (
                "spec.meshConfig.defaultConfig.concurrency",
                &config.concurrency,
            ),
            (
                "spec.meshConfig.defaultConfig.terminationDrainDuration",
                &config.termination_drain_duration,
            ),
            (
                "spec.meshConfig.defaultConfig.proxyStatsMatcher",
                &config.proxy_stats_matcher,
            ),
            ("spec.meshConfig.defaultConfig.image", &config.image),
            (
                "spec.meshConfig.defaultConfig.statusPort",
                &config.status_port,
            ),
            (
                "spec.meshConfig.defaultConfig.drainDuration",
                &config.drain_duration,
            ),
            (
                "spec.meshConfig.defaultConfig.configPath",
                &config.config_path,
            ),
            (
                "spec.meshConfig.defaultConfig.binaryPath",
                &config.binary_path,
            ),
            (
                "spec.meshConfig.defaultConfig.serviceCluster",
                &config.service_cluster,
            ),
            (
                "spec.meshConfig.defaultConfig.tracingServiceName",
                &config.tracing_service_name,
            ),
            (
                "spec.meshConfig.defaultConfig.privateKeyProvider",
                &config.private_key_provider,
            ),
            (
                "spec.meshConfig.defaultConfig.caCertificatesPem",
                &config.ca_certificates_pem,
            ),
            (
                "spec.meshConfig.defaultConfig.readinessProbe",
                &config.readiness_probe,
            ),
            (
                "spec.meshConfig.defaultConfig.extraStatTags",
                &config.extra_stat_tags,
            ),
            (
                "spec.meshConfig.defaultConfig.envoyMetricsService",
                &config.envoy_metrics_service,
            ),
            (
                "spec.meshConfig.defaultConfig.envoyAccessLogService",
                &config.envoy_access_log_service,
            ),
            (
                "spec.meshConfig.defaultConfig.statNameLength",
                &config.stat_name_length,
            ),
            (
                "spec.meshConfig.defaultConfig.proxyAdminPort",
                &config.proxy_admin_port,
            ),
            (
                "spec.meshConfig.defaultConfig.controlPlaneAuthPolicy",
                &config.control_plane_auth_policy,
            ),
            (
                "spec.meshConfig.defaultConfig.customConfigFile",
                &config.custom_config_file,
            ),
            ("spec.meshConfig.defaultConfig.sds", &config.sds),
            (
                "spec.meshConfig.defaultConfig.interceptionMode",
                &config.interception_mode,
            ),
            (
                "spec.meshConfig.defaultConfig.runtimeValues",
                &config.runtime_values,
            ),
            (
                "spec.meshConfig.defaultConfig.fileFlushInterval",
                &config.file_flush_interval,
            ),
            (
                "spec.meshConfig.defaultConfig.fileFlushMinSizeKb",
                &config.file_flush_min_size_kb,
            ),
            (
                "spec.meshConfig.defaultConfig.proxyBootstrapTemplatePath",
                &config.proxy_bootstrap_template_path,
            ),
            ("spec.meshConfig.defaultConfig.meshId", &config.mesh_id),
            (
                "spec.meshConfig.defaultConfig.istioVersions",
                &config.istio_versions,
            ),
        ]));
        if let Some(topology) = &config.gateway_topology {
            let gt = "spec.meshConfig.defaultConfig.gatewayTopology";
            o.unsupported(
                errors,
                gt,
                &[(
                    "setCurrentClientCertDetails",
                    topology.set_current_client_cert_details.is_some(),
                )],
            );
            if topology.proxy_protocol.is_some() {
                install.proxy_protocol = true;
            }
            if let Some(n) = topology.num_trusted_proxies {
                let field = "spec.meshConfig.defaultConfig.gatewayTopology.numTrustedProxies";
                set(&mut install.num_trusted_proxies, n, o, field, errors);
            }
            if let Some(value) = &topology.forward_client_cert_details {
                let field =
                    "spec.meshConfig.defaultConfig.gatewayTopology.forwardClientCertDetails";
                if let Some(mode) = forward_client_cert(o, field, value, errors) {
                    set(&mut install.forward_client_cert, mode, o, field, errors);
                }
            }
        }
    }
    for (i, ca) in mesh.ca_certificates.iter().flatten().enumerate() {
        let field = format!("{path}.caCertificates[{i}]");
        o.unsupported(
            errors,
            &field,
            &[("certSigners", ca.cert_signers.is_some())],
        );
        if let Some(url) = &ca.spiffe_bundle_url {
            // Istio fetches it over Web PKI with the system's roots; `host:port` alone means
            // https.
            let url = if url.contains("://") {
                url.clone()
            } else {
                format!("https://{url}")
            };
            if ca.pem.is_some() {
                errors.push(o.error(
                    format!("{field}.spiffeBundleUrl"),
                    "one of pem and spiffeBundleUrl, not both",
                ));
                continue;
            }
            if !url.starts_with("https://") || url.parse::<http::Uri>().is_err() {
                errors.push(o.error(
                    format!("{field}.spiffeBundleUrl"),
                    format!("`{url}` is not an https URL"),
                ));
                continue;
            }
            if ca.trust_domains.is_empty() {
                errors.push(o.error(
                    format!("{field}.trustDomains"),
                    "required by meshgate: the trust domains whose bundle the endpoint serves",
                ));
                continue;
            }
            for (j, td) in ca.trust_domains.iter().enumerate() {
                let td = trust_domain(o, &format!("{field}.trustDomains[{j}]"), td, errors);
                install.bundles.extend(td.map(|trust_domain| TrustBundle {
                    trust_domain,
                    source: BundleSource::Endpoint(BundleEndpoint {
                        url: url.clone(),
                        profile: EndpointProfile::HttpsWeb {
                            ca_certificates: None,
                        },
                        refresh: std::time::Duration::from_secs(300),
                    }),
                }));
            }
            continue;
        }
        let Some(pem) = &ca.pem else {
            errors.push(o.error(format!("{field}.pem"), "required"));
            continue;
        };
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            errors.push(o.error(format!("{field}.pem"), "holds no PEM CERTIFICATE"));
            continue;
        }
        if ca.trust_domains.is_empty() {
            // Istio: such an anchor serves the trust domain and its aliases. Bound to them.
            errors.push(o.error(
                format!("{field}.trustDomains"),
                "required by meshgate: each CA certificate is bound to the trust domains it \
                 may issue (issuer binding)",
            ));
            continue;
        }
        let mut tds = Vec::new();
        for (j, td) in ca.trust_domains.iter().enumerate() {
            tds.extend(trust_domain(
                o,
                &format!("{field}.trustDomains[{j}]"),
                td,
                errors,
            ));
        }
        // Istio: the anchor is used for these trust domains (entries for one trust domain are
        // merged). It also binds them, so that a per-mesh intermediate listed here cannot issue
        // other trust domains through the shared root.
        install.bundles.extend(tds.iter().map(|td| TrustBundle {
            trust_domain: td.clone(),
            source: BundleSource::Pem(pem.clone()),
        }));
        install.issuers.push(IssuerBinding {
            issuer: IssuerKey::Pem(pem.clone()),
            trust_domains: tds,
        });
    }
    if let Some(tls) = &mesh.tls_defaults {
        o.unsupported(
            errors,
            "spec.meshConfig.tlsDefaults",
            &[
                ("cipherSuites", tls.cipher_suites.is_some()),
                ("minProtocolVersion", tls.min_protocol_version.is_some()),
            ],
        );
        let mut list = Vec::new();
        for (i, name) in tls.ecdh_curves.iter().enumerate() {
            match EcdhCurve::parse(name) {
                Some(c) => list.push(c),
                None => errors.push(o.error(
                    format!("spec.meshConfig.tlsDefaults.ecdhCurves[{i}]"),
                    format!("`{name}` is not X25519, P-256, P-384 or X25519MLKEM768"),
                )),
            }
        }
        if !list.is_empty() {
            install.ecdh_curves = Some(list);
        }
    }
    if let Some(mode) = mesh
        .path_normalization
        .as_ref()
        .and_then(|p| p.normalization.as_deref())
    {
        let field = "spec.meshConfig.pathNormalization.normalization";
        let mode = match mode {
            "NONE" => Some(NormalizationMode::None),
            // Istio maps DEFAULT to BASE.
            "BASE" | "DEFAULT" => Some(NormalizationMode::Base),
            "MERGE_SLASHES" => Some(NormalizationMode::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Some(NormalizationMode::DecodeAndMergeSlashes),
            other => {
                errors.push(o.error(
                    field,
                    format!(
                        "`{other}` is not NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
                    ),
                ));
                None
            }
        };
        if let Some(mode) = mode {
            if matches!(mode, NormalizationMode::None | NormalizationMode::Base) {
                warnings.push(o.warn(
                    Code::WeakPathNormalization,
                    Some(field),
                    format!(
                        "{mode:?}: `//admin` and `/admin%2Fsecret` reach the backend unchanged \
                         and dodge a policy on `/admin/*`; MERGE_SLASHES or \
                         DECODE_AND_MERGE_SLASHES close that (meshgate's default, without this \
                         setting, merges slashes and refuses escaped ones)"
                    ),
                ));
            }
            install.path_normalization = Some(PathNormalization::istio(mode));
        }
    }
    skipped
}

/// Envoy's `forward_client_cert_details` by Istio's and Kyma's names; meshgate owns the
/// header, so the modes that pass a client's copy on are refused.
fn forward_client_cert(
    o: &Origin,
    field: &str,
    value: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<ForwardClientCert> {
    match value {
        "SANITIZE_SET" => Some(ForwardClientCert::SanitizeSet),
        "SANITIZE" => Some(ForwardClientCert::Sanitize),
        other => {
            errors.push(o.error(
                field,
                format!(
                    "`{other}` is not supported: meshgate owns x-forwarded-client-cert and never \
                     forwards a client's copy; use SANITIZE_SET or SANITIZE"
                ),
            ));
            None
        }
    }
}

fn skipped_warning(o: &Origin, skipped: &[&str], warnings: &mut Vec<Warning>) {
    if skipped.is_empty() {
        return;
    }
    warnings.push(o.warn(
        Code::InstallSettingsSkipped,
        None,
        format!(
            "installation-only settings skipped (nothing for this proxy's traffic): {}",
            skipped.join(", ")
        ),
    ));
}

fn trust_domain(
    o: &Origin,
    field: &str,
    value: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<TrustDomain> {
    match TrustDomain::new(value) {
        Ok(td) => Some(td),
        Err(e) => {
            errors.push(o.error(field, format!("`{value}` is not a valid trust domain: {e}")));
            None
        }
    }
}

/// Sets `slot`, or, when another place set it to something else, reports both.
pub(crate) fn set<T: PartialEq + serde::Serialize>(
    slot: &mut Option<Set<T>>,
    value: T,
    o: &Origin,
    field: &str,
    errors: &mut Vec<ConfigError>,
) {
    let at = format!("{} {field}", o.resource());
    match slot {
        Some(first) if first.value != value => errors.push(ConfigError::global(format!(
            "{} is set twice and disagrees: {} ({}) and {} ({at})",
            setting_name(field),
            show(&first.value),
            first.at,
            show(&value),
        ))),
        Some(_) => {}
        None => *slot = Some(Set { value, at }),
    }
}

/// `the trust domain` for `spec.config.trustDomain`, else the field's last name.
fn setting_name(field: &str) -> String {
    match field.rsplit('.').next() {
        Some("trustDomain") => "the trust domain".into(),
        Some(name) => format!("`{name}`"),
        None => field.into(),
    }
}

/// A value as the error shows it: `a.example.com` in backquotes.
fn show<T: serde::Serialize>(value: &T) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    format!("`{}`", text.trim_matches('"'))
}
