//! BGP settings: who this node is to its routers and when it announces its listeners.
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::spec::NodeSpec;
pub use super::values::{BgpAnnounce, BgpPeer};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Unique addresses.
    pub peers: Vec<BgpPeer>,
    pub hold_time: Duration,
    /// How long routes stay withdrawn before the listeners close on SIGTERM.
    pub withdraw_delay: Duration,
    pub announce: BgpAnnounce,
    pub bfd: bool,
    /// The BIRD daemon; its client is the same path with a trailing `c`.
    pub speaker: PathBuf,
}

/// None without `--bgp-local-as`; then no other BGP setting may be given.
pub fn bgp(node: &NodeSpec) -> Result<Option<BgpConfig>, ConfigError> {
    let Some(local_as) = node.bgp_local_as else {
        if let Some(peer) = node.bgp_peer.first() {
            return Err(ConfigError::new(
                "--bgp-peer",
                peer.to_string(),
                "needs --bgp-local-as: this node's AS number",
            ));
        }
        if let Some(id) = node.bgp_router_id {
            return Err(ConfigError::new(
                "--bgp-router-id",
                id.0.to_string(),
                "needs --bgp-local-as: this node's AS number",
            ));
        }
        // The other settings have defaults: one that differs was given, for nothing.
        let d = NodeSpec::default();
        let given = [
            ("--bgp-hold-time", node.bgp_hold_time != d.bgp_hold_time),
            (
                "--bgp-withdraw-delay",
                node.bgp_withdraw_delay != d.bgp_withdraw_delay,
            ),
            ("--bgp-announce", node.bgp_announce != d.bgp_announce),
            ("--bgp-bfd", node.bgp_bfd),
            ("--bgp-speaker", node.bgp_speaker != d.bgp_speaker),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            return Err(ConfigError::missing(
                *flag,
                "has no effect without --bgp-local-as: this node's AS number",
            ));
        }
        return Ok(None);
    };
    let router_id = node.bgp_router_id.ok_or_else(|| {
        ConfigError::missing(
            "--bgp-router-id",
            "required with --bgp-local-as: an IPv4 address of this node",
        )
    })?;
    if router_id.0.is_unspecified() || router_id.0.is_broadcast() {
        return Err(ConfigError::new(
            "--bgp-router-id",
            router_id.0.to_string(),
            "expected an IPv4 address of this node",
        ));
    }
    if node.bgp_peer.is_empty() {
        return Err(ConfigError::missing(
            "--bgp-peer",
            "required with --bgp-local-as, at least one: ADDR,as=ASN of a router",
        ));
    }
    for (i, p) in node.bgp_peer.iter().enumerate() {
        if node.bgp_peer[..i].iter().any(|o| o.addr == p.addr) {
            return Err(ConfigError::new(
                "--bgp-peer",
                p.to_string(),
                "this address is given twice; give each peer once",
            ));
        }
        if p.addr.is_unspecified() || matches!(p.addr, IpAddr::V4(a) if a.is_broadcast()) {
            return Err(ConfigError::new(
                "--bgp-peer",
                p.to_string(),
                "expected a router's address",
            ));
        }
        if matches!(p.addr, IpAddr::V6(a) if a.is_unicast_link_local()) {
            return Err(ConfigError::new(
                "--bgp-peer",
                p.to_string(),
                "a link-local address needs an interface, which BIRD is not given: use the \
                 router's global or unique local address",
            ));
        }
    }
    Ok(Some(BgpConfig {
        local_as: local_as.0,
        router_id: router_id.0,
        peers: node.bgp_peer.clone(),
        hold_time: node.bgp_hold_time.0,
        withdraw_delay: node.bgp_withdraw_delay.0,
        announce: node.bgp_announce,
        bfd: node.bgp_bfd,
        speaker: node.bgp_speaker.clone(),
    }))
}
