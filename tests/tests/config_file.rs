//! `--config FILE`: several listeners and groups from one TOML file, rules that forward to
//! another group and redirect HTTP to HTTPS, `edgelb check` on good and bad files, and reloads
//! that add, remove and rebind listeners under load without a failed request.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgelb_tests::backend::Backend;
use edgelb_tests::daemon::{self, Daemon, Signal};
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};
use edgelb_tests::load::Load;

/// The file name of `path`: the config refers to certificates relative to itself.
fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct Node {
    web: [Backend; 2],
    api: Backend,
    secure: SocketAddr,
    plain: SocketAddr,
}

impl Node {
    fn new() -> Self {
        Node {
            web: [
                Backend::start("web-a", "127.0.0.1:0", None),
                Backend::start("web-b", "127.0.0.1:0", None),
            ],
            api: Backend::start("api", "127.0.0.1:0", None),
            secure: free_addr(),
            plain: free_addr(),
        }
    }

    /// The file: two groups, a whitelist shared by name, an https listener whose /api goes to
    /// the api group, an http listener that redirects to https. `extra` is appended.
    fn file(&self, s: &Setup, web: &[&Backend], extra: &str) -> String {
        let web: Vec<String> = web.iter().map(|b| format!("\"{}\"", b.addr)).collect();
        let text = format!(
            r#"
xdp_mode = "off"
drain_timeout = 2

[ip_groups.local]
cidrs = ["127.0.0.0/8", "::1"]

[[group]]
name = "web"
backend = [{web}]
health_check = "off"

[[group]]
name = "api"
backend = [{{ address = "{api}", weight = 2 }}]
health_check = "off"

[[listener]]
name = "secure"
listen = "{secure}"
cert = "{cert}"
key = "{key}"
group = "web"
access_control = "whitelist"
ip_groups = ["local"]
idle_timeout = 30

[[listener.rule]]
name = "api"
path_prefix = "/api"
group = "api"

[[listener]]
name = "plain"
protocol = "http"
listen = "{plain}"
group = "web"

[[listener.rule]]
name = "to-https"
path_prefix = "/"
action = "redirect"
status = 301
location = "https://{{host}}{{path}}{{query}}"
{extra}"#,
            web = web.join(", "),
            api = self.api.addr,
            secure = self.secure,
            plain = self.plain,
            cert = name(&s.server.cert),
            key = name(&s.server.key),
        );
        text
    }

    /// The same file without the http listener.
    fn file_without_plain(&self, s: &Setup, web: &[&Backend], extra: &str) -> String {
        let text = self.file(s, web, "");
        let cut = text
            .find("[[listener]]\nname = \"plain\"")
            .unwrap_or(text.len());
        format!("{}{extra}", &text[..cut])
    }
}

/// One plain HTTP/1.0 request; the whole answer as text.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: shop.test\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

