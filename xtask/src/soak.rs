//! `cargo xtask soak --minutes N` (root; not part of CI): edgelb under a mixed HTTPS load for N
//! minutes while backends die and come back, the configuration is reloaded and the XDP access
//! list changes, then a report of what failed and why, and of edgelb's memory and descriptors.
//!
//! Topology: a load balancer namespace with edgelb (release build) on 0.0.0.0:443, native XDP
//! on the three client-facing veths, a whitelist read from an IP group file, `--health-check
//! tcp --hc-interval 1 --hc-timeout 1 --hc-retries 2` over three `test-backend` processes on
//! 127.0.0.1:8181-8183; three client namespaces c1-c3 (10.78.N.2-4 each, the load's sources)
//! running `soak-load` (HTTP/1.1 keep-alive, HTTP/2 multiplexed, a new TLS connection per
//! request; 8 requests in flight per namespace), and a probe address 10.78.1.200 in c1 that
//! the load never uses.
//!
//! During the run: one backend at a time SIGKILLed about every 90 s and restarted 10 s later;
//! ten SIGHUP reloads spread evenly, each after rewriting the IP group file (a prefix that
//! covers none of the clients added or removed; the 5th delists the probe, the 6th lists it
//! again, each time probed with curl and the `dropped_acl` counter read).
//!
//! Everything is undone on success, error and Ctrl-C (a drop guard kills the children and
//! deletes the namespaces and the temp dir; children also die with xtask via
//! PR_SET_PDEATHSIG).
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::demo::{self, counter, ip, is_root, print_tail};
use crate::scene::{Scene, spawn_backend};
use crate::signals::{self, SIGHUP, SIGTERM, check_stop, die_with_parent, send_signal};
use crate::target_dir;

const ADMIN: &str = "127.0.0.1:9901";
const SNI: &str = "edgelb.demo";
const BACKENDS: [(&str, &str); 3] = [
    ("s1", "127.0.0.1:8181"),
    ("s2", "127.0.0.1:8182"),
    ("s3", "127.0.0.1:8183"),
];
const HC_INTERVAL: u64 = 1;
const HC_TIMEOUT: u64 = 1;
const HC_RETRIES: u64 = 2;
/// A backend kill's health-detection window: interval x retries + timeout + 1 s.
const WINDOW_MS: u64 = (HC_INTERVAL * HC_RETRIES + HC_TIMEOUT + 1) * 1000;
/// Client namespaces; each has three load sources 10.78.N.2-4.
const CLIENTS: u8 = 3;
/// In c1, never used by the load: delisted and listed again under load.
const PROBE: &str = "10.78.1.200";
/// Every load source is in one of these; the probe is not.
const LOAD_PREFIXES: [&str; 3] = ["10.78.1.0/29", "10.78.2.0/29", "10.78.3.0/29"];
/// Prefixes added and removed by reloads: none covers a client.
const EXTRA_PREFIXES: [&str; 4] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "100.64.0.0/10",
];
const RELOADS: usize = 10;
/// A killed backend stays down this long.
const DOWN_SECS: f64 = 10.0;
/// About this often a backend is killed.
const KILL_EVERY_SECS: f64 = 90.0;
const RELOADED: &str = "configuration and certificates reloaded";

pub fn run(minutes: f64) -> Result<()> {
    if !is_root() {
        bail!("the soak creates network namespaces and attaches XDP: run it as root");
    }
    if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
        bail!("--minutes must be above 0 and at most a day");
    }
    crate::build_test_bins(&["test-backend", "soak-load"])?;
    signals::install_handlers();
    let bin = target_dir().join("release");
    let mut soak = Soak::new(bin)?;
    let result = soak.play(minutes * 60.0);
    if let Err(e) = &result {
        println!("\n!! soak failed: {e:#}");
        if let Ok(log) = fs::read_to_string(soak.scene.tmp.join("edgelb.log")) {
            println!("-- last edgelb log lines --");
            print_tail(&log, 20);
        }
    }
    drop(soak);
    result
}

/// One sample of edgelb's resources.
#[derive(Clone, Copy)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: usize,
    /// edgelb's user + system CPU time, in clock ticks.
    cpu_ticks: u64,
    /// The machine's busy and total CPU time (all CPUs), in clock ticks.
    machine: (u64, u64),
}

