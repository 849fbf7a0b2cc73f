//! Tests that need root (BPF, namespaces) skip with a visible message when run by another user,
//! and fail instead of skipping in CI, where they must run.

/// True when the calling test may go on; false (after printing why) when it must skip.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI runs as root, yet this process is not root");
    }
    eprintln!(
        "SKIPPED {test}: needs root (BPF and network namespaces); run `sudo cargo xtask test`"
    );
    false
}
