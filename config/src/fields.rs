//! Every field of Istio's networking kinds, and what meshgate does with it.
//!
//! The compiler's refusals take their advice from here (`advice`), the README's table of
//! networking fields is checked against it by a test, and another test proves that each field
//! marked refused is refused with its advice. Paths are relative to `spec`, `[]` standing for
//! any list index.

/// What meshgate does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Implemented with Istio's semantics.
    Supported,
    /// Refused with an error naming the field; the text, when there is one, says the nearest
    /// supported way.
    Refused(Option<&'static str>),
}

/// One field of one kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub kind: &'static str,
    pub path: &'static str,
    pub support: Support,
}

const fn yes(kind: &'static str, path: &'static str) -> Field {
    Field {
        kind,
        path,
        support: Support::Supported,
    }
}

const fn no(kind: &'static str, path: &'static str, advice: &'static str) -> Field {
    Field {
        kind,
        path,
        support: Support::Refused(if advice.is_empty() {
            None
        } else {
            Some(advice)
        }),
    }
}

const VS: &str = "VirtualService";
const DR: &str = "DestinationRule";
const SE: &str = "ServiceEntry";
const WE: &str = "WorkloadEntry";
const GW: &str = "Gateway";

/// The fields of Gateway, VirtualService, DestinationRule, ServiceEntry and WorkloadEntry.
pub const FIELDS: &[Field] = &[
    yes(GW, "selector"),
    yes(GW, "servers[].port.number"),
    yes(GW, "servers[].port.name"),
    yes(GW, "servers[].port.protocol"),
    no(
        GW,
        "servers[].port.targetPort",
        "map ports with MeshGateway spec.listen.portOverrides",
    ),
    yes(GW, "servers[].hosts"),
    yes(GW, "servers[].name"),
    no(GW, "servers[].bind", "set MeshGateway spec.listen.address"),
    no(GW, "servers[].defaultEndpoint", ""),
    yes(GW, "servers[].tls.mode"),
    yes(GW, "servers[].tls.minProtocolVersion"),
    yes(GW, "servers[].tls.maxProtocolVersion"),
    yes(GW, "servers[].tls.httpsRedirect"),
    yes(GW, "servers[].tls.serverCertificate"),
    yes(GW, "servers[].tls.privateKey"),
    yes(GW, "servers[].tls.caCertificates"),
    yes(GW, "servers[].tls.caCrl"),
    yes(GW, "servers[].tls.cipherSuites"),
    yes(GW, "servers[].tls.credentialName"),
    yes(GW, "servers[].tls.credentialNames"),
    yes(GW, "servers[].tls.tlsCertificates"),
    yes(GW, "servers[].tls.subjectAltNames"),
    yes(GW, "servers[].tls.verifyCertificateSpki"),
    yes(GW, "servers[].tls.verifyCertificateHash"),
    yes(VS, "hosts"),
    yes(VS, "gateways"),
    yes(VS, "http[].name"),
    yes(VS, "http[].match[].name"),
    yes(VS, "http[].match[].uri"),
    yes(VS, "http[].match[].authority"),
    yes(VS, "http[].match[].method"),
    yes(VS, "http[].match[].headers"),
    yes(VS, "http[].match[].withoutHeaders"),
    yes(VS, "http[].match[].port"),
    yes(VS, "http[].match[].gateways"),
    yes(VS, "http[].match[].sourceLabels"),
    yes(VS, "http[].match[].sourceNamespace"),
    yes(VS, "http[].match[].scheme"),
    yes(VS, "http[].match[].queryParams"),
    yes(VS, "http[].match[].ignoreUriCase"),
    no(
        VS,
        "http[].match[].statPrefix",
        "metrics name routes by http[].name",
    ),
    yes(VS, "http[].route[].destination.host"),
    yes(VS, "http[].route[].destination.port"),
    yes(VS, "http[].route[].destination.subset"),
    yes(VS, "http[].route[].weight"),
    yes(VS, "http[].route[].headers"),
    yes(VS, "http[].redirect"),
    yes(VS, "http[].directResponse.status"),
    yes(VS, "http[].directResponse.body.string"),
    yes(VS, "http[].directResponse.body.bytes"),
    yes(VS, "http[].delegate"),
    yes(VS, "http[].rewrite.uri"),
    yes(VS, "http[].rewrite.authority"),
    yes(VS, "http[].rewrite.uriRegexRewrite"),
    yes(VS, "http[].timeout"),
    yes(VS, "http[].retries.attempts"),
    yes(VS, "http[].retries.perTryTimeout"),
    yes(VS, "http[].retries.retryOn"),
    yes(VS, "http[].retries.retryIgnorePreviousHosts"),
    yes(VS, "http[].retries.backoff"),
    no(
        VS,
        "http[].retries.retryRemoteLocalities",
        "remove it: meshgate knows no localities, and a retry already prefers an endpoint not tried yet",
    ),
    yes(VS, "http[].fault.delay.fixedDelay"),
    yes(VS, "http[].fault.delay.percentage"),
    yes(VS, "http[].fault.delay.percent"),
    no(
        VS,
        "http[].fault.delay.exponentialDelay",
        "use fixedDelay (Istio does not implement it either)",
    ),
    yes(VS, "http[].fault.abort.httpStatus"),
    yes(VS, "http[].fault.abort.grpcStatus"),
    yes(VS, "http[].fault.abort.percentage"),
    no(
        VS,
        "http[].fault.abort.http2Error",
        "use httpStatus (Istio does not implement it either)",
    ),
    yes(VS, "http[].mirror"),
    yes(VS, "http[].mirrors"),
    yes(VS, "http[].mirrorPercentage"),
    yes(VS, "http[].mirrorPercent"),
    yes(VS, "http[].corsPolicy"),
    yes(VS, "http[].headers"),
    yes(VS, "tls[].match[].sniHosts"),
    yes(VS, "tls[].match[].port"),
    yes(VS, "tls[].match[].destinationSubnets"),
    yes(VS, "tls[].match[].gateways"),
    no(
        VS,
        "tls[].match[].sourceLabels",
        "a gateway has no source workload labels to match: match on sniHosts",
    ),
    no(
        VS,
        "tls[].match[].sourceNamespace",
        "a gateway has no source workload labels to match: match on sniHosts",
    ),
    yes(VS, "tls[].route[].destination"),
    yes(VS, "tls[].route[].weight"),
    yes(VS, "tcp[].match[].port"),
    yes(VS, "tcp[].match[].destinationSubnets"),
    yes(VS, "tcp[].match[].gateways"),
    no(
        VS,
        "tcp[].match[].sourceLabels",
        "a gateway has no source workload labels to match: match on port or destinationSubnets",
    ),
    no(
        VS,
        "tcp[].match[].sourceNamespace",
        "a gateway has no source workload labels to match: match on port or destinationSubnets",
    ),
    no(
        VS,
        "tcp[].match[].sourceSubnet",
        "match the client's address in an AuthorizationPolicy (ipBlocks, remoteIpBlocks)",
    ),
    yes(VS, "tcp[].route[].destination"),
    yes(VS, "tcp[].route[].weight"),
    yes(VS, "exportTo"),
    yes(DR, "host"),
    yes(DR, "subsets"),
    yes(DR, "exportTo"),
    yes(DR, "workloadSelector"),
    yes(DR, "trafficPolicy.portLevelSettings"),
    yes(DR, "trafficPolicy.tls.mode"),
    yes(DR, "trafficPolicy.tls.clientCertificate"),
    yes(DR, "trafficPolicy.tls.privateKey"),
    yes(DR, "trafficPolicy.tls.caCertificates"),
    yes(DR, "trafficPolicy.tls.subjectAltNames"),
    yes(DR, "trafficPolicy.tls.sni"),
    yes(DR, "trafficPolicy.tls.credentialName"),
    yes(DR, "trafficPolicy.tls.caCrl"),
    yes(DR, "trafficPolicy.tls.insecureSkipVerify"),
    yes(DR, "trafficPolicy.loadBalancer.simple"),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.httpHeaderName"),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.httpCookie.name"),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.httpCookie.path"),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl"),
    no(
        DR,
        "trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes",
        "",
    ),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.useSourceIp"),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName"),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize"),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.maglev.tableSize"),
    yes(DR, "trafficPolicy.loadBalancer.consistentHash.minimumRingSize"),
    no(
        DR,
        "trafficPolicy.loadBalancer.localityLbSetting",
        "meshgate knows no localities: use loadBalancer.simple",
    ),
    no(DR, "trafficPolicy.loadBalancer.warmupDurationSecs", ""),
    no(DR, "trafficPolicy.loadBalancer.warmup", ""),
    yes(DR, "trafficPolicy.connectionPool.tcp.maxConnections"),
    yes(DR, "trafficPolicy.connectionPool.tcp.connectTimeout"),
    yes(DR, "trafficPolicy.connectionPool.tcp.tcpKeepalive"),
    yes(DR, "trafficPolicy.connectionPool.tcp.idleTimeout"),
    yes(DR, "trafficPolicy.connectionPool.tcp.maxConnectionDuration"),
    yes(
        DR,
        "trafficPolicy.connectionPool.http.http1MaxPendingRequests",
    ),
    yes(DR, "trafficPolicy.connectionPool.http.http2MaxRequests"),
    yes(
        DR,
        "trafficPolicy.connectionPool.http.maxRequestsPerConnection",
    ),
    yes(DR, "trafficPolicy.connectionPool.http.maxRetries"),
    yes(DR, "trafficPolicy.connectionPool.http.idleTimeout"),
    yes(DR, "trafficPolicy.connectionPool.http.h2UpgradePolicy"),
    no(
        DR,
        "trafficPolicy.connectionPool.http.useClientProtocol",
        "",
    ),
    yes(DR, "trafficPolicy.connectionPool.http.maxConcurrentStreams"),
    yes(DR, "trafficPolicy.outlierDetection.consecutive5xxErrors"),
    yes(DR, "trafficPolicy.outlierDetection.consecutiveGatewayErrors"),
    yes(DR, "trafficPolicy.outlierDetection.consecutiveErrors"),
    yes(DR, "trafficPolicy.outlierDetection.splitExternalLocalOriginErrors"),
    yes(DR, "trafficPolicy.outlierDetection.consecutiveLocalOriginFailures"),
    yes(DR, "trafficPolicy.outlierDetection.interval"),
    yes(DR, "trafficPolicy.outlierDetection.baseEjectionTime"),
    yes(DR, "trafficPolicy.outlierDetection.maxEjectionPercent"),
    yes(DR, "trafficPolicy.outlierDetection.minHealthPercent"),
    no(DR, "trafficPolicy.tunnel", ""),
    yes(DR, "trafficPolicy.proxyProtocol.version"),
    no(DR, "trafficPolicy.retryBudget", ""),
    yes(SE, "hosts"),
    yes(SE, "ports[].number"),
    yes(SE, "ports[].protocol"),
    yes(SE, "ports[].name"),
    yes(SE, "ports[].targetPort"),
    yes(SE, "location"),
    yes(SE, "resolution"),
    yes(SE, "endpoints[].address"),
    yes(SE, "endpoints[].ports"),
    yes(SE, "endpoints[].labels"),
    no(SE, "endpoints[].weight", "list an endpoint once per share"),
    no(SE, "endpoints[].network", ""),
    no(SE, "endpoints[].locality", ""),
    no(SE, "endpoints[].serviceAccount", ""),
    yes(SE, "workloadSelector"),
    no(
        SE,
        "addresses",
        "meshgate routes by host name, not by address",
    ),
    yes(SE, "exportTo"),
    no(
        SE,
        "subjectAltNames",
        "set a DestinationRule's tls.subjectAltNames for the host",
    ),
    yes(WE, "address"),
    yes(WE, "ports"),
    yes(WE, "labels"),
    no(WE, "weight", ""),
    no(WE, "network", ""),
    no(WE, "locality", ""),
    no(WE, "serviceAccount", ""),
];

