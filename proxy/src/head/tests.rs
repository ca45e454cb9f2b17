use http::header::{HeaderName, HeaderValue};
use http::{Request, Version};

use meshgate_config::model::{ForwardClientCert, HttpSettings, Tagging, UnderscoreHeaders};

use super::*;

fn owned(underscores: UnderscoreHeaders) -> Owned {
    let tagging = Tagging {
        origin: HeaderName::from_static("x-mesh-origin"),
        trust_domain: HeaderName::from_static("x-source-trust-domain"),
        principal: HeaderName::from_static("x-source-principal"),
        forward_client_cert: ForwardClientCert::SanitizeSet,
        client_cert: false,
        client_chain: false,
        proxy_protocol_tlv: None,
    };
    Owned::new(&tagging, underscores)
}

fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::get(uri).version(version);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).unwrap()
}

fn run(req: &mut Request<()>) -> Result<(), HeadError> {
    canonicalize(
        req,
        &HttpSettings::default(),
        &owned(UnderscoreHeaders::DropHeader),
    )
}

#[test]
fn authorities_are_made_canonical_or_refused() {
    let cases: &[(&str, Result<&str, HeadError>)] = &[
        ("api.example.com", Ok("api.example.com")),
        ("api.example.com:8443", Ok("api.example.com:8443")),
        ("API.Example.COM", Ok("api.example.com")),
        ("api.example.com.", Ok("api.example.com")),
        ("api.example.com.:443", Ok("api.example.com:443")),
        ("api.example.com:", Ok("api.example.com")),
        ("[::1]:443", Ok("[::1]:443")),
        ("[::ABCD]:443", Ok("[::abcd]:443")),
        ("a_b~c-d.Example", Ok("a_b~c-d.example")),
        ("caf\u{e9}.example", Err(HeadError::BadAuthority)),
        ("127.0.0.1", Ok("127.0.0.1")),
        ("user@api.example.com", Err(HeadError::BadAuthority)),
        ("api.example.com:99999", Err(HeadError::BadAuthority)),
        ("api.example.com:80a", Err(HeadError::BadAuthority)),
        ("api example.com", Err(HeadError::BadAuthority)),
        ("api.example.com/x", Err(HeadError::BadAuthority)),
        ("", Err(HeadError::BadAuthority)),
        (".", Err(HeadError::BadAuthority)),
        ("a..", Err(HeadError::BadAuthority)),
        ("[::1", Err(HeadError::BadAuthority)),
        ("[zz]", Err(HeadError::BadAuthority)),
    ];
    for (raw, want) in cases {
        assert_eq!(
            canonical(raw).as_deref().map_err(|e| *e),
            want.as_ref().map(|s| *s).map_err(|e| *e),
            "{raw}"
        );
    }
    assert!(matches!(canonical("a.b:443"), Ok(Cow::Borrowed(_))));
}

/// Every ASCII byte inside a host: letters (lowercased), digits and `-._~` are kept, all
/// else refused, as RFC 3986's registered names without percent-encoding.
#[test]
fn each_ascii_byte_of_a_host_is_kept_lowercased_or_refused() {
    for host in ["a\u{e9}b", "a\u{0}b", "a\u{7f}b"] {
        assert_eq!(canonical(host), Err(HeadError::BadAuthority), "{host:?}");
    }
    for c in (0u8..0x80).map(char::from) {
        let host = format!("a{c}b");
        let kept = c.is_ascii_alphanumeric() || "-._~".contains(c);
        let want = format!("a{}b", c.to_ascii_lowercase());
        match canonical(&host) {
            Ok(got) => assert!(kept && got == want, "{host:?} became {got:?}"),
            Err(e) => assert!(!kept && e == HeadError::BadAuthority, "{host:?}: {e:?}"),
        }
    }
}

#[test]
fn an_absolute_form_target_replaces_host() {
    let mut req = request(
        Version::HTTP_11,
        "https://Allowed.example/x?y=1",
        &[("host", "admin.example")],
    );
    run(&mut req).unwrap();
    assert_eq!(req.headers()["host"], "allowed.example");
    assert_eq!(req.uri().authority(), None);
    assert_eq!(req.uri().to_string(), "/x?y=1");
}

#[test]
fn http2_authority_and_host_must_agree() {
    let mut req = request(
        Version::HTTP_2,
        "https://allowed.example/",
        &[("host", "admin.example")],
    );
    assert_eq!(run(&mut req), Err(HeadError::AuthorityMismatch));
    let mut req = request(
        Version::HTTP_2,
        "https://allowed.example/",
        &[("host", "Allowed.Example")],
    );
    run(&mut req).unwrap();
    assert!(req.headers().get("host").is_none());
    assert_eq!(req.uri().authority().unwrap().as_str(), "allowed.example");
}

#[test]
fn one_host_header_only() {
    let mut req = request(
        Version::HTTP_11,
        "/",
        &[("host", "a.example"), ("host", "b.example")],
    );
    assert_eq!(run(&mut req), Err(HeadError::DuplicateHost));
    let mut req = request(Version::HTTP_11, "/", &[]);
    assert_eq!(run(&mut req), Err(HeadError::NoAuthority));
}

#[test]
fn paths_are_normalized_and_queries_kept() {
    let mut req = request(
        Version::HTTP_11,
        "//admin/./x/../secret?a=%2F",
        &[("host", "a.example")],
    );
    run(&mut req).unwrap();
    assert_eq!(req.uri().to_string(), "/admin/secret?a=%2F");
    let mut req = request(
        Version::HTTP_11,
        "/admin%2Fsecret",
        &[("host", "a.example")],
    );
    assert_eq!(run(&mut req), Err(HeadError::Path(PathError::EscapedSlash)));
}

