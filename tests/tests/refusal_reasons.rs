//! Refusals say why, in the daemon's log, one line each with the client: a client certificate
//! that is X.509 v1 (what `openssl x509 -req` makes without an extension file), from an
//! unknown CA, or missing; plain HTTP on the TLS port; a request refused before routing; a
//! request head hyper could not parse (and its access log line). And `edgelb check` warns about
//! a v1 client CA and refuses a v1 server certificate.
use std::path::Path;
use std::process::Command;

use edgelb_tests::backend::Backend;
use edgelb_tests::daemon::run;
use edgelb_tests::https::{self, ClientOpts, get, read_responses};
use edgelb_tests::listener::{SERVER_NAME, Setup};
use tokio::io::AsyncWriteExt;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The X.509 version `openssl x509 -text` reads in `cert`.
fn version(dir: &Path, cert: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", cert])
        .current_dir(dir)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Version: "))
        .unwrap_or("?")
        .to_string()
}

/// A CA (v3, or v1 with `v1_ca`) and a client certificate it signs the way the openssl
/// manual shows, without an extension file: X.509 v1.
fn openssl_pki(dir: &Path, v1_ca: bool) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    if v1_ca {
        openssl(
            dir,
            &[
                &["req", "-new"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.csr", "-subj", "/CN=v1 CA"],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-out", "ca.pem", "-days",
                "2",
            ],
        );
    } else {
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-subj",
                    "/CN=v3 CA",
                    "-days",
                    "2",
                ],
            ]
            .concat(),
        );
    }
    openssl(
        dir,
        &[
            &["req", "-new"][..],
            &ec,
            &[
                "-keyout",
                "client.key",
                "-out",
                "client.csr",
                "-subj",
                "/CN=client-v1",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "2",
        ],
    );
    assert!(
        version(dir, "client.pem").starts_with('1'),
        "openssl no longer makes v1 certificates this way"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_and_requests_are_logged_with_their_reason_and_client() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    openssl_pki(s.dir.path(), false);
    let ca = s.dir.path().join("ca.pem").to_string_lossy().into_owned();
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--client-ca", &ca]);

    // rustls will not even load a v1 certificate as a client: openssl's client sends it.
    let addr_text = addr.to_string();
    let server_ca = s.ca.cert_pem.to_string_lossy().into_owned();
    Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr_text,
            "-servername",
            SERVER_NAME,
            "-CAfile",
            &server_ca,
            "-cert",
            "client.pem",
            "-key",
            "client.key",
        ])
        .current_dir(s.dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    // In TLS 1.3 the client learns of the refusal only after its own Finished: the log
    // line below is the check (and the backend served no one).
    lb.wait_for_log(
        "TLS handshake refused: client certificate: X.509 v1 is not supported, re-issue it as v3",
        1,
    )
    .await;

    let other = edgelb_tests::pki::Ca::new(&s.dir, "other");
    let stranger = other.client(&s.dir, "stranger", "client-2");
    let mut wrong = ClientOpts::new(&s.ca.cert_pem);
    wrong.client_cert = Some((&stranger.cert, &stranger.key));
    assert!(
        https::send(addr, SERVER_NAME, wrong.config(), get("/"))
            .await
            .is_err()
    );
    lb.wait_for_log("TLS handshake refused: client certificate: unknown CA", 1)
        .await;

    let none = ClientOpts::new(&s.ca.cert_pem);
    assert!(
        https::send(addr, SERVER_NAME, none.config(), get("/"))
            .await
            .is_err()
    );
    lb.wait_for_log("TLS handshake refused: no client certificate", 1)
        .await;

    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    lb.wait_for_log("TLS handshake refused: plain HTTP sent to the TLS port", 1)
        .await;

    // A request refused before routing: HTTP/1.1 without Host, from an admitted client.
    let good = s.ca.client(&s.dir, "good", "client-1");
    let own_ca = s.ca.cert_pem.to_string_lossy().into_owned();
    drop(lb);
    let (lb, addr) = s.start(&["--backend", &be, "--client-ca", &own_ca]);
    let mut ok = ClientOpts::new(&s.ca.cert_pem);
    ok.client_cert = Some((&good.cert, &good.key));
    ok.alpn = &[b"http/1.1"];
    let mut tls = https::connect(addr, SERVER_NAME, ok.config())
        .await
        .expect("connect");
    tls.write_all(b"GET /no-host HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let (statuses, _) = read_responses(&mut tls, 1).await;
    assert_eq!(statuses, vec![400]);
    lb.wait_for_log("request refused: HTTP/1.1 without Host (answered 400)", 1)
        .await;
    let log = lb.log();
    let line = log
        .lines()
        .find(|l| l.contains("request refused"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("client=127.0.0.1:") && line.contains("listener=\"listener-1\""),
        "{line}"
    );
    assert_eq!(backend.served(), 0);
}

/// Request heads hyper cannot parse are answered by hyper itself before any service sees them:
/// each is still logged with its reason and is in the access log with the status it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_heads_are_logged_with_their_reason_and_in_the_access_log() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let admin = edgelb_tests::listener::free_addr().to_string();
    let (lb, addr) = s.start(&["--backend", &be, "--access-log", "--admin", &admin]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let cases: [(&str, &[u8], u16, &str); 2] = [
        (
            "a header name with a space",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
            400,
            "request refused: malformed HTTP/1.1 request head: invalid HTTP header parsed (answered 400)",
        ),
        (
            "a 20 KiB head",
            big.as_bytes(),
            431,
            "request refused: malformed HTTP/1.1 request head: message head is too large (answered 431)",
        ),
    ];
    for (what, head, status, reason) in cases {
        let mut opts = ClientOpts::new(&s.ca.cert_pem);
        opts.alpn = &[b"http/1.1"];
        let mut tls = https::connect(addr, SERVER_NAME, opts.config())
            .await
            .expect("connect");
        tls.write_all(head).await.expect("write");
        let (statuses, _) = read_responses(&mut tls, 1).await;
        assert_eq!(statuses, vec![status], "{what}");
        lb.wait_for_log(reason, 1).await;
        let access = format!(
            "sni=\"{SERVER_NAME}\" host=\"-\" method=- target=\"-\" version=- status={status} "
        );
        lb.wait_for_log(&access, 1).await;
    }
    assert_eq!(backend.served(), 0);
    // Counted as the 4xx answers they were, as refusals after parsing are.
    let series = "edgelb_requests_total{listener=\"listener-1\",group=\"server_group-1\",backend=\"-\",code=\"4xx\"}";
    assert_eq!(
        edgelb_tests::admin::metric(&admin, series),
        Some(2.0),
        "{}",
        edgelb_tests::admin::get(&admin, "/metrics")
    );
}

/// `edgelb check` of an https listener with this certificate and key, and `extra` flags.
fn check(cert: &Path, key: &Path, extra: &[&str]) -> std::process::Output {
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let listener = [
        "check",
        "--listen",
        "127.0.0.1:8443",
        "--backend",
        "127.0.0.1:8080",
    ];
    run(&[&listener[..], &["--cert", &cert, "--key", &key], extra].concat())
}

#[test]
fn check_warns_about_a_v1_client_ca() {
    let s = Setup::new();
    openssl_pki(s.dir.path(), true);
    assert!(version(s.dir.path(), "ca.pem").starts_with('1'));
    let ca = s.dir.path().join("ca.pem").to_string_lossy().into_owned();
    let out = check(&s.server.cert, &s.server.key, &["--client-ca", &ca]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--client-ca") && stderr.contains("CN=v1 CA is an X.509 v1 certificate"),
        "{stderr}"
    );
}

/// rustls cannot serve an X.509 v1 certificate (it checks the key against it with webpki):
/// `check` refuses it as `--cert`, and says what to do, rather than blaming the key.
#[test]
fn check_refuses_a_v1_server_certificate_by_its_flag() {
    let s = Setup::new();
    openssl_pki(s.dir.path(), false);
    let (cert, key) = (
        s.dir.path().join("client.pem"),
        s.dir.path().join("client.key"),
    );
    let out = check(&cert, &key, &["--allow-readable-keys"]);
    let cert = cert.to_string_lossy();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "edgelb: error: --cert \"{cert}\": an X.509 v1 certificate"
        )) && stderr.contains("re-issue it as v3"),
        "{stderr}"
    );
}
