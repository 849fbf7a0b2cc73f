//! A fleet behind a real router: three edgelb nodes announce their listeners' addresses over
//! BGP, each through its own BIRD, to a BIRD router that installs one multipath (ECMP) route
//! per address. Under load, with an L4 (XDP) listener and an HTTP listener on every node: the
//! routes appear for all three nodes; SIGTERM of one node withdraws its routes before its
//! listeners close (no failed new connection) and L4 flows re-hash to another node that picks
//! the same backend; a node that goes silent loses its routes when the hold timer runs out and
//! L4 flows survive; a node whose backends all fail their checks withdraws that listener.
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgelb_tests::daemon::Daemon;
use edgelb_tests::l4topo::{
    BACKENDS, L4Topo, PORT, backend_addr, client_v4, lb_addr, source_hash_group, vip_addr,
};
use edgelb_tests::netns::in_netns;
use edgelb_tests::privilege::root_or_skip;
use nix::sys::signal::Signal;
use socket2::{Domain, Socket, Type};

const NODES: usize = 3;
/// The HTTP listener's address: on each node's `lo`, announced like the L4 VIP.
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
const WEB_PORT: u16 = 80;
const ROUTER_AS: u32 = 65000;
const NODE_AS: u32 = 65001;
/// The sessions' hold time (BGP's shortest): a silent node's routes last at most this long.
const HOLD_SECS: u64 = 3;
/// Long enough that the test sees a route gone (BGP, the router's BIRD, its kernel, an `ip`
/// process to read it) well before the node's listeners close, even on a loaded machine.
const WITHDRAW_DELAY_SECS: u64 = 4;
/// The port node 3's web group checks instead of the servers': its backends are "down" for
/// it alone once nothing listens there.
const CHECK_PORT: u16 = 8081;

/// BIRD on the router: a session with each node, their routes merged into one multipath
/// route per address in the kernel.
struct RouterBird {
    child: Child,
}

impl RouterBird {
    fn start(topo: &L4Topo) -> Self {
        let mut conf = String::from(
            "log stderr all;\nrouter id 10.2.1.1;\nprotocol device { }\n\
             protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n\
             protocol kernel { ipv6 { import none; export all; }; merge paths on; }\n",
        );
        for k in 0..NODES {
            conf += &format!(
                "protocol bgp node{n} {{ local 10.2.{n}.1 as {ROUTER_AS}; neighbor {addr} as \
                 {NODE_AS}; hold time {HOLD_SECS}; keepalive time 1; connect retry time 1; \
                 error wait time 1, 5; ipv4 {{ import all; export none; }}; }}\n",
                n = k + 1,
                addr = lb_addr(k, false),
            );
            conf += &format!(
                "protocol bgp node{n}v6 {{ local fd00:2:{n}::1 as {ROUTER_AS}; neighbor {addr} as \
                 {NODE_AS}; hold time {HOLD_SECS}; keepalive time 1; connect retry time 1; \
                 error wait time 1, 5; ipv6 {{ import all; export none; }}; }}\n",
                n = k + 1,
                addr = lb_addr(k, true),
            );
        }
        let path = topo.logs.write("router-bird.conf", conf);
        let dir = topo.logs.path();
        let child = topo
            .router
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(dir.join("router-bird.ctl"))
            .arg("-P")
            .arg(dir.join("router-bird.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run bird (cargo xtask setup installs bird2)");
        RouterBird { child }
    }
}

impl Drop for RouterBird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Node `k`'s configuration: an L4 listener on the VIP and an HTTP listener on [`WEB_VIP`],
/// both over the three backends, and BGP to the router.
fn node_config(topo: &L4Topo, k: usize) -> PathBuf {
    let backends: Vec<String> = (0..BACKENDS)
        .map(|n| format!("\"{}\"", SocketAddr::new(backend_addr(n, false), PORT)))
        .collect();
    let backends = backends.join(", ");
    let check_port = if k == NODES - 1 {
        format!("hc_port = {CHECK_PORT}\n")
    } else {
        String::new()
    };
    let text = format!(
        r#"xdp_iface = ["{iface}"]
xdp_mode = "native"
drain_timeout = 2
admin = "127.0.0.1:9900"
bgp_local_as = {NODE_AS}
bgp_router_id = "{id}"
bgp_peer = ["10.2.{n}.1,as={ROUTER_AS}", "fd00:2:{n}::1,as={ROUTER_AS}"]
bgp_hold_time = {HOLD_SECS}
bgp_withdraw_delay = {WITHDRAW_DELAY_SECS}
{l4_group}
[[group]]
name = "web"
backend = [{backends}]
health_check = "tcp"
hc_interval = 1
hc_timeout = 1
hc_retries = 1
{check_port}
[[listener]]
name = "l4"
protocol = "tcp"
listen = "{l4}"
group = "l4"

[[listener]]
name = "l4v6"
protocol = "tcp"
listen = "{l4v6}"
group = "l4"

[[listener]]
name = "web"
protocol = "http"
listen = "{WEB_VIP}:{WEB_PORT}"
group = "web"
"#,
        iface = topo.lb_links[k].far_if,
        id = lb_addr(k, false),
        n = k + 1,
        l4 = vip_addr(false),
        l4v6 = vip_addr(true),
        l4_group = source_hash_group("l4", &backends),
    );
    topo.logs.write(&format!("node{}.toml", k + 1), text)
}

/// Whether node `k` (0-based) has a TCP listener on `addr:port`.
fn listening(topo: &L4Topo, k: usize, addr: Ipv4Addr, port: u16) -> bool {
    let out = topo.lbs[k]
        .command("ss")
        .args(["-Htln"])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).contains(&format!("{addr}:{port}"))
}

