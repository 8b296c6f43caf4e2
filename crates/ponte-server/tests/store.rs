//! The storage layer alone, through the storage seam (`Store`): acks are
//! scoped to their owner, seqs are never reused (also across reopening),
//! concurrent jobs are all answered, the sink gets committed items in seq
//! order before the answer, expiry turns messages into notices and drops
//! due notices, pending counts survive reopening, duplicates get their
//! first accept time, a mailbox read is one snapshot, a group message is
//! handed over once per recipient with one shared body, refuses recipients
//! one by one, and is acked and expired per recipient. Each body takes a
//! [`Backend`] and runs once per backend (the `backend_tests!` list at the
//! end); the commit-interval tests are SQLite's own.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    accepted_seq, at, group_msg, ms, msg, msg_max, no_sink, store_account, Backend, Recorder,
};

use ponte_server::store::{
    AccountId, Committed, GroupSendOutcome, ItemKind, MailItem, Refused, SendOutcome, Seq,
    SqliteStore, Store, StoreOptions, DB_FILE,
};

async fn acks_are_scoped_and_seqs_never_reused(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let mallory = store_account(&*store, "mallory", 3).await;
    let SendOutcome::Accepted { seq, .. } =
        store.send(msg(alice, "bob", 1, 10, 1000)).await.unwrap()
    else {
        panic!()
    };
    // Mallory cannot ack (delete) bob's message.
    let out = store
        .ack(mallory, vec![seq], at(20), at(2000))
        .await
        .unwrap();
    assert_eq!(out.messages, 0);
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 1);
    // Bob acks: the message becomes a receipt for alice.
    let out = store
        .ack(bob, vec![seq, seq, Seq(999_999)], at(20), at(2000))
        .await
        .unwrap();
    assert_eq!(out.messages, 1);
    assert_eq!(out.notified(), vec![alice]);
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 0);
    let items = store.fetch_mailbox(alice, Seq::ZERO, 10).await.unwrap();
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

async fn concurrent_jobs_all_answer_and_survive_reopen(b: Backend) {
    let dir = (b.scratch)();
    {
        let store = (b.open)(dir.path(), no_sink());
        let alice = store_account(&*store, "alice", 1).await;
        store_account(&*store, "bob", 2).await;
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
    let store = (b.open)(dir.path(), no_sink());
    let bob = store
        .account_by_handle("bob".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.mailbox_len(bob.id).await.unwrap(), 200);
    let first = store.fetch_mailbox(bob.id, Seq::ZERO, 50).await.unwrap();
    assert_eq!(first.len(), 50);
    let next = store
        .fetch_mailbox(bob.id, first[49].seq, 500)
        .await
        .unwrap();
    assert_eq!(next.len(), 150);
    assert!(next.windows(2).all(|w| w[0].seq < w[1].seq));
}

async fn expiry_makes_notices_and_drops_old_notices(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    store.send(msg(alice, "bob", 1, 10, 100)).await.unwrap();
    store.send(msg(alice, "bob", 2, 10, 10_000)).await.unwrap();
    // At t=200 only the first message is past its deadline.
    let out = store.expire(at(200), ms(1_000_000), ms(500)).await.unwrap();
    assert_eq!(out.expired_messages, 1);
    assert_eq!(out.notify, vec![alice]);
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 1);
    let notices = store.fetch_mailbox(alice, Seq::ZERO, 10).await.unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].kind, ItemKind::Expired);
    assert_eq!(&notices[0].message_id[..], &[1u8; 16]);
    // The notice itself is dropped after its own retention (t=200+500).
    let out = store.expire(at(701), ms(1_000_000), ms(500)).await.unwrap();
    assert_eq!(out.dropped_notices, 1);
    assert!(store
        .fetch_mailbox(alice, Seq::ZERO, 10)
        .await
        .unwrap()
        .is_empty());
    // The dedup log forgets ids older than the retention.
    store.expire(at(20_000), ms(1000), ms(500)).await.unwrap();
    assert!(matches!(
        store
            .send(msg(alice, "bob", 1, 20_001, 30_000))
            .await
            .unwrap(),
        SendOutcome::Accepted { .. }
    ));
    store.close();
}

