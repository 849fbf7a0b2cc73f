//! `cargo xtask setup`: what a fresh machine of this kind lacks for building and testing
//! edgelb, installed only where missing (see ../shared/docs/toolchain.md for why each piece).
use anyhow::{Result, bail};

use crate::cmd::{Cmd, cargo_bin};

/// Debian packages: LLVM 22 for bpf-linker (it must match nightly rustc's LLVM major), and the
/// system tools the tests and benchmarks drive.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "curl",
    "openssl",
    "ca-certificates",
    "procps",
    "nftables",
    "ethtool",
    "bird2",
    // etcd-client's build compiles etcd's protocol; the etcd tests run a real etcd.
    "protobuf-compiler",
    "etcd-server",
    "etcd-client",
    // The HTTP/3 tests' independent client is Python's aioquic, in a virtualenv.
    "python3",
    "python3-venv",
    // The ACME tests' CA.
    "pebble",
    // The reference proxy: the smuggling tests compare with it, the PROXY protocol tests run
    // it in front of and behind edgelb, `bench https` measures it.
    "haproxy",
    // The status page's browser test: headless Chromium driven by Selenium (system python3).
    "chromium",
    "chromium-driver",
    "python3-selenium",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.1";
/// aioquic from PyPI (Debian does not package it), pinned; see tests/src/h3.rs.
const AIOQUIC: &str = "aioquic==1.7.2";
/// Under the workspace's target directory, where tests/src/h3.rs looks for it.
fn aioquic_venv() -> std::path::PathBuf {
    crate::workspace_root().join("target/aioquic-venv")
}

pub fn run() -> Result<()> {
    let mut did = Vec::new();
    if !rust_src_installed() {
        Cmd::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .run()?;
        did.push("rust-src for nightly");
    }
    if ensure_debs(PACKAGES)? {
        did.push("Debian packages");
    }
    if !bpf_linker_installed() {
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        Cmd::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("PATH", path)
            .run()?;
        did.push("bpf-linker");
    }
    if !cargo_fuzz_installed() {
        Cmd::new("cargo")
            .args([
                "install",
                "--locked",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .run()?;
        did.push("cargo-fuzz");
    }
    if !aioquic_installed() {
        let venv = aioquic_venv();
        Cmd::new("python3")
            .args(["-m".as_ref(), "venv".as_ref(), venv.as_os_str()])
            .run()?;
        Cmd::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", AIOQUIC])
            .run()?;
        did.push("aioquic");
    }
    if did.is_empty() {
        eprintln!("xtask setup: nothing to do, everything is installed");
    } else {
        eprintln!("xtask setup: installed {}", did.join(", "));
    }
    Ok(())
}

/// Installs those of `packages` that are missing (idempotent: nothing happens when all are
/// in); says whether it installed anything.
pub fn ensure_debs(packages: &[&str]) -> Result<bool> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    install_debs(&missing)?;
    Ok(true)
}

fn rust_src_installed() -> bool {
    Cmd::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_some_and(|out| out.lines().any(|l| l.starts_with("rust-src")))
}

fn deb_installed(package: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn bpf_linker_installed() -> bool {
    Cmd::new(cargo_bin().join("bpf-linker"))
        .args(["--version"])
        .output()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn aioquic_installed() -> bool {
    Cmd::new(aioquic_venv().join("bin/python3"))
        .args(["-c", "import aioquic; print(aioquic.__version__)"])
        .output()
        .is_some_and(|v| AIOQUIC.ends_with(v.trim()))
}

fn cargo_fuzz_installed() -> bool {
    Cmd::new(cargo_bin().join("cargo-fuzz"))
        .args(["--version"])
        .output()
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION))
}

fn install_debs(missing: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {} and not root: run `sudo cargo xtask setup` or install them",
            missing.join(" ")
        );
    }
    Cmd::new("apt-get").args(["update"]).run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
}

fn is_root() -> bool {
    Cmd::new("id")
        .args(["-u"])
        .output()
        .is_some_and(|u| u.trim() == "0")
}
