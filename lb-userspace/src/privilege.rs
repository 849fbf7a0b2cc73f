//! `--user`: once sockets are bound and XDP is attached, the daemon runs as an unprivileged
//! user. The main thread (the one owner of the BPF maps, and the thread that binds a reload's
//! new listeners) keeps the few capabilities that work still needs; the worker threads, which
//! talk to clients and backends, keep none.
use std::ffi::CString;

use caps::{CapSet, Capability, CapsHashSet};

/// The user edgelb switches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl User {
    /// Looks `name` up in the user database.
    pub fn lookup(name: &str) -> Result<User, String> {
        let c_name = CString::new(name).map_err(|_| "not a user name".to_string())?;
        // SAFETY: passwd is plain data (integers and pointers); all-zero is a valid value.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: every pointer refers to memory owned here and sized as passed; getpwnam_r
        // writes only into `pw` and `buf` and sets `result` to `&pw` or null.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err("no such user on this host".to_string());
        }
        Ok(User {
            name: name.to_string(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// What the main thread keeps after the switch: binding ports below 1024 for listeners a
/// reload adds. Rewriting BPF maps through the descriptors already open and detaching XDP
/// (closing its link) need nothing on kernels from 6.5 on (measured on 6.18 by the
/// `--user` namespace test); older kernels check CAP_BPF on every bpf() call when
/// unprivileged BPF is disabled, and detach through netlink (CAP_NET_ADMIN), so they keep
/// those two as well.
pub fn kept(xdp: bool) -> CapsHashSet {
    let mut set = CapsHashSet::new();
    set.insert(Capability::CAP_NET_BIND_SERVICE);
    if xdp && kernel_before(6, 5) {
        set.insert(Capability::CAP_BPF);
        set.insert(Capability::CAP_NET_ADMIN);
    }
    set
}

/// Whether the running kernel is older than `major.minor` (unknown counts as older: keeping
/// a capability too many beats a reload that cannot write its maps).
fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(ma), Some(mi)) => (ma, mi) < (major, minor),
        _ => true,
    }
}

/// Switches the whole process to `user` (supplementary groups dropped), keeping `keep` on the
/// calling thread only. glibc applies setuid to every thread; the kernel then clears the
/// capabilities of each thread that did not ask to keep them.
pub fn drop_to(user: &User, keep: &CapsHashSet) -> Result<(), String> {
    // SAFETY: plain system calls with integer arguments (and a null, zero-length group list).
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(format!(
                "prctl(PR_SET_KEEPCAPS): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setgid(user.gid) != 0 {
            return Err(format!(
                "setgid({}): {}",
                user.gid,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(user.uid) != 0 {
            return Err(format!(
                "setuid({}): {}",
                user.uid,
                std::io::Error::last_os_error()
            ));
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .and_then(|()| caps::set(None, CapSet::Permitted, keep))
        .and_then(|()| caps::set(None, CapSet::Effective, keep))
        .map_err(|e| format!("keeping {keep:?}: {e}"))?;
    // Nothing this process may start later can gain privileges back.
    // SAFETY: as above.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up() {
        assert_eq!(User::lookup("root").map(|u| u.uid), Ok(0));
        assert!(User::lookup("no-such-user-here").is_err());
        assert!(User::lookup("bad\0name").is_err());
    }
}
