//! Forwarding rules: any rule set compiles or is refused, and for any request the indexed
//! evaluation picks exactly the rule a plain scan in configuration order picks.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use arbitrary::Arbitrary;
use edgelb::rules::{ActionSpec, PathMatch, RequestInfo, RuleSet, RuleSpec};
use hyper::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;

/// Strings from a small alphabet, so that rules and requests often meet.
#[derive(Arbitrary, Debug)]
struct Word(Vec<u8>);

impl Word {
    fn text(&self, alphabet: &[u8]) -> String {
        self.0
            .iter()
            .take(12)
            .map(|b| alphabet[usize::from(*b) % alphabet.len()] as char)
            .collect()
    }
    fn host(&self) -> String {
        self.text(b"ab.*-")
    }
    fn path(&self) -> String {
        format!("/{}", self.text(b"ab/.%2"))
    }
}

#[derive(Arbitrary, Debug)]
struct Rule {
    hosts: Vec<Word>,
    paths: Vec<(u8, Word)>,
    methods: Vec<u8>,
    headers: Vec<(Word, Vec<Word>)>,
    query: Vec<(Word, Vec<Word>)>,
    clients: Vec<(u8, u8)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<Rule>,
    host: Option<Word>,
    path: Word,
    query: Option<Word>,
    method: u8,
    headers: Vec<(Word, Word)>,
    client: u8,
}

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::HEAD, Method::DELETE];

fuzz_target!(|input: Input| {
    let specs: Vec<RuleSpec> = input
        .rules
        .iter()
        .take(40)
        .enumerate()
        .map(|(i, r)| RuleSpec {
            name: format!("r{i}"),
            hosts: r.hosts.iter().take(3).map(Word::host).collect(),
            paths: r
                .paths
                .iter()
                .take(3)
                .map(|(kind, w)| match kind % 3 {
                    0 => PathMatch::Exact(w.path()),
                    1 => PathMatch::Prefix(w.path()),
                    _ => PathMatch::Regex(format!("^{}", w.path())),
                })
                .collect(),
            methods: r
                .methods
                .iter()
                .take(2)
                .map(|m| METHODS[usize::from(*m) % METHODS.len()].to_string())
                .collect(),
            headers: r
                .headers
                .iter()
                .take(2)
                .map(|(n, vs)| (format!("x-{}", n.text(b"ab")), vs.iter().take(3).map(|v| v.text(b"ab*")).collect()))
                .collect(),
            query: r
                .query
                .iter()
                .take(2)
                .map(|(k, vs)| (k.text(b"ab"), vs.iter().take(3).map(|v| v.text(b"ab*")).collect()))
                .collect(),
            client_cidrs: r
                .clients
                .iter()
                .take(2)
                .map(|(a, len)| format!("10.0.0.{a}/{}", 24 + len % 9))
                .collect(),
            action: ActionSpec::Forward { group: "g".into() },
            rate_limit: None,
        })
        .collect();
    let Ok(rules) = RuleSet::compile(&specs, &["g"]) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (n, v) in input.headers.iter().take(4) {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(format!("x-{}", n.text(b"ab")).as_bytes()),
            hyper::header::HeaderValue::from_str(&v.text(b"ab")),
        ) {
            headers.append(name, value);
        }
    }
    let host = input.host.as_ref().map(Word::host);
    let path = input.path.path();
    let query = input.query.as_ref().map(|q| q.text(b"ab=&"));
    let method = &METHODS[usize::from(input.method) % METHODS.len()];
    let request = RequestInfo {
        host: host.as_deref(),
        path: &path,
        query: query.as_deref(),
        method,
        headers: &headers,
        client: IpAddr::V4(Ipv4Addr::new(10, 0, 0, input.client)),
    };
    let indexed = rules.evaluate(&request).map(|m| m.index);
    let scanned = rules.evaluate_linear(&request).map(|m| m.index);
    assert_eq!(indexed, scanned, "{request:?}");
});
