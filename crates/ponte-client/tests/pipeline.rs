//! The outbox flush keeps many sends in flight on one connection: answers
//! come back in the order the server finishes them and are matched by
//! request id; every outcome of a one-at-a-time flush is kept (order on the
//! recipient's side, failed messages, a full mailbox or a refusal for now
//! said once, nothing lost), and a long outbox over a slow path drains in a
//! few round trips.
#![allow(clippy::unwrap_used)]

mod common;

use common::{delaying_forwarder, direct, register, start_server_with, sync_report, sync_texts};
use ponte_client::{Client, Status};
use std::time::Duration;

/// Syncs; the warnings it reported.
async fn sync_warnings(client: &mut Client) -> Vec<String> {
    sync_report(client).await.1
}

/// Refusals answered at once (a body over the server's limit) overtake
/// sends still committing: each answer still lands on its own message.
#[tokio::test]
async fn answers_out_of_order_land_on_their_own_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server_with(&tmp.path().join("server"), |cfg| {
        cfg.max_body_len = 1500;
    })
    .await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    assert_eq!(
        alice.send("bob", "hello").await.unwrap().message.status,
        Status::Sent
    );
    let long = "x".repeat(3000);
    let mut expected = vec!["hello".to_owned()];
    let mut too_long = Vec::new();
    for i in 0..80 {
        if i % 7 == 3 {
            too_long.push(alice.queue_text("bob", &long).unwrap());
        } else {
            let text = format!("m{i}");
            alice.queue_text("bob", &text).unwrap();
            expected.push(text);
        }
    }
    let warnings = sync_warnings(&mut alice).await;
    assert_eq!(warnings.len(), too_long.len(), "{warnings:?}");
    assert!(
        warnings.iter().all(|w| w.contains("TOO_LARGE")),
        "{warnings:?}"
    );
    for m in alice.history("bob").unwrap() {
        let want = if too_long.contains(&m.id) {
            Status::Failed
        } else {
            Status::Sent
        };
        assert_eq!(m.status, want, "{m:?}");
    }
    assert_eq!(alice.store().outbox_len().unwrap(), 0);
    assert_eq!(sync_texts(&mut bob).await, expected);
    server.stop().await;
}

/// Many sends in flight to a recipient whose mailbox fills: said once,
/// the rest waits in order, others go out, and the next flushes continue
/// where the mailbox stopped.
#[tokio::test]
async fn a_full_mailbox_is_said_once_and_keeps_the_order() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server_with(&tmp.path().join("server"), |cfg| {
        cfg.max_pending_per_mailbox = 5;
    })
    .await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    let (mut to_bob, mut to_carol) = (Vec::new(), Vec::new());
    for i in 0..12 {
        let text = format!("b{i}");
        alice.queue_text("bob", &text).unwrap();
        to_bob.push(text);
        if i % 4 == 0 {
            let text = format!("c{i}");
            alice.queue_text("carol", &text).unwrap();
            to_carol.push(text);
        }
    }
    let warnings = sync_warnings(&mut alice).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("bob's mailbox on the server is full"));
    assert_eq!(sync_texts(&mut carol).await, to_carol);
    assert_eq!(sync_texts(&mut bob).await, to_bob[..5]);
    sync_warnings(&mut alice).await;
    assert_eq!(sync_texts(&mut bob).await, to_bob[5..10]);
    let warnings = sync_warnings(&mut alice).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(sync_texts(&mut bob).await, to_bob[10..]);
    assert!(alice
        .history("bob")
        .unwrap()
        .iter()
        .all(|m| m.status != Status::Queued));
    server.stop().await;
}

/// Messages queued for the test over a slow path.
const SLOW_PATH_MESSAGES: usize = 500;

/// 500 queued messages over a path with a 200 ms round trip (a forwarder
/// holding every chunk 100 ms each way) leave in a few round trips per 32,
/// not one round trip each (which would take about 100 s).
#[tokio::test]
async fn a_long_outbox_drains_in_a_few_round_trips_over_a_slow_path() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server_with(&tmp.path().join("server"), |_| {}).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    assert_eq!(
        alice.send("bob", "first").await.unwrap().message.status,
        Status::Sent
    );
    let mut expected = vec!["first".to_owned()];
    for i in 0..SLOW_PATH_MESSAGES {
        let text = format!("m{i}");
        alice.queue_text("bob", &text).unwrap();
        expected.push(text);
    }
    let slow = delaying_forwarder(server.addr, Duration::from_millis(100)).await;
    alice.set_routes(direct(slow));
    let started = std::time::Instant::now();
    let (_, warnings) = sync_report(&mut alice).await;
    let took = started.elapsed();
    eprintln!(
        "{SLOW_PATH_MESSAGES} queued messages over a 200 ms round trip: sync took {:.2} s",
        took.as_secs_f64()
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(alice.store().outbox_len().unwrap(), 0);
    assert!(alice
        .history("bob")
        .unwrap()
        .iter()
        .all(|m| m.status == Status::Sent));
    assert_eq!(sync_texts(&mut bob).await, expected);
    server.stop().await;
}

/// The server refuses every store for a while (a trigger fails its mailbox
/// inserts, as a full disk would) while 100 sends are in flight: one
/// warning, nothing marked sent or failed, and everything goes out once,
/// in order, when it stores again.
#[tokio::test]
async fn a_refusal_for_now_under_many_sends_is_said_once_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = start_server_with(&data, |_| {}).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    assert_eq!(
        alice.send("bob", "first").await.unwrap().message.status,
        Status::Sent
    );
    let db = rusqlite::Connection::open(data.join("ponte.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON mailbox \
         BEGIN SELECT RAISE(ABORT, 'no space left'); END;",
    )
    .unwrap();
    let mut expected = vec!["first".to_owned()];
    for i in 0..100 {
        let text = format!("m{i}");
        alice.queue_text("bob", &text).unwrap();
        expected.push(text);
    }
    let warnings = sync_warnings(&mut alice).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("UNAVAILABLE"), "{warnings:?}");
    assert_eq!(alice.store().outbox_len().unwrap(), 100);
    let queued = alice
        .history("bob")
        .unwrap()
        .iter()
        .filter(|m| m.status == Status::Queued)
        .count();
    assert_eq!(queued, 100);

    db.execute_batch("DROP TRIGGER refuse").unwrap();
    let warnings = sync_warnings(&mut alice).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(alice.store().outbox_len().unwrap(), 0);
    assert_eq!(sync_texts(&mut bob).await, expected);
    server.stop().await;
}
