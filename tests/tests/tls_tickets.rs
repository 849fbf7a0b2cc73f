//! TLS sessions that resume on any node and across reloads: real edgelb processes, real
//! certificates, and a rustls client that keeps its sessions between connections. Every
//! scenario runs with a TLS 1.3 client and with a TLS 1.2 one (tickets in both).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use edgelb_tests::backend::Backend;
use edgelb_tests::daemon::{self, Daemon, Signal};
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};
use rustls::{ClientConfig, ProtocolVersion, SupportedProtocolVersion};

const K1: &str = "5f1b6c0e2a9d4e7f8a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f";
const K2: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
const K3: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
const VERSIONS: [(ProtocolVersion, &[&SupportedProtocolVersion]); 2] = [
    (ProtocolVersion::TLSv1_3, &TLS13),
    (ProtocolVersion::TLSv1_2, &TLS12),
];

const RELOADED: &str = "configuration and certificates reloaded";

/// A client of one TLS version with a session store of its own: what it resumes is what it
/// was given on its earlier connections, to any node serving the name.
struct Client {
    config: Arc<ClientConfig>,
    version: ProtocolVersion,
}

impl Client {
    fn new(
        s: &Setup,
        version: ProtocolVersion,
        versions: &'static [&SupportedProtocolVersion],
    ) -> Self {
        let mut opts = ClientOpts::new(&s.ca.cert_pem);
        opts.versions = versions;
        Client {
            config: opts.config(),
            version,
        }
    }

    /// One request on a new connection: whether its handshake resumed a session.
    async fn resumes(&self, addr: SocketAddr) -> bool {
        let reply = https::send(addr, SERVER_NAME, self.config.clone(), get("/"))
            .await
            .unwrap_or_else(|e| panic!("{:?} to {addr}: {e}", self.version));
        assert_eq!(
            reply.status, 200,
            "{:?} to {addr}: {}",
            self.version, reply.body
        );
        assert_eq!(reply.session.version, Some(self.version));
        reply.session.resumed
    }
}

/// One client per TLS version, each holding the session of a first, full handshake with
/// `addr`.
async fn clients_with_a_session(s: &Setup, addr: SocketAddr) -> Vec<Client> {
    let mut clients = Vec::new();
    for (version, versions) in VERSIONS {
        let client = Client::new(s, version, versions);
        assert!(
            !client.resumes(addr).await,
            "{version:?}: the first connection to {addr} resumed"
        );
        clients.push(client);
    }
    clients
}

/// The keys, one per line, in an owner-only file of the test's directory (written anew:
/// rotation is rewriting the file).
fn write_keys(s: &Setup, name: &str, keys: &[&str]) -> String {
    let text = format!(
        "# TLS ticket keys, the first encrypts\n{}\n",
        keys.join("\n")
    );
    s.dir.write_private(name, text).display().to_string()
}

/// A node reading its listener and `keys` (relative to the file) from a config file.
fn start_from_file(s: &Setup, backend: &str, keys: &str) -> (Daemon, SocketAddr) {
    let addr = free_addr();
    let text = format!(
        "tls_ticket_key_file = \"{keys}\"\nxdp_mode = \"off\"\n\n\
         [[group]]\nname = \"g\"\nbackend = [\"{backend}\"]\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"{addr}\"\ncert = \"server.crt\"\n\
         key = \"server.key\"\ngroup = \"g\"\n"
    );
    let file: PathBuf = s.dir.write(&format!("node-{}.toml", addr.port()), text);
    let lb = Daemon::start(None, &["--config", &file.to_string_lossy()], s.dir.path());
    (lb, addr)
}

/// Reloads `lb` (SIGHUP) and waits until it has applied its `n`th reload.
async fn reload(lb: &Daemon, n: usize) {
    lb.signal(Signal::SIGHUP);
    lb.wait_for_log(RELOADED, n).await;
}

