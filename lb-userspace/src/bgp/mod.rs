//! Announcing this node's listener addresses to its routers over BGP, through BIRD. The
//! daemon says which addresses should be announced (serving, and with a healthy backend when
//! so configured); this module makes the speaker announce exactly those, withdraws them all
//! before the node stops, and reports each session's state.
mod bird;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use tracing::{info, warn};

pub use bird::BirdError;
use bird::{Bird, PeerState};

use crate::config::bgp::{BgpAnnounce, BgpConfig};

pub struct Announcer {
    config: BgpConfig,
    bird: Bird,
    dir: PathBuf,
    announced: BTreeSet<IpAddr>,
    peers: Vec<Option<PeerState>>,
    /// Set once the node is stopping: nothing is announced again.
    withdrawn: bool,
    /// Addresses withdrawn ahead of a reload that drops their listeners: not announced
    /// again whatever the running listeners say, until the reload is applied.
    held: BTreeSet<IpAddr>,
    /// A speaker that died is started again, not before this, with a growing wait; never
    /// after a privilege drop (it needs root for BGP's port).
    restart_at: std::time::Instant,
    restart_wait: std::time::Duration,
    restartable: bool,
    /// When the running speaker was started: the wait goes back to its first value only for
    /// a speaker that had run for [`RAN_LONG`], so one that dies as soon as it starts (a bad
    /// BIRD, a missing library) is not started again every second for ever.
    started: std::time::Instant,
    /// A speaker being started again, off the main loop: starting waits up to 10 s for its
    /// control socket, and the loop (maps, reloads, next hops) must not wait with it.
    starting: Option<tokio::task::JoinHandle<Result<Bird, BirdError>>>,
    /// Set at the stop: a start still going on gives up and kills its speaker.
    cancel: Arc<AtomicBool>,
}

/// The first wait before a speaker that died is started again; each restart doubles it.
const RESTART_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait between restarts.
const RESTART_MOST: std::time::Duration = std::time::Duration::from_secs(30);
/// A speaker that ran this long before it died is started again after [`RESTART_FIRST`]:
/// longer than [`RESTART_MOST`], so that a speaker dying at each start never gets there.
const RAN_LONG: std::time::Duration = std::time::Duration::from_secs(60);

/// What `/status` and `edgelb status` show of BGP.
#[derive(Clone, Debug, Serialize)]
pub struct BgpView {
    pub local_as: u32,
    pub router_id: String,
    pub peers: Vec<PeerView>,
    /// Addresses announced now, as routes.
    pub announced: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    pub address: String,
    pub asn: u32,
    pub established: bool,
    /// The speaker's words for the session: `Established`, `Active Socket: Connection
    /// refused`...
    pub state: String,
}

