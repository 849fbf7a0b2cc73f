//! The command line, run as a real process: `edgelb check` prints the effective configuration;
//! bad input gets one clear line naming the flag and the value, and exit code 2, from `check`
//! and from the daemon alike. Needs no privileges.
use edgelb_tests::certs::{TempDir, self_signed};
use edgelb_tests::daemon::run;
use edgelb_tests::packet::parse;

struct Files {
    _dir: TempDir,
    cert: String,
    key: String,
    other_key: String,
    garbage: String,
    bad_group_file: String,
}

fn files() -> Files {
    let dir = TempDir::new();
    let a = self_signed(&dir, "a", &[parse("127.0.0.1")]);
    let b = self_signed(&dir, "b", &[parse("127.0.0.1")]);
    let garbage = dir.write("garbage.pem", "not a pem file\n");
    let bad = dir.write("group.txt", "10.0.0.0/8\n# comment\n10.1.0.0/99\n");
    Files {
        cert: a.cert.display().to_string(),
        key: a.key.display().to_string(),
        other_key: b.key.display().to_string(),
        garbage: garbage.display().to_string(),
        bad_group_file: bad.display().to_string(),
        _dir: dir,
    }
}

/// Runs edgelb with `args` and returns its stderr, asserting a usage error (exit code 2).
fn usage_error(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    stderr
}

fn base(f: &Files) -> Vec<&str> {
    base_with(&f.cert, &f.key)
}

/// A listener with this certificate and key, and a backend.
fn base_with<'a>(cert: &'a str, key: &'a str) -> Vec<&'a str> {
    vec![
        "--listen",
        "127.0.0.1:18443",
        "--cert",
        cert,
        "--key",
        key,
        "--backend",
        "127.0.0.1:18080",
    ]
}

#[test]
fn check_prints_the_effective_config_and_exits_0() {
    let f = files();
    let mut args = vec!["check"];
    args.extend(base(&f));
    args.extend([
        "--backend",
        "[::1]:18081,weight=3",
        "--access-control",
        "allowlist",
        "--ip-group",
        "10.1.2.3/8, fd00::/8",
        "--ip-group",
        "192.0.2.7",
        "--tag",
        "env=prod",
        "--description",
        "edge listener",
        "--algorithm",
        "wlc",
        "--tls-policy",
        "tls-1-2-strict",
        "--http2",
        "off",
        "--http3",
        "on",
        "--idle-timeout",
        "0",
        "--transfer-lb-ip",
    ]);
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "listen          127.0.0.1:18443",
        "access-control  whitelist (3 prefixes: 10.0.0.0/8, 192.0.2.7/32, fd00::/8)",
        "backend         127.0.0.1:18080 weight=1",
        "backend         [::1]:18081 weight=3",
        "mode            off",
        "tag             env=prod",
        "description     \"edge listener\"",
        "algorithm       weighted-least-connections",
        "tls-policy      tls-1-2-strict",
        "http2           off",
        "http3           on (QUIC on the same UDP port)",
        "ssl-auth        one-way",
        "timeouts        idle=0s request=60s response=60s",
        "transfer-lb-ip  the local address clients connect to",
        "configuration OK",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
}

