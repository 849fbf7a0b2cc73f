//! Command-line flags: one clap definition per flag, feeding `--help` and the config builder.
//! Values are kept as the user typed them; `config` validates them once, with messages that
//! name the flag, the value and what is allowed.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "edgelb",
    version,
    about = "Load balancer for Linux edge nodes: XDP access control at the NIC, HTTPS termination in userspace",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

// Parsed once per process: the size of the Check variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the flags and every file they name, print the effective configuration, exit
    /// non-zero on any problem. Nothing is bound or attached.
    Check(RunArgs),
    /// Print a running edgelb's listeners, backends and XDP counters from its admin endpoint.
    Status {
        /// The running edgelb's --admin address.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9900")]
        admin: String,
    },
    /// On an L4 backend without ipip/ip6tnl: strip the IP-in-IP header edgelb's XDP forwarding
    /// adds to packets for the VIPs, in XDP on IFACE, until SIGTERM/SIGINT. Only packets from
    /// the --from prefixes are decapsulated; tunnelled packets for a VIP from any other outer
    /// source are dropped.
    Decap {
        /// Interface the tunnelled packets arrive on.
        #[arg(long, value_name = "IFACE")]
        iface: String,
        /// A VIP whose tunnelled packets are decapsulated, repeatable.
        #[arg(long = "vip", value_name = "ADDR")]
        vips: Vec<String>,
        /// Required, repeatable: an IPv4 or IPv6 prefix (or a bare address) the outer source of
        /// tunnelled packets must lie in: the edgelb nodes' outer source prefixes,
        /// 172.16.0.0/16 and fd00:e1b::/96.
        #[arg(long = "from", value_name = "CIDR")]
        from: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccessControlArg {
    All,
    #[value(alias = "allowlist")]
    Whitelist,
    #[value(alias = "denylist")]
    Blacklist,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Https,
    Http,
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SslAuthArg {
    #[value(name = "one-way")]
    OneWay,
    Mutual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    #[value(alias = "true")]
    On,
    #[value(alias = "false")]
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendProtocolArg {
    Http,
    Https,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    /// Smooth weighted round robin.
    #[value(name = "weighted-round-robin", alias = "wrr")]
    Wrr,
    /// Fewest in-flight requests relative to weight.
    #[value(name = "weighted-least-connections", alias = "wlc")]
    Wlc,
    /// Maglev consistent hashing of the client address.
    #[value(name = "source-ip-hash", alias = "source-ip")]
    SourceIp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HealthCheckArg {
    Off,
    Tcp,
    Http,
    Https,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StickyArg {
    Off,
    /// edgelb's own authenticated cookie names the backend.
    #[value(name = "lb-cookie")]
    LbCookie,
    /// The backend's own cookie (--cookie-name) pins the client to the backend that set it.
    #[value(name = "app-cookie")]
    AppCookie,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// Native XDP, falling back to generic (skb) mode with a warning.
    Auto,
    /// Native (driver) mode only: refuse to start if the driver cannot.
    Native,
    /// Generic mode: any interface, after the kernel has allocated the packet.
    Skb,
    /// No XDP: access control is enforced on accept only.
    Off,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// TOML file with any number of listeners, groups, IP address groups and rules (see
    /// examples/edgelb.toml); the other flags add one listener on top. Read again on reload.
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,

    /// Listener name, in logs and metrics (1-255 characters).
    #[arg(long, value_name = "NAME", default_value = "listener-1")]
    pub name: String,

    /// Listener description (at most 255 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,

    /// Listener tag KEY=VALUE, repeatable; keys unique, 1-128 characters.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,

    /// Frontend protocol: https and http are served in userspace.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "PROTO",
        default_value = "https"
    )]
    pub protocol: ProtocolArg,

    /// Frontend address and port, e.g. 0.0.0.0:443 or [::]:443 (required without --config).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// Server certificate chain (PEM), the default certificate.
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,

    /// Private key of --cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,

    /// Certificate for a server name, repeatable: DOMAIN=CERT:KEY, DOMAIN exact or *.wildcard.
    #[arg(long = "sni-cert", value_name = "DOMAIN=CERT:KEY", value_parser = sni_cert)]
    pub sni_certs: Vec<SniCert>,

    /// SSL authentication: one-way, or mutual (clients need a certificate from --client-ca).
    #[arg(long, value_enum, ignore_case = true, value_name = "MODE")]
    pub ssl_auth: Option<SslAuthArg>,

    /// CA bundle (PEM) that client certificates must chain to; implies --ssl-auth mutual.
    #[arg(long, value_name = "PATH")]
    pub client_ca: Option<PathBuf>,

    /// Security policy: tls-1-2 (default), tls-1-2-strict or tls-1-3.
    #[arg(long, value_name = "POLICY")]
    pub tls_policy: Option<String>,

    /// Offer HTTP/2 to clients (ALPN h2).
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "on|off",
        default_value = "on"
    )]
    pub http2: OnOff,

    /// Add X-Forwarded-ELB-IP: the given IP, else the local address the client connected to.
    #[arg(long, value_name = "IP", num_args = 0..=1, default_missing_value = "")]
    pub transfer_lb_ip: Option<String>,

    /// Seconds a keep-alive connection may wait for its next request (0-4000; 0 closes after
    /// each response).
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "60"
    )]
    pub idle_timeout: String,

    /// Seconds a client has to send a request's headers, and the longest stall in its body (1-300).
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "60"
    )]
    pub request_timeout: String,

    /// Seconds a backend has to start its response before another is tried or 504 (1-300).
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "60"
    )]
    pub response_timeout: String,

    /// Seconds a client has to complete the TLS handshake (1-300).
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "10"
    )]
    pub handshake_timeout: String,

    /// Client connections this listener keeps open at once (1-10000000); more are accepted
    /// and closed at once, so the node (and its admin endpoint) stay reachable.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value = "100000"
    )]
    pub max_connections: String,

    /// Forwarding rule, repeatable, evaluated in order:
    /// `name=N;host=H,...;path=P|path-prefix=P|path-regex=R;method=M,...;header=NAME:V|V;query=K:V|V;client=CIDR,...;action=forward|redirect:STATUS:LOCATION|fixed:STATUS:TYPE:BODY`.
    #[arg(long = "rule", value_name = "RULE")]
    pub rules: Vec<String>,

    /// Backend group name (1-255 characters).
    #[arg(long, value_name = "NAME", default_value = "server_group-1")]
    pub group_name: String,

    /// Backend server, repeatable: ADDR:PORT with an optional weight 0-100 (default 1).
    #[arg(long = "backend", value_name = "ADDR:PORT[,weight=N]")]
    pub backends: Vec<String>,

    /// Backend group description (at most 255 characters).
    #[arg(long, value_name = "TEXT")]
    pub group_description: Option<String>,

    /// How requests are spread over backends.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "ALGORITHM",
        default_value = "weighted-round-robin"
    )]
    pub algorithm: AlgorithmArg,

    /// Protocol to backends.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "PROTO",
        default_value = "http"
    )]
    pub backend_protocol: BackendProtocolArg,

    /// CA bundle (PEM) that HTTPS backends' certificates must chain to.
    #[arg(long, value_name = "PATH")]
    pub backend_ca: Option<PathBuf>,

    /// Do not verify HTTPS backends' certificates.
    #[arg(long)]
    pub backend_insecure: bool,

    /// Domain for health checks' Host header and the SNI name sent to HTTPS backends.
    #[arg(long, value_name = "DOMAIN")]
    pub hc_domain: Option<String>,

    /// Active health checks of every backend.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "KIND",
        default_value = "tcp"
    )]
    pub health_check: HealthCheckArg,

    /// Port health checks go to (1-65535); default: each backend's own port.
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    pub hc_port: Option<String>,

    /// Path of http/https health checks (1-80 characters, starting with /).
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub hc_path: String,

    /// Seconds between two checks of a backend (1-50).
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "5"
    )]
    pub hc_interval: String,

    /// Seconds a check may take (1-50).
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "3"
    )]
    pub hc_timeout: String,

    /// Consecutive failures before a backend is unhealthy, and successes before it is healthy
    /// again (1-10).
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value = "3"
    )]
    pub hc_retries: String,

    /// Seconds over which a backend that becomes healthy ramps up to its full weight (30-1200).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub slow_start: Option<String>,

    /// Sticky sessions (weighted round robin only).
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "MODE",
        default_value = "off"
    )]
    pub sticky_session: StickyArg,

    /// The backend's session cookie, for --sticky-session app-cookie.
    #[arg(long, value_name = "NAME")]
    pub cookie_name: Option<String>,

    /// Minutes a sticky client stays pinned (1-1440).
    #[arg(
        long,
        value_name = "MINUTES",
        allow_negative_numbers = true,
        default_value = "20"
    )]
    pub sticky_duration: String,

    /// Key (at least 32 bytes) authenticating lb-cookies, shared by every edgelb node that
    /// must honour them; default: a random key made at start.
    #[arg(long, value_name = "PATH")]
    pub sticky_key_file: Option<PathBuf>,

    /// Who may connect: everyone, only the IP address group, or everyone but the group.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "MODE",
        default_value = "all"
    )]
    pub access_control: AccessControlArg,

    /// IP address group: comma-separated IPv4/IPv6 CIDRs (a bare address is a host), repeatable.
    #[arg(long = "ip-group", value_name = "CIDR,...")]
    pub ip_groups: Vec<String>,

    /// IP address group file: one CIDR per line, `#` starts a comment. Repeatable.
    #[arg(long = "ip-group-file", value_name = "PATH")]
    pub ip_group_files: Vec<PathBuf>,

    /// Interface to attach the XDP program to, repeatable. None: XDP is off.
    #[arg(long = "xdp-iface", value_name = "IFACE")]
    pub xdp_ifaces: Vec<String>,

    /// How to attach the XDP program.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "MODE",
        default_value = "auto"
    )]
    pub xdp_mode: XdpModeArg,

    /// Admin endpoint (/healthz, /metrics, /status); loopback unless --admin-allow-remote.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<String>,

    /// Serve the admin endpoint on a non-loopback address.
    #[arg(long)]
    pub admin_allow_remote: bool,

    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT (0-300).
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        default_value = "10"
    )]
    pub drain_timeout: String,

    /// Once sockets are bound and XDP attached, run as this user (keeping only the capabilities
    /// map updates and reloads need; see README). Files read on reload must be readable by it.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Accept private keys (--key, --sni-cert, --sticky-key-file) that group or others may read.
    #[arg(long)]
    pub allow_readable_keys: bool,

    /// Log a line per request: client, SNI, listener, backend, status, time to response headers.
    #[arg(long)]
    pub access_log: bool,

    /// Log lines as human-readable text or JSON.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// The flags given on the command line and their values as typed, in `--help` order;
    /// filled by `usage::parse_from`.
    #[arg(skip)]
    pub explicit: Vec<(String, String)>,
}