impl Announcer {
    /// Starts the speaker with nothing announced.
    pub fn start(config: BgpConfig) -> Result<Announcer, BirdError> {
        let dir = Bird::make_dir()?;
        let bird = Bird::start(&config, &dir, &AtomicBool::new(false)).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        info!(
            local_as = config.local_as,
            router_id = %config.router_id,
            peers = config.peers.len(),
            speaker = %config.speaker.display(),
            "BGP speaker started"
        );
        Ok(Announcer {
            peers: vec![None; config.peers.len()],
            config,
            bird,
            dir,
            announced: BTreeSet::new(),
            withdrawn: false,
            held: BTreeSet::new(),
            restart_at: std::time::Instant::now(),
            restart_wait: RESTART_FIRST,
            restartable: true,
            started: std::time::Instant::now(),
            starting: None,
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn announce_when(&self) -> BgpAnnounce {
        self.config.announce
    }

    pub fn settings(&self) -> &BgpConfig {
        &self.config
    }

    /// With `--user`: the speaker's files become that user's, who runs the daemon from then on.
    /// A speaker that dies after this cannot be started again (BGP's port needs root).
    pub fn hand_to(
        &mut self,
        uid: nix::unistd::Uid,
        gid: nix::unistd::Gid,
    ) -> Result<(), BirdError> {
        self.restartable = false;
        self.bird.hand_to(uid, gid)
    }

    /// Withdraws those of `going` that are announced and keeps them withdrawn until
    /// [`Announcer::release`]; true if any was announced (the caller then waits for the routers
    /// before closing their listeners).
    pub async fn hold_back(&mut self, going: BTreeSet<IpAddr>) -> bool {
        let announced = self.announced.intersection(&going).count() > 0;
        self.held = going;
        let wanted = self.announced.clone();
        self.update(wanted).await;
        announced
    }

    pub fn release(&mut self) {
        self.held.clear();
    }

    /// Makes the announced routes exactly `wanted` (nothing once the node is stopping).
    pub async fn update(&mut self, wanted: BTreeSet<IpAddr>) {
        let wanted: BTreeSet<IpAddr> = wanted.difference(&self.held).copied().collect();
        // A speaker being started again is given the routes once it is up.
        if self.withdrawn || wanted == self.announced || self.starting.is_some() {
            return;
        }
        match self.bird.announce(&wanted).await {
            Ok(()) => {
                let added: Vec<String> = wanted
                    .difference(&self.announced)
                    .map(ToString::to_string)
                    .collect();
                let removed: Vec<String> = self
                    .announced
                    .difference(&wanted)
                    .map(ToString::to_string)
                    .collect();
                info!(
                    announced = ?added,
                    withdrawn = ?removed,
                    "BGP routes changed"
                );
                self.announced = wanted;
            }
            Err(e) => warn!(error = %e, "BGP: the speaker refused the routes; retrying"),
        }
    }

    /// Withdraws every route for good: the node is stopping. False if the speaker did not
    /// take it; then the caller stops the speaker, whose closing sessions withdraw everything.
    pub async fn withdraw_all(&mut self) -> bool {
        self.update(BTreeSet::new()).await;
        self.withdrawn = true;
        self.announced.is_empty()
    }

    /// Reads the sessions' states, logging each change; restarts the speaker if it died (the
    /// restart goes on in the background: a later poll takes it up).
    pub async fn poll(&mut self) {
        if let Some(starting) = self.starting.take() {
            if !starting.is_finished() {
                self.starting = Some(starting);
                return;
            }
            match starting
                .await
                .unwrap_or_else(|e| Err(BirdError::Task(e.to_string())))
            {
                Ok(bird) => {
                    info!(
                        next_wait_secs = self.restart_wait.as_secs(),
                        "BGP speaker started again"
                    );
                    self.bird = bird;
                    self.started = std::time::Instant::now();
                    // Announced afresh by the next update.
                    self.announced.clear();
                    self.peers = vec![None; self.config.peers.len()];
                }
                Err(e) => {
                    warn!(error = %e, "BGP speaker cannot be started again");
                    return;
                }
            }
        }
        if let Some(status) = self.bird.exited() {
            if !self.announced.is_empty() || self.peers.iter().any(Option::is_some) {
                warn!(%status, "BGP speaker exited: its sessions and routes are gone");
                self.announced.clear();
                self.peers = vec![None; self.config.peers.len()];
                if !self.restartable {
                    warn!(
                        "BGP speaker cannot be started again after the privilege drop (--user): restart edgelb"
                    );
                }
            }
            if !self.restartable || std::time::Instant::now() < self.restart_at {
                return;
            }
            if self.started.elapsed() >= RAN_LONG {
                self.restart_wait = RESTART_FIRST;
            }
            self.restart_at = std::time::Instant::now() + self.restart_wait;
            self.restart_wait = (self.restart_wait * 2).min(RESTART_MOST);
            let (config, dir, cancel) =
                (self.config.clone(), self.dir.clone(), self.cancel.clone());
            self.starting = Some(tokio::task::spawn_blocking(move || {
                Bird::start(&config, &dir, &cancel)
            }));
            return;
        }
        let states = match self.bird.peers(self.config.peers.len()).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "BGP: cannot read the sessions' state");
                return;
            }
        };
        for ((peer, old), new) in self.config.peers.iter().zip(&self.peers).zip(&states) {
            let was = old.as_ref().is_some_and(PeerState::established);
            let is = new.as_ref().is_some_and(PeerState::established);
            if was != is {
                let state = new.as_ref().map_or("unknown", |s| s.info.as_str());
                if is {
                    info!(peer = %peer.addr, asn = peer.asn, "BGP session established");
                } else {
                    warn!(peer = %peer.addr, asn = peer.asn, state, "BGP session down");
                }
            }
        }
        self.peers = states;
    }

    pub fn view(&self) -> BgpView {
        BgpView {
            local_as: self.config.local_as,
            router_id: self.config.router_id.to_string(),
            peers: self
                .config
                .peers
                .iter()
                .zip(&self.peers)
                .map(|(p, s)| PeerView {
                    address: p.addr.to_string(),
                    asn: p.asn,
                    established: s.as_ref().is_some_and(PeerState::established),
                    state: s
                        .as_ref()
                        .map_or_else(|| "unknown".into(), |s| s.info.clone()),
                })
                .collect(),
            announced: self
                .announced
                .iter()
                .map(|a| match a {
                    IpAddr::V4(_) => format!("{a}/32"),
                    IpAddr::V6(_) => format!("{a}/128"),
                })
                .collect(),
        }
    }

    /// Stops the speaker (its sessions close) and removes its files; a start still going on
    /// gives up, one that has finished is stopped too.
    pub fn stop(mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(mut starting) = self.starting.take()
            && starting.is_finished()
        {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(Ok(Ok(bird))) = Pin::new(&mut starting).poll(&mut cx) {
                bird.stop();
            }
        }
        self.bird.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        info!("BGP speaker stopped");
    }
}
