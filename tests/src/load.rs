//! A steady HTTPS load for tests that change things under it (reloads): a few tasks sending one
//! request per new connection until stopped, counting answers that are 200 and those that are not.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustls::ClientConfig;
use tokio::task::JoinHandle;

use crate::https::{self, get};
use crate::listener::SERVER_NAME;

pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// `tasks` loops of GET `path` on `addr`, each on a new TLS connection.
    pub fn start(
        tasks: usize,
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        path: &'static str,
    ) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let tasks = (0..tasks)
            .map(|_| {
                let (stop, ok, failed, config) =
                    (stop.clone(), ok.clone(), failed.clone(), config.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match https::send(addr, SERVER_NAME, config.clone(), get(path)).await {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the load; (answered 200, failed).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
