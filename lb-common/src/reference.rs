//! The reference classifier: what the XDP program must decide for any frame, written over a byte
//! slice as plainly as possible. Tests run both on the same frames and the same map contents and
//! require the same outcome and counter slot (the differential test in `tests/`).
//!
//! The rules, in order:
//! 1. Ethernet header (14 bytes) or `Unparsable`.
//! 2. Up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags (4 bytes each) or `Unparsable`; a further tag
//!    is `Unparsable`. An ethertype other than IPv4/IPv6 is `NotOurs`.
//! 3. IPv4: 20 bytes, version 4, IHL >= 5, else `Unparsable`. A non-zero fragment offset
//!    (a later fragment) takes its ports from the `FRAGS` entry of (source, destination, id,
//!    protocol) when the protocol is TCP/UDP and there is one, else it is `Fragment`.
//!    Otherwise a protocol other than TCP/UDP is `NotOurs`, and the ports (bytes 0..4 of the
//!    L4 header, found through the IHL) must be present, else `Unparsable`.
//! 4. IPv6: 40 bytes and version 6, else `Unparsable`. Extension headers (hop-by-hop, routing,
//!    destination options, AH, fragment) are walked, at most [`MAX_IPV6_EXT_HEADERS`]; a
//!    truncated one, or one more than the bound, is `Unparsable`; a fragment header with a
//!    non-zero offset ends the walk (a later fragment: its next header is the protocol, its
//!    32-bit id the datagram's). Then as IPv4 from the protocol on.
//! 5. Listener lookup: exact address, the family wildcard ([`ANY_V4`] or [`ANY`]), and for IPv4
//!    also [`ANY`]. A destination that is itself a wildcard address (`::`, `::ffff:0.0.0.0`)
//!    matches wildcard listeners only. No listener: `NotOurs`.
//! 6. Access control against the source (IPv4-mapped IPv6 sources as IPv4): `all` passes,
//!    `allow` passes on a match and drops otherwise, `deny` drops on a match; any other mode
//!    value passes.
//!    b. An admitted frame whose source (an IPv4 address, an IPv6 /64) is over one of the
//!    listener's per-source limits is `RateLimited`: with `pps_interval_ns`, every frame counts;
//!    with `syn_interval_ns`, TCP SYNs without ACK (not later fragments) count too
//!    ([`source_event`] on the source's `SOURCES` entry at `now_ns`, frames first). With
//!    `block_secs`, a source with a `BLOCKED` entry later than `now_ns` is `Blocked` (all its
//!    frames), and one that [`source_event`] finds over a limit long enough is blocked for
//!    `block_secs` from this frame on, which is `Blocked` too.
//!    c. A TCP SYN admitted so far, to a listener served in userspace that answers with SYN
//!    cookies, is `SynCookie` (answered in place) as [`syn_cookie`] says, or `Passed`.
//!    (`SYNS`, where listeners with [`syn_cookies::WATCH`] count their SYNs, is not modelled.)
//! 7. An admitted frame of a listener whose `l4_group` is below [`MAX_L4_GROUPS`] (an L4
//!    listener) is forwarded, never `Passed`:
//!    a. VLAN-tagged: `VlanL4` (passed untouched). Else a first fragment (more-fragments
//!    set, offset 0) records its ports in `FRAGS`, so that the later fragments of its
//!    datagram follow it.
//!    b. With `flow_secs > 0`, a `FLOWS` entry for the 5-tuple (addresses IPv4-mapped) seen
//!    less than `flow_secs` ago, for a backend slot of this group whose `BACKENDS` entry is
//!    usable ([`BackendInfo::usable`]) and still has the entry's epoch, names the backend;
//!    its `last_seen_ns` is refreshed when at least [`FLOW_TOUCH_NS`] old. Else a
//!    `NEW_FLOWS` entry that passes the same checks names it, and is copied into `FLOWS`
//!    with the current time (the flow's second packet promotes it).
//!    c. Otherwise the entry `table_slot(h)` of the group's live ring names it, where `h` is
//!    `source_hash(src)`, or `client_hash(src, src_port)` with
//!    [`l4_flags::HASH_SRC_PORT`] (`src` IPv4-mapped for IPv4 and IPv4-mapped IPv6
//!    sources). No ring, an entry not below [`MAX_BACKENDS_PER_GROUP`], or a backend that
//!    is not usable: `NoBackend` (dropped). A usable one is remembered (when
//!    `flow_secs > 0`) with its epoch and the current time: in `FLOWS` if it held the flow
//!    (for a backend gone since), else in `NEW_FLOWS`.
//!    d. A frame longer than the interface's MTU and than [`MTU_FLOOR`] (plus its Ethernet
//!    header) once grown by the outer header (20 bytes, 40 for an IPv6 backend) is answered `TooBigAnswered` with
//!    [`too_big_answer`] naming the MTU less that overhead, or `TooBig` (dropped) when that
//!    gives none; it counts in no backend's slot. (The program also stops answering past
//!    [`ICMP_ANSWERS_PER_SEC`] per CPU, which this reference does not model.)
//!    e. Else `ForwardedL4`: the frame counts in the backend's `BACKEND_STATS` slot, and
//!    leaves as [`encapsulate`] builds it. `Redirected` instead when the backend's
//!    [`BackendInfo::ifindex`] is neither 0 nor the interface the frame came in on
//!    ([`Tables::ingress_ifindex`]): the frame's Ethernet source is then the backend's
//!    `egress_mac`.
//!
//! 8. ICMP errors to a VIP: see `icmp_error` (checked after rule 4, before the ports).
//!
//! Listener outcomes count in the listener id's slot; the others in [`NO_LISTENER_SLOT`].
use std::collections::HashMap;
use std::vec::Vec;

use crate::*;

/// A source prefix in a listener's IP address group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclPrefix {
    V4([u8; 4], u8),
    V6([u8; 16], u8),
}

