//! The writer's failure paths, driven step by step: the test takes the
//! writer's turn itself (as if a writer ran), queues chunks, then runs
//! one batch or drops the worker.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::blobs::recorded::{answer, Recorded};
use crate::blobs::Blobs;

/// A tail whose writer's turn the test holds: appends queue and nothing
/// writes them until the test says so.
fn held_tail(blobs: &Blobs, id: BlobId) -> TailHold {
    let tail = blobs.tail(id);
    lock(&tail.state).writing = true;
    tail
}

fn send(answers: Vec<Answer>) {
    for (done, outcome) in answers {
        let _ = done.send(outcome);
    }
}

/// A chunk that cannot be written (here: the file holds fewer bytes than
/// the store recorded) is answered with why, the chunk queued behind it
/// is told to go on from its offset, and so is the next append.
#[tokio::test]
async fn chunks_queued_behind_a_failed_write_go_on_from_its_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = Blobs::in_dir(tmp.path().to_owned());
    let id: BlobId = [1; 16];
    let c = 4096u64;
    let store = Recorded::new();
    let tail = held_tail(&blobs, id);
    // The store says c bytes are there; the directory has no file.
    let at = tail.next_offset(c).unwrap();
    let first = tail.append(at, Bytes::from(vec![1; c as usize]), store.record());
    let second = tail.append(at + c, Bytes::from(vec![2; c as usize]), store.record());
    assert_eq!(
        tail.next_offset(c),
        Some(3 * c),
        "queued chunks move the offset"
    );
    send(write_batch(&tail));
    match answer(first).await {
        Flushed::NotWritten { short, .. } => assert_eq!(short, Some(0)),
        other => panic!("the failed chunk: {other:?}"),
    }
    assert!(matches!(answer(second).await, Flushed::Behind(o) if o == c));
    assert_eq!(
        tail.next_offset(c),
        Some(c),
        "the next append goes on from it"
    );
    let len = std::fs::metadata(&tail.path).map_or(0, |m| m.len());
    assert_eq!(len, 0, "zeros filled in");
}

/// A writer whose task never ran (a runtime shutting down) or that
/// panicked ends its turn as it goes: what it had queued is refused, not
/// left waiting, and the tail takes no more appends.
#[tokio::test]
async fn a_writer_that_stops_refuses_what_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = Blobs::in_dir(tmp.path().to_owned());
    let id: BlobId = [2; 16];
    let tail = held_tail(&blobs, id);
    let at = tail.next_offset(0).unwrap();
    let queued = tail.append(at, Bytes::from_static(b"chunk"), Recorded::new().record());
    drop(Worker {
        tail: Some(tail.clone()),
        role: Role::Write,
    });
    assert!(matches!(answer(queued).await, Flushed::Failed(_)));
    assert!(!lock(&tail.state).writing, "the turn was not given back");
    assert_eq!(
        tail.next_offset(0),
        None,
        "a stopped writer's tail is poisoned"
    );
    let late = tail.append(5, Bytes::from_static(b"more"), Recorded::new().record());
    assert!(matches!(answer(late).await, Flushed::Failed(_)));
}

/// A batch's chunks are synced and recorded once, from where the last
/// record left the offset, and each append is answered durable.
#[tokio::test]
async fn a_batch_is_flushed_and_recorded_once() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = Blobs::in_dir(tmp.path().to_owned());
    let id: BlobId = [3; 16];
    let store = Recorded::new();
    let tail = held_tail(&blobs, id);
    let at = tail.next_offset(0).unwrap();
    let waits: Vec<_> = (0..4u8)
        .map(|i| {
            tail.append(
                at + u64::from(i) * 10,
                Bytes::from(vec![i; 10]),
                store.record(),
            )
        })
        .collect();
    send(write_batch(&tail));
    for w in waits {
        assert!(matches!(answer(w).await, Flushed::Durable));
    }
    assert_eq!(store.get(), 40);
    assert_eq!(store.handed(), 1, "one record of the whole batch");
    let bytes: Vec<u8> = (0..4u8).flat_map(|i| [i; 10]).collect();
    assert_eq!(std::fs::read(&tail.path).unwrap(), bytes);
}
