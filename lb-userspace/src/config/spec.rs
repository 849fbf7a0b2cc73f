//! What the operator writes, before it is checked as a whole: a listener, a backend group and
//! the node's own settings. Each struct is both the flags (clap) and a table of the config
//! file (serde): a flag and its key are one field, of one type, read by one parser. The file
//! key is the flag without `--` and with `_` for `-` (in a group, `--group-name` is `name`).
use std::path::{Path, PathBuf};

use clap::{Args, FromArgMatches};
use serde::Deserialize;

use super::values::{
    self, AccessLogTarget, Backend, BackendProtocolArg, BgpAnnounce, BgpPeer, Cidr, Count,
    Description, HcDomain, HcPath, Label, LbIp, OnOff, Port, RouterId, Seconds, SniCert,
    SslAuthArg, StatusCode, StickyArg, SynProtect, Tag,
};
use super::{CheckKind, FrontendProtocol, XdpMode};
use crate::acl::AclMode;
use crate::balance::Algorithm;

/// One listener: where it accepts, TLS, timeouts, access control and rules.
#[derive(Clone, Debug, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerSpec {
    /// Listener name, in logs and metrics (1-255 characters).
    #[arg(long, value_name = "NAME", default_value = "listener-1")]
    pub name: Label,

    /// Listener description (at most 255 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<Description>,

    /// Listener tag KEY=VALUE, repeatable; keys unique, 1-128 characters.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    #[serde(alias = "tags", deserialize_with = "values::tags")]
    pub tag: Vec<Tag>,

    /// Frontend protocol: https and http are served in userspace.
    #[arg(long, value_name = "PROTO", default_value = "https")]
    pub protocol: FrontendProtocol,

    /// Frontend address and port, e.g. 0.0.0.0:443 or [::]:443 (required without --config).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<values::Addr>,

    /// Server certificate chain (PEM), the default certificate.
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,

    /// Private key of --cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,

    /// A name to get a certificate for from the ACME CA (--acme-directory), repeatable: one
    /// certificate for all the listener's names, renewed by itself. --cert stays the default
    /// for other names and until the first is issued.
    #[arg(long = "acme-domain", value_name = "NAME")]
    #[serde(deserialize_with = "values::one_or_many")]
    pub acme_domain: Vec<String>,

    /// Certificate for a server name, repeatable: DOMAIN=CERT:KEY, DOMAIN exact or *.wildcard.
    #[arg(long = "sni-cert", value_name = "DOMAIN=CERT:KEY")]
    #[serde(alias = "sni_certs")]
    pub sni_cert: Vec<SniCert>,

    /// SSL authentication: one-way, or mutual (clients need a certificate from --client-ca).
    #[arg(long, value_name = "MODE")]
    pub ssl_auth: Option<SslAuthArg>,

    /// CA bundle (PEM) that client certificates must chain to; implies --ssl-auth mutual.
    #[arg(long, value_name = "PATH")]
    pub client_ca: Option<PathBuf>,

    /// Security policy: tls-1-2 (default), tls-1-2-strict or tls-1-3.
    #[arg(long, value_name = "POLICY")]
    pub tls_policy: Option<String>,

    /// Offer HTTP/2 to clients (ALPN h2).
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub http2: OnOff,

    /// Also serve HTTP/3 (QUIC) on the same port over UDP, and advertise it with Alt-Svc
    /// (https listeners).
    #[arg(long, value_name = "on|off", default_value = "off")]
    pub http3: OnOff,

    /// Add X-Forwarded-ELB-IP: the given IP, else the local address the client connected to.
    #[arg(long, value_name = "IP", num_args = 0..=1, default_missing_value = "")]
    #[serde(deserialize_with = "values::lb_ip")]
    pub transfer_lb_ip: Option<LbIp>,

    /// Seconds a keep-alive connection may wait for its next request (0-4000; 0 closes after
    /// each response).
    #[arg(long, value_name = "SECS", default_value = "60")]
    pub idle_timeout: Seconds<0, 4000>,

    /// Seconds a client has to send a request's headers, and the longest stall in its body (1-300).
    #[arg(long, value_name = "SECS", default_value = "60")]
    pub request_timeout: Seconds<1, 300>,

    /// Seconds a backend has to start its response once it has the whole request, before
    /// another is tried or 504; also the longest it may leave request body untaken (1-300).
    #[arg(long, value_name = "SECS", default_value = "60")]
    pub response_timeout: Seconds<1, 300>,

    /// Seconds a client has to complete the TLS handshake (1-300).
    #[arg(long, value_name = "SECS", default_value = "10")]
    pub handshake_timeout: Seconds<1, 300>,

    /// Client connections this listener keeps open at once (1-10000000); more are accepted
    /// and closed at once, so the node (and its admin endpoint) stay reachable.
    #[arg(long, value_name = "N", default_value = "100000")]
    pub max_connections: Count<1, 10_000_000>,

    /// Requests per second each client address may make to this listener (1-1000000; IPv6
    /// clients by their /64); more are answered 429 with Retry-After. Off unless given.
    #[arg(long, value_name = "N")]
    pub rate_limit_requests: Option<values::RequestRate>,

    /// New TCP connections per second each source address (IPv6: each /64) may open to this
    /// listener (1-10000000), enforced by the XDP program: SYNs past it are dropped at the NIC
    /// and counted `rate_limited`. Off unless given; needs XDP.
    #[arg(long, value_name = "N")]
    pub rate_limit_syn: Option<values::SourceRate>,

    /// Frames per second each source address (IPv6: each /64) may send to this listener
    /// (1-10000000), enforced by the XDP program as `--rate-limit-syn`.
    #[arg(long, value_name = "N")]
    pub rate_limit_pps: Option<values::SourceRate>,

    /// Seconds (1-86400) a source that stays over `--rate-limit-syn` or `--rate-limit-pps`
    /// for a whole second is then blocked at the NIC, all its frames to this listener
    /// dropped; listed in /status, removable with `POST /unblock?ip=ADDR`. Off unless given.
    #[arg(long, value_name = "SECS")]
    pub auto_block: Option<Seconds<1, 86_400>>,

    /// SYN cookies at the NIC (http and https listeners; needs XDP): `on`, the XDP program
    /// answers every new connection itself and the kernel only sees the client's ACK; `auto`,
    /// only while SYNs to this listener arrive faster than `--syn-protect-threshold`; `off`.
    /// While answering, the daemon sets net.ipv4.tcp_syncookies=2 and tcp_timestamps=2.
    #[arg(long, value_name = "off|auto|on", default_value = "off")]
    pub syn_protect: SynProtect,

    /// SYNs per second to this listener (all sources) above which `--syn-protect auto`
    /// answers them with cookies (1-100000000, default 20000); it stops once they stay below
    /// half of it for 10 seconds.
    #[arg(long, value_name = "N")]
    pub syn_protect_threshold: Option<Count<1, 100_000_000>>,

    /// Forwarding rule, repeatable, evaluated in order:
    /// `name=N;host=H,...;path=P|path-prefix=P|path-regex=R;method=M,...;header=NAME:V|V;query=K:V|V;client=CIDR,...;action=forward|redirect:STATUS:LOCATION|fixed:STATUS:TYPE:BODY`.
    #[arg(long = "rule", value_name = "RULE")]
    #[serde(skip)]
    pub rules: Vec<String>,

    /// Who may connect: everyone, only the IP address group, or everyone but the group.
    #[arg(long, value_name = "MODE", default_value = "all")]
    pub access_control: AclMode,

    /// IP address group: comma-separated IPv4/IPv6 CIDRs (a bare address is a host), repeatable.
    #[arg(long = "ip-group", value_name = "CIDR,...", value_delimiter = ',')]
    #[serde(deserialize_with = "values::one_or_many")]
    pub ip_group: Vec<Cidr>,

    /// IP address group file: one CIDR per line, `#` starts a comment. Repeatable.
    #[arg(long = "ip-group-file", value_name = "PATH")]
    #[serde(deserialize_with = "values::one_or_many")]
    pub ip_group_file: Vec<PathBuf>,

    /// Read a PROXY protocol header (v1 or v2) at the start of every connection (https and
    /// http listeners), sent by a balancer in front from --proxy-protocol-from: the client
    /// it names is then the client for headers, rules, balancing, limits and logs.
    #[arg(long, value_name = "v1|v2")]
    pub accept_proxy_protocol: Option<crate::proxy_protocol::Version>,

    /// Who may send the PROXY protocol header: the balancers in front, as comma-separated
    /// CIDRs, repeatable. Connections from anywhere else are closed.
    #[arg(
        long = "proxy-protocol-from",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    #[serde(deserialize_with = "values::one_or_many")]
    pub proxy_protocol_from: Vec<Cidr>,

    /// File only: the `[[group]]` that takes requests no rule claims.
    #[arg(skip)]
    pub group: Option<String>,

    /// File only: names of `[ip_groups.NAME]` tables whose prefixes this listener's access
    /// control uses too.
    #[arg(skip)]
    #[serde(deserialize_with = "values::one_or_many")]
    pub ip_groups: Vec<String>,

    /// File only: `[[listener.rule]]` tables, the file's form of `--rule`.
    #[arg(skip)]
    #[serde(rename = "rule", alias = "rules")]
    pub rule_tables: Vec<RuleTable>,
}

