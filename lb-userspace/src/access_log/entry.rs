//! One request's access log line: what the request said, filled in with what answered it,
//! written when the response has been sent (or abandoned).
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::header::{HOST, USER_AGENT};
use hyper::{Method, Request, Version};

use super::{AccessLog, Counters, Format};

/// nginx's status for a request whose client went away before the answer.
const CLIENT_CLOSED: u16 = 499;

/// Written to the log when dropped: the response body has been sent, or the request or its
/// response was abandoned (then with what was sent so far).
pub struct Entry {
    log: Arc<AccessLog>,
    listener: Arc<str>,
    at: SystemTime,
    started: Instant,
    client: SocketAddr,
    sni: Option<Box<str>>,
    host: Option<Box<str>>,
    /// None for a request whose head could not be parsed.
    method: Option<Method>,
    target: Option<Box<str>>,
    version: Option<Version>,
    user_agent: Option<Box<str>>,
    counters: Arc<Counters>,
    answer: Option<Answer>,
}

/// What answered, known once the response head is ready.
pub struct Answer {
    pub status: u16,
    pub rule: Option<String>,
    pub backend: Option<String>,
    /// From the request's arrival to the backend's response head, when a backend answered.
    pub upstream: Option<Duration>,
}

impl Entry {
    /// At the request's arrival; its body's bytes are to be counted into the counters.
    pub fn start<B>(
        log: Arc<AccessLog>,
        listener: Arc<str>,
        started: Instant,
        client: SocketAddr,
        sni: Option<&str>,
        req: &Request<B>,
    ) -> (Entry, Arc<Counters>) {
        let header = |name| {
            req.headers()
                .get(name)
                .map(|v: &hyper::header::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into())
        };
        // HTTP/2 and HTTP/3 carry the host as :authority, which hyper puts in the URI.
        let host = header(HOST).or_else(|| req.uri().authority().map(|a| a.as_str().into()));
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), |pq| pq.as_str());
        let mut entry = Entry::of_connection(log, listener, started, client, sni);
        entry.host = host;
        entry.method = Some(req.method().clone());
        entry.target = Some(target.into());
        entry.version = Some(req.version());
        entry.user_agent = header(USER_AGENT);
        let counters = entry.counters.clone();
        (entry, counters)
    }

    /// A request refused before its head could be parsed, answered `status` by the HTTP
    /// layer itself: nothing of it is known but the connection's.
    pub fn unparsed(
        log: Arc<AccessLog>,
        listener: Arc<str>,
        client: SocketAddr,
        sni: Option<&str>,
        status: u16,
    ) -> Entry {
        let mut entry = Entry::of_connection(log, listener, Instant::now(), client, sni);
        entry.answer = Some(Answer {
            status,
            rule: None,
            backend: None,
            upstream: None,
        });
        entry
    }

    /// What the connection tells, now; the request's own fields unknown.
    fn of_connection(
        log: Arc<AccessLog>,
        listener: Arc<str>,
        started: Instant,
        client: SocketAddr,
        sni: Option<&str>,
    ) -> Entry {
        Entry {
            log,
            listener,
            at: SystemTime::now(),
            started,
            client,
            sni: sni.map(Into::into),
            host: None,
            method: None,
            target: None,
            version: None,
            user_agent: None,
            counters: Arc::default(),
            answer: None,
        }
    }

    pub fn answered(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }

    fn line(&self) -> String {
        let total = self.started.elapsed();
        let (status, rule, backend, upstream) = match &self.answer {
            Some(a) => (
                a.status,
                a.rule.as_deref(),
                a.backend.as_deref(),
                a.upstream,
            ),
            None => (CLIENT_CLOSED, None, None, None),
        };
        let fields = Fields {
            time: super::time::rfc3339_millis(self.at),
            listener: &self.listener,
            client: self.client,
            sni: self.sni.as_deref(),
            host: self.host.as_deref(),
            method: self.method.as_ref().map(Method::as_str),
            target: self.target.as_deref(),
            version: self.version.map(version_name),
            status,
            bytes_in: self.counters.received(),
            bytes_out: self.counters.sent(),
            rule,
            backend,
            upstream_ms: upstream.map(millis),
            total_ms: millis(total),
            user_agent: self.user_agent.as_deref(),
        };
        match self.log.settings.format {
            Format::Plain => fields.plain(),
            Format::Json => fields.json(),
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let line = self.line();
        self.log.write_line(&line);
    }
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// Milliseconds, rounded to the microsecond: `1.574`, never `1.5743420000000001`.
fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// One line's values, in the order they are written.
struct Fields<'a> {
    time: String,
    listener: &'a str,
    client: SocketAddr,
    sni: Option<&'a str>,
    host: Option<&'a str>,
    method: Option<&'a str>,
    target: Option<&'a str>,
    version: Option<&'static str>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    rule: Option<&'a str>,
    backend: Option<&'a str>,
    upstream_ms: Option<f64>,
    total_ms: f64,
    user_agent: Option<&'a str>,
}

