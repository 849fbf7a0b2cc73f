//! The real XDP program loaded in the kernel, with the reference classifier's view of the same
//! rules beside it, for packet-level tests through BPF_PROG_TEST_RUN.
use std::net::IpAddr;

use edgelb::acl::AclMode;
use edgelb::dataplane::{BackendEntry, Dataplane, L4Groups, L4Listeners, ListenerRule, SynCookies};
use ipnet::IpNet;
use lb_common::reference::{AclPrefix, Decision, Tables};
use lb_common::{
    BackendCounters, Counters, MAX_BACKENDS_PER_GROUP, STATS_SLOTS, backend_stats_slot,
    syn_stamp_slot,
};

/// A listener rule from readable parts: `rule(1, "10.0.0.1:443", TCP, Whitelist, &["10.0.0.0/8"])`.
pub fn rule(id: u32, addr: &str, proto: u8, mode: AclMode, prefixes: &[&str]) -> ListenerRule {
    ListenerRule {
        id,
        addr: addr
            .parse()
            .unwrap_or_else(|_| panic!("test listener address {addr:?}")),
        proto,
        mode,
        limits: Default::default(),
        syn_cookies: Default::default(),
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
    reference_tables_l4(rules, &edgelb::dataplane::rules::l4_listeners(l4_groups))
}

/// The reference classifier's tables for rules applied with L4 listeners.
pub fn reference_tables_l4(rules: &[ListenerRule], l4: &L4Listeners) -> Tables {
    let mut t = Tables {
        ingress_ifindex: LOOPBACK_IFINDEX,
        ..Tables::default()
    };
    for r in rules {
        let info = match l4.get(&r.id) {
            Some(l) => r.info_l4(l),
            None => r.info(),
        };
        t.listeners.insert(r.key(), info);
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

/// The interface BPF_PROG_TEST_RUN runs frames in on: the namespace's loopback.
pub const LOOPBACK_IFINDEX: u32 = 1;

pub struct Fixture {
    pub dp: Dataplane,
    pub tables: Tables,
    /// Listener ids whose counters the fixture compares (plus slot 0).
    pub slots: Vec<u32>,
}

impl Fixture {
    pub fn load() -> Self {
        let dp = Dataplane::load().unwrap_or_else(|e| panic!("loading the XDP program: {e}"));
        let tables = Tables {
            encap: dp
                .encap_source()
                .unwrap_or_else(|e| panic!("reading ENCAP: {e}")),
            ingress_ifindex: LOOPBACK_IFINDEX,
            ..Tables::default()
        };
        Fixture {
            dp,
            tables,
            slots: vec![0],
        }
    }

    pub fn apply(&mut self, rules: &[ListenerRule]) {
        self.apply_in_groups(rules, &L4Groups::new());
    }

    /// Applies `rules` with the listeners of `l4_groups` balanced in XDP; the rings stay.
    pub fn apply_in_groups(&mut self, rules: &[ListenerRule], l4_groups: &L4Groups) {
        self.apply_l4(rules, &edgelb::dataplane::rules::l4_listeners(l4_groups));
    }

    /// Applies `rules` with the listeners of `l4` forwarded in XDP; rings, backends, flows and
    /// the outer source prefixes stay.
    pub fn apply_l4(&mut self, rules: &[ListenerRule], l4: &L4Listeners) {
        self.dp
            .apply_l4(rules, l4)
            .unwrap_or_else(|e| panic!("writing the maps: {e}"));
        let fresh = reference_tables_l4(rules, l4);
        // The daemon clears the stamps of listeners with SYN cookies whenever it applies.
        for r in rules.iter().filter(|r| r.syn_cookies != SynCookies::Off) {
            for v4 in [true, false] {
                self.tables.syn_stamps.remove(&syn_stamp_slot(r.id, v4));
            }
        }
        self.tables.listeners = fresh.listeners;
        self.tables.acl = fresh.acl;
        self.slots = std::iter::once(0)
            .chain(rules.iter().map(|r| r.id))
            .collect();
        self.slots.sort_unstable();
        self.slots.dedup();
    }

    /// Makes listener `id`'s last stamp for the family `ns` (kernel monotonic clock), in the
    /// kernel and in the reference.
    pub fn set_syn_stamp(&mut self, id: u32, v4: bool, ns: u64) {
        self.dp
            .set_syn_stamp(id, v4, ns)
            .unwrap_or_else(|e| panic!("writing the SYN stamp of listener {id}: {e}"));
        self.tables.syn_stamps.insert(syn_stamp_slot(id, v4), ns);
    }

    /// Makes `ring` the live Maglev ring of `group`, in the kernel and in the reference.
    pub fn set_ring(&mut self, group: u32, ring: Vec<u32>) {
        self.dp
            .set_ring(group, &ring)
            .unwrap_or_else(|e| panic!("writing the ring of group {group}: {e}"));
        self.tables.rings.insert(group, ring);
    }

    /// Makes `backends` the backends of `group`, in the kernel and in the reference (which
    /// takes the kernel's entries, epochs included, as read back).
    pub fn set_backends(&mut self, group: u32, backends: &[BackendEntry]) {
        self.dp
            .set_backends(group, backends)
            .unwrap_or_else(|e| panic!("writing the backends of group {group}: {e}"));
        for b in 0..MAX_BACKENDS_PER_GROUP {
            let info = self
                .dp
                .backend(group, b)
                .unwrap_or_else(|e| panic!("reading backend {b} of group {group}: {e}"));
            self.tables
                .backends
                .insert(backend_stats_slot(group, b), info);
        }
    }

    /// Gives `group` every backend the kernel can hold, each alive with a next hop (IPv4
    /// `10.1.<i / 256>.<i % 256>`), so that every ring entry forwards.
    pub fn serve_group(&mut self, group: u32) {
        let all: Vec<BackendEntry> = (0..MAX_BACKENDS_PER_GROUP)
            .map(|i| BackendEntry {
                addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                    10,
                    1,
                    (i / 256) as u8,
                    i as u8,
                )),
                mac: [0x02, 0xbe, 0, 0, 0, 1],
                alive: true,
                egress: Default::default(),
            })
            .collect();
        self.set_backends(group, &all);
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
        let (verdict, _, decision, _) = self.run_output(frame);
        (verdict, decision)
    }

    /// Runs `frame` through the kernel and the reference; returns the kernel's verdict and
    /// output frame, and the reference's decision and output frame.
    pub fn run_output(&mut self, frame: &[u8]) -> (u32, Vec<u8>, Decision, Vec<u8>) {
        let (verdict, out) = self
            .dp
            .test_run_output(frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", frame.len()));
        let (decision, expected) = lb_common::reference::run(frame, &mut self.tables);
        (verdict, out, decision, expected)
    }
}

pub fn ip(s: &str) -> IpAddr {
    crate::packet::parse(s)
}
