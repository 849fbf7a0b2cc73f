//! A bound on what h3 holds of a frame: h3 reads a frame other than DATA whole into memory
//! before it decodes or skips it, taking bytes from QUIC (and so giving the client credit for
//! more) as it goes, whatever length the frame declares. A client could make it buffer a
//! HEADERS frame, or a frame of an unknown type on a request or the control stream, of any
//! size. These wrappers read each stream's frame headers as the bytes pass to h3 and end the
//! stream (H3_EXCESSIVE_LOAD) at a frame that declares more than [`MAX_FRAME`]; DATA frames,
//! which h3 streams, pass at any length.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

/// Largest frame other than DATA taken: a header section is at most
/// `limits::MAX_FIELD_SECTION_SIZE` (32 KiB) decoded, and QPACK never encodes one larger; the
/// control stream's frames are a few bytes.
pub const MAX_FRAME: u64 = 64 * 1024;

/// H3_EXCESSIVE_LOAD (RFC 9114 8.1).
const EXCESSIVE_LOAD: u64 = 0x0107;

/// HTTP/3 frame type DATA.
const DATA: u64 = 0x00;

/// Unidirectional stream type of the control stream (RFC 9114 6.2.1).
const CONTROL: u64 = 0x00;

/// Where a stream is in its frames, fed the bytes as they arrive in any pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frames {
    /// A unidirectional stream's type, not yet whole.
    StreamType(Varint),
    /// Not frames (QPACK's streams, unknown types): not looked at.
    Unframed,
    FrameType(Varint),
    Length {
        ty: u64,
        len: Varint,
    },
    Payload {
        remaining: u64,
    },
}

/// A QUIC variable-length integer being read (RFC 9000 16).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Varint {
    value: u64,
    read: u8,
    len: u8,
}

impl Varint {
    /// Takes one byte; the integer once it is whole.
    fn push(&mut self, byte: u8) -> Option<u64> {
        if self.read == 0 {
            self.len = 1 << (byte >> 6);
            self.value = u64::from(byte & 0x3f);
        } else {
            self.value = (self.value << 8) | u64::from(byte);
        }
        self.read += 1;
        (self.read == self.len).then(|| std::mem::take(self).value)
    }
}

/// A frame declared larger than [`MAX_FRAME`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/3 frame of type {ty:#x} declares {len} bytes (more than {MAX_FRAME} taken)")]
pub struct TooLarge {
    pub ty: u64,
    pub len: u64,
}

impl Frames {
    /// A request stream: frames from its first byte.
    pub fn request() -> Self {
        Frames::FrameType(Varint::default())
    }

    /// A unidirectional stream: its type first.
    pub fn unidirectional() -> Self {
        Frames::StreamType(Varint::default())
    }

    /// Reads `bytes`, the stream's next ones.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), TooLarge> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self {
                Frames::Unframed => return Ok(()),
                Frames::Payload { remaining } => {
                    let skip = usize::try_from(*remaining).unwrap_or(usize::MAX);
                    let skip = skip.min(bytes.len());
                    *remaining -= skip as u64;
                    bytes = &bytes[skip..];
                    if *remaining == 0 {
                        *self = Frames::request();
                    }
                    continue;
                }
                Frames::StreamType(v) => {
                    if let Some(ty) = v.push(byte) {
                        *self = if ty == CONTROL {
                            Frames::request()
                        } else {
                            Frames::Unframed
                        };
                    }
                }
                Frames::FrameType(v) => {
                    if let Some(ty) = v.push(byte) {
                        *self = Frames::Length {
                            ty,
                            len: Varint::default(),
                        };
                    }
                }
                Frames::Length { ty, len } => {
                    if let Some(len) = len.push(byte) {
                        if *ty != DATA && len > MAX_FRAME {
                            return Err(TooLarge { ty: *ty, len });
                        }
                        *self = if len == 0 {
                            Frames::request()
                        } else {
                            Frames::Payload { remaining: len }
                        };
                    }
                }
            }
            bytes = rest;
        }
        Ok(())
    }
}

/// h3-quinn's connection (or its stream opener) with every incoming stream [`Bounded`].
#[derive(Clone)]
pub struct Streams<T> {
    inner: T,
    /// The highest request stream id accepted, or [`NO_STREAM`].
    accepted: Arc<AtomicU64>,
}

/// [`Streams::accepted`] before any request stream.
pub const NO_STREAM: u64 = u64::MAX;

impl<T> Streams<T> {
    /// `accepted` is kept at the highest request stream id taken from the client: h3 keeps
    /// its own to itself, and GOAWAY is reckoned from it.
    pub fn new(inner: T, accepted: Arc<AtomicU64>) -> Self {
        Streams { inner, accepted }
    }
}

/// A QUIC connection whose incoming streams are [`Bounded`].
pub type Connection = Streams<h3_quinn::Connection>;

/// An incoming stream (or its receiving half) with its frames watched.
pub struct Bounded<S> {
    inner: S,
    frames: Frames,
}

