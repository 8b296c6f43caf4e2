//! Bad input and load the server must survive: malformed and oversize
//! frames, garbage, half handshakes, idle connections by the thousand, wrong
//! server keys, PROXY headers. After each, other clients are still served.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ponte_transport::{connect, ClientConfig, Keypair, Pattern, TransportError};
use ponte_wire::messages::{self, client_frame, server_frame, CloseReason, ErrorCode};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF or error; true if the server closed the connection.
async fn closed_by_server(sock: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        match tokio::time::timeout(WAIT, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

async fn expect_close(c: &mut Client, reason: CloseReason) {
    let f = c.recv().await.expect("a Close frame before EOF");
    match f.body {
        Some(server_frame::Body::Close(cl)) => assert_eq!(cl.reason, reason as i32),
        other => panic!("expected Close, got {other:?}"),
    }
    assert!(c.recv().await.is_none(), "EOF after Close");
}

async fn still_serves(server: &TestServer) {
    let mut c = Client::connect(server, &Device::new()).await;
    let r = c
        .request(client_frame::Body::Ping(messages::Ping { nonce: 5 }))
        .await;
    assert!(matches!(r, server_frame::Body::Pong(p) if p.nonce == 5));
}

#[tokio::test]
async fn malformed_and_oversize_frames_close_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    // Not protobuf at all.
    let mut c = Client::connect(&server, &Device::new()).await;
    c.ch.send_frame(&[0xff, 0xff, 0xff, 0xff, 0x0f])
        .await
        .unwrap();
    expect_close(&mut c, CloseReason::MalformedFrame).await;
    // Valid protobuf, no known body: an error, and the connection stays.
    let mut c = Client::connect(&server, &Device::new()).await;
    c.ch.send(&messages::ClientFrame {
        request_id: 42,
        body: None,
    })
    .await
    .unwrap();
    let f = c.recv().await.unwrap();
    assert_eq!(f.request_id, 42);
    assert_eq!(error_code(&f.body.unwrap()), ErrorCode::Unsupported);
    // A frame over the server's cap (the client allows itself more).
    let sock = TcpStream::connect(server.addr).await.unwrap();
    let mut cfg = ClientConfig::new(Keypair::generate(), server.key);
    cfg.max_frame_len = 1 << 20;
    let mut ch = connect(sock, &cfg).await.unwrap();
    ch.send_frame(&vec![0u8; 200_000]).await.unwrap();
    let f: messages::ServerFrame = tokio::time::timeout(WAIT, ch.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        f.body,
        Some(server_frame::Body::Close(c)) if c.reason == CloseReason::FrameTooLarge as i32
    ));
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn garbage_and_half_handshakes_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        c.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let probes: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        vec![1, 2, 0, 96, 1, 2, 3, 4], // half an IK message
        vec![1, 2, 0xff, 0xff],        // oversize handshake length
        vec![1, 2, 0, 96].into_iter().chain([0x42; 96]).collect(), // undecryptable
        b"PROXY TCP4 garbage\r\n".to_vec(),
        vec![], // silent
    ];
    for p in &probes {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(p).await.unwrap();
        assert!(closed_by_server(&mut s).await, "probe {p:?} not closed");
    }
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_sessions_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        c.unauthenticated_timeout = Duration::from_millis(200);
    })
    .await;
    let mut c = Client::connect(&server, &Device::new()).await;
    expect_close(&mut c, CloseReason::UnauthenticatedTimeout).await;
    server.stop().await;
}

