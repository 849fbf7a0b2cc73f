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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use source_hash::SourceHash;
use wlc::Wlc;
use wrr::SmoothWrr;

/// `--algorithm`: its words are the flag's and the file key's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// Smooth weighted round robin.
    #[value(name = "weighted-round-robin", alias = "wrr")]
    WeightedRoundRobin,
    /// Fewest in-flight requests relative to weight.
    #[value(name = "weighted-least-connections", alias = "wlc")]
    WeightedLeastConnections,
    /// Maglev consistent hashing of the client address.
    #[value(name = "source-ip-hash", alias = "source-ip")]
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

/// Configured weights are scaled by this inside the balancer, so that slow start can hand a
/// backend a small fraction of its weight.
const WEIGHT_UNIT: i64 = 1000;
/// Where slow start begins: this share (per mille) of the full weight.
const SLOW_START_FLOOR: i64 = 10;

/// One backend's shared state. Health is written only by the group's health checker.
struct BackendState {
    addr: SocketAddr,
    key: String,
    weight: u8,
    healthy: AtomicBool,
    /// Whether a health check has passed since this balancer was made: until then "healthy"
    /// is only the starting presumption.
    passed: AtomicBool,
    /// Milliseconds since the balancer's epoch when the backend last became healthy;
    /// u64::MAX: healthy since the start (no slow start).
    up_since: AtomicU64,
    /// The last health transition and why (status page); None while the starting
    /// presumption holds. Locked only on transitions and status reads, never per request.
    transition: Mutex<Option<Transition>>,
}

/// A backend's last change of health, as the health checker saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub healthy: bool,
    pub at: SystemTime,
    /// `connection refused`, `status 503`, `passed 2 tcp checks in a row`...
    pub reason: String,
}

