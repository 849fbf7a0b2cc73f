//! Packets per CPU-second of the receiving host, for edgelb's XDP program next to nftables and
//! the kernel stack, with the kernel as the packet generator (`cargo xtask bench xdp`).
//!
//! A userspace generator on this 2-core machine saturates long before the receiver does, and
//! the kernel has no pktgen. So the frames come from `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` ([`run_live_frames`]): the kernel hands each copy of a frame,
//! in a page of its own page pool, to an XDP program as received by veth `lba` of a namespace
//! made for the run, then carries out the verdict as a driver would (`XDP_DROP` recycles the
//! page, `XDP_PASS` builds an skb and runs the stack, nftables' netdev ingress hook included,
//! `XDP_TX` transmits on `lba`, whose peer `lbb` receives it in its own XDP program). All of it
//! runs on the calling CPU, in the system call and in the softirqs it raises, so the receiver's
//! CPU per packet is the CPU time of the calling thread (plus that CPU's ksoftirqd, should
//! softirqs be deferred there) divided by the packets: this is what the table reports. The
//! kernel's own timing of the same run is printed next to it as a cross-check.
//!
//! Every row includes the generator's own work (taking a page from the pool, resetting the
//! frame, returning the page), measured alone as the first row (a program that only drops).
//! A NIC driver's receive path does comparable work per frame.
//!
//! Contenders, with the same frames and the same prefixes:
//! - edgelb: `edgelb_xdp` with a blacklist listener on `[::]:443` holding N prefixes per
//!   family, one of which covers the frame's source: the program drops it.
//! - nftables: a program that only returns `XDP_PASS`, then a `netdev` table whose ingress
//!   chain on `lba` drops TCP to port 443 from an `interval` set holding the same prefixes.
//!   Both contenders count the frames they drop (edgelb's per-CPU counters, nft `counter`).
//! - the kernel stack: `XDP_PASS`, no nftables: a TCP SYN to a local address and a closed
//!   port (the stack answers with a reset it cannot route).
//! - L4 forwarding: edgelb's L4 listener sends each frame IP-in-IP to a backend (`XDP_TX`);
//!   next to it a program that only returns `XDP_TX`, and the kernel forwarding the frame to
//!   the same next hop (`ip_forward`, out of the interface it came in on).
//!
//! Live runs copy the frame into a page only when the page is first allocated; recycled
//! pages keep whatever the last program wrote. Forwarding rewrites frames (an outer header
//! over the old Ethernet header; a TTL, a checksum and MACs for the kernel), so for those
//! cases `lbb`'s program writes the original bytes back before dropping the frame. Each run
//! is checked: the counters (edgelb's, nft's, the stack's SNMP counters) must have seen every
//! frame with the expected outcome, so a frame left altered would show.
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use edgelb::acl::AclMode;
use edgelb::dataplane::{
    BackendEntry, Dataplane, L4Listener, L4Listeners, ListenerRule, run_live_frames,
};
use ipnet::IpNet;
use lb_common::Outcome;
use lb_common::maglev::build_table;

use crate::netns::Netns;
use crate::packet::{Frame, TCP};
use crate::rawxdp::{RawXdp, XDP_DROP, XDP_PASS, XDP_TX, XdpLink};
use crate::rng::Rng;

pub const LB_IF: &str = "lba";
pub const PEER_IF: &str = "lbb";
/// `Frame::bytes` addresses frames from this MAC to that one: `lbb` to `lba`.
const LB_MAC: &str = "02:00:00:00:00:01";
const PEER_MAC: &str = "02:00:00:00:00:02";
pub const LB_V4: &str = "10.200.0.1";
pub const PEER_V4: &str = "10.200.0.2";
const LB_V6: &str = "fd00:200::1";
const BLOCKED_V4: &str = "203.0.113.9";
const BLOCKED_V6: &str = "2001:db8:ffff::9";
const ADMITTED_V4: &str = "198.51.100.7";
/// Routed via `lbb` (kernel forwarding), and what edgelb's L4 listener balances.
const VIP_V4: &str = "192.0.2.1";
const PORT: u16 = 443;
const LISTENER: u32 = 1;
/// The flow table's idle time of the L4 rows that keep one: `--sticky-duration`'s default.
const FLOW_SECS: u32 = 20 * 60;
/// Rounds of the L4 and forwarding rows.
const L4_ROUNDS: usize = 3;
const NFT_TABLE: &str = "edgelb_bench";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM interrupt the run in progress (the test run returns EINTR) and let the
/// namespace, the programs and the nft table be removed on the way out.
pub fn install_signal_handlers() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe. signal(2)
        // fails only for an invalid signal number, and these two are valid.
        let _ = unsafe { signal(sig, SigHandler::Handler(on_signal)) };
    }
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// One measured run.
#[derive(Clone, Copy)]
struct Sample {
    packets: u64,
    /// The kernel's mean wall time per frame inside the run (BPF_PROG_TEST_RUN's duration).
    kernel_ns: f64,
    /// CPU time of the calling thread and of the CPU's ksoftirqd, per frame.
    cpu_ns: f64,
}

