//! Accept: bind a listener (reuseaddr, backlog; deliberately no reuseport, see the README) and
//! hand each accepted stream, with nodelay set, to a handler until shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::warn;

/// Binds `address` for accepting.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until `shutdown` turns true, calling `handle` for each stream.
pub async fn accept_loop<F>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr),
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    handle(stream, peer);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Any change, or the sender going away, means stop.
            _ = shutdown.changed() => return,
        }
    }
}

const BACKLOG: i32 = 1024;
