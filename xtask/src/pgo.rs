//! `cargo xtask build --pgo`: edgelb built with profile-guided optimisation. An instrumented
//! build serves a training mix of HTTPS traffic in front of a real backend, LLVM merges what it
//! counted, and a second build lays out and inlines hyper's, h2's, tokio's, rustls' and
//! edgelb's code by it; what that gives is measured in the README (HTTPS throughput).
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

use crate::bench_https::configs::{edgelb_command, make_cert, nofile_hard_limit};
use crate::bench_https::h2load::parse_h2load;
use crate::bench_https::procs::{
    Proc, TempDir, free_ports, keep_services_off, pinned, require_two_cores, run_bounded,
};
use crate::bench_https::start_backend;
use crate::cmd::Cmd;
use crate::setup;
use crate::signals;
use crate::target_dir;

/// One run of h2load: its arguments (the URL is added), the requests it makes, and whether
/// each is a POST of [`UPLOAD`] bytes.
struct Run {
    name: &'static str,
    args: &'static [&'static str],
    path: &'static str,
    requests: u32,
    upload: bool,
}

const fn run(
    name: &'static str,
    args: &'static [&'static str],
    path: &'static str,
    requests: u32,
    upload: bool,
) -> Run {
    Run {
        name,
        args,
        path,
        requests,
        upload,
    }
}

/// A few seconds of each kind of traffic (HTTP/2 the most: it has the most code per request).
#[rustfmt::skip]
const TRAINING: &[Run] = &[
    run("h1-keepalive", &["--h1", "-c", "16"], "/", 60_000, false),
    run("h2-streams", &["-c", "8", "-m", "32"], "/", 120_000, false),
    run("h2-few-streams", &["-c", "16", "-m", "4"], "/", 40_000, false),
    run("h1-upload", &["--h1", "-c", "8"], "/", 10_000, true),
    run("h2-upload", &["-c", "4", "-m", "8"], "/", 10_000, true),
    run("h1-download", &["--h1", "-c", "8"], "/64k", 4_000, false),
    run("h2-download", &["-c", "2", "-m", "8"], "/64k", 4_000, false),
    run("new-connections", &["--h1", "-c", "8", "-H", "Connection: close"], "/", 3_000, false),
];

/// What the optimised binary must serve before it is handed out.
#[rustfmt::skip]
const CHECK: &[Run] = &[
    run("check-h1", &["--h1", "-c", "4"], "/", 2_000, false),
    run("check-h2", &["-c", "2", "-m", "16"], "/", 2_000, true),
];

/// Bytes of each training upload.
const UPLOAD: usize = 4096;

/// Builds the profile-guided edgelb, checks that it serves, and returns its path
/// (`target/pgo/edgelb`).
pub fn build() -> Result<PathBuf> {
    signals::install_handlers();
    require_two_cores("the profile-guided build")?;
    // A host's own nginx is left alone; one that installing the package just started is not
    // wanted (it listens on port 80).
    if setup::ensure_debs(&["nginx"])? {
        keep_services_off(&["nginx"]);
    }
    setup::ensure_debs(&["nghttp2-client", "openssl"])?;
    let rustc = Cmd::new("rustc")
        .args(["-vV"])
        .output()
        .context("cannot run `rustc -vV`")?;
    let host = field(&rustc, "host: ").context("`rustc -vV` names no host")?;
    let profdata = llvm_profdata(&rustc)?;
    let root = std::path::absolute(target_dir().join("pgo"))
        .context("cannot resolve the target directory")?;
    let raw = root.join("raw");
    if raw.exists() {
        fs::remove_dir_all(&raw).with_context(|| format!("cannot empty {}", raw.display()))?;
    }
    fs::create_dir_all(&raw).with_context(|| format!("cannot create {}", raw.display()))?;

    cargo_build(&root.join("generate"), &host, "-Cprofile-generate", &raw)?.run()?;
    let instrumented = root.join("generate").join(&host).join("release/edgelb");
    serve(&instrumented, TRAINING, Some(&raw))?;

    let merged = root.join("edgelb.profdata");
    let profiles: Vec<PathBuf> = fs::read_dir(&raw)
        .with_context(|| format!("cannot read {}", raw.display()))?
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

    cargo_build(&root.join("use"), &host, "-Cprofile-use", &merged)?.run()?;
    let built = root.join("use").join(&host).join("release/edgelb");
    serve(&built, CHECK, None)?;
    // Copied then renamed: an `edgelb` already there may be running (a copy onto it would
    // fail with ETXTBSY), and a failed build must not leave half a binary.
    let out = root.join("edgelb");
    let partial = root.join("edgelb.partial");
    fs::copy(&built, &partial)
        .with_context(|| format!("cannot copy {} to {}", built.display(), partial.display()))?;
    fs::rename(&partial, &out)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))?;
    eprintln!("xtask: profile-guided edgelb: {}", out.display());
    Ok(out)
}

