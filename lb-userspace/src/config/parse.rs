//! Values that are more than text: files of CIDRs and network interfaces, checked against
//! the machine.
use std::path::Path;

use ipnet::IpNet;

use super::ConfigError;
use super::values::{Cidr, TextValue};

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
        let net = Cidr::parse(line).map_err(|problem| {
            ConfigError::new(
                "--ip-group-file",
                &shown,
                format!("line {}: {:?}: {}", n + 1, line, problem),
            )
        })?;
        nets.push(net.0);
    }
    Ok(nets)
}

/// An existing network interface, named by `flag`.
pub fn interface(flag: &'static str, name: &str) -> Result<(), ConfigError> {
    if name.contains('\0') {
        return Err(ConfigError::new(flag, name, "not an interface name"));
    }
    if nix::net::if_::if_nametoindex(name).is_err() {
        return Err(ConfigError::new(
            flag,
            name,
            "no such network interface (see `ip link`)",
        ));
    }
    Ok(())
}

/// The directory a file is to be created in (`--access-log`): it exists, and is not on a
/// file system mounted read-only, as systemd's `ProtectSystem=strict` mounts every path not
/// in `ReadWritePaths=`. Checked without writing, so `check` as another user says the same.
pub fn directory_for(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) => return Err(format!("its directory {}: {e}", dir.display())),
    }
    let read_only = nix::sys::statvfs::statvfs(dir)
        .is_ok_and(|fs| fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    if read_only {
        return Err(format!(
            "its directory {} is on a read-only file system (in a systemd unit with \
             ProtectSystem=strict, list it in ReadWritePaths=)",
            dir.display()
        ));
    }
    Ok(())
}
