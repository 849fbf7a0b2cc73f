//! `edgelb decap` as a real process: bad flags get one clear line and exit code 2 before
//! anything is loaded; as root, it attaches (falling back to skb mode where the driver has no
//! native XDP), logs its counters and detaches on SIGTERM.
use edgelb_tests::certs::TempDir;
use edgelb_tests::daemon::{Daemon, run};
use edgelb_tests::netns::Netns;
use edgelb_tests::privilege::root_or_skip;

#[test]
fn bad_decap_flags_are_one_clear_line_and_exit_code_2() {
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "missing interface",
            &["decap", "--vip", "10.0.0.1"],
            "--iface",
        ),
        ("empty interface", &["decap", "--iface", ""], "--iface"),
        (
            "invalid VIP",
            &["decap", "--iface", "lo", "--vip", "10.0.0.300"],
            "--vip \"10.0.0.300\": not an IPv4 or IPv6 address",
        ),
        (
            "a prefix is not a VIP",
            &["decap", "--iface", "lo", "--vip", "fd00::/64"],
            "--vip \"fd00::/64\"",
        ),
    ];
    for (what, args, message) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(message), "{what}: {stderr}");
    }
}

#[test]
fn decap_attaches_logs_counters_and_detaches_on_sigterm() {
    if !root_or_skip("decap_attaches_logs_counters_and_detaches_on_sigterm") {
        return;
    }
    let ns = Netns::new("decap");
    let logs = TempDir::new();
    let d = Daemon::start(
        Some(&ns),
        &[
            "decap", "--iface", "lo", "--vip", "10.0.0.1", "--vip", "fd00::1",
        ],
        logs.path(),
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("falling back to skb"), "{log}");
    assert!(log.contains("decap counters decapsulated=0"), "{log}");
    assert!(log.contains("decap program detached"), "{log}");
    assert!(
        ns.ip(&["link", "show", "lo"]).find("xdp").is_none(),
        "still attached"
    );
}
