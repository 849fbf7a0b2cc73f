//! Maglev shared with the kernel: the rings the daemon writes into the BPF maps read back equal
//! after every change, the XDP program picks the backend the userspace balancer picks for the
//! same client, a removed backend moves few other clients, and a ring flipped under traffic is
//! never seen half-written.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgelb::acl::AclMode;
use edgelb::balance::{Algorithm, Balancer};
use edgelb::dataplane::{DataplaneError, L4Groups, ListenerRule};
use edgelb_tests::dataplane_fixture::{Fixture, rule};
use edgelb_tests::packet::{Frame, TCP};
use edgelb_tests::privilege::root_or_skip;
use edgelb_tests::rng::Rng;
use lb_common::maglev::{NO_BACKEND, TABLE_SIZE, build_table};
use lb_common::reference::BackendPick;
use lb_common::{MAX_BACKENDS_PER_GROUP, MAX_L4_GROUPS, Outcome, XDP_TX};

const LISTENER: u32 = 1;
const PORT: u16 = 443;

/// Backends `10.1.0.<host>:8080`, one per (host, weight).
fn backends(hosts_weights: &[(u8, u8)]) -> Vec<(SocketAddr, u8)> {
    hosts_weights
        .iter()
        .map(|(host, w)| (SocketAddr::from(([10, 1, 0, *host], 8080)), *w))
        .collect()
}

/// The ring the source-IP-hash balancer builds for `backends` with these Maglev weights (the
/// configured weight of a healthy backend, 0 for an unhealthy one): each backend keyed by its
/// address as text, as `edgelb::balance::source_hash` keys it.
fn ring_with(backends: &[(SocketAddr, u8)], weights: &[u32]) -> Vec<u32> {
    let keys: Vec<String> = backends.iter().map(|(a, _)| a.to_string()).collect();
    let input: Vec<(&[u8], u32)> = keys
        .iter()
        .zip(weights)
        .map(|(k, w)| (k.as_bytes(), *w))
        .collect();
    build_table(&input)
}

/// The ring of `backends` when every one is healthy.
fn ring_of(backends: &[(SocketAddr, u8)]) -> Vec<u32> {
    let weights: Vec<u32> = backends.iter().map(|(_, w)| u32::from(*w)).collect();
    ring_with(backends, &weights)
}

/// `n` client addresses: IPv4 from 10.0.0.0/8, IPv6 from fd00::/16, and every tenth IPv4 one
/// written IPv4-mapped (the same client to both sides).
fn sources(seed: u64, n: usize) -> Vec<IpAddr> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let r = rng.next_u64();
            if i % 2 == 0 {
                let v4 = Ipv4Addr::from(0x0a00_0000 | (r as u32 & 0x00ff_ffff));
                if i % 10 == 0 {
                    IpAddr::V6(v4.to_ipv6_mapped())
                } else {
                    IpAddr::V4(v4)
                }
            } else {
                let low = (u128::from(r) << 64) | u128::from(rng.next_u64());
                IpAddr::V6(Ipv6Addr::from((0xfd00_u128 << 112) | (low >> 16)))
            }
        })
        .collect()
}

/// A TCP SYN from `src` to the L4 listener (on `[::]:443`, both families).
fn syn(src: IpAddr) -> Vec<u8> {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V6(_) => "fd00::1".parse().expect("static address"),
    };
    Frame::new(src, dst, TCP, PORT).bytes()
}

/// An L4 listener on every address of port 443 admitting 10.0.0.0/8 and fd00::/16 only.
fn l4_listener() -> ListenerRule {
    rule(
        LISTENER,
        "[::]:443",
        TCP,
        AclMode::Whitelist,
        &["10.0.0.0/8", "fd00::/16"],
    )
}

fn in_group(group: u32) -> L4Groups {
    L4Groups::from([(LISTENER, group)])
}

