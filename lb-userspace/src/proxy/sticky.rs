//! Sticky sessions: keeping a client on the backend that first served it.
//!
//! Two ways to remember the pin:
//!
//! * `lb-cookie`: edgelb issues its own cookie, [`LB_COOKIE`], whose value is a token naming the
//!   backend by its address and an expiry, authenticated with HMAC-SHA256. The token is
//!   `base64url_nopad(version || addr_len || addr || expiry || tag)` where `version` is one byte
//!   (1), `addr_len` one byte, `addr` the backend's address text (`10.0.0.5:8080`,
//!   `[fd00::5]:80`), `expiry` the Unix time in seconds as a big-endian u64, and `tag` the
//!   32-byte HMAC-SHA256 of everything before it. Addresses rather than indices, so that nodes
//!   listing the same backends in another order agree; a shared key file, so that any node
//!   honours any other's cookies.
//! * `app-cookie`: the backend's own session cookie pins the client. Its value means nothing
//!   to us, so a bounded in-memory [`StickTable`] remembers which backend set which value. The
//!   table is per process: another node, or this one after a restart, does not know the pins.
//!
//! A cookie that is tampered with, expired, malformed, or unknown reads as absent: the request
//! is balanced as a new client's would be, never refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::HeaderMap;
use hyper::header::{COOKIE, HeaderValue, SET_COOKIE};

pub use crate::config::{Stickiness, StickyKey, validate_cookie_name};

/// Name of the cookie edgelb sets in lb-cookie mode.
pub const LB_COOKIE: &str = "EDGELB_STICKY";

/// Bumped if the token layout changes, so that old tokens fail cleanly instead of misparsing.
const TOKEN_VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// The longest token we could have issued (255-byte address), base64-encoded; anything longer
/// is rejected before decoding.
const MAX_TOKEN_LEN: usize = (2 + 255 + 8 + TAG_LEN).div_ceil(3) * 4;
/// A request may repeat our cookie; each candidate costs an HMAC, so a client stuffing its
/// headers with them gets only this many tries.
const MAX_CANDIDATES: usize = 8;

/// App-cookie values longer than this are not recorded: the table is bounded in entries, and
/// this bounds the memory each entry may take. Real session ids are far shorter.
const MAX_APP_VALUE_LEN: usize = 512;

/// Entries of an app-cookie group's stick table.
pub const STICK_TABLE_CAPACITY: usize = 100_000;

/// A group's stickiness as it runs: its settings and, in app-cookie mode, the table of
/// sessions, shared by every worker and kept by the group runtime across reloads that keep
/// the cookie and its duration.
#[derive(Debug)]
pub struct Sticky {
    settings: Arc<Stickiness>,
    table: Option<Arc<StickTable>>,
    /// lb-cookie: the key that seals and opens cookies (the settings' file key, or the node's
    /// own given by [`Sticky::with_own_key`]); None: no cookie is honoured or set.
    lb_key: Option<StickyKey>,
}

impl Sticky {
    /// `running`: the same group's stickiness before a reload, whose sessions carry over when
    /// the cookie and the duration did not change.
    pub fn new(settings: Arc<Stickiness>, running: Option<&Sticky>) -> Sticky {
        let table = match &*settings {
            Stickiness::LbCookie { .. } => None,
            Stickiness::AppCookie { name, duration } => {
                let kept = running.and_then(|r| match (&*r.settings, &r.table) {
                    (
                        Stickiness::AppCookie {
                            name: old_name,
                            duration: old_duration,
                        },
                        Some(table),
                    ) if old_name == name && old_duration == duration => Some(table.clone()),
                    _ => None,
                });
                Some(kept.unwrap_or_else(|| Arc::new(StickTable::new(STICK_TABLE_CAPACITY))))
            }
        };
        let lb_key = match &*settings {
            Stickiness::LbCookie { key, .. } => key.clone(),
            Stickiness::AppCookie { .. } => None,
        };
        Sticky {
            settings,
            table,
            lb_key,
        }
    }

    /// lb-cookie without a key file: cookies are sealed with `own`, the node's random key.
    pub fn with_own_key(mut self, own: &StickyKey) -> Sticky {
        if matches!(&*self.settings, Stickiness::LbCookie { key: None, .. }) {
            self.lb_key = Some(own.clone());
        }
        self
    }

