//! What `--syn-protect` changed in the kernel, written down while it is changed: a daemon
//! that cannot put the settings back itself (SIGKILL, the OOM killer, a service manager's
//! stop timeout) leaves them changed for the whole network namespace, and the next start,
//! finding the record, puts them back. One record per network namespace (the settings are
//! the namespace's), held locked by the daemon that wrote it.
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

/// Where the records are kept: a tmpfs, gone with a reboot, as the settings are.
const DIR: &str = "/run/edgelb";

/// A record in force: the file, locked while this daemon has the settings changed.
pub struct Record {
    path: PathBuf,
    _lock: Flock<File>,
}

/// This network namespace's record.
fn path() -> std::io::Result<PathBuf> {
    let ns = std::fs::metadata("/proc/self/ns/net")?.ino();
    Ok(PathBuf::from(DIR).join(format!("syn-protect-net{ns}.saved")))
}

impl Record {
    /// Writes down the settings' values before the change (`path value` a line).
    pub fn write(saved: &[(&'static str, String)]) -> std::io::Result<Record> {
        let path = path()?;
        std::fs::create_dir_all(DIR)?;
        let mut file = File::create(&path)?;
        for (setting, old) in saved {
            writeln!(file, "{setting} {old}")?;
        }
        file.sync_all()?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e)?;
        Ok(Record { path, _lock: lock })
    }

    /// The settings are back: the record goes.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// At start: a record no daemon holds is one whose daemon ended without putting the settings
/// back. Each setting still at the value it was set to (`set`) is put back; one changed since
/// (by an operator) is left as it is.
pub fn recover(set: &[(&'static str, &'static str)]) {
    let Ok(path) = path() else {
        return;
    };
    let Ok(file) = File::open(&path) else {
        return;
    };
    // Held: another edgelb in this namespace has the settings changed right now.
    let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    for line in text.lines() {
        let Some((setting, old)) = line.split_once(' ') else {
            continue;
        };
        let Some((setting, value)) = set.iter().find(|(s, _)| *s == setting) else {
            continue;
        };
        let now = std::fs::read_to_string(setting).unwrap_or_default();
        if now.trim() != *value {
            continue;
        }
        match std::fs::write(setting, old) {
            Ok(()) => info!(
                setting = setting.trim_start_matches("/proc/sys/"),
                value = old,
                "--syn-protect: kernel setting restored, left changed by an edgelb that did not end cleanly"
            ),
            Err(e) => {
                warn!(path = setting, value = old, error = %e, "--syn-protect: restoring a kernel setting")
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}
