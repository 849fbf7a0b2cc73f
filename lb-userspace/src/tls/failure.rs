//! Why a TLS handshake over TCP failed, read once from the error: a short stable label for
//! the handshake counter, and the reason in words for the refusal log. One reading, so that
//! the counter and the log line cannot disagree about what happened.
use std::borrow::Cow;

use rustls::{CertificateError, Error as TlsError};

/// A failed handshake, as counted and as logged.
#[derive(Debug)]
pub struct Failure {
    /// `edgelb_tls_handshakes_total{result=...}`.
    pub label: &'static str,
    /// The refusal, in words; None for a client that went away or a network error (nothing
    /// was refused, so nothing is logged as a refusal).
    pub reason: Option<Cow<'static, str>>,
}

/// Reads the error `tokio_rustls`'s accept ended with.
pub fn classify(e: &std::io::Error) -> Failure {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    else {
        let label = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
        return Failure {
            label,
            reason: None,
        };
    };
    let (label, reason): (_, Cow<'static, str>) = match tls {
        TlsError::NoCertificatesPresented => (
            "no_client_certificate",
            "no client certificate (mutual TLS: this listener requires one)".into(),
        ),
        TlsError::InvalidCertificate(c) => (
            "bad_certificate",
            format!("client certificate: {}", certificate(c)).into(),
        ),
        TlsError::PeerIncompatible(why) => (
            "incompatible",
            format!("the client has nothing in common with the listener's TLS policy: {why:?}")
                .into(),
        ),
        TlsError::NoApplicationProtocol => (
            "no_application_protocol",
            "no common ALPN protocol (the client offered none this listener serves)".into(),
        ),
        TlsError::AlertReceived(alert) => (
            "alert_received",
            format!(
                "the client ended the handshake with alert {alert:?} (it refused the server's certificate or settings)"
            )
            .into(),
        ),
        TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. }
        | TlsError::InvalidMessage(_) => ("protocol_error", format!("TLS: {tls}").into()),
        other => ("other", format!("TLS: {other}").into()),
    };
    Failure {
        label,
        reason: Some(reason),
    }
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
        e if is_x509_v1_refusal(e) => {
            "X.509 v1 is not supported, re-issue it as v3 (e.g. `openssl x509 -req ... -extfile` with basicConstraints=CA:FALSE)".into()
        }
        other => format!("{other:?}").into(),
    }
}

/// Whether webpki refused a certificate for being X.509 v1 (rustls passes its error on).
pub fn is_x509_v1_refusal(e: &CertificateError) -> bool {
    matches!(e, CertificateError::Other(other) if matches!(
        other.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::UnsupportedCertVersion)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn io(e: TlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_failures_read_as_a_label_and_a_reason() {
        let said = |e| {
            let f = classify(&io(e));
            (f.label, f.reason.map(String::from))
        };
        let (label, reason) = said(TlsError::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(webpki::Error::UnsupportedCertVersion)),
        )));
        assert_eq!(label, "bad_certificate");
        assert_eq!(
            reason.as_deref().and_then(|s| s.split(',').next()),
            Some("client certificate: X.509 v1 is not supported")
        );
        assert_eq!(
            said(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer
            )),
            (
                "bad_certificate",
                Some("client certificate: unknown CA (not issued by a CA in --client-ca)".into())
            )
        );
        assert_eq!(
            said(TlsError::InvalidCertificate(CertificateError::Expired)),
            (
                "bad_certificate",
                Some("client certificate: expired".into())
            )
        );
        assert_eq!(
            said(TlsError::NoCertificatesPresented).0,
            "no_client_certificate"
        );
        assert_eq!(
            said(TlsError::NoApplicationProtocol).0,
            "no_application_protocol"
        );
        assert_eq!(
            said(TlsError::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))
            .0,
            "protocol_error"
        );
        // A client that hung up refused nothing.
        let eof = classify(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert_eq!((eof.label, eof.reason), ("eof", None));
        let reset = classify(&std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!((reset.label, reset.reason), ("reset", None));
    }
}
