//! `h3-load`: an HTTP/3 load generator for `cargo xtask bench https`, where h2load cannot go
//! (Debian's h2load is built without HTTP/3). quinn + h3 over rustls (aws-lc-rs), TLS 1.3 (as
//! QUIC requires), ALPN `h3`, the server's certificate checked against `--ca` for
//! `--server-name`.
//!
//! ```text
//! h3-load --connect 127.0.0.1:8443 --server-name localhost --ca cert.pem
//!         [--conns 4] [--streams 16] [--warm-up-secs 2] [--secs 10] [--path /]
//! ```
//!
//! Opens `--conns` QUIC connections to `--connect` (and nowhere else) and keeps `--streams`
//! GET requests in flight on each: every stream sends its request, reads the whole response
//! body, and sends the next one at once. A connection that fails is opened again. Requests
//! that end in the measured window (after `--warm-up-secs`, for `--secs`, both counted from
//! the start) are counted; when it ends, prints one JSON line on stdout:
//!
//! ```text
//! {"ok":N,"non_2xx":N,"errors":N,"p50_us":N,"p99_us":N,"secs":S,"alpn":"h3","handshakes":N}
//! ```
//!
//! `ok`: 2xx responses whose body ended in the window; `non_2xx`: other statuses; `errors`:
//! requests and connection attempts that failed (or took over 10 s) in the window; `p50_us`,
//! `p99_us`: latency of the 2xx ones from sending the request to the end of its body
//! (nearest-rank, null if none); `handshakes`: connections established, warm-up included.
//! One thread (a current-thread runtime), as h2load `-t 1`. The run is bounded: the window's
//! end closes every connection, and a watchdog exits a few seconds later whatever happens.
//! Exits 0 once it has printed the line (whatever the counts), 2 on bad arguments, 1 if the
//! client cannot be set up.
use std::any::Any;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio::time::{sleep, sleep_until, timeout};

/// A request (or a connection attempt) not done after this long is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before opening a connection again after a failed attempt.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// After the window: how long the connections get to close cleanly.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// After the window: when the watchdog ends the process if it is still running.
const WATCHDOG_AFTER: Duration = Duration::from_secs(5);
/// H3_NO_ERROR (RFC 9114 8.1): the connection is closed because the client is done.
const H3_NO_ERROR: u32 = 0x100;

struct Args {
    connect: SocketAddr,
    server_name: String,
    ca: PathBuf,
    conns: usize,
    streams: usize,
    warm_up: Duration,
    duration: Duration,
    path: String,
}

fn parse_args() -> Result<Args, String> {
    let mut connect = None;
    let mut server_name = None;
    let mut ca = None;
    let mut args = Args {
        connect: SocketAddr::from((Ipv4Addr::LOCALHOST, 443)),
        server_name: String::new(),
        ca: PathBuf::new(),
        conns: 4,
        streams: 16,
        warm_up: Duration::from_secs(2),
        duration: Duration::from_secs(10),
        path: "/".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(key) = it.next() {
        let value = it.next().ok_or_else(|| format!("{key} needs a value"))?;
        let num = || value.parse::<u64>().map_err(|e| format!("{key}: {e}"));
        match key.as_str() {
            "--connect" => connect = Some(value.parse().map_err(|e| format!("{key}: {e}"))?),
            "--server-name" => server_name = Some(value),
            "--ca" => ca = Some(PathBuf::from(value)),
            "--conns" => args.conns = num()?.clamp(1, 1000) as usize,
            "--streams" => args.streams = num()?.clamp(1, 1000) as usize,
            // Bounded: the client always ends on its own.
            "--warm-up-secs" => args.warm_up = Duration::from_secs(num()?.min(60)),
            "--secs" => args.duration = Duration::from_secs(num()?.clamp(1, 600)),
            "--path" if value.starts_with('/') => args.path = value,
            "--path" => return Err(format!("--path {value:?} must start with /")),
            _ => return Err(format!("unknown argument {key}")),
        }
    }
    args.connect = connect.ok_or("--connect ADDR:PORT is required")?;
    args.server_name = server_name.ok_or("--server-name NAME is required")?;
    args.ca = ca.ok_or("--ca PEM-FILE is required")?;
    Ok(args)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("h3-load: {e}");
        std::process::exit(2);
    });
    // Whatever happens below (a stuck close, a runtime that does not return), the process
    // ends a few seconds after its window.
    let limit = args.warm_up + args.duration + WATCHDOG_AFTER;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("h3-load: still running {limit:?} after the start: exiting");
        std::process::exit(3);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        match timeout(limit, run(args)).await {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("h3-load: {e}");
                1
            }
            Err(_) => {
                eprintln!("h3-load: did not finish within {limit:?}");
                3
            }
        }
    });
    std::process::exit(code);
}

/// The measured window.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.to
    }
}

/// What happened in the window (and the first error, whenever it came).
#[derive(Default)]
struct Stats {
    ok: u64,
    non_2xx: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    handshakes: u64,
    alpn: Option<String>,
    first_error: Option<String>,
}

type Shared = Arc<Mutex<Stats>>;

fn lock(stats: &Shared) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

