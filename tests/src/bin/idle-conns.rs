//! `idle-conns`: opens many TLS 1.3 connections to a proxy, sends one HTTP/1.1 keep-alive GET
//! on each and reads the response, then keeps them all open and idle, for the memory test of
//! `cargo xtask bench https` (the proxy's RSS is read while they are held).
//!
//! ```text
//! idle-conns --connect 127.0.0.1:8443 [--count 10000] [--hold-secs 20] [--parallel 200]
//! ```
//!
//! Prints `established N` once all N connections have had their response (at most `--parallel`
//! handshakes are under way at once, so nothing is refused for a full accept backlog), then
//! `held N closed-early M` after the hold: M connections the proxy closed while they were idle.
//! Exits on its own after the hold; exits non-zero if a connection could not be made. Session
//! resumption is off: every handshake is a full one, as a new client's would be.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgelb::tls::client::accept_any_certificate;
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsConnector;

/// Seconds one connection may take to be established and answered.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    connect: SocketAddr,
    count: usize,
    hold: Duration,
    parallel: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        connect: SocketAddr::from(([127, 0, 0, 1], 443)),
        count: 10_000,
        hold: Duration::from_secs(20),
        parallel: 200,
    };
    let mut connect = None;
    let mut it = std::env::args().skip(1);
    while let Some(key) = it.next() {
        let value = it.next().ok_or_else(|| format!("{key} needs a value"))?;
        let num = || value.parse::<u64>().map_err(|e| format!("{key}: {e}"));
        match key.as_str() {
            "--connect" => connect = Some(value.parse().map_err(|e| format!("{key}: {e}"))?),
            "--count" => args.count = num()?.clamp(1, 100_000) as usize,
            // Bounded: the client always ends on its own.
            "--hold-secs" => args.hold = Duration::from_secs(num()?.min(3600)),
            "--parallel" => args.parallel = num()?.clamp(1, 10_000) as usize,
            _ => return Err(format!("unknown argument {key}")),
        }
    }
    args.connect = connect.ok_or("--connect ADDR:PORT is required")?;
    Ok(args)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("idle-conns: {e}");
        std::process::exit(2);
    });
    raise_nofile_limit(args.count as u64 + 1024);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(runtime.block_on(run(args)));
}

/// Each connection is a descriptor: lift the soft limit to what is needed (or the hard limit).
fn raise_nofile_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    // Root may raise the hard limit too.
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)) {
        eprintln!("idle-conns: cannot raise RLIMIT_NOFILE to {want}: {e}");
    }
}

async fn run(args: Args) -> i32 {
    let connector = TlsConnector::from(tls_config());
    let handshakes = Arc::new(Semaphore::new(args.parallel));
    let (established_tx, mut established_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (release_tx, release_rx) = watch::channel(false);
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<bool>();
    let started = Instant::now();
    for _ in 0..args.count {
        let connector = connector.clone();
        let handshakes = handshakes.clone();
        let established = established_tx.clone();
        let closed = closed_tx.clone();
        let mut release = release_rx.clone();
        let addr = args.connect;
        tokio::spawn(async move {
            let permit = handshakes.acquire_owned().await;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, open(&connector, addr)).await;
            drop(permit);
            let mut stream = match conn {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let _ = established.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = established.send(Err("timed out".into()));
                    return;
                }
            };
            let _ = established.send(Ok(()));
            // Idle until released; a read that returns means the proxy closed or sent data.
            let mut byte = [0u8; 1];
            let closed_early = tokio::select! {
                _ = release.wait_for(|r| *r) => false,
                _ = stream.read(&mut byte) => true,
            };
            let _ = closed.send(closed_early);
        });
    }
    drop(established_tx);
    drop(closed_tx);

    let mut ok = 0usize;
    let mut errors = Vec::new();
    // One message per connection (the tasks keep their senders while they hold, so the
    // channel does not close).
    for _ in 0..args.count {
        match established_rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => errors.push(e),
            None => break,
        }
    }
    if !errors.is_empty() {
        eprintln!(
            "idle-conns: {} of {} connections failed, first: {}",
            errors.len(),
            args.count,
            errors[0]
        );
        return 1;
    }
    println!(
        "established {ok} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(args.hold).await;
    let _ = release_tx.send(true);
    let mut closed_early = 0;
    let mut held = 0;
    while let Some(early) = closed_rx.recv().await {
        held += 1;
        closed_early += usize::from(early);
    }
    println!("held {held} closed-early {closed_early}");
    0
}

/// TCP connect, TLS 1.3 handshake (ALPN http/1.1), one GET and its whole response.
async fn open(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    read_response(&mut tls).await?;
    Ok(tls)
}

/// Reads one HTTP/1.1 response with a Content-Length body; fails unless it is a 2xx.
async fn read_response(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Result<(), String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = tls
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 2") {
            return Err(format!(
                "status line {:?}",
                head.lines().next().unwrap_or("")
            ));
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("response without Content-Length")?;
        if buf.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

fn tls_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone() as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        // The proxy's certificate is a throwaway on loopback and is not checked (what is
        // measured is the proxy's memory), but the handshake signature is, so the server does
        // all the work of a real handshake: edgelb's own `--backend-insecure` verifier.
        .with_custom_certificate_verifier(accept_any_certificate(provider))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}