    /// Whether `other` shares this one's sessions (tests of reloads).
    pub fn shares_sessions_with(&self, other: &Sticky) -> bool {
        matches!((&self.table, &other.table), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
    }

    /// The backend (address string) this request is pinned to, if a valid, unexpired cookie
    /// says so. Whether that backend still exists and may take the request is the caller's
    /// call.
    pub fn pinned(&self, request_headers: &HeaderMap, now: SystemTime) -> Option<String> {
        match (&*self.settings, &self.table) {
            (Stickiness::LbCookie { .. }, _) => {
                let key = self.lb_key.as_ref()?;
                let now = unix_secs(now);
                request_cookies(request_headers, LB_COOKIE)
                    .take(MAX_CANDIDATES)
                    .find_map(|value| open_token(key, value, now))
            }
            (Stickiness::AppCookie { name, .. }, Some(table)) => {
                request_cookies(request_headers, name)
                    .take(MAX_CANDIDATES)
                    .filter_map(|value| std::str::from_utf8(value).ok())
                    .find_map(|value| table.get(value, now))
            }
            (Stickiness::AppCookie { .. }, None) => None,
        }
    }

    /// Called with the response about to go to the client, the backend that served it, and
    /// whether the request was already pinned to that very backend.
    ///
    /// lb-cookie: a client that was not pinned to `backend` (new, or moved off a backend that
    /// could not serve it) gets a new cookie; a pinned one keeps its cookie, so the pin lasts
    /// `duration` from when it was made rather than sliding with every request.
    ///
    /// app-cookie: every Set-Cookie for the backend's cookie records (or, when it deletes the
    /// cookie, forgets) which backend that value belongs to.
    pub fn on_response(
        &self,
        response_headers: &mut HeaderMap,
        backend: &str,
        already_pinned: bool,
        https: bool,
        now: SystemTime,
    ) {
        match (&*self.settings, &self.table) {
            (Stickiness::LbCookie { duration, .. }, _) => {
                let Some(key) = &self.lb_key else {
                    return;
                };
                if already_pinned {
                    return;
                }
                let max_age = duration.as_secs();
                let Some(expiry) = unix_secs(now).checked_add(max_age) else {
                    return;
                };
                let Some(token) = seal_token(key, backend, expiry) else {
                    return;
                };
                let secure = if https { "; Secure" } else { "" };
                let cookie =
                    format!("{LB_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly{secure}");
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response_headers.append(SET_COOKIE, value);
                }
            }
            (Stickiness::AppCookie { name, duration }, Some(table)) => {
                for header in response_headers.get_all(SET_COOKIE) {
                    let Some(set) = parse_set_cookie(header.as_bytes()) else {
                        continue;
                    };
                    if set.name != name.as_bytes() {
                        continue;
                    }
                    let Ok(value) = std::str::from_utf8(set.value) else {
                        continue;
                    };
                    if set.deletes(now) {
                        table.remove(value);
                    } else if let Some(expires) = now.checked_add(*duration) {
                        table.insert(value, backend, expires, now);
                    }
                }
            }
            (Stickiness::AppCookie { .. }, None) => {}
        }
    }
}

/// Which backend set which app-cookie value, until when.
///
/// Bounded at `capacity` entries. Each insertion first drops the oldest entries while they
/// have expired; if the table is still full, it drops the oldest entries (by insertion) until
/// there is room. With one duration per table, oldest is also soonest to expire, so a full
/// table sheds the sessions closest to ending anyway. Expired entries elsewhere (possible only
/// if the clock stepped back) are dropped when looked up or when they reach the front.
pub struct StickTable {
    capacity: usize,
    inner: Mutex<TableInner>,
}

struct TableInner {
    entries: HashMap<Arc<str>, StickEntry>,
    /// Insertion order, for eviction without scanning the whole map.
    order: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
}

struct StickEntry {
    backend: Box<str>,
    expires: SystemTime,
    seq: u64,
}

