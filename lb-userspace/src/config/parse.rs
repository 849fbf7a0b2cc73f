//! Parsers for single flag values, each returning the typed value or a [`ConfigError`] that
//! says what is allowed.
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::{Backend, ConfigError};
use crate::tls::sni::is_dns_label;

const CIDR_HELP: &str = "expected an IPv4/IPv6 address or CIDR such as 10.0.0.0/8 or fd00::/64 \
                         (prefix length 0-32 for IPv4, 0-128 for IPv6)";

/// A name or label: 1-255 characters, no control characters.
pub fn label(flag: &'static str, value: &str) -> Result<String, ConfigError> {
    text(flag, value, 1, 255)
}

/// A free-text description: at most 255 characters, no control characters.
pub fn description(flag: &'static str, value: &str) -> Result<String, ConfigError> {
    text(flag, value, 0, 255)
}

fn text(flag: &'static str, value: &str, min: usize, max: usize) -> Result<String, ConfigError> {
    let len = value.chars().count();
    if !(min..=max).contains(&len) {
        let allowed = if min == 0 {
            format!("at most {max}")
        } else {
            format!("{min}-{max}")
        };
        return Err(ConfigError::new(
            flag,
            value,
            format!("must be {allowed} characters, got {len}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ConfigError::new(
            flag,
            value,
            "must not contain control characters",
        ));
    }
    Ok(value.to_string())
}

/// `--tag KEY=VALUE` values: keys 1-128 characters and unique, values at most 255 characters.
pub fn tags(values: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    const FLAG: &str = "--tag";
    let mut tags: Vec<(String, String)> = Vec::with_capacity(values.len());
    for v in values {
        let Some((key, value)) = v.split_once('=') else {
            return Err(ConfigError::new(FLAG, v, "expected KEY=VALUE"));
        };
        let key_len = key.chars().count();
        if !(1..=128).contains(&key_len) {
            return Err(ConfigError::new(
                FLAG,
                v,
                format!("key must be 1-128 characters, got {key_len}"),
            ));
        }
        if value.chars().count() > 255 {
            return Err(ConfigError::new(
                FLAG,
                v,
                "value must be at most 255 characters",
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(ConfigError::new(
                FLAG,
                v,
                "must not contain control characters",
            ));
        }
        if tags.iter().any(|(k, _)| k == key) {
            return Err(ConfigError::new(
                FLAG,
                v,
                format!("key {key:?} is given twice; tag keys must be unique"),
            ));
        }
        tags.push((key.to_string(), value.to_string()));
    }
    Ok(tags)
}

/// A whole number of seconds within `min..=max`.
pub fn seconds(
    flag: &'static str,
    value: &str,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|s| (min..=max).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ConfigError::new(
                flag,
                value,
                format!("must be a whole number of seconds, {min}-{max}"),
            )
        })
}

/// `--hc-path`: 1-80 characters, starting with `/`, of letters, digits and `-/._~';@$*+,=!:()%&?`.
pub fn hc_path(value: &str) -> Result<String, ConfigError> {
    const ALLOWED: &str = "-/._~';@$*+,=!:()%&?";
    let ok = (1..=80).contains(&value.len())
        && value.starts_with('/')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ALLOWED.contains(c));
    if !ok {
        return Err(ConfigError::new(
            "--hc-path",
            value,
            format!("must be 1-80 characters starting with /, of letters, digits and {ALLOWED}"),
        ));
    }
    Ok(value.to_string())
}

/// A whole number within `min..=max`.
pub fn number(flag: &'static str, value: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ConfigError::new(flag, value, format!("must be a whole number, {min}-{max}"))
        })
}

