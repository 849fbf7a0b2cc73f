//! The validated configuration: every flag parsed and range-checked once, every file it names
//! read, so that the rest of the daemon never handles a raw string again.
pub mod acme;
pub mod bgp;
mod display;
mod error;
mod file;
mod health_check;
mod parse;
pub use parse::interface as interface_exists;
mod rule_flag;
mod rule_table;
pub mod spec;
mod sticky;
pub mod values;
mod warnings;

pub use health_check::{CheckKind, HealthCheck};
pub use sticky::{Stickiness, StickyKey, StickyKeyError, validate_cookie_name};
pub use warnings::fd_limit;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use lb_common::{MAX_BACKENDS_PER_GROUP, MAX_L4_GROUPS};
use rustls::RootCertStore;

use crate::acl::{AccessControl, AclMode};
use crate::balance::Algorithm;
use crate::privilege::User;
use crate::rules::{Action, RuleSet, RuleSpec};
use crate::tls::certs::{CertError, PairFile, check_private, load_ca_bundle, load_certified_key};
use crate::tls::tickets::{TicketKeyFile, TicketKeys};
use crate::tls::{SniName, TlsPolicy, TlsSettings};
pub use error::ConfigError;
use spec::{GroupSpec, ListenerSpec, NodeSpec};
pub use values::Backend;
use values::{BackendProtocolArg, LbIp, OnOff, SslAuthArg, StickyArg};

#[derive(Clone, Debug)]
pub struct Config {
    /// Names are unique; each listener's `groups[0]` is its default group.
    pub listeners: Vec<ListenerConfig>,
    /// Names are unique; listeners and rules refer to groups by position.
    pub groups: Vec<GroupConfig>,
    pub xdp: XdpConfig,
    pub ops: OpsConfig,
    /// Announcements of the listeners' addresses over BGP; None: none.
    pub bgp: Option<bgp::BgpConfig>,
    /// `--tls-ticket-key-file`: the keys that encrypt every https listener's session tickets.
    /// None: random keys, which the running node makes at start and keeps across reloads.
    pub tls_tickets: Option<TicketKeyFile>,
    /// The ACME client, when a listener names `--acme-domain`.
    pub acme: Option<acme::AcmeConfig>,
    /// `--config`: read again on every reload.
    pub file: Option<PathBuf>,
}

/// How the node is operated: admin endpoint, shutdown.
#[derive(Clone, Debug)]
pub struct OpsConfig {
    pub admin: Option<SocketAddr>,
    pub admin_allow_remote: bool,
    pub drain_timeout: Duration,
    pub access_log: Option<crate::access_log::Settings>,
    /// `--pid-file`.
    pub pid_file: PathBuf,
    /// `--user`: who the daemon runs as once sockets are bound and XDP attached.
    pub user: Option<User>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FrontendProtocol {
    Https,
    Http,
    /// Forwarded in XDP, never seen by userspace.
    Tcp,
    Udp,
}

impl FrontendProtocol {
    pub fn scheme(self) -> &'static str {
        match self {
            FrontendProtocol::Https => "https",
            FrontendProtocol::Http => "http",
            FrontendProtocol::Tcp => "tcp",
            FrontendProtocol::Udp => "udp",
        }
    }

    /// Whether the XDP program forwards this listener's packets itself (no socket).
    pub fn is_l4(self) -> bool {
        matches!(self, FrontendProtocol::Tcp | FrontendProtocol::Udp)
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
    /// HTTP/3 on the listener's port over UDP (https listeners only).
    pub http3: bool,
    /// Names to get one certificate for from the ACME CA (https listeners only).
    pub acme_domains: Vec<String>,
    pub access: AccessControl,
    pub transfer_lb_ip: TransferLbIp,
    pub timeouts: Timeouts,
    /// Advanced forwarding, compiled against every group's name; the specs are kept for
    /// `check`.
    pub rules: Arc<RuleSet>,
    pub rule_specs: Vec<RuleSpec>,
    /// Indices into [`Config::groups`] of the groups requests can reach: the default group
    /// first, then every group a rule forwards to.
    pub groups: Vec<usize>,
    /// Client connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Requests per second per client address; None: not limited.
    pub rate_limit_requests: Option<u32>,
    /// New TCP connections and frames per second per source, enforced in XDP; None: not
    /// limited.
    pub rate_limit_syn: Option<u32>,
    pub rate_limit_pps: Option<u32>,
    /// Seconds a source over those limits for a second is blocked; None: never.
    pub auto_block: Option<u32>,
    /// When the XDP program answers new connections with SYN cookies.
    pub syn_protect: SynProtection,
    /// `--syn-protect-threshold` as given (None: not given), for the warning when it has no
    /// effect; `syn_protect` holds the one in force.
    pub syn_protect_threshold: Option<u32>,
    /// `--accept-proxy-protocol`: connections start with a PROXY protocol header from a
    /// balancer in front; None: they do not (http and https listeners only).
    pub accept_proxy: Option<AcceptProxy>,
}

/// A listener behind another balancer that names each client in a PROXY protocol header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptProxy {
    pub version: crate::proxy_protocol::Version,
    /// `--proxy-protocol-from`: the only peers whose connections are taken; never empty.
    pub from: Vec<IpNet>,
}

