//! Sources the XDP program has blocked (`--auto-block`): read for `/status` and `/metrics`,
//! removed by `POST /unblock`, forgotten when their listener id changes hands. The program
//! writes the entries; the daemon only reads and deletes them.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use aya::maps::{HashMap, MapData};
use lb_common::{
    MAP_BLOCKED, MAP_SOURCES, NS_PER_SEC, SourceKey, SourceState, v4_mapped, v4_unmapped,
};

use super::{Dataplane, DataplaneError, ListenerRule, map_err, missing};

/// One blocked source at one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedSource {
    pub listener_id: u32,
    /// An IPv4 address, or the start of an IPv6 /64.
    pub source: IpAddr,
    /// Whole seconds the block has left (at least 1).
    pub secs_left: u64,
}

impl BlockedSource {
    /// The source as operators write it: `10.0.0.7/32`, `fd00:1::/64`.
    pub fn prefix(&self) -> String {
        match self.source {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/64"),
        }
    }
}

/// The program's clock, `bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE.
fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * NS_PER_SEC + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn source_of(key: &SourceKey) -> IpAddr {
    match v4_unmapped(&key.src) {
        Some(v4) => IpAddr::from(v4),
        None => IpAddr::V6(Ipv6Addr::from(key.src)),
    }
}

impl Dataplane {
    /// The sources blocked now, by listener and address (none without a listener that blocks;
    /// expired entries stay until the table forgets them).
    pub fn blocked(&self) -> Result<Vec<BlockedSource>, DataplaneError> {
        if !self.applied.0.iter().any(|r| r.limits.block_secs != 0) {
            return Ok(Vec::new());
        }
        let now = now_ns();
        let map = self
            .ebpf
            .map(MAP_BLOCKED)
            .ok_or_else(|| missing(MAP_BLOCKED))?;
        let map: HashMap<&MapData, SourceKey, u64> =
            HashMap::try_from(map).map_err(map_err(MAP_BLOCKED))?;
        let mut out: Vec<BlockedSource> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, until)| *until > now)
            .map(|(key, until)| BlockedSource {
                listener_id: key.listener_id,
                source: source_of(&key),
                secs_left: (until - now).div_ceil(NS_PER_SEC),
            })
            .collect();
        // A walk over an LRU table the program is changing may see a key twice.
        out.sort_by_key(|b| (b.listener_id, b.source));
        out.dedup_by_key(|b| (b.listener_id, b.source));
        Ok(out)
    }

    /// Lifts the blocks of `addr` (its /64 for IPv6) at every listener; returns how many were
    /// in force.
    pub fn unblock(&mut self, addr: IpAddr) -> Result<usize, DataplaneError> {
        // An IPv4-mapped IPv6 address is already the key's form of its IPv4 address.
        let src = match addr {
            IpAddr::V4(a) => v4_mapped(a.octets()),
            IpAddr::V6(a) => a.octets(),
        };
        let ids: Vec<u32> = self.applied.0.iter().map(|r| r.id).collect();
        let now = now_ns();
        let map = self
            .ebpf
            .map_mut(MAP_BLOCKED)
            .ok_or_else(|| missing(MAP_BLOCKED))?;
        let mut map: HashMap<&mut MapData, SourceKey, u64> =
            HashMap::try_from(map).map_err(map_err(MAP_BLOCKED))?;
        let mut lifted = 0;
        for id in ids {
            let key = SourceKey::new(&src, id);
            if let Ok(until) = map.get(&key, 0) {
                lifted += usize::from(until > now);
                // Gone already (expired and forgotten): nothing to lift.
                let _ = map.remove(&key);
            }
        }
        Ok(lifted)
    }

    /// Forgets the sources' state and blocks at listeners `ids`: a listener id given to
    /// another listener, or a listener that no longer blocks, must not inherit them.
    pub(super) fn forget_sources(&mut self, ids: &BTreeSet<u32>) -> Result<(), DataplaneError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.forget_in::<u64>(MAP_BLOCKED, ids)?;
        self.forget_in::<SourceState>(MAP_SOURCES, ids)
    }

    fn forget_in<V: aya::Pod>(
        &mut self,
        name: &'static str,
        ids: &BTreeSet<u32>,
    ) -> Result<(), DataplaneError> {
        let map = self.ebpf.map_mut(name).ok_or_else(|| missing(name))?;
        let mut map: HashMap<&mut MapData, SourceKey, V> =
            HashMap::try_from(map).map_err(map_err(name))?;
        let stale: Vec<SourceKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| ids.contains(&k.listener_id))
            .collect();
        for key in &stale {
            // Gone already: forgotten by the table.
            let _ = map.remove(key);
        }
        Ok(())
    }
}

