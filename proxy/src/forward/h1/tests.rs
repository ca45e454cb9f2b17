//! meshgate's HTTP/1.1 client against an upstream on a real socket that answers with the
//! bytes each test gives, written in the pieces it gives (each piece a separate write, so
//! heads, chunk lines and trailers arrive split).

use std::time::Duration;

use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::either::Either;

use super::*;

/// What the upstream does once it wrote a response.
#[derive(Clone, Copy)]
enum After {
    /// Keeps the connection open and answers the next request too.
    Stay,
    /// Closes the connection.
    Close,
}

/// An upstream on 127.0.0.1 that answers each request head it reads with the next of
/// `responses`, each written piece by piece; the heads it read come out of the channel.
async fn upstream(
    responses: Vec<Vec<&'static [u8]>>,
    after: After,
) -> (TcpStream, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        for pieces in responses {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if socket.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = heads.send(head);
            for piece in pieces {
                socket.write_all(piece).await.unwrap();
                socket.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let After::Stay = after {
            // Holds the connection until the client is gone.
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        }
    });
    (TcpStream::connect(addr).await.unwrap(), seen)
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri)
        .header("host", "backend")
        .body(())
        .unwrap()
}

/// The response's head, its data, its trailers, and the body (for its connection).
struct Read {
    response: Response<()>,
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    body: Body,
}

/// Reads the response to `req` into the request's map (a copy), as the pool does.
async fn read(conn: Conn, req: &Request<()>) -> Result<Read, Error> {
    let room = req.headers().clone();
    let (parts, mut body) = conn.read_response(req.method(), room).await?.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Read {
        response: Response::from_parts(parts, ()),
        data,
        trailers,
        body,
    })
}

/// A head's fields in the map's order, as text.
fn fields(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect()
}

/// One exchange of `req` with an upstream that answers `pieces`.
async fn exchange(
    req: Request<()>,
    pieces: Vec<&'static [u8]>,
    after: After,
) -> Result<Read, Error> {
    let (tcp, _) = upstream(vec![pieces], after).await;
    let mut conn = Conn::new(Either::Left(tcp));
    conn.write_head(&req).await.unwrap();
    read(conn, &req).await
}

/// A GET answered with `pieces` by an upstream that keeps the connection.
async fn kept(pieces: Vec<&'static [u8]>) -> Read {
    exchange(get("/"), pieces, After::Stay).await.unwrap()
}

#[tokio::test]
async fn the_head_goes_in_origin_form_with_its_fields_and_no_transfer_encoding() {
    let (tcp, mut seen) =
        upstream(vec![vec![b"HTTP/1.1 204 No Content\r\n\r\n"]], After::Stay).await;
    let mut conn = Conn::new(Either::Left(tcp));
    let req = Request::delete("http://ignored.example/a/b?c=1&d")
        .header("host", "backend:8080")
        .header("x-tag", "one")
        .header("x-tag", "two")
        .header("transfer-encoding", "chunked")
        .body(())
        .unwrap();
    conn.write_head(&req).await.unwrap();
    let head = seen.recv().await.unwrap();
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "DELETE /a/b?c=1&d HTTP/1.1\r\nhost: backend:8080\r\nx-tag: one\r\nx-tag: two\r\n\r\n"
    );
    let read = read(conn, &req).await.unwrap();
    assert_eq!(read.response.status(), StatusCode::NO_CONTENT);
}

