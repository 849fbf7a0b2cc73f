//! Which TLS handshakes were full and which resumed, seen on the wire the same way for all
//! three proxies (edgelb has no counter for it): tcpdump records the start of every segment the
//! proxy sends on loopback, and each ServerHello is read. A TLS 1.3 ServerHello carries the
//! `pre_shared_key` extension exactly when the server accepted a session ticket (RFC 8446
//! 4.2.11); ServerHello is the one handshake message of TLS 1.3 that is not encrypted.
//!
//! h2load does resume: when a connection closed cleanly (both close_notify alerts), it keeps
//! its OpenSSL object and its session for the next connection of the same client. So whether a
//! "new connection" is a full handshake depends on the proxy: this is how the report can say.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::procs::Proc;
use crate::signals::{SIGINT, send_signal};

/// TLS handshakes counted in a capture.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshakes {
    pub full: u64,
    pub resumed: u64,
    /// Packets tcpdump says the kernel dropped (then some handshakes were not seen).
    pub dropped: u64,
}

/// A running capture of what the server on `port` sends.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `lo` (segments from `port` that carry data, their first 600 bytes:
    /// enough for the headers and a ServerHello) and waits until it listens.
    pub fn start(dir: &Path, port: u16) -> Result<Self> {
        let file = dir.join(format!("hello-{port}.pcap"));
        let mut cmd = Command::new("taskset");
        // Core 1, with the load: the proxy keeps core 0 to itself. -U writes each packet at
        // once; -Z root keeps root, so it can write in our directory.
        cmd.args(["-c", "1", "tcpdump", "-i", "lo", "-n", "-U", "-Z", "root"])
            // A 16 MiB capture buffer: tcpdump competes with h2load for core 1.
            .args(["-B", "16384", "-s", "600", "-w"])
            .arg(&file)
            .arg(format!(
                "tcp src port {port} and (((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)"
            ));
        let mut proc = Proc::spawn("tcpdump", cmd, dir)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proc.stderr_text().contains("listening on") {
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("tcpdump did not start listening within 10 s");
            }
            sleep(Duration::from_millis(20));
        }
        Ok(Self { proc, file })
    }

    /// Stops the capture and counts the ServerHellos in it.
    pub fn finish(mut self) -> Result<Handshakes> {
        // tcpdump shares core 1 with h2load and lags behind it: let it drain the kernel's
        // buffer before SIGINT (on which it writes what it has read and exits).
        sleep(Duration::from_millis(500));
        send_signal(self.proc.pid(), SIGINT);
        self.proc.wait_exit(Duration::from_secs(5))?;
        let pcap =
            fs::read(&self.file).with_context(|| format!("cannot read {}", self.file.display()))?;
        let mut counts = count_server_hellos(&pcap)?;
        // "12 packets dropped by kernel" on stderr when it exits.
        counts.dropped = self
            .proc
            .stderr_text()
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        Ok(counts)
    }
}

/// Reads a pcap file (Ethernet link type, as tcpdump writes for `lo`) and counts TLS 1.3
/// ServerHellos with and without `pre_shared_key`.
pub fn count_server_hellos(pcap: &[u8]) -> Result<Handshakes> {
    if pcap.len() < 24 {
        bail!("pcap file too short");
    }
    let le = match pcap[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] => false,
        _ => bail!("not a pcap file (magic {:02x?})", &pcap[..4]),
    };
    let u32_at = |b: &[u8], i: usize| {
        let v = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let link_type = u32_at(pcap, 20);
    if link_type != 1 {
        bail!("pcap link type {link_type}, expected Ethernet (1)");
    }
    let mut counts = Handshakes::default();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32_at(pcap, at + 8) as usize;
        let start = at + 16;
        let end = (start + caplen).min(pcap.len());
        if let Some(resumed) = tcp_payload(&pcap[start..end]).and_then(server_hello_resumed) {
            if resumed {
                counts.resumed += 1;
            } else {
                counts.full += 1;
            }
        }
        at = start + caplen;
    }
    Ok(counts)
}

/// The TCP payload of an Ethernet + IPv4 frame.
fn tcp_payload(frame: &[u8]) -> Option<&[u8]> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    let tcp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
    tcp.get(usize::from(tcp.get(12)? >> 4) * 4..)
}

/// If `payload` starts with a TLS record holding a ServerHello: whether it accepted a PSK.
fn server_hello_resumed(payload: &[u8]) -> Option<bool> {
    // Record: type 22 (handshake), version, length; handshake: type 2, 3-byte length.
    if *payload.first()? != 22 || *payload.get(5)? != 2 {
        return None;
    }
    let body = payload.get(9..)?;
    // legacy_version (2), random (32), legacy_session_id (1 + n), cipher suite (2),
    // compression (1), extensions (2 + list).
    let sid_len = usize::from(*body.get(34)?);
    let mut at = 35 + sid_len + 3;
    let ext_len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    at += 2;
    let end = at + ext_len;
    while at + 4 <= end {
        let ty = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        let len = usize::from(u16::from_be_bytes([*body.get(at + 2)?, *body.get(at + 3)?]));
        if ty == 41 {
            return Some(true);
        }
        at += 4 + len;
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame around a ServerHello with the given extensions.
    fn frame(extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (ty, data) in extensions {
            exts.extend(ty.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(*data);
        }
        let mut hello = vec![3, 3];
        hello.extend([7u8; 32]);
        hello.push(32);
        hello.extend([9u8; 32]);
        hello.extend([0x13, 0x01, 0]);
        hello.extend((exts.len() as u16).to_be_bytes());
        hello.extend(exts);
        let mut hs = vec![2, 0, (hello.len() >> 8) as u8, hello.len() as u8];
        hs.extend(hello);
        let mut record = vec![22, 3, 3];
        record.extend((hs.len() as u16).to_be_bytes());
        record.extend(hs);
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6];
        ip.resize(20, 0);
        let mut tcp = vec![0u8; 12];
        tcp.push(5 << 4);
        tcp.resize(20, 0);
        f.extend(ip);
        f.extend(tcp);
        f.extend(record);
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        p.extend([0u8; 8]);
        p.extend(600u32.to_le_bytes());
        p.extend(1u32.to_le_bytes());
        for f in frames {
            p.extend([0u8; 8]);
            p.extend((f.len() as u32).to_le_bytes());
            p.extend((f.len() as u32).to_le_bytes());
            p.extend(f);
        }
        p
    }

    #[test]
    fn tells_full_from_resumed() {
        let full = frame(&[(43, &[3, 4]), (51, &[0, 29, 0, 1, 5])]);
        let resumed = frame(&[(43, &[3, 4]), (51, &[0, 29, 0, 1, 5]), (41, &[0, 0])]);
        let mut other = full.clone();
        other[54] = 23; // an application-data record, not a handshake
        let counts = count_server_hellos(&pcap(&[full.clone(), resumed, other, full])).unwrap();
        assert_eq!(
            counts,
            Handshakes {
                full: 2,
                resumed: 1,
                dropped: 0
            }
        );
        assert!(count_server_hellos(b"nonsense, not a capture").is_err());
    }
}
