//! The running node: every backend group (balancer, health checks, one connection pool per
//! worker) and every listener (sockets, per-worker contexts), and how a new configuration
//! replaces them. A reload is prepared completely (files read, sockets bound, TLS built)
//! before anything running is touched, so a reload that fails changes nothing.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::ProducesTickets;
use std::net::{IpAddr, SocketAddr};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, MAX_L4_GROUPS, MAX_LISTENERS};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::access_log::{AccessLog, ListenerLog};
use crate::acme::{Acme, DomainSet};
use crate::admin::{CertificateView, GroupView, ListenerStatus, NodeView};
use crate::balance::Balancer;
use crate::config::CheckKind;
use crate::config::bgp::BgpAnnounce;
use crate::config::values::AcmeChallenge;
use crate::config::{
    Config, FrontendProtocol, GroupConfig, ListenerConfig, StickyKey, SynProtection,
};
use crate::dataplane::{
    BackendEntry, Dataplane, DataplaneError, Egress, L4Group, L4ListenerSpec, ListenerRule,
    SourceLimits, SynCookies, error_chain,
};
use crate::health::HealthTasks;
use crate::metrics::Metrics;
use crate::nexthop::NextHops;
use crate::proxy::sticky::Sticky;
use crate::proxy::{ListenerSettings, RouteTarget, Routes, Upstream};
use crate::server::{ConnectionLimit, ListenerContext, Live};
use crate::workers::{self, Workers};

/// Why a configuration could not be brought up. Nothing running has changed when this is
/// returned (see [`Node::reload`]).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("group {group:?}: backend TLS configuration: {source}")]
    BackendTls {
        group: String,
        #[source]
        source: rustls::Error,
    },
    /// The OS refused a listener's address (EADDRINUSE, EACCES...); its errno is the source's.
    #[error("listener {listener:?}: {addr}: cannot bind: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "listener {listener:?}: {addr} ({proto}) is already in use by another process (another edgelb?): stop it first (`edgelb stop`), or give this listener another address"
    )]
    HeldElsewhere {
        listener: String,
        addr: SocketAddr,
        proto: &'static str,
    },
    #[error("{source}")]
    AccessLog {
        #[source]
        source: crate::access_log::OpenError,
    },
    /// The node's random ticket keys could not be made (at start only).
    #[error("TLS session ticket keys: {source}")]
    Tickets {
        #[source]
        source: rustls::Error,
    },
    /// The node's random lb-cookie key could not be made (at start only).
    #[error("lb-cookie key: {source}")]
    StickyKey {
        #[source]
        source: crate::config::StickyKeyError,
    },
    #[error("listener {listener:?}: TLS configuration: {source}")]
    ServerTls {
        listener: String,
        #[source]
        source: rustls::Error,
    },
    #[error("XDP maps: {}", error_chain(.source))]
    Dataplane {
        #[source]
        source: DataplaneError,
    },
}

/// A backend group as it runs.
pub struct GroupRuntime {
    pub config: GroupConfig,
    pub balancer: Arc<Balancer>,
    /// Stickiness with its sessions (app-cookie), shared by the upstreams.
    pub sticky: Option<Arc<Sticky>>,
    /// One per worker, in worker order.
    upstreams: Vec<Arc<Upstream>>,
    health: HealthTasks,
}

impl GroupRuntime {
    /// Starts the group's health checks on `control`; `changed` hears of every transition.
    fn start_checks(&mut self, control: &tokio::runtime::Handle, changed: &Arc<Notify>) {
        self.health = crate::health::spawn(
            control,
            self.config.health.clone(),
            self.config.name.clone(),
            self.balancer.clone(),
            changed.clone(),
        );
    }
}

/// A listener as it runs.
pub struct ListenerRuntime {
    pub config: ListenerConfig,
    /// Its counter slot and ACL key in the data plane; kept across reloads.
    pub id: u32,
    /// One per worker, in worker order.
    contexts: Vec<Arc<ListenerContext>>,
    stop: watch::Sender<bool>,
    limit: Arc<ConnectionLimit>,
    /// Stops the QUIC endpoints of `--http3 on` (None: HTTP/3 off): a reload may turn HTTP/3
    /// on or off while the TCP side carries on.
    quic: Option<watch::Sender<bool>>,
}

pub struct Node {
    pub config: Config,
    pub groups: Vec<GroupRuntime>,
    pub listeners: Vec<ListenerRuntime>,
    pub workers: Workers,
    /// Where health checks and the ACME client run ([`crate::control_thread`]).
    control: tokio::runtime::Handle,
    /// Whether [`Node::start_tasks`] ran: until then nothing is started on `control`.
    tasks_started: bool,
    pub metrics: Arc<Metrics>,
    /// Notified after every health transition of any group.
    pub health_changed: Arc<Notify>,
    /// The ticket keys used without `--tls-ticket-key-file`: random, made at start and kept
    /// across reloads, so that sessions resume after a reload.
    own_tickets: Arc<dyn ProducesTickets>,
    /// The lb-cookie key used without `--sticky-key-file`: random, made at start and kept
    /// across reloads, so that cookies already handed out keep pinning their clients.
    own_sticky_key: StickyKey,
    /// The ACME task and what it shares with the listeners, while a listener names
    /// `--acme-domain`.
    acme: Option<AcmeRuntime>,
    /// The file certificates of the configuration in force, for `/status` and `/metrics`.
    file_certs: Vec<CertificateView>,
    /// `--access-log`, open; kept across reloads that do not change it.
    pub access_log: Option<Arc<AccessLog>>,
}

