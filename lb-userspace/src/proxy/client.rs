//! Connections to backends: pooled HTTP/1.1, in clear or over TLS (verified against
//! `--backend-ca`, or not at all with `--backend-insecure`).
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::body::BoxError;
use crate::config::{BackendProtocol, BackendVerify, GroupConfig};

pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// How long an idle pooled backend connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response head (header fields) taken from a backend; a larger one is a failed
/// request (502). Also hyper's read buffer limit for backend connections. hyper's other
/// limit: 100 header fields.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

pub enum BackendClient {
    Http(Client<HttpConnector, UpstreamBody>),
    Https(Client<HttpsConnector<HttpConnector>, UpstreamBody>),
}

impl BackendClient {
    pub fn new(group: &GroupConfig) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE)
            .http1_max_buf_size(MAX_RESPONSE_HEAD);
        match &group.protocol {
            BackendProtocol::Http => Ok(BackendClient::Http(builder.build(http))),
            BackendProtocol::Https(verify) => {
                http.enforce_http(false);
                let tls = client_tls(verify)?;
                let https = HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only();
                let https = match &group.hc_domain {
                    Some(domain) => {
                        let name = ServerName::try_from(domain.clone())
                            .map_err(|e| rustls::Error::General(format!("--hc-domain: {e}")))?;
                        https.with_server_name_resolver(FixedServerNameResolver::new(name))
                    }
                    None => https,
                };
                Ok(BackendClient::Https(
                    builder.build(https.enable_http1().wrap_connector(http)),
                ))
            }
        }
    }

    pub async fn request(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            BackendClient::Http(c) => c.request(req).await,
            BackendClient::Https(c) => c.request(req).await,
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            BackendClient::Http(_) => "http",
            BackendClient::Https(_) => "https",
        }
    }
}

/// The TLS client configuration for backends (and their health checks), without ALPN:
/// hyper-rustls sets its own and refuses a preset one.
pub(crate) fn client_tls(verify: &BackendVerify) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    // hyper-rustls sets ALPN itself (http/1.1, from enable_http1) and refuses a preset one.
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
