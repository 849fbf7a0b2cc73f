//! `cargo xtask bench https`: edgelb, nginx and haproxy side by side, each terminating TLS 1.3
//! (ECDSA P-256) on loopback in front of the same plain-HTTP backend, under the same h2load
//! load. Per proxy and workload: 2xx requests/s, the proxy's own CPU time (user + system of all
//! its processes, from /proc/PID/stat, so a saturated load generator cannot hide it) and
//! requests per CPU-second of it, latency p50/p99, and the ratios; then each proxy's memory
//! holding 10,000 idle keep-alive TLS connections. Printed as Markdown and written, with an SVG
//! chart, to `target/bench/https.{md,svg}`.
//!
//! The HTTP/3 row is edgelb's alone (started again with `--http3 on`): Debian's nginx 1.22 and
//! haproxy 2.6 have no QUIC, and its h2load no HTTP/3, so `h3-load` (tests/src/bin/h3-load.rs,
//! quinn + h3) drives it, with h2load's place, timing and the same CPU accounting, as many
//! streams on as many connections as the HTTP/2 16-stream row so the two compare.
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
pub(crate) mod configs;
pub(crate) mod h2load;
mod h3load;
mod handshakes;
mod memory;
pub(crate) mod procs;
pub use procs::keep_system_services_off;
mod report;
mod svg;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};

use self::configs::{
    CLIENT_HEADERS_PATH, Setup, haproxy_maxconn, make_cert, nofile_hard_limit, proxy_command,
    write_backend, write_deny_lists,
};
use self::h2load::{ok_latencies, parse_h2load, percentile};
use self::h3load::parse_h3load;
use self::handshakes::{Capture, Handshakes};
use self::memory::Memory;
use self::procs::{
    CoreTicks, Proc, TempDir, backend_accepts, clock_ticks_per_sec, core_ticks, free_ports,
    http_get, pinned, run_bounded, run_bounded_with,
};
use crate::cmd::Cmd;
use crate::setup;
use crate::signals::{self, check_stop};
use crate::target_dir;

#[derive(Parser)]
#[command(
    name = "cargo xtask bench https",
    about = "edgelb vs nginx vs haproxy as TLS-terminating proxies on loopback (h2load; h3-load for edgelb's HTTP/3)"
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
    /// Measure the plain release build (`cargo build --release`) rather than the
    /// profile-guided one that `cargo xtask build --pgo` makes.
    #[arg(long, conflicts_with = "edgelb_bin")]
    no_pgo: bool,
    /// Measure every cell this many times, the proxies taking turns in an order rotated each
    /// round, so a machine whose speed drifts during the run (a VM's neighbours) weighs on all
    /// three alike. Tables show each proxy's median; a table lists every round's ratios.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=9))]
    rounds: u32,
}

/// Concurrency of the HTTP/1.1 workloads and of HTTP/2 with 16 streams: 64 requests in flight.
const CONCURRENCY: u32 = 64;
/// Streams per connection of HTTP/2's 16-stream row and of the HTTP/3 row (both on
/// CONCURRENCY / 16 connections).
const STREAMS: u32 = 16;
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
    /// HTTP/3, 16 streams on 4 connections (edgelb only, driven by h3-load).
    H3,
    /// RSS with 10,000 idle keep-alive TLS connections.
    Memory,
}

/// How the proxies serving a workload are started (each set started once, in this order, and
/// stopped before the next).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Plain,
    /// With the 100k-prefix deny list.
    DenyList,
    /// edgelb alone, with `--http3 on`; the workload is driven by h3-load, not h2load.
    Http3,
}

pub struct Workload {
    id: WorkloadId,
    pub name: &'static str,
    /// ALPN protocol h2load (or h3-load) must report, so a proxy cannot pass by negotiating
    /// another one.
    alpn: &'static str,
    h2load_args: Vec<String>,
    path: &'static str,
    /// Timing-based (`-D`, `--warm-up-time`) if true; else count-based (`-n`), see below.
    timed: bool,
    start: Start,
}