/// Runs `frame` through the kernel and returns the backend of `group` whose counter rose (of
/// the first `n`), checking that the reference classifier assigned the same one.
fn kernel_pick(fx: &mut Fixture, group: u32, n: usize, frame: &[u8]) -> Option<usize> {
    let before: Vec<u64> = (0..n)
        .map(|b| fx.backend_counters(group, b as u32).packets)
        .collect();
    let (verdict, reference) = fx.run(frame);
    assert_eq!(verdict, reference.outcome.action());
    assert!(
        matches!(
            reference.outcome,
            Outcome::ForwardedL4 | Outcome::NoBackend | Outcome::Passed
        ),
        "{reference:?}"
    );
    let rose: Vec<usize> = (0..n)
        .filter(|b| fx.backend_counters(group, *b as u32).packets != before[*b])
        .collect();
    assert!(rose.len() <= 1, "one frame counted for backends {rose:?}");
    let pick = rose.first().copied();
    assert_eq!(
        reference.backend,
        pick.map(|b| BackendPick {
            group,
            backend: b as u32
        }),
        "reference and kernel disagree"
    );
    pick
}

/// Total packets counted for the first `n` backends of `group`.
fn group_packets(fx: &Fixture, group: u32, n: u32) -> u64 {
    (0..n).map(|b| fx.backend_counters(group, b).packets).sum()
}

