//! The kernel's routing and neighbour tables over rtnetlink: one question at a time
//! (`RTM_GETROUTE`, `RTM_GETNEIGH`, `RTM_GETLINK` for one address or interface, never a dump),
//! and the decoding of the answers and of the changes the kernel announces.
//!
//! Messages are built with `netlink-packet-route`; answers are decoded header first and then
//! attribute by attribute, keeping only the attributes asked for. The crate's whole-message
//! parsers fail on the first attribute they do not understand, and a newer kernel may add
//! one to a route or a link that next hops do not care about.
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NlasIterator, ParseableParametrized, parse_i32, parse_string,
};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::{
    NeighbourAttribute, NeighbourHeader, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteLwEnCapType, RouteMessage, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// Sizes of `struct rtmsg`, `struct ndmsg` and `struct ifinfomsg`: the attributes follow.
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
const IFINFOMSG_LEN: usize = 16;
/// `IFLA_ADDRESS` and `IFLA_IFNAME` (linux/if_link.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
/// Answers and announcements are at most a page or two (`NLMSG_GOODSIZE`); a link's answer
/// with every statistic is the largest asked for.
pub const RECV_BUFFER: usize = 64 * 1024;
/// The kernel answers a (non-dump) rtnetlink request inside the `sendmsg` call, so the answer
/// is queued before `recv` is called; the timeout only bounds a kernel that does otherwise.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("rtnetlink socket: {0}")]
    Open(io::Error),
    #[error("{what}: {error}")]
    Socket { what: String, error: io::Error },
    #[error("{what}: {error}")]
    Refused { what: String, error: io::Error },
    #[error("{what}: undecodable answer: {detail}")]
    Undecodable { what: String, detail: String },
}

impl NetlinkError {
    /// The error number the kernel refused a request with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused { error, .. } => error.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the socket may be out of step with the kernel (a lost or late answer) and
    /// should be replaced.
    pub fn socket_suspect(&self) -> bool {
        matches!(self, NetlinkError::Socket { .. } | NetlinkError::Open(_))
    }
}

/// The route the kernel would use for a packet to one address (what `ip route get` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub kind: RouteType,
    /// The output interface's index.
    pub oif: Option<u32>,
    /// `RTA_GATEWAY`, or `RTA_VIA` (an IPv4 route through an IPv6 gateway, RFC 5549).
    pub gateway: Option<IpAddr>,
}

/// One entry of the neighbour table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub addr: Option<IpAddr>,
    pub ifindex: u32,
    pub state: NeighbourState,
    pub lladdr: Option<Vec<u8>>,
}

impl Neighbour {
    /// The link-layer address the kernel would send to now: none while it is being resolved
    /// or after resolution failed. A stale entry still counts: the kernel itself keeps
    /// sending to it while it checks it.
    pub fn usable_lladdr(&self) -> Option<&[u8]> {
        match self.state {
            NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None => None,
            _ => self.lladdr.as_deref().filter(|l| l.iter().any(|b| *b != 0)),
        }
    }
}

