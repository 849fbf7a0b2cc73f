//! Advanced forwarding through a real edgelb: redirects (HTTP to HTTPS), fixed responses, and
//! conditions on path, host, method and client address, in order.
use std::io::{Read, Write};

use edgelb_tests::backend::Backend;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup};

#[test]
fn an_http_listener_redirects_everything_to_https() {
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let dir = edgelb_tests::certs::TempDir::new();
    let (_lb, addr) = edgelb_tests::listener::start_http(
        backend.addr,
        &[
            "--rule",
            "name=to-https;path-prefix=/;action=redirect:301:https://{host}{path}{query}",
        ],
        dir.path(),
    );
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.write_all(
        b"GET /cart/view?id=7 HTTP/1.1\r\nhost: shop.example.com:80\r\nconnection: close\r\n\r\n",
    )
    .expect("request");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 301"), "{text}");
    assert!(
        text.to_lowercase()
            .contains("location: https://shop.example.com/cart/view?id=7\r\n"),
        "{text}"
    );
    assert_eq!(backend.served(), 0);
}

#[tokio::test]
async fn rules_answer_in_order_and_the_rest_goes_to_the_group() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let (lb, addr) = s.start(&[
        "--access-log",
        "--backend", &be,
        "--rule", "name=maintenance;path=/maintenance;action=fixed:503:text/plain:back soon",
        "--rule", "name=partners;client=10.0.0.0/8;path-prefix=/partner;action=fixed:200:text/plain:partner area",
        "--rule", "name=local;client=127.0.0.0/8;path=/local;action=fixed:200:text/plain:local only",
        "--rule", "name=no-delete;method=DELETE;action=fixed:405:text/plain:read only",
        "--rule", "name=api;host=api.example.com;path-prefix=/v1;action=forward",
        "--rule", "name=catch-api;host=*.example.com;action=fixed:404:text/plain:unknown api",
    ]);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let send = |method: &str, host: &str, path: &str| {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(http_body_util::Full::new(hyper::body::Bytes::new()))
            .expect("request");
        https::send(addr, SERVER_NAME, config.clone(), req)
    };
    let r = send("GET", "edgelb.test", "/maintenance")
        .await
        .expect("request");
    assert_eq!((r.status, r.body.as_str()), (503, "back soon"));
    // The client is 127.0.0.1, outside 10.0.0.0/8: the partner rule does not apply.
    let r = send("GET", "edgelb.test", "/partner/x")
        .await
        .expect("request");
    assert_eq!((r.status, r.body.as_str()), (200, "backend a\n"));
    // ... and inside 127.0.0.0/8, where the client's own address is what is matched.
    let r = send("GET", "edgelb.test", "/local").await.expect("request");
    assert_eq!((r.status, r.body.as_str()), (200, "local only"));
    let r = send("DELETE", "edgelb.test", "/anything")
        .await
        .expect("request");
    assert_eq!((r.status, r.body.as_str()), (405, "read only"));
    let r = send("GET", "api.example.com", "/v1/items")
        .await
        .expect("request");
    assert_eq!((r.status, r.body.as_str()), (200, "backend a\n"));
    let r = send("GET", "api.example.com", "/v2/items")
        .await
        .expect("request");
    assert_eq!((r.status, r.body.as_str()), (404, "unknown api"));
    let r = https::send(addr, SERVER_NAME, config.clone(), get("/"))
        .await
        .expect("request");
    assert_eq!(r.body, "backend a\n");
    assert_eq!(backend.served(), 3);
    // The access log names the rule that answered, and `-` where none matched. Its lines reach
    // the file a few milliseconds after their requests (a writer thread batches them).
    lb.wait_for_log("edgelb::access", 7).await;
    let log = lb.log();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("edgelb::access"))
        .collect();
    assert!(
        access
            .iter()
            .any(|l| l.contains("rule=\"maintenance\"") && l.contains("status=503")),
        "{log}"
    );
    assert!(
        access
            .iter()
            .any(|l| l.contains("rule=\"api\"") && l.contains("status=200")),
        "{log}"
    );
    assert!(
        access
            .iter()
            .any(|l| l.contains("rule=\"-\"") && l.contains("status=200")),
        "{log}"
    );
}
