//! End to end, as root: a client namespace joined by a veth pair to a load-balancer namespace
//! where edgelb runs with its XDP program attached in native mode, a real backend, and curl.
use edgelb::syn_protect::KernelCookies;
use std::time::Duration;

use edgelb_tests::backend::Backend;
use edgelb_tests::certs::{TempDir, self_signed};
use edgelb_tests::client::{curl, curl_ok};
use edgelb_tests::daemon::{Daemon, Signal, xdp_counter};
use edgelb_tests::netns::in_netns;
use edgelb_tests::netns::{
    CLIENT_A_V4, CLIENT_A_V6, CLIENT_B_V4, CLIENT_B_V6, ClientLb, LB_V4, LB_V6,
};
use edgelb_tests::packet::parse;
use edgelb_tests::privilege::root_or_skip;

const CURL_TIMEOUT: i32 = 28;
const REFUSED_IN_USERSPACE: &str = "connection refused: access control";

struct Setup {
    topo: ClientLb,
    dir: TempDir,
    ca: std::path::PathBuf,
    backend: Backend,
    args: Vec<String>,
}

/// The topology, a certificate for the LB's addresses, a backend inside the LB namespace, and
/// the daemon's common flags.
fn setup() -> Setup {
    let topo = ClientLb::new();
    let dir = TempDir::new();
    let cert = self_signed(&dir, "lb", &[parse(LB_V4), parse(LB_V6)]);
    let backend = Backend::start("b1", "127.0.0.1:0", Some(&topo.lb.path()));
    let args = vec![
        "--listen".into(),
        "[::]:8443".into(),
        "--cert".into(),
        cert.cert.display().to_string(),
        "--key".into(),
        cert.key.display().to_string(),
        "--backend".into(),
        backend.addr.to_string(),
    ];
    Setup {
        ca: cert.cert,
        topo,
        dir,
        backend,
        args,
    }
}

fn url_v4() -> String {
    format!("https://{LB_V4}:8443/")
}

fn url_v6() -> String {
    format!("https://[{LB_V6}]:8443/")
}

/// curl from `src` to `url` (retried a few times) is answered by the backend.
fn assert_served(s: &Setup, src: &str, url: &str) {
    let r = curl_ok(&s.topo.client, src, url, &s.ca);
    assert_eq!(
        (r.code, r.body.as_str()),
        (0, "backend b1\n"),
        "{src} -> {url}: {}",
        r.stderr
    );
}

fn start(s: &Setup, extra: &[&str]) -> Daemon {
    let mut args: Vec<&str> = s.args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Daemon::start(Some(&s.topo.lb), &args, s.dir.path())
}

#[test]
fn whitelisted_client_is_served_unlisted_client_is_dropped_at_xdp() {
    if !root_or_skip("whitelisted_client_is_served_unlisted_client_is_dropped_at_xdp") {
        return;
    }
    let s = setup();
    let group = format!("{CLIENT_A_V4}/32,{CLIENT_A_V6}/128");
    let d = start(
        &s,
        &[
            "--access-control",
            "whitelist",
            "--ip-group",
            &group,
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "native",
        ],
    );
    assert!(s.topo.lb_has_xdp(), "XDP not attached to {}", s.topo.lb_if);

    for (src, url) in [(CLIENT_A_V4, url_v4()), (CLIENT_A_V6, url_v6())] {
        assert_served(&s, src, &url);
    }
    for (src, url) in [(CLIENT_B_V4, url_v4()), (CLIENT_B_V6, url_v6())] {
        let r = curl(&s.topo.client, src, &url, &s.ca);
        assert_eq!(
            r.code, CURL_TIMEOUT,
            "unlisted {src} should time out (SYN dropped), got: {}",
            r.stderr
        );
    }

    let (status, log) = d.stop();
    assert!(status.success(), "exit status {status}:\n{log}");
    // Two refused clients, each with at least its first SYN and one retransmission dropped.
    let dropped = xdp_counter(&log, "listener-1", "dropped_acl");
    assert!(dropped >= 4, "dropped_acl={dropped}:\n{log}");
    assert!(xdp_counter(&log, "listener-1", "passed") > 0, "{log}");
    assert!(
        !log.contains(REFUSED_IN_USERSPACE),
        "a refused client reached userspace:\n{log}"
    );
    assert_eq!(s.backend.served(), 2);
    assert!(!s.topo.lb_has_xdp(), "XDP still attached after exit");
}

