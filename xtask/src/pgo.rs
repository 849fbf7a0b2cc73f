//! `cargo xtask build --pgo`: edgelb built with profile-guided optimisation. An instrumented
//! build serves a training mix of HTTPS traffic in front of a real backend, LLVM merges what it
//! counted, and a second build lays out and inlines hyper's, h2's, tokio's, rustls' and
//! edgelb's code by it. On HTTP/2 through one core this is worth 10-15 % more requests per
//! CPU-second than the plain release build (README, HTTPS throughput).
//!
//! The training mix is deliberately not the benchmark's rows: other concurrencies, uploads as
//! well as downloads, over both protocols, so the profile describes a proxy's traffic and not
//! one measurement.
//!
//! Both builds name the host target (`--target`), so only code that runs in edgelb is
//! instrumented, not build scripts or proc macros; each has its own target directory, since
//! flags that differ would otherwise rebuild the main one's dependencies each time.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::bench_https::configs::{make_cert, nofile_hard_limit};
use crate::bench_https::procs::{Proc, TempDir, free_ports, pinned, run_bounded};
use crate::bench_https::start_backend;
use crate::cmd::Cmd;
use crate::setup;
use crate::target_dir;

/// One run of h2load: its arguments (the URL is added) and the requests it makes.
struct Run {
    name: &'static str,
    args: &'static [&'static str],
    path: &'static str,
    requests: u32,
}

/// About 10 s on this 2-core VM with the instrumented build.
const TRAINING: &[Run] = &[
    Run {
        name: "h1-keepalive",
        args: &["--h1", "-c", "16"],
        path: "/",
        requests: 60_000,
    },
    Run {
        name: "h2-streams",
        args: &["-c", "8", "-m", "32"],
        path: "/",
        requests: 120_000,
    },
    Run {
        name: "h2-few-streams",
        args: &["-c", "16", "-m", "4"],
        path: "/",
        requests: 40_000,
    },
    Run {
        name: "h1-upload",
        args: &["--h1", "-c", "8", "-d", "@UPLOAD@"],
        path: "/",
        requests: 10_000,
    },
    Run {
        name: "h2-upload",
        args: &["-c", "4", "-m", "8", "-d", "@UPLOAD@"],
        path: "/",
        requests: 10_000,
    },
    Run {
        name: "h1-download",
        args: &["--h1", "-c", "8"],
        path: "/64k",
        requests: 4_000,
    },
    Run {
        name: "h2-download",
        args: &["-c", "2", "-m", "8"],
        path: "/64k",
        requests: 4_000,
    },
    Run {
        name: "new-connections",
        args: &["--h1", "-c", "8", "-H", "Connection: close"],
        path: "/",
        requests: 3_000,
    },
];

/// What the optimised binary must serve before it is handed out.
const CHECK: &[Run] = &[
    Run {
        name: "check-h1",
        args: &["--h1", "-c", "4"],
        path: "/",
        requests: 2_000,
    },
    Run {
        name: "check-h2",
        args: &["-c", "2", "-m", "16", "-d", "@UPLOAD@"],
        path: "/",
        requests: 2_000,
    },
];

/// Bytes of each training upload.
const UPLOAD: usize = 4096;

/// Builds the profile-guided edgelb, checks that it serves, and returns its path
/// (`target/pgo/edgelb`).
pub fn build() -> Result<PathBuf> {
    setup::ensure_debs(&["nginx", "nghttp2-client", "openssl"])?;
    crate::bench_https::keep_system_services_off();
    let host = rustc_host()?;
    let profdata = llvm_profdata()?;
    let root = std::path::absolute(target_dir().join("pgo"))?;
    let raw = root.join("raw");
    if raw.exists() {
        fs::remove_dir_all(&raw).with_context(|| format!("cannot empty {}", raw.display()))?;
    }
    fs::create_dir_all(&raw)?;

    // With the XDP program in both builds, so that the code profiled is the code optimised
    // (without it, a few start-up functions differ and their counts are discarded).
    cargo_build(&root.join("generate"), &host, "-Cprofile-generate", &raw).run()?;
    let instrumented = root.join("generate").join(&host).join("release/edgelb");
    serve(&instrumented, TRAINING, Some(&raw))?;

    let merged = root.join("edgelb.profdata");
    let profiles: Vec<PathBuf> = fs::read_dir(&raw)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "profraw"))
        .collect();
    if profiles.is_empty() {
        bail!(
            "the instrumented edgelb wrote no profile into {} (it must exit cleanly on SIGTERM)",
            raw.display()
        );
    }
    Cmd::new(&profdata)
        .args(["merge".as_ref(), "-o".as_ref(), merged.as_os_str()])
        .args(&profiles)
        .run()?;

    cargo_build(&root.join("use"), &host, "-Cprofile-use", &merged).run()?;
    let built = root.join("use").join(&host).join("release/edgelb");
    serve(&built, CHECK, None)?;
    let out = root.join("edgelb");
    fs::copy(&built, &out)
        .with_context(|| format!("cannot copy {} to {}", built.display(), out.display()))?;
    eprintln!("xtask: profile-guided edgelb: {}", out.display());
    Ok(out)
}

