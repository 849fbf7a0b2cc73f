//! Hostile HTTP/2 clients against edgelb's h2 limits (`lb_userspace::server::h2`): rapid
//! reset, CONTINUATION floods, control-frame floods (SETTINGS, PING, WINDOW_UPDATE, PRIORITY,
//! RST_STREAM, empty DATA, unknown types), too many concurrent streams, oversized and
//! connection-specific headers, and a client that stops taking its response. Frames are
//! written by hand over a rustls connection with ALPN h2 (the `h2` crate, as a client, refuses
//! to send most of them). Each test samples the daemon's RSS and descriptors throughout,
//! prints the peaks, and checks that a normal client is still served.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgelb_tests::admin;
use edgelb_tests::backend::{Backend, big_backend};
use edgelb_tests::daemon::Daemon;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};
use edgelb_tests::peaks::Peaks;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix, the prefix's other bits being `first`.
fn hpack_int(out: &mut Vec<u8>, n: u8, first: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Header fields as HPACK literals without indexing, names and values not Huffman-coded.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 7, 0, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 7, 0, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "https"),
        (":authority", SERVER_NAME),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    hpack(&fields)
}

/// A header block as HEADERS plus CONTINUATION frames of at most 16 KiB each.
fn header_frames(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut flags = if last { END_HEADERS } else { 0 };
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        out.extend(frame(
            if i == 0 { HEADERS } else { CONTINUATION },
            flags,
            stream,
            chunk,
        ));
    }
    out
}

/// The `:status` of a response header block from h2's encoder (this client sets the header
/// table size to 0, so the status is a static index or a literal, Huffman-coded).
fn status(block: &[u8]) -> Option<u16> {
    let mut i = 0;
    while block.get(i)? & 0xe0 == 0x20 {
        i += 1; // dynamic table size update (to 0: one byte)
    }
    let b = *block.get(i)?;
    if b & 0x80 != 0 {
        return [200, 204, 206, 304, 400, 404, 500]
            .get(usize::from(b & 0x7f).checked_sub(8)?)
            .copied();
    }
    // Literal with the indexed name 8 (`:status`), with or without indexing.
    if b & 0x0f != 8 && b & 0x3f != 8 {
        return None;
    }
    let len = usize::from(block.get(i + 1)? & 0x7f);
    let value = block.get(i + 2..i + 2 + len)?;
    if block[i + 1] & 0x80 == 0 {
        return std::str::from_utf8(value).ok()?.parse().ok();
    }
    // Huffman: the digits are 0-2 = 00000..00010 (5 bits), 3-9 = 011001..011111 (6 bits).
    let bits: Vec<u8> = value
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |k| (byte >> k) & 1))
        .collect();
    let (mut pos, mut n) = (0, 0u16);
    for _ in 0..3 {
        let take = |len: usize| {
            bits.get(pos..pos + len)
                .map(|b| b.iter().fold(0u8, |a, bit| a << 1 | bit))
        };
        let five = take(5)?;
        let digit = if five < 3 {
            pos += 5;
            five
        } else {
            let six = take(6)?;
            pos += 6;
            six.checked_sub(22)?
        };
        n = n * 10 + u16::from(digit);
    }
    Some(n)
}

/// What the server sent on one connection.
#[derive(Default, Debug, Clone)]
struct Seen {
    frames: HashMap<u8, usize>,
    settings: Vec<(u16, u32)>,
    goaway: Option<(u32, u32)>,
    /// The GOAWAY's debug data, if any.
    why: String,
    resets: Vec<(u32, u32)>,
    statuses: Vec<(u32, u16)>,
    data_bytes: usize,
    closed: Option<Instant>,
}

impl Seen {
    fn count(&self, kind: u8) -> usize {
        self.frames.get(&kind).copied().unwrap_or(0)
    }
    fn resets_with(&self, code: u32) -> usize {
        self.resets.iter().filter(|(_, c)| *c == code).count()
    }
    fn status_of(&self, stream: u32) -> Option<u16> {
        self.statuses
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, st)| *st)
    }
    fn reset_of(&self, stream: u32) -> Option<u32> {
        self.resets
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, c)| *c)
    }
}

