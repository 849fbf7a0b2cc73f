//! The kernel/userspace contract of edgelb.
//!
//! Everything the XDP program and the daemon must agree on lives here: map names and sizes, the
//! `#[repr(C)]` key and value types stored in those maps, and the meaning of each counter. The
//! crate is `no_std` so the eBPF program can use it; with the `user` feature it also implements
//! `aya::Pod` for the map types and carries [`reference`], a plain-Rust classifier that states
//! what the XDP program must decide for any frame.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod inet;
pub mod maglev;
#[cfg(feature = "user")]
pub mod reference;

use bytemuck::{Pod, Zeroable};

/// Name of the XDP program inside the object built from `lb-ebpf`.
pub const PROGRAM_NAME: &str = "edgelb_xdp";
/// Name of the XDP program `edgelb_xdp` hands ICMP errors to (a tail call through `TAIL`,
/// entry [`TAIL_ICMP`]): it has a stack of its own for them. Same object.
pub const ICMP_PROGRAM_NAME: &str = "edgelb_icmp";
/// Entry of the `TAIL` program array that holds [`ICMP_PROGRAM_NAME`].
pub const TAIL_ICMP: u32 = 0;
/// Entries of the `TAIL` program array.
pub const TAIL_SLOTS: u32 = 1;

/// Name of the decapsulating XDP program (run on L4 backends by `edgelb decap`), same object.
pub const DECAP_PROGRAM_NAME: &str = "edgelb_decap";

/// Map names, as declared in `lb-ebpf` and opened by the daemon.
pub const MAP_LISTENERS: &str = "LISTENERS";
pub const MAP_PORTS: &str = "PORTS";
pub const MAP_WILDCARDS: &str = "WILDCARDS";
pub const MAP_ACL_V4: &str = "ACL_V4";
pub const MAP_ACL_V6: &str = "ACL_V6";
pub const MAP_STATS: &str = "STATS";
pub const MAP_MAGLEV: &str = "MAGLEV";
pub const MAP_MAGLEV_GEN: &str = "MAGLEV_GEN";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_ENCAP: &str = "ENCAP";
pub const MAP_EGRESS: &str = "EGRESS";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_NEW_FLOWS: &str = "NEW_FLOWS";
pub const MAP_FRAGS: &str = "FRAGS";
pub const MAP_SOURCES: &str = "SOURCES";
pub const MAP_BLOCKED: &str = "BLOCKED";
pub const MAP_SYN_STAMPS: &str = "SYN_STAMPS";
pub const MAP_SYNS: &str = "SYNS";
pub const MAP_SYN_OPTIONS: &str = "SYN_OPTIONS";
pub const MAP_ICMP_RATE: &str = "ICMP_RATE";
pub const MAP_TAIL: &str = "TAIL";
pub const MAP_DECAP_VIPS: &str = "DECAP_VIPS";
pub const MAP_DECAP_STATS: &str = "DECAP_STATS";
pub const MAP_DECAP_SOURCES_V4: &str = "DECAP_SOURCES_V4";
pub const MAP_DECAP_SOURCES_V6: &str = "DECAP_SOURCES_V6";

/// Listeners the data plane can know at once. Listener ids run from 1 to `MAX_LISTENERS`;
/// id 0 is the counter slot for traffic that belongs to no listener.
pub const MAX_LISTENERS: u32 = 1024;
/// Entries of the `LISTENERS` map: a listener id has up to two keys (an `--http3` listener's
/// TCP and UDP), and a reload adds the new listeners before it removes the old.
pub const LISTENER_ENTRIES: u32 = 4 * MAX_LISTENERS;
/// Entries of the per-CPU counter array: slot 0 plus one per listener id.
pub const STATS_SLOTS: u32 = MAX_LISTENERS + 1;
/// The counter slot of frames that belong to no listener (not ours, unparsable, fragments).
pub const NO_LISTENER_SLOT: u32 = 0;
/// Prefixes each ACL trie can hold, summed over all listeners.
pub const MAX_ACL_ENTRIES: u32 = 262_144;

/// 802.1Q and 802.1ad tags the parser walks before giving up on a frame.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers the parser walks before giving up on a packet.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AUTH: u8 = 51;
pub const IPV6_DEST_OPTS: u8 = 60;
/// IPv4 inside an IP header (IP-in-IP), as IPv4 protocol or IPv6 next header.
pub const IPPROTO_IPIP: u8 = 4;
/// IPv6 inside an IP header, as IPv4 protocol or IPv6 next header.
pub const IPPROTO_IPV6: u8 = 41;

/// Bits of an ACL trie key taken by the listener id, ahead of the address.
pub const ACL_LISTENER_ID_BITS: u32 = 32;

/// Where a listener accepts traffic.
///
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`). A listener on every address uses
/// [`ANY_V4`] (IPv4 only, like a socket bound to `0.0.0.0`) or [`ANY`] (both families, like a
/// dual-stack socket bound to `[::]`). Lookup order: exact address, the family's wildcard, then
/// [`ANY`] for IPv4 packets.
///
/// In the kernel, listeners on one address are keys of the `LISTENERS` hash map; the `PORTS`
/// array holds per (port, protocol) one [`port_entry`]: whether that map holds any listener of
/// the port, and where in the `WILDCARDS` array its wildcard listeners are. Most frames then
/// cost array reads (inlined by the verifier), no hash lookup. A change is whole as the
/// program sees it: a port's changed listeners on one address are written under its other
/// [`ListenerKey::generation`] and a wildcard listener to a `WILDCARDS` entry no port points
/// at, then the port's entry is switched (one 4-byte map update); what a run may still be
/// reading is removed or reused only after a grace period (see the daemon's
/// `dataplane::grace`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ListenerKey {
    pub addr: [u8; 16],
    /// Destination port in host byte order.
    pub port: u16,
    pub proto: u8,
    /// The generation of its port's listeners on one address ([`port_entry::GEN`]): a reload
    /// that changes any of them writes them all under the other generation, then switches the
    /// port's entry, so a frame sees the port's old listeners or its new ones, and no element
    /// a run may be reading is replaced in place.
    pub generation: u8,
}

/// Wildcard address of listeners bound to every IPv4 and IPv6 address.
pub const ANY: [u8; 16] = [0; 16];
/// Wildcard address of listeners bound to every IPv4 address.
pub const ANY_V4: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];

impl ListenerKey {
    pub const fn new(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            generation: 0,
        }
    }
}

/// The IPv4-mapped IPv6 form of an IPv4 address, as stored in [`ListenerKey::addr`].
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Whether `v6` starts with the IPv4-mapped prefix `::ffff:`. Compared as two words rather
/// than twelve bytes: in the XDP program the address sits in an 8-aligned flow key, and this
/// is two loads on the path of every frame.
#[inline(always)]
pub const fn is_v4_mapped(v6: &[u8; 16]) -> bool {
    let head = u64::from_ne_bytes([v6[0], v6[1], v6[2], v6[3], v6[4], v6[5], v6[6], v6[7]]);
    let mid = u32::from_be_bytes([v6[8], v6[9], v6[10], v6[11]]);
    head == 0 && mid == 0xffff
}

/// The IPv4 address inside an IPv4-mapped IPv6 address, if it is one.
#[inline(always)]
pub const fn v4_unmapped(v6: &[u8; 16]) -> Option<[u8; 4]> {
    if is_v4_mapped(v6) {
        Some([v6[12], v6[13], v6[14], v6[15]])
    } else {
        None
    }
}

/// Access-control modes of a listener, as stored in [`ListenerInfo::acl`].
pub mod acl {
    /// Every source is admitted.
    pub const ALL: u32 = 0;
    /// Only sources in the listener's prefixes are admitted (whitelist).
    pub const ALLOW: u32 = 1;
    /// Sources in the listener's prefixes are dropped (blacklist).
    pub const DENY: u32 = 2;
}

/// Value of the `LISTENERS` map and of the `WILDCARDS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ListenerInfo {
    /// 1..=MAX_LISTENERS: the listener's counter slot and the first 32 bits of its ACL keys.
    pub id: u32,
    /// One of [`acl`].
    pub acl: u32,
    /// Backend group for L4 forwarding in XDP; [`NO_GROUP`] passes the packet to the stack.
    pub l4_group: u32,
    /// L4 listeners: seconds an idle flow stays on the backend it was first sent to, even when
    /// the ring changes (`FLOWS`); 0 keeps no flow table and follows the ring alone.
    pub flow_secs: u32,
    /// L4 listeners: bits of [`l4_flags`].
    pub l4_flags: u32,
    /// Per-source limit on new TCP connections (SYN without ACK), as the interval between them
    /// ([`rate_interval_ns`]); 0: no limit. See [`SourceKey`].
    pub syn_interval_ns: u32,
    /// Per-source limit on frames of any kind to the listener, likewise.
    pub pps_interval_ns: u32,
    /// Seconds a source that stays over a limit for [`BLOCK_AFTER_NS`] is then blocked
    /// (all its frames to the listener dropped, `BLOCKED`); 0: never blocked.
    pub block_secs: u32,
    /// Bits of [`syn_cookies`]: whether the program counts the listener's SYNs and answers
    /// them itself with SYN cookies.
    pub syn_cookies: u32,
    /// The first 32 bits of the listener's ACL trie keys: its id, with [`ACL_SET_TAG`] or
    /// without. A reload that changes the listener's list together with its mode or another
    /// value writes the new list under the other set, then the listener, then removes the old
    /// list: a frame never reads one configuration's list with the other's values.
    pub acl_set: u32,
}

