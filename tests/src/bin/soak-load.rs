//! `soak-load`: the mixed HTTPS load of `cargo xtask soak`, run inside a client namespace
//! (`ip netns exec NS soak-load ...`). Three kinds of workers, each with one request in flight
//! (an HTTP/2 worker: `--h2-streams` streams at once on one connection), pausing `--think-ms`
//! between requests so that the load stays bounded:
//! - `h1`: HTTP/1.1 on a kept-alive TLS connection, reconnecting only after an error;
//! - `h2`: HTTP/2 (ALPN `h2`), several multiplexed streams per round on one connection;
//! - `newconn`: a new TCP + TLS connection per request, ALPN alternating `http/1.1` and `h2`.
//!
//! Every `--post-every`th request of a worker is a POST with a small body (not idempotent);
//! the others are GETs. No request is retried by the client: each failure is counted once,
//! with its cause and the wall-clock time (Unix ms) it started and ended, so the orchestrator
//! can tell failures inside a health-detection window from the others. Prints one JSON object
//! on stdout at the end.
//!
//! ```text
//! soak-load --target 10.78.1.1:443 --sni edgelb.demo --ca ca.pem --sources 10.78.1.2,10.78.1.3
//!           --seconds 600 [--h1 3] [--h2 1] [--h2-streams 3] [--newconn 2] [--think-ms 10]
//!           [--post-every 10]
//! ```
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgelb_tests::https::ClientOpts;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A request that has not completed after this long is a `timeout` failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many failures are listed one by one (all are counted).
const MAX_LISTED: usize = 20_000;

struct Args {
    target: SocketAddr,
    sni: String,
    ca: PathBuf,
    sources: Vec<IpAddr>,
    seconds: u64,
    h1: usize,
    h2: usize,
    h2_streams: usize,
    newconn: usize,
    think: Duration,
    post_every: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(key) = it.next() {
        let key = key
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {key}"))?
            .to_string();
        let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        map.insert(key, value);
    }
    let get = |k: &str| map.get(k).cloned().ok_or_else(|| format!("--{k} missing"));
    let num = |k: &str, default: u64| -> Result<u64, String> {
        map.get(k).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("--{k}: {e}"))
        })
    };
    Ok(Args {
        target: get("target")?
            .parse()
            .map_err(|e| format!("--target: {e}"))?,
        sni: get("sni")?,
        ca: PathBuf::from(get("ca")?),
        sources: get("sources")?
            .split(',')
            .map(|s| s.parse().map_err(|e| format!("--sources {s}: {e}")))
            .collect::<Result<_, _>>()?,
        seconds: num("seconds", 60)?,
        h1: num("h1", 3)? as usize,
        h2: num("h2", 1)? as usize,
        h2_streams: num("h2-streams", 3)?.max(1) as usize,
        newconn: num("newconn", 2)? as usize,
        think: Duration::from_millis(num("think-ms", 10)?),
        post_every: num("post-every", 10)?.max(1),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a request failed: the cause bucket and a detail.
struct Fail(&'static str, String);

impl Fail {
    fn other(what: &str, e: impl std::fmt::Display) -> Self {
        Fail("other", format!("{what}: {e}"))
    }
}

#[derive(Default)]
struct Stats {
    sent: BTreeMap<&'static str, u64>,
    ok: u64,
    idempotent_sent: u64,
    failed: BTreeMap<&'static str, u64>,
    details: BTreeMap<String, u64>,
    by_backend: BTreeMap<String, u64>,
    failures: Vec<serde_json::Value>,
}

struct Ctx {
    args: Args,
    deadline: Instant,
    h1_config: Arc<ClientConfig>,
    h2_config: Arc<ClientConfig>,
    stats: Mutex<Stats>,
}

impl Ctx {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn record(&self, kind: &'static str, post: bool, start_ms: u64, result: Result<String, Fail>) {
        let end_ms = now_ms();
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        *s.sent.entry(kind).or_insert(0) += 1;
        if !post {
            s.idempotent_sent += 1;
        }
        match result {
            Ok(backend) => {
                s.ok += 1;
                *s.by_backend.entry(backend).or_insert(0) += 1;
            }
            Err(Fail(cause, detail)) => {
                *s.failed.entry(cause).or_insert(0) += 1;
                let short: String = detail.chars().take(120).collect();
                *s.details.entry(format!("{cause}: {short}")).or_insert(0) += 1;
                if s.failures.len() < MAX_LISTED {
                    s.failures.push(serde_json::json!({
                        "start_ms": start_ms,
                        "end_ms": end_ms,
                        "kind": kind,
                        "method": if post { "POST" } else { "GET" },
                        "cause": cause,
                        "detail": short,
                    }));
                }
            }
        }
    }

    fn request(&self, h2: bool, post: bool) -> Request<Full<Bytes>> {
        let builder = Request::builder().method(if post { "POST" } else { "GET" });
        let builder = if h2 {
            builder.uri(format!("https://{}/", self.args.sni))
        } else {
            builder.uri("/").header("host", self.args.sni.as_str())
        };
        let body = if post {
            Bytes::from_static(&[b'x'; 64])
        } else {
            Bytes::new()
        };
        builder
            .body(Full::new(body))
            .expect("a well-formed static request")
    }

    fn source(&self, n: usize) -> IpAddr {
        self.args.sources[n % self.args.sources.len()]
    }

    async fn connect(
        &self,
        source: IpAddr,
        config: Arc<ClientConfig>,
    ) -> Result<TlsStream<TcpStream>, Fail> {
        let socket = if source.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| Fail::other("socket", e))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| Fail::other("bind", e))?;
        let tcp = socket.connect(self.args.target).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                Fail("refused", e.to_string())
            } else {
                Fail::other("connect", e)
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.args.sni.clone())
            .map_err(|e| Fail::other("server name", e))?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| Fail("tls", e.to_string()))
    }
}