/// The running ACME task: its certificates (kept across reloads with the same state
/// directory) and the settings it works from.
struct AcmeRuntime {
    shared: Arc<Acme>,
    settings: watch::Sender<crate::acme::Settings>,
    /// The task's end of `settings` until [`Node::start_tasks`] starts it.
    waiting: Option<watch::Receiver<crate::acme::Settings>>,
}

/// The certificates `config`'s https listeners serve from files, as `/status` shows them.
fn file_certificates(config: &Config) -> Vec<CertificateView> {
    config
        .file_certificates()
        .into_iter()
        .map(|c| CertificateView {
            listener: c.listener,
            source: "file",
            names: c.names,
            path: Some(c.path.display().to_string()),
            not_after: c.not_after,
            ..CertificateView::default()
        })
        .collect()
}

/// The ACME settings of `config` for the task, if it has any.
fn acme_settings(config: &Config) -> Option<crate::acme::Settings> {
    let acme = config.acme.clone()?;
    Some(crate::acme::Settings {
        config: acme,
        sets: config
            .listeners
            .iter()
            .filter(|l| !l.acme_domains.is_empty())
            .map(|l| DomainSet {
                listener: l.name.clone(),
                names: l.acme_domains.clone(),
            })
            .collect(),
    })
}

/// The sockets a listener serves on, bound and not yet served.
pub struct Listening {
    tcp: Vec<std::net::TcpListener>,
    /// HTTP/3's, with `--http3 on`.
    udp: Option<Vec<std::net::UdpSocket>>,
}

/// A listener of the new configuration, ready to run.
struct Prepared {
    config: ListenerConfig,
    /// New sockets to serve (None: keeps the running listener of the same name and address).
    sockets: Option<Vec<std::net::TcpListener>>,
    /// New UDP sockets for HTTP/3 (None: keeps the running listener's, or HTTP/3 is off).
    quic_sockets: Option<Vec<std::net::UdpSocket>>,
    live: Vec<Live>,
}

impl Node {
    /// Builds groups and listeners of `config` and binds every socket; nothing is served until
    /// [`Node::serve`].
    pub fn start(
        config: Config,
        workers: Workers,
        control: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
        dataplane: Option<&mut Dataplane>,
        hops: &NextHops,
    ) -> Result<(Node, Vec<Listening>), NodeError> {
        let health_changed = Arc::new(Notify::new());
        let own_tickets =
            crate::tls::tickets::generated().map_err(|source| NodeError::Tickets { source })?;
        let own_sticky_key =
            StickyKey::generate().map_err(|source| NodeError::StickyKey { source })?;
        let groups = build_groups(&config, &[], workers.len(), &own_sticky_key)?;
        let ids = assign_ids(&config, &[]);
        let tickets = ticket_keys(&config, &own_tickets);
        let acme = acme_shared(&config, None);
        let access_log = open_access_log(&config, None)?;
        let mut prepared = Vec::new();
        for l in &config.listeners {
            prepared.push(prepare_listener(
                l,
                &config,
                &groups,
                &[],
                &metrics,
                workers.len(),
                &tickets,
                acme.as_ref(),
                access_log.as_ref(),
            )?);
        }
        if let Some(dp) = dataplane {
            write_dataplane(dp, &config, &groups, &ids, hops)?;
        }
        let mut node = Node {
            config,
            groups,
            listeners: Vec::new(),
            workers,
            control,
            tasks_started: false,
            metrics,
            health_changed,
            own_tickets,
            own_sticky_key,
            acme: None,
            file_certs: Vec::new(),
            access_log,
        };
        node.file_certs = file_certificates(&node.config);
        node.run_acme(acme);
        let mut sockets = Vec::new();
        for (p, id) in prepared.into_iter().zip(ids) {
            let (runtime, s) = node.new_listener(p, id);
            node.listeners.push(runtime);
            sockets.push(s);
        }
        Ok((node, sockets))
    }

    /// Starts accepting on the sockets [`Node::start`] bound.
    pub fn serve(&self, sockets: Vec<Listening>) {
        for (l, s) in self.listeners.iter().zip(sockets) {
            self.serve_listener(l, s);
        }
    }

    fn serve_listener(&self, l: &ListenerRuntime, sockets: Listening) {
        self.workers
            .serve(sockets.tcp, &l.contexts, &l.stop.subscribe());
        if let (Some(udp), Some(stop)) = (sockets.udp, &l.quic) {
            self.workers.serve_quic(udp, &l.contexts, &stop.subscribe());
        }
    }

