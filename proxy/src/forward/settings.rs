//! The streams at once an HTTP/2 server allows, read as its frames go by.
//!
//! hyper's client keeps the server's `SETTINGS_MAX_CONCURRENT_STREAMS` inside the connection
//! task it spawns, out of the pool's reach; Envoy's pool opens another connection when a
//! connection has as many streams as its server allows. `Watched` wraps the connection's I/O
//! and, reading the frame headers of what the server sends (never changing a byte), notes the
//! value of each SETTINGS frame that sets it; a first SETTINGS frame without it means no
//! limit, as RFC 9113 has it (and h2's client).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The streams at once a server allows before its SETTINGS say otherwise, as h2's client
/// assumes.
pub const INITIAL: usize = 100;

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const ENTRY: usize = 6;

/// Where the reader is in the server's frames.
#[derive(Debug, Default)]
pub struct Frames {
    /// A frame header being read, and how much of it.
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes left of the current frame: skipped, or read as settings entries.
    left: usize,
    settings: bool,
    entry: [u8; ENTRY],
    entry_have: usize,
    /// A SETTINGS frame has been read whole: the server's first tells its limit, or that it
    /// has none.
    first_done: bool,
    /// The current SETTINGS frame set the limit.
    set_here: bool,
}

impl Frames {
    /// Reads `bytes`, the next the server sent, and returns the last
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` they set, if any (`u32::MAX` for a first SETTINGS
    /// frame without it). A frame's payload is skipped whole unless it is a SETTINGS frame's.
    pub fn read(&mut self, mut bytes: &[u8]) -> Option<u32> {
        let mut found = None;
        while !bytes.is_empty() {
            if self.left == 0 && self.have < FRAME_HEADER {
                let Some((&b, rest)) = bytes.split_first() else {
                    break;
                };
                bytes = rest;
                if let Some(slot) = self.header.get_mut(self.have) {
                    *slot = b;
                }
                self.have = self.have.saturating_add(1);
                if self.have == FRAME_HEADER {
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    let len = u32::from_be_bytes([0, l0, l1, l2]);
                    self.left = usize::try_from(len).unwrap_or(usize::MAX);
                    self.settings = kind == SETTINGS && flags & ACK == 0;
                    self.entry_have = 0;
                    self.set_here = false;
                    if self.left == 0 {
                        self.frame_done(&mut found);
                    }
                }
                continue;
            }
            if self.settings {
                let Some((&b, rest)) = bytes.split_first() else {
                    break;
                };
                bytes = rest;
                self.left = self.left.saturating_sub(1);
                if let Some(slot) = self.entry.get_mut(self.entry_have) {
                    *slot = b;
                }
                self.entry_have = self.entry_have.saturating_add(1);
                if self.entry_have == ENTRY {
                    self.entry_have = 0;
                    let [i0, i1, v0, v1, v2, v3] = self.entry;
                    if u16::from_be_bytes([i0, i1]) == MAX_CONCURRENT_STREAMS {
                        found = Some(u32::from_be_bytes([v0, v1, v2, v3]));
                        self.set_here = true;
                    }
                }
            } else {
                let take = self.left.min(bytes.len());
                bytes = bytes.get(take..).unwrap_or_default();
                self.left = self.left.saturating_sub(take);
            }
            if self.left == 0 {
                self.frame_done(&mut found);
            }
        }
        found
    }

    /// The current frame has been read whole.
    fn frame_done(&mut self, found: &mut Option<u32>) {
        self.have = 0;
        if self.settings && !self.first_done {
            self.first_done = true;
            if !self.set_here {
                *found = Some(u32::MAX);
            }
        }
        self.settings = false;
    }
}

/// An HTTP/2 client connection's I/O, noting into `allowed` the streams at once the server
/// allows.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    frames: Frames,
    allowed: Arc<AtomicUsize>,
}

impl<T> Watched<T> {
    /// `io`, just connected: the client's preface is still to be written, the server's frames
    /// to be read from their start.
    pub fn new(io: T, allowed: Arc<AtomicUsize>) -> Self {
        Self {
            io,
            frames: Frames::default(),
            allowed,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        // Only bytes a read delivered count (its caller drops any other).
        if let Poll::Ready(Ok(())) = read {
            if let Some(n) = buf
                .filled()
                .get(before..)
                .and_then(|new| this.frames.read(new))
            {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                this.allowed.store(n, Ordering::Relaxed);
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn setting(id: u16, value: u32) -> Vec<u8> {
        let mut e = id.to_be_bytes().to_vec();
        e.extend_from_slice(&value.to_be_bytes());
        e
    }

    #[test]
    fn the_servers_limit_is_read_across_any_split_of_its_frames() {
        // A DATA frame whose payload looks like settings, the server's SETTINGS (window size,
        // then the limit), an ACK carrying nothing, a HEADERS frame, a later SETTINGS.
        let mut stream = frame(0x0, 0, &[0x4; 20]);
        let mut settings = setting(0x4, 65_535);
        settings.extend(setting(MAX_CONCURRENT_STREAMS, 7));
        stream.extend(frame(SETTINGS, 0, &settings));
        stream.extend(frame(SETTINGS, ACK, &[]));
        stream.extend(frame(0x1, 0x4, &[0x88; 12]));
        let first = stream.len();
        stream.extend(frame(SETTINGS, 0, &setting(MAX_CONCURRENT_STREAMS, 250)));
        for split in 1..stream.len() {
            let mut frames = Frames::default();
            let (before, after) = stream.split_at(first);
            let mut seen = Vec::new();
            for chunk in before.chunks(split) {
                seen.extend(frames.read(chunk));
            }
            assert_eq!(seen.last(), Some(&7), "split {split}");
            for chunk in after.chunks(split) {
                seen.extend(frames.read(chunk));
            }
            assert_eq!(seen.last(), Some(&250), "split {split}");
        }
        // An ACK's payload (there is none) and other frames' bytes are never read as settings.
        let mut frames = Frames::default();
        let mut ack = frame(SETTINGS, ACK, &[]);
        ack.extend(frame(0x0, 0, &setting(MAX_CONCURRENT_STREAMS, 1)));
        assert_eq!(frames.read(&ack), None);
    }

    #[test]
    fn a_first_settings_frame_without_the_limit_means_none() {
        // Empty, or with other entries only; a later one without the limit changes nothing.
        for first in [
            frame(SETTINGS, 0, &[]),
            frame(SETTINGS, 0, &setting(0x4, 1 << 20)),
        ] {
            let mut frames = Frames::default();
            assert_eq!(frames.read(&first), Some(u32::MAX));
            assert_eq!(frames.read(&frame(SETTINGS, 0, &setting(0x4, 1))), None);
            let limit = frame(SETTINGS, 0, &setting(MAX_CONCURRENT_STREAMS, 3));
            assert_eq!(frames.read(&limit), Some(3));
        }
        // The limit not last among the entries, and a length that is not a whole number of
        // entries: the next frame is still read from its header.
        let mut entries = setting(MAX_CONCURRENT_STREAMS, 9);
        entries.extend(setting(0x4, 65_535));
        entries.extend([0, 3, 0]);
        let mut stream = frame(SETTINGS, 0, &entries);
        stream.extend(frame(SETTINGS, 0, &setting(MAX_CONCURRENT_STREAMS, 4)));
        let mut frames = Frames::default();
        assert_eq!(frames.read(&stream), Some(4));
    }
}