/// The head as `forward::remove_hop_by_hop` leaves what hyper's client reads: the same fields,
/// the others in the upstream's order, where removing from a map would move the last field
/// into the place of the one removed.
#[tokio::test]
async fn the_head_comes_without_hop_by_hop_fields_and_what_connection_names() {
    let head: &'static [u8] = b"HTTP/1.1 200 OK\r\n\
        Content-Type: text/plain\r\n\
        Connection: keep-alive, X-Private, close-ish\r\n\
        X-Private: 1\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\n\
        Upgrade: h2c\r\n\
        TE: trailers\r\n\
        x-kept: 1\r\n\
        Connection: Close-Ish\r\n\
        close-ish: gone\r\n\
        x-private: 2\r\n\
        Transfer-Encoding: chunked\r\n\
        x-also: 1\r\n\
        x-kept: 2\r\n\
        x-last: 1\r\n\
        \r\n0\r\n\r\n";
    let read = exchange(get("/"), vec![head], After::Close).await.unwrap();
    assert_eq!(
        fields(read.response.headers()),
        [
            ("content-type", "text/plain"),
            ("x-kept", "1"),
            ("x-kept", "2"),
            ("x-also", "1"),
            ("x-last", "1"),
        ]
    );
    // The same head, read by hyper's rules and cleaned as responses from hyper's client are.
    let mut parsed = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut parsed);
    response.parse(head).unwrap();
    let mut theirs = HeaderMap::new();
    for f in response.headers.iter() {
        theirs.append(
            HeaderName::from_bytes(f.name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(f.value).unwrap(),
        );
    }
    crate::forward::remove_hop_by_hop(&mut theirs);
    assert_eq!(read.response.headers(), &theirs);

    // A token that is not a field name names nothing; the others still name theirs.
    let read = kept(vec![
        b"HTTP/1.1 204 No Content\r\nConnection: x-a, \xc3\xa9, b c\r\nx-a: 1\r\nx-b: 1\r\n\r\n",
    ])
    .await;
    assert!(read.response.headers().get("x-a").is_none());
    assert_eq!(read.response.headers()["x-b"], "1");
    assert_eq!(read.response.headers().len(), 1);
}

#[tokio::test]
async fn a_content_length_body_arrives_whole_and_its_connection_carries_the_next_request() {
    let (tcp, mut seen) = upstream(
        vec![
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Le",
                b"ngth: 11\r\nx-a: 1\r\n\r\nhello",
                b" world",
            ],
            vec![b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"],
        ],
        After::Stay,
    )
    .await;
    let mut conn = Conn::new(Either::Left(tcp));
    let one = get("/one");
    conn.write_head(&one).await.unwrap();
    let mut first = read(conn, &one).await.unwrap();
    assert_eq!(first.response.status(), StatusCode::OK);
    assert_eq!(first.response.version(), Version::HTTP_11);
    assert_eq!(first.response.headers()["x-a"], "1");
    assert_eq!(first.response.headers()["content-length"], "11");
    assert_eq!(first.data, b"hello world");
    let mut conn = first.body.reusable().expect("kept for the next request");
    assert!(!conn.closed());
    let two = get("/two");
    conn.write_head(&two).await.unwrap();
    let mut second = read(conn, &two).await.unwrap();
    assert_eq!(second.response.status(), StatusCode::CREATED);
    assert_eq!(second.data, b"ok");
    assert!(second.body.reusable().is_some());
    assert!(seen.recv().await.unwrap().starts_with(b"GET /one "));
    assert!(seen.recv().await.unwrap().starts_with(b"GET /two "));
}

/// The response takes the map of its request, emptied, unless a request with many fields made
/// that map large: hyper's server keeps the response's map for the connection's next request.
#[tokio::test]
async fn a_response_reuses_its_request_map_unless_it_is_large() {
    for (room_for, kept) in [(40, true), (4 * RECYCLED_FIELDS + 1, false)] {
        let (tcp, _) = upstream(
            vec![vec![
                b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n",
            ]],
            After::Stay,
        )
        .await;
        let mut conn = Conn::new(Either::Left(tcp));
        let req = get("/");
        conn.write_head(&req).await.unwrap();
        let mut room = HeaderMap::with_capacity(room_for);
        room.extend(req.headers().clone());
        let capacity = room.capacity();
        let response = conn.read_response(req.method(), room).await.unwrap();
        assert_eq!(
            fields(response.headers()),
            [("x-a", "1"), ("content-length", "0")]
        );
        let now = response.headers().capacity();
        match kept {
            true => assert_eq!(now, capacity),
            false => assert_eq!(
                now,
                HeaderMap::<HeaderValue>::with_capacity(RECYCLED_FIELDS).capacity()
            ),
        }
    }
}

