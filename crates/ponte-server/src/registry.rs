//! Devices online now: one entry per logged-in account, so a committed
//! message can be handed to the recipient's connection, and a second
//! connection of the same device replaces (kicks) the first.
//!
//! The registry is the store's [`Sink`]: committed items go to the
//! connection in memory (a small bounded inbox per device), in commit
//! order, and the connection pushes them without reading them back from the
//! database. When the inbox overflows, or an item was stored without being
//! handed over (an expiry notice), the connection is told to read its
//! mailbox from the database instead.
//!
//! A group message committed for many recipients reaches each inbox as its
//! own item, all sharing one body (`Bytes`): a fan-out to 1,024 online
//! members holds the body once in memory, not 1,024 times.

use crate::store::{AccountId, Committed, MailItem, Sink};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Items held for one connection before it falls back to the database.
pub(crate) const INBOX_CAP: usize = 256;

/// Message bytes held for one connection before it falls back to the
/// database: 256 maximal bodies would be 16 MiB per connection that does
/// not acknowledge (and so does not take items out).
pub(crate) const INBOX_BYTES_CAP: usize = 1024 * 1024;

/// Committed items waiting to be pushed by the connection.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// In hand-over order (not necessarily seq order).
    pub items: VecDeque<MailItem>,
    /// Items were stored that are not in `items`: read the database.
    pub read_db: bool,
    /// Body bytes in `items`.
    bytes: usize,
}

/// The wake-up handles of one logged-in connection.
#[derive(Debug, Default)]
pub(crate) struct Online {
    conn_id: u64,
    /// New mailbox items may be there.
    pub wake: Notify,
    /// A newer connection of the same device took over.
    pub kicked: Notify,
    /// The one-time key count fell below the low-water mark.
    pub key_count_low: AtomicBool,
    /// Items handed over in memory.
    inbox: Mutex<Inbox>,
}

impl Online {
    /// Takes up to `max` items; the flag says the database must be read
    /// (and clears it, dropping the held items, which the read covers).
    pub fn take(&self, max: usize) -> (Vec<MailItem>, bool) {
        let Ok(mut inbox) = self.inbox.lock() else {
            return (Vec::new(), true);
        };
        if inbox.read_db {
            inbox.read_db = false;
            inbox.items = VecDeque::new();
            inbox.bytes = 0;
            return (Vec::new(), true);
        }
        let n = max.min(inbox.items.len());
        let taken: Vec<MailItem> = inbox.items.drain(..n).collect();
        let taken_bytes: usize = taken.iter().map(|i| i.body.len()).sum();
        inbox.bytes = inbox.bytes.saturating_sub(taken_bytes);
        if inbox.items.is_empty() && inbox.items.capacity() > 0 {
            // An idle connection keeps no buffer.
            inbox.items = VecDeque::new();
        }
        (taken, false)
    }

    fn hand_over(&self, item: Option<MailItem>) {
        if let Ok(mut inbox) = self.inbox.lock() {
            match item {
                Some(item)
                    if !inbox.read_db
                        && inbox.items.len() < INBOX_CAP
                        && inbox.bytes + item.body.len() <= INBOX_BYTES_CAP =>
                {
                    inbox.bytes += item.body.len();
                    inbox.items.push_back(item);
                }
                _ => {
                    inbox.read_db = true;
                    inbox.items = VecDeque::new();
                    inbox.bytes = 0;
                }
            }
        }
        self.wake.notify_one();
    }
}

/// Online devices by account.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<AccountId, Arc<Online>>>,
    /// The bus of a service on several nodes, told of every login.
    bus: std::sync::OnceLock<std::sync::Weak<crate::bus::Bus>>,
}

