//! The profile database (SQLite, one file `ponte.db` in the profile
//! directory, WAL mode).
//!
//! Tables (`S` = sealed with the profile's field key, see [`crate::atrest`];
//! `P` = vodozemac pickle encrypted with the pickle key):
//!
//! | table | holds |
//! |---|---|
//! | `meta` | schema version, key-derivation mode/salt/parameters, key check value, server address, own handle (plain) |
//! | `secrets` | the Olm account (P) and the Noise private key (S) |
//! | `contacts` | handle, trusted identity keys, verified flag, a changed key waiting for re-verification |
//! | `sessions` | Olm sessions per contact (P) |
//! | `messages` | history: peer, direction, text (S), times, tick status, displayed flag |
//! | `outbox` | what waits to go out: texts and read receipts (S), with the ciphertext once encrypted |
//! | `inbox_seen` | ids of every end-to-end message already processed (dedup) |
//! | `unread` | incoming messages reported to a chat window and not read yet (created on first use, see `chats`) |
//! | `files` | per file message: its descriptor (S: blob id, key, hash, name, size, type, caption), upload or download state, local path (S) |
//! | `timers` | per conversation: the disappearing-messages timer in force and the setting that won (`expiry`) |
//! | `search_terms`, `search_pending` | the blind search index: keyed hashes of words, never words (see `search`) |
//! | `groups`, `group_ops`, `group_keys`, `group_receipts`, `group_pending` | groups: this device's standing, the signed ops (S), Megolm sessions (P), per-recipient ticks, what waits for an earlier op or key (S); see `groups` |
//!
//! Handles, times and statuses are stored in clear (the server knows them
//! too); message text, receipts and private keys never are.
//!
//! This module opens the database and keeps meta, secrets, contacts and
//! sessions; `messages` keeps the history and the outbox; `files` the
//! state of each file sent or received; `groups` the groups.
//!
//! Schema versions: 1 had no `files` table; 2 no group tables (and no
//! `messages.group_id`); 3 no disappearing messages (`expiry`: the `timers`
//! table, and each message's timer and expiry); 4 no search index and no
//! replies (`search`: `search_terms`, `search_pending`, their triggers,
//! and `messages.reply_to`). Opening an older database
//! runs the migrations after its version, in order, each in one transaction
//! with the new version number ([`MIGRATIONS`]).

mod chats;
mod expiry;
mod files;
mod group_chats;
mod groups;
mod identity;
mod messages;
mod search;

pub use chats::{ChatSummary, ConversationPage, MAX_PAGE};
pub use expiry::{Notice, Swept, FLAG_TIMER_NOTICE};
pub use files::{FetchAsked, FileRecord, FileState};
pub use groups::{
    group_key, group_of_key, Conversation, GroupIncoming, GroupNotice, GroupOutgoing, GroupRecord,
    GroupStatus, GroupTicks, GroupWrite, PendingItem, PendingKind, FLAG_GROUP_NOTICE,
    MAX_JOINING_GROUPS, MAX_OPS_PER_GROUP, MAX_PENDING_PER_GROUP, MAX_PENDING_TOTAL,
};
pub use search::{words, SearchHit, MAX_HITS, MAX_QUERY_WORDS, MAX_WORD_CHARS};

use crate::atrest::ProfileKey;
use crate::{ClientError, Result};
use ponte_e2e::{Identity, MessageId, PublicIdentity, Session};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use zeroize::Zeroizing;

use identity::save_identity;

/// Current schema version.
const SCHEMA_VERSION: i64 = 5;
/// Most Olm sessions kept per contact (oldest dropped first).
const MAX_SESSIONS_PER_CONTACT: i64 = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (
    handle TEXT PRIMARY KEY,
    curve25519 BLOB NOT NULL,
    ed25519 BLOB NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    new_curve25519 BLOB,
    new_ed25519 BLOB,
    first_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    handle TEXT NOT NULL,
    pickle TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_handle ON sessions(handle, seq);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    peer TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    id BLOB NOT NULL,
    body BLOB NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER,
    status INTEGER NOT NULL,
    shown_status INTEGER NOT NULL DEFAULT -1,
    flags INTEGER NOT NULL DEFAULT 0,
    UNIQUE (peer, outgoing, id)
);
-- What take_updates looks for (listen polls it): a partial index keeps the
-- poll cheap however long the history grows.
CREATE INDEX IF NOT EXISTS messages_unshown ON messages(seq) WHERE shown_status <> status;
CREATE INDEX IF NOT EXISTS messages_by_peer ON messages(peer, seq);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    peer TEXT NOT NULL,
    kind INTEGER NOT NULL,
    payload BLOB NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    ciphertext BLOB
);
CREATE TABLE IF NOT EXISTS inbox_seen (
    peer TEXT NOT NULL,
    id BLOB NOT NULL,
    PRIMARY KEY (peer, id)
);
";

