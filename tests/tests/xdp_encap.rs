//! L4 forwarding through BPF_PROG_TEST_RUN: the exact frames `edgelb_xdp` sends back out
//! (`XDP_TX`) for L4 listeners, checked field by field with etherparse and an independent
//! checksum, and byte for byte against the reference; the flow table; the drops; and
//! `edgelb_decap`, which must give back the original IP packet when the outer source is one it
//! trusts, and drop tunnelled packets for its VIPs from any other.
use std::net::IpAddr;
use std::time::Duration;

use edgelb::acl::AclMode;
use edgelb::dataplane::{BackendEntry, Egress, L4Listener, L4Listeners};
use edgelb::decap::{Decap, balancer_sources};
use edgelb_tests::dataplane_fixture::{Fixture, LOOPBACK_IFINDEX, ip, rule};
use edgelb_tests::netns::{Netns, in_netns};
use edgelb_tests::packet::{Ext, Frame, TCP, UDP, icmp_error};
use edgelb_tests::privilege::root_or_skip;
use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
use lb_common::maglev::{NO_BACKEND, TABLE_SIZE, client_hash, source_hash, table_slot};
use lb_common::{
    DecapOutcome, ENCAP_TTL, IPPROTO_IPIP, IPPROTO_IPV6, Outcome, XDP_DROP, XDP_PASS, XDP_REDIRECT,
    XDP_TX, v4_mapped,
};

const GROUP: u32 = 3;
const MAC_V4: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 4];
const MAC_V6: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 6];
/// The destination MAC of every frame `Frame` builds: this host's interface.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// Backends of [`GROUP`]: 0 IPv4, 1 IPv6, 2 not alive, 3 without a next hop, 4 IPv4.
fn backends() -> Vec<BackendEntry> {
    let b = |addr: &str, mac: [u8; 6], alive: bool| BackendEntry {
        addr: ip(addr),
        mac,
        alive,
        egress: Default::default(),
    };
    vec![
        b("10.9.0.1", MAC_V4, true),
        b("fd00:9::1", MAC_V6, true),
        b("10.9.0.3", MAC_V4, false),
        b("10.9.0.4", [0; 6], true),
        b("10.9.0.5", MAC_V4, true),
    ]
}

/// An L4 listener of [`GROUP`] that keeps flows for `secs` idle seconds.
fn with_flows(secs: u32) -> L4Listener {
    L4Listener {
        group: GROUP,
        flow_secs: secs,
        hash_src_port: false,
    }
}

fn ring_of(backend: u32) -> Vec<u32> {
    vec![backend; TABLE_SIZE as usize]
}

/// TCP and UDP L4 listeners on every address, port 443, group [`GROUP`], as `l4` says.
fn setup(fx: &mut Fixture, l4: L4Listener) {
    let rules = [
        rule(1, "[::]:443", TCP, AclMode::Blacklist, &["10.66.0.0/16"]),
        rule(2, "[::]:443", UDP, AclMode::All, &[]),
    ];
    let listeners: L4Listeners = [(1, l4), (2, l4)].into();
    fx.apply_l4(&rules, &listeners);
    fx.set_backends(GROUP, &backends());
}

fn client_of(frame: &Frame) -> [u8; 16] {
    match frame.src {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.octets(), |v4| v4_mapped(v4.octets())),
    }
}

/// RFC 1071, written again here so that a wrong checksum in both the program and the
/// reference still fails.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (i, b) in header.iter().enumerate() {
        sum += u32::from(*b) << if i % 2 == 0 { 8 } else { 0 };
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sets the inner packet's TOS / traffic class, so that copying it shows.
fn with_tos(mut bytes: Vec<u8>, tos: u8) -> Vec<u8> {
    if bytes[12..14] == [0x08, 0x00] {
        bytes[15] = tos;
    } else {
        bytes[14] = 0x60 | (tos >> 4);
        bytes[15] = (tos << 4) | (bytes[15] & 0x0f);
    }
    bytes
}

/// Checks every field of the frame the program sent for `input` to `backend` (`addr`, `mac`).
fn check_encapsulated(
    what: &str,
    input: &[u8],
    out: &[u8],
    addr: IpAddr,
    mac: [u8; 6],
    hash: u32,
    tos: u8,
) {
    let inner_v4 = input[12..14] == [0x08, 0x00];
    let proto = if inner_v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    assert_eq!(&out[0..6], &mac, "{what}: destination MAC is the next hop");
    assert_eq!(
        &out[6..12],
        &HOST_MAC,
        "{what}: source MAC is the interface's"
    );
    let inner_len = out.len() - 14 - if addr.is_ipv4() { 20 } else { 40 };
    assert_eq!(
        inner_len,
        input.len() - 14,
        "{what}: one outer header added"
    );
    match addr {
        IpAddr::V4(dst) => {
            assert_eq!(&out[12..14], &[0x08, 0x00], "{what}");
            let h = Ipv4HeaderSlice::from_slice(&out[14..]).expect("outer IPv4 header");
            assert_eq!(h.ihl(), 5, "{what}");
            assert_eq!(
                h.dcp().value() << 2 | h.ecn().value(),
                tos,
                "{what}: TOS copied"
            );
            assert_eq!(usize::from(h.total_len()), inner_len + 20, "{what}");
            assert_eq!(h.identification(), 0, "{what}");
            assert!(h.dont_fragment() && !h.more_fragments(), "{what}");
            assert_eq!(h.fragments_offset().value(), 0, "{what}");
            assert_eq!(h.ttl(), ENCAP_TTL, "{what}");
            assert_eq!(h.protocol().0, proto, "{what}");
            assert_eq!(checksum(&out[14..34]), 0, "{what}: header checksum");
            assert_eq!(
                h.source(),
                [172, 16, (hash >> 8) as u8, hash as u8],
                "{what}: source from the client hash"
            );
            assert_eq!(h.destination(), dst.octets(), "{what}");
        }
        IpAddr::V6(dst) => {
            assert_eq!(&out[12..14], &[0x86, 0xdd], "{what}");
            let h = Ipv6HeaderSlice::from_slice(&out[14..]).expect("outer IPv6 header");
            assert_eq!(h.traffic_class(), tos, "{what}: traffic class copied");
            assert_eq!(h.flow_label().value(), hash & 0xf_ffff, "{what}");
            assert_eq!(usize::from(h.payload_length()), inner_len, "{what}");
            assert_eq!(h.next_header().0, proto, "{what}");
            assert_eq!(h.hop_limit(), ENCAP_TTL, "{what}");
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&[0xfd, 0x00, 0x0e, 0x1b]);
            src[12..].copy_from_slice(&hash.to_be_bytes());
            assert_eq!(h.source(), src, "{what}: source from the client hash");
            assert_eq!(h.destination(), dst.octets(), "{what}");
        }
    }
    assert_eq!(
        &out[out.len() - inner_len..],
        &input[14..],
        "{what}: inner packet untouched"
    );
}

