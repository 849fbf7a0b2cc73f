//! Writing a header for a backend connection: the client's address and port, the address and
//! port it connected to, and (v2) what the TLS handshake with it settled.
use std::net::{IpAddr, SocketAddr};

use super::Version;
use super::parse::V2_SIGNATURE;

/// PP2_TYPE_AUTHORITY: the host name the client asked for (its TLS SNI).
const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// PP2_TYPE_SSL: the client connection was TLS; its value holds sub-TLVs.
const PP2_TYPE_SSL: u8 = 0x20;
/// PP2_SUBTYPE_SSL_VERSION: the TLS version, as OpenSSL names it (`TLSv1.3`).
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// Bits of PP2_TYPE_SSL's `client` byte.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// The TLS side of the client's connection, for v2's PP2_TYPE_SSL.
#[derive(Clone, Copy, Debug)]
pub struct Tls<'a> {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'a str,
    /// The client presented a certificate that verified (mutual TLS).
    pub client_cert_verified: bool,
}

/// The header `version` for a connection from `source` to `destination`, with (v2 only) the
/// authority and TLS details.
pub fn header(
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
    authority: Option<&str>,
    tls: Option<Tls<'_>>,
) -> Vec<u8> {
    match version {
        Version::V1 => v1(source, destination),
        Version::V2 => v2(source, destination, authority, tls),
    }
}

/// `PROXY TCP4 SRC DST SPORT DPORT\r\n` (or TCP6).
pub fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = one_family(source, destination);
    let protocol = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {protocol} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v2 `PROXY` header over TCP, with PP2_TYPE_AUTHORITY when there is an authority and
/// PP2_TYPE_SSL when the client spoke TLS.
pub fn v2(
    source: SocketAddr,
    destination: SocketAddr,
    authority: Option<&str>,
    tls: Option<Tls<'_>>,
) -> Vec<u8> {
    let (source, destination) = one_family(source, destination);
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&V2_SIGNATURE);
    // Version 2, command PROXY.
    out.push(0x21);
    // The length is written once the block is known.
    out.extend_from_slice(&[0, 0, 0]);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[13] = 0x11;
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out[13] = 0x21;
            out.extend_from_slice(&v6_octets(s));
            out.extend_from_slice(&v6_octets(d));
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    if let Some(name) = authority.filter(|n| !n.is_empty()) {
        tlv(&mut out, PP2_TYPE_AUTHORITY, name.as_bytes());
    }
    if let Some(tls) = tls {
        let mut value = Vec::with_capacity(16);
        let mut client = PP2_CLIENT_SSL;
        if tls.client_cert_verified {
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
        }
        value.push(client);
        // `verify` is zero only for a client certificate that verified (spec 2.2.5).
        let verify: u32 = if tls.client_cert_verified { 0 } else { 1 };
        value.extend_from_slice(&verify.to_be_bytes());
        tlv(&mut value, PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes());
        tlv(&mut out, PP2_TYPE_SSL, &value);
    }
    set_length(&mut out);
    out
}

/// A v2 `LOCAL` header: the connection is edgelb's own (a health check), not a client's.
pub fn v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

/// Appends one TLV; a value too long for its 16-bit length (none edgelb sends can be) is
/// left out rather than cut.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let Ok(len) = u16::try_from(value.len()) else {
        return;
    };
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

fn set_length(out: &mut [u8]) {
    // Headers built here stay far below 64 KiB: addresses, a DNS name, a version string.
    let len = u16::try_from(out.len() - 16).unwrap_or(u16::MAX);
    out[14..16].copy_from_slice(&len.to_be_bytes());
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Both addresses in one family, as a header holds them: IPv4-mapped IPv6 addresses (a
/// dual-stack socket's view of IPv4 clients) as IPv4; a pair that still mixes families as IPv6.
fn one_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (a_ip, b_ip) = (a.ip().to_canonical(), b.ip().to_canonical());
    let (a_ip, b_ip) = match (a_ip, b_ip) {
        (IpAddr::V4(x), IpAddr::V6(_)) => (IpAddr::V6(x.to_ipv6_mapped()), b_ip),
        (IpAddr::V6(_), IpAddr::V4(y)) => (a_ip, IpAddr::V6(y.to_ipv6_mapped())),
        _ => (a_ip, b_ip),
    };
    (
        SocketAddr::new(a_ip, a.port()),
        SocketAddr::new(b_ip, b.port()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_protocol::{Addresses, parse};

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn v1_lines_read_back() {
        assert_eq!(
            v1(sa("192.0.2.7:40000"), sa("10.0.0.1:443")),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n"
        );
        assert_eq!(
            v1(sa("[::ffff:192.0.2.7]:40000"), sa("[::ffff:10.0.0.1]:443")),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n"
        );
        let mixed = v1(sa("192.0.2.7:1"), sa("[2001:db8::1]:2"));
        assert_eq!(mixed, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 2\r\n");
        let back = parse(Version::V1, &mixed).expect("parses");
        assert_eq!(back.consumed, mixed.len());
    }

    #[test]
    fn v2_carries_addresses_authority_and_tls_version() {
        let tls = Tls {
            version: "TLSv1.3",
            client_cert_verified: false,
        };
        let h = v2(
            sa("192.0.2.7:40000"),
            sa("10.0.0.1:443"),
            Some("shop.example"),
            Some(tls),
        );
        let expected: Vec<u8> = [
            &V2_SIGNATURE[..],
            &[0x21, 0x11, 0x00, 12 + 15 + 18],
            &[192, 0, 2, 7, 10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb],
            &[0x02, 0x00, 12],
            b"shop.example",
            &[0x20, 0x00, 15, 0x01, 0, 0, 0, 1, 0x21, 0x00, 7],
            b"TLSv1.3",
        ]
        .concat();
        assert_eq!(h, expected);
        assert_eq!(
            parse(Version::V2, &h).map(|p| (p.header.addresses, p.consumed)),
            Ok((
                Some(Addresses {
                    source: sa("192.0.2.7:40000"),
                    destination: sa("10.0.0.1:443")
                }),
                h.len()
            ))
        );
        let verified = Tls {
            version: "TLSv1.2",
            client_cert_verified: true,
        };
        let h6 = v2(
            sa("[2001:db8::7]:1"),
            sa("[2001:db8::1]:2"),
            None,
            Some(verified),
        );
        assert_eq!(h6[13], 0x21);
        // Addresses (36), then only the SSL TLV: client bits 0x07, verify 0.
        assert_eq!(
            &h6[16 + 36..16 + 36 + 8],
            &[0x20, 0x00, 15, 0x07, 0, 0, 0, 0]
        );
        assert!(parse(Version::V2, &h6).is_ok());
        let plain = v2(sa("192.0.2.7:1"), sa("10.0.0.1:2"), None, None);
        assert_eq!(plain.len(), 16 + 12);
    }

    #[test]
    fn v2_local_keeps_the_real_addresses() {
        let h = v2_local();
        assert_eq!(h.len(), 16);
        assert_eq!(parse(Version::V2, &h).map(|p| p.header.addresses), Ok(None));
    }
}
