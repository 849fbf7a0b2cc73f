//! Listener access control as the daemon enforces it on accept: the same decision the XDP
//! program makes, for when XDP is off, not permitted, or the packet was passed unclassified.
//!
//! Every accepted connection is checked, so the check must not grow with the IP group: the
//! prefixes are compiled once into sorted, merged address ranges per family and looked up by
//! binary search (17 steps at 100,000 prefixes, against a scan of all of them).
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};

/// `--access-control`: its words are the flag's and the file key's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AclMode {
    All,
    #[value(alias = "allowlist")]
    Whitelist,
    #[value(alias = "denylist")]
    Blacklist,
}

impl AclMode {
    pub fn name(self) -> &'static str {
        match self {
            AclMode::All => "all",
            AclMode::Whitelist => "whitelist",
            AclMode::Blacklist => "blacklist",
        }
    }
}

/// A listener's access control: the mode and its IP address group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessControl {
    pub mode: AclMode,
    /// The group as configured (for display and the XDP maps).
    pub prefixes: Vec<IpNet>,
    /// The same group as lookup ranges, shared by the copies each worker holds.
    ranges: Arc<PrefixRanges>,
}

impl AccessControl {
    /// IPv4-mapped IPv6 prefixes (`::ffff:203.0.113.0/120`) are kept as the IPv4 prefixes
    /// they cover: clients are matched as IPv4 (in XDP and on accept alike), so an entry kept
    /// as IPv6 would never match anyone.
    pub fn new(mode: AclMode, prefixes: Vec<IpNet>) -> Self {
        let prefixes: Vec<IpNet> = prefixes.into_iter().map(unmapped).collect();
        let ranges = Arc::new(PrefixRanges::new(&prefixes));
        AccessControl {
            mode,
            prefixes,
            ranges,
        }
    }

    /// Whether a client at `addr` may connect. IPv4-mapped IPv6 addresses (seen on dual-stack
    /// sockets) are checked as the IPv4 address they carry, as the XDP program does.
    pub fn admits(&self, addr: IpAddr) -> bool {
        let listed = || self.ranges.contains(addr);
        match self.mode {
            AclMode::All => true,
            AclMode::Whitelist => listed(),
            AclMode::Blacklist => !listed(),
        }
    }
}

/// An IPv4-mapped IPv6 prefix of length 96 or more as the IPv4 prefix it covers; any other
/// prefix as it is.
pub fn unmapped(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4);
    }
    net
}

/// Prefixes as inclusive address ranges, sorted and merged so that no two overlap or touch:
/// an address is covered when the last range starting at or before it reaches it.
#[derive(Debug, Default, PartialEq, Eq)]
struct PrefixRanges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl PrefixRanges {
    fn new(prefixes: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in prefixes {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        PrefixRanges {
            v4: merged(v4),
            v6: merged(v6),
        }
    }

    fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => covered(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => covered(&self.v4, u32::from(v4)),
                None => covered(&self.v6, u128::from(a)),
            },
        }
    }
}

/// Sorts ranges and joins those that overlap or are adjacent.
fn merged<T: Ord + Copy + Into<u128>>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start.into() <= last.1.into().saturating_add(1) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out
}

fn covered<T: Ord + Copy>(ranges: &[(T, T)], addr: T) -> bool {
    // Ranges are disjoint and sorted: only the last one starting at or before `addr` can hold it.
    let after = ranges.partition_point(|&(start, _)| start <= addr);
    after > 0 && ranges[after - 1].1 >= addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_prefixes_cover_the_ipv4_clients_they_name() {
        let a = acl(
            AclMode::Blacklist,
            &["::ffff:203.0.113.0/120", "::ffff:0:0/95"],
        );
        assert_eq!(
            a.prefixes[0],
            "203.0.113.0/24".parse::<IpNet>().expect("v4")
        );
        assert_eq!(a.prefixes[1], "::ffff:0:0/95".parse::<IpNet>().expect("v6"));
        for client in ["203.0.113.9", "::ffff:203.0.113.9"] {
            assert!(!a.admits(client.parse().expect("addr")), "{client}");
        }
        assert!(a.admits("203.0.114.9".parse().expect("addr")));
    }

    fn acl(mode: AclMode, nets: &[&str]) -> AccessControl {
        AccessControl::new(
            mode,
            nets.iter().map(|n| n.parse().expect("test CIDR")).collect(),
        )
    }

    #[test]
    fn whitelist_admits_only_listed_and_maps_v4_in_v6() {
        let a = acl(AclMode::Whitelist, &["10.1.0.0/16", "fd00::/64"]);
        assert!(a.admits("10.1.2.3".parse().expect("ip")));
        assert!(a.admits("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(a.admits("fd00::9".parse().expect("ip")));
        assert!(!a.admits("10.2.0.1".parse().expect("ip")));
        assert!(!a.admits("fd00:1::9".parse().expect("ip")));
    }

    #[test]
    fn blacklist_refuses_only_listed() {
        let a = acl(AclMode::Blacklist, &["10.1.0.0/16"]);
        assert!(!a.admits("10.1.2.3".parse().expect("ip")));
        assert!(!a.admits("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(a.admits("10.2.0.1".parse().expect("ip")));
        assert!(acl(AclMode::All, &[]).admits("1.2.3.4".parse().expect("ip")));
    }

    /// The ranges must decide as a scan of the prefixes does, with nested, adjacent and
    /// overlapping prefixes of both families.
    #[test]
    fn ranges_agree_with_a_scan_of_the_prefixes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Addresses in a small space, so prefixes collide, nest and touch often.
        let v4 = |r: u64| std::net::Ipv4Addr::from(0x0a00_0000 | (r as u32 & 0xffff));
        let v6 = |r: u64| std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(r as u16));
        for _ in 0..50 {
            let mut nets = Vec::new();
            for _ in 0..(next() % 40) {
                let net = if next() % 2 == 0 {
                    IpNet::new(v4(next()).into(), 16 + (next() % 17) as u8)
                } else {
                    IpNet::new(v6(next()).into(), 112 + (next() % 17) as u8)
                };
                nets.push(net.expect("valid prefix length").trunc());
            }
            let a = AccessControl::new(AclMode::Whitelist, nets.clone());
            for _ in 0..500 {
                let addr: IpAddr = match next() % 3 {
                    0 => v4(next()).into(),
                    1 => v4(next()).to_ipv6_mapped().into(),
                    _ => v6(next()).into(),
                };
                let canonical = addr.to_canonical();
                let scan = nets.iter().any(|n| n.contains(&canonical));
                assert_eq!(a.admits(addr), scan, "{addr} against {nets:?}");
            }
        }
        let all = AccessControl::new(
            AclMode::Blacklist,
            vec![
                "0.0.0.0/0".parse().expect("cidr"),
                "::/0".parse().expect("cidr"),
            ],
        );
        assert!(!all.admits("255.255.255.255".parse().expect("ip")));
        assert!(!all.admits("ffff::1".parse().expect("ip")));
    }
}
