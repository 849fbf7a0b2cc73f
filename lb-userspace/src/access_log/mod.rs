//! The access log: one line per request, written when its response has been sent, to a file
//! of its own (`--access-log PATH`) or to stderr, as logfmt-style text or JSON. It does not go
//! through `tracing`, so `RUST_LOG` cannot turn it off or reformat it. SIGUSR1 reopens the
//! file, for logrotate. Lines are written by a thread of their own ([`crate::line_writer`]):
//! a destination that stalls costs lines (counted), never requests.
mod counted;
mod entry;
mod time;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::line_writer::{Destination, Writer};
pub use counted::{Counted, Counters};
pub use entry::{Answer, Entry};

/// Lines every access log of the process dropped because their destination did not keep up.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stderr,
    File(PathBuf),
}

/// How a line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `key=value` pairs, strings quoted (logfmt).
    Plain,
    /// One JSON object per line.
    Json,
}

/// `--access-log` and `--access-log-format`, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub target: Target,
    pub format: Format,
    /// `--user`: who the file is handed to when it is opened while still root, so that the
    /// daemon can reopen it after dropping to that user (SIGUSR1, a reload), and logrotate's
    /// `create` gives the new file the same owner. nginx does the same for its workers' user.
    pub owner: Option<nix::unistd::Uid>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("--access-log {}: cannot open it for appending: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--access-log {}: a FIFO that no process is reading: start its reader first", .path.display())]
    NoReader { path: PathBuf },
    #[error("--access-log: cannot start its writing thread: {0}")]
    Thread(std::io::Error),
}

/// The open log, shared by every listener on every worker.
pub struct AccessLog {
    settings: Settings,
    /// Its own writer for a file; None for stderr, which has the process's one.
    writer: Option<Writer>,
}

