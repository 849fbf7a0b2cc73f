//! `cargo xtask fuzz`: each cargo-fuzz target for a bounded time, from its committed seeds
//! (`fuzz/seeds/TARGET`, read only) plus what earlier runs found (`fuzz/corpus/TARGET`, not
//! committed). A crash fails the task and leaves the input under `fuzz/artifacts/TARGET`.
use anyhow::{Context, Result};

use std::path::Path;

use crate::cmd::{Background, Cmd};

pub const TARGETS: &[&str] = &["flags", "config_file", "lb_cookie", "rules", "classifier"];

pub fn run(seconds: u32, only: &[String]) -> Result<()> {
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        TARGETS
            .iter()
            .copied()
            .filter(|t| only.iter().any(|o| o == t))
            .collect()
    };
    if targets.is_empty() {
        anyhow::bail!(
            "no such fuzz target; the targets are {}",
            TARGETS.join(", ")
        );
    }
    for target in targets {
        let corpus = format!("corpus/{target}");
        let seeds = format!("seeds/{target}");
        std::fs::create_dir_all(format!("fuzz/{corpus}"))?;
        eprintln!("xtask fuzz: {target} for {seconds} s");
        cargo_fuzz("run")
            .args([target, &corpus, &seeds, "--"])
            .args([format!("-max_total_time={seconds}")])
            // A single input taking a second is a hang worth reporting.
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
            .run()
            .with_context(|| {
                format!("fuzz target {target} failed (see fuzz/artifacts/{target})")
            })?;
    }
    Ok(())
}

/// Builds every target as `run` builds them (so that `run` finds them up to date), in the
/// background at idle priority: CI overlaps this build, a third of its time on a fresh
/// machine, with the tests, which leave a core idle much of the time.
pub fn build_in_background() -> Result<Background> {
    std::fs::create_dir_all("target")?;
    cargo_fuzz("build").spawn_idle(Path::new("target/fuzz-build.log"))
}

/// `cargo +nightly fuzz SUBCOMMAND -O` in `fuzz/`: one set of build settings for both.
fn cargo_fuzz(subcommand: &str) -> Cmd {
    Cmd::new("cargo")
        .args(["+nightly", "fuzz", subcommand, "-O"])
        .current_dir("fuzz")
        // The parsers need no XDP object; building it under sanitizers is wasted time.
        .env("AYA_BUILD_SKIP", "1")
}
