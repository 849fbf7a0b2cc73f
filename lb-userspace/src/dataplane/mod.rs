//! The one owner of the kernel half: loads the XDP program, attaches and detaches it, writes
//! its maps and reads its counters. Nothing else in the daemon touches BPF maps.
//!
//! What userspace writes for an L4 listener's frames to leave the NIC towards a backend
//! (`XDP_TX`, IP-in-IP):
//! 1. [`Dataplane::apply_l4`] with the listener in an [`L4Listener`] (group, flow seconds,
//!    hashing of the source port);
//! 2. [`Dataplane::set_backends`] for that group: each backend's address and the MAC of the
//!    next hop towards it on the interface the program is attached to, and whether it is
//!    alive. Index `i` of the list is backend `i` of the ring;
//! 3. [`Dataplane::set_ring`] for that group: a Maglev ring over the same indices.
//!
//! Until all three are there, the listener's admitted frames are dropped and counted
//! `no_backend`. The outer source prefixes have defaults ([`lb_common::DEFAULT_ENCAP_V4`],
//! [`lb_common::DEFAULT_ENCAP_V6`]); [`Dataplane::set_encap_source`] changes them. The backends
//! need `edgelb decap` (or an ipip/ip6tnl tunnel) and the VIP on an interface, and the path
//! an MTU 20 (IPv4) or 40 (IPv6) bytes larger than the clients'.
mod acl_sets;
mod apply;
mod backends;
pub mod blocked;
mod grace;
mod maglev;
mod object;
pub mod rules;
mod slots;
pub mod syn_cookies;
mod test_runner;

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, ProgramArray, lpm_trie::Key};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId};
use aya::{Ebpf, EbpfLoader};
use lb_common::maglev::TABLE_SIZE;
use lb_common::{
    ANY, ANY_V4, AclV4, AclV6, Counters, DEFAULT_ENCAP_V4, DEFAULT_ENCAP_V6, ICMP_PROGRAM_NAME,
    ListenerInfo, ListenerKey, MAP_ACL_V4, MAP_ACL_V6, MAP_LISTENERS, MAP_PORTS, MAP_STATS,
    MAP_TAIL, MAP_WILDCARDS, MAX_ACL_ENTRIES, MAX_BACKENDS_PER_GROUP, MAX_L4_GROUPS, MAX_LISTENERS,
    PROGRAM_NAME, TAIL_ICMP, WILDCARD_SLOTS, port_entry, port_slot,
};
use tracing::{info, warn};

use acl_sets::{Running, next_acl_sets, set_of, slot_port};
use rules::{V4Entry, V6Entry};

pub use apply::{L4Group, L4ListenerSpec};
pub use backends::{BackendEntry, Egress, GRACE};
pub use rules::{
    AclSets, DesiredMaps, L4Groups, L4Listener, L4Listeners, ListenerRule, PortListeners,
    SourceLimits, SynCookies,
};
pub use slots::Slots;
pub use test_runner::{TestRunner, run_live_frames};