#[test]
fn kernel_ring_reads_back_equal_to_the_userspace_ring_after_every_change() {
    if !root_or_skip("kernel_ring_reads_back_equal_to_the_userspace_ring_after_every_change") {
        return;
    }
    let mut fx = Fixture::load();
    let group = 3;
    let other = MAX_L4_GROUPS - 1;
    assert!(matches!(fx.dp.ring(group), Err(DataplaneError::NoRing(3))));
    assert_eq!(fx.dp.ring_generation(group).expect("generation"), 0);

    // A backend set, then each kind of change the daemon makes.
    let mut set = backends(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
    type Change = Box<dyn Fn(&mut Vec<(SocketAddr, u8)>)>;
    let steps: Vec<(&str, Change)> = vec![
        ("four equal backends", Box::new(|_| {})),
        (
            "weights 3,1,0,2",
            Box::new(|s| {
                for (b, w) in s.iter_mut().zip([3, 1, 0, 2]) {
                    b.1 = w;
                }
            }),
        ),
        (
            "remove a backend",
            Box::new(|s| {
                s.remove(1);
            }),
        ),
        (
            "add a backend",
            Box::new(|s| {
                s.push((SocketAddr::from(([10, 1, 0, 9], 8080)), 2));
            }),
        ),
        (
            "add an IPv6 backend",
            Box::new(|s| {
                s.push(("[fd00:1::5]:8443".parse().expect("static"), 100));
            }),
        ),
        ("change a weight", Box::new(|s| s[0].1 = 7)),
        (
            "every weight 0",
            Box::new(|s| s.iter_mut().for_each(|b| b.1 = 0)),
        ),
        (
            "back to one backend",
            Box::new(|s| {
                s.truncate(1);
                s[0].1 = 1;
            }),
        ),
    ];
    let other_ring = ring_of(&backends(&[(7, 1), (8, 2)]));
    fx.dp
        .set_ring(other, &other_ring)
        .expect("ring of the other group");
    let (mut write_times, mut read_times) = (Vec::new(), Vec::new());
    for (i, (what, change)) in steps.iter().enumerate() {
        change(&mut set);
        let ring = ring_of(&set);
        let start = Instant::now();
        fx.dp
            .set_ring(group, &ring)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        write_times.push(start.elapsed());
        let start = Instant::now();
        let back = fx.dp.ring(group).unwrap_or_else(|e| panic!("{what}: {e}"));
        read_times.push(start.elapsed());
        assert!(back == ring, "{what}: the kernel's ring differs");
        assert_eq!(
            fx.dp.ring_generation(group).expect("generation"),
            i as u32 + 1,
            "{what}"
        );
        // Another group's ring is left alone.
        assert!(fx.dp.ring(other).expect("other ring") == other_ring);
    }
    let ms = |d: &[Duration]| {
        let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (w, r) = (ms(&write_times), ms(&read_times));
    println!(
        "set_ring ({TABLE_SIZE} entries): min {:.1} ms, median {:.1} ms, max {:.1} ms; \
         reading it back: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        w.0, w.1, w.2, r.0, r.1, r.2
    );

    // Refused rings leave the live one as it was.
    let live = fx.dp.ring(group).expect("live ring");
    let generation = fx.dp.ring_generation(group).expect("generation");
    let mut bad = live.clone();
    bad[100] = MAX_BACKENDS_PER_GROUP;
    assert!(matches!(
        fx.dp.set_ring(group, &bad),
        Err(DataplaneError::RingEntry { slot: 100, .. })
    ));
    assert!(matches!(
        fx.dp.set_ring(group, &live[1..]),
        Err(DataplaneError::RingLength(_))
    ));
    assert!(matches!(
        fx.dp.set_ring(MAX_L4_GROUPS, &live),
        Err(DataplaneError::Group(_))
    ));
    assert!(fx.dp.ring(group).expect("live ring") == live);
    assert_eq!(
        fx.dp.ring_generation(group).expect("generation"),
        generation
    );
    // Listeners can only name groups the kernel holds, and must exist.
    assert!(matches!(
        fx.dp
            .apply_in_groups(&[l4_listener()], &in_group(MAX_L4_GROUPS)),
        Err(DataplaneError::Group(_))
    ));
    assert!(matches!(
        fx.dp
            .apply_in_groups(&[l4_listener()], &L4Groups::from([(LISTENER + 1, 0)])),
        Err(DataplaneError::GroupOfUnknownListener(_))
    ));
}

/// Runs every source through the kernel and through `balancer`; returns the kernel's picks
/// after checking that they agree for every source.
fn agree(fx: &mut Fixture, balancer: &Balancer, group: u32, clients: &[IpAddr]) -> Vec<usize> {
    let n = balancer.len();
    let mut disagreements = Vec::new();
    let picks: Vec<usize> = clients
        .iter()
        .map(|src| {
            let kernel = kernel_pick(fx, group, n, &syn(*src));
            let user = balancer.pick(*src, &[]).map(|p| p.index);
            if kernel != user {
                disagreements.push(format!("{src}: kernel {kernel:?}, userspace {user:?}"));
            }
            kernel.unwrap_or(usize::MAX)
        })
        .collect();
    assert!(
        disagreements.is_empty(),
        "{} of {} sources disagree:\n{}",
        disagreements.len(),
        clients.len(),
        disagreements.join("\n")
    );
    picks
}

#[test]
fn kernel_and_userspace_pick_the_same_backend_for_every_source() {
    if !root_or_skip("kernel_and_userspace_pick_the_same_backend_for_every_source") {
        return;
    }
    let mut fx = Fixture::load();
    let group = 0;
    fx.apply_in_groups(&[l4_listener()], &in_group(group));
    fx.serve_group(group);
    let clients = sources(1, 300);
    // Before any ring is written the group picks nobody.
    let frame = syn(clients[0]);
    assert_eq!(
        kernel_pick(&mut fx, group, MAX_BACKENDS_PER_GROUP as usize, &frame),
        None
    );

    let sets = [
        backends(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]),
        backends(&[(1, 1), (2, 2), (3, 3), (4, 0), (5, 4)]),
        {
            let mut s = backends(&[(11, 10), (12, 100)]);
            s.push(("[fd00:1::5]:8443".parse().expect("static"), 50));
            s
        },
    ];
    for set in &sets {
        let balancer = Balancer::new(Algorithm::SourceIpHash, set);
        fx.set_ring(group, ring_of(set));
        let before = group_packets(&fx, group, MAX_BACKENDS_PER_GROUP);
        let picks = agree(&mut fx, &balancer, group, &clients);
        let mut shares = vec![0usize; set.len()];
        for p in &picks {
            shares[*p] += 1;
        }
        println!(
            "weights {:?}: kernel and userspace agree on all {} sources; clients per backend {shares:?}",
            set.iter().map(|b| b.1).collect::<Vec<_>>(),
            clients.len()
        );
        // Nothing was counted outside the group's backends, and nothing twice.
        assert_eq!(
            group_packets(&fx, group, MAX_BACKENDS_PER_GROUP) - before,
            clients.len() as u64
        );
    }

    // Refused sources are dropped and never assigned.
    let before = group_packets(&fx, group, MAX_BACKENDS_PER_GROUP);
    let refused = Frame::tcp("192.168.7.7", "10.0.0.1", PORT).bytes();
    let (verdict, reference) = fx.run(&refused);
    assert_eq!(verdict, Outcome::DroppedAcl.action());
    assert_eq!(reference.backend, None);
    assert_eq!(group_packets(&fx, group, MAX_BACKENDS_PER_GROUP), before);

    // A group whose backends all have weight 0 picks none, in both halves.
    fx.set_ring(group, ring_of(&backends(&[(1, 0), (2, 0)])));
    assert!(
        fx.dp
            .ring(group)
            .expect("ring")
            .iter()
            .all(|e| *e == NO_BACKEND)
    );
    assert_eq!(kernel_pick(&mut fx, group, 2, &frame), None);

    // The same listener served in userspace again: no pick.
    fx.set_ring(group, ring_of(&sets[0]));
    fx.apply(&[l4_listener()]);
    assert_eq!(kernel_pick(&mut fx, group, 5, &frame), None);
}

/// How many of `before`'s clients changed backend in `after` (compared by address), and how
/// many of those had a backend that is still in `after`'s set.
fn moved(
    before: (&[usize], &[(SocketAddr, u8)]),
    after: (&[usize], &[(SocketAddr, u8)]),
    still_there: impl Fn(SocketAddr) -> bool,
) -> (usize, usize) {
    let (mut moved, mut needless) = (0, 0);
    for (b, a) in before.0.iter().zip(after.0) {
        let (was, now) = (before.1[*b].0, after.1[*a].0);
        if was != now {
            moved += 1;
            if still_there(was) {
                needless += 1;
            }
        }
    }
    (moved, needless)
}

#[test]
fn removing_one_backend_of_five_moves_about_a_fifth_of_the_clients() {
    if !root_or_skip("removing_one_backend_of_five_moves_about_a_fifth_of_the_clients") {
        return;
    }
    let mut fx = Fixture::load();
    let group = 1;
    fx.apply_in_groups(&[l4_listener()], &in_group(group));
    fx.serve_group(group);
    let clients = sources(2, 400);
    let total = clients.len() as f64;
    let five = backends(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
    let n = five.len() as f64;
    let balancer = Balancer::new(Algorithm::SourceIpHash, &five);
    fx.set_ring(group, ring_of(&five));
    let first = agree(&mut fx, &balancer, group, &clients);
    let gone = 2;
    let on_gone = first.iter().filter(|p| **p == gone).count();

    // The backend fails its health checks: the balancer rebuilds its ring with weight 0 for
    // it, and the daemon writes the same ring into the kernel.
    assert!(balancer.set_healthy(gone, false));
    fx.set_ring(group, ring_with(&five, &[1, 1, 0, 1, 1]));
    let unhealthy = agree(&mut fx, &balancer, group, &clients);
    let (moved_h, needless_h) = moved((&first, &five), (&unhealthy, &five), |a| a != five[gone].0);
    println!(
        "backend {} of 5 unhealthy: {moved_h}/{} clients moved ({:.1} %), {on_gone} of them its own; \
         clients of the other backends moved: {needless_h} ({:.1} %)",
        five[gone].0,
        clients.len(),
        100.0 * moved_h as f64 / total,
        100.0 * needless_h as f64 / total
    );
    assert!(unhealthy.iter().all(|p| *p != gone));
    assert!(moved_h as f64 / total <= 1.0 / n + 0.05, "{moved_h} moved");
    assert!(
        needless_h as f64 / total <= 0.05,
        "{needless_h} moved needlessly"
    );

    // Healthy again: every client returns to its first backend.
    assert!(balancer.set_healthy(gone, true));
    fx.set_ring(group, ring_of(&five));
    assert_eq!(agree(&mut fx, &balancer, group, &clients), first);

    // The backend is removed from the configuration: the other four change index, not ring.
    let four: Vec<(SocketAddr, u8)> = five
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != gone)
        .map(|(_, b)| *b)
        .collect();
    let balancer = Balancer::new(Algorithm::SourceIpHash, &four);
    fx.set_ring(group, ring_of(&four));
    let removed = agree(&mut fx, &balancer, group, &clients);
    let (moved_r, needless_r) = moved((&first, &five), (&removed, &four), |a| {
        four.iter().any(|b| b.0 == a)
    });
    println!(
        "backend removed (5 -> 4): {moved_r}/{} clients moved ({:.1} %, 1/N = {:.1} %); \
         clients of the remaining backends moved: {needless_r} ({:.1} %)",
        clients.len(),
        100.0 * moved_r as f64 / total,
        100.0 / n,
        100.0 * needless_r as f64 / total
    );
    assert!(moved_r as f64 / total <= 1.0 / n + 0.05, "{moved_r} moved");
    assert!(
        needless_r as f64 / total <= 0.05,
        "{needless_r} moved needlessly"
    );
}

#[test]
fn a_ring_flipped_under_traffic_is_never_seen_half_written() {
    if !root_or_skip("a_ring_flipped_under_traffic_is_never_seen_half_written") {
        return;
    }
    let mut fx = Fixture::load();
    let group = 2;
    fx.apply_in_groups(&[l4_listener()], &in_group(group));
    fx.serve_group(group);
    // Three rings on disjoint backends: A on 1..=3, B on 4..=6, C on 7..=9, flipped A -> B ->
    // C -> A ... With three, every flip really rewrites the half it stages (that half still
    // holds the ring of two flips before), and a half seen while it is being written shows up
    // as picks from that older ring. Backend 0 is in none, so a read of a never-written
    // (zeroed) half would show up as a count for backend 0, and a NO_BACKEND entry as a frame
    // counted for nobody.
    let ring_on = |first: u8| {
        let list: Vec<(u8, u8)> = (1..=first + 3)
            .map(|host| (host, u8::from(host > first)))
            .collect();
        ring_of(&backends(&list))
    };
    let rings = [ring_on(1), ring_on(4), ring_on(7)];
    for (i, ring) in rings.iter().enumerate() {
        let on = 1 + 3 * i as u32..=3 + 3 * i as u32;
        assert!(ring.iter().all(|e| on.contains(e)), "ring {i}");
    }
    let a = rings[0].clone();
    fx.set_ring(group, a.clone());

    let frames: Vec<Vec<u8>> = sources(3, 64).into_iter().map(syn).collect();
    let runner = fx.dp.test_runner().expect("a second program handle");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        // One frame per run: BPF_PROG_TEST_RUN with `repeat` is much slower per frame here
        // (500 repeats take about 18 ms), and single runs interleave finely with the writes.
        std::thread::spawn(move || {
            let mut sent = 0u64;
            'run: loop {
                for f in &frames {
                    if stop.load(Ordering::Relaxed) {
                        break 'run;
                    }
                    assert_eq!(runner.test_run(f).expect("test run"), XDP_TX);
                    sent += 1;
                }
            }
            sent
        })
    };
    // Frames counted on each ring's backends so far.
    let per_ring = |fx: &Fixture| -> [u64; 3] {
        let mut sums = [0; 3];
        for backend in 1..=9u32 {
            sums[(backend as usize - 1) / 3] += fx.backend_counters(group, backend).packets;
        }
        sums
    };
    const FLIPS: u32 = 1000;
    let start = Instant::now();
    let mut before = per_ring(&fx);
    // (flip, frames) where the ring being overwritten was picked from while it was written.
    let mut torn = Vec::new();
    for i in 0..FLIPS as usize {
        fx.dp.set_ring(group, &rings[(i + 1) % 3]).expect("flip");
        let after = per_ring(&fx);
        // The one frame that read the old ring as the previous flip went live may be
        // counted after it; any more were picked from a half being written.
        let overwritten = (i + 2) % 3;
        let seen = after[overwritten] - before[overwritten];
        if i > 0 && seen > 1 {
            torn.push((i, seen));
        }
        before = after;
    }
    let flipping = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().expect("traffic thread");

    let counts: Vec<u64> = (0..MAX_BACKENDS_PER_GROUP)
        .map(|b| fx.backend_counters(group, b).packets)
        .collect();
    let on: Vec<u64> = (0..3)
        .map(|r| counts[1 + 3 * r..=3 + 3 * r].iter().sum())
        .collect();
    println!(
        "{FLIPS} flips in {:.0} ms under {sent} frames: {on:?} picked from rings A, B, C, \
         {} elsewhere",
        flipping.as_secs_f64() * 1e3,
        sent - on.iter().sum::<u64>()
    );
    assert!(
        sent > 0 && on.iter().all(|n| *n > 0),
        "the flips did not overlap the traffic"
    );
    assert_eq!(
        on.iter().sum::<u64>(),
        sent,
        "frames picked outside the rings or not at all"
    );
    assert!(
        counts
            .iter()
            .enumerate()
            .all(|(i, c)| *c == 0 || (1..=9).contains(&i)),
        "{counts:?}"
    );
    assert!(
        torn.is_empty(),
        "picks from a ring half-overwritten, (flip, frames): {torn:?}"
    );
    assert_eq!(fx.dp.ring_generation(group).expect("generation"), 1 + FLIPS);
    assert!(fx.dp.ring(group).expect("ring") == rings[FLIPS as usize % 3]);
}