/// Each response on a connection is read for its own names, whether they repeat the last
/// response's, move, change case or are new: the names kept from one response to the next
/// are reused only for the same bytes at the same place.
#[tokio::test]
async fn each_response_on_a_connection_has_its_own_names() {
    let long = "x-".to_string() + &"n".repeat(40);
    let third = format!("HTTP/1.1 200 OK\r\nX-B: 3\r\n{long}: 4\r\nContent-Length: 0\r\n\r\n");
    let responses: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-B: 2\r\nx-a: 2\r\ncontent-length: 0\r\n\r\n",
        leak(third.clone()),
        leak(third),
    ];
    let (tcp, _) = upstream(responses.iter().map(|r| vec![*r]).collect(), After::Stay).await;
    let mut conn = Conn::new(Either::Left(tcp));
    let want: [&[(&str, &str)]; 5] = [
        &[("x-a", "1"), ("content-length", "0")],
        &[("x-a", "1"), ("content-length", "0")],
        &[("x-b", "2"), ("x-a", "2"), ("content-length", "0")],
        &[("x-b", "3"), (&long, "4"), ("content-length", "0")],
        &[("x-b", "3"), (&long, "4"), ("content-length", "0")],
    ];
    for want in want {
        // The request's map (its `host`) takes the response: none of its fields stay.
        let req = get("/");
        conn.write_head(&req).await.unwrap();
        let mut read = read(conn, &req).await.unwrap();
        assert_eq!(fields(read.response.headers()), want);
        conn = read.body.reusable().expect("kept for the next request");
    }
}

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_split_anywhere() {
    let mut read = kept(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5 \t",
        b";name=value\r\nhel",
        b"lo\r",
        b"\n6\r\n world\r\n0\r\nx-trailer: ",
        b"t1\r\nx-other: t2\r\n",
        b"\r\n",
    ])
    .await;
    assert_eq!(read.data, b"hello world");
    let trailers = read.trailers.expect("trailers");
    assert_eq!(trailers["x-trailer"], "t1");
    assert_eq!(trailers["x-other"], "t2");
    assert!(read.body.reusable().is_some());
}

#[tokio::test]
async fn a_chunked_body_without_trailers_ends_at_its_last_chunk() {
    let mut read = kept(vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ])
    .await;
    assert_eq!(read.data, b"abc");
    assert!(read.trailers.is_none());
    assert!(read.body.reusable().is_some());
}

#[tokio::test]
async fn a_body_without_length_runs_to_the_close_and_its_connection_is_not_kept() {
    let mut read = exchange(
        get("/"),
        vec![b"HTTP/1.1 200 OK\r\n\r\nuntil", b" the end"],
        After::Close,
    )
    .await
    .unwrap();
    assert_eq!(read.data, b"until the end");
    assert!(read.body.reusable().is_none());
    // A transfer coding that is not chunked last is read the same way.
    let mut read = exchange(
        get("/"),
        vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nraw"],
        After::Close,
    )
    .await
    .unwrap();
    assert_eq!(read.data, b"raw");
    assert!(read.body.reusable().is_none());
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_their_length_says() {
    let head = Request::head("/").header("host", "b").body(()).unwrap();
    let mut read = exchange(
        head,
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"],
        After::Stay,
    )
    .await
    .unwrap();
    assert!(read.data.is_empty());
    assert_eq!(read.response.headers()["content-length"], "5");
    assert!(read.body.reusable().is_some());
    for status in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
    ] {
        let mut read = kept(vec![status]).await;
        assert!(read.data.is_empty());
        assert!(read.body.reusable().is_some());
    }
}

#[tokio::test]
async fn informational_responses_are_passed_over() {
    let read = kept(vec![
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
        ]).await;
    assert_eq!(read.response.status(), StatusCode::OK);
    assert!(read.response.headers().get("link").is_none());
    assert_eq!(read.data, b"x");
}

