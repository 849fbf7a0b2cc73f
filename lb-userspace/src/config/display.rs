//! The effective configuration as `edgelb check` prints it. Paths and counts only: key
//! material never appears.
use std::fmt;

use super::{
    BackendProtocol, BackendVerify, Config, GroupConfig, ListenerConfig, SynProtection,
    TransferLbIp,
};
use crate::acl::AclMode;
use crate::rules::{ActionSpec, PathMatch, RuleSpec};

/// One line of a section: two spaces, the key in a column of 15 and a space, the value.
macro_rules! row {
    ($f:expr, $key:expr, $($value:tt)+) => {
        writeln!($f, "  {:<15} {}", $key, format_args!($($value)+))
    };
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            writeln!(f, "config file {}", file.display())?;
        }
        for l in &self.listeners {
            self.fmt_listener(f, l)?;
        }
        for g in &self.groups {
            fmt_group(f, g)?;
        }
        self.fmt_node(f)
    }
}

impl Config {
    fn fmt_listener(&self, f: &mut fmt::Formatter<'_>, l: &ListenerConfig) -> fmt::Result {
        writeln!(f, "listener {:?}", l.name)?;
        if let Some(d) = &l.description {
            row!(f, "description", "{d:?}")?;
        }
        for (k, v) in &l.tags {
            row!(f, "tag", "{k}={v}")?;
        }
        row!(f, "protocol", "{}", l.protocol.scheme())?;
        row!(f, "listen", "{}", l.listen)?;
        if let Some(tls) = &l.tls {
            row!(
                f,
                "cert",
                "{} ({} certificate(s) in chain)",
                tls.cert_path.display(),
                tls.settings.default.cert.len()
            )?;
            row!(f, "key", "{}", tls.key_path.display())?;
            for (name, cert, key) in &tls.sni_files {
                row!(
                    f,
                    "sni-cert",
                    "{} = {} : {}",
                    name.as_str(),
                    cert.display(),
                    key.display()
                )?;
            }
            match &tls.client_ca_path {
                Some(ca) => row!(f, "ssl-auth", "mutual (client CA {})", ca.display())?,
                None => row!(f, "ssl-auth", "one-way")?,
            }
            row!(f, "tls-policy", "{}", tls.settings.policy)?;
            if !l.acme_domains.is_empty() {
                row!(f, "acme-domain", "{}", l.acme_domains.join(", "))?;
            }
        }
        if l.protocol.is_l4() {
            let g = self.default_group(l);
            row!(
                f,
                "forwarding",
                "in XDP, IP-in-IP to group {:?} (Maglev), idle flows keep their backend {} min",
                g.name,
                g.flow_idle.as_secs() / 60
            )?;
            return fmt_access(f, l);
        }
        row!(f, "http2", "{}", if l.http2 { "on" } else { "off" })?;
        if l.tls.is_some() {
            row!(
                f,
                "http3",
                "{}",
                if l.http3 {
                    "on (QUIC on the same UDP port)"
                } else {
                    "off"
                }
            )?;
        }
        fmt_access(f, l)?;
        match l.transfer_lb_ip {
            TransferLbIp::Off => row!(f, "transfer-lb-ip", "off")?,
            TransferLbIp::LocalAddress => {
                row!(f, "transfer-lb-ip", "the local address clients connect to")?
            }
            TransferLbIp::Fixed(ip) => row!(f, "transfer-lb-ip", "{ip}")?,
        }
        row!(f, "group", "{}", self.default_group(l).name)?;
        for r in &l.rule_specs {
            row!(f, "rule", "{}", rule_line(r))?;
        }
        let t = &l.timeouts;
        row!(
            f,
            "timeouts",
            "idle={}s request={}s response={}s handshake={}s",
            t.idle.as_secs(),
            t.request.as_secs(),
            t.response.as_secs(),
            t.handshake.as_secs()
        )?;
        row!(f, "max-connections", "{}", l.max_connections)?;
        if let Some(n) = l.rate_limit_requests {
            row!(f, "rate-limit", "{n} requests/s per client")?;
        }
        if let Some(n) = l.rate_limit_syn {
            row!(
                f,
                "rate-limit-syn",
                "{n} new connections/s per source (XDP)"
            )?;
        }
        if let Some(n) = l.rate_limit_pps {
            row!(f, "rate-limit-pps", "{n} frames/s per source (XDP)")?;
        }
        if let Some(n) = l.auto_block {
            row!(f, "auto-block", "{n}s for a source over a limit for 1s")?;
        }
        match l.syn_protect {
            SynProtection::Off => Ok(()),
            SynProtection::On => row!(f, "syn-protect", "on: SYN cookies in XDP"),
            SynProtection::Auto { threshold } => row!(
                f,
                "syn-protect",
                "auto: SYN cookies in XDP above {threshold} SYNs/s"
            ),
        }
    }

