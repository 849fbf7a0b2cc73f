//! `edgelb decap` as a real process: bad flags (a missing `--from` among them) get one clear
//! line and exit code 2 before anything is loaded; as root, it attaches (falling back to skb
//! mode where the driver has no native XDP), logs its counters and detaches on SIGTERM.
use edgelb_tests::certs::TempDir;
use edgelb_tests::daemon::{Daemon, run};
use edgelb_tests::netns::Netns;
use edgelb_tests::privilege::root_or_skip;

/// The edgelb nodes' outer source prefixes, as `cargo xtask backend-setup` prints them.
const FROM: [&str; 4] = ["--from", "172.16.0.0/16", "--from", "fd00:e1b::/96"];

#[test]
fn bad_decap_flags_are_one_clear_line_and_exit_code_2() {
    let with_from =
        |args: &[&'static str]| -> Vec<&'static str> { args.iter().copied().chain(FROM).collect() };
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "missing interface",
            with_from(&["decap", "--vip", "10.0.0.1"]),
            "edgelb: error: --iface: required (see --help)",
        ),
        (
            "empty interface",
            with_from(&["decap", "--iface", ""]),
            "--iface",
        ),
        (
            "invalid VIP",
            with_from(&["decap", "--iface", "lo", "--vip", "10.0.0.300"]),
            "--vip \"10.0.0.300\": not an IPv4 or IPv6 address",
        ),
        (
            "a prefix is not a VIP",
            with_from(&["decap", "--iface", "lo", "--vip", "fd00::/64"]),
            "--vip \"fd00::/64\"",
        ),
        (
            "no --from: every outer source would be trusted",
            vec!["decap", "--iface", "lo", "--vip", "10.0.0.1"],
            "--from: required: the outer source prefixes of the edgelb nodes' tunnelled packets (--from 172.16.0.0/16 --from fd00:e1b::/96)",
        ),
        (
            "IPv4 prefix too long",
            with_from(&["decap", "--iface", "lo", "--from", "10.2.0.0/33"]),
            "--from \"10.2.0.0/33\": expected an IPv4/IPv6 address or CIDR such as 10.0.0.0/8 or fd00::/64 (prefix length 0-32 for IPv4, 0-128 for IPv6)",
        ),
        (
            "IPv6 prefix too long",
            with_from(&["decap", "--iface", "lo", "--from", "fd00:2::/129"]),
            "--from \"fd00:2::/129\": expected an IPv4/IPv6 address or CIDR",
        ),
        (
            "a name is not a prefix",
            with_from(&["decap", "--iface", "lo", "--from", "lb1.example"]),
            "--from \"lb1.example\": expected an IPv4/IPv6 address or CIDR",
        ),
        (
            "no --vip: nothing would be decapsulated",
            with_from(&["decap", "--iface", "lo"]),
            "edgelb: error: --vip: required",
        ),
        (
            "an interface that does not exist, as the daemon reports it",
            with_from(&["decap", "--iface", "nosuch0", "--vip", "10.0.0.1"]),
            "--iface \"nosuch0\": no such network interface (see `ip link`)",
        ),
        (
            "an empty value",
            with_from(&["decap", "--iface", "lo", "--from", ""]),
            "--from \"\": expected an IPv4/IPv6 address or CIDR",
        ),
    ];
    for (what, args, message) in cases {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(message), "{what}: {stderr}");
        // Every flag error is one line, the parser's (a missing flag) too.
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: more than one line: {stderr}"
        );
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
            "decap",
            "--iface",
            "lo",
            "--vip",
            "10.0.0.1",
            "--vip",
            "fd00::1",
            "--from",
            "172.16.0.0/16",
            "--from",
            "fd00:e1b::/96",
            "--from",
            "10.2.1.2",
        ],
        logs.path(),
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("falling back to skb"), "{log}");
    assert!(log.contains("decap counters decapsulated=0"), "{log}");
    assert!(log.contains("refused=0 (0 bytes)"), "{log}");
    assert!(
        log.contains("from=\"10.2.1.2/32 172.16.0.0/16 fd00:e1b::/96\""),
        "the trusted sources, as the program got them: {log}"
    );
    assert!(!log.contains("no --from prefix overlaps"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    assert!(log.contains("decap program detached"), "{log}");
    assert!(
        ns.ip(&["link", "show", "lo"]).find("xdp").is_none(),
        "still attached"
    );
}