impl AcceptProxy {
    /// Whether a connection from `peer` may carry the header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.from.iter().any(|net| net.contains(&peer))
    }
}

/// `--syn-protect` and its threshold, for an http or https listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SynProtection {
    #[default]
    Off,
    /// While SYNs to the listener arrive faster than `threshold` a second.
    Auto {
        threshold: u32,
    },
    On,
}

impl SynProtection {
    /// As `--syn-protect` says it.
    pub fn name(self) -> &'static str {
        match self {
            SynProtection::Off => "off",
            SynProtection::Auto { .. } => "auto",
            SynProtection::On => "on",
        }
    }
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
    /// A TLS handshake not finished by then is abandoned.
    pub handshake: Duration,
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
    /// `--sticky-duration`: also how long an idle flow of a tcp/udp listener keeps its
    /// backend when the ring changes.
    pub flow_idle: Duration,
    /// `--backend-proxy-protocol`: the PROXY protocol header each backend connection starts
    /// with; None: none.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native XDP, falling back to generic (skb) mode with a warning.
    Auto,
    /// Native (driver) mode only: refuse to start if the driver cannot.
    Native,
    /// Generic mode: any interface, after the kernel has allocated the packet.
    Skb,
    /// No XDP: access control is enforced on accept only.
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

/// The configuration as stored in etcd under a key prefix, read at one revision: the TOML of
/// `PREFIX/config` and the CIDR lists of the `PREFIX/ip_groups/NAME` keys. Fetched by the
/// runtime (`etcd`); read here like a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdSnapshot {
    pub prefix: String,
    pub revision: i64,
    pub config: Option<String>,
    pub ip_groups: BTreeMap<String, String>,
}

/// The command line as the configuration reads it: the file, the flags of one listener, its
/// group and the node, and which flags were typed (the rest are at their defaults).
pub struct Flags<'a> {
    pub file: Option<&'a std::path::Path>,
    /// `--config-etcd`: the configuration read from etcd, in place of a file.
    pub etcd: Option<&'a EtcdSnapshot>,
    pub listener: &'a ListenerSpec,
    pub group: &'a GroupSpec,
    pub node: &'a NodeSpec,
    /// The flags given on the command line and their values as typed, in `--help` order.
    pub given: &'a [(String, String)],
}

impl Flags<'_> {
    fn given(&self, flag: &str) -> bool {
        self.given.iter().any(|(f, _)| f == flag)
    }
}