#[tokio::test]
async fn a_session_from_one_node_resumes_on_another_with_the_same_key_file() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let keys = write_keys(&s, "tickets.key", &[K1, K2]);
    let (_a, node_a) = s.start(&["--backend", &be, "--tls-ticket-key-file", &keys]);
    // Node B names the same file in its config file, relative to it.
    let (_b, node_b) = start_from_file(&s, &be, "tickets.key");
    // The control: a node whose file holds another key.
    let other = write_keys(&s, "other.key", &[K3]);
    let (_c, node_c) = s.start(&["--backend", &be, "--tls-ticket-key-file", &other]);

    for client in clients_with_a_session(&s, node_a).await {
        let version = client.version;
        assert!(
            client.resumes(node_b).await,
            "{version:?}: a session of node A did not resume on node B"
        );
        assert!(
            client.resumes(node_a).await,
            "{version:?}: the ticket node B gave did not resume on node A"
        );
        assert!(
            !client.resumes(node_c).await,
            "{version:?}: resumed on a node with other keys"
        );
    }
}

#[tokio::test]
async fn without_a_key_file_sessions_resume_after_a_reload_on_that_node_only() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (a, node_a) = s.start(&["--backend", &be]);
    let (_b, node_b) = s.start(&["--backend", &be]);

    let clients = clients_with_a_session(&s, node_a).await;
    reload(&a, 1).await;
    for client in &clients {
        assert!(
            client.resumes(node_a).await,
            "{:?}: the session did not resume after a reload",
            client.version
        );
    }
    reload(&a, 2).await;
    for client in &clients {
        assert!(
            client.resumes(node_a).await,
            "{:?}: the ticket given after the first reload did not resume after the second",
            client.version
        );
        assert!(
            !client.resumes(node_b).await,
            "{:?}: node A's random keys opened a ticket on node B",
            client.version
        );
    }
}

#[tokio::test]
async fn after_a_rotation_old_sessions_resume_and_new_tickets_use_the_new_key() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let keys = write_keys(&s, "tickets.key", &[K1]);
    let (a, node_a) = s.start(&["--backend", &be, "--tls-ticket-key-file", &keys]);
    // A node that holds only the new key: what resumes there was sealed with it.
    let new_only = write_keys(&s, "new-only.key", &[K2]);
    let (_b, new_key_node) = s.start(&["--backend", &be, "--tls-ticket-key-file", &new_only]);

    let old = clients_with_a_session(&s, node_a).await;
    write_keys(&s, "tickets.key", &[K2, K1]);
    reload(&a, 1).await;
    for client in &old {
        assert!(
            client.resumes(node_a).await,
            "{:?}: a session of the old key did not resume after the rotation",
            client.version
        );
        assert!(
            client.resumes(new_key_node).await,
            "{:?}: the ticket given on resumption after the rotation is not of the new key",
            client.version
        );
    }
    for fresh in clients_with_a_session(&s, node_a).await {
        assert!(
            fresh.resumes(new_key_node).await,
            "{:?}: a new session's ticket is not of the new key",
            fresh.version
        );
    }
}

#[tokio::test]
async fn a_key_removed_from_the_file_no_longer_resumes_its_sessions() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let keys = write_keys(&s, "tickets.key", &[K1]);
    let (a, node_a) = s.start(&["--backend", &be, "--tls-ticket-key-file", &keys]);
    let clients = clients_with_a_session(&s, node_a).await;

    // A file that holds no valid key is refused; the keys in use stay.
    s.dir.write_private("tickets.key", "not a key\n");
    a.signal(Signal::SIGHUP);
    a.wait_for_log("reload refused", 1).await;
    let log = a.log();
    assert!(
        log.contains("--tls-ticket-key-file") && log.contains("line 1: not a key (9 characters)"),
        "{log}"
    );
    for client in &clients {
        assert!(
            client.resumes(node_a).await,
            "{:?}: a refused reload changed the keys",
            client.version
        );
    }

    // The next key is handed out ahead of time, second: sessions carry on, still sealed
    // with the first key.
    write_keys(&s, "tickets.key", &[K1, K2]);
    reload(&a, 1).await;
    for client in &clients {
        assert!(
            client.resumes(node_a).await,
            "{:?}: a reload that kept the key ended the session",
            client.version
        );
    }

    write_keys(&s, "tickets.key", &[K2]);
    reload(&a, 2).await;
    for client in &clients {
        assert!(
            !client.resumes(node_a).await,
            "{:?}: a session of the removed key resumed",
            client.version
        );
        assert!(
            client.resumes(node_a).await,
            "{:?}: the session of the new key did not resume",
            client.version
        );
    }
    assert!(
        !a.log().contains(K1) && !a.log().contains(K2),
        "key material in the log"
    );
}

