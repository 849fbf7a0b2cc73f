//! Health-check settings of a group: plain data, read by `health`, which runs the checks.
use std::time::Duration;

/// What a check does: nothing, a TCP connect, or a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckKind {
    Off,
    Tcp,
    Http,
    Https,
}

impl CheckKind {
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Off => "off",
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
        }
    }
}

/// How a group's backends are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// None: each backend's own port.
    pub port: Option<u16>,
    pub path: String,
    /// Host header and SNI name; None: the backend's address.
    pub domain: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    /// The group's `--backend-proxy-protocol`: backends that require the header refuse
    /// connections without one, so checks send it too.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
}
