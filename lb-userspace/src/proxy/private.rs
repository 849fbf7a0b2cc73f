//! `--backend-proxy-protocol`: backend connections that start with a client's PROXY protocol
//! header. The header names one client for the connection's whole life, so such a connection
//! must never carry another client's requests: it is kept with the client connection it was
//! opened for (one pool per group it sent to), reused for that connection's next requests,
//! and closed with it.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::h1::PrivatePool;
use super::headers::ConnInfo;
use crate::proxy_protocol::{Version, encode};

/// One client connection's private backend connections, by upstream (a group on a worker).
#[derive(Default)]
pub struct PrivateConns {
    pools: Mutex<Vec<(UpstreamId, Arc<PrivatePool>)>>,
}

impl std::fmt::Debug for PrivateConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self
            .pools
            .lock()
            .map_or(0, |p| p.iter().map(|(_, pool)| pool.idle_count()).sum());
        write!(f, "PrivateConns({idle} idle)")
    }
}

impl PrivateConns {
    /// The pool of this client connection's connections to `upstream`'s backends.
    pub fn pool(&self, upstream: UpstreamId) -> Arc<PrivatePool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        // No sweeper runs over a client's pools: each use closes what the others hold past
        // their idle time, and drops the pools of groups a reload replaced once empty.
        pools.retain(|(id, pool)| *id == upstream || pool.prune());
        if let Some((_, pool)) = pools.iter().find(|(id, _)| *id == upstream) {
            return pool.clone();
        }
        let pool = Arc::new(PrivatePool::default());
        pools.push((upstream, pool.clone()));
        pool
    }
}

/// Tells one upstream from another, across reloads too (a reload makes new upstreams, whose
/// backend indices may mean other backends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamId(u64);

impl UpstreamId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        UpstreamId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The header a backend connection opened for `conn` starts with: the client's address and
/// port, the address and port it connected to, and (v2) the SNI as PP2_TYPE_AUTHORITY and
/// the TLS version under PP2_TYPE_SSL.
pub fn header(version: Version, conn: &ConnInfo) -> Vec<u8> {
    let tls = conn.tls_version.map(|version| encode::Tls {
        version,
        client_cert_verified: conn.identity.subject.is_some(),
    });
    encode::header(version, conn.peer, conn.local, conn.sni.as_deref(), tls)
}
