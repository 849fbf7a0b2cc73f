//! The rule index: which rules can possibly match a request, in rule order.
//!
//! Level 1 is the host: exact hosts, wildcard hosts by parent domain, and host-less rules each
//! have their buckets. A rule listing several hosts sits in each of their buckets; being in
//! the bucket a request reaches settles its host condition.
//!
//! Level 2, inside a bucket of more than [`SMALL_BUCKET`] rules, is the path: a rule whose
//! path conditions are all exact paths, prefixes pinning a first segment (`/api/…`) or regexes
//! whose literal start pins one (`^/api/v[0-9]+`) is listed under each of those
//! paths/segments; another rule whose paths are all regexes is listed behind the bucket's
//! `RegexSet`, consulted only when the set matches the request path at all; every other rule
//! (no path condition, `/`-like prefixes, mixed kinds) is in `rest`.
//!
//! Every list holds rule indices in ascending order, so the candidates of a request are the
//! k-way merge (k ≤ 12) of the lists it reaches, visited in rule order: the first candidate
//! whose remaining conditions match is the first matching rule overall.
use std::collections::HashMap as StdHashMap;
use std::hash::{BuildHasherDefault, Hasher};

use regex::{RegexSet, RegexSetBuilder};

use super::Rule;
use super::matchers::{
    HostPattern, PathMatcher, path_segment, prefix_segment, regex_literal_prefix, wildcard_parent,
};

/// The index's maps hash hosts and paths with [`KeyHasher`].
type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// A fast, unkeyed string hash (multiply-rotate over 8-byte words, then a murmur3 finaliser
/// so that every output bit depends on every input bit). SipHash's protection against
/// flooding is not needed here: the maps are built once from the configuration and the
/// request only looks keys up, so a chosen key costs one probe sequence of a table whose
/// layout the client does not control.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl KeyHasher {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut last = [0u8; 8];
            last[..tail.len()].copy_from_slice(tail);
            last[7] = tail.len() as u8; // "ab" and "ab\0" differ
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b) | 0x100);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Buckets up to this size are scanned whole: a second-level lookup would cost more.
pub(super) const SMALL_BUCKET: usize = 8;
/// Lists a request can reach: 3 buckets × (exact path, segment, regex, rest).
const MAX_LISTS: usize = 12;

/// The rules of one host (or of no host).
#[derive(Clone, Debug)]
enum Bucket {
    /// At most [`SMALL_BUCKET`] rules, scanned whole.
    Small(Box<[u32]>),
    Large(Box<LargeBucket>),
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket::Small(Box::default())
    }
}

#[derive(Clone, Debug, Default)]
struct LargeBucket {
    by_path: HashMap<Box<str>, Vec<u32>>,
    by_segment: HashMap<Box<str>, Vec<u32>>,
    regex_only: Vec<u32>,
    /// Every regex of the `regex_only` rules; `None` (no gate) if the set is too large.
    regex_gate: Option<RegexSet>,
    rest: Vec<u32>,
}

fn push_once(list: &mut Vec<u32>, i: u32) {
    if list.last() != Some(&i) {
        list.push(i);
    }
}

impl Bucket {
    fn build(members: &[u32], rules: &[Rule]) -> Bucket {
        if members.len() <= SMALL_BUCKET {
            return Bucket::Small(members.into());
        }
        let mut b = LargeBucket::default();
        let mut patterns = Vec::new();
        for &i in members {
            let paths = &rules[i as usize].paths;
            let keys: Option<Vec<(bool, &str)>> = paths
                .iter()
                .map(|p| match p {
                    PathMatcher::Exact(e) => Some((true, &**e)),
                    PathMatcher::Prefix(pre) => prefix_segment(pre).map(|s| (false, s)),
                    PathMatcher::Regex(re) => regex_literal_prefix(re.as_str())
                        .and_then(prefix_segment)
                        .map(|s| (false, s)),
                })
                .collect();
            match keys {
                Some(keys) if !keys.is_empty() => {
                    for (exact, key) in keys {
                        let map = if exact {
                            &mut b.by_path
                        } else {
                            &mut b.by_segment
                        };
                        push_once(map.entry(key.into()).or_default(), i);
                    }
                }
                _ if !paths.is_empty()
                    && paths.iter().all(|p| matches!(p, PathMatcher::Regex(_))) =>
                {
                    b.regex_only.push(i);
                    patterns.extend(paths.iter().map(|p| match p {
                        PathMatcher::Regex(re) => re.as_str(),
                        _ => unreachable!("regex-only rule"),
                    }));
                }
                _ => b.rest.push(i),
            }
        }
        if !patterns.is_empty() {
            b.regex_gate = RegexSetBuilder::new(patterns)
                .size_limit(super::REGEX_SIZE_LIMIT * 8)
                .build()
                .ok();
        }
        b.by_path.shrink_to_fit();
        b.by_segment.shrink_to_fit();
        Bucket::Large(Box::new(b))
    }

