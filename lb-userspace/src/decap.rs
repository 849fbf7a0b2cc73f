//! `edgelb decap`: runs on an L4 backend whose kernel has no ipip/ip6tnl tunnel. Loads the
//! `edgelb_decap` XDP program (same object as the balancer's), tells it the VIPs to
//! decapsulate for, attaches it to an interface, logs its counters every 10 s and at exit,
//! and detaches it on SIGTERM/SIGINT (and on drop).
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, xdp::XdpLinkId};
use aya::{Ebpf, EbpfLoader};
use lb_common::{
    DECAP_PROGRAM_NAME, DecapCounters, DecapOutcome, MAP_ACL_V4, MAP_ACL_V6, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_DECAP_STATS, MAP_DECAP_VIPS, MAP_FLOWS, MAP_FRAGS, MAP_LISTENERS, MAP_MAGLEV,
    MAP_MAGLEV_GEN, MAP_NEW_FLOWS, MAP_PORTS, MAP_STATS, v4_mapped,
};
use tracing::{info, warn};

use crate::dataplane::{AttachMode, DataplaneError, error_chain};

/// The loaded decap program, its VIPs and where it is attached.
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
        ] {
            loader.map_max_entries(map, 1);
        }
        let mut ebpf = loader
            .load(bytes)
            .map_err(|e| DataplaneError::Load(error_chain(&e)))?;
        program(&mut ebpf)?
            .load()
            .map_err(|e| DataplaneError::Load(error_chain(&e)))?;
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
        match program(&mut self.ebpf).and_then(|p| {
            p.detach(link)
                .map_err(|e| DataplaneError::Load(error_chain(&e)))
        }) {
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
    ebpf.program_mut(DECAP_PROGRAM_NAME)
        .ok_or_else(|| {
            DataplaneError::Load(format!(
                "program {DECAP_PROGRAM_NAME} missing from the object"
            ))
        })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DataplaneError::Load(error_chain(&e)))
}

fn missing(map: &'static str) -> DataplaneError {
    DataplaneError::Map {
        map,
        reason: "missing from the object".into(),
    }
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

/// Checks `edgelb decap`'s flags: the interface named, every VIP an IP address.
pub fn parse_args(iface: &str, vips: &[String]) -> Result<Vec<IpAddr>, String> {
    if iface.is_empty() {
        return Err("--iface: an interface name is required".into());
    }
    vips.iter()
        .map(|v| {
            v.parse::<IpAddr>()
                .map_err(|_| format!("--vip {v:?}: not an IPv4 or IPv6 address"))
        })
        .collect()
}

/// `edgelb decap --iface IF [--vip ADDR]...`: exit 2 on bad flags, 1 if the program cannot be
/// loaded or attached, 0 after SIGTERM/SIGINT.
pub fn main(iface: &str, vips: &[String]) -> ExitCode {
    let vips = match parse_args(iface, vips) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("edgelb: error: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
    match runtime.block_on(run(iface, &vips)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgelb: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(iface: &str, vips: &[IpAddr]) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut decap = Decap::load().map_err(|e| e.to_string())?;
    for vip in vips {
        decap.add_vip(*vip).map_err(|e| e.to_string())?;
    }
    let mode = decap.attach(iface, None).map_err(|e| e.to_string())?;
    info!(
        iface,
        mode = mode.name(),
        vips = vips.len(),
        "edgelb ready: decapsulating IP-in-IP for the VIPs"
    );
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
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

    #[test]
    fn flags_are_checked_before_anything_is_loaded() {
        assert_eq!(
            parse_args("eth0", &["10.0.0.1".into(), "fd00::1".into()]),
            Ok(vec![
                "10.0.0.1".parse::<IpAddr>().expect("static"),
                "fd00::1".parse().expect("static")
            ])
        );
        let e = parse_args("eth0", &["10.0.0.300".into()]).expect_err("bad address");
        assert!(e.contains("--vip") && e.contains("10.0.0.300"), "{e}");
        assert!(
            parse_args("", &[])
                .expect_err("no iface")
                .contains("--iface")
        );
    }
}
