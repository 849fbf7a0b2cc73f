//! `edgelb status`: a running edgelb's `/status`, as a table.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

pub fn print(admin: &str) -> ExitCode {
    match fetch(admin) {
        Ok(status) => {
            let _ = std::io::stdout()
                .lock()
                .write_all(render(&status).as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            // `{:#}`: the context and its cause, `cannot connect: Connection refused (os error 111)`.
            eprintln!(
                "edgelb: error: --admin {admin:?}: {e:#}: the daemon serves its status only with \
                 --admin ADDR:PORT (file key `admin`); give that address here, or the daemon's \
                 file with --config"
            );
            ExitCode::FAILURE
        }
    }
}

/// How long `edgelb status` waits for the daemon: to connect, and for each read. An address
/// that drops packets would otherwise hold the command for the kernel's SYN retries (about
/// two minutes).
const WAIT: Duration = Duration::from_secs(5);

fn fetch(admin: &str) -> anyhow::Result<Value> {
    let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(admin)
        .context("not an address")?
        .collect();
    let mut last = None;
    let mut connected = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, WAIT) {
            Ok(s) => {
                connected = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = match (connected, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e).context("cannot connect"),
        (None, None) => anyhow::bail!("not an address"),
    };
    let _ = stream.set_read_timeout(Some(WAIT));
    write!(stream, "GET /status HTTP/1.0\r\nHost: {admin}\r\n\r\n")?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .context("reading the answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("not an HTTP answer")?;
    serde_json::from_str(body).context("not a status document")
}

/// Each backend's share of its group's new requests, 0-1: the daemon's `traffic_share`, or
/// (from a daemon that predates it) its weight in effect (`weight` x `weight_share`, which
/// is 0 when unhealthy and ramps during slow start) over the group's.
fn group_shares(backends: &[Value]) -> Vec<f64> {
    if backends.iter().all(|b| b["traffic_share"].is_number()) {
        return backends
            .iter()
            .map(|b| b["traffic_share"].as_f64().unwrap_or(0.0))
            .collect();
    }
    let in_effect: Vec<f64> = backends
        .iter()
        .map(|b| {
            if b["healthy"].as_bool().unwrap_or(false) {
                b["weight"].as_f64().unwrap_or(0.0) * b["weight_share"].as_f64().unwrap_or(0.0)
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = in_effect.iter().sum();
    in_effect
        .iter()
        .map(|w| if total > 0.0 { w / total } else { 0.0 })
        .collect()
}

fn render(status: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    for l in status["listeners"].as_array().unwrap_or(&empty) {
        out.push_str(&format!(
            "listener {}  {} {}  access-control {}  group {}\n",
            l["name"].as_str().unwrap_or("?"),
            l["protocol"].as_str().unwrap_or("?"),
            l["listen"].as_str().unwrap_or("?"),
            l["access_control"].as_str().unwrap_or("?"),
            l["group"].as_str().unwrap_or("?"),
        ));
        let counters: Vec<String> = l["xdp_counters"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|c| {
                format!(
                    "{}={}",
                    c[0].as_str().unwrap_or("?"),
                    c[1].as_u64().unwrap_or(0)
                )
            })
            .collect();
        if !counters.is_empty() {
            out.push_str(&format!("  xdp packets  {}\n", counters.join(" ")));
        }
    }
    for g in status["groups"].as_array().unwrap_or(&empty) {
        out.push_str(&format!(
            "group {} ({})\n",
            g["name"].as_str().unwrap_or("?"),
            g["algorithm"].as_str().unwrap_or("?")
        ));
        out.push_str(&format!(
            "  {:<40} {:<9} {:>6} {:>9} {:>7}\n",
            "backend", "health", "weight", "in effect", "active"
        ));
        let backends = g["backends"].as_array().unwrap_or(&empty);
        for (b, share) in backends.iter().zip(group_shares(backends)) {
            out.push_str(&format!(
                "  {:<40} {:<9} {:>6} {:>8.0}% {:>7}\n",
                b["address"].as_str().unwrap_or("?"),
                if b["healthy"].as_bool().unwrap_or(false) {
                    "healthy"
                } else {
                    "UNHEALTHY"
                },
                b["weight"].as_u64().unwrap_or(0),
                share * 100.0,
                b["active_requests"].as_u64().unwrap_or(0),
            ));
        }
    }
    let xdp = &status["xdp"];
    let attached: Vec<&str> = xdp["attached"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if attached.is_empty() {
        out.push_str("xdp off\n");
    } else {
        out.push_str(&format!("xdp {}\n", attached.join(", ")));
        for c in xdp["counters"].as_array().unwrap_or(&empty) {
            out.push_str(&format!(
                "  {:<12} {} (all listeners)\n",
                c[0].as_str().unwrap_or("?"),
                c[1].as_u64().unwrap_or(0)
            ));
        }
        for h in xdp["next_hops"].as_array().unwrap_or(&empty) {
            out.push_str(&next_hop_line(h));
        }
    }
    let etcd = &status["etcd"];
    if etcd.is_object() {
        out.push_str(&format!(
            "config etcd {} revision {} ({})\n",
            etcd["prefix"].as_str().unwrap_or("?"),
            etcd["revision"].as_i64().unwrap_or(0),
            match etcd["error"].as_str() {
                Some(e) => format!("unreachable, the configuration in use stays: {e}"),
                None => "connected".to_string(),
            }
        ));
        if let Some(r) = etcd["refused"].as_array() {
            out.push_str(&format!(
                "  revision {} refused: {}\n",
                r.first().and_then(Value::as_i64).unwrap_or(0),
                r.get(1).and_then(Value::as_str).unwrap_or("?")
            ));
        }
    }
    let bgp = &status["bgp"];
    if bgp.is_object() {
        out.push_str(&format!(
            "bgp as {} router-id {}\n",
            bgp["local_as"].as_u64().unwrap_or(0),
            bgp["router_id"].as_str().unwrap_or("?")
        ));
        for p in bgp["peers"].as_array().unwrap_or(&empty) {
            out.push_str(&format!(
                "  peer {:<40} as {:<10} {}\n",
                p["address"].as_str().unwrap_or("?"),
                p["asn"].as_u64().unwrap_or(0),
                p["state"].as_str().unwrap_or("?")
            ));
        }
        let announced: Vec<&str> = bgp["announced"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "  announced {}\n",
            if announced.is_empty() {
                "nothing".to_string()
            } else {
                announced.join(" ")
            }
        ));
    }
    out
}

/// The admin address to ask: `--admin`, else the `admin` key of the daemon's `--config`
/// file, else the address the README suggests. A file that cannot be read, is not TOML or
/// has no `admin` key is an error: its daemon serves no admin endpoint to find.
pub fn admin_address(
    admin: Option<String>,
    config: Option<&std::path::Path>,
) -> Result<String, String> {
    if let Some(admin) = admin {
        // Resolved here too (a name such as localhost:9900 is fine): a value that is no
        // address is a usage error, not a daemon that cannot be reached.
        if std::net::ToSocketAddrs::to_socket_addrs(&admin).is_err() {
            return Err(format!(
                "--admin {admin:?}: expected ADDR:PORT, the daemon's --admin (e.g. 127.0.0.1:9900)"
            ));
        }
        return Ok(admin);
    }
    let Some(path) = config else {
        return Ok("127.0.0.1:9900".to_string());
    };
    let at = path.display();
    // As every file edgelb reads whole: `-c /dev/zero` is an error, not a hang.
    crate::tls::certs::check_regular(path).map_err(|e| format!("--config {at}: {e}"))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {at}: {e}"))?;
    let file: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("--config {at}: not TOML: {}", e.message()))?;
    match file.get("admin") {
        Some(toml::Value::String(admin)) => Ok(admin.clone()),
        Some(other) => Err(format!(
            "--config {at}: `admin` is {other}, expected an address as a string (\"127.0.0.1:9900\")"
        )),
        None => Err(format!(
            "--config {at}: no `admin` key, so the daemon it configures serves no status; add \
             `admin = \"127.0.0.1:9900\"` (and reload), or give the address with --admin"
        )),
    }
}

/// `  next hop BACKEND via ADDR dev IFACE MAC`, or `unresolved`, and the problem if any.
fn next_hop_line(h: &Value) -> String {
    let mut line = format!("  next hop {}", h["backend"].as_str().unwrap_or("?"));
    if let (Some(via), Some(dev)) = (h["via"].as_str(), h["interface"].as_str()) {
        line += &format!(
            " via {via} dev {dev} {}",
            h["mac"].as_str().unwrap_or("unresolved")
        );
    }
    if let Some(problem) = h["problem"].as_str() {
        line += &format!(" (PROBLEM: {problem})");
    }
    line + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn next_hops_show_where_frames_go_or_why_they_cannot() {
        let status = json!({"xdp": {"attached": ["eth0:native"], "counters": [], "next_hops": [
            {"backend": "10.3.1.2", "via": "10.4.1.1", "interface": "eth1",
             "mac": "02:00:00:00:00:01", "problem": null},
            {"backend": "10.3.2.2", "via": "10.4.1.1", "interface": "eth1", "mac": null,
             "problem": null},
            {"backend": "10.99.0.1", "via": null, "interface": null, "mac": null,
             "problem": "the route to 10.99.0.1 is of type Unreachable"}]}});
        let text = render(&status);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("next hop")).collect();
        assert_eq!(
            lines,
            [
                "  next hop 10.3.1.2 via 10.4.1.1 dev eth1 02:00:00:00:00:01",
                "  next hop 10.3.2.2 via 10.4.1.1 dev eth1 unresolved",
                "  next hop 10.99.0.1 (PROBLEM: the route to 10.99.0.1 is of type Unreachable)",
            ]
        );
    }

    fn backend(address: &str, weight: u8, healthy: bool, weight_share: f64) -> Value {
        json!({"address": address, "healthy": healthy, "weight": weight,
               "weight_share": weight_share, "active_requests": 0})
    }

    /// The `in effect` column of each backend line, in order.
    fn in_effect(backends: Vec<Value>) -> Vec<String> {
        let status = json!({"groups": [{"name": "pool", "algorithm": "weighted-round-robin",
                                        "backends": backends}]});
        render(&status)
            .lines()
            .filter(|l| l.trim_start().starts_with("10."))
            .map(|l| {
                l.split_whitespace()
                    .nth(3)
                    .unwrap_or_else(|| panic!("no in-effect column in {l:?}"))
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn in_effect_is_each_backends_share_of_its_group() {
        let weights_3_1 = || {
            vec![
                backend("10.0.0.1:80", 3, true, 1.0),
                backend("10.0.0.2:80", 1, true, 1.0),
            ]
        };
        assert_eq!(in_effect(weights_3_1()), ["75%", "25%"]);
        // Only healthy backends count.
        let mut down = weights_3_1();
        down[0] = backend("10.0.0.1:80", 3, false, 0.0);
        assert_eq!(in_effect(down), ["0%", "100%"]);
        // Slow start: the second at a third of its weight takes 1 of 3 + 1.
        let mut ramping = weights_3_1();
        ramping[1] = backend("10.0.0.2:80", 3, true, 1.0 / 3.0);
        assert_eq!(in_effect(ramping), ["75%", "25%"]);
        // Nothing healthy: nothing served, no division by zero.
        let none = vec![backend("10.0.0.1:80", 3, false, 0.0)];
        assert_eq!(in_effect(none), ["0%"]);
        // The daemon's own figure wins when it sends one (source-ip-hash ignores slow start).
        let mut told = weights_3_1();
        told[0]["traffic_share"] = json!(0.5);
        told[1]["traffic_share"] = json!(0.5);
        assert_eq!(in_effect(told), ["50%", "50%"]);
    }
}