/// Only the run flags, to learn their defaults.
#[derive(Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    run: RunArgs,
}

impl RunArgs {
    /// Every flag at its default value: where each config-file table starts.
    pub fn defaults() -> Result<RunArgs, String> {
        DefaultsOnly::try_parse_from(["edgelb"])
            .map(|d| d.run)
            .map_err(|e| format!("the flags' defaults do not parse: {e}"))
    }
}

/// `DOMAIN=CERT:KEY`; the paths are split at the last colon.
pub fn sni_cert(value: &str) -> Result<SniCert, String> {
    let shape = || "expected DOMAIN=CERT:KEY, e.g. www.example.com=www.pem:www.key".to_string();
    let (domain, files) = value.split_once('=').ok_or_else(shape)?;
    let (cert, key) = files.rsplit_once(':').ok_or_else(shape)?;
    if domain.is_empty() || cert.is_empty() || key.is_empty() {
        return Err(shape());
    }
    Ok(SniCert {
        domain: domain.to_string(),
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    })
}

/// A `--sni-cert` (or a config file's `sni_cert` entry): a server name and its certificate
/// and key files. The file's `{ domain, cert, key }` tables become one without passing through
/// the flag's `DOMAIN=CERT:KEY`, so their paths may contain colons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniCert {
    pub domain: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl std::fmt::Display for SniCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={}:{}",
            self.domain,
            self.cert.display(),
            self.key.display()
        )
    }
}