fn record_error(stats: &Shared, window: Window, at: Instant, error: String) {
    let mut s = lock(stats);
    if window.contains(at) {
        s.errors += 1;
    }
    if s.first_error.is_none() {
        s.first_error = Some(error);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let bind: SocketAddr = if args.connect.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| format!("UDP socket on {bind}: {e}"))?;
    endpoint.set_default_client_config(client_config(&args)?);
    let start = Instant::now();
    let window = Window {
        from: start + args.warm_up,
        to: start + args.warm_up + args.duration,
    };
    let stats = Shared::default();
    let args = Arc::new(args);
    for _ in 0..args.conns {
        tokio::spawn(connection(
            endpoint.clone(),
            args.clone(),
            window,
            stats.clone(),
        ));
    }
    sleep_until(window.to.into()).await;
    // The counts are final: nothing that ends from now on is in the window.
    let s = std::mem::take(&mut *lock(&stats));
    endpoint.close(H3_NO_ERROR.into(), b"done");
    let _ = timeout(CLOSE_GRACE, endpoint.wait_idle()).await;

    let mut latencies = s.latencies_us;
    latencies.sort_unstable();
    if let Some(e) = &s.first_error {
        eprintln!("h3-load: first error: {e}");
    }
    let line = serde_json::json!({
        "ok": s.ok,
        "non_2xx": s.non_2xx,
        "errors": s.errors,
        "p50_us": percentile(&latencies, 50.0),
        "p99_us": percentile(&latencies, 99.0),
        "secs": args.duration.as_secs_f64(),
        "alpn": s.alpn,
        "handshakes": s.handshakes,
    });
    println!("{line}");
    Ok(())
}

/// TLS 1.3 only, ALPN h3, the CA file's certificates as the only roots; no resumption, so
/// every connection does a full handshake (they are all opened at the start).
fn client_config(args: &Args) -> Result<quinn::ClientConfig, String> {
    let ca = &args.ca;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in it", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = ClientConfig::builder_with_provider(provider as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS 1.3: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.resumption = Resumption::disabled();
    let quic = QuicClientConfig::try_from(tls).map_err(|e| format!("QUIC: {e}"))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// One of the `--conns` connections: opened, `--streams` request loops on it until the window
/// ends or the connection fails, then opened again if the window has not ended.
async fn connection(endpoint: quinn::Endpoint, args: Arc<Args>, window: Window, stats: Shared) {
    let uri: http::Uri = match format!("https://{}{}", args.server_name, args.path).parse() {
        Ok(uri) => uri,
        Err(e) => {
            record_error(&stats, window, Instant::now(), format!("URI: {e}"));
            return;
        }
    };
    while Instant::now() < window.to {
        let (conn, send) = match timeout(REQUEST_TIMEOUT, open(&endpoint, &args)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                record_error(&stats, window, Instant::now(), e);
                sleep(RECONNECT_PAUSE).await;
                continue;
            }
            Err(_) => {
                record_error(&stats, window, Instant::now(), "connect: timed out".into());
                continue;
            }
        };
        {
            let mut s = lock(&stats);
            s.handshakes += 1;
            if s.alpn.is_none() {
                s.alpn = conn
                    .handshake_data()
                    .and_then(|d: Box<dyn Any>| d.downcast::<HandshakeData>().ok())
                    .and_then(|d| d.protocol)
                    .map(|p| String::from_utf8_lossy(&p).into_owned());
            }
        }
        let mut loops = tokio::task::JoinSet::new();
        for _ in 0..args.streams {
            loops.spawn(request_loop(
                send.clone(),
                conn.clone(),
                uri.clone(),
                window,
                stats.clone(),
            ));
        }
        drop(send);
        while loops.join_next().await.is_some() {}
    }
}

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// A QUIC connection and HTTP/3 on it, its control streams driven by a task of their own.
async fn open(
    endpoint: &quinn::Endpoint,
    args: &Args,
) -> Result<(quinn::Connection, SendRequest), String> {
    let conn = endpoint
        .connect(args.connect, &args.server_name)
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| format!("HTTP/3 set-up: {e}"))?;
    tokio::spawn(async move {
        let _ = driver.wait_idle().await;
    });
    Ok((conn, send))
}

/// Requests one after another on one stream slot of the connection, until the window ends
/// or the connection is gone.
async fn request_loop(
    mut send: SendRequest,
    conn: quinn::Connection,
    uri: http::Uri,
    window: Window,
    stats: Shared,
) {
    loop {
        let sent = Instant::now();
        if sent >= window.to {
            return;
        }
        let result = timeout(REQUEST_TIMEOUT, request(&mut send, &uri)).await;
        let done = Instant::now();
        match result {
            Ok(Ok(status)) => {
                if !window.contains(done) {
                    continue;
                }
                let mut s = lock(&stats);
                if status.is_success() {
                    s.ok += 1;
                    let us = done.duration_since(sent).as_micros();
                    s.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                } else {
                    s.non_2xx += 1;
                }
            }
            Ok(Err(e)) => {
                record_error(&stats, window, done, e);
                if conn.close_reason().is_some() {
                    return;
                }
            }
            Err(_) => record_error(&stats, window, done, "request: timed out".into()),
        }
    }
}

/// One GET: the request, its response head, and its whole body (discarded).
async fn request(send: &mut SendRequest, uri: &http::Uri) -> Result<http::StatusCode, String> {
    let req = http::Request::get(uri.clone())
        .body(())
        .map_err(|e| format!("request: {e}"))?;
    let mut stream = send
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    stream.finish().await.map_err(|e| format!("finish: {e}"))?;
    let response = stream
        .recv_response()
        .await
        .map_err(|e| format!("response: {e}"))?;
    while stream
        .recv_data()
        .await
        .map_err(|e| format!("body: {e}"))?
        .is_some()
    {}
    Ok(response.status())
}

/// The `p`th percentile (0-100) of sorted values, nearest-rank; None if there are none.
fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}
