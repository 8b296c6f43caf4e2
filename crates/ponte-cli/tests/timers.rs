//! Disappearing messages with real processes: `ponte server`, then
//! `ponte timer`, `send`, `send --file`, `sync` and `history` on two
//! profiles in temp dirs. The setting shows on both sides, the peer's
//! setting applies to the other side's messages, and once the 5-second
//! timer is up `history` no longer shows the message and no file in
//! either profile directory holds its text, its sealed row or the
//! received file's bytes. In a group of three: a member's setting
//! reaches the others, a message sent afterwards vanishes from all three,
//! and a removed member's setting is refused.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

mod common;
use common::{command, contains, json_lines, ok, register, stderr, wait_output, Server};

const MARKER: &str = "PONTE-CLI-DISAPPEARING-MARKER-9c2e";

fn ponte(profile: &Path, args: &[&str]) -> Output {
    wait_output(
        command(profile, args).spawn().unwrap(),
        Duration::from_secs(120),
    )
}

fn all_files(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, depth + 1, out);
        } else {
            out.push(p);
        }
    }
}

/// Which files under `dir` hold `needle` (raw bytes).
fn holders(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    all_files(dir, 0, &mut files);
    assert!(files.len() >= 2, "{files:?}");
    files
        .into_iter()
        .filter(|f| contains(&std::fs::read(f).unwrap_or_default(), needle))
        .collect()
}

