//! What the client commands print, and how they end, with real processes
//! (`ponte server` and the `ponte` client on profiles in temp dirs):
//!
//! - peer-controlled text cannot forge lines or send terminal escapes;
//! - a closed stdout ends a command quietly and loses no message;
//! - the `send` that discovers a changed identity key fails like later ones;
//! - handle checks, `verify --confirm` on an unknown contact,
//!   `--connect-timeout 0`, and `[failed ✗]` printed once.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PONTE: &str = env!("CARGO_BIN_EXE_ponte");
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

/// `ponte server` on a fresh port; waits for the address line.
struct Server {
    child: Child,
    addr: SocketAddr,
    key: String,
}

impl Server {
    fn start(data: &Path) -> Self {
        let mut child = Command::new(PONTE)
            .args(["server", "--listen", "127.0.0.1:0", "--no-admin", "--data"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ponte://") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx.recv_timeout(WAIT).expect("server printed its address");
        let rest = line.strip_prefix("ponte://").unwrap();
        let (hostport, key) = rest.split_once('#').unwrap();
        Self {
            child,
            addr: hostport.parse().unwrap(),
            key: key.to_owned(),
        }
    }

    fn address(&self) -> String {
        format!("ponte://{}#{}", self.addr, self.key)
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts on 127.0.0.1 and relays each connection to the current target,
/// so one server address can lead to different server processes.
struct Forwarder {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (target.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let to = *t.lock().unwrap();
                        let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        else {
                            continue; // server down: the client sees a closed connection
                        };
                        for (mut from, mut into) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            thread::spawn(move || {
                                let mut buf = [0u8; 16 * 1024];
                                loop {
                                    match from.read(&mut buf) {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => {
                                            if into.write_all(&buf[..n]).is_err() {
                                                break;
                                            }
                                        }
                                    }
                                }
                                let _ = into.shutdown(std::net::Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { addr, target, stop }
    }

    fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn command(profile: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(PONTE);
    cmd.args(args)
        .arg("--profile")
        .arg(profile)
        .env_remove("PONTE_PASSPHRASE")
        .env_remove("PONTE_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run a client command with a deadline.
fn ponte(profile: &Path, args: &[&str]) -> Output {
    wait_output(command(profile, args).spawn().unwrap(), WAIT)
}

/// Run a client command whose stdout is a pipe nobody reads: its read end
/// is closed before the command writes anything, so every write to stdout
/// fails with EPIPE.
fn ponte_stdout_closed(profile: &Path, args: &[&str]) -> Output {
    let mut child = command(profile, args).spawn().unwrap();
    drop(child.stdout.take());
    wait_output(child, WAIT)
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("command did not finish within {limit:?}");
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn register(profile: &Path, address: &str, name: &str) {
    let out = ponte(profile, &["register", "--server", address, name, "--json"]);
    assert_eq!(json_lines(&ok(&out))[0]["handle"], name);
}

fn with_text<'a>(lines: &'a [serde_json::Value], text: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|v| v["text"] == text).collect()
}

/// Whether a terminal would act on `c` rather than show it.
fn dangerous(c: char) -> bool {
    (c.is_control() && c != '\n')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
        || c == '\u{2028}'
        || c == '\u{2029}'
}

/// Exited on its own with this code (not killed, not a panic's 101).
fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}\nstdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    assert!(!stderr(out).contains("panicked"), "{what}: {}", stderr(out));
}

// ---------------------------------------------------------------- tests

/// A contact's text that tries to forge a second message line (with a fake
/// "[UNVERIFIED NEW KEY]"-free sender line), colour the terminal, move the
/// cursor, ring the bell and reverse the line with bidi controls.
const EVIL: &str = "hi\n2026-01-01T00:00:00Z eve -> bob: spoofed \x1b[31mRED\r\x07\x08\x7f\u{85}\u{9b}31m \u{202e}txet\u{2066}iso\u{2069}\t— café 日本 🎉";
/// How the text mode shows it: one line, every control visibly escaped,
/// the ordinary Unicode untouched.
const EVIL_SHOWN: &str = r"hi\n2026-01-01T00:00:00Z eve -> bob: spoofed \u{1b}[31mRED\r\u{7}\u{8}\u{7f}\u{85}\u{9b}31m \u{202e}txet\u{2066}iso\u{2069}\t— café 日本 🎉";

#[test]
fn peer_text_cannot_forge_lines_or_reach_the_terminal_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");

    let sent = ok(&ponte(&alice, &["send", "bob", EVIL]));
    let received = ok(&ponte(&bob, &["sync"]));
    let bob_history = ok(&ponte(&bob, &["history", "alice"]));
    let alice_history = ok(&ponte(&alice, &["history", "bob"]));
    for (what, text, header) in [
        ("bob's sync", &received, "alice -> bob: "),
        ("bob's history", &bob_history, "alice -> bob: "),
        ("alice's send", &sent, "alice -> bob: "),
        ("alice's history", &alice_history, "alice -> bob: "),
    ] {
        assert_eq!(text.lines().count(), 1, "{what}: one line only: {text:?}");
        assert!(
            !text.chars().any(dangerous),
            "{what}: a control reached stdout: {text:?}"
        );
        assert!(
            text.contains(&format!("{header}{EVIL_SHOWN}")),
            "{what}: {text:?}"
        );
    }
    assert!(!received.contains("[UNVERIFIED NEW KEY]"));

    // --json keeps the raw text (JSON escapes it).
    let v = json_lines(&ok(&ponte(&bob, &["history", "alice", "--json"])));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["text"], EVIL);
    drop(server);
}

#[test]
fn closed_stdout_ends_commands_quietly_and_loses_no_message() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");
    let texts = ["first of three", "second of three", "third of three"];
    for t in texts {
        ok(&ponte(&alice, &["send", "bob", t]));
    }

    // Bob's sync cannot print: it stops quietly (exit 0, no panic), and
    // history cannot print either. Neither marks anything as shown.
    let out = ponte_stdout_closed(&bob, &["sync"]);
    assert_exit(&out, 0, "sync into a closed pipe");
    let out = ponte_stdout_closed(&bob, &["history", "alice"]);
    assert_exit(&out, 0, "history into a closed pipe");
    let v = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    for t in texts {
        assert_eq!(with_text(&v, t).len(), 1, "{t}: {v:?}");
    }
    let v = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert!(v.iter().all(|m| m["from"] != "alice"), "shown twice: {v:?}");

    // The other commands end quietly too.
    for args in [
        &["verify", "alice"][..],
        &["verify", "alice", "--json"][..],
        &["contacts"][..],
        &["status"][..],
        &["history", "alice"][..],
        &["via", "list"][..],
        &["send", "alice", "reply into a closed pipe"][..],
    ] {
        let out = ponte_stdout_closed(&bob, args);
        assert_exit(&out, 0, &format!("{args:?} into a closed pipe"));
    }
    let v = json_lines(&ok(&ponte(&alice, &["sync", "--json"])));
    assert_eq!(with_text(&v, "reply into a closed pipe").len(), 1, "{v:?}");

    // listen: its reader goes away; the next message ends it (exit 0),
    // and the message it could not print is printed by the next sync.
    let mut listen = command(&bob, &["listen"]).spawn().unwrap();
    let stderr_pipe = listen.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut connected = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("connected to") => {
                connected = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(connected, "listen connected");
    drop(listen.stdout.take());
    ok(&ponte(&alice, &["send", "bob", "while nobody reads"]));
    let out = wait_output(listen, WAIT);
    assert_exit(&out, 0, "listen whose reader went away");
    let v = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert_eq!(with_text(&v, "while nobody reads").len(), 1, "{v:?}");
    drop(server);
}

#[test]
fn the_send_that_discovers_a_key_change_fails_like_the_next_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("server-a"), tmp.path().join("server-b"));
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    let new_bob = tmp.path().join("new-bob");

    // Two servers with the same key and the same accounts but for "bob":
    // a copy of the first one's data taken before bob registered.
    let server = Server::start(&data_a);
    let fwd = Forwarder::start(server.addr);
    let address = format!("ponte://{}#{}", fwd.addr, server.key);
    let key = server.key.clone();
    register(&alice, &address, "alice");
    server.kill();
    std::fs::create_dir(&data_b).unwrap();
    for entry in std::fs::read_dir(&data_a).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, data_b.join(path.file_name().unwrap())).unwrap();
    }
    let server = Server::start(&data_a);
    fwd.retarget(server.addr);
    register(&bob, &address, "bob");
    let v = json_lines(&ok(&ponte(&alice, &["send", "bob", "before", "--json"])));
    assert_eq!(v[0]["status"], "sent");

    // Now the server hands out another device's keys for "bob".
    server.kill();
    let server = Server::start(&data_b);
    assert_eq!(server.key, key);
    fwd.retarget(server.addr);
    register(&new_bob, &address, "bob");

    // The send that finds the change: exit 1, the SECURITY error, no
    // `[queued 🕓]` line; its message is held (queued), neither sent nor lost.
    let out = ponte(&alice, &["send", "bob", "held after the change"]);
    assert_exit(&out, 1, "the send that discovers the change");
    assert!(
        stderr(&out).contains("ponte: error: SECURITY: bob's identity key has CHANGED"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "", "nothing printed as queued");
    // The next send is refused the same way (before anything is stored).
    let out = ponte(&alice, &["send", "bob", "refused outright", "--json"]);
    assert_exit(&out, 1, "the next send");
    assert!(
        stderr(&out).contains("ponte: error: SECURITY: bob's identity key has CHANGED"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
    let h = json_lines(&ok(&ponte(&alice, &["history", "bob", "--json"])));
    let held = with_text(&h, "held after the change");
    assert_eq!(held.len(), 1, "{h:?}");
    assert_eq!(held[0]["status"], "queued");
    assert!(with_text(&h, "refused outright").is_empty());
    let c = json_lines(&ok(&ponte(&alice, &["contacts", "--json"])));
    assert_eq!(c[0]["key_changed"], true);
    let v = json_lines(&ok(&ponte(&new_bob, &["sync", "--json"])));
    assert!(with_text(&v, "held after the change").is_empty());

    // After comparing and confirming, the held message goes out to the new key.
    ok(&ponte(&alice, &["verify", "bob"]));
    ok(&ponte(&alice, &["verify", "bob", "--confirm"]));
    ok(&ponte(&alice, &["sync"]));
    let v = json_lines(&ok(&ponte(&new_bob, &["sync", "--json"])));
    assert_eq!(with_text(&v, "held after the change").len(), 1, "{v:?}");
    drop(server);
}

#[test]
fn names_confirm_timeouts_and_failed_ticks() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");

    // A malformed handle: every command taking a NAME refuses it the same way.
    for args in [
        &["history", "BAD!"][..],
        &["verify", "BAD!"][..],
        &["verify", "BAD!", "--confirm"][..],
        &["send", "BAD!", "hello"][..],
        &["register", "--server", &address, "BAD!"][..],
    ] {
        let out = ponte(&alice, args);
        assert_exit(&out, 1, &format!("{args:?}"));
        assert_eq!(
            stderr(&out).trim_end(),
            r#"ponte: error: invalid handle "BAD!": a handle uses only a-z, 0-9 and _"#,
            "{args:?}"
        );
    }

    // --confirm on a contact whose key was never fetched: refused, nothing
    // stored; after `verify NAME` it works.
    let out = ponte(&alice, &["verify", "bob", "--confirm"]);
    assert_exit(&out, 1, "confirm an unknown contact");
    assert!(
        stderr(&out).contains("run `ponte verify bob` first"),
        "{}",
        stderr(&out)
    );
    assert!(json_lines(&ok(&ponte(&alice, &["contacts", "--json"]))).is_empty());
    let v = json_lines(&ok(&ponte(&alice, &["verify", "bob", "--json"])));
    assert_eq!(v[0]["verified"], false);
    assert!(
        ok(&ponte(&alice, &["verify", "bob", "--confirm"])).contains("bob is now marked verified")
    );
    let c = json_lines(&ok(&ponte(&alice, &["contacts", "--json"])));
    assert_eq!(c[0]["verified"], true);

    // --connect-timeout 0 is a usage error, not 1 s.
    let out = ponte(&alice, &["contacts", "--connect-timeout", "0"]);
    assert_exit(&out, 2, "--connect-timeout 0");
    assert!(
        stderr(&out).contains("--connect-timeout"),
        "{}",
        stderr(&out)
    );
    ok(&ponte(&alice, &["contacts", "--connect-timeout", "1"]));

    // Refused for good: the status word once.
    let out = ponte(&alice, &["send", "nobody", "into the void"]);
    assert_exit(&out, 1, "send to nobody");
    let line = stdout(&out);
    assert!(line.trim_end().ends_with("[failed ✗]"), "{line}");
    drop(server);
}
