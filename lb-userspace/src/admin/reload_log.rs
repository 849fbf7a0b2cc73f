//! Reloads as the status page tells them: how many were applied and refused, and the last
//! outcome with its error. The main thread records each outcome; `/status` reads it.
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReloadLog {
    /// Reloads applied since start.
    pub ok: u64,
    /// Reloads refused since start (the running configuration stayed).
    pub failed: u64,
    /// The last reload; None before the first.
    pub last: Option<LastReload>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastReload {
    /// Unix seconds.
    pub at: u64,
    /// What asked for it: `SIGHUP`, `POST /reload`, `etcd`.
    pub trigger: String,
    pub ok: bool,
    /// Why it was refused, as `POST /reload` answered.
    pub error: Option<String>,
}

impl ReloadLog {
    /// One reload's outcome: `Err` carries the refusal's text.
    pub fn record(&mut self, trigger: &str, outcome: Result<(), String>, at: SystemTime) {
        match outcome {
            Ok(()) => self.ok += 1,
            Err(_) => self.failed += 1,
        }
        self.last = Some(LastReload {
            at: at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            trigger: trigger.to_string(),
            ok: outcome.is_ok(),
            error: outcome.err(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_last_outcome_wins_and_both_kinds_are_counted() {
        let mut log = ReloadLog::default();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        log.record("SIGHUP", Ok(()), at);
        log.record("POST /reload", Err("bad key".into()), at);
        assert_eq!((log.ok, log.failed), (1, 1));
        let last = log.last.clone().expect("a last reload");
        assert_eq!(
            (
                last.at,
                last.trigger.as_str(),
                last.ok,
                last.error.as_deref()
            ),
            (1_700_000_000, "POST /reload", false, Some("bad key"))
        );
        log.record("etcd", Ok(()), at);
        assert_eq!(log.last.and_then(|l| l.error), None);
    }
}
