//! Applying a whole configuration to the kernel as one change: the L4 groups (stable slots,
//! each published by one generation store) and the listeners that point at them. A change
//! that fails anywhere is undone, so the kernel is left as it was.
//!
//! Order: every group's new state is staged in the half the program is not reading (nothing
//! visible); groups on new slots are published (no listener points at them yet); listeners,
//! ACLs and ports are written; then the running groups' new states are published. A failure
//! before the listeners changes nothing visible; a failure after puts back the previous
//! listeners and generations.
use std::net::SocketAddr;
use std::sync::Arc;

use lb_common::maglev::NO_BACKEND;
use tracing::{error, warn};

use super::{
    BackendEntry, Dataplane, DataplaneError, L4Listener, L4Listeners, ListenerRule, Slots,
    SynCookies, error_chain,
};

/// A group slot and the generation staged for it.
type Staged = (u32, u32);

/// A backend group behind tcp/udp listeners, as the kernel should hold it.
#[derive(Clone, Debug)]
pub struct L4Group {
    pub name: String,
    /// In the group's configuration order: `ring` entries are positions in this list.
    pub backends: Vec<(SocketAddr, BackendEntry)>,
    /// The group's Maglev ring over positions in `backends`; None picks no backend.
    pub ring: Option<Arc<Vec<u32>>>,
}

/// An L4 listener: its data-plane id and the group (by name) it forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4ListenerSpec {
    pub id: u32,
    pub group: String,
    pub flow_secs: u32,
    pub hash_src_port: bool,
}

impl Dataplane {
    /// Makes the kernel hold exactly `rules` (every listener's entry and ACL) and `groups`,
    /// with the listeners of `l4` forwarding to their group. On an error the kernel holds what
    /// it held before, as the program sees it.
    pub fn apply_config(
        &mut self,
        rules: &[ListenerRule],
        l4: &[L4ListenerSpec],
        groups: &[L4Group],
    ) -> Result<(), DataplaneError> {
        let keys: Vec<Vec<SocketAddr>> = groups
            .iter()
            .map(|g| g.backends.iter().map(|(a, _)| *a).collect())
            .collect();
        let slots = self.slots.assign(
            groups
                .iter()
                .zip(&keys)
                .map(|(g, k)| (g.name.as_str(), k.as_slice())),
        )?;
        let listeners = l4
            .iter()
            .map(|l| {
                let group = slots
                    .group(&l.group)
                    .ok_or_else(|| DataplaneError::UnknownGroup {
                        id: l.id,
                        group: l.group.clone(),
                    })?;
                let listener = L4Listener {
                    group,
                    flow_secs: l.flow_secs,
                    hash_src_port: l.hash_src_port,
                };
                Ok((l.id, listener))
            })
            .collect::<Result<L4Listeners, DataplaneError>>()?;
        self.check_rules(rules, &listeners, &super::AclSets::new())?;

        // Invisible until published.
        let mut staged = Vec::new();
        for g in groups {
            staged.extend(self.stage_named(&slots, g)?);
        }
        let before: Vec<Staged> = staged
            .iter()
            .map(|(slot, _)| (*slot, self.backends.generation(*slot)))
            .collect();
        let new_slot = |slot: u32| !self.slots.groups().any(|(_, s)| s == slot);
        let (fresh, running): (Vec<Staged>, Vec<Staged>) =
            staged.into_iter().partition(|(slot, _)| new_slot(*slot));
        // Kept for the roll back: the running configuration goes on answering as it did.
        let answering_before = self.syn_answering.clone();
        // An `auto` listener keeps answering across a reload only as itself: same id, same
        // address, still `auto` (a new listener may take a removed one's id).
        let old = &self.applied.0;
        self.syn_answering.retain(|id| {
            rules.iter().any(|r| {
                r.id == *id
                    && r.syn_cookies == SynCookies::Watch
                    && old.iter().any(|o| o.id == *id && o.key() == r.key())
            })
        });
        let live = self.with_answering(rules);
        let result = self.publish_all(&fresh).and_then(|()| {
            self.apply_l4(&live, &listeners)?;
            self.publish_all(&running)
        });
        if let Err(e) = result {
            self.syn_answering = answering_before;
            self.roll_back(&before);
            return Err(e);
        }
        self.slots = slots;
        let stale = super::blocked::stale_source_ids(&self.applied.0, rules);
        if let Err(e) = self.forget_sources(&stale) {
            warn!(error = %error_chain(&e), "forgetting per-source state of changed listeners");
        }
        self.applied = (rules.to_vec(), listeners);
        Ok(())
    }

    /// Publishes new states of running groups (health, next hops) with the slots they have:
    /// each group changes with one generation store. A group not applied before is an error.
    pub fn update_groups(&mut self, groups: &[L4Group]) -> Result<(), DataplaneError> {
        let slots = self.slots.clone();
        for g in groups {
            if let Some((slot, next)) = self.stage_named(&slots, g)? {
                self.publish_group(slot, next)?;
            }
        }
        Ok(())
    }

    /// The slots [`Dataplane::apply_config`] last wrote (group and backend indices).
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Stages `g` in its slot: backends at their stable indices, the ring translated to them.
    /// None when the group's live state is that already (a health or next-hop change of
    /// another group, a reload that left it alone): nothing to write or publish.
    fn stage_named(
        &mut self,
        slots: &Slots,
        g: &L4Group,
    ) -> Result<Option<Staged>, DataplaneError> {
        let slot = slots
            .group(&g.name)
            .ok_or_else(|| DataplaneError::UnknownGroup {
                id: 0,
                group: g.name.clone(),
            })?;
        let index: Vec<u32> = g
            .backends
            .iter()
            .map(|(addr, _)| slots.backend(&g.name, *addr).unwrap_or(NO_BACKEND))
            .collect();
        let len = index
            .iter()
            .filter(|i| **i != NO_BACKEND)
            .max()
            .map_or(0, |m| *m as usize + 1);
        let mut entries = vec![None; len];
        for ((_, entry), i) in g.backends.iter().zip(&index) {
            if let Some(e) = entries.get_mut(*i as usize) {
                *e = Some(*entry);
            }
        }
        let ring = g.ring.as_ref().map(|ring| {
            Arc::new(
                ring.iter()
                    .map(|p| index.get(*p as usize).copied().unwrap_or(NO_BACKEND))
                    .collect::<Vec<u32>>(),
            )
        });
        if self.backends.is_live(slot, &entries, ring.as_deref()) {
            return Ok(None);
        }
        let next = self.stage_group(slot, Arc::new(entries), ring)?;
        Ok(Some((slot, next)))
    }

    fn publish_all(&mut self, staged: &[Staged]) -> Result<(), DataplaneError> {
        for (slot, next) in staged {
            self.publish_group(*slot, *next)?;
        }
        Ok(())
    }

    /// Puts back the listeners last applied and the generations in `before`. Each step is
    /// attempted even if one fails (the kernel refusing writes it took a moment ago).
    fn roll_back(&mut self, before: &[Staged]) {
        let (rules, listeners) = self.applied.clone();
        if let Err(e) = self.apply_l4(&self.with_answering(&rules), &listeners) {
            error!(error = %error_chain(&e), "putting the previous XDP listeners back");
        }
        for (slot, generation) in before {
            if self.backends.generation(*slot) != *generation
                && let Err(e) = self.set_generation(*slot, *generation)
            {
                error!(group = slot, error = %error_chain(&e), "putting a group's previous state back");
            }
        }
    }
}
