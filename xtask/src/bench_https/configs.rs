//! The certificate, the configs of the backend and of the three proxies, and the command
//! lines that start them; the deny list of the access-control row.
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use super::procs::pinned;
use super::{Proxy, Start};
use crate::cmd::Cmd;

pub struct Certs {
    /// Self-signed, so also the CA file h3-load trusts.
    pub cert: PathBuf,
    key: PathBuf,
    /// Certificate then key in one file, as haproxy's `crt` wants.
    combined: PathBuf,
}

pub fn make_cert(dir: &Path) -> Result<Certs> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let combined = dir.join("combined.pem");
    Cmd::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // Not a CA (openssl's `-x509` default): h3-load checks the certificate with rustls,
        // which refuses a CA certificate as a server's (h2load does not check it).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-keyout".as_ref(), key.as_os_str()])
        .args(["-out".as_ref(), cert.as_os_str()])
        .output()
        .context("openssl could not make the ECDSA P-256 certificate")?;
    // edgelb refuses keys that others may read.
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mut both = fs::read_to_string(&cert)?;
    both.push_str(&fs::read_to_string(&key)?);
    fs::write(&combined, both)?;
    Ok(Certs {
        cert,
        key,
        combined,
    })
}

/// Replaces each `@NAME@` in `template`.
pub fn fill(template: &str, values: &[(&str, &dyn std::fmt::Display)]) -> String {
    let mut s = template.to_string();
    for (name, value) in values {
        s = s.replace(&format!("@{name}@"), &value.to_string());
    }
    assert!(!s.contains("@"), "unfilled placeholder in:\n{s}");
    s
}

/// What both nginx instances share: one worker, in the foreground, and every path nginx would
/// otherwise write under /var/lib/nginx, /var/log/nginx or /run in the temp dir. Room for the
/// memory test's 10,000 idle client connections plus upstream ones (`worker_connections`
/// counts both; each is a descriptor): as many as the descriptor limit allows.
const NGINX_COMMON: &str = r#"
worker_processes 1;
worker_rlimit_nofile @NOFILE@;
daemon off;
pid @DIR@/@NAME@.pid;
error_log stderr warn;
events { worker_connections @WORKER_CONNECTIONS@; }
http {
    access_log off;
    client_body_temp_path @DIR@/@NAME@-body;
    proxy_temp_path @DIR@/@NAME@-proxy;
    fastcgi_temp_path @DIR@/@NAME@-fastcgi;
    uwsgi_temp_path @DIR@/@NAME@-uwsgi;
    scgi_temp_path @DIR@/@NAME@-scgi;
"#;

/// The backend: `return 200 "ok\n"`, a 64 KiB file at /64k (sendfile, so the backend's share
/// of core 1 stays small), the client-IP headers it was sent at [`CLIENT_HEADERS_PATH`], and a
/// status page on its own port to count connections.
/// `keepalive_requests` is raised from 1000 so the proxies' upstream connections are not
/// recycled every 1000 requests (the same for all three proxies).
const BACKEND_NGINX: &str = r#"
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
        location = @CLIENT_HEADERS_PATH@ {
            default_type text/plain;
            return 200 "$http_x_forwarded_for|$http_x_forwarded_proto|$http_x_forwarded_port|$http_x_real_ip|$http_host";
        }
        location = /64k { root @DIR@/www; default_type application/octet-stream; }
    }
    server {
        listen 127.0.0.1:@STATUS_PORT@;
        location / { stub_status; }
    }
}
"#;

/// nginx as the TLS proxy. nginx 1.22 (Debian 12) enables HTTP/2 with `listen ... http2` (the
/// `http2 on` directive is 1.25.1+) and offers only TLS 1.2 unless told: `ssl_protocols
/// TLSv1.3` pins 1.3 like the other two. Session cache and tickets stay at their defaults
/// (tickets on), as for haproxy and edgelb. `keepalive_requests` is raised from its default
/// 1000 so the keep-alive workloads are not interrupted by a handshake every 1000 requests
/// (haproxy and edgelb have no such limit), and `keepalive_timeout` from 75 s so the memory
/// test's idle connections stay. The upstream pool keeps up to 512 idle connections: the
/// 100-stream workload has 400 requests in flight, and a smaller pool would make nginx close
/// and reopen backend connections where the others reuse theirs. 16 x 8k proxy buffers hold the
/// 64 KiB response in memory (the default 8 x 4k would spill it to a temp file).
/// The client-IP headers and `Host` are set as edgelb always sets them (see
/// [`CLIENT_HEADERS_PATH`]). `@ACL_HTTP@`/`@ACL_SERVER@`: the deny list (a `geo` radix tree)
/// for the access-control row.
const PROXY_NGINX: &str = r#"
    upstream backend {
        server 127.0.0.1:@BACKEND_PORT@;
        keepalive 512;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    keepalive_requests 10000000;
    keepalive_timeout 900s;
@ACL_HTTP@
    server {
        listen 127.0.0.1:@PORT@ ssl http2 backlog=4096;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        ssl_protocols TLSv1.3;
@ACL_SERVER@
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_buffers 16 8k;
        }
    }
}
"#;

