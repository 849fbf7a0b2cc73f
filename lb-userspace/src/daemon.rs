//! The running daemon: binds the listener, brings up the XDP data plane, accepts, terminates
//! TLS, proxies, and on SIGTERM/SIGINT stops, detaches XDP and returns.
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_common::{IPPROTO_TCP, NO_LISTENER_SLOT, Outcome};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::acl::AccessControl;
use crate::admin::{self, AdminState, ListenerStatus, XdpStatus};
use crate::balance::Balancer;
use crate::cli::RunArgs;
use crate::config::{Config, XdpMode};
use crate::dataplane::{AttachMode, Dataplane, DataplaneError, ListenerRule, error_chain};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::server::{ListenerContext, Live};
use crate::workers;
use arc_swap::ArcSwap;

/// The id of the single flag-defined listener in the data plane.
const LISTENER_ID: u32 = 1;

/// Why the daemon could not start. Usage errors (the flags ask for something this host cannot
/// do) exit with 2, like invalid flags; the others with 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
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
    let l = &config.listener;
    let live =
        Arc::new(ArcSwap::from_pointee(live_parts(&config).map_err(|e| {
            StartError::Runtime(format!("TLS configuration: {e}"))
        })?));
    let backends: Vec<_> = config
        .group
        .backends
        .iter()
        .map(|b| (b.addr, b.weight))
        .collect();
    let balancer = Arc::new(
        Balancer::new(config.group.algorithm, &backends).with_slow_start(config.group.slow_start),
    );
    let listen = l.listen;
    let worker_count = workers::default_count();
    let sockets = workers::bind(listen, worker_count)
        .map_err(|e| StartError::Runtime(format!("--listen {listen}: cannot bind: {e}")))?;

    let mut dataplane = start_dataplane(&config)?;
    let metrics = Metrics::new();
    let backend_keys: Vec<String> = (0..balancer.len())
        .filter_map(|i| balancer.key(i).map(str::to_string))
        .collect();
    let listener_metrics = metrics.listener(&l.name, &config.group.name, &backend_keys);
    let admin = match config.ops.admin {
        Some(addr) => Some(admin::bind(addr).await.map_err(StartError::Runtime)?),
        None => None,
    };

    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| StartError::Runtime(format!("installing the SIGTERM handler: {e}")))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| StartError::Runtime(format!("installing the SIGINT handler: {e}")))?;
    let mut sighup = signal(SignalKind::hangup())
        .map_err(|e| StartError::Runtime(format!("installing the SIGHUP handler: {e}")))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // Each worker has its own backend connection pool; the balancer is shared.
    let contexts = (0..sockets.len())
        .map(|_| {
            let upstream = Upstream::new(
                config.group.clone(),
                balancer.clone(),
                l.timeouts,
                l.transfer_lb_ip,
            )?;
            Ok(Arc::new(ListenerContext {
                live: live.clone(),
                http2: l.http2,
                timeouts: l.timeouts,
                upstream: Arc::new(upstream),
                metrics: listener_metrics.clone(),
                stop: stop_rx.clone(),
                open: Arc::new(AtomicUsize::new(0)),
                drain: config.ops.drain_timeout,
                access_log: config.ops.access_log.then(|| Arc::from(l.name.as_str())),
            }))
        })
        .collect::<Result<Vec<_>, rustls::Error>>()
        .map_err(|e| StartError::Runtime(format!("backend TLS configuration: {e}")))?;
    let handles = workers::spawn(sockets.into_iter().zip(contexts).collect(), stop_rx)
        .map_err(|e| StartError::Runtime(format!("starting worker threads: {e}")))?;
    let health_changed = Arc::new(Notify::new());
    crate::health::spawn(
        config.group.health.clone(),
        config.group.name.clone(),
        balancer.clone(),
        health_changed.clone(),
    );
    let tags: Vec<String> = l.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    info!(
        listener = l.name,
        description = l.description.as_deref().unwrap_or(""),
        tags = tags.join(","),
        protocol = l.protocol.scheme(),
        listen = %listen,
        workers = worker_count,
        access_control = l.access.mode.name(),
        group = config.group.name,
        group_description = config.group.description.as_deref().unwrap_or(""),
        algorithm = config.group.algorithm.name(),
        backends = config.group.backends.len(),
        xdp = dataplane.as_ref().map_or("off".to_string(), |dp| {
            dp.attached().map(|(i, m)| format!("{i}:{}", m.name())).collect::<Vec<_>>().join(",")
        }),
        "edgelb ready"
    );

    // The kernel's copy of the group's Maglev ring follows the balancer's: same clients, same
    // backends, whichever side picks.
    write_ring(dataplane.as_mut(), &balancer);
    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<Result<(), String>>>(4);
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        listener: ListenerStatus {
            name: l.name.clone(),
            protocol: l.protocol.scheme(),
            listen: listen.to_string(),
            access_control: l.access.mode.name(),
        },
        group: config.group.name.clone(),
        algorithm: config.group.algorithm.name(),
        balancer: balancer.clone(),
        xdp: Mutex::new(XdpStatus::default()),
        reload: reload_tx,
    });
    if let Some(listener) = admin {
        tokio::spawn(admin::serve(listener, admin_state.clone()));
    }
    // The main thread owns the data plane: it copies what the admin endpoint shows from the
    // kernel's counters and the balancer's health, once a second.
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = refresh.tick() => refresh_status(&admin_state, &config, dataplane.as_ref()),
            _ = health_changed.notified() => write_ring(dataplane.as_mut(), &balancer),
            _ = sighup.recv() => {
                let _ = reload_logged("SIGHUP", args, &config, &live, dataplane.as_mut(), &metrics);
            }
            Some(reply) = reload_rx.recv() => {
                let _ = reply.send(reload_logged("POST /reload", args, &config, &live, dataplane.as_mut(), &metrics));
            }
        }
    }
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.join();
    }
    if let Some(dp) = dataplane.as_mut() {
        log_counters(dp, &config.listener.name);
        dp.detach_all();
    }
    Ok(())
}

