//! The edgelb daemon as a real child process, optionally inside a namespace, with its log
//! captured to a file that tests read.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
pub use nix::sys::signal::Signal;

/// The edgelb binary built by this crate (same entry point as the shipped one).
///
/// Found next to the running executable (a benchmark binary in target/<profile>) or one
/// directory up (a test in target/<profile>/deps).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dirs: Vec<&Path> = exe.ancestors().skip(1).take(2).collect();
    dirs.iter()
        .map(|d| d.join("edgelb-under-test"))
        .find(|bin| bin.exists())
        .unwrap_or_else(|| {
            panic!(
                "edgelb-under-test missing from {dirs:?}: build the tests crate's binaries (cargo test builds them)"
            )
        })
}

/// Runs edgelb to completion (for `check` and invalid flags).
pub fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run edgelb: {e}"))
}

/// Open file descriptors of process `pid` now (0 if it is gone).
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Resident memory of process `pid` now, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts edgelb with `args` (inside `ns` if given) and waits until it logs that it is
    /// ready. Panics with the log if it exits or is not ready within 20 s.
    pub fn start(ns: Option<&Netns>, args: &[&str], log_dir: &Path) -> Self {
        Self::start_env(ns, args, log_dir, &[])
    }

    /// As [`Daemon::start`], with `env` set on top (e.g. another RUST_LOG).
    pub fn start_env(
        ns: Option<&Netns>,
        args: &[&str],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let log = log_dir.join(crate::netns::unique("edgelb-log-"));
        let file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = match ns {
            Some(ns) => ns.command(&binary().to_string_lossy()),
            None => Command::new(binary()),
        };
        cmd.args(args);
        // A daemon's pid file goes beside its log, not to /run where every test (and any
        // edgelb of the machine) would write the same one.
        let subcommand = matches!(args.first(), Some(&"decap" | &"check" | &"status"));
        if !subcommand && !args.contains(&"--pid-file") {
            cmd.arg("--pid-file").arg(log.with_extension("pid"));
        }
        cmd.env("RUST_LOG", "debug,hyper=info,h2=info,rustls=info,aya=info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log file"))
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn edgelb: {e}"));
        let mut d = Daemon {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if d.log().contains("edgelb ready") {
                return d;
            }
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("edgelb exited ({status}) before it was ready:\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "edgelb not ready after 20 s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (for /proc/PID: memory, descriptors, credentials).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The BGP speaker (BIRD) the daemon runs now, if any: a child of one of its threads, not
    /// the short-lived `bird -p` that checks a configuration before a start.
    pub fn bgp_speaker(&self) -> Option<i32> {
        self.children().into_iter().find(|p| {
            // A process that has exited but is not reaped yet (its check, `bird -p`, for a
            // moment) shows an empty command line: not a running speaker.
            comm(*p) == "bird"
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| !c.is_empty() && !c.split(|b| *b == 0).any(|arg| arg == b"-p"))
        })
    }

    /// The daemon's child processes, of all its threads.
    pub fn children(&self) -> Vec<i32> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Open file descriptors of the process now.
    pub fn fds(&self) -> usize {
        fds(self.pid())
    }

    /// Resident memory of the process now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once `done` holds for it, or as it is after `within`: lines reach the file from
    /// edgelb's writer thread a few milliseconds after the event they tell of.
    pub fn log_when(&self, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + within;
        loop {
            let log = self.log();
            if done(&log) || Instant::now() >= until {
                return log;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits (10 s at most) until the log holds `marker` `n` times or more; panics with the
    /// log otherwise.
    pub async fn wait_for_log(&self, marker: &str, n: usize) {
        for _ in 0..400 {
            if self.log().matches(marker).count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{marker:?} did not appear {n} times:\n{}", self.log());
    }

    /// Sends `signal` without waiting for anything (SIGHUP: reload).
    pub fn signal(&self, signal: Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
        }
    }

    /// Sends SIGTERM and waits (10 s at most) for the exit; returns the status and the log.
    pub fn stop(self) -> (ExitStatus, String) {
        self.stop_with(Signal::SIGTERM)
    }

    /// Sends `signal` and waits (10 s at most) for the exit; returns the status and the log.
    pub fn stop_with(mut self, signal: Signal) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("daemon is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "edgelb did not exit within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The value of `name=N` on the log's `xdp counters listener="..."` line for `listener`.
pub fn xdp_counter(log: &str, listener: &str, name: &str) -> u64 {
    let marker = format!("xdp counters listener={listener:?}");
    let line = log
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no {marker} line in the log:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= on {line:?}"))
}

/// The packets counted `name` (`decapsulated`, `refused`, ...) on the last `decap counters`
/// line of an `edgelb decap` log: at exit, the program's totals.
pub fn decap_counter(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("decap counters "))
        .unwrap_or_else(|| panic!("no decap counters line in the log:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= on {line:?}"))
}

/// The name (`comm`) of process `pid`, empty once it is gone.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}