/// The embedded eBPF object (both programs), or None in a build without it.
pub(crate) fn object_bytes() -> Option<&'static [u8]> {
    object::bytes()
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode: the program runs before the kernel allocates a socket buffer.
    Native,
    /// Generic mode: runs in the stack, after allocation; works with any driver.
    Skb,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }

    pub(crate) fn aya(self) -> AyaXdpMode {
        match self {
            AttachMode::Native => AyaXdpMode::Driver,
            AttachMode::Skb => AyaXdpMode::Skb,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("this edgelb was built without its XDP program (AYA_BUILD_SKIP=1)")]
    NoObject,
    #[error("loading the XDP program: {detail}")]
    Load {
        detail: String,
        /// The OS error under it, if any (EPERM: not privileged enough).
        errno: Option<i32>,
    },
    #[error("interface {iface} refused XDP in {} mode: {reason}", mode.name())]
    Attach {
        iface: String,
        mode: AttachMode,
        reason: String,
    },
    #[error("BPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("listener id {0} is outside 1..={MAX_LISTENERS}")]
    ListenerId(u32),
    #[error("IP protocol {0}: the XDP program serves TCP (6) and UDP (17) listeners only")]
    Protocol(u8),
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(String),
    #[error("backend group {0} is outside 0..{MAX_L4_GROUPS}")]
    Group(u32),
    #[error("listener id {0} has an L4 backend group but no listener rule")]
    GroupOfUnknownListener(u32),
    #[error("a Maglev ring of {0} entries; the XDP program reads {TABLE_SIZE}")]
    RingLength(usize),
    #[error(
        "Maglev ring entry {slot} names backend {entry}; the XDP program picks backends \
         0..{MAX_BACKENDS_PER_GROUP} (or none: u32::MAX)"
    )]
    RingEntry { slot: usize, entry: u32 },
    #[error("backend group {0} has no Maglev ring yet")]
    NoRing(u32),
    #[error("backend {0} is outside 0..{MAX_BACKENDS_PER_GROUP}")]
    Backend(u32),
    #[error("{0} backends in one group; the XDP program holds {MAX_BACKENDS_PER_GROUP}")]
    TooManyBackends(usize),
    #[error(
        "{groups} L4 backend groups next to the {running} running ones: the XDP program holds \
         {MAX_L4_GROUPS}, and a new group cannot take the slot of a group removed in the same \
         reload; remove groups in one reload and add them in the next"
    )]
    GroupSlots { groups: usize, running: usize },
    #[error("L4 listener {id} names backend group {group:?}, which is not among the L4 groups")]
    UnknownGroup { id: u32, group: String },
    #[error(
        "the listeners' IP address groups need {needed} {family} prefixes in the XDP program \
         ({wanted} in the new configuration, the rest of the running one's until the change is \
         made: new prefixes go in before old ones come out); it holds {MAX_ACL_ENTRIES}: shorten \
         the lists, or make the change in two reloads (the old lists out, then the new ones in)"
    )]
    AclFull {
        family: &'static str,
        needed: usize,
        wanted: usize,
    },
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        map,
        reason: e.to_string(),
    }
}

struct Attachment {
    iface: String,
    mode: AttachMode,
    /// None while the interface is gone (the kernel drops an XDP attachment with its device).
    link: Option<XdpLinkId>,
    /// The interface's index when the program was attached: a device removed and created
    /// again under the same name has another.
    ifindex: u32,
    /// The last failure to attach again, logged once.
    failed: Option<String>,
}

/// What [`Dataplane::follow_interfaces`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceEvent {
    /// The interface is gone, and the program with it.
    Gone { iface: String },
    /// The interface is back (created again): the program is attached to it again.
    Attached { iface: String, mode: AttachMode },
    /// The interface is back but the program could not be attached to it (said once).
    Failed { iface: String, reason: String },
}

/// The loaded program, its maps and where it is attached.
pub struct Dataplane {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    /// The non-empty `PORTS` slots as last written. The array starts zeroed and nothing else
    /// writes it, so this is its content without reading 131,072 entries back.
    ports: BTreeMap<u32, u32>,
    /// The `WILDCARDS` entries as written, of those a `PORTS` slot points at.
    wildcards: BTreeMap<u32, ListenerInfo>,
    /// `WILDCARDS` entries no port points at any more, which a run of the program may still
    /// be reading until the next grace period.
    ungraced: BTreeSet<u32>,
    /// Set while an apply is between its first write and its grace period: the next apply
    /// waits one before it writes (a failed apply's rollback, a `--syn-protect` toggle).
    unsettled: bool,
    grace: grace::Grace,
    /// Both halves of every L4 group's backends and ring as last written, and which is live.
    backends: backends::Groups,
    /// The slots of the L4 groups and backends that [`Dataplane::apply_config`] last wrote.
    slots: Slots,
    /// What [`Dataplane::apply_config`] last wrote, to put back if a later one fails.
    applied: (Vec<ListenerRule>, L4Listeners),
    /// `--syn-protect auto` listeners the daemon turned on (`syn_cookies`).
    syn_answering: BTreeSet<u32>,
}