impl StickTable {
    pub fn new(capacity: usize) -> Self {
        StickTable {
            capacity,
            inner: Mutex::new(TableInner {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                next_seq: 0,
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table stays consistent between statements, so a panic elsewhere while it was held
    /// is no reason to stop pinning clients.
    fn lock(&self) -> MutexGuard<'_, TableInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, value: &str, now: SystemTime) -> Option<String> {
        let mut inner = self.lock();
        let entry = inner.entries.get(value)?;
        if entry.expires > now {
            return Some(entry.backend.to_string());
        }
        inner.remove(value);
        None
    }

    fn insert(&self, value: &str, backend: &str, expires: SystemTime, now: SystemTime) {
        if self.capacity == 0 || value.is_empty() || value.len() > MAX_APP_VALUE_LEN {
            return;
        }
        let mut inner = self.lock();
        inner.remove(value);
        inner.drop_expired_front(now);
        while inner.entries.len() >= self.capacity {
            if !inner.drop_front() {
                // Only reachable if the order index lost track of entries; start over rather
                // than exceed the bound.
                inner.entries.clear();
                inner.order.clear();
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let key: Arc<str> = Arc::from(value);
        inner.order.insert(seq, key.clone());
        inner.entries.insert(
            key,
            StickEntry {
                backend: backend.into(),
                expires,
                seq,
            },
        );
    }

    fn remove(&self, value: &str) {
        self.lock().remove(value);
    }
}

impl TableInner {
    fn remove(&mut self, value: &str) {
        if let Some(entry) = self.entries.remove(value) {
            self.order.remove(&entry.seq);
        }
    }

    fn drop_expired_front(&mut self, now: SystemTime) {
        while let Some((_, key)) = self.order.first_key_value() {
            match self.entries.get(key) {
                Some(entry) if entry.expires > now => break,
                _ => {
                    self.drop_front();
                }
            }
        }
    }

    /// Drops the oldest entry; false if there was none.
    fn drop_front(&mut self) -> bool {
        let Some((seq, key)) = self.order.pop_first() else {
            return false;
        };
        if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
            self.entries.remove(&key);
        }
        true
    }
}

impl fmt::Debug for StickTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickTable")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn seal_token(key: &StickyKey, backend: &str, expiry: u64) -> Option<String> {
    let addr_len = u8::try_from(backend.len()).ok()?;
    let mut raw = Vec::with_capacity(2 + backend.len() + 8 + TAG_LEN);
    raw.push(TOKEN_VERSION);
    raw.push(addr_len);
    raw.extend_from_slice(backend.as_bytes());
    raw.extend_from_slice(&expiry.to_be_bytes());
    let tag = hmac::sign(key.hmac(), &raw);
    raw.extend_from_slice(tag.as_ref());
    Some(URL_SAFE_NO_PAD.encode(raw))
}

/// The backend a token names, if the token is ours, intact, and unexpired at `now`.
fn open_token(key: &StickyKey, token: &[u8], now: u64) -> Option<String> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    let (&version, rest) = raw.split_first()?;
    let (&addr_len, rest) = rest.split_first()?;
    let addr_len = usize::from(addr_len);
    if version != TOKEN_VERSION || rest.len() != addr_len + 8 + TAG_LEN {
        return None;
    }
    let (signed, tag) = raw.split_at(2 + addr_len + 8);
    hmac::verify(key.hmac(), signed, tag).ok()?;
    let (addr, expiry) = signed[2..].split_at(addr_len);
    let expiry = u64::from_be_bytes(expiry.try_into().ok()?);
    if expiry <= now {
        return None;
    }
    String::from_utf8(addr.to_vec()).ok()
}

/// Values of every cookie called `name` in the request, in order, across all Cookie headers.
fn request_cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|&b| b == b';'))
        .filter_map(move |pair| {
            let pair = trim_wsp(pair);
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (n, v) = (trim_wsp(&pair[..eq]), trim_wsp(&pair[eq + 1..]));
            (n == name.as_bytes()).then_some(v)
        })
}

fn trim_wsp(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The parts of a Set-Cookie that matter here (RFC 6265 section 5.2).
struct SetCookie<'a> {
    name: &'a [u8],
    value: &'a [u8],
    /// The last Max-Age: `Some(true)` when it is zero or negative.
    max_age_deletes: Option<bool>,
    /// The last parseable Expires, in Unix seconds.
    expires: Option<i64>,
}