/// `--hc-domain`: a backend's private IP address, or a domain name of at least two labels of
/// letters, digits and hyphens (no hyphen first or last), 63 characters per label and 100 in all.
pub fn hc_domain(value: &str) -> Result<String, ConfigError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        let private = match ip {
            IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
            IpAddr::V6(v6) => v6.is_unique_local() || v6.is_loopback(),
        };
        if !private {
            return Err(ConfigError::new(
                "--hc-domain",
                value,
                "an IP address here must be a backend's private address (10/8, 172.16/12, 192.168/16, fc00::/7 or loopback)",
            ));
        }
        return Ok(value.to_string());
    }
    let labels: Vec<&str> = value.split('.').collect();
    if value.len() > 100 || labels.len() < 2 || !labels.iter().all(|l| is_dns_label(l)) {
        return Err(ConfigError::new(
            "--hc-domain",
            value,
            "expected a private IP, or a domain of at least two labels of letters, digits and \
             hyphens (no hyphen first or last, at most 63 characters per label, 100 in all)",
        ));
    }
    Ok(value.to_ascii_lowercase())
}

/// `ADDR:PORT` with a port 1-65535; IPv6 addresses in brackets.
pub fn socket_addr(flag: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    let addr: SocketAddr = value.parse().map_err(|_| {
        ConfigError::new(
            flag,
            value,
            "expected ADDR:PORT, e.g. 10.0.0.1:443 or [fd00::1]:443, with port 1-65535",
        )
    })?;
    if addr.port() == 0 {
        return Err(ConfigError::new(flag, value, "port must be 1-65535"));
    }
    Ok(addr)
}

/// One CIDR or bare address (a host prefix). Host bits are cleared: `10.0.0.1/8` is `10.0.0.0/8`.
pub fn cidr(flag: &'static str, value: &str) -> Result<IpNet, ConfigError> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    value
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| ConfigError::new(flag, value, CIDR_HELP))
}

/// A comma-separated list of CIDRs.
pub fn cidr_list(flag: &'static str, value: &str) -> Result<Vec<IpNet>, ConfigError> {
    let nets = value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| cidr(flag, s))
        .collect::<Result<Vec<_>, _>>()?;
    if nets.is_empty() {
        return Err(ConfigError::new(flag, value, CIDR_HELP));
    }
    Ok(nets)
}

/// A file of CIDRs, one per line, `#` comments and blank lines ignored.
pub fn cidr_file(path: &Path) -> Result<Vec<IpNet>, ConfigError> {
    let shown = path.display().to_string();
    crate::tls::certs::check_regular(path)
        .map_err(|problem| ConfigError::new("--ip-group-file", &shown, problem))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--ip-group-file", &shown, format!("cannot read: {e}")))?;
    let mut nets = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let net = cidr("--ip-group-file", line).map_err(|e| {
            ConfigError::new(
                "--ip-group-file",
                &shown,
                format!("line {}: {:?}: {}", n + 1, line, e.problem),
            )
        })?;
        nets.push(net);
    }
    Ok(nets)
}

/// `ADDR:PORT[,weight=N]`, weight 0-100, default 1.
pub fn backend(value: &str) -> Result<Backend, ConfigError> {
    const FLAG: &str = "--backend";
    let mut parts = value.split(',');
    let addr = parts.next().unwrap_or_default();
    let addr: SocketAddr = addr.parse().map_err(|_| {
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u64>().ok());
        match port {
            Some(p) if p > 65535 => {
                ConfigError::new(FLAG, value, format!("port {p} is out of range 1-65535"))
            }
            _ => ConfigError::new(
                FLAG,
                value,
                "expected ADDR:PORT[,weight=N], e.g. 10.0.1.5:8080,weight=3",
            ),
        }
    })?;
    if addr.port() == 0 {
        return Err(ConfigError::new(FLAG, value, "port must be 1-65535"));
    }
    let mut weight = 1u8;
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => {
                weight = w.parse::<u8>().ok().filter(|w| *w <= 100).ok_or_else(|| {
                    ConfigError::new(
                        FLAG,
                        value,
                        format!("weight {w:?} must be an integer 0-100"),
                    )
                })?;
            }
            _ => {
                return Err(ConfigError::new(
                    FLAG,
                    value,
                    format!("unknown option {opt:?}: the only option is weight=N (0-100)"),
                ));
            }
        }
    }
    Ok(Backend { addr, weight })
}

