//! HTTP/1.1 as raw bytes, for the hardening tests: a backend that records every byte it
//! receives and parses it with a strict parser of its own (the "second parser" behind a
//! proxy), with paths that make it misbehave; a client that sends raw bytes and splits what
//! comes back into responses; HAProxy as a reference proxy.
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the recording backend parsed it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which backend connection it came on (counted from 0).
    pub conn: usize,
    /// Its position on that connection.
    pub index: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The exact bytes, head and body.
    pub raw: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Log {
    requests: Vec<Seen>,
    /// Bytes no strict parser could frame: (connection, reason, bytes).
    invalid: Vec<(usize, String, Vec<u8>)>,
    /// Per connection, bytes received that do not make a whole request yet.
    pending: std::collections::BTreeMap<usize, Vec<u8>>,
    connections: usize,
}

/// A backend on 127.0.0.1 that records and strictly parses every request. By path:
/// - `/reset-mid`: a 200 head announcing 1000 bytes, 100 of them, then a TCP reset,
/// - `/bad-status`: a malformed status line,
/// - `/te-cl`: a response with both Transfer-Encoding and Content-Length,
/// - `/stall`: a 200 head announcing 100 bytes, 10 of them, then nothing for 20 s,
/// - `/silent`: no answer at all for 20 s,
/// - `/stale`: answered as the first request of a connection; later on a connection, read
///   and the connection closed without an answer (a keep-alive close racing a reuse),
/// - `/big?mib=N`: N MiB of body,
/// - `/huge-headers`: 100 KB of response headers,
/// - `/splice`: a correct response followed, in the same write, by a second unasked one
///   carrying `x-request-id: evil`,
/// - anything else: 200 with `x-request-id` echoed and `id=<request id>` as the body.
pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = listener.local_addr().expect("bound");
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let conn = {
                    let mut log = l.lock().expect("log");
                    log.connections += 1;
                    log.connections - 1
                };
                let l = l.clone();
                std::thread::spawn(move || serve(stream, conn, &l));
            }
        });
        Recorder { addr, log }
    }

    /// Requests seen so far, from `from` on.
    pub fn requests(&self, from: usize) -> Vec<Seen> {
        self.log.lock().expect("log").requests[from..].to_vec()
    }

    pub fn count(&self) -> usize {
        self.log.lock().expect("log").requests.len()
    }

    pub fn connections(&self) -> usize {
        self.log.lock().expect("log").connections
    }

    /// Bytes received, per connection, that are not (yet) a whole request: a backend waiting
    /// for a body that will not come.
    pub fn pending(&self) -> Vec<(usize, Vec<u8>)> {
        self.log
            .lock()
            .expect("log")
            .pending
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(c, b)| (*c, b.clone()))
            .collect()
    }

    /// What the strict parser could not frame, with the bytes.
    pub fn invalid(&self) -> Vec<(usize, String, Vec<u8>)> {
        self.log.lock().expect("log").invalid.clone()
    }
}