async fn seqs_never_reused_across_reopen(b: Backend) {
    let dir = (b.scratch)();
    let mut handed_out: Vec<Seq> = Vec::new();
    for round in 0..3u8 {
        let store = (b.open)(dir.path(), no_sink());
        let (alice, bob) = if round == 0 {
            (
                store_account(&*store, "alice", 1).await,
                store_account(&*store, "bob", 2).await,
            )
        } else {
            let a = store.account_by_handle("alice".into()).await.unwrap();
            let b = store.account_by_handle("bob".into()).await.unwrap();
            (a.unwrap().id, b.unwrap().id)
        };
        let max_before = handed_out.iter().copied().max().unwrap_or(Seq::ZERO);
        let mut seqs = Vec::new();
        for i in 0..5u8 {
            let seq = accepted_seq(&*store, msg(alice, "bob", round * 10 + i, 10, 1000)).await;
            assert!(seq > max_before, "round {round}: seq {seq} <= {max_before}");
            seqs.push(seq);
        }
        // Ack everything: the messages become receipts (fresh seqs), then
        // the receipts are acked too, so both tables end up empty.
        let out = store
            .ack(bob, seqs.clone(), at(20), at(1_000_000))
            .await
            .unwrap();
        assert_eq!(out.messages, 5);
        let receipts: Vec<Seq> = out.receipts.iter().map(|r| r.seq).collect();
        assert!(receipts
            .iter()
            .all(|r| *r > max_before && !seqs.contains(r)));
        let out = store
            .ack(alice, receipts.clone(), at(30), at(1_000_000))
            .await
            .unwrap();
        assert_eq!(out.notices, 5);
        assert_eq!(store.mailbox_len(alice).await.unwrap(), 0);
        assert_eq!(store.mailbox_len(bob).await.unwrap(), 0);
        handed_out.extend(seqs);
        handed_out.extend(receipts);
        drop(store);
    }
    let mut sorted = handed_out.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), handed_out.len(), "a seq was handed out twice");
}

async fn pending_counts_survive_reopen(b: Backend) {
    let dir = (b.scratch)();
    const MAX: u32 = 5;
    let (alice, bob);
    {
        let store = (b.open)(dir.path(), no_sink());
        alice = store_account(&*store, "alice", 1).await;
        bob = store_account(&*store, "bob", 2).await;
        for i in 0..MAX {
            let i = u8::try_from(i).unwrap();
            accepted_seq(&*store, msg_max(alice, "bob", i, 10, MAX)).await;
        }
        assert_eq!(
            store
                .send(msg_max(alice, "bob", 50, 11, MAX))
                .await
                .unwrap(),
            SendOutcome::MailboxFull
        );
        store.close();
    }
    let store = (b.open)(dir.path(), no_sink());
    assert_eq!(
        store
            .send(msg_max(alice, "bob", 51, 12, MAX))
            .await
            .unwrap(),
        SendOutcome::MailboxFull
    );
    // Receipts for alice do not count towards bob's limit, and a refused
    // send took no slot: one ack makes room for exactly one message.
    let first = store.fetch_mailbox(bob, Seq::ZERO, 1).await.unwrap();
    let out = store
        .ack(bob, vec![first[0].seq], at(20), at(1_000_000))
        .await
        .unwrap();
    assert_eq!(out.messages, 1);
    accepted_seq(&*store, msg_max(alice, "bob", 52, 21, MAX)).await;
    assert_eq!(
        store
            .send(msg_max(alice, "bob", 53, 22, MAX))
            .await
            .unwrap(),
        SendOutcome::MailboxFull
    );
    // Expiry frees slots too, and the count is still right after another
    // reopen.
    store.close();
    drop(store);
    let store = (b.open)(dir.path(), no_sink());
    let all = store.fetch_mailbox(bob, Seq::ZERO, 100).await.unwrap();
    assert_eq!(all.len(), MAX as usize);
    let out = store
        .expire(at(10 + 1_000_000), ms(10_000_000), ms(1000))
        .await
        .unwrap();
    assert_eq!(out.expired_messages, u64::from(MAX) - 1);
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 1);
    for i in 0..MAX - 1 {
        let id = u8::try_from(60 + i).unwrap();
        accepted_seq(&*store, msg_max(alice, "bob", id, 2_000_000, MAX)).await;
    }
    assert_eq!(
        store
            .send(msg_max(alice, "bob", 70, 2_000_001, MAX))
            .await
            .unwrap(),
        SendOutcome::MailboxFull
    );
    store.close();
}

/// The message's index in the first 8 bytes of its id.
fn indexed_id(i: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    id
}

