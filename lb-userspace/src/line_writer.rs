//! Log lines written by a thread of their own. A worker only appends a finished line to a
//! buffer; the thread writes the buffer out. So a destination that stalls (a pipe or FIFO
//! nobody reads, a hung network filesystem, a journald that falls behind) costs log lines,
//! never requests: past [`PENDING_MAX`] waiting bytes, lines are dropped and counted by the
//! caller. And a busy log costs one write(2) per batch instead of one per line.
//!
//! Everything the daemon writes to stderr (its own log and an access log on stderr) goes
//! through one such writer, [`stderr`], so that one stalled stderr cannot hold a worker on
//! the lock of another.
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Bytes of lines held for the destination (queued, and the batch being written) before new
/// lines are dropped: about 12,000 access log lines, several seconds of a busy node's log.
pub const PENDING_MAX: usize = 4 << 20;
/// After each batch the thread waits this long for the next one to gather, so that at most
/// about a hundred writes a second are made however many lines there are.
const GATHER: Duration = Duration::from_millis(10);

/// Where lines go. The file is owned by the thread; a reopen hands it the new one.
pub enum Destination {
    Stderr,
    File(File),
}

impl Destination {
    /// Writes `bytes` whole, or says how many went out before the error.
    fn write(&mut self, bytes: &[u8]) -> Result<(), (usize, std::io::Error)> {
        match self {
            Destination::Stderr => write_counted(&mut std::io::stderr().lock(), bytes),
            Destination::File(f) => write_counted(f, bytes),
        }
    }
}