/// A backend group: its servers, how they are balanced, checked and kept sticky.
#[derive(Clone, Debug, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSpec {
    /// Backend group name (1-255 characters).
    #[arg(
        long = "group-name",
        value_name = "NAME",
        default_value = "server_group-1"
    )]
    #[serde(rename = "name")]
    pub group_name: Label,

    /// Backend server, repeatable: ADDR:PORT with an optional weight 0-100 (default 1).
    #[arg(long = "backend", value_name = "ADDR:PORT[,weight=N]")]
    #[serde(alias = "backends", deserialize_with = "values::one_or_many")]
    pub backend: Vec<Backend>,

    /// Backend group description (at most 255 characters).
    #[arg(long = "group-description", value_name = "TEXT")]
    #[serde(rename = "description")]
    pub group_description: Option<Description>,

    /// How requests are spread over backends.
    #[arg(long, value_name = "ALGORITHM", default_value = "weighted-round-robin")]
    pub algorithm: Algorithm,

    /// Protocol to backends.
    #[arg(long, value_name = "PROTO", default_value = "http")]
    pub backend_protocol: BackendProtocolArg,

    /// Send a PROXY protocol header first on every backend connection (off, v1 or v2),
    /// naming the client and the address it connected to (v2 also the SNI and the TLS
    /// version). Such a connection serves that client's connection only.
    #[arg(long, value_name = "off|v1|v2", default_value = "off")]
    pub backend_proxy_protocol: values::BackendProxyProtocol,

    /// CA bundle (PEM) that HTTPS backends' certificates must chain to.
    #[arg(long, value_name = "PATH")]
    pub backend_ca: Option<PathBuf>,

    /// Do not verify HTTPS backends' certificates.
    #[arg(long)]
    pub backend_insecure: bool,

    /// Domain for health checks' Host header and the SNI name sent to HTTPS backends.
    #[arg(long, value_name = "DOMAIN")]
    pub hc_domain: Option<HcDomain>,

    /// Active health checks of every backend.
    #[arg(long, value_name = "KIND", default_value = "tcp")]
    pub health_check: CheckKind,

    /// Port health checks go to (1-65535); default: each backend's own port.
    #[arg(long, value_name = "PORT")]
    pub hc_port: Option<Port>,

    /// Path of http/https health checks (1-80 characters, starting with /).
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub hc_path: HcPath,

    /// Seconds between two checks of a backend (1-50).
    #[arg(long, value_name = "SECS", default_value = "5")]
    pub hc_interval: Seconds<1, 50>,

    /// Seconds a check may take (1-50).
    #[arg(long, value_name = "SECS", default_value = "3")]
    pub hc_timeout: Seconds<1, 50>,

    /// Consecutive failures before a backend is unhealthy, and successes before it is healthy
    /// again (1-10).
    #[arg(long, value_name = "N", default_value = "3")]
    pub hc_retries: Count<1, 10>,

    /// Seconds over which a backend that becomes healthy ramps up to its full weight (30-1200).
    #[arg(long, value_name = "SECS")]
    pub slow_start: Option<Seconds<30, 1200>>,

    /// Sticky sessions (weighted round robin only).
    #[arg(long, value_name = "MODE", default_value = "off")]
    pub sticky_session: StickyArg,

    /// The backend's session cookie, for --sticky-session app-cookie.
    #[arg(long, value_name = "NAME")]
    pub cookie_name: Option<String>,

    /// Minutes a sticky client stays pinned (1-1440).
    #[arg(long, value_name = "MINUTES", default_value = "20")]
    pub sticky_duration: Count<1, 1440>,

    /// Key (at least 32 bytes) authenticating lb-cookies, shared by every edgelb node that
    /// must honour them; default: a random key made at start.
    #[arg(long, value_name = "PATH")]
    pub sticky_key_file: Option<PathBuf>,
}

