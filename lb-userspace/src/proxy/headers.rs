//! Headers between client and backend: hop-by-hop headers dropped both ways, and what the
//! backend learns about the client (`X-Forwarded-*`, `X-Real-IP`, the verified client
//! certificate). Only `X-Forwarded-For` keeps what the client sent (ours is appended); the
//! others are always overwritten or removed, so a client cannot forge them.
use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, PROXY_AUTHENTICATE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

use crate::config::TransferLbIp;
use crate::tls::ClientIdentity;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub const X_FORWARDED_ELB_IP: HeaderName = HeaderName::from_static("x-forwarded-elb-ip");
/// `SUCCESS` when the client presented a certificate that verified against `--client-ca`.
pub const X_CLIENT_VERIFY: HeaderName = HeaderName::from_static("x-client-verify");
/// The verified client certificate's subject, e.g. `CN=client-1, O=Example`.
pub const X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");

static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// What a connection knows about its client, fixed at accept and handshake.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client: the connection's peer, or the client a PROXY protocol header named.
    pub peer: SocketAddr,
    /// The address the client connected to (as a PROXY protocol header says, behind one).
    pub local: SocketAddr,
    pub scheme: &'static str,
    pub identity: ClientIdentity,
    /// The server name the client asked for in its ClientHello.
    pub sni: Option<String>,
    /// `TLSv1.3` or `TLSv1.2` on TLS connections, for PROXY protocol v2 headers to backends.
    pub tls_version: Option<&'static str>,
    /// Backend connections that carry this client's PROXY protocol header: its own.
    pub private: super::private::PrivateConns,
    /// A protocol switch (WebSocket) a request opened, for the connection's task to run.
    pub tunnel: super::tunnel::Pending,
    /// The client's address and the listener's port as header values, rendered once per
    /// connection rather than for each request.
    client_ip: HeaderValue,
    local_port: HeaderValue,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        local: SocketAddr,
        scheme: &'static str,
        identity: ClientIdentity,
        sni: Option<String>,
    ) -> Self {
        ConnInfo {
            // An address renders as digits, dots, colons and hex letters: a valid value.
            client_ip: HeaderValue::from_str(&peer.ip().to_canonical().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            local_port: HeaderValue::from(local.port()),
            peer,
            local,
            // QUIC is always TLS 1.3 (RFC 9001); TCP connections say theirs
            // ([`ConnInfo::with_tls_version`]).
            tls_version: (scheme == "https").then_some("TLSv1.3"),
            private: Default::default(),
            tunnel: Default::default(),
            scheme,
            identity,
            sni,
        }
    }

    /// The TLS version the handshake settled.
    pub fn with_tls_version(mut self, version: Option<rustls::ProtocolVersion>) -> Self {
        self.tls_version = match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
            _ => None,
        };
        self
    }
}

/// The tokens of a message's `Connection` header lines, trimmed (compare them ignoring case).
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether the request asks to switch protocols (WebSocket and other HTTP/1.1 upgrades).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Which of a list of names a header map holds, found in one pass over its names: looking up
/// or removing a name costs a hash and a probe even when it is not there, and the lists here
/// are of names most messages do not carry.
/// (Names compare as an enum tag when both are standard headers, as bytes otherwise.)
struct Present<'a> {
    names: &'a [HeaderName],
    /// Bit i for `names[i]`.
    mask: u16,
}

impl<'a> Present<'a> {
    fn of(headers: &HeaderMap, names: &'a [HeaderName]) -> Self {
        debug_assert!(names.len() <= 16);
        let mask = headers.keys().fold(0, |mask, n| {
            names
                .iter()
                .position(|m| m == n)
                .map_or(mask, |i| mask | 1 << i)
        });
        Present { names, mask }
    }

    fn any(&self) -> bool {
        self.mask != 0
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.names
            .iter()
            .position(|m| m == name)
            .is_some_and(|i| self.mask & 1 << i != 0)
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names, except `Host`
/// (routing already read it: a client naming it must not make the backend see another) and
/// `Content-Length` (the message is framed again on the other side anyway). With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` pass (a protocol switch in progress).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests carry none, most backend responses only `Connection`.
    let present = Present::of(headers, &HOP_BY_HOP);
    if !present.any() && !keep_upgrade {
        return;
    }
    if present.contains(&CONNECTION) {
        // Only names present are made into `HeaderName`s: the usual token, a backend's
        // `keep-alive`, is not a standard name, and making it one copies it into an
        // allocation (for nothing when no `Keep-Alive` header came with it).
        let named: Vec<HeaderName> = connection_tokens(headers)
            // Names of the fixed list (`Upgrade` among them) go below, without a lookup by string (which parses and
            // hashes the token: a backend's every `Connection: keep-alive`).
            .filter(|t| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(t))
            })
            .filter(|t| headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| *n != HOST && *n != CONTENT_LENGTH)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        if !present.contains(name) || keep_upgrade && (*name == CONNECTION || *name == UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The headers edgelb sets or removes for the backend: a client must not be able to pass its
/// own under another spelling.
static MANAGED: [HeaderName; 7] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_PORT,
    X_REAL_IP,
    X_FORWARDED_ELB_IP,
    X_CLIENT_VERIFY,
    X_CLIENT_CERT_SUBJECT,
];

/// Removes headers that spell one of [`MANAGED`] with underscores (`X_Client_Verify`): hyper,
/// h2 and h3 accept `_` in names, and backends that read headers as CGI variables
/// (`HTTP_X_CLIENT_VERIFY`) cannot tell the two apart (CVE-2024-45614 in Puma was this).
fn remove_lookalikes(headers: &mut HeaderMap) {
    // Most requests have no underscore in any name: one pass, no allocation.
    if !headers.keys().any(|n| n.as_str().contains('_')) {
        return;
    }
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| {
            let dashed = n.as_str().replace('_', "-");
            MANAGED.iter().any(|m| m.as_str() == dashed)
        })
        .cloned()
        .collect();
    for name in lookalikes {
        headers.remove(name);
    }
}

