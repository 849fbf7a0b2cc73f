//! Per-source limits of a listener: new TCP connections and frames per second from one
//! source (an IPv4 address, an IPv6 /64), over which its frames are dropped before the stack
//! sees them, and blocks of sources that stay over them. One `SOURCES` entry per (listener,
//! source) holds both limits' state (`lb_common::source_event`); entries are updated in place
//! without a lock, so CPUs racing on one source may each admit an event the other already
//! counted: the limits are exact to within one event per CPU.
use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap, programs::XdpContext,
};
use lb_common::{
    IPPROTO_TCP, ListenerInfo, MAX_BLOCKED, MAX_SOURCES, NS_PER_SEC, Outcome, SourceKey,
    SourceState, SourceVerdict, source_event,
};

use crate::{Frag, Parsed, bytes};

#[map(name = "SOURCES")]
static SOURCES: LruHashMap<SourceKey, SourceState> = LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// Blocked sources: until when (`bpf_ktime_get_coarse_ns`). Expired entries stay until the
/// table forgets them; the daemon lists them (`/status`) and deletes them (`POST /unblock`).
#[map(name = "BLOCKED")]
static BLOCKED: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(MAX_BLOCKED, 0);

/// TCP flags: SYN, and ACK (a SYN-ACK is not a new connection).
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// `Passed`, or why a frame from `src`, admitted by `info`'s access control, is dropped: its
/// source is blocked or over one of the limits. A frame within them is counted against them.
#[inline(always)]
pub(crate) fn check(ctx: &XdpContext, info: &ListenerInfo, src: &[u8; 16], p: &Parsed) -> Outcome {
    let syn = info.syn_interval_ns != 0 && is_syn(ctx, p);
    // Most listeners have no limits: they read no clock and touch no map.
    if !syn && info.pps_interval_ns == 0 && info.block_secs == 0 {
        return Outcome::Passed;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let key = SourceKey::new(src, info.id);
    if info.block_secs != 0 {
        // SAFETY: a plain integer, copied out at once.
        if let Some(until) = unsafe { BLOCKED.get(key) }
            && *until > now
        {
            return Outcome::Blocked;
        }
    }
    if !syn && info.pps_interval_ns == 0 {
        return Outcome::Passed;
    }
    let verdict = match SOURCES.get_ptr_mut(key) {
        // SAFETY: the entry stays valid for this program run (RCU); its fields are plain
        // integers, each written whole.
        Some(state) => source_event(unsafe { &mut *state }, now, info, syn),
        None => {
            let mut state = SourceState::default();
            let verdict = source_event(&mut state, now, info, syn);
            // A full table forgets its least recent source; a failed insert forgets this one.
            let _ = SOURCES.insert(key, state, 0);
            verdict
        }
    };
    match verdict {
        SourceVerdict::Within => Outcome::Passed,
        SourceVerdict::Over => Outcome::RateLimited,
        SourceVerdict::Block => {
            let until = now + info.block_secs as u64 * NS_PER_SEC;
            let _ = BLOCKED.insert(key, until, 0);
            Outcome::Blocked
        }
    }
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
