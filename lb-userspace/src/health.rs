//! Active health checks of a group's backends: the only writer of backend health. Each backend
//! is checked every interval, the backends' checks spread evenly over the interval rather than
//! fired together; `retries` consecutive failures mark a backend unhealthy and as many
//! consecutive successes healthy again. Transitions are logged with the reason.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::{InvalidDnsNameError, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::{MissedTickBehavior, timeout};
use tracing::{info, warn};

use crate::balance::Balancer;
use crate::config::{CheckKind, HealthCheck};
use crate::proxy_protocol::{Version, encode};

/// The checks of one group, as [`spawn`] started them.
#[derive(Clone, Default)]
pub struct HealthTasks {
    tasks: Vec<AbortHandle>,
    /// Whether their results still count. They run on the control thread while a reload
    /// runs on the main thread: a result that lands after the reload took the balancer's
    /// health over would be lost, so [`HealthTasks::stop`] retires them first.
    live: Arc<AtomicBool>,
}

impl HealthTasks {
    /// Whether these are the same checks as `other` (a reload kept them).
    pub fn same(&self, other: &HealthTasks) -> bool {
        Arc::ptr_eq(&self.live, &other.live)
    }

    /// Whether no check was started (none asked for, or not yet).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && !self.live.load(Ordering::Relaxed)
    }

    /// Stops the checks writing `balancer`: when this returns, none of their results will
    /// change it any more.
    pub fn stop(&self, balancer: &Balancer) {
        balancer.retire_checks(&self.live);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts one checking task per backend on `runtime`. `changed` is notified after
/// every health transition (the data plane rewrites the group's Maglev ring then).
/// [`HealthTasks::stop`] stops them (a reload that replaces the group's checks does).
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    check: HealthCheck,
    group: String,
    balancer: Arc<Balancer>,
    changed: Arc<Notify>,
) -> HealthTasks {
    let mut tasks = HealthTasks {
        tasks: Vec::new(),
        live: Arc::new(AtomicBool::new(true)),
    };
    if check.kind == CheckKind::Off {
        // Nothing will check them again: a backend a reload found unhealthy would stay out
        // for good.
        let mut any = false;
        for index in 0..balancer.len() {
            any |= balancer.set_health_from(&tasks.live, index, true, "health checks turned off");
        }
        if any {
            changed.notify_one();
        }
        return tasks;
    }
    if balancer.is_empty() {
        return tasks;
    }
    let tls = match insecure_tls() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            warn!(group, error = %e, "health checks disabled: TLS client configuration failed");
            return tasks;
        }
    };
    let n = balancer.len() as u32;
    for index in 0..balancer.len() {
        let Some(addr) = balancer.addr(index) else {
            continue;
        };
        let (check, group, balancer, changed, tls, live) = (
            check.clone(),
            group.clone(),
            balancer.clone(),
            changed.clone(),
            tls.clone(),
            tasks.live.clone(),
        );
        // Backend i starts i/n of an interval late, so checks are spread over the interval.
        let offset = check.interval * index as u32 / n;
        let task = runtime.spawn(async move {
            tokio::time::sleep(offset).await;
            let mut ticks = tokio::time::interval(check.interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let (mut fails, mut passes) = (0u32, 0u32);
            loop {
                ticks.tick().await;
                let target = SocketAddr::new(addr.ip(), check.port.unwrap_or(addr.port()));
                let result = probe(&check, target, &tls).await;
                let healthy = balancer.is_healthy(index);
                match result {
                    Ok(()) => {
                        fails = 0;
                        passes = passes.saturating_add(1);
                        // The first pass proves the backend: BGP may announce its listeners.
                        if balancer.mark_passed_from(&live, index) {
                            changed.notify_one();
                        }
                        if !healthy
                            && passes >= check.retries
                            && balancer.set_health_from(&live, index, true, passed(&check, passes))
                        {
                            info!(group, backend = %addr, check = check.kind.name(), passes, "backend healthy");
                            changed.notify_one();
                        }
                    }
                    Err(reason) => {
                        passes = 0;
                        fails = fails.saturating_add(1);
                        // A string field, which the text log quotes.
                        let reason =
                            (healthy && fails >= check.retries).then(|| reason.to_string());
                        if let Some(reason) = reason
                            && balancer.set_health_from(&live, index, false, reason.clone())
                        {
                            warn!(group, backend = %addr, check = check.kind.name(), reason, fails, "backend unhealthy");
                            changed.notify_one();
                        }
                    }
                }
            }
        });
        tasks.tasks.push(task.abort_handle());
    }
    tasks
}

