//! `cargo run --release -p edgelb-tests --bin rules-bench`: the cost of evaluating a listener's
//! advanced-forwarding rules (`edgelb::rules`) as the rule count grows, with the index
//! (`RuleSet::evaluate`) and with a linear scan of every rule (`RuleSet::evaluate_linear`) as
//! the baseline. Each size gets rounds of up to 1,000,000 evaluations over a fixed mix of
//! matching and non-matching requests, each round bounded by a time budget; the best round
//! counts. `--sizes 10,1000` picks the sizes, `--indexed-only` skips the baseline.
use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use edgelb::rules::{ActionSpec, PathMatch, RequestInfo, RuleSet, RuleSpec};
use edgelb_tests::rng::Rng;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const EVALS: usize = 1_000_000;
const ROUNDS: usize = 3;
const BUDGET: Duration = Duration::from_millis(250);
const REQUESTS: usize = 1024;
const GROUPS: &[&str] = &["web", "api", "static"];

/// What a [`RequestInfo`] borrows.
struct Req {
    host: Option<String>,
    path: String,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
    client: IpAddr,
}

impl Req {
    fn new(host: Option<String>, path: String) -> Req {
        Req {
            host,
            path,
            query: None,
            method: Method::GET,
            headers: HeaderMap::new(),
            client: "203.0.113.9".parse().expect("ip"),
        }
    }

    fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: &self.headers,
            client: self.client,
        }
    }
}

fn spec(name: String) -> RuleSpec {
    RuleSpec {
        name,
        action: ActionSpec::Forward {
            group: GROUPS[0].into(),
        },
        ..RuleSpec::default()
    }
}

/// Rule `i` and a request it matches (unless an earlier rule does). Mostly distinct hosts
/// and paths; 15% host-less (exact paths, segment prefixes, regexes), 10% regex paths.
fn rule(i: usize) -> (RuleSpec, Req) {
    let mut r = spec(format!("r{i}"));
    let host = format!("svc{i}.example.com");
    let req = match i % 20 {
        0 | 10 => {
            r.paths = vec![PathMatch::Exact(format!("/h{i}/status"))];
            Req::new(Some("anything.example.org".into()), format!("/h{i}/status"))
        }
        5 => {
            r.paths = vec![PathMatch::Prefix(format!("/seg{i}/"))];
            Req::new(Some("anything.example.org".into()), format!("/seg{i}/a/b"))
        }
        15 => {
            r.paths = vec![PathMatch::Regex(format!("^/re{i}/[0-9]+$"))];
            Req::new(None, format!("/re{i}/12345"))
        }
        3 | 13 => {
            r.hosts = vec![format!("*.t{i}.example.net")];
            r.paths = vec![PathMatch::Prefix("/api/".into())];
            Req::new(
                Some(format!("Edge-7.t{i}.example.net:443")),
                "/api/v1/x".into(),
            )
        }
        7 | 17 => {
            r.hosts = vec![host.clone()];
            r.paths = vec![PathMatch::Regex(r"^/v[0-9]+/items/[0-9]+$".into())];
            Req::new(Some(host), "/v2/items/42".into())
        }
        9 => {
            r.hosts = vec![host.clone()];
            r.methods = vec!["GET".into(), "HEAD".into()];
            r.headers = vec![("x-tenant".into(), vec!["blue-*".into()])];
            r.query = vec![("lang".into(), vec!["*".into()])];
            let mut req = Req::new(Some(host), "/".into());
            req.headers
                .insert("x-tenant", HeaderValue::from_static("blue-7"));
            req.query = Some("lang=en&x=1".into());
            req
        }
        k if k % 2 == 0 => {
            r.hosts = vec![host.clone()];
            r.paths = vec![PathMatch::Prefix("/api/".into())];
            Req::new(Some(host), format!("/api/users/{i}"))
        }
        _ => {
            r.hosts = vec![host.clone()];
            r.paths = vec![
                PathMatch::Exact("/".into()),
                PathMatch::Exact("/index.html".into()),
            ];
            Req::new(Some(host), "/index.html".into())
        }
    };
    (r, req)
}