/// A raw HTTP/2 client connection. A task reads and records every frame (unless the test
/// wants a client that never reads); the test writes whatever frames it likes.
struct Raw {
    w: WriteHalf<TlsStream<TcpStream>>,
    r: Option<ReadHalf<TlsStream<TcpStream>>>,
    seen: Arc<Mutex<Seen>>,
    next: u32,
}

impl Raw {
    /// Connects, sends the preface and SETTINGS (header table 0, no push, and
    /// `initial_window` if given), and, when `read`, starts the reader and acknowledges the
    /// server's SETTINGS.
    async fn connect(addr: SocketAddr, s: &Setup, read: bool, initial_window: Option<u32>) -> Raw {
        let mut opts = ClientOpts::new(&s.ca.cert_pem);
        opts.alpn = &[b"h2"];
        let tls = https::connect(addr, SERVER_NAME, opts.config())
            .await
            .expect("TLS handshake");
        assert_eq!(https::session(&tls).alpn.as_deref(), Some(&b"h2"[..]));
        let (r, mut w) = tokio::io::split(tls);
        let mut settings = vec![0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0];
        if let Some(win) = initial_window {
            settings.extend_from_slice(&[0, 4]);
            settings.extend_from_slice(&win.to_be_bytes());
        }
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &settings));
        w.write_all(&hello).await.expect("preface");
        let mut raw = Raw {
            w,
            r: Some(r),
            seen: Arc::default(),
            next: 1,
        };
        if read {
            raw.start_reader();
            let deadline = Instant::now() + Duration::from_secs(5);
            while raw.seen().settings.is_empty() {
                assert!(Instant::now() < deadline, "no SETTINGS from the server");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            raw.send(&frame(SETTINGS, ACK, 0, &[])).await.expect("ack");
        }
        raw
    }

    fn start_reader(&mut self) {
        let mut r = self.r.take().expect("one reader");
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 9];
            let mut payload = Vec::new();
            loop {
                if r.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                payload.resize(len, 0);
                if r.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let mut seen = seen.lock().unwrap();
                *seen.frames.entry(kind).or_default() += 1;
                match kind {
                    SETTINGS if flags & ACK == 0 => {
                        for s in payload.chunks_exact(6) {
                            seen.settings.push((
                                u16::from_be_bytes([s[0], s[1]]),
                                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                            ));
                        }
                    }
                    GOAWAY if len >= 8 => {
                        let last = u32::from_be_bytes(payload[0..4].try_into().unwrap());
                        let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                        seen.goaway = Some((last, code));
                        seen.why = String::from_utf8_lossy(&payload[8..]).into_owned();
                    }
                    RST_STREAM if len == 4 => {
                        let code = u32::from_be_bytes(payload[0..4].try_into().unwrap());
                        seen.resets.push((stream, code));
                    }
                    HEADERS => {
                        if let Some(st) = status(&payload) {
                            seen.statuses.push((stream, st));
                        }
                    }
                    DATA => seen.data_bytes += len,
                    _ => {}
                }
            }
            seen.lock().unwrap().closed = Some(Instant::now());
        });
    }

    /// A copy of what was seen so far.
    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    fn stream(&mut self) -> u32 {
        let id = self.next;
        self.next += 2;
        id
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes).await?;
        self.w.flush().await
    }

    /// Waits until `done` holds for what was seen, at most `within`.
    async fn wait(&self, within: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.seen()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A normal HTTP/2 request on a new connection gets 200.
async fn normal_client_served(s: &Setup, addr: SocketAddr) {
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let reply = https::send(addr, SERVER_NAME, config, get("/"))
        .await
        .expect("a normal request");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.session.alpn.as_deref(), Some(&b"h2"[..]));
}

