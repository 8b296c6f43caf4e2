//! A recipient whose mailbox on the server is full holds only the messages
//! to that recipient: they stay queued, in order, while messages to others
//! go out, and they leave once the recipient has read the mailbox down.
#![allow(clippy::unwrap_used)]

mod common;

use common::{register, start_server_with, sync_report as sync};
use ponte_client::Status;

#[tokio::test]
async fn a_full_mailbox_holds_only_that_recipient() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server_with(&tmp.path().join("server"), |cfg| {
        cfg.max_pending_per_mailbox = 2;
    })
    .await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;

    for text in ["b1", "b2"] {
        let out = alice.send("bob", text).await.unwrap();
        assert_eq!(out.message.status, Status::Sent, "{:?}", out.note);
    }
    // Bob's mailbox is full: b3 and b4 wait, in order.
    for text in ["b3", "b4"] {
        let out = alice.send("bob", text).await.unwrap();
        assert_eq!(out.message.status, Status::Queued);
        let note = out.note.unwrap();
        assert!(
            note.contains("bob's mailbox on the server is full"),
            "{note}"
        );
    }
    // Carol is not held up by them.
    let out = alice.send("carol", "c1").await.unwrap();
    assert_eq!(out.message.status, Status::Sent, "{:?}", out.note);
    assert_eq!(sync(&mut carol).await.0, ["c1"]);

    // Bob reads his mailbox down; alice's next sync sends the rest.
    assert_eq!(sync(&mut bob).await.0, ["b1", "b2"]);
    let (_, warnings) = sync(&mut alice).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    let history = alice.history("bob").unwrap();
    assert!(
        history.iter().all(|m| m.status != Status::Queued),
        "{history:?}"
    );
    assert_eq!(sync(&mut bob).await.0, ["b3", "b4"]);
    server.stop().await;
}

/// The server cannot store anything for a while (here a trigger makes its
/// mailbox inserts fail, as a full disk would): sends wait in the outbox,
/// the refusal is said once rather than at every retry, and everything goes
/// out, in order, once the server stores again.
#[tokio::test]
async fn a_refusing_server_is_reported_once_and_the_outbox_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = start_server_with(&data, |_| {}).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    // A first message sets up the session, so later sends only store.
    assert_eq!(
        alice.send("bob", "a0").await.unwrap().message.status,
        Status::Sent
    );
    let db = rusqlite::Connection::open(data.join("ponte.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let refuse = || {
        db.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON mailbox \
             BEGIN SELECT RAISE(ABORT, 'no space left'); END;",
        )
        .unwrap();
    };
    refuse();

    let out = alice.send("bob", "a1").await.unwrap();
    assert_eq!(out.message.status, Status::Queued);
    let note = out.note.unwrap();
    assert!(
        note.contains("kept in the outbox") && note.contains("UNAVAILABLE"),
        "{note}"
    );
    // Retrying with nothing changed: still queued, nothing said again.
    let out = alice.send("bob", "a2").await.unwrap();
    assert_eq!(out.message.status, Status::Queued);
    assert_eq!(out.note, None);
    let (_, warnings) = sync(&mut alice).await;
    assert!(warnings.is_empty(), "{warnings:?}");

    // The server stores again: everything goes out, in order.
    db.execute_batch("DROP TRIGGER refuse").unwrap();
    let (_, warnings) = sync(&mut alice).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    let history = alice.history("bob").unwrap();
    assert!(
        history.iter().all(|m| m.status == Status::Sent),
        "{history:?}"
    );
    assert_eq!(sync(&mut bob).await.0, ["a0", "a1", "a2"]);

    // Refusing again after a flush went through is news: said again.
    refuse();
    let out = alice.send("bob", "a3").await.unwrap();
    assert!(out.note.is_some_and(|n| n.contains("UNAVAILABLE")));
    server.stop().await;
}
