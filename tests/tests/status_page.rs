//! The admin endpoint's status page (`GET /`), read by a real browser: headless Chromium
//! driven by Selenium (tests/scripts/status_page.py) sees a killed backend go unhealthy and a
//! listener's XDP drop counter rise when a blacklisted client tries to connect. And the
//! figures behind it: `/status`'s version, uptime, reloads, traffic shares and request
//! counts, `/metrics`' build info and refused reloads, `edgelb --version`, `edgelb status`.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use edgelb_tests::admin::{get as http_get, request as http};
use edgelb_tests::backend::{Backend, BackendProcess};
use edgelb_tests::certs::{TempDir, self_signed};
use edgelb_tests::client::{curl, curl_ok};
use edgelb_tests::daemon::{self, Daemon};
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};
use edgelb_tests::netns::{CLIENT_A_V4, CLIENT_B_V4, ClientLb, LB_V4, in_netns};
use edgelb_tests::packet::parse;
use edgelb_tests::privilege::root_or_skip;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's python3-selenium is for Debian's python3, not whichever python3 PATH finds first.
const PYTHON: &str = "/usr/bin/python3";
/// The daemon's health checks (`--hc-interval`, one failure suffices) and the page's polling.
const HC_INTERVAL: Duration = Duration::from_secs(1);
const PAGE_POLL: Duration = Duration::from_secs(1);
/// What the browser, WebDriver's round trips and a busy two-core CI machine may add.
const SLACK: Duration = Duration::from_secs(4);
/// Each of the script's waits; the test waits a little longer for each of its lines.
const STEP: Duration = Duration::from_secs(15);
const CURL_TIMEOUT: i32 = 28;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/status_page.py")
}

/// Whether the browser stack is installed; in CI it must be (`cargo xtask setup` installs it).
fn browser_or_skip(test: &str) -> bool {
    let selenium = Command::new(PYTHON)
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (Path::new(CHROMIUM).exists(), "chromium"),
        (Path::new(CHROMEDRIVER).exists(), "chromium-driver"),
        (selenium, "python3-selenium"),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test}: missing {missing:?}; `cargo xtask setup` installs them");
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED {why}");
    false
}

/// The Selenium script running inside a namespace, spoken to in lines.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: PathBuf,
    /// Everything it printed so far, for failure messages.
    said: Vec<String>,
}

