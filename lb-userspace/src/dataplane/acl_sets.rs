//! Which ACL set each listener's prefixes are written under (`ListenerInfo::acl_set`: its id,
//! with `ACL_SET_TAG` or without).
//!
//! A reload writes new prefixes, then the listeners, then removes old prefixes. A listener
//! whose list alone changes keeps its set: each source's verdict changes once, when its prefix
//! comes or goes. A listener whose list changes together with anything else of it (its mode,
//! group or limits, an address or protocol it gains, loses or moves to) moves to the other set,
//! so that a frame judged by its old keys and values never reads part of its new list, nor the
//! reverse. (Moving every listener whose list changes would need room in the tries for both
//! lists of a large blocklist at once.)
use std::collections::{BTreeMap, BTreeSet};

use lb_common::{ACL_SET_TAG, IPPROTO_TCP, IPPROTO_UDP, ListenerInfo};

use super::rules::{AclSets, L4Listeners, ListenerRule, V4Entry, V6Entry};

/// What the kernel holds for one listener id: each of its keys (`ListenerKey` bytes) with its
/// value.
#[derive(Default)]
pub(super) struct Running {
    pub entries: Vec<([u8; 20], ListenerInfo)>,
}

/// A key and value compared across reloads: the value without its ACL set.
type Pair = ([u8; 20], [u32; 10]);

fn pair(key: [u8; 20], info: ListenerInfo) -> Pair {
    (key, bytemuck::cast(ListenerInfo { acl_set: 0, ..info }))
}

/// The first 32 bits of a trie entry's data: the ACL set it belongs to.
pub(super) fn set_of<const N: usize>(data: &[u8; N]) -> [u8; 4] {
    [data[0], data[1], data[2], data[3]]
}

/// The port and protocol of a `PORTS` slot (`lb_common::port_slot`'s inverse).
pub(super) fn slot_port(slot: u32) -> (u16, u8) {
    let proto = if slot & 1 == 1 {
        IPPROTO_UDP
    } else {
        IPPROTO_TCP
    };
    ((slot >> 1) as u16, proto)
}

