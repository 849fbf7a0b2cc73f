//! Source IP hash: each client address keeps going to the same backend, through the Maglev table
//! of [`lb_common::maglev`], so that changing the group moves only a small share of clients
//! and the XDP program can make the same choice from the same table.
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use lb_common::maglev::{build_table, source_hash, table_slot};

pub struct SourceHash {
    keys: Vec<String>,
    /// [`lb_common::maglev::TABLE_SIZE`] backend indices, or all `NO_BACKEND`; replaced whole
    /// when health changes, so a reader always sees one complete table.
    table: RwLock<Arc<Vec<u32>>>,
    /// Held while a rebuild reads the weights and replaces the table.
    rebuilding: std::sync::Mutex<()>,
}

impl SourceHash {
    /// A backend's identity in the table is its address as text ("10.0.0.1:8080",
    /// "[2001:db8::1]:443"), so that it keeps its clients whatever its place in the list.
    pub fn new(backends: &[(SocketAddr, u8)]) -> Self {
        let keys: Vec<String> = backends.iter().map(|(addr, _)| addr.to_string()).collect();
        let weights: Vec<u32> = backends.iter().map(|(_, w)| u32::from(*w)).collect();
        let table = build(&keys, &weights);
        SourceHash {
            keys,
            table: RwLock::new(Arc::new(table)),
            rebuilding: std::sync::Mutex::new(()),
        }
    }

    /// Rebuilds the table from the backends' current weights (0 for an unhealthy backend),
    /// read by `weights` once no other rebuild runs: two health changes at once then cannot
    /// leave the table of the one that read the weights first.
    pub fn rebuild(&self, weights: impl FnOnce() -> Vec<u32>) {
        let _one_at_a_time = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let table = Arc::new(build(&self.keys, &weights()));
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    /// The Maglev table, as the XDP program reads it.
    pub fn table(&self) -> Arc<Vec<u32>> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The backend of `client`, or when that one is not `eligible`, the backend of the first
    /// following table entry (wrapping) that is. Entries are shared by weight, so the
    /// fallback also goes by weight, and it is the same for every request of this client.
    pub fn pick(&self, client: IpAddr, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        // Spares a walk over the whole table when every backend has been tried.
        if !(0..self.keys.len()).any(&eligible) {
            return None;
        }
        let addr = match client {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let table = self.table();
        let (before, from) = table.split_at_checked(table_slot(source_hash(&addr)) as usize)?;
        from.iter()
            .chain(before)
            .map(|entry| *entry as usize)
            .find(|i| eligible(*i))
    }
}

fn build(keys: &[String], weights: &[u32]) -> Vec<u32> {
    let input: Vec<(&[u8], u32)> = keys
        .iter()
        .zip(weights)
        .map(|(key, weight)| (key.as_bytes(), *weight))
        .collect();
    build_table(&input)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SourceHash {
        fn pick_excluding(&self, client: IpAddr, exclude: &[usize]) -> Option<usize> {
            // Weight-0 backends own no table entry; the bound rejects NO_BACKEND.
            self.pick(client, |i| i < self.keys.len() && !exclude.contains(&i))
        }
    }
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn backends(weights: &[u8]) -> Vec<(SocketAddr, u8)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)), *w))
            .collect()
    }

    /// Client addresses from a fixed-seed xorshift64*, half IPv4 and half IPv6.
    fn clients(n: usize) -> Vec<IpAddr> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|i| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
                if i % 2 == 0 {
                    IpAddr::V4(Ipv4Addr::from((r >> 32) as u32))
                } else {
                    IpAddr::V6(Ipv6Addr::from(u128::from(r) << 64 | u128::from(!r)))
                }
            })
            .collect()
    }

    #[test]
    fn a_client_keeps_its_backend() {
        let sh = SourceHash::new(&backends(&[1, 1, 1, 1]));
        for c in clients(100) {
            let first = sh.pick_excluding(c, &[]);
            assert!(first.is_some());
            assert!((0..10).all(|_| sh.pick_excluding(c, &[]) == first));
        }
        // An IPv4 client is the same client when it arrives as IPv4-mapped IPv6.
        let v4 = Ipv4Addr::new(198, 51, 100, 7);
        assert_eq!(
            sh.pick_excluding(IpAddr::V4(v4), &[]),
            sh.pick_excluding(IpAddr::V6(v4.to_ipv6_mapped()), &[])
        );
    }

    #[test]
    fn clients_split_by_weight() {
        let sh = SourceHash::new(&backends(&[1, 2, 3, 4, 0]));
        let mut counts = [0u32; 5];
        for c in clients(10_000) {
            counts[sh.pick_excluding(c, &[]).expect("weights > 0")] += 1;
        }
        let shares: Vec<f64> = counts.iter().map(|c| f64::from(*c) / 10_000.0).collect();
        println!("source-hash shares for weights 1,2,3,4,0: {shares:?}");
        // 10,000 samples put about 3 standard deviations at 1.2%; the table itself is exact.
        let mut entries = [0u32; 5];
        for e in sh.table().iter() {
            entries[*e as usize] += 1;
        }
        for ((share, entries), expected) in
            shares.iter().zip(entries).zip([0.1, 0.2, 0.3, 0.4, 0.0])
        {
            assert!((share - expected).abs() < 0.02, "{shares:?}");
            assert!(
                (f64::from(entries) / 65537.0 - expected).abs() < 0.001,
                "{entries}"
            );
        }
    }

    #[test]
    fn excluding_a_backend_moves_only_its_clients() {
        let sh = SourceHash::new(&backends(&[1, 1, 1, 1]));
        let all = clients(2000);
        let first: Vec<usize> = all
            .iter()
            .map(|c| sh.pick_excluding(*c, &[]).expect("w > 0"))
            .collect();
        for (c, f) in all.iter().zip(&first) {
            let retry = sh.pick_excluding(*c, &[*f]).expect("three backends left");
            assert_ne!(retry, *f);
            // Deterministic: the same retry target every time.
            assert_eq!(sh.pick_excluding(*c, &[*f]), Some(retry));
        }
        // Clients of other backends are not affected by an exclusion of backend 2.
        for (c, f) in all.iter().zip(&first).filter(|(_, f)| **f != 2) {
            assert_eq!(sh.pick_excluding(*c, &[2]), Some(*f));
        }
        assert_eq!(sh.pick_excluding(all[0], &[0, 1, 2, 3]), None);
        assert_eq!(
            SourceHash::new(&backends(&[0, 0])).pick_excluding(all[0], &[]),
            None
        );
        assert_eq!(SourceHash::new(&[]).pick_excluding(all[0], &[]), None);
    }

    #[test]
    fn removing_a_backend_moves_few_other_clients() {
        let ten = backends(&[1; 10]);
        let nine: Vec<(SocketAddr, u8)> = ten
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 4)
            .map(|(_, b)| *b)
            .collect();
        let (before, after) = (SourceHash::new(&ten), SourceHash::new(&nine));
        let (mut others, mut moved) = (0u32, 0u32);
        for c in clients(10_000) {
            let was = ten[before.pick_excluding(c, &[]).expect("w > 0")].0;
            let now = nine[after.pick_excluding(c, &[]).expect("w > 0")].0;
            if was == ten[4].0 {
                continue;
            }
            others += 1;
            if now != was {
                moved += 1;
            }
        }
        let fraction = f64::from(moved) / f64::from(others);
        println!(
            "source-hash: removing 1 of 10 moved {moved}/{others} other clients ({fraction:.4})"
        );
        assert!(fraction < 0.05, "{fraction}");
    }
}
