//! Builds the XDP program in `lb-ebpf` for the BPF target and leaves the object in OUT_DIR,
//! where `dataplane::object` embeds it. `AYA_BUILD_SKIP=1` skips it (clippy, docs) and the
//! binary then carries no program: `--xdp-mode` other than `off` is refused at start.
//!
//! Also sets `EDGELB_COMMIT`, the commit the binary is built from (`--version`, `/status`,
//! `edgelb_build_info`).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    commit();
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf is not in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("lb-ebpf manifest has no parent directory"))?;
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rustc-cfg=edgelb_no_ebpf");
    }
    println!("cargo:rustc-check-cfg=cfg(edgelb_no_ebpf)");
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// `EDGELB_COMMIT`: the environment's when set (a packager building from a tarball knows the
/// commit), else `git rev-parse --short=12 HEAD`, else `unknown` (no git, or no .git).
fn commit() {
    println!("cargo:rerun-if-env-changed=EDGELB_COMMIT");
    let commit = std::env::var("EDGELB_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
            // Rerun when HEAD moves (a commit, a checkout), not on every build: HEAD itself,
            // the branch it names, and packed-refs, where a branch lives after `git gc`.
            let head = git(&here, &["rev-parse", "--git-path", "HEAD"]).map(|p| here.join(p));
            let branch = git(&here, &["symbolic-ref", "-q", "HEAD"]);
            let branch = branch
                .and_then(|b| git(&here, &["rev-parse", "--git-path", &b]))
                .map(|p| here.join(p));
            let packed =
                git(&here, &["rev-parse", "--git-path", "packed-refs"]).map(|p| here.join(p));
            // A path that does not exist would make cargo rerun the script on every build.
            for path in [head, branch, packed].into_iter().flatten() {
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            git(&here, &["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=EDGELB_COMMIT={}", commit.trim());
}

/// The trimmed output of `git ARGS` run in `dir`, None when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