/// The ACL set of each listener id of `rules`, given what runs (`running`) and what the
/// tries hold (`v4`, `v6`).
pub(super) fn next_acl_sets(
    rules: &[ListenerRule],
    l4: &L4Listeners,
    running: &BTreeMap<u32, Running>,
    v4: &BTreeSet<V4Entry>,
    v6: &BTreeSet<V6Entry>,
) -> AclSets {
    type Lists = (BTreeSet<V4Entry>, BTreeSet<V6Entry>);
    let mut held: BTreeMap<[u8; 4], Lists> = BTreeMap::new();
    for e in v4 {
        held.entry(set_of(&e.1)).or_default().0.insert(*e);
    }
    for e in v6 {
        held.entry(set_of(&e.1)).or_default().1.insert(*e);
    }
    let none = Lists::default();
    let mut sets = AclSets::new();
    for rule in rules {
        if sets.contains_key(&rule.id) {
            continue;
        }
        let Some(run) = running.get(&rule.id).filter(|r| !r.entries.is_empty()) else {
            sets.insert(rule.id, rule.id);
            continue;
        };
        let mine: Vec<&ListenerRule> = rules.iter().filter(|r| r.id == rule.id).collect();
        let wanted: BTreeSet<Pair> = mine
            .iter()
            .map(|r| {
                let info = match l4.get(&r.id) {
                    Some(l) => r.info_l4(l),
                    None => r.info(),
                };
                pair(bytemuck::cast(r.key()), info)
            })
            .collect();
        let now: BTreeSet<Pair> = run.entries.iter().map(|(k, i)| pair(*k, *i)).collect();
        let primary = run.entries[0].1.acl_set;
        let list_under = |set: u32| {
            let mut lists = Lists::default();
            for r in &mine {
                r.acl_entries(set, &mut lists.0, &mut lists.1);
            }
            lists
        };
        let readers = |set: u32| run.entries.iter().filter(move |(_, i)| i.acl_set == set);
        // A set may take the new list if its list does not change, or nobody reads it, or
        // nothing but the list changes; else one whose readers all keep their keys and values.
        let fits = |set: u32| {
            held.get(&set.to_be_bytes()).unwrap_or(&none) == &list_under(set)
                || readers(set).next().is_none()
                || now == wanted
        };
        let fair = |set: u32| readers(set).all(|(k, i)| wanted.contains(&pair(*k, *i)));
        let candidates = [primary, primary ^ ACL_SET_TAG];
        let set = candidates
            .into_iter()
            .find(|s| fits(*s))
            .or_else(|| candidates.into_iter().find(|s| fair(*s)))
            .unwrap_or(primary ^ ACL_SET_TAG);
        sets.insert(rule.id, set);
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::AclMode;
    use crate::dataplane::rules::{L4Listener, SourceLimits};

    fn rule(mode: AclMode, prefixes: &[&str], pps: u32) -> ListenerRule {
        ListenerRule {
            id: 3,
            addr: "10.0.0.1:443".parse().expect("an address"),
            proto: 6,
            mode,
            prefixes: prefixes
                .iter()
                .map(|p| p.parse().expect("a prefix"))
                .collect(),
            limits: SourceLimits {
                pps,
                ..SourceLimits::default()
            },
            syn_cookies: Default::default(),
        }
    }

    /// The set each change leads to, from `old` written under set 3.
    fn next(old: &ListenerRule, new: &ListenerRule, l4: &L4Listeners) -> u32 {
        let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
        old.acl_entries(3, &mut v4, &mut v6);
        let running = BTreeMap::from([(
            3,
            Running {
                entries: vec![(bytemuck::cast(old.key()), old.info())],
            },
        )]);
        next_acl_sets(std::slice::from_ref(new), l4, &running, &v4, &v6)[&3]
    }

    #[test]
    fn a_listener_moves_to_its_other_set_when_its_list_changes_with_its_mode_or_values() {
        let none = L4Listeners::new();
        let old = rule(AclMode::Blacklist, &["192.168.0.0/16"], 0);
        let moved = 3 | ACL_SET_TAG;
        // Nothing, or the list alone: the same set (a large blocklist changes in place).
        assert_eq!(next(&old, &old, &none), 3);
        let grown = rule(AclMode::Blacklist, &["192.168.0.0/16", "10.9.0.0/16"], 0);
        assert_eq!(next(&old, &grown, &none), 3);
        // Values alone: the same set (the listener is replaced whole).
        assert_eq!(
            next(
                &old,
                &rule(AclMode::Blacklist, &["192.168.0.0/16"], 50),
                &none
            ),
            3
        );
        // The list with a value, the list with the mode: the other set.
        let both = rule(AclMode::Blacklist, &["10.9.0.0/16"], 50);
        assert_eq!(next(&old, &both, &none), moved);
        assert_eq!(
            next(&old, &rule(AclMode::Whitelist, &["10.9.0.0/16"], 0), &none),
            moved
        );
        // The mode alone: the same set (the list stays, the listener is replaced whole).
        assert_eq!(
            next(
                &old,
                &rule(AclMode::Whitelist, &["192.168.0.0/16"], 0),
                &none
            ),
            3
        );
        // The list with the listener's L4 group.
        let l4 = L4Listeners::from([(3, L4Listener::in_group(2))]);
        assert_eq!(next(&old, &grown, &l4), moved);
        // The list with the address: the other set; the address alone: the same.
        let moved_to = |prefixes: &[&str]| ListenerRule {
            addr: "10.0.0.2:443".parse().expect("an address"),
            ..rule(AclMode::Blacklist, prefixes, 0)
        };
        assert_eq!(next(&old, &moved_to(&["10.9.0.0/16"]), &none), moved);
        assert_eq!(next(&old, &moved_to(&["192.168.0.0/16"]), &none), 3);
        // A listener that does not run yet: its id.
        let empty = BTreeMap::new();
        let (v4, v6) = (BTreeSet::new(), BTreeSet::new());
        assert_eq!(next_acl_sets(&[both], &none, &empty, &v4, &v6)[&3], 3);
    }
}