async fn sink_gets_sends_in_seq_order_before_the_answer(b: Backend) {
    use futures::stream::{FuturesUnordered, StreamExt as _};
    const N: usize = 500;
    let dir = (b.scratch)();
    let rec = std::sync::Arc::new(Recorder::default());
    let store = (b.open)(dir.path(), rec.clone());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let mut sends = FuturesUnordered::new();
    for i in 0..N {
        let mut m = msg(alice, "bob", 0, 10, 1_000_000);
        m.message_id = indexed_id(i);
        m.max_pending = 10_000;
        let store = &store;
        sends.push(async move { (i, store.send(m).await.unwrap()) });
    }
    let mut answered = 0;
    // Unconstrained: tokio's cooperative budget would otherwise make some
    // first polls (which enqueue the jobs) return early and run out of order.
    while let Some((i, out)) = tokio::task::unconstrained(sends.next()).await {
        let SendOutcome::Accepted { seq, recipient, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(recipient, bob);
        // Already handed over, with the same seq.
        let items = rec.items();
        assert!(
            items
                .iter()
                .any(|c| matches!(c, Committed::Item { owner, item }
                if *owner == bob && item.seq == seq && item.message_id[..] == indexed_id(i))),
            "send {i} answered before its hand-over"
        );
        answered += 1;
    }
    assert_eq!(answered, N);
    let items: Vec<MailItem> = rec
        .items()
        .into_iter()
        .map(|c| match c {
            Committed::Item { owner, item } if owner == bob => item,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(items.len(), N);
    assert!(
        items.windows(2).all(|w| w[0].seq < w[1].seq),
        "not handed over in seq order"
    );
    // Enqueued in order from one task: stored (and handed on) in order.
    let order: Vec<[u8; 16]> = items
        .iter()
        .map(|i| i.message_id[..].try_into().unwrap())
        .collect();
    assert_eq!(order, (0..N).map(indexed_id).collect::<Vec<_>>());
    // Handed over as a read of the mailbox returns them.
    let read = store.fetch_mailbox(bob, Seq::ZERO, 10_000).await.unwrap();
    for (handed, read) in items.iter().zip(&read) {
        assert_eq!(
            (handed.seq, handed.kind, &handed.message_id, &handed.body),
            (read.seq, read.kind, &read.message_id, &read.body)
        );
        assert_eq!(
            (handed.at, &handed.peer_handle),
            (at(10), &"alice".to_owned())
        );
    }
    assert!(rec
        .threads()
        .iter()
        .all(|t| t.as_deref() == Some(b.sink_thread)));
    // A duplicate stores nothing, and hands nothing over.
    let mut m = msg(alice, "bob", 0, 20, 1_000_000);
    m.message_id = indexed_id(0);
    let out = store.send(m).await.unwrap();
    assert_eq!(
        out,
        SendOutcome::Duplicate {
            accepted_at: at(10)
        }
    );
    assert_eq!(rec.items().len(), N);
    store.close();
}

async fn a_panicking_sink_does_not_stop_the_store(b: Backend) {
    let dir = (b.scratch)();
    let rec = std::sync::Arc::new(Recorder::default());
    let store = (b.open)(dir.path(), rec.clone());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    // The sink panics on the sync thread; the sender still gets its answer.
    rec.panic_next();
    let out = store
        .send(msg(alice, "bob", 1, 10, 1_000_000))
        .await
        .unwrap();
    assert!(matches!(out, SendOutcome::Accepted { .. }), "{out:?}");
    // Later writes are still answered and handed over, and all are stored.
    let seq2 = accepted_seq(&*store, msg(alice, "bob", 2, 11, 1_000_000)).await;
    let seq3 = accepted_seq(&*store, msg(alice, "bob", 3, 12, 1_000_000)).await;
    let handed: Vec<Seq> = rec
        .items()
        .iter()
        .map(|c| match c {
            Committed::Item { item, .. } => item.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(handed, vec![seq2, seq3]);
    let items = store.fetch_mailbox(bob, Seq::ZERO, 10).await.unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items.iter().any(|i| i.seq == seq2));
    store.close();
}

async fn ack_hands_over_the_stored_receipts(b: Backend) {
    let dir = (b.scratch)();
    let rec = std::sync::Arc::new(Recorder::default());
    let store = (b.open)(dir.path(), rec.clone());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let carol = store_account(&*store, "carol", 3).await;
    let mut msg_seqs = Vec::new();
    for (i, sender) in [alice, carol, alice].into_iter().enumerate() {
        let id = u8::try_from(i).unwrap() + 1;
        msg_seqs.push(accepted_seq(&*store, msg(sender, "bob", id, 10, 1_000_000)).await);
    }
    let sends_handed = rec.items().len();
    let out = store
        .ack(bob, msg_seqs.clone(), at(50), at(1_000_000))
        .await
        .unwrap();
    // Handed over before the answer: exactly the stored receipts.
    let handed: Vec<(AccountId, MailItem)> = rec.items()[sends_handed..]
        .iter()
        .map(|c| match c {
            Committed::Item { owner, item } => (*owner, item.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(handed.len(), out.receipts.len());
    for ((owner, item), r) in handed.iter().zip(&out.receipts) {
        assert_eq!(
            (*owner, item.seq, &item.message_id, item.at),
            (r.owner, r.seq, &r.message_id, r.at)
        );
        assert_eq!(item.kind, ItemKind::Receipt);
        assert_eq!(item.peer_handle, "bob");
    }
    assert_eq!(out.messages, 3);
    assert_eq!(out.notified(), vec![alice, carol]);
    let owners: Vec<AccountId> = out.receipts.iter().map(|r| r.owner).collect();
    assert_eq!(owners, vec![alice, carol, alice]);
    let max_msg = msg_seqs.iter().copied().max().unwrap();
    assert!(out
        .receipts
        .iter()
        .all(|r| r.seq > max_msg && r.at == at(50)));
    assert!(out.receipts.windows(2).all(|w| w[0].seq < w[1].seq));
    // The owners' mailboxes hold exactly these receipts, same seqs.
    for (owner, ids) in [(alice, vec![1u8, 3]), (carol, vec![2])] {
        let items = store.fetch_mailbox(owner, Seq::ZERO, 10).await.unwrap();
        let want: Vec<(Seq, Vec<u8>)> = out
            .receipts
            .iter()
            .filter(|r| r.owner == owner)
            .map(|r| (r.seq, r.message_id.to_vec()))
            .collect();
        let got: Vec<(Seq, Vec<u8>)> = items
            .iter()
            .map(|i| (i.seq, i.message_id.to_vec()))
            .collect();
        assert_eq!(got, want);
        let want_ids: Vec<Vec<u8>> = ids.iter().map(|b| vec![*b; 16]).collect();
        assert_eq!(got.into_iter().map(|g| g.1).collect::<Vec<_>>(), want_ids);
        for i in &items {
            assert_eq!(i.kind, ItemKind::Receipt);
            assert_eq!(i.peer_handle, "bob");
            assert_eq!(i.at, at(50));
            assert!(i.body.is_empty());
        }
    }
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 0);
    store.close();
}

async fn expire_drops_due_receipts_and_keeps_the_rest(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let s1 = accepted_seq(&*store, msg(alice, "bob", 1, 10, 1_000_000)).await;
    let s2 = accepted_seq(&*store, msg(alice, "bob", 2, 10, 1_000_000)).await;
    // Two receipts with different deadlines.
    let early = store.ack(bob, vec![s1], at(20), at(500)).await.unwrap();
    let late = store.ack(bob, vec![s2], at(30), at(5000)).await.unwrap();
    let (early, late) = (early.receipts[0].seq, late.receipts[0].seq);
    assert_eq!(store.mailbox_len(alice).await.unwrap(), 2);
    // Not yet due: nothing dropped.
    let out = store
        .expire(at(499), ms(10_000_000), ms(1000))
        .await
        .unwrap();
    assert_eq!((out.dropped_notices, out.expired_messages), (0, 0));
    assert_eq!(store.mailbox_len(alice).await.unwrap(), 2);
    // The early one is due at its deadline; the late one stays.
    let out = store
        .expire(at(500), ms(10_000_000), ms(1000))
        .await
        .unwrap();
    assert_eq!((out.dropped_notices, out.expired_messages), (1, 0));
    assert!(!out.more);
    let items = store.fetch_mailbox(alice, Seq::ZERO, 10).await.unwrap();
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![late]);
    assert_ne!(early, late);
    let out = store
        .expire(at(4999), ms(10_000_000), ms(1000))
        .await
        .unwrap();
    assert_eq!(out.dropped_notices, 0);
    let out = store
        .expire(at(5000), ms(10_000_000), ms(1000))
        .await
        .unwrap();
    assert_eq!(out.dropped_notices, 1);
    assert_eq!(store.mailbox_len(alice).await.unwrap(), 0);
    // Dropping a notice frees no message slot and breaks nothing: bob's
    // mailbox still takes messages up to its limit.
    accepted_seq(&*store, msg_max(alice, "bob", 3, 6000, 1)).await;
    assert_eq!(
        store.send(msg_max(alice, "bob", 4, 6001, 1)).await.unwrap(),
        SendOutcome::MailboxFull
    );
    store.close();
}

async fn duplicates_answer_first_accept_time_even_when_full(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    store_account(&*store, "carol", 3).await;
    accepted_seq(&*store, msg_max(alice, "bob", 1, 10, 1)).await;
    // Retry while there is room (large limit) and when the mailbox is full.
    for (now, max) in [(20, 1000), (30, 1)] {
        assert_eq!(
            store
                .send(msg_max(alice, "bob", 1, now, max))
                .await
                .unwrap(),
            SendOutcome::Duplicate {
                accepted_at: at(10)
            },
            "retry at {now}"
        );
    }
    // Same (sender, id) to another recipient is still the same message.
    assert_eq!(
        store
            .send(msg_max(alice, "carol", 1, 40, 10))
            .await
            .unwrap(),
        SendOutcome::Duplicate {
            accepted_at: at(10)
        }
    );
    // A new id to the full mailbox is refused and not remembered.
    assert_eq!(
        store.send(msg_max(alice, "bob", 2, 50, 1)).await.unwrap(),
        SendOutcome::MailboxFull
    );
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 1);
    // Unknown handle: refused, and the id is not burnt.
    assert_eq!(
        store
            .send(msg_max(alice, "nobody", 3, 60, 10))
            .await
            .unwrap(),
        SendOutcome::UnknownRecipient
    );
    assert_eq!(
        store
            .send(msg_max(alice, "nobody", 3, 61, 10))
            .await
            .unwrap(),
        SendOutcome::UnknownRecipient
    );
    accepted_seq(&*store, msg_max(alice, "bob", 3, 70, 10)).await;
    accepted_seq(&*store, msg_max(alice, "bob", 2, 80, 10)).await;
    // Another sender's id 1 is a different message.
    let carol = store
        .account_by_handle("carol".into())
        .await
        .unwrap()
        .unwrap();
    accepted_seq(&*store, msg_max(carol.id, "bob", 1, 90, 10)).await;
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 4);
    // Still a duplicate after the message was delivered and acked.
    let items = store.fetch_mailbox(bob, Seq::ZERO, 10).await.unwrap();
    let seqs: Vec<Seq> = items.iter().map(|i| i.seq).collect();
    store.ack(bob, seqs, at(100), at(1_000_000)).await.unwrap();
    assert_eq!(
        store.send(msg_max(alice, "bob", 1, 110, 10)).await.unwrap(),
        SendOutcome::Duplicate {
            accepted_at: at(10)
        }
    );
    store.close();
}

/// The expiry sweep's wakes reach the sink once the sweep is durable and
/// before its answer, on the sync thread that hands over every write's
/// items in commit order (`sink_gets_sends_in_seq_order_before_the_answer`
/// above): a connection reads a new notice before anything committed after
/// it is handed over in memory.
async fn expiry_wakes_reach_the_sink_before_the_answer(b: Backend) {
    let dir = (b.scratch)();
    let rec = std::sync::Arc::new(Recorder::default());
    let store = (b.open)(dir.path(), rec.clone());
    let alice = store_account(&*store, "alice", 1).await;
    store_account(&*store, "bob", 2).await;
    store.send(msg(alice, "bob", 1, 10, 100)).await.unwrap();
    let sends_handed = rec.items().len();
    let out = store.expire(at(200), ms(1_000_000), ms(500)).await.unwrap();
    let woken: Vec<AccountId> = rec.items()[sends_handed..]
        .iter()
        .map(|c| match c {
            Committed::Wake(a) => *a,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(woken, vec![alice]);
    assert_eq!(out.notify, vec![alice]);
    let threads = rec.threads();
    assert_eq!(
        threads.last().and_then(|t| t.as_deref()),
        Some(b.sink_thread)
    );
}

/// With no spacing between commits (`commit_interval = 0`), concurrent
/// sends are all stored, each under its own seq, every one written and
/// committed before its answer, and all still there after reopening.
#[tokio::test]
async fn commit_interval_zero_stores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        SqliteStore::open_with(
            dir.path(),
            StoreOptions::with_commit_interval(std::time::Duration::ZERO),
            no_sink(),
        )
        .unwrap(),
    );
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let stats = store.stats().clone();
    let (commits, writes) = (stats.commits.get(), stats.writes.get());
    let mut tasks = Vec::new();
    for i in 0..100u8 {
        let store = std::sync::Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.send(msg(alice, "bob", i, 10, 1000)).await.unwrap()
        }));
    }
    let mut seqs = std::collections::BTreeSet::new();
    for t in tasks {
        match t.await.unwrap() {
            SendOutcome::Accepted { seq, .. } => assert!(seqs.insert(seq), "seq {seq} twice"),
            other => panic!("{other:?}"),
        }
    }
    // Every send was a write; concurrent ones may share a commit, but no
    // answer went out before a commit that holds it.
    assert_eq!(stats.writes.get() - writes, 100);
    let made = stats.commits.get() - commits;
    assert!((1..=100).contains(&made), "{made} commits");
    assert_eq!(stats.failed.get(), 0);
    assert_eq!(store.mailbox_len(bob).await.unwrap(), 100);
    store.close();
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    let items = store.fetch_mailbox(bob, Seq::ZERO, 500).await.unwrap();
    let stored: std::collections::BTreeSet<Seq> = items.iter().map(|i| i.seq).collect();
    assert_eq!(stored, seqs);
}

