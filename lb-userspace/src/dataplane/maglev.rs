//! Checks of what goes into the `MAGLEV` rings, and the per-backend counters of what the
//! program assigned (writing rings and backends: `backends`).
//!
//! The array holds rings in chunks of [`lb_common::MAGLEV_CHUNK`] entries, so writing one takes 257
//! system calls (well under a millisecond) rather than one per entry (about 75 ms).
use aya::maps::{MapData, PerCpuArray};
use lb_common::maglev::{NO_BACKEND, TABLE_SIZE};
use lb_common::{
    BackendCounters, MAP_BACKEND_STATS, MAX_BACKENDS_PER_GROUP, MAX_L4_GROUPS, backend_stats_slot,
};

use super::{Dataplane, DataplaneError, map_err, missing};

/// Checks that `group` is one the kernel holds a ring for.
pub(super) fn check_group(group: u32) -> Result<(), DataplaneError> {
    if group < MAX_L4_GROUPS {
        Ok(())
    } else {
        Err(DataplaneError::Group(group))
    }
}

/// The `BACKEND_STATS` slot of backend `backend` of `group`, if both are in range.
pub(super) fn backend_index(group: u32, backend: u32) -> Result<u32, DataplaneError> {
    check_group(group)?;
    if backend >= MAX_BACKENDS_PER_GROUP {
        return Err(DataplaneError::Backend(backend));
    }
    Ok(backend_stats_slot(group, backend))
}

/// Checks that `table` is a ring the kernel can read: [`TABLE_SIZE`] entries, each a backend
/// index it can count or [`NO_BACKEND`].
pub(super) fn check_ring(table: &[u32]) -> Result<(), DataplaneError> {
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
    /// What the program assigned to backend `backend` of `group`, summed over CPUs.
    pub fn backend_counters(
        &self,
        group: u32,
        backend: u32,
    ) -> Result<BackendCounters, DataplaneError> {
        let slot = backend_index(group, backend)?;
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
