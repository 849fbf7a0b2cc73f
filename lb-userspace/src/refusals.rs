//! One log line for each refused handshake, connection or request, with the reason in words
//! and the client: the counters say how many, these say why. Rate-limited for the whole
//! process, because refusals are what a flood or a scanner produces.
use std::borrow::Cow;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::{CertificateError, Error as TlsError};

/// Lines per second; the rest are counted and the count logged with the next line.
const PER_SECOND: u64 = 20;

/// What was refused.
#[derive(Clone, Copy, Debug)]
pub enum Refused {
    Handshake,
    Connection,
    Request,
}

impl Refused {
    fn noun(self) -> &'static str {
        match self {
            Refused::Handshake => "TLS handshake",
            Refused::Connection => "connection",
            Refused::Request => "request",
        }
    }
}

/// The second being counted (unix seconds), lines logged in it, and lines not logged since
/// the last one that was. One limiter for the process: a static, so that every worker and
/// protocol shares the budget without threading a handle through each of them.
struct Budget {
    second: AtomicU64,
    used: AtomicU64,
    skipped: AtomicU64,
}

static BUDGET: Budget = Budget {
    second: AtomicU64::new(0),
    used: AtomicU64::new(0),
    skipped: AtomicU64::new(0),
};

impl Budget {
    /// Whether a line may be logged now; if so, how many were skipped before it.
    fn take(&self, now: u64) -> Option<u64> {
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) >= PER_SECOND {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// Logs `what` of `client` on `listener` as refused for `reason`.
pub fn log(what: Refused, listener: &str, client: SocketAddr, reason: &dyn Display) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(skipped) = BUDGET.take(now) {
        if skipped > 0 {
            tracing::info!(
                target: "edgelb::refused",
                listener,
                %client,
                skipped,
                "{} refused: {reason} ({skipped} earlier refusals not logged: more than {PER_SECOND} a second)",
                what.noun()
            );
        } else {
            tracing::info!(target: "edgelb::refused", listener, %client, "{} refused: {reason}", what.noun());
        }
    }
}

/// Why a TLS handshake failed, in words; None for a client that went away or a network error
/// (nothing was refused).
pub fn handshake_reason(e: &std::io::Error) -> Option<Cow<'static, str>> {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())?;
    Some(match tls {
        TlsError::NoCertificatesPresented => {
            "no client certificate (mutual TLS: this listener requires one)".into()
        }
        TlsError::InvalidCertificate(c) => format!("client certificate: {}", certificate(c)).into(),
        TlsError::PeerIncompatible(why) => {
            format!("the client has nothing in common with the listener's TLS policy: {why:?}")
                .into()
        }
        TlsError::NoApplicationProtocol => {
            "no common ALPN protocol (the client offered none this listener serves)".into()
        }
        TlsError::AlertReceived(alert) => format!(
            "the client ended the handshake with alert {alert:?} (it refused the server's certificate or settings)"
        )
        .into(),
        other => format!("TLS: {other}").into(),
    })
}

fn certificate(e: &CertificateError) -> Cow<'static, str> {
    match e {
        CertificateError::UnknownIssuer => "unknown CA (not issued by a CA in --client-ca)".into(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet".into()
        }
        CertificateError::Revoked => "revoked".into(),
        CertificateError::BadSignature => "bad signature".into(),
        CertificateError::BadEncoding => "malformed".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not for client authentication (extended key usage)".into()
        }
        CertificateError::Other(other)
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::UnsupportedCertVersion)
            ) =>
        {
            "X.509 v1 is not supported, re-issue it as v3 (e.g. `openssl x509 -req ... -extfile` with basicConstraints=CA:FALSE)".into()
        }
        other => format!("{other:?}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn io(e: TlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_failures_read_as_reasons() {
        let said = |e| handshake_reason(&io(e)).map(String::from);
        assert_eq!(
            said(TlsError::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(webpki::Error::UnsupportedCertVersion))
            )))
            .as_deref()
            .and_then(|s| s.split(',').next()),
            Some("client certificate: X.509 v1 is not supported")
        );
        assert_eq!(
            said(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
            .as_deref(),
            Some("client certificate: unknown CA (not issued by a CA in --client-ca)")
        );
        assert_eq!(
            said(TlsError::InvalidCertificate(CertificateError::Expired)).as_deref(),
            Some("client certificate: expired")
        );
        // A client that hung up refused nothing.
        assert!(
            handshake_reason(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)).is_none()
        );
    }

    #[test]
    fn the_budget_allows_so_many_lines_a_second_then_counts_the_rest() {
        let b = Budget {
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        };
        let logged = (0..PER_SECOND + 5)
            .filter(|_| b.take(100).is_some())
            .count();
        assert_eq!(logged as u64, PER_SECOND);
        assert_eq!(
            b.take(101),
            Some(5),
            "the next second's first line says how many were skipped"
        );
        assert_eq!(b.take(101), Some(0));
    }
}