/// Why a backend became healthy, as the status page shows it.
fn passed(check: &HealthCheck, passes: u32) -> String {
    match passes {
        1 => format!("{} check passed", check.kind.name()),
        n => format!("{n} {} checks passed in a row", check.kind.name()),
    }
}

/// Why a check failed: the reason a person would want in the log.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// Nothing listens (ECONNREFUSED): the common case, said plainly.
    #[error("connection refused")]
    Refused {
        #[source]
        source: std::io::Error,
    },
    #[error("connect: {source}")]
    Connect {
        #[source]
        source: std::io::Error,
    },
    #[error("sending the PROXY protocol header: {source}")]
    ProxyHeader {
        #[source]
        source: std::io::Error,
    },
    #[error("server name: {source}")]
    ServerName {
        #[source]
        source: InvalidDnsNameError,
    },
    #[error("TLS error: {source}")]
    Tls {
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake: {source}")]
    Handshake {
        #[source]
        source: hyper::Error,
    },
    #[error("request: {source}")]
    BuildRequest {
        #[source]
        source: hyper::http::Error,
    },
    #[error("request: {source}")]
    Request {
        #[source]
        source: hyper::Error,
    },
    #[error("status {}", .0.as_u16())]
    Status(StatusCode),
    #[error("timeout after {}s", .0.as_secs())]
    Timeout(Duration),
}

/// One check.
async fn probe(
    check: &HealthCheck,
    target: SocketAddr,
    tls: &Arc<ClientConfig>,
) -> Result<(), ProbeError> {
    let attempt = async {
        let mut tcp = TcpStream::connect(target)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::ConnectionRefused => ProbeError::Refused { source },
                _ => ProbeError::Connect { source },
            })?;
        let _ = tcp.set_nodelay(true);
        if let Some(version) = check.proxy_protocol {
            send_proxy_header(&mut tcp, version)
                .await
                .map_err(|source| ProbeError::ProxyHeader { source })?;
        }
        match check.kind {
            CheckKind::Off | CheckKind::Tcp => Ok(()),
            CheckKind::Http => http_get(tcp, check, target).await,
            CheckKind::Https => {
                let name = match &check.domain {
                    Some(d) => ServerName::try_from(d.clone())
                        .map_err(|source| ProbeError::ServerName { source })?,
                    None => ServerName::IpAddress(target.ip().into()),
                };
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| ProbeError::Tls { source })?;
                http_get(stream, check, target).await
            }
        }
    };
    timeout(check.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(ProbeError::Timeout(check.timeout)))
}

/// A backend that requires the PROXY protocol (HAProxy's `accept-proxy`) refuses a
/// connection without a header: checks send one, as HAProxy's `check-send-proxy` does. v2
/// says `LOCAL` (the checker speaks for itself); v1 has no such command, and names the
/// check connection's own two ends.
async fn send_proxy_header(tcp: &mut TcpStream, version: Version) -> std::io::Result<()> {
    let header = match version {
        Version::V2 => encode::v2_local(),
        Version::V1 => encode::v1(tcp.local_addr()?, tcp.peer_addr()?),
    };
    tcp.write_all(&header).await
}

async fn http_get<S>(io: S, check: &HealthCheck, target: SocketAddr) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|source| ProbeError::Handshake { source })?;
    tokio::spawn(conn);
    let host = check.domain.clone().unwrap_or_else(|| target.to_string());
    let req = Request::get(check.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "edgelb-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|source| ProbeError::BuildRequest { source })?;
    let status = sender
        .send_request(req)
        .await
        .map_err(|source| ProbeError::Request { source })?
        .status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// Checks ask "does it answer", not "is it who it claims": certificates are not verified
/// (handshake signatures still are), as cloud load balancers' checks do.
fn insecure_tls() -> Result<ClientConfig, rustls::Error> {
    let mut config = crate::tls::client::client_config(None)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_before() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            ProbeError::Refused { source: refused }.to_string(),
            "connection refused"
        );
        assert_eq!(
            ProbeError::Timeout(Duration::from_secs(2)).to_string(),
            "timeout after 2s"
        );
        assert_eq!(
            ProbeError::Status(StatusCode::SERVICE_UNAVAILABLE).to_string(),
            "status 503"
        );
    }
}
