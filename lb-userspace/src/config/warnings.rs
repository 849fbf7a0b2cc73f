//! Settings that are valid one by one but have no effect or contradict each other or the
//! machine: `edgelb check` prints them and the daemon logs them at start and on reload.
use super::CheckKind;
use super::{Config, XdpMode};

impl Config {
    /// One line per finding, naming the flags (file keys are the same words) and the values.
    /// `fd_limit` is the most files the process may open (RLIMIT_NOFILE's hard limit, which
    /// the daemon raises its soft limit to); None if unknown.
    pub fn warnings(&self, fd_limit: Option<u64>) -> Vec<String> {
        let mut out = Vec::new();
        if self.xdp.ifaces.is_empty() && matches!(self.xdp.mode, XdpMode::Native | XdpMode::Skb) {
            out.push(format!(
                "--xdp-mode {} has no effect without --xdp-iface: XDP stays off",
                self.xdp.mode.name()
            ));
        }
        if !self.xdp.enabled() {
            for l in &self.listeners {
                let flags = [
                    ("--rate-limit-syn", l.rate_limit_syn),
                    ("--rate-limit-pps", l.rate_limit_pps),
                ];
                for (flag, value) in flags {
                    if let Some(n) = value {
                        out.push(format!(
                            "listener {:?}: {flag} {n} is enforced by the XDP program, which is \
                             off (no --xdp-iface, or --xdp-mode off): not enforced",
                            l.name
                        ));
                    }
                }
                if l.syn_protect != super::SynProtection::Off {
                    out.push(format!(
                        "listener {:?}: --syn-protect answers SYNs in the XDP program, which is \
                         off (no --xdp-iface, or --xdp-mode off): the kernel answers them",
                        l.name
                    ));
                }
            }
        }
        for l in &self.listeners {
            if let Some(n) = l.syn_protect_threshold
                && !matches!(l.syn_protect, super::SynProtection::Auto { .. })
            {
                out.push(format!(
                    "listener {:?}: --syn-protect-threshold {n} has no effect with \
                     --syn-protect {}: only auto reads it",
                    l.name,
                    l.syn_protect.name()
                ));
            }
        }
        for g in &self.groups {
            let h = &g.health;
            if h.kind != CheckKind::Off && h.timeout > h.interval {
                out.push(format!(
                    "group {:?}: --hc-timeout {}s is longer than --hc-interval {}s: a check \
                     still running when the next is due delays it",
                    g.name,
                    h.timeout.as_secs(),
                    h.interval.as_secs()
                ));
            }
        }
        if self.bgp.is_some() {
            for l in self
                .listeners
                .iter()
                .filter(|l| l.listen.ip().is_unspecified())
            {
                out.push(format!(
                    "--bgp-local-as: listener {:?} listens on {}, a wildcard address, which is \
                     not announced: give it the address clients are routed to",
                    l.name, l.listen
                ));
            }
        }
        // Each client connection of an HTTP(S) listener is a socket (and, while a request is
        // in flight, so is its backend connection): past the limit, accept fails.
        let connections: u64 = self
            .listeners
            .iter()
            .filter(|l| !l.protocol.is_l4())
            .map(|l| l.max_connections as u64)
            .sum();
        if let Some(limit) = fd_limit
            && connections > limit
        {
            out.push(format!(
                "--max-connections: the listeners may hold {connections} client connections, \
                 each a file descriptor and another one to a backend during a request, but this \
                 process may open {limit} (RLIMIT_NOFILE): raise the limit (LimitNOFILE= in a \
                 systemd unit, ulimit -Hn) or lower --max-connections"
            ));
        }
        out
    }
}

/// The hard RLIMIT_NOFILE of this process.
pub fn fd_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(_, hard)| hard)
}
