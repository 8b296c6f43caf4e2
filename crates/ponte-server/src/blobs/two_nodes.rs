//! Two nodes' tails over one upload: the nodes of a PostgreSQL service
//! share the blob directory but not their tails, so a client cut off from
//! one node can go on at another while the first node's appends are still
//! on their way to the store. The store's offset record (a compare and
//! set, as both stores do it) is a counter here.
#![allow(clippy::unwrap_used)]

use super::*;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::future::{ready, Ready};

/// The store's recorded offset of the upload.
struct Recorded(Mutex<u64>);

impl Recorded {
    fn get(&self) -> u64 {
        *lock(&self.0)
    }

    /// `blob_advance`: moves the offset from `from` to `to`; false if it
    /// was not at `from`.
    fn advance(&self, from: u64, to: u64) -> Ready<Result<bool, io::Error>> {
        let mut at = lock(&self.0);
        let moved = *at == from;
        if moved {
            *at = to;
        }
        ready(Ok(moved))
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Writes `data[at..end]` through `tail` (turn held) from its next offset.
async fn write(tail: &Tail, recorded: u64, data: &[u8], end: usize) -> u64 {
    let _turn = tail.turn().await;
    let at = tail.next_offset(recorded).unwrap();
    let chunk = Bytes::copy_from_slice(&data[at as usize..end]);
    tail.write(at, chunk).await.unwrap();
    end as u64
}

/// Node 1 has written two chunks whose record is not yet at the store when
/// the client, cut off, resumes on node 2 from the recorded offset: node
/// 2's tail must not cut the file under node 1's append. Node 1's record
/// goes through, node 2's is refused (the client is told the new offset),
/// the upload goes on on node 2 and the file holds the right bytes.
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
    let store = Recorded(Mutex::new(0));

    let t1 = one.tail(id);
    write(&t1, store.get(), &bytes, c).await;
    let end1 = write(&t1, store.get(), &bytes, 2 * c).await;
    let t2 = two.tail(id);
    let end2 = write(&t2, store.get(), &bytes, c).await;
    assert!(matches!(
        t1.flush(end1, |f, t| store.advance(f, t)).await,
        Flushed::Durable
    ));
    assert!(matches!(
        t2.flush(end2, |f, t| store.advance(f, t)).await,
        Flushed::Refused
    ));
    assert_eq!(store.get(), 2 * c as u64);
    drop((t1, t2));

    let t3 = two.tail(id);
    let end3 = write(&t3, store.get(), &bytes, 3 * c).await;
    assert!(matches!(
        t3.flush(end3, |f, t| store.advance(f, t)).await,
        Flushed::Durable
    ));
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
    let store = Recorded(Mutex::new(0));
    let t1 = one.tail(id);
    let end = write(&t1, store.get(), &bytes, c).await;
    assert!(matches!(
        t1.flush(end, |f, t| store.advance(f, t)).await,
        Flushed::Durable
    ));

    let t2 = other.tail(id);
    let _turn = t2.turn().await;
    let at = t2.next_offset(store.get()).unwrap();
    let e = t2
        .write(at, Bytes::copy_from_slice(&bytes[c..]))
        .await
        .unwrap_err();
    assert_eq!(Short::of(&e), Some(Short(0)), "{e}");
    let len = std::fs::metadata(other.partial(&id)).map_or(0, |m| m.len());
    assert_eq!(len, 0, "zeros filled in");
}
