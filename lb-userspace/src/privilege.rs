//! `--user`: once sockets are bound and XDP is attached, the daemon runs as an unprivileged
//! user. The main thread (the one owner of the BPF maps, and the thread that binds a reload's
//! new listeners) keeps the few capabilities that work still needs; the threads that talk to
//! other hosts (the workers, and the control thread: admin endpoint, health checks, ACME,
//! etcd) keep none.
use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::prctl;
use nix::unistd::{self, Gid, Uid};

/// Why `--user` cannot be looked up or switched to. OS errors keep their errno.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrivilegeError {
    #[error("not a user name")]
    BadName,
    #[error("no such user on this host")]
    NoSuchUser,
    #[error("cannot read the user database: {0}")]
    Database(nix::Error),
    /// A system call of the switch (`setuid(65534)`, ...) and its errno.
    #[error("{call}: {errno}")]
    Call { call: String, errno: nix::Error },
    #[error("keeping {keep}: {reason}")]
    Capabilities { keep: String, reason: String },
}

impl PrivilegeError {
    fn call(call: impl Into<String>) -> impl FnOnce(nix::Error) -> Self {
        let call = call.into();
        move |errno| PrivilegeError::Call { call, errno }
    }

    /// The OS error, if the failure was one.
    pub fn errno(&self) -> Option<nix::Error> {
        match self {
            PrivilegeError::Database(e) | PrivilegeError::Call { errno: e, .. } => Some(*e),
            _ => None,
        }
    }
}

/// The user edgelb switches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

impl User {
    /// Looks `name` up in the user database.
    pub fn lookup(name: &str) -> Result<User, PrivilegeError> {
        if name.contains('\0') {
            return Err(PrivilegeError::BadName);
        }
        match unistd::User::from_name(name) {
            Ok(Some(pw)) => Ok(User {
                name: name.to_string(),
                uid: pw.uid,
                gid: pw.gid,
            }),
            Ok(None) => Err(PrivilegeError::NoSuchUser),
            Err(e) => Err(PrivilegeError::Database(e)),
        }
    }
}

/// What the main thread keeps after the switch: binding ports below 1024 for listeners a
/// reload adds. Rewriting BPF maps through the descriptors already open and detaching XDP
/// (closing its link) need nothing on kernels from 6.5 on (measured on 6.18 by the
/// `--user` namespace test); older kernels check CAP_BPF on every bpf() call when
/// unprivileged BPF is disabled, and detach through netlink (CAP_NET_ADMIN), so they keep
/// those two as well. `--syn-protect` changes kernel TCP settings (/proc/sys/net) while
/// listeners answer SYNs in XDP, and puts them back at exit: that takes CAP_NET_ADMIN.
pub fn kept(xdp: bool, syn_protect: bool) -> CapsHashSet {
    let mut set = CapsHashSet::new();
    set.insert(Capability::CAP_NET_BIND_SERVICE);
    if xdp && kernel_before(6, 5) {
        set.insert(Capability::CAP_BPF);
        set.insert(Capability::CAP_NET_ADMIN);
    }
    if xdp && syn_protect {
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

/// Sets `no_new_privs` on the calling thread (and the threads it starts from now on):
/// nothing they exec can gain privileges.
pub fn no_new_privs() -> Result<(), PrivilegeError> {
    prctl::set_no_new_privs().map_err(PrivilegeError::call("prctl(PR_SET_NO_NEW_PRIVS)"))
}

/// Switches the whole process to `user` (supplementary groups dropped), keeping `keep` on the
/// calling thread only. glibc applies setuid to every thread; the kernel then clears the
/// capabilities of each thread that did not ask to keep them.
pub fn drop_to(user: &User, keep: &CapsHashSet) -> Result<(), PrivilegeError> {
    prctl::set_keepcaps(true).map_err(PrivilegeError::call("prctl(PR_SET_KEEPCAPS)"))?;
    unistd::setgroups(&[]).map_err(PrivilegeError::call("setgroups"))?;
    unistd::setgid(user.gid).map_err(PrivilegeError::call(format!("setgid({})", user.gid)))?;
    unistd::setuid(user.uid).map_err(PrivilegeError::call(format!("setuid({})", user.uid)))?;
    // The switch is done: the flag only mattered across setuid, and is cleared as before
    // (its failure would change nothing this process does next).
    let _ = prctl::set_keepcaps(false);
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .and_then(|()| caps::set(None, CapSet::Permitted, keep))
        .and_then(|()| caps::set(None, CapSet::Effective, keep))
        .map_err(|e| PrivilegeError::Capabilities {
            keep: format!("{keep:?}"),
            reason: e.to_string(),
        })?;
    // `no_new_privs` was set before any worker started (see the daemon's `run`).
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up() {
        assert_eq!(User::lookup("root").map(|u| u.uid), Ok(Uid::from_raw(0)));
        assert_eq!(
            User::lookup("no-such-user-here"),
            Err(PrivilegeError::NoSuchUser)
        );
        assert_eq!(User::lookup("bad\0name"), Err(PrivilegeError::BadName));
        let e = PrivilegeError::call("setuid(65534)")(nix::Error::EPERM);
        assert_eq!(e.errno(), Some(nix::Error::EPERM));
        assert_eq!(
            e.to_string(),
            "setuid(65534): EPERM: Operation not permitted"
        );
    }
}