/// Asserts memory and descriptors stayed within `rss_growth` KiB and `fd_growth` of the start.
fn assert_bounded(peaks: &Peaks, what: &str, rss_growth: u64, fd_growth: u64) {
    let (rss, fds) = peaks.report(what);
    assert!(
        rss <= peaks.base.0 + rss_growth,
        "{what}: RSS grew from {} to {rss} KiB",
        peaks.base.0
    );
    assert!(
        fds <= peaks.base.1 + fd_growth,
        "{what}: descriptors grew from {} to {fds}",
        peaks.base.1
    );
}

fn start(s: &Setup, backend: &Backend, timeouts: &str) -> (Daemon, SocketAddr) {
    let be = backend.addr.to_string();
    s.start(&[
        "--backend",
        &be,
        "--idle-timeout",
        timeouts,
        "--request-timeout",
        timeouts,
    ])
}

#[tokio::test]
async fn settings_advertise_the_chosen_limits() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (_lb, addr) = start(&s, &backend, "5");
    let c = Raw::connect(addr, &s, true, None).await;
    let settings = c.seen().settings.clone();
    eprintln!("server SETTINGS: {settings:?}");
    let get = |id: u16| settings.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    assert_eq!(get(3), Some(100), "MAX_CONCURRENT_STREAMS");
    assert_eq!(get(4), Some(256 * 1024), "INITIAL_WINDOW_SIZE");
    assert_eq!(get(5), Some(16 * 1024), "MAX_FRAME_SIZE");
    assert_eq!(get(6), Some(32 * 1024), "MAX_HEADER_LIST_SIZE");
}

#[tokio::test]
async fn rapid_reset_ends_the_connection_with_goaway_and_others_are_served() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (lb, addr) = start(&s, &backend, "5");
    let peaks = Peaks::watch(&lb);
    let block = request("GET", "/", &[]);
    let mut total_sent = 0;
    let mut per_connection = Vec::new();
    let started = Instant::now();
    for _ in 0..10 {
        let mut c = Raw::connect(addr, &s, true, None).await;
        let mut sent = 0u32;
        // HEADERS + RST_STREAM(CANCEL), 50 streams per write, until the server gives up
        // (100,000 streams at most).
        while sent < 100_000 {
            let mut burst = Vec::new();
            for _ in 0..50 {
                let id = c.stream();
                burst.extend(header_frames(id, &block, true));
                burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            }
            if c.send(&burst).await.is_err() {
                break;
            }
            sent += 50;
            let seen = c.seen();
            if seen.goaway.is_some() || seen.closed.is_some() {
                break;
            }
        }
        assert!(
            c.wait(Duration::from_secs(5), |s| s.closed.is_some()).await,
            "connection still open after {sent} reset streams"
        );
        let seen = c.seen();
        per_connection.push((sent, seen.goaway, seen.statuses.len()));
        total_sent += sent;
        assert_eq!(
            seen.goaway.map(|g| g.1),
            Some(ENHANCE_YOUR_CALM),
            "{sent} streams: {seen:?}"
        );
    }
    eprintln!(
        "rapid reset: 10 connections, {total_sent} streams opened and reset in {:?}; per connection (streams sent, GOAWAY (last stream, code), responses): {per_connection:?}; backend requests {}",
        started.elapsed(),
        backend.served()
    );
    normal_client_served(&s, addr).await;

    // Paced: each stream reset once the server has accepted it and passed it on (the backend
    // has the request). These are not pending-accept resets, so they do not count against the
    // limit; each costs what a request does, and at most 100 are open at a time. Waiting for
    // the backend, not a fixed pause: a stalled worker would read HEADERS and RST_STREAM in
    // one go, and that is a pending-accept reset.
    let served_before = backend.served();
    let mut c = Raw::connect(addr, &s, true, None).await;
    let mut paced = 0;
    let started = Instant::now();
    while paced < 500 {
        let id = c.stream();
        if c.send(&header_frames(id, &block, true)).await.is_err() {
            break;
        }
        backend.wait_served(served_before + paced + 1).await;
        if c.send(&frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()))
            .await
            .is_err()
        {
            break;
        }
        paced += 1;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let seen = c.seen();
        eprintln!(
            "paced reset: {paced} streams opened and reset once at the backend, in {:?}: {} responses, {} backend requests, GOAWAY {:?} {:?}",
            started.elapsed(),
            seen.statuses.len(),
            backend.served() - served_before,
            seen.goaway,
            seen.why
        );
        // Normal use: a client that cancels what it asked for keeps its connection.
        assert_eq!(
            paced, 500,
            "the connection failed after {paced} paced resets: {seen:?}"
        );
        assert!(
            seen.goaway.is_none() && seen.closed.is_none(),
            "paced resets ended the connection: {seen:?}"
        );
        assert_eq!(
            backend.served() - served_before,
            500,
            "each paced stream reaches the backend before it is reset"
        );
    }
    normal_client_served(&s, addr).await;
    assert_bounded(&peaks, "rapid reset", 64 * 1024, 64);
}

