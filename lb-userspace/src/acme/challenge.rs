//! The answers to pending validations, kept as files in the state directory: the node that
//! orders writes them, every node sharing the directory reads them when the CA asks.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

/// The kinds of answers, each a directory under `challenges/`.
#[cfg_attr(not(feature = "acme"), allow(dead_code))]
pub const TLS_ALPN: &str = "tls-alpn-01";
pub const HTTP: &str = "http-01";

/// Where the answer for `key` (a name, or an HTTP-01 token) is written. None for a key that
/// could name another path.
pub fn path(state_dir: &Path, kind: &str, key: &str) -> Option<PathBuf> {
    let safe = !key.is_empty()
        && key.len() <= 255
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !key.starts_with('.');
    safe.then(|| state_dir.join("challenges").join(kind).join(key))
}

fn read(state_dir: &Path, kind: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path(state_dir, kind, key)?).ok()?;
    Some(text.trim().to_string())
}

/// The HTTP-01 answer for `token`.
pub fn http_answer(state_dir: &Path, token: &str) -> Option<String> {
    read(state_dir, HTTP, token)
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, for `name` alone, carrying the
/// SHA-256 of the key authorization in the acmeIdentifier extension (RFC 8737 3). Made on
/// each validation handshake, which only the CA makes, a few times per order.
#[cfg(feature = "acme")]
pub fn tls_alpn_certificate(state_dir: &Path, name: &str) -> Option<Arc<CertifiedKey>> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let key_authorization = read(state_dir, TLS_ALPN, name)?;
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).ok()?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate().ok()?;
    let cert = params.self_signed(&key).ok()?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its check parses the certificate as a peer's would, and
    // refuses the critical acmeIdentifier extension that is the whole point here.
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(private)
        .ok()?;
    let certified = CertifiedKey::new(vec![CertificateDer::from(cert.der().to_vec())], signer);
    Some(Arc::new(certified))
}

/// Without the `acme` feature nothing is ordered, so nothing is pending.
#[cfg(not(feature = "acme"))]
pub fn tls_alpn_certificate(_state_dir: &Path, _name: &str) -> Option<Arc<CertifiedKey>> {
    None
}

#[cfg(all(test, feature = "acme"))]
mod tests {
    use super::*;

    #[test]
    fn a_tls_alpn_answer_is_a_certificate_for_the_name_carrying_the_digest() {
        let dir =
            std::env::temp_dir().join(format!("edgelb-acme-challenge-{}", std::process::id()));
        let file = path(&dir, TLS_ALPN, "shop.example.com").expect("a plain name is a path");
        std::fs::create_dir_all(file.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&file, "token.thumbprint\n").expect("write");
        let cert = tls_alpn_certificate(&dir, "shop.example.com").expect("a certificate");
        let der = cert.cert.first().expect("one certificate");
        assert_eq!(crate::tls::certs::dns_names(der), vec!["shop.example.com"]);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"token.thumbprint");
        // The acmeIdentifier extension holds the digest as an OCTET STRING.
        let raw = der.as_ref();
        assert!(
            raw.windows(32).any(|w| w == digest.as_ref()),
            "digest missing"
        );
        assert!(tls_alpn_certificate(&dir, "other.example.com").is_none());
        assert!(path(&dir, TLS_ALPN, "../escape").is_none());
        assert!(path(&dir, HTTP, ".hidden").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
