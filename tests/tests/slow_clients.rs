//! Slow and greedy HTTP/1.1 clients: a request body trickled a byte at a time, a client that
//! stops reading a large response, and hundreds of idle keep-alive connections (closed at the
//! idle timeout, and parked before it). The daemon's RSS and descriptors are sampled
//! throughout and the peaks printed.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgelb_tests::admin;
use edgelb_tests::backend::{Backend, big_backend};
use edgelb_tests::https;
use edgelb_tests::listener::{Setup, free_addr};
use edgelb_tests::peaks::Peaks;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Reads until EOF or an error; what was read, and whether it ended within `within`.
async fn read_to_end(tls: &mut TlsStream<TcpStream>, within: Duration) -> (String, bool) {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&all).into_owned(), true),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&all).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn a_request_body_that_stalls_or_trickles_is_cut() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--request-timeout",
        "2",
        "--idle-timeout",
        "30",
    ]);
    let peaks = Peaks::watch(&lb);
    let head = b"POST /echo HTTP/1.1\r\nhost: edgelb.test\r\ncontent-length: 100\r\n\r\n";

    // One byte of the body, then nothing.
    let mut tls = s.connect_h1(addr).await;
    tls.write_all(head).await.expect("head");
    tls.write_all(b"x").await.expect("byte");
    let started = Instant::now();
    let (answer, ended) = read_to_end(&mut tls, Duration::from_secs(15)).await;
    let stalled = started.elapsed();
    let status = answer.lines().next().unwrap_or("(nothing)").to_string();
    eprintln!(
        "body stalled after 1 of 100 bytes: {status:?}, connection closed: {ended} after {stalled:?}"
    );
    assert!(ended, "connection still open after 15 s");
    assert!(status.starts_with("HTTP/1.1 408"), "{answer}");

    // A byte every 500 ms: each gap is shorter than the 2 s request timeout.
    let mut tls = s.connect_h1(addr).await;
    tls.write_all(head).await.expect("head");
    let started = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    let mut cut = None;
    let mut answer = String::new();
    while sent < 100 {
        if tls.write_all(b"x").await.is_err() || tls.flush().await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        sent += 1;
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), tls.read(&mut buf)).await {
            cut = Some(started.elapsed());
            answer = r.map_or_else(
                |e| e.to_string(),
                |n| String::from_utf8_lossy(&buf[..n]).into_owned(),
            );
            break;
        }
        if sent == 20 {
            break;
        }
    }
    eprintln!(
        "body trickled a byte per 500 ms (request timeout 2 s): {sent} bytes over {:?}, cut: {cut:?}: {answer:?}",
        started.elapsed()
    );
    // Each gap is within the request timeout, but 2 bytes/s is far under the 500 bytes/s a
    // body must average once it has taken longer than that.
    assert!(
        cut.is_some() && sent < 20,
        "a trickled body was not cut: {sent} bytes sent"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    peaks.report("slow POST");
}

#[tokio::test]
async fn an_http1_client_that_stops_reading_a_large_response_is_cut() {
    let s = Setup::new();
    const SIZE: usize = 256 << 20;
    let big = big_backend(SIZE);
    let be = big.addr.to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--idle-timeout",
        "3",
        "--request-timeout",
        "3",
    ]);
    let peaks = Peaks::watch(&lb);
    let mut clients = Vec::new();
    let started = Instant::now();
    // Ten clients ask for 256 MiB each and read nothing.
    for _ in 0..10 {
        let mut tls = s.connect_h1(addr).await;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: edgelb.test\r\n\r\n")
            .await
            .expect("request");
        tls.flush().await.expect("flush");
        clients.push(tls);
    }
    // This runtime has one thread: while the test sleeps here nothing reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && big.ended.load(Ordering::Relaxed) < 10 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let cut_after = started.elapsed();
    let written = big.written.load(Ordering::Relaxed);
    eprintln!(
        "10 HTTP/1.1 clients not reading 256 MiB responses: all 10 backend connections cut by edgelb after {cut_after:?}; the backend wrote {} MiB in all ({} KiB per client)",
        written >> 20,
        (written >> 10) / 10
    );
    let (rss, _) = peaks.report("HTTP/1.1 slow readers");
    assert_eq!(big.ended.load(Ordering::Relaxed), 10);
    assert!(rss < peaks.base.0 + 64 * 1024, "RSS grew to {rss} KiB");
    // The clients see their connection end once they read again.
    for mut tls in clients {
        let (_, ended) = read_to_end(&mut tls, Duration::from_secs(10)).await;
        assert!(ended);
    }
}

#[tokio::test]
async fn hundreds_of_idle_keep_alive_connections_close_at_the_idle_timeout() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&[
        "--backend",
        &be,
        "--idle-timeout",
        "3",
        "--request-timeout",
        "10",
    ]);
    let peaks = Peaks::watch(&lb);
    const N: usize = 300;
    let mut open = Vec::new();
    let mut buf = vec![0u8; 4096];
    for _ in 0..N {
        let mut tls = s.connect_h1(addr).await;
        // Before the request: the server's idle timer starts later, at its answer.
        let at = Instant::now();
        tls.write_all(b"GET / HTTP/1.1\r\nhost: edgelb.test\r\n\r\n")
            .await
            .expect("request");
        let n = tls.read(&mut buf).await.expect("response");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        open.push((tls, at));
    }
    let fds_open = lb.fds();
    let mut idle_for = Vec::new();
    for (tls, at) in &mut open {
        let (_, ended) = read_to_end(tls, Duration::from_secs(10)).await;
        assert!(ended, "a kept-alive connection is still open after 10 s");
        idle_for.push(at.elapsed());
    }
    idle_for.sort();
    let after = {
        let deadline = Instant::now() + Duration::from_secs(5);
        while lb.fds() as u64 > peaks.base.1 + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        lb.fds()
    };
    eprintln!(
        "{N} idle keep-alive connections (idle timeout 3 s): closed after {:?} (first) to {:?} (last); descriptors with all open {fds_open}, after {after}",
        idle_for[0],
        idle_for[N - 1]
    );
    peaks.report("idle keep-alive connections");
    // The connection opened last is read when it closes: the shortest idle time is the
    // timeout itself, not the 10 s request timeout nor anything longer.
    assert!(
        (Duration::from_millis(2900)..Duration::from_secs(6)).contains(&idle_for[0]),
        "{:?}",
        idle_for[0]
    );
    assert!(
        after as u64 <= peaks.base.1 + 2,
        "descriptors left: {after}"
    );
}

