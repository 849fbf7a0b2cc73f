//! What a client connection is doing, for its timeouts: when it last read bytes, whether a
//! request is being received, how many are in flight, when the last one finished.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const NONE: u64 = u64::MAX;

pub struct Activity {
    start: Instant,
    /// Milliseconds since `start` when the first byte of a request not yet handed to the
    /// service arrived; NONE when no request is being received.
    receiving_since: AtomicU64,
    in_flight: AtomicU32,
    /// Milliseconds since `start` when the last response finished; NONE before the first.
    last_done: AtomicU64,
}

/// When a connection must be closed, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// No request in flight and none arriving: the idle timeout (or, before the first
    /// request, the request timeout).
    Idle(Instant),
    /// Request headers are arriving: the request timeout from their first byte.
    Request(Instant),
    /// Requests in flight: their own timeouts apply; look again later.
    Busy,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            receiving_since: AtomicU64::new(NONE),
            in_flight: AtomicU32::new(0),
            last_done: AtomicU64::new(NONE),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let now = self.now_ms();
            let _ = self.receiving_since.compare_exchange(
                NONE,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The service got a request; the returned guard marks it finished when dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.receiving_since.store(NONE, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// `http1`: bytes read while idle start a request (for HTTP/2 they may be pings or
    /// window updates, so only the idle timeout applies there).
    pub fn deadline(&self, idle: Duration, request: Duration, http1: bool) -> Deadline {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Deadline::Busy;
        }
        let receiving = self.receiving_since.load(Ordering::Relaxed);
        if http1 && receiving != NONE {
            return Deadline::Request(self.at(receiving) + request);
        }
        match self.last_done.load(Ordering::Relaxed) {
            NONE => Deadline::Idle(self.start + request),
            done => Deadline::Idle(self.at(done) + idle),
        }
    }
}

pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last_done.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client stream that reports reads to its connection's [`Activity`].
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