#[tokio::test]
async fn close_and_http_1_0_keep_no_connection() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 1\r\n\r\nx"[..],
        b"HTTP/1.1 200 OK\r\nconnection: foo, close\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.0 200 OK\r\nconnection: close, keep-alive\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nx",
    ] {
        let mut read = kept(vec![response]).await;
        assert_eq!(read.data, b"x");
        assert!(
            read.body.reusable().is_none(),
            "{:?}",
            String::from_utf8_lossy(response)
        );
    }
    let mut read = kept(vec![
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nx",
    ])
    .await;
    assert_eq!(read.response.version(), Version::HTTP_10);
    assert!(read.body.reusable().is_some());
}

#[tokio::test]
async fn bytes_after_the_response_leave_its_connection_unused() {
    let mut read = kept(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n",
    ])
    .await;
    assert_eq!(read.data, b"x");
    assert!(read.body.reusable().is_none());
}

#[tokio::test]
async fn equal_content_lengths_are_one() {
    let read = kept(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    assert_eq!(read.data, b"ok");
}

/// `text` as the `'static` bytes an upstream piece is.
fn leak(text: String) -> &'static [u8] {
    Box::leak(text.into_bytes().into_boxed_slice())
}

/// The error of an exchange that must fail, as it reads in the log.
async fn failure(pieces: Vec<&'static [u8]>) -> String {
    match exchange(get("/"), pieces, After::Close).await {
        Ok(read) => panic!("read {:?}", String::from_utf8_lossy(&read.data)),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    for (response, why) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            "malformed response: Content-Length with Transfer-Encoding",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "malformed response: Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
            "malformed response: Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
            "malformed response: Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "malformed response: Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "malformed response: Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n",
            "malformed response: response head",
        ),
        (
            b"HTTP/1.1 2000 OK\r\n\r\n",
            "malformed response: response head",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "malformed response: 101 to a request that asked no upgrade",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gz\xa1p, chunked\r\n\r\n",
            "malformed response: Transfer-Encoding",
        ),
        (
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "malformed response: Transfer-Encoding",
        ),
    ] {
        let error = failure(vec![response]).await;
        assert_eq!(error, why, "for {:?}", String::from_utf8_lossy(response));
    }
}

#[tokio::test]
async fn malformed_chunks_are_refused() {
    for (body, why) in [
        (&b"zz\r\n"[..], "malformed response: chunk size"),
        (
            b"3\r\nabcX\r\n0\r\n\r\n",
            "malformed response: chunk data end",
        ),
        (b"fffffffffffffffff\r\n", "malformed response: chunk size"),
        (
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
            "malformed response: trailers",
        ),
        (
            b"3\r\nabc\r\n0\r\nx-t: 1\n\r\n",
            "malformed response: trailers",
        ),
        (b"3\nabc\r\n0\r\n\r\n", "malformed response: chunk size"),
        (
            b"3;a=\nb\r\nabc\r\n0\r\n\r\n",
            "malformed response: chunk size",
        ),
        (
            b"3;a\x01\r\nabc\r\n0\r\n\r\n",
            "malformed response: chunk size",
        ),
        (b";\r\n", "malformed response: chunk size"),
        (b"-3\r\n", "malformed response: chunk size"),
    ] {
        let head: &'static [u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let error = failure(vec![head, body]).await;
        assert_eq!(error, why, "for {:?}", String::from_utf8_lossy(body));
    }
    // Bounds, reached in pieces or whole.
    let line = "malformed response: chunk size line";
    for (body, why) in [
        (format!("1;{}", "x".repeat(MAX_CHUNK_LINE)), line),
        (
            format!("1;{}\r\nx\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE)),
            line,
        ),
        (
            format!("0\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD)),
            "response head larger than 61440 bytes or 100 fields",
        ),
    ] {
        let head: &'static [u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(failure(vec![head, leak(body)]).await, why);
    }
}

#[tokio::test]
async fn a_response_cut_short_is_an_error() {
    for pieces in [
        vec![&b"HTTP/1.1 200 OK\r\ncontent-le"[..]],
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
        vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab"],
        vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n"],
    ] {
        let error = failure(pieces).await;
        assert_eq!(error, "connection closed before the response was complete");
    }
}

#[tokio::test]
async fn a_head_too_large_is_refused() {
    let big: &'static [u8] = leak(format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD)
    ));
    let too_large = "response head larger than 61440 bytes or 100 fields";
    assert_eq!(failure(vec![big]).await, too_large);
    let many: &'static [u8] = leak(format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "x-f: 1\r\n".repeat(MAX_FIELDS + 1)
    ));
    assert_eq!(failure(vec![many]).await, too_large);
}