#[test]
fn blacklisted_client_is_dropped_at_xdp_others_are_served() {
    if !root_or_skip("blacklisted_client_is_dropped_at_xdp_others_are_served") {
        return;
    }
    let s = setup();
    let file = s.dir.write(
        "blacklist.txt",
        // The IPv4 client written IPv4-mapped, as dual-stack tools print it: it is the same
        // client, and must be refused as one.
        format!("# refused clients\n::ffff:{CLIENT_B_V4}/128\n\n{CLIENT_B_V6}/128  # v6 too\n"),
    );
    let file = file.display().to_string();
    let d = start(
        &s,
        &[
            "--access-control",
            "blacklist",
            "--ip-group-file",
            &file,
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "native",
        ],
    );

    assert_served(&s, CLIENT_A_V4, &url_v4());
    for (src, url) in [(CLIENT_B_V4, url_v4()), (CLIENT_B_V6, url_v6())] {
        let r = curl(&s.topo.client, src, &url, &s.ca);
        assert_eq!(r.code, CURL_TIMEOUT, "blacklisted {src}: {}", r.stderr);
    }
    // SIGINT (Ctrl-C in a terminal) stops it as SIGTERM does.
    let (status, log) = d.stop_with(Signal::SIGINT);
    assert!(status.success(), "{log}");
    assert!(log.contains("SIGINT: stopping"), "{log}");
    assert!(xdp_counter(&log, "listener-1", "dropped_acl") >= 4, "{log}");
    assert!(!log.contains(REFUSED_IN_USERSPACE), "{log}");
    assert!(!s.topo.lb_has_xdp());
}

/// The interface is removed and created again under its name (as a network configuration
/// that rebuilds a VLAN or bond does): the kernel drops the program with the old device, and
/// the daemon attaches it to the new one within a few seconds, in the same mode, so the
/// blacklisted client is dropped at XDP again rather than reaching userspace.
#[test]
fn an_interface_created_again_gets_the_program_again() {
    if !root_or_skip("an_interface_created_again_gets_the_program_again") {
        return;
    }
    let s = setup();
    let d = start(
        &s,
        &[
            "--access-control",
            "blacklist",
            "--ip-group",
            CLIENT_B_V4,
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "native",
        ],
    );
    s.topo.recreate_link();
    let log = d.log_when(Duration::from_secs(5), |log| {
        log.contains("XDP interface created again: program attached again")
    });
    assert!(
        s.topo.lb_has_xdp(),
        "XDP not attached again to {}:\n{log}",
        s.topo.lb_if
    );
    assert!(log.contains("mode=\"native\""), "{log}");
    assert_served(&s, CLIENT_A_V4, &url_v4());
    let r = curl(&s.topo.client, CLIENT_B_V4, &url_v4(), &s.ca);
    assert_eq!(r.code, CURL_TIMEOUT, "blacklisted client: {}", r.stderr);
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(REFUSED_IN_USERSPACE), "{log}");
    assert!(xdp_counter(&log, "listener-1", "dropped_acl") >= 2, "{log}");
    assert!(!s.topo.lb_has_xdp(), "XDP still attached after exit");
}

#[test]
fn with_xdp_off_the_daemon_refuses_unlisted_clients_on_accept() {
    if !root_or_skip("with_xdp_off_the_daemon_refuses_unlisted_clients_on_accept") {
        return;
    }
    let s = setup();
    let d = start(
        &s,
        &[
            "--access-control",
            "whitelist",
            "--ip-group",
            CLIENT_A_V4,
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "off",
        ],
    );
    assert!(!s.topo.lb_has_xdp(), "--xdp-mode off attached a program");

    assert_served(&s, CLIENT_A_V4, &url_v4());
    // The TCP handshake completes (no XDP), then the daemon closes the connection at once:
    // a TLS/connection error, not a timeout.
    let r = curl(&s.topo.client, CLIENT_B_V4, &url_v4(), &s.ca);
    assert!(
        r.code != 0 && r.code != CURL_TIMEOUT,
        "unlisted client got code {}: {}",
        r.code,
        r.stderr
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains(REFUSED_IN_USERSPACE), "{log}");
    assert!(!log.contains("xdp counters"), "no XDP, no counters:\n{log}");
    assert_eq!(s.backend.served(), 1);
}

#[test]
fn native_mode_on_a_driver_without_it_exits_2_and_leaves_nothing_attached() {
    if !root_or_skip("native_mode_on_a_driver_without_it_exits_2_and_leaves_nothing_attached") {
        return;
    }
    let s = setup();
    // The veth accepts native XDP and is attached first; loopback has no native XDP, so the
    // second attach fails and the first must be undone.
    let mut args: Vec<String> = vec!["netns".into(), "exec".into(), s.topo.lb.name.clone()];
    args.push(edgelb_tests::daemon::binary().display().to_string());
    args.extend(s.args.iter().cloned());
    for a in [
        "--xdp-iface",
        &s.topo.lb_if,
        "--xdp-iface",
        "lo",
        "--xdp-mode",
        "native",
    ] {
        args.push(a.to_string());
    }
    let out = std::process::Command::new("ip")
        .args(&args)
        .output()
        .expect("run edgelb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--xdp-iface \"lo\""), "{stderr}");
    assert!(stderr.contains("native"), "{stderr}");
    assert!(
        !s.topo.lb_has_xdp(),
        "veth left attached after a failed start"
    );
    assert!(!s.topo.lb.ip(&["link", "show", "dev", "lo"]).contains("xdp"));
}

