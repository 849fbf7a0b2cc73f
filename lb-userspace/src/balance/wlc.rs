//! Weighted least connections: each request goes to the backend with the fewest requests in
//! flight relative to its weight, so a slow backend (whose requests pile up) gets fewer new
//! ones than round robin would send it.
//!
//! Tie rule: among the backends sharing the lowest ratio, the pick is made by smooth weighted
//! round robin over just those backends (as nginx's `least_conn` does). Idle equal backends are
//! then taken in turn rather than always the first, and when requests finish before the next
//! one arrives (everyone always idle) the split follows the weights exactly.
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::wrr::smooth_step;

pub struct Wlc {
    /// Smooth round-robin scores for breaking ties. The lock also covers reading the loads and
    /// counting the pick, so that concurrent pickers see each other's picks instead of all
    /// piling onto the same idle backend.
    scores: Mutex<Vec<i64>>,
}

impl Wlc {
    pub fn new(backends: usize) -> Self {
        Wlc {
            scores: Mutex::new(vec![0; backends]),
        }
    }

    /// The least loaded backend relative to `weight(i)` (its weight now; 0: not eligible),
    /// with the pick already counted in `active` (one counter per backend).
    pub fn pick(&self, active: &[AtomicU32], weight: impl Fn(usize) -> i64) -> Option<usize> {
        // A poisoned lock only means another picker panicked mid-update; scores stay usable.
        let mut scores = self.scores.lock().unwrap_or_else(|p| p.into_inner());
        let load = |i: usize| {
            active
                .get(i)
                .map_or(0, |a| u64::from(a.load(Ordering::Relaxed)))
        };
        let weight = |i: usize| weight(i).max(0).unsigned_abs();

        // The lowest load/weight, as a fraction; compared by cross multiplication, which is
        // exact and cannot overflow (u32 loads times weights below 2^20).
        let mut least: Option<(u64, u64)> = None;
        for i in (0..scores.len()).filter(|i| weight(*i) > 0) {
            let (l, w) = (load(i), weight(i));
            if least.is_none_or(|(ll, lw)| l * lw < ll * w) {
                least = Some((l, w));
            }
        }
        let (ll, lw) = least?;
        // "At most" rather than "equal": loads may drop (a Pick dropped elsewhere) since the
        // scan above, but only grow under this lock, so the least loaded backends still
        // qualify and the set is never empty.
        let chosen = smooth_step(&mut scores, |i| {
            let w = weight(i);
            if w > 0 && load(i) * lw <= ll * w {
                w as i64
            } else {
                0
            }
        })?;
        if let Some(a) = active.get(chosen) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use crate::balance::{Algorithm, Balancer, Pick};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn wlc(weights: &[u8]) -> Balancer {
        let backends: Vec<(SocketAddr, u8)> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)), *w))
            .collect();
        Balancer::new(Algorithm::WeightedLeastConnections, &backends)
    }

    #[test]
    fn idle_equal_backends_are_taken_in_turn() {
        let b = wlc(&[1, 1, 1]);
        let seq: Vec<usize> = (0..6)
            .map(|_| b.pick(CLIENT, &[]).expect("weights > 0").index)
            .collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn requests_that_finish_at_once_split_by_weight() {
        let b = wlc(&[1, 3]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[b.pick(CLIENT, &[]).expect("weights > 0").index] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }

    #[test]
    fn busy_backends_get_new_requests_by_load_over_weight() {
        let b = wlc(&[1, 3, 0]);
        let held: Vec<Pick> = (0..40)
            .map(|_| b.pick(CLIENT, &[]).expect("weights > 0"))
            .collect();
        assert_eq!([b.active(0), b.active(1), b.active(2)], [10, 30, 0]);

        // Backend 1 at 30/3 = 10 per weight, backend 0 at 10/1: finishing some of backend 1's
        // requests makes it the least loaded, and it gets every pick until it is level again.
        let (mut on_1, mut rest): (Vec<Pick>, Vec<Pick>) =
            held.into_iter().partition(|p| p.index == 1);
        drop(on_1.split_off(24));
        assert_eq!(b.active(1), 24);
        for _ in 0..6 {
            let p = b.pick(CLIENT, &[]).expect("weights > 0");
            assert_eq!(p.index, 1);
            rest.push(p);
        }
        assert_eq!(b.active(1), 30);

        // Excluding the least loaded sends the request to the next, never to weight 0.
        let p = b.pick(CLIENT, &[1]).expect("backend 0 is left");
        assert_eq!(p.index, 0);
        assert_eq!(b.active(0), 11);
        assert!(b.pick(CLIENT, &[0, 1]).is_none());
    }
}
