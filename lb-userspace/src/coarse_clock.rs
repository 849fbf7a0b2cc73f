//! A monotonic millisecond clock for timestamps that need only a few milliseconds' accuracy:
//! when a request started or ended (for timeouts of seconds), how long a backend connection
//! has been idle (for a limit of 90 s). Request handling takes several such stamps per
//! request; `CLOCK_MONOTONIC_COARSE` is read from the vDSO without reading the TSC, so it
//! costs a fraction of the precise clock (which was the largest single item of userspace
//! time in a keep-alive profile). It advances once per kernel tick (1-10 ms).
use nix::time::{ClockId, clock_gettime};

/// Milliseconds on the coarse monotonic clock, from an arbitrary start.
pub fn now_ms() -> u64 {
    // The coarse clock exists on every Linux since 2.6.32. Were it refused, the precise one
    // has the same origin (the coarse clock is its value at the last tick), so stamps from
    // either compare; std's `Instant` cannot work without that one.
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
        .map_or(0, |t| {
            let ms = i128::from(t.tv_sec()) * 1000 + i128::from(t.tv_nsec()) / 1_000_000;
            u64::try_from(ms).unwrap_or(0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_precise_clock_within_a_few_ticks() {
        let (coarse, precise) = (now_ms(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (coarse, precise) = (now_ms() - coarse, precise.elapsed().as_millis() as u64);
        assert!(
            coarse.abs_diff(precise) <= 20,
            "coarse {coarse} ms, precise {precise} ms"
        );
    }
}
