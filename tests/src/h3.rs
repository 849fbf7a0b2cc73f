//! An independent HTTP/3 client for the tests: Python's aioquic (tests/scripts/h3client.py),
//! installed by `cargo xtask setup` into a virtualenv under the workspace's target directory.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netns::Netns;

/// Where `cargo xtask setup` installs aioquic.
pub fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/aioquic-venv")
}

fn python() -> PathBuf {
    venv().join("bin/python3")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/h3client.py")
}

/// True when the client can run; false (after saying why) when the test must skip. In CI,
/// where setup has installed it, a missing client fails the test instead.
pub fn client_or_skip(test: &str) -> bool {
    let ok = Command::new(python())
        .args(["-c", "import aioquic"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: aioquic missing from {}: `cargo xtask setup` installs it",
            venv().display()
        );
    }
    eprintln!("SKIPPED {test}: aioquic missing; run `cargo xtask setup`");
    false
}

/// One response as the client printed it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no reply came: the client's exit code (2: no connection, 3: a request unanswered, 4:
/// a large frame's request stream not stopped) and what it said.
#[derive(Debug, Clone)]
pub struct Failed {
    pub code: Option<i32>,
    pub stderr: String,
}

/// What to send and how to connect.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub ca: &'a Path,
    pub server_name: &'a str,
    /// A client certificate and key (mutual TLS).
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// The source address, inside the namespace the client runs in.
    pub bind: Option<&'a str>,
    pub method: &'a str,
    pub data: Option<&'a str>,
    /// A `content-length` to declare instead of the body's own.
    pub content_length: Option<u64>,
    pub headers: Vec<String>,
    /// Seconds: the QUIC idle timeout and the wait for each response.
    pub timeout: f32,
    /// Seconds between requests on the connection.
    pub pause: f32,
    /// First send this many bytes of a frame declaring 1 GiB: on the control stream (true) or
    /// on a request stream of its own, which the server must stop (else exit 4).
    pub big_frame: Option<(bool, usize)>,
    /// Send the requests together, this many seconds apart; one that fails is a reply with
    /// status 0 and the reason as its body.
    pub stagger: Option<f32>,
    /// First open this many streams, 0.8 s apart, that never get a request head.
    pub bare_streams: Option<u32>,
}

impl<'a> Request<'a> {
    pub fn get(ca: &'a Path, server_name: &'a str) -> Self {
        Request {
            ca,
            server_name,
            client_cert: None,
            bind: None,
            method: "GET",
            data: None,
            content_length: None,
            headers: Vec::new(),
            timeout: 5.0,
            pause: 0.0,
            big_frame: None,
            stagger: None,
            bare_streams: None,
        }
    }

    /// Sends one request per path, over one connection to `host:port`, from this namespace
    /// or `ns`.
    pub fn send(
        &self,
        ns: Option<&Netns>,
        host: &str,
        port: u16,
        paths: &[&str],
    ) -> Result<Vec<Reply>, Failed> {
        let python = python().display().to_string();
        let mut cmd = match ns {
            Some(ns) => ns.command(&python),
            None => Command::new(&python),
        };
        cmd.arg(script())
            .args([host, &port.to_string()])
            .args(paths)
            .args(["--server-name", self.server_name])
            .arg("--ca")
            .arg(self.ca)
            .args(["--method", self.method])
            .args(["--timeout", &self.timeout.to_string()])
            .args(["--pause", &self.pause.to_string()]);
        if let Some((cert, key)) = self.client_cert {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some(bind) = self.bind {
            cmd.args(["--bind", bind]);
        }
        if let Some(data) = self.data {
            cmd.args(["--data", data]);
        }
        if let Some(n) = self.content_length {
            cmd.args(["--content-length", &n.to_string()]);
        }
        for h in &self.headers {
            cmd.args(["--header", h]);
        }
        if let Some(n) = self.bare_streams {
            cmd.args(["--bare-streams", &n.to_string()]);
        }
        if let Some(stagger) = self.stagger {
            cmd.args(["--stagger", &stagger.to_string()]);
        }
        if let Some((control, n)) = self.big_frame {
            let at = if control { "control" } else { "request" };
            cmd.args(["--big-frame", &format!("{at}:{n}")]);
        }
        let out = cmd.output().map_err(|e| Failed {
            code: None,
            stderr: format!("cannot run {python}: {e}"),
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(Failed {
                code: out.status.code(),
                stderr,
            });
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                parse(line).ok_or_else(|| Failed {
                    code: out.status.code(),
                    stderr: format!("unreadable reply {line:?}; stderr: {stderr}"),
                })
            })
            .collect()
    }
}

fn parse(line: &str) -> Option<Reply> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Reply {
        status: u16::try_from(v["status"].as_u64()?).ok()?,
        headers: v["headers"]
            .as_array()?
            .iter()
            .filter_map(|h| Some((h[0].as_str()?.to_string(), h[1].as_str()?.to_string())))
            .collect(),
        body: v["body"].as_str()?.to_string(),
    })
}
