//! edgelb's XDP programs. `edgelb_xdp`, on the balancer: parse the frame down to the TCP/UDP
//! destination port, find the listener, apply its access control, and for an L4 listener send
//! the frame IP-in-IP to a backend of its group (`l4`); count. The rules are stated once, in
//! `lb_common::reference`, and the differential test holds this program to them.
//! `edgelb_decap` (`decap`), on the backends, removes that outer header again.
#![no_std]
#![no_main]

mod decap;
mod encap;
mod icmp;
mod icmp_error;
mod l4;
mod source_limits;
mod syn_cookie;

use aya_ebpf::{
    macros::{map, xdp},
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, lpm_trie::Key,
    },
    programs::XdpContext,
};
use lb_common::{
    ACL_LISTENER_ID_BITS, AclV4, AclV6, BACKEND_STATS_SLOTS, BACKENDS_SLOTS, BackendCounters,
    BackendInfo, Counters, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EncapConfig, FlowKey,
    FlowState, FragKey, FragPorts, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV6_AUTH, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING, IcmpRate,
    LISTENER_ENTRIES, ListenerInfo, ListenerKey, MAGLEV_ENTRIES, MAX_ACL_ENTRIES,
    MAX_EGRESS_IFACES, MAX_FLOWS, MAX_FRAGS, MAX_IPV6_EXT_HEADERS, MAX_L4_GROUPS, MAX_NEW_FLOWS,
    MAX_VLAN_TAGS, MaglevChunk, NO_LISTENER_SLOT, OUTCOMES, Outcome, PORT_SLOTS, STATS_SLOTS,
    TAIL_ICMP, TAIL_SLOTS, WILDCARD_SLOTS, acl, port_entry, port_slot, v4_unmapped,
};

#[map(name = "LISTENERS")]
static LISTENERS: HashMap<ListenerKey, ListenerInfo> =
    HashMap::with_max_entries(LISTENER_ENTRIES, 0);

/// Per (port, protocol): its [`port_entry`].
#[map(name = "PORTS")]
static PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// Wildcard listeners, where their ports' entries point.
#[map(name = "WILDCARDS")]
static WILDCARDS: Array<ListenerInfo> = Array::with_max_entries(WILDCARD_SLOTS, 0);

#[map(name = "ACL_V4")]
static ACL_V4: LpmTrie<AclV4, u8> = LpmTrie::with_max_entries(MAX_ACL_ENTRIES, 0);

#[map(name = "ACL_V6")]
static ACL_V6: LpmTrie<AclV6, u8> = LpmTrie::with_max_entries(MAX_ACL_ENTRIES, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// Two halves of a Maglev ring per backend group, in chunks (`lb_common::maglev_position`).
#[map(name = "MAGLEV")]
static MAGLEV: Array<MaglevChunk> = Array::with_max_entries(MAGLEV_ENTRIES, 0);

/// Per group: the generation of its live ring (0: none yet; `lb_common::live_half`).
#[map(name = "MAGLEV_GEN")]
static MAGLEV_GEN: Array<u32> = Array::with_max_entries(MAX_L4_GROUPS, 0);

#[map(name = "BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<BackendCounters> =
    PerCpuArray::with_max_entries(BACKEND_STATS_SLOTS, 0);

/// Per (group, backend), as `BACKEND_STATS`: where forwarded frames go.
#[map(name = "BACKENDS")]
static BACKENDS: Array<BackendInfo> = Array::with_max_entries(BACKENDS_SLOTS, 0);

/// One entry: the prefixes of outer source addresses.
#[map(name = "ENCAP")]
static ENCAP: Array<EncapConfig> = Array::with_max_entries(1, 0);

/// The interfaces backends are routed by, keyed by their index: where frames for a backend
/// routed by another interface than they came in on are redirected.
#[map(name = "EGRESS")]
static EGRESS: DevMapHash = DevMapHash::with_max_entries(MAX_EGRESS_IFACES, 0);

/// `edgelb_icmp`, for the tail call.
#[map(name = "TAIL")]
static TAIL: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);

/// One entry per CPU: ICMP "too big" answers sent this second.
#[map(name = "ICMP_RATE")]
static ICMP_RATE: PerCpuArray<IcmpRate> = PerCpuArray::with_max_entries(1, 0);

/// The ports of fragmented datagrams whose first fragment an L4 listener admitted.
#[map(name = "FRAGS")]
static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

/// The backend of each recent flow of L4 listeners with a flow table that has sent more than
/// one packet.
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// The backend of each flow seen once: where first packets are remembered, so that a flood of
/// them (spoofed sources) evicts only other first packets, never `FLOWS`.
#[map(name = "NEW_FLOWS")]
static NEW_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_NEW_FLOWS, 0);

#[xdp]
pub fn edgelb_xdp(ctx: XdpContext) -> u32 {
    // Taken first: forwarding grows the frame, and counters report frames as received.
    let len = frame_len(&ctx);
    verdict(classify(&ctx, len), len)
}

