//! edgelb's HTTP/1.1 client for backends. The request's own task takes an idle connection
//! from the worker's pool (or connects), writes the head (and a small body) in one write,
//! and parses the response head in place; the response body reads from the connection and
//! gives it back to the pool when it ends. No connection task, no channel, no lock shared
//! between threads: what hyper-util's pooled client does with three of each per request.
mod body;
mod head;
mod pool;
mod stream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method, Response};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use body::ResponseBody;
pub use head::RequestFraming;
pub use stream::{BackendStream, Conn};

use body::ReturnTo;
pub use pool::PrivatePool;
use pool::{Pool, ReturnPool};

/// A body up to this size is copied behind the head and sent in the same write.
const COALESCE_BODY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made (refused, unreachable, timed out, TLS handshake failed):
    /// the backend never saw the request.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The connection closed or was reset before a whole response head arrived.
    #[error("connection closed before a response: {0}")]
    Lost(io::Error),
    /// The body ended before its framing said it would.
    #[error("connection closed before the response body ended")]
    Incomplete,
    #[error("{0}")]
    Io(io::Error),
    #[error("invalid response: {0}")]
    BadResponse(String),
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// Reading the request body from the client failed.
    #[error("request body: {0}")]
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
    /// No response head within the response timeout once the request was sent, or the
    /// backend took none of the request body for that long.
    #[error("{0}")]
    TimedOut(&'static str),
}

impl Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }

    /// What a pooled keep-alive connection that the backend closed as it was reused looks
    /// like (and any connection that dies before answering).
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost(_))
    }
}

/// What is sent as the request body.
pub enum OutBody {
    /// Known in full (possibly empty): can be sent again.
    Full(Bytes),
    /// Streamed from the client, once; with its declared length, or chunked.
    Stream(super::client::UpstreamBody, Option<u64>),
}

/// TLS towards backends: the connector and the name to present (the backend's address when
/// no `--hc-domain` is given).
pub struct Tls {
    pub connector: TlsConnector,
    pub name: Option<ServerName<'static>>,
}

/// A request on a connection private to its client connection: taken from and returned to
/// `pool`, and a new one starts with `header` (the client's PROXY protocol header).
#[derive(Clone, Copy)]
pub struct Private<'a> {
    pub pool: &'a Arc<PrivatePool>,
    pub header: &'a [u8],
}

/// One worker's client for one group: its pool of connections to the group's backends.
pub struct Client {
    tls: Option<Tls>,
    pool: Arc<Pool>,
    connect_timeout: Duration,
    max_head: usize,
}

impl Client {
    pub fn new(
        backends: usize,
        tls: Option<Tls>,
        connect_timeout: Duration,
        max_head: usize,
    ) -> Self {
        Client {
            tls,
            pool: Pool::new(backends),
            connect_timeout,
            max_head,
        }
    }

    /// Sends one request to backend `index` at `addr` and reads the response head. The head
    /// in `headers` goes out as it is, with `Host` added (the backend's address) when
    /// missing and the framing header for `body`. With `private`, only that client
    /// connection's own connections are used (see [`PrivatePool`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        index: usize,
        addr: SocketAddr,
        private: Option<Private<'_>>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: OutBody,
        response_timeout: Duration,
    ) -> Result<Response<ResponseBody>, Error> {
        let pooled = match private {
            Some(p) => p.pool.take(index),
            None => self.pool.take(index),
        };
        let mut conn = match pooled {
            Some(conn) => conn,
            // Boxed: a TLS handshake's state is large, and every request's future would
            // otherwise carry room for it.
            None => Box::pin(self.connect(addr, private.map(|p| p.header))).await?,
        };
        let framing = match &body {
            // RFC 9110 8.6: a method that defines a body gets a length, even a zero one
            // (IIS answers 411 otherwise).
            OutBody::Full(b) if b.is_empty() && !defines_body(method) => RequestFraming::Empty,
            OutBody::Full(b) => RequestFraming::Length(b.len() as u64),
            OutBody::Stream(_, Some(n)) => RequestFraming::Length(*n),
            OutBody::Stream(_, None) => RequestFraming::Chunked,
        };
        conn.wbuf.clear();
        // The backend's address is only rendered for the rare request without Host.
        let host = if headers.contains_key(hyper::header::HOST) {
            String::new()
        } else {
            addr.to_string()
        };
        head::write_request(&mut conn.wbuf, method, target, headers, &host, framing);
        // A backend may answer before it has read the whole body (413, 401) and close: its
        // answer is still in the socket, and is what the client should see; without one, the
        // write's error stands. Such a connection is never reused.
        // The response timeout is the backend's time to take each part of the request, then to
        // start its answer once it has all of it: the client's own pace is its own timeouts'
        // business, so a long upload is not cut by it.
        let write_failed = match send_body(&mut conn, body, response_timeout).await {
            Ok(()) => None,
            Err(e @ (Error::Lost(_) | Error::Io(_))) => Some(e),
            Err(e) => return Err(e),
        };
        let answered_early = write_failed.is_some();
        let reading = read_head(&mut conn, method, self.max_head);
        let head = match (
            tokio::time::timeout(response_timeout, reading).await,
            write_failed,
        ) {
            (Ok(Ok(head)), _) => head,
            (_, Some(e)) => return Err(e),
            (Ok(Err(e)), None) => return Err(e),
            (Err(_), None) => {
                return Err(Error::TimedOut("no response within the response timeout"));
            }
        };
        let upgraded = head.status.as_u16() == 101;
        let return_to = (head.keep_alive && !upgraded && !answered_early).then(|| ReturnTo {
            pool: match private {
                Some(p) => ReturnPool::Private(p.pool.clone()),
                None => ReturnPool::Shared(self.pool.clone()),
            },
            backend: index,
        });
        let body = if upgraded {
            ResponseBody::upgraded(conn)
        } else {
            ResponseBody::new(head.framing, conn, return_to)
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    async fn connect(&self, addr: SocketAddr, header: Option<&[u8]>) -> Result<Conn, Error> {
        let connect = async {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            // The PROXY protocol header comes before anything else, TLS included.
            if let Some(header) = header {
                tcp.write_all(header).await?;
            }
            let Some(tls) = &self.tls else {
                return Ok(BackendStream::Plain(tcp));
            };
            let name = tls
                .name
                .clone()
                .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
            let stream = tls.connector.connect(name, tcp).await?;
            Ok(BackendStream::Tls(Box::new(stream)))
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(io)) => Ok(Conn::new(io)),
            Ok(Err(e)) => Err(Error::Connect(e)),
            Err(_) => Err(Error::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            ))),
        }
    }
}

