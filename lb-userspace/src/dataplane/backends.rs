//! Where L4 listeners' frames go: each backend's address and next-hop MAC (`BACKENDS`), and the
//! prefixes of outer source addresses (`ENCAP`).
//!
//! A slot's epoch changes whenever the slot is given a different address, so that flows the
//! kernel remembers for the slot's previous backend (`FLOWS` stores the epoch) are re-picked
//! rather than sent to whatever now sits in the slot. Epochs come from one counter for every
//! slot, so an epoch also names its group.
use std::collections::HashMap;
use std::net::IpAddr;

use aya::maps::{Array, MapData};
use lb_common::{
    BackendInfo, EncapConfig, MAP_BACKENDS, MAP_ENCAP, MAX_BACKENDS_PER_GROUP, backend_flags,
    backend_stats_slot, v4_mapped,
};

use super::{Dataplane, DataplaneError, maglev::backend_slot, maglev::check_group, map_err};

/// One backend of a group, as [`Dataplane::set_backends`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    /// The backend's address: the outer destination, whose family is the outer header's.
    pub addr: IpAddr,
    /// MAC of the next hop towards `addr` on the interface the program is attached to; all
    /// zero while unresolved (the backend then takes no frames).
    pub mac: [u8; 6],
    /// Whether the backend takes frames (its ring weight may still be non-zero).
    pub alive: bool,
}

/// `BACKENDS` as last written, by slot, and the last epoch handed out.
#[derive(Default)]
pub(super) struct Written {
    slots: HashMap<u32, BackendInfo>,
    epoch: u32,
}

impl Written {
    /// The value for `slot` holding `entry`: the slot's epoch kept while its address is the
    /// same, a new one otherwise.
    fn info(&mut self, slot: u32, entry: &BackendEntry) -> BackendInfo {
        let (addr, v6) = match entry.addr {
            IpAddr::V4(v4) => (v4_mapped(v4.octets()), false),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // An IPv4-mapped backend is an IPv4 backend: the outer header follows the
                // address the packets really go to.
                Some(v4) => (v4_mapped(v4.octets()), false),
                None => (v6.octets(), true),
            },
        };
        let epoch = match self.slots.get(&slot) {
            Some(old) if old.addr == addr && old.epoch != 0 => old.epoch,
            _ => {
                self.epoch = self.epoch.checked_add(1).unwrap_or(1);
                self.epoch
            }
        };
        let mut flags = 0;
        if entry.alive {
            flags |= backend_flags::ALIVE;
        }
        if v6 {
            flags |= backend_flags::IPV6;
        }
        BackendInfo {
            addr,
            next_hop_mac: entry.mac,
            flags,
            epoch,
        }
    }
}

impl Dataplane {
    /// Makes `backends` the backends of `group`: entry `i` is backend `i` of the group's ring.
    /// Slots past the end of the list are cleared. Only changed slots are written; a slot
    /// whose address changes gets a new epoch, so flows remembered for it move.
    pub fn set_backends(
        &mut self,
        group: u32,
        backends: &[BackendEntry],
    ) -> Result<(), DataplaneError> {
        check_group(group)?;
        if backends.len() > MAX_BACKENDS_PER_GROUP as usize {
            return Err(DataplaneError::TooManyBackends(backends.len()));
        }
        let mut map: Array<&mut MapData, BackendInfo> = Array::try_from(
            self.ebpf
                .map_mut(MAP_BACKENDS)
                .ok_or_else(|| missing(MAP_BACKENDS))?,
        )
        .map_err(map_err(MAP_BACKENDS))?;
        for index in 0..MAX_BACKENDS_PER_GROUP {
            let slot = backend_stats_slot(group, index);
            let value = match backends.get(index as usize) {
                Some(entry) => self.backends.info(slot, entry),
                None if self.backends.slots.contains_key(&slot) => BackendInfo::default(),
                None => continue,
            };
            if self.backends.slots.get(&slot) == Some(&value) {
                continue;
            }
            map.set(slot, value, 0).map_err(map_err(MAP_BACKENDS))?;
            if value == BackendInfo::default() {
                self.backends.slots.remove(&slot);
            } else {
                self.backends.slots.insert(slot, value);
            }
        }
        Ok(())
    }

    /// Backend `backend` of `group` as the kernel reads it from `BACKENDS`.
    pub fn backend(&self, group: u32, backend: u32) -> Result<BackendInfo, DataplaneError> {
        let slot = backend_slot(group, backend)?;
        let map: Array<&MapData, BackendInfo> = Array::try_from(
            self.ebpf
                .map(MAP_BACKENDS)
                .ok_or_else(|| missing(MAP_BACKENDS))?,
        )
        .map_err(map_err(MAP_BACKENDS))?;
        map.get(&slot, 0).map_err(map_err(MAP_BACKENDS))
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

fn missing(map: &'static str) -> DataplaneError {
    DataplaneError::Map {
        map,
        reason: "missing from the object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: &str) -> BackendEntry {
        BackendEntry {
            addr: addr.parse().expect("test address"),
            mac: [2, 0, 0, 0, 0, 1],
            alive: true,
        }
    }

    #[test]
    fn epochs_change_with_the_address_only() {
        let mut w = Written::default();
        let a = w.info(3, &entry("10.0.0.1"));
        assert_eq!(a.addr, v4_mapped([10, 0, 0, 1]));
        assert_eq!(a.flags, backend_flags::ALIVE);
        w.slots.insert(3, a);
        let dead = w.info(
            3,
            &BackendEntry {
                alive: false,
                ..entry("10.0.0.1")
            },
        );
        assert_eq!((dead.epoch, dead.flags), (a.epoch, 0));
        let moved = w.info(3, &entry("10.0.0.2"));
        assert_ne!(moved.epoch, a.epoch);
        let other_slot = w.info(4, &entry("10.0.0.1"));
        assert!(other_slot.epoch != a.epoch && other_slot.epoch != moved.epoch);
        let v6 = w.info(5, &entry("fd00::1"));
        assert_eq!(v6.flags, backend_flags::ALIVE | backend_flags::IPV6);
        let mapped = w.info(6, &entry("::ffff:10.0.0.1"));
        assert_eq!((mapped.addr, mapped.flags), (a.addr, backend_flags::ALIVE));
    }
}
