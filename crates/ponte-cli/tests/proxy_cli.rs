//! `ponte proxy` as a real process: config checking, printing, share links,
//! relaying, and a clean exit on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn ponte() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ponte"))
}

/// A running `ponte proxy` whose log (stderr) a thread reads line by line.
struct Relay {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: String,
}

impl Relay {
    fn start(args: &[&str], config: Option<&Path>) -> Relay {
        let mut cmd = ponte();
        cmd.arg("proxy").args(args);
        if let Some(c) = config {
            cmd.arg("-c").arg(c);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Relay {
            child,
            lines,
            log: String::new(),
        }
    }

    /// The first log line (from now on) containing `needle`, waiting at most 10 s.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with `{needle}` in:\n{}", self.log),
            }
        }
    }

    /// The port of the first listener, from its "listening on" line.
    fn port(&mut self) -> u16 {
        let line = self.wait_for("listening on 127.0.0.1:");
        line.split("listening on 127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line}"))
    }

    /// SIGTERM, then the exit status and the whole log (waits at most 10 s).
    fn stop(mut self) -> (ExitStatus, String) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader ends at EOF, once the process is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        (status, std::mem::take(&mut self.log))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn check_config_reports_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "[upstream.a]\nservers = [\"x.example:1\"]\n\n[[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"b\"\n",
    )
    .unwrap();
    let out = ponte()
        .args(["proxy", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("relay.toml:7:12: listener[0].upstream"),
        "{err}"
    );
    assert!(err.contains("no upstream named `b`"), "{err}");

    std::fs::write(&path, "[[listener]]\nname = \"l\"\nlisen = []\n").unwrap();
    let out = ponte()
        .args(["proxy", "--check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("relay.toml:3:1: listener[0].lisen: unknown field `lisen`"),
        "{err}"
    );

    // Each mistake names its key, never an empty one.
    for (text, want) in [
        (
            "[limits]\nmax_connections = 10\ncolour = \"red\"\n",
            "relay.toml:3:1: limits.colour: unknown field `colour`",
        ),
        (
            "[upstream.u]\nservers = [\"x.example:1\"]\nsend_proxy = \"v3\"\n",
            "relay.toml:3:14: upstream.u.send_proxy: unknown variant `v3`",
        ),
        (
            "[[listener]]\nname = \"l\"\nlisten = [\"0.0.0.0:70000\"]\ntls = \"selfsigned\"\n",
            "relay.toml:3:10: listener[0].listen[0]: `0.0.0.0:70000` is not an IP address",
        ),
        (
            "[[listener]]\nname = \"l\"\nlisten = [\"0.0.0.0:7000\"]\ntls = \"selfsigned\"\n",
            "relay.toml:4:7: listener[0].tls: invalid value",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = ponte()
            .args(["proxy", "--check-config", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(want), "{err}");
        assert!(!err.contains(": :"), "{err}");
    }
}

fn check_config(path: &std::path::Path, cwd: &std::path::Path) -> (Option<i32>, String) {
    let out = ponte()
        .current_dir(cwd)
        .args(["proxy", "--check-config", "-c"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `--check-config` refuses what the start would refuse: certificate files
/// that are missing or not PEM, an upstream on port 0. Relative certificate
/// paths are taken from the config file's folder, whatever the working
/// directory, and the error names the resolved path.
#[test]
fn check_config_does_what_the_start_does_short_of_binding() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(conf.join("certs")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let path = conf.join("relay.toml");
    let config = |tls: &str, server: &str| {
        format!(
            "[upstream.u]\nservers = [\"{server}\"]\n[[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\ntls = {tls}\nupstream = \"u\"\n"
        )
    };
    let files = r#"{ cert = "certs/fullchain.pem", key = "certs/privkey.pem" }"#;

    // Missing: the error names the path resolved from the config's folder.
    std::fs::write(&path, config(files, "127.0.0.1:5222")).unwrap();
    let (code, out) = check_config(&path, &elsewhere);
    assert_eq!(code, Some(1), "{out}");
    let resolved = conf.join("certs/fullchain.pem");
    assert!(
        out.contains(&format!(
            "relay.toml: listener[0].tls (`l`): {}: no such file",
            resolved.display()
        )),
        "{out}"
    );
    assert!(out.contains("taken from the file's folder"), "{out}");
    assert!(!out.contains(": ok"), "{out}");

    // Present but not PEM.
    std::fs::write(&resolved, "not a certificate").unwrap();
    std::fs::write(conf.join("certs/privkey.pem"), "not a key").unwrap();
    let (code, out) = check_config(&path, &elsewhere);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no CERTIFICATE in the file"), "{out}");

    // The real start refuses the same config, with the same words.
    let start = ponte()
        .current_dir(&elsewhere)
        .args(["proxy", "--no-admin", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(start.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&start.stderr).contains("no CERTIFICATE in the file"));

    // An upstream on port 0.
    std::fs::write(&path, config("\"self-signed\"", "127.0.0.1:0")).unwrap();
    let (code, out) = check_config(&path, &elsewhere);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("port must be 1-65535"), "{out}");

    // An upstream that is the relay itself (its listener on 127.0.0.1:5222):
    // refused by the check and the start, while its share link still prints.
    let looped =
        config("\"self-signed\"", "127.0.0.1:5222").replace("127.0.0.1:0", "127.0.0.1:5222");
    std::fs::write(&path, looped).unwrap();
    let (code, out) = check_config(&path, &elsewhere);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("upstream.u.servers[0]: 127.0.0.1:5222 is this relay's own listener[0]"),
        "{out}"
    );
    let link = ponte()
        .args(["proxy", "link", "--no-qr", "--host", "relay.example", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        link.status.success(),
        "{}",
        String::from_utf8_lossy(&link.stderr)
    );

    std::fs::write(&path, config("\"self-signed\"", "127.0.0.1:5222")).unwrap();
    let (code, out) = check_config(&path, &elsewhere);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(": ok (1 listeners, 1 upstreams)"), "{out}");
}

#[test]
fn printed_presets_load_back() {
    for args in [
        vec!["--preset", "whatsapp"],
        vec!["--preset", "ponte", "--upstream", "server.example:5222"],
    ] {
        let out = ponte()
            .arg("proxy")
            .args(&args)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, &out.stdout).unwrap();
        let check = ponte()
            .args(["proxy", "--check-config", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let again = ponte()
            .args(["proxy", "--print-config", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(again.stdout, out.stdout, "printing is a fixed point");
    }
    // The server's address as operators hand it out works as --upstream.
    let key = "A".repeat(43);
    let out = ponte()
        .args(["proxy", "--preset", "ponte", "--print-config", "--upstream"])
        .arg(format!("ponte://server.example:6000#{key}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("servers = [\"server.example:6000\"]"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = ponte()
        .args(["proxy", "--preset", "ponte", "--check-config", "--upstream"])
        .arg("ponte://server.example:6000#not-a-key")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give only its HOST:PORT"), "{err}");
    assert!(!err.contains("1-65535"), "{err}");
    let out = ponte()
        .args(["proxy", "--preset", "ponte", "--check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
}

#[test]
fn share_link_honours_configured_ports() {
    let out = ponte()
        .args(["proxy", "link", "--host", "relay.example.org", "--no-qr"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "https://wa.me/proxy?host=relay.example.org&chatPort=443&mediaPort=587&chatTLS=true\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/relay-whatsapp.toml"
    ))
    .unwrap()
    .replace("0.0.0.0:443\"", "0.0.0.0:4443\"")
    .replace("0.0.0.0:587\"", "0.0.0.0:5870\"");
    std::fs::write(&path, text).unwrap();
    let out = ponte()
        .args(["proxy", "link", "--host", "203.0.113.5", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.starts_with(
            "https://wa.me/proxy?host=203.0.113.5&chatPort=4443&mediaPort=5870&chatTLS=true\n"
        ),
        "{s}"
    );
    assert!(s.contains('█'), "QR code drawn");
    let bad = ponte()
        .args(["proxy", "link", "--host", "http://x/"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Run the relay binary with a loopback config, relay bytes, then SIGTERM.
#[test]
fn runs_relays_and_exits_cleanly_on_sigterm() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream.u]\nservers = [\"{up_addr}\"]\nsend_proxy = \"v1\"\nhealth_check_interval = \"0s\"\n\
             [timeouts]\ndrain = \"2s\"\n\
             [[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n"
        ),
    )
    .unwrap();
    let mut child = ponte()
        .args(["proxy", "-c"])
        .arg(&path)
        // Even the most verbose logging has no client address.
        .env("RUST_LOG", "trace")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut port = None;
    let mut log = String::new();
    for _ in 0..50 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push_str(&line);
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            port = rest
                .trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse::<u16>().ok());
            break;
        }
    }
    let port = port.unwrap_or_else(|| panic!("no listening line in: {log}"));
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_addr = c.local_addr().unwrap().to_string();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"ping").unwrap();
    // Skip the health check connection (none: interval 0s, but the start check connects once).
    let mut server = loop {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut first = [0u8; 1];
        if s.read(&mut first).unwrap_or(0) == 1 {
            let mut rest = vec![0u8; 256];
            let n = s.read(&mut rest).unwrap();
            let mut all = vec![first[0]];
            all.extend_from_slice(&rest[..n]);
            let text = String::from_utf8_lossy(&all).into_owned();
            assert!(
                text.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
                "{text}"
            );
            if !text.ends_with("ping") {
                let mut p = [0u8; 4];
                s.read_exact(&mut p).unwrap();
                assert_eq!(&p, b"ping");
            }
            break s;
        }
    };
    server.write_all(b"pong").unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong");
    drop(c);
    drop(server);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("did not exit after SIGTERM")
    });
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(rest.contains("stopped"), "the log is captured: {rest}");
    assert!(
        !rest.contains(&client_addr),
        "client address {client_addr} logged: {rest}"
    );
}

/// A server going down is logged when a client's connect finds it first
/// (the health check runs hourly here), and so is its coming back.
#[test]
fn upstream_outage_and_recovery_are_logged_whoever_notices() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream.u]\nservers = [\"{up_addr}\"]\nhealth_check_interval = \"1h\"\n\
             [timeouts]\nconnect = \"1s\"\ndrain = \"2s\"\n\
             [[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n"
        ),
    )
    .unwrap();
    let mut relay = Relay::start(&["--no-admin"], Some(&path));
    let port = relay.port();
    // The start's check connects once; take it so the port is quiet.
    drop(upstream.accept().unwrap());
    drop(upstream);

    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"ping");
    let mut buf = [0u8; 4];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)), "closed");
    let down = relay.wait_for("upstream server unreachable");
    assert!(down.contains("noticed by a client's connect"), "{down}");
    assert!(down.contains(&up_addr.to_string()), "{down}");

    let upstream = TcpListener::bind(up_addr).unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"ping").unwrap();
    let (mut s, _) = upstream.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    let up = relay.wait_for("upstream server reachable again");
    assert!(up.contains("noticed by a client's connect"), "{up}");
    drop((c, s));
    let (status, log) = relay.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(log.matches("unreachable").count(), 1, "{log}");
}

