//! Request smuggling (RFC 9112): a table of raw HTTP/1.x requests sent to edgelb (`--protocol
//! http`, and a few over TLS) and to HAProxy as a reference, each in front of a backend that
//! records the exact bytes it receives and parses them strictly. edgelb must refuse (400, 414,
//! 431, ... and close) or forward one normalised request that the strict parser frames the
//! same way; where edgelb and HAProxy differ, edgelb must have forwarded less. Also HTTP/2
//! requests whose `content-length` does not match their body.
use std::net::SocketAddr;
use std::sync::Arc;

use edgelb_tests::https::{self, ClientOpts};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};
use edgelb_tests::raw::{self, Exchange, Haproxy, Recorder};
use http_body_util::Full;
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What edgelb must do with a case.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The backend gets this many requests, each answered to the client.
    Forward(usize),
    /// The client gets this status, the connection closes, the backend gets nothing.
    Refuse(u16),
    /// Pipelined: the first request forwarded, the next one refused (and the connection closed).
    ForwardThenRefuse(u16),
}
use Expect::{Forward, ForwardThenRefuse, Refuse};

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    /// Also sent over TLS.
    tls: bool,
}

fn case(name: &'static str, text: &str, expect: Expect) -> Case {
    Case {
        name,
        bytes: text.as_bytes().to_vec(),
        expect,
        tls: false,
    }
}

