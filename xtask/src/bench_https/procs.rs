//! The children of the benchmark (started, bounded in time, always stopped), and what /proc and
//! the backend's status page say about them.
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::Cmd;
use crate::signals::{self, SIGKILL, SIGTERM, check_stop, die_with_parent, send_signal};

/// `taskset -c CORE program args...`: the pinning is inherited by threads and forked workers.
pub fn pinned<I, S>(core: u32, program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string()).arg(program).args(args);
    cmd
}

/// A child running for the whole benchmark, stopped (with any processes it forked) on drop.
pub struct Proc {
    name: &'static str,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: bool,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: Command, dir: &Path) -> Result<Self> {
        let stderr = dir.join(format!("{}.stderr", name.replace(' ', "-")));
        let stdout = dir.join(format!("{}.stdout", name.replace(' ', "-")));
        let (child, _) = spawn_logged(cmd, &stdout, &stderr, " &")?;
        Ok(Self {
            name,
            child,
            stdout,
            stderr,
            exited: false,
        })
    }

    /// Fails, with the program's stderr, if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exited = true;
            bail!(
                "{} exited ({status}); its stderr:\n{}",
                self.name,
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        Ok(())
    }

    pub fn wait_for_port(&mut self, port: u16) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            check_stop()?;
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept on {addr} within 15s; its stderr:\n{}",
                    self.name,
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The pid and its children's pids (nginx's master and worker).
    pub fn pids(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut pids = vec![pid];
        if let Ok(children) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }

    /// user + system clock ticks of the process and its children.
    pub fn cpu_ticks(&self) -> u64 {
        self.pids().into_iter().map(process_ticks).sum()
    }

    /// Resident memory of the process and its children, KiB (`Rss` of smaps_rollup, summed:
    /// pages nginx's master and worker share are counted in both).
    pub fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(process_rss_kib).sum()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What it has printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Asks it to stop (SIGTERM) and waits up to `limit` for it to exit cleanly; false if it
    /// is still running.
    pub fn stop(&mut self, limit: Duration) -> Result<bool> {
        send_signal(self.pid(), SIGTERM);
        self.wait_exit(limit)
    }

    /// Waits up to `limit` for it to exit by itself; false if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            check_stop()?;
            if let Some(status) = self.child.try_wait()? {
                self.exited = true;
                if !status.success() {
                    bail!(
                        "{} failed ({status}); its stderr:\n{}",
                        self.name,
                        fs::read_to_string(&self.stderr).unwrap_or_default()
                    );
                }
                return Ok(true);
            }
            sleep(Duration::from_millis(50));
        }
        Ok(false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        let pids = self.pids();
        // SIGTERM: nginx and haproxy stop at once and edgelb shuts down; then SIGKILL whatever
        // is left, workers included, so no port stays taken.
        for &pid in &pids {
            send_signal(pid, SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            sleep(Duration::from_millis(20));
        }
        for &pid in &pids[1..] {
            send_signal(pid, SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` with its output in files and no stdin, dying with xtask, after printing its
/// command line (with `suffix`); the child and that line.
fn spawn_logged(
    mut cmd: Command,
    stdout: &Path,
    stderr: &Path,
    suffix: &str,
) -> Result<(Child, String)> {
    let line = command_line(&cmd);
    eprintln!("xtask: {line}{suffix}");
    cmd.stdin(Stdio::null())
        .stdout(File::create(stdout)?)
        .stderr(File::create(stderr)?);
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    Ok((child, line))
}

/// Runs a command to completion with a time limit, returning its stdout; stops it on
/// SIGINT/SIGTERM to xtask.
pub fn run_bounded(name: &str, cmd: Command, dir: &Path, limit: Duration) -> Result<String> {
    run_bounded_with(name, cmd, dir, limit, &mut |_| {})
}

/// `run_bounded`, calling `tick` with the time since the start about every 10 ms while the
/// command runs (to sample the proxy's CPU time when h2load's warm-up ends).
pub fn run_bounded_with(
    name: &str,
    cmd: Command,
    dir: &Path,
    limit: Duration,
    tick: &mut dyn FnMut(Duration),
) -> Result<String> {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    let (mut child, line) = spawn_logged(cmd, &out_path, &err_path, "")?;
    let started = Instant::now();
    let deadline = started + limit;
    let status = loop {
        tick(started.elapsed());
        if let Some(status) = child.try_wait()? {
            // Ctrl-C reaches h2load too (same process group): say so rather than "failed".
            check_stop()?;
            break status;
        }
        let stop = signals::stopping();
        if stop || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            if stop {
                bail!("interrupted");
            }
            bail!("`{line}` did not finish within {limit:?}");
        }
        sleep(Duration::from_millis(10));
    };
    let out = fs::read_to_string(&out_path)?;
    if !status.success() {
        bail!(
            "`{line}` failed: {status}\n{out}{}",
            fs::read_to_string(&err_path).unwrap_or_default()
        );
    }
    Ok(out)
}

pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            line = format!("{}={} {line}", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.contains(' ') {
            let _ = write!(line, " '{arg}'");
        } else {
            let _ = write!(line, " {arg}");
        }
    }
    line
}

/// Temporary directory for certs, configs, PID files and logs; removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `/tmp/edgelb-NAME.PID`: a task that makes two at once names them apart.
    pub fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("edgelb-{name}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Fails unless there are two cores to pin to: what is measured or trained runs alone on core
/// 0, its load on core 1.
pub fn require_two_cores(task: &str) -> Result<()> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("{task} pins the proxy to core 0 and the load to core 1: it needs 2 cores");
    }
    Ok(())
}

pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Bound together so they differ; released just before the servers bind them.
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// The Debian packages enable nginx and haproxy as services listening on port 80. Containers
/// usually have a policy-rc.d that stops the install from starting them, but they stay
/// enabled: disable them, and stop them if they run. Our instances use their own configs.
pub fn keep_system_services_off() {
    keep_services_off(&["nginx", "haproxy"]);
}

/// `services`' system instances disabled, and stopped if they run.
pub fn keep_services_off(services: &[&str]) {
    let systemd_runs = Path::new("/run/systemd/system").exists();
    for &service in services {
        let enabled = Cmd::new("systemctl")
            .args(["is-enabled", service])
            .output()
            .is_some_and(|s| s.trim() == "enabled");
        if enabled {
            let mut disable = Cmd::new("systemctl").args(["disable", "--quiet", service]);
            if systemd_runs {
                disable = disable.args(["--now"]);
            }
            if let Err(e) = disable.run() {
                eprintln!("xtask: warning: {e:#}");
            }
        }
        // Without systemd as init, a running system instance shows as its PID file.
        let pid_file = format!("/run/{service}.pid");
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        {
            eprintln!("xtask: stopping the system {service} (pid {pid})");
            send_signal(pid, SIGTERM);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc and the backend's status page

pub fn process_ticks(pid: u32) -> u64 {
    // Fields after the command name (which may contain spaces) in /proc/PID/stat: utime and
    // stime are the 14th and 15th fields overall, the 12th and 13th after the `)`.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// `Rss:` of /proc/PID/smaps_rollup in KiB, 0 if the process is gone.
pub fn process_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Rss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn clock_ticks_per_sec() -> f64 {
    Cmd::new("getconf")
        .args(["CLK_TCK"])
        .output()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub struct CoreTicks {
    busy: u64,
    total: u64,
}

impl CoreTicks {
    pub fn since(&self, before: &CoreTicks) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(before.busy) as f64 / total as f64
    }
}

pub fn core_ticks(core: u32) -> Result<CoreTicks> {
    let stat = fs::read_to_string("/proc/stat")?;
    let prefix = format!("cpu{core} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("no {prefix:?} in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    Ok(CoreTicks {
        busy: total - idle,
        total,
    })
}

/// Connections the backend nginx has accepted so far (stub_status).
pub fn backend_accepts(status_port: u16) -> Result<u64> {
    let page = http_get(status_port, "/")?;
    // Active connections: 1
    // server accepts handled requests
    //  12 12 34
    let mut lines = page
        .lines()
        .skip_while(|l| !l.contains("server accepts handled"));
    lines
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected backend status page:\n{page}"))
}

pub fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}
