//! Backends that misbehave, behind a real edgelb (`--protocol http`): resets mid-response,
//! malformed status lines, Transfer-Encoding with Content-Length, stalls after the head, a
//! keep-alive connection closed as it is reused, 100 KB of headers, a 1 GiB body (edgelb's
//! memory must stay flat), and responses that must never reach the wrong client.
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use edgelb_tests::daemon::Daemon;
use edgelb_tests::raw::{Recorder, split_at_most};

/// edgelb in front of `recorder`, with a 2 s response timeout.
fn edgelb(recorder: &Recorder, dir: &std::path::Path) -> (Daemon, SocketAddr) {
    edgelb_tests::listener::start_http(
        recorder.addr,
        &["--health-check", "off", "--response-timeout", "2"],
        dir,
    )
}

/// A keep-alive client connection that sends requests one at a time.
struct Client {
    addr: SocketAddr,
    tcp: Option<TcpStream>,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    id: Option<String>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Client {
            addr,
            tcp: None,
            buf: Vec::new(),
        }
    }

    /// Sends `method path` with `x-request-id: id`; the response, or None when the
    /// connection closed or timed out before a whole response (the connection is dropped).
    fn send(&mut self, method: &str, path: &str, id: &str, body: &[u8]) -> Option<Answer> {
        if self.tcp.is_none() {
            let tcp = TcpStream::connect(self.addr).expect("connect");
            tcp.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            self.tcp = Some(tcp);
            self.buf.clear();
        }
        let tcp = self.tcp.as_mut()?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: t\r\nx-request-id: {id}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        if tcp.write_all(&req).is_err() {
            self.tcp = None;
            return None;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let (statuses, ids, used) = split_at_most(&self.buf, 1);
            if let (Some(&status), Some(id)) = (statuses.first(), ids.first()) {
                self.buf.drain(..used);
                return Some(Answer {
                    status,
                    id: id.clone(),
                });
            }
            match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    self.tcp = None;
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Sends raw `GET path` and reads until the server closes (10 s at most): the bytes, whether
/// it closed, and how long that took.
fn get_until_close(addr: SocketAddr, path: &str) -> (Vec<u8>, bool, Duration) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tcp.read(&mut chunk) {
            Ok(0) => return (got, true, started.elapsed()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, false, started.elapsed());
            }
            Err(_) => return (got, true, started.elapsed()),
        }
    }
}

fn body_after_head(got: &[u8]) -> usize {
    got.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| got.len() - p - 4)
}

#[test]
fn broken_responses_become_502_or_a_cut_connection() {
    let dir = edgelb_tests::certs::TempDir::new();
    let recorder = Recorder::start();
    let (_lb, addr) = edgelb(&recorder, dir.path());
    let mut c = Client::new(addr);

    let bad = c.send("GET", "/bad-status", "1", b"").expect("answer");
    assert_eq!(bad.status, 502, "malformed status line");
    let huge = c.send("GET", "/huge-headers", "2", b"").expect("answer");
    assert_eq!(huge.status, 502, "100 KB of response headers");

    let before = recorder.count();
    let te_cl = c.send("GET", "/te-cl", "3", b"").expect("answer");
    assert_eq!(te_cl.status, 502, "Transfer-Encoding with Content-Length");
    let gzip = c.send("GET", "/te-gzip", "3g", b"").expect("answer");
    assert_eq!(
        gzip.status, 502,
        "a transfer coding other than chunked (the client would get it undone as plain)"
    );
    let ok = c.send("GET", "/ok", "4", b"").expect("answer");
    assert_eq!((ok.status, ok.id.as_deref()), (200, Some("4")));
    let seen = recorder.requests(before);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[0].conn != seen[1].conn && seen[1].conn != seen[2].conn,
        "a connection that carried a refused response was used again: {seen:?}"
    );

    // Reset after 100 of 1000 body bytes: the head has gone to the client, so the client's
    // connection is closed short of the announced length.
    let (got, closed, _) = get_until_close(addr, "/reset-mid");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "connection left open after the backend reset");
    assert!(body_after_head(&got) < 1000, "{text}");

    // No answer at all: 504 after the response timeout (2 s).
    let started = Instant::now();
    let silent = c.send("GET", "/silent", "5", b"").expect("answer");
    println!(
        "silent backend: {} after {:?}",
        silent.status,
        started.elapsed()
    );
    assert_eq!(silent.status, 504);

    // Stalls after the head and 10 of 100 bytes: cut after the response timeout (2 s).
    let (got, closed, took) = get_until_close(addr, "/stall");
    println!(
        "stalled body: {} body bytes, closed={closed} after {took:?}",
        body_after_head(&got)
    );
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(closed, "a stalled response was not cut within 10 s");
    assert!(body_after_head(&got) < 100);
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(recorder.invalid().is_empty(), "{:?}", recorder.invalid());
}

