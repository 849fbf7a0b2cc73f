//! The BGP speaker (BIRD) of one node, in a namespace of its own with a peer that never
//! answers: a speaker that dies as soon as it is started again is started less and less
//! often, and a speaker that hangs does not hold up the node's stop after a privilege drop.
use std::time::{Duration, Instant};

use edgelb_tests::certs::TempDir;
use edgelb_tests::daemon::{Daemon, comm};
use edgelb_tests::netns::Netns;
use edgelb_tests::privilege::root_or_skip;
use nix::sys::signal::Signal;

/// The flags of a node with BGP (a peer at an address nothing answers), plus `extra`.
fn node_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--protocol",
        "http",
        "--listen",
        "127.0.0.1:8080",
        "--backend",
        "127.0.0.1:8081",
        "--xdp-mode",
        "off",
        "--bgp-local-as",
        "65001",
        "--bgp-router-id",
        "10.9.0.2",
        "--bgp-peer",
        "10.9.0.1,as=65000",
        "--bgp-withdraw-delay",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

/// Starts a node with BGP in `ns` ([`node_args`]).
fn start_node(ns: &Netns, dir: &TempDir, extra: &[&str]) -> Daemon {
    Daemon::start(Some(ns), &node_args(extra), dir.path())
}

/// A stand-in for BIRD in `dir` (with `birdc` beside it): the real one, except that when the
/// shell test `hangs_when` holds it sleeps a minute instead (no control socket, no answer).
fn stand_in(dir: &TempDir, hangs_when: &str) -> std::path::PathBuf {
    let speaker = dir.write(
        "bird",
        format!("#!/bin/sh\nif {hangs_when}; then exec sleep 60; fi\nexec /usr/sbin/bird \"$@\"\n"),
    );
    std::fs::set_permissions(
        &speaker,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the stand-in");
    std::os::unix::fs::symlink("/usr/sbin/birdc", dir.path().join("birdc")).expect("birdc");
    speaker
}

fn signal(pid: i32, s: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s);
}

/// A speaker killed each time it is started again (as one that crashes at start would be) is
/// restarted after 1, 2, 4, 8 ... s, not every second: at most 5 restarts in 14 s (every second
/// would be 7 or more), and still restarted.
#[test]
fn a_speaker_that_dies_at_each_start_is_started_again_less_and_less_often() {
    if !root_or_skip("a_speaker_that_dies_at_each_start_is_started_again_less_and_less_often") {
        return;
    }
    let ns = Netns::new("bgp-crash");
    let dir = TempDir::new();
    let node = start_node(&ns, &dir, &[]);
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(14) {
        if let Some(pid) = node.bgp_speaker()
            && !seen.contains(&pid)
        {
            seen.push(pid);
            signal(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let restarts = seen.len() - 1;
    eprintln!("{restarts} restarts in 14 s");
    // Each restart is logged once it is done: started, or killed before it was up.
    let attempts = |log: &str| {
        log.matches("BGP speaker started again").count()
            + log.matches("BGP speaker cannot be started again").count()
    };
    let log = node.log_when(Duration::from_secs(5), |log| attempts(log) >= restarts);
    assert!(
        (2..=5).contains(&restarts) && attempts(&log) == restarts,
        "{restarts} restarts of the speaker in 14 s (expected 2-5: waits of 1, 2, 4, 8 s), {} logged:\n{log}",
        attempts(&log)
    );
    let (status, log) = node.stop();
    assert!(status.success(), "{status}:\n{log}");
}

/// After the privilege drop the node cannot signal the root BIRD and asks it by `birdc down`;
/// a BIRD that does not answer (stopped here) leaves the node's stop a few seconds longer,
/// not hung.
#[test]
fn a_hung_speaker_does_not_hold_up_the_stop_after_a_privilege_drop() {
    if !root_or_skip("a_hung_speaker_does_not_hold_up_the_stop_after_a_privilege_drop") {
        return;
    }
    let ns = Netns::new("bgp-hung");
    let dir = TempDir::new();
    let node = start_node(&ns, &dir, &["--user", "nobody"]);
    let bird = node.bgp_speaker().expect("the node runs BIRD");
    // Killed however the test ends: a stopped process takes no parent-death signal.
    struct Killed(i32);
    impl Drop for Killed {
        fn drop(&mut self) {
            signal(self.0, Signal::SIGKILL);
        }
    }
    let _killed = Killed(bird);
    signal(bird, Signal::SIGSTOP);
    let stopping = Instant::now();
    // Daemon::stop fails the test if the node has not exited 10 s after SIGTERM.
    let (status, log) = node.stop();
    let took = stopping.elapsed();
    eprintln!("stopped in {took:?} with the speaker hung");
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.contains("BGP speaker did not answer birdc down"),
        "{log}"
    );
}

/// A speaker started again that never comes up (here a stand-in that sleeps and makes no
/// control socket) is waited for off the main loop: a reload asked for meanwhile is applied
/// at once, not after the 10 s the start waits for the socket.
#[test]
fn a_speaker_slow_to_start_again_does_not_hold_up_the_node() {
    if !root_or_skip("a_speaker_slow_to_start_again_does_not_hold_up_the_node") {
        return;
    }
    let ns = Netns::new("bgp-slow");
    let dir = TempDir::new();
    let hang = dir.path().join("hang");
    let speaker = stand_in(
        &dir,
        &format!("[ -e {} ] && [ \"$1\" = -f ]", hang.display()),
    );
    let node = start_node(&ns, &dir, &["--bgp-speaker", &speaker.to_string_lossy()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = node.bgp_speaker() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no speaker:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    std::fs::write(&hang, "").expect("touch");
    signal(pid, Signal::SIGKILL);
    // Started again after a second's wait, at the next tick: then waiting for its socket.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node.children().into_iter().any(|p| comm(p) == "sleep") {
        assert!(
            Instant::now() < deadline,
            "not started again:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = Instant::now();
    signal(node.pid() as i32, Signal::SIGHUP);
    let log = node.log_when(Duration::from_secs(12), |log| {
        log.contains("SIGHUP: configuration and certificates reloaded")
    });
    let took = asked.elapsed();
    eprintln!("reload applied {took:?} after SIGHUP");
    assert!(
        log.contains("SIGHUP: configuration and certificates reloaded")
            && took < Duration::from_secs(3),
        "reload took {took:?}:\n{log}"
    );
    // The start still waiting gives up at the stop, its speaker killed.
    let stopping = Instant::now();
    let (status, log) = node.stop();
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the stop waited {:?} for the start",
        stopping.elapsed()
    );
}

/// A speaker whose configuration check never ends (a stand-in that sleeps on `-p`) fails the
/// node's start within the time BIRD is given, with the command named, instead of hanging it.
#[test]
fn a_speaker_that_hangs_on_its_check_fails_the_start_instead_of_hanging_it() {
    if !root_or_skip("a_speaker_that_hangs_on_its_check_fails_the_start_instead_of_hanging_it") {
        return;
    }
    let ns = Netns::new("bgp-check");
    let dir = TempDir::new();
    let speaker = stand_in(&dir, "[ \"$1\" = -p ]");
    let mut child = ns
        .command(&edgelb_tests::daemon::binary().to_string_lossy())
        .args(node_args(&["--bgp-speaker", &speaker.to_string_lossy()]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start edgelb");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the start still hangs after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    eprintln!("failed after {:?}", started.elapsed());
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("-p (its check of the configuration): no answer within 10s"),
        "{err}"
    );
}
