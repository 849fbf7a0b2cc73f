//! HTTP/2 control-frame floods (the 2019 family: PING, SETTINGS, WINDOW_UPDATE, PRIORITY,
//! RST_STREAM, empty DATA, unknown frame types). The h2 crate answers or absorbs each such
//! frame, so one connection sending them as fast as it can keeps a core busy for as long as it
//! likes. The client's frames are metered as they are read, beside h2 (which still parses
//! everything): a connection whose control frames outrun the work it asks for is ended with
//! GOAWAY ENHANCE_YOUR_CALM. Envoy and nginx limit these frames likewise; HAProxy 2.6 and
//! the h2 crate do not.
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use crate::metrics::ListenerMetrics;

/// Control frames a connection may send in a burst, and the most it can have in hand: a
/// client's opening SETTINGS, WINDOW_UPDATE and PRIORITY frames, bursts of PINGs some
/// clients send. Credit never piles up beyond it, however long the connection has lived or
/// however much it has downloaded.
const BURST: i64 = 1000;
/// Control frames allowed per frame of useful work: a request's HEADERS, and DATA of at least
/// [`USEFUL_DATA`] bytes either way (a download makes the client send a WINDOW_UPDATE or two
/// per DATA frame it takes; tiny DATA frames a client could provoke earn nothing).
const PER_USEFUL: i64 = 8;
const USEFUL_DATA: usize = 1024;
/// Control frames allowed per second (keep-alive PINGs of a long-lived idle connection never
/// reach the limit).
const PER_SECOND: i64 = 100;

const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;

/// The frame types counted, by their wire type (unknown ones share the last slot).
const KINDS: [&str; 8] = [
    "empty_data",
    "priority",
    "rst_stream",
    "settings",
    "ping",
    "window_update",
    "empty_continuation",
    "unknown",
];

/// The client's frame budget on one connection, fed both ways: control frames from the
/// client spend it, work either way earns it.
pub struct FrameMeter {
    /// What the client sends (starting with the connection preface).
    rx: FrameStream,
    /// What the server sends.
    tx: FrameStream,
    control: [u64; KINDS.len()],
    /// Control frames the connection may still send: spent one per control frame, earned
    /// by work and by time, never above [`BURST`]; below zero is a flood.
    credit: i64,
    /// When time was last turned into credit.
    credited_at: Instant,
    /// The highest stream a request opened.
    last_stream: u32,
}

/// One direction's bytes cut into frames, a piece at a time (headers split anywhere).
#[derive(Default)]
struct FrameStream {
    preface_left: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    payload_left: usize,
}

/// A frame header as it appears on the wire.
struct Header {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Header {
    fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

impl FrameStream {
    /// Feeds the next bytes; calls `frame` with each header once complete.
    fn feed(&mut self, mut bytes: &[u8], mut frame: impl FnMut(Header)) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (HEADER_LEN - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == HEADER_LEN {
                    self.have = 0;
                    let header = Header::parse(&self.header);
                    self.payload_left = header.len;
                    frame(header);
                }
            }
        }
    }

    /// Whether the stream is at a frame boundary (nothing of a frame half fed).
    fn between_frames(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }
}

impl Default for FrameMeter {
    fn default() -> Self {
        FrameMeter {
            rx: FrameStream {
                preface_left: PREFACE_LEN,
                ..FrameStream::default()
            },
            tx: FrameStream::default(),
            control: [0; KINDS.len()],
            credit: BURST,
            credited_at: Instant::now(),
            last_stream: 0,
        }
    }
}

impl FrameMeter {
    /// Bytes the client sent.
    pub fn received(&mut self, bytes: &[u8]) {
        let mut rx = std::mem::take(&mut self.rx);
        rx.feed(bytes, |h| self.client_frame(&h));
        self.rx = rx;
    }