/// Sends that each wait for their answer make one commit each; with
/// `commit_interval` set, consecutive commits are at least that far apart
/// (a lower bound on elapsed time: it cannot fail because a machine is slow).
#[tokio::test]
async fn commit_interval_spaces_consecutive_commits() {
    use std::time::{Duration, Instant};
    const SENDS: u8 = 4;
    for interval_ms in [0u64, 100] {
        let interval = Duration::from_millis(interval_ms);
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(
            dir.path(),
            StoreOptions::with_commit_interval(interval),
            no_sink(),
        )
        .unwrap();
        let alice = store_account(&store, "alice", 1).await;
        store_account(&store, "bob", 2).await;
        let stats = store.stats().clone();
        let (commits, writes) = (stats.commits.get(), stats.writes.get());
        assert!(
            commits >= 2 && writes >= 2,
            "{commits} commits, {writes} writes"
        );
        let started = Instant::now();
        for i in 0..SENDS {
            let out = store.send(msg(alice, "bob", i, 10, 1000)).await.unwrap();
            assert!(matches!(out, SendOutcome::Accepted { .. }), "{out:?}");
        }
        let elapsed = started.elapsed();
        assert_eq!(stats.commits.get() - commits, u64::from(SENDS));
        assert_eq!(stats.writes.get() - writes, u64::from(SENDS));
        // The first send may commit at once (the last commit is older than
        // the interval); each later one waits for the interval.
        let least = interval * u32::from(SENDS - 1);
        assert!(
            elapsed >= least,
            "{elapsed:?} < {least:?} (interval {interval:?})"
        );
        assert_eq!(stats.failed.get(), 0);
        store.close();
    }
}

