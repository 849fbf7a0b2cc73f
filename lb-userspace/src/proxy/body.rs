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

/// The request body stalled: no data for longer than the request timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled for more than {0:?}")]
pub struct Stalled(pub Duration);

/// `body`, failing with [`Stalled`] when it keeps its reader waiting for a frame longer than
/// `limit`, so that a client trickling its body (or a backend its response) cannot hold a
/// connection forever. Only time spent waiting counts: a reader that comes back late (a slow
/// client downloading) finds the clock started when it asked.
pub struct StallTimeout<B> {
    body: B,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// The last poll found no frame: the timer runs.
    waiting: bool,
}

impl<B> StallTimeout<B> {
    pub fn new(body: B, limit: Duration) -> Self {
        StallTimeout {
            body,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
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
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.limit;
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(this.limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `prefix`, then the rest of `body`: a body whose first bytes were already read.
pub struct Prefixed<B> {
    prefix: Option<Bytes>,
    body: B,
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Bytes, body: B) -> Self {
        Prefixed {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            body,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + prefix);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by a channel.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn only_time_spent_waiting_counts() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = StallTimeout::new(Fed(rx), Duration::from_secs(1));
        tx.send(Bytes::from_static(b"a")).await.expect("send");
        assert!(body.frame().await.is_some_and(|f| f.is_ok()));
        // The reader is away for twice the limit, then asks while the next frame is still
        // on its way: not a stall.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = later.send(Bytes::from_static(b"b")).await;
        });
        let frame = body.frame().await.expect("a frame");
        assert!(frame.is_ok(), "{frame:?}");
        // Waiting longer than the limit is one.
        let stalled = body.frame().await.expect("an error");
        assert!(stalled.is_err_and(|e| e.is::<Stalled>()));
        drop(tx);
    }
}