/// See [`ListenerInfo::acl_set`]; above every listener id.
pub const ACL_SET_TAG: u32 = 1 << 31;

/// Bits of [`ListenerInfo::syn_cookies`], for TCP listeners served in userspace.
pub mod syn_cookies {
    /// Count the listener's new connections (SYN without ACK) in `SYNS`, for the daemon to
    /// turn [`ANSWER`] on and off (`--syn-protect auto`).
    pub const WATCH: u32 = 1;
    /// Answer them with a SYN-ACK carrying a SYN cookie (`XDP_TX`); the client's ACK goes to
    /// the kernel, which checks the cookie and creates the connection.
    pub const ANSWER: u32 = 2;
}

/// Pure SYNs a listener answering with cookies still passes to the kernel, about one per this
/// interval per listener and address family: the kernel accepts a cookie only from a listener
/// that sent one itself within the last two minutes (`tcp_synq_no_recent_overflow`), and
/// with `net.ipv4.tcp_syncookies=2` the passed SYN is answered with one. Once the interval is
/// over, the first SYN whose checksums are correct goes (one the kernel would drop unanswered
/// would leave the mark stale); the first SYN of all goes after an unset entry (the daemon
/// clears them whenever it changes listeners), or after [`SYN_STAMP_ANY_NS`]. Never one
/// from or to an address the kernel drops (`inet::syn_addresses_ok`).
pub const SYN_STAMP_NS: u64 = 5 * NS_PER_SEC;

/// After this long without a stamp, any SYN stamps: where checksums arrive unfinished (a
/// veth's sender offloading them), none ever looks correct.
pub const SYN_STAMP_ANY_NS: u64 = 30 * NS_PER_SEC;

/// Entries of the `SYN_STAMPS` array: one per listener id and address family.
pub const SYN_STAMP_SLOTS: u32 = STATS_SLOTS * 2;

/// The `SYN_STAMPS` entry of a listener for IPv4 or IPv6 frames.
pub const fn syn_stamp_slot(id: u32, v4: bool) -> u32 {
    id * 2 + if v4 { 0 } else { 1 }
}

/// The one entry of the `SYN_OPTIONS` array: what the host's TCP lets a SYN cookie's SYN-ACK
/// offer (the kernel refuses a cookie claiming an option it has turned off). Written by the
/// daemon from the host's settings.
pub mod syn_options {
    /// The window scale the kernel gives connections it creates from cookies (it depends on
    /// the host's receive-buffer settings).
    pub const WSCALE_MASK: u32 = 0x0f;
    /// `net.ipv4.tcp_window_scaling` is on.
    pub const SCALING: u32 = 1 << 8;
    /// `net.ipv4.tcp_sack` is on.
    pub const SACK: u32 = 1 << 9;
}

/// The low bits of a SYN cookie's TCP timestamp: the options the client's SYN asked for, as
/// the kernel decodes them from the echoed timestamp (`cookie_timestamp_decode`). The rest
/// of the timestamp is the kernel's millisecond clock, rounded down past these bits.
pub mod cookie_ts {
    /// Bits below these hold the options.
    pub const BITS: u32 = 6;
    /// The client's window scale; all ones: the client does not scale.
    pub const WSCALE_MASK: u32 = 0x0f;
    /// The client permits SACK.
    pub const SACK: u32 = 1 << 4;
}

/// The timestamp value of a SYN cookie's SYN-ACK at `now_ms` (the kernel's TCP clock) for a
/// client that sent window scale `wscale` (None: no window scaling) and `sack`: never later
/// than the clock, as the kernel's own (`cookie_init_timestamp`), so that the connection's
/// later timestamps never go backwards for the client.
pub const fn cookie_timestamp(now_ms: u32, wscale: Option<u8>, sack: bool) -> u32 {
    let mut options = match wscale {
        Some(w) if w <= 14 => w as u32,
        Some(_) => 14,
        None => cookie_ts::WSCALE_MASK,
    };
    if sack {
        options |= cookie_ts::SACK;
    }
    let ts = (now_ms >> cookie_ts::BITS << cookie_ts::BITS) | options;
    if ts > now_ms {
        ts.wrapping_sub(1 << cookie_ts::BITS)
    } else {
        ts
    }
}

/// The interval a per-source limit of `per_sec` events a second allows between two events,
/// in nanoseconds (0: no limit). Each source may also spend a second's worth at once.
pub const fn rate_interval_ns(per_sec: u32) -> u32 {
    if per_sec == 0 {
        0
    } else {
        (NS_PER_SEC / per_sec as u64) as u32
    }
}

pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Sources whose limits the `SOURCES` LRU hash tracks, over all listeners (a 24-byte key and a
/// 32-byte value each: 7.3 MB of entries before the kernel's own overhead). A source
/// pushed out by newer ones starts again with a full second's worth when it comes back:
/// per-source limits hold back a few busy sources, not a flood of spoofed ones.
pub const MAX_SOURCES: u32 = 131_072;

/// Key of the `SOURCES` LRU hash: a listener and one source, an IPv4 address (IPv4-mapped) or
/// an IPv6 /64 (the rest zero), as one client is likely to hold them.
// 8-aligned: the XDP program writes its address as words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SourceKey {
    pub src: [u8; 16],
    pub listener_id: u32,
    pub _pad: u32,
}

