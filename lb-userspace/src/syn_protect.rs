//! `--syn-protect`: when listeners answer new connections with SYN cookies in the XDP program
//! (`dataplane::syn_cookies`), and the kernel settings that make the kernel accept those
//! cookies while any listener does. `auto` listeners start answering when their SYNs arrive
//! faster than their threshold, and stop once they have stayed below half of it for
//! [`CALM_SECS`]. The main loop calls [`SynProtect::tick`] once a second. The settings go
//! back [`RESTORE_SECS`] after the last listener stopped answering, or when the daemon ends.
//! Without them no listener answers: a configuration with `on` listeners is refused, and an
//! `auto` listener stays with the kernel.
use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::config::{Config, SynProtection};
use crate::dataplane::{Dataplane, error_chain};

/// Seconds below half the threshold before an `auto` listener stops answering: a flood that
/// pauses for a moment is still answered when it comes back.
pub const CALM_SECS: u32 = 10;

/// Seconds the settings stay after the last listener stopped answering: the clients its
/// last SYN-ACKs went to still send their ACKs (and retransmit them), which the kernel checks
/// with these settings.
pub const RESTORE_SECS: u32 = 10;

/// The kernel settings cookies from XDP need, and their values while any listener answers:
/// `tcp_syncookies=2` makes the kernel answer the SYNs it still gets with cookies (which keeps
/// the listener's "sent a cookie recently" mark fresh, without which it refuses all cookies);
/// `tcp_timestamps=2` keeps timestamps without a secret per-connection offset, which the
/// kernel would otherwise take from the echoed timestamp before reading the options encoded
/// in it (window scale, SACK).
const SETTINGS: [(&str, &str); 2] = [
    ("/proc/sys/net/ipv4/tcp_syncookies", "2"),
    ("/proc/sys/net/ipv4/tcp_timestamps", "2"),
];

/// One listener's protection, as the main loop sees it.
#[derive(Clone, Copy, Debug)]
pub struct Protected<'a> {
    pub id: u32,
    pub name: &'a str,
    pub mode: SynProtection,
}

/// An `auto` listener's SYN rate as last seen.
#[derive(Clone, Copy, Debug, Default)]
struct Watch {
    /// The SYN count at the last tick.
    last: u64,
    /// Seconds in a row below half the threshold while answering.
    calm: u32,
}

#[derive(Default)]
pub struct SynProtect {
    watching: BTreeMap<u32, Watch>,
    /// The settings' values before this daemon changed them; None: untouched.
    saved: Option<Vec<(&'static str, String)>>,
    /// The same, on disk for a start after a crash (None if it could not be written).
    record: Option<crate::syn_protect_record::Record>,
    /// Seconds since the last listener stopped answering, while the settings are still set.
    idle: u32,
    /// A setting could not be written, and that was logged (once until one can).
    refused: bool,
}

/// A setting SYN cookies from XDP need could not be written.
#[derive(Debug, thiserror::Error)]
#[error(
    "--syn-protect: cannot set {setting} to {value} ({reason}); without it the kernel refuses the SYN cookies XDP sends"
)]
pub struct SettingsError {
    pub setting: String,
    pub value: &'static str,
    pub reason: String,
}

impl SettingsError {
    fn new(path: &str, value: &'static str, e: &std::io::Error) -> Self {
        SettingsError {
            setting: setting_name(path),
            value,
            reason: e.to_string(),
        }
    }
}

/// Whether listener `id`, protected as `mode` says, answers SYNs in XDP now.
pub fn answering(dp: &Dataplane, id: u32, mode: SynProtection) -> bool {
    match mode {
        SynProtection::Off => false,
        SynProtection::On => true,
        SynProtection::Auto { .. } => dp.syn_answering().contains(&id),
    }
}

/// Whether an `auto` listener answers after a second with `rate` SYNs, having answered
/// (`answering`) before.
pub fn decide(answering: bool, rate: u64, threshold: u32, calm: &mut u32) -> bool {
    let threshold = u64::from(threshold);
    if !answering {
        *calm = 0;
        return rate > threshold;
    }
    if rate.saturating_mul(2) < threshold {
        *calm += 1;
    } else {
        *calm = 0;
    }
    *calm < CALM_SECS
}

