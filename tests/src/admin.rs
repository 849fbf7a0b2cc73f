//! The daemon's admin endpoint as the tests read it: plain HTTP/1.0 on loopback.
use std::io::{Read, Write};
use std::net::TcpStream;

/// The whole answer (head and body) to `method path` on the admin endpoint at `addr`.
pub fn request(addr: &str, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("admin endpoint");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("answer");
    text
}

pub fn get(addr: &str, path: &str) -> String {
    request(addr, "GET", path)
}

/// The value of the metric sample `series` (name and labels exactly as exposed) on /metrics.
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    get(addr, "/metrics").lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
