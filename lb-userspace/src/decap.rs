//! `edgelb decap`: runs on an L4 backend whose kernel has no ipip/ip6tnl tunnel. Loads the
//! `edgelb_decap` XDP program (same object as the balancer's), tells it the VIPs to
//! decapsulate for and the outer source prefixes to accept tunnelled packets from (the
//! balancers'), attaches it to an interface, logs its counters every 10 s and at exit, and
//! detaches it on SIGTERM/SIGINT (and on drop).
//!
//! `--from` is required: a backend that decapsulated for any outer source would let anyone
//! who can reach it tunnel packets to the VIP around the balancers' access control. A loaded
//! [`Decap`] with no source refuses every tunnelled packet for its VIPs.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::time::Duration;

use aya::maps::{HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use aya::programs::{Xdp, xdp::XdpLinkId};
use aya::{Ebpf, EbpfLoader};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use lb_common::{
    DECAP_PROGRAM_NAME, DEFAULT_ENCAP_V4, DEFAULT_ENCAP_V6, DecapCounters, DecapOutcome,
    MAP_ACL_V4, MAP_ACL_V6, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_DECAP_SOURCES_V4,
    MAP_DECAP_SOURCES_V6, MAP_DECAP_STATS, MAP_DECAP_VIPS, MAP_FLOWS, MAP_FRAGS, MAP_ICMP_RATE,
    MAP_LISTENERS, MAP_MAGLEV, MAP_MAGLEV_GEN, MAP_NEW_FLOWS, MAP_PORTS, MAP_STATS, MAP_TAIL,
    MAP_WILDCARDS, v4_mapped,
};
use tracing::{info, warn};

use crate::config::ConfigError;
use crate::config::values::{Cidr, TextValue};
use crate::dataplane::{AttachMode, DataplaneError, error_chain, missing};

/// The loaded decap program, its VIPs, its trusted sources and where it is attached.
pub struct Decap {
    ebpf: Ebpf,
    attached: Option<(String, AttachMode, XdpLinkId)>,
}

/// The key of `addr` in `DECAP_VIPS`.
fn vip_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Decap {
    /// Loads the program (root or CAP_BPF + CAP_NET_ADMIN needed).
    pub fn load() -> Result<Self, DataplaneError> {
        let bytes = crate::dataplane::object_bytes().ok_or(DataplaneError::NoObject)?;
        let mut loader = EbpfLoader::new();
        // The object's balancer maps are created too; shrunk to one entry, they cost nothing.
        for map in [
            MAP_LISTENERS,
            MAP_PORTS,
            MAP_WILDCARDS,
            MAP_ACL_V4,
            MAP_ACL_V6,
            MAP_STATS,
            MAP_MAGLEV,
            MAP_MAGLEV_GEN,
            MAP_BACKEND_STATS,
            MAP_BACKENDS,
            MAP_FLOWS,
            MAP_NEW_FLOWS,
            MAP_FRAGS,
            MAP_ICMP_RATE,
            MAP_TAIL,
        ] {
            loader.map_max_entries(map, 1);
        }
        let mut ebpf = loader.load(bytes).map_err(|e| DataplaneError::load(&e))?;
        program(&mut ebpf)?
            .load()
            .map_err(|e| DataplaneError::load(&e))?;
        Ok(Decap {
            ebpf,
            attached: None,
        })
    }

    /// Adds `addr` to the VIPs whose tunnelled packets are decapsulated.
    pub fn add_vip(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let mut vips: HashMap<&mut MapData, [u8; 16], u8> = HashMap::try_from(
            self.ebpf
                .map_mut(MAP_DECAP_VIPS)
                .ok_or_else(|| missing(MAP_DECAP_VIPS))?,
        )
        .map_err(map_err(MAP_DECAP_VIPS))?;
        vips.insert(vip_key(addr), 1, 0)
            .map_err(map_err(MAP_DECAP_VIPS))
    }

    /// Accepts tunnelled packets whose outer source lies in `net` (host bits must be clear,
    /// as [`parse_args`] leaves them).
    pub fn add_source(&mut self, net: IpNet) -> Result<(), DataplaneError> {
        match net {
            IpNet::V4(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                self.sources(MAP_DECAP_SOURCES_V4)?
                    .insert(&key, 1, 0)
                    .map_err(map_err(MAP_DECAP_SOURCES_V4))
            }
            IpNet::V6(n) => {
                let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
                self.sources(MAP_DECAP_SOURCES_V6)?
                    .insert(&key, 1, 0)
                    .map_err(map_err(MAP_DECAP_SOURCES_V6))
            }
        }
    }

    fn sources<K: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, K, u8>, DataplaneError> {
        LpmTrie::try_from(self.ebpf.map_mut(name).ok_or_else(|| missing(name))?)
            .map_err(map_err(name))
    }

    /// Attaches to `iface`: natively, or in skb mode when the driver refuses (with a warning),
    /// unless `mode` says which.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: Option<AttachMode>,
    ) -> Result<AttachMode, DataplaneError> {
        let prog = program(&mut self.ebpf)?;
        let try_mode = |prog: &mut Xdp, mode: AttachMode| {
            prog.attach(iface, mode.aya())
                .map(|link| (link, mode))
                .map_err(|e| DataplaneError::Attach {
                    iface: iface.to_string(),
                    mode,
                    reason: error_chain(&e),
                })
        };
        let (link, mode) = match mode {
            Some(m) => try_mode(prog, m)?,
            None => try_mode(prog, AttachMode::Native).or_else(|e| {
                warn!(iface, error = %error_chain(&e), "native XDP refused; falling back to skb (generic) mode");
                try_mode(prog, AttachMode::Skb)
            })?,
        };
        info!(iface, mode = mode.name(), "decap program attached");
        self.attached = Some((iface.to_string(), mode, link));
        Ok(mode)
    }

    /// Detaches the program, if attached.
    pub fn detach(&mut self) {
        let Some((iface, _, link)) = self.attached.take() else {
            return;
        };
        match program(&mut self.ebpf)
            .and_then(|p| p.detach(link).map_err(|e| DataplaneError::load(&e)))
        {
            Ok(()) => info!(iface, "decap program detached"),
            Err(e) => warn!(iface, error = %e, "decap detach failed"),
        }
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<DecapCounters, DataplaneError> {
        let stats: PerCpuArray<&MapData, DecapCounters> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_DECAP_STATS)
                .ok_or_else(|| missing(MAP_DECAP_STATS))?,
        )
        .map_err(map_err(MAP_DECAP_STATS))?;
        let per_cpu = stats.get(&0, 0).map_err(map_err(MAP_DECAP_STATS))?;
        let mut sum = DecapCounters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Runs the program once on `frame` through BPF_PROG_TEST_RUN; returns the verdict and the
    /// frame as the program left it.
    pub fn test_run_output(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), DataplaneError> {
        crate::dataplane::test_run_output(program(&mut self.ebpf)?, frame)
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        self.detach();
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    crate::dataplane::named_program(ebpf, DECAP_PROGRAM_NAME)
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        map,
        reason: e.to_string(),
    }
}