/// The map contents the program reads, in plain collections.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub listeners: HashMap<ListenerKey, ListenerInfo>,
    /// (the listeners' [`ListenerInfo::acl_set`], prefix)
    pub acl: Vec<(u32, AclPrefix)>,
    /// The live Maglev ring of each backend group that has one ([`maglev::TABLE_SIZE`]
    /// entries), keyed by group.
    pub rings: HashMap<u32, Vec<u32>>,
    /// The live half's `BACKENDS` entries by [`backend_stats_slot`]; a missing one is all zero
    /// (not usable).
    pub backends: HashMap<u32, BackendInfo>,
    /// The `ENCAP` entry.
    pub encap: EncapConfig,
    /// `FLOWS`, updated by [`classify`] as the program updates it.
    pub flows: HashMap<FlowKey, FlowState>,
    /// `NEW_FLOWS`, likewise.
    pub new_flows: HashMap<FlowKey, FlowState>,
    /// `FRAGS`, likewise.
    pub frags: HashMap<FragKey, FragPorts>,
    /// `SOURCES`, likewise.
    pub sources: HashMap<SourceKey, SourceState>,
    /// `BLOCKED`, likewise: until when each source is blocked.
    pub blocked: HashMap<SourceKey, u64>,
    /// `SYN_STAMPS`, likewise, by [`syn_stamp_slot`] (missing: 0).
    pub syn_stamps: HashMap<u32, u64>,
    /// The MTU of the interface frames arrive on (and leave by `XDP_TX`); 0: unknown, nothing
    /// is too big (BPF_PROG_TEST_RUN runs on the namespace's loopback, MTU 65536 by default).
    pub mtu: u32,
    /// The clock `FLOWS` times are read against, in nanoseconds (the program's
    /// `bpf_ktime_get_coarse_ns`).
    pub now_ns: u64,
    /// The index of the interface frames arrive on (BPF_PROG_TEST_RUN without a context:
    /// the namespace's loopback, 1). A backend routed by another ([`BackendInfo::ifindex`])
    /// is `Redirected` to.
    pub ingress_ifindex: u32,
}

/// The program's conclusion about one frame: which counter it bumps, in which slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub slot: u32,
    /// The backend an L4 listener's frame was forwarded to (rule 7).
    pub backend: Option<BackendPick>,
}

/// The backend a frame was forwarded to: the `BACKEND_STATS` slot
/// [`backend_stats_slot`]`(group, backend)` counts the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendPick {
    pub group: u32,
    pub backend: u32,
}

impl Decision {
    const fn global(outcome: Outcome) -> Self {
        Decision {
            outcome,
            slot: NO_LISTENER_SLOT,
            backend: None,
        }
    }
}

/// The entry of `ring` for a client at `src` (IPv4 clients IPv4-mapped), if it names a backend
/// the kernel can count.
pub fn ring_pick(ring: &[u32], src: &[u8; 16]) -> Option<u32> {
    ring_pick_hash(ring, maglev::source_hash(src))
}

/// The entry of `ring` for a client hash, if it names a backend the kernel can count.
pub fn ring_pick_hash(ring: &[u32], hash: u32) -> Option<u32> {
    ring.get(maglev::table_slot(hash) as usize)
        .copied()
        .filter(|b| *b < MAX_BACKENDS_PER_GROUP)
}

/// How a frame leaves the program, when it is not passed or dropped as it came.
#[derive(Clone, Debug)]
enum Leave {
    /// Encapsulated towards a backend.
    Encap(Forward),
    /// Replaced by this ICMP answer (rule 7d).
    Answer(Vec<u8>),
}

/// What [`encapsulate`] needs of a forwarded frame besides the frame.
#[derive(Clone, Copy, Debug)]
struct Forward {
    slot: u32,
    client: [u8; 16],
    src_port: u16,
}

/// Runs the rules on `frame`; returns the decision and the frame as it leaves the program
/// (encapsulated for `ForwardedL4`, unchanged otherwise).
pub fn run(frame: &[u8], tables: &mut Tables) -> (Decision, Vec<u8>) {
    let (decision, forward) = match classify_inner(frame, tables) {
        Ok(d) => d,
        Err(d) => (d, None),
    };
    let out = match forward {
        Some(Leave::Encap(f)) => {
            let backend = tables.backends.get(&f.slot).copied().unwrap_or_default();
            let hash = maglev::client_hash(&f.client, f.src_port);
            let mut out = encapsulate(frame, &backend, &tables.encap, hash);
            if backend.redirected_from(tables.ingress_ifindex) {
                out[6..12].copy_from_slice(&backend.egress_mac);
            }
            out
        }
        Some(Leave::Answer(answer)) => answer,
        None => frame.to_vec(),
    };
    (decision, out)
}

/// The ICMP answer to an untagged `frame` too big for the MTU once encapsulated, telling its
/// sender that `mtu` bytes fit; None when it is not answered. IPv4 (header without options,
/// don't-fragment set, TCP or UDP): Ethernet addresses swapped, an IPv4 header (TOS 0, id 0,
/// no flags, TTL 64, protocol 1) from the frame's destination to its source, ICMP type 3 code
/// 4 with the MTU (at most 65535) in the low 16 bits of its second word, quoting the frame's
/// first [`ICMP_V4_QUOTE`] IP bytes. IPv6 (next header not ICMPv6): an IPv6 header (traffic
/// class and flow label 0, hop limit 64, next header 58) likewise, ICMPv6 type 2 code 0 with
/// the MTU (at least [`IPV6_MIN_MTU`]), quoting [`ICMP_V6_QUOTE`] bytes.
pub fn too_big_answer(frame: &[u8], mtu: u32) -> Option<Vec<u8>> {
    let ip = frame.get(14..)?;
    let mut out = Vec::with_capacity(110);
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    if frame[12..14] == ETH_P_IPV4.to_be_bytes() {
        let quote = ip.get(..ICMP_V4_QUOTE)?;
        if quote[0] != 0x45
            || quote[6] & 0x40 == 0
            || (quote[9] != IPPROTO_TCP && quote[9] != IPPROTO_UDP)
        {
            return None;
        }
        out.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((28 + ICMP_V4_QUOTE) as u16).to_be_bytes());
        h[8] = 64;
        h[9] = IPPROTO_ICMP;
        h[12..16].copy_from_slice(&quote[16..20]);
        h[16..20].copy_from_slice(&quote[12..16]);
        let sum = ipv4_checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&h);
        let mut icmp = std::vec![3u8, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
        icmp.extend_from_slice(quote);
        let sum = ipv4_checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&icmp);
    } else {
        let quote = ip.get(..ICMP_V6_QUOTE)?;
        if quote[0] >> 4 != 6 || quote[6] == IPPROTO_ICMPV6 {
            return None;
        }
        out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        let len = (8 + ICMP_V6_QUOTE) as u16;
        out.extend_from_slice(&(6u32 << 28).to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[IPPROTO_ICMPV6, 64]);
        out.extend_from_slice(&quote[24..40]);
        out.extend_from_slice(&quote[8..24]);
        let mut icmp = std::vec![2u8, 0, 0, 0];
        icmp.extend_from_slice(&mtu.max(IPV6_MIN_MTU).to_be_bytes());
        icmp.extend_from_slice(quote);
        let mut pseudo = Vec::with_capacity(40 + icmp.len());
        pseudo.extend_from_slice(&quote[24..40]);
        pseudo.extend_from_slice(&quote[8..24]);
        pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
        pseudo.extend_from_slice(&icmp);
        let sum = ipv4_checksum(&pseudo);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&icmp);
    }
    Some(out)
}