#[tokio::test]
async fn thousands_of_idle_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    const IDLE: usize = 2000;
    let server = TestServer::start_with_admin(
        dir.path(),
        |c| {
            c.max_connections = IDLE + 2;
            c.handshake_timeout = Duration::from_secs(120);
        },
        true,
    )
    .await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Registered users still talk while the idle ones sit there.
    let mut bob = registered(&server, "bob").await;
    let mut alice = registered(&server, "alice").await;
    let r = alice.send_msg("bob", [1; 16], b"hi").await;
    assert!(matches!(r, server_frame::Body::SendAck(_)));
    let d = bob.next_deliver().await;
    assert_eq!(&d.body[..], b"hi");
    // Beyond the cap, connections are closed at once.
    let mut refused = 0;
    let mut extra = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            refused += 1;
        }
        extra.push(s);
    }
    assert!(
        refused >= 18,
        "only {refused} of 20 over-cap connections refused"
    );
    let metrics = http_get(server.admin.unwrap(), "/metrics").await;
    assert!(metrics.contains("ponte_server_connections_closed_total{reason=\"overloaded\"}"));
    drop(idle);
    drop(extra);
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_server_key_is_refused_by_the_transport() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let expected = Keypair::generate().public();
    for pattern in [Pattern::Ik, Pattern::Xx] {
        let sock = TcpStream::connect(server.addr).await.unwrap();
        let mut cfg = ClientConfig::new(Keypair::generate(), expected);
        cfg.pattern = pattern;
        match connect(sock, &cfg).await {
            Err(TransportError::ServerKeyMismatch {
                expected: e,
                actual,
            }) => {
                assert_eq!(e, expected);
                if pattern == Pattern::Xx {
                    assert_eq!(actual, Some(server.key));
                }
            }
            other => panic!("{pattern:?}: expected ServerKeyMismatch, got {other:?}"),
        }
    }
    // XX with the right key works too.
    let sock = TcpStream::connect(server.addr).await.unwrap();
    let mut cfg = ClientConfig::new(Keypair::generate(), server.key);
    cfg.pattern = Pattern::Xx;
    assert!(connect(sock, &cfg).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn proxy_header_before_noise_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    for header in [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 5222\r\n".to_vec(),
        {
            let mut v = Vec::new();
            ponte_wire::proxy_header::encode_v2(
                "[2001:db8::7]:40000".parse().unwrap(),
                "[2001:db8::1]:5222".parse().unwrap(),
                &mut v,
            );
            v
        },
    ] {
        let mut sock = TcpStream::connect(server.addr).await.unwrap();
        sock.write_all(&header).await.unwrap();
        let dev = Device::new();
        let ch = connect(sock, &ClientConfig::new(dev.noise.clone(), server.key))
            .await
            .unwrap();
        let mut c = Client::from_channel(ch, &dev);
        let r = c
            .request(client_frame::Body::Ping(messages::Ping { nonce: 9 }))
            .await;
        assert!(matches!(r, server_frame::Body::Pong(_)));
    }
    server.stop().await;
}

#[tokio::test]
async fn admin_serves_metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_admin(dir.path(), |_| {}, true).await;
    let mut bob = registered(&server, "bob").await;
    let mut alice = registered(&server, "alice").await;
    alice.send_msg("bob", [3; 16], b"m").await;
    let d = bob.next_deliver().await;
    bob.ack(vec![d.seq]).await;
    alice.next_receipt().await;
    let admin = server.admin.unwrap();
    let h = http_get(admin, "/healthz").await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    // The receipt reaches alice from the commit's hand-over, before bob's
    // connection sees its ack answered and counts it: wait for the count.
    let mut m = http_get(admin, "/metrics").await;
    for _ in 0..100 {
        if m.contains("ponte_server_messages_acked_total 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = http_get(admin, "/metrics").await;
    }
    assert!(m.contains("ponte_server_messages_accepted_total 1"), "{m}");
    assert!(m.contains("ponte_server_messages_acked_total 1"), "{m}");
    assert!(m.contains("ponte_server_registrations_total 2"), "{m}");
    assert!(m.contains("ponte_server_online_devices 2"), "{m}");
    // The store's figures: 2 registrations, 1 send, 1 ack at least, each
    // behind a flush.
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    assert!(value("ponte_server_store_commits_total") >= 1.0, "{m}");
    assert!(value("ponte_server_store_writes_total") >= 4.0, "{m}");
    assert!(
        value("ponte_server_store_fsync_seconds_count") >= 1.0,
        "{m}"
    );
    assert!(value("ponte_server_store_fsync_seconds_sum") > 0.0, "{m}");
    assert_eq!(value("ponte_server_store_failed"), 0.0, "{m}");
    server.stop().await;
}

