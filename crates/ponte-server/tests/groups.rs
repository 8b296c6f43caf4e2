//! Group messages through a real server on 127.0.0.1: sent once with its
//! recipients, stored once (one `bodies` row, one mailbox entry per
//! recipient, checked in the database), pushed to every online recipient
//! exactly once with the group id and to offline ones at their login,
//! acknowledged per recipient (a receipt each for the sender, the body gone
//! with the last ack), a resend stores nothing, unknown recipients are
//! refused one by one. With 5 recipients and with 1,024.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{error_code, registered, store_device_account, Client, Device, TestServer, WAIT};
use ponte_server::store::{SqliteStore, DB_FILE};
use ponte_wire::messages::{
    self, client_frame, server_frame, ErrorCode, GroupSendAck, RecipientRefusal,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;

const GROUP: [u8; 16] = [0x47; 16];

/// `(rows in bodies, group entries in mailbox)`, read beside the running
/// server (WAL: a reader sees what is committed).
fn stored(dir: &Path) -> (i64, i64) {
    let c = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    c.query_row(
        "SELECT (SELECT COUNT(*) FROM bodies),
                (SELECT COUNT(*) FROM mailbox WHERE body_id IS NOT NULL)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Waits (bounded) until the database holds `want` (see [`stored`]): acks
/// are committed after the client sent them, with no answer.
async fn wait_stored(dir: &Path, want: (i64, i64)) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while stored(dir) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}, want {want:?}",
            stored(dir)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn group_send(id: [u8; 16], recipients: &[String], body: &[u8]) -> client_frame::Body {
    client_frame::Body::SendGroup(messages::SendGroupMessage {
        message_id: Bytes::copy_from_slice(&id),
        group_id: Bytes::copy_from_slice(&GROUP),
        recipients: recipients.to_vec(),
        body: Bytes::copy_from_slice(body),
    })
}

fn group_ack(body: server_frame::Body) -> GroupSendAck {
    match body {
        server_frame::Body::GroupSendAck(a) => a,
        other => panic!("expected GroupSendAck, got {other:?}"),
    }
}

/// Receives the group message `id` on `c` (checking sender, body and group
/// id), acks it, and checks with a ping round trip that nothing else of it
/// was queued behind: each recipient gets it exactly once.
async fn receive_once(c: &mut Client, id: [u8; 16], body: &[u8]) -> u64 {
    let d = c.next_deliver().await;
    assert_eq!(&d.message_id[..], &id);
    assert_eq!(d.sender, "alice");
    assert_eq!(&d.body[..], body);
    assert_eq!(d.group_id.as_deref(), Some(&GROUP[..]));
    c.ack(vec![d.seq]).await;
    let r = c
        .request(client_frame::Body::Ping(messages::Ping { nonce: 1 }))
        .await;
    assert!(matches!(r, server_frame::Body::Pong(_)));
    assert!(
        !c.pushes.iter().any(|f| matches!(
            &f.body,
            Some(server_frame::Body::Deliver(x)) if x.message_id[..] == id
        )),
        "delivered twice"
    );
    d.seq
}

/// Takes `n` delivery receipts for `id` on the sender's connection, acking
/// each (the delivery window holds 64 unacknowledged pushes), and returns
/// the recipients they name.
async fn receipts(alice: &mut Client, id: [u8; 16], n: usize) -> HashSet<String> {
    let mut named = HashSet::new();
    while named.len() < n {
        let r = alice.next_receipt().await;
        assert_eq!(&r.message_id[..], &id);
        alice.ack(vec![r.seq]).await;
        assert!(
            named.insert(r.recipient.clone()),
            "two receipts for {}",
            r.recipient
        );
    }
    named
}

#[tokio::test]
async fn five_recipients_stored_once_pushed_once_each_and_acked_away() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        let many = ponte_server::RateLimit {
            burst: 100,
            per_hour: 100,
        };
        c.register_limit = many;
        c.register_limit_per_peer = many;
    })
    .await;
    let mut alice = registered(&server, "alice").await;
    let names: Vec<String> = (1..=5).map(|i| format!("member{i}")).collect();
    let mut online = Vec::new();
    for n in &names[..3] {
        online.push(registered(&server, n).await);
    }
    // Two members registered, then gone offline.
    let mut offline = Vec::new();
    for n in &names[3..] {
        let c = registered(&server, n).await;
        offline.push(c.device.clone());
        drop(c);
    }
    let id = [1u8; 16];
    let body = b"one ciphertext for the whole group";
    let mut to = names.clone();
    to.insert(2, "nobody".into());
    let ack = group_ack(alice.request(group_send(id, &to, body)).await);
    assert!(!ack.duplicate);
    assert_eq!(&ack.message_id[..], &id);
    assert_eq!(ack.refused.len(), 1);
    assert_eq!(ack.refused[0].handle, "nobody");
    assert_eq!(ack.refused[0].reason, RecipientRefusal::Unknown as i32);
    assert_eq!(stored(dir.path()), (1, 5), "one body, five entries");

    // A resend stores nothing and names nobody refused.
    let again = group_ack(alice.request(group_send(id, &to, body)).await);
    assert!(again.duplicate);
    assert!(again.refused.is_empty());
    assert_eq!(again.accepted_at_ms, ack.accepted_at_ms);
    assert_eq!(stored(dir.path()), (1, 5));

    for c in &mut online {
        receive_once(c, id, body).await;
    }
    // The offline members get it at their login.
    for device in &offline {
        let mut c = Client::connect(&server, device).await;
        assert!(matches!(c.login().await, server_frame::Body::LoggedIn(_)));
        receive_once(&mut c, id, body).await;
        online.push(c);
    }
    let named = receipts(&mut alice, id, 5).await;
    assert_eq!(named, names.iter().cloned().collect::<HashSet<_>>());
    // Every entry acknowledged: the body went with the last.
    wait_stored(dir.path(), (0, 0)).await;
    server.stop().await;
}

