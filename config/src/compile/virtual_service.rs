//! VirtualServices bound to this proxy's Gateways -> virtual hosts on listeners.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use super::service_entry::Backends;
use super::Origin;
use crate::error::ConfigError;
use crate::model::{
    DirectResponse, HeaderMatch, HeaderOps, HostMatcher, Listener, RequestMatch, Route,
    RouteAction, RouteTable, StringMatcher, VirtualHost, WeightedBackend,
};
use crate::raw::virtual_service::{HeaderOperations, HttpMatch, HttpRoute, VirtualServiceSpec};
use crate::raw::StringMatch;
use crate::warning::{Code, Warning};

/// The gateway name that binds a VirtualService to sidecars rather than to a Gateway.
const MESH_GATEWAY: &str = "mesh";

pub(crate) fn bind(
    found: &[(Origin, VirtualServiceSpec)],
    listeners: &mut [Listener],
    backends: &mut Backends,
    owned: &[HeaderName],
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    let mut tables: Vec<Vec<VirtualHost>> = listeners.iter().map(|_| Vec::new()).collect();
    for (o, spec) in found {
        o.unsupported(
            errors,
            "spec",
            &[
                ("tls", spec.tls.is_some()),
                ("tcp", spec.tcp.is_some()),
                ("exportTo", spec.export_to.is_some()),
            ],
        );
        let gateways: Vec<String> = match &spec.gateways {
            None => vec![MESH_GATEWAY.to_string()],
            Some(list) => list
                .iter()
                .map(|g| super::gateway::resolve_name(g, &o.namespace))
                .collect(),
        };
        let mut hosts = Vec::new();
        if spec.hosts.is_empty() {
            errors.push(o.error("spec.hosts", "at least one host is required"));
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            match HostMatcher::parse(host) {
                Some(h) => hosts.push(h),
                None => errors.push(o.error(
                    format!("spec.hosts[{i}]"),
                    format!("`{host}` is not a host"),
                )),
            }
        }
        let routes: Vec<Route> = spec
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                compile_route(
                    o,
                    &format!("spec.http[{i}]"),
                    r,
                    backends,
                    owned,
                    errors,
                    warnings,
                )
            })
            .collect();
        for (listener, table) in listeners.iter().zip(tables.iter_mut()) {
            let servers: Vec<_> = listener
                .servers
                .iter()
                .filter(|s| gateways.contains(&s.gateway) && s.namespace.admits(&o.namespace))
                .collect();
            if servers.is_empty() {
                continue;
            }
            let bound: Vec<HostMatcher> = hosts
                .iter()
                .filter(|h| servers.iter().any(|s| s.host.intersects(h)))
                .cloned()
                .collect();
            // `check` says why (analyze.rs: MG0103).
            if bound.is_empty() {
                continue;
            }
            table.push(VirtualHost {
                source: o.resource(),
                hosts: bound,
                routes: routes.clone(),
            });
        }
    }
    for (listener, table) in listeners.iter_mut().zip(tables) {
        listener.routes = RouteTable::new(table);
    }
}

