//! The XDP program, loaded in the kernel, run on crafted frames through BPF_PROG_TEST_RUN.
//! A table of named cases pins the behaviour; a differential test holds the program to the
//! reference classifier over thousands of generated frames and map contents.
use edgelb::acl::AclMode::{All, Blacklist, Whitelist};
use edgelb::dataplane::{SourceLimits, SynCookies};
use edgelb_tests::dataplane_fixture::{Fixture, rule};
use edgelb_tests::live_bench::{checksum, with_checksums};
use edgelb_tests::packet::{Ext, Frame, ICMP, LINUX_SYN_OPTIONS, TCP, UDP};
use edgelb_tests::privilege::root_or_skip;
use lb_common::{
    NO_LISTENER_SLOT, NS_PER_SEC, Outcome, SYN_STAMP_ANY_NS, SYN_STAMP_NS, syn_options,
};

fn table_rules() -> Vec<edgelb::dataplane::ListenerRule> {
    vec![
        rule(
            1,
            "10.0.0.1:443",
            TCP,
            Whitelist,
            &["192.168.1.0/24", "fd00:1::/64"],
        ),
        rule(2, "0.0.0.0:80", TCP, Blacklist, &["192.168.66.0/24"]),
        rule(
            3,
            "[::]:53",
            UDP,
            Whitelist,
            &["10.9.0.0/16", "fd00:9::/32"],
        ),
        rule(4, "[fd00::1]:443", TCP, Blacklist, &["fd00:bad::/48"]),
        rule(5, "10.0.0.1:8080", TCP, All, &[]),
    ]
}

struct Case {
    what: &'static str,
    frame: Vec<u8>,
    outcome: Outcome,
    slot: u32,
}

fn case(what: &'static str, frame: Vec<u8>, outcome: Outcome, slot: u32) -> Case {
    Case {
        what,
        frame,
        outcome,
        slot,
    }
}

