//! Service behaviour over real sockets and real SQLite files: accounts,
//! keys, store-and-forward delivery, receipts, dedup, restart, expiry.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use ponte_wire::messages::{self, client_frame, server_frame, ErrorCode};
use std::time::Duration;

fn id(n: u8) -> [u8; 16] {
    [n; 16]
}

#[tokio::test]
async fn register_login_and_account_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;

    let alice_dev = Device::new();
    let mut alice = Client::connect(&server, &alice_dev).await;
    // Before registering: login fails, other requests need login, ping works.
    assert_eq!(error_code(&alice.login().await), ErrorCode::NotRegistered);
    let r = alice
        .request(client_frame::Body::LookupIdentity(
            messages::LookupIdentity {
                handle: "bob".into(),
            },
        ))
        .await;
    assert_eq!(error_code(&r), ErrorCode::NotAuthenticated);
    let r = alice
        .request(client_frame::Body::Ping(messages::Ping { nonce: 77 }))
        .await;
    assert!(matches!(r, server_frame::Body::Pong(p) if p.nonce == 77));
    // Invalid handles.
    for bad in ["ab", "Alice", "al ice", "a-b-c", &"x".repeat(33)] {
        assert_eq!(
            error_code(&alice.register(bad).await),
            ErrorCode::InvalidHandle,
            "{bad}"
        );
    }
    // A registration signed for another Noise key is refused.
    let other = Device::new();
    let mut forged = other.clone();
    forged.noise = alice_dev.noise.clone();
    let body = other.register_frame("alice", "");
    let _ = forged;
    assert_eq!(
        error_code(&alice.request(body).await),
        ErrorCode::BadSignature
    );
    // First come, first served.
    assert!(matches!(
        alice.register("alice").await,
        server_frame::Body::Registered(r) if r.handle == "alice"
    ));
    assert_eq!(
        error_code(&alice.register("alice2").await),
        ErrorCode::AlreadyRegistered
    );
    let mut mallory = Client::connect(&server, &Device::new()).await;
    assert_eq!(
        error_code(&mallory.register("alice").await),
        ErrorCode::HandleTaken
    );
    // The same device on a new connection: login works, registering again does not.
    let mut again = Client::connect(&server, &alice_dev).await;
    assert_eq!(
        error_code(&again.register("alice_two").await),
        ErrorCode::AlreadyRegistered
    );
    assert!(matches!(
        again.login().await,
        server_frame::Body::LoggedIn(l) if l.handle == "alice"
    ));
    // The older connection was replaced.
    let close = alice
        .push_where(|b| matches!(b, server_frame::Body::Close(_)))
        .await;
    assert!(matches!(
        close,
        server_frame::Body::Close(c) if c.reason == messages::CloseReason::Replaced as i32
    ));
    // Lookup of identity keys.
    let r = again
        .request(client_frame::Body::LookupIdentity(
            messages::LookupIdentity {
                handle: "alice".into(),
            },
        ))
        .await;
    let server_frame::Body::IdentityKeys(ik) = r else {
        panic!("{r:?}")
    };
    assert_eq!(&ik.keys.unwrap().ed25519[..], &alice_dev.ed());
    assert_eq!(&ik.noise_static_key[..], &alice_dev.noise.public());
    let r = again
        .request(client_frame::Body::LookupIdentity(
            messages::LookupIdentity {
                handle: "nobody".into(),
            },
        ))
        .await;
    assert_eq!(error_code(&r), ErrorCode::UnknownHandle);
    server.stop().await;
}

#[tokio::test]
async fn invite_only_and_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        c.invite_only = true;
        c.register_limit = ponte_server::RateLimit {
            burst: 4,
            per_hour: 0,
        };
    })
    .await;
    let dev = Device::new();
    let mut c = Client::connect(&server, &dev).await;
    assert_eq!(
        error_code(&c.register("carol").await),
        ErrorCode::InviteRequired
    );
    let body = dev.register_frame("carol", "not-a-token");
    assert_eq!(error_code(&c.request(body).await), ErrorCode::InviteInvalid);
    // An invite made by the CLI path while the server runs.
    let token = ponte_server::create_invite(dir.path()).unwrap();
    // 128 bits as hex: never starts with `-`, so a command line takes it as a value.
    assert_eq!(token.len(), 32, "{token}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{token}"
    );
    let body = dev.register_frame("carol", &token);
    assert!(matches!(
        c.request(body).await,
        server_frame::Body::Registered(_)
    ));
    // One use only.
    let dev2 = Device::new();
    let mut c2 = Client::connect(&server, &dev2).await;
    let body = dev2.register_frame("dave", &token);
    assert_eq!(
        error_code(&c2.request(body).await),
        ErrorCode::InviteInvalid
    );
    // Four attempts reached the store from 127.0.0.1; the fifth is limited.
    let body = dev2.register_frame("dave", "x");
    assert_eq!(error_code(&c2.request(body).await), ErrorCode::RateLimited);
    server.stop().await;
}

