//! Reading h2load's output: its summary on stdout and its per-request `--log-file`.
use anyhow::{Context as _, Result, bail};

pub struct H2loadReport {
    /// Seconds of the measured phase. Not the "finished in" figure: with --warm-up-time that
    /// one includes the warm-up, while the req/s beside it covers the measured phase only
    /// (h2load 1.52: `-D 2 --warm-up-time 1` prints "finished in 3.00s" and total/2 req/s).
    pub secs: f64,
    /// Requests completed in the measured phase.
    pub total: u64,
    /// Of those, the ones that did not end in 2xx (failed, errored, timed out, 3xx-5xx).
    pub bad: u64,
    /// 2xx responses completed in the measured phase.
    pub ok: u64,
    pub alpn: String,
    pub tls: String,
    pub cipher: String,
}

/// Reads the lines of h2load's summary that matter. The completed requests come from the
/// `requests:` line: `succeeded` (2xx or 3xx) and `failed` (errors, timeouts and 4xx/5xx
/// included) are counted when a request ends in the measured phase. Not from `status codes:`,
/// which counts when the headers arrive: a response whose headers came in the warm-up and whose
/// body ended after it is in `total` but not in `2xx`, and one still arriving at the end is in
/// `2xx` but not in `total` (seen with 64 KiB bodies), so `total - 2xx` is no failure count.
///   finished in 10.00s, 41234.50 req/s, 4.56MB/s
///   requests: 412345 total, 412409 started, 412345 done, 412345 succeeded, 0 failed, 0 errored, 0 timeout
///   status codes: 412345 2xx, 0 3xx, 0 4xx, 0 5xx
///   Application protocol: h2
pub fn parse_h2load(out: &str) -> Result<H2loadReport> {
    let mut secs = None;
    let mut req_per_sec = None;
    let mut total = None;
    let mut failed = 0;
    let mut succeeded = None;
    let mut redirects = 0;
    let mut alpn = String::from("(none)");
    let mut tls = String::from("(none)");
    let mut cipher = String::from("(none)");
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let mut parts = rest.split(',').map(str::trim);
            let d = parts.next().unwrap_or_default();
            secs = Some(parse_duration(d).with_context(|| format!("duration {d:?}"))?);
            req_per_sec = parts
                .next()
                .and_then(|r| r.strip_suffix(" req/s"))
                .and_then(|r| r.parse::<f64>().ok());
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            total = Some(count_before(rest, "total")?);
            succeeded = Some(count_before(rest, "succeeded")?);
            failed = count_before(rest, "failed")?;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            redirects = count_before(rest, "3xx")?;
        } else if let Some(rest) = line.strip_prefix("Application protocol:") {
            alpn = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("TLS Protocol:") {
            tls = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("Cipher:") {
            cipher = rest.trim().to_string();
        }
    }
    let (Some(finished), Some(total), Some(succeeded)) = (secs, total, succeeded) else {
        bail!("missing `finished in` or `requests:` line");
    };
    let secs = match req_per_sec {
        Some(r) if r > 0.0 && total > 0 => total as f64 / r,
        _ => finished,
    };
    if secs <= 0.0 {
        bail!("measured duration is {secs}s");
    }
    Ok(H2loadReport {
        secs,
        total,
        bad: failed + redirects,
        ok: succeeded.saturating_sub(redirects),
        alpn,
        tls,
        cipher,
    })
}

/// In "412345 total, 0 failed", the number before `label`.
fn count_before(list: &str, label: &str) -> Result<u64> {
    list.split(',')
        .map(str::trim)
        .find_map(|item| item.strip_suffix(label).map(str::trim))
        .with_context(|| format!("no `{label}` in {list:?}"))?
        .parse()
        .with_context(|| format!("`{label}` count in {list:?}"))
}

