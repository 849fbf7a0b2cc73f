//! The real XDP program loaded in the kernel, with the reference classifier's view of the same
//! rules beside it, for packet-level tests through BPF_PROG_TEST_RUN.
use std::net::IpAddr;

use edgelb::acl::AclMode;
use edgelb::dataplane::{Dataplane, L4Groups, ListenerRule};
use ipnet::IpNet;
use lb_common::reference::{AclPrefix, Decision, Tables};
use lb_common::{BackendCounters, Counters, NO_GROUP, STATS_SLOTS};

/// A listener rule from readable parts: `rule(1, "10.0.0.1:443", TCP, Whitelist, &["10.0.0.0/8"])`.
pub fn rule(id: u32, addr: &str, proto: u8, mode: AclMode, prefixes: &[&str]) -> ListenerRule {
    ListenerRule {
        id,
        addr: addr
            .parse()
            .unwrap_or_else(|_| panic!("test listener address {addr:?}")),
        proto,
        mode,
        prefixes: prefixes
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .unwrap_or_else(|_| panic!("test prefix {p:?}"))
            })
            .collect(),
    }
}

/// The reference classifier's tables for the same rules the data plane was given.
pub fn reference_tables(rules: &[ListenerRule]) -> Tables {
    reference_tables_in_groups(rules, &L4Groups::new())
}

/// The reference classifier's tables for rules applied with L4 groups (and no rings yet).
pub fn reference_tables_in_groups(rules: &[ListenerRule], l4_groups: &L4Groups) -> Tables {
    let mut t = Tables::default();
    for r in rules {
        let group = l4_groups.get(&r.id).copied().unwrap_or(NO_GROUP);
        t.listeners.insert(r.key(), r.info_in_group(group));
        for net in &r.prefixes {
            let p = match net.trunc() {
                IpNet::V4(n) => AclPrefix::V4(n.network().octets(), n.prefix_len()),
                IpNet::V6(n) => AclPrefix::V6(n.network().octets(), n.prefix_len()),
            };
            t.acl.push((r.id, p));
        }
    }
    t
}

pub struct Fixture {
    pub dp: Dataplane,
    pub tables: Tables,
    /// Listener ids whose counters the fixture compares (plus slot 0).
    pub slots: Vec<u32>,
}

impl Fixture {
    pub fn load() -> Self {
        let dp = Dataplane::load().unwrap_or_else(|e| panic!("loading the XDP program: {e}"));
        Fixture {
            dp,
            tables: Tables::default(),
            slots: vec![0],
        }
    }

    pub fn apply(&mut self, rules: &[ListenerRule]) {
        self.apply_in_groups(rules, &L4Groups::new());
    }

    /// Applies `rules` with the listeners of `l4_groups` balanced in XDP; the rings stay.
    pub fn apply_in_groups(&mut self, rules: &[ListenerRule], l4_groups: &L4Groups) {
        self.dp
            .apply_in_groups(rules, l4_groups)
            .unwrap_or_else(|e| panic!("writing the maps: {e}"));
        let rings = std::mem::take(&mut self.tables.rings);
        self.tables = reference_tables_in_groups(rules, l4_groups);
        self.tables.rings = rings;
        self.slots = std::iter::once(0)
            .chain(rules.iter().map(|r| r.id))
            .collect();
        self.slots.sort_unstable();
        self.slots.dedup();
    }

    /// Makes `ring` the live Maglev ring of `group`, in the kernel and in the reference.
    pub fn set_ring(&mut self, group: u32, ring: Vec<u32>) {
        self.dp
            .set_ring(group, &ring)
            .unwrap_or_else(|e| panic!("writing the ring of group {group}: {e}"));
        self.tables.rings.insert(group, ring);
    }

    pub fn backend_counters(&self, group: u32, backend: u32) -> BackendCounters {
        self.dp
            .backend_counters(group, backend)
            .unwrap_or_else(|e| {
                panic!("reading counters of backend {backend} of group {group}: {e}")
            })
    }

    pub fn counters(&self, slot: u32) -> Counters {
        assert!(slot < STATS_SLOTS);
        self.dp
            .counters(slot)
            .unwrap_or_else(|e| panic!("reading counters of slot {slot}: {e}"))
    }

    /// Runs `frame` through the kernel; returns (verdict, the reference's decision).
    pub fn run(&mut self, frame: &[u8]) -> (u32, Decision) {
        let verdict = self
            .dp
            .test_run(frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", frame.len()));
        (verdict, lb_common::reference::classify(frame, &self.tables))
    }
}

pub fn ip(s: &str) -> IpAddr {
    crate::packet::parse(s)
}
