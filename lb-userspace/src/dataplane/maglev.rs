//! Maglev rings in the kernel: each backend group's [`TABLE_SIZE`]-entry ring, double-buffered
//! in the `MAGLEV` array, and the per-backend counters of what the program assigned.
//!
//! The array holds rings in chunks of [`MAGLEV_CHUNK`] entries, so writing one takes 257
//! system calls (well under a millisecond) rather than one per entry (about 75 ms).
//!
//! A ring is written whole into the half the program is not reading, then the group's
//! `MAGLEV_GEN` entry is bumped to the next generation, whose parity names that half: a packet
//! reads the generation first and then one entry of the half it names, so it sees either the
//! old ring or the new one, never a mix. The program only reads the ring after one generation
//! has been published, and a half is rewritten only while it is not live.
use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::maglev::{NO_BACKEND, TABLE_SIZE};
use lb_common::{
    BackendCounters, MAGLEV_CHUNK, MAGLEV_CHUNKS_PER_RING, MAP_BACKEND_STATS, MAP_MAGLEV,
    MAP_MAGLEV_GEN, MAX_BACKENDS_PER_GROUP, MAX_L4_GROUPS, MaglevChunk, backend_stats_slot,
    live_half, maglev_position, next_generation,
};

use super::{Dataplane, DataplaneError, map_err};

/// `MAGLEV_GEN` as last written (the array starts zeroed, and the data plane is its only
/// writer): generation 0 means no ring yet.
pub(super) type Generations = [u32; MAX_L4_GROUPS as usize];

/// Checks that `group` is one the kernel holds a ring for.
pub(super) fn check_group(group: u32) -> Result<(), DataplaneError> {
    if group < MAX_L4_GROUPS {
        Ok(())
    } else {
        Err(DataplaneError::Group(group))
    }
}

/// The `BACKENDS`/`BACKEND_STATS` slot of backend `backend` of `group`, if both are in range.
pub(super) fn backend_slot(group: u32, backend: u32) -> Result<u32, DataplaneError> {
    check_group(group)?;
    if backend >= MAX_BACKENDS_PER_GROUP {
        return Err(DataplaneError::Backend(backend));
    }
    Ok(backend_stats_slot(group, backend))
}

/// Checks that `table` is a ring the kernel can read: [`TABLE_SIZE`] entries, each a backend
/// index it can count or [`NO_BACKEND`].
fn check_ring(table: &[u32]) -> Result<(), DataplaneError> {
    if table.len() != TABLE_SIZE as usize {
        return Err(DataplaneError::RingLength(table.len()));
    }
    match table
        .iter()
        .position(|e| *e >= MAX_BACKENDS_PER_GROUP && *e != NO_BACKEND)
    {
        Some(slot) => Err(DataplaneError::RingEntry {
            slot,
            entry: table[slot],
        }),
        None => Ok(()),
    }
}

impl Dataplane {
    /// Makes `table` (a ring from `lb_common::maglev::build_table`: [`TABLE_SIZE`] backend
    /// indices below [`MAX_BACKENDS_PER_GROUP`], or [`NO_BACKEND`]) the live ring of `group`.
    ///
    /// The ring goes into the half the program is not reading, then the group's generation
    /// flips to it; packets in flight see the old ring or the new one, never a mix. On an
    /// error the live ring is unchanged.
    pub fn set_ring(&mut self, group: u32, table: &[u32]) -> Result<(), DataplaneError> {
        check_group(group)?;
        check_ring(table)?;
        let generation = self.generations[group as usize];
        let next = next_generation(generation);
        let half = live_half(next).unwrap_or(0);
        let (base, _) = maglev_position(group, half, 0);

        let mut ring: Array<&mut MapData, MaglevChunk> = Array::try_from(
            self.ebpf
                .map_mut(MAP_MAGLEV)
                .ok_or_else(|| missing(MAP_MAGLEV))?,
        )
        .map_err(map_err(MAP_MAGLEV))?;
        for (i, entries) in (base..).zip(table.chunks(MAGLEV_CHUNK as usize)) {
            // The last chunk runs past the ring's end; those entries are never read.
            let mut chunk = MaglevChunk {
                backends: [NO_BACKEND; MAGLEV_CHUNK as usize],
            };
            chunk.backends[..entries.len()].copy_from_slice(entries);
            ring.set(i, chunk, 0).map_err(map_err(MAP_MAGLEV))?;
        }

        let mut generations: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(MAP_MAGLEV_GEN)
                .ok_or_else(|| missing(MAP_MAGLEV_GEN))?,
        )
        .map_err(map_err(MAP_MAGLEV_GEN))?;
        // The kernel copies the 4-byte value in one store: a packet reads the old generation
        // (the old ring, untouched) or the new one (the ring just written, complete).
        generations
            .set(group, next, 0)
            .map_err(map_err(MAP_MAGLEV_GEN))?;
        self.generations[group as usize] = next;
        Ok(())
    }

    /// The live ring of `group`, read back from the kernel's map.
    pub fn ring(&self, group: u32) -> Result<Vec<u32>, DataplaneError> {
        check_group(group)?;
        let half =
            live_half(self.generations[group as usize]).ok_or(DataplaneError::NoRing(group))?;
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

    /// The generation of `group`'s live ring as the kernel reads it from `MAGLEV_GEN`: 0 before
    /// the first [`Dataplane::set_ring`], then one more per ring written.
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

    /// What the program assigned to backend `backend` of `group`, summed over CPUs.
    pub fn backend_counters(
        &self,
        group: u32,
        backend: u32,
    ) -> Result<BackendCounters, DataplaneError> {
        let slot = backend_slot(group, backend)?;
        let stats: PerCpuArray<&MapData, BackendCounters> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_BACKEND_STATS)
                .ok_or_else(|| missing(MAP_BACKEND_STATS))?,
        )
        .map_err(map_err(MAP_BACKEND_STATS))?;
        let per_cpu = stats.get(&slot, 0).map_err(map_err(MAP_BACKEND_STATS))?;
        let mut sum = BackendCounters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Packets the program assigned to backend `backend` of `group`, summed over CPUs.
    pub fn backend_packets(&self, group: u32, backend: u32) -> Result<u64, DataplaneError> {
        Ok(self.backend_counters(group, backend)?.packets)
    }
}

fn missing(map: &'static str) -> DataplaneError {
    DataplaneError::Map {
        map,
        reason: "missing from the object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_checked_before_anything_is_written() {
        assert!(check_group(MAX_L4_GROUPS - 1).is_ok());
        assert!(matches!(
            check_group(MAX_L4_GROUPS),
            Err(DataplaneError::Group(g)) if g == MAX_L4_GROUPS
        ));
        let mut ring = vec![NO_BACKEND; TABLE_SIZE as usize];
        assert!(check_ring(&ring).is_ok());
        ring[7] = MAX_BACKENDS_PER_GROUP - 1;
        assert!(check_ring(&ring).is_ok());
        ring[9] = MAX_BACKENDS_PER_GROUP;
        assert!(matches!(
            check_ring(&ring),
            Err(DataplaneError::RingEntry { slot: 9, entry }) if entry == MAX_BACKENDS_PER_GROUP
        ));
        assert!(matches!(
            check_ring(&ring[1..]),
            Err(DataplaneError::RingLength(n)) if n == TABLE_SIZE as usize - 1
        ));
    }
}
