//! Whether a network driver runs XDP programs itself ("native" mode): the kernel's own
//! answer, the `xdp-features` of the device in the `netdev` generic-netlink family (Linux
//! 6.3+; what `ynl --family netdev --do dev-get` prints). Only attaching says for certain, so
//! this feeds a warning: `edgelb check` can then say that `--xdp-mode native` will be refused,
//! instead of the start being the first to find out.
use netlink_packet_core::NlasIterator;
use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr};

use crate::nexthop::rtnl::messages;

/// linux/genetlink.h and linux/netdev.h.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_XDP_ACT_BASIC: u64 = 1;
const NLM_F_REQUEST: u16 = 1;

/// Whether the driver of interface `name` reports native XDP; None when the kernel cannot
/// say (no such interface, or a kernel before the `netdev` family).
pub fn native(name: &str) -> Option<bool> {
    let ifindex = nix::net::if_::if_nametoindex(name).ok()?;
    let mut socket = Socket::new(NETLINK_GENERIC).ok()?;
    socket.bind_auto().ok()?;
    // The kernel answers inside `send`; the timeout only bounds one that does otherwise.
    socket2::SockRef::from(&socket)
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .ok()?;
    let name_attr = attribute(CTRL_ATTR_FAMILY_NAME, b"netdev\0");
    let family = ask(
        &socket,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &name_attr,
        CTRL_ATTR_FAMILY_ID,
    )?;
    let family = u16::from_ne_bytes(family.get(..2)?.try_into().ok()?);
    let index_attr = attribute(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes());
    let features = ask(
        &socket,
        family,
        NETDEV_CMD_DEV_GET,
        &index_attr,
        NETDEV_A_DEV_XDP_FEATURES,
    )?;
    let features = u64::from_ne_bytes(features.get(..8)?.try_into().ok()?);
    Some(features & NETDEV_XDP_ACT_BASIC != 0)
}

/// One netlink attribute, padded to 4 bytes.
fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// Sends generic-netlink command `cmd` to `family` with `attributes`, and returns the value
/// of attribute `wanted` in the answer; None on a refusal or an answer without it.
fn ask(socket: &Socket, family: u16, cmd: u8, attributes: &[u8], wanted: u16) -> Option<Vec<u8>> {
    // nlmsghdr (16 bytes), genlmsghdr (command, version 1, reserved), the attributes.
    let len = 16 + 4 + attributes.len();
    let mut request = Vec::with_capacity(len);
    request.extend_from_slice(&(len as u32).to_ne_bytes());
    request.extend_from_slice(&family.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[cmd, 1, 0, 0]);
    request.extend_from_slice(attributes);
    socket.send_to(&request, &SocketAddr::new(0, 0), 0).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = socket.recv(&mut &mut buf[..], 0).ok()?;
    let (kind, _, payload) = messages(buf.get(..n)?).next()?.ok()?;
    // An NLMSG_ERROR (2) is a refusal: no such device, or no such family.
    if kind != family {
        return None;
    }
    NlasIterator::new(payload.get(4..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == wanted)
        .map(|nla| nla.value().to_vec())
}

#[cfg(test)]
mod tests {
    /// Loopback has no driver XDP of its own: the kernel says so on every kernel with the
    /// netdev family (6.3+), as this one is.
    #[test]
    fn loopback_reports_no_native_xdp() {
        assert_eq!(super::native("lo"), Some(false));
        assert_eq!(super::native("no-such-if0"), None);
    }
}