#[test]
fn auto_mode_falls_back_to_generic_xdp_with_a_warning() {
    if !root_or_skip("auto_mode_falls_back_to_generic_xdp_with_a_warning") {
        return;
    }
    let s = setup();
    let d = start(
        &s,
        &[
            "--access-control",
            "blacklist",
            "--ip-group",
            CLIENT_B_V4,
            "--xdp-iface",
            "lo",
        ],
    );
    assert!(d.log().contains("falling back to skb"), "{}", d.log());
    assert!(
        s.topo
            .lb
            .ip(&["link", "show", "dev", "lo"])
            .contains("xdpgeneric")
    );
    let (status, _) = d.stop();
    assert!(status.success());
    assert!(!s.topo.lb.ip(&["link", "show", "dev", "lo"]).contains("xdp"));
}

/// Rewrites the whitelist file `group` (listing client A) to list client B, reloads, and checks
/// that B is now served and A dropped at XDP.
fn whitelist_b_instead_of_a(s: &Setup, d: &Daemon, group: &std::path::Path) {
    std::fs::write(group, format!("{CLIENT_B_V4}/32\n")).expect("rewrite the group");
    d.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !d.log().contains("reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        curl_ok(&s.topo.client, CLIENT_B_V4, &url_v4(), &s.ca).code,
        0,
        "newly listed client not served"
    );
    assert_eq!(
        curl(&s.topo.client, CLIENT_A_V4, &url_v4(), &s.ca).code,
        CURL_TIMEOUT,
        "delisted client still served"
    );
}

#[test]
fn a_reloaded_ip_group_file_moves_the_xdp_drops_without_reattaching() {
    if !root_or_skip("a_reloaded_ip_group_file_moves_the_xdp_drops_without_reattaching") {
        return;
    }
    let s = setup();
    let group = s.dir.write("group.txt", format!("{CLIENT_A_V4}/32\n"));
    let group_arg = group.display().to_string();
    let d = start(
        &s,
        &[
            "--access-control",
            "whitelist",
            "--ip-group-file",
            &group_arg,
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "native",
        ],
    );
    assert_eq!(
        curl_ok(&s.topo.client, CLIENT_A_V4, &url_v4(), &s.ca).code,
        0
    );
    assert_eq!(
        curl(&s.topo.client, CLIENT_B_V4, &url_v4(), &s.ca).code,
        CURL_TIMEOUT
    );

    whitelist_b_instead_of_a(&s, &d, &group);
    assert!(s.topo.lb_has_xdp());

    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert_eq!(
        log.matches("XDP program attached").count(),
        1,
        "the program was re-attached:\n{log}"
    );
    assert!(
        !log.contains(REFUSED_IN_USERSPACE),
        "a refused SYN got past XDP:\n{log}"
    );
    assert!(xdp_counter(&log, "listener-1", "dropped_acl") >= 4, "{log}");
}

/// A config file with two listeners sharing one named IP group: a whitelist on one port, a
/// blacklist on the other. The XDP program keeps the two apart: each client is dropped at the
/// NIC on exactly one of the ports, and the counters say which listener dropped it.
#[test]
fn a_shared_ip_group_whitelists_one_listener_and_blacklists_another() {
    if !root_or_skip("a_shared_ip_group_whitelists_one_listener_and_blacklists_another") {
        return;
    }
    let s = setup();
    let cert = s.args[3].clone();
    let key = s.args[5].clone();
    let listener = |name: &str, port: u16, mode: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"[::]:{port}\"\ncert = \"{cert}\"\nkey = \"{key}\"\ngroup = \"pool\"\naccess_control = \"{mode}\"\nip_groups = [\"team-a\"]\n\n"
        )
    };
    let text = format!(
        "xdp_iface = [\"{iface}\"]\nxdp_mode = \"native\"\n\n[ip_groups.team-a]\ncidrs = [\"{CLIENT_A_V4}\", \"{CLIENT_A_V6}\"]\n\n[[group]]\nname = \"pool\"\nbackend = [\"{be}\"]\nhealth_check = \"off\"\n\n{members}{public}",
        iface = s.topo.lb_if,
        be = s.backend.addr,
        members = listener("members", 8443, "whitelist"),
        public = listener("public", 9443, "blacklist"),
    );
    let file = s.dir.write("edgelb.toml", text);
    let path = file.to_string_lossy().into_owned();
    let d = Daemon::start(Some(&s.topo.lb), &["--config", &path], s.dir.path());
    assert!(s.topo.lb_has_xdp(), "XDP not attached to {}", s.topo.lb_if);

    let url = |port: u16| format!("https://{LB_V4}:{port}/");
    for (src, port, served) in [
        (CLIENT_A_V4, 8443, true),
        (CLIENT_A_V4, 9443, false),
        (CLIENT_B_V4, 8443, false),
        (CLIENT_B_V4, 9443, true),
    ] {
        let r = curl(&s.topo.client, src, &url(port), &s.ca);
        if served {
            assert_eq!(
                (r.code, r.body.as_str()),
                (0, "backend b1\n"),
                "{src} -> {port}: {}",
                r.stderr
            );
        } else {
            assert_eq!(
                r.code, CURL_TIMEOUT,
                "{src} -> {port} should be dropped: {}",
                r.stderr
            );
        }
    }
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    for l in ["members", "public"] {
        assert!(xdp_counter(&log, l, "dropped_acl") >= 1, "{l}:\n{log}");
        assert!(xdp_counter(&log, l, "passed") >= 1, "{l}:\n{log}");
    }
    assert!(
        !log.contains(REFUSED_IN_USERSPACE),
        "a dropped client reached userspace:\n{log}"
    );
}

