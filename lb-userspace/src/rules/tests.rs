use std::net::IpAddr;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method};

use super::*;

const GROUPS: &[&str] = &["web", "api", "static"];

fn fwd(group: &str) -> ActionSpec {
    ActionSpec::Forward {
        group: group.into(),
    }
}

fn rule(name: &str) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        action: fwd("web"),
        ..RuleSpec::default()
    }
}

fn compile(rules: &[RuleSpec]) -> RuleSet {
    RuleSet::compile(rules, GROUPS).expect("rules compile")
}

fn compile_err(spec: RuleSpec) -> RuleError {
    RuleSet::compile(&[spec], GROUPS).expect_err("rule is refused")
}

/// A request to evaluate: owns what [`RequestInfo`] borrows.
struct Req {
    host: Option<String>,
    path: String,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
    client: IpAddr,
}

fn req(host: &str, path_and_query: &str) -> Req {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (path_and_query, None),
    };
    Req {
        host: (!host.is_empty()).then(|| host.to_owned()),
        path: path.into(),
        query,
        method: Method::GET,
        headers: HeaderMap::new(),
        client: "192.0.2.10".parse().expect("ip"),
    }
}

impl Req {
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        self
    }
    fn client(mut self, ip: &str) -> Self {
        self.client = ip.parse().expect("ip");
        self
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

/// The matched rule's index, checked against the linear reference.
fn eval(set: &RuleSet, r: &Req) -> Option<usize> {
    let info = r.info();
    let got = set.evaluate(&info).map(|m| m.index);
    assert_eq!(
        got,
        set.evaluate_linear(&info).map(|m| m.index),
        "index and linear scan disagree for host {:?} path {:?}",
        r.host,
        r.path
    );
    got
}

fn one(spec: RuleSpec) -> RuleSet {
    compile(&[spec])
}

#[test]
fn ruleset_is_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<RuleSet>();
}

#[test]
fn exact_host_case_insensitive_and_port_ignored() {
    let set = one(RuleSpec {
        hosts: vec!["API.example.com".into()],
        ..rule("h")
    });
    assert_eq!(eval(&set, &req("api.example.com", "/")), Some(0));
    assert_eq!(eval(&set, &req("Api.Example.COM:8080", "/")), Some(0));
    assert_eq!(eval(&set, &req("api.example.com.", "/")), Some(0));
    assert_eq!(eval(&set, &req("www.example.com", "/")), None);
    assert_eq!(eval(&set, &req("", "/")), None);
}

#[test]
fn wildcard_host_matches_one_label() {
    let set = one(RuleSpec {
        hosts: vec!["*.example.com".into()],
        ..rule("w")
    });
    assert_eq!(eval(&set, &req("a.example.com", "/")), Some(0));
    assert_eq!(eval(&set, &req("A.EXAMPLE.com:443", "/")), Some(0));
    assert_eq!(eval(&set, &req("example.com", "/")), None);
    assert_eq!(eval(&set, &req("a.b.example.com", "/")), None);
    assert_eq!(eval(&set, &req(".example.com", "/")), None);
}

#[test]
fn ipv6_literal_host_port_is_stripped() {
    assert_eq!(matchers::strip_port("[::1]:8443"), "[::1]");
    assert_eq!(matchers::strip_port("[::1]"), "[::1]");
    assert_eq!(matchers::strip_port("a.example:80"), "a.example");
    assert_eq!(matchers::strip_port("a.example"), "a.example");
}

#[test]
fn paths_exact_prefix_regex() {
    let set = compile(&[
        RuleSpec {
            paths: vec![PathMatch::Exact("/login".into())],
            ..rule("exact")
        },
        RuleSpec {
            paths: vec![PathMatch::Prefix("/api/".into())],
            ..rule("prefix")
        },
        RuleSpec {
            paths: vec![PathMatch::Regex(r"^/img/[0-9]+\.png$".into())],
            ..rule("regex")
        },
    ]);
    assert_eq!(eval(&set, &req("h", "/login")), Some(0));
    assert_eq!(eval(&set, &req("h", "/login/")), None);
    assert_eq!(eval(&set, &req("h", "/LOGIN")), None);
    assert_eq!(eval(&set, &req("h", "/api/v1/users?x=1")), Some(1));
    assert_eq!(eval(&set, &req("h", "/api")), None);
    assert_eq!(eval(&set, &req("h", "/img/12.png")), Some(2));
    assert_eq!(eval(&set, &req("h", "/img/12.gif")), None);
}

