//! HTTP/3 on an https listener (`--http3 on`): QUIC on the listener's port over UDP, one
//! endpoint per worker (SO_REUSEPORT sockets, as the TCP side), each request through the same
//! routes, balancing and headers as HTTP/1.1 and HTTP/2. Backends still get HTTP/1.1.
mod body;
mod bounded;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ::h3::error::Code;
use ::h3::server::{RequestResolver, RequestStream};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use socket2::{Protocol, Type};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{CLOSE_GRACE, ListenerContext, Open, Slot, answered_by};
use crate::access_log::Counted;
use crate::config::Timeouts;
use crate::proxy::headers::ConnInfo;
use crate::refusals::{self, Refused};
use crate::tls::ClientIdentity;
use body::RequestBody;

/// Limits, as HTTP/2's (see [`super::h2`]) where the protocols share them.
pub mod limits {
    use std::time::Duration;

    /// Requests one connection may have in flight (QUIC's bidirectional stream limit); the
    /// client cannot open more until one ends.
    pub const MAX_CONCURRENT_STREAMS: u32 = super::super::h2::MAX_CONCURRENT_STREAMS;
    /// Unidirectional streams a client may open: HTTP/3 needs three (control, QPACK encoder
    /// and decoder); a few more for the reserved (GREASE) kinds clients send.
    pub const MAX_UNI_STREAMS: u32 = 8;
    /// SETTINGS_MAX_FIELD_SECTION_SIZE: one request's decoded header block (as HTTP/2's
    /// header list limit). QPACK's dynamic table is not offered (h3 encodes statically).
    pub const MAX_FIELD_SECTION_SIZE: u64 = super::super::h2::MAX_HEADER_LIST_SIZE as u64;
    /// Flow-control windows for request bodies, per stream and per connection.
    pub const STREAM_WINDOW: u32 = super::super::h2::STREAM_WINDOW;
    pub const CONNECTION_WINDOW: u32 = super::super::h2::CONNECTION_WINDOW;
    /// Response bytes in flight per connection, not yet acknowledged by the client.
    pub const SEND_WINDOW: u64 = 4 * 1024 * 1024;
    /// A peer silent this long (not even acknowledging) is gone: QUIC's idle timeout. The
    /// listener's own idle timeout (no requests) is enforced above it.
    pub const TRANSPORT_IDLE: Duration = Duration::from_secs(30);
    /// PINGs while a connection is open, so that a request waiting on a slow backend is not
    /// mistaken for a dead peer by either side.
    pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
}

/// A listener's QUIC configuration, as [`super::Live`] holds it.
pub type QuicConfig = quinn::ServerConfig;

/// H3_NO_ERROR (RFC 9114 8.1), closing a connection that is done.
const H3_NO_ERROR: u32 = 0x100;

/// `count` UDP sockets on `addr`, one per worker, all bound before any is used.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    (0..count.max(1))
        .map(|_| crate::reuseport::worker_socket(addr, Type::DGRAM, Protocol::UDP).map(Into::into))
        .collect()
}

