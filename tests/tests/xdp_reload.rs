//! Reloads under traffic: the XDP program, loaded in the kernel, runs frames on one thread
//! (BPF_PROG_TEST_RUN) while the daemon's map writer applies one configuration after another on
//! this one. Every frame must get the verdict of the old configuration or of the new one, never
//! one of a mix of both; probes whose verdict differs between the two show that both were in
//! force in turn.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgelb::acl::AclMode::{Blacklist, Whitelist};
use edgelb::dataplane::ListenerRule;
use edgelb_tests::dataplane_fixture::{Fixture, rule};
use edgelb_tests::packet::{Frame, TCP};
use edgelb_tests::privilege::root_or_skip;
use lb_common::NO_LISTENER_SLOT;

/// Reloads per test at least: each alternates between the two configurations.
const RELOADS: usize = 150;
/// Frames run during the reloads at least (reloading goes on until they have, for 20 s at
/// most): on a loaded machine the traffic thread gets less time.
const FRAMES: u64 = 4000;

const XDP_DROP: usize = 1;
const XDP_PASS: usize = 2;

/// Held by each test: the reload thread and the traffic thread must have a core each, or a
/// window between two map writes is rarely seen.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Verdict counts of one frame (index: XDP action).
type Verdicts = [u64; 8];

/// Applies `a` and `b` in turn while another thread runs `frames` through the program, each
/// once in turn, over and over; returns how often each frame got each verdict.
fn reload_under_traffic(
    fx: &mut Fixture,
    a: &[ListenerRule],
    b: &[ListenerRule],
    frames: Vec<Vec<u8>>,
) -> Vec<Verdicts> {
    fx.apply(a);
    let runner = fx.dp.test_runner().expect("a test runner");
    let stop = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicU64::new(0));
    let (running, counted) = (stop.clone(), ran.clone());
    let traffic = std::thread::spawn(move || {
        let mut seen = vec![[0u64; 8]; frames.len()];
        while !running.load(Ordering::Relaxed) {
            for (i, frame) in frames.iter().enumerate() {
                let verdict = runner.test_run(frame).expect("BPF_PROG_TEST_RUN");
                seen[i][verdict.min(7) as usize] += 1;
            }
            counted.fetch_add(frames.len() as u64, Ordering::Relaxed);
        }
        seen
    });
    let start = Instant::now();
    let mut reloads = 0;
    while reloads < RELOADS
        || (ran.load(Ordering::Relaxed) < FRAMES && start.elapsed() < Duration::from_secs(20))
    {
        fx.apply(if reloads % 2 == 0 { b } else { a });
        reloads += 1;
    }
    // Ends on `a` or `b` alike; the traffic thread stops after this.
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.join().expect("the traffic thread");
    let frames: u64 = seen.iter().flatten().sum();
    eprintln!("{reloads} reloads in {took:?}, {frames} frames during them");
    assert!(
        frames >= FRAMES,
        "only {frames} frames ran during the reloads"
    );
    seen
}

/// Only DROP and PASS: anything else (an aborted run, a TX) is a defect too.
fn only_drop_and_pass(what: &str, v: &Verdicts) {
    let other: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != XDP_DROP && *i != XDP_PASS)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(other, 0, "{what}: verdicts other than DROP and PASS: {v:?}");
}

/// A blacklisting listener moved from the wildcard address to its own address of the same
/// port and back (IPv4 and IPv6): a listed source's frame to that address is dropped
/// throughout (before, the new port entry could be seen before the listener it counts, and
/// the frame found no listener and was passed). A frame to another address of the port, which
/// only the wildcard listener takes, shows both configurations in force in turn.
#[test]
fn a_listener_moved_between_the_wildcard_and_its_address_is_found_by_every_frame() {
    if !root_or_skip("a_listener_moved_between_the_wildcard_and_its_address_is_found") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for (wildcard, exact, src, dst, other) in [
        (
            "0.0.0.0:443",
            "10.0.0.1:443",
            "192.168.1.5",
            "10.0.0.1",
            "10.0.0.2",
        ),
        (
            "[::]:443",
            "[fd00::1]:443",
            "fd00:9::5",
            "fd00::1",
            "fd00::2",
        ),
    ] {
        let listed = ["192.168.0.0/16", "fd00:9::/64"];
        let mut fx = Fixture::load();
        let a = [rule(1, wildcard, TCP, Blacklist, &listed)];
        let b = [rule(1, exact, TCP, Blacklist, &listed)];
        let frame = Frame::tcp(src, dst, 443).bytes();
        let probe = Frame::tcp(src, other, 443).bytes();
        let seen = reload_under_traffic(&mut fx, &a, &b, vec![frame, probe]);
        let (main, probe) = (seen[0], seen[1]);
        eprintln!("{exact}: to the listener's address {main:?}, to another {probe:?}");
        only_drop_and_pass(exact, &main);
        only_drop_and_pass(exact, &probe);
        assert_eq!(
            main[XDP_PASS], 0,
            "{exact}: frames passed (no listener found) while it moved: {main:?}"
        );
        assert!(
            probe[XDP_DROP] > 0 && probe[XDP_PASS] > 0,
            "{exact}: the two configurations were not both in force: {probe:?}"
        );
    }
}