impl SynProtect {
    /// Before a configuration is applied: the settings, if one of its listeners answers at
    /// once (`on`). An error refuses the configuration: its listeners would answer with
    /// cookies the kernel refuses, and take no connection.
    pub fn prepare(&mut self, config: &Config) -> Result<(), SettingsError> {
        if config
            .listeners
            .iter()
            .any(|l| l.syn_protect == SynProtection::On)
        {
            self.set_settings()?;
        }
        Ok(())
    }

    /// A second has passed: `auto` listeners start or stop answering, and the settings follow.
    pub fn tick(&mut self, dp: &mut Dataplane, listeners: &[Protected<'_>]) {
        let auto: Vec<u32> = listeners
            .iter()
            .filter(|l| matches!(l.mode, SynProtection::Auto { .. }))
            .map(|l| l.id)
            .collect();
        let counts = match dp.syn_counts(&auto) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %error_chain(&e), "reading the SYN counts of --syn-protect auto");
                BTreeMap::new()
            }
        };
        self.watching
            .retain(|id, _| listeners.iter().any(|l| l.id == *id));
        for l in listeners {
            let SynProtection::Auto { threshold } = l.mode else {
                continue;
            };
            let Some(&count) = counts.get(&l.id) else {
                continue;
            };
            let Some(w) = self.watching.get_mut(&l.id) else {
                self.watching.insert(
                    l.id,
                    Watch {
                        last: count,
                        calm: 0,
                    },
                );
                continue;
            };
            let rate = count.wrapping_sub(w.last);
            w.last = count;
            let answering = dp.syn_answering().contains(&l.id);
            let answer = decide(answering, rate, threshold, &mut w.calm);
            if answer == answering {
                continue;
            }
            if answer && let Err(e) = self.set_settings() {
                if !self.refused {
                    warn!(listener = l.name, syn_per_sec = rate, threshold, error = %e, "SYN flood: left to the kernel");
                    self.refused = true;
                }
                continue;
            }
            match dp.set_syn_answering(l.id, answer) {
                Ok(()) if answer => {
                    warn!(
                        listener = l.name,
                        syn_per_sec = rate,
                        threshold,
                        "SYN flood: answering new connections with SYN cookies in XDP"
                    );
                }
                Ok(()) => {
                    info!(
                        listener = l.name,
                        syn_per_sec = rate,
                        "SYN rate back to normal: new connections go to the kernel again"
                    );
                }
                Err(e) => {
                    warn!(listener = l.name, error = %error_chain(&e), "switching SYN cookies in XDP");
                }
            }
        }
        let wanted = listeners.iter().any(|l| answering(dp, l.id, l.mode));
        if wanted || self.saved.is_none() {
            self.idle = 0;
        } else {
            self.idle += 1;
            if self.idle >= RESTORE_SECS {
                self.restore();
            }
        }
    }

    /// Sets [`SETTINGS`], remembering what they were; on the first failure, puts back what
    /// was set.
    fn set_settings(&mut self) -> Result<(), SettingsError> {
        if self.saved.is_some() {
            return Ok(());
        }
        // Both opened for writing before either is written: one that cannot be would
        // otherwise have the other changed and put back at every retry.
        for (path, value) in SETTINGS {
            if let Err(e) = std::fs::OpenOptions::new().write(true).open(path) {
                return Err(SettingsError::new(path, value, &e));
            }
        }
        let mut saved = Vec::new();
        for (path, value) in SETTINGS {
            let result = std::fs::read_to_string(path).and_then(|old| {
                std::fs::write(path, value)?;
                Ok(old.trim().to_string())
            });
            match result {
                Ok(old) => saved.push((path, old)),
                Err(e) => {
                    self.saved = Some(saved);
                    self.restore();
                    return Err(SettingsError::new(path, value, &e));
                }
            }
        }
        info!(
            settings = ?saved.iter().map(|(p, old)| format!("{} {old} -> 2", setting_name(p))).collect::<Vec<_>>(),
            "--syn-protect: kernel settings changed while listeners answer SYNs in XDP"
        );
        self.record = match crate::syn_protect_record::Record::write(&saved) {
            Ok(record) => Some(record),
            Err(e) => {
                warn!(error = %e, "--syn-protect: cannot write down the settings' old values; a crash would leave them changed");
                None
            }
        };
        self.saved = Some(saved);
        self.refused = false;
        Ok(())
    }

    /// Puts back what a daemon that ended without doing so left changed in this network
    /// namespace (see `syn_protect_record`), as [`SynProtect::restore`] does. At start,
    /// before anything is set.
    pub fn recover() {
        let stale = crate::syn_protect_record::take_stale(&SETTINGS);
        if !stale.is_empty() {
            info!(
                "--syn-protect: kernel settings left changed by an edgelb that did not end cleanly"
            );
            put_back(&stale);
        }
    }

    /// Puts back what [`SynProtect::set_settings`] changed, where it is still as set (an
    /// operator's change since is theirs). Also at the end of the daemon.
    pub fn restore(&mut self) {
        let Some(saved) = self.saved.take() else {
            return;
        };
        put_back(&saved);
        if let Some(record) = self.record.take() {
            record.remove();
        }
    }
}