/// The QUIC server configuration of a listener: its TLS (see
/// [`crate::tls::quic_server_config`]) and the limits above.
pub fn server_config(tls: rustls::ServerConfig) -> Result<Arc<quinn::ServerConfig>, rustls::Error> {
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(format!("QUIC: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits::MAX_CONCURRENT_STREAMS.into())
        .max_concurrent_uni_streams(limits::MAX_UNI_STREAMS.into())
        .stream_receive_window(limits::STREAM_WINDOW.into())
        .receive_window(limits::CONNECTION_WINDOW.into())
        .send_window(limits::SEND_WINDOW)
        .keep_alive_interval(Some(limits::KEEP_ALIVE))
        .max_idle_timeout(limits::TRANSPORT_IDLE.try_into().ok());
    config.transport_config(Arc::new(transport));
    // Each worker's endpoint knows only its own connections, and the kernel picks the worker
    // by the client's address and port: a client that moved would reach one that does not
    // know it. Telling clients not to migrate keeps them where they are.
    config.migration(false);
    Ok(Arc::new(config))
}

/// The `Alt-Svc` value that advertises HTTP/3 on `port` for a day (as nginx's examples).
pub fn alt_svc(port: u16) -> HeaderValue {
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
        .unwrap_or_else(|_| HeaderValue::from_static("clear"))
}

/// Serves QUIC on `socket` (one worker's) until `stop` turns true: new connections are then
/// refused, and open ones get GOAWAY and finish the requests they have in flight.
pub async fn serve_endpoint(
    socket: std::net::UdpSocket,
    ctx: Arc<ListenerContext>,
    mut stop: watch::Receiver<bool>,
) {
    let port = socket.local_addr().map_or(0, |a| a.port());
    let Some(initial) = ctx.live.load().quic.clone() else {
        return;
    };
    let endpoint = match quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some((*initial).clone()),
        socket,
        Arc::new(quinn::TokioRuntime),
    ) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot start the QUIC endpoint");
            return;
        }
    };
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                accept(incoming, &ctx, &stop, port);
            }
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
    // Packets of new connections are answered with a refusal from now on; open connections
    // keep the endpoint running until they end.
    endpoint.set_server_config(None);
    endpoint.wait_idle().await;
}

/// One connection attempt: dropped unanswered when access control refuses the client (as the
/// XDP program does), refused at `--max-connections`, else served.
fn accept(
    incoming: quinn::Incoming,
    ctx: &Arc<ListenerContext>,
    stop: &watch::Receiver<bool>,
    port: u16,
) {
    let peer = incoming.remote_address();
    let live = ctx.live.load();
    if !live.access.admits(peer.ip()) {
        refusals::log(
            Refused::Connection,
            ctx.metrics.name(),
            peer,
            &"access control (the listener's whitelist or blacklist), over QUIC",
        );
        ctx.metrics.refused("access_control");
        incoming.ignore();
        return;
    }
    let Some(config) = live.quic.clone() else {
        incoming.refuse();
        return;
    };
    // Past half the listener's connections, a client must first prove its address (a Retry
    // round trip) before it takes a slot: Initial packets from spoofed sources then cost no
    // slot for the handshake timeout, and TCP clients, who share the limit, keep theirs.
    if ctx.limit.past_half() && !incoming.remote_address_validated() && incoming.may_retry() {
        ctx.metrics.refused("quic_retry");
        let _ = incoming.retry();
        return;
    }
    let Some(slot) = ctx.limit.try_acquire() else {
        refusals::log(
            Refused::Connection,
            ctx.metrics.name(),
            peer,
            &"--max-connections reached, over QUIC",
        );
        ctx.metrics.refused("max_connections");
        incoming.refuse();
        return;
    };
    let local = SocketAddr::new(
        incoming
            .local_ip()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        port,
    );
    tokio::spawn(serve_connection(
        incoming,
        config,
        ctx.clone(),
        slot,
        stop.clone(),
        local,
    ));
}

