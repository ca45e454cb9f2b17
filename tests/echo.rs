//! `meshgate echo` as a load-test target: fortio's echo parameters (`delay`, `status`, `size`,
//! `header`, `close`), the JSON echo beside them, and the statistics at `/stats/prometheus`.
//! Real sockets on 127.0.0.1 and hyper clients; delays are asserted as "at least", never "at
//! most".

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use meshgate_proxy::echo::{Echo, Limits};
use support::client::{plain_request, Conn, Reply};
use support::TIMEOUT;

fn echo() -> Echo {
    Echo::start("127.0.0.1:0".parse().unwrap()).unwrap()
}

async fn get(echo: &Echo, path: &str) -> Reply {
    request(echo, Method::GET, path, &[], "").await
}

async fn request(
    echo: &Echo,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Reply {
    plain_request(
        echo.address,
        method,
        "echo.test",
        path,
        headers,
        Bytes::from_static(body.as_bytes()),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One keep-alive HTTP/1.1 (or h2c) connection to the echo server.
async fn connect(echo: &Echo, h2: bool) -> (Conn, tokio::task::JoinHandle<bool>) {
    let tcp = TcpStream::connect(echo.address).await.unwrap();
    Conn::open(tcp, h2).await.unwrap()
}

async fn status_on(conn: &mut Conn, path: &str) -> StatusCode {
    let response = tokio::time::timeout(TIMEOUT, conn.send("echo.test", path, &[]))
        .await
        .expect("timed out")
        .unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn the_request_body_comes_back_with_its_content_type() {
    let echo = echo();
    for path in [
        "/echo",
        "/echo/any/path",
        "/?delay=0s",
        "/anything?x=1&status=200",
    ] {
        let r = request(
            &echo,
            Method::POST,
            path,
            &[("content-type", "text/x-load-test")],
            "abcdef",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body, "abcdef", "{path}");
        assert_eq!(
            header(&r, "content-type"),
            Some("text/x-load-test"),
            "{path}"
        );
        assert_eq!(header(&r, "content-length"), Some("6"), "{path}");
    }
    // A GET has no body to send back, and gets none (fortio's /debug dump is the JSON echo).
    let r = get(&echo, "/echo").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty(), "{:?}", r.body);
    assert_eq!(header(&r, "content-type"), None);
}

#[tokio::test]
async fn status_answers_with_the_code_or_draws_it_from_a_list() {
    let echo = echo();
    let (mut conn, _task) = connect(&echo, false).await;
    assert_eq!(status_on(&mut conn, "/?status=418").await.as_u16(), 418);
    assert_eq!(status_on(&mut conn, "/?status=567").await.as_u16(), 567);
    for _ in 0..20 {
        assert_eq!(status_on(&mut conn, "/?status=503:100").await.as_u16(), 503);
        assert_eq!(
            status_on(&mut conn, "/?status=503:0,429:100")
                .await
                .as_u16(),
            429
        );
        assert_eq!(status_on(&mut conn, "/?status=503:0").await.as_u16(), 200);
        assert_eq!(
            status_on(&mut conn, "/?status=503:0%25").await.as_u16(),
            200
        );
    }
    // 30% 503, 20% 429, the rest 200: 400 draws, bounds far outside what chance does.
    let mut seen: HashMap<u16, u32> = HashMap::new();
    for _ in 0..400 {
        let status = status_on(&mut conn, "/?status=503:30,429:20").await;
        *seen.entry(status.as_u16()).or_default() += 1;
    }
    let count = |code| seen.get(&code).copied().unwrap_or(0);
    assert!((60..=180).contains(&count(503)), "{seen:?}");
    assert!((30..=130).contains(&count(429)), "{seen:?}");
    assert!((120..=280).contains(&count(200)), "{seen:?}");
    assert_eq!(count(503) + count(429) + count(200), 400, "{seen:?}");
}

#[tokio::test]
async fn delay_waits_at_least_that_long_first() {
    let echo = echo();
    for (path, at_least) in [
        ("/?delay=60ms", 60),
        ("/?delay=0.04s", 40),
        ("/?delay=40ms:100", 40),
        ("/?delay=1s:0,40ms:100&status=201", 40),
    ] {
        let start = Instant::now();
        let r = get(&echo, path).await;
        let took = start.elapsed();
        assert!(r.status.is_success(), "{path}: {}", r.status);
        assert!(
            took >= Duration::from_millis(at_least),
            "{path} answered after {took:?}"
        );
    }
}

#[tokio::test]
async fn a_delay_over_the_maximum_sleeps_the_maximum() {
    let limits = Limits {
        max_delay: Duration::from_millis(100),
        ..Limits::default()
    };
    let echo = Echo::start_with("127.0.0.1:0".parse().unwrap(), limits).unwrap();
    let start = Instant::now();
    // An hour, cut to 100 ms: the client's timeout is far shorter than the hour.
    let r = get(&echo, "/?delay=1h").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn size_sends_that_many_payload_bytes_instead_of_the_body() {
    let limits = Limits {
        max_payload: 4096,
        ..Limits::default()
    };
    let echo = Echo::start_with("127.0.0.1:0".parse().unwrap(), limits).unwrap();
    let post = |path: &'static str| request(&echo, Method::POST, path, &[], "hello");

    let r = post("/?size=1000").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 1000);
    assert_eq!(header(&r, "content-type"), Some("application/octet-stream"));
    assert_eq!(header(&r, "content-length"), Some("1000"));
    // Pseudo-random, so compression cannot flatter a benchmark; the same bytes every time.
    let distinct: std::collections::HashSet<u8> = r.body.iter().copied().collect();
    assert!(distinct.len() > 200, "{} distinct bytes", distinct.len());
    assert_eq!(post("/?size=1000").await.body, r.body);
    assert_eq!(post("/?size=10").await.body, r.body.slice(..10));

    assert_eq!(post("/?size=100:100").await.body.len(), 100);
    assert_eq!(post("/?size=100:0").await.body, "hello");
    assert_eq!(post("/?size=0").await.body.len(), 0);
    assert_eq!(
        post("/?size=0&status=404").await.status,
        StatusCode::NOT_FOUND
    );
    // Over the maximum: cut to it, as fortio does.
    assert_eq!(post("/?size=100000").await.body.len(), 4096);
}

#[tokio::test]
async fn header_adds_response_headers() {
    let echo = echo();
    let r = request(
        &echo,
        Method::POST,
        "/?header=X-Foo:Bar&header=x-foo:%20Baz&header=Content-Type:text/x-mine&header=",
        &[("content-type", "text/plain")],
        "body",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let foo: Vec<_> = r.headers.get_all("x-foo").iter().collect();
    assert_eq!(foo, ["Bar", "Baz"]);
    let types: Vec<_> = r.headers.get_all(header::CONTENT_TYPE).iter().collect();
    assert_eq!(types, ["text/x-mine"], "a header= replaces the echo's own");
    assert_eq!(r.body, "body");
}

#[tokio::test]
async fn close_ends_the_http1_connection_after_the_response() {
    let echo = echo();

    // Without close, and with close=0 or false, the connection serves on.
    let (mut conn, task) = connect(&echo, false).await;
    for path in [
        "/?status=200",
        "/?close=0",
        "/?close=false",
        "/?close=0&status=201",
    ] {
        assert!(status_on(&mut conn, path).await.is_success(), "{path}");
    }
    assert!(!task.is_finished());

    for path in ["/?close=true", "/?close=100", "/?close=100%25&size=10"] {
        let (mut conn, task) = connect(&echo, false).await;
        let response = conn.send("echo.test", path, &[]).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers().get(header::CONNECTION).unwrap(),
            "close",
            "{path}"
        );
        response.into_body().collect().await.unwrap();
        // The server closed the connection: the client's connection task ends, cleanly.
        let ended = tokio::time::timeout(TIMEOUT, task).await;
        assert!(matches!(ended, Ok(Ok(true))), "{path}: {ended:?}");
    }
}

#[tokio::test]
async fn close_ends_an_http2_connection_with_a_goaway() {
    let echo = echo();
    let (mut conn, task) = connect(&echo, true).await;
    assert_eq!(status_on(&mut conn, "/?close=false").await, StatusCode::OK);
    assert!(!task.is_finished());
    let response = conn.send("echo.test", "/?close=true", &[]).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    let ended = tokio::time::timeout(TIMEOUT, task).await;
    assert!(matches!(ended, Ok(Ok(true))), "{ended:?}");
}

#[tokio::test]
async fn bad_parameters_are_a_400_that_says_why() {
    let echo = echo();
    for (path, reason) in [
        ("/?delay=abc", "delay=abc: not a duration"),
        ("/?delay=-1s", "delay=-1s: not a duration"),
        (
            "/?status=99",
            "status=99: not a status code from 200 to 999",
        ),
        (
            "/?status=503:60,429:50",
            "percentages add up to more than 100",
        ),
        ("/?status=503,429", "each entry of a list is VALUE:PERCENT"),
        ("/?status=503:150", "not a percentage from 0 to 100"),
        ("/?size=-1", "size=-1: not a size in bytes"),
        ("/?size=1k:10", "size=1k:10: not a size in bytes"),
        (
            "/?close=maybe",
            "close=maybe: not true, false or a percentage",
        ),
        ("/?header=NoColon", "header=NoColon: not Name:Value"),
        (
            "/?header=Content-Length:1",
            "framing and connection headers",
        ),
        (
            "/?status=200&status=503",
            "status=503: given more than once",
        ),
        ("/?gzip=true", "gzip=true: meshgate echo does not compress"),
        ("/?delay=%zz", "not valid percent-encoded UTF-8"),
    ] {
        // The request's other parameters take no effect: nothing sleeps or closes.
        let r = request(&echo, Method::POST, path, &[], "ignored").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.starts_with("bad echo parameter: "), "{path}: {body}");
        assert!(body.contains(reason), "{path}: {body}");
    }
}

#[tokio::test]
async fn without_fortio_parameters_the_json_echo_answers_as_before() {
    let echo = echo();
    let r = get(&echo, "/anything?x=1").await;
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(r.json()["path"], "/anything?x=1");
    assert_eq!(r.json()["method"], "GET");
    let r = get(&echo, "/status/418").await;
    assert_eq!(r.status.as_u16(), 418);
    assert_eq!(r.json()["path"], "/status/418");
    let start = Instant::now();
    let r = get(&echo, "/delay/40").await;
    assert!(start.elapsed() >= Duration::from_millis(40));
    assert_eq!(r.json()["path"], "/delay/40");
}

#[tokio::test]
async fn stats_count_and_time_what_was_served() {
    let echo = echo();
    for _ in 0..3 {
        assert_eq!(get(&echo, "/?status=200").await.status, StatusCode::OK);
    }
    assert_eq!(get(&echo, "/?status=503").await.status.as_u16(), 503);
    assert_eq!(get(&echo, "/?status=abc").await.status.as_u16(), 400);
    assert_eq!(get(&echo, "/json").await.status, StatusCode::OK);
    assert_eq!(get(&echo, "/?delay=60ms").await.status, StatusCode::OK);
    request(&echo, Method::POST, "/?size=100", &[], "12345").await;

    let r = get(&echo, "/stats/prometheus").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        header(&r, "content-type"),
        Some("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let samples: HashMap<&str, f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    let sample = |k: &str| {
        *samples
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
    };
    let histogram = "meshgate_echo_request_duration_seconds";
    assert_eq!(
        sample(&format!(r#"{histogram}_count{{code_class="2xx"}}"#)),
        6.0
    );
    assert_eq!(
        sample(&format!(
            r#"{histogram}_bucket{{code_class="2xx",le="+Inf"}}"#
        )),
        6.0
    );
    assert_eq!(
        sample(&format!(r#"{histogram}_count{{code_class="4xx"}}"#)),
        1.0
    );
    assert_eq!(
        sample(&format!(r#"{histogram}_count{{code_class="5xx"}}"#)),
        1.0
    );
    // The delayed request took at least 60 ms: not in the 50 ms bucket, in the 100 ms one or
    // a later one; its time is in the sum.
    assert!(
        sample(&format!(
            r#"{histogram}_bucket{{code_class="2xx",le="0.05"}}"#
        )) <= 5.0
    );
    assert!(sample(&format!(r#"{histogram}_sum{{code_class="2xx"}}"#)) >= 0.06);
    // Buckets are cumulative.
    let mut last = 0.0;
    for le in ["0.0001", "0.001", "0.01", "0.1", "1", "10", "60", "+Inf"] {
        let n = sample(&format!(
            r#"{histogram}_bucket{{code_class="2xx",le="{le}"}}"#
        ));
        assert!(n >= last, "le={le}: {n} < {last}\n{text}");
        last = n;
    }
    let requests = "meshgate_echo_requests_total";
    assert_eq!(
        sample(&format!(r#"{requests}{{mode="fortio",code_class="2xx"}}"#)),
        5.0
    );
    assert_eq!(
        sample(&format!(r#"{requests}{{mode="json",code_class="2xx"}}"#)),
        1.0
    );
    assert_eq!(
        sample(&format!(r#"{requests}{{mode="fortio",code_class="4xx"}}"#)),
        1.0
    );
    assert_eq!(
        sample(&format!(r#"{requests}{{mode="fortio",code_class="5xx"}}"#)),
        1.0
    );
    assert_eq!(sample("meshgate_echo_received_bytes_total"), 5.0);
    assert!(sample("meshgate_echo_sent_bytes_total") >= 100.0);
    // One connection per request, the statistics' own included.
    assert_eq!(sample("meshgate_echo_connections_total"), 9.0);

    // Reading the statistics is not counted in them.
    let again = String::from_utf8(get(&echo, "/stats/prometheus").await.body.to_vec()).unwrap();
    let count = format!(r#"{histogram}_count{{code_class="2xx"}} 6"#);
    assert!(again.lines().any(|l| l == count), "{again}");
    let r = request(&echo, Method::POST, "/stats/prometheus", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&r, "allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn close_is_counted() {
    let echo = echo();
    let (mut conn, task) = connect(&echo, false).await;
    assert_eq!(status_on(&mut conn, "/?close=true").await, StatusCode::OK);
    let _ = tokio::time::timeout(TIMEOUT, task).await;
    let text = get(&echo, "/stats/prometheus").await.body;
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.lines()
            .any(|l| l == "meshgate_echo_closed_connections_total 1"),
        "{text}"
    );
}
