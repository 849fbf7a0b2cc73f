//! The reference classifier, which states what the XDP program must do with a frame: any
//! bytes get a decision without a panic, and a forwarded frame is the received one behind
//! exactly one outer IPv4 or IPv6 header.
#![no_main]
use std::sync::OnceLock;

use lb_common::reference::{self, Tables};
use lb_common::*;
use libfuzzer_sys::fuzz_target;

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Tables::default();
        let l4 = |id, group| ListenerInfo {
            id,
            acl: acl::ALL,
            l4_group: group,
            flow_secs: 60,
            l4_flags: 0,
            syn_interval_ns: 0,
            pps_interval_ns: 0,
            block_secs: 0,
            syn_cookies: 0,
            acl_set: id,
        };
        t.listeners
            .insert(ListenerKey::new(ANY, 443, IPPROTO_TCP), ListenerInfo { l4_group: NO_GROUP, syn_interval_ns: 250_000_000, pps_interval_ns: 1_000_000, block_secs: 30, syn_cookies: syn_cookies::WATCH | syn_cookies::ANSWER, ..l4(1, 0) });
        t.listeners.insert(ListenerKey::new(ANY, 80, IPPROTO_TCP), l4(2, 0));
        t.listeners.insert(ListenerKey::new(ANY, 53, IPPROTO_UDP), l4(3, 0));
        t.acl.push((1, reference::AclPrefix::V4([10, 0, 0, 0], 8)));
        // Listener 1 answers SYNs. Its IPv4 stamp is fresh: SYNs walk the option parser. Its
        // IPv6 one is due: SYNs also have their checksums checked.
        t.now_ns = SYN_STAMP_NS + 2;
        t.syn_stamps.insert(syn_stamp_slot(1, true), SYN_STAMP_NS);
        t.syn_stamps.insert(syn_stamp_slot(1, false), 1);
        let ring: Vec<u32> = (0..maglev::TABLE_SIZE).map(|i| i % 2).collect();
        t.rings.insert(0, ring);
        for (i, addr) in [v4_mapped([10, 2, 0, 2]), [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]]
            .into_iter()
            .enumerate()
        {
            t.backends.insert(
                backend_stats_slot(0, i as u32),
                BackendInfo {
                    addr,
                    next_hop_mac: [2, 0, 0, 0, 0, 1],
                    flags: backend_flags::ALIVE | if i == 1 { backend_flags::IPV6 } else { 0 },
                    epoch: 1,
                    ..BackendInfo::default()
                },
            );
        }
        t
    })
}

fuzz_target!(|frame: &[u8]| {
    let mut t = tables().clone();
    let (decision, out) = reference::run(frame, &mut t);
    if decision.outcome == Outcome::ForwardedL4 {
        let grown = out.len().saturating_sub(frame.len());
        assert!(grown == 20 || grown == 40, "grew by {grown}");
    }
});