#[test]
fn methods_or_within_and_uppercased() {
    let set = one(RuleSpec {
        methods: vec!["get".into(), "HEAD".into()],
        ..rule("m")
    });
    assert_eq!(eval(&set, &req("h", "/")), Some(0));
    assert_eq!(eval(&set, &req("h", "/").method(Method::HEAD)), Some(0));
    assert_eq!(eval(&set, &req("h", "/").method(Method::POST)), None);
    let ext = Method::from_bytes(b"PURGE").expect("method");
    assert_eq!(eval(&set, &req("h", "/").method(ext)), None);
}

#[test]
fn headers_wildcards_case_and_or() {
    let set = one(RuleSpec {
        headers: vec![(
            "User-Agent".into(),
            vec!["*Mobile*".into(), "curl/*".into()],
        )],
        ..rule("hdr")
    });
    let r = |ua: &str| req("h", "/").header("user-agent", ua);
    assert_eq!(
        eval(&set, &r("Mozilla/5.0 (iPhone) mobile Safari")),
        Some(0)
    );
    assert_eq!(eval(&set, &r("curl/8.5.0")), Some(0));
    assert_eq!(eval(&set, &r("Wget/1.21")), None);
    assert_eq!(eval(&set, &r("xcurl/8")), None);
    assert_eq!(eval(&set, &req("h", "/")), None);
    // Any of several field lines may match.
    let two = req("h", "/")
        .header("user-agent", "bot")
        .header("user-agent", "curl/1");
    assert_eq!(eval(&set, &two), Some(0));
}

#[test]
fn glob_pieces() {
    let g = matchers::Glob::new("a*b*c");
    assert!(g.matches(b"abc"));
    assert!(g.matches(b"AxxBxxC"));
    assert!(g.matches(b"abcbc"));
    assert!(!g.matches(b"acb"));
    assert!(!g.matches(b"ab"));
    assert!(matchers::Glob::new("*").matches(b""));
    assert!(matchers::Glob::new("**").matches(b"anything"));
    assert!(matchers::Glob::new("").matches(b""));
    assert!(!matchers::Glob::new("").matches(b"x"));
    assert!(!matchers::Glob::new("ab*ba").matches(b"aba"));
}

#[test]
fn query_values_and_star() {
    let set = compile(&[
        RuleSpec {
            query: vec![("version".into(), vec!["v2".into(), "v3".into()])],
            ..rule("ver")
        },
        RuleSpec {
            query: vec![("debug".into(), vec!["*".into()])],
            ..rule("debug")
        },
        RuleSpec {
            query: vec![("q".into(), vec!["hello world".into()])],
            ..rule("decoded")
        },
    ]);
    assert_eq!(eval(&set, &req("h", "/?a=1&version=v3")), Some(0));
    assert_eq!(eval(&set, &req("h", "/?Version=V2")), Some(0));
    assert_eq!(eval(&set, &req("h", "/?version=v4")), None);
    assert_eq!(eval(&set, &req("h", "/?debug=")), Some(1));
    assert_eq!(eval(&set, &req("h", "/?debug")), Some(1));
    assert_eq!(eval(&set, &req("h", "/?x=1&debug=yes")), Some(1));
    assert_eq!(eval(&set, &req("h", "/?debugx=1")), None);
    assert_eq!(eval(&set, &req("h", "/?q=hello%20world")), Some(2));
    assert_eq!(eval(&set, &req("h", "/?q=hello+world")), Some(2));
    assert_eq!(eval(&set, &req("h", "/?q=hello")), None);
    let set = one(RuleSpec {
        query: vec![("a&b".into(), vec!["x=y".into()])],
        ..rule("encoded")
    });
    assert_eq!(eval(&set, &req("h", "/?a%26b=x%3Dy")), Some(0));
    assert_eq!(eval(&set, &req("h", "/?a&b=x%3Dy")), None);
    assert_eq!(eval(&set, &req("h", "/")), None);
}

