//! Groups end to end against a real `ponte-server` on 127.0.0.1 (in
//! process), each member a profile of its own: what a removed member keeps
//! cannot open what is sent after the removal (checked on the ciphertext
//! the server stores), forged ops are refused with a warning, a file goes
//! to a group and comes back out intact, sender keys rotate after 100
//! messages, an op that arrives before the one it follows waits, and a
//! member whose identity key changed holds sending to the group until
//! verified.
#![allow(clippy::unwrap_used)]

mod common;

use common::{direct, register, start_server};
use ponte_client::client::Event;
use ponte_client::store::{Conversation, GroupStatus};
use ponte_client::{Client, ClientError, Status, Update};
use ponte_e2e::group::{GroupCiphertext, GroupId, GroupOp, GroupReceiver, GroupState};
use std::path::Path;

/// Every group message body the server holds (stored once per message
/// until its last recipient acknowledges it).
fn server_bodies(data: &Path) -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open(data.join("ponte.db")).unwrap();
    let mut stmt = conn.prepare("SELECT body FROM bodies ORDER BY id").unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows
}

/// The group's state as `client` stores it.
fn state_of(client: &Client, group: &GroupId) -> GroupState {
    client.store().group(group).unwrap().unwrap().state
}

/// Sync, and return the texts of the new messages (not the notices of
/// changes to a group) and the warnings.
async fn sync(client: &mut Client) -> (Vec<String>, Vec<String>) {
    let mut events = Vec::new();
    client.sync(&mut |e| events.push(e)).await.unwrap();
    let (mut texts, mut warnings) = (Vec::new(), Vec::new());
    for e in events {
        match e {
            Event::Update(Update::Message(m)) if !m.group_notice => texts.push(m.text),
            Event::Warning(w) => warnings.push(w),
            _ => {}
        }
    }
    (texts, warnings)
}

fn group_of(client: &Client, title: &str) -> GroupId {
    match client.resolve(&format!("g:{title}")).unwrap() {
        Conversation::Group(g) => g,
        other => panic!("{other:?}"),
    }
}

/// Whether `receiver` (under `state`) opens `body` as from `sender`.
fn opens(receiver: &mut GroupReceiver, state: &GroupState, sender: &[u8; 32], body: &[u8]) -> bool {
    let ct = GroupCiphertext::from_bytes(body).unwrap();
    receiver.decrypt(state, sender, &ct).is_ok()
}

