//! Reading a header from the first bytes of a connection. Every length is checked before it
//! is used: the bytes come from the network, and only the peer's address vouches for them.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Addresses, Header, Version};

/// The v1 line's longest form, CRLF included (spec 2.1: "PROXY UNKNOWN" with two IPv6
/// addresses at their longest).
pub const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
/// Every v2 header starts with these 12 bytes (spec 2.2), chosen so that no v1 line, HTTP
/// request or TLS record can start with them.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family, length.
pub const V2_FIXED: usize = 16;
/// The longest v2 header taken, TLVs included. The format allows 64 KiB; what balancers
/// send (addresses, an authority, a few TLVs of their own) is a few hundred bytes.
pub const V2_MAX: usize = 4096;

/// A header read whole, and how many bytes of the connection it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub header: Header,
    pub consumed: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not an error yet: the bytes so far are the start of a header, and at least this many
    /// are needed to know more.
    #[error("incomplete header (at least {0} bytes needed)")]
    Incomplete(usize),
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("a PROXY protocol {found} header where {expected} is expected")]
    OtherVersion { expected: Version, found: Version },
    #[error("PROXY protocol header longer than {0} bytes")]
    TooLong(usize),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

impl ParseError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Incomplete(_) => "incomplete",
            ParseError::Missing => "missing",
            ParseError::OtherVersion { .. } => "wrong_version",
            ParseError::TooLong(_) => "too_long",
            ParseError::Malformed(_) => "malformed",
        }
    }
}

/// Parses the header `expected` at the start of `buf`, which holds the connection's first
/// bytes (and maybe more behind the header, which are left alone).
pub fn parse(expected: Version, buf: &[u8]) -> Result<Parsed, ParseError> {
    let found = sniff(buf)?;
    if found != expected {
        return Err(ParseError::OtherVersion { expected, found });
    }
    match found {
        Version::V1 => parse_v1(buf),
        Version::V2 => parse_v2(buf),
    }
}

/// Which version `buf` starts as: decided on the first bytes, which differ from the first one.
fn sniff(buf: &[u8]) -> Result<Version, ParseError> {
    let starts = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    if starts(V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Err(ParseError::Incomplete(V1_PREFIX.len()));
        }
        return Ok(Version::V1);
    }
    if starts(&V2_SIGNATURE) {
        if buf.len() < V2_SIGNATURE.len() {
            return Err(ParseError::Incomplete(V2_SIGNATURE.len()));
        }
        return Ok(Version::V2);
    }
    Err(ParseError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if let Some(bad) = window.iter().position(|&b| !is_v1_char(b)) {
            // A CR is only allowed as the last byte seen so far (its LF may follow).
            if !(window[bad] == b'\r' && bad + 1 == window.len()) {
                return Err(ParseError::Malformed(
                    "v1 line holds a byte that is not printable ASCII",
                ));
            }
        }
        if buf.len() >= V1_MAX {
            return Err(ParseError::TooLong(V1_MAX));
        }
        return Err(ParseError::Incomplete(buf.len() + 1));
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ParseError::Malformed("v1 line does not end with CRLF"));
    }
    let line = &window[V1_PREFIX.len()..lf - 1];
    if !line.iter().all(|&b| is_v1_char(b)) {
        return Err(ParseError::Malformed(
            "v1 line holds a byte that is not printable ASCII",
        ));
    }
    // Printable ASCII is UTF-8.
    let line =
        std::str::from_utf8(line).map_err(|_| ParseError::Malformed("v1 line is not ASCII"))?;
    let consumed = lf + 1;
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or_default();
    let v6 = match protocol {
        // The sender does not know the addresses (spec 2.1): the rest of the line is ignored.
        "UNKNOWN" => {
            return Ok(Parsed {
                header: Header { addresses: None },
                consumed,
            });
        }
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ParseError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ParseError::Malformed(
            "v1 line is not PROTOCOL SOURCE DESTINATION SPORT DPORT, single spaces",
        ));
    };
    let address = |text: &str| -> Result<IpAddr, ParseError> {
        if v6 {
            text.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| ParseError::Malformed("v1 TCP6 address is not an IPv6 address"))
        } else {
            text.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| ParseError::Malformed("v1 TCP4 address is not an IPv4 address"))
        }
    };
    let source = SocketAddr::new(address(src)?, v1_port(sport)?);
    let destination = SocketAddr::new(address(dst)?, v1_port(dport)?);
    Ok(Parsed {
        header: Header {
            addresses: Some(Addresses {
                source,
                destination,
            }),
        },
        consumed,
    })
}

