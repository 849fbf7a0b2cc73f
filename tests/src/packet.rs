//! Frames built byte by byte, so that tests control every field the XDP parser reads: VLAN tags,
//! IPv4 options and fragment fields, IPv6 extension chains. Checksums are left zero: the
//! program never reads them.
use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// The options of a Linux client's SYN: MSS 1460, SACK permitted, timestamps (value
/// 0x01020304, echo 0), NOP, window scale 7.
pub const LINUX_SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
];

/// An IPv6 extension header of the chain, in order.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop (0), routing (43) or destination options (60), `len8` 8-byte units after the first.
    Options { kind: u8, len8: u8 },
    /// Authentication header (51), `len4` + 2 four-byte units.
    Auth { len4: u8 },
    /// Fragment header (44) with this offset (8-byte units) and more-fragments flag.
    Fragment { offset: u16, more: bool },
}

impl Ext {
    fn kind(&self) -> u8 {
        match self {
            Ext::Options { kind, .. } => *kind,
            Ext::Auth { .. } => 51,
            Ext::Fragment { .. } => 44,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Frame {
    /// Ethertypes of the VLAN tags, outermost first (0x8100 or 0x88a8).
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// IPv4 options bytes (padded to a multiple of 4, at most 40).
    pub v4_options: usize,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag.
    pub v4_fragment: (u16, bool),
    /// IPv4 don't-fragment flag.
    pub v4_df: bool,
    pub v6_exts: Vec<Ext>,
    pub payload: usize,
    /// TCP flags (byte 13 of the header): a SYN unless set.
    pub tcp_flags: u8,
    /// TCP options, padded with end-of-list bytes to a multiple of 4 (at most 40).
    pub tcp_options: Vec<u8>,
}

impl Frame {
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, dst_port: u16) -> Self {
        Frame {
            vlans: Vec::new(),
            src,
            dst,
            proto,
            src_port: 40000,
            dst_port,
            v4_options: 0,
            v4_fragment: (0, false),
            v4_df: false,
            v6_exts: Vec::new(),
            payload: 0,
            tcp_flags: 0x02,
            tcp_options: Vec::new(),
        }
    }

    pub fn tcp(src: &str, dst: &str, dst_port: u16) -> Self {
        Frame::new(parse(src), parse(dst), TCP, dst_port)
    }

    pub fn udp(src: &str, dst: &str, dst_port: u16) -> Self {
        Frame::new(parse(src), parse(dst), UDP, dst_port)
    }

    pub fn vlans(mut self, tags: &[u16]) -> Self {
        self.vlans = tags.to_vec();
        self
    }

    pub fn v4_options(mut self, bytes: usize) -> Self {
        self.v4_options = bytes;
        self
    }

    pub fn v4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.v4_fragment = (offset, more);
        self
    }

    /// Sets IPv4's don't-fragment flag, as TCP stacks doing path MTU discovery do.
    pub fn df(mut self) -> Self {
        self.v4_df = true;
        self
    }

    pub fn tcp_flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// TCP options (kind, length, value...), as a client's SYN carries them.
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_options = options.to_vec();
        self
    }

    /// A payload of `bytes` after the transport header.
    pub fn payload(mut self, bytes: usize) -> Self {
        self.payload = bytes;
        self
    }