/// Added in schema version 2.
const SCHEMA_FILES: &str = "
CREATE TABLE IF NOT EXISTS files (
    peer TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    id BLOB NOT NULL,
    descriptor BLOB NOT NULL,
    state INTEGER NOT NULL,
    path BLOB,
    size INTEGER NOT NULL,
    PRIMARY KEY (peer, outgoing, id)
);
CREATE INDEX IF NOT EXISTS files_by_state ON files(state);
";

/// Steps from an older schema, in order: the version each reaches and
/// its SQL. A new database runs them all after [`SCHEMA`].
const MIGRATIONS: &[(i64, &str)] = &[
    (2, SCHEMA_FILES),
    (3, groups::SCHEMA_GROUPS),
    (4, expiry::SCHEMA_TIMERS),
    (5, search::SCHEMA_SEARCH),
];

/// Tick status of a message. Outgoing messages move forward only:
/// queued -> sent -> delivered -> read (or expired if never delivered).
/// Incoming messages are `Received`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Status {
    /// Written, waiting in the outbox (no tick).
    Queued,
    /// The server made it durable (one tick).
    Sent,
    /// The recipient's device acknowledged it (two ticks).
    Delivered,
    /// The recipient displayed it (end-to-end read receipt; blue ticks).
    Read,
    /// The server dropped it undelivered after its retention period.
    Expired,
    /// Refused for good (no such recipient, too large): never sent.
    Failed,
    /// An incoming message.
    Received,
}

impl Status {
    fn to_i64(self) -> i64 {
        match self {
            Status::Queued => 0,
            Status::Sent => 1,
            Status::Delivered => 2,
            Status::Read => 3,
            Status::Failed => 7,
            Status::Expired => 8,
            Status::Received => 9,
        }
    }

    fn from_i64(v: i64) -> Self {
        match v {
            0 => Status::Queued,
            1 => Status::Sent,
            2 => Status::Delivered,
            3 => Status::Read,
            7 => Status::Failed,
            8 => Status::Expired,
            _ => Status::Received,
        }
    }

    /// Lower-case name as printed and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Expired => "expired",
            Status::Failed => "failed",
            Status::Received => "received",
        }
    }
}

/// Message flag: the sender's identity key had changed and was not yet
/// re-verified when this message arrived.
pub const FLAG_UNVERIFIED_KEY_CHANGE: i64 = 1;

/// One message as shown to the user.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageView {
    /// Sender-chosen id.
    pub id: MessageId,
    /// The contact.
    pub peer: String,
    /// Whether we sent it.
    pub outgoing: bool,
    /// The text.
    pub text: String,
    /// Sender's clock, ms since the epoch.
    pub sent_at: UnixMillis,
    /// Tick status.
    pub status: Status,
    /// Set when the sender's identity key had changed unverified.
    pub key_changed: bool,
    /// Its stored text did not decrypt (profile data corrupt or altered):
    /// `text` is empty, and the rest of the conversation is still shown.
    pub unreadable: bool,
    /// The file it carries, for a file message (`text` is its caption).
    pub file: Option<FileSummary>,
    /// How long it lives once displayed (disappearing messages).
    pub timer: Option<ponte_e2e::Timer>,
    /// When it disappears, once its clock runs (incoming: from its first
    /// display; outgoing: from when it was written).
    pub expires_at: Option<UnixMillis>,
    /// Not a message but a notice (a timer setting); `text` is empty.
    pub notice: Option<Notice>,
    /// The group it was sent to, for a group message (`peer` is then the
    /// sender of an incoming one, the key `g:HEX` of an outgoing one).
    pub group: Option<ponte_e2e::group::GroupId>,
    /// The group's title, as this device last knew it.
    pub group_title: Option<String>,
    /// An outgoing group message's ticks, member by member.
    pub ticks: Option<GroupTicks>,
    /// A change to a group (`peer` made it, `text` says what), not a message.
    pub group_notice: bool,
    /// The message this one replies to (quotes), by id, in the same
    /// conversation (it may be gone or not here yet).
    pub reply_to: Option<MessageId>,
}