    /// Starts the health checks of every group and the ACME client, on the control thread;
    /// call once, after the privilege drop (`--user`): they must never run with root's
    /// rights (ACME's state directory would get files its user cannot open).
    pub fn start_tasks(&mut self) {
        self.tasks_started = true;
        for g in &mut self.groups {
            g.start_checks(&self.control, &self.health_changed);
        }
        if let Some(acme) = &mut self.acme
            && let Some(settings) = acme.waiting.take()
        {
            crate::acme::spawn(&self.control, acme.shared.clone(), settings);
        }
    }

    fn new_listener(&self, p: Prepared, id: u32) -> (ListenerRuntime, Listening) {
        let (stop, _) = watch::channel(false);
        let metrics = self.metrics.listener(&p.config.name);
        let limit = ConnectionLimit::new(p.config.max_connections);
        let contexts = p
            .live
            .into_iter()
            .enumerate()
            .map(|(i, live)| {
                Arc::new(ListenerContext {
                    live: ArcSwap::from_pointee(live),
                    metrics: metrics.clone(),
                    stop: stop.subscribe(),
                    open: self.workers.open(i),
                    limit: limit.clone(),
                })
            })
            .collect();
        let quic = p.config.http3.then(|| watch::channel(false).0);
        (
            ListenerRuntime {
                config: p.config,
                id,
                contexts,
                stop,
                limit,
                quic,
            },
            Listening {
                tcp: p.sockets.unwrap_or_default(),
                udp: p.quic_sockets,
            },
        )
    }

    /// Replaces the running configuration with `fresh`: groups whose backends did not change
    /// keep their balancer and health state, listeners with the same name and address keep
    /// their sockets (and connections) and get the new settings, others are bound anew or
    /// stopped. The data plane's listener entries and ACLs are rewritten in place.
    pub fn reload(
        &mut self,
        fresh: Config,
        dataplane: Option<&mut Dataplane>,
        hops: &NextHops,
    ) -> Result<(), NodeError> {
        let groups = build_groups(
            &fresh,
            &self.groups,
            self.workers.len(),
            &self.own_sticky_key,
        )?;
        let tickets = ticket_keys(&fresh, &self.own_tickets);
        let acme = acme_shared(&fresh, self.acme.as_ref().map(|a| &a.shared));
        let access_log = open_access_log(&fresh, self.access_log.as_ref())?;
        let mut prepared = Vec::new();
        for l in &fresh.listeners {
            prepared.push(prepare_listener(
                l,
                &fresh,
                &groups,
                &self.listeners,
                &self.metrics,
                self.workers.len(),
                &tickets,
                acme.as_ref(),
                access_log.as_ref(),
            )?);
        }
        let ids = assign_ids(&fresh, &self.listeners);
        if let Some(dp) = dataplane {
            write_dataplane(dp, &fresh, &groups, &ids, hops)?;
        }

        // Everything is ready: from here on nothing fails.
        let mut old: BTreeMap<String, ListenerRuntime> = self
            .listeners
            .drain(..)
            .map(|l| (l.config.name.clone(), l))
            .collect();
        let mut listeners = Vec::new();
        for (p, id) in prepared.into_iter().zip(ids) {
            match (p.sockets.is_none(), old.remove(&p.config.name)) {
                (true, Some(mut running)) => {
                    for (ctx, live) in running.contexts.iter().zip(p.live) {
                        ctx.live.store(Arc::new(live));
                    }
                    running.limit.set_max(p.config.max_connections);
                    if let Some(udp) = p.quic_sockets {
                        let (stop, _) = watch::channel(false);
                        self.workers
                            .serve_quic(udp, &running.contexts, &stop.subscribe());
                        running.quic = Some(stop);
                        info!(listener = running.config.name, "HTTP/3 started");
                    } else if !p.config.http3
                        && let Some(stop) = running.quic.take()
                    {
                        let _ = stop.send(true);
                        info!(listener = running.config.name, "HTTP/3 stopped");
                    }
                    running.config = p.config;
                    listeners.push(running);
                }
                (_, replaced) => {
                    if let Some(r) = replaced {
                        stop_listener(r, "its address changed");
                    }
                    let (runtime, sockets) = self.new_listener(p, id);
                    self.serve_listener(&runtime, sockets);
                    info!(listener = runtime.config.name, listen = %runtime.config.listen, "listener started");
                    listeners.push(runtime);
                }
            }
        }
        for (_, removed) in old {
            stop_listener(removed, "it is no longer configured");
        }
        self.listeners = listeners;
        let previous = std::mem::replace(&mut self.groups, groups);
        // Checks the new groups carried over keep running; the others end. A new balancer
        // then takes what the old one's checks found since it was built from it: they ran on
        // meanwhile, on the control thread.
        let mut moved = false;
        for old in &previous {
            if self.groups.iter().any(|g| g.health.same(&old.health)) {
                continue;
            }
            old.health.stop(&old.balancer);
            if let Some(g) = self.groups.iter().find(|g| {
                g.config.name == old.config.name && !Arc::ptr_eq(&g.balancer, &old.balancer)
            }) {
                moved |= g.balancer.adopt_health(&old.balancer);
            }
        }
        if moved {
            self.health_changed.notify_one();
        }
        for g in &mut self.groups {
            if g.health.is_empty() {
                g.start_checks(&self.control, &self.health_changed);
            }
        }
        self.config = fresh;
        self.access_log = access_log;
        self.file_certs = file_certificates(&self.config);
        self.run_acme(acme);
        Ok(())
    }

