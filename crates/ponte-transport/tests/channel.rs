//! Handshake and framing tests of the Noise channel, over real TCP sockets
//! on 127.0.0.1 and in-memory duplex pipes.
#![allow(clippy::unwrap_used)]

use ponte_transport::{
    accept, connect, Cipher, ClientConfig, Keypair, Pattern, ServerConfig, TransportError,
};
use ponte_wire::messages::{client_frame, ClientFrame, Ping};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pair(
    pattern: Pattern,
) -> (
    ponte_transport::Channel<TcpStream>,
    ponte_transport::Channel<TcpStream>,
) {
    pair_with(pattern, Cipher::preferred()).await
}

async fn pair_with(
    pattern: Pattern,
    cipher: Cipher,
) -> (
    ponte_transport::Channel<TcpStream>,
    ponte_transport::Channel<TcpStream>,
) {
    let server_kp = Keypair::generate();
    let client_kp = Keypair::generate();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scfg = ServerConfig::new(server_kp.clone());
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        accept(sock, &scfg).await
    });
    let mut ccfg = ClientConfig::new(client_kp.clone(), server_kp.public());
    ccfg.pattern = pattern;
    ccfg.cipher = cipher;
    let sock = TcpStream::connect(addr).await.unwrap();
    let client = connect(sock, &ccfg).await.unwrap();
    let server = server.await.unwrap().unwrap();
    assert_eq!((client.cipher(), server.cipher()), (cipher, cipher));
    assert_eq!((client.pattern(), server.pattern()), (pattern, pattern));
    assert_eq!(server.remote_static(), client_kp.public());
    assert_eq!(client.remote_static(), server_kp.public());
    (client, server)
}

#[tokio::test]
async fn ik_and_xx_carry_frames_both_ways_with_either_cipher() {
    let suites = [Pattern::Ik, Pattern::Xx]
        .into_iter()
        .flat_map(|p| [(p, Cipher::ChaChaPoly), (p, Cipher::AesGcm)]);
    for (pattern, cipher) in suites {
        let (mut c, mut s) = pair_with(pattern, cipher).await;
        let ping = ClientFrame {
            request_id: 5,
            body: Some(client_frame::Body::Ping(Ping { nonce: 42 })),
        };
        c.send(&ping).await.unwrap();
        let got: ClientFrame = s.recv().await.unwrap().unwrap();
        assert_eq!(got, ping);
        s.send_frame(b"back").await.unwrap();
        assert_eq!(&c.recv_frame().await.unwrap().unwrap()[..], b"back");
        // A frame larger than one Noise message spans several.
        let big = vec![7u8; 100_000];
        c.send_frame(&big).await.unwrap();
        c.send_frame(b"").await.unwrap();
        assert_eq!(s.recv_frame().await.unwrap().unwrap().len(), 100_000);
        assert_eq!(s.recv_frame().await.unwrap().unwrap().len(), 0);
        // Clean close between frames.
        c.shutdown().await.unwrap();
        drop(c);
        assert!(s.recv_frame().await.unwrap().is_none());
    }
}

/// After a large frame, the receiving side does not keep buffers of its
/// size: an idle connection that once carried a big message stays small.
#[tokio::test]
async fn receive_buffers_shrink_after_a_large_frame() {
    let (mut c, mut s) = pair(Pattern::Ik).await;
    for size in [120_000usize, 20_000] {
        c.send_frame(&vec![9u8; size]).await.unwrap();
        let got = s.recv_frame().await.unwrap().unwrap();
        assert_eq!(got.len(), size);
        drop(got);
        assert!(
            s.recv_buffer_capacity() <= 1024,
            "{} bytes kept after a {size}-byte frame",
            s.recv_buffer_capacity()
        );
    }
    // Small frames afterwards still work, and stay small.
    for i in 0..100u8 {
        c.send_frame(&[i; 100]).await.unwrap();
        assert_eq!(&s.recv_frame().await.unwrap().unwrap()[..], &[i; 100]);
    }
    assert!(s.recv_buffer_capacity() <= 4096);
}