impl Sample {
    fn per_cpu_second(&self) -> f64 {
        1e9 / self.cpu_ns
    }
}

/// CPU time of one CPU's receive work: the pinned calling thread and that CPU's ksoftirqd.
pub struct CpuClock {
    ksoftirqd: Option<u32>,
}

impl CpuClock {
    /// Pins the calling thread to the CPU it is on.
    pub fn pin() -> Result<(Self, usize)> {
        use nix::sched::{CpuSet, sched_getcpu, sched_setaffinity};
        let cpu = sched_getcpu().context("sched_getcpu")?;
        let mut set = CpuSet::new();
        set.set(cpu).context("CPU_SET")?;
        sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("sched_setaffinity")?;
        let name = format!("ksoftirqd/{cpu}");
        let ksoftirqd = fs::read_dir("/proc")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
            });
        Ok((CpuClock { ksoftirqd }, cpu))
    }

    /// Nanoseconds of CPU used so far by this thread and by the ksoftirqd.
    pub fn now(&self) -> u64 {
        // This thread's clock always exists; a failure would read as no time spent.
        let thread = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map_or(0, |ts| {
                ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
            });
        let softirq = self
            .ksoftirqd
            .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/schedstat")).ok())
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        thread + softirq
    }
}

/// The namespace of a run: `lba` (where frames are received) and its peer `lbb`.
struct Setup {
    ns: Netns,
    lb_ifindex: u32,
    peer_ifindex: u32,
    clock: CpuClock,
    secs: f64,
}

