//! The kernel's announcements of neighbour and route changes (`RTNLGRP_NEIGH`,
//! `RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE`), turned into a wake-up for the one owner of
//! next hops. The task that reads them holds no next-hop state: it only tells the owner to
//! look again, so there is one place where next hops are decided.
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use netlink_packet_route::AddressFamily;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::rtnl::{self, NetlinkError, RECV_BUFFER};

/// After a wake-up, further changes within this long make one more wake-up at its end: a
/// routing daemon loading a table announces thousands of routes a second, and each look
/// costs a few system calls per backend. The first change of a quiet period wakes at once.
const COALESCE: Duration = Duration::from_millis(50);
/// Before a lost subscription is made again.
const RESUBSCRIBE: Duration = Duration::from_secs(5);
/// A burst larger than this is lost (`ENOBUFS`), which the reader handles by waking the
/// owner; a larger buffer only makes that rarer. The kernel caps it at `rmem_max`.
const SOCKET_BUFFER: usize = 1 << 20;

/// The addresses whose neighbour entries matter: the next hops in use, written by their owner
/// after each look, read by the reader for each announcement.
pub type Watched = Arc<ArcSwap<HashSet<IpAddr>>>;

/// A running subscription; the task stops when this is dropped.
pub struct Watch {
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Watch {
    /// Subscribes (the first time here, so that a host refusing it is told at start) and
    /// spawns the reader on the current tokio runtime.
    pub fn start(watched: Watched) -> Result<Watch, NetlinkError> {
        let socket = subscribe()?;
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn(follow(socket, watched, changed.clone()));
        Ok(Watch { changed, task })
    }

    /// Completes when a route changed, or the neighbour entry of a watched address, or
    /// announcements were lost: time to look at next hops again.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn subscribe() -> Result<TokioSocket, NetlinkError> {
    let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
    let inner = socket.socket_mut();
    inner
        .bind(&SocketAddr::new(0, 0))
        .map_err(NetlinkError::Open)?;
    for group in [
        libc::RTNLGRP_NEIGH,
        libc::RTNLGRP_IPV4_ROUTE,
        libc::RTNLGRP_IPV6_ROUTE,
    ] {
        inner.add_membership(group).map_err(NetlinkError::Open)?;
    }
    // Best effort: a smaller buffer only loses bursts sooner, which is handled.
    let _ = inner.set_rx_buf_sz(SOCKET_BUFFER);
    Ok(socket)
}

/// Reads announcements for as long as the process runs; a subscription that fails is made
/// again (and the owner woken, since changes may have been missed meanwhile).
async fn follow(mut socket: TokioSocket, watched: Watched, changed: Arc<Notify>) {
    loop {
        let error = read(&socket, &watched, &changed).await;
        warn!(error = %error, "next-hop announcements from the kernel lost; subscribing again");
        loop {
            tokio::time::sleep(RESUBSCRIBE).await;
            match subscribe() {
                Ok(s) => {
                    socket = s;
                    changed.notify_one();
                    break;
                }
                Err(e) => warn!(error = %e, "subscribing to next-hop announcements"),
            }
        }
    }
}

/// Reads until the socket fails; returns why.
async fn read(socket: &TokioSocket, watched: &Watched, changed: &Notify) -> std::io::Error {
    let mut buf = Vec::with_capacity(RECV_BUFFER);
    let mut quiet_until = Instant::now();
    let mut pending = false;
    loop {
        buf.clear();
        tokio::select! {
            received = socket.recv(&mut buf) => {
                let relevant = match received {
                    Ok(()) => concerns(&buf, &watched.load()),
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        debug!("next-hop announcements overflowed the socket; looking at every next hop");
                        true
                    }
                    Err(e) => return e,
                };
                if relevant {
                    if Instant::now() >= quiet_until {
                        changed.notify_one();
                        quiet_until = Instant::now() + COALESCE;
                    } else {
                        pending = true;
                    }
                }
            }
            _ = tokio::time::sleep_until(quiet_until), if pending => {
                pending = false;
                changed.notify_one();
                quiet_until = Instant::now() + COALESCE;
            }
        }
    }
}

/// Whether an announcement (one datagram, possibly several messages) can change a next hop:
/// any route change, or a change of the neighbour entry of a `watched` address. What cannot
/// be decoded counts as a change, since looking again costs little and missing one a lot.
fn concerns(datagram: &[u8], watched: &HashSet<IpAddr>) -> bool {
    rtnl::messages(datagram).any(|m| {
        let Ok((kind, _, payload)) = m else {
            return true;
        };
        match kind {
            libc::RTM_NEWROUTE | libc::RTM_DELROUTE => true,
            libc::RTM_NEWNEIGH | libc::RTM_DELNEIGH => {
                match rtnl::neighbour_family(payload) {
                    Some(AddressFamily::Inet | AddressFamily::Inet6) => {}
                    // A bridge's forwarding table, or a proxy entry of another kind.
                    Some(_) => return false,
                    None => return true,
                }
                match rtnl::decode_neighbour(payload) {
                    Ok(n) => n.addr.is_none_or(|a| watched.contains(&a)),
                    Err(_) => true,
                }
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `RTM_NEWNEIGH` as the kernel announces it: `ndmsg`, then `NDA_DST` and
    /// `NDA_LLADDR`.
    fn newneigh(family: u8, dst: &[u8], lladdr: [u8; 6]) -> Vec<u8> {
        let mut payload = vec![family, 0, 0, 0];
        payload.extend_from_slice(&5u32.to_ne_bytes());
        payload.extend_from_slice(&0x04u16.to_ne_bytes()); // NUD_STALE
        payload.extend_from_slice(&[0, 0]);
        let nla = |kind: u16, value: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(value);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        };
        nla(1, dst, &mut payload);
        nla(2, &lladdr, &mut payload);
        let mut msg = Vec::new();
        msg.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&libc::RTM_NEWNEIGH.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&payload);
        msg
    }

    #[test]
    fn neighbour_changes_concern_only_watched_next_hops() {
        let watched: HashSet<IpAddr> = ["10.2.1.1".parse().unwrap()].into_iter().collect();
        let mac = [2, 0, 0, 0, 0, 1];
        let gateway = newneigh(libc::AF_INET as u8, &[10, 2, 1, 1], mac);
        let other = newneigh(libc::AF_INET as u8, &[10, 2, 1, 9], mac);
        assert!(concerns(&gateway, &watched));
        assert!(!concerns(&other, &watched));
        // Two messages in one datagram: the second one counts.
        assert!(concerns(&[other.clone(), gateway].concat(), &watched));
        let n = rtnl::decode_neighbour(&other[16..]).expect("decodes");
        assert_eq!(n.lladdr.as_deref(), Some(&mac[..]));
        assert_eq!(n.ifindex, 5);
    }

    #[test]
    fn bridge_forwarding_entries_do_not_concern_next_hops() {
        let fdb = newneigh(libc::AF_BRIDGE as u8, &[], [2, 0, 0, 0, 0, 1]);
        assert!(!concerns(&fdb, &HashSet::new()));
    }

    #[test]
    fn undecodable_announcements_count_as_changes() {
        assert!(concerns(&[1, 2, 3], &HashSet::new()));
    }
}