/// A newcomer who mistyped their invite until the address's registration
/// tokens ran out still gets in with the right one; the failures keep
/// costing (and telling nothing) once the tokens are gone, and an invite
/// works once.
#[tokio::test]
async fn a_valid_invite_is_accepted_after_failed_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        c.invite_only = true;
        c.register_limit = ponte_server::RateLimit {
            burst: 3,
            per_hour: 0,
        };
    })
    .await;
    let dev = Device::new();
    let mut c = Client::connect(&server, &dev).await;
    for typo in ["0123", "01234", "012345"] {
        let body = dev.register_frame("carol", typo);
        assert_eq!(error_code(&c.request(body).await), ErrorCode::InviteInvalid);
    }
    // No token left: a wrong invite, or none, is refused as rate-limited.
    let body = dev.register_frame("carol", "0123456");
    let r = c.request(body).await;
    assert_eq!(error_code(&r), ErrorCode::RateLimited);
    let server_frame::Body::Error(e) = r else {
        panic!("expected an error, got {r:?}")
    };
    assert!(e.detail.contains("an unused invite"), "{}", e.detail);
    assert_eq!(
        error_code(&c.register("carol").await),
        ErrorCode::RateLimited
    );
    // The right invite gets through all the same.
    let token = ponte_server::create_invite(dir.path()).unwrap();
    let body = dev.register_frame("carol", &token);
    assert!(matches!(
        c.request(body).await,
        server_frame::Body::Registered(_)
    ));
    // Used once: a second device with it is refused, still as rate-limited.
    let dev2 = Device::new();
    let mut c2 = Client::connect(&server, &dev2).await;
    let body = dev2.register_frame("dave", &token);
    assert_eq!(error_code(&c2.request(body).await), ErrorCode::RateLimited);
    // A good invite for a taken handle tells nothing either, and is not
    // used up by the failure.
    let token2 = ponte_server::create_invite(dir.path()).unwrap();
    let body = dev2.register_frame("carol", &token2);
    assert_eq!(error_code(&c2.request(body).await), ErrorCode::RateLimited);
    let body = dev2.register_frame("dave", &token2);
    assert!(matches!(
        c2.request(body).await,
        server_frame::Body::Registered(_)
    ));
    server.stop().await;
}

/// A malformed registration names the field that is wrong, apart: an
/// overlong invite is what a user pasted, a bad signature their software.
#[tokio::test]
async fn a_malformed_registration_names_the_wrong_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| c.invite_only = true).await;
    let dev = Device::new();
    let mut c = Client::connect(&server, &dev).await;
    let detail = |r: server_frame::Body| match r {
        server_frame::Body::Error(e) => {
            assert_eq!(ErrorCode::try_from(e.code), Ok(ErrorCode::InvalidArgument));
            e.detail
        }
        other => panic!("expected an error, got {other:?}"),
    };
    let long = "ab".repeat(100);
    let d = detail(c.request(dev.register_frame("carol", &long)).await);
    assert!(d.starts_with("invite too long"), "{d}");
    assert!(!d.contains("signature"), "{d}");
    let client_frame::Body::Register(mut r) = dev.register_frame("carol", "") else {
        unreachable!("register_frame builds a Register")
    };
    r.signature = Bytes::from_static(b"short");
    let d = detail(c.request(client_frame::Body::Register(r)).await);
    assert!(d.contains("signature") && !d.contains("invite"), "{d}");
    server.stop().await;
}

