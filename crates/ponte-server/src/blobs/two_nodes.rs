//! Two nodes' tails over one upload: the nodes of a PostgreSQL service
//! share the blob directory but not their tails, so a client cut off from
//! one node can go on at another while the first node's appends are still
//! on their way to the store. The store's offset record (a compare and
//! set, as both stores do it) is a counter here.
#![allow(clippy::unwrap_used)]

use super::recorded::{self, answer, Gate, Recorded};
use super::*;
use sha2::{Digest, Sha256};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Node 1 has written two chunks whose records are not yet through the
/// store when the client, cut off, resumes on node 2 from the
/// recorded offset: node 2's tail must not cut the file under node 1's
/// append. Node 1's records go through, node 2's is refused (the client is
/// told the new offset), the upload goes on on node 2 and the file holds
/// the right bytes.
#[tokio::test]
async fn a_tail_on_another_node_never_cuts_under_an_append_about_to_be_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (
        Blobs::in_dir(tmp.path().to_owned()),
        Blobs::in_dir(tmp.path().to_owned()),
    );
    let id: BlobId = [7; 16];
    let c = 4096;
    let bytes = data(3 * c);
    let store = Recorded::new();
    let (g1, g1b, g2) = (Gate::closed(), Gate::closed(), Gate::closed());

    let t1 = one.tail(id);
    let first = recorded::append(&t1, store.get(), &bytes, c, store.through(&g1)).await;
    g1.reached().await;
    let second = recorded::append(&t1, store.get(), &bytes, 2 * c, store.through(&g1b)).await;
    g1b.reached().await;
    let t2 = two.tail(id);
    let on_two = recorded::append(&t2, store.get(), &bytes, c, store.through(&g2)).await;
    g2.reached().await;
    g1.open();
    g1b.open();
    assert!(matches!(answer(first).await, Flushed::Durable));
    assert!(matches!(answer(second).await, Flushed::Durable));
    g2.open();
    assert!(matches!(answer(on_two).await, Flushed::Refused));
    assert_eq!(store.get(), 2 * c as u64);
    drop((t1, t2));
    recorded::gone(&two, id).await;

    let t3 = two.tail(id);
    let third = recorded::append(&t3, store.get(), &bytes, 3 * c, store.record()).await;
    assert!(matches!(answer(third).await, Flushed::Durable));
    drop(t3);
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    assert_eq!(
        two.finish(id, bytes.len() as u64, sha).await.unwrap(),
        Finished::Stored,
        "the file does not hold the bytes the store counted"
    );
    assert_eq!(std::fs::read(two.finished(&id)).unwrap(), bytes);
}

/// A node whose blob directory lacks the bytes the store counts (not the
/// directory the other nodes use, or lost): its tail refuses to write
/// there, saying how much the file holds, and fills nothing in.
#[tokio::test]
async fn a_file_shorter_than_the_recorded_offset_is_refused_not_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, other) = (
        Blobs::in_dir(tmp.path().join("shared")),
        Blobs::in_dir(tmp.path().join("not-shared")),
    );
    let id: BlobId = [9; 16];
    let c = 4096;
    let bytes = data(2 * c);
    let store = Recorded::new();
    let t1 = one.tail(id);
    let first = recorded::append(&t1, store.get(), &bytes, c, store.record()).await;
    assert!(matches!(answer(first).await, Flushed::Durable));

    let t2 = other.tail(id);
    let second = recorded::append(&t2, store.get(), &bytes, 2 * c, store.record()).await;
    match answer(second).await {
        Flushed::NotWritten { short, .. } => assert_eq!(short, Some(0)),
        f => panic!("a write past the end of a short file: {f:?}"),
    }
    let len = std::fs::metadata(other.partial(&id)).map_or(0, |m| m.len());
    assert_eq!(len, 0, "zeros filled in");
}
