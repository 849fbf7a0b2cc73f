//! The Internet checksum (RFC 1071), as the XDP program computes it and the reference checks
//! it: written once so that both agree on every frame.

/// `initial` plus the 16-bit big-endian words of `bytes` (an odd last byte is left out: every
/// caller sums headers of even length).
#[inline(always)]
pub fn sum_words(bytes: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The checksum of a sum of words: the field's value when the sum left it zero, and 0 when
/// the sum included a correct checksum field.
#[inline(always)]
pub fn checksum(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Whether a TCP segment has a correct checksum. `ip` is its IPv4 header without options
/// (whose own checksum is checked too) or IPv6 header without extension headers; `tcp` its
/// TCP header and nothing more, padded with zeros to any even length (zeros add nothing);
/// `len` the header's length. A segment with data after the header is not one of these:
/// false.
#[inline(always)]
pub fn tcp_header_checksum_ok(ip: &[u8], tcp: &[u8], len: u32, v4: bool) -> bool {
    let (addrs, payload) = if v4 {
        if ip.len() < 20 || checksum(sum_words(&ip[..20], 0)) != 0 {
            return false;
        }
        let total = u32::from(u16::from_be_bytes([ip[2], ip[3]]));
        (&ip[12..20], total.wrapping_sub(20))
    } else {
        if ip.len() < 40 {
            return false;
        }
        (&ip[8..40], u32::from(u16::from_be_bytes([ip[4], ip[5]])))
    };
    let pseudo = sum_words(addrs, u32::from(crate::IPPROTO_TCP) + len);
    payload == len && checksum(sum_words(tcp, pseudo)) == 0
}

/// Whether the kernel would answer a SYN between these addresses at all: not from an
/// unspecified, loopback, multicast or reserved IPv4 source, nor to a multicast or reserved
/// destination (martians, dropped by `ip_route_input`); not from an unspecified, loopback,
/// multicast or IPv4-mapped IPv6 source, nor to a multicast destination (`tcp_v6_rcv`,
/// `tcp_v6_conn_request`). `ip` is the IPv4 header (20 bytes) or the IPv6 header (40).
#[inline(always)]
pub fn syn_addresses_ok(ip: &[u8], v4: bool) -> bool {
    if v4 {
        let (Some(&src), Some(&dst)) = (ip.get(12), ip.get(16)) else {
            return false;
        };
        !matches!(src, 0 | 127 | 224..=255) && !matches!(dst, 0 | 224..=255)
    } else {
        let (Some(src), Some(dst)) = (ip.get(8..24), ip.get(24..40)) else {
            return false;
        };
        let unspecified_or_loopback = src[..15].iter().all(|&b| b == 0) && src[15] <= 1;
        let v4_mapped = src[..10].iter().all(|&b| b == 0) && src[10] == 0xff && src[11] == 0xff;
        !unspecified_or_loopback && !v4_mapped && src[0] != 0xff && dst[0] != 0xff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h
    }

    fn v6(src: [u8; 16], dst: [u8; 16]) -> [u8; 40] {
        let mut h = [0u8; 40];
        h[8..24].copy_from_slice(&src);
        h[24..40].copy_from_slice(&dst);
        h
    }

    #[test]
    fn syns_the_kernel_drops_unanswered_are_told_apart_by_their_addresses() {
        let ok = [10, 0, 0, 1];
        assert!(syn_addresses_ok(&v4([192, 168, 1, 5], ok), true));
        for bad in [[0, 1, 2, 3], [127, 0, 0, 1], [224, 0, 0, 1], [255; 4]] {
            assert!(!syn_addresses_ok(&v4(bad, ok), true), "from {bad:?}");
        }
        for bad in [[0, 1, 2, 3], [224, 0, 0, 1], [255; 4]] {
            assert!(!syn_addresses_ok(&v4(ok, bad), true), "to {bad:?}");
        }
        let mut unicast = [0u8; 16];
        unicast[0] = 0xfd;
        unicast[15] = 5;
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[192, 168, 1, 5]);
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        let mut multicast = [0u8; 16];
        multicast[0] = 0xff;
        multicast[15] = 1;
        assert!(syn_addresses_ok(&v6(unicast, unicast), false));
        for bad in [[0u8; 16], loopback, mapped, multicast] {
            assert!(!syn_addresses_ok(&v6(bad, unicast), false), "from {bad:?}");
        }
        assert!(!syn_addresses_ok(&v6(unicast, multicast), false));
        assert!(!syn_addresses_ok(&[0u8; 10], true), "a short header");
    }
}