#[test]
fn a_pooled_connection_closed_under_a_request_is_resent_only_if_idempotent() {
    let dir = edgelb_tests::certs::TempDir::new();
    let recorder = Recorder::start();
    let (_lb, addr) = edgelb(&recorder, dir.path());
    let mut c = Client::new(addr);
    // The first /stale of a backend connection is answered; the next one on it is read and
    // the connection closed without an answer.
    for id in ["g1", "g2", "g3"] {
        let a = c.send("GET", "/stale", id, b"").expect("answer");
        assert_eq!((a.status, a.id.as_deref()), (200, Some(id)), "GET {id}");
    }
    let gets = |id: &str| {
        recorder
            .requests(0)
            .iter()
            .filter(|s| s.header("x-request-id") == Some(id))
            .count()
    };
    println!(
        "backend saw g1 {}x, g2 {}x, g3 {}x",
        gets("g1"),
        gets("g2"),
        gets("g3")
    );
    assert_eq!(gets("g1"), 1);
    assert_eq!(gets("g2"), 2, "resent once on another connection");
    assert_eq!(gets("g3"), 2);

    let p = c.send("POST", "/stale", "p1", b"once").expect("answer");
    assert_eq!(p.status, 502, "{p:?}");
    assert_eq!(gets("p1"), 1, "a POST must not be resent");
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads `GET /big?mib=N` through edgelb as fast as possible; the body bytes and the time.
fn stream_big(addr: SocketAddr, mib: u64) -> (u64, Duration) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let started = Instant::now();
    tcp.write_all(format!("GET /big?mib={mib} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
        .expect("write");
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut body = 0u64;
    let want = mib << 20;
    while body < want {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{body} of {want} bytes after 3 minutes"
        );
        let n = tcp.read(&mut buf).expect("read the big body");
        assert!(n > 0, "closed after {body} of {want} body bytes");
        if head.ends_with(b"\r\n\r\n") {
            body += n as u64;
        } else {
            // The head is small and comes first: split it off this read.
            let mut i = 0;
            while i < n && !head.ends_with(b"\r\n\r\n") {
                head.push(buf[i]);
                i += 1;
            }
            body += (n - i) as u64;
        }
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    (body, started.elapsed())
}

#[test]
fn a_1_gib_response_streams_in_flat_memory() {
    let dir = edgelb_tests::certs::TempDir::new();
    let recorder = Recorder::start();
    let (lb, addr) = edgelb(&recorder, dir.path());
    let pid = lb.pid();
    // Warm up: pools, buffers and worker threads exist before the baseline.
    stream_big(addr, 16);
    let baseline = vm_rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(vm_rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let (bytes, took) = stream_big(addr, 1024);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().expect("sampler");
    let after = vm_rss_kib(pid);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "1 GiB through edgelb in {took:.1?} ({:.0} MiB/s); edgelb VmRSS {baseline} KiB before, \
         peak {peak} KiB, {after} KiB after (growth {} KiB)",
        bytes as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        peak.saturating_sub(baseline)
    );
    assert_eq!(bytes, 1 << 30);
    assert!(
        peak.saturating_sub(baseline) < 64 * 1024,
        "edgelb grew by {} KiB while streaming",
        peak - baseline
    );
}

#[test]
fn responses_never_reach_another_client() {
    let dir = edgelb_tests::certs::TempDir::new();
    let recorder = Recorder::start();
    let (_lb, addr) = edgelb(&recorder, dir.path());
    const ROUNDS: usize = 60;
    // Client A makes the backend misbehave; client B asks for plain answers meanwhile.
    let a = std::thread::spawn(move || {
        let mut c = Client::new(addr);
        let paths = ["/splice", "/te-cl", "/bad-status", "/reset-mid", "/ok"];
        let mut wrong = Vec::new();
        let mut statuses = std::collections::BTreeMap::new();
        for i in 0..ROUNDS {
            let path = paths[i % paths.len()];
            let id = format!("a-{i}");
            match c.send("GET", path, &id, b"") {
                Some(ans) => {
                    *statuses
                        .entry(format!("{path} {}", ans.status))
                        .or_insert(0) += 1;
                    if ans.id.as_deref().is_some_and(|got| got != id) {
                        wrong.push(format!("{path} {id} got {ans:?}"));
                    }
                }
                None => *statuses.entry(format!("{path} cut")).or_insert(0) += 1,
            }
        }
        (wrong, statuses)
    });
    let b = std::thread::spawn(move || {
        let mut c = Client::new(addr);
        let mut wrong = Vec::new();
        for i in 0..ROUNDS * 2 {
            let id = format!("b-{i}");
            match c.send("GET", "/ok", &id, b"") {
                Some(ans) if ans.status == 200 && ans.id.as_deref() == Some(id.as_str()) => {}
                other => wrong.push(format!("{id} got {other:?}")),
            }
        }
        wrong
    });
    let (wrong_a, statuses) = a.join().expect("client a");
    let wrong_b = b.join().expect("client b");
    println!("client A outcomes: {statuses:?}");
    assert!(wrong_a.is_empty(), "client A: {wrong_a:?}");
    assert!(wrong_b.is_empty(), "client B: {wrong_b:?}");
}

/// Bodies over the 64 KiB edgelb reads before forwarding stream through intact, with the
/// framing they came with (`Content-Length` or chunked, re-encoded).
#[test]
fn large_request_bodies_stream_through_intact() {
    let dir = edgelb_tests::certs::TempDir::new();
    let recorder = Recorder::start();
    let (_lb, addr) = edgelb(&recorder, dir.path());
    let body: Vec<u8> = (0..200 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut c = Client::new(addr);
    let a = c.send("POST", "/up", "cl", &body).expect("answer");
    assert_eq!((a.status, a.id.as_deref()), (200, Some("cl")));

    let mut chunked =
        b"POST /up HTTP/1.1\r\nhost: t\r\nx-request-id: te\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for part in body.chunks(4096) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let ex = edgelb_tests::raw::exchange_tcp(addr, &chunked);
    assert_eq!(ex.finals(), vec![200], "{}", ex.outcome());

    let seen = recorder.requests(0);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("content-length"), Some("204800"));
    assert_eq!(seen[1].header("transfer-encoding"), Some("chunked"));
    for s in &seen {
        assert!(s.body == body, "{} body bytes differ", s.body.len());
    }
    assert!(recorder.invalid().is_empty());
}

/// Every framing a backend may answer with reaches the client whole, and the backend
/// connection is reused after each that ends cleanly (and only then).
#[test]
fn backend_framings_arrive_whole_and_clean_endings_reuse_the_connection() {
    let dir = edgelb_tests::certs::TempDir::new();
    let recorder = Recorder::start();
    let (_edgelb, addr) = edgelb(&recorder, dir.path());
    let url = |path: &str| format!("http://{addr}{path}");
    // One curl, one keep-alive connection to edgelb (so one worker, and one worker's pool of
    // backend connections), the requests in order; `--next` keeps the connection for HEAD.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http1.1",
            "-H",
            "x-request-id: f",
            "-w",
            "|%{http_code}\n",
        ])
        .args([
            url("/chunked"),
            url("/interim"),
            url("/no-content"),
            url("/plain"),
            url("/http10"),
            url("/after"),
        ])
        .args(["--next", "-s", "-I", "--http1.1", "-H", "x-request-id: h"])
        .arg(url("/head"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.get(..6),
        Some(
            &[
                "id=f|200", "id=f|200", "|204", "id=f|200", "id=f|200", "id=f|200"
            ][..]
        ),
        "curl printed {text:?}"
    );
    let head = lines[6..].join("\n");
    assert!(
        head.starts_with("http/1.1 200") && head.contains("content-length: 4"),
        "{head:?}"
    );
    // On the wire to the client: no trailer and no interim response is passed on.
    let raw = std::process::Command::new("curl")
        .args(["-s", "-i", "--raw", "--http1.1", "-H", "x-request-id: r"])
        .args([url("/chunked"), url("/interim")])
        .output()
        .expect("curl runs");
    let raw = String::from_utf8_lossy(&raw.stdout).to_lowercase();
    assert!(raw.contains("id=r"), "{raw:?}");
    assert!(
        !raw.contains("x-trailer") && !raw.contains(" 100 ") && !raw.contains(" 103 "),
        "{raw:?}"
    );
    let seen: Vec<(String, usize)> = recorder
        .requests(0)
        .iter()
        .map(|r| (r.path.clone(), r.conn))
        .collect();
    let conn_of = |path: &str| {
        seen.iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("{path} never reached the backend: {seen:?}"))
    };
    // Chunked (with extensions and trailers), interim responses, 204 and a plain length all
    // end cleanly: one backend connection carries them all. The HTTP/1.0 answer ends with its
    // connection, so what follows needs another; HEAD's length is not a body to wait for.
    let first = conn_of("/chunked");
    for path in ["/interim", "/no-content", "/plain", "/http10"] {
        assert_eq!(conn_of(path), first, "{path} on a new connection: {seen:?}");
    }
    assert_ne!(
        conn_of("/after"),
        first,
        "reused a connection that had ended: {seen:?}"
    );
    assert_eq!(conn_of("/head"), conn_of("/after"), "{seen:?}");
}

