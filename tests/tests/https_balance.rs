//! Balancing across real backends behind a real edgelb: weighted round robin shares, weight 0,
//! least connections steering away from a busy backend, and source-IP hashing.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use edgelb_tests::backend::Backend;
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup};

fn count(bodies: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for b in bodies {
        *m.entry(b.trim().to_string()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn weighted_round_robin_follows_weights_and_weight_zero_gets_nothing() {
    let s = Setup::new();
    let a = Backend::start("a", "127.0.0.1:0", None);
    let b = Backend::start("b", "127.0.0.1:0", None);
    let z = Backend::start("z", "127.0.0.1:0", None);
    let (wa, wb, wz) = (
        format!("{},weight=1", a.addr),
        format!("{},weight=3", b.addr),
        format!("{},weight=0", z.addr),
    );
    let (_lb, addr) = s.start(&["--backend", &wa, "--backend", &wb, "--backend", &wz]);
    let bodies = https::get_many(addr, ClientOpts::new(&s.ca.cert_pem).config(), "/", 400)
        .await
        .expect("requests");
    let c = count(&bodies);
    assert_eq!(c.get("backend a"), Some(&100), "{c:?}");
    assert_eq!(c.get("backend b"), Some(&300), "{c:?}");
    assert_eq!(z.served(), 0, "the weight-0 backend received requests");
}

#[tokio::test]
async fn least_connections_steers_away_from_a_busy_backend() {
    let s = Setup::new();
    let busy = Backend::start_delayed("busy", "127.0.0.1:0", Duration::from_millis(800));
    let quick = Backend::start("quick", "127.0.0.1:0", None);
    let (b1, b2) = (busy.addr.to_string(), quick.addr.to_string());
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let mut served_by_busy = Vec::new();
    for algorithm in ["wrr", "wlc"] {
        let (lb, addr) = s.start(&["--backend", &b1, "--backend", &b2, "--algorithm", algorithm]);
        let before = busy.served();
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move {
                    for _ in 0..5 {
                        https::send(addr, SERVER_NAME, config.clone(), get("/"))
                            .await
                            .expect("request");
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.expect("client task");
        }
        served_by_busy.push(busy.served() - before);
        drop(lb);
    }
    // 40 requests from 8 concurrent clients: round robin sends the busy backend half of
    // them; least connections only what arrives while it looks no busier than the other.
    assert!(
        served_by_busy[0] >= 18,
        "wrr sent the busy backend {} of 40",
        served_by_busy[0]
    );
    assert!(
        served_by_busy[1] <= 12,
        "wlc sent the busy backend {} of 40",
        served_by_busy[1]
    );
}

#[tokio::test]
async fn source_ip_hash_keeps_each_client_on_one_backend() {
    let s = Setup::new();
    let backends: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|n| Backend::start(n, "127.0.0.1:0", None))
        .collect();
    let mut args = vec!["--algorithm".to_string(), "source-ip-hash".to_string()];
    for b in &backends {
        args.push("--backend".into());
        args.push(b.addr.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_lb, addr) = s.start(&args);
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let mut chosen = HashMap::new();
    for host in 2..42u8 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, host));
        let mut seen = Vec::new();
        for _ in 0..3 {
            let reply = https::send_from(Some(source), addr, SERVER_NAME, config.clone(), get("/"))
                .await
                .expect("request");
            seen.push(reply.body);
        }
        assert!(
            seen.iter().all(|b| *b == seen[0]),
            "client {source} moved between backends: {seen:?}"
        );
        *chosen.entry(seen[0].clone()).or_insert(0usize) += 1;
    }
    assert_eq!(
        chosen.len(),
        3,
        "40 clients did not spread over 3 backends: {chosen:?}"
    );
}
