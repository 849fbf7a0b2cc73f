//! The validated configuration: every flag parsed and range-checked once, every file it names
//! read, so that the rest of the daemon never handles a raw string again.
mod display;
mod error;
mod parse;
mod rule_flag;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;

use crate::acl::{AccessControl, AclMode};
use crate::balance::Algorithm;
use crate::cli::{
    AccessControlArg, AlgorithmArg, BackendProtocolArg, HealthCheckArg, OnOff, ProtocolArg,
    RunArgs, SslAuthArg, StickyArg, XdpModeArg,
};
use crate::health::{CheckKind, HealthCheck};
use crate::proxy::sticky::{StickTable, Stickiness, StickyKey, validate_cookie_name};
use crate::rules::{RuleSet, RuleSpec};
use crate::tls::certs::{CertError, PairFile, load_ca_bundle, load_certified_key};
use crate::tls::{SniName, TlsPolicy, TlsSettings};
pub use error::ConfigError;

#[derive(Clone, Debug)]
pub struct Config {
    pub listener: ListenerConfig,
    pub group: GroupConfig,
    pub xdp: XdpConfig,
    pub ops: OpsConfig,
}

/// How the node is operated: admin endpoint, shutdown.
#[derive(Clone, Debug)]
pub struct OpsConfig {
    pub admin: Option<SocketAddr>,
    pub admin_allow_remote: bool,
    pub drain_timeout: Duration,
    pub access_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendProtocol {
    Https,
    Http,
}

impl FrontendProtocol {
    pub fn scheme(self) -> &'static str {
        match self {
            FrontendProtocol::Https => "https",
            FrontendProtocol::Http => "http",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
    pub protocol: FrontendProtocol,
    pub listen: SocketAddr,
    /// Present exactly when the protocol is https.
    pub tls: Option<ListenerTls>,
    pub http2: bool,
    pub access: AccessControl,
    pub transfer_lb_ip: TransferLbIp,
    pub timeouts: Timeouts,
    /// Advanced forwarding, compiled; the specs are kept for `check`.
    pub rules: Arc<RuleSet>,
    pub rule_specs: Vec<RuleSpec>,
}

/// The TLS half of an https listener: the loaded settings and the files they came from.
#[derive(Clone)]
pub struct ListenerTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub sni_files: Vec<(SniName, PathBuf, PathBuf)>,
    pub client_ca_path: Option<PathBuf>,
    pub settings: TlsSettings,
}

impl std::fmt::Debug for ListenerTls {
    // Paths and counts only: the keys never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("sni_files", &self.sni_files)
            .field("client_ca_path", &self.client_ca_path)
            .field("policy", &self.settings.policy)
            .finish_non_exhaustive()
    }
}

/// Whether and what to send as `X-Forwarded-ELB-IP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferLbIp {
    Off,
    /// The local address the client connected to.
    LocalAddress,
    Fixed(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Zero: close after each response.
    pub idle: Duration,
    pub request: Duration,
    pub response: Duration,
}

#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub name: String,
    pub description: Option<String>,
    pub backends: Vec<Backend>,
    pub algorithm: Algorithm,
    pub protocol: BackendProtocol,
    /// `--hc-domain`: the SNI name for HTTPS backends and the health checks' Host.
    pub hc_domain: Option<String>,
    pub health: HealthCheck,
    pub slow_start: Option<Duration>,
    pub sticky: Option<Arc<Stickiness>>,
    /// Where the lb-cookie key came from, for `check` (None: generated at start).
    pub sticky_key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// 0-100; 0 receives no new requests.
    pub weight: u8,
}

#[derive(Clone, Debug)]
pub enum BackendProtocol {
    Http,
    Https(BackendVerify),
}

#[derive(Clone)]
pub enum BackendVerify {
    Ca(PathBuf, Arc<RootCertStore>),
    Insecure,
}

impl std::fmt::Debug for BackendVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendVerify::Ca(path, roots) => {
                write!(f, "Ca({}, {} roots)", path.display(), roots.len())
            }
            BackendVerify::Insecure => f.write_str("Insecure"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Skb,
    Off,
}

