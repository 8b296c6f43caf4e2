//! Server metrics (Prometheus text format on the admin port): aggregate
//! counters only, never a handle or an address.

use ponte_wire::messages::{CloseReason, ErrorCode};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CipherLabel {
    cipher: &'static str,
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
    handshakes: Family<CipherLabel, Counter>,
    /// Frames received inside Noise.
    pub frames_in: Counter,
    /// Accounts created.
    pub registrations: Counter,
    /// Messages made durable.
    pub messages_accepted: Counter,
    /// Duplicate sends (same id) answered again.
    pub messages_duplicate: Counter,
    /// Group messages stored (each once, whatever its recipients).
    pub group_messages: Counter,
    /// Mailbox entries of those group messages (one per recipient).
    pub group_entries: Counter,
    /// Mailbox items pushed to devices.
    pub items_pushed: Counter,
    /// Messages acknowledged by their recipient.
    pub messages_acked: Counter,
    /// Messages expired undelivered.
    pub messages_expired: Counter,
    /// Keys claimed.
    pub keys_claimed: Counter,
    /// Blob bytes received in acknowledged appends.
    pub blob_bytes_in: Counter,
    /// Blob bytes sent in downloads.
    pub blob_bytes_out: Counter,
    /// Flushes of uploads (one `fdatasync` and offset record each, for
    /// every chunk written since the last).
    pub blob_flushes: Counter,
    /// Uploads finished (hash checked).
    pub blobs_finished: Counter,
    /// Blobs (and unfinished uploads) deleted by the sweep.
    pub blobs_deleted: Counter,
    /// Finished blobs stored, as of the last sweep.
    pub blobs_stored: Gauge,
    /// Bytes of blobs and uploads stored, as of the last sweep.
    pub blob_bytes_stored: Gauge,
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
            handshakes: Family::default(),
            frames_in: Counter::default(),
            registrations: Counter::default(),
            messages_accepted: Counter::default(),
            messages_duplicate: Counter::default(),
            group_messages: Counter::default(),
            group_entries: Counter::default(),
            items_pushed: Counter::default(),
            messages_acked: Counter::default(),
            messages_expired: Counter::default(),
            keys_claimed: Counter::default(),
            blob_bytes_in: Counter::default(),
            blob_bytes_out: Counter::default(),
            blob_flushes: Counter::default(),
            blobs_finished: Counter::default(),
            blobs_deleted: Counter::default(),
            blobs_stored: Gauge::default(),
            blob_bytes_stored: Gauge::default(),
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
        registry.register(
            "handshakes",
            "Noise handshakes completed, by the cipher the client chose",
            m.handshakes.clone(),
        );
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
            "group_messages",
            "Group messages stored, each body once",
            m.group_messages.clone(),
        );
        registry.register(
            "group_entries",
            "Mailbox entries of group messages (one per recipient)",
            m.group_entries.clone(),
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
        m.register_blobs(&mut registry);
        Self { registry, ..m }
    }

    fn register_blobs(&self, registry: &mut Registry) {
        registry.register(
            "blob_bytes_received",
            "Blob bytes received in acknowledged appends",
            self.blob_bytes_in.clone(),
        );
        registry.register(
            "blob_bytes_sent",
            "Blob bytes sent in downloads",
            self.blob_bytes_out.clone(),
        );
        registry.register(
            "blob_flushes",
            "Upload flushes (one fdatasync and offset record for the chunks written since the last)",
            self.blob_flushes.clone(),
        );
        registry.register(
            "blobs_finished",
            "Uploads finished with a matching hash",
            self.blobs_finished.clone(),
        );
        registry.register(
            "blobs_deleted",
            "Blobs and unfinished uploads deleted (expired, or fetched by every recipient)",
            self.blobs_deleted.clone(),
        );
        registry.register(
            "blobs_stored",
            "Finished blobs stored, as of the last expiry sweep",
            self.blobs_stored.clone(),
        );
        registry.register(
            "blob_bytes_stored",
            "Bytes of blobs and unfinished uploads stored, as of the last expiry sweep",
            self.blob_bytes_stored.clone(),
        );
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
    pub(crate) fn closed(&self, cause: CloseCause) {
        let reason = cause.label();
        self.closed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts an error response.
    /// Counts a completed handshake under the cipher the client chose.
    pub(crate) fn handshake(&self, cipher: ponte_transport::Cipher) {
        let cipher = match cipher {
            ponte_transport::Cipher::AesGcm => "aes256gcm",
            ponte_transport::Cipher::ChaChaPoly => "chacha20poly1305",
            _ => "other",
        };
        self.handshakes.get_or_create(&CipherLabel { cipher }).inc();
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        let code = code_label(code);
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

/// Why a connection ended: the `reason` label of `connections_closed`, and
/// the close frame sent to a peer past the handshake, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseCause {
    /// Refused at accept: `max_connections` reached.
    Overloaded,
    /// Refused at accept: too many connections of its address not logged in.
    PreLoginPerAddress,
    /// The handshake (PROXY header included) did not finish in time.
    HandshakeTimeout,
    /// The peer closed during the handshake.
    HandshakeEof,
    /// The Noise handshake failed.
    HandshakeFailed,
    /// A PROXY header that does not parse or is too long.
    ProxyHeaderInvalid,
    /// Reading the socket failed.
    ReadError,
    /// The server is shutting down.
    Shutdown,
    /// A newer connection of the same device took over.
    Replaced,
    /// The peer did not read its frames in time.
    SlowConsumer,
    /// The peer closed the connection between frames.
    ClientClosed,
    /// The peer closed the connection inside a frame.
    ClientEofMidFrame,
    /// A frame over its cap.
    FrameTooLarge,
    /// A frame that does not decrypt.
    DecryptFailed,
    /// A frame that does not decode.
    MalformedFrame,
    /// The writer task is gone (a write failed).
    WriteFailed,
    /// Logged in and silent for `idle_timeout`.
    Idle,
    /// Not logged in within `unauthenticated_timeout`.
    UnauthenticatedTimeout,
}

impl CloseCause {
    /// Every cause.
    #[cfg(test)]
    const ALL: [CloseCause; 18] = [
        CloseCause::Overloaded,
        CloseCause::PreLoginPerAddress,
        CloseCause::HandshakeTimeout,
        CloseCause::HandshakeEof,
        CloseCause::HandshakeFailed,
        CloseCause::ProxyHeaderInvalid,
        CloseCause::ReadError,
        CloseCause::Shutdown,
        CloseCause::Replaced,
        CloseCause::SlowConsumer,
        CloseCause::ClientClosed,
        CloseCause::ClientEofMidFrame,
        CloseCause::FrameTooLarge,
        CloseCause::DecryptFailed,
        CloseCause::MalformedFrame,
        CloseCause::WriteFailed,
        CloseCause::Idle,
        CloseCause::UnauthenticatedTimeout,
    ];

    /// The metric label (and the close frame's detail).
    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseCause::Overloaded => "overloaded",
            CloseCause::PreLoginPerAddress => "pre_login_per_address",
            CloseCause::HandshakeTimeout => "handshake_timeout",
            CloseCause::HandshakeEof => "handshake_eof",
            CloseCause::HandshakeFailed => "handshake_failed",
            CloseCause::ProxyHeaderInvalid => "proxy_header_invalid",
            CloseCause::ReadError => "read_error",
            CloseCause::Shutdown => "shutdown",
            CloseCause::Replaced => "replaced",
            CloseCause::SlowConsumer => "slow_consumer",
            CloseCause::ClientClosed => "client_closed",
            CloseCause::ClientEofMidFrame => "client_eof_mid_frame",
            CloseCause::FrameTooLarge => "frame_too_large",
            CloseCause::DecryptFailed => "decrypt_failed",
            CloseCause::MalformedFrame => "malformed_frame",
            CloseCause::WriteFailed => "write_failed",
            CloseCause::Idle => "idle",
            CloseCause::UnauthenticatedTimeout => "unauthenticated_timeout",
        }
    }

    /// The close frame's reason, for causes that end a session whose peer
    /// may still read (the others close the socket without a word).
    pub(crate) fn close_frame(self) -> Option<CloseReason> {
        match self {
            CloseCause::Shutdown => Some(CloseReason::Shutdown),
            CloseCause::Replaced => Some(CloseReason::Replaced),
            CloseCause::SlowConsumer => Some(CloseReason::SlowConsumer),
            CloseCause::FrameTooLarge => Some(CloseReason::FrameTooLarge),
            CloseCause::MalformedFrame => Some(CloseReason::MalformedFrame),
            CloseCause::Idle => Some(CloseReason::Idle),
            CloseCause::UnauthenticatedTimeout => Some(CloseReason::UnauthenticatedTimeout),
            CloseCause::Overloaded
            | CloseCause::PreLoginPerAddress
            | CloseCause::HandshakeTimeout
            | CloseCause::HandshakeEof
            | CloseCause::HandshakeFailed
            | CloseCause::ProxyHeaderInvalid
            | CloseCause::ReadError
            | CloseCause::ClientClosed
            | CloseCause::ClientEofMidFrame
            | CloseCause::DecryptFailed
            | CloseCause::WriteFailed => None,
        }
    }
}

