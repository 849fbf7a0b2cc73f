//! Greedy and slow clients against the limits an operator sets: TLS handshakes that never
//! finish are cut at `--handshake-timeout`; a client opening connections until
//! `--max-connections` gets the extra ones closed at once while the admin endpoint and the
//! connections already open keep working; descriptors stay bounded throughout; a client over
//! `--rate-limit-requests` gets 429.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use edgelb_tests::admin::get as admin_get;
use edgelb_tests::backend::Backend;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};

/// Whether the server closes `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_cut_at_the_handshake_timeout() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let admin = free_addr().to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--handshake-timeout",
        "1",
        "--admin",
        &admin,
    ]);

    // Half a ClientHello, then silence. Timed from before the connection: the server's
    // timer starts at its accept, which is later.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).expect("connect");
    silent
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("partial hello");
    assert!(
        closed_within(&mut silent, Duration::from_secs(8)),
        "a stalled handshake is still open after {:?}",
        started.elapsed()
    );
    // At the 1 s given, not at the 10 s default nor at once.
    assert!(
        (Duration::from_millis(950)..Duration::from_secs(4)).contains(&started.elapsed()),
        "a stalled handshake was cut after {:?} with --handshake-timeout 1",
        started.elapsed()
    );
    // A client that does its handshake is served as usual.
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let reply = https::send(addr, SERVER_NAME, config, get("/"))
        .await
        .expect("a normal request");
    assert_eq!(reply.status, 200);
    let metrics = admin_get(&admin, "/metrics");
    assert!(
        metrics
            .contains("edgelb_tls_handshakes_total{listener=\"listener-1\",result=\"timeout\"} 1"),
        "{metrics}"
    );
    drop(lb);
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_the_node_stays_reachable() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let admin = free_addr().to_string();
    const LIMIT: usize = 200;
    let limit = LIMIT.to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--max-connections",
        &limit,
        "--handshake-timeout",
        "30",
        "--admin",
        &admin,
    ]);
    let base_fds = lb.fds();
    let base_rss = lb.rss_kib();

    // A greedy client: ten times the limit, none of them doing anything.
    let mut open = Vec::new();
    let mut peak_fds = 0;
    for _ in 0..LIMIT * 10 {
        if let Ok(c) = TcpStream::connect(addr) {
            open.push(c);
        }
        peak_fds = peak_fds.max(lb.fds());
    }
    for c in &mut open {
        c.set_nonblocking(true).expect("nonblocking");
    }
    // Connections past the limit are accepted and closed as the workers get to them: counted
    // until the count stops growing (5 s at most). A closed one stays closed.
    let mut is_closed = vec![false; open.len()];
    let mut closed = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        peak_fds = peak_fds.max(lb.fds());
        let before = closed;
        for (c, done) in open.iter_mut().zip(&mut is_closed) {
            let mut buf = [0u8; 1];
            if !*done {
                *done = match c.read(&mut buf) {
                    Ok(0) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                    Ok(_) => false,
                };
            }
        }
        closed = is_closed.iter().filter(|&&d| d).count();
        if closed == before || Instant::now() > deadline {
            break;
        }
    }
    let peak_rss = lb.rss_kib();
    eprintln!(
        "{} connections opened, {closed} closed by edgelb; descriptors {base_fds} -> peak {peak_fds}; RSS {base_rss} KiB -> {peak_rss} KiB",
        open.len()
    );
    assert!(
        closed >= LIMIT * 9 - 50,
        "only {closed} of {} connections past the limit were closed",
        open.len()
    );
    // ... and the ones within it were let in and stay open.
    let kept = open.len() - closed;
    assert!(
        kept >= LIMIT - 50,
        "only {kept} of {} connections were kept open with a limit of {LIMIT}",
        open.len()
    );
    assert!(
        peak_fds <= base_fds + LIMIT + 50,
        "descriptors grew from {base_fds} to {peak_fds} with a limit of {LIMIT}"
    );
    // The admin endpoint is another socket: it still answers, and says why.
    let metrics = admin_get(&admin, "/metrics");
    assert!(
        metrics.contains(
            "edgelb_connections_refused_total{listener=\"listener-1\",reason=\"max_connections\"}"
        ),
        "{metrics}"
    );
    assert!(admin_get(&admin, "/healthz").contains("ok"));

    // Room again once the greedy client lets go.
    drop(open);
    assert!(
        served_soon(&s, addr).await,
        "no request served after the greedy client left"
    );
    drop(lb);
}

