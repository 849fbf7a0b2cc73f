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
    fn cert(problem: impl ToString) -> Self {
        CertError {
            file: PairFile::Cert,
            problem: problem.to_string(),
        }
    }
    fn key(problem: impl ToString) -> Self {
        CertError {
            file: PairFile::Key,
            problem: problem.to_string(),
        }
    }
}

/// Why a file the configuration names is refused before it is read: see [`check_regular`] and
/// [`check_private`].
#[derive(Debug, thiserror::Error)]
pub enum FileCheckError {
    /// `stat` failed; the OS error (and its errno) is the source.
    #[error("cannot read: {source}")]
    Io {
        #[source]
        source: std::io::Error,
    },
    #[error("not a regular file")]
    NotRegular,
    #[error(
        "{len} bytes: larger than the {MAX_CONFIG_FILE_LEN} bytes a configuration file may have"
    )]
    TooLarge { len: u64 },
    /// A private key that users other than its owner may read; `mode` is its permission bits.
    #[error(
        "a private key readable by group or others (mode {mode:04o}): chmod 600 it (owned by the user edgelb runs as), or pass --allow-readable-keys"
    )]
    Readable { mode: u32 },
}

/// Refuses a private key file that users other than its owner may read: a key readable by a
/// group or by everyone has likely been copied around already.
pub fn check_private(path: &Path) -> Result<(), FileCheckError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| FileCheckError::Io { source })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(FileCheckError::Readable {
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Files the configuration names (certificates, keys, CA bundles, IP group files, the config
/// itself) are read whole: at most this big.
pub const MAX_CONFIG_FILE_LEN: u64 = 64 * 1024 * 1024;

/// Checks that `path` is a regular file of reasonable size before it is read whole: a typo
/// such as `/dev/zero` or a FIFO must be an error, not a hang or an exhausted memory.
pub fn check_regular(path: &Path) -> Result<(), FileCheckError> {
    let meta = std::fs::metadata(path).map_err(|source| FileCheckError::Io { source })?;
    if !meta.is_file() {
        return Err(FileCheckError::NotRegular);
    }
    if meta.len() > MAX_CONFIG_FILE_LEN {
        return Err(FileCheckError::TooLarge { len: meta.len() });
    }
    Ok(())
}

/// Why a PEM certificate file or CA bundle cannot be used: see [`load_chain`] and
/// [`load_ca_bundle`].
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error(transparent)]
    File(#[from] FileCheckError),
    #[error("not a PEM certificate file: {0}")]
    NotPem(PemProblem),
    #[error("contains no PEM CERTIFICATE block")]
    NoCertificate,
    #[error("not a usable CA certificate: {source}")]
    NotCa {
        #[source]
        source: rustls::Error,
    },
}

/// What is wrong with a PEM file, in words that never quote it: the PEM parser's own errors
/// carry the offending line, which for a key file whose line breaks were lost (`echo $KEY >
/// key.pem`) is the whole key, and these messages reach logs, `/status` and `systemctl
/// status`.
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("a PEM section has no END line (were its line breaks lost?)")]
    NoEnd,
    #[error("a BEGIN line is malformed (were the line breaks lost?)")]
    BadBegin,
    #[error("a PEM section is not valid base64")]
    Base64,
    #[error("no PEM block of the expected type")]
    Nothing,
    #[error("a PEM section is larger than 256 MB")]
    TooLarge,
    #[error("malformed PEM")]
    Other,
}

impl From<rustls_pki_types::pem::Error> for PemProblem {
    fn from(e: rustls_pki_types::pem::Error) -> Self {
        use rustls_pki_types::pem::Error as E;
        match e {
            E::Io(io) => PemProblem::Io(io),
            E::MissingSectionEnd { .. } => PemProblem::NoEnd,
            E::IllegalSectionStart { .. } => PemProblem::BadBegin,
            E::Base64Decode(_) => PemProblem::Base64,
            E::NoItemsFound => PemProblem::Nothing,
            E::SectionTooLarge => PemProblem::TooLarge,
            _ => PemProblem::Other,
        }
    }
}

/// Reads a PEM certificate chain.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    check_regular(path)?;
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PemFileError::NotPem(PemProblem::from(e)))?;
    if chain.is_empty() {
        return Err(PemFileError::NoCertificate);
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
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        CertError::key(format!(
            "no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {}",
            PemProblem::from(e)
        ))
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            CertError::key(format!("does not match the certificate {}", cert.display()))
        }
        // rustls checks the key against the certificate with webpki, which reads v3 only:
        // said of the certificate, not as an unusable key.
        rustls::Error::InvalidCertificate(e) if super::failure::is_x509_v1_refusal(&e) => {
            CertError::cert(
                "an X.509 v1 certificate (no extensions, so no subjectAltName either), which \
                 cannot be served: re-issue it as v3 with subjectAltName=DNS:NAME (openssl \
                 x509 -req -extfile)",
            )
        }
        other => CertError::key(format!("unusable key: {other}")),
    })?;
    Ok(Arc::new(certified))
}