/// The frame sent to `backend` for an untagged `frame` whose client hashes to `hash`
/// ([`maglev::client_hash`]): Ethernet from the frame's destination (this host) to the
/// backend's next hop; an outer IPv4 header (protocol 4 or 41, TOS copied, id 0, DF, TTL 64)
/// or IPv6 header (next header 4 or 41, traffic class copied, flow label from the hash, hop
/// limit 64) from the `ENCAP` prefix to the backend; then every byte of the frame after its
/// Ethernet header, unchanged. Outer lengths come from the inner header's length field.
pub fn encapsulate(frame: &[u8], backend: &BackendInfo, encap: &EncapConfig, hash: u32) -> Vec<u8> {
    let inner = &frame[14..];
    let inner_v4 = frame[12..14] == ETH_P_IPV4.to_be_bytes();
    let (inner_len, tos, proto) = if inner_v4 {
        (
            u16::from_be_bytes([inner[2], inner[3]]),
            inner[1],
            IPPROTO_IPIP,
        )
    } else {
        (
            u16::from_be_bytes([inner[4], inner[5]]).wrapping_add(40),
            (inner[0] << 4) | (inner[1] >> 4),
            IPPROTO_IPV6,
        )
    };
    let mut out = Vec::with_capacity(frame.len() + 40);
    out.extend_from_slice(&backend.next_hop_mac);
    out.extend_from_slice(&frame[0..6]);
    if backend.outer_v6() {
        out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        let first = (6u32 << 28) | (u32::from(tos) << 20) | (hash & 0xf_ffff);
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&inner_len.to_be_bytes());
        out.extend_from_slice(&[proto, ENCAP_TTL]);
        out.extend_from_slice(&encap.v6_source(hash));
        out.extend_from_slice(&backend.addr);
    } else {
        out.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[1] = tos;
        ip[2..4].copy_from_slice(&inner_len.wrapping_add(20).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = ENCAP_TTL;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&encap.v4_source(hash));
        ip[16..20].copy_from_slice(&backend.addr[12..16]);
        let checksum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        out.extend_from_slice(&ip);
    }
    out.extend_from_slice(inner);
    out
}

/// The Internet checksum (RFC 1071) of an IPv4 header whose checksum field is zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[derive(Clone, Copy)]
enum Src {
    V4([u8; 4]),
    V6([u8; 16]),
}

enum Frag {
    Whole,
    First(u32),
    Later(u32),
}

/// The decision for `frame` (updating `tables.flows` as the program updates `FLOWS`).
pub fn classify(frame: &[u8], tables: &mut Tables) -> Decision {
    match classify_inner(frame, tables) {
        Ok((d, _)) | Err(d) => d,
    }
}