    /// Removes the metric series of what the configuration in force does not have: after a
    /// reload, and after a refused one (which may have made series for what it would have
    /// added).
    pub fn retain_metrics(&self) {
        self.metrics.retain(&configured(&self.config));
    }

    /// Starts, updates or stops the ACME task for the configuration now in force; `shared` is
    /// what its listeners were built with.
    fn run_acme(&mut self, shared: Option<Arc<Acme>>) {
        let (Some(shared), Some(settings)) = (shared, acme_settings(&self.config)) else {
            // Dropping the sender ends the task.
            self.acme = None;
            return;
        };
        match &self.acme {
            Some(running) if Arc::ptr_eq(&running.shared, &shared) => {
                running.settings.send_if_modified(|s| {
                    let changed = *s != settings;
                    *s = settings;
                    changed
                });
            }
            _ => {
                let (tx, rx) = watch::channel(settings);
                let waiting = if self.tasks_started {
                    crate::acme::spawn(&self.control, shared.clone(), rx);
                    None
                } else {
                    Some(rx)
                };
                self.acme = Some(AcmeRuntime {
                    shared,
                    settings: tx,
                    waiting,
                });
            }
        }
    }

    /// The ACME certificates' state, for `/status` and `/metrics`.
    pub fn acme_status(&self) -> Vec<crate::acme::CertStatus> {
        self.acme
            .as_ref()
            .map_or_else(Vec::new, |a| a.shared.status())
    }

    /// SIGUSR1: the access log file is opened again by its path, after logrotate moved it.
    pub fn reopen_logs(&self) {
        match self.access_log.as_ref().map(|log| log.reopen()) {
            Some(Ok(true)) => info!("SIGUSR1: access log reopened"),
            Some(Err(e)) => warn!(error = %e, "SIGUSR1: the access log stays on the file it had"),
            Some(Ok(false)) | None => info!("SIGUSR1: no log file to reopen"),
        }
    }

    /// Stops accepting on every listener; open connections finish what is in flight.
    pub fn stop_listeners(&self) {
        for l in &self.listeners {
            stop(l);
        }
    }

    /// Publishes the backends (health, next hops) and rings of every group behind a tcp/udp
    /// listener: after a health transition or a next-hop change.
    pub fn write_l4_groups(&self, dp: &mut Dataplane, hops: &NextHops) {
        if let Err(e) = dp.update_groups(&l4_groups(&self.config, &self.groups, hops)) {
            warn!(error = %error_chain(&e), "writing L4 groups to the data plane");
        }
    }

    /// Addresses of the backends the XDP program forwards to, for next-hop resolution.
    pub fn l4_backends(&self) -> Vec<IpAddr> {
        l4_backends(&self.config)
    }

    /// Positions of the groups behind tcp/udp listeners.
    pub fn l4_group_positions(&self) -> Vec<usize> {
        l4_group_positions(&self.config)
    }

    /// What `/status` shows, without the XDP counters (the caller adds them).
    /// The listeners' addresses a BGP speaker should announce now: each listener serves once
    /// the node runs (its socket bound, or XDP attached for tcp/udp), and with
    /// [`BgpAnnounce::Healthy`] its default group must have a backend of weight above 0 that is
    /// healthy and has passed a check since the group started (unless it is not checked): a
    /// node that starts with dead backends announces nothing. Wildcard addresses are never
    /// announced.
    pub fn announceable(&self, when: BgpAnnounce) -> BTreeSet<IpAddr> {
        self.listeners
            .iter()
            .filter(|l| !l.config.listen.ip().is_unspecified())
            .filter(|l| {
                when == BgpAnnounce::Serving || {
                    let name = &self.config.default_group(&l.config).name;
                    self.groups.iter().any(|g| {
                        let b = &g.balancer;
                        let unchecked = g.config.health.kind == CheckKind::Off;
                        g.config.name == *name
                            && (0..b.len()).any(|i| {
                                b.is_healthy(i) && b.weight(i) > 0 && (unchecked || b.has_passed(i))
                            })
                    })
                }
            })
            .map(|l| l.config.listen.ip())
            .collect()
    }

