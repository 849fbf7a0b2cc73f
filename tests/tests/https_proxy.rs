//! The HTTPS listener's HTTP side, with real clients, a real edgelb and real backends:
//! client-IP headers, WebSocket upgrades, timeouts, retries and error statuses, HTTPS backends.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use edgelb_tests::backend::{Backend, dead_port};
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup};
use http_body_util::Full;
use hyper::Request;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn header<'a>(echo: &'a str, name: &str) -> Option<&'a str> {
    echo.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test]
async fn backends_learn_the_client_address_and_clients_cannot_forge_it() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let forged = |path: &str| {
        let mut req = get(path);
        let h = req.headers_mut();
        h.insert("x-forwarded-for", "198.51.100.1".parse().expect("static"));
        h.insert("x-real-ip", "198.51.100.66".parse().expect("static"));
        h.insert("x-forwarded-proto", "gopher".parse().expect("static"));
        h.insert(
            "x-forwarded-elb-ip",
            "198.51.100.99".parse().expect("static"),
        );
        // The same names with underscores, which CGI-style backends read as the real ones.
        h.insert("x_real_ip", "198.51.100.66".parse().expect("static"));
        h.insert("x_client_verify", "SUCCESS".parse().expect("static"));
        h.insert("x_app_token", "kept".parse().expect("static"));
        req
    };

    let (lb, addr) = s.start(&["--backend", &be]);
    let echo = https::send(addr, SERVER_NAME, config.clone(), forged("/echo"))
        .await
        .expect("request")
        .body;
    assert_eq!(
        header(&echo, "x-forwarded-for"),
        Some("198.51.100.1, 127.0.0.1"),
        "{echo}"
    );
    assert_eq!(header(&echo, "x-real-ip"), Some("127.0.0.1"), "{echo}");
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("https"), "{echo}");
    assert_eq!(
        header(&echo, "x-forwarded-port"),
        Some(addr.port().to_string().as_str()),
        "{echo}"
    );
    assert_eq!(header(&echo, "x-forwarded-elb-ip"), None, "{echo}");
    assert_eq!(header(&echo, "host"), Some("edgelb.test"), "{echo}");
    assert_eq!(header(&echo, "x_real_ip"), None, "{echo}");
    assert_eq!(header(&echo, "x_client_verify"), None, "{echo}");
    assert_eq!(header(&echo, "x_app_token"), Some("kept"), "{echo}");
    drop(lb);

    let (lb, addr) = s.start(&["--backend", &be, "--transfer-lb-ip", "203.0.113.5"]);
    let echo = https::send(addr, SERVER_NAME, config.clone(), forged("/echo"))
        .await
        .expect("request")
        .body;
    assert_eq!(
        header(&echo, "x-forwarded-elb-ip"),
        Some("203.0.113.5"),
        "{echo}"
    );
    drop(lb);

    let (_lb, addr) = s.start(&["--backend", &be, "--transfer-lb-ip"]);
    let echo = https::send(addr, SERVER_NAME, config, forged("/echo"))
        .await
        .expect("request")
        .body;
    assert_eq!(
        header(&echo, "x-forwarded-elb-ip"),
        Some("127.0.0.1"),
        "{echo}"
    );
}

