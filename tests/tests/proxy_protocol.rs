//! The PROXY protocol both ways, against a real HAProxy (Debian's 2.6): HAProxy in front of
//! edgelb (`send-proxy`, `send-proxy-v2`) and edgelb in front of HAProxy (`accept-proxy`).
//! Clients bind distinct loopback addresses (all of 127.0.0.0/8 is local), so that the client
//! a header names differs from the hop that sends it.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgelb_tests::admin;
use edgelb_tests::backend::Backend;
use edgelb_tests::certs::TempDir;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{FAST_CHECKS, SERVER_NAME, Setup, free_addr};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;

const HAPROXY: &str = "/usr/sbin/haproxy";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// HAProxy in the foreground (`-db`) with `config`, killed when dropped. Waits (10 s at most)
/// until `listens_on` accepts connections.
struct Haproxy {
    child: Child,
    log: std::path::PathBuf,
}

impl Haproxy {
    fn start(dir: &TempDir, name: &str, config: &str, listens_on: SocketAddr) -> Option<Self> {
        if !Path::new(HAPROXY).exists() {
            assert!(std::env::var_os("CI").is_none(), "{HAPROXY} is missing");
            eprintln!("skipped: {HAPROXY} is missing");
            return None;
        }
        let file = dir.write(&format!("{name}.cfg"), config);
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("haproxy log");
        let child = Command::new(HAPROXY)
            .args(["-db", "-f"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("spawn haproxy");
        let mut h = Haproxy { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(listens_on).is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", h.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy not listening after 10 s:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Some(h)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const DEFAULTS: &str = "global\n    maxconn 200\n\ndefaults\n    timeout connect 5s\n    \
                        timeout client 30s\n    timeout server 30s\n\n";

/// HAProxy as a TCP balancer in front of `edgelb`, sending `send` (`send-proxy` or
/// `send-proxy-v2`).
fn haproxy_in_front(
    dir: &TempDir,
    edgelb: SocketAddr,
    send: &str,
) -> Option<(Haproxy, SocketAddr)> {
    let front = free_addr();
    let config = format!(
        "{DEFAULTS}frontend fe\n    mode tcp\n    bind {front}\n    default_backend be\n\n\
         backend be\n    mode tcp\n    server edgelb {edgelb} {send}\n"
    );
    Haproxy::start(dir, &format!("front-{send}"), &config, front).map(|h| (h, front))
}

/// HAProxy as an HTTP backend that requires the PROXY protocol (`accept-proxy`), answering
/// every request with the client address (and authority) the header gave it.
fn haproxy_behind(dir: &TempDir, name: &str) -> Option<(Haproxy, SocketAddr)> {
    let addr = free_addr();
    let config = format!(
        "{DEFAULTS}frontend fe\n    mode http\n    bind {addr} accept-proxy\n    \
         http-request return status 200 content-type text/plain lf-string \
         \"src=%[src] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority]\"\n"
    );
    Haproxy::start(dir, name, &config, addr).map(|h| (h, addr))
}

fn header<'a>(echo: &'a str, name: &str) -> Option<&'a str> {
    echo.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

fn refused(admin: &str, reason: &str) -> f64 {
    admin::metric(
        admin,
        &format!(
            "edgelb_proxy_protocol_refused_total{{listener=\"listener-1\",reason=\"{reason}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

fn h1_only(s: &Setup) -> Arc<ClientConfig> {
    let mut opts = ClientOpts::new(&s.ca.cert_pem);
    opts.alpn = &[b"http/1.1"];
    opts.config()
}

/// An HTTP/1.1 keep-alive connection over TLS from `source` to `addr`.
async fn keep_alive(
    source: IpAddr,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> SendRequest<Full<Bytes>> {
    let tls = https::connect_from(Some(source), addr, SERVER_NAME, config)
        .await
        .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http/1.1 handshake");
    tokio::spawn(conn);
    sender
}

/// One request on `sender`: status and body, within 10 s.
async fn request(sender: &mut SendRequest<Full<Bytes>>, path: &str) -> (u16, String) {
    let exchange = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(get(path))
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("answer within 10 s")
        .unwrap_or_else(|e| panic!("request {path}: {e}"))
}

#[tokio::test]
async fn behind_haproxy_the_client_it_names_is_the_client_and_others_are_refused() {
    let s = Setup::new();
    let backend = Backend::start("b", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    for (version, send, other) in [("v1", "send-proxy", "v2"), ("v2", "send-proxy-v2", "v1")] {
        let admin_addr = free_addr().to_string();
        let (lb, edge) = s.start(&[
            "--backend",
            &be,
            "--accept-proxy-protocol",
            version,
            "--proxy-protocol-from",
            "127.0.0.1/32",
            "--admin",
            &admin_addr,
            "--access-log",
        ]);
        let Some((haproxy, front)) = haproxy_in_front(&s.dir, edge, send) else {
            return;
        };

        // Through HAProxy from 127.0.0.7, over HTTP/2 and HTTP/1.1: the backend is told
        // about 127.0.0.7 and the port the client connected to (HAProxy's), not HAProxy.
        for opts_config in [config.clone(), h1_only(&s)] {
            let reply = https::send_from(
                Some(ip("127.0.0.7")),
                front,
                SERVER_NAME,
                opts_config,
                get("/echo"),
            )
            .await
            .unwrap_or_else(|e| panic!("{version} via haproxy: {e}\n{}", haproxy.log()));
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(
                header(&reply.body, "x-forwarded-for"),
                Some("127.0.0.7"),
                "{version}: {}",
                reply.body
            );
            assert_eq!(header(&reply.body, "x-real-ip"), Some("127.0.0.7"));
            assert_eq!(
                header(&reply.body, "x-forwarded-port"),
                Some(front.port().to_string().as_str()),
                "{version}: {}",
                reply.body
            );
        }
        // The access log names the client too.
        let in_access_log = |log: &str| {
            log.lines()
                .any(|l| l.contains("edgelb::access") && l.contains("client=127.0.0.7:"))
        };
        let log = lb.log_when(Duration::from_secs(10), in_access_log);
        assert!(in_access_log(&log), "{version}: {log}");

        // Straight to edgelb from an address outside --proxy-protocol-from: closed.
        let direct = https::send_from(
            Some(ip("127.0.0.9")),
            edge,
            SERVER_NAME,
            config.clone(),
            get("/echo"),
        )
        .await;
        assert!(direct.is_err(), "{version}: {direct:?}");
        assert!(refused(&admin_addr, "untrusted_peer") >= 1.0, "{version}");
        // From the trusted address but without a header (a TLS ClientHello first): closed.
        let bare = https::send(edge, SERVER_NAME, config.clone(), get("/echo")).await;
        assert!(bare.is_err(), "{version}: {bare:?}");
        assert!(refused(&admin_addr, "missing") >= 1.0, "{version}");
        // The other version's header: closed.
        let mut raw = tokio::net::TcpStream::connect(edge).await.expect("connect");
        let wrong: &[u8] = if other == "v2" {
            b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"
        } else {
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"
        };
        tokio::io::AsyncWriteExt::write_all(&mut raw, wrong)
            .await
            .expect("write");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
        )
        .await
        .expect("closed within 10 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{version}: {read:?}");
        assert!(refused(&admin_addr, "wrong_version") >= 1.0, "{version}");
        // Each refusal logged with its reason in words (rate-limited with the other refusals).
        lb.wait_for_log("refused: the peer is not in --proxy-protocol-from", 1)
            .await;
        lb.wait_for_log(
            "refused: the connection does not start with a PROXY protocol header",
            1,
        )
        .await;
        lb.wait_for_log(
            &format!("refused: a PROXY protocol {other} header where {version} is expected"),
            1,
        )
        .await;

        if version == "v2" {
            // A v2 LOCAL header (the balancer's own health check) keeps the real peer.
            let mut tcp = tokio::net::TcpStream::connect(edge).await.expect("connect");
            tokio::io::AsyncWriteExt::write_all(&mut tcp, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00")
                .await
                .expect("write");
            let tls = tokio_rustls::TlsConnector::from(h1_only(&s))
                .connect(
                    rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("name"),
                    tcp,
                )
                .await
                .expect("TLS after a LOCAL header");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let (status, echo) = request(&mut sender, "/echo").await;
            assert_eq!(status, 200, "{echo}");
            assert_eq!(
                header(&echo, "x-forwarded-for"),
                Some("127.0.0.1"),
                "{echo}"
            );
        }
        drop(haproxy);
        drop(lb);
    }
}

#[tokio::test]
async fn haproxy_behind_sees_each_client_checks_keep_it_healthy_and_connections_stay_private() {
    let s = Setup::new();
    let config = h1_only(&s);
    for version in ["v1", "v2"] {
        let Some((haproxy, hp)) = haproxy_behind(&s.dir, &format!("behind-{version}")) else {
            return;
        };
        let hp_key = hp.to_string();
        let admin_addr = free_addr().to_string();
        let healthy =
            format!("edgelb_backend_healthy{{group=\"server_group-1\",backend=\"{hp_key}\"}}");
        let check_flags = [&["--health-check", "http"][..], &FAST_CHECKS[..]].concat();
        let mut args = vec![
            "--backend",
            &hp_key,
            "--backend-proxy-protocol",
            version,
            "--admin",
            &admin_addr,
        ];
        args.extend(check_flags.iter().copied());
        let (lb, edge) = s.start(&args);
        // The same checks without the header, for contrast: HAProxy refuses them.
        let control_admin = free_addr().to_string();
        let mut control_args = vec!["--backend", &hp_key, "--admin", &control_admin];
        control_args.extend(check_flags.iter().copied());
        let (control, _) = s.start(&control_args);

        // Three clients, each on its own keep-alive connection, take turns: each must see
        // its own address every time. Two of three share a worker (there are at most two),
        // so a backend connection shared between clients would show another's address.
        let sources = ["127.0.0.7", "127.0.0.8", "127.0.0.10"];
        let mut senders = Vec::new();
        for source in sources {
            senders.push((source, keep_alive(ip(source), edge, config.clone()).await));
        }
        for round in 0..3 {
            for (source, sender) in &mut senders {
                let (status, body) = request(sender, "/").await;
                assert_eq!(status, 200, "{version} round {round}: {body}");
                assert!(
                    body.starts_with(&format!("src={source} dst=127.0.0.1:{}", edge.port())),
                    "{version} round {round} from {source}: {body}\n{}",
                    haproxy.log()
                );
                // v1 has no room for the server name; v2 carries it as PP2_TYPE_AUTHORITY.
                let authority = if version == "v2" { SERVER_NAME } else { "" };
                assert!(
                    body.ends_with(&format!("authority={authority}")),
                    "{version}: {body}"
                );
            }
        }

        // Once the control's checks, without a header, have failed (its metric follows within
        // the second), this backend, checked as often, is still healthy (checks send a header:
        // v2 LOCAL, or v1 with the checker's own addresses) and still serves.
        control.wait_for_log("backend unhealthy", 1).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while admin::metric(&control_admin, &healthy) != Some(0.0)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            admin::metric(&admin_addr, &healthy),
            Some(1.0),
            "{version}:\n{}",
            lb.log()
        );
        assert_eq!(
            admin::metric(&control_admin, &healthy),
            Some(0.0),
            "control:\n{}",
            control.log()
        );
        let reply = https::send_from(
            Some(ip("127.0.0.11")),
            edge,
            SERVER_NAME,
            config.clone(),
            get("/"),
        )
        .await
        .expect("request after checks");
        assert_eq!(reply.status, 200);
        assert!(reply.body.starts_with("src=127.0.0.11 "), "{}", reply.body);
        drop((lb, control, haproxy));
    }
}

/// A backend that reads a v2 header, then answers every HTTP/1.1 request of the connection
/// with the header's bytes in hex; it counts connections.
struct HeaderRecorder {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

fn header_recorder() -> HeaderRecorder {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                let mut reader = BufReader::new(stream.try_clone().expect("dup stream"));
                let mut writer = stream;
                let mut fixed = [0u8; 16];
                if reader.read_exact(&mut fixed).is_err() {
                    return;
                }
                let mut rest = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
                if reader.read_exact(&mut rest).is_err() {
                    return;
                }
                let hex: String = fixed
                    .iter()
                    .chain(&rest)
                    .map(|b| format!("{b:02x}"))
                    .collect();
                loop {
                    let mut line = String::new();
                    // A request head, then its answer; until the connection ends.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{hex}",
                        hex.len()
                    );
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    HeaderRecorder { addr, connections }
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What HAProxy 2.6 cannot show (it has no `fc_pp_tlv`): the v2 header's bytes, read by a
/// backend of the test's own. Addresses, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL with the client
/// bit and the TLS version; and one connection per client connection, reused.
#[tokio::test]
async fn v2_headers_carry_sni_and_tls_version_and_one_connection_serves_one_client() {
    let s = Setup::new();
    let recorder = header_recorder();
    let be = recorder.addr.to_string();
    let (_lb, edge) = s.start(&[
        "--backend",
        &be,
        "--backend-proxy-protocol",
        "v2",
        "--health-check",
        "off",
    ]);
    let mut a = keep_alive(ip("127.0.0.7"), edge, h1_only(&s)).await;
    let mut tls12 = ClientOpts::new(&s.ca.cert_pem);
    tls12.alpn = &[b"http/1.1"];
    let only_tls12 = [&rustls::version::TLS12];
    tls12.versions = &only_tls12;
    let mut b = keep_alive(ip("127.0.0.8"), edge, tls12.config()).await;
    for _ in 0..3 {
        for (sender, source, version) in [
            (&mut a, [127, 0, 0, 7], "TLSv1.3"),
            (&mut b, [127, 0, 0, 8], "TLSv1.2"),
        ] {
            let (status, hex) = request(sender, "/").await;
            assert_eq!(status, 200, "{hex}");
            let h = unhex(&hex);
            assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n", "{hex}");
            // Version 2 PROXY, TCP over IPv4, then source and destination.
            assert_eq!(&h[12..14], &[0x21, 0x11], "{hex}");
            assert_eq!(&h[16..20], &source, "{hex}");
            assert_eq!(&h[20..24], &[127, 0, 0, 1], "{hex}");
            assert_eq!(&h[26..28], &edge.port().to_be_bytes(), "{hex}");
            let authority = [
                &[0x02, 0x00, SERVER_NAME.len() as u8][..],
                SERVER_NAME.as_bytes(),
            ]
            .concat();
            assert!(contains(&h, &authority), "no authority TLV: {hex}");
            // PP2_TYPE_SSL: client byte PP2_CLIENT_SSL, verify 1 (no client certificate),
            // then PP2_SUBTYPE_SSL_VERSION.
            let ssl = [
                &[0x20, 0x00, 15, 0x01, 0, 0, 0, 1, 0x21, 0x00, 7][..],
                version.as_bytes(),
            ]
            .concat();
            assert!(contains(&h, &ssl), "no SSL TLV for {version}: {hex}");
        }
    }
    // Six requests, two client connections: two backend connections, each reused.
    assert_eq!(recorder.connections.load(Ordering::SeqCst), 2);
}
