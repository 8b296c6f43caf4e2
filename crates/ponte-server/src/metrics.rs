//! Server metrics (Prometheus text format on the admin port): aggregate
//! counters only, never a handle or an address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

/// All counters of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted by the listener.
    pub connections_accepted: Counter,
    /// Connections open now.
    pub connections_open: Gauge,
    /// Connections open now that finished the handshake.
    pub sessions_open: Gauge,
    /// Logged-in connections now.
    pub online_devices: Gauge,
    closed: Family<ReasonLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    /// Frames received inside Noise.
    pub frames_in: Counter,
    /// Accounts created.
    pub registrations: Counter,
    /// Messages made durable.
    pub messages_accepted: Counter,
    /// Duplicate sends (same id) answered again.
    pub messages_duplicate: Counter,
    /// Mailbox items pushed to devices.
    pub items_pushed: Counter,
    /// Messages acknowledged by their recipient.
    pub messages_acked: Counter,
    /// Messages expired undelivered.
    pub messages_expired: Counter,
    /// Keys claimed.
    pub keys_claimed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ponte_server");
        let m = Self {
            connections_accepted: Counter::default(),
            connections_open: Gauge::default(),
            sessions_open: Gauge::default(),
            online_devices: Gauge::default(),
            closed: Family::default(),
            errors: Family::default(),
            frames_in: Counter::default(),
            registrations: Counter::default(),
            messages_accepted: Counter::default(),
            messages_duplicate: Counter::default(),
            items_pushed: Counter::default(),
            messages_acked: Counter::default(),
            messages_expired: Counter::default(),
            keys_claimed: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_accepted",
            "TCP connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_open",
            "TCP connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "sessions_open",
            "Connections past the Noise handshake now",
            m.sessions_open.clone(),
        );
        registry.register(
            "online_devices",
            "Logged-in devices now",
            m.online_devices.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed, by reason",
            m.closed.clone(),
        );
        registry.register("errors", "Error responses, by code", m.errors.clone());
        registry.register("frames_received", "Frames received", m.frames_in.clone());
        registry.register("registrations", "Accounts created", m.registrations.clone());
        registry.register(
            "messages_accepted",
            "Messages made durable and acknowledged to the sender",
            m.messages_accepted.clone(),
        );
        registry.register(
            "messages_duplicate",
            "Resent messages recognised by id",
            m.messages_duplicate.clone(),
        );
        registry.register(
            "mailbox_items_pushed",
            "Messages, receipts and notices pushed to devices",
            m.items_pushed.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages acknowledged by the recipient device",
            m.messages_acked.clone(),
        );
        registry.register(
            "messages_expired",
            "Messages expired undelivered",
            m.messages_expired.clone(),
        );
        registry.register("keys_claimed", "Keys claimed", m.keys_claimed.clone());
        Self { registry, ..m }
    }

    /// Adds the store's commit, write and flush figures.
    pub fn register_store(&mut self, stats: &crate::store::StoreStats) {
        self.registry.register(
            "store_commits",
            "Database transactions committed (group commits)",
            stats.commits.clone(),
        );
        self.registry.register(
            "store_writes",
            "Write operations (sends, acks, registrations, ...) carried by those commits",
            stats.writes.clone(),
        );
        self.registry.register(
            "store_fsync_seconds",
            "Time each flush of the write-ahead log to disk took; every answer that says durable waits for one",
            stats.fsync_seconds.clone(),
        );
        self.registry.register(
            "store_failed",
            "1 once a flush to disk failed: writes are refused until the server restarts",
            stats.failed.clone(),
        );
        self.registry.register(
            "store_commit_failures",
            "Group commits that failed (disk full, I/O error); their writes were refused with try-again-later and nothing of them was stored",
            stats.commit_failures.clone(),
        );
        self.registry.register(
            "store_commit_failing",
            "1 while the latest commit failed (the disk may be full), 0 once one succeeds",
            stats.commit_failing.clone(),
        );
    }

    /// Counts a closed connection.
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts an error response.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
