//! One client connection: TLS handshake (for https), HTTP/1.1 or HTTP/2 by ALPN, each request
//! to the upstream, and the idle and request timeouts.
pub mod activity;
pub mod h2_flood;
#[cfg(feature = "http3")]
pub mod http3;
#[cfg(not(feature = "http3"))]
#[path = "http3_unavailable.rs"]
pub mod http3;
mod malformed;
pub mod park;
mod proxy_header;
pub mod stream;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::access_log::{Answer, Counted, ListenerLog};
use crate::acl::AccessControl;
use crate::config::Timeouts;
use crate::metrics::ListenerMetrics;
use crate::proxy::body::WithGuard;
use crate::proxy::headers::ConnInfo;
use crate::proxy::{ProxyBody, Routes};
use crate::refusals::{self, Refused};
use crate::tls::ClientIdentity;
use activity::{Activity, Deadline, RequestGuard, Sending};
use arc_swap::ArcSwap;
use h2_flood::FloodGuard;
use stream::ClientStream;

/// Largest HTTP/1 request head (request line and headers): larger ones get 431. As
/// HAProxy's default (16 KiB buffers); HTTP/2's header list limit is hyper's, also 16 KiB.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a connection being closed for a timeout may take to finish what it is writing.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a reload may replace: read once per connection (TLS, timeouts) or request (routes),
/// swapped whole.
pub struct Live {
    pub tls: Option<TlsAcceptor>,
    pub access: AccessControl,
    pub http2: bool,
    pub routes: Routes,
    /// HTTP/3 (`--http3 on`): the QUIC configuration new connections get, and the `Alt-Svc`
    /// header that advertises it on HTTP/1.1 and HTTP/2 responses.
    pub quic: Option<Arc<http3::QuicConfig>>,
    pub alt_svc: Option<hyper::header::HeaderValue>,
    /// HTTP-01 answers (`--acme-challenge http-01`), on http listeners.
    pub acme_http: Option<Arc<crate::acme::Acme>>,
    /// `--accept-proxy-protocol`: connections start with a PROXY protocol header.
    pub accept_proxy: Option<crate::config::AcceptProxy>,
    /// `--access-log`: one line per request, under the listener's name.
    pub access_log: Option<ListenerLog>,
}

impl Live {
    /// The edge's own `Alt-Svc`, on a response of any protocol: HTTP/3 is the edge's to offer
    /// (or to keep offering, to a client already on it), whatever a backend says of its own.
    pub(crate) fn advertise_http3(&self, headers: &mut hyper::HeaderMap) {
        if let Some(alt_svc) = &self.alt_svc {
            headers.insert(hyper::header::ALT_SVC, alt_svc.clone());
        }
    }
}

/// What every connection of a listener on one worker shares.
pub struct ListenerContext {
    pub live: ArcSwap<Live>,
    pub metrics: ListenerMetrics,
    /// Turns true when the listener stops (the daemon stops, or a reload removes it):
    /// connections finish what is in flight and close.
    pub stop: watch::Receiver<bool>,
    /// Connections of this worker still open, all listeners together (for draining).
    pub open: Arc<AtomicUsize>,
    /// `--max-connections`, for all of the listener's workers together.
    pub limit: Arc<ConnectionLimit>,
}

/// A listener's cap on open client connections, shared by its workers; a reload may change
/// the cap.
pub struct ConnectionLimit {
    max: AtomicUsize,
    open: AtomicUsize,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
        })
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether half the cap is taken (HTTP/3 then asks new clients to prove their address).
    pub fn past_half(&self) -> bool {
        self.open.load(Ordering::Relaxed).saturating_mul(2) >= self.max.load(Ordering::Relaxed)
    }

    /// Room for one more connection (held until the guard is dropped), or None at the cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if before >= self.max.load(Ordering::Relaxed) {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }
}

