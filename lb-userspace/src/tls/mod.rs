//! TLS termination: certificates (default and per server name), client certificate
//! verification, security policies, ALPN, and the rustls configuration built from them.
pub mod certs;
pub mod client;
pub mod policy;
pub mod sni;
pub mod tickets;

use std::sync::Arc;

use rustls::server::{ProducesTickets, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

pub use policy::TlsPolicy;
pub use sni::{SniName, SniResolver};

/// Everything a listener's TLS configuration is built from, already loaded and checked.
#[derive(Clone)]
pub struct TlsSettings {
    pub default: Arc<CertifiedKey>,
    pub sni: Vec<(SniName, Arc<CertifiedKey>)>,
    /// Trust anchors for client certificates; `Some` means mutual TLS.
    pub client_ca: Option<Arc<RootCertStore>>,
    pub policy: TlsPolicy,
}

/// The rustls server configuration of an HTTPS listener.
/// `http2` decides whether ALPN offers `h2` besides `http/1.1`; `tickets` are the node's
/// ticket keys, which the running node keeps across reloads (see [`tickets`]).
pub fn server_config(
    settings: &TlsSettings,
    http2: bool,
    tickets: &Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let alpn: &[&[u8]] = if http2 {
        &[b"h2", b"http/1.1"]
    } else {
        &[b"http/1.1"]
    };
    build(settings, settings.policy.versions(), alpn, tickets).map(Arc::new)
}

/// The same listener's configuration for QUIC (HTTP/3): the same certificates, client
/// verification and suites, TLS 1.3 only (the only version QUIC carries) and ALPN `h3`.
pub fn quic_server_config(
    settings: &TlsSettings,
    tickets: &Arc<dyn ProducesTickets>,
) -> Result<ServerConfig, rustls::Error> {
    build(settings, &[&rustls::version::TLS13], &[b"h3"], tickets)
}

fn build(
    settings: &TlsSettings,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
    tickets: &Arc<dyn ProducesTickets>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = settings.policy.provider();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &settings.client_ca {
        Some(roots) => {
            // Every client must present a certificate chaining to the CA: the handshake fails
            // otherwise, so an unauthenticated client never reaches a backend.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| rustls::Error::General(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let resolver = SniResolver::new(Some(settings.default.clone()), &settings.sni);
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Resumption: stateless tickets (TLS 1.2 and 1.3), sealed with the node's keys so that
    // they open on every node with the same keys and after a reload; plus the default
    // in-memory session cache for TLS 1.2 clients without tickets (this configuration's own).
    config.ticketer = Arc::new(tickets::ScopedTickets::new(
        tickets.clone(),
        settings.client_ca.as_deref(),
    ));
    Ok(config)
}

/// What the handshake established about the client, passed on to backends as headers.
#[derive(Clone, Debug, Default)]
pub struct ClientIdentity {
    /// Subject of the verified client certificate (mutual TLS only).
    pub subject: Option<String>,
}

impl ClientIdentity {
    pub fn from_connection(conn: &rustls::ServerConnection) -> Self {
        Self::from_chain(conn.peer_certificates())
    }

    /// From the chain the client presented (verified by the handshake), if any.
    pub fn from_chain(chain: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Self {
        ClientIdentity {
            subject: chain.and_then(|c| c.first()).and_then(certs::subject),
        }
    }
}