/// `--user nobody`: after attaching XDP the daemon runs as nobody; its main thread keeps only
/// CAP_NET_BIND_SERVICE (this kernel needs no capability to write maps through open
/// descriptors or to close an XDP link), its workers nothing; a reload still rewrites the XDP
/// maps, and the stop still detaches the program.
#[test]
fn as_an_unprivileged_user_it_still_reloads_maps_and_detaches() {
    if !root_or_skip("as_an_unprivileged_user_it_still_reloads_maps_and_detaches") {
        return;
    }
    const NOBODY: u32 = 65534;
    let s = setup();
    for file in [&s.args[3], &s.args[5]] {
        std::os::unix::fs::chown(file, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
    }
    let group = s.dir.write("group.txt", format!("{CLIENT_A_V4}/32\n"));
    let group_arg = group.display().to_string();
    let d = start(
        &s,
        &[
            "--user",
            "nobody",
            "--admin",
            "127.0.0.1:9912",
            "--access-control",
            "whitelist",
            "--ip-group-file",
            &group_arg,
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "native",
        ],
    );
    let status = |task: &str| {
        std::fs::read_to_string(format!("/proc/{}/{task}status", d.pid())).unwrap_or_default()
    };
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let main = status("");
    assert!(
        field(&main, "Uid:").starts_with(&format!("{NOBODY}\t")),
        "{main}"
    );
    // CAP_NET_BIND_SERVICE (10).
    let kept = 1u64 << 10;
    assert_eq!(field(&main, "CapEff:"), format!("{kept:016x}"), "{main}");
    assert_eq!(field(&main, "NoNewPrivs:"), "1", "{main}");
    // The workers, and the thread serving the admin endpoint and running health checks,
    // keep no capability: they read what other hosts send.
    let (mut workers, mut control) = (0, None);
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid())).expect("tasks") {
        let tid = task
            .expect("task")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let text = status(&format!("task/{tid}/"));
        let name = field(&text, "Name:");
        if name.starts_with("edgelb-worker") {
            workers += 1;
        } else if name == "edgelb-control" {
            assert!(control.replace(tid).is_none(), "two control threads");
        } else {
            continue;
        }
        assert_eq!(field(&text, "CapEff:"), "0000000000000000", "{text}");
        assert_eq!(field(&text, "CapPrm:"), "0000000000000000", "{text}");
        assert_eq!(field(&text, "NoNewPrivs:"), "1", "{text}");
    }
    assert!(workers > 0, "no worker threads found");
    let control = control.expect("a control thread");
    // The admin endpoint is served there: its requests cost that thread CPU time, not the
    // main thread's.
    let cpu_ticks = |tid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", d.pid()))
            .unwrap_or_default();
        // After the name in parentheses: utime and stime are fields 14 and 15 of the line.
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default()
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
    };
    let main_tid = d.pid().to_string();
    let before = (cpu_ticks(&main_tid), cpu_ticks(&control));
    let answers = in_netns(&s.topo.lb.path(), || {
        (0..3000)
            .filter(|_| {
                edgelb_tests::admin::get("127.0.0.1:9912", "/healthz").starts_with("HTTP/1.0 200")
            })
            .count()
    });
    assert_eq!(answers, 3000);
    let main_ticks = cpu_ticks(&main_tid) - before.0;
    let control_ticks = cpu_ticks(&control) - before.1;
    eprintln!("3000 admin requests: control thread {control_ticks} ticks, main {main_ticks}");
    assert!(
        control_ticks > main_ticks,
        "control thread {control_ticks} ticks, main thread {main_ticks}"
    );
    assert_eq!(
        curl_ok(&s.topo.client, CLIENT_A_V4, &url_v4(), &s.ca).code,
        0
    );

    whitelist_b_instead_of_a(&s, &d, &group);
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(
        !s.topo.lb_has_xdp(),
        "XDP still attached after the stop:\n{log}"
    );
}