impl Config {
    /// Validates the flags, and the config file when `--config` names one, and loads every
    /// file they name. The file's listeners come first; flags add one listener on top.
    pub fn from_flags(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match (flags.file, flags.etcd) {
            (Some(path), _) => Some(file::load(path)?),
            (None, Some(snapshot)) => Some(file::load_etcd(snapshot)?),
            (None, None) => None,
        };
        let with_listener = flags.listener.listen.is_some();
        if file.is_some() && !with_listener {
            unused_listener_flags(flags)?;
        }
        let mut node = flags.node.clone();
        let mut groups: Vec<GroupConfig> = Vec::new();
        let mut listeners = Vec::new();
        // Where each listener and group came from: a file table, or None for the flags.
        let mut listener_at: Vec<Option<String>> = Vec::new();
        let mut group_at: Vec<Option<String>> = Vec::new();
        if let Some(file) = &file {
            let at = format!("{}: top level", file.path.display());
            xdp(&file.node).map_err(|e| e.in_file(at.clone(), false))?;
            ops(&file.node).map_err(|e| e.in_file(at, false))?;
            merge_node(&mut node, &file.node, flags);
            for g in &file.groups {
                let group = group(&g.spec).map_err(|e| e.in_file(g.location.clone(), true))?;
                add_group(&mut groups, group, || g.location.clone())?;
                group_at.push(Some(g.location.clone()));
            }
            let ip_groups = named_ip_groups(file)?;
            for l in &file.listeners {
                let in_file = |e: ConfigError| e.in_file(l.location.clone(), false);
                let default = groups
                    .iter()
                    .position(|g| g.name == l.group)
                    .ok_or_else(|| {
                        in_file(ConfigError::new(
                            "group",
                            &l.group,
                            format!("no [[group]] has this name (groups: {})", names(&groups)),
                        ))
                    })?;
                let mut shared = Vec::new();
                for name in &l.spec.ip_groups {
                    let prefixes = ip_groups.get(name).ok_or_else(|| {
                        in_file(ConfigError::new(
                            "ip_groups",
                            name,
                            "no [ip_groups.NAME] table has this name",
                        ))
                    })?;
                    shared.extend(prefixes.iter().copied());
                }
                let specs = l
                    .spec
                    .rule_tables
                    .iter()
                    .enumerate()
                    .map(|(n, t)| rule_table::spec(t, n, &l.group, &l.location))
                    .collect::<Result<Vec<_>, _>>()?;
                // `FILE: listener "web": rule "api": path_regex = "([": not a valid regex`.
                let rule_error = |e: crate::rules::RuleError| {
                    ConfigError::new(
                        format!("rule {:?}: {}", e.rule, e.field),
                        e.value,
                        e.problem,
                    )
                };
                let listener = listener(&l.spec, default, &groups, shared, specs, &rule_error)
                    .map_err(in_file)?;
                listeners.push(listener);
                listener_at.push(Some(l.location.clone()));
            }
        }
        if file.is_none() || with_listener {
            let (args, group_args) = (flags.listener, flags.group);
            let default = match &file {
                // With a file, a flag listener without --backend uses the file's group of
                // that name.
                Some(_) if group_args.backend.is_empty() => groups
                    .iter()
                    .position(|g| g.name == group_args.group_name.0)
                    .ok_or_else(|| {
                        ConfigError::new(
                            "--group-name",
                            &group_args.group_name.0,
                            format!(
                                "give --backend for the listener of --listen, or name a group of the config file ({})",
                                names(&groups)
                            ),
                        )
                    })?,
                _ => {
                    // The listener's own flags are reported first, in the order of --help.
                    let group = group(group_args).or_else(|e| {
                        frontend(args)?;
                        Err(e)
                    })?;
                    add_group(&mut groups, group, || "--group-name".to_string())?;
                    group_at.push(None);
                    groups.len() - 1
                }
            };
            let specs = args
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| rule_flag::parse(r, i, &groups[default].name))
                .collect::<Result<Vec<_>, _>>()?;
            // `--rule "path-regex=([;action=forward": path-regex "([": not a valid regex`: the
            // flag as typed (rules keep the order of the flags), the part of it at fault.
            let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
            let rule_error = |e: crate::rules::RuleError| {
                let value = names
                    .iter()
                    .position(|n| *n == e.rule)
                    .and_then(|i| args.rules.get(i))
                    .cloned()
                    .unwrap_or_else(|| e.rule.clone());
                let part = match e.field {
                    "group" | "status" | "location" | "content_type" | "body" => "action".into(),
                    field => field.replace('_', "-"),
                };
                ConfigError::new(
                    "--rule",
                    value,
                    format!("{part} {:?}: {}", e.value, e.problem),
                )
            };
            let flag_listener = listener(args, default, &groups, Vec::new(), specs, &rule_error)?;
            listeners.push(flag_listener);
            listener_at.push(None);
        }
        // The file's top level, when the ticket key file is named there.
        let tickets_at = file
            .as_ref()
            .filter(|f| {
                f.node.tls_ticket_key_file.is_some() && !flags.given("--tls-ticket-key-file")
            })
            .map(|f| format!("{}: top level", f.path.display()));
        let tickets_file = node
            .tls_ticket_key_file
            .as_deref()
            .map(|path| (path, &tickets_at));
        if !node.allow_readable_keys {
            check_key_files(&listeners, &listener_at, &groups, &group_at, tickets_file)?;
        }
        let tls_tickets = tls_tickets(&node).map_err(|e| match &tickets_at {
            Some(at) => e.in_file(at.clone(), false),
            None => e,
        })?;
        check_unique_listeners(&listeners, file.as_ref().map(|f| f.path.as_path()))?;
        let xdp = xdp(&node)?;
        check_l4(&listeners, &groups, &xdp)?;
        let acme = acme::acme(&node, &listeners)?;
        Ok(Config {
            listeners,
            groups,
            xdp,
            ops: ops(&node)?,
            bgp: bgp::bgp(&node)?,
            tls_tickets,
            acme,
            file: flags.file.map(std::path::Path::to_path_buf),
        })
    }

    /// The group of listener `l` that requests no rule claims go to.
    pub fn default_group(&self, l: &ListenerConfig) -> &GroupConfig {
        &self.groups[l.groups[0]]
    }
}

/// Every private key the configuration names must be readable by its owner only. `tickets`:
/// the ticket key file and where it is named (None: by the flag).
fn check_key_files(
    listeners: &[ListenerConfig],
    listener_at: &[Option<String>],
    groups: &[GroupConfig],
    group_at: &[Option<String>],
    tickets: Option<(&std::path::Path, &Option<String>)>,
) -> Result<(), ConfigError> {
    // Each key file, the flag that names it, and where (with whether that is a group table).
    let mut files: Vec<(&str, &std::path::Path, &Option<String>, bool)> = Vec::new();
    for (l, at) in listeners.iter().zip(listener_at) {
        let Some(tls) = &l.tls else { continue };
        files.push(("--key", &tls.key_path, at, false));
        for (_, _, key) in &tls.sni_files {
            files.push(("--sni-cert", key, at, false));
        }
    }
    for (g, at) in groups.iter().zip(group_at) {
        if let Some(key) = &g.sticky_key_file {
            files.push(("--sticky-key-file", key, at, true));
        }
    }
    if let Some((key, at)) = tickets {
        files.push(("--tls-ticket-key-file", key, at, false));
    }
    for (flag, key, at, group_table) in files {
        check_private(key).map_err(|problem| {
            let e = ConfigError::new(flag, key.display().to_string(), problem);
            match at {
                Some(at) => e.in_file(at.clone(), group_table),
                None => e,
            }
        })?;
    }
    Ok(())
}