/// What `tcp` receives up to the end of a request or response head (less if it closes first).
fn read_head(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A client uploading for longer than `--response-timeout` (2 s here) is served: the backend's
/// time to answer starts once it has the whole request. Empty POSTs reach the backend with
/// `Content-Length: 0` (RFC 9110 8.6; IIS answers 411 without it), GETs without one.
#[test]
fn an_upload_longer_than_the_response_timeout_is_served() {
    let dir = edgelb_tests::certs::TempDir::new();
    let recorder = Recorder::start();
    let (_lb, addr) = edgelb(&recorder, dir.path());
    let body: Vec<u8> = (0..256 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "POST /up HTTP/1.1\r\nhost: t\r\nx-request-id: slow\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).expect("head");
    let started = Instant::now();
    // 16 pieces, 250 ms apart: 4 s of upload.
    for piece in body.chunks(16 * 1024) {
        tcp.write_all(piece).expect("body");
        std::thread::sleep(Duration::from_millis(250));
    }
    let text = read_head(&mut tcp);
    println!(
        "a 256 KiB upload over {:?}: {}",
        started.elapsed(),
        text.lines().next().unwrap_or("")
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = recorder.requests(0);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].body == body,
        "{} body bytes arrived",
        seen[0].body.len()
    );

    let mut c = Client::new(addr);
    assert_eq!(
        c.send("POST", "/empty", "e", b"").map(|a| a.status),
        Some(200)
    );
    assert_eq!(c.send("GET", "/get", "g", b"").map(|a| a.status), Some(200));
    let seen = recorder.requests(1);
    assert_eq!(seen[0].header("content-length"), Some("0"), "empty POST");
    assert_eq!(seen[1].header("content-length"), None, "GET");
}

/// Connects to `addr` and POSTs a `len`-byte body from a thread of its own until the body is
/// sent or edgelb stops taking it; the returned stream reads the answer (10 s at most).
fn upload_in_background(addr: SocketAddr, len: usize) -> (TcpStream, std::thread::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = tcp.try_clone().expect("clone");
    let uploading = std::thread::spawn(move || {
        let head = format!("POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: {len}\r\n\r\n");
        let _ = writer.write_all(head.as_bytes());
        let piece = vec![b'u'; 64 * 1024];
        for _ in 0..len / piece.len() {
            if writer.write_all(&piece).is_err() {
                break;
            }
        }
    });
    (tcp, uploading)
}

/// A backend that refuses an upload before reading it (413 and close, as a size limit does) is
/// heard: the client gets its 413, not a 502 for the write that failed after it.
#[test]
fn a_backend_answering_before_the_whole_body_is_heard() {
    let dir = edgelb_tests::certs::TempDir::new();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("bound");
    std::thread::spawn(move || {
        for mut s in backend.incoming().flatten() {
            read_head(&mut s);
            let _ = s.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n",
            );
            // Closed with the body unread: the kernel resets the connection.
        }
    });
    let (_lb, addr) = edgelb_tests::listener::start_http(
        backend_addr,
        &["--health-check", "off", "--response-timeout", "2"],
        dir.path(),
    );
    // Until edgelb stops reading (it answered) or the body is sent.
    let (mut tcp, uploading) = upload_in_background(addr, 8 << 20);
    let text = read_head(&mut tcp);
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    drop(tcp);
    let _ = uploading.join();
}