fn compile_route(
    o: &Origin,
    path: &str,
    r: &HttpRoute,
    backends: &mut Backends,
    owned: &[HeaderName],
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) -> Option<Route> {
    let before = errors.len();
    o.unsupported(
        errors,
        path,
        &[
            ("redirect", r.redirect.is_some()),
            ("delegate", r.delegate.is_some()),
            ("retries", r.retries.is_some()),
            ("fault", r.fault.is_some()),
            ("mirror", r.mirror.is_some()),
            ("mirrors", r.mirrors.is_some()),
            ("mirrorPercentage", r.mirror_percentage.is_some()),
            ("mirrorPercent", r.mirror_percent.is_some()),
            ("corsPolicy", r.cors_policy.is_some()),
        ],
    );
    let matches = r
        .matches
        .iter()
        .enumerate()
        .filter_map(|(i, m)| compile_match(o, &format!("{path}.match[{i}]"), m, errors))
        .collect();
    let action = match (&r.direct_response, r.route.is_empty()) {
        (Some(_), false) => {
            errors.push(o.error(path, "route and directResponse are exclusive"));
            None
        }
        (None, true) => {
            errors.push(o.error(
                format!("{path}.route"),
                "a route or a directResponse is required",
            ));
            None
        }
        (Some(d), true) => {
            let p = format!("{path}.directResponse");
            if let Some(body) = &d.body {
                o.unsupported(
                    errors,
                    &format!("{p}.body"),
                    &[("bytes", body.bytes.is_some())],
                );
            }
            match u16::try_from(d.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                Some(status) => Some(RouteAction::Direct(DirectResponse {
                    status,
                    body: Bytes::from(
                        d.body
                            .as_ref()
                            .and_then(|b| b.string.clone())
                            .unwrap_or_default(),
                    ),
                })),
                None => {
                    errors.push(o.error(format!("{p}.status"), "not an HTTP status code"));
                    None
                }
            }
        }
        (None, false) => {
            let mut list = Vec::new();
            let weighted = r.route.iter().any(|d| d.weight.is_some());
            for (i, d) in r.route.iter().enumerate() {
                let p = format!("{path}.route[{i}]");
                o.unsupported(errors, &p, &[("headers", d.headers.is_some())]);
                o.unsupported(
                    errors,
                    &format!("{p}.destination"),
                    &[("subset", d.destination.subset.is_some())],
                );
                // Istio: a lone destination takes all traffic; otherwise weights are relative.
                let weight = if weighted { d.weight.unwrap_or(0) } else { 1 };
                let host = qualify(&d.destination.host, &o.namespace);
                let port = match d.destination.port.as_ref().map(|p| u16::try_from(p.number)) {
                    None => None,
                    Some(Ok(n)) if n > 0 => Some(n),
                    Some(_) => {
                        errors.push(o.error(
                            format!("{p}.destination.port.number"),
                            "ports must be 1 to 65535",
                        ));
                        continue;
                    }
                };
                match backends.resolve(&host, port) {
                    Ok((backend, implicit)) => {
                        if implicit {
                            warnings.push(o.warn(
                                Code::DestinationNotDeclared,
                                Some(&format!("{p}.destination.host")),
                                format!(
                                    "`{host}` is declared by no ServiceEntry; it will be \
                                     resolved by DNS when a request comes"
                                ),
                            ));
                        }
                        if weight > 0 {
                            list.push(WeightedBackend { backend, weight });
                        }
                    }
                    Err(message) => errors.push(o.error(format!("{p}.destination"), message)),
                }
            }
            if list.is_empty() && errors.len() == before {
                errors.push(o.error(format!("{path}.route"), "every destination has weight 0"));
            }
            Some(RouteAction::Forward(list))
        }
    };
    let (request_headers, response_headers) = match &r.headers {
        None => (HeaderOps::default(), HeaderOps::default()),
        Some(h) => (
            header_ops(
                o,
                &format!("{path}.headers.request"),
                h.request.as_ref(),
                owned,
                errors,
            ),
            header_ops(
                o,
                &format!("{path}.headers.response"),
                h.response.as_ref(),
                &[],
                errors,
            ),
        ),
    };
    let mut rewrite_uri = None;
    let mut rewrite_authority = None;
    if let Some(rw) = &r.rewrite {
        o.unsupported(
            errors,
            &format!("{path}.rewrite"),
            &[("uriRegexRewrite", rw.uri_regex_rewrite.is_some())],
        );
        if let Some(uri) = &rw.uri {
            if !uri.starts_with('/') {
                errors.push(o.error(format!("{path}.rewrite.uri"), "must start with `/`"));
            }
            rewrite_uri = Some(uri.clone());
        }
        if let Some(a) = &rw.authority {
            match HeaderValue::from_str(a) {
                Ok(v) if !a.is_empty() => rewrite_authority = Some(v),
                _ => errors
                    .push(o.error(format!("{path}.rewrite.authority"), "not a valid authority")),
            }
        }
    }
    let timeout = match &r.timeout {
        None => None,
        Some(t) => match parse_duration(t) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => {
                errors.push(o.error(
                    format!("{path}.timeout"),
                    format!("`{t}` is not a duration such as 10s or 500ms"),
                ));
                None
            }
        },
    };
    if errors.len() > before {
        return None;
    }
    Some(Route {
        name: r.name.clone(),
        index: 0,
        matches,
        action: action?,
        request_headers,
        response_headers,
        rewrite_uri,
        rewrite_authority,
        timeout,
    })
}

fn compile_match(
    o: &Origin,
    path: &str,
    m: &HttpMatch,
    errors: &mut Vec<ConfigError>,
) -> Option<RequestMatch> {
    o.unsupported(
        errors,
        path,
        &[
            ("scheme", m.scheme.is_some()),
            ("queryParams", m.query_params.is_some()),
            ("ignoreUriCase", m.ignore_uri_case.is_some()),
            ("sourceLabels", m.source_labels.is_some()),
            ("sourceNamespace", m.source_namespace.is_some()),
            ("gateways", m.gateways.is_some()),
            ("statPrefix", m.stat_prefix.is_some()),
        ],
    );
    let mut required = |field: &str, sm: Option<&StringMatch>| {
        sm.and_then(|sm| match string_matcher(sm) {
            Ok(Some(m)) => Some(m),
            Ok(None) => {
                errors.push(o.error(
                    format!("{path}.{field}"),
                    "one of exact, prefix or regex is required",
                ));
                None
            }
            Err(e) => {
                errors.push(o.error(format!("{path}.{field}"), e));
                None
            }
        })
    };
    let uri = required("uri", m.uri.as_ref());
    let authority = required("authority", m.authority.as_ref());
    let method = required("method", m.method.as_ref());
    if matches!(&method, Some(StringMatcher::Exact(m)) if m == "CONNECT") {
        errors.push(o.error(
            format!("{path}.method"),
            "CONNECT cannot be routed: meshgate does not tunnel, and answers CONNECT with 405",
        ));
    }
    let headers = header_matches(o, &format!("{path}.headers"), &m.headers, errors);
    let without_headers = header_matches(
        o,
        &format!("{path}.withoutHeaders"),
        &m.without_headers,
        errors,
    );
    let port = match m.port.map(u16::try_from) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => {
            errors.push(o.error(format!("{path}.port"), "ports must be 1 to 65535"));
            None
        }
    };
    Some(RequestMatch {
        name: m.name.clone(),
        uri,
        authority,
        method,
        headers,
        without_headers,
        port,
    })
}

