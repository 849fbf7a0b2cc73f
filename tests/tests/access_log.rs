//! The access log as an operator keeps it: a file of its own, every field of a request (target
//! with its query, Host, SNI, version, bytes both ways, upstream and total time, user agent),
//! JSON or plain, written whatever RUST_LOG says, and reopened on SIGUSR1 as logrotate expects.
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgelb_tests::backend::Backend;
use edgelb_tests::daemon::Signal;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup};
use http_body_util::Full;
use hyper::Request;

/// The file's lines once it has `n` (5 s at most).
fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            assert_eq!(lines.len(), n, "{}:\n{text}", path.display());
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn by_target<'a>(entries: &'a [serde_json::Value], target: &str) -> &'a serde_json::Value {
    entries
        .iter()
        .find(|e| e["target"] == target)
        .unwrap_or_else(|| panic!("no entry for {target} in {entries:#?}"))
}

// Multi-threaded: the clients' connections close while the test waits for the daemon to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_access_log_file_holds_each_request_whole_and_is_reopened_on_sigusr1() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let path = s.dir.path().join("access.log");
    let log_path = path.to_string_lossy().into_owned();
    // Turning the tracing target of the old access log off must not silence the new one.
    let (lb, addr) = s.start_env(
        &[
            "--backend",
            &be,
            "--access-log",
            &log_path,
            "--access-log-format",
            "json",
        ],
        &[("RUST_LOG", "info,edgelb::access=off")],
    );
    let h2 = ClientOpts::new(&s.ca.cert_pem).config();
    let mut h1 = ClientOpts::new(&s.ca.cert_pem);
    h1.alpn = &[b"http/1.1"];
    let h1 = h1.config();

    let mut req = get("/a?b=c");
    req.headers_mut().insert(
        "user-agent",
        "edgelb-test/1 \"quoted\"".parse().expect("ua"),
    );
    let first = https::send(addr, SERVER_NAME, h2.clone(), req)
        .await
        .expect("GET");
    assert_eq!((first.status, first.body.as_str()), (200, "backend a\n"));
    let post = Request::post("/echo")
        .header("host", "edgelb.test")
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("request");
    let echoed = https::send(addr, SERVER_NAME, h1, post)
        .await
        .expect("POST");
    assert_eq!(echoed.status, 200);

    let entries: Vec<serde_json::Value> = lines(&path, 2)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let get_entry = by_target(&entries, "/a?b=c");
    for (key, want) in [
        ("listener", serde_json::json!("listener-1")),
        ("method", "GET".into()),
        ("host", "edgelb.test".into()),
        ("sni", SERVER_NAME.into()),
        ("version", "HTTP/2".into()),
        ("status", 200.into()),
        ("bytes_in", 0.into()),
        ("bytes_out", "backend a\n".len().into()),
        ("backend", be.clone().into()),
        ("rule", serde_json::Value::Null),
        ("user_agent", "edgelb-test/1 \"quoted\"".into()),
    ] {
        assert_eq!(get_entry[key], want, "{key} in {get_entry}");
    }
    assert!(
        get_entry["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{get_entry}"
    );
    for key in ["upstream_ms", "total_ms"] {
        let ms = get_entry[key].to_string();
        let decimals = ms.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            get_entry[key].is_f64() && decimals <= 3,
            "{key} = {ms}: milliseconds rounded to 3 decimals"
        );
    }
    let post_entry = by_target(&entries, "/echo");
    assert_eq!(post_entry["version"], "HTTP/1.1", "{post_entry}");
    assert_eq!(post_entry["bytes_in"], 5, "{post_entry}");
    assert_eq!(post_entry["bytes_out"], echoed.body.len(), "{post_entry}");
    assert!(!lb.log().contains("edgelb::access"), "{}", lb.log());

    // logrotate: move the file away, SIGUSR1, and the next line starts the new file.
    let rotated = s.dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    lb.signal(Signal::SIGUSR1);
    lb.wait_for_log("SIGUSR1: access log reopened", 1).await;
    let after = https::send(addr, SERVER_NAME, h2, get("/after"))
        .await
        .expect("the daemon survives SIGUSR1");
    assert_eq!(after.status, 200);
    let fresh = lines(&path, 1);
    assert!(fresh[0].contains("\"target\":\"/after\""), "{fresh:?}");
    assert_eq!(lines(&rotated, 2).len(), 2);
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
}

// Multi-threaded: the clients' connections close while the test waits for the daemon to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_access_log_on_stderr_has_the_query_and_sigusr1_does_not_stop_the_daemon() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--access-log"]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let reply = https::send(addr, SERVER_NAME, config.clone(), get("/q?x=1&y=%20"))
        .await
        .expect("GET");
    assert_eq!(reply.status, 200);
    lb.wait_for_log("edgelb::access", 1).await;
    let log = lb.log();
    let line = log
        .lines()
        .find(|l| l.contains("edgelb::access"))
        .unwrap_or_else(|| panic!("{log}"));
    for field in [
        "target=\"/q?x=1&y=%20\"",
        "host=\"edgelb.test\"",
        "version=HTTP/2",
        "status=200",
        "bytes_out=10",
        &format!("backend=\"{be}\""),
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    // What logrotate sends nginx: without a file to reopen, nothing happens at all.
    lb.signal(Signal::SIGUSR1);
    lb.wait_for_log("SIGUSR1: no log file to reopen", 1).await;
    let again = https::send(addr, SERVER_NAME, config, get("/"))
        .await
        .expect("still serving after SIGUSR1");
    assert_eq!(again.status, 200);
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
}
