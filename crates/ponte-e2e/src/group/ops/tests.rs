#![allow(clippy::unwrap_used)]
use super::*;

fn member(identity: &Identity, handle: &str) -> Member {
    Member {
        handle: handle.into(),
        identity: identity.public(),
    }
}

/// Alice creates "team" and adds Bob and Carol; Bob is promoted.
fn setup() -> (GroupState, Identity, Identity, Identity) {
    let (alice, bob, carol) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (mut state, _) = GroupState::create(&alice, "alice", "team", 1).unwrap();
    for op in [
        GroupOp::Add(member(&bob, "bob")),
        GroupOp::Add(member(&carol, "carol")),
        GroupOp::Promote(bob.public().ed25519),
    ] {
        let signed = state.propose(&alice, 2, op).unwrap();
        state = state.apply(&signed).unwrap();
    }
    (state, alice, bob, carol)
}

#[test]
fn create_add_promote_rename_leave() {
    let (state, alice, bob, carol) = setup();
    assert_eq!(state.version(), 4);
    assert_eq!(state.members().count(), 3);
    assert_eq!(state.role_of(&bob.public().ed25519), Some(Role::Admin));
    assert_eq!(state.role_of(&carol.public().ed25519), Some(Role::Member));
    let rename = state
        .propose(&bob, 3, GroupOp::Rename("new".into()))
        .unwrap();
    let state = state.apply(&rename).unwrap();
    assert_eq!(state.title(), "new");
    assert_eq!(state.updated_at_ms(), 3);
    let leave = state.propose(&carol, 4, GroupOp::Leave).unwrap();
    assert_eq!(leave.removed(), Some(carol.public().ed25519));
    assert_eq!(rename.removed(), None);
    let state = state.apply(&leave).unwrap();
    assert_eq!(state.role_of(&carol.public().ed25519), None);
    assert_eq!(state.version(), 6);
    assert!(state.member_by_handle("alice").is_some());
    let _ = alice;
}

#[test]
fn a_member_receives_the_same_state_from_the_ops() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let (state, create) = GroupState::create(&alice, "alice", "team", 1).unwrap();
    let add = state
        .propose(&alice, 2, GroupOp::Add(member(&bob, "bob")))
        .unwrap();
    let state = state.apply(&add).unwrap();
    // Bob rebuilds it from the ops as received (encoded, over the wire).
    let wire = |op: &SignedOp| SignedOp::decode(&op.encode().unwrap()).unwrap();
    let bobs = GroupState::from_create(&wire(&create))
        .unwrap()
        .apply(&wire(&add))
        .unwrap();
    assert_eq!(bobs, state);
    assert_eq!(GroupState::replay([&create, &add]).unwrap(), state);
    assert_eq!(GroupState::replay([&add]), Err(OpError::BadCreate));
    assert_eq!(GroupState::replay([]), Err(OpError::BadCreate));
    assert_eq!(
        GroupState::replay([&create, &add, &add]),
        Err(OpError::ChainMismatch)
    );
}

#[test]
fn forged_op_is_refused() {
    let (state, _, _, carol) = setup();
    let mallory = Identity::generate();
    // A server (or anyone) without a member's key signs as an admin.
    let mut forged = state
        .propose(&mallory, 5, GroupOp::Add(member(&mallory, "mallory")))
        .unwrap();
    assert_eq!(state.apply(&forged), Err(OpError::NotMember));
    forged.signer = state.members().next().unwrap().0.identity.ed25519;
    assert_eq!(state.apply(&forged), Err(OpError::BadSignature));
    // A valid op altered in transit.
    let mut bytes = state
        .propose(&carol, 5, GroupOp::Leave)
        .unwrap()
        .encode()
        .unwrap();
    bytes[1 + 16 + 32 + 7] ^= 1; // the timestamp's last byte
    let tampered = SignedOp::decode(&bytes).unwrap();
    assert_eq!(state.apply(&tampered), Err(OpError::BadSignature));
}

#[test]
fn plain_member_cannot_administer() {
    let (state, _, _, carol) = setup();
    let dave = Identity::generate();
    for op in [
        GroupOp::Add(member(&dave, "dave")),
        GroupOp::Remove(state.members().next().unwrap().0.identity.ed25519),
        GroupOp::Promote(carol.public().ed25519),
        GroupOp::Rename("mine".into()),
    ] {
        let signed = state.propose(&carol, 5, op).unwrap();
        assert_eq!(state.apply(&signed), Err(OpError::NotAdmin));
    }
}