impl Workload {
    /// Whether `proxy` can serve it at all (HTTP/3: edgelb only).
    fn served_by(&self, proxy: Proxy) -> bool {
        self.start != Start::Http3 || proxy == Proxy::Edgelb
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn workloads() -> Vec<Workload> {
    let c = CONCURRENCY.to_string();
    let h2_clients = (CONCURRENCY / STREAMS).to_string();
    let streams = STREAMS.to_string();
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
            start: Start::Plain,
        },
        Workload {
            id: WorkloadId::H2x16,
            name: "HTTP/2, 16 streams/conn",
            alpn: "h2",
            h2load_args: args(&["-c", &h2_clients, "-m", &streams]),
            path: "/",
            timed: true,
            start: Start::Plain,
        },
        Workload {
            id: WorkloadId::H2x100,
            name: "HTTP/2, 100 streams/conn",
            alpn: "h2",
            h2load_args: args(&["-c", &h2_100_clients, "-m", "100"]),
            path: "/",
            timed: true,
            start: Start::Plain,
        },
        Workload {
            id: WorkloadId::H1Large,
            name: "HTTP/1.1 keep-alive, 64 KiB body",
            alpn: "http/1.1",
            h2load_args: args(&["--h1", "-c", &c]),
            path: "/64k",
            timed: true,
            start: Start::Plain,
        },
        Workload {
            id: WorkloadId::Newconn,
            name: "new TLS conn per request",
            alpn: "http/1.1",
            h2load_args: newconn.clone(),
            path: "/",
            timed: false,
            start: Start::Plain,
        },
        Workload {
            id: WorkloadId::Acl,
            name: "new TLS conn per request, 100k-prefix deny list",
            alpn: "http/1.1",
            h2load_args: newconn,
            path: "/",
            timed: false,
            start: Start::DenyList,
        },
        // h3-load's arguments are made in `Bench::measure_h3`: CONCURRENCY / STREAMS
        // connections with STREAMS streams each, as the HTTP/2 16-stream row.
        Workload {
            id: WorkloadId::H3,
            name: "HTTP/3, 16 streams/conn",
            alpn: "h3",
            h2load_args: Vec::new(),
            path: "/",
            timed: true,
            start: Start::Http3,
        },
    ]
}

/// What a load generator (h2load or h3-load) reported of one measured run.
struct Counted {
    ok: u64,
    bad: u64,
    secs: f64,
    alpn: String,
    tls: String,
    cipher: String,
    p50_us: Option<u32>,
    p99_us: Option<u32>,
    handshakes: Option<Handshakes>,
}

impl Counted {
    /// The cell of a run measured from `start` to `end`, the proxy's CPU over that window.
    fn cell(self, workload: &Workload, start: &Sample, end: &Sample, backend_conns: u64) -> Cell {
        let mut problem = None;
        if self.alpn != workload.alpn {
            problem = Some(format!(
                "negotiated {:?}, expected {}",
                self.alpn, workload.alpn
            ));
        }
        if self.ok == 0 {
            problem = Some("no 2xx responses".into());
        }
        let wall = end.at.duration_since(start.at).as_secs_f64();
        let cpu_secs = (end.proxy_ticks - start.proxy_ticks) as f64 / clock_ticks_per_sec();
        let busy = if wall > 0.0 { cpu_secs / wall } else { 0.0 };
        let ok_per_sec = self.ok as f64 / self.secs;
        Cell {
            ok_per_sec,
            bad: self.bad,
            problem,
            proxy_cpu: busy,
            core0_busy: end.core0.since(&start.core0),
            core1_busy: end.core1.since(&start.core1),
            tls: self.tls,
            cipher: self.cipher,
            // Rate over CPU rate: both over the measured window.
            ok_per_cpu_sec: if busy > 0.0 { ok_per_sec / busy } else { 0.0 },
            p50_us: self.p50_us,
            p99_us: self.p99_us,
            backend_conns,
            handshakes: self.handshakes,
        }
    }
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
    /// `cells[w][p]`: workload `w` (index into `workloads`), proxy `p` (index into PROXIES):
    /// of its rounds, the median one by requests per CPU-second (the first if none is valid).
    pub cells: Vec<[Option<Cell>; 3]>,
    /// `rounds[w][p]`: every round's cell, in the order they ran.
    pub rounds: Vec<[Vec<Cell>; 3]>,
    pub memory: Option<[Option<Memory>; 3]>,
    pub memory_conns: u64,
    /// --memory-conns, and the descriptor hard limit that may have lowered it.
    pub memory_conns_wanted: u64,
    pub nofile: u64,
    pub duration: u64,
    pub warm_up: u64,
}