fn names(groups: &[GroupConfig]) -> String {
    let list: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    if list.is_empty() {
        "none defined".to_string()
    } else {
        list.join(", ")
    }
}

fn add_group(
    groups: &mut Vec<GroupConfig>,
    group: GroupConfig,
    location: impl Fn() -> String,
) -> Result<(), ConfigError> {
    if groups.iter().any(|g| g.name == group.name) {
        let e = ConfigError::new(
            "--group-name",
            &group.name,
            "another group has this name; group names must be unique",
        );
        let at = location();
        return Err(if at.starts_with("--") {
            e
        } else {
            e.in_file(at, true)
        });
    }
    groups.push(group);
    Ok(())
}

/// With `--config` and no `--listen`, the flags of a listener and its group have nothing to
/// apply to: refused, never ignored.
fn unused_listener_flags(flags: &Flags) -> Result<(), ConfigError> {
    use clap::Args;
    let node = NodeSpec::augment_args(clap::Command::new("node"));
    // The node's own flags, plus the two only the command line has.
    let node_flag = |flag: &str| {
        matches!(
            flag,
            "--config" | "--config-etcd" | "--config-prefix" | "--log-format" | "--test-config"
        ) || node.get_arguments().any(|a| {
            a.get_long()
                .is_some_and(|l| flag.strip_prefix("--") == Some(l))
        })
    };
    match flags.given.iter().find(|(flag, _)| !node_flag(flag)) {
        Some((flag, value)) => Err(ConfigError::new(
            flag.clone(),
            value.clone(),
            "sets the listener of --listen, which is not given: with --config, give --listen \
             for a listener of these flags, or set it in the file",
        )),
        None => Ok(()),
    }
}

/// The node's settings: a flag given on the command line wins over the file's value, even at
/// its default; switches add up, interfaces too.
fn merge_node(node: &mut NodeSpec, file: &NodeSpec, flags: &Flags) {
    let file = file.clone();
    // A setting's flag is its field with - for _: `bgp_hold_time` is `--bgp-hold-time`.
    macro_rules! from_file_unless_given {
        ($($field:ident),* $(,)?) => {$(
            if !flags.given(&format!("--{}", stringify!($field).replace('_', "-"))) {
                node.$field = file.$field;
            }
        )*};
    }
    from_file_unless_given!(
        admin,
        user,
        drain_timeout,
        xdp_mode,
        bgp_local_as,
        bgp_router_id,
        bgp_peer,
        bgp_hold_time,
        bgp_withdraw_delay,
        bgp_announce,
        bgp_speaker,
        tls_ticket_key_file,
        acme_directory,
        acme_email,
        acme_state_dir,
        acme_ca,
        acme_challenge,
        access_log,
        access_log_format,
        pid_file,
    );
    node.bgp_bfd |= file.bgp_bfd;
    node.allow_readable_keys |= file.allow_readable_keys;
    node.admin_allow_remote |= file.admin_allow_remote;
    for iface in file.xdp_iface {
        if !node.xdp_iface.contains(&iface) {
            node.xdp_iface.push(iface);
        }
    }
}

fn named_ip_groups(file: &file::FileConfig) -> Result<BTreeMap<String, Vec<IpNet>>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, g) in &file.ip_groups {
        let at = format!("{}: ip_groups.{name}", file.path.display());
        let mut prefixes: Vec<IpNet> = g.cidrs.iter().map(|c| c.0).collect();
        for f in &g.files {
            prefixes.extend(parse::cidr_file(f).map_err(|e| e.in_file(at.clone(), false))?);
        }
        out.insert(name.clone(), prefixes);
    }
    Ok(out)
}

fn check_unique_listeners(
    listeners: &[ListenerConfig],
    file: Option<&std::path::Path>,
) -> Result<(), ConfigError> {
    for (i, l) in listeners.iter().enumerate() {
        let at = || match file {
            Some(f) => format!("{}: listener {:?}", f.display(), l.name),
            None => "--name".to_string(),
        };
        if listeners[..i].iter().any(|o| o.name == l.name) {
            return Err(ConfigError::new(
                "name",
                &l.name,
                "another listener has this name; listener names must be unique",
            )
            .in_file(at(), false));
        }
        let udp = |l: &ListenerConfig| l.protocol == FrontendProtocol::Udp;
        let tcp = |l: &ListenerConfig| !udp(l);
        // An https listener with HTTP/3 takes its port over UDP as well.
        let takes_udp = |l: &ListenerConfig| udp(l) || l.http3;
        if let Some(o) = listeners[..i].iter().find(|o| {
            o.listen == l.listen && ((tcp(o) && tcp(l)) || (takes_udp(o) && takes_udp(l)))
        }) {
            let why = if tcp(o) && tcp(l) {
                format!("listener {:?} already listens there", o.name)
            } else {
                format!(
                    "listener {:?} already takes this address over UDP (a udp listener, or --http3 on)",
                    o.name
                )
            };
            return Err(ConfigError::new("listen", l.listen.to_string(), why).in_file(at(), false));
        }
    }
    Ok(())
}