#[test]
fn l4_frames_leave_encapsulated_towards_their_backend() {
    if !root_or_skip("l4_frames_leave_encapsulated_towards_their_backend") {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, L4Listener::in_group(GROUP));
    let cases: Vec<(&str, Frame, u32)> = vec![
        (
            "TCP IPv4 in IPv4",
            Frame::tcp("10.2.3.4", "10.0.0.1", 443),
            0,
        ),
        (
            "UDP IPv4 in IPv4",
            Frame::udp("10.2.3.4", "10.0.0.1", 443),
            0,
        ),
        (
            "TCP IPv6 in IPv6",
            Frame::tcp("fd00:7::9", "fd00::1", 443),
            1,
        ),
        (
            "UDP IPv6 in IPv6",
            Frame::udp("fd00:7::9", "fd00::1", 443),
            1,
        ),
        (
            "TCP IPv4 in IPv6",
            Frame::tcp("10.2.3.4", "10.0.0.1", 443),
            1,
        ),
        (
            "UDP IPv6 in IPv4",
            Frame::udp("fd00:7::9", "fd00::1", 443),
            0,
        ),
        (
            "IPv4 with options",
            Frame::tcp("10.2.3.4", "10.0.0.1", 443).v4_options(8),
            4,
        ),
        (
            "IPv4-mapped client",
            Frame::tcp("::ffff:10.2.3.4", "fd00::1", 443),
            0,
        ),
        (
            "payload",
            {
                let mut f = Frame::udp("10.2.3.5", "10.0.0.1", 443);
                f.payload = 900;
                f
            },
            1,
        ),
    ];
    for (what, frame, backend) in cases {
        fx.set_ring(GROUP, ring_of(backend));
        let tos = 0xb8;
        let input = with_tos(frame.bytes(), tos);
        let before = fx.backend_counters(GROUP, backend);
        let (verdict, out, decision, expected) = fx.run_output(&input);
        assert_eq!(verdict, XDP_TX, "{what}");
        assert_eq!(decision.outcome, Outcome::ForwardedL4, "{what}");
        let entry = backends()[backend as usize];
        let hash = client_hash(&client_of(&frame), frame.src_port);
        check_encapsulated(what, &input, &out, entry.addr, entry.mac, hash, tos);
        assert_eq!(out, expected, "{what}: kernel and reference frames differ");
        let after = fx.backend_counters(GROUP, backend);
        assert_eq!(after.packets - before.packets, 1, "{what}");
        assert_eq!(
            after.bytes - before.bytes,
            input.len() as u64,
            "{what}: bytes as received"
        );
    }
    assert_eq!(fx.counters(1).packets_of(Outcome::ForwardedL4), 5);
    assert_eq!(fx.counters(2).packets_of(Outcome::ForwardedL4), 4);
}

