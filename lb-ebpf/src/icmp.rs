//! ICMP at the VIP. Frames of L4 listeners too big for the egress MTU once encapsulated are
//! answered with ICMP "fragmentation needed" / ICMPv6 "packet too big" (so the client's path
//! MTU discovery works across the tunnel), and ICMP errors addressed to a VIP about a
//! backend's direct reply are sent on to that backend (so the backend's does).
use aya_ebpf::helpers::{bpf_check_mtu, bpf_ktime_get_ns, bpf_xdp_adjust_tail};
use aya_ebpf::programs::XdpContext;
use lb_common::{
    ETH_P_IPV4, ETH_P_IPV6, ICMP_ANSWERS_PER_SEC, ICMP_V4_QUOTE, ICMP_V6_QUOTE, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_FRAGMENT, IPV6_MIN_MTU, MTU_FLOOR, Outcome,
    inet::{checksum, sum_words},
};

use crate::encap::grow;
use crate::{ICMP_RATE, at};

/// `bpf_check_mtu`'s answer when the frame does not fit.
const MTU_FRAG_NEEDED: i64 = 1;
/// TTL / hop limit of the answers.
const TTL: u8 = 64;

/// The egress device's MTU if the frame (`len` bytes), grown by `overhead` bytes, would
/// exceed it. `egress`: the index of the interface it leaves by, 0 for the one it came in on.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, len: u64, overhead: u32, egress: u32) -> Option<u32> {
    if len + u64::from(overhead) <= u64::from(MTU_FLOOR) + 14 {
        return None;
    }
    let mut mtu: u32 = 0;
    // SAFETY: the helper reads the context and writes the one u32 it is given.
    let r = unsafe { bpf_check_mtu(ctx.ctx as *mut _, egress, &mut mtu, overhead as i32, 0) };
    (r == MTU_FRAG_NEEDED).then_some(mtu)
}

/// Turns the frame (an IPv4 or IPv6 packet of an L4 listener, untagged) into the ICMP answer
/// telling its sender that `mtu` bytes fit, addressed from the VIP back to the client through
/// the Ethernet neighbour it came from. [`Outcome::TooBig`] when it must not be answered.
#[inline(always)]
pub fn answer_too_big(ctx: &XdpContext, v4: bool, mtu: u32) -> Outcome {
    let answered = if v4 {
        answer_v4(ctx, mtu)
    } else {
        answer_v6(ctx, mtu)
    };
    match answered {
        Some(()) => Outcome::TooBigAnswered,
        None => Outcome::TooBig,
    }
}

// Both answers make room for their headers in front of the packet (the quote is then where
// it must be, uncopied: the program's stack is 512 bytes), then cut what follows the quote.

#[inline(always)]
fn answer_v4(ctx: &XdpContext, mtu: u32) -> Option<()> {
    // SAFETY (every dereference of `at`): the range was checked against data_end.
    let eth = unsafe { *at::<14>(ctx, 0)? };
    let ip = unsafe { &*at::<ICMP_V4_QUOTE>(ctx, 14)? };
    // Options would make the quote miss the ports; a fragmentable packet is a router's to
    // fragment (XDP cannot); an ICMP message is never answered with another.
    let proto = ip[9];
    if ip[0] != 0x45 || ip[6] & 0x40 == 0 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return None;
    }
    if !rate_allows() {
        return None;
    }
    const LEN: usize = 14 + 20 + 8 + ICMP_V4_QUOTE;
    const Q: usize = LEN - ICMP_V4_QUOTE;
    grow(ctx, 28)?;
    resize(ctx, LEN)?;
    let h = unsafe { &mut *at::<LEN>(ctx, 0)? };
    ethernet_back(h, &eth, ETH_P_IPV4);
    h[14] = 0x45;
    h[15] = 0;
    h[16..18].copy_from_slice(&((20 + 8 + ICMP_V4_QUOTE) as u16).to_be_bytes());
    h[18..22].copy_from_slice(&[0; 4]);
    h[22] = TTL;
    h[23] = IPPROTO_ICMP;
    h[24..26].copy_from_slice(&[0; 2]);
    // From the VIP, which the client sent to, back to the client.
    for i in 0..4 {
        h[26 + i] = h[Q + 16 + i];
        h[30 + i] = h[Q + 12 + i];
    }
    let sum = checksum(sum_words(&h[14..34], 0));
    h[24..26].copy_from_slice(&sum.to_be_bytes());
    // Destination unreachable, fragmentation needed; the next-hop MTU in the low 16 bits.
    h[34] = 3;
    h[35] = 4;
    h[36..40].copy_from_slice(&[0; 4]);
    h[40..42].copy_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
    let sum = checksum(sum_words(&h[34..], 0));
    h[36..38].copy_from_slice(&sum.to_be_bytes());
    Some(())
}

