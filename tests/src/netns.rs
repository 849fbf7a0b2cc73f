//! Network namespaces and veth pairs made by a test, named uniquely so tests run in parallel,
//! and deleted on drop, so a failing test leaves nothing behind.
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short unique name (interface names are limited to 15 bytes).
pub fn unique(tag: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 100_000)
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Path usable with setns(2).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a thread that has entered `ns`; sockets it creates belong to that namespace and
/// stay usable from any thread afterwards.
pub fn in_netns<T: Send + 'static>(ns_path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns_path.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("thread in {ns_path} panicked"))
}

/// A client namespace joined by a veth pair to a load-balancer namespace.
///
/// ```text
///   client ns                          lb ns
///   <client_if> 10.10.0.2, .3  <====>  <lb_if> 10.10.0.1   (XDP attaches here)
///               fd00:10::2, ::3                 fd00:10::1
/// ```
pub struct ClientLb {
    pub client: Netns,
    pub lb: Netns,
    pub client_if: String,
    pub lb_if: String,
}

pub const LB_V4: &str = "10.10.0.1";
pub const LB_V6: &str = "fd00:10::1";
pub const CLIENT_A_V4: &str = "10.10.0.2";
pub const CLIENT_B_V4: &str = "10.10.0.3";
pub const CLIENT_A_V6: &str = "fd00:10::2";
pub const CLIENT_B_V6: &str = "fd00:10::3";

impl ClientLb {
    pub fn new() -> Self {
        let topo = ClientLb {
            client: Netns::new("ec"),
            lb: Netns::new("el"),
            client_if: unique("vc"),
            lb_if: unique("vl"),
        };
        topo.add_link();
        topo
    }

    /// Removes the veth pair and creates it again, same names and addresses: new devices, as
    /// a network configuration that rebuilds an interface leaves them.
    pub fn recreate_link(&self) {
        self.lb.ip(&["link", "del", &self.lb_if]);
        self.add_link();
    }

    fn add_link(&self) {
        let (client, lb) = (&self.client, &self.lb);
        ip(&[
            "link",
            "add",
            &self.client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &self.lb_if,
            "netns",
            &lb.name,
        ]);
        for (ns, iface, addrs) in [
            (
                client,
                &self.client_if,
                [CLIENT_A_V4, CLIENT_B_V4, CLIENT_A_V6, CLIENT_B_V6].as_slice(),
            ),
            (lb, &self.lb_if, [LB_V4, LB_V6].as_slice()),
        ] {
            for a in addrs {
                let cidr = if a.contains(':') {
                    format!("{a}/64")
                } else {
                    format!("{a}/24")
                };
                let mut args = vec!["addr", "add", cidr.as_str(), "dev", iface.as_str()];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args);
            }
            ns.ip(&["link", "set", iface, "up"]);
        }
    }

    /// Whether an XDP program is attached to the load balancer's interface (`ip link` shows it).
    pub fn lb_has_xdp(&self) -> bool {
        self.lb
            .ip(&["link", "show", "dev", &self.lb_if])
            .contains("xdp")
    }
}

impl Default for ClientLb {
    fn default() -> Self {
        Self::new()
    }
}
