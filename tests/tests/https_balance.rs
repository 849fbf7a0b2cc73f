//! Balancing across real backends behind a real edgelb: weighted round robin shares, weight 0,
//! least connections steering away from a busy backend, and source-IP hashing.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

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
    let backends = [
        Backend::start("a", "127.0.0.1:0", None),
        Backend::start("b", "127.0.0.1:0", None),
    ];
    let args: Vec<String> = backends
        .iter()
        .flat_map(|b| ["--backend".to_string(), b.addr.to_string()])
        .collect();
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let mut to_busy = Vec::new();
    for algorithm in ["wrr", "wlc"] {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--algorithm", algorithm]);
        let (lb, addr) = s.start(&args);
        // One request held at whichever backend the balancer picked: that one is busy.
        let before: Vec<usize> = backends.iter().map(Backend::served).collect();
        let held = tokio::spawn(https::send(
            addr,
            SERVER_NAME,
            config.clone(),
            get("/sleep-ms/30000"),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        let busy = loop {
            if let Some(k) = (0..2).find(|&k| backends[k].served() > before[k]) {
                break k;
            }
            assert!(
                Instant::now() < deadline,
                "the held request reached no backend"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Then requests one after another, each answered at once by whoever gets it.
        let before = backends[busy].served();
        for _ in 0..20 {
            https::send(addr, SERVER_NAME, config.clone(), get("/"))
                .await
                .expect("request");
        }
        to_busy.push(backends[busy].served() - before);
        held.abort();
        drop(lb);
    }
    // Round robin takes turns whatever the load; least connections sends everything to the
    // idle backend (a request just answered may still count for a moment: a few ties).
    assert!(
        to_busy[0] >= 9,
        "wrr sent the busy backend {} of 20",
        to_busy[0]
    );
    assert!(
        to_busy[1] <= 3,
        "wlc sent the busy backend {} of 20",
        to_busy[1]
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
