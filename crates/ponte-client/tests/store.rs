//! The profile store against real files in a temp dir: at-rest encryption,
//! outbox, ticks, dedup, identity-change handling.
#![allow(clippy::unwrap_used)]

use ponte_client::atrest::KdfParams;
use ponte_client::profile::{KeySource, Profile, DB_FILE, KEY_FILE};
use ponte_client::store::{
    IdentityCheck, Incoming, IncomingContent, OutboxKind, Status, UnixMillis, Update,
};
use ponte_client::ClientError;
use ponte_e2e::{Identity, MessageId};

const SECRET_TEXT: &str = "the eagle lands at midnight 7f3a";

fn small_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    }
}

fn all_bytes_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_bytes_under(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A session pair so incoming messages can be committed like the client does.
fn session_pair() -> (Identity, ponte_e2e::Session) {
    let alice = Identity::generate();
    let mut bob = Identity::generate();
    let prekey = bob.generate_one_time_keys(1).remove(0).public_key;
    let mut a = alice
        .create_outbound_session(&bob.public(), &prekey)
        .unwrap();
    let c = a.encrypt(b"x");
    let (b, _) = bob.create_inbound_session(&alice.public(), &c).unwrap();
    (bob, b)
}

#[test]
fn keyfile_profile_roundtrip_and_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("prof");
    {
        let profile = Profile::create(&p, KeySource::KeyFile).unwrap();
        profile.store().queue_text("bob", SECRET_TEXT).unwrap();
        profile.store().set_secret("noise", &[42u8; 32]).unwrap();
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(p.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // The database and its WAL files too (0644 before).
        let mut checked = 0;
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("ponte.db") {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
                checked += 1;
            }
        }
        assert!(checked >= 1);
    }
    assert!(!Profile::needs_passphrase(&p).unwrap());
    let profile = Profile::open(&p, || panic!("no passphrase needed")).unwrap();
    assert_eq!(
        profile.store().secret("noise").unwrap().unwrap().as_slice(),
        &[42u8; 32]
    );
    let out = profile.store().outbox().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, OutboxKind::Text(SECRET_TEXT.into()));
    // Creating over an existing profile is refused.
    assert!(Profile::create(&p, KeySource::KeyFile).is_err());
}

#[test]
fn passphrase_profile_and_wrong_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("prof");
    {
        let profile =
            Profile::create(&p, KeySource::Passphrase("hunter22".into(), small_kdf())).unwrap();
        profile.store().queue_text("bob", SECRET_TEXT).unwrap();
    }
    assert!(!p.join(KEY_FILE).exists());
    assert!(Profile::needs_passphrase(&p).unwrap());
    assert!(matches!(
        Profile::open(&p, || Ok("hunter2".into())),
        Err(ClientError::WrongPassphrase)
    ));
    assert!(matches!(
        Profile::open(&p, || Err(ClientError::PassphraseRequired)),
        Err(ClientError::PassphraseRequired)
    ));
    let profile = Profile::open(&p, || Ok("hunter22".into())).unwrap();
    assert_eq!(profile.store().outbox().unwrap().len(), 1);
}

#[test]
fn nothing_readable_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("prof");
    let profile = Profile::create(&p, KeySource::KeyFile).unwrap();
    let store = profile.store();
    let id = Identity::generate();
    store.save_identity(&id).unwrap();
    let out_id = store.queue_text("bob", SECRET_TEXT).unwrap();
    store.mark_sent("bob", &out_id).unwrap();
    let (bob_identity, session) = session_pair();
    store
        .commit_incoming(&Incoming {
            peer: "carol",
            id: MessageId::random(),
            sent_at: UnixMillis(1),
            session: &session,
            identity: Some(&bob_identity),
            key_changed: false,
            content: IncomingContent::Text("incoming secret 99zz"),
        })
        .unwrap();
    // Display: queues a read receipt (sealed) too.
    assert_eq!(store.take_updates().unwrap().len(), 2);
    // Files are checked while the database is open (WAL not yet checkpointed)
    // and after closing.
    for phase in ["open", "closed"] {
        let files = all_bytes_under(&p);
        assert!(files.iter().any(|(n, _)| n.ends_with(DB_FILE)));
        for (name, bytes) in &files {
            assert!(
                !contains(bytes, SECRET_TEXT.as_bytes()),
                "{phase}: plaintext in {name}"
            );
            assert!(
                !contains(bytes, b"incoming secret 99zz"),
                "{phase}: plaintext in {name}"
            );
            assert!(
                !contains(bytes, b"eagle"),
                "{phase}: plaintext fragment in {name}"
            );
        }
        if phase == "open" {
            assert!(
                files.iter().any(|(n, _)| n.ends_with("-wal")),
                "WAL present while open"
            );
        }
        let _ = &profile;
    }
    drop(profile);
    for (name, bytes) in all_bytes_under(&p) {
        assert!(
            !contains(&bytes, SECRET_TEXT.as_bytes()),
            "plaintext in {name} after close"
        );
    }
}

