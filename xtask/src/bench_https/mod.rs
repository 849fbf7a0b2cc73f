//! `cargo xtask bench https`: edgelb, nginx and haproxy side by side, each terminating TLS 1.3
//! (ECDSA P-256) on loopback in front of the same plain-HTTP backend, under the same h2load
//! load. Per proxy and workload: 2xx requests/s, the proxy's own CPU time (user + system of all
//! its processes, from /proc/PID/stat, so a saturated load generator cannot hide it) and
//! requests per CPU-second of it, latency p50/p99, and the ratios; then each proxy's memory
//! holding 10,000 idle keep-alive TLS connections. Printed as Markdown and written, with an SVG
//! chart, to `target/bench/https.{md,svg}`.
//!
//! Layout (2 cores): the proxy under load is pinned to core 0 (`taskset -c 0`, one worker or
//! thread each); h2load and the backend share core 1 (`taskset -c 1`). The backend is a second
//! nginx (`worker_processes 1`, `return 200`, a 64 KiB file), cheap next to TLS, so it is not
//! the bottleneck; the diagnostics table shows core 1's load so a saturated load generator is
//! visible (then compare requests per proxy CPU-second).
//!
//! Every child runs in the foreground with its own config, PID file and logs in a temp dir, and
//! is killed at the end: on errors (drop guards), on SIGINT/SIGTERM (a flag checked while
//! waiting), and if xtask itself is killed (PR_SET_PDEATHSIG on the children).
mod configs;
mod h2load;
mod handshakes;
mod memory;
mod procs;
pub use procs::keep_system_services_off;
mod report;
mod svg;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};

use self::configs::{
    Setup, haproxy_maxconn, make_cert, nofile_hard_limit, proxy_command, write_backend,
    write_deny_lists,
};
use self::h2load::{ok_latencies, parse_h2load, percentile};
use self::handshakes::{Capture, Handshakes};
use self::memory::Memory;
use self::procs::{
    CoreTicks, Proc, TempDir, backend_accepts, clock_ticks_per_sec, core_ticks, free_ports,
    http_get, pinned, run_bounded, run_bounded_with,
};
use crate::setup;
use crate::signals::{self, check_stop};
use crate::target_dir;

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
    /// Short run for development: --duration 2 --warm-up 1, 2,000 connections in the memory
    /// test.
    #[arg(long)]
    quick: bool,
    /// Only these proxies (comma-separated); default all three.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PROXY,...")]
    only: Vec<Proxy>,
    /// Only these workloads (comma-separated); default all.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WORKLOAD,...")]
    workload: Vec<WorkloadId>,
    /// Idle connections each proxy holds in the memory test.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=15_000))]
    memory_conns: u64,
    /// Measure this edgelb binary instead of building one (to compare two builds of edgelb,
    /// run the bench once with each).
    #[arg(long, value_name = "PATH")]
    edgelb_bin: Option<PathBuf>,
}

/// Concurrency of the HTTP/1.1 workloads and of HTTP/2 with 16 streams: 64 requests in flight.
const CONCURRENCY: u32 = 64;
/// HTTP/2 with 100 streams per connection (the most haproxy and edgelb allow by default; nginx
/// allows 128) on 4 connections: 400 requests in flight, enough to fill every connection's
/// window without making the run a test of one connection's head-of-line blocking.
const H2_100_CLIENTS: u32 = 4;
/// Prefixes in the access-control row's deny list.
const DENY_PREFIXES: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proxy {
    Edgelb,
    Nginx,
    Haproxy,
}

pub const PROXIES: [Proxy; 3] = [Proxy::Edgelb, Proxy::Nginx, Proxy::Haproxy];