impl SourceKey {
    /// The key of `src` (an IPv4-mapped or IPv6 address) at `listener_id`.
    pub fn new(src: &[u8; 16], listener_id: u32) -> Self {
        let mut key = SourceKey {
            src: *src,
            listener_id,
            _pad: 0,
        };
        if v4_unmapped(src).is_none() {
            key.src[8..].copy_from_slice(&[0; 8]);
        }
        key
    }
}

/// Value of the `SOURCES` LRU hash: for each limit, the time (`bpf_ktime_get_coarse_ns`) at
/// which the source's budget is whole again (the generic cell rate algorithm: each event
/// moves it one interval on; an event that would move it more than a second past now is over
/// the limit and leaves it). 0: no event yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SourceState {
    pub syn_tat: u64,
    pub pps_tat: u64,
    /// When the source's current streak of refusals began; 0: none.
    pub over_since: u64,
    /// When the source was last refused.
    pub last_over: u64,
}

/// How long a source must stay over a limit to be blocked, with [`ListenerInfo::block_secs`]:
/// refused this long after the first refusal of a streak. A streak ends when a source goes
/// [`STREAK_GAP_NS`] (or two of its limit's intervals, if longer) without a refusal, so a
/// source that sends faster than its limit all along is blocked, one that only overshoots
/// now and then is not.
pub const BLOCK_AFTER_NS: u64 = NS_PER_SEC;
pub const STREAK_GAP_NS: u64 = NS_PER_SEC / 4;

/// Sources the `BLOCKED` LRU hash holds (keyed by [`SourceKey`], valued by the
/// `bpf_ktime_get_coarse_ns` time the block ends).
pub const MAX_BLOCKED: u32 = 65_536;

/// What one frame does to its source at a listener with limits ([`source_event`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceVerdict {
    Within,
    Over,
    /// Over, and long enough to be blocked (the listener blocks sources).
    Block,
}

/// Counts one frame (a SYN without ACK if `syn`) of a source against `info`'s limits at
/// `now`, updating `state`. The caller has checked that a limit applies to it.
#[inline(always)]
pub fn source_event(
    state: &mut SourceState,
    now: u64,
    info: &ListenerInfo,
    syn: bool,
) -> SourceVerdict {
    if info.pps_interval_ns != 0 {
        match rate_admit(state.pps_tat, now, info.pps_interval_ns) {
            Some(tat) => state.pps_tat = tat,
            None => return refused(state, now, info, info.pps_interval_ns),
        }
    }
    if syn && info.syn_interval_ns != 0 {
        match rate_admit(state.syn_tat, now, info.syn_interval_ns) {
            Some(tat) => state.syn_tat = tat,
            None => return refused(state, now, info, info.syn_interval_ns),
        }
    }
    SourceVerdict::Within
}

#[inline(always)]
fn refused(state: &mut SourceState, now: u64, info: &ListenerInfo, interval: u32) -> SourceVerdict {
    if info.block_secs == 0 {
        return SourceVerdict::Over;
    }
    let gap = (2 * interval as u64).max(STREAK_GAP_NS);
    if state.over_since == 0 || now.saturating_sub(state.last_over) > gap {
        state.over_since = now;
    }
    state.last_over = now;
    if now.saturating_sub(state.over_since) >= BLOCK_AFTER_NS {
        state.over_since = 0;
        SourceVerdict::Block
    } else {
        SourceVerdict::Over
    }
}

/// One event of a limit with `interval` ns against its time `tat` at `now`: Some(new tat) if
/// within the limit, None if over it.
#[inline(always)]
pub const fn rate_admit(tat: u64, now: u64, interval: u32) -> Option<u64> {
    let interval = interval as u64;
    let tat = if tat > now { tat } else { now };
    if tat - now > NS_PER_SEC.saturating_sub(interval) {
        None
    } else {
        Some(tat + interval)
    }
}

/// Bits of [`ListenerInfo::l4_flags`].
pub mod l4_flags {
    /// Hash the client's source address and source port (so one client's connections spread
    /// over backends) instead of its address alone (so they all meet on one backend).
    pub const HASH_SRC_PORT: u32 = 1;
}

/// Entries of the `PORTS` array: one per TCP port and one per UDP port.
pub const PORT_SLOTS: u32 = 2 * 65536;

/// Index of (`port`, `proto`) in the `PORTS` array; None for protocols other than TCP and UDP.
#[inline(always)]
pub const fn port_slot(port: u16, proto: u8) -> Option<u32> {
    match proto {
        IPPROTO_TCP => Some((port as u32) << 1),
        IPPROTO_UDP => Some(((port as u32) << 1) | 1),
        _ => None,
    }
}

/// Entries of the `WILDCARDS` array (entry 0 unused): room for every listener entry of a
/// configuration twice (an `--http3` listener has a TCP and a UDP one), the running ones and
/// their replacements.
pub const WILDCARD_SLOTS: u32 = 4 * MAX_LISTENERS + 1;

/// A `PORTS` entry: whether `LISTENERS` holds listeners on one address for the port, and the
/// `WILDCARDS` entries of its wildcard listeners (0: none).
pub mod port_entry {
    /// Listeners on one address.
    pub const EXACT: u32 = 1;
    /// The generation their keys carry ([`ListenerKey::generation`](super::ListenerKey)).
    pub const GEN: u32 = 1 << 27;
    const INDEX: u32 = 0x1fff;
    const _: () = assert!(super::WILDCARD_SLOTS <= INDEX + 1);

    /// The `WILDCARDS` entry of the listener on [`ANY_V4`](super::ANY_V4) (IPv4 frames only).
    #[inline(always)]
    pub const fn any_v4(entry: u32) -> u32 {
        (entry >> 1) & INDEX
    }

    /// The `WILDCARDS` entry of the listener on [`ANY`](super::ANY) (both families).
    #[inline(always)]
    pub const fn any(entry: u32) -> u32 {
        (entry >> 14) & INDEX
    }

    /// Both `WILDCARDS` entries: [`any_v4`], [`any`].
    #[inline(always)]
    pub const fn wildcards(entry: u32) -> [u32; 2] {
        [any_v4(entry), any(entry)]
    }

    /// The entry of a port with listeners on one address or not, and these wildcard entries
    /// (each below [`WILDCARD_SLOTS`](super::WILDCARD_SLOTS)).
    pub const fn pack(exact: bool, generation: u8, any_v4: u32, any: u32) -> u32 {
        exact as u32 | (any_v4 & INDEX) << 1 | (any & INDEX) << 14 | ((generation as u32 & 1) * GEN)
    }

    /// The generation of the port's listeners on one address.
    #[inline(always)]
    pub const fn generation(entry: u32) -> u8 {
        (entry & GEN != 0) as u8
    }
}

/// [`ListenerInfo::l4_group`] of listeners served in userspace.
pub const NO_GROUP: u32 = u32::MAX;

/// Backend groups whose Maglev rings the kernel holds at once: [`ListenerInfo::l4_group`] runs
/// from 0 to `MAX_L4_GROUPS - 1`; a larger value is treated as [`NO_GROUP`].
pub const MAX_L4_GROUPS: u32 = 16;

/// Backends of one group the kernel can pick: ring entries run from 0 to
/// `MAX_BACKENDS_PER_GROUP - 1`; any other entry (such as [`maglev::NO_BACKEND`]) picks none.
pub const MAX_BACKENDS_PER_GROUP: u32 = 256;

