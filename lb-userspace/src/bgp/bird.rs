//! BIRD 2 as this node's BGP speaker. edgelb writes BIRD's configuration (one static protocol
//! per address family holding the routes to announce, one BGP session per peer exporting only
//! those), runs `bird` as its child and changes what is announced by rewriting the routes and
//! asking BIRD to `configure`, which leaves the sessions up. If edgelb dies, BIRD is told to
//! stop (parent-death signal) and closes its sessions, which withdraws the routes at once; a
//! node that goes silent loses them when the peers' hold timer runs out.
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::bgp::BgpConfig;

/// Why BIRD could not be run or told what to announce.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {}: {source} (is BIRD 2 installed? Debian: bird2)", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} did not open its control socket {} within {timeout:?}", program.display(), socket.display())]
    NoSocket {
        program: PathBuf,
        socket: PathBuf,
        timeout: Duration,
    },
    #[error("{} exited at start ({status}); its messages are in edgelb's log", program.display())]
    Exited {
        program: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("{command}: {reply}")]
    Refused { command: String, reply: String },
    #[error("starting BIRD: {0}")]
    Task(String),
    #[error("the node stopped while BIRD was starting")]
    Cancelled,
}

/// One BGP session as BIRD reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// BIRD's protocol state: `up`, `start`, `down`...
    pub state: String,
    /// The BGP state and why: `Established`, `Active  Socket: Connection refused`...
    pub info: String,
}

impl PeerState {
    pub fn established(&self) -> bool {
        self.info.starts_with("Established")
    }
}

pub struct Bird {
    config: BgpConfig,
    dir: PathBuf,
    socket: PathBuf,
    client: PathBuf,
    child: Child,
}

impl Bird {
    /// A fresh private directory for BIRD's files (the configuration names the peers):
    /// made with a name no one can guess or have made before.
    pub fn make_dir() -> Result<PathBuf, BirdError> {
        let template = std::env::temp_dir().join("edgelb-bgp-XXXXXX");
        nix::unistd::mkdtemp(&template).map_err(|e| BirdError::Write {
            path: template,
            source: e.into(),
        })
    }