    fn reach<'s>(&'s self, path: &str, segment: Option<&str>, merge: &mut Merge<'s>) {
        let b = match self {
            Bucket::Small(rules) => return merge.add(rules),
            Bucket::Large(b) => b,
        };
        if !b.by_path.is_empty()
            && let Some(l) = b.by_path.get(path)
        {
            merge.add(l);
        }
        if !b.by_segment.is_empty()
            && let Some(l) = segment.and_then(|s| b.by_segment.get(s))
        {
            merge.add(l);
        }
        if !b.regex_only.is_empty() && b.regex_gate.as_ref().is_none_or(|set| set.is_match(path)) {
            merge.add(&b.regex_only);
        }
        merge.add(&b.rest);
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct Index {
    exact: HashMap<Box<str>, Bucket>,
    wildcard: HashMap<Box<str>, Bucket>,
    hostless: Bucket,
}

impl Index {
    pub(super) fn build(rules: &[Rule]) -> Index {
        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::default();
        let mut wildcard: HashMap<Box<str>, Vec<u32>> = HashMap::default();
        let mut hostless = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).expect("at most MAX_RULES rules");
            if rule.hosts.is_empty() {
                hostless.push(i);
            }
            for h in &rule.hosts {
                let (map, key) = match h {
                    HostPattern::Exact(k) => (&mut exact, k),
                    HostPattern::Wildcard(k) => (&mut wildcard, k),
                };
                push_once(map.entry(key.clone()).or_default(), i);
            }
        }
        let buckets = |m: HashMap<Box<str>, Vec<u32>>| {
            m.into_iter()
                .map(|(k, members)| (k, Bucket::build(&members, rules)))
                .collect()
        };
        Index {
            exact: buckets(exact),
            wildcard: buckets(wildcard),
            hostless: Bucket::build(&hostless, rules),
        }
    }

    /// The candidate rules for a request with normalised `host` and `path`, in rule order.
    pub(super) fn candidates<'s>(&'s self, host: Option<&str>, path: &str, merge: &mut Merge<'s>) {
        let segment = path_segment(path);
        if let Some(host) = host {
            if !self.exact.is_empty()
                && let Some(b) = self.exact.get(host)
            {
                b.reach(path, segment, merge);
            }
            if !self.wildcard.is_empty()
                && let Some(b) = wildcard_parent(host).and_then(|p| self.wildcard.get(p))
            {
                b.reach(path, segment, merge);
            }
        }
        self.hostless.reach(path, segment, merge);
    }
}

/// A k-way merge of ascending index lists, without duplicates.
#[derive(Default)]
pub(super) struct Merge<'s> {
    lists: [&'s [u32]; MAX_LISTS],
    n: usize,
}

impl<'s> Merge<'s> {
    fn add(&mut self, list: &'s [u32]) {
        if !list.is_empty() {
            self.lists[self.n] = list;
            self.n += 1;
        }
    }

    /// The next candidate rule index.
    pub(super) fn next_index(&mut self) -> Option<usize> {
        let lists = &mut self.lists[..self.n];
        if let [only] = lists {
            let (&first, tail) = only.split_first()?;
            *only = tail;
            return Some(first as usize);
        }
        let min = lists.iter().filter_map(|l| l.first()).min().copied()?;
        for l in lists.iter_mut() {
            if l.first() == Some(&min) {
                *l = &l[1..];
            }
        }
        Some(min as usize)
    }
}