fn serve(mut stream: TcpStream, conn: usize, log: &Mutex<Log>) {
    let _ = stream.set_nodelay(true);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut index = 0;
    loop {
        loop {
            match parse_request(&pending) {
                Parsed::Incomplete => break,
                Parsed::Invalid(why) => {
                    log.lock()
                        .expect("log")
                        .invalid
                        .push((conn, why, pending.clone()));
                    return;
                }
                Parsed::Complete(len, mut seen) => {
                    seen.conn = conn;
                    seen.index = index;
                    seen.raw = pending.drain(..len).collect();
                    index += 1;
                    log.lock().expect("log").requests.push(seen.clone());
                    if !respond(&mut stream, &seen) {
                        return;
                    }
                }
            }
        }
        log.lock()
            .expect("log")
            .pending
            .insert(conn, pending.clone());
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                log.lock().expect("log").pending.remove(&conn);
                if !pending.is_empty() {
                    log.lock().expect("log").invalid.push((
                        conn,
                        "connection closed inside a request".into(),
                        pending,
                    ));
                }
                return;
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// Answers one request; false when the connection is to be dropped.
fn respond(stream: &mut TcpStream, seen: &Seen) -> bool {
    let id = seen.header("x-request-id").unwrap_or("-").to_string();
    let (path, query) = seen.path.split_once('?').unwrap_or((&seen.path, ""));
    match path {
        "/reset-mid" => {
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec();
            out.extend_from_slice(&[b'x'; 100]);
            let _ = stream.write_all(&out);
            std::thread::sleep(Duration::from_millis(50));
            reset(stream);
            false
        }
        "/bad-status" => {
            let _ = stream.write_all(b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok");
            true
        }
        "/te-gzip" => {
            // Chunked over gzip: taking off the chunks leaves a coded body.
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            );
            true
        }
        "/te-cl" => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            );
            true
        }
        "/stall" => {
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec();
            out.extend_from_slice(&[b'x'; 10]);
            let _ = stream.write_all(&out);
            std::thread::sleep(Duration::from_secs(20));
            false
        }
        "/silent" => {
            std::thread::sleep(Duration::from_secs(20));
            false
        }
        "/stale" if seen.index > 0 => {
            let _ = stream.shutdown(Shutdown::Both);
            false
        }
        "/big" => {
            let mib: u64 = query
                .strip_prefix("mib=")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1);
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", mib << 20);
            if stream.write_all(head.as_bytes()).is_err() {
                return false;
            }
            let chunk = vec![b'b'; 1 << 20];
            (0..mib).all(|_| stream.write_all(&chunk).is_ok())
        }
        "/huge-headers" => {
            let mut out = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..20 {
                out.push_str(&format!("x-filler-{i}: {}\r\n", "f".repeat(5000)));
            }
            out.push_str("content-length: 2\r\n\r\nok");
            let _ = stream.write_all(out.as_bytes());
            true
        }
        // Framings a backend may use, for the backend client.
        "/chunked" => {
            let body = format!("id={id}");
            let (a, b) = body.split_at(2);
            let out = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nx-trailer: t\r\n\r\n",
                a.len(),
                b.len()
            );
            stream.write_all(out.as_bytes()).is_ok()
        }
        "/interim" => {
            let body = format!("id={id}");
            let out = format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                 HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(out.as_bytes()).is_ok()
        }
        "/no-content" => stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").is_ok(),
        "/http10" => {
            // No length: the body ends with the connection.
            let _ = stream.write_all(format!("HTTP/1.0 200 OK\r\n\r\nid={id}").as_bytes());
            false
        }
        _ if seen.method == "HEAD" => {
            let out = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                id.len() + 3
            );
            stream.write_all(out.as_bytes()).is_ok()
        }
        "/splice" => {
            let body = format!("id={id}");
            let out = format!(
                "HTTP/1.1 200 OK\r\nx-request-id: {id}\r\ncontent-length: {}\r\n\r\n{body}\
                 HTTP/1.1 200 OK\r\nx-request-id: evil\r\ncontent-length: 7\r\n\r\nid=evil",
                body.len()
            );
            stream.write_all(out.as_bytes()).is_ok()
        }
        _ => {
            let body = format!("id={id}");
            let out = format!(
                "HTTP/1.1 200 OK\r\nx-request-id: {id}\r\nx-body-bytes: {}\r\ncontent-length: {}\r\n\r\n{body}",
                seen.body.len(),
                body.len()
            );
            stream.write_all(out.as_bytes()).is_ok()
        }
    }
}

/// Closes with a TCP reset (SO_LINGER 0).
fn reset(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
    let _ = sock.shutdown(Shutdown::Read);
}

