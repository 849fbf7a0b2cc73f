//! HTTP/3 (`--http3 on`) with an independent client, Python's aioquic: requests through to
//! real backends with the listener's rules and headers, Alt-Svc on HTTP/1.1 and HTTP/2, SNI
//! and mutual TLS over QUIC, the listener's access control at the XDP program for its UDP port,
//! and a drain that lets requests in flight finish.
use std::time::Duration;

use edgelb::proxy::sticky::LB_COOKIE;
use edgelb_tests::backend::Backend;
use edgelb_tests::daemon::{Daemon, xdp_counter};
use edgelb_tests::h3::{self, Request};
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup};
use edgelb_tests::netns::{CLIENT_A_V4, CLIENT_B_V4, ClientLb, LB_V4};
use edgelb_tests::packet::parse;
use edgelb_tests::privilege::root_or_skip;

fn lines(body: &str) -> Vec<&str> {
    body.lines().collect()
}

#[tokio::test]
async fn requests_over_http3_reach_the_backend_as_over_http2_and_alt_svc_advertises_it() {
    if !h3::client_or_skip("requests_over_http3_reach_the_backend") {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--http3",
        "on",
        "--transfer-lb-ip",
        "--rule",
        "name=maintenance;path=/maintenance;action=fixed:503:text/plain:back soon",
        "--access-log",
    ]);
    let port = addr.port();
    let client = Request::get(&s.ca.cert_pem, SERVER_NAME);

    let replies = client
        .send(
            None,
            "127.0.0.1",
            port,
            &["/", "/echo", "/maintenance", "/alt-svc/clear"],
        )
        .unwrap_or_else(|e| panic!("HTTP/3 GETs: {e:?}\n{}", lb.log()));
    assert_eq!(replies.len(), 4);
    // Every answer carries the edge's own Alt-Svc, a backend's (`clear` here, which would
    // turn the client away from HTTP/3) replaced, as over HTTP/1.1 and HTTP/2.
    let want = format!("h3=\":{port}\"; ma=86400");
    for reply in &replies {
        assert_eq!(reply.header("alt-svc"), Some(want.as_str()), "{reply:?}");
    }
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (200, "backend a\n")
    );
    assert_eq!(replies[0].header("x-backend"), Some("a"));
    let echo = lines(&replies[1].body);
    for expected in [
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: https",
        "host: edgelb.test",
        "x-forwarded-elb-ip: 127.0.0.1",
    ] {
        assert!(echo.contains(&expected), "{expected:?} missing: {echo:?}");
    }
    // The rule answers, as it does over HTTP/1.1 and HTTP/2.
    assert_eq!(
        (replies[2].status, replies[2].body.as_str()),
        (503, "back soon")
    );

    let mut post = client.clone();
    post.method = "POST";
    post.data = Some("hello over quic");
    let replies = post
        .send(None, "127.0.0.1", port, &["/echo"])
        .unwrap_or_else(|e| panic!("HTTP/3 POST: {e:?}"));
    assert_eq!(replies[0].status, 200);
    assert!(
        lines(&replies[0].body).contains(&"body-bytes: 15"),
        "{}",
        replies[0].body
    );
    assert_eq!(backend.served(), 4);

    // HTTP/1.1 and HTTP/2 answers advertise HTTP/3 on the same port, a backend's replaced.
    for alpn in [&[&b"h2"[..]][..], &[&b"http/1.1"[..]][..]] {
        let mut opts = ClientOpts::new(&s.ca.cert_pem);
        opts.alpn = alpn;
        let reply = https::send(addr, SERVER_NAME, opts.config(), get("/alt-svc/clear"))
            .await
            .expect("a TCP request");
        assert_eq!(
            reply.headers.get("alt-svc").and_then(|v| v.to_str().ok()),
            Some(want.as_str()),
            "{alpn:?}"
        );
    }
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("method=POST target=\"/echo\" version=HTTP/3") && log.contains("status=503"),
        "HTTP/3 requests are in the access log:\n{log}"
    );
}

