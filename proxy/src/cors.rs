//! CORS, as Envoy's CORS filter does it for a route's `corsPolicy`.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//! origin is answered here, 200, with the policy's headers; from another origin it goes
//! upstream (`unmatchedPreflights: FORWARD`, the default) or is answered here without
//! `access-control-allow-origin` (`IGNORE`). An actual request from an allowed origin has its
//! response marked (`access-control-allow-origin` is the request's origin, never `*`). A
//! request without `Origin` is not a CORS request and passes untouched. Pure but for building
//! the preflight answer; nothing here allocates for a request without `Origin`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use meshgate_config::model::Cors;

use crate::respond::ResponseBody;

/// The answer to a preflight, when this proxy gives it.
pub fn preflight(
    cors: &Cors,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response<ResponseBody>> {
    if method != Method::OPTIONS {
        return None;
    }
    let origin = headers.get(header::ORIGIN).filter(|o| !o.is_empty())?;
    let requested = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|m| !m.is_empty())?;
    let allowed = cors.allows(origin.as_bytes());
    if !allowed && cors.forward_unmatched_preflights {
        return None;
    }
    let mut response = Response::new(ResponseBody::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let out = response.headers_mut();
    if allowed {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if cors.allow_credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    // `*` echoes what the preflight asks for, as Envoy does.
    let echo = |configured: &Option<HeaderValue>, asked: Option<&HeaderValue>| match configured {
        Some(v) if v == "*" => asked.cloned().or_else(|| Some(v.clone())),
        other => other.clone(),
    };
    if let Some(v) = echo(&cors.allow_methods, Some(requested)) {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    let asked_headers = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
    if let Some(v) = echo(&cors.allow_headers, asked_headers) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(v) = &cors.max_age {
        out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
    }
    Some(response)
}

/// Marks the response to an actual request from an allowed origin.
pub fn decorate(cors: &Cors, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
    let Some(origin) = origin.filter(|o| !o.is_empty() && cors.allows(o.as_bytes())) else {
        return;
    };
    response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        response.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &cors.expose_headers {
        response.insert(EXPOSE_HEADERS, v.clone());
    }
}

const EXPOSE_HEADERS: HeaderName = header::ACCESS_CONTROL_EXPOSE_HEADERS;