impl Registry {
    /// Marks `account` online on connection `conn_id`, kicking an older one.
    pub fn login(&self, account: AccountId, conn_id: u64) -> Arc<Online> {
        let online = Arc::new(Online {
            conn_id,
            ..Online::default()
        });
        let old = match self.map.lock() {
            Ok(mut m) => m.insert(account, Arc::clone(&online)),
            Err(_) => None,
        };
        if let Some(old) = old {
            if old.conn_id != conn_id {
                old.kicked.notify_one();
            }
        }
        if let Some(bus) = self.bus.get().and_then(std::sync::Weak::upgrade) {
            bus.logged_in(account);
        }
        online
    }

    /// Tells every login from now on to `bus` (once).
    pub fn attach_bus(&self, bus: &Arc<crate::bus::Bus>) {
        let _ = self.bus.set(Arc::downgrade(bus));
    }

    /// Whether `account` has a connection here.
    pub fn is_online(&self, account: AccountId) -> bool {
        self.map.lock().is_ok_and(|m| m.contains_key(&account))
    }

    /// Closes the connection of `account` here (a newer one is elsewhere).
    pub fn kick(&self, account: AccountId) {
        let old = self.map.lock().ok().and_then(|mut m| m.remove(&account));
        if let Some(old) = old {
            old.kicked.notify_one();
        }
    }

    /// Tells every connection here to read its mailbox (the catch-up read
    /// of a service on several nodes).
    pub fn wake_all(&self) {
        let all: Vec<Arc<Online>> = match self.map.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        for o in all {
            o.hand_over(None);
        }
    }

    /// Removes the entry if it still belongs to `conn_id`.
    pub fn logout(&self, account: AccountId, conn_id: u64) {
        if let Ok(mut m) = self.map.lock() {
            if m.get(&account).is_some_and(|o| o.conn_id == conn_id) {
                m.remove(&account);
            }
        }
    }

    fn get(&self, account: AccountId) -> Option<Arc<Online>> {
        self.map.lock().ok()?.get(&account).cloned()
    }

    /// Hands a committed item to the account's connection, if online.
    #[cfg(test)]
    pub fn deliver(&self, account: AccountId, item: MailItem) {
        if let Some(o) = self.get(account) {
            o.hand_over(Some(item));
        }
    }

    /// Tells the account's connection, if online, to read its mailbox.
    pub fn wake(&self, account: AccountId) {
        if let Some(o) = self.get(account) {
            o.hand_over(None);
        }
    }

    /// Tells the account's connection to push its key count.
    pub fn key_count_low(&self, account: AccountId) {
        if let Some(o) = self.get(account) {
            o.key_count_low.store(true, Ordering::Release);
            o.wake.notify_one();
        }
    }
}

