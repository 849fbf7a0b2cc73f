//! Backend groups that heal themselves, with real backend processes killed and restarted
//! behind a real edgelb: health checks take dead backends out and bring them back, slow start
//! ramps a returning backend up.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use edgelb_tests::backend::BackendProcess;
use edgelb_tests::daemon::Daemon;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{FAST_CHECKS, SERVER_NAME, Setup, free_addr};

/// How many `marker` lines the log holds now.
fn logged(lb: &Daemon, marker: &str) -> usize {
    lb.log().matches(marker).count()
}

const UNHEALTHY: &str = "backend unhealthy";
const HEALTHY: &str = "backend healthy";

async fn spread(addr: std::net::SocketAddr, s: &Setup, n: usize) -> HashMap<String, usize> {
    let bodies = https::get_many(addr, ClientOpts::new(&s.ca.cert_pem).config(), "/", n)
        .await
        .expect("requests");
    let mut m = HashMap::new();
    for b in bodies {
        *m.entry(b.trim().to_string()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn a_killed_backend_is_taken_out_and_a_restarted_one_comes_back() {
    let s = Setup::new();
    // Below the ephemeral range: the restarted backend binds its old port again, which an
    // outgoing connection could otherwise have taken meanwhile.
    let a = BackendProcess::start("a", &free_addr().to_string());
    let b = BackendProcess::start("b", "127.0.0.1:0");
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let mut args = vec!["--backend", &a_addr, "--backend", &b_addr];
    args.extend(FAST_CHECKS);
    let (lb, addr) = s.start(&args);
    let c = spread(addr, &s, 20).await;
    assert_eq!(
        (c.get("backend a"), c.get("backend b")),
        (Some(&10), Some(&10)),
        "{c:?}"
    );

    let before = logged(&lb, UNHEALTHY);
    a.kill();
    lb.wait_for_log(UNHEALTHY, before + 1).await;
    // Once it is found dead no request fails and none is even tried on the dead backend
    // (every one would otherwise cost a refused connection and a retry).
    let c = spread(addr, &s, 50).await;
    assert_eq!(c.get("backend b"), Some(&50), "{c:?}");
    let log = lb.log();
    assert!(
        log.contains("backend unhealthy")
            && log.contains("connection refused")
            && log.contains(&a_addr),
        "no unhealthy transition with its reason in the log:\n{log}"
    );

    let before = logged(&lb, HEALTHY);
    let a = BackendProcess::start("a", &a_addr);
    lb.wait_for_log(HEALTHY, before + 1).await;
    let c = spread(addr, &s, 40).await;
    assert!(
        c.get("backend a").is_some_and(|n| *n >= 15),
        "the restarted backend got {c:?}"
    );
    assert!(lb.log().contains("backend healthy"), "{}", lb.log());

    let before = logged(&lb, UNHEALTHY);
    a.kill();
    b.kill();
    lb.wait_for_log(UNHEALTHY, before + 2).await;
    let reply = https::send(
        addr,
        SERVER_NAME,
        ClientOpts::new(&s.ca.cert_pem).config(),
        get("/"),
    )
    .await
    .expect("request");
    assert_eq!(reply.status, 503, "no healthy backend: {}", reply.body);
}

#[tokio::test]
async fn an_http_check_takes_out_a_backend_answering_500() {
    let s = Setup::new();
    let a = BackendProcess::start("a", "127.0.0.1:0");
    let a_addr = a.addr.to_string();
    let mut args = vec![
        "--backend",
        &a_addr,
        "--health-check",
        "http",
        "--hc-path",
        "/status/500",
    ];
    args.extend(FAST_CHECKS);
    let (lb, addr) = s.start(&args);
    lb.wait_for_log(UNHEALTHY, 1).await;
    let reply = https::send(
        addr,
        SERVER_NAME,
        ClientOpts::new(&s.ca.cert_pem).config(),
        get("/"),
    )
    .await
    .expect("request");
    assert_eq!(reply.status, 503);
    assert!(lb.log().contains("status 500"), "{}", lb.log());
}

#[tokio::test]
async fn slow_start_ramps_a_returning_backend_up() {
    let s = Setup::new();
    // Below the ephemeral range: the restarted backend binds its old port again, which an
    // outgoing connection could otherwise have taken meanwhile.
    let a = BackendProcess::start("a", &free_addr().to_string());
    let b = BackendProcess::start("b", "127.0.0.1:0");
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let mut args = vec![
        "--backend",
        &a_addr,
        "--backend",
        &b_addr,
        "--slow-start",
        "30",
    ];
    args.extend(FAST_CHECKS);
    let (lb, addr) = s.start(&args);
    a.kill();
    lb.wait_for_log(UNHEALTHY, 1).await;
    let _a = BackendProcess::start("a", &a_addr);
    // Wait for the healthy transition, then sample the share of the returning backend.
    lb.wait_for_log(HEALTHY, 1).await;
    let back = Instant::now();
    eprintln!(
        "saw healthy at {:?}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
    );
    let mut shares = Vec::new();
    for at in [1u64, 10, 20] {
        tokio::time::sleep_until((back + Duration::from_secs(at)).into()).await;
        let c = spread(addr, &s, 300).await;
        shares.push((at, *c.get("backend a").unwrap_or(&0) as f64 / 300.0));
    }
    eprintln!("slow start, share of the returning backend (t s, share): {shares:?}");
    eprintln!(
        "{}",
        lb.log()
            .lines()
            .filter(|l| l.contains("healthy"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Weight w = t/30 of full against the other backend's 1: share = w / (w + 1).
    for (at, share) in &shares {
        let w = *at as f64 / 30.0;
        let expected = w / (w + 1.0);
        assert!(
            (share - expected).abs() < 0.08,
            "at {at} s the share was {share:.3}, expected about {expected:.3}: {shares:?}"
        );
    }
}

/// What a reload does to backend health, through a config file: a reload that changes the
/// list keeps what the checks found of the backends it keeps (a backend found dead does not
/// come back with the reload), and turning the checks off puts every backend back in (nothing
/// would ever check it again).
#[tokio::test]
async fn reloads_keep_what_the_checks_found_and_turning_them_off_lets_every_backend_in() {
    let s = Setup::new();
    let a = BackendProcess::start("a", "127.0.0.1:0");
    let b = BackendProcess::start("b", "127.0.0.1:0");
    let c = BackendProcess::start("c", "127.0.0.1:0");
    let (a_addr, b_addr, c_addr) = (a.addr.to_string(), b.addr.to_string(), c.addr.to_string());
    let admin = edgelb_tests::listener::free_addr().to_string();
    let listen = edgelb_tests::listener::free_addr();
    let file = s.dir.path().join("edgelb.toml");
    let write = |backends: &[&str], check: &str| {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        let text = format!(
            r#"xdp_mode = "off"
admin = "{admin}"

[[group]]
name = "web"
backend = [{list}]
health_check = "{check}"
hc_interval = 1
hc_timeout = 1
hc_retries = 2

[[listener]]
name = "secure"
listen = "{listen}"
cert = "{cert}"
key = "{key}"
group = "web"
"#,
            list = list.join(", "),
            cert = s.server.cert.display(),
            key = s.server.key.display(),
        );
        std::fs::write(&file, text).expect("write the config");
    };
    // Backend address -> healthy, from /status.
    let health = || {
        let text = edgelb_tests::admin::get(&admin, "/status");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let mut m = HashMap::new();
        for b in status["groups"][0]["backends"]
            .as_array()
            .into_iter()
            .flatten()
        {
            m.insert(
                b["address"].as_str().unwrap_or_default().to_string(),
                b["healthy"].as_bool(),
            );
        }
        m
    };
    write(&[&a_addr, &b_addr], "tcp");
    let path = file.display().to_string();
    let lb = edgelb_tests::daemon::Daemon::start(None, &["--config", &path], s.dir.path());
    b.kill();
    lb.wait_for_log(UNHEALTHY, 1).await;
    assert_eq!(health().get(&b_addr), Some(&Some(false)), "{:?}", health());

    write(&[&a_addr, &b_addr, &c_addr], "tcp");
    lb.signal(edgelb_tests::daemon::Signal::SIGHUP);
    lb.wait_for_log("reloaded", 1).await;
    let after = health();
    assert_eq!(
        (after.get(&a_addr), after.get(&b_addr), after.get(&c_addr)),
        (Some(&Some(true)), Some(&Some(false)), Some(&Some(true))),
        "right after the reload that added c"
    );
    // A request tried on the dead backend would be answered by another, after a retry
    // that the log names; none is.
    let logged = lb.log().len();
    spread(listen, &s, 30).await;
    let tried = lb.log()[logged..]
        .lines()
        .filter(|l| l.contains("backend request failed") && l.contains(&b_addr))
        .count();
    assert_eq!(
        tried,
        0,
        "the dead backend was given requests:\n{}",
        lb.log()
    );

    write(&[&a_addr, &b_addr, &c_addr], "off");
    lb.signal(edgelb_tests::daemon::Signal::SIGHUP);
    lb.wait_for_log("reloaded", 2).await;
    assert_eq!(
        health().get(&b_addr),
        Some(&Some(true)),
        "with the checks off, every backend is in"
    );
    drop(a);
    drop(c);
}