/// A connection kept after its response, which the upstream then closes.
async fn answered_then_closed() -> Conn {
    let (tcp, _) = upstream(
        vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]],
        After::Close,
    )
    .await;
    let mut conn = Conn::new(Either::Left(tcp));
    let req = get("/");
    conn.write_head(&req).await.unwrap();
    let mut read = read(conn, &req).await.unwrap();
    read.body.reusable().expect("framed and kept")
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_seen_closed() {
    let mut conn = answered_then_closed().await;
    let (done, seen) = oneshot::channel();
    tokio::spawn(async move {
        for _ in 0..200 {
            if conn.closed() {
                let _ = done.send(true);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = done.send(false);
    });
    assert!(seen.await.unwrap(), "the upstream's close was not seen");
}

#[tokio::test]
async fn a_connection_closed_before_any_byte_of_the_response_says_so() {
    // The upstream reads the request and closes: what a pooled connection closed while idle
    // looks like once a request went out on it.
    let error = failure(vec![]).await;
    assert_eq!(error, "connection closed before any byte of a response");
}

#[tokio::test]
async fn a_closed_connection_is_seen_closed_by_a_task_that_spent_its_budget() {
    let mut conn = answered_then_closed().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::future::poll_fn(|cx| {
        // Spend the task's budget, as a busy connection's task does; past it, a read in the
        // budget answers Pending whatever the socket has.
        while let Poll::Ready(progress) = tokio::task::coop::poll_proceed(cx) {
            progress.made_progress();
        }
        assert!(!tokio::task::coop::has_budget_remaining());
        assert!(conn.closed(), "seen open by a task without budget");
        // Nor does the check itself spend any.
        for i in 0..1000 {
            assert!(conn.closed(), "seen open at check {i}");
        }
        Poll::Ready(())
    })
    .await;
}

#[tokio::test]
async fn an_idle_tls_connection_reads_open_through_a_key_update_and_closed_after_close_notify() {
    use std::sync::Arc;

    use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let ca = Authority::root("root", KeyAlgorithm::EcdsaP256).unwrap();
    let mut spec = LeafSpec::spiffe("spiffe://example.com/ns/default/sa/upstream");
    spec.dns = vec!["upstream.test".into()];
    let leaf = ca.issue(&spec).unwrap();
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (step, mut steps) = mpsc::unbounded_channel::<()>();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(tls.read(&mut byte).await.unwrap(), 1);
            head.push(byte[0]);
        }
        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        // A KeyUpdate: a TLS record with no application data in it.
        steps.recv().await;
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        tls.flush().await.unwrap();
        steps.recv().await;
        tls.shutdown().await.unwrap();
        steps.recv().await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("upstream.test").unwrap(), tcp)
        .await
        .unwrap();
    let mut conn = Conn::new(Either::Right(Box::new(tls)));
    let req = get("/");
    conn.write_head(&req).await.unwrap();
    let mut read = read(conn, &req).await.unwrap();
    assert_eq!(read.data, b"ok");
    let mut conn = read.body.reusable().expect("framed and kept");
    assert!(!conn.closed());
    step.send(()).unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !conn.closed(),
            "a key update read as the end of the connection"
        );
    }
    step.send(()).unwrap();
    let mut seen = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if conn.closed() {
            seen = true;
            break;
        }
    }
    assert!(seen, "close_notify was not seen");
    let _ = step.send(());
}
