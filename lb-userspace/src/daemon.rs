//! The running daemon: brings up the XDP data plane and the node (listeners and groups),
//! reloads on SIGHUP and `POST /reload`, and on SIGTERM/SIGINT stops, drains, detaches XDP
//! and returns.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_common::{BackendCounters, NO_LISTENER_SLOT, Outcome};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::admin::EtcdView;
use crate::admin::{self, AdminState, BlockedStatus, NodeView, Refusal};
use crate::bgp::Announcer;
use crate::cli::RunArgs;
use crate::config::SynProtection;
use crate::config::{Backend as BackendConfig, Config, XdpMode};
use crate::control_thread::ControlThread;
use crate::dataplane::{AttachMode, Dataplane, DataplaneError, InterfaceEvent, error_chain};
use crate::line_writer::DropReport;
use crate::metrics::{CertificateMetric, Metrics};
use crate::nexthop::{NextHops, Watch};
use crate::node::{GroupRuntime, Node};
use crate::reloads::{ReloadError, Reloads, Waiter};
use crate::syn_protect::{KernelCookies, Protected, SynProtect, answering};
use crate::workers::{self, Workers};
use std::sync::atomic::Ordering;

/// Why the daemon could not start. Usage errors (the flags ask for something this host cannot
/// do) exit with 2, like invalid flags; the others with 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Usage(String),
    /// The error itself when there is one (a bind's keeps its errno), else what failed.
    #[error("{0}")]
    Runtime(Box<dyn std::error::Error + Send + Sync>),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Usage(_) => 2,
            StartError::Runtime(_) => 1,
        }
    }
}