fn cases() -> Vec<Case> {
    let h = "Host: t\r\n";
    let long_target = |n: usize| format!("GET /c?{} HTTP/1.1\r\n{h}\r\n", "q".repeat(n));
    let big_headers = |n: usize| {
        let fields: String = (0..n / 1000)
            .map(|i| format!("x-pad-{i}: {}\r\n", "p".repeat(990)))
            .collect();
        format!("GET /c HTTP/1.1\r\n{h}{fields}\r\n")
    };
    let smuggled = "GPOST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 15\r\n\r\nx=1";
    let te_cl = format!(
        "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let mut cases = vec![
        case(
            "plain GET",
            &format!("GET /c HTTP/1.1\r\n{h}\r\n"),
            Forward(1),
        ),
        case(
            "Content-Length body",
            &format!("POST /c HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhello"),
            Forward(1),
        ),
        case(
            "chunked body",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Forward(1),
        ),
        case(
            "CL then TE (CL.TE)",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
            ),
            Forward(1),
        ),
        case("TE then CL (TE.CL)", &te_cl, Forward(1)),
        case(
            "Content-Length twice, same",
            &format!("POST /c HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            Forward(1),
        ),
        case(
            "Content-Length twice, differing",
            &format!("POST /c HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            Refuse(400),
        ),
        case(
            "Content-Length: 5, 5",
            &format!("POST /c HTTP/1.1\r\n{h}Content-Length: 5, 5\r\n\r\nhello"),
            Refuse(400),
        ),
        case(
            "Content-Length: 005",
            &format!("POST /c HTTP/1.1\r\n{h}Content-Length: 005\r\n\r\nhello"),
            Forward(1),
        ),
        case(
            "Content-Length: +5",
            &format!("POST /c HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello"),
            Refuse(400),
        ),
        case(
            "TE: chunked, identity",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "TE: gzip, chunked",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "TE:  chunked (extra space)",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding:  chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Forward(1),
        ),
        case(
            "TE:\\tchunked",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Forward(1),
        ),
        case(
            "TE: xchunked",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "TE: chunked + 2nd line TE: identity",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "TE: gzip + 2nd line TE: chunked",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "TE: chunked twice (2 lines)",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "TE obs-folded onto 2nd line",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "TE with space before colon",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "Transfer_Encoding (underscore)",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer_Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "chunk size overflows 64 bits",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "chunk size line ends in bare LF",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "chunk data longer than its size",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"
            ),
            Refuse(400),
        ),
        case(
            "chunk extension",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n"
            ),
            Forward(1),
        ),
        case(
            "bare LF line ends",
            "GET /c HTTP/1.1\nHost: t\n\n",
            Forward(1),
        ),
        case(
            "bare CR in a value",
            &format!("GET /c HTTP/1.1\r\n{h}X-A: a\rb\r\n\r\n"),
            Refuse(400),
        ),
        case(
            "NUL in a value",
            &format!("GET /c HTTP/1.1\r\n{h}X-A: a\0b\r\n\r\n"),
            Refuse(400),
        ),
        case(
            "obs-fold in a value",
            &format!("GET /c HTTP/1.1\r\n{h}X-A: a\r\n b\r\n\r\n"),
            Refuse(400),
        ),
        case(
            "space in a field name",
            &format!("GET /c HTTP/1.1\r\n{h}X A: 1\r\n\r\n"),
            Refuse(400),
        ),
        case(
            "@ in a field name",
            &format!("GET /c HTTP/1.1\r\n{h}X@A: 1\r\n\r\n"),
            Refuse(400),
        ),
        case(
            "NUL in the target",
            &format!("GET /c\0 HTTP/1.1\r\n{h}\r\n"),
            Refuse(400),
        ),
        case(
            "two spaces in the request line",
            &format!("GET  /c HTTP/1.1\r\n{h}\r\n"),
            Refuse(400),
        ),
        case(
            "HTTP/1.1 without Host",
            "GET /c HTTP/1.1\r\n\r\n",
            Refuse(400),
        ),
        case(
            "two Host fields",
            &format!("GET /c HTTP/1.1\r\n{h}Host: u\r\n\r\n"),
            Refuse(400),
        ),
        case(
            "Host with a space",
            "GET /c HTTP/1.1\r\nHost: a b\r\n\r\n",
            Refuse(400),
        ),
        case(
            "absolute-form target, other Host",
            &format!("GET http://other.test/c HTTP/1.1\r\n{h}\r\n"),
            Refuse(400),
        ),
        case(
            "absolute-form target, same Host",
            "GET http://t/c HTTP/1.1\r\nHost: t\r\n\r\n",
            Forward(1),
        ),
        case(
            "CONNECT",
            "CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n",
            Refuse(405),
        ),
        case("target of 10 KiB", &long_target(10 * 1024), Refuse(414)),
        case("target of 20 KiB", &long_target(20 * 1024), Refuse(431)),
        case("headers of 12 KB", &big_headers(12_000), Forward(1)),
        case("headers of 20 KB", &big_headers(20_000), Refuse(431)),
        case(
            "Expect: 100-continue",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"
            ),
            Forward(1),
        ),
        case(
            "Expect: something else",
            &format!("POST /c HTTP/1.1\r\n{h}Expect: teapot\r\nContent-Length: 5\r\n\r\nhello"),
            Refuse(417),
        ),
        case(
            "Connection: content-length",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Connection: content-length\r\nContent-Length: 5\r\n\r\nhello"
            ),
            Forward(1),
        ),
        case(
            "pipelined: two GETs",
            &format!("GET /c HTTP/1.1\r\n{h}\r\nGET /d HTTP/1.1\r\n{h}\r\n"),
            Forward(2),
        ),
        case(
            "pipelined: POST body then GET",
            &format!(
                "POST /c HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhelloGET /d HTTP/1.1\r\n{h}\r\n"
            ),
            Forward(2),
        ),
        case(
            "pipelined: GET then TE.CL attempt",
            &format!(
                "GET /c HTTP/1.1\r\n{h}\r\nPOST /c HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n5c\r\n"
            ),
            ForwardThenRefuse(400),
        ),
        case(
            "120 header fields",
            &format!(
                "GET /c HTTP/1.1\r\n{h}{}\r\n",
                (0..120)
                    .map(|i| format!("x-f{i}: 1\r\n"))
                    .collect::<String>()
            ),
            Refuse(431),
        ),
        case(
            "HTTP/1.0 keep-alive",
            "GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            Forward(1),
        ),
        case(
            "HTTP/1.0 with Transfer-Encoding",
            "POST /c HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Refuse(400),
        ),
    ];
    for c in &mut cases {
        c.tls = matches!(
            c.name,
            "CL then TE (CL.TE)"
                | "TE then CL (TE.CL)"
                | "TE: chunked + 2nd line TE: identity"
                | "Transfer_Encoding (underscore)"
                | "chunk size overflows 64 bits"
                | "headers of 20 KB"
                | "pipelined: two GETs"
        );
    }
    cases
}

const HAPROXY_CONFIG: &str = "
global
    maxconn 200
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout http-request 5s
frontend fe
    bind 127.0.0.1:@PORT@
    default_backend be
backend be
    server s1 @BACKEND@
";

