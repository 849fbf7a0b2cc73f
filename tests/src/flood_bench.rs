//! A SYN flood against an https listener, and the legitimate clients that still try to get in
//! (`cargo xtask bench flood`): nginx behind the kernel's own SYN cookies, next to edgelb with
//! `--syn-protect on` (cookies answered by its XDP program).
//!
//! The flood comes from the kernel itself, as in `bench xdp` ([`run_live_frames`]): one SYN
//! frame, run again and again through a small program ([`RawXdp::spoofer`]) as if received by
//! veth `lba` of the server's namespace. The program gives each copy a random source in
//! 10.128.0.0/16 and source port, then passes it to the stack (nginx: the kernel answers with
//! its cookies once the listener's queue is full) or tail-calls edgelb's own XDP program
//! (which answers it with `XDP_TX`). Answers leave through `lba` for its peer `lbb`, whose
//! program puts the frame's bytes back (live runs recycle their pages) and drops it. The
//! generator is pinned to core 0, but not all of that work stays there (a veth's receive side
//! runs where its NAPI is scheduled): the flood's cost is the whole machine's busy CPU time
//! while it runs, less what the server and client use without it, per frame.
//!
//! The same flood tail-called into a program that drops it at once measures the harness
//! itself (spoofing, the live frames): what remains of each contender's cost after it is what
//! a node receiving the flood from a NIC would pay (its driver aside).
//!
//! Meanwhile a client in a namespace of its own, pinned to the other core (its TLS work
//! would count as the flood's on core 0), opens TLS connections to the listener through a
//! second veth pair (`ClientLb`'s), one every 20 ms, and times each handshake (TCP connect to
//! the end of the TLS handshake; 3 s at most). The same client runs alone first, for the
//! baseline. (Pinned to core 0 beside the flood, it was as successful: 100 % for both, p99
//! 6-11 ms.) What this cannot show: a NIC's receive queue, where legitimate SYNs wait behind
//! the flood's and are dropped with them once the core cannot keep up. Here the flood is generated as fast as the core processes it, and the
//! client's frames take another path, so its handshakes succeed either way; the figure that
//! carries over is the CPU per flood SYN, i.e. how big a flood one core absorbs.
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use edgelb::dataplane::run_live_frames;

use crate::certs::{TempDir, self_signed};
use crate::daemon::Daemon;
use crate::live_bench::{
    LB_IF, LB_V4, PEER_IF, PEER_V4, add_bench_link, ifindex, run_in, with_checksums,
};
use crate::netns::{self, ClientLb, Netns, in_netns};
use crate::packet::{Frame, LINUX_SYN_OPTIONS, parse};
use crate::rawxdp::{ProgArray, RawXdp, XDP_DROP, XDP_PASS, XdpLink, prog_by_id};

const PORT: u16 = 8443;
/// The legitimate client's pace and patience.
const PACE: Duration = Duration::from_millis(20);
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(3);
const BASELINE: Duration = Duration::from_secs(2);
/// The core the flood is generated and processed on.
const FLOODED_CORE: usize = 0;
/// The legitimate client's core: its TLS work would otherwise count as the flood's.
const CLIENT_CORE: usize = 1;

/// What one contender did.
struct Row {
    name: &'static str,
    flood_frames: u64,
    flood_secs: f64,
    /// The machine's CPU time per flood frame (less what the server and client used without
    /// the flood), in nanoseconds.
    cpu_ns: f64,
    baseline: Handshakes,
    under_flood: Handshakes,
}

/// The legitimate client's handshakes: how many were tried, and the times of those that
/// completed.
#[derive(Default)]
struct Handshakes {
    tried: usize,
    times_ms: Vec<f64>,
}

impl Handshakes {
    fn ok_percent(&self) -> f64 {
        100.0 * self.times_ms.len() as f64 / self.tried.max(1) as f64
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.times_ms.is_empty() {
            return f64::NAN;
        }
        let mut t = self.times_ms.clone();
        t.sort_by(f64::total_cmp);
        t[((t.len() - 1) as f64 * q).round() as usize]
    }
}

/// The flood's SYN: from 10.128.0.0 port 65535 (the spoofer's starting point), IP id 0xffff,
/// with a Linux client's options, checksums correct.
fn flood_syn() -> Vec<u8> {
    let mut frame = Frame::tcp("10.128.0.0", LB_V4, PORT);
    frame.src_port = 0xffff;
    let mut f = frame.tcp_options(&LINUX_SYN_OPTIONS).df().bytes();
    // Frame::bytes writes the IP id as 0x1234: the spoofer's arithmetic wants 0xffff.
    f[18..20].copy_from_slice(&[0xff, 0xff]);
    with_checksums(f)
}