/// Ring entries per element of the `MAGLEV` array. A ring is written with one system call per
/// element, so whole chunks make a ring 257 writes instead of 65,537 (and an array pads each
/// element to 8 bytes, which would double the memory of one `u32` per element).
pub const MAGLEV_CHUNK: u32 = 256;

/// Elements of the `MAGLEV` array one ring takes: [`maglev::TABLE_SIZE`] entries rounded up
/// to whole chunks (the 255 entries past the end of the last chunk are never read).
pub const MAGLEV_CHUNKS_PER_RING: u32 = maglev::TABLE_SIZE.div_ceil(MAGLEV_CHUNK);

/// Elements of the `MAGLEV` array: two rings per group, of which `MAGLEV_GEN` says which one
/// is live. A ring is rewritten into the half the kernel is not reading, then `MAGLEV_GEN` is
/// flipped, so a packet sees either the old ring or the new one, never a mix.
///
/// Kernel memory: 16 groups * 2 halves * 257 chunks * 1 KiB = 8.4 MB, allocated when the
/// program is loaded.
pub const MAGLEV_ENTRIES: u32 = 2 * MAX_L4_GROUPS * MAGLEV_CHUNKS_PER_RING;

/// Value of the `MAGLEV` array: [`MAGLEV_CHUNK`] consecutive entries of a ring, each a backend
/// index or [`maglev::NO_BACKEND`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct MaglevChunk {
    pub backends: [u32; MAGLEV_CHUNK as usize],
}

// A ring fits its chunks with less than one chunk to spare; NO_BACKEND is never a backend the
// kernel counts (one comparison turns both away), and NO_GROUP is never a group it holds.
const _: () = {
    assert!(MAGLEV_CHUNKS_PER_RING * MAGLEV_CHUNK >= maglev::TABLE_SIZE);
    assert!((MAGLEV_CHUNKS_PER_RING - 1) * MAGLEV_CHUNK < maglev::TABLE_SIZE);
    assert!(MAX_BACKENDS_PER_GROUP < maglev::NO_BACKEND);
    assert!(MAX_L4_GROUPS < NO_GROUP);
};

/// Where entry `slot` of half `half` (0 or 1) of `group`'s ring lives: the `MAGLEV` element,
/// and the index in its [`MaglevChunk::backends`].
#[inline(always)]
pub const fn maglev_position(group: u32, half: u32, slot: u32) -> (u32, u32) {
    (
        (group * 2 + half) * MAGLEV_CHUNKS_PER_RING + slot / MAGLEV_CHUNK,
        slot % MAGLEV_CHUNK,
    )
}

/// The half of a group's ring and backends that is live, from its `MAGLEV_GEN` value: the
/// generation, i.e. how many states the daemon has published for the group since the program
/// was loaded. 0 (the array's initial content) means no ring yet: the group picks no backend.
/// Generation `g > 0` lives in half `g & 1`; the writer skips 0 when the counter wraps.
#[inline(always)]
pub const fn live_half(generation: u32) -> Option<u32> {
    if generation == 0 {
        None
    } else {
        Some(generation & 1)
    }
}

/// The generation that follows `generation` (never 0, and of the other parity).
pub const fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 2,
        g => g,
    }
}

/// Entries of the per-CPU `BACKEND_STATS` array: one [`BackendCounters`] per (group, backend).
pub const BACKEND_STATS_SLOTS: u32 = MAX_L4_GROUPS * MAX_BACKENDS_PER_GROUP;

/// Index in `BACKEND_STATS` of backend `backend` of `group`.
#[inline(always)]
pub const fn backend_stats_slot(group: u32, backend: u32) -> u32 {
    group * MAX_BACKENDS_PER_GROUP + backend
}

/// Value of the per-CPU `BACKEND_STATS` array: the frames of L4 listeners that the program
/// assigned to one backend through its group's Maglev ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendCounters {
    pub packets: u64,
    /// Whole frames, Ethernet header included.
    pub bytes: u64,
}

impl BackendCounters {
    pub fn add(&mut self, other: &BackendCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// Entries of the `BACKENDS` array: like the rings, two halves per group
/// ([`backend_slot`]), published together by the group's `MAGLEV_GEN`.
pub const BACKENDS_SLOTS: u32 = MAX_L4_GROUPS * 2 * MAX_BACKENDS_PER_GROUP;

/// Index in `BACKENDS` of backend `backend` of `group` in half `half` (0 or 1).
///
/// A group's live half ([`live_half`] of its `MAGLEV_GEN`) names both its ring and its
/// backends, so one 4-byte store publishes a new ring and new backend entries together: a
/// packet never pairs a ring entry with a backend entry of another state, and never reads an
/// entry while it is being copied (entries are 28 bytes; the kernel copies them without a
/// lock). A backend keeps its index for as long as it is configured in the group.
#[inline(always)]
pub const fn backend_slot(group: u32, half: u32, backend: u32) -> u32 {
    (group * 2 + half) * MAX_BACKENDS_PER_GROUP + backend
}

/// Bits of [`BackendInfo::flags`].
pub mod backend_flags {
    /// The backend takes traffic. Without it the program drops what the ring or a flow sends
    /// there ([`Outcome::NoBackend`](super::Outcome::NoBackend)): the fast way to stop
    /// sending to a backend before its ring is rebuilt.
    pub const ALIVE: u16 = 1;
    /// [`BackendInfo::addr`] is an IPv6 address: the outer header is IPv6. Without it the
    /// address is IPv4-mapped and the outer header IPv4. Set by the writer from the address, so
    /// the program need not compare twelve bytes per packet.
    pub const IPV6: u16 = 2;
}

/// Value of the `BACKENDS` array: where L4 frames sent to one backend of one group go (one
/// entry per half, [`backend_slot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct BackendInfo {
    /// The backend's address, the outer destination; IPv4 IPv4-mapped.
    pub addr: [u8; 16],
    /// Ethernet address of the next hop towards `addr` on interface `ifindex`. All zero: not
    /// resolved, not usable.
    pub next_hop_mac: [u8; 6],
    /// Bits of [`backend_flags`].
    pub flags: u16,
    /// Changes whenever the backend index is given to another backend (never 0 for a written
    /// entry; both halves carry the same epoch for the same backend), so a flow remembered for
    /// the index's previous backend is not sent to the new one.
    pub epoch: u32,
    /// The interface the route towards `addr` leaves by. A frame that came in on it (or any
    /// frame, when 0) goes back out with `XDP_TX`, from the MAC it was sent to; one that came
    /// in on another interface is redirected to this one through `EGRESS`, from `egress_mac`
    /// ([`Outcome::Redirected`]). A node with one interface for clients and another for
    /// backends needs the second: `XDP_TX` would send the frame out to the clients' side.
    pub ifindex: u32,
    /// The Ethernet address of interface `ifindex`: the source of redirected frames.
    pub egress_mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl BackendInfo {
    /// Whether frames can be sent to this backend: alive, with a next hop.
    #[inline(always)]
    pub fn usable(&self) -> bool {
        // Byte by byte: a slice comparison would become a `bcmp` call, which BPF lacks.
        let m = &self.next_hop_mac;
        self.flags & backend_flags::ALIVE != 0 && (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) != 0
    }

    /// Whether a frame that came in on interface `ingress` leaves by another one
    /// ([`BackendInfo::ifindex`]).
    #[inline(always)]
    pub const fn redirected_from(&self, ingress: u32) -> bool {
        self.ifindex != 0 && self.ifindex != ingress
    }

    #[inline(always)]
    pub const fn outer_v6(&self) -> bool {
        self.flags & backend_flags::IPV6 != 0
    }

    /// Bytes the outer header adds to a frame sent to this backend.
    #[inline(always)]
    pub const fn overhead(&self) -> u32 {
        if self.outer_v6() { 40 } else { 20 }
    }
}

/// Value of the single-entry `ENCAP` array: the prefixes outer source addresses are made in.
///
/// The low bits of an outer source come from a hash of the client's address and port
/// ([`maglev::client_hash`]), so that the backends' NICs, which spread received packets over
/// queues by the outer addresses, spread tunnelled ones too. Userspace writes defaults at load
/// ([`DEFAULT_ENCAP_V4`], [`DEFAULT_ENCAP_V6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EncapConfig {
    /// The /16 of IPv4 outer sources.
    pub v4_prefix: [u8; 2],
    pub _pad: [u8; 2],
    /// The /96 of IPv6 outer sources.
    pub v6_prefix: [u8; 12],
}

/// Default /16 of IPv4 outer sources (RFC 1918 space no client is expected to come from).
pub const DEFAULT_ENCAP_V4: [u8; 2] = [172, 16];
/// Default /96 of IPv6 outer sources: `fd00:e1b::/96` (unique local).
pub const DEFAULT_ENCAP_V6: [u8; 12] = [0xfd, 0x00, 0x0e, 0x1b, 0, 0, 0, 0, 0, 0, 0, 0];

impl EncapConfig {
    /// The IPv4 outer source for a client whose [`maglev::client_hash`] is `hash`.
    #[inline(always)]
    pub const fn v4_source(&self, hash: u32) -> [u8; 4] {
        [
            self.v4_prefix[0],
            self.v4_prefix[1],
            (hash >> 8) as u8,
            hash as u8,
        ]
    }

