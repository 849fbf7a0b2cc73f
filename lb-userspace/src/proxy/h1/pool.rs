//! Idle keep-alive connections to a group's backends, for one worker. Every request and every
//! response body of that worker runs on its one thread, so the lock is never contended; it is
//! there because hyper may move a response body between tasks of that thread.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::stream::Conn;

/// How long an idle connection is kept (a backend's own keep-alive timeout is usually
/// shorter; one that closes first is noticed when taken, or resent to once, see `proxy`).
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per backend; more are closed when their response ends.
const MAX_IDLE_PER_BACKEND: usize = 1024;
/// How often connections idle past [`POOL_IDLE`] are closed when nothing takes them.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

struct Idle {
    conn: Conn,
    since: Instant,
}

pub struct Pool {
    /// Per backend (by index in the group), oldest first.
    idle: Mutex<Vec<Vec<Idle>>>,
    sweeping: AtomicBool,
}

impl Pool {
    pub fn new(backends: usize) -> Arc<Self> {
        Arc::new(Pool {
            idle: Mutex::new((0..backends).map(|_| Vec::new()).collect()),
            sweeping: AtomicBool::new(false),
        })
    }

    /// The most recently used idle connection to `backend` that is still open.
    pub fn take(&self, backend: usize) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(backend)?;
        let now = Instant::now();
        while let Some(mut entry) = list.pop() {
            if now.duration_since(entry.since) < POOL_IDLE && entry.conn.idle_and_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps `conn`, whose last response ended cleanly, for the next request to `backend`.
    pub fn put(self: &Arc<Self>, backend: usize, mut conn: Conn) {
        conn.shrink();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let Some(list) = idle.get_mut(backend) else {
            return;
        };
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        drop(idle);
        self.start_sweeping();
    }

    /// The first connection put back starts a task on this worker that closes connections
    /// idle too long; it ends with the pool.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    fn sweep(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        for list in idle.iter_mut() {
            list.retain(|e| now.duration_since(e.since) < POOL_IDLE);
        }
    }
}
