//! End to end, as root, in the routed topology of [`edgelb_tests::l4topo`]: clients behind a
//! router, edgelb nodes balancing TCP and UDP listeners entirely in XDP (IP-in-IP to the
//! backends), backends answering the clients directly.
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgelb_tests::daemon::{Daemon, decap_counter, xdp_counter};
use edgelb_tests::l4topo::{
    BACKENDS, CLIENT_V6_SOURCES, HttpConn, L4Topo, PORT, backend_addr, backend_name, client_v4,
    client_v6, source_hash_group, vip, vip_addr,
};
use edgelb_tests::netns::in_netns;
use edgelb_tests::privilege::root_or_skip;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Weights of be1, be2, be3.
const WEIGHTS: [u32; BACKENDS] = [1, 1, 2];
/// The client (10.0.1.7) every listener refuses.
const REFUSED: u8 = 7;
const LISTENERS: [&str; 4] = ["tcp4", "udp4", "tcp6", "udp6"];

/// edgelb's config for lb node `lb`: a tcp and a udp listener on each VIP, all balancing the
/// three backends (weights [`WEIGHTS`]) by source IP in XDP, refusing [`REFUSED`], and
/// checking the backends' TCP port every second (one failure flips a backend). With
/// `outer_v6`, the IPv6 listeners' group names the backends by their IPv6 addresses (IPv6
/// outer headers); otherwise every listener uses the IPv4 one.
fn config(topo: &L4Topo, lb: usize, outer_v6: bool) -> PathBuf {
    config_on(topo, lb, outer_v6, &[&topo.lb_links[lb].far_if])
}

/// As [`config`], with XDP attached to `ifaces`.
fn config_on(topo: &L4Topo, lb: usize, outer_v6: bool, ifaces: &[&str]) -> PathBuf {
    let group = |name: &str, v6: bool| {
        let backends: Vec<String> = (0..BACKENDS)
            .map(|n| {
                let addr = std::net::SocketAddr::new(backend_addr(n, v6), PORT);
                format!("\"{addr},weight={}\"", WEIGHTS[n])
            })
            .collect();
        source_hash_group(name, &backends.join(", "))
    };
    let mut s = format!(
        r#"xdp_iface = [{ifaces}]
xdp_mode = "native"

[ip_groups]
refused = ["{refused}/32"]
"#,
        ifaces = ifaces
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
        refused = client_v4(REFUSED),
    );
    s += &group("be", false);
    if outer_v6 {
        s += &group("be6", true);
    }
    for name in LISTENERS {
        let v6 = name.ends_with('6');
        s += &format!(
            r#"
[[listener]]
name = "{name}"
protocol = "{proto}"
listen = "{listen}"
group = "{group}"
access_control = "blacklist"
ip_groups = ["refused"]
"#,
            proto = &name[..3],
            listen = vip_addr(v6),
            group = if v6 && outer_v6 { "be6" } else { "be" },
        );
    }
    topo.logs.write(&format!("lb{}.toml", lb + 1), s)
}

/// edgelb on lb node `lb` (0-based), XDP attached natively to its link.
fn start_lb(topo: &L4Topo, lb: usize) -> Daemon {
    start_lb_with(topo, lb, false)
}

fn start_lb_with(topo: &L4Topo, lb: usize, outer_v6: bool) -> Daemon {
    let config = config(topo, lb, outer_v6);
    Daemon::start(
        Some(&topo.lbs[lb]),
        &["--config", &config.to_string_lossy()],
        topo.logs.path(),
    )
}

/// Client sources 10.0.1.1 ..= 10.0.1.`last`, without the refused one.
fn sources_v4(last: u8) -> Vec<IpAddr> {
    (1..=last)
        .filter(|&i| i != REFUSED)
        .map(client_v4)
        .collect()
}

/// Which backend answers each of `sources` over a new TCP connection to the VIP.
fn tcp_map(topo: &L4Topo, sources: &[IpAddr]) -> BTreeMap<IpAddr, String> {
    sources
        .iter()
        .map(|&src| {
            let dst = vip_addr(src.is_ipv6());
            let b = topo
                .tcp_backend(src, dst, TIMEOUT)
                .unwrap_or_else(|e| panic!("TCP {src} -> {dst}: {e}"));
            (src, b)
        })
        .collect()
}

/// The `xdp backend counters` lines of a stopped edgelb's log: forwarded frames per backend.
fn backend_counters(log: &str) -> BTreeMap<String, u64> {
    log.lines()
        .filter(|l| l.contains("xdp backend counters"))
        .map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {l:?}"))
                    .to_string()
            };
            (
                field("backend="),
                field("forwarded=").parse().expect("a number"),
            )
        })
        .collect()
}

/// How many of `sources` each backend serves, over TCP and UDP to the VIP of the source's
/// family; the two listeners must pick the same backend for a source.
fn spread_tcp_and_udp(
    topo: &L4Topo,
    sources: impl Iterator<Item = IpAddr>,
) -> BTreeMap<String, usize> {
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    for src in sources {
        let dst = vip_addr(src.is_ipv6());
        let tcp = topo
            .tcp_backend(src, dst, TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP {src} -> {dst}: {e}"));
        let udp = topo
            .udp_backend(src, dst, TIMEOUT)
            .unwrap_or_else(|e| panic!("UDP {src} -> {dst}: {e}"));
        assert_eq!(tcp, udp, "{src}: the tcp and udp listeners disagree");
        *spread.entry(tcp).or_default() += 1;
    }
    spread
}

/// `/status` `xdp.next_hops` of the daemon whose admin endpoint is `admin` in namespace `ns`.
fn next_hops(ns: &str, admin: &'static str) -> Vec<serde_json::Value> {
    let hops = in_netns(ns, move || {
        let answer = edgelb_tests::admin::get(admin, "/status");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        status["xdp"]["next_hops"].clone()
    });
    hops.as_array().cloned().unwrap_or_default()
}

fn timed_out(r: &io::Result<String>) -> bool {
    matches!(r, Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock))
}

