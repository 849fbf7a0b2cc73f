//! Bytes in and out of one request, counted as its bodies pass, for its access log line.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

/// One request's body bytes: received from the client and sent to it.
#[derive(Debug, Default)]
pub struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Counters {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, Debug)]
enum Direction {
    Received,
    Sent,
}

/// `body`, its data bytes added to a request's counters when the access log is on; without
/// it, the body as it is (one branch per frame).
pub struct Counted<B> {
    body: B,
    counters: Option<(Arc<Counters>, Direction)>,
}

impl<B> Counted<B> {
    pub fn received(body: B, counters: Option<Arc<Counters>>) -> Self {
        Counted {
            body,
            counters: counters.map(|c| (c, Direction::Received)),
        }
    }

    pub fn sent(body: B, counters: Option<Arc<Counters>>) -> Self {
        Counted {
            body,
            counters: counters.map(|c| (c, Direction::Sent)),
        }
    }
}

impl<B: Body + Unpin> Body for Counted<B>
where
    B::Data: hyper::body::Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some((counters, direction))) =
            (&polled, &self.counters)
            && let Some(data) = frame.data_ref()
        {
            let n = hyper::body::Buf::remaining(data) as u64;
            match direction {
                Direction::Received => counters.received.fetch_add(n, Ordering::Relaxed),
                Direction::Sent => counters.sent.fetch_add(n, Ordering::Relaxed),
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    #[tokio::test]
    async fn data_bytes_are_counted_in_their_direction() {
        let counters = Arc::new(Counters::default());
        let received = Counted::received(
            Full::new(Bytes::from_static(b"hello world")),
            Some(counters.clone()),
        );
        received.collect().await.expect("body");
        let sent = Counted::sent(
            Full::new(Bytes::from_static(b"abc")),
            Some(counters.clone()),
        );
        sent.collect().await.expect("body");
        assert_eq!((counters.received(), counters.sent()), (11, 3));
        // Off: nothing counted, nothing allocated.
        let off = Counted::sent(Full::new(Bytes::from_static(b"abc")), None);
        assert_eq!(off.collect().await.expect("body").to_bytes().len(), 3);
    }
}
