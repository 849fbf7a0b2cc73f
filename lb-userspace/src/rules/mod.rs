//! Advanced forwarding: a listener's ordered rules ("Advanced forwarding" in the listener spec).
//!
//! A rule has conditions, all of which must match (AND across condition types; the values
//! listed within one condition are OR-ed), and an action: forward to a group, redirect, or a
//! fixed response. [`RuleSet::evaluate`] returns the first rule, in configuration order, whose
//! conditions all match; `None` means the listener's default group.
//!
//! Rules are written as [`RuleSpec`] (raw strings, as read from the configuration) and
//! validated once by [`RuleSet::compile`]; evaluation works only on the compiled form.
//!
//! # Matching semantics
//! - **host**: exact (`api.example.com`) or wildcard (`*.example.com`, exactly one extra label:
//!   it matches `a.example.com`, not `example.com` nor `a.b.example.com`). Case-insensitive;
//!   the port of the Host header / `:authority` and one trailing dot are ignored.
//! - **path**: exact, literal prefix (`/api/` does not match `/api`), or regex (unanchored
//!   search, as `regex::Regex::is_match`; write `^…$` to anchor). Case-sensitive; the path is
//!   compared as received (not percent-decoded), without the query.
//! - **method**: one of the standard methods (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS,
//!   CONNECT, TRACE); configured names are upper-cased.
//! - **header**: name case-insensitive; a value pattern matches one field line of that header
//!   (ASCII case-insensitive, `*` matches any run of characters, including an empty one).
//! - **query**: key and value compared ASCII case-insensitively after percent-decoding the
//!   request's pair (`+` is a space); value patterns take `*` like header values, so `*` alone
//!   means "the key is present with any value".
//! - **client CIDR**: IPv4/IPv6 prefixes or bare addresses; an IPv4-mapped IPv6 client
//!   (`::ffff:a.b.c.d`, from a dual-stack socket) is matched as its IPv4 address, and a
//!   configured IPv4-mapped IPv6 prefix is turned into the IPv4 prefix it covers.
//!
//! # Evaluation cost
//! Rules are indexed by host (see `index.rs`): exact hosts in a hash map, wildcard hosts in a
//! hash map keyed by their parent domain, host-less rules in a third bucket. Inside a bucket
//! holding more than a few rules, a second level indexes rules by exact path, by the first
//! path segment their prefixes pin (`/api/v1` → `api`; also a regex's literal start,
//! `^/img/[0-9]+` → `img`), puts the other regex-only rules behind one `RegexSet` gate, and
//! keeps the rest in a list. A request looks up at most three buckets (its host, its parent
//! domain for wildcards, host-less) and at most four sorted lists in each, merges them in
//! rule order and checks the remaining conditions of each candidate, stopping at the first
//! that matches. The cost is `O(1)` hash lookups plus `O(candidates)`, where the candidates
//! are the rules sharing the request's host or wildcard parent (and its path or segment, in a
//! large bucket) plus the host-less rules sharing its exact path or first segment, plus the
//! rules no level can index (no path, prefixes such as `/` or `/api`, unanchored regexes when
//! the gate matches, mixed path kinds) — independent of the total number of rules. The hot
//! path does not allocate (except to percent-decode an encoded query pair for a rule with a
//! query condition).
mod index;
mod matchers;
mod template;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, StatusCode};
use ipnet::IpNet;

use crate::rate_limit::RateLimiter;
use matchers::{Glob, HostPattern, PathMatcher, method_bit};
pub use template::LocationTemplate;

/// The most rules one listener may have.
pub const MAX_RULES: usize = 10_000;
/// The largest fixed-response body, in bytes.
pub const MAX_FIXED_BODY: usize = 1024;
/// `regex::RegexBuilder::size_limit` for one path regex.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A rule as read from the configuration, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSpec {
    pub name: String,
    pub hosts: Vec<String>,
    pub paths: Vec<PathMatch>,
    pub methods: Vec<String>,
    /// Header name and the values it may have (any one of them).
    pub headers: Vec<(String, Vec<String>)>,
    /// Query key and the values it may have (any one of them).
    pub query: Vec<(String, Vec<String>)>,
    pub client_cidrs: Vec<String>,
    pub action: ActionSpec,
    /// Requests per second per client address for the requests this rule matches.
    pub rate_limit: Option<u32>,
}

