//! Token buckets per IP address, for registrations. The table is bounded:
//! full (idle) buckets are forgotten when it grows, and past the bound new
//! addresses are refused rather than remembered.

use crate::config::RateLimit;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most addresses tracked at once.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A set of token buckets keyed by address.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    /// A limiter with the given rate.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let per_sec = f64::from(self.limit.per_hour) / 3600.0;
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * per_sec).min(f64::from(self.limit.burst));
        b.last = now;
    }

    /// Whether `addr` may act now (true would take a token). Does not take it.
    pub fn check(&self, addr: IpAddr, now: Instant) -> bool {
        let Ok(mut map) = self.buckets.lock() else {
            return false;
        };
        match map.get_mut(&addr) {
            Some(b) => {
                self.refill(b, now);
                b.tokens >= 1.0
            }
            None => self.limit.burst >= 1 && map.len() < MAX_ENTRIES,
        }
    }

    /// Takes a token for `addr`; false when none is left.
    pub fn take(&self, addr: IpAddr, now: Instant) -> bool {
        let Ok(mut map) = self.buckets.lock() else {
            return false;
        };
        if !map.contains_key(&addr) && map.len() >= MAX_ENTRIES {
            let burst = f64::from(self.limit.burst);
            let mut entries: Vec<(IpAddr, Bucket)> = map.drain().collect();
            for (_, b) in entries.iter_mut() {
                self.refill(b, now);
            }
            map.extend(entries.into_iter().filter(|(_, b)| b.tokens < burst));
            if map.len() >= MAX_ENTRIES {
                return false;
            }
        }
        let b = map.entry(addr).or_insert(Bucket {
            tokens: f64::from(self.limit.burst),
            last: now,
        });
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
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
}
