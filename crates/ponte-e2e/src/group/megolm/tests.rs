//! Megolm sender and receiver tests.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::group::GroupOp;
use crate::group::Member;
use crate::Payload;
use crate::{Identity, MessageId};

const NOW: u64 = 1_700_000_000_000;

/// A group created by Alice; her Ed25519 key.
fn fixture() -> (GroupState, [u8; 32]) {
    let (state, alice) = fixture_with_identity();
    (state, alice.public().ed25519)
}

fn fixture_with_identity() -> (GroupState, Identity) {
    let alice = Identity::generate();
    let (state, _) = GroupState::create(&alice, "alice", "team", NOW).unwrap();
    (state, alice)
}

fn text(group: GroupId, text: &str) -> Envelope {
    Envelope {
        timer: None,
        id: MessageId::random(),
        sent_at_ms: NOW,
        payload: Payload::GroupText {
            group,
            text: text.into(),
        },
    }
}

fn wire(c: &GroupCiphertext) -> GroupCiphertext {
    GroupCiphertext::from_bytes(&c.to_bytes()).unwrap()
}

#[test]
fn members_decrypt_the_senders_messages() {
    let (state, alice) = fixture();
    let group = state.id();
    let mut sender = GroupSender::new(group, NOW);
    let mut bob = GroupReceiver::new(group);
    bob.add_sender_key(&state, &alice, &sender.sender_key())
        .unwrap();
    for i in 0..3 {
        let env = text(group, &format!("hello {i}"));
        let out = sender.encrypt(&env, NOW).unwrap();
        assert!(out.rotated.is_none());
        let got = bob.decrypt(&state, &alice, &wire(&out.ciphertext)).unwrap();
        assert_eq!(got.envelope, env);
        assert_eq!(got.message_index, i);
    }
    // The same ciphertext attributed to a non-member is refused, and to
    // another member finds no session.
    let out = sender.encrypt(&text(group, "x"), NOW).unwrap();
    assert!(matches!(
        bob.decrypt(&state, &[2; 32], &out.ciphertext),
        Err(Error::NotGroupMember)
    ));
    assert!(matches!(
        bob.add_sender_key(&state, &[2; 32], &sender.sender_key()),
        Err(Error::NotGroupMember)
    ));
    let (state, admin) = fixture_with_identity();
    let dave = Identity::generate();
    let add = state
        .propose(
            &admin,
            NOW,
            GroupOp::Add(Member {
                handle: "dave".into(),
                identity: dave.public(),
            }),
        )
        .unwrap();
    let state = state.apply(&add).unwrap();
    let mut sender = GroupSender::new(state.id(), NOW);
    let mut bob = GroupReceiver::new(state.id());
    let admin = admin.public().ed25519;
    bob.add_sender_key(&state, &admin, &sender.sender_key())
        .unwrap();
    let out = sender.encrypt(&text(state.id(), "x"), NOW).unwrap();
    assert!(matches!(
        bob.decrypt(&state, &dave.public().ed25519, &out.ciphertext),
        Err(Error::UnknownGroupSession)
    ));
    assert!(bob.decrypt(&state, &admin, &out.ciphertext).is_ok());
}

#[test]
fn removed_member_cannot_decrypt_after_rotation() {
    let (state, alice) = fixture();
    let group = state.id();
    let mut sender = GroupSender::new(group, NOW);
    let mut bob = GroupReceiver::new(group);
    let mut carol = GroupReceiver::new(group);
    let old_key = sender.sender_key();
    bob.add_sender_key(&state, &alice, &old_key).unwrap();
    carol.add_sender_key(&state, &alice, &old_key).unwrap();
    let before = sender.encrypt(&text(group, "before"), NOW).unwrap();
    assert!(carol.decrypt(&state, &alice, &before.ciphertext).is_ok());

    // Carol is removed: Alice rotates and sends the new key to Bob only.
    let new_key = sender.rotate(NOW + 1);
    bob.add_sender_key(&state, &alice, &new_key).unwrap();
    let after = sender.encrypt(&text(group, "after"), NOW + 2).unwrap();
    assert_eq!(
        bob.decrypt(&state, &alice, &after.ciphertext)
            .unwrap()
            .envelope
            .payload,
        Payload::GroupText {
            group,
            text: "after".into()
        }
    );
    assert!(matches!(
        carol.decrypt(&state, &alice, &after.ciphertext),
        Err(Error::UnknownGroupSession)
    ));
    // Even run through her old session directly (say she rewrote the
    // session id), vodozemac refuses: the new session has another key.
    let mut old =
        InboundGroupSession::new(&old_key.session_key().unwrap(), SessionConfig::version_2());
    let message = MegolmMessage::from_bytes(&after.ciphertext.message).unwrap();
    assert!(matches!(
        old.decrypt(&message),
        Err(vodozemac::megolm::DecryptionError::Signature(_))
    ));
}

