//! Where L4 listeners' frames go: each group's backends (address, next-hop MAC, health) in
//! `BACKENDS` and its Maglev ring in `MAGLEV`, published together; and the prefixes of outer
//! source addresses (`ENCAP`).
//!
//! Both maps hold two halves per group. A new state is written whole into the half the program
//! is not reading, then the group's `MAGLEV_GEN` entry is bumped to the next generation, whose
//! parity names that half: a packet reads the generation first, then ring and backend entries
//! of the half it names, so it sees the old state or the new one, never a mix and never an
//! entry half copied. A half that has just stopped being live is rewritten only after
//! [`GRACE`], so a packet still reading it finishes first.
//!
//! A backend index's epoch changes whenever the index is given a different address, so that
//! flows the kernel remembers for the index's previous backend (`FLOWS` stores the epoch) are
//! re-picked rather than sent to whatever now sits there. Epochs come from one counter for
//! every index, so an epoch also names its group.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{Array, DevMapHash, MapData, MapError, PerCpuArray, PerCpuValues};
use lb_common::maglev::{NO_BACKEND, TABLE_SIZE};
use lb_common::{
    BackendCounters, BackendInfo, EncapConfig, MAGLEV_CHUNK, MAGLEV_CHUNKS_PER_RING,
    MAP_BACKEND_STATS, MAP_BACKENDS, MAP_EGRESS, MAP_ENCAP, MAP_MAGLEV, MAP_MAGLEV_GEN,
    MAX_BACKENDS_PER_GROUP, MAX_L4_GROUPS, MaglevChunk, backend_flags, backend_slot,
    backend_stats_slot, live_half, maglev_position, next_generation, v4_mapped,
};

use tracing::warn;

use super::maglev::{backend_index, check_group, check_ring};
use super::{Dataplane, DataplaneError, map_err, missing};

/// How long a half that stopped being live stays untouched. An XDP program run lasts
/// microseconds; this is the bound on how long one can still be reading the old half.
pub const GRACE: Duration = Duration::from_millis(10);

/// One backend of a group, as [`Dataplane::set_backends`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    /// The backend's address: the outer destination, whose family is the outer header's.
    pub addr: IpAddr,
    /// MAC of the next hop towards `addr` on the `egress` interface; all zero while
    /// unresolved (the backend then takes no frames).
    pub mac: [u8; 6],
    /// Whether the backend takes frames (its ring weight may still be non-zero).
    pub alive: bool,
    /// The interface the route towards `addr` leaves by.
    pub egress: Egress,
}

/// An interface frames to a backend leave by. The default (index 0) is the interface each
/// frame came in on; another is where frames that came in elsewhere are redirected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Egress {
    pub ifindex: u32,
    /// The interface's own MAC, the source of the frames redirected to it.
    pub mac: [u8; 6],
}

/// One half of a group as last written.
#[derive(Clone, Default)]
struct Half {
    /// `BACKENDS` entries by backend index (absent: zero).
    backends: HashMap<u32, BackendInfo>,
    /// The ring, None until one is written.
    ring: Option<Arc<Vec<u32>>>,
    /// What the backends were made from (index = backend index).
    entries: Arc<Vec<Option<BackendEntry>>>,
    /// When it last stopped being live.
    left_live: Option<Instant>,
}

#[derive(Clone, Default)]
struct Group {
    /// `MAGLEV_GEN` as last written (the array starts zeroed): 0 means no state published.
    generation: u32,
    halves: [Half; 2],
}

impl Group {
    /// The half a new state goes to.
    fn next_half(&self) -> usize {
        live_half(next_generation(self.generation)).unwrap_or(0) as usize
    }

    /// The half that holds the group's current state: the live one, or before the first
    /// publication the one being filled.
    fn current_half(&self) -> usize {
        live_half(self.generation).map_or(self.next_half(), |h| h as usize)
    }

    fn current(&self) -> &Half {
        &self.halves[self.current_half()]
    }
}

/// The L4 groups' halves as last written, and the epochs handed out.
pub(super) struct Groups {
    groups: Vec<Group>,
    /// By [`backend_stats_slot`]: the address an index holds and its epoch.
    epochs: HashMap<u32, ([u8; 16], u32)>,
    last_epoch: u32,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            groups: vec![Group::default(); MAX_L4_GROUPS as usize],
            epochs: HashMap::new(),
            last_epoch: 0,
        }
    }
}

