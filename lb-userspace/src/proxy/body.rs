//! The proxy's response body, and body wrappers: one keeps a value alive until a body has
//! been sent (the balancer's in-flight count, the connection's activity), one cuts off a body
//! that stalls.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::h1::ResponseBody;
use crate::balance::Pick;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy answers with: a backend's response body as it comes, holding the backend's
/// pick until sent (nearly every response: not boxed, which was an allocation per request),
/// or any other body (edgelb's own answers, a protocol switch), boxed. (`http_body_util::
/// Either` would do, but its `Into<BoxError>` bound on the halves' errors does not prove
/// `Send` for the HTTP/2 connection future: "implementation of `From` is not general enough".)
// The large variant is the common one: boxing it is the allocation this type is here to save.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    Backend(WithGuard<StallTimeout<ResponseBody>, Pick>),
    Other(BoxBody<Bytes, BoxError>),
}

impl ProxyBody {
    pub fn other<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        ProxyBody::Other(BoxBody::new(body))
    }

    /// A body edgelb answers with itself, whole.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::other(Full::new(bytes.into()).map_err(|n| match n {}))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Backend(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Other(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Backend(b) => b.is_end_stream(),
            ProxyBody::Other(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Backend(b) => b.size_hint(),
            ProxyBody::Other(b) => b.size_hint(),
        }
    }
}

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

/// A body stalled: no data for longer than the timeout, or (request bodies) less than
/// [`MIN_BODY_RATE`] on average once past the timeout.
#[derive(Debug, thiserror::Error)]
#[error("body stalled: {0}")]
pub struct Stalled(String);

/// Bytes per second a request body must average once its reader has waited for it longer
/// than the request timeout (Apache's mod_reqtimeout uses the same floor). Without it a client
/// sending a byte just before each gap would reach the limit holds a backend connection forever.
pub const MIN_BODY_RATE: u64 = 500;

/// `body`, failing with [`Stalled`] when it keeps its reader waiting for a frame longer than
/// `limit` (and, with a minimum rate, when it averages less than that rate once the reader has
/// waited `limit` in all), so that a client trickling its body (or a backend its response)
/// cannot hold a connection forever. Only time spent waiting counts: a reader that comes back
/// late (a slow client downloading, a backend reading slowly) finds the clock started when it
/// asked.
pub struct StallTimeout<B> {
    body: B,
    limit: Duration,
    /// Bytes per second the body must average past `limit` of waiting; None: gaps only.
    min_rate: Option<u64>,
    received: u64,
    /// Time spent waiting for frames that came.
    waited: Duration,
    /// Made at the first wait: a body whose frames are always ready (most small responses)
    /// never needs one.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait began, if the last poll found no frame.
    waiting_since: Option<Instant>,
}

impl<B> StallTimeout<B> {
    /// Gaps only: for response bodies, whose pace is the backend's business.
    pub fn new(body: B, limit: Duration) -> Self {
        StallTimeout {
            body,
            limit,
            min_rate: None,
            received: 0,
            waited: Duration::ZERO,
            timer: None,
            waiting_since: None,
        }
    }

    /// Gaps and [`MIN_BODY_RATE`]: for request bodies.
    pub fn request(body: B, limit: Duration) -> Self {
        StallTimeout {
            min_rate: Some(MIN_BODY_RATE),
            ..Self::new(body, limit)
        }
    }

    /// How long the wait starting now may last: the gap limit, or less when the bytes
    /// received so far do not buy that much time at the minimum rate.
    fn allowance(&self) -> Duration {
        match self.min_rate {
            None => self.limit,
            Some(rate) => {
                let bought = Duration::from_millis(self.received.saturating_mul(1000) / rate);
                self.limit
                    .min((self.limit + bought).saturating_sub(self.waited))
            }
        }
    }

    /// Why the wait that just ran out was too long (the allowance it was given tells).
    fn why(&self) -> Stalled {
        match self.min_rate {
            Some(rate) if self.allowance() < self.limit => Stalled(format!(
                "{} bytes after {:?} of waiting, under {rate} bytes/s",
                self.received,
                self.waited + self.allowance()
            )),
            _ => Stalled(format!("no data for {:?}", self.limit)),
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
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    this.received = this.received.saturating_add(data.len() as u64);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    let now = Instant::now();
                    this.waiting_since = Some(now);
                    let deadline = now + this.allowance();
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                // The wait, this poll's or an earlier one's, has set the timer.
                if let Some(timer) = this.timer.as_mut()
                    && timer.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Some(Err(Box::new(this.why()))));
                }
                Poll::Pending
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
