//! Accept: bind a listener (reuseaddr, backlog; deliberately no reuseport, see the README) and
//! hand each accepted stream to a handler until shutdown. Nodelay is set on the listening
//! socket, and Linux gives it to every socket accepted from it: no call per connection.

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
                Ok((stream, peer)) => handle(stream, peer),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_streams_have_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(accept_loop(listener, rx, move |stream, _| {
            let _ = tx.send(stream.nodelay().unwrap());
        }));
        let _client = TcpStream::connect(address).await.unwrap();
        assert_eq!(accepted.recv().await, Some(true));
        let _ = stop.send(true);
    }
}