/// The client and server namespaces (`ClientLb`), the flood's link (`lba`/`lbb`) in the
/// server's, and the programs on the veths' far ends.
struct Topo {
    net: ClientLb,
    /// `lbb`'s program: puts the SYN's bytes back and drops the frame.
    _sink: (RawXdp, XdpLink),
    /// On the client's veth: `XDP_PASS`, so that it receives what edgelb's XDP program sends
    /// back.
    _client_pass: (RawXdp, XdpLink),
    lb_ifindex: u32,
}

impl Topo {
    fn new(syn: &[u8]) -> Result<Self> {
        let net = ClientLb::new();
        for (key, value) in [
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            run_in(&net.lb, &["sysctl", "-qw", &format!("{key}={value}")])?;
        }
        add_bench_link(&net.lb);
        // Answers to the spoofed sources leave through lba, to lbb's MAC.
        net.lb
            .ip(&["route", "add", "10.128.0.0/16", "via", PEER_V4]);

        let syn = syn.to_vec();
        let sink = in_netns(&net.lb.path(), move || -> Result<(RawXdp, XdpLink, u32)> {
            let sink = RawXdp::restoring_sink("flood_sink", 0, &syn)?;
            let link = XdpLink::native(sink.fd(), ifindex(PEER_IF)?)?;
            Ok((sink, link, ifindex(LB_IF)?))
        })?;
        let client_if = net.client_if.clone();
        let client_pass = in_netns(&net.client.path(), move || -> Result<(RawXdp, XdpLink)> {
            let pass = RawXdp::verdict("flood_pass", XDP_PASS)?;
            let link = XdpLink::native(pass.fd(), ifindex(&client_if)?)?;
            Ok((pass, link))
        })?;
        Ok(Topo {
            net,
            _sink: (sink.0, sink.1),
            _client_pass: client_pass,
            lb_ifindex: sink.2,
        })
    }
}

