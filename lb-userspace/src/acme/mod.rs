//! Certificates from an ACME CA (RFC 8555) for the names https listeners give with
//! `--acme-domain`: ordered by one task (the only writer), kept in the state directory, served
//! by the listeners' certificate resolvers, renewed before they expire, all without a restart.
mod challenge;
#[cfg(feature = "acme")]
mod order;
#[cfg(feature = "acme")]
mod store;
#[cfg(feature = "acme")]
mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use serde::Serialize;

use crate::config::acme::AcmeConfig;

#[cfg(feature = "acme")]
pub use task::spawn;

/// Without the `acme` feature (the fuzz targets' build) nothing is ever ordered.
#[cfg(not(feature = "acme"))]
pub fn spawn(
    _runtime: &tokio::runtime::Handle,
    _acme: Arc<Acme>,
    _settings: tokio::sync::watch::Receiver<Settings>,
) {
    tracing::warn!("this edgelb is built without ACME: no certificate is ordered");
}

/// What the task works from: the client settings and each listener's names. A reload sends
/// new ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub config: AcmeConfig,
    pub sets: Vec<DomainSet>,
}

/// Renew this long before expiry, or at 2/3 of a lifetime shorter than three times it.
const RENEW_BEFORE: i64 = 30 * 86_400;

/// When a certificate valid from `not_before` to `not_after` is renewed.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    not_after - RENEW_BEFORE.min(lifetime / 3)
}

/// The wall clock in unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The path prefix of HTTP-01 validation requests (RFC 8555 8.3).
pub const HTTP_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// One listener's names, which get one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSet {
    pub listener: String,
    pub names: Vec<String>,
}

/// What `/status` and `/metrics` show of one ACME certificate.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CertStatus {
    pub listener: String,
    pub names: Vec<String>,
    /// Unix seconds; None until a certificate is held.
    pub not_after: Option<i64>,
    /// When it is renewed (30 days before expiry, or at 2/3 of a shorter lifetime).
    pub renew_at: Option<i64>,
    /// Why the last order failed; None after a success.
    pub last_error: Option<String>,
    /// Failed orders since the last success.
    pub failures: u32,
    /// When the next order is tried after a failure (unix seconds).
    pub retry_at: Option<i64>,
}

/// What the ACME task shares with the listeners: the certificates it holds, by name, and the
/// state directory where the challenges it is answering are written (so that every node
/// sharing the directory answers them, whichever node the CA asks).
pub struct Acme {
    state_dir: PathBuf,
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    status: Mutex<Vec<CertStatus>>,
}

impl crate::tls::IssuedCerts for Acme {
    /// The certificate issued for `name` (lower case), if one is held.
    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(name).cloned()
    }

    /// The TLS-ALPN-01 answer for `name` while a validation of it is pending, from any node.
    fn tls_alpn_challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        challenge::tls_alpn_certificate(&self.state_dir, name)
    }
}

impl Acme {
    pub fn new(state_dir: PathBuf) -> Arc<Self> {
        Arc::new(Acme {
            state_dir,
            certs: ArcSwap::from_pointee(HashMap::new()),
            status: Mutex::new(Vec::new()),
        })
    }

    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// The HTTP-01 answer (the key authorization) for `token` while its validation is pending.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        challenge::http_answer(&self.state_dir, token)
    }

    pub fn status(&self) -> Vec<CertStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    #[cfg_attr(not(feature = "acme"), allow(dead_code))]
    fn set_status(&self, status: Vec<CertStatus>) {
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    /// Serves `table` (certificates by name) from now on, in place of what was served: new
    /// handshakes take it, open connections keep the certificate they were made with.
    #[cfg_attr(not(feature = "acme"), allow(dead_code))]
    fn serve(&self, table: HashMap<String, Arc<CertifiedKey>>) {
        self.certs.store(Arc::new(table));
    }
}