/// HTTP/3 requests are balanced and pinned as HTTP/2's are: without a cookie they take turns
/// between two backends; edgelb's lb-cookie, sent back, keeps every later request on the
/// backend that set it.
#[test]
fn http3_requests_are_balanced_and_pinned_by_the_lb_cookie() {
    if !h3::client_or_skip("http3_requests_are_balanced_and_pinned_by_the_lb_cookie") {
        return;
    }
    let s = Setup::new();
    let a = Backend::start("a", "127.0.0.1:0", None);
    let b = Backend::start("b", "127.0.0.1:0", None);
    let (be_a, be_b) = (a.addr.to_string(), b.addr.to_string());
    let (lb, addr) = s.start(&[
        "--backend",
        &be_a,
        "--backend",
        &be_b,
        "--http3",
        "on",
        "--sticky-session",
        "lb-cookie",
    ]);
    let port = addr.port();
    let client = Request::get(&s.ca.cert_pem, SERVER_NAME);
    let replies = client
        .send(None, "127.0.0.1", port, &["/", "/", "/", "/"])
        .unwrap_or_else(|e| panic!("HTTP/3 GETs: {e:?}\n{}", lb.log()));
    let served: Vec<&str> = replies.iter().map(|r| r.body.as_str()).collect();
    assert!(
        served.contains(&"backend a\n") && served.contains(&"backend b\n"),
        "without a cookie both backends take requests: {served:?}"
    );
    let first = &replies[0];
    let cookie = first
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| {
            v.split(';')
                .next()
                .filter(|c| c.starts_with(&format!("{LB_COOKIE}=")))
        })
        .unwrap_or_else(|| panic!("no lb-cookie set over HTTP/3: {:?}", first.headers))
        .to_string();
    // As browsers send it over HTTP/2 and HTTP/3: one field per cookie.
    let mut pinned = client.clone();
    pinned.headers = vec![format!("cookie:{cookie}"), "cookie:theme=dark".into()];
    let replies = pinned
        .send(None, "127.0.0.1", port, &["/", "/", "/", "/", "/echo"])
        .unwrap_or_else(|e| panic!("HTTP/3 GETs with the cookie: {e:?}\n{}", lb.log()));
    for reply in &replies[..4] {
        assert_eq!(
            reply.body, first.body,
            "the cookie pins the client to the backend that set it"
        );
    }
    assert_eq!(
        replies[4].header("x-backend"),
        first.header("x-backend"),
        "the cookie pins /echo too"
    );
    // The HTTP/1.1 backend gets the fields joined into one cookie line (RFC 9114 4.2.1).
    let cookies: Vec<&str> = lines(&replies[4].body)
        .into_iter()
        .filter(|l| l.starts_with("cookie:"))
        .collect();
    assert_eq!(cookies, [format!("cookie: {cookie}; theme=dark")]);
}

#[tokio::test]
async fn without_http3_there_is_no_quic_and_no_alt_svc() {
    if !h3::client_or_skip("without_http3_there_is_no_quic_and_no_alt_svc") {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (_lb, addr) = s.start(&["--backend", &be]);
    let mut client = Request::get(&s.ca.cert_pem, SERVER_NAME);
    client.timeout = 1.0;
    let failed = client
        .send(None, "127.0.0.1", addr.port(), &["/"])
        .expect_err("HTTP/3 answered with --http3 off");
    assert_eq!(failed.code, Some(2), "{failed:?}");
    let reply = https::send(
        addr,
        SERVER_NAME,
        ClientOpts::new(&s.ca.cert_pem).config(),
        get("/"),
    )
    .await
    .expect("HTTPS");
    assert!(reply.headers.get("alt-svc").is_none());
}

#[test]
fn sni_and_mutual_tls_apply_to_quic() {
    if !h3::client_or_skip("sni_and_mutual_tls_apply_to_quic") {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let shop = s.ca.server(&s.dir, "shop", &["shop.example.com"], &[]);
    let sni = format!(
        "shop.example.com={}:{}",
        shop.cert.display(),
        shop.key.display()
    );
    let clients = edgelb_tests::pki::Ca::new(&s.dir, "clients");
    let other = edgelb_tests::pki::Ca::new(&s.dir, "other");
    let good = clients.client(&s.dir, "good", "client-1");
    let stranger = other.client(&s.dir, "stranger", "client-2");
    let client_ca = clients.cert_pem.display().to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--http3",
        "on",
        "--sni-cert",
        &sni,
        "--client-ca",
        &client_ca,
    ]);
    let port = addr.port();

    // aioquic verifies the certificate against the name it sends: only the SNI certificate
    // passes for shop.example.com, only the default one for edgelb.test.
    let mut ok = Request::get(&s.ca.cert_pem, "shop.example.com");
    ok.client_cert = Some((&good.cert, &good.key));
    let reply = ok
        .send(None, "127.0.0.1", port, &["/echo"])
        .unwrap_or_else(|e| {
            panic!(
                "SNI name with a good client certificate: {e:?}\n{}",
                lb.log()
            )
        });
    assert_eq!(reply[0].status, 200);
    let echo = lines(&reply[0].body);
    assert!(echo.contains(&"host: shop.example.com"), "{echo:?}");
    assert!(echo.contains(&"x-client-verify: SUCCESS"), "{echo:?}");
    assert!(
        echo.contains(&"x-client-cert-subject: CN=client-1, O=edgelb tests"),
        "{echo:?}"
    );
    let mut default_name = ok.clone();
    default_name.server_name = SERVER_NAME;
    assert_eq!(
        default_name
            .send(None, "127.0.0.1", port, &["/"])
            .expect("the default certificate")[0]
            .status,
        200
    );

    let mut none = Request::get(&s.ca.cert_pem, SERVER_NAME);
    none.timeout = 2.0;
    let mut wrong = none.clone();
    wrong.client_cert = Some((&stranger.cert, &stranger.key));
    for (what, client) in [("no certificate", none), ("another CA's", wrong)] {
        let failed = client
            .send(None, "127.0.0.1", port, &["/"])
            .expect_err(what);
        assert!(matches!(failed.code, Some(2 | 3)), "{what}: {failed:?}");
    }
    assert_eq!(backend.served(), 2, "an unauthenticated client was served");
}