/// A response: 200 from a backend (its name), or the failure its status stands for.
async fn answer(resp: hyper::Response<hyper::body::Incoming>) -> Result<String, Fail> {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Fail::other("body", e))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    match status {
        200 => text
            .trim()
            .strip_prefix("backend ")
            .map(str::to_string)
            .ok_or_else(|| Fail::other("200 with body", text.trim())),
        502 => Err(Fail("http_502", text.trim().to_string())),
        503 => Err(Fail("http_503", text.trim().to_string())),
        504 => Err(Fail("http_504", text.trim().to_string())),
        s => Err(Fail("http_other", format!("status {s}"))),
    }
}

async fn timed<T>(f: impl Future<Output = Result<T, Fail>>) -> Result<T, Fail> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(Fail("timeout", format!("no answer in {REQUEST_TIMEOUT:?}"))),
    }
}

/// HTTP/1.1 on a kept-alive connection, reconnecting after an error.
async fn h1_worker(ctx: Arc<Ctx>, id: usize) {
    let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
    let (mut n, mut conns) = (0u64, id);
    while ctx.running() {
        n += 1;
        let post = n.is_multiple_of(ctx.args.post_every);
        let start = now_ms();
        let result = timed(async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                conns += 1;
                let tls = ctx
                    .connect(ctx.source(conns), ctx.h1_config.clone())
                    .await?;
                let (s, conn) = http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| Fail::other("h1 handshake", e))?;
                tokio::spawn(conn);
                sender = Some(s);
            }
            let s = sender.as_mut().expect("connected above");
            s.ready().await.map_err(|e| Fail::other("h1 ready", e))?;
            let resp = s
                .send_request(ctx.request(false, post))
                .await
                .map_err(|e| Fail::other("h1 request", e))?;
            answer(resp).await
        })
        .await;
        if result.is_err() {
            sender = None;
        }
        ctx.record("h1_keepalive", post, start, result);
        tokio::time::sleep(ctx.args.think).await;
    }
}

