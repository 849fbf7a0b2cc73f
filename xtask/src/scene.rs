//! What a namespaced xtask run (`demo`, `soak`) owns and must remove on every exit, success,
//! failure or Ctrl-C: a scratch directory, network namespaces, edgelb, test backends and
//! other children.
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::signals::{SIGTERM, die_with_parent, send_signal};

pub struct Scene {
    pub tmp: PathBuf,
    /// Deleted last: deleting a namespace deletes its veth ends (and their peers) and any XDP
    /// program on them.
    pub namespaces: Vec<String>,
    /// Killed first (load generators and the like).
    pub others: Vec<Child>,
    pub edgelb: Option<Child>,
    pub backends: Vec<Option<Child>>,
    /// How long edgelb may take to stop on SIGTERM (drain, detach) before it is killed.
    stop_grace: Duration,
}

impl Scene {
    /// A scratch directory named for `kind` and this process.
    pub fn new(kind: &str, stop_grace: Duration) -> Result<Self> {
        let tmp = std::env::temp_dir().join(format!("edgelb-{kind}-{}", std::process::id()));
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Scene {
            tmp,
            namespaces: Vec::new(),
            others: Vec::new(),
            edgelb: None,
            backends: Vec::new(),
            stop_grace,
        })
    }

    /// `file` in the scratch directory.
    pub fn path(&self, file: &str) -> String {
        self.tmp.join(file).to_string_lossy().into_owned()
    }

    /// Stops every child (edgelb with SIGTERM first, so that it detaches XDP itself) and
    /// deletes the namespaces; the scratch directory stays until drop.
    pub fn tear_down(&mut self) {
        for mut child in self.others.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut child) = self.edgelb.take() {
            send_signal(child.id(), SIGTERM);
            let t = Instant::now();
            while t.elapsed() < self.stop_grace {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for mut child in self.backends.drain(..).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.drain(..) {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.tear_down();
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Starts `test-backend NAME ADDR` inside namespace `ns` and waits for the address it prints.
pub fn spawn_backend(ns: &str, bin: &Path, name: &str, addr: &str) -> Result<(Child, String)> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(bin)
        .args([name, addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if line.trim().is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("test-backend {name} {addr} did not start");
    }
    Ok((child, line.trim().to_string()))
}