    pub fn view(&self, xdp_attached: Vec<String>) -> NodeView {
        NodeView {
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.config.name.clone(),
                    protocol: l.config.protocol.scheme(),
                    listen: l.config.listen.to_string(),
                    access_control: l.config.access.mode.name(),
                    group: self.config.default_group(&l.config).name.clone(),
                    xdp_counters: Vec::new(),
                    blocked: Vec::new(),
                    syn_protect: l.config.syn_protect.name(),
                    syn_cookies_answering: false,
                })
                .collect(),
            groups: self
                .groups
                .iter()
                .map(|g| GroupView {
                    name: g.config.name.clone(),
                    algorithm: g.config.algorithm.name(),
                    balancer: g.balancer.clone(),
                })
                .collect(),
            xdp_attached,
            bgp: None,
            etcd: None,
            certificates: self.certificates(),
            next_hops: Vec::new(),
        }
    }

    /// Every certificate of the https listeners: the files' (read at start and on reload) and
    /// the ACME task's, with the seconds each has left.
    fn certificates(&self) -> Vec<CertificateView> {
        let now = crate::acme::unix_now();
        let mut out = self.file_certs.clone();
        out.extend(self.acme_status().into_iter().map(|s| CertificateView {
            listener: s.listener,
            source: "acme",
            names: s.names,
            path: None,
            not_after: s.not_after,
            expires_in_seconds: None,
            renew_at: s.renew_at,
            last_error: s.last_error,
            failures: Some(s.failures),
            retry_at: s.retry_at,
        }));
        for c in &mut out {
            c.expires_in_seconds = c.not_after.map(|t| t - now);
        }
        out
    }
}

fn stop(l: &ListenerRuntime) {
    let _ = l.stop.send(true);
    if let Some(quic) = &l.quic {
        let _ = quic.send(true);
    }
}

fn stop_listener(l: ListenerRuntime, why: &str) {
    stop(&l);
    info!(listener = l.config.name, listen = %l.config.listen, "listener stopped: {why}");
}

/// Whether two configurations of a group balance the same backends the same way, so that
/// the running balancer (health, connection counts, slow start) can carry on.
fn same_balancing(a: &GroupConfig, b: &GroupConfig) -> bool {
    a.name == b.name
        && a.backends == b.backends
        && a.algorithm == b.algorithm
        && a.slow_start == b.slow_start
}

