//! A routed topology for L4 (XDP, IP-in-IP) load balancing: clients behind a router, two
//! edgelb nodes that the router reaches the VIP through (one, or both by ECMP), and three
//! backends that answer clients directly (direct server return). Made of network namespaces
//! with unique names, deleted on drop, so tests run in parallel.
//!
//! ```text
//!                                      ┌── lb1 10.2.1.2  fd00:2:1::2   (edgelb, XDP)
//!  client ── router ─(VIP route: lb1,  ┤
//!  10.1.0.2   10.1.0.1  or ECMP)       └── lb2 10.2.2.2  fd00:2:2::2   (edgelb, XDP)
//!  sources:            ── be1 10.3.1.2  fd00:3:1::2  ┐
//!  10.0.1.1-254/32     ── be2 10.3.2.2  fd00:3:2::2  ├ VIP 10.100.0.1, fd00:100::1 on lo,
//!  fd00:c::1-16/128    ── be3 10.3.3.2  fd00:3:3::2  ┘ `edgelb decap`, servers on :8080
//! ```
//!
//! A client's packet to the VIP goes client → router → lb; the lb's XDP program wraps it in an
//! outer IP header addressed to the chosen backend and sends it back out (`XDP_TX`) to the
//! router, which forwards it to the backend; the backend's reply goes backend → router →
//! client and never crosses the lb. The lb nodes have no VIP configured: nothing but their XDP
//! program ever sees VIP traffic.
//!
//! # Setting up a backend for L4 listeners
//!
//! A backend of an L4 (TCP/UDP) listener receives the client's packets unchanged inside an
//! IP-in-IP (or IPv6-in-IP…) packet addressed to the backend's own address, and answers the
//! client directly, from the VIP. It needs:
//! - **the VIP on a local interface**, usually `lo`, as a host address so that it answers for
//!   it without routing it: `ip addr add 10.100.0.1/32 dev lo`,
//!   `ip addr add fd00:100::1/128 dev lo`;
//! - **no ARP for the VIP**: `net.ipv4.conf.all.arp_ignore=1` (answer ARP only for addresses
//!   of the interface asked on, so it never claims the VIP on the LAN) and
//!   `net.ipv4.conf.all.arp_announce=2` (never use the VIP as the source of its own ARP
//!   requests);
//! - **reverse-path filtering off** for the interface the tunnelled packets arrive on:
//!   `net.ipv4.conf.all.rp_filter=0` and `net.ipv4.conf.IFACE.rp_filter=0` (the kernel uses
//!   the larger of the two). A decapsulated packet comes from the client's address on an
//!   interface the reply may not leave through;
//! - **decapsulation**: `edgelb decap --iface IFACE --vip 10.100.0.1 --vip fd00:100::1
//!   --from 172.16.0.0/16 --from fd00:e1b::/96` (an XDP program that strips the outer header of
//!   packets for those VIPs whose outer source lies in a `--from` prefix, drops the tunnelled
//!   packets for the VIPs from any other source, and passes the rest), or an `ipip`/`ip6tnl`
//!   tunnel device where the kernel has one (with a firewall rule doing what `--from` does);
//! - **trusted outer sources**: `--from` (required) names where the edgelb nodes' tunnelled
//!   packets come from. Their outer source is not a node's own address but one of the outer
//!   source prefixes the nodes share (172.16.0.0/16 and fd00:e1b::/96, the low bits a hash of
//!   the client, for the backends' RSS). Anyone else who can reach the backend could
//!   otherwise tunnel packets to the VIP around the balancers' access control. The check is
//!   by address only: the network in front of the backends must not let outside packets in
//!   with a source in those prefixes (anti-spoofing at the edge);
//! - on the edgelb node's side, **complete checksums** in the frames it receives: a NIC
//!   delivers them so, but a veth fed by a local stack (containers, this topology) may pass
//!   frames whose TCP/UDP checksum was left to offload, which XDP forwards as they are and the
//!   backend then drops; turn checksum offload off on the sending side
//!   (`ethtool -K IFACE tx off`);
//! - **MTU**: the links between the edgelb node and the backend carry the client's packets
//!   plus the outer header, 20 bytes (IPv4) or 40 (IPv6). At the same MTU as the clients'
//!   (here 1500 everywhere) edgelb answers packets that would not fit with ICMP "too big", and
//!   clients doing path MTU discovery (every TCP stack; UDP with don't-fragment) send smaller
//!   ones; fragments (never don't-fragment) that would not fit are dropped and counted
//!   `too_big`. Links 20/40 bytes larger than the clients' avoid both (jumbo frames);
//! - **servers bound to the VIP or a wildcard**. A UDP server must answer from the VIP: bind
//!   it to the VIP (or use `IP_PKTINFO`), since a wildcard socket's answer leaves from the
//!   address the route picks.
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use edgelb::decap::balancer_sources;
use socket2::{Domain, Protocol, Socket, Type};

