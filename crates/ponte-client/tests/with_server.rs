//! The client library against a real `ponte-server` on 127.0.0.1 (in
//! process): registration, offline send, sync, ticks, read receipts, key
//! replenishment, a wrong server key, and key-change refusal.
#![allow(clippy::unwrap_used)]

mod common;

use common::{register, start_server, start_server_on, start_server_with};
use ponte_client::client::{Event, RegisterOptions};
use ponte_client::profile::KeySource;
use ponte_client::{Client, ClientError, Status, Update};
use std::time::Duration;
async fn sync(client: &mut Client) -> Vec<Update> {
    let mut events = Vec::new();
    client.sync(&mut |e| events.push(e)).await.unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Update(u) => Some(u),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn offline_send_sync_ticks_and_read_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let address = server.address.clone();
    let mut alice = register(&tmp.path().join("alice"), &address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &address, "bob").await;

    // Bob is offline (not connected); alice sends twice.
    let first = alice.send("bob", "hello bob, first").await.unwrap();
    assert_eq!(first.message.status, Status::Sent, "{:?}", first.note);
    let second = alice.send("bob", "second one").await.unwrap();
    assert_eq!(second.message.status, Status::Sent);

    // Bob syncs: both texts, in order, once.
    let updates = sync(&mut bob).await;
    let texts: Vec<_> = updates
        .iter()
        .filter_map(|u| match u {
            Update::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["hello bob, first", "second one"]);
    assert!(
        sync(&mut bob)
            .await
            .iter()
            .all(|u| !matches!(u, Update::Message(_))),
        "shown once"
    );

    // Alice syncs: delivered and (bob's sync displayed them) read.
    let updates = sync(&mut alice).await;
    let statuses: Vec<_> = updates
        .iter()
        .filter_map(|u| match u {
            Update::Status(m) => Some((m.id, m.status)),
            _ => None,
        })
        .collect();
    for id in [first.message.id, second.message.id] {
        let final_status = statuses
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, s)| *s)
            .max();
        assert_eq!(final_status, Some(Status::Read), "{statuses:?}");
    }
    // The history agrees.
    let h = alice.history("bob").unwrap();
    assert!(h.iter().all(|m| m.outgoing && m.status == Status::Read));

    // A reply travels the other way on the established session.
    bob.send("alice", "hi alice").await.unwrap();
    let got = sync(&mut alice).await;
    assert!(got
        .iter()
        .any(|u| matches!(u, Update::Message(m) if m.text == "hi alice")));

    // Nobody by that name: refused for good, not left queued.
    let failed = alice.send("nobody", "into the void").await.unwrap();
    assert_eq!(failed.message.status, Status::Failed);
    assert!(failed.note.unwrap().contains("no such user"));
    assert!(alice.store().outbox().unwrap().is_empty());

    // Server down: send queues (not an error), then goes out later.
    server.stop().await;
    let queued = alice.send("bob", "while the server is down").await.unwrap();
    assert_eq!(queued.message.status, Status::Queued);
    assert!(queued.note.unwrap().contains("queued"));
    let err = bob.sync(&mut |_| {}).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable(_)), "{err}");
}

#[tokio::test]
async fn restart_between_send_and_receive_and_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = start_server(&data).await;
    let (address, port) = (server.address.clone(), server.addr.port());
    let mut alice = register(&tmp.path().join("alice"), &address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &address, "bob").await;
    server.stop().await;

    // Written offline.
    let out = alice.send("bob", "survives restarts").await.unwrap();
    assert_eq!(out.message.status, Status::Queued);

    // The server comes back on another port: reopen the profiles pointing
    // at it is not possible (the address is pinned), so restart on the same
    // port instead.
    let server = start_server_on(&data, port, |_| {}).await;
    let updates = sync(&mut alice).await;
    assert!(updates
        .iter()
        .any(|u| matches!(u, Update::Status(m) if m.status == Status::Sent)));
    let updates = sync(&mut bob).await;
    assert!(updates
        .iter()
        .any(|u| matches!(u, Update::Message(m) if m.text == "survives restarts")));
    server.stop().await;

    // A different server (new key) on the same port is refused.
    let other = tmp.path().join("other-server");
    let server = start_server_on(&other, port, |_| {}).await;
    let err = bob.sync(&mut |_| {}).await.unwrap_err();
    assert!(matches!(err, ClientError::ServerKeyMismatch(_)), "{err}");
    server.stop().await;
}