    fn client_frame(&mut self, h: &Header) {
        const END_STREAM: u8 = 0x1;
        let control = match h.kind {
            1 => {
                self.last_stream = self.last_stream.max(h.stream);
                self.earn();
                return;
            }
            0 if h.len == 0 && h.flags & END_STREAM == 0 => 0,
            0 => return self.data(h),
            2..=4 => usize::from(h.kind) - 1,
            6 => 4,
            8 => 5,
            9 if h.len == 0 => 6,
            5 | 7 | 9 => return,
            _ => 7,
        };
        self.control[control] += 1;
        if self.credit == BURST {
            // Time earns credit only while credit is short of the cap.
            self.credited_at = Instant::now();
        }
        self.credit -= 1;
        if self.credit < 0 {
            self.credit_time();
        }
    }

    /// A DATA frame either way: work, if it carries enough.
    fn data(&mut self, h: &Header) {
        if h.len >= USEFUL_DATA {
            self.earn();
        }
    }

    fn earn(&mut self) {
        self.credit = (self.credit + PER_USEFUL).min(BURST);
    }

    /// Turns the time since it was last done into credit (looked at only when credit runs
    /// out, so not a clock read per frame).
    fn credit_time(&mut self) {
        let now = Instant::now();
        let ms = now.duration_since(self.credited_at).as_millis();
        let earned = i64::try_from(ms.saturating_mul(PER_SECOND as u128) / 1000).unwrap_or(BURST);
        if earned > 0 {
            self.credit = self.credit.saturating_add(earned).min(BURST);
            self.credited_at = now;
        }
    }

    /// Bytes written to the client.
    pub fn sent(&mut self, bytes: &[u8]) {
        let mut tx = std::mem::take(&mut self.tx);
        tx.feed(bytes, |h| {
            if h.kind == 0 {
                self.data(&h);
            }
        });
        self.tx = tx;
    }

    /// Whether the client's control frames have outrun its allowance.
    pub fn flooding(&self) -> bool {
        self.credit < 0
    }

    /// The control frame type sent most.
    pub fn most_sent(&self) -> &'static str {
        let (i, _) = self
            .control
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .unwrap_or((KINDS.len() - 1, &0));
        KINDS[i]
    }

    /// GOAWAY (`last_stream`, ENHANCE_YOUR_CALM), as written on the wire.
    fn goaway(last_stream: u32) -> Vec<u8> {
        const ENHANCE_YOUR_CALM: u32 = 0xb;
        let mut f = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
        f.extend_from_slice(&last_stream.to_be_bytes());
        f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f
    }
}

/// An HTTP/2 client stream with its frames metered both ways. Once the client floods, the
/// guard writes GOAWAY (between two of h2's frames), closes the stream and gives h2 an end of
/// stream, which ends the connection; the flood's last bytes are not handed to h2.
pub struct FloodGuard<S> {
    inner: S,
    meter: FrameMeter,
    closing: Option<Closing>,
    /// The highest request stream h2 has been handed: the GOAWAY's last stream.
    delivered_last_stream: u32,
    metrics: ListenerMetrics,
    peer: std::net::SocketAddr,
}

/// How far the guard has got in ending a flooding connection.
enum Closing {
    /// The GOAWAY frame, and how much of it is written.
    Goaway(Vec<u8>, usize),
    Shutdown,
    Done,
}

impl<S> FloodGuard<S> {
    pub fn new(inner: S, metrics: ListenerMetrics, peer: std::net::SocketAddr) -> Self {
        FloodGuard {
            inner,
            meter: FrameMeter::default(),
            closing: None,
            delivered_last_stream: 0,
            metrics,
            peer,
        }
    }
}

