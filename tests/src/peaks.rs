//! Peak memory and descriptors of a process under attack, sampled from /proc.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::daemon::{self, Daemon};

/// Samples a process's RSS and descriptor count every 10 ms until dropped.
pub struct Peaks {
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    fds: Arc<AtomicU64>,
    /// (RSS KiB, descriptors) when watching began.
    pub base: (u64, u64),
}

impl Peaks {
    pub fn watch(lb: &Daemon) -> Peaks {
        let pid = lb.pid();
        let base = (lb.rss_kib(), lb.fds() as u64);
        let (stop, rss, fds) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(base.0)),
            Arc::new(AtomicU64::new(base.1)),
        );
        let (s, r, f) = (stop.clone(), rss.clone(), fds.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                r.fetch_max(daemon::rss_kib(pid), Ordering::Relaxed);
                f.fetch_max(daemon::fds(pid) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Peaks {
            stop,
            rss,
            fds,
            base,
        }
    }

    /// Prints and returns (peak RSS KiB, peak descriptors).
    pub fn report(&self, what: &str) -> (u64, u64) {
        let (rss, fds) = (
            self.rss.load(Ordering::Relaxed),
            self.fds.load(Ordering::Relaxed),
        );
        eprintln!(
            "{what}: RSS {} KiB -> peak {rss} KiB, descriptors {} -> peak {fds}",
            self.base.0, self.base.1
        );
        (rss, fds)
    }
}

impl Drop for Peaks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