/// h2load's durations: "10.00s", "523.12ms", "812us", "1.50m".
pub fn parse_duration(d: &str) -> Result<f64> {
    let split = d
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(d.len());
    let (num, unit) = d.split_at(split);
    let num: f64 = num.parse()?;
    Ok(match unit {
        "s" => num,
        "ms" => num / 1e3,
        "us" => num / 1e6,
        "m" => num * 60.0,
        "h" => num * 3600.0,
        _ => bail!("unknown unit {unit:?}"),
    })
}

/// Response times of the 2xx requests in an h2load `--log-file`, in microseconds, sorted.
///
/// Each line is `start-µs-since-epoch <TAB> status <TAB> µs-until-end-of-response`, status -1
/// for a failed stream. h2load writes only measured-phase requests there (a `-D 2
/// --warm-up-time 1` run logs exactly its `requests: N total`), so no warm-up needs cutting.
/// The time runs from when the request is sent, which for a new connection is after the TLS
/// handshake: the handshake is not in it.
pub fn ok_latencies(log: &str) -> Vec<u32> {
    let mut us: Vec<u32> = log
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let _start = f.next()?;
            let status: i32 = f.next()?.trim().parse().ok()?;
            let micros: u32 = f.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(micros)
        })
        .collect();
    us.sort_unstable();
    us
}

/// The `p`th percentile (0-100) of sorted values, nearest-rank; None if there are none.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_report() {
        let out = "finished in 10.00s, 41234.50 req/s, 4.56MB/s\n\
                   requests: 412345 total, 412409 started, 412345 done, 412300 succeeded, 45 failed, 45 errored, 0 timeout\n\
                   status codes: 412300 2xx, 0 3xx, 0 4xx, 0 5xx\n\
                   Application protocol: h2\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!(r.secs, 10.0);
        assert_eq!((r.total, r.bad, r.ok), (412345, 45, 412300));
        assert_eq!(r.alpn, "h2");
        assert_eq!(parse_duration("250ms").unwrap(), 0.25);
    }

    #[test]
    fn measured_seconds_exclude_warm_up() {
        // h2load 1.52, `-D 2 --warm-up-time 1s`: "finished in" counts the warm-up too.
        let out = "finished in 3.00s, 14895.00 req/s, 2.13MB/s\n\
                   requests: 29790 total, 29790 started, 29790 done, 29790 succeeded, 0 failed, 0 errored, 0 timeout\n\
                   status codes: 29790 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let r = parse_h2load(out).unwrap();
        assert!((r.secs - 2.0).abs() < 1e-9, "{}", r.secs);
    }

    #[test]
    fn counts_requests_by_their_end_not_their_headers() {
        // h2load 1.52, 64 KiB bodies: status codes counted at the headers straddle the phases.
        let out = "finished in 6.01s, 7037.20 req/s, 441.49MB/s\n\
                   requests: 35186 total, 35186 started, 35186 done, 35186 succeeded, 0 failed, 0 errored, 0 timeout\n\
                   status codes: 35202 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!((r.total, r.bad, r.ok), (35186, 0, 35186));
        let out = "finished in 1.00s, 100.00 req/s, 1MB/s\n\
                   requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, 1 errored, 0 timeout\n\
                   status codes: 96 2xx, 1 3xx, 1 4xx, 0 5xx\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!((r.total, r.bad, r.ok), (100, 3, 97));
    }

    #[test]
    fn reads_log_and_percentiles() {
        let log = "1796180452302626\t200\t307\n\
                   1796180452303059\t200\t182\n\
                   1796180452303100\t-1\t5\n\
                   1796180452303200\t503\t9\n\
                   garbage\n\
                   1796180452302845\t200\t405\n";
        let us = ok_latencies(log);
        assert_eq!(us, vec![182, 307, 405]);
        assert_eq!(percentile(&us, 50.0), Some(307));
        assert_eq!(percentile(&us, 99.0), Some(405));
        assert_eq!(percentile(&us, 0.0), Some(182));
        assert_eq!(percentile(&[], 50.0), None);
        let hundred: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50));
        assert_eq!(percentile(&hundred, 99.0), Some(99));
    }
}