/// A path condition, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A rule's action, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionSpec {
    Forward {
        group: String,
    },
    Redirect {
        status: u16,
        location: String,
    },
    Fixed {
        status: u16,
        content_type: String,
        body: String,
    },
}

impl Default for ActionSpec {
    fn default() -> Self {
        ActionSpec::Forward {
            group: String::new(),
        }
    }
}

/// Why a rule was refused: which rule (its name, or `#index` when it has none), which field
/// (its key in a `[[listener.rule]]` table), the offending value and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: {field} {value:?}: {problem}")]
pub struct RuleError {
    pub rule: String,
    pub field: &'static str,
    pub value: String,
    pub problem: String,
}

/// A validated action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Forward {
        group: String,
        /// The group's position in the `groups` the rules were compiled with.
        index: usize,
    },
    Redirect {
        status: StatusCode,
        location: LocationTemplate,
    },
    Fixed {
        status: StatusCode,
        content_type: HeaderValue,
        body: String,
    },
}

/// What evaluation looks at in a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The Host header (HTTP/1) or `:authority` (HTTP/2), port included or not.
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    /// The query, without the `?`.
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub client: IpAddr,
}

/// The rule a request matched.
#[derive(Clone, Copy, Debug)]
pub struct Matched<'a> {
    /// The rule's position in the configuration.
    pub index: usize,
    pub name: &'a str,
    pub action: &'a Action,
}

#[derive(Clone, Debug)]
struct HeaderCond {
    name: HeaderName,
    values: Vec<Glob>,
}

#[derive(Clone, Debug)]
struct QueryCond {
    key: Box<[u8]>,
    values: Vec<Glob>,
}

/// One compiled rule.
#[derive(Clone, Debug)]
struct Rule {
    name: String,
    hosts: Vec<HostPattern>,
    paths: Vec<PathMatcher>,
    /// Bit set of [`method_bit`]s; 0 = any method.
    methods: u16,
    headers: Vec<HeaderCond>,
    query: Vec<QueryCond>,
    cidrs: Vec<IpNet>,
    action: Action,
    /// Shared by the workers (the compiled set is).
    limiter: Option<Arc<RateLimiter>>,
}

/// Per-request values computed once per evaluation, not once per candidate rule.
struct Prepared<'r, 'a> {
    req: &'r RequestInfo<'a>,
    method: u16,
    client: IpAddr,
}

impl<'r, 'a> Prepared<'r, 'a> {
    fn new(req: &'r RequestInfo<'a>) -> Self {
        let client = match req.client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(req.client, IpAddr::V4),
            v4 => v4,
        };
        Prepared {
            req,
            method: method_bit(req.method),
            client,
        }
    }
}

impl Rule {
    /// Every condition but the host, which the index has already settled.
    fn matches_rest(&self, p: &Prepared<'_, '_>) -> bool {
        (self.methods == 0 || self.methods & p.method != 0)
            && (self.paths.is_empty() || self.paths.iter().any(|m| m.matches(p.req.path)))
            && (self.cidrs.is_empty() || self.cidrs.iter().any(|n| n.contains(&p.client)))
            && self
                .query
                .iter()
                .all(|q| matchers::query_matches(p.req.query, &q.key, &q.values))
            && self.headers.iter().all(|h| {
                p.req
                    .headers
                    .get_all(&h.name)
                    .iter()
                    .any(|v| h.values.iter().any(|g| g.matches(v.as_bytes())))
            })
    }

    fn matches_host(&self, host: Option<&str>) -> bool {
        self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h)))
    }
}

/// A listener's compiled rules with their index. Immutable, `Send + Sync`; share it in an `Arc`.
#[derive(Clone, Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    index: index::Index,
}

