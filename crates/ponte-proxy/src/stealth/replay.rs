//! The replay cache: tags already accepted, so a recorded first flight
//! replayed later goes to the cover.
//!
//! A fixed table of [`SLOTS`] 16-byte slots (16 MiB), allocated once,
//! grouped in buckets of [`WAYS`]. A slot holds 12 bytes of the tag and the
//! tag's time (4 bytes); a zero slot is empty. A tag goes in the bucket its
//! first bytes pick (tag bytes are HMAC output: uniform, and only holders of
//! a secret can make them); a full bucket gives up its oldest slot. A tag
//! whose time is outside the window is refused by the tag check before it
//! gets here, so the cache only has to remember a window's worth of hellos:
//! over a million of them before any fresh one can be evicted.

use std::sync::Mutex;

/// Slots in the table.
pub const SLOTS: usize = 1 << 20;

/// Slots per bucket.
pub const WAYS: usize = 8;

/// One slot: 12 bytes of tag, then the time (u32, little-endian). A plain
/// byte array, so the zeroed table comes from the allocator's zeroed pages
/// (no byte is written at start).
type Slot = [u8; 16];

fn time_of(s: &Slot) -> u32 {
    u32::from_le_bytes([s[12], s[13], s[14], s[15]])
}

/// The cache; one lock, held for a bucket scan (eight comparisons).
#[derive(Debug)]
pub struct ReplayCache {
    slots: Mutex<Vec<Slot>>,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayCache {
    /// An empty cache of [`SLOTS`] slots. The zeroed table is allocated at
    /// once; the kernel backs its pages only as they are written.
    pub fn new() -> Self {
        ReplayCache {
            slots: Mutex::new(vec![[0u8; 16]; SLOTS]),
        }
    }

    /// Bytes the table takes.
    pub fn memory(&self) -> usize {
        SLOTS * std::mem::size_of::<Slot>()
    }

    /// Records `key` (a tag's replay key) seen with time `time`. Returns
    /// `false` when it was already there: a replay.
    pub fn insert(&self, key: &[u8; 16], time: u32) -> bool {
        let tag = &key[..12];
        let time = time.max(1);
        let bucket =
            (u32::from_le_bytes([key[12], key[13], key[14], key[15]]) as usize) % (SLOTS / WAYS);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut slots[bucket * WAYS..(bucket + 1) * WAYS];
        if b.iter().any(|s| time_of(s) != 0 && &s[..12] == tag) {
            return false;
        }
        let victim = b
            .iter_mut()
            .min_by_key(|s| time_of(s))
            .expect("a bucket has WAYS > 0 slots");
        victim[..12].copy_from_slice(tag);
        victim[12..].copy_from_slice(&time.to_le_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_million_tags_in_at_most_32_mib() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        let c = ReplayCache::new();
        const { assert!(SLOTS >= 1_000_000) };
        assert!(c.memory() <= 32 << 20);
        assert_eq!(c.slots.lock().map(|s| s.capacity()).unwrap_or(0), SLOTS);
    }

    #[test]
    fn second_insert_is_a_replay() {
        let c = ReplayCache::new();
        let k = [5u8; 16];
        assert!(c.insert(&k, 100));
        assert!(!c.insert(&k, 100));
        let mut other = k;
        other[0] = 6;
        assert!(c.insert(&other, 100));
    }

    #[test]
    fn full_bucket_evicts_the_oldest() {
        let c = ReplayCache::new();
        // Same bucket (bytes 12..16), different tags, times 1..=WAYS+1.
        let key = |i: u8| {
            let mut k = [0u8; 16];
            k[0] = i;
            k
        };
        for i in 0..=WAYS as u8 {
            assert!(c.insert(&key(i), u32::from(i) + 1));
        }
        // Tag 0 (the oldest) was evicted; the newer ones are remembered.
        assert!(c.insert(&key(0), 50));
        for i in 2..=WAYS as u8 {
            assert!(!c.insert(&key(i), 60));
        }
    }
}
