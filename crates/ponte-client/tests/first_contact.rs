//! A profile's first contact with its server uses Noise XX (the server shows
//! its key, the client checks it against the address); every connection
//! after a successful one uses IK. Observed on the wire by a forwarder
//! between client and server that records each connection's preamble
//! (`0x01 ‖ pattern`: 0x01 = XX, 0x02 = IK, see docs/PROTOCOL.md).
#![allow(clippy::unwrap_used)]

mod common;

use common::{preamble_forwarder, start_server, try_register};
use ponte_client::{Client, ClientError};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const XX: [u8; 2] = [0x01, 0x01];
const IK: [u8; 2] = [0x01, 0x02];
/// The preamble's cipher bit (AES-256-GCM), set where the CPU has AES
/// instructions; the pattern is in the low bits.
const AESGCM: u8 = 0x10;

/// The patterns of the recorded preambles, each checked for the cipher
/// this machine prefers.
fn patterns(seen: &Mutex<Vec<[u8; 2]>>) -> Vec<[u8; 2]> {
    let aes = ponte_transport::Cipher::preferred() == ponte_transport::Cipher::AesGcm;
    seen.lock()
        .unwrap()
        .iter()
        .map(|&[v, suite]| {
            assert_eq!(suite & AESGCM != 0, aes, "cipher bit of {suite:#04x}");
            [v, suite & !AESGCM]
        })
        .collect()
}

/// Forwards every connection to `upstream` and records its first two bytes.
async fn recording_forwarder(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<[u8; 2]>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let addr = preamble_forwarder(upstream, move |preamble| {
        record.lock().unwrap().push(preamble);
        true
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn first_contact_is_xx_and_later_connections_are_ik() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let (fwd, seen) = recording_forwarder(server.addr).await;
    let via_fwd = format!("ponte://{fwd}#{}", server.key());

    let dir = tmp.path().join("alice");
    let mut alice = try_register(&dir, &via_fwd, "alice").await.unwrap();
    assert_eq!(patterns(&seen), vec![XX], "registration");
    alice.sync(&mut |_| {}).await.unwrap();
    drop(alice);
    // Reopened from disk: the profile remembers that it reached the server.
    let mut alice = Client::open(&dir, || panic!("no passphrase")).unwrap();
    alice.sync(&mut |_| {}).await.unwrap();
    assert_eq!(patterns(&seen), vec![XX, IK, IK]);
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_key_at_first_contact_names_both_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let real_key = server.key().to_owned();
    let other = ponte_transport::Keypair::generate();
    let wrong_key = ponte_wire::address::encode_key(&other.public());
    let wrong = format!("ponte://{}#{wrong_key}", server.addr);

    let dir = tmp.path().join("bob");
    let err = try_register(&dir, &wrong, "bob").await.unwrap_err();
    let ClientError::ServerKeyMismatch(detail) = &err else {
        panic!("{err}");
    };
    // XX: the server's real key came back authenticated, so the error can
    // say which key the server holds, not only that the handshake failed.
    assert!(detail.contains(&wrong_key), "{detail}");
    assert!(detail.contains(&real_key), "{detail}");
    server.stop().await;
}