#[test]
fn a_drain_lets_http3_requests_in_flight_finish() {
    if !h3::client_or_skip("a_drain_lets_http3_requests_in_flight_finish") {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start_delayed("slow", "127.0.0.1:0", Duration::from_millis(1500));
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--http3", "on", "--drain-timeout", "10"]);
    let ca = s.ca.cert_pem.clone();
    let port = addr.port();
    let request = std::thread::spawn(move || {
        Request::get(&ca, SERVER_NAME).send(None, "127.0.0.1", port, &["/"])
    });
    // The request reaches the backend, then the daemon is told to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend.served() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(backend.served(), 1, "the request never reached the backend");
    let (status, log) = lb.stop();
    let reply = request.join().expect("client thread");
    let reply = reply.unwrap_or_else(|e| panic!("the request in flight was cut: {e:?}\n{log}"));
    assert_eq!(
        (reply[0].status, reply[0].body.as_str()),
        (200, "backend slow\n")
    );
    assert!(status.success(), "{log}");
}

/// GOAWAY names the first request stream not processed (RFC 9114 5.2): a request the client
/// opens on that stream after it, while another is still in flight, is rejected
/// (H3_REQUEST_REJECTED, so the client may send it again elsewhere), not served.
#[test]
fn a_request_on_the_stream_goaway_names_is_rejected_not_served() {
    if !h3::client_or_skip("a_request_on_the_stream_goaway_names_is_rejected_not_served") {
        return;
    }
    let s = Setup::new();
    // Wide margins: the GOAWAY must reach the client before it opens the second stream, and
    // under load getting there (request at the backend, SIGTERM, the daemon's drain) can take
    // a second or two.
    let backend = Backend::start_delayed("slow", "127.0.0.1:0", Duration::from_secs(8));
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--http3", "on", "--drain-timeout", "15"]);
    let ca = s.ca.cert_pem.clone();
    let port = addr.port();
    let client = std::thread::spawn(move || {
        let mut r = Request::get(&ca, SERVER_NAME);
        r.stagger = Some(4.0);
        r.timeout = 15.0;
        r.send(None, "127.0.0.1", port, &["/first", "/second"])
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend.served() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // GOAWAY now, naming stream 4; the client opens stream 4 a few seconds later.
    lb.signal(edgelb_tests::daemon::Signal::SIGTERM);
    let replies = client
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("{e:?}\n{}", lb.log()));
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (200, "backend slow\n")
    );
    assert_eq!(replies[1].status, 0, "{:?}", replies[1]);
    assert!(replies[1].body.contains("code 267"), "{:?}", replies[1]);
    assert_eq!(backend.served(), 1, "the request after GOAWAY was served");
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
}

/// As root: the client and edgelb in namespaces joined by a veth pair, edgelb's XDP program
/// attached in native mode. The listener's access control covers its UDP port: a client the
/// whitelist does not name has its QUIC packets dropped at XDP and never reaches userspace.
#[test]
fn the_access_control_of_an_http3_listener_drops_quic_at_xdp() {
    if !root_or_skip("the_access_control_of_an_http3_listener_drops_quic_at_xdp")
        || !h3::client_or_skip("the_access_control_of_an_http3_listener_drops_quic_at_xdp")
    {
        return;
    }
    let topo = ClientLb::new();
    let dir = edgelb_tests::certs::TempDir::new();
    let cert = edgelb_tests::certs::self_signed(&dir, "lb", &[parse(LB_V4)]);
    let backend = Backend::start("b1", "127.0.0.1:0", Some(&topo.lb.path()));
    let (cert_path, key_path, be) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
        backend.addr.to_string(),
    );
    for (mode, served, dropped) in [
        ("whitelist", CLIENT_A_V4, CLIENT_B_V4),
        ("blacklist", CLIENT_B_V4, CLIENT_A_V4),
    ] {
        let ip_group = format!("{CLIENT_A_V4}/32");
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
                &be,
                "--http3",
                "on",
                "--access-control",
                mode,
                "--ip-group",
                &ip_group,
                "--xdp-iface",
                &topo.lb_if,
                "--xdp-mode",
                "native",
            ],
            dir.path(),
        );
        let mut client = Request::get(&cert.cert, LB_V4);
        client.bind = Some(served);
        let reply = client
            .send(Some(&topo.client), LB_V4, 8443, &["/"])
            .unwrap_or_else(|e| panic!("{mode}: {served} over HTTP/3: {e:?}\n{}", d.log()));
        assert_eq!(
            (reply[0].status, reply[0].body.as_str()),
            (200, "backend b1\n")
        );

        client.bind = Some(dropped);
        client.timeout = 1.5;
        let failed = client
            .send(Some(&topo.client), LB_V4, 8443, &["/"])
            .expect_err("a refused client was served over HTTP/3");
        assert_eq!(failed.code, Some(2), "{mode}: {failed:?}");
        let (status, log) = d.stop();
        assert!(status.success(), "{log}");
        // Its Initial packet and the client's retransmissions, each dropped at the NIC.
        let drops = xdp_counter(&log, "listener-1", "dropped_acl");
        assert!(drops >= 2, "{mode}: dropped_acl={drops}:\n{log}");
        assert!(
            !log.contains("connection refused: access control"),
            "{mode}: a refused client reached userspace:\n{log}"
        );
    }
    assert_eq!(backend.served(), 2);
}

