//! What `--syn-protect` changed in the kernel, written down while it is changed: a daemon
//! that cannot put the settings back itself (SIGKILL, the OOM killer, a service manager's
//! stop timeout) leaves them changed for the whole network namespace, and the next start,
//! finding the record, puts them back. One record per network namespace (the settings are
//! the namespace's), held locked by the daemon that wrote it.
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

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
    /// Writes down the settings' values before the change (`path value` a line). Locked
    /// before it is emptied: another edgelb holding this namespace's record keeps it.
    pub fn write(saved: &[(&'static str, String)]) -> std::io::Result<Record> {
        let path = path()?;
        std::fs::create_dir_all(DIR)?;
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e)?;
        lock.set_len(0)?;
        for (setting, old) in saved {
            writeln!(lock, "{setting} {old}")?;
        }
        lock.sync_all()?;
        Ok(Record { path, _lock: lock })
    }

    /// The settings are back: the record goes.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// At start: a record no daemon holds is one whose daemon ended without putting the settings
/// back. Its values, as (setting, old value), for those of `settings` it names; the record is
/// gone once read.
pub fn take_stale(settings: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    let Ok(path) = path() else {
        return Vec::new();
    };
    let Ok(file) = File::open(&path) else {
        return Vec::new();
    };
    // Held: another edgelb in this namespace has the settings changed right now.
    let Ok(mut lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return Vec::new();
    };
    let mut text = String::new();
    let _ = lock.read_to_string(&mut text);
    let _ = std::fs::remove_file(&path);
    text.lines()
        .filter_map(|line| {
            let (setting, old) = line.split_once(' ')?;
            let (setting, _) = settings.iter().find(|(s, _)| *s == setting)?;
            Some((*setting, old.to_string()))
        })
        .collect()
}
