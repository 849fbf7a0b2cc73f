//! The access log as an operator keeps it: a file of its own, every field of a request (target
//! with its query, Host, SNI, version, bytes both ways, upstream and total time, user agent),
//! JSON or plain, written whatever RUST_LOG says, and reopened on SIGUSR1 as logrotate expects.
//! A destination that stops taking lines costs lines, never requests.
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgelb_tests::backend::Backend;
use edgelb_tests::daemon::Signal;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};
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
    // Each answer 50 ms late: the logged times must show it.
    let backend = Backend::start_delayed("a", "127.0.0.1:0", Duration::from_millis(50));
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
    let upstream = get_entry["upstream_ms"].as_f64().unwrap_or_default();
    let total = get_entry["total_ms"].as_f64().unwrap_or_default();
    assert!(
        (50.0..5_000.0).contains(&upstream) && total >= upstream,
        "upstream {upstream} ms, total {total} ms, for a backend that answers after 50 ms"
    );
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

/// With `--user`, the file opened as root at start is handed to that user, as nginx does:
/// the daemon, no longer root, can reopen it (SIGUSR1, a reload), and logrotate's `create`
/// gives the new file the same owner. It used to stay root's, and every reopen was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_user_the_log_file_is_that_users_and_sigusr1_reopens_it() {
    if !edgelb_tests::privilege::root_or_skip("with_user_the_log_file_is_that_users") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let logs = s.dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs dir");
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let path = logs.join("access.log");
    let (be, log_path) = (
        backend.addr.to_string(),
        path.to_string_lossy().into_owned(),
    );
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--access-log",
        &log_path,
        "--user",
        "nobody",
    ]);
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody");
    let owner = std::fs::metadata(&path).expect("log file").uid();
    assert_eq!(owner, nobody.uid.as_raw(), "the log file's owner");
    lb.signal(Signal::SIGUSR1);
    lb.wait_for_log("SIGUSR1: access log reopened", 1).await;
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let after = https::send(addr, SERVER_NAME, config, get("/after-reopen"))
        .await
        .expect("GET");
    assert_eq!(after.status, 200);
    assert!(lines(&path, 1)[0].contains("target=\"/after-reopen\""));
    let (status, log) = lb.stop();
    assert!(
        status.success() && !log.contains("stays on the file it had"),
        "{log}"
    );

    // A path that is a symlink to another root file: that file is not handed over.
    let victim = s.dir.path().join("victim");
    std::fs::write(&victim, "root's\n").expect("victim");
    let link = logs.join("link.log");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let link = link.to_string_lossy().into_owned();
    let (lb, _) = s.start(&["--backend", &be, "--access-log", &link, "--user", "nobody"]);
    let owner = std::fs::metadata(&victim).expect("victim").uid();
    let (status, log) = lb.stop();
    assert!(status.success(), "{log}");
    assert_eq!(owner, 0, "a symlink's target was handed to --user");
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

/// The access log on a FIFO whose reader is gone when logrotate sends SIGUSR1 (a log shipper
/// restarting): opening a FIFO for writing would wait for a reader, and edgelb's control loop
/// with it, deaf to signals and reloads. The reopen is refused at once, the daemon goes on
/// serving, and SIGTERM still stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_with_nobody_reading_the_fifo_keeps_the_daemon_answering() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let fifo = s.dir.path().join("access.fifo");
    let reader = unread_fifo(&fifo);
    let fifo_arg = fifo.to_string_lossy().into_owned();
    let (lb, addr) = s.start(&["--backend", &be, "--access-log", &fifo_arg]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    drop(reader);

    lb.signal(Signal::SIGUSR1);
    lb.wait_for_log("a FIFO that no process is reading", 1)
        .await;
    let reply = https::send(addr, SERVER_NAME, config, get("/"))
        .await
        .expect("served after SIGUSR1");
    assert_eq!(reply.status, 200);
    let (status, log) = lb.stop();
    assert!(status.success(), "{status}: {log}");
}

/// The access log on a FIFO whose reader holds it open but does not read, as a stalled log
/// shipper or a hung filesystem would: the pipe fills after 64 KiB of lines. Requests go on
/// being answered, the lines past what edgelb keeps waiting are dropped and counted, and once
/// the reader reads again new lines reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_stops_reading_costs_log_lines_not_requests() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let admin = free_addr().to_string();
    let fifo = s.dir.path().join("access.fifo");
    let reader = unread_fifo(&fifo);
    let fifo_arg = fifo.to_string_lossy().into_owned();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--access-log",
        &fifo_arg,
        "--admin",
        &admin,
    ]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();

    thousand_long_requests(addr, &config).await;

    let dropped = || {
        edgelb_tests::admin::metric(&admin, "edgelb_access_log_dropped_lines_total").unwrap_or(0.0)
    };
    lb.wait_for_log("access log lines dropped", 1).await;

    // The reader comes back: what was kept arrives, then the next request's line.
    let reading = Reading::start(reader);
    let text = reading.after(addr, &config).await;
    let kept = text.matches("target=\"/stalled").count();
    // Lines arrive whole: every line is one request's, none cut by the drops.
    assert!(
        text.lines()
            .all(|l| l.contains(" edgelb::access listener=") && l.ends_with("user_agent=\"-\"")),
        "a line not whole"
    );
    // The metric follows within a second: every line is either written or counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while kept as f64 + dropped() != 1000.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dropped = dropped();
    eprintln!("kept {kept}, dropped {dropped} of 1,000 lines");
    assert_eq!(
        kept as f64 + dropped,
        1000.0,
        "kept {kept}, dropped {dropped}"
    );
    // 4 MiB waiting and 64 KiB in the pipe are about 660 of the 1,000 lines.
    assert!((150.0..=500.0).contains(&dropped), "dropped {dropped}");
    let (status, log) = lb.stop();
    reading.stop();
    assert!(status.success(), "{log}");
}