    fn fmt_node(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "operations")?;
        match self.ops.admin {
            Some(a) => row!(f, "admin", "http://{a}/ (/healthz, /metrics, /status)")?,
            None => row!(f, "admin", "off")?,
        }
        row!(f, "drain-timeout", "{}s", self.ops.drain_timeout.as_secs())?;
        match &self.ops.access_log {
            Some(log) => {
                let format = match log.format {
                    crate::access_log::Format::Plain => "plain",
                    crate::access_log::Format::Json => "json",
                };
                match &log.target {
                    crate::access_log::Target::Stderr => row!(f, "access-log", "stderr, {format}")?,
                    crate::access_log::Target::File(p) => {
                        row!(f, "access-log", "{}, {format}", p.display())?
                    }
                }
            }
            None => row!(f, "access-log", "off")?,
        }
        match &self.ops.user {
            Some(u) => row!(f, "user", "{} (uid {}, gid {})", u.name, u.uid, u.gid)?,
            None => row!(f, "user", "(stays the starting user)")?,
        }
        match &self.tls_tickets {
            Some(t) => row!(
                f,
                "tls-tickets",
                "{} key{} from {} (the first encrypts, all decrypt)",
                t.keys.len(),
                if t.keys.len() == 1 { "" } else { "s" },
                t.path.display()
            )?,
            None => row!(
                f,
                "tls-tickets",
                "random keys of this node: kept across reloads, replaced every 6 h"
            )?,
        }
        if let Some(a) = &self.acme {
            writeln!(f, "acme")?;
            row!(f, "directory", "{}", a.directory)?;
            row!(f, "email", "{}", a.email.as_deref().unwrap_or("(none)"))?;
            row!(f, "state-dir", "{}", a.state_dir.display())?;
            row!(f, "challenge", "{}", a.challenge.name())?;
            if let Some(ca) = &a.ca {
                row!(f, "ca", "{}", ca.display())?;
            }
        }
        writeln!(f, "xdp")?;
        if self.xdp.enabled() {
            row!(f, "mode", "{}", self.xdp.mode.name())?;
            row!(f, "interfaces", "{}", self.xdp.ifaces.join(", "))?;
        } else {
            row!(f, "mode", "off (access control enforced on accept only)")?;
        }
        if let Some(b) = &self.bgp {
            writeln!(f, "bgp")?;
            row!(f, "local-as", "{} (router id {})", b.local_as, b.router_id)?;
            for p in &b.peers {
                row!(f, "peer", "{} as {}", p.addr, p.asn)?;
            }
            row!(
                f,
                "sessions",
                "hold time {}s{}, through {}",
                b.hold_time.as_secs(),
                if b.bfd { ", BFD" } else { "" },
                b.speaker.display()
            )?;
            let when = match b.announce {
                super::bgp::BgpAnnounce::Healthy => "serving with a healthy backend",
                super::bgp::BgpAnnounce::Serving => "serving",
            };
            row!(f, "announce", "each listener's address while {when}")?;
            row!(
                f,
                "withdraw-delay",
                "{}s (routes go first on SIGTERM)",
                b.withdraw_delay.as_secs()
            )?;
        }
        Ok(())
    }
}