/// One case through one proxy: what the client saw, what the backend got.
struct Run {
    exchange: Exchange,
    seen: Vec<raw::Seen>,
    /// Bytes that reached the backend but that the strict parser could not frame.
    invalid: Vec<Vec<u8>>,
    /// Bytes that reached the backend and are not a whole request when the client is done.
    pending: Vec<Vec<u8>>,
}

impl Run {
    /// Requests that reached the backend, framed or not.
    fn reached(&self) -> usize {
        self.seen.len() + self.invalid.len() + self.pending.len()
    }
}

fn run(addr: SocketAddr, recorder: &Recorder, bytes: &[u8], tls: Option<&ClientTls>) -> Run {
    let (from, invalid_before) = (recorder.count(), recorder.invalid().len());
    let pending_before = recorder.pending();
    let exchange = match tls {
        None => raw::exchange_tcp(addr, bytes),
        Some(t) => raw::exchange_tls(addr, t.config.clone(), SERVER_NAME, bytes),
    };
    Run {
        exchange,
        seen: recorder.requests(from),
        invalid: recorder.invalid()[invalid_before..]
            .iter()
            .map(|(_, _, bytes)| bytes.clone())
            .collect(),
        // Left over from an earlier case (a proxy still holding that connection) is not ours.
        pending: recorder
            .pending()
            .into_iter()
            .filter(|p| !pending_before.contains(p))
            .map(|(_, b)| b)
            .collect(),
    }
}

struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

/// Problems with edgelb's handling of one case, if any.
fn judge(case: &Case, edgelb: &Run, haproxy: Option<&Run>) -> Vec<String> {
    let mut bad = Vec::new();
    let ex = &edgelb.exchange;
    if !edgelb.invalid.is_empty() {
        bad.push("the backend could not frame what edgelb sent".to_string());
    }
    if !edgelb.pending.is_empty() {
        bad.push("the backend waits for the rest of a request".to_string());
    }
    let answered = ex.finals().iter().filter(|s| **s == 200).count();
    if answered != edgelb.seen.len() {
        bad.push(format!(
            "backend saw {} requests, client got {answered} backend answers",
            edgelb.seen.len()
        ));
    }
    match case.expect {
        Forward(n) => {
            if edgelb.seen.len() != n || ex.finals() != vec![200; n] {
                bad.push(format!("expected {n} forwarded, got {}", ex.outcome()));
            }
        }
        Refuse(status) => {
            if !edgelb.seen.is_empty() || ex.finals() != vec![status] || !ex.closed {
                bad.push(format!("expected {status} and close, got {}", ex.outcome()));
            }
        }
        ForwardThenRefuse(status) => {
            if edgelb.seen.len() != 1 || ex.finals() != vec![200, status] || !ex.closed {
                bad.push(format!("expected 200 {status} close, got {}", ex.outcome()));
            }
        }
    }
    if let Some(h) = haproxy
        && edgelb.reached() > h.reached()
    {
        bad.push(format!(
            "less strict than haproxy: {} requests forwarded vs {}",
            edgelb.reached(),
            h.reached()
        ));
    }
    bad
}

fn saw(run: &Run) -> String {
    let mut all: Vec<String> = run.seen.iter().map(|s| raw::escape(&s.raw, 400)).collect();
    all.extend(
        run.invalid
            .iter()
            .map(|b| format!("UNFRAMEABLE: {}", raw::escape(b, 400))),
    );
    all.extend(
        run.pending
            .iter()
            .map(|b| format!("INCOMPLETE, backend waiting: {}", raw::escape(b, 400))),
    );
    if all.is_empty() {
        return "nothing".into();
    }
    all.join(" || ")
}

