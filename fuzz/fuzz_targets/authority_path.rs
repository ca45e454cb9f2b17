//! Request heads made canonical (`head.rs`): `canonical(authority)`, the path normalization
//! of every `meshConfig.pathNormalization` mode (`PathNormalization::apply`), and
//! `canonicalize` on a whole `http::Request` built from the input, under each
//! `headersWithUnderscoresAction`.
//!
//! Input: byte 0 picks the normalization mode, byte 1 the HTTP version, the underscore action
//! and the method; then lines: an authority, a path, the request target, and `name: value`
//! header lines (`fuzz/seeds/authority_path/` has examples).
//!
//! Checks (besides never panicking): each step is idempotent. A canonical authority is
//! canonical again, unchanged and borrowed, and lowercase; a normalized path normalizes to
//! itself; a request head that `canonicalize` accepted has a canonical authority and path and
//! no hop-by-hop header, and is accepted again and left as it is (same URI and headers).
#![no_main]

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Version};
use libfuzzer_sys::fuzz_target;
use meshgate_config::model::path::{NormalizationMode, PathNormalization};
use meshgate_config::model::{ForwardClientCert, HttpSettings, Tagging, UnderscoreHeaders};
use meshgate_proxy::fuzzing::{canonical, canonicalize};
use meshgate_proxy::tag::Owned;

fn normalization(mode: u8) -> PathNormalization {
    match mode % 5 {
        0 => PathNormalization::default(),
        1 => PathNormalization::istio(NormalizationMode::None),
        2 => PathNormalization::istio(NormalizationMode::Base),
        3 => PathNormalization::istio(NormalizationMode::MergeSlashes),
        _ => PathNormalization::istio(NormalizationMode::DecodeAndMergeSlashes),
    }
}

fn check_authority(authority: &str) {
    if let Ok(c) = canonical(authority) {
        assert!(!c.bytes().any(|b| b.is_ascii_uppercase()), "{c:?}");
        match canonical(&c) {
            Ok(Cow::Borrowed(again)) => assert_eq!(again, &*c),
            other => panic!("canonical({authority:?}) = {c:?}, then {other:?}"),
        }
    }
}

/// Whether `FUZZ_SKIP_KNOWN` (comma-separated) names this finding: a long run may skip one that
/// is not fixed yet to look for others (`fuzz/README.md` lists them).
fn skip_known(name: &str) -> bool {
    static KNOWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| std::env::var("FUZZ_SKIP_KNOWN").unwrap_or_default())
        .split(',')
        .any(|n| n == name)
}

/// Whether normalizing `path` once more would change it (a path decoded into a new escape).
fn renormalizes(normalization: &PathNormalization, path: &str) -> bool {
    normalization
        .apply(path)
        .is_ok_and(|once| normalization.apply(&once).as_deref() != Ok(&*once))
}

fn check_path(normalization: &PathNormalization, path: &str) {
    if let Ok(once) = normalization.apply(path) {
        let twice = normalization.apply(&once);
        assert_eq!(
            twice.as_deref(),
            Ok(&*once),
            "{path:?} -> {once:?} -> {twice:?} ({:?})",
            normalization.mode
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, knobs, rest @ ..] = data else {
        return;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let mut text = || String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let (authority, path, target) = (text(), text(), text());

    check_authority(&authority);
    let normalization = normalization(*mode);
    if skip_known("path-not-idempotent")
        && (renormalizes(&normalization, &path)
            || renormalizes(&normalization, target.split('?').next().unwrap_or_default()))
    {
        return;
    }
    check_path(&normalization, &path);

    let version = if knobs & 1 == 0 {
        Version::HTTP_11
    } else {
        Version::HTTP_2
    };
    let underscores = [
        UnderscoreHeaders::DropHeader,
        UnderscoreHeaders::Allow,
        UnderscoreHeaders::RejectRequest,
    ][((knobs >> 1) & 3) as usize % 3];
    let method = [
        Method::GET,
        Method::POST,
        Method::OPTIONS,
        Method::HEAD,
        Method::CONNECT,
    ][(knobs >> 3) as usize % 5]
        .clone();
    let mut builder = Request::builder()
        .method(method)
        .version(version)
        .uri(target.as_str());
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            builder = builder.header(name, value);
        }
    }
    let Ok(mut req) = builder.body(()) else {
        return;
    };
    let settings = HttpSettings {
        path_normalization: normalization,
        headers_with_underscores: underscores,
    };
    let tagging = Tagging {
        origin: HeaderName::from_static("x-mesh-origin"),
        trust_domain: HeaderName::from_static("x-source-trust-domain"),
        principal: HeaderName::from_static("x-source-principal"),
        forward_client_cert: ForwardClientCert::SanitizeSet,
        client_cert: false,
        client_chain: false,
        proxy_protocol_tlv: None,
    };
    let owned = Owned::new(&tagging, underscores);
    if canonicalize(&mut req, &settings, &owned).is_err() {
        return;
    }
    let (uri, headers) = (req.uri().clone(), req.headers().clone());
    let authority = match (version, uri.authority()) {
        (Version::HTTP_2, Some(a)) => a.as_str().to_string(),
        _ => headers["host"].to_str().expect("Host is text").to_string(),
    };
    assert!(
        matches!(canonical(&authority), Ok(Cow::Borrowed(_))),
        "authority {authority:?} is not canonical"
    );
    assert!(
        matches!(normalization.apply(uri.path()), Ok(Cow::Borrowed(_))),
        "path {:?} is not normalized",
        uri.path()
    );
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(!headers.contains_key(name), "{name} survived");
    }
    if let Err(e) = canonicalize(&mut req, &settings, &owned) {
        panic!("a canonical head was refused: {e:?} ({uri:?})");
    }
    assert_eq!(req.uri(), &uri, "the URI changed again");
    assert_eq!(req.headers(), &headers, "the headers changed again");
});