    /// Writes the configuration with nothing announced into `dir` (from [`Bird::make_dir`])
    /// and starts BIRD. Returns once BIRD answers on its control socket; gives up (its process
    /// killed) once `cancel` is set.
    pub fn start(
        config: &BgpConfig,
        dir: &Path,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Bird, BirdError> {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| BirdError::Write { path, source })
        };
        write(CONFIG, &configuration(config, &BTreeSet::new()))?;
        // BIRD's own check first: its message says what is wrong, where. Given a time like
        // every other wait on BIRD: a speaker that hangs must not hang the node's start.
        let mut check = Command::new(&config.speaker)
            .arg("-p")
            .arg("-c")
            .arg(dir.join(CONFIG))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BirdError::Spawn {
                program: config.speaker.clone(),
                source,
            })?;
        let refused = |reply: String| BirdError::Refused {
            command: format!(
                "{} -p (its check of the configuration)",
                config.speaker.display()
            ),
            reply,
        };
        let asked = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = check.try_wait() {
                break status;
            }
            if asked.elapsed() > CHECK_TIMEOUT || cancel.load(std::sync::atomic::Ordering::Relaxed)
            {
                let _ = check.kill();
                let _ = check.wait();
                return Err(refused(format!("no answer within {CHECK_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let mut reply = String::new();
            if let Some(mut stderr) = check.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut reply);
            }
            return Err(refused(reply.trim().to_string()));
        }
        let socket = dir.join("bird.ctl");
        let _ = std::fs::remove_file(&socket);
        let mut command = Command::new(&config.speaker);
        command
            .arg("-f")
            .arg("-c")
            .arg(dir.join(CONFIG))
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(io::Error::from)
            });
        }
        let mut child = spawn_from_keeper(command).map_err(|source| BirdError::Spawn {
            program: config.speaker.clone(),
            source,
        })?;
        if let Some(stderr) = child.stderr.take() {
            relay_log(stderr);
        }
        let timeout = CHECK_TIMEOUT;
        let started = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(BirdError::Exited {
                    program: config.speaker.clone(),
                    status,
                });
            }
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BirdError::Cancelled);
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BirdError::NoSocket {
                    program: config.speaker.clone(),
                    socket,
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut client = config.speaker.clone().into_os_string();
        client.push("c");
        Ok(Bird {
            dir: dir.to_path_buf(),
            socket,
            client: client.into(),
            child,
            config: config.clone(),
        })
    }

    /// Whether BIRD has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// After a privilege drop the daemon rewrites the configuration and talks to BIRD (which
    /// stays root) as `uid`: the directory, the configuration and the socket become its.
    pub fn hand_to(&self, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> Result<(), BirdError> {
        for path in [self.dir.clone(), self.dir.join(CONFIG), self.socket.clone()] {
            nix::unistd::chown(&path, Some(uid), Some(gid)).map_err(|e| BirdError::Write {
                path,
                source: e.into(),
            })?;
        }
        Ok(())
    }

    /// Announces exactly `routes` (host routes of these addresses).
    pub async fn announce(&self, routes: &BTreeSet<IpAddr>) -> Result<(), BirdError> {
        let path = self.dir.join(CONFIG);
        // A few lines: not worth a trip to the blocking pool.
        std::fs::write(&path, configuration(&self.config, routes))
            .map_err(|source| BirdError::Write { path, source })?;
        let reply = self.birdc("configure").await?;
        if reply.contains("Reconfigured") || reply.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(BirdError::Refused {
                command: "birdc configure".into(),
                reply,
            })
        }
    }

    /// Each peer's session, in the order of the configuration's peers (None: not reported).
    pub async fn peers(&self, count: usize) -> Result<Vec<Option<PeerState>>, BirdError> {
        let reply = self.birdc("show protocols").await?;
        Ok((0..count)
            .map(|i| parse_protocol(&reply, &peer_name(i)))
            .collect())
    }

    /// One birdc command, given [`BIRDC_TIMEOUT`]: a BIRD that hangs must not hold up the
    /// daemon's main loop (health, admin endpoint).
    async fn birdc(&self, command: &str) -> Result<String, BirdError> {
        let run = tokio::process::Command::new(&self.client)
            .arg("-s")
            .arg(&self.socket)
            .args(command.split(' '))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(BIRDC_TIMEOUT, run)
            .await
            .map_err(|_| BirdError::Refused {
                command: format!("birdc {command}"),
                reply: format!("no answer within {BIRDC_TIMEOUT:?}"),
            })?
            .map_err(|source| BirdError::Spawn {
                program: self.client.clone(),
                source,
            })?;
        let reply = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(reply)
        } else {
            Err(BirdError::Refused {
                command: format!("birdc {command}"),
                reply: reply.trim().to_string(),
            })
        }
    }

    /// Stops BIRD: it closes its sessions (a Cease notification each) and exits. After a
    /// privilege drop the daemon may not signal the root BIRD: then `birdc down` asks it, and
    /// if it is still there at the end, the parent-death signal stops it when edgelb exits.
    pub fn stop(mut self) {
        // Reaped already (it died, and a restart did not replace it): its pid may be another
        // process's by now, which a signal must not reach.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            self.ask_down();
        }
        if self.exits_within(Duration::from_secs(3)) {
            return;
        }
        let _ = self.child.kill();
        if !self.exits_within(Duration::from_secs(1)) {
            tracing::warn!(
                pid = self.child.id(),
                "BGP speaker did not stop; it gets SIGTERM when edgelb exits"
            );
        }
    }

    /// `birdc down`, given [`BIRDC_TIMEOUT`] like every birdc command: a BIRD that hangs
    /// (stopped, or stuck) accepts the control connection and never answers, and must not
    /// hold up edgelb's exit.
    fn ask_down(&self) {
        let asked = Command::new(&self.client)
            .arg("-s")
            .arg(&self.socket)
            .arg("down")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut birdc) = asked else {
            return;
        };
        let deadline = Instant::now() + BIRDC_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(birdc.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!("BGP speaker did not answer birdc down within {BIRDC_TIMEOUT:?}");
        let _ = birdc.kill();
        let _ = birdc.wait();
    }

    fn exits_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