    /// The IPv6 outer source for a client whose [`maglev::client_hash`] is `hash`.
    #[inline(always)]
    pub const fn v6_source(&self, hash: u32) -> [u8; 16] {
        let p = &self.v6_prefix;
        let h = hash.to_be_bytes();
        [
            p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], h[0], h[1],
            h[2], h[3],
        ]
    }
}

/// TTL (IPv4) and hop limit (IPv6) of outer headers.
pub const ENCAP_TTL: u8 = 64;

/// Flows the `FLOWS` LRU hash remembers; the least recently used are forgotten first.
/// Kernel memory: about 262,144 * (40 + 16 + ~50 bytes of overhead) = 28 MB.
///
/// A flow enters `FLOWS` with its second packet; its first is remembered in `NEW_FLOWS`
/// ([`MAX_NEW_FLOWS`]). A flood of packets from spoofed sources, one each, churns `NEW_FLOWS`
/// only, so the flows that keep established connections on their backend across ring changes
/// stay. (A flood that repeats each spoofed 5-tuple does reach `FLOWS`; it costs the attacker
/// twice the packets, and LRU order still keeps the flows that are busy.)
pub const MAX_FLOWS: u32 = 262_144;
/// Flows seen once that the `NEW_FLOWS` LRU hash remembers (7 MB). While a flood churns it, a
/// real flow's second packet may find its first forgotten: it then follows the ring (the same
/// backend unless the ring changed in between) and is remembered again.
pub const MAX_NEW_FLOWS: u32 = 65_536;
/// A flow's `last_seen_ns` is rewritten only when it is at least this old, so a busy flow costs
/// one map write per second rather than one per packet.
pub const FLOW_TOUCH_NS: u64 = NS_PER_SEC;

/// Key of the `FLOWS` LRU hash: a frame's 5-tuple, addresses IPv4-mapped for IPv4, ports in
/// host byte order.
// 8-aligned: the XDP program reads its addresses as words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of the `FLOWS` LRU hash: the backend a flow was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowState {
    /// [`backend_stats_slot`] of the backend: its group and index in one, the same in both
    /// halves of `BACKENDS`.
    pub backend_slot: u32,
    /// [`BackendInfo::epoch`] when the flow was sent there.
    pub epoch: u32,
    /// `bpf_ktime_get_coarse_ns` when the flow was last seen (to within [`FLOW_TOUCH_NS`]).
    pub last_seen_ns: u64,
}

/// Fragmented datagrams of L4 listeners whose ports the `FRAGS` LRU hash remembers (1 MB).
pub const MAX_FRAGS: u32 = 16_384;

/// Key of the `FRAGS` LRU hash: one fragmented datagram, as its fragments all name it.
// 8-aligned: the XDP program reads its addresses as words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    /// Addresses as in [`FlowKey`] (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The IP identification: 16 bits for IPv4, the fragment header's 32 for IPv6.
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of the `FRAGS` LRU hash: the ports the first fragment of a datagram carried, which
/// the later fragments (no transport header) are classified and forwarded with, so that all
/// fragments of a datagram reach the same backend. Ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragPorts {
    pub src_port: u16,
    pub dst_port: u16,
}

/// Entries of the `DECAP_VIPS` hash (IPv4-mapped addresses; the value is unused).
pub const MAX_DECAP_VIPS: u32 = 1024;

/// Prefixes each of the `DECAP_SOURCES_V4` and `DECAP_SOURCES_V6` tries can hold: the outer
/// source addresses tunnelled packets for a VIP may come from (`edgelb decap --from`). Keys
/// are the address bytes in network order behind the prefix length; the value is unused.
pub const MAX_DECAP_SOURCES: u32 = 1024;

/// What the decap program concluded about one frame; indices of [`DecapCounters`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecapOutcome {
    /// IP-in-IP to a configured VIP from a trusted outer source: outer header removed,
    /// `XDP_PASS`.
    Decapsulated = 0,
    /// Anything else: passed untouched.
    NotOurs = 1,
    /// An IP-in-IP packet whose outer or inner header is truncated, fragmented or of the wrong
    /// version: passed untouched (the stack drops it, having no tunnel).
    Malformed = 2,
    /// IP-in-IP to a configured VIP from an outer source outside the trusted prefixes:
    /// `XDP_DROP`. Decapsulating it would let anyone who reaches the backend tunnel traffic to
    /// the VIP around the balancers' access control; passing it would hand it to a host's own
    /// ipip/ip6tnl device, if it has one, which would decapsulate it.
    Refused = 3,
}

pub const DECAP_OUTCOMES: usize = 4;

impl DecapOutcome {
    pub const ALL: [DecapOutcome; DECAP_OUTCOMES] = [
        DecapOutcome::Decapsulated,
        DecapOutcome::NotOurs,
        DecapOutcome::Malformed,
        DecapOutcome::Refused,
    ];

    /// The XDP action taken for this outcome.
    pub const fn action(self) -> u32 {
        match self {
            DecapOutcome::Refused => XDP_DROP,
            _ => XDP_PASS,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DecapOutcome::Decapsulated => "decapsulated",
            DecapOutcome::NotOurs => "not_ours",
            DecapOutcome::Malformed => "malformed",
            DecapOutcome::Refused => "refused",
        }
    }
}

/// Value of the single-entry per-CPU `DECAP_STATS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DecapCounters {
    /// Frames per [`DecapOutcome`].
    pub packets: [u64; DECAP_OUTCOMES],
    /// Bytes per [`DecapOutcome`], whole frames as received.
    pub bytes: [u64; DECAP_OUTCOMES],
}

