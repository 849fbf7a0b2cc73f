//! Idle keep-alive connections to a group's backends, for one worker. Every request and every
//! response body of that worker runs on its one thread, so the lock is never contended; it is
//! there because hyper may move a response body between tasks of that thread.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::stream::Conn;
use crate::coarse_clock;

/// How long an idle connection is kept (a backend's own keep-alive timeout is usually
/// shorter; one that closes first is noticed when taken, or resent to once, see `proxy`).
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per backend; more are closed when their response ends.
const MAX_IDLE_PER_BACKEND: usize = 1024;
/// How often connections idle past [`POOL_IDLE`] are closed when nothing takes them.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

struct Idle {
    conn: Conn,
    /// [`coarse_clock`] when it became idle.
    since_ms: u64,
}

impl Idle {
    fn new(conn: Conn) -> Self {
        Idle {
            conn,
            since_ms: coarse_clock::now_ms(),
        }
    }

    /// Whether it has been idle for less than [`POOL_IDLE`] at `now_ms`.
    fn fresh(&self, now_ms: u64) -> bool {
        u128::from(now_ms.saturating_sub(self.since_ms)) < POOL_IDLE.as_millis()
    }
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
        let now = coarse_clock::now_ms();
        while let Some(mut entry) = list.pop() {
            if entry.fresh(now) && entry.conn.idle_and_open() {
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
            list.push(Idle::new(conn));
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
        let now = coarse_clock::now_ms();
        for list in idle.iter_mut() {
            list.retain(|e| e.fresh(now));
        }
    }
}

/// Idle connections that only one client connection may reuse: they began with its PROXY
/// protocol header, which names that client to the backend for the connection's whole life
/// (HAProxy makes such connections private to their session the same way). Kept with the
/// client connection, so that its next requests reuse them; closed when it closes.
#[derive(Default)]
pub struct PrivatePool {
    /// (backend, connection), oldest first.
    idle: Mutex<Vec<(usize, Idle)>>,
}

/// Idle connections one client connection keeps per group: enough for a browser's few
/// parallel requests to be reused, few enough that a client opening many connections holds
/// few backend connections for them.
const MAX_PRIVATE_IDLE: usize = 2;

impl PrivatePool {
    /// The most recently used idle connection to `backend` that is still open.
    pub fn take(&self, backend: usize) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        let now = coarse_clock::now_ms();
        idle.retain(|(_, e)| e.fresh(now));
        while let Some(at) = idle.iter().rposition(|(b, _)| *b == backend) {
            let (_, mut entry) = idle.remove(at);
            if entry.conn.idle_and_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps `conn`, whose last response ended cleanly, for this client's next request to
    /// `backend`; the oldest goes when there are too many.
    pub fn put(&self, backend: usize, mut conn: Conn) {
        conn.shrink();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = coarse_clock::now_ms();
        idle.retain(|(_, e)| e.fresh(now));
        if idle.len() >= MAX_PRIVATE_IDLE {
            idle.remove(0);
        }
        idle.push((backend, Idle::new(conn)));
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Closes the connections idle past [`POOL_IDLE`]; whether any are left.
    pub fn prune(&self) -> bool {
        let Ok(mut idle) = self.idle.lock() else {
            return false;
        };
        let now = coarse_clock::now_ms();
        idle.retain(|(_, e)| e.fresh(now));
        !idle.is_empty()
    }
}

/// Where a connection goes back to when its response ends: the worker's pool, shared by all
/// clients, or one client connection's own.
pub enum ReturnPool {
    Shared(Arc<Pool>),
    Private(Arc<PrivatePool>),
}

impl ReturnPool {
    pub fn put(&self, backend: usize, conn: Conn) {
        match self {
            ReturnPool::Shared(pool) => pool.put(backend, conn),
            ReturnPool::Private(pool) => pool.put(backend, conn),
        }
    }
}