/// Acks for seqs this connection was never pushed cost the store nothing:
/// no write reaches the writer thread (and nothing is deleted).
#[tokio::test]
async fn acks_for_seqs_never_pushed_do_not_reach_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_admin(dir.path(), |_| {}, true).await;
    let mut bob = registered(&server, "bob").await;
    let mut alice = registered(&server, "alice").await;
    alice.send_msg("bob", [7; 16], b"kept").await;
    let d = bob.next_deliver().await;
    let admin = server.admin.unwrap();
    let writes = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| {
                l.strip_prefix("ponte_server_store_writes_total ")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no store_writes_total in {m}"))
    };
    let before = writes(&http_get(admin, "/metrics").await);
    // Alice acks bob's seq and a thousand others she was never pushed.
    for round in 0..5u64 {
        let bogus: Vec<u64> = (0..1000).map(|i| round * 1000 + i).chain([d.seq]).collect();
        alice.ack(bogus).await;
    }
    // Acks have no answer; a ping answered after them means they were read.
    let r = alice
        .request(client_frame::Body::Ping(messages::Ping { nonce: 9 }))
        .await;
    assert!(matches!(r, server_frame::Body::Pong(_)));
    assert_eq!(writes(&http_get(admin, "/metrics").await), before);
    // Bob's message is still his to ack, and his ack is stored.
    bob.ack(vec![d.seq]).await;
    alice.next_receipt().await;
    server.stop().await;
}

#[tokio::test]
async fn idle_logged_in_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = registered(&server, "idler").await;
    // Skip the KeyCount push, then expect the idle close.
    let close = c
        .push_where(|b| matches!(b, server_frame::Body::Close(_)))
        .await;
    assert!(matches!(
        close,
        server_frame::Body::Close(cl) if cl.reason == CloseReason::Idle as i32
    ));
    server.stop().await;
}

#[tokio::test]
async fn random_frames_inside_noise_never_break_the_server() {
    use rand::{Rng as _, RngCore as _, SeedableRng as _};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        let many = ponte_server::RateLimit {
            burst: 1000,
            per_hour: 0,
        };
        c.register_limit = many;
        c.register_limit_per_peer = many;
    })
    .await;
    let mut bob = registered(&server, "bob").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut closed = 0;
    for round in 0..120u32 {
        let mut c = registered(&server, &format!("fuzz_{round}")).await;
        // Random bytes, or a valid frame with random mutations.
        let payload: Vec<u8> = if rng.gen_bool(0.5) {
            let mut v = vec![0u8; rng.gen_range(0..300)];
            rng.fill_bytes(&mut v);
            v
        } else {
            let mut v = prost::Message::encode_to_vec(&messages::ClientFrame {
                request_id: 1,
                body: Some(client_frame::Body::Send(messages::SendMessage {
                    message_id: bytes::Bytes::copy_from_slice(&[round as u8; 16]),
                    recipient: "bob".into(),
                    body: bytes::Bytes::from_static(b"payload"),
                })),
            });
            let n = v.len();
            for _ in 0..rng.gen_range(1..4) {
                v[rng.gen_range(0..n)] = rng.gen();
            }
            v
        };
        c.ch.send_frame(&payload).await.unwrap();
        // Then a ping: either answered (frame tolerated) or the connection
        // was closed with a reason.
        let _ =
            c.ch.send(&messages::ClientFrame {
                request_id: 99,
                body: Some(client_frame::Body::Ping(messages::Ping { nonce: 1 })),
            })
            .await;
        loop {
            match c.ch.recv::<messages::ServerFrame>().await {
                Ok(Some(f)) if f.request_id == 99 => break,
                Ok(Some(f)) => {
                    if let Some(server_frame::Body::Close(cl)) = f.body {
                        assert_eq!(cl.reason, CloseReason::MalformedFrame as i32);
                    }
                }
                Ok(None) | Err(_) => {
                    closed += 1;
                    break;
                }
            }
        }
    }
    assert!(closed > 0, "some random frames are malformed");
    // Bob is still served, and whatever got through reached him intact.
    let r = bob
        .request(client_frame::Body::Ping(messages::Ping { nonce: 3 }))
        .await;
    assert!(matches!(r, server_frame::Body::Pong(_)));
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn another_server_at_the_same_address_is_refused() {
    let dir1 = tempfile::tempdir().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let first = TestServer::start(dir1.path(), |_| {}).await;
    let (addr, key) = (first.addr, first.key);
    first.stop().await;
    // A different server (another key) now answers on the same port.
    let second = TestServer::start(dir2.path(), |c| c.listen = addr).await;
    assert_eq!(second.addr, addr);
    assert_ne!(second.key, key);
    let sock = TcpStream::connect(addr).await.unwrap();
    let err = connect(sock, &ClientConfig::new(Keypair::generate(), key))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::ServerKeyMismatch { expected, .. } if expected == key),
        "{err:?}"
    );
    second.stop().await;
}

