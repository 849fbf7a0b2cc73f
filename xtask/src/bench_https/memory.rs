//! The memory test: a proxy's resident memory when fresh, then while it holds 10,000 idle
//! keep-alive TLS 1.3 connections (each has had one HTTP/1.1 request), opened by `idle-conns`
//! (tests/src/bin/idle-conns.rs) pinned to core 1.
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::procs::{Proc, pinned};

/// How long the connections are held: long enough to open them all (a few seconds at 200
/// handshakes at once) and to read the RSS after they settle, far below every idle timeout the
/// proxies are given (900 s).
const HOLD_SECS: u64 = 20;

#[derive(Clone, Copy, Default)]
pub struct Memory {
    /// RSS before the connections, KiB.
    pub fresh_kib: u64,
    /// RSS with all connections open and idle, KiB.
    pub loaded_kib: u64,
    pub conns: u64,
    /// Connections the proxy closed while they were held (should be 0).
    pub closed_early: u64,
}

impl Memory {
    pub fn growth_per_conn_kib(&self) -> f64 {
        if self.conns == 0 {
            return 0.0;
        }
        self.loaded_kib.saturating_sub(self.fresh_kib) as f64 / self.conns as f64
    }
}

/// Measures `proxy` (freshly started, listening on `port`).
pub fn measure(
    dir: &Path,
    idle_conns: &Path,
    proxy: &mut Proc,
    port: u16,
    conns: u64,
) -> Result<Memory> {
    // Let start-up allocations settle (edgelb's health checker, nginx's worker start).
    sleep(Duration::from_millis(500));
    let fresh_kib = proxy.rss_kib();
    let mut client = Proc::spawn(
        "idle-conns",
        pinned(
            1,
            idle_conns,
            [
                "--connect".to_string(),
                format!("127.0.0.1:{port}"),
                "--count".into(),
                conns.to_string(),
                "--hold-secs".into(),
                HOLD_SECS.to_string(),
                "--parallel".into(),
                "200".into(),
            ],
        ),
        dir,
    )?;
    let deadline = Instant::now() + Duration::from_secs(HOLD_SECS + 60);
    while !client.stdout_text().contains("established") {
        client.check_alive()?;
        proxy.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "idle-conns did not establish {conns} connections in time; it printed:\n{}{}",
                client.stdout_text(),
                client.stderr_text()
            );
        }
        sleep(Duration::from_millis(50));
    }
    // The last responses have just been read: give the proxy a moment to go idle.
    sleep(Duration::from_secs(2));
    let loaded_kib = proxy.rss_kib();
    if !client.wait_exit(Duration::from_secs(HOLD_SECS + 30))? {
        bail!("idle-conns did not exit after its hold");
    }
    let out = client.stdout_text();
    let closed_early = out
        .lines()
        .find_map(|l| l.strip_prefix("held "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or(conns);
    Ok(Memory {
        fresh_kib,
        loaded_kib,
        conns,
        closed_early,
    })
}
