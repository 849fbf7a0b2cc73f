//! BPF_PROG_TEST_RUN from a thread other than the [`Dataplane`](super::Dataplane)'s owner, so
//! that tests can send frames through the program while the owner rewrites its maps.
//!
//! aya 0.14 runs tests only through its own program handle, which the `Dataplane` owns, and
//! cannot make a second handle for an XDP program (the attach type it needs is not exported).
//! So this holds a clone of the program's file descriptor and issues the command itself.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::programs::ProgramFd;

use super::DataplaneError;

/// `BPF_PROG_TEST_RUN` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: the kernel sends every repetition through the real receive
/// path of the context's ingress device (XDP_PASS into the stack, XDP_TX out of the device).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// `struct xdp_md`, the context of an XDP test run: only `data_end` (the frame's length) and
/// `ingress_ifindex` are set.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

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
            prog_fd: raw_fd(self.prog.as_fd())?,
            data_in: frame.as_ptr() as u64,
            data_size_in: len_u32(frame.len())?,
            repeat,
            ..TestAttr::default()
        };
        prog_test_run(&mut attr)?;
        Ok((attr.retval, u64::from(attr.duration)))
    }

    /// The program's file descriptor, for system calls of the caller's own.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// As [`run_live_frames`] with the data plane's program.
    pub fn run_live_frames(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
        batch: u32,
    ) -> Result<u64, DataplaneError> {
        run_live_frames(self.prog.as_fd(), frame, ingress_ifindex, repeat, batch)
    }
}

/// Runs the XDP program `prog` on `repeat` copies of `frame` as if each had been received by
/// interface `ingress_ifindex` (of the caller's network namespace), with
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: what the program returns is carried out (`XDP_PASS` hands
/// the frame to the stack, `XDP_TX` transmits it on that interface, `XDP_DROP` recycles it),
/// `batch` frames at a time (1..=256; 0 for the kernel's 64), all on the calling CPU.
/// Returns the kernel's mean time per frame in nanoseconds, which covers the program and what
/// its verdict set off in that context (stack processing, transmission, the softirqs run when
/// each batch ends).
///
/// The kernel copies `frame` into each page of its pool once: a program that changes a
/// frame's bytes finds them changed when the page comes round again.
pub fn run_live_frames(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
    batch: u32,
) -> Result<u64, DataplaneError> {
    let ctx = XdpMd {
        data_end: len_u32(frame.len())?,
        ingress_ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestAttr {
        prog_fd: raw_fd(prog)?,
        data_in: frame.as_ptr() as u64,
        data_size_in: len_u32(frame.len())?,
        repeat,
        ctx_in: &ctx as *const XdpMd as u64,
        ctx_size_in: len_u32(std::mem::size_of::<XdpMd>())?,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..TestAttr::default()
    };
    prog_test_run(&mut attr)?;
    Ok(u64::from(attr.duration))
}

fn raw_fd(fd: BorrowedFd<'_>) -> Result<u32, DataplaneError> {
    u32::try_from(fd.as_raw_fd()).map_err(|e| DataplaneError::TestRun(e.to_string()))
}

fn len_u32(len: usize) -> Result<u32, DataplaneError> {
    u32::try_from(len).map_err(|e| DataplaneError::TestRun(e.to_string()))
}

fn prog_test_run(attr: &mut TestAttr) -> Result<(), DataplaneError> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_PROG_TEST_RUN that lives across the
    // call; `data_in` (and `ctx_in`, if set) point at that many readable bytes that outlive
    // it; no output buffer is given, so the kernel writes only into `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(DataplaneError::TestRun(format!(
            "bpf_prog_test_run: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