#[test]
fn ticks_move_forward_only_and_show_once() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::create(&dir.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    let id = store.queue_text("bob", "hi").unwrap();
    // Queued is reported by `send` itself, so nothing new yet.
    assert!(store.take_updates().unwrap().is_empty());
    assert_eq!(store.outbox().unwrap().len(), 1);
    store.mark_sent("bob", &id).unwrap();
    assert!(store.outbox().unwrap().is_empty());
    let up = store.take_updates().unwrap();
    assert!(matches!(&up[..], [Update::Status(v)] if v.status == Status::Sent && v.text == "hi"));
    assert!(store.take_updates().unwrap().is_empty());
    store.mark_delivered("bob", &id).unwrap();
    // A receipt for the same id from someone else changes nothing.
    store.mark_delivered("mallory", &id).unwrap();
    store.mark_sent("bob", &id).unwrap(); // late duplicate ack: no going back
    let up = store.take_updates().unwrap();
    assert!(matches!(&up[..], [Update::Status(v)] if v.status == Status::Delivered));
    // Read receipt from bob.
    let (_, session) = session_pair();
    let ids = [id];
    let fresh = store
        .commit_incoming(&Incoming {
            peer: "bob",
            id: MessageId::random(),
            sent_at: UnixMillis(2),
            session: &session,
            identity: None,
            key_changed: false,
            content: IncomingContent::ReadReceipt(&ids),
        })
        .unwrap();
    assert!(fresh);
    store.mark_delivered("bob", &id).unwrap();
    let up = store.take_updates().unwrap();
    assert!(matches!(&up[..], [Update::Status(v)] if v.status == Status::Read));
    assert_eq!(
        store.message("bob", true, &id).unwrap().unwrap().status,
        Status::Read
    );
}

#[test]
fn incoming_dedup_and_read_receipts_queued_on_display() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::create(&dir.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    let (_, session) = session_pair();
    let id = MessageId::random();
    let incoming = Incoming {
        peer: "alice",
        id,
        sent_at: UnixMillis(5),
        session: &session,
        identity: None,
        key_changed: false,
        content: IncomingContent::Text("hello bob"),
    };
    assert!(!store.seen("alice", &id).unwrap());
    assert!(store.commit_incoming(&incoming).unwrap());
    assert!(store.seen("alice", &id).unwrap());
    // Redelivery: not stored again.
    assert!(!store.commit_incoming(&incoming).unwrap());
    let up = store.take_updates().unwrap();
    assert!(
        matches!(&up[..], [Update::Message(v)] if v.text == "hello bob" && v.peer == "alice" && !v.outgoing)
    );
    // Shown once only.
    assert!(store.take_updates().unwrap().is_empty());
    assert_eq!(store.history("alice").unwrap().len(), 1);
    // Displaying queued exactly one read receipt for alice with that id.
    let out = store.outbox().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].peer, "alice");
    assert_eq!(out[0].kind, OutboxKind::ReadReceipt(vec![id]));
}

#[test]
fn history_counts_as_display() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::create(&dir.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    let (_, session) = session_pair();
    for (i, text) in ["one", "two"].iter().enumerate() {
        store
            .commit_incoming(&Incoming {
                peer: "alice",
                id: MessageId::random(),
                sent_at: UnixMillis(i as u64),
                session: &session,
                identity: None,
                key_changed: i == 1,
                content: IncomingContent::Text(text),
            })
            .unwrap();
    }
    store.queue_text("alice", "three").unwrap();
    let h = store.history("alice").unwrap();
    assert_eq!(
        h.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    assert!(!h[0].key_changed && h[1].key_changed);
    // One receipt covering both incoming messages, plus the queued text.
    let out = store.outbox().unwrap();
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[1].kind, OutboxKind::ReadReceipt(ids) if ids.len() == 2));
    // Already displayed: not reported again by take_updates.
    assert!(store
        .take_updates()
        .unwrap()
        .iter()
        .all(|u| !matches!(u, Update::Message(_))));
    // A second history call queues no new receipt.
    store.history("alice").unwrap();
    assert_eq!(store.outbox().unwrap().len(), 2);
}