#[tokio::test]
async fn continuation_floods_are_cut_after_a_few_frames() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (lb, addr) = start(&s, &backend, "5");
    let peaks = Peaks::watch(&lb);

    // 1. A header value announced as 1 MiB, sent 16 KiB per CONTINUATION frame, forever.
    let mut c = Raw::connect(addr, &s, true, None).await;
    let mut block = request("GET", "/", &[]);
    block.push(0x00);
    hpack_int(&mut block, 7, 0, 5);
    block.extend_from_slice(b"x-big");
    hpack_int(&mut block, 7, 0, 1 << 20);
    let id = c.stream();
    c.send(&frame(HEADERS, END_STREAM, id, &block))
        .await
        .expect("headers");
    let junk = vec![b'a'; 16 * 1024];
    let mut frames = 0;
    while frames < 10_000 && c.send(&frame(CONTINUATION, 0, id, &junk)).await.is_ok() {
        frames += 1;
        if c.seen().goaway.is_some() {
            break;
        }
    }
    assert!(c.wait(Duration::from_secs(5), |s| s.closed.is_some()).await);
    let big = c.seen().goaway;
    eprintln!("CONTINUATION flood (16 KiB frames): {frames} frames written, GOAWAY {big:?}");
    assert_eq!(big.map(|g| g.1), Some(ENHANCE_YOUR_CALM));

    // 2. Empty CONTINUATION frames, as fast as they go.
    let mut c = Raw::connect(addr, &s, true, None).await;
    let id = c.stream();
    c.send(&frame(HEADERS, END_STREAM, id, &request("GET", "/", &[])))
        .await
        .expect("headers");
    let burst: Vec<u8> = (0..1000)
        .flat_map(|_| frame(CONTINUATION, 0, id, &[]))
        .collect();
    let mut frames = 0;
    while frames < 1_000_000 && c.send(&burst).await.is_ok() {
        frames += 1000;
        if c.seen().goaway.is_some() {
            break;
        }
    }
    assert!(c.wait(Duration::from_secs(5), |s| s.closed.is_some()).await);
    let empty = c.seen().goaway;
    eprintln!("CONTINUATION flood (empty frames): {frames} frames written, GOAWAY {empty:?}");
    assert_eq!(empty.map(|g| g.1), Some(ENHANCE_YOUR_CALM));

    normal_client_served(&s, addr).await;
    assert_bounded(&peaks, "CONTINUATION flood", 32 * 1024, 32);
}