#[tokio::test]
async fn group_send_refusals_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| c.max_pending_per_mailbox = 1).await;
    let mut alice = registered(&server, "alice").await;
    let mut bob = registered(&server, "bob").await;
    let _carol = registered(&server, "carol").await;
    // Carol's mailbox is full.
    assert!(matches!(
        bob.send_msg("carol", [9; 16], b"x").await,
        server_frame::Body::SendAck(_)
    ));
    let to: Vec<String> = ["bob", "NOT A HANDLE", "alice", "carol", "nobody"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ack = group_ack(alice.request(group_send([1; 16], &to, b"hi")).await);
    let refused: Vec<(String, i32)> = ack
        .refused
        .iter()
        .map(|r| (r.handle.clone(), r.reason))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("NOT A HANDLE".into(), RecipientRefusal::Unknown as i32),
            ("alice".into(), RecipientRefusal::Sender as i32),
            ("carol".into(), RecipientRefusal::MailboxFull as i32),
            ("nobody".into(), RecipientRefusal::Unknown as i32),
        ]
    );
    assert_eq!(stored(dir.path()), (1, 1));
    receive_once_from(&mut bob, [1; 16]).await;
    wait_stored(dir.path(), (0, 0)).await;

    // Whole-request refusals store nothing.
    let bad = |id: [u8; 16], to: Vec<String>, body: &[u8], group: &[u8]| {
        client_frame::Body::SendGroup(messages::SendGroupMessage {
            message_id: Bytes::copy_from_slice(&id),
            group_id: Bytes::copy_from_slice(group),
            recipients: to,
            body: Bytes::copy_from_slice(body),
        })
    };
    let bob_only = vec!["bob".to_string()];
    let cases = [
        (
            bad([2; 16], vec![], b"x", &GROUP),
            ErrorCode::InvalidArgument,
        ),
        (
            bad([3; 16], bob_only.clone(), b"", &GROUP),
            ErrorCode::InvalidArgument,
        ),
        (
            bad([4; 16], bob_only.clone(), b"x", &[1; 15]),
            ErrorCode::InvalidArgument,
        ),
        (
            bad([5; 16], vec!["bob".into(), "bob".into()], b"x", &GROUP),
            ErrorCode::InvalidArgument,
        ),
        (
            bad([6; 16], bob_only.clone(), &vec![0; 64 * 1024 + 1], &GROUP),
            ErrorCode::TooLarge,
        ),
        (
            bad(
                [7; 16],
                (0..=messages::MAX_GROUP_RECIPIENTS)
                    .map(|i| format!("m{i}"))
                    .collect(),
                b"x",
                &GROUP,
            ),
            ErrorCode::LimitExceeded,
        ),
    ];
    for (req, code) in cases {
        let r = alice.request(req).await;
        assert_eq!(error_code(&r), code, "{r:?}");
        if let server_frame::Body::Error(e) = &r {
            assert_eq!(e.message_id.len(), 16);
        }
    }
    // Every recipient refused: nothing stored, the id stays unused.
    let ack = group_ack(
        alice
            .request(group_send([8; 16], &["nobody".into()], b"x"))
            .await,
    );
    assert!(!ack.duplicate && ack.refused.len() == 1);
    let ack = group_ack(alice.request(group_send([8; 16], &bob_only, b"x")).await);
    assert!(!ack.duplicate && ack.refused.is_empty());
    assert_eq!(stored(dir.path()), (1, 1));
    server.stop().await;
}

async fn receive_once_from(c: &mut Client, id: [u8; 16]) {
    let d = c.next_deliver().await;
    assert_eq!(&d.message_id[..], &id);
    assert_eq!(d.group_id.as_deref(), Some(&GROUP[..]));
    c.ack(vec![d.seq]).await;
}

