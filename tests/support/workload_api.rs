//! A SPIFFE Workload API server on a Unix socket, as a SPIRE agent serves it: gRPC over
//! HTTP/2 (prior knowledge), `FetchX509SVID` streaming an `X509SVIDResponse` now and on every
//! change. The messages are encoded by hand from the API's `workload.proto`:
//!
//! ```text
//! message X509SVIDResponse { repeated X509SVID svids = 1; repeated bytes crl = 2;
//!                            map<string, bytes> federated_bundles = 3; }
//! message X509SVID { string spiffe_id = 1; bytes x509_svid = 2; bytes x509_svid_key = 3;
//!                    bytes bundle = 4; string hint = 5; }
//! ```

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};

use meshgate_pki::Workload;

/// One X509-SVID as the API serves it.
#[derive(Debug, Clone)]
pub struct ServedSvid {
    pub spiffe_id: String,
    /// DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
    /// DER roots of the SVID's trust domain.
    pub bundle: Vec<Vec<u8>>,
}

impl ServedSvid {
    /// `workload`'s chain, key and bundle, for `spiffe_id`.
    pub fn of(spiffe_id: &str, workload: &Workload) -> Self {
        Self {
            spiffe_id: spiffe_id.to_string(),
            chain: ders(&workload.chain_pem),
            key: match PrivateKeyDer::from_pem_slice(workload.key_pem.as_bytes()).unwrap() {
                PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
                other => panic!("not PKCS#8: {other:?}"),
            },
            bundle: ders(&workload.root_pem),
        }
    }
}

/// What the API serves: SVIDs (the first is the default) and federated bundles.
#[derive(Debug, Clone, Default)]
pub struct Served {
    pub svids: Vec<ServedSvid>,
    /// Trust domain name -> DER roots.
    pub federated: Vec<(String, Vec<Vec<u8>>)>,
}

/// A Workload API server, stopped when dropped.
pub struct WorkloadApiServer {
    pub socket: PathBuf,
    served: watch::Sender<Served>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkloadApiServer {
    /// Listens on `socket` (removed first if it exists), serving `served`.
    pub fn start(socket: &Path, served: Served) -> Self {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let (tx, rx) = watch::channel(served);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, rx.clone()));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            socket: socket.to_path_buf(),
            served: tx,
            task,
        }
    }

    /// `unix:///...` of the socket.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Streams `served` to every open `FetchX509SVID`, and to later ones.
    pub fn serve(&self, served: Served) {
        self.served.send_replace(served);
    }
}

impl Drop for WorkloadApiServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn answer(
    req: Request<Incoming>,
    mut served: watch::Receiver<Served>,
) -> Result<Response<Stream>, Infallible> {
    let grpc = |status: u32, message: &str| {
        // Trailers-only: the status in the headers, no body.
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/grpc")
            .header("grpc-status", status.to_string())
            .header("grpc-message", message)
            .body(Stream::empty())
            .unwrap()
    };
    if req.uri().path() != "/SpiffeWorkloadAPI/FetchX509SVID" {
        return Ok(grpc(12, "unimplemented"));
    }
    // The Workload API refuses a call without its security header (INVALID_ARGUMENT).
    if req
        .headers()
        .get("workload.spiffe.io")
        .map(|v| v.as_bytes())
        != Some(b"true")
    {
        return Ok(grpc(3, "security header missing from request"));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let message = grpc_frame(&encode(&served.borrow_and_update()));
            if tx.send(message).await.is_err() || served.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .body(Stream(Some(rx)))
        .unwrap())
}

/// A streamed response body: every message sent, open until the sender goes.
pub struct Stream(Option<mpsc::Receiver<Bytes>>);

impl Stream {
    fn empty() -> Self {
        Self(None)
    }
}

impl Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.0 {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// The gRPC length-prefixed message: not compressed, 4-byte big-endian length.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

fn encode(served: &Served) -> Vec<u8> {
    let mut response = Vec::new();
    for svid in &served.svids {
        let mut m = Vec::new();
        field(&mut m, 1, svid.spiffe_id.as_bytes());
        field(&mut m, 2, &svid.chain.concat());
        field(&mut m, 3, &svid.key);
        field(&mut m, 4, &svid.bundle.concat());
        field(&mut response, 1, &m);
    }
    for (td, roots) in &served.federated {
        let mut entry = Vec::new();
        field(&mut entry, 1, td.as_bytes());
        field(&mut entry, 2, &roots.concat());
        field(&mut response, 3, &entry);
    }
    response
}

/// A length-delimited field (wire type 2).
fn field(out: &mut Vec<u8>, number: u64, value: &[u8]) {
    varint(out, number << 3 | 2);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The DER of every certificate in `pem`.
pub fn ders(pem: &str) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect()
}
