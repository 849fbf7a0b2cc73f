//! Idle HTTP/1.1 connections without their HTTP state. hyper keeps an 8 KiB read buffer and
//! an 8 KiB write buffer, and a few KiB of connection state, for as long as a connection
//! lives. An edge node holds mostly idle keep-alive connections, so a connection that has
//! been idle for [`PARK_AFTER`] is "parked": hyper lets go of it, only the client stream
//! (and its TLS session) is kept, and a new hyper connection takes it up when the client
//! sends its next bytes (see [`super::stream::ClientStream`]). nginx frees an idle
//! connection's buffers likewise.
use std::cell::Cell;
use std::time::Duration;

/// How long an HTTP/1.1 connection stays idle before it is parked. Long enough that
/// back-to-back requests (a page's resources, a benchmark) never pay for taking the
/// connection up again; short against how long browsers keep idle connections.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How soon after a connection parks the memory it let go of goes back to the OS, so that
/// connections parking together are handled by one collection.
const RETURN_AFTER: Duration = Duration::from_millis(500);

thread_local! {
    /// A collection is due on this worker.
    static RETURN_DUE: Cell<bool> = const { Cell::new(false) };
}

/// Gives the pages that parked connections freed back to the OS soon. mimalloc returns freed
/// pages only when the thread allocates again after a delay, and a worker whose connections
/// have all gone idle allocates nothing: without this its resident memory would stay at what
/// the busy connections needed. One collection per [`RETURN_AFTER`] at most, per worker.
pub fn return_memory_soon() {
    if RETURN_DUE.replace(true) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(RETURN_AFTER).await;
        RETURN_DUE.set(false);
        // SAFETY: mi_collect takes no pointers and has no preconditions; it frees and
        // decommits memory mimalloc holds unused. Workers are current-thread runtimes, so
        // this runs on the thread whose heap the parked connections freed.
        unsafe { libmimalloc_sys::mi_collect(true) };
    });
}