/// Without any load balancer (the VIP routed straight to backends), TCP and UDP from many
/// client sources of both families reach the VIP and the answers come back: addressing,
/// routes, sysctls and the direct reply path are right before edgelb is in the way. A
/// multipath route spreads clients over its next hops, and removing one moves them all.
#[test]
fn topology_without_lb_reaches_the_vip_directly_and_by_ecmp() {
    if !root_or_skip("topology_without_lb_reaches_the_vip_directly_and_by_ecmp") {
        return;
    }
    let topo = L4Topo::new();
    for (key, want) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.fib_multipath_hash_policy", "1"),
        ("net.ipv6.fib_multipath_hash_policy", "1"),
    ] {
        assert_eq!(L4Topo::sysctl(&topo.router, key), want, "router {key}");
    }
    let be_if = &topo.backend_links[0].far_if;
    for (key, want) in [
        ("net.ipv4.conf.all.rp_filter".to_string(), "0"),
        (format!("net.ipv4.conf.{be_if}.rp_filter"), "0"),
        ("net.ipv4.conf.all.arp_ignore".to_string(), "1"),
        ("net.ipv4.conf.all.arp_announce".to_string(), "2"),
    ] {
        assert_eq!(L4Topo::sysctl(&topo.backends[0], &key), want, "be1 {key}");
    }

    topo.route_vip_to_backends(&[0]);
    let sources: Vec<_> = [1u8, 2, 7, 100, 254]
        .into_iter()
        .map(client_v4)
        .chain([1u16, 5, 0x16].into_iter().map(client_v6))
        .collect();
    for &src in &sources {
        let dst = vip_addr(src.is_ipv6());
        let tcp = topo.tcp_backend(src, dst, TIMEOUT);
        assert_eq!(
            tcp.as_deref().ok(),
            Some("be1"),
            "TCP {src} -> {dst}: {tcp:?}"
        );
        let udp = topo.udp_backend(src, dst, TIMEOUT);
        assert_eq!(
            udp.as_deref().ok(),
            Some("be1"),
            "UDP {src} -> {dst}: {udp:?}"
        );
    }

    // ECMP over be2 and be3, hashed on the 5-tuple: both get connections of both families.
    topo.route_vip_to_backends(&[1, 2]);
    let routes = topo.vip_routes();
    assert_eq!(routes.matches("nexthop").count(), 4, "{routes}");
    let mut seen = BTreeMap::new();
    for &src in &sources {
        for _ in 0..4 {
            let dst = vip_addr(src.is_ipv6());
            let tcp = topo
                .tcp_backend(src, dst, TIMEOUT)
                .unwrap_or_else(|e| panic!("TCP {src} -> {dst} over ECMP: {e}"));
            *seen.entry((src.is_ipv6(), tcp)).or_insert(0) += 1;
        }
    }
    let keys: Vec<_> = seen.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            (false, "be2".to_string()),
            (false, "be3".to_string()),
            (true, "be2".to_string()),
            (true, "be3".to_string())
        ],
        "{seen:?}"
    );

    // be2 withdrawn: everything goes to be3.
    topo.route_vip_to_backends(&[2]);
    for &src in &sources {
        let dst = vip_addr(src.is_ipv6());
        let tcp = topo.tcp_backend(src, dst, TIMEOUT);
        assert_eq!(
            tcp.as_deref().ok(),
            Some("be3"),
            "TCP {src} -> {dst}: {tcp:?}"
        );
    }
}

/// One edgelb node (lb1) balances a tcp and a udp listener on each VIP in XDP: from 199
/// client addresses every TCP connection and UDP exchange completes, both listeners send a
/// client to the same backend (same ring, source-IP hash), the spread follows the weights
/// 1/1/2, IPv6 clients are served too, the refused client's packets are dropped (it times
/// out), and the replies never touch lb1: it has no socket on the port, the router forwards
/// no packet from a VIP to or from it, and every packet the router sent it for a VIP is one
/// its XDP program forwarded or dropped.
#[test]
fn one_lb_balances_tcp_and_udp_by_weight_refuses_a_client_and_replies_bypass_it() {
    if !root_or_skip("one_lb_balances_tcp_and_udp_by_weight_refuses_a_client_and_replies_bypass_it")
    {
        return;
    }
    let topo = L4Topo::new();
    topo.count_vip_traffic();
    let lb = start_lb(&topo, 0);
    let sockets = L4Topo::sockets_on_port(&topo.lbs[0]);
    assert!(
        sockets.is_empty(),
        "lb1 has sockets on the port: {sockets:?}"
    );

    let sources = sources_v4(200);
    let spread = spread_tcp_and_udp(&topo, sources.iter().copied());
    eprintln!("IPv4: {} clients, backends {spread:?}", sources.len());
    // Weights 1/1/2 of 199 clients: about 50/50/100. Ignoring the weights would give about
    // 66 each, below be3's bound.
    let count = |b: &str| spread.get(b).copied().unwrap_or(0);
    for (b, (lo, hi)) in [("be1", (30, 70)), ("be2", (30, 70)), ("be3", (80, 120))] {
        assert!(
            (lo..=hi).contains(&count(b)),
            "{b}: {} of {} clients, expected {lo}-{hi}: {spread:?}",
            count(b),
            sources.len()
        );
    }

    let spread6 = spread_tcp_and_udp(&topo, (1..=CLIENT_V6_SOURCES).map(client_v6));
    eprintln!("IPv6: {CLIENT_V6_SOURCES} clients, backends {spread6:?}");
    assert!(
        spread6.len() >= 2,
        "IPv6 clients all on one backend: {spread6:?}"
    );

    // Full-sized segments: 1500-byte client packets would be 1520 or 1540 bytes once
    // encapsulated, more than the 1500-byte links behind the router take; edgelb answers the
    // first ones with ICMP "too big" and the clients' TCP sends smaller ones.
    for src in [client_v4(3), client_v6(3)] {
        let len = 256 * 1024;
        let mut conn = topo
            .tcp_connect(src, vip_addr(src.is_ipv6()), TIMEOUT)
            .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
        let (_, received) = conn
            .upload(len)
            .unwrap_or_else(|e| panic!("upload from {src}: {e}"));
        assert_eq!(received, len, "{src}");
    }

    let refused = client_v4(REFUSED);
    let short = Duration::from_millis(700);
    let tcp = topo.tcp_backend(refused, vip_addr(false), short);
    assert!(timed_out(&tcp), "refused {refused} over TCP: {tcp:?}");
    let udp = topo.udp_backend(refused, vip_addr(false), short);
    assert!(timed_out(&udp), "refused {refused} over UDP: {udp:?}");
    // Its neighbour is still served.
    assert!(
        topo.tcp_backend(client_v4(REFUSED + 1), vip_addr(false), TIMEOUT)
            .is_ok()
    );

    // The last connections' closing packets may still be on their way: counted once the
    // router's count has stood still for half a second (the XDP counts are read at the exit).
    let mut to_lb = topo.counter("to_lb1");
    let settle = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = topo.counter("to_lb1");
        if now == to_lb || std::time::Instant::now() > settle {
            break;
        }
        to_lb = now;
    }
    let (via_lb, direct) = (topo.counter("vip_via_lb1"), topo.counter("vip_direct"));
    eprintln!(
        "router: {to_lb} packets to a VIP sent to lb1, {via_lb} from a VIP to or from lb1, {direct} replies forwarded straight to the client"
    );
    assert_eq!(via_lb, 0, "replies went through lb1");
    // At least a SYN-ACK and a response per TCP connection, and an answer per datagram.
    let exchanges = (sources.len() + 1 + usize::from(CLIENT_V6_SOURCES)) as u64;
    assert!(
        direct >= 3 * exchanges,
        "{direct} direct replies for {exchanges} clients"
    );

    let (status, log) = lb.stop();
    assert!(status.success(), "{status}:\n{log}");
    let sum = |name: &str| -> u64 { LISTENERS.iter().map(|l| xdp_counter(&log, l, name)).sum() };
    let (forwarded, dropped, answered) = (
        sum("forwarded_l4"),
        sum("dropped_acl"),
        sum("too_big_answered"),
    );
    eprintln!(
        "lb1 XDP: forwarded_l4={forwarded} dropped_acl={dropped} too_big_answered={answered}"
    );
    assert_eq!(
        sum("no_backend") + sum("encap_failed") + sum("passed"),
        0,
        "{log}"
    );
    assert!(
        dropped >= 2,
        "the refused client's SYN and datagram: {dropped}"
    );
    assert_eq!(
        forwarded + dropped + answered,
        to_lb,
        "every packet for a VIP that reached lb1 was forwarded, dropped or answered by XDP"
    );
    let per_backend = backend_counters(&log);
    eprintln!("lb1 XDP frames per backend: {per_backend:?}");
    assert_eq!(per_backend.len(), BACKENDS, "{log}");
    assert_eq!(per_backend.values().sum::<u64>(), forwarded, "{log}");
}