impl XdpMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
            XdpMode::Off => "off",
        }
    }
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
        let listen = args.listen.as_deref().ok_or_else(|| {
            ConfigError::missing("--listen", "required: the ADDR:PORT to accept clients on")
        })?;
        let listen = parse::socket_addr("--listen", listen)?;
        let protocol = match args.protocol {
            ProtocolArg::Https => FrontendProtocol::Https,
            ProtocolArg::Http => FrontendProtocol::Http,
            ProtocolArg::Tcp | ProtocolArg::Udp => {
                return Err(ConfigError::new(
                    "--protocol",
                    if args.protocol == ProtocolArg::Tcp {
                        "tcp"
                    } else {
                        "udp"
                    },
                    "L4 (XDP-forwarded) listeners are not available in this version; use https or http",
                ));
            }
        };
        let tls = match protocol {
            FrontendProtocol::Https => Some(listener_tls(args)?),
            FrontendProtocol::Http => {
                refuse_tls_flags_on_http(args)?;
                None
            }
        };
        let transfer_lb_ip = match args.transfer_lb_ip.as_deref() {
            None => TransferLbIp::Off,
            Some("") => TransferLbIp::LocalAddress,
            Some(ip) => TransferLbIp::Fixed(ip.parse().map_err(|_| {
                ConfigError::new(
                    "--transfer-lb-ip",
                    ip,
                    "expected an IPv4 or IPv6 address, or no value for the local address",
                )
            })?),
        };
        let timeouts = Timeouts {
            idle: parse::seconds("--idle-timeout", &args.idle_timeout, 0, 4000)?,
            request: parse::seconds("--request-timeout", &args.request_timeout, 1, 300)?,
            response: parse::seconds("--response-timeout", &args.response_timeout, 1, 300)?,
        };
        let group = group(args)?;
        let rule_specs = args
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule_flag::parse(r, i, &group.name))
            .collect::<Result<Vec<_>, _>>()?;
        let rules = RuleSet::compile(&rule_specs, &[group.name.as_str()]).map_err(|e| {
            let value = args
                .rules
                .iter()
                .find(|r| r.contains(&e.rule))
                .cloned()
                .unwrap_or_else(|| e.rule.clone());
            ConfigError::new("--rule", value, e.to_string())
        })?;
        Ok(Config {
            listener: ListenerConfig {
                name: parse::label("--name", &args.name)?,
                description: args
                    .description
                    .as_deref()
                    .map(|d| parse::description("--description", d))
                    .transpose()?,
                tags: parse::tags(&args.tags)?,
                protocol,
                listen,
                tls,
                http2: args.http2 == OnOff::On,
                access: access_control(args)?,
                transfer_lb_ip,
                timeouts,
                rules: Arc::new(rules),
                rule_specs,
            },
            group,
            xdp: xdp(args)?,
            ops: OpsConfig {
                admin: args
                    .admin
                    .as_deref()
                    .map(|a| admin_addr(a, args.admin_allow_remote))
                    .transpose()?,
                admin_allow_remote: args.admin_allow_remote,
                drain_timeout: parse::seconds("--drain-timeout", &args.drain_timeout, 0, 300)?,
                access_log: args.access_log,
            },
        })
    }
}

fn admin_addr(value: &str, allow_remote: bool) -> Result<SocketAddr, ConfigError> {
    let addr = parse::socket_addr("--admin", value)?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(ConfigError::new(
            "--admin",
            value,
            "not a loopback address: the admin endpoint exposes the node's state; add --admin-allow-remote to serve it there",
        ));
    }
    Ok(addr)
}

fn listener_tls(args: &RunArgs) -> Result<ListenerTls, ConfigError> {
    let cert = args
        .cert
        .as_ref()
        .ok_or_else(|| ConfigError::missing("--cert", "required for an https listener"))?;
    let key = args
        .key
        .as_ref()
        .ok_or_else(|| ConfigError::missing("--key", "required for an https listener"))?;
    let policy_name = args.tls_policy.as_deref().unwrap_or("tls-1-2");
    let policy = TlsPolicy::parse(policy_name)
        .map_err(|problem| ConfigError::new("--tls-policy", policy_name, problem))?;
    let provider = policy.provider();
    let default = load_certified_key(cert, key, &provider).map_err(|e| pair_error(e, cert, key))?;

    let mut sni = Vec::with_capacity(args.sni_certs.len());
    let mut sni_files = Vec::with_capacity(args.sni_certs.len());
    for value in &args.sni_certs {
        let (name, cert, key) = parse::sni_cert(value)?;
        if sni_files.iter().any(|(n, _, _)| *n == name) {
            return Err(ConfigError::new(
                "--sni-cert",
                value,
                format!("{} is given twice", name.as_str()),
            ));
        }
        let certified = load_certified_key(&cert, &key, &provider).map_err(|e| {
            ConfigError::new(
                "--sni-cert",
                value,
                format!(
                    "{}: {}",
                    match e.file {
                        PairFile::Cert => cert.display(),
                        PairFile::Key => key.display(),
                    },
                    e.problem
                ),
            )
        })?;
        sni.push((name.clone(), certified));
        sni_files.push((name, cert, key));
    }

    let client_ca = match &args.client_ca {
        Some(path) => Some(load_ca_bundle(path).map_err(|problem| {
            ConfigError::new("--client-ca", path.display().to_string(), problem)
        })?),
        None => None,
    };
    match (args.ssl_auth, &client_ca) {
        (Some(SslAuthArg::Mutual), None) => {
            return Err(ConfigError::new(
                "--ssl-auth",
                "mutual",
                "needs --client-ca PATH: the CA that client certificates must chain to",
            ));
        }
        (Some(SslAuthArg::OneWay), Some(_)) => {
            return Err(ConfigError::new(
                "--ssl-auth",
                "one-way",
                "contradicts --client-ca, which asks for client certificates; drop one of them",
            ));
        }
        _ => {}
    }
    Ok(ListenerTls {
        cert_path: cert.clone(),
        key_path: key.clone(),
        sni_files,
        client_ca_path: args.client_ca.clone(),
        settings: TlsSettings {
            default,
            sni,
            client_ca,
            policy,
        },
    })
}

