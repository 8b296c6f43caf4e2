//! What a new user or operator runs into, with real processes: a server
//! start that fails creates nothing and a new key is announced loudly,
//! `server invite` on an open server says the token is not needed, `via
//! add` of a saved relay says so once, a wrong passphrase at the prompt is
//! asked again (on a pseudo-terminal), a profile without its `profile.key`
//! says it cannot be opened, and `history` of an unknown contact is an
//! error.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used, unsafe_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

mod common;
use common::{
    command, ok, ponte, register, stderr, stdout, wait_output, Killed, Server, PONTE, WAIT,
};

// ---------------------------------------------------------------- server

/// `ponte server --listen … ARGS… --data DATA`, logging at WARN.
fn server_command(data: &Path, listen: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(PONTE);
    cmd.args(["server", "--listen", listen])
        .args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .env_remove("PONTE_SERVER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Starts a server, waits for the address it prints, stops it, and returns
/// the address and everything it said on stderr up to then.
fn start_and_stop(data: &Path) -> (String, String) {
    let mut child = server_command(data, "127.0.0.1:0", &["--no-admin"])
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut child = Killed(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let address = rx
        .recv_timeout(WAIT)
        .expect("the server printed its address");
    child.kill();
    let mut said = String::new();
    err.read_to_string(&mut said).unwrap();
    (address, said)
}

/// A taken `--listen` or `--admin` address failed the start only after the
/// key and the database were created: a mistyped `--data` on a restart left
/// a new identity behind. The listeners are bound first now.
#[test]
fn a_server_start_on_a_taken_address_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (what, listen, admin) in [
        ("listen", taken_addr.as_str(), "off"),
        ("admin", "127.0.0.1:0", taken_addr.as_str()),
    ] {
        // A directory that does not exist stays absent; an empty one empty.
        let missing = dir.path().join(format!("missing-{what}"));
        for data in [&missing, &empty] {
            let out = wait_output(
                server_command(data, listen, &["--admin", admin])
                    .spawn()
                    .unwrap(),
                WAIT,
            );
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{what}: {err}");
            assert!(
                err.contains(&format!("cannot listen on {taken_addr}")),
                "{what}: {err}"
            );
            assert!(out.stdout.is_empty(), "{what}: {}", stdout(&out));
            assert!(!err.contains("NEW server key"), "{what}: {err}");
        }
        assert!(
            !missing.exists(),
            "{what}: {} was created",
            missing.display()
        );
        let left: Vec<_> = std::fs::read_dir(&empty)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{what}: created {left:?}");
    }
    drop(taken);
}

/// A second start on a running server's directory and address (the
/// listeners are bound first) is still told that the server runs, not that
/// the port is taken.
#[test]
fn a_second_start_on_the_same_directory_and_address_says_it_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data);
    let out = wait_output(
        server_command(&data, &first.addr.to_string(), &["--no-admin"])
            .spawn()
            .unwrap(),
        WAIT,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already running"), "{err}");
    assert!(!err.contains("cannot listen"), "{err}");
}

/// A new key was announced at INFO (hidden at RUST_LOG=warn, easy to miss
/// otherwise); it is a WARN now, with the address the key implies. A
/// restart with the same key says nothing of the kind.
#[test]
fn a_new_server_key_is_announced_as_a_warning_with_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (address, said) = start_and_stop(&data);
    assert!(address.starts_with("ponte://127.0.0.1:"), "{address}");
    let line = said
        .lines()
        .find(|l| l.contains("NEW server key"))
        .unwrap_or_else(|| panic!("no warning about the new key in {said:?}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&address), "{line}");
    assert!(
        line.contains(&data.join("server.key").display().to_string()),
        "{line}"
    );
    assert!(line.contains("check --data"), "{line}");
    let message = &line[line.find("created").unwrap()..];
    assert!(!message.contains("  "), "no runs of spaces: {line}");

    let (again, said) = start_and_stop(&data);
    let key = |a: &str| a.rsplit_once('#').unwrap().1.to_owned();
    assert_eq!(key(&again), key(&address));
    assert!(!said.contains("NEW server key"), "{said}");
}

/// A data directory whose `server.key` is gone but whose database is
/// there got a new key silently: a new identity for registered users, who
/// all refuse it. The start is refused, and no key is made.
#[test]
fn a_database_without_its_server_key_is_not_given_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    start_and_stop(&data);
    let key = data.join("server.key");
    std::fs::remove_file(&key).unwrap();
    let out = wait_output(
        server_command(&data, "127.0.0.1:0", &["--no-admin"])
            .spawn()
            .unwrap(),
        WAIT,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    assert!(
        err.contains("holds a server database but no server.key")
            && err.contains("ponte server backup"),
        "{err}"
    );
    assert!(!err.contains("NEW server key"), "{err}");
    assert!(!key.exists());
}

/// `server invite` on a server that is not invite-only printed a token as
/// if it were needed; it still prints it (alone on stdout), and notes on
/// stderr that anyone can register without one.
#[test]
fn an_invite_for_an_open_server_says_it_is_not_needed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let invite = || {
        let mut cmd = Command::new(PONTE);
        cmd.args(["server", "invite", "--data"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        wait_output(cmd.spawn().unwrap(), WAIT)
    };
    let token_alone = |out: &std::process::Output| {
        assert!(out.status.success(), "{}", stderr(out));
        let text = stdout(out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text:?}");
        assert_eq!(lines[0].len(), 32, "{text:?}");
        assert!(lines[0].bytes().all(|b| b.is_ascii_hexdigit()), "{text:?}");
    };

    let open = Server::start(&data);
    let out = invite();
    token_alone(&out);
    let err = stderr(&out);
    assert!(
        err.contains("without --invite-only") && err.contains("not needed"),
        "{err}"
    );
    open.kill();

    let closed = Server::start_with(&data, &["--invite-only"]);
    let out = invite();
    token_alone(&out);
    assert_eq!(stderr(&out), "");
    closed.kill();
}

// ---------------------------------------------------------------- client

/// `via add` of a relay already saved printed "saved relay" on stdout and
/// "already saved" on stderr; one answer now, on stdout. `--json` says
/// which it was.
#[test]
fn via_add_of_a_saved_relay_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let alice = dir.path().join("alice");
    register(&alice, &server.address(), "alice");
    let relay = "tcp://127.0.0.1:9";

    let out = ponte(&alice, &["via", "add", relay]);
    assert_eq!(ok(&out), format!("saved relay {relay}\n"));
    assert_eq!(stderr(&out), "");
    let out = ponte(&alice, &["via", "add", relay]);
    assert_eq!(ok(&out), format!("relay {relay} is already saved\n"));
    assert_eq!(stderr(&out), "");
    let out = ponte(&alice, &["via", "add", relay, "--json"]);
    let v: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(v, serde_json::json!({ "already_saved": relay }));
    assert_eq!(stderr(&out), "");
    // Saved once.
    assert_eq!(ok(&ponte(&alice, &["via", "list"])), format!("{relay}\n"));
}

/// `history NAME` for nobody this profile knows printed nothing and exited
/// 0, as for an empty conversation; it is an error now. A known contact
/// with no messages yet is not: nothing on stdout, a note on stderr, as
/// for an empty `contacts`.
#[test]
fn history_of_an_unknown_contact_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bob");

    for args in [&["history", "bobb"][..], &["history", "bobb", "--json"]] {
        let out = ponte(&alice, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", stdout(&out));
        assert!(err.contains("no conversation with bobb"), "{args:?}: {err}");
        assert!(err.contains("ponte contacts"), "{args:?}: {err}");
    }

    // An empty contact list says so too (on stderr: stdout stays a list).
    let out = ponte(&alice, &["contacts"]);
    assert_eq!(ok(&out), "");
    assert!(stderr(&out).contains("no contacts yet"), "{}", stderr(&out));
    let out = ponte(&alice, &["contacts", "--json"]);
    assert_eq!(ok(&out), "");
    assert_eq!(stderr(&out), "");

    // `verify` fetches bob's key: a contact, no messages.
    ok(&ponte(&alice, &["verify", "bob"]));
    let out = ponte(&alice, &["history", "bob"]);
    assert_eq!(ok(&out), "");
    assert!(
        stderr(&out).contains("no messages with bob yet"),
        "{}",
        stderr(&out)
    );

    ok(&ponte(&alice, &["send", "bob", "hello bob"]));
    let out = ponte(&alice, &["history", "bob"]);
    assert!(
        ok(&out).contains("alice -> bob: hello bob"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stderr(&out), "");
    let out = ponte(&alice, &["contacts"]);
    assert!(ok(&out).starts_with("bob "), "{}", stdout(&out));
    assert_eq!(stderr(&out), "");
}

/// A profile without a passphrase whose `profile.key` is gone failed with
/// "reading …/profile.key: No such file or directory"; it says now that
/// the profile cannot be opened without that file.
#[test]
fn a_missing_profile_key_says_the_profile_cannot_be_opened_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let alice = dir.path().join("alice");
    register(&alice, &server.address(), "alice");
    let key = alice.join("profile.key");
    std::fs::remove_file(&key).unwrap();
    for args in [&["contacts"][..], &["via", "list"], &["history", "bob"]] {
        let out = ponte(&alice, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{} is missing", key.display()))
                && err.contains("cannot be opened without it"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("os error"), "{args:?}: {err}");
    }
}

/// Another profile's `profile.key`, or a damaged one, was reported as
/// "profile data is corrupt or was tampered with"; it names the file and
/// what to do now.
#[test]
fn a_wrong_profile_key_file_is_named_not_reported_as_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bob");
    let key = alice.join("profile.key");
    let own = std::fs::read(&key).unwrap();
    for (what, bytes, want) in [
        (
            "another profile's",
            std::fs::read(bob.join("profile.key")).unwrap(),
            "it is another profile's key file",
        ),
        ("a short", own[..16].to_vec(), "is not a profile key file"),
    ] {
        std::fs::write(&key, bytes).unwrap();
        let out = ponte(&alice, &["contacts"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(want), "{what}: {err}");
        assert!(err.contains(&key.display().to_string()), "{what}: {err}");
        assert!(!err.contains("tampered"), "{what}: {err}");
    }
    std::fs::write(&key, own).unwrap();
    ok(&ponte(&alice, &["contacts"]));
}

/// A pseudo-terminal: the child's stdin is its terminal side, so the
/// client prompts for a passphrase; the test types into the other side.
struct Pty {
    master: std::fs::File,
    child: Child,
    said: mpsc::Receiver<Vec<u8>>,
    stderr: String,
}

impl Pty {
    /// `ponte ARGS… --profile PROFILE` with stdin on a new terminal,
    /// stdout and stderr piped (stderr read as it comes, for the prompts).
    fn spawn(profile: &Path, args: &[&str]) -> Self {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors into the given ints; the
        // name, termios and window size pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned here only.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut child = command(profile, args)
            .stdin(Stdio::from(slave))
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, said) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            master: std::fs::File::from(master),
            child,
            said,
            stderr: String::new(),
        }
    }

    /// Waits until stderr has said `text` `n` times in all.
    fn wait_for(&mut self, text: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.stderr.matches(text).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.said.recv_timeout(left) {
                Ok(bytes) => self.stderr.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!("no {text:?} (#{n}) on stderr: {:?}", self.stderr),
            }
        }
    }

    /// Waits for prompt number `n` ending in `prompt`, then types `line`.
    fn answer(&mut self, prompt: &str, n: usize, line: &str) {
        self.wait_for(prompt, n);
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// The exit status, stdout and everything said on stderr.
    fn finish(mut self) -> (Output, String) {
        let out = wait_output(self.child, WAIT);
        while let Ok(bytes) = self.said.recv_timeout(std::time::Duration::from_secs(5)) {
            self.stderr.push_str(&String::from_utf8_lossy(&bytes));
        }
        drop(self.master);
        (out, self.stderr)
    }
}

const UNLOCK: &str = "Passphrase for this profile: ";
const NEW: &str = "Passphrase to protect this profile (empty: use a key file): ";
const REPEAT: &str = "Repeat the passphrase: ";

/// A mistyped passphrase at the prompt ended the command; it is asked
/// again, three tries in all (as sudo does), both when a profile is
/// created (the two entries differ) and when it is opened (wrong one).
#[test]
fn a_wrong_passphrase_at_the_prompt_is_asked_again_three_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let alice = dir.path().join("alice");
    let address = server.address();
    let register = ["register", "--server", address.as_str(), "alice"];

    // Three mismatches: refused, nothing created.
    let mut pty = Pty::spawn(&alice, &register);
    for n in 1..=3 {
        pty.answer(NEW, n, "correct horse");
        pty.answer(REPEAT, n, "correct hrose");
    }
    let (out, err) = pty.finish();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("the passphrases differ, try again").count(),
        2,
        "{err}"
    );
    assert!(err.contains("the passphrases differ (3 tries)"), "{err}");
    assert!(!alice.join("ponte.db").exists());

    // One mismatch, then the same twice: registered with that passphrase.
    let mut pty = Pty::spawn(&alice, &register);
    pty.answer(NEW, 1, "correct horse");
    pty.answer(REPEAT, 1, "correct hrose");
    pty.answer(NEW, 2, "correct horse");
    pty.answer(REPEAT, 2, "correct horse");
    let (out, err) = pty.finish();
    assert!(ok(&out).contains("registered as alice"), "{err}");
    assert_eq!(err.matches("try again").count(), 1, "{err}");
    assert!(!alice.join("profile.key").exists());

    // Registering again (the way back when the server lost the account)
    // asks for this profile's passphrase only, again when mistyped.
    let mut pty = Pty::spawn(&alice, &register);
    pty.answer(UNLOCK, 1, "correct hrose");
    pty.answer(UNLOCK, 2, "correct horse");
    let (out, err) = pty.finish();
    assert!(ok(&out).contains("registered as alice"), "{err}");
    assert!(!err.contains(NEW), "{err}");
    assert_eq!(
        err.matches("wrong passphrase, try again").count(),
        1,
        "{err}"
    );

    // Opening: two wrong, then right.
    let mut pty = Pty::spawn(&alice, &["contacts"]);
    pty.answer(UNLOCK, 1, "battery staple");
    pty.answer(UNLOCK, 2, "");
    pty.answer(UNLOCK, 3, "correct horse");
    let (out, err) = pty.finish();
    ok(&out);
    assert_eq!(
        err.matches("wrong passphrase, try again").count(),
        2,
        "{err}"
    );

    // Three wrong: refused after the third prompt.
    let mut pty = Pty::spawn(&alice, &["via", "list"]);
    for n in 1..=3 {
        pty.answer(UNLOCK, n, "battery staple");
    }
    let (out, err) = pty.finish();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches(UNLOCK).count(), 3, "{err}");
    assert_eq!(err.matches("try again").count(), 2, "{err}");
    assert!(err.contains("ponte: error: wrong passphrase"), "{err}");

    // PONTE_PASSPHRASE is not asked again: the same value would fail.
    let out = wait_output(
        command(&alice, &["contacts"])
            .env("PONTE_PASSPHRASE", "battery staple")
            .spawn()
            .unwrap(),
        WAIT,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("try again"), "{err}");
    assert!(
        err.contains("wrong passphrase for this profile in PONTE_PASSPHRASE"),
        "{err}"
    );
}