/// An admin address that a listener also uses is refused naming both.
#[test]
fn admin_address_clash_names_the_admin_endpoint() {
    let out = ponte()
        .args(["proxy", "--preset", "ponte", "--upstream", "s.example:5222"])
        .args(["--admin", "0.0.0.0:5222", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listener[1].listen: address 0.0.0.0:5222 is used twice: also by [admin] listen (--admin)"),
        "{err}"
    );
    let out = ponte()
        .args(["proxy", "--preset", "ponte", "--upstream", "s.example:5222"])
        .args(["--admin", "127.0.0.1:443", "--check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("address 0.0.0.0:443 overlaps 127.0.0.1:443 of [admin] listen"),
        "{err}"
    );
}

/// SIGTERM with a connection still open: the drain period runs out and that
/// is said once, however many workers wait for the connections.
#[test]
fn drain_end_is_logged_once() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream.u]\nservers = [\"{up_addr}\"]\nhealth_check_interval = \"0s\"\n\
             [timeouts]\ndrain = \"500ms\"\n[tuning]\nworkers = 3\n\
             [[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n"
        ),
    )
    .unwrap();
    let mut relay = Relay::start(&["--no-admin"], Some(&path));
    let port = relay.port();
    drop(upstream.accept().unwrap()); // the start's check
                                      // Enough connections that every worker (the kernel spreads them by
                                      // address hash) is likely to hold some.
    let mut open = Vec::new();
    for _ in 0..12 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"ping").unwrap();
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        open.push((c, s));
    }
    let (status, log) = relay.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(log.matches("drain period over").count(), 1, "{log}");
    drop(open);
}