impl Results {
    /// The median of `value` over the valid rounds of workload `w` on proxy `p` (the mean of
    /// the middle two for an even count); None if no round is valid.
    pub fn median(&self, w: usize, p: usize, value: fn(&Cell) -> f64) -> Option<f64> {
        let mut values: Vec<f64> = self.rounds[w][p]
            .iter()
            .filter(|c| c.problem.is_none())
            .map(value)
            .collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(values[n / 2]),
            _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
        }
    }
}

/// The round whose requests per CPU-second is the median of the valid ones (the lower middle
/// for an even count), or the first round if none is valid.
fn representative(rounds: &[Cell]) -> Option<Cell> {
    let mut valid: Vec<&Cell> = rounds.iter().filter(|c| c.problem.is_none()).collect();
    valid.sort_by(|a, b| a.ok_per_cpu_sec.total_cmp(&b.ok_per_cpu_sec));
    valid
        .get(valid.len().saturating_sub(1) / 2)
        .copied()
        .or(rounds.first())
        .cloned()
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
        "curl",
        "util-linux",
        "tcpdump",
    ])?;
    keep_system_services_off();
    procs::require_two_cores("this benchmark")?;
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
    if let Some(path) = &args.edgelb_bin
        && !path.is_file()
    {
        bail!("--edgelb-bin {}: no such file", path.display());
    }
    let edgelb_build = match (&args.edgelb_bin, args.no_pgo) {
        (Some(path), _) => EdgelbBuild::Given(path.clone()),
        (None, true) => EdgelbBuild::Plain,
        (None, false) => EdgelbBuild::ProfileGuided,
    };
    let built = build(
        selected(WorkloadId::Memory),
        selected(WorkloadId::H3),
        &edgelb_build,
    )?;
    let edgelb = built.edgelb.clone();

    let dir = TempDir::new("bench-https")?;
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

    let mut backend = start_backend(dir.path(), backend_port, status_port, nofile)?;
    let backend_probe = http_get(status_port, "/")?;
    if !backend_probe.contains("Active connections") {
        bail!("backend nginx status page is not what was expected:\n{backend_probe}");
    }

    let bench = Bench {
        setup: &setup,
        ports: proxy_ports,
        status_port,
        args: &args,
        h3_load: &built.h3_load,
    };
    let workloads: Vec<Workload> = workloads().into_iter().filter(|w| selected(w.id)).collect();
    let mut rounds: Vec<[Vec<Cell>; 3]> = vec![Default::default(); workloads.len()];
    // The plain proxies serve every workload but the deny-list and HTTP/3 ones; they are
    // started once, all three together (an idle proxy costs nothing), and stopped before the
    // deny-list ones start on the same ports, and those before edgelb with HTTP/3.
    for start in [Start::Plain, Start::DenyList, Start::Http3] {
        let serving: Vec<usize> = (0..workloads.len())
            .filter(|&i| workloads[i].start == start)
            .collect();
        let Some(&first) = serving.first() else {
            continue;
        };
        let these: Vec<Proxy> = proxies
            .iter()
            .copied()
            .filter(|&p| workloads[first].served_by(p))
            .collect();
        if these.is_empty() {
            continue;
        }
        let mut procs = bench.start(&these, start)?;
        for &wi in &serving {
            let w = &workloads[wi];
            for round in 0..args.rounds as usize {
                // Each round starts with the next proxy, so none always runs first.
                for turn in 0..procs.len() {
                    let i = (turn + round) % procs.len();
                    let Some(proc) = &mut procs[i] else { continue };
                    check_stop()?;
                    proc.check_alive()?;
                    backend.check_alive()?;
                    eprintln!(
                        "xtask bench https: {} via {} ({}s warm-up + {}s){}",
                        w.name,
                        PROXIES[i].name(),
                        args.warm_up,
                        args.duration,
                        if args.rounds > 1 {
                            format!(", round {} of {}", round + 1, args.rounds)
                        } else {
                            String::new()
                        }
                    );
                    rounds[wi][i].push(bench.measure(w, proxy_ports[i], proc)?);
                }
            }
        }
        for proc in procs.iter_mut().flatten() {
            proc.check_alive()?;
        }
    }
    let cells = rounds
        .iter()
        .map(|row| row.each_ref().map(|r| representative(r)))
        .collect();

    let memory = if selected(WorkloadId::Memory) {
        Some(bench.memory(&proxies, &built.idle_conns, memory_conns)?)
    } else {
        None
    };
    backend.check_alive()?;

    let results = Results {
        workloads,
        cells,
        rounds,
        memory,
        memory_conns,
        memory_conns_wanted: args.memory_conns,
        nofile,
        duration: args.duration,
        warm_up: args.warm_up,
    };
    let about = report::environment(&edgelb, edgelb_build.describe());
    let markdown = report::render(&results, &about);
    print!("{markdown}");
    write_outputs(&markdown, &svg::chart(&results, &about))
}

