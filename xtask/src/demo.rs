//! `cargo xtask demo` (root): edgelb end to end in network namespaces, in under a minute.
//!
//! Topology: a load balancer namespace with three `test-backend` processes on 127.0.0.1:8081-8083
//! and edgelb on 0.0.0.0:443 (XDP native on both client-facing veths); two client namespaces,
//! c1 (10.77.1.2, whitelisted) and c2 (10.77.2.2, not), each joined to it by a veth pair.
//! Shows weighted balancing, SNI, a fixed-response rule, XDP dropping c2's SYNs, failover, and a
//! clean SIGTERM (counters logged, XDP detached).
//!
//! Everything is undone on success, error and Ctrl-C (a drop guard kills the children and
//! deletes the namespaces and temp dir; children also die with xtask via PR_SET_PDEATHSIG).
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::Cmd;
use crate::scene::{Scene, spawn_backend};
use crate::signals::{self, SIGTERM, check_stop, die_with_parent, send_signal};
use crate::target_dir;

const ADMIN: &str = "127.0.0.1:9900";
const BACKENDS: [(&str, &str); 3] = [
    ("b1", "127.0.0.1:8081"),
    ("b2", "127.0.0.1:8082"),
    ("b3", "127.0.0.1:8083"),
];

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    crate::build_test_bins(&["test-backend"])?;
    signals::install_handlers();
    let bin = target_dir().join("release");
    let mut demo = Demo::new()?;
    let result = demo.play(&bin.join("edgelb"), &bin.join("test-backend"));
    if let Err(e) = &result {
        println!("\n!! demo failed: {e:#}");
        if let Ok(log) = fs::read_to_string(demo.scene.tmp.join("edgelb.log")) {
            println!("-- last edgelb log lines --");
            print_tail(&log, 15);
        }
    }
    drop(demo);
    result
}

struct Demo {
    lb: String,
    c1: String,
    c2: String,
    scene: Scene,
    checks: Vec<(String, bool)>,
}

impl Demo {
    fn new() -> Result<Self> {
        let id = std::process::id();
        Ok(Self {
            lb: format!("edgelb-demo-lb-{id}"),
            c1: format!("edgelb-demo-c1-{id}"),
            c2: format!("edgelb-demo-c2-{id}"),
            scene: Scene::new("demo", Duration::from_secs(5))?,
            checks: Vec::new(),
        })
    }

    fn check(&mut self, what: &str, ok: bool) {
        println!("   [{}] {what}", if ok { "ok" } else { "FAIL" });
        self.checks.push((what.to_string(), ok));
    }