impl Groups {
    pub(super) fn generation(&self, group: u32) -> u32 {
        self.groups[group as usize].generation
    }

    /// Whether `group` is published with exactly these entries and this ring.
    pub(super) fn is_live(
        &self,
        group: u32,
        entries: &[Option<BackendEntry>],
        ring: Option<&Vec<u32>>,
    ) -> bool {
        let g = &self.groups[group as usize];
        let Some(half) = live_half(g.generation) else {
            return false;
        };
        let live = &g.halves[half as usize];
        *live.entries == entries && live.ring.as_deref() == ring
    }

    /// The value for backend index `slot` (a stats slot) holding `entry`, and whether the index
    /// changed hands (a new epoch).
    fn info(&mut self, slot: u32, entry: &BackendEntry) -> (BackendInfo, bool) {
        let (addr, v6) = match entry.addr {
            IpAddr::V4(v4) => (v4_mapped(v4.octets()), false),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // An IPv4-mapped backend is an IPv4 backend: the outer header follows the
                // address the packets really go to.
                Some(v4) => (v4_mapped(v4.octets()), false),
                None => (v6.octets(), true),
            },
        };
        let (epoch, fresh) = match self.epochs.get(&slot) {
            Some((old, epoch)) if *old == addr => (*epoch, false),
            _ => {
                self.last_epoch = self.last_epoch.checked_add(1).unwrap_or(1);
                self.epochs.insert(slot, (addr, self.last_epoch));
                (self.last_epoch, true)
            }
        };
        let mut flags = 0;
        if entry.alive {
            flags |= backend_flags::ALIVE;
        }
        if v6 {
            flags |= backend_flags::IPV6;
        }
        let info = BackendInfo {
            addr,
            next_hop_mac: entry.mac,
            flags,
            epoch,
            ifindex: entry.egress.ifindex,
            egress_mac: entry.egress.mac,
            _pad: [0; 2],
        };
        (info, fresh)
    }
}

impl Dataplane {
    /// Makes `backends` the backends of `group`: entry `i` is backend `i` of the group's ring;
    /// the rest are cleared. Published at once with the group's current ring (if it has one
    /// yet); a backend whose address changes gets a new epoch, so flows remembered for its
    /// index move.
    pub fn set_backends(
        &mut self,
        group: u32,
        backends: &[BackendEntry],
    ) -> Result<(), DataplaneError> {
        check_group(group)?;
        let entries = Arc::new(backends.iter().copied().map(Some).collect());
        let ring = self.backends.groups[group as usize].current().ring.clone();
        let next = self.stage_group(group, entries, ring)?;
        self.publish_group(group, next)
    }

    /// Makes `table` (a ring from `lb_common::maglev::build_table`: [`TABLE_SIZE`] backend
    /// indices below [`MAX_BACKENDS_PER_GROUP`], or [`NO_BACKEND`]) the live ring of `group`,
    /// with the group's current backends. Packets in flight see the old state or the new one,
    /// never a mix. On an error the live state is unchanged.
    pub fn set_ring(&mut self, group: u32, table: &[u32]) -> Result<(), DataplaneError> {
        check_group(group)?;
        check_ring(table)?;
        let entries = self.backends.groups[group as usize]
            .current()
            .entries
            .clone();
        let next = self.stage_group(group, entries, Some(Arc::new(table.to_vec())))?;
        self.publish_group(group, next)
    }