/// What a history view shows of a file message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// The name the sender gave (hostile: sanitise or escape before use).
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
    /// SHA-256 of the ciphertext blob, hex.
    pub sha256: String,
    /// Upload or download state.
    pub state: FileState,
    /// Incoming: where the fetched file is (`None` until fetched).
    pub path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for MessageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageView")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("outgoing", &self.outgoing)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// What [`Store::take_updates`] found new since the last call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update {
    /// An incoming message, shown for the first time.
    Message(MessageView),
    /// An outgoing message whose status changed since last shown.
    Status(MessageView),
}

/// A contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Their handle.
    pub handle: String,
    /// The identity we trust for them (first seen, or last confirmed).
    pub identity: PublicIdentity,
    /// Whether the user compared safety numbers and confirmed.
    pub verified: bool,
    /// A different identity the server now announces for them, waiting for
    /// the user to re-verify. While set, sending to them is refused.
    pub changed_identity: Option<PublicIdentity>,
}

/// What the outbox holds.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxKind {
    /// A text message (its text).
    Text(String),
    /// A read receipt for these incoming message ids.
    ReadReceipt(Vec<MessageId>),
    /// A file whose blob is uploaded (its descriptor).
    File(ponte_e2e::FileDescriptor),
    /// A disappearing-messages setting for the conversation.
    TimerSetting(ponte_e2e::TimerSetting),
    /// A signed group op for one member (pairwise).
    GroupOp(Box<ponte_e2e::group::SignedOp>),
    /// Several signed ops of one group, in order, for one member (pairwise;
    /// at most [`ponte_e2e::envelope::MAX_LOG_OPS`]): a log for a new member.
    GroupLog(Vec<ponte_e2e::group::SignedOp>),
    /// This device's Megolm sender key for one member (pairwise).
    SenderKey(ponte_e2e::group::SenderKey),
    /// A group message, encrypted when queued (Megolm): its ciphertext is
    /// in the outbox row, its recipients in `group_receipts`.
    Group(ponte_e2e::group::GroupId),
}

impl std::fmt::Debug for OutboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Message text never reaches logs or debug output.
        match self {
            OutboxKind::Text(t) => write!(f, "Text({} bytes)", t.len()),
            OutboxKind::ReadReceipt(ids) => f.debug_tuple("ReadReceipt").field(ids).finish(),
            OutboxKind::File(fd) => f.debug_tuple("File").field(fd).finish(),
            OutboxKind::TimerSetting(t) => f.debug_tuple("TimerSetting").field(t).finish(),
            OutboxKind::GroupOp(op) => f.debug_tuple("GroupOp").field(op).finish(),
            OutboxKind::GroupLog(ops) => write!(f, "GroupLog({} ops)", ops.len()),
            OutboxKind::SenderKey(k) => f.debug_tuple("SenderKey").field(k).finish(),
            OutboxKind::Group(g) => f.debug_tuple("Group").field(g).finish(),
        }
    }
}

/// One outbox entry.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    /// Envelope id (also the server-side idempotency key).
    pub id: MessageId,
    /// Recipient.
    pub peer: String,
    /// Content.
    pub kind: OutboxKind,
    /// When written.
    pub sent_at: UnixMillis,
    /// The Olm ciphertext, once encrypted (resent as is after a crash).
    pub ciphertext: Option<Vec<u8>>,
    /// The message's disappearing timer (carried in its envelope).
    pub timer: Option<ponte_e2e::Timer>,
    /// The message it replies to (carried as an envelope extension).
    pub reply_to: Option<MessageId>,
}

/// Result of comparing an identity announced for a contact with what we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityCheck {
    /// First time we see this contact: stored (trust on first use, unverified).
    New,
    /// Same as the trusted identity.
    Same,
    /// Different from the trusted identity: flagged, needs re-verification.
    Changed,
}

/// A wall-clock time in milliseconds since the Unix epoch: when a message
/// was written (by its sender's clock) or a row was stored. Stored as an
/// SQLite integer (saturating at `i64::MAX`; a negative value reads as 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Now, by this machine's clock (0 if it is before 1970).
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self(ms)
    }
}