/// A frame over the group message's cap (the body cap plus 1,024 longest
/// handles) is refused before it is decoded; one at the cap is answered.
#[tokio::test]
async fn group_frame_capped_by_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| c.max_body_len = 32 * 1024).await;
    let mut alice = registered(&server, "alice").await;
    let long: Vec<String> = (0..messages::MAX_GROUP_RECIPIENTS)
        .map(|i| format!("{i:_>32}"))
        .collect();
    let ack = group_ack(
        alice
            .request(group_send([1; 16], &long, &vec![1; 32 * 1024]))
            .await,
    );
    assert_eq!(ack.refused.len(), messages::MAX_GROUP_RECIPIENTS);
    // 40 KiB more than the cap: closed as too large.
    let mut c = alice;
    c.fire(group_send([2; 16], &long, &vec![1; 72 * 1024]))
        .await;
    let close = c
        .push_where(|b| matches!(b, server_frame::Body::Close(_)))
        .await;
    match close {
        server_frame::Body::Close(cl) => {
            assert_eq!(cl.reason, messages::CloseReason::FrameTooLarge as i32)
        }
        _ => unreachable!(),
    }
    server.stop().await;
}

/// 1,024 recipients (accounts made in the store between two runs of the
/// server, so that the test spends its time on the group message): 1,000 online
/// and 24 offline. One body row and 1,024 entries; every online member gets
/// it exactly once, the offline ones at login; the sender gets 1,024
/// receipts, one per member; the body is gone after the last ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_and_twenty_four_recipients() {
    const N: usize = messages::MAX_GROUP_RECIPIENTS;
    const OFFLINE: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let alice_dev = Device::new();
    let devices: Vec<Device> = (0..N).map(|_| Device::new()).collect();
    let names: Vec<String> = (0..N).map(|i| format!("m{i:04}")).collect();
    // A first run makes the data directory (its key and database).
    TestServer::start(dir.path(), |_| {}).await.stop().await;
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store_device_account(&store, "alice", &alice_dev).await;
        for (n, d) in names.iter().zip(&devices) {
            store_device_account(&store, n, d).await;
        }
        ponte_server::store::Store::close(&store);
    }
    let server = TestServer::start(dir.path(), |_| {}).await;
    let server = std::sync::Arc::new(server);
    let mut alice = Client::connect(&server, &alice_dev).await;
    assert!(matches!(
        alice.login().await,
        server_frame::Body::LoggedIn(_)
    ));
    // Log the online members in, 32 at a time.
    let mut members: Vec<Client> = Vec::with_capacity(N - OFFLINE);
    for chunk in devices[..N - OFFLINE].chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for (i, d) in chunk.iter().enumerate() {
            let (server, d) = (server.clone(), d.clone());
            set.spawn(async move {
                let mut c = Client::connect(&server, &d).await;
                assert!(matches!(c.login().await, server_frame::Body::LoggedIn(_)));
                (i, c)
            });
        }
        let mut got: Vec<(usize, Client)> = Vec::new();
        while let Some(r) = set.join_next().await {
            got.push(r.unwrap());
        }
        got.sort_by_key(|(i, _)| *i);
        members.extend(got.into_iter().map(|(_, c)| c));
    }
    let id = [0xab; 16];
    let body = vec![0x5a; 4096];
    let ack = group_ack(alice.request(group_send(id, &names, &body)).await);
    assert!(ack.refused.is_empty() && !ack.duplicate);
    assert_eq!(stored(dir.path()), (1, N as i64), "one body, 1,024 entries");
    let again = group_ack(alice.request(group_send(id, &names, &body)).await);
    assert!(again.duplicate);
    assert_eq!(stored(dir.path()), (1, N as i64));

    // Every online member, concurrently, 64 at a time.
    let body = std::sync::Arc::new(body);
    let mut seqs: HashMap<u64, usize> = HashMap::new();
    let mut it = members.into_iter().enumerate();
    loop {
        let mut set = tokio::task::JoinSet::new();
        for (i, mut c) in it.by_ref().take(64) {
            let body = body.clone();
            set.spawn(async move { (i, receive_once(&mut c, id, &body).await, c) });
        }
        if set.is_empty() {
            break;
        }
        while let Some(r) = set.join_next().await {
            let (i, seq, c) = r.unwrap();
            assert!(seqs.insert(seq, i).is_none(), "seq {seq} twice");
            drop(c);
        }
    }
    for d in &devices[N - OFFLINE..] {
        let mut c = Client::connect(&server, d).await;
        assert!(matches!(c.login().await, server_frame::Body::LoggedIn(_)));
        let seq = receive_once(&mut c, id, &body).await;
        assert!(seqs.insert(seq, 0).is_none(), "seq {seq} twice");
    }
    assert_eq!(seqs.len(), N);
    let named = receipts(&mut alice, id, N).await;
    assert_eq!(named, names.iter().cloned().collect::<HashSet<_>>());
    wait_stored(dir.path(), (0, 0)).await;
    drop(alice);
    match std::sync::Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => panic!("server still shared"),
    }
}
