//! The client stream as a connection's hyper connections see it: reads are reported to the
//! connection's [`Activity`] (for its timeouts), and the stream can outlive the hyper
//! connection serving it (an idle connection is parked, see [`super::park`]).
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::Activity;

/// Bytes read from a parked connection to learn that the client is back (what is left stays
/// with the TLS session or the socket for hyper to read).
const WAKE_READ: usize = 1024;

/// A client stream that reports reads to its connection's [`Activity`] and can outlive the
/// hyper connection serving it: what hyper had read and not yet parsed is handed back first to
/// the next one, and while the connection is being parked hyper's closing of the stream is
/// ignored.
pub struct ClientStream<S> {
    inner: S,
    unread: Bytes,
    activity: Arc<Activity>,
}

impl<S> ClientStream<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        ClientStream {
            inner,
            unread: Bytes::new(),
            activity,
        }
    }

    /// Keeps bytes a hyper connection read and did not use, for the next one, ahead of any
    /// kept bytes it never got to read. Copied: the slice hyper returns holds on to its whole
    /// read buffer. Kept bytes are a request arriving: its timeout applies.
    pub fn keep_unread(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            let mut kept = Vec::with_capacity(bytes.len() + self.unread.len());
            kept.extend_from_slice(bytes);
            kept.extend_from_slice(&self.unread);
            self.unread = Bytes::from(kept);
        }
        if !self.unread.is_empty() {
            self.activity.bytes_read();
        }
    }
}

impl<S: AsyncRead + Unpin> ClientStream<S> {
    /// Waits, holding no buffer, until the client sends something: Ok(true) with its first
    /// bytes kept for the next hyper connection, Ok(false) if the client closed. Only called
    /// with nothing kept (kept bytes are a request already arriving).
    pub async fn wait_for_client(&mut self) -> std::io::Result<bool> {
        std::future::poll_fn(|cx| {
            let mut buf = [MaybeUninit::<u8>::uninit(); WAKE_READ];
            let mut read = ReadBuf::uninit(&mut buf);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(false));
            }
            self.activity.bytes_read();
            self.unread = Bytes::copy_from_slice(read.filled());
            Poll::Ready(Ok(true))
        })
        .await
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.unread.is_empty() {
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.activity.bytes_read();
            }
            return polled;
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.write_polled(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write_polled(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.activity.write_polled(polled.is_pending());
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.activity.is_parking() {
            // hyper ends an idle connection it was asked to let go of by closing it; the
            // stream is kept instead (what hyper wrote is flushed first, as on any close).
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