fn cases() -> Vec<Case> {
    use Outcome::*;
    let listed = || Frame::tcp("192.168.1.5", "10.0.0.1", 443);
    let unlisted = || Frame::tcp("192.168.2.5", "10.0.0.1", 443);
    let mut truncated = unlisted().bytes();
    truncated.truncate(14 + 20 + 3);
    let mut arp = listed().bytes();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut bad_ihl = unlisted().bytes();
    bad_ihl[14] = 0x44;
    let mut esp = Frame::udp("fd00:8::1", "fd00::1", 53);
    esp.proto = 50;
    let dest_opts = Ext::Options { kind: 60, len8: 0 };
    vec![
        case(
            "whitelisted IPv4 client passes",
            listed().bytes(),
            Passed,
            1,
        ),
        case(
            "unlisted IPv4 client is dropped",
            unlisted().bytes(),
            DroppedAcl,
            1,
        ),
        case(
            "same client, another port: not ours",
            Frame::tcp("192.168.2.5", "10.0.0.1", 444).bytes(),
            NotOurs,
            0,
        ),
        case(
            "UDP to a TCP listener: not ours",
            Frame::udp("192.168.2.5", "10.0.0.1", 443).bytes(),
            NotOurs,
            0,
        ),
        case(
            "blacklisted source to a 0.0.0.0 listener is dropped",
            Frame::tcp("192.168.66.1", "10.7.7.7", 80).bytes(),
            DroppedAcl,
            2,
        ),
        case(
            "other source to a 0.0.0.0 listener passes",
            Frame::tcp("192.168.67.1", "10.7.7.7", 80).bytes(),
            Passed,
            2,
        ),
        case(
            "a 0.0.0.0 listener does not take IPv6",
            Frame::tcp("fd00::5", "fd00::7", 80).bytes(),
            NotOurs,
            0,
        ),
        case(
            "a [::] listener takes IPv4 too (dual stack)",
            Frame::udp("10.9.1.1", "10.0.0.1", 53).bytes(),
            Passed,
            3,
        ),
        case(
            "a [::] whitelist drops an unlisted IPv6 source",
            Frame::udp("fd00:8::1", "fd00::1", 53).bytes(),
            DroppedAcl,
            3,
        ),
        case(
            "an IPv4-mapped source is checked as IPv4 (listed)",
            Frame::udp("::ffff:10.9.1.1", "fd00::1", 53).bytes(),
            Passed,
            3,
        ),
        case(
            "an IPv4-mapped source is checked as IPv4 (unlisted)",
            Frame::udp("::ffff:10.8.1.1", "fd00::1", 53).bytes(),
            DroppedAcl,
            3,
        ),
        case(
            "exact IPv6 listener, blacklisted source",
            Frame::tcp("fd00:bad::1", "fd00::1", 443).bytes(),
            DroppedAcl,
            4,
        ),
        case(
            "exact IPv6 listener, other source",
            Frame::tcp("fd00:baf::1", "fd00::1", 443).bytes(),
            Passed,
            4,
        ),
        case(
            "802.1Q tag, unlisted: dropped",
            unlisted().vlans(&[0x8100]).bytes(),
            DroppedAcl,
            1,
        ),
        case(
            "QinQ tags, listed: passed",
            listed().vlans(&[0x88a8, 0x8100]).bytes(),
            Passed,
            1,
        ),
        case(
            "QinQ tags, unlisted: dropped",
            unlisted().vlans(&[0x88a8, 0x8100]).bytes(),
            DroppedAcl,
            1,
        ),
        case(
            "three VLAN tags: unparsable, passed",
            unlisted().vlans(&[0x88a8, 0x8100, 0x8100]).bytes(),
            Unparsable,
            0,
        ),
        case(
            "40 bytes of IPv4 options, unlisted: dropped",
            unlisted().v4_options(40).bytes(),
            DroppedAcl,
            1,
        ),
        case(
            "IPv4 first fragment is classified",
            unlisted().v4_fragment(0, true).bytes(),
            DroppedAcl,
            1,
        ),
        case(
            "IPv4 non-first fragment is passed",
            unlisted().v4_fragment(185, false).bytes(),
            Fragment,
            0,
        ),
        case(
            "IPv4 header length below 5 words: unparsable",
            bad_ihl,
            Unparsable,
            0,
        ),
        case(
            "TCP header cut inside the ports: unparsable",
            truncated,
            Unparsable,
            0,
        ),
        case("ARP: not ours", arp, NotOurs, 0),
        case(
            "ICMP to a listener address: not ours",
            Frame::new(ip("192.168.2.5"), ip("10.0.0.1"), ICMP, 0).bytes(),
            NotOurs,
            0,
        ),
        case(
            "all-mode listener passes anyone",
            Frame::tcp("203.0.113.9", "10.0.0.1", 8080).bytes(),
            Passed,
            5,
        ),
        case(
            "IPv6 hop-by-hop, routing, AH and destination options, unlisted: dropped",
            Frame::udp("fd00:8::1", "fd00::1", 53)
                .exts(&[
                    Ext::Options { kind: 0, len8: 1 },
                    Ext::Options { kind: 43, len8: 2 },
                    Ext::Auth { len4: 4 },
                    dest_opts,
                ])
                .bytes(),
            DroppedAcl,
            3,
        ),
        case(
            "IPv6 first fragment is classified",
            Frame::udp("fd00:8::1", "fd00::1", 53)
                .exts(&[Ext::Fragment {
                    offset: 0,
                    more: true,
                }])
                .bytes(),
            DroppedAcl,
            3,
        ),
        case(
            "IPv6 non-first fragment is passed",
            Frame::udp("fd00:8::1", "fd00::1", 53)
                .exts(&[Ext::Fragment {
                    offset: 9,
                    more: true,
                }])
                .bytes(),
            Fragment,
            0,
        ),
        case(
            "IPv6 chain at the bound (6 headers) is classified",
            Frame::udp("fd00:8::1", "fd00::1", 53)
                .exts(&[dest_opts; 6])
                .bytes(),
            DroppedAcl,
            3,
        ),
        case(
            "IPv6 chain over the bound (7 headers): unparsable",
            Frame::udp("fd00:8::1", "fd00::1", 53)
                .exts(&[dest_opts; 7])
                .bytes(),
            Unparsable,
            0,
        ),
        case("IPv6 ESP: not ours", esp.bytes(), NotOurs, 0),
    ]
}

fn ip(s: &str) -> std::net::IpAddr {
    edgelb_tests::packet::parse(s)
}

