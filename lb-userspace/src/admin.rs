//! The admin endpoint: `/` (the status page), `/healthz`, `/metrics` (Prometheus text),
//! `/status` (JSON). Loopback only unless the operator allows otherwise: it tells anyone who
//! can reach it how the node is built and how it is doing.
mod reload_log;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::balance::Balancer;
use crate::metrics::Metrics;
pub use reload_log::{LastReload, ReloadLog};

/// The status page: one file, no external resource, polling `/status`.
const STATUS_PAGE: &str = include_str!("admin/status_page.html");

/// Only this page's own inline code and the admin endpoint itself: nothing the page shows
/// (names, errors from /status) can load or run anything.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Why a reload was refused, as `POST /reload` answers it. Shared: one reload may answer
/// several requests.
pub type Refusal = Arc<dyn std::error::Error + Send + Sync>;

/// Where the main thread answers one `POST /reload`.
pub type ReloadReply = oneshot::Sender<Result<(), Refusal>>;

/// What `/status` reports. The main thread writes the view at start, after every reload and
/// once a second (XDP counters); balancers are read live.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub view: Mutex<NodeView>,
    /// Asks the main thread (the owner of the data plane) to reload; it answers on the oneshot.
    pub reload: mpsc::Sender<ReloadReply>,
    /// Asks the main thread to lift the XDP blocks of an address; it answers how many.
    pub unblock: mpsc::Sender<UnblockRequest>,
    pub about: About,
    /// Written by the main thread after each reload ([`AdminState::record_reload`]).
    pub reload_log: Mutex<ReloadLog>,
    /// What `/healthz` answers from: it is served on the control thread, and must not say
    /// `ok` for a node whose main loop (maps, reloads, next hops) has stopped turning, or
    /// that is stopping.
    pub main_loop: MainLoop,
}

/// The main loop's signs of life, for `/healthz`.
#[derive(Default)]
pub struct MainLoop {
    /// Milliseconds since [`About::started`] of its last turn; 0 before the first.
    beat: AtomicU64,
    stopping: AtomicBool,
}

/// `/healthz` fails once the main loop has not turned for this long. It turns at least once
/// a second; a reload's apply or a map rewrite may hold it a little longer, and restarting a
/// BGP speaker that died waits up to 10 s for its control socket: that is a hiccup, not a
/// node to take out.
pub const MAIN_LOOP_STALL: std::time::Duration = std::time::Duration::from_secs(15);

impl MainLoop {
    /// The main loop turned (it does at least once a second).
    pub fn beat(&self, about: &About) {
        let ms = u64::try_from(about.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.beat.store(ms.max(1), Ordering::Relaxed);
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `/healthz`'s answer: None while healthy, else why not.
    pub fn trouble(&self, about: &About) -> Option<String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Some("stopping".into());
        }
        let beat = self.beat.load(Ordering::Relaxed);
        let now = u64::try_from(about.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let since = std::time::Duration::from_millis(now.saturating_sub(beat));
        (beat != 0 && since > MAIN_LOOP_STALL)
            .then(|| format!("main loop stalled for {} s", since.as_secs()))
    }
}

/// What does not change while the daemon runs: when it started, where its configuration is.
pub struct About {
    pub started: Instant,
    /// `--config`; None for flags only and for etcd.
    pub config_path: Option<String>,
}

impl About {
    pub fn new(config: Option<&Path>) -> Self {
        About {
            started: Instant::now(),
            config_path: config.map(|p| p.display().to_string()),
        }
    }
}

/// `POST /unblock?ip=ADDR`: the address, and where the main thread answers how many blocks it
/// lifted (or why it could not).
pub type UnblockRequest = (IpAddr, oneshot::Sender<Result<usize, String>>);

#[derive(Default)]
pub struct NodeView {
    pub listeners: Vec<ListenerStatus>,
    pub groups: Vec<GroupView>,
    /// `iface:mode` for each XDP attachment; empty when XDP is off.
    pub xdp_attached: Vec<String>,
    /// The BGP sessions and announced routes; None without BGP.
    pub bgp: Option<crate::bgp::BgpView>,
    /// Where the configuration comes from when it is etcd; None for flags and files.
    pub etcd: Option<EtcdView>,
    /// Every certificate the https listeners serve: from files, and from ACME.
    pub certificates: Vec<CertificateView>,
    /// The L4 backends' next hops.
    pub next_hops: Vec<crate::nexthop::NextHopView>,
}

/// One certificate as `/status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CertificateView {
    pub listener: String,
    /// `file` (`--cert`, `--sni-cert`) or `acme`.
    pub source: &'static str,
    /// The names it serves (for a file certificate, the SNI entry or the certificate's own).
    pub names: Vec<String>,
    /// The file, for a file certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Unix seconds; None for an ACME certificate not issued yet.
    pub not_after: Option<i64>,
    /// Seconds left until `not_after` (negative once expired).
    pub expires_in_seconds: Option<i64>,
    /// ACME: when it is renewed, why the last order failed, failures since the last success,
    /// and when the next attempt is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
}