#[tokio::test]
async fn keys_upload_claim_and_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| c.one_time_key_low_water = 2).await;
    let mut bob = registered(&server, "bob").await;
    let mut alice = registered(&server, "alice").await;
    // No keys yet.
    let claim = |h: &str| client_frame::Body::ClaimKey(messages::ClaimKey { handle: h.into() });
    assert_eq!(
        error_code(&alice.request(claim("bob")).await),
        ErrorCode::NoKeys
    );
    assert_eq!(
        error_code(&alice.request(claim("nobody")).await),
        ErrorCode::UnknownHandle
    );
    // A key signed by someone else is refused.
    let stranger = Device::new();
    let r = bob
        .request(client_frame::Body::UploadKeys(messages::UploadKeys {
            one_time_keys: vec![stranger.signed_key(9, false)],
            fallback_key: None,
        }))
        .await;
    assert_eq!(error_code(&r), ErrorCode::BadSignature);
    // A one-time key signed as a fallback key is refused too.
    let r = bob
        .request(client_frame::Body::UploadKeys(messages::UploadKeys {
            one_time_keys: vec![bob.device.signed_key(9, true)],
            fallback_key: None,
        }))
        .await;
    assert_eq!(error_code(&r), ErrorCode::BadSignature);
    let upload = messages::UploadKeys {
        one_time_keys: (1..=3).map(|i| bob.device.signed_key(i, false)).collect(),
        fallback_key: Some(bob.device.signed_key(100, true)),
    };
    let r = bob.request(client_frame::Body::UploadKeys(upload)).await;
    assert!(matches!(
        r,
        server_frame::Body::KeysUploaded(k) if k.one_time_keys == 3 && k.has_fallback_key
    ));
    // Claims hand out one-time keys in order, each once, then the fallback.
    for expect in 1..=3u32 {
        let r = alice.request(claim("bob")).await;
        let server_frame::Body::ClaimedKey(k) = r else {
            panic!("{r:?}")
        };
        assert!(!k.fallback);
        assert_eq!(&k.key.as_ref().unwrap().key_id[..], &expect.to_be_bytes());
        assert_eq!(&k.identity.unwrap().ed25519[..], &bob.device.ed());
        // The signature handed out verifies against bob's key.
        let key = k.key.unwrap();
        let s = messages::key_signing_string(&key.key_id, &key.public_key, false);
        let sig = ed25519_dalek::Signature::from_slice(&key.signature).unwrap();
        bob.device
            .signing
            .verifying_key()
            .verify_strict(s.as_bytes(), &sig)
            .unwrap();
    }
    for _ in 0..2 {
        let r = alice.request(claim("bob")).await;
        assert!(matches!(
            r,
            server_frame::Body::ClaimedKey(k) if k.fallback
                && k.key.as_ref().unwrap().key_id[..] == 100u32.to_be_bytes()
        ));
    }
    // Bob was told his count went low (below 2), down to 0.
    let kc = bob
        .push_where(|b| matches!(b, server_frame::Body::KeyCount(k) if k.one_time_keys < 2))
        .await;
    assert!(matches!(kc, server_frame::Body::KeyCount(k) if k.low_water_mark == 2));
    // Login reports counts.
    let mut bob2 = Client::connect(&server, &bob.device).await;
    assert!(matches!(
        bob2.login().await,
        server_frame::Body::LoggedIn(l) if l.one_time_keys == 0 && l.has_fallback_key
    ));
    // Too many keys stored: refused, nothing stored.
    let many = messages::UploadKeys {
        one_time_keys: (1..=100)
            .map(|i| bob.device.signed_key(1000 + i, false))
            .collect(),
        fallback_key: None,
    };
    let r = bob2
        .request(client_frame::Body::UploadKeys(many.clone()))
        .await;
    assert!(matches!(r, server_frame::Body::KeysUploaded(k) if k.one_time_keys == 100));
    let more = messages::UploadKeys {
        one_time_keys: (1..=100)
            .map(|i| bob.device.signed_key(2000 + i, false))
            .collect(),
        fallback_key: None,
    };
    let r = bob2
        .request(client_frame::Body::UploadKeys(more.clone()))
        .await;
    assert!(matches!(r, server_frame::Body::KeysUploaded(k) if k.one_time_keys == 200));
    let extra = messages::UploadKeys {
        one_time_keys: vec![bob.device.signed_key(5000, false)],
        fallback_key: None,
    };
    let r = bob2.request(client_frame::Body::UploadKeys(extra)).await;
    assert_eq!(error_code(&r), ErrorCode::LimitExceeded);
    server.stop().await;
}