/// Reads a PEM bundle of trust anchors (for client certificates, or backends' certificates).
pub fn load_ca_bundle(path: &Path) -> Result<Arc<RootCertStore>, PemFileError> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(path)? {
        roots
            .add(cert)
            .map_err(|source| PemFileError::NotCa { source })?;
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

/// A certificate's validity, not before and not after, in unix seconds.
pub fn validity(cert: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let v = parsed.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Whether a certificate is X.509 version 1 (no extensions): webpki, and so mutual TLS,
/// refuses such a client certificate, though nginx and HAProxy accept it.
pub fn is_x509_v1(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .is_ok_and(|(_, parsed)| parsed.version() == x509_parser::x509::X509Version::V1)
}

/// The certificates of a PEM file; none if it cannot be read (it was read once already).
pub fn pem_certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    load_chain(path).unwrap_or_default()
}

/// A certificate's subject as x509-parser prints it, e.g. `CN=client-1, O=Example`.
pub fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of its own in the temporary directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8], mode: u32) -> Self {
            use std::os::unix::fs::PermissionsExt;
            let path = std::env::temp_dir()
                .join(format!("edgelb-certs-test-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).expect("temporary directory is writable");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("own file's mode can be set");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A key whose line breaks were lost is one line that still ends in five dashes: the
    /// PEM parser's error would quote all of it.
    #[test]
    fn a_flattened_key_is_refused_without_quoting_it() {
        let key = rcgen::KeyPair::generate().expect("key");
        let flat = key.serialize_pem().replace('\n', " ");
        let secret = flat
            .split_whitespace()
            .find(|w| w.len() > 40)
            .expect("a base64 line")
            .to_string();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let cert_pem = rcgen::CertificateParams::new(vec!["a.test".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem();
        let cert = TempFile::new("flat-cert.pem", cert_pem.as_bytes(), 0o644);
        for (name, text) in [
            ("flat.key", flat.clone()),
            (
                "no-end.key",
                format!("-----BEGIN PRIVATE KEY-----\n{secret}\n"),
            ),
            (
                "begin-and-key.key",
                format!("-----BEGIN PRIVATE KEY----- {secret}\n"),
            ),
        ] {
            let file = TempFile::new(name, text.as_bytes(), 0o600);
            let e = load_certified_key(&cert.0, &file.0, &provider)
                .err()
                .unwrap_or_else(|| panic!("{name} was accepted"));
            let said = format!("{e} {e:?}");
            assert!(!said.contains(&secret[..20]), "{name}: {said}");
            let bytes: Vec<String> = secret.bytes().take(8).map(|b| b.to_string()).collect();
            assert!(!said.contains(&bytes.join(", ")), "{name}: {said}");
            // The same file given as a certificate.
            let e = load_chain(&file.0).err();
            let said = format!("{e:?}");
            assert!(
                !said.contains(&bytes.join(", ")),
                "{name} as a certificate: {said}"
            );
        }
    }

    #[test]
    fn refused_files_keep_their_messages_and_errno() {
        let missing = Path::new("/nonexistent/edgelb-certs-test");
        let e = check_regular(missing).expect_err("missing");
        assert!(matches!(e, FileCheckError::Io { .. }), "{e:?}");
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(e.to_string(), format!("cannot read: {io}"));
        let errno = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error);
        assert_eq!(errno, Some(libc::ENOENT));

        let e = check_regular(&std::env::temp_dir()).expect_err("a directory");
        assert_eq!(e.to_string(), "not a regular file");
        assert_eq!(
            FileCheckError::TooLarge {
                len: MAX_CONFIG_FILE_LEN + 1
            }
            .to_string(),
            "67108865 bytes: larger than the 67108864 bytes a configuration file may have"
        );

        let key = TempFile::new("key.pem", b"not a key", 0o644);
        let e = check_private(&key.0).expect_err("readable by others");
        assert_eq!(
            e.to_string(),
            "a private key readable by group or others (mode 0644): chmod 600 it (owned by the \
             user edgelb runs as), or pass --allow-readable-keys"
        );
        let key = TempFile::new("key-600.pem", b"not a key", 0o600);
        assert!(check_private(&key.0).is_ok());

        let empty = TempFile::new("empty.pem", b"", 0o644);
        let e = load_ca_bundle(&empty.0).expect_err("no certificate");
        assert_eq!(e.to_string(), "contains no PEM CERTIFICATE block");
        let e = load_chain(missing).expect_err("missing");
        assert_eq!(e.to_string(), format!("cannot read: {io}"));
    }
}
