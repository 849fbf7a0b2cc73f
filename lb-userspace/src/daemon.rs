//! The running daemon: binds the listener, brings up the XDP data plane, accepts, terminates
//! TLS, proxies, and on SIGTERM/SIGINT stops, detaches XDP and returns.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use lb_common::{IPPROTO_TCP, NO_LISTENER_SLOT, Outcome};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::acl::AccessControl;
use crate::config::{Config, XdpMode};
use crate::dataplane::{AttachMode, Dataplane, DataplaneError, ListenerRule, error_chain};
use crate::proxy::Upstream;

/// A TLS handshake that has not finished in this time is abandoned, so half-open handshakes
/// cannot hold connections forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

pub async fn run(config: Config) -> Result<(), StartError> {
    let tls = crate::tls::server_config(config.listener.tls.certified.clone())
        .map_err(|e| StartError::Runtime(format!("TLS configuration: {e}")))?;
    let listen = config.listener.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| StartError::Runtime(format!("--listen {listen}: cannot bind: {e}")))?;

    let mut dataplane = start_dataplane(&config)?;

    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| StartError::Runtime(format!("installing the SIGTERM handler: {e}")))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| StartError::Runtime(format!("installing the SIGINT handler: {e}")))?;

    let acceptor = TlsAcceptor::from(tls);
    let upstream = Arc::new(Upstream::new(config.group.clone()));
    let access = Arc::new(config.listener.access.clone());
    info!(
        listener = config.listener.name,
        listen = %listen,
        access_control = config.listener.access.mode.name(),
        xdp = dataplane.as_ref().map_or("off".to_string(), |dp| {
            dp.attached().map(|(i, m)| format!("{i}:{}", m.name())).collect::<Vec<_>>().join(",")
        }),
        "edgelb ready"
    );

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if !access.admits(peer.ip()) {
                        debug!(client = %peer, "connection refused by access control");
                        drop(stream);
                        continue;
                    }
                    tokio::spawn(serve_connection(stream, peer, acceptor.clone(), upstream.clone()));
                }
                // Running out of descriptors or a connection reset before accept: keep serving.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
        }
    }
    drop(listener);
    if let Some(dp) = dataplane.as_mut() {
        log_counters(dp, &config.listener.name);
        dp.detach_all();
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    upstream: Arc<Upstream>,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    let service = service_fn(move |req| {
        let upstream = upstream.clone();
        async move { Ok::<_, std::convert::Infallible>(upstream.forward(req, peer).await) }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
        debug!(client = %peer, error = %e, "connection ended with an error");
    }
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
                mode_name(config.xdp.mode),
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

fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Skb => "skb",
        XdpMode::Off => "off",
    }
}

fn privilege_hint(e: &DataplaneError) -> &'static str {
    let text = error_chain(e);
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        " (loading XDP needs root, or CAP_BPF and CAP_NET_ADMIN)"
    } else {
        ""
    }
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
