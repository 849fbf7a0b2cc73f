//! The data plane's view of the configuration: listeners as map keys and values, source
//! prefixes as trie keys. Built from the validated config, compared with what the maps hold.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use lb_common::{
    ACL_LISTENER_ID_BITS, ANY, ANY_V4, AclV4, AclV6, ListenerInfo, ListenerKey, NO_GROUP, acl,
    l4_flags, port_slot, rate_interval_ns, syn_cookies, v4_mapped,
};

use crate::acl::AclMode;

/// One listener as the XDP program sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerRule {
    pub id: u32,
    pub addr: SocketAddr,
    pub proto: u8,
    pub mode: AclMode,
    pub prefixes: Vec<IpNet>,
    pub limits: SourceLimits,
    pub syn_cookies: SynCookies,
}

/// What the XDP program does with a listener's new connections (SYNs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SynCookies {
    /// Passes them to the kernel.
    #[default]
    Off,
    /// Passes them, and counts them for the daemon (`--syn-protect auto`, not answering).
    Watch,
    /// Answers them with SYN cookies, and counts them.
    Answer,
}

impl SynCookies {
    fn bits(self) -> u32 {
        match self {
            SynCookies::Off => 0,
            SynCookies::Watch => syn_cookies::WATCH,
            SynCookies::Answer => syn_cookies::WATCH | syn_cookies::ANSWER,
        }
    }
}

/// Per-source limits the XDP program holds a listener's clients to (each source an IPv4
/// address or an IPv6 /64); 0: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceLimits {
    /// New TCP connections (SYNs) per second.
    pub syn_per_sec: u32,
    /// Frames per second, of any kind.
    pub pps: u32,
    /// Seconds a source over a limit for a second is blocked; 0: never.
    pub block_secs: u32,
}

impl ListenerRule {
    pub fn key(&self) -> ListenerKey {
        let addr = match self.addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => ANY_V4,
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) if v6.is_unspecified() => ANY,
            IpAddr::V6(v6) => v6.octets(),
        };
        ListenerKey::new(addr, self.addr.port(), self.proto)
    }

    /// Adds the listener's ACL trie entries under ACL set `set` (none in mode All).
    pub fn acl_entries(&self, set: u32, v4: &mut BTreeSet<V4Entry>, v6: &mut BTreeSet<V6Entry>) {
        if self.mode == AclMode::All {
            return;
        }
        let set = set.to_be_bytes();
        for net in &self.prefixes {
            match net.trunc() {
                IpNet::V4(n) => {
                    let data = AclV4 {
                        listener_id: set,
                        addr: n.network().octets(),
                    };
                    v4.insert((
                        ACL_LISTENER_ID_BITS + u32::from(n.prefix_len()),
                        bytemuck::cast(data),
                    ));
                }
                IpNet::V6(n) => {
                    let data = AclV6 {
                        listener_id: set,
                        addr: n.network().octets(),
                    };
                    v6.insert((
                        ACL_LISTENER_ID_BITS + u32::from(n.prefix_len()),
                        bytemuck::cast(data),
                    ));
                }
            }
        }
    }

    /// The listener's map value, served in userspace ([`NO_GROUP`]).
    pub fn info(&self) -> ListenerInfo {
        self.info_in_group(NO_GROUP)
    }

    /// The listener's map value, its admitted packets balanced by the XDP program over backend
    /// `l4_group`'s Maglev ring ([`NO_GROUP`]: served in userspace), without a flow table.
    pub fn info_in_group(&self, l4_group: u32) -> ListenerInfo {
        self.info_l4(&L4Listener::in_group(l4_group))
    }

    /// The listener's map value as an L4 listener forwarded as `l4` says.
    pub fn info_l4(&self, l4: &L4Listener) -> ListenerInfo {
        ListenerInfo {
            id: self.id,
            acl: match self.mode {
                AclMode::All => acl::ALL,
                AclMode::Whitelist => acl::ALLOW,
                AclMode::Blacklist => acl::DENY,
            },
            l4_group: l4.group,
            flow_secs: l4.flow_secs,
            l4_flags: if l4.hash_src_port {
                l4_flags::HASH_SRC_PORT
            } else {
                0
            },
            syn_interval_ns: rate_interval_ns(self.limits.syn_per_sec),
            pps_interval_ns: rate_interval_ns(self.limits.pps),
            block_secs: self.limits.block_secs,
            // Cookies answer for the kernel's own listening socket: not for L4 listeners.
            syn_cookies: if l4.group == NO_GROUP {
                self.syn_cookies.bits()
            } else {
                0
            },
            acl_set: self.id,
        }
    }
}