/// Methods whose requests define a body (RFC 9110 9.3): sent with a length even when empty.
fn defines_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Reads the response head, past interim responses (100 Continue, 103 Early Hints), which are
/// not passed on.
async fn read_head(
    conn: &mut Conn,
    method: &Method,
    max_head: usize,
) -> Result<head::ResponseHead, Error> {
    loop {
        match head::parse_response(&mut conn.rbuf, method, max_head)? {
            Some(h) if h.status.is_informational() && h.status.as_u16() != 101 => continue,
            Some(h) => return Ok(h),
            None => {}
        }
        match conn.fill().await {
            Ok(0) => {
                return Err(Error::Lost(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed",
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(lost_or_io(e)),
        }
    }
}

/// A write (or flush) towards the backend, failing when the backend takes none of it for
/// `stall`.
async fn within(stall: Duration, write: impl Future<Output = io::Result<()>>) -> Result<(), Error> {
    // Nearly every write completes at once (the socket has room): the timer, and the clock
    // read that sets it, only for one that has to wait.
    let mut write = std::pin::pin!(write);
    let at_once = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    if let Poll::Ready(done) = at_once {
        return done.map_err(lost_or_io);
    }
    match tokio::time::timeout(stall, write).await {
        Ok(done) => done.map_err(lost_or_io),
        Err(_) => Err(Error::TimedOut("the backend did not take the request body")),
    }
}

/// Writes the head in `conn.wbuf` and the body: a small full body in the same write, a
/// stream as it comes (chunked when its length is unknown). Each write may wait `stall` for
/// the backend to take it.
async fn send_body(conn: &mut Conn, body: OutBody, stall: Duration) -> Result<(), Error> {
    let Conn { io, wbuf, .. } = conn;
    match body {
        OutBody::Full(b) if b.len() <= COALESCE_BODY => {
            wbuf.extend_from_slice(&b);
            within(stall, io.write_all(wbuf)).await?;
        }
        OutBody::Full(b) => {
            within(stall, io.write_all(wbuf)).await?;
            within(stall, io.write_all(&b)).await?;
        }
        OutBody::Stream(body, length) => {
            within(stall, io.write_all(wbuf)).await?;
            Box::pin(send_stream(io, body, length.is_none(), stall)).await?;
        }
    }
    // A TLS stream may hold the last bytes until flushed: that wait is the backend's too.
    within(stall, io.flush()).await
}

/// A streamed body as it comes from the client, chunked when its length is not known.
async fn send_stream(
    io: &mut BackendStream,
    mut body: super::client::UpstreamBody,
    chunked: bool,
    stall: Duration,
) -> Result<(), Error> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Error::RequestBody)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            within(
                stall,
                io.write_all(format!("{:x}\r\n", data.len()).as_bytes()),
            )
            .await?;
        }
        within(stall, io.write_all(&data)).await?;
        if chunked {
            within(stall, io.write_all(b"\r\n")).await?;
        }
    }
    if chunked {
        within(stall, io.write_all(b"0\r\n\r\n")).await?;
    }
    Ok(())
}

/// A reset or closed connection before a response is a lost one; anything else an I/O error.
fn lost_or_io(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Error::Lost(e),
        _ => Error::Io(e),
    }
}

/// The TLS client configuration for backends, with ALPN `http/1.1`.
pub fn tls(mut config: ClientConfig, name: Option<ServerName<'static>>) -> Tls {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Tls {
        connector: TlsConnector::from(Arc::new(config)),
        name,
    }
}
