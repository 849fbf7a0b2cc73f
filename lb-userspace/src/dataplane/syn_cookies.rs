//! SYN cookies in the XDP program (`--syn-protect`): which listeners answer new connections
//! themselves, the SYN counts `auto` decides by, and the TCP options the answers offer. The
//! decision when to answer is the daemon's (`crate::syn_protect`); this module only writes
//! what it decided.
use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, MapData, PerCpuArray};
use lb_common::{MAP_SYN_OPTIONS, MAP_SYN_STAMPS, MAP_SYNS, syn_options, syn_stamp_slot};

use super::{Dataplane, DataplaneError, ListenerRule, SynCookies, map_err, missing};

/// The largest window scale TCP allows (RFC 7323).
const MAX_WSCALE: u32 = 14;

/// The window scale the kernel gives a connection it creates from a cookie
/// (`tcp_select_initial_window`: the largest receive buffer a socket may grow to, in 64 KiB
/// units, as a power of two). The SYN-ACK must offer exactly that: the client scales what the
/// kernel later advertises by it.
pub fn kernel_window_scale(tcp_rmem_max: u64, rmem_max: u64) -> u32 {
    let space = tcp_rmem_max.max(rmem_max).min(u64::from(u32::MAX));
    match space.checked_ilog2() {
        Some(bits) => bits.saturating_sub(15).min(MAX_WSCALE),
        None => 0,
    }
}

/// What this network namespace's TCP settings let a cookie's SYN-ACK offer
/// (`lb_common::syn_options`): the window scale the kernel gives connections it creates from
/// cookies, and whether window scaling and SACK are on at all.
pub fn host_syn_options() -> Result<u32, DataplaneError> {
    let read = |path: &'static str, field: usize| -> Result<u64, DataplaneError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataplaneError::Map {
            map: MAP_SYN_OPTIONS,
            reason: format!("reading {path}: {e}"),
        })?;
        text.split_whitespace()
            .nth(field)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| DataplaneError::Map {
                map: MAP_SYN_OPTIONS,
                reason: format!("{path} holds {text:?}, not numbers"),
            })
    };
    let scale = kernel_window_scale(
        read("/proc/sys/net/ipv4/tcp_rmem", 2)?,
        read("/proc/sys/net/core/rmem_max", 0)?,
    );
    let mut options = scale & syn_options::WSCALE_MASK;
    if read("/proc/sys/net/ipv4/tcp_window_scaling", 0)? != 0 {
        options |= syn_options::SCALING;
    }
    if read("/proc/sys/net/ipv4/tcp_sack", 0)? != 0 {
        options |= syn_options::SACK;
    }
    Ok(options)
}

impl Dataplane {
    /// `rules` with the listeners the daemon turned on (`answering`, among those that count
    /// their SYNs) answering.
    pub(super) fn with_answering(&self, rules: &[ListenerRule]) -> Vec<ListenerRule> {
        rules
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if r.syn_cookies == SynCookies::Watch && self.syn_answering.contains(&r.id) {
                    r.syn_cookies = SynCookies::Answer;
                }
                r
            })
            .collect()
    }

    /// Before any of `rules` answers: writes the options cookies offer (the settings they
    /// come from are read again each time).
    pub(super) fn write_syn_options(
        &mut self,
        rules: &[ListenerRule],
    ) -> Result<(), DataplaneError> {
        if rules.iter().all(|r| r.syn_cookies == SynCookies::Off) {
            return Ok(());
        }
        let options = host_syn_options()?;
        let map = self
            .ebpf
            .map_mut(MAP_SYN_OPTIONS)
            .ok_or_else(|| missing(MAP_SYN_OPTIONS))?;
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(map_err(MAP_SYN_OPTIONS))?;
        map.set(0, options, 0).map_err(map_err(MAP_SYN_OPTIONS))
    }

    /// Once `rules` are written: clears the stamps of those with SYN cookies, so that the
    /// next SYN of each goes to the kernel: a listener may have a new socket, or an id that
    /// was another listener's, which the kernel has not seen send a cookie.
    pub(super) fn clear_syn_stamps(
        &mut self,
        rules: &[ListenerRule],
    ) -> Result<(), DataplaneError> {
        for r in rules.iter().filter(|r| r.syn_cookies != SynCookies::Off) {
            self.set_syn_stamp(r.id, true, 0)?;
            self.set_syn_stamp(r.id, false, 0)?;
        }
        Ok(())
    }

    /// Makes `--syn-protect auto` listener `id` answer new connections with cookies, or stop.
    /// A listener that is not `auto` is left as its configuration says.
    pub fn set_syn_answering(&mut self, id: u32, on: bool) -> Result<(), DataplaneError> {
        let changed = if on {
            self.syn_answering.insert(id)
        } else {
            self.syn_answering.remove(&id)
        };
        if !changed {
            return Ok(());
        }
        let (rules, listeners) = self.applied.clone();
        let result = self.apply_l4(&self.with_answering(&rules), &listeners);
        if result.is_err() {
            if on {
                self.syn_answering.remove(&id);
            } else {
                self.syn_answering.insert(id);
            }
        }
        result
    }

    /// Records that listener `id` last stamped the kernel for `v4` (or IPv6) frames at `ns`
    /// on the kernel's monotonic clock (0: never), as the program records it. For tests and
    /// tools that need the program to see a stamp of a given age.
    pub fn set_syn_stamp(&mut self, id: u32, v4: bool, ns: u64) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(MAP_SYN_STAMPS)
            .ok_or_else(|| missing(MAP_SYN_STAMPS))?;
        let mut map: Array<&mut MapData, u64> =
            Array::try_from(map).map_err(map_err(MAP_SYN_STAMPS))?;
        map.set(syn_stamp_slot(id, v4), ns, 0)
            .map_err(map_err(MAP_SYN_STAMPS))
    }

    /// The `auto` listeners answering now.
    pub fn syn_answering(&self) -> &BTreeSet<u32> {
        &self.syn_answering
    }

    /// SYNs counted so far by listeners `ids` (those that count them: `auto` and `on`).
    pub fn syn_counts(&self, ids: &[u32]) -> Result<BTreeMap<u32, u64>, DataplaneError> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let map = self.ebpf.map(MAP_SYNS).ok_or_else(|| missing(MAP_SYNS))?;
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err(MAP_SYNS))?;
        ids.iter()
            .map(|&id| {
                let per_cpu = map.get(&id, 0).map_err(map_err(MAP_SYNS))?;
                Ok((id, per_cpu.iter().fold(0u64, |a, n| a.wrapping_add(*n))))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_scale_follows_the_largest_receive_buffer() {
        // Linux defaults: tcp_rmem max 6 MiB, rmem_max 208 KiB.
        assert_eq!(kernel_window_scale(6 << 20, 212_992), 7);
        // This host's: rmem_max 4 MiB, tcp_rmem max 32 MiB.
        assert_eq!(kernel_window_scale(32 << 20, 4 << 20), 10);
        assert_eq!(kernel_window_scale(1 << 40, 0), 14);
        assert_eq!(kernel_window_scale(65_535, 0), 0);
        assert_eq!(kernel_window_scale(0, 0), 0);
    }
}
