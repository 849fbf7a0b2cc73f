//! Worker threads, one per core the process may run on, each with its own single-threaded
//! runtime and its own listening socket (SO_REUSEPORT: the kernel spreads new connections
//! over them), as nginx does with worker processes. No task ever moves between threads, and
//! each worker keeps its own backend connection pool; the balancer is shared.
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::server::{ListenerContext, serve_connection};

/// Pending connections the kernel may queue per worker socket (capped by net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// How many workers to run: one per CPU this process may use (taskset and cgroup limits count).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `count` listening sockets on `addr`, all bound before any worker starts, so that a bind
/// failure is reported once, at start.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..count.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            if addr.is_ipv6() {
                // `[::]` serves IPv4 clients too, as the XDP program's ANY listener assumes.
                socket.set_only_v6(false)?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(BACKLOG)?;
            Ok(socket.into())
        })
        .collect()
}

/// Starts one worker thread per (socket, context); each accepts until `stop` turns true.
pub fn spawn(
    workers: Vec<(std::net::TcpListener, Arc<ListenerContext>)>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    workers
        .into_iter()
        .enumerate()
        .map(|(i, (socket, ctx))| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("edgelb-worker-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            warn!(worker = i, error = %e, "cannot start the worker's runtime");
                            return;
                        }
                    };
                    runtime.block_on(async {
                        accept_loop(socket, ctx.clone(), stop).await;
                        drain(&ctx).await;
                    });
                })
        })
        .collect()
}

/// Waits for this worker's connections to finish, at most the drain timeout; whatever is left
/// is cut when the runtime is dropped.
async fn drain(ctx: &ListenerContext) {
    let deadline = tokio::time::Instant::now() + ctx.drain;
    while ctx.open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            warn!(
                open = ctx.open.load(std::sync::atomic::Ordering::Relaxed),
                "drain timeout: closing connections still open"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if !ctx.live.load().access.admits(peer.ip()) {
                        debug!(client = %peer, "connection refused by access control");
                        drop(stream);
                        continue;
                    }
                    tokio::spawn(serve_connection(stream, ctx.clone()));
                }
                // Running out of descriptors or a connection reset before accept: keep serving.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}
