//! `cargo xtask bench https`: edgelb, nginx and haproxy side by side, each terminating TLS
//! (ECDSA P-256) on loopback in front of the same plain-HTTP backend, under the same h2load
//! load, printed as one markdown table of requests/s.
//!
//! Layout (2 cores): the proxy under load is pinned to core 0 (`taskset -c 0`, one worker or
//! thread each); h2load and the backend share core 1 (`taskset -c 1`). The backend is a second
//! nginx (`worker_processes 1`, `return 200`), cheap next to TLS, so it is not the bottleneck;
//! the diagnostics table shows core 1's load so a saturated load generator is visible.
//!
//! Every child runs in the foreground with its own config, PID file and logs in a temp dir, and
//! is killed at the end: on errors (drop guards), on SIGINT/SIGTERM (a flag checked while
//! waiting), and if xtask itself is killed (PR_SET_PDEATHSIG on the children).
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
use clap::Parser;

use crate::cmd::Cmd;
use crate::setup;
use crate::signals::{self, SIGKILL, SIGTERM, check_stop, die_with_parent, send_signal};

#[derive(Parser)]
#[command(
    name = "cargo xtask bench https",
    about = "edgelb vs nginx vs haproxy as TLS-terminating proxies on loopback (h2load)"
)]
struct Args {
    /// Measured seconds per (proxy, workload) cell.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    duration: u64,
    /// Warm-up seconds before each measurement (h2load --warm-up-time).
    #[arg(long, value_name = "SECS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(0..=10))]
    warm_up: u64,
}

/// Concurrency for every workload: 64 requests in flight, within nginx's `keepalive 64`
/// upstream pool so no proxy has to open extra backend connections in steady state.
const CONCURRENCY: u32 = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Edgelb,
    Nginx,
    Haproxy,
}

const PROXIES: [Proxy; 3] = [Proxy::Edgelb, Proxy::Nginx, Proxy::Haproxy];

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Edgelb => "edgelb",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
        }
    }
}

struct Workload {
    name: &'static str,
    /// ALPN protocol h2load must report, so a proxy cannot pass by negotiating another one.
    alpn: &'static str,
    h2load_args: Vec<String>,
    /// Timing-based (`-D`, `--warm-up-time`) if true; else count-based (`-n`), see below.
    timed: bool,
}

fn workloads() -> Vec<Workload> {
    let c = CONCURRENCY.to_string();
    let h2_clients = (CONCURRENCY / 16).to_string();
    vec![
        Workload {
            name: "HTTP/1.1 keep-alive",
            alpn: "http/1.1",
            h2load_args: vec!["--h1".into(), "-c".into(), c.clone()],
            timed: true,
        },
        Workload {
            name: "HTTP/2, 16 streams/conn",
            alpn: "h2",
            h2load_args: vec!["-c".into(), h2_clients, "-m".into(), "16".into()],
            timed: true,
        },
        // A new TLS connection per request. h2load has no reconnect option, but its HTTP/1.1
        // client opens a new connection whenever a response says `Connection: close` and it
        // still has requests to do (h2load_http1_session.cc: "Connection is going down. If we
        // have still request to do, create new connection"). So each request carries
        // `Connection: close`: every proxy answers and closes, h2load reconnects at once, all
        // inside one h2load process, so no process start-up is measured as it would be with a
        // loop of short `-c N -n N` runs. h2load links no TLS session API (no SSL_set_session),
        // so it never resumes: every connection is a full handshake (TLS 1.3, X25519 + ECDSA
        // P-256), which is the point of this workload.
        // This run is count-based (-n), not -D: h2load 1.52 (Debian 12) never exits when its
        // duration ends while clients are reconnecting (it prints "Stopped all clients" and
        // hangs). So a short probe measures the rate, a warm-up of about --warm-up seconds runs
        // at it, and the measured run gets the request count that lasts about --duration.
        Workload {
            name: "new TLS conn per request",
            alpn: "http/1.1",
            h2load_args: vec![
                "--h1".into(),
                "-H".into(),
                "Connection: close".into(),
                "-c".into(),
                c,
            ],
            timed: false,
        },
    ]
}

