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

/// Where `--access-log` writes: an existing file on a file system mounted read-only, or a
/// new file in a directory that is missing or read-only (as systemd's `ProtectSystem=strict`
/// mounts every path not in `ReadWritePaths=`), is refused. Checked without writing; what
/// cannot be looked at (a directory this user may not enter) is left to the open at start.
pub fn directory_for(path: &Path) -> Result<(), String> {
    use std::io::ErrorKind;
    let read_only = |at: &Path| {
        nix::sys::statvfs::statvfs(at)
            .is_ok_and(|fs| fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    };
    let rw_hint = "in a systemd unit with ProtectSystem=strict, list it in ReadWritePaths=";
    match std::fs::metadata(path) {
        // A FIFO or a device takes writes on a read-only mount.
        Ok(meta) if meta.is_file() && read_only(path) => {
            return Err(format!("is on a read-only file system ({rw_hint})"));
        }
        Ok(_) => return Ok(()),
        Err(e) if e.kind() != ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(format!("{} is not a directory", dir.display())),
        Ok(_) if read_only(dir) => Err(format!(
            "its directory {} is on a read-only file system ({rw_hint})",
            dir.display()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Err(format!("its directory {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}