/// Writes back each setting's old value, where it is still as [`SETTINGS`] set it (an
/// operator's change since is theirs).
fn put_back(saved: &[(&'static str, String)]) {
    for (path, old) in saved {
        let set = SETTINGS.iter().find(|(p, _)| p == path).map(|(_, v)| *v);
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if set.is_some_and(|v| now.trim() != v) {
            info!(
                setting = setting_name(path),
                value = now.trim(),
                "--syn-protect: kernel setting changed by someone else since; left as it is"
            );
            continue;
        }
        match std::fs::write(path, old) {
            Ok(()) => info!(
                setting = setting_name(path),
                value = old,
                "--syn-protect: kernel setting restored"
            ),
            Err(e) => {
                warn!(path, value = old, error = %e, "--syn-protect: restoring a kernel setting")
            }
        }
    }
}

impl Drop for SynProtect {
    /// Whichever way the daemon ends (a failed start included), the settings go back.
    fn drop(&mut self) {
        self.restore();
    }
}

/// `net.ipv4.tcp_syncookies` for its path.
fn setting_name(path: &str) -> String {
    path.trim_start_matches("/proc/sys/").replace('/', ".")
}

/// The kernel's own SYN cookie counters in this network namespace (`/proc/net/netstat`,
/// TcpExt): sent by the kernel itself, received back as valid ACKs (connections made from a
/// cookie, the XDP program's included), and ACKs whose cookie failed the check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCookies {
    pub sent: u64,
    pub received: u64,
    pub failed: u64,
}

impl KernelCookies {
    pub fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
        Self::parse(&text)
    }

    /// From the text of `/proc/net/netstat`: a line of TcpExt names, then one of values.
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let names = lines.next()?.split_whitespace();
        let values = lines.next()?.split_whitespace();
        let mut out = KernelCookies::default();
        for (name, value) in names.zip(values).skip(1) {
            let slot = match name {
                "SyncookiesSent" => &mut out.sent,
                "SyncookiesRecv" => &mut out.received,
                "SyncookiesFailed" => &mut out.failed,
                _ => continue,
            };
            *slot = value.parse().ok()?;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_answers_above_the_threshold_and_stops_after_calm_seconds_below_half() {
        let mut calm = 0;
        assert!(!decide(false, 1000, 1000, &mut calm));
        assert!(decide(false, 1001, 1000, &mut calm));
        // Answering: between half and the threshold keeps it on, and resets the calm count.
        for _ in 0..CALM_SECS - 1 {
            assert!(decide(true, 499, 1000, &mut calm));
        }
        assert!(decide(true, 500, 1000, &mut calm));
        assert_eq!(calm, 0);
        for _ in 0..CALM_SECS - 1 {
            assert!(decide(true, 0, 1000, &mut calm));
        }
        assert!(!decide(true, 0, 1000, &mut calm));
    }

    #[test]
    fn kernel_cookie_counters_are_read_from_tcpext() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts\n\
                    TcpExt: 5 7 2 0\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 0\n";
        assert_eq!(
            KernelCookies::parse(text),
            Some(KernelCookies {
                sent: 5,
                received: 7,
                failed: 2
            })
        );
        assert_eq!(KernelCookies::parse("IpExt: a\nIpExt: 1\n"), None);
    }
}