pub async fn run(args: &RunArgs, config: Config) -> Result<(), StartError> {
    if config.ops.user.is_some() {
        // Nothing this process starts can gain privileges back. Per thread, and inherited by
        // the threads a thread starts: set first, the workers (which talk to clients and
        // backends) and every later thread have it, not only the thread that drops root.
        crate::privilege::no_new_privs()
            .map_err(|e| StartError::Runtime(format!("--user: {e}").into()))?;
    }
    let fd_limit = raise_fd_limit();
    // The limit just raised (0: unknown).
    for w in config.warnings((fd_limit > 0).then_some(fd_limit)) {
        tracing::warn!("{w}");
    }
    let worker_count = workers::default_count();
    let mut dataplane = start_dataplane(&config)?;
    let metrics = Metrics::new();
    let admin = match config.ops.admin {
        Some(addr) => Some(admin::bind(addr).map_err(|e| StartError::Runtime(e.into()))?),
        None => None,
    };
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| StartError::Runtime(format!("installing the SIGTERM handler: {e}").into()))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| StartError::Runtime(format!("installing the SIGINT handler: {e}").into()))?;
    let mut sighup = signal(SignalKind::hangup())
        .map_err(|e| StartError::Runtime(format!("installing the SIGHUP handler: {e}").into()))?;
    // logrotate's signal, as nginx takes it; without a handler it would kill the daemon.
    let mut sigusr1 = signal(SignalKind::user_defined1())
        .map_err(|e| StartError::Runtime(format!("installing the SIGUSR1 handler: {e}").into()))?;

    // Next hops first, so that the first packets of a tcp/udp listener find their backends.
    let mut hops = NextHops::default();
    // Without a data plane there are no L4 backends, nor next hops to follow.
    let hop_watch = match dataplane {
        Some(_) => hops
            .watch()
            .inspect_err(|e| {
                warn!(error = %e, "no announcements of neighbour and route changes from the kernel; next hops are looked up every {NEXT_HOP_POLL_TICKS} s instead");
            })
            .ok(),
        None => None,
    };
    let next_hop_ticks = if hop_watch.is_some() {
        NEXT_HOP_SAFETY_TICKS
    } else {
        NEXT_HOP_POLL_TICKS
    };
    let l4_backends = crate::node::l4_backends(&config);
    for _ in 0..20 {
        hops.refresh(&l4_backends, &config.xdp.ifaces);
        if hops.all_resolved(&l4_backends) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let workers = Workers::start(worker_count)
        .map_err(|e| StartError::Runtime(format!("starting worker threads: {e}").into()))?;
    // Before the privilege drop, like the workers: its capabilities go with it.
    let control = ControlThread::start()
        .map_err(|e| StartError::Runtime(format!("starting the control thread: {e}").into()))?;
    // What an earlier daemon in this namespace left changed, back before anything is set.
    SynProtect::recover();
    // Declared before the node: dropped after it, it restores the kernel's settings last.
    let mut syn_protect = SynProtect::default();
    if dataplane.is_some() {
        syn_protect
            .prepare(&config)
            .map_err(|e| StartError::Runtime(e.into()))?;
    }
    let (mut node, sockets) = match Node::start(
        config,
        workers,
        control.handle().clone(),
        metrics.clone(),
        dataplane.as_mut(),
        &hops,
    ) {
        Ok(started) => started,
        Err(e) => {
            if let Some(dp) = dataplane.as_mut() {
                dp.detach_all();
            }
            return Err(StartError::Runtime(e.into()));
        }
    };
    node.serve(sockets);
    // Before any privilege drop: the speaker listens on BGP's port 179.
    let mut bgp = match node.config.bgp.clone().map(Announcer::start).transpose() {
        Ok(b) => b,
        Err(e) => {
            node.stop_listeners();
            if let Some(dp) = dataplane.as_mut() {
                dp.detach_all();
            }
            return Err(StartError::Runtime(e.into()));
        }
    };
    if let (Some(user), Some(b)) = (&node.config.ops.user, bgp.as_mut())
        && let Err(e) = b.hand_to(user.uid, user.gid)
    {
        warn!(error = %e, user = user.name, "BGP: the speaker's files stay root's; announcements will fail");
    }
    // Before the privilege drop: /run is root's.
    let pid_file = crate::control::pid_file::PidFile::create(
        &node.config.ops.pid_file,
        node.config.ops.user.as_ref().map(|u| (u.uid, u.gid)),
    )
    .inspect_err(|e| {
        warn!(error = %e, path = %node.config.ops.pid_file.display(), "--pid-file not written: `edgelb reload` and `edgelb stop` will not find this daemon");
    })
    .ok();
    if let Some(user) = &node.config.ops.user {
        let syn_protect = node
            .config
            .listeners
            .iter()
            .any(|l| l.syn_protect != SynProtection::Off);
        let keep = crate::privilege::kept(dataplane.is_some(), syn_protect);
        if let Err(e) = crate::privilege::drop_to(user, &keep) {
            node.stop_listeners();
            if let Some(dp) = dataplane.as_mut() {
                dp.detach_all();
            }
            if let Some(b) = bgp.take() {
                b.stop();
            }
            return Err(StartError::Runtime(
                format!("--user {}: {e}", user.name).into(),
            ));
        }
        info!(user = user.name, uid = user.uid.as_raw(), kept = ?keep, "running as an unprivileged user");
    }
    node.start_tasks();
    log_ready(&node, dataplane.as_ref(), worker_count, fd_limit);
    crate::control::notify::notify("READY=1");
    let mut reload_count = 0u64;

    let (reload_tx, mut reload_rx) = mpsc::channel::<Waiter>(4);
    let (unblock_tx, mut unblock_rx) = mpsc::channel::<admin::UnblockRequest>(4);
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        view: Mutex::new(NodeView::default()),
        reload: reload_tx,
        unblock: unblock_tx,
        about: admin::About::new(args.config.as_deref()),
        reload_log: Mutex::default(),
        main_loop: admin::MainLoop::default(),
    });
    if let Some(b) = bgp.as_mut() {
        b.update(node.announceable(b.announce_when())).await;
    }
    refresh_status(&admin_state, &node, dataplane.as_ref(), bgp.as_ref(), &hops);
    if let Some(listener) = admin {
        control
            .handle()
            .spawn(admin::serve(listener, admin_state.clone()));
    }
    // The main thread owns the data plane: it copies what the admin endpoint shows from the
    // kernel's counters and the balancers' health, once a second.
    // Next hops are looked up again when the kernel announces a change, every second while
    // one is missing, and now and then in case an announcement was lost.
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    // Ticks missed while the loop was busy (a reload) are not made up in a burst: each tick
    // is taken for a second (`SynProtect::tick` counts SYN rates and calm seconds by them).
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    let mut log_drops = [
        DropReport::new(&crate::access_log::DROPPED, "access log"),
        DropReport::new(&crate::line_writer::LOG_DROPPED, "log"),
    ];
    let (mut reloads, mut reads) = Reloads::new(args);
    let (etcd_tx, mut etcd_rx) = mpsc::unbounded_channel();
    let mut etcd_view = None;
    if let (Some(prefix), Some(snapshot)) = (&args.config_prefix, &args.etcd_snapshot) {
        crate::etcd::watch(
            control.handle(),
            args.config_etcd.clone(),
            prefix.clone(),
            snapshot.clone(),
            etcd_tx,
        );
        etcd_view = Some(EtcdView {
            endpoints: args.config_etcd.clone(),
            prefix: prefix.clone(),
            revision: snapshot.revision,
            connected: true,
            ..EtcdView::default()
        });
        show_etcd(&admin_state, etcd_view.as_ref());
    }
    // A reload read (its configuration, or why it was refused) applied: the node, the
    // etcd revision shown, the announcements, the waiting requests.
    let mut pending: Option<(crate::reloads::Read, tokio::time::Instant)> = None;
    macro_rules! apply_read {
        ($read:expr) => {{
            let read = $read;
            let revision = read.etcd_revision;
            let started_ms = read.started_ms;
            let config = match read.config {
                Ok(fresh) if dataplane.is_some() => syn_protect
                    .prepare(&fresh)
                    .map(|()| fresh)
                    .map_err(Into::into),
                other => other,
            };
            let result = reload_logged(
                read.why,
                config,
                &mut node,
                dataplane.as_mut(),
                &mut hops,
                &admin_state,
                bgp.as_ref(),
            );
            if let (Some(v), Some(revision)) = (etcd_view.as_mut(), revision) {
                match &result {
                    Ok(()) => (v.revision, v.refused) = (revision, None),
                    Err(e) => v.refused = Some((revision, e.to_string())),
                }
                show_etcd(&admin_state, etcd_view.as_ref());
            }
            if let Some(wait) = reloads.applied(revision, result.is_err()) {
                info!(
                    revision = revision.unwrap_or_default(),
                    seconds = wait.as_secs(),
                    "etcd: the refused revision is read again after a wait"
                );
            }
            if let Some(b) = bgp.as_mut() {
                b.release();
                b.update(node.announceable(b.announce_when())).await;
            }
            reload_count += 1;
            let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            if let Some(p) = &pid_file {
                p.record_reload(reload_count, started_ms, &outcome);
            }
            // One line: systemd reads each line as an assignment.
            crate::control::notify::notify(&match &outcome {
                Ok(()) => "READY=1\nSTATUS=reloaded".to_string(),
                Err(e) => format!("READY=1\nSTATUS=reload refused: {}", e.replace('\n', " ")),
            });
            for waiter in read.waiting {
                let _ = waiter.send(result.clone());
            }
            reloads.finished();
        }};
    }
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                admin_state.main_loop.stopping();
                info!("SIGTERM: stopping");
                crate::control::notify::notify("STOPPING=1");
                break;
            }
            _ = sigint.recv() => {
                admin_state.main_loop.stopping();
                info!("SIGINT: stopping");
                crate::control::notify::notify("STOPPING=1");
                break;
            }
            _ = refresh.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(86_400) {
                    for w in node.config.expiring_certificates(crate::acme::unix_now()) {
                        warn!("{w}");
                    }
                }
                let reattached = dataplane.as_mut().is_some_and(follow_interfaces);
                if reattached || ticks.is_multiple_of(next_hop_ticks) || !hops.all_resolved(&node.l4_backends()) {
                    refresh_next_hops(&mut hops, &node, dataplane.as_mut());
                }
                if let Some(b) = bgp.as_mut() {
                    b.poll().await;
                    b.update(node.announceable(b.announce_when())).await;
                }
                if let Some(dp) = dataplane.as_mut() {
                    syn_protect.tick(dp, &protected(&node));
                }
                refresh_status(&admin_state, &node, dataplane.as_ref(), bgp.as_ref(), &hops);
                admin_state.main_loop.beat(&admin_state.about);
                log_drops.iter_mut().for_each(DropReport::tick);
            }
            _ = next_hop_change(hop_watch.as_ref()) => {
                refresh_next_hops(&mut hops, &node, dataplane.as_mut());
            }
            // The kernel's copies of the groups' rings and backend health follow the
            // balancers: same clients, same backends, whichever side picks.
            _ = node.health_changed.notified() => {
                if let Some(dp) = dataplane.as_mut() {
                    node.write_l4_groups(dp, &hops);
                }
                if let Some(b) = bgp.as_mut() {
                    b.update(node.announceable(b.announce_when())).await;
                    refresh_status(&admin_state, &node, dataplane.as_ref(), Some(b), &hops);
                }
            }
            _ = sighup.recv() => {
                crate::control::notify::reloading();
                reloads.request("SIGHUP", None);
            }
            _ = sigusr1.recv() => node.reopen_logs(),
            Some(reply) = reload_rx.recv() => reloads.request("POST /reload", Some(reply)),
            Some((ip, reply)) = unblock_rx.recv() => {
                let lifted = match dataplane.as_mut() {
                    Some(dp) => dp.unblock(ip).map_err(|e| format!("POST /unblock: {e}")),
                    None => Err("POST /unblock: XDP is off, so no source is blocked".to_string()),
                };
                if let Ok(n) = lifted {
                    info!(source = %ip, lifted = n, "POST /unblock");
                }
                let _ = reply.send(lifted);
                refresh_status(&admin_state, &node, dataplane.as_ref(), bgp.as_ref(), &hops);
            }
            Some(event) = etcd_rx.recv() => {
                if let Some(v) = etcd_view.as_mut() {
                    match event {
                        crate::etcd::Event::Changed(snapshot) => {
                            info!(prefix = v.prefix, revision = snapshot.revision, "etcd: the configuration changed");
                            (v.connected, v.error) = (true, None);
                            reloads.set_etcd(snapshot);
                            reloads.request("etcd", None);
                        }
                        crate::etcd::Event::Lost(e) => {
                            if v.connected {
                                warn!(error = %e, "etcd unreachable; the configuration in use stays");
                            }
                            (v.connected, v.error) = (false, Some(e));
                        }
                        crate::etcd::Event::Back => {
                            info!(prefix = v.prefix, "etcd reachable again");
                            (v.connected, v.error) = (true, None);
                        }
                    }
                }
                show_etcd(&admin_state, etcd_view.as_ref());
            }
            Some(read) = reads.recv(), if pending.is_none() => {
                // With BGP, the addresses of listeners the new configuration drops are
                // withdrawn first; the reload is applied once the routers had the delay.
                // A reload that will be refused changes nothing, routes included.
                let going = match (&read.config, bgp.as_ref()) {
                    (Ok(fresh), Some(_)) if needs_restart(fresh, &node).is_none() => {
                        dropped_addresses(&node, fresh)
                    }
                    _ => BTreeSet::new(),
                };
                let mut delay = Duration::ZERO;
                if let Some(b) = bgp.as_mut()
                    && !going.is_empty()
                    && b.hold_back(going).await
                {
                    delay = b.settings().withdraw_delay;
                }
                if delay.is_zero() {
                    apply_read!(read);
                } else {
                    info!(seconds = delay.as_secs(), "reload drops announced listeners: withdrawn, applied after --bgp-withdraw-delay");
                    pending = Some((read, tokio::time::Instant::now() + delay));
                }
            }
            _ = until(reloads.retry_at()) => reloads.retry(),
            _ = until(pending.as_ref().map(|(_, at)| *at)) => {
                if let Some((read, _)) = pending.take() {
                    apply_read!(read);
                }
            }
        }
    }
    // Routers first: they move new connections to the other nodes while this one still
    // accepts, and only then do the listeners close.
    if let Some(mut b) = bgp.take() {
        let delay = b.settings().withdraw_delay;
        if b.withdraw_all().await {
            info!(
                seconds = delay.as_secs(),
                "BGP routes withdrawn; closing the listeners after --bgp-withdraw-delay"
            );
            bgp = Some(b);
        } else {
            warn!(
                seconds = delay.as_secs(),
                "BGP speaker did not withdraw the routes: stopped, its closing sessions withdraw them; closing the listeners after --bgp-withdraw-delay"
            );
            b.stop();
        }
        tokio::time::sleep(delay).await;
    }
    node.stop_listeners();
    let drain = node.config.ops.drain_timeout;
    if let Some(dp) = dataplane.as_mut() {
        log_counters(dp, &node);
    }
    let Node {
        workers,
        access_log,
        ..
    } = node;
    workers.shutdown(drain);
    if let Some(dp) = dataplane.as_mut() {
        dp.detach_all();
    }
    syn_protect.restore();
    if let Some(b) = bgp {
        b.stop();
    }
    // The last requests' lines, before the process ends; the host is already left as it
    // was, whatever the log's destination does.
    if let Some(log) = access_log
        && !log.flush(crate::line_writer::EXIT_FLUSH)
    {
        warn!("the access log's destination did not take its last lines in time");
    }
    Ok(())
}

