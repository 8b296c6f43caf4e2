//! The `send` that discovers a contact's identity key change says so
//! (`SendOutcome::key_changed`), holds its message (queued, not sent, not
//! lost), and later sends are refused; against real `ponte-server`s in
//! process on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use common::{direct, register, start_server, sync_texts as texts};
use ponte_client::{ClientError, Status};

#[tokio::test]
async fn the_discovering_send_reports_the_change_and_holds_its_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));

    // Server B is server A's data (same key, alice's account) copied
    // before bob registered on A; another device registers "bob" on B.
    let server = start_server(&data_a).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    server.stop().await;
    std::fs::create_dir(&data_b).unwrap();
    for entry in std::fs::read_dir(&data_a).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, data_b.join(path.file_name().unwrap())).unwrap();
    }
    let server = start_server(&data_a).await;
    alice.set_routes(direct(server.addr));
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    let first = alice.send("bob", "before the change").await.unwrap();
    assert_eq!(first.message.status, Status::Sent, "{:?}", first.note);
    assert!(!first.key_changed);
    assert_eq!(texts(&mut bob).await, ["before the change"]);
    server.stop().await;

    let server = start_server(&data_b).await;
    alice.set_routes(direct(server.addr));
    let mut new_bob = register(&tmp.path().join("new-bob"), &server.address, "bob").await;
    assert_ne!(new_bob.public_identity(), bob.public_identity());

    let held = alice.send("bob", "held").await.unwrap();
    assert!(held.key_changed, "the discovering send says so");
    assert_eq!(held.message.status, Status::Queued);
    assert_eq!(alice.store().outbox().unwrap().len(), 1, "held, not lost");
    assert!(matches!(
        alice.send("bob", "refused").await,
        Err(ClientError::KeyChanged(_))
    ));
    assert!(texts(&mut new_bob).await.is_empty(), "not sent");

    alice.safety_number("bob", true).await.unwrap();
    alice.confirm("bob").unwrap();
    let after = alice.send("bob", "after confirming").await.unwrap();
    assert!(!after.key_changed);
    assert_eq!(after.message.status, Status::Sent, "{:?}", after.note);
    assert_eq!(texts(&mut new_bob).await, ["held", "after confirming"]);
    server.stop().await;
}

/// A contact's key change is said where it concerns that contact: a `send`
/// to anyone else (a new process, so nothing was said yet) goes out with
/// no SECURITY warning, while the message held for the changed contact
/// stays held; `sync` still says why it is held.
#[tokio::test]
async fn a_key_change_is_not_reported_on_sends_to_other_contacts() {
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let alice_dir = tmp.path().join("alice");

    let server = start_server(&data_a).await;
    let mut alice = register(&alice_dir, &server.address, "alice").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    server.stop().await;
    std::fs::create_dir(&data_b).unwrap();
    for entry in std::fs::read_dir(&data_a).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, data_b.join(path.file_name().unwrap())).unwrap();
    }
    let server = start_server(&data_a).await;
    alice.set_routes(direct(server.addr));
    register(&tmp.path().join("bob"), &server.address, "bob").await;
    let first = alice.send("bob", "before the change").await.unwrap();
    assert_eq!(first.message.status, Status::Sent, "{:?}", first.note);
    server.stop().await;

    let server = start_server(&data_b).await;
    alice.set_routes(direct(server.addr));
    carol.set_routes(direct(server.addr));
    register(&tmp.path().join("new-bob"), &server.address, "bob").await;
    let held = alice.send("bob", "held").await.unwrap();
    assert!(held.key_changed);
    drop(alice);

    let mut alice = ponte_client::Client::open(&alice_dir, || panic!("no passphrase")).unwrap();
    alice.set_routes(direct(server.addr));
    let to_carol = alice.send("carol", "hello carol").await.unwrap();
    assert_eq!(to_carol.message.status, Status::Sent, "{:?}", to_carol.note);
    assert_eq!(to_carol.note, None);
    assert!(to_carol.warnings.is_empty(), "{:?}", to_carol.warnings);
    assert_eq!(texts(&mut carol).await, ["hello carol"]);
    assert_eq!(alice.store().outbox().unwrap().len(), 1, "bob's stays held");
    let (_, warnings) = common::sync_report(&mut alice).await;
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w.contains("bob's identity key has CHANGED"))
            .count(),
        1,
        "{warnings:?}"
    );
    server.stop().await;
}
