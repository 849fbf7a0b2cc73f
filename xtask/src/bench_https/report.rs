//! The Markdown report: throughput, CPU efficiency, latency, diagnostics, memory.
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use super::memory::Memory;
use super::{
    CONCURRENCY, Cell, H2_100_CLIENTS, PROXIES, Results, STREAMS, Start, Workload, WorkloadId,
};
use crate::cmd::Cmd;

pub fn render(r: &Results, about: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n{about}\n");
    if !r.workloads.is_empty() {
        workload_tables(&mut s, r);
    }
    if let Some(memory) = &r.memory {
        memory_table(&mut s, memory, r.memory_conns);
        if r.memory_conns < r.memory_conns_wanted {
            let _ = writeln!(
                s,
                "\n**{} connections, not {}**: the open-files hard limit here is {}, and haproxy \
                 needs two descriptors per connection it may hold (it refuses to start \
                 otherwise); raising the hard limit needs CAP_SYS_RESOURCE.",
                r.memory_conns, r.memory_conns_wanted, r.nofile
            );
        }
    }
    s
}

/// The tables of the h2load workloads.
fn workload_tables(s: &mut String, r: &Results) {
    throughput_table(s, r, "req/s (2xx)", |c| c.ok_per_sec);
    let _ = writeln!(
        s,
        "\nTLS 1.3 pinned on all three (ECDSA P-256 certificate); the proxy alone on core 0 (one \
         worker/thread), h2load + backend nginx on core 1. {CONCURRENCY} requests in flight \
         (HTTP/2 16 streams: {} connections; 100 streams: {H2_100_CLIENTS} connections, {} in \
         flight). Keep-alive and HTTP/2: {}s after {}s warm-up (h2load -D). New connections: \
         about {}s (h2load -n) after a warm-up.",
        CONCURRENCY / 16,
        H2_100_CLIENTS * 100,
        r.duration,
        r.warm_up,
        r.duration
    );
    let rounds = r.rounds.iter().flatten().map(Vec::len).max().unwrap_or(0);
    if rounds > 1 {
        let _ = writeln!(
            s,
            "\n{rounds} rounds: every cell was measured {rounds} times, the proxies taking turns \
             (each round starting with the next one). Throughput tables: each proxy's median \
             round, and the ratios of those medians; latency and diagnostics: each proxy's \
             median round by requests per CPU-second."
        );
    }
    if r.workloads.iter().any(|w| w.start == Start::Http3) {
        let _ = writeln!(
            s,
            "\nHTTP/3: edgelb only, started again with `--http3 on` (QUIC on the listener's port \
             over UDP, TLS 1.3, ALPN h3), {} streams on each of {} connections as the HTTP/2 \
             16-stream row, {}s after {}s warm-up, driven by h3-load (tests/src/bin/h3-load.rs, \
             quinn + h3, one thread) on core 1 in h2load's place: h2load cannot (Debian's is \
             built without HTTP/3). {NO_H3}.",
            STREAMS,
            CONCURRENCY / STREAMS,
            r.duration,
            r.warm_up
        );
    }
    h3_vs_h2(s, r, "requests/s", |c| c.ok_per_sec);
    let _ = writeln!(
        s,
        "\nRequests per CPU-second of the proxy (its own user + system time, all its processes, \
         over the measured window): what the proxy costs, whoever limits the rate.\n"
    );
    throughput_table(s, r, "req per proxy CPU-s", |c| c.ok_per_cpu_sec);
    h3_vs_h2(s, r, "requests per proxy CPU-second", |c| c.ok_per_cpu_sec);
    rounds_table(s, r);
    latency_table(s, r);
    diagnostics_table(s, r);
    handshake_note(s, r);
}

/// Why nginx and haproxy have no HTTP/3 figure.
const NO_H3: &str = "n/a — no HTTP/3 in Debian's nginx 1.22 / haproxy 2.6";

/// What a table shows for a proxy that cannot serve the workload at all.
fn not_served(w: &Workload, proxy: usize) -> Option<&'static str> {
    (!w.served_by(PROXIES[proxy])).then_some("n/a (no HTTP/3)")
}