enum Parsed {
    Incomplete,
    Invalid(String),
    Complete(usize, Seen),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9112 with no leniency: CRLF only, no obs-fold, one framing header, `chunked` alone,
/// Host once (HTTP/1.1).
fn parse_request(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 1 << 20 {
            return Parsed::Invalid("head over 1 MiB".into());
        }
        return Parsed::Incomplete;
    };
    let head = &buf[..end + 2];
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Parsed::Invalid("bare LF".into());
        }
        if b == b'\r' && head.get(i + 1) != Some(&b'\n') {
            return Parsed::Invalid("bare CR".into());
        }
        if b == 0 {
            return Parsed::Invalid("NUL".into());
        }
    }
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let http10 = parts.get(2) == Some(&"HTTP/1.0");
    if parts.len() != 3 || !(parts[2] == "HTTP/1.1" || http10) || !parts[0].bytes().all(is_tchar) {
        return Parsed::Invalid(format!("request line {line:?}"));
    }
    let mut headers = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        if l.starts_with(' ') || l.starts_with('\t') {
            return Parsed::Invalid("obs-fold".into());
        }
        let Some((name, value)) = l.split_once(':') else {
            return Parsed::Invalid(format!("header line {l:?}"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Parsed::Invalid(format!("field name {name:?}"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let all = |n: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == n || k.replace('_', "-") == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let (te, cl, host) = (all("transfer-encoding"), all("content-length"), all("host"));
    if host.len() > 1 || (host.is_empty() && !http10) {
        return Parsed::Invalid(format!("{} Host fields", host.len()));
    }
    if http10 && !te.is_empty() {
        return Parsed::Invalid("Transfer-Encoding in HTTP/1.0".into());
    }
    if !te.is_empty() && !cl.is_empty() {
        return Parsed::Invalid("Transfer-Encoding and Content-Length".into());
    }
    if cl.len() > 1 || te.len() > 1 {
        return Parsed::Invalid("repeated framing field".into());
    }
    let start = end + 4;
    let (body, len) = if let Some(te) = te.first() {
        if *te != "chunked" {
            return Parsed::Invalid(format!("Transfer-Encoding {te:?}"));
        }
        match parse_chunked(&buf[start..]) {
            Ok(Some((body, used))) => (body, start + used),
            Ok(None) => return Parsed::Incomplete,
            Err(why) => return Parsed::Invalid(why),
        }
    } else if let Some(cl) = cl.first() {
        let Some(n) = cl
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| cl.parse::<usize>().ok())
            .flatten()
        else {
            return Parsed::Invalid(format!("Content-Length {cl:?}"));
        };
        if buf.len() < start + n {
            return Parsed::Incomplete;
        }
        (buf[start..start + n].to_vec(), start + n)
    } else {
        (Vec::new(), start)
    };
    Parsed::Complete(
        len,
        Seen {
            conn: 0,
            index: 0,
            method: parts[0].to_string(),
            path: parts[1].to_string(),
            headers,
            body,
            raw: Vec::new(),
        },
    )
}

/// A chunked body at the start of `buf`: its data and the bytes it took, None if incomplete.
pub fn parse_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(format!("chunk size {:?}", String::from_utf8_lossy(line)));
        }
        let size = usize::from_str_radix(&String::from_utf8_lossy(size_text), 16)
            .map_err(|e| e.to_string())?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// What came back on a connection after sending raw bytes.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Statuses of the responses, in order (interim 1xx included).
    pub statuses: Vec<u16>,
    /// Each response's `x-request-id`, if any.
    pub ids: Vec<Option<String>>,
    /// The server closed the connection (or reset it) within the wait.
    pub closed: bool,
    /// Bytes left that are not a complete response.
    pub trailing: usize,
}

impl Exchange {
    /// `400 close`, `200 200 open`, `- close`.
    pub fn outcome(&self) -> String {
        let mut s: Vec<String> = self.statuses.iter().map(u16::to_string).collect();
        if s.is_empty() {
            s.push("-".into());
        }
        if self.trailing > 0 {
            s.push(format!("+{}B", self.trailing));
        }
        s.push(if self.closed { "close" } else { "open" }.into());
        s.join(" ")
    }

    /// The final (non-1xx) statuses.
    pub fn finals(&self) -> Vec<u16> {
        self.statuses
            .iter()
            .copied()
            .filter(|s| *s >= 200)
            .collect()
    }
}

/// Writes `request` (ignoring a write refused because the server already closed) and reads
/// until the server closes, or `quiet` passes without a byte once something arrived (`first`
/// before anything arrived).
pub fn exchange<S: Read + Write>(
    stream: &mut S,
    set_timeout: impl Fn(&S, Duration),
    request: &[u8],
    first: Duration,
    quiet: Duration,
) -> Exchange {
    let _ = stream.write_all(request);
    let _ = stream.flush();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    let deadline = Instant::now() + first + Duration::from_secs(10);
    set_timeout(stream, first);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                set_timeout(stream, quiet);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let (statuses, ids, used) = split_responses(&got);
    Exchange {
        statuses,
        ids,
        closed,
        trailing: got.len() - used,
    }
}

/// Plain TCP: [`exchange`] on a new connection to `addr`.
pub fn exchange_tcp(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    let _ = tcp.set_nodelay(true);
    exchange(
        &mut tcp,
        |s, t| {
            let _ = s.set_read_timeout(Some(t));
        },
        request,
        Duration::from_secs(5),
        Duration::from_millis(800),
    )
}

/// Over TLS (HTTP/1.1 by ALPN): [`exchange`] on a new connection to `addr`.
pub fn exchange_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    request: &[u8],
) -> Exchange {
    let tcp = TcpStream::connect(addr).expect("connect");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(config, name).expect("TLS client");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    exchange(
        &mut tls,
        |s, t| {
            let _ = s.sock.set_read_timeout(Some(t));
        },
        request,
        Duration::from_secs(5),
        Duration::from_millis(800),
    )
}

