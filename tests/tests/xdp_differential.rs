//! Differential test: the XDP program in the kernel and `lb_common::reference` must reach the
//! same verdict, and count it in the same slot, for every generated frame under every generated
//! map content. The maps are rewritten between scenarios by the daemon's own writer
//! (`Dataplane::apply_in_groups`), so stale entries left by it would show up as disagreements
//! too. Some listeners are L4 listeners of backend groups whose Maglev rings (random, and
//! rewritten now and then through `Dataplane::set_ring`) the program picks backends from; the
//! per-backend counters must move exactly as the reference's picks say. Those groups have
//! random backends (IPv4 and IPv6, some dead or without a next hop), some listeners keep flows,
//! and every frame the program sends back out must equal the reference's byte for byte.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgelb::acl::AclMode;
use edgelb::dataplane::{BackendEntry, Egress, L4Listener, L4Listeners, ListenerRule};
use edgelb_tests::dataplane_fixture::{Fixture, LOOPBACK_IFINDEX};
use edgelb_tests::netns::{Netns, in_netns};
use edgelb_tests::packet::{Ext, Frame, ICMP, TCP, UDP, icmp_error};
use edgelb_tests::privilege::root_or_skip;
use edgelb_tests::rng::Rng;
use ipnet::IpNet;
use lb_common::maglev::{NO_BACKEND, TABLE_SIZE, build_table};
use lb_common::{
    BackendCounters, Counters, MAX_BACKENDS_PER_GROUP, MAX_L4_GROUPS, MAX_LISTENERS, OUTCOMES,
    Outcome, backend_stats_slot,
};

const SCENARIOS: u64 = 40;
const FRAMES_PER_SCENARIO: usize = 150;

const V4_DST: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 0, 1),
    Ipv4Addr::new(10, 0, 0, 2),
    Ipv4Addr::new(10, 0, 0, 3),
];
const PORTS: [u16; 3] = [80, 443, 53];

fn v6_dst(rng: &mut Rng) -> IpAddr {
    match rng.below(3) {
        0 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        1 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
        _ => IpAddr::V6(V4_DST[0].to_ipv6_mapped()),
    }
}

fn v4_src(rng: &mut Rng) -> Ipv4Addr {
    let a = if rng.chance(50) { [192, 168] } else { [10, 0] };
    Ipv4Addr::new(a[0], a[1], rng.below(4) as u8, rng.below(256) as u8)
}

fn v6_src(rng: &mut Rng) -> IpAddr {
    if rng.chance(25) {
        return IpAddr::V6(v4_src(rng).to_ipv6_mapped());
    }
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        rng.below(4) as u16,
        0,
        0,
        0,
        0,
        0,
        rng.below(65536) as u16,
    ))
}

fn random_prefix(rng: &mut Rng) -> IpNet {
    if rng.chance(5) {
        return if rng.chance(50) { "0.0.0.0/0" } else { "::/0" }
            .parse()
            .expect("static");
    }
    if rng.chance(60) {
        let len = 16 + rng.below(17) as u8;
        IpNet::new(IpAddr::V4(v4_src(rng)), len)
            .expect("len <= 32")
            .trunc()
    } else {
        let len = 16 + rng.below(113) as u8;
        IpNet::new(v6_src(rng), len).expect("len <= 128").trunc()
    }
}

fn scenario_rules(rng: &mut Rng) -> Vec<ListenerRule> {
    let mut rules: Vec<ListenerRule> = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let ip: IpAddr = match rng.below(6) {
            0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            1 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            2 => v6_dst(rng),
            _ => IpAddr::V4(*rng.pick(&V4_DST)),
        };
        let mut id = 1 + rng.below(MAX_LISTENERS as usize) as u32;
        while ids.contains(&id) {
            id = 1 + rng.below(MAX_LISTENERS as usize) as u32;
        }
        ids.push(id);
        let rule = ListenerRule {
            id,
            addr: std::net::SocketAddr::new(ip, *rng.pick(&PORTS)),
            proto: if rng.chance(70) { TCP } else { UDP },
            mode: *rng.pick(&[
                AclMode::All,
                AclMode::Whitelist,
                AclMode::Whitelist,
                AclMode::Blacklist,
            ]),
            limits: Default::default(),
            syn_cookies: Default::default(),
            prefixes: (0..rng.below(6)).map(|_| random_prefix(rng)).collect(),
        };
        // One listener per (address, port, protocol), as the daemon guarantees.
        if !rules.iter().any(|r| r.key() == rule.key()) {
            rules.push(rule);
        }
    }
    rules
}

/// The backend groups L4 listeners are put in: the first few and the last one.
const GROUPS: [u32; 4] = [0, 1, 2, MAX_L4_GROUPS - 1];