/// The configuration's source in etcd, as `/status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EtcdView {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The revision of the configuration in use.
    pub revision: i64,
    /// Whether etcd answers now; while it does not, the configuration in use stays.
    pub connected: bool,
    /// Why etcd cannot be read, while it cannot.
    pub error: Option<String>,
    /// A newer revision that was refused, and why; None once one is applied.
    pub refused: Option<(i64, String)>,
}

pub struct GroupView {
    pub name: String,
    pub algorithm: &'static str,
    pub balancer: Arc<Balancer>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub protocol: &'static str,
    pub listen: String,
    pub access_control: &'static str,
    /// The default group.
    pub group: String,
    /// Packets by XDP outcome for this listener (empty when XDP is off).
    pub xdp_counters: Vec<(String, u64)>,
    /// Sources the XDP program has blocked at this listener (`--auto-block`).
    pub blocked: Vec<BlockedStatus>,
    /// `--syn-protect`: off, auto or on.
    pub syn_protect: &'static str,
    /// Whether the XDP program answers this listener's SYNs with cookies now.
    pub syn_cookies_answering: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockedStatus {
    /// `10.0.0.7/32`, `fd00:1::/64`.
    pub source: String,
    pub secs_left: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
struct XdpStatus {
    attached: Vec<String>,
    /// Packets by outcome, all listeners together.
    counters: Vec<(String, u64)>,
    /// Where frames for each L4 backend go.
    next_hops: Vec<crate::nexthop::NextHopView>,
}

#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    /// The commit built, `unknown` when built outside git.
    commit: &'static str,
    uptime_seconds: u64,
    config_path: Option<&'a str>,
    reloads: ReloadLog,
    listeners: Vec<ListenerDoc<'a>>,
    groups: Vec<GroupStatus>,
    xdp: XdpStatus,
    bgp: Option<&'a crate::bgp::BgpView>,
    etcd: Option<&'a EtcdView>,
    certificates: &'a [CertificateView],
}

/// A listener as the main thread last saw it, with the live figures of the metrics.
#[derive(Serialize)]
struct ListenerDoc<'a> {
    #[serde(flatten)]
    seen: &'a ListenerStatus,
    active_connections: i64,
    /// Requests answered since start by status class, `1xx` to `5xx`.
    requests: BTreeMap<&'static str, u64>,
    /// Packets XDP dropped, every reason together (`xdp_counters` has them one by one).
    xdp_dropped: u64,
}

#[derive(Serialize)]
struct GroupStatus {
    name: String,
    algorithm: &'static str,
    backends: Vec<BackendStatus>,
}

