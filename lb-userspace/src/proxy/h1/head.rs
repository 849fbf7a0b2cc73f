//! HTTP/1.1 heads on the backend side: the request head written into one buffer, the response
//! head parsed in place (httparse) and how its body is framed (RFC 9112 6.3).
use std::io::Write as _;

use bytes::{Bytes, BytesMut};
use hyper::header::{CONTENT_LENGTH, COOKIE, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, StatusCode, Version};

use super::Error;
use crate::proxy::headers::connection_tokens;

/// Largest number of header fields taken from a backend response (hyper's limit too).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body: neither Content-Length nor Transfer-Encoding is sent.
    Empty,
    Length(u64),
    Chunked,
}

/// Writes `METHOD target HTTP/1.1`, the headers (Host from `default_host` when the request
/// has none) and the framing header into `out`. Hop-by-hop and framing headers must already
/// be gone from `headers`.
pub fn write_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    default_host: &str,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(default_host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut cookie_written = false;
    for (name, value) in headers {
        if name == COOKIE {
            // HTTP/2 and HTTP/3 clients may split the cookie into one field per pair (RFC 9113
            // 8.2.3, RFC 9114 4.2.1); an HTTP/1.1 request carries one, and backends that read
            // only the first line would lose the rest.
            if !cookie_written {
                cookie_written = true;
                out.extend_from_slice(b"cookie: ");
                for (i, crumb) in headers.get_all(COOKIE).iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b"; ");
                    }
                    out.extend_from_slice(crumb.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A parsed response head.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses a complete response head at the start of `buf` and removes it from `buf`.
/// `Ok(None)`: more bytes are needed. A head longer than `max_head` bytes, complete or not,
/// is an error. 1xx heads other than 101 are returned like any other; the caller skips them.
pub fn parse_response(
    buf: &mut BytesMut,
    request: &Method,
    max_head: usize,
) -> Result<Option<ResponseHead>, Error> {
    // Uninitialised slots and spans on the stack: this runs for every response, and zeroing
    // a hundred header slots (3 KiB) or allocating the spans showed in profiles.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let len = match parser.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Ok(None),
        Ok(_) => return Err(Error::HeadTooLarge(max_head)),
        Err(e) => return Err(Error::BadResponse(format!("response head: {e}"))),
    };
    let code = parsed.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| Error::BadResponse(format!("status {code}")))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field lies in the head, so that values can share the head's bytes once
    // the parser's borrow of `buf` ends.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_RESPONSE_HEADERS];
    let count = parsed.headers.len();
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = (name, h.name.len(), value, h.value.len());
    }
    let head: Bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name, name_len, value, value_len) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[name..name + name_len])
            .map_err(|_| Error::BadResponse("header name".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            .map_err(|_| Error::BadResponse(format!("value of {name}")))?;
        headers.append(name, value);
    }
    let (framing, close_delimited) = framing(request, status, &headers)?;
    let keep_alive = !close_delimited && persistent(version, &headers);
    // `Content-Length: 5, 5` (or the field twice) was accepted as one length: pass it on as
    // one value, as HAProxy does, not as a list the client may refuse.
    if let ResponseFraming::Length(n) = framing
        && !bodiless(request, status)
        && headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .enumerate()
            .any(|(i, v)| i > 0 || v.as_bytes().contains(&b','))
    {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// Responses without a body whatever their fields say (a HEAD's `Content-Length` is the
/// GET's).
fn bodiless(request: &Method, status: StatusCode) -> bool {
    *request == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// RFC 9112 6.3, in its order. The flag says the body ends with the connection.
fn framing(
    request: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(ResponseFraming, bool), Error> {
    if bodiless(request, status) {
        return Ok((ResponseFraming::Length(0), false));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Only chunked alone: the proxy removes Transfer-Encoding (hop-by-hop), so a body
        // still gzip-coded underneath would reach the client as if it were plain, and a body
        // with no chunked at all has no end but the close. nginx answers 502 to both.
        let mut codings = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => {
                Ok((ResponseFraming::Chunked, false))
            }
            _ => Err(Error::BadResponse(format!(
                "unsupported Transfer-Encoding {:?} (only chunked is)",
                headers
                    .get_all(TRANSFER_ENCODING)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        };
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Error::BadResponse("malformed Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::BadResponse("differing Content-Length values".into()));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (ResponseFraming::Length(n), false),
        None => (ResponseFraming::UntilClose, true),
    })
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes unless told
/// `keep-alive`.
fn persistent(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token));
    if version == Version::HTTP_11 {
        !has("close")
    } else {
        has("keep-alive")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: Method) -> Result<Option<ResponseHead>, Error> {
        let mut buf = BytesMut::from(raw);
        parse_response(&mut buf, &method, 1024)
    }

    #[test]
    fn request_head_is_one_buffer_with_host_and_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        write_request(
            &mut out,
            &Method::POST,
            "/p?q=1",
            &headers,
            "10.0.0.1:80",
            RequestFraming::Length(5),
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /p?q=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
        );
        headers.insert(HOST, HeaderValue::from_static("example.com"));
        out.clear();
        write_request(
            &mut out,
            &Method::GET,
            "/",
            &headers,
            "x",
            RequestFraming::Empty,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET / HTTP/1.1\r\nx-a: 1\r\nhost: example.com\r\n\r\n"
        );
    }

    #[test]
    fn cookie_fields_are_joined_into_one_line() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.append(COOKIE, HeaderValue::from_static("b=2"));
        headers.append(COOKIE, HeaderValue::from_static("c=3"));
        let mut out = Vec::new();
        write_request(
            &mut out,
            &Method::GET,
            "/",
            &headers,
            "h",
            RequestFraming::Empty,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET / HTTP/1.1\r\nhost: h\r\ncookie: a=1; b=2; c=3\r\nx-a: 1\r\n\r\n"
        );
    }

    #[test]
    fn response_heads_and_their_framing() {
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(r.framing, ResponseFraming::Length(5));
        assert!(r.keep_alive);
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD)
            .expect("valid")
            .expect("complete");
        assert_eq!(r.framing, ResponseFraming::Length(0));
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\n\r\n",
            Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(r.framing, ResponseFraming::Chunked);
        // A coding under chunked, or none at all: the client would get coded bytes as plain.
        for te in ["gzip, chunked", "gzip", "chunked, chunked", "identity"] {
            let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(
                matches!(parse(&head, Method::GET), Err(Error::BadResponse(_))),
                "{te}"
            );
        }
        let r = parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET)
            .expect("valid")
            .expect("complete");
        assert!(!r.keep_alive);
        let r = parse(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1, 1\r\n\r\n",
            Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(r.framing, ResponseFraming::Length(1));
        assert!(!r.keep_alive);
        assert_eq!(
            r.headers.get_all(CONTENT_LENGTH).iter().collect::<Vec<_>>(),
            ["1"]
        );
        let r = parse(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            Method::GET,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(r.framing, ResponseFraming::Length(0));
        assert!(
            parse("HTTP/1.1 200 OK\r\nContent-Len", Method::GET)
                .expect("valid")
                .is_none()
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(parse(bad, Method::GET).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_values_share_the_read_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nX-A: b c\r\n\r\nrest");
        let r = parse_response(&mut buf, &Method::GET, 1024)
            .expect("valid")
            .expect("complete");
        assert_eq!(r.headers["x-a"], "b c");
        assert_eq!(&buf[..], b"rest");
    }
}