#[tokio::test]
async fn offline_delivery_ack_and_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let bob_dev = Device::new();
    {
        let mut bob = Client::connect(&server, &bob_dev).await;
        assert!(matches!(
            bob.register("bob").await,
            server_frame::Body::Registered(_)
        ));
    }
    let mut alice = registered(&server, "alice").await;
    // Bob is offline: the message is acknowledged as durable.
    let r = alice.send_msg("bob", id(1), b"ciphertext-1").await;
    assert!(matches!(
        r,
        server_frame::Body::SendAck(a) if a.message_id[..] == id(1) && !a.duplicate
    ));
    // Unknown recipient: a clear error naming the message.
    let r = alice.send_msg("nobody", id(2), b"x").await;
    let server_frame::Body::Error(e) = &r else {
        panic!("{r:?}")
    };
    assert_eq!(e.code, ErrorCode::UnknownRecipient as i32);
    assert_eq!(&e.message_id[..], &id(2));
    // Bob logs in and receives it.
    let mut bob = Client::connect(&server, &bob_dev).await;
    assert!(matches!(bob.login().await, server_frame::Body::LoggedIn(l) if l.pending == 1));
    let d = bob.next_deliver().await;
    assert_eq!(&d.message_id[..], &id(1));
    assert_eq!(d.sender, "alice");
    assert_eq!(&d.body[..], b"ciphertext-1");
    // Not acked yet: a new connection gets it again (at-least-once).
    let mut bob_again = Client::connect(&server, &bob_dev).await;
    assert!(matches!(
        bob_again.login().await,
        server_frame::Body::LoggedIn(_)
    ));
    let d2 = bob_again.next_deliver().await;
    assert_eq!(d2.seq, d.seq);
    bob_again.ack(vec![d2.seq]).await;
    // Alice (online) gets the delivery receipt.
    let rc = alice.next_receipt().await;
    assert_eq!(&rc.message_id[..], &id(1));
    assert_eq!(rc.recipient, "bob");
    alice.ack(vec![rc.seq]).await;

    // Live delivery while both are online, and a receipt stored for an
    // offline sender.
    let r = alice.send_msg("bob", id(3), b"ciphertext-3").await;
    assert!(matches!(r, server_frame::Body::SendAck(_)));
    let d3 = bob_again.next_deliver().await;
    assert_eq!(&d3.message_id[..], &id(3));
    let alice_dev = alice.device.clone();
    drop(alice);
    bob_again.ack(vec![d3.seq]).await;
    // Make sure the ack has been processed: a round trip after it.
    let r = bob_again
        .request(client_frame::Body::Ping(messages::Ping { nonce: 1 }))
        .await;
    assert!(matches!(r, server_frame::Body::Pong(_)));
    let mut alice = Client::connect(&server, &alice_dev).await;
    assert!(matches!(
        alice.login().await,
        server_frame::Body::LoggedIn(_)
    ));
    let rc = alice.next_receipt().await;
    assert_eq!(&rc.message_id[..], &id(3));
    alice.ack(vec![rc.seq]).await;
    let r = alice
        .request(client_frame::Body::Ping(messages::Ping { nonce: 2 }))
        .await;
    assert!(matches!(r, server_frame::Body::Pong(_)));
    // Everything acknowledged: nothing pending for either.
    let mut alice3 = Client::connect(&server, &alice_dev).await;
    assert!(matches!(alice3.login().await, server_frame::Body::LoggedIn(l) if l.pending == 0));
    let mut bob3 = Client::connect(&server, &bob_dev).await;
    assert!(matches!(bob3.login().await, server_frame::Body::LoggedIn(l) if l.pending == 0));
    server.stop().await;
}

#[tokio::test]
async fn duplicate_message_id_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let bob_dev = Device::new();
    {
        let mut bob = Client::connect(&server, &bob_dev).await;
        bob.register("bob").await;
    }
    let mut alice = registered(&server, "alice").await;
    let first = alice.send_msg("bob", id(7), b"once").await;
    let second = alice.send_msg("bob", id(7), b"once").await;
    let (server_frame::Body::SendAck(a1), server_frame::Body::SendAck(a2)) = (first, second) else {
        panic!("expected two acks")
    };
    assert!(!a1.duplicate);
    assert!(a2.duplicate);
    assert_eq!(a1.accepted_at_ms, a2.accepted_at_ms);
    // Another sender may use the same id: ids are scoped per sender.
    let mut carol = registered(&server, "carol").await;
    let r = carol.send_msg("bob", id(7), b"carol's").await;
    assert!(matches!(r, server_frame::Body::SendAck(a) if !a.duplicate));
    let mut bob = Client::connect(&server, &bob_dev).await;
    assert!(matches!(bob.login().await, server_frame::Body::LoggedIn(l) if l.pending == 2));
    let d = bob.next_deliver().await;
    assert_eq!(d.sender, "alice");
    bob.ack(vec![d.seq]).await;
    let d = bob.next_deliver().await;
    assert_eq!(d.sender, "carol");
    // A resend after delivery is still recognised.
    let r = alice.send_msg("bob", id(7), b"once").await;
    assert!(matches!(r, server_frame::Body::SendAck(a) if a.duplicate));
    server.stop().await;
}