/// One cell of the table: one proxy under one workload.
#[derive(Default, Clone)]
struct Cell {
    ok_per_sec: f64,
    /// Requests that did not end in 2xx: failed, errored, timed out or non-2xx status.
    bad: u64,
    /// Note on why the cell is not trustworthy (wrong ALPN, h2load failure), if any.
    problem: Option<String>,
    /// CPU the proxy used during the run, in cores (1.0 = core 0 fully busy).
    proxy_cpu: f64,
    /// Busy fraction of core 0 (the proxy, and anything else that runs there) during the run.
    core0_busy: f64,
    /// Busy fraction of core 1 (h2load + backend) during the run.
    core1_busy: f64,
    /// TLS version and cipher suite h2load negotiated.
    tls: String,
    cipher: String,
    /// 2xx responses per CPU-second of the proxy.
    ok_per_cpu_sec: f64,
    /// Connections the backend accepted during the run (upstream reuse check).
    backend_conns: u64,
}

pub fn run(args: &[String]) -> Result<()> {
    let args = Args::try_parse_from(
        std::iter::once("cargo xtask bench https".to_string()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| e.exit());
    signals::install_handlers();

    setup::run()?;
    setup::ensure_debs(&["nginx", "haproxy", "nghttp2-client", "util-linux"])?;
    keep_system_services_off();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("this benchmark pins the proxy to core 0 and the load to core 1: it needs 2 cores");
    }
    Cmd::new("cargo")
        .args(["build", "--release", "-p", "lb-userspace"])
        .run()?;
    let edgelb = target_dir().join("release/edgelb");
    if !edgelb.is_file() {
        bail!("built edgelb but {} does not exist", edgelb.display());
    }

    let dir = TempDir::new()?;
    let certs = make_cert(dir.path())?;
    let ports = free_ports(5)?;
    let (backend_port, status_port) = (ports[0], ports[1]);
    let proxy_ports = [ports[2], ports[3], ports[4]];

    let backend_conf = dir.path().join("backend.conf");
    fs::write(
        &backend_conf,
        backend_nginx_conf(dir.path(), backend_port, status_port),
    )?;
    let nginx_conf = dir.path().join("nginx.conf");
    fs::write(
        &nginx_conf,
        proxy_nginx_conf(dir.path(), &certs, proxy_ports[1], backend_port),
    )?;
    let haproxy_conf = dir.path().join("haproxy.cfg");
    fs::write(
        &haproxy_conf,
        haproxy_conf_text(dir.path(), &certs, proxy_ports[2], backend_port),
    )?;

    // Started one by one so each failure names its program; all stay up for the whole run.
    // The backend shares core 1 with h2load (only 2 cores; the proxy must have core 0 alone).
    let mut backend = Proc::spawn(
        "backend nginx",
        pinned(1, "nginx", ["-c".as_ref(), backend_conf.as_os_str()]),
        dir.path(),
    )?;
    backend.wait_for_port(backend_port)?;
    backend.wait_for_port(status_port)?;
    let backend_probe = http_get(status_port, "/")?;
    if !backend_probe.contains("Active connections") {
        bail!("backend nginx status page is not what was expected:\n{backend_probe}");
    }

    let mut edgelb_cmd = pinned(
        0,
        &edgelb,
        ["--listen", &format!("127.0.0.1:{}", proxy_ports[0])],
    );
    edgelb_cmd
        .args(["--cert".as_ref(), certs.cert.as_os_str()])
        .args(["--key".as_ref(), certs.key.as_os_str()])
        .args(["--backend", &format!("127.0.0.1:{backend_port}")])
        .args(["--xdp-mode", "off"]);
    edgelb_cmd.env("TOKIO_WORKER_THREADS", "1");
    let mut procs = [
        Proc::spawn("edgelb", edgelb_cmd, dir.path())?,
        Proc::spawn(
            "nginx",
            pinned(0, "nginx", ["-c".as_ref(), nginx_conf.as_os_str()]),
            dir.path(),
        )?,
        Proc::spawn(
            "haproxy",
            pinned(
                0,
                "haproxy",
                ["-db".as_ref(), "-f".as_ref(), haproxy_conf.as_os_str()],
            ),
            dir.path(),
        )?,
    ];
    for (proc, port) in procs.iter_mut().zip(proxy_ports) {
        proc.wait_for_port(port)?;
    }

    let workloads = workloads();
    let mut table: Vec<Vec<Cell>> = Vec::new();
    for workload in &workloads {
        let mut row = Vec::new();
        for (i, proxy) in PROXIES.iter().enumerate() {
            check_stop()?;
            for p in procs.iter_mut().chain(std::iter::once(&mut backend)) {
                p.check_alive()?;
            }
            eprintln!(
                "xtask bench https: {} via {} ({}s warm-up + {}s)",
                workload.name,
                proxy.name(),
                args.warm_up,
                args.duration
            );
            let cell = measure(
                dir.path(),
                workload,
                proxy_ports[i],
                &procs[i],
                status_port,
                &args,
            )?;
            row.push(cell);
        }
        table.push(row);
    }
    for p in procs.iter_mut().chain(std::iter::once(&mut backend)) {
        p.check_alive()?;
    }

    let about = environment(&edgelb);
    print!("{}", render(&workloads, &table, &args, &about));
    Ok(())
}