/// A request/answer rtnetlink socket, bound to no multicast group.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        socket2::SockRef::from(&socket)
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(NetlinkError::Open)?;
        Ok(Rtnl {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// The route to `dst`, as the kernel resolves it for a packet sent now (one path of a
    /// multipath route).
    pub fn route_to(&mut self, dst: IpAddr) -> Result<Route, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let what = || format!("route to {dst}");
        let answer = self.request(
            &what,
            RouteNetlinkMessage::GetRoute(msg),
            libc::RTM_NEWROUTE,
        )?;
        decode_route(&answer).map_err(|e| NetlinkError::Undecodable {
            what: what(),
            detail: e.to_string(),
        })
    }

    /// The neighbour table's entry for `addr` on interface `ifindex`, if there is one.
    pub fn neighbour(
        &mut self,
        addr: IpAddr,
        ifindex: u32,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(addr);
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(addr.into()));
        let what = || format!("neighbour {addr} on interface {ifindex}");
        match self.request(
            &what,
            RouteNetlinkMessage::GetNeighbour(msg),
            libc::RTM_NEWNEIGH,
        ) {
            Ok(answer) => {
                decode_neighbour(&answer)
                    .map(Some)
                    .map_err(|e| NetlinkError::Undecodable {
                        what: what(),
                        detail: e.to_string(),
                    })
            }
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The name and link-layer address (empty if it has none) of interface `ifindex`.
    pub fn link(&mut self, ifindex: u32) -> Result<(String, Vec<u8>), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let what = || format!("interface {ifindex}");
        let answer = self.request(&what, RouteNetlinkMessage::GetLink(msg), libc::RTM_NEWLINK)?;
        let undecodable = |detail: String| NetlinkError::Undecodable {
            what: what(),
            detail,
        };
        let attrs = answer
            .get(IFINFOMSG_LEN..)
            .ok_or_else(|| undecodable(format!("{} bytes", answer.len())))?;
        let mut name = None;
        let mut lladdr = Vec::new();
        for nla in NlasIterator::new(attrs) {
            let nla = nla.map_err(|e| undecodable(e.to_string()))?;
            match nla.kind() {
                IFLA_IFNAME => {
                    name = Some(parse_string(nla.value()).map_err(|e| undecodable(e.to_string()))?)
                }
                IFLA_ADDRESS => lladdr = nla.value().to_vec(),
                _ => {}
            }
        }
        let name = name.ok_or_else(|| undecodable("no IFLA_IFNAME".into()))?;
        Ok((name, lladdr))
    }

    /// Sends `message` and returns the payload of the answer of type `answer_type`.
    fn request(
        &mut self,
        what: &dyn Fn() -> String,
        message: RouteNetlinkMessage,
        answer_type: u16,
    ) -> Result<Vec<u8>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, message.into());
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let socket_error = |error| NetlinkError::Socket {
            what: what(),
            error,
        };
        self.socket
            .send_to(&bytes, &SocketAddr::new(0, 0), 0)
            .map_err(socket_error)?;
        // Answers to earlier requests whose wait timed out may come first: skipped by their
        // sequence number.
        for _ in 0..16 {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], libc::MSG_TRUNC)
                .map_err(socket_error)?;
            let datagram = self.buf.get(..n).ok_or_else(|| NetlinkError::Undecodable {
                what: what(),
                detail: format!("an answer of {n} bytes, more than {RECV_BUFFER}"),
            })?;
            for message in messages(datagram) {
                let (kind, seq, payload) = message.map_err(|e| NetlinkError::Undecodable {
                    what: what(),
                    detail: e.to_string(),
                })?;
                if seq != self.seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => match error_code(payload) {
                        Some(0) => {}
                        Some(code) => {
                            return Err(NetlinkError::Refused {
                                what: what(),
                                error: io::Error::from_raw_os_error(code.saturating_abs()),
                            });
                        }
                        None => {
                            return Err(NetlinkError::Undecodable {
                                what: what(),
                                detail: "a short NLMSG_ERROR".into(),
                            });
                        }
                    },
                    NLMSG_DONE => break,
                    k if k == answer_type => return Ok(payload.to_vec()),
                    _ => {}
                }
            }
        }
        Err(NetlinkError::Undecodable {
            what: what(),
            detail: "no answer".into(),
        })
    }
}

/// The netlink messages of one datagram: type, sequence number and payload of each.
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<(u16, u32, &[u8]), DecodeError>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let message = match NetlinkBuffer::new_checked(rest) {
            Ok(m) => m,
            Err(e) => {
                rest = &[];
                return Some(Err(e));
            }
        };
        let item = (
            message.message_type(),
            message.sequence_number(),
            message.payload(),
        );
        // Messages are padded to 4 bytes (NLMSG_ALIGN); the last one may not be.
        let len = (message.length() as usize).next_multiple_of(4);
        rest = rest.get(len..).unwrap_or_default();
        Some(Ok(item))
    })
}

