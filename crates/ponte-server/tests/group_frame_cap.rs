//! A hostile `SendGroupMessage`: within the group frame cap (the body cap
//! plus 1,024 of the longest handles) fit ~49,000 empty recipients, which
//! decoding would turn into a vector of 49,000 strings (megabytes) before
//! the count check. The server counts the entries in the encoded frame
//! first and refuses it as `LIMIT_EXCEEDED` without decoding; this test
//! counts every byte the process allocates (server and test client, in
//! process) while the frame is refused, and checks the session goes on.
//!
//! Its own test binary: the counting allocator is global, and no other
//! test may allocate meanwhile.
#![allow(clippy::unwrap_used, unsafe_code)]

mod common;

use bytes::Bytes;
use common::{error_code, registered, TestServer};
use ponte_wire::messages::{
    self, client_frame, server_frame, ClientFrame, ErrorCode, MAX_GROUP_RECIPIENTS,
};
use prost::Message as _;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting the bytes it hands out.
struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> u64 {
    ALLOCATED.load(Ordering::Relaxed)
}

fn hostile(message_id: [u8; 16], recipients: usize) -> client_frame::Body {
    client_frame::Body::SendGroup(messages::SendGroupMessage {
        message_id: Bytes::copy_from_slice(&message_id),
        group_id: Bytes::copy_from_slice(&[7; 16]),
        recipients: vec![String::new(); recipients],
        body: Bytes::from_static(b"x"),
    })
}

#[tokio::test]
async fn a_group_frame_of_empty_recipients_is_refused_before_it_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let mut alice = registered(&server, "alice").await;
    const ENTRIES: usize = 49_000;
    let body = hostile([5; 16], ENTRIES);
    let frame = ClientFrame {
        request_id: 1,
        body: Some(body.clone()),
    }
    .encode_to_vec();
    assert!(frame.len() <= messages::max_group_frame_len(64 * 1024));

    // What decoding it costs: the yardstick.
    let before = allocated();
    let decoded = messages::decode_client_frame(&frame).unwrap();
    let decoding = allocated() - before;
    drop(decoded);
    assert!(decoding > 2 * 1024 * 1024, "decoding took {decoding} bytes");

    // What the server spends refusing it (the test client's encoding and
    // encryption of the frame, and reading the answer, included).
    let before = allocated();
    let r = alice.request(body).await;
    let refusing = allocated() - before;
    eprintln!("decoding the frame allocates {decoding} bytes; refusing it {refusing}");
    assert_eq!(error_code(&r), ErrorCode::LimitExceeded);
    let server_frame::Body::Error(e) = r else {
        unreachable!()
    };
    assert_eq!(&e.message_id[..], &[5; 16]);
    assert!(
        refusing < 1024 * 1024,
        "refusing the frame allocated {refusing} bytes"
    );

    // 1,024 empty recipients are decoded and refused one by one as
    // unknown; the session goes on.
    let r = alice.request(hostile([6; 16], MAX_GROUP_RECIPIENTS)).await;
    match r {
        server_frame::Body::Error(e) => {
            assert_eq!(
                ErrorCode::try_from(e.code).unwrap(),
                ErrorCode::InvalidArgument,
                "{e:?}"
            )
        }
        server_frame::Body::GroupSendAck(a) => assert!(!a.refused.is_empty()),
        other => panic!("{other:?}"),
    }
    let pong = alice
        .request(client_frame::Body::Ping(messages::Ping { nonce: 9 }))
        .await;
    assert!(matches!(pong, server_frame::Body::Pong(_)), "{pong:?}");
    server.stop().await;
}
