//! What a new user or operator runs into, with real processes: a server
//! start that fails creates nothing and a new key is announced loudly,
//! `server invite` on an open server says the token is not needed, `via
//! add` of a saved relay says so once, a wrong passphrase at the prompt is
//! asked again (on a pseudo-terminal), a profile without its `profile.key`
//! says it cannot be opened, and `history` of an unknown contact is an
//! error.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

mod common;
use common::{stderr, stdout, wait_output, Killed, Server, PONTE, WAIT};

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

    let (again, said) = start_and_stop(&data);
    let key = |a: &str| a.rsplit_once('#').unwrap().1.to_owned();
    assert_eq!(key(&again), key(&address));
    assert!(!said.contains("NEW server key"), "{said}");
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