impl RuleSet {
    /// Validates and compiles `rules`, in order. `groups` are the names of the groups a rule
    /// may forward to; a forward to any other name is an error.
    pub fn compile(rules: &[RuleSpec], groups: &[&str]) -> Result<RuleSet, RuleError> {
        if rules.len() > MAX_RULES {
            return Err(RuleError {
                rule: format!("#{MAX_RULES}"),
                field: "rules",
                value: rules.len().to_string(),
                problem: format!("a listener may have at most {MAX_RULES} rules"),
            });
        }
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, spec)| compile_rule(i, spec, groups))
            .collect::<Result<Vec<_>, _>>()?;
        let index = index::Index::build(&compiled);
        Ok(RuleSet {
            rules: compiled,
            index,
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The action of rule `index`.
    pub fn action(&self, index: usize) -> Option<&Action> {
        self.rules.get(index).map(|r| &r.action)
    }

    /// The name of rule `index` (as reported by [`Matched::index`]).
    /// The per-client limit of rule `index`, if it has one.
    pub fn limiter(&self, index: usize) -> Option<&RateLimiter> {
        self.rules.get(index)?.limiter.as_deref()
    }

    pub fn name(&self, index: usize) -> Option<&str> {
        self.rules.get(index).map(|r| r.name.as_str())
    }

    /// The first rule, in configuration order, whose conditions all match `req`; `None` sends
    /// the request to the listener's default group. Uses the index (see the module docs).
    pub fn evaluate(&self, req: &RequestInfo<'_>) -> Option<Matched<'_>> {
        let mut buf = [0u8; matchers::HOST_BUF];
        let host = req.host.and_then(|h| matchers::normalize_host(h, &mut buf));
        let p = Prepared::new(req);
        let mut merge = index::Merge::default();
        self.index.candidates(host, req.path, &mut merge);
        while let Some(i) = merge.next_index() {
            let rule = &self.rules[i];
            debug_assert!(rule.matches_host(host));
            if rule.matches_rest(&p) {
                return Some(self.matched(i));
            }
        }
        None
    }

    /// The same answer as [`RuleSet::evaluate`], by checking every rule in order without the
    /// index: the reference the index is tested against, and the benchmark's baseline.
    pub fn evaluate_linear(&self, req: &RequestInfo<'_>) -> Option<Matched<'_>> {
        let mut buf = [0u8; matchers::HOST_BUF];
        let host = req.host.and_then(|h| matchers::normalize_host(h, &mut buf));
        let p = Prepared::new(req);
        let i = self
            .rules
            .iter()
            .position(|r| r.matches_host(host) && r.matches_rest(&p))?;
        Some(self.matched(i))
    }

    fn matched(&self, i: usize) -> Matched<'_> {
        let rule = &self.rules[i];
        Matched {
            index: i,
            name: &rule.name,
            action: &rule.action,
        }
    }
}

const KNOWN_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, TRACE";

fn compile_rule(i: usize, spec: &RuleSpec, groups: &[&str]) -> Result<Rule, RuleError> {
    let id = if spec.name.is_empty() {
        format!("#{i}")
    } else {
        spec.name.clone()
    };
    let err = |field: &'static str, value: &str, problem: String| RuleError {
        rule: id.clone(),
        field,
        value: value.to_owned(),
        problem,
    };

    if spec.hosts.is_empty()
        && spec.paths.is_empty()
        && spec.methods.is_empty()
        && spec.headers.is_empty()
        && spec.query.is_empty()
        && spec.client_cidrs.is_empty()
    {
        return Err(err(
            "conditions",
            "",
            "a rule needs at least one condition (host, path, path_prefix, path_regex, method, header, query, client)"
                .into(),
        ));
    }

    let hosts = spec
        .hosts
        .iter()
        .map(|h| HostPattern::parse(h).map_err(|p| err("host", h, p.to_string())))
        .collect::<Result<Vec<_>, _>>()?;

    let paths = spec
        .paths
        .iter()
        .map(|m| {
            PathMatcher::compile(m).map_err(|p| match m {
                PathMatch::Exact(v) => err("path", v, p.to_string()),
                PathMatch::Prefix(v) => err("path_prefix", v, p.to_string()),
                PathMatch::Regex(v) => err("path_regex", v, p.to_string()),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut methods = 0u16;
    for m in &spec.methods {
        let bit = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map(|m| method_bit(&m))
            .unwrap_or(0);
        if bit == 0 {
            return Err(err(
                "method",
                m,
                format!("not a known HTTP method; allowed: {KNOWN_METHODS}"),
            ));
        }
        methods |= bit;
    }

    let mut headers = Vec::with_capacity(spec.headers.len());
    for (name, values) in &spec.headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            err(
                "header",
                name,
                "not a valid header name (an HTTP token: letters, digits and !#$%&'*+-.^_`|~)"
                    .into(),
            )
        })?;
        let values = globs(values, "printable ASCII", |v| {
            v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        })
        .map_err(|(v, p)| err("header", &format!("{name}: {v}"), p))?;
        headers.push(HeaderCond {
            name: header,
            values,
        });
    }

    let mut query = Vec::with_capacity(spec.query.len());
    for (key, values) in &spec.query {
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(err(
                "query",
                key,
                "a query key must be non-empty text without control characters (compared \
                 with the request's decoded key)"
                    .into(),
            ));
        }
        let values = globs(values, "text without control characters", |v| {
            !v.chars().any(char::is_control)
        })
        .map_err(|(v, p)| err("query", &format!("{key}={v}"), p))?;
        query.push(QueryCond {
            key: key.to_ascii_lowercase().into_bytes().into(),
            values,
        });
    }

    let cidrs = spec
        .client_cidrs
        .iter()
        .map(|c| {
            matchers::parse_cidr(c).ok_or_else(|| {
                err(
                    "client",
                    c,
                    "not an IPv4 or IPv6 prefix (e.g. 10.0.0.0/8, 2001:db8::/32) or address".into(),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let action = match &spec.action {
        ActionSpec::Forward { group } => {
            let Some(index) = groups.iter().position(|g| *g == group.as_str()) else {
                let mut known = groups
                    .iter()
                    .take(10)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                if groups.len() > 10 {
                    known.push_str(", …");
                }
                return Err(err(
                    "group",
                    group,
                    format!("no such group (known: {known})"),
                ));
            };
            Action::Forward {
                group: group.clone(),
                index,
            }
        }
        ActionSpec::Redirect { status, location } => {
            if ![301, 302, 303, 307, 308].contains(status) {
                return Err(err(
                    "status",
                    &status.to_string(),
                    "a redirect status must be one of 301, 302, 303, 307, 308".into(),
                ));
            }
            let location = LocationTemplate::parse(location)
                .map_err(|p| err("location", location, p.to_string()))?;
            Action::Redirect {
                status: StatusCode::from_u16(*status).expect("checked redirect status"),
                location,
            }
        }
        ActionSpec::Fixed {
            status,
            content_type,
            body,
        } => {
            let code = StatusCode::from_u16(*status)
                .ok()
                .filter(|_| (200..=599).contains(status))
                .ok_or_else(|| {
                    err(
                        "status",
                        &status.to_string(),
                        "a fixed response status must be 200-599".into(),
                    )
                })?;
            let ct = HeaderValue::from_str(content_type)
                .ok()
                .filter(|_| !content_type.trim().is_empty())
                .ok_or_else(|| {
                    err(
                        "content_type",
                        content_type,
                        "not a valid header value (non-empty visible ASCII and spaces)".into(),
                    )
                })?;
            if body.len() > MAX_FIXED_BODY {
                return Err(err(
                    "body",
                    &format!("{} bytes", body.len()),
                    format!("a fixed response body may have at most {MAX_FIXED_BODY} bytes"),
                ));
            }
            Action::Fixed {
                status: code,
                content_type: ct,
                body: body.clone(),
            }
        }
    };

    Ok(Rule {
        name: spec.name.clone(),
        hosts,
        paths,
        methods,
        headers,
        query,
        cidrs,
        action,
        limiter: spec.rate_limit.map(|n| Arc::new(RateLimiter::new(n))),
    })
}

/// Compiles a condition's value patterns; `Err((value, problem))`.
fn globs(
    values: &[String],
    allowed: &str,
    valid: impl Fn(&str) -> bool,
) -> Result<Vec<Glob>, (String, String)> {
    if values.is_empty() {
        return Err((
            String::new(),
            "a condition needs at least one value (use \"*\" for any)".into(),
        ));
    }
    values
        .iter()
        .map(|v| {
            if valid(v) {
                Ok(Glob::new(v))
            } else {
                Err((
                    v.clone(),
                    format!("a value must be {allowed} ('*' matches any run of characters)"),
                ))
            }
        })
        .collect()
}