/// The `code` label of `errors`.
fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unspecified => "unspecified",
        ErrorCode::Malformed => "malformed",
        ErrorCode::NotAuthenticated => "not_authenticated",
        ErrorCode::NotRegistered => "not_registered",
        ErrorCode::HandleTaken => "handle_taken",
        ErrorCode::InvalidHandle => "invalid_handle",
        ErrorCode::InviteRequired => "invite_required",
        ErrorCode::InviteInvalid => "invite_invalid",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::BadSignature => "bad_signature",
        ErrorCode::UnknownRecipient => "unknown_recipient",
        ErrorCode::UnknownHandle => "unknown_handle",
        ErrorCode::NoKeys => "no_keys",
        ErrorCode::MailboxFull => "mailbox_full",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::InvalidArgument => "invalid_argument",
        ErrorCode::AlreadyRegistered => "already_registered",
        ErrorCode::LimitExceeded => "limit_exceeded",
        ErrorCode::Unsupported => "unsupported",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Internal => "internal",
        ErrorCode::UnknownBlob => "unknown_blob",
        ErrorCode::OffsetMismatch => "offset_mismatch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cause has its own label, in the metric's snake_case, and the
    /// label appears in `connections_closed` once counted.
    #[test]
    fn close_causes_have_distinct_labels() {
        let mut labels: Vec<&str> = CloseCause::ALL.iter().map(|c| c.label()).collect();
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), CloseCause::ALL.len());
        let m = Metrics::new();
        m.closed(CloseCause::SlowConsumer);
        assert!(m
            .render()
            .contains("ponte_server_connections_closed_total{reason=\"slow_consumer\"} 1"));
    }
}