/// One connection's place under its listener's [`ConnectionLimit`].
pub struct Slot(Arc<ConnectionLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a connection in [`ListenerContext::open`] until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HTTP/2 limits, chosen here rather than left to hyper's and h2's defaults (which may change
/// between releases). Worst case per connection: 100 streams x 128 KiB of response waiting to
/// be sent, plus 1 MiB of request bodies received and not yet forwarded, plus one header block
/// of at most 32 KiB being decoded.
pub mod h2 {
    use std::time::Duration;

    /// SETTINGS_MAX_CONCURRENT_STREAMS: requests one connection may have in flight, each a
    /// backend request. RFC 9113 asks for at least 100; nginx advertises 128, hyper 200.
    /// A stream opened beyond it is refused (RST_STREAM REFUSED_STREAM).
    pub const MAX_CONCURRENT_STREAMS: u32 = 100;
    /// SETTINGS_MAX_HEADER_LIST_SIZE, the decoded size of one request's header block
    /// (RFC 9113 counts each field as name + value + 32). The same 32 KiB as nginx's
    /// `large_client_header_buffers` (4 x 8 KiB); hyper's default is 16 KiB, too small for
    /// some cookie-heavy sites. Larger blocks get 431 and their stream is reset; h2 also caps
    /// the CONTINUATION frames of a block at 5 here (CVE-2024-27316 class floods).
    pub const MAX_HEADER_LIST_SIZE: u32 = 32 * 1024;
    /// Streams the client may reset before the server has even accepted them, before the
    /// connection ends with GOAWAY ENHANCE_YOUR_CALM: the rapid-reset attack
    /// (CVE-2023-44487). h2's own default, set explicitly since hyper leaves it to h2.
    pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
    /// Streams the server may reset for the client's protocol errors (malformed or
    /// connection-specific headers, ...) before GOAWAY: hyper's default is 1024, which lets
    /// one connection make the server build and send a thousand resets. A correct client
    /// makes none.
    pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 64;
    /// Response bytes buffered per stream for a client that reads slowly (hyper: 400 KiB,
    /// 40 MiB per connection at 100 streams); the body is not read from the backend beyond it.
    pub const MAX_SEND_BUF_SIZE: usize = 128 * 1024;
    /// Flow-control windows: how much request body a client may send before the service has
    /// consumed it, per stream and for the whole connection. Fixed (the adaptive window can
    /// grow them to megabytes per stream): 1 MiB per connection at most.
    pub const STREAM_WINDOW: u32 = 256 * 1024;
    pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
    /// SETTINGS_MAX_FRAME_SIZE: the protocol's minimum and default, 16 KiB.
    pub const MAX_FRAME_SIZE: u32 = 16 * 1024;
    /// A PING when the client has sent nothing for this long; no answer within
    /// [`KEEP_ALIVE_TIMEOUT`] closes the connection. This finds dead peers during long
    /// responses, when the idle timeout does not apply.
    pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
    pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
}

fn h2_limits<E>(b: &mut http2::Builder<E>) {
    b.max_concurrent_streams(h2::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(h2::MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(h2::MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(h2::MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_send_buf_size(h2::MAX_SEND_BUF_SIZE)
        .adaptive_window(false)
        .initial_stream_window_size(h2::STREAM_WINDOW)
        .initial_connection_window_size(h2::CONNECTION_WINDOW)
        .max_frame_size(h2::MAX_FRAME_SIZE)
        .keep_alive_interval(h2::KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(h2::KEEP_ALIVE_TIMEOUT);
}

pub async fn serve_connection(mut stream: TcpStream, ctx: Arc<ListenerContext>, _slot: Slot) {
    let _ = stream.set_nodelay(true);
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let activity = Activity::new();
    let _open = (ctx.metrics.connection_opened(), Open::new(&ctx.open));
    let live = ctx.live.load_full();
    let timeouts = live.routes.settings.timeouts;
    // The PROXY protocol header, then the TLS handshake, within one handshake timeout.
    let deadline = tokio::time::Instant::now() + timeouts.handshake;
    // Behind another balancer, the client is the one its header names, from here on.
    let (peer, local) = match &live.accept_proxy {
        None => (peer, local),
        Some(accept) => {
            let ends =
                proxy_header::client_ends(&mut stream, accept, peer, local, deadline, &ctx.metrics);
            match Box::pin(ends).await {
                Some(ends) => ends,
                None => return,
            }
        }
    };
    let Some(tls) = &live.tls else {
        let conn = ConnInfo::new(peer, local, "http", ClientIdentity::default(), None);
        serve_http(
            ClientStream::new(stream, activity.clone()),
            conn,
            false,
            activity,
            timeouts,
            &ctx,
        )
        .await;
        return;
    };
    // Plain HTTP sent to the TLS port gets an answer a person can read, as nginx gives,
    // rather than a TLS alert: the first byte of a TLS connection is a handshake record's.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            ctx.metrics.handshake("plain_http");
            refusals::log(
                Refused::Handshake,
                ctx.metrics.name(),
                peer,
                &"plain HTTP sent to the TLS port (answered 400)",
            );
            plain_http_refused(stream).await;
            return;
        }
        Ok(_) => {}
        Err(_) => {
            ctx.metrics.handshake("timeout");
            handshake_timed_out(&ctx, peer, timeouts);
            return;
        }
    }
    // The handshake boxed, and the stream it yields boxed too: the task then holds a few
    // pointers for the connection's whole life, not room for the largest state of each step
    // (memory per idle connection).
    let handshake = Box::pin(async move {
        let accepted = tokio::time::timeout_at(deadline, tls.accept(stream)).await;
        accepted.map(|accepted| accepted.map(Box::new))
    });
    let tls_stream = match handshake.await {
        Ok(Ok(s)) => {
            ctx.metrics.handshake("ok");
            s
        }
        Ok(Err(e)) => {
            let failure = crate::tls::failure::classify(&e);
            ctx.metrics.handshake(failure.label);
            match failure.reason {
                Some(reason) => {
                    refusals::log(Refused::Handshake, ctx.metrics.name(), peer, &reason)
                }
                None => debug!(client = %peer, error = %e, "TLS handshake failed"),
            }
            return;
        }
        Err(_) => {
            ctx.metrics.handshake("timeout");
            handshake_timed_out(&ctx, peer, timeouts);
            return;
        }
    };
    let session = tls_stream.get_ref().1;
    if session.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
        // The CA's TLS-ALPN-01 validation: the handshake was the answer (RFC 8737 3).
        debug!(client = %peer, sni = ?session.server_name(), "ACME TLS-ALPN-01 validation answered");
        return;
    }
    let h2 = live.http2 && session.alpn_protocol() == Some(b"h2");
    let conn = ConnInfo::new(
        peer,
        local,
        "https",
        ClientIdentity::from_connection(session),
        session.server_name().map(str::to_string),
    )
    .with_tls_version(session.protocol_version());
    serve_http(
        ClientStream::new(tls_stream, activity.clone()),
        conn,
        h2,
        activity,
        timeouts,
        &ctx,
    )
    .await;
}

/// Logs a handshake (PROXY header included) that outlived the handshake timeout.
fn handshake_timed_out(ctx: &ListenerContext, peer: std::net::SocketAddr, timeouts: Timeouts) {
    let reason = format!(
        "not completed within the handshake timeout ({} s)",
        timeouts.handshake.as_secs_f32()
    );
    refusals::log(Refused::Handshake, ctx.metrics.name(), peer, &reason);
}

/// Answers plain HTTP on a TLS port with 400 and closes: what the client sent is read (up to
/// a request head) first, and what follows the answer until it closes, so that closing does
/// not reset the connection before the client has read the answer.
async fn plain_http_refused(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "This port speaks HTTPS: use https:// in the URL.\n";
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let _ = tokio::time::timeout(CLOSE_GRACE, stream.read(&mut buf)).await;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A response body as hyper sends it: the proxy's, counted for the access log, holding the
/// request's place in the connection's activity (and its log entry) until it is sent. Named,
/// not boxed again: that was an allocation per request.
pub type ServedBody =
    Sending<WithGuard<Counted<ProxyBody>, (RequestGuard, Option<Box<crate::access_log::Entry>>)>>;

/// The connection's HTTP serving, boxed: `io` moves into it rather than being kept in the
/// caller's state too.
fn serve_http<'a, S>(
    io: ClientStream<S>,
    conn: ConnInfo,
    h2: bool,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    ctx: &'a Arc<ListenerContext>,
) -> BoxFuture<'a, ()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let conn = Arc::new(conn);
    let conn_for_drive = conn.clone();
    let ctx_for_requests = ctx.clone();
    let service_activity = activity.clone();
    let service = service_fn(move |req| {
        let guard = service_activity.request_started();
        let activity_for_body = service_activity.clone();
        // Two reference counts per request, not a copy of the listener's metric handles.
        let (conn, ctx) = (conn.clone(), ctx_for_requests.clone());
        // Routes are read per request: a reload reaches open keep-alive connections too.
        let live = ctx.live.load_full();
        // What needs no waiting is done here, not in the future: what the future holds, it
        // holds for the whole exchange, and it is moved (and boxed) whole.
        let started = std::time::Instant::now();
        let (mut entry, counters) = match &live.access_log {
            Some(log) => {
                let (entry, counters) = log.start(started, conn.peer, conn.sni.as_deref(), &req);
                (Some(entry), Some(counters))
            }
            None => (None, None),
        };
        let req = req.map(|b| Counted::received(b, counters.clone()));
        // Boxed: rare, and a response inline would make every request's future larger.
        let acme_answer = live
            .acme_http
            .as_ref()
            .and_then(|acme| acme_http_answer(acme, req.uri().path()))
            .map(Box::new);
        let fut = async move {
            let (resp, served, took) = match acme_answer {
                Some(answer) => (*answer, Default::default(), None),
                None => {
                    let (mut resp, served) = live.routes.handle(req, &conn).await;
                    live.advertise_http3(resp.headers_mut());
                    let took = started.elapsed();
                    ctx.metrics.observe(took);
                    (resp, served, Some(took))
                }
            };
            if let Some(e) = entry.as_mut() {
                e.answered(answered_by(&live.routes, served, resp.status(), took));
            }
            // The entry goes with the body: its line is written once the body has been sent.
            let guard = (guard, entry);
            Ok::<_, Infallible>(resp.map(|b| {
                Sending::new(
                    WithGuard::new(Counted::sent(b, counters), guard),
                    activity_for_body,
                )
            }))
        };
        // Boxed: hyper moves what this returns at least twice for each HTTP/2 stream, into
        // the stream's task; a pointer is cheaper to move.
        Box::pin(fut)
    });

    // One protocol per connection, chosen by ALPN: each served by its own hyper connection
    // type (boxed), so that an HTTP/1.1 connection does not carry room for HTTP/2's state.
    if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        h2_limits(&mut builder);
        let io = FloodGuard::new(io, ctx.metrics.clone(), peer);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        Box::pin(async move {
            drive(
                connection,
                &conn_for_drive,
                &activity,
                timeouts,
                false,
                None,
                ctx,
            )
            .await;
        })
    } else {
        let io = Box::new(io);
        Box::pin(serve_http1(
            io,
            service,
            conn_for_drive,
            activity,
            timeouts,
            ctx,
        ))
    }
}

/// The HTTP-01 answer for a validation request's path, while its validation is pending.
fn acme_http_answer(
    acme: &crate::acme::Acme,
    path: &str,
) -> Option<hyper::Response<crate::proxy::ProxyBody>> {
    let token = path.strip_prefix(crate::acme::HTTP_CHALLENGE_PREFIX)?;
    let answer = acme.http_challenge(token)?;
    let mut resp = hyper::Response::new(crate::proxy::ProxyBody::full(answer));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// What answered a request, for its access log line, whichever protocol carried it;
/// `took` is the time to the response head (an upstream time when a backend answered).
pub(crate) fn answered_by(
    routes: &Routes,
    served: crate::proxy::Served,
    status: hyper::StatusCode,
    took: Option<Duration>,
) -> Answer {
    let backend = served
        .group
        .and_then(|g| routes.target(g))
        .zip(served.backend)
        .and_then(|(t, b)| t.upstream.balancer().key(b));
    Answer {
        status: status.as_u16(),
        rule: served
            .rule
            .and_then(|r| routes.rules.name(r))
            .map(str::to_string),
        upstream: took.filter(|_| backend.is_some()),
        backend: backend.map(str::to_string),
    }
}

/// HTTP/1.1 over `io`, parked while idle (see [`park`]): one hyper connection after another,
/// each taking up the client stream where the last let go of it.
async fn serve_http1<S, F>(
    mut io: Box<ClientStream<S>>,
    service: F,
    conn: Arc<ConnInfo>,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    ctx: &Arc<ListenerContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::HttpService<hyper::body::Incoming, ResBody = ServedBody>
        + Clone
        + Unpin
        + Send
        + 'static,
    F::Future: Send + 'static,
    F::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let park_after = (!timeouts.idle.is_zero()).then_some(park::PARK_AFTER);
    loop {
        let Some(parked) = serve_until_parked(
            io,
            service.clone(),
            &conn,
            &activity,
            timeouts,
            park_after,
            ctx,
        )
        .await
        else {
            // After a `101` the connection is the tunnel's, still holding its place under
            // the connection limit and in the drain count.
            if let Some(tunnel) = conn.tunnel.take() {
                tunnel.await;
            }
            return;
        };
        io = parked;
        let _parked = ctx.metrics.connection_parked();
        park::return_memory_soon();
        if !wait_parked(&mut io, &activity, timeouts, ctx).await {
            return;
        }
    }
}

/// One hyper HTTP/1.1 connection on `io`, until the connection ends (None) or parks (its
/// stream back, with what hyper read and did not use). Boxed, so that parking frees the
/// connection's state with its buffers.
fn serve_until_parked<'a, S, F>(
    io: Box<ClientStream<S>>,
    service: F,
    conn: &'a ConnInfo,
    activity: &'a Activity,
    timeouts: Timeouts,
    park_after: Option<Duration>,
    ctx: &'a Arc<ListenerContext>,
) -> BoxFuture<'a, Option<Box<ClientStream<S>>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::HttpService<hyper::body::Incoming, ResBody = ServedBody>
        + Unpin
        + Send
        + 'static,
    F::Future: Send + 'static,
    F::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The request and idle timeouts are edgelb's own (`drive`); hyper's default 30 s
        // header timeout would otherwise also close idle connections at 30 s.
        .header_read_timeout(None)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(!timeouts.idle.is_zero());
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    Box::pin(async move {
        let parts = drive(connection, conn, activity, timeouts, true, park_after, ctx)
            .await?
            .into_parts()?;
        let mut io = parts.io.into_inner();
        io.keep_unread(&parts.read_buf);
        Some(io)
    })
}

/// A parked connection until the client sends its next bytes (true), or until it closes: the
/// client closed, the idle timeout passed, or the listener is stopping (false).
async fn wait_parked<S>(
    io: &mut ClientStream<S>,
    activity: &Activity,
    timeouts: Timeouts,
    ctx: &ListenerContext,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Bytes kept from the last hyper connection make the deadline a request's (see
    // `ClientStream::keep_unread`): the next connection reads them at once.
    let Deadline::Idle(idle_until) = activity.deadline(timeouts.idle, timeouts.request, true)
    else {
        return true;
    };
    let mut stop = ctx.stop.clone();
    tokio::select! {
        back = io.wait_for_client() => return matches!(back, Ok(true)),
        () = tokio::time::sleep_until(idle_until) => {}
        _ = stop.changed() => {}
    }
    // Closed as hyper closes an idle connection: TLS close_notify, then FIN.
    let _ = tokio::time::timeout(CLOSE_GRACE, tokio::io::AsyncWriteExt::shutdown(io)).await;
    false
}

/// A hyper server connection of either protocol.
trait ServerConnection: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> ServerConnection for http1::UpgradeableConnection<I, S>
where
    Self: Future<Output = Result<(), hyper::Error>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = ServedBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, E> ServerConnection for http2::Connection<I, S, E>
where
    Self: Future<Output = Result<(), hyper::Error>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = ServedBody>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Why [`drive`] stops watching a connection's deadlines.
enum Watch {
    Expired(Deadline),
    /// Idle long enough to be parked.
    Park,
}

/// Serves `connection` until it ends, times out (idle, request, a client not reading), or
/// the listener stops. `http1`: bytes arriving on an idle connection start a request (see
/// [`Activity::deadline`]). With `park_after`, an idle connection is let go of after that long
/// and returned, ended, for its stream to be taken back.
async fn drive<C: ServerConnection + Unpin>(
    mut connection: C,
    conn: &ConnInfo,
    activity: &Activity,
    timeouts: Timeouts,
    http1: bool,
    park_after: Option<Duration>,
    ctx: &Arc<ListenerContext>,
) -> Option<C> {
    let peer = conn.peer;
    let ended = |e: &hyper::Error| {
        if http1 {
            malformed::record(e, conn, ctx);
        }
        debug!(client = %peer, error = %e, "connection ended with an error");
    };
    let mut watch = std::pin::pin!(watch_deadlines(activity, timeouts, http1, park_after));
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    ended(&e);
                }
                return None;
            }
            why = &mut watch => {
                let why = match why {
                    Watch::Park => {
                        // hyper closes an idle connection at once when asked to shut down
                        // (its stream's closing ignored, see `park`): parked. One that is
                        // not idle (a request's head half read, a response still being
                        // written) has only had keep-alive turned off, and may already have
                        // told the client so: it ends as any other, not parked.
                        activity.set_parking(true);
                        Pin::new(&mut connection).graceful_shutdown();
                        let first = std::future::poll_fn(|cx| {
                            Poll::Ready(Pin::new(&mut connection).poll(cx))
                        })
                        .await;
                        activity.set_parking(false);
                        match first {
                            Poll::Ready(Ok(())) => return Some(connection),
                            Poll::Ready(Err(e)) => {
                                ended(&e);
                                return None;
                            }
                            Poll::Pending => {
                                watch.set(watch_deadlines(activity, timeouts, http1, None));
                                continue;
                            }
                        }
                    }
                    Watch::Expired(why) => why,
                };
                match why {
                    Deadline::Request(_) => debug!(client = %peer, timeout = ?timeouts.request, "request not received in time: closing"),
                    Deadline::Sending(_) => debug!(client = %peer, timeout = ?timeouts.request, "client not reading its response: closing"),
                    _ => debug!(client = %peer, timeout = ?timeouts.idle, "idle: closing"),
                }
                Pin::new(&mut connection).graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
                return None;
            }
            _ = stop.changed() => {
                // Stopping: idle connections close now, busy ones after their responses (the
                // worker bounds the wait with the drain timeout). The deadlines still hold: a
                // client sitting on half a request head, or not reading its response, is not
                // waited for past them (a listener a reload removed has no drain timeout).
                Pin::new(&mut connection).graceful_shutdown();
                // In place of the parking watcher: left beside it, that one's registration would
                // take the wakes of finished requests (the oldest waiter gets each).
                watch.set(watch_deadlines(activity, timeouts, http1, None));
                tokio::select! {
                    _ = until_done_or_silent(&mut connection, activity, http1) => {}
                    _ = &mut watch => {
                        debug!(client = %peer, "stopping: past its deadline, closed");
                    }
                }
                return None;
            }
        }
    }
}

