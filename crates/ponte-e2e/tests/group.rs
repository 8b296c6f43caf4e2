//! Groups end to end: ops and sender keys travel pairwise inside Olm
//! envelopes, group messages as one serialized `GroupCiphertext` for every
//! member, as they would through the server's `SendGroupMessage`.
#![allow(clippy::unwrap_used)]

use ponte_e2e::group::{
    GroupCiphertext, GroupOp, GroupReceiver, GroupSender, GroupState, Member, OpError, SignedOp,
};
use ponte_e2e::{Ciphertext, Envelope, Error, Identity, MessageId, Payload, Session};

const NOW: u64 = 1_700_000_000_000;

/// A device: its identity and handle.
struct Device {
    identity: Identity,
    handle: &'static str,
}

impl Device {
    fn new(handle: &'static str) -> Self {
        Self {
            identity: Identity::generate(),
            handle,
        }
    }

    fn member(&self) -> Member {
        Member {
            handle: self.handle.into(),
            identity: self.identity.public(),
        }
    }

    fn key(&self) -> [u8; 32] {
        self.identity.public().ed25519
    }
}

/// An Olm session from `a` to `b` and its inbound end.
fn olm(a: &Device, b: &mut Device) -> (Session, Session) {
    let prekey = b.identity.generate_one_time_keys(1).remove(0).public_key;
    b.identity.mark_published();
    let mut out = a
        .identity
        .create_outbound_session(&b.identity.public(), &prekey)
        .unwrap();
    let first = out.encrypt(&envelope(Payload::Text("hi".into())));
    let (inbound, _) = b
        .identity
        .create_inbound_session(&a.identity.public(), &first)
        .unwrap();
    (out, inbound)
}

fn envelope(payload: Payload) -> Vec<u8> {
    Envelope {
        timer: None,
        id: MessageId::random(),
        sent_at_ms: NOW,
        payload,
    }
    .encode()
    .unwrap()
}

/// Send `payload` over Olm and return what the receiver decoded.
fn pairwise(from: &mut Session, to: &mut Session, payload: Payload) -> Payload {
    let wire = from.encrypt(&envelope(payload)).to_bytes();
    let plain = to.decrypt(&Ciphertext::from_bytes(&wire).unwrap()).unwrap();
    Envelope::decode(&plain).unwrap().payload
}

fn op_of(payload: Payload) -> SignedOp {
    match payload {
        Payload::GroupOp(op) => *op,
        other => panic!("unexpected {other:?}"),
    }
}

fn group_text(state: &GroupState, text: &str) -> Envelope {
    Envelope {
        timer: None,
        id: MessageId::random(),
        sent_at_ms: NOW,
        payload: Payload::GroupText {
            group: state.id(),
            text: text.into(),
        },
    }
}

#[test]
fn create_add_send_remove_over_olm() {
    let alice = Device::new("alice");
    let mut bob = Device::new("bob");
    let mut carol = Device::new("carol");
    let (mut to_bob, mut bob_from_alice) = olm(&alice, &mut bob);
    let (mut to_carol, mut carol_from_alice) = olm(&alice, &mut carol);

    // Alice creates the group and adds Bob and Carol.
    let (mut state, create) = GroupState::create(&alice.identity, "alice", "team", NOW).unwrap();
    let mut log = vec![create];
    for member in [bob.member(), carol.member()] {
        let op = state
            .propose(&alice.identity, NOW, GroupOp::Add(member))
            .unwrap();
        state = state.apply(&op).unwrap();
        log.push(op);
    }

    // Each new member gets the log pairwise and rebuilds the same state.
    let received = |from: &mut Session, to: &mut Session| {
        let ops: Vec<SignedOp> = log
            .iter()
            .map(|op| op_of(pairwise(from, to, Payload::GroupOp(Box::new(op.clone())))))
            .collect();
        GroupState::replay(&ops).unwrap()
    };
    let bob_state = received(&mut to_bob, &mut bob_from_alice);
    let mut carol_state = received(&mut to_carol, &mut carol_from_alice);
    assert_eq!(bob_state, state);
    assert_eq!(carol_state, state);

    // Alice's sender key goes to both, pairwise.
    let mut sender = GroupSender::new(state.id(), NOW);
    let mut bob_rx = GroupReceiver::new(state.id());
    let mut carol_rx = GroupReceiver::new(state.id());
    for (from, to, rx, st) in [
        (&mut to_bob, &mut bob_from_alice, &mut bob_rx, &bob_state),
        (
            &mut to_carol,
            &mut carol_from_alice,
            &mut carol_rx,
            &carol_state,
        ),
    ] {
        let Payload::SenderKey(key) = pairwise(from, to, Payload::SenderKey(sender.sender_key()))
        else {
            panic!("not a sender key");
        };
        rx.add_sender_key(st, &alice.key(), &key).unwrap();
    }

    // One body for everyone (what SendGroupMessage stores once).
    let out = sender
        .encrypt(&group_text(&state, "hello team"), NOW)
        .unwrap();
    assert!(out.rotated.is_none());
    let body = out.ciphertext.to_bytes();
    for (rx, st) in [(&mut bob_rx, &bob_state), (&mut carol_rx, &carol_state)] {
        let got = rx
            .decrypt(
                st,
                &alice.key(),
                &GroupCiphertext::from_bytes(&body).unwrap(),
            )
            .unwrap();
        assert_eq!(
            got.envelope.payload,
            Payload::GroupText {
                group: state.id(),
                text: "hello team".into()
            }
        );
    }

    // Alice removes Carol: the op goes to everyone, then Alice rotates and
    // gives the new key to the members left.
    let remove = state
        .propose(&alice.identity, NOW + 1, GroupOp::Remove(carol.key()))
        .unwrap();
    state = state.apply(&remove).unwrap();
    let gone = remove.removed().unwrap();
    assert_eq!(gone, carol.key());
    let bob_state = bob_state
        .apply(&op_of(pairwise(
            &mut to_bob,
            &mut bob_from_alice,
            Payload::GroupOp(Box::new(remove.clone())),
        )))
        .unwrap();
    assert_eq!(bob_state, state);
    let new_key = sender.rotate(NOW + 1);
    let Payload::SenderKey(key) = pairwise(
        &mut to_bob,
        &mut bob_from_alice,
        Payload::SenderKey(new_key),
    ) else {
        panic!("not a sender key");
    };
    bob_rx
        .add_sender_key(&bob_state, &alice.key(), &key)
        .unwrap();

    let after = sender
        .encrypt(&group_text(&state, "carol is gone"), NOW + 2)
        .unwrap()
        .ciphertext
        .to_bytes();
    let after = GroupCiphertext::from_bytes(&after).unwrap();
    assert!(bob_rx.decrypt(&bob_state, &alice.key(), &after).is_ok());
    // Carol, whether or not she applied her removal, reads nothing new.
    assert!(matches!(
        carol_rx.decrypt(&carol_state, &alice.key(), &after),
        Err(Error::UnknownGroupSession)
    ));
    carol_state = carol_state.apply(&remove).unwrap();
    assert!(carol_state.role_of(&carol.key()).is_none());
    // And whatever she signs now is refused by the others.
    let rename = carol_state
        .propose(&carol.identity, NOW + 3, GroupOp::Rename("mine".into()))
        .unwrap();
    assert_eq!(bob_state.apply(&rename), Err(OpError::NotMember));
}
