//! The HTTPS listener's TLS side, with real clients against a real edgelb and real backends:
//! SNI certificate choice, mutual TLS, security policies, ALPN / HTTP/2, session resumption.
use edgelb_tests::backend::Backend;
use edgelb_tests::daemon;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup};
use rustls::crypto::aws_lc_rs::cipher_suite as cs;

#[tokio::test]
async fn sni_picks_the_certificate_by_server_name_and_falls_back_to_the_default() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let exact = s.ca.server(&s.dir, "exact", &["shop.example.com"], &[]);
    let wild = s.ca.server(&s.dir, "wild", &["*.api.example.com"], &[]);
    // Configured for one name; its certificate also names another, which must select it too.
    let multi = s.ca.server(
        &s.dir,
        "multi",
        &["cdn.example.com", "static.example.com"],
        &[],
    );
    let sni = |name: &str, leaf: &edgelb_tests::pki::Leaf| {
        format!("{name}={}:{}", leaf.cert.display(), leaf.key.display())
    };
    let (a1, a2, a3) = (
        sni("shop.example.com", &exact),
        sni("*.api.example.com", &wild),
        sni("cdn.example.com", &multi),
    );
    let be = backend.addr.to_string();
    let (_lb, addr) = s.start(&[
        "--backend",
        &be,
        "--sni-cert",
        &a1,
        "--sni-cert",
        &a2,
        "--sni-cert",
        &a3,
    ]);

    let config = ClientOpts::new(&s.ca.cert_pem).config();
    for (name, want, what) in [
        ("shop.example.com", &exact.der, "exact name"),
        ("SHOP.example.com", &exact.der, "names are case-insensitive"),
        ("v1.api.example.com", &wild.der, "wildcard"),
        (
            "static.example.com",
            &multi.der,
            "a SAN of a configured certificate",
        ),
    ] {
        let reply = https::send(addr, name, config.clone(), get("/"))
            .await
            .unwrap_or_else(|e| panic!("{what} ({name}): {e}"));
        assert_eq!(reply.status, 200, "{what}");
        assert!(
            reply.session.peer_cert == *want,
            "{what}: {name} got the wrong certificate"
        );
    }
    // No SNI (connecting by IP) and unknown names get the default certificate, which this
    // client can only verify for its own names: check the bytes instead.
    for name in ["127.0.0.1", "deep.v1.api.example.com", "example.com"] {
        let loose = edgelb_tests::https::connect_unverified(addr, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            loose == s.server.der,
            "{name} did not get the default certificate"
        );
    }
    assert_eq!(backend.served(), 4);
}

#[test]
fn thousands_of_sni_certificates_load_and_resolve() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let n = 2000;
    let leaves: Vec<_> = (0..n)
        .map(|i| {
            s.ca.server(
                &s.dir,
                &format!("sni{i}"),
                &[&format!("host{i}.example.com")],
                &[],
            )
        })
        .collect();
    let flags: Vec<String> = leaves
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            [
                "--sni-cert".to_string(),
                format!(
                    "host{i}.example.com={}:{}",
                    l.cert.display(),
                    l.key.display()
                ),
            ]
        })
        .collect();
    let be = backend.addr.to_string();
    let mut args: Vec<&str> = vec!["--backend", &be];
    args.extend(flags.iter().map(String::as_str));
    let started = std::time::Instant::now();
    let (_lb, addr) = s.start(&args);
    eprintln!(
        "edgelb with {n} SNI certificates ready in {:?}",
        started.elapsed()
    );
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    for i in [0, n / 2, n - 1] {
        let name = format!("host{i}.example.com");
        let reply = rt
            .block_on(https::send(addr, &name, config.clone(), get("/")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            reply.session.peer_cert == leaves[i].der,
            "{name} got the wrong certificate"
        );
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let clients = edgelb_tests::pki::Ca::new(&s.dir, "clients");
    let other = edgelb_tests::pki::Ca::new(&s.dir, "other");
    let good = clients.client(&s.dir, "good", "client-1");
    let stranger = other.client(&s.dir, "stranger", "client-2");
    let be = backend.addr.to_string();
    let ca = clients.cert_pem.to_string_lossy().into_owned();
    let (_lb, addr) = s.start(&["--backend", &be, "--client-ca", &ca]);

    let mut no_cert = ClientOpts::new(&s.ca.cert_pem);
    no_cert.alpn = &[b"http/1.1"];
    let refused = https::send(addr, SERVER_NAME, no_cert.config(), get("/echo")).await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served: {refused:?}"
    );
    let mut wrong = ClientOpts::new(&s.ca.cert_pem);
    wrong.client_cert = Some((&stranger.cert, &stranger.key));
    let refused = https::send(addr, SERVER_NAME, wrong.config(), get("/echo")).await;
    assert!(
        refused.is_err(),
        "a client with another CA's certificate was served: {refused:?}"
    );
    assert_eq!(
        backend.served(),
        0,
        "an unauthenticated client reached the backend"
    );

    let mut ok = ClientOpts::new(&s.ca.cert_pem);
    ok.client_cert = Some((&good.cert, &good.key));
    let mut req = get("/echo");
    req.headers_mut().insert(
        "x-client-cert-subject",
        "CN=forged".parse().expect("static"),
    );
    let reply = https::send(addr, SERVER_NAME, ok.config(), req)
        .await
        .expect("a client with a good certificate");
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.contains("x-client-verify: SUCCESS"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("x-client-cert-subject: CN=client-1, O=edgelb tests"),
        "{}",
        reply.body
    );
    assert!(
        !reply.body.contains("forged"),
        "a client-supplied subject reached the backend: {}",
        reply.body
    );
}