/// The sealed text of the message whose id is `id_hex`, read raw.
fn sealed_body(profile: &Path, id_hex: &str) -> Vec<u8> {
    let conn = rusqlite::Connection::open_with_flags(
        profile.join("ponte.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT body FROM messages WHERE hex(id) = upper(?1)",
        [id_hex],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_timer_set_by_one_side_makes_both_sides_messages_vanish_without_a_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bob");

    // Refused before anything happens: out of bounds, a group this
    // profile does not have, a typo.
    for (target, duration, says) in [
        ("bob", "4s", "between 5 s and 90 d"),
        ("bob", "91d", "between 5 s and 90 d"),
        ("bob", "1y", "unknown unit"),
        ("g:team", "1h", "no group \"g:team\" in this profile"),
    ] {
        let out = ponte(&alice, &["timer", target, duration]);
        assert_eq!(out.status.code(), Some(1), "{target} {duration}");
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }

    // Alice sets 5 s: a line of the conversation, on her side at once.
    let set = ok(&ponte(&alice, &["timer", "bob", "5s"]));
    assert!(
        set.contains("alice set disappearing messages to 5 s (with bob) [sent ✓]"),
        "{set}"
    );
    let shown = ok(&ponte(&alice, &["timer", "bob"]));
    assert_eq!(shown.trim(), "disappearing messages with bob: 5 s");

    // A text and a file, each carrying the timer.
    let text = format!("{MARKER} meet at the station");
    let sent = json_lines(&ok(&ponte(&alice, &["send", "bob", &text, "--json"])));
    assert_eq!(sent[0]["timer_secs"], 5);
    assert!(sent[0]["expires_at"].is_string());
    let id = sent[0]["id"].as_str().unwrap().to_owned();
    let file_bytes: Vec<u8> = (0..50_000u32)
        .flat_map(|i| {
            if i % 10_000 == 0 {
                MARKER.as_bytes().to_vec()
            } else {
                vec![(i * 7 % 251) as u8]
            }
        })
        .collect();
    let src = tmp.path().join("map.png");
    std::fs::write(&src, &file_bytes).unwrap();
    let file_out = ok(&ponte(
        &alice,
        &["send", "bob", "--file", src.to_str().unwrap()],
    ));
    assert!(file_out.contains("[⏱ 5 s]"), "{file_out}");

    // Bob: the setting, then both messages with their timer, displayed now.
    let lines = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    let notice = lines.iter().find(|v| v["notice"] == "timer").unwrap();
    assert_eq!(
        (
            &notice["from"],
            &notice["timer_set"],
            &notice["timer_set_secs"]
        ),
        (&"alice".into(), &"5 s".into(), &5.into())
    );
    assert!(notice["text"].is_null());
    let got = lines.iter().find(|v| v["text"] == text.as_str()).unwrap();
    assert_eq!(got["timer_secs"], 5);
    // Its clock starts with this display: running from the next view on.
    assert!(got["expires_at"].is_null(), "{got}");
    let again = json_lines(&ok(&ponte(&bob, &["history", "alice", "--json"])));
    let again = again.iter().find(|v| v["text"] == text.as_str()).unwrap();
    assert!(again["expires_at"].is_string(), "{again}");
    let fetched = lines
        .iter()
        .find_map(|v| v["file_fetched"].as_str())
        .map(PathBuf::from)
        .unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), file_bytes);

    // The setting is bob's too, and applies to what he sends.
    let shown = ok(&ponte(&bob, &["timer", "alice"]));
    assert_eq!(shown.trim(), "disappearing messages with alice: 5 s");
    let reply = ok(&ponte(&bob, &["send", "alice", "on my way"]));
    assert!(reply.contains("on my way [⏱ 5 s]"), "{reply}");
    let history = ok(&ponte(&bob, &["history", "alice"]));
    assert!(
        history.contains("alice set disappearing messages to 5 s"),
        "{history}"
    );
    assert!(history.contains(&text), "{history}");

    // What a scan finds while they exist (so the scan below can fail).
    let bob_sealed = sealed_body(&bob, &id);
    let alice_sealed = sealed_body(&alice, &id);
    assert!(!holders(&bob, &bob_sealed).is_empty());
    assert!(!holders(&bob, MARKER.as_bytes()).is_empty());

    // Once the time is up, the next command that opens each profile
    // deletes them (bounded: 5 s plus at most 30 tries a second apart).
    std::thread::sleep(Duration::from_secs(5));
    let mut history = String::new();
    for _ in 0..30 {
        history = ok(&ponte(&bob, &["history", "alice"]));
        if !history.contains(MARKER) && !history.contains("on my way") {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(!history.contains(MARKER), "{history}");
    assert!(!history.contains("on my way"), "{history}");
    assert!(
        history.contains("alice set disappearing messages to 5 s"),
        "{history}"
    );
    let alice_history = ok(&ponte(&alice, &["history", "bob"]));
    assert!(!alice_history.contains(MARKER), "{alice_history}");
    assert!(
        alice_history.contains("alice set disappearing messages to 5 s"),
        "{alice_history}"
    );
    assert!(!fetched.exists());

    for (profile, sealed) in [(&alice, &alice_sealed), (&bob, &bob_sealed)] {
        for (what, needle) in [
            ("the marker", MARKER.as_bytes()),
            ("the text", text.as_bytes()),
            ("the sealed text", sealed.as_slice()),
            ("the file's bytes", &file_bytes[100..164]),
        ] {
            let found = holders(profile, needle);
            assert!(found.is_empty(), "{what} still in {found:?}");
        }
    }
}

/// A group's timer with three profiles: set by a member who is no admin,
/// it reaches the other two (a notice with the group in `--json`, the
/// timer in `group info`); a message sent afterwards vanishes from all
/// three once its time is up; a removed member's setting is refused by
/// the others, and then by her own client.
#[test]
fn a_group_timer_reaches_every_member_and_a_removed_members_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob, carol) = (
        tmp.path().join("alice"),
        tmp.path().join("bob"),
        tmp.path().join("carol"),
    );
    for (p, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        register(p, &server.address(), name);
    }
    let created = json_lines(&ok(&ponte(
        &alice,
        &["group", "create", "team", "bob", "carol", "--json"],
    )));
    let g = created[0]["group"].as_str().unwrap().to_owned();
    for p in [&bob, &carol] {
        ok(&ponte(p, &["sync"]));
    }

    // Bob (a member, not an admin) sets 5 s.
    let set = json_lines(&ok(&ponte(&bob, &["timer", "g:team", "5s", "--json"])));
    assert_eq!(set[0]["notice"], "timer", "{set:?}");
    assert_eq!(set[0]["group"], g.as_str());
    assert_eq!(set[0]["timer_set_secs"], 5);
    for p in [&alice, &carol] {
        let lines = json_lines(&ok(&ponte(p, &["sync", "--json"])));
        let notice = lines
            .iter()
            .find(|v| v["notice"] == "timer")
            .unwrap_or_else(|| panic!("{lines:?}"));
        assert_eq!(notice["from"], "bob");
        assert_eq!(notice["group"], g.as_str());
        assert_eq!(notice["timer_set"], "5 s");
        let shown = ok(&ponte(p, &["timer", "g:team"]));
        assert_eq!(shown.trim(), "disappearing messages in team: 5 s");
        let info = json_lines(&ok(&ponte(p, &["group", "info", "g:team", "--json"])));
        assert_eq!(info[0]["timer_secs"], 5, "{info:?}");
    }
    let info = ok(&ponte(&carol, &["group", "info", "g:team"]));
    assert!(info.contains("disappearing messages: 5 s"), "{info}");

    // Alice's message carries it; bob and carol display it.
    let text = format!("{MARKER} group meeting moved");
    let sent = json_lines(&ok(&ponte(&alice, &["send", "g:team", &text, "--json"])));
    assert_eq!(sent[0]["timer_secs"], 5, "{sent:?}");
    for p in [&bob, &carol] {
        let lines = json_lines(&ok(&ponte(p, &["sync", "--json"])));
        let got = lines
            .iter()
            .find(|v| v["text"] == text.as_str())
            .unwrap_or_else(|| panic!("{lines:?}"));
        assert_eq!(got["timer_secs"], 5);
        assert_eq!(got["group"], g.as_str());
    }
    // Gone from all three once the time is up (bounded: 5 s, then at
    // most 60 tries half a second apart per profile).
    std::thread::sleep(Duration::from_secs(5));
    for p in [&alice, &bob, &carol] {
        let mut history = String::new();
        for _ in 0..60 {
            history = ok(&ponte(p, &["history", "g:team"]));
            if !history.contains(MARKER) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(!history.contains(MARKER), "{history}");
        assert!(
            history.contains("bob set disappearing messages to 5 s"),
            "{history}"
        );
        assert!(holders(p, MARKER.as_bytes()).is_empty());
    }

    // Carol is removed; her client, not told yet, sends a setting: the
    // others refuse it (a warning) and keep 5 s.
    ok(&ponte(&alice, &["group", "remove", "g:team", "carol"]));
    ok(&ponte(&bob, &["sync"]));
    ok(&ponte(&carol, &["timer", "g:team", "1h"]));
    for p in [&alice, &bob] {
        let out = ponte(p, &["sync"]);
        ok(&out);
        assert!(
            stderr(&out).contains("from carol, who is not a member"),
            "{}",
            stderr(&out)
        );
        let shown = ok(&ponte(p, &["timer", "g:team"]));
        assert_eq!(shown.trim(), "disappearing messages in team: 5 s");
    }
    // Once she knows, her client refuses.
    ok(&ponte(&carol, &["sync"]));
    let refused = ponte(&carol, &["timer", "g:team", "1h"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("removed"), "{}", stderr(&refused));
}
