//! ACME against a real CA, Debian's pebble, in a namespace of the test's own (root): a
//! certificate ordered by TLS-ALPN-01 on the https listener, served, renewed while requests
//! keep succeeding, ordered once for two nodes sharing the state directory; HTTP-01 on an
//! http listener; a failure reported in /status and /metrics, then retried.
use std::path::Path;
use std::time::{Duration, Instant};

use edgelb_tests::backend::Backend;
use edgelb_tests::certs::TempDir;
use edgelb_tests::daemon::Daemon;
use edgelb_tests::pebble::{AcmeNs, DIRECTORY, PebbleConfig, curl};
use edgelb_tests::pki::Ca;
use edgelb_tests::privilege::root_or_skip;

/// The ACME certificate entries of the node's `/status` (admin on `admin` in `ns`).
fn acme_status(ns: &AcmeNs, admin: &str) -> Vec<serde_json::Value> {
    let text = ns.output("curl", &["-s", &format!("http://{admin}/status")]);
    let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    status["certificates"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|c| c["source"] == "acme")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `secs` for `cond` on the node's ACME entry.
fn wait_for(
    ns: &AcmeNs,
    admin: &str,
    secs: u64,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(c) = acme_status(ns, admin).into_iter().find(&cond) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {secs} s: {:?}",
            acme_status(ns, admin)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The notAfter and issuer of the certificate served for `name` on `port`, as openssl prints
/// them (empty if none could be read).
fn served_cert(ns: &AcmeNs, name: &str, port: u16) -> String {
    ns.output(
        "sh",
        &[
            "-c",
            &format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -enddate -issuer"
            ),
        ],
    )
}

/// [`served_cert`], which must be one pebble issued.
fn served_not_after(ns: &AcmeNs, name: &str, port: u16) -> String {
    let pem = served_cert(ns, name, port);
    assert!(
        pem.contains("Pebble"),
        "not a pebble certificate for {name}: {pem:?}"
    );
    pem
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777)
}

/// A configuration file's text: admin on 127.0.0.1:9000, ACME at pebble with `top` (more
/// top-level keys), its state in `state`, trusting `ca`; one group `web` of `backend`, and an
/// https listener `secure` on 127.0.0.1:8443 with `default` as its certificate, ordering
/// `names` (TOML strings, comma-separated).
fn site_config(
    top: &str,
    state: &Path,
    ca: &Path,
    backend: std::net::SocketAddr,
    default: &edgelb_tests::pki::Leaf,
    names: &str,
) -> String {
    format!(
        r#"
xdp_mode = "off"
admin = "127.0.0.1:9000"
acme_directory = "{DIRECTORY}"
acme_state_dir = "{state}"
acme_ca = "{ca}"
{top}

[[group]]
name = "web"
backend = ["{backend}"]
health_check = "off"

[[listener]]
name = "secure"
listen = "127.0.0.1:8443"
cert = "{cert}"
key = "{key}"
group = "web"
acme_domain = [{names}]
"#,
        state = state.display(),
        ca = ca.display(),
        cert = default.cert.display(),
        key = default.key.display(),
    )
}

/// A site in a namespace of its own: a backend, a default certificate, the CA's configuration
/// (certificates valid `validity` seconds) and a state directory, for nodes started alike.
struct Site {
    _backend: Backend,
    ns: AcmeNs,
    dir: TempDir,
    ca_config: PebbleConfig,
    state: std::path::PathBuf,
    args: Vec<String>,
}