fn ops(args: &NodeSpec) -> Result<OpsConfig, ConfigError> {
    if let Some(values::AccessLogTarget(crate::access_log::Target::File(path))) = &args.access_log {
        parse::directory_for(path).map_err(|problem| {
            ConfigError::new("--access-log", path.display().to_string(), problem)
        })?;
    }
    let user = args
        .user
        .as_deref()
        .map(|name| User::lookup(name).map_err(|e| ConfigError::new("--user", name, e.to_string())))
        .transpose()?;
    Ok(OpsConfig {
        admin: args
            .admin
            .map(|a| admin_addr(a.0, args.admin_allow_remote))
            .transpose()?,
        admin_allow_remote: args.admin_allow_remote,
        drain_timeout: args.drain_timeout.0,
        pid_file: args.pid_file.clone(),
        access_log: args
            .access_log
            .clone()
            .map(|target| crate::access_log::Settings {
                target: target.0,
                format: args.access_log_format,
                owner: user.as_ref().map(|u| u.uid),
            }),
        user,
    })
}

/// The ticket keys of `--tls-ticket-key-file`, read now (and on every reload, so that a
/// rotated file takes effect).
fn tls_tickets(args: &NodeSpec) -> Result<Option<TicketKeyFile>, ConfigError> {
    let Some(path) = &args.tls_ticket_key_file else {
        return Ok(None);
    };
    let keys = TicketKeys::from_file(path).map_err(|problem| {
        ConfigError::new("--tls-ticket-key-file", path.display().to_string(), problem)
    })?;
    Ok(Some(TicketKeyFile {
        path: path.clone(),
        keys: Arc::new(keys),
    }))
}

/// One listener from its flags (or a file table read into them). `default` and the rules'
/// targets are positions in `groups`; `shared` are prefixes of named IP groups.
fn listener(
    args: &ListenerSpec,
    default: usize,
    groups: &[GroupConfig],
    shared: Vec<IpNet>,
    rule_specs: Vec<RuleSpec>,
    rule_error: &dyn Fn(crate::rules::RuleError) -> ConfigError,
) -> Result<ListenerConfig, ConfigError> {
    let (listen, protocol, tls) = frontend(args)?;
    let transfer_lb_ip = match args.transfer_lb_ip {
        None => TransferLbIp::Off,
        Some(LbIp::Local) => TransferLbIp::LocalAddress,
        Some(LbIp::Fixed(ip)) => TransferLbIp::Fixed(ip),
    };
    let timeouts = Timeouts {
        idle: args.idle_timeout.0,
        request: args.request_timeout.0,
        response: args.response_timeout.0,
        handshake: args.handshake_timeout.0,
    };
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let rules = RuleSet::compile(&rule_specs, &names).map_err(rule_error)?;
    if protocol.is_l4() {
        l4_checks(args, protocol, &groups[default], &rule_specs)?;
    }
    let mut reachable = vec![default];
    for i in 0..rules.len() {
        if let Some(Action::Forward { index, .. }) = rules.action(i)
            && !reachable.contains(index)
        {
            reachable.push(*index);
        }
    }
    Ok(ListenerConfig {
        name: args.name.0.clone(),
        description: args.description.as_ref().map(|d| d.0.clone()),
        tags: unique_tags(&args.tag)?,
        protocol,
        listen,
        tls,
        http2: args.http2 == OnOff::On,
        http3: http3(args, protocol)?,
        acme_domains: acme::domains(args, protocol)?,
        access: access_control(args, shared)?,
        transfer_lb_ip,
        timeouts,
        rules: Arc::new(rules),
        rule_specs,
        groups: reachable,
        max_connections: args.max_connections.0 as usize,
        rate_limit_requests: args.rate_limit_requests.map(|n| n.0),
        rate_limit_syn: args.rate_limit_syn.map(|n| n.0),
        rate_limit_pps: args.rate_limit_pps.map(|n| n.0),
        auto_block: auto_block(args, protocol)?,
        syn_protect: syn_protection(args, protocol)?,
        syn_protect_threshold: args.syn_protect_threshold.map(|t| t.0),
        accept_proxy: accept_proxy(args, protocol)?,
    })
}

/// `--tag` keys are unique per listener.
fn unique_tags(tags: &[values::Tag]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(tags.len());
    for t in tags {
        if out.iter().any(|(k, _)| *k == t.key) {
            return Err(ConfigError::new(
                "--tag",
                t.to_string(),
                format!("key {:?} is given twice; tag keys must be unique", t.key),
            ));
        }
        out.push((t.key.clone(), t.value.clone()));
    }
    Ok(out)
}