impl DecapCounters {
    pub fn add(&mut self, other: &DecapCounters) {
        for i in 0..DECAP_OUTCOMES {
            self.packets[i] = self.packets[i].wrapping_add(other.packets[i]);
            self.bytes[i] = self.bytes[i].wrapping_add(other.bytes[i]);
        }
    }
}

/// Data of an `ACL_V4` trie key (the trie's `prefix_len` is 32 + the CIDR length).
///
/// The listener id is big-endian so that the trie, which compares bits from the first byte,
/// sees it as a fixed 32-bit prefix ahead of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AclV4 {
    pub listener_id: [u8; 4],
    pub addr: [u8; 4],
}

/// Data of an `ACL_V6` trie key (the trie's `prefix_len` is 32 + the CIDR length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AclV6 {
    pub listener_id: [u8; 4],
    pub addr: [u8; 16],
}

/// What the program concluded about one frame; each outcome has its own counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Addressed to a listener and admitted by its access control: `XDP_PASS`.
    Passed = 0,
    /// Addressed to a listener and refused by its access control: `XDP_DROP`.
    DroppedAcl = 1,
    /// Parsed, but not TCP/UDP to a known listener (ARP, ICMP, other ports): `XDP_PASS`.
    NotOurs = 2,
    /// Truncated or malformed headers, too many VLAN tags or IPv6 extension headers: `XDP_PASS`,
    /// so that the kernel (and the daemon's own check on accept) decide.
    Unparsable = 3,
    /// A non-first IP fragment, which carries no ports, of a datagram whose first fragment
    /// no L4 listener forwarded (so `FRAGS` has no ports for it): `XDP_PASS`.
    Fragment = 4,
    /// Admitted by an L4 listener and sent IP-in-IP to a backend of its group: `XDP_TX`.
    ForwardedL4 = 5,
    /// Admitted by an L4 listener whose group has no usable backend for it (no ring, a ring
    /// entry naming none, or a backend not alive or without a next-hop MAC): `XDP_DROP`. The
    /// VIP belongs to the balancer, not to this host: the stack has no socket for it and would
    /// only answer with a reset or an ICMP error, so the frame has nowhere to go.
    NoBackend = 6,
    /// Admitted by an L4 listener but VLAN-tagged: `XDP_PASS`, untouched. The tags name the
    /// VLAN the frame came in on, not one the backend's next hop is known to be on, so the
    /// program does not guess; the operator sees this counter instead of silent loss.
    VlanL4 = 7,
    /// Admitted by an L4 listener, a backend chosen, but the frame could not be grown for the
    /// outer header (no headroom): `XDP_DROP`, for the same reason as [`Outcome::NoBackend`].
    EncapFailed = 8,
    /// Admitted by an L4 listener, but too big for the egress MTU once encapsulated: answered
    /// in place with ICMP "fragmentation needed" (IPv4 with don't-fragment) or ICMPv6 "packet
    /// too big", naming the MTU the client can use: `XDP_TX` back towards the client.
    TooBigAnswered = 9,
    /// As [`Outcome::TooBigAnswered`], but not answered: IPv4 without don't-fragment (a
    /// router would fragment it; XDP cannot), an ICMP message itself, IPv4 options, or over
    /// the per-CPU rate of answers ([`ICMP_ANSWERS_PER_SEC`]): `XDP_DROP`.
    TooBig = 10,
    /// An ICMP or ICMPv6 error addressed to an L4 listener's VIP about a packet the VIP sent
    /// (a backend's direct reply), sent IP-in-IP to the backend that owns the flow in it:
    /// `XDP_TX`. Path MTU discovery of the backends' replies depends on it.
    ForwardedIcmp = 11,
    /// Addressed to a listener and admitted by its access control, but its source is over one
    /// of the listener's per-source limits (new connections or frames per second): `XDP_DROP`.
    RateLimited = 12,
    /// From a source blocked at this listener (it stayed over a limit, see
    /// [`ListenerInfo::block_secs`]): `XDP_DROP`.
    Blocked = 13,
    /// A new connection (SYN without ACK) to a listener answering with SYN cookies
    /// ([`syn_cookies::ANSWER`]), answered in place with the SYN-ACK: `XDP_TX`. The kernel
    /// never sees it; the client's ACK goes to the kernel, which checks the cookie.
    SynCookie = 14,
    /// As [`Outcome::ForwardedL4`] or [`Outcome::ForwardedIcmp`], to a backend whose route
    /// leaves by another interface than the frame came in on ([`BackendInfo::ifindex`]): sent
    /// there through the `EGRESS` device map, `XDP_REDIRECT`.
    Redirected = 15,
}

/// Number of [`Outcome`]s, the length of the arrays in [`Counters`].
pub const OUTCOMES: usize = 16;

/// Interfaces the `EGRESS` device map holds at most: the distinct interfaces the L4 backends'
/// routes leave by.
pub const MAX_EGRESS_IFACES: u32 = 64;

/// ICMP "too big" answers each CPU sends per second at most (as a router rate-limits its
/// ICMP errors); beyond it such frames are dropped and counted [`Outcome::TooBig`].
pub const ICMP_ANSWERS_PER_SEC: u64 = 1000;

/// Value of the single-entry per-CPU `ICMP_RATE` array: answers sent in the current second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IcmpRate {
    /// `bpf_ktime_get_ns() / 1e9` of the second being counted.
    pub second: u64,
    pub sent: u64,
}

/// Bytes of the offending packet an ICMP "fragmentation needed" quotes: its IPv4 header
/// (without options) and the first 8 bytes after it, as RFC 792 asks; the ports are in them.
pub const ICMP_V4_QUOTE: usize = 28;
/// Bytes an ICMPv6 "packet too big" quotes: the IPv6 header and 8 bytes after it.
pub const ICMP_V6_QUOTE: usize = 48;
/// The smallest MTU an IPv6 link may have (RFC 8200): "packet too big" never names less.
pub const IPV6_MIN_MTU: u32 = 1280;
/// Frames that fit this MTU once encapsulated are sent without asking the kernel for the
/// interface's (a helper call per packet): every link that carries IPv6 has at least this
/// much. On an interface with a smaller MTU such frames would be dropped by the
/// driver instead of answered.
pub const MTU_FLOOR: u32 = IPV6_MIN_MTU;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

impl Outcome {
    pub const ALL: [Outcome; OUTCOMES] = [
        Outcome::Passed,
        Outcome::DroppedAcl,
        Outcome::NotOurs,
        Outcome::Unparsable,
        Outcome::Fragment,
        Outcome::ForwardedL4,
        Outcome::NoBackend,
        Outcome::VlanL4,
        Outcome::EncapFailed,
        Outcome::TooBigAnswered,
        Outcome::TooBig,
        Outcome::ForwardedIcmp,
        Outcome::RateLimited,
        Outcome::Blocked,
        Outcome::SynCookie,
        Outcome::Redirected,
    ];