#[test]
fn connection_nominations() {
    for owned in [
        "x-mesh-origin",
        "X-Source-Trust-Domain",
        "x-source-principal",
        "x-forwarded-client-cert",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "host",
        ":authority",
    ] {
        let mut req = request(
            Version::HTTP_11,
            "/",
            &[
                ("host", "a.example"),
                ("connection", &format!("close, {owned}")),
            ],
        );
        assert_eq!(run(&mut req), Err(HeadError::NominatesOwned), "{owned}");
    }
    let many = (0..10)
        .map(|i| format!("x-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut req = request(
        Version::HTTP_11,
        "/",
        &[("host", "a.example"), ("connection", &many)],
    );
    assert_eq!(run(&mut req), Err(HeadError::TooManyNominations));

    let mut req = request(
        Version::HTTP_11,
        "/",
        &[
            ("host", "a.example"),
            ("connection", "keep-alive, X-Custom"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("te", "gzip, trailers"),
            ("x-kept", "1"),
        ],
    );
    run(&mut req).unwrap();
    let h = req.headers();
    for gone in ["connection", "x-custom", "keep-alive", "upgrade"] {
        assert!(h.get(gone).is_none(), "{gone} survived");
    }
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-kept"], "1");

    // Without Connection: the other hop-by-hop headers still go, and TE without `trailers`.
    let mut req = request(
        Version::HTTP_11,
        "/",
        &[
            ("host", "a.example"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("x-kept", "1"),
        ],
    );
    run(&mut req).unwrap();
    let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["host", "x-kept"]);
}

#[test]
fn underscore_headers_by_action() {
    let headers = [
        ("host", "a.example"),
        ("x_mesh_origin", "local"),
        ("x_forwarded_for", "10.0.0.1"),
        ("x_custom", "1"),
        ("x-kept", "1"),
    ];
    let cases = [
        (UnderscoreHeaders::DropHeader, Ok(&["x-kept"][..])),
        (UnderscoreHeaders::Allow, Ok(&["x-kept", "x_custom"][..])),
        (UnderscoreHeaders::RejectRequest, Err(HeadError::Underscore)),
    ];
    for (action, want) in cases {
        let mut req = request(Version::HTTP_11, "/", &headers);
        let settings = HttpSettings {
            headers_with_underscores: action,
            ..HttpSettings::default()
        };
        let result = canonicalize(&mut req, &settings, &owned(action));
        match want {
            Err(e) => assert_eq!(result, Err(e), "{action:?}"),
            Ok(kept) => {
                result.unwrap();
                let mut names: Vec<&str> = req
                    .headers()
                    .keys()
                    .map(|k| k.as_str())
                    .filter(|k| *k != "host")
                    .collect();
                names.sort();
                let mut kept = kept.to_vec();
                kept.sort();
                assert_eq!(names, kept, "{action:?}");
            }
        }
    }
}

#[test]
fn connect_is_refused() {
    let mut req = Request::connect("a.example:443")
        .header("host", "a.example:443")
        .body(())
        .unwrap();
    assert_eq!(run(&mut req), Err(HeadError::Connect));
}

#[test]
fn trailers_lose_owned_headers() {
    let o = owned(UnderscoreHeaders::Allow);
    let mut t = http::HeaderMap::new();
    for (k, v) in [
        ("x-mesh-origin", "local"),
        ("x_source_principal", "x"),
        ("x-forwarded-client-cert", "x"),
        ("x_other", "kept with ALLOW"),
        ("grpc-status", "0"),
    ] {
        t.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    o.strip_trailers(&mut t);
    let mut names: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(names, ["grpc-status", "x_other"]);
}

/// Each hop-by-hop name's bit is its own position in `HOP_BY_HOP`, whatever its spelling on
/// the wire: `has` and `remove_from` read the bits by position.
#[test]
fn hop_by_hop_bits_follow_the_list() {
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        assert_eq!(HopByHop::bit(name), 1 << i, "{name}");
        let upper = HeaderName::from_bytes(name.as_str().to_uppercase().as_bytes()).unwrap();
        assert_eq!(HopByHop::bit(&upper), 1 << i, "{upper}");
        let mut headers = http::HeaderMap::new();
        headers.insert(upper, HeaderValue::from_static("x"));
        headers.insert("x-other", HeaderValue::from_static("y"));
        let (found, _) = HopByHop::scan_request(&headers);
        assert!(found.has(name), "{name}");
        found.remove_from(&mut headers);
        assert_eq!(headers.len(), 1, "{name} stayed");
    }
    assert_eq!(HopByHop::bit(&HeaderName::from_static("x-connection")), 0);
    assert_eq!(HopByHop::bit(&http::header::CONTENT_LENGTH), 0);
}

/// A Connection token names one of `HOP_BY_HOP` in any case, and nothing else does.
#[test]
fn connection_tokens_name_the_hop_by_hop_fields_in_any_case() {
    for name in &HOP_BY_HOP {
        assert!(HopByHop::names(name.as_str().as_bytes()), "{name}");
        assert!(
            HopByHop::names(name.as_str().to_uppercase().as_bytes()),
            "{name}"
        );
    }
    for other in [
        "",
        "close",
        "x-private",
        "tes",
        "transfer-encodings",
        "keep alive",
    ] {
        assert!(!HopByHop::names(other.as_bytes()), "{other}");
    }
    let nominated: Vec<HeaderName> =
        HopByHop::nominated(b"keep-alive, X-Private, close, Upgrade").collect();
    assert_eq!(nominated, ["x-private", "close"]);
    // A token that is not a field name is passed over, the others still count.
    let nominated: Vec<HeaderName> = HopByHop::nominated(b"x-a, \xc3\xa9, b c,,").collect();
    assert_eq!(nominated, ["x-a"]);
}
