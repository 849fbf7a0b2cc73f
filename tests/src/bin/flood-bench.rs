//! `cargo xtask bench flood [--duration SECS]`: see `edgelb_tests::flood_bench`.
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut secs = 5u64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--duration" => {
                let v = args.next().unwrap_or_default();
                secs = match v.parse() {
                    Ok(n) if (1..=60).contains(&n) => n,
                    _ => {
                        eprintln!("flood-bench: --duration {v:?}: seconds of flood, 1-60");
                        std::process::exit(2);
                    }
                };
            }
            other => {
                eprintln!("flood-bench: unknown argument {other:?} (takes --duration SECS)");
                std::process::exit(2);
            }
        }
    }
    edgelb_tests::flood_bench::run(Duration::from_secs(secs))
}
