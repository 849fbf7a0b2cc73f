//! What an operator used to nginx types: `-t`/`-c`, `edgelb reload` and `edgelb stop` through
//! the pid file (a refused reload exits non-zero with its reason), systemd's readiness
//! notifications, a second instance refused on a listener address another edgelb serves,
//! `edgelb status` finding the admin address in the configuration, the version's commit.
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use edgelb_tests::backend::Backend;
use edgelb_tests::daemon::{Daemon, binary, run};
use edgelb_tests::https::{self, ClientOpts, get};
use edgelb_tests::listener::{SERVER_NAME, Setup, free_addr};

/// A configuration file: one https listener at `listen` to `backend`, the admin endpoint.
fn config_file(s: &Setup, listen: &str, backend: &str, admin: &str) -> String {
    format!(
        "admin = \"{admin}\"\n\n[[group]]\nname = \"web\"\nbackend = [\"{backend}\"]\n\n[[listener]]\nname = \"site\"\nlisten = \"{listen}\"\ncert = \"{}\"\nkey = \"{}\"\ngroup = \"web\"\n",
        s.server.cert.display(),
        s.server.key.display()
    )
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_stop_find_the_daemon_by_its_pid_file_and_report_refusals() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let (listen, admin) = (free_addr().to_string(), free_addr().to_string());
    let be = backend.addr.to_string();
    let file = s
        .dir
        .write("edgelb.toml", config_file(&s, &listen, &be, &admin));
    let file_arg = file.to_string_lossy().into_owned();
    let pid_file = s.dir.path().join("edgelb.pid");
    let pid_arg = pid_file.to_string_lossy().into_owned();

    // -t and -c, as nginx has them.
    let out = run(&["-t", "-c", &file_arg]);
    assert!(
        out.status.success() && text(&out).contains("configuration OK"),
        "{}",
        text(&out)
    );

    // systemd's notify socket, as Type=notify passes it.
    let notify_path = s.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let notify_env = notify_path.to_string_lossy().into_owned();
    let lb = Daemon::start_env(
        None,
        &["-c", &file_arg, "--pid-file", &pid_arg, "--xdp-mode", "off"],
        s.dir.path(),
        &[("NOTIFY_SOCKET", &notify_env)],
    );
    let mut buf = [0u8; 512];
    let recv = |buf: &mut [u8]| -> String {
        let n = notify.recv(buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(&mut buf), "READY=1");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    assert_eq!(pid, lb.pid());

    // `edgelb status` finds the admin address in the file.
    let out = run(&["status", "-c", &file_arg]);
    assert!(
        out.status.success() && text(&out).contains("site"),
        "{}",
        text(&out)
    );

    let out = run(&["reload", "--pid-file", &pid_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("reloaded"), "{}", text(&out));
    assert!(recv(&mut buf).starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert!(recv(&mut buf).starts_with("READY=1"));

    // A configuration that cannot work: the reload is refused, said, and exits 1.
    std::fs::write(&file, config_file(&s, &listen, "127.0.0.1:70000", &admin)).expect("write");
    let out = run(&["reload", "--pid-file", &pid_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("reload refused") && text(&out).contains("127.0.0.1:70000"),
        "{}",
        text(&out)
    );
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    let addr = listen.parse().expect("addr");
    let served = https::send(addr, SERVER_NAME, config, get("/"))
        .await
        .expect("the old configuration serves");
    assert_eq!(served.body, "backend a\n");

    let out = run(&["stop", "--pid-file", &pid_arg]);
    assert!(
        out.status.success() && text(&out).contains("stopped"),
        "{}",
        text(&out)
    );
    assert!(!pid_file.exists(), "the pid file outlived the daemon");
    let (_, log) = lb.stop();
    assert!(log.contains("SIGTERM: stopping"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_edgelb_on_the_same_address_is_refused_and_the_first_keeps_all_traffic() {
    let s = Setup::new();
    let (first_be, second_be) = (
        Backend::start("first", "127.0.0.1:0", None),
        Backend::start("second", "127.0.0.1:0", None),
    );
    let first_addr = first_be.addr.to_string();
    let (lb, addr) = s.start(&["--backend", &first_addr, "--pid-file", "/dev/null/none"]);
    let listen = addr.to_string();
    let second_addr = second_be.addr.to_string();
    let mut args = s.listener_args(addr);
    args.extend(["--backend", &second_addr, "--pid-file", "/dev/null/none"].map(String::from));
    let second = Command::new(binary())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run a second edgelb");
    let said = text(&second);
    assert_eq!(second.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "{listen} (tcp) is already in use by another process"
        )),
        "{said}"
    );
    let config = ClientOpts::new(&s.ca.cert_pem).config();
    for _ in 0..12 {
        let r = https::send(addr, SERVER_NAME, config.clone(), get("/"))
            .await
            .expect("served");
        assert_eq!(r.body, "backend first\n");
    }
    assert_eq!(second_be.served(), 0);
    drop(lb);
}

#[test]
fn status_without_an_admin_endpoint_says_what_to_do_and_the_version_names_its_commit() {
    let dir = edgelb_tests::certs::TempDir::new();
    let file = dir.write("edgelb.toml", format!("admin = \"{}\"\n", free_addr()));
    let out = run(&["status", "--config", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("--admin ADDR:PORT") && text(&out).contains("--config"),
        "{}",
        text(&out)
    );
    // A file that names no admin endpoint, or cannot be read, is said to be the problem.
    let bare = dir.write("bare.toml", "xdp_mode = \"off\"\n");
    let missing = dir.path().join("missing.toml");
    for (file, says) in [
        (bare, "no `admin` key"),
        (missing, "No such file"),
        (std::path::PathBuf::from("/dev/zero"), "not a regular file"),
    ] {
        let out = run(&["status", "-c", &file.to_string_lossy()]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("--config {}: ", file.display()))
                && text(&out).contains(says),
            "{}",
            text(&out)
        );
    }
    // An --admin that is no address at all is a usage error, not an unreachable daemon.
    let out = run(&["status", "--admin", "garbage"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--admin \"garbage\": expected ADDR:PORT"),
        "{}",
        text(&out)
    );
    let out = run(&["--version"]);
    let version = text(&out);
    assert!(
        out.status.success() && version.starts_with("edgelb ") && version.contains("(commit "),
        "{version}"
    );
}

/// An admin address whose packets are dropped (a firewall, a wrong host): `edgelb status`
/// gives up after a few seconds with a clear error, not after the kernel's two minutes of
/// SYN retries (as root: a namespace whose nftables drop the connection attempt).
#[test]
fn status_against_an_address_that_drops_packets_gives_up_in_seconds() {
    if !edgelb_tests::privilege::root_or_skip(
        "status_against_an_address_that_drops_packets_gives_up_in_seconds",
    ) {
        return;
    }
    let ns = edgelb_tests::netns::Netns::new("st");
    let nft = ns
        .command("nft")
        .arg("add table inet t; add chain inet t out { type filter hook output priority 0; }; add rule inet t out tcp dport 9 drop")
        .status()
        .expect("nft");
    assert!(nft.success(), "nft refused the rule");
    let started = std::time::Instant::now();
    let out = ns
        .command(&binary().to_string_lossy())
        .args(["status", "--admin", "127.0.0.1:9"])
        .output()
        .expect("edgelb status");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot connect"), "{}", text(&out));
    assert!(
        took < Duration::from_secs(15),
        "edgelb status took {took:?} against a dropping address"
    );
}

/// A second daemon started with the pid file of one that runs (two instances on the default
/// path) leaves it alone: `edgelb stop` still finds the first, and the second says why it
/// cannot be found that way.
#[test]
fn a_second_daemon_does_not_take_over_a_running_daemons_pid_file() {
    let s = Setup::new();
    let backend = Backend::start("a", "127.0.0.1:0", None);
    let be = backend.addr.to_string();
    let pid_file = s.dir.path().join("shared.pid");
    let pid_arg = pid_file.to_string_lossy().into_owned();
    let (first, _) = s.start(&["--backend", &be, "--pid-file", &pid_arg]);
    let (second, _) = s.start(&["--backend", &be, "--pid-file", &pid_arg]);
    let held = std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert_eq!(held.trim(), first.pid().to_string(), "{}", second.log());
    let says = format!("edgelb pid {} runs with it", first.pid());
    let log = second.log_when(Duration::from_secs(5), |l| l.contains(&says));
    assert!(log.contains(&says), "{log}");
    let out = run(&["stop", "--pid-file", &pid_arg]);
    assert!(out.status.success(), "{}", text(&out));
    // `edgelb stop` returns once the daemon it signalled has gone: the first, by its log
    // (read before the test's own SIGTERM at `first.stop()`).
    assert!(
        first.log().contains("SIGTERM: stopping"),
        "the first daemon was not the one stopped: {}",
        first.log()
    );
    let (status, log) = first.stop();
    assert!(status.success(), "{log}");
    assert!(
        !second.log().contains("SIGTERM: stopping"),
        "{}",
        second.log()
    );
}

#[test]
fn reload_without_a_running_daemon_fails_clearly() {
    let out = run(&["reload", "--pid-file", "/nonexistent/edgelb.pid"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("/nonexistent/edgelb.pid") && text(&out).contains("is edgelb running"),
        "{}",
        text(&out)
    );
}

/// A directory of its own with a self-signed certificate for 127.0.0.1 and its key (paths).
fn cert_and_key() -> (edgelb_tests::certs::TempDir, String, String) {
    let dir = edgelb_tests::certs::TempDir::new();
    let pair =
        edgelb_tests::certs::self_signed(&dir, "a", &[edgelb_tests::packet::parse("127.0.0.1")]);
    let (cert, key) = (
        pair.cert.display().to_string(),
        pair.key.display().to_string(),
    );
    (dir, cert, key)
}

/// An access log whose file cannot be made, because its directory is missing or mounted
/// read-only (what systemd's `ProtectSystem=strict` does to /var/log unless it is in
/// `ReadWritePaths=`), is refused by `check`, so `ExecStartPre=edgelb -t` catches it, not
/// the start after it.
#[test]
fn check_refuses_an_access_log_whose_file_cannot_be_made() {
    let (dir, cert, key) = cert_and_key();
    let listener = [
        "check",
        "--listen",
        "127.0.0.1:18443",
        "--backend",
        "127.0.0.1:18080",
        "--cert",
        &cert,
        "--key",
        &key,
        "--access-log",
    ];
    let missing = dir.path().join("no-such-dir").join("access.log");
    let out = run(&[&listener[..], &[&missing.to_string_lossy()]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "--access-log \"{}\": its directory {}: No such file or directory",
            missing.display(),
            missing
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )),
        "{}",
        text(&out)
    );
    if !edgelb_tests::privilege::root_or_skip("check_refuses_an_access_log_on_a_read_only_fs") {
        return;
    }
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).expect("dir");
    // `check` with the access log at `name` in a tmpfs that holds a FIFO and is then made
    // read-only, in a mount namespace of its own.
    let check_in_read_only = |name: &str| {
        let log = ro.join(name).display().to_string();
        let mut script = format!(
            "mount -t tmpfs none {0} && mkfifo {0}/fifo && mount -o remount,ro {0} && exec",
            ro.display()
        );
        for arg in [&binary().display().to_string()[..]]
            .into_iter()
            .chain(listener)
            .chain([&log[..]])
        {
            script += &format!(" '{arg}'");
        }
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .output()
            .expect("unshare");
        (out.status.code(), text(&out))
    };
    let (code, said) = check_in_read_only("access.log");
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains(&format!(
            "its directory {} is on a read-only file system",
            ro.display()
        )),
        "{said}"
    );
    // A FIFO takes writes on a read-only mount: its reader is what matters.
    let (code, said) = check_in_read_only("fifo");
    assert_eq!(code, Some(0), "{said}");
}

/// `--xdp-mode native` on a driver whose kernel-reported xdp-features are empty (loopback)
/// gets a warning from `check`, which cannot attach to find out; the start is then refused,
/// as the warning says. A veth, whose driver runs XDP, gets no such warning.
#[test]
fn check_warns_that_a_driver_without_native_xdp_will_refuse_native_mode() {
    if !edgelb_tests::privilege::root_or_skip("check_warns_that_a_driver_without_native_xdp") {
        return;
    }
    let ns = edgelb_tests::netns::Netns::new("xf");
    ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    let (dir, cert, key) = cert_and_key();
    let pid_file = dir.path().join("edgelb.pid").display().to_string();
    let edgelb = |args: &[&str], iface: &str| {
        // Bounded: a native start on lo that succeeded would otherwise serve on.
        let out = ns
            .command("timeout")
            .arg("20")
            .arg(binary())
            .args(args)
            .args([
                "--listen",
                "127.0.0.1:18443",
                "--backend",
                "127.0.0.1:18080",
            ])
            .args(["--cert", &cert, "--key", &key, "--pid-file", &pid_file])
            .args(["--xdp-iface", iface, "--xdp-mode", "native"])
            .output()
            .expect("edgelb");
        (out.status.code(), text(&out))
    };
    let warning = "its driver does not report native XDP";
    let (code, said) = edgelb(&["check"], "lo");
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("edgelb: warning: --xdp-iface lo: {warning}")),
        "{said}"
    );
    let (code, said) = edgelb(&["check"], "va");
    assert!(code == Some(0) && !said.contains(warning), "{said}");
    let (code, said) = edgelb(&[], "lo");
    assert!(
        code == Some(2) && said.contains("refused XDP in native mode"),
        "{code:?}: {said}"
    );
}