#[test]
fn client_cidrs_and_ipv4_mapped() {
    let set = one(RuleSpec {
        client_cidrs: vec!["10.1.0.0/16".into(), "2001:db8::/32".into()],
        ..rule("cidr")
    });
    let r = |ip: &str| req("h", "/").client(ip);
    assert_eq!(eval(&set, &r("10.1.2.3")), Some(0));
    assert_eq!(eval(&set, &r("::ffff:10.1.2.3")), Some(0));
    assert_eq!(eval(&set, &r("2001:db8::7")), Some(0));
    assert_eq!(eval(&set, &r("10.2.0.1")), None);
    assert_eq!(eval(&set, &r("::ffff:10.2.0.1")), None);
    assert_eq!(eval(&set, &r("2001:db9::7")), None);
    // A configured IPv4-mapped prefix, and a bare address.
    let set = one(RuleSpec {
        client_cidrs: vec!["::ffff:172.16.0.0/108".into(), "198.51.100.7".into()],
        ..rule("mapped")
    });
    assert_eq!(eval(&set, &r("172.16.5.5")), Some(0));
    assert_eq!(eval(&set, &r("::ffff:172.16.5.5")), Some(0));
    assert_eq!(eval(&set, &r("198.51.100.7")), Some(0));
    assert_eq!(eval(&set, &r("198.51.100.8")), None);
}

#[test]
fn and_across_condition_types() {
    let set = one(RuleSpec {
        hosts: vec!["a.example".into(), "b.example".into()],
        paths: vec![
            PathMatch::Prefix("/api/".into()),
            PathMatch::Exact("/x".into()),
        ],
        methods: vec!["POST".into()],
        headers: vec![("x-tenant".into(), vec!["blue".into()])],
        query: vec![("k".into(), vec!["1".into()])],
        client_cidrs: vec!["10.0.0.0/8".into()],
        ..rule("all")
    });
    let full = || {
        req("b.example", "/api/q?k=1")
            .method(Method::POST)
            .header("X-Tenant", "blue")
            .client("10.9.9.9")
    };
    assert_eq!(eval(&set, &full()), Some(0));
    let mut r = full();
    r.path = "/x".into();
    assert_eq!(eval(&set, &r), Some(0), "OR within paths");
    r.host = Some("c.example".into());
    assert_eq!(eval(&set, &r), None, "host");
    let mut r = full();
    r.path = "/other".into();
    assert_eq!(eval(&set, &r), None, "path");
    assert_eq!(eval(&set, &full().method(Method::GET)), None, "method");
    let mut r = full();
    r.headers.clear();
    assert_eq!(eval(&set, &r), None, "header");
    let mut r = full();
    r.query = Some("k=2".into());
    assert_eq!(eval(&set, &r), None, "query");
    assert_eq!(eval(&set, &full().client("11.0.0.1")), None, "client");
}

#[test]
fn first_match_wins_across_buckets() {
    // Host-less rule 0 and host rule 1 both match: rule 0.
    let set = compile(&[
        RuleSpec {
            paths: vec![PathMatch::Prefix("/".into())],
            methods: vec!["POST".into()],
            ..rule("hostless")
        },
        RuleSpec {
            hosts: vec!["a.example.com".into()],
            ..rule("exact")
        },
        RuleSpec {
            hosts: vec!["*.example.com".into()],
            ..rule("wild")
        },
    ]);
    let post = req("a.example.com", "/p").method(Method::POST);
    let m = set.evaluate(&post.info()).expect("match");
    assert_eq!((m.index, m.name), (0, "hostless"));
    assert_eq!(eval(&set, &req("a.example.com", "/p")), Some(1));
    assert_eq!(eval(&set, &req("b.example.com", "/p")), Some(2));
    // The wildcard rule first, then the exact one: the wildcard wins.
    let set = compile(&[
        RuleSpec {
            hosts: vec!["*.example.com".into()],
            ..rule("wild")
        },
        RuleSpec {
            hosts: vec!["a.example.com".into()],
            ..rule("exact")
        },
    ]);
    assert_eq!(eval(&set, &req("a.example.com", "/")), Some(0));
}