struct Kill {
    backend: &'static str,
    secs: f64,
    at_ms: u64,
}

struct Soak {
    bin: PathBuf,
    lb: String,
    clients: Vec<String>,
    /// `others` are the load generators.
    scene: Scene,
}

impl Soak {
    fn new(bin: PathBuf) -> Result<Self> {
        let id = std::process::id();
        Ok(Self {
            bin,
            lb: format!("edgelb-soak-lb-{id}"),
            clients: (1..=CLIENTS)
                .map(|n| format!("edgelb-soak-c{n}-{id}"))
                .collect(),
            // A loaded edgelb drains for up to its drain timeout.
            scene: Scene::new("soak", Duration::from_secs(15))?,
        })
    }

    fn path(&self, file: &str) -> String {
        self.scene.path(file)
    }

    fn play(&mut self, secs: f64) -> Result<()> {
        println!("== soak: {:.0} s ==", secs);
        self.topology()?;
        demo::certificates(&self.scene.tmp)?;
        for (name, addr) in BACKENDS {
            let child = self.spawn_backend(name, addr)?;
            self.scene.backends.push(Some(child));
        }
        let mut acl = Acl {
            probe_listed: true,
            extras: Vec::new(),
        };
        self.write_acl(&acl)?;
        self.start_edgelb()?;
        let pid = self.scene.edgelb.as_ref().context("edgelb")?.id();
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "edgelb" {
            bail!("pid {pid} is {comm:?}, not edgelb: cannot sample its memory");
        }

        // The probe is served while listed.
        let (code, http) = self.probe()?;
        println!("probe {PROBE} listed: curl exit {code}, HTTP {http}");
        if http != "200" {
            bail!("the probe client is not served before the run (curl exit {code}, {http})");
        }

        let t0 = Instant::now();
        let mut samples = vec![sample(pid, 0.0)?];
        self.start_loads(secs)?;

        let n_kills = ((secs / KILL_EVERY_SECS).round() as usize).max(1);
        let kill_at: Vec<f64> = (1..=n_kills)
            .map(|k| secs * k as f64 / (n_kills + 1) as f64)
            .collect();
        let reload_at: Vec<f64> = (0..RELOADS)
            .map(|i| secs * (i as f64 + 0.5) / RELOADS as f64)
            .collect();
        let warmup = (secs / 3.0).min(60.0);
        let (mut next_kill, mut next_reload, mut next_victim) = (0, 0, 0);
        let mut restart: Option<(usize, f64)> = None;
        let mut kills: Vec<Kill> = Vec::new();
        let mut reloads_sent = 0;
        let mut probe_report: Vec<String> = Vec::new();
        let mut probe_drops = ProbeDrops::default();
        let mut warm: Option<Sample> = None;
        let mut last_sample = 0.0;
        loop {
            check_stop()?;
            let now = t0.elapsed().as_secs_f64();
            if let Some(status) = self.scene.edgelb.as_mut().context("edgelb")?.try_wait()? {
                bail!("edgelb exited during the run: {status}");
            }
            if now - last_sample >= 5.0 {
                let s = sample(pid, now)?;
                samples.push(s);
                last_sample = now;
                if warm.is_none() && now >= warmup {
                    warm = Some(s);
                }
            }
            if let Some((i, at)) = restart
                && now >= at
            {
                let (name, addr) = BACKENDS[i];
                let child = self.spawn_backend(name, addr)?;
                self.scene.backends[i] = Some(child);
                println!("[{now:6.1} s] backend {name} {addr} restarted");
                restart = None;
            }
            if next_kill < kill_at.len() && now >= kill_at[next_kill] && restart.is_none() {
                let i = next_victim % BACKENDS.len();
                next_victim += 1;
                next_kill += 1;
                if let Some(mut child) = self.scene.backends[i].take() {
                    let _ = child.kill();
                    let at_ms = now_ms();
                    let _ = child.wait();
                    kills.push(Kill {
                        backend: BACKENDS[i].0,
                        secs: now,
                        at_ms,
                    });
                    println!(
                        "[{now:6.1} s] backend {} {} SIGKILLed (back in {DOWN_SECS:.0} s)",
                        BACKENDS[i].0, BACKENDS[i].1
                    );
                    restart = Some((i, now + DOWN_SECS));
                }
            }
            if next_reload < reload_at.len() && now >= reload_at[next_reload] {
                let i = next_reload;
                next_reload += 1;
                let what = acl.step(i);
                self.write_acl(&acl)?;
                let before = self.reloads_logged();
                send_signal(pid, SIGHUP);
                reloads_sent += 1;
                let applied = self.wait_reload(before)?;
                println!(
                    "[{now:6.1} s] reload {}/{RELOADS} ({what}): {}",
                    i + 1,
                    if applied { "applied" } else { "NOT applied" }
                );
                if i == 4 || i == 5 {
                    let before = self.dropped_acl()?;
                    let (code, http) = self.probe()?;
                    // The daemon refreshes the XDP counters every second.
                    wait_secs_checked(1.5)?;
                    let after = self.dropped_acl()?;
                    let line = format!(
                        "probe {PROBE} {}: curl exit {code}, HTTP {http}; dropped_acl {before} -> {after}",
                        if i == 4 { "delisted" } else { "listed again" }
                    );
                    println!("[{now:6.1} s] {line}");
                    probe_report.push(line);
                    if i == 4 {
                        probe_drops.delisted = (before, after, code, http);
                    } else {
                        probe_drops.relisted = (before, after, code, http);
                    }
                }
            }
            if now >= secs {
                break;
            }
            sleep(Duration::from_millis(100));
        }
        if let Some((i, _)) = restart.take() {
            let (name, addr) = BACKENDS[i];
            self.scene.backends[i] = Some(self.spawn_backend(name, addr)?);
        }

        // The load stops by itself; its last requests may take up to its timeout (10 s).
        let mut summaries = Vec::new();
        let t_wait = Instant::now();
        for (n, mut child) in std::mem::take(&mut self.scene.others)
            .into_iter()
            .enumerate()
        {
            loop {
                check_stop()?;
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        let err =
                            fs::read_to_string(self.scene.tmp.join(format!("load-c{}.err", n + 1)))
                                .unwrap_or_default();
                        bail!("soak-load in c{} failed: {status}\n{err}", n + 1);
                    }
                    break;
                }
                if t_wait.elapsed() > Duration::from_secs(60) {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("soak-load in c{} did not stop", n + 1);
                }
                sleep(Duration::from_millis(100));
            }
            let text = fs::read_to_string(self.scene.tmp.join(format!("load-c{}.json", n + 1)))?;
            let v: Value = serde_json::from_str(text.trim())
                .with_context(|| format!("soak-load c{} printed {text:?}", n + 1))?;
            summaries.push(v);
        }
        let end_loaded = sample(pid, t0.elapsed().as_secs_f64())?;
        samples.push(end_loaded);
        // Kept-alive client connections are gone: what is left is edgelb's own.
        wait_secs_checked(2.0)?;
        let end = sample(pid, t0.elapsed().as_secs_f64())?;
        samples.push(end);
        let dropped_end = self.dropped_acl()?;
        let status_text = self.status()?;
        // What the descriptors left after the load are: connections to the backends (pooled).
        let backend_conns = netns_stdout(
            &self.lb,
            "ss",
            &[
                "-Htn",
                "state",
                "established",
                "( dport >= :8181 and dport <= :8183 )",
            ],
        )?
        .lines()
        .count();

        // Stop: SIGTERM, exit 0, nothing left attached.
        let mut child = self.scene.edgelb.take().context("edgelb is not running")?;
        send_signal(child.id(), SIGTERM);
        let t = Instant::now();
        let exit = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            sleep(Duration::from_millis(50));
        };
        let links = netns_stdout(&self.lb, "ip", &["-d", "link", "show"])?;
        let xdp_left = links.contains("prog/xdp");
        let log = fs::read_to_string(self.scene.tmp.join("edgelb.log")).unwrap_or_default();

        let report = Report {
            secs,
            summaries: &summaries,
            kills: &kills,
            samples: &samples,
            warm: warm.unwrap_or(samples[0]),
            end,
            end_loaded,
            reloads_sent,
            reloads_applied: log.matches(RELOADED).count(),
            reloads_refused: log.matches("reload refused").count(),
            unhealthy: log.matches("backend unhealthy").count(),
            healthy: log.matches("backend healthy").count(),
            warnings: log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .count(),
            probe: probe_drops,
            dropped_end,
            exit_ok: exit.is_some_and(|s| s.success()),
            xdp_left,
            backend_conns,
        };
        let verdict = report.print();
        println!("\nedgelb status at the end of the load:");
        for line in status_text.lines() {
            println!("   | {line}");
        }
        println!("edgelb log, warnings and errors by message (timestamps removed):");
        let mut grouped: BTreeMap<String, usize> = BTreeMap::new();
        for line in log.lines() {
            let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
                continue;
            };
            *grouped.entry(line[at + 1..].to_string()).or_insert(0) += 1;
        }
        let mut grouped: Vec<(String, usize)> = grouped.into_iter().collect();
        grouped.sort_by_key(|g| std::cmp::Reverse(g.1));
        for (line, n) in grouped.iter().take(15) {
            println!("   {n:>6} x {line}");
        }
        verdict
    }

    fn topology(&mut self) -> Result<()> {
        let mut all = vec![self.lb.clone()];
        all.extend(self.clients.iter().cloned());
        for ns in all {
            ip(&["netns", "add", &ns])?;
            self.scene.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        for (n, client) in (1..=CLIENTS).zip(self.clients.clone()) {
            let veth = format!("lbs{n}");
            ip(&[
                "link", "add", &veth, "netns", &self.lb, "type", "veth", "peer", "name", "eth0",
                "netns", &client,
            ])?;
            ip(&[
                "-n",
                &self.lb,
                "addr",
                "add",
                &format!("10.78.{n}.1/24"),
                "dev",
                &veth,
            ])?;
            ip(&["-n", &self.lb, "link", "set", &veth, "up"])?;
            let mut addrs: Vec<String> = (2..=4).map(|h| format!("10.78.{n}.{h}/24")).collect();
            if n == 1 {
                addrs.push(format!("{PROBE}/24"));
            }
            for a in &addrs {
                ip(&["-n", &client, "addr", "add", a, "dev", "eth0"])?;
            }
            ip(&["-n", &client, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn spawn_backend(&self, name: &str, addr: &str) -> Result<Child> {
        spawn_backend(&self.lb, &self.bin.join("test-backend"), name, addr).map(|(child, _)| child)
    }

    /// Written to a temporary name and renamed, so edgelb never reads half a file.
    fn write_acl(&self, acl: &Acl) -> Result<()> {
        let tmp = self.scene.tmp.join("whitelist.txt.new");
        fs::write(&tmp, acl.text())?;
        fs::rename(&tmp, self.scene.tmp.join("whitelist.txt"))?;
        Ok(())
    }

    fn start_edgelb(&mut self) -> Result<()> {
        let log_path = self.scene.tmp.join("edgelb.log");
        let log = fs::File::create(&log_path)?;
        let mut args: Vec<String> = [
            "--listen",
            "0.0.0.0:443",
            "--cert",
            &self.path("default.pem"),
            "--key",
            &self.path("default.key"),
            "--access-control",
            "whitelist",
            "--ip-group-file",
            &self.path("whitelist.txt"),
            "--xdp-mode",
            "native",
            "--admin",
            ADMIN,
            "--health-check",
            "tcp",
            "--hc-interval",
            &HC_INTERVAL.to_string(),
            "--hc-timeout",
            &HC_TIMEOUT.to_string(),
            "--hc-retries",
            &HC_RETRIES.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (_, addr) in BACKENDS {
            args.extend(["--backend".to_string(), addr.to_string()]);
        }
        for n in 1..=CLIENTS {
            args.extend(["--xdp-iface".to_string(), format!("lbs{n}")]);
        }
        println!("ip netns exec {} edgelb {}", self.lb, args.join(" "));
        let edgelb = self.bin.join("edgelb");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lb])
            .arg(&edgelb)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", edgelb.display()))?;
        let t = Instant::now();
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("edgelb ready") {
                self.scene.edgelb = Some(child);
                println!("edgelb ready after {:.1} s", t.elapsed().as_secs_f64());
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                print_tail(&text, 10);
                bail!("edgelb exited before it was ready: {status}");
            }
            if t.elapsed() > Duration::from_secs(20) || signals::stopping() {
                let _ = child.kill();
                let _ = child.wait();
                print_tail(&text, 10);
                bail!("edgelb not ready after {:.0} s", t.elapsed().as_secs_f64());
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn start_loads(&mut self, secs: f64) -> Result<()> {
        let load = self.bin.join("soak-load");
        for (n, client) in (1..=CLIENTS).zip(self.clients.clone()) {
            let sources: Vec<String> = (2..=4).map(|h| format!("10.78.{n}.{h}")).collect();
            let out = fs::File::create(self.scene.tmp.join(format!("load-c{n}.json")))?;
            let err = fs::File::create(self.scene.tmp.join(format!("load-c{n}.err")))?;
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &client])
                .arg(&load)
                .args([
                    "--target",
                    &format!("10.78.{n}.1:443"),
                    "--sni",
                    SNI,
                    "--ca",
                    &self.path("ca.pem"),
                    "--sources",
                    &sources.join(","),
                    "--seconds",
                    &format!("{}", secs.ceil() as u64),
                    "--h1",
                    "3",
                    "--h2",
                    "1",
                    "--h2-streams",
                    "3",
                    "--newconn",
                    "2",
                    "--think-ms",
                    "10",
                    "--post-every",
                    "10",
                ])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            die_with_parent(&mut cmd);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", load.display()))?;
            self.scene.others.push(child);
        }
        println!(
            "load: {CLIENTS} namespaces x (3 HTTP/1.1 keep-alive + 1 HTTP/2 connection x 3 streams + 2 new-connection) = 24 in flight, 10 ms pause after each; every 10th request a POST"
        );
        Ok(())
    }

    fn reloads_logged(&self) -> usize {
        fs::read_to_string(self.scene.tmp.join("edgelb.log"))
            .unwrap_or_default()
            .matches(RELOADED)
            .count()
    }

    /// Whether the reload was logged as applied within 5 s.
    fn wait_reload(&self, before: usize) -> Result<bool> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            check_stop()?;
            if self.reloads_logged() > before {
                return Ok(true);
            }
            sleep(Duration::from_millis(20));
        }
        Ok(false)
    }

    /// curl from the probe address: its exit code and HTTP status.
    fn probe(&self) -> Result<(i32, String)> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.clients[0], "curl"])
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "--interface",
                PROBE,
                "--resolve",
                &format!("{SNI}:443:10.78.1.1"),
                "--cacert",
                &self.path("ca.pem"),
                &format!("https://{SNI}/"),
            ])
            .stdin(Stdio::null());
        die_with_parent(&mut cmd);
        let out = cmd.output().context("running curl in c1")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }

    fn status(&self) -> Result<String> {
        let edgelb = self.bin.join("edgelb");
        netns_stdout(
            &self.lb,
            &edgelb.to_string_lossy(),
            &["status", "--admin", ADMIN],
        )
    }

    fn dropped_acl(&self) -> Result<u64> {
        Ok(counter(&self.status()?, "dropped_acl"))
    }
}

