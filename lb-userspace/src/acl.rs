//! Listener access control as the daemon enforces it on accept: the same decision the XDP
//! program makes, for when XDP is off, not permitted, or the packet was passed unclassified.
use std::net::IpAddr;

use ipnet::IpNet;

/// `--access-control`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclMode {
    All,
    Whitelist,
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
    pub prefixes: Vec<IpNet>,
}

impl AccessControl {
    /// Whether a client at `addr` may connect. IPv4-mapped IPv6 addresses (seen on dual-stack
    /// sockets) are checked as the IPv4 address they carry, as the XDP program does.
    pub fn admits(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        let listed = self.prefixes.iter().any(|net| net.contains(&addr));
        match self.mode {
            AclMode::All => true,
            AclMode::Whitelist => listed,
            AclMode::Blacklist => !listed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(mode: AclMode, nets: &[&str]) -> AccessControl {
        AccessControl {
            mode,
            prefixes: nets.iter().map(|n| n.parse().expect("test CIDR")).collect(),
        }
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
}