/// Out of file descriptors, every pending connection fails to be accepted, each worker
/// retrying every 50 ms: the log says so once in a while, with how many went unsaid, not 20
/// lines a second per worker; and once descriptors are free again, clients are served.
#[tokio::test]
async fn running_out_of_descriptors_is_logged_once_in_a_while_and_passes() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &be]);
    // The soft limit only, lowered then put back (the hard one stays).
    let nofile = |soft: &str| {
        std::process::Command::new("prlimit")
            .args(["--pid", &lb.pid().to_string(), &format!("--nofile={soft}:")])
            .status()
            .is_ok_and(|s| s.success())
    };
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", lb.pid())).unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("1024")
        .to_string();
    assert!(nofile(&(lb.fds() + 8).to_string()), "prlimit refused");
    let waiting: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    // About 40 failed accepts per worker in this time.
    std::thread::sleep(Duration::from_secs(2));
    let log = lb.log();
    let said = log.matches("accept failed").count();
    assert!(
        (1..=4).contains(&said),
        "{said} \"accept failed\" lines in 2 s out of descriptors:\n{log}"
    );
    drop(waiting);
    assert!(nofile(&soft), "prlimit refused to put back {soft}");
    assert!(
        served_soon(&s, addr).await,
        "not served once descriptors were free again"
    );
}

/// Whether a GET is answered 200 within 5 s (the first answer counts; refusals are retried).
async fn served_soon(s: &Setup, addr: std::net::SocketAddr) -> bool {
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    for _ in 0..50 {
        if let Ok(r) = https::send(addr, SERVER_NAME, config.clone(), get("/")).await {
            return r.status == 200;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Sends `n` GETs of `path` in one write on one HTTP/1.1 connection and returns the statuses
/// and the text of the answers, and how long they took from the write to the last answer.
async fn pipelined(
    s: &Setup,
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
) -> (Vec<u16>, String, Duration) {
    use tokio::io::AsyncWriteExt;
    let mut tls = s.connect_h1(addr).await;
    let requests = format!("GET {path} HTTP/1.1\r\nhost: edgelb.test\r\n\r\n").repeat(n);
    let sent = std::time::Instant::now();
    tls.write_all(requests.as_bytes()).await.expect("requests");
    let (statuses, text) = https::read_responses(&mut tls, n).await;
    (statuses, text, sent.elapsed())
}

/// Asserts that `statuses` are 200s, then only 429s, at least one: `burst` admitted at once,
/// plus what `per_sec` refilled while they were served one after another (hyper takes
/// pipelined requests in turn, so on a slow machine the later ones arrive later). Returns how
/// many were admitted.
fn admitted_then_limited(
    statuses: &[u16],
    burst: usize,
    per_sec: f64,
    took: Duration,
    text: &str,
) -> usize {
    let admitted = statuses.iter().take_while(|&&s| s == 200).count();
    let refilled = (per_sec * took.as_secs_f64()).floor() as usize;
    assert!(
        statuses[admitted..].iter().all(|&s| s == 429)
            && (burst..=burst + refilled).contains(&admitted)
            && admitted < statuses.len(),
        "{statuses:?} in {took:?}: want {burst} (+{refilled} refilled) 200s, then 429s\n{text}"
    );
    admitted
}

/// A rule's `rate-limit`: the requests it matches are limited per client, the others not.
#[tokio::test]
async fn a_rule_limits_the_requests_it_matches() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (_lb, addr) = s.start(&[
        "--backend",
        &be,
        "--rule",
        "name=login;path=/login;rate-limit=2;action=forward",
    ]);
    let (login, text, took) = pipelined(&s, addr, "/login", 4).await;
    admitted_then_limited(&login, 2, 2.0, took, &text);
    let (other, text, _) = pipelined(&s, addr, "/other", 4).await;
    assert_eq!(other, [200, 200, 200, 200], "{text}");
}

/// `--rate-limit-requests 5`: a client's sixth request within the second gets 429 with
/// Retry-After and never reaches the backend; another client address has its own allowance;
/// a second later the first is served again.
#[tokio::test]
async fn requests_past_the_per_client_rate_get_429() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (_lb, addr) = s.start(&["--backend", &be, "--rate-limit-requests", "5"]);
    let (statuses, text, took) = pipelined(&s, addr, "/", 8).await;
    let admitted = admitted_then_limited(&statuses, 5, 5.0, took, &text);
    assert!(text.contains("retry-after: 1\r\n"), "{text}");
    assert_eq!(backend.served(), admitted);

    // Another client address: its own five.
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let other = "127.0.0.2".parse().ok();
    let reply = https::send_from(other, addr, SERVER_NAME, config.clone(), get("/"))
        .await
        .expect("request from 127.0.0.2");
    assert_eq!(reply.status, 200);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = https::send(addr, SERVER_NAME, config, get("/"))
        .await
        .expect("request a second later");
    assert_eq!(reply.status, 200);
}
