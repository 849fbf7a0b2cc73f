//! `edgelb_decap`, run on L4 backends whose kernel has no ipip/ip6tnl tunnel: removes the
//! outer IPv4 or IPv6 header that `edgelb_xdp` added, for packets whose inner destination is
//! one of this host's VIPs and whose outer source is one of the balancers' prefixes, and
//! passes the inner packet to the stack as if it had arrived bare. Tunnelled packets for a VIP
//! from any other outer source are dropped; everything else passes untouched.
use aya_ebpf::{
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use lb_common::{
    DECAP_OUTCOMES, DecapCounters, DecapOutcome, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_IPIP,
    IPPROTO_IPV6, MAX_DECAP_SOURCES, MAX_DECAP_VIPS, v4_mapped,
};

use crate::{at, frame_len};

/// Inner destinations to decapsulate for (IPv4-mapped; the value is unused).
#[map(name = "DECAP_VIPS")]
static DECAP_VIPS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);

/// Outer IPv4 sources tunnelled packets for a VIP are decapsulated from (the value is unused).
#[map(name = "DECAP_SOURCES_V4")]
static DECAP_SOURCES_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_DECAP_SOURCES, 0);

/// Outer IPv6 sources tunnelled packets for a VIP are decapsulated from (the value is unused).
#[map(name = "DECAP_SOURCES_V6")]
static DECAP_SOURCES_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_DECAP_SOURCES, 0);

#[map(name = "DECAP_STATS")]
static DECAP_STATS: PerCpuArray<DecapCounters> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn edgelb_decap(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let outcome = match decap(&ctx) {
        Ok(o) | Err(o) => o,
    };
    if let Some(c) = DECAP_STATS.get_ptr_mut(0) {
        let i = outcome as usize;
        if i < DECAP_OUTCOMES {
            // SAFETY: a per-CPU slot is only written by the program running on that CPU.
            unsafe {
                (*c).packets[i] += 1;
                (*c).bytes[i] += len;
            }
        }
    }
    outcome.action()
}

/// The outer source address of a tunnelled packet.
enum Outer {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<DecapOutcome, DecapOutcome> {
    use DecapOutcome::{Decapsulated, Malformed, NotOurs, Refused};
    // SAFETY (every dereference of `at`): the range was checked against data_end.
    let eth = unsafe { *at::<14>(ctx, 0).ok_or(NotOurs)? };
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let (outer_len, proto, source, first_fragment) = match ethertype {
        ETH_P_IPV4 => {
            let ip = unsafe { &*at::<20>(ctx, 14).ok_or(NotOurs)? };
            if ip[9] != IPPROTO_IPIP && ip[9] != IPPROTO_IPV6 {
                return Err(NotOurs);
            }
            if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
                return Err(Malformed);
            }
            // A fragment holds part of an inner packet; there is nothing here to reassemble it.
            // A later one cannot be judged (no inner header); a first one is judged by its
            // inner header and source like any packet, so that one from an untrusted source
            // cannot be completed by the stack's reassembly and a tunnel device behind it.
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if frag & 0x1fff != 0 {
                return Err(Malformed);
            }
            let source = Outer::V4([ip[12], ip[13], ip[14], ip[15]]);
            (
                (ip[0] & 0x0f) as usize * 4,
                ip[9],
                source,
                frag & 0x2000 != 0,
            )
        }
        ETH_P_IPV6 => {
            let ip = unsafe { &*at::<40>(ctx, 14).ok_or(NotOurs)? };
            if ip[6] != IPPROTO_IPIP && ip[6] != IPPROTO_IPV6 {
                return Err(NotOurs);
            }
            if ip[0] >> 4 != 6 {
                return Err(Malformed);
            }
            let mut source = [0u8; 16];
            source.copy_from_slice(&ip[8..24]);
            (40, ip[6], Outer::V6(source), false)
        }
        _ => return Err(NotOurs),
    };
    let inner = 14 + outer_len;
    let (vip, ethertype) = if proto == IPPROTO_IPIP {
        let ip = unsafe { &*at::<20>(ctx, inner).ok_or(Malformed)? };
        if ip[0] >> 4 != 4 {
            return Err(Malformed);
        }
        (v4_mapped([ip[16], ip[17], ip[18], ip[19]]), ETH_P_IPV4)
    } else {
        let ip = unsafe { &*at::<40>(ctx, inner).ok_or(Malformed)? };
        if ip[0] >> 4 != 6 {
            return Err(Malformed);
        }
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&ip[24..40]);
        (dst, ETH_P_IPV6)
    };
    // SAFETY: the value is never read.
    if unsafe { DECAP_VIPS.get(vip) }.is_none() {
        return Err(NotOurs);
    }
    let trusted = match source {
        Outer::V4(a) => DECAP_SOURCES_V4.get(Key::new(32, a)).is_some(),
        Outer::V6(a) => DECAP_SOURCES_V6.get(Key::new(128, a)).is_some(),
    };
    if !trusted {
        return Err(Refused);
    }
    if first_fragment {
        return Err(Malformed);
    }
    // The Ethernet header moves to just before the inner packet, then the frame starts there.
    let moved = unsafe { &mut *at::<14>(ctx, outer_len).ok_or(Malformed)? };
    moved[0..12].copy_from_slice(&eth[0..12]);
    moved[12..14].copy_from_slice(&ethertype.to_be_bytes());
    // SAFETY: the helper checks the new start lies inside the frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(Malformed);
    }
    Ok(Decapsulated)
}
