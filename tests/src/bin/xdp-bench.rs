//! `cargo xtask bench xdp`: the XDP program's cost per packet, measured by the kernel with
//! BPF_PROG_TEST_RUN and `repeat`, for passed and dropped packets, IPv4 and IPv6, with a small
//! and a large ACL, and for an L4 listener whose admitted packets are sent IP-in-IP to the
//! backend its Maglev ring picks (IPv4 and IPv6 backends).
//! Needs root.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgelb::acl::AclMode;
use edgelb::dataplane::{BackendEntry, Dataplane, L4Groups, ListenerRule};
use edgelb_tests::live_bench;
use edgelb_tests::packet::{Frame, TCP};
use edgelb_tests::rng::Rng;
use ipnet::IpNet;
use lb_common::Outcome;
use lb_common::maglev::build_table;

const ADMITTED_V4: &str = "198.51.100.7";
const REFUSED_V4: &str = "203.0.113.9";
const ADMITTED_V6: &str = "2001:db8:1::7";
const REFUSED_V6: &str = "2001:db8:ffff::9";

fn main() -> anyhow::Result<()> {
    let repeat: u32 = std::env::args()
        .skip_while(|a| a != "--repeat")
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let live_secs = live_bench::duration_arg()?;
    live_bench::install_signal_handlers();
    let mut dp = Dataplane::load()?;
    if std::env::args().any(|a| a == "--l4") {
        // Only the live L4 rows: what `perf record` is pointed at when profiling the forward path.
        return live_bench::run(&mut dp, live_secs.as_secs_f64(), live_bench::Cases::L4);
    }
    println!(
        "edgelb XDP program, BPF_PROG_TEST_RUN, repeat={repeat}, mean ns per packet (kernel's own timing)"
    );
    println!(
        "{:<8} {:>9} {:>10} {:>10}",
        "family", "prefixes", "pass ns", "drop ns"
    );
    dp.apply(&[whitelist(10, false)])?;
    let mut arp = Frame::tcp(REFUSED_V4, "192.0.2.1", 443).bytes();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let arp_ns = measure(&mut dp, &arp, repeat, Outcome::NotOurs)?;
    let other_port = measure(
        &mut dp,
        &Frame::tcp(REFUSED_V4, "192.0.2.1", 444).bytes(),
        repeat,
        Outcome::NotOurs,
    )?;
    println!(
        "baseline: ARP (parse ethernet, count) {arp_ns} ns; TCP to a port without a listener {other_port} ns"
    );
    for prefixes in [10usize, 100_000] {
        for v6 in [false, true] {
            let rule = whitelist(prefixes, v6);
            dp.apply(std::slice::from_ref(&rule))?;
            let (admitted, refused) = if v6 {
                (ADMITTED_V6, REFUSED_V6)
            } else {
                (ADMITTED_V4, REFUSED_V4)
            };
            let dst = if v6 { "2001:db8::1" } else { "192.0.2.1" };
            let (pass, drop) = pass_drop(&mut dp, admitted, refused, dst, repeat)?;
            println!(
                "{:<8} {:>9} {:>10} {:>10}",
                if v6 { "ipv6" } else { "ipv4" },
                prefixes,
                pass,
                drop
            );
        }
    }
    // A listener on one address is found through the hash map rather than the port array.
    let mut exact = whitelist(10, false);
    exact.addr = "192.0.2.1:443".parse()?;
    dp.apply(&[exact])?;
    let (pass, drop) = pass_drop(&mut dp, ADMITTED_V4, REFUSED_V4, "192.0.2.1", repeat)?;
    println!(
        "listener on one address (hash lookup), ipv4, 10 prefixes: pass {pass} ns, drop {drop} ns"
    );
    // The single-run method's own cost, on a userspace listener's pass.
    let rule = whitelist(10, false);
    dp.apply(std::slice::from_ref(&rule))?;
    let single_pass = measure_single(
        &mut dp,
        &Frame::tcp(ADMITTED_V4, "192.0.2.1", 443).bytes(),
        (repeat / 10).max(1),
        Outcome::Passed,
    )?;
    println!("userspace listener, ipv4, 10 prefixes, single runs: pass {single_pass} ns");
    // An L4 listener: admitted clients are sent IP-in-IP to a backend of the group's Maglev
    // ring, whose counter rises.
    let keys: Vec<String> = (1..=8).map(|i| format!("10.1.0.{i}:8080")).collect();
    let backends: Vec<(&[u8], u32)> = keys.iter().map(|k| (k.as_bytes(), 1)).collect();
    dp.set_ring(0, &build_table(&backends))?;
    for outer_v6 in [false, true] {
        let entries: Vec<BackendEntry> = (1..=8u8)
            .map(|i| BackendEntry {
                addr: if outer_v6 {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, u16::from(i)))
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 1, 0, i))
                },
                mac: [0x02, 0, 0, 0, 0, i],
                alive: true,
                egress: Default::default(),
            })
            .collect();
        dp.set_backends(0, &entries)?;
        for v6 in [false, true] {
            let rule = whitelist(10, v6);
            dp.apply_in_groups(std::slice::from_ref(&rule), &L4Groups::from([(rule.id, 0)]))?;
            let (admitted, refused, dst) = if v6 {
                (ADMITTED_V6, REFUSED_V6, "2001:db8::1")
            } else {
                (ADMITTED_V4, REFUSED_V4, "192.0.2.1")
            };
            let before: u64 = (0..8)
                .map(|b| dp.backend_packets(0, b))
                .sum::<Result<u64, _>>()?;
            // BPF_PROG_TEST_RUN repeats a program on the frame it left, so a forwarded frame
            // would be measured once and its encapsulated copy (not ours) after that: each
            // forward is a run of its own, the kernel timing one program run. The same
            // method on a frame a userspace listener passes gives the overhead to compare.
            let runs = (repeat / 10).max(1);
            let forward = measure_single(
                &mut dp,
                &Frame::tcp(admitted, dst, 443).bytes(),
                runs,
                Outcome::ForwardedL4,
            )?;
            let drop = measure_single(
                &mut dp,
                &Frame::tcp(refused, dst, 443).bytes(),
                runs,
                Outcome::DroppedAcl,
            )?;
            let forwarded: u64 = (0..8)
                .map(|b| dp.backend_packets(0, b))
                .sum::<Result<u64, _>>()?;
            anyhow::ensure!(
                forwarded - before >= u64::from(runs),
                "frames were not forwarded"
            );
            println!(
                "L4 listener (Maglev pick, IP-in-IP, XDP_TX), {} in {}, 10 prefixes, single runs: forward {forward} ns, drop {drop} ns",
                if v6 { "ipv6" } else { "ipv4" },
                if outer_v6 { "ipv6" } else { "ipv4" },
            );
        }
    }
    // Packets per CPU-second of the receiver, next to nftables and the kernel stack.
    live_bench::run(&mut dp, live_secs.as_secs_f64(), live_bench::Cases::All)
}