/// Without the privileges XDP needs, a start that requires XDP fails at once with exit code 2,
/// the OS error, and what to do about it (found from the errno, not from the message's words).
#[test]
fn without_privileges_a_required_xdp_fails_with_a_hint() {
    if !root_or_skip("without_privileges_a_required_xdp_fails_with_a_hint") {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody");
    let mut cmd = std::process::Command::new(edgelb_tests::daemon::binary());
    // It fails before binding: the port is never used.
    cmd.args([
        "--listen",
        "127.0.0.1:18999",
        "--protocol",
        "http",
        "--backend",
        "127.0.0.1:9",
        "--xdp-iface",
        "lo",
        "--xdp-mode",
        "skb",
    ])
    .uid(nobody.uid.as_raw())
    .gid(nobody.gid.as_raw())
    .stdin(std::process::Stdio::null());
    let out = cmd.output().expect("run edgelb as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("edgelb: error: --xdp-mode skb: loading the XDP program:")
            && stderr
                .contains("(os error 1) (loading XDP needs root, or CAP_BPF and CAP_NET_ADMIN)"),
        "{stderr}"
    );
}

/// Opens `n` TCP connections from `src` to `dst` at once (non-blocking connects) and counts
/// those established within `wait`: shorter than the kernel's first SYN retransmission (1 s),
/// so a connection whose SYN was dropped is not.
fn burst_of_connects(ns: &str, src: &str, dst: &str, n: usize, wait: std::time::Duration) -> usize {
    use socket2::{Domain, Socket, Type};
    let (src, dst): (std::net::SocketAddr, std::net::SocketAddr) = (
        std::net::SocketAddr::new(parse(src), 0),
        dst.parse().expect("test address"),
    );
    in_netns(ns, move || {
        let sockets: Vec<Socket> = (0..n)
            .map(|_| {
                let s = Socket::new(Domain::for_address(dst), Type::STREAM, None).expect("socket");
                s.bind(&src.into()).expect("bind the client address");
                s.set_nonblocking(true).expect("non-blocking");
                // In progress: the SYN is on its way.
                let _ = s.connect(&dst.into());
                s
            })
            .collect();
        std::thread::sleep(wait);
        sockets.iter().filter(|s| s.peer_addr().is_ok()).count()
    })
}

#[test]
fn a_source_past_its_connection_rate_has_its_syns_dropped_at_xdp() {
    if !root_or_skip("a_source_past_its_connection_rate_has_its_syns_dropped_at_xdp") {
        return;
    }
    let s = setup();
    let d = start(
        &s,
        &[
            "--rate-limit-syn",
            "3",
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "native",
        ],
    );
    assert!(s.topo.lb_has_xdp(), "XDP not attached to {}", s.topo.lb_if);
    let ns = s.topo.client.path();
    let wait = std::time::Duration::from_millis(500);
    let lb = format!("{LB_V4}:8443");
    let lb6 = format!("[{LB_V6}]:8443");
    assert_eq!(
        burst_of_connects(&ns, CLIENT_A_V4, &lb, 10, wait),
        3,
        "client A, IPv4"
    );
    // Another source has a budget of its own, on either family.
    assert_eq!(
        burst_of_connects(&ns, CLIENT_B_V4, &lb, 3, wait),
        3,
        "client B, IPv4"
    );
    assert_eq!(
        burst_of_connects(&ns, CLIENT_A_V6, &lb6, 5, wait),
        3,
        "client A, IPv6"
    );
    // Client B's IPv6 address is in A's /64: the same source, whose budget has refilled by
    // one connection (or two, were the machine to stall) in the half second since.
    let b = burst_of_connects(&ns, CLIENT_B_V6, &lb6, 3, wait);
    assert!(
        b < 3,
        "client B, IPv6, in client A's /64: {b} of 3 established"
    );
    // A second later the busy source is served again, through TLS to the backend.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_served(&s, CLIENT_A_V4, &url_v4());

    let (status, log) = d.stop();
    assert!(status.success(), "exit status {status}:\n{log}");
    // 7 + 2 + 1 first SYNs over the limit (retransmissions may add to them).
    let limited = xdp_counter(&log, "listener-1", "rate_limited");
    assert!(limited >= 10, "rate_limited={limited}:\n{log}");
}

#[test]
fn a_source_over_its_rate_for_a_second_is_blocked_listed_and_unblocked_on_request() {
    if !root_or_skip(
        "a_source_over_its_rate_for_a_second_is_blocked_listed_and_unblocked_on_request",
    ) {
        return;
    }
    let s = setup();
    let admin = "127.0.0.1:9911";
    let d = start(
        &s,
        &[
            "--rate-limit-syn",
            "2",
            "--auto-block",
            "30",
            "--admin",
            admin,
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "native",
        ],
    );
    let lb_ns = s.topo.lb.path();
    let ask = |method: &'static str, path: String| {
        in_netns(&lb_ns, move || {
            edgelb_tests::admin::request(admin, method, &path)
        })
    };
    let ns = s.topo.client.path();
    let lb = format!("{LB_V4}:8443");
    let wait = std::time::Duration::from_millis(100);
    // ~30 connections a second against a limit of 2, for 1.5 s.
    let established: usize = (0..15)
        .map(|_| burst_of_connects(&ns, CLIENT_A_V4, &lb, 3, wait))
        .sum();
    assert!(established <= 6, "{established} connections got through");
    // The refresh that lists blocks runs once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut status = ask("GET", "/status".into());
    while !status.contains(&format!("\"{CLIENT_A_V4}/32\"")) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
        status = ask("GET", "/status".into());
    }
    assert!(
        status.contains(&format!("\"{CLIENT_A_V4}/32\"")),
        "{status}"
    );
    let metrics = ask("GET", "/metrics".into());
    assert!(
        metrics.contains("edgelb_xdp_blocked_sources{listener=\"listener-1\"} 1"),
        "{metrics}"
    );
    // Past the rate limit's second, the block still holds; other sources are served.
    let wait = std::time::Duration::from_millis(500);
    assert_eq!(
        burst_of_connects(&ns, CLIENT_A_V4, &lb, 2, wait),
        0,
        "blocked A"
    );
    assert_eq!(burst_of_connects(&ns, CLIENT_B_V4, &lb, 2, wait), 2, "B");

    let bad = ask("POST", "/unblock?ip=10.10.0".into());
    assert!(bad.starts_with("HTTP/1.0 400"), "{bad}");
    let lifted = ask("POST", format!("/unblock?ip={CLIENT_A_V4}"));
    assert!(
        lifted.starts_with("HTTP/1.0 200") && lifted.ends_with("unblocked 1\n"),
        "{lifted}"
    );
    assert_eq!(
        burst_of_connects(&ns, CLIENT_A_V4, &lb, 2, wait),
        2,
        "A unblocked"
    );
    let status = ask("GET", "/status".into());
    assert!(
        !status.contains(&format!("\"{CLIENT_A_V4}/32\"")),
        "{status}"
    );

    let (status, log) = d.stop();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(xdp_counter(&log, "listener-1", "blocked") >= 2, "{log}");
}