/// rustls resumes a session without asking for a client certificate again: a ticket from a
/// listener without mutual TLS must not open a listener that demands certificates, though
/// both seal tickets with the same keys.
#[tokio::test]
async fn a_ticket_does_not_let_a_client_without_a_certificate_into_a_mutual_tls_listener() {
    let s = Setup::new();
    let (open_backend, mutual_backend) = (
        Backend::start("open", "127.0.0.1:0", None),
        Backend::start("mutual", "127.0.0.1:0", None),
    );
    let (open_be, mutual_be) = (
        open_backend.addr.to_string(),
        mutual_backend.addr.to_string(),
    );
    let keys = write_keys(&s, "tickets.key", &[K1]);
    let ca = s.ca.cert_pem.display().to_string();
    let (_a, open) = s.start(&["--backend", &open_be, "--tls-ticket-key-file", &keys]);
    let (_b, mutual) = s.start(&[
        "--backend",
        &mutual_be,
        "--tls-ticket-key-file",
        &keys,
        "--client-ca",
        &ca,
    ]);
    for client in clients_with_a_session(&s, open).await {
        let version = client.version;
        assert!(
            client.resumes(open).await,
            "{version:?}: no session to offer"
        );
        let refused = https::send(mutual, SERVER_NAME, client.config.clone(), get("/")).await;
        assert!(
            refused.is_err(),
            "{version:?}: a client without a certificate was served (resumed: {:?})",
            refused.map(|r| r.session.resumed)
        );
    }
    assert_eq!(
        mutual_backend.served(),
        0,
        "a client without a certificate got through"
    );
}

/// The key file is a secret: refused when others may read it (unless allowed), and a bad one
/// is named by its flag or key, its path and the line at fault, never by its contents.
#[test]
fn the_key_file_is_checked_as_a_secret_and_named_in_errors() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let (cert, key) = (
        s.server.cert.display().to_string(),
        s.server.key.display().to_string(),
    );
    let base = [
        "--listen",
        "127.0.0.1:18443",
        "--cert",
        &cert,
        "--key",
        &key,
        "--backend",
        "127.0.0.1:18080",
        "--xdp-mode",
        "off",
    ];
    // `check` first, as the command line wants it.
    let run = |args: &[&str]| {
        let (command, extra) = match args.split_first() {
            Some((&"check", rest)) => (&["check"][..], rest),
            _ => (&[][..], args),
        };
        let out = daemon::run(&[command, &base[..], extra].concat());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(K1) && !text.contains(&K1[..20]), "{text}");
        (out.status.code(), text)
    };

    let keys = write_keys(&s, "tickets.key", &[K1, K2]);
    let (code, out) = run(&["check", "--tls-ticket-key-file", &keys]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "tls-tickets     2 keys from {keys} (the first encrypts, all decrypt)"
        )),
        "{out}"
    );
    let (code, out) = run(&["check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("tls-tickets     random keys of this node"),
        "{out}"
    );

    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (code, out) = run(&["check", "--tls-ticket-key-file", &keys]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(&format!(
            "--tls-ticket-key-file \"{keys}\": a private key readable by group or others (mode 0640)"
        )),
        "{out}"
    );
    let (code, out) = run(&[
        "check",
        "--tls-ticket-key-file",
        &keys,
        "--allow-readable-keys",
    ]);
    assert_eq!(code, Some(0), "{out}");

    // The daemon refuses what check refuses, with exit code 2.
    let bad = s
        .dir
        .write_private("bad.key", format!("{K1}\n{}\n", &K1[..40]));
    let bad = bad.display().to_string();
    let (code, out) = run(&["--tls-ticket-key-file", &bad]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(&format!(
            "--tls-ticket-key-file \"{bad}\": line 2: not a key (40 characters); a key is 64 hexadecimal characters"
        )),
        "{out}"
    );

    // In a config file: the file, its top level, the key as the file spells it.
    let file = s.dir.write(
        "node.toml",
        "tls_ticket_key_file = \"bad.key\"\n\n[[group]]\nname = \"g\"\nbackend = [\"127.0.0.1:18080\"]\n",
    );
    let out = daemon::run(&["check", "--config", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: top level: tls_ticket_key_file = \"{bad}\": line 2: not a key",
            file.display()
        )),
        "{stderr}"
    );
}