/// 1,000 GETs with 6 KiB targets on one HTTP/2 connection: 1,000 log lines of about 6.5 KiB,
/// 6.5 MB, more than a pipe and edgelb's 4 MiB hold. Each must be answered by the backend,
/// all within 60 s.
async fn thousand_long_requests(addr: std::net::SocketAddr, config: &Arc<rustls::ClientConfig>) {
    let long = format!("/stalled?q={}", "x".repeat(6 * 1024));
    let bodies = tokio::time::timeout(
        Duration::from_secs(60),
        https::get_many(addr, config.clone(), &long, 1000),
    )
    .await
    .expect("requests answered while the log's destination is stalled")
    .expect("GETs");
    let other = bodies.iter().find(|b| *b != "backend a\n");
    assert!(other.is_none(), "{other:?} of {}", bodies.len());
}

/// A FIFO at `path`, opened for reading (without blocking, so that a writer's open finds a
/// reader) and not read.
fn unread_fifo(path: &Path) -> std::fs::File {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open the FIFO")
}

/// A thread reading a FIFO into memory.
struct Reading {
    read: Arc<Mutex<Vec<u8>>>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Reading {
    fn start(mut fifo: std::fs::File) -> Reading {
        let read = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (read, done) = (read.clone(), done.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                // Once told to stop, what the writer left in the pipe is still read.
                loop {
                    match fifo.read(&mut buf) {
                        Ok(n) if n > 0 => read.lock().expect("lock").extend_from_slice(&buf[..n]),
                        _ if done.load(Ordering::Relaxed) => return,
                        _ => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Reading { read, done, thread }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.read.lock().expect("lock")).into_owned()
    }

    /// Everything read once it holds a whole line with `marker`, if it does within `limit`.
    async fn within(&self, marker: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text();
            if text
                .find(marker)
                .is_some_and(|at| text[at..].contains('\n'))
            {
                return Some(text);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything read once a request for `/after`, made now that the reader is back, has its
    /// line read. What was held back comes first (nothing more read for 300 ms), and a request
    /// is sent again if its line was still dropped: on a slow machine the writer's backlog may
    /// not have drained by the time the test thinks it has.
    async fn after(
        &self,
        addr: std::net::SocketAddr,
        config: &Arc<rustls::ClientConfig>,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.settled().await;
            let after = https::send(addr, SERVER_NAME, config.clone(), get("/after"))
                .await
                .expect("GET /after");
            assert_eq!(after.status, 200);
            if let Some(text) = self
                .within("target=\"/after\"", Duration::from_secs(2))
                .await
            {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no /after line read in 20 s:\n{}",
                self.text()
            );
        }
    }

    /// Once what was held back has come: nothing more read for 300 ms (10 s at most). Until
    /// then the writer may still be full, and a new line dropped.
    async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = usize::MAX;
        while Instant::now() < deadline {
            let now = self.read.lock().expect("lock").len();
            if now == last {
                return;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("the FIFO never stopped growing");
    }

    /// Everything read, once the thread has stopped.
    fn stop(self) -> String {
        let Reading { read, done, thread } = self;
        done.store(true, Ordering::Relaxed);
        thread.join().expect("reader");
        String::from_utf8_lossy(&read.lock().expect("lock")).into_owned()
    }
}

/// The same with stderr, where the access log and edgelb's own log both go (as under a
/// journald that falls behind): requests are answered while nobody reads it, and once it is
/// read again the lines come, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_that_stops_reading_costs_log_lines_not_requests() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let fifo = s.dir.path().join("stderr.fifo");
    let reader = unread_fifo(&fifo);
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("FIFO for writing");
    let addr = free_addr();
    let mut child = std::process::Command::new(edgelb_tests::daemon::binary())
        .args(s.listener_args(addr))
        .args(["--backend", &be, "--access-log", "--pid-file"])
        .arg(s.dir.path().join("edgelb.pid"))
        .env("RUST_LOG", "debug,hyper=info,h2=info,rustls=info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .spawn()
        .expect("spawn edgelb");
    // Ready once it answers; its log stays unread in the pipe.
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let deadline = Instant::now() + Duration::from_secs(20);
    while https::send(addr, SERVER_NAME, config.clone(), get("/ready"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "edgelb not serving after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    thousand_long_requests(addr, &config).await;
    // edgelb's own log too: a refused connection (plain HTTP on the TLS port) is logged by
    // the worker serving it before it is answered.
    let refused = tokio::time::timeout(Duration::from_secs(10), plain_http(addr)).await;
    let reading = Reading::start(reader);
    let refused = refused.expect("plain HTTP answered while stderr is stalled");
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let text = reading.after(addr, &config).await;
    let access = text
        .lines()
        .filter(|l| l.contains(" edgelb::access "))
        .count();
    assert!(
        (500..1000).contains(&access),
        "{access} access log lines: some kept, some dropped"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("edgelb did not exit within 15 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = reading.stop();
    assert!(status.success(), "{status}");
    // Lines arrive whole, and the last ones before the exit are not lost.
    assert!(
        text.lines().all(|l| l.starts_with("20")),
        "a line not whole"
    );
    assert!(
        text.contains("SIGTERM: stopping"),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
}

/// What edgelb answers to plain HTTP sent to its TLS port.
async fn plain_http(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}
