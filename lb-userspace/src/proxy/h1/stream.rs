//! A connection to a backend, in clear or over TLS, with its read and write buffers.
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One backend connection as the client and its pool hold it: the buffers stay with the
/// connection, so a reused connection allocates nothing for the next request.
pub struct Conn {
    pub io: BackendStream,
    /// Bytes read and not yet consumed (a response head, body bytes behind it).
    pub rbuf: BytesMut,
    /// The request head being written.
    pub wbuf: Vec<u8>,
    /// Room asked for at the next read: small for heads and small bodies, larger once reads
    /// fill what they are given (a large body), so that idle pooled connections hold little.
    read_size: usize,
}

impl Conn {
    pub fn new(io: BackendStream) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            read_size: MIN_READ_SIZE,
        }
    }

    /// Reads more bytes into `rbuf`; 0 means the backend closed the connection.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Reading heads and small bodies, the buffer is topped up only when little room is
        // left: the heads of responses still being sent share it, so asking for the full
        // read size after every head made a new buffer every few responses.
        let wanted = if self.read_size > MIN_READ_SIZE {
            self.read_size
        } else {
            MIN_ROOM
        };
        if self.rbuf.capacity() - self.rbuf.len() < wanted {
            self.rbuf.reserve(self.read_size);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))?;
        // Only a read given the whole read size and filling it says the body comes faster
        // (one that filled a small remainder of room says nothing).
        if n == room && room >= self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }

    /// Going idle: a buffer grown for a large body is let go, and the next reads start small.
    pub fn shrink(&mut self) {
        if self.rbuf.capacity() > MAX_READ_SIZE {
            self.rbuf = BytesMut::new();
        }
        self.read_size = MIN_READ_SIZE;
    }

    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Whether an idle connection can take a request: the backend has neither closed it nor
    /// sent anything unasked. Looked at without waiting (readiness the runtime already knows,
    /// or at most one read that finds nothing).
    pub fn idle_and_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

const MIN_READ_SIZE: usize = 16 * 1024;
/// Room below which a read at [`MIN_READ_SIZE`] gets a new buffer (a response head is
/// rarely more than a few hundred bytes).
const MIN_ROOM: usize = 4 * 1024;
const MAX_READ_SIZE: usize = 64 * 1024;

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
