//! Compiled conditions and the request normalisation they rely on.
use std::borrow::Cow;
use std::net::IpAddr;

use hyper::Method;
use ipnet::IpNet;
use regex::{Regex, RegexBuilder};

use super::{PathMatch, REGEX_SIZE_LIMIT};

/// Room for a lower-cased host: a DNS name has at most 253 characters (plus a trailing dot).
pub(super) const HOST_BUF: usize = 256;

/// The bit of a standard method in a rule's method set; 0 for any other method.
pub(super) fn method_bit(m: &Method) -> u16 {
    match m.as_str() {
        "GET" => 1 << 0,
        "HEAD" => 1 << 1,
        "POST" => 1 << 2,
        "PUT" => 1 << 3,
        "DELETE" => 1 << 4,
        "PATCH" => 1 << 5,
        "OPTIONS" => 1 << 6,
        "CONNECT" => 1 << 7,
        "TRACE" => 1 << 8,
        _ => 0,
    }
}

/// `s.split_once(c)` for an ASCII byte: a plain loop, quicker than `str`'s searcher on the
/// short strings (hosts, paths, query pairs) evaluation splits.
#[inline]
fn split_at_byte(s: &str, c: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == c)?;
    // `c` is ASCII, so `at` and `at + 1` are character boundaries.
    Some((&s[..at], &s[at + 1..]))
}

/// The host of a Host header / `:authority` without its port (`[v6]:port` keeps the
/// brackets), as given.
pub(super) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match split_at_byte(host, b':') {
        Some((name, port)) if !port.bytes().any(|b| b == b':') => name,
        _ => host,
    }
}

/// The request host as the index keys it: without port and trailing dot, lower-cased (into
/// `buf` only when it has upper-case letters). `None` when it cannot be a configured host.
pub(super) fn normalize_host<'a>(host: &'a str, buf: &'a mut [u8; HOST_BUF]) -> Option<&'a str> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let out = buf.get_mut(..host.len())?;
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    // Lower-casing ASCII letters keeps the bytes UTF-8.
    std::str::from_utf8(out).ok()
}

/// `*.example.com` matches a host whose parent domain is `example.com`: this is that parent.
pub(super) fn wildcard_parent(host: &str) -> Option<&str> {
    match split_at_byte(host, b'.') {
        Some((first, parent)) if !first.is_empty() && !parent.is_empty() => Some(parent),
        _ => None,
    }
}

/// Why a rule's host was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a host name: dot-separated labels of 1-63 letters, digits and hyphens (not at a \
     label's ends), at most 253 characters, optionally after a leading \"*.\"; no port"
)]
pub(super) struct HostPatternError;

/// A configured host, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HostPattern {
    Exact(Box<str>),
    /// `*.parent`: the parent domain.
    Wildcard(Box<str>),
}

impl HostPattern {
    pub(super) fn parse(raw: &str) -> Result<HostPattern, HostPatternError> {
        let lower = raw.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(HostPatternError);
        }
        Ok(if wild {
            HostPattern::Wildcard(name.into())
        } else {
            HostPattern::Exact(name.into())
        })
    }

    /// `host` is normalised ([`normalize_host`]).
    pub(super) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => **h == *host,
            HostPattern::Wildcard(parent) => wildcard_parent(host) == Some(&**parent),
        }
    }
}

/// Why a rule's path, path prefix or path regex was refused.
#[derive(Clone, Debug, thiserror::Error)]
pub(super) enum PathError {
    #[error(
        "a path must start with '/' and be visible ASCII without '?' or '#' (it is compared, \
         as received, with the request path without its query)"
    )]
    NotLiteral,
    /// `path=/a|/b` read as two paths would be a rule that never matches either.
    #[error(
        "one path each: '|' separates values only in header= and query=; give a rule per \
         path, or path-regex=^/(a|b)"
    )]
    Alternatives,
    #[error("an empty regex matches every path; leave the path out instead")]
    EmptyRegex,
    /// The regex crate's own message is several lines (the pattern, a caret, the reason):
    /// only the reason is shown, since the pattern is already part of the rule's error.
    #[error(
        "not a valid regex (Rust regex syntax, at most {REGEX_SIZE_LIMIT} bytes compiled): {}",
        regex_reason(.source)
    )]
    Regex {
        #[source]
        source: regex::Error,
    },
}

/// The last line of a regex error without its `error: ` label.
fn regex_reason(e: &regex::Error) -> String {
    let e = e.to_string();
    let last = e.lines().last().unwrap_or(&e).trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

#[derive(Clone, Debug)]
pub(super) enum PathMatcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

impl PathMatcher {
    pub(super) fn compile(m: &PathMatch) -> Result<PathMatcher, PathError> {
        let literal_ok = |p: &str| {
            p.starts_with('/')
                && p.bytes()
                    .all(|b| (b'!'..=b'~').contains(&b) && b != b'?' && b != b'#')
        };
        match m {
            PathMatch::Exact(p) | PathMatch::Prefix(p) if !literal_ok(p) => {
                Err(PathError::NotLiteral)
            }
            PathMatch::Exact(p) | PathMatch::Prefix(p) if p.contains('|') => {
                Err(PathError::Alternatives)
            }
            PathMatch::Exact(p) => Ok(PathMatcher::Exact(p.as_str().into())),
            PathMatch::Prefix(p) => Ok(PathMatcher::Prefix(p.as_str().into())),
            PathMatch::Regex(p) if p.is_empty() => Err(PathError::EmptyRegex),
            PathMatch::Regex(p) => RegexBuilder::new(p)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(PathMatcher::Regex)
                .map_err(|source| PathError::Regex { source }),
        }
    }

    pub(super) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => **p == *path,
            PathMatcher::Prefix(p) => path.starts_with(&**p),
            PathMatcher::Regex(re) => re.is_match(path),
        }
    }
}

