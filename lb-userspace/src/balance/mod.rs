//! Choosing a backend for each request.
//!
//! A [`Balancer`] serves one backend group, shared by every task that proxies to it. Each pick
//! returns a [`Pick`] that counts as one request in flight on its backend until it is dropped;
//! weighted least connections chooses by those counts, and they are reported for every
//! algorithm.
pub mod source_hash;
pub mod wlc;
pub mod wrr;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use source_hash::SourceHash;
use wlc::Wlc;
use wrr::SmoothWrr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    WeightedRoundRobin,
    WeightedLeastConnections,
    SourceIpHash,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::WeightedLeastConnections => "weighted-least-connections",
            Algorithm::SourceIpHash => "source-ip-hash",
        }
    }
}

enum Strategy {
    Wrr(SmoothWrr),
    Wlc(Wlc),
    SourceHash(SourceHash),
}

/// Backend selection for one group of backends, each with a weight of 0 to 100 (0: receives
/// no new requests).
pub struct Balancer {
    algorithm: Algorithm,
    strategy: Strategy,
    /// Requests in flight per backend, shared with the [`Pick`]s that release them.
    active: Arc<[AtomicU32]>,
}

/// A chosen backend. Holding it counts one request in flight on that backend; keep it until
/// the response has been sent in full.
#[derive(Debug)]
pub struct Pick {
    pub index: usize,
    active: Arc<[AtomicU32]>,
}

impl Drop for Pick {
    fn drop(&mut self) {
        if let Some(a) = self.active.get(self.index) {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Balancer {
    pub fn new(algorithm: Algorithm, backends: &[(SocketAddr, u8)]) -> Self {
        let weights: Vec<u8> = backends.iter().map(|(_, w)| *w).collect();
        let strategy = match algorithm {
            Algorithm::WeightedRoundRobin => Strategy::Wrr(SmoothWrr::new(&weights)),
            Algorithm::WeightedLeastConnections => Strategy::Wlc(Wlc::new(&weights)),
            Algorithm::SourceIpHash => Strategy::SourceHash(SourceHash::new(backends)),
        };
        Balancer {
            algorithm,
            strategy,
            active: backends.iter().map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// A backend for a request from `client`, never one listed in `exclude` (backends this
    /// request already tried) nor one of weight 0. None when nothing is left.
    pub fn pick(&self, client: IpAddr, exclude: &[usize]) -> Option<Pick> {
        let index = match &self.strategy {
            Strategy::Wrr(wrr) => self.count(wrr.pick_where(|i| !exclude.contains(&i))?),
            // Counted by `Wlc::pick` itself, under the lock its choice was made with.
            Strategy::Wlc(wlc) => wlc.pick(&self.active, exclude)?,
            Strategy::SourceHash(sh) => self.count(sh.pick(client, exclude)?),
        };
        Some(Pick {
            index,
            active: Arc::clone(&self.active),
        })
    }

    fn count(&self, index: usize) -> usize {
        if let Some(a) = self.active.get(index) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        index
    }

    /// Requests currently in flight on backend `index` (picked and not yet dropped); 0 for an
    /// index outside the group.
    pub fn active(&self, index: usize) -> u32 {
        self.active
            .get(index)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The Maglev table for [`Algorithm::SourceIpHash`], for the XDP program; None for the
    /// other algorithms.
    pub fn maglev_table(&self) -> Option<&[u32]> {
        match &self.strategy {
            Strategy::SourceHash(sh) => Some(sh.table()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const ALL: [Algorithm; 3] = [
        Algorithm::WeightedRoundRobin,
        Algorithm::WeightedLeastConnections,
        Algorithm::SourceIpHash,
    ];

    fn group(weights: &[u8]) -> Vec<(SocketAddr, u8)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)), *w))
            .collect()
    }

    #[test]
    fn balancer_and_pick_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Balancer>();
        shareable::<Pick>();
    }

    #[test]
    fn names_are_the_cli_spellings() {
        let names: Vec<&str> = ALL.iter().map(|a| a.name()).collect();
        assert_eq!(
            names,
            [
                "weighted-round-robin",
                "weighted-least-connections",
                "source-ip-hash"
            ]
        );
        for a in ALL {
            assert_eq!(Balancer::new(a, &group(&[1])).algorithm(), a);
        }
    }

    #[test]
    fn picks_count_in_flight_until_dropped() {
        for a in ALL {
            let b = Balancer::new(a, &group(&[1, 1]));
            let p1 = b.pick(CLIENT, &[]).expect("weights > 0");
            let p2 = b.pick(CLIENT, &[p1.index]).expect("one backend left");
            assert_ne!(p1.index, p2.index, "{a:?}");
            let p3 = b.pick(CLIENT, &[]).expect("weights > 0");
            let mut expected = [0, 0];
            for p in [&p1, &p2, &p3] {
                expected[p.index] += 1;
            }
            assert_eq!([b.active(0), b.active(1)], expected, "{a:?}");
            drop((p1, p3));
            assert_eq!(b.active(p2.index), 1, "{a:?}");
            assert_eq!(b.active(1 - p2.index), 0, "{a:?}");
            drop(p2);
            assert_eq!([b.active(0), b.active(1), b.active(7)], [0, 0, 0], "{a:?}");
        }
    }

    #[test]
    fn weight_zero_and_excluded_backends_are_never_picked() {
        for a in ALL {
            let b = Balancer::new(a, &group(&[0, 2, 1, 0]));
            for i in 0..200u32 {
                let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
                let p = b.pick(client, &[2]).expect("backend 1 is left");
                assert_eq!(p.index, 1, "{a:?}");
                let p = b.pick(client, &[]).expect("weights > 0");
                assert!(p.index == 1 || p.index == 2, "{a:?}");
            }
            assert!(b.pick(CLIENT, &[1, 2]).is_none(), "{a:?}");
            assert!(
                Balancer::new(a, &group(&[0, 0]))
                    .pick(CLIENT, &[])
                    .is_none()
            );
            assert!(Balancer::new(a, &[]).pick(CLIENT, &[]).is_none());
        }
    }

    #[test]
    fn round_robin_splits_by_weight_with_and_without_exclusion() {
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &group(&[1, 3]));
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[b.pick(CLIENT, &[]).expect("weights > 0").index] += 1;
        }
        assert_eq!(counts, [100, 300]);

        // Excluding backend 0 leaves the other two sharing by weight, 1:2.
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &group(&[5, 1, 2]));
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[b.pick(CLIENT, &[0]).expect("weights > 0").index] += 1;
        }
        assert_eq!(counts, [0, 100, 200]);
        // Backend 0 kept its score while excluded; without exclusions the split is 5:1:2 again.
        let mut counts = [0; 3];
        for _ in 0..800 {
            counts[b.pick(CLIENT, &[]).expect("weights > 0").index] += 1;
        }
        assert_eq!(counts, [500, 100, 200]);
    }

    #[test]
    fn only_source_ip_hash_has_a_maglev_table() {
        let b = Balancer::new(Algorithm::SourceIpHash, &group(&[1, 1]));
        assert_eq!(
            b.maglev_table().map(<[u32]>::len),
            Some(lb_common::maglev::TABLE_SIZE as usize)
        );
        assert!(
            Balancer::new(Algorithm::WeightedRoundRobin, &group(&[1]))
                .maglev_table()
                .is_none()
        );
    }
}
