//! Clients that do not read: a stalled socket is closed as a slow consumer
//! even while the client keeps pinging, and the pushes in flight to one
//! connection are bounded in bytes, not only in count.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ponte_transport::{connect, ClientConfig};
use ponte_wire::messages::{self, client_frame, server_frame, ServerFrame};
use prost::Message as _;
use std::time::Duration;

/// Registers bob and alice, closes bob's connection and has alice leave
/// `n` messages of `len` bytes in bob's mailbox. Returns bob's device and
/// the message ids in the order sent.
async fn mailbox_of_big_messages(
    server: &TestServer,
    n: u8,
    len: usize,
) -> (Device, Vec<[u8; 16]>) {
    let bob = registered(server, "bob").await;
    let device = bob.device.clone();
    drop(bob);
    let mut alice = registered(server, "alice").await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = [i.wrapping_add(1); 16];
        let body = vec![i; len];
        let r = alice.send_msg("bob", id, &body).await;
        assert!(matches!(r, server_frame::Body::SendAck(_)), "{r:?}");
        ids.push(id);
    }
    (device, ids)
}

#[tokio::test]
async fn a_logged_in_client_that_never_reads_is_closed_despite_its_pings() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_admin(
        dir.path(),
        |c| {
            c.write_stall_timeout = Duration::from_secs(1);
            // The whole mailbox in flight at once, as before the byte
            // budget: far more than the socket buffers hold, so the
            // server's writes stall for sure.
            c.delivery_window_bytes = 64 * 64 * 1024;
        },
        true,
    )
    .await;
    let (device, _) = mailbox_of_big_messages(&server, 64, 64 * 1024).await;
    // A small receive buffer so the kernel does not hold megabytes for us.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(server.addr).await.unwrap();
    let ch = connect(stream, &ClientConfig::new(device.noise.clone(), server.key))
        .await
        .unwrap();
    let (mut reader, mut writer) = ch.split();
    let login = messages::ClientFrame {
        request_id: 1,
        body: Some(client_frame::Body::Login(messages::Login {})),
    };
    writer.send(&login).await.unwrap();
    // Ping every 400 ms and never read; the pings reset the idle timer, the
    // stall must close the connection anyway. Bounded: 60 s of pings, too
    // few pongs to fill the outbound queue (256), so the queue-full close
    // cannot be what ends it.
    let pinger = tokio::spawn(async move {
        for i in 0..150u64 {
            let ping = messages::ClientFrame {
                request_id: 2 + i,
                body: Some(client_frame::Body::Ping(messages::Ping { nonce: i })),
            }
            .encode_to_vec();
            if writer.send_frame(&ping).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        false
    });
    let closed = tokio::time::timeout(Duration::from_secs(120), pinger)
        .await
        .expect("the pinger never ended")
        .unwrap();
    assert!(closed, "the server kept a stalled connection for 60 s");
    // The socket ends (reset, or EOF after what was buffered).
    let mut ended = false;
    for _ in 0..100_000 {
        match tokio::time::timeout(WAIT, reader.recv_frame()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    assert!(ended, "the connection did not end");
    let admin = server.admin.unwrap();
    let wanted = "ponte_server_connections_closed_total{reason=\"slow_consumer\"} 1";
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = http_get(admin, "/metrics").await;
        if metrics.contains(wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.contains(wanted), "{metrics}");
    // The mailbox is intact: nothing was acknowledged.
    let mut bob = Client::connect(&server, &device).await;
    let r = bob.login().await;
    assert!(
        matches!(r, server_frame::Body::LoggedIn(ref l) if l.pending == 64),
        "{r:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn pushes_in_flight_are_bounded_in_bytes_and_all_arrive_in_order() {
    const BUDGET: usize = 1024 * 1024;
    const LEN: usize = 60 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |c| {
        c.delivery_window_bytes = BUDGET;
    })
    .await;
    let (device, ids) = mailbox_of_big_messages(&server, 64, LEN).await;
    let mut bob = Client::connect(&server, &device).await;
    let r = bob.login().await;
    assert!(matches!(r, server_frame::Body::LoggedIn(_)), "{r:?}");
    // Read what comes without acknowledging, until nothing more comes for
    // a second.
    let mut got: Vec<messages::Deliver> = Vec::new();
    let take = |f: ServerFrame, got: &mut Vec<messages::Deliver>| {
        if let Some(server_frame::Body::Deliver(d)) = f.body {
            got.push(d);
        }
    };
    while let Some(f) = bob.pushes.pop_front() {
        take(f, &mut got);
    }
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_secs(1), bob.ch.recv::<ServerFrame>()).await {
            Ok(r) => take(r.unwrap().expect("connection closed"), &mut got),
            Err(_) => break,
        }
    }
    let before_ack = got.len();
    // 17 × 60 KiB fit in 1 MiB; an 18th would not.
    assert!(
        (1..=BUDGET / LEN).contains(&before_ack),
        "{before_ack} pushes before any ack"
    );
    // Acknowledge as they come: the rest arrives.
    let mut acked = 0;
    for _ in 0..1000 {
        if acked < got.len() {
            let seqs = got[acked..].iter().map(|d| d.seq).collect();
            acked = got.len();
            bob.ack(seqs).await;
        }
        if got.len() >= ids.len() {
            break;
        }
        let f = bob.recv().await.expect("connection closed");
        take(f, &mut got);
    }
    assert_eq!(got.len(), ids.len());
    let seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let got_ids: Vec<[u8; 16]> = got
        .iter()
        .map(|d| d.message_id.as_ref().try_into().unwrap())
        .collect();
    assert_eq!(got_ids, ids);
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.body.len(), LEN);
        assert!(d.body.iter().all(|&b| usize::from(b) == i));
    }
    server.stop().await;
}
