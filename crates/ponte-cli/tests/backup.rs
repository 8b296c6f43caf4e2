//! `ponte server backup` on a running server, and a restore from it: real
//! processes. The clients reach the server through a forwarder (the
//! address they were given), which is pointed at the restored server: they
//! accept it (same key) and get what the backup holds.
#![allow(clippy::unwrap_used)]

mod common;

use common::{json_lines, ok, ponte, register, Forwarder, Server, PONTE, WAIT};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `ponte server backup --data DATA DEST`.
fn backup(data: &Path, dest: &Path) -> Output {
    let child = Command::new(PONTE)
        .args(["server", "backup", "--data"])
        .arg(data)
        .arg(dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_output(child, WAIT)
}

#[test]
fn backup_while_running_then_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let fwd = Forwarder::start(server.addr);
    let address = server.address_at(fwd.addr.port());
    let (alice, bobby) = (tmp.path().join("alice"), tmp.path().join("bobby"));
    register(&alice, &address, "alice");
    register(&bobby, &address, "bobby");
    let before = ["kept 1", "kept 2", "kept 3"];
    for text in before {
        let v = json_lines(&ok(&ponte(&alice, &["send", "bobby", text, "--json"])));
        assert_eq!(v[0]["status"], "sent", "{v:?}");
    }

    // While the server runs.
    let dest = tmp.path().join("backup");
    let out = backup(&data, &dest);
    let said = ok(&out);
    assert!(
        said.contains("2 accounts, 3 undelivered messages") && said.contains("integrity checked"),
        "{said}"
    );
    // The copy is a whole data directory: the key and both records, so
    // `ponte server address` and `invite` say on it what they say on the
    // original.
    for name in ["server.key", "server.address", "server.registration"] {
        assert_eq!(
            std::fs::read(dest.join(name)).unwrap(),
            std::fs::read(data.join(name)).unwrap(),
            "{name}"
        );
    }
    let address_of = |dir: &Path| {
        let out = Command::new(PONTE)
            .args(["server", "address", "--data"])
            .arg(dir)
            .output()
            .unwrap();
        ok(&out)
    };
    assert_eq!(address_of(&dest), address_of(&data));
    // Again into the same place: refused, the first copy untouched.
    let again = backup(&data, &dest);
    assert_eq!(again.status.code(), Some(1));
    assert!(common::stderr(&again).contains("is not empty"), "{again:?}");

    // Sent after the backup: a restore cannot have it.
    ok(&ponte(
        &alice,
        &["send", "bobby", "after the backup", "--json"],
    ));
    // Carol joins after the backup, and alice gets to know her.
    let carol = tmp.path().join("carol");
    register(&carol, &address, "carol");
    ok(&ponte(&carol, &["send", "alice", "carol 1"]));
    let v = json_lines(&ok(&ponte(&alice, &["sync", "--json"])));
    assert!(v.iter().any(|m| m["text"] == "carol 1"), "{v:?}");
    server.kill();

    let restored = Server::start(&dest);
    fwd.retarget(restored.addr);
    let v = json_lines(&ok(&ponte(&bobby, &["sync", "--json"])));
    let mut texts: Vec<&str> = v.iter().filter_map(|m| m["text"].as_str()).collect();
    texts.sort_unstable();
    assert_eq!(texts, before, "{v:?}");
    // Alice's device also accepts the restored server (same key) and learns
    // that bob got them.
    ok(&ponte(&alice, &["sync", "--json"]));
    let history = json_lines(&ok(&ponte(&alice, &["history", "bobby", "--json"])));
    for m in &history {
        if before.contains(&m["text"].as_str().unwrap()) {
            assert!(m["status"] == "delivered" || m["status"] == "read", "{m}");
        } else {
            // What the server accepted after the backup is gone with it:
            // its tick stays at "sent" (docs/OPERATIONS-SERVER.md says so).
            assert_eq!(m["status"], "sent", "{m}");
        }
    }
    assert_eq!(history.len(), 4);

    // The restored server never heard of carol: her send fails (and is
    // marked failed), with the way back in a hint.
    let out = ponte(&carol, &["send", "alice", "carol 2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("NOT_REGISTERED") && err.contains("hint:") && err.contains("register"),
        "{err}"
    );
    // The same profile registers again, same name, same identity...
    let again = ponte(&carol, &["register", "--server", &address, "carol"]);
    assert!(ok(&again).contains("registered as carol"), "{again:?}");
    // ...another name on it is still refused...
    let other = ponte(&carol, &["register", "--server", &address, "carol2"]);
    assert!(
        common::stderr(&other).contains("already registered"),
        "{other:?}"
    );
    // ...and alice sees no key change: the safety number is the same.
    ok(&ponte(&carol, &["send", "alice", "carol 3"]));
    let v = json_lines(&ok(&ponte(&alice, &["sync", "--json"])));
    let m = v.iter().find(|m| m["text"] == "carol 3").expect("carol 3");
    assert!(m.get("key_changed").is_none(), "{m}");
    let contacts = json_lines(&ok(&ponte(&alice, &["contacts", "--json"])));
    let c = contacts.iter().find(|c| c["handle"] == "carol").unwrap();
    assert_eq!(c["key_changed"], false, "{c}");
    let h = json_lines(&ok(&ponte(&carol, &["history", "alice", "--json"])));
    let status: Vec<(&str, &str)> = h
        .iter()
        .map(|m| (m["text"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    // carol 1's receipts went to the old server after the backup: lost
    // with it, so its tick stays at "sent".
    assert_eq!(
        status,
        [
            ("carol 1", "sent"),
            ("carol 2", "failed"),
            ("carol 3", "sent")
        ]
    );
}
