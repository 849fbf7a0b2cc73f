//! TLS termination: certificates (default and per server name), client certificate
//! verification, security policies, ALPN, and the rustls configuration built from them.
pub mod certs;
pub mod client;
pub mod failure;
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
    acme: Option<&AcmeNames>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut alpn: Vec<&[u8]> = if http2 {
        vec![b"h2", b"http/1.1"]
    } else {
        vec![b"http/1.1"]
    };
    // Last: only the CA's validation handshakes offer it, and they offer nothing else.
    if acme.is_some_and(|a| a.tls_alpn) {
        alpn.push(ACME_TLS_ALPN);
    }
    build(settings, settings.policy.versions(), &alpn, tickets, acme).map(Arc::new)
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates that come and go while the listener runs (the ACME task's), and the answers
/// to TLS-ALPN-01 validations of their names.
pub trait IssuedCerts: Send + Sync {
    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>>;
    fn tls_alpn_challenge(&self, name: &str) -> Option<Arc<CertifiedKey>>;
}

/// A listener's `--acme-domain` names and where their certificates are: served for those
/// names ahead of `--sni-cert`s, and (`tls_alpn`) the TLS-ALPN-01 answers for them.
#[derive(Clone)]
pub struct AcmeNames {
    pub acme: Arc<dyn IssuedCerts>,
    pub names: Arc<[String]>,
    pub tls_alpn: bool,
}

/// The same listener's configuration for QUIC (HTTP/3): the same certificates, client
/// verification and suites, TLS 1.3 only (the only version QUIC carries) and ALPN `h3`.
pub fn quic_server_config(
    settings: &TlsSettings,
    tickets: &Arc<dyn ProducesTickets>,
    acme: Option<&AcmeNames>,
) -> Result<ServerConfig, rustls::Error> {
    // Validation handshakes come over TCP: QUIC serves the certificates, not the answers.
    let acme = acme.map(|a| AcmeNames {
        tls_alpn: false,
        ..a.clone()
    });
    build(
        settings,
        &[&rustls::version::TLS13],
        &[b"h3"],
        tickets,
        acme.as_ref(),
    )
}

fn build(
    settings: &TlsSettings,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
    tickets: &Arc<dyn ProducesTickets>,
    acme: Option<&AcmeNames>,
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
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match acme {
        Some(acme) => Arc::new(sni::WithAcme::new(resolver, acme.clone())),
        None => Arc::new(resolver),
    };
    let mut config = builder.with_cert_resolver(resolver);
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