#[test]
fn new_member_cannot_read_earlier_messages() {
    let (state, alice) = fixture();
    let group = state.id();
    let mut sender = GroupSender::new(group, NOW);
    let early: Vec<_> = (0..3)
        .map(|i| sender.encrypt(&text(group, &format!("{i}")), NOW).unwrap())
        .collect();
    // Dave joins: he gets the key at the current index (3).
    let mut dave = GroupReceiver::new(group);
    dave.add_sender_key(&state, &alice, &sender.sender_key())
        .unwrap();
    for out in &early {
        assert!(matches!(
            dave.decrypt(&state, &alice, &out.ciphertext),
            Err(Error::GroupDecryption(
                vodozemac::megolm::DecryptionError::UnknownMessageIndex(3, _)
            ))
        ));
    }
    let later = sender.encrypt(&text(group, "welcome"), NOW).unwrap();
    assert_eq!(
        dave.decrypt(&state, &alice, &later.ciphertext)
            .unwrap()
            .message_index,
        3
    );
}

#[test]
fn rotates_after_count_and_age() {
    let (state, alice) = fixture();
    let group = state.id();
    let mut sender = GroupSender::new(group, NOW);
    let mut rotations = 0;
    for _ in 0..MAX_SESSION_MESSAGES {
        let out = sender.encrypt(&text(group, "x"), NOW).unwrap();
        rotations += usize::from(out.rotated.is_some());
    }
    assert_eq!(rotations, 0);
    assert!(sender.needs_rotation(NOW));
    let out = sender.encrypt(&text(group, "x"), NOW).unwrap();
    let key = out.rotated.unwrap();
    // The receiver given the rotated key reads the message that carried it.
    let mut bob = GroupReceiver::new(group);
    bob.add_sender_key(&state, &alice, &key).unwrap();
    assert_eq!(
        bob.decrypt(&state, &alice, &out.ciphertext)
            .unwrap()
            .message_index,
        0
    );

    assert!(!sender.needs_rotation(NOW + MAX_SESSION_AGE_MS - 1));
    let out = sender
        .encrypt(&text(group, "x"), NOW + MAX_SESSION_AGE_MS)
        .unwrap();
    assert!(out.rotated.is_some());
    // A clock that goes back does not rotate (nor panic).
    assert!(!sender.needs_rotation(0));
}

#[test]
fn group_is_checked_everywhere() {
    let (state, alice_identity) = fixture_with_identity();
    let alice = alice_identity.public().ed25519;
    let group = state.id();
    let (other_state, _) = GroupState::create(&alice_identity, "alice", "b", NOW).unwrap();
    let other = other_state.id();
    let mut sender = GroupSender::new(group, NOW);
    assert!(matches!(
        sender.encrypt(&text(other, "x"), NOW),
        Err(Error::WrongGroup)
    ));
    let mut plain = text(group, "x");
    plain.payload = Payload::Text("x".into());
    assert!(sender.encrypt(&plain, NOW).is_err());
    let mut elsewhere = GroupReceiver::new(other);
    assert!(matches!(
        elsewhere.add_sender_key(&other_state, &alice, &sender.sender_key()),
        Err(Error::WrongGroup)
    ));
    // The state passed in must be this receiver's group.
    assert!(matches!(
        elsewhere.add_sender_key(&state, &alice, &sender.sender_key()),
        Err(Error::WrongGroup)
    ));
    // A session shared into another group: the outer id is rewritten, the
    // authenticated inner one still names the first group.
    let key = SenderKey::from_parts(other, sender.sender_key().key_bytes()).unwrap();
    elsewhere
        .add_sender_key(&other_state, &alice, &key)
        .unwrap();
    let mut moved = sender.encrypt(&text(group, "x"), NOW).unwrap().ciphertext;
    moved.group = other;
    assert!(matches!(
        elsewhere.decrypt(&other_state, &alice, &moved),
        Err(Error::WrongGroup)
    ));
}

