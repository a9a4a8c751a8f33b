//! In-memory stdout and stderr for guests, capped: stdout refuses to grow past its cap and remembers that it
//! overflowed (the run then fails with `output_too_large`); stderr keeps writing but keeps only its tail.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Refuse the write and trap the guest: the output is bigger than allowed.
    Fail,
    /// Drop the oldest bytes: only the tail of the log is kept.
    KeepTail,
}

#[derive(Default)]
struct Buffer {
    bytes: VecDeque<u8>,
    overflowed: bool,
}

/// A capped in-memory output stream; clones share the buffer.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    cap: usize,
    mode: Overflow,
    buffer: Arc<Mutex<Buffer>>,
}

impl CappedPipe {
    pub(crate) fn new(cap: u64, mode: Overflow) -> Self {
        CappedPipe { cap: usize::try_from(cap).unwrap_or(usize::MAX), mode, buffer: Arc::default() }
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.buffer.lock().overflowed
    }

    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.buffer.lock().bytes).into()
    }

    /// Appends host-written bytes (for example `host.log` lines) under the same cap.
    pub(crate) fn append(&self, bytes: &[u8]) {
        self.push(bytes);
    }

    /// Appends `bytes`; returns false (and records the overflow) when a `Fail` pipe would exceed its cap.
    fn push(&self, bytes: &[u8]) -> bool {
        let mut buf = self.buffer.lock();
        match self.mode {
            Overflow::Fail => {
                if buf.bytes.len() + bytes.len() > self.cap {
                    buf.overflowed = true;
                    return false;
                }
                buf.bytes.extend(bytes);
            }
            Overflow::KeepTail => {
                let keep = bytes.len().min(self.cap);
                buf.bytes.extend(&bytes[bytes.len() - keep..]);
                let excess = buf.bytes.len().saturating_sub(self.cap);
                if excess > 0 {
                    buf.overflowed = true;
                    buf.bytes.drain(..excess);
                }
            }
        }
        true
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if self.push(&bytes) {
            Ok(())
        } else {
            Err(StreamError::Trap(wasmtime::format_err!("output exceeds its limit of {} bytes", self.cap)))
        }
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept a write: an oversized one is what tells us the output is too large.
        Ok(1 << 20)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.push(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(io::Error::other("output exceeds its limit")))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_pipe_refuses_overflow() {
        let pipe = CappedPipe::new(4, Overflow::Fail);
        assert!(pipe.push(b"abcd"));
        assert!(!pipe.push(b"e"));
        assert!(pipe.overflowed());
        assert_eq!(pipe.take(), b"abcd");
    }

    #[test]
    fn tail_pipe_keeps_tail() {
        let pipe = CappedPipe::new(4, Overflow::KeepTail);
        assert!(pipe.push(b"abc"));
        assert!(pipe.push(b"defgh"));
        assert_eq!(pipe.take(), b"efgh");
    }
}
