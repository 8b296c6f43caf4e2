//! Groups in the profile database (schema version 3).
//!
//! | table | holds |
//! |---|---|
//! | `groups` | one row per group this device knows: its id, its title (S, a copy of what the ops say, for the history) and where this device stands (joining, member, removed, left) |
//! | `group_ops` | the group's signed ops in chain order (S); the state is their replay, checked again at every load |
//! | `group_keys` | this device's Megolm sender session and the other members' inbound sessions per group (P) |
//! | `group_receipts` | per outgoing group message and recipient: sent to, delivered, read |
//! | `group_pending` | ops, sender keys, group messages and a group's timer handed over pairwise that arrived before what they depend on (S), retried as the group advances |
//!
//! Group messages live in `messages` like any other, with `group_id` set:
//! an incoming one has the sender's handle as `peer`, an outgoing one the
//! conversation key `g:HEX` (never a handle: handles have no `:`). Changes
//! of membership are history rows too, flagged [`FLAG_GROUP_NOTICE`].

mod pending;
mod traffic;
mod write;

pub(super) use traffic::{group_read, insert_group_send, ticks};
use traffic::{save_pickle, settle};
pub(super) use write::write_group;

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
/// The server dropped this recipient's copy undelivered after its
/// retention period (an expiry notice): it never reached them.
const RECEIPT_EXPIRED: i64 = -1;

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
    /// Recipients whose copy the server dropped undelivered after its
    /// retention period: they will never have it (counted in `of`).
    pub expired: u32,
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
    /// A group's timer handed over pairwise (sent time u64 BE, message id,
    /// then the kind 7 body).
    Timer,
}

impl PendingKind {
    fn to_i64(self) -> i64 {
        match self {
            PendingKind::Op => 1,
            PendingKind::SenderKey => 2,
            PendingKind::Message => 3,
            PendingKind::Timer => 4,
        }
    }

    fn from_i64(v: i64) -> Result<Self> {
        Ok(match v {
            1 => PendingKind::Op,
            2 => PendingKind::SenderKey,
            3 => PendingKind::Message,
            4 => PendingKind::Timer,
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
    /// The group's timer handed to members who join (after the outbox
    /// items: their log comes first), each with the time it was set, so
    /// the latest setting still wins on their side.
    pub timers: Vec<(String, ponte_e2e::TimerSetting, UnixMillis)>,
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
    /// The timer in its envelope: it disappears that long after it is
    /// first displayed.
    pub timer: Option<ponte_e2e::Timer>,
    /// Not a message but a member's setting of the group's timer (`Some(None)`:
    /// off): a notice, and the group's timer if it is the latest.
    pub timer_set: Option<Option<ponte_e2e::Timer>>,
    /// The message it replies to (quotes), by id, as its envelope says;
    /// shown only if that message is in this group here.
    pub reply_to: Option<MessageId>,
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

    /// Write `change` in one transaction; the ids of the outbox entries
    /// it wrote.
    pub fn write_group(&self, change: &GroupWrite) -> Result<Vec<MessageId>> {
        let tx = self.conn.unchecked_transaction()?;
        let (evicted, queued) = write_group(&tx, &self.key, change)?;
        tx.commit()?;
        if evicted {
            self.forget_cached_groups();
        }
        Ok(queued)
    }

    /// Empty the cache of loaded groups (after a write that removed a
    /// group, so that one stored again under its id is loaded afresh).
    pub(super) fn forget_cached_groups(&self) {
        self.groups.0.borrow_mut().clear();
    }
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
mod tests;