/// About half the listeners become L4 listeners of one of [`GROUPS`], some with a flow table
/// (long enough never to expire during the test), some hashing source ports.
fn scenario_groups(rng: &mut Rng, rules: &[ListenerRule]) -> L4Listeners {
    let mut groups = L4Listeners::new();
    for r in rules {
        if rng.chance(50) {
            groups.insert(
                r.id,
                L4Listener {
                    group: *rng.pick(&GROUPS),
                    flow_secs: *rng.pick(&[0, 0, 3600]),
                    hash_src_port: rng.chance(30),
                },
            );
        }
    }
    groups
}

/// Backends for a group: IPv4 and IPv6 ones, some dead, some without a next hop; some
/// routed by the interface frames come in on (named, or 0), some by `other` (drawn from
/// `egress_rng`).
fn random_backends(rng: &mut Rng, egress_rng: &mut Rng, other: u32) -> Vec<BackendEntry> {
    (0..rng.below(8))
        .map(|i| BackendEntry {
            addr: if rng.chance(50) {
                IpAddr::V4(Ipv4Addr::new(10, 9, rng.below(2) as u8, i as u8))
            } else {
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    9,
                    0,
                    0,
                    0,
                    0,
                    rng.below(2) as u16,
                    i as u16,
                ))
            },
            mac: if rng.chance(15) {
                [0; 6]
            } else {
                [0x02, 0xbe, 0, 0, rng.below(3) as u8, i as u8]
            },
            alive: rng.chance(85),
            egress: match egress_rng.below(8) {
                0..=2 => Egress {
                    ifindex: other,
                    mac: [0x02, 0xee, 0, 0, 0, 2],
                },
                3 => Egress {
                    ifindex: LOOPBACK_IFINDEX,
                    mac: [0x02, 0xee, 0, 0, 0, 1],
                },
                _ => Egress::default(),
            },
        })
        .collect()
}

/// A ring the daemon could write: built from a few backends with random weights (all 0
/// included: every entry NO_BACKEND), or any mix of backend indices and NO_BACKEND.
fn random_ring(rng: &mut Rng) -> Vec<u32> {
    if rng.chance(50) {
        let keys: Vec<String> = (0..1 + rng.below(6))
            .map(|i| format!("10.9.{}.{i}:80", rng.below(4)))
            .collect();
        let backends: Vec<(&[u8], u32)> = keys
            .iter()
            .map(|k| (k.as_bytes(), rng.below(4) as u32))
            .collect();
        return build_table(&backends);
    }
    let n = *rng.pick(&[1, 3, 17, MAX_BACKENDS_PER_GROUP as usize]);
    (0..TABLE_SIZE)
        .map(|_| {
            if rng.chance(15) {
                NO_BACKEND
            } else {
                rng.below(n) as u32
            }
        })
        .collect()
}

/// Every group's per-backend counters, indexed by `backend_stats_slot`.
fn backend_counters(fx: &Fixture) -> Vec<BackendCounters> {
    (0..MAX_L4_GROUPS)
        .flat_map(|g| (0..MAX_BACKENDS_PER_GROUP).map(move |b| (g, b)))
        .map(|(g, b)| fx.backend_counters(g, b))
        .collect()
}

fn random_frame(rng: &mut Rng) -> Frame {
    let v4 = rng.chance(50);
    let (src, mut dst) = if v4 {
        (IpAddr::V4(v4_src(rng)), IpAddr::V4(*rng.pick(&V4_DST)))
    } else {
        (v6_src(rng), v6_dst(rng))
    };
    // Wildcard addresses as destinations must find wildcard listeners only.
    if rng.chance(3) {
        dst = match (v4, rng.chance(50)) {
            (true, _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (false, true) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            (false, false) => IpAddr::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()),
        };
    }
    let proto = *rng.pick(&[TCP, TCP, UDP, UDP, ICMP, 50]);
    let mut f = Frame::new(src, dst, proto, *rng.pick(&PORTS));
    if rng.chance(10) {
        f.dst_port = rng.below(65536) as u16;
    }
    if rng.chance(25) {
        let n = 1 + rng.below(3);
        f.vlans = (0..n).map(|_| *rng.pick(&[0x8100u16, 0x88a8])).collect();
    }
    if v4 {
        if rng.chance(30) {
            f.v4_options = rng.below(41);
        }
        if rng.chance(15) {
            f.v4_fragment = (
                if rng.chance(50) {
                    0
                } else {
                    1 + rng.below(8000) as u16
                },
                rng.chance(50),
            );
        }
    } else if rng.chance(40) {
        f.v6_exts = (0..rng.below(8))
            .map(|_| match rng.below(5) {
                0 => Ext::Options {
                    kind: 0,
                    len8: rng.below(3) as u8,
                },
                1 => Ext::Options {
                    kind: 43,
                    len8: rng.below(3) as u8,
                },
                2 => Ext::Options {
                    kind: 60,
                    len8: rng.below(3) as u8,
                },
                3 => Ext::Auth {
                    len4: rng.below(4) as u8,
                },
                _ => Ext::Fragment {
                    offset: if rng.chance(70) {
                        0
                    } else {
                        1 + rng.below(8000) as u16
                    },
                    more: rng.chance(50),
                },
            })
            .collect();
    }
    if rng.chance(20) {
        f.payload = rng.below(64);
        // Some near the MTU (1500 here), with don't-fragment or not, so that a few no longer
        // fit once encapsulated.
        if f.payload < 16 {
            f.payload += 1440;
            f.v4_df = f.payload.is_multiple_of(2);
        }
    }
    f
}

