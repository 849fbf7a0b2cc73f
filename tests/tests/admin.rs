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
    let slow = Backend::start_delayed("slow", "127.0.0.1:0", Duration::from_secs(5));
    let be = slow.addr.to_string();
    let config = ClientOpts::new(&s.ca.cert_pem).config();

    let admin = free_addr().to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--drain-timeout", "10", "--admin", &admin]);
    let in_flight = tokio::spawn(https::send(addr, SERVER_NAME, config.clone(), get("/")));
    slow.wait_served(1).await;
    let stopped = tokio::task::spawn_blocking(move || lb.stop_with(Signal::SIGTERM));
    // While it drains, /healthz says so: whatever sends traffic by it stops.
    let deadline = Instant::now() + Duration::from_secs(3);
    let healthz = loop {
        let answer = tokio::task::spawn_blocking({
            let admin = admin.clone();
            move || http_get(&admin, "/healthz")
        })
        .await
        .expect("task");
        if answer.contains("503") || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        healthz.starts_with("HTTP/1.0 503") && healthz.ends_with("stopping\n"),
        "{healthz}"
    );
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
    slow.wait_served(2).await;
    let started = Instant::now();
    let (status, _log) = tokio::task::spawn_blocking(move || lb.stop_with(Signal::SIGTERM))
        .await
        .expect("stop");
    assert_eq!(status.code(), Some(0));
    // The request has 5 s left at the backend: a daemon that waited for it would take that.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?} with --drain-timeout 0",
        started.elapsed()
    );
    assert!(
        in_flight.await.expect("task").is_err(),
        "the request outlived a 0 s drain"
    );
}