fn header_matches(
    o: &Origin,
    path: &str,
    map: &std::collections::BTreeMap<String, StringMatch>,
    errors: &mut Vec<ConfigError>,
) -> Vec<HeaderMatch> {
    let mut out = Vec::new();
    for (name, sm) in map {
        let field = format!("{path}.{name}");
        let Some(name) = header_name(name) else {
            errors.push(o.error(field, "not a lowercase HTTP header name"));
            continue;
        };
        match string_matcher(sm) {
            Ok(value) => out.push(HeaderMatch { name, value }),
            Err(e) => errors.push(o.error(field, e)),
        }
    }
    out
}

/// `Ok(None)` for an empty `StringMatch` (which means "present" for headers).
fn string_matcher(sm: &StringMatch) -> Result<Option<StringMatcher>, String> {
    match (&sm.exact, &sm.prefix, &sm.regex) {
        (None, None, None) => Ok(None),
        (Some(e), None, None) => Ok(Some(StringMatcher::Exact(e.clone()))),
        (None, Some(p), None) => Ok(Some(StringMatcher::Prefix(p.clone()))),
        (None, None, Some(r)) => Regex::new(&format!("^(?:{r})$"))
            .map(|re| Some(StringMatcher::Regex(re)))
            .map_err(|e| format!("invalid regex: {e}")),
        _ => Err("only one of exact, prefix and regex may be set".into()),
    }
}

/// `headers.request` or `headers.response`. Request operations may not name a header the
/// proxy owns (`owned`), nor `host`: the proxy sets those last, from the connection and the
/// one authority of the request.
fn header_ops(
    o: &Origin,
    path: &str,
    ops: Option<&HeaderOperations>,
    owned: &[HeaderName],
    errors: &mut Vec<ConfigError>,
) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let refused = |field: String, name: &HeaderName, errors: &mut Vec<ConfigError>| {
        let request = path.ends_with(".request");
        if request && name == http::header::HOST {
            errors.push(o.error(
                field,
                "`host` is the request's authority: use rewrite.authority",
            ));
            true
        } else if owned.contains(name) {
            errors.push(o.error(
                field,
                format!(
                    "`{name}` is owned by the proxy: it is set from the verified connection \
                     after every other change to the request, so this would never take effect"
                ),
            ));
            true
        } else {
            false
        }
    };
    let pairs =
        |field: &str, map: &std::collections::BTreeMap<String, String>, errors: &mut Vec<_>| {
            let mut out = Vec::new();
            for (k, v) in map {
                let at = format!("{path}.{field}.{k}");
                match (header_name(k), HeaderValue::from_str(v)) {
                    (Some(k), Ok(v)) => {
                        if !refused(at, &k, errors) {
                            out.push((k, v));
                        }
                    }
                    _ => errors.push(o.error(at, "not a valid header name and value")),
                }
            }
            out
        };
    let set = pairs("set", &ops.set, errors);
    let add = pairs("add", &ops.add, errors);
    let mut remove = Vec::new();
    for (i, k) in ops.remove.iter().enumerate() {
        let at = format!("{path}.remove[{i}]");
        match header_name(k) {
            Some(k) => {
                if !refused(at, &k, errors) {
                    remove.push(k);
                }
            }
            None => errors.push(o.error(at, "not a valid header name")),
        }
    }
    HeaderOps { set, add, remove }
}

fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()
}

/// Istio expands a short destination host (`reviews`) with the VirtualService's namespace.
fn qualify(host: &str, namespace: &str) -> String {
    if host.contains('.') {
        host.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.svc.cluster.local",
            host.to_ascii_lowercase()
        )
    }
}

/// `10s`, `1.5s`, `250ms`, `2m`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?);
    let n: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1x"), None);
    }

    #[test]
    fn short_hosts_are_qualified_with_the_namespace() {
        assert_eq!(
            qualify("reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(qualify("Echo.Internal", "x"), "echo.internal");
    }
}