/// Largest `--sticky-duration` of a group behind a tcp/udp listener: the flow table's
/// entries are kernel memory, and the manual caps it at an hour.
const L4_MAX_STICKY_MINUTES: u32 = 60;

/// What a tcp/udp listener, forwarded by the XDP program with the group's Maglev ring, cannot
/// have: rules and HTTP settings, another algorithm, cookies, or no XDP at all.
fn l4_checks(
    args: &ListenerSpec,
    protocol: FrontendProtocol,
    group: &GroupConfig,
    rules: &[RuleSpec],
) -> Result<(), ConfigError> {
    let scheme = protocol.scheme();
    if !rules.is_empty() {
        return Err(ConfigError::missing(
            "--rule",
            format!(
                "rules route HTTP requests; a {scheme} listener forwards packets, use https or http"
            ),
        ));
    }
    if args.transfer_lb_ip.is_some() {
        return Err(ConfigError::missing(
            "--transfer-lb-ip",
            format!("a {scheme} listener adds no headers: its packets reach the backend unchanged"),
        ));
    }
    if group.algorithm != Algorithm::SourceIpHash {
        return Err(ConfigError::new(
            "--protocol",
            scheme,
            format!(
                "is balanced in XDP by source-IP hashing (Maglev): group {:?} must use --algorithm source-ip-hash, not {}",
                group.name,
                group.algorithm.name()
            ),
        ));
    }
    if let Some(version) = group.proxy_protocol {
        return Err(ConfigError::new(
            "--backend-proxy-protocol",
            version.name(),
            format!(
                "group {:?} is behind a {scheme} listener, whose packets XDP forwards unchanged: no header can be added (use off)",
                group.name
            ),
        ));
    }
    if group.sticky.is_some() {
        return Err(ConfigError::new(
            "--protocol",
            scheme,
            format!(
                "cannot use sticky cookies (group {:?}); its flows stay on their backend for --sticky-duration",
                group.name
            ),
        ));
    }
    let minutes = group.flow_idle.as_secs() / 60;
    if minutes > u64::from(L4_MAX_STICKY_MINUTES) {
        return Err(ConfigError::new(
            "--sticky-duration",
            minutes.to_string(),
            format!(
                "must be 1-{L4_MAX_STICKY_MINUTES} for a group behind a {scheme} listener (group {:?})",
                group.name
            ),
        ));
    }
    Ok(())
}

/// Node-wide limits of tcp/udp listeners: XDP must be on, and their groups must fit the
/// kernel's rings.
fn check_l4(
    listeners: &[ListenerConfig],
    groups: &[GroupConfig],
    xdp: &XdpConfig,
) -> Result<(), ConfigError> {
    let Some(l4) = listeners.iter().find(|l| l.protocol.is_l4()) else {
        return Ok(());
    };
    if !xdp.enabled() {
        return Err(ConfigError::new(
            "--protocol",
            l4.protocol.scheme(),
            format!(
                "listener {:?} is forwarded by the XDP program: give --xdp-iface IFACE (and not --xdp-mode off)",
                l4.name
            ),
        ));
    }
    let mut l4_groups: Vec<usize> = listeners
        .iter()
        .filter(|l| l.protocol.is_l4())
        .map(|l| l.groups[0])
        .collect();
    l4_groups.sort_unstable();
    l4_groups.dedup();
    if l4_groups.len() > MAX_L4_GROUPS as usize {
        return Err(ConfigError::new(
            "--protocol",
            l4.protocol.scheme(),
            format!(
                "tcp/udp listeners use {} groups; the XDP program holds the rings of at most {MAX_L4_GROUPS}",
                l4_groups.len()
            ),
        ));
    }
    for &g in &l4_groups {
        let group = &groups[g];
        if group.backends.len() > MAX_BACKENDS_PER_GROUP as usize {
            return Err(ConfigError::new(
                "--backend",
                group.backends.len().to_string(),
                format!(
                    "group {:?} is behind a tcp/udp listener: at most {MAX_BACKENDS_PER_GROUP} backends",
                    group.name
                ),
            ));
        }
    }
    Ok(())
}

/// Where and how a listener accepts: address, protocol and (for https) the TLS half.
fn frontend(
    args: &ListenerSpec,
) -> Result<(SocketAddr, FrontendProtocol, Option<ListenerTls>), ConfigError> {
    let listen = args.listen.map(|a| a.0).ok_or_else(|| {
        ConfigError::missing("--listen", "required: the ADDR:PORT to accept clients on")
    })?;
    let protocol = args.protocol;
    let tls = match protocol {
        FrontendProtocol::Https => Some(listener_tls(args)?),
        _ => {
            refuse_tls_flags(args, protocol)?;
            None
        }
    };
    Ok((listen, protocol, tls))
}

