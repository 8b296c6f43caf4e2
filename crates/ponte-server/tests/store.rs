//! The storage layer alone, on a real SQLite file: acks are scoped to their
//! owner, seqs are never reused, group commit answers every job, expiry
//! turns messages into notices, data survives reopening.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ponte_server::store::{
    AccountId, ItemKind, NewAccount, NewMessage, RegisterOutcome, SendOutcome, Store,
};

async fn account(store: &Store, handle: &str, n: u8) -> AccountId {
    match store
        .register(NewAccount {
            handle: handle.into(),
            noise_key: [n; 32],
            curve25519: [n; 32],
            ed25519: [n; 32],
            signature: vec![n; 64],
            invite: None,
            invite_required: false,
            now_ms: 1,
        })
        .await
        .unwrap()
    {
        RegisterOutcome::Created(id) => id,
        other => panic!("{other:?}"),
    }
}

fn msg(sender: AccountId, to: &str, id: u8, now_ms: i64, expires_at_ms: i64) -> NewMessage {
    NewMessage {
        sender,
        message_id: [id; 16],
        recipient: to.into(),
        body: Bytes::from_static(b"body"),
        now_ms,
        expires_at_ms,
        max_pending: 1000,
    }
}

#[tokio::test]
async fn acks_are_scoped_and_seqs_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let alice = account(&store, "alice", 1).await;
    let bob = account(&store, "bob", 2).await;
    let mallory = account(&store, "mallory", 3).await;
    let SendOutcome::Accepted { seq, .. } =
        store.send(msg(alice, "bob", 1, 10, 1000)).await.unwrap()
    else {
        panic!()
    };
    // Mallory cannot ack (delete) bob's message.
    let out = store.ack(mallory, vec![seq], 20, 2000).await.unwrap();
    assert_eq!(out.messages, 0);
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 1);
    // Bob acks: the message becomes a receipt for alice.
    let out = store
        .ack(bob, vec![seq, seq, 999_999], 20, 2000)
        .await
        .unwrap();
    assert_eq!(out.messages, 1);
    assert_eq!(out.notify, vec![alice]);
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 0);
    let items = store.fetch_mailbox(alice, 0, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, ItemKind::Receipt);
    assert_eq!(items[0].peer_handle, "bob");
    assert!(items[0].seq > seq);
    // A new message gets a fresh seq even though the old row is gone.
    let SendOutcome::Accepted { seq: seq2, .. } =
        store.send(msg(alice, "bob", 2, 30, 1000)).await.unwrap()
    else {
        panic!()
    };
    assert!(seq2 > items[0].seq);
    store.close();
}

#[tokio::test]
async fn concurrent_jobs_all_answer_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let alice = account(&store, "alice", 1).await;
        account(&store, "bob", 2).await;
        let mut tasks = Vec::new();
        for i in 0..200u8 {
            let store = std::sync::Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store.send(msg(alice, "bob", i, 10, 1000)).await.unwrap()
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), SendOutcome::Accepted { .. }));
        }
        store.close();
    }
    let store = Store::open(dir.path()).unwrap();
    let bob = store
        .account_by_handle("bob".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.mailbox_len(bob.id).await.unwrap(), 200);
    let first = store.fetch_mailbox(bob.id, 0, 50).await.unwrap();
    assert_eq!(first.len(), 50);
    let next = store
        .fetch_mailbox(bob.id, first[49].seq, 500)
        .await
        .unwrap();
    assert_eq!(next.len(), 150);
    assert!(next.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn expiry_makes_notices_and_drops_old_notices() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let alice = account(&store, "alice", 1).await;
    let bob = account(&store, "bob", 2).await;
    store.send(msg(alice, "bob", 1, 10, 100)).await.unwrap();
    store.send(msg(alice, "bob", 2, 10, 10_000)).await.unwrap();
    // At t=200 only the first message is past its deadline.
    let out = store.expire(200, 1_000_000, 500).await.unwrap();
    assert_eq!(out.expired_messages, 1);
    assert_eq!(out.notify, vec![alice]);
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 1);
    let notices = store.fetch_mailbox(alice, 0, 10).await.unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].kind, ItemKind::Expired);
    assert_eq!(&notices[0].message_id[..], &[1u8; 16]);
    // The notice itself is dropped after its own retention (t=200+500).
    let out = store.expire(701, 1_000_000, 500).await.unwrap();
    assert_eq!(out.dropped_notices, 1);
    assert!(store.fetch_mailbox(alice, 0, 10).await.unwrap().is_empty());
    // The dedup log forgets ids older than the retention.
    store.expire(20_000, 1000, 500).await.unwrap();
    assert!(matches!(
        store
            .send(msg(alice, "bob", 1, 20_001, 30_000))
            .await
            .unwrap(),
        SendOutcome::Accepted { .. }
    ));
    store.close();
}