fn bytes<const N: usize>(frame: &[u8], off: usize) -> Result<[u8; N], Decision> {
    frame
        .get(off..off + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(Decision::global(Outcome::Unparsable))
}

fn classify_inner(
    frame: &[u8],
    tables: &mut Tables,
) -> Result<(Decision, Option<Leave>), Decision> {
    let unparsable = Decision::global(Outcome::Unparsable);
    let not_ours = Decision::global(Outcome::NotOurs);
    let fragment = Decision::global(Outcome::Fragment);

    let eth: [u8; 14] = bytes(frame, 0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = 14;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: [u8; 4] = bytes(frame, off)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(unparsable);
    }

    let (src, dst, proto, l4, frag) = match ethertype {
        ETH_P_IPV4 => {
            let ip: [u8; 20] = bytes(frame, off)?;
            if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
                return Err(unparsable);
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
            let src = [ip[12], ip[13], ip[14], ip[15]];
            let dst = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
            (
                Src::V4(src),
                dst,
                ip[9],
                off + usize::from(ip[0] & 0x0f) * 4,
                frag,
            )
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = bytes(frame, off)?;
            if ip[0] >> 4 != 6 {
                return Err(unparsable);
            }
            let mut next = ip[6];
            let mut l4 = off + 40;
            let mut frag = Frag::Whole;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                match next {
                    IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                        let h: [u8; 2] = bytes(frame, l4)?;
                        next = h[0];
                        l4 += (usize::from(h[1]) + 1) * 8;
                    }
                    IPV6_AUTH => {
                        let h: [u8; 2] = bytes(frame, l4)?;
                        next = h[0];
                        l4 += (usize::from(h[1]) + 2) * 4;
                    }
                    IPV6_FRAGMENT => {
                        let h: [u8; 8] = bytes(frame, l4)?;
                        let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                        next = h[0];
                        l4 += 8;
                        if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
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
                return Err(unparsable);
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&ip[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&ip[24..40]);
            let src = match v4_unmapped(&src) {
                Some(v4) => Src::V4(v4),
                None => Src::V6(src),
            };
            (src, dst, next, l4, frag)
        }
        _ => return Err(not_ours),
    };
    let is_icmp = (ethertype == ETH_P_IPV4 && proto == IPPROTO_ICMP)
        || (ethertype == ETH_P_IPV6 && proto == IPPROTO_ICMPV6);
    if off == 14
        && matches!(frag, Frag::Whole)
        && is_icmp
        && frame.len() >= l4 + 4
        && is_icmp_error(frame[l4], ethertype == ETH_P_IPV4)
    {
        return icmp_error(frame, tables);
    }
    // The source as the maps key it: IPv4-mapped for IPv4.
    let client = match src {
        Src::V4(a) => v4_mapped(a),
        Src::V6(a) => a,
    };
    let frag_key = |id: u32| FragKey {
        src: client,
        dst,
        id,
        proto,
        _pad: [0; 3],
    };
    let (src_port, port) = match frag {
        Frag::Later(id) => {
            if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
                return Err(fragment);
            }
            let ports = tables.frags.get(&frag_key(id)).ok_or(fragment)?;
            (ports.src_port, ports.dst_port)
        }
        Frag::Whole | Frag::First(_) => {
            if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
                return Err(not_ours);
            }
            let ports: [u8; 4] = bytes(frame, l4)?;
            (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            )
        }
    };

    let is_v4 = ethertype == ETH_P_IPV4;
    let info = find_listener(tables, dst, port, proto, is_v4).ok_or(not_ours)?;
    let syn = proto == IPPROTO_TCP
        && !matches!(frag, Frag::Later(_))
        && frame.len() >= l4 + 14
        && frame[l4 + 13] & 0x12 == 0x02;
    let mut outcome = if admitted(tables, info, &src) {
        source_limits(tables, &info, &client, syn)
    } else {
        Outcome::DroppedAcl
    };
    if outcome == Outcome::Passed
        && info.syn_cookies & syn_cookies::ANSWER != 0
        && info.l4_group >= MAX_L4_GROUPS
        && proto == IPPROTO_TCP
        && off == 14
        && matches!(frag, Frag::Whole)
        && l4 == off + if is_v4 { 20 } else { 40 }
    {
        outcome = syn_cookie(tables, &info, &frame[off..l4], &frame[l4..], is_v4);
    }
    if outcome != Outcome::Passed || info.l4_group >= MAX_L4_GROUPS {
        return Ok((
            Decision {
                outcome,
                slot: info.id,
                backend: None,
            },
            None,
        ));
    }
    if off == 14
        && let Frag::First(id) = frag
    {
        let ports = FragPorts {
            src_port,
            dst_port: port,
        };
        tables.frags.insert(frag_key(id), ports);
    }
    let flow = FlowKey {
        src: client,
        dst,
        src_port,
        dst_port: port,
        proto,
        _pad: [0; 3],
    };
    let picked = if off != 14 {
        Err(Outcome::VlanL4)
    } else {
        forward_to(&info, &flow, tables)
    };
    Ok(match picked {
        Ok(slot) => {
            let backend = tables.backends.get(&slot).copied().unwrap_or_default();
            let overhead = backend.overhead();
            if too_big(tables, frame.len() + overhead as usize) {
                let mtu = tables.mtu.saturating_sub(overhead);
                let answer = too_big_answer(frame, mtu);
                let outcome = if answer.is_some() {
                    Outcome::TooBigAnswered
                } else {
                    Outcome::TooBig
                };
                let decision = Decision {
                    outcome,
                    slot: info.id,
                    backend: None,
                };
                return Ok((decision, answer.map(Leave::Answer)));
            }
            (
                Decision {
                    outcome: leaving(&backend, Outcome::ForwardedL4, tables),
                    slot: info.id,
                    backend: Some(BackendPick {
                        group: info.l4_group,
                        backend: slot % MAX_BACKENDS_PER_GROUP,
                    }),
                },
                Some(Leave::Encap(Forward {
                    slot,
                    client,
                    src_port,
                })),
            )
        }
        Err(outcome) => (
            Decision {
                outcome,
                slot: info.id,
                backend: None,
            },
            None,
        ),
    })
}

/// Rule 7d: whether a frame of `len` bytes once encapsulated exceeds the interface's MTU (and
/// [`MTU_FLOOR`], below which the program does not ask).
fn too_big(tables: &Tables, len: usize) -> bool {
    tables.mtu != 0 && len > tables.mtu as usize + 14 && len > MTU_FLOOR as usize + 14
}

/// Rule 5: the listener of (`dst`, `port`, `proto`).
fn find_listener(
    tables: &Tables,
    dst: [u8; 16],
    port: u16,
    proto: u8,
    is_v4: bool,
) -> Option<ListenerInfo> {
    let family_any = if is_v4 { ANY_V4 } else { ANY };
    let candidates: &[[u8; 16]] = if is_v4 {
        &[dst, family_any, ANY]
    } else {
        &[dst, family_any]
    };
    let exact_is_wildcard = dst == ANY || dst == ANY_V4;
    candidates
        .iter()
        .skip(usize::from(exact_is_wildcard))
        .find_map(|addr| tables.listeners.get(&ListenerKey::new(*addr, port, proto)))
        .copied()
}

/// Rule 6: whether `info`'s access control admits `src`.
fn admitted(tables: &Tables, info: ListenerInfo, src: &Src) -> bool {
    let listed = tables.acl.iter().any(|(set, prefix)| {
        *set == info.acl_set
            && match (prefix, src) {
                (AclPrefix::V4(net, len), Src::V4(a)) => prefix_matches(net, *len, a),
                (AclPrefix::V6(net, len), Src::V6(a)) => prefix_matches(net, *len, a),
                _ => false,
            }
    });
    !matches!((info.acl, listed), (acl::ALLOW, false) | (acl::DENY, true))
}

/// Whether ICMP (`v4`) or ICMPv6 type `kind` quotes the packet it is about (rule 8).
fn is_icmp_error(kind: u8, v4: bool) -> bool {
    if v4 {
        matches!(kind, 3 | 11 | 12)
    } else {
        matches!(kind, 1..=4)
    }
}

