//! BPF_PROG_TEST_RUN from a thread other than the [`Dataplane`](super::Dataplane)'s owner, so
//! that tests can send frames through the program while the owner rewrites its maps.
//!
//! aya 0.14 runs tests only through its own program handle, which the `Dataplane` owns, and
//! cannot make a second handle for an XDP program (the attach type it needs is not exported).
//! So this holds a clone of the program's file descriptor and issues the command itself.
use std::os::fd::{AsFd, AsRawFd};

use aya::programs::ProgramFd;

use super::DataplaneError;

/// `BPF_PROG_TEST_RUN` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`, up to `batch_size`; the kernel zero-fills the rest.
#[repr(C, align(8))]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs frames through the data plane's program ([`Dataplane::test_runner`]); it can move to
/// another thread and writes no map itself.
///
/// [`Dataplane::test_runner`]: super::Dataplane::test_runner
pub struct TestRunner {
    prog: ProgramFd,
}

impl TestRunner {
    pub(super) fn new(prog: ProgramFd) -> Self {
        TestRunner { prog }
    }

    /// As [`Dataplane::test_run`](super::Dataplane::test_run).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, DataplaneError> {
        Ok(self.test_run_repeat(frame, 1)?.0)
    }

    /// As [`Dataplane::test_run_repeat`](super::Dataplane::test_run_repeat).
    pub fn test_run_repeat(&self, frame: &[u8], repeat: u32) -> Result<(u32, u64), DataplaneError> {
        let mut attr = TestAttr {
            prog_fd: u32::try_from(self.prog.as_fd().as_raw_fd())
                .map_err(|e| DataplaneError::TestRun(e.to_string()))?,
            data_in: frame.as_ptr() as u64,
            data_size_in: u32::try_from(frame.len())
                .map_err(|e| DataplaneError::TestRun(e.to_string()))?,
            repeat,
            ..TestAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_PROG_TEST_RUN that lives across
        // the call; `data_in` points at `frame.len()` readable bytes; no output buffer is given,
        // so the kernel writes only into `attr`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestAttr,
                std::mem::size_of::<TestAttr>(),
            )
        };
        if rc < 0 {
            return Err(DataplaneError::TestRun(format!(
                "bpf_prog_test_run: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok((attr.retval, u64::from(attr.duration)))
    }
}