impl Fields<'_> {
    /// `TIME edgelb::access key=value ...`: strings quoted with `"` and `\` escaped and control
    /// characters as `\xNN` (a client cannot forge a line), `-` for what is missing.
    fn plain(&self) -> String {
        let mut s = String::with_capacity(256);
        let q = |s: &mut String, key: &str, v: Option<&str>| {
            let _ = write!(s, " {key}=");
            quote(s, v.unwrap_or("-"));
        };
        let _ = write!(s, "{} edgelb::access", self.time);
        q(&mut s, "listener", Some(self.listener));
        let _ = write!(s, " client={}", self.client);
        q(&mut s, "sni", self.sni);
        q(&mut s, "host", self.host);
        // hyper accepts only token characters in a method.
        let _ = write!(s, " method={}", self.method.unwrap_or("-"));
        q(&mut s, "target", self.target);
        let _ = write!(
            s,
            " version={} status={} bytes_in={} bytes_out={}",
            self.version.unwrap_or("-"),
            self.status,
            self.bytes_in,
            self.bytes_out
        );
        q(&mut s, "rule", self.rule);
        q(&mut s, "backend", self.backend);
        match self.upstream_ms {
            Some(ms) => {
                let _ = write!(s, " upstream_ms={ms:.3}");
            }
            None => s.push_str(" upstream_ms=-"),
        }
        let _ = write!(s, " total_ms={:.3}", self.total_ms);
        q(&mut s, "user_agent", self.user_agent);
        s.push('\n');
        s
    }

    /// One JSON object; missing values are null, times in milliseconds with three decimals.
    fn json(&self) -> String {
        let text = |v: Option<&str>| match v {
            Some(v) => serde_json::Value::from(v).to_string(),
            None => "null".to_string(),
        };
        let upstream = self
            .upstream_ms
            .map_or_else(|| "null".to_string(), |ms| format!("{ms:.3}"));
        format!(
            "{{\"time\":\"{}\",\"listener\":{},\"client\":\"{}\",\"sni\":{},\"host\":{},\"method\":{},\"target\":{},\"version\":{},\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"rule\":{},\"backend\":{},\"upstream_ms\":{},\"total_ms\":{:.3},\"user_agent\":{}}}\n",
            self.time,
            text(Some(self.listener)),
            self.client,
            text(self.sni),
            text(self.host),
            text(self.method),
            text(self.target),
            text(self.version),
            self.status,
            self.bytes_in,
            self.bytes_out,
            text(self.rule),
            text(self.backend),
            upstream,
            self.total_ms,
            text(self.user_agent),
        )
    }
}

fn quote(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>() -> Fields<'a> {
        Fields {
            time: "2026-12-03T12:00:00.000Z".into(),
            listener: "web",
            client: "10.0.0.7:40000".parse().expect("addr"),
            sni: Some("shop.test"),
            host: Some("shop.test"),
            method: Some("GET"),
            target: Some("/a?b=c"),
            version: Some("HTTP/2"),
            status: 200,
            bytes_in: 0,
            bytes_out: 1234,
            rule: None,
            backend: Some("10.0.1.1:80"),
            upstream_ms: Some(millis(Duration::from_nanos(1_574_342))),
            total_ms: millis(Duration::from_nanos(2_000_999)),
            user_agent: Some("curl/8.5 \"x\"\n2026 forged line"),
        }
    }

    #[test]
    fn plain_lines_quote_and_escape_what_the_client_sent() {
        assert_eq!(
            fields().plain(),
            "2026-12-03T12:00:00.000Z edgelb::access listener=\"web\" client=10.0.0.7:40000 sni=\"shop.test\" host=\"shop.test\" method=GET target=\"/a?b=c\" version=HTTP/2 status=200 bytes_in=0 bytes_out=1234 rule=\"-\" backend=\"10.0.1.1:80\" upstream_ms=1.574 total_ms=2.000 user_agent=\"curl/8.5 \\\"x\\\"\\x0a2026 forged line\"\n"
        );
    }

    #[test]
    fn json_lines_parse_with_rounded_times_and_nulls() {
        let line = fields().json();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["target"], "/a?b=c");
        assert_eq!(v["rule"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], 1234);
        assert_eq!(v["upstream_ms"].to_string(), "1.574");
        assert_eq!(v["total_ms"].to_string(), "2.0");
        assert_eq!(v["user_agent"], "curl/8.5 \"x\"\n2026 forged line");
    }

    #[test]
    fn an_unparsed_request_has_dashes_and_nulls_for_what_is_unknown() {
        let f = Fields {
            method: None,
            target: None,
            version: None,
            status: 400,
            ..fields()
        };
        let plain = f.plain();
        assert!(
            plain.contains(" method=- target=\"-\" version=- status=400 "),
            "{plain}"
        );
        let v: serde_json::Value = serde_json::from_str(&f.json()).expect("valid JSON");
        for key in ["method", "target", "version"] {
            assert_eq!(v[key], serde_json::Value::Null, "{key}");
        }
        assert_eq!(v["status"], 400);
    }
}
