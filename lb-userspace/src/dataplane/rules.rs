//! The data plane's view of the configuration: listeners as map keys and values, source
//! prefixes as trie keys. Built from the validated config, compared with what the maps hold.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use lb_common::{
    ACL_LISTENER_ID_BITS, ANY, ANY_V4, AclV4, AclV6, ListenerInfo, ListenerKey, NO_GROUP, acl,
    v4_mapped,
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

    pub fn info(&self) -> ListenerInfo {
        ListenerInfo {
            id: self.id,
            acl: match self.mode {
                AclMode::All => acl::ALL,
                AclMode::Whitelist => acl::ALLOW,
                AclMode::Blacklist => acl::DENY,
            },
            l4_group: NO_GROUP,
        }
    }
}

/// Trie keys as plain tuples so that sets of them can be compared: (prefix_len, data).
pub type V4Entry = (u32, [u8; 8]);
pub type V6Entry = (u32, [u8; 20]);

/// The complete desired content of the maps.
#[derive(Debug, Default)]
pub struct DesiredMaps {
    pub listeners: BTreeMap<[u8; 20], ListenerInfo>,
    pub acl_v4: BTreeSet<V4Entry>,
    pub acl_v6: BTreeSet<V6Entry>,
}

impl DesiredMaps {
    pub fn from_rules(rules: &[ListenerRule]) -> Self {
        let mut out = DesiredMaps::default();
        for rule in rules {
            let key: [u8; 20] = bytemuck::cast(rule.key());
            out.listeners.insert(key, rule.info());
            if rule.mode == AclMode::All {
                continue;
            }
            let id = rule.id.to_be_bytes();
            for net in &rule.prefixes {
                match net.trunc() {
                    IpNet::V4(n) => {
                        let data = AclV4 {
                            listener_id: id,
                            addr: n.network().octets(),
                        };
                        out.acl_v4.insert((
                            ACL_LISTENER_ID_BITS + u32::from(n.prefix_len()),
                            bytemuck::cast(data),
                        ));
                    }
                    IpNet::V6(n) => {
                        let data = AclV6 {
                            listener_id: id,
                            addr: n.network().octets(),
                        };
                        out.acl_v6.insert((
                            ACL_LISTENER_ID_BITS + u32::from(n.prefix_len()),
                            bytemuck::cast(data),
                        ));
                    }
                }
            }
        }
        out
    }
}
