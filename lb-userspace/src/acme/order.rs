//! One order (RFC 8555 7.4): new order for the names, each pending authorization answered by
//! the configured challenge, the order finalized with a CSR for a fresh key, the chain fetched.
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::challenge;
use super::store::Store;
use crate::config::values::AcmeChallenge;
use crate::dataplane::error_chain;

/// How long the CA may take to validate and to issue: a CA that takes longer has failed this
/// attempt, which is retried later.
const VALIDATION: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

/// A certificate chain and its key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Orders a certificate for `names`, answering with `kind`.
pub async fn order(
    account: &Account,
    names: &[String],
    store: &Store,
    kind: AcmeChallenge,
) -> Result<Issued, String> {
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {}", error_chain(&e)))?;
    // Removed however the order ends, a timeout's cancellation included.
    let mut answers = Answers(Vec::new());
    async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {}", error_chain(&e)))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let (ty, dir) = match kind {
                AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, challenge::TLS_ALPN),
                AcmeChallenge::Http01 => (ChallengeType::Http01, challenge::HTTP),
            };
            let mut ch = authz
                .challenge(ty)
                .ok_or_else(|| format!("the CA offers no {} challenge", kind.name()))?;
            let name = ch.identifier().to_string();
            let key = match kind {
                AcmeChallenge::TlsAlpn01 => name.clone(),
                AcmeChallenge::Http01 => ch.token.clone(),
            };
            let answer = ch.key_authorization();
            answers.0.push(
                store
                    .put_challenge(dir, &key, answer.as_str())
                    .map_err(|e| format!("writing the {} answer for {name}: {e}", kind.name()))?,
            );
            ch.set_ready()
                .await
                .map_err(|e| format!("{name}: {}: {e}", kind.name()))?;
        }
        let status = order
            .poll_ready(&VALIDATION)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map_or_else(|| format!("order is {status:?}"), |p| p.to_string());
            return Err(format!("validation failed: {why}"));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
        let csr = csr(names, &key).map_err(|e| format!("CSR: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&VALIDATION)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
    .await
}

/// The certificate request for `names`: the names as subject alternative names and an empty
/// subject. rcgen's default subject is `CN=rcgen self signed cert`, which Let's Encrypt reads
/// as one more name to validate and refuses (a CSR must name exactly the order's names).
fn csr(
    names: &[String],
    key: &rcgen::KeyPair,
) -> Result<rcgen::CertificateSigningRequest, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(key)
}

/// The answer files an order wrote, removed when it ends.
struct Answers(Vec<std::path::PathBuf>);

impl Drop for Answers {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

    #[test]
    fn the_request_names_exactly_the_orders_names() {
        let key = rcgen::KeyPair::generate().expect("key");
        let names = vec!["shop.test".to_string(), "www.shop.test".to_string()];
        let der = super::csr(&names, &key).expect("CSR");
        let (_, req) = X509CertificationRequest::from_der(der.der()).expect("a CSR");
        let info = &req.certification_request_info;
        assert_eq!(
            info.subject.iter_attributes().count(),
            0,
            "{}",
            info.subject
        );
        let sans: Vec<String> = req
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| &san.general_names)
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(sans, names);
    }
}