/// The (negative) error number of an `NLMSG_ERROR`, 0 for an acknowledgement.
fn error_code(payload: &[u8]) -> Option<i32> {
    payload.get(..4).and_then(|b| parse_i32(b).ok())
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The payload of an `RTM_NEWROUTE`.
pub fn decode_route(payload: &[u8]) -> Result<Route, DecodeError> {
    let header = RouteHeader::parse(payload)?;
    let mut route = Route {
        kind: header.kind,
        oif: None,
        gateway: None,
    };
    let param = (header.address_family, header.kind, RouteLwEnCapType::None);
    for nla in NlasIterator::new(payload.get(RTMSG_LEN..).unwrap_or_default()) {
        // An attribute this crate cannot decode is one next hops do not need.
        match RouteAttribute::parse_with_param(&nla?, param) {
            Ok(RouteAttribute::Oif(i)) => route.oif = Some(i),
            Ok(RouteAttribute::Gateway(RouteAddress::Inet(a))) => route.gateway = Some(a.into()),
            Ok(RouteAttribute::Gateway(RouteAddress::Inet6(a))) => route.gateway = Some(a.into()),
            Ok(RouteAttribute::Via(RouteVia::Inet(a))) => route.gateway = Some(a.into()),
            Ok(RouteAttribute::Via(RouteVia::Inet6(a))) => route.gateway = Some(a.into()),
            _ => {}
        }
    }
    Ok(route)
}

/// The payload of an `RTM_NEWNEIGH` or `RTM_DELNEIGH`.
pub fn decode_neighbour(payload: &[u8]) -> Result<Neighbour, DecodeError> {
    let header = NeighbourHeader::parse(payload)?;
    let mut neighbour = Neighbour {
        addr: None,
        ifindex: header.ifindex,
        state: header.state,
        lladdr: None,
    };
    for nla in NlasIterator::new(payload.get(NDMSG_LEN..).unwrap_or_default()) {
        match NeighbourAttribute::parse_with_param(&nla?, header.family) {
            Ok(NeighbourAttribute::Destination(a)) => {
                neighbour.addr = match a {
                    netlink_packet_route::neighbour::NeighbourAddress::Inet(a) => Some(a.into()),
                    netlink_packet_route::neighbour::NeighbourAddress::Inet6(a) => Some(a.into()),
                    _ => None,
                }
            }
            Ok(NeighbourAttribute::LinkLayerAddress(l)) => neighbour.lladdr = Some(l),
            _ => {}
        }
    }
    Ok(neighbour)
}

/// The address family of a neighbour message (`AF_BRIDGE` for a bridge's forwarding table,
/// which shares the announcements' group with ARP and neighbour discovery).
pub fn neighbour_family(payload: &[u8]) -> Option<AddressFamily> {
    NeighbourHeader::parse(payload).ok().map(|h| h.family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_answers_for_loopback() {
        let mut kernel = Rtnl::open().expect("an rtnetlink socket needs no privilege");
        let route = kernel
            .route_to("127.0.0.1".parse().expect("an address"))
            .expect("every host routes loopback");
        assert_eq!(route.kind, RouteType::Local, "{route:?}");
        let oif = route.oif.expect("the route names its device");
        let (name, lladdr) = kernel.link(oif).expect("the device exists");
        // Loopback's link-layer address is six zero bytes.
        assert_eq!((name.as_str(), lladdr.as_slice()), ("lo", &[0u8; 6][..]));
        // Loopback resolves nothing: the neighbour table has no entry, and that is no error.
        let none = kernel.neighbour("192.0.2.1".parse().expect("an address"), oif);
        assert!(matches!(none, Ok(None)), "{none:?}");
        // A refusal carries the kernel's error number.
        let missing = kernel.link(0x7fff_fff0);
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.errno() == Some(libc::ENODEV)),
            "{missing:?}"
        );
    }

    #[test]
    fn datagrams_split_into_padded_messages() {
        // Two NLMSG_DONE messages, the first with a 2-byte payload padded to 4.
        let mut datagram = Vec::new();
        for (len, seq) in [(18u32, 7u32), (20, 8)] {
            datagram.extend_from_slice(&len.to_ne_bytes());
            datagram.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
            datagram.extend_from_slice(&0u16.to_ne_bytes());
            datagram.extend_from_slice(&seq.to_ne_bytes());
            datagram.extend_from_slice(&0u32.to_ne_bytes());
            datagram.resize(datagram.len() + (len as usize - 16).next_multiple_of(4), 0);
        }
        let seqs: Vec<u32> = messages(&datagram)
            .map(|m| m.expect("well formed").1)
            .collect();
        assert_eq!(seqs, [7, 8]);
        assert!(messages(&datagram[..10]).any(|m| m.is_err()));
    }
}
