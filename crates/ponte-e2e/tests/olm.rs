//! End-to-end session tests: two identities talk through serialized
//! ciphertexts, as they would through the server.
#![allow(clippy::unwrap_used)]

use ponte_e2e::{Ciphertext, Envelope, Identity, MessageId, Payload, Session};

fn roundtrip(c: &Ciphertext) -> Ciphertext {
    Ciphertext::from_bytes(&c.to_bytes()).unwrap()
}

fn text(s: &str) -> Vec<u8> {
    Envelope {
        timer: None,
        id: MessageId::random(),
        sent_at_ms: 1,
        payload: Payload::Text(s.into()),
    }
    .encode()
    .unwrap()
}

fn open(bytes: &[u8]) -> String {
    match Envelope::decode(bytes).unwrap().payload {
        Payload::Text(t) => t,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn outbound_inbound_and_reply() {
    let alice = Identity::generate();
    let mut bob = Identity::generate();
    let prekey = bob.generate_one_time_keys(1).remove(0).public_key;
    bob.mark_published();

    let mut a_sess = alice
        .create_outbound_session(&bob.public(), &prekey)
        .unwrap();
    let c1 = roundtrip(&a_sess.encrypt(&text("first")));
    let c2 = roundtrip(&a_sess.encrypt(&text("second")));
    assert!(c1.is_prekey() && c2.is_prekey());
    assert_eq!(
        Identity::prekey_sender(&c1),
        Some(alice.public().curve25519)
    );

    let (mut b_sess, plain) = bob.create_inbound_session(&alice.public(), &c1).unwrap();
    assert_eq!(open(&plain), "first");
    // The second pre-key message belongs to the same session.
    assert!(b_sess.matches_prekey(&c2));
    assert_eq!(open(&b_sess.decrypt(&c2).unwrap()), "second");
    // The one-time key is used up: a second inbound session from it fails.
    assert!(bob.create_inbound_session(&alice.public(), &c1).is_err());

    let reply = roundtrip(&b_sess.encrypt(&text("hello alice")));
    assert_eq!(open(&a_sess.decrypt(&reply).unwrap()), "hello alice");
    let c3 = a_sess.encrypt(&text("third"));
    assert!(!c3.is_prekey());
    assert_eq!(open(&b_sess.decrypt(&c3).unwrap()), "third");
}

#[test]
fn fallback_key_works_when_one_time_keys_run_out() {
    let alice = Identity::generate();
    let carol = Identity::generate();
    let mut bob = Identity::generate();
    let fallback = bob.rotate_fallback_key().unwrap().public_key;
    bob.mark_published();
    let mut a = alice
        .create_outbound_session(&bob.public(), &fallback)
        .unwrap();
    let mut c = carol
        .create_outbound_session(&bob.public(), &fallback)
        .unwrap();
    let (_, pa) = bob
        .create_inbound_session(&alice.public(), &a.encrypt(&text("a")))
        .unwrap();
    let (_, pc) = bob
        .create_inbound_session(&carol.public(), &c.encrypt(&text("c")))
        .unwrap();
    assert_eq!((open(&pa), open(&pc)), ("a".into(), "c".into()));
}

#[test]
fn wrong_sender_rejected() {
    let alice = Identity::generate();
    let mallory = Identity::generate();
    let mut bob = Identity::generate();
    let prekey = bob.generate_one_time_keys(1).remove(0).public_key;
    // A pre-key message claimed to come from someone else is refused.
    let mut sess = alice
        .create_outbound_session(&bob.public(), &prekey)
        .unwrap();
    let c = sess.encrypt(&text("x"));
    assert!(bob.create_inbound_session(&mallory.public(), &c).is_err());
    // A pre-key that bob never made gives a session bob cannot open.
    let mut bogus = alice
        .create_outbound_session(&bob.public(), &mallory.public().curve25519)
        .unwrap();
    assert!(bob
        .create_inbound_session(&alice.public(), &bogus.encrypt(&text("y")))
        .is_err());
}

#[test]
fn tampered_ciphertext_and_pickles() {
    let alice = Identity::generate();
    let mut bob = Identity::generate();
    let prekey = bob.generate_one_time_keys(1).remove(0).public_key;
    let mut a = alice
        .create_outbound_session(&bob.public(), &prekey)
        .unwrap();
    let c = a.encrypt(&text("secret"));
    let mut bytes = c.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    let tampered = Ciphertext::from_bytes(&bytes).unwrap();
    assert!(bob
        .create_inbound_session(&alice.public(), &tampered)
        .is_err());
    // Bob's one-time key survived the failed attempt.
    let (b, plain) = bob.create_inbound_session(&alice.public(), &c).unwrap();
    assert_eq!(open(&plain), "secret");

    let key = [9u8; 32];
    let pickled = b.pickle(&key);
    assert!(!pickled.contains("secret"));
    let mut b2 = Session::from_pickle(&pickled, &key).unwrap();
    assert_eq!(b2.session_id(), a.session_id());
    let next = a.encrypt(&text("after restore"));
    assert_eq!(open(&b2.decrypt(&next).unwrap()), "after restore");
    assert!(Session::from_pickle(&pickled, &[1u8; 32]).is_err());
}

#[test]
fn ciphertext_parser_rejects_garbage() {
    assert!(Ciphertext::from_bytes(&[]).is_err());
    assert!(Ciphertext::from_bytes(&[1]).is_err());
    assert!(Ciphertext::from_bytes(&[2, 0, 1, 2, 3]).is_err());
    assert!(Ciphertext::from_bytes(&[1, 7, 1, 2, 3]).is_err());
    assert!(Ciphertext::from_bytes(&[1, 0, 1, 2, 3]).is_err());
    assert!(Ciphertext::from_bytes(&vec![1u8; ponte_e2e::MAX_CIPHERTEXT_BYTES + 1]).is_err());
}

#[test]
fn random_and_mutated_input_never_panics() {
    use rand::{Rng as _, SeedableRng as _};
    // Deterministic: a fixed seed, a bounded number of cases.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9);
    let alice = Identity::generate();
    let mut bob = Identity::generate();
    let prekey = bob.generate_one_time_keys(1).remove(0).public_key;
    let mut a = alice
        .create_outbound_session(&bob.public(), &prekey)
        .unwrap();
    let good_ct = a.encrypt(&text("seed")).to_bytes();
    let good_env = text("a valid envelope");
    let mut consumed = false;
    for i in 0..3000 {
        let len = rng.gen_range(0..300);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 3 == 0 {
            // Mutations of valid inputs reach deeper than pure noise.
            buf = if i % 2 == 0 {
                good_ct.clone()
            } else {
                good_env.clone()
            };
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..buf.len());
                buf[at] = rng.gen();
            }
            if rng.gen_bool(0.3) {
                buf.truncate(rng.gen_range(0..buf.len()));
            }
        }
        let _ = Envelope::decode(&buf);
        if let Ok(c) = Ciphertext::from_bytes(&buf) {
            let _ = Identity::prekey_sender(&c);
            // Only an unmodified copy (a mutation that rewrote a byte with
            // its own value) may open a session.
            if bob.create_inbound_session(&alice.public(), &c).is_ok() {
                assert_eq!(buf, good_ct);
                consumed = true;
            }
        }
    }
    // Forgeries did not use up bob's one-time key.
    if !consumed {
        let fresh = a.encrypt(&text("still works"));
        let (_, plain) = bob.create_inbound_session(&alice.public(), &fresh).unwrap();
        assert_eq!(open(&plain), "still works");
    }
}

