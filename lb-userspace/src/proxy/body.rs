//! Body wrappers: one keeps a value alive until a body has been sent (the balancer's
//! in-flight count, the connection's activity), one cuts off a request body that stalls.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `body`, holding `guard` until the body ends or is dropped.
pub struct WithGuard<B, G> {
    body: B,
    guard: Option<G>,
}

impl<B, G> WithGuard<B, G> {
    pub fn new(body: B, guard: G) -> Self {
        WithGuard {
            body,
            guard: Some(guard),
        }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for WithGuard<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request body stalled: no data for longer than the request timeout, or, after the
/// first request timeout, less than [`MIN_BODY_RATE`] on average.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled: {0}")]
pub struct Stalled(String);

/// Bytes per second a request body must average once it has taken longer than the request
/// timeout (Apache's mod_reqtimeout uses the same floor). Without it a client sending a byte
/// just before each gap would reach the limit holds a backend connection forever.
pub const MIN_BODY_RATE: u64 = 500;

/// `body`, failing with [`Stalled`] when no frame arrives within `limit` of the previous one,
/// or when the body falls below [`MIN_BODY_RATE`] after its first `limit`, so that a client
/// trickling its body cannot hold a backend connection forever.
pub struct StallTimeout<B> {
    body: B,
    limit: Duration,
    started: Instant,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl<B> StallTimeout<B> {
    pub fn new(body: B, limit: Duration) -> Self {
        StallTimeout {
            body,
            limit,
            started: Instant::now(),
            received: 0,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// The next frame must come before the gap limit and before the average rate falls under
    /// the floor: `received` bytes buy `received / MIN_BODY_RATE` seconds past the grace.
    fn deadline(&self, now: Instant) -> Instant {
        let bought = Duration::from_millis(self.received.saturating_mul(1000) / MIN_BODY_RATE);
        (now + self.limit).min(self.started + self.limit + bought)
    }

    fn why(&self, now: Instant) -> Stalled {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed > self.limit
            && u128::from(self.received) * 1000 < u128::from(MIN_BODY_RATE) * elapsed.as_millis()
        {
            Stalled(format!(
                "{} bytes in {elapsed:?}, under {MIN_BODY_RATE} bytes/s",
                self.received
            ))
        } else {
            Stalled(format!("no data for {:?}", self.limit))
        }
    }
}

impl<B> Body for StallTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
                    && let Some(data) = data
                {
                    this.received = this.received.saturating_add(data.len() as u64);
                }
                let deadline = this.deadline(Instant::now());
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(this.why(Instant::now()))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