/// h3 reads a frame other than DATA whole before it decodes or skips it: a frame declaring
/// 1 GiB is refused at its header instead of buffered. On a request stream that stream is
/// stopped (H3_EXCESSIVE_LOAD) and the connection serves on; on the control stream the
/// connection ends.
#[test]
fn frames_declaring_more_than_edgelb_takes_are_refused_not_buffered() {
    if !h3::client_or_skip("frames_declaring_more_than_edgelb_takes_are_refused_not_buffered") {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--http3", "on"]);
    let mut on_request = Request::get(&s.ca.cert_pem, SERVER_NAME);
    on_request.big_frame = Some((false, 64 * 1024));
    let replies = on_request
        .send(None, "127.0.0.1", addr.port(), &["/"])
        .unwrap_or_else(|e| panic!("a large frame on a request stream: {e:?}\n{}", lb.log()));
    assert_eq!(replies[0].status, 200, "the connection serves on");

    let mut on_control = Request::get(&s.ca.cert_pem, SERVER_NAME);
    on_control.big_frame = Some((true, 512 * 1024));
    on_control.timeout = 2.0;
    let failed = on_control
        .send(None, "127.0.0.1", addr.port(), &["/"])
        .expect_err("a connection whose control stream carried a 1 GiB frame was served");
    assert!(matches!(failed.code, Some(2 | 3)), "{failed:?}");
    assert_eq!(backend.served(), 1);
}

/// A reload turns HTTP/3 on and off on a listener that keeps its TCP sockets: QUIC answers
/// only while it is on, and HTTP/1.1 answers advertise it only then.
#[tokio::test]
async fn a_reload_turns_http3_on_and_off() {
    if !h3::client_or_skip("a_reload_turns_http3_on_and_off") {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let addr = edgelb_tests::listener::free_addr();
    let write = |http3: &str| {
        s.dir.write(
            "edgelb.toml",
            format!(
                "xdp_mode = \"off\"\n\n[[group]]\nname = \"web\"\nbackend = [\"{}\"]\nhealth_check = \"off\"\n\n\
                 [[listener]]\nname = \"secure\"\nlisten = \"{addr}\"\ncert = \"{}\"\nkey = \"{}\"\ngroup = \"web\"\nhttp3 = \"{http3}\"\n",
                backend.addr,
                s.server.cert.display(),
                s.server.key.display()
            ),
        )
    };
    let path = write("off").display().to_string();
    let lb = Daemon::start(None, &["--config", &path], s.dir.path());
    let mut client = Request::get(&s.ca.cert_pem, SERVER_NAME);
    client.timeout = 1.0;
    let alt_svc = || async {
        let reply = https::send(
            addr,
            SERVER_NAME,
            ClientOpts::new(&s.ca.cert_pem).config(),
            get("/"),
        )
        .await
        .expect("HTTPS");
        reply.headers.contains_key("alt-svc")
    };
    let mut reloads = 0;
    for (http3, served) in [("off", false), ("on", true), ("off", false)] {
        if reloads > 0 || http3 == "on" {
            write(http3);
            lb.signal(edgelb_tests::daemon::Signal::SIGHUP);
            reloads += 1;
            lb.wait_for_log("certificates reloaded", reloads).await;
        }
        let answer = client.send(None, "127.0.0.1", addr.port(), &["/"]);
        assert_eq!(
            answer.is_ok(),
            served,
            "http3 = {http3}: {answer:?}\n{}",
            lb.log()
        );
        assert_eq!(alt_svc().await, served, "http3 = {http3}: Alt-Svc");
    }
}

/// `--idle-timeout` applies to HTTP/3 connections as to others: one quiet for longer is
/// closed (a request after that gets no answer on it); 0 still serves the first request.
#[test]
fn the_idle_timeout_closes_a_quiet_http3_connection() {
    if !h3::client_or_skip("the_idle_timeout_closes_a_quiet_http3_connection") {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    for (idle, pause, answered) in [("1", 0.2, true), ("1", 2.5, false), ("0", 0.0, true)] {
        let (lb, addr) = s.start(&["--backend", &be, "--http3", "on", "--idle-timeout", idle]);
        let mut client = Request::get(&s.ca.cert_pem, SERVER_NAME);
        client.pause = pause;
        // Longer than the pause: QUIC closes a connection at the smaller of the two ends'
        // idle timeouts, so the client's own must not be what ends it.
        client.timeout = 5.0;
        let paths: &[&str] = if idle == "0" { &["/"] } else { &["/", "/"] };
        let result = client.send(None, "127.0.0.1", addr.port(), paths);
        match (answered, &result) {
            (true, Ok(replies)) => assert_eq!(replies.len(), paths.len()),
            (false, Err(failed)) => assert_eq!(failed.code, Some(3), "{failed:?}"),
            _ => panic!("idle {idle}, pause {pause}: {result:?}\n{}", lb.log()),
        }
    }
}

/// Streams that never get a request head do not hold a connection open past its idle timeout
/// (a client could otherwise keep a `--max-connections` slot by opening one now and then);
/// a request's head does.
#[test]
fn streams_without_a_head_do_not_keep_a_connection_from_its_idle_timeout() {
    if !h3::client_or_skip("streams_without_a_head_do_not_keep_a_connection_from_its_idle_timeout")
    {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--http3",
        "on",
        "--idle-timeout",
        "1",
        "--request-timeout",
        "2",
    ]);
    // Eight bare streams 0.8 s apart: 6.4 s, each outliving the idle timeout's second.
    let mut client = Request::get(&s.ca.cert_pem, SERVER_NAME);
    client.bare_streams = Some(8);
    client.timeout = 2.0;
    let failed = client
        .send(None, "127.0.0.1", addr.port(), &["/"])
        .expect_err("bare streams held the connection past its idle timeout");
    assert!(
        matches!(failed.code, Some(2 | 3)),
        "{failed:?}\n{}",
        lb.log()
    );
    assert_eq!(backend.served(), 0);
}

/// A request that outlasts the idle timeout starts the idle time afresh when it ends: the
/// next request on the connection, soon after, is served on it rather than meeting a timer
/// that ran out while the first was in flight.
#[test]
fn a_request_longer_than_the_idle_timeout_leaves_the_connection_open_after_it() {
    if !h3::client_or_skip("a_request_longer_than_the_idle_timeout_leaves_the_connection_open") {
        return;
    }
    let s = Setup::new();
    // Longer than twice the idle timeout: the timer, looked at once a second into the first
    // request, runs out again while it is in flight.
    let backend = Backend::start_delayed("slow", "127.0.0.1:0", Duration::from_millis(2500));
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--http3", "on", "--idle-timeout", "1"]);
    for round in 0..2 {
        let mut client = Request::get(&s.ca.cert_pem, SERVER_NAME);
        client.pause = 0.3;
        let replies = client
            .send(None, "127.0.0.1", addr.port(), &["/", "/"])
            .unwrap_or_else(|e| panic!("round {round}: {e:?}\n{}", lb.log()));
        assert_eq!(replies.len(), 2, "round {round}");
    }
    assert_eq!(backend.served(), 4);
}

/// A body longer or shorter than its `content-length`, and connection-specific fields, are
/// refused (RFC 9114 4.1.2, 4.2) before anything reaches a backend: a backend framing the
/// body by the declared length would otherwise take the rest for a request of its own.
#[test]
fn malformed_http3_requests_are_refused_before_the_backend() {
    if !h3::client_or_skip("malformed_http3_requests_are_refused_before_the_backend") {
        return;
    }
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let admin = edgelb_tests::listener::free_addr().to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--http3",
        "on",
        "--access-log",
        "--admin",
        &admin,
    ]);
    let smuggled = "hello\r\n\r\nGET /hidden HTTP/1.1\r\nhost: a\r\n\r\n";
    let base = {
        let mut r = Request::get(&s.ca.cert_pem, SERVER_NAME);
        r.method = "POST";
        r
    };
    let mut cases: Vec<(&str, Request)> = Vec::new();
    let mut longer = base.clone();
    longer.data = Some(smuggled);
    longer.content_length = Some(5);
    cases.push(("a body longer than its content-length", longer));
    let mut shorter = base.clone();
    shorter.data = Some("hello");
    shorter.content_length = Some(50);
    cases.push(("a body shorter than its content-length", shorter));
    for header in [
        "connection:keep-alive",
        "transfer-encoding:chunked",
        "upgrade:websocket",
    ] {
        let mut r = base.clone();
        r.data = Some("hello");
        r.headers = vec![header.to_string()];
        cases.push((header, r));
    }
    for (what, request) in cases {
        match request.send(None, "127.0.0.1", addr.port(), &["/echo"]) {
            Ok(replies) => assert_eq!(replies[0].status, 400, "{what}: {replies:?}"),
            // A stream reset is a refusal too.
            Err(failed) => assert_eq!(failed.code, Some(3), "{what}: {failed:?}\n{}", lb.log()),
        }
    }
    // A `:path` that is no path: the rules would see `/`, the backend `GET ?admin=1`.
    let replies = Request::get(&s.ca.cert_pem, SERVER_NAME)
        .send(None, "127.0.0.1", addr.port(), &["?admin=1"])
        .unwrap_or_else(|e| panic!("a :path without a path: {e:?}"));
    assert_eq!(replies[0].status, 400, "{replies:?}");
    assert_eq!(
        backend.served(),
        0,
        "a malformed request reached the backend"
    );
    // Each refusal says why, and is in the access log as the 400 it was answered with.
    let logged = |log: &str| {
        let refused = log
            .matches(
                "request refused: connection-specific field, which HTTP/3 forbids (answered 400)",
            )
            .count();
        let access = log
            .lines()
            .filter(|l| {
                l.contains("edgelb::access")
                    && l.contains("version=HTTP/3")
                    && l.contains("status=400")
            })
            .count();
        refused >= 3 && access >= 3
    };
    let log = lb.log_when(std::time::Duration::from_secs(5), logged);
    assert!(logged(&log), "{log}");
    // In the request counters as the 400s they were: the three connection-specific fields and
    // the target without a path at least.
    let series = "edgelb_requests_total{listener=\"listener-1\",group=\"server_group-1\",backend=\"-\",code=\"4xx\"}";
    let counted = edgelb_tests::admin::metric(&admin, series).unwrap_or(0.0);
    assert!(counted >= 4.0, "{counted} 4xx counted");
    let mut ok = base.clone();
    ok.data = Some("hello");
    let replies = ok
        .send(None, "127.0.0.1", addr.port(), &["/echo"])
        .expect("a well-formed POST");
    assert!(replies[0].body.contains("body-bytes: 5"), "{replies:?}");
}