/// The nodes (0-based) the router's route to `addr` goes through now.
fn next_hops(topo: &L4Topo, addr: Ipv4Addr) -> BTreeSet<usize> {
    let routes = topo.router.ip(&["route", "show", &format!("{addr}/32")]);
    (0..NODES)
        .filter(|&k| routes.contains(&format!("via {} ", lb_addr(k, false))))
        .collect()
}

/// Waits (at most `limit`) until the routes to both addresses go through exactly `nodes`;
/// returns how long that took.
fn wait_for_routes(topo: &L4Topo, nodes: &[usize], limit: Duration) -> Duration {
    let want: BTreeSet<usize> = nodes.iter().copied().collect();
    let start = Instant::now();
    loop {
        let l4 = next_hops(topo, *VIP_V4);
        let web = next_hops(topo, WEB_VIP);
        if l4 == want && web == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "after {limit:?} the routes go through {l4:?} (VIP) and {web:?} (web), not {want:?}:\n{}",
            topo.router.ip(&["route"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

static VIP_V4: std::sync::LazyLock<Ipv4Addr> = std::sync::LazyLock::new(|| match vip_addr(false) {
    SocketAddr::V4(a) => *a.ip(),
    SocketAddr::V6(_) => unreachable!("an IPv4 VIP"),
});

/// New HTTP connections to the web listener, one after another from rotating client sources
/// (so the router spreads them over its next hops), until `stop`; counts answers and failures.
struct Load {
    ok: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(Instant, String)>>>,
}

impl Load {
    fn start(topo: &L4Topo) -> Self {
        let (ok, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let ns = topo.client.path();
        let (o, s) = (ok.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            in_netns(&ns, move || {
                let mut errors = Vec::new();
                let mut i = 0u8;
                while !s.load(Ordering::Relaxed) {
                    i = i % 200 + 1;
                    let began = Instant::now();
                    match request(client_v4(i)) {
                        Ok(()) => {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push((began, format!("from {}: {e}", client_v4(i)))),
                    }
                }
                errors
            })
        });
        Load {
            ok,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the load; returns the answered count and the failures, each with when its
    /// connection began.
    fn finish(mut self) -> (u64, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .thread
            .take()
            .map(|t| t.join().expect("load thread"))
            .unwrap_or_default();
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

fn request(src: IpAddr) -> std::io::Result<()> {
    let dst = SocketAddr::new(IpAddr::V4(WEB_VIP), WEB_PORT);
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(2))?;
    let mut stream: TcpStream = s.into();
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "answer {:?}",
            answer.lines().next().unwrap_or("")
        )))
    }
}

/// The BIRD that node `d` runs.
fn speaker_pid(d: &Daemon) -> i32 {
    d.bgp_speaker()
        .unwrap_or_else(|| panic!("node {} runs no bird", d.pid()))
}

fn signal(pid: i32, s: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s).expect("signal");
}

#[test]
fn a_fleet_announces_over_bgp_and_leaves_without_a_failed_connection() {
    if !root_or_skip("a_fleet_announces_over_bgp_and_leaves_without_a_failed_connection") {
        return;
    }
    let topo = L4Topo::with_lbs(NODES);
    for k in 0..NODES {
        topo.lbs[k].ip(&["address", "add", &format!("{WEB_VIP}/32"), "dev", "lo"]);
    }
    // What node 3's web group checks: a port on backend 1 that listens until the test closes it.
    let check_listener = in_netns(&topo.backends[0].path(), || {
        std::net::TcpListener::bind(SocketAddr::new(backend_addr(0, false), CHECK_PORT))
    })
    .expect("bind the check port");
    let _router = RouterBird::start(&topo);
    let started = Instant::now();
    let mut nodes: Vec<Option<Daemon>> = (0..NODES)
        .map(|k| {
            let config = node_config(&topo, k).to_string_lossy().into_owned();
            let mut args = vec!["--config", config.as_str()];
            // Node 1 drops its privileges: it must still announce, withdraw and stop its
            // (root) speaker when it leaves.
            if k == 0 {
                args.extend(["--user", "nobody"]);
            }
            Some(Daemon::start(Some(&topo.lbs[k]), &args, topo.logs.path()))
        })
        .collect();
    let took = wait_for_routes(&topo, &[0, 1, 2], Duration::from_secs(30));
    // The IPv6 VIP, over the IPv6 sessions: a /128 with the three nodes as next hops.
    let start = Instant::now();
    loop {
        let v6 = topo.router.ip(&[
            "-6",
            "route",
            "show",
            &format!("{}/128", vip_addr(true).ip()),
        ]);
        if (0..NODES).all(|k| v6.contains(&format!("via {} ", lb_addr(k, true)))) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the IPv6 VIP is not routed through the three nodes: {v6:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "routes through all {NODES} nodes {:?} after the first node started ({took:?} after the last was ready)",
        started.elapsed()
    );

    // Long-lived L4 flows, each remembered with its backend.
    let mut flows: Vec<_> = (1..=24u8)
        .map(|i| {
            let mut c = topo
                .tcp_connect(client_v4(i), vip_addr(false), Duration::from_secs(3))
                .expect("connect to the VIP");
            let backend = c.ask().expect("first answer");
            (c, backend)
        })
        .collect();
    let check_flows = |flows: &mut Vec<(edgelb_tests::l4topo::HttpConn, String)>, when: &str| {
        for (c, backend) in flows.iter_mut() {
            match c.ask() {
                Ok(b) => assert_eq!(&b, backend, "{when}: flow {} moved backend", c.local),
                Err(e) => panic!("{when}: flow {} broke: {e}", c.local),
            }
        }
    };

    // SIGTERM of node 1 under load: routes go first, listeners close after the delay.
    let load = Load::start(&topo);
    std::thread::sleep(Duration::from_secs(1));
    let node1 = nodes[0].take().expect("node 1 runs");
    node1.signal(Signal::SIGTERM);
    let withdrawn = wait_for_routes(&topo, &[1, 2], Duration::from_secs(10));
    let routes_gone = Instant::now();
    assert!(
        listening(&topo, 0, WEB_VIP, WEB_PORT),
        "node 1 closed its listeners before its routes were withdrawn (seen after {withdrawn:?})"
    );
    let (status, log) = node1.stop();
    assert!(status.success(), "node 1 exited with {status}:\n{log}");
    std::thread::sleep(Duration::from_secs(1));
    let (answered, failures) = load.finish();
    // The router rehashes when a next hop goes (Linux splits the hash space evenly among the
    // next hops), so a connection in flight at that instant may move between the remaining
    // nodes too, and an HTTP listener cannot take over another node's connection. Every
    // connection begun once the route changed must succeed: none of them reached node 1
    // after it stopped accepting.
    let (spanning, after): (Vec<_>, Vec<_>) = failures
        .into_iter()
        .partition(|(began, _)| *began < routes_gone);
    eprintln!(
        "SIGTERM of node 1: its routes gone after {withdrawn:?}, its listeners closed {WITHDRAW_DELAY_SECS} s later; {answered} new connections answered meanwhile, {} failed after the route change, {} in flight during it were reset by the rehash",
        after.len(),
        spanning.len()
    );
    assert!(answered > 20, "the load ran: {answered} answers");
    assert!(
        after.is_empty(),
        "{} new connections failed after node 1's routes were withdrawn: {:?}",
        after.len(),
        &after[..after.len().min(5)]
    );
    assert!(
        spanning.len() <= 3,
        "more connections broke in the rehash than were in flight: {spanning:?}"
    );
    check_flows(&mut flows, "after node 1 left");

    // Node 2 goes silent (daemon and speaker stopped): its routes last until the hold time.
    let node2 = nodes[1].as_ref().expect("node 2 runs");
    let (edgelb_pid, bird_pid) = (node2.pid() as i32, speaker_pid(node2));
    signal(bird_pid, Signal::SIGSTOP);
    signal(edgelb_pid, Signal::SIGSTOP);
    let lost = wait_for_routes(&topo, &[2], Duration::from_secs(HOLD_SECS + 2));
    eprintln!("node 2 silent: its routes gone after {lost:?} (hold time {HOLD_SECS} s)");
    check_flows(&mut flows, "with node 2 silent");
    signal(edgelb_pid, Signal::SIGCONT);
    signal(bird_pid, Signal::SIGCONT);
    let back = wait_for_routes(&topo, &[1, 2], Duration::from_secs(15));
    eprintln!("node 2 resumed: its routes back after {back:?}");
    check_flows(&mut flows, "after node 2 came back");

    // A reload that drops node 2's web listener, under load: the address is withdrawn first
    // and the listener closes only after the delay, so no connection begun after the route
    // change fails.
    let path = topo.logs.path().join("node2.toml");
    let text = std::fs::read_to_string(&path).expect("node 2's configuration");
    let without_web = text
        .split("[[listener]]\nname = \"web\"")
        .next()
        .unwrap_or_default()
        .to_string();
    // First the same change with `admin` changed too, which needs a restart: the reload is
    // refused, so nothing changes, the route included (it used to be withdrawn for the delay).
    std::fs::write(
        &path,
        without_web.replace("127.0.0.1:9900", "127.0.0.1:9901"),
    )
    .expect("rewrite node 2's configuration");
    let node2 = nodes[1].as_ref().expect("node 2 runs");
    let refusals = node2.log().matches("reload refused").count();
    node2.signal(Signal::SIGHUP);
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(1500) {
        assert!(
            next_hops(&topo, WEB_VIP).contains(&1),
            "a reload that is refused withdrew node 2's web address"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = node2.log_when(Duration::from_secs(10), |l| {
        l.matches("reload refused").count() > refusals
    });
    assert!(
        log.matches("reload refused").count() > refusals,
        "the reload changing admin was not refused:\n{log}"
    );

    std::fs::write(&path, without_web).expect("rewrite node 2's configuration");
    let load = Load::start(&topo);
    std::thread::sleep(Duration::from_millis(500));
    let reloaded = Instant::now();
    nodes[1]
        .as_ref()
        .expect("node 2 runs")
        .signal(Signal::SIGHUP);
    while next_hops(&topo, WEB_VIP).contains(&1) {
        assert!(
            reloaded.elapsed() < Duration::from_secs(10),
            "node 2 still announces the web address"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let routes_gone = Instant::now();
    assert!(
        listening(&topo, 1, WEB_VIP, WEB_PORT),
        "node 2 closed its web listener before its route was withdrawn"
    );
    while listening(&topo, 1, WEB_VIP, WEB_PORT) {
        assert!(
            routes_gone.elapsed() < Duration::from_secs(WITHDRAW_DELAY_SECS + 5),
            "node 2's web listener outlived the reload"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (answered, failures) = load.finish();
    let (spanning, after): (Vec<_>, Vec<_>) = failures
        .into_iter()
        .partition(|(began, _)| *began < routes_gone);
    eprintln!(
        "reload dropping node 2's web listener: route gone after {:?}, listener closed {WITHDRAW_DELAY_SECS} s later; {answered} answered, {} failed after the route change, {} in flight during it",
        routes_gone - reloaded,
        after.len(),
        spanning.len()
    );
    assert!(
        after.is_empty(),
        "{} connections failed after node 2 withdrew the web address: {:?}",
        after.len(),
        &after[..after.len().min(5)]
    );

    // Node 3's web backends fail its checks: it withdraws the web address, keeps the VIP.
    drop(check_listener);
    let start = Instant::now();
    loop {
        let (l4, web) = (next_hops(&topo, *VIP_V4), next_hops(&topo, WEB_VIP));
        if web.is_empty() {
            assert_eq!(
                l4,
                BTreeSet::from([1, 2]),
                "the VIP stays announced by both"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "node 3 still announces the web address: {web:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "node 3's web backends down: web address withdrawn after {:?}",
        start.elapsed()
    );
    // What an operator sees on node 3: the session and the one address still announced.
    let wanted = format!("announced {}/32 {}/128\n", *VIP_V4, vip_addr(true).ip());
    let mut status = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let out = topo.lbs[2]
            .command(&edgelb_tests::daemon::binary().to_string_lossy())
            .args(["status", "--admin", "127.0.0.1:9900"])
            .output()
            .expect("edgelb status");
        status = String::from_utf8_lossy(&out.stdout).into_owned();
        if status.contains("Established") && status.contains(&wanted) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        status.contains("Established") && status.contains(&wanted),
        "{status}"
    );
    let metrics = topo.lbs[2]
        .command("curl")
        .args(["-s", "http://127.0.0.1:9900/metrics"])
        .output()
        .expect("curl /metrics");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for line in [
        "edgelb_bgp_peer_established{peer=\"10.2.3.1\"} 1",
        "edgelb_bgp_peer_established{peer=\"fd00:2:3::1\"} 1",
        "edgelb_bgp_announced_routes 2",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    // Node 3's speaker killed: edgelb starts it again, and it stays (a speaker started from a
    // thread that later exits would get its parent-death signal then).
    let node3 = nodes[2].as_ref().expect("node 3 runs");
    signal(speaker_pid(node3), Signal::SIGKILL);
    let start = Instant::now();
    while next_hops(&topo, *VIP_V4).contains(&2) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "node 3's routes stay"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = start.elapsed();
    while !next_hops(&topo, *VIP_V4).contains(&2) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "node 3's speaker was not started again:\n{}",
            node3.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "node 3's speaker killed: its routes gone after {gone:?}, back after {:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        next_hops(&topo, *VIP_V4).contains(&2),
        "node 3's restarted speaker stopped again:\n{}",
        node3.log()
    );
    for d in nodes.into_iter().flatten() {
        let (status, log) = d.stop();
        assert!(status.success(), "{status}:\n{log}");
    }
}