/// A reload that removes a listener and a backend removes their series from /metrics too: a
/// removed backend must not go on being reported healthy (or down, firing alerts) for the
/// life of the process.
// Multi-threaded: the clients' HTTP/2 connections answer the stopping daemon's GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removes_the_series_of_the_listeners_and_backends_it_removed() {
    let s = Setup::new();
    let kept = Backend::start("kept", "127.0.0.1:0", None);
    let gone = Backend::start("gone", "127.0.0.1:0", None);
    let (web, plain, admin) = (free_addr(), free_addr(), free_addr().to_string());
    let file = |backends: &[&Backend], with_plain: bool| {
        let backends: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
        let plain = if with_plain {
            format!(
                "[[listener]]\nname = \"plain\"\nprotocol = \"http\"\nlisten = \"{plain}\"\ngroup = \"web\"\n"
            )
        } else {
            String::new()
        };
        format!(
            "admin = \"{admin}\"\nxdp_mode = \"off\"\n\n[[group]]\nname = \"web\"\nbackend = [{}]\nhealth_check = \"tcp\"\nhc_interval = 1\n\n[[listener]]\nname = \"web\"\nlisten = \"{web}\"\ncert = \"{}\"\nkey = \"{}\"\ngroup = \"web\"\n\n{plain}",
            backends.join(", "),
            s.server.cert.display(),
            s.server.key.display(),
        )
    };
    let path = s.dir.write("edgelb.toml", file(&[&kept, &gone], true));
    let path = path.to_string_lossy().into_owned();
    let lb = daemon::Daemon::start(None, &["--config", &path], s.dir.path());
    // Both listeners and both backends serve (round robin), so each has its series.
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    for _ in 0..2 {
        let r = https::send(web, SERVER_NAME, config.clone(), get("/"))
            .await
            .expect("GET on web");
        assert_eq!(r.status, 200);
        let r = edgelb_tests::admin::get(&plain.to_string(), "/");
        assert!(
            r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
            "{r}"
        );
    }
    let gone_label = format!("backend=\"{}\"", gone.addr);
    let series = |needle: &str| -> Vec<String> {
        http_get(&admin, "/metrics")
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(needle))
            .map(str::to_string)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while series(&format!(
        "edgelb_backend_healthy{{group=\"web\",{gone_label}}} 1"
    ))
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            http_get(&admin, "/metrics")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(series(&gone_label).len() >= 2, "{:?}", series(&gone_label));
    assert!(!series("listener=\"plain\"").is_empty());
    // /status counts since start: what the removed listener sent the kept backend stays in.
    let kept_requests = || -> u64 {
        let status: serde_json::Value = serde_json::from_str(
            http_get(&admin, "/status")
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or(""),
        )
        .expect("/status is JSON");
        status["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["backends"].as_array().into_iter().flatten())
            .find(|b| b["address"] == kept.addr.to_string())
            .and_then(|b| b["requests"].as_u64())
            .unwrap_or_else(|| panic!("{}", http_get(&admin, "/status")))
    };
    // The listener to be removed has sent the kept backend something.
    let plain_to_kept = format!(
        "edgelb_requests_total{{listener=\"plain\",group=\"web\",backend=\"{}\",code=\"2xx\"}}",
        kept.addr
    );
    for _ in 0..20 {
        if edgelb_tests::admin::metric(&admin, &plain_to_kept).unwrap_or(0.0) >= 1.0 {
            break;
        }
        let r = edgelb_tests::admin::get(&plain.to_string(), "/");
        assert!(
            r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
            "{r}"
        );
    }
    assert!(edgelb_tests::admin::metric(&admin, &plain_to_kept).unwrap_or(0.0) >= 1.0);
    let before = kept_requests();

    std::fs::write(&path, file(&[&kept], false)).expect("rewrite the file");
    lb.signal(Signal::SIGHUP);
    lb.wait_for_log("reloaded", 1).await;
    assert_eq!(
        kept_requests(),
        before,
        "/status lost the removed listener's requests"
    );
    assert_eq!(series(&gone_label), Vec::<String>::new());
    assert_eq!(series("listener=\"plain\""), Vec::<String>::new());
    // What stays is still there and still counts.
    let r = https::send(web, SERVER_NAME, config, get("/"))
        .await
        .expect("GET on web after the reload");
    assert_eq!(r.body, "backend kept\n");
    assert_eq!(kept_requests(), before + 1);
    assert!(
        !series(&format!(
            "edgelb_backend_healthy{{group=\"web\",backend=\"{}\"}} 1",
            kept.addr
        ))
        .is_empty()
    );
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
}

/// An HTTP/2 client that stops answering (its runtime blocked here, as a client gone without
/// closing would be) keeps an idle connection open, and hyper's shutdown waits for it to
/// answer the GOAWAY's PING. SIGTERM gives it a grace second, not the whole drain timeout (a
/// request in flight is still waited for: the test above).
// Current-thread on purpose: blocking it in `stop` silences the client.
#[tokio::test]
async fn sigterm_does_not_wait_the_drain_timeout_for_a_silent_idle_http2_client() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--drain-timeout", "30"]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let mut sender = https::h2_connect(addr, config, None)
        .await
        .expect("HTTP/2 connection");
    let req = hyper::Request::get("https://edgelb.test/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let reply = sender.send_request(req).await.expect("GET over HTTP/2");
    assert_eq!(reply.status(), 200);
    let started = Instant::now();
    // Panics if the daemon is not gone within 10 s.
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
    eprintln!("stop took {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?} for an idle connection",
        started.elapsed()
    );
    drop(sender);
}