impl Browser {
    fn start(ns: &str, dir: &Path, args: &[&str]) -> Self {
        let stderr = dir.join("status_page.stderr");
        let file = std::fs::File::create(&stderr).expect("create the script's stderr file");
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new("ip")
                .args(["netns", "exec", ns, PYTHON])
                .arg(script())
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(file)
                // Its own process group: if it must be killed, chromedriver and Chromium go too.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", script().display()))
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            said: Vec::new(),
        }
    }

    /// The script's next line, which must start with `word`; its text after `word `.
    fn expect(&mut self, word: &str, daemon: &Daemon) -> String {
        let line = match self.lines.recv_timeout(STEP + Duration::from_secs(30)) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => self.fail(&format!("no {word} line in time"), daemon),
            Err(RecvTimeoutError::Disconnected) => {
                self.fail(&format!("the script ended before {word}"), daemon)
            }
        };
        self.said.push(line.clone());
        match line.strip_prefix(word) {
            Some(rest) => rest.trim().to_string(),
            None => self.fail(
                &format!("expected {word}, the script said {line:?}"),
                daemon,
            ),
        }
    }

    fn tell(&mut self, word: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{word}");
            let _ = stdin.flush();
        }
    }

    fn fail(&mut self, what: &str, daemon: &Daemon) -> ! {
        self.stop();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        panic!(
            "status page in the browser: {what}\nthe script said: {:#?}\nits stderr:\n{stderr}\nedgelb's log:\n{}",
            self.said,
            daemon.log()
        );
    }

    /// Lets the script end on its own (stdin closed, SIGTERM: it quits the browser), then
    /// kills its process group if it has not.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.stdin.take();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // Quitting Chromium takes a second or two; a script stuck in a wait gets SIGTERM.
        for (signal, wait) in [(None, 200), (Some(nix::sys::signal::Signal::SIGTERM), 100)] {
            if let Some(signal) = signal {
                let _ = nix::sys::signal::kill(pid, signal);
            }
            for _ in 0..wait {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        None
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// `key=value` from a line of the script.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// `edgelb --version`'s version text: `0.1.0 (commit 1a2b3c4d5e6f)`.
fn version_text() -> String {
    let out = daemon::run(&["--version"]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "edgelb --version: {text}");
    text.strip_prefix("edgelb ")
        .unwrap_or_else(|| panic!("edgelb --version printed {text:?}"))
        .to_string()
}

#[test]
fn the_page_shows_a_killed_backend_go_unhealthy_and_xdp_drops_rise() {
    let test = "the_page_shows_a_killed_backend_go_unhealthy_and_xdp_drops_rise";
    if !root_or_skip(test) || !browser_or_skip(test) {
        return;
    }
    let topo = ClientLb::new();
    let dir = TempDir::new();
    let cert = self_signed(&dir, "lb", &[parse(LB_V4)]);
    let doomed = BackendProcess::start_in(Some(&topo.lb), "a", "127.0.0.1:0", &[]);
    let stays = BackendProcess::start_in(Some(&topo.lb), "b", "127.0.0.1:0", &[]);
    let (doomed_addr, stays_addr) = (doomed.addr.to_string(), stays.addr.to_string());
    let (cert_path, key_path) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let (heavy, light) = (
        format!("{doomed_addr},weight=3"),
        format!("{stays_addr},weight=1"),
    );
    let interval = HC_INTERVAL.as_secs().to_string();
    // The namespace is the test's own: a fixed admin port cannot collide.
    let admin = "127.0.0.1:9900";
    let d = Daemon::start(
        Some(&topo.lb),
        &[
            "--listen",
            "[::]:8443",
            "--cert",
            &cert_path,
            "--key",
            &key_path,
            "--backend",
            &heavy,
            "--backend",
            &light,
            "--hc-interval",
            &interval,
            "--hc-timeout",
            "1",
            "--hc-retries",
            "1",
            "--access-control",
            "blacklist",
            "--ip-group",
            CLIENT_B_V4,
            "--xdp-iface",
            &topo.lb_if,
            "--xdp-mode",
            "native",
            "--admin",
            admin,
        ],
        dir.path(),
    );
    assert!(topo.lb_has_xdp(), "XDP not attached to {}", topo.lb_if);
    // A request served, so that the listener's 2xx count is above 0 on the page.
    let url = format!("https://{LB_V4}:8443/");
    let served = curl_ok(&topo.client, CLIENT_A_V4, &url, &cert.cert);
    assert_eq!(
        served.code, 0,
        "{CLIENT_A_V4} was not served: {}",
        served.stderr
    );

    let page = format!("http://{admin}/");
    let mut browser = Browser::start(
        &topo.lb.name,
        dir.path(),
        &[
            "--url",
            &page,
            "--backend",
            &doomed_addr,
            "--other",
            &stays_addr,
            "--listener",
            "listener-1",
            "--timeout",
            &STEP.as_secs().to_string(),
        ],
    );
    let ready = browser.expect("READY", &d);
    assert_eq!(
        ready.strip_prefix("version="),
        Some(version_text().as_str()),
        "the page's version is --version's"
    );

    // (a) The backend dies; the page says so within a check interval and a poll.
    let killed = Instant::now();
    doomed.kill();
    browser.tell("KILLED");
    let unhealthy = browser.expect("UNHEALTHY", &d);
    let seen = killed.elapsed();
    let after: f64 = field(&unhealthy, "after").parse().expect("seconds");
    let bound = HC_INTERVAL + PAGE_POLL + SLACK;
    eprintln!("the page showed the backend unhealthy {after:.2} s after the kill ({seen:?} here)");
    assert!(
        Duration::from_secs_f64(after) <= bound,
        "the page took {after} s to show the killed backend unhealthy (at most {bound:?}):\n{}",
        d.log()
    );
    assert!(
        unhealthy.contains("connection refused"),
        "the health cell's reason is not the check's: {unhealthy}"
    );

    // (b) The blacklisted client's SYNs are dropped at XDP; the page's counter rises.
    let baseline = browser.expect("BASELINE", &d);
    let tried = curl(&topo.client, CLIENT_B_V4, &url, &cert.cert);
    assert_eq!(
        tried.code, CURL_TIMEOUT,
        "blacklisted {CLIENT_B_V4} should time out (SYN dropped at XDP): {}",
        tried.stderr
    );
    browser.tell("CONNECTED");
    let drops = browser.expect("DROPS", &d);
    eprintln!("XDP drops on the page: before {baseline}, after {drops}");
    let (before, after) = (
        field(&baseline, "dropped_acl")
            .parse::<u64>()
            .expect("a count"),
        field(&drops, "dropped_acl")
            .parse::<u64>()
            .expect("a count"),
    );
    assert!(after > before, "dropped_acl {before} -> {after}");

    let reloaded = browser.expect("RELOADED", &d);
    assert!(reloaded.contains("applied"), "{reloaded}");
    let ok = browser.expect("OK", &d);
    let status = browser.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "the script ended with {status:?} after OK {ok}"
    );
    // The figures the page showed are the endpoint's own.
    let status = in_netns(&topo.lb.path(), move || http_get(admin, "/status"));
    let body = status.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let status: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let listener = &status["listeners"][0];
    assert!(
        listener["xdp_dropped"].as_u64().is_some_and(|n| n >= after),
        "{listener}"
    );
    drop(browser);
    let (exit, log) = d.stop();
    assert!(exit.success(), "{log}");
}

/// The JSON body of `GET path` on the admin endpoint.
fn json(admin: &str, path: &str) -> Value {
    let answer = http_get(admin, path);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}:\n{answer}"))
}