/// Adds what the backend should know about the client.
pub fn add_client_headers(headers: &mut HeaderMap, conn: &ConnInfo, lb_ip: TransferLbIp) {
    // Lookalikes are never managed names (those have dashes): what the client sent of these
    // stays as found.
    let sent = Present::of(headers, &MANAGED);
    remove_lookalikes(headers);
    if sent.contains(&X_FORWARDED_FOR) {
        let mut chain = String::new();
        for v in headers.get_all(&X_FORWARDED_FOR) {
            let Ok(v) = v.to_str() else { continue };
            let v = v.trim();
            if !v.is_empty() {
                chain.push_str(v);
                chain.push_str(", ");
            }
        }
        chain.push_str(conn.client_ip.to_str().unwrap_or_default());
        set(headers, X_FORWARDED_FOR, &chain);
    } else {
        headers.insert(X_FORWARDED_FOR, conn.client_ip.clone());
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));
    headers.insert(X_FORWARDED_PORT, conn.local_port.clone());
    headers.insert(X_REAL_IP, conn.client_ip.clone());
    if sent.contains(&X_FORWARDED_ELB_IP) {
        headers.remove(&X_FORWARDED_ELB_IP);
    }
    let lb: Option<IpAddr> = match lb_ip {
        TransferLbIp::Off => None,
        TransferLbIp::LocalAddress => Some(conn.local.ip().to_canonical()),
        TransferLbIp::Fixed(ip) => Some(ip),
    };
    if let Some(ip) = lb {
        set(headers, X_FORWARDED_ELB_IP, &ip.to_string());
    }
    for name in [&X_CLIENT_VERIFY, &X_CLIENT_CERT_SUBJECT] {
        if sent.contains(name) {
            headers.remove(name);
        }
    }
    if let Some(subject) = &conn.identity.subject {
        headers.insert(X_CLIENT_VERIFY, HeaderValue::from_static("SUCCESS"));
        // Subjects are UTF-8; header values may carry any visible byte, so pass it whole.
        if let Ok(v) = HeaderValue::from_bytes(subject.as_bytes()) {
            headers.insert(X_CLIENT_CERT_SUBJECT, v);
        }
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo::new(
            "[::ffff:10.1.2.3]:5555".parse().expect("static"),
            "10.0.0.1:443".parse().expect("static"),
            "https",
            ClientIdentity::default(),
            None,
        )
    }

    #[test]
    fn underscore_spellings_of_the_managed_headers_do_not_reach_the_backend() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x_client_verify", "SUCCESS"),
            ("x_client_cert_subject", "CN=admin"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x_real-ip", "6.6.6.6"),
            ("x_app_token", "kept"),
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        add_client_headers(&mut h, &conn(), TransferLbIp::Off);
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "x-forwarded-for",
                "x-forwarded-port",
                "x-forwarded-proto",
                "x-real-ip",
                "x_app_token"
            ]
        );
        assert_eq!(h[X_REAL_IP], "10.1.2.3");
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");
    }

    #[test]
    fn connection_cannot_remove_host_or_content_length() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("a.example"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        h.insert(
            CONNECTION,
            HeaderValue::from_static("host, content-length, x-gone"),
        );
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[HOST], "a.example");
        assert_eq!(h[CONTENT_LENGTH], "5");
        assert!(!h.contains_key("x-gone") && !h.contains_key(CONNECTION));
    }

    #[test]
    fn a_backends_keep_alive_goes_with_what_its_connection_header_names() {
        let mut h = HeaderMap::new();
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.append(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(CONNECTION, HeaderValue::from_static("close, X-Private"));
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn forwarded_for_is_appended_and_the_rest_overwritten() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        h.insert(X_CLIENT_VERIFY, HeaderValue::from_static("SUCCESS"));
        h.insert(X_CLIENT_CERT_SUBJECT, HeaderValue::from_static("CN=forged"));
        h.insert(X_FORWARDED_ELB_IP, HeaderValue::from_static("6.6.6.6"));
        add_client_headers(&mut h, &conn(), TransferLbIp::Off);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h[&X_REAL_IP], "10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_PORT], "443");
        assert!(!h.contains_key(&X_CLIENT_VERIFY));
        assert!(!h.contains_key(&X_CLIENT_CERT_SUBJECT));
        assert!(!h.contains_key(&X_FORWARDED_ELB_IP));
        add_client_headers(&mut h, &conn(), TransferLbIp::LocalAddress);
        assert_eq!(h[&X_FORWARDED_ELB_IP], "10.0.0.1");
        let mut fresh = HeaderMap::new();
        add_client_headers(&mut fresh, &conn(), TransferLbIp::Off);
        assert_eq!(fresh[&X_FORWARDED_FOR], "10.1.2.3");
    }

    #[test]
    fn hop_by_hop_headers_go_unless_upgrading() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("trailers"));
        assert!(is_upgrade(&h));
        let mut up = h.clone();
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up[UPGRADE], "websocket");
        assert_eq!(up[CONNECTION], "upgrade");
        assert!(!up.contains_key("x-secret"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }
}
