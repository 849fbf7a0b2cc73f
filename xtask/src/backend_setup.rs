//! `cargo xtask backend-setup`: what a backend of a tcp/udp listener needs, as commands to
//! run on it. edgelb forwards those listeners' packets IP-in-IP (Katran-style direct server
//! return): the backend must take the outer header off (only for packets from the edgelb
//! nodes), accept packets for the VIP as its own, and answer the client directly from the VIP.
use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{DEFAULT_ENCAP_V4, DEFAULT_ENCAP_V6};

/// The prefixes edgelb nodes take the outer source addresses of tunnelled packets from
/// (`lb_common::EncapConfig`), as `--from` values.
pub fn balancer_sources() -> Vec<String> {
    let [a, b] = DEFAULT_ENCAP_V4;
    let mut v6 = [0u8; 16];
    v6[..DEFAULT_ENCAP_V6.len()].copy_from_slice(&DEFAULT_ENCAP_V6);
    vec![
        format!(
            "{}/{}",
            Ipv4Addr::new(a, b, 0, 0),
            8 * DEFAULT_ENCAP_V4.len()
        ),
        format!("{}/{}", Ipv6Addr::from(v6), 8 * DEFAULT_ENCAP_V6.len()),
    ]
}

/// An nftables ruleset that drops IP-in-IP and IPv6-in-IP from outer sources outside `from`,
/// for hosts whose kernel tunnel devices would otherwise decapsulate them from anyone.
fn tunnel_firewall(from: &[String]) -> String {
    let (v6, v4): (Vec<&str>, Vec<&str>) = from
        .iter()
        .map(String::as_str)
        .partition(|f| f.contains(':'));
    let rule = |family: &str, list: &[&str]| {
        if list.is_empty() {
            format!("    meta nfproto {family} meta l4proto {{ 4, 41 }} drop\n")
        } else {
            let saddr = if family == "ipv4" { "ip" } else { "ip6" };
            format!(
                "    meta l4proto {{ 4, 41 }} {saddr} saddr != {{ {} }} drop\n",
                list.join(", ")
            )
        }
    };
    format!(
        "nft -f - <<'EOF'\ntable inet edgelb_tunnels {{\n  chain input {{\n    \
         type filter hook input priority filter - 10; policy accept;\n{}{}  }}\n}}\nEOF\n",
        rule("ipv4", &v4),
        rule("ipv6", &v6)
    )
}

/// The setup script for a backend with `vips` reached through interface `iface`, whose
/// tunnelled packets come from the outer source prefixes `from`.
pub fn script(vips: &[String], iface: &str, from: &[String]) -> String {
    let mut out = String::new();
    out.push_str("# --- on every backend of a tcp/udp listener (as root) ---\n\n");
    out.push_str(
        "# 1. The VIP is an address of the backend, on lo, so its services accept it and\n",
    );
    out.push_str("#    answer from it. It must not answer ARP/ND for it on the network: the\n");
    out.push_str("#    edgelb nodes (or the router's ECMP route to them) own the VIP there.\n");
    for vip in vips {
        let len = if vip.contains(':') { 128 } else { 32 };
        out.push_str(&format!("ip addr add {vip}/{len} dev lo\n"));
    }
    out.push_str("sysctl -w net.ipv4.conf.all.arp_ignore=1     # answer ARP only for addresses of the asked interface\n");
    out.push_str(
        "sysctl -w net.ipv4.conf.all.arp_announce=2   # never announce the VIP as a source\n",
    );
    out.push_str("# Decapsulated packets arrive with the client's source on an interface the\n");
    out.push_str("# reverse route may not point to: strict reverse-path filtering drops them.\n");
    out.push_str("sysctl -w net.ipv4.conf.all.rp_filter=0\n");
    out.push_str(&format!("sysctl -w net.ipv4.conf.{iface}.rp_filter=0\n"));
    out.push_str("sysctl -w net.ipv4.conf.lo.rp_filter=0\n\n");
    out.push_str("# 2. Decapsulation, only of packets from the edgelb nodes: their outer source\n");
    out.push_str("#    lies in these prefixes (shared by all nodes; not their own addresses):\n");
    out.push_str(&format!("#    {}\n", from.join(" ")));
    out.push_str(
        "#    From anyone else, a tunnelled packet would reach the VIP around the nodes'\n",
    );
    out.push_str("#    access control. The check is by address: the network must drop packets\n");
    out.push_str(
        "#    from outside with a source in those prefixes before they reach a backend.\n",
    );
    out.push_str(
        "# 2a. Where the kernel has IP-in-IP tunnels (CONFIG_NET_IPIP, CONFIG_IPV6_TUNNEL);\n",
    );
    out.push_str("#     the firewall drops tunnelled packets from other sources, which the\n");
    out.push_str("#     devices would accept:\n");
    out.push_str("ip link add name ipip0 type ipip external && ip link set ipip0 up\n");
    out.push_str("ip link add name ip6tnl0 type ip6tnl external && ip link set ip6tnl0 up\n");
    out.push_str("sysctl -w net.ipv4.conf.ipip0.rp_filter=0\n");
    out.push_str(&tunnel_firewall(from));
    out.push('\n');
    out.push_str(
        "# 2b. Where it has none (check: zcat /proc/config.gz | grep -E 'NET_IPIP|IPV6_TUNNEL'),\n",
    );
    out.push_str(
        "#     edgelb's own XDP decapsulator (as a service; it detaches on exit); it drops\n",
    );
    out.push_str("#     tunnelled packets for the VIPs from outside the --from prefixes itself:\n");
    let flags: Vec<String> = vips
        .iter()
        .map(|v| format!("--vip {v}"))
        .chain(from.iter().map(|f| format!("--from {f}")))
        .collect();
    out.push_str(&format!(
        "edgelb decap --iface {iface} {}\n\n",
        flags.join(" ")
    ));
    out.push_str(
        "# 3. MTU: the outer header adds 20 (IPv4) or 40 (IPv6) bytes. Links between the\n",
    );
    out.push_str("#    edgelb nodes and the backends need that much more MTU than the clients'\n");
    out.push_str("#    path (e.g. 1540 behind a 1500 edge), or clients need a lower MSS.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_names_every_vip_the_interface_and_the_trusted_sources() {
        let s = script(
            &["10.100.0.1".into(), "fd00:100::1".into()],
            "eth1",
            &balancer_sources(),
        );
        for line in [
            "ip addr add 10.100.0.1/32 dev lo",
            "ip addr add fd00:100::1/128 dev lo",
            "sysctl -w net.ipv4.conf.eth1.rp_filter=0",
            "edgelb decap --iface eth1 --vip 10.100.0.1 --vip fd00:100::1 --from 172.16.0.0/16 --from fd00:e1b::/96\n",
            "    meta l4proto { 4, 41 } ip saddr != { 172.16.0.0/16 } drop",
            "    meta l4proto { 4, 41 } ip6 saddr != { fd00:e1b::/96 } drop",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
    }

    #[test]
    fn a_family_without_trusted_sources_has_its_tunnels_dropped() {
        let s = script(
            &["10.100.0.1".into()],
            "eth0",
            &["10.2.0.0/16".into(), "10.9.0.1".into()],
        );
        for line in [
            "--vip 10.100.0.1 --from 10.2.0.0/16 --from 10.9.0.1\n",
            "    meta l4proto { 4, 41 } ip saddr != { 10.2.0.0/16, 10.9.0.1 } drop",
            "    meta nfproto ipv6 meta l4proto { 4, 41 } drop",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
    }
}
