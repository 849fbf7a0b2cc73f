//! End to end, as root, in the routed topology of [`edgelb_tests::l4topo`]: clients behind a
//! router, edgelb nodes balancing TCP and UDP listeners entirely in XDP (IP-in-IP to the
//! backends), backends answering the clients directly.
use std::collections::BTreeMap;
use std::time::Duration;

use edgelb_tests::l4topo::{L4Topo, client_v4, client_v6, vip_addr};
use edgelb_tests::privilege::root_or_skip;

const TIMEOUT: Duration = Duration::from_secs(2);

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
