//! Connections to backends: pooled HTTP/1.1, in clear or over TLS (verified against
//! `--backend-ca`, or not at all with `--backend-insecure`).
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::body::BoxError;
use super::h1;
use crate::config::{BackendProtocol, BackendVerify, GroupConfig};
use crate::tls::client as tls_client;

pub type UpstreamBody = BoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response head (status line and header fields) taken from a backend; a larger one
/// fails the attempt as any invalid response does (another backend for an idempotent
/// request, else 502). The other limit: 100 header fields.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// One worker's client for one group's backends, as the group's settings ask.
pub fn backend_client(group: &GroupConfig) -> Result<h1::Client, rustls::Error> {
    let tls = match &group.protocol {
        BackendProtocol::Http => None,
        BackendProtocol::Https(verify) => {
            let name = group
                .hc_domain
                .as_ref()
                .map(|domain| ServerName::try_from(domain.clone()))
                .transpose()
                .map_err(|e| rustls::Error::General(format!("--hc-domain: {e}")))?;
            Some(h1::tls(client_tls(verify)?, name))
        }
    };
    Ok(h1::Client::new(
        group.backends.len(),
        tls,
        CONNECT_TIMEOUT,
        MAX_RESPONSE_HEAD,
    ))
}

/// The TLS client configuration `verify` asks for.
pub(crate) fn client_tls(verify: &BackendVerify) -> Result<ClientConfig, rustls::Error> {
    match verify {
        BackendVerify::Ca(_, roots) => tls_client::client_config(Some(roots)),
        BackendVerify::Insecure => tls_client::client_config(None),
    }
}
