//! L4 listeners: which backend an admitted frame goes to (its flow's, else its group's Maglev
//! ring's), and sending it there.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use aya_ebpf::programs::XdpContext;
use lb_common::{
    BackendInfo, FLOW_TOUCH_NS, FlowKey, FlowState, ListenerInfo, MAX_BACKENDS_PER_GROUP, Outcome,
    backend_slot, backend_stats_slot, l4_flags, live_half, maglev, maglev_position,
};

use crate::{BACKEND_STATS, BACKENDS, EGRESS, FLOWS, MAGLEV, MAGLEV_GEN, NEW_FLOWS, encap, icmp};

/// [`forward`]: the inner packet is IPv4.
pub const INNER_V4: u32 = 1;
/// [`forward`]: answer a frame too big for the MTU (the client's own packets, not ICMP).
pub const ANSWER_TOO_BIG: u32 = 2;

/// Sends the frame of `flow` (admitted by `info`, an L4 listener, untagged) to its backend.
/// A frame that would not fit the egress MTU once encapsulated is answered with ICMP "too
/// big" with [`ANSWER_TOO_BIG`] in `flags`, else dropped.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    info: &ListenerInfo,
    flow: &FlowKey,
    len: u64,
    flags: u32,
) -> Outcome {
    let inner_v4 = flags & INNER_V4 != 0;
    let answer = flags & ANSWER_TOO_BIG != 0;
    let Some((slot, backend)) = choose(info, flow) else {
        return Outcome::NoBackend;
    };
    // SAFETY: the context the kernel passed to this run; reading a field of it is allowed.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let redirect = backend.redirected_from(ingress);
    let egress = if redirect { backend.ifindex } else { 0 };
    let overhead = backend.overhead();
    if let Some(mtu) = icmp::too_big(ctx, len, overhead, egress) {
        if !answer {
            return Outcome::TooBig;
        }
        return icmp::answer_too_big(ctx, inner_v4, mtu.saturating_sub(overhead));
    }
    let hash = maglev::client_hash(&flow.src, flow.src_port);
    if encap::push(ctx, &backend, inner_v4, hash, redirect).is_none() {
        return Outcome::EncapFailed;
    }
    let outcome = if !redirect {
        Outcome::ForwardedL4
    } else if EGRESS.redirect(egress, 0).is_ok() {
        Outcome::Redirected
    } else {
        // Not in `EGRESS`: the daemon writes an interface there before any backend names it.
        return Outcome::NoBackend;
    };
    if let Some(c) = BACKEND_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only written by the program running on that CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    outcome
}

/// The [`backend_stats_slot`] of the backend `flow` goes to, and its entry; None if it has no
/// usable one.
#[inline(always)]
fn choose(info: &ListenerInfo, flow: &FlowKey) -> Option<(u32, BackendInfo)> {
    let group = info.l4_group;
    // Read once: the ring and the backend entries below are of this one published state.
    let half = MAGLEV_GEN.get(group).and_then(|g| live_half(*g))?;
    // The clock is read only by listeners that keep flows: it costs a helper call. The coarse
    // clock (CLOCK_MONOTONIC to within a tick) is ample for idle times counted in seconds, and
    // reads no TSC: in a VM `bpf_ktime_get_ns` cost ~20 ns a packet (`cargo xtask bench xdp`).
    let now = if info.flow_secs != 0 {
        // SAFETY: a helper without arguments or side effects.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        0
    };
    // A flow `FLOWS` knows but whose backend is gone stays there with the new pick.
    let mut known = false;
    if info.flow_secs != 0 {
        if let Some(state) = FLOWS.get_ptr_mut(flow) {
            known = true;
            if let Some(b) = remembered(info, state, half, now) {
                // SAFETY: as in `remembered`.
                let seen = unsafe { *state };
                // Refreshing once a second is enough for an idle timeout counted in seconds, and
                // spares the cache line a write per packet.
                if now.wrapping_sub(seen.last_seen_ns) >= FLOW_TOUCH_NS {
                    // SAFETY: an 8-byte aligned store into a value that lives as long as the run.
                    unsafe { (*state).last_seen_ns = now };
                }
                return Some((seen.backend_slot, b));
            }
        }
        // A flow's second packet: it is a flow, not a lone (perhaps spoofed) packet, and moves
        // to the table that floods of first packets never reach.
        if let Some(state) = NEW_FLOWS.get_ptr_mut(flow)
            && let Some(b) = remembered(info, state, half, now)
        {
            // SAFETY: as in `remembered`.
            let seen = unsafe { *state };
            let promoted = FlowState {
                last_seen_ns: now,
                ..seen
            };
            // A failed insert only means the next packet tries again.
            let _ = FLOWS.insert(flow, promoted, 0);
            return Some((seen.backend_slot, b));
        }
    }
    let hash = if info.l4_flags & l4_flags::HASH_SRC_PORT != 0 {
        maglev::client_hash(&flow.src, flow.src_port)
    } else {
        maglev::source_hash(&flow.src)
    };
    // The map lookups check their own indices. `entry` is below MAGLEV_CHUNK by construction
    // (LLVM drops the slice check); the backend bound keeps the slot inside the group's and
    // turns NO_BACKEND away.
    let (chunk, entry) = maglev_position(group, half, maglev::table_slot(hash));
    let backend = *MAGLEV.get(chunk)?.backends.get(entry as usize)?;
    if backend >= MAX_BACKENDS_PER_GROUP {
        return None;
    }
    let b = *BACKENDS.get(backend_slot(group, half, backend))?;
    if !b.usable() {
        return None;
    }
    let slot = backend_stats_slot(group, backend);
    if info.flow_secs != 0 {
        let state = FlowState {
            backend_slot: slot,
            epoch: b.epoch,
            last_seen_ns: now,
        };
        // A full table evicts its least recently used flow; a failed insert only means this
        // flow follows the ring next time.
        let _ = if known {
            FLOWS.insert(flow, state, 0)
        } else {
            NEW_FLOWS.insert(flow, state, 0)
        };
    }
    Some((slot, b))
}

/// The backend entry a remembered flow still goes to: seen less than the listener's idle time
/// ago, for a backend of this group whose index still holds the backend it was sent to
/// (same epoch) and that is usable.
#[inline(always)]
fn remembered(
    info: &ListenerInfo,
    state: *mut FlowState,
    half: u32,
    now: u64,
) -> Option<BackendInfo> {
    // SAFETY: the value lives as long as the program runs; a concurrent update on another CPU
    // can at worst give a torn value, which the checks below then reject or accept as a valid
    // backend of this group.
    let seen = unsafe { *state };
    let age = now.wrapping_sub(seen.last_seen_ns);
    if age >= u64::from(info.flow_secs) * 1_000_000_000
        || seen.backend_slot / MAX_BACKENDS_PER_GROUP != info.l4_group
    {
        return None;
    }
    let index = seen.backend_slot % MAX_BACKENDS_PER_GROUP;
    let b = *BACKENDS.get(backend_slot(info.l4_group, half, index))?;
    (b.epoch == seen.epoch && b.usable()).then_some(b)
}