/// Runs h2load once against `port` and turns its report into a cell.
fn measure(
    dir: &Path,
    workload: &Workload,
    port: u16,
    proxy: &Proc,
    status_port: u16,
    args: &Args,
) -> Result<Cell> {
    let url = format!("https://127.0.0.1:{port}/");
    let h2load = |extra: &[String]| {
        let mut cmd = pinned(1, "h2load", workload.h2load_args.iter());
        cmd.args(["-t", "1"]).args(extra).arg(&url);
        cmd
    };
    let measured_args: Vec<String> = if workload.timed {
        vec![
            "-D".into(),
            args.duration.to_string(),
            "--warm-up-time".into(),
            format!("{}s", args.warm_up),
        ]
    } else {
        // Probe, then warm up at the probed rate, then size the measured run from the
        // warm-up's rate. Each run has a time limit in case a proxy stalls.
        let min = u64::from(CONCURRENCY) * 10;
        let counted = |n: u64, secs: u64| -> Result<f64> {
            let out = run_bounded(
                "h2load",
                h2load(&["-n".into(), n.to_string()]),
                dir,
                Duration::from_secs(secs * 3 + 30),
            )?;
            let r = parse_h2load(&out)
                .with_context(|| format!("cannot read h2load's report:\n{out}"))?;
            Ok(r.total as f64 / r.secs)
        };
        let mut rate = counted(min, 1)?;
        if args.warm_up > 0 {
            rate = counted((rate * args.warm_up as f64) as u64, args.warm_up)?;
        }
        let n = ((rate * args.duration as f64) as u64).clamp(min, 10_000_000);
        vec!["-n".into(), n.to_string()]
    };
    let cmd = h2load(&measured_args);

    let accepts_before = backend_accepts(status_port)?;
    let cpu_before = proxy.cpu_ticks();
    let core0_before = core_ticks(0)?;
    let core1_before = core_ticks(1)?;
    let started = Instant::now();
    let limit = if workload.timed {
        args.duration + args.warm_up + 30
    } else {
        args.duration * 3 + 30
    };
    let out = run_bounded("h2load", cmd, dir, Duration::from_secs(limit))?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = (proxy.cpu_ticks() - cpu_before) as f64 / clock_ticks_per_sec();
    let core0 = core_ticks(0)?.since(&core0_before);
    let core1 = core_ticks(1)?.since(&core1_before);
    let backend_conns = backend_accepts(status_port)?.saturating_sub(accepts_before);

    let report =
        parse_h2load(&out).with_context(|| format!("cannot read h2load's report:\n{out}"))?;
    let mut problem = None;
    if report.alpn != workload.alpn {
        problem = Some(format!(
            "negotiated {:?}, expected {}",
            report.alpn, workload.alpn
        ));
    }
    if report.ok == 0 {
        problem = Some("no 2xx responses".into());
    }
    let bad = report.total.saturating_sub(report.ok).max(report.failed);
    // CPU is sampled over the whole h2load run (a timed run's warm-up included), so it is
    // compared with the whole run's wall time; the 2xx count covers the measured part only.
    let busy = if wall > 0.0 { cpu / wall } else { 0.0 };
    let measured_cpu = busy * report.secs;
    Ok(Cell {
        ok_per_sec: report.ok as f64 / report.secs,
        bad,
        problem,
        proxy_cpu: busy,
        core0_busy: core0,
        core1_busy: core1,
        tls: report.tls,
        cipher: report.cipher,
        ok_per_cpu_sec: if measured_cpu > 0.0 {
            report.ok as f64 / measured_cpu
        } else {
            0.0
        },
        backend_conns,
    })
}

