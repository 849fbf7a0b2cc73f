//! `--rate-limit-requests` (and a rule's `rate-limit`): requests per second per client, a
//! token bucket per client address (IPv6 clients by their /64, which one host usually holds
//! whole), shared by the listener's
//! workers. The table is bounded: when it is full, buckets that have refilled (clients idle
//! for a second or more, the same as absent) make room; a client that finds no room is not
//! limited, rather than a legitimate client being refused for others' addresses. A request
//! refused by one limit (a rule's) still counts against the other (the listener's).
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards of the table, each behind its own lock, so that the workers rarely wait on each other.
const SHARDS: usize = 16;
/// Clients tracked at once, all shards together: about 40 bytes each.
pub const MAX_CLIENTS: usize = 100_000;

/// How often a full shard is scanned for idle clients: between scans, clients that find no
/// room are admitted without one (a flood of new addresses costs no scan per request).
const PURGE_EVERY: Duration = Duration::from_millis(100);

pub struct RateLimiter {
    per_second: f64,
    /// Picks a client's shard with a key of this process's own, so that nobody can aim many
    /// addresses at one shard.
    shard_of: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<u128, Bucket>,
    /// When the shard may next be scanned for idle clients.
    next_purge: Option<Instant>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimiter({}/s)", self.per_second)
    }
}

/// A refused client may come back after this many seconds: at 1 request per second or more,
/// a token is never further away.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The tokens the bucket holds at `now`, refilled at `rate` a second up to `rate`.
    fn tokens_at(&self, now: Instant, rate: f64) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate)
    }
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second.max(1)),
            shard_of: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// The table key of a client: IPv4 (plain or IPv4-mapped) by address, IPv6 by /64.
    fn key(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(u32::from(v4)),
                None => u128::from(v6) & !u128::from(u64::MAX) | 1 << 32,
            },
        }
    }

    /// Whether the client at `ip` may make a request now (taking a token if so).
    pub fn admit(&self, ip: IpAddr) -> bool {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, now: Instant) -> bool {
        let key = Self::key(ip);
        let shard = &self.shards[self.shard_of.hash_one(key) as usize % SHARDS];
        // A poisoned shard (a panic while it was held) still holds valid buckets.
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let rate = self.per_second;
        let Shard {
            buckets,
            next_purge,
        } = &mut *shard;
        if !buckets.contains_key(&key) && buckets.len() >= MAX_CLIENTS / SHARDS {
            if next_purge.is_some_and(|at| now < at) {
                return true;
            }
            *next_purge = Some(now + PURGE_EVERY);
            // A full bucket is as good as none.
            buckets.retain(|_, b| b.tokens_at(now, rate) < rate);
            if buckets.len() >= MAX_CLIENTS / SHARDS {
                return true;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        bucket.tokens = bucket.tokens_at(now, rate);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_client_gets_its_rate_and_refills() {
        let l = RateLimiter::new(3);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.admit_at(a, t));
        }
        assert!(!l.admit_at(a, t));
        assert!(l.admit_at(b, t));
        // A third of a second gives one request back.
        let later = t + Duration::from_millis(340);
        assert!(l.admit_at(a, later));
        assert!(!l.admit_at(a, later));
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let l = RateLimiter::new(1);
        let t = Instant::now();
        let one: IpAddr = "fd00:1:2:3::1".parse().unwrap();
        let same64: IpAddr = "fd00:1:2:3:ffff::9".parse().unwrap();
        let other64: IpAddr = "fd00:1:2:4::1".parse().unwrap();
        assert!(l.admit_at(one, t));
        assert!(!l.admit_at(same64, t));
        assert!(l.admit_at(other64, t));
        let v4: IpAddr = "10.1.1.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        assert!(l.admit_at(v4, t));
        assert!(!l.admit_at(mapped, t));
    }

    #[test]
    fn the_table_stays_bounded_and_idle_clients_make_room() {
        let l = RateLimiter::new(1);
        let t = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 5_000) {
            l.admit_at(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), t);
        }
        let tracked: usize = l
            .shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum();
        assert!(tracked <= MAX_CLIENTS, "{tracked}");
        // A second later every bucket has refilled: a new client finds room and is limited.
        let later = t + Duration::from_secs(2);
        let new: IpAddr = "10.255.0.1".parse().unwrap();
        assert!(l.admit_at(new, later));
        assert!(!l.admit_at(new, later));
    }
}
