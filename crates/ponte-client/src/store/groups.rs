//! Groups in the profile database (schema version 3).
//!
//! | table | holds |
//! |---|---|
//! | `groups` | one row per group this device knows: its id, its title (S, a copy of what the ops say, for the history) and where this device stands (joining, member, removed, left) |
//! | `group_ops` | the group's signed ops in chain order (S); the state is their replay, checked again at every load |
//! | `group_keys` | this device's Megolm sender session and the other members' inbound sessions per group (P) |
//! | `group_receipts` | per outgoing group message and recipient: sent to, delivered, read |
//! | `group_pending` | ops, sender keys and group messages that arrived before what they depend on (S), retried as the group advances |
//!
//! Group messages live in `messages` like any other, with `group_id` set:
//! an incoming one has the sender's handle as `peer`, an outgoing one the
//! conversation key `g:HEX` (never a handle: handles have no `:`). Changes
//! of membership are history rows too, flagged [`FLAG_GROUP_NOTICE`].

use super::files::insert_file;
use super::messages::insert_outbox;
use super::{aad, row_key, FileState, OutboxKind, Status, Store, UnixMillis};
use crate::atrest::ProfileKey;
use crate::{ClientError, Result};
use ponte_e2e::group::{GroupId, GroupReceiver, GroupSender, GroupState, SignedOp};
use ponte_e2e::{FileDescriptor, MessageId, PublicIdentity};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// Added in schema version 3.
pub(super) const SCHEMA_GROUPS: &str = "
CREATE TABLE IF NOT EXISTS groups (
    id BLOB PRIMARY KEY,
    status INTEGER NOT NULL,
    title BLOB,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_ops (
    group_id BLOB NOT NULL,
    version INTEGER NOT NULL,
    op BLOB NOT NULL,
    PRIMARY KEY (group_id, version)
);
CREATE TABLE IF NOT EXISTS group_keys (
    group_id BLOB NOT NULL,
    role INTEGER NOT NULL,
    pickle TEXT NOT NULL,
    PRIMARY KEY (group_id, role)
);
CREATE TABLE IF NOT EXISTS group_receipts (
    id BLOB NOT NULL,
    member TEXT NOT NULL,
    group_id BLOB NOT NULL,
    state INTEGER NOT NULL,
    PRIMARY KEY (id, member)
);
CREATE INDEX IF NOT EXISTS group_receipts_by_member ON group_receipts(group_id, member);
CREATE TABLE IF NOT EXISTS group_pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB NOT NULL,
    sender TEXT NOT NULL,
    kind INTEGER NOT NULL,
    payload BLOB NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS group_pending_by_group ON group_pending(group_id, seq);
ALTER TABLE messages ADD COLUMN group_id BLOB;
CREATE INDEX IF NOT EXISTS messages_by_group ON messages(group_id, seq) WHERE group_id IS NOT NULL;
";

/// Message flag: a change of a group's membership or title, not a message
/// (no read receipt, no ticks).
pub const FLAG_GROUP_NOTICE: i64 = 2;

/// Most items held in `group_pending` per group (the oldest go first).
pub const MAX_PENDING_PER_GROUP: i64 = 256;
/// Most items held in `group_pending` in all (items for groups nobody
/// added this device to cannot grow it further; the oldest go first).
pub const MAX_PENDING_TOTAL: i64 = 4096;
/// Most ops stored per group (far above what [`ponte_e2e::group::MAX_MEMBERS`]
/// adds, renames and promotions need in practice).
pub const MAX_OPS_PER_GROUP: u64 = 8192;
/// Most groups this device is being added to (ops arrived, not a member
/// yet) at once; beyond it the least recently changed is forgotten, so a
/// stranger cannot make it store more.
pub const MAX_JOINING_GROUPS: i64 = 64;

const ROLE_SENDER: i64 = 0;
const ROLE_RECEIVER: i64 = 1;

/// Per-recipient state of an outgoing group message.
const RECEIPT_SENT: i64 = 0;
const RECEIPT_DELIVERED: i64 = 1;
const RECEIPT_READ: i64 = 2;

/// The conversation key of a group in `messages.peer` and the outbox.
pub fn group_key(group: &GroupId) -> String {
    format!("g:{}", group.to_hex())
}

/// The group a conversation key names, if it names one.
pub fn group_of_key(peer: &str) -> Option<GroupId> {
    peer.strip_prefix("g:").and_then(GroupId::from_hex)
}

/// A conversation: with a contact, or in a group. Every command that shows
/// or sends messages takes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Conversation {
    /// With the contact of this handle.
    Contact(String),
    /// In this group.
    Group(GroupId),
}

/// Where this device stands in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupStatus {
    /// Ops arrived but none adds this device yet (not listed).
    Joining,
    /// A member.
    Member,
    /// An admin removed this device.
    Removed,
    /// This device left.
    Left,
}

