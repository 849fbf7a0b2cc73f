//! The configuration from etcd (`--config-etcd`, `--config-prefix`): read once at start, then
//! watched. Every change under the prefix is read again whole, at one revision, and handed to
//! the daemon, which applies it like a reload (checked first; a bad one changes nothing). When
//! etcd cannot be reached the daemon keeps its last good configuration and this module keeps
//! trying.
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use crate::config::EtcdSnapshot;

/// Why etcd could not be read; the client's error is the source.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd {endpoints}: {source}")]
    Client {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {endpoints}: the watch of {prefix} ended")]
    WatchEnded { endpoints: String, prefix: String },
    #[error(
        "etcd {endpoints}: the watch of {prefix} was cancelled by etcd ({reason}; compacted up to revision {compacted}); reading it again"
    )]
    WatchCanceled {
        endpoints: String,
        prefix: String,
        reason: String,
        compacted: i64,
    },
}

/// What the watch tells the daemon.
pub enum Event {
    /// The configuration at a new revision.
    Changed(EtcdSnapshot),
    /// etcd cannot be reached or the watch broke; retried every [`RETRY`].
    Lost(String),
    /// Reached again (after `Lost`), with the configuration unchanged.
    Back,
}

const RETRY: Duration = Duration::from_secs(1);

/// One read of every key under `prefix`.
pub async fn fetch(endpoints: &[String], prefix: &str) -> Result<EtcdSnapshot, EtcdError> {
    let mut client = connect(endpoints).await?;
    Ok(read(&mut client, endpoints, prefix).await?.0)
}

/// Watches `prefix` from a task on `runtime`, sending every configuration that differs from
/// `seen` (the one in use), until the receiver is gone.
pub fn watch(
    runtime: &tokio::runtime::Handle,
    endpoints: Vec<String>,
    prefix: String,
    seen: EtcdSnapshot,
    tx: mpsc::UnboundedSender<Event>,
) {
    runtime.spawn(async move {
        let mut seen = seen;
        let mut lost = false;
        loop {
            let e = match follow(&endpoints, &prefix, &mut seen, &mut lost, &tx).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if tx.send(Event::Lost(e.to_string())).is_err() {
                return;
            }
            lost = true;
            tokio::time::sleep(RETRY).await;
        }
    });
}

/// Reads the configuration (sending it if it is newer than `seen`), then follows the watch.
/// Ok once nobody listens any more.
async fn follow(
    endpoints: &[String],
    prefix: &str,
    seen: &mut EtcdSnapshot,
    lost: &mut bool,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<(), EtcdError> {
    let mut client = connect(endpoints).await?;
    let fail = |source| EtcdError::Client {
        endpoints: endpoints.join(","),
        source,
    };
    let (snapshot, store_revision) = read(&mut client, endpoints, prefix).await?;
    if !deliver(snapshot, seen, lost, tx) {
        return Ok(());
    }
    // From the store's revision of that read: no change in between is missed.
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(store_revision + 1);
    let mut stream = client
        .watch(under(prefix).as_bytes(), Some(options))
        .await
        .map_err(fail)?;
    while let Some(response) = stream.message().await.map_err(fail)? {
        // etcd ends a watch it cannot serve (compacted past where it stood, no leader) with
        // one message and then says nothing more on a stream that stays open: read again from
        // the start, or every later change would be missed without a word.
        if response.canceled() {
            return Err(EtcdError::WatchCanceled {
                endpoints: endpoints.join(","),
                prefix: prefix.to_string(),
                reason: match response.cancel_reason() {
                    "" => "no reason given".to_string(),
                    why => why.to_string(),
                },
                compacted: response.compact_revision(),
            });
        }
        if response.events().is_empty() {
            continue;
        }
        // Read whole at one revision: a change of several keys arrives as one.
        let (snapshot, _) = read(&mut client, endpoints, prefix).await?;
        if !deliver(snapshot, seen, lost, tx) {
            return Ok(());
        }
    }
    Err(EtcdError::WatchEnded {
        endpoints: endpoints.join(","),
        prefix: prefix.to_string(),
    })
}

/// Sends the configuration if it differs from `seen`; false once nobody listens.
fn deliver(
    snapshot: EtcdSnapshot,
    seen: &mut EtcdSnapshot,
    lost: &mut bool,
    tx: &mpsc::UnboundedSender<Event>,
) -> bool {
    let event = if snapshot != *seen {
        *seen = snapshot.clone();
        Event::Changed(snapshot)
    } else if *lost {
        Event::Back
    } else {
        return true;
    };
    *lost = false;
    tx.send(event).is_ok()
}

async fn connect(endpoints: &[String]) -> Result<Client, EtcdError> {
    // Keep-alives notice a dead etcd on an idle watch within seconds; not more often than
    // etcd takes them (`--grpc-keepalive-min-time`, 5 s by default: a client pinging faster
    // is sent away with GOAWAY "too_many_pings"). A member cut off from its cluster's leader
    // cancels the watch rather than leaving it silent.
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|source| EtcdError::Client {
            endpoints: endpoints.join(","),
            source,
        })
}

/// Every key under `prefix`, and the store's revision at that read. The snapshot's revision
/// is the newest change among its keys: the same on every node that reads the same keys.
async fn read(
    client: &mut Client,
    endpoints: &[String],
    prefix: &str,
) -> Result<(EtcdSnapshot, i64), EtcdError> {
    let response = tokio::time::timeout(
        Duration::from_secs(3),
        client.get(
            under(prefix).as_bytes(),
            Some(GetOptions::new().with_prefix()),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(etcd_client::Error::InvalidArgs(
            "no answer within 3 s".into(),
        ))
    })
    .map_err(|source| EtcdError::Client {
        endpoints: endpoints.join(","),
        source,
    })?;
    let store_revision = response.header().map_or(0, |h| h.revision());
    let mut snapshot = EtcdSnapshot {
        prefix: prefix.to_string(),
        ..EtcdSnapshot::default()
    };
    let groups = format!("{prefix}/ip_groups/");
    for kv in response.kvs() {
        let Ok(key) = kv.key_str() else {
            tracing::debug!(prefix, "etcd: a key under the prefix is not UTF-8; ignored");
            continue;
        };
        // Not skipped when it is not UTF-8: a skipped group would give way to the TOML's
        // group of that name without a word. Replacement characters make the address they
        // are in a refused one (and the comment they are in, nothing).
        let value = String::from_utf8_lossy(kv.value());
        if key == format!("{prefix}/config") {
            snapshot.config = Some(value.to_string());
        } else if let Some(name) = key.strip_prefix(&groups) {
            snapshot
                .ip_groups
                .insert(name.to_string(), value.to_string());
        } else {
            tracing::debug!(key, "etcd: key under the prefix is not edgelb's; ignored");
            continue;
        }
        // The newest change among the keys edgelb reads: another key written under the
        // prefix is no new configuration.
        snapshot.revision = snapshot.revision.max(kv.mod_revision());
    }
    Ok((snapshot, store_revision))
}

/// What a get or watch of `prefix` covers: the keys under it as a directory, not those of
/// another prefix that merely starts the same (`/edgelb/web-canary` beside `/edgelb/web`).
fn under(prefix: &str) -> String {
    format!("{prefix}/")
}
