//! Smooth weighted round robin, as nginx does it: every pick adds each backend's weight to its
//! running score, takes the highest, and subtracts the total from the winner. Picks are
//! proportional to weight and spread out (weights 5,1,1 give a a b a c a a, not a a a a a b c).
use std::sync::Mutex;

pub struct SmoothWrr {
    weights: Vec<i64>,
    scores: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    pub fn new(weights: &[u8]) -> Self {
        SmoothWrr {
            weights: weights.iter().map(|w| i64::from(*w)).collect(),
            scores: Mutex::new(vec![0; weights.len()]),
        }
    }

    /// The index of the next backend, or `None` when every weight is 0.
    pub fn pick(&self) -> Option<usize> {
        self.pick_where(|_| true)
    }

    /// The index of the next backend among those `eligible` admits, or `None` when none of
    /// them has a weight above 0.
    ///
    /// As in nginx, only eligible backends earn their weight and only their weights count in
    /// the total, so the others keep their scores and the eligible ones still share picks by
    /// weight.
    pub fn pick_where(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        // A poisoned lock only means another picker panicked mid-update; scores stay usable.
        let mut scores = self.scores.lock().unwrap_or_else(|p| p.into_inner());
        smooth_step(&self.weights, &mut scores, eligible)
    }
}

/// One pick of smooth weighted round robin over the backends `eligible` admits, updating
/// `scores` (one per weight).
pub(super) fn smooth_step(
    weights: &[i64],
    scores: &mut [i64],
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut total = 0;
    let mut best: Option<usize> = None;
    for (i, w) in weights.iter().enumerate() {
        if *w == 0 || !eligible(i) {
            continue;
        }
        scores[i] += w;
        total += w;
        if best.is_none_or(|b| scores[i] > scores[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    scores[b] -= total;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_proportional_and_interleaved() {
        let wrr = SmoothWrr::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| wrr.pick().expect("weights > 0")).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let wrr = SmoothWrr::new(&[1, 3]);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[wrr.pick().expect("weights > 0")] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }

    #[test]
    fn weight_zero_gets_nothing_and_all_zero_gets_none() {
        let wrr = SmoothWrr::new(&[0, 2]);
        assert!((0..10).all(|_| wrr.pick() == Some(1)));
        assert_eq!(SmoothWrr::new(&[0, 0]).pick(), None);
    }
}