/// The listeners `--syn-protect` concerns, with their data-plane ids.
fn protected(node: &Node) -> Vec<Protected<'_>> {
    node.listeners
        .iter()
        .filter(|l| l.config.syn_protect != SynProtection::Off)
        .map(|l| Protected {
            id: l.id,
            name: &l.config.name,
            mode: l.config.syn_protect,
        })
        .collect()
}

/// Every connection is a descriptor: the soft limit (often 1024) goes up to the hard one, as
/// nginx's worker_rlimit_nofile does. Returns the limit in effect.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

fn log_ready(node: &Node, dataplane: Option<&Dataplane>, workers: usize, fd_limit: u64) {
    let xdp = dataplane.map_or("off".to_string(), |dp| {
        dp.attached()
            .map(|(i, how)| format!("{i}:{how}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    for l in &node.listeners {
        let c = &l.config;
        let tags: Vec<String> = c.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let group = node.config.default_group(c);
        info!(
            listener = c.name,
            description = c.description.as_deref().unwrap_or(""),
            tags = tags.join(","),
            protocol = c.protocol.scheme(),
            listen = %c.listen,
            access_control = c.access.mode.name(),
            group = group.name,
            algorithm = group.algorithm.name(),
            backends = group.backends.len(),
            rules = c.rules.len(),
            "listener ready"
        );
    }
    info!(
        listeners = node.listeners.len(),
        groups = node.groups.len(),
        workers,
        fd_limit,
        xdp,
        "edgelb ready"
    );
}

/// Loads the program and attaches it to every interface; the node writes the listeners. In
/// `auto` mode any failure falls back (to skb mode, or to no XDP at all) with a warning; in
/// `native` and `skb` mode it is an error and nothing stays attached.
fn start_dataplane(config: &Config) -> Result<Option<Dataplane>, StartError> {
    if !config.xdp.enabled() {
        return Ok(None);
    }
    let strict = config.xdp.mode != XdpMode::Auto;
    let mut dp = match Dataplane::load() {
        Ok(dp) => dp,
        Err(e) if strict => {
            return Err(StartError::Usage(format!(
                "--xdp-mode {}: {}{}",
                config.xdp.mode.name(),
                error_chain(&e),
                privilege_hint(&e)
            )));
        }
        Err(e) if config.listeners.iter().any(|l| l.protocol.is_l4()) => {
            return Err(StartError::Usage(format!(
                "XDP unavailable, and tcp/udp listeners are forwarded by it: {}{}",
                error_chain(&e),
                privilege_hint(&e)
            )));
        }
        Err(e) => {
            warn!(
                error = %error_chain(&e),
                "XDP unavailable{}; access control is enforced on accept only, and per-source \
                 limits (--rate-limit-syn, --rate-limit-pps, --auto-block) not at all",
                privilege_hint(&e)
            );
            return Ok(None);
        }
    };
    for iface in &config.xdp.ifaces {
        let result = match config.xdp.mode {
            XdpMode::Native => dp.attach(iface, AttachMode::Native),
            XdpMode::Skb => dp.attach(iface, AttachMode::Skb),
            _ => dp.attach(iface, AttachMode::Native).or_else(|e| {
                warn!(iface, error = %error_chain(&e), "native XDP refused; falling back to skb (generic) mode, which runs after the kernel allocates the packet");
                dp.attach(iface, AttachMode::Skb)
            }),
        };
        if let Err(e) = result {
            dp.detach_all();
            let hint = match config.xdp.mode {
                XdpMode::Native => "; use --xdp-mode auto or skb for drivers without native XDP",
                _ => "",
            };
            return Err(StartError::Usage(format!(
                "--xdp-iface {iface:?}: {}{hint}",
                error_chain(&e)
            )));
        }
    }
    Ok(Some(dp))
}

fn privilege_hint(e: &DataplaneError) -> &'static str {
    if e.errno() == Some(libc::EPERM) {
        " (loading XDP needs root, or CAP_BPF and CAP_NET_ADMIN)"
    } else {
        ""
    }
}

/// Seconds between two lookups of next hops that are all known, when the kernel announces
/// changes: only a safety net, should an announcement be lost unnoticed.
const NEXT_HOP_SAFETY_TICKS: u64 = 30;
/// The same when it does not: the only way to notice a change.
const NEXT_HOP_POLL_TICKS: u64 = 5;

/// Completes when the kernel announced a change that may move a next hop; never without
/// announcements.
async fn next_hop_change(watch: Option<&Watch>) {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// Looks the L4 backends' next hops up again and publishes them if a MAC changed.
/// Attaches the program again to interfaces created anew, logging what changed; true if it
/// was attached to one (its next hops are looked up again then).
fn follow_interfaces(dp: &mut Dataplane) -> bool {
    let mut attached = false;
    for event in dp.follow_interfaces() {
        match event {
            InterfaceEvent::Gone { iface } => {
                warn!(
                    iface,
                    "XDP interface gone; the program is attached again when it is back"
                )
            }
            InterfaceEvent::Attached { iface, mode } => {
                attached = true;
                warn!(
                    iface,
                    mode = mode.name(),
                    "XDP interface created again: program attached again"
                );
            }
            InterfaceEvent::Failed { iface, reason } => {
                error!(
                    iface,
                    reason,
                    "XDP interface created again, but the program cannot be attached: its listeners run without XDP there"
                )
            }
        }
    }
    attached
}

fn refresh_next_hops(hops: &mut NextHops, node: &Node, dataplane: Option<&mut Dataplane>) {
    if hops.refresh(&node.l4_backends(), &node.config.xdp.ifaces)
        && let Some(dp) = dataplane
    {
        node.write_l4_groups(dp, hops);
    }
}

fn reload_logged(
    why: &str,
    fresh: Result<Config, ReloadError>,
    node: &mut Node,
    dataplane: Option<&mut Dataplane>,
    hops: &mut NextHops,
    admin: &AdminState,
    bgp: Option<&Announcer>,
) -> Result<(), Refusal> {
    let result = fresh
        .and_then(|fresh| reload(fresh, node, dataplane, hops))
        .map_err(|e| Arc::new(e) as Refusal);
    node.retain_metrics();
    admin.record_reload(why, &result);
    match &result {
        Ok(()) => {
            refresh_status(admin, node, None, bgp, hops);
            info!(
                listeners = node.listeners.len(),
                groups = node.groups.len(),
                "{why}: configuration and certificates reloaded"
            );
        }
        Err(e) => warn!(error = %e, "{why}: reload refused, the running configuration stays"),
    }
    result
}

/// Swaps in a configuration read again from the flags' files and the config file (off this
/// thread, by `Reloads`). Everything is built and checked before anything is swapped, so a
/// bad file changes nothing.
fn reload(
    fresh: Config,
    node: &mut Node,
    dataplane: Option<&mut Dataplane>,
    hops: &mut NextHops,
) -> Result<(), ReloadError> {
    for w in fresh.warnings(crate::config::fd_limit()) {
        tracing::warn!("reload: {w}");
    }
    if let Some(what) = needs_restart(&fresh, node) {
        return Err(ReloadError::NeedsRestart(what));
    }
    // New backends' next hops are asked for now and found by the next refreshes; a refused
    // reload gives the running ones back at once (the map writes of a health change would
    // otherwise find none for them).
    hops.refresh(&crate::node::l4_backends(&fresh), &fresh.xdp.ifaces);
    node.reload(fresh, dataplane, hops).inspect_err(|_| {
        hops.refresh(&node.l4_backends(), &node.config.xdp.ifaces);
    })?;
    Ok(())
}

/// What `fresh` changes that only a restart can: a reload that changes it is refused.
fn needs_restart(fresh: &Config, node: &Node) -> Option<&'static str> {
    if fresh.xdp.ifaces != node.config.xdp.ifaces || fresh.xdp.mode != node.config.xdp.mode {
        return Some("xdp_iface and xdp_mode");
    }
    if fresh.bgp != node.config.bgp {
        return Some("the bgp_ settings");
    }
    if fresh.ops.admin != node.config.ops.admin {
        return Some("admin");
    }
    if fresh.ops.user != node.config.ops.user {
        return Some("user");
    }
    None
}

/// The addresses of `node`'s listeners that `fresh` has no listener on (those announced are
/// withdrawn before the reload that drops them).
fn dropped_addresses(node: &Node, fresh: &Config) -> BTreeSet<std::net::IpAddr> {
    node.listeners
        .iter()
        .map(|l| l.config.listen.ip())
        .filter(|ip| !fresh.listeners.iter().any(|f| f.listen.ip() == *ip))
        .collect()
}

/// Resolves at `at`; never without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn show_etcd(state: &AdminState, view: Option<&EtcdView>) {
    state.view.lock().unwrap_or_else(|p| p.into_inner()).etcd = view.cloned();
}

/// Copies backend health into the metrics and XDP counters into the status view. Without a
/// data plane argument the counters are kept from the last tick until the next one.
fn refresh_status(
    state: &AdminState,
    node: &Node,
    dataplane: Option<&Dataplane>,
    bgp: Option<&Announcer>,
    hops: &NextHops,
) {
    for g in &node.groups {
        let b = &g.balancer;
        for i in 0..b.len() {
            if let Some(key) = b.key(i) {
                state
                    .metrics
                    .set_backend_healthy(&g.config.name, key, b.is_healthy(i));
            }
        }
    }
    let attached = dataplane.map_or_else(Vec::new, |dp| {
        dp.attached().map(|(i, how)| format!("{i}:{how}")).collect()
    });
    let mut view = node.view(attached);
    state
        .metrics
        .set_certificates(view.certificates.iter().map(|c| CertificateMetric {
            listener: &c.listener,
            source: c.source,
            name: c.names.first().map_or("", String::as_str),
            expires_in_seconds: c.expires_in_seconds,
            acme_failures: c.failures,
        }));
    state.metrics.set_dropped_lines(
        crate::access_log::DROPPED.load(Ordering::Relaxed),
        crate::line_writer::LOG_DROPPED.load(Ordering::Relaxed),
    );
    view.bgp = bgp.map(Announcer::view);
    view.next_hops = hops.view();
    if let Some(b) = &view.bgp {
        state.metrics.set_bgp(b);
    }
    if let Some(dp) = dataplane {
        for (group, b, c) in l4_backend_counters(dp, node) {
            state.metrics.set_xdp_backend(
                &group.config.name,
                &b.addr.to_string(),
                c.packets,
                c.bytes,
            );
        }
        let blocked = dp.blocked().unwrap_or_default();
        for (status, l) in view.listeners.iter_mut().zip(&node.listeners) {
            if let Ok(c) = dp.counters(l.id) {
                for o in Outcome::ALL {
                    let n = c.packets_of(o);
                    state.metrics.set_xdp_packets(&l.config.name, o.name(), n);
                    status.xdp_counters.push((o.name().to_string(), n));
                }
            }
            status.blocked = blocked
                .iter()
                .filter(|b| b.listener_id == l.id)
                .map(|b| BlockedStatus {
                    source: b.prefix(),
                    secs_left: b.secs_left,
                })
                .collect();
            state
                .metrics
                .set_blocked_sources(&l.config.name, status.blocked.len() as u64);
            status.syn_cookies_answering = answering(dp, l.id, l.config.syn_protect);
            // Also for listeners without protection: one turned off by a reload shows 0.
            state
                .metrics
                .set_syn_cookies_answering(&l.config.name, status.syn_cookies_answering);
        }
        if node
            .listeners
            .iter()
            .any(|l| l.config.syn_protect != SynProtection::Off)
            && let Some(k) = KernelCookies::read()
        {
            for (kind, n) in [
                ("sent", k.sent),
                ("received", k.received),
                ("failed", k.failed),
            ] {
                state.metrics.set_kernel_syncookies(kind, n);
            }
        }
    } else {
        let old = state.view.lock().unwrap_or_else(|p| p.into_inner());
        view.xdp_attached = old.xdp_attached.clone();
        for status in &mut view.listeners {
            if let Some(o) = old.listeners.iter().find(|o| o.name == status.name) {
                status.xdp_counters = o.xdp_counters.clone();
                status.blocked = o.blocked.clone();
                status.syn_cookies_answering = o.syn_cookies_answering;
            }
        }
    }
    let mut current = state.view.lock().unwrap_or_else(|p| p.into_inner());
    // The configuration's source is the main loop's to say (`show_etcd`).
    view.etcd = current.etcd.take();
    *current = view;
}

/// One line per counter slot: what XDP did during this run, for the operator and for tests.
fn log_counters(dp: &Dataplane, node: &Node) {
    let slots = node
        .listeners
        .iter()
        .map(|l| (l.id, l.config.name.as_str()))
        .chain([(NO_LISTENER_SLOT, "(no listener)")]);
    for (slot, label) in slots {
        match dp.counters(slot) {
            Ok(c) => {
                let fields: Vec<String> = Outcome::ALL
                    .iter()
                    .map(|o| format!("{}={}", o.name(), c.packets_of(*o)))
                    .collect();
                info!("xdp counters listener={label:?} {}", fields.join(" "));
            }
            Err(e) => warn!(error = %error_chain(&e), "reading XDP counters"),
        }
    }
    for (group, b, c) in l4_backend_counters(dp, node) {
        info!(
            "xdp backend counters group={:?} backend={} forwarded={} bytes={}",
            group.config.name, b.addr, c.packets, c.bytes
        );
    }
}

/// What XDP forwarded to each backend of the groups behind tcp/udp listeners.
fn l4_backend_counters<'a>(
    dp: &Dataplane,
    node: &'a Node,
) -> Vec<(&'a GroupRuntime, &'a BackendConfig, BackendCounters)> {
    let mut out = Vec::new();
    for g in node.l4_group_positions() {
        let group = &node.groups[g];
        let Some(slot) = dp.slots().group(&group.config.name) else {
            continue;
        };
        for b in &group.config.backends {
            if let Some(index) = dp.slots().backend(&group.config.name, b.addr)
                && let Ok(c) = dp.backend_counters(slot, index)
            {
                out.push((group, b, c));
            }
        }
    }
    out
}