impl GroupStatus {
    fn to_i64(self) -> i64 {
        match self {
            GroupStatus::Joining => 0,
            GroupStatus::Member => 1,
            GroupStatus::Removed => 2,
            GroupStatus::Left => 3,
        }
    }

    fn from_i64(v: i64) -> Result<Self> {
        Ok(match v {
            0 => GroupStatus::Joining,
            1 => GroupStatus::Member,
            2 => GroupStatus::Removed,
            3 => GroupStatus::Left,
            _ => return Err(ClientError::Corrupt("group status")),
        })
    }

    /// Lower-case name as printed and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Joining => "joining",
            GroupStatus::Member => "member",
            GroupStatus::Removed => "removed",
            GroupStatus::Left => "left",
        }
    }
}

/// A group as stored: its ops, checked again by replaying them.
#[derive(Debug, Clone)]
pub struct GroupRecord {
    /// Where this device stands.
    pub status: GroupStatus,
    /// The state after every stored op.
    pub state: GroupState,
    /// The ops, create first.
    pub ops: Vec<SignedOp>,
}

impl GroupRecord {
    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.state.id()
    }

    /// Whether `op` is already in the log (by its hash).
    pub fn has_op(&self, hash: &[u8; 32]) -> bool {
        self.ops
            .iter()
            .any(|o| o.hash().map(|h| &h == hash).unwrap_or(false))
    }
}

/// Aggregated ticks of an outgoing group message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTicks {
    /// Recipients whose device has it.
    pub delivered_to: u32,
    /// Recipients who displayed it.
    pub read_by: u32,
    /// Recipients that count (sent to, still members).
    pub of: u32,
}

/// A history row describing a change to a group.
#[derive(Debug, Clone)]
pub struct GroupNotice {
    /// The member who made it (signer), as `peer` of the row.
    pub by: String,
    /// What happened, for the history.
    pub text: String,
    /// Already shown (this device made the change and printed it).
    pub shown: bool,
}

/// What an item in `group_pending` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKind {
    /// A signed op (its encoding).
    Op,
    /// A sender key (its encoded session key).
    SenderKey,
    /// A group message (its `GroupCiphertext` bytes).
    Message,
}

impl PendingKind {
    fn to_i64(self) -> i64 {
        match self {
            PendingKind::Op => 1,
            PendingKind::SenderKey => 2,
            PendingKind::Message => 3,
        }
    }

    fn from_i64(v: i64) -> Result<Self> {
        Ok(match v {
            1 => PendingKind::Op,
            2 => PendingKind::SenderKey,
            3 => PendingKind::Message,
            _ => return Err(ClientError::Corrupt("pending group item")),
        })
    }
}

/// An item waiting in `group_pending`.
#[derive(Debug, Clone)]
pub struct PendingItem {
    /// Its row.
    pub seq: i64,
    /// The group it names.
    pub group: GroupId,
    /// Who sent it (pairwise sender, or the group message's sender).
    pub sender: String,
    /// What it is.
    pub kind: PendingKind,
    /// Its bytes.
    pub payload: Vec<u8>,
}

/// Changes to one group, written in one transaction (alone, with an
/// incoming pairwise message, or with an outgoing group message).
#[derive(Default)]
pub struct GroupWrite {
    /// The group's id and this device's standing in it.
    pub group: Option<(GroupId, GroupStatus)>,
    /// The group's title after the change.
    pub title: Option<String>,
    /// Items to hold until what they depend on arrives.
    pub pending_add: Vec<(GroupId, String, PendingKind, Vec<u8>)>,
    /// Ops to append, with the version each makes (1 for create).
    pub ops: Vec<(u64, SignedOp)>,
    /// Replace (`Some(Some)`) or drop (`Some(None)`) this device's sender.
    pub sender: Option<Option<GroupSender>>,
    /// Replace (`Some(Some)`) or drop (`Some(None)`) the inbound sessions.
    pub receiver: Option<Option<GroupReceiver>>,
    /// Pairwise items for the outbox, in order.
    pub outbox: Vec<(String, OutboxKind)>,
    /// History rows describing what changed.
    pub notices: Vec<GroupNotice>,
    /// Members first seen in a signed op: stored as contacts (trust on
    /// first use, from the admin's signature) unless already known.
    pub contacts: Vec<(String, PublicIdentity)>,
    /// Members who left: they no longer count in the ticks.
    pub gone: Vec<String>,
    /// Pending items dealt with (applied or refused).
    pub pending_done: Vec<i64>,
    /// Drop every pending item and receipt of the group (this device is out).
    pub forget: bool,
}

impl std::fmt::Debug for GroupWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWrite")
            .field("group", &self.group)
            .field("ops", &self.ops.len())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

