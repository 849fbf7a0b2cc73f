//! Configuration from etcd for a fleet: three edgelb nodes (XDP attached, an L4 listener with
//! a blocklist) read one configuration from a real etcd and watch it. One IP group key
//! changes: every node's XDP program drops the new source within a second. A bad value is
//! refused by every node and changes nothing; with etcd gone the nodes keep serving and say so.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgelb_tests::backend::Backend;
use edgelb_tests::certs::TempDir;
use edgelb_tests::daemon::{self, Daemon};
use edgelb_tests::l4topo::{
    BACKENDS, L4Topo, PORT, backend_addr, client_v4, source_hash_group, vip_addr,
};
use edgelb_tests::listener::free_addr;
use edgelb_tests::privilege::root_or_skip;
use edgelb_tests::raw::exchange_tcp;

const NODES: usize = 3;
const PREFIX: &str = "/edgelb/test";
/// The client source the blocklist takes in.
const BLOCKED: u8 = 7;
const ALLOWED: u8 = 8;

struct Etcd {
    child: Child,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd in the router's namespace, answering every node on its link's router address.
fn start_etcd(topo: &L4Topo) -> Etcd {
    spawn_etcd(
        topo.router.command("etcd"),
        &topo.logs.path().join("etcd-data"),
        "http://0.0.0.0:2379",
        "http://127.0.0.1:2380",
        || etcdctl(topo, &["endpoint", "health"]).is_ok(),
    )
}

/// etcd run by `cmd` (serving clients on `clients`, its one peer on `peer`), once `healthy`.
fn spawn_etcd(
    mut cmd: Command,
    data: &Path,
    clients: &str,
    peer: &str,
    healthy: impl Fn() -> bool,
) -> Etcd {
    let child = cmd
        .args(["--name", "fleet", "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", clients])
        .args([
            "--advertise-client-urls",
            &clients.replace("0.0.0.0", "127.0.0.1"),
        ])
        .args(["--listen-peer-urls", peer])
        .args(["--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", &format!("fleet={peer}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run etcd (cargo xtask setup installs etcd-server)");
    let etcd = Etcd { child };
    let start = Instant::now();
    while !healthy() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd
}

fn etcdctl(topo: &L4Topo, args: &[&str]) -> Result<String, String> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    etcdctl_os(topo, &args)
}

/// As [`etcdctl`], with arguments that need not be UTF-8 (a value in Latin-1).
fn etcdctl_os(topo: &L4Topo, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    run_etcdctl(
        topo.router.command("etcdctl"),
        "http://127.0.0.1:2379",
        args,
    )
}

fn run_etcdctl(
    mut cmd: Command,
    endpoint: &str,
    args: &[&std::ffi::OsStr],
) -> Result<String, String> {
    let out = cmd
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint])
        .args(args)
        .output()
        .map_err(|e| format!("etcdctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn put(topo: &L4Topo, key: &str, value: &str) {
    etcdctl(topo, &["put", &format!("{PREFIX}/{key}"), value]).expect("etcdctl put");
}

/// `edgelb status` of node `k`.
fn status(topo: &L4Topo, k: usize) -> String {
    let out = topo.lbs[k]
        .command(&daemon::binary().to_string_lossy())
        .args(["status", "--admin", "127.0.0.1:9900"])
        .output()
        .expect("edgelb status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until every node's `edgelb status` holds `text` (`within` at most for each).
fn every_node_says(topo: &L4Topo, text: &str, within: Duration) {
    for k in 0..NODES {
        let start = Instant::now();
        while !status(topo, k).contains(text) {
            assert!(
                start.elapsed() < within,
                "node {} does not say {text:?}:\n{}",
                k + 1,
                status(topo, k)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The etcd revision node `k` says it runs.
fn revision(topo: &L4Topo, k: usize) -> i64 {
    let s = status(topo, k);
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("config etcd {PREFIX} revision ")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("node {}: no etcd revision in\n{s}", k + 1))
}

/// Node `k`'s count of packets its XDP program dropped by access control.
fn dropped(topo: &L4Topo, k: usize) -> u64 {
    let s = status(topo, k);
    s.split_whitespace()
        .find_map(|w| w.strip_prefix("dropped_acl="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn config() -> String {
    let backends: Vec<String> = (0..BACKENDS)
        .map(|n| format!("\"{}:{PORT}\"", backend_addr(n, false)))
        .collect();
    let group = source_hash_group("l4", &backends.join(", "));
    format!(
        r#"[ip_groups]
blocked = ["10.0.9.9"]
{group}
[[listener]]
name = "l4"
protocol = "tcp"
listen = "{vip}"
group = "l4"
access_control = "blacklist"
ip_groups = ["blocked"]
"#,
        vip = vip_addr(false),
    )
}

#[test]
fn a_blocklist_changed_in_etcd_reaches_every_node_within_a_second() {
    if !root_or_skip("a_blocklist_changed_in_etcd_reaches_every_node_within_a_second") {
        return;
    }
    let topo = L4Topo::with_lbs(NODES);
    topo.route_vip_via_lbs(&[0, 1, 2]);
    let etcd = start_etcd(&topo);
    put(&topo, "config", &config());
    put(&topo, "ip_groups/blocked", "10.0.9.9\n");
    let nodes: Vec<Daemon> = (0..NODES)
        .map(|k| {
            let endpoint = format!("http://10.2.{}.1:2379", k + 1);
            Daemon::start(
                Some(&topo.lbs[k]),
                &[
                    "--config-etcd",
                    &endpoint,
                    "--config-prefix",
                    PREFIX,
                    "--xdp-iface",
                    &topo.lb_links[k].far_if,
                    "--xdp-mode",
                    "native",
                    "--admin",
                    "127.0.0.1:9900",
                ],
                topo.logs.path(),
            )
        })
        .collect();
    let timeout = Duration::from_secs(3);
    let connects = |src: u8| {
        topo.tcp_backend(client_v4(src), vip_addr(false), timeout)
            .is_ok()
    };
    assert!(connects(BLOCKED), "before the change the source is served");
    let before: Vec<i64> = (0..NODES).map(|k| revision(&topo, k)).collect();

    // The blocklist grows by one source: every node applies it. Timed from the store's answer,
    // not from before etcdctl was started: under load a process start alone can take 0.5 s.
    put(
        &topo,
        "ip_groups/blocked",
        "10.0.9.9\n10.0.1.7 # abuse ticket 12\n",
    );
    let changed = Instant::now();
    let mut took = vec![None; NODES];
    while took.iter().any(Option::is_none) {
        for k in 0..NODES {
            if took[k].is_none() && revision(&topo, k) > before[k] {
                took[k] = Some(changed.elapsed());
            }
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "not every node took the change: {took:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("the blocklist change reached the three nodes' XDP maps after {took:?}");
    let slowest = took.iter().flatten().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(2),
        "a node took {slowest:?} (goal: within 1 s)"
    );
    // Connections from the source now go nowhere, whichever node their ports hash to, and
    // every node's program dropped some of them.
    let dropped_before: Vec<u64> = (0..NODES).map(|k| dropped(&topo, k)).collect();
    for _ in 0..24 {
        assert!(
            topo.tcp_connect(
                client_v4(BLOCKED),
                vip_addr(false),
                Duration::from_millis(300)
            )
            .is_err(),
            "the blocked source got through"
        );
    }
    assert!(connects(ALLOWED), "another source is served");
    std::thread::sleep(Duration::from_millis(1200));
    for (k, before) in dropped_before.iter().enumerate() {
        assert!(
            dropped(&topo, k) > *before,
            "node {}'s XDP program dropped nothing:\n{}",
            k + 1,
            status(&topo, k)
        );
    }

    // Keys that are not this fleet's configuration: another prefix that starts the same,
    // and a key of no meaning to edgelb under this one. No node reloads for them. (A wait
    // for nothing to happen; a change reaches every node well within it, as above.)
    let applied: Vec<i64> = (0..NODES).map(|k| revision(&topo, k)).collect();
    etcdctl(
        &topo,
        &["put", &format!("{PREFIX}-canary/config"), "not = [toml"],
    )
    .expect("etcdctl put");
    put(&topo, "notes", "rotated the certificates on Tuesday");
    std::thread::sleep(Duration::from_millis(2500));
    for (k, applied) in applied.iter().enumerate() {
        let s = status(&topo, k);
        assert!(
            revision(&topo, k) == *applied && !s.contains("refused"),
            "node {} took another key for its configuration:\n{s}",
            k + 1
        );
    }

    // A value that is not UTF-8 (a Latin-1 "é" in an address) is refused, not skipped: a
    // skipped group would silently give way to the TOML's group of that name.
    let latin1: &[u8] = b"10.0.9.9\n10.0.1.7\n10.0.1.\xe9\n";
    let key = format!("{PREFIX}/ip_groups/blocked");
    etcdctl_os(
        &topo,
        &[
            std::ffi::OsStr::new("put"),
            std::ffi::OsStr::new(&key),
            std::os::unix::ffi::OsStrExt::from_bytes(latin1),
        ],
    )
    .expect("etcdctl put");
    every_node_says(
        &topo,
        "refused: etcd /edgelb/test/ip_groups/blocked: line 3",
        Duration::from_secs(5),
    );

    // A bad value: refused by every node, which keeps what it has.
    put(&topo, "ip_groups/blocked", "10.0.0.0/33\n");
    for (k, applied) in applied.iter().enumerate() {
        let start = Instant::now();
        loop {
            let s = status(&topo, k);
            if s.contains("refused: etcd /edgelb/test/ip_groups/blocked: line 1 = \"10.0.0.0/33\"")
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "node {} does not report the refusal:\n{s}",
                k + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(revision(&topo, k), *applied, "node {} moved on", k + 1);
    }
    assert!(
        topo.tcp_connect(
            client_v4(BLOCKED),
            vip_addr(false),
            Duration::from_millis(300)
        )
        .is_err(),
        "the blocklist in use was dropped"
    );

    // etcd gone: the nodes serve on and say so.
    drop(etcd);
    every_node_says(
        &topo,
        "unreachable, the configuration in use stays",
        Duration::from_secs(10),
    );
    assert!(connects(ALLOWED), "served while etcd is gone");
    for d in nodes {
        let (status, log) = d.stop();
        assert!(status.success(), "{status}:\n{log}");
    }
}

/// A revision one node refuses for a reason of its own that passes (the new listener's port
/// still held by a process on its way out) is read again by the node, which applies it once
/// the port is free: no further change to the store is needed for it to catch up with the
/// fleet.
#[test]
fn a_revision_refused_for_a_passing_reason_is_applied_once_it_can_be() {
    let dir = TempDir::new();
    let (clients, peer, admin) = (free_addr(), free_addr(), free_addr());
    let endpoint = format!("http://{clients}");
    let ctl = |args: &[&str]| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        run_etcdctl(Command::new("etcdctl"), &endpoint, &args)
    };
    let _etcd = spawn_etcd(
        Command::new("etcd"),
        &dir.path().join("etcd-data"),
        &endpoint,
        &format!("http://{peer}"),
        || ctl(&["endpoint", "health"]).is_ok(),
    );
    let backend = Backend::start("web", "127.0.0.1:0", None);
    let (first, second) = (free_addr(), free_addr());
    let config = |listen: std::net::SocketAddr| {
        format!(
            "xdp_mode = \"off\"\n[[group]]\nname = \"web\"\nbackend = [\"{}\"]\nhealth_check = \"off\"\n\
             [[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"{listen}\"\ngroup = \"web\"\n",
            backend.addr
        )
    };
    ctl(&["put", &format!("{PREFIX}/config"), &config(first)]).expect("etcdctl put");
    let admin_arg = admin.to_string();
    let node = Daemon::start(
        None,
        &[
            "--config-etcd",
            &endpoint,
            "--config-prefix",
            PREFIX,
            "--admin",
            &admin_arg,
        ],
        dir.path(),
    );
    let get = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n";
    assert_eq!(
        exchange_tcp(first, get).finals(),
        [200],
        "served on the first port"
    );

    // The listener moves to a port another process still holds: refused, the first stays.
    let holder = std::net::TcpListener::bind(second).expect("hold the second port");
    ctl(&["put", &format!("{PREFIX}/config"), &config(second)]).expect("etcdctl put");
    let log = node.log_when(Duration::from_secs(10), |log| {
        log.contains("etcd: reload refused")
    });
    assert!(log.contains("etcd: reload refused"), "not refused:\n{log}");
    assert_eq!(
        exchange_tcp(first, get).finals(),
        [200],
        "the refusal changed nothing"
    );

    // The holder goes: the node takes the revision by itself, within its first retries.
    drop(holder);
    let freed = Instant::now();
    while std::net::TcpStream::connect(second).is_err() {
        assert!(
            freed.elapsed() < Duration::from_secs(15),
            "the refused revision was not applied once the port was free:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("applied {:?} after the port was freed", freed.elapsed());
    assert_eq!(
        exchange_tcp(second, get).finals(),
        [200],
        "served on the second port"
    );
    let log = node.log();
    assert!(
        log.contains("etcd: the refused revision is read again after a wait")
            && log.contains("etcd retry: configuration and certificates reloaded"),
        "{log}"
    );
    let (status, log) = node.stop();
    assert!(status.success(), "{status}:\n{log}");
}
