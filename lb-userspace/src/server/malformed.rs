//! HTTP/1.1 requests hyper refuses while parsing their head: it answers them itself before any
//! service sees them, so they are logged here, with the reason, in the access log and in the
//! request counters, as every other refused request is (nginx logs these too).
use crate::proxy::headers::ConnInfo;
use crate::refusals::{self, Refused};

use super::ListenerContext;

/// The status hyper's server answered a head it could not parse with (`Server::on_error`),
/// or None when it answered nothing (an HTTP/2 preface, a failure that is not the client's).
pub fn answered(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    // Too large is 431: heads are capped at `MAX_REQUEST_HEAD` (16 KiB), below the 64 KiB at
    // which hyper would call the URI too long (414) instead.
    Some(if e.is_parse_too_large() { 431 } else { 400 })
}

/// Logs the request `e` ended the connection for, if hyper answered it.
pub fn record(e: &hyper::Error, conn: &ConnInfo, ctx: &ListenerContext) {
    let Some(status) = answered(e) else {
        return;
    };
    refusals::log(
        Refused::Request,
        ctx.metrics.name(),
        conn.peer,
        &format_args!("malformed HTTP/1.1 request head: {e} (answered {status})"),
    );
    let live = ctx.live.load();
    live.routes.count_refused(status);
    if let Some(log) = &live.access_log {
        log.unparsed(conn.peer, conn.sni.as_deref(), status);
    }
}
