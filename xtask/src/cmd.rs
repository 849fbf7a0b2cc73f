//! Running child commands: echoed before they run, failing with the command line in the error.
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
