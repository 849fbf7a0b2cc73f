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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the flags and every file they name, print the effective configuration, exit
    /// non-zero on any problem. Nothing is bound or attached.
    Check(RunArgs),
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
    /// Listener name, in logs and metrics (1-255 characters).
    #[arg(long, value_name = "NAME", default_value = "listener-1")]
    pub name: String,

    /// Frontend address and port, e.g. 0.0.0.0:443 or [::]:443.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// Server certificate chain (PEM), the default certificate.
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,

    /// Private key of --cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,

    /// Backend group name (1-255 characters).
    #[arg(long, value_name = "NAME", default_value = "server_group-1")]
    pub group_name: String,

    /// Backend server, repeatable: ADDR:PORT with an optional weight 0-100 (default 1).
    #[arg(long = "backend", value_name = "ADDR:PORT[,weight=N]")]
    pub backends: Vec<String>,

    /// Who may connect: everyone, only the IP address group, or everyone but the group.
    #[arg(long, value_enum, value_name = "MODE", default_value = "all")]
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
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub xdp_mode: XdpModeArg,
}