fn fmt_group(f: &mut fmt::Formatter<'_>, g: &GroupConfig) -> fmt::Result {
    writeln!(f, "group {:?}", g.name)?;
    if let Some(d) = &g.description {
        row!(f, "description", "{d:?}")?;
    }
    row!(f, "algorithm", "{}", g.algorithm.name())?;
    match &g.protocol {
        BackendProtocol::Http => row!(f, "protocol", "http")?,
        BackendProtocol::Https(BackendVerify::Ca(path, _)) => {
            row!(f, "protocol", "https (verified against {})", path.display())?
        }
        BackendProtocol::Https(BackendVerify::Insecure) => {
            row!(f, "protocol", "https (certificates NOT verified)")?
        }
    }
    if let Some(d) = &g.hc_domain {
        row!(f, "hc-domain", "{d}")?;
    }
    let h = &g.health;
    if h.kind == super::CheckKind::Off {
        row!(f, "health-check", "off")?;
    } else {
        let port = h.port.map(|p| format!(", port {p}")).unwrap_or_default();
        let path = match h.kind {
            super::CheckKind::Tcp => String::new(),
            _ => format!(", path {}", h.path),
        };
        row!(
            f,
            "health-check",
            "{} every {}s, timeout {}s, {} retries{port}{path}",
            h.kind.name(),
            h.interval.as_secs(),
            h.timeout.as_secs(),
            h.retries
        )?;
    }
    match g.sticky.as_deref() {
        None => row!(f, "sticky-session", "off")?,
        Some(super::Stickiness::LbCookie { duration, .. }) => {
            let key = g
                .sticky_key_file
                .as_ref()
                .map_or("generated at start".to_string(), |p| {
                    format!("key {}", p.display())
                });
            row!(
                f,
                "sticky-session",
                "lb-cookie, {} min, {key}",
                duration.as_secs() / 60
            )?
        }
        Some(super::Stickiness::AppCookie { name, duration, .. }) => row!(
            f,
            "sticky-session",
            "app-cookie {name}, {} min",
            duration.as_secs() / 60
        )?,
    }
    if let Some(d) = g.slow_start {
        row!(f, "slow-start", "{}s", d.as_secs())?;
    }
    for b in &g.backends {
        row!(f, "backend", "{} weight={}", b.addr, b.weight)?;
    }
    Ok(())
}

fn fmt_access(f: &mut fmt::Formatter<'_>, l: &ListenerConfig) -> fmt::Result {
    let mode = l.access.mode.name();
    if l.access.mode == AclMode::All {
        return row!(f, "access-control", "{mode}");
    }
    let list: Vec<String> = l.access.prefixes.iter().map(ToString::to_string).collect();
    let n = list.len();
    row!(
        f,
        "access-control",
        "{mode} ({n} prefixes: {})",
        list.join(", ")
    )
}

/// A rule as a TOML inline table with the keys of a `[[listener.rule]]` table: what `check`
/// shows can be pasted back into the file.
fn rule_line(r: &RuleSpec) -> String {
    let mut keys = vec![format!("name = {}", quoted(&r.name))];
    if !r.hosts.is_empty() {
        keys.push(format!("host = {}", list(&r.hosts)));
    }
    for p in &r.paths {
        keys.push(match p {
            PathMatch::Exact(v) => format!("path = {}", quoted(v)),
            PathMatch::Prefix(v) => format!("path_prefix = {}", quoted(v)),
            PathMatch::Regex(v) => format!("path_regex = {}", quoted(v)),
        });
    }
    if !r.methods.is_empty() {
        keys.push(format!("method = {}", list(&r.methods)));
    }
    for (key, pairs) in [("header", &r.headers), ("query", &r.query)] {
        if !pairs.is_empty() {
            let inner: Vec<String> = pairs
                .iter()
                .map(|(name, values)| format!("{} = {}", quoted(name), list(values)))
                .collect();
            keys.push(format!("{key} = {{ {} }}", inner.join(", ")));
        }
    }
    if !r.client_cidrs.is_empty() {
        keys.push(format!("client = {}", list(&r.client_cidrs)));
    }
    if let Some(n) = r.rate_limit {
        keys.push(format!("rate_limit_requests = {n}"));
    }
    match &r.action {
        ActionSpec::Forward { group } => {
            keys.push("action = \"forward\"".into());
            keys.push(format!("group = {}", quoted(group)));
        }
        ActionSpec::Redirect { status, location } => {
            keys.push("action = \"redirect\"".into());
            keys.push(format!("status = {status}"));
            keys.push(format!("location = {}", quoted(location)));
        }
        ActionSpec::Fixed {
            status,
            content_type,
            body,
        } => {
            keys.push("action = \"fixed\"".into());
            keys.push(format!("status = {status}"));
            keys.push(format!("content_type = {}", quoted(content_type)));
            keys.push(format!("body = {}", quoted(body)));
        }
    }
    format!("{{ {} }}", keys.join(", "))
}

/// A TOML basic string on one line (the `toml` crate would write a multi-line one for a body
/// with newlines).
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", quoted.join(", "))
}