fn admin_addr(addr: SocketAddr, allow_remote: bool) -> Result<SocketAddr, ConfigError> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(ConfigError::new(
            "--admin",
            addr.to_string(),
            "not a loopback address: the admin endpoint exposes the node's state; add --admin-allow-remote to serve it there",
        ));
    }
    Ok(addr)
}

fn listener_tls(args: &ListenerSpec) -> Result<ListenerTls, ConfigError> {
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

    let mut sni = Vec::with_capacity(args.sni_cert.len());
    let mut sni_files = Vec::with_capacity(args.sni_cert.len());
    for sni_cert in &args.sni_cert {
        let value = sni_cert.to_string();
        let name = SniName::parse(&sni_cert.domain)
            .map_err(|problem| ConfigError::new("--sni-cert", &value, problem))?;
        let (cert, key) = (sni_cert.cert.clone(), sni_cert.key.clone());
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

fn refuse_tls_flags(args: &ListenerSpec, protocol: FrontendProtocol) -> Result<(), ConfigError> {
    let given: [(&'static str, bool); 6] = [
        ("--cert", args.cert.is_some()),
        ("--key", args.key.is_some()),
        ("--sni-cert", !args.sni_cert.is_empty()),
        ("--client-ca", args.client_ca.is_some()),
        ("--ssl-auth", args.ssl_auth.is_some()),
        ("--tls-policy", args.tls_policy.is_some()),
    ];
    match given.iter().find(|(_, present)| *present) {
        Some((flag, _)) => Err(ConfigError::missing(
            *flag,
            format!(
                "has no effect on {} {1} listener (--protocol {1}); TLS is terminated by https listeners only",
                if protocol == FrontendProtocol::Http {
                    "an"
                } else {
                    "a"
                },
                protocol.scheme()
            ),
        )),
        None => Ok(()),
    }
}

/// `--auto-block` blocks sources over a per-source limit: without one it would do nothing.
/// (Checked here too: `--rate-limit-syn` counts TCP SYNs, which a UDP listener never gets.)
fn auto_block(args: &ListenerSpec, protocol: FrontendProtocol) -> Result<Option<u32>, ConfigError> {
    if let Some(n) = args.rate_limit_syn
        && protocol == FrontendProtocol::Udp
    {
        return Err(ConfigError::new(
            "--rate-limit-syn",
            n.0.to_string(),
            "limits new TCP connections, and a udp listener has none: use --rate-limit-pps N",
        ));
    }
    match args.auto_block {
        Some(secs) if args.rate_limit_syn.is_none() && args.rate_limit_pps.is_none() => {
            Err(ConfigError::new(
                "--auto-block",
                secs.0.as_secs().to_string(),
                "blocks sources over a per-source limit: give --rate-limit-syn N or --rate-limit-pps N",
            ))
        }
        Some(secs) => Ok(Some(secs.0.as_secs() as u32)),
        None => Ok(None),
    }
}

/// `--syn-protect-threshold` when not given: 5-8 times the new TLS connections one core
/// completes in a second (2,400-3,000 in `bench https`), a rate at which the kernel's own
/// cookies cost 3-5 % of a core (1.5-2.7 µs a SYN in `bench flood`).
pub const DEFAULT_SYN_PROTECT_THRESHOLD: u32 = 20_000;

/// SYN cookies answer connections the kernel accepts for the daemon: a tcp listener's SYNs
/// go to its backends, a udp listener has none.
/// `--http3`: QUIC carries TLS, so only an https listener has the certificates for it. And
/// QUIC carries no PROXY protocol header: a listener that admits only the balancers in front
/// of it over TCP would take QUIC from anyone, each client taken for its own address.
fn http3(args: &ListenerSpec, protocol: FrontendProtocol) -> Result<bool, ConfigError> {
    let on = args.http3 == OnOff::On;
    if on && args.accept_proxy_protocol.is_some() {
        return Err(ConfigError::new(
            "--http3",
            "on",
            "QUIC connections carry no PROXY protocol header, so this listener would take them from any client, past the --proxy-protocol-from list its TCP connections must come from: use --http3 off behind balancers that send the header",
        ));
    }
    if on && protocol != FrontendProtocol::Https {
        return Err(ConfigError::new(
            "--http3",
            "on",
            format!(
                "HTTP/3 runs over QUIC, which is always encrypted: only an https listener can serve it (this one is {})",
                protocol.scheme()
            ),
        ));
    }
    Ok(on)
}

fn syn_protection(
    args: &ListenerSpec,
    protocol: FrontendProtocol,
) -> Result<SynProtection, ConfigError> {
    let mode = match args.syn_protect {
        values::SynProtect::Off => SynProtection::Off,
        values::SynProtect::Auto => SynProtection::Auto {
            threshold: args
                .syn_protect_threshold
                .map_or(DEFAULT_SYN_PROTECT_THRESHOLD, |t| t.0),
        },
        values::SynProtect::On => SynProtection::On,
    };
    if mode != SynProtection::Off && protocol.is_l4() {
        return Err(ConfigError::new(
            "--syn-protect",
            mode.name(),
            format!(
                "answers new connections of http and https listeners, and a {} listener's are its backends' to answer: use off, or limit sources with --rate-limit-syn N / --rate-limit-pps N",
                protocol.scheme()
            ),
        ));
    }
    Ok(mode)
}

/// `--accept-proxy-protocol` and `--proxy-protocol-from` go together, on a listener that
/// reads its connections in userspace.
fn accept_proxy(
    args: &ListenerSpec,
    protocol: FrontendProtocol,
) -> Result<Option<AcceptProxy>, ConfigError> {
    let Some(version) = args.accept_proxy_protocol else {
        if let Some(cidr) = args.proxy_protocol_from.first() {
            return Err(ConfigError::new(
                "--proxy-protocol-from",
                cidr.0.to_string(),
                "says who may send a PROXY protocol header, and none is read: give --accept-proxy-protocol v1|v2 too",
            ));
        }
        return Ok(None);
    };
    if protocol.is_l4() {
        return Err(ConfigError::new(
            "--accept-proxy-protocol",
            version.name(),
            format!(
                "a {} listener is forwarded in the kernel by XDP and never reads the header: only https and http listeners accept it",
                protocol.scheme()
            ),
        ));
    }
    if args.proxy_protocol_from.is_empty() {
        return Err(ConfigError::new(
            "--accept-proxy-protocol",
            version.name(),
            "needs --proxy-protocol-from CIDR,...: the balancers in front allowed to send the header (anyone else could claim any client address)",
        ));
    }
    let mut from: Vec<IpNet> = args.proxy_protocol_from.iter().map(|c| c.0).collect();
    from.sort();
    from.dedup();
    Ok(Some(AcceptProxy { version, from }))
}

fn access_control(args: &ListenerSpec, shared: Vec<IpNet>) -> Result<AccessControl, ConfigError> {
    let mut prefixes = shared;
    prefixes.extend(args.ip_group.iter().map(|c| c.0));
    for file in &args.ip_group_file {
        prefixes.extend(parse::cidr_file(file)?);
    }
    prefixes.sort();
    prefixes.dedup();
    let mode = args.access_control;
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
        _ => Ok(AccessControl::new(mode, prefixes)),
    }
}

fn group(args: &GroupSpec) -> Result<GroupConfig, ConfigError> {
    if args.backend.is_empty() {
        return Err(ConfigError::missing(
            "--backend",
            "at least one backend is required: --backend ADDR:PORT[,weight=N]",
        ));
    }
    let backends = args.backend.clone();
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
    let hc_domain = args.hc_domain.as_ref().map(|d| d.0.clone());
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
        name: args.group_name.0.clone(),
        description: args.group_description.as_ref().map(|d| d.0.clone()),
        backends,
        algorithm: args.algorithm,
        protocol,
        health: HealthCheck {
            kind: args.health_check,
            port: args.hc_port.map(|p| p.0 as u16),
            path: args.hc_path.0.clone(),
            domain: hc_domain.clone(),
            interval: args.hc_interval.0,
            timeout: args.hc_timeout.0,
            retries: args.hc_retries.0,
            proxy_protocol: args.backend_proxy_protocol.version(),
        },
        slow_start: args.slow_start.map(|s| s.0),
        sticky: stickiness(args)?.map(Arc::new),
        sticky_key_file: args.sticky_key_file.clone(),
        flow_idle: Duration::from_secs(60 * u64::from(args.sticky_duration.0)),
        proxy_protocol: args.backend_proxy_protocol.version(),
        hc_domain,
    })
}