impl rusqlite::types::ToSql for UnixMillis {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(i64::try_from(self.0).unwrap_or(i64::MAX).into())
    }
}

impl rusqlite::types::FromSql for UnixMillis {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(value).map(|v| Self(u64::try_from(v).unwrap_or(0)))
    }
}

fn aad(table: &str, column: &str, row: &[u8]) -> Vec<u8> {
    let mut out = format!("ponte/{table}/{column}/").into_bytes();
    out.extend_from_slice(row);
    out
}

fn row_key(peer: &str, outgoing: bool, id: &MessageId) -> Vec<u8> {
    let mut out = peer.as_bytes().to_vec();
    out.push(0);
    out.push(u8::from(outgoing));
    out.extend_from_slice(&id.0);
    out
}

fn identity_from_row(curve: Vec<u8>, ed: Vec<u8>) -> Result<PublicIdentity> {
    PublicIdentity::from_slices(&curve, &ed).map_err(|_| ClientError::Corrupt("contact key"))
}

/// The open profile database with its key.
pub struct Store {
    conn: Connection,
    key: ProfileKey,
    /// A sweep deleted messages but could not empty the WAL yet.
    scrub_owed: std::cell::Cell<bool>,
    /// Groups as last loaded, their ops checked (see `groups::GroupCache`).
    groups: groups::GroupCache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (creating tables if needed) the database at `path` with an
    /// already-derived key. Use [`crate::profile`] to get the key.
    pub fn open_with_key(path: &std::path::Path, key: ProfileKey) -> Result<Self> {
        let conn = open_connection(path)?;
        Ok(Self {
            conn,
            key,
            scrub_owed: std::cell::Cell::new(false),
            groups: Default::default(),
        })
    }

    // ------------------------------------------------------------ meta

    /// A plain metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        meta_get(&self.conn, key)
    }

    /// Set a plain metadata value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        meta_set(&self.conn, key, value)
    }

    /// A sealed secret.
    pub fn secret(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        sealed
            .map(|s| {
                self.key
                    .open(&aad("secrets", "value", name.as_bytes()), &s)
                    .map(Zeroizing::new)
                    .map_err(|_| ClientError::Corrupt("secret"))
            })
            .transpose()
    }

    /// Store a secret, sealed.
    pub fn set_secret(&self, name: &str, value: &[u8]) -> Result<()> {
        let sealed = self
            .key
            .seal(&aad("secrets", "value", name.as_bytes()), value);
        self.conn.execute(
            "INSERT INTO secrets(name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![name, sealed],
        )?;
        Ok(())
    }

    // ------------------------------------------------------------ contacts

    /// A contact by handle.
    pub fn contact(&self, handle: &str) -> Result<Option<Contact>> {
        contact(&self.conn, handle)
    }

    /// All contacts, by handle.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let mut stmt = self
            .conn
            .prepare("SELECT handle FROM contacts ORDER BY handle")?;
        let handles: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            if let Some(c) = contact(&self.conn, &h)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Compare an identity the server announces for `handle` with what we
    /// trust. New contacts are stored (unverified); a different identity is
    /// recorded as a change needing re-verification and never replaces the
    /// trusted one silently.
    pub fn observe_identity(
        &self,
        handle: &str,
        identity: &PublicIdentity,
    ) -> Result<IdentityCheck> {
        match contact(&self.conn, handle)? {
            None => {
                self.conn.execute(
                    "INSERT INTO contacts(handle, curve25519, ed25519, first_seen_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        handle,
                        identity.curve25519.to_vec(),
                        identity.ed25519.to_vec(),
                        UnixMillis::now()
                    ],
                )?;
                Ok(IdentityCheck::New)
            }
            Some(c) if c.identity == *identity => Ok(IdentityCheck::Same),
            Some(_) => {
                self.conn.execute(
                    "UPDATE contacts SET new_curve25519 = ?2, new_ed25519 = ?3, verified = 0
                     WHERE handle = ?1",
                    params![
                        handle,
                        identity.curve25519.to_vec(),
                        identity.ed25519.to_vec()
                    ],
                )?;
                Ok(IdentityCheck::Changed)
            }
        }
    }

    /// The user compared safety numbers for `handle` and confirms. If a
    /// changed identity was waiting, it becomes the trusted one (and the
    /// sessions with the old identity are dropped). Returns the identity now
    /// trusted.
    pub fn confirm_contact(&self, handle: &str) -> Result<PublicIdentity> {
        let c = contact(&self.conn, handle)?
            .ok_or_else(|| ClientError::UnknownContact(handle.into()))?;
        let tx = self.conn.unchecked_transaction()?;
        let trusted = match c.changed_identity {
            Some(new) => {
                tx.execute(
                    "UPDATE contacts SET curve25519 = new_curve25519, ed25519 = new_ed25519,
                     new_curve25519 = NULL, new_ed25519 = NULL WHERE handle = ?1",
                    [handle],
                )?;
                tx.execute("DELETE FROM sessions WHERE handle = ?1", [handle])?;
                new
            }
            None => c.identity,
        };
        tx.execute(
            "UPDATE contacts SET verified = 1 WHERE handle = ?1",
            [handle],
        )?;
        tx.commit()?;
        Ok(trusted)
    }

    // ------------------------------------------------------------ sessions

    /// Olm sessions with `handle`, most recently used first.
    pub fn sessions(&self, handle: &str) -> Result<Vec<Session>> {
        let mut stmt = self
            .conn
            .prepare("SELECT pickle FROM sessions WHERE handle = ?1 ORDER BY seq DESC")?;
        let pickles: Vec<String> = stmt
            .query_map([handle], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        pickles
            .iter()
            .map(|p| {
                Session::from_pickle(p, self.key.pickle_key())
                    .map_err(|_| ClientError::Corrupt("session"))
            })
            .collect()
    }
}