impl Site {
    fn new(names: &[&str], validity: u64) -> Site {
        let ns = AcmeNs::new(names);
        let dir = TempDir::new();
        let ca_config = PebbleConfig::new(&dir, 8443, 8080, validity);
        let default = Ca::new(&dir, "default").server(&dir, "default", &["edgelb.test"], &[]);
        let backend = Backend::start("b1", "127.0.0.1:0", Some(&ns.ns.path()));
        let state = dir.path().join("acme-state");
        // --acme-ca is a bundle with the CA's root second, as during a CA's rollover: every
        // anchor counts, not the first alone.
        let other = Ca::new(&dir, "other-root");
        let bundle = dir.path().join("acme-ca-bundle.pem");
        let pems: Vec<u8> = [&other.cert_pem, &ca_config.https_ca]
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect();
        std::fs::write(&bundle, pems).expect("write the bundle");
        let args = [
            "--cert",
            &default.cert.display().to_string(),
            "--key",
            &default.key.display().to_string(),
            "--backend",
            &backend.addr.to_string(),
            "--xdp-mode",
            "off",
            "--acme-directory",
            DIRECTORY,
            "--acme-ca",
            &bundle.display().to_string(),
            "--acme-state-dir",
            &state.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        Site {
            _backend: backend,
            ns,
            dir,
            ca_config,
            state,
            args,
        }
    }

    /// A node on `listen` with its admin endpoint on `admin`, ordering for `names`.
    fn node(&self, listen: &str, admin: &str, names: &[&str], extra: &[&str]) -> Daemon {
        let mut args: Vec<&str> = vec!["--listen", listen, "--admin", admin];
        args.extend(self.args.iter().map(String::as_str));
        for name in names {
            args.extend(["--acme-domain", name]);
        }
        args.extend(extra);
        Daemon::start(Some(&self.ns.ns), &args, self.dir.path())
    }
}

#[test]
fn a_certificate_is_ordered_once_for_two_nodes_served_and_renewed_while_requests_succeed() {
    if !root_or_skip("a_certificate_is_ordered_once_for_two_nodes") {
        return;
    }
    // Valid 24 s: renewed at 2/3 of that, 16 s after issuance.
    let site = Site::new(&["shop.test", "www.shop.test"], 24);
    let (ns, dir, state) = (&site.ns, &site.dir, &site.state);
    let pebble = site.ca_config.start(ns);
    // Two nodes, one state directory. The CA validates on port 8443 only: when the node on
    // 8444 orders, the one on 8443 answers from the files in the shared directory.
    let node = |listen: &str, admin: &str| {
        site.node(
            listen,
            admin,
            &["shop.test", "www.shop.test"],
            &["--acme-email", "ops@shop.test"],
        )
    };
    let a = node("127.0.0.1:8443", "127.0.0.1:9000");
    let b = node("127.0.0.1:8444", "127.0.0.1:9001");
    let issued = |c: &serde_json::Value| c["not_after"].is_i64();
    let first = wait_for(ns, "127.0.0.1:9000", 30, "issuance on node A", issued);
    wait_for(ns, "127.0.0.1:9001", 30, "issuance on node B", issued);
    assert_eq!(
        pebble.issued(),
        1,
        "two nodes sharing a state dir ordered twice:\n{}\n{}",
        a.log(),
        b.log()
    );
    assert!(first["last_error"].is_null(), "{first}");
    let root = pebble.root(ns, &dir.path().join("pebble-root.pem"));
    for (name, port) in [("shop.test", 8443), ("www.shop.test", 8444)] {
        let out = curl(ns, &root, name, port).output().expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "backend b1\n",
            "{name}:{port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The default certificate still answers other names.
    let other = ns.output(
        "sh",
        &[
            "-c",
            "openssl s_client -connect 127.0.0.1:8443 -servername edgelb.test </dev/null 2>/dev/null | openssl x509 -noout -subject -issuer",
        ],
    );
    assert!(
        other.contains("edgelb.test") && !other.contains("Pebble"),
        "{other:?}"
    );
    let metrics = ns.output("curl", &["-s", "http://127.0.0.1:9000/metrics"]);
    assert!(
        metrics.contains("edgelb_certificate_expiry_seconds{listener=\"listener-1\",source=\"acme\",name=\"shop.test\"}")
            && metrics.contains("edgelb_certificate_expiry_seconds{listener=\"listener-1\",source=\"file\",name=\"edgelb.test\"}"),
        "{metrics}"
    );
    // Keys and the directory are the owner's alone.
    let keys: Vec<_> = std::fs::read_dir(state)
        .expect("state dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(mode(&keys[0]), 0o600);
    assert_eq!(mode(state), 0o700);

    // Renewal: requests every 200 ms through it, none may fail.
    let before = served_not_after(ns, "shop.test", 8443);
    let first_after = first["not_after"].as_i64().expect("issued");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut served = 0;
    let renewed = loop {
        let out = curl(ns, &root, "shop.test", 8443).output().expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "backend b1\n",
            "a request failed during renewal: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            a.log()
        );
        served += 1;
        let now = acme_status(ns, "127.0.0.1:9000");
        if let Some(c) = now
            .iter()
            .find(|c| c["not_after"].as_i64() > Some(first_after))
        {
            break c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no renewal within 40 s:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // A request every 200 ms for the 16 s to the renewal; a loaded machine makes fewer.
    assert!(served > 5, "only {served} requests during the renewal");
    assert!(renewed["last_error"].is_null(), "{renewed}");
    let after = served_not_after(ns, "shop.test", 8443);
    assert_ne!(before, after, "the renewed certificate is not served");
    // Node B takes the renewal from the directory rather than ordering its own.
    wait_for(ns, "127.0.0.1:9001", 10, "renewal on node B", |c| {
        c["not_after"].as_i64() > Some(first_after)
    });
    assert_eq!(
        pebble.issued(),
        2,
        "one renewal for both nodes:\n{}\n{}",
        a.log(),
        b.log()
    );
    let (status, log) = a.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "a key reached the log");
}

#[test]
fn a_failed_order_is_reported_and_retried_and_http_01_answers_on_the_http_listener() {
    if !root_or_skip("a_failed_order_is_reported_and_retried") {
        return;
    }
    let ns = AcmeNs::new(&["api.test"]);
    let dir = TempDir::new();
    let default = Ca::new(&dir, "default").server(&dir, "default", &["edgelb.test"], &[]);
    let backend = Backend::start("b1", "127.0.0.1:0", Some(&ns.ns.path()));
    // The CA's configuration (and its HTTPS certificate) is made now; it runs later.
    let ca_config = PebbleConfig::new(&dir, 8443, 8080, 3600);
    let state = dir.path().join("acme-state");
    let base = site_config(
        "acme_challenge = \"http-01\"",
        &state,
        &ca_config.https_ca,
        backend.addr,
        &default,
        "\"api.test\"",
    );
    let file = dir.write(
        "edgelb.toml",
        format!(
            "{base}\n[[listener]]\nname = \"plain\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:8080\"\ngroup = \"web\"\n"
        ),
    );
    // No CA yet: the first orders fail.
    let path = file.display().to_string();
    let lb = Daemon::start(Some(&ns.ns), &["--config", &path], dir.path());
    let failed = wait_for(&ns, "127.0.0.1:9000", 20, "a failed order", |c| {
        c["failures"].as_u64() >= Some(1)
    });
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1:14000")),
        "{failed}"
    );
    assert!(
        failed["not_after"].is_null() && failed["retry_at"].is_i64(),
        "{failed}"
    );
    let metrics = ns.output("curl", &["-s", "http://127.0.0.1:9000/metrics"]);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("edgelb_acme_order_failures{listener=\"secure\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(lb.log().contains("ACME order failed"), "{}", lb.log());

    // The CA comes up: the next retry succeeds, by HTTP-01.
    let pebble = ca_config.start(&ns);
    let ok = wait_for(
        &ns,
        "127.0.0.1:9000",
        40,
        "issuance after the CA came up",
        |c| c["not_after"].is_i64(),
    );
    assert!(ok["last_error"].is_null() && ok["failures"] == 0, "{ok}");
    assert!(
        pebble.log().contains(
            "Attempting to validate w/ HTTP: http://api.test:8080/.well-known/acme-challenge/"
        ),
        "{}",
        pebble.log()
    );
    let root = pebble.root(&ns, &dir.path().join("pebble-root.pem"));
    let out = curl(&ns, &root, "api.test", 8443).output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "backend b1\n");
    drop(lb);
}

/// A restart while the certificate is due for renewal and the CA does not answer (its address
/// takes connections and says nothing, as behind a dropping firewall): the certificate in the
/// state directory is served at once, not only once the order has timed out (5 minutes).
#[test]
fn a_stored_certificate_is_served_at_start_while_the_ca_does_not_answer() {
    if !root_or_skip("a_stored_certificate_is_served_at_start_while_the_ca_does_not_answer") {
        return;
    }
    // Valid 30 s: due for renewal 20 s after issuance.
    let site = Site::new(&["shop.test"], 30);
    let ns = &site.ns;
    let pebble = site.ca_config.start(ns);
    let node = || site.node("127.0.0.1:8443", "127.0.0.1:9000", &["shop.test"], &[]);
    let first = node();
    let issued = wait_for(ns, "127.0.0.1:9000", 30, "issuance", |c| {
        c["not_after"].is_i64()
    });
    let renew_at = issued["renew_at"].as_i64().expect("a renewal time");
    let served = served_not_after(ns, "shop.test", 8443);
    let (status, log) = first.stop();
    assert!(status.success(), "{log}");

    // The CA's address now takes connections and never answers.
    drop(pebble);
    let _hole = edgelb_tests::netns::in_netns(&ns.ns.path(), || {
        std::net::TcpListener::bind("127.0.0.1:14000").expect("bind the CA's port")
    });
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    while unix_now() <= renew_at {
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = node();
    let deadline = Instant::now() + Duration::from_secs(10);
    let now_served = loop {
        let pem = served_cert(ns, "shop.test", 8443);
        if pem.contains("Pebble") || Instant::now() > deadline {
            break pem;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        now_served,
        served,
        "the stored certificate was not served while its renewal waited on the CA:\n{}",
        second.log()
    );
    let log = second.log_when(Duration::from_secs(10), |l| {
        l.contains("ACME: ordering a certificate")
    });
    assert!(
        log.contains("ACME: ordering a certificate"),
        "no renewal was tried:\n{log}"
    );
}

/// `--user`: the ACME client runs as that user from its first step, so everything it makes in
/// the state directory (lock, challenge answers, account, certificate) is the user's, and it
/// orders and serves its certificate.
#[test]
fn an_unprivileged_node_orders_as_its_user() {
    if !root_or_skip("an_unprivileged_node_orders_as_its_user") {
        return;
    }
    const NOBODY: u32 = 65534;
    let site = Site::new(&["api.test"], 3600);
    let pebble = site.ca_config.start(&site.ns);
    std::fs::create_dir_all(&site.state).expect("mkdir the state directory");
    std::os::unix::fs::chown(&site.state, Some(NOBODY), Some(NOBODY)).expect("chown");
    let node = site.node(
        "127.0.0.1:8443",
        "127.0.0.1:9000",
        &["api.test"],
        &["--user", "nobody"],
    );
    let issued = wait_for(&site.ns, "127.0.0.1:9000", 40, "issuance", |c| {
        c["not_after"].is_i64()
    });
    assert!(issued["last_error"].is_null(), "{issued}\n{}", node.log());
    let root = pebble.root(&site.ns, &site.dir.path().join("pebble-root.pem"));
    let out = curl(&site.ns, &root, "api.test", 8443)
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "backend b1\n");
    let mut stack = vec![site.state.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the state directory") {
            let path = entry.expect("entry").path();
            let owner = std::os::unix::fs::MetadataExt::uid(
                &std::fs::symlink_metadata(&path).expect("metadata"),
            );
            assert_eq!(owner, NOBODY, "{} is not the user's", path.display());
            files += 1;
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    assert!(files >= 3, "{files} entries in the state directory");
}

/// A reload that changes `acme_email` sets the account's contact at the CA with the next
/// order (the account kept in the state directory was registered with the old one), and a
/// bundle replaced in place is used for it: the client is made again, not kept from before.
#[test]
fn a_reload_that_changes_the_contact_or_the_ca_bundle_reaches_the_account() {
    if !root_or_skip("a_reload_that_changes_the_contact_or_the_ca_bundle_reaches_the_account") {
        return;
    }
    let ns = AcmeNs::new(&["api.test", "www.api.test", "img.api.test"]);
    let dir = TempDir::new();
    let default = Ca::new(&dir, "default").server(&dir, "default", &["edgelb.test"], &[]);
    let backend = Backend::start("b1", "127.0.0.1:0", Some(&ns.ns.path()));
    let ca_config = PebbleConfig::new(&dir, 8443, 8080, 3600);
    let pebble = ca_config.start(&ns);
    let state = dir.path().join("acme-state");
    let wrong_ca = Ca::new(&dir, "not-pebbles").cert_pem;
    // The bundle the node is given, replaced in place below.
    let bundle = dir.path().join("acme-ca.pem");
    std::fs::copy(&ca_config.https_ca, &bundle).expect("copy the CA's root");
    let config = |email: &str, ca: &Path, names: &str| {
        site_config(
            &format!("acme_email = \"{email}\""),
            &state,
            ca,
            backend.addr,
            &default,
            names,
        )
    };
    let file = dir.write(
        "edgelb.toml",
        config("ops@api.test", &bundle, "\"api.test\""),
    );
    let path = file.display().to_string();
    let lb = Daemon::start(Some(&ns.ns), &["--config", &path], dir.path());
    let issued = |c: &serde_json::Value| c["not_after"].is_i64();
    wait_for(&ns, "127.0.0.1:9000", 30, "the first issuance", issued);
    assert_eq!(pebble.issued(), 1);

    // Another contact and another name (an order): the contact is set at the CA, which takes it.
    dir.write(
        "edgelb.toml",
        config("noc@api.test", &bundle, "\"api.test\", \"www.api.test\""),
    );
    lb.signal(nix::sys::signal::Signal::SIGHUP);
    let two =
        |c: &serde_json::Value| issued(c) && c["names"].as_array().is_some_and(|n| n.len() == 2);
    let ok = wait_for(&ns, "127.0.0.1:9000", 30, "the issuance for two names", two);
    assert!(ok["last_error"].is_null(), "{ok}");
    let log = lb.log();
    assert!(
        log.contains("ACME account contact set contact=\"mailto:noc@api.test\""),
        "{log}"
    );

    // The bundle replaced in place by one that does not hold the CA's root: the next order
    // is made with it, and fails.
    std::fs::copy(&wrong_ca, &bundle).expect("replace the bundle");
    dir.write(
        "edgelb.toml",
        config(
            "noc@api.test",
            &bundle,
            "\"api.test\", \"www.api.test\", \"img.api.test\"",
        ),
    );
    lb.signal(nix::sys::signal::Signal::SIGHUP);
    let failed = wait_for(&ns, "127.0.0.1:9000", 30, "a refused CA", |c| {
        c["names"].as_array().is_some_and(|n| n.len() == 3) && c["failures"].as_u64() >= Some(1)
    });
    assert!(failed["not_after"].is_null(), "{failed}");
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("certificate")),
        "{failed}"
    );
    assert_eq!(pebble.issued(), 2, "no order got through the wrong bundle");
}