#[derive(Serialize)]
struct BackendStatus {
    address: String,
    healthy: bool,
    /// The configured weight, 0-100.
    weight: u8,
    /// Share of the configured weight in effect now (0 when unhealthy, ramping in slow start), 0-1.
    weight_share: f64,
    active_requests: u32,
    /// Share of the group's new requests it receives now, 0-1 (its weight in effect over the
    /// group's; 0 when unhealthy).
    traffic_share: f64,
    /// Requests it answered since start, over every listener.
    requests: u64,
    /// Its last health transition; null while the starting presumption (healthy) holds.
    last_transition: Option<TransitionStatus>,
}

#[derive(Serialize)]
struct TransitionStatus {
    healthy: bool,
    /// Unix seconds.
    at: u64,
    reason: String,
}

impl AdminState {
    /// One reload's outcome: counted in the metrics and kept as the last one.
    pub fn record_reload(&self, trigger: &str, result: &Result<(), Refusal>) {
        match result {
            Ok(()) => self.metrics.reloaded(),
            Err(_) => self.metrics.reload_failed(),
        }
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        self.reload_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(trigger, outcome, SystemTime::now());
    }

    pub fn status_json(&self) -> String {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let groups = view
            .groups
            .iter()
            .map(|g| {
                let b = &g.balancer;
                GroupStatus {
                    name: g.name.clone(),
                    algorithm: g.algorithm,
                    backends: (0..b.len())
                        .map(|i| {
                            let address = b.key(i).unwrap_or("").to_string();
                            BackendStatus {
                                healthy: b.is_healthy(i),
                                weight: b.weight(i),
                                weight_share: b.weight_share(i),
                                active_requests: b.active(i),
                                traffic_share: b.traffic_share(i),
                                requests: self.metrics.backend_requests(&g.name, &address),
                                last_transition: b.last_transition(i).map(|t| TransitionStatus {
                                    healthy: t.healthy,
                                    at: unix_seconds(t.at),
                                    reason: t.reason,
                                }),
                                address,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let listeners = view
            .listeners
            .iter()
            .map(|l| ListenerDoc {
                seen: l,
                active_connections: self.metrics.open_connections(&l.name),
                requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                    .into_iter()
                    .zip(self.metrics.listener_requests(&l.name))
                    .collect(),
                xdp_dropped: l
                    .xdp_counters
                    .iter()
                    .filter(|(name, _)| is_drop(name))
                    .map(|(_, n)| n)
                    .sum(),
            })
            .collect();
        let mut totals: Vec<(String, u64)> = Vec::new();
        for l in &view.listeners {
            for (outcome, n) in &l.xdp_counters {
                match totals.iter_mut().find(|(o, _)| o == outcome) {
                    Some((_, total)) => *total += n,
                    None => totals.push((outcome.clone(), *n)),
                }
            }
        }
        let status = Status {
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("EDGELB_COMMIT"),
            uptime_seconds: self.about.started.elapsed().as_secs(),
            config_path: self.about.config_path.as_deref(),
            reloads: self
                .reload_log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            listeners,
            groups,
            xdp: XdpStatus {
                attached: view.xdp_attached.clone(),
                counters: totals,
                next_hops: view.next_hops.clone(),
            },
            bgp: view.bgp.as_ref(),
            etcd: view.etcd.as_ref(),
            certificates: &view.certificates,
        };
        serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Whether the XDP outcome named `name` drops the packet.
fn is_drop(name: &str) -> bool {
    lb_common::Outcome::ALL
        .iter()
        .any(|o| o.name() == name && o.action() == lb_common::XDP_DROP)
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The admin address could not be bound; the OS error (and its errno) is the source.
#[derive(Debug, thiserror::Error)]
#[error("--admin {addr}: cannot bind: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds the admin address (config has already refused a non-loopback one unless allowed).
/// Binds the endpoint's socket, to be served by [`serve`] on the runtime that polls it (a
/// standard socket: a tokio one would belong to the runtime of the thread that binds).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let err = |source| BindError { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Connections the admin endpoint serves at once; more are closed on accept. Its descriptors
/// come out of the process's, which the listeners need.
const MAX_ADMIN_CONNECTIONS: usize = 256;
/// How long a connection may take to send a request head, and may stay idle between requests.
pub const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn serve(listener: std::net::TcpListener, state: Arc<AdminState>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "admin endpoint: cannot serve its socket");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(client = %peer, "admin connection refused: {MAX_ADMIN_CONNECTIONS} open");
            continue;
        };
        // Per connection, not per listening address: bound to 0.0.0.0, a connection that came
        // in on 127.0.0.1 is as open to DNS rebinding as one bound to loopback.
        let loopback = stream.local_addr().map_or(true, |a| a.ip().is_loopback());
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state, loopback).await) }
            });
            // Without a timer hyper applies no header timeout at all: a client could hold a
            // connection, and its descriptor, forever.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(client = %peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn route(
    req: &Request<Incoming>,
    state: &AdminState,
    loopback: bool,
) -> Response<Full<Bytes>> {
    if let Err(why) = browser_allowed(req.method(), req.headers(), loopback) {
        let mut resp = Response::new(Full::new(Bytes::from(format!("{why}\n"))));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return resp;
    }
    if req.method() == Method::GET && matches!(req.uri().path(), "/" | "/index.html") {
        return status_page();
    }
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::POST, "/reload") => match request_reload(state).await {
            Ok(()) => (StatusCode::OK, "text/plain", "reloaded\n".to_string()),
            Err(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "text/plain",
                format!("reload refused, the running configuration stays: {e}\n"),
            ),
        },
        (&Method::POST, "/unblock") => match unblock(req.uri().query(), state).await {
            Ok(n) => (StatusCode::OK, "text/plain", format!("unblocked {n}\n")),
            Err((status, why)) => (status, "text/plain", format!("{why}\n")),
        },
        (&Method::GET, "/healthz") => match state.main_loop.trouble(&state.about) {
            None => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        (&Method::GET, "/status") => (StatusCode::OK, "application/json", state.status_json()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try GET / (status page), /healthz, /metrics, /status, POST /reload, /unblock?ip=ADDR\n"
                .to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn status_page() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
    let headers = resp.headers_mut();
    for (name, value) in [
        (hyper::header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (hyper::header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
        (hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (hyper::header::REFERRER_POLICY, "no-referrer"),
        (hyper::header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    resp
}

/// Asks the main thread to reload and waits for the outcome; the error is the text of the
/// answer.
async fn request_reload(state: &AdminState) -> anyhow::Result<()> {
    let (tx, rx) = oneshot::channel();
    // Either end gone: the main loop has ended.
    let stopping = || anyhow::anyhow!("edgelb is stopping");
    state.reload.send(tx).await.map_err(|_| stopping())?;
    rx.await.map_err(|_| stopping())??;
    Ok(())
}

/// `ip=ADDR` from the query; the number of blocks lifted.
async fn unblock(query: Option<&str>, state: &AdminState) -> Result<usize, (StatusCode, String)> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ip="))
        .map(|v| v.replace("%3A", ":").replace("%3a", ":"))
        .ok_or((
            StatusCode::BAD_REQUEST,
            "POST /unblock needs ?ip=ADDR (an IPv4 or IPv6 address)".to_string(),
        ))?;
    let ip: IpAddr = value.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("POST /unblock: ip={value:?} is not an IPv4 or IPv6 address"),
        )
    })?;
    let stopping = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "edgelb is stopping".to_string(),
        )
    };
    let (tx, rx) = oneshot::channel();
    state.unblock.send((ip, tx)).await.map_err(|_| stopping())?;
    rx.await
        .map_err(|_| stopping())?
        .map_err(|e| (StatusCode::CONFLICT, e))
}

/// What a web browser may ask (it sends Origin or Sec-Fetch-Site; curl, Prometheus and
/// scripts send neither). On a loopback endpoint, only by address: a page whose name a
/// resolver points at 127.0.0.1 (DNS rebinding) would otherwise read `/status` or POST as if
/// it were the status page. A POST only from the page itself: otherwise any site the
/// operator visits could make the browser POST /unblock or /reload (cross-site forgery).
fn browser_allowed(
    method: &Method,
    headers: &hyper::HeaderMap,
    loopback: bool,
) -> Result<(), &'static str> {
    let origin = headers.get(hyper::header::ORIGIN);
    let fetch_site = headers.get("sec-fetch-site");
    if origin.is_none() && fetch_site.is_none() {
        return Ok(());
    }
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.parse::<u16>().is_ok() {
            name
        } else {
            host
        }
    });
    let by_address = name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
    if loopback && !by_address {
        return Err(
            "forbidden: open the admin endpoint by address in a browser (http://127.0.0.1:PORT/), not by a name",
        );
    }
    if *method != Method::GET && *method != Method::HEAD {
        let same_origin = match origin {
            Some(o) => o
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host)),
            None => fetch_site.is_some_and(|s| s == "same-origin" || s == "none"),
        };
        if !same_origin {
            return Err("forbidden: a browser may POST here only from the status page itself");
        }
    }
    Ok(())
}