#[tokio::test]
async fn shutdown_tells_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let mut c = registered(&server, "leaver").await;
    server.stop().await;
    let close = c
        .push_where(|b| matches!(b, server_frame::Body::Close(_)))
        .await;
    assert!(matches!(
        close,
        server_frame::Body::Close(cl) if cl.reason == CloseReason::Shutdown as i32
    ));
}

/// A client that sends requests but never reads their answers: its queue of
/// outgoing frames fills, and after `slow_consumer_timeout` the server
/// closes it (counted as `slow_consumer`) instead of buffering without end.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_as_a_slow_consumer() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_admin(
        dir.path(),
        |c| {
            c.outbound_queue = 4;
            c.slow_consumer_timeout = Duration::from_secs(1);
            // The client never logs in; on a loaded machine filling the
            // kernel's buffers with pongs can take longer than the default
            // 30 s login deadline, which would close it for another reason.
            c.unauthenticated_timeout = Duration::from_secs(600);
        },
        true,
    )
    .await;
    // A small receive buffer so the kernel does not hold megabytes for us.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(server.addr).await.unwrap();
    let device = Device::new();
    let ch = connect(stream, &ClientConfig::new(device.noise.clone(), server.key))
        .await
        .unwrap();
    let (_reader, mut writer) = ch.split();
    let pinger = tokio::spawn(async move {
        let ping = messages::ClientFrame {
            request_id: 1,
            body: Some(client_frame::Body::Ping(messages::Ping { nonce: 1 })),
        }
        .encode_to_vec();
        let batch: Vec<&[u8]> = (0..256).map(|_| ping.as_slice()).collect();
        // Bounded: far more pongs than socket buffers hold.
        for _ in 0..40_000 {
            if writer.send_frames(&batch).await.is_err() {
                return true;
            }
        }
        false
    });
    let closed = tokio::time::timeout(Duration::from_secs(120), pinger)
        .await
        .expect("the server never closed the connection")
        .unwrap();
    assert!(
        closed,
        "every ping was accepted: the server buffered without end"
    );
    let metrics = http_get(server.admin.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("ponte_server_connections_closed_total{reason=\"slow_consumer\"} 1"),
        "{metrics}"
    );
    still_serves(&server).await;
    server.stop().await;
}

/// Reads frames (skipping pushes) until the server's Close; its reason.
async fn close_reason(c: &mut Client) -> i32 {
    for _ in 0..100 {
        match c.recv().await.expect("a Close frame before EOF").body {
            Some(server_frame::Body::Close(cl)) => return cl.reason,
            _ => continue,
        }
    }
    panic!("no Close within 100 frames");
}

