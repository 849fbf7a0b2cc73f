//! TLS termination: loading the server's certificate and key, and the rustls configuration.
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ConfigError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM chain and its PEM key (PKCS#8, PKCS#1 or SEC1) and checks that the key belongs
/// to the first certificate, so a mismatched pair fails at start, naming its file.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, ConfigError> {
    let cert_shown = cert.display().to_string();
    let key_shown = key.display().to_string();
    std::fs::metadata(cert)
        .map_err(|e| ConfigError::new("--cert", &cert_shown, format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::new(
                "--cert",
                &cert_shown,
                format!("not a PEM certificate chain: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(ConfigError::new(
            "--cert",
            &cert_shown,
            "contains no PEM CERTIFICATE block",
        ));
    }
    std::fs::metadata(key)
        .map_err(|e| ConfigError::new("--key", &key_shown, format!("cannot read: {e}")))?;
    // The error text of a failed key parse never includes key material, only what was missing.
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ConfigError::new(
            "--key",
            &key_shown,
            format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ConfigError::new(
            "--key",
            &key_shown,
            format!("does not match the certificate in --cert {cert_shown:?}"),
        ),
        other => ConfigError::new("--key", &key_shown, format!("unusable key: {other}")),
    })?;
    Ok(Arc::new(certified))
}

/// The rustls server configuration of an HTTPS listener: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, session tickets on.
pub fn server_config(default: Arc<CertifiedKey>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let resolver = DefaultCert(default);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Serves one certificate whatever the ClientHello asks for (SNI selection comes with the
/// listener's `--sni-cert`).
#[derive(Debug)]
struct DefaultCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for DefaultCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
