//! Reloads read their files off the main thread. Reading and checking a configuration (2,000
//! certificates take about a second) is blocking work; on the main thread it would hold up
//! what shares that thread: health checks, the admin endpoint, next-hop refreshes. The read
//! runs on tokio's blocking pool; the main thread, which owns the running node and the data
//! plane, only swaps in the result. Requests that arrive during a read are served by one more
//! read after it (their files may have changed after the first one began).
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::RunArgs;
use crate::config::{Config, ConfigError};
use crate::node::NodeError;

/// Why a reload was refused; the running configuration stays. Its text is what `POST /reload`
/// answers and what the log says.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The flags and files do not make a valid configuration: the configuration's own message.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting that only a restart can change (`xdp_iface and xdp_mode`, `admin`, `user`).
    #[error("{0} cannot change on reload; restart edgelb")]
    NeedsRestart(&'static str),
    /// The new configuration could not be brought up (a socket, TLS, the XDP maps).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A kernel setting the configuration needs could not be written.
    #[error(transparent)]
    SynProtect(#[from] crate::syn_protect::SettingsError),
}

/// Who asked for a reload and waits for its outcome (POST /reload; a signal waits for none).
pub type Waiter = crate::admin::ReloadReply;

/// A finished read: why it was asked for, the configuration or why it was refused, and who
/// waits for the outcome of applying it.
pub struct Read {
    pub why: &'static str,
    pub config: Result<Config, ReloadError>,
    pub waiting: Vec<Waiter>,
    /// With `--config-etcd`: the revision of the configuration read.
    pub etcd_revision: Option<i64>,
    /// When the read began (unix milliseconds): it holds the files as they were then, so a
    /// reload asked for before that instant is served by it (`edgelb reload` waits for one).
    pub started_ms: u64,
}

/// The first wait before a refused etcd revision is read again; each refusal doubles it.
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between two reads of a refused etcd revision.
const RETRY_MOST: Duration = Duration::from_secs(60);

pub struct Reloads {
    args: RunArgs,
    done_tx: mpsc::UnboundedSender<Read>,
    reading: bool,
    /// Asked for while a read was running: served by the next one.
    queued: Option<(&'static str, Vec<Waiter>)>,
    /// With `--config-etcd`: when the newest revision, refused, is read again. A fleet's
    /// configuration does not change for one node: what refused it here is often passing (a
    /// port still held by a process on its way out, a certificate file not yet deployed), and
    /// the node must catch up by itself rather than wait for the next change to the store.
    retry_at: Option<Instant>,
    /// The wait before the next retry.
    backoff: Duration,
}

impl Reloads {
    /// The reads' results arrive on the returned receiver, one per read.
    pub fn new(args: &RunArgs) -> (Self, mpsc::UnboundedReceiver<Read>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let reloads = Reloads {
            args: args.clone(),
            done_tx,
            reading: false,
            queued: None,
            retry_at: None,
            backoff: RETRY_FIRST,
        };
        (reloads, done_rx)
    }

    /// Starts a read now, or after the running one.
    pub fn request(&mut self, why: &'static str, waiter: Option<Waiter>) {
        if self.reading {
            let (_, waiting) = self.queued.get_or_insert((why, Vec::new()));
            waiting.extend(waiter);
        } else {
            self.start(why, waiter.into_iter().collect());
        }
    }

    /// With `--config-etcd`: the configuration the next reads use.
    pub fn set_etcd(&mut self, snapshot: crate::config::EtcdSnapshot) {
        self.args.etcd_snapshot = Some(snapshot);
        // A new revision is read at once, and a refusal of it is retried from the start.
        (self.retry_at, self.backoff) = (None, RETRY_FIRST);
    }

    /// Called with the outcome of applying a read of etcd `revision`: a refusal of the newest
    /// revision is read again after a wait that doubles up to a minute (returned, for the
    /// log); an applied one ends the retries.
    pub fn applied(&mut self, revision: Option<i64>, refused: bool) -> Option<Duration> {
        let newest = self.args.etcd_snapshot.as_ref().map(|s| s.revision);
        if revision.is_none() || revision != newest {
            return None;
        }
        if !refused {
            (self.retry_at, self.backoff) = (None, RETRY_FIRST);
            return None;
        }
        let wait = self.backoff;
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (wait * 2).min(RETRY_MOST);
        Some(wait)
    }

    /// When a refused etcd revision is due to be read again, if one is.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Reads the refused etcd revision again (at [`Self::retry_at`]).
    pub fn retry(&mut self) {
        self.retry_at = None;
        self.request("etcd retry", None);
    }

    /// Called once a read's result was applied: starts the queued read, if any.
    pub fn finished(&mut self) {
        self.reading = false;
        if let Some((why, waiting)) = self.queued.take() {
            self.start(why, waiting);
        }
    }

    fn start(&mut self, why: &'static str, waiting: Vec<Waiter>) {
        self.reading = true;
        let args = self.args.clone();
        let done = self.done_tx.clone();
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        tokio::task::spawn_blocking(move || {
            let config = Config::from_flags(&args.flags()).map_err(ReloadError::Config);
            // The receiver lives as long as the main loop; after it, nobody waits.
            let _ = done.send(Read {
                why,
                config,
                waiting,
                etcd_revision: args.etcd_snapshot.as_ref().map(|s| s.revision),
                started_ms,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_needs_a_restart() {
        assert_eq!(
            ReloadError::NeedsRestart("xdp_iface and xdp_mode").to_string(),
            "xdp_iface and xdp_mode cannot change on reload; restart edgelb"
        );
        let bind = NodeError::Bind {
            listener: "web".into(),
            addr: "127.0.0.1:8443".parse().expect("an address"),
            source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
        };
        let os = std::io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(
            ReloadError::from(bind).to_string(),
            format!("listener \"web\": 127.0.0.1:8443: cannot bind: {os}")
        );
    }
}