#[test]
fn bad_input_is_one_clear_line_and_exit_code_2() {
    let f = files();
    let long_name = "n".repeat(256);
    // (what, extra or replacing flags, text the message must contain)
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "unreadable certificate",
            vec!["--cert", "/nonexistent/cert.pem"],
            "--cert \"/nonexistent/cert.pem\": cannot read",
        ),
        (
            "certificate that is not PEM",
            vec!["--cert", &f.garbage],
            "--cert",
        ),
        (
            "unreadable key",
            vec!["--key", "/nonexistent/key.pem"],
            "--key \"/nonexistent/key.pem\": cannot read",
        ),
        (
            "key that is not PEM",
            vec!["--key", &f.garbage],
            "no usable PEM private key",
        ),
        (
            "key of another certificate",
            vec!["--key", &f.other_key],
            "does not match the certificate",
        ),
        (
            "CIDR prefix too long",
            vec!["--access-control", "whitelist", "--ip-group", "10.0.0.0/33"],
            "--ip-group \"10.0.0.0/33\"",
        ),
        (
            "CIDR that is not an address",
            vec![
                "--access-control",
                "blacklist",
                "--ip-group",
                "10.0.0.0/8,example.com",
            ],
            "--ip-group \"example.com\"",
        ),
        (
            "bad line in an ip-group file",
            vec![
                "--access-control",
                "whitelist",
                "--ip-group-file",
                &f.bad_group_file,
            ],
            "line 3",
        ),
        (
            "missing ip-group file",
            vec![
                "--access-control",
                "whitelist",
                "--ip-group-file",
                "/nonexistent/list",
            ],
            "--ip-group-file \"/nonexistent/list\": cannot read",
        ),
        (
            "whitelist without a group",
            vec!["--access-control", "whitelist"],
            "needs an IP address group",
        ),
        (
            "group without a whitelist or blacklist",
            vec!["--ip-group", "10.0.0.0/8"],
            "--access-control \"all\"",
        ),
        (
            "unknown access-control mode",
            vec!["--access-control", "maybe"],
            "--access-control",
        ),
        (
            "unknown interface",
            vec!["--xdp-iface", "nosuchif0"],
            "--xdp-iface \"nosuchif0\": no such network interface",
        ),
        (
            "unknown xdp mode",
            vec!["--xdp-mode", "turbo"],
            "--xdp-mode",
        ),
        (
            "weight over 100",
            vec!["--backend", "127.0.0.1:1,weight=101"],
            "--backend \"127.0.0.1:1,weight=101\": weight \"101\" must be an integer 0-100",
        ),
        (
            "backend without a port",
            vec!["--backend", "127.0.0.1"],
            "--backend \"127.0.0.1\"",
        ),
        (
            "listen port 0",
            vec!["--listen", "127.0.0.1:0"],
            "--listen \"127.0.0.1:0\": port must be 1-65535",
        ),
        ("name too long", vec!["--name", &long_name], "--name"),
        (
            "idle timeout over 4000",
            vec!["--idle-timeout", "4001"],
            "--idle-timeout \"4001\": must be a whole number of seconds, 0-4000",
        ),
        (
            "request timeout 0",
            vec!["--request-timeout", "0"],
            "--request-timeout \"0\": must be a whole number of seconds, 1-300",
        ),
        (
            "response timeout not a number",
            vec!["--response-timeout", "1m"],
            "--response-timeout \"1m\": must be a whole number of seconds, 1-300",
        ),
        (
            "TLS 1.1 policy",
            vec!["--tls-policy", "tls-1-1"],
            "--tls-policy \"tls-1-1\": TLS 1.0 and 1.1 are deprecated by RFC 8996",
        ),
        (
            "unknown policy",
            vec!["--tls-policy", "modern"],
            "choose one of tls-1-2, tls-1-2-strict, tls-1-3",
        ),
        (
            "sni-cert without a key",
            vec!["--sni-cert", "a.example.com=/x.pem"],
            "--sni-cert \"a.example.com=/x.pem\": expected DOMAIN=CERT:KEY",
        ),
        (
            "sni-cert with a bad name",
            vec!["--sni-cert", "bad_name=/x.pem:/x.key"],
            "--sni-cert \"bad_name=/x.pem:/x.key\": expected a domain name",
        ),
        (
            "sni-cert with a missing file",
            vec!["--sni-cert", "a.example.com=/nonexistent.pem:/x.key"],
            "--sni-cert \"a.example.com=/nonexistent.pem:/x.key\": /nonexistent.pem: cannot read",
        ),
        (
            "unreadable client CA",
            vec!["--client-ca", "/nonexistent/ca.pem"],
            "--client-ca \"/nonexistent/ca.pem\": cannot read",
        ),
        (
            "mutual without a CA",
            vec!["--ssl-auth", "mutual"],
            "--ssl-auth \"mutual\": needs --client-ca",
        ),
        (
            "duplicate tag key",
            vec!["--tag", "env=a", "--tag", "env=b"],
            "--tag \"env=b\": key \"env\" is given twice",
        ),
        (
            "tag without a value",
            vec!["--tag", "env"],
            "--tag \"env\": expected KEY=VALUE",
        ),
        (
            "description too long",
            vec!["--description", &long_name],
            "--description",
        ),
        (
            "unknown algorithm",
            vec!["--algorithm", "random"],
            "--algorithm",
        ),
        (
            "https backends without a trust decision",
            vec!["--backend-protocol", "https"],
            "--backend-protocol \"https\": give --backend-ca PATH",
        ),
        (
            "backend CA with http backends",
            vec!["--backend-ca", "/x.pem"],
            "--backend-ca: only applies with --backend-protocol https",
        ),
        (
            "public IP as hc-domain",
            vec!["--hc-domain", "8.8.8.8"],
            "--hc-domain \"8.8.8.8\": an IP address here must be a backend's private address",
        ),
        (
            "one-label hc-domain",
            vec!["--hc-domain", "backend"],
            "--hc-domain \"backend\": expected a private IP, or a domain",
        ),
        (
            "transfer-lb-ip that is not an IP",
            vec!["--transfer-lb-ip", "lb.example.com"],
            "--transfer-lb-ip \"lb.example.com\": expected an IPv4 or IPv6 address",
        ),
        (
            "same backend twice",
            vec![
                "--backend",
                "127.0.0.1:18080",
                "--backend",
                "127.0.0.1:18080,weight=2",
            ],
            "--backend \"127.0.0.1:18080\": is given twice",
        ),
        (
            "certificate on an http listener",
            vec!["--protocol", "http"],
            "--cert: has no effect on an http listener",
        ),
        (
            "ACME names without a directory",
            vec!["--acme-domain", "shop.example.com"],
            "--acme-domain \"shop.example.com\": needs --acme-directory URL",
        ),
        (
            "an ACME wildcard",
            vec!["--acme-domain", "*.example.com"],
            "--acme-domain \"*.example.com\": a wildcard needs the dns-01 challenge",
        ),
        (
            "an ACME name that is not one",
            vec!["--acme-domain", "shop_example"],
            "--acme-domain \"shop_example\": not a DNS name",
        ),
        (
            "an ACME directory in clear",
            vec![
                "--acme-domain",
                "shop.example.com",
                "--acme-directory",
                "http://ca.example.com/dir",
            ],
            "--acme-directory \"http://ca.example.com/dir\": expected an https:// URL",
        ),
        (
            "a bad ACME contact",
            vec![
                "--acme-domain",
                "shop.example.com",
                "--acme-directory",
                "https://ca.example.com/dir",
                "--acme-email",
                "ops",
            ],
            "--acme-email \"ops\": expected an e-mail address",
        ),
        (
            "HTTP-01 without an http listener",
            vec![
                "--acme-domain",
                "shop.example.com",
                "--acme-directory",
                "https://ca.example.com/dir",
                "--acme-challenge",
                "http-01",
            ],
            "--acme-challenge \"http-01\": needs an http listener",
        ),
        (
            "sticky sessions with least connections",
            vec!["--sticky-session", "lb-cookie", "--algorithm", "wlc"],
            "--sticky-session \"lb-cookie\": only works with --algorithm weighted-round-robin",
        ),
        (
            "app-cookie without a cookie name",
            vec!["--sticky-session", "app-cookie"],
            "--cookie-name: required with --sticky-session app-cookie",
        ),
        (
            "cookie name with a space",
            vec![
                "--sticky-session",
                "app-cookie",
                "--cookie-name",
                "my session",
            ],
            "--cookie-name \"my session\"",
        ),
        (
            "sticky duration over a day",
            vec!["--sticky-session", "lb-cookie", "--sticky-duration", "1441"],
            "--sticky-duration \"1441\": must be a whole number, 1-1440",
        ),
        (
            "short sticky key",
            vec![
                "--sticky-session",
                "lb-cookie",
                "--sticky-key-file",
                &f.garbage,
            ],
            "--sticky-key-file",
        ),
        (
            "health check path without a slash",
            vec!["--health-check", "http", "--hc-path", "health"],
            "--hc-path \"health\": must be 1-80 characters starting with /",
        ),
        (
            "health check interval over 50",
            vec!["--hc-interval", "51"],
            "--hc-interval \"51\": must be a whole number of seconds, 1-50",
        ),
        (
            "health check retries 0",
            vec!["--hc-retries", "0"],
            "--hc-retries \"0\": must be a whole number, 1-10",
        ),
        (
            "health check port 0",
            vec!["--hc-port", "0"],
            "--hc-port \"0\": must be a whole number, 1-65535",
        ),
        (
            "slow start under 30 s",
            vec!["--slow-start", "10"],
            "--slow-start \"10\": must be a whole number of seconds, 30-1200",
        ),
        (
            "a device as the certificate",
            vec!["--cert", "/dev/zero"],
            "--cert \"/dev/zero\": not a regular file",
        ),
        (
            "a device as an IP group file",
            vec![
                "--access-control",
                "whitelist",
                "--ip-group-file",
                "/dev/zero",
            ],
            "--ip-group-file \"/dev/zero\": not a regular file",
        ),
        (
            "unknown health check",
            vec!["--health-check", "icmp"],
            "--health-check",
        ),
    ];
    let mut failures = Vec::new();
    for (what, extra, expected) in &cases {
        // A flag in `extra` replaces the base one (clap refuses a single-value flag twice).
        let mut args: Vec<&str> = base(&f)
            .chunks(2)
            .filter(|pair| !extra.contains(&pair[0]))
            .flatten()
            .copied()
            .collect();
        args.extend(extra.iter().copied());
        for mode in ["check", "run"] {
            let mut full = if mode == "check" {
                vec!["check"]
            } else {
                vec![]
            };
            full.extend(args.iter().copied());
            let out = run(&full);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let ok = out.status.code() == Some(2)
                && stderr.contains(expected)
                && stderr.trim_end().lines().count() == 1
                && !stderr.contains("panicked");
            if !ok {
                failures.push(format!(
                    "{what} ({mode}): exit {:?}, stderr {stderr:?}",
                    out.status.code()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_required_flags_are_named() {
    for (args, expected) in [
        (vec!["check"], "--listen: required"),
        (
            vec!["check", "--listen", "127.0.0.1:443"],
            "--cert: required",
        ),
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// A tcp/udp listener is forwarded by the XDP program with the group's Maglev ring: `check`
/// accepts one set up that way and refuses, by flag, what it cannot do.
#[test]
fn l4_listeners_are_checked_for_what_xdp_forwarding_needs() {
    let base = [
        "check",
        "--protocol",
        "tcp",
        "--listen",
        "10.100.0.1:5000",
        "--backend",
        "127.0.0.1:5000",
    ];
    let ok = ["--xdp-iface", "lo", "--algorithm", "source-ip-hash"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--algorithm", "source-ip-hash"],
            "--protocol \"tcp\": listener \"listener-1\" is forwarded by the XDP program: give --xdp-iface",
        ),
        (
            vec!["--xdp-iface", "lo"],
            "must use --algorithm source-ip-hash, not weighted-round-robin",
        ),
        (
            [&ok[..], &["--rule", "path=/;action=forward"]].concat(),
            "--rule: rules route HTTP requests",
        ),
        (
            [&ok[..], &["--sticky-duration", "61"]].concat(),
            "--sticky-duration \"61\": must be 1-60 for a group behind a tcp listener",
        ),
        (
            [&ok[..], &["--transfer-lb-ip"]].concat(),
            "--transfer-lb-ip: a tcp listener adds no headers",
        ),
        (
            [&ok[..], &["--xdp-mode", "off"]].concat(),
            "is forwarded by the XDP program",
        ),
        (
            [&ok[..], &["--syn-protect", "on"]].concat(),
            "--syn-protect \"on\": answers new connections of http and https listeners, and a tcp listener's are its backends' to answer",
        ),
        (
            [&ok[..], &["--http3", "on"]].concat(),
            "--http3 \"on\": HTTP/3 runs over QUIC, which is always encrypted: only an https listener can serve it (this one is tcp)",
        ),
    ];
    let mut failures = Vec::new();
    for (extra, expected) in &cases {
        let out = run(&[&base[..], &extra[..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) || !stderr.contains(expected) {
            failures.push(format!("{extra:?}: exit {:?}: {stderr}", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let out = run(&[&base[..], &ok[..], &["--protocol", "udp"][..]].concat()[..]);
    // clap refuses --protocol twice; the udp form is checked on its own below.
    assert_eq!(out.status.code(), Some(2));
    let mut udp = base.to_vec();
    udp[2] = "udp";
    for args in [base.to_vec(), udp] {
        let out = run(&[&args[..], &ok[..]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && stdout.contains("forwarding      in XDP, IP-in-IP to group \"server_group-1\""),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A private key that group or others may read is refused (naming the flag and the file)
/// unless the operator says otherwise.
#[test]
fn readable_private_keys_are_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let f = files();
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let args = base(&f);
    let out = run(&[&["check"][..], &args[..]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--key \"{}\": a private key readable by group or others (mode 0644)",
            f.key
        )),
        "{stderr}"
    );
    let out = run(&[&["check"][..], &args[..], &["--allow-readable-keys"][..]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What clap itself refuses is one line in edgelb's words too, with exit code 2; the words a
/// config file accepts are accepted by the flags, in any case.
#[test]
fn usage_errors_are_one_line_and_flags_take_the_files_words() {
    let f = files();
    let refused: [(&[&str], &str); 8] = [
        (
            &["--http2", "maybe"],
            "edgelb: error: --http2 \"maybe\": expected one of: on, off",
        ),
        (
            &["--idle-timeout", "-1"],
            "edgelb: error: --idle-timeout \"-1\": must be a whole number of seconds, 0-4000",
        ),
        (
            &["--bogus"],
            "edgelb: error: \"--bogus\": no such flag (edgelb --help lists them)",
        ),
        // A value that looks like a negative number is the flag's value, whatever the flag.
        (
            &["--tag", "-1"],
            "edgelb: error: --tag \"-1\": expected KEY=VALUE",
        ),
        (&["--hc-port"], "edgelb: error: --hc-port: needs a value"),
        (
            &["--user", "no-such-user-here"],
            "edgelb: error: --user \"no-such-user-here\": no such user on this host",
        ),
        (
            &["--rule", "path-regex=([;action=forward"],
            "edgelb: error: --rule \"path-regex=([;action=forward\": path-regex \"([\": not a \
             valid regex (Rust regex syntax, at most 1048576 bytes compiled): unclosed character \
             class",
        ),
        (
            &["--backend", "127.0.0.1:70000"],
            "edgelb: error: --backend \"127.0.0.1:70000\": port 70000 is out of range 1-65535",
        ),
    ];
    for (extra, expected) in refused {
        let mut args = vec!["check"];
        args.extend(
            base(&f)
                .into_iter()
                .filter(|a| *a != "--backend" && *a != "127.0.0.1:18080"),
        );
        if !extra.contains(&"--backend") {
            args.extend(["--backend", "127.0.0.1:18080"]);
        }
        args.extend(extra);
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim_end(), expected, "{extra:?}");
    }
    for extra in [
        ["--http2", "true"],
        ["--http2", "OFF"],
        ["--protocol", "HTTPS"],
        ["--algorithm", "Source-IP-Hash"],
        ["--description", "-1"],
        ["--log-format", "JSON"],
    ] {
        let mut args = vec!["check"];
        args.extend(base(&f));
        args.extend(extra);
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Next to `--config` without `--listen`, a listener's or group's flag has nothing to apply
/// to: refused, never ignored. The node's own flags apply, and one given explicitly beats the
/// file even at its default value.
#[test]
fn flags_next_to_a_config_file_apply_or_are_refused() {
    let dir = TempDir::new();
    let file = dir.write(
        "edgelb.toml",
        "drain_timeout = 3\n\n[[group]]\nname = \"g\"\nbackend = [\"127.0.0.1:30080\"]\n\n\
         [[listener]]\nlisten = \"127.0.0.1:18443\"\nprotocol = \"http\"\ngroup = \"g\"\n",
    );
    let config = file.display().to_string();
    // Valid values: refused because nothing takes them. An invalid one is refused sooner,
    // by the flag's own parser (the same one that reads the file's key).
    for (extra, expected) in [
        (
            vec!["--idle-timeout", "99999"],
            "edgelb: error: --idle-timeout \"99999\": must be a whole number of seconds, 0-4000",
        ),
        (
            vec!["--backend", "garbage"],
            "edgelb: error: --backend \"garbage\": expected ADDR:PORT[,weight=N], e.g. 10.0.1.5:8080,weight=3",
        ),
    ] {
        let mut args = vec!["check", "--config", &config];
        args.extend(extra.iter().copied());
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), expected);
    }
    for (extra, flag) in [
        (vec!["--idle-timeout", "99"], "--idle-timeout \"99\""),
        (
            vec!["--backend", "127.0.0.1:30081"],
            "--backend \"127.0.0.1:30081\"",
        ),
        (vec!["--http2", "off"], "--http2 \"off\""),
    ] {
        let mut args = vec!["check", "--config", &config];
        args.extend(extra.iter().copied());
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "edgelb: error: {flag}: sets the listener of --listen, which is not given: \
                 with --config, give --listen for a listener of these flags, or set it in the file"
            )
        );
    }
    let drain = |args: &[&str]| {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.trim_start().starts_with("drain-timeout"))
            .map(|l| l.split_whitespace().last().unwrap_or_default().to_string())
    };
    assert_eq!(drain(&["check", "--config", &config]), Some("3s".into()));
    // 10 is the flag's default: given explicitly, it still wins.
    assert_eq!(
        drain(&["check", "--config", &config, "--drain-timeout", "10"]),
        Some("10s".into())
    );
}

/// Settings that are valid alone but have no effect or contradict each other or the machine
/// are accepted with a warning each, naming the flags; a coherent configuration has none.
#[test]
fn settings_without_effect_get_a_warning() {
    let f = files();
    let mut args = vec!["check"];
    args.extend(base(&f));
    args.extend(["--max-connections", "100"]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no warnings expected"
    );

    let mut args = vec!["check"];
    args.extend(base(&f));
    args.extend([
        "--xdp-mode",
        "native",
        "--hc-interval",
        "2",
        "--hc-timeout",
        "9",
        "--max-connections",
        "10000000",
        "--syn-protect",
        "auto",
    ]);
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "edgelb: warning: --xdp-mode native has no effect without --xdp-iface: XDP stays off"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("--hc-timeout 9s is longer than --hc-interval 2s"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "--syn-protect answers SYNs in the XDP program, which is off (no --xdp-iface, or --xdp-mode off): the kernel answers them"
        ),
        "{stderr}"
    );
    let mut args = vec!["check"];
    args.extend(base(&f));
    args.extend(["--syn-protect", "on", "--syn-protect-threshold", "5000"]);
    let threshold = run(&args);
    let said = String::from_utf8_lossy(&threshold.stderr);
    assert_eq!(threshold.status.code(), Some(0), "{said}");
    assert!(
        said.contains(
            "--syn-protect-threshold 5000 has no effect with --syn-protect on: only auto reads it"
        ),
        "{said}"
    );
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(_, hard)| hard);
    if hard < 10_000_000 {
        assert!(
            stderr
                .contains("--max-connections: the listeners may hold 10000000 client connections")
                && stderr.contains(&format!("this process may open {hard} (RLIMIT_NOFILE)")),
            "{stderr}"
        );
    }
}

/// BGP settings are checked as a whole: a peer or router id needs the local AS, the local AS
/// needs a router id and a peer, values are range-checked; a complete set is accepted.
#[test]
fn bgp_settings_are_checked() {
    let f = files();
    let cases: [(&[&str], &str); 8] = [
        (
            &["--bgp-peer", "10.2.1.1,as=65000"],
            "--bgp-peer \"10.2.1.1,as=65000\": needs --bgp-local-as",
        ),
        (
            &["--bgp-local-as", "65001", "--bgp-peer", "10.2.1.1,as=65000"],
            "--bgp-router-id: required with --bgp-local-as",
        ),
        (
            &["--bgp-local-as", "65001", "--bgp-router-id", "10.2.1.2"],
            "--bgp-peer: required with --bgp-local-as",
        ),
        (
            &["--bgp-peer", "10.2.1.1"],
            "--bgp-peer \"10.2.1.1\": expected ADDR,as=ASN",
        ),
        (
            &["--bgp-hold-time", "2"],
            "--bgp-hold-time \"2\": must be a whole number of seconds, 3-65535",
        ),
        (
            &["--bgp-bfd"],
            "--bgp-bfd: has no effect without --bgp-local-as",
        ),
        (
            &[
                "--bgp-local-as",
                "65001",
                "--bgp-router-id",
                "10.2.1.2",
                "--bgp-peer",
                "fe80::1,as=65000",
            ],
            "--bgp-peer \"fe80::1,as=65000\": a link-local address needs an interface",
        ),
        (
            &[
                "--bgp-local-as",
                "65001",
                "--bgp-router-id",
                "0.0.0.0",
                "--bgp-peer",
                "10.2.1.1,as=65000",
            ],
            "--bgp-router-id \"0.0.0.0\": expected an IPv4 address of this node",
        ),
    ];
    for (extra, expected) in cases {
        let stderr = usage_error(&[&["check"][..], &base(&f)[..], extra].concat());
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    let mut args = vec!["check"];
    args.extend(base(&f));
    args.extend([
        "--bgp-local-as",
        "65001",
        "--bgp-router-id",
        "10.2.1.2",
        "--bgp-peer",
        "10.2.1.1,as=65000",
        "--bgp-peer",
        "fd00:2:1::1,as=65000",
    ]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file certificate close to expiry is warned about by `check` (and, the same lines, at
/// start, on reload and daily); one far from it is not.
#[test]
fn a_certificate_expiring_within_14_days_is_warned_about() {
    let dir = TempDir::new();
    // A certificate for `days`, named by its DNS names, or said to have none.
    let expiring = |name: &str, san: &[&str], names: &str, days: &str, left: [&str; 2]| {
        let (cert, key) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key")),
        );
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", days])
            .args(["-subj", &format!("/CN={name}")])
            .args(san)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let args = [
            &["check"][..],
            &base_with(&cert, &key),
            &["--allow-readable-keys"],
        ]
        .concat();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        // Made this second or the one before: `days` left, or a little less.
        let found = left.iter().any(|left| {
            stderr.contains(&format!(
                "edgelb: warning: listener \"listener-1\": certificate {cert} ({names}) expires in {left}: replace the file and reload"
            ))
        });
        assert!(found, "{stderr}");
    };
    expiring(
        "soon.example.com",
        &["-addext", "subjectAltName=DNS:soon.example.com"],
        "soon.example.com",
        "5",
        ["4 days 23 hours", "5 days 0 hours"],
    );
    expiring(
        "cn-only",
        &[],
        "no DNS names, subject CN=cn-only",
        "1",
        ["0 days 23 hours", "1 day 0 hours"],
    );

    let f = files();
    let out = run(&[&["check"][..], &base(&f)[..]].concat());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("expires in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--accept-proxy-protocol` needs `--proxy-protocol-from` (and the reverse), and neither it
/// nor `--backend-proxy-protocol` has a place on a tcp/udp listener, whose packets XDP
/// forwards unchanged. The file keys take the same values, a CIDR or a list of them.
#[test]
fn proxy_protocol_flags_are_checked() {
    let f = files();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--accept-proxy-protocol", "v1"],
            "edgelb: error: --accept-proxy-protocol \"v1\": needs --proxy-protocol-from CIDR,...",
        ),
        (
            &["--proxy-protocol-from", "10.0.0.0/8"],
            "edgelb: error: --proxy-protocol-from \"10.0.0.0/8\": says who may send a PROXY protocol header, and none is read: give --accept-proxy-protocol v1|v2 too",
        ),
        (
            &["--accept-proxy-protocol", "v3"],
            "edgelb: error: --accept-proxy-protocol \"v3\": expected one of: v1, v2",
        ),
        (
            &["--backend-proxy-protocol", "on"],
            "edgelb: error: --backend-proxy-protocol \"on\": expected one of: off, v1, v2",
        ),
        (
            &[
                "--accept-proxy-protocol",
                "v2",
                "--proxy-protocol-from",
                "10.0.0.0/33",
            ],
            "edgelb: error: --proxy-protocol-from \"10.0.0.0/33\"",
        ),
        (
            &[
                "--accept-proxy-protocol",
                "v2",
                "--proxy-protocol-from",
                "10.0.0.0/8",
                "--http3",
                "on",
            ],
            "edgelb: error: --http3 \"on\": QUIC connections carry no PROXY protocol header",
        ),
    ];
    for (extra, expected) in cases {
        let stderr = usage_error(&[&["check"][..], &base(&f)[..], extra].concat());
        assert!(stderr.starts_with(expected), "{extra:?}: {stderr}");
    }
    let tcp = [
        "check",
        "--protocol",
        "tcp",
        "--listen",
        "10.100.0.1:5000",
        "--backend",
        "127.0.0.1:5000",
        "--xdp-iface",
        "lo",
        "--algorithm",
        "source-ip-hash",
    ];
    let l4_cases: [(&[&str], &str); 2] = [
        (
            &[
                "--accept-proxy-protocol",
                "v2",
                "--proxy-protocol-from",
                "10.0.0.0/8",
            ],
            "--accept-proxy-protocol \"v2\": a tcp listener is forwarded in the kernel by XDP and never reads the header: only https and http listeners accept it",
        ),
        (
            &["--backend-proxy-protocol", "v1"],
            "--backend-proxy-protocol \"v1\": group \"server_group-1\" is behind a tcp listener, whose packets XDP forwards unchanged",
        ),
    ];
    for (extra, expected) in l4_cases {
        let stderr = usage_error(&[&tcp[..], extra].concat());
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    for extra in [
        &[
            "--accept-proxy-protocol",
            "V2",
            "--proxy-protocol-from",
            "10.0.0.0/8,192.0.2.1",
            "--backend-proxy-protocol",
            "v1",
        ][..],
        &[
            "--accept-proxy-protocol",
            "v1",
            "--proxy-protocol-from",
            "::1",
        ],
    ] {
        let out = run(&[&["check"][..], &base(&f)[..], extra].concat());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let dir = TempDir::new();
    let file = |name: &str, listener: &str, group: &str| {
        dir.write(
            name,
            format!(
                "[[group]]\nname = \"g\"\nbackend = [\"127.0.0.1:30080\"]\n{group}\n\n\
                 [[listener]]\nlisten = \"127.0.0.1:18080\"\nprotocol = \"http\"\ngroup = \"g\"\n{listener}\n"
            ),
        )
        .display()
        .to_string()
    };
    let good = [
        file(
            "one.toml",
            "accept_proxy_protocol = \"v2\"\nproxy_protocol_from = \"10.0.0.0/8\"",
            "backend_proxy_protocol = \"v2\"",
        ),
        file(
            "list.toml",
            "accept_proxy_protocol = \"v1\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"fd00::/8\"]",
            "backend_proxy_protocol = \"off\"",
        ),
    ];
    for config in &good {
        let out = run(&["check", "--config", config]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad = file("bad.toml", "accept_proxy_protocol = \"v2\"", "");
    let out = run(&["check", "--config", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("accept_proxy_protocol = \"v2\": needs proxy_protocol_from CIDR,..."),
        "{stderr}"
    );
}

#[test]
fn help_is_grouped_by_topic_and_check_help_points_to_it() {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    let headings: Vec<&str> = help
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(':'))
        .collect();
    for heading in [
        "Listener:",
        "TLS:",
        "Timeouts and limits:",
        "Access control:",
        "Backend group:",
        "Health checks and slow start:",
        "Sticky sessions:",
        "XDP:",
        "Operation:",
        "ACME certificates:",
        "Logging:",
        "BGP:",
    ] {
        assert!(
            headings.contains(&heading),
            "{heading} missing: {headings:?}"
        );
    }
    assert_eq!(headings.len(), 14, "{headings:?}");
    // Every flag sits under its topic, not in one list: Options holds only the flags that
    // choose where the configuration comes from, and help and version.
    let options: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Options:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .collect();
    assert_eq!(
        options,
        [
            "--config",
            "--test-config",
            "--config-etcd",
            "--config-prefix",
            "--help",
            "--version"
        ],
        "{help}"
    );
    let tls: String = help
        .lines()
        .skip_while(|l| *l != "TLS:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        tls.contains("--client-ca") && !tls.contains("--backend "),
        "{tls}"
    );
    // Every flag says what it does, on the line below it: a doc comment that slid onto the
    // next field once left --backend-ca bare and gave --backend-proxy-protocol its words.
    let lines: Vec<&str> = help.lines().collect();
    let bare: Vec<&str> = lines
        .windows(2)
        .filter(|w| {
            // A flag's line (`--x <V>`, `-c, --config <PATH>`), not one of its possible values.
            let line = w[0].trim_start();
            line.starts_with('-') && !line.starts_with("- ") && w[1].trim().is_empty()
        })
        .map(|w| w[0].trim())
        .collect();
    assert!(bare.is_empty(), "flags without a description: {bare:?}");
    let proxy: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.contains("--backend-proxy-protocol"))
        .take(2)
        .copied()
        .collect();
    assert!(
        proxy
            .get(1)
            .is_some_and(|l| l.trim().starts_with("Send a PROXY protocol header")),
        "{proxy:?}"
    );
    let protocol: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.contains("--protocol <PROTO>"))
        .take(10)
        .collect();
    assert!(
        protocol.contains(&"          Possible values:")
            && protocol.iter().any(|l| l.trim() == "- udp"),
        "the choices of --protocol are listed: {protocol:?}"
    );

    let out = run(&["check", "--help"]);
    let check = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        check.lines().count() < 20 && check.contains("`edgelb --help` lists them"),
        "{check}"
    );
}

#[test]
fn the_license_files_are_the_ones_cargo_toml_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        manifest.contains("license = \"MIT OR Apache-2.0\""),
        "{manifest}"
    );
    for (file, words) in [
        (
            "LICENSE-MIT",
            "Permission is hereby granted, free of charge",
        ),
        ("LICENSE-APACHE", "Apache License"),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        assert!(text.contains(words), "{file} missing or not the license");
    }
}

/// A key file whose line breaks were lost (`echo $KEY > key.pem`) is refused without its
/// contents in the message: the message reaches logs, `/status` and `systemctl status`.
#[test]
fn a_key_file_that_lost_its_line_breaks_is_refused_without_quoting_it() {
    let dir = TempDir::new();
    let good = edgelb_tests::certs::self_signed(&dir, "flat", &[]);
    let pem = std::fs::read_to_string(&good.key).expect("key");
    let flat = dir.write_private("flat-oneline.key", pem.replace('\n', " "));
    let secret = pem
        .lines()
        .find(|l| l.len() > 40)
        .expect("a base64 line")
        .to_string();
    let (cert, key) = (good.cert.display().to_string(), flat.display().to_string());
    let out = run(&[&["check"][..], &base_with(&cert, &key)].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--key") && stderr.contains("line breaks"),
        "{stderr}"
    );
    let as_numbers: Vec<String> = secret.bytes().take(8).map(|b| b.to_string()).collect();
    assert!(
        !stderr.contains(&secret[..16]) && !stderr.contains(&as_numbers.join(", ")),
        "the key's bytes are in the message: {stderr}"
    );
}