#[test]
fn identity_change_is_flagged_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::create(&dir.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    let first = Identity::generate().public();
    let second = Identity::generate().public();
    assert_eq!(
        store.observe_identity("bob", &first).unwrap(),
        IdentityCheck::New
    );
    assert_eq!(
        store.observe_identity("bob", &first).unwrap(),
        IdentityCheck::Same
    );
    let (_, session) = session_pair();
    store.save_session("bob", &session).unwrap();
    assert_eq!(store.confirm_contact("bob").unwrap(), first);
    assert!(store.contact("bob").unwrap().unwrap().verified);

    assert_eq!(
        store.observe_identity("bob", &second).unwrap(),
        IdentityCheck::Changed
    );
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(
        c.identity, first,
        "the trusted key is not replaced silently"
    );
    assert_eq!(c.changed_identity, Some(second));
    assert!(!c.verified);
    // Seeing the change again keeps it flagged.
    assert_eq!(
        store.observe_identity("bob", &second).unwrap(),
        IdentityCheck::Changed
    );
    assert_eq!(store.confirm_contact("bob").unwrap(), second);
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(
        (c.identity, c.changed_identity, c.verified),
        (second, None, true)
    );
    assert!(
        store.sessions("bob").unwrap().is_empty(),
        "old sessions dropped"
    );
    assert!(matches!(
        store.confirm_contact("nobody"),
        Err(ClientError::UnknownContact(_))
    ));
}

#[test]
fn tampered_row_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    let profile = Profile::create(&p, KeySource::KeyFile).unwrap();
    profile.store().queue_text("bob", "a").unwrap();
    profile.store().queue_text("carol", "b").unwrap();
    drop(profile);
    // Swap the sealed bodies of two rows: each is bound to its row.
    let conn = rusqlite::Connection::open(p.join(DB_FILE)).unwrap();
    conn.execute_batch(
        "UPDATE messages SET body = (SELECT body FROM messages WHERE peer = 'carol') WHERE peer = 'bob';",
    )
    .unwrap();
    drop(conn);
    let profile = Profile::open(&p, || panic!()).unwrap();
    // Detected and failed closed for that row: marked, its text not shown
    // (neither its own nor the moved one); carol's row still reads.
    let bob = profile.store().history("bob").unwrap();
    assert_eq!(bob.len(), 1);
    assert!(bob[0].unreadable);
    assert_eq!(bob[0].text, "");
    let carol = profile.store().history("carol").unwrap();
    assert!(!carol[0].unreadable);
    assert_eq!(carol[0].text, "b");
}

#[test]
fn receipts_for_a_burst_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::create(&dir.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    let (_, session) = session_pair();
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let id = MessageId::random();
        ids.push(id);
        store
            .commit_incoming(&Incoming {
                peer: "alice",
                id,
                sent_at: UnixMillis(i),
                session: &session,
                identity: None,
                key_changed: false,
                content: IncomingContent::Text("x"),
            })
            .unwrap();
        // Displayed one by one, as `listen` does.
        assert_eq!(store.take_updates().unwrap().len(), 1);
    }
    let out = store.outbox().unwrap();
    assert_eq!(out.len(), 1, "one receipt for the burst");
    assert_eq!(out[0].kind, OutboxKind::ReadReceipt(ids));
}

#[test]
fn debug_output_never_shows_text() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Profile::create(&dir.path().join("p"), KeySource::KeyFile).unwrap();
    let store = profile.store();
    store.queue_text("bob", SECRET_TEXT).unwrap();
    let (_, session) = session_pair();
    let incoming = Incoming {
        peer: "alice",
        id: MessageId::random(),
        sent_at: UnixMillis(1),
        session: &session,
        identity: None,
        key_changed: false,
        content: IncomingContent::Text(SECRET_TEXT),
    };
    store.commit_incoming(&incoming).unwrap();
    let dumps = [
        format!("{:?}", store.outbox().unwrap()),
        format!("{incoming:?}"),
        format!("{:?}", store.take_updates().unwrap()),
        format!("{:?}", store.history("bob").unwrap()),
        format!("{profile:?}"),
    ];
    for d in dumps {
        assert!(!d.contains("eagle"), "{d}");
    }
}