use crate::backend::BackendProcess;
use crate::certs::TempDir;
use crate::daemon::Daemon;
use crate::netns::{Netns, in_netns, ip, unique};

pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
/// The port of the backends' servers (TCP: HTTP; UDP: echo), and of the tests' listeners.
pub const PORT: u16 = 8080;
pub const LBS: usize = 2;
pub const BACKENDS: usize = 3;
/// Client sources `10.0.1.1` to `10.0.1.254`.
pub const CLIENT_V4_SOURCES: u8 = 254;
/// Client sources `fd00:c::1` to `fd00:c::16` (hex).
pub const CLIENT_V6_SOURCES: u16 = 0x16;

/// The client's link: the MTU clients see.
const CLIENT_MTU: &str = "1500";
/// Every link behind the router (router–lb, router–backend), as [`L4Topo::new`] makes them:
/// the same as the clients'. A client packet plus the outer header (20 or 40 bytes) then does
/// not fit; edgelb answers it with ICMP "fragmentation needed" / "packet too big", and the
/// client's path MTU discovery sends smaller ones. [`L4Topo::with_inner_mtu`] makes room
/// instead, as an operator can with jumbo frames behind the balancers.
pub const INNER_MTU: u32 = 1500;

pub const fn vip(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(VIP_V6)
    } else {
        IpAddr::V4(VIP_V4)
    }
}

pub fn vip_addr(v6: bool) -> SocketAddr {
    SocketAddr::new(vip(v6), PORT)
}

/// Client source `i` (1..=254): `10.0.1.i`.
pub fn client_v4(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, i))
}

/// Client source `i` (1..=0x16): `fd00:c::i`.
pub fn client_v6(i: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, i))
}

/// Backend `n`'s (0-based) own address: `10.3.(n+1).2` or `fd00:3:(n+1)::2`.
pub fn backend_addr(n: usize, v6: bool) -> IpAddr {
    let k = n as u8 + 1;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 3, k.into(), 0, 0, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 3, k, 2))
    }
}

/// Backend `n`'s name, as its servers answer: `be1`, `be2`, `be3`.
pub fn backend_name(n: usize) -> String {
    format!("be{}", n + 1)
}

/// The lb node `k`'s (0-based) address on its link: `10.2.(k+1).2` or `fd00:2:(k+1)::2`.
pub fn lb_addr(k: usize, v6: bool) -> IpAddr {
    let k = k as u8 + 1;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 2, k.into(), 0, 0, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 2, k, 2))
    }
}

/// The `--from` flags of the backends' `edgelb decap`: the edgelb nodes' outer source
/// prefixes, then `extra` (addresses or prefixes).
pub fn decap_from(extra: &[IpAddr]) -> Vec<String> {
    balancer_sources()
        .iter()
        .map(ToString::to_string)
        .chain(extra.iter().map(ToString::to_string))
        .flat_map(|net| ["--from".to_string(), net])
        .collect()
}

/// A `[[group]]` table balancing `backends` (TOML strings, comma-separated) by source IP, as
/// tcp/udp listeners need, checking each backend's TCP port every second (one failure flips
/// it).
pub fn source_hash_group(name: &str, backends: &str) -> String {
    format!(
        r#"
[[group]]
name = "{name}"
backend = [{backends}]
algorithm = "source-ip-hash"
health_check = "tcp"
hc_interval = 1
hc_timeout = 1
hc_retries = 1
"#
    )
}

/// A veth pair between the router and another namespace.
pub struct Link {
    /// The router's end.
    pub router_if: String,
    /// The other namespace's end.
    pub far_if: String,
}

/// The topology. Fields drop in order: the processes first, then the namespaces.
pub struct L4Topo {
    servers: Vec<Option<BackendProcess>>,
    /// `edgelb decap` on each backend's link.
    pub backend_decaps: Vec<Daemon>,
    /// An XDP program (`edgelb decap` without VIPs: it passes everything) on the router's end
    /// of each lb link. A veth delivers the frames its peer sends with `XDP_TX` only when it
    /// has a native XDP program itself.
    pub router_xdp: Vec<Daemon>,
    /// Where the daemons' logs go (the tests' edgelb logs too).
    pub logs: TempDir,
    pub client: Netns,
    pub router: Netns,
    pub lbs: Vec<Netns>,
    pub backends: Vec<Netns>,
    pub client_link: Link,
    pub lb_links: Vec<Link>,
    pub backend_links: Vec<Link>,
}