async fn backend_of(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, path: &str) -> String {
    let reply = https::send(addr, SERVER_NAME, config.clone(), get(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    assert_eq!(reply.status, 200, "GET {path} on {addr}: {}", reply.body);
    reply.body.trim().to_string()
}

#[tokio::test]
async fn a_config_file_runs_listeners_groups_and_rules() {
    let s = Setup::new();
    let node = Node::new();
    let file = s.dir.write(
        "edgelb.toml",
        node.file(&s, &[&node.web[0], &node.web[1]], ""),
    );
    let path = file.to_string_lossy().into_owned();

    let check = daemon::run(&["check", "--config", &path]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for expected in [
        "listener \"secure\"",
        "listener \"plain\"",
        "group \"web\"",
        "group \"api\"",
        "access-control  whitelist (2 prefixes",
        "configuration OK",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }

    // The flag adds the admin endpoint to what the file says.
    let admin = free_addr();
    let admin_arg = admin.to_string();
    let lb = Daemon::start(
        None,
        &["--config", &path, "--admin", &admin_arg],
        s.dir.path(),
    );
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    assert_eq!(
        backend_of(node.secure, &config, "/api/cart").await,
        "backend api"
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(backend_of(node.secure, &config, "/").await);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["backend web-a", "backend web-b"],
        "round robin over the web group"
    );
    let redirect = http_get(node.plain, "/cart?id=7").expect("plain listener");
    assert!(
        redirect.starts_with("HTTP/1.0 301") || redirect.starts_with("HTTP/1.1 301"),
        "{redirect}"
    );
    assert!(
        redirect
            .to_ascii_lowercase()
            .contains("location: https://shop.test/cart?id=7"),
        "{redirect}"
    );
    let metrics = http_get(admin, "/metrics").expect("metrics");
    for series in [
        format!(
            "edgelb_requests_total{{listener=\"secure\",group=\"api\",backend=\"{}\",code=\"2xx\"}} 1",
            node.api.addr
        ),
        "edgelb_requests_total{listener=\"plain\",group=\"web\",backend=\"-\",code=\"3xx\"} 1"
            .to_string(),
    ] {
        assert!(metrics.contains(&series), "missing {series} in\n{metrics}");
    }
    let table = daemon::run(&["status", "--admin", &admin_arg]);
    let table = String::from_utf8_lossy(&table.stdout);
    for line in [
        format!(
            "listener secure  https {}  access-control whitelist  group web",
            node.secure
        ),
        format!(
            "listener plain  http {}  access-control all  group web",
            node.plain
        ),
        "group api (weighted-round-robin)".to_string(),
    ] {
        assert!(table.contains(&line), "missing {line:?} in\n{table}");
    }
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn reloads_add_remove_and_rebind_listeners_without_a_failed_request() {
    let s = Setup::new();
    let node = Node::new();
    let both = [&node.web[0], &node.web[1]];
    let file = s.dir.write("edgelb.toml", node.file(&s, &both, ""));
    let path = file.to_string_lossy().into_owned();
    let lb = Daemon::start(None, &["--config", &path], s.dir.path());
    let config = ClientOpts::new(&s.ca.cert_pem).config();

    // Load on the listener every reload keeps, on new connections, for the whole test.
    let load = Load::start(3, node.secure, config.clone(), "/api/x");

    // 1: the http listener goes, an https listener for the api group comes, web loses a backend.
    let extra_at = free_addr();
    let extra = |at: SocketAddr| {
        format!(
            r#"
[[listener]]
name = "extra"
listen = "{at}"
cert = "{}"
key = "{}"
group = "api"
"#,
            name(&s.server.cert),
            name(&s.server.key)
        )
    };
    s.dir.write(
        "edgelb.toml",
        node.file_without_plain(&s, &[&node.web[1]], &extra(extra_at)),
    );
    lb.signal(Signal::SIGHUP);
    lb.wait_for_log("reloaded", 1).await;
    // Each accept loop stops on its own worker, a moment after the reload is logged.
    assert!(
        soon(|| http_get(node.plain, "/").is_err()).await,
        "the removed http listener still answers"
    );
    assert_eq!(backend_of(extra_at, &config, "/").await, "backend api");
    for _ in 0..4 {
        assert_eq!(backend_of(node.secure, &config, "/").await, "backend web-b");
    }

    // 2: the new listener moves to another port.
    let moved = free_addr();
    let current = std::fs::read_to_string(&file).expect("read the file");
    s.dir.write(
        "edgelb.toml",
        current.replace(&extra_at.to_string(), &moved.to_string()),
    );
    lb.signal(Signal::SIGHUP);
    lb.wait_for_log("reloaded", 2).await;
    assert_eq!(backend_of(moved, &config, "/").await, "backend api");
    assert!(
        soon(|| TcpStream::connect(extra_at).is_err()).await,
        "the old address of a moved listener still accepts"
    );

    // 3..10: reloads of the same file, under load.
    for round in 3..=10 {
        while load.ok() < round * 250 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lb.signal(Signal::SIGHUP);
        lb.wait_for_log("reloaded", round).await;
    }

    // A bad file changes nothing and says where the problem is.
    let good = std::fs::read_to_string(&file).expect("read the file");
    s.dir.write(
        "edgelb.toml",
        good.replace("idle_timeout = 30", "idle_timeout = 5000"),
    );
    lb.signal(Signal::SIGHUP);
    lb.wait_for_log("reload refused", 1).await;
    let log = lb.log();
    assert!(
        log.contains("listener \\\"secure\\\": idle_timeout = \\\"5000\\\": must be")
            || log.contains("listener \"secure\": idle_timeout = \"5000\": must be"),
        "{log}"
    );
    assert_eq!(backend_of(moved, &config, "/").await, "backend api");

    let (ok, failed) = load.finish().await;
    eprintln!("{ok} requests during 11 reloads, {failed} failed");
    assert!(ok >= 2500, "only {ok} requests went through");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
}

/// Each bad file is refused by `edgelb check` with exit code 2 and a message naming the file,
/// the table, the key and the value.
#[test]
fn bad_files_are_refused_with_the_key_and_value() {
    let s = Setup::new();
    let node = Node::new();
    let good = node.file(&s, &[&node.web[0]], "");
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("idle_timeout = 30", "idle_timeout = 5000"),
            "listener \"secure\": idle_timeout = \"5000\": must be a whole number of seconds, 0-4000",
        ),
        (
            good.replace("idle_timeout = 30", "idle_timout = 30"),
            "listener \"secure\": idle_timout: unknown key",
        ),
        (
            good.replace("group = \"api\"", "group = \"payments\""),
            "listener \"secure\": rule \"api\": group = \"payments\": ",
        ),
        (
            good.replace("path_prefix = \"/api\"", "path_regex = \"([\""),
            "listener \"secure\": rule \"api\": path_regex = \"([\": not a valid regex (Rust \
             regex syntax, at most 1048576 bytes compiled): unclosed character class",
        ),
        (
            good.replace("ip_groups = [\"local\"]", "ip_groups = [\"office\"]"),
            "ip_groups = \"office\": no [ip_groups.NAME] table",
        ),
        (
            good.replace("name = \"plain\"", "name = \"secure\""),
            "another listener has this name",
        ),
        (
            good.replace(
                "cidrs = [\"127.0.0.0/8\", \"::1\"]",
                "cidrs = [\"127.0.0.0/33\"]",
            ),
            "ip_groups.local: cidrs = \"127.0.0.0/33\"",
        ),
        (
            good.replace("health_check = \"off\"", "health_check = \"sometimes\""),
            "health_check = \"sometimes\": expected one of: off, tcp, http, https",
        ),
        (
            good.replace(
                "idle_timeout = 30",
                "idle_timeout = 30\nbackend = [\"10.0.0.1:80\"]",
            ),
            "backend: unknown key: belongs in a [[group]] table",
        ),
        (good.replace("[[group]]", "[[group]"), "not valid TOML"),
        (
            good.replace(
                "protocol = \"http\"",
                "protocol = \"http\"\ncert = \"x.pem\"",
            ),
            "cert: has no effect on an http listener",
        ),
        (
            good.replace("protocol = \"http\"", "protocol = \"http\"\nhttp3 = \"on\""),
            "http3 = \"on\": HTTP/3 runs over QUIC, which is always encrypted: only an https listener can serve it (this one is http)",
        ),
        // A string value is quoted once, by the message, whatever it holds.
        (
            good.replace(
                "drain_timeout = 2",
                "drain_timeout = 2\nadmin_allow_remote = \"yes\"",
            ),
            "admin_allow_remote = \"yes\": expected true or false, found a string",
        ),
        (
            good.replace("drain_timeout = 2", "drain_timeout = 2\naccess_log = 5"),
            "access_log = \"5\": expected true, false or a file path, found an integer",
        ),
        (
            good.replace("drain_timeout = 2", "drain_timeout = 2.5"),
            "drain_timeout = \"2.5\": expected a whole number, found a number with a fraction",
        ),
        (
            good.replace("health_check = \"off\"", "health_check = 3"),
            "health_check = \"3\": expected a string, found an integer",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = s.dir.write(&format!("bad-{i}.toml"), text);
        let path = file.to_string_lossy().into_owned();
        let out = daemon::run(&["check", "--config", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) || !stderr.contains(expected) || !stderr.contains(&path) {
            failures.push(format!(
                "case {i}: expected exit 2 and {expected:?} naming the file, got {:?}: {stderr}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The annotated example in `examples/` is a valid configuration: with the files it names in
/// place (made here), `edgelb check` accepts it and shows every listener and group.
#[test]
fn the_example_config_is_valid() {
    let s = Setup::new();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edgelb.toml"),
    )
    .expect("examples/edgelb.toml");
    // The example attaches to eth0; this machine's test namespace only promises lo. Its
    // access log's directory, /var/log/edgelb, is the operator's to make: one of the test's.
    let log = s.dir.path().join("access.log").display().to_string();
    let log = format!("access_log = {log:?}");
    let text = example
        .replace("xdp_iface = [\"eth0\"]", "xdp_iface = [\"lo\"]")
        .replace("access_log = \"/var/log/edgelb/access.log\"", &log);
    assert!(text.contains(&log), "the example's access_log moved");
    std::fs::create_dir_all(s.dir.path().join("certs")).expect("certs dir");
    let (cert, key) = (
        std::fs::read(&s.server.cert).expect("cert"),
        std::fs::read(&s.server.key).expect("key"),
    );
    for pair in ["shop", "static", "wild", "partners"] {
        s.dir.write(&format!("certs/{pair}.pem"), &cert);
        s.dir.write_private(&format!("certs/{pair}.key"), &key);
    }
    let ca = std::fs::read(&s.ca.cert_pem).expect("ca");
    s.dir.write("certs/partners-ca.pem", &ca);
    s.dir.write("backend-ca.pem", &ca);
    s.dir.write_private("sticky.key", [7u8; 32]);
    s.dir
        .write_private("tickets.key", format!("{}\n", "ab".repeat(32)));
    s.dir.write(
        "office.txt",
        "# office\n192.0.2.128/25\n2001:db8:200::/48\n",
    );
    s.dir.write("blocked.txt", "198.18.0.0/15\n");
    let file = s.dir.write("edgelb.toml", text);
    let path = file.to_string_lossy().into_owned();
    let out = daemon::run(&["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in ["shop", "shop-http", "partners", "dns"] {
        assert!(stdout.contains(&format!("listener {l:?}")), "{stdout}");
    }
    for g in ["web", "api", "accounts", "static", "dns"] {
        assert!(stdout.contains(&format!("group {g:?}")), "{stdout}");
    }
    // A top-level path, relative to the file.
    assert!(
        stdout.contains(&format!(
            "tls-tickets     1 key from {}/tickets.key",
            s.dir.path().display()
        )),
        "{stdout}"
    );
    for line in [
        "http3           on (QUIC on the same UDP port)",
        "acme-domain     shop.example.com, www.shop.example.com",
        "directory       https://acme-v02.api.letsencrypt.org/directory",
        "challenge       tls-alpn-01",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    // Rules are shown in the file's own syntax, conditions and action.
    for rule in [
        r#"rule            { name = "api-v2", path_prefix = "/api/v2", method = ["GET", "POST", "PUT", "DELETE"], header = { "x-client" = ["mobile", "web"] }, query = { "beta" = ["1"] }, client = ["0.0.0.0/0", "::/0"], action = "forward", group = "api" }"#,
        r#"rule            { name = "maintenance", path_prefix = "/checkout/legacy", action = "fixed", status = 503, content_type = "text/plain", body = "Back soon.\n" }"#,
        r#"rule            { name = "old-blog", path = "/blog", action = "redirect", status = 301, location = "https://blog.example.com{path}{query}" }"#,
    ] {
        assert!(stdout.contains(rule), "{rule}\n{stdout}");
    }
}

/// A `{ domain, cert, key }` table's paths are taken as they are: colons in them (which the
/// flag's `DOMAIN=CERT:KEY` cannot carry in the key's path) are fine.
#[test]
fn sni_cert_tables_take_paths_with_colons() {
    let s = Setup::new();
    let node = Node::new();
    std::fs::create_dir_all(s.dir.path().join("a:b")).expect("dir");
    let (cert, key) = (
        std::fs::read(&s.server.cert).expect("cert"),
        std::fs::read(&s.server.key).expect("key"),
    );
    s.dir.write("a:b/c:d.pem", &cert);
    s.dir.write_private("a:b/c:d.key", &key);
    let text = node.file(&s, &[&node.web[0]], "").replace(
        "idle_timeout = 30",
        "idle_timeout = 30\nsni_cert = [{ domain = \"www.example.com\", cert = \"a:b/c:d.pem\", key = \"a:b/c:d.key\" }]",
    );
    let file = s.dir.write("colons.toml", text);
    let out = daemon::run(&["check", "--config", &file.to_string_lossy()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = s.dir.path().display();
    assert!(
        stdout.contains(&format!(
            "sni-cert        www.example.com = {dir}/a:b/c:d.pem : {dir}/a:b/c:d.key"
        )),
        "{stdout}"
    );
}

/// A flag and its file key are one typed value read by one parser: the same words are
/// accepted by both, in any case, and a bad value is refused by both with the same words.
#[test]
fn a_flag_and_its_file_key_take_and_refuse_the_same_values() {
    let s = Setup::new();
    // (flag and value, the key's table and line, what both must say; None: both accept).
    let cases: [(&[&str], &str, &str, Option<&str>); 18] = [
        (
            &["--idle-timeout", "5000"],
            "listener",
            "idle_timeout = 5000",
            Some("\"5000\": must be a whole number of seconds, 0-4000"),
        ),
        (
            &["--backend", "127.0.0.1:70000"],
            "group",
            "backend = [\"127.0.0.1:70000\"]",
            Some("\"127.0.0.1:70000\": port 70000 is out of range 1-65535"),
        ),
        (
            &["--hc-path", "healthz"],
            "group",
            "hc_path = \"healthz\"",
            Some("\"healthz\": must be 1-80 characters starting with /"),
        ),
        (
            &["--tag", "=x"],
            "listener",
            "tag = [\"=x\"]",
            Some("\"=x\": key must be 1-128 characters, got 0"),
        ),
        (
            &["--algorithm", "fastest"],
            "group",
            "algorithm = \"fastest\"",
            Some(
                "\"fastest\": expected one of: weighted-round-robin, weighted-least-connections, source-ip-hash",
            ),
        ),
        (
            &["--ip-group", "10.0.0.0/8,10.1.2.3/40"],
            "listener",
            "access_control = \"whitelist\"\nip_group = [\"10.0.0.0/8,10.1.2.3/40\"]",
            Some("\"10.1.2.3/40\": expected an IPv4/IPv6 address or CIDR"),
        ),
        (
            &["--algorithm", "WLC"],
            "group",
            "algorithm = \"WLC\"",
            None,
        ),
        (&["--http2", "False"], "listener", "http2 = \"False\"", None),
        (
            &["--rate-limit-requests", "0"],
            "listener",
            "rate_limit_requests = 0",
            Some("\"0\": must be a whole number, 1-1000000"),
        ),
        (
            &["--rate-limit-requests", "50"],
            "listener",
            "rate_limit_requests = 50",
            None,
        ),
        (
            &["--rate-limit-syn", "20000000"],
            "listener",
            "rate_limit_syn = 20000000",
            Some("\"20000000\": must be a whole number, 1-10000000"),
        ),
        (
            &["--rate-limit-pps", "-5"],
            "listener",
            "rate_limit_pps = -5",
            Some("\"-5\": must be a whole number, 1-10000000"),
        ),
        (
            &["--rate-limit-syn", "100"],
            "listener",
            "rate_limit_syn = 100",
            None,
        ),
        (
            &["--auto-block", "60"],
            "listener",
            "auto_block = 60",
            Some("\"60\": blocks sources over a per-source limit: give "),
        ),
        (
            &["--rate-limit-pps", "5000"],
            "listener",
            "rate_limit_pps = 5000",
            None,
        ),
        (
            &["--syn-protect", "sometimes"],
            "listener",
            "syn_protect = \"sometimes\"",
            Some("\"sometimes\": expected one of: off, auto, on"),
        ),
        (
            &["--syn-protect", "AUTO", "--syn-protect-threshold", "5000"],
            "listener",
            "syn_protect = \"AUTO\"\nsyn_protect_threshold = 5000",
            None,
        ),
        (
            &["--syn-protect-threshold", "0"],
            "listener",
            "syn_protect_threshold = 0",
            Some("\"0\": must be a whole number, 1-100000000"),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (flag, table, line, expected)) in cases.iter().enumerate() {
        let mut args = vec![
            "check",
            "--protocol",
            "http",
            "--listen",
            "127.0.0.1:18080",
            "--backend",
            "127.0.0.1:30080",
        ];
        if flag[0] == "--backend" {
            args.truncate(5);
        }
        if flag[0] == "--ip-group" {
            args.extend(["--access-control", "whitelist"]);
        }
        args.extend(flag.iter().copied());
        let by_flag = daemon::run(&args);

        let (listener_line, group_line) = if *table == "listener" {
            (*line, "")
        } else {
            ("", *line)
        };
        let backend = if flag[0] == "--backend" {
            ""
        } else {
            "backend = [\"127.0.0.1:30080\"]"
        };
        let text = format!(
            "[[group]]\nname = \"g\"\n{backend}\n{group_line}\n\n[[listener]]\nname = \"l\"\n\
             protocol = \"http\"\nlisten = \"127.0.0.1:18080\"\ngroup = \"g\"\n{listener_line}\n"
        );
        let file = s.dir.write(&format!("same-{i}.toml"), text);
        let by_file = daemon::run(&["check", "--config", &file.to_string_lossy()]);

        for (how, out) in [("flag", &by_flag), ("file", &by_file)] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let ok = match expected {
                None => out.status.success(),
                Some(said) => out.status.code() == Some(2) && stderr.contains(said),
            };
            if !ok {
                failures.push(format!(
                    "{flag:?} by {how}: exit {:?}, expected {expected:?}: {stderr}",
                    out.status.code()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whether `done` holds within 5 s.
async fn soon(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// `check` prints each rule as an inline table of the file's keys: pasted into a listener's
/// `rule = [...]` list, it reads back as the same rule, line for line.
#[test]
fn a_rule_as_check_prints_it_reads_back_from_a_file_as_the_same_rule() {
    let s = Setup::new();
    let listener = s.listener_args(free_addr());
    let rules = [
        "name=api;host=api.example.com,*.api.example.com;path-prefix=/v1;method=GET,POST;header=x-env:prod|stage;query=lang:en|*;client=10.0.0.0/8,fd00::/8;rate-limit=5;action=forward",
        "name=old;path=/old;action=redirect:301:https://{host}/new{path}{query}",
        "name=down;path-regex=^/down/[0-9]+$;action=fixed:503:text/plain:\"back\"\tsoon\\",
    ];
    let mut args: Vec<&str> = vec!["check", "--backend", "127.0.0.1:18080"];
    args.extend(listener.iter().map(String::as_str));
    for rule in &rules {
        args.extend(["--rule", rule]);
    }
    let rule_lines = |out: &std::process::Output| -> Vec<String> {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("  rule            "))
            .map(String::from)
            .collect()
    };
    let printed = rule_lines(&daemon::run(&args));
    assert_eq!(printed.len(), rules.len(), "{printed:?}");
    let (cert, key) = (s.server.cert.display(), s.server.key.display());
    let file = s.dir.write(
        "pasted.toml",
        format!(
            "xdp_mode = \"off\"\n[[group]]\nname = \"server_group-1\"\nbackend = \"127.0.0.1:18080\"\n\
             [[listener]]\nname = \"listener-1\"\nlisten = \"{}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             group = \"server_group-1\"\nrule = [\n{}\n]\n",
            free_addr(),
            printed.join(",\n")
        ),
    );
    let out = daemon::run(&["check", "--config", &file.to_string_lossy()]);
    assert_eq!(rule_lines(&out), printed);
}