#[test]
fn smuggling_table_edgelb_is_at_least_as_strict_as_haproxy() {
    let dir = edgelb_tests::certs::TempDir::new();
    let to_edgelb = Recorder::start();
    let to_haproxy = Recorder::start();
    let (_lb, addr) =
        edgelb_tests::listener::start_http(to_edgelb.addr, &["--health-check", "off"], dir.path());
    let hp_addr = free_addr();
    let haproxy = raw::ensure_haproxy().then(|| {
        Haproxy::start(
            dir.path(),
            &HAPROXY_CONFIG
                .replace("@PORT@", &hp_addr.port().to_string())
                .replace("@BACKEND@", &to_haproxy.addr.to_string()),
            hp_addr,
        )
    });
    // edgelb over TLS, for the cases marked tls, against its own recorder.
    let s = Setup::new();
    let to_tls = Recorder::start();
    let tls_be = to_tls.addr.to_string();
    let (_tls_lb, tls_addr) = s.start(&["--backend", &tls_be, "--health-check", "off"]);
    let mut opts = ClientOpts::new(&s.ca.cert_pem);
    opts.alpn = &[b"http/1.1"];
    let client_tls = ClientTls {
        config: opts.config(),
    };

    let cases = cases();
    let mut failures = Vec::new();
    let mut table = vec![
        format!("edgelb vs {}", Haproxy::version()),
        "| case | edgelb | haproxy | backend saw via edgelb | backend saw via haproxy |".into(),
        "|---|---|---|---|---|".into(),
    ];
    let mut tls_rows = Vec::new();
    for case in &cases {
        // Both proxies at once: each has its own backend.
        let (e, h) = std::thread::scope(|scope| {
            let h = haproxy
                .as_ref()
                .map(|_| scope.spawn(|| run(hp_addr, &to_haproxy, &case.bytes, None)));
            let e = run(addr, &to_edgelb, &case.bytes, None);
            (e, h.map(|h| h.join().expect("haproxy run")))
        });
        for problem in judge(case, &e, h.as_ref()) {
            failures.push(format!("{}: {problem}", case.name));
        }
        table.push(format!(
            "| {} | {} | {} | {} | {} |",
            case.name,
            e.exchange.outcome(),
            h.as_ref().map_or("n/a".into(), |h| h.exchange.outcome()),
            saw(&e),
            h.as_ref().map_or("n/a".into(), saw)
        ));
        if case.tls {
            let t = run(tls_addr, &to_tls, &case.bytes, Some(&client_tls));
            for problem in judge(case, &t, h.as_ref()) {
                failures.push(format!("{} (TLS): {problem}", case.name));
            }
            tls_rows.push(format!("| {} | {} |", case.name, t.exchange.outcome()));
        }
    }
    println!("{}", table.join("\n"));
    println!(
        "\nover TLS (HTTP/1.1):\n| case | edgelb |\n|---|---|\n{}",
        tls_rows.join("\n")
    );
    let invalid = to_edgelb.invalid();
    assert!(
        invalid.is_empty(),
        "the strict backend could not frame what edgelb sent: {invalid:?}"
    );
    assert!(
        failures.is_empty(),
        "{} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// HTTP/2 → HTTP/1.1: a `content-length` that does not match the DATA is a malformed request
/// (RFC 9113 8.1.1): refused, and nothing reaches the backend.
#[tokio::test]
async fn http2_content_length_mismatch_is_refused() {
    let s = Setup::new();
    let recorder = Recorder::start();
    let be = recorder.addr.to_string();
    let (_lb, addr) = s.start(&["--backend", &be, "--health-check", "off"]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let post = |declared: usize, body: &'static [u8]| {
        Request::builder()
            .method("POST")
            .uri("/h2")
            .header("content-length", declared)
            .body(Full::new(Bytes::from_static(body)))
            .expect("request")
    };
    let ok = https::send(addr, SERVER_NAME, config.clone(), post(5, b"hello"))
        .await
        .expect("matching request");
    assert_eq!(ok.session.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(recorder.count(), 1);
    let seen = &recorder.requests(0)[0];
    assert_eq!(seen.header("content-length"), Some("5"));
    assert_eq!(seen.body, b"hello");

    for (declared, body) in [(10, &b"hello"[..]), (2, &b"hello"[..])] {
        let tls = https::connect(addr, SERVER_NAME, config.clone())
            .await
            .expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let mut req = post(declared, body);
        *req.uri_mut() = "https://edgelb.test/h2".parse().expect("uri");
        let got = sender.send_request(req).await;
        let outcome = match &got {
            Ok(resp) => format!("status {}", resp.status()),
            Err(e) => format!("{e:?}"),
        };
        println!(
            "h2 content-length {declared} with {} bytes: {outcome}",
            body.len()
        );
        match got {
            Ok(resp) => assert_eq!(resp.status(), 400),
            // The h2 layer resets the stream (PROTOCOL_ERROR) as the DATA contradicts the
            // declared length; edgelb's own answer (400) then cannot reach the client.
            Err(_) => assert!(outcome.contains("PROTOCOL_ERROR"), "{outcome}"),
        }
    }
    assert_eq!(recorder.count(), 1, "{:?}", recorder.requests(0));
    assert!(recorder.invalid().is_empty(), "{:?}", recorder.invalid());
}

/// A frame: 24-bit length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal field without indexing, new name, no Huffman (RFC 7541 6.2.2); short
/// strings only.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// One GET on a new HTTP/2 connection, written frame by frame (the h2 crate's client refuses
/// to send connection-specific fields), with `extra` fields: how stream 1 ended.
async fn h2_raw_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    extra: &[(&str, &str)],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = https::connect(addr, SERVER_NAME, config)
        .await
        .expect("connect");
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/h2raw"),
        (":authority", "edgelb.test"),
    ]
    .iter()
    .chain(extra)
    {
        hpack_literal(&mut block, n, v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    // END_STREAM | END_HEADERS
    out.extend(h2_frame(0x1, 0x5, 1, &block));
    tls.write_all(&out).await.expect("write frames");
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if tls.read_exact(&mut head).await.is_err() {
                return "connection closed".to_string();
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if tls.read_exact(&mut payload).await.is_err() {
                return "connection closed".to_string();
            }
            match (kind, stream) {
                (0x4, 0) if flags & 1 == 0 => {
                    let _ = tls.write_all(&h2_frame(0x4, 0x1, 0, &[])).await;
                }
                (0x3, 1) => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    let name = if code == 1 { "PROTOCOL_ERROR" } else { "other" };
                    return format!("RST_STREAM {name} ({code})");
                }
                (0x7, 0) => return "GOAWAY".to_string(),
                (0x1, 1) => {
                    // hyper sends common statuses as indexed fields (static table 8-14).
                    let status = match payload.first().map(|b| b & 0x7f) {
                        Some(8) => "200",
                        Some(12) => "400",
                        Some(13) => "404",
                        Some(14) => "500",
                        _ => "other",
                    };
                    return format!("HEADERS :status {status}");
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .unwrap_or_else(|_| "no answer in 5 s".into())
}

/// Connection-specific fields are malformed in HTTP/2 (RFC 9113 8.2.2): the h2 layer resets
/// the stream before edgelb sees it; `te: trailers` is allowed and not forwarded (hop-by-hop);
/// a `host` differing from `:authority` is refused by edgelb (400).
#[tokio::test]
async fn http2_connection_specific_fields_are_refused() {
    let s = Setup::new();
    let recorder = Recorder::start();
    let be = recorder.addr.to_string();
    let (_lb, addr) = s.start(&["--backend", &be, "--health-check", "off"]);
    let mut opts = ClientOpts::new(&s.ca.cert_pem);
    opts.alpn = &[b"h2"];
    let config = opts.config();
    const REFUSED: &str = "refused";
    let cases: [(&str, &str, &str); 13] = [
        // CRLF, NUL and uppercase names: what an HTTP/2 to HTTP/1 translation could turn
        // into extra header lines.
        ("x-a", "a\r\nx-injected: 1", REFUSED),
        ("x-a", "a\nx-injected: 1", REFUSED),
        ("x-a", "a\0b", REFUSED),
        ("X-Upper", "1", REFUSED),
        ("content-length", "5", REFUSED),
        ("connection", "keep-alive", REFUSED),
        ("transfer-encoding", "chunked", REFUSED),
        ("upgrade", "websocket", REFUSED),
        ("keep-alive", "timeout=5", REFUSED),
        ("proxy-connection", "keep-alive", REFUSED),
        ("te", "gzip", REFUSED),
        ("host", "other.test", "HEADERS :status 400"),
        ("te", "trailers", "HEADERS :status 200"),
    ];
    for (name, value, expected) in cases {
        let got = h2_raw_get(addr, config.clone(), &[(name, value)]).await;
        println!("h2 request with {name}: {value:?} -> {got}");
        if expected == REFUSED {
            // A stream reset, or the whole connection ended (GOAWAY) for a field that
            // breaks HPACK-level rules: either way nothing is forwarded.
            assert!(
                got == "RST_STREAM PROTOCOL_ERROR (1)" || got == "GOAWAY",
                "{name}: {value:?}: {got}"
            );
        } else {
            assert_eq!(got, expected, "{name}: {value:?}");
        }
    }
    let seen = recorder.requests(0);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header("te"), None);
    assert_eq!(seen[0].header("host"), Some("edgelb.test"));
    assert_eq!(seen[0].header("x-injected"), None);
}
