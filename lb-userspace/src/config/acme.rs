//! ACME settings: which CA certificates are ordered from, where they are kept, and which
//! names each https listener wants certificates for.
use std::path::PathBuf;

use super::error::ConfigError;
use super::spec::{ListenerSpec, NodeSpec};
use super::values::AcmeChallenge;
use super::{FrontendProtocol, ListenerConfig};

/// The node's ACME client settings, present when some listener names `--acme-domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeConfig {
    pub directory: String,
    pub email: Option<String>,
    pub state_dir: PathBuf,
    /// Trust anchors for the directory's HTTPS; None: the public roots.
    pub ca: Option<PathBuf>,
    pub challenge: AcmeChallenge,
}

/// A listener's `--acme-domain` names, checked: lower case DNS names, no wildcards (neither
/// challenge edgelb answers can prove one), no addresses, none twice.
pub fn domains(
    args: &ListenerSpec,
    protocol: FrontendProtocol,
) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::with_capacity(args.acme_domain.len());
    for given in &args.acme_domain {
        let refuse = |why: &str| Err(ConfigError::new("--acme-domain", given, why));
        if protocol != FrontendProtocol::Https {
            return refuse(&format!(
                "certificates are for https listeners (this one is {})",
                protocol.scheme()
            ));
        }
        let name = given.trim_end_matches('.').to_ascii_lowercase();
        if name.starts_with("*.") {
            return refuse(
                "a wildcard needs the dns-01 challenge, which edgelb does not answer; give each name, or a --sni-cert",
            );
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return refuse("an address, not a DNS name");
        }
        if crate::tls::SniName::parse(&name).is_err() {
            return refuse("not a DNS name (e.g. www.example.com)");
        }
        if out.contains(&name) {
            return refuse("is given twice");
        }
        out.push(name);
    }
    Ok(out)
}

/// The ACME client settings, when any listener wants certificates.
pub fn acme(
    node: &NodeSpec,
    listeners: &[ListenerConfig],
) -> Result<Option<AcmeConfig>, ConfigError> {
    let Some(first) = listeners.iter().find(|l| !l.acme_domains.is_empty()) else {
        return Ok(None);
    };
    let Some(directory) = node.acme_directory.clone() else {
        return Err(ConfigError::new(
            "--acme-domain",
            &first.acme_domains[0],
            "needs --acme-directory URL: the ACME CA to order from (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory)",
        ));
    };
    let url = directory.parse::<hyper::Uri>().ok();
    if url.as_ref().and_then(|u| u.scheme_str()) != Some("https")
        || url.as_ref().and_then(|u| u.host()).is_none()
    {
        return Err(ConfigError::new(
            "--acme-directory",
            &directory,
            "expected an https:// URL (RFC 8555 asks for HTTPS)",
        ));
    }
    if let Some(email) = &node.acme_email {
        let (user, host) = email.split_once('@').unwrap_or(("", ""));
        if user.is_empty() || !host.contains('.') || email.contains([' ', ',', ':']) {
            return Err(ConfigError::new(
                "--acme-email",
                email,
                "expected an e-mail address, e.g. ops@example.com",
            ));
        }
    }
    if node.acme_challenge == AcmeChallenge::Http01
        && !listeners
            .iter()
            .any(|l| l.protocol == FrontendProtocol::Http)
    {
        return Err(ConfigError::new(
            "--acme-challenge",
            "http-01",
            "needs an http listener to answer on (the CA asks on port 80): add one, or use tls-alpn-01",
        ));
    }
    if let Some(ca) = &node.acme_ca {
        crate::tls::certs::load_ca_bundle(ca)
            .map_err(|e| ConfigError::new("--acme-ca", ca.display().to_string(), e.to_string()))?;
    }
    Ok(Some(AcmeConfig {
        directory,
        email: node.acme_email.clone(),
        state_dir: node.acme_state_dir.clone(),
        ca: node.acme_ca.clone(),
        challenge: node.acme_challenge,
    }))
}