impl Dataplane {
    /// Loads the embedded program into the kernel (root or CAP_BPF + CAP_NET_ADMIN needed).
    pub fn load() -> Result<Self, DataplaneError> {
        let bytes = object::bytes().ok_or(DataplaneError::NoObject)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(lb_common::MAP_DECAP_SOURCES_V4, 1)
            .map_max_entries(lb_common::MAP_DECAP_SOURCES_V6, 1)
            .load(bytes)
            .map_err(|e| DataplaneError::load(&e))?;
        let prog = xdp_program(&mut ebpf)?;
        prog.load().map_err(|e| DataplaneError::load(&e))?;
        load_icmp_program(&mut ebpf)?;
        let mut dp = Dataplane {
            ebpf,
            attachments: Vec::new(),
            ports: BTreeMap::new(),
            wildcards: BTreeMap::new(),
            ungraced: BTreeSet::new(),
            unsettled: false,
            grace: grace::Grace::new()?,
            backends: Default::default(),
            slots: Slots::default(),
            applied: Default::default(),
            syn_answering: BTreeSet::new(),
        };
        dp.set_encap_source(DEFAULT_ENCAP_V4, DEFAULT_ENCAP_V6)?;
        Ok(dp)
    }

    /// Attaches the program to `iface` in `mode`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), DataplaneError> {
        let (link, ifindex) = self.link(iface, mode)?;
        info!(iface, mode = mode.name(), "XDP program attached");
        self.attachments.push(Attachment {
            iface: iface.to_string(),
            mode,
            link: Some(link),
            ifindex,
            failed: None,
        });
        Ok(())
    }

    fn link(&mut self, iface: &str, mode: AttachMode) -> Result<(XdpLinkId, u32), DataplaneError> {
        let refused = |reason: String| DataplaneError::Attach {
            iface: iface.to_string(),
            mode,
            reason,
        };
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| refused(e.to_string()))?;
        let prog = xdp_program(&mut self.ebpf)?;
        let link = prog
            .attach(iface, mode.aya())
            .map_err(|e| refused(error_chain(&e)))?;
        Ok((link, ifindex))
    }

    /// Follows the interfaces the program is attached to (called once a second): one that is
    /// gone is noted, and one created again under its name gets the program again, in the
    /// same mode. Without this, a device that is removed and created anew (a VLAN or bond
    /// rebuilt by the network configuration) would run with no XDP at all, in silence.
    pub fn follow_interfaces(&mut self) -> Vec<InterfaceEvent> {
        let mut events = Vec::new();
        for i in 0..self.attachments.len() {
            let (iface, mode) = (self.attachments[i].iface.clone(), self.attachments[i].mode);
            let now = nix::net::if_::if_nametoindex(iface.as_str()).ok();
            let a = &mut self.attachments[i];
            if a.link.is_some() && now == Some(a.ifindex) {
                continue;
            }
            // The device it was attached to is gone: its link is defunct.
            if let Some(link) = a.link.take() {
                if let Ok(prog) = xdp_program(&mut self.ebpf) {
                    let _ = prog.detach(link);
                }
                events.push(InterfaceEvent::Gone {
                    iface: iface.clone(),
                });
            }
            if now.is_none() {
                continue;
            }
            match self.link(&iface, mode) {
                Ok((link, ifindex)) => {
                    let a = &mut self.attachments[i];
                    (a.link, a.ifindex, a.failed) = (Some(link), ifindex, None);
                    events.push(InterfaceEvent::Attached { iface, mode });
                }
                Err(e) => {
                    let reason = e.to_string();
                    let a = &mut self.attachments[i];
                    if a.failed.as_ref() != Some(&reason) {
                        a.failed = Some(reason.clone());
                        events.push(InterfaceEvent::Failed { iface, reason });
                    }
                }
            }
        }
        events
    }

    /// Where the program is attached, and how (`native`, `skb`), or `gone` while the
    /// interface is.
    pub fn attached(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.attachments.iter().map(|a| {
            let how = if a.link.is_some() {
                a.mode.name()
            } else {
                "gone"
            };
            (a.iface.as_str(), how)
        })
    }

    /// Detaches the program from every interface. Also done on drop (by aya); doing it
    /// explicitly lets a failure be logged.
    pub fn detach_all(&mut self) {
        let attachments = std::mem::take(&mut self.attachments);
        let Ok(prog) = xdp_program(&mut self.ebpf) else {
            return;
        };
        for a in attachments {
            let Some(link) = a.link else {
                continue;
            };
            match prog.detach(link) {
                Ok(()) => info!(iface = a.iface, "XDP program detached"),
                Err(e) => warn!(iface = a.iface, error = %error_chain(&e), "XDP detach failed"),
            }
        }
    }

    /// Makes the maps hold exactly `rules`: entries not in them are removed, missing ones
    /// inserted, unchanged ones left alone (so a rewrite never opens a window where a
    /// listener's ACL is missing).
    pub fn apply(&mut self, rules: &[ListenerRule]) -> Result<(), DataplaneError> {
        self.apply_in_groups(rules, &L4Groups::new())
    }

    /// As [`Dataplane::apply`], with the listeners named in `l4_groups` made L4 listeners: the
    /// program picks a backend of their group for each admitted packet, from the group's
    /// Maglev ring ([`Dataplane::set_ring`]; until a ring is set the group picks none).
    pub fn apply_in_groups(
        &mut self,
        rules: &[ListenerRule],
        l4_groups: &L4Groups,
    ) -> Result<(), DataplaneError> {
        self.apply_l4(rules, &rules::l4_listeners(l4_groups))
    }

    /// As [`Dataplane::apply`], with the listeners named in `l4` made L4 listeners forwarded
    /// in XDP as their [`L4Listener`] says (see the module documentation for what else they
    /// need).
    pub fn apply_l4(
        &mut self,
        rules: &[ListenerRule],
        l4: &L4Listeners,
    ) -> Result<(), DataplaneError> {
        // An apply that failed before its grace period (and its rollback) may have switched
        // ports a moment ago: what they pointed at is rewritten below only after one.
        if self.unsettled || !self.ungraced.is_empty() {
            self.grace.wait()?;
            (self.unsettled, self.ungraced) = (false, BTreeSet::new());
        }
        // Read once: this is the tries' only writer, so what they hold between the steps
        // below follows from this and what the steps write.
        let mut v4 = read_trie::<AclV4, 8>(&mut self.ebpf, MAP_ACL_V4)?;
        let mut v6 = read_trie::<AclV6, 20>(&mut self.ebpf, MAP_ACL_V6)?;
        // `LISTENERS` as it is, read once: what runs, and what the writes below compare with.
        let present = self.read_listeners()?;
        let running = self.running(&present);
        let acl_sets = next_acl_sets(rules, l4, &running, &v4, &v6);
        let desired = self.check_rules(rules, l4, &acl_sets)?;
        // Entries under a set no listener reads (left by a reload that failed half way): no
        // run reads them, and a set written below must hold its list and nothing else.
        let read: BTreeSet<[u8; 4]> = running
            .values()
            .flat_map(|r| r.entries.iter().map(|(_, i)| i.acl_set.to_be_bytes()))
            .collect();
        let unread_v4: BTreeSet<V4Entry> = v4
            .iter()
            .filter(|(_, d)| !read.contains(&set_of(d)))
            .copied()
            .collect();
        let unread_v6: BTreeSet<V6Entry> = v6
            .iter()
            .filter(|(_, d)| !read.contains(&set_of(d)))
            .copied()
            .collect();
        v4.retain(|e| !unread_v4.contains(e));
        v6.retain(|e| !unread_v6.contains(e));
        // Before anything is written: a trie that fills up half way would leave part of the
        // new lists in force until they are rolled back.
        check_room("IPv4", &v4, &desired.acl_v4)?;
        check_room("IPv6", &v6, &desired.acl_v6)?;
        // Before any listener answers SYNs with them.
        self.write_syn_options(rules)?;
        // From here until the grace period below, runs may read what this apply replaces.
        self.unsettled = true;
        write_tries(&mut self.ebpf, unread_v4.iter(), unread_v6.iter(), false)?;
        // Every step below leaves each frame the verdict of the old configuration or of the
        // new one. New prefixes first: a listener whose values change with its list reads the
        // list under its other ACL set (see `next_acl_sets`), which it does only once it is
        // written itself; one whose list alone changes sees each source's verdict change once.
        write_tries(
            &mut self.ebpf,
            desired.acl_v4.difference(&v4),
            desired.acl_v6.difference(&v6),
            true,
        )?;
        // Listeners on one address: a port any of whose listeners change gets them all under
        // its other generation (keys no run reads yet); the others keep theirs, unwritten.
        let map = self
            .ebpf
            .map_mut(MAP_LISTENERS)
            .ok_or_else(|| missing(MAP_LISTENERS))?;
        let mut listeners: HashMap<&mut MapData, ListenerKey, ListenerInfo> =
            HashMap::try_from(map).map_err(map_err(MAP_LISTENERS))?;
        let mut by_slot: BTreeMap<u32, Vec<(ListenerKey, ListenerInfo)>> = BTreeMap::new();
        for (raw, info) in &desired.listeners {
            let key: ListenerKey = bytemuck::cast(*raw);
            let slot = port_slot(key.port, key.proto).ok_or(DataplaneError::Protocol(key.proto))?;
            by_slot.entry(slot).or_default().push((key, *info));
        }
        // Keys per (port slot, generation), counted once.
        let mut counts: BTreeMap<(u32, u8), usize> = BTreeMap::new();
        for k in present.keys() {
            let k: ListenerKey = bytemuck::cast(*k);
            if let Some(slot) = port_slot(k.port, k.proto) {
                *counts.entry((slot, k.generation)).or_default() += 1;
            }
        }
        let mut generations = BTreeMap::new();
        let mut kept = BTreeSet::new();
        for (slot, wanted) in &by_slot {
            let now = self.ports.get(slot).copied().unwrap_or(0);
            let running = port_entry::generation(now);
            let under = |generation: u8, key: &ListenerKey| -> [u8; 20] {
                bytemuck::cast(ListenerKey { generation, ..*key })
            };
            let same = now & port_entry::EXACT != 0
                && wanted
                    .iter()
                    .all(|(k, i)| present.get(&under(running, k)) == Some(i))
                && counts.get(&(*slot, running)) == Some(&wanted.len());
            let generation = if same { running } else { running ^ 1 };
            generations.insert(*slot, generation);
            for (key, info) in wanted {
                let raw = under(generation, key);
                kept.insert(raw);
                if !same && present.get(&raw) != Some(info) {
                    listeners
                        .insert(bytemuck::cast::<_, ListenerKey>(raw), info, 0)
                        .map_err(map_err(MAP_LISTENERS))?;
                }
            }
        }
        let stale: Vec<ListenerKey> = present
            .keys()
            .filter(|k| !kept.contains(*k))
            .map(|k| bytemuck::cast(*k))
            .collect();
        // Then the ports, each switched by one store: a frame finds the new listeners from here
        // on.
        self.sync_ports(&desired.ports, &generations)?;
        // A run that read an old port entry or listener before the switch may still be using
        // it: the old ones go only once every such run has ended (no wait when nothing goes).
        let going = !stale.is_empty()
            || !self.ungraced.is_empty()
            || v4.difference(&desired.acl_v4).next().is_some()
            || v6.difference(&desired.acl_v6).next().is_some();
        if going {
            self.grace.wait()?;
            self.ungraced.clear();
        }
        self.unsettled = false;
        let map = self
            .ebpf
            .map_mut(MAP_LISTENERS)
            .ok_or_else(|| missing(MAP_LISTENERS))?;
        let mut listeners: HashMap<&mut MapData, ListenerKey, ListenerInfo> =
            HashMap::try_from(map).map_err(map_err(MAP_LISTENERS))?;
        for key in stale {
            listeners.remove(&key).map_err(map_err(MAP_LISTENERS))?;
        }
        // After the listeners: a SYN to one just replaced must not find its old stamp.
        self.clear_syn_stamps(rules)?;
        write_tries(
            &mut self.ebpf,
            v4.difference(&desired.acl_v4),
            v6.difference(&desired.acl_v6),
            false,
        )?;
        Ok(())
    }

    /// Every `LISTENERS` key (as bytes) with its value.
    fn read_listeners(&self) -> Result<BTreeMap<[u8; 20], ListenerInfo>, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_LISTENERS)
            .ok_or_else(|| missing(MAP_LISTENERS))?;
        let listeners: HashMap<&MapData, ListenerKey, ListenerInfo> =
            HashMap::try_from(map).map_err(map_err(MAP_LISTENERS))?;
        let mut present = BTreeMap::new();
        for item in listeners.iter() {
            let (key, info) = item.map_err(map_err(MAP_LISTENERS))?;
            present.insert(bytemuck::cast(key), info);
        }
        Ok(present)
    }

    /// Per listener id, what the kernel holds for it now: its keys and values in `LISTENERS`
    /// (`present`) and in the `WILDCARDS` entries ports point at.
    fn running(&self, present: &BTreeMap<[u8; 20], ListenerInfo>) -> BTreeMap<u32, Running> {
        // Compared with the configuration's keys, which have no generation.
        let exact = present.iter().map(|(raw, info)| {
            let key: ListenerKey = bytemuck::cast(*raw);
            (
                ListenerKey {
                    generation: 0,
                    ..key
                },
                *info,
            )
        });
        let wildcard = self.ports.iter().flat_map(|(slot, entry)| {
            let (port, proto) = slot_port(*slot);
            [ANY_V4, ANY]
                .into_iter()
                .zip(port_entry::wildcards(*entry))
                .filter_map(move |(addr, index)| {
                    let info = self.wildcards.get(&index)?;
                    Some((ListenerKey::new(addr, port, proto), *info))
                })
        });
        let mut running: BTreeMap<u32, Running> = BTreeMap::new();
        for (key, info) in exact.chain(wildcard) {
            running
                .entry(info.id)
                .or_default()
                .entries
                .push((bytemuck::cast(key), info));
        }
        running
    }

    /// What the maps must hold for `rules` and `l4`, or why they cannot.
    fn check_rules(
        &self,
        rules: &[ListenerRule],
        l4: &L4Listeners,
        acl_sets: &AclSets,
    ) -> Result<DesiredMaps, DataplaneError> {
        if let Some(bad) = rules.iter().find(|r| r.id == 0 || r.id > MAX_LISTENERS) {
            return Err(DataplaneError::ListenerId(bad.id));
        }
        for (id, listener) in l4 {
            maglev::check_group(listener.group)?;
            if !rules.iter().any(|r| r.id == *id) {
                return Err(DataplaneError::GroupOfUnknownListener(*id));
            }
        }
        DesiredMaps::from_rules_l4(rules, l4, acl_sets).map_err(DataplaneError::Protocol)
    }

    /// Makes the `PORTS` array hold `desired`: each wildcard listener that is new or changed
    /// written first to a `WILDCARDS` entry that no port pointed at before this call (a
    /// program may still be reading those), then the ports that differ written and the others
    /// zeroed, each by one 4-byte store.
    fn sync_ports(
        &mut self,
        desired: &BTreeMap<u32, PortListeners>,
        generations: &BTreeMap<u32, u8>,
    ) -> Result<(), DataplaneError> {
        let pointed_at = |ports: &BTreeMap<u32, u32>| -> BTreeSet<u32> {
            ports
                .values()
                .flat_map(|e| port_entry::wildcards(*e))
                .filter(|i| *i != 0)
                .collect()
        };
        let before = pointed_at(&self.ports);
        let ungraced = std::mem::take(&mut self.ungraced);
        let mut free = (1..WILDCARD_SLOTS).filter(|i| !before.contains(i) && !ungraced.contains(i));
        let mut entries = BTreeMap::new();
        let result = (|| {
            for (slot, port) in desired {
                let old = self.ports.get(slot).copied().unwrap_or(0);
                let mut indices = [0; 2];
                for (index, (info, old)) in indices.iter_mut().zip(
                    [port.any_v4, port.any]
                        .into_iter()
                        .zip(port_entry::wildcards(old)),
                ) {
                    let Some(info) = info else { continue };
                    if old != 0 && self.wildcards.get(&old) == Some(&info) {
                        *index = old;
                        continue;
                    }
                    *index = free.next().ok_or(DataplaneError::Map {
                        map: MAP_WILDCARDS,
                        reason: format!("all {} entries in use", WILDCARD_SLOTS - 1),
                    })?;
                    let map = self
                        .ebpf
                        .map_mut(MAP_WILDCARDS)
                        .ok_or_else(|| missing(MAP_WILDCARDS))?;
                    let mut wildcards: Array<&mut MapData, ListenerInfo> =
                        Array::try_from(map).map_err(map_err(MAP_WILDCARDS))?;
                    wildcards
                        .set(*index, info, 0)
                        .map_err(map_err(MAP_WILDCARDS))?;
                    self.wildcards.insert(*index, info);
                }
                let generation = generations.get(slot).copied().unwrap_or(0);
                entries.insert(
                    *slot,
                    port_entry::pack(port.exact, generation, indices[0], indices[1]),
                );
            }
            let map = self
                .ebpf
                .map_mut(MAP_PORTS)
                .ok_or_else(|| missing(MAP_PORTS))?;
            let mut ports: Array<&mut MapData, u32> =
                Array::try_from(map).map_err(map_err(MAP_PORTS))?;
            for (slot, entry) in &entries {
                if self.ports.get(slot) != Some(entry) {
                    ports.set(*slot, entry, 0).map_err(map_err(MAP_PORTS))?;
                    self.ports.insert(*slot, *entry);
                }
            }
            let stale: Vec<u32> = self
                .ports
                .keys()
                .filter(|slot| !entries.contains_key(slot))
                .copied()
                .collect();
            for slot in stale {
                ports.set(slot, 0, 0).map_err(map_err(MAP_PORTS))?;
                self.ports.remove(&slot);
            }
            Ok(())
        })();
        // What no port points at any more is free once a grace period has passed.
        let after = pointed_at(&self.ports);
        self.wildcards.retain(|i, _| after.contains(i));
        self.ungraced = ungraced
            .into_iter()
            .chain(before.difference(&after).copied())
            .collect();
        result
    }

    /// The counters of one slot (a listener id, or 0 for traffic of no listener), summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<Counters, DataplaneError> {
        let map = self.ebpf.map(MAP_STATS).ok_or_else(|| missing(MAP_STATS))?;
        let stats: PerCpuArray<&MapData, Counters> =
            PerCpuArray::try_from(map).map_err(map_err(MAP_STATS))?;
        let per_cpu = stats.get(&slot, 0).map_err(map_err(MAP_STATS))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Runs the program once on `frame` through BPF_PROG_TEST_RUN and returns its verdict.
    /// Counters are updated as for a real frame.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32, DataplaneError> {
        Ok(self.test_run_repeat(frame, 1)?.0)
    }

    /// Runs the program `repeat` times on `frame`; returns the verdict and the mean time per
    /// run in nanoseconds as the kernel measured it.
    pub fn test_run_repeat(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, u64), DataplaneError> {
        let prog = xdp_program(&mut self.ebpf)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let result = prog
            .test_run(opts)
            .map_err(|e| DataplaneError::TestRun(error_chain(&e)))?;
        Ok((
            result.return_value,
            u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
        ))
    }

    /// Runs the program once on `frame`; returns the verdict and the frame as the program left
    /// it (grown by an outer header when forwarded).
    pub fn test_run_output(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), DataplaneError> {
        test_run_output(xdp_program(&mut self.ebpf)?, frame)
    }

    /// A second handle on the loaded program, so that another thread can run frames through
    /// it (BPF_PROG_TEST_RUN) while this one keeps writing the maps: tests of map updates
    /// under traffic. It writes nothing.
    pub fn test_runner(&mut self) -> Result<TestRunner, DataplaneError> {
        Ok(TestRunner::new(own_fd(xdp_program(&mut self.ebpf)?)?))
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    named_program(ebpf, PROGRAM_NAME)
}