    fn play(&mut self, edgelb: &Path, backend_bin: &Path) -> Result<()> {
        let started = Instant::now();

        section("1. Topology");
        self.topology()?;
        for (name, addr) in BACKENDS {
            let child = self.spawn_backend(backend_bin, name, addr)?;
            self.scene.backends.push(Some(child));
        }
        println!(
            "   {} : veth lbc1 10.77.1.1/24, veth lbc2 10.77.2.1/24, backends b1 {} b2 {} (weight 2) b3 {}",
            self.lb, BACKENDS[0].1, BACKENDS[1].1, BACKENDS[2].1
        );
        println!("   {} : eth0 10.77.1.2/24 (whitelisted)", self.c1);
        println!("   {} : eth0 10.77.2.2/24 (not whitelisted)", self.c2);
        check_stop()?;

        section("2. Certificates (openssl, ECDSA P-256)");
        self.certificates()?;
        for (name, file) in [
            ("demo CA", "ca.pem"),
            ("default", "default.pem"),
            ("SNI", "api.pem"),
        ] {
            let subject = openssl_field(&self.scene.tmp.join(file), "-subject");
            println!("   {name:<8} {}  {}", file, subject.trim());
        }
        check_stop()?;

        section("3. edgelb in the lb namespace");
        self.start_edgelb(edgelb)?;
        check_stop()?;

        section("4. Client c1 (10.77.1.2, whitelisted)");
        let counts = self.requests(40)?;
        print_distribution(&counts, 40);
        let expected = [("b1", 10), ("b2", 20), ("b3", 10)];
        let ok = expected
            .iter()
            .all(|(b, n)| counts.get(*b).copied().unwrap_or(0) == *n);
        self.check("40 requests split 1:2:1 (10/20/10)", ok);

        println!("\n   SNI: curl https://api.edgelb.demo/");
        let out = self.curl_api()?;
        let verbose = String::from_utf8_lossy(&out.stderr);
        let mut subject_ok = false;
        for line in verbose
            .lines()
            .filter(|l| l.contains("subject:") || l.contains("issuer:"))
        {
            println!("   {}", line.trim_start_matches(['*', ' ']));
            subject_ok |= line.contains("subject:") && line.contains("api.edgelb.demo");
        }
        println!(
            "   body: {}",
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
        self.check(
            "api.edgelb.demo served with the SNI certificate",
            subject_ok && out.status.success(),
        );

        println!("\n   Rule: curl https://edgelb.demo/maintenance");
        let out = self.curl_c1("/maintenance", &["-w", "\nHTTP %{http_code}"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in text.lines() {
            println!("   {line}");
        }
        self.check(
            "/maintenance answered 503 by the fixed-response rule",
            text.ends_with("HTTP 503") && text.contains("down for maintenance"),
        );
        check_stop()?;

        section("5. Client c2 (10.77.2.2, not whitelisted)");
        let t = Instant::now();
        let out = self.netns_output(
            &self.c2.clone(),
            "curl",
            &[
                "-sS",
                "--max-time",
                "2",
                "--resolve",
                "edgelb.demo:443:10.77.2.1",
                "--cacert",
                &self.path("ca.pem"),
                "https://edgelb.demo/",
            ],
        )?;
        let code = out.status.code().unwrap_or(-1);
        println!(
            "   curl exit {code} after {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.check("c2's connection times out (curl exit 28)", code == 28);
        check_stop()?;
        println!("\n   edgelb status --admin {ADMIN}");
        let mut status = String::new();
        let mut dropped = 0;
        // The daemon refreshes the XDP counters every second.
        for _ in 0..4 {
            status = self.status()?;
            dropped = counter(&status, "dropped_acl");
            if dropped > 0 {
                break;
            }
            sleep(Duration::from_millis(500));
        }
        print_indented(&status);
        self.check(&format!("dropped_acl = {dropped} > 0"), dropped > 0);
        check_stop()?;

        section("6. Failover: backend b2 (127.0.0.1:8082) killed");
        if let Some(mut b2) = self.scene.backends[1].take() {
            let _ = b2.kill();
            let _ = b2.wait();
        }
        println!("   killed b2; waiting 4 s (--hc-interval 1 --hc-retries 2)");
        wait_secs(4.0)?;
        let counts = self.requests(20)?;
        print_distribution(&counts, 20);
        let total: usize = counts
            .iter()
            .filter(|(k, _)| k.starts_with('b') && k.len() == 2)
            .map(|(_, n)| n)
            .sum();
        self.check(
            "20 of 20 requests succeed, none to b2",
            total == 20 && !counts.contains_key("b2"),
        );
        let status = self.status()?;
        print_indented(&status);
        let b2_down = status
            .lines()
            .any(|l| l.contains(BACKENDS[1].1) && l.contains("UNHEALTHY"));
        self.check("status shows 127.0.0.1:8082 UNHEALTHY", b2_down);
        check_stop()?;

        section("7. Shutdown");
        let mut child = self.scene.edgelb.take().context("edgelb is not running")?;
        send_signal(child.id(), SIGTERM);
        let t = Instant::now();
        let exit = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if t.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            sleep(Duration::from_millis(50));
        };
        println!(
            "   SIGTERM -> edgelb exited after {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            exit.map_or("killed after 15 s".to_string(), |s| s.to_string())
        );
        self.check(
            "edgelb exits 0 on SIGTERM",
            exit.is_some_and(|s| s.success()),
        );
        let log = fs::read_to_string(self.scene.tmp.join("edgelb.log")).unwrap_or_default();
        println!("   last log lines:");
        print_tail(&log, 6);
        self.check(
            "edgelb logged its xdp counters",
            log.contains("xdp counters listener="),
        );
        let links = self
            .netns_output(&self.lb.clone(), "ip", &["-d", "link", "show"])?
            .stdout;
        let links = String::from_utf8_lossy(&links).into_owned();
        let attached: Vec<&str> = links
            .lines()
            .filter(|l| l.contains("prog/xdp") || l.contains(" xdp"))
            .collect();
        println!(
            "   ip -d link show (lb namespace): {}",
            if attached.is_empty() {
                "no XDP program attached".to_string()
            } else {
                attached.join(" | ")
            }
        );
        self.check("no XDP left attached", attached.is_empty());
        self.scene.tear_down();
        let left = Cmd::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap_or_default();
        let gone = [&self.lb, &self.c1, &self.c2]
            .iter()
            .all(|ns| !left.contains(ns.as_str()));
        println!("   namespaces {} {} {} deleted", self.lb, self.c1, self.c2);
        self.check("namespaces deleted", gone);

        section("Summary");
        let passed = self.checks.iter().filter(|(_, ok)| *ok).count();
        for (what, ok) in &self.checks {
            println!("   [{}] {what}", if *ok { "ok" } else { "FAIL" });
        }
        println!(
            "   {passed}/{} checks passed in {:.1} s",
            self.checks.len(),
            started.elapsed().as_secs_f64()
        );
        if passed != self.checks.len() {
            bail!("{} demo check(s) failed", self.checks.len() - passed);
        }
        Ok(())
    }

    fn topology(&mut self) -> Result<()> {
        for ns in [self.lb.clone(), self.c1.clone(), self.c2.clone()] {
            ip(&["netns", "add", &ns])?;
            self.scene.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        for (client, veth, net) in [(self.c1.clone(), "lbc1", 1), (self.c2.clone(), "lbc2", 2)] {
            ip(&[
                "link", "add", veth, "netns", &self.lb, "type", "veth", "peer", "name", "eth0",
                "netns", &client,
            ])?;
            ip(&[
                "-n",
                &self.lb,
                "addr",
                "add",
                &format!("10.77.{net}.1/24"),
                "dev",
                veth,
            ])?;
            ip(&["-n", &self.lb, "link", "set", veth, "up"])?;
            ip(&[
                "-n",
                &client,
                "addr",
                "add",
                &format!("10.77.{net}.2/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &client, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn spawn_backend(&self, bin: &Path, name: &str, addr: &str) -> Result<Child> {
        let (child, listening) = spawn_backend(&self.lb, bin, name, addr)?;
        println!("   backend {name} listening on {listening}");
        Ok(child)
    }

    fn certificates(&self) -> Result<()> {
        certificates(&self.scene.tmp)
    }

    fn start_edgelb(&mut self, edgelb: &Path) -> Result<()> {
        let log_path = self.scene.tmp.join("edgelb.log");
        let log = fs::File::create(&log_path)?;
        let args: Vec<String> = [
            "--listen",
            "0.0.0.0:443",
            "--cert",
            &self.path("default.pem"),
            "--key",
            &self.path("default.key"),
            "--sni-cert",
            &format!(
                "api.edgelb.demo={}:{}",
                self.path("api.pem"),
                self.path("api.key")
            ),
            "--backend",
            BACKENDS[0].1,
            "--backend",
            &format!("{},weight=2", BACKENDS[1].1),
            "--backend",
            BACKENDS[2].1,
            "--access-control",
            "whitelist",
            "--ip-group",
            "10.77.1.0/24",
            "--xdp-iface",
            "lbc1",
            "--xdp-iface",
            "lbc2",
            "--xdp-mode",
            "native",
            "--rule",
            "name=maintenance;path=/maintenance;action=fixed:503:text/plain:down for maintenance",
            "--admin",
            ADMIN,
            "--hc-interval",
            "1",
            "--hc-timeout",
            "1",
            "--hc-retries",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        println!(
            "   ip netns exec {} edgelb {}",
            self.lb,
            args.iter()
                .map(|a| if a.contains([' ', ';']) {
                    format!("'{a}'")
                } else {
                    a.clone()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lb])
            .arg(edgelb)
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
                println!("   edgelb ready after {:.1} s:", t.elapsed().as_secs_f64());
                print_tail(&text, 4);
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

    /// `n` requests from c1, counted by the backend that answered (`error` for failures).
    fn requests(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            check_stop()?;
            let out = self.curl_c1("/", &[])?;
            let body = String::from_utf8_lossy(&out.stdout);
            let key = match body.trim().strip_prefix("backend ") {
                Some(name) if out.status.success() => name.to_string(),
                _ => format!("error ({})", String::from_utf8_lossy(&out.stderr).trim()),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        Ok(counts)
    }

    fn curl_c1(&self, path: &str, extra: &[&str]) -> Result<Output> {
        let url = format!("https://edgelb.demo{path}");
        let ca = self.path("ca.pem");
        let mut args = vec![
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            "edgelb.demo:443:10.77.1.1",
            "--cacert",
            &ca,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        self.netns_output(&self.c1, "curl", &args)
    }

    fn curl_api(&self) -> Result<Output> {
        let ca = self.path("ca.pem");
        self.netns_output(
            &self.c1,
            "curl",
            &[
                "-sS",
                "-v",
                "--max-time",
                "5",
                "--resolve",
                "api.edgelb.demo:443:10.77.1.1",
                "--cacert",
                &ca,
                "https://api.edgelb.demo/",
            ],
        )
    }

    fn status(&self) -> Result<String> {
        let edgelb = target_dir().join("release/edgelb");
        let out = self.netns_output(
            &self.lb,
            &edgelb.to_string_lossy(),
            &["status", "--admin", ADMIN],
        )?;
        if !out.status.success() {
            bail!(
                "edgelb status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn netns_output(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null());
        die_with_parent(&mut cmd);
        cmd.output()
            .with_context(|| format!("running {program} in {ns}"))
    }

    fn path(&self, file: &str) -> String {
        self.scene.path(file)
    }
}

fn section(title: &str) {
    println!("\n=== {title} ===");
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("   | {line}");
    }
}

pub(crate) fn print_tail(text: &str, n: usize) {
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(n)..] {
        println!("   | {line}");
    }
}

fn print_distribution(counts: &BTreeMap<String, usize>, n: usize) {
    for (name, count) in counts {
        let addr = BACKENDS
            .iter()
            .find(|(b, _)| b == name)
            .map_or("", |(_, a)| a);
        println!(
            "   {name:<4} {addr:<15} {count:>3}  {:>5.1} %  {}",
            *count as f64 * 100.0 / n as f64,
            "#".repeat(*count)
        );
    }
}

/// The value of a `  NAME  N` line of `edgelb status`.
pub(crate) fn counter(status: &str, name: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .next()
        .unwrap_or(0)
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    quiet("ip", args)
}

pub(crate) fn openssl(args: &[&str]) -> Result<()> {
    quiet("openssl", args)
}

/// Runs `program args` to completion with its output captured; a failure carries its stderr.
fn quiet(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn openssl_field(cert: &Path, field: &str) -> String {
    Command::new("openssl")
        .args(["x509", "-noout", field, "-in"])
        .arg(cert)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(crate) fn wait_secs(secs: f64) -> Result<()> {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < secs {
        check_stop()?;
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A demo CA (`ca.pem`), and certificates signed by it for `edgelb.demo` (`default.pem`,
/// `default.key`) and `api.edgelb.demo` (`api.pem`, `api.key`), written into `dir`.
pub(crate) fn certificates(dir: &Path) -> Result<()> {
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let ext = dir.join("ca.ext");
    fs::write(
        &ext,
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )?;
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &path("ca.key"),
    ])?;
    openssl(&[
        "req",
        "-new",
        "-key",
        &path("ca.key"),
        "-subj",
        "/CN=edgelb demo CA",
        "-out",
        &path("ca.csr"),
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("ca.csr"),
        "-signkey",
        &path("ca.key"),
        "-days",
        "2",
        "-sha256",
        "-extfile",
        &path("ca.ext"),
        "-out",
        &path("ca.pem"),
    ])?;
    for (stem, name, serial) in [
        ("default", "edgelb.demo", "1001"),
        ("api", "api.edgelb.demo", "1002"),
    ] {
        let ext = dir.join(format!("{stem}.ext"));
        fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{name}\n"
            ),
        )?;
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &path(&format!("{stem}.key")),
        ])?;
        // edgelb refuses keys that others may read.
        fs::set_permissions(
            path(&format!("{stem}.key")),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        openssl(&[
            "req",
            "-new",
            "-key",
            &path(&format!("{stem}.key")),
            "-subj",
            &format!("/CN={name}/O=edgelb demo"),
            "-out",
            &path(&format!("{stem}.csr")),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path(&format!("{stem}.csr")),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-set_serial",
            serial,
            "-days",
            "2",
            "-sha256",
            "-extfile",
            &ext.to_string_lossy(),
            "-out",
            &path(&format!("{stem}.pem")),
        ])?;
    }
    Ok(())
}