fn build_groups(
    config: &Config,
    running: &[GroupRuntime],
    workers: usize,
    own_sticky_key: &StickyKey,
) -> Result<Vec<GroupRuntime>, NodeError> {
    let mut out = Vec::with_capacity(config.groups.len());
    for g in &config.groups {
        let g = g.clone();
        let kept = running.iter().find(|r| same_balancing(&r.config, &g));
        let before = running.iter().find(|r| r.config.name == g.name);
        // App-cookie sessions are the runtime's: a reload that keeps the cookie keeps them, so
        // clients stay where they are (they name backends by address, which a changed list
        // keeps or drops).
        let sticky = g.sticky.clone().map(|settings| {
            Arc::new(
                Sticky::new(settings, before.and_then(|r| r.sticky.as_deref()))
                    .with_own_key(own_sticky_key),
            )
        });
        let balancer = match kept {
            Some(r) => r.balancer.clone(),
            None => {
                let backends: Vec<_> = g.backends.iter().map(|b| (b.addr, b.weight)).collect();
                let fresh = Balancer::new(g.algorithm, &backends).with_slow_start(g.slow_start);
                Arc::new(match before {
                    Some(r) => fresh.carrying_over(&r.balancer),
                    None => fresh,
                })
            }
        };
        let upstreams = (0..workers)
            .map(|_| Upstream::new(g.clone(), balancer.clone(), sticky.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| NodeError::BackendTls {
                group: g.name.clone(),
                source,
            })?;
        // The health tasks stay with a kept balancer when the checks are the same.
        let health = match kept {
            Some(r) if r.config.health == g.health => r.health.clone(),
            _ => HealthTasks::default(),
        };
        out.push(GroupRuntime {
            config: g,
            balancer,
            sticky,
            upstreams,
            health,
        });
    }
    Ok(out)
}

/// Positions of the groups behind tcp/udp listeners (the config has checked that the kernel
/// holds them all).
fn l4_group_positions(config: &Config) -> Vec<usize> {
    let mut groups: Vec<usize> = config
        .listeners
        .iter()
        .filter(|l| l.protocol.is_l4())
        .map(|l| l.groups[0])
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups.truncate(MAX_L4_GROUPS as usize);
    groups
}

/// Addresses of the backends of the groups behind tcp/udp listeners.
pub fn l4_backends(config: &Config) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = l4_group_positions(config)
        .into_iter()
        .flat_map(|g| config.groups[g].backends.iter().map(|b| b.addr.ip()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The groups behind tcp/udp listeners as the kernel should hold them: backends (address,
/// next hop, health) and ring.
fn l4_groups(config: &Config, groups: &[GroupRuntime], hops: &NextHops) -> Vec<L4Group> {
    l4_group_positions(config)
        .into_iter()
        .map(|g| {
            let g = &groups[g];
            L4Group {
                name: g.config.name.clone(),
                backends: g
                    .config
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let hop = hops.next_hop(b.addr.ip());
                        let entry = BackendEntry {
                            addr: b.addr.ip(),
                            mac: hop.mac,
                            alive: g.balancer.is_healthy(i),
                            egress: Egress {
                                ifindex: hop.ifindex,
                                mac: hop.iface_mac,
                            },
                        };
                        (b.addr, entry)
                    })
                    .collect(),
                ring: g.balancer.maglev_table(),
            }
        })
        .collect()
}

/// Everything the XDP program needs for `config`, as one change (see
/// [`Dataplane::apply_config`]): the L4 groups, the listeners, their ACLs and L4 settings.
fn write_dataplane(
    dp: &mut Dataplane,
    config: &Config,
    groups: &[GroupRuntime],
    ids: &[u32],
    hops: &NextHops,
) -> Result<(), NodeError> {
    let rules = listener_rules(config, ids);
    let positions = l4_group_positions(config);
    let l4: Vec<L4ListenerSpec> = config
        .listeners
        .iter()
        .zip(ids)
        .filter(|(l, id)| {
            l.protocol.is_l4()
                && rules.iter().any(|r| r.id == **id)
                && positions.contains(&l.groups[0])
        })
        .map(|(l, id)| {
            let group = &config.groups[l.groups[0]];
            L4ListenerSpec {
                id: *id,
                group: group.name.clone(),
                flow_secs: u32::try_from(group.flow_idle.as_secs()).unwrap_or(u32::MAX),
                hash_src_port: false,
            }
        })
        .collect();
    dp.apply_config(&rules, &l4, &l4_groups(config, groups, hops))
        .map_err(|source| NodeError::Dataplane { source })
}

/// The keys that seal the tickets of `config`'s https listeners: the key file's (read again on
/// every reload), else the node's own.
fn ticket_keys(config: &Config, own: &Arc<dyn ProducesTickets>) -> Arc<dyn ProducesTickets> {
    match &config.tls_tickets {
        Some(file) => file.keys.clone(),
        None => own.clone(),
    }
}

/// What the ACME task of `config` shares with its listeners: the running one's while the state
/// directory stays the same (its certificates are served on at once), else a new one.
fn acme_shared(config: &Config, running: Option<&Arc<Acme>>) -> Option<Arc<Acme>> {
    let dir = &config.acme.as_ref()?.state_dir;
    Some(match running {
        Some(r) if r.state_dir() == dir => r.clone(),
        _ => Acme::new(dir.clone()),
    })
}

#[allow(clippy::too_many_arguments)]
fn prepare_listener(
    l: &ListenerConfig,
    config: &Config,
    groups: &[GroupRuntime],
    running: &[ListenerRuntime],
    metrics: &Metrics,
    workers: usize,
    tickets: &Arc<dyn ProducesTickets>,
    acme: Option<&Arc<Acme>>,
    access_log: Option<&Arc<AccessLog>>,
) -> Result<Prepared, NodeError> {
    let access_log = access_log.map(|log| ListenerLog {
        log: log.clone(),
        listener: l.name.as_str().into(),
    });
    let challenge = config.acme.as_ref().map(|a| a.challenge);
    let acme_names =
        acme.filter(|_| !l.acme_domains.is_empty())
            .map(|acme| crate::tls::AcmeNames {
                acme: acme.clone(),
                names: l.acme_domains.clone().into(),
                tls_alpn: challenge == Some(AcmeChallenge::TlsAlpn01),
            });
    // HTTP-01 answers on every http listener (the CA asks on port 80, whichever it is).
    let acme_http = acme
        .filter(|_| {
            l.protocol == FrontendProtocol::Http && challenge == Some(AcmeChallenge::Http01)
        })
        .cloned();
    // A listener keeps its sockets when only its settings change; a tcp/udp listener has
    // none (the XDP program forwards its packets), so changing to or from one starts anew.
    let kept = running.iter().any(|r| {
        r.config.name == l.name
            && r.config.listen == l.listen
            && (!(r.config.protocol.is_l4() || l.protocol.is_l4())
                || r.config.protocol == l.protocol)
    });
    // Another process on the address (a second edgelb, most likely) would share it through
    // SO_REUSEPORT. This process's own sockets on an overlapping address (running listeners,
    // or ones of this configuration bound before this one: 0.0.0.0:443 and [::]:443, or a
    // wildcard and a specific address on one port) would fail the probe too: then no probe.
    let before = config
        .listeners
        .iter()
        .take_while(|o| !std::ptr::eq(*o, l))
        .map(|o| o.listen);
    let ours = running
        .iter()
        .map(|r| r.config.listen)
        .chain(before)
        .any(|addr| overlaps(addr, l.listen));
    if !kept && !ours && !l.protocol.is_l4() {
        use socket2::{Protocol, Type};
        let tcp = crate::reuseport::held_elsewhere(l.listen, Type::STREAM, Protocol::TCP);
        let udp = l.http3 && crate::reuseport::held_elsewhere(l.listen, Type::DGRAM, Protocol::UDP);
        if tcp || udp {
            return Err(NodeError::HeldElsewhere {
                listener: l.name.clone(),
                addr: l.listen,
                proto: if tcp { "tcp" } else { "udp" },
            });
        }
    }
    let sockets = if kept {
        None
    } else if l.protocol.is_l4() {
        Some(Vec::new())
    } else {
        Some(
            workers::bind(l.listen, workers).map_err(|source| NodeError::Bind {
                listener: l.name.clone(),
                addr: l.listen,
                source,
            })?,
        )
    };
    // HTTP/3's sockets: new ones unless the running listener (kept) already serves it.
    let quic_running = kept
        && running
            .iter()
            .any(|r| r.config.name == l.name && r.config.http3);
    let quic_sockets = if l.http3 && !quic_running {
        Some(
            crate::server::http3::bind(l.listen, workers).map_err(|source| NodeError::Bind {
                listener: l.name.clone(),
                addr: l.listen,
                source,
            })?,
        )
    } else {
        None
    };
    let quic = match (&l.tls, l.http3) {
        (Some(tls), true) => Some(
            crate::tls::quic_server_config(&tls.settings, tickets, acme_names.as_ref())
                .and_then(crate::server::http3::server_config)
                .map_err(|source| NodeError::ServerTls {
                    listener: l.name.clone(),
                    source,
                })?,
        ),
        _ => None,
    };
    let alt_svc = quic
        .as_ref()
        .map(|_| crate::server::http3::alt_svc(l.listen.port()));
    let tls = match &l.tls {
        Some(tls) => Some(TlsAcceptor::from(
            crate::tls::server_config(&tls.settings, l.http2, tickets, acme_names.as_ref())
                .map_err(|source| NodeError::ServerTls {
                    listener: l.name.clone(),
                    source,
                })?,
        )),
        None => None,
    };
    // Counters are resolved once here so that counting a request is an atomic add.
    let counters: BTreeMap<usize, crate::metrics::RequestCounters> = l
        .groups
        .iter()
        .map(|&g| {
            let group = &config.groups[g];
            let keys: Vec<String> = group.backends.iter().map(|b| b.addr.to_string()).collect();
            (g, metrics.requests(&l.name, &group.name, &keys))
        })
        .collect();
    let live_workers = if l.protocol.is_l4() { 0 } else { workers };
    // One limiter for all the listener's workers: a client's connections may land on any.
    let rate_limit = l
        .rate_limit_requests
        .map(|n| Arc::new(crate::rate_limit::RateLimiter::new(n)));
    let live = (0..live_workers)
        .map(|w| Live {
            tls: tls.clone(),
            access: l.access.clone(),
            http2: l.http2,
            quic: quic.clone(),
            alt_svc: alt_svc.clone(),
            acme_http: acme_http.clone(),
            accept_proxy: l.accept_proxy.clone(),
            access_log: access_log.clone(),
            routes: Routes {
                listener: l.name.as_str().into(),
                rules: l.rules.clone(),
                groups: groups
                    .iter()
                    .enumerate()
                    .map(|(g, group)| {
                        counters.get(&g).map(|requests| RouteTarget {
                            upstream: group.upstreams[w].clone(),
                            requests: requests.clone(),
                        })
                    })
                    .collect(),
                default: l.groups[0],
                settings: ListenerSettings {
                    timeouts: l.timeouts,
                    transfer_lb_ip: l.transfer_lb_ip,
                },
                rate_limit: rate_limit.clone(),
            },
        })
        .collect();
    Ok(Prepared {
        config: l.clone(),
        sockets,
        quic_sockets,
        live,
    })
}

/// Whether sockets bound to `a` and `b` would clash without SO_REUSEPORT: one port, and one
/// address or a wildcard on either side.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The listeners, routes and backends of `config`, as the metrics name them.
fn configured(config: &Config) -> crate::metrics::Configured {
    let mut c = crate::metrics::Configured::default();
    for l in &config.listeners {
        c.listeners.insert(l.name.clone());
        for g in l.groups.iter().filter_map(|&g| config.groups.get(g)) {
            c.routes.insert((l.name.clone(), g.name.clone()));
        }
    }
    for g in &config.groups {
        for b in &g.backends {
            c.backends.insert((g.name.clone(), b.addr.to_string()));
        }
    }
    for g in l4_group_positions(config)
        .into_iter()
        .filter_map(|g| config.groups.get(g))
    {
        for b in &g.backends {
            c.l4_backends.insert((g.name.clone(), b.addr.to_string()));
        }
    }
    c
}

/// The access log `config` asks for: the one open when its settings did not change (its
/// file stays open), else opened anew.
fn open_access_log(
    config: &Config,
    running: Option<&Arc<AccessLog>>,
) -> Result<Option<Arc<AccessLog>>, NodeError> {
    let Some(settings) = &config.ops.access_log else {
        return Ok(None);
    };
    if let Some(log) = running.filter(|log| log.settings() == settings) {
        // A reload reopens the file too (logrotate's postrotate may reload rather than send
        // SIGUSR1); if it cannot, lines keep going to the file open.
        if let Err(e) = log.reopen() {
            warn!(error = %e, "reload: the access log stays on the file it had");
        }
        return Ok(Some(log.clone()));
    }
    AccessLog::open(settings.clone())
        .map(Some)
        .map_err(|source| NodeError::AccessLog { source })
}

/// Data-plane ids: a listener keeps its id across reloads (its counters continue); new ones
/// take the lowest free ids.
fn assign_ids(config: &Config, running: &[ListenerRuntime]) -> Vec<u32> {
    let wanted: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    let held: Vec<(&str, u32)> = running
        .iter()
        .map(|r| (r.config.name.as_str(), r.id))
        .collect();
    pick_ids(&wanted, &held, MAX_LISTENERS)
}

/// Ids for the listeners named `wanted`: a running listener (in `held`) keeps its own; a new
/// one gets an id no running listener has while one is free up to `capacity`. An id a
/// removed listener gave up is taken again only past that: the XDP maps are rewritten entry
/// by entry, and for that while the program would apply the old listener's access control,
/// counters and per-source state to the new one's packets.
fn pick_ids(wanted: &[&str], held: &[(&str, u32)], capacity: u32) -> Vec<u32> {
    let kept = |name: &str| held.iter().find(|(n, _)| *n == name).map(|(_, id)| *id);
    let mut taken: Vec<u32> = wanted.iter().filter_map(|n| kept(n)).collect();
    let running: Vec<u32> = held.iter().map(|(_, id)| *id).collect();
    wanted
        .iter()
        .map(|name| {
            if let Some(id) = kept(name) {
                return id;
            }
            let fresh = (1..=capacity).find(|id| !taken.contains(id) && !running.contains(id));
            let id =
                fresh.unwrap_or_else(|| (1..).find(|id| !taken.contains(id)).unwrap_or(u32::MAX));
            taken.push(id);
            id
        })
        .collect()
}

/// What the data plane must hold for these listeners (ids beyond its capacity are left out
/// with a warning: their access control is still enforced on accept).
fn listener_rules(config: &Config, ids: &[u32]) -> Vec<ListenerRule> {
    config
        .listeners
        .iter()
        .zip(ids)
        .filter_map(|(l, &id)| {
            if id > MAX_LISTENERS {
                warn!(
                    listener = l.name,
                    "more listeners than the XDP program holds; this one is checked on accept only"
                );
                return None;
            }
            let rule = ListenerRule {
                id,
                addr: l.listen,
                proto: if l.protocol == FrontendProtocol::Udp {
                    IPPROTO_UDP
                } else {
                    IPPROTO_TCP
                },
                mode: l.access.mode,
                prefixes: l.access.prefixes.clone(),
                limits: SourceLimits {
                    syn_per_sec: l.rate_limit_syn.unwrap_or(0),
                    pps: l.rate_limit_pps.unwrap_or(0),
                    block_secs: l.auto_block.unwrap_or(0),
                },
                syn_cookies: match l.syn_protect {
                    SynProtection::Off => SynCookies::Off,
                    SynProtection::Auto { .. } => SynCookies::Watch,
                    SynProtection::On => SynCookies::Answer,
                },
            };
            // HTTP/3 takes the same port over UDP, under the same access control and
            // per-source limits (the same id: one ACL, one set of counters).
            let quic = l.http3.then(|| ListenerRule {
                proto: IPPROTO_UDP,
                syn_cookies: SynCookies::Off,
                ..rule.clone()
            });
            Some(std::iter::once(rule).chain(quic))
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{overlaps, pick_ids};

    #[test]
    fn a_new_listener_does_not_take_the_id_a_removed_one_gave_up_in_the_same_reload() {
        // Start: ids in order.
        assert_eq!(pick_ids(&["a", "b", "c"], &[], 1024), [1, 2, 3]);
        // b removed and d added at once: d gets an id nobody had; a and c keep theirs.
        let held = [("a", 1), ("b", 2), ("c", 3)];
        assert_eq!(pick_ids(&["a", "c", "d"], &held, 1024), [1, 3, 4]);
        // The next reload may give 2 out again.
        let held = [("a", 1), ("c", 3), ("d", 4)];
        assert_eq!(pick_ids(&["a", "c", "d", "e"], &held, 1024), [1, 3, 4, 2]);
        // With no other id left in the program's capacity, a freed one is taken.
        let held = [("a", 1), ("b", 2), ("c", 3)];
        assert_eq!(pick_ids(&["a", "c", "d"], &held, 3), [1, 3, 2]);
        // Past the capacity: ids beyond it (checked on accept only).
        assert_eq!(pick_ids(&["a", "b", "c", "d"], &held, 3), [1, 2, 3, 4]);
    }

    #[test]
    fn wildcards_overlap_every_address_of_their_port() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        assert!(overlaps(a("0.0.0.0:443"), a("[::]:443")));
        assert!(overlaps(a("0.0.0.0:443"), a("10.0.0.1:443")));
        assert!(overlaps(a("10.0.0.1:443"), a("10.0.0.1:443")));
        assert!(!overlaps(a("10.0.0.1:443"), a("10.0.0.2:443")));
        assert!(!overlaps(a("0.0.0.0:443"), a("0.0.0.0:8443")));
    }
}