#[test]
fn frames_for_a_backend_routed_by_another_interface_are_redirected_there() {
    if !root_or_skip("frames_for_a_backend_routed_by_another_interface_are_redirected_there") {
        return;
    }
    // The interface must exist in the namespace the program runs frames in.
    let ns = Netns::new("xre");
    ns.ip(&[
        "link", "add", "xre0", "type", "veth", "peer", "name", "xre1",
    ]);
    ns.ip(&["link", "set", "xre0", "address", "02:ee:00:00:00:0a", "up"]);
    const EGRESS_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x0a];
    in_netns(&ns.path(), || {
        let ifindex = nix::net::if_::if_nametoindex("xre0").expect("the veth exists");
        let mut fx = Fixture::load();
        setup(&mut fx, L4Listener::in_group(GROUP));
        let mut routed = backends();
        // Backend 0 behind the veth; backend 1 behind the interface frames come in on.
        routed[0].egress = Egress {
            ifindex,
            mac: EGRESS_MAC,
        };
        routed[1].egress = Egress {
            ifindex: LOOPBACK_IFINDEX,
            mac: [0x02, 0xee, 0, 0, 0, 1],
        };
        fx.set_backends(GROUP, &routed);
        let held = fx.dp.egress_interfaces().expect("EGRESS readable");
        assert_eq!(held, vec![LOOPBACK_IFINDEX, ifindex]);

        let frame = Frame::tcp("10.2.3.4", "10.0.0.1", 443);
        let input = frame.bytes();
        let hash = client_hash(&client_of(&frame), frame.src_port);
        fx.set_ring(GROUP, ring_of(0));
        let (verdict, out, decision, expected) = fx.run_output(&input);
        assert_eq!(
            (verdict, decision.outcome),
            (XDP_REDIRECT, Outcome::Redirected)
        );
        assert_eq!(&out[0..6], &MAC_V4, "to the next hop");
        assert_eq!(&out[6..12], &EGRESS_MAC, "from the interface it leaves by");
        assert_eq!(out, expected, "kernel and reference frames differ");
        assert_eq!(fx.backend_counters(GROUP, 0).packets, 1);
        assert_eq!(fx.counters(1).packets_of(Outcome::Redirected), 1);

        // An ICMP error about the client's flow goes where the flow went, redirected too.
        let error = icmp_error(ip("10.1.0.1"), &frame, 3, 4);
        let (verdict, out, decision, expected) = fx.run_output(&error);
        assert_eq!(
            (verdict, decision.outcome),
            (XDP_REDIRECT, Outcome::Redirected)
        );
        assert_eq!(&out[6..12], &EGRESS_MAC);
        assert_eq!(out, expected, "kernel and reference frames differ");

        // The MTU that counts is the interface the frame leaves by: 1500 on the veth, against
        // 65536 on the loopback it came in on. A full-sized frame (a 1500-byte packet) is
        // answered with the 1480 bytes that fit inside an IPv4 outer header.
        let big = Frame::tcp("10.2.3.4", "10.0.0.1", 443)
            .df()
            .payload(1514 - frame.bytes().len())
            .bytes();
        assert_eq!(big.len(), 1514);
        let (verdict, out) = fx
            .dp
            .test_run_output(&big)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        assert_eq!(
            verdict, XDP_TX,
            "answered back out of the interface it came in on"
        );
        let icmp = Ipv4HeaderSlice::from_slice(&out[14..]).expect("an IPv4 answer");
        assert_eq!(icmp.protocol(), etherparse::IpNumber(1));
        let at = 14 + usize::from(icmp.ihl()) * 4;
        assert_eq!((out[at], out[at + 1]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([out[at + 6], out[at + 7]]), 1480);

        // Routed by the interface the frame came in on: sent back out, as with no interface.
        fx.set_ring(GROUP, ring_of(1));
        let (verdict, out, decision, _) = fx.run_output(&input);
        assert_eq!((verdict, decision.outcome), (XDP_TX, Outcome::ForwardedL4));
        check_encapsulated(
            "same interface",
            &input,
            &out,
            routed[1].addr,
            MAC_V6,
            hash,
            0,
        );

        // The interface goes (the kernel takes it out of `EGRESS` itself) and comes back under
        // the same index: the next write of the backends puts it there again.
        let ip_link = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .arg("link")
                .args(args)
                .status()
                .expect("run ip");
            assert!(status.success(), "ip link {args:?}");
        };
        ip_link(&["del", "xre0"]);
        let held = fx.dp.egress_interfaces().expect("EGRESS readable");
        assert_eq!(
            held,
            vec![LOOPBACK_IFINDEX],
            "the kernel removed the gone device"
        );
        let index = ifindex.to_string();
        ip_link(&[
            "add", "xre0", "index", &index, "type", "veth", "peer", "name", "xre1",
        ]);
        ip_link(&["set", "xre0", "up"]);
        fx.set_backends(GROUP, &routed);
        let held = fx.dp.egress_interfaces().expect("EGRESS readable");
        assert_eq!(held, vec![LOOPBACK_IFINDEX, ifindex]);
        fx.set_ring(GROUP, ring_of(0));
        assert_eq!(fx.run(&input).0, XDP_REDIRECT);

        // An interface no backend names any more leaves `EGRESS` once neither half names it,
        // also when the kernel removed it first.
        ip_link(&["del", "xre0"]);
        fx.set_backends(GROUP, &backends());
        fx.set_backends(GROUP, &backends());
        let held = fx.dp.egress_interfaces().expect("EGRESS readable");
        assert!(held.is_empty(), "{held:?}");
    });
}

