//! Running child commands: echoed before they run, failing with the command line in the error.
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail};

pub struct Cmd {
    inner: Command,
    line: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let mut inner = Command::new(program.as_ref());
        // Tools installed by `cargo install` (bpf-linker) and rustup's proxies live here; a root
        // shell started by CI may not have it on PATH.
        inner.env("PATH", path_with_cargo_bin());
        Self {
            inner,
            line: program.as_ref().to_string_lossy().into_owned(),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self.line.push(' ');
            self.line.push_str(&arg.as_ref().to_string_lossy());
            self.inner.arg(arg);
        }
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        self.line = format!("(cd {}; {})", dir.as_ref().display(), self.line);
        self.inner.current_dir(dir);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.line = format!("{key}={} {}", value.as_ref().to_string_lossy(), self.line);
        self.inner.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.line = format!("env -u {key} {}", self.line);
        self.inner.env_remove(key);
        self
    }

    /// Runs to completion with inherited stdio; a non-zero exit is an error.
    pub fn run(mut self) -> Result<()> {
        eprintln!("xtask: {}", self.line);
        let status = self
            .inner
            .status()
            .with_context(|| format!("cannot start `{}`", self.line))?;
        if !status.success() {
            bail!("`{}` failed: {status}", self.line);
        }
        Ok(())
    }

    /// Runs quietly and returns stdout, or None if it could not run or failed.
    pub fn output(mut self) -> Option<String> {
        let out = self.inner.stderr(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts it in a process group of its own at the idle scheduling class (`chrt --idle`),
    /// output to `log`: it gets the CPU only when nothing else wants it, so it can overlap
    /// timing-sensitive work. Dropping the handle kills the whole group; xtask ending
    /// otherwise kills the command (its rustc children finish the crate they are on).
    pub fn spawn_idle(self, log: &Path) -> Result<Background> {
        let mut idle = Command::new("chrt");
        idle.args(["--idle", "0"])
            .arg(self.inner.get_program())
            .args(self.inner.get_args());
        if let Some(dir) = self.inner.get_current_dir() {
            idle.current_dir(dir);
        }
        for (key, value) in self.inner.get_envs() {
            match value {
                Some(value) => idle.env(key, value),
                None => idle.env_remove(key),
            };
        }
        // Ctrl-C or SIGTERM ends xtask without its drop guards: the build goes with it.
        crate::signals::die_with_parent(&mut idle);
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        eprintln!(
            "xtask: in the background, at idle priority, output to {}: {}",
            log.display(),
            self.line
        );
        let child = idle
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start `chrt --idle 0 {}`", self.line))?;
        Ok(Background {
            child: Some(child),
            line: self.line,
            log: log.to_path_buf(),
        })
    }

    /// Replaces this process, so signals (Ctrl-C, SIGTERM) reach the program directly.
    pub fn exec(mut self) -> Result<()> {
        eprintln!("xtask: {}", self.line);
        let err = self.inner.exec();
        Err(err).with_context(|| format!("cannot exec `{}`", self.line))
    }
}

pub fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

fn path_with_cargo_bin() -> OsString {
    let bin = cargo_bin();
    let current = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&current).any(|p| p == bin) {
        return current;
    }
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&current));
    std::env::join_paths(paths).unwrap_or(current)
}

/// A command running in the background (see [`Cmd::spawn_idle`]).
pub struct Background {
    child: Option<Child>,
    line: String,
    log: PathBuf,
}

impl Background {
    /// Waits for it; a non-zero exit is an error carrying the end of its log.
    pub fn wait(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("`{}` was already waited for", self.line);
        };
        let status = child
            .wait()
            .with_context(|| format!("waiting for `{}`", self.line))?;
        if status.success() {
            eprintln!("xtask: done in the background: {}", self.line);
            return Ok(());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        bail!(
            "`{}` failed: {status}; the end of {}:\n{}",
            self.line,
            self.log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The group: cargo's rustc and build-script children too.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_command_reports_its_failure_with_its_output() {
        let dir = std::env::temp_dir().join(format!("xtask-bg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ok = Cmd::new("sh")
            .args(["-c", "exit 0"])
            .spawn_idle(&dir.join("ok.log"))
            .expect("spawn");
        assert!(ok.wait().is_ok());
        let failed = Cmd::new("sh")
            .args(["-c", "echo \"$GREETING\"; exit 3"])
            .env("GREETING", "broken build")
            .spawn_idle(&dir.join("failed.log"))
            .expect("spawn");
        let err = failed.wait().expect_err("exit 3").to_string();
        assert!(err.contains("broken build"), "{err}");
        // Dropped unwaited: the group is killed, not left running.
        let started = std::time::Instant::now();
        drop(
            Cmd::new("sh")
                .args(["-c", "sleep 30 & wait"])
                .spawn_idle(&dir.join("killed.log"))
                .expect("spawn"),
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