/// haproxy as the TLS proxy: one thread, ALPN h2 and http/1.1, TLS 1.3 only, backend
/// connections shared between client connections (`http-reuse always`). Run with -db:
/// foreground, no daemon. maxconn (global and per frontend) leaves room for the memory test's
/// 10,000 connections if the descriptor limit allows (see `haproxy_maxconn`); the client-side
/// timeouts are long so they stay open. Its TLS 1.3 suites are put in rustls's order (AES-128
/// first): with OpenSSL's (AES-256 first) it alone would pay for the longer key schedule and
/// 14 rounds a block. The client-IP headers are set as edgelb always sets
/// them (see [`CLIENT_HEADERS_PATH`]; `option forwardfor` adds an `X-Forwarded-For` line, which
/// is the same list as appending to the value). `@ACL@`: the deny list for the access-control
/// row, an ACL on the source address checked when the connection is accepted.
const PROXY_HAPROXY: &str = r#"
global
    nbthread 1
    maxconn @MAXCONN@
    pidfile @DIR@/@NAME@.pid
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
defaults
    mode http
    maxconn @MAXCONN@
    timeout connect 5s
    timeout client 900s
    timeout http-keep-alive 900s
    timeout server 60s
    http-reuse always
frontend tls
    bind 127.0.0.1:@PORT@ ssl crt @COMBINED@ alpn h2,http/1.1 ssl-min-ver TLSv1.3 backlog 4096
@ACL@
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Real-IP %[src]
    default_backend plain
backend plain
    server b1 127.0.0.1:@BACKEND_PORT@
"#;

/// Where the backend answers with the client-IP headers and `Host` it was sent, `|`-separated.
/// edgelb always sends `X-Forwarded-For` (appended), `-Proto`, `-Port` and `X-Real-IP` (the
/// manual's "transfer client IP", not switchable), so nginx and haproxy are configured to send
/// the same, and the bench checks through each proxy that they do before measuring it: a
/// peer spared that work would not be measured doing the same job.
pub const CLIENT_HEADERS_PATH: &str = "/client-headers";

/// Bytes of the large response: 64 KiB.
pub const LARGE_BODY: usize = 64 * 1024;

/// What the proxies are started from.
pub struct Setup {
    pub dir: PathBuf,
    pub certs: Certs,
    pub edgelb: PathBuf,
    pub backend_port: u16,
    /// The access-control row's deny list: one CIDR a line, and the same as nginx `geo` lines.
    pub deny_list: PathBuf,
    pub deny_geo: PathBuf,
    /// The descriptor limit the proxies run with.
    pub nofile: u64,
}

/// Writes the backend's config and its 64 KiB file; returns the config's path.
pub fn write_backend(dir: &Path, port: u16, status_port: u16, nofile: u64) -> Result<PathBuf> {
    let www = dir.join("www");
    fs::create_dir_all(&www)?;
    // Not all zeros, so nothing on the way could compress it.
    let body: Vec<u8> = (0..LARGE_BODY).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(www.join("64k"), body)?;
    let d = dir.display();
    let conf = nginx_common(dir, "backend", nofile)
        + &fill(
            BACKEND_NGINX,
            &[
                ("PORT", &port),
                ("STATUS_PORT", &status_port),
                ("DIR", &d),
                ("CLIENT_HEADERS_PATH", &CLIENT_HEADERS_PATH),
            ],
        );
    let path = dir.join("backend.conf");
    fs::write(&path, conf)?;
    Ok(path)
}

fn nginx_common(dir: &Path, name: &str, nofile: u64) -> String {
    let nofile = nofile.min(1 << 20);
    fill(
        NGINX_COMMON,
        &[
            ("DIR", &dir.display()),
            ("NAME", &name),
            ("NOFILE", &nofile),
            ("WORKER_CONNECTIONS", &nofile.saturating_sub(100).max(1024)),
        ],
    )
}