struct H2loadReport {
    /// Measured seconds ("finished in ...").
    secs: f64,
    total: u64,
    failed: u64,
    /// 2xx responses.
    ok: u64,
    alpn: String,
    tls: String,
    cipher: String,
}

/// Reads the lines of h2load's summary that matter:
///   finished in 10.00s, 41234.50 req/s, 4.56MB/s
///   requests: 412345 total, 412409 started, 412345 done, 412345 succeeded, 0 failed, 0 errored, 0 timeout
///   status codes: 412345 2xx, 0 3xx, 0 4xx, 0 5xx
///   Application protocol: h2
fn parse_h2load(out: &str) -> Result<H2loadReport> {
    let mut secs = None;
    let mut total = None;
    let mut failed = 0;
    let mut ok = None;
    let mut alpn = String::from("(none)");
    let mut tls = String::from("(none)");
    let mut cipher = String::from("(none)");
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let d = rest.split(',').next().unwrap_or_default().trim();
            secs = Some(parse_duration(d).with_context(|| format!("duration {d:?}"))?);
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            total = Some(count_before(rest, "total")?);
            failed = count_before(rest, "failed")?
                + count_before(rest, "errored")?
                + count_before(rest, "timeout")?;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            ok = Some(count_before(rest, "2xx")?);
        } else if let Some(rest) = line.strip_prefix("Application protocol:") {
            alpn = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("TLS Protocol:") {
            tls = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("Cipher:") {
            cipher = rest.trim().to_string();
        }
    }
    let (Some(secs), Some(total), Some(ok)) = (secs, total, ok) else {
        bail!("missing `finished in`, `requests:` or `status codes:` line");
    };
    if secs <= 0.0 {
        bail!("measured duration is {secs}s");
    }
    Ok(H2loadReport {
        secs,
        total,
        failed,
        ok,
        alpn,
        tls,
        cipher,
    })
}

/// In "412345 total, 0 failed", the number before `label`.
fn count_before(list: &str, label: &str) -> Result<u64> {
    list.split(',')
        .map(str::trim)
        .find_map(|item| item.strip_suffix(label).map(str::trim))
        .with_context(|| format!("no `{label}` in {list:?}"))?
        .parse()
        .with_context(|| format!("`{label}` count in {list:?}"))
}

/// h2load's durations: "10.00s", "523.12ms", "812us", "1.50m".
fn parse_duration(d: &str) -> Result<f64> {
    let split = d
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(d.len());
    let (num, unit) = d.split_at(split);
    let num: f64 = num.parse()?;
    Ok(match unit {
        "s" => num,
        "ms" => num / 1e3,
        "us" => num / 1e6,
        "m" => num * 60.0,
        "h" => num * 3600.0,
        _ => bail!("unknown unit {unit:?}"),
    })
}