/// `net.ipv4.tcp_syncookies` and `net.ipv4.tcp_timestamps` inside the namespace at `ns`.
fn cookie_settings(ns: &str) -> (String, String) {
    in_netns(ns, || {
        let read = |key: &str| {
            let path = format!("/proc/sys/net/ipv4/{key}");
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .trim()
                .to_string()
        };
        (read("tcp_syncookies"), read("tcp_timestamps"))
    })
}

/// The kernel's SYN cookie counters inside the namespace at `ns`.
fn kernel_cookies(ns: &str) -> KernelCookies {
    in_netns(ns, || {
        // /proc/net is the main thread's namespace; this thread entered another.
        let text = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("netstat");
        KernelCookies::parse(&text).unwrap_or_else(|| panic!("no TcpExt cookies in {text}"))
    })
}

/// A program on the client's veth, which then receives the SYN-ACKs the daemon's sends with
/// `XDP_TX` (toolchain notes): `edgelb decap` for a VIP nothing is sent to passes everything.
fn pass_on_client(topo: &ClientLb, dir: &TempDir) -> Daemon {
    Daemon::start(
        Some(&topo.client),
        &[
            "decap",
            "--iface",
            &topo.client_if,
            "--vip",
            edgelb_tests::l4topo::PASS_ONLY_VIP,
            "--from",
            "10.99.0.0/16",
        ],
        dir.path(),
    )
}