/// Rule 8: an untagged, unfragmented ICMP error (IPv6: the ICMPv6 header right after the
/// IPv6 header) quoting an IPv4 header without options (IPv6: a header followed by TCP or
/// UDP, or by the fragment header of a first fragment and then TCP or UDP) of a TCP or UDP
/// packet from an L4 listener's address and port: handled as a packet of
/// the flow it quotes (client = the quoted destination), under the listener's access control
/// for the client (and, under a deny list, for the error's sender too), forwarded as rule 7b-c pick, counted `ForwardedIcmp`; too big once
/// encapsulated it is `TooBig`, never answered. Anything else is `NotOurs`.
fn icmp_error(frame: &[u8], tables: &mut Tables) -> Result<(Decision, Option<Leave>), Decision> {
    let not_ours = Decision::global(Outcome::NotOurs);
    let v4 = frame[12..14] == ETH_P_IPV4.to_be_bytes();
    let ip = frame.get(14..).ok_or(not_ours)?;
    let (sender, dst, l4) = if v4 {
        let h = ip.get(..20).ok_or(not_ours)?;
        (
            Src::V4([h[12], h[13], h[14], h[15]]),
            v4_mapped([h[16], h[17], h[18], h[19]]),
            14 + usize::from(h[0] & 0x0f) * 4,
        )
    } else {
        let h = ip.get(..40).ok_or(not_ours)?;
        if h[6] != IPPROTO_ICMPV6 {
            return Err(not_ours);
        }
        let (mut sender, mut dst) = ([0u8; 16], [0u8; 16]);
        sender.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        let sender = match v4_unmapped(&sender) {
            Some(a) => Src::V4(a),
            None => Src::V6(sender),
        };
        (sender, dst, 54)
    };
    let (client, client_port, vip_port, proto) = if v4 {
        let q = frame.get(l4 + 8..l4 + 36).ok_or(not_ours)?;
        if q[0] != 0x45 || (q[9] != IPPROTO_TCP && q[9] != IPPROTO_UDP) {
            return Err(not_ours);
        }
        (
            v4_mapped([q[16], q[17], q[18], q[19]]),
            u16::from_be_bytes([q[22], q[23]]),
            u16::from_be_bytes([q[20], q[21]]),
            q[9],
        )
    } else {
        let q = frame.get(l4 + 8..l4 + 48).ok_or(not_ours)?;
        if q[0] >> 4 != 6 {
            return Err(not_ours);
        }
        let (proto, ports) = if q[6] == IPV6_FRAGMENT {
            let f = frame.get(l4 + 48..l4 + 60).ok_or(not_ours)?;
            if u16::from_be_bytes([f[2], f[3]]) >> 3 != 0 {
                return Err(not_ours);
            }
            (f[0], &f[8..12])
        } else {
            (q[6], frame.get(l4 + 48..l4 + 52).ok_or(not_ours)?)
        };
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return Err(not_ours);
        }
        let mut client = [0u8; 16];
        client.copy_from_slice(&q[24..40]);
        (
            client,
            u16::from_be_bytes([ports[2], ports[3]]),
            u16::from_be_bytes([ports[0], ports[1]]),
            proto,
        )
    };
    let info = find_listener(tables, dst, vip_port, proto, v4).ok_or(not_ours)?;
    if info.l4_group >= MAX_L4_GROUPS {
        return Err(not_ours);
    }
    let src = match v4_unmapped(&client) {
        Some(a) => Src::V4(a),
        None => Src::V6(client),
    };
    let decided = |outcome| Decision {
        outcome,
        slot: info.id,
        backend: None,
    };
    if !admitted(tables, info, &src) || (info.acl == acl::DENY && !admitted(tables, info, &sender))
    {
        return Ok((decided(Outcome::DroppedAcl), None));
    }
    let flow = FlowKey {
        src: client,
        dst,
        src_port: client_port,
        dst_port: vip_port,
        proto,
        _pad: [0; 3],
    };
    let slot = match forward_to(&info, &flow, tables) {
        Ok(slot) => slot,
        Err(outcome) => return Ok((decided(outcome), None)),
    };
    let backend = tables.backends.get(&slot).copied().unwrap_or_default();
    if too_big(tables, frame.len() + backend.overhead() as usize) {
        return Ok((decided(Outcome::TooBig), None));
    }
    let decision = Decision {
        outcome: leaving(&backend, Outcome::ForwardedIcmp, tables),
        slot: info.id,
        backend: Some(BackendPick {
            group: info.l4_group,
            backend: slot % MAX_BACKENDS_PER_GROUP,
        }),
    };
    let forward = Forward {
        slot,
        client,
        src_port: client_port,
    };
    Ok((decision, Some(Leave::Encap(forward))))
}

/// Rule 7e: `forwarded`, or `Redirected` when `backend` is routed by another interface than
/// the frame came in on.
fn leaving(backend: &BackendInfo, forwarded: Outcome, tables: &Tables) -> Outcome {
    if backend.redirected_from(tables.ingress_ifindex) {
        Outcome::Redirected
    } else {
        forwarded
    }
}