fn render(workloads: &[Workload], table: &[Vec<Cell>], args: &Args, about: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n| workload | edgelb req/s | nginx req/s | haproxy req/s | edgelb/nginx | edgelb/haproxy |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (w, row) in workloads.iter().zip(table) {
        let cells: Vec<String> = row.iter().map(cell_text).collect();
        let ratio = |other: &Cell| {
            if row[0].problem.is_some() || other.problem.is_some() || other.ok_per_sec == 0.0 {
                "n/a".to_string()
            } else {
                format!("{:.2}", row[0].ok_per_sec / other.ok_per_sec)
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.name,
            cells[0],
            cells[1],
            cells[2],
            ratio(&row[1]),
            ratio(&row[2])
        );
    }
    let _ = writeln!(
        s,
        "\nreq/s counts 2xx responses only; {CONCURRENCY} requests in flight; TLS 1.3 unless \
         noted, ECDSA P-256 certificate; proxy alone on core 0, h2load + backend nginx on core 1. \
         Keep-alive and HTTP/2: {}s after {}s warm-up (h2load -D). New connections: about {}s \
         (h2load -n) after a warm-up.",
        args.duration, args.warm_up, args.duration
    );
    let _ = writeln!(
        s,
        "\nDiagnostics, each as edgelb / nginx / haproxy. proxy CPU: cores the proxy used (1.00 = \
         saturated). core 0: all load on it (above proxy CPU = something else ran there). core 1: \
         h2load + backend (~100% = the load side limits: compare req per proxy CPU-second then). \
         backend conns: connections the backend accepted during the run."
    );
    let _ = writeln!(
        s,
        "\n| workload | proxy CPU | core 0 busy | core 1 busy | req per proxy CPU-s | backend conns |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (w, row) in workloads.iter().zip(table) {
        let join = |f: &dyn Fn(&Cell) -> String| row.iter().map(f).collect::<Vec<_>>().join(" / ");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.name,
            join(&|c| format!("{:.2}", c.proxy_cpu)),
            join(&|c| format!("{:.0}%", c.core0_busy * 100.0)),
            join(&|c| format!("{:.0}%", c.core1_busy * 100.0)),
            join(&|c| format!("{:.0}", c.ok_per_cpu_sec)),
            join(&|c| c.backend_conns.to_string()),
        );
    }
    if let Some(row) = table.first() {
        let ciphers: Vec<String> = PROXIES
            .iter()
            .zip(row)
            .map(|(p, c)| format!("{} {}", p.name(), c.cipher))
            .collect();
        let _ = writeln!(s, "\nCipher suites chosen: {}.", ciphers.join(", "));
    }
    let _ = writeln!(s, "\n{about}");
    s
}

fn cell_text(c: &Cell) -> String {
    let mut t = format!("{:.0}", c.ok_per_sec);
    if c.tls != "TLSv1.3" {
        let _ = write!(t, " ({})", c.tls);
    }
    if c.bad > 0 {
        let _ = write!(t, " ({} non-2xx/failed)", c.bad);
    }
    if let Some(p) = &c.problem {
        let _ = write!(t, " INVALID: {p}");
    }
    t
}