/// Waits up to 5 s for the listener's parked-connections gauge to read `want`; what it read.
async fn parked(admin: &str, want: usize) -> Option<f64> {
    let series = "edgelb_parked_connections{listener=\"listener-1\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = admin::metric(admin, series);
        if now == Some(want as f64) || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An idle keep-alive connection is parked after a second: hyper lets go of it and only the
/// TLS session is kept. Its next bytes take it up again, on the same connection, whatever
/// they are: a request head split across the wake-up, two pipelined requests, a request with
/// a body, a WebSocket upgrade. A parked connection that is used parks again.
#[tokio::test]
async fn idle_keep_alive_connections_park_and_take_up_their_next_request() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (be, admin) = (backend.addr.to_string(), free_addr().to_string());
    let (_lb, addr) = s.start(&["--backend", &be, "--admin", &admin]);
    const N: usize = 20;
    let mut conns = Vec::new();
    for _ in 0..N {
        let mut tls = s.connect_h1(addr).await;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: edgelb.test\r\n\r\n")
            .await
            .expect("request");
        assert_eq!(https::read_responses(&mut tls, 1).await.0, [200]);
        conns.push(tls);
    }
    assert_eq!(
        parked(&admin, N).await,
        Some(N as f64),
        "all idle connections parked"
    );

    // A head split across the wake-up: the first bytes wake the connection, the rest follow.
    let split = &mut conns[0];
    split
        .write_all(b"GET /echo HTTP/1.1\r\nhost: edgelb.test\r\n")
        .await
        .expect("first half");
    tokio::time::sleep(Duration::from_millis(300)).await;
    split
        .write_all(b"x-split: second-half\r\n\r\n")
        .await
        .expect("second half");
    let (status, text) = https::read_responses(split, 1).await;
    assert_eq!(status, [200], "{text}");
    assert!(text.contains("x-split: second-half"), "{text}");

    // Two pipelined requests in one write.
    let pipelined = &mut conns[1];
    pipelined
        .write_all(
            b"GET /status/201 HTTP/1.1\r\nhost: edgelb.test\r\n\r\nGET /status/202 HTTP/1.1\r\nhost: edgelb.test\r\n\r\n",
        )
        .await
        .expect("pipelined");
    assert_eq!(https::read_responses(pipelined, 2).await.0, [201, 202]);

    // A request with a body larger than the wake-up read.
    let post = &mut conns[2];
    let body = vec![b'x'; 5000];
    let mut request =
        b"POST /echo HTTP/1.1\r\nhost: edgelb.test\r\ncontent-length: 5000\r\n\r\n".to_vec();
    request.extend_from_slice(&body);
    post.write_all(&request).await.expect("post");
    let (status, text) = https::read_responses(post, 1).await;
    assert_eq!(status, [200], "{text}");
    assert!(text.contains("body-bytes: 5000"), "{text}");

    // A WebSocket upgrade: the connection becomes a tunnel to the backend.
    let ws = &mut conns[3];
    ws.write_all(
        b"GET / HTTP/1.1\r\nhost: edgelb.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .expect("upgrade");
    assert_eq!(https::read_responses(ws, 1).await.0, [101]);
    ws.write_all(b"ping").await.expect("tunnel write");
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echo, b"ping");

    // A request and half of the next in one write, then a pause longer than the parking
    // delay, then the rest: both are answered, the second whole (the half head hyper held
    // is handed on, or the connection is not parked while hyper holds it).
    let stalled = &mut conns[4];
    stalled
        .write_all(b"GET / HTTP/1.1\r\nhost: edgelb.test\r\n\r\nGET /echo HTTP/1.1\r\nhost: edgelb.test\r\n")
        .await
        .expect("one and a half requests");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stalled
        .write_all(b"x-late: rest-of-head\r\n\r\n")
        .await
        .expect("rest of the head");
    let (status, text) = https::read_responses(stalled, 2).await;
    assert_eq!(status, [200, 200], "{text}");
    assert!(text.contains("x-late: rest-of-head"), "{text}");

    // The three used for single requests park again; the tunnel does not, and the stalled
    // one may have been closed after its second answer.
    let now = parked(&admin, N - 1).await;
    assert!(
        now == Some((N - 1) as f64) || now == Some((N - 2) as f64),
        "{now:?}"
    );
    for (i, tls) in conns.iter_mut().enumerate().skip(5) {
        tls.write_all(b"GET / HTTP/1.1\r\nhost: edgelb.test\r\n\r\n")
            .await
            .expect("request");
        let (status, text) = https::read_responses(tls, 1).await;
        assert_eq!(status, [200], "connection {i}: {text}");
    }
}