/// Counts a frame's decision (a listener's slot and outcome, or an outcome of no listener)
/// and returns its action.
#[inline(always)]
pub(crate) fn verdict(decision: Result<(u32, Outcome), Outcome>, len: u64) -> u32 {
    let (slot, outcome) = match decision {
        Ok(decision) => decision,
        Err(outcome) => (NO_LISTENER_SLOT, outcome),
    };
    count(slot, outcome, len);
    outcome.action()
}

/// The whole frame's length, Ethernet header included.
#[inline(always)]
pub(crate) fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

#[inline(always)]
pub(crate) fn count(slot: u32, outcome: Outcome, len: u64) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        let i = outcome as usize;
        if i < OUTCOMES {
            // SAFETY: a per-CPU slot is only written by the program running on that CPU.
            unsafe {
                (*c).packets[i] += 1;
                (*c).bytes[i] += len;
            }
        }
    }
}

/// The one place where packet bounds are checked: a pointer to `N` bytes at `off`.
#[inline(always)]
pub(crate) fn at<const N: usize>(ctx: &XdpContext, off: usize) -> Option<*mut [u8; N]> {
    let start = ctx.data();
    if start + off + N > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut [u8; N])
}

#[inline(always)]
pub(crate) fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Result<&[u8; N], Outcome> {
    // SAFETY: `at` checked the range against data_end; [u8; N] needs no alignment.
    at(ctx, off)
        .map(|p| unsafe { &*p })
        .ok_or(Outcome::Unparsable)
}

/// Where a packet stands in its datagram.
pub(crate) enum Frag {
    /// Not fragmented.
    Whole,
    /// The first fragment (it carries the transport header), with the datagram's id.
    First(u32),
    /// A later fragment (no transport header), with the datagram's id.
    Later(u32),
}

/// An IP header parsed down to the transport header. Its addresses went into the caller's
/// [`FlowKey`]: kept in memory rather than as 32 byte-sized values, which cost spills and
/// byte-wise rebuilding at every use (a third of the forward path's time before).
pub(crate) struct Parsed {
    pub(crate) proto: u8,
    /// Offset of the transport header (meaningless for [`Frag::Later`]).
    pub(crate) l4: usize,
    pub(crate) is_v4: bool,
    pub(crate) frag: Frag,
}

#[inline(always)]
fn frag_key(flow: &FlowKey, id: u32, proto: u8) -> FragKey {
    FragKey {
        src: flow.src,
        dst: flow.dst,
        id,
        proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn classify(ctx: &XdpContext, len: u64) -> Result<(u32, Outcome), Outcome> {
    let eth = bytes::<14>(ctx, 0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = 14usize;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = bytes::<4>(ctx, off)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
    }
    let mut flow = FlowKey::default();
    let p = match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, off, &mut flow)?,
        ETH_P_IPV6 => parse_ipv6(ctx, off, &mut flow)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(Outcome::Unparsable),
        _ => return Err(Outcome::NotOurs),
    };
    let (proto, is_v4) = (p.proto, p.is_v4);
    // ICMP errors are `edgelb_icmp`'s: it has a stack of its own for them. If the tail call
    // fails (no program in `TAIL`), the frame is not ours.
    if off == 14
        && matches!(p.frag, Frag::Whole)
        && ((is_v4 && proto == IPPROTO_ICMP) || (!is_v4 && proto == IPPROTO_ICMPV6))
        && let Ok(header) = bytes::<4>(ctx, p.l4)
        && icmp::is_error(header[0], is_v4)
    {
        // SAFETY: on success the call does not return; the other program counts the frame.
        unsafe { TAIL.tail_call(ctx, TAIL_ICMP) };
        return Err(Outcome::NotOurs);
    }
    let (src_port, port) = match p.frag {
        // Only a datagram an L4 listener forwarded has its ports remembered; any other later
        // fragment goes to the stack, which reassembles it.
        Frag::Later(id) => {
            if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
                return Err(Outcome::Fragment);
            }
            // SAFETY: map values are plain integers, copied out at once.
            let ports =
                unsafe { FRAGS.get(frag_key(&flow, id, proto)) }.ok_or(Outcome::Fragment)?;
            (ports.src_port, ports.dst_port)
        }
        Frag::Whole | Frag::First(_) => {
            if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
                return Err(Outcome::NotOurs);
            }
            let ports = bytes::<4>(ctx, p.l4)?;
            (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            )
        }
    };

    let info = find_listener(&flow.dst, port, proto, is_v4).ok_or(Outcome::NotOurs)?;
    let mut outcome = if admitted(&info, &flow.src) {
        source_limits::check(ctx, &info, &flow.src, &p)
    } else {
        Outcome::DroppedAcl
    };
    // Only listeners served in userspace answer SYNs (the daemon never sets it on others).
    if outcome == Outcome::Passed && info.syn_cookies != 0 && info.l4_group >= MAX_L4_GROUPS {
        outcome = syn_cookie::handle(ctx, &info, &p, off);
    }
    // Listeners served in userspace carry NO_GROUP, which fails this one comparison.
    if outcome != Outcome::Passed || info.l4_group >= MAX_L4_GROUPS {
        return Ok((info.id, outcome));
    }
    if off != 14 {
        return Ok((info.id, Outcome::VlanL4));
    }
    if let Frag::First(id) = p.frag {
        let ports = FragPorts {
            src_port,
            dst_port: port,
        };
        // A full table forgets the oldest datagram; a failed insert leaves this one's later
        // fragments to the stack.
        let _ = FRAGS.insert(frag_key(&flow, id, proto), ports, 0);
    }
    flow.src_port = src_port;
    flow.dst_port = port;
    flow.proto = proto;
    let flags = if is_v4 { l4::INNER_V4 } else { 0 } | l4::ANSWER_TOO_BIG;
    Ok((info.id, l4::forward(ctx, &info, &flow, len, flags)))
}