/// One timed TLS handshake with the listener from the client namespace (the calling thread
/// is in it): its time in milliseconds, or what failed.
fn handshake(config: &Arc<rustls::ClientConfig>) -> Result<f64> {
    let start = Instant::now();
    let addr: SocketAddr = format!("{}:{PORT}", netns::LB_V4).parse()?;
    let mut tcp = TcpStream::connect_timeout(&addr, HANDSHAKE_LIMIT).context("connect")?;
    let left = HANDSHAKE_LIMIT
        .checked_sub(start.elapsed())
        .context("connected too late")?;
    tcp.set_read_timeout(Some(left))?;
    tcp.set_write_timeout(Some(left))?;
    let name = rustls::pki_types::ServerName::try_from(netns::LB_V4)?;
    let mut tls = rustls::ClientConnection::new(config.clone(), name)?;
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).context("TLS handshake")?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// The legitimate client for `secs`, on its own core, in the client namespace.
fn clients(
    client: &Netns,
    ca: &std::path::Path,
    secs: Duration,
) -> std::thread::JoinHandle<Handshakes> {
    let config = crate::https::ClientOpts::new(ca).config();
    let path = client.path();
    std::thread::spawn(move || {
        in_netns(&path, move || {
            let mut set = nix::sched::CpuSet::new();
            if set.set(CLIENT_CORE).is_ok() {
                let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
            }
            let mut out = Handshakes::default();
            let end = Instant::now() + secs;
            while Instant::now() < end {
                let next = Instant::now() + PACE;
                out.tried += 1;
                if let Ok(ms) = handshake(&config) {
                    out.times_ms.push(ms);
                }
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            out
        })
    })
}

/// A server under test, stopped when dropped.
enum Server {
    /// Held until the row is done.
    Nginx {
        _running: Nginx,
    },
    Edgelb(Daemon),
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(topo: &Topo, dir: &TempDir, cert: &crate::certs::ServerCert) -> Result<Server> {
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen {PORT} ssl;\n    ssl_protocols TLSv1.3;\n\
             ssl_certificate {};\n    ssl_certificate_key {};\n\
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        cert.cert.display(),
        cert.key.display()
    );
    let path = dir.write("nginx.conf", conf);
    let child = topo
        .net
        .lb
        .command("nginx")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx (cargo xtask bench flood installs it)")?;
    Ok(Server::Nginx {
        _running: Nginx(child),
    })
}

fn start_edgelb(
    topo: &Topo,
    dir: &TempDir,
    cert: &crate::certs::ServerCert,
    backend: &str,
    protect: &str,
) -> Server {
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    Server::Edgelb(Daemon::start(
        Some(&topo.net.lb),
        &[
            "--listen",
            &format!("0.0.0.0:{PORT}"),
            "--cert",
            &c,
            "--key",
            &k,
            "--backend",
            backend,
            "--syn-protect",
            protect,
            "--xdp-iface",
            LB_IF,
            "--xdp-iface",
            &topo.net.lb_if,
            "--xdp-mode",
            "native",
        ],
        dir.path(),
    ))
}

/// The id of the XDP program attached to `iface` in `ns` (`ip -j link`).
fn attached_prog(ns: &Netns, iface: &str) -> Result<u32> {
    let out = run_in(ns, &["ip", "-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .with_context(|| format!("no XDP program on {iface}: {out}"))
}

/// Waits until a handshake from the client succeeds (the server is up).
fn wait_ready(topo: &Topo, ca: &std::path::Path) -> Result<()> {
    let config = crate::https::ClientOpts::new(ca).config();
    in_netns(&topo.net.client.path(), move || {
        let mut last = anyhow::anyhow!("not tried");
        for _ in 0..50 {
            match handshake(&config) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.context("the listener never completed a handshake"))
    })
}

/// Busy CPU time of the whole machine so far, all cores (`/proc/stat`: user, nice, system,
/// irq, softirq), in nanoseconds. The flood's work does not stay on the generator's core:
/// a veth's receive side may run where its NAPI was last scheduled.
fn node_busy_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100) as u64;
    Ok(busy * (1_000_000_000 / hz))
}

/// Floods for `secs` from this thread (in the server's namespace, pinned) while the client
/// tries; returns the frames sent, the seconds it took, and the machine's busy CPU time
/// meanwhile.
fn flood(
    topo: &Topo,
    prog: std::os::fd::BorrowedFd<'_>,
    syn: &[u8],
    secs: Duration,
) -> Result<(u64, f64, u64)> {
    let start = Instant::now();
    let busy = node_busy_ns()?;
    let mut frames = 0u64;
    while start.elapsed() < secs {
        let n = 100_000;
        run_live_frames(prog, syn, topo.lb_ifindex, n, 0)?;
        frames += u64::from(n);
    }
    let busy = node_busy_ns()?.saturating_sub(busy);
    Ok((frames, start.elapsed().as_secs_f64(), busy))
}

/// Runs both contenders, `secs` of flood each, and prints the table.
pub fn run(secs: Duration) -> Result<()> {
    let syn = flood_syn();
    let topo = Topo::new(&syn)?;
    let dir = TempDir::new();
    let cert = self_signed(&dir, "lb", &[parse(netns::LB_V4), parse(LB_V4)]);
    let downloads = downloads(&topo, &dir, &cert)?;

    // This thread generates the flood: it lives in the server's namespace from here on.
    let file = std::fs::File::open(topo.net.lb.path())?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the server's namespace")?;
    let mut set = nix::sched::CpuSet::new();
    set.set(FLOODED_CORE).context("CPU_SET")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("sched_setaffinity")?;

    // The harness alone: the spoofed SYNs dropped as soon as they are made.
    let harness_ns = {
        let dropper = RawXdp::verdict("flood_drop", XDP_DROP)?;
        let array = ProgArray::holding(dropper.fd())?;
        let spoofer = RawXdp::spoofer("flood_spoof", Some(&array))?;
        let (frames, _, busy) = flood(&topo, spoofer.fd(), &syn, secs)?;
        busy as f64 / frames.max(1) as f64
    };

    let mut rows = Vec::new();
    for name in ["nginx (kernel cookies)", "edgelb (XDP cookies)"] {
        let server = if name.starts_with("nginx") {
            start_nginx(&topo, &dir, &cert)?
        } else {
            start_edgelb(&topo, &dir, &cert, "127.0.0.1:9", "on")
        };
        wait_ready(&topo, &cert.cert)?;
        // The machine's CPU for the server and the client alone, a second's worth: taken
        // from what the flood's period used.
        let before = (node_busy_ns()?, Instant::now());
        let baseline = clients(&topo.net.client, &cert.cert, BASELINE)
            .join()
            .map_err(|_| anyhow::anyhow!("client thread"))?;
        let quiet_per_sec =
            node_busy_ns()?.saturating_sub(before.0) as f64 / before.1.elapsed().as_secs_f64();
        // The flood's program: spoofing, then the stack or edgelb's program.
        let (spoofer, _array) = match &server {
            Server::Nginx { .. } => (RawXdp::spoofer("flood_spoof", None)?, None),
            Server::Edgelb(_) => {
                let edgelb = prog_by_id(attached_prog(&topo.net.lb, LB_IF)?)?;
                let array = ProgArray::holding(edgelb.as_fd())?;
                (RawXdp::spoofer("flood_spoof", Some(&array))?, Some(array))
            }
        };
        let client = clients(&topo.net.client, &cert.cert, secs);
        let (frames, wall, busy) = flood(&topo, spoofer.fd(), &syn, secs)?;
        let cpu = (busy as f64 - quiet_per_sec * wall).max(0.0);
        let under_flood = client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread"))?;
        if let Server::Edgelb(d) = server {
            let (_, log) = d.stop();
            let answered = crate::daemon::xdp_counter(&log, "listener-1", "syn_cookie");
            println!("edgelb answered {answered} SYNs in XDP");
        } else {
            let cookies = run_in(&topo.net.lb, &["nstat", "-az", "TcpExtSyncookiesSent"])?;
            println!("kernel: {}", cookies.lines().last().unwrap_or("").trim());
            drop(server);
        }
        rows.push(Row {
            name,
            flood_frames: frames,
            flood_secs: wall,
            cpu_ns: cpu / frames.max(1) as f64,
            baseline,
            under_flood,
        });
    }
    print_table(&rows, harness_ns);
    let [off, on] = downloads;
    println!(
        "\n64 MiB downloads through edgelb, {DOWNLOADS} each: median {:.3} s without --syn-protect, {:.3} s with it on ({:+.1} %); fastest {:.3} s and {:.3} s ({:+.1} %)",
        off.median,
        on.median,
        (on.median / off.median - 1.0) * 100.0,
        off.fastest,
        on.fastest,
        (on.fastest / off.fastest - 1.0) * 100.0
    );
    Ok(())
}

/// Downloads timed for item 1's check.
const DOWNLOADS: usize = 15;
const DOWNLOAD_SIZE: usize = 64 << 20;

/// The times of 64 MiB downloads through edgelb from the client namespace, without
/// `--syn-protect` and with it on (the connection then made from the XDP program's cookie,
/// window scaling and all): the cookies must not slow a transfer down.
fn downloads(topo: &Topo, dir: &TempDir, cert: &crate::certs::ServerCert) -> Result<[Times; 2]> {
    let big = in_netns(&topo.net.lb.path(), || {
        crate::backend::big_backend(DOWNLOAD_SIZE)
    });
    let backend = big.addr.to_string();
    let url = format!("https://{}:{PORT}/", netns::LB_V4);
    let mut out = [Times::default(); 2];
    for (i, protect) in ["off", "on"].into_iter().enumerate() {
        let server = start_edgelb(topo, dir, cert, &backend, protect);
        wait_ready(topo, &cert.cert)?;
        let mut times = Vec::new();
        // The first is not timed: with protection on, its SYN goes to the kernel.
        for n in 0..=DOWNLOADS {
            let out = topo
                .net
                .client
                .command("curl")
                .args(["-sS", "--max-time", "30", "--cacert"])
                .arg(&cert.cert)
                .args([
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download} %{time_total}",
                ])
                .arg(&url)
                .output()
                .context("curl")?;
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut words = said.split_whitespace();
            if words.next() != Some("200")
                || words.next() != Some(DOWNLOAD_SIZE.to_string().as_str())
            {
                anyhow::bail!(
                    "download with --syn-protect {protect}: {said} {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let secs: f64 = words.next().unwrap_or("").parse().context("curl's time")?;
            if n > 0 {
                times.push(secs);
            }
        }
        if let Server::Edgelb(d) = server {
            let (_, log) = d.stop();
            let answered = crate::daemon::xdp_counter(&log, "listener-1", "syn_cookie");
            if protect == "on" && answered < DOWNLOADS as u64 {
                anyhow::bail!("only {answered} of the downloads' SYNs were answered in XDP");
            }
        }
        times.sort_by(f64::total_cmp);
        out[i] = Times {
            median: times[times.len() / 2],
            fastest: times[0],
        };
    }
    Ok(out)
}

/// Seconds a download took: the median and the fastest of a series.
#[derive(Clone, Copy, Default)]
struct Times {
    median: f64,
    fastest: f64,
}

fn print_table(rows: &[Row], harness_ns: f64) {
    println!(
        "\n| | flood SYNs/s | node CPU per million flood SYNs (less the harness's {harness_ns:.0} ms) | legitimate handshakes OK under flood | p50 / p99 under flood | alone: OK, p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} ms ({:.0} ms) | {:.1} % of {} ({:.0}/s) | {:.1} / {:.1} ms | {:.1} %, {:.1} ms |",
            r.name,
            r.flood_frames as f64 / r.flood_secs,
            r.cpu_ns, // ns per frame = ms per million frames
            r.cpu_ns - harness_ns,
            r.under_flood.ok_percent(),
            r.under_flood.tried,
            r.under_flood.times_ms.len() as f64 / r.flood_secs,
            r.under_flood.quantile(0.5),
            r.under_flood.quantile(0.99),
            r.baseline.ok_percent(),
            r.baseline.quantile(0.99),
        );
    }
    if let [kernel, xdp] = rows {
        println!(
            "\nedgelb's CPU per flood SYN: {:.2} of the kernel's ({:.2} less the harness)",
            xdp.cpu_ns / kernel.cpu_ns,
            (xdp.cpu_ns - harness_ns) / (kernel.cpu_ns - harness_ns)
        );
    }
}
