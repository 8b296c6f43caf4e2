//! The bus between the nodes of a service on PostgreSQL (`--bus
//! nats://HOST:PORT`): wake-ups and presence over NATS. It never carries
//! the only copy of anything: PostgreSQL holds every item, and a lost
//! notice costs latency (the periodic catch-up read finds the item), not
//! the item.
//!
//! - **Presence**: a JetStream key-value bucket ([`PRESENCE_BUCKET`]),
//!   account id → `NODE LOGIN_MICROS`, written at every login and
//!   refreshed every [`REFRESH`] while the device stays; entries expire
//!   after [`PRESENCE_TTL`] (a node that died stops refreshing). Every node
//!   watches the bucket: when another node records a newer login of a
//!   device connected here, the connection here is closed (the newest
//!   connection of a device wins, as on one node).
//! - **Wake-ups**: after a commit, the node publishes on
//!   `ponte.wake.NODE` the ids of the accounts that got items and are
//!   online on that other node (eight bytes each, big-endian). The node
//!   holding the connection tells it to read its mailbox past its cursor.
//!
//! Publishing never blocks the commit path: notices go through a bounded
//! queue to a publishing task, and are dropped when it is full or NATS is
//! away.

use crate::registry::Registry;
use crate::store::{AccountId, Committed, Sink};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The key-value bucket of presence entries.
pub const PRESENCE_BUCKET: &str = "ponte-presence";
/// How long a presence entry lives without a refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// How often a node refreshes the entries of its connected devices.
pub const REFRESH: Duration = Duration::from_secs(20);
/// Wake-ups and presence writes waiting to be published.
const QUEUE: usize = 65_536;
/// Most account ids in one wake-up message.
const WAKE_BATCH: usize = 4096;

/// Why the bus could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus address is not a NATS address.
    #[error("not a NATS address (nats://HOST:PORT)")]
    Address,
    /// NATS could not be reached.
    #[error("cannot connect to NATS")]
    Connect(#[source] async_nats::ConnectError),
    /// The presence bucket could not be created or opened (is JetStream
    /// enabled on the NATS server?).
    #[error(
        "cannot open the JetStream key-value bucket {PRESENCE_BUCKET} (is JetStream enabled?)"
    )]
    Bucket(#[source] async_nats::Error),
}

/// Checks a `bus` value: `nats://HOST:PORT`.
pub fn check_address(s: &str) -> Result<String, String> {
    match s.parse::<async_nats::ServerAddr>() {
        Ok(_) if s.starts_with("nats://") => Ok(s.to_owned()),
        _ => Err("not a NATS address: give nats://HOST:PORT".to_owned()),
    }
}

enum Outgoing {
    /// Items were stored for this account, online on another node.
    Wake(AccountId),
    /// This account logged in here.
    Login(AccountId),
}