/// A backend that crashes and fails its health checks leaves the ring: its clients move to
/// the others, and the others' clients keep their backend.
#[test]
fn crashed_backend_leaves_the_ring_only_its_clients_move() {
    if !root_or_skip("crashed_backend_leaves_the_ring_only_its_clients_move") {
        return;
    }
    let mut topo = L4Topo::new();
    let lb = start_lb(&topo, 0);
    let sources = sources_v4(120);
    let before = tcp_map(&topo, &sources);
    let on_be2: Vec<IpAddr> = before
        .iter()
        .filter(|(_, b)| *b == "be2")
        .map(|(s, _)| *s)
        .collect();
    assert!(!on_be2.is_empty(), "nobody on be2: {before:?}");

    topo.kill_server(1);
    let killed = Instant::now();
    let probe = on_be2[0];
    loop {
        match topo.tcp_backend(probe, vip_addr(false), Duration::from_millis(500)) {
            Ok(b) if b != "be2" => break,
            other => assert!(
                killed.elapsed() < Duration::from_secs(10),
                "{probe} still not moved 10 s after be2 died ({other:?}):\n{}",
                lb.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("ring without be2 after {:?}", killed.elapsed());

    let after = tcp_map(&topo, &sources);
    let mut moved: BTreeMap<String, usize> = BTreeMap::new();
    let mut changed = Vec::new();
    for (src, b) in &before {
        let now = &after[src];
        if b == "be2" {
            assert_ne!(now, "be2", "{src}");
            *moved.entry(now.clone()).or_default() += 1;
            let udp = topo.udp_backend(*src, vip_addr(false), TIMEOUT);
            assert_eq!(udp.as_ref().ok(), Some(now), "{src} over UDP: {udp:?}");
        } else if now != b {
            changed.push(format!("{src}: {b} -> {now}"));
        }
    }
    eprintln!(
        "{} of {} clients were on be2, now {moved:?}; others changed: {changed:?}",
        on_be2.len(),
        sources.len()
    );
    assert!(
        changed.is_empty(),
        "clients of live backends moved: {changed:?}"
    );
    let log = lb.log();
    assert!(log.contains("backend unhealthy"), "{log}");
}

/// Two edgelb nodes behind ECMP: long-lived TCP connections, spread over both by the router,
/// keep working (each line answered by the same backend) when lb1 is withdrawn from the
/// route and then stopped: lb2 picks the same backends from the same ring. New connections
/// work and land on the same backends too.
#[test]
fn ecmp_connections_survive_losing_an_lb_node() {
    if !root_or_skip("ecmp_connections_survive_losing_an_lb_node") {
        return;
    }
    let topo = L4Topo::new();
    topo.count_vip_traffic();
    topo.route_vip_via_lbs(&[0, 1]);
    let (lb1, _lb2) = std::thread::scope(|s| {
        let a = s.spawn(|| start_lb(&topo, 0));
        let b = s.spawn(|| start_lb(&topo, 1));
        (a.join().expect("lb1 starts"), b.join().expect("lb2 starts"))
    });

    let sources: Vec<IpAddr> = sources_v4(21)
        .into_iter()
        .chain((1..=4).map(client_v6))
        .collect();
    struct Long {
        conn: HttpConn,
        backend: String,
        lb: usize,
        answered: usize,
        failure: Option<String>,
    }
    let mut conns: Vec<Long> = sources
        .iter()
        .map(|&src| {
            let mut conn = topo
                .tcp_connect(src, vip_addr(src.is_ipv6()), TIMEOUT)
                .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
            let backend = conn
                .ask()
                .unwrap_or_else(|e| panic!("first request from {src}: {e}"));
            let lb = topo.lb_of_connection(conn.local);
            Long {
                conn,
                backend,
                lb,
                answered: 1,
                failure: None,
            }
        })
        .collect();
    let via_lb1 = conns.iter().filter(|c| c.lb == 0).count();
    eprintln!(
        "{} connections, {via_lb1} through lb1, {} through lb2",
        conns.len(),
        conns.len() - via_lb1
    );
    assert!(
        via_lb1 > 0 && via_lb1 < conns.len(),
        "ECMP used one lb only"
    );

    let rounds = |conns: &mut Vec<Long>, n: usize| {
        for _ in 0..n {
            for c in conns.iter_mut().filter(|c| c.failure.is_none()) {
                match c.conn.ask() {
                    Ok(b) if b == c.backend => c.answered += 1,
                    other => {
                        c.failure = Some(format!(
                            "{} (via lb{}, on {}): {other:?} after {} answers",
                            c.conn.local,
                            c.lb + 1,
                            c.backend,
                            c.answered
                        ))
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    rounds(&mut conns, 5);
    assert!(topo.counter("to_lb1") > 0 && topo.counter("to_lb2") > 0);

    // lb1's route withdrawn, as its BGP session going down would; then lb1 stops.
    topo.route_vip_via_lbs(&[1]);
    let to_lb1 = topo.counter("to_lb1");
    rounds(&mut conns, 10);
    let (status, log1) = lb1.stop();
    assert!(status.success(), "{status}:\n{log1}");
    rounds(&mut conns, 5);
    assert_eq!(topo.counter("to_lb1"), to_lb1, "packets still sent to lb1");

    let failures: Vec<&String> = conns.iter().filter_map(|c| c.failure.as_ref()).collect();
    let survived = conns.len() - failures.len();
    eprintln!(
        "{survived} of {} connections survived ({via_lb1} moved from lb1 to lb2), {} answers in all",
        conns.len(),
        conns.iter().map(|c| c.answered).sum::<usize>()
    );
    assert!(failures.is_empty(), "connections broken: {failures:#?}");
    let lb1_forwarded: u64 = LISTENERS
        .iter()
        .map(|l| xdp_counter(&log1, l, "forwarded_l4"))
        .sum();
    assert!(lb1_forwarded > 0, "lb1 forwarded nothing:\n{log1}");

    // New connections, through lb2 alone, reach the backend the old ones had.
    for c in &conns {
        let src = c.conn.local.ip();
        let b = topo.tcp_backend(src, vip_addr(src.is_ipv6()), TIMEOUT);
        assert_eq!(
            b.as_ref().ok(),
            Some(&c.backend),
            "new connection from {src}: {b:?}"
        );
    }
}

/// IPv6 clients of a group of IPv6 backend addresses: the packets travel IPv6-in-IPv6 (40
/// more bytes, full-sized segments too), next hops found by neighbour discovery; TCP and UDP
/// agree, every backend gets clients, and IPv4 clients of the IPv4 group still work beside.
#[test]
fn ipv6_backends_get_ipv6_outer_headers() {
    if !root_or_skip("ipv6_backends_get_ipv6_outer_headers") {
        return;
    }
    let topo = L4Topo::new();
    let lb = start_lb_with(&topo, 0, true);
    let spread = spread_tcp_and_udp(&topo, (1..=CLIENT_V6_SOURCES).map(client_v6));
    eprintln!("IPv6 over IPv6: {CLIENT_V6_SOURCES} clients, backends {spread:?}");
    assert_eq!(spread.len(), BACKENDS, "{spread:?}");
    let src = client_v6(3);
    let len = 256 * 1024;
    let received = topo
        .tcp_connect(src, vip_addr(true), TIMEOUT)
        .and_then(|mut c| c.upload(len))
        .unwrap_or_else(|e| panic!("upload from {src}: {e}"));
    assert_eq!(received.1, len);
    for src in sources_v4(5) {
        topo.tcp_backend(src, vip_addr(false), TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP {src}: {e}"));
    }

    let (status, log) = lb.stop();
    assert!(status.success(), "{status}:\n{log}");
    let per_backend = backend_counters(&log);
    eprintln!("lb1 XDP frames per backend: {per_backend:?}");
    let v6_frames: u64 = (0..BACKENDS)
        .map(|n| per_backend[&std::net::SocketAddr::new(backend_addr(n, true), PORT).to_string()])
        .sum();
    let tcp6_udp6 =
        xdp_counter(&log, "tcp6", "forwarded_l4") + xdp_counter(&log, "udp6", "forwarded_l4");
    assert_eq!(v6_frames, tcp6_udp6, "{log}");
}

/// A dual-homed node: clients reach it on one interface, its routes to the backends leave by
/// another. The frames its XDP program forwards must go out of the second (redirected there,
/// from its MAC, to the next hop on it); sent back out of the first (`XDP_TX`), they would
/// reach the router addressed to the MAC of its other interface and be dropped.
#[test]
fn a_dual_homed_node_sends_backend_frames_out_of_its_backend_interface() {
    if !root_or_skip("a_dual_homed_node_sends_backend_frames_out_of_its_backend_interface") {
        return;
    }
    let mut topo = L4Topo::new();
    let backside = topo.add_backend_link(0);
    let front = topo.lb_links[0].far_if.clone();
    let config = config_on(&topo, 0, true, &[&front, &backside.far_if]);
    // An admin endpoint, and a backend the node has no route to, behind a listener of its own.
    topo.lbs[0].ip(&["route", "add", "unreachable", "10.99.0.0/16"]);
    let text = std::fs::read_to_string(&config).expect("the config just written");
    let admin = "127.0.0.1:9000";
    let text = format!(
        "admin = \"{admin}\"\n{text}{}\n[[listener]]\nname = \"nowhere\"\nprotocol = \"tcp\"\nlisten = \"{}\"\ngroup = \"nowhere\"\n",
        source_hash_group("nowhere", "\"10.99.0.1:8080\""),
        SocketAddr::new(vip(false), PORT + 1),
    );
    std::fs::write(&config, text).expect("rewrite the config");
    let lb = Daemon::start(
        Some(&topo.lbs[0]),
        &["--config", &config.to_string_lossy()],
        topo.logs.path(),
    );
    let v6 = (1..=8).map(client_v6);
    let spread = spread_tcp_and_udp(&topo, sources_v4(24).into_iter().chain(v6));
    eprintln!("dual-homed: backends {spread:?}");
    assert_eq!(spread.len(), BACKENDS, "{spread:?}");
    // `/status` says where each backend's frames go, and why one has nowhere.
    let lb_ns = topo.lbs[0].path();
    let hops = next_hops(&lb_ns, admin);
    for n in 0..BACKENDS {
        for v6 in [false, true] {
            let backend = backend_addr(n, v6).to_string();
            let via = if v6 { "fd00:4:1::1" } else { "10.4.1.1" };
            let hop = hops
                .iter()
                .find(|h| h["backend"] == backend.as_str())
                .unwrap_or_else(|| panic!("{backend} not in {hops:?}"));
            assert_eq!(hop["via"], via, "{hop}");
            assert_eq!(hop["interface"], backside.far_if.as_str(), "{hop}");
            assert!(hop["mac"].is_string() && hop["problem"].is_null(), "{hop}");
        }
    }
    let nowhere = hops
        .iter()
        .find(|h| h["backend"] == "10.99.0.1")
        .unwrap_or_else(|| panic!("10.99.0.1 not in {hops:?}"));
    assert!(
        nowhere["mac"].is_null()
            && nowhere["problem"]
                .as_str()
                .is_some_and(|p| p.contains("10.99.0.1")),
        "{nowhere}"
    );
    // The refused client is still dropped at the front interface.
    let refused = topo.tcp_backend(
        client_v4(REFUSED),
        vip_addr(false),
        Duration::from_millis(700),
    );
    assert!(timed_out(&refused), "{refused:?}");

    let (status, log) = lb.stop();
    assert!(status.success(), "{status}:\n{log}");
    let redirected: u64 = LISTENERS
        .iter()
        .map(|l| xdp_counter(&log, l, "redirected"))
        .sum();
    let sent_back: u64 = LISTENERS
        .iter()
        .map(|l| xdp_counter(&log, l, "forwarded_l4"))
        .sum();
    let per_backend: u64 = backend_counters(&log).values().sum();
    eprintln!("dual-homed: {redirected} frames redirected, {sent_back} sent back out");
    assert!(redirected > 0 && sent_back == 0, "{log}");
    assert_eq!(
        per_backend, redirected,
        "every forwarded frame was redirected"
    );
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no usable next hop") && !l.contains("10.99.0.1"))
        .collect();
    assert!(
        warned.is_empty(),
        "both interfaces are --xdp-iface: no warning\n{warned:?}"
    );

    // XDP on the clients' interface alone: frames are still redirected to the other (a veth
    // takes them, its peer has a program), and `/status` says what to add.
    let config = config_on(&topo, 0, false, &[&front]);
    let text = std::fs::read_to_string(&config).expect("the config just written");
    std::fs::write(&config, format!("admin = \"{admin}\"\n{text}")).expect("rewrite");
    let lb = Daemon::start(
        Some(&topo.lbs[0]),
        &["--config", &config.to_string_lossy()],
        topo.logs.path(),
    );
    let spread = spread_tcp_and_udp(&topo, sources_v4(6).into_iter());
    assert!(!spread.is_empty());
    let hops = next_hops(&lb_ns, admin);
    assert_eq!(hops.len(), BACKENDS, "{hops:?}");
    for hop in &hops {
        assert!(
            hop["mac"].is_string()
                && hop["problem"].as_str().is_some_and(
                    |p| p.contains(&format!("give --xdp-iface {} too", backside.far_if))
                ),
            "{hop}"
        );
    }
    let (status, log) = lb.stop();
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        LISTENERS
            .iter()
            .map(|l| xdp_counter(&log, l, "redirected"))
            .sum::<u64>()
            > 0,
        "{log}"
    );
}

/// Backends (0-based) with their weights, in file order.
type Weighted = Vec<(usize, u32)>;

/// The backends (0-based, in file order) and weights of groups `t` (TCP) and `u` (UDP) in
/// reload `k`: be1 always in `t`, be2 in and out of both, be3 always alone in `u`; orders,
/// weights and the groups' order in the file change every time.
fn reload_state(k: usize) -> (Weighted, Weighted) {
    let mut t = vec![(0, 1 + (k % 3) as u32)];
    if k % 3 != 1 {
        t.push((1, 1 + ((k / 2) % 4) as u32));
    }
    if k % 2 == 1 {
        t.reverse();
    }
    let mut u = vec![(2, 1 + (k % 5) as u32)];
    if k % 4 == 2 {
        u.insert(k % 2, (1, 2));
    }
    (t, u)
}

fn reload_config(topo: &L4Topo, lb: usize, k: usize) -> PathBuf {
    let (t, u) = reload_state(k);
    let group = |name: &str, backends: &[(usize, u32)]| {
        let list: Vec<String> = backends
            .iter()
            .map(|(n, w)| format!("\"{}:{PORT},weight={w}\"", backend_addr(*n, false)))
            .collect();
        format!(
            "\n[[group]]\nname = \"{name}\"\nbackend = [{}]\nalgorithm = \"source-ip-hash\"\n",
            list.join(", ")
        )
    };
    let mut s = format!(
        "xdp_iface = [\"{}\"]\nxdp_mode = \"native\"\n",
        topo.lb_links[lb].far_if
    );
    let groups = [group("t", &t), group("u", &u)];
    s += &groups[k % 2];
    s += &groups[1 - k % 2];
    for (name, proto, g) in [("tcp4", "tcp", "t"), ("udp4", "udp", "u")] {
        s += &format!(
            "\n[[listener]]\nname = \"{name}\"\nprotocol = \"{proto}\"\nlisten = \"{}\"\n\
             group = \"{g}\"\n",
            vip_addr(false)
        );
    }
    topo.logs.write(&format!("lb{}.toml", lb + 1), s)
}

fn wait_for_log(d: &Daemon, marker: &str, n: usize) {
    let log = d.log_when(Duration::from_secs(10), |l| l.matches(marker).count() >= n);
    assert!(
        log.matches(marker).count() >= n,
        "{marker:?} not {n} times:\n{log}"
    );
}

/// 100 reloads of both ECMP nodes under traffic, each adding or removing a backend, reordering
/// and reweighting backends and the groups themselves: the tunnelled packets counted at each
/// backend's link never carry a protocol whose group named that backend neither before nor
/// after the reload; long-lived TCP connections on a backend that stays configured and UDP
/// flows keep their backend throughout; new connections always reach a configured backend.
#[test]
fn reloads_under_traffic_keep_flows_and_never_reach_an_unnamed_backend() {
    if !root_or_skip("reloads_under_traffic_keep_flows_and_never_reach_an_unnamed_backend") {
        return;
    }
    const RELOADS: usize = 100;
    let topo = L4Topo::new();
    topo.count_tunnelled();
    topo.route_vip_via_lbs(&[0, 1]);
    let lbs: Vec<Daemon> = std::thread::scope(|s| {
        let started: Vec<_> = (0..2)
            .map(|lb| {
                let topo = &topo;
                s.spawn(move || {
                    let config = reload_config(topo, lb, 0);
                    Daemon::start(
                        Some(&topo.lbs[lb]),
                        &["--config", &config.to_string_lossy()],
                        topo.logs.path(),
                    )
                })
            })
            .collect();
        started
            .into_iter()
            .map(|h| h.join().expect("an lb starts"))
            .collect()
    });

    struct Long {
        conn: HttpConn,
        backend: String,
        answered: usize,
        broken: Option<String>,
    }
    let sources = sources_v4(24);
    let mut conns: Vec<Long> = sources
        .iter()
        .map(|&src| {
            let mut conn = topo
                .tcp_connect(src, vip_addr(false), TIMEOUT)
                .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
            let backend = conn.ask().unwrap_or_else(|e| panic!("from {src}: {e}"));
            Long {
                conn,
                backend,
                answered: 1,
                broken: None,
            }
        })
        .collect();
    let on = |name: &str| conns.iter().filter(|c| c.backend == name).count();
    assert!(
        on("be1") > 0 && on("be2") > 0,
        "clients on both TCP backends"
    );
    let udp: Vec<std::net::UdpSocket> = sources[..8]
        .iter()
        .map(|&src| topo.udp_flow(src, vip_addr(false), TIMEOUT))
        .collect();

    let counters = |topo: &L4Topo| -> BTreeMap<String, u64> {
        ["tcp", "udp"]
            .iter()
            .flat_map(|p| (1..=BACKENDS).map(move |n| format!("{p}_be{n}")))
            .map(|name| (name.clone(), topo.counter_in("l4inner", &name)))
            .collect()
    };
    let mut last = counters(&topo);
    let mut new_conns = 0;
    for k in 1..=RELOADS {
        for (lb, d) in lbs.iter().enumerate() {
            reload_config(&topo, lb, k);
            d.signal(nix::sys::signal::Signal::SIGHUP);
        }
        for d in &lbs {
            wait_for_log(d, "configuration and certificates reloaded", k);
        }
        // Traffic while state k is live.
        for c in conns.iter_mut().filter(|c| c.broken.is_none()) {
            match c.conn.ask() {
                Ok(b) if b == c.backend => c.answered += 1,
                other => c.broken = Some(format!("reload {k}: {other:?}")),
            }
        }
        for (i, s) in udp.iter().enumerate() {
            let answer = edgelb_tests::l4topo::udp_exchange(s, &format!("reload {k} flow {i}"));
            assert_eq!(
                answer.as_deref().ok(),
                Some("be3"),
                "UDP flow {i} at reload {k}"
            );
        }
        let (t, u) = reload_state(k);
        let (t_before, u_before) = reload_state(k - 1);
        let src = client_v4(30 + (k % 200) as u8);
        let b = topo
            .tcp_backend(src, vip_addr(false), TIMEOUT)
            .unwrap_or_else(|e| panic!("new connection from {src} at reload {k}: {e}"));
        assert!(
            t.iter().any(|(n, _)| backend_name(*n) == b),
            "new connection at reload {k} reached {b}, not in {t:?}"
        );
        new_conns += 1;

        let now = counters(&topo);
        for n in 0..BACKENDS {
            for (proto, state, before) in [("tcp", &t, &t_before), ("udp", &u, &u_before)] {
                let name = format!("{proto}_be{}", n + 1);
                let named = state.iter().chain(before.iter()).any(|(b, _)| *b == n);
                assert!(
                    named || now[&name] == last[&name],
                    "reload {k}: {} {proto} packets reached be{} (group {proto}: {before:?} -> {state:?})",
                    now[&name] - last[&name],
                    n + 1
                );
            }
        }
        last = now;
    }

    let broken: Vec<String> = conns
        .iter()
        .filter(|c| c.backend == "be1")
        .filter_map(|c| c.broken.clone())
        .collect();
    let on_be2 = conns.iter().filter(|c| c.backend == "be2").count();
    eprintln!(
        "{RELOADS} reloads of 2 nodes: {} connections on be1 and {on_be2} on be2 ({} of those \
         broken, be2 being removed), {} answers, {} UDP flows on be3, {new_conns} new \
         connections; tunnelled packets per backend: {last:?}",
        conns.len() - on_be2,
        conns
            .iter()
            .filter(|c| c.backend == "be2" && c.broken.is_some())
            .count(),
        conns.iter().map(|c| c.answered).sum::<usize>(),
        udp.len(),
    );
    assert!(broken.is_empty(), "connections on be1 broken: {broken:#?}");
    assert!(last["tcp_be3"] == 0 && last["udp_be1"] == 0, "{last:?}");
    for d in lbs {
        let (status, log) = d.stop();
        assert!(status.success(), "{status}:\n{log}");
        assert!(!log.contains("writing L4 groups"), "{log}");
    }
}

/// 8 KiB UDP datagrams to the VIP leave the client in fragments (MTU 1500): every fragment
/// reaches the backend the first one went to, which reassembles the datagram and echoes it
/// whole. Over IPv6 the echo also needs ICMP forwarding: the backend's fragments are sized for
/// its 1600-byte link, the router cannot forward them to the client's 1500-byte one and (IPv6
/// routers never fragment) sends "packet too big" to their source, the VIP, which reaches
/// lb1; lb1 sends it on to the backend of that flow, which then fragments for 1500. The first
/// echo is lost that way, as on any path, so the client asks again.
#[test]
fn fragmented_udp_datagrams_arrive_whole() {
    if !root_or_skip("fragmented_udp_datagrams_arrive_whole") {
        return;
    }
    // Fragments carry no don't-fragment flag: edgelb cannot ask for smaller ones, so the
    // links behind the router carry the outer header on top of a full-sized fragment.
    let topo = L4Topo::with_inner_mtu(1600);
    topo.route_vip_via_lbs(&[0]);
    let lb = start_lb(&topo, 0);
    let sources: Vec<IpAddr> = sources_v4(6)
        .into_iter()
        .chain((1..=3).map(client_v6))
        .collect();
    let big: String = (0..8192).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut attempts = BTreeMap::new();
    for &src in &sources {
        let flow = topo.udp_flow(src, vip_addr(src.is_ipv6()), TIMEOUT);
        let small = edgelb_tests::l4topo::udp_exchange(&flow, "small")
            .unwrap_or_else(|e| panic!("{src}: a small datagram: {e}"));
        let mut tries = 0;
        let echoed = loop {
            tries += 1;
            match edgelb_tests::l4topo::udp_exchange(&flow, &big) {
                Ok(e) => break e,
                Err(_) if src.is_ipv6() && tries < 3 => continue,
                Err(e) => {
                    let (_, log) = lb.stop();
                    panic!("{src}: an 8 KiB datagram, attempt {tries}: {e}\n{log}")
                }
            }
        };
        assert_eq!(echoed, small, "{src}: the datagram went elsewhere");
        attempts.insert(src, tries);
    }
    eprintln!("attempts per source: {attempts:?}");
    let (status, log) = lb.stop();
    assert!(status.success(), "{status}:\n{log}");
    // A small datagram and one of 6 fragments from each IPv4 source.
    let v4 = sources.iter().filter(|s| s.is_ipv4()).count() as u64;
    assert_eq!(xdp_counter(&log, "udp4", "forwarded_l4"), 7 * v4, "{log}");
    assert_eq!(xdp_counter(&log, "(no listener)", "fragment"), 0, "{log}");
    // Each backend learns the path once; at least the first IPv6 client's echo needed it.
    let icmp = xdp_counter(&log, "udp6", "forwarded_icmp");
    assert!(icmp >= 1, "no packet too big forwarded:\n{log}");
    assert_eq!(xdp_counter(&log, "udp4", "forwarded_icmp"), 0, "{log}");
}

/// Someone who reaches a backend directly cannot tunnel packets to the VIP around the
/// balancer: IP-in-IP from the client's own address to be1 carrying a UDP datagram for the
/// VIP (IPv4 in IPv4, IPv6 in IPv6) gets no answer, and be1's `edgelb decap` counts both
/// `refused`, while clients served through lb1 reach be1 as before. The same packets are
/// answered once be1 also trusts the client's address: nothing but `--from` stopped them.
#[test]
fn tunnelled_packets_from_outside_the_balancers_are_refused_at_the_backend() {
    if !root_or_skip("tunnelled_packets_from_outside_the_balancers_are_refused_at_the_backend") {
        return;
    }
    let mut topo = L4Topo::new();
    let _lb = start_lb(&topo, 0);
    let client: [IpAddr; 2] = [[10, 1, 0, 2].into(), "fd00:1::2".parse().expect("static")];
    let forged = [
        (client[0], backend_addr(0, false), client_v4(9)),
        (client[1], backend_addr(0, true), client_v6(9)),
    ];
    let short = Duration::from_millis(500);
    for &(outer, be, inner) in &forged {
        let answer = topo
            .udp_tunnelled_answer(outer, be, inner, short)
            .unwrap_or_else(|e| panic!("sending IP-in-IP {outer} -> {be}: {e}"));
        assert_eq!(answer, None, "{outer} -> {be}, for {inner}: be1 answered");
    }
    // Through lb1, a client that the ring sends to be1 is served (be1 decapsulates lb1's
    // packets), and clients of both families are served at all.
    let be1 = backend_name(0);
    let through_lb = (1..=20)
        .map(client_v4)
        .find(|&src| {
            let b = topo.tcp_backend(src, vip_addr(false), TIMEOUT);
            b.as_deref().ok() == Some(be1.as_str())
        })
        .unwrap_or_else(|| panic!("no client of 10.0.1.1-20 reached be1 through lb1"));
    for src in [through_lb, client_v6(9)] {
        let dst = vip_addr(src.is_ipv6());
        topo.udp_backend(src, dst, TIMEOUT)
            .unwrap_or_else(|e| panic!("UDP {src} -> {dst} through lb1: {e}"));
    }

    let (status, log) = topo.restart_decap(0, &client);
    assert!(status.success(), "{status}:\n{log}");
    let (refused, decapsulated) = (
        decap_counter(&log, "refused"),
        decap_counter(&log, "decapsulated"),
    );
    eprintln!("be1 decap: refused={refused} decapsulated={decapsulated}");
    assert_eq!(refused, 2, "the two forged packets: {log}");
    assert!(
        decapsulated >= 3,
        "lb1's packets of a TCP exchange and a datagram: {log}"
    );

    for &(outer, be, inner) in &forged {
        let answer = topo
            .udp_tunnelled_answer(outer, be, inner, TIMEOUT)
            .unwrap_or_else(|e| panic!("sending IP-in-IP {outer} -> {be}: {e}"));
        let want = format!("backend {be1} tunnelled from {outer}");
        assert_eq!(
            answer.as_deref(),
            Some(want.as_str()),
            "{outer} -> {be}, for {inner}, once trusted"
        );
    }
}

/// MTU 1500 on every link, as on the Internet: a 1 MiB upload over TCP through the VIP
/// completes (the first full-sized segments are answered with ICMP "fragmentation needed" /
/// "packet too big" and TCP sends smaller ones), over IPv4 and IPv6; and a 1500-byte UDP
/// datagram with don't-fragment gets the ICMP answer: the client's kernel then knows the path
/// takes 1480 bytes and refuses the next such datagram itself.
#[test]
fn at_mtu_1500_everywhere_path_mtu_discovery_works_through_the_tunnel() {
    if !root_or_skip("at_mtu_1500_everywhere_path_mtu_discovery_works_through_the_tunnel") {
        return;
    }
    let topo = L4Topo::new();
    topo.route_vip_via_lbs(&[0]);
    let lb = start_lb(&topo, 0);
    let flow = topo.udp_flow(client_v4(12), vip_addr(false), TIMEOUT);
    // IP_MTU_DISCOVER = IP_PMTUDISC_DO: don't-fragment, and EMSGSIZE once the path is known.
    set_int(
        &flow,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    );
    let big = vec![b'x'; 1500 - 28];
    flow.send(&big)
        .expect("a 1500-byte datagram leaves (it fits the client's link)");
    let deadline = Instant::now() + Duration::from_secs(2);
    let refused = loop {
        std::thread::sleep(Duration::from_millis(20));
        match flow.send(&big) {
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => break true,
            _ if Instant::now() > deadline => break false,
            _ => {}
        }
    };
    assert!(refused, "the client never learnt the path MTU");
    let mtu = nix::sys::socket::getsockopt(&flow, nix::sys::socket::sockopt::IpMtu)
        .expect("getsockopt(IP_MTU)");
    assert_eq!(mtu, 1480, "the path MTU the client learnt");

    for src in [client_v4(11), client_v6(11)] {
        let len = 1 << 20;
        let mut conn = topo
            .tcp_connect(src, vip_addr(src.is_ipv6()), TIMEOUT)
            .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
        let (_, received) = conn
            .upload(len)
            .unwrap_or_else(|e| panic!("1 MiB upload from {src}: {e}"));
        assert_eq!(received, len, "{src}");
    }

    let (status, log) = lb.stop();
    assert!(status.success(), "{status}:\n{log}");
    let answered: u64 = LISTENERS
        .iter()
        .map(|l| xdp_counter(&log, l, "too_big_answered"))
        .sum();
    assert!(answered >= 3, "{answered} answered:\n{log}");
}

fn set_int(s: &std::net::UdpSocket, level: i32, name: i32, value: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor and a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt({level}, {name})");
}

/// The router changes its MAC address on lb1's link under traffic, twice (a router replaced,
/// or a VRRP-style failover to a peer with its own address), and edgelb follows within a
/// second each time, for IPv4 and IPv6 next hops.
///
/// The router announces its new address as such a router does: with `arp_notify` and
/// `ndisc_notify` on its interface, its kernel sends a gratuitous ARP and an unsolicited
/// neighbour advertisement (override flag) when the address changes, and lb1's kernel rewrites
/// its entries for 10.2.1.1 and fd00:2:1::1 (STALE, new MAC) and announces that. lb1's own
/// stack then reaches the router at once (its health checks keep passing); its XDP program
/// sends to whatever MAC `BACKENDS` holds, and the router's stack drops frames addressed to
/// its old MAC (`PACKET_OTHERHOST`). So a UDP exchange through the VIP from the client works
/// again only once edgelb has written the new MAC: measured from the change, it must take
/// under a second. The 5 s poll this replaced took up to 5 s; and a poll that happened to
/// fall just after the first change cannot come in time for the second, made right after.
#[test]
fn router_mac_change_is_followed_within_a_second() {
    if !root_or_skip("router_mac_change_is_followed_within_a_second") {
        return;
    }
    let topo = L4Topo::new();
    let lb = start_lb_with(&topo, 0, true);
    let router_if = topo.lb_links[0].router_if.clone();
    let announce = [
        format!("/proc/sys/net/ipv4/conf/{router_if}/arp_notify"),
        format!("/proc/sys/net/ipv6/conf/{router_if}/ndisc_notify"),
    ];
    in_netns(&topo.router.path(), move || {
        for path in announce {
            std::fs::write(&path, "1").unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
    });
    let clients = [client_v4(1), client_v6(1)];
    // Served before the change: both families through lb1.
    for src in clients {
        let dst = vip_addr(src.is_ipv6());
        topo.udp_backend(src, dst, TIMEOUT)
            .unwrap_or_else(|e| panic!("UDP {src} -> {dst} before the change: {e}"));
    }

    for mac in ["02:00:5e:10:00:01", "02:00:5e:10:00:02"] {
        topo.router
            .ip(&["link", "set", "dev", &router_if, "address", mac]);
        // From the change, not from before `ip` was started (a process start under load can
        // take most of a second by itself).
        let changed = Instant::now();
        // Longer than the old poll, so that a failure says how long it took.
        let give_up = Duration::from_secs(7);
        for src in clients {
            let dst = vip_addr(src.is_ipv6());
            while let Err(e) = topo.udp_backend(src, dst, Duration::from_millis(50)) {
                assert!(
                    changed.elapsed() < give_up,
                    "UDP {src} -> {dst} not served {give_up:?} after the router's MAC became {mac}: {e}\n{}",
                    lb.log()
                );
            }
        }
        let took = changed.elapsed();
        eprintln!("router MAC {mac}: UDP through lb1 served again after {took:?}");
        assert!(
            took < Duration::from_secs(1),
            "served again only {took:?} after the router's MAC became {mac}"
        );
        let backends: Vec<String> = (0..BACKENDS)
            .flat_map(|n| [false, true].map(|v6| format!("backend={}", backend_addr(n, v6))))
            .collect();
        let changed_for = |log: &str, backend: &str| {
            log.lines()
                .any(|l| l.contains("next hop changed") && l.contains(backend) && l.contains(mac))
        };
        let log = lb.log_when(Duration::from_secs(2), |log| {
            backends.iter().all(|b| changed_for(log, b))
        });
        for backend in &backends {
            assert!(
                changed_for(&log, backend),
                "no \"next hop changed\" to {mac} for {backend}:\n{log}"
            );
        }
    }

    let (status, log) = lb.stop();
    assert!(status.success(), "{status}:\n{log}");
    let lost: u64 = LISTENERS
        .iter()
        .map(|l| xdp_counter(&log, l, "no_backend"))
        .sum();
    assert_eq!(
        lost, 0,
        "the backends kept their next hop throughout: {log}"
    );
}