impl<S> Bounded<S> {
    fn new(inner: S, frames: Frames) -> Self {
        Bounded { inner, frames }
    }
}

fn bidi(s: h3_quinn::BidiStream<Bytes>) -> Bounded<h3_quinn::BidiStream<Bytes>> {
    Bounded::new(s, Frames::request())
}

impl quic::Connection<Bytes> for Connection {
    type RecvStream = Bounded<h3_quinn::RecvStream>;
    type OpenStreams = Streams<h3_quinn::OpenStreams>;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<Bytes>::poll_accept_recv(&mut self.inner, cx)
            .map_ok(|s| Bounded::new(s, Frames::unidirectional()))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        quic::Connection::<Bytes>::poll_accept_bidi(&mut self.inner, cx).map_ok(|s| {
            let id = quic::SendStream::<Bytes>::send_id(&s).into_inner();
            self.accepted
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    (held == NO_STREAM || id > held).then_some(id)
                })
                .ok();
            bidi(s)
        })
    }

    fn opener(&self) -> Self::OpenStreams {
        Streams::new(
            quic::Connection::<Bytes>::opener(&self.inner),
            self.accepted.clone(),
        )
    }
}

impl<T> quic::OpenStreams<Bytes> for Streams<T>
where
    T: quic::OpenStreams<
            Bytes,
            BidiStream = h3_quinn::BidiStream<Bytes>,
            SendStream = h3_quinn::SendStream<Bytes>,
        >,
{
    type BidiStream = Bounded<h3_quinn::BidiStream<Bytes>>;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        self.inner.poll_open_bidi(cx).map_ok(bidi)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.inner.poll_open_send(cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.inner.close(code, reason);
    }
}

impl<S: quic::RecvStream<Buf = Bytes>> quic::RecvStream for Bounded<S> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let polled = self.inner.poll_data(cx);
        if let Poll::Ready(Ok(Some(chunk))) = &polled
            && let Err(e) = self.frames.feed(chunk.chunk())
        {
            self.inner.stop_sending(EXCESSIVE_LOAD);
            return Poll::Ready(Err(StreamErrorIncoming::Unknown(Box::new(e))));
        }
        polled
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl<S: quic::SendStream<Bytes>> quic::SendStream<Bytes> for Bounded<S> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl quic::BidiStream<Bytes> for Bounded<h3_quinn::BidiStream<Bytes>> {
    type SendStream = h3_quinn::SendStream<Bytes>;
    type RecvStream = Bounded<h3_quinn::RecvStream>;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = quic::BidiStream::<Bytes>::split(self.inner);
        (send, Bounded::new(recv, self.frames))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` as a QUIC varint of `len` bytes.
    fn varint(v: u64, len: usize) -> Vec<u8> {
        let prefix = match len {
            1 => 0,
            2 => 1,
            4 => 2,
            _ => 3,
        };
        let mut out = v.to_be_bytes()[8 - len..].to_vec();
        out[0] |= prefix << 6;
        out
    }

    fn frame(ty: u64, len: u64) -> Vec<u8> {
        let mut out = varint(ty, 4);
        out.extend(varint(len, 8));
        out
    }

    /// Feeds `bytes` one byte at a time, as the worst split of chunks would.
    fn bytewise(frames: &mut Frames, bytes: &[u8]) -> Result<(), TooLarge> {
        bytes.chunks(1).try_for_each(|b| frames.feed(b))
    }

    #[test]
    fn large_data_passes_and_a_large_frame_of_any_other_type_is_refused() {
        let mut stream = frame(0x01, 20);
        stream.extend([0u8; 20]);
        stream.extend(frame(DATA, 1 << 40));
        stream.extend([7u8; 1000]);
        let mut f = Frames::request();
        assert_eq!(f.feed(&stream), Ok(()));
        assert_eq!(bytewise(&mut Frames::request(), &stream), Ok(()));

        let mut stream = frame(DATA, 3);
        stream.extend(b"abc");
        stream.extend(frame(0x21, MAX_FRAME + 1));
        assert_eq!(
            bytewise(&mut Frames::request(), &stream),
            Err(TooLarge {
                ty: 0x21,
                len: MAX_FRAME + 1
            })
        );
        assert_eq!(Frames::request().feed(&frame(0x01, MAX_FRAME)), Ok(()));
    }

    #[test]
    fn a_control_stream_is_read_as_frames_and_other_streams_are_not() {
        let mut control = varint(CONTROL, 1);
        control.extend(frame(0x04, 6));
        control.extend([0u8; 6]);
        control.extend(frame(0x21, 1 << 30));
        assert_eq!(
            bytewise(&mut Frames::unidirectional(), &control),
            Err(TooLarge {
                ty: 0x21,
                len: 1 << 30
            })
        );
        // A QPACK encoder stream carries instructions, not frames.
        let mut encoder = varint(0x02, 1);
        encoder.extend(frame(0x21, 1 << 30));
        let mut f = Frames::unidirectional();
        assert_eq!(bytewise(&mut f, &encoder), Ok(()));
        assert_eq!(f, Frames::Unframed);
    }
}
