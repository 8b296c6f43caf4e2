//! Chunks of finished blobs read ahead for downloads (see
//! [`super::Blobs::read`]): one read of several chunks answers the
//! requests a download already has in flight, without a trip to the
//! blocking pool each.

use super::BlobId;
use bytes::Bytes;
use std::collections::HashMap;

/// Chunks one read of a download brings per trip to the blocking pool (a
/// download keeps 16 requests in flight).
pub(super) const READ_AHEAD_CHUNKS: usize = 8;
/// Bytes read ahead and not yet sent, at most, for all downloads together.
pub(super) const MAX_READ_AHEAD_BYTES: usize = 16 * 1024 * 1024;
/// A chunk read ahead and not asked for within this long is dropped (its
/// download stopped or went elsewhere).
pub(super) const READ_AHEAD_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Chunks read ahead: (blob, offset) → the bytes from there, and when they
/// were read. The chunks of one read share its buffer, which goes when
/// the last of them was sent or dropped.
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    chunks: HashMap<(BlobId, u64), (Bytes, std::time::Instant)>,
    bytes: usize,
}

impl ReadAhead {
    /// The chunk of `id` at `offset`, if one was read ahead and holds at
    /// least `len` bytes (a request for the blob's last bytes asks for no
    /// more than are left).
    pub(super) fn take(&mut self, id: &BlobId, offset: u64, len: usize) -> Option<Bytes> {
        let (chunk, _) = self.chunks.remove(&(*id, offset))?;
        self.bytes -= chunk.len();
        (chunk.len() >= len).then(|| chunk.slice(..len))
    }

    /// Whether `more` bytes fit, once the stale chunks are dropped.
    pub(super) fn has_room(&mut self, more: usize) -> bool {
        if self.bytes + more > MAX_READ_AHEAD_BYTES {
            let now = std::time::Instant::now();
            let mut freed = 0;
            self.chunks.retain(|_, (c, at)| {
                let keep = now.duration_since(*at) < READ_AHEAD_TTL;
                if !keep {
                    freed += c.len();
                }
                keep
            });
            self.bytes -= freed;
        }
        self.bytes + more <= MAX_READ_AHEAD_BYTES
    }

    pub(super) fn keep(&mut self, id: BlobId, offset: u64, chunk: Bytes) {
        if self.bytes + chunk.len() > MAX_READ_AHEAD_BYTES {
            return;
        }
        self.bytes += chunk.len();
        let now = std::time::Instant::now();
        if let Some((old, _)) = self.chunks.insert((id, offset), (chunk, now)) {
            self.bytes -= old.len();
        }
    }

    pub(super) fn forget(&mut self, id: &BlobId) {
        let mut freed = 0;
        self.chunks.retain(|(b, _), (c, _)| {
            let keep = b != id;
            if !keep {
                freed += c.len();
            }
            keep
        });
        self.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chunk(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn chunks_are_taken_once_and_counted() {
        let mut a = ReadAhead::default();
        let id = [1u8; 16];
        a.keep(id, 100, chunk(50));
        a.keep(id, 150, chunk(20));
        assert_eq!(a.bytes, 70);
        // Asked for less than kept (the blob's last bytes): a slice.
        assert_eq!(a.take(&id, 100, 30).unwrap().len(), 30);
        assert!(a.take(&id, 100, 30).is_none(), "taken once");
        // Kept shorter than asked: not an answer, and dropped.
        assert!(a.take(&id, 150, 21).is_none());
        assert!(a.take(&[2u8; 16], 150, 1).is_none());
        assert_eq!(a.bytes, 0);
        assert!(a.chunks.is_empty());
    }

    #[test]
    fn the_total_is_capped_and_a_deleted_blob_forgotten() {
        let mut a = ReadAhead::default();
        let (x, y) = ([1u8; 16], [2u8; 16]);
        let half = MAX_READ_AHEAD_BYTES / 2;
        a.keep(x, 0, chunk(half));
        a.keep(y, 0, chunk(half));
        assert!(!a.has_room(1), "full, and nothing is stale yet");
        a.keep(y, 1, chunk(1));
        assert!(a.take(&y, 1, 1).is_none(), "not kept past the cap");
        a.forget(&x);
        assert_eq!(a.bytes, half);
        assert!(a.take(&x, 0, 1).is_none());
        assert!(a.has_room(half));
        // The same offset kept again replaces the old chunk.
        a.keep(y, 0, chunk(10));
        assert_eq!(a.bytes, 10);
    }

    #[test]
    fn stale_chunks_make_room() {
        let mut a = ReadAhead::default();
        let id = [3u8; 16];
        a.keep(id, 0, chunk(MAX_READ_AHEAD_BYTES));
        let long_ago = std::time::Instant::now()
            .checked_sub(READ_AHEAD_TTL + std::time::Duration::from_secs(1));
        if let Some(t) = long_ago {
            for (_, at) in a.chunks.values_mut() {
                *at = t;
            }
            assert!(a.has_room(1));
            assert_eq!(a.bytes, 0);
        }
    }
}