#[test]
fn sessions_per_sender_are_bounded() {
    let (state, alice) = fixture();
    let group = state.id();
    let mut sender = GroupSender::new(group, NOW);
    let mut bob = GroupReceiver::new(group);
    let first = sender.encrypt(&text(group, "x"), NOW).unwrap();
    bob.add_sender_key(&state, &alice, &sender.sender_key())
        .unwrap();
    for i in 0..MAX_SESSIONS_PER_SENDER as u64 {
        let key = sender.rotate(NOW + i);
        bob.add_sender_key(&state, &alice, &key).unwrap();
    }
    assert_eq!(bob.sessions[&alice].len(), MAX_SESSIONS_PER_SENDER);
    assert!(matches!(
        bob.decrypt(&state, &alice, &first.ciphertext),
        Err(Error::UnknownGroupSession)
    ));
    bob.remove_sender(&alice);
    assert!(bob.sessions.is_empty());
}

#[test]
fn pickles_roundtrip() {
    let (state, alice) = fixture();
    let group = state.id();
    let key = [7u8; 32];
    let mut sender = GroupSender::new(group, NOW);
    let mut bob = GroupReceiver::new(group);
    bob.add_sender_key(&state, &alice, &sender.sender_key())
        .unwrap();
    sender.encrypt(&text(group, "x"), NOW).unwrap();

    let mut sender = GroupSender::from_pickle(&sender.pickle(&key), &key).unwrap();
    assert_eq!(sender.message_index(), 1);
    let mut bob = GroupReceiver::from_pickle(&bob.pickle(&key), &key).unwrap();
    let out = sender.encrypt(&text(group, "y"), NOW).unwrap();
    assert!(out.rotated.is_none());
    assert_eq!(
        bob.decrypt(&state, &alice, &out.ciphertext)
            .unwrap()
            .message_index,
        1
    );

    assert!(GroupSender::from_pickle(&sender.pickle(&key), &[0; 32]).is_err());
    assert!(GroupReceiver::from_pickle(&bob.pickle(&key), &[0; 32]).is_err());
    assert!(GroupSender::from_pickle("garbage", &key).is_err());
    assert!(GroupReceiver::from_pickle("", &key).is_err());
}

#[test]
fn ciphertext_decoding_rejects_hostile_input() {
    let group = GroupId::random();
    let mut sender = GroupSender::new(group, NOW);
    let good = sender
        .encrypt(&text(group, "x"), NOW)
        .unwrap()
        .ciphertext
        .to_bytes();
    assert_eq!(GroupCiphertext::from_bytes(&good).unwrap().to_bytes(), good);
    for len in 0..HEADER + 2 {
        assert!(
            GroupCiphertext::from_bytes(&good[..len]).is_err(),
            "len {len}"
        );
    }
    let mut bad = good.clone();
    bad[0] = 9;
    assert!(GroupCiphertext::from_bytes(&bad).is_err());
    assert!(GroupCiphertext::from_bytes(&vec![1; MAX_CIPHERTEXT_BYTES + 1]).is_err());
    assert!(SenderKey::from_parts(group, &[0; 10]).is_err());
    assert!(SenderKey::from_parts(group, &[0; MAX_SENDER_KEY_BYTES + 1]).is_err());
}