/// Frames for one scenario: generated ones, every truncation of a few, mutated and random bytes.
fn scenario_frames(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = (0..FRAMES_PER_SCENARIO)
        .map(|_| random_frame(rng).bytes())
        .collect();
    for i in 0..5 {
        let full = frames[i].clone();
        frames.extend((14..full.len()).map(|n| full[..n].to_vec()));
    }
    for _ in 0..20 {
        let mut f = random_frame(rng).bytes();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(f.len());
            f[at] = rng.next_u64() as u8;
        }
        frames.push(f);
    }
    // ICMP errors about replies to generated frames (many to listeners' addresses and
    // ports), of error types and others, whole and cut short.
    for _ in 0..120 {
        let mut about = random_frame(rng);
        about.vlans.clear();
        about.v6_exts.clear();
        about.v4_fragment = (0, false);
        let from = if about.src.is_ipv4() {
            IpAddr::V4(v4_src(rng))
        } else {
            v6_src(rng)
        };
        let kind = *rng.pick(&[1u8, 2, 3, 4, 8, 11, 12, 128]);
        let mut f = icmp_error(from, &about, kind, rng.below(5) as u8);
        if rng.chance(20) {
            f.truncate(14 + rng.below(f.len() - 14));
        }
        frames.push(f);
    }
    for _ in 0..20 {
        let len = 14 + rng.below(120);
        let mut f = rng.bytes(len);
        if rng.chance(50) {
            let et: u16 = *rng.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8]);
            f[12..14].copy_from_slice(&et.to_be_bytes());
            if et == 0x0800 && f.len() > 14 {
                f[14] = 0x45;
            } else if et == 0x86dd && f.len() > 14 {
                f[14] = 0x60;
            }
        }
        frames.push(f);
    }
    frames
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn kernel_program_agrees_with_the_reference_classifier() {
    if !root_or_skip("kernel_program_agrees_with_the_reference_classifier") {
        return;
    }
    // On the loopback of a namespace of its own, MTU 1500, like a NIC's: BPF_PROG_TEST_RUN
    // runs there, and the too-big rules come into play.
    let ns = Netns::new("diff");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    // Another interface, for backends routed by it (the program redirects to it).
    ns.ip(&[
        "link", "add", "dif0", "type", "veth", "peer", "name", "dif1",
    ]);
    in_netns(&ns.path(), differential);
}

