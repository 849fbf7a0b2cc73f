//! Sticky-session cookies from clients are untrusted: any Cookie header is read without a
//! panic, and only a cookie this node sealed pins a client (to exactly the backend sealed in).
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use edgelb::proxy::sticky::{Stickiness, Sticky, StickyKey};
use hyper::HeaderMap;
use hyper::header::{COOKIE, HeaderValue, SET_COOKIE};
use libfuzzer_sys::fuzz_target;

fn sticky() -> &'static (Sticky, Sticky) {
    static S: OnceLock<(Sticky, Sticky)> = OnceLock::new();
    S.get_or_init(|| {
        let key = StickyKey::generate().expect("a random key");
        let duration = Duration::from_secs(1200);
        (
            Sticky::new(
                Arc::new(Stickiness::LbCookie {
                    key: Some(key),
                    duration,
                }),
                None,
            ),
            Sticky::new(
                Arc::new(Stickiness::AppCookie {
                    name: "SID".into(),
                    duration,
                }),
                None,
            ),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (lb, app) = sticky();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut request = HeaderMap::new();
        request.insert(COOKIE, value);
        let _ = lb.pinned(&request, now);
        let _ = app.pinned(&request, now);
    }
    // A cookie sealed for a backend pins to that backend and nothing else.
    let Ok(backend) = std::str::from_utf8(data) else {
        return;
    };
    let mut response = HeaderMap::new();
    lb.on_response(&mut response, backend, false, true, now);
    let Some(set) = response.get(SET_COOKIE).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let pair = set.split(';').next().unwrap_or_default();
    let mut request = HeaderMap::new();
    request.insert(COOKIE, HeaderValue::from_str(pair).expect("we made it"));
    assert_eq!(lb.pinned(&request, now).as_deref(), Some(backend));
});
