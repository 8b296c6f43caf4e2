//! `ponte send` beside `ponte listen` on the same profile (real processes):
//! the send hands its message to the listener, which holds the profile's
//! connection, instead of logging in as the same device and pushing the
//! listener off; a second listener is refused, naming the first; the
//! listener takes turns with other processes for the profile's keys.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;
use common::{json_lines, ok, ponte, register, stderr, with_text, Listen, Server};

/// A server, alice and bob registered, and alice's `ponte listen`
/// connected (the profiles are `alice` and `bob` in the directory, the
/// server's data `server`).
fn alice_listening_and_bob() -> (tempfile::TempDir, Server, Listen) {
    alice_listening_with_and_bob(&[])
}

/// [`alice_listening_and_bob`] with more arguments for alice's `listen`.
fn alice_listening_with_and_bob(args: &[&str]) -> (tempfile::TempDir, Server, Listen) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");
    let listen = Listen::start_with(&alice, args);
    listen.wait_notice("connected to");
    (tmp, server, listen)
}

/// The listener's stderr `notices` show one connection, never lost or
/// replaced.
fn assert_one_connection(notices: &str) {
    assert!(!notices.contains("disconnected"), "{notices}");
    assert_eq!(notices.matches("connected to").count(), 1, "{notices}");
}

#[test]
fn send_beside_listen_goes_through_the_listener_which_keeps_its_connection() {
    let (tmp, _server, mut listen) = alice_listening_and_bob();
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));

    // A second listener on the profile is refused, naming the first.
    let second = ponte(&alice, &["listen", "--json"]);
    assert!(!second.status.success());
    let e = stderr(&second);
    assert!(
        e.contains("ponte listen, pid") && e.contains("already holds the connection"),
        "{e}"
    );

    // Three sends while alice listens: each answers sent, through the
    // listener.
    for text in ["one", "two", "three"] {
        let out = ponte(&alice, &["send", "bob", text, "--json"]);
        let v = &json_lines(&ok(&out))[0];
        assert_eq!(v["text"], text);
        assert!(
            ["sent", "delivered", "read"].contains(&v["status"].as_str().unwrap()),
            "{v}"
        );
    }

    // A contact's timer set beside the listener goes through it too.
    let out = ponte(&alice, &["timer", "bob", "1h", "--json"]);
    let v = &json_lines(&ok(&out))[0];
    assert!(
        ["sent", "delivered", "read"].contains(&v["status"].as_str().unwrap()),
        "{v} {}",
        stderr(&out)
    );

    // A sync beside the listener has nothing to do and says why, without
    // logging in.
    let out = ponte(&alice, &["sync", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json_lines(&ok(&out)).is_empty());
    assert!(
        stderr(&out).contains("holds this profile's connection"),
        "{}",
        stderr(&out)
    );

    // bob has each once, in order, and his answer reaches alice's listener.
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    let texts: Vec<_> = got
        .iter()
        .filter(|v| v["notice"].is_null())
        .filter_map(|v| v["text"].as_str())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    // The timer's setting reached bob and applies to the conversation.
    let timer = json_lines(&ok(&ponte(&bob, &["timer", "alice", "--json"])));
    assert_eq!(timer[0]["timer_secs"], 3600, "{timer:?} {got:?}");
    ok(&ponte(&bob, &["send", "alice", "got them", "--json"]));
    listen.wait_for("got them");
    assert_eq!(with_text(&listen.seen, "got them").len(), 1);

    // The listener was never pushed off its connection.
    assert_one_connection(&listen.stop());
}