/// `write_all` that keeps count: on an error, how many bytes were written before it.
fn write_counted(w: &mut impl Write, mut bytes: &[u8]) -> Result<(), (usize, std::io::Error)> {
    let mut done = 0;
    while !bytes.is_empty() {
        match w.write(bytes) {
            Ok(0) => return Err((done, std::io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                done += n;
                bytes = &bytes[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// A reopened file, and how many bytes of `pending` still belong to the one before it.
    switch: Option<(File, usize)>,
    /// The thread is waiting for lines (and must be woken for the next one).
    waiting: bool,
    /// Bytes of the batch the thread took and is writing (0: none).
    writing: usize,
    /// The writer was let go of: write what is pending, then end.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Lines arrived, or the writer closed.
    wake: Condvar,
    /// A batch was written.
    written: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a buffer that is still whole lines.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, s: &mut State) {
        // Waking costs a system call: only when the thread sleeps waiting for lines.
        if std::mem::take(&mut s.waiting) {
            self.wake.notify_one();
        }
    }
}

/// The handle on a writing thread; dropping it lets the thread finish what is pending and end.
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    pub fn start(destination: Destination) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
        });
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("edgelb-log-writer".into())
            .spawn(move || run(&thread, destination))?;
        Ok(Writer { shared })
    }

    /// Queues whole lines; false if they were dropped because too much is waiting already.
    pub fn push(&self, lines: &[u8]) -> bool {
        let mut s = self.shared.lock();
        if s.pending.len() + s.writing + lines.len() > PENDING_MAX {
            return false;
        }
        s.pending.extend_from_slice(lines);
        self.shared.wake(&mut s);
        true
    }

    /// Lines queued from now on go to `file`; those queued before still go to the old one.
    pub fn switch_to(&self, file: File) {
        let mut s = self.shared.lock();
        // Reopened twice before the thread got to it: the newer file takes the lines of both.
        let at = s.switch.take().map_or(s.pending.len(), |(_, at)| at);
        s.switch = Some((file, at));
        self.shared.wake(&mut s);
    }

    /// Waits until every line queued so far has been written, at most `within`; false if
    /// the destination did not take them in time.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut s = self.shared.lock();
        self.shared.wake(&mut s);
        while !s.pending.is_empty() || s.switch.is_some() || s.writing > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = match self.shared.written.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// A thread stuck in a write when its writer is dropped (a reload that moved the access log
/// away from a hung destination) ends only once that write returns: a write to a hung
/// filesystem cannot be interrupted. It holds at most [`PENDING_MAX`] bytes meanwhile.
impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

fn run(shared: &Shared, mut destination: Destination) {
    let mut batch = Vec::new();
    let mut errors = ErrorReport::default();
    loop {
        let mut s = shared.lock();
        while s.pending.is_empty() && s.switch.is_none() && !s.closed {
            s.waiting = true;
            s = match shared.wake.wait(s) {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
        }
        s.waiting = false;
        let closed = s.closed;
        std::mem::swap(&mut batch, &mut s.pending);
        let switch = s.switch.take();
        // Counted until written: a destination stuck in a write holds this batch too.
        s.writing = batch.len().max(1);
        drop(s);

        let (old, new) = match &switch {
            Some((_, at)) => batch.split_at(*at),
            None => (&batch[..], &[][..]),
        };
        errors.write(&mut destination, old);
        if let Some((file, _)) = switch {
            destination = Destination::File(file);
            errors.torn = false;
            errors.write(&mut destination, new);
        }
        batch.clear();
        // A burst may have grown the buffer to megabytes: do not keep them for good.
        batch.shrink_to(64 * 1024);

        let mut s = shared.lock();
        s.writing = 0;
        shared.written.notify_all();
        if closed && s.pending.is_empty() {
            return;
        }
        drop(s);
        std::thread::sleep(GATHER);
    }
}

/// Writes batches, says now and then why lines were lost, and keeps the lines after a lost
/// part of one on lines of their own.
#[derive(Default)]
struct ErrorReport {
    last: Option<Instant>,
    /// The destination took part of a line and refused the rest (a full disk): the next
    /// write starts with a line end, or its first line would be glued to that half.
    torn: bool,
}

impl ErrorReport {
    fn write(&mut self, destination: &mut Destination, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // A full disk loses the lines, not the requests; the next batch tries again.
        let written = if self.torn {
            destination.write(b"\n").map(|()| self.torn = false)
        } else {
            Ok(())
        }
        .and_then(|()| destination.write(bytes));
        let Err((done, e)) = written else {
            return;
        };
        // (When the line end itself was refused, nothing of `bytes` went out: done is 0.)
        if done > 0 && bytes[done - 1] != b'\n' {
            self.torn = true;
        }
        if self.last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            tracing::warn!(error = %e, "log lines lost: their destination refused them");
            self.last = Some(Instant::now());
        }
    }
}

/// Dropped lines are reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Says now and then how many lines a count says were dropped. Called by the daemon's clock,
/// since the writing thread may be the one stuck in a write.
pub struct DropReport {
    count: &'static AtomicU64,
    what: &'static str,
    seen: u64,
    last: Option<Instant>,
}

impl DropReport {
    pub fn new(count: &'static AtomicU64, what: &'static str) -> DropReport {
        DropReport {
            count,
            what,
            seen: count.load(Ordering::Relaxed),
            last: None,
        }
    }

    pub fn tick(&mut self) {
        let now = self.count.load(Ordering::Relaxed);
        if now == self.seen || self.last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        tracing::warn!(
            dropped = now - self.seen,
            "{} lines dropped: their destination did not keep up (more than 4 MiB waiting)",
            self.what
        );
        self.seen = now;
        self.last = Some(Instant::now());
    }
}

/// The process's one writer to stderr, started on first use; None if its thread could not
/// be started (then stderr is written directly).
pub fn stderr() -> Option<&'static Writer> {
    STDERR
        .get_or_init(|| match Writer::start(Destination::Stderr) {
            Ok(w) => Some(w),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "edgelb: warning: no thread for log lines ({e}): they are written by the threads that log them"
                );
                None
            }
        })
        .as_ref()
}

static STDERR: OnceLock<Option<Writer>> = OnceLock::new();

/// The daemon's own log lines dropped since start.
pub static LOG_DROPPED: AtomicU64 = AtomicU64::new(0);

/// The daemon's log (`tracing`) as a writer: each event, formatted whole, is one push.
pub struct DaemonLog;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for DaemonLog {
    type Writer = DaemonLog;

    fn make_writer(&'a self) -> DaemonLog {
        DaemonLog
    }
}

