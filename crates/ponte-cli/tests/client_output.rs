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

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

mod common;
use common::{
    command, json_lines, ok, ponte, register, stderr, stdout, wait_output, with_text, Forwarder,
    Server, WAIT,
};

// ---------------------------------------------------------------- helpers

/// Run a client command whose stdout is a pipe nobody reads: its read end
/// is closed before the command writes anything, so every write to stdout
/// fails with EPIPE.
fn ponte_stdout_closed(profile: &Path, args: &[&str]) -> Output {
    let mut child = command(profile, args).spawn().unwrap();
    drop(child.stdout.take());
    wait_output(child, WAIT)
}

/// A server (data under `dir`) with alice and bob registered on it
/// directly: the server, its address and the two profiles.
fn server_with_alice_and_bob(dir: &Path) -> (Server, String, PathBuf, PathBuf) {
    let server = Server::start(&dir.join("server"));
    let address = server.address();
    let alice = dir.join("alice");
    let bob = dir.join("bob");
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");
    (server, address, alice, bob)
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
    let (server, _, alice, bob) = server_with_alice_and_bob(tmp.path());

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
    let (server, _, alice, bob) = server_with_alice_and_bob(tmp.path());
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
    // A message from the new key, while ours to it is held: one sync,
    // one warning (not one for the message and one for the held send).
    ok(&ponte(&new_bob, &["send", "alice", "from the new phone"]));
    let out = ponte(&alice, &["sync"]);
    let warned = stderr(&out);
    assert_eq!(
        warned.matches("identity key has CHANGED").count(),
        1,
        "{warned}"
    );

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
    let (server, address, alice, _) = server_with_alice_and_bob(tmp.path());

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
