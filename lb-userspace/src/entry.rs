use std::io::Write;
use std::process::ExitCode;

use crate::cli::{Command, LogFormat};
use crate::config::Config;
use tracing_subscriber::EnvFilter;

/// The whole command line of `edgelb`; also run by the integration tests' copy of the binary.
pub fn main() -> ExitCode {
    let cli = match crate::usage::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let (text, to_stderr, code) = crate::usage::report(&e);
            if to_stderr {
                eprintln!("{text}");
            } else {
                print!("{text}");
            }
            return ExitCode::from(code);
        }
    };
    let mut cli = cli;
    match cli.command {
        Some(Command::Check(mut args)) => {
            if let Err(code) = read_etcd(&mut args) {
                return code;
            }
            check(&args)
        }
        Some(Command::Status { admin, config }) => {
            match crate::status::admin_address(admin, config.as_deref()) {
                Ok(admin) => crate::status::print(&admin),
                Err(e) => {
                    eprintln!("edgelb: error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Reload { pid_file }) => crate::control::client::reload(&pid_file),
        Some(Command::Stop { pid_file }) => crate::control::client::stop(&pid_file),
        Some(Command::Decap { iface, vips, from }) => crate::decap::main(&iface, &vips, &from),
        None if cli.run.test_config => {
            if let Err(code) = read_etcd(&mut cli.run) {
                return code;
            }
            check(&cli.run)
        }
        None => {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
            // Through a thread of its own: a stderr that stalls costs log lines, not requests.
            let logs = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(crate::line_writer::DaemonLog);
            match cli.run.log_format {
                LogFormat::Json => logs.json().init(),
                LogFormat::Text => logs
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .init(),
            }
            crate::line_writer::flush_on_panic();
            no_huge_pages();
            let code = serve(cli.run);
            // Queued log lines first, then nothing else is written.
            crate::line_writer::flush_stderr();
            code
        }
    }
}

/// Runs the daemon until it stops; its exit code.
fn serve(mut args: crate::cli::RunArgs) -> ExitCode {
    if let Err(code) = read_etcd(&mut args) {
        return code;
    }
    let config = match Config::from_flags(&args.flags()) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    // The main thread only waits for signals and owns the data plane; workers serve clients.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            crate::line_writer::say(&format!("edgelb: error: starting the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::daemon::run(&args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // After the log lines that led to it.
            crate::line_writer::say(&format!("edgelb: error: {e}"));
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn check(args: &crate::cli::RunArgs) -> ExitCode {
    match Config::from_flags(&args.flags()) {
        Ok(config) => {
            let forecast = config.native_xdp_forecast(crate::xdp_features::native);
            for w in config
                .warnings(crate::config::fd_limit())
                .into_iter()
                .chain(forecast)
            {
                eprintln!("edgelb: warning: {w}");
            }
            // A closed pipe (`edgelb check | head`) is not an error worth a panic.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{config}configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(&e),
    }
}

/// With `--config-etcd`: the configuration as etcd holds it now (exit 1 if etcd cannot be
/// read: there is no configuration to start with).
fn read_etcd(args: &mut crate::cli::RunArgs) -> Result<(), ExitCode> {
    let Some(prefix) = args.config_prefix.clone() else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("edgelb: error: starting the runtime: {e}");
            ExitCode::FAILURE
        })?;
    match runtime.block_on(crate::etcd::fetch(&args.config_etcd, &prefix)) {
        Ok(snapshot) => {
            args.etcd_snapshot = Some(snapshot);
            Ok(())
        }
        Err(e) => {
            crate::line_writer::say(&format!(
                "edgelb: error: --config-etcd: cannot read {prefix}: {e}"
            ));
            Err(ExitCode::FAILURE)
        }
    }
}

fn usage_error(e: &crate::config::ConfigError) -> ExitCode {
    crate::line_writer::say(&format!("edgelb: error: {e}"));
    ExitCode::from(2)
}

/// Transparent huge pages off for this process. mimalloc asks for them on its arenas, and an
/// edge node's memory is mostly small blocks of idle connections spread over those arenas:
/// each touched 2 MiB region then counts whole. Measured with 3,000 idle TLS connections:
/// 33 KiB of RSS per connection with huge pages, 25 KiB without; throughput unchanged.
fn no_huge_pages() {
    // On failure (old kernel) nothing changes.
    if nix::sys::prctl::set_thp_disable(true).is_err() {
        tracing::debug!("PR_SET_THP_DISABLE refused; transparent huge pages stay as configured");
    }
}