/// The XDP program `name` of the object.
pub(crate) fn named_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or_else(|| DataplaneError::Load {
            detail: format!("program {name} missing from the object"),
            errno: None,
        })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DataplaneError::load(&e))
}

/// A descriptor of the loaded `prog` that outlives the borrow of the object.
fn own_fd(prog: &Xdp) -> Result<aya::programs::ProgramFd, DataplaneError> {
    prog.fd()
        .map_err(|e| DataplaneError::load(&e))?
        .try_clone()
        .map_err(|e| DataplaneError::load(&e))
}

/// The error for map `map` absent from the object.
pub(crate) fn missing(map: &'static str) -> DataplaneError {
    DataplaneError::Map {
        map,
        reason: "missing from the object".into(),
    }
}

/// Loads `edgelb_icmp` and puts it where `edgelb_xdp` tail-calls it for ICMP errors (until
/// then they pass as not ours).
fn load_icmp_program(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let prog = named_program(ebpf, ICMP_PROGRAM_NAME)?;
    prog.load().map_err(|e| DataplaneError::load(&e))?;
    let fd = own_fd(prog)?;
    let map = ebpf.map_mut(MAP_TAIL).ok_or_else(|| missing(MAP_TAIL))?;
    let mut tail: ProgramArray<&mut MapData> =
        ProgramArray::try_from(map).map_err(map_err(MAP_TAIL))?;
    tail.set(TAIL_ICMP, &fd, 0).map_err(map_err(MAP_TAIL))
}

