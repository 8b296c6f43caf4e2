//! Connection limits: a global cap, per-listener caps, and optional caps on
//! one source address (open connections, and new connections per second).
//!
//! A permit is taken before any work is done for a connection and released
//! when it is dropped, so a refused connection costs one accept and a close.
//! IPv6 sources are grouped by /64, the unit one subscriber usually gets;
//! the source key and the token buckets are [`ponte_wire::limit`]'s, shared
//! with the server.

use crate::config::LimitsConfig;
use crate::metrics::Refusal;
pub use ponte_wire::limit::SourceKey;
use ponte_wire::limit::{Buckets, Rate};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// Shared limit state.
#[derive(Debug)]
pub struct Limits {
    cfg: LimitsConfig,
    open: AtomicUsize,
    per_source: Mutex<HashMap<SourceKey, u32>>,
    /// The per-source rate buckets and when they were last swept.
    buckets: Mutex<(Buckets<SourceKey>, Instant)>,
}

/// A connection counter that can refuse (global or per listener).
#[derive(Debug, Default)]
pub struct Counter {
    open: AtomicUsize,
}

impl Counter {
    fn try_inc(&self, max: usize) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
    fn dec(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
    /// Open now.
    pub fn get(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Held for the life of a connection.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    listener: Arc<Counter>,
    source: Option<SourceKey>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.listener.dec();
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = self.source {
            let mut map = lock(&self.limits.per_source);
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Rate buckets are swept of full (idle) entries at most this often.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Limits {
    /// New limits.
    pub fn new(cfg: LimitsConfig) -> Arc<Limits> {
        // A source may open `rate` connections a second, plus a burst.
        let rate = Rate {
            per_second: f64::from(cfg.per_source_rate),
            capacity: f64::from(cfg.per_source_rate) + f64::from(cfg.per_source_burst),
        };
        Arc::new(Limits {
            cfg,
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            buckets: Mutex::new((Buckets::new(rate), Instant::now())),
        })
    }

    /// Connections open across all listeners.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Take the global and listener slots.
    pub fn admit(
        self: &Arc<Self>,
        listener: &Arc<Counter>,
        listener_max: Option<u32>,
    ) -> Result<Permit, Refusal> {
        let max = self.cfg.max_connections as usize;
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refusal::MaxConnections);
        }
        if !listener.try_inc(listener_max.map_or(usize::MAX, |m| m as usize)) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ListenerMaxConnections);
        }
        Ok(Permit {
            limits: Arc::clone(self),
            listener: Arc::clone(listener),
            source: None,
        })
    }

    /// Apply the per-source caps for `ip` to a permit (once per connection).
    pub fn admit_source(&self, permit: &mut Permit, ip: IpAddr) -> Result<(), Refusal> {
        let key = SourceKey::of(ip);
        if self.cfg.per_source_rate > 0 && !self.take_token(key) {
            return Err(Refusal::PerSourceRate);
        }
        if self.cfg.per_source_connections > 0 && permit.source.is_none() {
            let mut map = lock(&self.per_source);
            let n = map.entry(key).or_insert(0);
            if *n >= self.cfg.per_source_connections {
                if *n == 0 {
                    map.remove(&key);
                }
                return Err(Refusal::PerSourceConnections);
            }
            *n += 1;
            permit.source = Some(key);
        }
        Ok(())
    }

    fn take_token(&self, key: SourceKey) -> bool {
        let now = Instant::now();
        let mut g = lock(&self.buckets);
        let (buckets, swept) = &mut *g;
        if now.duration_since(*swept) >= SWEEP_EVERY {
            buckets.forget_full(now.into_std());
            *swept = now;
        }
        buckets.take(key, now.into_std())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(max: u32, per_source: u32, rate: u32, burst: u32) -> LimitsConfig {
        LimitsConfig {
            max_connections: max,
            per_source_connections: per_source,
            per_source_rate: rate,
            per_source_burst: burst,
        }
    }

    #[test]
    fn global_and_listener_caps_release_on_drop() {
        let l = Limits::new(cfg(2, 0, 0, 0));
        let a = Arc::new(Counter::default());
        let p1 = l.admit(&a, Some(1)).unwrap();
        assert_eq!(
            l.admit(&a, Some(1)).unwrap_err(),
            Refusal::ListenerMaxConnections
        );
        let b = Arc::new(Counter::default());
        let p2 = l.admit(&b, None).unwrap();
        assert_eq!(l.admit(&b, None).unwrap_err(), Refusal::MaxConnections);
        drop(p1);
        assert_eq!(l.open(), 1);
        let _p3 = l.admit(&a, Some(1)).unwrap();
        drop(p2);
        assert_eq!(b.get(), 0);
    }

    #[test]
    fn per_source_cap_groups_ipv6_by_64() {
        let l = Limits::new(cfg(100, 2, 0, 0));
        let c = Arc::new(Counter::default());
        let ip1: IpAddr = "2001:db8::1".parse().unwrap();
        let ip2: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let mut p1 = l.admit(&c, None).unwrap();
        l.admit_source(&mut p1, ip1).unwrap();
        let mut p2 = l.admit(&c, None).unwrap();
        l.admit_source(&mut p2, ip2).unwrap();
        let mut p3 = l.admit(&c, None).unwrap();
        assert_eq!(
            l.admit_source(&mut p3, ip1).unwrap_err(),
            Refusal::PerSourceConnections
        );
        l.admit_source(&mut p3, other).unwrap();
        drop(p1);
        let mut p4 = l.admit(&c, None).unwrap();
        l.admit_source(&mut p4, ip2).unwrap();
        assert_eq!(
            SourceKey::of("::ffff:10.0.0.1".parse().unwrap()),
            SourceKey::of("10.0.0.1".parse().unwrap())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_refills() {
        let l = Limits::new(cfg(100, 0, 2, 1));
        let c = Arc::new(Counter::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut ok = 0;
        for _ in 0..10 {
            let mut p = l.admit(&c, None).unwrap();
            if l.admit_source(&mut p, ip).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 3, "rate 2 + burst 1");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let mut p = l.admit(&c, None).unwrap();
        assert!(l.admit_source(&mut p, ip).is_ok());
    }
}