#[tokio::test]
async fn security_policies_set_versions_and_cipher_suites() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let tls12_only: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let chacha12 = vec![cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256];

    let attempt = |addr, suites: Option<Vec<rustls::SupportedCipherSuite>>, versions| {
        let mut opts = ClientOpts::new(&s.ca.cert_pem);
        opts.versions = versions;
        opts.suites = suites;
        let config = opts.config();
        async move { https::send(addr, SERVER_NAME, config, get("/")).await }
    };

    let (lb, addr) = s.start(&["--backend", &be, "--tls-policy", "tls-1-3"]);
    assert!(
        attempt(addr, None, tls12_only).await.is_err(),
        "TLS 1.2 accepted under tls-1-3"
    );
    let r = attempt(addr, None, rustls::ALL_VERSIONS)
        .await
        .expect("TLS 1.3 under tls-1-3");
    assert_eq!(r.session.version, Some(rustls::ProtocolVersion::TLSv1_3));
    drop(lb);

    let (lb, addr) = s.start(&["--backend", &be, "--tls-policy", "tls-1-2-strict"]);
    assert!(
        attempt(addr, Some(chacha12.clone()), tls12_only)
            .await
            .is_err(),
        "CHACHA20 accepted under tls-1-2-strict"
    );
    let r = attempt(addr, None, tls12_only)
        .await
        .expect("TLS 1.2 AES-GCM under tls-1-2-strict");
    assert_eq!(r.session.version, Some(rustls::ProtocolVersion::TLSv1_2));
    drop(lb);

    let (_lb, addr) = s.start(&["--backend", &be]);
    let r = attempt(addr, Some(chacha12), tls12_only)
        .await
        .expect("TLS 1.2 CHACHA20 under the default tls-1-2");
    assert!(
        r.session
            .suite
            .as_deref()
            .is_some_and(|s| s.contains("CHACHA20")),
        "{:?}",
        r.session.suite
    );

    // TLS 1.0/1.1 policies are refused up front, citing the RFC that retired them.
    let out = daemon::run(&[
        "check",
        "--listen",
        "127.0.0.1:9",
        "--cert",
        &s.server.cert.to_string_lossy(),
        "--key",
        &s.server.key.to_string_lossy(),
        "--backend",
        &be,
        "--tls-policy",
        "tls-1-0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-policy") && err.contains("tls-1-0") && err.contains("RFC 8996"),
        "{err}"
    );
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_unless_turned_off_and_sessions_resume() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let config = ClientOpts::new(&s.ca.cert_pem).config();

    let (lb, addr) = s.start(&["--backend", &be]);
    let first = https::send(addr, SERVER_NAME, config.clone(), get("/"))
        .await
        .expect("h2 request");
    assert_eq!(first.session.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!((first.status, first.body.as_str()), (200, "backend a\n"));
    assert!(!first.session.resumed);
    let second = https::send(addr, SERVER_NAME, config.clone(), get("/"))
        .await
        .expect("second request");
    assert!(
        second.session.resumed,
        "the second connection did not resume the TLS session"
    );
    drop(lb);

    let (_lb, addr) = s.start(&["--backend", &be, "--http2", "off"]);
    let reply = https::send(addr, SERVER_NAME, config, get("/"))
        .await
        .expect("http/1.1 request");
    assert_eq!(reply.session.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(reply.status, 200);
}

/// The same listener through the clients operators use: curl over HTTP/2, and openssl
/// s_client pinned to a TLS 1.2 cipher suite that only the default policy offers.
#[test]
fn curl_and_openssl_see_http2_and_the_policy() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let ca = s.ca.cert_pem.to_string_lossy().into_owned();
    let s_client = |port: u16| {
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                SERVER_NAME,
            ])
            .args([
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
                "-CAfile",
                &ca,
                "-verify_return_error",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl (cargo xtask setup installs it)");
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("openssl s_client");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    let (lb, addr) = s.start(&["--backend", &be]);
    let out = edgelb_tests::client::curl_h2(&ca, addr, &["-w", "\nhttp_version=%{http_version}"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("backend a\n") && text.ends_with("http_version=2"),
        "curl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, text) = s_client(addr.port());
    assert!(
        ok && text.contains("ECDHE-ECDSA-CHACHA20-POLY1305"),
        "openssl under tls-1-2:\n{text}"
    );
    drop(lb);

    let (_lb, addr) = s.start(&["--backend", &be, "--tls-policy", "tls-1-2-strict"]);
    let (ok, text) = s_client(addr.port());
    assert!(
        !ok,
        "openssl negotiated CHACHA20 under tls-1-2-strict:\n{text}"
    );
}

/// Plain HTTP sent to the TLS port is answered with a readable 400 (as nginx does) rather than
/// a TLS alert, and reaches no backend; TLS clients on the same port are served as ever.
#[tokio::test]
async fn plain_http_on_the_tls_port_gets_400() {
    use std::io::{Read, Write};
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (_lb, addr) = s.start(&["--backend", &be]);
    let answer = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(b"GET / HTTP/1.1\r\nHost: edgelb.test\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("client thread");
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
    assert!(answer.ends_with("use https:// in the URL.\n"), "{answer:?}");
    assert_eq!(backend.served(), 0);
    let reply = https::send(
        addr,
        SERVER_NAME,
        ClientOpts::new(&s.ca.cert_pem).config(),
        get("/"),
    )
    .await
    .expect("a TLS client on the same port");
    assert_eq!(reply.status, 200);
}
