//! Operating a running edgelb: the admin endpoint (/healthz, /metrics, /status and `edgelb
//! status`), and a graceful stop that lets in-flight requests finish.
use std::time::{Duration, Instant};

use edgelb_tests::admin::{get as http_get, request as http};
use edgelb_tests::backend::Backend;
use edgelb_tests::daemon::{self, Signal};
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};

#[tokio::test]
async fn the_admin_endpoint_reports_requests_health_and_status() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (be, admin) = (backend.addr.to_string(), free_addr().to_string());
    let (lb, addr) = s.start(&["--backend", &be, "--admin", &admin, "--access-log"]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    for _ in 0..5 {
        assert_eq!(
            https::send(addr, SERVER_NAME, config.clone(), get("/"))
                .await
                .expect("request")
                .status,
            200
        );
    }
    // A handshake that fails: a client that trusts another CA.
    let other = edgelb_tests::pki::Ca::new(&s.dir, "other");
    assert!(
        https::send(
            addr,
            SERVER_NAME,
            ClientOpts::new(&other.cert_pem).config(),
            get("/")
        )
        .await
        .is_err()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;

    assert!(http_get(&admin, "/healthz").ends_with("ok\n"));
    let metrics = http_get(&admin, "/metrics");
    for line in [
        format!(
            r#"edgelb_requests_total{{listener="listener-1",group="server_group-1",backend="{be}",code="2xx"}} 5"#
        ),
        r#"edgelb_tls_handshakes_total{listener="listener-1",result="ok"} 5"#.to_string(),
        r#"edgelb_tls_handshakes_total{listener="listener-1",result="alert_received"} 1"#
            .to_string(),
        format!(r#"edgelb_backend_healthy{{group="server_group-1",backend="{be}"}} 1"#),
        r#"edgelb_request_duration_seconds_count{listener="listener-1"} 5"#.to_string(),
    ] {
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    let status = http_get(&admin, "/status");
    assert!(
        status.contains(&format!("\"address\": \"{be}\"")) && status.contains("\"healthy\": true"),
        "{status}"
    );
    let log = lb.log();
    let access = log
        .lines()
        .find(|l| l.contains("edgelb::access"))
        .unwrap_or_else(|| panic!("no access log line:\n{log}"));
    for field in [
        "sni=\"edgelb.test\"",
        "status=200",
        "listener=\"listener-1\"",
        "method=GET",
        &format!("backend=\"{be}\""),
    ] {
        assert!(access.contains(field), "{field} missing from {access}");
    }
    let reloaded = http(&admin, "POST", "/reload");
    assert!(
        reloaded.starts_with("HTTP/1.0 200") || reloaded.starts_with("HTTP/1.1 200"),
        "{reloaded}"
    );
    assert!(http_get(&admin, "/metrics").contains("edgelb_reloads_total 1"));
    let table = daemon::run(&["status", "--admin", &admin]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains(&be) && text.contains("healthy"),
        "{text}"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_within_the_drain_timeout() {
    let s = Setup::new();
    let slow = Backend::start_delayed("slow", "127.0.0.1:0", Duration::from_millis(1500));
    let be = slow.addr.to_string();
    let config = ClientOpts::new(&s.ca.cert_pem).config();

    let (lb, addr) = s.start(&["--backend", &be, "--drain-timeout", "10"]);
    let in_flight = tokio::spawn(https::send(addr, SERVER_NAME, config.clone(), get("/")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = tokio::task::spawn_blocking(move || lb.stop_with(Signal::SIGTERM));
    let reply = in_flight
        .await
        .expect("task")
        .expect("the in-flight request was cut");
    assert_eq!((reply.status, reply.body.as_str()), (200, "backend slow\n"));
    let (status, _log) = stopped.await.expect("stop");
    assert_eq!(status.code(), Some(0));

    // A drain timeout shorter than the request: the daemon does not wait for it.
    let (lb, addr) = s.start(&["--backend", &be, "--drain-timeout", "0"]);
    let in_flight = tokio::spawn(https::send(addr, SERVER_NAME, config, get("/")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, _log) = tokio::task::spawn_blocking(move || lb.stop_with(Signal::SIGTERM))
        .await
        .expect("stop");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "stop took {:?} with --drain-timeout 0",
        started.elapsed()
    );
    assert!(
        in_flight.await.expect("task").is_err(),
        "the request outlived a 0 s drain"
    );
}