/// One row per workload: the three proxies' `value` (the median of their rounds), then
/// edgelb/nginx and edgelb/haproxy.
fn throughput_table(s: &mut String, r: &Results, what: &str, value: fn(&Cell) -> f64) {
    let _ = writeln!(
        s,
        "| workload ({what}) | edgelb | nginx | haproxy | edgelb/nginx | edgelb/haproxy |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (wi, (w, row)) in r.workloads.iter().zip(&r.cells).enumerate() {
        let median = |p: usize| r.median(wi, p, value);
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| match (not_served(w, i), c) {
                (Some(na), _) => na.into(),
                (None, Some(c)) => {
                    let mut t = cell_text(c, median(i).unwrap_or_else(|| value(c)));
                    let invalid = r.rounds[wi][i].iter().filter(|c| c.problem.is_some());
                    let invalid = invalid.count();
                    if invalid > 0 && c.problem.is_none() {
                        let _ = write!(
                            t,
                            " ({invalid} of {} rounds invalid)",
                            r.rounds[wi][i].len()
                        );
                    }
                    t
                }
                (None, None) => "-".into(),
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.name,
            cells[0],
            cells[1],
            cells[2],
            ratio(median(0), median(1)),
            ratio(median(0), median(2))
        );
    }
}

/// With several rounds: edgelb's ratio to each peer in every round (both measured minutes
/// apart at most), in the order the rounds ran, so the spread the medians hide is shown.
fn rounds_table(s: &mut String, r: &Results) {
    if r.rounds.iter().all(|row| row.iter().all(|p| p.len() < 2)) {
        return;
    }
    let _ = writeln!(
        s,
        "\nedgelb's ratio to each peer in each round (requests/s; per CPU-second), the rounds in \
         the order they ran:\n"
    );
    let _ = writeln!(
        s,
        "| workload | edgelb/nginx | edgelb/haproxy | edgelb/nginx per CPU-s | edgelb/haproxy per CPU-s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (wi, w) in r.workloads.iter().enumerate() {
        let each = |p: usize, value: fn(&Cell) -> f64| {
            let ours = &r.rounds[wi][0];
            let theirs = &r.rounds[wi][p];
            if theirs.is_empty() || ours.is_empty() {
                return "-".to_string();
            }
            let valid = |c: &Cell| c.problem.is_none().then(|| value(c));
            ours.iter()
                .zip(theirs)
                .map(|(a, b)| ratio(valid(a), valid(b)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            w.name,
            each(1, |c| c.ok_per_sec),
            each(2, |c| c.ok_per_sec),
            each(1, |c| c.ok_per_cpu_sec),
            each(2, |c| c.ok_per_cpu_sec)
        );
    }
}

/// edgelb's HTTP/3 row over its HTTP/2 16-stream row (same streams and connections), the
/// medians of their rounds, when both ran.
fn h3_vs_h2(s: &mut String, r: &Results, what: &str, value: fn(&Cell) -> f64) {
    let edgelb = |id: WorkloadId| {
        r.workloads
            .iter()
            .position(|w| w.id == id)
            .filter(|&w| !r.rounds[w][0].is_empty())
            .map(|w| r.median(w, 0, value))
    };
    if let (Some(h3), Some(h2)) = (edgelb(WorkloadId::H3), edgelb(WorkloadId::H2x16)) {
        let _ = writeln!(
            s,
            "\nedgelb HTTP/3 / edgelb HTTP/2 (16x4), {what}: {}.",
            ratio(h3, h2)
        );
    }
}

/// `a / b` to two places; n/a when either is missing (no valid measurement) or `b` is 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

fn latency_table(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "\nLatency of 2xx responses, p50 / p99 in ms (h2load --log-file, HTTP/3 h3-load's own \
         timing, measured phase only; from sending the request to the end of the response, so a \
         new connection's handshake is not in it).\n"
    );
    let _ = writeln!(s, "| workload | edgelb | nginx | haproxy |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for (w, row) in r.workloads.iter().zip(&r.cells) {
        let text = |i: usize| match (not_served(w, i), &row[i]) {
            (Some(na), _) => na.into(),
            (
                None,
                Some(Cell {
                    p50_us: Some(p50),
                    p99_us: Some(p99),
                    ..
                }),
            ) => format!("{} / {}", ms(*p50), ms(*p99)),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            w.name,
            text(0),
            text(1),
            text(2)
        );
    }
}

fn ms(us: u32) -> String {
    let ms = f64::from(us) / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

fn diagnostics_table(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "\nDiagnostics, each as edgelb / nginx / haproxy. proxy CPU: cores the proxy used (1.00 = \
         saturated). core 0: all load on it (above proxy CPU = something else ran there). core 1: \
         h2load (h3-load for HTTP/3) + backend (~100% = the load side limits: compare req per \
         proxy CPU-second then). \
         backend conns: connections the backend accepted during the run.\n"
    );
    let _ = writeln!(
        s,
        "| workload | proxy CPU | core 0 busy | core 1 busy | backend conns |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (w, row) in r.workloads.iter().zip(&r.cells) {
        let join = |f: &dyn Fn(&Cell) -> String| {
            row.iter()
                .map(|c| c.as_ref().map_or("-".into(), f))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            w.name,
            join(&|c| format!("{:.2}", c.proxy_cpu)),
            join(&|c| format!("{:.0}%", c.core0_busy * 100.0)),
            join(&|c| format!("{:.0}%", c.core1_busy * 100.0)),
            join(&|c| c.backend_conns.to_string()),
        );
    }
    // From the first h2load row (quinn does not report the suite to h3-load).
    let ciphers: Vec<String> = r
        .workloads
        .iter()
        .zip(&r.cells)
        .find(|(w, _)| w.start != Start::Http3)
        .map(|(_, row)| {
            PROXIES
                .iter()
                .zip(row)
                .filter_map(|(p, c)| Some(format!("{} {}", p.name(), c.as_ref()?.cipher)))
                .collect()
        })
        .unwrap_or_default();
    if !ciphers.is_empty() {
        let _ = writeln!(s, "\nCipher suites chosen: {}.", ciphers.join(", "));
    }
}

/// Which handshakes were full and which resumed.
fn handshake_note(s: &mut String, r: &Results) {
    let mut lines = Vec::new();
    for (w, row) in r.workloads.iter().zip(&r.cells) {
        let counts: Vec<String> = PROXIES
            .iter()
            .zip(row)
            .filter_map(|(p, c)| {
                let h = c.as_ref()?.handshakes?;
                let missed = if h.dropped > 0 {
                    format!(" (tcpdump missed {} packets)", h.dropped)
                } else {
                    String::new()
                };
                Some(format!(
                    "{} {} full + {} resumed{missed}",
                    p.name(),
                    h.full,
                    h.resumed
                ))
            })
            .collect();
        if !counts.is_empty() {
            lines.push(format!("{}: {}", w.name, counts.join(", ")));
        }
    }
    let _ = writeln!(
        s,
        "\nTLS handshakes. Keep-alive and HTTP/2: each of h2load's connections does one full TLS \
         1.3 handshake at the start, none after. New connection per request: h2load resumes a \
         client's previous session (PSK with X25519) whenever the last connection ended with \
         close_notify both ways; counted from the ServerHellos on loopback (pre_shared_key \
         extension = resumed) during each cell's probe run of {} requests, in which each of the \
         {CONCURRENCY} clients' first connection is necessarily full:",
        u64::from(CONCURRENCY) * 10
    );
    for l in lines {
        let _ = writeln!(s, "- {l}");
    }
}

fn memory_table(s: &mut String, m: &[Option<Memory>; 3], conns: u64) {
    let _ = writeln!(
        s,
        "\nMemory: RSS (smaps_rollup Rss, summed over the proxy's processes) freshly started, then \
         holding {conns} idle keep-alive TLS 1.3 connections, each after one HTTP/1.1 request \
         (full handshakes, opened 200 at a time by idle-conns on core 1).\n"
    );
    let _ = writeln!(
        s,
        "| proxy | RSS fresh (MiB) | RSS with {conns} conns (MiB) | KiB per connection | closed early |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for (p, m) in PROXIES.iter().zip(m) {
        let Some(m) = m else { continue };
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {} |",
            p.name(),
            m.fresh_kib as f64 / 1024.0,
            m.loaded_kib as f64 / 1024.0,
            m.growth_per_conn_kib(),
            m.closed_early
        );
    }
    let loaded = |i: usize| m[i].map(|m| m.loaded_kib as f64);
    for (i, other) in [(1, "nginx"), (2, "haproxy")] {
        if let (Some(e), Some(o)) = (loaded(0), loaded(i))
            && o > 0.0
        {
            let _ = writeln!(
                s,
                "\nedgelb/{other} RSS with the connections: {:.2}.",
                e / o
            );
        }
    }
}