/// Date, kernel, CPU and the versions of everything measured.
fn environment(edgelb: &Path) -> String {
    let date = Cmd::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .unwrap_or_default();
    let kernel = Cmd::new("uname").args(["-r"]).output().unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // The version: the first word after `prefix` on the first line of stdout and stderr (nginx
    // -v prints on stderr, the others on stdout).
    let version = |program: &OsStr, arg: &str, prefix: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .and_then(|o| {
                let mut all = String::from_utf8_lossy(&o.stdout).into_owned();
                all.push_str(&String::from_utf8_lossy(&o.stderr));
                let line = all.lines().next()?.trim().to_string();
                let rest = line.strip_prefix(prefix)?;
                Some(rest.split_whitespace().next()?.to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    let rev = Cmd::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .unwrap_or_default();
    format!(
        "{} · kernel {} · {} · h2load {} · nginx {} · haproxy {} · OpenSSL {} · edgelb {} ({}, \
         rustls {})",
        date.trim(),
        kernel.trim(),
        cpu,
        version("h2load".as_ref(), "--version", "h2load nghttp2/"),
        version("nginx".as_ref(), "-v", "nginx version: nginx/"),
        version("haproxy".as_ref(), "-v", "HAProxy version "),
        version("openssl".as_ref(), "version", "OpenSSL "),
        version(edgelb.as_os_str(), "--version", "edgelb "),
        rev.trim(),
        locked_version("rustls").unwrap_or_else(|| "?".into()),
    )
}

/// A package's version in Cargo.lock (the first entry if there are several).
fn locked_version(package: &str) -> Option<String> {
    let lock = fs::read_to_string("Cargo.lock").ok()?;
    let mut lines = lock.lines();
    lines.find(|l| *l == format!("name = \"{package}\""))?;
    let v = lines.next()?.strip_prefix("version = \"")?;
    Some(v.trim_end_matches('"').to_string())
}

// ---------------------------------------------------------------------------------------------
// Configs

struct Certs {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate then key in one file, as haproxy's `crt` wants.
    combined: PathBuf,
}

fn make_cert(dir: &Path) -> Result<Certs> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let combined = dir.join("combined.pem");
    Cmd::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-keyout".as_ref(), key.as_os_str()])
        .args(["-out".as_ref(), cert.as_os_str()])
        .output()
        .context("openssl could not make the ECDSA P-256 certificate")?;
    // edgelb refuses keys that others may read.
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mut both = fs::read_to_string(&cert)?;
    both.push_str(&fs::read_to_string(&key)?);
    fs::write(&combined, both)?;
    Ok(Certs {
        cert,
        key,
        combined,
    })
}

/// Replaces each `@NAME@` in `template`.
fn fill(template: &str, values: &[(&str, &dyn std::fmt::Display)]) -> String {
    let mut s = template.to_string();
    for (name, value) in values {
        s = s.replace(&format!("@{name}@"), &value.to_string());
    }
    assert!(!s.contains("@"), "unfilled placeholder in:\n{s}");
    s
}

/// What both nginx instances share: one worker, in the foreground, and every path nginx would
/// otherwise write under /var/lib/nginx, /var/log/nginx or /run in the temp dir.
const NGINX_COMMON: &str = r#"
worker_processes 1;
daemon off;
pid @DIR@/@NAME@.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path @DIR@/@NAME@-body;
    proxy_temp_path @DIR@/@NAME@-proxy;
    fastcgi_temp_path @DIR@/@NAME@-fastcgi;
    uwsgi_temp_path @DIR@/@NAME@-uwsgi;
    scgi_temp_path @DIR@/@NAME@-scgi;
"#;

/// The backend: `return 200 "ok\n"`, and a status page on its own port to count connections.
/// `keepalive_requests` is raised from 1000 so the proxies' upstream connections are not
/// recycled every 1000 requests (the same for all three proxies).
const BACKEND_NGINX: &str = r#"
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:@STATUS_PORT@;
        location / { stub_status; }
    }
}
"#;

/// nginx as the TLS proxy. nginx 1.22 (Debian 12) enables HTTP/2 with `listen ... http2` (the
/// `http2 on` directive is 1.25.1+). Session cache and tickets are left at their defaults
/// (h2load never resumes anyway). `keepalive_requests` is raised from its default 1000 so the
/// keep-alive workloads are not interrupted by a handshake every 1000 requests: haproxy and
/// edgelb have no such per-connection limit by default.
const PROXY_NGINX: &str = r#"
    upstream backend {
        server 127.0.0.1:@BACKEND_PORT@;
        keepalive 64;
        keepalive_requests 10000000;
    }
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:@PORT@ ssl http2 backlog=4096;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"#;

/// haproxy as the TLS proxy: one thread, ALPN h2 and http/1.1, backend connections shared
/// between client connections (`http-reuse always`). Run with -db: foreground, no daemon.
const PROXY_HAPROXY: &str = r#"
global
    nbthread 1
    maxconn 4096
    pidfile @DIR@/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend tls
    bind 127.0.0.1:@PORT@ ssl crt @COMBINED@ alpn h2,http/1.1 backlog 4096
    default_backend plain
backend plain
    server b1 127.0.0.1:@BACKEND_PORT@
"#;

fn backend_nginx_conf(dir: &Path, port: u16, status_port: u16) -> String {
    let d = dir.display();
    fill(NGINX_COMMON, &[("DIR", &d), ("NAME", &"backend")])
        + &fill(
            BACKEND_NGINX,
            &[("PORT", &port), ("STATUS_PORT", &status_port)],
        )
}

fn proxy_nginx_conf(dir: &Path, certs: &Certs, port: u16, backend_port: u16) -> String {
    let d = dir.display();
    fill(NGINX_COMMON, &[("DIR", &d), ("NAME", &"nginx")])
        + &fill(
            PROXY_NGINX,
            &[
                ("PORT", &port),
                ("BACKEND_PORT", &backend_port),
                ("CERT", &certs.cert.display()),
                ("KEY", &certs.key.display()),
            ],
        )
}