/// Rule 7b and 7c: the `BACKENDS` slot an admitted L4 frame goes to.
fn forward_to(info: &ListenerInfo, flow: &FlowKey, tables: &mut Tables) -> Result<u32, Outcome> {
    let group = info.l4_group;
    let now = tables.now_ns;
    let backend_at = |slot: u32| tables.backends.get(&slot).copied().unwrap_or_default();
    let valid = |f: &FlowState| {
        let b = backend_at(f.backend_slot);
        now.wrapping_sub(f.last_seen_ns) < u64::from(info.flow_secs) * 1_000_000_000
            && f.backend_slot / MAX_BACKENDS_PER_GROUP == group
            && b.usable()
            && b.epoch == f.epoch
    };
    let known = tables.flows.contains_key(flow);
    if info.flow_secs != 0 {
        if let Some(f) = tables.flows.get(flow).copied()
            && valid(&f)
        {
            if now.wrapping_sub(f.last_seen_ns) >= FLOW_TOUCH_NS {
                let touched = FlowState {
                    last_seen_ns: now,
                    ..f
                };
                tables.flows.insert(*flow, touched);
            }
            return Ok(f.backend_slot);
        }
        if let Some(f) = tables.new_flows.get(flow).copied()
            && valid(&f)
        {
            let promoted = FlowState {
                last_seen_ns: now,
                ..f
            };
            tables.flows.insert(*flow, promoted);
            return Ok(f.backend_slot);
        }
    }
    let hash = if info.l4_flags & l4_flags::HASH_SRC_PORT != 0 {
        maglev::client_hash(&flow.src, flow.src_port)
    } else {
        maglev::source_hash(&flow.src)
    };
    let backend = tables
        .rings
        .get(&group)
        .and_then(|ring| ring_pick_hash(ring, hash))
        .ok_or(Outcome::NoBackend)?;
    let slot = backend_stats_slot(group, backend);
    let b = backend_at(slot);
    if !b.usable() {
        return Err(Outcome::NoBackend);
    }
    if info.flow_secs != 0 {
        let table = if known {
            &mut tables.flows
        } else {
            &mut tables.new_flows
        };
        table.insert(
            *flow,
            FlowState {
                backend_slot: slot,
                epoch: b.epoch,
                last_seen_ns: now,
            },
        );
    }
    Ok(slot)
}

/// Rule 6b: `Passed`, or why a frame from `src` (IPv4-mapped), admitted by `info`'s access
/// control, is dropped; `sources` and `blocked` are updated at `now_ns` as the program does.
fn source_limits(tables: &mut Tables, info: &ListenerInfo, src: &[u8; 16], syn: bool) -> Outcome {
    let syn = syn && info.syn_interval_ns != 0;
    let key = SourceKey::new(src, info.id);
    let now = tables.now_ns;
    if info.block_secs != 0 && tables.blocked.get(&key).is_some_and(|&until| until > now) {
        return Outcome::Blocked;
    }
    if !syn && info.pps_interval_ns == 0 {
        return Outcome::Passed;
    }
    let state = tables.sources.entry(key).or_default();
    match source_event(state, now, info, syn) {
        SourceVerdict::Within => Outcome::Passed,
        SourceVerdict::Over => Outcome::RateLimited,
        SourceVerdict::Block => {
            tables
                .blocked
                .insert(key, now + u64::from(info.block_secs) * NS_PER_SEC);
            Outcome::Blocked
        }
    }
}

/// Rule 6c: a frame of a listener answering with SYN cookies, from an IPv4 header without
/// options or an IPv6 header without extension headers (`ip`), untagged and unfragmented,
/// whose TCP header (`tcp`, the rest of the frame) is complete and its options well formed: a
/// SYN without ACK, RST or FIN is `SynCookie`, unless it stamps the listener (`Passed`, and
/// the listener's `SYN_STAMPS` entry for the family set to `now_ns`): when its addresses are
/// ones the kernel answers ([`inet::syn_addresses_ok`]) and that entry is unset or
/// [`SYN_STAMP_ANY_NS`] old, or [`SYN_STAMP_NS`] old and the SYN's checksums are correct
/// ([`inet::tcp_header_checksum_ok`]). Anything else is `Passed`, unchanged. The
/// program also passes a SYN it cannot answer (the frame cannot be resized), which this
/// reference does not model.
fn syn_cookie(
    tables: &mut Tables,
    info: &ListenerInfo,
    ip: &[u8],
    tcp: &[u8],
    is_v4: bool,
) -> Outcome {
    if tcp.len() < 20 || tcp[13] & 0x17 != 0x02 {
        return Outcome::Passed;
    }
    let len = usize::from(tcp[12] >> 4) * 4;
    if len < 20 || tcp.len() < len || !options_well_formed(&tcp[20..len]) {
        return Outcome::Passed;
    }
    let stamp = tables
        .syn_stamps
        .entry(syn_stamp_slot(info.id, is_v4))
        .or_default();
    let age = tables.now_ns.saturating_sub(*stamp);
    if inet::syn_addresses_ok(ip, is_v4)
        && (*stamp == 0
            || age >= SYN_STAMP_ANY_NS
            || (age >= SYN_STAMP_NS
                && inet::tcp_header_checksum_ok(ip, &tcp[..len], len as u32, is_v4)))
    {
        *stamp = tables.now_ns;
        return Outcome::Passed;
    }
    Outcome::SynCookie
}

/// Whether a TCP header's options (`opts`, after the fixed 20 bytes) are well formed: none
/// has a length below 2 or runs past the header (an end-of-list ends them early).
fn options_well_formed(opts: &[u8]) -> bool {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            _ => match opts.get(i + 1).map(|&n| usize::from(n)) {
                Some(len) if len >= 2 && i + len <= opts.len() => i += len,
                _ => return false,
            },
        }
    }
    true
}