/// Runs `prog` once on `frame` through BPF_PROG_TEST_RUN, with room for the frame to grow.
pub(crate) fn test_run_output(
    prog: &mut Xdp,
    frame: &[u8],
) -> Result<(u32, Vec<u8>), DataplaneError> {
    // An outer IPv6 header is the most any program here adds.
    let mut out = vec![0u8; frame.len() + 64];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let result = prog
        .test_run(opts)
        .map_err(|e| DataplaneError::TestRun(error_chain(&e)))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// A trie's prefixes, as (length, key bytes).
type Prefixes<const N: usize> = BTreeSet<(u32, [u8; N])>;

/// The prefixes the trie `name` holds.
fn read_trie<K: aya::Pod + bytemuck::Pod, const N: usize>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<Prefixes<N>, DataplaneError> {
    let map = ebpf.map_mut(name).ok_or_else(|| missing(name))?;
    let trie: LpmTrie<&mut MapData, K, u8> = LpmTrie::try_from(map).map_err(map_err(name))?;
    Ok(trie
        .keys()
        .filter_map(Result::ok)
        .map(|k| {
            let data = k.data();
            let raw = <[u8; N]>::try_from(bytemuck::bytes_of(&data))
                .expect("a trie key's data type is N bytes long");
            (k.prefix_len(), raw)
        })
        .collect())
}

/// Whether a trie holding `present` has room for `desired` next to it: new prefixes go in
/// before old ones come out, so for a moment it holds both.
fn check_room<const N: usize>(
    family: &'static str,
    present: &Prefixes<N>,
    desired: &Prefixes<N>,
) -> Result<(), DataplaneError> {
    let needed = present.union(desired).count();
    if needed > MAX_ACL_ENTRIES as usize {
        return Err(DataplaneError::AclFull {
            family,
            needed,
            wanted: desired.len(),
        });
    }
    Ok(())
}

/// Inserts (`insert`) or removes `prefixes` in the trie `name`.
/// Inserts (`insert`) or removes the entries of both ACL tries.
fn write_tries<'a>(
    ebpf: &mut Ebpf,
    v4: impl Iterator<Item = &'a V4Entry>,
    v6: impl Iterator<Item = &'a V6Entry>,
    insert: bool,
) -> Result<(), DataplaneError> {
    write_trie::<AclV4, 8>(ebpf, MAP_ACL_V4, v4, insert)?;
    write_trie::<AclV6, 20>(ebpf, MAP_ACL_V6, v6, insert)
}

