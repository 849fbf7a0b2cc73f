//! Signals for the long-running tasks (bench, demo), without a libc dependency: Ctrl-C and
//! SIGTERM set a flag the tasks check between steps, so their drop guards clean up; children
//! die with xtask even when it is SIGKILLed.
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
const PR_SET_PDEATHSIG: i32 = 1;

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signum: i32) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

pub fn install_handlers() {
    for sig in [SIGINT, SIGTERM] {
        // SAFETY: `on_stop_signal` is an `extern "C" fn(i32)` that only stores to an atomic.
        unsafe {
            signal(sig, on_stop_signal as extern "C" fn(i32) as usize);
        }
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

pub fn send_signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers; a pid that is gone only yields ESRCH.
        unsafe {
            kill(pid, sig);
        }
    }
}

/// If xtask dies without running its drop guards (SIGKILL), the kernel kills the child too.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of this process.
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong);
            Ok(())
        });
    }
}
