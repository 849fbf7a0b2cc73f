//! A real HTTP/1.1 backend for tests, in clear or over TLS. It answers with its own name and
//! counts what it served, so tests see which backend a request reached. Paths change what it
//! does:
//! - `/echo`: the body lists the request's headers (`name: value` lines) and its body length,
//! - `/status/NNN`: answers with status NNN,
//! - `/set-cookie/NAME=VALUE`: sets that cookie,
//! - a request with `Upgrade: websocket`: switches protocols and echoes raw bytes back.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    served: Arc<AtomicUsize>,
}

impl Backend {
    /// Starts a backend on `bind` inside the namespace at `ns_path` (None: this namespace).
    pub fn start(name: &str, bind: &str, ns_path: Option<&str>) -> Self {
        Self::spawn(name, bind, ns_path, None, Duration::ZERO)
    }

    /// A backend that waits `delay` before answering each request.
    pub fn start_delayed(name: &str, bind: &str, delay: Duration) -> Self {
        Self::spawn(name, bind, None, None, delay)
    }

    /// A backend speaking HTTPS with `cert`/`key`.
    pub fn start_tls(name: &str, bind: &str, cert: &Path, key: &Path) -> Self {
        let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
            .expect("backend cert")
            .flatten()
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("backend key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("backend cert and key match");
        Self::spawn(name, bind, None, Some(Arc::new(config)), Duration::ZERO)
    }

    fn spawn(
        name: &str,
        bind: &str,
        ns_path: Option<&str>,
        tls: Option<Arc<rustls::ServerConfig>>,
        delay: Duration,
    ) -> Self {
        let bind = bind.to_string();
        let listener = match ns_path {
            Some(p) => crate::netns::in_netns(p, move || TcpListener::bind(bind)),
            None => TcpListener::bind(bind),
        }
        .unwrap_or_else(|e| panic!("backend {name}: bind: {e}"));
        let addr = listener.local_addr().expect("bound socket has an address");
        let served = Arc::new(AtomicUsize::new(0));
        let (n, s) = (name.to_string(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (n, s, tls) = (n.clone(), s.clone(), tls.clone());
                let _ = stream.set_nodelay(true);
                std::thread::spawn(move || match tls {
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve(rustls::StreamOwned::new(conn, stream), &n, &s, delay);
                    }
                    None => serve(stream, &n, &s, delay),
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            served,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Waits until the backend has received `n` requests (counted as each head arrives, so
    /// the last is in flight), 10 s at most.
    pub async fn wait_served(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.served() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "request {n} never reached backend {}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A UDP socket on `bind` (in this namespace) answering every datagram, on a thread of its
/// own, with `backend NAME ` followed by the datagram. Bind it to the address clients send to
/// (a VIP, not a wildcard): the answer then leaves from that address.
pub fn udp_echo(name: &str, bind: &str) -> SocketAddr {
    let socket =
        UdpSocket::bind(bind).unwrap_or_else(|e| panic!("udp echo {name}: bind {bind}: {e}"));
    let addr = socket.local_addr().expect("bound socket has an address");
    let prefix = format!("backend {name} ");
    std::thread::spawn(move || {
        // Datagrams up to the largest UDP payload, so fragmented ones come back whole.
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = prefix.clone().into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
    addr
}

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
pub fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("bound socket has an address")
}

fn serve<S: Read + Write>(stream: S, name: &str, served: &AtomicUsize, delay: Duration) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let content_length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        served.fetch_add(1, Ordering::SeqCst);

        if header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            let head = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
            if reader.get_mut().write_all(head.as_bytes()).is_err()
                || reader.get_mut().flush().is_err()
            {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if reader.get_mut().write_all(&buf[..n]).is_err()
                            || reader.get_mut().flush().is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
        // `/sleep-ms/N`: this request alone is held N ms (a busy backend, chosen by the test
        // after the balancer chose it).
        let held = path
            .strip_prefix("/sleep-ms/")
            .and_then(|ms| ms.parse().ok())
            .map_or(delay, Duration::from_millis);
        std::thread::sleep(held);
        let reply = if path == "/echo" {
            let mut out: String = headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            out.push_str(&format!("body-bytes: {}\n", body.len()));
            out
        } else {
            format!("backend {name}\n")
        };
        let status = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        let cookie = path
            .strip_prefix("/set-cookie/")
            .map(|c| format!("set-cookie: {c}; Path=/\r\n"))
            .or_else(|| {
                path.strip_prefix("/alt-svc/")
                    .map(|a| format!("alt-svc: {a}\r\n"))
            })
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\nx-backend: {name}\r\n{cookie}content-length: {}\r\n\r\n",
            reply.len()
        );
        // One write for head and body: two small writes would meet Nagle and the client's
        // delayed ACK, and every response would take 40 ms.
        let w = reader.get_mut();
        if w.write_all(format!("{head}{reply}").as_bytes()).is_err() || w.flush().is_err() {
            return;
        }
    }
}

/// A backend in a process of its own (`test-backend`), so that a test can kill it the way a
/// crashed server dies: listener and every open connection closed by the kernel at once.
pub struct BackendProcess {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl BackendProcess {
    /// Starts `test-backend NAME BIND` and waits for the address it bound.
    pub fn start(name: &str, bind: &str) -> Self {
        Self::start_in(None, name, bind, &[])
    }

    /// Starts `test-backend NAME BIND UDP_BIND...` inside `ns` (None: this namespace) and
    /// waits for the address it bound: an HTTP backend on `bind`, and a UDP echo on each of
    /// `udp` ([`udp_echo`]).
    pub fn start_in(
        ns: Option<&crate::netns::Netns>,
        name: &str,
        bind: &str,
        udp: &[&str],
    ) -> Self {
        let bin = crate::daemon::binary().with_file_name("test-backend");
        let mut cmd = match ns {
            Some(ns) => ns.command(&bin.to_string_lossy()),
            None => std::process::Command::new(&bin),
        };
        let mut child = cmd
            .args([name, bind])
            .args(udp)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("test-backend prints its address");
        let addr = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("test-backend printed {line:?}"));
        BackendProcess { addr, child }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend whose every response is `size` bytes; counts what it managed to write and the
/// connections that ended (the client side, edgelb, went away).
pub struct BigBackend {
    pub addr: SocketAddr,
    /// Body bytes written so far, over all connections.
    pub written: Arc<AtomicU64>,
    /// Connections that ended before their body was written.
    pub ended: Arc<AtomicU64>,
}

pub fn big_backend(size: usize) -> BigBackend {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let (written, ended) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (w, e) = (written.clone(), ended.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (w, e) = (w.clone(), e.clone());
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n"
                );
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).is_err() {
                        e.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    w.fetch_add(n as u64, Ordering::Relaxed);
                    left -= n;
                }
            });
        }
    });
    BigBackend {
        addr,
        written,
        ended,
    }
}