/// Whether `info`'s access control admits `src`.
#[inline(always)]
pub(crate) fn admitted(info: &ListenerInfo, src: &[u8; 16]) -> bool {
    // Most L4 listeners have no access control: they skip the trie (a helper call, ~9 ns).
    if info.acl != acl::ALLOW && info.acl != acl::DENY {
        return true;
    }
    // An IPv4-mapped source is an IPv4 client, whichever family the frame is.
    let listed = match v4_unmapped(src) {
        Some(addr) => {
            let data = AclV4 {
                listener_id: info.acl_set.to_be_bytes(),
                addr,
            };
            ACL_V4
                .get(Key::new(ACL_LISTENER_ID_BITS + 32, data))
                .is_some()
        }
        None => {
            let data = AclV6 {
                listener_id: info.acl_set.to_be_bytes(),
                addr: *src,
            };
            ACL_V6
                .get(Key::new(ACL_LISTENER_ID_BITS + 128, data))
                .is_some()
        }
    };
    if info.acl == acl::ALLOW {
        listed
    } else {
        !listed
    }
}

#[inline(always)]
pub(crate) fn find_listener(
    dst: &[u8; 16],
    port: u16,
    proto: u8,
    is_v4: bool,
) -> Option<ListenerInfo> {
    let entry = *PORTS.get(port_slot(port, proto)?)?;
    if entry & port_entry::EXACT != 0 {
        let key = ListenerKey {
            generation: port_entry::generation(entry),
            ..ListenerKey::new(*dst, port, proto)
        };
        // SAFETY: map values are plain integers, copied out at once.
        if let Some(info) = unsafe { LISTENERS.get(key) } {
            return Some(*info);
        }
    }
    let any_v4 = port_entry::any_v4(entry);
    let wildcard = if is_v4 && any_v4 != 0 {
        any_v4
    } else {
        port_entry::any(entry)
    };
    if wildcard == 0 {
        return None;
    }
    WILDCARDS.get(wildcard).copied()
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, flow: &mut FlowKey) -> Result<Parsed, Outcome> {
    let ip = bytes::<20>(ctx, off)?;
    if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return Err(Outcome::Unparsable);
    }
    let id = u32::from(u16::from_be_bytes([ip[4], ip[5]]));
    let flags = u16::from_be_bytes([ip[6], ip[7]]);
    let frag = if flags & 0x1fff != 0 {
        Frag::Later(id)
    } else if flags & 0x2000 != 0 {
        Frag::First(id)
    } else {
        Frag::Whole
    };
    // IPv4-mapped: `flow` is all zeros.
    flow.src[10..12].copy_from_slice(&[0xff, 0xff]);
    flow.src[12..16].copy_from_slice(&ip[12..16]);
    flow.dst[10..12].copy_from_slice(&[0xff, 0xff]);
    flow.dst[12..16].copy_from_slice(&ip[16..20]);
    Ok(Parsed {
        proto: ip[9],
        l4: off + (ip[0] & 0x0f) as usize * 4,
        is_v4: true,
        frag,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, flow: &mut FlowKey) -> Result<Parsed, Outcome> {
    let ip = bytes::<40>(ctx, off)?;
    if ip[0] >> 4 != 6 {
        return Err(Outcome::Unparsable);
    }
    flow.src.copy_from_slice(&ip[8..24]);
    flow.dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut l4 = off + 40;
    let mut frag = Frag::Whole;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let h = bytes::<2>(ctx, l4)?;
                next = h[0];
                l4 += (h[1] as usize + 1) * 8;
            }
            IPV6_AUTH => {
                let h = bytes::<2>(ctx, l4)?;
                next = h[0];
                l4 += (h[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let h = bytes::<8>(ctx, l4)?;
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                next = h[0];
                l4 += 8;
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    // What follows is the middle of the datagram, not headers.
                    frag = Frag::Later(id);
                    break;
                }
                if h[3] & 1 != 0 {
                    frag = Frag::First(id);
                }
            }
            _ => break,
        }
    }
    if !matches!(frag, Frag::Later(_))
        && matches!(
            next,
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH | IPV6_FRAGMENT
        )
    {
        return Err(Outcome::Unparsable);
    }
    Ok(Parsed {
        proto: next,
        l4,
        is_v4: false,
        frag,
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