    /// Writes a state of `group` into the half the program is not reading: `entries` by backend
    /// index (None: no backend there) and the ring. Nothing the program reads changes; returns
    /// the generation that [`Dataplane::publish_group`] makes live.
    pub(super) fn stage_group(
        &mut self,
        group: u32,
        entries: Arc<Vec<Option<BackendEntry>>>,
        ring: Option<Arc<Vec<u32>>>,
    ) -> Result<u32, DataplaneError> {
        check_group(group)?;
        if entries.len() > MAX_BACKENDS_PER_GROUP as usize {
            return Err(DataplaneError::TooManyBackends(entries.len()));
        }
        if let Some(ring) = &ring {
            check_ring(ring)?;
        }
        let g = &self.backends.groups[group as usize];
        let next = next_generation(g.generation);
        let half = g.next_half();
        if let Some(left) = g.halves[half].left_live {
            let since = left.elapsed();
            if since < GRACE {
                std::thread::sleep(GRACE - since);
            }
        }

        let mut renamed = Vec::new();
        let mut wanted = Vec::new();
        for index in 0..MAX_BACKENDS_PER_GROUP {
            let value = match entries.get(index as usize).copied().flatten() {
                Some(entry) => {
                    let (info, fresh) =
                        self.backends.info(backend_stats_slot(group, index), &entry);
                    if fresh {
                        renamed.push(index);
                    }
                    info
                }
                None => BackendInfo::default(),
            };
            wanted.push(value);
        }
        // An index given to another backend starts counting from zero.
        for index in renamed {
            self.zero_backend_counters(backend_stats_slot(group, index))?;
        }
        // Before any entry names them: a frame finding none in `EGRESS` is dropped.
        self.add_egress(wanted.iter().map(|b| b.ifindex))?;
        let mut map: Array<&mut MapData, BackendInfo> = Array::try_from(
            self.ebpf
                .map_mut(MAP_BACKENDS)
                .ok_or_else(|| missing(MAP_BACKENDS))?,
        )
        .map_err(map_err(MAP_BACKENDS))?;
        let written = &mut self.backends.groups[group as usize].halves[half];
        for (index, value) in (0u32..).zip(wanted) {
            let old = written.backends.get(&index).copied().unwrap_or_default();
            if old == value {
                continue;
            }
            map.set(backend_slot(group, half as u32, index), value, 0)
                .map_err(map_err(MAP_BACKENDS))?;
            if value == BackendInfo::default() {
                written.backends.remove(&index);
            } else {
                written.backends.insert(index, value);
            }
        }
        written.entries = entries;

        if let Some(ring) = ring {
            let same = written.ring.as_ref().is_some_and(|r| **r == *ring);
            if !same {
                let known = written.ring.take();
                let mut chunks: Array<&mut MapData, MaglevChunk> = Array::try_from(
                    self.ebpf
                        .map_mut(MAP_MAGLEV)
                        .ok_or_else(|| missing(MAP_MAGLEV))?,
                )
                .map_err(map_err(MAP_MAGLEV))?;
                let (base, _) = maglev_position(group, half as u32, 0);
                let size = MAGLEV_CHUNK as usize;
                for (i, entries) in (0..).zip(ring.chunks(size)) {
                    let unchanged = known.as_ref().is_some_and(|k| {
                        k.get(i as usize * size..)
                            .is_some_and(|k| k.starts_with(entries))
                    });
                    if unchanged {
                        continue;
                    }
                    // The last chunk runs past the ring's end; those entries are never read.
                    let mut chunk = MaglevChunk {
                        backends: [NO_BACKEND; MAGLEV_CHUNK as usize],
                    };
                    chunk.backends[..entries.len()].copy_from_slice(entries);
                    chunks
                        .set(base + i, chunk, 0)
                        .map_err(map_err(MAP_MAGLEV))?;
                }
                self.backends.groups[group as usize].halves[half].ring = Some(ring);
            }
        }
        self.remove_unused_egress()?;
        Ok(next)
    }

    /// Makes generation `next` (from [`Dataplane::stage_group`]) the live state of `group`,
    /// with one 4-byte store. A half without a ring is not published: the group then picks no
    /// backend until it has one.
    pub(super) fn publish_group(&mut self, group: u32, next: u32) -> Result<(), DataplaneError> {
        let g = &self.backends.groups[group as usize];
        let Some(half) = live_half(next) else {
            return Ok(());
        };
        if g.halves[half as usize].ring.is_none() {
            return Ok(());
        }
        self.set_generation(group, next)
    }