/// The node's own settings: XDP, the admin endpoint, shutdown, privileges, logs. In the file,
/// the top-level keys.
#[derive(Clone, Debug, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSpec {
    /// Interface to attach the XDP program to, repeatable. None: XDP is off.
    #[arg(long = "xdp-iface", value_name = "IFACE")]
    #[serde(deserialize_with = "values::one_or_many")]
    pub xdp_iface: Vec<String>,

    /// How to attach the XDP program.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub xdp_mode: XdpMode,

    /// Admin endpoint (/healthz, /metrics, /status); loopback unless --admin-allow-remote.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<values::Addr>,

    /// Serve the admin endpoint on a non-loopback address.
    #[arg(long)]
    pub admin_allow_remote: bool,

    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT (0-300).
    #[arg(long, value_name = "SECS", default_value = "10")]
    pub drain_timeout: Seconds<0, 300>,

    /// Once sockets are bound and XDP attached, run as this user (keeping only the capabilities
    /// map updates and reloads need; see README). Files read on reload must be readable by it.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Keys that encrypt TLS session tickets: one per line, 64 hex characters (32 random
    /// bytes, `openssl rand -hex 32`), `#` comments. The first encrypts new tickets, every key
    /// decrypts; the same file on every node resumes sessions on any of them. Re-read on
    /// reload. Default: random keys made at start, kept across reloads.
    #[arg(long, value_name = "PATH")]
    pub tls_ticket_key_file: Option<PathBuf>,

    /// ACME directory to order certificates from for --acme-domain names, e.g.
    /// https://acme-v02.api.letsencrypt.org/directory.
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,

    /// Contact address given to the ACME CA (expiry notices).
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// Where ACME certificates, their keys and the account are kept (created 0700; files
    /// 0600). Nodes sharing it share certificates: one orders, the others pick them up.
    #[arg(long, value_name = "PATH", default_value = "/var/lib/edgelb/acme")]
    pub acme_state_dir: PathBuf,

    /// PEM CA bundle to trust for the ACME directory's HTTPS (a private ACME CA); default: the
    /// usual public roots.
    #[arg(long, value_name = "PATH")]
    pub acme_ca: Option<PathBuf>,

    /// How the CA checks that this node answers for a name: tls-alpn-01 on the https
    /// listener itself (port 443 for public CAs), or http-01 on an http listener (port 80).
    #[arg(
        long,
        value_name = "tls-alpn-01|http-01",
        default_value = "tls-alpn-01"
    )]
    pub acme_challenge: values::AcmeChallenge,

    /// Accept private keys (--key, --sni-cert, --sticky-key-file, --tls-ticket-key-file) that
    /// group or others may read.
    #[arg(long)]
    pub allow_readable_keys: bool,

    /// Log a line per request (client, SNI, Host, method, target with query, version,
    /// status, bytes, rule, backend, upstream and total time, user agent) to PATH, or to
    /// stderr when PATH is left out or is `stderr`. SIGUSR1 reopens the file (logrotate).
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "stderr")]
    #[serde(deserialize_with = "values::access_log")]
    pub access_log: Option<AccessLogTarget>,

    /// Where the daemon writes its process id (removed at exit), for `edgelb reload` and
    /// `edgelb stop`; the outcome of each reload is kept beside it in PATH.reload.
    #[arg(long, value_name = "PATH", default_value = crate::control::pid_file::DEFAULT_PID_FILE)]
    pub pid_file: PathBuf,

    /// Access log lines as `key=value` text or as JSON objects.
    #[arg(long, value_name = "FORMAT", default_value = "plain")]
    pub access_log_format: crate::access_log::Format,

    /// This node's AS number (1-4294967295): announce the listeners' addresses over BGP to
    /// every --bgp-peer, through BIRD (--bgp-speaker), as /32 and /128 routes via this node.
    #[arg(long, value_name = "ASN")]
    pub bgp_local_as: Option<Count<1, 4294967295>>,

    /// BGP router id: an IPv4 address of this node (required with --bgp-local-as).
    #[arg(long, value_name = "IPV4")]
    pub bgp_router_id: Option<RouterId>,

    /// BGP peer, repeatable: ADDR,as=ASN. IPv4 peers get the IPv4 routes, IPv6 peers the IPv6
    /// ones.
    #[arg(long = "bgp-peer", value_name = "ADDR,as=ASN")]
    #[serde(deserialize_with = "values::one_or_many")]
    pub bgp_peer: Vec<BgpPeer>,

    /// Seconds a peer waits for a message before it drops the session and this node's routes
    /// (3-65535): how long a node that died or went silent keeps its traffic.
    #[arg(long, value_name = "SECS", default_value = "9")]
    pub bgp_hold_time: Seconds<3, 65535>,

    /// Seconds between withdrawing the routes on SIGTERM/SIGINT and closing the listeners, for
    /// the routers to move new connections elsewhere (0-300).
    #[arg(long, value_name = "SECS", default_value = "5")]
    pub bgp_withdraw_delay: Seconds<0, 300>,

    /// When a listener's address is announced: healthy (serving, and its group has a healthy
    /// backend) or serving (socket bound or XDP attached).
    #[arg(long, value_name = "WHEN", default_value = "healthy")]
    pub bgp_announce: BgpAnnounce,

    /// Run BFD on the BGP sessions, for peers that have it: a dead link is noticed in well
    /// under a second instead of the hold time.
    #[arg(long)]
    pub bgp_bfd: bool,

    /// The BIRD 2 daemon edgelb runs as its BGP speaker; its client is the same path with a
    /// trailing c (birdc).
    #[arg(long, value_name = "PATH", default_value = "bird")]
    pub bgp_speaker: PathBuf,
}