/// A mailbox read sees messages and receipts from one snapshot: whatever it
/// returns up to its highest seq is everything committed up to that seq.
/// (A connection skips in-memory hand-overs at or below the highest seq it
/// read; with two snapshots, a message committed between the two queries
/// would be skipped and wait for the next login.) Messages and receipts
/// for alice are written while her mailbox is read over and over.
async fn a_mailbox_read_is_one_snapshot_of_messages_and_receipts(b: Backend) {
    use std::sync::Arc;
    const ROUNDS: u64 = 600;
    const MAX_READS: usize = 20_000;
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..ROUNDS {
                let id = |dir: u8| {
                    let mut id = [dir; 16];
                    id[..8].copy_from_slice(&i.to_be_bytes());
                    id
                };
                // A message for alice, and a receipt for alice (bob acks
                // her message to him), each in its own commit.
                let mut to_alice = msg(bob, "alice", 0, 10, 1_000_000);
                to_alice.message_id = id(1);
                to_alice.max_pending = 100_000;
                accepted_seq(&*store, to_alice).await;
                let mut to_bob = msg(alice, "bob", 0, 10, 1_000_000);
                to_bob.message_id = id(2);
                to_bob.max_pending = 100_000;
                let seq = accepted_seq(&*store, to_bob).await;
                store
                    .ack(bob, vec![seq], at(20), at(1_000_000))
                    .await
                    .unwrap();
            }
        })
    };
    let mut reads: Vec<Vec<Seq>> = Vec::new();
    while !writer.is_finished() && reads.len() < MAX_READS {
        let items = store
            .fetch_mailbox(alice, Seq::ZERO, 1_000_000)
            .await
            .unwrap();
        reads.push(items.iter().map(|i| i.seq).collect());
    }
    writer.await.unwrap();
    // Alice never acks, and nothing expires: the final mailbox holds every
    // item any read could have seen.
    let all: Vec<Seq> = store
        .fetch_mailbox(alice, Seq::ZERO, 1_000_000)
        .await
        .unwrap()
        .iter()
        .map(|i| i.seq)
        .collect();
    assert_eq!(all.len() as u64, 2 * ROUNDS);
    assert!(reads.len() > 10, "only {} reads", reads.len());
    for read in &reads {
        let Some(&top) = read.last() else { continue };
        let expected: Vec<Seq> = all.iter().copied().filter(|s| *s <= top).collect();
        assert_eq!(read, &expected, "a read up to seq {top} missed items");
    }
}

