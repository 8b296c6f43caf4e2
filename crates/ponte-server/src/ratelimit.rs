//! Token buckets per IP address, for registrations. The table is bounded:
//! full (idle) buckets are forgotten when it grows, and past the bound new
//! addresses are refused rather than remembered. IPv6 addresses count per
//! /64 (one host usually has a whole /64), IPv4-mapped ones as IPv4: the
//! key and the buckets are [`ponte_wire::limit`]'s, shared with the relay.
//!
//! These count on one node. A service of several nodes counts in its
//! store instead (`Store::shared_token`, a table in PostgreSQL), so that
//! an address gets its burst once for the whole service, not once per
//! node; the registration request asks the store first.

use crate::config::RateLimit;
use ponte_wire::limit::{Buckets, SourceKey};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses tracked at once.
const MAX_ENTRIES: usize = 100_000;

/// A full table that had nothing idle to forget is not swept again for this
/// long (a sweep walks every entry; under a flood of new addresses it
/// would otherwise run on every attempt).
const SWEEP_GAP: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Table {
    buckets: Buckets<SourceKey>,
    /// When a sweep last left the table full.
    full_since: Option<Instant>,
}

/// A set of token buckets keyed by address.
#[derive(Debug)]
pub struct Limiter {
    table: Mutex<Table>,
}

impl Limiter {
    /// A limiter with the given rate.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            table: Mutex::new(Table {
                buckets: Buckets::new(limit.rate()),
                full_since: None,
            }),
        }
    }

    /// Whether `addr` may act now (true would take a token). Does not take
    /// it. An address not in the table has a full bucket; whether there is
    /// room to remember it is [`Limiter::take`]'s business.
    pub fn check(&self, addr: IpAddr, now: Instant) -> bool {
        let Ok(mut t) = self.table.lock() else {
            return false;
        };
        t.buckets.check(&SourceKey::of(addr), now)
    }

    /// Takes a token for `addr`; false when none is left, or when the table
    /// is full of addresses that are not idle.
    pub fn take(&self, addr: IpAddr, now: Instant) -> bool {
        let key = SourceKey::of(addr);
        let Ok(mut t) = self.table.lock() else {
            return false;
        };
        if !t.buckets.contains(&key) && t.buckets.len() >= MAX_ENTRIES {
            let recently = t
                .full_since
                .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_GAP);
            if !recently {
                // Forget the buckets that refilled: they are the same as
                // no entry at all.
                t.buckets.forget_full(now);
                t.full_since = (t.buckets.len() >= MAX_ENTRIES).then_some(now);
            }
            if t.buckets.len() >= MAX_ENTRIES {
                return false;
            }
        }
        t.buckets.take(key, now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let l = Limiter::new(RateLimit {
            burst: 2,
            per_hour: 3600,
        });
        let ip: IpAddr = [192, 0, 2, 1].into();
        let t0 = Instant::now();
        assert!(l.check(ip, t0));
        assert!(l.take(ip, t0));
        assert!(l.take(ip, t0));
        assert!(!l.check(ip, t0));
        assert!(!l.take(ip, t0));
        let other: IpAddr = [192, 0, 2, 2].into();
        assert!(l.take(other, t0));
        assert!(l.take(ip, t0 + Duration::from_secs(1)));
    }

    /// A table filled by 100,000 addresses does not lock out new ones once
    /// those have gone idle (before, `check` refused every new address for
    /// good, and the sweep in `take` was never reached).
    #[test]
    fn a_full_table_of_idle_addresses_makes_room() {
        let l = Limiter::new(RateLimit {
            burst: 5,
            per_hour: 10,
        });
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES as u32 {
            assert!(l.take(IpAddr::from(i.to_be_bytes()), t0));
        }
        let newcomer: IpAddr = [203, 0, 113, 7].into();
        // All busy: the newcomer is refused (the table stays bounded)...
        assert!(!l.take(newcomer, t0));
        // ...and the next sweep waits a moment.
        assert!(!l.take(newcomer, t0 + Duration::from_millis(10)));
        // An hour later they have all refilled: room again.
        let later = t0 + Duration::from_secs(3600);
        assert!(l.check(newcomer, later));
        assert!(l.take(newcomer, later));
        assert!(l.table.lock().unwrap().buckets.len() <= 2);
    }

    /// One host with a /64 counts once; IPv4-mapped addresses count as IPv4.
    #[test]
    fn ipv6_counts_per_64_and_mapped_as_ipv4() {
        let l = Limiter::new(RateLimit {
            burst: 2,
            per_hour: 1,
        });
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1234:5678:9abc".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.take(a, t0));
        assert!(l.take(b, t0));
        assert!(!l.check(a, t0) && !l.take(b, t0));
        assert!(l.take(other, t0));
        let v4: IpAddr = [192, 0, 2, 9].into();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert!(l.take(v4, t0) && l.take(mapped, t0));
        assert!(!l.check(v4, t0));
    }
}