/// `n` rules (two of them host-less and unindexable, the same at every size) and a mix of
/// requests: 60% built to match a random rule, 40% matching none.
fn workload(n: usize, rng: &mut Rng) -> (RuleSet, Vec<Req>) {
    let mut specs = Vec::with_capacity(n);
    let mut matching = Vec::with_capacity(n);
    for i in 0..n - 2 {
        let (s, r) = rule(i);
        specs.push(s);
        matching.push(r);
    }
    let mut odd = spec("rest-cidr".into());
    odd.client_cidrs = vec!["198.18.0.0/15".into()];
    odd.methods = vec!["DELETE".into()];
    specs.push(odd);
    let mut odd = spec("rest-header".into());
    odd.headers = vec![("x-debug".into(), vec!["1".into()])];
    specs.push(odd);
    let set = RuleSet::compile(&specs, GROUPS).expect("bench rules compile");

    let requests = (0..REQUESTS)
        .map(|k| {
            if rng.chance(60) {
                let r = &matching[rng.below(matching.len())];
                let mut copy = Req::new(r.host.clone(), r.path.clone());
                copy.query = r.query.clone();
                copy.headers = r.headers.clone();
                copy
            } else {
                match k % 3 {
                    0 => Req::new(Some(format!("nohost{k}.example.org")), format!("/none/{k}")),
                    // A known host, a path none of its rules take.
                    1 => Req::new(
                        Some(format!("svc{}.example.com", rng.below(n))),
                        format!("/other/{k}"),
                    ),
                    _ => Req::new(None, format!("/re{}/abc", rng.below(n))),
                }
            }
        })
        .collect();
    (set, requests)
}

/// Mean ns per evaluation (the best of [`ROUNDS`] rounds, each of up to [`EVALS`]
/// evaluations or [`BUDGET`]; the machine is shared) and the evaluations made in all.
fn measure(reqs: &[Req], eval: impl Fn(&RequestInfo<'_>) -> Option<usize>) -> (f64, usize) {
    let infos: Vec<RequestInfo<'_>> = reqs.iter().map(Req::info).collect();
    for info in &infos {
        black_box(eval(info));
    }
    let mut best = f64::INFINITY;
    let mut total = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut done = 0;
        while done < EVALS {
            for info in infos.iter().take(EVALS - done) {
                black_box(eval(black_box(info)));
            }
            done += infos.len().min(EVALS - done);
            if start.elapsed() > BUDGET {
                break;
            }
        }
        best = best.min(start.elapsed().as_nanos() as f64 / done as f64);
        total += done;
    }
    (best, total)
}

fn main() {
    // `--sizes 1000,10000` to choose the sizes; `--indexed-only` to skip the baseline (profiling).
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.split(',')
                .map(|n| n.parse().expect("--sizes takes numbers"))
                .collect()
        })
        .unwrap_or_else(|| SIZES.to_vec());
    let linear = !args.iter().any(|a| a == "--indexed-only");
    let mut rng = Rng::new(0x5eed);
    println!(
        "edgelb advanced-forwarding rules: ns per evaluation, best of {ROUNDS} rounds \
         ({REQUESTS} requests, ~60% matching)"
    );
    println!(
        "{:>7} {:>9} {:>12} {:>10} {:>12} {:>10} {:>8}",
        "rules", "matched%", "indexed ns", "evals", "linear ns", "evals", "speedup"
    );
    let mut indexed = Vec::new();
    for n in sizes {
        assert!(n >= 3, "at least 3 rules");
        let (set, reqs) = workload(n, &mut rng);
        let mut hits = 0;
        for r in &reqs {
            let info = r.info();
            let a = set.evaluate(&info).map(|m| m.index);
            assert_eq!(
                a,
                set.evaluate_linear(&info).map(|m| m.index),
                "{:?} {}",
                r.host,
                r.path
            );
            hits += usize::from(a.is_some());
        }
        let (fast, fast_n) = measure(&reqs, |i| set.evaluate(i).map(|m| m.index));
        let (slow, slow_n) = if linear {
            measure(&reqs, |i| set.evaluate_linear(i).map(|m| m.index))
        } else {
            (f64::NAN, 0)
        };
        println!(
            "{:>7} {:>8.1}% {:>12.1} {:>10} {:>12.1} {:>10} {:>7.1}x",
            n,
            100.0 * hits as f64 / reqs.len() as f64,
            fast,
            fast_n,
            slow,
            slow_n,
            slow / fast
        );
        indexed.push((n, fast));
    }
    let at = |n| indexed.iter().find(|(k, _)| *k == n).map(|(_, ns)| *ns);
    if let (Some(small), Some(large)) = (at(10), at(1_000)) {
        println!(
            "indexed 1000 rules / 10 rules: {:.2} (1.0 = flat)",
            large / small
        );
    }
}