/// Writes the deny list of the access-control row (the same prefixes for all three proxies).
pub fn write_deny_lists(dir: &Path, n: usize) -> Result<(PathBuf, PathBuf)> {
    let prefixes = deny_prefixes(n);
    let list = dir.join("deny.txt");
    let geo = dir.join("deny-geo.conf");
    fs::write(&list, prefixes.join("\n") + "\n")?;
    let geo_lines: Vec<String> = prefixes.iter().map(|p| format!("{p} 1;")).collect();
    fs::write(&geo, geo_lines.join("\n") + "\n")?;
    Ok((list, geo))
}

/// `edgelb` on core 0 (so with one worker: it starts one per core it may use), serving HTTPS
/// on `port` with `certs` in front of the backend on `backend_port`, XDP off.
pub fn edgelb_command(edgelb: &Path, port: u16, certs: &Certs, backend_port: u16) -> Command {
    let mut cmd = pinned(0, edgelb, ["--listen", &format!("127.0.0.1:{port}")]);
    cmd.args(["--cert".as_ref(), certs.cert.as_os_str()])
        .args(["--key".as_ref(), certs.key.as_os_str()])
        .args(["--backend", &format!("127.0.0.1:{backend_port}")])
        .args(["--xdp-mode", "off"]);
    cmd
}

/// The command that starts `proxy` on `port` (pinned to core 0, one worker/thread), writing
/// its config first; with `Start::DenyList`, the proxy refuses the 100k-prefix deny list
/// (which does not cover 127.0.0.1, so every request is still served: the row shows the
/// check's cost); with `Start::Http3` (edgelb only), it serves HTTP/3 on the same port over
/// UDP as well.
pub fn proxy_command(setup: &Setup, proxy: Proxy, port: u16, start: Start) -> Result<Command> {
    let acl = start == Start::DenyList;
    let name = format!("{}{}", proxy.name(), if acl { "-acl" } else { "" });
    let dir = &setup.dir;
    let cmd = match proxy {
        Proxy::Edgelb => {
            let mut cmd = edgelb_command(&setup.edgelb, port, &setup.certs, setup.backend_port);
            cmd.args(["--tls-policy", "tls-1-3"])
                // Long enough for the memory test's idle connections (the maximum is 4000).
                .args(["--idle-timeout", "900"]);
            if acl {
                cmd.args(["--access-control", "blacklist"])
                    .args(["--ip-group-file".as_ref(), setup.deny_list.as_os_str()]);
            }
            if start == Start::Http3 {
                cmd.args(["--http3", "on"]);
            }
            cmd.env("TOKIO_WORKER_THREADS", "1");
            cmd
        }
        Proxy::Nginx => {
            let (http, server) = if acl {
                (
                    format!(
                        "    geo $denied {{ default 0; include {}; }}",
                        setup.deny_geo.display()
                    ),
                    "        if ($denied) { return 403; }".to_string(),
                )
            } else {
                (String::new(), String::new())
            };
            let conf = nginx_common(dir, &name, setup.nofile)
                + &fill(
                    PROXY_NGINX,
                    &[
                        ("PORT", &port),
                        ("BACKEND_PORT", &setup.backend_port),
                        ("CERT", &setup.certs.cert.display()),
                        ("KEY", &setup.certs.key.display()),
                        ("ACL_HTTP", &http),
                        ("ACL_SERVER", &server),
                    ],
                );
            let path = dir.join(format!("{name}.conf"));
            fs::write(&path, conf)?;
            pinned(0, "nginx", ["-c".as_ref(), path.as_os_str()])
        }
        Proxy::Haproxy => {
            let rule = if acl {
                format!(
                    "    tcp-request connection reject if {{ src -f {} }}",
                    setup.deny_list.display()
                )
            } else {
                String::new()
            };
            let conf = fill(
                PROXY_HAPROXY,
                &[
                    ("DIR", &dir.display()),
                    ("NAME", &name),
                    ("PORT", &port),
                    ("BACKEND_PORT", &setup.backend_port),
                    ("COMBINED", &setup.certs.combined.display()),
                    ("ACL", &rule),
                    ("MAXCONN", &haproxy_maxconn(setup.nofile)),
                ],
            );
            let path = dir.join(format!("{name}.cfg"));
            fs::write(&path, conf)?;
            pinned(
                0,
                "haproxy",
                ["-db".as_ref(), "-f".as_ref(), path.as_os_str()],
            )
        }
    };
    Ok(with_nofile_limit(cmd, setup.nofile))
}