#[test]
fn replayed_op_is_refused() {
    let (state, alice, _, carol) = setup();
    let remove = state
        .propose(&alice, 5, GroupOp::Remove(carol.public().ed25519))
        .unwrap();
    assert_eq!(remove.removed(), Some(carol.public().ed25519));
    let after = state.apply(&remove).unwrap();
    assert_eq!(after.apply(&remove), Err(OpError::ChainMismatch));
    // A re-add followed by the old remove replayed again: still stale.
    let readd = after
        .propose(&alice, 6, GroupOp::Add(member(&carol, "carol")))
        .unwrap();
    let after = after.apply(&readd).unwrap();
    assert_eq!(after.apply(&remove), Err(OpError::ChainMismatch));
    // Ops for another group are refused whatever their chain.
    let (other, _) = GroupState::create(&alice, "alice", "other", 1).unwrap();
    let op = other
        .propose(&alice, 7, GroupOp::Rename("x".into()))
        .unwrap();
    assert_eq!(after.apply(&op), Err(OpError::WrongGroup));
}

#[test]
fn removed_admin_cannot_act() {
    let (state, alice, bob, carol) = setup();
    let remove_bob = state
        .propose(&alice, 5, GroupOp::Remove(bob.public().ed25519))
        .unwrap();
    let state = state.apply(&remove_bob).unwrap();
    // Bob signs on the current head, so only his membership stops him.
    let kick = state
        .propose(&bob, 6, GroupOp::Remove(carol.public().ed25519))
        .unwrap();
    assert_eq!(state.apply(&kick), Err(OpError::NotMember));
    let leave = state.propose(&bob, 6, GroupOp::Leave).unwrap();
    assert_eq!(state.apply(&leave), Err(OpError::NotMember));
}

#[test]
fn fork_is_detected() {
    let (state, alice, bob, carol) = setup();
    // Two admins sign different ops on the same head.
    let by_alice = state
        .propose(&alice, 5, GroupOp::Rename("a".into()))
        .unwrap();
    let by_bob = state
        .propose(&bob, 5, GroupOp::Remove(carol.public().ed25519))
        .unwrap();
    let after_alice = state.apply(&by_alice).unwrap();
    let after_bob = state.apply(&by_bob).unwrap();
    assert_ne!(after_alice.head(), after_bob.head());
    assert_eq!(after_alice.apply(&by_bob), Err(OpError::ChainMismatch));
    assert_eq!(after_bob.apply(&by_alice), Err(OpError::ChainMismatch));
}

#[test]
fn membership_rules_and_caps() {
    let (state, alice, bob, carol) = setup();
    let again = state
        .propose(&alice, 5, GroupOp::Add(member(&carol, "carol2")))
        .unwrap();
    assert_eq!(state.apply(&again), Err(OpError::AlreadyMember));
    let stranger = Identity::generate().public().ed25519;
    let op = state.propose(&alice, 5, GroupOp::Remove(stranger)).unwrap();
    assert_eq!(state.apply(&op), Err(OpError::NoSuchMember));
    let op = state
        .propose(&alice, 5, GroupOp::Promote(bob.public().ed25519))
        .unwrap();
    assert_eq!(state.apply(&op), Err(OpError::AlreadyAdmin));
    // A create op cannot be applied on top of a group.
    let create = state
        .propose(
            &alice,
            5,
            GroupOp::Create {
                title: "x".into(),
                creator: member(&alice, "alice"),
            },
        )
        .unwrap();
    assert_eq!(state.apply(&create), Err(OpError::BadCreate));
    // Caps are checked when signing, and decoding refuses oversize fields.
    assert_eq!(
        state
            .propose(&alice, 5, GroupOp::Rename("x".repeat(MAX_TITLE_BYTES + 1)))
            .unwrap_err(),
        OpError::TitleTooLong(MAX_TITLE_BYTES + 1)
    );
    assert_eq!(
        state
            .propose(&alice, 5, GroupOp::Add(member(&carol, &"h".repeat(33))))
            .unwrap_err(),
        OpError::BadHandle
    );
}

