//! What a client connection is doing, for its timeouts: when it last read bytes, whether a
//! request is being received, how many are in flight, when the last one finished, and whether
//! responses are waiting for the client to take them.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::coarse_clock;

const NONE: u64 = u64::MAX;

pub struct Activity {
    start: Instant,
    /// [`coarse_clock`] at `start`: the stamps below are taken on it (several per request).
    start_ms: u64,
    /// Milliseconds since `start` when the first byte of a request not yet handed to the
    /// service arrived; NONE when no request is being received.
    receiving_since: AtomicU64,
    in_flight: AtomicU32,
    /// Milliseconds since `start` when the last response finished; NONE before the first.
    last_done: AtomicU64,
    /// Response bodies that have handed over a frame and have not been asked for the next one
    /// yet: the client has not taken what was sent (socket full, or no HTTP/2 window).
    parked: AtomicU32,
    /// Milliseconds since `start` when a response body last handed over a frame.
    last_sent: AtomicU64,
    /// Signalled when a request finishes before `wake_before` (a permit is kept if nobody
    /// waits).
    finished: tokio::sync::Notify,
    /// Milliseconds since `start`: a request that finishes before this may bring the
    /// connection's deadline forward, so its watcher is woken; one that finishes later
    /// cannot, and costs nothing more. NONE: always wake it.
    wake_before: AtomicU64,
    /// Set while an idle HTTP/1.1 connection is being taken off hyper (see `park`).
    parking: AtomicBool,
    /// Reads that brought bytes from the client (only its connection's task reads).
    reads: AtomicU64,
    /// The last write or flush to the client could not complete: it has not taken what was
    /// sent (its window or the socket's buffer is full).
    write_blocked: AtomicBool,
}

/// When a connection must be closed, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// No request in flight and none arriving: the idle timeout (or, before the first
    /// request, the request timeout).
    Idle(Instant),
    /// Request headers are arriving: the request timeout from their first byte.
    Request(Instant),
    /// Requests in flight: their own timeouts apply; look again later.
    Busy,
    /// Responses are waiting for the client, and none has moved since: the request timeout
    /// from the last move (a client that stops reading cannot hold a connection, and the
    /// backend connection behind it, forever).
    Sending(Instant),
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            start_ms: coarse_clock::now_ms(),
            receiving_since: AtomicU64::new(NONE),
            in_flight: AtomicU32::new(0),
            last_done: AtomicU64::new(NONE),
            parked: AtomicU32::new(0),
            last_sent: AtomicU64::new(0),
            finished: tokio::sync::Notify::new(),
            wake_before: AtomicU64::new(NONE),
            parking: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        coarse_clock::now_ms()
            .saturating_sub(self.start_ms)
            .min(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    pub(super) fn bytes_read(&self) {
        // One writer: a plain load and store, no locked add.
        self.reads
            .store(self.reads.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let now = self.now_ms();
            let _ = self.receiving_since.compare_exchange(
                NONE,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The service got a request; the returned guard marks it finished when dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.receiving_since.store(NONE, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Resolves when a request has finished since the last call, before the time last given
    /// to [`Activity::wake_if_finished_before`].
    pub async fn finished(&self) {
        self.finished.notified().await;
    }

    /// Only requests that finish before `at` need wake [`Activity::finished`]'s waiter.
    pub fn wake_if_finished_before(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.start).as_millis();
        self.wake_before
            .store(u64::try_from(ms).unwrap_or(NONE), Ordering::Relaxed);
    }

    /// When an idle connection may be parked: `after` from the end of its last request, if
    /// one has ended and nothing is in flight or arriving since.
    pub fn parkable_at(&self, after: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0
            || self.receiving_since.load(Ordering::Relaxed) != NONE
        {
            return None;
        }
        match self.last_done.load(Ordering::Relaxed) {
            NONE => None,
            done => Some(self.at(done) + after),
        }
    }

    pub(super) fn write_polled(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// What the client has sent so far, as a count of reads: a change shows it is there
    /// (a live HTTP/2 client answers pings, and sends window updates while it takes a
    /// response).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Nothing in flight, and nothing the client has yet to take that edgelb tried to send.
    pub fn is_quiet(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.write_blocked.load(Ordering::Relaxed)
    }

    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }

    pub fn is_parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    /// `http1`: bytes read while idle start a request (for HTTP/2 they may be pings or
    /// window updates, so only the idle timeout applies there).
    pub fn deadline(&self, idle: Duration, request: Duration, http1: bool) -> Deadline {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            if self.parked.load(Ordering::Relaxed) > 0 {
                return Deadline::Sending(
                    self.at(self.last_sent.load(Ordering::Relaxed)) + request,
                );
            }
            return Deadline::Busy;
        }
        let receiving = self.receiving_since.load(Ordering::Relaxed);
        if http1 && receiving != NONE {
            return Deadline::Request(self.at(receiving) + request);
        }
        match self.last_done.load(Ordering::Relaxed) {
            NONE => Deadline::Idle(self.start + request),
            done => Deadline::Idle(self.at(done) + idle),
        }
    }
}

pub struct RequestGuard(Arc<Activity>);

/// A response body that tells its connection's [`Activity`] when it waits for the client: from
/// handing a data frame to hyper until hyper asks for the next one. hyper only asks once the
/// previous frame is on its way (HTTP/1: written or buffered; HTTP/2: within the client's
/// window), so a body parked for long means a client that does not read.
pub struct Sending<B> {
    body: B,
    activity: Arc<Activity>,
    parked: bool,
}

impl<B> Sending<B> {
    pub fn new(body: B, activity: Arc<Activity>) -> Self {
        Sending {
            body,
            activity,
            parked: false,
        }
    }

    fn unpark(&mut self) {
        if self.parked {
            self.parked = false;
            self.activity.parked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B: Body + Unpin> Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.unpark();
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
            && !self.body.is_end_stream()
        {
            // Stamped before it counts as parked: a stall is measured from here.
            let now = self.activity.now_ms();
            self.activity.last_sent.store(now, Ordering::Relaxed);
            self.parked = true;
            self.activity.parked.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Sending<B> {
    fn drop(&mut self) {
        self.unpark();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last_done.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if now < self.0.wake_before.load(Ordering::Relaxed) {
            self.0.finished.notify_one();
        }
    }
}
