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
