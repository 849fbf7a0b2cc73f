//! What a request must look like before it is forwarded, on top of what hyper's HTTP/1.1
//! parser (httparse) and the h2 crate already refuse: anything a second parser behind edgelb
//! could frame or route differently is refused with 400 (414 for a long target, 417 for an
//! unknown expectation) and the connection closed.
//!
//! hyper already refuses: invalid field names and values (NUL, CR, other controls), obs-fold,
//! whitespace before the colon, a `Transfer-Encoding` whose last coding is not `chunked`,
//! `Transfer-Encoding` in HTTP/1.0, differing or malformed `Content-Length`, chunk sizes that
//! overflow, chunk lines not ending in CRLF. It answers `Transfer-Encoding` together with
//! `Content-Length` by ignoring the length and closing the connection after the response;
//! repeated identical lengths become one. The body is always re-framed on the way out.
use hyper::header::{CONTENT_LENGTH, EXPECT, HOST, HeaderValue, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::http::uri::Authority;
use hyper::{Method, StatusCode, Version};

/// Longest request target (path and query) forwarded; longer ones get 414.
pub const MAX_TARGET: usize = 8 * 1024;

/// Checks and normalises a request's head in place: `Host` becomes the authority of an
/// absolute-form target (or HTTP/2 `:authority`), a met `Expect: 100-continue` is dropped.
/// `Err` is the status to answer with (the connection is then closed) and why.
/// A request refused before it is routed: the status it is answered with, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal(pub StatusCode, pub &'static str);

pub fn check_request(parts: &mut Parts) -> Result<(), Refusal> {
    if parts.method == Method::CONNECT {
        // Not a forward proxy: a tunnel would reach wherever the client names.
        return Err(Refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT (this is not a forward proxy)",
        ));
    }
    let target_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_TARGET {
        return Err(Refusal(StatusCode::URI_TOO_LONG, "request target too long"));
    }
    // Origin form only (RFC 9112 3.2.1, and `:path` in RFC 9113 8.3.1 and RFC 9114 4.3.1): h2
    // and h3 pass on any `:path` the http crate parses, which includes `?x` (no path: rules
    // would see `/` and the backend `GET ?x`) and `*` for any method. This is the target as
    // it is forwarded. An HTTP/1.1 absolute-form target with an empty path (`http://a?x`)
    // means `/?x` (RFC 9112 3.2.2).
    let absolute_empty = parts.version <= Version::HTTP_11
        && parts.uri.scheme().is_some()
        && parts
            .uri
            .path_and_query()
            .is_some_and(|p| p.as_str().starts_with('?'));
    if absolute_empty {
        let mut uri = parts.uri.clone().into_parts();
        // Its Display puts the `/` in front; `as_str`, which is forwarded, does not.
        uri.path_and_query = uri.path_and_query.and_then(|p| p.to_string().parse().ok());
        if let Ok(uri) = hyper::Uri::from_parts(uri) {
            parts.uri = uri;
        }
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if !(target.starts_with('/') || (target == "*" && parts.method == Method::OPTIONS)) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "a request target that is not a path (origin form)",
        ));
    }
    let headers = &mut parts.headers;
    // One coding, `chunked`, once: `gzip, chunked` would reach the backend still gzipped
    // but without the header saying so (it is hop-by-hop), and `chunked, chunked` is invalid.
    let mut codings = 0;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| Refusal(StatusCode::BAD_REQUEST, "Transfer-Encoding is not text"))?;
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "a Transfer-Encoding other than chunked",
                ));
            }
            codings += 1;
        }
    }
    if codings > 1 || (headers.contains_key(TRANSFER_ENCODING) && codings == 0) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "Transfer-Encoding chunked twice, or empty",
        ));
    }
    if headers.get_all(CONTENT_LENGTH).iter().count() > 1 {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "two Content-Length headers",
        ));
    }
    // `Transfer_Encoding` and `Content_Length` are other fields to us, but servers that map
    // `_` to `-` (CGI-style environments) would frame the body by them.
    for name in headers.keys() {
        let name = name.as_str();
        if name.contains('_') {
            let dashed = name.replace('_', "-");
            if dashed == "transfer-encoding" || dashed == "content-length" {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "a Transfer_Encoding or Content_Length header (with _)",
                ));
            }
        }
    }
    match headers.get_all(EXPECT).iter().next() {
        None => {}
        // hyper has answered `100 Continue` when the body was first read; the backend gets
        // the body at once and has nothing to expect.
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"100-continue") => {
            if headers.get_all(EXPECT).iter().count() > 1 {
                return Err(Refusal(StatusCode::EXPECTATION_FAILED, "Expect twice"));
            }
            headers.remove(EXPECT);
        }
        Some(_) => {
            return Err(Refusal(
                StatusCode::EXPECTATION_FAILED,
                "an Expect other than 100-continue",
            ));
        }
    }
    let hosts = headers.get_all(HOST).iter().count();
    if hosts > 1 {
        return Err(Refusal(StatusCode::BAD_REQUEST, "two Host headers"));
    }
    if let Some(authority) = parts.uri.authority() {
        // Absolute form (or HTTP/2's :authority): the target's authority wins over Host
        // (RFC 9112 3.2.2), and the backend sees the one edgelb routed by.
        if authority.as_str().contains('@') {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "user information (@) in the target",
            ));
        }
        // A Host naming someone else is refused rather than overridden (as HAProxy does):
        // whatever read the Host before us would disagree with what we route by.
        if let Some(host) = headers.get(HOST)
            && !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "Host differs from the target's authority",
            ));
        }
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "the target's authority is not a valid Host",
            )
        })?;
        headers.insert(HOST, value);
    } else if let Some(host) = headers.get(HOST) {
        let valid = host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty());
        if !valid {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "Host is not a valid host[:port]",
            ));
        }
    } else if parts.version == Version::HTTP_11 {
        // RFC 9112 3.2: an HTTP/1.1 request without Host is refused.
        return Err(Refusal(StatusCode::BAD_REQUEST, "HTTP/1.1 without Host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid request").into_parts().0
    }

    #[test]
    fn framing_must_be_unambiguous() {
        let ok = |h: &[(&str, &str)]| check_request(&mut parts("/", h)).map_err(|r| r.0);
        assert_eq!(ok(&[("host", "a")]), Ok(()));
        assert_eq!(
            ok(&[("host", "a"), ("transfer-encoding", "chunked")]),
            Ok(())
        );
        for te in ["gzip, chunked", "chunked, chunked", "identity", ""] {
            assert_eq!(
                ok(&[("host", "a"), ("transfer-encoding", te)]),
                Err(StatusCode::BAD_REQUEST),
                "{te}"
            );
        }
        let two_te = [
            ("host", "a"),
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
        ];
        assert_eq!(ok(&two_te), Err(StatusCode::BAD_REQUEST));
        let two_cl = [
            ("host", "a"),
            ("content-length", "1"),
            ("content-length", "1"),
        ];
        assert_eq!(ok(&two_cl), Err(StatusCode::BAD_REQUEST));
        for name in ["transfer_encoding", "content_length", "Transfer_Encoding"] {
            assert_eq!(
                ok(&[("host", "a"), (name, "chunked")]),
                Err(StatusCode::BAD_REQUEST),
                "{name}"
            );
        }
        assert_eq!(ok(&[("host", "a"), ("x_custom", "1")]), Ok(()));
    }

    #[test]
    fn host_is_single_valid_and_follows_the_target() {
        let check = |uri: &str, h: &[(&str, &str)]| {
            let mut p = parts(uri, h);
            check_request(&mut p)
                .map_err(|r| r.0)
                .map(|()| p.headers[HOST].clone())
        };
        assert_eq!(check("/", &[]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            check("/", &[("host", "a"), ("host", "b")]),
            Err(StatusCode::BAD_REQUEST)
        );
        for bad in ["a b", "a/b", "u@a", ""] {
            assert_eq!(
                check("/", &[("host", bad)]),
                Err(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
        assert_eq!(
            check("http://b.test/x", &[("host", "a")]),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check("http://b.test/x", &[("host", "B.test")]),
            Ok(HeaderValue::from_static("b.test"))
        );
        assert_eq!(
            check("http://b.test/x", &[]),
            Ok(HeaderValue::from_static("b.test"))
        );
        assert_eq!(
            check("/", &[("host", "a:81")]),
            Ok(HeaderValue::from_static("a:81"))
        );
    }

    #[test]
    fn expectations_and_targets() {
        let mut p = parts("/", &[("host", "a"), ("expect", "100-Continue")]);
        assert_eq!(check_request(&mut p).map_err(|r| r.0), Ok(()));
        assert!(!p.headers.contains_key(EXPECT));
        let mut p = parts("/", &[("host", "a"), ("expect", "fly")]);
        assert_eq!(
            check_request(&mut p).map_err(|r| r.0),
            Err(StatusCode::EXPECTATION_FAILED)
        );
        let long = format!("/{}", "a".repeat(MAX_TARGET));
        assert_eq!(
            check_request(&mut parts(&long, &[("host", "a")])).map_err(|r| r.0),
            Err(StatusCode::URI_TOO_LONG)
        );
        // What h2 and h3 make of a `:path` that is not a path: kept as it came.
        for path in ["?admin=1", "*"] {
            let mut p = parts("/", &[("host", "a")]);
            p.version = Version::HTTP_2;
            p.uri = hyper::Uri::from_parts({
                let mut u = hyper::http::uri::Parts::default();
                u.scheme = Some(hyper::http::uri::Scheme::HTTPS);
                u.authority = Some(Authority::from_static("a"));
                u.path_and_query = Some(path.parse().expect("a path and query"));
                u
            })
            .expect("a URI");
            assert_eq!(
                check_request(&mut p).map_err(|r| r.0),
                Err(StatusCode::BAD_REQUEST),
                "{path}"
            );
        }
        // HTTP/1.1 absolute form with an empty path: the path is `/`.
        let mut p = parts("http://a.test?x=1", &[]);
        assert_eq!(check_request(&mut p).map_err(|r| r.0), Ok(()));
        assert_eq!(p.uri.path_and_query().map(|pq| pq.as_str()), Some("/?x=1"));
        let mut p = parts("*", &[("host", "a")]);
        p.method = Method::OPTIONS;
        assert_eq!(check_request(&mut p).map_err(|r| r.0), Ok(()));
        let mut p = parts("b.test:443", &[("host", "b.test:443")]);
        p.method = Method::CONNECT;
        assert_eq!(
            check_request(&mut p).map_err(|r| r.0),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
    }
}