/// A decrypted incoming message ready to commit.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// Sender handle.
    pub peer: &'a str,
    /// Envelope id.
    pub id: MessageId,
    /// Sender's clock.
    pub sent_at: UnixMillis,
    /// Session after decrypting.
    pub session: &'a Session,
    /// The identity, when decrypting created an inbound session.
    pub identity: Option<&'a Identity>,
    /// Whether the sender's key changed and is not re-verified.
    pub key_changed: bool,
    /// What it carries.
    pub content: IncomingContent<'a>,
}

/// Content of an incoming message.
#[non_exhaustive]
pub enum IncomingContent<'a> {
    /// Text for the history.
    Text(&'a str),
    /// Read receipt for our messages.
    ReadReceipt(&'a [MessageId]),
    /// A file (the caption goes to the history, the rest to `files`).
    File(&'a ponte_e2e::FileDescriptor),
    /// A disappearing-messages setting (a notice in the history).
    TimerSetting(&'a ponte_e2e::TimerSetting),
    /// A group op or sender key, and what it changes.
    Group(&'a GroupWrite),
}

impl std::fmt::Debug for IncomingContent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IncomingContent::Text(t) => write!(f, "Text({} bytes)", t.len()),
            IncomingContent::ReadReceipt(ids) => f.debug_tuple("ReadReceipt").field(ids).finish(),
            IncomingContent::File(fd) => f.debug_tuple("File").field(fd).finish(),
            IncomingContent::TimerSetting(t) => f.debug_tuple("TimerSetting").field(t).finish(),
            IncomingContent::Group(w) => f.debug_tuple("Group").field(w).finish(),
        }
    }
}

pub(crate) fn open_connection(path: &std::path::Path) -> Result<Connection> {
    // Created owner-only before SQLite opens it (SQLite gives the -wal and
    // -shm files the database file's mode). The contents are encrypted
    // anyway; this keeps even their sizes and row counts private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Every transaction here writes, and two connections may share the
    // profile (`listen` and `send`; the app's connection and its API):
    // take the write lock at BEGIN, where the busy timeout waits for it,
    // rather than after a read, where SQLite can only answer "locked".
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    let version = match meta_get(&conn, "schema")?.as_deref() {
        None => 1,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|v| (1..=SCHEMA_VERSION).contains(v))
            .ok_or(ClientError::Corrupt("unsupported schema version"))?,
    };
    for &(reaches, sql) in MIGRATIONS {
        if version < reaches {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            meta_set(&tx, "schema", &reaches.to_string())?;
            tx.commit()?;
        }
    }
    Ok(conn)
}

pub(crate) fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