#[test]
fn frames_with_nowhere_to_go_are_dropped_and_tagged_ones_passed() {
    if !root_or_skip("frames_with_nowhere_to_go_are_dropped_and_tagged_ones_passed") {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, L4Listener::in_group(GROUP));
    let frame = || Frame::tcp("10.2.3.4", "10.0.0.1", 443);
    // (what, ring written first, frame, outcome)
    type Case = (&'static str, Option<Vec<u32>>, Vec<u8>, Outcome);
    let cases: Vec<Case> = vec![
        ("no ring yet", None, frame().bytes(), Outcome::NoBackend),
        (
            "ring entry names none",
            Some(vec![NO_BACKEND; TABLE_SIZE as usize]),
            frame().bytes(),
            Outcome::NoBackend,
        ),
        (
            "backend not alive",
            Some(ring_of(2)),
            frame().bytes(),
            Outcome::NoBackend,
        ),
        (
            "backend without next hop",
            Some(ring_of(3)),
            frame().bytes(),
            Outcome::NoBackend,
        ),
        (
            "backend slot never written",
            Some(ring_of(9)),
            frame().bytes(),
            Outcome::NoBackend,
        ),
        (
            "VLAN-tagged",
            Some(ring_of(0)),
            frame().vlans(&[0x8100]).bytes(),
            Outcome::VlanL4,
        ),
        (
            "refused by the ACL",
            Some(ring_of(0)),
            Frame::tcp("10.66.0.1", "10.0.0.1", 443).bytes(),
            Outcome::DroppedAcl,
        ),
    ];
    for (what, ring, input, outcome) in cases {
        if let Some(ring) = ring {
            fx.set_ring(GROUP, ring);
        }
        let before = fx.counters(1).packets_of(outcome);
        let (verdict, out, decision, expected) = fx.run_output(&input);
        assert_eq!(decision.outcome, outcome, "{what}");
        assert_eq!(verdict, outcome.action(), "{what}");
        assert_eq!(out, input, "{what}: frame unchanged");
        assert_eq!(expected, input, "{what}");
        assert_eq!(fx.counters(1).packets_of(outcome) - before, 1, "{what}");
    }
    assert_eq!(Outcome::NoBackend.action(), lb_common::XDP_DROP);
    assert_eq!(Outcome::VlanL4.action(), XDP_PASS);
    for b in 0..5 {
        assert_eq!(
            fx.backend_counters(GROUP, b).packets,
            0,
            "backend {b} counted a drop"
        );
    }
}

/// The backend a frame was sent to, by outer destination.
fn sent_to(fx: &mut Fixture, frame: &Frame) -> Option<IpAddr> {
    let (verdict, out, decision, expected) = fx.run_output(&frame.bytes());
    assert_eq!(out, expected, "kernel and reference frames differ");
    assert_eq!(verdict, decision.outcome.action());
    if verdict != XDP_TX {
        return None;
    }
    Some(match &out[12..14] {
        [0x08, 0x00] => IpAddr::from(<[u8; 4]>::try_from(&out[30..34]).expect("4 bytes")),
        _ => IpAddr::from(<[u8; 16]>::try_from(&out[38..54]).expect("16 bytes")),
    })
}

#[test]
fn flows_stay_on_their_backend_across_ring_changes_until_it_dies_or_they_expire() {
    if !root_or_skip("flows_stay_on_their_backend_across_ring_changes_until_it_dies_or_they_expire")
    {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, with_flows(2));
    let a = Some(ip("10.9.0.1"));
    let b = Some(ip("10.9.0.5"));
    let flow = Frame::tcp("10.2.3.4", "10.0.0.1", 443);
    let mut other_port = flow.clone();
    other_port.src_port = 40001;
    fx.set_ring(GROUP, ring_of(0));
    assert_eq!(sent_to(&mut fx, &flow), a);
    fx.set_ring(GROUP, ring_of(4));
    assert_eq!(
        sent_to(&mut fx, &flow),
        a,
        "a ring change moved an existing flow"
    );
    assert_eq!(
        sent_to(&mut fx, &other_port),
        b,
        "a new flow follows the ring"
    );
    // Backend 0 dies: its flow is re-picked from the ring, and stays there when it returns.
    let mut set = backends();
    set[0].alive = false;
    fx.set_backends(GROUP, &set);
    assert_eq!(sent_to(&mut fx, &flow), b, "a dead backend kept its flow");
    fx.set_backends(GROUP, &backends());
    fx.set_ring(GROUP, ring_of(0));
    assert_eq!(sent_to(&mut fx, &flow), b);
    // Backend 4's slot gets another address: its flows follow the ring.
    let mut set = backends();
    set[4].addr = ip("10.9.0.55");
    fx.set_backends(GROUP, &set);
    assert_eq!(
        sent_to(&mut fx, &flow),
        a,
        "a flow went to the slot's new address"
    );
    assert_eq!(sent_to(&mut fx, &other_port), a);
    // Idle for longer than flow_secs: the flow follows the ring again.
    fx.set_ring(GROUP, ring_of(4));
    assert_eq!(sent_to(&mut fx, &flow), a);
    std::thread::sleep(Duration::from_millis(2200));
    fx.tables.now_ns += 2_200_000_000;
    assert_eq!(
        sent_to(&mut fx, &flow),
        Some(ip("10.9.0.55")),
        "an expired flow stayed"
    );
}

#[test]
fn without_a_flow_table_flows_follow_the_ring_and_port_hashing_spreads_one_client() {
    if !root_or_skip(
        "without_a_flow_table_flows_follow_the_ring_and_port_hashing_spreads_one_client",
    ) {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, L4Listener::in_group(GROUP));
    let flow = Frame::tcp("10.2.3.4", "10.0.0.1", 443);
    fx.set_ring(GROUP, ring_of(0));
    assert_eq!(sent_to(&mut fx, &flow), Some(ip("10.9.0.1")));
    fx.set_ring(GROUP, ring_of(4));
    assert_eq!(sent_to(&mut fx, &flow), Some(ip("10.9.0.5")));

    // A ring alternating backends 0 and 4 by slot parity.
    let ring: Vec<u32> = (0..TABLE_SIZE)
        .map(|i| if i % 2 == 0 { 0 } else { 4 })
        .collect();
    fx.set_ring(GROUP, ring.clone());
    let client = v4_mapped([10, 2, 3, 4]);
    let expect = |hash: u32| match ring[table_slot(hash) as usize] {
        0 => Some(ip("10.9.0.1")),
        _ => Some(ip("10.9.0.5")),
    };
    let ports: Vec<u16> = (40000..40016).collect();
    for port in &ports {
        let mut f = flow.clone();
        f.src_port = *port;
        assert_eq!(
            sent_to(&mut fx, &f),
            expect(source_hash(&client)),
            "address hashing"
        );
    }
    setup(
        &mut fx,
        L4Listener {
            group: GROUP,
            flow_secs: 0,
            hash_src_port: true,
        },
    );
    let mut seen = std::collections::HashSet::new();
    for port in &ports {
        let mut f = flow.clone();
        f.src_port = *port;
        let to = sent_to(&mut fx, &f);
        assert_eq!(to, expect(client_hash(&client, *port)), "port {port}");
        seen.insert(to);
    }
    assert_eq!(
        seen.len(),
        2,
        "16 source ports of one client all went to one backend"
    );
}

/// The decap program for VIPs 10.0.0.1 and fd00::1, trusting outer sources in `from`.
fn decap_from(from: &[&str]) -> Decap {
    let mut d = Decap::load().unwrap_or_else(|e| panic!("loading edgelb_decap: {e}"));
    for vip in ["10.0.0.1", "fd00::1"] {
        d.add_vip(ip(vip))
            .unwrap_or_else(|e| panic!("VIP {vip}: {e}"));
    }
    for net in from {
        let net = net
            .parse()
            .unwrap_or_else(|_| panic!("test prefix {net:?}"));
        d.add_source(net)
            .unwrap_or_else(|e| panic!("source {net}: {e}"));
    }
    d
}

/// The decap program as `cargo xtask backend-setup` runs it: trusting the balancers' outer
/// source prefixes.
fn decap() -> Decap {
    let from = balancer_sources().map(|n| n.to_string());
    decap_from(&[&from[0], &from[1]])
}

/// `frame` (as the balancer sent it) with the outer source replaced by `src`; the IPv4 header
/// checksum is made right again, so only the address differs.
fn from_outer_source(frame: &[u8], src: &str) -> Vec<u8> {
    let mut out = frame.to_vec();
    match (ip(src), &out[12..14]) {
        (IpAddr::V4(a), [0x08, 0x00]) => {
            out[26..30].copy_from_slice(&a.octets());
            out[24..26].copy_from_slice(&[0, 0]);
            let sum = checksum(&out[14..34]);
            out[24..26].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(a), [0x86, 0xdd]) => out[22..38].copy_from_slice(&a.octets()),
        (a, _) => panic!("outer source {a} of another family than the outer header"),
    }
    out
}

#[test]
fn decap_gives_back_the_original_packet_of_every_encapsulation() {
    if !root_or_skip("decap_gives_back_the_original_packet_of_every_encapsulation") {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, L4Listener::in_group(GROUP));
    let mut d = decap();
    let cases = [
        ("IPv4 in IPv4", Frame::tcp("10.2.3.4", "10.0.0.1", 443), 0),
        ("IPv6 in IPv6", Frame::udp("fd00:7::9", "fd00::1", 443), 1),
        ("IPv4 in IPv6", Frame::udp("10.2.3.4", "10.0.0.1", 443), 1),
        ("IPv6 in IPv4", Frame::tcp("fd00:7::9", "fd00::1", 443), 0),
    ];
    for (what, frame, backend) in cases {
        fx.set_ring(GROUP, ring_of(backend));
        let original = with_tos(frame.bytes(), 0x28);
        let (verdict, tunnelled) = fx.dp.test_run_output(&original).expect("encap run");
        assert_eq!(verdict, XDP_TX, "{what}");
        let before = d.counters().expect("counters");
        let (verdict, out) = d.test_run_output(&tunnelled).expect("decap run");
        assert_eq!(verdict, XDP_PASS, "{what}");
        assert_eq!(
            &out[12..],
            &original[12..],
            "{what}: not the original IP packet"
        );
        assert_eq!(&out[..12], &tunnelled[..12], "{what}: MACs as received");
        let after = d.counters().expect("counters");
        let i = DecapOutcome::Decapsulated as usize;
        assert_eq!(after.packets[i] - before.packets[i], 1, "{what}");
        assert_eq!(
            after.bytes[i] - before.bytes[i],
            tunnelled.len() as u64,
            "{what}"
        );
    }
}

#[test]
fn decap_passes_everything_else_untouched_and_counts_why() {
    if !root_or_skip("decap_passes_everything_else_untouched_and_counts_why") {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, L4Listener::in_group(GROUP));
    fx.set_ring(GROUP, ring_of(0));
    let (_, v4_in_v4) = fx
        .dp
        .test_run_output(&Frame::tcp("10.2.3.4", "10.0.0.1", 443).bytes())
        .expect("encap run");
    fx.set_ring(GROUP, ring_of(1));
    let (_, v6_in_v6) = fx
        .dp
        .test_run_output(&Frame::tcp("fd00:7::9", "fd00::1", 443).bytes())
        .expect("encap run");
    let mut not_a_vip = v4_in_v4.clone();
    not_a_vip[34 + 19] = 99; // inner destination 10.0.0.99
    let mut outer_fragment = v4_in_v4.clone();
    outer_fragment[14 + 6] = 0x20; // more fragments
    let mut wrong_inner = v4_in_v4.clone();
    wrong_inner[34] = 0x65; // protocol 4 but version 6
    let mut v6_wrong_inner = v6_in_v6.clone();
    v6_wrong_inner[54] = 0x45;
    let mut other_proto = v4_in_v4.clone();
    other_proto[14 + 9] = 47; // GRE
    let cases: Vec<(&str, Vec<u8>, DecapOutcome)> = vec![
        (
            "plain TCP to the VIP",
            Frame::tcp("10.2.3.4", "10.0.0.1", 443).bytes(),
            DecapOutcome::NotOurs,
        ),
        (
            "plain IPv6",
            Frame::udp("fd00:7::9", "fd00::1", 53).bytes(),
            DecapOutcome::NotOurs,
        ),
        (
            "tunnelled to another address",
            not_a_vip,
            DecapOutcome::NotOurs,
        ),
        ("another protocol", other_proto, DecapOutcome::NotOurs),
        ("outer fragment", outer_fragment, DecapOutcome::Malformed),
        (
            "IPv4 protocol, IPv6 inside",
            wrong_inner,
            DecapOutcome::Malformed,
        ),
        (
            "IPv6 next header, IPv4 inside",
            v6_wrong_inner,
            DecapOutcome::Malformed,
        ),
        (
            "inner header truncated",
            v4_in_v4[..34 + 12].to_vec(),
            DecapOutcome::Malformed,
        ),
        (
            "IPv6 inner truncated",
            v6_in_v6[..54 + 30].to_vec(),
            DecapOutcome::Malformed,
        ),
    ];
    let mut d = decap();
    for (what, input, outcome) in cases {
        let before = d.counters().expect("counters");
        let (verdict, out) = d.test_run_output(&input).expect("decap run");
        assert_eq!(verdict, XDP_PASS, "{what}");
        assert_eq!(out, input, "{what}: changed");
        let after = d.counters().expect("counters");
        let i = outcome as usize;
        assert_eq!(
            after.packets[i] - before.packets[i],
            1,
            "{what}: not counted {outcome:?}"
        );
    }
}

/// A million first packets from random (spoofed) sources, then the ring changes as when a
/// backend is added: every flow that had sent two packets before the flood keeps its backend.
/// The flood only churns `NEW_FLOWS`; with one table it would have evicted all of them.
#[test]
fn a_flood_of_spoofed_first_packets_leaves_established_flows_on_their_backend() {
    if !root_or_skip("a_flood_of_spoofed_first_packets_leaves_established_flows_on_their_backend") {
        return;
    }
    const FLOOD: u32 = 1_000_000;
    let mut fx = Fixture::load();
    setup(&mut fx, with_flows(600));
    fx.set_ring(GROUP, ring_of(0));
    let established: Vec<Frame> = (0..200u32)
        .map(|i| {
            Frame::tcp(
                &format!("10.2.{}.{}", i / 200, i % 200 + 1),
                "10.0.0.1",
                443,
            )
        })
        .collect();
    for f in &established {
        for _ in 0..2 {
            assert_eq!(sent_to(&mut fx, f), Some(ip("10.9.0.1")));
        }
    }

    let before = fx.counters(1).packets_of(Outcome::ForwardedL4);
    let mut frame = Frame::tcp("10.2.0.1", "10.0.0.1", 443).bytes();
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..FLOOD {
        // xorshift32: sources all over the IPv4 space, none of them the established ones'.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        frame[26..30].copy_from_slice(&(x | 0x8000_0000).to_be_bytes());
        let verdict = fx.dp.test_run(&frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(verdict, XDP_TX);
    }
    let flooded = fx.counters(1).packets_of(Outcome::ForwardedL4) - before;
    assert_eq!(flooded, u64::from(FLOOD));

    fx.set_ring(GROUP, ring_of(4));
    let moved: Vec<String> = established
        .iter()
        .filter(|f| sent_to(&mut fx, f) != Some(ip("10.9.0.1")))
        .map(|f| f.src.to_string())
        .collect();
    assert!(
        moved.is_empty(),
        "{} of {} established flows lost their backend after the flood: {moved:?}",
        moved.len(),
        established.len()
    );
    assert_eq!(
        sent_to(&mut fx, &Frame::tcp("10.2.9.9", "10.0.0.1", 443)),
        Some(ip("10.9.0.5")),
        "a new flow follows the new ring"
    );
}

/// The later fragments of a datagram carry no ports: they are forwarded with the ports its
/// first fragment had, to the same backend, even when the flow table and the ring disagree;
/// later fragments of a datagram whose first fragment no L4 listener took go to the stack.
#[test]
fn later_fragments_follow_their_first_to_its_backend() {
    if !root_or_skip("later_fragments_follow_their_first_to_its_backend") {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, with_flows(60));
    fx.set_ring(GROUP, ring_of(0));
    for (src, dst, first, later) in [
        (
            "10.2.3.4",
            "10.0.0.1",
            Frame::udp("10.2.3.4", "10.0.0.1", 443).v4_fragment(0, true),
            Frame::udp("10.2.3.4", "10.0.0.1", 443).v4_fragment(185, false),
        ),
        (
            "fd00:2::3:4",
            "fd00::1",
            Frame::udp("fd00:2::3:4", "fd00::1", 443).exts(&[Ext::Fragment {
                offset: 0,
                more: true,
            }]),
            Frame::udp("fd00:2::3:4", "fd00::1", 443).exts(&[Ext::Fragment {
                offset: 185,
                more: false,
            }]),
        ),
    ] {
        let mut later = later;
        // What would be ports in a whole packet is the middle of the datagram here.
        later.src_port = 0xdead;
        later.dst_port = 0xbeef;
        let stray = {
            let mut f = later.clone();
            f.src = ip(if src.contains(':') {
                "fd00:2::9:9"
            } else {
                "10.2.9.9"
            });
            f
        };
        let before = fx.counters(0).packets_of(Outcome::Fragment);
        assert_eq!(sent_to(&mut fx, &stray), None, "{src}: a stray fragment");
        assert_eq!(fx.counters(0).packets_of(Outcome::Fragment) - before, 1);

        assert_eq!(
            sent_to(&mut fx, &first),
            Some(ip("10.9.0.1")),
            "{src} -> {dst}"
        );
        // The ring moves on and the flow table would keep the datagram where it went.
        fx.set_ring(GROUP, ring_of(4));
        assert_eq!(
            sent_to(&mut fx, &later),
            Some(ip("10.9.0.1")),
            "{src}: the later fragment"
        );
        fx.set_ring(GROUP, ring_of(0));
    }
}

/// The `--from` check, case by case: tunnelled packets for a VIP are decapsulated only when
/// their outer source lies in a trusted prefix (the balancers' /16 and /96, a bare address, an
/// IPv6 /48), of the outer header's own family; from anywhere else they are dropped and
/// counted `refused`, untouched. Tunnelled packets for other addresses are not the program's
/// to judge and pass. A program given no source refuses everything for its VIPs.
#[test]
fn decap_trusts_only_the_from_prefixes_and_drops_the_rest_for_a_vip() {
    if !root_or_skip("decap_trusts_only_the_from_prefixes_and_drops_the_rest_for_a_vip") {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, L4Listener::in_group(GROUP));
    // (inner packet, backend: 0 IPv4 outer, 1 IPv6 outer)
    let mut tunnel = |frame: Frame, backend: u32| -> (Vec<u8>, Vec<u8>) {
        fx.set_ring(GROUP, ring_of(backend));
        let original = frame.bytes();
        let (verdict, out) = fx.dp.test_run_output(&original).expect("encap run");
        assert_eq!(verdict, XDP_TX, "encapsulating {frame:?}");
        (original, out)
    };
    let v4_in_v4 = tunnel(Frame::tcp("10.2.3.4", "10.0.0.1", 443), 0);
    let v6_in_v6 = tunnel(Frame::udp("fd00:7::9", "fd00::1", 443), 1);
    let v4_in_v6 = tunnel(Frame::udp("10.2.3.4", "10.0.0.1", 443), 1);
    let v6_in_v4 = tunnel(Frame::tcp("fd00:7::9", "fd00::1", 443), 0);
    let not_a_vip = tunnel(Frame::tcp("10.2.3.4", "10.0.0.99", 443), 0);
    // The outer IPv4 header as the first fragment (more-fragments set), and as a later one.
    let fragment = |flags: u8, offset: u8| {
        let mut t = v4_in_v4.1.clone();
        t[20] |= flags;
        t[21] = offset;
        (v4_in_v4.0.clone(), t)
    };
    let (first_fragment, later_fragment) = (fragment(0x20, 0), fragment(0x20, 8));
    let (pass, refuse) = (
        (XDP_PASS, DecapOutcome::Decapsulated),
        (XDP_DROP, DecapOutcome::Refused),
    );
    let cases = [
        (
            "IPv4 outer, balancers' /16",
            &v4_in_v4,
            "172.16.200.7",
            pass,
        ),
        ("IPv4 outer, a client", &v4_in_v4, "10.1.0.2", refuse),
        (
            "IPv4 outer, just past the /16",
            &v4_in_v4,
            "172.17.0.0",
            refuse,
        ),
        (
            "IPv4 outer, the trusted address",
            &v4_in_v4,
            "10.5.0.9",
            pass,
        ),
        ("IPv4 outer, its neighbour", &v4_in_v4, "10.5.0.10", refuse),
        (
            "IPv6 outer, balancers' /96",
            &v6_in_v6,
            "fd00:e1b::ffff:1",
            pass,
        ),
        (
            "IPv6 outer, past the /96",
            &v6_in_v6,
            "fd00:e1b::1:0:0",
            refuse,
        ),
        (
            "IPv6 outer, inside the /48",
            &v6_in_v6,
            "fd00:5:0:ffff::1",
            pass,
        ),
        ("IPv6 outer, past the /48", &v6_in_v6, "fd00:5:1::1", refuse),
        ("IPv4 in IPv6, trusted", &v4_in_v6, "fd00:e1b::2", pass),
        ("IPv4 in IPv6, a client", &v4_in_v6, "fd00:1::2", refuse),
        ("IPv6 in IPv4, trusted", &v6_in_v4, "172.16.0.1", pass),
        ("IPv6 in IPv4, a client", &v6_in_v4, "10.1.0.2", refuse),
        (
            "IPv6 outer, a trusted IPv4 address IPv4-mapped",
            &v4_in_v6,
            "::ffff:172.16.0.1",
            refuse,
        ),
        // A fragment cannot be decapsulated here; a first one from a client is refused, so
        // that the stack's reassembly and a tunnel device cannot complete it.
        (
            "IPv4 outer, first fragment, balancers' /16",
            &first_fragment,
            "172.16.200.7",
            (XDP_PASS, DecapOutcome::Malformed),
        ),
        (
            "IPv4 outer, first fragment, a client",
            &first_fragment,
            "10.1.0.2",
            refuse,
        ),
        (
            "IPv4 outer, later fragment, a client (no inner header to judge)",
            &later_fragment,
            "10.1.0.2",
            (XDP_PASS, DecapOutcome::Malformed),
        ),
        (
            "not for a VIP, a client",
            &not_a_vip,
            "10.1.0.2",
            (XDP_PASS, DecapOutcome::NotOurs),
        ),
    ];
    let mut d = decap_from(&[
        "172.16.0.0/16",
        "fd00:e1b::/96",
        "10.5.0.9/32",
        "fd00:5::/48",
    ]);
    for (what, (original, tunnelled), src, (verdict, outcome)) in cases {
        let input = from_outer_source(tunnelled, src);
        let before = d.counters().expect("counters");
        let (got, out) = d.test_run_output(&input).expect("decap run");
        assert_eq!(got, verdict, "{what}: verdict");
        if outcome == DecapOutcome::Decapsulated {
            assert_eq!(
                &out[12..],
                &original[12..],
                "{what}: not the original packet"
            );
        } else {
            assert_eq!(out, input, "{what}: changed");
        }
        let after = d.counters().expect("counters");
        for o in DecapOutcome::ALL {
            let i = o as usize;
            let (packets, bytes) = if o == outcome {
                (1, input.len() as u64)
            } else {
                (0, 0)
            };
            assert_eq!(
                after.packets[i] - before.packets[i],
                packets,
                "{what}: {o:?}"
            );
            assert_eq!(
                after.bytes[i] - before.bytes[i],
                bytes,
                "{what}: {o:?} bytes"
            );
        }
    }

    let mut none = decap_from(&[]);
    for (what, (_, tunnelled)) in [("IPv4 outer", &v4_in_v4), ("IPv6 outer", &v6_in_v6)] {
        let (verdict, _) = none.test_run_output(tunnelled).expect("decap run");
        assert_eq!(verdict, XDP_DROP, "no trusted source, {what}");
    }
    let refused = none.counters().expect("counters").packets[DecapOutcome::Refused as usize];
    assert_eq!(refused, 2, "no trusted source");
}

/// On an interface with MTU 1500 (the loopback of a namespace of its own, which
/// BPF_PROG_TEST_RUN runs on): a full-sized TCP segment with don't-fragment, IPv4 or IPv6,
/// would not fit once encapsulated, and is answered in place with ICMP "fragmentation needed"
/// (MTU 1480) / ICMPv6 "packet too big" (MTU 1480; 1460 towards an IPv6 backend), byte for
/// byte as the reference builds it, with checksums an independent parser accepts; without
/// don't-fragment it is dropped; a frame that fits is forwarded as before.
#[test]
fn frames_too_big_once_encapsulated_are_answered_with_icmp() {
    if !root_or_skip("frames_too_big_once_encapsulated_are_answered_with_icmp") {
        return;
    }
    let ns = edgelb_tests::netns::Netns::new("mtu");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    edgelb_tests::netns::in_netns(&ns.path(), || {
        let mut fx = Fixture::load();
        fx.tables.mtu = 1500;
        setup(&mut fx, L4Listener::in_group(GROUP));
        let full = |f: Frame| {
            let header = f.bytes().len();
            let f = f.payload(1514 - header);
            assert_eq!(f.bytes().len(), 1514, "a full-sized frame");
            f
        };
        let run = |fx: &mut Fixture, f: &Frame| {
            let frame = f.bytes();
            let (verdict, out, decision, expected) = fx.run_output(&frame);
            assert_eq!(out, expected, "kernel and reference frames differ");
            assert_eq!(verdict, decision.outcome.action());
            (decision.outcome, out)
        };
        for (backend, v6_outer_mtu) in [(0u32, 1480u32), (1, 1460)] {
            fx.set_ring(GROUP, ring_of(backend));
            let (outcome, out) = run(&mut fx, &full(Frame::tcp("10.2.3.4", "10.0.0.1", 443).df()));
            assert_eq!(outcome, Outcome::TooBigAnswered);
            assert_eq!(out.len(), 14 + 20 + 8 + 28);
            assert_eq!(&out[0..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
            let ip = Ipv4HeaderSlice::from_slice(&out[14..]).expect("an IPv4 header");
            assert_eq!(
                (ip.source(), ip.destination(), ip.protocol().0),
                ([10, 0, 0, 1], [10, 2, 3, 4], 1)
            );
            assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
            let icmp = &out[34..];
            assert_eq!((icmp[0], icmp[1]), (3, 4));
            assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), v6_outer_mtu as u16);
            assert_eq!(checksum(icmp), 0, "ICMP checksum");

            let (outcome, out) = run(&mut fx, &full(Frame::tcp("fd00:2::3:4", "fd00::1", 443)));
            assert_eq!(outcome, Outcome::TooBigAnswered);
            let ip = Ipv6HeaderSlice::from_slice(&out[14..]).expect("an IPv6 header");
            assert_eq!(ip.next_header().0, 58);
            assert_eq!(
                (ip.source_addr(), ip.destination_addr()),
                (
                    "fd00::1".parse().expect("a"),
                    "fd00:2::3:4".parse().expect("a")
                )
            );
            let icmp = &out[54..];
            assert_eq!((icmp[0], icmp[1]), (2, 0));
            assert_eq!(
                u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
                v6_outer_mtu
            );
            let mut pseudo = out[22..54].to_vec();
            pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(icmp);
            assert_eq!(checksum(&pseudo), 0, "ICMPv6 checksum");
        }
        fx.set_ring(GROUP, ring_of(0));
        let before = fx.counters(1).packets_of(Outcome::TooBig);
        let (outcome, _) = run(&mut fx, &full(Frame::tcp("10.2.3.4", "10.0.0.1", 443)));
        assert_eq!(outcome, Outcome::TooBig, "no don't-fragment: dropped");
        assert_eq!(fx.counters(1).packets_of(Outcome::TooBig) - before, 1);
        let fits = Frame::tcp("10.2.3.4", "10.0.0.1", 443).df().payload(1440);
        assert_eq!(run(&mut fx, &fits).0, Outcome::ForwardedL4);
    });
}

/// An ICMP error addressed to the VIP about a packet the VIP sent (a backend's reply to a
/// client) quotes that packet: it is sent to the backend of the client's flow (IPv4 and IPv6,
/// ICMP "fragmentation needed" / ICMPv6 "packet too big"), byte for byte as the reference
/// says; errors about ports no L4 listener has, and pings, are passed.
#[test]
fn icmp_errors_to_the_vip_reach_the_backend_of_the_flow_they_quote() {
    if !root_or_skip("icmp_errors_to_the_vip_reach_the_backend_of_the_flow_they_quote") {
        return;
    }
    let mut fx = Fixture::load();
    setup(&mut fx, with_flows(60));
    // The client's flow goes to backend 0 and stays there; the ring then moves on.
    fx.set_ring(GROUP, ring_of(0));
    let client = Frame::tcp("10.2.3.4", "10.0.0.1", 443);
    assert_eq!(sent_to(&mut fx, &client), Some(ip("10.9.0.1")));
    assert_eq!(sent_to(&mut fx, &client), Some(ip("10.9.0.1")));
    fx.set_ring(GROUP, ring_of(4));
    let client6 = Frame::tcp("fd00:2::3:4", "fd00::1", 443);
    assert_eq!(sent_to(&mut fx, &client6), Some(ip("10.9.0.5")));

    let error =
        |from: &str, about: &Frame, kind: u8, code: u8| icmp_error(ip(from), about, kind, code);
    let before = fx.counters(1).packets_of(Outcome::ForwardedIcmp);
    for (frame, backend) in [
        (error("10.1.0.1", &client, 3, 4), "10.9.0.1"),
        (error("10.1.0.1", &client, 11, 0), "10.9.0.1"),
        (error("fd00:1::1", &client6, 2, 0), "10.9.0.5"),
    ] {
        let (verdict, out, decision, expected) = fx.run_output(&frame);
        assert_eq!(out, expected, "kernel and reference frames differ");
        assert_eq!(decision.outcome, Outcome::ForwardedIcmp);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            IpAddr::from(<[u8; 4]>::try_from(&out[30..34]).expect("4")),
            ip(backend)
        );
    }
    assert_eq!(
        fx.counters(1).packets_of(Outcome::ForwardedIcmp) - before,
        3
    );

    let mut elsewhere = client.clone();
    elsewhere.dst_port = 444;
    let ping = Frame::new(ip("10.1.0.1"), ip("10.0.0.1"), 1, 0).bytes();
    for (what, frame) in [
        (
            "an error about another port",
            error("10.1.0.1", &elsewhere, 3, 4),
        ),
        ("a ping", ping),
    ] {
        let (verdict, out, decision, expected) = fx.run_output(&frame);
        assert_eq!(out, expected, "{what}");
        assert_eq!(
            (verdict, decision.outcome),
            (XDP_PASS, Outcome::NotOurs),
            "{what}"
        );
    }

    // Sent from a blacklisted source (10.66.0.0/16 on the TCP listener) about a client that is
    // not: the quote is the sender's word, the deny list holds against the sender.
    let (verdict, out, decision, expected) = fx.run_output(&error("10.66.0.9", &client, 3, 4));
    assert_eq!(out, expected, "kernel and reference frames differ");
    assert_eq!(
        (verdict, decision.outcome),
        (XDP_DROP, Outcome::DroppedAcl),
        "an error from a blacklisted sender"
    );
}