/// An incoming group message, decrypted, ready to commit.
#[derive(Debug)]
pub struct GroupIncoming<'a> {
    /// The group.
    pub group: GroupId,
    /// The sender's handle.
    pub sender: &'a str,
    /// The id the server delivered it under.
    pub delivered_id: MessageId,
    /// The envelope's id.
    pub id: MessageId,
    /// The sender's clock.
    pub sent_at: UnixMillis,
    /// Text, or a file (its caption is the text).
    pub text: &'a str,
    /// The file, for a file message.
    pub file: Option<&'a FileDescriptor>,
    /// The inbound sessions after decrypting.
    pub receiver: &'a GroupReceiver,
    /// The pending row it came from, if any.
    pub pending: Option<i64>,
}

/// An outgoing group message to write.
#[derive(Debug)]
pub struct GroupOutgoing<'a> {
    /// The group.
    pub group: GroupId,
    /// Its id.
    pub id: MessageId,
    /// The Megolm ciphertext (`GroupCiphertext` bytes).
    pub ciphertext: &'a [u8],
    /// The members it goes to.
    pub recipients: &'a [String],
    /// The sender session after encrypting.
    pub sender: &'a GroupSender,
    /// Sender keys to hand out pairwise first (a new or rotated session).
    pub keys: Vec<(String, OutboxKind)>,
}

fn op_aad(group: &GroupId, version: u64) -> Vec<u8> {
    let mut row = group.0.to_vec();
    row.extend_from_slice(&version.to_be_bytes());
    aad("group_ops", "op", &row)
}

fn pending_aad(group: &GroupId, sender: &str) -> Vec<u8> {
    let mut row = group.0.to_vec();
    row.extend_from_slice(sender.as_bytes());
    aad("group_pending", "payload", &row)
}

/// Groups as last loaded, by id. Ops are only ever appended, so a group
/// loaded before needs only the ops stored since: its ops are not
/// decrypted and verified again for every message and every change. A
/// group forgotten (one being joined, evicted) empties the cache, so one
/// stored again under the same id is loaded afresh.
#[derive(Default)]
pub(super) struct GroupCache(std::cell::RefCell<std::collections::HashMap<GroupId, GroupRecord>>);

/// Most groups kept in the cache (it is emptied when full).
const GROUP_CACHE_MAX: usize = 256;

