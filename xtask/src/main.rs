//! Project tasks: `cargo xtask setup | build | run | test | ci | demo | soak | bench | backend-setup`.
//! Every task that builds or tests first runs `setup`, so each is one command on a fresh machine.
mod backend_setup;
mod bench_https;
mod cmd;
mod demo;
mod fuzz;
mod pgo;
mod scene;
mod setup;
mod signals;
mod soak;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use cmd::Cmd;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "edgelb's build, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; says when there is nothing to do).
    Setup,
    /// Build edgelb (release) with its XDP program.
    Build {
        /// Profile-guided: an instrumented build serves a training mix of HTTPS traffic
        /// (nginx behind it, h2load in front), and a second build is optimised by what it
        /// counted; the binary is `target/pgo/edgelb`. A few minutes more; what it gains is
        /// in the README (HTTPS throughput).
        #[arg(long)]
        pgo: bool,
    },
    /// Build and run edgelb with the given flags, e.g. `cargo xtask run -- --listen ...`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test (the privileged ones need root and are skipped, visibly, without it).
    Test,
    /// What CI runs: setup, formatting, clippy for host and eBPF code, every test, each fuzz
    /// target briefly, and the profile-guided build (trained, then checked to serve).
    Ci,
    /// Namespaced end-to-end demo (root): balancing, SNI, rules, XDP drops, failover, shutdown.
    Demo,
    /// Soak (root, not in CI): edgelb in namespaces under mixed HTTPS load for N minutes while
    /// backends are killed and restarted, reloads and XDP ACL changes happen; prints a report.
    Soak {
        /// How long the load runs.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Run each cargo-fuzz target (or those named) for a bounded time from its seed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Print what a backend of a tcp/udp listener needs (VIP on lo, sysctls, decapsulation).
    BackendSetup {
        /// The listeners' VIPs, repeatable.
        #[arg(long = "vip", value_name = "ADDR", default_values_t = ["203.0.113.10".to_string(), "2001:db8::10".to_string()])]
        vips: Vec<String>,
        /// The backend's interface towards the edgelb nodes.
        #[arg(long, value_name = "IFACE", default_value = "eth0")]
        iface: String,
        /// Where the edgelb nodes' tunnelled packets come from (their outer source prefixes;
        /// not the nodes' own addresses), repeatable. Tunnelled packets for a VIP from
        /// anywhere else are dropped.
        #[arg(long = "from", value_name = "CIDR", default_values_t = backend_setup::balancer_sources())]
        from: Vec<String>,
    },
    /// Benchmarks, printed as tables.
    Bench {
        #[arg(value_enum)]
        what: Bench,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Bench {
    /// Per-packet cost of the XDP program (BPF_PROG_TEST_RUN with repeat), then packets per
    /// CPU-second of the receiver against nftables and the kernel stack, with kernel-generated
    /// live frames (`--repeat N`, `--live-secs S`, `--l4`: the live L4 rows only; installs nftables).
    Xdp,
    /// edgelb vs nginx vs haproxy terminating TLS on loopback under h2load (`--duration SECS`).
    Https,
    /// A spoofed SYN flood (kernel-generated live frames) against nginx with the kernel's SYN
    /// cookies and edgelb with `--syn-protect on`, while a client times TLS handshakes
    /// (`--duration SECS`, of flood per contender, default 5; installs nginx).
    Flood,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // `cargo xtask run -- --cert cert.pem`: paths are the reader's, from where cargo ran.
    let invoked_from = std::env::current_dir()?;
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::BackendSetup { vips, iface, from } => {
            print!("{}", backend_setup::script(&vips, &iface, &from));
            Ok(())
        }
        Task::Setup => setup::run(),
        Task::Build { pgo } => {
            setup::run()?;
            if pgo { pgo::build().map(drop) } else { build() }
        }
        Task::Run { args } => {
            setup::run()?;
            build()?;
            Cmd::new(root.join("target/release/edgelb"))
                .args(args)
                .current_dir(invoked_from)
                .exec()
        }
        Task::Test => {
            setup::run()?;
            test(false)
        }
        Task::Ci => {
            setup::run()?;
            Cmd::new("cargo").args(["fmt", "--all", "--check"]).run()?;
            clippy()?;
            let fuzz_build = fuzz::build_in_background(fuzz::Build::Dev)?;
            // In CI the privileged tests must run: they fail rather than skip when not root.
            test(true)?;
            fuzz_build.wait()?;
            // Briefly: enough to replay the seeds and catch what a change broke outright.
            fuzz::run(CI_FUZZ_SECONDS, &[], fuzz::Build::Dev)?;
            // The build the benchmark measures and operators are pointed to: its training
            // must still serve every request, and its result too.
            pgo::build().map(drop)
        }
        Task::Fuzz { seconds, targets } => {
            setup::run()?;
            fuzz::run(seconds, &targets, fuzz::Build::Release)
        }
        Task::Demo => {
            setup::run()?;
            build()?;
            demo::run()
        }
        Task::Soak { minutes } => {
            setup::run()?;
            build()?;
            soak::run(minutes)
        }
        Task::Bench {
            what: Bench::Xdp,
            args,
        } => {
            setup::run()?;
            bench_xdp_prepare()?;
            Cmd::new("cargo")
                .args([
                    "run",
                    "--release",
                    "-p",
                    "edgelb-tests",
                    "--bin",
                    "xdp-bench",
                    "--",
                ])
                .args(args)
                .run()
        }
        Task::Bench {
            what: Bench::Https,
            args,
        } => bench_https::run(&args),
        Task::Bench {
            what: Bench::Flood,
            args,
        } => {
            setup::run()?;
            setup::ensure_debs(&["nginx"])?;
            bench_https::keep_system_services_off();
            build_test_bins(&["flood-bench", "edgelb-under-test"])?;
            Cmd::new(target_dir().join("release/flood-bench"))
                .args(args)
                .run()
        }
    }
}

/// `bench xdp` compares edgelb with nftables: the `nft` tool must be there. Debian's package
/// ships `nftables.service` disabled; were it enabled, it would replace the host's whole
/// ruleset at boot with /etc/nftables.conf, so it is disabled (never stopped: stopping it
/// flushes the ruleset). The bench's own table lives in a namespace of its own.
fn bench_xdp_prepare() -> Result<()> {
    setup::ensure_debs(&["nftables"])?;
    let enabled = Cmd::new("systemctl")
        .args(["is-enabled", "nftables"])
        .output()
        .is_some_and(|s| s.trim() == "enabled");
    if enabled {
        Cmd::new("systemctl")
            .args(["disable", "--quiet", "nftables"])
            .run()?;
    }
    Ok(())
}

/// Seconds each fuzz target runs in `cargo xtask ci`.
const CI_FUZZ_SECONDS: u32 = 10;

/// edgelb, release.
fn build() -> Result<()> {
    release_build().run()
}

/// `cargo build --release` of edgelb's crate, for callers to add to.
pub(crate) fn release_build() -> Cmd {
    Cmd::new("cargo").args(["build", "--release", "-p", "lb-userspace"])
}

/// Release binaries of the tests crate (backends, load generators, clients), by name.
pub(crate) fn build_test_bins(bins: &[&str]) -> Result<()> {
    let mut cargo = Cmd::new("cargo").args(["build", "--release", "-p", "edgelb-tests"]);
    for bin in bins {
        cargo = cargo.args(["--bin", bin]);
    }
    cargo.run()
}

/// Where cargo puts what it builds (the working directory is the workspace root, see main).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("target"),
    }
}

fn test(ci: bool) -> Result<()> {
    let mut cargo = Cmd::new("cargo").args(["test", "--workspace", "--exclude", "lb-ebpf"]);
    if ci {
        cargo = cargo.env("CI", "1");
    }
    cargo.run()
}

fn clippy() -> Result<()> {
    Cmd::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .run()?;
    // The eBPF crate only builds for the BPF target, with nightly and a rebuilt core.
    Cmd::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "-p",
            "lb-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", "target/ebpf-clippy")
        .run()
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