/// `ss -tni` of the established connections in `ns` whose source or destination port is
/// `port`: the kernel's view of their options (`wscale:SND,RCV`, `ts`, `sack`).
fn ss_in(ns: &edgelb_tests::netns::Netns, filter: &str) -> String {
    let out = ns
        .command("ss")
        .args(["-tniH", "state", "established", filter])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `wscale:SND,RCV` of an `ss -i` line.
fn wscale(ss: &str) -> Option<(u8, u8)> {
    let w = ss
        .split_whitespace()
        .find_map(|w| w.strip_prefix("wscale:"))?;
    let (a, b) = w.split_once(',')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A daemon killed while `--syn-protect` has the kernel's SYN cookie settings changed cannot
/// put them back; the next start in the same network namespace does, from the record the
/// first left in /run/edgelb.
#[test]
fn settings_left_changed_by_a_killed_daemon_are_restored_at_the_next_start() {
    if !root_or_skip("settings_left_changed_by_a_killed_daemon_are_restored_at_the_next_start") {
        return;
    }
    let s = setup();
    let lb_ns = s.topo.lb.path();
    let before = cookie_settings(&lb_ns);
    assert_ne!(before, ("2".to_string(), "2".to_string()));
    let xdp = [
        "--syn-protect",
        "on",
        "--xdp-iface",
        &s.topo.lb_if,
        "--xdp-mode",
        "native",
    ];
    let killed = start(&s, &xdp);
    assert_eq!(cookie_settings(&lb_ns), ("2".to_string(), "2".to_string()));
    let (status, _log) = killed.stop_with(Signal::SIGKILL);
    assert!(!status.success());
    assert_eq!(
        cookie_settings(&lb_ns),
        ("2".to_string(), "2".to_string()),
        "a killed daemon cannot put the settings back"
    );

    // The next start, even without --syn-protect, puts them back.
    let next = start(&s, &[]);
    assert_eq!(cookie_settings(&lb_ns), before, "{}", next.log());
    let (status, log) = next.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("left changed by an edgelb that did not end cleanly"),
        "{log}"
    );
}

#[test]
fn https_clients_connect_through_syn_cookies_answered_in_xdp_with_window_scaling() {
    if !root_or_skip(
        "https_clients_connect_through_syn_cookies_answered_in_xdp_with_window_scaling",
    ) {
        return;
    }
    const SIZE: usize = 64 << 20;
    let topo = ClientLb::new();
    let dir = TempDir::new();
    let cert = self_signed(&dir, "lb", &[parse(LB_V4), parse(LB_V6)]);
    let lb_ns = topo.lb.path();
    let big = in_netns(&lb_ns, || edgelb_tests::backend::big_backend(SIZE));
    let before = cookie_settings(&lb_ns);
    let pass = pass_on_client(&topo, &dir);
    let backend = big.addr.to_string();
    let d = Daemon::start(
        Some(&topo.lb),
        &[
            "--listen",
            "[::]:8443",
            "--cert",
            &cert.cert.display().to_string(),
            "--key",
            &cert.key.display().to_string(),
            "--backend",
            &backend,
            "--syn-protect",
            "on",
            "--xdp-iface",
            &topo.lb_if,
            "--xdp-mode",
            "native",
        ],
        dir.path(),
    );
    assert!(topo.lb_has_xdp(), "XDP not attached to {}", topo.lb_if);
    // While protection is on, the kernel answers the SYNs it still gets with cookies, and
    // keeps timestamps without a per-connection offset (the options ride in them).
    assert_eq!(cookie_settings(&lb_ns), ("2".to_string(), "2".to_string()));
    let cookies_before = kernel_cookies(&lb_ns);

    // Each family's first SYN goes to the kernel (the listener's own cookie); the rest are
    // answered by the program.
    let v4 = format!("https://{LB_V4}:8443/");
    let v6 = format!("https://[{LB_V6}]:8443/");
    let mut answered = 0;
    for (src, url, n) in [(CLIENT_A_V4, &v4, 4), (CLIENT_A_V6, &v6, 3)] {
        for i in 0..n {
            let out = topo
                .client
                .command("curl")
                .args(["-sS", "--connect-timeout", "2", "--max-time", "20"])
                .args(["--interface", src, "--cacert"])
                .arg(&cert.cert)
                .args(["-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
                .arg(url)
                .output()
                .expect("curl");
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                said,
                format!("200 {SIZE}"),
                "curl {url} from {src} (#{i}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if i > 0 {
                answered += 1;
            }
        }
    }

    // openssl's own handshake, too.
    let out = topo
        .client
        .command("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {LB_V4}:8443 -CAfile {} -servername lb </dev/null 2>&1",
            cert.cert.display()
        ))
        .output()
        .expect("openssl");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Verify return code: 0 (ok)"),
        "openssl s_client:\n{said}"
    );
    answered += 1;

    // One connection held open: the kernel's view of it on both ends. The server scales its
    // window by what the SYN-ACK offered and the client by what it sent (the server learnt
    // it back from the cookie's timestamp), and both use timestamps: 12 bytes of each
    // segment go to them, so the MSS is 1460 - 12 (this `ss` does not print `ts` itself).
    let lb = format!("{LB_V4}:8443");
    let (stream, local) = in_netns(&topo.client.path(), move || {
        let s = std::net::TcpStream::connect(&lb).expect("connect through a cookie");
        let local = s.local_addr().expect("local address");
        (s, local)
    });
    answered += 1;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let client_side = ss_in(&topo.client, &format!("sport = :{}", local.port()));
    let server_side = ss_in(&topo.lb, &format!("dport = :{}", local.port()));
    let (c, s) = (wscale(&client_side), wscale(&server_side));
    assert!(
        matches!((c, s), (Some((cs, cr)), Some((ss, sr))) if cs == sr && cr == ss && cs > 0 && cr > 0),
        "window scale: client {client_side:?}, server {server_side:?}"
    );
    for side in [&client_side, &server_side] {
        assert!(
            side.split_whitespace().any(|w| w == "mss:1448"),
            "timestamps in use: {side:?}"
        );
    }
    drop(stream);

    let cookies = kernel_cookies(&lb_ns);
    let received = cookies.received - cookies_before.received;
    let sent = cookies.sent - cookies_before.sent;
    let (status, log) = d.stop();
    assert!(status.success(), "exit status {status}:\n{log}");
    let syn_cookies = xdp_counter(&log, "listener-1", "syn_cookie");
    assert!(
        syn_cookies >= answered,
        "SYN-ACKs sent by the program: {syn_cookies}, connections it should have answered: {answered}"
    );
    // The kernel made every client connection from a cookie: the program's, and its own for
    // the first SYN of each family. (With tcp_syncookies=2 it also answers the daemon's own
    // connections to the backend with cookies: those count on both sides.)
    assert!(
        received >= answered + 2 && received >= sent + answered,
        "kernel: {received} connections from cookies, {sent} cookies of its own; {answered} answered in XDP"
    );
    assert_eq!(cookie_settings(&lb_ns), before, "settings restored at exit");
    drop(pass);
}