/// A group message goes to every recipient that exists, is not the sender
/// and has room, handed over once per recipient before the answer (in seq
/// order, each with the group id and the one body the sender sent, shared
/// and not copied), and read back the same from each mailbox. The others
/// are refused one by one. A resend stores nothing; a send that every
/// recipient refused leaves its id unused.
async fn group_send_fans_out_once_and_refuses_one_by_one(b: Backend) {
    let dir = (b.scratch)();
    let rec = std::sync::Arc::new(Recorder::default());
    let store = (b.open)(dir.path(), rec.clone());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let carol = store_account(&*store, "carol", 3).await;
    let dave = store_account(&*store, "dave", 4).await;
    // Dave's mailbox is full at 2.
    for id in [1, 2] {
        accepted_seq(&*store, msg(bob, "dave", id, 5, 1_000_000)).await;
    }
    let before = rec.items().len();
    let mut m = group_msg(
        alice,
        &["bob", "nobody", "carol", "alice", "dave", "bob"],
        9,
        10,
        1_000_000,
    );
    m.max_pending = 2;
    let body = m.body.clone();
    let out = store.send_group(m.clone()).await.unwrap();
    assert_eq!(
        out,
        GroupSendOutcome::Accepted {
            accepted_at: at(10),
            entries: 2,
            refused: vec![
                ("nobody".into(), Refused::Unknown),
                ("alice".into(), Refused::Sender),
                ("dave".into(), Refused::MailboxFull),
            ],
        }
    );
    let handed: Vec<(AccountId, MailItem)> = rec.items()[before..]
        .iter()
        .map(|c| match c {
            Committed::Item { owner, item } => (*owner, item.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        handed.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![bob, carol]
    );
    assert!(handed[0].1.seq < handed[1].1.seq);
    for (owner, item) in &handed {
        assert_eq!(item.kind, ItemKind::Message, "{owner}");
        assert_eq!(&item.message_id[..], &[9u8; 16]);
        assert_eq!(item.group_id.as_deref(), Some(&[0x6a; 16][..]));
        assert_eq!(item.peer_handle, "alice");
        assert_eq!(item.body, body);
        assert_eq!(item.body.as_ptr(), body.as_ptr(), "body copied for {owner}");
        let read = store.fetch_mailbox(*owner, Seq::ZERO, 10).await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(
            (read[0].seq, &read[0].body, &read[0].group_id),
            (item.seq, &body, &item.group_id)
        );
    }
    assert_eq!(store.mailbox_len(dave).await.unwrap(), 2);
    // A resend, even to other recipients, is a duplicate that stores nothing.
    let handed_before = rec.items().len();
    let again = store
        .send_group(group_msg(alice, &["dave", "carol"], 9, 20, 1_000_000))
        .await
        .unwrap();
    assert_eq!(
        again,
        GroupSendOutcome::Duplicate {
            accepted_at: at(10)
        }
    );
    // The dedup log is the 1:1 one too.
    assert_eq!(
        store
            .send(msg(alice, "dave", 9, 21, 1_000_000))
            .await
            .unwrap(),
        SendOutcome::Duplicate {
            accepted_at: at(10)
        }
    );
    assert_eq!(rec.items().len(), handed_before);
    for owner in [bob, carol] {
        assert_eq!(store.mailbox_len(owner).await.unwrap(), 1);
    }
    // Nobody accepted: nothing stored, and the id can still be used.
    let none = store
        .send_group(group_msg(alice, &["nobody", "alice"], 10, 30, 1_000_000))
        .await
        .unwrap();
    assert_eq!(
        none,
        GroupSendOutcome::Accepted {
            accepted_at: at(30),
            entries: 0,
            refused: vec![
                ("nobody".into(), Refused::Unknown),
                ("alice".into(), Refused::Sender),
            ],
        }
    );
    assert_eq!(rec.items().len(), handed_before);
    assert!(matches!(
        store
            .send_group(group_msg(alice, &["carol"], 10, 40, 1_000_000))
            .await
            .unwrap(),
        GroupSendOutcome::Accepted { entries: 1, .. }
    ));
    store.close();
}

/// Every entry of a group message is a message of its own: a recipient's
/// ack deletes only its entry and gives the sender a receipt naming it; the
/// entries left expire one notice per recipient; the others still read the
/// body after one acked; nothing is left after a reopen.
async fn group_entries_are_acked_and_expired_per_recipient(b: Backend) {
    let dir = (b.scratch)();
    let store = (b.open)(dir.path(), no_sink());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let carol = store_account(&*store, "carol", 3).await;
    let dave = store_account(&*store, "dave", 4).await;
    let out = store
        .send_group(group_msg(alice, &["bob", "carol", "dave"], 7, 10, 500))
        .await
        .unwrap();
    assert!(matches!(out, GroupSendOutcome::Accepted { entries: 3, .. }));
    let bob_seq = store.fetch_mailbox(bob, Seq::ZERO, 10).await.unwrap()[0].seq;
    let acked = store
        .ack(bob, vec![bob_seq], at(20), at(100_000))
        .await
        .unwrap();
    assert_eq!(acked.messages, 1);
    assert_eq!(acked.notified(), vec![alice]);
    for owner in [carol, dave] {
        let items = store.fetch_mailbox(owner, Seq::ZERO, 10).await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(&items[0].body[..], b"group body");
    }
    let expired = store
        .expire(at(600), ms(1_000_000), ms(100_000))
        .await
        .unwrap();
    assert_eq!(expired.expired_messages, 2);
    assert_eq!(expired.notify, vec![alice]);
    let mut got: Vec<(ItemKind, String, Vec<u8>)> = store
        .fetch_mailbox(alice, Seq::ZERO, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.kind, i.peer_handle, i.message_id.to_vec()))
        .collect();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (ItemKind::Receipt, "bob".into(), vec![7; 16]),
            (ItemKind::Expired, "carol".into(), vec![7; 16]),
            (ItemKind::Expired, "dave".into(), vec![7; 16]),
        ]
    );
    store.close();
    drop(store);
    let store = (b.open)(dir.path(), no_sink());
    for owner in [bob, carol, dave] {
        assert_eq!(store.mailbox_len(owner).await.unwrap(), 0);
    }
    assert_eq!(store.mailbox_len(alice).await.unwrap(), 3);
    store.close();
}

