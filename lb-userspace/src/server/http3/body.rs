//! A request's body as it arrives on its HTTP/3 request stream, as the proxy reads bodies.
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use hyper::body::{Body, Frame};

use crate::proxy::body::BoxError;

type RecvStream = RequestStream<h3_quinn::RecvStream, Bytes>;

/// The receiving half of a request stream, as a body. Its trailers are not read: the proxy
/// drops trailers (backends are not told to expect any).
pub struct RequestBody {
    /// In a mutex only because proxied bodies must be `Sync` and the stream is not: polling
    /// has `&mut self`, so it reaches the stream with `get_mut` and never locks.
    stream: Mutex<RecvStream>,
    done: bool,
}

impl RequestBody {
    pub fn new(stream: RecvStream) -> Self {
        RequestBody {
            stream: Mutex::new(stream),
            done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = {
            let stream = self
                .stream
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match stream.poll_recv_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(mut data))) => {
                    Some(Ok(Frame::data(data.copy_to_bytes(data.remaining()))))
                }
                Poll::Ready(Ok(None)) => None,
                Poll::Ready(Err(e)) => Some(Err(BoxError::from(e))),
            }
        };
        if !matches!(polled, Some(Ok(_))) {
            self.done = true;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