/// Frames that would decode to far more memory than their size (repeated
/// empty entries) are refused by size before they are decoded: before
/// login anything over 4 KiB, after it anything but a message over 32 KiB.
/// Honest requests of every kind still pass.
#[tokio::test]
async fn oversized_requests_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;

    // Before login: a ping padded with an unknown field to 8 KiB.
    let mut c = Client::connect(&server, &Device::new()).await;
    let mut frame = prost::Message::encode_to_vec(&messages::ClientFrame {
        request_id: 1,
        body: Some(client_frame::Body::Ping(messages::Ping { nonce: 1 })),
    });
    // Field 99, length-delimited, 8,000 bytes: decoders skip it.
    frame.extend_from_slice(&[0x9a, 0x06, 0xc0, 0x3e]);
    frame.extend_from_slice(&[0u8; 8000]);
    c.ch.send_frame(&frame).await.unwrap();
    assert_eq!(
        close_reason(&mut c).await,
        CloseReason::FrameTooLarge as i32
    );

    // After login: 20,000 empty keys in one upload (40 KB on the wire,
    // about 2 MB decoded).
    let mut c = registered(&server, "uploader").await;
    let upload = client_frame::Body::UploadKeys(messages::UploadKeys {
        one_time_keys: vec![messages::SignedKey::default(); 20_000],
        fallback_key: None,
    });
    c.fire(upload).await;
    assert_eq!(
        close_reason(&mut c).await,
        CloseReason::FrameTooLarge as i32
    );

    // Honest requests: a full upload of 100 keys and a 60 KB message.
    let device = Device::new();
    let mut c = Client::connect(&server, &device).await;
    assert!(matches!(
        c.register("honest").await,
        server_frame::Body::Registered(_)
    ));
    let keys: Vec<_> = (0..99).map(|i| device.signed_key(i, false)).collect();
    let r = c
        .request(client_frame::Body::UploadKeys(messages::UploadKeys {
            one_time_keys: keys,
            fallback_key: Some(device.signed_key(1000, true)),
        }))
        .await;
    assert!(matches!(r, server_frame::Body::KeysUploaded(_)), "{r:?}");
    let _bob = registered(&server, "bobby").await;
    let r = c.send_msg("bobby", [3; 16], &vec![7u8; 60_000]).await;
    assert!(matches!(r, server_frame::Body::SendAck(_)), "{r:?}");
    still_serves(&server).await;
    server.stop().await;
}

/// Connects and completes the Noise handshake as `device`, or `None` if
/// the server closed the connection first.
async fn handshake(server: &TestServer, device: &Device) -> Option<Client> {
    let sock = TcpStream::connect(server.addr).await.unwrap();
    let mut cfg = ClientConfig::new(device.noise.clone(), server.key);
    cfg.handshake_timeout = WAIT;
    let ch = connect(sock, &cfg).await.ok()?;
    Some(Client::from_channel(ch, device))
}

/// Whether a new connection is closed by the server without a word, tried
/// until it is (bounded): the accept loop counts connections in order.
async fn refused_soon(server: &TestServer) -> bool {
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            _ => continue,
        }
    }
    false
}

/// One address cannot hold more than `max_pre_login_per_address`
/// connections that have not logged in: the next is closed at once (and
/// counted); a connection that logs in gives its place back, and so does
/// one that goes away. (Loopback is exempt by default; not here.)
#[tokio::test]
async fn connections_before_login_are_capped_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_admin(
        dir.path(),
        |c| {
            c.max_pre_login_per_address = 3;
            c.pre_login_exempts_loopback = false;
        },
        true,
    )
    .await;
    // Three silent sockets (stuck before the handshake) take the places.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    assert!(
        refused_soon(&server).await,
        "a fourth connection is refused"
    );
    let m = http_get(server.admin.unwrap(), "/metrics").await;
    assert!(
        m.contains("ponte_server_connections_closed_total{reason=\"pre_login_per_address\"}"),
        "{m}"
    );
    // One silent socket leaves: its place comes back once the server sees
    // the EOF, and alice gets in and registers.
    drop(silent.pop());
    let device = Device::new();
    let mut alice = None;
    for _ in 0..100 {
        if let Some(c) = handshake(&server, &device).await {
            alice = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut alice = alice.expect("a place came back after a socket left");
    assert!(matches!(
        alice.register("alice").await,
        server_frame::Body::Registered(_)
    ));
    // Logged in, alice no longer counts: two silent sockets, so exactly one
    // more connection fits (a handshake completes), and the next is refused.
    let third = handshake(&server, &Device::new()).await;
    assert!(third.is_some(), "alice's place was given back at login");
    assert!(refused_soon(&server).await);
    // And alice is served all along.
    let r = alice
        .request(client_frame::Body::Ping(messages::Ping { nonce: 9 }))
        .await;
    assert!(matches!(r, server_frame::Body::Pong(_)));
    drop((silent, third));
    server.stop().await;
}
