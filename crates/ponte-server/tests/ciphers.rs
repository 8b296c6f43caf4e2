//! The Noise channel's two ciphers against a real server on 127.0.0.1:
//! both serve requests, and `/metrics` counts the handshakes by cipher.
#![allow(clippy::unwrap_used)]

mod common;

use common::{http_get, TestServer};
use ponte_transport::{connect, Cipher, ClientConfig, Keypair};
use ponte_wire::messages::{client_frame, server_frame, ClientFrame, Ping, ServerFrame};
use tokio::net::TcpStream;

#[tokio::test]
async fn both_ciphers_are_served_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_admin(dir.path(), |_| {}, true).await;
    for (n, cipher) in [Cipher::AesGcm, Cipher::ChaChaPoly, Cipher::ChaChaPoly]
        .into_iter()
        .enumerate()
    {
        let sock = TcpStream::connect(server.addr).await.unwrap();
        let mut cfg = ClientConfig::new(Keypair::generate(), server.key);
        cfg.cipher = cipher;
        let mut ch = connect(sock, &cfg).await.unwrap();
        assert_eq!(ch.cipher(), cipher);
        let nonce = n as u64 + 1;
        ch.send(&ClientFrame {
            request_id: 1,
            body: Some(client_frame::Body::Ping(Ping { nonce })),
        })
        .await
        .unwrap();
        let answer: ServerFrame = ch.recv().await.unwrap().unwrap();
        assert!(
            matches!(answer.body, Some(server_frame::Body::Pong(ref p)) if p.nonce == nonce),
            "{cipher:?}: {answer:?}"
        );
    }
    let text = http_get(server.admin.unwrap(), "/metrics").await;
    for line in [
        "ponte_server_handshakes_total{cipher=\"aes256gcm\"} 1",
        "ponte_server_handshakes_total{cipher=\"chacha20poly1305\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    server.stop().await;
}