fn cell_text(c: &Cell, v: f64) -> String {
    let mut t = thousands(v);
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

/// 41234.6 -> "41,235".
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Date, kernel, CPU and the versions of everything measured; `build` says how edgelb was
/// built.
pub fn environment(edgelb: &Path, build: &str) -> String {
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
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
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
        "{} · {cores} × {} · kernel {} · h2load {} · nginx {} · haproxy {} · OpenSSL {} · edgelb {} ({}, {build}, \
         rustls {})",
        date.trim(),
        cpu,
        kernel.trim(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(41234.6), "41,235");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    fn cell(ok_per_sec: f64, ok_per_cpu_sec: f64, problem: Option<&str>) -> Cell {
        Cell {
            ok_per_sec,
            ok_per_cpu_sec,
            tls: "TLSv1.3".into(),
            problem: problem.map(String::from),
            ..Cell::default()
        }
    }

    fn results(rounds: [Vec<Cell>; 3]) -> Results {
        let workloads: Vec<Workload> = super::super::workloads().into_iter().take(1).collect();
        Results {
            cells: vec![rounds.each_ref().map(|r| super::super::representative(r))],
            rounds: vec![rounds],
            workloads,
            memory: None,
            memory_conns: 0,
            memory_conns_wanted: 0,
            nofile: 0,
            duration: 10,
            warm_up: 2,
        }
    }

    #[test]
    fn tables_show_medians_of_the_valid_rounds_and_every_rounds_ratio() {
        let r = results([
            vec![
                cell(90.0, 100.0, None),
                cell(50.0, 60.0, None),
                cell(70.0, 80.0, None),
            ],
            vec![
                cell(100.0, 100.0, None),
                cell(100.0, 100.0, None),
                cell(1.0, 1.0, Some("x")),
            ],
            vec![
                cell(70.0, 80.0, None),
                cell(60.0, 70.0, None),
                cell(80.0, 90.0, None),
            ],
        ]);
        assert_eq!(r.median(0, 0, |c| c.ok_per_sec), Some(70.0));
        // The invalid round is left out: the mean of the middle two of what remains.
        assert_eq!(r.median(0, 1, |c| c.ok_per_sec), Some(100.0));
        assert_eq!(r.cells[0][0].as_ref().map(|c| c.ok_per_cpu_sec), Some(80.0));
        let text = render(&r, "");
        assert!(
            text.contains("| 70 | 100 (1 of 3 rounds invalid) | 70 | 0.70 | 1.00 |"),
            "{text}"
        );
        // Per round, edgelb against nginx: 0.90, 0.50, and n/a for the invalid one.
        assert!(
            text.contains("| 0.90, 0.50, n/a | 1.29, 0.83, 0.88 |"),
            "{text}"
        );
        assert!(text.contains("3 rounds"), "{text}");
    }

    #[test]
    fn one_round_shows_no_rounds_table() {
        let r = results([
            vec![cell(90.0, 100.0, None)],
            vec![cell(100.0, 100.0, None)],
            vec![cell(70.0, 80.0, None)],
        ]);
        let text = render(&r, "");
        assert!(text.contains("| 90 | 100 | 70 | 0.90 | 1.29 |"), "{text}");
        assert!(!text.contains("in each round"), "{text}");
    }
}
