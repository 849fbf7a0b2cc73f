//! A client connection switched to another protocol (WebSocket) after a backend's `101`:
//! bytes copied both ways between it and the backend connection. The tunnel is run by the
//! client connection's own task once hyper lets go of the connection, so it keeps the
//! connection's place under `--max-connections`, counts as open while draining, and is closed
//! when nothing has moved either way for its idle limit (HAProxy's `timeout tunnel`, nginx's
//! `proxy_read_timeout` for WebSocket).
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use super::h1;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The tunnel a request on this client connection opened, waiting for the connection's task
/// to run it (at most one: nothing follows a protocol switch on that connection).
#[derive(Default)]
pub struct Pending(Mutex<Option<BoxFuture>>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tunnel::Pending")
    }
}

impl Pending {
    /// Leaves the tunnel from `client` (once hyper hands it over) to `backend` for the
    /// connection's task; `idle` is how long it may carry nothing, and `hold` is kept until it
    /// ends (the backend's pick, which counts it as a connection to that backend).
    pub fn open(
        &self,
        client: hyper::upgrade::OnUpgrade,
        backend: h1::Conn,
        idle: Duration,
        hold: impl Send + 'static,
    ) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Box::pin(async move {
                splice(client, backend, idle).await;
                drop(hold);
            }));
        }
    }

    /// The tunnel to run, if a request opened one.
    pub fn take(&self) -> Option<BoxFuture> {
        self.0.lock().ok()?.take()
    }
}

/// Copies bytes both ways, starting with what the backend sent right behind its `101`, until
/// either side closes or nothing has moved for `idle`.
async fn splice(client: hyper::upgrade::OnUpgrade, backend: h1::Conn, idle: Duration) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "protocol upgrade failed");
            return;
        }
    };
    let start = Instant::now();
    let moved = std::sync::Arc::new(AtomicU64::new(0));
    // Every byte passes the client side one way or the other: watching it is enough.
    let mut client = Touched {
        io: TokioIo::new(client),
        start,
        moved: moved.clone(),
    };
    let h1::Conn {
        io: mut backend,
        rbuf: early,
        ..
    } = backend;
    let spliced = async {
        client.write_all(&early).await?;
        tokio::io::copy_bidirectional(&mut client, &mut backend).await
    };
    let quiet = async {
        loop {
            let until = start + Duration::from_millis(moved.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    };
    tokio::select! {
        ended = spliced => {
            if let Err(e) = ended {
                debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        () = quiet => debug!(timeout = ?idle, "upgraded connection idle: closing"),
    }
}

/// A stream that notes when bytes last moved through it, in milliseconds since `start`.
struct Touched<S> {
    io: S,
    start: Instant,
    moved: std::sync::Arc<AtomicU64>,
}

impl<S> Touched<S> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
        self.moved.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Touched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