#[tokio::test]
async fn message_survives_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let key = server.key;
    let bob_dev = Device::new();
    {
        let mut bob = Client::connect(&server, &bob_dev).await;
        bob.register("bob").await;
    }
    let mut alice = registered(&server, "alice").await;
    let r = alice.send_msg("bob", id(9), b"persist me").await;
    assert!(matches!(r, server_frame::Body::SendAck(_)));
    drop(alice);
    server.stop().await;

    let server = TestServer::start(dir.path(), |_| {}).await;
    assert_eq!(server.key, key, "the key is kept in the data directory");
    let mut bob = Client::connect(&server, &bob_dev).await;
    assert!(matches!(bob.login().await, server_frame::Body::LoggedIn(_)));
    let d = bob.next_deliver().await;
    assert_eq!(&d.body[..], b"persist me");
    server.stop().await;
}

#[tokio::test]
async fn undelivered_message_expires_with_notice() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        c.retention = Duration::from_millis(1);
        c.expiry_interval = Duration::from_millis(20);
    })
    .await;
    let bob_dev = Device::new();
    {
        let mut bob = Client::connect(&server, &bob_dev).await;
        bob.register("bob").await;
    }
    let mut alice = registered(&server, "alice").await;
    let r = alice.send_msg("bob", id(4), b"too late").await;
    assert!(matches!(r, server_frame::Body::SendAck(_)));
    let n = alice
        .push_where(|b| matches!(b, server_frame::Body::ExpiredNotice(_)))
        .await;
    let server_frame::Body::ExpiredNotice(n) = n else {
        unreachable!()
    };
    assert_eq!(&n.message_id[..], &id(4));
    assert_eq!(n.recipient, "bob");
    alice.ack(vec![n.seq]).await;
    let mut bob = Client::connect(&server, &bob_dev).await;
    assert!(matches!(bob.login().await, server_frame::Body::LoggedIn(l) if l.pending == 0));
    server.stop().await;
}

#[tokio::test]
async fn limits_on_sends() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        c.max_pending_per_mailbox = 2;
        c.max_body_len = 1000;
    })
    .await;
    registered(&server, "bob").await;
    let mut alice = registered(&server, "alice").await;
    let r = alice.send_msg("bob", id(1), &[0u8; 1001]).await;
    assert_eq!(error_code(&r), ErrorCode::TooLarge);
    let r = alice
        .request(client_frame::Body::Send(messages::SendMessage {
            message_id: Bytes::from_static(b"short"),
            recipient: "bob".into(),
            body: Bytes::new(),
        }))
        .await;
    assert_eq!(error_code(&r), ErrorCode::InvalidArgument);
    // An empty body is refused, not stored.
    let r = alice.send_msg("bob", id(1), b"").await;
    assert_eq!(error_code(&r), ErrorCode::InvalidArgument);
    assert!(matches!(
        alice.send_msg("bob", id(1), b"1").await,
        server_frame::Body::SendAck(_)
    ));
    assert!(matches!(
        alice.send_msg("bob", id(2), b"2").await,
        server_frame::Body::SendAck(_)
    ));
    let r = alice.send_msg("bob", id(3), b"3").await;
    assert_eq!(error_code(&r), ErrorCode::MailboxFull);
    server.stop().await;
}

#[tokio::test]
async fn many_pipelined_sends_are_all_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let mut bob = registered(&server, "bob").await;
    let mut alice = registered(&server, "alice").await;
    const N: u16 = 300;
    for i in 0..N {
        let mut mid = [0u8; 16];
        mid[..2].copy_from_slice(&i.to_be_bytes());
        alice
            .fire(client_frame::Body::Send(messages::SendMessage {
                message_id: Bytes::copy_from_slice(&mid),
                recipient: "bob".into(),
                body: Bytes::copy_from_slice(&i.to_be_bytes()),
            }))
            .await;
    }
    let mut acks = 0;
    while acks < N {
        let f = alice.recv().await.unwrap();
        if matches!(f.body, Some(server_frame::Body::SendAck(_))) {
            acks += 1;
        }
    }
    for i in 0..N {
        let d = bob.next_deliver().await;
        assert_eq!(&d.body[..], &i.to_be_bytes(), "in order");
        bob.ack(vec![d.seq]).await;
    }
    server.stop().await;
}