    /// Writes `MAGLEV_GEN` for `group`: publishes a staged state, or (rolling back) makes the
    /// previous one live again.
    pub(super) fn set_generation(
        &mut self,
        group: u32,
        generation: u32,
    ) -> Result<(), DataplaneError> {
        let mut generations: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(MAP_MAGLEV_GEN)
                .ok_or_else(|| missing(MAP_MAGLEV_GEN))?,
        )
        .map_err(map_err(MAP_MAGLEV_GEN))?;
        generations
            .set(group, generation, 0)
            .map_err(map_err(MAP_MAGLEV_GEN))?;
        let g = &mut self.backends.groups[group as usize];
        if let Some(old) = live_half(g.generation) {
            g.halves[old as usize].left_live = Some(Instant::now());
        }
        g.generation = generation;
        Ok(())
    }

    /// Puts the interfaces `ifindexes` (0: none) into `EGRESS` where the kernel does not hold
    /// them: it removes a device's entries itself when the device goes, and a device made
    /// again may come back under the same index. An interface that cannot be put there (gone
    /// since its route was read) is logged; its backends' frames are dropped (`no_backend`)
    /// until the next hops are read again, and the other backends are written as usual.
    fn add_egress(&mut self, ifindexes: impl Iterator<Item = u32>) -> Result<(), DataplaneError> {
        let wanted: HashSet<u32> = ifindexes.filter(|i| *i != 0).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut map = egress_map(&mut self.ebpf)?;
        for ifindex in wanted {
            if map.get(ifindex, 0).is_ok() {
                continue;
            }
            if let Err(e) = map.insert(ifindex, ifindex, None, 0) {
                warn!(
                    ifindex,
                    error = %e,
                    "cannot redirect L4 frames to this interface: its backends take none"
                );
            }
        }
        Ok(())
    }

    /// Takes out of `EGRESS` the interfaces no half of any group names any more (what it
    /// holds is read from the kernel, which also removes a gone device's entries itself). A
    /// half that stopped being live is only rewritten after [`GRACE`], so no frame can be
    /// reading one. A removal that fails leaves a harmless entry, tried again next time.
    fn remove_unused_egress(&mut self) -> Result<(), DataplaneError> {
        let used: HashSet<u32> = self
            .backends
            .groups
            .iter()
            .flat_map(|g| &g.halves)
            .flat_map(|h| h.backends.values())
            .map(|b| b.ifindex)
            .collect();
        let unused: Vec<u32> = self
            .egress_interfaces()?
            .into_iter()
            .filter(|i| !used.contains(i))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let mut map = egress_map(&mut self.ebpf)?;
        for ifindex in unused {
            match map.remove(ifindex) {
                Ok(()) => {}
                // Gone with its device meanwhile.
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => warn!(ifindex, error = %e, "removing an interface from EGRESS"),
            }
        }
        Ok(())
    }

    /// The interfaces in `EGRESS`, read back from the kernel.
    pub fn egress_interfaces(&self) -> Result<Vec<u32>, DataplaneError> {
        let map: DevMapHash<&MapData> = DevMapHash::try_from(
            self.ebpf
                .map(MAP_EGRESS)
                .ok_or_else(|| missing(MAP_EGRESS))?,
        )
        .map_err(map_err(MAP_EGRESS))?;
        let mut out = map
            .keys()
            .collect::<Result<Vec<u32>, _>>()
            .map_err(map_err(MAP_EGRESS))?;
        out.sort_unstable();
        Ok(out)
    }

    fn zero_backend_counters(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let mut stats: PerCpuArray<&mut MapData, BackendCounters> = PerCpuArray::try_from(
            self.ebpf
                .map_mut(MAP_BACKEND_STATS)
                .ok_or_else(|| missing(MAP_BACKEND_STATS))?,
        )
        .map_err(map_err(MAP_BACKEND_STATS))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Map {
            map: MAP_BACKEND_STATS,
            reason: format!("counting CPUs: {e}"),
        })?;
        let zero = PerCpuValues::try_from(vec![BackendCounters::default(); cpus]).map_err(|e| {
            DataplaneError::Map {
                map: MAP_BACKEND_STATS,
                reason: e.to_string(),
            }
        })?;
        stats.set(slot, zero, 0).map_err(map_err(MAP_BACKEND_STATS))
    }

    /// Backend `backend` of `group` as the kernel reads it from the live half of `BACKENDS`
    /// (before the first publication, the half being filled).
    pub fn backend(&self, group: u32, backend: u32) -> Result<BackendInfo, DataplaneError> {
        backend_index(group, backend)?;
        let half = self.backends.groups[group as usize].current_half() as u32;
        let map: Array<&MapData, BackendInfo> = Array::try_from(
            self.ebpf
                .map(MAP_BACKENDS)
                .ok_or_else(|| missing(MAP_BACKENDS))?,
        )
        .map_err(map_err(MAP_BACKENDS))?;
        map.get(&backend_slot(group, half, backend), 0)
            .map_err(map_err(MAP_BACKENDS))
    }

    /// The live ring of `group`, read back from the kernel's map.
    pub fn ring(&self, group: u32) -> Result<Vec<u32>, DataplaneError> {
        check_group(group)?;
        let half =
            live_half(self.backends.generation(group)).ok_or(DataplaneError::NoRing(group))?;
        let ring: Array<&MapData, MaglevChunk> = Array::try_from(
            self.ebpf
                .map(MAP_MAGLEV)
                .ok_or_else(|| missing(MAP_MAGLEV))?,
        )
        .map_err(map_err(MAP_MAGLEV))?;
        let (base, _) = maglev_position(group, half, 0);
        let mut out = Vec::with_capacity((MAGLEV_CHUNKS_PER_RING * MAGLEV_CHUNK) as usize);
        for i in base..base + MAGLEV_CHUNKS_PER_RING {
            let chunk = ring.get(&i, 0).map_err(map_err(MAP_MAGLEV))?;
            out.extend_from_slice(&chunk.backends);
        }
        out.truncate(TABLE_SIZE as usize);
        Ok(out)
    }

    /// The generation of `group`'s live state as the kernel reads it from `MAGLEV_GEN`: 0
    /// before the first publication, then one more per state published.
    pub fn ring_generation(&self, group: u32) -> Result<u32, DataplaneError> {
        check_group(group)?;
        let generations: Array<&MapData, u32> = Array::try_from(
            self.ebpf
                .map(MAP_MAGLEV_GEN)
                .ok_or_else(|| missing(MAP_MAGLEV_GEN))?,
        )
        .map_err(map_err(MAP_MAGLEV_GEN))?;
        generations.get(&group, 0).map_err(map_err(MAP_MAGLEV_GEN))
    }

    /// Sets the prefixes outer source addresses are made in: `v4` is the /16 (first two
    /// bytes), `v6` the /96 (first twelve); the rest of each address comes from a hash of the
    /// client's address and port.
    pub fn set_encap_source(&mut self, v4: [u8; 2], v6: [u8; 12]) -> Result<(), DataplaneError> {
        let mut map: Array<&mut MapData, EncapConfig> = Array::try_from(
            self.ebpf
                .map_mut(MAP_ENCAP)
                .ok_or_else(|| missing(MAP_ENCAP))?,
        )
        .map_err(map_err(MAP_ENCAP))?;
        let config = EncapConfig {
            v4_prefix: v4,
            _pad: [0; 2],
            v6_prefix: v6,
        };
        map.set(0, config, 0).map_err(map_err(MAP_ENCAP))
    }

    /// The `ENCAP` entry as the kernel reads it.
    pub fn encap_source(&self) -> Result<EncapConfig, DataplaneError> {
        let map: Array<&MapData, EncapConfig> =
            Array::try_from(self.ebpf.map(MAP_ENCAP).ok_or_else(|| missing(MAP_ENCAP))?)
                .map_err(map_err(MAP_ENCAP))?;
        map.get(&0, 0).map_err(map_err(MAP_ENCAP))
    }
}