impl Setup {
    fn new(secs: f64) -> Result<Self> {
        let ns = Netns::new("xb");
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            run_in(&ns, &["sysctl", "-qw", &format!("{key}={value}")])?;
        }
        add_bench_link(&ns);
        ns.ip(&["addr", "add", &format!("{LB_V6}/64"), "dev", LB_IF, "nodad"]);
        ns.ip(&["route", "add", &format!("{VIP_V4}/32"), "via", PEER_V4]);
        // This thread now lives in the namespace: ifindexes, live runs and links are its.
        let file = fs::File::open(ns.path())?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the bench namespace")?;
        let lb_ifindex = ifindex(LB_IF)?;
        let peer_ifindex = ifindex(PEER_IF)?;
        let (clock, _) = CpuClock::pin()?;
        Ok(Setup {
            ns,
            lb_ifindex,
            peer_ifindex,
            clock,
            secs,
        })
    }

    /// Runs `frame` through `prog` about `secs` seconds (after a short warm-up that sizes the
    /// run); returns the measured run and the frames sent in all.
    fn measure(&self, prog: BorrowedFd<'_>, frame: &[u8]) -> Result<(Sample, u64)> {
        check_stop()?;
        let warm = 200_000u32;
        let start = Instant::now();
        run_live_frames(prog, frame, self.lb_ifindex, warm, 0)?;
        let est_ns = start.elapsed().as_nanos() as f64 / f64::from(warm);
        let repeat = (self.secs * 1e9 / est_ns).clamp(1e5, 4e9) as u32;
        let cpu0 = self.clock.now();
        let t0 = monotonic();
        let kernel_ns = run_live_frames(prog, frame, self.lb_ifindex, repeat, 0)?;
        let cpu = self.clock.now() - cpu0;
        if std::env::var_os("EDGELB_BENCH_TIMES").is_some() {
            // For `perf report --time`, with `perf record -k mono`.
            eprintln!("xdp-bench: measured run {t0:.6},{:.6}", monotonic());
        }
        check_stop()?;
        Ok((
            Sample {
                packets: u64::from(repeat),
                kernel_ns: kernel_ns as f64,
                cpu_ns: cpu as f64 / f64::from(repeat),
            },
            u64::from(warm) + u64::from(repeat),
        ))
    }

    fn nft(&self, script: &str) -> Result<String> {
        let path = std::env::temp_dir().join(format!("edgelb-bench-{}.nft", std::process::id()));
        fs::write(&path, script)?;
        let out = run_in(
            &self.ns,
            &["nft", "-f", path.to_str().expect("utf-8 temp path")],
        );
        let _ = fs::remove_file(&path);
        out
    }

    /// Packets the nft rules of the bench table counted so far.
    fn nft_counted(&self) -> Result<u64> {
        let out = run_in(&self.ns, &["nft", "list", "table", "netdev", NFT_TABLE])?;
        let mut total = 0;
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "packets" {
                total += words.next().unwrap_or("0").parse::<u64>().unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// Adds `lba` (LB_V4) and its peer `lbb` to `ns`, up, addressed as [`Frame::bytes`] addresses
/// frames (`lbb` to `lba`), with `lbb` a permanent neighbour of `lba` at PEER_V4: what `lba`
/// sends via PEER_V4 reaches `lbb`.
pub fn add_bench_link(ns: &Netns) {
    ns.ip(&[
        "link", "add", LB_IF, "address", LB_MAC, "type", "veth", "peer", "name", PEER_IF,
        "address", PEER_MAC,
    ]);
    ns.ip(&["addr", "add", &format!("{LB_V4}/24"), "dev", LB_IF]);
    for iface in [LB_IF, PEER_IF] {
        ns.ip(&["link", "set", iface, "up"]);
    }
    ns.ip(&[
        "neigh",
        "replace",
        PEER_V4,
        "lladdr",
        PEER_MAC,
        "dev",
        LB_IF,
        "nud",
        "permanent",
    ]);
}

/// CLOCK_MONOTONIC in seconds, as `perf record -k mono` stamps its samples.
fn monotonic() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// `ip netns exec NS ARGS...`: its standard output, or its standard error as the error.
pub fn run_in(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .output()
        .with_context(|| format!("running {args:?} in {}", ns.name))?;
    if !out.status.success() {
        bail!(
            "{args:?} in {} failed: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("no interface {name}"))
}

/// A counter of `/proc/net/snmp` (of this thread's namespace), e.g. ("Tcp", "InSegs").
fn snmp(group: &str, field: &str) -> Result<u64> {
    let text = fs::read_to_string("/proc/self/net/snmp")?;
    let mut lines = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {group} in /proc/net/snmp");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .with_context(|| format!("no {group} {field}"))?;
    Ok(values
        .split_whitespace()
        .nth(i)
        .context("short snmp line")?
        .parse()?)
}

/// A TCP SYN to port 443 with valid IPv4 and TCP checksums (the stack checks them).
fn syn(src: &str, dst: &str) -> Vec<u8> {
    with_checksums(Frame::tcp(src, dst, PORT).bytes())
}

/// An untagged TCP frame of [`Frame::bytes`] (IPv4 without options, or IPv6 without extension
/// headers) with its IPv4 header and TCP checksums filled in.
pub fn with_checksums(mut f: Vec<u8>) -> Vec<u8> {
    let (ip_len, src_at, addr_len, proto_at) = if f[12..14] == [0x08, 0x00] {
        let sum = checksum(&f[14..34], 0);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        (20, 26, 4, 23)
    } else {
        (40, 22, 16, 20)
    };
    let l4 = 14 + ip_len;
    let tcp_len = (f.len() - l4) as u32;
    let mut pseudo = u32::from(f[proto_at]) + tcp_len;
    for pair in f[src_at..src_at + 2 * addr_len].chunks(2) {
        pseudo += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    let sum = checksum(&f[l4..], pseudo);
    f[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Internet checksum of `bytes` (checksum field zero) plus a partial sum.
pub fn checksum(bytes: &[u8], mut sum: u32) -> u16 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `n` disjoint prefixes per family, the first covering the blocked source; none covers the
/// admitted source, the namespace's addresses or the VIP. IPv4: one prefix of /24../32 in
/// each of `n` distinct /24s; IPv6: one of /48../128 in each of `n` distinct /48s of 2000::/3.
fn blacklist(n: usize) -> (Vec<IpNet>, Vec<IpNet>) {
    let mut rng = Rng::new(0xb1ac + n as u64);
    let mut v4: Vec<IpNet> = vec!["203.0.113.0/24".parse().expect("static prefix")];
    let mut used: std::collections::HashSet<u32> = [
        u32::from(Ipv4Addr::new(203, 0, 113, 0)) >> 8,
        u32::from(Ipv4Addr::new(198, 51, 100, 0)) >> 8,
        u32::from(Ipv4Addr::new(192, 0, 2, 0)) >> 8,
        u32::from(Ipv4Addr::new(10, 200, 0, 0)) >> 8,
    ]
    .into();
    while v4.len() < n {
        let addr = rng.next_u64() as u32;
        if !(1..=223).contains(&(addr >> 24)) || !used.insert(addr >> 8) {
            continue;
        }
        let len = 24 + rng.below(9) as u8;
        v4.push(
            IpNet::new(IpAddr::V4(addr.into()), len)
                .expect("length")
                .trunc(),
        );
    }
    let mut v6: Vec<IpNet> = vec!["2001:db8:ffff::/48".parse().expect("static prefix")];
    let mut used6: std::collections::HashSet<u64> = [
        0x2001_0db8_ffff_u64, // the blocked source's
        0x2001_0db8_0001_u64, // ADMITTED_V6 of the other benchmark
    ]
    .into();
    while v6.len() < n {
        let block = (1u64 << 45) | (rng.next_u64() & ((1 << 45) - 1));
        if !used6.insert(block) {
            continue;
        }
        let low = u128::from(rng.next_u64()) << 16 | u128::from(rng.next_u64() as u16);
        let addr = Ipv6Addr::from((u128::from(block) << 80) | (low & ((1u128 << 80) - 1)));
        let len = 48 + rng.below(81) as u8;
        v6.push(IpNet::new(IpAddr::V6(addr), len).expect("length").trunc());
    }
    (v4, v6)
}

fn blacklist_rule(v4: &[IpNet], v6: &[IpNet]) -> ListenerRule {
    ListenerRule {
        id: LISTENER,
        addr: "[::]:443".parse().expect("static address"),
        proto: TCP,
        mode: AclMode::Blacklist,
        limits: Default::default(),
        syn_cookies: Default::default(),
        prefixes: v4.iter().chain(v6).copied().collect(),
    }
}

fn nft_script(v4: &[IpNet], v6: &[IpNet]) -> String {
    let list = |p: &[IpNet]| {
        p.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",\n")
    };
    format!(
        "table netdev {NFT_TABLE} {{\n\
         set bl4 {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n\
         set bl6 {{ type ipv6_addr; flags interval; elements = {{ {} }} }}\n\
         chain ingress {{ type filter hook ingress device \"{LB_IF}\" priority 0; policy accept;\n\
         tcp dport {PORT} ip saddr @bl4 counter drop\n\
         tcp dport {PORT} ip6 saddr @bl6 counter drop\n\
         }}\n}}\n",
        list(v4),
        list(v6)
    )
}

/// One line of the table.
struct Row {
    case: String,
    prefixes: String,
    sample: Sample,
    /// The nftables row this one is compared with.
    versus: Option<Sample>,
}

/// Runs every case and prints the table. `dp` is edgelb's loaded program (not attached).
/// Which rows [`run`] measures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cases {
    All,
    /// The generator floor and the L4 forwarding rows only.
    L4,
}

pub fn run(dp: &mut Dataplane, secs: f64, cases: Cases) -> Result<()> {
    let setup = Setup::new(secs)?;
    let edgelb = dp.test_runner()?;
    let drop_all = RawXdp::verdict("bench_drop", XDP_DROP)?;
    let pass_all = RawXdp::verdict("bench_pass", XDP_PASS)?;
    let tx_all = RawXdp::verdict("bench_tx", XDP_TX)?;
    // lbb must run a native XDP program for lba's XDP_TX frames to reach it.
    let mut sink = Some(XdpLink::native(drop_all.fd(), setup.peer_ifindex)?);
    let frames = [
        ("ipv4", syn(BLOCKED_V4, LB_V4)),
        ("ipv6", syn(BLOCKED_V6, LB_V6)),
    ];
    let mut rows = Vec::new();

    let (floor, _) = setup.measure(drop_all.fd(), &frames[0].1)?;
    rows.push(Row {
        case: "generator floor: program returning XDP_DROP".into(),
        prefixes: "-".into(),
        sample: floor,
        versus: None,
    });
    for (family, frame) in frames.iter().filter(|_| cases == Cases::All) {
        let before = snmp("Tcp", "InSegs")?;
        let (s, sent) = setup.measure(pass_all.fd(), frame)?;
        let seen = snmp("Tcp", "InSegs")? - before;
        ensure!(
            seen >= sent,
            "kernel stack {family}: TCP saw {seen} of {sent} segments"
        );
        rows.push(Row {
            case: format!("kernel stack: XDP_PASS, SYN to closed port, {family}"),
            prefixes: "-".into(),
            sample: s,
            versus: None,
        });
    }

    let sizes: &[usize] = if cases == Cases::All {
        &[10, 100_000]
    } else {
        &[]
    };
    for &n in sizes {
        let (v4, v6) = blacklist(n);
        dp.apply(&[blacklist_rule(&v4, &v6)])?;
        let t = Instant::now();
        setup.nft(&nft_script(&v4, &v6))?;
        eprintln!(
            "xdp-bench: nft loaded {} prefixes in {:.1} s",
            v4.len() + v6.len(),
            t.elapsed().as_secs_f64()
        );
        let result = (|| -> Result<()> {
            for (family, frame) in &frames {
                let before = setup.nft_counted()?;
                let (nft, sent) = setup.measure(pass_all.fd(), frame)?;
                let counted = setup.nft_counted()? - before;
                ensure!(
                    counted == sent,
                    "nftables {family}: dropped {counted} of {sent}"
                );
                // The nft table stays: edgelb drops in XDP, so the frames never reach it.
                let before = dp.counters(LISTENER)?.packets[Outcome::DroppedAcl as usize];
                let (ours, sent) = setup.measure(edgelb.fd(), frame)?;
                let dropped = dp.counters(LISTENER)?.packets[Outcome::DroppedAcl as usize] - before;
                ensure!(
                    dropped == sent,
                    "edgelb {family}: dropped {dropped} of {sent}"
                );
                rows.push(Row {
                    case: format!("nftables netdev ingress drop, {family}"),
                    prefixes: n.to_string(),
                    sample: nft,
                    versus: None,
                });
                rows.push(Row {
                    case: format!("edgelb XDP ACL drop, {family}"),
                    prefixes: n.to_string(),
                    sample: ours,
                    versus: Some(nft),
                });
            }
            Ok(())
        })();
        run_in(&setup.ns, &["nft", "delete", "table", "netdev", NFT_TABLE])?;
        result?;
    }

    // L4: a listener balancing over 8 backends reached through lbb's MAC, a source it admits.
    let keys: Vec<String> = (1..=8).map(|i| format!("10.1.0.{i}:8080")).collect();
    let backends: Vec<(&[u8], u32)> = keys.iter().map(|k| (k.as_bytes(), 1)).collect();
    dp.set_ring(0, &build_table(&backends))?;
    let peer_mac = [0x02, 0, 0, 0, 0, 2];
    let entries: Vec<BackendEntry> = (1..=8u8)
        .map(|i| BackendEntry {
            addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)),
            mac: peer_mac,
            alive: true,
            egress: Default::default(),
        })
        .collect();
    dp.set_backends(0, &entries)?;
    let frame = syn(ADMITTED_V4, VIP_V4);
    // lbb puts back what forwarding changed: edgelb's outer IPv4 header (20 bytes) is written
    // over the old Ethernet header; the kernel changes the TTL, the checksum and both MACs
    // (bytes 0..26 of the frame).
    let unencap = RawXdp::restoring_sink("bench_unencap", 20, &frame[..14])?;
    let unfwd = RawXdp::restoring_sink("bench_unfwd", 0, &frame[..26])?;
    // What an operator's L4 listener does by default (a flow table: `--sticky-duration`), and
    // the ring alone; without access control and with the blacklist of 10.
    let (v4, v6) = blacklist(10);
    let listed = blacklist_rule(&v4, &v6);
    let open = ListenerRule {
        mode: AclMode::All,
        limits: Default::default(),
        syn_cookies: Default::default(),
        prefixes: Vec::new(),
        ..listed.clone()
    };
    let variants = [
        (&open, FLOW_SECS),
        (&open, 0),
        (&listed, FLOW_SECS),
        (&listed, 0),
    ];
    // Every case once per round, the median of the rounds reported: this host's speed drifts
    // over tens of seconds, and a ratio of two rows is only fair if they saw the same drift.
    let mut tx_runs = Vec::new();
    let mut l4_runs = vec![Vec::new(); variants.len()];
    let mut fwd_runs = Vec::new();
    for _ in 0..L4_ROUNDS {
        // The bare transmission, unchanged frames: lbb only drops.
        drop(sink.take());
        sink = Some(XdpLink::native(drop_all.fd(), setup.peer_ifindex)?);
        tx_runs.push(setup.measure(tx_all.fd(), &frame)?.0);

        drop(sink.take());
        sink = Some(XdpLink::native(unencap.fd(), setup.peer_ifindex)?);
        for ((rule, flow_secs), runs) in variants.iter().zip(&mut l4_runs) {
            let l4 = L4Listener {
                flow_secs: *flow_secs,
                ..L4Listener::in_group(0)
            };
            dp.apply_l4(
                std::slice::from_ref(*rule),
                &L4Listeners::from([(rule.id, l4)]),
            )?;
            let before = dp.counters(LISTENER)?.packets[Outcome::ForwardedL4 as usize];
            let (sample, sent) = setup.measure(edgelb.fd(), &frame)?;
            let forwarded = dp.counters(LISTENER)?.packets[Outcome::ForwardedL4 as usize] - before;
            ensure!(
                forwarded == sent,
                "edgelb L4: forwarded {forwarded} of {sent} (frames not restored?)"
            );
            runs.push(sample);
        }

        drop(sink.take());
        sink = Some(XdpLink::native(unfwd.fd(), setup.peer_ifindex)?);
        let before = snmp("Ip", "ForwDatagrams")?;
        let (sample, sent) = setup.measure(pass_all.fd(), &frame)?;
        let forwarded = snmp("Ip", "ForwDatagrams")? - before;
        ensure!(
            forwarded == sent,
            "kernel forwarding: forwarded {forwarded} of {sent} (frames not restored?)"
        );
        fwd_runs.push(sample);
    }
    drop(sink);
    rows.push(Row {
        case: "XDP_TX alone (program returning XDP_TX), to lbb".into(),
        prefixes: "-".into(),
        sample: median(tx_runs),
        versus: None,
    });
    for ((rule, flow_secs), runs) in variants.iter().zip(l4_runs) {
        let table = if *flow_secs == 0 {
            "ring only"
        } else {
            "flow table"
        };
        rows.push(Row {
            case: format!("edgelb L4 forward ({table}): IPv4-in-IPv4, XDP_TX, ipv4"),
            prefixes: if rule.prefixes.is_empty() {
                "-".into()
            } else {
                (rule.prefixes.len() / 2).to_string()
            },
            sample: median(runs),
            versus: None,
        });
    }
    rows.push(Row {
        case: "kernel ip_forward (XDP_PASS), to lbb, ipv4".into(),
        prefixes: "-".into(),
        sample: median(fwd_runs),
        versus: None,
    });

    print_table(&rows, floor);
    drop(setup);
    Ok(())
}

/// The run of median CPU time per frame.
fn median(mut runs: Vec<Sample>) -> Sample {
    runs.sort_by(|a, b| a.cpu_ns.total_cmp(&b.cpu_ns));
    runs[runs.len() / 2]
}

fn print_table(rows: &[Row], floor: Sample) {
    println!();
    println!(
        "Receiver CPU per packet, frames generated in the kernel (BPF_PROG_TEST_RUN live frames) \
         on one CPU; CPU = the calling thread + that CPU's ksoftirqd"
    );
    println!(
        "| case | prefixes/family | packets | kernel ns/pkt | CPU ns/pkt | CPU ns above floor | Mpps per CPU-second | edgelb/nftables |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = r.sample;
        let ratio = r.versus.map_or(String::new(), |n| {
            format!(
                "{:.1}x ({:.1}x above floor)",
                s.per_cpu_second() / n.per_cpu_second(),
                (n.cpu_ns - floor.cpu_ns) / (s.cpu_ns - floor.cpu_ns).max(0.1)
            )
        });
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {} |",
            r.case,
            r.prefixes,
            s.packets,
            s.kernel_ns,
            s.cpu_ns,
            s.cpu_ns - floor.cpu_ns,
            s.per_cpu_second() / 1e6,
            ratio
        );
    }
}

/// Seconds per measured run, from `--live-secs` (default 2).
pub fn duration_arg() -> Result<Duration> {
    let secs: f64 = std::env::args()
        .skip_while(|a| a != "--live-secs")
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(2.0);
    ensure!(
        (0.1..=30.0).contains(&secs),
        "--live-secs must be within 0.1..=30"
    );
    Ok(Duration::from_secs_f64(secs))
}
