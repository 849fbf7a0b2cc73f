//! Worker threads, one per core the process may run on, each with its own single-threaded
//! runtime, as nginx does with worker processes. Every listener has one listening socket per
//! worker (SO_REUSEPORT: the kernel spreads new connections over them), so no task ever moves
//! between threads; each worker keeps its own backend connection pools. Listeners come and go
//! on reload while the workers stay.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Protocol, Type};

use crate::refusals::{self, Refused};
use crate::reuseport::worker_socket;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::warn;

use crate::server::{ListenerContext, serve_connection};

/// Pending connections the kernel may queue per worker socket (capped by net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// How many workers to run: one per CPU this process may use (taskset and cgroup limits count).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `count` listening sockets on `addr`, all bound before any is used, so that a bind failure
/// is reported once and leaves nothing behind.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..count.max(1))
        .map(|_| {
            let socket = worker_socket(addr, Type::STREAM, Protocol::TCP)?;
            socket.listen(BACKLOG)?;
            Ok(socket.into())
        })
        .collect()
}

/// The running worker threads.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    /// Client connections open on each worker, all listeners together.
    open: Vec<Arc<AtomicUsize>>,
    /// None while running; the drain timeout once stopping.
    stop: watch::Sender<Option<Duration>>,
}

impl Workers {
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let (stop, _) = watch::channel(None);
        let mut workers = Workers {
            handles: Vec::new(),
            threads: Vec::new(),
            open: Vec::new(),
            stop,
        };
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let open = Arc::new(AtomicUsize::new(0));
            let mut stop = workers.stop.subscribe();
            workers.handles.push(runtime.handle().clone());
            workers.open.push(open.clone());
            let thread = std::thread::Builder::new()
                .name(format!("edgelb-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let drain = loop {
                            if let Some(drain) = *stop.borrow_and_update() {
                                break drain;
                            }
                            if stop.changed().await.is_err() {
                                break Duration::ZERO;
                            }
                        };
                        wait_for_connections(&open, drain).await;
                    });
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The connection count of worker `i`, for the listener contexts made for it.
    pub fn open(&self, i: usize) -> Arc<AtomicUsize> {
        self.open[i].clone()
    }

    /// Accepts on `sockets` (one per worker, in worker order) until `stop` turns true.
    pub fn serve(
        &self,
        sockets: Vec<std::net::TcpListener>,
        contexts: &[Arc<ListenerContext>],
        stop: &watch::Receiver<bool>,
    ) {
        for ((socket, ctx), handle) in sockets.into_iter().zip(contexts).zip(&self.handles) {
            handle.spawn(accept_loop(socket, ctx.clone(), stop.clone()));
        }
    }

    /// Serves HTTP/3 on `sockets` (one per worker, in worker order) until `stop` turns true.
    pub fn serve_quic(
        &self,
        sockets: Vec<std::net::UdpSocket>,
        contexts: &[Arc<ListenerContext>],
        stop: &watch::Receiver<bool>,
    ) {
        for ((socket, ctx), handle) in sockets.into_iter().zip(contexts).zip(&self.handles) {
            handle.spawn(crate::server::http3::serve_endpoint(
                socket,
                ctx.clone(),
                stop.clone(),
            ));
        }
    }

    /// Stops every worker once its connections have finished, or after `drain`; whatever is
    /// still open then is cut when the runtime is dropped. Listeners must be stopped first.
    pub fn shutdown(self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

async fn wait_for_connections(open: &AtomicUsize, drain: Duration) {
    let deadline = tokio::time::Instant::now() + drain;
    while open.load(Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            warn!(
                open = open.load(Ordering::Relaxed),
                "drain timeout: closing connections still open"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How often a listener's accept errors are logged, at most (per worker).
const ACCEPT_ERROR_EVERY: Duration = Duration::from_secs(10);

async fn accept_loop(
    socket: std::net::TcpListener,
    ctx: Arc<ListenerContext>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot register the listening socket");
            return;
        }
    };
    // Accept errors come in runs (out of descriptors: every pending connection fails the
    // same way): said at most every ACCEPT_ERROR_EVERY, with how many went unsaid.
    let mut said_at: Option<std::time::Instant> = None;
    let mut unsaid = 0u64;
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if !ctx.live.load().access.admits(peer.ip()) {
                        refusals::log(Refused::Connection, ctx.metrics.name(), peer, &"access control (the listener's whitelist or blacklist)");
                        ctx.metrics.refused("access_control");
                        drop(stream);
                        continue;
                    }
                    // Accepted and closed at once: the client learns now, and the descriptor
                    // is not held. Leaving it in the backlog would hide the limit in timeouts.
                    let Some(slot) = ctx.limit.try_acquire() else {
                        refusals::log(Refused::Connection, ctx.metrics.name(), peer, &"--max-connections reached");
                        ctx.metrics.refused("max_connections");
                        drop(stream);
                        continue;
                    };
                    tokio::spawn(serve_connection(stream, ctx.clone(), slot));
                }
                // Running out of descriptors or a connection reset before accept: keep serving.
                Err(e) => {
                    if said_at.is_none_or(|t| t.elapsed() >= ACCEPT_ERROR_EVERY) {
                        warn!(listener = ctx.metrics.name(), error = %e, since_last = unsaid, "accept failed");
                        (said_at, unsaid) = (Some(std::time::Instant::now()), 0);
                    } else {
                        unsaid += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = stop.changed() => if changed.is_err() { return; },
        }
    }
}