#[tokio::test]
async fn websocket_upgrades_pass_through_both_ways() {
    let s = Setup::new();
    let backend = Backend::start("ws", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let admin = edgelb_tests::listener::free_addr().to_string();
    let (_lb, addr) = s.start(&[
        "--backend",
        &be,
        "--max-connections",
        "1",
        "--idle-timeout",
        "2",
        "--admin",
        &admin,
    ]);
    // Requests in flight on the backend, as least connections counts them.
    let active = || {
        let text = edgelb_tests::admin::get(&admin, "/status");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        status["groups"][0]["backends"][0]["active_requests"].as_u64()
    };
    let mut tls = s.connect_h1(addr).await;
    tls.write_all(b"GET /chat HTTP/1.1\r\nhost: edgelb.test\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.expect("write upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte))
            .await
            .expect("101 in time")
            .expect("read");
        assert!(
            n == 1,
            "connection closed before the 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello through edgelb"[..], b"second frame"] {
        tls.write_all(msg).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(back, msg);
    }
    // Nothing moves through the tunnel from here on.
    let quiet = Instant::now();

    // An open tunnel is a connection to its backend, for least connections too.
    assert_eq!(
        active(),
        Some(1),
        "requests on the backend with a tunnel open"
    );
    // The tunnel is still the connection it came from: it holds the one place
    // `--max-connections 1` allows...
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        https::send(addr, SERVER_NAME, config.clone(), get("/")),
    )
    .await
    .expect("an answer or a refusal in time");
    assert!(
        second.is_err(),
        "a second connection was served past --max-connections 1 while the tunnel was open: {second:?}"
    );
    // ... and is closed once nothing has moved through it for the idle timeout (2 s).
    let mut byte = [0u8; 1];
    let end = tokio::time::timeout(Duration::from_secs(8), tls.read(&mut byte))
        .await
        .expect("a quiet tunnel still open after 8 s");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?} from a quiet tunnel");
    assert!(
        quiet.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before the idle timeout",
        quiet.elapsed()
    );
    // Its place is free again, and its backend has nothing in flight (both given back a moment
    // after the socket is closed).
    let closed = Instant::now();
    while active() != Some(0) {
        assert!(
            closed.elapsed() < Duration::from_secs(5),
            "requests on the backend after the tunnel closed: {:?}",
            active()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let third = loop {
        match https::send(addr, SERVER_NAME, config.clone(), get("/")).await {
            Ok(reply) => break reply,
            Err(e) => assert!(
                closed.elapsed() < Duration::from_secs(5),
                "not served once the tunnel closed: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(third.status, 200);
}

#[tokio::test]
async fn a_backend_that_does_not_answer_in_time_gives_504_or_a_retry() {
    let s = Setup::new();
    let slow = Backend::start_delayed("slow", "127.0.0.1:0", Duration::from_secs(10));
    let fast = Backend::start("fast", "127.0.0.1:0", None);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let slow_be = slow.addr.to_string();

    let (lb, addr) = s.start(&["--backend", &slow_be, "--response-timeout", "1"]);
    let started = Instant::now();
    let reply = https::send(addr, SERVER_NAME, config.clone(), get("/"))
        .await
        .expect("request");
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "504 after {took:?} with a 1 s response timeout"
    );
    drop(lb);

    // Slow first (round robin starts with it), fast second: an idempotent request moves on.
    let fast_be = fast.addr.to_string();
    let (_lb, addr) = s.start(&[
        "--backend",
        &slow_be,
        "--backend",
        &fast_be,
        "--response-timeout",
        "1",
    ]);
    let reply = https::send(addr, SERVER_NAME, config.clone(), get("/"))
        .await
        .expect("request");
    assert_eq!((reply.status, reply.body.as_str()), (200, "backend fast\n"));
    // A POST is not retried: it may have had an effect on the slow backend.
    let post = Request::post("/")
        .header("host", "edgelb.test")
        .body(Full::new(Bytes::from_static(b"order=1")))
        .expect("static");
    let replies = [
        https::send(addr, SERVER_NAME, config.clone(), post)
            .await
            .expect("post"),
        https::send(
            addr,
            SERVER_NAME,
            config.clone(),
            Request::post("/")
                .header("host", "edgelb.test")
                .body(Full::new(Bytes::from_static(b"order=2")))
                .expect("static"),
        )
        .await
        .expect("post"),
    ];
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&504) && statuses.contains(&200),
        "POSTs over slow+fast gave {statuses:?}"
    );
}

#[tokio::test]
async fn refused_backends_are_skipped_and_errors_are_502_and_503() {
    let s = Setup::new();
    let live = Backend::start("live", "127.0.0.1:0", None);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let dead = dead_port().to_string();
    let live_be = live.addr.to_string();

    let (lb, addr) = s.start(&["--backend", &dead, "--backend", &live_be]);
    for i in 0..6 {
        let body = if i % 2 == 0 {
            Bytes::new()
        } else {
            Bytes::from_static(b"a=1")
        };
        let req = Request::post("/")
            .header("host", "edgelb.test")
            .body(Full::new(body))
            .expect("static");
        let reply = https::send(addr, SERVER_NAME, config.clone(), req)
            .await
            .expect("request");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "backend live\n"),
            "request {i}"
        );
    }
    drop(lb);

    let (lb, addr) = s.start(&["--backend", &dead]);
    assert_eq!(
        https::send(addr, SERVER_NAME, config.clone(), get("/"))
            .await
            .expect("request")
            .status,
        502
    );
    drop(lb);

    let zero = format!("{live_be},weight=0");
    let (_lb, addr) = s.start(&["--backend", &zero]);
    assert_eq!(
        https::send(addr, SERVER_NAME, config, get("/"))
            .await
            .expect("request")
            .status,
        503
    );
    assert_eq!(live.served(), 6, "the weight-0 backend received a request");
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_idle_connections_closed() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let mut opts = ClientOpts::new(&s.ca.cert_pem);
    opts.alpn = &[b"http/1.1"];
    let config = opts.config();
    // Slowloris on a kept-alive connection: after one normal request, the next request's
    // headers trickle in a byte at a time and never end. The idle timeout is long, so only
    // the request timeout can cut it off.
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--request-timeout",
        "1",
        "--idle-timeout",
        "30",
    ]);
    let mut tls = https::connect(addr, SERVER_NAME, config.clone())
        .await
        .expect("connect");
    tls.write_all(b"GET / HTTP/1.1\r\nhost: edgelb.test\r\n\r\n")
        .await
        .expect("request");
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.expect("response");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let started = Instant::now();
    let mut closed_after = None;
    for b in b"GET / HTTP/1.1\r\nhost: edgelb.test\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .cycle()
        .take(200)
    {
        if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("a trickling client kept its connection for 40 s");
    assert!(
        closed_after < Duration::from_secs(5),
        "slow client cut off only after {closed_after:?} (request timeout 1 s)"
    );
    assert_eq!(backend.served(), 1);
    drop(lb);

    let (_lb, addr) = s.start(&[
        "--backend",
        &be,
        "--request-timeout",
        "1",
        "--idle-timeout",
        "2",
    ]);
    // Keep-alive: a connection with nothing to do is closed after the idle timeout, not before.
    let mut tls = https::connect(addr, SERVER_NAME, config)
        .await
        .expect("connect");
    // Before the request: the idle time the server counts from its answer is less than this.
    let idle_from = Instant::now();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: edgelb.test\r\n\r\n")
        .await
        .expect("request");
    let n = tls.read(&mut buf).await.expect("response");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let eof = tokio::time::timeout(Duration::from_secs(8), tls.read(&mut buf))
        .await
        .expect("idle connection still open after 8 s");
    let idle = idle_from.elapsed();
    assert!(
        matches!(eof, Ok(0) | Err(_)),
        "unexpected data on an idle connection"
    );
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_secs(5),
        "idle connection closed after {idle:?} (idle timeout 2 s)"
    );
}