/// One `#[tokio::test]` per behavioural body above, against `$backend`.
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
        acks_are_scoped_and_seqs_never_reused,
        concurrent_jobs_all_answer_and_survive_reopen,
        expiry_makes_notices_and_drops_old_notices,
        seqs_never_reused_across_reopen,
        pending_counts_survive_reopen,
        sink_gets_sends_in_seq_order_before_the_answer,
        a_panicking_sink_does_not_stop_the_store,
        ack_hands_over_the_stored_receipts,
        expire_drops_due_receipts_and_keeps_the_rest,
        duplicates_answer_first_accept_time_even_when_full,
        expiry_wakes_reach_the_sink_before_the_answer,
        group_send_fans_out_once_and_refuses_one_by_one,
        group_entries_are_acked_and_expired_per_recipient,
    );

    /// `(rows in bodies, sum of their refs, group entries in mailbox)`,
    /// read beside the open store (WAL: a reader sees what is committed).
    fn body_rows(dir: &std::path::Path) -> (i64, i64, i64) {
        let c = rusqlite::Connection::open(dir.join(super::DB_FILE)).unwrap();
        c.query_row(
            "SELECT (SELECT COUNT(*) FROM bodies), (SELECT COALESCE(SUM(refs), 0) FROM bodies),
                    (SELECT COUNT(*) FROM mailbox WHERE body_id IS NOT NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }

    /// SQLite keeps a group body in one row, its entries with empty bodies,
    /// and deletes the row with its last entry: by acks, by expiry, and by
    /// both mixed; a 1:1 message never touches `bodies`.
    #[tokio::test]
    async fn a_group_body_is_one_row_until_its_last_entry_goes() {
        use super::*;
        let dir = tempfile::tempdir().unwrap();
        let store = (common::SQLITE.open)(dir.path(), no_sink());
        let alice = store_account(&*store, "alice", 1).await;
        let bob = store_account(&*store, "bob", 2).await;
        let carol = store_account(&*store, "carol", 3).await;
        store
            .send(msg(alice, "bob", 1, 5, 1_000_000))
            .await
            .unwrap();
        assert_eq!(body_rows(dir.path()), (0, 0, 0));
        // Acked by both.
        let m = group_msg(alice, &["bob", "carol"], 2, 10, 1_000_000);
        store.send_group(m).await.unwrap();
        assert_eq!(body_rows(dir.path()), (1, 2, 2));
        let c = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        let inline: i64 = c
            .query_row(
                "SELECT SUM(length(body)) FROM mailbox WHERE body_id IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(inline, 0, "a group entry carries its own copy of the body");
        for (owner, left) in [(bob, (1, 1, 1)), (carol, (0, 0, 0))] {
            let seqs: Vec<Seq> = store
                .fetch_mailbox(owner, Seq::ZERO, 10)
                .await
                .unwrap()
                .iter()
                .filter(|i| i.group_id.is_some())
                .map(|i| i.seq)
                .collect();
            store.ack(owner, seqs, at(20), at(1_000_000)).await.unwrap();
            assert_eq!(body_rows(dir.path()), left);
        }
        // One acked, one expired.
        let m = group_msg(alice, &["bob", "carol"], 3, 30, 100);
        store.send_group(m).await.unwrap();
        let seq = store.fetch_mailbox(carol, Seq::ZERO, 10).await.unwrap()[0].seq;
        store
            .ack(carol, vec![seq], at(40), at(1_000_000))
            .await
            .unwrap();
        assert_eq!(body_rows(dir.path()), (1, 1, 1));
        store
            .expire(at(200), ms(1_000_000), ms(1_000_000))
            .await
            .unwrap();
        assert_eq!(body_rows(dir.path()), (0, 0, 0));
        // The 1:1 message is still there, with its body.
        let items = store.fetch_mailbox(bob, Seq::ZERO, 10).await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            (&items[0].body[..], &items[0].group_id),
            (&b"body"[..], &None)
        );
        store.close();
    }

    /// On two worker threads, with commits as fast as they come (so that
    /// reads fall between many of them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mailbox_read_is_one_snapshot_of_messages_and_receipts() {
        super::a_mailbox_read_is_one_snapshot_of_messages_and_receipts(common::SQLITE_UNSPACED)
            .await
    }
}

/// The same bodies against PostgreSQL, each in a fresh database.
mod postgres {
    use super::common;

    backend_tests!(common::POSTGRES;
        acks_are_scoped_and_seqs_never_reused,
        concurrent_jobs_all_answer_and_survive_reopen,
        expiry_makes_notices_and_drops_old_notices,
        seqs_never_reused_across_reopen,
        pending_counts_survive_reopen,
        sink_gets_sends_in_seq_order_before_the_answer,
        a_panicking_sink_does_not_stop_the_store,
        ack_hands_over_the_stored_receipts,
        expire_drops_due_receipts_and_keeps_the_rest,
        duplicates_answer_first_accept_time_even_when_full,
        expiry_wakes_reach_the_sink_before_the_answer,
        a_mailbox_read_is_one_snapshot_of_messages_and_receipts,
        group_send_fans_out_once_and_refuses_one_by_one,
        group_entries_are_acked_and_expired_per_recipient,
    );
}
