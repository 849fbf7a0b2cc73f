//! Connections to backends: pooled HTTP/1.1, in clear or over TLS (verified against
//! `--backend-ca`, or not at all with `--backend-insecure`).
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::body::BoxError;
use super::h1;
use crate::config::{BackendProtocol, BackendVerify, GroupConfig};

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

/// The TLS client configuration for backends (and their health checks), without ALPN (each
/// user sets its own).
pub(crate) fn client_tls(verify: &BackendVerify) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match verify {
        BackendVerify::Ca(_, roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        BackendVerify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(accept_any_certificate(provider))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// `--backend-insecure`: any certificate is accepted, but handshake signatures are still
/// checked, so the connection is at least encrypted to whoever holds the presented key.
pub fn accept_any_certificate(provider: Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(AcceptAnyCert(provider))
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