#[tokio::test]
async fn https_backends_are_verified_against_the_backend_ca() {
    let s = Setup::new();
    let backend_ca = edgelb_tests::pki::Ca::new(&s.dir, "backends");
    let leaf = backend_ca.server(
        &s.dir,
        "backend",
        &["app.internal.test"],
        &["127.0.0.1".parse::<IpAddr>().expect("static")],
    );
    let backend = Backend::start_tls("tls", "127.0.0.1:0", &leaf.cert, &leaf.key);
    let be = backend.addr.to_string();
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let good_ca = backend_ca.cert_pem.to_string_lossy().into_owned();
    let wrong_ca = s.ca.cert_pem.to_string_lossy().into_owned();

    for (args, want) in [
        (vec!["--backend-ca", good_ca.as_str()], 200),
        (
            vec![
                "--backend-ca",
                good_ca.as_str(),
                "--hc-domain",
                "app.internal.test",
            ],
            200,
        ),
        (
            vec![
                "--backend-ca",
                good_ca.as_str(),
                "--hc-domain",
                "other.internal.test",
            ],
            502,
        ),
        (vec!["--backend-ca", wrong_ca.as_str()], 502),
        (vec!["--backend-insecure"], 200),
    ] {
        let mut all = vec!["--backend", be.as_str(), "--backend-protocol", "https"];
        all.extend(args.iter().copied());
        let (_lb, addr) = s.start(&all);
        let reply = https::send(addr, SERVER_NAME, config.clone(), get("/"))
            .await
            .expect("request");
        assert_eq!(reply.status, want, "{args:?}: {}", reply.body);
        if want == 200 {
            assert_eq!(reply.body, "backend tls\n");
        }
    }
}

#[test]
fn an_http_listener_proxies_in_clear_and_says_so() {
    use std::io::{Read, Write};
    let backend = Backend::start("plain", "127.0.0.1:0", None);
    let dir = edgelb_tests::certs::TempDir::new();
    let (_lb, addr) = edgelb_tests::listener::start_http(backend.addr, &[], dir.path());
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.write_all(b"GET /echo HTTP/1.1\r\nhost: edgelb.test\r\nconnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
    assert!(text.contains("x-real-ip: 127.0.0.1\n"), "{text}");
}