/// Drives a connection told to shut down until it ends. HTTP/2's shutdown waits for the
/// client to answer the GOAWAY's PING; a client that never will (gone without closing, its
/// NAT entry expired) would hold the stop for the whole drain timeout. So an HTTP/2
/// connection is dropped once, for [`CLOSE_GRACE`] since the stop began, nothing has been
/// in flight or waiting for the client ([`Activity::is_quiet`]) and nothing has come from it
/// ([`Activity::reads`]), checked every quarter of the grace. A live client answers
/// the PING, or sends window updates while it takes a response, and is waited for.
/// HTTP/1.1: hyper ends an idle connection itself, a busy one after its response.
async fn until_done_or_silent<C: ServerConnection + Unpin>(
    connection: &mut C,
    activity: &Activity,
    http1: bool,
) -> Option<Result<(), hyper::Error>> {
    if http1 {
        return Some(connection.await);
    }
    let mut quiet_since = tokio::time::Instant::now();
    let mut reads = activity.reads();
    let mut tick = tokio::time::interval(CLOSE_GRACE / 4);
    loop {
        tokio::select! {
            done = &mut *connection => return Some(done),
            _ = tick.tick() => {
                let now = activity.reads();
                if now != reads || !activity.is_quiet() {
                    (reads, quiet_since) = (now, tokio::time::Instant::now());
                } else if quiet_since.elapsed() >= CLOSE_GRACE {
                    return None;
                }
            }
        }
    }
}

