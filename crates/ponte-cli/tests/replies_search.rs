//! `ponte send --reply-to ID` and `ponte search`, with real processes
//! (`ponte server` and the `ponte` client on profiles in temp dirs): a
//! reply's id travels to the other side and shows as `"reply_to"` in
//! `--json` output and `[reply to ID]` on a terminal; a bad or unknown id
//! is refused with nothing sent; search finds messages of every chat,
//! newest first, with `"chat"` in `--json`, and says when nothing holds
//! the words. In a group of three, a reply (text, and a file) to another
//! member's message reaches both others with its `"reply_to"`, and a
//! reply quoting a message of another conversation is refused.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;
use common::{json_lines, ok, ponte, register, stderr, with_text, Server};

#[test]
fn a_reply_and_a_search_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bobby");

    let sent = json_lines(&ok(&ponte(
        &alice,
        &["send", "bobby", "which platypus is yours?", "--json"],
    )));
    let question = sent[0]["id"].as_str().unwrap().to_owned();
    ok(&ponte(&bob, &["sync"]));

    // Refused, nothing sent: not an id; an id from no conversation here.
    let out = ponte(&bob, &["send", "alice", "x", "--reply-to", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("32 hex digits"), "{}", stderr(&out));
    let unknown = "0".repeat(32);
    let out = ponte(&bob, &["send", "alice", "x", "--reply-to", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("to reply to"), "{}", stderr(&out));

    let reply = json_lines(&ok(&ponte(
        &bob,
        &[
            "send",
            "alice",
            "the spotted one",
            "--reply-to",
            &question,
            "--json",
        ],
    )));
    assert_eq!(reply[0]["reply_to"], question.as_str());

    let got = json_lines(&ok(&ponte(&alice, &["sync", "--json"])));
    let r = with_text(&got, "the spotted one");
    assert_eq!(r.len(), 1, "{got:?}");
    assert_eq!(r[0]["reply_to"], question.as_str());
    let history = ok(&ponte(&alice, &["history", "bobby"]));
    assert!(
        history.contains(&format!("[reply to {question}] the spotted one")),
        "{history}"
    );
    // Only the x's were refused: bob's history holds two messages.
    let bobs = json_lines(&ok(&ponte(&bob, &["history", "alice", "--json"])));
    assert_eq!(bobs.len(), 2, "{bobs:?}");

    // Search: both messages about the platypus, newest first, on each side.
    ok(&ponte(
        &alice,
        &["send", "bobby", "PLATYPUS facts, spotted", "--json"],
    ));
    let hits = json_lines(&ok(&ponte(&alice, &["search", "platyp", "--json"])));
    let texts: Vec<&str> = hits.iter().map(|h| h["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["PLATYPUS facts, spotted", "which platypus is yours?"]
    );
    assert!(hits.iter().all(|h| h["chat"] == "bobby"), "{hits:?}");
    let both = json_lines(&ok(&ponte(
        &alice,
        &["search", "spotted", "platypus", "--json"],
    )));
    assert_eq!(both.len(), 1, "{both:?}");
    let out = ponte(&alice, &["search", "echidna"]);
    assert!(ok(&out).is_empty());
    assert!(
        stderr(&out).contains("no message holds"),
        "{}",
        stderr(&out)
    );
    let human = ok(&ponte(&bob, &["search", "spotted"]));
    assert!(human.contains("bobby -> alice: [reply to"), "{human}");
}

#[test]
fn replies_in_a_group_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let [alice, bob, carol] = ["alice", "bobby", "carol"].map(|n| tmp.path().join(n));
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bobby");
    register(&carol, &server.address(), "carol");
    let created = json_lines(&ok(&ponte(
        &alice,
        &["group", "create", "hikers", "bobby", "carol", "--json"],
    )));
    let g = created[0]["group"].as_str().unwrap().to_owned();
    let private = json_lines(&ok(&ponte(
        &alice,
        &["send", "bobby", "just between us", "--json"],
    )));
    let private = private[0]["id"].as_str().unwrap().to_owned();
    let asked = json_lines(&ok(&ponte(
        &alice,
        &["send", "g:hikers", "which trail on sunday?", "--json"],
    )));
    let question = asked[0]["id"].as_str().unwrap().to_owned();
    ok(&ponte(&bob, &["sync"]));
    ok(&ponte(&carol, &["sync"]));

    // A quote of a 1:1 message, in the group: refused, nothing sent.
    let out = ponte(&bob, &["send", "g:hikers", "x", "--reply-to", &private]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "no message {private} in group \"hikers\" to reply to"
        )),
        "{}",
        stderr(&out)
    );

    // bobby replies to alice's question, with text and with a file.
    let reply = json_lines(&ok(&ponte(
        &bob,
        &[
            "send",
            "g:hikers",
            "the ridge one",
            "--reply-to",
            &question,
            "--json",
        ],
    )));
    assert_eq!(reply[0]["status"], "sent", "{reply:?}");
    assert_eq!(reply[0]["reply_to"], question.as_str());
    let map = tmp.path().join("ridge.txt");
    std::fs::write(&map, b"ridge trail, 14 km").unwrap();
    let file_reply = json_lines(&ok(&ponte(
        &bob,
        &[
            "send",
            "g:hikers",
            "--file",
            map.to_str().unwrap(),
            "the map",
            "--reply-to",
            &question,
            "--json",
        ],
    )));
    assert_eq!(file_reply[0]["reply_to"], question.as_str());
    assert_eq!(file_reply[0]["file"]["name"], "ridge.txt");

    // Both others get both replies with the quote's id.
    for who in [&alice, &carol] {
        let got = json_lines(&ok(&ponte(who, &["sync", "--json"])));
        for text in ["the ridge one", "the map"] {
            let r = with_text(&got, text);
            assert_eq!(r.len(), 1, "{got:?}");
            assert_eq!(r[0]["reply_to"], question.as_str());
            assert_eq!(r[0]["group"], g.as_str());
            assert_eq!(r[0]["from"], "bobby");
        }
    }
    let history = ok(&ponte(&carol, &["history", "g:hikers"]));
    assert!(
        history.contains(&format!(
            "bobby -> g:hikers: [reply to {question}] the ridge one"
        )),
        "{history}"
    );
}