fn is_v1_char(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

/// A port as v1 writes it: decimal digits only (no sign, no spaces), 0-65535.
fn v1_port(text: &str) -> Result<u16, ParseError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Malformed("v1 port is not a decimal number"));
    }
    text.parse::<u16>()
        .map_err(|_| ParseError::Malformed("v1 port is above 65535"))
}

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const FAMILY_UNSPEC: u8 = 0x00;
const TCP_OVER_IPV4: u8 = 0x11;
const UDP_OVER_IPV4: u8 = 0x12;
const TCP_OVER_IPV6: u8 = 0x21;
const UDP_OVER_IPV6: u8 = 0x22;
const UNIX_STREAM: u8 = 0x31;
const UNIX_DGRAM: u8 = 0x32;

fn parse_v2(buf: &[u8]) -> Result<Parsed, ParseError> {
    let Some(fixed) = buf.get(..V2_FIXED) else {
        return Err(ParseError::Incomplete(V2_FIXED));
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(ParseError::Malformed("v2 version nibble is not 2"));
    }
    let family = fixed[13];
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let total = V2_FIXED + length;
    if total > V2_MAX {
        return Err(ParseError::TooLong(V2_MAX));
    }
    let Some(block) = buf.get(V2_FIXED..total) else {
        return Err(ParseError::Incomplete(total));
    };
    let done = |addresses| {
        Ok(Parsed {
            header: Header { addresses },
            consumed: total,
        })
    };
    match command {
        // The balancer speaking for itself (its health checks): whatever the block holds,
        // the connection's own addresses stand (spec 2.2).
        CMD_LOCAL => return done(None),
        CMD_PROXY => {}
        _ => {
            return Err(ParseError::Malformed(
                "v2 command is neither LOCAL nor PROXY",
            ));
        }
    }
    let (addresses, tlvs) = match family {
        // A relayed connection of a kind the sender cannot describe: spec 2.2 lets the
        // receiver accept it with the real addresses, as HAProxy does.
        FAMILY_UNSPEC => return done(None),
        TCP_OVER_IPV4 => {
            let Some(a) = block.get(..12) else {
                return Err(ParseError::Malformed(
                    "v2 address block is shorter than two IPv4 addresses and ports",
                ));
            };
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            let addresses = Addresses {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            };
            (addresses, &block[12..])
        }
        TCP_OVER_IPV6 => {
            let Some(a) = block.get(..36) else {
                return Err(ParseError::Malformed(
                    "v2 address block is shorter than two IPv6 addresses and ports",
                ));
            };
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            let addresses = Addresses {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            };
            (addresses, &block[36..])
        }
        UDP_OVER_IPV4 | UDP_OVER_IPV6 => {
            return Err(ParseError::Malformed(
                "v2 family is UDP, and this is a TCP connection",
            ));
        }
        UNIX_STREAM | UNIX_DGRAM => {
            return Err(ParseError::Malformed(
                "v2 family is a UNIX socket, which has no client address to use",
            ));
        }
        _ => {
            return Err(ParseError::Malformed(
                "v2 address family or transport is unknown",
            ));
        }
    };
    check_tlvs(tlvs)?;
    done(Some(addresses))
}