/// A listener whose access control changes mode (blacklist of one range, then whitelist of
/// another) and back, on its own address and on the wildcard: a source in the whitelist only
/// is admitted by both configurations and a source in the blacklist only refused by both, so
/// neither may see the other verdict at any moment (before, the new list was in force under
/// the old mode for a while); a source in neither list shows both in force in turn.
#[test]
fn a_listener_changing_its_access_control_mode_never_mixes_old_and_new_lists() {
    if !root_or_skip("a_listener_changing_its_access_control_mode_never_mixes") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for addr in ["10.0.0.1:443", "0.0.0.0:443"] {
        let mut fx = Fixture::load();
        let blacklist = [rule(1, addr, TCP, Blacklist, &["192.168.0.0/16"])];
        let whitelist = [rule(1, addr, TCP, Whitelist, &["172.16.0.0/12"])];
        let frames = ["172.16.0.5", "192.168.1.5", "10.9.9.9"]
            .map(|src| Frame::tcp(src, "10.0.0.1", 443).bytes())
            .to_vec();
        let seen = reload_under_traffic(&mut fx, &blacklist, &whitelist, frames);
        let (admitted, refused, neither) = (seen[0], seen[1], seen[2]);
        eprintln!("{addr}: whitelisted {admitted:?}, blacklisted {refused:?}, neither {neither:?}");
        for v in &seen {
            only_drop_and_pass(addr, v);
        }
        assert_eq!(
            (admitted[XDP_DROP], refused[XDP_PASS]),
            (0, 0),
            "{addr}: verdicts of neither configuration"
        );
        assert!(
            neither[XDP_DROP] > 0 && neither[XDP_PASS] > 0,
            "{addr}: the two configurations were not both in force: {neither:?}"
        );
        let lost: u64 = fx.counters(NO_LISTENER_SLOT).packets.iter().sum();
        assert_eq!(lost, 0, "{addr}: frames that found no listener");
    }
}

/// A listener that keeps its id while its address and its blacklist both change: a frame to
/// its old address from a source only the new list names, and one to its new address from a
/// source only the old list names, are dropped by neither configuration, so never (with the
/// ACL set kept, the old key would read the new list for a while, and the new key the old).
#[test]
fn a_listener_moving_address_with_a_new_list_never_reads_the_other_list() {
    if !root_or_skip("a_listener_moving_address_with_a_new_list_never_reads_the_other_list") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::load();
    let old = [rule(1, "10.0.0.1:443", TCP, Blacklist, &["192.168.0.0/16"])];
    let new = [rule(1, "10.0.0.2:443", TCP, Blacklist, &["172.16.0.0/12"])];
    let frames = [
        ("172.16.0.5", "10.0.0.1"),
        ("192.168.1.5", "10.0.0.2"),
        ("192.168.1.5", "10.0.0.1"),
    ]
    .map(|(src, dst)| Frame::tcp(src, dst, 443).bytes())
    .to_vec();
    let seen = reload_under_traffic(&mut fx, &old, &new, frames);
    let (to_old, to_new, probe) = (seen[0], seen[1], seen[2]);
    eprintln!("to the old address {to_old:?}, to the new {to_new:?}, probe {probe:?}");
    for v in &seen {
        only_drop_and_pass("moved", v);
    }
    assert_eq!(
        (to_old[XDP_DROP], to_new[XDP_DROP]),
        (0, 0),
        "frames dropped by neither configuration"
    );
    assert!(
        probe[XDP_DROP] > 0 && probe[XDP_PASS] > 0,
        "the two configurations were not both in force: {probe:?}"
    );
}
