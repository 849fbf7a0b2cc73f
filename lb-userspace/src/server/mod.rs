//! One client connection: TLS handshake (for https), HTTP/1.1 or HTTP/2 by ALPN, each request
//! to the upstream, and the idle and request timeouts.
pub mod activity;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::acl::AccessControl;
use crate::config::Timeouts;
use crate::metrics::{ListenerMetrics, handshake_failure};
use crate::proxy::Routes;
use crate::proxy::body::WithGuard;
use crate::proxy::headers::ConnInfo;
use crate::tls::ClientIdentity;
use activity::{Activity, Deadline, Tracked};
use arc_swap::ArcSwap;

/// Largest HTTP/1 request head (request line and headers): larger ones get 431. As
/// HAProxy's default (16 KiB buffers); HTTP/2's header list limit is hyper's, also 16 KiB.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a connection being closed for a timeout may take to finish what it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a reload may replace: read once per connection (TLS, timeouts) or request (routes),
/// swapped whole.
pub struct Live {
    pub tls: Option<TlsAcceptor>,
    pub access: AccessControl,
    pub http2: bool,
    pub routes: Routes,
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
    /// Log one line per request (`--access-log`), under the listener's name.
    pub access_log: Option<Arc<str>>,
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

pub async fn serve_connection(stream: TcpStream, ctx: Arc<ListenerContext>) {
    let _ = stream.set_nodelay(true);
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let activity = Activity::new();
    let _open = (ctx.metrics.connection_opened(), Open::new(&ctx.open));
    let live = ctx.live.load_full();
    let timeouts = live.routes.settings.timeouts;
    let Some(tls) = &live.tls else {
        let conn = ConnInfo {
            peer,
            local,
            scheme: "http",
            identity: ClientIdentity::default(),
            sni: None,
        };
        serve_http(
            Tracked::new(stream, activity.clone()),
            conn,
            false,
            activity,
            timeouts,
            &ctx,
        )
        .await;
        return;
    };
    // The handshake is part of the request: it must finish within the request timeout.
    let tls_stream = match tokio::time::timeout(timeouts.request, tls.accept(stream)).await {
        Ok(Ok(s)) => {
            ctx.metrics.handshake("ok");
            s
        }
        Ok(Err(e)) => {
            ctx.metrics.handshake(handshake_failure(&e));
            debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.handshake("timeout");
            debug!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    let session = tls_stream.get_ref().1;
    let h2 = live.http2 && session.alpn_protocol() == Some(b"h2");
    let conn = ConnInfo {
        peer,
        local,
        scheme: "https",
        identity: ClientIdentity::from_connection(session),
        sni: session.server_name().map(str::to_string),
    };
    serve_http(
        Tracked::new(tls_stream, activity.clone()),
        conn,
        h2,
        activity,
        timeouts,
        &ctx,
    )
    .await;
}

async fn serve_http<S>(
    io: S,
    conn: ConnInfo,
    h2: bool,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    ctx: &Arc<ListenerContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let conn = Arc::new(conn);
    let metrics = ctx.metrics.clone();
    let access_log = ctx.access_log.clone();
    let ctx_for_requests = ctx.clone();
    let service_activity = activity.clone();
    let service = service_fn(move |req| {
        let guard = service_activity.request_started();
        let (conn, metrics, access_log) = (conn.clone(), metrics.clone(), access_log.clone());
        // Routes are read per request: a reload reaches open keep-alive connections too.
        let live = ctx_for_requests.live.load_full();
        async move {
            let started = std::time::Instant::now();
            // Only kept when the access log wants them: no copies per request otherwise.
            let request_line = access_log
                .is_some()
                .then(|| (req.method().clone(), req.uri().path().to_string()));
            let routes = &live.routes;
            let (resp, served) = routes.handle(req, &conn).await;
            let took = started.elapsed();
            metrics.observe(took);
            if let (Some(listener), Some((method, path))) = (access_log, request_line) {
                let backend = served
                    .group
                    .and_then(|g| routes.target(g))
                    .zip(served.backend)
                    .and_then(|(t, b)| t.upstream.balancer().key(b));
                tracing::info!(
                    target: "edgelb::access",
                    client = %conn.peer,
                    sni = conn.sni.as_deref().unwrap_or("-"),
                    listener = &*listener,
                    method = %method,
                    path,
                    rule = served.rule.and_then(|r| routes.rules.name(r)).unwrap_or("-"),
                    backend = backend.unwrap_or("-"),
                    status = resp.status().as_u16(),
                    ms = took.as_secs_f64() * 1000.0,
                    "request"
                );
            }
            Ok::<_, Infallible>(resp.map(|b| WithGuard::new(b, guard).boxed()))
        }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    let idle = timeouts.idle;
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(!idle.is_zero());
    builder.http2().timer(TokioTimer::new());
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);

    let (request, http1) = (timeouts.request, !h2);
    // Timers are only re-armed when a deadline may have moved: a request arriving can bring
    // it forward by at most the request timeout, and a busy connection is looked at again
    // after the shorter of the two timeouts.
    let recheck = idle.min(request).max(Duration::from_millis(250));
    let expired = async {
        loop {
            let now = tokio::time::Instant::now();
            match activity.deadline(idle, request, http1) {
                Deadline::Busy => tokio::time::sleep(recheck).await,
                Deadline::Idle(at) | Deadline::Request(at) if at <= now => {
                    return activity.deadline(idle, request, http1);
                }
                Deadline::Idle(at) => tokio::time::sleep_until(at.min(now + request)).await,
                Deadline::Request(at) => tokio::time::sleep_until(at).await,
            }
        }
    };
    let mut stop = ctx.stop.clone();
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(client = %peer, error = %e, "connection ended with an error");
            }
        }
        why = expired => {
            match why {
                Deadline::Request(_) => debug!(client = %peer, timeout = ?request, "request not received in time: closing"),
                _ => debug!(client = %peer, timeout = ?idle, "idle: closing"),
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
        _ = stop.changed() => {
            // Stopping: idle connections close now, busy ones after their responses (the
            // worker bounds the wait with the drain timeout).
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
