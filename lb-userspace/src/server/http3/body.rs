//! A request's body as it arrives on its HTTP/3 request stream, as the proxy reads bodies.
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use hyper::body::{Body, Frame};

use crate::proxy::body::BoxError;

type RecvStream = RequestStream<super::bounded::Bounded<h3_quinn::RecvStream>, Bytes>;

/// The receiving half of a request stream, as a body. Its trailers are not read: the proxy
/// drops trailers (backends are not told to expect any).
///
/// A declared `content-length` must be what the DATA frames carry (RFC 9114 4.1.2): the
/// proxy frames a large body to the backend by the declared length, so a body longer than it
/// would put its rest on the backend connection as a request of its own. More than declared,
/// or an end before it, is an error here (the backend connection is then dropped).
pub struct RequestBody {
    /// In a mutex only because proxied bodies must be `Sync` and the stream is not: polling
    /// has `&mut self`, so it reaches the stream with `get_mut` and never locks.
    stream: Mutex<RecvStream>,
    declared: Option<u64>,
    received: u64,
    done: bool,
}

/// The body's length disagrees with its `content-length`.
#[derive(Debug, thiserror::Error)]
#[error("request body of {received}{more} bytes, content-length {declared}")]
pub struct LengthMismatch {
    received: u64,
    more: &'static str,
    declared: u64,
}

impl RequestBody {
    pub fn new(stream: RecvStream, declared: Option<u64>) -> Self {
        RequestBody {
            stream: Mutex::new(stream),
            declared,
            received: 0,
            done: false,
        }
    }

    fn check(&self, ended: bool) -> Result<(), LengthMismatch> {
        match self.declared {
            Some(declared) if self.received > declared || (ended && self.received < declared) => {
                Err(LengthMismatch {
                    received: self.received,
                    more: if ended { "" } else { " or more" },
                    declared,
                })
            }
            _ => Ok(()),
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
                Poll::Ready(Ok(Some(mut data))) => Ok(Some(data.copy_to_bytes(data.remaining()))),
                Poll::Ready(Ok(None)) => Ok(None),
                Poll::Ready(Err(e)) => Err(BoxError::from(e)),
            }
        };
        let polled = match polled {
            Ok(Some(data)) => {
                self.received = self.received.saturating_add(data.len() as u64);
                self.check(false)
                    .map(|()| Some(Frame::data(data)))
                    .map_err(BoxError::from)
            }
            Ok(None) => self.check(true).map(|()| None).map_err(BoxError::from),
            Err(e) => Err(e),
        };
        if !matches!(polled, Ok(Some(_))) {
            self.done = true;
        }
        Poll::Ready(polled.transpose())
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
