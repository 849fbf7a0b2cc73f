//! An ACME CA for tests: Debian's `pebble` in a network namespace of the test's own, with the
//! names it validates resolving to 127.0.0.1 there (`/etc/netns/NAME/hosts`, which
//! `ip netns exec` mounts over /etc/hosts), and its HTTPS served with a certificate from a
//! test CA the daemon is told to trust.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::TempDir;
use crate::netns::Netns;
use crate::pki::Ca;

/// Where the ACME directory is inside the namespace.
pub const DIRECTORY: &str = "https://127.0.0.1:14000/dir";

/// A namespace where `names` resolve to 127.0.0.1.
pub struct AcmeNs {
    pub ns: Netns,
    etc: PathBuf,
}

impl AcmeNs {
    pub fn new(names: &[&str]) -> Self {
        let ns = Netns::new("ea");
        let etc = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/NAME");
        std::fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost {}\n", names.join(" ")),
        )
        .expect("write the namespace's hosts file");
        AcmeNs { ns, etc }
    }

    /// `program args...` run inside the namespace, its stdout (empty when it fails).
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        self.ns
            .command(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for AcmeNs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// A pebble configuration, made before pebble runs so that the daemon can be told to trust
/// its HTTPS (`--acme-ca`) before it is up.
pub struct PebbleConfig {
    config: PathBuf,
    logs: PathBuf,
    /// The CA of the directory's HTTPS certificate (`--acme-ca`).
    pub https_ca: PathBuf,
}

impl PebbleConfig {
    /// Validations of TLS-ALPN-01 on `tls_port` and HTTP-01 on `http_port` of 127.0.0.1,
    /// certificates valid `validity` seconds.
    pub fn new(dir: &TempDir, tls_port: u16, http_port: u16, validity: u64) -> Self {
        let ca = Ca::new(dir, "pebble-https");
        let leaf = ca.server(
            dir,
            "pebble-https",
            &["localhost"],
            &["127.0.0.1".parse().expect("an address")],
        );
        let config = dir.write(
            "pebble.json",
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
 "certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {tls_port},
 "ocspResponderURL": "", "externalAccountBindingRequired": false, "certificateValidityPeriod": {validity}}}}}"#,
                leaf.cert.display(),
                leaf.key.display()
            ),
        );
        PebbleConfig {
            config,
            logs: dir.path().to_path_buf(),
            https_ca: ca.cert_pem.clone(),
        }
    }

    /// Starts pebble in `ns`, with no random refusals of nonces and no wait before
    /// validating; returns once it serves its directory.
    pub fn start(&self, ns: &AcmeNs) -> Pebble {
        let log = self.logs.join(crate::netns::unique("pebble-log-"));
        let file = std::fs::File::create(&log).expect("create pebble log");
        let child = ns
            .ns
            .command("pebble")
            .arg("-config")
            .arg(&self.config)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pebble (apt-get install pebble): {e}"));
        let p = Pebble { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.log().contains("ACME directory available") {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }
}

pub struct Pebble {
    child: Child,
    log: PathBuf,
}

impl Pebble {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Certificates issued so far.
    pub fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }

    /// The root its certificates chain to (made anew at each start), written to `path`.
    pub fn root(&self, ns: &AcmeNs, path: &Path) -> PathBuf {
        let pem = ns.output("curl", &["-sk", "https://127.0.0.1:15000/roots/0"]);
        assert!(
            pem.contains("BEGIN CERTIFICATE"),
            "no root from pebble: {pem:?}"
        );
        std::fs::write(path, pem).expect("write pebble's root");
        path.to_path_buf()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Command` for curl inside `ns`, trusting `root`, with `name:port` resolved to 127.0.0.1.
pub fn curl(ns: &AcmeNs, root: &Path, name: &str, port: u16) -> Command {
    let mut c = ns.ns.command("curl");
    c.args(["-s", "--max-time", "5", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .arg(format!("https://{name}:{port}/"));
    c
}