/// A raw protocol client (not the library) that registers and claims keys,
/// to drain another user's one-time keys quickly.
async fn raw_claimer(
    address: &str,
    handle: &str,
) -> ponte_transport::Channel<tokio::net::TcpStream> {
    use ponte_wire::messages::{
        client_frame, registration_signing_string, ClientFrame, DeviceKeys, Register, ServerFrame,
    };
    let addr: ponte_wire::address::ServerAddress = address.parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr.socket_addr_string())
        .await
        .unwrap();
    let kp = ponte_transport::Keypair::generate();
    let mut ch = ponte_transport::connect(
        tcp,
        &ponte_transport::ClientConfig::new(kp.clone(), addr.key),
    )
    .await
    .unwrap();
    let id = ponte_e2e::Identity::generate();
    let p = id.public();
    let sig = id.sign(
        registration_signing_string(handle, &p.curve25519, &p.ed25519, &kp.public()).as_bytes(),
    );
    let body = client_frame::Body::Register(Register {
        handle: handle.into(),
        keys: Some(DeviceKeys {
            curve25519: p.curve25519.to_vec().into(),
            ed25519: p.ed25519.to_vec().into(),
        }),
        signature: sig.to_vec().into(),
        invite: String::new(),
    });
    ch.send(&ClientFrame {
        request_id: 1,
        body: Some(body),
    })
    .await
    .unwrap();
    let resp: ServerFrame = ch.recv().await.unwrap().unwrap();
    assert!(
        matches!(
            resp.body,
            Some(ponte_wire::messages::server_frame::Body::Registered(_))
        ),
        "{resp:?}"
    );
    ch
}

