//! The validated configuration: every flag parsed and range-checked once, every file it names
//! read, so that the rest of the daemon never handles a raw string again.
mod error;
mod parse;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::acl::{AccessControl, AclMode};
use crate::cli::{AccessControlArg, RunArgs, XdpModeArg};
pub use error::ConfigError;

#[derive(Clone, Debug)]
pub struct Config {
    pub listener: ListenerConfig,
    pub group: GroupConfig,
    pub xdp: XdpConfig,
}

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: ServerIdentity,
    pub access: AccessControl,
}

/// The default certificate: where it came from and the loaded, key-checked pair.
#[derive(Clone)]
pub struct ServerIdentity {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub certified: Arc<CertifiedKey>,
}

impl fmt::Debug for ServerIdentity {
    // The key never reaches a log line, whatever rustls' own Debug would print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("chain_len", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub name: String,
    pub backends: Vec<Backend>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// 0-100; 0 receives no new requests.
    pub weight: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Skb,
    Off,
}

#[derive(Clone, Debug)]
pub struct XdpConfig {
    /// Interfaces to attach to; empty means XDP is off.
    pub ifaces: Vec<String>,
    pub mode: XdpMode,
}

impl XdpConfig {
    pub fn enabled(&self) -> bool {
        !self.ifaces.is_empty() && self.mode != XdpMode::Off
    }
}

impl Config {
    /// Validates every flag and loads every file the flags name.
    pub fn from_args(args: &RunArgs) -> Result<Config, ConfigError> {
        let name = parse::label("--name", &args.name)?;
        let group_name = parse::label("--group-name", &args.group_name)?;
        let listen = args.listen.as_deref().ok_or_else(|| {
            ConfigError::missing("--listen", "required: the ADDR:PORT to accept HTTPS on")
        })?;
        let listen = parse::socket_addr("--listen", listen)?;
        let cert = args
            .cert
            .as_ref()
            .ok_or_else(|| ConfigError::missing("--cert", "required for an https listener"))?;
        let key = args
            .key
            .as_ref()
            .ok_or_else(|| ConfigError::missing("--key", "required for an https listener"))?;
        let certified = crate::tls::load_certified_key(cert, key)?;

        let mut prefixes = Vec::new();
        for group in &args.ip_groups {
            prefixes.extend(parse::cidr_list("--ip-group", group)?);
        }
        for file in &args.ip_group_files {
            prefixes.extend(parse::cidr_file(file)?);
        }
        prefixes.sort();
        prefixes.dedup();
        let acl_mode = match args.access_control {
            AccessControlArg::All => AclMode::All,
            AccessControlArg::Whitelist => AclMode::Whitelist,
            AccessControlArg::Blacklist => AclMode::Blacklist,
        };
        match acl_mode {
            AclMode::All if !prefixes.is_empty() => {
                return Err(ConfigError::new(
                    "--access-control",
                    "all",
                    "an IP address group was given but would have no effect: use whitelist or blacklist",
                ));
            }
            AclMode::Whitelist | AclMode::Blacklist if prefixes.is_empty() => {
                return Err(ConfigError::new(
                    "--access-control",
                    acl_mode.name(),
                    "needs an IP address group: give --ip-group CIDR,... or --ip-group-file PATH",
                ));
            }
            _ => {}
        }

        if args.backends.is_empty() {
            return Err(ConfigError::missing(
                "--backend",
                "at least one backend is required: --backend ADDR:PORT[,weight=N]",
            ));
        }
        let backends = args
            .backends
            .iter()
            .map(|b| parse::backend(b))
            .collect::<Result<Vec<_>, _>>()?;

        let mode = match args.xdp_mode {
            XdpModeArg::Auto => XdpMode::Auto,
            XdpModeArg::Native => XdpMode::Native,
            XdpModeArg::Skb => XdpMode::Skb,
            XdpModeArg::Off => XdpMode::Off,
        };
        let mut ifaces = Vec::new();
        for iface in &args.xdp_ifaces {
            if mode != XdpMode::Off {
                parse::interface(iface)?;
            }
            if !ifaces.contains(iface) {
                ifaces.push(iface.clone());
            }
        }

        Ok(Config {
            listener: ListenerConfig {
                name,
                listen,
                tls: ServerIdentity {
                    cert_path: cert.clone(),
                    key_path: key.clone(),
                    certified,
                },
                access: AccessControl {
                    mode: acl_mode,
                    prefixes,
                },
            },
            group: GroupConfig {
                name: group_name,
                backends,
            },
            xdp: XdpConfig { ifaces, mode },
        })
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.listener;
        writeln!(f, "listener {:?}", l.name)?;
        writeln!(f, "  protocol        https")?;
        writeln!(f, "  listen          {}", l.listen)?;
        writeln!(
            f,
            "  cert            {} ({} certificate(s) in chain)",
            l.tls.cert_path.display(),
            l.tls.certified.cert.len()
        )?;
        writeln!(f, "  key             {}", l.tls.key_path.display())?;
        write!(f, "  access-control  {}", l.access.mode.name())?;
        if l.access.mode != AclMode::All {
            let list: Vec<String> = l.access.prefixes.iter().map(ToString::to_string).collect();
            write!(f, " ({} prefixes: {})", list.len(), list.join(", "))?;
        }
        writeln!(f)?;
        writeln!(f, "group {:?}", self.group.name)?;
        writeln!(f, "  algorithm       weighted-round-robin")?;
        for b in &self.group.backends {
            writeln!(f, "  backend         {} weight={}", b.addr, b.weight)?;
        }
        writeln!(f, "xdp")?;
        if self.xdp.enabled() {
            let mode = match self.xdp.mode {
                XdpMode::Auto => "auto",
                XdpMode::Native => "native",
                XdpMode::Skb => "skb",
                XdpMode::Off => "off",
            };
            writeln!(f, "  mode            {mode}")?;
            writeln!(f, "  interfaces      {}", self.xdp.ifaces.join(", "))?;
        } else {
            writeln!(
                f,
                "  mode            off (access control enforced on accept only)"
            )?;
        }
        Ok(())
    }
}
