//! `edgelb reload` and `edgelb stop`: signal the daemon named by the pid file, and for a
//! reload wait for its outcome, so that `systemctl reload` (ExecReload=) fails when it did.
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::pid_file::{is_edgelb, last_reload, read_pid, running};

/// How long a reload may take before `edgelb reload` gives up waiting (2,000 certificates
/// take about a second; a BGP withdraw delay may hold a reload for its seconds).
const RELOAD_WAIT: Duration = Duration::from_secs(60);

pub fn reload(pid_file: &Path) -> ExitCode {
    // Any reload whose read began from now on reads the files as they are now: the one this
    // SIGHUP asks for, or a reload already queued (a reload in progress began before).
    let asked_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let pid = match signal(pid_file, Signal::SIGHUP) {
        Ok(pid) => pid,
        Err(code) => return code,
    };
    let deadline = Instant::now() + RELOAD_WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        match last_reload(pid_file) {
            Some((started, Ok(()))) if started >= asked_ms => {
                println!("edgelb: reloaded (pid {pid})");
                return ExitCode::SUCCESS;
            }
            Some((started, Err(reason))) if started >= asked_ms => {
                eprintln!(
                    "edgelb: error: reload refused, the configuration in use stays: {reason}"
                );
                return ExitCode::FAILURE;
            }
            _ => {}
        }
    }
    eprintln!(
        "edgelb: error: sent SIGHUP to pid {pid} but no reload result within {} s (see its log)",
        RELOAD_WAIT.as_secs()
    );
    ExitCode::FAILURE
}

/// SIGTERM, then waits for the daemon to drain and exit.
pub fn stop(pid_file: &Path) -> ExitCode {
    let pid = match signal(pid_file, Signal::SIGTERM) {
        Ok(pid) => pid,
        Err(code) => return code,
    };
    // Drain timeout (300 s at most) and the BGP withdraw delay, with room.
    let deadline = Instant::now() + Duration::from_secs(610);
    while Instant::now() < deadline {
        if !running(pid) {
            println!("edgelb: stopped (pid {pid})");
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("edgelb: error: pid {pid} still running");
    ExitCode::FAILURE
}

fn signal(pid_file: &Path, signal: Signal) -> Result<i32, ExitCode> {
    let pid = read_pid(pid_file).map_err(|e| {
        eprintln!("edgelb: error: --pid-file: {e}");
        ExitCode::FAILURE
    })?;
    let pid = i32::try_from(pid).map_err(|_| ExitCode::FAILURE)?;
    // A pid file left behind (a daemon that could not remove it after --user) may name a
    // process that took the number since: only an edgelb is signalled.
    if !is_edgelb(pid) {
        eprintln!(
            "edgelb: error: {} names pid {pid}, which is not a running edgelb (a stale pid file?)",
            pid_file.display()
        );
        return Err(ExitCode::FAILURE);
    }
    kill(Pid::from_raw(pid), signal).map_err(|e| {
        eprintln!(
            "edgelb: error: cannot signal pid {pid} from {}: {e} (not root?)",
            pid_file.display()
        );
        ExitCode::FAILURE
    })?;
    Ok(pid)
}