/// Claim one key of `handle`; returns whether it was the fallback key.
async fn raw_claim(
    ch: &mut ponte_transport::Channel<tokio::net::TcpStream>,
    handle: &str,
    request_id: u64,
) -> bool {
    use ponte_wire::messages::{client_frame, server_frame, ClaimKey, ClientFrame, ServerFrame};
    let body = client_frame::Body::ClaimKey(ClaimKey {
        handle: handle.into(),
    });
    ch.send(&ClientFrame {
        request_id,
        body: Some(body),
    })
    .await
    .unwrap();
    for _ in 0..100 {
        let frame: ServerFrame = ch.recv().await.unwrap().unwrap();
        if frame.request_id == request_id {
            match frame.body {
                Some(server_frame::Body::ClaimedKey(k)) => return k.fallback,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    panic!("no answer to claim");
}

#[tokio::test]
async fn one_time_keys_are_replenished() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let address = server.address.clone();
    let mut bob = register(&tmp.path().join("bob"), &address, "bob").await;
    // Someone claims 45 of bob's 50 one-time keys (below the mark of 10).
    let mut claimer = raw_claimer(&address, "claimer").await;
    for i in 0..45 {
        assert!(
            !raw_claim(&mut claimer, "bob", 10 + i).await,
            "claim {i} got the fallback key"
        );
    }
    // Bob connects: the server reports the low count, bob uploads more.
    sync(&mut bob).await;
    for i in 0..20 {
        assert!(
            !raw_claim(&mut claimer, "bob", 100 + i).await,
            "after replenishing, claim {i} got the fallback"
        );
    }
    // And a real sender still reaches bob.
    let mut late = register(&tmp.path().join("late"), &address, "late").await;
    late.send("bob", "late hello").await.unwrap();
    let updates = sync(&mut bob).await;
    assert!(updates
        .iter()
        .any(|u| matches!(u, Update::Message(m) if m.text == "late hello")));
    server.stop().await;
}

/// Two processes of one profile (`ponte listen` and another command):
/// one-time keys one of them makes are not lost to the other, which holds
/// an older identity in memory. It reads the identity again before it
/// uses it (`lock::Keys`), so it opens a first message sent to such a key,
/// and what it saves then keeps the other's keys.
#[tokio::test]
async fn one_time_keys_made_by_another_process_of_the_profile_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let address = server.address.clone();
    let dir = tmp.path().join("alice");
    // The listener, open since before the other process made keys.
    let mut listener = register(&dir, &address, "alice").await;
    let mut other = Client::open(&dir, || panic!("no passphrase")).unwrap();
    let mut claimer = raw_claimer(&address, "claimer").await;
    for i in 0..45 {
        assert!(!raw_claim(&mut claimer, "alice", 10 + i).await);
    }
    // The other process logs in, hears the count is low and makes 45 keys.
    sync(&mut other).await;
    // The last 5 of the first keys go (the server hands out the oldest
    // first): a new sender now gets one the other process made.
    for i in 0..5 {
        assert!(!raw_claim(&mut claimer, "alice", 100 + i).await);
    }
    let mut late = register(&tmp.path().join("late"), &address, "late").await;
    late.send("alice", "to a key made elsewhere").await.unwrap();
    let updates = sync(&mut listener).await;
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, Update::Message(m) if m.text == "to a key made elsewhere")),
        "{updates:?}"
    );
    // The identity the listener saved then still has the other's keys.
    let mut later = register(&tmp.path().join("later"), &address, "later").await;
    later.send("alice", "to another one").await.unwrap();
    let updates = sync(&mut other).await;
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, Update::Message(m) if m.text == "to another one")),
        "{updates:?}"
    );
    server.stop().await;
}

/// A send waits while another process of the profile uses its keys (here
/// a bare lock on the file stands for that process), and goes out once
/// they are let go: the two never advance one session at once.
#[tokio::test]
async fn a_send_waits_for_another_process_using_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let address = server.address.clone();
    let dir = tmp.path().join("alice");
    let mut alice = register(&dir, &address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &address, "bob").await;
    let other = std::fs::File::open(dir.join(ponte_client::lock::KEYS_FILE)).unwrap();
    other.try_lock().unwrap();
    let released = std::cell::Cell::new(None);
    let (sent, ()) = tokio::join!(
        async {
            let outcome = alice.send("bob", "after the other process").await.unwrap();
            (outcome, std::time::Instant::now())
        },
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            released.set(Some(std::time::Instant::now()));
            other.unlock().unwrap();
        }
    );
    let (outcome, at) = sent;
    assert_eq!(outcome.message.status, Status::Sent);
    assert!(
        at > released.get().unwrap(),
        "sent before the keys were let go"
    );
    assert!(sync(&mut bob)
        .await
        .iter()
        .any(|u| matches!(u, Update::Message(m) if m.text == "after the other process")));
    server.stop().await;
}