impl Sink for Registry {
    /// Looks up every owner under one lock of the map (a group message is
    /// up to 1,024 items in one batch), then hands over outside it.
    fn committed(&self, items: Vec<Committed>) {
        let targets: Vec<(Arc<Online>, Option<MailItem>)> = {
            let Ok(map) = self.map.lock() else {
                return;
            };
            items
                .into_iter()
                .filter_map(|c| match c {
                    Committed::Item { owner, item } => {
                        map.get(&owner).map(|o| (Arc::clone(o), Some(item)))
                    }
                    Committed::Wake(account) => map.get(&account).map(|o| (Arc::clone(o), None)),
                })
                .collect()
        };
        for (online, item) in targets {
            online.hand_over(item);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{ItemKind, Seq, UnixMillis};
    use bytes::Bytes;

    fn item(seq: u64) -> MailItem {
        MailItem {
            seq: Seq(seq),
            kind: ItemKind::Message,
            message_id: Bytes::from_static(&[0; 16]),
            body: Bytes::new(),
            at: UnixMillis(0),
            peer_handle: "alice".into(),
            group_id: None,
        }
    }

    /// A committed fan-out reaches every online member's inbox in one
    /// hand-over, each item pointing at the same body bytes; offline
    /// members are skipped (the database has their entries).
    #[test]
    fn a_fan_out_shares_one_body_across_inboxes() {
        let reg = Registry::default();
        let members: Vec<Arc<Online>> = (1..=10).map(|a| reg.login(a, a as u64)).collect();
        let body = Bytes::from(vec![7u8; 4096]);
        let group = Bytes::from_static(&[5; 16]);
        let items = (1..=12)
            .map(|owner| Committed::Item {
                owner,
                item: MailItem {
                    body: body.clone(),
                    group_id: Some(group.clone()),
                    ..item(100 + owner as u64)
                },
            })
            .collect();
        reg.committed(items);
        for (i, m) in members.iter().enumerate() {
            let (got, read_db) = m.take(10);
            assert!(!read_db);
            assert_eq!(got.len(), 1, "member {i}");
            assert_eq!(got[0].seq, Seq(101 + i as u64));
            assert_eq!(got[0].group_id.as_ref(), Some(&group));
            assert_eq!(
                got[0].body.as_ptr(),
                body.as_ptr(),
                "member {i}: body copied"
            );
        }
    }

    #[test]
    fn inbox_hands_over_in_order_then_falls_back_to_the_database() {
        let reg = Registry::default();
        let online = reg.login(7, 1);
        reg.deliver(7, item(3));
        reg.deliver(7, item(5));
        reg.deliver(8, item(9)); // not online: dropped, the database has it
        let (got, read_db) = online.take(10);
        assert!(!read_db);
        assert_eq!(got.iter().map(|i| i.seq.0).collect::<Vec<_>>(), vec![3, 5]);
        // Overflow: the held items are dropped and the database is read.
        for seq in 0..=INBOX_CAP as u64 {
            reg.deliver(7, item(100 + seq));
        }
        let (got, read_db) = online.take(10);
        assert!(got.is_empty() && read_db);
        let (got, read_db) = online.take(10);
        assert!(got.is_empty() && !read_db);
    }

    /// A connection that takes nothing holds at most about 1 MiB of bodies
    /// in memory (not 256 maximal bodies); past that it reads the database.
    #[test]
    fn inbox_is_bounded_in_bytes_too() {
        let reg = Registry::default();
        let online = reg.login(7, 1);
        let big = |seq: u64| MailItem {
            body: Bytes::from(vec![0u8; 64 * 1024]),
            ..item(seq)
        };
        for seq in 0..16 {
            reg.deliver(7, big(seq));
        }
        assert_eq!(online.inbox.lock().unwrap().bytes, INBOX_BYTES_CAP);
        // Taking frees the room again.
        let (got, read_db) = online.take(4);
        assert_eq!((got.len(), read_db), (4, false));
        for seq in 16..20 {
            reg.deliver(7, big(seq));
        }
        let (got, read_db) = online.take(100);
        assert_eq!((got.len(), read_db), (16, false));
        // One more byte than fits: the database is read instead.
        for seq in 20..36 {
            reg.deliver(7, big(seq));
        }
        reg.deliver(
            7,
            MailItem {
                body: Bytes::from_static(b"x"),
                ..item(36)
            },
        );
        let (got, read_db) = online.take(100);
        assert!(got.is_empty() && read_db);
        assert_eq!(online.inbox.lock().unwrap().bytes, 0);
    }

    #[test]
    fn take_respects_the_limit_and_wake_means_read_the_database() {
        let reg = Registry::default();
        let online = reg.login(1, 1);
        for seq in 1..=5 {
            reg.deliver(1, item(seq));
        }
        assert_eq!(online.take(2).0.len(), 2);
        reg.wake(1);
        let (got, read_db) = online.take(10);
        assert!(got.is_empty() && read_db);
        // A newer connection of the same device kicks the old one and gets
        // its own inbox.
        let newer = reg.login(1, 2);
        reg.deliver(1, item(9));
        assert_eq!(newer.take(10).0.len(), 1);
        assert!(online.take(10).0.is_empty());
        reg.logout(1, 1); // stale logout: ignored
        reg.deliver(1, item(10));
        assert_eq!(newer.take(10).0.len(), 1);
    }
}