#[test]
fn large_buckets_use_second_level_in_order() {
    // Many host-less rules, so the host-less bucket is indexed by path, segment and regex.
    let mut rules = Vec::new();
    for i in 0..40 {
        rules.push(RuleSpec {
            paths: vec![PathMatch::Exact(format!("/e{i}"))],
            ..rule(&format!("e{i}"))
        });
        rules.push(RuleSpec {
            paths: vec![PathMatch::Prefix(format!("/s{i}/"))],
            ..rule(&format!("s{i}"))
        });
        rules.push(RuleSpec {
            paths: vec![PathMatch::Regex(format!("^/r{i}/[0-9]+$"))],
            ..rule(&format!("r{i}"))
        });
        // No literal start: behind the RegexSet gate.
        rules.push(RuleSpec {
            paths: vec![PathMatch::Regex(format!(r"/z{i}\.json$"))],
            ..rule(&format!("z{i}"))
        });
    }
    // A late catch-all for /s3/ that must lose to the earlier prefix rule.
    rules.push(RuleSpec {
        paths: vec![PathMatch::Prefix("/".into())],
        ..rule("catch-all")
    });
    // An early rule reached through a different list than a later one.
    rules.insert(
        0,
        RuleSpec {
            paths: vec![PathMatch::Regex("^/s7/first$".into())],
            ..rule("early-regex")
        },
    );
    let set = compile(&rules);
    let idx = |name: &str| rules.iter().position(|r| r.name == name);
    assert_eq!(eval(&set, &req("", "/e5")), idx("e5"));
    assert_eq!(eval(&set, &req("", "/s3/x")), idx("s3"));
    assert_eq!(eval(&set, &req("", "/r9/123")), idx("r9"));
    assert_eq!(eval(&set, &req("", "/r9/abc")), idx("catch-all"));
    assert_eq!(eval(&set, &req("", "/s7/first")), Some(0));
    assert_eq!(eval(&set, &req("", "/s7/second")), idx("s7"));
    assert_eq!(eval(&set, &req("", "/nothing")), idx("catch-all"));
    assert_eq!(eval(&set, &req("", "/a/b/z12.json")), idx("z12"));
    assert_eq!(eval(&set, &req("", "/r3/z12.json")), idx("z12"));
    assert_eq!(eval(&set, &req("", "/a/z12.jsonx")), idx("catch-all"));
}

#[test]
fn regex_literal_prefixes() {
    let p = matchers::regex_literal_prefix;
    assert_eq!(p(r"^/img/[0-9]+\.png$"), Some("/img/"));
    assert_eq!(p("^/api/(v1|v2)/"), Some("/api/"));
    assert_eq!(p("^/api/v1"), Some("/api/v1"));
    assert_eq!(p("^/ab?"), Some("/a"));
    assert_eq!(p("^/a/x{2}"), Some("/a/"));
    assert_eq!(p("^/a.b"), Some("/a"));
    assert_eq!(p("/api/"), None, "not anchored");
    assert_eq!(p("^/a/x|/b/"), None, "top-level alternation");
    assert_eq!(p("^/a/[|(]x|/b/"), None, "alternation after a class");
    assert_eq!(
        p(r"^/a/\(x|/b/"),
        None,
        "alternation after an escaped paren"
    );
    assert_eq!(p("^/a/[]|]"), Some("/a/"), "'|' in a class");
    assert_eq!(p("^/a/(?i)b"), None, "inline flags");
    assert_eq!(p("^/a/(?:b|c)"), Some("/a/"));
    assert_eq!(p("^/a/(?P<n>b|c)"), Some("/a/"));
}