/// An admin endpoint off loopback is allowed, with a warning at start and
/// from --check-config; on loopback, none.
#[test]
fn admin_off_loopback_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        "[upstream.u]\nservers = [\"127.0.0.1:9\"]\nhealth_check_interval = \"0s\"\n\
         [[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n",
    )
    .unwrap();
    let out = ponte()
        .args(["proxy", "--admin", "0.0.0.0:8199", "--check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the admin endpoint 0.0.0.0:8199 is not on loopback"),
        "{err}"
    );

    // The open-file limit the start would warn about, too (the shell lowers
    // the hard limit for the one command).
    let out = Command::new("sh")
        .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_ponte"))
        .args(["proxy", "--check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "warning: the open-file limit (1024) is below what max_connections needs (55064)"
        ),
        "{err}"
    );

    let mut relay = Relay::start(&["--admin", "0.0.0.0:0"], Some(&path));
    let line = relay.wait_for("not on loopback");
    assert!(line.contains("WARN"), "{line}");
    relay.port();
    let (status, _) = relay.stop();
    assert_eq!(status.code(), Some(0));

    let mut relay = Relay::start(&["--admin", "127.0.0.1:0"], Some(&path));
    relay.port();
    let (status, log) = relay.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!log.contains("not on loopback"), "{log}");
}

