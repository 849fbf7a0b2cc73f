//! The reference classifier: what the XDP program must decide for any frame, written over a byte
//! slice as plainly as possible. Tests run both on the same frames and the same map contents and
//! require the same outcome and counter slot (the differential test in `tests/`).
//!
//! The rules, in order:
//! 1. Ethernet header (14 bytes) or `Unparsable`.
//! 2. Up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags (4 bytes each) or `Unparsable`; a further tag
//!    is `Unparsable`. An ethertype other than IPv4/IPv6 is `NotOurs`.
//! 3. IPv4: 20 bytes, version 4, IHL >= 5, else `Unparsable`. A non-zero fragment offset is
//!    `Fragment`. A protocol other than TCP/UDP is `NotOurs`. The destination port (bytes 2..4
//!    of the L4 header, found through the IHL) must be present, else `Unparsable`.
//! 4. IPv6: 40 bytes and version 6, else `Unparsable`. Extension headers (hop-by-hop, routing,
//!    destination options, AH, fragment) are walked, at most [`MAX_IPV6_EXT_HEADERS`]; a
//!    truncated one, or one more than the bound, is `Unparsable`; a fragment header with a
//!    non-zero offset is `Fragment`. Then as IPv4 from the protocol on.
//! 5. Listener lookup: exact address, the family wildcard ([`ANY_V4`] or [`ANY`]), and for IPv4
//!    also [`ANY`]. A destination that is itself a wildcard address (`::`, `::ffff:0.0.0.0`)
//!    matches wildcard listeners only. No listener: `NotOurs`.
//! 6. Access control against the source (IPv4-mapped IPv6 sources as IPv4): `all` passes,
//!    `allow` passes on a match and drops otherwise, `deny` drops on a match; any other mode
//!    value passes.
//! 7. An admitted frame (`Passed`) of a listener whose `l4_group` is below [`MAX_L4_GROUPS`] is
//!    assigned a backend of that group: the entry `table_slot(source_hash(src))` of the group's
//!    live ring, `src` IPv4-mapped for IPv4 (and IPv4-mapped IPv6) sources. No ring for the
//!    group, or an entry not below [`MAX_BACKENDS_PER_GROUP`] (such as `NO_BACKEND`), assigns
//!    none. The frame is still `Passed`; the assignment counts in the backend's
//!    `BACKEND_STATS` slot.
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
    /// (listener id, prefix)
    pub acl: Vec<(u32, AclPrefix)>,
    /// The live Maglev ring of each backend group that has one ([`maglev::TABLE_SIZE`]
    /// entries), keyed by group.
    pub rings: HashMap<u32, Vec<u32>>,
}

/// The program's conclusion about one frame: which counter it bumps, in which slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub slot: u32,
    /// The backend an L4 listener's frame was assigned (rule 7).
    pub backend: Option<BackendPick>,
}

/// A backend chosen through a group's Maglev ring: the `BACKEND_STATS` slot
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
    let slot = maglev::table_slot(maglev::source_hash(src)) as usize;
    ring.get(slot)
        .copied()
        .filter(|b| *b < MAX_BACKENDS_PER_GROUP)
}

enum Src {
    V4([u8; 4]),
    V6([u8; 16]),
}

pub fn classify(frame: &[u8], tables: &Tables) -> Decision {
    match classify_inner(frame, tables) {
        Ok(d) | Err(d) => d,
    }
}

