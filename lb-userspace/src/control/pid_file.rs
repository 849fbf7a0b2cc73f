//! The pid file (`--pid-file`), and beside it the outcome of each reload: `N ok` or
//! `N refused: REASON`, N counting the reloads since start.
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the daemon writes its pid, and `edgelb reload`/`stop` read it.
pub const DEFAULT_PID_FILE: &str = "/run/edgelb.pid";

/// Written at start, removed at exit unless another daemon has written its own since.
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes the pid, and an empty reload record that `owner` (the `--user` the daemon
    /// becomes) may write: after the privilege drop it can no longer create files in /run.
    pub fn create(
        path: &Path,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> std::io::Result<PidFile> {
        let pid = std::process::id();
        write_atomically(path, &format!("{pid}\n"))?;
        let reloads = reload_path(path);
        std::fs::write(&reloads, "")?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&reloads, Some(uid), Some(gid)).map_err(std::io::Error::from)?;
        }
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    /// Records the outcome of reload number `n` for `edgelb reload` to read.
    pub fn record_reload(&self, n: u64, result: &Result<(), String>) {
        let line = match result {
            Ok(()) => format!("{n} ok\n"),
            // One line: the reader takes the first.
            Err(e) => format!("{n} refused: {}\n", e.replace('\n', " ")),
        };
        // In place, not renamed over: the directory may be root's while the daemon is not.
        // A reader that catches it half-written reads no result and looks again.
        if let Err(e) = std::fs::write(reload_path(&self.path), &line) {
            tracing::warn!(error = %e, path = %reload_path(&self.path).display(), "cannot record the reload's result for `edgelb reload`");
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.path).ok() == Some(self.pid) {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(reload_path(&self.path));
        }
    }
}

/// Where the reloads' outcomes are kept: `PATH.reload`.
pub fn reload_path(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_os_string();
    name.push(".reload");
    PathBuf::from(name)
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source} (is edgelb running, with this --pid-file?)", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} does not hold a process id", .path.display())]
    Garbage { path: PathBuf },
}

pub fn read_pid(path: &Path) -> Result<u32, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|&pid| pid > 1)
        .ok_or_else(|| ReadError::Garbage {
            path: path.to_path_buf(),
        })
}

/// The last reload's number and outcome (0 and Ok when none was recorded yet).
pub fn last_reload(pid_file: &Path) -> (u64, Result<(), String>) {
    let text = std::fs::read_to_string(reload_path(pid_file)).unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let (n, rest) = line.split_once(' ').unwrap_or((line, ""));
    let n = n.parse().unwrap_or(0);
    match rest.strip_prefix("refused: ") {
        Some(reason) => (n, Err(reason.to_string())),
        None => (n, Ok(())),
    }
}

/// Write to a temporary file and rename over `path`: a reader never sees half a file.
fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents.as_bytes())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_and_reload_outcomes_round_trip_and_go_at_exit() {
        let dir = std::env::temp_dir().join(format!("edgelb-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("edgelb.pid");
        let pid = PidFile::create(&path, None).expect("create");
        assert_eq!(read_pid(&path).expect("pid"), std::process::id());
        assert_eq!(last_reload(&path), (0, Ok(())));
        pid.record_reload(1, &Ok(()));
        assert_eq!(last_reload(&path), (1, Ok(())));
        pid.record_reload(2, &Err("--backend \"x\": bad\nsecond line".into()));
        assert_eq!(
            last_reload(&path),
            (2, Err("--backend \"x\": bad second line".into()))
        );
        drop(pid);
        assert!(!path.exists() && !reload_path(&path).exists());
        std::fs::write(&path, "garbage").expect("write");
        assert!(matches!(read_pid(&path), Err(ReadError::Garbage { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