#[tokio::test]
async fn status_reports_version_uptime_reloads_and_each_backends_share() {
    let s = Setup::new();
    let (a, b) = (
        Backend::start("a", "127.0.0.1:0", None),
        Backend::start("b", "127.0.0.1:0", None),
    );
    let (heavy, light) = (
        format!("{},weight=3", a.addr),
        format!("{},weight=1", b.addr),
    );
    let admin = free_addr().to_string();
    let before_start = std::time::Instant::now();
    let (lb, addr) = s.start(&["--backend", &heavy, "--backend", &light, "--admin", &admin]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    for _ in 0..4 {
        let reply = https::send(addr, SERVER_NAME, config.clone(), get("/"))
            .await
            .expect("request");
        assert_eq!(reply.status, 200);
    }

    // The page: one self-contained file.
    let page = http_get(&admin, "/");
    let (head, html) = page.split_once("\r\n\r\n").expect("an HTTP answer");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("200 ok") && head.contains("content-type: text/html"),
        "{head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    for attr in ["src=", "href="] {
        for (i, _) in html.match_indices(attr) {
            let value = &html[i + attr.len()..];
            assert!(
                value.starts_with("\"data:"),
                "the page refers to something outside itself: {}",
                &value[..value.len().min(60)]
            );
        }
    }
    assert!(
        !html.contains("innerHTML"),
        "the page must put text with textContent"
    );
    assert!(html.contains("id=\"listeners\"") && html.contains("fetch(\"/status\""));

    let version = version_text();
    let status = json(&admin, "/status");
    let commit = status["commit"].as_str().expect("commit");
    assert_eq!(
        version,
        format!("{} (commit {commit})", env!("CARGO_PKG_VERSION")),
        "--version and /status disagree"
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        && out.status.success()
    {
        assert_eq!(commit, String::from_utf8_lossy(&out.stdout).trim());
    }
    let uptime = status["uptime_seconds"].as_u64().expect("uptime_seconds");
    assert!(status["config_path"].is_null(), "no --config: {status}");
    assert_eq!(
        status["reloads"],
        serde_json::json!({"ok": 0, "failed": 0, "last": null})
    );
    let listener = &status["listeners"][0];
    assert_eq!(listener["requests"]["2xx"], 4, "{listener}");
    // The last client's connection may still be closing.
    assert!(listener["active_connections"].is_i64(), "{listener}");
    assert_eq!(listener["xdp_dropped"], 0, "XDP is off: {listener}");
    let backends = &status["groups"][0]["backends"];
    let shares: Vec<(f64, u64)> = (0..2)
        .map(|i| {
            let b = &backends[i];
            assert!(b["last_transition"].is_null(), "no transition yet: {b}");
            (
                b["traffic_share"].as_f64().expect("traffic_share"),
                b["requests"].as_u64().expect("requests"),
            )
        })
        .collect();
    assert_eq!(shares, [(0.75, 3), (0.25, 1)], "{backends}");

    let table = daemon::run(&["status", "--admin", &admin]);
    let text = String::from_utf8_lossy(&table.stdout);
    for (be, share) in [(&a.addr, "75%"), (&b.addr, "25%")] {
        assert!(
            text.lines()
                .any(|l| l.contains(&be.to_string()) && l.contains(share)),
            "{be} should be in effect {share}:\n{text}"
        );
    }

    // Uptime counts from the start, and reloads do not reset it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // One reload applied, then one refused: a key file that is no key.
    assert!(http(&admin, "POST", "/reload").contains(" 200 "));
    std::fs::write(&s.server.key, "not a key\n").expect("spoil the key");
    let refused = http(&admin, "POST", "/reload");
    assert!(refused.contains(" 422 "), "{refused}");
    let after = json(&admin, "/status");
    let uptime_after = after["uptime_seconds"].as_u64().expect("uptime_seconds");
    assert!(
        uptime_after > uptime && uptime_after <= before_start.elapsed().as_secs(),
        "uptime {uptime} s, then {uptime_after} s after 1.1 s and two reloads; the test began {:?} ago",
        before_start.elapsed()
    );
    let reloads = &after["reloads"];
    assert_eq!((&reloads["ok"], &reloads["failed"]), (&1.into(), &1.into()));
    let last = &reloads["last"];
    assert_eq!(
        (&last["ok"], &last["trigger"]),
        (&false.into(), &"POST /reload".into())
    );
    let error = last["error"].as_str().unwrap_or("");
    assert!(
        !error.is_empty() && refused.contains(error),
        "the last error is POST /reload's answer: {error:?} vs {refused}"
    );
    let metrics = http_get(&admin, "/metrics");
    for line in [
        "edgelb_reloads_total 1".to_string(),
        "edgelb_reloads_failed_total 1".to_string(),
        format!(
            r#"edgelb_build_info{{version="{}",commit="{commit}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    // Off the runtime's thread: it still drives the test client's connections.
    let (exit, log) = tokio::task::spawn_blocking(move || lb.stop())
        .await
        .expect("stop");
    assert!(exit.success(), "{log}");
}
