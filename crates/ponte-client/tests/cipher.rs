//! The Noise channel's cipher against a real `ponte-server` on 127.0.0.1
//! (in process): a client with AES instructions talks AES-256-GCM to it,
//! and still reaches a server from before the cipher choice (which closes
//! on a preamble it does not know) with ChaCha20-Poly1305.
#![allow(clippy::unwrap_used)]

mod common;

use common::{direct, preamble_forwarder, start_server};
use ponte_client::connection::Connection;
use ponte_transport::{Cipher, Keypair};
use ponte_wire::messages::{client_frame, server_frame, Ping};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A front for `target` that behaves like a server from before the cipher
/// choice: it closes a connection whose preamble has the AES-GCM bit
/// (counting it in `refused`) and forwards the others.
async fn old_server_front(target: SocketAddr, refused: Arc<AtomicUsize>) -> SocketAddr {
    preamble_forwarder(target, move |[_, suite]| {
        let aes = suite & 0x10 != 0;
        if aes {
            refused.fetch_add(1, Ordering::SeqCst);
        }
        !aes
    })
    .await
}

async fn ping(conn: &mut Connection) {
    let answer = conn
        .request(
            client_frame::Body::Ping(Ping { nonce: 7 }),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        matches!(answer, server_frame::Body::Pong(ref p) if p.nonce == 7),
        "{answer:?}"
    );
}

#[tokio::test]
async fn the_preferred_cipher_and_the_fallback_for_an_older_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let key = server.server_address().key;
    let timeout = Duration::from_secs(10);

    // Straight to the server: the preferred cipher, one connection.
    let mut conn = Connection::open(&direct(server.addr), key, Keypair::generate(), timeout)
        .await
        .unwrap();
    assert_eq!(conn.cipher(), Cipher::preferred());
    ping(&mut conn).await;

    // Through a front that refuses the AES-GCM preamble as an older
    // server does: the client tries once with it, then ChaCha20-Poly1305.
    let refused = Arc::new(AtomicUsize::new(0));
    let front = old_server_front(server.addr, Arc::clone(&refused)).await;
    let mut conn = Connection::open(&direct(front), key, Keypair::generate(), timeout)
        .await
        .unwrap();
    assert_eq!(conn.cipher(), Cipher::ChaChaPoly);
    ping(&mut conn).await;
    let aes = usize::from(Cipher::preferred() == Cipher::AesGcm);
    assert_eq!(refused.load(Ordering::SeqCst), aes);
    drop(conn);
    server.stop().await;
}
