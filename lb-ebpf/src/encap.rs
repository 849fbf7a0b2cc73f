//! IP-in-IP encapsulation of a frame for `XDP_TX` towards a backend.
use aya_ebpf::helpers::bpf_xdp_adjust_head;
use aya_ebpf::programs::XdpContext;
use lb_common::{
    BackendInfo, ENCAP_TTL, ETH_P_IPV4, ETH_P_IPV6, EncapConfig, IPPROTO_IPIP, IPPROTO_IPV6,
};

use crate::{ENCAP, at};

/// Puts an outer IP header of `backend`'s family in front of the untagged frame's IP packet
/// and readdresses the Ethernet header: from the frame's destination (this host's interface,
/// which `XDP_TX` sends from), or from the backend's egress interface when the frame is
/// `redirected` there, to the backend's next hop. The inner packet is not touched.
/// `hash` ([`lb_common::maglev::client_hash`]) gives the outer source its low bits and the
/// IPv6 flow label. None: no headroom (nothing was changed) or, impossibly, no frame after.
#[inline(always)]
pub fn push(
    ctx: &XdpContext,
    backend: &BackendInfo,
    inner_v4: bool,
    hash: u32,
    redirected: bool,
) -> Option<()> {
    // SAFETY (every dereference of `at` below): the range was checked against data_end.
    let mut eth = unsafe { *at::<14>(ctx, 0)? };
    if redirected {
        eth[0..6].copy_from_slice(&backend.egress_mac);
    }
    let (inner_len, tos, proto) = if inner_v4 {
        let ip = unsafe { *at::<4>(ctx, 14)? };
        (u16::from_be_bytes([ip[2], ip[3]]), ip[1], IPPROTO_IPIP)
    } else {
        let ip = unsafe { *at::<6>(ctx, 14)? };
        (
            u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(40),
            (ip[0] << 4) | (ip[1] >> 4),
            IPPROTO_IPV6,
        )
    };
    let config = ENCAP.get(0).copied().unwrap_or(EncapConfig {
        v4_prefix: [0; 2],
        _pad: [0; 2],
        v6_prefix: [0; 12],
    });
    if backend.outer_v6() {
        grow(ctx, 40)?;
        let h = unsafe { &mut *at::<54>(ctx, 0)? };
        ethernet(h, backend, &eth, ETH_P_IPV6);
        let first = (6u32 << 28) | (u32::from(tos) << 20) | (hash & 0xf_ffff);
        h[14..18].copy_from_slice(&first.to_be_bytes());
        h[18..20].copy_from_slice(&inner_len.to_be_bytes());
        h[20] = proto;
        h[21] = ENCAP_TTL;
        h[22..38].copy_from_slice(&config.v6_source(hash));
        h[38..54].copy_from_slice(&backend.addr);
    } else {
        grow(ctx, 20)?;
        let h = unsafe { &mut *at::<34>(ctx, 0)? };
        ethernet(h, backend, &eth, ETH_P_IPV4);
        let total = inner_len.wrapping_add(20);
        let src = config.v4_source(hash);
        let dst = &backend.addr;
        let ip = &mut h[14..34];
        ip[0] = 0x45;
        ip[1] = tos;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4] = 0;
        ip[5] = 0;
        // Don't fragment: a backend cannot reassemble tunnelled fragments any better.
        ip[6] = 0x40;
        ip[7] = 0;
        ip[8] = ENCAP_TTL;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst[12..16]);
        // The words of the header, the checksum field counting as zero; id and fragment
        // offset are zero.
        let mut sum = (0x4500 | u32::from(tos))
            + u32::from(total)
            + 0x4000
            + ((u32::from(ENCAP_TTL) << 8) | u32::from(proto))
            + u32::from(u16::from_be_bytes([src[0], src[1]]))
            + u32::from(u16::from_be_bytes([src[2], src[3]]))
            + u32::from(u16::from_be_bytes([dst[12], dst[13]]))
            + u32::from(u16::from_be_bytes([dst[14], dst[15]]));
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    Some(())
}

#[inline(always)]
fn ethernet(h: &mut [u8], backend: &BackendInfo, old: &[u8; 14], ethertype: u16) {
    h[0..6].copy_from_slice(&backend.next_hop_mac);
    h[6..12].copy_from_slice(&old[0..6]);
    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Moves the frame's start `by` bytes earlier, into the headroom.
#[inline(always)]
pub(crate) fn grow(ctx: &XdpContext, by: i32) -> Option<()> {
    // SAFETY: the helper checks the headroom itself and fails without changing the frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -by) } != 0 {
        return None;
    }
    Some(())
}
