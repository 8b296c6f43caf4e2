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
//!
//! Handles, times and statuses are stored in clear (the server knows them
//! too); message text, receipts and private keys never are.

use crate::atrest::ProfileKey;
use crate::{ClientError, Result};
use ponte_e2e::{Identity, MessageId, PublicIdentity, Session};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use zeroize::Zeroizing;

/// Current schema version.
const SCHEMA_VERSION: i64 = 1;
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
}

impl std::fmt::Debug for OutboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Message text never reaches logs or debug output.
        match self {
            OutboxKind::Text(t) => write!(f, "Text({} bytes)", t.len()),
            OutboxKind::ReadReceipt(ids) => f.debug_tuple("ReadReceipt").field(ids).finish(),
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
        Ok(Self { conn, key })
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

    /// The device identity, if the profile has one.
    pub fn identity(&self) -> Result<Option<Identity>> {
        let pickle: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM secrets WHERE name = 'account'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        pickle
            .map(|p| {
                Identity::from_pickle(&p, self.key.pickle_key())
                    .map_err(|_| ClientError::Corrupt("account"))
            })
            .transpose()
    }

    /// Save the device identity.
    pub fn save_identity(&self, identity: &Identity) -> Result<()> {
        save_identity(&self.conn, &self.key, identity)
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

    // ------------------------------------------------------------ outgoing

    /// Write a text message: history (status queued) and outbox, atomically.
    pub fn queue_text(&self, peer: &str, text: &str) -> Result<MessageId> {
        let id = MessageId::random();
        let now = UnixMillis::now();
        let tx = self.conn.unchecked_transaction()?;
        let body = self.key.seal(
            &aad("messages", "body", &row_key(peer, true, &id)),
            text.as_bytes(),
        );
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status, shown_status)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?5)",
            params![peer, id.0.to_vec(), body, now, Status::Queued.to_i64()],
        )?;
        insert_outbox(
            &tx,
            &self.key,
            &id,
            peer,
            &OutboxKind::Text(text.into()),
            now,
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// One message, by peer, direction and id.
    pub fn message(
        &self,
        peer: &str,
        outgoing: bool,
        id: &MessageId,
    ) -> Result<Option<MessageView>> {
        let out = i64::from(outgoing);
        let id_bytes = id.0.to_vec();
        let mut views = select_views(
            &self.conn,
            &self.key,
            "peer = ?1 AND outgoing = ?2 AND id = ?3",
            &[&peer, &out, &id_bytes],
        )?;
        Ok(views.pop())
    }

    /// Mark an outgoing message's current status as shown (the caller printed it).
    pub fn mark_status_shown(&self, peer: &str, id: &MessageId) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET shown_status = status WHERE peer = ?1 AND outgoing = 1 AND id = ?2",
            params![peer, id.0.to_vec()],
        )?;
        Ok(())
    }

    /// Whether there are read receipts or texts waiting to go out.
    pub fn outbox_len(&self) -> Result<usize> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Everything waiting in the outbox, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxItem>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, peer, kind, payload, sent_at_ms, ciphertext FROM outbox ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, UnixMillis>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, peer, kind, payload, sent_at, ciphertext) in rows {
            let id = MessageId::from_slice(&id).ok_or(ClientError::Corrupt("outbox id"))?;
            let plain = self
                .key
                .open(&aad("outbox", "payload", &id.0), &payload)
                .map_err(|_| ClientError::Corrupt("outbox payload"))?;
            let kind = match kind {
                1 => OutboxKind::Text(
                    String::from_utf8(plain).map_err(|_| ClientError::Corrupt("outbox text"))?,
                ),
                _ => OutboxKind::ReadReceipt(
                    plain
                        .chunks_exact(16)
                        .filter_map(MessageId::from_slice)
                        .collect(),
                ),
            };
            out.push(OutboxItem {
                id,
                peer,
                kind,
                sent_at,
                ciphertext,
            });
        }
        Ok(out)
    }

    /// Store the ciphertexts of outbox items together with the states of
    /// the sessions that produced them (one transaction: a crash can never
    /// leave a ciphertext whose ratchet step is lost, or the reverse).
    pub fn save_encrypted(
        &self,
        sessions: &[(&str, &Session)],
        ciphertexts: &[(&MessageId, &[u8])],
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        for (peer, session) in sessions {
            save_session(&tx, &self.key, peer, session)?;
        }
        for (id, ciphertext) in ciphertexts {
            tx.execute(
                "UPDATE outbox SET ciphertext = ?2 WHERE id = ?1",
                params![id.0.to_vec(), ciphertext],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Save a new outbound session together with the identity (unchanged for
    /// outbound, but kept symmetric with inbound).
    pub fn save_session(&self, peer: &str, session: &Session) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        save_session(&tx, &self.key, peer, session)?;
        tx.commit()?;
        Ok(())
    }

    /// The server made an outbox item durable: remove it, tick "sent".
    pub fn mark_sent(&self, peer: &str, id: &MessageId) -> Result<()> {
        self.mark_all_sent(&[(peer, id)])
    }

    /// [`Store::mark_sent`] for several items, in one transaction.
    pub fn mark_all_sent(&self, items: &[(&str, &MessageId)]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        for (peer, id) in items {
            tx.execute("DELETE FROM outbox WHERE id = ?1", [id.0.to_vec()])?;
            advance(&tx, peer, id, Status::Sent)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drop an outbox item the server refused for good (unknown recipient,
    /// too large): it leaves the outbox and the message is marked failed.
    pub fn mark_failed(&self, peer: &str, id: &MessageId) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM outbox WHERE id = ?1", [id.0.to_vec()])?;
        tx.execute(
            "UPDATE messages SET status = ?4 WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND status < ?3",
            params![peer, id.0.to_vec(), Status::Delivered.to_i64(), Status::Failed.to_i64()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The recipient's device acknowledged (server receipt): "delivered".
    pub fn mark_delivered(&self, peer: &str, id: &MessageId) -> Result<()> {
        advance(&self.conn, peer, id, Status::Delivered)
    }

    /// The server expired an undelivered message.
    pub fn mark_expired(&self, peer: &str, id: &MessageId) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET status = ?4 WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND status < ?3",
            params![peer, id.0.to_vec(), Status::Delivered.to_i64(), Status::Expired.to_i64()],
        )?;
        Ok(())
    }

    // ------------------------------------------------------------ incoming

    /// Whether an incoming end-to-end message id from `peer` was processed.
    pub fn seen(&self, peer: &str, id: &MessageId) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM inbox_seen WHERE peer = ?1 AND id = ?2",
                params![peer, id.0.to_vec()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Commit one decrypted incoming message atomically: the session (and
    /// the identity when an inbound session used up a one-time key), the dedup
    /// marker, and its effect (a text into history, or read ticks). Returns
    /// false if it had already been processed (nothing changed).
    pub fn commit_incoming(&self, incoming: &Incoming<'_>) -> Result<bool> {
        let tx = self.conn.unchecked_transaction()?;
        if let Some(identity) = incoming.identity {
            save_identity(&tx, &self.key, identity)?;
        }
        save_session(&tx, &self.key, incoming.peer, incoming.session)?;
        let fresh = tx.execute(
            "INSERT OR IGNORE INTO inbox_seen(peer, id) VALUES (?1, ?2)",
            params![incoming.peer, incoming.id.0.to_vec()],
        )? == 1;
        if fresh {
            match incoming.content {
                IncomingContent::Text(text) => {
                    let body = self.key.seal(
                        &aad(
                            "messages",
                            "body",
                            &row_key(incoming.peer, false, &incoming.id),
                        ),
                        text.as_bytes(),
                    );
                    tx.execute(
                        "INSERT OR IGNORE INTO messages(peer, outgoing, id, body, sent_at_ms,
                         received_at_ms, status, flags) VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            incoming.peer,
                            incoming.id.0.to_vec(),
                            body,
                            incoming.sent_at,
                            UnixMillis::now(),
                            Status::Received.to_i64(),
                            if incoming.key_changed {
                                FLAG_UNVERIFIED_KEY_CHANGE
                            } else {
                                0
                            },
                        ],
                    )?;
                }
                IncomingContent::ReadReceipt(ids) => {
                    for id in ids {
                        advance(&tx, incoming.peer, id, Status::Read)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(fresh)
    }

    // ------------------------------------------------------------ display

    /// What is new since the last call: incoming messages never shown and
    /// outgoing messages whose tick changed. Incoming messages returned here
    /// count as displayed: they are marked so and a read receipt is queued
    /// for each sender (exactly once on screen).
    pub fn take_updates(&self) -> Result<Vec<Update>> {
        let tx = self.conn.unchecked_transaction()?;
        let views = select_views(&tx, &self.key, "shown_status <> status", &[])?;
        let mut updates = Vec::with_capacity(views.len());
        let mut displayed = Vec::new();
        for v in views {
            if v.outgoing {
                updates.push(Update::Status(v));
            } else {
                displayed.push((v.peer.clone(), v.id));
                updates.push(Update::Message(v));
            }
        }
        tx.execute(
            "UPDATE messages SET shown_status = status WHERE shown_status <> status",
            [],
        )?;
        queue_receipts(&tx, &self.key, &displayed)?;
        tx.commit()?;
        Ok(updates)
    }

    /// What is new, as [`Store::take_updates`] finds it, but without marking
    /// anything: the caller displays the updates, then passes the ones it
    /// really displayed to [`Store::mark_shown`]. An update that could not
    /// be displayed (stdout closed, a crash before printing) is therefore
    /// found again by the next call.
    pub fn unshown_updates(&self) -> Result<Vec<Update>> {
        let views = select_views(&self.conn, &self.key, "shown_status <> status", &[])?;
        Ok(views
            .into_iter()
            .map(|v| {
                if v.outgoing {
                    Update::Status(v)
                } else {
                    Update::Message(v)
                }
            })
            .collect())
    }

    /// Record that these messages were displayed with the status each view
    /// carries: an outgoing tick is no longer new, and an incoming message
    /// displayed for the first time is marked so and gets its read receipt
    /// queued (once, however often it is displayed).
    pub fn mark_shown<'a>(&self, views: impl IntoIterator<Item = &'a MessageView>) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let mut displayed = Vec::new();
        for v in views {
            let changed = tx.execute(
                "UPDATE messages SET shown_status = ?4
                 WHERE peer = ?1 AND outgoing = ?2 AND id = ?3 AND shown_status <> ?4",
                params![
                    v.peer,
                    i64::from(v.outgoing),
                    v.id.0.to_vec(),
                    v.status.to_i64()
                ],
            )?;
            if changed > 0 && !v.outgoing {
                displayed.push((v.peer.clone(), v.id));
            }
        }
        queue_receipts(&tx, &self.key, &displayed)?;
        tx.commit()?;
        Ok(())
    }

    /// The conversation with `peer`, oldest first, without marking anything
    /// (see [`Store::history`] for the marking variant).
    pub fn conversation(&self, peer: &str) -> Result<Vec<MessageView>> {
        select_views(&self.conn, &self.key, "peer = ?1", &[&peer])
    }

    /// The conversation with `peer`, oldest first. Printing it counts as
    /// displaying it: unseen incoming messages are marked displayed and read
    /// receipts are queued for them.
    pub fn history(&self, peer: &str) -> Result<Vec<MessageView>> {
        let tx = self.conn.unchecked_transaction()?;
        let views = select_views(&tx, &self.key, "peer = ?1", &[&peer])?;
        let unseen: Vec<(String, MessageId)> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM messages WHERE peer = ?1 AND outgoing = 0 AND shown_status <> status",
            )?;
            let ids: Vec<Vec<u8>> = stmt
                .query_map([peer], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            ids.iter()
                .filter_map(|i| MessageId::from_slice(i))
                .map(|i| (peer.to_owned(), i))
                .collect()
        };
        tx.execute(
            "UPDATE messages SET shown_status = status WHERE peer = ?1 AND outgoing = 0",
            [peer],
        )?;
        queue_receipts(&tx, &self.key, &unseen)?;
        tx.commit()?;
        Ok(views)
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
}

impl std::fmt::Debug for IncomingContent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IncomingContent::Text(t) => write!(f, "Text({} bytes)", t.len()),
            IncomingContent::ReadReceipt(ids) => f.debug_tuple("ReadReceipt").field(ids).finish(),
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
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    let version: Option<String> = meta_get(&conn, "schema")?;
    match version {
        None => meta_set(&conn, "schema", &SCHEMA_VERSION.to_string())?,
        Some(v) if v == SCHEMA_VERSION.to_string() => {}
        Some(_) => return Err(ClientError::Corrupt("unsupported schema version")),
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

fn save_identity(conn: &Connection, key: &ProfileKey, identity: &Identity) -> Result<()> {
    conn.execute(
        "INSERT INTO secrets(name, value) VALUES ('account', ?1)
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        [identity.pickle(key.pickle_key())],
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

fn insert_outbox(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    id: &MessageId,
    peer: &str,
    kind: &OutboxKind,
    sent_at: UnixMillis,
) -> Result<()> {
    let (kind_code, plain) = match kind {
        OutboxKind::Text(t) => (1, t.as_bytes().to_vec()),
        OutboxKind::ReadReceipt(ids) => (2, ids.iter().flat_map(|i| i.0).collect::<Vec<u8>>()),
    };
    let payload = key.seal(&aad("outbox", "payload", &id.0), &plain);
    tx.execute(
        "INSERT INTO outbox(id, peer, kind, payload, sent_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id.0.to_vec(), peer, kind_code, payload, sent_at],
    )?;
    Ok(())
}

/// Queue one read receipt per peer (chunked to the envelope's cap),
/// merged with the peer's receipts still waiting unencrypted.
fn queue_receipts(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    displayed: &[(String, MessageId)],
) -> Result<()> {
    let mut by_peer: std::collections::BTreeMap<&str, Vec<MessageId>> = Default::default();
    for (peer, id) in displayed {
        by_peer.entry(peer.as_str()).or_default().push(*id);
    }
    for (peer, mut ids) in by_peer {
        // Merge with receipts for this peer that have not been encrypted
        // yet, so a burst of displayed messages costs one receipt.
        let pending: Vec<(i64, Vec<u8>, Vec<u8>)> = {
            let mut stmt = tx.prepare(
                "SELECT seq, id, payload FROM outbox
                 WHERE peer = ?1 AND kind = 2 AND ciphertext IS NULL",
            )?;
            let rows = stmt
                .query_map([peer], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        let mut earlier = Vec::new();
        for (seq, id, payload) in pending {
            let Some(plain) = key.open(&aad("outbox", "payload", &id), &payload).ok() else {
                continue; // leave an unreadable row alone
            };
            earlier.extend(plain.chunks_exact(16).filter_map(MessageId::from_slice));
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        }
        earlier.append(&mut ids);
        let ids = earlier;
        for chunk in ids.chunks(ponte_e2e::envelope::MAX_RECEIPT_IDS) {
            insert_outbox(
                tx,
                key,
                &MessageId::random(),
                peer,
                &OutboxKind::ReadReceipt(chunk.to_vec()),
                UnixMillis::now(),
            )?;
        }
    }
    Ok(())
}

fn advance(conn: &Connection, peer: &str, id: &MessageId, to: Status) -> Result<()> {
    conn.execute(
        "UPDATE messages SET status = ?4 WHERE peer = ?1 AND outgoing = 1 AND id = ?2
         AND (status < ?4 OR status = ?3)",
        params![peer, id.0.to_vec(), Status::Expired.to_i64(), to.to_i64()],
    )?;
    Ok(())
}

fn select_views(
    conn: &Connection,
    key: &ProfileKey,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<MessageView>> {
    let sql = format!(
        "SELECT peer, outgoing, id, body, sent_at_ms, status, flags FROM messages WHERE {filter} ORDER BY seq"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? != 0,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, UnixMillis>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (peer, outgoing, id, body, sent_at, status, flags) in rows {
        let id = MessageId::from_slice(&id).ok_or(ClientError::Corrupt("message id"))?;
        let text = key
            .open(
                &aad("messages", "body", &row_key(&peer, outgoing, &id)),
                &body,
            )
            .map_err(|_| ClientError::Corrupt("message body"))?;
        out.push(MessageView {
            id,
            peer,
            outgoing,
            text: String::from_utf8(text).map_err(|_| ClientError::Corrupt("message text"))?,
            sent_at,
            status: Status::from_i64(status),
            key_changed: flags & FLAG_UNVERIFIED_KEY_CHANGE != 0,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::profile::{KeySource, Profile};

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
                OutboxKind::Text(_) => Vec::new(),
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