/// A `[[listener.rule]]` table: conditions (all must hold; a list holds when any of its
/// entries does) and an action.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTable {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub host: Vec<String>,
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub path: Vec<String>,
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub path_prefix: Vec<String>,
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub path_regex: Vec<String>,
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub method: Vec<String>,
    /// `header = { "x-env" = ["prod", "stage"] }`: a name and the values it may have.
    #[serde(default)]
    pub header: std::collections::BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub query: std::collections::BTreeMap<String, OneOrMany>,
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub client: Vec<String>,
    pub action: Option<String>,
    pub group: Option<String>,
    pub status: Option<StatusCode>,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub body: Option<String>,
    /// Requests per second per client address for the requests this rule matches.
    pub rate_limit_requests: Option<values::RequestRate>,
}

/// The values of a header or query condition: one string or a list.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct OneOrMany(#[serde(deserialize_with = "values::one_or_many")] pub Vec<String>);

/// An `[ip_groups.NAME]` table: inline CIDRs and files of CIDRs. (`NAME = [...]` is read as
/// `cidrs = [...]`.)
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpGroupSpec {
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub cidrs: Vec<Cidr>,
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub files: Vec<PathBuf>,
}

/// Every field at its flag's default: where each file table starts.
fn flag_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("edgelb"));
    // The defaults are constants of this file; a unit test parses them.
    command
        .try_get_matches_from(["edgelb"])
        .and_then(|m| T::from_arg_matches(&m))
        .unwrap_or_else(|e| panic!("the flags' defaults do not parse: {e}"))
}