/// Backend selection for one group of backends, each with a weight of 0 to 100 (0: receives
/// no new requests), a health state, and optionally slow start.
pub struct Balancer {
    algorithm: Algorithm,
    strategy: Strategy,
    backends: Vec<BackendState>,
    slow_start: Option<Duration>,
    epoch: Instant,
    /// Requests in flight per backend, shared with the [`Pick`]s that release them.
    active: Arc<[AtomicU32]>,
    /// Held by a health check's write and by [`Balancer::retire_checks`], which run on
    /// different threads: once the checks are retired, none of their writes is still going on.
    checks: Mutex<()>,
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
    /// Every backend starts healthy: traffic flows at once, and the health checker takes
    /// away what fails.
    pub fn new(algorithm: Algorithm, backends: &[(SocketAddr, u8)]) -> Self {
        let strategy = match algorithm {
            Algorithm::WeightedRoundRobin => Strategy::Wrr(SmoothWrr::new(backends.len())),
            Algorithm::WeightedLeastConnections => Strategy::Wlc(Wlc::new(backends.len())),
            Algorithm::SourceIpHash => Strategy::SourceHash(SourceHash::new(backends)),
        };
        Balancer {
            algorithm,
            strategy,
            backends: backends
                .iter()
                .map(|(addr, weight)| BackendState {
                    addr: *addr,
                    key: addr.to_string(),
                    weight: *weight,
                    healthy: AtomicBool::new(true),
                    passed: AtomicBool::new(false),
                    up_since: AtomicU64::new(u64::MAX),
                    transition: Mutex::new(None),
                })
                .collect(),
            slow_start: None,
            checks: Mutex::new(()),
            epoch: Instant::now(),
            active: backends.iter().map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// This balancer, for a group being reloaded, with what `old` knew of the backends both
    /// have (the same address): health, whether a check has passed, when each came up and its
    /// last transition. A reload that adds a backend then does not put a failing one back in
    /// until its checks pass. Backends new to the group ramp up from now under slow start, as
    /// a returning backend does (at first start nothing ramps).
    pub fn carrying_over(mut self, old: &Balancer) -> Self {
        self.epoch = old.epoch;
        let now = self.now_ms();
        for b in &mut self.backends {
            if !old.backends.iter().any(|o| o.addr == b.addr) {
                *b.up_since.get_mut() = now;
            }
        }
        self.adopt_health(old);
        self
    }

    /// Backends that become healthy ramp up from a small share to their full weight over
    /// `duration` (round robin and least connections).
    pub fn with_slow_start(mut self, duration: Option<Duration>) -> Self {
        self.slow_start = duration.filter(|d| !d.is_zero());
        self
    }

    /// A backend for a request from `client`, never one listed in `exclude` (backends this
    /// request already tried), an unhealthy one, or one of weight 0. None when nothing is left.
    pub fn pick(&self, client: IpAddr, exclude: &[usize]) -> Option<Pick> {
        let now = self.ramp_clock();
        let weight = |i: usize| {
            if exclude.contains(&i) {
                0
            } else {
                self.effective(i, now)
            }
        };
        let index = match &self.strategy {
            Strategy::Wrr(wrr) => self.count(wrr.pick(weight)?),
            // Counted by `Wlc::pick` itself, under the lock its choice was made with.
            Strategy::Wlc(wlc) => wlc.pick(&self.active, weight)?,
            Strategy::SourceHash(sh) => self.count(sh.pick(client, |i| weight(i) > 0)?),
        };
        Some(self.pick_of(index))
    }

    /// Backend `index` itself, if it may take a request now (sticky sessions).
    pub fn pick_backend(&self, index: usize, exclude: &[usize]) -> Option<Pick> {
        (!exclude.contains(&index) && self.effective(index, self.ramp_clock()) > 0)
            .then(|| self.pick_of(self.count(index)))
    }

    fn pick_of(&self, index: usize) -> Pick {
        Pick {
            index,
            active: Arc::clone(&self.active),
        }
    }

    fn count(&self, index: usize) -> usize {
        if let Some(a) = self.active.get(index) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        index
    }

    /// The clock slow start reads; without slow start no pick needs the time.
    fn ramp_clock(&self) -> u64 {
        if self.slow_start.is_some() {
            self.now_ms()
        } else {
            0
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// The weight backend `i` has now, in thousandths of a configured weight unit: 0 when
    /// unhealthy, ramping during slow start.
    fn effective(&self, i: usize, now_ms: u64) -> i64 {
        let Some(b) = self.backends.get(i) else {
            return 0;
        };
        if !b.healthy.load(Ordering::Relaxed) {
            return 0;
        }
        let full = i64::from(b.weight) * WEIGHT_UNIT;
        let (Some(ramp), up) = (self.slow_start, b.up_since.load(Ordering::Relaxed)) else {
            return full;
        };
        if up == u64::MAX || now_ms >= up + ramp.as_millis() as u64 {
            return full;
        }
        let per_mille = ((now_ms - up) * 1000 / (ramp.as_millis().max(1) as u64)) as i64;
        full * per_mille.max(SLOW_START_FLOOR) / 1000
    }

    /// The share of its full weight backend `index` has now, 0.0-1.0 (status, tests).
    pub fn weight_share(&self, index: usize) -> f64 {
        let full = self
            .backends
            .get(index)
            .map_or(0, |b| i64::from(b.weight) * WEIGHT_UNIT);
        if full == 0 {
            return 0.0;
        }
        self.effective(index, self.ramp_clock()) as f64 / full as f64
    }

    /// Records a health transition; returns whether the backend's state changed. Called only
    /// by the group's health checker.
    pub fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        let Some(b) = self.backends.get(index) else {
            return false;
        };
        if b.healthy.swap(healthy, Ordering::Relaxed) == healthy {
            return false;
        }
        if healthy {
            b.up_since.store(self.now_ms(), Ordering::Relaxed);
        }
        if let Strategy::SourceHash(sh) = &self.strategy {
            sh.rebuild(|| self.hash_weights());
        }
        true
    }

    /// [`Balancer::set_healthy`], remembering why when the state changes (the status page
    /// shows the reason of the last transition).
    pub fn set_health(&self, index: usize, healthy: bool, reason: impl Into<String>) -> bool {
        if !self.set_healthy(index, healthy) {
            return false;
        }
        if let Some(b) = self.backends.get(index) {
            *b.transition.lock().unwrap_or_else(|p| p.into_inner()) = Some(Transition {
                healthy,
                at: SystemTime::now(),
                reason: reason.into(),
            });
        }
        true
    }

    /// [`Balancer::set_health`] by a health check that holds `live`: nothing changes once its
    /// checks are retired.
    pub fn set_health_from(
        &self,
        live: &AtomicBool,
        index: usize,
        healthy: bool,
        reason: impl Into<String>,
    ) -> bool {
        let _checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        live.load(Ordering::Relaxed) && self.set_health(index, healthy, reason)
    }

    /// [`Balancer::mark_passed`] by a health check that holds `live`.
    pub fn mark_passed_from(&self, live: &AtomicBool, index: usize) -> bool {
        let _checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        live.load(Ordering::Relaxed) && self.mark_passed(index)
    }

    /// Ends the writes of the checks holding `live`: when this returns, none is going on and
    /// none will come.
    pub fn retire_checks(&self, live: &AtomicBool) {
        let _checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        live.store(false, Ordering::Relaxed);
    }

    /// What `old` knew of the backends both have (the same address): health, whether a check
    /// has passed, when each came up, its last transition. At a reload's build
    /// ([`Balancer::carrying_over`]), and again once `old`'s checks are retired, for what they
    /// found in between. Whether the health of any backend changed.
    pub fn adopt_health(&self, old: &Balancer) -> bool {
        let mut changed = false;
        for b in &self.backends {
            let Some(o) = old.backends.iter().find(|o| o.addr == b.addr) else {
                continue;
            };
            let healthy = o.healthy.load(Ordering::Relaxed);
            changed |= b.healthy.swap(healthy, Ordering::Relaxed) != healthy;
            b.passed
                .store(o.passed.load(Ordering::Relaxed), Ordering::Relaxed);
            b.up_since
                .store(o.up_since.load(Ordering::Relaxed), Ordering::Relaxed);
            let transition = o
                .transition
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            *b.transition.lock().unwrap_or_else(|p| p.into_inner()) = transition;
        }
        if changed && let Strategy::SourceHash(sh) = &self.strategy {
            sh.rebuild(|| self.hash_weights());
        }
        changed
    }

    /// Backend `index`'s last health transition; None if it never changed.
    pub fn last_transition(&self, index: usize) -> Option<Transition> {
        self.backends
            .get(index)?
            .transition
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The share of the group's new requests (source-ip-hash: of its clients) backend `index`
    /// receives now, 0.0-1.0: its weight in effect over the sum of the group's. Unhealthy
    /// backends count 0, ramping ones their part (slow start does not move hashed clients).
    pub fn traffic_share(&self, index: usize) -> f64 {
        let weights: Vec<i64> = match self.strategy {
            Strategy::SourceHash(_) => self.hash_weights().into_iter().map(i64::from).collect(),
            _ => {
                let now = self.ramp_clock();
                (0..self.len()).map(|i| self.effective(i, now)).collect()
            }
        };
        let total: i64 = weights.iter().sum();
        match weights.get(index) {
            Some(w) if total > 0 => *w as f64 / total as f64,
            _ => 0.0,
        }
    }

    /// Records that a check of backend `index` passed; true the first time.
    pub fn mark_passed(&self, index: usize) -> bool {
        self.backends
            .get(index)
            .is_some_and(|b| !b.passed.swap(true, Ordering::Relaxed))
    }

    /// Whether a check of backend `index` has passed since the balancer was made.
    pub fn has_passed(&self, index: usize) -> bool {
        self.backends
            .get(index)
            .is_some_and(|b| b.passed.load(Ordering::Relaxed))
    }

    pub fn is_healthy(&self, index: usize) -> bool {
        self.backends
            .get(index)
            .is_some_and(|b| b.healthy.load(Ordering::Relaxed))
    }

    /// Maglev weights: the configured weight of healthy backends (slow start does not apply:
    /// a hashed client must not move back and forth while a backend ramps up).
    fn hash_weights(&self) -> Vec<u32> {
        self.backends
            .iter()
            .map(|b| {
                if b.healthy.load(Ordering::Relaxed) {
                    u32::from(b.weight)
                } else {
                    0
                }
            })
            .collect()
    }

    /// The configured weight of backend `index` (0-100).
    pub fn weight(&self, index: usize) -> u8 {
        self.backends.get(index).map_or(0, |b| b.weight)
    }

    /// The index of the backend whose address prints as `addr`.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.key == addr)
    }

    pub fn addr(&self, index: usize) -> Option<SocketAddr> {
        self.backends.get(index).map(|b| b.addr)
    }

    /// The backend's address as text: its identity in Maglev tables and sticky cookies.
    pub fn key(&self, index: usize) -> Option<&str> {
        self.backends.get(index).map(|b| b.key.as_str())
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
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

    /// The Maglev table for [`Algorithm::SourceIpHash`] (healthy backends only), for the XDP
    /// program; None for the other algorithms.
    pub fn maglev_table(&self) -> Option<Arc<Vec<u32>>> {
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

    #[test]
    fn a_reloaded_balancer_takes_what_the_old_checks_found_until_they_were_retired() {
        let a: SocketAddr = "10.0.0.1:80".parse().expect("address");
        let b: SocketAddr = "10.0.0.2:80".parse().expect("address");
        let old = Balancer::new(Algorithm::SourceIpHash, &[(a, 1), (b, 1)]);
        let live = AtomicBool::new(true);
        // The reload builds its balancer (a list with a third backend) from the old one...
        let c: SocketAddr = "10.0.0.3:80".parse().expect("address");
        let fresh =
            Balancer::new(Algorithm::SourceIpHash, &[(a, 1), (b, 1), (c, 1)]).carrying_over(&old);
        // ...while the old checks go on: backend b fails one moment later.
        assert!(old.set_health_from(&live, 1, false, "tcp check failed"));
        assert!(
            fresh.is_healthy(1),
            "not seen by the copy made at the build"
        );
        old.retire_checks(&live);
        assert!(
            !old.set_health_from(&live, 0, false, "too late"),
            "a retired check changes nothing"
        );
        assert!(!old.mark_passed_from(&live, 0));
        assert!(old.is_healthy(0) && !old.has_passed(0));
        assert!(fresh.adopt_health(&old), "b's failure is taken over");
        assert!(!fresh.is_healthy(1) && fresh.is_healthy(0) && fresh.is_healthy(2));
        assert_eq!(
            fresh.last_transition(1).map(|t| t.reason),
            Some("tcp check failed".to_string())
        );
        // b gets none of the clients any more.
        for i in 0..200u8 {
            let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, i));
            assert_ne!(fresh.pick(client, &[]).map(|p| p.index), Some(1));
        }
        assert!(!fresh.adopt_health(&old), "nothing more to take");
    }

    #[test]
    fn a_reloaded_group_keeps_health_by_address_and_ramps_only_added_backends() {
        let old = Balancer::new(Algorithm::WeightedRoundRobin, &group(&[1, 1]))
            .with_slow_start(Some(Duration::from_secs(60)));
        assert!(old.set_health(1, false, "test"));
        // Backend 1 kept, backend 0 dropped, a third added (listed first now).
        let mut list = group(&[1, 1, 1]);
        list.swap(0, 2);
        list.truncate(2);
        let new = Balancer::new(Algorithm::WeightedRoundRobin, &list)
            .with_slow_start(Some(Duration::from_secs(60)))
            .carrying_over(&old);
        assert_eq!(new.addr(1), old.addr(1));
        assert!(
            !new.is_healthy(1),
            "the unhealthy backend came back with the reload"
        );
        assert!(new.last_transition(1).is_some_and(|t| !t.healthy));
        assert!(new.is_healthy(0));
        assert!(new.weight_share(0) < 0.1, "{}", new.weight_share(0));
        // At first start nothing ramps.
        assert_eq!(old.weight_share(0), 1.0);
    }

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
    fn traffic_shares_follow_weights_and_health_and_transitions_keep_their_reason() {
        for a in ALL {
            let b = Balancer::new(a, &group(&[3, 1]));
            assert_eq!(
                (b.traffic_share(0), b.traffic_share(1)),
                (0.75, 0.25),
                "{a:?}"
            );
            assert_eq!(b.last_transition(1), None);
            assert!(b.set_health(1, false, "connection refused"));
            assert!(
                !b.set_health(1, false, "again"),
                "no transition, no new reason"
            );
            assert_eq!(
                (b.traffic_share(0), b.traffic_share(1)),
                (1.0, 0.0),
                "{a:?}"
            );
            let t = b.last_transition(1).expect("a transition");
            assert_eq!(
                (t.healthy, t.reason.as_str()),
                (false, "connection refused")
            );
            assert!(b.set_health(0, false, "timeout after 2s"));
            assert_eq!(b.traffic_share(0), 0.0, "nothing healthy, nothing served");
        }
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
    fn unhealthy_backends_get_nothing_and_come_back_with_slow_start() {
        for a in ALL {
            let b =
                Balancer::new(a, &group(&[1, 1])).with_slow_start(Some(Duration::from_secs(60)));
            assert!(b.set_healthy(0, false));
            assert!(!b.set_healthy(0, false), "no change the second time");
            for i in 0..100u32 {
                let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
                assert_eq!(
                    b.pick(client, &[]).expect("backend 1 is up").index,
                    1,
                    "{a:?}"
                );
            }
            assert!(b.pick_backend(0, &[]).is_none(), "{a:?}");
            assert!(b.set_healthy(0, true));
            if a != Algorithm::SourceIpHash {
                // Just back: a 1% share, so nearly everything still goes to backend 1.
                let share = b.weight_share(0);
                assert!((0.0099..0.02).contains(&share), "{share}");
                let to_0 = (0..1000)
                    .filter(|_| b.pick(CLIENT, &[]).expect("up").index == 0)
                    .count();
                assert!(
                    to_0 <= 20,
                    "{a:?}: {to_0} of 1000 picks went to a backend just back"
                );
            }
        }
    }

    #[test]
    fn source_hash_table_follows_health() {
        let b = Balancer::new(Algorithm::SourceIpHash, &group(&[1, 1, 1]));
        let before = b.maglev_table().expect("source hash");
        assert!(before.contains(&1));
        b.set_healthy(1, false);
        let after = b.maglev_table().expect("source hash");
        assert!(!after.contains(&1));
        let moved = before
            .iter()
            .zip(after.iter())
            .filter(|(x, y)| x != y && **x != 1)
            .count();
        assert!(
            moved < 65537 / 20,
            "{moved} entries of healthy backends moved"
        );
    }

    #[test]
    fn only_source_ip_hash_has_a_maglev_table() {
        let b = Balancer::new(Algorithm::SourceIpHash, &group(&[1, 1]));
        assert_eq!(
            b.maglev_table().map(|t| t.len()),
            Some(lb_common::maglev::TABLE_SIZE as usize)
        );
        assert!(
            Balancer::new(Algorithm::WeightedRoundRobin, &group(&[1]))
                .maglev_table()
                .is_none()
        );
    }
}