fn pair_error(e: CertError, cert: &std::path::Path, key: &std::path::Path) -> ConfigError {
    match e.file {
        PairFile::Cert => ConfigError::new("--cert", cert.display().to_string(), e.problem),
        PairFile::Key => ConfigError::new("--key", key.display().to_string(), e.problem),
    }
}

fn refuse_tls_flags_on_http(args: &RunArgs) -> Result<(), ConfigError> {
    let given: [(&'static str, bool); 6] = [
        ("--cert", args.cert.is_some()),
        ("--key", args.key.is_some()),
        ("--sni-cert", !args.sni_certs.is_empty()),
        ("--client-ca", args.client_ca.is_some()),
        ("--ssl-auth", args.ssl_auth.is_some()),
        ("--tls-policy", args.tls_policy.is_some()),
    ];
    match given.iter().find(|(_, present)| *present) {
        Some((flag, _)) => Err(ConfigError::missing(
            flag,
            "has no effect on an http listener (--protocol http); use --protocol https",
        )),
        None => Ok(()),
    }
}

fn access_control(args: &RunArgs) -> Result<AccessControl, ConfigError> {
    let mut prefixes = Vec::new();
    for group in &args.ip_groups {
        prefixes.extend(parse::cidr_list("--ip-group", group)?);
    }
    for file in &args.ip_group_files {
        prefixes.extend(parse::cidr_file(file)?);
    }
    prefixes.sort();
    prefixes.dedup();
    let mode = match args.access_control {
        AccessControlArg::All => AclMode::All,
        AccessControlArg::Whitelist => AclMode::Whitelist,
        AccessControlArg::Blacklist => AclMode::Blacklist,
    };
    match mode {
        AclMode::All if !prefixes.is_empty() => Err(ConfigError::new(
            "--access-control",
            "all",
            "an IP address group was given but would have no effect: use whitelist or blacklist",
        )),
        AclMode::Whitelist | AclMode::Blacklist if prefixes.is_empty() => Err(ConfigError::new(
            "--access-control",
            mode.name(),
            "needs an IP address group: give --ip-group CIDR,... or --ip-group-file PATH",
        )),
        _ => Ok(AccessControl { mode, prefixes }),
    }
}

fn group(args: &RunArgs) -> Result<GroupConfig, ConfigError> {
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
    if let Some(dup) = backends
        .iter()
        .enumerate()
        .find(|(i, b)| backends[..*i].iter().any(|o| o.addr == b.addr))
    {
        return Err(ConfigError::new(
            "--backend",
            dup.1.addr.to_string(),
            "is given twice; give each backend once, with its weight",
        ));
    }
    let hc_domain = args
        .hc_domain
        .as_deref()
        .map(parse::hc_domain)
        .transpose()?;
    let protocol = match args.backend_protocol {
        BackendProtocolArg::Http => {
            if args.backend_ca.is_some() {
                return Err(ConfigError::missing(
                    "--backend-ca",
                    "only applies with --backend-protocol https",
                ));
            }
            if args.backend_insecure {
                return Err(ConfigError::missing(
                    "--backend-insecure",
                    "only applies with --backend-protocol https",
                ));
            }
            BackendProtocol::Http
        }
        BackendProtocolArg::Https => match (&args.backend_ca, args.backend_insecure) {
            (Some(path), false) => {
                let roots = load_ca_bundle(path).map_err(|problem| {
                    ConfigError::new("--backend-ca", path.display().to_string(), problem)
                })?;
                BackendProtocol::Https(BackendVerify::Ca(path.clone(), roots))
            }
            (None, true) => BackendProtocol::Https(BackendVerify::Insecure),
            (Some(_), true) => {
                return Err(ConfigError::missing(
                    "--backend-insecure",
                    "contradicts --backend-ca: verify against the CA, or do not verify",
                ));
            }
            (None, false) => {
                return Err(ConfigError::new(
                    "--backend-protocol",
                    "https",
                    "give --backend-ca PATH to verify the backends' certificates, or --backend-insecure not to",
                ));
            }
        },
    };
    Ok(GroupConfig {
        name: parse::label("--group-name", &args.group_name)?,
        description: args
            .group_description
            .as_deref()
            .map(|d| parse::description("--group-description", d))
            .transpose()?,
        backends,
        algorithm: match args.algorithm {
            AlgorithmArg::Wrr => Algorithm::WeightedRoundRobin,
            AlgorithmArg::Wlc => Algorithm::WeightedLeastConnections,
            AlgorithmArg::SourceIp => Algorithm::SourceIpHash,
        },
        protocol,
        health: HealthCheck {
            kind: match args.health_check {
                HealthCheckArg::Off => CheckKind::Off,
                HealthCheckArg::Tcp => CheckKind::Tcp,
                HealthCheckArg::Http => CheckKind::Http,
                HealthCheckArg::Https => CheckKind::Https,
            },
            port: args
                .hc_port
                .as_deref()
                .map(|p| parse::number("--hc-port", p, 1, 65535).map(|p| p as u16))
                .transpose()?,
            path: parse::hc_path(&args.hc_path)?,
            domain: hc_domain.clone(),
            interval: parse::seconds("--hc-interval", &args.hc_interval, 1, 50)?,
            timeout: parse::seconds("--hc-timeout", &args.hc_timeout, 1, 50)?,
            retries: parse::number("--hc-retries", &args.hc_retries, 1, 10)?,
        },
        slow_start: args
            .slow_start
            .as_deref()
            .map(|s| parse::seconds("--slow-start", s, 30, 1200))
            .transpose()?,
        sticky: stickiness(args)?.map(Arc::new),
        sticky_key_file: args.sticky_key_file.clone(),
        hc_domain,
    })
}

/// Entries of an app-cookie stick table: the memory bound of one group's sessions.
const STICK_TABLE_CAPACITY: usize = 100_000;

fn stickiness(args: &RunArgs) -> Result<Option<Stickiness>, ConfigError> {
    let mode = match args.sticky_session {
        StickyArg::Off => "off",
        StickyArg::LbCookie => "lb-cookie",
        StickyArg::AppCookie => "app-cookie",
    };
    if args.sticky_session != StickyArg::Off && args.algorithm != AlgorithmArg::Wrr {
        return Err(ConfigError::new(
            "--sticky-session",
            mode,
            "only works with --algorithm weighted-round-robin",
        ));
    }
    if args.sticky_session != StickyArg::AppCookie && args.cookie_name.is_some() {
        return Err(ConfigError::missing(
            "--cookie-name",
            "only applies with --sticky-session app-cookie",
        ));
    }
    if args.sticky_session != StickyArg::LbCookie && args.sticky_key_file.is_some() {
        return Err(ConfigError::missing(
            "--sticky-key-file",
            "only applies with --sticky-session lb-cookie",
        ));
    }
    let duration = Duration::from_secs(
        60 * u64::from(parse::number(
            "--sticky-duration",
            &args.sticky_duration,
            1,
            1440,
        )?),
    );
    Ok(match args.sticky_session {
        StickyArg::Off => None,
        StickyArg::LbCookie => {
            let key = match &args.sticky_key_file {
                Some(path) => StickyKey::from_file(path).map_err(|problem| {
                    ConfigError::new("--sticky-key-file", path.display().to_string(), problem)
                })?,
                None => StickyKey::generate()
                    .map_err(|problem| ConfigError::missing("--sticky-session", problem))?,
            };
            Some(Stickiness::LbCookie { key, duration })
        }
        StickyArg::AppCookie => {
            let name = args.cookie_name.clone().ok_or_else(|| {
                ConfigError::missing(
                    "--cookie-name",
                    "required with --sticky-session app-cookie: the backend's session cookie",
                )
            })?;
            validate_cookie_name(&name)
                .map_err(|problem| ConfigError::new("--cookie-name", &name, problem))?;
            Some(Stickiness::AppCookie {
                name,
                duration,
                table: StickTable::new(STICK_TABLE_CAPACITY),
            })
        }
    })
}

fn xdp(args: &RunArgs) -> Result<XdpConfig, ConfigError> {
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
    Ok(XdpConfig { ifaces, mode })
}