/// A client that stops sending in the middle of a streamed upload gets 408, as one whose body
/// is read whole does, and the backend is not blamed (no 502).
#[test]
fn a_client_stalling_in_a_streamed_upload_gets_408() {
    let dir = edgelb_tests::certs::TempDir::new();
    let recorder = Recorder::start();
    let (_lb, addr) = edgelb_tests::listener::start_http(
        recorder.addr,
        &["--health-check", "off", "--request-timeout", "1"],
        dir.path(),
    );
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 1048576\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'u'; 100 * 1024]);
    tcp.write_all(&req).expect("part of the body");
    let text = read_head(&mut tcp);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
}

/// A backend that accepts a connection and never reads from it cannot hold an upload for
/// ever: once the socket buffers are full, the write waits `--response-timeout` (2 s here) and
/// the client gets 504 (a POST is not retried elsewhere).
#[test]
fn a_backend_that_takes_no_part_of_an_upload_gives_504_at_the_response_timeout() {
    let dir = edgelb_tests::certs::TempDir::new();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = backend.local_addr().expect("bound");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for s in backend.incoming().flatten() {
            // Kept open, never read.
            holder.lock().expect("held").push(s);
        }
    });
    let (_lb, addr) = edgelb_tests::listener::start_http(
        backend_addr,
        &["--health-check", "off", "--response-timeout", "2"],
        dir.path(),
    );
    let started = Instant::now();
    // Far more than loopback's socket buffers hold between edgelb and the backend.
    let (mut tcp, uploading) = upload_in_background(addr, 64 << 20);
    let text = read_head(&mut tcp);
    let took = started.elapsed();
    println!(
        "a backend that reads nothing: {:?} after {took:?}",
        text.lines().next()
    );
    assert!(text.starts_with("HTTP/1.1 504"), "{text:?}");
    assert!(
        took >= Duration::from_secs(2),
        "answered before the response timeout: {took:?}"
    );
    // The writer's copy of the socket too, should edgelb keep it open.
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    let _ = uploading.join();
    assert!(
        !held.lock().expect("held").is_empty(),
        "the backend saw no connection"
    );
}
