//! What the relay's and the server's rate limits share: the key a source
//! address counts under, and token buckets. No clock is read here: every
//! call takes `now`, so tests drive time by hand.
//!
//! - [`SourceKey`]: an IPv4 address (an IPv4-mapped IPv6 address counts as
//!   its IPv4 address), or the /64 prefix of an IPv6 address, the unit one
//!   subscriber usually gets: a host cannot dodge a per-source cap by
//!   picking other addresses inside its own /64.
//! - [`TokenBucket`] with its [`Rate`]: `capacity` tokens at most, refilled
//!   continuously at `per_second`; an action takes one token.
//! - [`Buckets`]: a bucket per key. A key without a bucket has a full one,
//!   so a bucket that has refilled completely carries no state and
//!   [`Buckets::forget_full`] drops it; when to sweep, and how many keys to
//!   hold at most, is the caller's policy.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Instant;

/// A source address as limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// The /64 prefix of an IPv6 address.
    V6(u64),
}

impl SourceKey {
    /// IPv4 (or IPv4-mapped) address as is; IPv6 by its /64.
    #[must_use]
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        SourceKey::of(ip)
    }
}

/// How fast a bucket refills and how many tokens it holds at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Tokens held at most (a full bucket).
    pub capacity: f64,
}

/// One token bucket. It does not know its [`Rate`]: the owner passes the
/// same one to every call (a table of buckets keeps one rate for all).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn full(rate: &Rate, now: Instant) -> Self {
        TokenBucket {
            tokens: rate.capacity,
            at: now,
        }
    }

    /// The tokens it holds at `now` (a `now` earlier than the last call
    /// counts as no time passed).
    #[must_use]
    pub fn tokens(&self, rate: &Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.capacity)
    }

    /// Whether it has refilled completely by `now`.
    #[must_use]
    pub fn is_full(&self, rate: &Rate, now: Instant) -> bool {
        self.tokens(rate, now) >= rate.capacity
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        self.tokens = self.tokens(rate, now);
        self.at = self.at.max(now);
    }

    /// Whether a token is there at `now`, without taking it.
    pub fn has_token(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= 1.0
    }

    /// Takes a token if one is there at `now`.
    pub fn try_take(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A token bucket per key, all with one [`Rate`].
#[derive(Debug, Clone)]
pub struct Buckets<K> {
    rate: Rate,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq> Buckets<K> {
    /// An empty table: every key starts with a full bucket.
    #[must_use]
    pub fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// The rate every bucket refills at.
    #[must_use]
    pub fn rate(&self) -> &Rate {
        &self.rate
    }

    /// Whether `key` has a token at `now`, without taking it or
    /// remembering the key.
    pub fn check(&mut self, key: &K, now: Instant) -> bool {
        match self.buckets.get_mut(key) {
            Some(b) => b.has_token(&self.rate, now),
            None => self.rate.capacity >= 1.0,
        }
    }

    /// Takes a token for `key` at `now`; false when none is left. The key
    /// is remembered (the table grows by one for a new key).
    pub fn take(&mut self, key: K, now: Instant) -> bool {
        let rate = self.rate;
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::full(&rate, now))
            .try_take(&rate, now)
    }

    /// Forgets every bucket that has refilled completely by `now` (the
    /// same as no entry at all). Walks the whole table.
    pub fn forget_full(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| !b.is_full(&rate, now));
    }

    /// Whether `key` has a bucket.
    #[must_use]
    pub fn contains(&self, key: &K) -> bool {
        self.buckets.contains_key(key)
    }

    /// Keys with a bucket.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key has a bucket.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn source_keys_group_ipv6_by_64_and_mapped_as_ipv4() {
        let key = |s: &str| SourceKey::of(s.parse().unwrap());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:2"));
        assert_eq!(key("2001:db8::1"), SourceKey::V6(0x2001_0db8_0000_0000));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_eq!(key("10.0.0.1"), SourceKey::V4(0x0a00_0001));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn bucket_spends_its_capacity_then_refills_at_its_rate() {
        let rate = Rate {
            per_second: 2.0,
            capacity: 3.0,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(&rate, t0);
        assert!(b.is_full(&rate, t0));
        let taken = (0..10).filter(|_| b.try_take(&rate, t0)).count();
        assert_eq!(taken, 3);
        assert!(!b.has_token(&rate, t0));
        // Half a second gives one token back; a clock that goes backwards
        // gives nothing.
        assert!(!b.has_token(&rate, t0 + Duration::from_millis(499)));
        assert!(b.has_token(&rate, t0 + Duration::from_millis(500)));
        assert!(b.try_take(&rate, t0 + Duration::from_millis(500)));
        assert!(!b.try_take(&rate, t0));
        // It never holds more than its capacity.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.tokens(&rate, later), 3.0);
        assert!(b.is_full(&rate, later));
    }

    #[test]
    fn table_remembers_only_what_is_not_full() {
        let rate = Rate {
            per_second: 1.0,
            capacity: 2.0,
        };
        let mut t = Buckets::new(rate);
        let t0 = Instant::now();
        assert!(t.check(&"a", t0));
        assert!(t.is_empty(), "check remembers nothing");
        assert!(t.take("a", t0) && t.take("a", t0));
        assert!(!t.take("a", t0) && !t.check(&"a", t0));
        assert!(t.take("b", t0));
        assert_eq!(t.len(), 2);
        t.forget_full(t0 + Duration::from_millis(999));
        assert_eq!(t.len(), 2, "neither is full yet");
        t.forget_full(t0 + Duration::from_secs(1));
        assert!(t.contains(&"a") && !t.contains(&"b"), "b took one token");
        t.forget_full(t0 + Duration::from_secs(2));
        assert!(t.is_empty());
        // An empty bucket cannot act at all.
        let mut none = Buckets::new(Rate {
            per_second: 1.0,
            capacity: 0.0,
        });
        assert!(!none.check(&1, t0) && !none.take(1, t0));
    }
}