#[tokio::test]
async fn split_halves_work_concurrently() {
    let (c, s) = pair(Pattern::Ik).await;
    let (mut cr, mut cw) = c.split();
    let (mut sr, mut sw) = s.split();
    let echo = tokio::spawn(async move {
        for _ in 0..50 {
            let f = sr.recv_frame().await.unwrap().unwrap();
            sw.send_frame(&f).await.unwrap();
        }
    });
    let writer = tokio::spawn(async move {
        for i in 0..50u32 {
            cw.send_frame(&i.to_be_bytes()).await.unwrap();
        }
    });
    for i in 0..50u32 {
        assert_eq!(
            &cr.recv_frame().await.unwrap().unwrap()[..],
            &i.to_be_bytes()
        );
    }
    writer.await.unwrap();
    echo.await.unwrap();
}

async fn mismatch(pattern: Pattern) -> (TransportError, TransportError) {
    let real = Keypair::generate();
    let expected = Keypair::generate().public();
    let (a, b) = tokio::io::duplex(4096);
    let scfg = ServerConfig::new(real.clone());
    let server = tokio::spawn(async move { accept(a, &scfg).await.map(|_| ()) });
    let mut ccfg = ClientConfig::new(Keypair::generate(), expected);
    ccfg.pattern = pattern;
    let client_err = connect(b, &ccfg).await.unwrap_err();
    let server_err = server.await.unwrap().unwrap_err();
    match &client_err {
        TransportError::ServerKeyMismatch {
            expected: e,
            actual,
        } => {
            assert_eq!(*e, expected);
            if pattern == Pattern::Xx {
                assert_eq!(*actual, Some(real.public()));
            }
        }
        other => panic!("expected ServerKeyMismatch, got {other:?}"),
    }
    (client_err, server_err)
}

#[tokio::test]
async fn wrong_server_key_is_a_typed_error() {
    let (_, server_err) = mismatch(Pattern::Ik).await;
    assert!(matches!(server_err, TransportError::Handshake(_)));
    // With XX the client aborts before message 3: the server sees EOF.
    let (_, server_err) = mismatch(Pattern::Xx).await;
    assert!(matches!(server_err, TransportError::UnexpectedEof));
}

#[tokio::test]
async fn garbage_and_half_handshakes_are_refused() {
    let cfg = ServerConfig::new(Keypair::generate());
    // Wrong version byte.
    let (a, mut b) = tokio::io::duplex(4096);
    b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(matches!(
        accept(a, &cfg).await.unwrap_err(),
        TransportError::UnsupportedVersion(b'G')
    ));
    // Unknown pattern, with either cipher bit.
    for suite in [9, 0x19, 0x10, 0x20, 0x22] {
        let (a, mut b) = tokio::io::duplex(4096);
        b.write_all(&[1, suite]).await.unwrap();
        let err = accept(a, &cfg).await.unwrap_err();
        assert!(
            matches!(err, TransportError::UnknownPattern(s) if s == suite),
            "{suite:#x}: {err:?}"
        );
    }
    // Oversized handshake message length: refused before reading it.
    let (a, mut b) = tokio::io::duplex(4096);
    b.write_all(&[1, 2, 0xff, 0xff]).await.unwrap();
    assert!(matches!(
        accept(a, &cfg).await.unwrap_err(),
        TransportError::HandshakeLength(65535)
    ));
    // Random bytes as IK message 1: handshake error and a `00 00` reject.
    let (a, mut b) = tokio::io::duplex(4096);
    let mut junk = vec![1, 2, 0, 96];
    junk.extend_from_slice(&[0x5a; 96]);
    b.write_all(&junk).await.unwrap();
    assert!(matches!(
        accept(a, &cfg).await.unwrap_err(),
        TransportError::Handshake(_)
    ));
    let mut reply = Vec::new();
    b.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, vec![0, 0]);
    // Half a handshake then EOF.
    let (a, mut b) = tokio::io::duplex(4096);
    b.write_all(&[1, 2, 0, 96, 1, 2, 3]).await.unwrap();
    drop(b);
    assert!(matches!(
        accept(a, &cfg).await.unwrap_err(),
        TransportError::UnexpectedEof
    ));
}