/// L4 listeners: listener id -> the backend group whose Maglev ring the XDP program picks
/// their clients' backends from. Listeners not in it are served in userspace.
pub type L4Groups = BTreeMap<u32, u32>;

/// How the XDP program forwards one L4 listener's admitted frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Listener {
    /// The backend group (0..MAX_L4_GROUPS).
    pub group: u32,
    /// Seconds an idle flow stays on its backend across ring changes; 0: no flow table.
    pub flow_secs: u32,
    /// Hash source address and port (spread one client's connections) rather than the
    /// address alone (keep them on one backend).
    pub hash_src_port: bool,
}

impl L4Listener {
    /// Group `group`, no flow table, address hashing: what [`L4Groups`] means.
    pub const fn in_group(group: u32) -> Self {
        L4Listener {
            group,
            flow_secs: 0,
            hash_src_port: false,
        }
    }
}

/// L4 listeners by listener id, with their forwarding settings.
pub type L4Listeners = BTreeMap<u32, L4Listener>;

/// The [`L4Listeners`] of plain [`L4Groups`].
pub fn l4_listeners(groups: &L4Groups) -> L4Listeners {
    groups
        .iter()
        .map(|(id, group)| (*id, L4Listener::in_group(*group)))
        .collect()
}

/// Trie keys as plain tuples so that sets of them can be compared: (prefix_len, data).
pub type V4Entry = (u32, [u8; 8]);
pub type V6Entry = (u32, [u8; 20]);

/// Each listener's ACL set ([`ListenerInfo::acl_set`]) by id; a listener not in it uses its id.
pub type AclSets = BTreeMap<u32, u32>;

/// The listeners of one (port, protocol).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortListeners {
    /// Any listener on one address.
    pub exact: bool,
    /// On [`ANY_V4`] (IPv4 frames only).
    pub any_v4: Option<ListenerInfo>,
    /// On [`ANY`] (both families).
    pub any: Option<ListenerInfo>,
}

/// The complete desired content of the maps.
#[derive(Debug, Default)]
pub struct DesiredMaps {
    /// Listeners on one address (`LISTENERS`).
    pub listeners: BTreeMap<[u8; 20], ListenerInfo>,
    /// The ports with listeners: whether any is on one address, and the wildcard listeners
    /// (which the `PORTS` entry points at in `WILDCARDS`).
    pub ports: BTreeMap<u32, PortListeners>,
    pub acl_v4: BTreeSet<V4Entry>,
    pub acl_v6: BTreeSet<V6Entry>,
}

impl DesiredMaps {
    /// The maps for `rules`. A later rule with the same address, port and protocol replaces an
    /// earlier one. Rules whose protocol is neither TCP nor UDP are returned as the error.
    pub fn from_rules(rules: &[ListenerRule]) -> Result<Self, u8> {
        Self::from_rules_l4(rules, &L4Listeners::new(), &AclSets::new())
    }

    /// As [`DesiredMaps::from_rules`], with the listeners of `l4` forwarded in XDP and the ACL
    /// sets of `acl_sets`.
    pub fn from_rules_l4(
        rules: &[ListenerRule],
        l4: &L4Listeners,
        acl_sets: &AclSets,
    ) -> Result<Self, u8> {
        let mut out = DesiredMaps::default();
        for rule in rules {
            let key = rule.key();
            let slot = port_slot(key.port, key.proto).ok_or(key.proto)?;
            let mut info = match l4.get(&rule.id) {
                Some(l) => rule.info_l4(l),
                None => rule.info(),
            };
            info.acl_set = acl_sets.get(&rule.id).copied().unwrap_or(rule.id);
            let port = out.ports.entry(slot).or_default();
            match key.addr {
                ANY_V4 => port.any_v4 = Some(info),
                ANY => port.any = Some(info),
                _ => {
                    port.exact = true;
                    out.listeners.insert(bytemuck::cast(key), info);
                }
            }
            rule.acl_entries(info.acl_set, &mut out.acl_v4, &mut out.acl_v6);
        }
        Ok(out)
    }
}
