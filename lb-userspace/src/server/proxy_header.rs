//! A listener behind another balancer (`--accept-proxy-protocol`): the connection's first
//! bytes name the client. Taken before TLS and HTTP, within the handshake timeout, from the
//! balancers of `--proxy-protocol-from` only; any other connection is closed, counted and
//! logged (rate-limited).
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::AcceptProxy;
use crate::metrics::ListenerMetrics;
use crate::proxy_protocol::read_header;
use crate::refusals::{self, Refused};

/// The client's address and the one it connected to, as the header says (the connection's
/// own for a header that names none: a v2 `LOCAL` check from the balancer, v1 `UNKNOWN`);
/// None when the connection is refused.
pub(super) async fn client_ends(
    stream: &mut TcpStream,
    accept: &AcceptProxy,
    peer: SocketAddr,
    local: SocketAddr,
    deadline: Instant,
    metrics: &ListenerMetrics,
) -> Option<(SocketAddr, SocketAddr)> {
    let refuse = |reason: &str, why: &dyn std::fmt::Display| {
        metrics.proxy_protocol_refused(reason);
        refusals::log(Refused::Connection, metrics.name(), peer, why);
    };
    if !accept.trusts(peer.ip()) {
        // Anyone else could claim to be any client.
        refuse(
            "untrusted_peer",
            &"the peer is not in --proxy-protocol-from (the balancers that may send a PROXY protocol header)",
        );
        return None;
    }
    match read_header(stream, accept.version, deadline).await {
        Ok(header) => Some(
            header
                .addresses
                .map_or((peer, local), |a| (a.source, a.destination)),
        ),
        Err(e) => {
            refuse(e.reason(), &e);
            None
        }
    }
}
