//! `cargo xtask fuzz`: each cargo-fuzz target for a bounded time, from its committed seeds
//! (`fuzz/seeds/TARGET`, read only) plus what earlier runs found (`fuzz/corpus/TARGET`, not
//! committed). A crash fails the task and leaves the input under `fuzz/artifacts/TARGET`.
use anyhow::{Context, Result};

use std::path::Path;

use crate::cmd::{Background, Cmd};

pub const TARGETS: &[&str] = &["flags", "config_file", "lb_cookie", "rules", "classifier"];

/// How the targets are built: `Release` for fuzzing in earnest, `Dev` for CI's short replay
/// of the seeds (8 min 4 s here with other work running, against 11 min 54 s optimised in a
/// CI run; ten seconds a target need no speed).
#[derive(Clone, Copy)]
pub enum Build {
    Release,
    Dev,
}

impl Build {
    fn flag(self) -> &'static str {
        match self {
            Build::Release => "-O",
            Build::Dev => "--dev",
        }
    }
}

pub fn run(seconds: u32, only: &[String], build: Build) -> Result<()> {
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
        cargo_fuzz("run", build)
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
pub fn build_in_background(build: Build) -> Result<Background> {
    std::fs::create_dir_all("target")?;
    cargo_fuzz("build", build).spawn_idle(Path::new("target/fuzz-build.log"))
}

/// `cargo +nightly fuzz SUBCOMMAND` in `fuzz/`: one set of build settings for both.
fn cargo_fuzz(subcommand: &str, build: Build) -> Cmd {
    Cmd::new("cargo")
        .args(["+nightly", "fuzz", subcommand, build.flag()])
        .current_dir("fuzz")
        // The parsers need no XDP object; building it under sanitizers is wasted time.
        .env("AYA_BUILD_SKIP", "1")
}