impl Proxy {
    pub fn name(self) -> &'static str {
        match self {
            Proxy::Edgelb => "edgelb",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkloadId {
    /// HTTP/1.1 keep-alive.
    H1,
    /// HTTP/2, 16 streams per connection.
    #[value(name = "h2-16")]
    H2x16,
    /// HTTP/2, 100 streams per connection.
    #[value(name = "h2-100")]
    H2x100,
    /// HTTP/1.1 keep-alive, 64 KiB responses.
    #[value(name = "h1-64k")]
    H1Large,
    /// A new TLS connection per request.
    Newconn,
    /// A new TLS connection per request, with a 100,000-prefix deny list.
    Acl,
    /// RSS with 10,000 idle keep-alive TLS connections.
    Memory,
}

pub struct Workload {
    id: WorkloadId,
    pub name: &'static str,
    /// ALPN protocol h2load must report, so a proxy cannot pass by negotiating another one.
    alpn: &'static str,
    h2load_args: Vec<String>,
    path: &'static str,
    /// Timing-based (`-D`, `--warm-up-time`) if true; else count-based (`-n`), see below.
    timed: bool,
    /// Served by the proxies started with the deny list.
    acl: bool,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn workloads() -> Vec<Workload> {
    let c = CONCURRENCY.to_string();
    let h2_clients = (CONCURRENCY / 16).to_string();
    let h2_100_clients = H2_100_CLIENTS.to_string();
    // A new TLS connection per request. h2load has no reconnect option, but its HTTP/1.1
    // client opens a new connection whenever a response says `Connection: close` and it
    // still has requests to do (h2load_http1_session.cc: "Connection is going down. If we
    // have still request to do, create new connection"). So each request carries
    // `Connection: close`: every proxy answers and closes, h2load reconnects at once, all
    // inside one h2load process, so no process start-up is measured as it would be with a
    // loop of short `-c N -n N` runs. h2load resumes the TLS session of a client's previous
    // connection when that one was closed cleanly (see handshakes.rs), so these are mostly
    // PSK resumptions (still with an X25519 exchange): the report counts full and resumed
    // handshakes per proxy from the ServerHellos on the wire.
    // These runs are count-based (-n), not -D: h2load 1.52 (Debian 12) never exits when its
    // duration ends while clients are reconnecting (it prints "Stopped all clients" and
    // hangs). So a short probe measures the rate, a warm-up of about --warm-up seconds runs
    // at it, and the measured run gets the request count that lasts about --duration.
    let newconn = args(&["--h1", "-H", "Connection: close", "-c", &c]);
    vec![
        Workload {
            id: WorkloadId::H1,
            name: "HTTP/1.1 keep-alive",
            alpn: "http/1.1",
            h2load_args: args(&["--h1", "-c", &c]),
            path: "/",
            timed: true,
            acl: false,
        },
        Workload {
            id: WorkloadId::H2x16,
            name: "HTTP/2, 16 streams/conn",
            alpn: "h2",
            h2load_args: args(&["-c", &h2_clients, "-m", "16"]),
            path: "/",
            timed: true,
            acl: false,
        },
        Workload {
            id: WorkloadId::H2x100,
            name: "HTTP/2, 100 streams/conn",
            alpn: "h2",
            h2load_args: args(&["-c", &h2_100_clients, "-m", "100"]),
            path: "/",
            timed: true,
            acl: false,
        },
        Workload {
            id: WorkloadId::H1Large,
            name: "HTTP/1.1 keep-alive, 64 KiB body",
            alpn: "http/1.1",
            h2load_args: args(&["--h1", "-c", &c]),
            path: "/64k",
            timed: true,
            acl: false,
        },
        Workload {
            id: WorkloadId::Newconn,
            name: "new TLS conn per request",
            alpn: "http/1.1",
            h2load_args: newconn.clone(),
            path: "/",
            timed: false,
            acl: false,
        },
        Workload {
            id: WorkloadId::Acl,
            name: "new TLS conn per request, 100k-prefix deny list",
            alpn: "http/1.1",
            h2load_args: newconn,
            path: "/",
            timed: false,
            acl: true,
        },
    ]
}

/// One cell of the tables: one proxy under one workload.
#[derive(Default, Clone)]
pub struct Cell {
    pub ok_per_sec: f64,
    /// Requests that did not end in 2xx: failed, errored, timed out or non-2xx status.
    pub bad: u64,
    /// Note on why the cell is not trustworthy (wrong ALPN, h2load failure), if any.
    pub problem: Option<String>,
    /// CPU the proxy used during the measured window, in cores (1.0 = core 0 fully busy).
    pub proxy_cpu: f64,
    /// Busy fraction of core 0 (the proxy, and anything else that runs there).
    pub core0_busy: f64,
    /// Busy fraction of core 1 (h2load + backend).
    pub core1_busy: f64,
    /// TLS version and cipher suite h2load negotiated.
    pub tls: String,
    pub cipher: String,
    /// 2xx responses per CPU-second of the proxy.
    pub ok_per_cpu_sec: f64,
    /// Response time of 2xx requests, µs (after the handshake, for new connections).
    pub p50_us: Option<u32>,
    pub p99_us: Option<u32>,
    /// Connections the backend accepted during the run (upstream reuse check).
    pub backend_conns: u64,
    /// Full and resumed handshakes seen in the probe run (new-connection workloads only).
    pub handshakes: Option<Handshakes>,
}

/// Everything measured; `None` where a proxy or workload was left out.
pub struct Results {
    pub workloads: Vec<Workload>,
    /// `cells[w][p]`: workload `w` (index into `workloads`), proxy `p` (index into PROXIES).
    pub cells: Vec<[Option<Cell>; 3]>,
    pub memory: Option<[Option<Memory>; 3]>,
    pub memory_conns: u64,
    /// --memory-conns, and the descriptor hard limit that may have lowered it.
    pub memory_conns_wanted: u64,
    pub nofile: u64,
    pub duration: u64,
    pub warm_up: u64,
}

pub fn run(args: &[String]) -> Result<()> {
    let mut args = Args::try_parse_from(
        std::iter::once("cargo xtask bench https".to_string()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| e.exit());
    if args.quick {
        args.duration = 2;
        args.warm_up = 1;
        args.memory_conns = 2_000;
    }
    signals::install_handlers();

    setup::run()?;
    setup::ensure_debs(&[
        "nginx",
        "haproxy",
        "nghttp2-client",
        "util-linux",
        "tcpdump",
    ])?;
    keep_system_services_off();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("this benchmark pins the proxy to core 0 and the load to core 1: it needs 2 cores");
    }
    let selected = |id: WorkloadId| args.workload.is_empty() || args.workload.contains(&id);
    let proxies: Vec<Proxy> = PROXIES
        .into_iter()
        .filter(|p| args.only.is_empty() || args.only.contains(p))
        .collect();
    let nofile = nofile_hard_limit()?;
    // haproxy needs two descriptors per connection it may hold; without the privilege to
    // raise the hard limit, the memory test holds fewer connections, and says so.
    let memory_conns = args
        .memory_conns
        .min(haproxy_maxconn(nofile).saturating_sub(50));
    if memory_conns < args.memory_conns {
        eprintln!(
            "xtask bench https: warning: the open-files hard limit is {nofile}, haproxy can hold \
             only {memory_conns} connections under it: the memory test uses that many, not {} \
             (raise `ulimit -Hn` to {} for the full count)",
            args.memory_conns,
            args.memory_conns * 2 + 200
        );
    }
    let (built, idle_conns) = build(selected(WorkloadId::Memory))?;
    let edgelb = match &args.edgelb_bin {
        Some(path) if path.is_file() => path.clone(),
        Some(path) => bail!("--edgelb-bin {}: no such file", path.display()),
        None => built,
    };

    let dir = TempDir::new()?;
    let ports = free_ports(5)?;
    let (backend_port, status_port) = (ports[0], ports[1]);
    let proxy_ports = [ports[2], ports[3], ports[4]];
    let (deny_list, deny_geo) = write_deny_lists(dir.path(), DENY_PREFIXES)?;
    let setup = Setup {
        dir: dir.path().to_path_buf(),
        certs: make_cert(dir.path())?,
        edgelb: edgelb.clone(),
        backend_port,
        deny_list,
        deny_geo,
        nofile,
    };

    // The backend shares core 1 with h2load (only 2 cores; the proxy must have core 0 alone).
    let backend_conf = write_backend(dir.path(), backend_port, status_port, nofile)?;
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

    let bench = Bench {
        setup: &setup,
        ports: proxy_ports,
        status_port,
        args: &args,
    };
    let workloads: Vec<Workload> = workloads().into_iter().filter(|w| selected(w.id)).collect();
    let mut cells = Vec::new();
    // The plain proxies serve every workload but the deny-list one; they are started once, all
    // three together (an idle proxy costs nothing), and stopped before the deny-list ones start
    // on the same ports.
    for acl in [false, true] {
        if !workloads.iter().any(|w| w.acl == acl) {
            continue;
        }
        let mut procs = bench.start(&proxies, acl)?;
        for w in workloads.iter().filter(|w| w.acl == acl) {
            let mut row: [Option<Cell>; 3] = Default::default();
            for (i, proc) in procs.iter_mut().enumerate() {
                let Some(proc) = proc else { continue };
                check_stop()?;
                proc.check_alive()?;
                backend.check_alive()?;
                eprintln!(
                    "xtask bench https: {} via {} ({}s warm-up + {}s)",
                    w.name,
                    PROXIES[i].name(),
                    args.warm_up,
                    args.duration
                );
                row[i] = Some(bench.measure(w, proxy_ports[i], proc)?);
            }
            cells.push(row);
        }
        for proc in procs.iter_mut().flatten() {
            proc.check_alive()?;
        }
    }
    // Rows were filled plain first, then deny-list: put them in the workloads' order.
    let mut order: Vec<usize> = (0..workloads.len()).collect();
    order.sort_by_key(|&i| workloads[i].acl);
    let mut rows: Vec<Option<[Option<Cell>; 3]>> = vec![None; workloads.len()];
    for (row, i) in cells.into_iter().zip(order) {
        rows[i] = Some(row);
    }
    let cells = rows.into_iter().map(Option::unwrap_or_default).collect();

    let memory = if selected(WorkloadId::Memory) {
        Some(bench.memory(&proxies, &idle_conns, memory_conns)?)
    } else {
        None
    };
    backend.check_alive()?;

    let results = Results {
        workloads,
        cells,
        memory,
        memory_conns,
        memory_conns_wanted: args.memory_conns,
        nofile,
        duration: args.duration,
        warm_up: args.warm_up,
    };
    let about = report::environment(&edgelb);
    let markdown = report::render(&results, &about);
    print!("{markdown}");
    write_outputs(&markdown, &svg::chart(&results, &about))
}

/// Builds the edgelb binary and, for the memory test, the idle-conns client (release, each
/// its own cargo run so edgelb is built with its own features only, as it ships).
fn build(memory: bool) -> Result<(PathBuf, PathBuf)> {
    crate::build()?;
    if memory {
        crate::build_test_bins(&["idle-conns"])?;
    }
    let release = target_dir().join("release");
    let edgelb = release.join("edgelb");
    if !edgelb.is_file() {
        bail!("built edgelb but {} does not exist", edgelb.display());
    }
    Ok((edgelb, release.join("idle-conns")))
}

/// `target/bench/https.md` and `https.svg`.
fn write_outputs(markdown: &str, svg: &str) -> Result<()> {
    let out = target_dir().join("bench");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    fs::write(out.join("https.md"), markdown)?;
    fs::write(out.join("https.svg"), svg)?;
    eprintln!(
        "xtask bench https: wrote {} and https.svg",
        out.join("https.md").display()
    );
    Ok(())
}

struct Bench<'a> {
    setup: &'a Setup,
    ports: [u16; 3],
    status_port: u16,
    args: &'a Args,
}

impl Bench<'_> {
    /// Starts the given proxies (plain or with the deny list) and waits until they accept.
    fn start(&self, proxies: &[Proxy], acl: bool) -> Result<[Option<Proc>; 3]> {
        let mut procs: [Option<Proc>; 3] = Default::default();
        for (i, &proxy) in PROXIES.iter().enumerate() {
            if proxies.contains(&proxy) {
                procs[i] = Some(self.start_one(i, acl)?);
            }
        }
        Ok(procs)
    }

    fn start_one(&self, i: usize, acl: bool) -> Result<Proc> {
        let proxy = PROXIES[i];
        let cmd = proxy_command(self.setup, proxy, self.ports[i], acl)?;
        let mut proc = Proc::spawn(proxy.name(), cmd, &self.setup.dir)?;
        // A big deny list takes a moment to load.
        proc.wait_for_port(self.ports[i])?;
        Ok(proc)
    }

    /// The memory test, each proxy freshly started and alone.
    fn memory(
        &self,
        proxies: &[Proxy],
        idle_conns: &Path,
        conns: u64,
    ) -> Result<[Option<Memory>; 3]> {
        let mut out: [Option<Memory>; 3] = Default::default();
        for (i, &proxy) in PROXIES.iter().enumerate() {
            if !proxies.contains(&proxy) {
                continue;
            }
            check_stop()?;
            eprintln!(
                "xtask bench https: memory of {} with {conns} idle TLS connections",
                proxy.name()
            );
            let mut proc = self.start_one(i, false)?;
            let m = memory::measure(&self.setup.dir, idle_conns, &mut proc, self.ports[i], conns)?;
            proc.check_alive()?;
            out[i] = Some(m);
        }
        Ok(out)
    }

    fn h2load(&self, workload: &Workload, port: u16, extra: &[String]) -> std::process::Command {
        let url = format!("https://127.0.0.1:{port}{}", workload.path);
        let mut cmd = pinned(1, "h2load", workload.h2load_args.iter());
        cmd.args(["-t", "1"]).args(extra).arg(url);
        cmd
    }

    /// Runs h2load against `port` and turns its report into a cell.
    fn measure(&self, workload: &Workload, port: u16, proxy: &Proc) -> Result<Cell> {
        let dir = &self.setup.dir;
        let args = self.args;
        let log = dir.join("h2load-requests.log");
        let log_arg = format!("--log-file={}", log.display());
        let (measured_args, handshakes, limit) = if workload.timed {
            let extra = vec![
                "-D".into(),
                args.duration.to_string(),
                "--warm-up-time".into(),
                format!("{}s", args.warm_up),
                log_arg,
            ];
            (extra, None, args.duration + args.warm_up + 30)
        } else {
            let (n, handshakes) = self.size_counted_run(workload, port)?;
            let extra = vec!["-n".into(), n.to_string(), log_arg];
            (extra, Some(handshakes), args.duration * 3 + 30)
        };
        let cmd = self.h2load(workload, port, &measured_args);

        // The measured window starts when h2load's warm-up ends (timed runs; sampled from the
        // polling loop, within ~10 ms) or with the run (count-based runs) and ends with it.
        let accepts_before = backend_accepts(self.status_port)?;
        let warm_up = Duration::from_secs(if workload.timed { args.warm_up } else { 0 });
        let mut start: Option<Sample> = None;
        let out = run_bounded_with(
            "h2load",
            cmd,
            dir,
            Duration::from_secs(limit),
            &mut |elapsed| {
                if start.is_none() && elapsed >= warm_up {
                    start = Sample::take(proxy).ok();
                }
            },
        )?;
        let end = Sample::take(proxy)?;
        let start = start.context("the run ended before its warm-up did")?;
        let backend_conns = backend_accepts(self.status_port)?.saturating_sub(accepts_before);

        let report =
            parse_h2load(&out).with_context(|| format!("cannot read h2load's report:\n{out}"))?;
        let latencies = ok_latencies(&fs::read_to_string(&log).unwrap_or_default());
        let _ = fs::remove_file(&log);
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
        let wall = end.at.duration_since(start.at).as_secs_f64();
        let cpu_secs = (end.proxy_ticks - start.proxy_ticks) as f64 / clock_ticks_per_sec();
        let busy = if wall > 0.0 { cpu_secs / wall } else { 0.0 };
        let ok_per_sec = report.ok as f64 / report.secs;
        Ok(Cell {
            ok_per_sec,
            bad: report.bad,
            problem,
            proxy_cpu: busy,
            core0_busy: end.core0.since(&start.core0),
            core1_busy: end.core1.since(&start.core1),
            tls: report.tls,
            cipher: report.cipher,
            // Rate over CPU rate: both over the measured window.
            ok_per_cpu_sec: if busy > 0.0 { ok_per_sec / busy } else { 0.0 },
            p50_us: percentile(&latencies, 50.0),
            p99_us: percentile(&latencies, 99.0),
            backend_conns,
            handshakes,
        })
    }

    /// For a count-based run: a short probe (with the handshakes captured), then a warm-up of
    /// about --warm-up seconds at the probed rate; returns the request count that lasts about
    /// --duration at the warm-up's rate. Each run has a time limit in case a proxy stalls.
    fn size_counted_run(&self, workload: &Workload, port: u16) -> Result<(u64, Handshakes)> {
        let dir = &self.setup.dir;
        let args = self.args;
        let min = u64::from(CONCURRENCY) * 10;
        let counted = |n: u64, secs: u64| -> Result<f64> {
            let out = run_bounded(
                "h2load",
                self.h2load(workload, port, &["-n".into(), n.to_string()]),
                dir,
                Duration::from_secs(secs * 3 + 30),
            )?;
            let r = parse_h2load(&out)
                .with_context(|| format!("cannot read h2load's report:\n{out}"))?;
            Ok(r.total as f64 / r.secs)
        };
        let capture = Capture::start(dir, port)?;
        let probe = counted(min, 1);
        let handshakes = capture.finish()?;
        let mut rate = probe?;
        if args.warm_up > 0 {
            rate = counted((rate * args.warm_up as f64) as u64, args.warm_up)?;
        }
        let n = ((rate * args.duration as f64) as u64).clamp(min, 10_000_000);
        Ok((n, handshakes))
    }
}

/// The proxy's CPU time and both cores' load at one moment.
struct Sample {
    at: Instant,
    proxy_ticks: u64,
    core0: CoreTicks,
    core1: CoreTicks,
}

impl Sample {
    fn take(proxy: &Proc) -> Result<Self> {
        Ok(Self {
            at: Instant::now(),
            proxy_ticks: proxy.cpu_ticks(),
            core0: core_ticks(0)?,
            core1: core_ticks(1)?,
        })
    }
}