/// `cargo build --release` of edgelb for `host` into `dir`, with `flag=path` for rustc.
fn cargo_build(dir: &Path, host: &str, flag: &str, path: &Path) -> Cmd {
    let var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        host.replace('-', "_").to_uppercase()
    );
    Cmd::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "lb-userspace",
            "--bin",
            "edgelb",
        ])
        .args(["--target", host])
        .env("CARGO_TARGET_DIR", dir)
        // Either would take the place of the target's flags (cargo uses one source), even
        // empty.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(&var, format!("{flag}={}", path.display()))
}

/// Serves `runs` with `edgelb` (in front of nginx, on loopback, XDP off), failing unless every
/// request is answered 2xx; an instrumented edgelb writes its counts into `profile_dir`.
fn serve(edgelb: &Path, runs: &[Run], profile_dir: Option<&Path>) -> Result<()> {
    let dir = TempDir::new()?;
    let certs = make_cert(dir.path())?;
    let ports = free_ports(3)?;
    let (backend_port, status_port, port) = (ports[0], ports[1], ports[2]);
    let nofile = nofile_hard_limit()?;
    let mut backend = start_backend(dir.path(), backend_port, status_port, nofile)?;
    let upload = dir.path().join("upload");
    fs::write(&upload, vec![b'x'; UPLOAD])?;

    let mut cmd = pinned(0, edgelb, ["--listen", &format!("127.0.0.1:{port}")]);
    cmd.args(["--cert".as_ref(), certs.cert.as_os_str()])
        .args(["--key".as_ref(), certs.key.as_os_str()])
        .args(["--backend", &format!("127.0.0.1:{backend_port}")])
        .args(["--xdp-mode", "off"])
        .env("TOKIO_WORKER_THREADS", "1");
    if let Some(dir) = profile_dir {
        cmd.env("LLVM_PROFILE_FILE", dir.join("edgelb-%p-%m.profraw"));
    }
    let mut proxy = Proc::spawn("edgelb", cmd, dir.path())?;
    proxy.wait_for_port(port)?;
    for run in runs {
        let mut h2load = pinned(1, "h2load", ["-n", &run.requests.to_string()]);
        for arg in run.args {
            match *arg {
                "@UPLOAD@" => h2load.arg(&upload),
                a => h2load.arg(a),
            };
        }
        h2load.arg(format!("https://127.0.0.1:{port}{}", run.path));
        let out = run_bounded(run.name, h2load, dir.path(), Duration::from_secs(120))?;
        let done = format!("{n} done, {n} succeeded, 0 failed", n = run.requests);
        let all_2xx = format!("status codes: {} 2xx", run.requests);
        if !out.contains(&done) || !out.contains(&all_2xx) {
            bail!(
                "run {} through {} did not succeed in full:\n{out}",
                run.name,
                edgelb.display()
            );
        }
        proxy.check_alive()?;
    }
    // The counts are written as edgelb exits, so it must exit, not be killed.
    if !proxy.stop(Duration::from_secs(20))? {
        bail!("{} did not exit within 20 s of SIGTERM", edgelb.display());
    }
    backend.check_alive()?;
    Ok(())
}

/// The host's target triple, as rustc names it.
fn rustc_host() -> Result<String> {
    let version = Cmd::new("rustc")
        .args(["-vV"])
        .output()
        .context("cannot run `rustc -vV`")?;
    field(&version, "host: ").context("`rustc -vV` names no host")
}

/// `llvm-profdata` of rustc's own LLVM major version (its profile format must match).
fn llvm_profdata() -> Result<PathBuf> {
    let version = Cmd::new("rustc")
        .args(["-vV"])
        .output()
        .context("cannot run `rustc -vV`")?;
    let llvm = field(&version, "LLVM version: ").context("`rustc -vV` names no LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default();
    setup::ensure_debs(&[&format!("llvm-{major}")])?;
    let tool = PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-profdata"));
    if !tool.is_file() {
        bail!(
            "{} is missing: rustc uses LLVM {llvm}, and only that major version's llvm-profdata \
             reads its profiles",
            tool.display()
        );
    }
    Ok(tool)
}

fn field(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_and_llvm_from_rustc_version() {
        let v =
            "rustc 1.95.0 (abc 2026-01-01)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.2\n";
        assert_eq!(
            field(v, "host: ").as_deref(),
            Some("x86_64-unknown-linux-gnu")
        );
        assert_eq!(field(v, "LLVM version: ").as_deref(), Some("22.1.2"));
        assert_eq!(field(v, "release: "), None);
    }
}