#[test]
fn a_file_sent_beside_listen_is_uploaded_by_the_listener_to_a_contact_and_a_group() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|p| tmp.path().join(p));
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");
    register(&carol, &address, "carol");
    let created = json_lines(&ok(&ponte(
        &alice,
        &["group", "create", "trip", "bob", "carol", "--json"],
    )));
    let group = format!("g:{}", created[0]["group"].as_str().unwrap());

    let mut listen = Listen::start(&alice);
    listen.wait_notice("connected to");

    // Larger than one upload chunk, so the listener's upload takes several
    // requests on its connection.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let photo: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let photo_path = src.join("photo.jpg");
    std::fs::write(&photo_path, &photo).unwrap();
    let note_path = src.join("plan.txt");
    std::fs::write(&note_path, b"the plan, for the group").unwrap();

    for (to, path, caption) in [
        ("bob", &photo_path, "the view"),
        (group.as_str(), &note_path, "read this"),
    ] {
        let out = ponte(
            &alice,
            &[
                "send",
                to,
                "--file",
                path.to_str().unwrap(),
                caption,
                "--json",
            ],
        );
        let v = &json_lines(&ok(&out))[0];
        assert_eq!(v["text"], caption, "{v}");
        assert!(
            ["sent", "delivered", "read"].contains(&v["status"].as_str().unwrap()),
            "{v} {}",
            stderr(&out)
        );
    }

    // Each arrives once, with its bytes (fetched by the sync).
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    for (name, bytes) in [
        ("photo.jpg", &photo[..]),
        ("plan.txt", b"the plan, for the group"),
    ] {
        let msgs: Vec<_> = got.iter().filter(|v| v["file"]["name"] == name).collect();
        assert_eq!(msgs.len(), 1, "{name}: {got:?}");
        let id = msgs[0]["id"].as_str().unwrap();
        let path = msgs[0]["file"]["path"]
            .as_str()
            .or_else(|| {
                got.iter()
                    .find(|l| l["id"] == id && l["file_fetched"].is_string())
                    .and_then(|l| l["file_fetched"].as_str())
            })
            .unwrap_or_else(|| panic!("{name} not fetched: {got:?}"));
        assert_eq!(std::fs::read(path).unwrap(), bytes, "{name}");
    }
    let carol_got = json_lines(&ok(&ponte(&carol, &["sync", "--json"])));
    assert_eq!(
        carol_got
            .iter()
            .filter(|v| v["file"]["name"] == "plan.txt")
            .count(),
        1,
        "{carol_got:?}"
    );

    // The listener kept its one connection throughout.
    assert_one_connection(&listen.stop());
}

/// The listener and the other processes of its profile take turns with
/// the profile's keys (`ponte.keys`): while another process holds them
/// (here the test, with a bare lock on the file), the listener encrypts
/// nothing: a message handed to it waits, and goes out once they are let
/// go.
#[test]
fn the_listener_waits_while_another_process_uses_the_keys() {
    let (tmp, _server, mut listen) = alice_listening_and_bob();
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));

    let keys = std::fs::File::open(alice.join(ponte_client::lock::KEYS_FILE)).unwrap();
    keys.try_lock().unwrap();
    let send = common::command(&alice, &["send", "bob", "after the keys", "--json"])
        .spawn()
        .unwrap();
    // The send hands the message over at once; the listener polls the
    // outbox every half second. Two seconds on, nothing went out.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert!(
        got.iter().all(|v| v["text"] != "after the keys"),
        "sent while another process held the keys: {got:?}"
    );
    keys.unlock().unwrap();
    let out = common::wait_output(send, common::WAIT);
    let v = &json_lines(&ok(&out))[0];
    assert!(
        ["sent", "delivered", "read"].contains(&v["status"].as_str().unwrap()),
        "{v} {}",
        stderr(&out)
    );
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert_eq!(with_text(&got, "after the keys").len(), 1, "{got:?}");
    listen.stop();
}

/// `ponte group` and a group's `ponte timer` beside `ponte listen`: each
/// change is written into the profile and the listener sends it on its
/// own connection, which it keeps; only a new member who is not a contact
/// yet (whose key must come from the server's directory) makes the
/// command log in itself, and it says so.
#[test]
fn group_changes_and_a_groups_timer_beside_listen_go_through_the_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|p| tmp.path().join(p));
    for (profile, handle) in [
        (&alice, "alice"),
        (&bob, "bob"),
        (&carol, "carol"),
        (&dave, "dave"),
    ] {
        register(profile, &address, handle);
    }
    let mut listen = Listen::start(&alice);
    listen.wait_notice("connected to");
    // bob and carol become alice's contacts: her listener fetches their
    // keys to send to them.
    for to in ["bob", "carol"] {
        ok(&ponte(&alice, &["send", to, "hello", "--json"]));
    }

    // Each command answers once the listener sent what it queued (no
    // "queued" note), with the group as it now is.
    let run = |args: &[&str]| {
        let out = ponte(&alice, args);
        let e = stderr(&out);
        assert!(!e.contains("queued"), "{args:?}: {e}");
        json_lines(&ok(&out)).remove(0)
    };
    let created = run(&["group", "create", "team", "bob", "carol", "--json"]);
    assert_eq!(
        created["members"],
        serde_json::json!(["alice", "bob", "carol"])
    );
    let group = format!("g:{}", created["group"].as_str().unwrap());
    assert_eq!(
        run(&["group", "rename", &group, "crew", "--json"])["title"],
        "crew"
    );
    let promoted = run(&["group", "promote", &group, "bob", "--json"]);
    assert_eq!(promoted["admins"], serde_json::json!(["alice", "bob"]));
    let timer = run(&["timer", &group, "1h", "--json"]);
    assert!(
        ["sent", "delivered", "read"].contains(&timer["status"].as_str().unwrap()),
        "{timer}"
    );
    let removed = run(&["group", "remove", &group, "carol", "--json"]);
    assert_eq!(removed["members"], serde_json::json!(["alice", "bob"]));

    // bob has every change, carol learns she was removed.
    ok(&ponte(&bob, &["sync", "--json"]));
    let info = &json_lines(&ok(&ponte(&bob, &["group", "info", &group, "--json"])))[0];
    assert_eq!(info["title"], "crew", "{info}");
    assert_eq!(
        info["members"],
        serde_json::json!(["alice", "bob"]),
        "{info}"
    );
    assert_eq!(
        info["admins"],
        serde_json::json!(["alice", "bob"]),
        "{info}"
    );
    assert_eq!(info["timer_secs"], 3600, "{info}");
    ok(&ponte(&carol, &["sync", "--json"]));
    let info = &json_lines(&ok(&ponte(&carol, &["group", "info", &group, "--json"])))[0];
    assert_eq!(info["status"], "removed", "{info}");
    assert!(info["role"].is_null(), "{info}");

    // The listener kept its one connection throughout.
    assert_one_connection(&listen.wait_notice("connected to"));

    // dave is no contact of alice's: his key comes from the directory, on
    // the command's own connection, and the command says so.
    let out = ponte(&alice, &["group", "add", &group, "dave", "--json"]);
    assert!(
        stderr(&out).contains("not a contact of this profile yet"),
        "{}",
        stderr(&out)
    );
    let added = &json_lines(&ok(&out))[0];
    assert_eq!(
        added["members"],
        serde_json::json!(["alice", "bob", "dave"])
    );
    ok(&ponte(&dave, &["sync", "--json"]));
    let info = &json_lines(&ok(&ponte(&dave, &["group", "info", &group, "--json"])))[0];
    assert_eq!(info["title"], "crew", "{info}");
    listen.stop();
}

