//! Signals for the long-running tasks (bench, demo): Ctrl-C and SIGTERM set a flag the tasks
//! check between steps, so their drop guards clean up; children die with xtask even when it
//! is SIGKILLed.
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use nix::sys::signal::{self, SigHandler};
use nix::unistd::Pid;

pub use nix::sys::signal::Signal::{self, SIGHUP, SIGINT, SIGKILL, SIGTERM};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signum: i32) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

pub fn install_handlers() {
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: `on_stop_signal` only stores to an atomic, which is async-signal-safe.
        // signal(2) fails only for an invalid signal number, and these two are valid.
        let _ = unsafe { signal::signal(sig, SigHandler::Handler(on_stop_signal)) };
    }
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

pub fn check_stop() -> Result<()> {
    if stopping() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sends `sig` to `pid`; a process that is already gone (ESRCH) is no error.
pub fn send_signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = signal::kill(Pid::from_raw(pid), sig);
    }
}

/// If xtask dies without running its drop guards (SIGKILL), the kernel kills the child too.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of this process.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::sys::prctl::set_pdeathsig(SIGKILL);
            Ok(())
        });
    }
}