/// HTTP/2: rounds of `h2_streams` concurrent streams on one connection.
async fn h2_worker(ctx: Arc<Ctx>, id: usize) {
    let mut sender: Option<http2::SendRequest<Full<Bytes>>> = None;
    let (mut n, mut conns) = (0u64, id);
    while ctx.running() {
        let start = now_ms();
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            conns += 1;
            let connected = timed(async {
                let tls = ctx
                    .connect(ctx.source(conns), ctx.h2_config.clone())
                    .await?;
                let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| Fail::other("h2 handshake", e))?;
                tokio::spawn(conn);
                Ok(s)
            })
            .await;
            match connected {
                Ok(s) => sender = Some(s),
                Err(Fail(cause, detail)) => {
                    // Each stream of the round fails with the connection.
                    for _ in 0..ctx.args.h2_streams {
                        n += 1;
                        let post = n.is_multiple_of(ctx.args.post_every);
                        ctx.record(
                            "h2_multiplexed",
                            post,
                            start,
                            Err(Fail(cause, detail.clone())),
                        );
                    }
                    tokio::time::sleep(ctx.args.think).await;
                    continue;
                }
            }
        }
        let s = sender.clone().expect("connected above");
        let mut round = tokio::task::JoinSet::new();
        for _ in 0..ctx.args.h2_streams {
            n += 1;
            let post = n.is_multiple_of(ctx.args.post_every);
            let (ctx, mut s) = (ctx.clone(), s.clone());
            round.spawn(async move {
                let start = now_ms();
                let result = timed(async {
                    s.ready().await.map_err(|e| Fail::other("h2 ready", e))?;
                    let resp = s
                        .send_request(ctx.request(true, post))
                        .await
                        .map_err(|e| Fail::other("h2 request", e))?;
                    answer(resp).await
                })
                .await;
                let failed = result.is_err();
                ctx.record("h2_multiplexed", post, start, result);
                failed
            });
        }
        let mut any_failed = false;
        while let Some(r) = round.join_next().await {
            any_failed |= r.unwrap_or(true);
        }
        if any_failed {
            sender = None;
        }
        tokio::time::sleep(ctx.args.think).await;
    }
}

/// A new TCP + TLS connection per request; ALPN alternates between HTTP/1.1 and HTTP/2.
async fn newconn_worker(ctx: Arc<Ctx>, id: usize) {
    let mut n = id as u64;
    while ctx.running() {
        n += 1;
        let post = n.is_multiple_of(ctx.args.post_every);
        let h2 = n.is_multiple_of(2);
        let start = now_ms();
        let result = timed(async {
            let config = if h2 {
                ctx.h2_config.clone()
            } else {
                ctx.h1_config.clone()
            };
            let tls = ctx.connect(ctx.source(n as usize), config).await?;
            let resp = if h2 {
                let (mut s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| Fail::other("h2 handshake", e))?;
                tokio::spawn(conn);
                s.send_request(ctx.request(true, post))
                    .await
                    .map_err(|e| Fail::other("h2 request", e))?
            } else {
                let (mut s, conn) = http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| Fail::other("h1 handshake", e))?;
                tokio::spawn(conn);
                s.send_request(ctx.request(false, post))
                    .await
                    .map_err(|e| Fail::other("h1 request", e))?
            };
            answer(resp).await
        })
        .await;
        ctx.record("new_connection", post, start, result);
        tokio::time::sleep(ctx.args.think).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak-load: {e}");
            std::process::exit(2);
        }
    };
    let config = |alpn: &[&[u8]]| {
        let mut opts = ClientOpts::new(&args.ca);
        opts.alpn = alpn;
        opts.config()
    };
    let (h1_config, h2_config) = (config(&[b"http/1.1"]), config(&[b"h2"]));
    let started_ms = now_ms();
    let ctx = Arc::new(Ctx {
        deadline: Instant::now() + Duration::from_secs(args.seconds),
        args,
        h1_config,
        h2_config,
        stats: Mutex::new(Stats::default()),
    });
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..ctx.args.h1 {
        workers.spawn(h1_worker(ctx.clone(), id));
    }
    for id in 0..ctx.args.h2 {
        workers.spawn(h2_worker(ctx.clone(), id));
    }
    for id in 0..ctx.args.newconn {
        workers.spawn(newconn_worker(ctx.clone(), id));
    }
    while workers.join_next().await.is_some() {}
    let s = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
    let summary = serde_json::json!({
        "started_ms": started_ms,
        "ended_ms": now_ms(),
        "sent": s.sent.values().sum::<u64>(),
        "sent_by_kind": s.sent,
        "idempotent_sent": s.idempotent_sent,
        "ok": s.ok,
        "failed_by_cause": s.failed,
        "failure_details": s.details,
        "ok_by_backend": s.by_backend,
        "failures": s.failures,
    });
    println!("{summary}");
}
