//! The MAC address each L4 backend's packets must be sent to: the next hop of the kernel's
//! route towards the backend (its gateway, or the backend itself on a directly connected
//! network), looked up in the neighbour table. The XDP program cannot consult either table
//! cheaply, so the daemon resolves them and writes the result into `BACKENDS`.
//!
//! The tables are read over rtnetlink ([`rtnl`]), and the kernel's announcements of changes
//! ([`events`]) say when to read them again. A next hop's MAC changes when a router is
//! replaced or fails over to its peer, and every frame the XDP program sends to the old MAC
//! is lost until the new one is in `BACKENDS`: it has to follow within a fraction of a
//! second, not at the next poll. (This used to run `ip -json` every few seconds; polling
//! faster would cost a process per backend per poll and still lag.) A slow periodic look
//! remains, should an announcement be lost without the kernel saying so.
mod events;
pub(crate) mod rtnl;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use tracing::{info, warn};

pub use events::Watch;
use netlink_packet_route::route::RouteType;
pub use rtnl::NetlinkError;
use rtnl::{Route, Rtnl};

/// What is known of one backend's next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hop {
    /// The gateway, or the backend itself.
    addr: IpAddr,
    dev: String,
    /// All zero while the neighbour is not resolved.
    mac: [u8; 6],
    ifindex: u32,
    /// `dev`'s own MAC (all zero if it has no Ethernet address).
    dev_mac: [u8; 6],
}

/// Where a backend's frames go: to the next hop's MAC, out of the interface the route leaves
/// by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// All zero while not (yet) known.
    pub mac: [u8; 6],
    /// The interface's index (0 while not known).
    pub ifindex: u32,
    /// The interface's own MAC.
    pub iface_mac: [u8; 6],
}

impl Hop {
    fn next_hop(&self) -> NextHop {
        NextHop {
            mac: self.mac,
            ifindex: self.ifindex,
            iface_mac: self.dev_mac,
        }
    }
}

/// One L4 backend's next hop, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NextHopView {
    pub backend: String,
    /// The gateway, or the backend itself on a directly connected network.
    pub via: Option<String>,
    /// The interface the route leaves by.
    pub interface: Option<String>,
    /// None while the neighbour is not resolved (the backend then takes no frames).
    pub mac: Option<String>,
    /// Why the backend has no usable next hop, as logged.
    pub problem: Option<String>,
}

/// Why a backend has no usable next hop.
#[derive(Debug, thiserror::Error)]
enum HopProblem {
    #[error("no route to {dst}: {error}")]
    NoRoute { dst: IpAddr, error: NetlinkError },
    #[error("{0} is an address of this host")]
    Local(IpAddr),
    #[error("the route to {dst} is of type {kind:?}")]
    NotUnicast { dst: IpAddr, kind: RouteType },
    #[error("the route to {0} has no device")]
    NoDevice(IpAddr),
    #[error(
        "routed via {dev}, not an --xdp-iface ({ifaces}): its frames are redirected there, which a driver in native mode may refuse from an interface without an XDP program; give --xdp-iface {dev} too"
    )]
    NotXdpIface { dev: String, ifaces: String },
    #[error("next hop {addr} on {dev}: link-layer address {lladdr:02x?} is not Ethernet")]
    NotEthernet {
        addr: IpAddr,
        dev: String,
        lladdr: Vec<u8>,
    },
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
}

/// The next hops of the L4 backends. One owner (the daemon's main loop) looks them up and
/// writes them into the data plane.
#[derive(Default)]
pub struct NextHops {
    hops: HashMap<IpAddr, Hop>,
    /// Backends whose route problem was logged, so that it is logged once, not every refresh.
    reported: HashMap<IpAddr, String>,
    /// Opened at the first look (none is needed without L4 backends), and again after a
    /// socket error.
    kernel: Option<Rtnl>,
    /// The next hops' addresses, for [`Watch`] to pick the neighbour changes that matter.
    watched: events::Watched,
}

impl NextHops {
    /// The next hop of `backend`; its MAC all zero if not (yet) known.
    pub fn next_hop(&self, backend: IpAddr) -> NextHop {
        self.hops
            .get(&backend)
            .map(Hop::next_hop)
            .unwrap_or_default()
    }

    /// The next-hop MAC of `backend`, all zero if not (yet) known.
    pub fn mac(&self, backend: IpAddr) -> [u8; 6] {
        self.next_hop(backend).mac
    }

    /// Every backend's next hop as last looked up, and any problem with it, by address.
    pub fn view(&self) -> Vec<NextHopView> {
        let backends: std::collections::BTreeSet<&IpAddr> =
            self.hops.keys().chain(self.reported.keys()).collect();
        backends
            .into_iter()
            .map(|b| {
                let hop = self.hops.get(b);
                NextHopView {
                    backend: b.to_string(),
                    via: hop.map(|h| h.addr.to_string()),
                    interface: hop.map(|h| h.dev.clone()),
                    mac: hop.filter(|h| h.mac != [0; 6]).map(|h| format_mac(&h.mac)),
                    problem: self.reported.get(b).cloned(),
                }
            })
            .collect()
    }

    /// Whether every one of `backends` has a MAC.
    pub fn all_resolved(&self, backends: &[IpAddr]) -> bool {
        backends.iter().all(|b| self.mac(*b) != [0; 6])
    }