impl SetCookie<'_> {
    /// Max-Age wins over Expires, as in browsers.
    fn deletes(&self, now: SystemTime) -> bool {
        match (self.max_age_deletes, self.expires) {
            (Some(deletes), _) => deletes,
            (None, Some(expires)) => {
                let now = i64::try_from(unix_secs(now)).unwrap_or(i64::MAX);
                expires <= now
            }
            (None, None) => false,
        }
    }
}

fn parse_set_cookie(header: &[u8]) -> Option<SetCookie<'_>> {
    let mut parts = header.split(|&b| b == b';');
    let pair = parts.next()?;
    let eq = pair.iter().position(|&b| b == b'=')?;
    let name = trim_wsp(&pair[..eq]);
    if name.is_empty() {
        return None;
    }
    let mut set = SetCookie {
        name,
        value: trim_wsp(&pair[eq + 1..]),
        max_age_deletes: None,
        expires: None,
    };
    for attr in parts {
        let (attr_name, attr_value) = match attr.iter().position(|&b| b == b'=') {
            Some(eq) => (trim_wsp(&attr[..eq]), trim_wsp(&attr[eq + 1..])),
            None => (trim_wsp(attr), &[][..]),
        };
        if attr_name.eq_ignore_ascii_case(b"max-age") {
            if let Some(deletes) = max_age_deletes(attr_value) {
                set.max_age_deletes = Some(deletes);
            }
        } else if attr_name.eq_ignore_ascii_case(b"expires")
            && let Some(expires) = parse_cookie_date(attr_value)
        {
            set.expires = Some(expires);
        }
    }
    Some(set)
}

/// `Some(true)` for a Max-Age of zero or less, `Some(false)` for a positive one, `None` for
/// one that is malformed and so ignored.
fn max_age_deletes(value: &[u8]) -> Option<bool> {
    let (negative, digits) = match value {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, value),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(negative || digits.iter().all(|&b| b == b'0'))
}