#[tokio::test]
async fn removed_member_opens_nothing_sent_after_the_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = start_server(&data).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;

    let created = alice
        .group_create("team", &["bobby".into(), "carol".into()])
        .await
        .unwrap();
    assert!(created.note.is_none(), "{:?}", created.note);
    let group = created.info.id;
    sync(&mut bobby).await;
    sync(&mut carol).await;
    assert_eq!(state_of(&bobby, &group), state_of(&alice, &group));
    assert_eq!(group_of(&carol, "team"), group);

    // Messages both ways before the removal: everyone reads them.
    alice
        .send_group(&group, "before the removal")
        .await
        .unwrap();
    bobby.send_group(&group, "bobby before").await.unwrap();
    let (texts, warnings) = sync(&mut carol).await;
    assert_eq!(
        texts,
        ["before the removal", "bobby before"],
        "{warnings:?}"
    );
    let (texts, _) = sync(&mut alice).await;
    assert!(texts.contains(&"bobby before".to_owned()), "{texts:?}");

    // What carol's store holds now: every key she was given, and a state
    // in which she is still a member (her strongest position).
    let carol_state = state_of(&carol, &group);
    let carol_keys = carol.store().group_receiver(&group).unwrap();
    let pickle_key = [9u8; 32];
    let carol_pickle = carol_keys.pickle(&pickle_key);

    // A message carol could read, still on the server (nobody synced):
    // the snapshot opens it, so the check below is not vacuous.
    alice
        .send_group(&group, "last one carol reads")
        .await
        .unwrap();
    let before = server_bodies(&data);
    let alice_key = alice.public_identity().ed25519;
    let bobby_key = bobby.public_identity().ed25519;
    let mut snapshot = GroupReceiver::from_pickle(&carol_pickle, &pickle_key).unwrap();
    assert!(
        before
            .iter()
            .any(|b| opens(&mut snapshot, &carol_state, &alice_key, b)),
        "the snapshot opens a message sent before the removal"
    );

    let removed = alice.group_remove(&group, &["carol".into()]).await.unwrap();
    assert_eq!(
        removed
            .info
            .members
            .iter()
            .map(|m| m.handle.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bobby"]
    );
    // Bobby learns of it, then both send; nobody syncs, so the server still
    // holds those bodies.
    let (_, warnings) = sync(&mut bobby).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    alice.send_group(&group, "after, from alice").await.unwrap();
    bobby.send_group(&group, "after, from bobby").await.unwrap();
    let after: Vec<Vec<u8>> = server_bodies(&data)
        .into_iter()
        .filter(|b| !before.contains(b))
        .collect();
    assert_eq!(after.len(), 2, "both messages are stored at the server");
    for body in &after {
        for sender in [&alice_key, &bobby_key] {
            let mut snapshot = GroupReceiver::from_pickle(&carol_pickle, &pickle_key).unwrap();
            assert!(!opens(&mut snapshot, &carol_state, sender, body));
        }
    }
    // Not the receiver in her store now either, nor anything she receives.
    let (texts, _) = sync(&mut carol).await;
    assert!(!texts.iter().any(|t| t.starts_with("after")), "{texts:?}");
    let mut now = carol.store().group_receiver(&group).unwrap();
    for body in &after {
        assert!(!opens(&mut now, &carol_state, &alice_key, body));
    }
    // Her client shows the removal and refuses to send to the group.
    let record = carol.store().group(&group).unwrap().unwrap();
    assert_eq!(record.status, GroupStatus::Removed);
    let mut history = Vec::new();
    carol
        .history_of(&Conversation::Group(group), &mut |m| {
            history.push((m.group_notice, m.text.clone()));
            Ok(())
        })
        .unwrap();
    assert!(
        history.contains(&(true, "alice removed you".to_owned())),
        "{history:?}"
    );
    let refused = carol.send_group(&group, "still here?").await.unwrap_err();
    assert!(refused.to_string().contains("removed"), "{refused}");

    // Bobby reads both; alice's ticks add up over the members left.
    let (texts, _) = sync(&mut bobby).await;
    assert!(texts.contains(&"after, from alice".to_owned()), "{texts:?}");
    let (texts, _) = sync(&mut alice).await;
    assert!(texts.contains(&"after, from bobby".to_owned()), "{texts:?}");
    sync(&mut alice).await;
    let mut last = None;
    alice
        .history_of(&Conversation::Group(group), &mut |m| {
            if m.outgoing && m.text == "after, from alice" {
                last = Some((m.status, m.ticks));
            }
            Ok(())
        })
        .unwrap();
    let (status, ticks) = last.unwrap();
    let ticks = ticks.unwrap();
    assert_eq!((ticks.delivered_to, ticks.of), (1, 1), "{ticks:?}");
    assert!(status >= Status::Delivered, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn forged_ops_are_refused_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let mut dave = register(&tmp.path().join("dave"), &server.address, "dave").await;
    let group = alice
        .group_create("club", &["bobby".into(), "dave".into()])
        .await
        .unwrap()
        .info
        .id;
    sync(&mut bobby).await;
    sync(&mut dave).await;
    let agreed = state_of(&bobby, &group);

    // Dave, a plain member, signs a removal of bobby (his client would
    // refuse to make it; a tool does not) and sends it pairwise.
    let dave_identity = dave.store().identity().unwrap().unwrap();
    let dave_state = state_of(&dave, &group);
    let bobby_key = bobby.public_identity().ed25519;
    let not_admin = dave_state
        .propose(&dave_identity, 1, GroupOp::Remove(bobby_key))
        .unwrap();
    // And one that claims to be alice's: the signature is dave's.
    let mut forged = dave_state
        .propose(&dave_identity, 2, GroupOp::Rename("pwned".into()))
        .unwrap();
    forged.signer = alice.public_identity().ed25519;
    dave.queue_group_op("bobby", &not_admin).unwrap();
    dave.queue_group_op("bobby", &forged).unwrap();
    let (_, warnings) = sync(&mut dave).await;
    assert!(warnings.is_empty(), "{warnings:?}");

    let (texts, warnings) = sync(&mut bobby).await;
    assert!(texts.is_empty(), "{texts:?}");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("refused a change to group \"club\""),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("not an admin"), "{warnings:?}");
    assert!(
        warnings[1].contains("signature does not verify"),
        "{warnings:?}"
    );
    // Nothing changed: bobby is in, the title stands, and messages flow.
    assert_eq!(state_of(&bobby, &group), agreed);
    alice.send_group(&group, "still a club").await.unwrap();
    let (texts, _) = sync(&mut bobby).await;
    assert_eq!(texts, ["still a club"]);
    server.stop().await;
}