macro_rules! default_from_flags {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                flag_defaults()
            }
        }
    )*};
}

default_from_flags!(ListenerSpec, GroupSpec, NodeSpec);

/// Relative paths in a file are relative to the file, wherever edgelb was started from.
fn under(dir: &Path, path: &mut PathBuf) {
    *path = dir.join(&*path);
}

impl ListenerSpec {
    pub fn resolve_paths(&mut self, dir: &Path) {
        for p in [&mut self.cert, &mut self.key, &mut self.client_ca]
            .into_iter()
            .flatten()
        {
            under(dir, p);
        }
        for sni in &mut self.sni_cert {
            under(dir, &mut sni.cert);
            under(dir, &mut sni.key);
        }
        self.ip_group_file.iter_mut().for_each(|p| under(dir, p));
    }
}

impl GroupSpec {
    pub fn resolve_paths(&mut self, dir: &Path) {
        for p in [&mut self.backend_ca, &mut self.sticky_key_file]
            .into_iter()
            .flatten()
        {
            under(dir, p);
        }
    }
}

impl NodeSpec {
    pub fn resolve_paths(&mut self, dir: &Path) {
        if let Some(p) = &mut self.tls_ticket_key_file {
            under(dir, p);
        }
        under(dir, &mut self.acme_state_dir);
        if let Some(p) = &mut self.acme_ca {
            under(dir, p);
        }
    }
}

impl IpGroupSpec {
    pub fn resolve_paths(&mut self, dir: &Path) {
        self.files.iter_mut().for_each(|p| under(dir, p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_defaults_parse() {
        assert_eq!(ListenerSpec::default().name.0, "listener-1");
        assert_eq!(GroupSpec::default().group_name.0, "server_group-1");
        assert_eq!(NodeSpec::default().drain_timeout.0.as_secs(), 10);
    }
}
