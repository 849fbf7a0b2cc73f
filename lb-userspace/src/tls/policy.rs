//! TLS security policies: which protocol versions and cipher suites a listener offers.
//!
//! | policy           | versions      | TLS 1.3 suites                    | TLS 1.2 suites (ECDHE, ECDSA and RSA)  |
//! |------------------|---------------|-----------------------------------|----------------------------------------|
//! | `tls-1-2`        | 1.3, 1.2      | AES-128-GCM, AES-256-GCM, CHACHA20 | AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305 |
//! | `tls-1-2-strict` | 1.3, 1.2      | AES-128-GCM, AES-256-GCM           | AES-128-GCM, AES-256-GCM               |
//! | `tls-1-3`        | 1.3           | AES-128-GCM, AES-256-GCM, CHACHA20 | none                                   |
//!
//! Every suite is an AEAD with forward secrecy (rustls implements no other). TLS 1.0 and 1.1
//! are not offered at all: RFC 8996 deprecates them.
use std::fmt;
use std::sync::Arc;

use rustls::SupportedCipherSuite;
use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    Tls12,
    Tls12Strict,
    Tls13,
}

pub const POLICIES: &str = "tls-1-2, tls-1-2-strict, tls-1-3";

/// Why a security policy name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("TLS 1.0 and 1.1 are deprecated by RFC 8996 and not offered; choose one of {POLICIES}")]
    Deprecated,
    #[error("unknown security policy; choose one of {POLICIES}")]
    Unknown,
}

impl TlsPolicy {
    /// Parses a policy name; the error says what is allowed, and why TLS 1.0/1.1 are not.
    pub fn parse(value: &str) -> Result<Self, PolicyError> {
        match value.to_ascii_lowercase().as_str() {
            "tls-1-2" => Ok(TlsPolicy::Tls12),
            "tls-1-2-strict" => Ok(TlsPolicy::Tls12Strict),
            "tls-1-3" => Ok(TlsPolicy::Tls13),
            v if v.starts_with("tls-1-0") || v.starts_with("tls-1-1") => {
                Err(PolicyError::Deprecated)
            }
            _ => Err(PolicyError::Unknown),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TlsPolicy::Tls12 => "tls-1-2",
            TlsPolicy::Tls12Strict => "tls-1-2-strict",
            TlsPolicy::Tls13 => "tls-1-3",
        }
    }

    pub fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS12_UP: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsPolicy::Tls12 | TlsPolicy::Tls12Strict => &TLS12_UP,
            TlsPolicy::Tls13 => &TLS13_ONLY,
        }
    }

    pub fn cipher_suites(self) -> Vec<SupportedCipherSuite> {
        let tls13_gcm = [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384];
        let tls12_gcm = [
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ];
        let tls12_chacha = [
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ];
        let mut suites = tls13_gcm.to_vec();
        match self {
            TlsPolicy::Tls12 => {
                suites.push(cs::TLS13_CHACHA20_POLY1305_SHA256);
                suites.extend(tls12_gcm);
                suites.extend(tls12_chacha);
            }
            TlsPolicy::Tls12Strict => suites.extend(tls12_gcm),
            TlsPolicy::Tls13 => suites.push(cs::TLS13_CHACHA20_POLY1305_SHA256),
        }
        suites
    }

    /// The crypto provider restricted to this policy's suites.
    pub fn provider(self) -> Arc<CryptoProvider> {
        Arc::new(CryptoProvider {
            cipher_suites: self.cipher_suites(),
            ..default_provider()
        })
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_versions_are_refused_citing_rfc_8996() {
        for old in ["tls-1-0", "TLS-1-1", "tls-1-0-inherit"] {
            let e = TlsPolicy::parse(old).expect_err(old);
            assert_eq!(e, PolicyError::Deprecated);
            assert!(e.to_string().contains("RFC 8996"), "{e}");
        }
        assert_eq!(
            TlsPolicy::parse("tls-9").expect_err("unknown").to_string(),
            format!("unknown security policy; choose one of {POLICIES}")
        );
        assert_eq!(TlsPolicy::parse("tls-1-3"), Ok(TlsPolicy::Tls13));
    }

    #[test]
    fn strict_drops_chacha_and_1_3_drops_1_2_suites() {
        let strict = TlsPolicy::Tls12Strict.cipher_suites();
        assert!(
            strict
                .iter()
                .all(|s| !format!("{:?}", s.suite()).contains("CHACHA"))
        );
        let only13 = TlsPolicy::Tls13.cipher_suites();
        assert!(
            only13
                .iter()
                .all(|s| s.version() == &rustls::version::TLS13)
        );
        assert_eq!(TlsPolicy::Tls12.cipher_suites().len(), 9);
    }
}