/// `ponte file get` beside `ponte listen`: the listener (which fetches
/// nothing by itself here, `--auto-download 0`) fetches the file on its
/// own connection, which it keeps, and the command prints where it is.
#[test]
fn file_get_beside_listen_is_fetched_by_the_listener() {
    let (tmp, _server, mut listen) = alice_listening_with_and_bob(&["--auto-download", "0"]);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));

    let photo: Vec<u8> = (0..400_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let photo_path = tmp.path().join("photo.jpg");
    std::fs::write(&photo_path, &photo).unwrap();
    let path = photo_path.to_str().unwrap();
    ok(&ponte(
        &bob,
        &["send", "alice", "--file", path, "the view", "--json"],
    ));
    listen.wait_for("the view");
    let shown = with_text(&listen.seen, "the view");
    assert!(shown[0]["file"]["path"].is_null(), "{shown:?}");
    let id = shown[0]["id"].as_str().unwrap().to_owned();

    // Asked for, fetched by the listener, copied where the command says.
    let target = tmp.path().join("out.jpg");
    let out = ponte(
        &alice,
        &[
            "file",
            "get",
            &id,
            "--out",
            target.to_str().unwrap(),
            "--json",
        ],
    );
    let v = &json_lines(&ok(&out))[0];
    assert_eq!(v["path"], target.to_str().unwrap(), "{v}");
    assert_eq!(std::fs::read(&target).unwrap(), photo);
    // Asked again: it is here already.
    let v = &json_lines(&ok(&ponte(&alice, &["file", "get", &id, "--json"])))[0];
    assert_eq!(std::fs::read(v["path"].as_str().unwrap()).unwrap(), photo);
    // A message that is no file of this profile is refused, with nothing
    // asked of the listener.
    let out = ponte(&alice, &["file", "get", &"ab".repeat(16)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no received file"),
        "{}",
        stderr(&out)
    );

    // The listener kept its one connection throughout.
    assert_one_connection(&listen.stop());
}

/// A file the listener cannot fetch (here its blob is gone from the
/// server's disk): `file get` beside it fails with the listener's reason,
/// and the listener stays connected.
#[test]
fn file_get_beside_listen_reports_why_the_listener_could_not_fetch_it() {
    let (tmp, _server, mut listen) = alice_listening_with_and_bob(&["--auto-download", "0"]);
    let [alice, bob, data] = ["alice", "bob", "server"].map(|p| tmp.path().join(p));
    let path = tmp.path().join("notes.txt");
    std::fs::write(&path, b"lost on the way").unwrap();
    let path = path.to_str().unwrap();
    ok(&ponte(
        &bob,
        &["send", "alice", "--file", path, "notes", "--json"],
    ));
    listen.wait_for("notes");
    let id = with_text(&listen.seen, "notes")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut removed = 0;
    for entry in std::fs::read_dir(data.join("blobs")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().len() == 32 && entry.file_type().unwrap().is_file() {
            std::fs::remove_file(entry.path()).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 1);

    let out = ponte(&alice, &["file", "get", &id]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("could not fetch it"), "{e}");
    let notices = listen.stop();
    assert!(notices.contains("not fetched"), "{notices}");
    assert_one_connection(&notices);
}