/// Listener ids whose per-source state must go when `new` replaces `old`: ids now naming
/// another listener (or none), and listeners that stopped blocking. One listener may have
/// several entries under its id (TCP and UDP with HTTP/3): it is the same listener while any
/// entry it keeps is at an address and protocol it had.
pub(super) fn stale_source_ids(old: &[ListenerRule], new: &[ListenerRule]) -> BTreeSet<u32> {
    let ids: BTreeSet<u32> = old.iter().map(|o| o.id).collect();
    ids.into_iter()
        .filter(|&id| {
            let was: Vec<&ListenerRule> = old.iter().filter(|o| o.id == id).collect();
            let now: Vec<&ListenerRule> = new.iter().filter(|n| n.id == id).collect();
            let same_listener = now.iter().any(|n| was.iter().any(|o| o.key() == n.key()));
            let blocked = |rules: &[&ListenerRule]| rules.iter().any(|r| r.limits.block_secs != 0);
            !same_listener || (blocked(&was) && !blocked(&now))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::AclMode;
    use crate::dataplane::SourceLimits;

    fn rule(id: u32, addr: &str, proto: u8, block_secs: u32) -> ListenerRule {
        ListenerRule {
            id,
            addr: addr.parse().expect("test address"),
            proto,
            mode: AclMode::All,
            prefixes: Vec::new(),
            limits: SourceLimits {
                syn_per_sec: 0,
                pps: 10,
                block_secs,
            },
            syn_cookies: Default::default(),
        }
    }

    #[test]
    fn a_listener_on_tcp_and_udp_keeps_its_state_while_it_keeps_an_entry() {
        const TCP: u8 = 6;
        const UDP: u8 = 17;
        let both = [
            rule(1, "10.0.0.1:443", TCP, 60),
            rule(1, "10.0.0.1:443", UDP, 60),
        ];
        assert!(stale_source_ids(&both, &both).is_empty());
        // HTTP/3 turned off: the TCP listener goes on as itself.
        assert!(stale_source_ids(&both, &both[..1]).is_empty());
        assert!(stale_source_ids(&both[..1], &both).is_empty());
        // Moved to another port, or the id given to another listener: forgotten.
        let moved = [
            rule(1, "10.0.0.1:8443", TCP, 60),
            rule(1, "10.0.0.1:8443", UDP, 60),
        ];
        assert_eq!(stale_source_ids(&both, &moved), BTreeSet::from([1]));
        assert_eq!(stale_source_ids(&both, &[]), BTreeSet::from([1]));
        // Blocking turned off: its blocks are lifted.
        let unblocking = [
            rule(1, "10.0.0.1:443", TCP, 0),
            rule(1, "10.0.0.1:443", UDP, 0),
        ];
        assert_eq!(stale_source_ids(&both, &unblocking), BTreeSet::from([1]));
        // Another listener's change does not touch this one.
        let other = [rule(2, "10.0.0.2:443", TCP, 60)];
        let with_other: Vec<ListenerRule> = both.iter().chain(&other).cloned().collect();
        assert_eq!(stale_source_ids(&with_other, &both), BTreeSet::from([2]));
    }
}
