//! The running hash: an upload this process wrote from offset 0 is
//! checked against the hash fed as its chunks were written, across tails;
//! any gap in what this process saw (a restart, a tail that starts past
//! the hash) falls back to reading the file, and a wrong upload is
//! refused either way.
#![allow(clippy::unwrap_used)]

use super::recorded::{self, answer, Gate, Recorded};
use super::*;
use sha2::{Digest, Sha256};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 253) as u8).collect()
}

/// Appends `bytes[recorded..end]` as one append would, each on a tail of
/// its own (the previous one let go, as between a client's appends that
/// wait for their answers), and waits until it is durable.
async fn append(blobs: &Blobs, id: BlobId, store: &Arc<Recorded>, bytes: &[u8], end: usize) {
    let tail = blobs.tail(id);
    let flushed = recorded::append(&tail, store.get(), bytes, end, store.record()).await;
    let flushed = answer(flushed).await;
    assert!(matches!(flushed, Flushed::Durable), "{flushed:?}");
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[tokio::test]
async fn an_upload_written_in_order_is_checked_by_its_running_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = Blobs::new(tmp.path());
    let id: BlobId = [1; 16];
    let c = 4096;
    let bytes = data(3 * c + 100);
    let store = Recorded::new();
    for end in [c, 2 * c, 3 * c, bytes.len()] {
        append(&blobs, id, &store, &bytes, end).await;
        assert_eq!(
            blobs.hashed(&id),
            Some(end as u64),
            "hash lost between tails"
        );
    }
    let size = bytes.len() as u64;
    assert_eq!(
        blobs.finish(id, size, sha(&bytes)).await.unwrap(),
        Finished::Stored
    );
    assert_eq!(
        blobs.hashed(&id),
        None,
        "the running hash outlived its upload"
    );
    assert_eq!(std::fs::read(blobs.finished(&id)).unwrap(), bytes);
}

#[tokio::test]
async fn a_hash_mismatch_is_caught_by_the_running_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = Blobs::new(tmp.path());
    let id: BlobId = [2; 16];
    let c = 4096;
    let declared = data(2 * c);
    // One byte of the second chunk differs from what the hash declares.
    let mut sent = declared.clone();
    sent[c + 7] ^= 0x40;
    let store = Recorded::new();
    append(&blobs, id, &store, &sent, c).await;
    append(&blobs, id, &store, &sent, 2 * c).await;
    assert_eq!(blobs.hashed(&id), Some(2 * c as u64));
    let size = sent.len() as u64;
    assert_eq!(
        blobs.finish(id, size, sha(&declared)).await.unwrap(),
        Finished::Mismatch
    );
    assert!(!blobs.partial(&id).exists(), "a mismatched upload kept");
    assert!(!blobs.finished(&id).exists(), "a mismatched upload served");
}

/// A server that restarted mid-upload has no hash of what the file held
/// before: the tail that goes on from the recorded offset starts none, and
/// the finish reads the file back, which still refuses a wrong one.
#[tokio::test]
async fn an_upload_resumed_after_a_restart_is_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let c = 4096;
    let good = data(3 * c);
    let mut bad = good.clone();
    bad[10] ^= 1;
    for (id, first, want) in [
        ([3; 16], &good, Finished::Stored),
        ([4; 16], &bad, Finished::Mismatch),
    ] {
        let store = Recorded::new();
        {
            let before = Blobs::new(tmp.path());
            append(&before, id, &store, first, c).await;
            assert_eq!(before.hashed(&id), Some(c as u64));
        }
        let after = Blobs::new(tmp.path());
        append(&after, id, &store, &good, 2 * c).await;
        append(&after, id, &store, &good, 3 * c).await;
        assert_eq!(after.hashed(&id), None, "a hash of bytes it never saw");
        let size = good.len() as u64;
        assert_eq!(after.finish(id, size, sha(&good)).await.unwrap(), want);
    }
}

/// A tail that starts where the running hash does not end (the previous
/// tail's flush failed, so the file was written past the recorded offset)
/// drops the hash instead of feeding it out of order.
#[tokio::test]
async fn a_write_that_does_not_continue_the_running_hash_drops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = Blobs::new(tmp.path());
    let id: BlobId = [5; 16];
    let c = 4096;
    let bytes = data(2 * c);
    let store = Recorded::new();
    append(&blobs, id, &store, &bytes, c).await;
    {
        // Written past the record, never recorded (the store failed, so
        // the tail is poisoned and goes with its append).
        let tail = blobs.tail(id);
        let flushed =
            recorded::append(&tail, store.get(), &bytes, 2 * c, Recorded::failing()).await;
        assert!(matches!(answer(flushed).await, Flushed::Failed(_)));
        assert_eq!(blobs.hashed(&id), Some(2 * c as u64));
    }
    recorded::gone(&blobs, id).await;
    // The next tail goes on from the recorded offset, behind the hash.
    append(&blobs, id, &store, &bytes, 2 * c).await;
    assert_eq!(blobs.hashed(&id), None);
    assert_eq!(
        blobs.finish(id, 2 * c as u64, sha(&bytes)).await.unwrap(),
        Finished::Stored
    );
}

/// A blob directory shared by several nodes is read back at the end:
/// here another node wrote other bytes over part of the upload (its
/// record then refused), which only the file shows.
#[tokio::test]
async fn a_shared_directory_is_read_back_and_sees_another_nodes_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (
        Blobs::in_dir(tmp.path().to_owned()),
        Blobs::in_dir(tmp.path().to_owned()),
    );
    let id: BlobId = [6; 16];
    let c = 4096;
    let bytes = data(3 * c);
    let store = Recorded::new();
    append(&one, id, &store, &bytes, c).await;
    // Node one's chunk is written, its record held; node two (whose
    // tail started from the same recorded offset) writes other bytes over
    // it, and its record is held too.
    let (g1, g2) = (Gate::closed(), Gate::closed());
    let t1 = one.tail(id);
    let t2 = two.tail(id);
    let f1 = recorded::append(&t1, store.get(), &bytes, 2 * c, store.through(&g1)).await;
    g1.reached().await;
    let other = vec![0xee; 2 * c];
    let f2 = recorded::append(&t2, store.get(), &other, 2 * c, store.through(&g2)).await;
    g2.reached().await;
    g1.open();
    let flushed = answer(f1).await;
    assert!(matches!(flushed, Flushed::Durable), "{flushed:?}");
    g2.open();
    let flushed = answer(f2).await;
    assert!(matches!(flushed, Flushed::Refused), "{flushed:?}");
    drop((t1, t2));
    append(&one, id, &store, &bytes, 3 * c).await;
    assert_eq!(one.hashed(&id), None);
    assert_eq!(
        one.finish(id, 3 * c as u64, sha(&bytes)).await.unwrap(),
        Finished::Mismatch
    );
}