async fn serve_connection(
    incoming: quinn::Incoming,
    config: Arc<quinn::ServerConfig>,
    ctx: Arc<ListenerContext>,
    _slot: Slot,
    mut stop: watch::Receiver<bool>,
    local: SocketAddr,
) {
    let peer = incoming.remote_address();
    let _open = (ctx.metrics.connection_opened(), Open::new(&ctx.open));
    let timeouts = ctx.live.load().routes.settings.timeouts;
    let handshake = async {
        let connecting = incoming.accept_with(config)?;
        connecting.await
    };
    let conn = match tokio::time::timeout(timeouts.handshake, handshake).await {
        Ok(Ok(conn)) => {
            ctx.metrics.handshake("ok");
            conn
        }
        Ok(Err(e)) => {
            ctx.metrics.handshake(handshake_failure(&e));
            debug!(client = %peer, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.handshake("timeout");
            debug!(client = %peer, "QUIC handshake timed out");
            return;
        }
    };
    let sni = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.server_name);
    let chain = conn
        .peer_identity()
        .and_then(|c| c.downcast::<Vec<CertificateDer<'static>>>().ok());
    let identity = ClientIdentity::from_chain(chain.as_deref().map(Vec::as_slice));
    let info = Arc::new(ConnInfo::new(peer, local, "https", identity, sni));
    let quic = conn.clone();
    // Setting up opens streams to the client and writes SETTINGS: a client that grants no
    // stream or no credit would hold it, so it is bounded as the handshake is.
    let mut builder = ::h3::server::builder();
    builder.max_field_section_size(limits::MAX_FIELD_SECTION_SIZE);
    let accepted = Arc::new(AtomicU64::new(bounded::NO_STREAM));
    // The first request stream id that GOAWAY says was not processed: refused if h3 takes it.
    let refused_from = Arc::new(AtomicU64::new(u64::MAX));
    let setup = builder.build::<_, Bytes>(bounded::Streams::new(
        h3_quinn::Connection::new(conn),
        accepted.clone(),
    ));
    let mut h3 = match tokio::time::timeout(timeouts.handshake, setup).await {
        Ok(Ok(h3)) => h3,
        Ok(Err(e)) => {
            debug!(client = %peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
        Err(_) => {
            debug!(client = %peer, "HTTP/3 connection setup timed out");
            quic.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
            return;
        }
    };
    let mut requests = JoinSet::new();
    let mut stopping = false;
    // The listener's idle timeout: no request in flight for this long closes the connection
    // (0: after the first response, which the request timeout waits for). QUIC's own idle
    // timeout only finds dead peers.
    let first_wait = if timeouts.idle.is_zero() {
        timeouts.request
    } else {
        timeouts.idle
    };
    let idle = tokio::time::sleep(first_wait);
    tokio::pin!(idle);
    let mut served = false;
    // Requests whose head has arrived and that have not ended: streams still without one
    // (which a client may open one after another at no cost) do not keep the connection
    // from its idle timeout, as a missing head does not on TCP.
    let heads = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            // In this order: a request that just ended is reaped (and restarts the idle time)
            // before the timer, which may have run out while it was in flight, is looked at.
            biased;
            Some(done) = requests.join_next(), if !requests.is_empty() => {
                if requests.is_empty() && (stopping || (timeouts.idle.is_zero() && served)) {
                    break;
                }
                // Only a request that had a head starts the idle time afresh.
                if done.unwrap_or(false) && heads.load(Ordering::Relaxed) == 0 {
                    idle.as_mut().reset(tokio::time::Instant::now() + timeouts.idle);
                }
            }
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    served = true;
                    requests.spawn(serve_request(
                        resolver,
                        info.clone(),
                        ctx.clone(),
                        timeouts,
                        refused_from.clone(),
                        heads.clone(),
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(client = %peer, error = %e, "HTTP/3 connection ended");
                    return;
                }
            },
            () = &mut idle, if heads.load(Ordering::Relaxed) == 0 && !stopping => {
                if heads.load(Ordering::Relaxed) != 0 {
                    // A head arrived while the timer ran out: its end restarts the timer.
                    idle.as_mut().reset(tokio::time::Instant::now() + timeouts.idle);
                    continue;
                }
                debug!(client = %peer, timeout = ?timeouts.idle, "idle: closing");
                break;
            }
            _ = stop.changed(), if !stopping => {
                // GOAWAY: the client opens no more requests here; those in flight finish.
                stopping = true;
                goaway(&mut h3, &accepted, &refused_from).await;
                if requests.is_empty() {
                    break;
                }
            }
        }
    }
    if !stopping {
        goaway(&mut h3, &accepted, &refused_from).await;
    }
    // Each request ends by itself: its writes are bounded by the request timeout, the
    // backend's answer by the response timeout.
    while requests.join_next().await.is_some() {}
    // Closing drops whatever has not been sent yet: the client, told by GOAWAY, closes once
    // it has read its responses; it gets a moment for that.
    let _ = tokio::time::timeout(CLOSE_GRACE, quic.closed()).await;
    quic.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
}

/// Sends GOAWAY (bounded: a client that grants no credit cannot hold it up). It names the
/// first request not accepted, so that the client retries only those (RFC 9114 5.2); h3 would
/// still take a request on that very stream, which `serve_request` refuses (`refused_from`).
async fn goaway(
    h3: &mut ::h3::server::Connection<bounded::Connection, Bytes>,
    accepted: &AtomicU64,
    refused_from: &AtomicU64,
) {
    // What h3's shutdown(1) announces: the stream after the last accepted, or the first.
    let first = match accepted.load(Ordering::Relaxed) {
        bounded::NO_STREAM => 0,
        last => last + 4,
    };
    refused_from.store(first, Ordering::Relaxed);
    let _ = tokio::time::timeout(CLOSE_GRACE, h3.shutdown(1)).await;
}

/// Why a QUIC handshake failed, in the words of the TCP side's `handshake` metric.
fn handshake_failure(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => "timeout",
        E::TransportError(t) => match u64::from(t.code) {
            // TLS alerts travel as 0x100 + alert (RFC 9001 4.8).
            0x174 => "no_client_certificate",
            0x12a | 0x12b | 0x12c | 0x12d | 0x12e | 0x130 => "bad_certificate",
            0x178 => "no_application_protocol",
            0x128 | 0x146 => "incompatible",
            0x100..=0x1ff => "protocol_error",
            _ => "other",
        },
        E::ConnectionClosed(_) | E::ApplicationClosed(_) => "alert_received",
        E::Reset => "reset",
        _ => "other",
    }
}