#[tokio::test]
async fn a_file_to_a_group_arrives_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    let group = alice
        .group_create("photos", &["bobby".into(), "carol".into()])
        .await
        .unwrap()
        .info
        .id;
    sync(&mut bobby).await;
    sync(&mut carol).await;

    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let path = tmp.path().join("beach.jpg");
    std::fs::write(&path, &data).unwrap();
    let out = alice
        .send_file_to(
            &Conversation::Group(group),
            &path,
            "the beach",
            &mut |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(out.message.status, Status::Sent, "{:?}", out.note);
    assert_eq!(out.message.group, Some(group));

    for member in [&mut bobby, &mut carol] {
        let mut fetched = Vec::new();
        let mut files = Vec::new();
        member
            .sync(&mut |e| match e {
                Event::FileFetched { path, .. } => fetched.push(path),
                Event::Update(Update::Message(m)) => files.push(m),
                _ => {}
            })
            .await
            .unwrap();
        let m = files.iter().find(|m| m.file.is_some()).unwrap();
        assert_eq!(m.group, Some(group));
        assert_eq!(m.text, "the beach");
        assert_eq!(m.peer, "alice");
        assert_eq!(fetched.len(), 1);
        assert_eq!(std::fs::read(&fetched[0]).unwrap(), data);
    }
    server.stop().await;
}

#[tokio::test]
async fn sender_keys_rotate_after_a_hundred_messages_and_everything_still_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let group = alice
        .group_create("busy", &["bobby".into()])
        .await
        .unwrap()
        .info
        .id;
    sync(&mut bobby).await;
    let first = alice
        .store()
        .group_sender(&group)
        .unwrap()
        .unwrap()
        .sender_key();

    // Queued offline: the 101st message starts a new session, whose key is
    // queued for bobby ahead of it.
    let n = ponte_e2e::group::MAX_SESSION_MESSAGES as usize + 1;
    for i in 0..n {
        alice.queue_group_text(&group, &format!("m{i}")).unwrap();
    }
    let keys: Vec<_> = alice
        .store()
        .outbox()
        .unwrap()
        .into_iter()
        .enumerate()
        .filter_map(|(at, item)| match item.kind {
            ponte_client::store::OutboxKind::SenderKey(k) => Some((at, item.peer, k)),
            _ => None,
        })
        .collect();
    assert_eq!(keys.len(), 1, "one new key");
    let (at, peer, key) = &keys[0];
    assert_eq!(
        (*at, peer.as_str()),
        (n - 1, "bobby"),
        "right before the last message"
    );
    assert_ne!(key, &first);

    sync(&mut alice).await;
    let (texts, warnings) = sync(&mut bobby).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(texts.len(), n);
    assert_eq!(texts[n - 1], format!("m{}", n - 1));
    server.stop().await;
}

#[tokio::test]
async fn an_op_that_arrives_before_the_one_it_follows_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    let group = alice
        .group_create("order", &["bobby".into(), "carol".into()])
        .await
        .unwrap()
        .info
        .id;
    sync(&mut bobby).await;
    sync(&mut carol).await;

    // Alice renames twice while she cannot reach the server: both wait in
    // her outbox.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    alice.set_routes(common::direct(dead));
    for title in ["one", "two"] {
        let out = alice.group_rename(&group, title).await.unwrap();
        assert!(out.note.unwrap().contains("unreachable"));
    }
    let ops = alice.store().group(&group).unwrap().unwrap().ops;
    let (one, two) = (&ops[ops.len() - 2], &ops[ops.len() - 1]);

    // Bobby hands carol the second before the first (ops carry their own
    // signatures: anyone may forward them).
    bobby.queue_group_op("carol", two).unwrap();
    bobby.queue_group_op("carol", one).unwrap();
    sync(&mut bobby).await;
    let (_, warnings) = sync(&mut carol).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    let state = state_of(&carol, &group);
    assert_eq!((state.title(), state.version()), ("two", ops.len() as u64));
    assert!(carol.store().pending(&group).unwrap().is_empty());

    // Alice's own copies arrive later: already applied, nothing said.
    alice.set_routes(common::direct(server.addr));
    sync(&mut alice).await;
    let (_, warnings) = sync(&mut carol).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(state_of(&carol, &group).title(), "two");
    server.stop().await;
}