/// A name that does not resolve (`.invalid` never does) is retried every
/// second here, and said once; its server is still reported unreachable.
#[test]
fn a_failing_dns_lookup_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        "[upstream.u]\nservers = [\"nothing.invalid:5222\"]\nresolve_interval = \"1s\"\n\
         health_check_interval = \"1s\"\n\
         [[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n",
    )
    .unwrap();
    let mut relay = Relay::start(&["--no-admin"], Some(&path));
    relay.wait_for("cannot resolve");
    relay.wait_for("upstream server unreachable");
    // Several more lookups and checks fail meanwhile.
    std::thread::sleep(Duration::from_millis(3500));
    let (status, log) = relay.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(log.matches("cannot resolve").count(), 1, "{log}");
    assert_eq!(log.matches("unreachable").count(), 1, "{log}");
}

/// A SIGTERM sent as soon as the relay says it listens stops it gracefully
/// (exit 0, "stopped"), not by the signal's default action.
#[test]
fn sigterm_right_after_start_is_graceful() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        "[upstream.u]\nservers = [\"127.0.0.1:9\"]\nhealth_check_interval = \"0s\"\n\
         [[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n",
    )
    .unwrap();
    for _ in 0..5 {
        let mut relay = Relay::start(&["--no-admin"], Some(&path));
        relay.wait_for("listening on");
        let (status, log) = relay.stop();
        assert_eq!(status.code(), Some(0), "{status:?}: {log}");
        assert!(log.contains("stopped"), "{log}");
    }
}