#[tokio::test(start_paused = true)]
async fn silent_peer_times_out() {
    let mut cfg = ServerConfig::new(Keypair::generate());
    cfg.handshake_timeout = Duration::from_secs(5);
    let (a, mut b) = tokio::io::duplex(4096);
    b.write_all(&[1, 2, 0, 96]).await.unwrap();
    let err = accept(a, &cfg).await.unwrap_err();
    assert!(matches!(err, TransportError::HandshakeTimeout));
    drop(b);
    // And a client facing a silent server.
    let (c, _s) = tokio::io::duplex(4096);
    let mut ccfg = ClientConfig::new(Keypair::generate(), [1; 32]);
    ccfg.handshake_timeout = Duration::from_secs(5);
    assert!(matches!(
        connect(c, &ccfg).await.unwrap_err(),
        TransportError::HandshakeTimeout
    ));
}

#[tokio::test]
async fn oversize_frame_is_refused_by_sender_and_receiver() {
    let server_kp = Keypair::generate();
    let (a, b) = tokio::io::duplex(1 << 20);
    let mut scfg = ServerConfig::new(server_kp.clone());
    scfg.max_frame_len = 1000;
    let server = tokio::spawn(async move {
        let mut s = accept(a, &scfg).await.unwrap();
        let first = s.recv_frame().await.unwrap().unwrap();
        assert_eq!(first.len(), 1000);
        s.recv_frame().await.unwrap_err()
    });
    let mut c = connect(
        b,
        &ClientConfig::new(Keypair::generate(), server_kp.public()),
    )
    .await
    .unwrap();
    // The sender refuses to encode a frame over its own cap.
    let too_big = vec![0u8; ponte_transport::MAX_FRAME_LEN + 1];
    assert!(matches!(
        c.send_frame(&too_big).await.unwrap_err(),
        TransportError::Frame(_)
    ));
    // Nor a batch holding one, even after a frame that fills a whole Noise
    // message: nothing of it goes out, and the channel goes on (the
    // server's first frame is the next one, and it opens).
    let (_r, mut c) = c.split();
    assert!(matches!(
        c.send_frames(&[&[2u8; 70_000], &too_big])
            .await
            .unwrap_err(),
        TransportError::Frame(_)
    ));
    c.send_frame(&[1u8; 1000]).await.unwrap();
    c.send_frame(&[1u8; 1001]).await.unwrap();
    let err = server.await.unwrap();
    assert!(matches!(err, TransportError::Frame(_)), "{err:?}");
}

#[tokio::test]
async fn tampered_ciphertext_fails_to_decrypt() {
    let server_kp = Keypair::generate();
    let (a, mut mitm_server_side) = tokio::io::duplex(1 << 16);
    let (mut mitm_client_side, b) = tokio::io::duplex(1 << 16);
    let scfg = ServerConfig::new(server_kp.clone());
    let server = tokio::spawn(async move {
        let mut s = accept(a, &scfg).await.unwrap();
        s.recv_frame().await.unwrap_err()
    });
    // Relay bytes, flipping one bit in the first transport message.
    let relay = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut total = 0usize;
        // Preamble (2) + IK msg1 (2 + 96) arrive first; forward them intact.
        while total < 100 {
            let n = mitm_client_side.read(&mut buf).await.unwrap();
            assert!(n > 0);
            mitm_server_side.write_all(&buf[..n]).await.unwrap();
            total += n;
        }
        // Server's msg2 back to the client.
        let n = mitm_server_side.read(&mut buf).await.unwrap();
        mitm_client_side.write_all(&buf[..n]).await.unwrap();
        // First transport message: corrupt its last byte (the tag).
        let n = mitm_client_side.read(&mut buf).await.unwrap();
        buf[n - 1] ^= 1;
        mitm_server_side.write_all(&buf[..n]).await.unwrap();
        (mitm_client_side, mitm_server_side)
    });
    let mut c = connect(
        b,
        &ClientConfig::new(Keypair::generate(), server_kp.public()),
    )
    .await
    .unwrap();
    c.send_frame(b"hello").await.unwrap();
    let err = server.await.unwrap();
    assert!(matches!(err, TransportError::Decrypt), "{err:?}");
    drop(relay.await.unwrap());
}

#[tokio::test]
async fn keypair_round_trips_and_hides_secret() {
    let kp = Keypair::generate();
    let again = Keypair::from_secret(*kp.secret());
    assert_eq!(kp.public(), again.public());
    let dbg = format!("{kp:?}");
    assert!(dbg.contains("<hidden>"));
}

