//! A raw HTTP/1.1 backend that answers from a script: a status, a delay, a gRPC status, or a
//! connection closed without an answer; `200` once the script runs out. It records every
//! request it read (path and body), so a test can count the tries a proxy made and check what
//! each one carried.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One answer of the script.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// The status after a wait.
    Slow(Duration, u16),
    /// `200` with this `grpc-status` (a trailers-only gRPC answer).
    Grpc(u8),
    /// Close the connection without answering.
    Reset,
    /// `200` with a body of this many bytes, one at a time, this long apart.
    Trickle(Duration, usize),
    /// `200` with a body of this many bytes, written as fast as they are taken.
    Body(usize),
    /// `200` with a body of twice this many bytes: half, a pause this long, the other half.
    Halves(Duration, usize),
}

/// A request the backend read.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// The `host` header.
    pub host: String,
    pub body: Vec<u8>,
}

/// A running scripted backend; it stops with the test's runtime.
#[derive(Clone)]
pub struct Scripted {
    pub address: SocketAddr,
    /// Named in every answer's `x-backend` header.
    pub name: &'static str,
    script: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    pub async fn start(name: &'static str, script: &[Answer]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Self {
            address: listener.local_addr().unwrap(),
            name,
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            seen: Arc::default(),
        };
        let serving = backend.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serving.clone().serve(tcp));
            }
        });
        backend
    }

    /// Appends to the script.
    pub fn then(&self, answers: &[Answer]) {
        self.script.lock().unwrap().extend(answers.iter().copied());
    }

    /// The requests read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests on one connection, one after another.
    async fn serve(self, mut tcp: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let Some(seen) = read_request(&mut tcp, &mut buf).await else {
                return;
            };
            self.seen.lock().unwrap().push(seen);
            let answer = self.script.lock().unwrap().pop_front();
            let (status, grpc) = match answer.unwrap_or(Answer::Status(200)) {
                Answer::Status(s) => (s, None),
                Answer::Slow(wait, s) => {
                    tokio::time::sleep(wait).await;
                    (s, None)
                }
                Answer::Grpc(code) => (200, Some(code)),
                Answer::Reset => return,
                Answer::Trickle(gap, n) => {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
                    if tcp.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..n {
                        tokio::time::sleep(gap).await;
                        if tcp.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Answer::Halves(gap, n) => {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 2 * n);
                    let half = vec![b'x'; n];
                    if tcp.write_all(head.as_bytes()).await.is_err()
                        || tcp.write_all(&half).await.is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                    if tcp.write_all(&half).await.is_err() {
                        return;
                    }
                    continue;
                }
                Answer::Body(n) => {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
                    if tcp.write_all(head.as_bytes()).await.is_err()
                        || tcp.write_all(&vec![b'x'; n]).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            let grpc = grpc.map_or(String::new(), |c| {
                format!("content-type: application/grpc\r\ngrpc-status: {c}\r\n")
            });
            let body = format!("{} {status}", self.name);
            let response = format!(
                "HTTP/1.1 {status} X\r\nx-backend: {}\r\n{grpc}content-length: {}\r\n\r\n{body}",
                self.name,
                body.len()
            );
            if tcp.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// Reads one request (its head, and a `content-length` body). `None` when the connection ends
/// first.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length = header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let host = header("host").unwrap_or_default();
    while buf.len() < end + length {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[end..end + length].to_vec();
    buf.drain(..end + length);
    Some(Seen { path, host, body })
}