/// A whitelist listener on port 443 with `n` prefixes of one family, one of which admits the
/// admitted source; the others are random and never cover the refused source.
fn whitelist(n: usize, v6: bool) -> ListenerRule {
    let mut rng = Rng::new(n as u64);
    let mut prefixes: Vec<IpNet> = Vec::with_capacity(n);
    let admitted = if v6 { ADMITTED_V6 } else { ADMITTED_V4 };
    prefixes.push(IpNet::from(
        admitted.parse::<IpAddr>().expect("static address"),
    ));
    while prefixes.len() < n {
        let net = if v6 {
            let a =
                Ipv6Addr::from(((0x2001_0db8_u128 << 96) | u128::from(rng.next_u64())) << 16 >> 16);
            IpNet::new(IpAddr::V6(a), 48 + rng.below(81) as u8)
        } else {
            let a = Ipv4Addr::from(0x0a00_0000 | (rng.next_u64() as u32 & 0x00ff_ffff));
            IpNet::new(IpAddr::V4(a), 16 + rng.below(17) as u8)
        }
        .expect("prefix length in range")
        .trunc();
        prefixes.push(net);
    }
    prefixes.sort();
    prefixes.dedup();
    ListenerRule {
        id: 1,
        addr: if v6 { "[::]:443" } else { "0.0.0.0:443" }
            .parse()
            .expect("static address"),
        proto: TCP,
        mode: AclMode::Whitelist,
        limits: Default::default(),
        syn_cookies: Default::default(),
        prefixes,
    }
}

/// Costs of a TCP frame to port 443 of `dst` from an admitted and from a refused source.
fn pass_drop(
    dp: &mut Dataplane,
    admitted: &str,
    refused: &str,
    dst: &str,
    repeat: u32,
) -> anyhow::Result<(u64, u64)> {
    let pass = measure(
        dp,
        &Frame::tcp(admitted, dst, 443).bytes(),
        repeat,
        Outcome::Passed,
    )?;
    let drop = measure(
        dp,
        &Frame::tcp(refused, dst, 443).bytes(),
        repeat,
        Outcome::DroppedAcl,
    )?;
    Ok((pass, drop))
}

fn measure(dp: &mut Dataplane, frame: &[u8], repeat: u32, expect: Outcome) -> anyhow::Result<u64> {
    let (verdict, ns) = dp.test_run_repeat(frame, repeat)?;
    anyhow::ensure!(
        verdict == expect.action(),
        "verdict {verdict}, expected {expect:?}"
    );
    Ok(ns)
}

/// Mean kernel-timed cost of `runs` separate runs of one frame each.
fn measure_single(
    dp: &mut Dataplane,
    frame: &[u8],
    runs: u32,
    expect: Outcome,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for _ in 0..runs {
        let (verdict, ns) = dp.test_run_repeat(frame, 1)?;
        anyhow::ensure!(
            verdict == expect.action(),
            "verdict {verdict}, expected {expect:?}"
        );
        total += ns;
    }
    Ok(total / u64::from(runs))
}