type SendStream = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// A request stream before it is split, as `resolve_request` gives it.
type RecvBidi = bounded::Bounded<h3_quinn::BidiStream<Bytes>>;

/// One request: its head (within the request timeout), then [`answer`]. False when no head
/// came.
async fn serve_request(
    resolver: RequestResolver<bounded::Connection, Bytes>,
    conn: Arc<ConnInfo>,
    ctx: Arc<ListenerContext>,
    timeouts: Timeouts,
    refused_from: Arc<AtomicU64>,
    heads: Arc<AtomicUsize>,
) -> bool {
    let resolved = match tokio::time::timeout(timeouts.request, resolver.resolve_request()).await {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(e)) => {
            debug!(client = %conn.peer, error = %e, "HTTP/3 request refused");
            return false;
        }
        Err(_) => {
            debug!(client = %conn.peer, timeout = ?timeouts.request, "HTTP/3 request head not received in time");
            return false;
        }
    };
    let _head = Head::new(heads);
    answer(resolved, &conn, &ctx, timeouts, &refused_from).await;
    true
}

/// Counts a request whose head has arrived, until it ends.
struct Head(Arc<AtomicUsize>);

impl Head {
    fn new(heads: Arc<AtomicUsize>) -> Self {
        heads.fetch_add(1, Ordering::Relaxed);
        Head(heads)
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request whose head has arrived: the routes' answer, and the response sent back on the
/// stream.
async fn answer(
    resolved: (Request<()>, RequestStream<RecvBidi, Bytes>),
    conn: &Arc<ConnInfo>,
    ctx: &ListenerContext,
    timeouts: Timeouts,
    refused_from: &AtomicU64,
) {
    let (req, mut stream) = resolved;
    if stream.id().into_inner() >= refused_from.load(Ordering::Relaxed) {
        // Past GOAWAY's id: the client was told it was not processed and may send it again.
        stream.stop_sending(Code::H3_REQUEST_REJECTED);
        stream.stop_stream(Code::H3_REQUEST_REJECTED);
        return;
    }
    let (mut send, recv) = stream.split();
    let started = std::time::Instant::now();
    // Routes are read per request: a reload reaches open connections too.
    let live = ctx.live.load_full();
    let (mut entry, counters) = match &live.access_log {
        Some(log) => {
            let (entry, counters) = log.start(started, conn.peer, conn.sni.as_deref(), &req);
            (Some(entry), Some(counters))
        }
        None => (None, None),
    };
    let declared = match declared_length(req.headers()) {
        Ok(declared) => declared,
        Err(why) => {
            let reason = format!("{why}, which HTTP/3 forbids (answered 400)");
            refusals::log(Refused::Request, ctx.metrics.name(), conn.peer, &reason);
            live.routes.count_refused(400);
            let resp = crate::proxy::refusal(hyper::StatusCode::BAD_REQUEST, req.version());
            if let Some(e) = entry.as_mut() {
                e.answered(answered_by(
                    &live.routes,
                    Default::default(),
                    resp.status(),
                    None,
                ));
            }
            let resp = resp.map(|b| Counted::sent(b, counters));
            let _ = send_response(&mut send, resp, timeouts.request).await;
            return;
        }
    };
    let req = req.map(|()| Counted::received(RequestBody::new(recv, declared), counters.clone()));
    let (mut resp, served) = Box::pin(live.routes.handle(req, conn)).await;
    live.advertise_http3(resp.headers_mut());
    let took = started.elapsed();
    ctx.metrics.observe(took);
    if let Some(e) = entry.as_mut() {
        e.answered(answered_by(&live.routes, served, resp.status(), Some(took)));
    }
    let resp = resp.map(|b| Counted::sent(b, counters));
    // The entry's line is written when it drops, after the response has been sent.
    if let Err(e) = send_response(&mut send, resp, timeouts.request).await {
        debug!(client = %conn.peer, error = %e, "HTTP/3 response not sent");
        send.stop_stream(Code::H3_REQUEST_CANCELLED);
    }
}

/// The request's `content-length`, if any; an error for what HTTP/3 forbids and hyper's
/// HTTP/2 refuses: connection-specific fields (RFC 9114 4.2) and a length that is not one
/// number.
fn declared_length(headers: &hyper::HeaderMap) -> Result<Option<u64>, &'static str> {
    use hyper::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        if headers.contains_key(&name) {
            return Err("connection-specific field");
        }
    }
    if headers.contains_key("keep-alive") || headers.contains_key("proxy-connection") {
        return Err("connection-specific field");
    }
    if headers
        .get_all(TE)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        return Err("te other than trailers");
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(None);
    };
    if lengths.next().is_some() {
        return Err("content-length twice");
    }
    first
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or("content-length is not a number")
}

/// Why a response could not be sent whole.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Stream(#[from] ::h3::error::StreamError),
    #[error("response body: {0}")]
    Body(crate::proxy::body::BoxError),
    #[error("client not reading its response for {0:?}")]
    NotReading(Duration),
}

/// One write to the client, within `limit`.
async fn within<T>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<T, ::h3::error::StreamError>>,
) -> Result<T, SendError> {
    tokio::time::timeout(limit, write)
        .await
        .map_err(|_| SendError::NotReading(limit))?
        .map_err(SendError::Stream)
}

/// Sends `resp`, each write within `limit` (a client that stops reading is let go of).
async fn send_response(
    send: &mut SendStream,
    resp: Response<Counted<crate::proxy::ProxyBody>>,
    limit: Duration,
) -> Result<(), SendError> {
    let (parts, mut body) = resp.into_parts();
    within(limit, send.send_response(Response::from_parts(parts, ()))).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(SendError::Body)?;
        match frame.into_data() {
            Ok(data) => within(limit, send.send_data(data)).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    within(limit, send.send_trailers(trailers)).await?;
                }
            }
        }
    }
    within(limit, send.finish()).await
}
