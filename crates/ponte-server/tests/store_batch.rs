//! Jobs that share one batch (one transaction on PostgreSQL, one group
//! commit on SQLite): the same message sent many times at once is stored
//! once and its copies answered as duplicates, the mailbox limit counts
//! every send of the batch, a send right behind the registration of its
//! recipient finds it, one ack of messages and receipts together deletes
//! both and stores a receipt per message, and acks and sends of many
//! accounts at once all answer with exact counts. The PostgreSQL writer
//! finds and locks a batch's recipients and acked senders in one
//! statement and sends each job's writes with as few round trips as it
//! can; these pin what that must not change. Each body runs once per
//! backend.
#![allow(clippy::unwrap_used)]

mod common;

use common::{accepted_seq, at, msg, msg_max, no_sink, store_account, Backend};
use futures::future::join_all;
use ponte_server::store::{AccountId, ItemKind, NewAccount, RegisterOutcome, SendOutcome, Seq};

async fn copies_sent_at_once_are_stored_once(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let outcomes = join_all((0..20).map(|i| store.send(msg(alice, "bob", 7, 10 + i, 1_000_000))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect::<Vec<_>>();
    let accepted: Vec<&SendOutcome> = outcomes
        .iter()
        .filter(|o| matches!(o, SendOutcome::Accepted { .. }))
        .collect();
    assert_eq!(accepted.len(), 1, "{outcomes:?}");
    let SendOutcome::Accepted { accepted_at, .. } = accepted[0] else {
        unreachable!()
    };
    for o in &outcomes {
        assert!(
            matches!(o, SendOutcome::Accepted { .. })
                || *o
                    == SendOutcome::Duplicate {
                        accepted_at: *accepted_at
                    },
            "{o:?}"
        );
    }
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 1);
    // The waiting count is one, not twenty: one more fits under a limit
    // of two, then the mailbox is full.
    accepted_seq(&*store, msg_max(alice, "bob", 8, 100, 2)).await;
    assert_eq!(
        store.send(msg_max(alice, "bob", 9, 101, 2)).await.unwrap(),
        SendOutcome::MailboxFull
    );
    store.close();
}

async fn the_mailbox_limit_counts_every_send_of_a_batch(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let outcomes = join_all((0..30u8).map(|i| store.send(msg_max(alice, "bob", i, 10, 12))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect::<Vec<_>>();
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, SendOutcome::Accepted { .. }))
        .count();
    let full = outcomes
        .iter()
        .filter(|o| **o == SendOutcome::MailboxFull)
        .count();
    assert_eq!((accepted, full), (12, 18), "{outcomes:?}");
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 12);
    // Acked, the count goes back to zero: twelve fit again.
    let seqs: Vec<Seq> = store
        .fetch_mailbox(bob, Seq::ZERO, 100)
        .await
        .unwrap()
        .iter()
        .map(|i| i.seq)
        .collect();
    assert_eq!(
        store
            .ack(bob, seqs, at(20), at(1_000_000))
            .await
            .unwrap()
            .messages,
        12
    );
    for i in 100..112u8 {
        accepted_seq(&*store, msg_max(alice, "bob", i, 30, 12)).await;
    }
    assert_eq!(
        store
            .send(msg_max(alice, "bob", 112, 31, 12))
            .await
            .unwrap(),
        SendOutcome::MailboxFull
    );
    store.close();
}

async fn a_send_behind_its_recipients_registration_finds_it(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    for round in 0..5u8 {
        let handle = format!("new{round}");
        let n = 10 + round;
        // Queued in this order (each is queued on its first poll), most
        // likely into one batch.
        let (registered, sent) = futures::join!(
            store.register(NewAccount {
                handle: handle.clone(),
                noise_key: [n; 32],
                curve25519: [n; 32],
                ed25519: [n; 32],
                signature: vec![n; 64],
                invite: None,
                invite_required: false,
                now: at(1),
            }),
            store.send(msg(alice, &handle, n, 10, 1_000_000)),
        );
        let RegisterOutcome::Created(id) = registered.unwrap() else {
            panic!("not created")
        };
        assert!(
            matches!(sent.unwrap(), SendOutcome::Accepted { recipient, .. } if recipient == id)
        );
        assert_eq!(store.mailbox_len(id).await.unwrap(), 1);
    }
    store.close();
}

