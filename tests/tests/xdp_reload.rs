//! Reloads under traffic: the XDP program, loaded in the kernel, runs frames on one thread
//! (BPF_PROG_TEST_RUN) while the daemon's map writer applies one configuration after another on
//! this one. Every frame must get the verdict of the old configuration or of the new one, never
//! one of a mix of both.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use edgelb::acl::AclMode::{All, Blacklist, Whitelist};
use edgelb::dataplane::ListenerRule;
use edgelb_tests::dataplane_fixture::{Fixture, rule};
use edgelb_tests::packet::{Frame, TCP};
use edgelb_tests::privilege::root_or_skip;
use lb_common::{NO_LISTENER_SLOT, Outcome};

/// Reloads per test: each alternates between the two configurations.
const RELOADS: usize = 400;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Held by each test: the reload thread and the traffic thread must have a core each, or a
/// window between two map writes is rarely seen.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Applies `a` and `b` in turn [`RELOADS`] times while another thread runs `frames` through the
/// program, `repeat` runs of each in turn, over and over; returns how often each frame's last
/// run of a turn got each verdict, as (frame index, verdict) counts. (The program's counters
/// count every run.)
fn reload_under_traffic(
    fx: &mut Fixture,
    a: &[ListenerRule],
    b: &[ListenerRule],
    frames: Vec<Vec<u8>>,
    repeat: u32,
) -> Vec<[u64; 8]> {
    fx.apply(a);
    let runner = fx.dp.test_runner().expect("a test runner");
    let stop = Arc::new(AtomicBool::new(false));
    let running = stop.clone();
    let traffic = std::thread::spawn(move || {
        let mut seen = vec![[0u64; 8]; frames.len()];
        while !running.load(Ordering::Relaxed) {
            for (i, frame) in frames.iter().enumerate() {
                let (verdict, _) = runner
                    .test_run_repeat(frame, repeat)
                    .expect("BPF_PROG_TEST_RUN");
                seen[i][verdict.min(7) as usize] += 1;
            }
        }
        seen
    });
    for i in 0..RELOADS {
        fx.apply(if i % 2 == 0 { b } else { a });
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("the traffic thread")
}

/// A listener moved from the wildcard address to its own address of the same port and back:
/// a frame to that address finds it throughout (before, the new port entry could be seen
/// before the listener it counts, and the frame found no listener at all).
#[test]
fn a_listener_moved_between_the_wildcard_and_its_address_is_found_by_every_frame() {
    if !root_or_skip("a_listener_moved_between_the_wildcard_and_its_address_is_found") {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut fx = Fixture::load();
    let wildcard = [rule(1, "0.0.0.0:443", TCP, All, &[])];
    let exact = [rule(1, "10.0.0.1:443", TCP, All, &[])];
    let frame = Frame::tcp("192.168.1.5", "10.0.0.1", 443).bytes();
    let seen = reload_under_traffic(&mut fx, &wildcard, &exact, vec![frame], 1);
    let frames: u64 = seen[0].iter().sum::<u64>();
    let missed: u64 = fx.counters(NO_LISTENER_SLOT).packets.iter().sum();
    let found = fx.counters(1).packets[Outcome::Passed as usize];
    eprintln!("{frames} frames over {RELOADS} reloads: {found} found the listener, {missed} none");
    assert!(frames > 1000, "only {frames} frames ran during the reloads");
    assert_eq!(
        (missed, found),
        (0, frames),
        "frames that found no listener while it moved"
    );
}

/// A listener whose access control changes mode (blacklist of one range, then whitelist of
/// another) and back, on its own address and on the wildcard: a source in the whitelist only
/// is admitted by both configurations and a source in the blacklist only refused by both, so
/// neither may see the other verdict at any moment (before, the new list was in force under
/// the old mode for a while).
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
        let admitted = Frame::tcp("172.16.0.5", "10.0.0.1", 443).bytes();
        let refused = Frame::tcp("192.168.1.5", "10.0.0.1", 443).bytes();
        let seen =
            reload_under_traffic(&mut fx, &blacklist, &whitelist, vec![admitted, refused], 1);
        let (admitted, refused) = (seen[0], seen[1]);
        eprintln!(
            "{addr}, over {RELOADS} reloads: the whitelisted source passed {} and was dropped {} times, the blacklisted one dropped {} and passed {}",
            admitted[XDP_PASS as usize],
            admitted[XDP_DROP as usize],
            refused[XDP_DROP as usize],
            refused[XDP_PASS as usize],
        );
        assert!(
            admitted[XDP_PASS as usize] > 500 && refused[XDP_DROP as usize] > 500,
            "{addr}: too few frames ran during the reloads: {admitted:?} {refused:?}"
        );
        assert_eq!(
            (admitted[XDP_DROP as usize], refused[XDP_PASS as usize]),
            (0, 0),
            "{addr}: verdicts of neither configuration"
        );
    }
}