/// The IP group file: the load's prefixes, the probe while listed, and extra prefixes.
struct Acl {
    probe_listed: bool,
    extras: Vec<&'static str>,
}

impl Acl {
    fn text(&self) -> String {
        let mut text = String::from("# edgelb soak: who may connect\n");
        for p in LOAD_PREFIXES {
            text.push_str(&format!("{p}\n"));
        }
        if self.probe_listed {
            text.push_str(&format!("{PROBE}/32\n"));
        }
        for p in &self.extras {
            text.push_str(&format!("{p}\n"));
        }
        text
    }

    /// The change before reload `i` (0-based), described.
    fn step(&mut self, i: usize) -> String {
        match i {
            4 => {
                self.probe_listed = false;
                format!("probe {PROBE}/32 delisted")
            }
            5 => {
                self.probe_listed = true;
                format!("probe {PROBE}/32 listed again")
            }
            _ => {
                // Reloads 0-3 and 6-9: add, add, remove, remove (cycling through the extras).
                let k = if i < 4 { i } else { i - 6 };
                let p = EXTRA_PREFIXES[if i < 4 { k % 2 } else { 2 + k % 2 }];
                if k < 2 {
                    self.extras.push(p);
                    format!("{p} added")
                } else {
                    self.extras.retain(|e| *e != p);
                    format!("{p} removed")
                }
            }
        }
    }
}