/// The advice for a refused field of `kind`, given its path as an error names it
/// (`spec.http[0].retries`). Port-level and subset policies share the fields of the
/// top-level `trafficPolicy`.
pub fn advice(kind: &str, path: &str) -> Option<&'static str> {
    let key = table_path(path);
    let field = FIELDS.iter().find(|f| f.kind == kind && f.path == key)?;
    match field.support {
        Support::Refused(advice) => advice,
        Support::Supported => None,
    }
}

/// `spec.subsets[2].trafficPolicy.portLevelSettings[0].tls` -> `trafficPolicy.tls`.
pub(crate) fn table_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path
        .strip_prefix("spec.")
        .unwrap_or(path)
        .chars()
        .peekable();
    while let Some(c) = chars.next() {
        if c == '[' {
            out.push_str("[]");
            for d in chars.by_ref() {
                if d == ']' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    let out = out
        .replace("portLevelSettings[].", "")
        .replace("trafficPolicy.trafficPolicy", "trafficPolicy");
    match out.strip_prefix("subsets[].") {
        Some(rest) => rest.to_string(),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_as_errors_name_them_find_their_row() {
        assert_eq!(
            table_path("spec.http[3].match[0].scheme"),
            "http[].match[].scheme"
        );
        assert_eq!(
            table_path("spec.subsets[1].trafficPolicy.portLevelSettings[0].outlierDetection"),
            "trafficPolicy.outlierDetection"
        );
        assert!(advice(VS, "spec.http[0].match[0].statPrefix").is_some());
        assert!(advice(
            DR,
            "spec.subsets[0].trafficPolicy.portLevelSettings[1].loadBalancer.localityLbSetting"
        )
        .is_some());
        assert_eq!(advice(VS, "spec.http[0].retries"), None);
        assert_eq!(advice(VS, "spec.http[0].timeout"), None);
    }

    #[test]
    fn every_row_is_unique() {
        for (i, a) in FIELDS.iter().enumerate() {
            for b in &FIELDS[i + 1..] {
                assert!(
                    !(a.kind == b.kind && a.path == b.path),
                    "{} {} twice",
                    a.kind,
                    a.path
                );
            }
        }
    }
}
