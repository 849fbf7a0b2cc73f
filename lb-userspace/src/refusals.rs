//! One log line for each refused handshake, connection or request, with the reason in words
//! and the client: the counters say how many, these say why. Rate-limited for the whole
//! process, because refusals are what a flood or a scanner produces.
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines per second; the rest are counted and the count logged with the next line.
const PER_SECOND: u64 = 20;

/// What was refused.
#[derive(Clone, Copy, Debug)]
pub enum Refused {
    Handshake,
    Connection,
    Request,
}

impl Refused {
    fn noun(self) -> &'static str {
        match self {
            Refused::Handshake => "TLS handshake",
            Refused::Connection => "connection",
            Refused::Request => "request",
        }
    }
}

/// The second being counted (unix seconds), lines logged in it, and lines not logged since
/// the last one that was. One limiter for the process: a static, so that every worker and
/// protocol shares the budget without threading a handle through each of them.
struct Budget {
    second: AtomicU64,
    used: AtomicU64,
    skipped: AtomicU64,
}

static BUDGET: Budget = Budget {
    second: AtomicU64::new(0),
    used: AtomicU64::new(0),
    skipped: AtomicU64::new(0),
};

impl Budget {
    /// Whether a line may be logged now; if so, how many were skipped before it.
    fn take(&self, now: u64) -> Option<u64> {
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) >= PER_SECOND {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// Logs `what` of `client` on `listener` as refused for `reason`.
pub fn log(what: Refused, listener: &str, client: SocketAddr, reason: &dyn Display) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(skipped) = BUDGET.take(now) {
        if skipped > 0 {
            tracing::info!(
                target: "edgelb::refused",
                listener,
                %client,
                skipped,
                "{} refused: {reason} ({skipped} earlier refusals not logged: more than {PER_SECOND} a second)",
                what.noun()
            );
        } else {
            tracing::info!(target: "edgelb::refused", listener, %client, "{} refused: {reason}", what.noun());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_so_many_lines_a_second_then_counts_the_rest() {
        let b = Budget {
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        };
        let logged = (0..PER_SECOND + 5)
            .filter(|_| b.take(100).is_some())
            .count();
        assert_eq!(logged as u64, PER_SECOND);
        assert_eq!(
            b.take(101),
            Some(5),
            "the next second's first line says how many were skipped"
        );
        assert_eq!(b.take(101), Some(0));
    }
}