/// The index against the linear scan on generated rules and requests.
#[test]
fn index_agrees_with_linear_scan() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n) as usize
    };
    let hosts = ["a.ex", "b.ex", "*.ex", "c.a.ex", "*.a.ex", "d.ex"];
    let paths = ["/", "/x", "/x/y", "/api/", "/api/v1/", "/api", "/y"];
    let mut rules = Vec::new();
    for i in 0..300 {
        let mut r = rule(&format!("r{i}"));
        for _ in 0..rnd(3) {
            r.hosts.push(hosts[rnd(hosts.len() as u64)].into());
        }
        for _ in 0..rnd(3) {
            let p = paths[rnd(paths.len() as u64)];
            r.paths.push(match rnd(4) {
                0 => PathMatch::Exact(p.into()),
                1 => PathMatch::Regex(format!("^{p}[a-z]?$")),
                _ => PathMatch::Prefix(p.into()),
            });
        }
        if rnd(4) == 0 {
            r.methods.push(["GET", "POST"][rnd(2)].into());
        }
        if rnd(6) == 0 {
            r.client_cidrs
                .push(["10.0.0.0/8", "192.0.2.0/24"][rnd(2)].into());
        }
        if r.hosts.is_empty() && r.paths.is_empty() && r.methods.is_empty() {
            r.query.push(("k".into(), vec!["*".into()]));
        }
        rules.push(r);
    }
    let set = compile(&rules);
    let req_hosts = ["a.ex", "B.EX:80", "z.ex", "c.a.ex", "ex", "q.c.a.ex", ""];
    let req_paths = [
        "/",
        "/x",
        "/xa",
        "/x/y",
        "/x/yz",
        "/api/",
        "/api/v1/q",
        "/api",
        "/apix",
        "/y",
        "/z",
    ];
    let mut matched = 0;
    for _ in 0..3000 {
        let mut r = req(req_hosts[rnd(7)], req_paths[rnd(req_paths.len() as u64)]);
        if rnd(2) == 0 {
            r.method = Method::POST;
        }
        if rnd(3) == 0 {
            r.client = "10.1.1.1".parse().expect("ip");
        }
        if rnd(2) == 0 {
            r.query = Some("k=v".into());
        }
        matched += usize::from(eval(&set, &r).is_some());
    }
    assert!(matched > 100, "the generated requests match too rarely");
}

#[test]
fn redirect_template_renders() {
    let set = one(RuleSpec {
        client_cidrs: vec!["0.0.0.0/0".into()],
        action: ActionSpec::Redirect {
            status: 301,
            location: "https://{host}{path}{query}".into(),
        },
        ..rule("to-https")
    });
    let r = req("www.example.com:80", "/a/b?x=1&y=2");
    let info = r.info();
    let m = set.evaluate(&info).expect("match");
    let Action::Redirect { status, location } = m.action else {
        panic!("not a redirect: {:?}", m.action);
    };
    assert_eq!(status.as_u16(), 301);
    assert_eq!(
        location.render(&info, "http"),
        "https://www.example.com/a/b?x=1&y=2"
    );
    let r = req("www.example.com", "/a");
    assert_eq!(
        location.render(&r.info(), "http"),
        "https://www.example.com/a"
    );
    assert_eq!(location.as_str(), "https://{host}{path}{query}");

    let t = LocationTemplate::parse("{scheme}://new.example{path}?from={host}").expect("t");
    let r = req("[2001:db8::1]:8080", "/p?q");
    assert_eq!(
        t.render(&r.info(), "https"),
        "https://new.example/p?from=[2001:db8::1]"
    );
}

#[test]
fn fixed_and_forward_actions() {
    let set = compile(&[
        RuleSpec {
            paths: vec![PathMatch::Exact("/health".into())],
            action: ActionSpec::Fixed {
                status: 200,
                content_type: "text/plain; charset=utf-8".into(),
                body: "ok".into(),
            },
            ..rule("fixed")
        },
        RuleSpec {
            paths: vec![PathMatch::Prefix("/api/".into())],
            action: fwd("api"),
            ..rule("fwd")
        },
    ]);
    assert_eq!(set.len(), 2);
    assert!(!set.is_empty());
    let r = req("h", "/health");
    match set.evaluate(&r.info()).expect("match").action {
        Action::Fixed {
            status,
            content_type,
            body,
        } => {
            assert_eq!(status.as_u16(), 200);
            assert_eq!(content_type, "text/plain; charset=utf-8");
            assert_eq!(body, "ok");
        }
        other => panic!("{other:?}"),
    }
    let r = req("h", "/api/x");
    match set.evaluate(&r.info()).expect("match").action {
        Action::Forward { group, .. } => assert_eq!(group, "api"),
        other => panic!("{other:?}"),
    }
    let empty = RuleSet::compile(&[], GROUPS).expect("empty");
    assert!(empty.is_empty());
    assert!(empty.evaluate(&req("h", "/").info()).is_none());
}

