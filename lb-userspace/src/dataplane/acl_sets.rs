//! Which ACL set each listener's prefixes are written under (`ListenerInfo::acl_set`: its id,
//! with `ACL_SET_TAG` or without).
//!
//! A reload writes new prefixes, then the listeners, then removes old prefixes. A listener
//! whose list alone changes keeps its set: each source's verdict changes once, when its prefix
//! comes or goes. A listener whose list changes together with its mode or any other value (its
//! group, limits, address) moves to the other set, so that a frame judged by its old values
//! never reads part of its new list, and the reverse. (Moving every listener whose list
//! changes would need room in the tries for both lists of a large blocklist at once.)
use std::collections::{BTreeMap, BTreeSet};

use lb_common::{ACL_SET_TAG, ListenerInfo};

use super::rules::{AclSets, L4Listeners, ListenerRule, V4Entry, V6Entry};

/// What the kernel holds for one listener id.
pub(super) struct Running {
    /// Its access-control mode (`acl`).
    pub acl: u32,
    /// Its ACL set.
    pub set: u32,
    /// Its values (one per address and protocol), `acl_set` zeroed.
    pub infos: Vec<ListenerInfo>,
}

/// The first 32 bits of a trie entry's data: the ACL set it belongs to.
pub(super) fn set_of<const N: usize>(data: &[u8; N]) -> [u8; 4] {
    [data[0], data[1], data[2], data[3]]
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
    let mut sets = AclSets::new();
    for rule in rules {
        if sets.contains_key(&rule.id) {
            continue;
        }
        let Some(run) = running.get(&rule.id) else {
            sets.insert(rule.id, rule.id);
            continue;
        };
        let mine: Vec<&ListenerRule> = rules.iter().filter(|r| r.id == rule.id).collect();
        let infos: Vec<ListenerInfo> = mine
            .iter()
            .map(|r| ListenerInfo {
                acl_set: 0,
                ..match l4.get(&r.id) {
                    Some(l) => r.info_l4(l),
                    None => r.info(),
                }
            })
            .collect();
        let (mut new_v4, mut new_v6) = (BTreeSet::new(), BTreeSet::new());
        for r in &mine {
            r.acl_entries(run.set, &mut new_v4, &mut new_v6);
        }
        let set = run.set.to_be_bytes();
        let old_v4: BTreeSet<V4Entry> = v4
            .iter()
            .filter(|(_, d)| set_of(d) == set)
            .copied()
            .collect();
        let old_v6: BTreeSet<V6Entry> = v6
            .iter()
            .filter(|(_, d)| set_of(d) == set)
            .copied()
            .collect();
        let list_changed = old_v4 != new_v4 || old_v6 != new_v6;
        let same_values = infos.len() == run.infos.len()
            && infos.iter().all(|i| run.infos.contains(i))
            && run.infos.iter().all(|i| infos.contains(i));
        let mode_changed = infos.first().is_some_and(|i| i.acl != run.acl);
        let moved = mode_changed || (list_changed && !same_values);
        sets.insert(
            rule.id,
            if moved {
                run.set ^ ACL_SET_TAG
            } else {
                run.set
            },
        );
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
                acl: old.info().acl,
                set: 3,
                infos: vec![ListenerInfo {
                    acl_set: 0,
                    ..old.info()
                }],
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
        // The list with a value, the list with the mode, the mode alone: the other set.
        let both = rule(AclMode::Blacklist, &["10.9.0.0/16"], 50);
        assert_eq!(next(&old, &both, &none), moved);
        assert_eq!(
            next(&old, &rule(AclMode::Whitelist, &["10.9.0.0/16"], 0), &none),
            moved
        );
        assert_eq!(
            next(
                &old,
                &rule(AclMode::Whitelist, &["192.168.0.0/16"], 0),
                &none
            ),
            moved
        );
        // The list with the listener's L4 group.
        let l4 = L4Listeners::from([(3, L4Listener::in_group(2))]);
        assert_eq!(next(&old, &grown, &l4), moved);
        // A listener that does not run yet: its id.
        let empty = BTreeMap::new();
        let (v4, v6) = (BTreeSet::new(), BTreeSet::new());
        assert_eq!(next_acl_sets(&[both], &none, &empty, &v4, &v6)[&3], 3);
    }
}