/// The first listener of a `/status` answer: whether it answers SYNs with cookies now, and
/// how many the program answered.
fn syn_status(answer: &str) -> (bool, u64) {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("/status: {e}: {answer}"));
    let l = &v["listeners"][0];
    let answering = l["syn_cookies_answering"]
        .as_bool()
        .unwrap_or_else(|| panic!("no syn_cookies_answering: {answer}"));
    let sent = l["xdp_counters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c[0] == "syn_cookie")
        .and_then(|c| c[1].as_u64())
        .unwrap_or(0);
    (answering, sent)
}

#[test]
fn under_auto_a_syn_burst_over_the_threshold_turns_cookies_on_until_it_calms_down() {
    if !root_or_skip(
        "under_auto_a_syn_burst_over_the_threshold_turns_cookies_on_until_it_calms_down",
    ) {
        return;
    }
    let s = setup();
    let admin = "127.0.0.1:9912";
    let pass = pass_on_client(&s.topo, &s.dir);
    let d = start(
        &s,
        &[
            "--syn-protect",
            "auto",
            "--syn-protect-threshold",
            "100",
            "--admin",
            admin,
            "--xdp-iface",
            &s.topo.lb_if,
            "--xdp-mode",
            "native",
        ],
    );
    let lb_ns = s.topo.lb.path();
    let ask = |path: &'static str| {
        in_netns(&lb_ns, move || {
            edgelb_tests::admin::request(admin, "GET", path)
        })
    };
    let settings = || cookie_settings(&lb_ns);
    let before = settings();
    // A fresh namespace has the kernel's defaults: the restore below is seen.
    assert_ne!(before, ("2".to_string(), "2".to_string()));
    let answering = |yes: bool, within: std::time::Duration| {
        let deadline = std::time::Instant::now() + within;
        loop {
            let status = ask("/status");
            if syn_status(&status).0 == yes {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "answering not {yes} after {within:?}: {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    // Quiet: the kernel answers, nothing is changed.
    answering(false, std::time::Duration::ZERO);
    assert_served(&s, CLIENT_A_V4, &url_v4());
    assert_eq!(settings(), before);

    // 300 SYNs within a second, against a threshold of 100 a second.
    let ns = s.topo.client.path();
    let lb = format!("{LB_V4}:8443");
    let got = burst_of_connects(
        &ns,
        CLIENT_A_V4,
        &lb,
        300,
        std::time::Duration::from_millis(300),
    );
    assert!(got > 250, "the kernel answered {got} of 300");
    let status = answering(true, std::time::Duration::from_secs(3));
    assert_eq!(syn_status(&status).1, 0, "{status}");
    assert_eq!(settings(), ("2".to_string(), "2".to_string()));
    let metrics = ask("/metrics");
    assert!(
        metrics.contains("edgelb_syn_cookies_answering{listener=\"listener-1\"} 1"),
        "{metrics}"
    );
    // While answering, clients get their SYN-ACK from the program (the first SYN still
    // goes to the kernel).
    for _ in 0..3 {
        assert_served(&s, CLIENT_B_V4, &url_v4());
    }
    // The counters on /status are refreshed once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut answered = syn_status(&ask("/status")).1;
    while answered < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        answered = syn_status(&ask("/status")).1;
    }
    assert!(answered >= 2, "SYN-ACKs from the program: {answered}");

    // Quiet again: after 10 seconds below half the threshold the kernel answers again; the
    // settings stay 10 seconds more, for the ACKs of the last cookies, then are put back.
    answering(false, std::time::Duration::from_secs(15));
    assert_eq!(settings(), ("2".to_string(), "2".to_string()));
    assert!(
        ask("/metrics").contains("edgelb_syn_cookies_answering{listener=\"listener-1\"} 0"),
        "the gauge back to 0"
    );
    assert_served(&s, CLIENT_A_V4, &url_v4());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(13);
    while settings() != before {
        assert!(
            std::time::Instant::now() < deadline,
            "settings {:?} not restored to {before:?}",
            settings()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // Seconds after the program stopped answering: the page's count is final.
    let answered = syn_status(&ask("/status")).1;

    let (status, log) = d.stop();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(
        log.contains("SYN flood: answering new connections with SYN cookies in XDP")
            && log.contains("SYN rate back to normal"),
        "{log}"
    );
    assert_eq!(xdp_counter(&log, "listener-1", "syn_cookie"), answered);
    drop(pass);
}