#[test]
fn last_admin_cannot_leave_members_behind() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let (state, _) = GroupState::create(&alice, "alice", "t", 1).unwrap();
    let add = state
        .propose(&alice, 2, GroupOp::Add(member(&bob, "bob")))
        .unwrap();
    let state = state.apply(&add).unwrap();
    let leave = state.propose(&alice, 3, GroupOp::Leave).unwrap();
    assert_eq!(state.apply(&leave), Err(OpError::LastAdmin));
    // Once Bob is gone the last member may leave.
    let rm = state
        .propose(&alice, 3, GroupOp::Remove(bob.public().ed25519))
        .unwrap();
    let state = state.apply(&rm).unwrap();
    let leave = state.propose(&alice, 4, GroupOp::Leave).unwrap();
    assert_eq!(state.apply(&leave).unwrap().members().count(), 0);
}

#[test]
fn member_cap() {
    let alice = Identity::generate();
    let (mut state, _) = GroupState::create(&alice, "alice", "big", 1).unwrap();
    // Fill the member list directly instead of signing 1,023 add ops;
    // `apply` compares the existing members' keys and handles only.
    let key = Identity::generate().public();
    for i in 1..MAX_MEMBERS {
        let mut identity = key;
        identity.curve25519[..8].copy_from_slice(&(i as u64).to_be_bytes());
        identity.ed25519 = [0; 32];
        identity.ed25519[..8].copy_from_slice(&(i as u64).to_be_bytes());
        state.members.push((
            Member {
                handle: format!("m{i}"),
                identity,
            },
            Role::Member,
        ));
    }
    assert_eq!(state.members().count(), MAX_MEMBERS);
    let newcomer = Identity::generate();
    let op = state
        .propose(&alice, 2, GroupOp::Add(member(&newcomer, "new")))
        .unwrap();
    assert_eq!(state.apply(&op), Err(OpError::TooManyMembers));
}

#[test]
fn debug_output_hides_titles() {
    let op = GroupOp::Rename("secret plans".into());
    assert_eq!(format!("{op:?}"), "Rename(12 bytes)");
    let (state, alice, _, _) = setup();
    let signed = state.propose(&alice, 5, op).unwrap();
    assert!(!format!("{signed:?}").contains("secret"));
    let renamed = state.apply(&signed).unwrap();
    assert!(!format!("{renamed:?}").contains("secret"));
}

#[test]
fn every_single_byte_change_decodes_canonically_or_is_refused() {
    let alice = Identity::generate();
    let (state, create) = GroupState::create(&alice, "alice", "team", 1).unwrap();
    let good = create.encode().unwrap();
    for at in 0..good.len() {
        for flip in [0x01, 0x80] {
            let mut bytes = good.clone();
            bytes[at] ^= flip;
            if let Ok(op) = SignedOp::decode(&bytes) {
                // One encoding per value, so the signature covers it all.
                assert_eq!(op.encode().unwrap(), bytes, "byte {at}");
                assert!(GroupState::from_create(&op).is_err(), "byte {at}");
                assert!(state.apply(&op).is_err(), "byte {at}");
            }
        }
    }
}

#[test]
fn decoding_rejects_hostile_input() {
    let (state, alice, _, _) = setup();
    let good = state
        .propose(&alice, 5, GroupOp::Rename("title".into()))
        .unwrap()
        .encode()
        .unwrap();
    for len in 0..good.len() {
        assert!(SignedOp::decode(&good[..len]).is_err(), "len {len}");
    }
    let mut long = good.clone();
    long.push(0);
    assert!(SignedOp::decode(&long).is_err());
    let mut bad = good.clone();
    bad[0] = 2;
    assert_eq!(
        SignedOp::decode(&bad),
        Err(OpError::Malformed("unknown version"))
    );
    let mut bad = good.clone();
    bad[HEADER] = 99;
    assert_eq!(
        SignedOp::decode(&bad),
        Err(OpError::Malformed("unknown op"))
    );
    let mut bad = good[..HEADER + 1].to_vec();
    bad.extend_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        SignedOp::decode(&bad),
        Err(OpError::Malformed("title too long"))
    );
    assert!(SignedOp::decode(&vec![1; MAX_OP_BYTES + 1]).is_err());
}