impl Store {
    /// A group by id, its ops replayed and checked (`None` if unknown).
    /// A group loaded before is taken from the cache, the ops stored since
    /// checked and applied on top (ops are only ever appended).
    pub fn group(&self, id: &GroupId) -> Result<Option<GroupRecord>> {
        let now: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT status, (SELECT COUNT(*) FROM group_ops WHERE group_id = ?1)
                 FROM groups WHERE id = ?1",
                [id.0.to_vec()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((status, count)) = now else {
            return Ok(None);
        };
        let status = GroupStatus::from_i64(status)?;
        let cached = self.groups.0.borrow().get(id).cloned();
        let record = match cached {
            Some(mut rec) if count >= rec.ops.len() as i64 => {
                let new = load_ops(&self.conn, &self.key, id, rec.ops.len() as u64)?;
                let mut state = Some(rec.state.clone());
                for op in &new {
                    state = state.and_then(|s| s.apply(op).ok());
                }
                match state {
                    Some(state) => {
                        rec.state = state;
                        rec.ops.extend(new);
                        rec.status = status;
                        Some(rec)
                    }
                    None => load_group(&self.conn, &self.key, id)?,
                }
            }
            _ => load_group(&self.conn, &self.key, id)?,
        };
        if let Some(r) = &record {
            let mut cache = self.groups.0.borrow_mut();
            if cache.len() >= GROUP_CACHE_MAX {
                cache.clear();
            }
            cache.insert(*id, r.clone());
        }
        Ok(record)
    }

    /// Every group this device is or was a member of (not those it is
    /// only being added to), oldest first.
    pub fn groups(&self) -> Result<Vec<GroupRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM groups WHERE status <> 0 ORDER BY rowid")?;
        let ids: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let id = GroupId(
                id.try_into()
                    .map_err(|_| ClientError::Corrupt("group id"))?,
            );
            if let Some(g) = load_group(&self.conn, &self.key, &id)? {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// This device's sender session for a group, if it has one.
    pub fn group_sender(&self, id: &GroupId) -> Result<Option<GroupSender>> {
        self.group_pickle(id, ROLE_SENDER)?
            .map(|p| {
                GroupSender::from_pickle(&p, self.key.pickle_key())
                    .map_err(|_| ClientError::Corrupt("group sender key"))
            })
            .transpose()
    }

    /// The other members' inbound sessions for a group (empty if none yet).
    pub fn group_receiver(&self, id: &GroupId) -> Result<GroupReceiver> {
        match self.group_pickle(id, ROLE_RECEIVER)? {
            Some(p) => GroupReceiver::from_pickle(&p, self.key.pickle_key())
                .map_err(|_| ClientError::Corrupt("group receiver keys")),
            None => Ok(GroupReceiver::new(*id)),
        }
    }

    fn group_pickle(&self, id: &GroupId, role: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT pickle FROM group_keys WHERE group_id = ?1 AND role = ?2",
                params![id.0.to_vec(), role],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Write `change` in one transaction.
    pub fn write_group(&self, change: &GroupWrite) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let evicted = write_group(&tx, &self.key, change)?;
        tx.commit()?;
        if evicted {
            self.forget_cached_groups();
        }
        Ok(())
    }

    /// Empty the cache of loaded groups (after a write that removed a
    /// group, so that one stored again under its id is loaded afresh).
    pub(super) fn forget_cached_groups(&self) {
        self.groups.0.borrow_mut().clear();
    }

    /// Queue an outgoing group text: its history row, its recipients, the
    /// sender keys to hand out first and the ciphertext in the outbox, with
    /// the sender session that made it (one transaction).
    pub fn queue_group_text(&self, out: &GroupOutgoing<'_>, text: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let peer = group_key(&out.group);
        let now = UnixMillis::now();
        let body = self.key.seal(
            &aad("messages", "body", &row_key(&peer, true, &out.id)),
            text.as_bytes(),
        );
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status, shown_status, group_id)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?5, ?6)",
            params![peer, out.id.0.to_vec(), body, now, Status::Queued.to_i64(), out.group.0.to_vec()],
        )?;
        insert_group_send(&tx, &self.key, out, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Queue an outgoing group file whose encrypted copy is at `encrypted`
    /// (its history row and `files` row); it goes out once uploaded
    /// ([`Store::group_file_uploaded`]).
    pub fn queue_group_file(
        &self,
        group: &GroupId,
        fd: &FileDescriptor,
        encrypted: &std::path::Path,
    ) -> Result<MessageId> {
        let id = MessageId::random();
        let peer = group_key(group);
        let tx = self.conn.unchecked_transaction()?;
        let body = self.key.seal(
            &aad("messages", "body", &row_key(&peer, true, &id)),
            fd.caption.as_bytes(),
        );
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status, shown_status, group_id)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?5, ?6)",
            params![peer, id.0.to_vec(), body, UnixMillis::now(), Status::Queued.to_i64(), group.0.to_vec()],
        )?;
        insert_file(
            &tx,
            &self.key,
            &peer,
            true,
            &id,
            fd,
            FileState::Upload,
            Some(encrypted),
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// The blob of an outgoing group file is on the server: the file row
    /// moves on and the Megolm message carrying its descriptor goes into
    /// the outbox (one transaction).
    pub fn group_file_uploaded(&self, out: &GroupOutgoing<'_>) -> Result<()> {
        let peer = group_key(&out.group);
        let tx = self.conn.unchecked_transaction()?;
        let changed = tx.execute(
            "UPDATE files SET state = ?4, path = NULL WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND state = ?3",
            params![
                peer,
                out.id.0.to_vec(),
                FileState::Upload.to_i64(),
                FileState::Uploaded.to_i64()
            ],
        )?;
        if changed == 1 {
            insert_group_send(&tx, &self.key, out, UnixMillis::now())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Who an outgoing group message still goes to: its recipients at
    /// send time that are still members. `None` when this device is no
    /// longer a member (the message must not go out).
    pub fn group_recipients(&self, group: &GroupId, id: &MessageId) -> Result<Option<Vec<String>>> {
        let Some(record) = self.group(group)? else {
            return Ok(None);
        };
        if record.status != GroupStatus::Member {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT member FROM group_receipts WHERE id = ?1 ORDER BY rowid")?;
        let members: Vec<String> = stmt
            .query_map([id.0.to_vec()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(
            members
                .into_iter()
                .filter(|m| record.state.member_by_handle(m).is_some())
                .collect(),
        ))
    }

    /// The server refused these recipients of a group message: they no
    /// longer count in its ticks.
    pub fn group_refused(&self, id: &MessageId, members: &[String]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        for m in members {
            tx.execute(
                "DELETE FROM group_receipts WHERE id = ?1 AND member = ?2",
                params![id.0.to_vec(), m],
            )?;
        }
        settle(&tx, id)?;
        tx.commit()?;
        Ok(())
    }

    /// A recipient of an outgoing group message has it on their device.
    pub fn group_delivered(&self, member: &str, id: &MessageId) -> Result<()> {
        group_receipt(&self.conn, member, id, RECEIPT_DELIVERED)
    }

    /// Hold an item until its group (or the key it needs) arrives; the
    /// oldest of the group's pending items go beyond
    /// [`MAX_PENDING_PER_GROUP`]. The delivery id is marked seen with it.
    pub fn add_pending(
        &self,
        group: &GroupId,
        sender: &str,
        kind: PendingKind,
        payload: &[u8],
        delivered_id: Option<&MessageId>,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let sealed = self.key.seal(&pending_aad(group, sender), payload);
        tx.execute(
            "INSERT INTO group_pending(group_id, sender, kind, payload, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                group.0.to_vec(),
                sender,
                kind.to_i64(),
                sealed,
                UnixMillis::now()
            ],
        )?;
        tx.execute(
            "DELETE FROM group_pending WHERE group_id = ?1 AND seq NOT IN
             (SELECT seq FROM group_pending WHERE group_id = ?1 ORDER BY seq DESC LIMIT ?2)",
            params![group.0.to_vec(), MAX_PENDING_PER_GROUP],
        )?;
        tx.execute(
            "DELETE FROM group_pending WHERE seq NOT IN
             (SELECT seq FROM group_pending ORDER BY seq DESC LIMIT ?1)",
            [MAX_PENDING_TOTAL],
        )?;
        if let Some(id) = delivered_id {
            tx.execute(
                "INSERT OR IGNORE INTO inbox_seen(peer, id) VALUES (?1, ?2)",
                params![sender, id.0.to_vec()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The items waiting for `group`, oldest first (an item that does not
    /// open is dropped).
    pub fn pending(&self, group: &GroupId) -> Result<Vec<PendingItem>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, sender, kind, payload FROM group_pending WHERE group_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([group.0.to_vec()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, sender, kind, sealed) in rows {
            let Ok(payload) = self.key.open(&pending_aad(group, &sender), &sealed) else {
                self.conn
                    .execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
                continue;
            };
            out.push(PendingItem {
                seq,
                group: *group,
                sender,
                kind: PendingKind::from_i64(kind)?,
                payload,
            });
        }
        Ok(out)
    }

    /// Commit a decrypted group message: its history row (and file row),
    /// the inbound sessions, the dedup markers, and the pending row it came
    /// from (one transaction). False if it was already stored.
    pub fn commit_group_incoming(&self, m: &GroupIncoming<'_>) -> Result<bool> {
        let tx = self.conn.unchecked_transaction()?;
        save_pickle(
            &tx,
            &m.group,
            ROLE_RECEIVER,
            &m.receiver.pickle(self.key.pickle_key()),
        )?;
        if let Some(seq) = m.pending {
            tx.execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
        }
        tx.execute(
            "INSERT OR IGNORE INTO inbox_seen(peer, id) VALUES (?1, ?2)",
            params![m.sender, m.delivered_id.0.to_vec()],
        )?;
        let fresh = tx.execute(
            "INSERT OR IGNORE INTO inbox_seen(peer, id) VALUES (?1, ?2)",
            params![m.sender, m.id.0.to_vec()],
        )? == 1
            || m.delivered_id == m.id;
        let exists = tx
            .query_row(
                "SELECT 1 FROM messages WHERE peer = ?1 AND outgoing = 0 AND id = ?2",
                params![m.sender, m.id.0.to_vec()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        let stored = fresh && !exists;
        if stored {
            let body = self.key.seal(
                &aad("messages", "body", &row_key(m.sender, false, &m.id)),
                m.text.as_bytes(),
            );
            tx.execute(
                "INSERT OR IGNORE INTO messages(peer, outgoing, id, body, sent_at_ms,
                 received_at_ms, status, group_id) VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    m.sender,
                    m.id.0.to_vec(),
                    body,
                    m.sent_at,
                    UnixMillis::now(),
                    Status::Received.to_i64(),
                    m.group.0.to_vec()
                ],
            )?;
            if let Some(fd) = m.file {
                insert_file(
                    &tx,
                    &self.key,
                    m.sender,
                    false,
                    &m.id,
                    fd,
                    FileState::Pending,
                    None,
                )?;
            }
        }
        tx.commit()?;
        Ok(stored)
    }

    /// Drop a pending item (refused, or it can never apply).
    pub fn drop_pending(&self, seq: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
        Ok(())
    }
}

/// A read receipt from `member` for these of our messages: group messages
/// among them move their per-member state.
pub(super) fn group_read(conn: &Connection, member: &str, ids: &[MessageId]) -> Result<()> {
    for id in ids {
        group_receipt(conn, member, id, RECEIPT_READ)?;
    }
    Ok(())
}

fn group_receipt(conn: &Connection, member: &str, id: &MessageId, to: i64) -> Result<()> {
    let changed = conn.execute(
        "UPDATE group_receipts SET state = ?3 WHERE id = ?1 AND member = ?2 AND state < ?3",
        params![id.0.to_vec(), member, to],
    )?;
    if changed > 0 {
        settle(conn, id)?;
    }
    Ok(())
}

/// Move an outgoing group message's status to what its recipients' states
/// add up to: delivered once every one has it, read once every one
/// displayed it (never backwards; nothing before it is sent).
fn settle(conn: &Connection, id: &MessageId) -> Result<()> {
    let (total, delivered, read): (i64, i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(state >= ?2), 0), COALESCE(SUM(state >= ?3), 0)
         FROM group_receipts WHERE id = ?1",
        params![id.0.to_vec(), RECEIPT_DELIVERED, RECEIPT_READ],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let to = if total == 0 {
        return Ok(());
    } else if read == total {
        Status::Read
    } else if delivered == total {
        Status::Delivered
    } else {
        return Ok(());
    };
    conn.execute(
        "UPDATE messages SET status = ?2 WHERE outgoing = 1 AND id = ?1 AND group_id IS NOT NULL
         AND status >= ?3 AND status < ?2",
        params![id.0.to_vec(), to.to_i64(), Status::Sent.to_i64()],
    )?;
    Ok(())
}

/// A group's title as last stored (for the history; `None` if unknown or
/// unreadable).
pub(super) fn title(
    conn: &Connection,
    key: &ProfileKey,
    group: &GroupId,
) -> Result<Option<String>> {
    let sealed: Option<Option<Vec<u8>>> = conn
        .query_row(
            "SELECT title FROM groups WHERE id = ?1",
            [group.0.to_vec()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(sealed
        .flatten()
        .and_then(|s| key.open(&aad("groups", "title", &group.0), &s).ok())
        .and_then(|t| String::from_utf8(t).ok()))
}

/// The ticks of an outgoing group message.
pub(super) fn ticks(conn: &Connection, id: &MessageId) -> Result<GroupTicks> {
    let (total, delivered, read): (i64, i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(state >= ?2), 0), COALESCE(SUM(state >= ?3), 0)
         FROM group_receipts WHERE id = ?1",
        params![id.0.to_vec(), RECEIPT_DELIVERED, RECEIPT_READ],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let n = |v: i64| u32::try_from(v).unwrap_or(0);
    Ok(GroupTicks {
        delivered_to: n(delivered),
        read_by: n(read),
        of: n(total),
    })
}

fn save_pickle(tx: &Transaction<'_>, group: &GroupId, role: i64, pickle: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO group_keys(group_id, role, pickle) VALUES (?1, ?2, ?3)
         ON CONFLICT(group_id, role) DO UPDATE SET pickle = excluded.pickle",
        params![group.0.to_vec(), role, pickle],
    )?;
    Ok(())
}

fn insert_group_send(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    out: &GroupOutgoing<'_>,
    now: UnixMillis,
) -> Result<()> {
    let peer = group_key(&out.group);
    save_pickle(
        tx,
        &out.group,
        ROLE_SENDER,
        &out.sender.pickle(key.pickle_key()),
    )?;
    for (to, kind) in &out.keys {
        insert_outbox(tx, key, &MessageId::random(), to, kind, now)?;
    }
    for member in out.recipients {
        tx.execute(
            "INSERT OR IGNORE INTO group_receipts(id, member, group_id, state) VALUES (?1, ?2, ?3, ?4)",
            params![out.id.0.to_vec(), member, out.group.0.to_vec(), RECEIPT_SENT],
        )?;
    }
    insert_outbox(tx, key, &out.id, &peer, &OutboxKind::Group(out.group), now)?;
    tx.execute(
        "UPDATE outbox SET ciphertext = ?2 WHERE id = ?1",
        params![out.id.0.to_vec(), out.ciphertext],
    )?;
    Ok(())
}

/// Write `change` inside the caller's transaction; true when it made
/// room by forgetting groups being joined.
pub(super) fn write_group(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    change: &GroupWrite,
) -> Result<bool> {
    let now = UnixMillis::now();
    for (group, sender, kind, payload) in &change.pending_add {
        let sealed = key.seal(&pending_aad(group, sender), payload);
        tx.execute(
            "INSERT INTO group_pending(group_id, sender, kind, payload, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![group.0.to_vec(), sender, kind.to_i64(), sealed, now],
        )?;
        tx.execute(
            "DELETE FROM group_pending WHERE group_id = ?1 AND seq NOT IN
             (SELECT seq FROM group_pending WHERE group_id = ?1 ORDER BY seq DESC LIMIT ?2)",
            params![group.0.to_vec(), MAX_PENDING_PER_GROUP],
        )?;
        tx.execute(
            "DELETE FROM group_pending WHERE seq NOT IN
             (SELECT seq FROM group_pending ORDER BY seq DESC LIMIT ?1)",
            [MAX_PENDING_TOTAL],
        )?;
    }
    for (handle, identity) in &change.contacts {
        tx.execute(
            "INSERT OR IGNORE INTO contacts(handle, curve25519, ed25519, first_seen_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                handle,
                identity.curve25519.to_vec(),
                identity.ed25519.to_vec(),
                now
            ],
        )?;
    }
    for (to, kind) in &change.outbox {
        insert_outbox(tx, key, &MessageId::random(), to, kind, now)?;
    }
    let Some((group, status)) = change.group else {
        return Ok(false);
    };
    let mut evicted = false;
    let gid = group.0.to_vec();
    tx.execute(
        "INSERT INTO groups(id, status, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET status = excluded.status, updated_ms = excluded.updated_ms",
        params![gid, status.to_i64(), now],
    )?;
    if status == GroupStatus::Joining {
        // Groups this device is being added to but is not in (yet): a
        // stranger can start any number; the least recently changed go.
        let stale: Vec<Vec<u8>> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM groups WHERE status = ?1
                 ORDER BY updated_ms DESC, rowid DESC LIMIT -1 OFFSET ?2",
            )?;
            let ids = stmt
                .query_map(
                    params![GroupStatus::Joining.to_i64(), MAX_JOINING_GROUPS],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            ids
        };
        for id in stale {
            evicted = true;
            for table in ["group_ops", "group_pending", "group_keys"] {
                tx.execute(&format!("DELETE FROM {table} WHERE group_id = ?1"), [&id])?;
            }
            tx.execute("DELETE FROM groups WHERE id = ?1", [&id])?;
        }
    }
    if let Some(title) = &change.title {
        let sealed = key.seal(&aad("groups", "title", &group.0), title.as_bytes());
        tx.execute(
            "UPDATE groups SET title = ?2 WHERE id = ?1",
            params![gid, sealed],
        )?;
    }
    for (version, op) in &change.ops {
        if *version > MAX_OPS_PER_GROUP {
            return Err(ClientError::Invalid(format!(
                "a group keeps at most {MAX_OPS_PER_GROUP} changes"
            )));
        }
        let bytes = op.encode().map_err(ponte_e2e::Error::GroupOp)?;
        let sealed = key.seal(&op_aad(&group, *version), &bytes);
        tx.execute(
            "INSERT INTO group_ops(group_id, version, op) VALUES (?1, ?2, ?3)",
            params![gid, i64::try_from(*version).unwrap_or(i64::MAX), sealed],
        )?;
    }
    match &change.sender {
        Some(Some(sender)) => {
            save_pickle(tx, &group, ROLE_SENDER, &sender.pickle(key.pickle_key()))?
        }
        Some(None) => {
            tx.execute(
                "DELETE FROM group_keys WHERE group_id = ?1 AND role = ?2",
                params![gid, ROLE_SENDER],
            )?;
        }
        None => {}
    }
    match &change.receiver {
        Some(Some(receiver)) => save_pickle(
            tx,
            &group,
            ROLE_RECEIVER,
            &receiver.pickle(key.pickle_key()),
        )?,
        Some(None) => {
            tx.execute(
                "DELETE FROM group_keys WHERE group_id = ?1 AND role = ?2",
                params![gid, ROLE_RECEIVER],
            )?;
        }
        None => {}
    }
    for notice in &change.notices {
        let id = MessageId::random();
        let body = key.seal(
            &aad("messages", "body", &row_key(&notice.by, false, &id)),
            notice.text.as_bytes(),
        );
        let status = Status::Received.to_i64();
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, received_at_ms, status,
             shown_status, flags, group_id) VALUES (?1, 0, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8)",
            params![
                notice.by,
                id.0.to_vec(),
                body,
                now,
                status,
                if notice.shown { status } else { -1 },
                FLAG_GROUP_NOTICE,
                gid
            ],
        )?;
    }
    for member in &change.gone {
        let ids: Vec<Vec<u8>> = {
            let mut stmt =
                tx.prepare("SELECT id FROM group_receipts WHERE group_id = ?1 AND member = ?2")?;
            let ids = stmt
                .query_map(params![gid, member], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            ids
        };
        tx.execute(
            "DELETE FROM group_receipts WHERE group_id = ?1 AND member = ?2",
            params![gid, member],
        )?;
        for id in ids.iter().filter_map(|i| MessageId::from_slice(i)) {
            settle(tx, &id)?;
        }
    }
    for seq in &change.pending_done {
        tx.execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
    }
    if change.forget {
        tx.execute("DELETE FROM group_pending WHERE group_id = ?1", [&gid])?;
        tx.execute("DELETE FROM group_keys WHERE group_id = ?1", [&gid])?;
    }
    Ok(evicted)
}

/// A group's stored ops after version `after`, in order.
fn load_ops(
    conn: &Connection,
    key: &ProfileKey,
    id: &GroupId,
    after: u64,
) -> Result<Vec<SignedOp>> {
    let mut stmt = conn.prepare(
        "SELECT version, op FROM group_ops WHERE group_id = ?1 AND version > ?2 ORDER BY version",
    )?;
    let rows = stmt
        .query_map(
            params![id.0.to_vec(), i64::try_from(after).unwrap_or(i64::MAX)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ops = Vec::with_capacity(rows.len());
    for (version, sealed) in rows {
        let version = u64::try_from(version).map_err(|_| ClientError::Corrupt("group op"))?;
        let bytes = key
            .open(&op_aad(id, version), &sealed)
            .map_err(|_| ClientError::Corrupt("group op"))?;
        ops.push(SignedOp::decode(&bytes).map_err(|_| ClientError::Corrupt("group op"))?);
    }
    Ok(ops)
}

fn load_group(conn: &Connection, key: &ProfileKey, id: &GroupId) -> Result<Option<GroupRecord>> {
    let status: Option<i64> = conn
        .query_row(
            "SELECT status FROM groups WHERE id = ?1",
            [id.0.to_vec()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(status) = status else {
        return Ok(None);
    };
    let ops = load_ops(conn, key, id, 0)?;
    let state = GroupState::replay(&ops).map_err(|_| ClientError::Corrupt("group ops"))?;
    if state.id() != *id {
        return Err(ClientError::Corrupt("group ops"));
    }
    Ok(Some(GroupRecord {
        status: GroupStatus::from_i64(status)?,
        state,
        ops,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{meta_get, meta_set, open_connection, SCHEMA, SCHEMA_FILES};
    use super::*;
    use crate::profile::{KeySource, Profile};

    #[test]
    fn a_version_2_database_gains_the_group_tables_and_keeps_its_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ponte.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(SCHEMA_FILES).unwrap();
            meta_set(&conn, "schema", "2").unwrap();
            conn.execute(
                "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status)
                 VALUES ('bob', 0, x'00', x'00', 1, 9)",
                [],
            )
            .unwrap();
        }
        let conn = open_connection(&path).unwrap();
        assert_eq!(
            meta_get(&conn, "schema").unwrap().as_deref(),
            Some(super::super::SCHEMA_VERSION.to_string().as_str())
        );
        let (n, group): (i64, Option<Vec<u8>>) = conn
            .query_row("SELECT COUNT(*), MAX(group_id) FROM messages", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, group), (1, None));
        for table in [
            "groups",
            "group_ops",
            "group_keys",
            "group_receipts",
            "group_pending",
        ] {
            let rows: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(rows, 0, "{table}");
        }
        drop(conn);
        // Opening again runs nothing twice (ALTER TABLE would fail).
        open_connection(&path).unwrap();
    }

    #[test]
    fn pending_items_are_capped_per_group_and_in_all() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = Profile::create(&tmp.path().join("p"), KeySource::KeyFile).unwrap();
        let store = profile.store();
        let group = GroupId::random();
        for i in 0..MAX_PENDING_PER_GROUP + 10 {
            store
                .add_pending(&group, "bob", PendingKind::Op, &i.to_be_bytes(), None)
                .unwrap();
        }
        let held = store.pending(&group).unwrap();
        assert_eq!(held.len() as i64, MAX_PENDING_PER_GROUP);
        // The oldest went first; what is held opens as it was stored.
        assert_eq!(held[0].payload, 10i64.to_be_bytes());
        assert_eq!(held[0].sender, "bob");
        // Many groups nobody added us to: bounded in all.
        let write = GroupWrite {
            pending_add: (0..MAX_PENDING_TOTAL)
                .map(|_| {
                    (
                        GroupId::random(),
                        "eve".to_owned(),
                        PendingKind::SenderKey,
                        vec![1],
                    )
                })
                .collect(),
            ..GroupWrite::default()
        };
        store.write_group(&write).unwrap();
        let total: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM group_pending", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, MAX_PENDING_TOTAL);
        assert!(store.pending(&group).unwrap().is_empty());
    }

    #[test]
    fn groups_being_joined_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = Profile::create(&tmp.path().join("p"), KeySource::KeyFile).unwrap();
        let store = profile.store();
        let first = GroupId::random();
        for group in
            std::iter::once(first).chain((0..MAX_JOINING_GROUPS).map(|_| GroupId::random()))
        {
            store
                .write_group(&GroupWrite {
                    group: Some((group, GroupStatus::Joining)),
                    pending_add: vec![(group, "eve".into(), PendingKind::Op, vec![1])],
                    ..GroupWrite::default()
                })
                .unwrap();
        }
        let joining: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM groups WHERE status = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(joining, MAX_JOINING_GROUPS);
        // The oldest went, with what it held.
        assert!(store.pending(&first).unwrap().is_empty());
    }
}
