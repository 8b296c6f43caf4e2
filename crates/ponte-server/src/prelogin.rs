//! Connections that have not logged in yet, counted per peer address.
//!
//! Before login a connection costs a slot of `max_connections` for up to the
//! handshake timeout plus the unauthenticated timeout (40 s by default), and
//! proves nothing: without a cap per address, one host opening a few hundred
//! connections a second would hold every slot. The cap counts the socket's
//! peer (not the address a PROXY header claims, which the peer chooses);
//! IPv6 per /64 like the registration limits. A relay on this machine
//! (loopback) is exempt by default: all of its users share its address, and
//! `ponte proxy` caps connections per client address itself.

use ponte_wire::limit::SourceKey;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The counts, shared by the accept loop and the connections' slots.
#[derive(Debug)]
pub(crate) struct PreLogin {
    limit: usize,
    exempt_loopback: bool,
    counts: Mutex<HashMap<SourceKey, usize>>,
}

/// One connection's place in the count, given back when it logs in or ends.
#[derive(Debug)]
pub(crate) struct Slot {
    held: Option<(Arc<PreLogin>, SourceKey)>,
}

impl PreLogin {
    pub fn new(limit: usize, exempt_loopback: bool) -> Arc<Self> {
        Arc::new(Self {
            limit,
            exempt_loopback,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `peer`, or `None` when that address
    /// already has `limit` connections that have not logged in.
    pub fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        if self.exempt_loopback && crate::is_loopback(peer) {
            return Some(Slot { held: None });
        }
        let key = SourceKey::of(peer);
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            held: Some((Arc::clone(self), key)),
        })
    }

    #[cfg(test)]
    fn count(&self, peer: IpAddr) -> usize {
        let key = SourceKey::of(peer);
        self.counts
            .lock()
            .map(|c| c.get(&key).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((table, key)) = self.held.take() {
            if let Ok(mut counts) = table.counts.lock() {
                if let Some(n) = counts.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.remove(&key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_per_address_and_frees_on_drop() {
        let t = PreLogin::new(2, true);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let s1 = t.enter(a);
        let s2 = t.enter(a);
        assert!(s1.is_some() && s2.is_some());
        assert!(t.enter(a).is_none());
        assert!(t.enter(b).is_some(), "another address has its own count");
        drop(s1);
        assert_eq!(t.count(a), 1);
        let s3 = t.enter(a);
        assert!(s3.is_some());
        drop((s2, s3));
        assert_eq!(t.count(a), 0);
        assert!(
            t.counts.lock().is_ok_and(|c| c.is_empty()),
            "no entry left behind"
        );
        // Loopback is exempt unless asked otherwise; an IPv6 /64 is one address.
        let lo: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..10).map(|_| t.enter(lo)).collect();
        assert!(held.iter().all(Option::is_some));
        let strict = PreLogin::new(1, false);
        let _one = strict.enter(lo);
        assert!(strict.enter(lo).is_none());
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::2".parse().unwrap();
        let _kept = strict.enter(x);
        assert!(strict.enter(y).is_none());
    }
}