/// Writes `value` to each `/proc/sys/` `keys` (dotted, as sysctl names them) inside `ns`.
fn sysctls(ns: &Netns, keys: &[String], value: &str) {
    let keys: Vec<String> = keys.to_vec();
    let value = value.to_string();
    in_netns(&ns.path(), move || {
        for k in keys {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            std::fs::write(&path, &value).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
    });
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `ip -n NS -batch -` with `commands`, one a line; panics with ip's error on the first failure.
fn batch(ns: &Netns, commands: &str) {
    let mut child = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(commands.as_bytes())
        .expect("write to ip -batch");
    let out = child.wait_with_output().expect("ip -batch runs");
    assert!(
        out.status.success(),
        "ip -n {} -batch failed: {}\ncommands:\n{commands}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ethtool -K IFACE FEATURES` inside `ns`.
fn ethtool(ns: &Netns, iface: &str, features: &[&str]) {
    let out = ns
        .command("ethtool")
        .args(["-K", iface])
        .args(features)
        .output()
        .expect("run ethtool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "ethtool -K {iface} {features:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair `router_ns` ⇔ `far_ns`.
fn link(router: &Netns, far: &Netns, tag: &str) -> Link {
    let link = Link {
        router_if: unique(&format!("r{tag}")),
        far_if: unique(tag),
    };
    ip(&[
        "link",
        "add",
        &link.router_if,
        "netns",
        &router.name,
        "type",
        "veth",
        "peer",
        "name",
        &link.far_if,
        "netns",
        &far.name,
    ]);
    link
}

impl L4Topo {
    /// Builds the topology with the VIP routed to lb1 (nothing answers for it until edgelb
    /// runs there), the backends' decap programs and servers running.
    pub fn new() -> Self {
        Self::with_inner_mtu(INNER_MTU)
    }

    /// As [`L4Topo::new`], with links of MTU `inner_mtu` behind the router.
    pub fn with_inner_mtu(inner_mtu: u32) -> Self {
        let topo = Self::build(LBS, inner_mtu);
        topo.route_vip_via_lbs(&[0]);
        topo
    }

    /// As [`L4Topo::new`] with `lbs` lb nodes and no route to the VIPs at the router: the
    /// test makes one (BGP).
    pub fn with_lbs(lbs: usize) -> Self {
        Self::build(lbs, INNER_MTU)
    }

    fn build(lb_count: usize, inner_mtu: u32) -> Self {
        let client = Netns::new("l4c");
        let router = Netns::new("l4r");
        let lbs: Vec<Netns> = (0..lb_count).map(|_| Netns::new("l4l")).collect();
        let backends: Vec<Netns> = (0..BACKENDS).map(|_| Netns::new("l4b")).collect();
        // Before the links exist, so that they inherit the defaults: no duplicate address
        // detection (addresses usable at once) and no reverse-path filter anywhere.
        for ns in [&client, &router].into_iter().chain(&lbs).chain(&backends) {
            sysctls(
                ns,
                &keys(&[
                    "net.ipv6.conf.all.accept_dad",
                    "net.ipv6.conf.default.accept_dad",
                    "net.ipv4.conf.all.rp_filter",
                    "net.ipv4.conf.default.rp_filter",
                ]),
                "0",
            );
        }
        let client_link = link(&router, &client, "l4c");
        let lb_links: Vec<Link> = lbs.iter().map(|ns| link(&router, ns, "l4l")).collect();
        let backend_links: Vec<Link> = backends.iter().map(|ns| link(&router, ns, "l4b")).collect();

        // The router: forwards both families, hashes multipath routes on the 5-tuple (the
        // policy only matters once the VIP route has several next hops).
        sysctls(
            &router,
            &keys(&[
                "net.ipv4.ip_forward",
                "net.ipv6.conf.all.forwarding",
                "net.ipv4.fib_multipath_hash_policy",
                "net.ipv6.fib_multipath_hash_policy",
            ]),
            "1",
        );
        let mut r = format!(
            "link set {c} mtu {CLIENT_MTU} up\n\
             address add 10.1.0.1/24 dev {c}\n\
             address add fd00:1::1/64 dev {c} nodad\n\
             route add 10.0.1.0/24 via 10.1.0.2\n\
             route add fd00:c::/64 via fd00:1::2\n",
            c = client_link.router_if
        );
        for (k, l) in lb_links.iter().enumerate() {
            r += &format!(
                "link set {i} mtu {inner_mtu} up\n\
                 address add 10.2.{n}.1/24 dev {i}\n\
                 address add fd00:2:{n}::1/64 dev {i} nodad\n",
                i = l.router_if,
                n = k + 1
            );
        }
        for (k, l) in backend_links.iter().enumerate() {
            r += &format!(
                "link set {i} mtu {inner_mtu} up\n\
                 address add 10.3.{n}.1/24 dev {i}\n\
                 address add fd00:3:{n}::1/64 dev {i} nodad\n",
                i = l.router_if,
                n = k + 1
            );
        }
        batch(&router, &r);
        // Checksums filled in before frames reach an lb node, as on a wire. A veth passes on
        // a locally sent (here: forwarded) packet with its TCP/UDP checksum left to "the
        // hardware" (CHECKSUM_PARTIAL: only the pseudo-header sum is in the packet); the lb's
        // XDP program sees the bytes only, XDP_TX sends them on as they are, and the backend
        // drops the packet (TcpInCsumErrors). With checksum offload off on the router's end,
        // the router's stack computes each checksum before the frame leaves.
        for l in &lb_links {
            ethtool(&router, &l.router_if, &["tx", "off"]);
        }

        // The client: every source address on its one link, default routes via the router.
        // arp_announce=2: its ARP requests come from 10.1.0.2, not from a source the router
        // has no subnet for.
        sysctls(&client, &keys(&["net.ipv4.conf.all.arp_announce"]), "2");
        let c = &client_link.far_if;
        let mut cmds = format!(
            "link set {c} mtu {CLIENT_MTU} up\n\
             address add 10.1.0.2/24 dev {c}\n\
             address add fd00:1::2/64 dev {c} nodad\n\
             route add default via 10.1.0.1\n\
             route add ::/0 via fd00:1::1\n"
        );
        for i in 1..=CLIENT_V4_SOURCES {
            cmds += &format!("address add {}/32 dev {c}\n", client_v4(i));
        }
        for i in 1..=CLIENT_V6_SOURCES {
            cmds += &format!("address add {}/128 dev {c} nodad\n", client_v6(i));
        }
        batch(&client, &cmds);
        // Packets of at most the MTU from the client, as from the Internet: no segmentation
        // offload, so each packet the router forwards (and counts) is one frame on the wire.
        ethtool(&client, c, &["tso", "off", "gso", "off"]);

        // The lb nodes: an address on their link and default routes via the router; no VIP.
        for (k, (ns, l)) in lbs.iter().zip(&lb_links).enumerate() {
            batch(
                ns,
                &format!(
                    "link set {i} mtu {inner_mtu} up\n\
                     address add 10.2.{n}.2/24 dev {i}\n\
                     address add fd00:2:{n}::2/64 dev {i} nodad\n\
                     route add default via 10.2.{n}.1\n\
                     route add ::/0 via fd00:2:{n}::1\n",
                    i = l.far_if,
                    n = k + 1
                ),
            );
        }

        // The backends, as the module documentation says.
        for (k, (ns, l)) in backends.iter().zip(&backend_links).enumerate() {
            let i = &l.far_if;
            sysctls(
                ns,
                &[
                    "net.ipv4.conf.all.rp_filter".to_string(),
                    format!("net.ipv4.conf.{i}.rp_filter"),
                ],
                "0",
            );
            sysctls(ns, &keys(&["net.ipv4.conf.all.arp_ignore"]), "1");
            sysctls(ns, &keys(&["net.ipv4.conf.all.arp_announce"]), "2");
            batch(
                ns,
                &format!(
                    "link set {i} mtu {inner_mtu} up\n\
                     address add 10.3.{n}.2/24 dev {i}\n\
                     address add fd00:3:{n}::2/64 dev {i} nodad\n\
                     address add {VIP_V4}/32 dev lo\n\
                     address add {VIP_V6}/128 dev lo nodad\n\
                     route add default via 10.3.{n}.1\n\
                     route add ::/0 via fd00:3:{n}::1\n",
                    n = k + 1
                ),
            );
        }

        let logs = TempDir::new();
        let mut topo = L4Topo {
            servers: Vec::new(),
            backend_decaps: Vec::new(),
            router_xdp: Vec::new(),
            logs,
            client,
            router,
            lbs,
            backends,
            client_link,
            lb_links,
            backend_links,
        };
        // The XDP programs, loaded in parallel (each takes a moment to load).
        let vip4 = VIP_V4.to_string();
        let vip6 = VIP_V6.to_string();
        let from = decap_from(&[]);
        let from: Vec<&str> = from.iter().map(String::as_str).collect();
        let (decaps, router_xdp) = std::thread::scope(|s| {
            let decaps: Vec<_> = topo
                .backends
                .iter()
                .zip(&topo.backend_links)
                .map(|(ns, l)| {
                    let (logs, vip4, vip6, from) = (topo.logs.path(), &vip4, &vip6, &from);
                    s.spawn(move || {
                        let args = ["decap", "--iface", &l.far_if, "--vip", vip4, "--vip", vip6];
                        Daemon::start(Some(ns), &[&args[..], from].concat(), logs)
                    })
                })
                .collect();
            let router_xdp: Vec<_> = topo
                .lb_links
                .iter()
                .map(|l| {
                    let (router, logs, from) = (&topo.router, topo.logs.path(), &from);
                    s.spawn(move || {
                        // Only a program on the peer for XDP_TX: --vip and --from are
                        // required, and no packet is ever tunnelled to this VIP.
                        let args = ["decap", "--iface", &l.router_if, "--vip", PASS_ONLY_VIP];
                        Daemon::start(Some(router), &[&args[..], from].concat(), logs)
                    })
                })
                .collect();
            let join = |h: std::thread::ScopedJoinHandle<'_, Daemon>| {
                h.join()
                    .unwrap_or_else(|_| panic!("starting an XDP program failed"))
            };
            (
                decaps.into_iter().map(join).collect::<Vec<_>>(),
                router_xdp.into_iter().map(join).collect::<Vec<_>>(),
            )
        });
        topo.backend_decaps = decaps;
        topo.router_xdp = router_xdp;
        for n in 0..BACKENDS {
            topo.servers.push(None);
            topo.start_server(n);
        }
        topo
    }

    /// Replaces backend `n`'s `edgelb decap` by one that also trusts the outer sources
    /// `extra`; returns the old one's exit status and log (its counters at exit).
    pub fn restart_decap(
        &mut self,
        n: usize,
        extra: &[IpAddr],
    ) -> (std::process::ExitStatus, String) {
        let args = [
            "decap",
            "--iface",
            &self.backend_links[n].far_if,
            "--vip",
            &VIP_V4.to_string(),
            "--vip",
            &VIP_V6.to_string(),
        ]
        .map(String::from)
        .into_iter()
        .chain(decap_from(extra))
        .collect::<Vec<_>>();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Stopped first: a second program would not replace the first on the interface.
        let old = self.backend_decaps.remove(n).stop();
        let fresh = Daemon::start(Some(&self.backends[n]), &args, self.logs.path());
        self.backend_decaps.insert(n, fresh);
        old
    }

    /// Gives lb node `k` a second link to the router, `10.4.(k+1).0/24` and
    /// `fd00:4:(k+1)::/64`, and routes the backends' networks over it: a dual-homed node,
    /// clients on one interface, backends behind the other. Frames the XDP program forwards
    /// must then leave by another interface than they came in on. The router's end gets a
    /// pass-all XDP program, without which a veth takes no frames redirected into its peer.
    pub fn add_backend_link(&mut self, k: usize) -> Link {
        let l = link(&self.router, &self.lbs[k], "l4n");
        let n = k + 1;
        batch(
            &self.router,
            &format!(
                "link set {i} mtu {INNER_MTU} up\n\
                 address add 10.4.{n}.1/24 dev {i}\n\
                 address add fd00:4:{n}::1/64 dev {i} nodad\n",
                i = l.router_if
            ),
        );
        batch(
            &self.lbs[k],
            &format!(
                "link set {i} mtu {INNER_MTU} up\n\
                 address add 10.4.{n}.2/24 dev {i}\n\
                 address add fd00:4:{n}::2/64 dev {i} nodad\n\
                 route add 10.3.0.0/16 via 10.4.{n}.1\n\
                 route add fd00:3::/32 via fd00:4:{n}::1\n",
                i = l.far_if
            ),
        );
        let from = decap_from(&[]);
        let args: Vec<&str> = ["decap", "--iface", &l.router_if, "--vip", PASS_ONLY_VIP]
            .into_iter()
            .chain(from.iter().map(String::as_str))
            .collect();
        let pass = Daemon::start(Some(&self.router), &args, self.logs.path());
        self.router_xdp.push(pass);
        l
    }

    /// Starts backend `n`'s servers (TCP: HTTP on `[::]:PORT`, answering `x-backend: beN`;
    /// UDP: echo on the VIPs, answering `backend beN <datagram>`).
    pub fn start_server(&mut self, n: usize) {
        let udp = [
            SocketAddr::new(vip(false), PORT).to_string(),
            SocketAddr::new(vip(true), PORT).to_string(),
        ];
        let udp: Vec<&str> = udp.iter().map(String::as_str).collect();
        let p = BackendProcess::start_in(
            Some(&self.backends[n]),
            &backend_name(n),
            &format!("[::]:{PORT}"),
            &udp,
        );
        self.servers[n] = Some(p);
    }

    /// Kills backend `n`'s servers the way a crash would: the kernel closes every socket, and
    /// connections to the port are refused from then on.
    pub fn kill_server(&mut self, n: usize) {
        if let Some(p) = self.servers[n].take() {
            p.kill();
        }
    }

    /// Routes the VIPs (at the router) through the lb nodes `lbs` (indices): one next hop, or
    /// a multipath (ECMP) route over several, as BGP announcements from each would. Taking a
    /// node out of the list is a withdrawal.
    pub fn route_vip_via_lbs(&self, lbs: &[usize]) {
        assert!(!lbs.is_empty(), "at least one lb node");
        self.route_vip(
            &lbs.iter()
                .map(|&k| (lb_addr(k, false), lb_addr(k, true)))
                .collect::<Vec<_>>(),
        );
    }

    /// Routes the VIPs straight to the backends `backends` (indices; several: ECMP), no load
    /// balancer on the path: a check of the addressing, routes and reply path.
    pub fn route_vip_to_backends(&self, backends: &[usize]) {
        assert!(!backends.is_empty(), "at least one backend");
        self.route_vip(
            &backends
                .iter()
                .map(|&n| (backend_addr(n, false), backend_addr(n, true)))
                .collect::<Vec<_>>(),
        );
    }

    /// The router's routes to the VIPs, as `ip route show` prints them.
    pub fn vip_routes(&self) -> String {
        self.router.ip(&["route", "show", &format!("{VIP_V4}/32")])
            + &self
                .router
                .ip(&["-6", "route", "show", &format!("{VIP_V6}/128")])
    }

    /// The value of sysctl `key` (dotted) inside `ns`.
    pub fn sysctl(ns: &Netns, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        in_netns(&ns.path(), move || std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("read {key}: {e}"))
            .trim()
            .to_string()
    }

    fn route_vip(&self, hops: &[(IpAddr, IpAddr)]) {
        let route = |prefix: String, hops: Vec<IpAddr>| {
            let mut cmd = format!("route replace {prefix}");
            if hops.len() == 1 {
                cmd += &format!(" via {}", hops[0]);
            } else {
                for h in hops {
                    cmd += &format!(" nexthop via {h}");
                }
            }
            cmd + "\n"
        };
        batch(
            &self.router,
            &(route(format!("{VIP_V4}/32"), hops.iter().map(|h| h.0).collect())
                + &route(format!("{VIP_V6}/128"), hops.iter().map(|h| h.1).collect())),
        );
    }

    /// Installs nftables counters in the router's forward path, read with
    /// [`L4Topo::counter`]: `to_lbK` (packets to a VIP sent to lb node K, 1-based),
    /// `vip_via_lbK` (TCP and UDP packets from a VIP, i.e. backends' replies, sent to or
    /// coming from lb node K: there should be none; lb nodes do answer from the VIP with ICMP
    /// "too big") and `vip_direct` (replies from a VIP forwarded from a
    /// backend's link to the client's).
    pub fn count_vip_traffic(&self) {
        let mut rules = String::new();
        let mut counters = String::from("counter vip_direct {}\n");
        for (k, l) in self.lb_links.iter().enumerate() {
            let (to, via, i) = (
                format!("to_lb{}", k + 1),
                format!("vip_via_lb{}", k + 1),
                &l.router_if,
            );
            counters += &format!("counter {to} {{}}\ncounter {via} {{}}\n");
            rules += &format!(
                "oifname \"{i}\" ip daddr {VIP_V4} counter name {to}\n\
                 oifname \"{i}\" ip6 daddr {VIP_V6} counter name {to}\n\
                 oifname \"{i}\" ip saddr {VIP_V4} meta l4proto {{ tcp, udp }} counter name {via}\n\
                 oifname \"{i}\" ip6 saddr {VIP_V6} meta l4proto {{ tcp, udp }} counter name {via}\n\
                 iifname \"{i}\" ip saddr {VIP_V4} meta l4proto {{ tcp, udp }} counter name {via}\n\
                 iifname \"{i}\" ip6 saddr {VIP_V6} meta l4proto {{ tcp, udp }} counter name {via}\n"
            );
        }
        for l in &self.backend_links {
            let (b, c) = (&l.router_if, &self.client_link.router_if);
            rules += &format!(
                "iifname \"{b}\" oifname \"{c}\" ip saddr {VIP_V4} counter name vip_direct\n\
                 iifname \"{b}\" oifname \"{c}\" ip6 saddr {VIP_V6} counter name vip_direct\n"
            );
        }
        self.nft_counters("l4test", &counters, &rules);
    }

    /// Installs nftables counters of tunnelled (IPv4-in-IPv4) packets the router forwards to
    /// each backend, by the inner protocol: `tcp_beN` and `udp_beN` (1-based), read with
    /// [`L4Topo::counter_in`]`("l4inner", ..)`.
    pub fn count_tunnelled(&self) {
        let (mut counters, mut rules) = (String::new(), String::new());
        for (n, l) in self.backend_links.iter().enumerate() {
            for (proto, number) in [("tcp", 6), ("udp", 17)] {
                let name = format!("{proto}_be{}", n + 1);
                counters += &format!("counter {name} {{}}\n");
                // The inner protocol is byte 9 of the inner header, after 20 outer bytes.
                rules += &format!(
                    "oifname \"{}\" ip protocol 4 @nh,232,8 {number} counter name {name}\n",
                    l.router_if
                );
            }
        }
        self.nft_counters("l4inner", &counters, &rules);
    }

    /// Adds table `table` to the router: `counters`, and `rules` in its forward path.
    fn nft_counters(&self, table: &str, counters: &str, rules: &str) {
        let ruleset = format!(
            "table inet {table} {{\n{counters}chain forward {{\n\
             type filter hook forward priority 0; policy accept;\n{rules}}}\n}}\n"
        );
        let mut child = self
            .router
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run nft (cargo xtask setup installs nftables)");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(ruleset.as_bytes())
            .expect("write to nft");
        let out = child.wait_with_output().expect("nft runs");
        assert!(
            out.status.success(),
            "nft -f failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Packets counted so far by the router's counter `name` ([`L4Topo::count_vip_traffic`]).
    pub fn counter(&self, name: &str) -> u64 {
        self.counter_in("l4test", name)
    }

    /// Packets counted so far by the router's counter `name` in nftables table `table`.
    pub fn counter_in(&self, table: &str, name: &str) -> u64 {
        let out = self
            .router
            .command("nft")
            .args(["list", "counter", "inet", table, name])
            .output()
            .expect("nft runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no packets in nft's counter {name}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// The lb node (0-based) the router's VIP route sends the TCP connection `local` →
    /// VIP:PORT through (the kernel's own multipath choice, asked with `ip route get`).
    pub fn lb_of_connection(&self, local: SocketAddr) -> usize {
        let v6 = local.is_ipv6();
        let mut args = Vec::new();
        if v6 {
            args.push("-6".to_string());
        }
        args.extend(
            [
                "route",
                "get",
                &vip(v6).to_string(),
                "from",
                &local.ip().to_string(),
                "iif",
                &self.client_link.router_if,
                "ipproto",
                "tcp",
                "sport",
                &local.port().to_string(),
                "dport",
                &PORT.to_string(),
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.router.ip(&args);
        (0..self.lbs.len())
            .find(|&k| out.contains(&format!("via {} ", lb_addr(k, v6))))
            .unwrap_or_else(|| panic!("{local}: the route goes through no lb node: {out}"))
    }

    /// The sockets of `ns` listening on (TCP) or bound to (UDP) port [`PORT`], as `ss` shows
    /// them.
    pub fn sockets_on_port(ns: &Netns) -> Vec<String> {
        let out = ns
            .command("ss")
            .args(["-Htuln"])
            .output()
            .expect("ss runs (iproute2)");
        let suffix = format!(":{PORT}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(4)
                    .is_some_and(|a| a.ends_with(&suffix))
            })
            .map(String::from)
            .collect()
    }

    /// A socket of the client namespace.
    fn client_socket(&self, dst: SocketAddr, ty: Type) -> io::Result<Socket> {
        let domain = Domain::for_address(dst);
        in_netns(&self.client.path(), move || Socket::new(domain, ty, None))
    }

    /// A TCP connection from client source `src` to `dst`; `timeout` bounds the connect and
    /// every later read and write.
    pub fn tcp_connect(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<HttpConn> {
        let s = self.client_socket(dst, Type::STREAM)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        s.connect_timeout(&dst.into(), timeout)?;
        let stream: TcpStream = s.into();
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            local: stream.local_addr()?,
            reader: BufReader::new(stream),
        })
    }

    /// The name of the backend that answers an HTTP request over a new TCP connection from
    /// `src` to `dst`.
    pub fn tcp_backend(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<String> {
        self.tcp_connect(src, dst, timeout)?.ask()
    }

    /// From the client namespace, what a balancer sends a backend, made by someone else: a UDP
    /// datagram from `inner_src` to the VIP of its family, port [`PORT`], inside an outer
    /// header from `outer_src` (an address of the client) to `outer_dst`. Returns the answer
    /// that comes back to `inner_src` within `wait`, if any: a backend that decapsulated the
    /// packet answers the client directly.
    pub fn udp_tunnelled_answer(
        &self,
        outer_src: IpAddr,
        outer_dst: IpAddr,
        inner_src: IpAddr,
        wait: Duration,
    ) -> io::Result<Option<String>> {
        let dst = vip_addr(inner_src.is_ipv6());
        let s = self.client_socket(dst, Type::DGRAM)?;
        s.bind(&SocketAddr::new(inner_src, 0).into())?;
        let socket: UdpSocket = s.into();
        socket.set_read_timeout(Some(wait))?;
        let port = socket.local_addr()?.port();
        let payload = format!("tunnelled from {outer_src}");
        let builder = match (inner_src, dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                etherparse::PacketBuilder::ipv4(s.octets(), d.octets(), 64)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64)
            }
            _ => unreachable!("the VIP is of the source's family"),
        }
        .udp(port, PORT);
        let mut inner = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut inner, payload.as_bytes())
            .map_err(io::Error::other)?;
        // The kernel writes the outer header: the raw socket's protocol is its next header.
        let next_header = if inner_src.is_ipv4() { 4 } else { 41 };
        let domain = Domain::for_address(SocketAddr::new(outer_dst, 0));
        let raw = in_netns(&self.client.path(), move || {
            Socket::new(domain, Type::RAW, Some(Protocol::from(next_header)))
        })?;
        raw.bind(&SocketAddr::new(outer_src, 0).into())?;
        raw.send_to(&inner, &SocketAddr::new(outer_dst, 0).into())?;
        let mut buf = [0u8; 2048];
        match socket.recv(&mut buf) {
            Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The name of the backend that answers a UDP datagram from `src` to `dst` (the answer
    /// must come from `dst` and echo the datagram).
    pub fn udp_backend(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<String> {
        let s = self.client_socket(dst, Type::DGRAM)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        let socket: UdpSocket = s.into();
        socket.connect(dst)?;
        socket.set_read_timeout(Some(timeout))?;
        udp_exchange(&socket, &format!("hello from {src}"))
    }

    /// A UDP socket from client source `src` connected to `dst`: one flow for as long as it
    /// is kept, for [`udp_exchange`].
    pub fn udp_flow(&self, src: IpAddr, dst: SocketAddr, timeout: Duration) -> UdpSocket {
        let flow = || -> io::Result<UdpSocket> {
            let s = self.client_socket(dst, Type::DGRAM)?;
            s.bind(&SocketAddr::new(src, 0).into())?;
            let socket: UdpSocket = s.into();
            socket.connect(dst)?;
            socket.set_read_timeout(Some(timeout))?;
            Ok(socket)
        };
        flow().unwrap_or_else(|e| panic!("UDP socket {src} -> {dst}: {e}"))
    }
}

/// Sends `payload` on the connected `socket` and returns the name of the backend that echoed
/// it.
pub fn udp_exchange(socket: &UdpSocket, payload: &str) -> io::Result<String> {
    socket.send(payload.as_bytes())?;
    let mut buf = vec![0u8; 65_536];
    let n = socket.recv(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    reply
        .strip_prefix("backend ")
        .and_then(|r| r.strip_suffix(payload))
        .map(|name| name.trim().to_string())
        .ok_or_else(|| io::Error::other(format!("unexpected UDP answer {reply:?}")))
}

impl Default for L4Topo {
    fn default() -> Self {
        Self::new()
    }
}

/// An HTTP/1.1 connection to a backend's server (through a VIP), kept open between requests.
pub struct HttpConn {
    /// The client's end.
    pub local: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    /// Sends `GET /` and returns the answering backend's name (its `x-backend` header).
    pub fn ask(&mut self) -> io::Result<String> {
        self.reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nhost: vip\r\n\r\n")?;
        Ok(self.response()?.0)
    }

    /// Sends `POST /echo` with a body of `len` bytes (full-sized segments, each growing by
    /// the outer header on its way to the backend); returns the backend's name and the body
    /// length it received.
    pub fn upload(&mut self, len: usize) -> io::Result<(String, usize)> {
        let head = format!("POST /echo HTTP/1.1\r\nhost: vip\r\ncontent-length: {len}\r\n\r\n");
        let w = self.reader.get_mut();
        w.write_all(head.as_bytes())?;
        w.write_all(&vec![b'x'; len])?;
        let (backend, body) = self.response()?;
        let received = body
            .lines()
            .find_map(|l| l.strip_prefix("body-bytes: "))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no body-bytes in {body:?}")))?;
        Ok((backend, received))
    }

    /// Reads one response: the backend's name and the body.
    fn response(&mut self) -> io::Result<(String, String)> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(io::Error::other(format!("unexpected status line {line:?}")));
        }
        let (mut backend, mut length) = (None, 0usize);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "x-backend" => backend = Some(v.trim().to_string()),
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        let backend = backend.ok_or_else(|| io::Error::other("no x-backend header"))?;
        Ok((backend, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A VIP no test sends to: `edgelb decap` with only this one passes every packet, which makes
/// it the XDP program a veth peer needs for the other side's XDP_TX (see the toolchain notes).
pub const PASS_ONLY_VIP: &str = "10.255.255.254";
