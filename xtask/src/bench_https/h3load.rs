//! Reading h3-load's output (`tests/src/bin/h3-load.rs`, the HTTP/3 client of the HTTP/3 row:
//! Debian's h2load has no HTTP/3): one JSON line on stdout.
use anyhow::{Context as _, Result, bail};
use serde_json::Value;

pub struct H3loadReport {
    /// Seconds of the measured window.
    pub secs: f64,
    /// 2xx responses whose body ended in the measured window.
    pub ok: u64,
    /// Requests in the window that ended in another status, failed or timed out, and
    /// connection attempts that failed.
    pub bad: u64,
    pub p50_us: Option<u32>,
    pub p99_us: Option<u32>,
    /// ALPN protocol of the connections ("(none)" if none was established).
    pub alpn: String,
}

/// `{"ok":N,"non_2xx":N,"errors":N,"p50_us":N|null,"p99_us":N|null,"secs":S,"alpn":"h3",...}`,
/// the last line of stdout that parses as JSON.
pub fn parse_h3load(out: &str) -> Result<H3loadReport> {
    let v: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .context("no JSON line")?;
    let count = |k: &str| v[k].as_u64().with_context(|| format!("no count {k:?}"));
    let micros = |k: &str| v[k].as_u64().and_then(|us| u32::try_from(us).ok());
    let secs = v["secs"].as_f64().context("no \"secs\"")?;
    if secs <= 0.0 {
        bail!("measured duration is {secs}s");
    }
    Ok(H3loadReport {
        secs,
        ok: count("ok")?,
        bad: count("non_2xx")? + count("errors")?,
        p50_us: micros("p50_us"),
        p99_us: micros("p99_us"),
        alpn: v["alpn"].as_str().unwrap_or("(none)").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h3load_line() {
        let out = "{\"alpn\":\"h3\",\"errors\":1,\"handshakes\":4,\"non_2xx\":2,\"ok\":60000,\
                   \"p50_us\":1012,\"p99_us\":2480,\"secs\":2.0}\n";
        let r = parse_h3load(out).unwrap();
        assert_eq!((r.ok, r.bad, r.secs), (60000, 3, 2.0));
        assert_eq!((r.p50_us, r.p99_us), (Some(1012), Some(2480)));
        assert_eq!(r.alpn, "h3");
        let none = "{\"alpn\":null,\"errors\":40,\"handshakes\":0,\"non_2xx\":0,\"ok\":0,\
                    \"p50_us\":null,\"p99_us\":null,\"secs\":2.0}";
        let r = parse_h3load(none).unwrap();
        assert_eq!(
            (r.ok, r.bad, r.p50_us, r.alpn.as_str()),
            (0, 40, None, "(none)")
        );
        assert!(parse_h3load("h3-load: oops\n").is_err());
    }
}