/// One line of counters.
fn summary(c: &DecapCounters) -> String {
    DecapOutcome::ALL
        .iter()
        .map(|o| {
            let i = *o as usize;
            format!("{}={} ({} bytes)", o.name(), c.packets[i], c.bytes[i])
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `edgelb decap`'s flags, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct DecapArgs {
    pub iface: String,
    pub vips: Vec<IpAddr>,
    /// Outer source prefixes tunnelled packets are accepted from, host bits cleared.
    pub sources: Vec<IpNet>,
}

/// The prefixes edgelb nodes take outer source addresses from ([`lb_common::EncapConfig`]):
/// what `--from` must cover for their packets to be decapsulated.
pub fn balancer_sources() -> [IpNet; 2] {
    let [a, b] = DEFAULT_ENCAP_V4;
    let mut v6 = [0u8; 16];
    v6[..DEFAULT_ENCAP_V6.len()].copy_from_slice(&DEFAULT_ENCAP_V6);
    let v4 = Ipv4Net::new_assert(Ipv4Addr::new(a, b, 0, 0), 8 * DEFAULT_ENCAP_V4.len() as u8);
    let v6 = Ipv6Net::new_assert(Ipv6Addr::from(v6), 8 * DEFAULT_ENCAP_V6.len() as u8);
    [IpNet::V4(v4), IpNet::V6(v6)]
}

/// Checks `edgelb decap`'s flags: the interface named, every VIP an IP address, at least one
/// `--from`, each a CIDR or a bare address (a host prefix).
pub fn parse_args(iface: &str, vips: &[String], from: &[String]) -> Result<DecapArgs, ConfigError> {
    if iface.is_empty() {
        return Err(ConfigError::missing(
            "--iface",
            "an interface name is required",
        ));
    }
    let vips = vips
        .iter()
        .map(|v| {
            v.parse::<IpAddr>()
                .map_err(|_| ConfigError::new("--vip", v.as_str(), "not an IPv4 or IPv6 address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if from.is_empty() {
        let [v4, v6] = balancer_sources();
        return Err(ConfigError::missing(
            "--from",
            format!(
                "required: the outer source prefixes of the edgelb nodes' tunnelled packets \
                 (--from {v4} --from {v6}); IP-in-IP for a VIP from any other source is dropped"
            ),
        ));
    }
    let mut sources = from
        .iter()
        .map(|f| {
            Cidr::parse(f)
                .map(|c| c.0)
                .map_err(|problem| ConfigError::new("--from", f.trim(), problem))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if vips.is_empty() {
        return Err(ConfigError::missing(
            "--vip",
            "required: a VIP whose tunnelled packets to decapsulate (repeatable); without one nothing would be",
        ));
    }
    sources.sort();
    sources.dedup();
    Ok(DecapArgs {
        iface: iface.to_string(),
        vips,
        sources,
    })
}

/// Whether any of `sources` shares addresses with a prefix the edgelb nodes send from; if
/// none does, no packet of theirs will ever be decapsulated.
fn covers_balancers(sources: &[IpNet]) -> bool {
    balancer_sources()
        .iter()
        .any(|b| sources.iter().any(|s| s.contains(b) || b.contains(s)))
}

/// `edgelb decap --iface IF --from CIDR... [--vip ADDR]...`: exit 2 on bad flags, 1 if the
/// program cannot be loaded or attached, 0 after SIGTERM/SIGINT.
pub fn main(iface: &str, vips: &[String], from: &[String]) -> ExitCode {
    // A missing interface is a usage error, as the daemon's --xdp-iface, found before
    // anything is loaded.
    let args = match parse_args(iface, vips, from)
        .and_then(|a| crate::config::interface_exists("--iface", &a.iface).map(|()| a))
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("edgelb: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Colours only on a terminal: as a service its log goes to a file or the journal.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgelb: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        // `{}`: the failed step's own message, which already holds its cause.
        Err(e) => {
            eprintln!("edgelb: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &DecapArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let iface = args.iface.as_str();
    let mut decap = Decap::load()?;
    for vip in &args.vips {
        decap.add_vip(*vip)?;
    }
    for net in &args.sources {
        decap.add_source(*net)?;
    }
    let from = args
        .sources
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    if !covers_balancers(&args.sources) {
        let [v4, v6] = balancer_sources();
        warn!(
            from,
            "no --from prefix overlaps {v4} or {v6}, where edgelb nodes send tunnelled packets from: every one of them will be refused"
        );
    }
    let mode = decap.attach(iface, None)?;
    info!(
        iface,
        mode = mode.name(),
        vips = args.vips.len(),
        from,
        "edgelb ready: decapsulating IP-in-IP for the VIPs from the --from sources"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => log_counters(&decap),
        }
    }
    log_counters(&decap);
    decap.detach();
    Ok(())
}

fn log_counters(decap: &Decap) {
    match decap.counters() {
        Ok(c) => info!("decap counters {}", summary(&c)),
        Err(e) => warn!(error = %e, "reading decap counters"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_are_checked_before_anything_is_loaded() {
        let from = strings(&["172.16.0.0/16", "fd00:e1b::/96"]);
        let args =
            parse_args("eth0", &strings(&["10.0.0.1", "fd00::1"]), &from).expect("valid flags");
        assert_eq!(
            args.vips,
            vec![
                "10.0.0.1".parse::<IpAddr>().expect("static"),
                "fd00::1".parse().expect("static")
            ]
        );
        assert_eq!(args.sources, balancer_sources().to_vec());
        let e = parse_args("eth0", &strings(&["10.0.0.300"]), &from)
            .expect_err("bad address")
            .to_string();
        assert!(e.contains("--vip") && e.contains("10.0.0.300"), "{e}");
        let e = parse_args("", &[], &from)
            .expect_err("no iface")
            .to_string();
        assert!(e.contains("--iface"), "{e}");
        let e = parse_args("eth0", &[], &from)
            .expect_err("no VIP")
            .to_string();
        assert!(e.starts_with("--vip: required"), "{e}");
    }

    #[test]
    fn from_is_required_and_each_value_a_prefix_or_address() {
        let vips = strings(&["10.0.0.1"]);
        let e = parse_args("eth0", &vips, &[])
            .expect_err("no --from")
            .to_string();
        assert!(
            e.starts_with("--from: required")
                && e.contains("--from 172.16.0.0/16 --from fd00:e1b::/96"),
            "{e}"
        );
        for bad in ["10.0.0.0/33", "fd00::/129", "10.2.0.0/x", "balancers", ""] {
            let e = parse_args("eth0", &vips, &strings(&["10.2.0.0/16", bad]))
                .expect_err(bad)
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "--from {bad:?}: expected an IPv4/IPv6 address or CIDR"
                )),
                "{bad}: {e}"
            );
        }
        let args = parse_args(
            "eth0",
            &vips,
            &strings(&["10.2.0.1", "fd00:2::1", "10.2.3.4/16", "10.2.0.0/16"]),
        )
        .expect("addresses and prefixes");
        let got: Vec<String> = args.sources.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.2.0.0/16", "10.2.0.1/32", "fd00:2::1/128"]);
    }

    #[test]
    fn sources_that_miss_the_balancers_prefixes_are_noticed() {
        let nets = |list: &[&str]| -> Vec<IpNet> {
            list.iter().map(|s| s.parse().expect("static")).collect()
        };
        assert!(covers_balancers(&nets(&["172.16.0.0/16"])));
        assert!(covers_balancers(&nets(&["172.16.4.0/24"])));
        assert!(covers_balancers(&nets(&["10.2.1.2/32", "::/0"])));
        assert!(!covers_balancers(&nets(&[
            "10.2.1.2/32",
            "fd00:2:1::2/128"
        ])));
    }

    #[test]
    fn the_counters_line_names_every_outcome() {
        let mut c = DecapCounters::default();
        c.packets[DecapOutcome::Refused as usize] = 3;
        c.bytes[DecapOutcome::Refused as usize] = 294;
        let line = summary(&c);
        assert!(line.contains("refused=3 (294 bytes)"), "{line}");
        for o in DecapOutcome::ALL {
            assert!(line.contains(&format!("{}=", o.name())), "{line}");
        }
    }
}
