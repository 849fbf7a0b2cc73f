//! The MAC address each L4 backend's packets must be sent to: the next hop of the kernel's
//! route towards the backend (its gateway, or the backend itself on a directly connected
//! network), looked up in the neighbour table. The XDP program cannot consult either table
//! cheaply, so the daemon resolves them and writes the result into `BACKENDS`, and refreshes
//! them: a router that is replaced or a backend that moves changes its entry.
//!
//! The tables are read with `ip -json` (iproute2, which every host running XDP has) rather
//! than a netlink library: one lookup per backend every few seconds is not worth a second
//! netlink stack to keep correct.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;

use serde_json::Value;
use tracing::{info, warn};

/// What is known of one backend's next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hop {
    /// The gateway, or the backend itself.
    addr: IpAddr,
    dev: String,
    /// All zero while the neighbour is not resolved.
    mac: [u8; 6],
}

#[derive(Default)]
pub struct NextHops {
    hops: HashMap<IpAddr, Hop>,
    /// Backends whose route problem was logged, so that it is logged once, not every refresh.
    reported: HashMap<IpAddr, String>,
}

impl NextHops {
    /// The next-hop MAC of `backend`, all zero if not (yet) known.
    pub fn mac(&self, backend: IpAddr) -> [u8; 6] {
        self.hops.get(&backend).map_or([0; 6], |h| h.mac)
    }

    /// Whether every one of `backends` has a MAC.
    pub fn all_resolved(&self, backends: &[IpAddr]) -> bool {
        backends.iter().all(|b| self.mac(*b) != [0; 6])
    }

    /// Looks every backend up again; returns whether any MAC changed. An unresolved
    /// neighbour is made to resolve (a datagram to the discard port makes the kernel ask for
    /// it), so a later refresh finds it. `ifaces` are where the XDP program is attached: a
    /// next hop elsewhere cannot be reached by `XDP_TX`, which sends frames back out of the
    /// interface they came in on.
    pub fn refresh(&mut self, backends: &[IpAddr], ifaces: &[String]) -> bool {
        let mut changed = false;
        self.hops.retain(|b, _| backends.contains(b));
        for &backend in backends {
            let hop = match lookup(backend) {
                Ok(hop) => hop,
                Err(problem) => {
                    self.report(backend, problem);
                    continue;
                }
            };
            if !ifaces.is_empty() && !ifaces.contains(&hop.dev) {
                self.report(
                    backend,
                    format!(
                        "routed via {}, not an --xdp-iface ({}): XDP_TX can only send it out of the interface a packet arrived on",
                        hop.dev,
                        ifaces.join(", ")
                    ),
                );
            }
            if hop.mac == [0; 6] {
                provoke(backend);
            }
            let old = self.hops.insert(backend, hop.clone());
            if old.as_ref().map(|o| o.mac) != Some(hop.mac) {
                changed = true;
                if hop.mac != [0; 6] {
                    self.reported.remove(&backend);
                    info!(backend = %backend, next_hop = %hop.addr, dev = hop.dev, mac = format_mac(&hop.mac), "next hop resolved");
                }
            }
        }
        changed
    }

    fn report(&mut self, backend: IpAddr, problem: String) {
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

fn ip_json(args: &[&str]) -> Result<Value, String> {
    let out = Command::new("ip")
        .arg("-json")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("ip {}: {e}", args.join(" ")))
}

fn lookup(backend: IpAddr) -> Result<Hop, String> {
    let dst = backend.to_string();
    let routes = ip_json(&["route", "get", &dst])?;
    let route = routes.get(0).ok_or_else(|| format!("no route to {dst}"))?;
    if route.get("type").and_then(Value::as_str) == Some("local") {
        return Err(format!("{dst} is an address of this host"));
    }
    let dev = route
        .get("dev")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the route to {dst} has no device"))?
        .to_string();
    let addr = match route.get("gateway").and_then(Value::as_str) {
        Some(gw) => gw
            .parse()
            .map_err(|_| format!("the route to {dst} has gateway {gw:?}"))?,
        None => backend,
    };
    let neighbours = ip_json(&["neigh", "show", "to", &addr.to_string(), "dev", &dev])?;
    let mac = neighbours
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| {
            let state: Vec<&str> = n
                .get("state")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            !state.iter().any(|s| *s == "FAILED" || *s == "INCOMPLETE")
        })
        .and_then(|n| n.get("lladdr").and_then(Value::as_str))
        .and_then(parse_mac)
        .unwrap_or([0; 6]);
    Ok(Hop { addr, dev, mac })
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01"),
            Some([2, 0, 0x0a, 0xff, 0, 1])
        );
        for bad in [
            "",
            "02:00:0a:ff:00",
            "02:00:0a:ff:00:01:02",
            "zz:00:0a:ff:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