#[cfg(test)]
mod browser_tests {
    use super::browser_allowed;
    use hyper::Method;

    fn headers(pairs: &[(&'static str, &'static str)]) -> hyper::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    hyper::header::HeaderName::from_static(k),
                    hyper::header::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn browsers_reach_the_endpoint_only_by_address_and_post_only_from_the_page() {
        let ok = |m: Method, h: &[(&'static str, &'static str)], loopback| {
            browser_allowed(&m, &headers(h), loopback).is_ok()
        };
        // Not a browser: curl, Prometheus, scripts.
        assert!(ok(Method::POST, &[("host", "127.0.0.1:9900")], true));
        assert!(ok(Method::GET, &[("host", "edge1.example:9900")], true));
        // The page itself, by address.
        let page = [
            ("host", "127.0.0.1:9900"),
            ("origin", "http://127.0.0.1:9900"),
        ];
        assert!(ok(Method::POST, &page, true));
        assert!(ok(
            Method::GET,
            &[("host", "[::1]:9900"), ("sec-fetch-site", "same-origin")],
            true
        ));
        // Another site, and a rebound name.
        assert!(!ok(
            Method::POST,
            &[
                ("host", "127.0.0.1:9900"),
                ("origin", "https://evil.example")
            ],
            true
        ));
        assert!(!ok(
            Method::POST,
            &[("host", "127.0.0.1:9900"), ("sec-fetch-site", "cross-site")],
            true
        ));
        assert!(!ok(
            Method::GET,
            &[
                ("host", "evil.example:9900"),
                ("sec-fetch-site", "same-origin")
            ],
            true
        ));
        // A remote endpoint (--admin-allow-remote) may be opened by its name.
        assert!(ok(
            Method::POST,
            &[
                ("host", "edge1.example:9900"),
                ("origin", "http://edge1.example:9900")
            ],
            false
        ));
    }
}

#[cfg(test)]
mod healthz_tests {
    use super::{About, MainLoop};
    use std::time::{Duration, Instant};

    #[test]
    fn healthz_fails_once_the_main_loop_stops_turning_or_the_node_stops() {
        let about = About {
            started: Instant::now() - Duration::from_secs(60),
            config_path: None,
        };
        let main_loop = MainLoop::default();
        assert_eq!(main_loop.trouble(&about), None, "before its first turn");
        main_loop.beat(&about);
        assert_eq!(main_loop.trouble(&about), None);
        // Its last turn 59 s ago.
        main_loop
            .beat
            .store(1_000, std::sync::atomic::Ordering::Relaxed);
        assert!(
            main_loop
                .trouble(&about)
                .is_some_and(|t| t.starts_with("main loop stalled for 5")),
            "{:?}",
            main_loop.trouble(&about)
        );
        main_loop.beat(&about);
        main_loop.stopping();
        assert_eq!(main_loop.trouble(&about).as_deref(), Some("stopping"));
    }
}
