//! The sockets each worker binds on a listener's address: SO_REUSEPORT so that every worker
//! has its own and the kernel spreads clients over them. Shared by the TCP listeners and
//! HTTP/3's UDP endpoints, kept apart from both so neither imports the other.
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// One worker's socket on `addr`, bound: SO_REUSEPORT (each worker has its own, the kernel
/// spreads clients over them), dual-stack on `[::]`, non-blocking. TCP and UDP (HTTP/3) alike.
pub fn worker_socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if ty == Type::STREAM {
        // TIME_WAIT connections of a previous run do not hold the port; for UDP it would let
        // any other socket share it, so not there.
        socket.set_reuse_address(true)?;
    }
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 clients too, as the XDP program's ANY listener assumes.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}