/// Starts the backend nginx and waits until it accepts on both ports. It shares core 1 with
/// h2load (only 2 cores; the proxy must have core 0 alone).
pub(crate) fn start_backend(
    dir: &Path,
    backend_port: u16,
    status_port: u16,
    nofile: u64,
) -> Result<Proc> {
    let conf = write_backend(dir, backend_port, status_port, nofile)?;
    let mut backend = Proc::spawn(
        "backend nginx",
        pinned(1, "nginx", ["-c".as_ref(), conf.as_os_str()]),
        dir,
    )?;
    backend.wait_for_port(backend_port)?;
    backend.wait_for_port(status_port)?;
    Ok(backend)
}

/// Fails unless `proxy` on `port` sends the backend the client-IP headers edgelb always sends,
/// over HTTP/1.1 and HTTP/2 alike, so no proxy is measured doing less than the others.
fn check_client_headers(proxy: Proxy, port: u16) -> Result<()> {
    let want = format!("127.0.0.1|https|{port}|127.0.0.1|127.0.0.1:{port}");
    let url = format!("https://127.0.0.1:{port}{CLIENT_HEADERS_PATH}");
    for version in ["--http1.1", "--http2"] {
        let got = Cmd::new("curl")
            .args(["-sk", "--max-time", "5", version, &url])
            .output();
        if got.as_deref() != Some(want.as_str()) {
            bail!(
                "{} {version}: the backend was sent {got:?} as X-Forwarded-For|-Proto|-Port|\
                 X-Real-IP|Host, not {want:?}: the proxies would not do the same work",
                proxy.name()
            );
        }
    }
    Ok(())
}

/// What `build` made.
struct Built {
    edgelb: PathBuf,
    idle_conns: PathBuf,
    h3_load: PathBuf,
}

/// Which edgelb is measured.
enum EdgelbBuild {
    /// `--edgelb-bin`.
    Given(PathBuf),
    /// `--no-pgo`.
    Plain,
    ProfileGuided,
}

impl EdgelbBuild {
    fn describe(&self) -> &'static str {
        match self {
            EdgelbBuild::Given(_) => "the binary given with --edgelb-bin",
            EdgelbBuild::Plain => "plain release build",
            EdgelbBuild::ProfileGuided => "profile-guided build",
        }
    }
}

/// Builds edgelb as `edgelb_build` says (release, edgelb and the clients each their own cargo
/// run so edgelb is built with its own features only, as it ships), and the load tools the
/// selected workloads need: for the memory test the idle-conns client, for the HTTP/3 row
/// h3-load.
fn build(memory: bool, http3: bool, edgelb_build: &EdgelbBuild) -> Result<Built> {
    let release = target_dir().join("release");
    let edgelb = match edgelb_build {
        EdgelbBuild::Given(path) => path.clone(),
        EdgelbBuild::Plain => {
            crate::build()?;
            release.join("edgelb")
        }
        EdgelbBuild::ProfileGuided => crate::pgo::build()?,
    };
    let bins: Vec<&str> = [(memory, "idle-conns"), (http3, "h3-load")]
        .into_iter()
        .filter_map(|(wanted, bin)| wanted.then_some(bin))
        .collect();
    if !bins.is_empty() {
        crate::build_test_bins(&bins)?;
    }
    if !edgelb.is_file() {
        bail!("built edgelb but {} does not exist", edgelb.display());
    }
    Ok(Built {
        edgelb,
        idle_conns: release.join("idle-conns"),
        h3_load: release.join("h3-load"),
    })
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
    h3_load: &'a Path,
}