    /// Subscribes to the kernel's announcements of neighbour and route changes; the returned
    /// [`Watch`] wakes when [`NextHops::refresh`] should run again. Needs a tokio runtime.
    pub fn watch(&self) -> Result<Watch, NetlinkError> {
        Watch::start(self.watched.clone())
    }

    /// Looks every backend up again; returns whether any MAC changed. An unresolved
    /// neighbour is made to resolve (a datagram to the discard port makes the kernel ask for
    /// it), and its resolution is announced. `ifaces` are where the XDP program is attached:
    /// a next hop elsewhere cannot be reached by `XDP_TX`, which sends frames back out of the
    /// interface they came in on.
    pub fn refresh(&mut self, backends: &[IpAddr], ifaces: &[String]) -> bool {
        self.hops.retain(|b, _| backends.contains(b));
        self.reported.retain(|b, _| backends.contains(b));
        let looked_up: Vec<(IpAddr, Result<Hop, HopProblem>)> = if backends.is_empty() {
            Vec::new()
        } else {
            match self.kernel() {
                Ok(kernel) => backends.iter().map(|&b| (b, lookup(kernel, b))).collect(),
                Err(e) => {
                    for &b in backends {
                        self.report(b, &e);
                    }
                    return false;
                }
            }
        };
        let mut changed = false;
        let mut unresolved = Vec::new();
        for (backend, hop) in looked_up {
            let hop = match hop {
                Ok(hop) => hop,
                Err(problem) => {
                    if let HopProblem::Netlink(e) | HopProblem::NoRoute { error: e, .. } = &problem
                        && e.socket_suspect()
                    {
                        self.kernel = None;
                    }
                    self.report(backend, &problem);
                    continue;
                }
            };
            if !ifaces.is_empty() && !ifaces.contains(&hop.dev) {
                self.report(
                    backend,
                    &HopProblem::NotXdpIface {
                        dev: hop.dev.clone(),
                        ifaces: ifaces.join(", "),
                    },
                );
            } else {
                // Over: logged again should it come back.
                self.reported.remove(&backend);
            }
            if hop.mac == [0; 6] {
                unresolved.push(backend);
            }
            let old = self.hops.insert(backend, hop.clone());
            if old.as_ref().map(Hop::next_hop) == Some(hop.next_hop()) {
                continue;
            }
            changed = true;
            let mac = format_mac(&hop.mac);
            match old {
                _ if hop.mac == [0; 6] => {}
                Some(old) if old.mac != [0; 6] => {
                    info!(backend = %backend, next_hop = %hop.addr, dev = hop.dev, mac, dev_mac = format_mac(&hop.dev_mac), old_mac = format_mac(&old.mac), old_dev = old.dev, old_dev_mac = format_mac(&old.dev_mac), "next hop changed");
                }
                _ => {
                    info!(backend = %backend, next_hop = %hop.addr, dev = hop.dev, mac, "next hop resolved");
                }
            }
        }
        // Before asking for resolutions, so that their announcements find the addresses.
        self.watched.store(Arc::new(
            self.hops.values().map(|h| h.addr).collect::<HashSet<_>>(),
        ));
        for backend in unresolved {
            provoke(backend);
        }
        changed
    }

    fn kernel(&mut self) -> Result<&mut Rtnl, NetlinkError> {
        match &mut self.kernel {
            Some(k) => Ok(k),
            none => Ok(none.insert(Rtnl::open()?)),
        }
    }

    fn report(&mut self, backend: IpAddr, problem: &dyn std::fmt::Display) {
        let problem = problem.to_string();
        if self.reported.get(&backend) != Some(&problem) {
            warn!(backend = %backend, problem, "L4 backend has no usable next hop");
            self.reported.insert(backend, problem);
        }
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The route towards `backend`, and the neighbour entry of its next hop.
fn lookup(kernel: &mut Rtnl, backend: IpAddr) -> Result<Hop, HopProblem> {
    let Route { kind, oif, gateway } =
        kernel
            .route_to(backend)
            .map_err(|error| HopProblem::NoRoute {
                dst: backend,
                error,
            })?;
    match kind {
        RouteType::Unicast => {}
        RouteType::Local => return Err(HopProblem::Local(backend)),
        kind => return Err(HopProblem::NotUnicast { dst: backend, kind }),
    }
    let ifindex = oif.ok_or(HopProblem::NoDevice(backend))?;
    let (dev, dev_lladdr) = kernel.link(ifindex)?;
    // A device without an Ethernet address resolves no neighbour either: the backend stays
    // unresolved, and the zero MAC is never used.
    let dev_mac = <[u8; 6]>::try_from(dev_lladdr.as_slice()).unwrap_or([0; 6]);
    let addr = gateway.unwrap_or(backend);
    let neighbour = kernel.neighbour(addr, ifindex)?;
    let mac = match neighbour.as_ref().and_then(|n| n.usable_lladdr()) {
        None => [0; 6],
        Some(l) => <[u8; 6]>::try_from(l).map_err(|_| HopProblem::NotEthernet {
            addr,
            dev: dev.clone(),
            lladdr: l.to_vec(),
        })?,
    };
    Ok(Hop {
        addr,
        dev,
        mac,
        ifindex,
        dev_mac,
    })
}

/// Makes the kernel resolve the next hop towards `backend`: an empty datagram to its discard
/// port (9) goes through the neighbour machinery like any packet would.
fn provoke(backend: IpAddr) {
    let local: SocketAddr = match backend {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(socket) = UdpSocket::bind(local) {
        let _ = socket.send_to(&[], (backend, 9));
    }
}