#[tokio::test]
async fn identity_key_change_is_flagged_and_blocks_sending_until_confirmed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = start_server(&data).await;
    let address = server.address.clone();
    let port = server.addr.port();
    let mut alice = register(&tmp.path().join("alice"), &address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &address, "bob").await;
    alice.send("bob", "before the change").await.unwrap();
    assert!(sync(&mut bob)
        .await
        .iter()
        .any(|u| matches!(u, Update::Message(m) if m.text == "before the change")));
    sync(&mut alice).await;
    let trusted = alice.contacts().unwrap()[0].identity;
    // A new device for "bob" (registered as "bob" on a second server, so
    // its registration signature is genuine for that handle).
    let newbob_dir = tmp.path().join("newbob");
    let data2 = tmp.path().join("server2");
    let server2 = start_server(&data2).await;
    drop(register(&newbob_dir, &server2.address, "bob").await);
    server2.stop().await;
    server.stop().await;

    // The server (its operator, or whoever controls it) now hands out the
    // new device's keys for "bob".
    let db = rusqlite::Connection::open(data.join("ponte.db")).unwrap();
    db.execute(
        "ATTACH DATABASE ?1 AS other",
        [data2.join("ponte.db").to_str().unwrap()],
    )
    .unwrap();
    db.execute_batch(
        "DELETE FROM main.one_time_keys WHERE account = (SELECT id FROM main.accounts WHERE handle = 'bob');
         DELETE FROM main.fallback_keys WHERE account = (SELECT id FROM main.accounts WHERE handle = 'bob');
         DELETE FROM main.accounts WHERE handle = 'bob';
         INSERT INTO main.accounts(handle, noise_key, curve25519, ed25519, signature, created_at)
             SELECT handle, noise_key, curve25519, ed25519, signature, created_at
             FROM other.accounts WHERE handle = 'bob';
         INSERT INTO main.one_time_keys(account, key_id, public_key, signature)
             SELECT (SELECT id FROM main.accounts WHERE handle = 'bob'), key_id, public_key, signature
             FROM other.one_time_keys WHERE account = (SELECT id FROM other.accounts WHERE handle = 'bob');
         INSERT INTO main.fallback_keys(account, key_id, public_key, signature)
             SELECT (SELECT id FROM main.accounts WHERE handle = 'bob'), key_id, public_key, signature
             FROM other.fallback_keys WHERE account = (SELECT id FROM other.accounts WHERE handle = 'bob');",
    )
    .unwrap();
    drop(db);
    // The new device talks to the first server from now on.
    let prof = rusqlite::Connection::open(newbob_dir.join("ponte.db")).unwrap();
    prof.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'server'",
        [&address],
    )
    .unwrap();
    drop(prof);
    let server = start_server_on(&data, port, |_| {}).await;
    let mut newbob = Client::open(&newbob_dir, || panic!()).unwrap();
    assert_ne!(newbob.public_identity(), trusted);

    // Alice writes to bob over her existing session: the directory check
    // before encrypting notices the change and holds the message.
    let held = alice.send("bob", "should be held").await.unwrap();
    assert_eq!(held.message.status, Status::Queued);
    assert!(held.note.unwrap().contains("CHANGED"));
    let c = &alice.contacts().unwrap()[0];
    assert_eq!(c.identity, trusted, "never replaced silently");
    assert_eq!(c.changed_identity, Some(newbob.public_identity()));
    // Further sends are refused outright.
    assert!(matches!(
        alice.send("bob", "refused").await,
        Err(ClientError::KeyChanged(_))
    ));

    // Messages from the new key are shown, flagged.
    newbob
        .send("alice", "hello from my new phone")
        .await
        .unwrap();
    let mut events = Vec::new();
    alice.sync(&mut |e| events.push(e)).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Update(Update::Message(m))
        if m.text == "hello from my new phone" && m.key_changed)),
        "{events:?}"
    );
    assert!(sync(&mut newbob)
        .await
        .iter()
        .all(|u| !matches!(u, Update::Message(m) if m.text == "should be held")));

    // Re-verification: both sides compute the same number for the new key.
    let (a_num, contact) = alice.safety_number("bob", true).await.unwrap();
    assert!(contact.changed_identity.is_some());
    let (b_num, _) = newbob.safety_number("alice", false).await.unwrap();
    assert_eq!(a_num, b_num);
    assert_eq!(alice.confirm("bob").unwrap(), newbob.public_identity());
    // The held message now goes out, encrypted to the new key, and sending works.
    let out = alice.send("bob", "welcome back").await.unwrap();
    assert_eq!(out.message.status, Status::Sent, "{:?}", out.note);
    let got = sync(&mut newbob).await;
    for text in ["should be held", "welcome back"] {
        assert!(
            got.iter()
                .any(|u| matches!(u, Update::Message(m) if m.text == text)),
            "{text}: {got:?}"
        );
    }
    server.stop().await;
}