fn bytes<const N: usize>(frame: &[u8], off: usize) -> Result<[u8; N], Decision> {
    frame
        .get(off..off + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(Decision::global(Outcome::Unparsable))
}

fn classify_inner(frame: &[u8], tables: &Tables) -> Result<Decision, Decision> {
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

    let (src, dst, proto, l4) = match ethertype {
        ETH_P_IPV4 => {
            let ip: [u8; 20] = bytes(frame, off)?;
            if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
                return Err(unparsable);
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return Err(fragment);
            }
            let src = [ip[12], ip[13], ip[14], ip[15]];
            let dst = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
            (
                Src::V4(src),
                dst,
                ip[9],
                off + usize::from(ip[0] & 0x0f) * 4,
            )
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = bytes(frame, off)?;
            if ip[0] >> 4 != 6 {
                return Err(unparsable);
            }
            let mut next = ip[6];
            let mut l4 = off + 40;
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
                        if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                            return Err(fragment);
                        }
                        next = h[0];
                        l4 += 8;
                    }
                    _ => break,
                }
            }
            if matches!(
                next,
                IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH | IPV6_FRAGMENT
            ) {
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
            (src, dst, next, l4)
        }
        _ => return Err(not_ours),
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(not_ours);
    }
    let ports: [u8; 4] = bytes(frame, l4)?;
    let port = u16::from_be_bytes([ports[2], ports[3]]);

    let is_v4 = ethertype == ETH_P_IPV4;
    let family_any = if is_v4 { ANY_V4 } else { ANY };
    let candidates: &[[u8; 16]] = if is_v4 {
        &[dst, family_any, ANY]
    } else {
        &[dst, family_any]
    };
    let exact_is_wildcard = dst == ANY || dst == ANY_V4;
    let info = candidates
        .iter()
        .skip(usize::from(exact_is_wildcard))
        .find_map(|addr| tables.listeners.get(&ListenerKey::new(*addr, port, proto)))
        .ok_or(not_ours)?;

    let listed = tables.acl.iter().any(|(id, prefix)| {
        *id == info.id
            && match (prefix, &src) {
                (AclPrefix::V4(net, len), Src::V4(a)) => prefix_matches(net, *len, a),
                (AclPrefix::V6(net, len), Src::V6(a)) => prefix_matches(net, *len, a),
                _ => false,
            }
    });
    let outcome = match info.acl {
        acl::ALLOW if !listed => Outcome::DroppedAcl,
        acl::DENY if listed => Outcome::DroppedAcl,
        _ => Outcome::Passed,
    };
    let group = info.l4_group;
    let backend = if outcome == Outcome::Passed && group < MAX_L4_GROUPS {
        let client = match src {
            Src::V4(a) => v4_mapped(a),
            Src::V6(a) => a,
        };
        tables
            .rings
            .get(&group)
            .and_then(|ring| ring_pick(ring, &client))
            .map(|backend| BackendPick { group, backend })
    } else {
        None
    };
    Ok(Decision {
        outcome,
        slot: info.id,
        backend,
    })
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
        let t = tables(acl::ALLOW, &[AclPrefix::V4([192, 168, 1, 0], 24)]);
        let ok = classify(&tcp_v4([192, 168, 1, 9], [10, 0, 0, 1], 443), &t);
        assert_eq!(
            ok,
            Decision {
                outcome: Outcome::Passed,
                slot: 7,
                backend: None,
            }
        );
        let bad = classify(&tcp_v4([192, 168, 2, 9], [10, 0, 0, 1], 443), &t);
        assert_eq!(
            bad,
            Decision {
                outcome: Outcome::DroppedAcl,
                slot: 7,
                backend: None,
            }
        );
        let other_port = classify(&tcp_v4([192, 168, 2, 9], [10, 0, 0, 1], 80), &t);
        assert_eq!(other_port, Decision::global(Outcome::NotOurs));
    }

    #[test]
    fn blacklist_drops_listed_sources_only() {
        let t = tables(acl::DENY, &[AclPrefix::V4([192, 168, 1, 128], 25)]);
        let d = classify(&tcp_v4([192, 168, 1, 200], [10, 0, 0, 1], 443), &t);
        assert_eq!(d.outcome, Outcome::DroppedAcl);
        let d = classify(&tcp_v4([192, 168, 1, 127], [10, 0, 0, 1], 443), &t);
        assert_eq!(d.outcome, Outcome::Passed);
    }

    #[test]
    fn l4_listeners_pick_from_their_group_ring_when_admitted() {
        let mut t = tables(acl::DENY, &[AclPrefix::V4([192, 168, 1, 0], 24)]);
        let key = ListenerKey::new(v4_mapped([10, 0, 0, 1]), 443, IPPROTO_TCP);
        let src = [172, 16, 0, 9];
        let slot = maglev::table_slot(maglev::source_hash(&v4_mapped(src))) as usize;
        let mut ring = std::vec![maglev::NO_BACKEND; maglev::TABLE_SIZE as usize];
        ring[slot] = 3;
        t.rings.insert(2, ring.clone());
        let frame = tcp_v4(src, [10, 0, 0, 1], 443);
        // Not an L4 listener: no pick.
        assert_eq!(classify(&frame, &t).backend, None);

        t.listeners.get_mut(&key).expect("listener 7").l4_group = 2;
        let d = classify(&frame, &t);
        assert_eq!(d.outcome, Outcome::Passed);
        assert_eq!(
            d.backend,
            Some(BackendPick {
                group: 2,
                backend: 3
            })
        );
        // Refused sources are never assigned.
        let refused = classify(&tcp_v4([192, 168, 1, 1], [10, 0, 0, 1], 443), &t);
        assert_eq!(
            (refused.outcome, refused.backend),
            (Outcome::DroppedAcl, None)
        );
        // NO_BACKEND, indices the kernel cannot count, and groups without a ring pick none.
        for entry in [maglev::NO_BACKEND, MAX_BACKENDS_PER_GROUP] {
            ring[slot] = entry;
            t.rings.insert(2, ring.clone());
            assert_eq!(classify(&frame, &t).backend, None);
        }
        t.rings.clear();
        assert_eq!(classify(&frame, &t).backend, None);
        // Group ids past the end are no group.
        t.rings
            .insert(MAX_L4_GROUPS, std::vec![0; maglev::TABLE_SIZE as usize]);
        t.listeners.get_mut(&key).expect("listener 7").l4_group = MAX_L4_GROUPS;
        assert_eq!(classify(&frame, &t).backend, None);
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
        let t = tables(acl::ALLOW, &[]);
        let full = tcp_v4([1, 1, 1, 1], [10, 0, 0, 1], 443);
        for len in 0..14 {
            assert_eq!(classify(&full[..len], &t).outcome, Outcome::Unparsable);
        }
        let mut arp = full.clone();
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(classify(&arp, &t).outcome, Outcome::NotOurs);
    }
}
