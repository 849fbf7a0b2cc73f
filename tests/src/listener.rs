//! An HTTPS listener under test on loopback: a test CA, a server certificate for
//! `edgelb.test` and 127.0.0.1, and edgelb started with them plus the test's own flags.
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use crate::certs::TempDir;
use crate::daemon::Daemon;
use crate::pki::{Ca, Leaf};

pub const SERVER_NAME: &str = "edgelb.test";

pub struct Setup {
    pub dir: TempDir,
    pub ca: Ca,
    pub server: Leaf,
}

impl Setup {
    pub fn new() -> Self {
        let dir = TempDir::new();
        let ca = Ca::new(&dir, "server");
        let server = ca.server(
            &dir,
            "server",
            &[SERVER_NAME],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        );
        Setup { dir, ca, server }
    }

    /// Starts edgelb on a free loopback port with the server certificate, XDP off, and `args`.
    pub fn start(&self, args: &[&str]) -> (Daemon, SocketAddr) {
        self.start_env(args, &[])
    }

    /// As [`Setup::start`], with `env` set for the daemon too.
    pub fn start_env(&self, args: &[&str], env: &[(&str, &str)]) -> (Daemon, SocketAddr) {
        let addr = free_addr();
        let listener = self.listener_args(addr);
        let mut all: Vec<&str> = listener.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        (Daemon::start_env(None, &all, self.dir.path(), env), addr)
    }

    /// The flags of an https listener on `addr` with the server certificate, XDP off.
    pub fn listener_args(&self, addr: SocketAddr) -> Vec<String> {
        let listen = addr.to_string();
        let cert = self.server.cert.to_string_lossy().into_owned();
        let key = self.server.key.to_string_lossy().into_owned();
        [
            "--listen",
            &listen,
            "--cert",
            &cert,
            "--key",
            &key,
            "--xdp-mode",
            "off",
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Setup {
    /// A TLS connection to the listener at `addr` trusting the test CA, offering only
    /// HTTP/1.1, for raw requests.
    pub async fn connect_h1(
        &self,
        addr: SocketAddr,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut opts = crate::https::ClientOpts::new(&self.ca.cert_pem);
        opts.alpn = &[b"http/1.1"];
        crate::https::connect(addr, SERVER_NAME, opts.config())
            .await
            .expect("connect")
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts edgelb with an `--protocol http` listener on a free loopback port in front of
/// `backend`, XDP off, plus `extra` flags; its log goes to `dir`.
pub fn start_http(backend: SocketAddr, extra: &[&str], dir: &Path) -> (Daemon, SocketAddr) {
    let addr = free_addr();
    let (listen, be) = (addr.to_string(), backend.to_string());
    let mut args = vec![
        "--protocol",
        "http",
        "--listen",
        &listen,
        "--backend",
        &be,
        "--xdp-mode",
        "off",
    ];
    args.extend_from_slice(extra);
    (Daemon::start(None, &args, dir), addr)
}

/// A loopback address with a port nothing listens on right now, below the kernel's ephemeral
/// range (32768-60999 by default): a port the kernel handed out as ephemeral can be taken, as
/// the local port of another test's outgoing connection, between this check and the daemon's
/// bind.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Tests of one binary share the sequence; binaries start at different points.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        10_000 + (std::process::id() % 20_000) as u16,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..20_000 {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + port % 22_000;
        // Free over UDP too, for listeners that also serve HTTP/3.
        if let (Ok(l), Ok(_)) = (
            TcpListener::bind(("127.0.0.1", port)),
            std::net::UdpSocket::bind(("127.0.0.1", port)),
        ) {
            return l.local_addr().expect("bound socket has an address");
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("bound socket has an address")
}

/// Health checks every second, timing out after 1 s, two results in a row flipping the state:
/// a dead backend is out at most interval x retries + timeout = 3 s after it died.
pub const FAST_CHECKS: [&str; 6] = [
    "--hc-interval",
    "1",
    "--hc-timeout",
    "1",
    "--hc-retries",
    "2",
];