#[tokio::test]
async fn connect_tcp_uses_the_server_address() {
    let server_kp = Keypair::generate();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let scfg = ServerConfig::new(server_kp.clone());
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut ch = accept(sock, &scfg).await.unwrap();
        let f = ch.recv_frame().await.unwrap().unwrap();
        ch.send_frame(&f).await.unwrap();
    });
    let text = format!(
        "ponte://127.0.0.1:{port}#{}",
        ponte_wire::address::encode_key(&server_kp.public())
    );
    let addr: ponte_wire::address::ServerAddress = text.parse().unwrap();
    let mut ch = ponte_transport::connect_tcp(&addr, Keypair::generate())
        .await
        .unwrap();
    ch.send_frame(b"echo").await.unwrap();
    assert_eq!(&ch.recv_frame().await.unwrap().unwrap()[..], b"echo");
    server.await.unwrap();
}

/// A client that reaches some other service (a web server, a TLS port)
/// says so, instead of "bad handshake message length 18516" ("HT").
#[tokio::test]
async fn another_protocol_answering_is_named() {
    for (answer, want) in [
        (&b"HTTP/1.1 400 Bad Request\r\n\r\n"[..], "HTTP server"),
        (&[0x16, 0x03, 0x03, 0x00, 0x31, 0x02][..], "TLS"),
        (&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28][..], "TLS"),
        (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], "text"),
    ] {
        let (c, mut s) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut first = [0u8; 2];
            s.read_exact(&mut first).await.unwrap();
            s.write_all(answer).await.unwrap();
            s
        });
        let ccfg = ClientConfig::new(Keypair::generate(), [1; 32]);
        let err = connect(c, &ccfg).await.unwrap_err();
        assert!(matches!(err, TransportError::NotPonte(_)), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
        drop(server.await.unwrap());
    }
}

/// A relay that rewrites the preamble's cipher (to push both ends onto the
/// other cipher, or the older one) breaks the handshake: the preamble is
/// in the prologue, so the two sides' transcripts differ.
#[tokio::test]
async fn a_rewritten_cipher_byte_fails_the_handshake() {
    for (cipher, forged) in [(Cipher::AesGcm, 0x02u8), (Cipher::ChaChaPoly, 0x12)] {
        let server_kp = Keypair::generate();
        let (a, mut mitm_server_side) = tokio::io::duplex(1 << 16);
        let (mut mitm_client_side, b) = tokio::io::duplex(1 << 16);
        let scfg = ServerConfig::new(server_kp.clone());
        let server = tokio::spawn(async move { accept(a, &scfg).await.map(|_| ()) });
        let relay = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut back = vec![0u8; 4096];
            let mut first = true;
            loop {
                tokio::select! {
                    n = mitm_client_side.read(&mut buf) => {
                        let n = n.unwrap_or(0);
                        if n == 0 { break; }
                        if first {
                            buf[1] = forged;
                            first = false;
                        }
                        if mitm_server_side.write_all(&buf[..n]).await.is_err() { break; }
                    }
                    n = mitm_server_side.read(&mut back) => {
                        let n = n.unwrap_or(0);
                        if n == 0 { break; }
                        if mitm_client_side.write_all(&back[..n]).await.is_err() { break; }
                    }
                }
            }
        });
        let mut ccfg = ClientConfig::new(Keypair::generate(), server_kp.public());
        ccfg.cipher = cipher;
        let client = connect(b, &ccfg).await;
        let server_err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(server_err, TransportError::Handshake(_)),
            "{cipher:?}: {server_err:?}"
        );
        assert!(client.is_err(), "{cipher:?}: the client connected");
        relay.abort();
    }
}

/// The preferred cipher is AES-256-GCM exactly where the CPU has AES and
/// carry-less multiply instructions.
#[test]
fn preferred_cipher_follows_the_cpu() {
    #[cfg(target_arch = "x86_64")]
    let hw = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let hw = std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let hw = false;
    let want = if hw {
        Cipher::AesGcm
    } else {
        Cipher::ChaChaPoly
    };
    assert_eq!(Cipher::preferred(), want);
    assert_eq!(ClientConfig::new(Keypair::generate(), [0; 32]).cipher, want);
}