fn differential() {
    let other = nix::net::if_::if_nametoindex("dif0").expect("the veth exists");
    let mut fx = Fixture::load();
    fx.tables.mtu = 1500;
    let mut mismatches = Vec::new();
    let mut total = 0usize;
    let mut by_outcome = [0usize; OUTCOMES];
    let (mut picked, mut l4_unpicked, mut rings_written) = (0usize, 0usize, 0usize);
    for seed in 0..SCENARIOS {
        let mut rng = Rng::new(seed);
        let rules = scenario_rules(&mut rng);
        // The L4 side draws from its own generator, so that the rules and frames stay those
        // of the test before L4 listeners existed.
        let mut l4_rng = Rng::new(seed ^ 0x4d41_474c_4556);
        let mut egress_rng = Rng::new(seed ^ 0x4547_5245_5353);
        let groups = scenario_groups(&mut l4_rng, &rules);
        for group in GROUPS {
            // Rings stay from one scenario to the next; some groups never get one.
            if group != 2 && l4_rng.chance(30) {
                fx.set_ring(group, random_ring(&mut l4_rng));
                rings_written += 1;
            }
            // So do backends (and the flows remembered for them).
            if l4_rng.chance(40) {
                fx.set_backends(group, &random_backends(&mut l4_rng, &mut egress_rng, other));
            }
        }
        fx.apply_l4(&rules, &groups);
        let start: HashMap<u32, Counters> =
            fx.slots.iter().map(|s| (*s, fx.counters(*s))).collect();
        let mut expected: HashMap<u32, Counters> =
            fx.slots.iter().map(|s| (*s, Counters::default())).collect();
        let backends_start = backend_counters(&fx);
        let mut backends_expected = vec![BackendCounters::default(); backends_start.len()];
        for frame in scenario_frames(&mut rng) {
            total += 1;
            let (verdict, out, decision, expected_out) = fx.run_output(&frame);
            if out != expected_out && mismatches.len() < 20 {
                mismatches.push(format!(
                    "seed {seed}: kernel sent {}, reference {} for {} ({decision:?})",
                    hex(&out),
                    hex(&expected_out),
                    hex(&frame)
                ));
            }
            by_outcome[decision.outcome as usize] += 1;
            let e = expected.entry(decision.slot).or_default();
            e.packets[decision.outcome as usize] += 1;
            e.bytes[decision.outcome as usize] += frame.len() as u64;
            if let Some(pick) = decision.backend {
                picked += 1;
                let c =
                    &mut backends_expected[backend_stats_slot(pick.group, pick.backend) as usize];
                c.packets += 1;
                c.bytes += frame.len() as u64;
            } else if decision.outcome == Outcome::NoBackend {
                l4_unpicked += 1;
            }
            if verdict != decision.outcome.action() && mismatches.len() < 20 {
                mismatches.push(format!(
                    "seed {seed}: kernel {verdict}, reference {decision:?} for {}",
                    hex(&frame)
                ));
            }
        }
        // Every slot's counters moved exactly as the reference's decisions say.
        for slot in &fx.slots {
            let now = fx.counters(*slot);
            let mut delta = Counters::default();
            for i in 0..OUTCOMES {
                delta.packets[i] = now.packets[i] - start[slot].packets[i];
                delta.bytes[i] = now.bytes[i] - start[slot].bytes[i];
            }
            if delta != expected[slot] && mismatches.len() < 20 {
                mismatches.push(format!(
                    "seed {seed}: slot {slot} counted {delta:?}, reference {:?} (rules {rules:?})",
                    expected[slot]
                ));
            }
        }
        // So did every backend's, in every group.
        for (i, now) in backend_counters(&fx).iter().enumerate() {
            let delta = BackendCounters {
                packets: now.packets - backends_start[i].packets,
                bytes: now.bytes - backends_start[i].bytes,
            };
            if delta != backends_expected[i] && mismatches.len() < 20 {
                let (group, backend) = (
                    i as u32 / MAX_BACKENDS_PER_GROUP,
                    i as u32 % MAX_BACKENDS_PER_GROUP,
                );
                mismatches.push(format!(
                    "seed {seed}: backend {backend} of group {group} counted {delta:?}, \
                     reference {:?} (groups {groups:?})",
                    backends_expected[i]
                ));
            }
        }
    }
    eprintln!(
        "differential: {total} frames over {SCENARIOS} map contents; by outcome {by_outcome:?}; \
         {picked} assigned a backend, {l4_unpicked} of L4 listeners assigned none; \
         {rings_written} rings written"
    );
    assert!(
        mismatches.is_empty(),
        "kernel and reference disagree:\n{}",
        mismatches.join("\n")
    );
    // The generator must reach every outcome, or the comparison proves little. Tagged
    // frames to L4 listeners are rarer; a failed encapsulation needs a frame without
    // headroom, which BPF_PROG_TEST_RUN never gives. Too-big frames of L4 listeners are
    // rare here; `xdp_encap` compares each kind with the reference byte for byte. ICMP errors
    // reach an L4 listener's flow less often than its own packets. Per-source limits depend
    // on the kernel's clock, which this comparison cannot hold still: its listeners have none
    // (`xdp_packets` compares limited sources with the reference, frame by frame), nor SYN
    // cookies, whose stamps are read against the same clock (`xdp_packets` likewise).
    assert!(
        Outcome::ALL.iter().all(|o| match o {
            Outcome::EncapFailed | Outcome::TooBig | Outcome::TooBigAnswered => true,
            Outcome::RateLimited | Outcome::Blocked | Outcome::SynCookie => {
                by_outcome[*o as usize] == 0
            }
            Outcome::ForwardedIcmp | Outcome::Redirected => by_outcome[*o as usize] >= 10,
            Outcome::VlanL4 => by_outcome[*o as usize] >= 10,
            _ => by_outcome[*o as usize] >= 50,
        }),
        "outcomes poorly covered: {by_outcome:?}"
    );
    assert!(
        picked >= 50 && l4_unpicked >= 20,
        "L4 picks poorly covered: {picked} assigned, {l4_unpicked} not"
    );
}
