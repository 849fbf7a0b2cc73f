//! Sticky sessions through a real edgelb to real backend processes: edgelb's authenticated
//! cookie and the backend's own cookie pin a client; forged and expired cookies are ignored;
//! a pinned client whose backend dies is moved and pinned again.
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use edgelb::proxy::sticky::{LB_COOKIE, Stickiness, Sticky, StickyKey};
use edgelb_tests::backend::BackendProcess;
use edgelb_tests::daemon::Signal;
use edgelb_tests::https::{self, ClientOpts, Reply, get};
use edgelb_tests::listener::{FAST_CHECKS, SERVER_NAME, Setup};
use hyper::HeaderMap;

async fn request(addr: std::net::SocketAddr, s: &Setup, path: &str, cookie: Option<&str>) -> Reply {
    let mut req = get(path);
    if let Some(c) = cookie {
        req.headers_mut()
            .insert("cookie", c.parse().expect("cookie header"));
    }
    let reply = https::send(
        addr,
        SERVER_NAME,
        ClientOpts::new(&s.ca.cert_pem).config(),
        req,
    )
    .await
    .expect("request");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply
}

/// edgelb with `args` and one `--backend` for each of `backends`.
fn start_with(
    s: &Setup,
    mut args: Vec<String>,
    backends: &[BackendProcess],
) -> (edgelb_tests::daemon::Daemon, std::net::SocketAddr) {
    for b in backends {
        args.extend(["--backend".to_string(), b.addr.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.start(&args)
}

fn sticky_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{LB_COOKIE}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

/// A cookie for `backend` made with `key`, as another edgelb node would, at time `at`.
fn token(key: &StickyKey, backend: &str, at: SystemTime) -> String {
    let s = Sticky::new(
        std::sync::Arc::new(Stickiness::LbCookie {
            key: Some(key.clone()),
            duration: Duration::from_secs(60),
        }),
        None,
    );
    let mut h = HeaderMap::new();
    s.on_response(&mut h, backend, false, true, at);
    h.get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a cookie was set")
        .to_string()
}

#[tokio::test]
async fn lb_cookies_pin_clients_and_cannot_be_forged() {
    let s = Setup::new();
    let backends: Vec<BackendProcess> = ["a", "b", "c"]
        .iter()
        .map(|n| BackendProcess::start(n, "127.0.0.1:0"))
        .collect();
    let key_file = s.dir.write_private("sticky.key", [7u8; 48]);
    let key = StickyKey::from_file(&key_file).expect("key file");
    let other_key = StickyKey::generate().expect("random key");
    let mut args: Vec<String> = [
        "--sticky-session",
        "lb-cookie",
        "--sticky-key-file",
        &key_file.to_string_lossy(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(FAST_CHECKS.map(String::from));
    let (lb, addr) = start_with(&s, args, &backends);

    let first = request(addr, &s, "/", None).await;
    let cookie = sticky_cookie(&first).expect("the first response pins the client");
    for i in 0..100 {
        let r = request(addr, &s, "/", Some(&cookie)).await;
        assert_eq!(r.body, first.body, "request {i} left its backend");
        assert!(
            sticky_cookie(&r).is_none(),
            "a pinned request got a new cookie"
        );
    }

    // A cookie made by another node with the shared key is honoured; one made with another
    // key, a tampered one, an expired one or garbage is ignored (normal balancing, no error).
    let c_addr = backends[2].addr.to_string();
    let shared = token(&key, &c_addr, SystemTime::now());
    for _ in 0..10 {
        assert_eq!(
            request(addr, &s, "/", Some(&shared)).await.body,
            "backend c\n"
        );
    }
    let ignored = [
        token(&other_key, &c_addr, SystemTime::now()),
        token(&key, &c_addr, SystemTime::now() - Duration::from_secs(3600)),
        format!("{}x", token(&key, &c_addr, SystemTime::now())),
        format!("{LB_COOKIE}=not-a-token"),
    ];
    for bad in &ignored {
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let r = request(addr, &s, "/", Some(bad)).await;
            assert!(
                sticky_cookie(&r).is_some(),
                "an ignored cookie must be replaced"
            );
            seen.insert(r.body);
        }
        assert!(seen.len() > 1, "cookie {bad:?} pinned the client: {seen:?}");
    }

    // The pinned backend dies: the client moves, gets a new cookie, and stays on the new one.
    let pinned_name = first.body.trim().trim_start_matches("backend ").to_string();
    let mut backends = backends;
    let victim = ["a", "b", "c"]
        .iter()
        .position(|n| *n == pinned_name)
        .expect("a known backend");
    backends.remove(victim).kill();
    lb.wait_for_log("backend unhealthy", 1).await;
    let moved = request(addr, &s, "/", Some(&cookie)).await;
    assert_ne!(moved.body, first.body);
    let new_cookie = sticky_cookie(&moved).expect("a moved client is pinned again");
    for _ in 0..20 {
        assert_eq!(
            request(addr, &s, "/", Some(&new_cookie)).await.body,
            moved.body
        );
    }
}

#[tokio::test]
async fn the_backends_own_cookie_pins_the_client_to_the_backend_that_set_it() {
    let s = Setup::new();
    let backends: Vec<BackendProcess> = ["a", "b", "c"]
        .iter()
        .map(|n| BackendProcess::start(n, "127.0.0.1:0"))
        .collect();
    let args: Vec<String> = [
        "--sticky-session",
        "app-cookie",
        "--cookie-name",
        "SESSIONID",
    ]
    .map(String::from)
    .to_vec();
    let (lb, addr) = start_with(&s, args, &backends);
    let mut logins = Vec::new();
    for session in ["abc", "def", "ghi"] {
        let login = request(addr, &s, &format!("/set-cookie/SESSIONID={session}"), None).await;
        let cookie = format!("theme=dark; SESSIONID={session}");
        for i in 0..100 {
            let r = request(addr, &s, "/", Some(&cookie)).await;
            assert_eq!(r.body, login.body, "session {session}, request {i}");
        }
        logins.push((cookie, login.body));
    }
    // The sessions are the group runtime's: a reload that keeps the cookie keeps them.
    lb.signal(Signal::SIGHUP);
    lb.wait_for_log("reloaded", 1).await;
    for (cookie, body) in &logins {
        for i in 0..20 {
            let r = request(addr, &s, "/", Some(cookie)).await;
            assert_eq!(&r.body, body, "{cookie} after the reload, request {i}");
        }
    }
    // An unknown session value is balanced normally.
    let mut seen = HashSet::new();
    for _ in 0..6 {
        seen.insert(request(addr, &s, "/", Some("SESSIONID=unknown")).await.body);
    }
    assert!(seen.len() > 1, "{seen:?}");
}

/// Without `--sticky-key-file` the key is made at random at start; a reload (which re-reads
/// the configuration) keeps it, so the cookies already handed out keep pinning their clients.
#[tokio::test]
async fn lb_cookies_made_with_the_random_key_outlive_a_reload() {
    let s = Setup::new();
    let backends: Vec<BackendProcess> = ["a", "b", "c"]
        .iter()
        .map(|n| BackendProcess::start(n, "127.0.0.1:0"))
        .collect();
    let args: Vec<String> = ["--sticky-session", "lb-cookie"].map(String::from).to_vec();
    let (lb, addr) = start_with(&s, args, &backends);
    let first = request(addr, &s, "/", None).await;
    let cookie = sticky_cookie(&first).expect("the first response pins the client");
    for reloads in 1..=2 {
        lb.signal(Signal::SIGHUP);
        lb.wait_for_log("reloaded", reloads).await;
        // Three backends in turn for a client whose cookie is no longer honoured.
        for i in 0..6 {
            let r = request(addr, &s, "/", Some(&cookie)).await;
            assert_eq!(r.body, first.body, "after reload {reloads}, request {i}");
        }
    }
}