fn egress_map(ebpf: &mut aya::Ebpf) -> Result<DevMapHash<&mut MapData>, DataplaneError> {
    DevMapHash::try_from(
        ebpf.map_mut(MAP_EGRESS)
            .ok_or_else(|| missing(MAP_EGRESS))?,
    )
    .map_err(map_err(MAP_EGRESS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str) -> BackendEntry {
        BackendEntry {
            addr: addr.parse().expect("test address"),
            mac: [2, 0, 0, 0, 0, 1],
            alive: true,
            egress: Default::default(),
        }
    }

    #[test]
    fn epochs_change_with_the_address_only() {
        let mut w = Groups::default();
        let (a, fresh) = w.info(3, &entry("10.0.0.1"));
        assert!(fresh);
        assert_eq!(a.addr, v4_mapped([10, 0, 0, 1]));
        assert_eq!(a.flags, backend_flags::ALIVE);
        let (dead, fresh) = w.info(
            3,
            &BackendEntry {
                alive: false,
                ..entry("10.0.0.1")
            },
        );
        assert!(!fresh);
        assert_eq!((dead.epoch, dead.flags), (a.epoch, 0));
        let (moved, fresh) = w.info(3, &entry("10.0.0.2"));
        assert!(fresh && moved.epoch != a.epoch);
        let (other_slot, _) = w.info(4, &entry("10.0.0.1"));
        assert!(other_slot.epoch != a.epoch && other_slot.epoch != moved.epoch);
        let (v6, _) = w.info(5, &entry("fd00::1"));
        assert_eq!(v6.flags, backend_flags::ALIVE | backend_flags::IPV6);
        let (mapped, _) = w.info(6, &entry("::ffff:10.0.0.1"));
        assert_eq!((mapped.addr, mapped.flags), (a.addr, backend_flags::ALIVE));
    }
}