fn haproxy_conf_text(dir: &Path, certs: &Certs, port: u16, backend_port: u16) -> String {
    fill(
        PROXY_HAPROXY,
        &[
            ("DIR", &dir.display()),
            ("PORT", &port),
            ("BACKEND_PORT", &backend_port),
            ("COMBINED", &certs.combined.display()),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Processes

/// `taskset -c CORE program args...`: the pinning is inherited by threads and forked workers.
fn pinned<I, S>(core: u32, program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string()).arg(program).args(args);
    cmd
}

/// A child running for the whole benchmark, stopped (with any processes it forked) on drop.
struct Proc {
    name: &'static str,
    child: Child,
    stderr: PathBuf,
    exited: bool,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Result<Self> {
        let stderr = dir.join(format!("{}.stderr", name.replace(' ', "-")));
        let line = command_line(&cmd);
        eprintln!("xtask: {line} &");
        cmd.stdin(Stdio::null())
            .stdout(File::create(
                dir.join(format!("{}.stdout", name.replace(' ', "-"))),
            )?)
            .stderr(File::create(&stderr)?);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: `{line}`"))?;
        Ok(Self {
            name,
            child,
            stderr,
            exited: false,
        })
    }

    /// Fails, with the program's stderr, if it has exited.
    fn check_alive(&mut self) -> Result<()> {
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

    fn wait_for_port(&mut self, port: u16) -> Result<()> {
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
    fn pids(&self) -> Vec<u32> {
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
    fn cpu_ticks(&self) -> u64 {
        self.pids().into_iter().map(process_ticks).sum()
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

/// Runs a command to completion with a time limit, returning its stdout; stops it on
/// SIGINT/SIGTERM to xtask.
fn run_bounded(name: &str, mut cmd: Command, dir: &Path, limit: Duration) -> Result<String> {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    let line = command_line(&cmd);
    eprintln!("xtask: {line}");
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
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
        sleep(Duration::from_millis(50));
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

fn command_line(cmd: &Command) -> String {
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
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("edgelb-bench-https.{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Bound together so they differ; released just before the servers bind them.
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn target_dir() -> PathBuf {
    // The working directory is the workspace root (see main).
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The Debian packages enable nginx and haproxy as services listening on port 80. Containers
/// usually have a policy-rc.d that stops the install from starting them, but they stay
/// enabled: disable them, and stop them if they run. Our instances use their own configs.
fn keep_system_services_off() {
    let systemd_runs = Path::new("/run/systemd/system").exists();
    for service in ["nginx", "haproxy"] {
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
                eprintln!("xtask bench https: warning: {e:#}");
            }
        }
        // Without systemd as init, a running system instance shows as its PID file.
        let pid_file = format!("/run/{service}.pid");
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        {
            eprintln!("xtask bench https: stopping the system {service} (pid {pid})");
            send_signal(pid, SIGTERM);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc and the backend's status page

fn process_ticks(pid: u32) -> u64 {
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

fn clock_ticks_per_sec() -> f64 {
    Cmd::new("getconf")
        .args(["CLK_TCK"])
        .output()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct CoreTicks {
    busy: u64,
    total: u64,
}

impl CoreTicks {
    fn since(&self, before: &CoreTicks) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(before.busy) as f64 / total as f64
    }
}

fn core_ticks(core: u32) -> Result<CoreTicks> {
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
fn backend_accepts(status_port: u16) -> Result<u64> {
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

fn http_get(port: u16, path: &str) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_report() {
        let out = "finished in 10.00s, 41234.50 req/s, 4.56MB/s\n\
                   requests: 412345 total, 412409 started, 412345 done, 412300 succeeded, 45 failed, 45 errored, 0 timeout\n\
                   status codes: 412300 2xx, 0 3xx, 0 4xx, 0 5xx\n\
                   Application protocol: h2\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!(r.secs, 10.0);
        assert_eq!((r.total, r.failed, r.ok), (412345, 90, 412300));
        assert_eq!(r.alpn, "h2");
        assert_eq!(parse_duration("250ms").unwrap(), 0.25);
    }
}