/// An existing network interface.
pub fn interface(name: &str) -> Result<(), ConfigError> {
    if name.contains('\0') {
        return Err(ConfigError::new(
            "--xdp-iface",
            name,
            "not an interface name",
        ));
    }
    if nix::net::if_::if_nametoindex(name).is_err() {
        return Err(ConfigError::new(
            "--xdp-iface",
            name,
            "no such network interface (see `ip link`)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_accept_hosts_and_clear_host_bits() {
        assert_eq!(
            cidr("--ip-group", "10.1.2.3").expect("host").to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            cidr("--ip-group", "10.1.2.3/8").expect("net").to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            cidr("--ip-group", "fd00::1/64").expect("v6").to_string(),
            "fd00::/64"
        );
        let e = cidr("--ip-group", "10.0.0.0/33").expect_err("bad length");
        assert!(e.to_string().contains("--ip-group \"10.0.0.0/33\""), "{e}");
        assert!(cidr_list("--ip-group", ",").is_err());
        assert_eq!(
            cidr_list("--ip-group", "10.0.0.0/8, fd00::/8")
                .expect("list")
                .len(),
            2
        );
    }

    #[test]
    fn backends_take_weights_0_to_100() {
        assert_eq!(backend("127.0.0.1:80").expect("plain").weight, 1);
        assert_eq!(backend("127.0.0.1:80,weight=0").expect("zero").weight, 0);
        assert_eq!(backend("[::1]:80,weight=100").expect("max").weight, 100);
        for bad in [
            "127.0.0.1:80,weight=101",
            "127.0.0.1:80,weight=-1",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:80,w=1",
        ] {
            let e = backend(bad).expect_err(bad);
            assert!(e.to_string().starts_with("--backend"), "{e}");
        }
    }

    #[test]
    fn listen_needs_a_port() {
        assert!(socket_addr("--listen", "0.0.0.0:0").is_err());
        assert!(socket_addr("--listen", "localhost:443").is_err());
        assert_eq!(socket_addr("--listen", "[::]:443").expect("v6").port(), 443);
    }

    #[test]
    fn numbers_tags_and_domains_are_range_checked() {
        assert_eq!(
            seconds("--idle-timeout", "0", 0, 4000).expect("zero"),
            Duration::ZERO
        );
        for bad in ["4001", "-1", "1.5", ""] {
            let e = seconds("--idle-timeout", bad, 0, 4000).expect_err(bad);
            assert!(e.to_string().contains("0-4000"), "{e}");
        }
        assert!(seconds("--request-timeout", "0", 1, 300).is_err());
        assert_eq!(
            tags(&["env=prod".into(), "team=".into()])
                .expect("tags")
                .len(),
            2
        );
        assert!(tags(&["a=1".into(), "a=2".into()]).is_err());
        assert!(tags(&["=x".into()]).is_err());
        assert!(tags(&[format!("{}=x", "k".repeat(129))]).is_err());
        assert!(hc_domain("www.example.com").is_ok());
        assert!(hc_domain("10.0.0.7").is_ok());
        for bad in [
            "8.8.8.8",
            "localhost",
            "-a.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(hc_domain(bad).is_err(), "{bad}");
        }
        let sni = crate::cli::sni_cert("*.Example.com=/a/b:c.pem:/a/b.key").expect("sni");
        assert_eq!(
            (sni.domain.as_str(), sni.cert.to_str(), sni.key.to_str()),
            ("*.Example.com", Some("/a/b:c.pem"), Some("/a/b.key"))
        );
        assert!(crate::cli::sni_cert("example.com=/a/b.pem").is_err());
        assert!(hc_path("/healthz?full=1").is_ok());
        for bad in [
            "",
            "healthz",
            "/a b",
            "/<script>",
            &format!("/{}", "a".repeat(80)),
        ] {
            assert!(hc_path(bad).is_err(), "{bad}");
        }
        assert_eq!(number("--hc-retries", "10", 1, 10).expect("max"), 10);
        assert!(number("--hc-retries", "11", 1, 10).is_err());
    }

    #[test]
    fn labels_are_1_to_255_chars() {
        assert!(label("--name", "").is_err());
        assert!(label("--name", &"x".repeat(256)).is_err());
        assert!(label("--name", "a\nb").is_err());
        assert!(label("--name", &"é".repeat(255)).is_ok());
    }
}