#[test]
fn failures_keep_vodozemacs_typed_reasons() {
    use std::error::Error as _;
    let alice = Identity::generate();
    let mut bob = Identity::generate();
    let prekey = bob.generate_one_time_keys(1).remove(0).public_key;
    bob.mark_published();
    let mut a_sess = alice
        .create_outbound_session(&bob.public(), &prekey)
        .unwrap();
    let c1 = a_sess.encrypt(&text("first"));
    let (mut b_sess, _) = bob.create_inbound_session(&alice.public(), &c1).unwrap();

    // The one-time key is spent: vodozemac says which one was missing.
    let again = bob
        .create_inbound_session(&alice.public(), &c1)
        .unwrap_err();
    let ponte_e2e::Error::SessionCreation(reason) = &again else {
        panic!("{again:?}");
    };
    assert!(matches!(
        reason,
        vodozemac::olm::SessionCreationError::MissingOneTimeKey(_)
    ));
    assert!(again.source().is_some());

    // A replayed message: its key was used up, which vodozemac names.
    let c2 = a_sess.encrypt(&text("second"));
    b_sess.decrypt(&c2).unwrap();
    let replay = b_sess.decrypt(&c2).unwrap_err();
    let ponte_e2e::Error::Decryption(reason) = &replay else {
        panic!("{replay:?}");
    };
    assert!(
        matches!(
            reason,
            vodozemac::olm::DecryptionError::MissingMessageKey(_)
                | vodozemac::olm::DecryptionError::InvalidMAC(_)
        ),
        "{reason:?}"
    );
    // The message says what failed; the reason is the source, not repeated.
    assert_eq!(replay.to_string(), "decryption failed");

    // A pickle under the wrong key.
    let pickle = b_sess.pickle(&[1; 32]);
    let wrong = Session::from_pickle(&pickle, &[2; 32]).unwrap_err();
    assert!(matches!(
        wrong,
        ponte_e2e::Error::Pickle(vodozemac::PickleError::Decryption(_))
    ));
}
