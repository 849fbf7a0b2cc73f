//! A configuration applied to the kernel as one change (`Dataplane::apply_config`): backends
//! keep their slots across reorders, removals and additions, so clients whose backend stays
//! keep it and flows stay; and a change that fails part-way leaves the kernel as it was.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use edgelb::acl::AclMode;
use edgelb::dataplane::{BackendEntry, Dataplane, L4Group, L4ListenerSpec, ListenerRule};
use edgelb_tests::dataplane_fixture::rule;
use edgelb_tests::packet::{Frame, TCP};
use edgelb_tests::privilege::root_or_skip;
use ipnet::IpNet;
use lb_common::maglev::{build_table, source_hash, table_slot};
use lb_common::{MAX_ACL_ENTRIES, XDP_DROP, XDP_TX, v4_mapped};

const VIP: &str = "10.100.0.1";
const MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 4];

fn group(name: &str, backends: &[&str]) -> L4Group {
    let addrs: Vec<SocketAddr> = backends
        .iter()
        .map(|b| b.parse().expect("test backend"))
        .collect();
    let keys: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let weighted: Vec<(&[u8], u32)> = keys.iter().map(|k| (k.as_bytes(), 1)).collect();
    L4Group {
        name: name.to_string(),
        backends: addrs
            .iter()
            .map(|a| {
                let entry = BackendEntry {
                    addr: a.ip(),
                    mac: MAC,
                    alive: true,
                    egress: Default::default(),
                };
                (*a, entry)
            })
            .collect(),
        ring: Some(Arc::new(build_table(&weighted))),
    }
}

fn listener(group: &str, flow_secs: u32) -> L4ListenerSpec {
    L4ListenerSpec {
        id: 1,
        group: group.to_string(),
        flow_secs,
        hash_src_port: false,
    }
}

fn rules(prefixes: Vec<IpNet>) -> Vec<ListenerRule> {
    let mut r = rule(1, &format!("{VIP}:8080"), TCP, AclMode::Blacklist, &[]);
    r.prefixes = prefixes;
    vec![r]
}

/// Where the kernel sends each of `clients` (a TCP segment from `10.0.x.y:40000` to the
/// VIP): the outer destination, or None if the frame is not forwarded.
fn destinations(dp: &mut Dataplane, clients: u16) -> Vec<Option<IpAddr>> {
    (0..clients)
        .map(|i| {
            let src = format!("10.0.{}.{}", i / 250, i % 250 + 1);
            let frame = Frame::tcp(&src, VIP, 8080).bytes();
            let (verdict, out) = dp.test_run_output(&frame).expect("BPF_PROG_TEST_RUN");
            match verdict {
                XDP_TX => {
                    let dst: [u8; 4] = out[30..34].try_into().expect("an outer IPv4 header");
                    Some(IpAddr::from(dst))
                }
                XDP_DROP => None,
                v => panic!("client {src}: verdict {v}"),
            }
        })
        .collect()
}

/// Where `group`'s ring sends each client of [`destinations`].
fn expected(group: &L4Group, clients: u16) -> Vec<Option<IpAddr>> {
    let ring = group.ring.as_ref().expect("a ring");
    (0..clients)
        .map(|i| {
            let src = v4_mapped([10, 0, (i / 250) as u8, (i % 250 + 1) as u8]);
            let entry = ring[table_slot(source_hash(&src)) as usize];
            Some(group.backends[entry as usize].0.ip())
        })
        .collect()
}

#[test]
fn backends_keep_their_slots_and_a_failed_change_leaves_the_kernel_as_it_was() {
    if !root_or_skip("backends_keep_their_slots_and_a_failed_change_leaves_the_kernel_as_it_was") {
        return;
    }
    let mut dp = Dataplane::load().expect("loading the XDP program");
    let first = group("web", &["10.3.1.2:8080", "10.3.2.2:8080", "10.3.3.2:8080"]);
    dp.apply_config(&rules(Vec::new()), &[listener("web", 0)], &[first])
        .expect("first configuration");
    let slot = dp.slots().group("web").expect("a slot for web");
    let index = |dp: &Dataplane, b: &str| {
        dp.slots()
            .backend("web", b.parse().expect("address"))
            .expect("an index")
    };
    let before = destinations(&mut dp, 2000);
    assert!(before.iter().all(Option::is_some));

    // Reordered, one removed, one added: the two kept backends keep their indices.
    let kept_1 = index(&dp, "10.3.1.2:8080");
    let kept_3 = index(&dp, "10.3.3.2:8080");
    let gone = index(&dp, "10.3.2.2:8080");
    let second = group("web", &["10.3.4.2:8080", "10.3.3.2:8080", "10.3.1.2:8080"]);
    dp.apply_config(
        &rules(Vec::new()),
        &[listener("web", 0)],
        std::slice::from_ref(&second),
    )
    .expect("second configuration");
    assert_eq!(dp.slots().group("web"), Some(slot));
    assert_eq!(index(&dp, "10.3.1.2:8080"), kept_1);
    assert_eq!(index(&dp, "10.3.3.2:8080"), kept_3);
    // A new backend takes an index never used before, not the removed backend's.
    let new = index(&dp, "10.3.4.2:8080");
    assert!(![kept_1, kept_3, gone].contains(&new), "{new}");
    // Every client goes where the new ring, built over the new order, says: the ring's
    // positions were translated to the backends' kept indices.
    let after = destinations(&mut dp, 2000);
    assert_eq!(after, expected(&second, 2000));
    let removed: IpAddr = "10.3.2.2".parse().expect("address");
    assert!(before.contains(&Some(removed)) && !after.contains(&Some(removed)));
    let generation = dp.ring_generation(slot).expect("generation");

    // A change refused part-way (more prefixes than the ACL trie holds, found after the new
    // group state was staged): nothing the program reads changes.
    let too_many: Vec<IpNet> = (0..=MAX_ACL_ENTRIES)
        .map(|i| {
            let a = [11, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            IpNet::new(IpAddr::from(a), 32).expect("prefix")
        })
        .collect();
    let third = group("web", &["10.3.5.2:8080"]);
    let err = dp
        .apply_config(
            &rules(too_many),
            &[listener("web", 30)],
            std::slice::from_ref(&third),
        )
        .expect_err("the ACL trie cannot hold the third configuration");
    assert!(
        err.to_string()
            .contains("need 262145 IPv4 prefixes in the XDP program"),
        "{err}"
    );
    assert_eq!(dp.ring_generation(slot).expect("generation"), generation);
    assert_eq!(destinations(&mut dp, 2000), after);
    // The blacklist was put back empty: a source inside the refused list still passes.
    let frame = Frame::tcp("11.0.0.7", VIP, 8080).bytes();
    assert_eq!(dp.test_run(&frame).expect("run"), XDP_TX);

    // And the same change without the oversized list applies.
    dp.apply_config(&rules(Vec::new()), &[listener("web", 30)], &[third])
        .expect("third configuration");
    let only = Some("10.3.5.2".parse().expect("address"));
    assert!(destinations(&mut dp, 50).iter().all(|d| *d == only));
}