    pub fn exts(mut self, exts: &[Ext]) -> Self {
        self.v6_exts = exts.to_vec();
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        for tag in &self.vlans {
            out.extend_from_slice(&tag.to_be_bytes());
            out.extend_from_slice(&[0x00, 0x64]); // TCI: VLAN 100
        }
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&0x0800u16.to_be_bytes());
                let opts = self.v4_options.min(40).div_ceil(4) * 4;
                let ihl = 5 + opts / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                let frag = (self.v4_fragment.0 & 0x1fff)
                    | if self.v4_fragment.1 { 0x2000 } else { 0 }
                    | if self.v4_df { 0x4000 } else { 0 };
                out.push(0x40 | ihl as u8);
                out.push(0);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&[0x12, 0x34]);
                out.extend_from_slice(&frag.to_be_bytes());
                out.extend_from_slice(&[64, self.proto, 0, 0]);
                out.extend_from_slice(&s.octets());
                out.extend_from_slice(&d.octets());
                // NOP options, then end of list.
                out.extend(std::iter::repeat_n(1u8, opts));
            }
            (s, d) => {
                let s = to_v6(s);
                let d = to_v6(d);
                out.extend_from_slice(&0x86ddu16.to_be_bytes());
                let exts = self.ext_bytes();
                let first = self.v6_exts.first().map_or(self.proto, Ext::kind);
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[first, 64]);
                out.extend_from_slice(&s);
                out.extend_from_slice(&d);
                out.extend_from_slice(&exts);
            }
        }
        out.extend_from_slice(&l4);
        out
    }

    fn ext_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, ext) in self.v6_exts.iter().enumerate() {
            let next = self.v6_exts.get(i + 1).map_or(self.proto, Ext::kind);
            match *ext {
                Ext::Options { len8, .. } => {
                    out.extend_from_slice(&[next, len8]);
                    out.extend(std::iter::repeat_n(0u8, usize::from(len8) * 8 + 6));
                }
                Ext::Auth { len4 } => {
                    out.extend_from_slice(&[next, len4]);
                    out.extend(std::iter::repeat_n(0u8, (usize::from(len4) + 2) * 4 - 2));
                }
                Ext::Fragment { offset, more } => {
                    let field = (offset << 3) | u16::from(more);
                    out.extend_from_slice(&[next, 0]);
                    out.extend_from_slice(&field.to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 1]);
                }
            }
        }
        out
    }

    fn l4(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.proto {
            TCP => {
                let mut options = self.tcp_options.clone();
                options.truncate(40);
                options.resize(options.len().div_ceil(4) * 4, 0);
                out.extend_from_slice(&self.src_port.to_be_bytes());
                out.extend_from_slice(&self.dst_port.to_be_bytes());
                out.extend_from_slice(&[
                    0,
                    0,
                    0,
                    1,
                    0,
                    0,
                    0,
                    0,
                    (5 + options.len() as u8 / 4) << 4,
                    self.tcp_flags,
                    0xff,
                    0xff,
                    0,
                    0,
                    0,
                    0,
                ]);
                out.extend_from_slice(&options);
            }
            UDP => {
                out.extend_from_slice(&self.src_port.to_be_bytes());
                out.extend_from_slice(&self.dst_port.to_be_bytes());
                out.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            _ => out.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]),
        }
        out.extend(std::iter::repeat_n(0xabu8, self.payload));
        out
    }
}

/// An ICMP (IPv4) or ICMPv6 error of type `kind`, code `code`, sent by `from` to the
/// destination of `about` (a VIP), quoting the reply to `about` (from the VIP's port back to
/// the client's): what a router on a backend's direct path back to the client sends. The
/// quote is the reply's IP header and 8 bytes (IPv6: 48 bytes); the second ICMP word holds
/// 1480 (an MTU, for "too big" errors).
pub fn icmp_error(from: IpAddr, about: &Frame, kind: u8, code: u8) -> Vec<u8> {
    let mut reply = Frame::new(about.dst, about.src, about.proto, about.src_port);
    reply.src_port = about.dst_port;
    let reply = reply.bytes();
    let v4 = about.src.is_ipv4();
    let quote = &reply[14..14 + if v4 { 28 } else { 48 }];
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xc8];
    icmp.extend_from_slice(quote);
    let mut outer = Frame::new(from, about.dst, if v4 { ICMP } else { 58 }, 0).bytes();
    let l4 = if v4 { 34 } else { 54 };
    outer.truncate(l4);
    outer.extend_from_slice(&icmp);
    let total = (outer.len() - 14) as u16;
    if v4 {
        outer[16..18].copy_from_slice(&total.to_be_bytes());
    } else {
        outer[18..20].copy_from_slice(&(total - 40).to_be_bytes());
    }
    outer
}

pub fn parse(ip: &str) -> IpAddr {
    ip.parse()
        .unwrap_or_else(|_| panic!("test address {ip:?} does not parse"))
}

fn to_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    /// Our builder and a second, independent parser agree on what the frames carry.
    #[test]
    fn built_frames_parse_with_etherparse() {
        let frames = [
            Frame::tcp("10.0.0.2", "10.0.0.1", 443)
                .vlans(&[0x88a8, 0x8100])
                .v4_options(12),
            Frame::udp("fd00::2", "fd00::1", 53).exts(&[
                Ext::Options { kind: 0, len8: 1 },
                Ext::Options { kind: 60, len8: 0 },
                Ext::Fragment {
                    offset: 0,
                    more: false,
                },
            ]),
        ];
        for f in frames {
            let bytes = f.bytes();
            let p = SlicedPacket::from_ethernet(&bytes).expect("etherparse parses our frame");
            let vlans = match p.vlan {
                None => 0,
                Some(etherparse::VlanSlice::SingleVlan(_)) => 1,
                Some(etherparse::VlanSlice::DoubleVlan(_)) => 2,
            };
            assert_eq!(vlans, f.vlans.len());
            match p.net {
                Some(NetSlice::Ipv4(ip)) => {
                    assert_eq!(IpAddr::V4(ip.header().destination_addr()), f.dst)
                }
                Some(NetSlice::Ipv6(ip)) => {
                    assert_eq!(IpAddr::V6(ip.header().destination_addr()), f.dst)
                }
                other => panic!("no IP layer: {other:?}"),
            }
            let port = match p.transport {
                Some(TransportSlice::Tcp(t)) => t.destination_port(),
                Some(TransportSlice::Udp(u)) => u.destination_port(),
                other => panic!("no transport layer: {other:?}"),
            };
            assert_eq!(port, f.dst_port);
        }
    }
}