#[derive(Default)]
struct ProbeDrops {
    /// dropped_acl before and after the probe, curl exit code, HTTP status.
    delisted: (u64, u64, i32, String),
    relisted: (u64, u64, i32, String),
}

struct Report<'a> {
    secs: f64,
    summaries: &'a [Value],
    kills: &'a [Kill],
    samples: &'a [Sample],
    warm: Sample,
    end: Sample,
    end_loaded: Sample,
    reloads_sent: usize,
    reloads_applied: usize,
    reloads_refused: usize,
    unhealthy: usize,
    healthy: usize,
    warnings: usize,
    probe: ProbeDrops,
    dropped_end: u64,
    exit_ok: bool,
    xdp_left: bool,
    backend_conns: usize,
}

const CAUSES: [(&str, &str); 8] = [
    ("refused", "connect refused"),
    ("tls", "TLS"),
    ("http_502", "HTTP 502"),
    ("http_503", "HTTP 503"),
    ("http_504", "HTTP 504"),
    ("http_other", "HTTP other"),
    ("timeout", "timeout (10 s)"),
    ("other", "other"),
];

impl Report<'_> {
    fn sum(&self, key: &str) -> u64 {
        self.summaries
            .iter()
            .map(|s| s[key].as_u64().unwrap_or(0))
            .sum()
    }

    fn sum_map(&self, key: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.summaries {
            if let Some(m) = s[key].as_object() {
                for (k, v) in m {
                    *out.entry(k.clone()).or_insert(0) += v.as_u64().unwrap_or(0);
                }
            }
        }
        out
    }

    fn in_window(&self, start_ms: u64, end_ms: u64) -> bool {
        self.kills
            .iter()
            .any(|k| start_ms <= k.at_ms + WINDOW_MS && end_ms >= k.at_ms)
    }

    /// Prints the report; an error if a target was missed.
    fn print(&self) -> Result<()> {
        let sent = self.sum("sent");
        let ok = self.sum("ok");
        let idem = self.sum("idempotent_sent");
        let by_kind = self.sum_map("sent_by_kind");
        let by_cause = self.sum_map("failed_by_cause");
        let by_backend = self.sum_map("ok_by_backend");
        let details = self.sum_map("failure_details");
        // (GET in a window, GET outside, POST) per cause.
        let mut split: BTreeMap<String, [u64; 3]> = BTreeMap::new();
        let mut listed = 0u64;
        for s in self.summaries {
            for f in s["failures"].as_array().into_iter().flatten() {
                listed += 1;
                let cause = f["cause"].as_str().unwrap_or("other").to_string();
                let (start, end) = (
                    f["start_ms"].as_u64().unwrap_or(0),
                    f["end_ms"].as_u64().unwrap_or(0),
                );
                let col = if f["method"] == "POST" {
                    2
                } else if self.in_window(start, end) {
                    0
                } else {
                    1
                };
                split.entry(cause).or_default()[col] += 1;
            }
        }
        let failed: u64 = by_cause.values().sum();
        let idem_outside: u64 = split.values().map(|c| c[1]).sum();
        let idem_inside: u64 = split.values().map(|c| c[0]).sum();

        println!("\n=== soak report: {:.1} min ===", self.secs / 60.0);
        println!(
            "requests sent {sent} ({} idempotent GET, {} POST), ok {ok}, failed {failed}; {:.0} req/s",
            idem,
            sent - idem,
            sent as f64 / self.secs
        );
        let kinds: Vec<String> = by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("by kind: {}", kinds.join(", "));
        let backends: Vec<String> = by_backend.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("answered by backend: {}", backends.join(", "));
        println!(
            "backend kills {} (detection window {} s each: hc_interval x hc_retries + hc_timeout + 1 s); log: {} 'backend unhealthy', {} 'backend healthy'",
            self.kills.len(),
            WINDOW_MS / 1000,
            self.unhealthy,
            self.healthy
        );
        let kills: Vec<String> = self
            .kills
            .iter()
            .map(|k| format!("{} at {:.0} s", k.backend, k.secs))
            .collect();
        println!("kills: {}", kills.join(", "));
        println!(
            "\n| failure cause | total | GET inside a detection window | GET outside | POST |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (key, label) in CAUSES {
            let total = by_cause.get(key).copied().unwrap_or(0);
            let c = split.get(key).copied().unwrap_or_default();
            println!("| {label} | {total} | {} | {} | {} |", c[0], c[1], c[2]);
        }
        println!(
            "| **all** | {failed} | {idem_inside} | **{idem_outside}** | {} |",
            split.values().map(|c| c[2]).sum::<u64>()
        );
        if listed < failed {
            println!(
                "({} failures beyond the listed ones not classified)",
                failed - listed
            );
        }
        for (d, n) in details.iter().take(15) {
            println!("   {n:>6} x {d}");
        }

        let mib = |k: u64| k as f64 / 1024.0;
        let peak_rss = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let peak_fds = self.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        let growth = (self.end_loaded.rss_kib as f64 - self.warm.rss_kib as f64) * 100.0
            / self.warm.rss_kib.max(1) as f64;
        println!("\n| edgelb | RSS | fds |");
        println!("|---|---:|---:|");
        let s0 = self.samples[0];
        println!(
            "| start (ready, before the load) | {:.1} MiB | {} |",
            mib(s0.rss_kib),
            s0.fds
        );
        println!(
            "| after warm-up ({:.0} s) | {:.1} MiB | {} |",
            self.warm.secs,
            mib(self.warm.rss_kib),
            self.warm.fds
        );
        println!(
            "| peak ({} samples, every 5 s) | {:.1} MiB | {peak_fds} |",
            self.samples.len(),
            mib(peak_rss)
        );
        println!(
            "| end of the load ({:.0} s) | {:.1} MiB | {} |",
            self.end_loaded.secs,
            mib(self.end_loaded.rss_kib),
            self.end_loaded.fds
        );
        println!(
            "| 2 s after the load | {:.1} MiB | {} |",
            mib(self.end.rss_kib),
            self.end.fds
        );
        println!(
            "RSS growth from warm-up ({:.0} s) to the end of the load: {growth:+.1} %",
            self.warm.secs
        );
        let e = self.end_loaded;
        let wall = (e.secs - s0.secs).max(1.0);
        // Clock ticks are 100 per second on Linux.
        let edgelb_cpu = (e.cpu_ticks - s0.cpu_ticks) as f64 / 100.0 / wall;
        let (busy, total) = (
            e.machine.0.saturating_sub(s0.machine.0),
            e.machine.1.saturating_sub(s0.machine.1),
        );
        println!(
            "CPU during the load: edgelb {:.2} cores on average; the whole machine {:.0} % busy ({} CPUs, shared with other work)",
            edgelb_cpu,
            busy as f64 * 100.0 / total.max(1) as f64,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "edgelb's connections to the backends open 2 s after the load: {}",
            self.backend_conns
        );
        let series: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.secs < 11.0 || (s.secs % 60.0) < 5.0)
            .map(|s| format!("{:.0} s {:.1}", s.secs, mib(s.rss_kib)))
            .collect();
        println!("RSS (MiB) over the run: {}", series.join(", "));
        println!(
            "\nreloads: {} SIGHUP sent, {} applied, {} refused",
            self.reloads_sent, self.reloads_applied, self.reloads_refused
        );
        let (b, a, code, http) = &self.probe.delisted;
        println!(
            "probe {PROBE} delisted: curl exit {code} (HTTP {http}), dropped_acl {b} -> {a} (+{})",
            a.saturating_sub(*b)
        );
        let (b2, a2, code2, http2) = &self.probe.relisted;
        println!(
            "probe {PROBE} listed again: curl exit {code2} (HTTP {http2}), dropped_acl {b2} -> {a2} (+{})",
            a2.saturating_sub(*b2)
        );
        println!(
            "dropped_acl at the end: {} (only the probe was ever delisted)",
            self.dropped_end
        );
        println!(
            "edgelb: {} warning/error log lines; SIGTERM exit {}; XDP left attached: {}",
            self.warnings,
            if self.exit_ok { "0" } else { "not 0" },
            if self.xdp_left { "yes" } else { "no" }
        );

        let mut missed = Vec::new();
        if idem_outside > 0 {
            missed.push(format!(
                "{idem_outside} idempotent requests failed outside a detection window"
            ));
        }
        if growth >= 10.0 {
            missed.push(format!("RSS grew {growth:.1} % (target < 10 %)"));
        }
        if self.reloads_applied != self.reloads_sent {
            missed.push(format!(
                "{} of {} reloads applied",
                self.reloads_applied, self.reloads_sent
            ));
        }
        if self.probe.delisted.1 <= self.probe.delisted.0 || self.probe.delisted.3 == "200" {
            missed.push("the delisted probe was not dropped at XDP".to_string());
        }
        if self.probe.relisted.3 != "200" || self.probe.relisted.1 != self.probe.relisted.0 {
            missed.push("the probe listed again was not served cleanly".to_string());
        }
        if !self.exit_ok || self.xdp_left {
            missed.push("edgelb did not stop cleanly".to_string());
        }
        if ok == 0 {
            missed.push("no request succeeded".to_string());
        }
        if missed.is_empty() {
            println!(
                "\nTARGETS MET: 0 idempotent failures outside detection windows, RSS growth {growth:+.1} % < 10 %"
            );
            Ok(())
        } else {
            println!("\nTARGETS MISSED: {}", missed.join("; "));
            bail!("soak targets missed: {}", missed.join("; "))
        }
    }
}

