//! Devices online now: one entry per logged-in account, so a committed
//! message can wake the recipient's connection, and a second connection of
//! the same device replaces (kicks) the first.

use crate::store::AccountId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

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
}

/// Online devices by account.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<AccountId, Arc<Online>>>,
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
        online
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

    /// Wakes the account's connection, if online.
    pub fn wake(&self, account: AccountId) {
        if let Some(o) = self.get(account) {
            o.wake.notify_one();
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
