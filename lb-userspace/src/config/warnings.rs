//! Settings that are valid one by one but have no effect or contradict each other or the
//! machine: `edgelb check` prints them and the daemon logs them at start and on reload.
use super::CheckKind;
use super::{Config, XdpMode};

impl Config {
    /// For `check` only, which cannot attach: the `--xdp-iface`s that `--xdp-mode native`
    /// will most likely be refused on, by `native_xdp` (whether the kernel reports native XDP
    /// for the interface's driver; None if it cannot say). The start attaches, and its own
    /// answer is the certain one, so the daemon does not ask.
    pub fn native_xdp_forecast(&self, native_xdp: impl Fn(&str) -> Option<bool>) -> Vec<String> {
        if self.xdp.mode != XdpMode::Native {
            return Vec::new();
        }
        self.xdp
            .ifaces
            .iter()
            .filter(|i| native_xdp(i) == Some(false))
            .map(|iface| {
                format!(
                    "--xdp-iface {iface}: its driver does not report native XDP (no \
                     NETDEV_XDP_ACT_BASIC in the kernel's xdp-features for it): --xdp-mode \
                     native will most likely be refused at start; auto falls back to generic \
                     mode, skb asks for it"
                )
            })
            .collect()
    }

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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        out.extend(self.expiring_certificates(now));
        out.extend(self.v1_certificates());
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

/// A file certificate this close to expiry is warned about (at start, on reload, and daily).
pub const EXPIRY_WARNING_DAYS: i64 = 14;

impl Config {
    /// One line per file certificate that expires within [`EXPIRY_WARNING_DAYS`] of `now`
    /// (unix seconds), or has expired. ACME certificates renew themselves: not here.
    pub fn expiring_certificates(&self, now: i64) -> Vec<String> {
        self.file_certificates()
            .into_iter()
            .filter_map(|c| {
                let left = c.not_after? - now;
                if left >= EXPIRY_WARNING_DAYS * 86_400 {
                    return None;
                }
                let when = if left < 0 {
                    format!("expired {} ago", counted(-left / 86_400, "day"))
                } else {
                    format!(
                        "expires in {} {}",
                        counted(left / 86_400, "day"),
                        counted(left % 86_400 / 3600, "hour")
                    )
                };
                let subject = c.subject.as_deref().filter(|s| !s.is_empty());
                let names = match (c.names.is_empty(), subject) {
                    (true, Some(subject)) => format!("no DNS names, subject {subject}"),
                    (true, None) => "no DNS names".to_string(),
                    (false, _) => c.names.join(", "),
                };
                Some(format!(
                    "listener {:?}: certificate {} ({names}) {when}: replace the file and reload",
                    c.listener,
                    c.path.display(),
                ))
            })
            .collect()
    }
}

/// `1 day`, `2 days`.
fn counted(n: i64, unit: &str) -> String {
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// A certificate an https listener serves from a file (`--cert`, `--sni-cert`).
#[derive(Clone, Debug)]
pub struct FileCert {
    pub listener: String,
    /// The SNI entry's name, or the default certificate's own DNS names.
    pub names: Vec<String>,
    /// The certificate's subject, which names it when it has no DNS names.
    pub subject: Option<String>,
    pub path: std::path::PathBuf,
    /// Unix seconds.
    pub not_after: Option<i64>,
}

impl Config {
    /// X.509 v1 certificates among the listeners' client CAs: rustls refuses v1 client
    /// certificates, and a CA that is v1 itself usually issues v1 ones.
    fn v1_certificates(&self) -> Vec<String> {
        use crate::tls::certs::{is_x509_v1, pem_certificates, subject};
        let mut out = Vec::new();
        for l in &self.listeners {
            // A v1 --cert is refused when it is loaded (`load_certified_key`).
            let Some(ca) = l.tls.as_ref().and_then(|t| t.client_ca_path.as_ref()) else {
                continue;
            };
            for cert in pem_certificates(ca).iter().filter(|c| is_x509_v1(c)) {
                out.push(format!(
                    "listener {:?}: --client-ca {}: {} is an X.509 v1 certificate; it works as \
                     a CA, but client certificates must be v3: v1 ones (what `openssl x509 \
                     -req` makes without -extfile) are refused in the handshake",
                    l.name,
                    ca.display(),
                    subject(cert).unwrap_or_else(|| "a certificate".into())
                ));
            }
        }
        out
    }

    /// Every certificate the https listeners serve from files, with its expiry.
    pub fn file_certificates(&self) -> Vec<FileCert> {
        let mut out = Vec::new();
        for l in &self.listeners {
            let Some(tls) = &l.tls else { continue };
            let default_names = tls
                .settings
                .default
                .cert
                .first()
                .map(crate::tls::certs::dns_names)
                .unwrap_or_default();
            let sni = tls
                .sni_files
                .iter()
                .zip(&tls.settings.sni)
                .map(|((name, path, _), (_, key))| (vec![name.as_str().to_string()], key, path));
            for (names, key, path) in
                std::iter::once((default_names, &tls.settings.default, &tls.cert_path)).chain(sni)
            {
                let leaf = key.cert.first();
                out.push(FileCert {
                    listener: l.name.clone(),
                    names,
                    subject: leaf.and_then(crate::tls::certs::subject),
                    path: path.clone(),
                    not_after: leaf
                        .and_then(crate::tls::certs::validity)
                        .map(|(_, after)| after),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_day_or_hour_is_singular() {
        assert_eq!(super::counted(1, "day"), "1 day");
        assert_eq!(super::counted(0, "hour"), "0 hours");
        assert_eq!(super::counted(1, "hour"), "1 hour");
        assert_eq!(super::counted(14, "day"), "14 days");
    }
}