/// Writes `prelude`, then `unit` (some control frame) up to `n` times in bursts of 1,000, on
/// one connection; returns what the server sent and how long it took to close the connection
/// after the flood began.
async fn control_flood(
    s: &Setup,
    addr: SocketAddr,
    prelude: &[u8],
    unit: &[u8],
    n: usize,
    read: bool,
) -> (Seen, usize, Duration) {
    let mut c = Raw::connect(addr, s, read, None).await;
    if !prelude.is_empty() {
        c.send(prelude).await.expect("prelude");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let burst: Vec<u8> = (0..1000).flat_map(|_| unit.to_vec()).collect();
    let started = Instant::now();
    let mut written = 0;
    while written < n {
        // A client that does not read: the server stops reading too once its answers fill
        // the socket, and the write stalls. Give up on it after a second.
        match tokio::time::timeout(Duration::from_secs(1), c.send(&burst)).await {
            Ok(Ok(())) => written += 1000,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    if !read {
        // Drain what the server wrote, to see the end of the connection.
        c.start_reader();
    }
    let closed = c
        .wait(Duration::from_secs(30), |s| s.closed.is_some())
        .await;
    let seen = c.seen();
    assert!(closed, "connection not closed: {seen:?}");
    let took = seen.closed.map_or(Duration::MAX, |t| t - started);
    (seen, written, took)
}

/// One connection flooding the server with one kind of control frame (the 2019 HTTP/2 flood
/// family), reading the answers or not, is ended with GOAWAY ENHANCE_YOUR_CALM after a
/// bounded number of frames, long before the idle timeout (30 s here), and counted; other
/// clients are served throughout. Without the guard, h2 answers every PING and SETTINGS and
/// absorbs the rest until the idle timeout.
#[tokio::test]
async fn control_frame_floods_end_with_goaway_enhance_your_calm() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (be, admin) = (backend.addr.to_string(), free_addr().to_string());
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--idle-timeout",
        "30",
        "--request-timeout",
        "30",
        "--admin",
        &admin,
    ]);
    let peaks = Peaks::watch(&lb);
    // An open request whose body never comes, for empty DATA frames to belong to.
    let post = header_frames(1, &request("POST", "/echo", &[]), false);
    // A request answered and closed, for RST_STREAM frames to name.
    let done = header_frames(1, &request("GET", "/", &[]), true);
    // The label the flood is counted under; empty DATA frames are caught by h2 itself first
    // ("too_many_data_frames", also GOAWAY ENHANCE_YOUR_CALM), so not counted by edgelb.
    let floods = [
        (
            "SETTINGS",
            Some("settings"),
            vec![],
            frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]),
        ),
        (
            "PING",
            Some("ping"),
            vec![],
            frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]),
        ),
        (
            "WINDOW_UPDATE",
            Some("window_update"),
            vec![],
            frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]),
        ),
        (
            "PRIORITY",
            Some("priority"),
            vec![],
            frame(PRIORITY, 0, 3, &[0, 0, 0, 0, 16]),
        ),
        (
            "RST_STREAM on a closed stream",
            Some("rst_stream"),
            done,
            frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()),
        ),
        ("empty DATA", None, post, frame(DATA, 0, 1, &[])),
        (
            "unknown frame type",
            Some("unknown"),
            vec![],
            frame(0x20, 0, 0, &[]),
        ),
    ];
    for (name, label, prelude, unit) in &floods {
        for read in [true, false] {
            let (seen, written, took) = control_flood(&s, addr, prelude, unit, 200_000, read).await;
            let answers = seen.count(PING) + seen.count(SETTINGS);
            eprintln!(
                "{name} flood (client reading: {read}): {written} frames written; {answers} PING/SETTINGS frames from the server; GOAWAY {:?}; closed after {took:?}",
                seen.goaway
            );
            assert_eq!(
                seen.goaway.map(|g| g.1),
                Some(ENHANCE_YOUR_CALM),
                "{name} (client reading: {read}): {seen:?}"
            );
            assert!(
                took < Duration::from_secs(10),
                "{name}: closed after {took:?}"
            );
            // The allowance is 1,000 control frames (and 100 a second): the server answered
            // no more than that, whatever the client wrote.
            assert!(answers <= 2_000, "{name}: {answers} answers");
            normal_client_served(&s, addr).await;
        }
        let Some(label) = label else { continue };
        let series = format!("edgelb_h2_floods_total{{listener=\"listener-1\",frame=\"{label}\"}}");
        assert_eq!(
            admin::metric(&admin, &series),
            Some(2.0),
            "{series} in\n{}",
            admin::get(&admin, "/metrics")
        );
    }
    assert_bounded(&peaks, "control-frame floods", 32 * 1024, 32);
}

