//! Real HTTPS clients for the tests: curl, run inside a namespace, from a chosen source address.
use std::path::Path;
use std::process::Command;

use crate::netns::Netns;

pub struct CurlResult {
    /// curl's exit code: 0 success, 28 timeout, 7 refused, 35/56 TLS or connection reset.
    pub code: i32,
    pub body: String,
    pub stderr: String,
}

/// `curl https://URL_HOST:PORT/` from `source`, trusting `ca`, with a 2 s connect timeout.
pub fn curl(ns: &Netns, source: &str, url: &str, ca: &Path) -> CurlResult {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "curl",
            "-sS",
            "--connect-timeout",
            "2",
            "--max-time",
            "5",
        ])
        .args(["--interface", source, "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl (cargo xtask setup installs it): {e}"));
    CurlResult {
        code: out.status.code().unwrap_or(-1),
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Probes `url` from `source` until it answers or `tries` run out (the daemon's socket is bound
/// before it logs ready, but a first SYN can race the veth coming up).
pub fn curl_ok(ns: &Netns, source: &str, url: &str, ca: &Path) -> CurlResult {
    let mut last = curl(ns, source, url, ca);
    for _ in 0..3 {
        if last.code == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        last = curl(ns, source, url, ca);
    }
    last
}

/// `curl --http2 https://SERVER_NAME:PORT/` on loopback to the listener at `addr`, trusting
/// `ca`, with `extra` arguments (before the URL).
pub fn curl_h2(ca: &str, addr: std::net::SocketAddr, extra: &[&str]) -> std::process::Output {
    let name = crate::listener::SERVER_NAME;
    let url = format!("https://{name}:{}/", addr.port());
    let resolve = format!("{name}:{}:127.0.0.1", addr.port());
    std::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert", ca, "--resolve", &resolve])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl (cargo xtask setup installs it)")
}