#[test]
fn packet_table_gives_the_expected_verdict_and_counter() {
    if !root_or_skip("packet_table_gives_the_expected_verdict_and_counter") {
        return;
    }
    let mut fx = Fixture::load();
    fx.apply(&table_rules());
    let mut failures = Vec::new();
    for c in cases() {
        let before = fx.counters(c.slot);
        let (verdict, reference) = fx.run(&c.frame);
        let after = fx.counters(c.slot);
        let i = c.outcome as usize;
        let counted = after.packets[i] - before.packets[i] == 1
            && after.bytes[i] - before.bytes[i] == c.frame.len() as u64;
        let expected_ref = lb_common::reference::Decision {
            outcome: c.outcome,
            slot: c.slot,
            backend: None,
        };
        if verdict != c.outcome.action() || !counted || reference != expected_ref {
            failures.push(format!(
                "{}: kernel verdict {verdict} (want {}), counted in slot {} as {:?}: {counted}, reference says {reference:?}",
                c.what,
                c.outcome.action(),
                c.slot,
                c.outcome
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn frames_shorter_than_an_ethernet_header_are_refused_by_the_kernel_test_harness() {
    // BPF_PROG_TEST_RUN rejects XDP input under 14 bytes (EINVAL), so the differential test
    // starts at 14. Real NICs do not deliver such frames either.
    if !root_or_skip(
        "frames_shorter_than_an_ethernet_header_are_refused_by_the_kernel_test_harness",
    ) {
        return;
    }
    let mut fx = Fixture::load();
    assert!(fx.dp.test_run(&[0u8; 13]).is_err());
    assert_eq!(
        fx.dp.test_run(&[0u8; 14]).ok(),
        Some(Outcome::NotOurs.action())
    );
    assert_eq!(
        fx.counters(NO_LISTENER_SLOT).packets_of(Outcome::NotOurs),
        1
    );
}

#[test]
fn an_l4_listener_sends_a_client_to_one_backend_whatever_its_headers() {
    if !root_or_skip("an_l4_listener_sends_a_client_to_one_backend_whatever_its_headers") {
        return;
    }
    use lb_common::maglev::{build_table, source_hash, table_slot};
    let mut fx = Fixture::load();
    let group = 5;
    fx.apply_in_groups(
        &[rule(1, "[::]:443", TCP, Blacklist, &["10.66.0.0/16"])],
        &edgelb::dataplane::L4Groups::from([(1, group)]),
    );
    fx.serve_group(group);
    let keys: Vec<String> = (1..=8).map(|i| format!("10.1.0.{i}:8080")).collect();
    let ring = build_table(
        &keys
            .iter()
            .map(|k| (k.as_bytes(), 1))
            .collect::<Vec<(&[u8], u32)>>(),
    );
    fx.set_ring(group, ring.clone());
    let backend_of = |client: &str| {
        let addr = match ip(client) {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        ring[table_slot(source_hash(&addr)) as usize]
    };
    let v4 = || Frame::tcp("10.2.3.4", "10.0.0.1", 443);
    let v6 = || Frame::tcp("fd00:7::9", "fd00::1", 443);
    let hop = Ext::Options { kind: 0, len8: 1 };
    let frag0 = Ext::Fragment {
        offset: 0,
        more: true,
    };
    // (what, frame, the client whose backend it must count for; None: no pick)
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("IPv4", v4().bytes(), Some("10.2.3.4")),
        // Tagged frames are passed to the stack untouched (Outcome::VlanL4).
        ("IPv4, one VLAN tag", v4().vlans(&[0x8100]).bytes(), None),
        ("IPv4, QinQ", v4().vlans(&[0x88a8, 0x8100]).bytes(), None),
        (
            "IPv4 with options",
            v4().v4_options(12).bytes(),
            Some("10.2.3.4"),
        ),
        (
            "IPv4 first fragment",
            v4().v4_fragment(0, true).bytes(),
            Some("10.2.3.4"),
        ),
        (
            "the same client IPv4-mapped, extension headers",
            Frame::tcp("::ffff:10.2.3.4", "fd00::1", 443)
                .exts(&[hop, frag0])
                .bytes(),
            Some("10.2.3.4"),
        ),
        ("IPv6", v6().bytes(), Some("fd00:7::9")),
        (
            "IPv6, extension headers",
            v6().exts(&[hop, frag0]).bytes(),
            Some("fd00:7::9"),
        ),
        (
            "IPv4 later fragment of the first fragment's datagram",
            v4().v4_fragment(9, false).bytes(),
            Some("10.2.3.4"),
        ),
        (
            "IPv4 later fragment of a datagram whose first one was not seen",
            Frame::tcp("10.2.3.5", "10.0.0.1", 443)
                .v4_fragment(9, false)
                .bytes(),
            None,
        ),
        (
            "UDP to the port",
            Frame::udp("10.2.3.4", "10.0.0.1", 443).bytes(),
            None,
        ),
        (
            "refused by the listener's blacklist",
            Frame::tcp("10.66.1.1", "10.0.0.1", 443).bytes(),
            None,
        ),
    ];
    let all = |fx: &Fixture| -> Vec<u64> {
        (0..8)
            .map(|b| fx.backend_counters(group, b).packets)
            .collect()
    };
    let mut failures = Vec::new();
    for (what, frame, client) in cases {
        let before = all(&fx);
        let (_, reference) = fx.run(&frame);
        let after = all(&fx);
        let rose: Vec<u32> = (0..8u32)
            .filter(|b| after[*b as usize] != before[*b as usize])
            .collect();
        let expected: Vec<u32> = client.map(backend_of).into_iter().collect();
        let reference: Vec<u32> = reference.backend.map(|p| p.backend).into_iter().collect();
        if rose != expected || reference != expected {
            failures.push(format!(
                "{what}: kernel counted {rose:?}, reference {reference:?}, expected {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs one frame through the kernel and the reference: both must reach `outcome`, and the
/// kernel count it once in `slot`; a difference goes into `failures`. Returns the kernel's
/// output frame.
fn step(
    fx: &mut Fixture,
    what: &str,
    frame: &[u8],
    outcome: Outcome,
    slot: u32,
    failures: &mut Vec<String>,
) -> Vec<u8> {
    let before = fx.counters(slot);
    let (verdict, out, reference, _) = fx.run_output(frame);
    let after = fx.counters(slot);
    let counted = after.packets[outcome as usize] - before.packets[outcome as usize] == 1;
    if verdict != outcome.action() || !counted || reference.outcome != outcome {
        failures.push(format!(
            "{what}: kernel verdict {verdict} (want {} for {outcome:?}), counted: {counted}, reference says {:?}",
            outcome.action(),
            reference.outcome
        ));
    }
    out
}

#[test]
fn sources_over_a_listeners_limits_are_dropped_and_counted_rate_limited() {
    use Outcome::{Passed, RateLimited};
    if !root_or_skip("sources_over_a_listeners_limits_are_dropped_and_counted_rate_limited") {
        return;
    }
    let limited = |id, addr, proto, syn_per_sec, pps| {
        let mut r = rule(id, addr, proto, All, &[]);
        r.limits = SourceLimits {
            syn_per_sec,
            pps,
            block_secs: 0,
        };
        r
    };
    let mut fx = Fixture::load();
    fx.apply(&[
        limited(1, "10.0.0.1:443", TCP, 3, 0),
        limited(2, "10.0.0.1:53", UDP, 0, 4),
        limited(3, "[::]:443", TCP, 2, 0),
        rule(4, "10.0.0.1:80", TCP, All, &[]),
        limited(5, "10.0.0.1:8443", TCP, 2, 4),
    ]);
    const ACK: u8 = 0x10;
    const SYN_ACK: u8 = 0x12;
    let syn = |src: &str, dst: &str| Frame::tcp(src, dst, 443).bytes();
    let mut steps: Vec<(&str, Vec<u8>, Outcome, u32)> = Vec::new();
    for i in 0..6 {
        let want = if i < 3 { Passed } else { RateLimited };
        steps.push((
            "SYN from a busy IPv4 source",
            syn("192.168.1.5", "10.0.0.1"),
            want,
            1,
        ));
    }
    // Established traffic of the same source is not a new connection.
    let ack = Frame::tcp("192.168.1.5", "10.0.0.1", 443)
        .tcp_flags(ACK)
        .bytes();
    steps.push(("ACK from the busy source", ack, Passed, 1));
    let syn_ack = Frame::tcp("192.168.1.5", "10.0.0.1", 443)
        .tcp_flags(SYN_ACK)
        .bytes();
    steps.push(("SYN-ACK from the busy source", syn_ack, Passed, 1));
    steps.push((
        "SYN from another source",
        syn("192.168.1.6", "10.0.0.1"),
        Passed,
        1,
    ));
    // Another listener, without limits, serves the busy source as before.
    let other = Frame::tcp("192.168.1.5", "10.0.0.1", 80).bytes();
    steps.push((
        "SYN from the busy source to a listener without limits",
        other,
        Passed,
        4,
    ));
    // IPv6 sources are limited by their /64.
    steps.push(("SYN from fd00:1::1", syn("fd00:1::1", "fd00::9"), Passed, 3));
    steps.push((
        "SYN from fd00:1::2, the same /64",
        syn("fd00:1::2", "fd00::9"),
        Passed,
        3,
    ));
    steps.push((
        "SYN from fd00:1::3, the same /64",
        syn("fd00:1::3", "fd00::9"),
        RateLimited,
        3,
    ));
    steps.push((
        "SYN from fd00:2::1, another /64",
        syn("fd00:2::1", "fd00::9"),
        Passed,
        3,
    ));
    // A frame limit counts every frame.
    for i in 0..6 {
        let want = if i < 4 { Passed } else { RateLimited };
        let frame = Frame::udp("192.168.1.5", "10.0.0.1", 53)
            .payload(10)
            .bytes();
        steps.push(("UDP from a busy source", frame, want, 2));
    }
    // Both limits: a SYN the connection limit refuses still counts as a frame; a frame the
    // frame limit refuses leaves the connection budget alone.
    let both = |flags| {
        Frame::tcp("192.168.1.7", "10.0.0.1", 8443)
            .tcp_flags(flags)
            .bytes()
    };
    steps.push(("both limits: SYN 1", both(0x02), Passed, 5));
    steps.push(("both limits: SYN 2", both(0x02), Passed, 5));
    steps.push(("both limits: SYN 3, over 2/s", both(0x02), RateLimited, 5));
    steps.push(("both limits: ACK, the 4th frame", both(ACK), Passed, 5));
    steps.push(("both limits: ACK, the 5th frame", both(ACK), RateLimited, 5));
    // Not SYNs: a TCP header cut short, and a later IPv6 fragment (no header at all).
    let mut short = Frame::tcp("192.168.1.8", "10.0.0.1", 8443).bytes();
    short.truncate(14 + 20 + 12);
    for i in 0..5 {
        let want = if i < 4 { Passed } else { RateLimited };
        steps.push(("both limits: a short TCP header", short.clone(), want, 5));
    }
    let mut failures = Vec::new();
    for (what, frame, outcome, slot) in steps {
        step(&mut fx, what, &frame, outcome, slot, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "failing steps:\n{}",
        failures.join("\n")
    );
}

/// A listener on TCP and UDP (`--http3 on`) is one listener id with two entries. A source it
/// blocked through its UDP entry stays blocked across a reload that keeps it (a reload once
/// matched the UDP entry against the TCP one, found the key changed, and forgot the
/// listener's blocks and budgets).
#[test]
fn a_reload_keeps_the_blocks_of_a_listener_on_tcp_and_udp() {
    if !root_or_skip("a_reload_keeps_the_blocks_of_a_listener_on_tcp_and_udp") {
        return;
    }
    let limited = |proto| {
        let mut r = rule(1, "10.0.0.1:443", proto, All, &[]);
        r.limits = SourceLimits {
            syn_per_sec: 0,
            pps: 2,
            block_secs: 30,
        };
        r
    };
    let rules = [limited(TCP), limited(UDP)];
    let mut fx = Fixture::load();
    let apply = |fx: &mut Fixture| {
        fx.dp
            .apply_config(&rules, &[], &[])
            .unwrap_or_else(|e| panic!("applying: {e}"));
    };
    apply(&mut fx);
    let quic = Frame::udp("192.168.1.5", "10.0.0.1", 443)
        .payload(10)
        .bytes();
    let blocked = |fx: &Fixture| fx.counters(1).packets[Outcome::Blocked as usize];
    // Over 2 frames a second for a second: blocked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while blocked(&fx) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "not blocked after 5 s at 20 frames a second"
        );
        fx.run(&quic);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let listed = |fx: &Fixture| {
        fx.dp
            .blocked()
            .unwrap_or_else(|e| panic!("listing blocks: {e}"))
            .iter()
            .any(|b| b.listener_id == 1 && b.source == ip("192.168.1.5"))
    };
    assert!(listed(&fx), "the block is not listed");

    apply(&mut fx);
    assert!(
        listed(&fx),
        "a reload that changed nothing lifted the block"
    );
    let before = blocked(&fx);
    fx.run(&quic);
    assert_eq!(
        blocked(&fx),
        before + 1,
        "the source is served after a reload"
    );
}

/// The access control tries hold 262,144 prefixes, and a reload adds the new ones before it
/// removes the old: lists that fit alone but not next to the running ones are refused with a
/// message that says so, before anything is written (no prefix of the new list in force, not
/// even for a moment).
#[test]
fn lists_that_do_not_fit_next_to_the_running_ones_are_refused_before_anything_changes() {
    if !root_or_skip("lists_that_do_not_fit_next_to_the_running_ones_are_refused") {
        return;
    }
    let many = |first: u32, n: u32| -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    "{first}.{}.{}.{}/32",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                )
            })
            .collect()
    };
    let whitelist = |prefixes: &[String]| {
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        rule(1, "10.0.0.1:443", TCP, Whitelist, &refs)
    };
    let (old, new) = (many(10, 150_000), many(11, 150_000));
    let mut fx = Fixture::load();
    fx.dp
        .apply(&[whitelist(&old)])
        .unwrap_or_else(|e| panic!("150,000 prefixes: {e}"));
    let verdict = |fx: &mut Fixture, src: &str| fx.run(&Frame::tcp(src, "10.0.0.1", 443).bytes()).0;
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    assert_eq!(
        (verdict(&mut fx, "10.0.0.7"), verdict(&mut fx, "11.0.0.7")),
        (XDP_PASS, XDP_DROP)
    );

    let e = fx
        .dp
        .apply(&[whitelist(&new)])
        .expect_err("300,000 prefixes at once do not fit");
    let text = e.to_string();
    assert!(
        text.contains("need 300000 IPv4 prefixes")
            && text.contains("150000 in the new configuration")
            && text.contains("it holds 262144"),
        "{text}"
    );
    assert_eq!(
        (verdict(&mut fx, "10.0.0.7"), verdict(&mut fx, "11.0.0.7")),
        (XDP_PASS, XDP_DROP),
        "the refused change touched the running list"
    );
    // In two steps it goes through.
    fx.dp
        .apply(&[])
        .unwrap_or_else(|e| panic!("the old list out: {e}"));
    fx.dp
        .apply(&[whitelist(&new)])
        .unwrap_or_else(|e| panic!("the new list in: {e}"));
    assert_eq!(
        (verdict(&mut fx, "10.0.0.7"), verdict(&mut fx, "11.0.0.7")),
        (XDP_DROP, XDP_PASS)
    );
}

/// The program's clock (`bpf_ktime_get_coarse_ns`), for the reference's SYN stamps.
fn coarse_now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .unwrap_or_else(|e| panic!("reading the coarse clock: {e}"));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// What a SYN-ACK of the program says, read back from its bytes.
#[derive(Debug)]
struct SynAck {
    flags: u8,
    seq: u32,
    ack: u32,
    ports: (u16, u16),
    mss: Option<u16>,
    sack: bool,
    ts: Option<(u32, u32)>,
    wscale: Option<u8>,
}

/// Checks the frame's Ethernet and IP headers and checksums against `syn`'s, and reads the TCP
/// header.
fn read_syn_ack(syn: &[u8], out: &[u8]) -> SynAck {
    assert_eq!(
        out[0..6],
        syn[6..12],
        "Ethernet destination: the SYN's source"
    );
    assert_eq!(
        out[6..12],
        syn[0..6],
        "Ethernet source: the SYN's destination"
    );
    let (l4, pseudo) = if out[12..14] == [0x08, 0x00] {
        let ip = &out[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            out.len() - 14
        );
        assert_eq!(ip[9], 6);
        assert_eq!(
            ip[12..16],
            syn[30..34],
            "IPv4 source: the SYN's destination"
        );
        assert_eq!(
            ip[16..20],
            syn[26..30],
            "IPv4 destination: the SYN's source"
        );
        assert_eq!(checksum(ip, 0), 0, "IPv4 header checksum");
        let mut pseudo = ip[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((out.len() - 34) as u16).to_be_bytes());
        (34, pseudo)
    } else {
        let ip = &out[14..54];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[4], ip[5]])),
            out.len() - 54
        );
        assert_eq!(ip[6], 6);
        assert_eq!(ip[8..24], syn[38..54], "IPv6 source: the SYN's destination");
        assert_eq!(
            ip[24..40],
            syn[22..38],
            "IPv6 destination: the SYN's source"
        );
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&((out.len() - 54) as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        (54, pseudo)
    };
    let t = &out[l4..];
    let mut all = pseudo;
    all.extend_from_slice(t);
    assert_eq!(checksum(&all, 0), 0, "TCP checksum");
    let doff = usize::from(t[12] >> 4) * 4;
    assert_eq!(doff, t.len(), "the TCP header is the whole segment");
    let syn_tcp = &syn[l4..];
    let mut a = SynAck {
        flags: t[13],
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        ports: (
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        ),
        mss: None,
        sack: false,
        ts: None,
        wscale: None,
    };
    assert_eq!(
        a.ports,
        (
            u16::from_be_bytes([syn_tcp[2], syn_tcp[3]]),
            u16::from_be_bytes([syn_tcp[0], syn_tcp[1]])
        ),
        "ports swapped"
    );
    let mut i = 20;
    while i < doff {
        match t[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(t[i + 1]);
                match kind {
                    2 => a.mss = Some(u16::from_be_bytes([t[i + 2], t[i + 3]])),
                    3 => a.wscale = Some(t[i + 2]),
                    4 => a.sack = true,
                    8 => {
                        let v = |o: usize| u32::from_be_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
                        a.ts = Some((v(i + 2), v(i + 6)));
                    }
                    _ => panic!("unexpected option {kind}"),
                }
                i += len;
            }
        }
    }
    a
}

#[test]
fn a_syn_to_a_listener_with_syn_cookies_is_answered_in_place_with_a_syn_ack() {
    use Outcome::{Passed, SynCookie};
    if !root_or_skip("a_syn_to_a_listener_with_syn_cookies_is_answered_in_place_with_a_syn_ack") {
        return;
    }
    let answering = |id, addr| {
        let mut r = rule(id, addr, TCP, All, &[]);
        r.syn_cookies = SynCookies::Answer;
        r
    };
    let mut watching = rule(3, "10.0.0.1:8443", TCP, All, &[]);
    watching.syn_cookies = SynCookies::Watch;
    let mut fx = Fixture::load();
    fx.apply(&[
        answering(1, "10.0.0.1:443"),
        answering(2, "[::]:443"),
        watching,
        rule(4, "10.0.0.1:80", TCP, All, &[]),
    ]);
    let syn4 = || Frame::tcp("192.168.1.5", "10.0.0.1", 443).tcp_options(&LINUX_SYN_OPTIONS);
    let syn6 = || Frame::tcp("fd00:1::5", "fd00::9", 443).tcp_options(&LINUX_SYN_OPTIONS);
    let mut steps: Vec<(&str, Vec<u8>, Outcome, u32)> = vec![
        // The first SYN of each family goes to the kernel, which answers it with its own
        // cookie: the listener's mark that it sent one, without which no cookie is accepted.
        ("first IPv4 SYN: to the kernel", syn4().bytes(), Passed, 1),
        ("first IPv6 SYN: to the kernel", syn6().bytes(), Passed, 2),
        ("IPv4 SYN", syn4().bytes(), SynCookie, 1),
        ("IPv6 SYN", syn6().bytes(), SynCookie, 2),
        (
            "IPv4 SYN without options",
            Frame::tcp("192.168.1.6", "10.0.0.1", 443).bytes(),
            SynCookie,
            1,
        ),
        (
            "IPv4 SYN with data",
            syn4().payload(100).bytes(),
            SynCookie,
            1,
        ),
        ("ACK", syn4().tcp_flags(0x10).bytes(), Passed, 1),
        ("SYN-ACK", syn4().tcp_flags(0x12).bytes(), Passed, 1),
        ("RST", syn4().tcp_flags(0x04).bytes(), Passed, 1),
        ("SYN+FIN", syn4().tcp_flags(0x03).bytes(), Passed, 1),
        (
            "SYN with an option running past the header",
            syn4().tcp_options(&[2, 4, 5, 0xb4, 8, 30, 0, 0]).bytes(),
            Passed,
            1,
        ),
        (
            "SYN with IPv4 options",
            syn4().v4_options(4).bytes(),
            Passed,
            1,
        ),
        (
            "SYN in a VLAN tag",
            syn4().vlans(&[0x8100]).bytes(),
            Passed,
            1,
        ),
        (
            "SYN behind an IPv6 extension header",
            syn6().exts(&[Ext::Options { kind: 60, len8: 0 }]).bytes(),
            Passed,
            2,
        ),
        (
            "SYN to a listener that only counts",
            Frame::tcp("192.168.1.5", "10.0.0.1", 8443).bytes(),
            Passed,
            3,
        ),
        (
            "SYN to a listener without cookies",
            Frame::tcp("192.168.1.5", "10.0.0.1", 80).bytes(),
            Passed,
            4,
        ),
    ];
    let mut failures = Vec::new();
    let mut answers = Vec::new();
    for (what, frame, outcome, slot) in steps.drain(..) {
        fx.tables.now_ns = coarse_now_ns();
        let out = step(&mut fx, what, &frame, outcome, slot, &mut failures);
        if outcome == SynCookie {
            answers.push((what, frame, out));
        }
    }
    // A SYN left to the kernel reaches it as it came: nothing is changed before the whole
    // SYN has been read and found answerable.
    let cut_short = syn4().bytes()[..14 + 20 + 30].to_vec();
    for (what, frame) in [
        (
            "SYN with an option running past the header, unchanged",
            syn4().tcp_options(&[2, 4, 5, 0xb4, 8, 30, 0, 0]).bytes(),
        ),
        ("SYN whose TCP header is cut short, unchanged", cut_short),
    ] {
        fx.tables.now_ns = coarse_now_ns();
        let out = step(&mut fx, what, &frame, Passed, 1, &mut failures);
        if out != frame {
            failures.push(format!(
                "{what}: the kernel got {} bytes changed",
                out.len()
            ));
        }
    }

    // Stamps. Once one is due, only a SYN the kernel will answer stamps (one it drops, for a
    // wrong checksum or a martian address, would leave the listener unstamped and its
    // cookies refused); any with plausible addresses once none has for SYN_STAMP_ANY_NS.
    let valid4 = || with_checksums(syn4().bytes());
    let valid6 = || with_checksums(syn6().bytes());
    let spoil = |mut f: Vec<u8>, at: usize| {
        f[at] ^= 0x5a;
        f
    };
    let tcp_sum4 = 14 + 20 + 16;
    let tcp_sum6 = 14 + 40 + 16;
    // Ethernet's minimum: the IP header's length, not the frame's, says what is TCP.
    let mut padded = with_checksums(Frame::tcp("192.168.1.5", "10.0.0.1", 443).bytes());
    padded.resize(60, 0);
    let now = coarse_now_ns();
    fx.set_syn_stamp(1, true, now - SYN_STAMP_NS - NS_PER_SEC);
    fx.set_syn_stamp(2, false, now - SYN_STAMP_NS - NS_PER_SEC);
    let mut stamps: Vec<(&str, Vec<u8>, Outcome, u32)> = vec![
        (
            "due, IPv4 wrong TCP checksum: answered",
            spoil(valid4(), tcp_sum4),
            SynCookie,
            1,
        ),
        (
            "due, IPv4 wrong header checksum: answered",
            spoil(valid4(), 14 + 10),
            SynCookie,
            1,
        ),
        (
            "due, IPv4 SYN with data: answered",
            with_checksums(syn4().payload(10).bytes()),
            SynCookie,
            1,
        ),
        (
            "due, IPv6 wrong TCP checksum: answered",
            spoil(valid6(), tcp_sum6),
            SynCookie,
            2,
        ),
        (
            "due, IPv4 correct SYN from 127.0.0.1 (a martian): answered",
            with_checksums(
                Frame::tcp("127.0.0.1", "10.0.0.1", 443)
                    .tcp_options(&LINUX_SYN_OPTIONS)
                    .bytes(),
            ),
            SynCookie,
            1,
        ),
        (
            "due, IPv6 correct SYN from a v4-mapped source: answered",
            with_checksums(
                Frame::tcp("::ffff:192.168.1.5", "fd00::9", 443)
                    .tcp_options(&LINUX_SYN_OPTIONS)
                    .bytes(),
            ),
            SynCookie,
            2,
        ),
        (
            "due, IPv4 correct SYN padded to 60 bytes: stamps",
            padded,
            Passed,
            1,
        ),
        ("due, IPv6 correct SYN: stamps", valid6(), Passed, 2),
        ("stamped IPv4: answered", valid4(), SynCookie, 1),
        ("stamped IPv6: answered", valid6(), SynCookie, 2),
    ];
    for (what, frame, outcome, slot) in stamps.drain(..) {
        fx.tables.now_ns = coarse_now_ns();
        step(&mut fx, what, &frame, outcome, slot, &mut failures);
    }
    fx.set_syn_stamp(1, true, coarse_now_ns() - SYN_STAMP_ANY_NS - NS_PER_SEC);
    fx.tables.now_ns = coarse_now_ns();
    let what = "long overdue: a wrong checksum stamps";
    step(
        &mut fx,
        what,
        &spoil(valid4(), tcp_sum4),
        Passed,
        1,
        &mut failures,
    );

    assert!(
        failures.is_empty(),
        "failing steps:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        fx.dp
            .syn_counts(&[3])
            .unwrap_or_else(|e| panic!("reading SYNS: {e}"))
            .get(&3),
        Some(&1),
        "the counting listener's SYN"
    );

    let host = edgelb::dataplane::syn_cookies::host_syn_options()
        .unwrap_or_else(|e| panic!("this namespace's TCP settings: {e}"));
    assert_eq!(
        host & (syn_options::SCALING | syn_options::SACK),
        syn_options::SCALING | syn_options::SACK,
        "the test expects window scaling and SACK on, as Linux has them by default"
    );
    let wscale = (host & syn_options::WSCALE_MASK) as u8;
    // The kernel's TCP clock: milliseconds of CLOCK_MONOTONIC, truncated to 32 bits.
    let now_ms = {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .unwrap_or_else(|e| panic!("clock: {e}"));
        (t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000) as u32
    };
    for (what, syn, out) in answers {
        let a = read_syn_ack(&syn, &out);
        assert_eq!(a.flags, 0x12, "{what}: SYN-ACK flags");
        assert_eq!(a.ack, 2, "{what}: acknowledges the SYN (sequence 1)");
        assert_ne!(a.seq, 0, "{what}: the cookie");
        // BPF_PROG_TEST_RUN runs on loopback, MTU 65536: the largest MSS that fits.
        let v4 = syn[12..14] == [0x08, 0x00];
        let mss: u16 = if v4 { 65_496 } else { 65_476 };
        assert_eq!(a.mss, Some(mss), "{what}: MSS");
        if what.contains("without options") {
            // No timestamp to carry options in: none offered, as the kernel's own cookies.
            assert_eq!((a.sack, a.ts, a.wscale), (false, None, None), "{what}");
            assert_eq!(out.len(), syn.len() + 20, "{what}: 40-byte TCP header");
            continue;
        }
        assert!(a.sack, "{what}: SACK permitted");
        assert_eq!(a.wscale, Some(wscale), "{what}: the kernel's window scale");
        let (tsval, tsecr) = a.ts.unwrap_or_else(|| panic!("{what}: timestamps"));
        assert_eq!(tsecr, 0x0102_0304, "{what}: the client's timestamp echoed");
        assert_eq!(
            tsval & 0x3f,
            7 | 0x10,
            "{what}: the client's window scale and SACK"
        );
        let behind = now_ms.wrapping_sub(tsval);
        assert!(
            behind < 1000,
            "{what}: timestamp {tsval} is the kernel's clock ({now_ms})"
        );
    }
}
