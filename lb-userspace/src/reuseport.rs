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
    if ty == Type::DGRAM {
        udp_buffers(&socket);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// What each HTTP/3 socket asks the kernel to buffer each way: one socket carries all of a
/// worker's QUIC connections, and the kernel's default (about 208 KiB, `net.core.rmem_default`)
/// drops datagrams (`RcvbufErrors`) under upload bursts that a TCP listener, with a buffer per
/// connection, takes in its stride.
pub const UDP_BUFFER: usize = 4 << 20;

/// Sets [`UDP_BUFFER`] both ways: past `net.core.rmem_max`/`wmem_max` when privileged
/// (SO_RCVBUFFORCE), else up to them. A smaller buffer is not an error: QUIC recovers losses.
fn udp_buffers(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let size = UDP_BUFFER;
    if setsockopt(socket, sockopt::RcvBufForce, &size).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &size);
    }
    if setsockopt(socket, sockopt::SndBufForce, &size).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &size);
    }
}

/// Whether another process already holds `addr`: SO_REUSEPORT would let a second edgelb (or
/// anything running as the same user) share the port and take part of the traffic without a
/// word, so a probe socket without it is bound first. Only for addresses this process does
/// not hold itself.
pub fn held_elsewhere(addr: SocketAddr, ty: Type, protocol: Protocol) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let probe = || -> std::io::Result<()> {
        let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
        if ty == Type::STREAM {
            // Connections of an earlier run in TIME_WAIT do not count, as for the real sockets.
            socket.set_reuse_address(true)?;
        }
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())
    };
    matches!(probe(), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root (CI, and the daemon), past the kernel's default maximum; the kernel reports
    /// twice what was set, its bookkeeping included.
    #[test]
    fn udp_sockets_get_large_buffers() {
        let socket = worker_socket(
            "127.0.0.1:0".parse().expect("addr"),
            Type::DGRAM,
            Protocol::UDP,
        )
        .expect("UDP socket");
        let (rcv, snd) = (
            socket.recv_buffer_size().expect("SO_RCVBUF"),
            socket.send_buffer_size().expect("SO_SNDBUF"),
        );
        if nix::unistd::geteuid().is_root() {
            assert!(rcv >= UDP_BUFFER && snd >= UDP_BUFFER, "{rcv} / {snd}");
        } else {
            eprintln!("not root: buffers {rcv} / {snd}, capped by net.core.*mem_max");
        }
    }

    #[test]
    fn a_port_another_socket_holds_is_seen_as_held() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = other.local_addr().expect("addr");
        assert!(held_elsewhere(addr, Type::STREAM, Protocol::TCP));
        drop(other);
        assert!(!held_elsewhere(addr, Type::STREAM, Protocol::TCP));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = udp.local_addr().expect("addr");
        assert!(held_elsewhere(addr, Type::DGRAM, Protocol::UDP));
    }
}