/// Send raw bytes as a message body through the protocol.
async fn raw_send(
    ch: &mut ponte_transport::Channel<tokio::net::TcpStream>,
    recipient: &str,
    body: Vec<u8>,
    request_id: u64,
) {
    use ponte_wire::messages::{client_frame, server_frame, ClientFrame, SendMessage, ServerFrame};
    let msg = client_frame::Body::Send(SendMessage {
        message_id: ponte_e2e::MessageId::random().0.to_vec().into(),
        recipient: recipient.into(),
        body: body.into(),
    });
    ch.send(&ClientFrame {
        request_id,
        body: Some(msg),
    })
    .await
    .unwrap();
    for _ in 0..100 {
        let frame: ServerFrame = ch.recv().await.unwrap().unwrap();
        if frame.request_id == request_id {
            assert!(
                matches!(frame.body, Some(server_frame::Body::SendAck(_))),
                "{frame:?}"
            );
            return;
        }
    }
    panic!("no answer to send");
}

#[tokio::test]
async fn hostile_messages_are_dropped_without_harm() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let address = server.address.clone();
    let mut bob = register(&tmp.path().join("bob"), &address, "bob").await;
    let mut alice = register(&tmp.path().join("alice"), &address, "alice").await;
    let mut mallory = raw_claimer(&address, "mallory").await;
    // Garbage, a truncated "ciphertext", a huge declared length, a forged
    // pre-key message (valid shape, keys bob never made).
    let forged = {
        let eve = ponte_e2e::Identity::generate();
        let mut s = eve
            .create_outbound_session(&bob.public_identity(), &eve.public().curve25519)
            .unwrap();
        s.encrypt(b"forged").to_bytes()
    };
    let bodies: Vec<Vec<u8>> = vec![
        vec![0xff; 100],
        vec![1],
        vec![1, 0, 0xff, 0xff, 0xff, 0xff],
        vec![1, 1, 3, 10, 32],
        forged,
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        raw_send(&mut mallory, "bob", body, 50 + i as u64).await;
    }
    alice.send("bob", "the real one").await.unwrap();
    let mut events = Vec::new();
    bob.sync(&mut |e| events.push(e)).await.unwrap();
    let warnings = events
        .iter()
        .filter(|e| matches!(e, Event::Warning(_)))
        .count();
    assert!(warnings >= 5, "{events:?}");
    let texts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Update(Update::Message(m)) => Some(m.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["the real one"]);
    // Everything was acknowledged: nothing comes back.
    let mut again = Vec::new();
    bob.sync(&mut |e| again.push(e)).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    server.stop().await;
}

#[tokio::test]
async fn undelivered_messages_expire_and_the_sender_learns_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = start_server_with(&data, |cfg| {
        cfg.retention = Duration::from_millis(300);
        cfg.expiry_interval = Duration::from_millis(50);
    })
    .await;
    let address = server.address.clone();
    let mut alice = register(&tmp.path().join("alice"), &address, "alice").await;
    drop(register(&tmp.path().join("bob"), &address, "bob").await);
    let out = alice.send("bob", "never read").await.unwrap();
    assert_eq!(out.message.status, Status::Sent);
    // Bounded polling: the server's sweep runs every 50 ms.
    let mut expired = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let updates = sync(&mut alice).await;
        if updates
            .iter()
            .any(|u| matches!(u, Update::Status(m) if m.status == Status::Expired))
        {
            expired = true;
            break;
        }
    }
    assert!(expired, "alice learned that the message expired");
    assert_eq!(alice.history("bob").unwrap()[0].status, Status::Expired);
    server.stop().await;
}

