//! The pid file (`--pid-file`), and beside it the outcome of the last reload, one line:
//! `N STARTED ok` or `N STARTED refused: REASON`, N counting the reloads since start and
//! STARTED the unix milliseconds at which that reload began reading its files.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    /// Neither file is followed if it is a symbolic link: root writes them.
    pub fn create(
        path: &Path,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> std::io::Result<PidFile> {
        let pid = std::process::id();
        // Another edgelb started with the same file (two instances, the default path): taking
        // it over would point `edgelb reload`/`stop` at this one, and its exit would then
        // leave the first unreachable.
        if let Ok(other) = read_pid(path)
            && other != pid
            && is_edgelb(other as i32)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "edgelb pid {other} runs with it, and keeps it: give each instance its own --pid-file"
                ),
            ));
        }
        write_new(path, &format!("{pid}\n"))?;
        let reloads = open_no_follow(&reload_path(path))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(
                std::os::fd::AsRawFd::as_raw_fd(&reloads),
                Some(uid),
                Some(gid),
            )
            .map_err(std::io::Error::from)?;
        }
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    /// Records the outcome of reload number `n`, whose read began at `started_ms`, for
    /// `edgelb reload` to read.
    pub fn record_reload(&self, n: u64, started_ms: u64, result: &Result<(), String>) {
        let line = match result {
            Ok(()) => format!("{n} {started_ms} ok\n"),
            // One line: the reader takes the first.
            Err(e) => format!("{n} {started_ms} refused: {}\n", e.replace('\n', " ")),
        };
        // In place, not renamed over: the directory may be root's while the daemon is not.
        // A reader that catches it half-written reads no result and looks again.
        let written =
            open_no_follow(&reload_path(&self.path)).and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %reload_path(&self.path).display(), "cannot record the reload's result for `edgelb reload`");
        }
    }
}

impl Drop for PidFile {
    /// Best effort: after `--user`, a root-owned directory keeps the files; `edgelb stop` and
    /// `reload` check that the pid is an edgelb before they signal it.
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

/// The last reload recorded: when its read began (unix milliseconds) and its outcome; None
/// while there is none, or the line is being written.
pub fn last_reload(pid_file: &Path) -> Option<(u64, Result<(), String>)> {
    let text = std::fs::read_to_string(reload_path(pid_file)).ok()?;
    let line = text.strip_suffix('\n')?.lines().next()?;
    let mut parts = line.splitn(3, ' ');
    let _n: u64 = parts.next()?.parse().ok()?;
    let started: u64 = parts.next()?.parse().ok()?;
    match parts.next()? {
        "ok" => Some((started, Ok(()))),
        rest => Some((started, Err(rest.strip_prefix("refused: ")?.to_string()))),
    }
}

/// Truncated and written through a descriptor that is not a symbolic link's target.
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// A new file in place of whatever was at `path` (a link is replaced, not followed), written
/// whole before it appears under its name.
fn write_new(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    std::fs::rename(&tmp, path)
}

/// Whether `pid` runs an edgelb binary (its command name, as the kernel keeps it).
pub(super) fn is_edgelb(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end().starts_with("edgelb"))
        && running(pid)
}

/// Whether `pid` is still a live process: gone, or a zombie its parent has not reaped yet
/// (it has exited; only its exit status is left).
pub(super) fn running(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
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
        assert_eq!(last_reload(&path), None);
        pid.record_reload(1, 1000, &Ok(()));
        assert_eq!(last_reload(&path), Some((1000, Ok(()))));
        pid.record_reload(2, 2000, &Err("--backend \"x\": bad\nsecond line".into()));
        assert_eq!(
            last_reload(&path),
            Some((2000, Err("--backend \"x\": bad second line".into())))
        );
        // Half a line is no result.
        std::fs::write(reload_path(&path), "3 30").expect("write");
        assert_eq!(last_reload(&path), None);
        drop(pid);
        assert!(!path.exists() && !reload_path(&path).exists());
        std::fs::write(&path, "garbage").expect("write");
        assert!(matches!(read_pid(&path), Err(ReadError::Garbage { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_link_planted_as_the_reload_record_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("edgelb-pid-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").expect("write");
        let path = dir.join("edgelb.pid");
        std::os::unix::fs::symlink(&victim, reload_path(&path)).expect("link");
        assert!(PidFile::create(&path, None).is_err());
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
        std::fs::remove_dir_all(&dir).ok();
    }
}