/// Resolves when the connection's deadline has passed, or (with `park_after`) when it has
/// been idle long enough to be parked.
async fn watch_deadlines(
    activity: &Activity,
    timeouts: Timeouts,
    http1: bool,
    park_after: Option<Duration>,
) -> Watch {
    let (idle, request) = (timeouts.idle, timeouts.request);
    // The deadline is looked at again when it is due, when a request finishes early enough
    // to bring it forward (the idle timeout can be shorter than the request timeout that
    // applies before the first request), and every so often while requests are in flight.
    // A request that ends at `t` makes a deadline no earlier than `t + soonest`; while
    // requests keep coming, the timer is at most `recheck <= soonest` ahead, so their ends
    // wake nothing and the timer does the looking, once a `recheck`.
    let soonest = park_after.map_or(idle, |after| idle.min(after));
    let recheck = soonest.min(request).max(Duration::from_millis(250));
    // One timer for the connection, moved only when the deadline comes earlier than it is
    // set for: a later deadline (every finished request makes one) is found when the timer
    // fires, rather than paid for with a timer update per request.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let now = tokio::time::Instant::now();
        let deadline = activity.deadline(idle, request, http1);
        let mut wake = match deadline {
            Deadline::Idle(at) | Deadline::Request(at) | Deadline::Sending(at) if at <= now => {
                return Watch::Expired(deadline);
            }
            Deadline::Busy => now + recheck,
            Deadline::Idle(at) => at.min(now + request),
            // A parked response may move on at any time: look again as for a busy one.
            Deadline::Sending(at) => at.min(now + recheck),
            Deadline::Request(at) => at,
        };
        if let Some(park_at) = park_after.and_then(|after| activity.parkable_at(after)) {
            if park_at <= now {
                return Watch::Park;
            }
            wake = wake.min(park_at);
        }
        if timer.is_elapsed() || wake < timer.deadline() {
            timer.as_mut().reset(wake);
        }
        activity.wake_if_finished_before(
            timer
                .deadline()
                .checked_sub(soonest)
                .unwrap_or_else(|| timer.deadline()),
        );
        tokio::select! {
            () = &mut timer => {}
            () = activity.finished() => {}
        }
    }
}