impl<S: AsyncWrite + Unpin> FloodGuard<S> {
    /// Drives the closing of a flooding connection: GOAWAY, flush, shutdown (TLS close_notify
    /// and FIN).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            match &mut self.closing {
                None | Some(Closing::Done) => return Poll::Ready(Ok(())),
                Some(Closing::Goaway(frame, at)) => {
                    if *at == frame.len() {
                        self.closing = Some(Closing::Shutdown);
                        continue;
                    }
                    let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &frame[*at..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    *at += n;
                }
                Some(Closing::Shutdown) => {
                    ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
                    self.closing = Some(Closing::Done);
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_some() {
            // An end of stream for h2, once the stream is closed (or could not be).
            let _ = ready!(this.poll_close(cx));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.meter.received(&buf.filled()[before..]);
            if this.meter.flooding() {
                let frame = this.meter.most_sent();
                debug!(client = %this.peer, frame, "HTTP/2 control-frame flood: GOAWAY ENHANCE_YOUR_CALM");
                this.metrics.h2_flood(frame);
                buf.set_filled(before);
                // A frame of h2's half written (the client stopped reading) cannot be
                // followed by the GOAWAY: the stream is only closed then.
                this.closing = Some(if this.meter.tx.between_frames() {
                    Closing::Goaway(FrameMeter::goaway(this.delivered_last_stream), 0)
                } else {
                    Closing::Shutdown
                });
                let _ = ready!(this.poll_close(cx));
                return Poll::Ready(Ok(()));
            }
            this.delivered_last_stream = this.meter.last_stream;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FloodGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.closing.is_some() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.meter.sent(&buf[..n]);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.closing.is_some() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for b in bufs {
                let k = n.min(b.len());
                self.meter.sent(&b[..k]);
                n -= k;
                if n == 0 {
                    break;
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.closing.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.closing.is_some() {
            return self.poll_close(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = (len as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn past_preface() -> FrameMeter {
        let mut m = FrameMeter::default();
        m.received(PREFACE);
        m
    }

    #[test]
    fn frames_are_counted_however_the_bytes_are_split() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(4, 0, 0, 6)); // SETTINGS
        wire.extend(frame(1, 0x5, 3, 20)); // HEADERS, a request
        wire.extend(frame(0, 0, 3, 100)); // DATA with a payload
        wire.extend(frame(0, 0, 3, 0)); // empty DATA
        wire.extend(frame(0, 0x1, 3, 0)); // empty DATA ending the stream: not a flood frame
        wire.extend(frame(6, 0, 0, 8)); // PING
        wire.extend(frame(8, 0, 0, 4)); // WINDOW_UPDATE
        wire.extend(frame(0x20, 0, 0, 3)); // unknown type
        wire.extend(frame(1, 0x5, 7, 20)); // HEADERS, another request
        for chunk in [1, 2, 5, 9, 10, 24, 33, wire.len()] {
            let mut m = FrameMeter::default();
            for piece in wire.chunks(chunk) {
                m.received(piece);
            }
            assert_eq!(m.control, [1, 0, 0, 1, 1, 1, 0, 1], "chunks of {chunk}");
            // Four control frames spent, two requests earned (the 100-byte DATA is too
            // small to count), within the cap.
            assert_eq!(m.credit, BURST, "chunks of {chunk}");
            assert_eq!(m.last_stream, 7);
        }
    }

    #[test]
    fn a_flood_is_found_after_its_allowance_and_work_earns_more() {
        // Past the burst by more than the time a test run could earn (100 a second).
        const PAST: i64 = BURST + 300;
        let ping = frame(6, 0, 0, 8);
        let mut m = past_preface();
        for _ in 0..BURST {
            m.received(&ping);
        }
        assert!(!m.flooding());
        for _ in BURST..PAST {
            m.received(&ping);
        }
        assert!(m.flooding());
        assert_eq!(m.most_sent(), "ping");

        // Credit does not pile up: a long download leaves at most one burst in hand.
        let mut m = past_preface();
        let big = frame(0, 0, 1, 16_384);
        for _ in 0..100_000 {
            m.sent(&big);
        }
        for _ in 0..PAST {
            m.received(&ping);
        }
        assert!(m.flooding());

        // Tiny DATA frames earn nothing.
        let mut m = past_preface();
        let tiny = frame(0, 0, 1, 1);
        for _ in 0..PAST {
            m.sent(&tiny);
            m.received(&ping);
        }
        assert!(m.flooding());

        // Data sent to the client earns WINDOW_UPDATEs: a download is not a flood.
        let mut m = past_preface();
        let update = frame(8, 0, 1, 4);
        for _ in 0..10_000 {
            m.sent(&big);
            m.received(&update);
            m.received(&update);
        }
        assert!(!m.flooding());
    }

    #[test]
    fn goaway_names_the_last_request_and_enhance_your_calm() {
        assert_eq!(
            FrameMeter::goaway(9),
            [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0xb]
        );
    }
}