pub(crate) fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn contact(conn: &Connection, handle: &str) -> Result<Option<Contact>> {
    let row = conn
        .query_row(
            "SELECT curve25519, ed25519, verified, new_curve25519, new_ed25519
             FROM contacts WHERE handle = ?1",
            [handle],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((curve, ed, verified, new_curve, new_ed)) = row else {
        return Ok(None);
    };
    let changed_identity = match (new_curve, new_ed) {
        (Some(c), Some(e)) => Some(identity_from_row(c, e)?),
        _ => None,
    };
    Ok(Some(Contact {
        handle: handle.to_owned(),
        identity: identity_from_row(curve, ed)?,
        verified: verified != 0,
        changed_identity,
    }))
}

fn save_session(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    peer: &str,
    session: &Session,
) -> Result<()> {
    let next: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM sessions", [], |r| {
        r.get(0)
    })?;
    tx.execute(
        "INSERT INTO sessions(session_id, handle, pickle, updated_ms, seq) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(session_id) DO UPDATE SET pickle = excluded.pickle,
             updated_ms = excluded.updated_ms, seq = excluded.seq",
        params![session.session_id(), peer, session.pickle(key.pickle_key()), UnixMillis::now(), next],
    )?;
    tx.execute(
        "DELETE FROM sessions WHERE handle = ?1 AND session_id NOT IN
         (SELECT session_id FROM sessions WHERE handle = ?1 ORDER BY seq DESC LIMIT ?2)",
        params![peer, MAX_SESSIONS_PER_CONTACT],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::profile::{KeySource, Profile};

    /// Groups and timers each added a flag in parallel and both took 2 at
    /// first: a group notice then read as a timer setting.
    #[test]
    fn message_flags_are_distinct_bits() {
        let flags = [
            FLAG_UNVERIFIED_KEY_CHANGE,
            FLAG_GROUP_NOTICE,
            FLAG_TIMER_NOTICE,
        ];
        for (i, a) in flags.iter().enumerate() {
            assert_eq!(a.count_ones(), 1, "{a} is one bit");
            for b in &flags[i + 1..] {
                assert_eq!(a & b, 0, "{a} and {b} share a bit");
            }
        }
    }

    fn session() -> Session {
        let alice = Identity::generate();
        let mut bob = Identity::generate();
        let prekey = bob.generate_one_time_keys(1).remove(0).public_key;
        let mut a = alice
            .create_outbound_session(&bob.public(), &prekey)
            .unwrap();
        let c = a.encrypt(b"x");
        bob.create_inbound_session(&alice.public(), &c).unwrap().0
    }

    fn receipts(store: &Store) -> Vec<MessageId> {
        store
            .outbox()
            .unwrap()
            .into_iter()
            .flat_map(|i| match i.kind {
                OutboxKind::ReadReceipt(ids) => ids,
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn only_what_was_marked_shown_stops_being_new() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::create(&dir.path().join("p"), KeySource::KeyFile).unwrap();
        let store = profile.store();
        let session = session();
        let ids = [MessageId::random(), MessageId::random()];
        for (id, text) in ids.iter().zip(["one", "two"]) {
            store
                .commit_incoming(&Incoming {
                    peer: "alice",
                    id: *id,
                    sent_at: UnixMillis(1),
                    session: &session,
                    identity: None,
                    key_changed: false,
                    content: IncomingContent::Text(text),
                })
                .unwrap();
        }
        let out = store.queue_text("alice", "three").unwrap();
        store.mark_sent("alice", &out).unwrap();

        // Looking marks nothing.
        let first = store.unshown_updates().unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(store.unshown_updates().unwrap(), first);
        assert!(receipts(store).is_empty());

        // The display took only the first one: the rest stays new, and only
        // the displayed message gets a read receipt.
        let Update::Message(one) = &first[0] else {
            panic!("{first:?}")
        };
        store.mark_shown([one]).unwrap();
        let rest = store.unshown_updates().unwrap();
        assert_eq!(rest, first[1..]);
        assert_eq!(receipts(store), [ids[0]]);
        // Displayed again (history): no second receipt.
        store.mark_shown([one]).unwrap();
        assert_eq!(receipts(store), [ids[0]]);

        // The rest, including the outgoing tick.
        let views: Vec<&MessageView> = rest
            .iter()
            .map(|u| match u {
                Update::Message(v) | Update::Status(v) => v,
            })
            .collect();
        store.mark_shown(views).unwrap();
        assert!(store.unshown_updates().unwrap().is_empty());
        assert_eq!(receipts(store), ids);
        // The conversation reads without marking anything.
        assert_eq!(store.conversation("alice").unwrap().len(), 3);
    }
}
