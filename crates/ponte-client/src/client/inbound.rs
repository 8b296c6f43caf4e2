//! Choosing and opening the Olm session for an incoming message: a decision
//! without I/O.
//!
//! [`open`] takes the message, the local state about its sender (the
//! contact, their sessions) and this device's identity, and returns a
//! [`Decision`]: the plaintext with the session that opened it, a reason to
//! drop the message, or [`Decision::NeedIdentity`] when a pre-key message
//! comes from a key the local state does not know. The caller then fetches
//! the sender's identity from the server's directory and asks again with
//! it in [`Inbound::looked_up`]; it records that identity
//! ([`Opened::record`]) only when the message opened with it.
//!
//! The rules:
//! - a pre-key message that belongs to a session we have is decrypted by
//!   that session;
//! - otherwise a pre-key message creates a new session, but only from the
//!   sender's identity: the trusted one, the changed one waiting for
//!   `verify --confirm` (the message is then marked as under a changed
//!   key), or the one the directory announces now; a message whose key is
//!   none of these is not the sender's;
//! - a normal message is tried against each session, newest first.

use crate::store::Contact;
use ponte_e2e::{Ciphertext, Identity, PublicIdentity, Session};

/// What the receiver knows when a message arrives.
#[derive(Debug)]
pub struct Inbound<'a> {
    /// The message.
    pub ciphertext: &'a Ciphertext,
    /// The sender as a local contact, if known.
    pub contact: Option<&'a Contact>,
    /// The sessions with the sender, newest first.
    pub sessions: Vec<Session>,
    /// The sender's identity as the directory announces it, once a previous
    /// decision asked for it ([`Decision::NeedIdentity`]).
    pub looked_up: Option<PublicIdentity>,
}

/// A message that opened.
#[derive(Debug)]
pub struct Opened {
    /// The session that decrypted it (advanced: save it with the message).
    pub session: Session,
    /// The decrypted envelope bytes.
    pub plaintext: Vec<u8>,
    /// The session is new (created from this pre-key message): this
    /// device's identity lost a one-time key and must be saved with it.
    pub new_session: bool,
    /// The message came under an identity that is not the trusted one
    /// (a change waiting for re-verification).
    pub key_changed: bool,
    /// The looked-up identity it opened with: record it as the sender's
    /// (trust on first use, or flag a change) before committing the message.
    pub record: Option<PublicIdentity>,
}

/// What to do with an incoming message.
#[derive(Debug)]
#[non_exhaustive]
pub enum Decision {
    /// It opened (boxed: a session is a few KiB).
    Opened(Box<Opened>),
    /// A pre-key message from a key the local state does not know: fetch
    /// the sender's identity and decide again with [`Inbound::looked_up`].
    NeedIdentity,
    /// A pre-key message whose key is not the sender's identity: drop it.
    NotSendersKey,
    /// No session decrypts it (forged, replayed, or a session we lost):
    /// drop it.
    Undecryptable,
}