const CONFIG: &str = "bird.conf";
const BIRDC_TIMEOUT: Duration = Duration::from_secs(1);
/// How long BIRD may take to check its configuration, and then to open its control socket.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Spawns `command` from a thread that lives as long as the process. The kernel sends BIRD its
/// parent-death signal when the *thread* that forked it exits, not the process; tokio's
/// blocking-pool threads exit after a while idle, which would stop a BIRD started from one.
fn spawn_from_keeper(mut command: Command) -> io::Result<Child> {
    type Job = Box<dyn FnOnce() + Send>;
    static KEEPER: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<Job>>>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("bird-keeper".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .ok()
            .map(|_| std::sync::Mutex::new(tx))
    });
    let Some(keeper) = keeper else {
        return Err(io::Error::other(
            "cannot start the thread BIRD is started from",
        ));
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = done_tx.send(command.spawn());
    });
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the thread BIRD is started from is gone"))?;
    done_rx
        .recv()
        .map_err(|_| io::Error::other("the thread BIRD is started from is gone"))?
}

/// BIRD's log lines become edgelb's (target `edgelb::bgp::bird`), in its format (text or
/// JSON), until BIRD exits.
fn relay_log(stderr: std::process::ChildStderr) {
    use std::io::BufRead;
    let spawned = std::thread::Builder::new()
        .name("bird-log".into())
        .spawn(move || {
            for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
                // "2026-12-02 13:09:50.957 <INFO> Started": edgelb stamps its own time.
                let text = line.split_once("> ").map_or(line.as_str(), |(_, t)| t);
                if line.contains("<ERR>") || line.contains("<WARN>") || line.contains("<FATAL>") {
                    tracing::warn!(target: "edgelb::bgp::bird", "{text}");
                } else {
                    tracing::info!(target: "edgelb::bgp::bird", "{text}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "BGP: BIRD's log is not relayed");
    }
}

fn peer_name(i: usize) -> String {
    format!("peer{}", i + 1)
}

/// BIRD's configuration with `routes` in one static protocol per family. Announcing is
/// rewriting it and `configure`: BIRD applies a change of static routes without touching the
/// sessions.
fn configuration(c: &BgpConfig, routes: &BTreeSet<IpAddr>) -> String {
    let hold = c.hold_time.as_secs();
    let statics = |v6: bool| {
        routes
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .fold(String::new(), |mut out, a| {
                let len = if v6 { 128 } else { 32 };
                let _ = write!(out, " route {a}/{len} blackhole;");
                out
            })
    };
    let mut out = format!(
        "# Written by edgelb; rewritten whenever what is announced changes.\n\
         log stderr all;\n\
         router id {id};\n\
         protocol device {{ }}\n\
         protocol static edgelb4 {{ ipv4;{v4} }}\n\
         protocol static edgelb6 {{ ipv6;{v6} }}\n",
        id = c.router_id,
        v4 = statics(false),
        v6 = statics(true),
    );
    if c.bfd {
        out += "protocol bfd { }\n";
    }
    for (i, p) in c.peers.iter().enumerate() {
        let family = if p.addr.is_ipv6() { "ipv6" } else { "ipv4" };
        let _ = write!(
            out,
            "protocol bgp {name} {{\n\
             \x20 local as {local};\n\
             \x20 neighbor {addr} as {asn};\n\
             \x20 hold time {hold};\n\
             \x20 keepalive time {keepalive};\n\
             \x20 connect retry time 2;\n\
             \x20 error wait time 1, 10;\n\
             {bfd}\
             \x20 {family} {{ import none; export where proto = \"edgelb{n}\"; next hop self; }};\n\
             }}\n",
            name = peer_name(i),
            local = c.local_as,
            addr = p.addr,
            asn = p.asn,
            keepalive = (hold / 3).max(1),
            bfd = if c.bfd { "  bfd on;\n" } else { "" },
            n = if p.addr.is_ipv6() { 6 } else { 4 },
        );
    }
    out
}

/// The state and info of protocol `name` in `birdc show protocols`.
fn parse_protocol(reply: &str, name: &str) -> Option<PeerState> {
    reply.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        if cols.next()? != name {
            return None;
        }
        let _proto = cols.next()?;
        let _table = cols.next()?;
        let state = cols.next()?.to_string();
        let _since_date = cols.next()?;
        // The since column is a time, or a date and a time.
        let rest: Vec<&str> = cols.collect();
        let info = match rest.first() {
            Some(t) if t.contains(':') && t.len() <= 12 && t.chars().next()?.is_ascii_digit() => {
                rest[1..].join(" ")
            }
            _ => rest.join(" "),
        };
        Some(PeerState { state, info })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_read_from_birdc() {
        let reply = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     10:01:02.123  \n\
            peer1      BGP        ---        up     10:01:03.456  Established   \n\
            peer2      BGP        ---        start  10:01:02.123  Active        Socket: Connection refused\n";
        let p1 = parse_protocol(reply, "peer1").expect("peer1");
        assert!(p1.established(), "{p1:?}");
        assert_eq!(p1.state, "up");
        let p2 = parse_protocol(reply, "peer2").expect("peer2");
        assert!(!p2.established());
        assert_eq!(p2.info, "Active Socket: Connection refused");
        assert!(parse_protocol(reply, "peer3").is_none());
        // After a day the Since column is a date, or a date and a time.
        for since in ["2026-12-01", "2026-12-01 10:01:03"] {
            let reply = format!("peer1      BGP        ---        up     {since}    Established\n");
            let p = parse_protocol(&reply, "peer1").expect("peer1");
            assert!(p.established(), "{since}: {p:?}");
        }
    }

    #[test]
    fn configuration_exports_only_the_announced_routes_per_family() {
        let c = BgpConfig {
            local_as: 65001,
            router_id: "10.2.1.2".parse().expect("id"),
            peers: vec![
                crate::config::bgp::BgpPeer {
                    addr: "10.2.1.1".parse().expect("v4"),
                    asn: 65000,
                },
                crate::config::bgp::BgpPeer {
                    addr: "fd00:2:1::1".parse().expect("v6"),
                    asn: 65000,
                },
            ],
            hold_time: Duration::from_secs(3),
            withdraw_delay: Duration::from_secs(1),
            announce: crate::config::bgp::BgpAnnounce::Healthy,
            bfd: false,
            speaker: "bird".into(),
        };
        let routes = [
            "10.100.0.1".parse().expect("v4"),
            "fd00:100::1".parse().expect("v6"),
        ]
        .into_iter()
        .collect();
        let text = configuration(&c, &routes);
        assert!(
            text.contains("protocol static edgelb4 { ipv4; route 10.100.0.1/32 blackhole; }"),
            "{text}"
        );
        assert!(
            text.contains("protocol static edgelb6 { ipv6; route fd00:100::1/128 blackhole; }"),
            "{text}"
        );
        assert!(text.contains("router id 10.2.1.2;"), "{text}");
        assert!(text.contains("neighbor 10.2.1.1 as 65000;"), "{text}");
        assert!(
            text.contains(
                "ipv4 { import none; export where proto = \"edgelb4\"; next hop self; };"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ipv6 { import none; export where proto = \"edgelb6\"; next hop self; };"
            ),
            "{text}"
        );
        assert!(text.contains("hold time 3;") && text.contains("keepalive time 1;"));
    }
}
