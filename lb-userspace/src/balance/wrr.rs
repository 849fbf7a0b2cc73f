//! Smooth weighted round robin, as nginx does it: every pick adds each backend's weight to its
//! running score, takes the highest, and subtracts the total from the winner. Picks are
//! proportional to weight and spread out (weights 5,1,1 give a a b a c a a, not a a a a a b c).
use std::sync::Mutex;

/// Smooth weighted round robin over weights given at each pick, so that weights may change
/// between picks (health, slow start): nginx does the same with its effective weights.
pub struct SmoothWrr {
    scores: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    pub fn new(backends: usize) -> Self {
        SmoothWrr {
            scores: Mutex::new(vec![0; backends]),
        }
    }

    /// The index of the next backend; `weight(i)` is its weight now, 0 for a backend that
    /// must not be picked. None when every weight is 0.
    ///
    /// As in nginx, only backends with a weight earn it and count in the total, so the others
    /// keep their scores and the rest still share picks by weight.
    pub fn pick(&self, weight: impl Fn(usize) -> i64) -> Option<usize> {
        // A poisoned lock only means another picker panicked mid-update; scores stay usable.
        let mut scores = self.scores.lock().unwrap_or_else(|p| p.into_inner());
        smooth_step(&mut scores, weight)
    }
}

/// One pick of smooth weighted round robin, updating `scores` (one per backend).
pub(super) fn smooth_step(scores: &mut [i64], weight: impl Fn(usize) -> i64) -> Option<usize> {
    let mut total = 0;
    let mut best: Option<usize> = None;
    for i in 0..scores.len() {
        let w = weight(i);
        if w <= 0 {
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

    fn weights(w: &'static [i64]) -> impl Fn(usize) -> i64 {
        move |i| w[i]
    }

    #[test]
    fn picks_are_proportional_and_interleaved() {
        let wrr = SmoothWrr::new(3);
        let seq: Vec<usize> = (0..7)
            .map(|_| wrr.pick(weights(&[5, 1, 1])).expect("weights > 0"))
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let wrr = SmoothWrr::new(2);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[wrr.pick(weights(&[1, 3])).expect("weights > 0")] += 1;
        }
        assert_eq!(counts, [100, 300]);
    }

    #[test]
    fn weight_zero_gets_nothing_and_all_zero_gets_none() {
        let wrr = SmoothWrr::new(2);
        assert!((0..10).all(|_| wrr.pick(weights(&[0, 2])) == Some(1)));
        assert_eq!(SmoothWrr::new(2).pick(weights(&[0, 0])), None);
    }
}
