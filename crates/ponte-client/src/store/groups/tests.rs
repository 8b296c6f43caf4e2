#![allow(clippy::unwrap_used)]
use super::super::{meta_get, meta_set, open_connection, SCHEMA, SCHEMA_FILES};
use super::*;
use crate::profile::{KeySource, Profile};

#[test]
fn a_version_2_database_gains_the_group_tables_and_keeps_its_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ponte.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(SCHEMA_FILES).unwrap();
        meta_set(&conn, "schema", "2").unwrap();
        conn.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status)
             VALUES ('bob', 0, x'00', x'00', 1, 9)",
            [],
        )
        .unwrap();
    }
    let conn = open_connection(&path).unwrap();
    assert_eq!(
        meta_get(&conn, "schema").unwrap().as_deref(),
        Some(super::super::SCHEMA_VERSION.to_string().as_str())
    );
    let (n, group): (i64, Option<Vec<u8>>) = conn
        .query_row("SELECT COUNT(*), MAX(group_id) FROM messages", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((n, group), (1, None));
    for table in [
        "groups",
        "group_ops",
        "group_keys",
        "group_receipts",
        "group_pending",
    ] {
        let rows: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "{table}");
    }
    drop(conn);
    // Opening again runs nothing twice (ALTER TABLE would fail).
    open_connection(&path).unwrap();
}

#[test]
fn pending_items_are_capped_per_group_and_in_all() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = Profile::create(&tmp.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    let group = GroupId::random();
    for i in 0..MAX_PENDING_PER_GROUP + 10 {
        store
            .add_pending(&group, "bob", PendingKind::Op, &i.to_be_bytes(), None)
            .unwrap();
    }
    let held = store.pending(&group).unwrap();
    assert_eq!(held.len() as i64, MAX_PENDING_PER_GROUP);
    // The oldest went first; what is held opens as it was stored.
    assert_eq!(held[0].payload, 10i64.to_be_bytes());
    assert_eq!(held[0].sender, "bob");
    // Many groups nobody added us to: bounded in all.
    let write = GroupWrite {
        pending_add: (0..MAX_PENDING_TOTAL)
            .map(|_| {
                (
                    GroupId::random(),
                    "eve".to_owned(),
                    PendingKind::SenderKey,
                    vec![1],
                )
            })
            .collect(),
        ..GroupWrite::default()
    };
    store.write_group(&write).unwrap();
    let total: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM group_pending", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, MAX_PENDING_TOTAL);
    assert!(store.pending(&group).unwrap().is_empty());
}

#[test]
fn groups_being_joined_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = Profile::create(&tmp.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    let first = GroupId::random();
    for group in std::iter::once(first).chain((0..MAX_JOINING_GROUPS).map(|_| GroupId::random())) {
        store
            .write_group(&GroupWrite {
                group: Some((group, GroupStatus::Joining)),
                pending_add: vec![(group, "eve".into(), PendingKind::Op, vec![1])],
                ..GroupWrite::default()
            })
            .unwrap();
    }
    let joining: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM groups WHERE status = 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(joining, MAX_JOINING_GROUPS);
    // The oldest went, with what it held.
    assert!(store.pending(&first).unwrap().is_empty());
}

/// An incoming group message from `sender` in `group`, replying to
/// `reply_to`; its view as stored.
fn group_message(
    store: &Store,
    group: GroupId,
    sender: &str,
    text: &str,
    reply_to: Option<MessageId>,
) -> crate::store::MessageView {
    let id = MessageId::random();
    let receiver = GroupReceiver::new(group);
    let stored = store
        .commit_group_incoming(&GroupIncoming {
            group,
            sender,
            delivered_id: id,
            id,
            sent_at: UnixMillis(1_700_000_000_000),
            text,
            file: None,
            receiver: &receiver,
            pending: None,
            timer: None,
            timer_set: None,
            reply_to,
        })
        .unwrap();
    assert!(stored);
    store.message(sender, false, &id).unwrap().unwrap()
}

#[test]
fn a_group_reply_quotes_only_a_message_of_its_group() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = Profile::create(&tmp.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    let (group, other) = (GroupId::random(), GroupId::random());
    // A 1:1 message, a message of another group, and in the group one of
    // bobby's and one of this device's own.
    let pairwise = store.queue_text("bobby", "a private word").unwrap();
    let elsewhere = group_message(store, other, "bobby", "in the other group", None);
    let bobbys = group_message(store, group, "bobby", "who brings food?", None);
    let mine = MessageId::random();
    let sender = GroupSender::new(group, 0);
    store
        .queue_group_text(
            &GroupOutgoing {
                group,
                id: mine,
                ciphertext: b"sealed",
                recipients: &["bobby".to_owned()],
                sender: &sender,
                keys: Vec::new(),
            },
            "I bring bread",
            Some(&bobbys.id),
        )
        .unwrap();
    let my_view = store
        .message(&group_key(&group), true, &mine)
        .unwrap()
        .unwrap();
    assert_eq!(my_view.reply_to, Some(bobbys.id));
    assert_eq!(
        store.quoted(&my_view).unwrap().unwrap().text,
        "who brings food?"
    );

    // Carol's replies: to bobby's message and to ours, found whoever sent
    // them; to the 1:1 message or the other group's, "not here".
    let to_bobby = group_message(store, group, "carol", "cheese", Some(bobbys.id));
    let q = store.quoted(&to_bobby).unwrap().unwrap();
    assert_eq!(
        (q.peer.as_str(), q.text.as_str()),
        ("bobby", "who brings food?")
    );
    let to_me = group_message(store, group, "carol", "great", Some(mine));
    let q = store.quoted(&to_me).unwrap().unwrap();
    assert!(q.outgoing);
    assert_eq!(q.text, "I bring bread");
    for id in [pairwise, elsewhere.id, MessageId::random()] {
        let v = group_message(store, group, "carol", "what was it?", Some(id));
        assert_eq!(v.reply_to, Some(id));
        assert!(store.quoted(&v).unwrap().is_none(), "{id}");
    }
    // Nor does a 1:1 reply find a group message, even one its sender
    // wrote in a group.
    let v = store
        .queue_reply("bobby", "that one", Some(&bobbys.id))
        .unwrap();
    let v = store.message("bobby", true, &v).unwrap().unwrap();
    assert!(store.quoted(&v).unwrap().is_none());
}
