//! What the client does with a profile whose stored data is damaged, with
//! real processes (`ponte server` and the `ponte` client on profiles in
//! temp dirs):
//!
//! - a `ponte.db` that is not a profile database (empty, another file) is
//!   named and left as it is by every command that opens a profile;
//! - one altered message row does not hide the rest of a conversation:
//!   `history` shows the others, marks that one UNREADABLE without its
//!   text, and exits 1;
//! - a recipient's full mailbox is said once per command, however many
//!   messages to them wait in the outbox.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::path::Path;

mod common;
use common::{json_lines, ok, ponte, register, stderr, stdout, Forwarder, Server};

/// The commands that open an existing profile only to read it.
const READERS: &[&[&str]] = &[
    &["history", "bob"],
    &["contacts"],
    &["via", "list"],
    &["status"],
    &["sync"],
    &["send", "bob", "hi"],
    &["verify", "bob"],
];

fn assert_left_alone(profile: &Path, before: &[u8], why: &str) {
    for args in READERS {
        let out = ponte(profile, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("is not a Ponte profile database") && err.contains(why),
            "{args:?}: {err}"
        );
        assert!(err.contains("it was left as it is"), "{args:?}: {err}");
        assert_eq!(stdout(&out), "", "{args:?}");
        assert_eq!(
            std::fs::read(profile.join("ponte.db")).unwrap(),
            before,
            "{args:?} changed ponte.db"
        );
        assert!(!profile.join("ponte.db-wal").exists(), "{args:?}");
    }
}

#[test]
fn a_ponte_db_that_is_not_a_profile_is_named_and_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("p");
    std::fs::create_dir(&profile).unwrap();
    std::fs::write(profile.join("ponte.db"), b"").unwrap();
    assert_left_alone(&profile, b"", "the file is empty");

    let text = b"not a database, just some notes someone saved here\n".repeat(20);
    std::fs::write(profile.join("ponte.db"), &text).unwrap();
    assert_left_alone(&profile, &text, "not an SQLite database");
}

#[test]
fn one_altered_message_row_is_marked_and_the_rest_is_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");
    let texts = ["first", "second, to be altered", "third"];
    for t in texts {
        ok(&ponte(&alice, &["send", "bob", t]));
    }
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert_eq!(got.len(), 3, "{got:?}");
    let altered_id = got[1]["id"].as_str().unwrap().to_owned();

    // One byte of that row's sealed text, changed behind the client's back.
    let db = rusqlite::Connection::open(bob.join("ponte.db")).unwrap();
    let id: Vec<u8> = (0..altered_id.len() / 2)
        .map(|i| u8::from_str_radix(&altered_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut body: Vec<u8> = db
        .query_row("SELECT body FROM messages WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    body[20] ^= 0x01;
    let n = db
        .execute("UPDATE messages SET body = ?1 WHERE id = ?2", (&body, &id))
        .unwrap();
    assert_eq!(n, 1);
    drop(db);

    let out = ponte(&bob, &["history", "alice", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json_lines(&stdout(&out));
    assert_eq!(v.len(), 3, "{v:?}");
    assert_eq!(v[0]["text"], texts[0]);
    assert_eq!(v[2]["text"], texts[2]);
    assert_eq!(v[1]["id"], altered_id.as_str());
    assert_eq!(v[1]["unreadable"], true);
    assert!(v[1]["text"].is_null(), "fails closed: {v:?}");
    assert!(
        stderr(&out).contains("1 of 3 messages with alice could not be read"),
        "{}",
        stderr(&out)
    );

    let out = ponte(&bob, &["history", "alice"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].ends_with("alice -> bob: first"), "{lines:?}");
    assert!(lines[1].contains("[UNREADABLE"), "{lines:?}");
    assert!(
        !lines[1].contains("second"),
        "no text from the altered row: {lines:?}"
    );
    assert!(lines[2].ends_with("alice -> bob: third"), "{lines:?}");
    drop(server);
}

#[test]
fn a_full_mailbox_is_said_once_per_command() {
    const FULL: &str = "bob's mailbox on the server is full";
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start_with(&data, &["--max-pending", "3"]);
    let fwd = Forwarder::start(server.addr);
    let address = format!("ponte://{}#{}", fwd.addr, server.key);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");
    let carol = tmp.path().join("carol");
    register(&carol, &address, "carol");

    // Twelve messages wait in alice's outbox while the server is down.
    server.kill();
    for i in 0..12 {
        let out = ponte(&alice, &["send", "bob", &format!("m{i}")]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let server = Server::start_with(&data, &["--max-pending", "3"]);
    fwd.retarget(server.addr);

    // Three go out, nine are refused: one warning.
    let out = ponte(&alice, &["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches(FULL).count(), 1, "{}", stderr(&out));
    let out = ponte(&alice, &["send", "bob", "one more"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches(FULL).count(), 1, "{}", stderr(&out));
    // Sending to carol goes out; what concerns bob's messages is a warning
    // line of its own, not joined to anything about carol.
    let out = ponte(&alice, &["send", "carol", "hi carol"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(FULL)).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("ponte: WARNING: bob's mailbox"),
        "{err}"
    );
    assert!(!lines[0].contains("carol"), "{err}");
    assert!(stdout(&out).contains("hi carol [sent"), "{}", stdout(&out));

    // Bob reads three, and the next three go out, in order.
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m0", "m1", "m2"]);
    let out = ponte(&alice, &["sync"]);
    assert_eq!(stderr(&out).matches(FULL).count(), 1, "{}", stderr(&out));
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m3", "m4", "m5"]);
    drop(server);
}
