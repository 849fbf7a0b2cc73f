//! Parsers for single flag values, each returning the typed value or a [`ConfigError`] that
//! says what is allowed.
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ipnet::IpNet;

use super::{Backend, ConfigError};

const CIDR_HELP: &str = "expected an IPv4/IPv6 address or CIDR such as 10.0.0.0/8 or fd00::/64 \
                         (prefix length 0-32 for IPv4, 0-128 for IPv6)";

/// A name or label: 1-255 characters, no control characters.
pub fn label(flag: &'static str, value: &str) -> Result<String, ConfigError> {
    let len = value.chars().count();
    if !(1..=255).contains(&len) {
        return Err(ConfigError::new(
            flag,
            value,
            format!("must be 1-255 characters, got {len}"),
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
        ConfigError::new(
            FLAG,
            value,
            "expected ADDR:PORT[,weight=N], e.g. 10.0.1.5:8080,weight=3",
        )
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
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return Err(ConfigError::new(
            "--xdp-iface",
            name,
            "not an interface name",
        ));
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string and has no other effect.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
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
    fn labels_are_1_to_255_chars() {
        assert!(label("--name", "").is_err());
        assert!(label("--name", &"x".repeat(256)).is_err());
        assert!(label("--name", "a\nb").is_err());
        assert!(label("--name", &"é".repeat(255)).is_ok());
    }
}