/// `cargo build --release` of edgelb for `host` into `dir`, with `flag=path` for rustc besides
/// the flags the user gave cargo.
fn cargo_build(dir: &Path, host: &str, flag: &str, path: &Path) -> Result<Cmd> {
    let var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        host.replace('-', "_").to_uppercase()
    );
    let mut flags = user_rustflags(&var);
    flags.push(format!("{flag}={}", path.display()));
    // The target's variable is split at whitespace.
    if let Some(f) = flags.iter().find(|f| f.contains(char::is_whitespace)) {
        bail!("rustc flag {f:?} contains whitespace, which {var} cannot carry");
    }
    Ok(crate::release_build()
        .args(["--bin", "edgelb", "--target", host])
        .env("CARGO_TARGET_DIR", dir)
        // Cargo takes rustc flags from one source only, the first of these that is set (even
        // empty): their flags are in `var` now.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env(&var, flags.join(" "))
        // The XDP program in both builds, so that the code profiled is the code optimised
        // (without it, a few start-up functions differ and their counts are discarded).
        .env_remove("AYA_BUILD_SKIP"))
}

/// The rustc flags cargo would have used from the environment, in its order of precedence
/// (`CARGO_ENCODED_RUSTFLAGS`, `RUSTFLAGS`, the target's, then `build.rustflags`' variable),
/// so that a profile-guided build differs from a plain one by the profile alone.
fn user_rustflags(target_var: &str) -> Vec<String> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(encoded) = get("CARGO_ENCODED_RUSTFLAGS") {
        return encoded.split('\x1f').map(String::from).collect();
    }
    ["RUSTFLAGS", target_var, "CARGO_BUILD_RUSTFLAGS"]
        .into_iter()
        .find_map(get)
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Serves `runs` with `edgelb` (in front of nginx, on loopback, XDP off), failing unless every
/// request is answered 2xx; an instrumented edgelb writes its counts into `profile_dir`.
fn serve(edgelb: &Path, runs: &[Run], profile_dir: Option<&Path>) -> Result<()> {
    let dir = TempDir::new("pgo")?;
    let certs = make_cert(dir.path())?;
    let ports = free_ports(3)?;
    let (backend_port, status_port, port) = (ports[0], ports[1], ports[2]);
    let nofile = nofile_hard_limit()?;
    let mut backend = start_backend(dir.path(), backend_port, status_port, nofile)?;
    let upload = dir.path().join("upload");
    fs::write(&upload, vec![b'x'; UPLOAD])
        .with_context(|| format!("cannot write {}", upload.display()))?;

    let mut cmd = edgelb_command(edgelb, port, &certs, backend_port);
    if let Some(dir) = profile_dir {
        cmd.env("LLVM_PROFILE_FILE", dir.join("edgelb-%p-%m.profraw"));
    }
    let mut proxy = Proc::spawn("edgelb", cmd, dir.path())?;
    proxy.wait_for_port(port)?;
    for run in runs {
        let mut h2load = pinned(1, "h2load", ["-n", &run.requests.to_string()]);
        h2load.args(run.args);
        if run.upload {
            h2load.arg("-d").arg(&upload);
        }
        h2load.arg(format!("https://127.0.0.1:{port}{}", run.path));
        let out = run_bounded(run.name, h2load, dir.path(), Duration::from_secs(120))?;
        // h2load falls back to HTTP/1.1 when h2 is not offered: the protocol is checked too.
        let alpn = if run.args.contains(&"--h1") {
            "http/1.1"
        } else {
            "h2"
        };
        let report = parse_h2load(&out)
            .with_context(|| format!("h2load's output of run {}:\n{out}", run.name))?;
        if report.ok != u64::from(run.requests) || report.bad != 0 || report.alpn != alpn {
            bail!(
                "run {} through {} did not succeed in full over {alpn}:\n{out}",
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

/// `llvm-profdata` of rustc's own LLVM major version (its profile format must match), from
/// Debian's `llvm-MAJOR`; `rustc` is what `rustc -vV` printed.
fn llvm_profdata(rustc: &str) -> Result<PathBuf> {
    let llvm = field(rustc, "LLVM version: ").context("`rustc -vV` names no LLVM version")?;
    let major = llvm
        .split('.')
        .next()
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| format!("rustc's LLVM version {llvm:?} has no major number"))?;
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
