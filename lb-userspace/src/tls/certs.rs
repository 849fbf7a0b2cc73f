//! Reading PEM certificates, keys and CA bundles, and the names a certificate is valid for.
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Which file of a certificate/key pair a problem is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairFile {
    Cert,
    Key,
}

/// A certificate or key that cannot be used. Never carries key material: only paths and what
/// was missing or wrong.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub struct CertError {
    pub file: PairFile,
    pub problem: String,
}

impl CertError {
    fn cert(problem: impl Into<String>) -> Self {
        CertError {
            file: PairFile::Cert,
            problem: problem.into(),
        }
    }
    fn key(problem: impl Into<String>) -> Self {
        CertError {
            file: PairFile::Key,
            problem: problem.into(),
        }
    }
}

/// Refuses a private key file that users other than its owner may read: a key readable by a
/// group or by everyone has likely been copied around already.
pub fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "a private key readable by group or others (mode {:04o}): chmod 600 it (owned by the user edgelb runs as), or pass --allow-readable-keys",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Files the configuration names (certificates, keys, CA bundles, IP group files, the config
/// itself) are read whole: at most this big.
pub const MAX_CONFIG_FILE_LEN: u64 = 64 * 1024 * 1024;

/// Checks that `path` is a regular file of reasonable size before it is read whole: a typo
/// such as `/dev/zero` or a FIFO must be an error, not a hang or an exhausted memory.
pub fn check_regular(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > MAX_CONFIG_FILE_LEN {
        return Err(format!(
            "{} bytes: larger than the {MAX_CONFIG_FILE_LEN} bytes a configuration file may have",
            meta.len()
        ));
    }
    Ok(())
}

/// Reads a PEM certificate chain.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    check_regular(path)?;
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if chain.is_empty() {
        return Err("contains no PEM CERTIFICATE block".into());
    }
    Ok(chain)
}

/// Reads a PEM chain and its PEM key (PKCS#8, PKCS#1 or SEC1) and checks that the key belongs
/// to the first certificate, so that a mismatched pair fails at start.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = load_chain(cert).map_err(CertError::cert)?;
    check_regular(key).map_err(CertError::key)?;
    // The parse error names what was missing, never the key's bytes.
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        CertError::key(format!(
            "no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
        ))
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            CertError::key(format!("does not match the certificate {}", cert.display()))
        }
        other => CertError::key(format!("unusable key: {other}")),
    })?;
    Ok(Arc::new(certified))
}

/// Reads a PEM bundle of trust anchors (for client certificates, or backends' certificates).
pub fn load_ca_bundle(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(Arc::new(roots))
}

/// The DNS names in a certificate's subject alternative names, lowercased.
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// A certificate's subject as x509-parser prints it, e.g. `CN=client-1, O=Example`.
pub fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}