impl Bench<'_> {
    /// Starts the given proxies (plain, with the deny list, or with HTTP/3), waits until they
    /// accept, and checks that each sends the backend the client-IP headers.
    fn start(&self, proxies: &[Proxy], start: Start) -> Result<[Option<Proc>; 3]> {
        let mut procs: [Option<Proc>; 3] = Default::default();
        for (i, &proxy) in PROXIES.iter().enumerate() {
            if proxies.contains(&proxy) {
                let proc = self.start_one(i, start)?;
                check_client_headers(proxy, self.ports[i])?;
                procs[i] = Some(proc);
            }
        }
        Ok(procs)
    }

    fn start_one(&self, i: usize, start: Start) -> Result<Proc> {
        let proxy = PROXIES[i];
        let cmd = proxy_command(self.setup, proxy, self.ports[i], start)?;
        let mut proc = Proc::spawn(proxy.name(), cmd, &self.setup.dir)?;
        // A big deny list takes a moment to load. (With HTTP/3, edgelb binds its UDP sockets
        // before it listens on TCP: once TCP accepts, QUIC packets are queued for it.)
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
            let mut proc = self.start_one(i, Start::Plain)?;
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

    /// Runs h2load (h3-load for HTTP/3) against `port` and turns its report into a cell.
    fn measure(&self, workload: &Workload, port: u16, proxy: &Proc) -> Result<Cell> {
        if workload.start == Start::Http3 {
            return self.measure_h3(workload, port, proxy);
        }
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
        let counted = Counted {
            ok: report.ok,
            bad: report.bad,
            secs: report.secs,
            alpn: report.alpn,
            tls: report.tls,
            cipher: report.cipher,
            p50_us: percentile(&latencies, 50.0),
            p99_us: percentile(&latencies, 99.0),
            handshakes,
        };
        Ok(counted.cell(workload, &start, &end, backend_conns))
    }

    /// Runs h3-load against `port` (UDP, edgelb's QUIC on the TCP listener's port) and turns
    /// its report into a cell: the HTTP/2 16-stream row's connections and streams, timed, on
    /// core 1 as h2load. The proxy's CPU is sampled when h3-load's warm-up ends and when its
    /// measured window does (from its start, as h3-load counts them; sampled from the polling
    /// loop, within ~10 ms), so its closing the connections afterwards is not in it.
    fn measure_h3(&self, workload: &Workload, port: u16, proxy: &Proc) -> Result<Cell> {
        let dir = &self.setup.dir;
        let args = self.args;
        let mut cmd = pinned(1, self.h3_load, ["--connect", &format!("127.0.0.1:{port}")]);
        cmd.args(["--server-name", "localhost"])
            .args(["--ca".as_ref(), self.setup.certs.cert.as_os_str()])
            .args(["--conns", &(CONCURRENCY / STREAMS).to_string()])
            .args(["--streams", &STREAMS.to_string()])
            .args(["--warm-up-secs", &args.warm_up.to_string()])
            .args(["--secs", &args.duration.to_string()])
            .args(["--path", workload.path]);
        let limit = args.duration + args.warm_up + 30;
        let warm_up = Duration::from_secs(args.warm_up);
        let window_end = warm_up + Duration::from_secs(args.duration);
        let accepts_before = backend_accepts(self.status_port)?;
        let mut start: Option<Sample> = None;
        let mut end: Option<Sample> = None;
        let out = run_bounded_with(
            "h3-load",
            cmd,
            dir,
            Duration::from_secs(limit),
            &mut |elapsed| {
                if start.is_none() && elapsed >= warm_up {
                    start = Sample::take(proxy).ok();
                }
                if end.is_none() && elapsed >= window_end {
                    end = Sample::take(proxy).ok();
                }
            },
        )?;
        let end = match end {
            Some(end) => end,
            None => Sample::take(proxy)?,
        };
        let start = start.context("the run ended before its warm-up did")?;
        let backend_conns = backend_accepts(self.status_port)?.saturating_sub(accepts_before);

        let report =
            parse_h3load(&out).with_context(|| format!("cannot read h3-load's report:\n{out}"))?;
        let counted = Counted {
            ok: report.ok,
            bad: report.bad,
            secs: report.secs,
            alpn: report.alpn,
            // QUIC is TLS 1.3 only (RFC 9001), and h3-load offers nothing else; quinn does not
            // tell the client which cipher suite was chosen.
            tls: "TLSv1.3".into(),
            cipher: "(not reported over QUIC)".into(),
            p50_us: report.p50_us,
            p99_us: report.p99_us,
            handshakes: None,
        };
        Ok(counted.cell(workload, &start, &end, backend_conns))
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
