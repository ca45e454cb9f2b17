//! Drain: one signal that every downstream connection watches. `Drain::drain` sends it and
//! waits until every `Watch` is gone — a connection keeps its watch until it has closed.

use tokio::sync::watch;

/// The sending side, held by the proxy.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<()>,
}

/// What a connection watches.
#[derive(Debug)]
pub struct Watch {
    rx: watch::Receiver<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(()).0,
        }
    }

    /// A watch for one connection.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
        }
    }

    /// Signals every watch, then waits until all have been dropped.
    pub async fn drain(&self) {
        self.tx.send_replace(());
        self.tx.closed().await;
    }
}

impl Watch {
    /// Resolves when the drain starts (or the proxy that owns the `Drain` is gone).
    pub async fn signaled(&mut self) {
        let _ = self.rx.changed().await;
    }
}
