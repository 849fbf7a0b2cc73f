//! The access log: one line per request, written when its response has been sent, to a file
//! of its own (`--access-log PATH`) or to stderr, as logfmt-style text or JSON. It does not go
//! through `tracing`, so `RUST_LOG` cannot turn it off or reformat it. SIGUSR1 reopens the
//! file, for logrotate.
mod counted;
mod entry;
mod time;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use counted::{Counted, Counters};
pub use entry::{Answer, Entry};

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
}

#[derive(Debug, thiserror::Error)]
#[error("--access-log {}: cannot open it for appending: {source}", .path.display())]
pub struct OpenError {
    path: PathBuf,
    source: std::io::Error,
}

/// The open log, shared by every listener on every worker.
pub struct AccessLog {
    settings: Settings,
    /// None for stderr. Swapped whole on reopen: a line being written finishes on the old
    /// file, which closes when its last writer lets go.
    file: Option<ArcSwap<File>>,
}

impl AccessLog {
    pub fn open(settings: Settings) -> Result<Arc<AccessLog>, OpenError> {
        let file = match &settings.target {
            Target::Stderr => None,
            Target::File(path) => Some(ArcSwap::from_pointee(open_append(path)?)),
        };
        Ok(Arc::new(AccessLog { settings, file }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Opens the file again by its path (after logrotate moved it away); false for stderr.
    /// On failure the old file stays in use and the error is returned for the daemon's log.
    pub fn reopen(&self) -> Result<bool, OpenError> {
        match (&self.file, &self.settings.target) {
            (Some(file), Target::File(path)) => {
                file.store(Arc::new(open_append(path)?));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Writes one whole line with one write(2): with O_APPEND, lines from several workers
    /// never interleave. A full disk loses the line, not the request.
    fn write_line(&self, line: &str) {
        let written = match &self.file {
            Some(file) => file.load().as_ref().write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "access log line lost");
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
    /// The entry of a request that just arrived, and the counters its bodies count into.
    pub fn start<B>(
        &self,
        client: std::net::SocketAddr,
        sni: Option<&str>,
        req: &hyper::Request<B>,
    ) -> (Entry, Arc<Counters>) {
        Entry::start(self.log.clone(), self.listener.clone(), client, sni, req)
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

fn open_append(path: &Path) -> Result<File, OpenError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| OpenError {
            path: path.to_path_buf(),
            source,
        })
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
        })
        .expect("open");
        log.write_line("one\n");
        std::fs::rename(&path, dir.join("access.log.1")).expect("rotate");
        log.write_line("two\n");
        assert!(log.reopen().expect("reopen"));
        log.write_line("three\n");
        let rotated = std::fs::read_to_string(dir.join("access.log.1")).expect("rotated");
        let fresh = std::fs::read_to_string(&path).expect("fresh");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            (rotated.as_str(), fresh.as_str()),
            ("one\ntwo\n", "three\n")
        );
    }

    #[test]
    fn a_file_that_cannot_be_opened_names_the_flag_and_the_path() {
        let e = AccessLog::open(Settings {
            target: Target::File("/nonexistent-dir/access.log".into()),
            format: Format::Json,
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