/// A node's end of the bus.
pub(crate) struct Bus {
    node: String,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    registry: Arc<Registry>,
    /// Where each account's newest connection is, as the bucket says.
    presence: Mutex<HashMap<AccountId, String>>,
    /// Accounts connected here, with their login time (µs since the epoch).
    mine: Mutex<HashMap<AccountId, u64>>,
    out: mpsc::Sender<Outgoing>,
    out_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("node", &self.node).finish()
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Makes the presence bucket's stream unless it exists: at start, and
/// again after a failure (a NATS restart loses a memory stream). It is
/// made here as a key-value bucket's is, because `create_key_value` first
/// reads account details that NATS 2.9 answers in a form the client does
/// not parse. Presence is soft state: memory storage, rebuilt by the
/// refreshes.
async fn ensure_bucket(js: &async_nats::jetstream::Context) {
    let stream = async_nats::jetstream::stream::Config {
        name: format!("KV_{PRESENCE_BUCKET}"),
        subjects: vec![format!("$KV.{PRESENCE_BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: PRESENCE_TTL,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    };
    if let Err(e) = js.get_or_create_stream(stream).await {
        tracing::debug!("bus: presence bucket not made: {e}");
    }
}

fn wake_subject(node: &str) -> String {
    format!("ponte.wake.{node}")
}

impl Bus {
    /// Connects to NATS at `address` and opens (or creates) the presence
    /// bucket.
    pub(crate) async fn connect(
        address: &str,
        registry: Arc<Registry>,
    ) -> Result<Arc<Self>, BusError> {
        let addr: async_nats::ServerAddr = address.parse().map_err(|_| BusError::Address)?;
        let node = format!("{:016x}", rand::random::<u64>());
        let client = async_nats::ConnectOptions::new()
            .name(format!("ponte-server {node}"))
            .connection_timeout(Duration::from_secs(5))
            .connect(addr)
            .await
            .map_err(BusError::Connect)?;
        let js = async_nats::jetstream::new(client.clone());
        ensure_bucket(&js).await;
        let kv = js
            .get_key_value(PRESENCE_BUCKET)
            .await
            .map_err(|e| BusError::Bucket(e.into()))?;
        let (out, out_rx) = mpsc::channel(QUEUE);
        Ok(Arc::new(Self {
            node,
            client,
            js,
            kv,
            registry,
            presence: Mutex::default(),
            mine: Mutex::default(),
            out,
            out_rx: Mutex::new(Some(out_rx)),
        }))
    }

    /// Whether NATS is connected now (for `/healthz`).
    pub(crate) fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// A device logged in here: record it (from the registry, never
    /// blocking).
    pub(crate) fn logged_in(&self, account: AccountId) {
        let _ = self.out.try_send(Outgoing::Login(account));
    }

    /// Queues wake-ups for the accounts of a committed batch that are not
    /// online here but are on another node.
    fn notify(&self, accounts: &[AccountId]) {
        let Ok(presence) = self.presence.lock() else {
            return;
        };
        for a in accounts {
            if presence.get(a).is_some_and(|n| *n != self.node) {
                let _ = self.out.try_send(Outgoing::Wake(*a));
            }
        }
    }

    /// Runs the bus's tasks until `stop`: the wake-up subscriber, the
    /// presence watcher, the publisher and the refresher.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(out_rx) = self.out_rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = Arc::clone(&self).receive_wakes() => {}
            _ = Arc::clone(&self).watch_presence(stop.clone()) => {}
            _ = Arc::clone(&self).publish(out_rx) => {}
            _ = Arc::clone(&self).refresh() => {}
        }
    }

    /// Wake-ups for this node: each account's connection reads its mailbox.
    async fn receive_wakes(self: Arc<Self>) {
        loop {
            match self.client.subscribe(wake_subject(&self.node)).await {
                Ok(mut sub) => {
                    while let Some(msg) = sub.next().await {
                        for chunk in msg.payload.chunks_exact(8) {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(chunk);
                            self.registry.wake(i64::from_be_bytes(b));
                        }
                    }
                }
                Err(e) => tracing::warn!("bus: cannot subscribe to wake-ups: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Follows the presence bucket; closes a connection here when another
    /// node records a newer login of the same device.
    async fn watch_presence(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            ensure_bucket(&self.js).await;
            match self.kv.watch_all().await {
                Ok(mut watch) => {
                    while let Some(entry) = watch.next().await {
                        match entry {
                            Ok(e) => self.presence_changed(&e),
                            Err(e) => {
                                tracing::warn!("bus: presence watch: {e}");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("bus: cannot watch presence: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn presence_changed(&self, e: &kv::Entry) {
        let Ok(account) = e.key.parse::<AccountId>() else {
            return;
        };
        let Ok(mut presence) = self.presence.lock() else {
            return;
        };
        if !matches!(e.operation, kv::Operation::Put) {
            presence.remove(&account);
            return;
        }
        let text = String::from_utf8_lossy(&e.value);
        let mut parts = text.split(' ');
        let (Some(node), Some(at)) = (
            parts.next(),
            parts.next().and_then(|t| t.parse::<u64>().ok()),
        ) else {
            return;
        };
        presence.insert(account, node.to_owned());
        drop(presence);
        if node == self.node {
            return;
        }
        let older_here = self
            .mine
            .lock()
            .ok()
            .and_then(|mut mine| match mine.get(&account) {
                Some(&here) if here < at => mine.remove(&account),
                _ => None,
            })
            .is_some();
        if older_here {
            self.registry.kick(account);
        }
    }

    /// Publishes queued presence writes and wake-ups (wake-ups batched per
    /// node).
    async fn publish(self: Arc<Self>, mut rx: mpsc::Receiver<Outgoing>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < WAKE_BATCH {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            let mut wakes: HashMap<String, Vec<u8>> = HashMap::new();
            let mut woken: HashSet<AccountId> = HashSet::new();
            for o in batch {
                match o {
                    Outgoing::Login(account) => {
                        let at = now_micros();
                        if let Ok(mut mine) = self.mine.lock() {
                            mine.insert(account, at);
                        }
                        let _ = self.put_presence(account, at).await;
                    }
                    Outgoing::Wake(account) => {
                        if !woken.insert(account) {
                            continue;
                        }
                        let node = self
                            .presence
                            .lock()
                            .ok()
                            .and_then(|p| p.get(&account).cloned());
                        if let Some(node) = node.filter(|n| *n != self.node) {
                            wakes
                                .entry(node)
                                .or_default()
                                .extend_from_slice(&account.to_be_bytes());
                        }
                    }
                }
            }
            for (node, ids) in wakes {
                if let Err(e) = self
                    .client
                    .publish(wake_subject(&node), Bytes::from(ids))
                    .await
                {
                    tracing::debug!("bus: wake-up not published: {e}");
                }
            }
        }
    }

    /// Records `account` here; false if that failed.
    async fn put_presence(&self, account: AccountId, at: u64) -> bool {
        let value = Bytes::from(format!("{} {at}", self.node));
        match self.kv.put(account.to_string(), value).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("bus: presence not recorded: {e}");
                false
            }
        }
    }

    /// Keeps the presence entries of devices still connected here alive;
    /// forgets those that left.
    async fn refresh(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let here: Vec<(AccountId, u64)> = match self.mine.lock() {
                Ok(mut mine) => {
                    mine.retain(|a, _| self.registry.is_online(*a));
                    mine.iter().map(|(a, t)| (*a, *t)).collect()
                }
                Err(_) => continue,
            };
            let mut failed = false;
            for (account, at) in here {
                if !failed && !self.put_presence(account, at).await {
                    // The bucket may be gone with a NATS restart: make it
                    // again, and the next refresh fills it.
                    failed = true;
                    ensure_bucket(&self.js).await;
                }
            }
        }
    }
}

/// The store's sink on a service of several nodes: every committed item
/// becomes a wake-up (the connection reads its mailbox, which holds items
/// other nodes stored too, in seq order: pushing from memory could move
/// the connection's cursor past an item another node committed just
/// before), here through the registry and, for devices on other nodes,
/// over the bus.
#[derive(Debug)]
pub(crate) struct ServiceSink {
    pub registry: Arc<Registry>,
    pub bus: Option<Arc<Bus>>,
}

impl Sink for ServiceSink {
    fn committed(&self, items: Vec<Committed>) {
        let mut owners: Vec<AccountId> = Vec::new();
        let mut seen: HashSet<AccountId> = HashSet::new();
        for c in items {
            let owner = match c {
                Committed::Item { owner, .. } | Committed::Wake(owner) => owner,
            };
            if seen.insert(owner) {
                owners.push(owner);
            }
        }
        let (here, elsewhere): (Vec<AccountId>, Vec<AccountId>) = owners
            .into_iter()
            .partition(|a| self.registry.is_online(*a));
        self.registry
            .committed(here.into_iter().map(Committed::Wake).collect());
        if let Some(bus) = &self.bus {
            bus.notify(&elsewhere);
        }
    }
}
