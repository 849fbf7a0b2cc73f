//! Which kernel slots L4 groups and their backends have. A group keeps its slot, and a backend
//! its index in the group, for as long as it is configured: reloads and health changes never
//! move them, so what the kernel remembers about a slot (flows, counters) stays true.
use std::collections::BTreeMap;
use std::net::SocketAddr;

use lb_common::{MAX_BACKENDS_PER_GROUP, MAX_L4_GROUPS};

use super::DataplaneError;

/// Slots as assigned; the data plane keeps the last applied one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    groups: BTreeMap<String, GroupSlots>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GroupSlots {
    slot: u32,
    backends: BTreeMap<SocketAddr, u32>,
    /// Indices this slot has ever handed out, so new backends take unused ones first.
    used: u32,
}

impl Slots {
    /// The slots for `groups` (name, backends), given that `self` is what the kernel holds now:
    /// kept groups and backends keep theirs. A new group takes the lowest slot no group of
    /// `self` has, since listeners of a removed group still point at its slot until the new
    /// listeners are written; a new backend takes an index its group never used, else the
    /// lowest free one (its epoch then changes, so nothing meant for the old one reaches it).
    pub fn assign<'a>(
        &self,
        groups: impl IntoIterator<Item = (&'a str, &'a [SocketAddr])>,
    ) -> Result<Slots, DataplaneError> {
        let groups: Vec<(&str, &[SocketAddr])> = groups.into_iter().collect();
        let mut out = Slots::default();
        let mut taken: Vec<u32> = self.groups.values().map(|g| g.slot).collect();
        for &(name, backends) in &groups {
            if backends.len() > MAX_BACKENDS_PER_GROUP as usize {
                return Err(DataplaneError::TooManyBackends(backends.len()));
            }
            let group = match self.groups.get(name) {
                Some(old) => {
                    let mut g = GroupSlots {
                        slot: old.slot,
                        backends: BTreeMap::new(),
                        used: old.used,
                    };
                    for b in backends {
                        if let Some(&i) = old.backends.get(b) {
                            g.backends.insert(*b, i);
                        }
                    }
                    g
                }
                None => {
                    let slot = (0..MAX_L4_GROUPS).find(|s| !taken.contains(s)).ok_or(
                        DataplaneError::GroupSlots {
                            groups: groups.len(),
                            running: self.groups.len(),
                        },
                    )?;
                    taken.push(slot);
                    GroupSlots {
                        slot,
                        ..GroupSlots::default()
                    }
                }
            };
            out.groups.insert(name.to_string(), group);
        }
        for &(name, backends) in &groups {
            let Some(g) = out.groups.get_mut(name) else {
                continue;
            };
            for b in backends {
                if g.backends.contains_key(b) {
                    continue;
                }
                let index = if g.used < MAX_BACKENDS_PER_GROUP {
                    g.used += 1;
                    g.used - 1
                } else {
                    (0..MAX_BACKENDS_PER_GROUP)
                        .find(|i| !g.backends.values().any(|v| v == i))
                        .ok_or(DataplaneError::TooManyBackends(backends.len()))?
                };
                g.backends.insert(*b, index);
            }
        }
        Ok(out)
    }

    /// The slot of group `name`.
    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups.get(name).map(|g| g.slot)
    }

    /// The index of backend `addr` in group `name`.
    pub fn backend(&self, name: &str, addr: SocketAddr) -> Option<u32> {
        self.groups.get(name)?.backends.get(&addr).copied()
    }

    /// The groups, by name, with their slots.
    pub fn groups(&self) -> impl Iterator<Item = (&str, u32)> {
        self.groups.iter().map(|(n, g)| (n.as_str(), g.slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| a.parse().expect("test address"))
            .collect()
    }

    #[test]
    fn groups_and_backends_keep_their_slots_and_new_ones_never_take_a_running_slot() {
        let ab = addrs(&["10.0.0.1:80", "10.0.0.2:80"]);
        let s1 = Slots::default()
            .assign([("a", ab.as_slice()), ("b", ab.as_slice())])
            .expect("fits");
        assert_eq!((s1.group("a"), s1.group("b")), (Some(0), Some(1)));
        assert_eq!(s1.backend("a", ab[1]), Some(1));

        // Reordered, one removed, one added: kept backends keep their index; the new one takes
        // one never used (not the removed backend's).
        let next = addrs(&["10.0.0.3:80", "10.0.0.2:80"]);
        let s2 = s1
            .assign([("c", ab.as_slice()), ("a", next.as_slice())])
            .expect("fits");
        assert_eq!(s2.group("a"), Some(0));
        assert_eq!(s2.group("c"), Some(2), "b's slot 1 is still pointed at");
        assert_eq!(s2.group("b"), None);
        assert_eq!(s2.backend("a", next[1]), Some(1));
        assert_eq!(s2.backend("a", next[0]), Some(2));
        assert_eq!(s2.backend("a", ab[0]), None);

        // A later reload may reuse slot 1.
        let s3 = s2.assign([("d", ab.as_slice())]).expect("fits");
        assert_eq!(s3.group("d"), Some(1));

        // The same port on another address, another port on the same address: other backends.
        let ports = addrs(&["10.0.0.2:80", "10.0.0.2:81"]);
        let s4 = s2.assign([("a", ports.as_slice())]).expect("fits");
        assert_eq!(s4.backend("a", ports[0]), Some(1));
        assert_eq!(s4.backend("a", ports[1]), Some(3));
    }

    #[test]
    fn full_tables_are_refused_and_freed_indices_are_reused_last() {
        let one = addrs(&["10.0.0.1:80"]);
        let names: Vec<String> = (0..MAX_L4_GROUPS).map(|i| format!("g{i}")).collect();
        let all = Slots::default()
            .assign(names.iter().map(|n| (n.as_str(), one.as_slice())))
            .expect("16 groups fit");
        assert!(matches!(
            all.assign([("new", one.as_slice())]),
            Err(DataplaneError::GroupSlots { .. })
        ));

        let mut s = Slots::default();
        for i in 0..MAX_BACKENDS_PER_GROUP {
            let b: SocketAddr = format!("10.1.{}.{}:80", i / 256, i % 256)
                .parse()
                .expect("address");
            s = s.assign([("a", [b].as_slice())]).expect("one backend fits");
            assert_eq!(s.backend("a", b), Some(i));
        }
        let b: SocketAddr = "10.9.9.9:80".parse().expect("address");
        let other: SocketAddr = "10.9.9.8:80".parse().expect("address");
        let s = s.assign([("a", [other].as_slice())]).expect("fits");
        let s = s.assign([("a", [other, b].as_slice())]).expect("fits");
        assert!(s.backend("a", b).is_some());
        assert_ne!(s.backend("a", b), s.backend("a", other));
    }
}
