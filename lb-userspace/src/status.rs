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
            eprintln!("edgelb: error: --admin {admin:?}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(admin: &str) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect(admin).context("cannot connect")?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
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
        for b in g["backends"].as_array().unwrap_or(&empty) {
            out.push_str(&format!(
                "  {:<40} {:<9} {:>6} {:>8.0}% {:>7}\n",
                b["address"].as_str().unwrap_or("?"),
                if b["healthy"].as_bool().unwrap_or(false) {
                    "healthy"
                } else {
                    "UNHEALTHY"
                },
                b["weight"].as_u64().unwrap_or(0),
                b["weight_share"].as_f64().unwrap_or(0.0) * 100.0,
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