async fn one_ack_of_messages_and_receipts_takes_both(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    // Alice's mailbox: a receipt from bob, then two messages from bob.
    let to_bob = accepted_seq(&*store, msg(alice, "bob", 1, 10, 1_000_000)).await;
    let out = store
        .ack(bob, vec![to_bob], at(20), at(1_000_000))
        .await
        .unwrap();
    assert_eq!((out.messages, out.notices), (1, 0));
    let m1 = accepted_seq(&*store, msg(bob, "alice", 2, 30, 1_000_000)).await;
    let m2 = accepted_seq(&*store, msg(bob, "alice", 3, 31, 1_000_000)).await;
    let items = store.fetch_mailbox(alice, Seq::ZERO, 10).await.unwrap();
    let kinds: Vec<ItemKind> = items.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        vec![ItemKind::Receipt, ItemKind::Message, ItemKind::Message]
    );
    // One ack of all three (a message first), with a seq not hers.
    let out = store
        .ack(
            alice,
            vec![m2, items[0].seq, m1, Seq(999_999)],
            at(40),
            at(1_000_000),
        )
        .await
        .unwrap();
    assert_eq!((out.messages, out.notices), (2, 1));
    let ids: Vec<Vec<u8>> = out.receipts.iter().map(|r| r.message_id.to_vec()).collect();
    assert_eq!(
        ids,
        vec![vec![3u8; 16], vec![2u8; 16]],
        "in the ack's order"
    );
    assert!(out.receipts.iter().all(|r| r.owner == bob && r.seq > m2));
    assert_eq!(store.mailbox_len(alice).await.unwrap(), 0);
    // Bob's mailbox: exactly those two receipts, from alice, same seqs.
    let got: Vec<(Seq, ItemKind, String)> = store
        .fetch_mailbox(bob, Seq::ZERO, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.seq, i.kind, i.peer_handle))
        .collect();
    let mut want: Vec<(Seq, ItemKind, String)> = out
        .receipts
        .iter()
        .map(|r| (r.seq, ItemKind::Receipt, "alice".to_owned()))
        .collect();
    want.sort_unstable_by_key(|w| w.0);
    assert_eq!(got, want);
    store.close();
}

async fn acks_and_sends_of_many_accounts_at_once_all_answer(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let mut ids: Vec<AccountId> = Vec::new();
    for i in 0..8u8 {
        ids.push(store_account(&*store, &format!("u{i}"), i + 1).await);
    }
    // Everyone sends one message to each of the next three.
    let mut sends = Vec::new();
    for (i, &from) in ids.iter().enumerate() {
        for k in 1..=3usize {
            let to = format!("u{}", (i + k) % ids.len());
            let id = u8::try_from(i * 3 + k).unwrap();
            sends.push(store.send(msg(from, &to, id, 10, 1_000_000)));
        }
    }
    for o in join_all(sends).await {
        assert!(matches!(o.unwrap(), SendOutcome::Accepted { .. }));
    }
    // Everyone acks their three at once, while everyone sends once more.
    let mut acks = Vec::new();
    for &owner in &ids {
        let seqs: Vec<Seq> = store
            .fetch_mailbox(owner, Seq::ZERO, 10)
            .await
            .unwrap()
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(seqs.len(), 3);
        acks.push(store.ack(owner, seqs, at(20), at(1_000_000)));
    }
    let more =
        join_all(ids.iter().enumerate().map(|(i, &from)| {
            store.send(msg(from, &format!("u{}", (i + 1) % 8), 100, 30, 1_000_000))
        }));
    let (acked, sent) = futures::join!(join_all(acks), more);
    for a in acked {
        let a = a.unwrap();
        assert_eq!((a.messages, a.receipts.len()), (3, 3));
    }
    for o in sent {
        assert!(matches!(o.unwrap(), SendOutcome::Accepted { .. }));
    }
    // Each mailbox: three receipts and the one new message.
    for &owner in &ids {
        let items = store.fetch_mailbox(owner, Seq::ZERO, 10).await.unwrap();
        let receipts = items.iter().filter(|i| i.kind == ItemKind::Receipt).count();
        let messages = items.iter().filter(|i| i.kind == ItemKind::Message).count();
        assert_eq!((receipts, messages), (3, 1), "{owner}");
        assert_eq!(store.mailbox_len(owner).await.unwrap(), 4);
    }
    store.close();
}

/// One `#[tokio::test]` per body above, against `$backend`.
macro_rules! backend_tests {
    ($backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let backend = $backend;
                if (backend.ready)() {
                    super::$name(backend).await
                }
            }
        )*
    };
}

mod sqlite {
    use super::common;

    backend_tests!(common::SQLITE;
        copies_sent_at_once_are_stored_once,
        the_mailbox_limit_counts_every_send_of_a_batch,
        a_send_behind_its_recipients_registration_finds_it,
        one_ack_of_messages_and_receipts_takes_both,
        acks_and_sends_of_many_accounts_at_once_all_answer,
    );
}

mod postgres {
    use super::common;

    backend_tests!(common::POSTGRES;
        copies_sent_at_once_are_stored_once,
        the_mailbox_limit_counts_every_send_of_a_batch,
        a_send_behind_its_recipients_registration_finds_it,
        one_ack_of_messages_and_receipts_takes_both,
        acks_and_sends_of_many_accounts_at_once_all_answer,
    );
}