fn write_trie<'a, K: aya::Pod + bytemuck::Pod, const N: usize>(
    ebpf: &mut Ebpf,
    name: &'static str,
    prefixes: impl Iterator<Item = &'a (u32, [u8; N])>,
    insert: bool,
) -> Result<(), DataplaneError> {
    let map = ebpf.map_mut(name).ok_or_else(|| missing(name))?;
    let mut trie: LpmTrie<&mut MapData, K, u8> = LpmTrie::try_from(map).map_err(map_err(name))?;
    for (len, data) in prefixes {
        let key = Key::new(*len, bytemuck::pod_read_unaligned::<K>(data));
        if insert {
            trie.insert(&key, 1u8, 0).map_err(map_err(name))?;
        } else {
            trie.remove(&key).map_err(map_err(name))?;
        }
    }
    Ok(())
}

/// An error with its sources, on one line (the verifier's log, a netlink errno...).
impl DataplaneError {
    /// A failure to load, with its whole cause chain and the OS error in it.
    pub fn load(e: &(dyn std::error::Error + 'static)) -> Self {
        DataplaneError::Load {
            detail: error_chain(e),
            errno: os_errno(e),
        }
    }

    /// The OS error behind this one, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DataplaneError::Load { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// The first OS error code in `e`'s cause chain.
pub fn os_errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(code) = c
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        cause = c.source();
    }
    None
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