/// Whether the first `len` bits of `addr` equal those of `net`.
pub fn prefix_matches<const N: usize>(net: &[u8; N], len: u8, addr: &[u8; N]) -> bool {
    let len = usize::from(len).min(N * 8);
    let full = len / 8;
    if net[..full] != addr[..full] {
        return false;
    }
    let rest = len % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    net[full] & mask == addr[full] & mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tables(acl_mode: u32, prefixes: &[AclPrefix]) -> Tables {
        let mut t = Tables::default();
        t.listeners.insert(
            ListenerKey::new(v4_mapped([10, 0, 0, 1]), 443, IPPROTO_TCP),
            ListenerInfo {
                id: 7,
                acl: acl_mode,
                l4_group: NO_GROUP,
                flow_secs: 0,
                l4_flags: 0,
                syn_interval_ns: 0,
                pps_interval_ns: 0,
                block_secs: 0,
                syn_cookies: 0,
                acl_set: 7,
            },
        );
        t.acl = prefixes.iter().map(|p| (7, *p)).collect();
        t
    }

    fn tcp_v4(src: [u8; 4], dst: [u8; 4], port: u16) -> std::vec::Vec<u8> {
        let mut out = std::vec::Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(src, dst, 64)
            .tcp(40000, port, 1, 1000)
            .write(&mut out, &[])
            .expect("building a packet in memory cannot fail");
        out
    }

    #[test]
    fn whitelist_passes_listed_sources_and_drops_the_rest() {
        let mut t = tables(acl::ALLOW, &[AclPrefix::V4([192, 168, 1, 0], 24)]);
        let ok = classify(&tcp_v4([192, 168, 1, 9], [10, 0, 0, 1], 443), &mut t);
        assert_eq!(
            ok,
            Decision {
                outcome: Outcome::Passed,
                slot: 7,
                backend: None,
            }
        );
        let bad = classify(&tcp_v4([192, 168, 2, 9], [10, 0, 0, 1], 443), &mut t);
        assert_eq!(
            bad,
            Decision {
                outcome: Outcome::DroppedAcl,
                slot: 7,
                backend: None,
            }
        );
        let other_port = classify(&tcp_v4([192, 168, 2, 9], [10, 0, 0, 1], 80), &mut t);
        assert_eq!(other_port, Decision::global(Outcome::NotOurs));
    }

    #[test]
    fn blacklist_drops_listed_sources_only() {
        let mut t = tables(acl::DENY, &[AclPrefix::V4([192, 168, 1, 128], 25)]);
        let d = classify(&tcp_v4([192, 168, 1, 200], [10, 0, 0, 1], 443), &mut t);
        assert_eq!(d.outcome, Outcome::DroppedAcl);
        let d = classify(&tcp_v4([192, 168, 1, 127], [10, 0, 0, 1], 443), &mut t);
        assert_eq!(d.outcome, Outcome::Passed);
    }

    #[test]
    fn l4_listeners_forward_to_usable_backends_of_their_group_ring_when_admitted() {
        let mut t = tables(acl::DENY, &[AclPrefix::V4([192, 168, 1, 0], 24)]);
        let key = ListenerKey::new(v4_mapped([10, 0, 0, 1]), 443, IPPROTO_TCP);
        let src = [172, 16, 0, 9];
        let slot = maglev::table_slot(maglev::source_hash(&v4_mapped(src))) as usize;
        let mut ring = std::vec![maglev::NO_BACKEND; maglev::TABLE_SIZE as usize];
        ring[slot] = 3;
        t.rings.insert(2, ring.clone());
        let usable = BackendInfo {
            addr: v4_mapped([10, 9, 0, 3]),
            next_hop_mac: [2, 0, 0, 0, 0, 9],
            flags: backend_flags::ALIVE,
            epoch: 1,
            ..BackendInfo::default()
        };
        t.backends.insert(backend_stats_slot(2, 3), usable);
        let frame = tcp_v4(src, [10, 0, 0, 1], 443);
        // Not an L4 listener: passed, no pick.
        assert_eq!(classify(&frame, &mut t).outcome, Outcome::Passed);

        t.listeners.get_mut(&key).expect("listener 7").l4_group = 2;
        let d = classify(&frame, &mut t);
        assert_eq!(d.outcome, Outcome::ForwardedL4);
        assert_eq!(
            d.backend,
            Some(BackendPick {
                group: 2,
                backend: 3
            })
        );
        // Refused sources are never forwarded.
        let refused = classify(&tcp_v4([192, 168, 1, 1], [10, 0, 0, 1], 443), &mut t);
        assert_eq!(
            (refused.outcome, refused.backend),
            (Outcome::DroppedAcl, None)
        );
        // A dead backend, or one without a next hop, takes nothing.
        for broken in [
            BackendInfo { flags: 0, ..usable },
            BackendInfo {
                next_hop_mac: [0; 6],
                ..usable
            },
        ] {
            t.backends.insert(backend_stats_slot(2, 3), broken);
            let d = classify(&frame, &mut t);
            assert_eq!((d.outcome, d.backend), (Outcome::NoBackend, None));
        }
        t.backends.insert(backend_stats_slot(2, 3), usable);
        // NO_BACKEND, indices the kernel cannot count, and groups without a ring pick none.
        for entry in [maglev::NO_BACKEND, MAX_BACKENDS_PER_GROUP] {
            ring[slot] = entry;
            t.rings.insert(2, ring.clone());
            assert_eq!(classify(&frame, &mut t).outcome, Outcome::NoBackend);
        }
        t.rings.clear();
        assert_eq!(classify(&frame, &mut t).outcome, Outcome::NoBackend);
        // Group ids past the end are no group: served in userspace.
        t.rings
            .insert(MAX_L4_GROUPS, std::vec![0; maglev::TABLE_SIZE as usize]);
        t.listeners.get_mut(&key).expect("listener 7").l4_group = MAX_L4_GROUPS;
        assert_eq!(classify(&frame, &mut t).outcome, Outcome::Passed);
    }

    #[test]
    fn a_backend_routed_by_another_interface_is_redirected_to_from_that_interface() {
        let mut t = tables(acl::ALL, &[]);
        t.ingress_ifindex = 1;
        let key = ListenerKey::new(v4_mapped([10, 0, 0, 1]), 443, IPPROTO_TCP);
        t.listeners.get_mut(&key).expect("listener 7").l4_group = 0;
        t.rings.insert(0, std::vec![0; maglev::TABLE_SIZE as usize]);
        let mut backend = BackendInfo {
            addr: v4_mapped([10, 9, 0, 3]),
            next_hop_mac: [2, 0, 0, 0, 0, 9],
            flags: backend_flags::ALIVE,
            epoch: 1,
            ifindex: 7,
            egress_mac: [2, 0, 0, 0, 7, 7],
            _pad: [0; 2],
        };
        t.backends.insert(backend_stats_slot(0, 0), backend);
        let frame = tcp_v4([1, 2, 3, 4], [10, 0, 0, 1], 443);
        let (d, out) = run(&frame, &mut t);
        assert_eq!(d.outcome, Outcome::Redirected);
        assert_eq!(&out[..6], &backend.next_hop_mac);
        assert_eq!(&out[6..12], &backend.egress_mac);
        // Routed by the interface it came in on, or by no interface named: sent back out.
        for ifindex in [1, 0] {
            backend.ifindex = ifindex;
            t.backends.insert(backend_stats_slot(0, 0), backend);
            let (d, out) = run(&frame, &mut t);
            assert_eq!(d.outcome, Outcome::ForwardedL4, "ifindex {ifindex}");
            assert_eq!(&out[6..12], &frame[..6], "ifindex {ifindex}");
        }
    }

    #[test]
    fn flows_stay_on_their_backend_until_it_dies_or_they_idle_out() {
        let mut t = tables(acl::ALL, &[]);
        let key = ListenerKey::new(v4_mapped([10, 0, 0, 1]), 443, IPPROTO_TCP);
        let l = t.listeners.get_mut(&key).expect("listener 7");
        l.l4_group = 0;
        l.flow_secs = 10;
        for b in 0..2 {
            t.backends.insert(
                backend_stats_slot(0, b),
                BackendInfo {
                    addr: v4_mapped([10, 9, 0, b as u8]),
                    next_hop_mac: [2, 0, 0, 0, 0, 9],
                    flags: backend_flags::ALIVE,
                    epoch: 1 + b,
                    ..BackendInfo::default()
                },
            );
        }
        let to = |b: u32| std::vec![b; maglev::TABLE_SIZE as usize];
        t.rings.insert(0, to(0));
        let frame = tcp_v4([1, 2, 3, 4], [10, 0, 0, 1], 443);
        let backend = |t: &mut Tables| classify(&frame, t).backend.map(|p| p.backend);
        assert_eq!(backend(&mut t), Some(0));
        assert!(
            t.flows.is_empty() && t.new_flows.len() == 1,
            "a first packet"
        );
        assert_eq!(backend(&mut t), Some(0));
        assert_eq!(t.flows.len(), 1, "the second packet promotes the flow");
        t.new_flows.clear();
        t.rings.insert(0, to(1));
        t.now_ns = 9_999_999_999;
        assert_eq!(backend(&mut t), Some(0), "a ring change keeps the flow");
        // Refreshed at 9.99 s, so still alive at 19 s...
        t.now_ns = 19_000_000_000;
        assert_eq!(backend(&mut t), Some(0));
        // ...but not after 10 idle seconds.
        t.now_ns = 29_999_999_999;
        assert_eq!(backend(&mut t), Some(1), "an idle flow follows the ring");
        t.rings.insert(0, to(0));
        let b1 = backend_stats_slot(0, 1);
        t.backends.get_mut(&b1).expect("backend 1").flags = 0;
        assert_eq!(
            backend(&mut t),
            Some(0),
            "a dead backend's flow is re-picked"
        );
        t.backends.get_mut(&b1).expect("backend 1").flags = backend_flags::ALIVE;
        t.rings.insert(0, to(1));
        t.backends
            .get_mut(&backend_stats_slot(0, 0))
            .expect("backend 0")
            .epoch = 7;
        assert_eq!(
            backend(&mut t),
            Some(1),
            "a slot given a new address loses its flows"
        );
    }

    #[test]
    fn encapsulation_adds_one_outer_header_of_the_backend_family() {
        let frame = tcp_v4([1, 2, 3, 4], [10, 0, 0, 1], 443);
        let encap = EncapConfig {
            v4_prefix: DEFAULT_ENCAP_V4,
            _pad: [0; 2],
            v6_prefix: DEFAULT_ENCAP_V6,
        };
        let mut b = BackendInfo {
            addr: v4_mapped([10, 9, 0, 1]),
            next_hop_mac: [2, 0, 0, 0, 0, 9],
            flags: backend_flags::ALIVE,
            epoch: 1,
            ..BackendInfo::default()
        };
        let out = encapsulate(&frame, &b, &encap, 0xabcd_1234);
        assert_eq!(out.len(), frame.len() + 20);
        assert_eq!(&out[..6], &b.next_hop_mac);
        assert_eq!(&out[6..12], &frame[..6]);
        assert_eq!(&out[34..], &frame[14..]);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[14..]).expect("outer IPv4");
        assert_eq!(ip.protocol(), etherparse::IpNumber(IPPROTO_IPIP));
        assert_eq!(ip.ttl(), ENCAP_TTL);
        assert!(ip.dont_fragment());
        assert_eq!(ip.source(), [172, 16, 0x12, 0x34]);
        assert_eq!(ip.destination(), [10, 9, 0, 1]);
        assert_eq!(usize::from(ip.total_len()), frame.len() - 14 + 20);
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());

        b.addr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        b.flags |= backend_flags::IPV6;
        let out = encapsulate(&frame, &b, &encap, 0xabcd_1234);
        assert_eq!(out.len(), frame.len() + 40);
        let ip = etherparse::Ipv6HeaderSlice::from_slice(&out[14..]).expect("outer IPv6");
        assert_eq!(ip.next_header(), etherparse::IpNumber(IPPROTO_IPIP));
        assert_eq!(ip.hop_limit(), ENCAP_TTL);
        assert_eq!(ip.flow_label().value(), 0xd_1234);
        assert_eq!(&out[54..], &frame[14..]);
    }

    #[test]
    fn prefix_matching_respects_partial_bytes() {
        assert!(prefix_matches(&[10, 0, 0, 0], 8, &[10, 255, 1, 2]));
        assert!(!prefix_matches(&[10, 0, 0, 0], 9, &[10, 128, 1, 2]));
        assert!(prefix_matches(&[1, 2, 3, 4], 0, &[9, 9, 9, 9]));
        assert!(prefix_matches(&[1, 2, 3, 4], 32, &[1, 2, 3, 4]));
        assert!(!prefix_matches(&[1, 2, 3, 4], 32, &[1, 2, 3, 5]));
    }

    #[test]
    fn short_frames_are_unparsable_and_non_ip_is_not_ours() {
        let mut t = tables(acl::ALLOW, &[]);
        let full = tcp_v4([1, 1, 1, 1], [10, 0, 0, 1], 443);
        for len in 0..14 {
            assert_eq!(classify(&full[..len], &mut t).outcome, Outcome::Unparsable);
        }
        let mut arp = full.clone();
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(classify(&arp, &mut t).outcome, Outcome::NotOurs);
    }
}