impl Write for DaemonLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match stderr() {
            Some(w) => {
                if !w.push(buf) {
                    LOG_DROPPED.fetch_add(1, Ordering::Relaxed);
                }
                Ok(buf.len())
            }
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long the process waits at exit for each writer's queued lines.
pub const EXIT_FLUSH: Duration = Duration::from_secs(2);

/// Waits (at most [`EXIT_FLUSH`]) until what was queued for stderr has been written: before
/// the process ends.
pub fn flush_stderr() {
    if let Some(Some(w)) = STDERR.get() {
        w.flush(EXIT_FLUSH);
    }
}

/// One line for stderr outside the log (`edgelb: error: ...`): after the log lines queued
/// before it, through the same writer once that has started, else at once.
pub fn say(line: &str) {
    match STDERR.get() {
        Some(Some(w)) => {
            let line = format!("{line}\n");
            if !w.push(line.as_bytes()) {
                LOG_DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}

/// A panic's message comes after the lines logged before it, which may explain it (and the
/// process may end with the panic, before the writer gets to them).
pub fn flush_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(Some(w)) = STDERR.get() {
            w.flush(Duration::from_millis(200));
        }
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Lines of 100 bytes, numbered.
    fn line(i: usize) -> Vec<u8> {
        let mut l = format!("{i:>10} ").into_bytes();
        l.resize(99, b'.');
        l.push(b'\n');
        l
    }

    /// A full filesystem takes part of a batch, up to the middle of a line: the lines
    /// written once there is room again each start on a line of their own, not glued to
    /// that half line (as root: a real tmpfs of 16 KiB).
    #[test]
    fn lines_after_a_full_disk_start_on_their_own_line() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: no tmpfs to fill");
            return;
        }
        let dir = std::env::temp_dir().join(format!("edgelb-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(mounted, "mount a tmpfs");
        let result = std::panic::catch_unwind(|| {
            let log = dir.join("access.log");
            let file = File::options()
                .create(true)
                .append(true)
                .open(&log)
                .expect("log");
            let writer = Writer::start(Destination::File(file)).expect("writer");
            writer.push(&line(0));
            assert!(writer.flush(Duration::from_secs(5)));
            // Every other page taken: the log has the rest of its first page, under 4 KiB.
            let mut filler = File::create(dir.join("filler")).expect("filler");
            while filler.write_all(&[0u8; 4096]).is_ok() {}
            let _ = filler.write_all(&[0u8; 1]);
            for i in 1..=60 {
                writer.push(&line(i));
            }
            assert!(writer.flush(Duration::from_secs(5)));
            drop(filler);
            std::fs::remove_file(dir.join("filler")).expect("room again");
            writer.push(b"after\n");
            assert!(writer.flush(Duration::from_secs(5)));
            let text = std::fs::read_to_string(&log).expect("read");
            assert!(text.len() < 60 * 100, "the disk was not full");
            assert!(
                text.lines().any(|l| l == "after"),
                "the line after the full disk is glued to another: {:?}",
                text.lines().last()
            );
        });
        let _ = std::process::Command::new("umount").arg(&dir).status();
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// A destination that takes nothing (a pipe nobody reads) holds at most PENDING_MAX
    /// bytes, the batch stuck in its write included; once read, what was taken arrives whole
    /// and in order.
    #[test]
    fn a_stalled_destination_holds_at_most_the_cap_and_loses_no_line_it_took() {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        let writer = Writer::start(Destination::File(File::from(write))).expect("writer");
        let mut taken = 0;
        let mut i = 0;
        // Twice: the first refusal may come while the thread has not yet taken its batch.
        for _ in 0..2 {
            while writer.push(&line(i)) {
                taken += 1;
                i += 1;
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        let pipe = 64 * 1024;
        assert!(
            taken * 100 <= PENDING_MAX + pipe + 100,
            "{taken} lines held, {} bytes",
            taken * 100
        );
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = File::from(read).read_to_end(&mut all);
            all
        });
        assert!(writer.flush(Duration::from_secs(10)));
        drop(writer);
        let all = reader.join().expect("reader");
        let numbers: Vec<usize> = all
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                assert_eq!(l.len(), 99, "{}", String::from_utf8_lossy(l));
                String::from_utf8_lossy(&l[..10])
                    .trim()
                    .parse()
                    .expect("number")
            })
            .collect();
        assert_eq!(numbers.len(), taken);
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "out of order");
    }
}