/// A group message whose copy expires at the server for some members never
/// shows delivered (they never had it) and says for how many it expired;
/// once every member's copy expired, the message is expired.
#[tokio::test]
async fn group_copies_that_expire_undelivered_are_counted_and_never_shown_delivered() {
    use ponte_client::store::Conversation;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    // The group is set up under the normal retention; the server then comes
    // back at the same address with a short one for what is sent next.
    let server = start_server(&data).await;
    let port = server.addr.port();
    let address = server.address.clone();
    let mut alice = register(&tmp.path().join("alice"), &address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &address, "bobby").await;
    let mut carol = register(&tmp.path().join("carol"), &address, "carol").await;
    let group = alice
        .group_create("team", &["bobby".into(), "carol".into()])
        .await
        .unwrap()
        .info
        .id;
    sync(&mut bobby).await;
    sync(&mut carol).await;
    server.stop().await;
    let retention = Duration::from_secs(4);
    let server = start_server_on(&data, port, |cfg| {
        cfg.retention = retention;
        cfg.expiry_interval = Duration::from_millis(50);
    })
    .await;
    let to = Conversation::Group(group);

    // bobby fetches the first at once; nobody fetches the second.
    let half = alice.send_to(&to, "only bobby").await.unwrap().message;
    assert_eq!(half.status, Status::Sent);
    sync(&mut bobby).await;
    let lost = alice.send_to(&to, "nobody online").await.unwrap().message;

    let find = |alice: &ponte_client::Client, id: ponte_e2e::MessageId| {
        alice
            .store()
            .group_conversation(&group)
            .unwrap()
            .into_iter()
            .find(|m| m.id == id)
            .unwrap()
    };
    // Bounded polling: the copies expire after 4 s, the sweep runs every
    // 50 ms, the notices come with alice's next sync.
    let mut settled = false;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sync(&mut alice).await;
        let (l, h) = (find(&alice, lost.id), find(&alice, half.id));
        if l.status == Status::Expired && h.ticks.is_some_and(|t| t.expired == 1) {
            settled = true;
            break;
        }
    }
    assert!(settled, "alice learned of both expiries");
    let lost = find(&alice, lost.id);
    let t = lost.ticks.unwrap();
    assert_eq!((t.delivered_to, t.expired, t.of), (0, 2, 2));
    let half = find(&alice, half.id);
    let t = half.ticks.unwrap();
    assert_eq!((t.delivered_to, t.expired, t.of), (1, 1, 2));
    assert_eq!(
        half.status,
        Status::Sent,
        "carol never had it: not delivered"
    );
    // carol's copies are gone from the server: she gets neither.
    let texts = common::sync_texts(&mut carol).await;
    assert!(texts.is_empty(), "{texts:?}");
    server.stop().await;
}

#[tokio::test]
async fn registration_interrupted_before_it_was_recorded_is_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let address = server.address.clone();
    let dir = tmp.path().join("alice");
    drop(register(&dir, &address, "alice").await);
    // Simulate a crash right after the server accepted the registration:
    // the profile does not know its handle.
    let db = rusqlite::Connection::open(dir.join("ponte.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key = 'handle'", [])
        .unwrap();
    drop(db);
    let mut alice = register(&dir, &address, "alice").await;
    assert_eq!(alice.handle(), "alice");
    sync(&mut alice).await;
    // Asking for another name with the same device is refused clearly.
    let db = rusqlite::Connection::open(dir.join("ponte.db")).unwrap();
    db.execute("DELETE FROM meta WHERE key = 'handle'", [])
        .unwrap();
    drop(db);
    let err = Client::register(
        &dir,
        KeySource::KeyFile,
        || panic!(),
        RegisterOptions::new(&address, "alice2"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::AlreadyRegistered(_, ref h) if h == "alice"),
        "{err}"
    );
    server.stop().await;
}