/// The hard limit on open files, which the proxies and idle-conns may raise their soft limit
/// to (raising the hard one needs CAP_SYS_RESOURCE, which containers often lack).
pub fn nofile_hard_limit() -> Result<u64> {
    let limits = fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| match v {
            "unlimited" => Some(u64::MAX),
            v => v.parse().ok(),
        })
        .context("no `Max open files` in /proc/self/limits")
}

/// haproxy counts two descriptors per connection (client and server side) and refuses to start
/// if maxconn needs more than it may open: the most it can be given under `nofile`.
pub fn haproxy_maxconn(nofile: u64) -> u64 {
    (nofile.saturating_sub(100) / 2).min(16_000)
}

/// Runs `cmd` under `prlimit --nofile`, which sets the soft limit to the hard one and execs
/// it (same pid): the memory test holds 10,000 connections, each a descriptor, plus upstream
/// ones. nginx raises its own limit from its config; edgelb takes the one it is given.
fn with_nofile_limit(cmd: Command, nofile: u64) -> Command {
    let mut wrapped = Command::new("prlimit");
    wrapped
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    wrapped
}

/// `n` disjoint prefixes, about 90 % IPv4 and 10 % IPv6, none covering 127.0.0.0/8 (the
/// clients' addresses), in a fixed pseudo-random order and of mixed lengths, so a linear scan,
/// a hash of exact lengths and a trie all get a realistic list.
///
/// IPv4: each prefix lies inside its own /20 block (distinct blocks, so the prefixes are
/// disjoint), /20 to /32 long. IPv6: each inside its own /48 of 2001:db8::/32, /48 to /64.
pub fn deny_prefixes(n: usize) -> Vec<String> {
    let n6 = n / 10;
    let n4 = n - n6;
    let mut rng = Lcg(0x5eed_1234_abcd_ef01);
    let mut out = Vec::with_capacity(n);
    // Blocks are visited in an order that jumps around the address space: multiplying the
    // index by an odd constant mod 2^20 is a bijection on the 2^20 /20 blocks.
    let mut i = 0u32;
    while out.len() < n4 {
        let block = i.wrapping_mul(0x9_e37b) & 0xf_ffff;
        i += 1;
        let first = block >> 12; // first octet
        if first == 127 || first == 0 || first >= 224 {
            continue;
        }
        let len = 20 + (rng.next() % 13) as u32; // 20..=32
        let host_bits = 32 - len;
        let inside = (rng.next() as u32 & 0xfff) >> host_bits << host_bits;
        let addr = Ipv4Addr::from(block << 12 | inside);
        out.push(format!("{addr}/{len}"));
    }
    for k in 0..n6 as u32 {
        let len = 48 + (rng.next() % 17) as u32; // 48..=64
        let block = k.wrapping_mul(0x9e37) & 0xffff;
        // The prefix's bits past the /48 are the top `keep` bits of the fourth group.
        let keep = len - 48;
        let sub = if keep == 0 {
            0
        } else {
            ((rng.next() as u32 & 0xffff) >> (16 - keep) << (16 - keep)) as u16
        };
        let addr = Ipv6Addr::new(0x2001, 0xdb8, block as u16, sub, 0, 0, 0, 0);
        out.push(format!("{addr}/{len}"));
    }
    out
}

/// A small linear congruential generator: the deny list is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::IpAddr;

    #[test]
    fn deny_prefixes_are_disjoint_and_spare_loopback() {
        let list = deny_prefixes(100_000);
        assert_eq!(list.len(), 100_000);
        assert_eq!(list.iter().filter(|p| p.contains(':')).count(), 10_000);
        let mut v4_blocks = HashSet::new();
        let mut v6_blocks = HashSet::new();
        for p in &list {
            let (addr, len) = p.split_once('/').unwrap();
            let len: u32 = len.parse().unwrap();
            match addr.parse::<IpAddr>().unwrap() {
                IpAddr::V4(a) => {
                    let a = u32::from(a);
                    assert!((20..=32).contains(&len), "{p}");
                    assert_eq!(a & !(u32::MAX << (32 - len)), 0, "host bits set in {p}");
                    assert_ne!(a >> 24, 127, "{p} covers loopback");
                    assert!(v4_blocks.insert(a >> 12), "two prefixes in the /20 of {p}");
                }
                IpAddr::V6(a) => {
                    let a = u128::from(a);
                    assert!((48..=64).contains(&len), "{p}");
                    assert_eq!(a & ((1u128 << (128 - len)) - 1), 0, "host bits set in {p}");
                    assert!(v6_blocks.insert(a >> 80), "two prefixes in the /48 of {p}");
                }
            }
        }
    }
}
