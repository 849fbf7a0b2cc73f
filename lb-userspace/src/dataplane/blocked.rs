//! Sources the XDP program has blocked (`--auto-block`): read for `/status` and `/metrics`,
//! removed by `POST /unblock`. The program writes the entries; the daemon only reads them and
//! deletes them.
use std::net::{IpAddr, Ipv6Addr};

use aya::maps::{HashMap, MapData};
use lb_common::{MAP_BLOCKED, SourceKey, v4_mapped, v4_unmapped};

use super::{Dataplane, DataplaneError, map_err, missing};

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
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn source_of(key: &SourceKey) -> IpAddr {
    match v4_unmapped(&key.src) {
        Some(v4) => IpAddr::from(v4),
        None => IpAddr::V6(Ipv6Addr::from(key.src)),
    }
}

impl Dataplane {
    /// The sources blocked now, by listener and address; expired entries are left for the
    /// table to forget.
    pub fn blocked(&self) -> Result<Vec<BlockedSource>, DataplaneError> {
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
                secs_left: (until - now).div_ceil(1_000_000_000),
            })
            .collect();
        out.sort_by_key(|b| (b.listener_id, b.source));
        Ok(out)
    }

    /// Lifts the blocks of `addr` (its /64 for IPv6) at every listener; returns how many.
    pub fn unblock(&mut self, addr: IpAddr) -> Result<usize, DataplaneError> {
        let src = match addr {
            IpAddr::V4(a) => v4_mapped(a.octets()),
            IpAddr::V6(a) => a
                .to_ipv4_mapped()
                .map_or(a.octets(), |v4| v4_mapped(v4.octets())),
        };
        let wanted = SourceKey::new(&src, 0).src;
        let map = self
            .ebpf
            .map_mut(MAP_BLOCKED)
            .ok_or_else(|| missing(MAP_BLOCKED))?;
        let mut map: HashMap<&mut MapData, SourceKey, u64> =
            HashMap::try_from(map).map_err(map_err(MAP_BLOCKED))?;
        let keys: Vec<SourceKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.src == wanted)
            .collect();
        for key in &keys {
            map.remove(key).map_err(map_err(MAP_BLOCKED))?;
        }
        Ok(keys.len())
    }
}
