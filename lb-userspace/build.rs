//! Builds the XDP program in `lb-ebpf` for the BPF target and leaves the object in OUT_DIR,
//! where `dataplane::object` embeds it. `AYA_BUILD_SKIP=1` skips it (clippy, docs) and the
//! binary then carries no program: `--xdp-mode` other than `off` is refused at start.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
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