/// RFC 6265 section 5.1.1, which accepts every date format seen in the wild; Unix seconds.
fn parse_cookie_date(s: &[u8]) -> Option<i64> {
    let is_delimiter =
        |b: &u8| matches!(b, 0x09 | 0x20..=0x2f | 0x3b..=0x40 | 0x5b..=0x60 | 0x7b..=0x7e);
    let (mut time, mut day, mut month, mut year) = (None, None, None, None);
    for token in s.split(is_delimiter).filter(|t| !t.is_empty()) {
        if time.is_none()
            && let Some(t) = parse_hms(token)
        {
            time = Some(t);
        } else if day.is_none()
            && let Some(d) = leading_number(token, 1, 2)
        {
            day = Some(d);
        } else if month.is_none()
            && let Some(m) = parse_month(token)
        {
            month = Some(m);
        } else if year.is_none()
            && let Some(y) = leading_number(token, 2, 4)
        {
            year = Some(y);
        }
    }
    let ((hour, minute, second), day, month, mut year) = (time?, day?, month?, year?);
    if (70..=99).contains(&year) {
        year += 1900;
    } else if year <= 69 {
        year += 2000;
    }
    if year < 1601 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(days * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

/// The number made by the token's leading digits, if there are between `min` and `max` of
/// them (so "123" does not read as a two-digit day, but "12th" does).
fn leading_number(token: &[u8], min: usize, max: usize) -> Option<u32> {
    let n = token.iter().take_while(|b| b.is_ascii_digit()).count();
    if n < min || n > max {
        return None;
    }
    Some(
        token[..n]
            .iter()
            .fold(0, |acc, &b| acc * 10 + u32::from(b - b'0')),
    )
}

fn parse_hms(token: &[u8]) -> Option<(u32, u32, u32)> {
    let mut fields = token.splitn(3, |&b| b == b':');
    let hour = fields.next()?;
    let minute = fields.next()?;
    let second = fields.next()?;
    let exact = |f: &[u8]| leading_number(f, 1, 2).filter(|_| f.iter().all(u8::is_ascii_digit));
    Some((exact(hour)?, exact(minute)?, leading_number(second, 1, 2)?))
}

fn parse_month(token: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let prefix = token.get(..3)?;
    let index = MONTHS
        .iter()
        .position(|m| prefix.eq_ignore_ascii_case(*m))?;
    u32::try_from(index + 1).ok()
}

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const MINUTES_30: Duration = Duration::from_secs(30 * 60);

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn lb(key: StickyKey) -> Sticky {
        Sticky::new(
            Arc::new(Stickiness::LbCookie {
                key: Some(key),
                duration: MINUTES_30,
            }),
            None,
        )
    }

    fn app(capacity: usize) -> Sticky {
        Sticky {
            settings: Arc::new(Stickiness::AppCookie {
                name: "SESSIONID".to_string(),
                duration: MINUTES_30,
            }),
            table: Some(Arc::new(StickTable::new(capacity))),
            lb_key: None,
        }
    }

    fn table(s: &Sticky) -> &StickTable {
        s.table.as_deref().expect("app-cookie")
    }

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn set_cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(SET_COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn set_cookie_strings(h: &HeaderMap) -> Vec<String> {
        h.get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// The token from the lb-cookie that `on_response` issues for `backend` at `now`.
    fn issue(s: &Sticky, backend: &str, now: SystemTime) -> String {
        let mut h = HeaderMap::new();
        s.on_response(&mut h, backend, false, true, now);
        let set = set_cookie_strings(&h);
        assert_eq!(set.len(), 1);
        let pair = set[0].split(';').next().unwrap();
        let token = pair.strip_prefix("EDGELB_STICKY=").unwrap();
        token.to_string()
    }

    fn pinned_with(s: &Sticky, token: &str, now: SystemTime) -> Option<String> {
        s.pinned(&cookies(&[&format!("{LB_COOKIE}={token}")]), now)
    }

    fn temp_file(contents: &[u8]) -> std::path::PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "edgelb-sticky-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn lb_cookie_round_trip() {
        let s = lb(StickyKey::generate().unwrap());
        for backend in ["10.0.0.5:8080", "[fd00::5]:80"] {
            let token = issue(&s, backend, t0());
            assert_eq!(pinned_with(&s, &token, t0()).as_deref(), Some(backend));
            let later = t0() + Duration::from_secs(60);
            assert_eq!(pinned_with(&s, &token, later).as_deref(), Some(backend));
        }
    }

    #[test]
    fn lb_cookie_found_among_other_cookies_and_headers() {
        let s = lb(StickyKey::generate().unwrap());
        let token = issue(&s, "10.0.0.5:8080", t0());
        let h = cookies(&[
            "a=b; EDGELB_STICKY=junk",
            &format!("c=d;EDGELB_STICKY={token} ; e=f"),
        ]);
        assert_eq!(s.pinned(&h, t0()).as_deref(), Some("10.0.0.5:8080"));
        // Name matching is exact.
        let h = cookies(&[&format!("XEDGELB_STICKY={token}; edgelb_sticky={token}")]);
        assert_eq!(s.pinned(&h, t0()), None);
        assert_eq!(s.pinned(&HeaderMap::new(), t0()), None);
    }

    #[test]
    fn lb_cookie_first_valid_value_wins() {
        let s = lb(StickyKey::generate().unwrap());
        let a = issue(&s, "10.0.0.1:80", t0());
        let b = issue(&s, "10.0.0.2:80", t0());
        let h = cookies(&[&format!(
            "EDGELB_STICKY=x; EDGELB_STICKY={a}; EDGELB_STICKY={b}"
        )]);
        assert_eq!(s.pinned(&h, t0()).as_deref(), Some("10.0.0.1:80"));
    }

    #[test]
    fn lb_cookie_from_another_key_is_ignored() {
        let ours = lb(StickyKey::generate().unwrap());
        let theirs = lb(StickyKey::generate().unwrap());
        let token = issue(&theirs, "10.0.0.5:8080", t0());
        assert_eq!(pinned_with(&ours, &token, t0()), None);
    }

    #[test]
    fn lb_cookie_shared_key_file_works_across_nodes() {
        let path = temp_file(b"0123456789abcdef0123456789abcdef\n");
        let node_a = lb(StickyKey::from_file(&path).unwrap());
        let node_b = lb(StickyKey::from_file(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        let token = issue(&node_a, "[fd00::5]:80", t0());
        assert_eq!(
            pinned_with(&node_b, &token, t0()).as_deref(),
            Some("[fd00::5]:80")
        );
    }

    #[test]
    fn damaged_lb_cookies_are_ignored() {
        let s = lb(StickyKey::generate().unwrap());
        let token = issue(&s, "10.0.0.5:8080", t0());
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut flipped = raw.clone();
            flipped[i] ^= 0x01;
            let flipped = URL_SAFE_NO_PAD.encode(&flipped);
            assert_eq!(pinned_with(&s, &flipped, t0()), None, "byte {i} flipped");
        }
        for cut in [1, 10, token.len() / 2, token.len() - 1] {
            assert_eq!(pinned_with(&s, &token[..cut], t0()), None, "cut at {cut}");
        }
        let mut padded = token.clone();
        padded.push_str("AAAA");
        for bad in ["", "!!!!", "not base64 at all", "====", &padded] {
            assert_eq!(pinned_with(&s, bad, t0()), None, "{bad:?}");
        }
        let huge = "A".repeat(10_000);
        assert_eq!(pinned_with(&s, &huge, t0()), None);
        // A valid MAC under a different version byte is still refused.
        let key = s.lb_key.as_ref().expect("an lb-cookie key");
        let mut v2 = raw[..raw.len() - TAG_LEN].to_vec();
        v2[0] = 2;
        let tag = hmac::sign(key.hmac(), &v2);
        v2.extend_from_slice(tag.as_ref());
        assert_eq!(pinned_with(&s, &URL_SAFE_NO_PAD.encode(&v2), t0()), None);
    }

    #[test]
    fn lb_cookie_expires() {
        let s = lb(StickyKey::generate().unwrap());
        let token = issue(&s, "10.0.0.5:8080", t0());
        let almost = t0() + MINUTES_30 - Duration::from_secs(1);
        assert!(pinned_with(&s, &token, almost).is_some());
        assert_eq!(pinned_with(&s, &token, t0() + MINUTES_30), None);
        let later = t0() + MINUTES_30 + Duration::from_secs(1);
        assert_eq!(pinned_with(&s, &token, later), None);
    }

    #[test]
    fn pinned_request_gets_no_new_cookie() {
        let s = lb(StickyKey::generate().unwrap());
        let mut h = set_cookies(&["app=1"]);
        s.on_response(&mut h, "10.0.0.5:8080", true, true, t0());
        assert_eq!(set_cookie_strings(&h), vec!["app=1".to_string()]);
        // Moved (not pinned to this backend): the backend's own cookie stays, ours is added.
        s.on_response(&mut h, "10.0.0.5:8080", false, true, t0());
        let set = set_cookie_strings(&h);
        assert_eq!(set.len(), 2);
        assert_eq!(set[0], "app=1");
        assert!(set[1].starts_with("EDGELB_STICKY="));
    }

    #[test]
    fn set_cookie_attributes() {
        let s = lb(StickyKey::generate().unwrap());
        let mut h = HeaderMap::new();
        s.on_response(&mut h, "10.0.0.5:8080", false, true, t0());
        let https = set_cookie_strings(&h).remove(0);
        assert!(
            https.ends_with("; Path=/; Max-Age=1800; HttpOnly; Secure"),
            "{https}"
        );
        let mut h = HeaderMap::new();
        s.on_response(&mut h, "10.0.0.5:8080", false, false, t0());
        let http = set_cookie_strings(&h).remove(0);
        assert!(http.ends_with("; Path=/; Max-Age=1800; HttpOnly"), "{http}");
        assert!(!http.contains("Secure"));

        let day = lb_with_duration(Duration::from_secs(1440 * 60));
        let mut h = HeaderMap::new();
        day.on_response(&mut h, "10.0.0.5:8080", false, false, t0());
        assert!(set_cookie_strings(&h)[0].contains("; Max-Age=86400;"));
    }

    fn lb_with_duration(duration: Duration) -> Sticky {
        Sticky::new(
            Arc::new(Stickiness::LbCookie {
                key: Some(StickyKey::generate().unwrap()),
                duration,
            }),
            None,
        )
    }

    /// Sessions are runtime state: a reload keeps them only for the same cookie and duration.
    #[test]
    fn sessions_carry_over_a_reload_that_keeps_the_cookie() {
        let settings = |name: &str, minutes: u64| {
            Arc::new(Stickiness::AppCookie {
                name: name.to_string(),
                duration: Duration::from_secs(60 * minutes),
            })
        };
        let running = Sticky::new(settings("SESSIONID", 30), None);
        let mut h = set_cookies(&["SESSIONID=abc; Path=/"]);
        running.on_response(&mut h, "10.0.0.5:8080", false, true, t0());
        let request = cookies(&["SESSIONID=abc"]);
        let same = Sticky::new(settings("SESSIONID", 30), Some(&running));
        assert!(same.shares_sessions_with(&running));
        assert_eq!(
            same.pinned(&request, t0()).as_deref(),
            Some("10.0.0.5:8080")
        );
        for changed in [settings("OTHER", 30), settings("SESSIONID", 31)] {
            let fresh = Sticky::new(changed, Some(&running));
            assert!(!fresh.shares_sessions_with(&running));
        }
        let lb = lb(StickyKey::generate().unwrap());
        let after_lb = Sticky::new(settings("SESSIONID", 30), Some(&lb));
        assert_eq!(after_lb.pinned(&request, t0()), None);
    }

    #[test]
    fn app_cookie_pins_to_the_backend_that_set_it() {
        let s = app(100);
        let mut h = set_cookies(&["SESSIONID=abc; Path=/", "other=zzz"]);
        s.on_response(&mut h, "10.0.0.7:80", false, true, t0());
        // The backend's headers pass through untouched.
        assert_eq!(set_cookie_strings(&h).len(), 2);
        assert_eq!(table(&s).len(), 1);
        let req = cookies(&["other=1; SESSIONID=abc"]);
        assert_eq!(s.pinned(&req, t0()).as_deref(), Some("10.0.0.7:80"));
        assert_eq!(s.pinned(&cookies(&["SESSIONID=xyz"]), t0()), None);
        assert_eq!(s.pinned(&cookies(&["other=abc"]), t0()), None);
        assert_eq!(s.pinned(&cookies(&["sessionid=abc"]), t0()), None);
        // Another backend issuing the same value takes the session over.
        let mut h = set_cookies(&["SESSIONID=abc"]);
        s.on_response(&mut h, "10.0.0.8:80", false, true, t0());
        assert_eq!(s.pinned(&req, t0()).as_deref(), Some("10.0.0.8:80"));
        assert_eq!(table(&s).len(), 1);
    }

    #[test]
    fn app_cookie_expires_after_duration() {
        let s = app(100);
        let mut h = set_cookies(&["SESSIONID=abc; Path=/; HttpOnly"]);
        s.on_response(&mut h, "10.0.0.7:80", false, true, t0());
        let req = cookies(&["SESSIONID=abc"]);
        let almost = t0() + MINUTES_30 - Duration::from_secs(1);
        assert!(s.pinned(&req, almost).is_some());
        assert_eq!(s.pinned(&req, t0() + MINUTES_30), None);
        assert!(table(&s).is_empty());
    }

    #[test]
    fn app_cookie_deletion_forgets_the_pin() {
        let s = app(100);
        let req = cookies(&["SESSIONID=abc"]);
        for deletion in [
            "SESSIONID=abc; Max-Age=0",
            "SESSIONID=abc; max-age=-1; Path=/",
            "SESSIONID=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "SESSIONID=abc; Expires=Sun, 06-Nov-94 08:49:37 GMT",
        ] {
            let mut h = set_cookies(&["SESSIONID=abc; Path=/"]);
            s.on_response(&mut h, "10.0.0.7:80", false, true, t0());
            assert!(s.pinned(&req, t0()).is_some());
            let mut h = set_cookies(&[deletion]);
            s.on_response(&mut h, "10.0.0.7:80", false, true, t0());
            assert_eq!(s.pinned(&req, t0()), None, "{deletion}");
            assert!(table(&s).is_empty());
        }
        // Not deletions: a future Expires, a positive Max-Age overriding a past Expires, and
        // malformed attributes, which are ignored.
        for kept in [
            "SESSIONID=abc; Expires=Wed, 01 Jan 2070 00:00:00 GMT",
            "SESSIONID=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60",
            "SESSIONID=abc; Max-Age=soon; Expires=yesterday",
        ] {
            let mut h = set_cookies(&[kept]);
            s.on_response(&mut h, "10.0.0.7:80", false, true, t0());
            assert!(s.pinned(&req, t0()).is_some(), "{kept}");
        }
    }

    #[test]
    fn app_cookie_ignores_unusable_values() {
        let s = app(100);
        let long = format!("SESSIONID={}", "x".repeat(MAX_APP_VALUE_LEN + 1));
        let mut h = set_cookies(&["SESSIONID=", "SESSIONID", "=abc", &long]);
        s.on_response(&mut h, "10.0.0.7:80", false, true, t0());
        assert!(table(&s).is_empty());
    }

    #[test]
    fn stick_table_stays_bounded() {
        let capacity = 100;
        let s = app(capacity);
        for i in 0..2 * capacity {
            let mut h = set_cookies(&[&format!("SESSIONID=s{i}")]);
            s.on_response(&mut h, "10.0.0.7:80", false, true, t0());
            assert!(table(&s).len() <= capacity);
        }
        assert_eq!(table(&s).len(), capacity);
        // The oldest went first.
        assert_eq!(s.pinned(&cookies(&["SESSIONID=s0"]), t0()), None);
        let newest = cookies(&[&format!("SESSIONID=s{}", 2 * capacity - 1)]);
        assert!(s.pinned(&newest, t0()).is_some());
    }

    #[test]
    fn stick_table_drops_expired_entries_first() {
        let s = app(10);
        for i in 0..10 {
            let mut h = set_cookies(&[&format!("SESSIONID=old{i}")]);
            s.on_response(&mut h, "10.0.0.7:80", false, true, t0());
        }
        let later = t0() + MINUTES_30 + Duration::from_secs(1);
        let mut h = set_cookies(&["SESSIONID=new"]);
        s.on_response(&mut h, "10.0.0.7:80", false, true, later);
        assert_eq!(table(&s).len(), 1);
    }

    #[test]
    fn short_or_missing_key_file_is_refused() {
        let path = temp_file(&[7u8; 31]);
        let err = StickyKey::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("31 bytes") && err.contains("32"), "{err}");
        std::fs::remove_file(&path).unwrap();

        let path = temp_file(&[7u8; 32]);
        assert!(StickyKey::from_file(&path).is_ok());
        std::fs::remove_file(&path).unwrap();

        let path = temp_file(&[7u8; 5000]);
        assert!(StickyKey::from_file(&path).is_err());
        std::fs::remove_file(&path).unwrap();

        let missing = std::env::temp_dir().join("edgelb-sticky-test-no-such-file");
        let err = StickyKey::from_file(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn key_debug_hides_the_key() {
        let secret = b"my-very-secret-sticky-key-material-0123456789";
        let path = temp_file(secret);
        let key = StickyKey::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let shown = format!("{key:?} {:?}", lb(key.clone()));
        assert!(!shown.contains("secret"), "{shown}");
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex[..16]), "{shown}");
        assert!(!shown.contains("109, 121"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn cookie_names() {
        assert!(validate_cookie_name("JSESSIONID").is_ok());
        assert!(validate_cookie_name("__Host-sid.v2!").is_ok());
        for bad in ["a b", "a;b", "", "a=b", "a,b", "é", "a\tb", "(x)"] {
            let err = validate_cookie_name(bad).unwrap_err().to_string();
            assert!(!err.is_empty(), "{bad:?}");
        }
        assert!(
            validate_cookie_name("a b")
                .unwrap_err()
                .to_string()
                .contains("letters, digits")
        );
    }

    #[test]
    fn cookie_dates() {
        let d = |s: &str| parse_cookie_date(s.as_bytes());
        assert_eq!(d("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(d("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(d("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(d("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        assert_eq!(d("Tue, 29 Feb 2000 00:00:00 GMT"), Some(951_782_400));
        assert_eq!(d("Wed, 31 Dec 1969 23:59:59 GMT"), Some(-1));
        assert_eq!(d("Thu, 29 Feb 2001 00:00:00 GMT"), None);
        assert_eq!(d("Thu, 01 Jan 1970 24:00:00 GMT"), None);
        assert_eq!(d("01 Jan 1970"), None);
        assert_eq!(d("yesterday"), None);
        assert_eq!(d(""), None);
    }
}