#[tokio::test]
async fn a_new_member_rebuilds_a_long_log_sent_in_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    let group = alice
        .group_create("long", &["bobby".into()])
        .await
        .unwrap()
        .info
        .id;
    // More changes than one log envelope holds, queued offline.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    alice.set_routes(common::direct(dead));
    let renames = ponte_e2e::envelope::MAX_LOG_OPS + 6;
    for i in 0..renames {
        alice
            .group_rename(&group, &format!("long {i}"))
            .await
            .unwrap();
    }
    alice.set_routes(common::direct(server.addr));
    let added = alice.group_add(&group, &["carol".into()]).await.unwrap();
    assert!(added.note.is_none(), "{:?}", added.note);
    assert_eq!(added.info.version as usize, 2 + renames + 1);

    let (_, warnings) = sync(&mut carol).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(state_of(&carol, &group), state_of(&alice, &group));
    let (_, warnings) = sync(&mut bobby).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(state_of(&bobby, &group), state_of(&alice, &group));
    // And messages flow to the new member.
    alice.send_group(&group, "welcome carol").await.unwrap();
    let (texts, _) = sync(&mut carol).await;
    assert_eq!(texts, ["welcome carol"]);
    server.stop().await;
}

/// A member whose identity key changed (another device registered their
/// handle) is flagged in `group info`; sending to the group is refused
/// until the change is verified, as a 1:1 send is; once confirmed, the
/// group's messages skip them (the admin-signed membership still names
/// the old key) and the send says so.
#[tokio::test]
async fn a_members_key_change_holds_sending_to_the_group_until_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Server B is server A's data (same key, alice's and carol's accounts)
    // copied before bobby registered on A; another device registers
    // "bobby" on B.
    let server = start_server(&data_a).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    server.stop().await;
    std::fs::create_dir(&data_b).unwrap();
    for entry in std::fs::read_dir(&data_a).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, data_b.join(path.file_name().unwrap())).unwrap();
    }
    let server = start_server(&data_a).await;
    alice.set_routes(direct(server.addr));
    carol.set_routes(direct(server.addr));
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let group = alice
        .group_create("team", &["bobby".into(), "carol".into()])
        .await
        .unwrap()
        .info
        .id;
    sync(&mut bobby).await;
    sync(&mut carol).await;
    let info = alice.group_info(&group).unwrap();
    assert!(info.members.iter().all(|m| !m.key_changed), "{info:?}");
    server.stop().await;

    let server = start_server(&data_b).await;
    alice.set_routes(direct(server.addr));
    carol.set_routes(direct(server.addr));
    let mut new_bobby = register(&tmp.path().join("new-bobby"), &server.address, "bobby").await;
    // Alice's client sees the new key in the pairwise session: a message
    // from the new device. Her sync says so, for the contact and the group.
    new_bobby.send("alice", "new phone").await.unwrap();
    let (_, warnings) = sync(&mut alice).await;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("bobby is in the group \"team\"") && w.contains("held")),
        "{warnings:?}"
    );
    let info = alice.group_info(&group).unwrap();
    let flagged: Vec<&str> = info
        .members
        .iter()
        .filter(|m| m.key_changed)
        .map(|m| m.handle.as_str())
        .collect();
    assert_eq!(flagged, ["bobby"]);
    let e = alice.send_group(&group, "held").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::KeyChanged(h) if h == "bobby"),
        "{e:?}"
    );
    let e = alice
        .set_timer(&Conversation::Group(group), ponte_e2e::Timer::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::KeyChanged(h) if h == "bobby"),
        "{e:?}"
    );
    // A file is refused when it is queued, before it is encrypted or
    // uploaded.
    let photo = tmp.path().join("photo.jpg");
    std::fs::write(&photo, b"not really a photo").unwrap();
    let e = alice
        .queue_group_file(&group, &photo, "held too")
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::KeyChanged(h) if h == "bobby"),
        "{e:?}"
    );
    // Nothing queued for the group (the read receipt of "new phone" to
    // bobby is held pairwise, as in 1:1).
    let queued = alice.store().outbox().unwrap();
    assert!(
        queued.iter().all(|i| i.peer == "bobby"),
        "nothing queued for the group: {queued:?}"
    );

    // Confirmed: the group goes on without the key the admin did not sign.
    alice.confirm("bobby").unwrap();
    let sent = alice.send_group(&group, "after confirming").await.unwrap();
    assert!(
        sent.warnings.iter().any(|w| w.contains("bobby")),
        "{:?}",
        sent.warnings
    );
    let ticks = sent.message.ticks.unwrap();
    assert_eq!(ticks.of, 1, "carol only: {ticks:?}");
    let (texts, _) = sync(&mut carol).await;
    assert_eq!(texts, ["after confirming"]);
    assert!(alice
        .group_info(&group)
        .unwrap()
        .members
        .iter()
        .any(|m| m.key_changed));
    server.stop().await;
}