/// Encrypt raw plaintext bytes with the sender's session, as a sender
/// with another encoder would.
fn encrypt_raw(sender: &mut GroupSender, plaintext: &[u8]) -> GroupCiphertext {
    let message = sender.session.encrypt(plaintext);
    GroupCiphertext {
        group: sender.group,
        session_id: session_id_bytes(&sender.session.session_id()).unwrap(),
        message: message.to_bytes(),
    }
}

#[test]
fn a_reply_travels_in_the_group_as_an_extension() {
    let (state, alice) = fixture();
    let group = state.id();
    let mut sender = GroupSender::new(group, NOW);
    let mut bob = GroupReceiver::new(group);
    bob.add_sender_key(&state, &alice, &sender.sender_key())
        .unwrap();
    let quoted = MessageId::random();
    for env in [
        text(group, "yes, that one"),
        Envelope {
            timer: crate::Timer::from_secs(60),
            ..text(group, "timed")
        },
    ] {
        let out = sender
            .encrypt_with(&env, &Extensions::reply(quoted), NOW)
            .unwrap();
        let got = bob.decrypt(&state, &alice, &wire(&out.ciphertext)).unwrap();
        assert_eq!(got.envelope, env);
        assert_eq!(got.extensions.reply_to, Some(quoted));
    }
    // Without extensions: none.
    let out = sender.encrypt(&text(group, "plain"), NOW).unwrap();
    let got = bob.decrypt(&state, &alice, &out.ciphertext).unwrap();
    assert_eq!(got.extensions, Extensions::default());
    // The group check still applies with extensions.
    assert!(matches!(
        sender.encrypt_with(
            &text(GroupId::random(), "x"),
            &Extensions::reply(quoted),
            NOW
        ),
        Err(Error::WrongGroup)
    ));
}

#[test]
fn unknown_group_extensions_are_skipped_and_hostile_ones_refused() {
    let (state, alice) = fixture();
    let group = state.id();
    let mut sender = GroupSender::new(group, NOW);
    let mut bob = GroupReceiver::new(group);
    bob.add_sender_key(&state, &alice, &sender.sender_key())
        .unwrap();
    let env = text(group, "hi");
    let quoted = MessageId::random();
    let plain = env.encode().unwrap();
    let body_end = plain.iter().rposition(|&b| b != 0).unwrap() + 1;
    let with = |ext: &[u8]| {
        let mut b = plain[..body_end].to_vec();
        b.extend_from_slice(ext);
        b.resize(b.len().div_ceil(64) * 64, 0);
        b
    };
    // A later tag (unknown here) before the reply: skipped, the reply read.
    let mut ext = vec![77, 0, 5, 1, 2, 3, 4, 5, 1, 0, 16];
    ext.extend_from_slice(&quoted.0);
    let ct = encrypt_raw(&mut sender, &with(&ext));
    let got = bob.decrypt(&state, &alice, &ct).unwrap();
    assert_eq!(got.envelope, env);
    assert_eq!(got.extensions.reply_to, Some(quoted));

    // A length past the end, a reply id of the wrong length, the reply
    // twice, more extensions than allowed, a length claiming 64 KiB: each
    // refused as a malformed envelope, nothing allocated for it.
    let mut twice = vec![1, 0, 16];
    twice.extend_from_slice(&quoted.0);
    twice.extend_from_slice(&[1, 0, 16]);
    twice.extend_from_slice(&quoted.0);
    let many: Vec<u8> = (0..=crate::envelope::MAX_EXTENSIONS)
        .flat_map(|_| [9u8, 0, 0])
        .collect();
    for bad in [
        vec![1, 0, 200, 1, 2],
        vec![1, 0, 4, 1, 2, 3, 4],
        twice,
        many,
        vec![9, 0xff, 0xff, 1],
    ] {
        let ct = encrypt_raw(&mut sender, &with(&bad));
        assert!(
            matches!(
                bob.decrypt(&state, &alice, &ct),
                Err(Error::MalformedEnvelope(_))
            ),
            "{bad:?}"
        );
    }
}
