//! The command line: the subcommands, and the run flags, which are the configuration's own
//! listener, group and node structs (see `config::spec`) plus the two only a command line has.
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::spec::{GroupSpec, ListenerSpec, NodeSpec};
use crate::config::{EtcdSnapshot, Flags};

#[derive(Debug, Parser)]
#[command(
    name = "edgelb",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("EDGELB_COMMIT"), ")"),
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
        /// The running edgelb's --admin address (default: the `admin` key of --config, else
        /// 127.0.0.1:9900).
        #[arg(long, value_name = "ADDR:PORT")]
        admin: Option<String>,
        /// The running edgelb's configuration file, to find its admin address in.
        #[arg(short = 'c', long, value_name = "PATH")]
        config: Option<std::path::PathBuf>,
    },
    /// Reload the running edgelb (SIGHUP to the pid in --pid-file) and wait for the outcome:
    /// exit 1 with the reason when the new configuration is refused (the old one stays).
    Reload {
        /// The running edgelb's --pid-file.
        #[arg(long, value_name = "PATH", default_value = crate::control::pid_file::DEFAULT_PID_FILE)]
        pid_file: std::path::PathBuf,
    },
    /// Stop the running edgelb (SIGTERM to the pid in --pid-file): it drains, then exits.
    Stop {
        /// The running edgelb's --pid-file.
        #[arg(long, value_name = "PATH", default_value = crate::control::pid_file::DEFAULT_PID_FILE)]
        pid_file: std::path::PathBuf,
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
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// TOML file with any number of listeners, groups, IP address groups and rules (see
    /// examples/edgelb.toml); the other flags add one listener on top. Read again on reload.
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,

    /// Check the configuration and exit, as `edgelb check` (nginx's -t).
    #[arg(short = 't', long = "test-config")]
    pub test_config: bool,

    /// etcd endpoints (comma-separated, e.g. http://10.0.0.5:2379) to read the configuration
    /// from instead of --config: the TOML at PREFIX/config, IP groups (CIDRs, one a line) at
    /// PREFIX/ip_groups/NAME. Watched: a change is applied within a second, checked like a
    /// reload; while etcd is unreachable the last good configuration keeps serving.
    #[arg(
        long,
        value_name = "URL,...",
        value_delimiter = ',',
        conflicts_with = "config",
        requires = "config_prefix"
    )]
    pub config_etcd: Vec<String>,

    /// The key prefix of this node's configuration in etcd, e.g. /edgelb/web.
    #[arg(long, value_name = "PREFIX", requires = "config_etcd", value_parser = etcd_prefix)]
    pub config_prefix: Option<String>,

    /// The configuration last read from etcd; filled before the configuration is built.
    #[arg(skip)]
    pub etcd_snapshot: Option<EtcdSnapshot>,

    #[command(flatten)]
    pub listener: ListenerSpec,

    #[command(flatten)]
    pub group: GroupSpec,

    #[command(flatten)]
    pub node: NodeSpec,

    /// Log lines as human-readable text or JSON.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// The flags given on the command line and their values as typed, in `--help` order;
    /// filled by `usage::parse_from`.
    #[arg(skip)]
    pub explicit: Vec<(String, String)>,
}

/// `--help`'s sections after Options, with the long names of their flags. clap lists the
/// sections in the order of their first flag and the flags in the order of the structs; this
/// table follows both. The layout of `--help` is the command line's business, not the
/// configuration's: the specs carry no headings.
const SECTIONS: [(&str, &str); 12] = [
    ("Listener", "name description tag protocol listen rule"),
    (
        "TLS",
        "cert key acme-domain sni-cert ssl-auth client-ca tls-policy http2 http3 transfer-lb-ip",
    ),
    (
        "Timeouts and limits",
        "idle-timeout request-timeout response-timeout handshake-timeout max-connections \
         rate-limit-requests rate-limit-syn rate-limit-pps auto-block syn-protect \
         syn-protect-threshold",
    ),
    (
        "Access control",
        "access-control ip-group ip-group-file accept-proxy-protocol proxy-protocol-from",
    ),
    (
        "Backend group",
        "group-name backend group-description algorithm backend-protocol backend-proxy-protocol \
         backend-ca backend-insecure",
    ),
    (
        "Health checks and slow start",
        "hc-domain health-check hc-port hc-path hc-interval hc-timeout hc-retries slow-start",
    ),
    (
        "Sticky sessions",
        "sticky-session cookie-name sticky-duration sticky-key-file",
    ),
    ("XDP", "xdp-iface xdp-mode"),
    (
        "Operation",
        "admin admin-allow-remote drain-timeout user tls-ticket-key-file allow-readable-keys \
         pid-file",
    ),
    (
        "ACME certificates",
        "acme-directory acme-email acme-state-dir acme-ca acme-challenge",
    ),
    ("Logging", "access-log access-log-format log-format"),
    (
        "BGP",
        "bgp-local-as bgp-router-id bgp-peer bgp-hold-time bgp-withdraw-delay bgp-announce bgp-bfd \
         bgp-speaker",
    ),
];

/// The command line as it is parsed and shown. Every run flag's choices are read without
/// regard to case, as the file's are, and its value may look like a negative number, so that
/// `--idle-timeout -1` meets the flag's own range rather than clap's "unexpected argument";
/// and each run flag is put in its `--help` section.
pub fn command() -> clap::Command {
    fn arrange(arg: clap::Arg) -> clap::Arg {
        let arg = if arg.get_action().takes_values() {
            arg.ignore_case(true).allow_negative_numbers(true)
        } else {
            arg
        };
        let long = arg.get_long().unwrap_or_default();
        match SECTIONS
            .iter()
            .find(|(_, flags)| flags.split_whitespace().any(|f| f == long))
        {
            Some((heading, _)) => arg.help_heading(*heading),
            None => arg,
        }
    }
    Cli::command()
        .mut_args(arrange)
        .mut_subcommand("check", |check| check.mut_args(arrange))
}

impl RunArgs {
    /// What the configuration reads of the command line.
    pub fn flags(&self) -> Flags<'_> {
        Flags {
            file: self.config.as_deref(),
            etcd: self.etcd_snapshot.as_ref(),
            listener: &self.listener,
            group: &self.group,
            node: &self.node,
            given: &self.explicit,
        }
    }
}

/// An etcd key prefix: absolute, without a trailing slash (keys below it are `PREFIX/...`).
fn etcd_prefix(value: &str) -> Result<String, String> {
    let trimmed = value.trim_end_matches('/');
    if !value.starts_with('/') || trimmed.is_empty() || value.contains(char::is_whitespace) {
        return Err("expected an absolute key prefix such as /edgelb/web".into());
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name left in `SECTIONS` after its flag is renamed or removed would place nothing
    /// (the help test catches the other way round: a flag in no section).
    #[test]
    fn every_name_in_the_sections_is_a_flag() {
        let command = command();
        for (heading, flags) in SECTIONS {
            for flag in flags.split_whitespace() {
                let arg = command.get_arguments().find(|a| a.get_long() == Some(flag));
                assert!(
                    arg.is_some_and(|a| a.get_help_heading() == Some(heading)),
                    "{heading}: --{flag}"
                );
            }
        }
    }
}
