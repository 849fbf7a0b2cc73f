//! systemd's readiness protocol (sd_notify): with `Type=notify` (or `notify-reload`) systemd
//! passes a datagram socket in NOTIFY_SOCKET and waits for `READY=1` before it calls the
//! service started; `RELOADING=1` and `READY=1` again bracket a reload.
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` if systemd (or anything) asked for notifications; otherwise nothing.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    // A leading @ names a socket in the abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::debug!(error = %e, "NOTIFY_SOCKET: notification not sent");
    }
}

/// `RELOADING=1` with the monotonic time systemd's notify-reload asks for.
pub fn reloading() {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}
