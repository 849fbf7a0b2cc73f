//! A backend response body read straight from its connection, which goes back to the pool
//! the moment the body's last byte is read (or is closed, if the body ends any other way).
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};

use super::Error;
use super::head::ResponseFraming;
use super::pool::ReturnPool;
use super::stream::Conn;

/// Longest chunk-size line (with extensions) and all trailer lines together.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;

/// Where the conn goes when the body ends cleanly.
pub struct ReturnTo {
    pub pool: ReturnPool,
    pub backend: usize,
}

enum State {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one (seen so far, in bytes).
    Trailers(usize),
}

pub struct ResponseBody {
    state: State,
    conn: Option<Conn>,
    /// Set when the connection may be reused after this body.
    return_to: Option<ReturnTo>,
}

impl ResponseBody {
    /// The body of a `101 Switching Protocols`: none; the connection now carries the
    /// protocol switched to and is taken with [`ResponseBody::take_upgraded`].
    pub fn upgraded(conn: Conn) -> Self {
        ResponseBody {
            state: State::Done,
            conn: Some(conn),
            return_to: None,
        }
    }

    /// The connection of an upgraded response, with whatever the backend sent after its head.
    pub fn take_upgraded(&mut self) -> Option<Conn> {
        self.conn.take()
    }

    pub fn new(framing: ResponseFraming, conn: Conn, return_to: Option<ReturnTo>) -> Self {
        let state = match framing {
            ResponseFraming::Length(n) => State::Length(n),
            ResponseFraming::Chunked => State::Chunked(Chunk::Size),
            ResponseFraming::UntilClose => State::UntilClose,
        };
        let mut body = ResponseBody {
            state,
            conn: Some(conn),
            return_to,
        };
        if matches!(body.state, State::Length(0)) {
            body.finish();
        }
        body
    }

    /// The body ended cleanly: the connection goes back to the pool if it may carry another
    /// request and nothing unasked follows the body; otherwise it closes.
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(to)) = (self.conn.take(), self.return_to.take())
            && conn.rbuf.is_empty()
        {
            to.pool.put(to.backend, conn);
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // What the buffer already holds, as far as the framing goes.
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) if !conn.rbuf.is_empty() => {
                    let take = left.min(conn.rbuf.len() as u64);
                    let data = conn.rbuf.split_to(take as usize).freeze();
                    this.state = State::Length(left - take);
                    if left == take {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if !conn.rbuf.is_empty() => {
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(chunk) => match step_chunked(chunk, conn) {
                    Ok(Step::Data(next, data)) => {
                        this.state = State::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::Moved(next)) => {
                        this.state = State::Chunked(next);
                        continue;
                    }
                    Ok(Step::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => return this.fail(e),
                },
                State::Length(_) | State::UntilClose => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Incomplete),
                Ok(_) => {}
                Err(e) => return this.fail(Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

enum Step {
    /// Data of the current chunk; the decoder is then in the given state.
    Data(Chunk, Bytes),
    /// Consumed framing bytes; go on from the given state.
    Moved(Chunk),
    /// The last chunk and the trailers are read.
    End,
    NeedMore,
}

/// One step of decoding chunked framing from what `conn` has buffered.
fn step_chunked(chunk: Chunk, conn: &mut Conn) -> Result<Step, Error> {
    let buf = &mut conn.rbuf;
    match chunk {
        Chunk::Size => {
            let Some(end) = find_crlf(buf) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(Error::BadResponse("chunk size line too long".into()));
                }
                return Ok(Step::NeedMore);
            };
            let line = &buf[..end];
            let digits = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            let rest = &line[digits..];
            // After the size: nothing, or extensions (`;name=value`), possibly after blanks.
            let rest_ok = rest.is_empty() || rest.trim_ascii_start().first() == Some(&b';');
            if digits == 0 || digits > 16 || !rest_ok {
                return Err(Error::BadResponse("malformed chunk size".into()));
            }
            let size = std::str::from_utf8(&line[..digits])
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| Error::BadResponse("malformed chunk size".into()))?;
            buf.advance(end + 2);
            Ok(Step::Moved(if size == 0 {
                Chunk::Trailers(0)
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let take = left.min(buf.len() as u64);
            let data = buf.split_to(take as usize).freeze();
            let next = if take == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - take)
            };
            Ok(Step::Data(next, data))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::BadResponse("chunk data not followed by CRLF".into()));
            }
            buf.advance(2);
            Ok(Step::Moved(Chunk::Size))
        }
        Chunk::Trailers(seen) => {
            let Some(end) = find_crlf(buf) else {
                if seen + buf.len() > MAX_TRAILERS {
                    return Err(Error::BadResponse("trailers too large".into()));
                }
                return Ok(Step::NeedMore);
            };
            // Trailers are not forwarded: the client was not told to expect any.
            buf.advance(end + 2);
            if end == 0 {
                Ok(Step::End)
            } else if seen + end > MAX_TRAILERS {
                Err(Error::BadResponse("trailers too large".into()))
            } else {
                Ok(Step::Moved(Chunk::Trailers(seen + end + 2)))
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}
