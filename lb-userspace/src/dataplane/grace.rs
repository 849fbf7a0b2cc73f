//! Waiting until no run of the program can still be reading what the maps held before.
//!
//! A reload points the program at new map entries, then removes the old ones. A run that read
//! a pointer to an old entry just before the switch may still be using it: the old entries go
//! (or are reused) only after every such run has ended. XDP runs inside an RCU read-side
//! section, and the kernel ends a grace period (`synchronize_rcu`) on every update of a
//! map-in-map from userspace before it returns (`maybe_wait_bpf_programs`): an update of a
//! one-entry array of maps, which no program reads, is that wait. (Non-preallocated hash
//! elements are no help: since Linux 6.1 a freed one goes to a per-CPU cache and may be handed
//! to the very next insertion.)
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::DataplaneError;

/// `enum bpf_cmd` and `enum bpf_map_type` (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The `BPF_MAP_CREATE` member of `union bpf_attr`, up to `inner_map_fd`.
#[repr(C, align(8))]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

/// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A one-entry array of maps and the map its entry holds; updating the entry is the wait.
pub struct Grace {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl Grace {
    /// Creates the two maps (needs what loading the program needs: root or CAP_BPF).
    pub fn new() -> Result<Self, DataplaneError> {
        let inner = create(&CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..CreateAttr::default()
        })?;
        let outer = create(&CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: fd_u32(&inner)?,
            ..CreateAttr::default()
        })?;
        Ok(Grace { outer, inner })
    }

    /// Returns once every run of any BPF program that began before the call has ended.
    pub fn wait(&self) -> Result<(), DataplaneError> {
        let key = 0u32;
        let value = fd_u32(&self.inner)?;
        let attr = ElemAttr {
            map_fd: fd_u32(&self.outer)?,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..ElemAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_UPDATE_ELEM that lives across
        // the call, and its pointers point at a live u32 each, the map's key and value sizes.
        let rc = unsafe {
            bpf(
                BPF_MAP_UPDATE_ELEM,
                &attr as *const ElemAttr as *const _,
                size_of::<ElemAttr>(),
            )
        };
        if rc < 0 {
            return Err(failed("waiting for running programs"));
        }
        Ok(())
    }
}

fn create(attr: &CreateAttr) -> Result<OwnedFd, DataplaneError> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_CREATE that lives across the
    // call; the kernel reads it and returns a new descriptor or an error.
    let fd = unsafe {
        bpf(
            BPF_MAP_CREATE,
            attr as *const CreateAttr as *const _,
            size_of::<CreateAttr>(),
        )
    };
    if fd < 0 {
        return Err(failed("creating the grace-period maps"));
    }
    let fd = i32::try_from(fd).map_err(|_| failed("creating the grace-period maps"))?;
    // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// # Safety
/// `attr` must point at a `bpf_attr` prefix of `size` bytes valid for `cmd`.
unsafe fn bpf(cmd: libc::c_long, attr: *const libc::c_void, size: usize) -> libc::c_long {
    // SAFETY: as the caller promises.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) }
}

fn fd_u32(fd: &OwnedFd) -> Result<u32, DataplaneError> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| failed("a descriptor"))
}

fn failed(what: &'static str) -> DataplaneError {
    DataplaneError::Map {
        map: "grace period",
        reason: format!("{what}: {}", std::io::Error::last_os_error()),
    }
}