/// The other side of the test above: a live HTTP/2 client still taking a response when the
/// stop comes (a small flow-control window, read slowly) gets all of it. A stop that cut
/// connections without a request in flight regardless of the client cut this one at 915 KiB
/// of 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_http2_client_take_the_whole_response() {
    use http_body_util::BodyExt;
    const SIZE: usize = 1024 * 1024;
    // A backend answering every request with SIZE bytes.
    let big = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let be = big.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in big.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\nconnection: close\r\n\r\n"
                );
                let _ = conn.write_all(&vec![b'x'; SIZE]);
            });
        }
    });
    let s = Setup::new();
    let (lb, addr) = s.start(&["--backend", &be, "--drain-timeout", "30"]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let mut sender = https::h2_connect(addr, config, Some(65_535))
        .await
        .expect("HTTP/2 connection");
    let req = hyper::Request::get("https://edgelb.test/big")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let reply = sender.send_request(req).await.expect("GET over HTTP/2");
    assert_eq!(reply.status(), 200);
    let mut body = reply.into_body();
    let mut got = 0;
    let mut stopping = None;
    let mut daemon = Some(lb);
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("cut after {got} of {SIZE} bytes: {e}"));
        got += frame.data_ref().map_or(0, |d| d.len());
        if got + 160 * 1024 >= SIZE {
            // The stop comes with the last 160 KiB still to take, at about 40 KiB/s (four
            // seconds, the grace is one).
            if let Some(lb) = daemon.take() {
                stopping = Some(tokio::task::spawn_blocking(move || lb.stop()));
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    assert_eq!(got, SIZE);
    let (status, log) = stopping.expect("stopped").await.expect("stop");
    assert!(status.success(), "{log}");
}

/// The admin endpoint does not let a client hold a connection (and its descriptor) forever:
/// half a request head, or an idle keep-alive connection, is closed after 5 s. Bound to a
/// wildcard address with remote access allowed, a connection that arrives on loopback is still
/// refused a Host that is a name (DNS rebinding).
#[tokio::test]
async fn admin_connections_are_bounded_and_loopback_ones_refuse_rebound_names() {
    use std::io::{Read, Write};
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let port = free_addr().port();
    let wildcard = format!("0.0.0.0:{port}");
    let (_lb, _addr) = s.start(&[
        "--backend",
        &be,
        "--admin",
        &wildcard,
        "--admin-allow-remote",
    ]);
    let admin = format!("127.0.0.1:{port}");

    let rebound = http_get_with_host(&admin, "evil.example:1234");
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    let by_address = http_get_with_host(&admin, &admin);
    assert!(by_address.starts_with("HTTP/1.1 200"), "{by_address}");

    let mut half = std::net::TcpStream::connect(&admin).expect("connect");
    half.write_all(b"GET /status HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .expect("half a head");
    let mut idle = std::net::TcpStream::connect(&admin).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .expect("request");
    let started = Instant::now();
    let closed_after = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    for (what, s) in [("half a head", &mut half), ("idle keep-alive", &mut idle)] {
        let took = closed_after(s);
        assert!(
            (Duration::from_secs(4)..Duration::from_secs(10)).contains(&took),
            "{what}: closed after {took:?}"
        );
    }
}

/// GET /status as a browser's page script sends it (`Sec-Fetch-Site: same-origin`), with
/// `host` as the Host header; the whole answer.
fn http_get_with_host(addr: &str, host: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /status HTTP/1.1\r\nhost: {host}\r\nsec-fetch-site: same-origin\r\nconnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// A connection holding half a request head when the daemon stops is closed at its request
/// timeout, not waited for until the drain timeout ends (nor, on a listener a reload removed,
/// for ever).
#[tokio::test]
async fn sigterm_does_not_wait_for_a_half_sent_request_head() {
    use tokio::io::AsyncWriteExt;
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--drain-timeout",
        "60",
        "--request-timeout",
        "2",
    ]);
    let mut tls = s.connect_h1(addr).await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: edgelb.test\r\n")
        .await
        .expect("half a head");
    tls.flush().await.expect("flush");
    let started = Instant::now();
    let (status, log) = tokio::task::spawn_blocking(move || lb.stop_with(Signal::SIGTERM))
        .await
        .expect("stop");
    assert!(status.success(), "{status}: {log}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stop took {:?} for a connection with half a request head (request timeout 2 s)",
        started.elapsed()
    );
    drop(tls);
}