#[inline(always)]
fn answer_v6(ctx: &XdpContext, mtu: u32) -> Option<()> {
    // SAFETY (every dereference of `at`): the range was checked against data_end.
    let eth = unsafe { *at::<14>(ctx, 0)? };
    let ip = unsafe { &*at::<ICMP_V6_QUOTE>(ctx, 14)? };
    if ip[0] >> 4 != 6 || ip[6] == IPPROTO_ICMPV6 {
        return None;
    }
    if !rate_allows() {
        return None;
    }
    const LEN: usize = 14 + 40 + 8 + ICMP_V6_QUOTE;
    const Q: usize = LEN - ICMP_V6_QUOTE;
    const PAYLOAD: u16 = (8 + ICMP_V6_QUOTE) as u16;
    grow(ctx, 48)?;
    resize(ctx, LEN)?;
    let h = unsafe { &mut *at::<LEN>(ctx, 0)? };
    ethernet_back(h, &eth, ETH_P_IPV6);
    h[14..18].copy_from_slice(&(6u32 << 28).to_be_bytes());
    h[18..20].copy_from_slice(&PAYLOAD.to_be_bytes());
    h[20] = IPPROTO_ICMPV6;
    h[21] = TTL;
    for i in 0..16 {
        h[22 + i] = h[Q + 24 + i];
        h[38 + i] = h[Q + 8 + i];
    }
    h[54] = 2;
    h[55] = 0;
    h[56..58].copy_from_slice(&[0; 2]);
    h[58..62].copy_from_slice(&mtu.max(IPV6_MIN_MTU).to_be_bytes());
    // The pseudo-header: addresses, upper-layer length, next header.
    let pseudo = sum_words(&h[22..54], u32::from(PAYLOAD) + u32::from(IPPROTO_ICMPV6));
    let sum = checksum(sum_words(&h[54..], pseudo));
    h[56..58].copy_from_slice(&sum.to_be_bytes());
    Some(())
}

/// Back out of the interface to the neighbour the frame came from.
#[inline(always)]
pub(crate) fn ethernet_back(h: &mut [u8], old: &[u8; 14], ethertype: u16) {
    h[0..6].copy_from_slice(&old[6..12]);
    h[6..12].copy_from_slice(&old[0..6]);
    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Cuts the frame to `len` bytes (it is longer: it did not fit the MTU).
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Option<()> {
    let now = ctx.data_end() - ctx.data();
    if now < len {
        return None;
    }
    // SAFETY: the helper checks the new end lies inside the frame.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((now - len) as i32)) } != 0 {
        return None;
    }
    Some(())
}

/// Whether this CPU may send one more answer this second (and counts it).
#[inline(always)]
fn rate_allows() -> bool {
    let Some(rate) = ICMP_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a helper without arguments; the per-CPU value is only touched by this CPU.
    unsafe {
        let second = bpf_ktime_get_ns() / 1_000_000_000;
        if (*rate).second != second {
            (*rate).second = second;
            (*rate).sent = 0;
        }
        if (*rate).sent >= ICMP_ANSWERS_PER_SEC {
            return false;
        }
        (*rate).sent += 1;
    }
    true
}

/// Whether ICMP (`v4`) or ICMPv6 type `kind` is an error that quotes the packet it is about:
/// destination unreachable (fragmentation needed among them), time exceeded, parameter
/// problem, and for ICMPv6 packet too big.
#[inline(always)]
pub fn is_error(kind: u8, v4: bool) -> bool {
    if v4 {
        matches!(kind, 3 | 11 | 12)
    } else {
        matches!(kind, 1..=4)
    }
}

/// An ICMP error's quote of a packet the VIP sent: the flow it belongs to, seen from the
/// client (source: the client, destination: the VIP).
pub struct Quoted {
    pub client: [u8; 16],
    pub client_port: u16,
    pub vip_port: u16,
    pub proto: u8,
}

/// The flow an ICMP (`v4`) or ICMPv6 error at `l4` quotes, if it is an error about a TCP or
/// UDP packet.
#[inline(always)]
pub fn quoted(ctx: &XdpContext, l4: usize, v4: bool) -> Option<Quoted> {
    // SAFETY (every dereference of `at`): the range was checked against data_end.
    let icmp = unsafe { *at::<8>(ctx, l4)? };
    if !is_error(icmp[0], v4) {
        return None;
    }
    if v4 {
        let q = unsafe { *at::<28>(ctx, l4 + 8)? };
        if q[0] != 0x45 || (q[9] != IPPROTO_TCP && q[9] != IPPROTO_UDP) {
            return None;
        }
        Some(Quoted {
            client: lb_common::v4_mapped([q[16], q[17], q[18], q[19]]),
            client_port: u16::from_be_bytes([q[22], q[23]]),
            vip_port: u16::from_be_bytes([q[20], q[21]]),
            proto: q[9],
        })
    } else {
        let q = unsafe { &*at::<40>(ctx, l4 + 8)? };
        if q[0] >> 4 != 6 {
            return None;
        }
        // A reply too big for a link further on was often a fragment (IPv6 routers never
        // fragment): the first one quotes its fragment header, then the ports.
        let (proto, ports) = if q[6] == IPV6_FRAGMENT {
            let f = unsafe { &*at::<12>(ctx, l4 + 48)? };
            if u16::from_be_bytes([f[2], f[3]]) >> 3 != 0 {
                return None;
            }
            (f[0], [f[8], f[9], f[10], f[11]])
        } else {
            (q[6], unsafe { *at::<4>(ctx, l4 + 48)? })
        };
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return None;
        }
        let mut client = [0u8; 16];
        client.copy_from_slice(&q[24..40]);
        Some(Quoted {
            client,
            client_port: u16::from_be_bytes([ports[2], ports[3]]),
            vip_port: u16::from_be_bytes([ports[0], ports[1]]),
            proto,
        })
    }
}