/// TLVs (type, 16-bit length, value) fill the rest of the block: none is needed here, but
/// one that runs past the block means the sender and this reader disagree on the framing.
fn check_tlvs(mut rest: &[u8]) -> Result<(), ParseError> {
    while !rest.is_empty() {
        let Some(&[_, hi, lo]) = rest.get(..3) else {
            return Err(ParseError::Malformed("v2 TLV header is cut short"));
        };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(after) = rest.get(end..) else {
            return Err(ParseError::Malformed(
                "v2 TLV runs past the header's length",
            ));
        };
        rest = after;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_protocol::encode;

    fn addrs(src: &str, dst: &str) -> Option<Addresses> {
        Some(Addresses {
            source: src.parse().expect("test address"),
            destination: dst.parse().expect("test address"),
        })
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn v4_block() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 7, 10, 0, 0, 1];
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown_are_read_and_what_follows_is_left() {
        let cases: [(&[u8], Option<Addresses>, usize); 4] = [
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n\x16\x03\x01",
                addrs("192.0.2.7:40000", "10.0.0.1:443"),
                41,
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\nGET",
                addrs("[2001:db8::7]:65535", "[2001:db8::1]:0"),
                44,
            ),
            (b"PROXY UNKNOWN\r\nGET / HTTP/1.1", None, 15),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
                None,
                59,
            ),
        ];
        for (input, addresses, consumed) in cases {
            assert_eq!(
                parse(Version::V1, input),
                Ok(Parsed {
                    header: Header { addresses },
                    consumed
                }),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn v1_malformed_lines_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 14] = [
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n", "malformed"),
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443 1\r\n",
                "malformed",
            ),
            (b"PROXY TCP4 192.0.2.7  10.0.0.1 40000 443\r\n", "malformed"),
            (
                b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 443\r\n",
                "malformed",
            ),
            (
                b"PROXY TCP6 192.0.2.7 2001:db8::1 40000 443\r\n",
                "malformed",
            ),
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n", "malformed"),
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 +4000 443\r\n", "malformed"),
            (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\n", "malformed"),
            (b"PROXY UDP4 192.0.2.7 10.0.0.1 40000 443\r\n", "malformed"),
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 4\xc3\xa9\r\n",
                "malformed",
            ),
            (b"PROXY TCP4 192.0.2.7\r10.0.0.1 40000 443\r\n", "malformed"),
            (b"proxy TCP4 192.0.2.7 10.0.0.1 40000 443\r\n", "missing"),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "missing"),
            (b"GET / HTTP/1.1\r\n\r\n", "missing"),
        ];
        for (input, reason) in cases {
            let got = parse(Version::V1, input);
            assert_eq!(
                got.map_err(|e| e.reason()),
                Err(reason),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn v1_longer_than_107_bytes_is_too_long_and_shorter_is_incomplete() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(parse(Version::V1, &long), Err(ParseError::TooLong(V1_MAX)));
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(Version::V1, &long), Err(ParseError::TooLong(V1_MAX)));
        // At exactly 107 bytes with its CRLF, a line is taken.
        let mut longest = b"PROXY UNKNOWN ".to_vec();
        longest.resize(V1_MAX - 2, b'x');
        longest.extend_from_slice(b"\r\n");
        assert_eq!(parse(Version::V1, &longest).map(|p| p.consumed), Ok(V1_MAX));
        let full = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n";
        for cut in 0..full.len() {
            assert!(
                matches!(
                    parse(Version::V1, &full[..cut]),
                    Err(ParseError::Incomplete(_))
                ),
                "cut at {cut}: {:?}",
                parse(Version::V1, &full[..cut])
            );
        }
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_unspec_are_read() {
        let mut tlv_block = v4_block();
        // An authority TLV and a NOOP, skipped.
        tlv_block.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b', 0x04, 0x00, 0x00]);
        let header = v2(1, TCP_OVER_IPV4, &tlv_block);
        let mut with_tail = header.clone();
        with_tail.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(Version::V2, &with_tail),
            Ok(Parsed {
                header: Header {
                    addresses: addrs("192.0.2.7:40000", "10.0.0.1:443")
                },
                consumed: header.len()
            })
        );
        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets());
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("v6").octets());
        v6.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
        assert_eq!(
            parse(Version::V2, &v2(1, TCP_OVER_IPV6, &v6)).map(|p| p.header.addresses),
            Ok(addrs("[2001:db8::7]:40000", "[2001:db8::1]:443"))
        );
        // LOCAL keeps the real peer, whatever its block says.
        for family in [FAMILY_UNSPEC, TCP_OVER_IPV4, 0x77] {
            assert_eq!(
                parse(Version::V2, &v2(0, family, &v4_block())).map(|p| p.header.addresses),
                Ok(None)
            );
        }
        assert_eq!(
            parse(Version::V2, &v2(1, FAMILY_UNSPEC, &[])).map(|p| p.header.addresses),
            Ok(None)
        );
    }

    #[test]
    fn v2_malformed_headers_are_refused_with_the_reason() {
        let mut bad_signature = v2(1, TCP_OVER_IPV4, &v4_block());
        bad_signature[11] = b'X';
        let mut bad_version = v2(1, TCP_OVER_IPV4, &v4_block());
        bad_version[12] = 0x11;
        let mut too_long = v2(1, TCP_OVER_IPV4, &[]);
        too_long[14..16].copy_from_slice(&(V2_MAX as u16).to_be_bytes());
        let mut overrunning_tlv = v4_block();
        overrunning_tlv.extend_from_slice(&[0x02, 0x00, 0x09, b'a']);
        let mut cut_tlv = v4_block();
        cut_tlv.extend_from_slice(&[0x02, 0x00]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("bad signature", bad_signature, "missing"),
            ("version 1 nibble", bad_version, "malformed"),
            ("command 2", v2(2, TCP_OVER_IPV4, &v4_block()), "malformed"),
            ("unknown family", v2(1, 0x41, &v4_block()), "malformed"),
            ("unknown transport", v2(1, 0x13, &v4_block()), "malformed"),
            ("UDP", v2(1, UDP_OVER_IPV4, &v4_block()), "malformed"),
            ("UNIX", v2(1, UNIX_STREAM, &[0; 216]), "malformed"),
            (
                "short IPv4 block",
                v2(1, TCP_OVER_IPV4, &[1, 2, 3, 4]),
                "malformed",
            ),
            (
                "short IPv6 block",
                v2(1, TCP_OVER_IPV6, &v4_block()),
                "malformed",
            ),
            ("length over the bound", too_long, "too_long"),
            (
                "TLV past the end",
                v2(1, TCP_OVER_IPV4, &overrunning_tlv),
                "malformed",
            ),
            (
                "TLV header cut",
                v2(1, TCP_OVER_IPV4, &cut_tlv),
                "malformed",
            ),
            (
                "a v1 line",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                "wrong_version",
            ),
        ];
        for (what, input, reason) in cases {
            assert_eq!(
                parse(Version::V2, &input).map_err(|e| e.reason()),
                Err(reason),
                "{what}"
            );
        }
        assert_eq!(
            parse(Version::V1, &v2(1, TCP_OVER_IPV4, &v4_block())).map_err(|e| e.reason()),
            Err("wrong_version")
        );
    }

    #[test]
    fn v2_truncated_anywhere_is_incomplete() {
        let full = v2(1, TCP_OVER_IPV4, &v4_block());
        for cut in 0..full.len() {
            assert!(
                matches!(parse(Version::V2, &full[..cut]), Err(ParseError::Incomplete(n)) if n > cut),
                "cut at {cut}: {:?}",
                parse(Version::V2, &full[..cut])
            );
        }
    }

    /// A fuzz-like pass: random bytes, random mutations of valid headers, and every cut of
    /// them, parsed without panicking; whatever parses says how much it took, within the
    /// input.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let tls = encode::Tls {
            version: "TLSv1.3",
            client_cert_verified: false,
        };
        let seeds: Vec<Vec<u8>> = vec![
            encode::v1(
                "192.0.2.7:40000".parse().expect("addr"),
                "10.0.0.1:443".parse().expect("addr"),
            ),
            encode::v2(
                "[2001:db8::7]:40000".parse().expect("addr"),
                "[2001:db8::1]:443".parse().expect("addr"),
                Some("shop.example"),
                Some(tls),
            ),
            encode::v2_local(),
        ];
        for round in 0..20_000 {
            let mut input = if round % 4 == 0 {
                (0..next() % 200).map(|_| next() as u8).collect()
            } else {
                seeds[round % seeds.len()].clone()
            };
            for _ in 0..(next() % 4) {
                if input.is_empty() {
                    break;
                }
                let at = (next() as usize) % input.len();
                input[at] = next() as u8;
            }
            let cut = (next() as usize) % (input.len() + 1);
            for version in [Version::V1, Version::V2] {
                for bytes in [&input[..], &input[..cut]] {
                    if let Ok(p) = parse(version, bytes) {
                        assert!(p.consumed <= bytes.len() && p.consumed >= 15, "{p:?}");
                    }
                }
            }
        }
    }
}