    /// The XDP action taken for this outcome.
    pub const fn action(self) -> u32 {
        match self {
            Outcome::DroppedAcl
            | Outcome::NoBackend
            | Outcome::EncapFailed
            | Outcome::TooBig
            | Outcome::RateLimited
            | Outcome::Blocked => XDP_DROP,
            Outcome::ForwardedL4
            | Outcome::TooBigAnswered
            | Outcome::ForwardedIcmp
            | Outcome::SynCookie => XDP_TX,
            Outcome::Redirected => XDP_REDIRECT,
            _ => XDP_PASS,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::DroppedAcl => "dropped_acl",
            Outcome::NotOurs => "not_ours",
            Outcome::Unparsable => "unparsable",
            Outcome::Fragment => "fragment",
            Outcome::ForwardedL4 => "forwarded_l4",
            Outcome::NoBackend => "no_backend",
            Outcome::VlanL4 => "vlan_l4",
            Outcome::EncapFailed => "encap_failed",
            Outcome::TooBigAnswered => "too_big_answered",
            Outcome::TooBig => "too_big",
            Outcome::ForwardedIcmp => "forwarded_icmp",
            Outcome::RateLimited => "rate_limited",
            Outcome::Blocked => "blocked",
            Outcome::SynCookie => "syn_cookie",
            Outcome::Redirected => "redirected",
        }
    }
}