/// Decide how to open `input.ciphertext`. Creating an inbound session
/// consumes a one-time key of `identity` (in memory only).
pub fn open(identity: &mut Identity, input: Inbound<'_>) -> Decision {
    let Inbound {
        ciphertext,
        contact,
        mut sessions,
        looked_up,
    } = input;
    let flagged = contact.is_some_and(|c| c.changed_identity.is_some());
    if !ciphertext.is_prekey() {
        for mut s in sessions {
            if let Ok(plaintext) = s.decrypt(ciphertext) {
                return Decision::Opened(Box::new(Opened {
                    session: s,
                    plaintext,
                    new_session: false,
                    key_changed: flagged,
                    record: None,
                }));
            }
        }
        return Decision::Undecryptable;
    }
    if let Some(pos) = sessions.iter().position(|s| s.matches_prekey(ciphertext)) {
        let mut s = sessions.swap_remove(pos);
        return match s.decrypt(ciphertext) {
            Ok(plaintext) => Decision::Opened(Box::new(Opened {
                session: s,
                plaintext,
                new_session: false,
                key_changed: flagged,
                record: None,
            })),
            Err(_) => Decision::Undecryptable,
        };
    }
    let claimed = Identity::prekey_sender(ciphertext);
    let known = contact.and_then(|c| {
        if Some(c.identity.curve25519) == claimed {
            Some((c.identity, false))
        } else {
            c.changed_identity
                .filter(|n| Some(n.curve25519) == claimed)
                .map(|n| (n, true))
        }
    });
    let (their, key_changed, record) = match (known, looked_up) {
        (Some((their, changed)), _) => (their, changed, None),
        (None, None) => return Decision::NeedIdentity,
        (None, Some(l)) if Some(l.curve25519) == claimed => (l, flagged, Some(l)),
        (None, Some(_)) => return Decision::NotSendersKey,
    };
    match identity.create_inbound_session(&their, ciphertext) {
        Ok((session, plaintext)) => Decision::Opened(Box::new(Opened {
            session,
            plaintext,
            new_session: true,
            key_changed,
            record,
        })),
        Err(e) => {
            tracing::debug!(error = %e, "inbound session failed");
            Decision::Undecryptable
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    /// Alice's first message to bob (a pre-key message), with bob's identity.
    fn first_message(alice: &Identity, text: &[u8]) -> (Identity, Session, Ciphertext) {
        let mut bob = Identity::generate();
        let key = bob.generate_one_time_keys(1).remove(0);
        bob.mark_published();
        let mut session = alice
            .create_outbound_session(&bob.public(), &key.public_key)
            .unwrap();
        let ct = session.encrypt(text);
        (bob, session, ct)
    }

    /// A session with someone else, which decrypts nothing of alice's.
    fn unrelated_session() -> Session {
        let (_, session, _) = first_message(&Identity::generate(), b"x");
        session
    }

    fn contact(identity: PublicIdentity, changed: Option<PublicIdentity>) -> Contact {
        Contact {
            handle: "alice".into(),
            identity,
            verified: false,
            changed_identity: changed,
        }
    }

    fn opened(d: Decision) -> Opened {
        match d {
            Decision::Opened(o) => *o,
            other => panic!("not opened: {other:?}"),
        }
    }

    #[test]
    fn unknown_sender_asks_for_the_identity_then_opens_and_records_it() {
        let alice = Identity::generate();
        let (mut bob, _, ct) = first_message(&alice, b"hello");
        let input = || Inbound {
            ciphertext: &ct,
            contact: None,
            sessions: Vec::new(),
            looked_up: None,
        };
        assert!(matches!(open(&mut bob, input()), Decision::NeedIdentity));
        let o = opened(open(
            &mut bob,
            Inbound {
                looked_up: Some(alice.public()),
                ..input()
            },
        ));
        assert_eq!(o.plaintext, b"hello");
        assert!(o.new_session && !o.key_changed);
        assert_eq!(o.record, Some(alice.public()));
    }

    #[test]
    fn a_looked_up_identity_that_is_not_the_key_is_not_the_sender() {
        let alice = Identity::generate();
        let mallory = Identity::generate();
        let (mut bob, _, ct) = first_message(&mallory, b"I am alice");
        let d = open(
            &mut bob,
            Inbound {
                ciphertext: &ct,
                contact: None,
                sessions: Vec::new(),
                looked_up: Some(alice.public()),
            },
        );
        assert!(matches!(d, Decision::NotSendersKey), "{d:?}");
    }

    #[test]
    fn a_known_contact_opens_without_a_lookup() {
        let alice = Identity::generate();
        let (mut bob, _, ct) = first_message(&alice, b"hi");
        let c = contact(alice.public(), None);
        let o = opened(open(
            &mut bob,
            Inbound {
                ciphertext: &ct,
                contact: Some(&c),
                sessions: Vec::new(),
                looked_up: None,
            },
        ));
        assert_eq!(o.plaintext, b"hi");
        assert!(o.new_session && !o.key_changed && o.record.is_none());
    }

    #[test]
    fn a_message_under_the_changed_key_opens_marked() {
        let old = Identity::generate();
        let new = Identity::generate();
        let (mut bob, _, ct) = first_message(&new, b"new phone");
        let c = contact(old.public(), Some(new.public()));
        let o = opened(open(
            &mut bob,
            Inbound {
                ciphertext: &ct,
                contact: Some(&c),
                sessions: Vec::new(),
                looked_up: None,
            },
        ));
        assert_eq!(o.plaintext, b"new phone");
        assert!(o.key_changed);
    }

    #[test]
    fn later_messages_open_with_the_stored_session() {
        let alice = Identity::generate();
        let (mut bob, mut alice_session, ct) = first_message(&alice, b"one");
        let c = contact(alice.public(), None);
        let first = opened(open(
            &mut bob,
            Inbound {
                ciphertext: &ct,
                contact: Some(&c),
                sessions: Vec::new(),
                looked_up: None,
            },
        ));
        // Alice has not heard back: her second message is a pre-key message
        // of the same session, which must not create another one.
        let second = alice_session.encrypt(b"two");
        assert!(second.is_prekey());
        let mut bob_session = first.session;
        let reply = bob_session.encrypt(b"ack");
        let o = opened(open(
            &mut bob,
            Inbound {
                ciphertext: &second,
                contact: Some(&c),
                sessions: vec![bob_session],
                looked_up: None,
            },
        ));
        assert_eq!(o.plaintext, b"two");
        assert!(!o.new_session);
        // Once she hears back, her messages are normal ones.
        alice_session.decrypt(&reply).unwrap();
        let third = alice_session.encrypt(b"three");
        assert!(!third.is_prekey());
        let o = opened(open(
            &mut bob,
            Inbound {
                ciphertext: &third,
                contact: Some(&c),
                sessions: vec![unrelated_session(), o.session],
                looked_up: None,
            },
        ));
        assert_eq!(o.plaintext, b"three");
    }

    #[test]
    fn a_normal_message_no_session_opens_is_undecryptable() {
        let alice = Identity::generate();
        let (mut bob, mut alice_session, ct) = first_message(&alice, b"one");
        let c = contact(alice.public(), None);
        let bob_session = opened(open(
            &mut bob,
            Inbound {
                ciphertext: &ct,
                contact: Some(&c),
                sessions: Vec::new(),
                looked_up: None,
            },
        ))
        .session;
        let reply = {
            let mut s = bob_session;
            s.encrypt(b"ack")
        };
        alice_session.decrypt(&reply).unwrap();
        let normal = alice_session.encrypt(b"two");
        let d = open(
            &mut bob,
            Inbound {
                ciphertext: &normal,
                contact: Some(&c),
                sessions: Vec::new(),
                looked_up: None,
            },
        );
        assert!(matches!(d, Decision::Undecryptable), "{d:?}");
    }
}
