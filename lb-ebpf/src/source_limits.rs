//! Per-source limits of a listener: new TCP connections and frames per second from one
//! source (an IPv4 address, an IPv6 /64), over which its frames are dropped before the stack
//! sees them. One `SOURCES` entry per (listener, source) holds both limits' state
//! (`lb_common::rate_admit`); entries are updated in place without a lock, so CPUs racing on
//! one source may each admit an event the other already counted: the limits are exact to
//! within one event per CPU.
use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap, programs::XdpContext,
};
use lb_common::{IPPROTO_TCP, ListenerInfo, MAX_SOURCES, SourceKey, SourceState, rate_admit};

use crate::{Frag, Parsed, bytes};

#[map(name = "SOURCES")]
static SOURCES: LruHashMap<SourceKey, SourceState> = LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// TCP flags: SYN, and ACK (a SYN-ACK is not a new connection).
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Whether this frame from `src` is over one of `info`'s per-source limits. A frame within
/// them is counted against them.
#[inline(always)]
pub(crate) fn over(ctx: &XdpContext, info: &ListenerInfo, src: &[u8; 16], p: &Parsed) -> bool {
    let syn_limited = info.syn_interval_ns != 0 && is_syn(ctx, p);
    // Most listeners have no limits: they read no clock and touch no map.
    if !syn_limited && info.pps_interval_ns == 0 {
        return false;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let key = SourceKey::new(src, info.id);
    let Some(state) = SOURCES.get_ptr_mut(key) else {
        // A source's first frame is always within its limits.
        let mut state = SourceState::default();
        if info.pps_interval_ns != 0 {
            state.pps_tat = now + info.pps_interval_ns as u64;
        }
        if syn_limited {
            state.syn_tat = now + info.syn_interval_ns as u64;
        }
        // A full table forgets its least recent source; a failed insert admits the frame.
        let _ = SOURCES.insert(key, state, 0);
        return false;
    };
    // SAFETY: the entry stays valid for this program run (RCU); its fields are plain integers,
    // each written whole.
    let state = unsafe { &mut *state };
    if info.pps_interval_ns != 0 {
        match rate_admit(state.pps_tat, now, info.pps_interval_ns) {
            Some(tat) => state.pps_tat = tat,
            None => return true,
        }
    }
    if syn_limited {
        match rate_admit(state.syn_tat, now, info.syn_interval_ns) {
            Some(tat) => state.syn_tat = tat,
            None => return true,
        }
    }
    false
}

/// A TCP SYN without ACK: a new connection.
#[inline(always)]
fn is_syn(ctx: &XdpContext, p: &Parsed) -> bool {
    if p.proto != IPPROTO_TCP || matches!(p.frag, Frag::Later(_)) {
        return false;
    }
    match bytes::<14>(ctx, p.l4) {
        Ok(tcp) => tcp[13] & (SYN | ACK) == SYN,
        Err(_) => false,
    }
}