/// Value of the per-CPU `STATS` array, indexed by listener id (slot 0: no listener).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counters {
    /// Frames per [`Outcome`], indexed by `Outcome as usize`.
    pub packets: [u64; OUTCOMES],
    /// Bytes per [`Outcome`] (whole frames, Ethernet header included).
    pub bytes: [u64; OUTCOMES],
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        for i in 0..OUTCOMES {
            self.packets[i] = self.packets[i].wrapping_add(other.packets[i]);
            self.bytes[i] = self.bytes[i].wrapping_add(other.bytes[i]);
        }
    }

    pub const fn packets_of(&self, outcome: Outcome) -> u64 {
        self.packets[outcome as usize]
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made of integers and byte arrays, with no padding bytes
    // (checked by the layout tests below), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerInfo {}
    unsafe impl aya::Pod for super::AclV4 {}
    unsafe impl aya::Pod for super::AclV6 {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::BackendCounters {}
    unsafe impl aya::Pod for super::MaglevChunk {}
    unsafe impl aya::Pod for super::BackendInfo {}
    unsafe impl aya::Pod for super::EncapConfig {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::IcmpRate {}
    unsafe impl aya::Pod for super::DecapCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn a_source_may_spend_a_second_of_its_rate_at_once_then_one_event_per_interval() {
        let interval = rate_interval_ns(5);
        assert_eq!(interval, 200_000_000);
        let (mut tat, now) = (0, 7 * NS_PER_SEC);
        let mut admitted = 0;
        for _ in 0..20 {
            if let Some(t) = rate_admit(tat, now, interval) {
                tat = t;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5);
        assert_eq!(rate_admit(tat, now + interval as u64 - 1, interval), None);
        assert!(rate_admit(tat, now + interval as u64, interval).is_some());
        // A quiet source starts over with a whole second's worth, not more.
        assert_eq!(
            rate_admit(tat, now + 60 * NS_PER_SEC, interval),
            Some(now + 60 * NS_PER_SEC + interval as u64)
        );
        assert_eq!(rate_interval_ns(0), 0);
        assert_eq!(rate_interval_ns(1), 1_000_000_000);
        assert_eq!(rate_interval_ns(10_000_000), 100);
    }

    #[test]
    fn a_source_over_its_limit_for_a_second_is_blocked_one_within_it_never() {
        let info = ListenerInfo {
            pps_interval_ns: rate_interval_ns(10),
            block_secs: 30,
            ..ListenerInfo::default()
        };
        let ms = 1_000_000;
        let flood = |info: &ListenerInfo| {
            // 20 frames a second against 10, for two seconds.
            let mut state = SourceState::default();
            (0..40u64)
                .map(|i| source_event(&mut state, 5 * NS_PER_SEC + i * 50 * ms, info, false))
                .collect::<std::vec::Vec<_>>()
        };
        let verdicts = flood(&info);
        // A second's worth of budget plus what refills meanwhile lasts 0.95 s; from then on
        // every other frame is refused, and the refusal a second after the first blocks.
        let first_over = verdicts.iter().position(|v| *v != SourceVerdict::Within);
        let blocked = verdicts.iter().position(|v| *v == SourceVerdict::Block);
        assert_eq!((first_over, blocked), (Some(19), Some(39)), "{verdicts:?}");
        // Exactly the rate, for five seconds: never refused.
        let mut state = SourceState::default();
        assert!((0..50u64).all(|i| {
            source_event(&mut state, NS_PER_SEC + i * 100 * ms, &info, false)
                == SourceVerdict::Within
        }));
        // Over now and then (a burst of 15 at once, then 9 a second, then another burst five
        // seconds on): refused in both bursts, never blocked.
        let mut state = SourceState::default();
        let mut at = |t: u64| source_event(&mut state, NS_PER_SEC + t, &info, false);
        let mut seen = std::vec::Vec::new();
        for _ in 0..15 {
            seen.push(at(0));
        }
        for i in 1..45u64 {
            seen.push(at(i * NS_PER_SEC / 9));
        }
        for _ in 0..6 {
            seen.push(at(5 * NS_PER_SEC));
        }
        assert!(seen.contains(&SourceVerdict::Over) && !seen.contains(&SourceVerdict::Block));
        // A SYN flood is blocked even if the source's other frames are within their limit.
        let both = ListenerInfo {
            syn_interval_ns: rate_interval_ns(2),
            pps_interval_ns: rate_interval_ns(1000),
            block_secs: 30,
            ..ListenerInfo::default()
        };
        let mut state = SourceState::default();
        let mut blocked = false;
        for i in 0..60u64 {
            let t = 5 * NS_PER_SEC + i * 33 * ms;
            blocked |= source_event(&mut state, t, &both, true) == SourceVerdict::Block;
            // The handshake's ACK of each connection that got through.
            source_event(&mut state, t + ms, &both, false);
        }
        assert!(blocked);
        // Without block_secs, the same flood is only ever over.
        let info = ListenerInfo {
            block_secs: 0,
            ..info
        };
        assert!(!flood(&info).contains(&SourceVerdict::Block));
    }

    #[test]
    fn ipv6_sources_are_limited_by_their_64_and_ipv4_by_address() {
        let v6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9];
        let mut expect = v6;
        expect[8..].fill(0);
        assert_eq!(SourceKey::new(&v6, 3).src, expect);
        let v4 = v4_mapped([10, 0, 0, 7]);
        assert_eq!(SourceKey::new(&v4, 3).src, v4);
        assert_eq!(SourceKey::new(&v4, 3).listener_id, 3);
    }

    #[test]
    fn cookie_timestamps_carry_the_options_and_never_run_ahead_of_the_clock() {
        // The clock's low bits are above the options': the same 64 ms step.
        assert_eq!(cookie_timestamp(0x1234_5678, Some(7), true), 0x1234_5657);
        // Below them: one step back, so the value is not later than the clock.
        assert_eq!(cookie_timestamp(0x1234_5640, Some(7), true), 0x1234_5617);
        assert_eq!(cookie_timestamp(0x1234_567f, None, false), 0x1234_564f);
        assert_eq!(cookie_timestamp(0x1234_567f, Some(15), false) & 0x3f, 14);
        // Just after the clock wraps, the value wraps back with it.
        assert_eq!(cookie_timestamp(3, Some(14), false), 0xffff_ffce);
        for now in [0u32, 1, 63, 64, 1000, u32::MAX] {
            for (w, sack) in [(None, false), (Some(0), true), (Some(14), false)] {
                let ts = cookie_timestamp(now, w, sack);
                assert!(now.wrapping_sub(ts) < 64, "{now} {ts}");
                assert_eq!(ts & cookie_ts::SACK != 0, sack);
                assert_eq!(ts & cookie_ts::WSCALE_MASK, w.map_or(15, u32::from));
            }
        }
    }

    #[test]
    fn map_types_have_the_layout_the_kernel_side_reads() {
        assert_eq!(size_of::<ListenerKey>(), 20);
        assert_eq!(align_of::<ListenerKey>(), 2);
        assert_eq!(size_of::<ListenerInfo>(), 40);
        let entry = port_entry::pack(true, 1, WILDCARD_SLOTS - 1, 7);
        assert_eq!(
            (
                entry & port_entry::EXACT,
                port_entry::generation(entry),
                port_entry::any_v4(entry),
                port_entry::any(entry)
            ),
            (1, 1, WILDCARD_SLOTS - 1, 7)
        );
        assert_eq!(port_entry::generation(port_entry::pack(true, 0, 1, 1)), 0);
        assert_eq!(size_of::<SourceKey>(), 24);
        assert_eq!(size_of::<SourceState>(), 32);
        assert_eq!(size_of::<BackendInfo>(), 40);
        assert_eq!(align_of::<BackendInfo>(), 4);
        assert_eq!(size_of::<EncapConfig>(), 16);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowState>(), 16);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<FragPorts>(), 4);
        assert_eq!(size_of::<DecapCounters>(), 8 * 2 * DECAP_OUTCOMES);
        assert_eq!(port_slot(443, IPPROTO_TCP), Some(886));
        assert_eq!(port_slot(65535, IPPROTO_UDP), Some(PORT_SLOTS - 1));
        assert_eq!(port_slot(443, 1), None);
        assert_eq!(size_of::<AclV4>(), 8);
        assert_eq!(size_of::<AclV6>(), 20);
        assert_eq!(size_of::<Counters>(), 8 * 2 * OUTCOMES);
        assert_eq!(size_of::<BackendCounters>(), 16);
        assert_eq!(align_of::<BackendCounters>(), 8);
        assert_eq!(size_of::<MaglevChunk>(), 4 * MAGLEV_CHUNK as usize);
        assert_eq!(align_of::<MaglevChunk>(), 4);
        // Whole 8-byte words: the array stores elements unpadded.
        assert_eq!(size_of::<MaglevChunk>() % 8, 0);
        assert_eq!(MAGLEV_CHUNKS_PER_RING, 257);
        assert_eq!(
            maglev_position(MAX_L4_GROUPS - 1, 1, maglev::TABLE_SIZE - 1),
            (MAGLEV_ENTRIES - 1, (maglev::TABLE_SIZE - 1) % MAGLEV_CHUNK)
        );
        assert_eq!(maglev_position(0, 0, 0), (0, 0));
        assert_eq!(maglev_position(0, 0, 257), (1, 1));
        assert_eq!(maglev_position(0, 1, 0), (MAGLEV_CHUNKS_PER_RING, 0));
        assert_eq!(maglev_position(1, 0, 5), (2 * MAGLEV_CHUNKS_PER_RING, 5));
        assert_eq!(
            backend_stats_slot(MAX_L4_GROUPS - 1, MAX_BACKENDS_PER_GROUP - 1),
            BACKEND_STATS_SLOTS - 1
        );
        assert_eq!(
            backend_slot(MAX_L4_GROUPS - 1, 1, MAX_BACKENDS_PER_GROUP - 1),
            BACKENDS_SLOTS - 1
        );
        assert_eq!(backend_slot(0, 1, 0), MAX_BACKENDS_PER_GROUP);
        assert_eq!(backend_slot(1, 0, 3), 2 * MAX_BACKENDS_PER_GROUP + 3);
        let key = ListenerKey::new(ANY_V4, 0x1234, IPPROTO_TCP);
        let bytes = bytemuck::bytes_of(&key);
        assert_eq!(&bytes[16..18], &0x1234u16.to_ne_bytes());
        assert_eq!(bytes[18], IPPROTO_TCP);
    }

    #[test]
    fn v4_mapping_round_trips_and_rejects_plain_v6() {
        assert_eq!(v4_unmapped(&v4_mapped([10, 1, 2, 3])), Some([10, 1, 2, 3]));
        assert_eq!(v4_mapped([0; 4]), ANY_V4);
        assert_eq!(v4_unmapped(&ANY), None);
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[10] = 0xff;
        v6[11] = 0xff;
        assert_eq!(v4_unmapped(&v6), None);
    }

    #[test]
    fn generations_alternate_halves_and_never_return_to_no_ring() {
        assert_eq!(live_half(0), None);
        let mut g = 0;
        let mut halves = [None; 4];
        for h in &mut halves {
            g = next_generation(g);
            *h = live_half(g);
        }
        assert_eq!(halves, [Some(1), Some(0), Some(1), Some(0)]);
        assert_eq!(next_generation(u32::MAX), 2);
        assert_eq!(live_half(u32::MAX), Some(1));
        assert_eq!(live_half(next_generation(u32::MAX)), Some(0));
    }

    #[test]
    fn refusals_and_undeliverable_l4_frames_drop_forwarded_ones_leave_the_rest_pass() {
        for o in Outcome::ALL {
            let expected = match o {
                Outcome::DroppedAcl
                | Outcome::NoBackend
                | Outcome::EncapFailed
                | Outcome::TooBig
                | Outcome::RateLimited
                | Outcome::Blocked => XDP_DROP,
                Outcome::ForwardedL4
                | Outcome::TooBigAnswered
                | Outcome::ForwardedIcmp
                | Outcome::SynCookie => XDP_TX,
                Outcome::Redirected => XDP_REDIRECT,
                _ => XDP_PASS,
            };
            assert_eq!(o.action(), expected, "{o:?}");
            assert_eq!(Outcome::ALL[o as usize], o);
        }
        for o in DecapOutcome::ALL {
            let expected = match o {
                DecapOutcome::Refused => XDP_DROP,
                _ => XDP_PASS,
            };
            assert_eq!(o.action(), expected, "{o:?}");
            assert_eq!(DecapOutcome::ALL[o as usize], o);
        }
        assert_eq!(
            DecapOutcome::ALL.map(DecapOutcome::name),
            ["decapsulated", "not_ours", "malformed", "refused"],
            "the counter names `edgelb decap` logs"
        );
    }

    #[test]
    fn outer_sources_keep_the_prefix_and_take_the_hash_low_bits() {
        let c = EncapConfig {
            v4_prefix: DEFAULT_ENCAP_V4,
            _pad: [0; 2],
            v6_prefix: DEFAULT_ENCAP_V6,
        };
        assert_eq!(c.v4_source(0x1234_5678), [172, 16, 0x56, 0x78]);
        let v6 = c.v6_source(0x1234_5678);
        assert_eq!(&v6[..12], &DEFAULT_ENCAP_V6);
        assert_eq!(&v6[12..], &[0x12, 0x34, 0x56, 0x78]);
        let mut b = BackendInfo {
            flags: backend_flags::ALIVE,
            next_hop_mac: [2, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        assert!(b.usable());
        b.next_hop_mac = [0; 6];
        assert!(!b.usable());
        b.next_hop_mac = [2, 0, 0, 0, 0, 1];
        b.flags = backend_flags::IPV6;
        assert!(!b.usable() && b.outer_v6());
    }
}