fn sample(pid: u32, secs: f64) -> Result<Sample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    // /proc/PID/stat: fields 14 and 15 (utime, stime) after the parenthesised command name.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let cpu_ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // /proc/stat's first line: user nice system idle iowait irq softirq steal ...
    let machine = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| {
            let v: Vec<u64> = t
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            Some((total - idle, total))
        })
        .unwrap_or((0, 0));
    Ok(Sample {
        secs,
        rss_kib,
        fds,
        cpu_ticks,
        machine,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn wait_secs_checked(secs: f64) -> Result<()> {
    demo::wait_secs(secs)
}

fn netns_stdout(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null());
    die_with_parent(&mut cmd);
    let out = cmd
        .output()
        .with_context(|| format!("running {program} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_change_the_acl_without_touching_the_load() {
        let mut acl = Acl {
            probe_listed: true,
            extras: Vec::new(),
        };
        let mut probe = Vec::new();
        for i in 0..RELOADS {
            acl.step(i);
            let text = acl.text();
            for p in LOAD_PREFIXES {
                assert!(text.contains(p), "reload {i} lost {p}");
            }
            probe.push(acl.probe_listed);
        }
        // Delisted by the 5th reload only, and no extra prefix left at the end.
        assert_eq!(
            probe,
            [true, true, true, true, false, true, true, true, true, true]
        );
        assert!(acl.extras.is_empty(), "{:?}", acl.extras);
    }

    #[test]
    fn a_failure_counts_inside_a_window_when_it_overlaps_one() {
        let kills = [Kill {
            backend: "s1",
            secs: 75.0,
            at_ms: 100_000,
        }];
        let zero = Sample {
            secs: 0.0,
            rss_kib: 0,
            fds: 0,
            cpu_ticks: 0,
            machine: (0, 0),
        };
        let r = Report {
            secs: 60.0,
            summaries: &[],
            kills: &kills,
            samples: &[],
            warm: zero,
            end: zero,
            end_loaded: zero,
            reloads_sent: 0,
            reloads_applied: 0,
            reloads_refused: 0,
            unhealthy: 0,
            healthy: 0,
            warnings: 0,
            probe: ProbeDrops::default(),
            dropped_end: 0,
            exit_ok: true,
            xdp_left: false,
            backend_conns: 0,
        };
        // In flight at the kill, ended within the window, started within it: inside.
        assert!(r.in_window(99_000, 100_010));
        assert!(r.in_window(101_000, 101_500));
        assert!(r.in_window(100_000 + WINDOW_MS, 100_000 + WINDOW_MS + 5));
        // Over before the kill, or started after the window: outside.
        assert!(!r.in_window(98_000, 99_999));
        assert!(!r.in_window(100_001 + WINDOW_MS, 100_100 + WINDOW_MS));
    }
}