impl AccessLog {
    pub fn open(settings: Settings) -> Result<Arc<AccessLog>, OpenError> {
        let writer = match &settings.target {
            Target::Stderr => None,
            Target::File(path) => Some(
                Writer::start(Destination::File(open_append(path, settings.owner)?))
                    .map_err(OpenError::Thread)?,
            ),
        };
        Ok(Arc::new(AccessLog { settings, writer }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Opens the file again by its path (after logrotate moved it away); false for stderr.
    /// On failure the old file stays in use and the error is returned for the daemon's log.
    pub fn reopen(&self) -> Result<bool, OpenError> {
        match (&self.writer, &self.settings.target) {
            (Some(writer), Target::File(path)) => {
                writer.switch_to(open_append(path, self.settings.owner)?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Its own writer, or the process's one to stderr.
    fn writer(&self) -> Option<&Writer> {
        match &self.writer {
            Some(w) => Some(w),
            None => crate::line_writer::stderr(),
        }
    }

    /// Queues one whole line (lines are written whole, never interleaved).
    fn write_line(&self, line: &str) {
        let queued = match self.writer() {
            Some(w) => w.push(line.as_bytes()),
            None => {
                use std::io::Write;
                let _ = std::io::stderr().write_all(line.as_bytes());
                true
            }
        };
        if !queued {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until the lines logged so far are written, at most `within` (at exit: a
    /// destination that stalls must not keep the process from ending); false if it did not.
    pub fn flush(&self, within: Duration) -> bool {
        match self.writer() {
            Some(w) => w.flush(within),
            None => true,
        }
    }
}

/// A listener's handle on the log: its lines carry the listener's name.
#[derive(Clone)]
pub struct ListenerLog {
    pub log: Arc<AccessLog>,
    pub listener: Arc<str>,
}

impl ListenerLog {
    /// The entry of a request that arrived at `started`, and the counters its bodies count
    /// into. The caller's instant, so the upstream time it measures from the same instant is
    /// never more than the total. Boxed: it rides in the request's future and its response
    /// body, which are then 8 bytes larger with a log, not 264 larger with or without one.
    pub fn start<B>(
        &self,
        started: std::time::Instant,
        client: std::net::SocketAddr,
        sni: Option<&str>,
        req: &hyper::Request<B>,
    ) -> (Box<Entry>, Arc<Counters>) {
        let (entry, counters) = Entry::start(
            self.log.clone(),
            self.listener.clone(),
            started,
            client,
            sni,
            req,
        );
        (Box::new(entry), counters)
    }

    /// Logs a request refused before its head could be parsed, answered with `status`.
    pub fn unparsed(&self, client: std::net::SocketAddr, sni: Option<&str>, status: u16) {
        drop(Entry::unparsed(
            self.log.clone(),
            self.listener.clone(),
            client,
            sni,
            status,
        ));
    }
}

/// Opens `path` for appending without waiting: opening a FIFO for writing otherwise blocks
/// until a reader opens it, and the open runs on the daemon's control loop (SIGUSR1, reload),
/// which would stop answering signals, health changes and reloads until the log shipper came
/// back. The writes themselves block, on the log's own thread.
fn open_append(path: &Path, owner: Option<nix::unistd::Uid>) -> Result<File, OpenError> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let failed = |source| OpenError::File {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ENXIO) => OpenError::NoReader {
                path: path.to_path_buf(),
            },
            _ => failed(source),
        })?;
    let flags = fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), FcntlArg::F_GETFL)
        .map_err(|e| failed(e.into()))?;
    let blocking = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        FcntlArg::F_SETFL(blocking),
    )
    .map_err(|e| failed(e.into()))?;
    if let Some(owner) = owner
        && nix::unistd::Uid::effective().is_root()
    {
        hand_over(&file, path, owner);
    }
    Ok(file)
}

/// Gives the log file opened as root to `--user`, so that the daemon can reopen it once it
/// is that user. Only a root-owned regular file with one link that is the path itself, not a
/// symlink's target: a user who can write the directory must not be able to point the path
/// at another root file and have it handed over (nginx's CVE-2016-1247). A failure (no
/// CAP_CHOWN, NFS with root_squash) costs the reopens, not the start, and is said.
fn hand_over(file: &File, path: &Path, owner: nix::unistd::Uid) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(opened), Ok(at_path)) = (file.metadata(), std::fs::symlink_metadata(path)) else {
        return;
    };
    let same = opened.dev() == at_path.dev() && opened.ino() == at_path.ino();
    if !(same && opened.is_file() && opened.nlink() == 1 && opened.uid() == 0) {
        return;
    }
    if let Err(e) = nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(file), Some(owner), None) {
        tracing::warn!(
            "--access-log {}: cannot hand the file to --user ({e}): it stays root's, and \
             reopening it after logrotate or on SIGUSR1 will be refused; give the service \
             CAP_CHOWN, or create the file owned by that user",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_follows_the_path_after_the_file_was_moved_away() {
        let dir = std::env::temp_dir().join(format!("edgelb-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("access.log");
        let log = AccessLog::open(Settings {
            target: Target::File(path.clone()),
            format: Format::Plain,
            owner: None,
        })
        .expect("open");
        log.write_line("one\n");
        assert!(log.flush(Duration::from_secs(5)));
        std::fs::rename(&path, dir.join("access.log.1")).expect("rotate");
        // Queued before the reopen: still the old file's, though written after it.
        log.write_line("two\n");
        assert!(log.reopen().expect("reopen"));
        log.write_line("three\n");
        assert!(log.flush(Duration::from_secs(5)));
        let rotated = std::fs::read_to_string(dir.join("access.log.1")).expect("rotated");
        let fresh = std::fs::read_to_string(&path).expect("fresh");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            (rotated.as_str(), fresh.as_str()),
            ("one\ntwo\n", "three\n")
        );
    }

    /// At start, as at a reopen: refused at once, not a wait for a reader that may never come.
    #[test]
    fn a_fifo_without_a_reader_is_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("edgelb-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("access.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let e = AccessLog::open(Settings {
            target: Target::File(path.clone()),
            format: Format::Plain,
            owner: None,
        })
        .err()
        .expect("refused");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            e.to_string(),
            format!(
                "--access-log {}: a FIFO that no process is reading: start its reader first",
                path.display()
            )
        );
    }

    #[test]
    fn a_file_that_cannot_be_opened_names_the_flag_and_the_path() {
        let e = AccessLog::open(Settings {
            target: Target::File("/nonexistent-dir/access.log".into()),
            format: Format::Json,
            owner: None,
        })
        .err()
        .expect("refused");
        let text = e.to_string();
        assert!(
            text.starts_with("--access-log /nonexistent-dir/access.log: cannot open"),
            "{text}"
        );
    }
}