/// The error names the rule, the field and the value.
fn assert_err(spec: RuleSpec, field: &str, value: &str) {
    let name = if spec.name.is_empty() {
        "#0".to_owned()
    } else {
        spec.name.clone()
    };
    let e = compile_err(spec);
    let shown = e.to_string();
    assert_eq!(e.field, field, "{shown}");
    assert_eq!(e.value, value, "{shown}");
    assert!(
        shown.starts_with(&format!("rule \"{name}\": {field} \"")),
        "{shown}"
    );
    assert!(shown.contains(&format!("{value:?}")), "{shown}");
    assert!(!e.problem.is_empty());
}

fn with_path(name: &str) -> RuleSpec {
    RuleSpec {
        paths: vec![PathMatch::Prefix("/".into())],
        ..rule(name)
    }
}

#[test]
fn validation_errors_name_rule_field_value() {
    assert_err(rule("none"), "conditions", "");
    assert_err(
        RuleSpec {
            name: String::new(),
            ..rule("")
        },
        "conditions",
        "",
    );
    for bad in [
        "exa mple.com",
        "-a.example",
        "a..example",
        "*.",
        "a.*.example",
        "ex:80",
        "",
    ] {
        assert_err(
            RuleSpec {
                hosts: vec![bad.into()],
                ..rule("host")
            },
            "host",
            bad,
        );
    }
    for bad in [
        PathMatch::Exact("api".into()),
        PathMatch::Prefix("/a b".into()),
        PathMatch::Exact("/a?b".into()),
        PathMatch::Regex("(unclosed".into()),
        PathMatch::Regex(String::new()),
        PathMatch::Regex("a{1000}{1000}".into()),
    ] {
        let (field, v) = match bad.clone() {
            PathMatch::Exact(v) => ("path", v),
            PathMatch::Prefix(v) => ("path_prefix", v),
            PathMatch::Regex(v) => ("path_regex", v),
        };
        assert_err(
            RuleSpec {
                paths: vec![bad],
                ..rule("path")
            },
            field,
            &v,
        );
    }
    assert_err(
        RuleSpec {
            methods: vec!["GET".into(), "FETCH".into()],
            ..rule("m")
        },
        "method",
        "FETCH",
    );
    assert_err(
        RuleSpec {
            headers: vec![("bad header".into(), vec!["x".into()])],
            ..rule("h")
        },
        "header",
        "bad header",
    );
    assert_err(
        RuleSpec {
            headers: vec![("x-a".into(), vec!["line\nbreak".into()])],
            ..rule("hv")
        },
        "header",
        "x-a: line\nbreak",
    );
    assert_err(
        RuleSpec {
            headers: vec![("x-a".into(), vec![])],
            ..rule("hv0")
        },
        "header",
        "x-a: ",
    );
    assert_err(
        RuleSpec {
            query: vec![(String::new(), vec!["*".into()])],
            ..rule("q")
        },
        "query",
        "",
    );
    assert_err(
        RuleSpec {
            query: vec![("k".into(), vec!["a\u{7}b".into()])],
            ..rule("qv")
        },
        "query",
        "k=a\u{7}b",
    );
    assert_err(
        RuleSpec {
            client_cidrs: vec!["10.0.0.0/33".into()],
            ..rule("c")
        },
        "client",
        "10.0.0.0/33",
    );
    assert_err(
        RuleSpec {
            action: fwd("nope"),
            ..with_path("g")
        },
        "group",
        "nope",
    );
    assert_err(
        RuleSpec {
            action: ActionSpec::Redirect {
                status: 200,
                location: "/x".into(),
            },
            ..with_path("rs")
        },
        "status",
        "200",
    );
    for bad in ["", "https://{host}{port}", "https://{host", "/a}b", "/a b"] {
        assert_err(
            RuleSpec {
                action: ActionSpec::Redirect {
                    status: 302,
                    location: bad.into(),
                },
                ..with_path("rl")
            },
            "location",
            bad,
        );
    }
    for status in [199, 600, 1000] {
        assert_err(
            RuleSpec {
                action: ActionSpec::Fixed {
                    status,
                    content_type: "text/plain".into(),
                    body: String::new(),
                },
                ..with_path("fs")
            },
            "status",
            &status.to_string(),
        );
    }
    assert_err(
        RuleSpec {
            action: ActionSpec::Fixed {
                status: 503,
                content_type: "text/plain\r\nx: y".into(),
                body: String::new(),
            },
            ..with_path("ct")
        },
        "content_type",
        "text/plain\r\nx: y",
    );
    assert_err(
        RuleSpec {
            action: ActionSpec::Fixed {
                status: 503,
                content_type: "text/plain".into(),
                body: "x".repeat(1025),
            },
            ..with_path("body")
        },
        "body",
        "1025 bytes",
    );
    // The failing rule is named by its index when it has no name, and later rules are found.
    let e = RuleSet::compile(
        &[
            with_path("ok"),
            RuleSpec {
                methods: vec!["NOPE".into()],
                ..rule("")
            },
        ],
        GROUPS,
    )
    .expect_err("refused");
    assert_eq!(e.rule, "#1");
    // 1 KiB exactly is fine.
    RuleSet::compile(
        &[RuleSpec {
            action: ActionSpec::Fixed {
                status: 200,
                content_type: "text/plain".into(),
                body: "x".repeat(1024),
            },
            ..with_path("max")
        }],
        GROUPS,
    )
    .expect("1024-byte body");
}