fn stickiness(args: &GroupSpec) -> Result<Option<Stickiness>, ConfigError> {
    let mode = match args.sticky_session {
        StickyArg::Off => "off",
        StickyArg::LbCookie => "lb-cookie",
        StickyArg::AppCookie => "app-cookie",
    };
    if args.sticky_session != StickyArg::Off && args.algorithm != Algorithm::WeightedRoundRobin {
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
    let duration = Duration::from_secs(60 * u64::from(args.sticky_duration.0));
    Ok(match args.sticky_session {
        StickyArg::Off => None,
        StickyArg::LbCookie => {
            let key = match &args.sticky_key_file {
                Some(path) => Some(StickyKey::from_file(path).map_err(|problem| {
                    ConfigError::new("--sticky-key-file", path.display().to_string(), problem)
                })?),
                None => None,
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
            Some(Stickiness::AppCookie { name, duration })
        }
    })
}

fn xdp(args: &NodeSpec) -> Result<XdpConfig, ConfigError> {
    let mode = args.xdp_mode;
    let mut ifaces = Vec::new();
    for iface in &args.xdp_iface {
        if mode != XdpMode::Off {
            parse::interface("--xdp-iface", iface)?;
        }
        if !ifaces.contains(iface) {
            ifaces.push(iface.clone());
        }
    }
    Ok(XdpConfig { ifaces, mode })
}