/// The first path segment a prefix pins: `/api/v1` → `api` (every path it matches starts with
/// `/api/`). `None` for `/`, `/api` (which also matches `/apix`) and the like.
pub(super) fn prefix_segment(prefix: &str) -> Option<&str> {
    let rest = prefix.strip_prefix('/')?;
    let (seg, _) = rest.split_once('/')?;
    (!seg.is_empty()).then_some(seg)
}

/// The literal text every match of a path regex starts with, when the pattern makes that
/// plain: `^/img/[0-9]+` → `/img/`. Conservative: `None` unless the pattern starts with `^`,
/// has no top-level alternation and no inline flags; the text stops before the first
/// metacharacter, and a quantified last character is dropped (`^/ab?` → `/a`).
pub(super) fn regex_literal_prefix(pattern: &str) -> Option<&str> {
    let body = pattern.strip_prefix('^')?;
    if pattern.contains("(?")
        && pattern
            .split("(?")
            .skip(1)
            .any(|g| !g.starts_with([':', 'P', '<']))
    {
        return None;
    }
    if top_level_alternation(pattern) {
        return None;
    }
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/-_~%,;:=@&!".contains(&b);
    let mut end = body.bytes().position(|b| !plain(b)).unwrap_or(body.len());
    if end > 0 && body[end..].starts_with(['?', '*', '{', '+']) {
        end -= 1;
    }
    Some(&body[..end])
}

/// Whether `pattern` has a `|` outside every group and class.
fn top_level_alternation(pattern: &str) -> bool {
    let b = pattern.as_bytes();
    let (mut i, mut depth, mut class) = (0, 0i32, 0i32);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => {
                class += 1;
                // A `]` right after `[` or `[^` is a literal.
                if b.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if b.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b']' if class > 0 => class -= 1,
            _ if class > 0 => {}
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'|' if depth <= 0 => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// A request path's first segment: `/api/v1/x` → `api`, `/api` → `api`.
pub(super) fn path_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let seg = split_at_byte(rest, b'/').map_or(rest, |(s, _)| s);
    (!seg.is_empty()).then_some(seg)
}

/// A value pattern: ASCII case-insensitive, `*` matches any run of characters.
#[derive(Clone, Debug)]
pub(super) struct Glob {
    /// The pattern split at `*`, lower-cased: one piece means no `*`.
    pieces: Box<[Box<[u8]>]>,
}

impl Glob {
    pub(super) fn new(pattern: &str) -> Glob {
        Glob {
            pieces: pattern
                .to_ascii_lowercase()
                .split('*')
                .map(|p| p.as_bytes().into())
                .collect(),
        }
    }

    pub(super) fn matches(&self, value: &[u8]) -> bool {
        let (first, rest) = match &*self.pieces {
            [only] => return value.eq_ignore_ascii_case(only),
            [first, rest @ ..] => (first, rest),
            [] => return false,
        };
        let (last, middle) = rest.split_last().expect("a '*' makes two pieces");
        if value.len() < first.len() + last.len()
            || !value[..first.len()].eq_ignore_ascii_case(first)
            || !value[value.len() - last.len()..].eq_ignore_ascii_case(last)
        {
            return false;
        }
        let mut hay = &value[first.len()..value.len() - last.len()];
        for piece in middle.iter().filter(|p| !p.is_empty()) {
            // Leftmost placement of each piece is optimal when only `*` is special.
            match hay
                .windows(piece.len())
                .position(|w| w.eq_ignore_ascii_case(piece))
            {
                Some(at) => hay = &hay[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Percent-decodes a query component (`+` is a space); borrows unless it is encoded.
fn decode(raw: &str) -> Cow<'_, [u8]> {
    let bytes = raw.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Whether `query` has a pair whose key is `key` (lower-case) and whose value matches one of
/// `values`.
pub(super) fn query_matches(query: Option<&str>, key: &[u8], values: &[Glob]) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split('&').any(|pair| {
        let (k, v) = split_at_byte(pair, b'=').unwrap_or((pair, ""));
        decode(k).eq_ignore_ascii_case(key) && {
            let v = decode(v);
            values.iter().any(|g| g.matches(&v))
        }
    })
}

/// A client prefix or address; an IPv4-mapped IPv6 prefix becomes the IPv4 prefix it covers.
pub(super) fn parse_cidr(raw: &str) -> Option<IpNet> {
    let net: IpNet = raw
        .parse()
        .ok()
        .or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))?;
    Some(crate::acl::unmapped(net.trunc()))
}