fn listener_rule(config: &Config) -> ListenerRule {
    let AccessControl { mode, prefixes } = config.listener.access.clone();
    ListenerRule {
        id: LISTENER_ID,
        addr: config.listener.listen,
        proto: IPPROTO_TCP,
        mode,
        prefixes,
    }
}

/// Loads the program, writes the listener and its ACL, attaches to every interface. In `auto`
/// mode any failure falls back (to skb mode, or to no XDP at all) with a warning; in `native`
/// and `skb` mode it is an error and nothing stays attached.
fn start_dataplane(config: &Config) -> Result<Option<Dataplane>, StartError> {
    if !config.xdp.enabled() {
        return Ok(None);
    }
    let strict = config.xdp.mode != XdpMode::Auto;
    let mut dp = match Dataplane::load().and_then(|mut dp| {
        dp.apply(&[listener_rule(config)])?;
        Ok(dp)
    }) {
        Ok(dp) => dp,
        Err(e) if strict => {
            return Err(StartError::Usage(format!(
                "--xdp-mode {}: {}{}",
                config.xdp.mode.name(),
                error_chain(&e),
                privilege_hint(&e)
            )));
        }
        Err(e) => {
            warn!(
                error = %error_chain(&e),
                "XDP unavailable{}; access control is enforced on accept only",
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
    let text = error_chain(e);
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        " (loading XDP needs root, or CAP_BPF and CAP_NET_ADMIN)"
    } else {
        ""
    }
}

fn reload_logged(
    why: &str,
    args: &RunArgs,
    running: &Config,
    live: &ArcSwap<Live>,
    dataplane: Option<&mut Dataplane>,
    metrics: &Metrics,
) -> Result<(), String> {
    let result = reload(args, running, live, dataplane);
    match &result {
        Ok(()) => {
            metrics.reloaded();
            info!("{why}: configuration and certificates reloaded");
        }
        Err(e) => warn!(error = %e, "{why}: reload refused, the running configuration stays"),
    }
    result
}

/// What a reload can change without rebinding: certificates, client CA, policy, access
/// control (and the XDP maps that hold it), rules.
fn live_parts(config: &Config) -> Result<Live, rustls::Error> {
    let l = &config.listener;
    let tls = match &l.tls {
        Some(tls) => Some(TlsAcceptor::from(crate::tls::server_config(
            &tls.settings,
            l.http2,
        )?)),
        None => None,
    };
    Ok(Live {
        tls,
        access: l.access.clone(),
        rules: l.rules.clone(),
    })
}

/// Reads the flags' files again (certificates, keys, CA bundles, IP group files) and swaps
/// in what they say. Everything is built and checked before anything is swapped, so a bad
/// file changes nothing. What needs new sockets or a new backend group (addresses, backends,
/// algorithm) is not part of a flag-defined reload: the flags themselves cannot change.
fn reload(
    args: &RunArgs,
    running: &Config,
    live: &ArcSwap<Live>,
    dataplane: Option<&mut Dataplane>,
) -> Result<(), String> {
    let fresh = Config::from_args(args).map_err(|e| e.to_string())?;
    let parts = live_parts(&fresh).map_err(|e| format!("TLS configuration: {e}"))?;
    if let Some(dp) = dataplane {
        let mut rule = listener_rule(&fresh);
        rule.addr = running.listener.listen;
        dp.apply(&[rule])
            .map_err(|e| format!("XDP maps: {}", error_chain(&e)))?;
    }
    live.store(Arc::new(parts));
    Ok(())
}

/// The group's id in the data plane's Maglev maps.
const GROUP_ID: u32 = 0;

fn write_ring(dataplane: Option<&mut Dataplane>, balancer: &Balancer) {
    if let (Some(dp), Some(table)) = (dataplane, balancer.maglev_table())
        && let Err(e) = dp.set_ring(GROUP_ID, &table)
    {
        warn!(error = %error_chain(&e), "writing the Maglev ring to the data plane");
    }
}

fn refresh_status(state: &AdminState, config: &Config, dataplane: Option<&Dataplane>) {
    let b = &state.balancer;
    for i in 0..b.len() {
        if let Some(key) = b.key(i) {
            state
                .metrics
                .set_backend_healthy(&config.group.name, key, b.is_healthy(i));
        }
    }
    let mut xdp = XdpStatus::default();
    if let Some(dp) = dataplane {
        xdp.attached = dp
            .attached()
            .map(|(i, m)| format!("{i}:{}", m.name()))
            .collect();
        if let Ok(c) = dp.counters(LISTENER_ID) {
            for o in Outcome::ALL {
                let n = c.packets_of(o);
                state
                    .metrics
                    .set_xdp_packets(&config.listener.name, o.name(), n);
                xdp.counters.push((o.name().to_string(), n));
            }
        }
    }
    *state.xdp.lock().unwrap_or_else(|p| p.into_inner()) = xdp;
}

/// One line per counter slot: what XDP did during this run, for the operator and for tests.
fn log_counters(dp: &Dataplane, listener: &str) {
    for (slot, label) in [(LISTENER_ID, listener), (NO_LISTENER_SLOT, "(no listener)")] {
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
}