/// A client that downloads a lot over HTTP/2 sends a WINDOW_UPDATE or two for every DATA
/// frame it takes: that is not a flood. curl (32 MiB, few updates: its windows are large),
/// then the most cautious client: 64 KiB windows and a WINDOW_UPDATE for the stream and one
/// for the connection after every DATA frame (the same 32 MiB: over 4,000 updates, so
/// only the credit the server's DATA frames earn lets it through).
#[tokio::test]
async fn a_large_http2_download_is_not_taken_for_a_flood() {
    let s = Setup::new();
    const SIZE: usize = 32 << 20;
    let big = big_backend(SIZE);
    let be = big.addr.to_string();
    let (_lb, addr) = s.start(&["--backend", &be]);
    let ca = s.ca.cert_pem.to_string_lossy().into_owned();
    let out = edgelb_tests::client::curl_h2(
        &ca,
        addr,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %{size_download}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("2 200 {SIZE}"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut c = Raw::connect(addr, &s, false, None).await;
    let mut r = c.r.take().expect("reader");
    let id = c.stream();
    c.send(&header_frames(id, &request("GET", "/", &[]), true))
        .await
        .expect("request");
    let (mut received, mut updates) = (0usize, 0usize);
    let mut head = [0u8; 9];
    let mut payload = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            r.read_exact(&mut head).await.expect("frame header");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            payload.resize(len, 0);
            r.read_exact(&mut payload).await.expect("frame payload");
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    c.send(&frame(SETTINGS, ACK, 0, &[])).await.expect("ack");
                }
                GOAWAY => {
                    panic!("GOAWAY after {received} bytes and {updates} updates: {payload:?}")
                }
                DATA => {
                    received += len;
                    if len > 0 {
                        let inc = (len as u32).to_be_bytes();
                        let mut both = frame(WINDOW_UPDATE, 0, 0, &inc);
                        both.extend(frame(WINDOW_UPDATE, 0, id, &inc));
                        c.send(&both).await.expect("window updates");
                        updates += 2;
                    }
                    if flags & END_STREAM != 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(done.is_ok(), "{received} bytes in 60 s");
    eprintln!("cautious client: {received} bytes, {updates} WINDOW_UPDATEs sent");
    assert_eq!(received, SIZE);
    assert!(updates > 4_000, "{updates}");
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (lb, addr) = start(&s, &backend, "5");
    let peaks = Peaks::watch(&lb);
    let mut c = Raw::connect(addr, &s, true, None).await;
    // 150 POSTs whose bodies never come: they stay open.
    let block = request("POST", "/", &[("content-length", "10")]);
    let mut burst = Vec::new();
    for _ in 0..150 {
        let id = c.stream();
        burst.extend(header_frames(id, &block, false));
    }
    c.send(&burst).await.expect("streams");
    assert!(
        c.wait(Duration::from_secs(5), |s| s.resets.len() >= 50)
            .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (refused, first_refused, goaway) = {
        let seen = c.seen();
        (
            seen.resets_with(REFUSED_STREAM),
            seen.resets.iter().map(|(id, _)| *id).min(),
            seen.goaway,
        )
    };
    eprintln!(
        "150 concurrent streams: {refused} refused (REFUSED_STREAM), the first refused is stream {first_refused:?} (= the 101st), GOAWAY {goaway:?}"
    );
    assert_eq!(refused, 50);
    assert_eq!(first_refused, Some(201));
    assert_eq!(goaway, None);
    // The connection still works once streams are given up.
    let mut cancel = Vec::new();
    for id in (1..200).step_by(2) {
        cancel.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let id = c.stream();
    cancel.extend(header_frames(id, &request("GET", "/", &[]), true));
    c.send(&cancel).await.expect("cancel and get");
    assert!(
        c.wait(Duration::from_secs(5), |s| s.status_of(id).is_some())
            .await
    );
    assert_eq!(c.seen().status_of(id), Some(200));
    normal_client_served(&s, addr).await;
    assert_bounded(&peaks, "150 concurrent streams", 32 * 1024, 32);
}

#[tokio::test]
async fn oversized_header_lists_are_refused() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (lb, addr) = start(&s, &backend, "5");
    let peaks = Peaks::watch(&lb);
    let mut c = Raw::connect(addr, &s, true, None).await;
    let (v20, v40) = ("a".repeat(20_000), "a".repeat(40_000));
    let many: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("x-h{i}"), "v".repeat(10)))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cases = [
        ("one 20 KB header", request("GET", "/", &[("x-big", &v20)])),
        ("one 40 KB header", request("GET", "/", &[("x-big", &v40)])),
        (
            "2,000 small headers (84 KB counted)",
            request("GET", "/", &many),
        ),
        ("after them, a normal request", request("GET", "/", &[])),
    ];
    let mut ids = Vec::new();
    for (_, block) in &cases {
        let id = c.stream();
        ids.push(id);
        c.send(&header_frames(id, block, true)).await.expect("send");
    }
    let last = *ids.last().unwrap();
    assert!(
        c.wait(Duration::from_secs(5), |s| s.status_of(last).is_some())
            .await,
        "{:?}",
        c.seen()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = c.seen();
    let got: Vec<_> = cases
        .iter()
        .zip(&ids)
        .map(|((name, _), id)| (*name, seen.status_of(*id), seen.reset_of(*id)))
        .collect();
    eprintln!("header lists (case, status, RST_STREAM code): {got:?}");
    assert_eq!(got[0].1, Some(200));
    assert_eq!(got[1].1, Some(431));
    assert_eq!(got[2].1, Some(431));
    assert_eq!(got[3].1, Some(200));
    assert_eq!(seen.goaway, None);
    normal_client_served(&s, addr).await;
    assert_bounded(&peaks, "oversized header lists", 32 * 1024, 32);
}

#[tokio::test]
async fn connection_specific_headers_reset_the_stream_and_too_many_end_the_connection() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (lb, addr) = start(&s, &backend, "5");
    let peaks = Peaks::watch(&lb);
    let mut c = Raw::connect(addr, &s, true, None).await;
    let bad: [(&str, &str); 6] = [
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
    ];
    let mut ids = Vec::new();
    for header in bad {
        let id = c.stream();
        ids.push(id);
        c.send(&header_frames(id, &request("GET", "/", &[header]), true))
            .await
            .expect("send");
    }
    let ok = c.stream();
    c.send(&header_frames(
        ok,
        &request("GET", "/", &[("te", "trailers")]),
        true,
    ))
    .await
    .expect("send");
    assert!(
        c.wait(Duration::from_secs(5), |s| s.status_of(ok).is_some())
            .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let seen = c.seen();
        let got: Vec<_> = bad
            .iter()
            .zip(&ids)
            .map(|((k, _), id)| (*k, seen.status_of(*id), seen.reset_of(*id)))
            .collect();
        eprintln!("connection-specific headers (header, status, RST_STREAM code): {got:?}");
        for (k, status, reset) in got {
            assert!(
                reset == Some(PROTOCOL_ERROR) || status == Some(400),
                "{k}: status {status:?}, reset {reset:?}"
            );
        }
        assert_eq!(seen.status_of(ok), Some(200), "te: trailers is allowed");
        assert_eq!(seen.goaway, None);
    }
    // A client that keeps sending malformed requests, one at a time: the connection ends.
    let mut sent = 0;
    while sent < 1000 {
        let id = c.stream();
        let burst = header_frames(id, &request("GET", "/", &[bad[0]]), true);
        if c.send(&burst).await.is_err() {
            break;
        }
        sent += 1;
        c.wait(Duration::from_secs(5), |s| {
            s.reset_of(id).is_some() || s.goaway.is_some()
        })
        .await;
        if c.seen().goaway.is_some() {
            break;
        }
    }
    assert!(c.wait(Duration::from_secs(5), |s| s.closed.is_some()).await);
    let seen = c.seen();
    eprintln!(
        "malformed requests on one connection: {} resets, then GOAWAY {:?} {:?} ({sent} more sent)",
        seen.resets_with(PROTOCOL_ERROR),
        seen.goaway,
        seen.why
    );

    assert_eq!(seen.goaway.map(|g| g.1), Some(ENHANCE_YOUR_CALM));
    assert_eq!(seen.resets_with(PROTOCOL_ERROR), 64);
    normal_client_served(&s, addr).await;
    assert_bounded(&peaks, "connection-specific headers", 32 * 1024, 32);
}

#[tokio::test]
async fn an_h2_client_that_stops_taking_its_response_is_cut() {
    let s = Setup::new();
    const SIZE: usize = 256 << 20;
    let big = big_backend(SIZE);
    let be = big.addr.to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--idle-timeout",
        "3",
        "--request-timeout",
        "3",
    ]);
    let peaks = Peaks::watch(&lb);
    // 1. Reads every frame but never sends WINDOW_UPDATE: 64 KiB of a 256 MiB response.
    let mut c = Raw::connect(addr, &s, true, None).await;
    let id = c.stream();
    let started = Instant::now();
    c.send(&header_frames(id, &request("GET", "/", &[]), true))
        .await
        .expect("request");
    assert!(
        c.wait(Duration::from_secs(20), |s| s.closed.is_some())
            .await,
        "connection still open: {:?}",
        c.seen()
    );
    let seen = c.seen();
    eprintln!(
        "h2 client giving no window: status {:?}, {} bytes of DATA received, closed after {:?}, GOAWAY {:?}; backend wrote {} bytes",
        seen.status_of(id),
        seen.data_bytes,
        seen.closed.map(|t| t - started),
        seen.goaway,
        big.written.load(Ordering::Relaxed)
    );
    assert_eq!(seen.status_of(id), Some(200));
    // The backend's side of it ends too (its thread may see that a moment after the client).
    let deadline = Instant::now() + Duration::from_secs(10);
    while big.ended.load(Ordering::Relaxed) < 1 {
        assert!(
            Instant::now() < deadline,
            "the backend connection outlived the client's"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 2. A huge window, and then never reading the socket.
    let mut c = Raw::connect(addr, &s, true, Some(0x7fff_ffff)).await;
    let mut update = frame(WINDOW_UPDATE, 0, 0, &0x7fff_0000u32.to_be_bytes());
    let id = c.stream();
    update.extend(header_frames(id, &request("GET", "/", &[]), true));
    let started = Instant::now();
    let before = big.written.load(Ordering::Relaxed);
    c.send(&update).await.expect("request");
    c.wait(Duration::from_secs(5), |s| s.data_bytes > 0).await;
    // This runtime has one thread: while the test sleeps here nothing reads the socket.
    let ended = big.ended.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && big.ended.load(Ordering::Relaxed) == ended {
        std::thread::sleep(Duration::from_millis(50));
    }
    let closed_at = started.elapsed();
    let written = big.written.load(Ordering::Relaxed) - before;
    eprintln!(
        "h2 client not reading its socket: backend connection closed by edgelb after {closed_at:?}, the backend wrote {written} bytes ({} MiB) before that",
        written >> 20
    );
    assert_eq!(
        big.ended.load(Ordering::Relaxed),
        2,
        "both backend connections cut"
    );
    normal_client_served_any(&s, addr).await;
    assert_bounded(&peaks, "h2 slow readers", 64 * 1024, 32);
}

async fn normal_client_served_any(s: &Setup, addr: SocketAddr) {
    // The big backend answers with 256 MiB: only check that the response starts.
    let mut c = Raw::connect(addr, s, true, None).await;
    let id = c.stream();
    c.send(&header_frames(id, &request("GET", "/", &[]), true))
        .await
        .expect("request");
    assert!(
        c.wait(Duration::from_secs(5), |s| s.status_of(id) == Some(200))
            .await
    );
}