#[test]
fn too_many_rules() {
    let rules = vec![with_path("r"); MAX_RULES + 1];
    let e = RuleSet::compile(&rules, GROUPS).expect_err("too many");
    assert_eq!(e.field, "rules");
    assert_eq!(e.value, "10001");
    assert!(e.to_string().contains("10000"), "{e}");
    let set = RuleSet::compile(&rules[..MAX_RULES], GROUPS).expect("at the limit");
    assert_eq!(set.len(), MAX_RULES);
}

#[test]
fn refused_hosts_paths_and_locations_keep_their_messages() {
    let problem = |spec: RuleSpec| compile_err(spec).problem;
    let allowed = "placeholders are {scheme}, {host}, {path} and {query}";
    assert_eq!(
        problem(RuleSpec {
            hosts: vec!["a b.example".into()],
            ..rule("h")
        }),
        "not a host name: dot-separated labels of 1-63 letters, digits and hyphens (not at a \
         label's ends), at most 253 characters, optionally after a leading \"*.\"; no port"
    );
    assert_eq!(
        problem(RuleSpec {
            paths: vec![PathMatch::Exact("api".into())],
            ..rule("p")
        }),
        "a path must start with '/' and be visible ASCII without '?' or '#' (it is compared, as \
         received, with the request path without its query)"
    );
    assert_eq!(
        problem(RuleSpec {
            paths: vec![PathMatch::Prefix("/a|/b".into())],
            ..rule("p")
        }),
        "one path each: '|' separates values only in header= and query=; give a rule per path, \
         or path-regex=^/(a|b)"
    );
    assert_eq!(
        problem(RuleSpec {
            paths: vec![PathMatch::Regex(String::new())],
            ..rule("p")
        }),
        "an empty regex matches every path; leave the path out instead"
    );
    let regex = problem(RuleSpec {
        paths: vec![PathMatch::Regex("([".into())],
        ..rule("p")
    });
    assert!(
        regex
            .starts_with("not a valid regex (Rust regex syntax, at most 1048576 bytes compiled): ")
            && !regex.contains('\n')
            && !regex.ends_with(": "),
        "{regex}"
    );
    let location = |location: &str| {
        problem(RuleSpec {
            action: ActionSpec::Redirect {
                status: 301,
                location: location.into(),
            },
            ..with_path("r")
        })
    };
    assert_eq!(location(""), "a redirect needs a location");
    assert_eq!(
        location("https://a b"),
        "' ' cannot appear in a Location header (visible ASCII only; percent-encode)"
    );
    assert_eq!(
        location("https://{host"),
        format!("unmatched brace; {allowed}")
    );
    assert_eq!(
        location("https://{port}/"),
        format!("unknown placeholder {{port}}; {allowed}")
    );
}