/// Splits responses off the front of `buf`: statuses, `x-request-id`s, bytes used.
pub fn split_responses(buf: &[u8]) -> (Vec<u16>, Vec<Option<String>>, usize) {
    split_at_most(buf, usize::MAX)
}

/// As [`split_responses`], `max` responses at most.
pub fn split_at_most(buf: &[u8], max: usize) -> (Vec<u16>, Vec<Option<String>>, usize) {
    let (mut statuses, mut ids, mut at) = (Vec::new(), Vec::new(), 0);
    while statuses.len() < max
        && let Some(end) = buf[at..].windows(4).position(|w| w == b"\r\n\r\n")
    {
        let head = String::from_utf8_lossy(&buf[at..at + end]).to_string();
        let Some(status) = head
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        let field = |name: &str| {
            head.split("\r\n").skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let start = at + end + 4;
        let body_end = if status < 200 || status == 204 || status == 304 {
            start
        } else if field("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            match parse_chunked(&buf[start..]) {
                Ok(Some((_, used))) => start + used,
                _ => break,
            }
        } else if let Some(n) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if buf.len() < start + n {
                break;
            }
            start + n
        } else {
            buf.len()
        };
        statuses.push(status);
        ids.push(field("x-request-id"));
        at = body_end;
    }
    (statuses, ids, at)
}

/// `haproxy -db` with `config` (written to `dir`), until dropped.
pub struct Haproxy {
    child: Child,
}

impl Haproxy {
    /// Call [`ensure_haproxy`] first.
    pub fn start(dir: &Path, config: &str, wait_for: SocketAddr) -> Self {
        let path = dir.join(crate::netns::unique("haproxy-") + ".cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(wait_for).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy not listening after 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Haproxy { child }
    }

    pub fn version() -> String {
        Command::new("haproxy")
            .arg("-v")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static INSTALLED: AtomicUsize = AtomicUsize::new(0);

/// Installs Debian's haproxy if missing (root only), and leaves its system service disabled
/// and stopped (as `cargo xtask bench https` does): only our own instances run. False (after
/// saying so) when it is missing and cannot be installed; in CI that is a failure.
pub fn ensure_haproxy() -> bool {
    let present = || {
        Command::new("haproxy")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if INSTALLED.load(Ordering::SeqCst) == 1 {
        return present();
    }
    if !present() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "haproxy is missing and only root can install it"
            );
            eprintln!("SKIPPED the HAProxy reference: haproxy is missing and this is not root");
            return false;
        }
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "haproxy"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("run apt-get (haproxy is the reference proxy of this test)");
        assert!(status.success(), "apt-get install haproxy failed");
    }
    INSTALLED.store(1, Ordering::SeqCst);
    let enabled = Command::new("systemctl")
        .args(["is-enabled", "haproxy"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "enabled");
    if enabled {
        let mut cmd = Command::new("systemctl");
        cmd.args(["disable", "--quiet", "haproxy"]);
        if Path::new("/run/systemd/system").exists() {
            cmd.arg("--now");
        }
        let _ = cmd.status();
    }
    if let Some(pid) = std::fs::read_to_string("/run/haproxy.pid")
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    true
}

/// Bytes for a table: printable ASCII as is, CR/LF as `\r\n`, others as `\xNN`, cut at `max`.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        s.push_str(&format!("...({} bytes)", bytes.len()));
    }
    s
}
