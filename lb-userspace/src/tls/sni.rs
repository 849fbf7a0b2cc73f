//! Picking the server certificate from the ClientHello's server name: exact names first, then
//! a `*.parent` wildcard one label up, else the default certificate. Both lookups are hash map
//! reads, so the cost does not grow with the number of certificates.
use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a `--sni-cert` domain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected a domain name such as www.example.com or *.example.com \
     (labels of letters, digits and hyphens, at least two labels)"
)]
pub struct SniNameError;

/// A validated `--sni-cert` domain: lowercase, optionally `*.` followed by a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SniName(String);

impl SniName {
    /// Accepts `example.com` or `*.example.com`: labels of letters, digits and hyphens (no
    /// leading or trailing hyphen, 1-63 characters), at least two labels, 253 characters at most.
    pub fn parse(value: &str) -> Result<Self, SniNameError> {
        let lower = value.to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        let labels: Vec<&str> = name.split('.').collect();
        if lower.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| is_dns_label(l)) {
            return Err(SniNameError);
        }
        Ok(SniName(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A DNS label: 1-63 letters, digits and hyphens, no hyphen first or last.
pub fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent: `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// `configured` are the `--sni-cert` entries, which win over names taken from the
    /// certificates' own SANs (`san_names`, added only where nothing was configured).
    pub fn new(
        default: Option<Arc<CertifiedKey>>,
        configured: &[(SniName, Arc<CertifiedKey>)],
    ) -> Self {
        let mut resolver = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        };
        for (name, cert) in configured {
            resolver.insert(name.as_str(), cert, true);
        }
        for (_, cert) in configured {
            for san in cert
                .cert
                .first()
                .map(super::certs::dns_names)
                .unwrap_or_default()
            {
                if SniName::parse(&san).is_ok() {
                    resolver.insert(&san, cert, false);
                }
            }
        }
        resolver
    }

    fn insert(&mut self, name: &str, cert: &Arc<CertifiedKey>, replace: bool) {
        let (map, key) = match name.strip_prefix("*.") {
            Some(parent) => (&mut self.wildcard, parent),
            None => (&mut self.exact, name),
        };
        if replace || !map.contains_key(key) {
            map.insert(key.to_string(), cert.clone());
        }
    }

    /// The certificate for `server_name`, or the default.
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        found.or(self.default.as_ref()).cloned()
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_lowercased() {
        assert_eq!(
            SniName::parse("WWW.Example.com").map(|n| n.0),
            Ok("www.example.com".into())
        );
        assert!(SniName::parse("*.example.com").is_ok());
        for bad in [
            "localhost",
            "*.com",
            "a..b",
            "-a.com",
            "a-.com",
            "*.*.a.com",
            "a b.com",
            "",
        ] {
            assert_eq!(SniName::parse(bad), Err(SniNameError), "{bad}");
        }
        assert_eq!(
            SniNameError.to_string(),
            "expected a domain name such as www.example.com or *.example.com (labels of \
             letters, digits and hyphens, at least two labels)"
        );
    }
}

/// A listener's resolver with its ACME certificates in front: for its `--acme-domain` names,
/// the certificate the ACME task holds (when it holds one), and the CA's TLS-ALPN-01
/// validation handshakes answered with the challenge certificate (or refused: nothing else
/// may answer them).
#[derive(Debug)]
pub struct WithAcme {
    inner: SniResolver,
    acme: super::AcmeNames,
}

impl std::fmt::Debug for super::AcmeNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeNames")
            .field("names", &self.names)
            .field("tls_alpn", &self.tls_alpn)
            .finish()
    }
}

impl WithAcme {
    pub fn new(inner: SniResolver, acme: super::AcmeNames) -> Self {
        WithAcme { inner, acme }
    }
}

impl ResolvesServerCert for WithAcme {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A validation offers `acme-tls/1` alone (RFC 8737 3); a hello offering it among
        // others would be served HTTP on whatever the server prefers.
        let validation = hello.alpn().is_some_and(|mut protocols| {
            protocols.next() == Some(super::ACME_TLS_ALPN) && protocols.next().is_none()
        });
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if self.acme.names.contains(&name) {
                if validation {
                    return self
                        .acme
                        .tls_alpn
                        .then(|| self.acme.acme.tls_alpn_challenge(&name))
                        .flatten();
                }
                if let Some(cert) = self.acme.acme.certificate(&name) {
                    return Some(cert);
                }
            }
        }
        if validation {
            return None;
        }
        self.inner.resolve(hello)
    }
}
