//! `edgelb_icmp`, tail-called by `edgelb_xdp` for ICMP and ICMPv6 errors: one addressed to an
//! L4 listener's VIP about a packet the VIP sent (a backend's direct reply: "fragmentation
//! needed" / "packet too big" for path MTU discovery, unreachable, time exceeded) goes to the
//! backend that owns the flow it quotes, picked as the client's own packets are, under the
//! listener's access control for that client. A program of its own because the forwarding
//! path inlined twice does not fit one 512-byte stack.
use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    ETH_P_IPV4, ETH_P_IPV6, FlowKey, IPPROTO_ICMPV6, ListenerInfo, MAX_L4_GROUPS, Outcome, acl,
    v4_mapped,
};

use crate::{admitted, bytes, find_listener, frame_len, icmp, l4, verdict};

#[xdp]
pub fn edgelb_icmp(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    verdict(icmp_error(&ctx, len), len)
}

/// `edgelb_xdp` only calls for untagged, unfragmented ICMP errors; IPv6 ones with extension
/// headers before the ICMPv6 header are not looked into.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, len: u64) -> Result<(u32, Outcome), Outcome> {
    let eth = bytes::<14>(ctx, 0)?;
    let (dst, l4, v4) = match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IPV4 => {
            let ip = bytes::<20>(ctx, 14)?;
            let dst = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
            (dst, 14 + (ip[0] & 0x0f) as usize * 4, true)
        }
        ETH_P_IPV6 => {
            let ip = bytes::<40>(ctx, 14)?;
            if ip[6] != IPPROTO_ICMPV6 {
                return Err(Outcome::NotOurs);
            }
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&ip[24..40]);
            (dst, 54, false)
        }
        _ => return Err(Outcome::NotOurs),
    };
    let q = icmp::quoted(ctx, l4, v4).ok_or(Outcome::NotOurs)?;
    let info = find_listener(&dst, q.vip_port, q.proto, v4).ok_or(Outcome::NotOurs)?;
    // Listeners served in userspace have sockets, which the stack tells of their errors.
    if info.l4_group >= MAX_L4_GROUPS {
        return Err(Outcome::NotOurs);
    }
    // The client it quotes is the sender's word; a deny list also holds against the sender,
    // or a listed source could push errors to backends by quoting another client. (A
    // whitelist cannot: the routers that send real errors are not on it.)
    if !admitted(&info, &q.client) || (info.acl == acl::DENY && !sender_admitted(ctx, &info, v4)?) {
        return Ok((info.id, Outcome::DroppedAcl));
    }
    let flow = FlowKey {
        src: q.client,
        dst,
        src_port: q.client_port,
        dst_port: q.vip_port,
        proto: q.proto,
        _pad: [0; 3],
    };
    let flags = if v4 { l4::INNER_V4 } else { 0 };
    let outcome = match l4::forward(ctx, &info, &flow, len, flags) {
        Outcome::ForwardedL4 => Outcome::ForwardedIcmp,
        other => other,
    };
    Ok((info.id, outcome))
}

/// Whether the error's sender (its IP source) passes the listener's access control. Read
/// again from the frame here rather than kept from the start: the stack has no room for it
/// alongside the forwarding path.
#[inline(always)]
fn sender_admitted(ctx: &XdpContext, info: &ListenerInfo, v4: bool) -> Result<bool, Outcome> {
    let mut sender = [0u8; 16];
    if v4 {
        let a = bytes::<4>(ctx, 14 + 12)?;
        sender = v4_mapped([a[0], a[1], a[2], a[3]]);
    } else {
        sender.copy_from_slice(bytes::<16>(ctx, 14 + 8)?);
    }
    Ok(admitted(info, &sender))
}
