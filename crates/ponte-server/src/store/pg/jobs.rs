//! The SQL of every write job, run by the writer inside its batch
//! transaction ([`Tx`]). Before anything is added to a mailbox its owner's
//! `accounts` row is locked (see the module docs of `store::pg`); the
//! locked rows' `pending` counts are kept in memory for the batch and
//! written back once, before the commit.

use super::read::{account_from_row, arr32, blob_from_row, key_counts, BLOB_COLUMNS};
use super::write::{remember_handle, Done, Work};
use super::PgError;
use crate::store::jobs::{invite_hash, EXPIRE_BATCH};
use crate::store::types::*;
use crate::store::{BlobCreateOutcome, BlobId, BlobInfo, NewBlob};
use bytes::Bytes;
use deadpool_postgres::ClientWrapper;
use std::collections::{HashMap, HashSet};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

type Params<'a> = [&'a (dyn ToSql + Sync)];

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn seq_of(v: i64) -> Seq {
    Seq(u64::try_from(v).unwrap_or(0))
}

/// The open transaction of a batch.
pub(super) struct Tx<'a> {
    c: &'a ClientWrapper,
    /// Accounts locked by this transaction, with their waiting messages as
    /// this transaction leaves them (`None`: no such account).
    locked: HashMap<AccountId, Option<i64>>,
    /// Locked accounts whose count changed.
    dirty: HashSet<AccountId>,
    handover: Vec<Committed>,
    handles: &'a mut HashMap<AccountId, String>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(c: &'a ClientWrapper, handles: &'a mut HashMap<AccountId, String>) -> Self {
        Self {
            c,
            locked: HashMap::new(),
            dirty: HashSet::new(),
            handover: Vec::new(),
            handles,
        }
    }

    async fn query(&self, sql: &str, p: &Params<'_>) -> Result<Vec<Row>, PgError> {
        let st = self.c.prepare_cached(sql).await?;
        Ok(self.c.query(&st, p).await?)
    }

    async fn opt(&self, sql: &str, p: &Params<'_>) -> Result<Option<Row>, PgError> {
        let st = self.c.prepare_cached(sql).await?;
        Ok(self.c.query_opt(&st, p).await?)
    }

    async fn one(&self, sql: &str, p: &Params<'_>) -> Result<Row, PgError> {
        let st = self.c.prepare_cached(sql).await?;
        Ok(self.c.query_one(&st, p).await?)
    }

    async fn exec(&self, sql: &str, p: &Params<'_>) -> Result<u64, PgError> {
        let st = self.c.prepare_cached(sql).await?;
        Ok(self.c.execute(&st, p).await?)
    }

    async fn simple(&self, sql: &str) -> Result<(), PgError> {
        Ok(self.c.batch_execute(sql).await?)
    }

    /// Locks the row of `account` (once per transaction); its waiting
    /// messages, `None` if there is no such account.
    async fn lock(&mut self, account: AccountId) -> Result<Option<i64>, PgError> {
        if let Some(p) = self.locked.get(&account) {
            return Ok(*p);
        }
        let p = self
            .opt(
                "SELECT pending FROM accounts WHERE id = $1 FOR NO KEY UPDATE",
                &[&account],
            )
            .await?
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()?;
        self.locked.insert(account, p);
        Ok(p)
    }

    /// Looks up and locks the account with `handle`: its id and waiting
    /// messages.
    async fn lock_handle(&mut self, handle: &str) -> Result<Option<(AccountId, i64)>, PgError> {
        let row = self
            .opt(
                "SELECT id, pending FROM accounts WHERE handle = $1 FOR NO KEY UPDATE",
                &[&handle],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: AccountId = row.try_get(0)?;
        let stored: i64 = row.try_get(1)?;
        let p = *self.locked.entry(id).or_insert(Some(stored));
        Ok(Some((id, p.unwrap_or(stored))))
    }

    /// Adds `d` to the waiting messages of a locked account.
    fn add_pending(&mut self, account: AccountId, d: i64) {
        if let Some(Some(p)) = self.locked.get_mut(&account) {
            *p = (*p + d).max(0);
            self.dirty.insert(account);
        }
    }

    /// Writes the changed counts back (one statement).
    pub(super) async fn flush_pending(&mut self) -> Result<(), PgError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let (ids, counts): (Vec<i64>, Vec<i64>) = self
            .dirty
            .iter()
            .filter_map(|id| self.locked.get(id).copied().flatten().map(|p| (*id, p)))
            .unzip();
        self.exec(
            "UPDATE accounts AS a SET pending = v.p
             FROM unnest($1::bigint[], $2::bigint[]) AS v(id, p) WHERE a.id = v.id",
            &[&ids, &counts],
        )
        .await?;
        self.dirty.clear();
        Ok(())
    }

    pub(super) fn into_handover(self) -> Vec<Committed> {
        self.handover
    }

    /// The handle of `account` as its peers see it (`None` without a row).
    async fn handle_of(&mut self, account: AccountId) -> Result<Option<String>, PgError> {
        if let Some(h) = self.handles.get(&account) {
            return Ok(Some(h.clone()));
        }
        let h: Option<String> = self
            .opt("SELECT handle FROM accounts WHERE id = $1", &[&account])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if let Some(h) = &h {
            remember_handle(self.handles, account, h);
        }
        Ok(h)
    }

    /// Runs `keep_if` in a savepoint, kept only when it says so.
    async fn savepoint_end(&self, keep: bool) -> Result<(), PgError> {
        if keep {
            self.simple("RELEASE SAVEPOINT job").await
        } else {
            self.simple("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                .await
        }
    }
}

/// Runs one job in the open transaction.
pub(super) async fn run(tx: &mut Tx<'_>, work: &Work) -> Result<Done, PgError> {
    Ok(match work {
        Work::Register(a) => {
            tx.simple("SAVEPOINT job").await?;
            let out = register(tx, a).await?;
            tx.savepoint_end(matches!(out, RegisterOutcome::Created(_)))
                .await?;
            Done::Register(out)
        }
        Work::Upload {
            account,
            one_time,
            fallback,
            max_one_time,
        } => {
            tx.lock(*account).await?;
            tx.simple("SAVEPOINT job").await?;
            let out = upload(tx, *account, one_time, fallback.as_ref(), *max_one_time).await?;
            tx.savepoint_end(matches!(out, UploadOutcome::Stored(_)))
                .await?;
            Done::Upload(out)
        }
        Work::Claim(handle) => Done::Claim(claim(tx, handle).await?),
        Work::Send(m) => Done::Send(send(tx, m).await?),
        Work::SendGroup(m) => Done::Group(send_group(tx, m).await?),
        Work::Ack {
            account,
            seqs,
            now,
            notice_expires_at,
        } => Done::Ack(ack(tx, *account, seqs, *now, *notice_expires_at).await?),
        Work::Expire {
            now,
            retention,
            notice_ttl,
        } => Done::Expire(expire(tx, *now, *retention, *notice_ttl).await?),
        Work::BlobCreate(b) => Done::BlobCreate(blob_create(tx, b).await?),
        Work::BlobAdvance(id, from, to) => {
            let n = tx
                .exec(
                    "UPDATE blobs SET acked = $3
                     WHERE id = $1 AND acked = $2 AND NOT finished",
                    &[&&id[..], &i64_of(*from), &i64_of(*to)],
                )
                .await?;
            Done::Flag(n == 1)
        }
        Work::BlobFinish(id) => {
            let n = tx
                .exec(
                    "UPDATE blobs SET finished = TRUE WHERE id = $1 AND acked = size",
                    &[&&id[..]],
                )
                .await?;
            Done::Flag(n == 1)
        }
        Work::BlobFetched(id, account) => {
            tx.exec(
                "INSERT INTO blob_fetches (blob, account) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                &[&&id[..], account],
            )
            .await?;
            Done::Unit
        }
        Work::BlobDelete(ids) => {
            let ids: Vec<&[u8]> = ids.iter().map(|i| &i[..]).collect();
            let n = tx
                .exec("DELETE FROM blobs WHERE id = ANY($1)", &[&ids])
                .await?;
            tx.exec("DELETE FROM blob_fetches WHERE blob = ANY($1)", &[&ids])
                .await?;
            Done::Count(n)
        }
    })
}

async fn device_taken(tx: &Tx<'_>, noise_key: &[u8; 32]) -> Result<bool, PgError> {
    let key = &noise_key[..];
    Ok(tx
        .opt("SELECT 1 FROM accounts WHERE noise_key = $1", &[&key])
        .await?
        .is_some())
}

async fn register(tx: &mut Tx<'_>, a: &NewAccount) -> Result<RegisterOutcome, PgError> {
    if device_taken(tx, &a.noise_key).await? {
        return Ok(RegisterOutcome::DeviceTaken);
    }
    if tx
        .opt("SELECT 1 FROM accounts WHERE handle = $1", &[&a.handle])
        .await?
        .is_some()
    {
        return Ok(RegisterOutcome::HandleTaken);
    }
    if a.invite_required {
        let Some(token) = &a.invite else {
            return Ok(RegisterOutcome::InviteRequired);
        };
        let used = tx
            .exec(
                "DELETE FROM invites WHERE token_hash = $1",
                &[&&invite_hash(token)[..]],
            )
            .await?;
        if used == 0 {
            return Ok(RegisterOutcome::InviteInvalid);
        }
    }
    // Another node may register the same handle or device at the same
    // moment: the loser's insert waits for the winner's commit and then
    // inserts nothing.
    let row = tx
        .opt(
            "INSERT INTO accounts (handle, noise_key, curve25519, ed25519, signature, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING id",
            &[
                &a.handle,
                &&a.noise_key[..],
                &&a.curve25519[..],
                &&a.ed25519[..],
                &a.signature,
                &a.now.0,
            ],
        )
        .await?;
    match row {
        Some(r) => Ok(RegisterOutcome::Created(r.try_get(0)?)),
        None if device_taken(tx, &a.noise_key).await? => Ok(RegisterOutcome::DeviceTaken),
        None => Ok(RegisterOutcome::HandleTaken),
    }
}

async fn upload(
    tx: &mut Tx<'_>,
    account: AccountId,
    one_time: &[KeyRecord],
    fallback: Option<&KeyRecord>,
    max_one_time: u32,
) -> Result<UploadOutcome, PgError> {
    if !one_time.is_empty() {
        let ids: Vec<&[u8]> = one_time.iter().map(|k| &k.key_id[..]).collect();
        let pks: Vec<&[u8]> = one_time.iter().map(|k| &k.public_key[..]).collect();
        let sigs: Vec<&[u8]> = one_time.iter().map(|k| &k.signature[..]).collect();
        tx.exec(
            "INSERT INTO one_time_keys (account, key_id, public_key, signature)
             SELECT $1, k, p, s FROM unnest($2::bytea[], $3::bytea[], $4::bytea[]) AS t(k, p, s)
             ON CONFLICT DO NOTHING",
            &[&account, &ids, &pks, &sigs],
        )
        .await?;
    }
    if let Some(k) = fallback {
        tx.exec(
            "INSERT INTO fallback_keys (account, key_id, public_key, signature)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (account) DO UPDATE SET key_id = EXCLUDED.key_id,
                 public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
            &[&account, &k.key_id, &&k.public_key[..], &k.signature],
        )
        .await?;
    }
    let counts = key_counts(tx.c, account).await?;
    if counts.one_time_keys > max_one_time {
        return Ok(UploadOutcome::LimitExceeded);
    }
    Ok(UploadOutcome::Stored(counts))
}

fn key_from_row(r: &Row) -> Result<KeyRecord, PgError> {
    Ok(KeyRecord {
        key_id: r.try_get(0)?,
        public_key: arr32(r.try_get(1)?),
        signature: r.try_get(2)?,
    })
}

async fn claim(tx: &mut Tx<'_>, handle: &str) -> Result<ClaimOutcome, PgError> {
    let Some(row) = tx
        .opt(
            "SELECT id, handle, noise_key, curve25519, ed25519, signature
             FROM accounts WHERE handle = $1",
            &[&handle],
        )
        .await?
    else {
        return Ok(ClaimOutcome::UnknownHandle);
    };
    let owner = account_from_row(&row)?;
    // SKIP LOCKED: a key another transaction is claiming right now is not
    // waited for; the next one is taken.
    let otk = tx
        .opt(
            "DELETE FROM one_time_keys WHERE id = (
                 SELECT id FROM one_time_keys WHERE account = $1
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING key_id, public_key, signature",
            &[&owner.id],
        )
        .await?;
    let (key, fallback) = match otk {
        Some(r) => (key_from_row(&r)?, false),
        None => {
            let fb = tx
                .opt(
                    "SELECT key_id, public_key, signature FROM fallback_keys WHERE account = $1",
                    &[&owner.id],
                )
                .await?;
            match fb {
                Some(r) => (key_from_row(&r)?, true),
                None => return Ok(ClaimOutcome::NoKeys),
            }
        }
    };
    let remaining = key_counts(tx.c, owner.id).await?.one_time_keys;
    Ok(ClaimOutcome::Claimed(Box::new(Claimed {
        owner,
        key,
        fallback,
        remaining,
    })))
}

/// The dedup log's accept time of `(sender, message_id)`, if seen.
async fn seen(
    tx: &Tx<'_>,
    sender: AccountId,
    message_id: &[u8; 16],
) -> Result<Option<UnixMillis>, PgError> {
    tx.opt(
        "SELECT accepted_at FROM sent WHERE sender = $1 AND message_id = $2",
        &[&sender, &&message_id[..]],
    )
    .await?
    .map(|r| r.try_get(0).map(UnixMillis))
    .transpose()
    .map_err(PgError::from)
}

/// Enters `(sender, message_id)` in the dedup log; false if it was there
/// (also when another node's transaction entered it first: the insert
/// waits for that one's outcome).
async fn log_sent(
    tx: &Tx<'_>,
    sender: AccountId,
    message_id: &[u8; 16],
    now: UnixMillis,
) -> Result<bool, PgError> {
    let n = tx
        .exec(
            "INSERT INTO sent (sender, message_id, accepted_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&sender, &&message_id[..], &now.0],
        )
        .await?;
    Ok(n > 0)
}

async fn send(tx: &mut Tx<'_>, m: &NewMessage) -> Result<SendOutcome, PgError> {
    let recipient = tx.lock_handle(&m.recipient).await?;
    let refused = match recipient {
        None => Some(SendOutcome::UnknownRecipient),
        Some((_, pending)) if pending >= i64::from(m.max_pending) => Some(SendOutcome::MailboxFull),
        Some(_) => None,
    };
    // A retry of an accepted message is acknowledged again even if the
    // mailbox filled up since.
    if let Some(refused) = refused {
        return Ok(match seen(tx, m.sender, &m.message_id).await? {
            Some(accepted_at) => SendOutcome::Duplicate { accepted_at },
            None => refused,
        });
    }
    let Some((recipient, _)) = recipient else {
        return Ok(SendOutcome::UnknownRecipient);
    };
    if !log_sent(tx, m.sender, &m.message_id, m.now).await? {
        let accepted_at = seen(tx, m.sender, &m.message_id).await?.unwrap_or(m.now);
        return Ok(SendOutcome::Duplicate { accepted_at });
    }
    let row = tx
        .one(
            "INSERT INTO mailbox (owner, seq, peer, message_id, body, created_at, expires_at)
             VALUES ($1, nextval('mailbox_seq'), $2, $3, $4, $5, $6) RETURNING seq",
            &[
                &recipient,
                &m.sender,
                &&m.message_id[..],
                &&m.body[..],
                &m.now.0,
                &m.expires_at.0,
            ],
        )
        .await?;
    let seq = seq_of(row.try_get(0)?);
    tx.add_pending(recipient, 1);
    // A sender without an account row is not read back either (reads join
    // on it): nothing to hand over.
    if let Some(sender) = tx.handle_of(m.sender).await? {
        tx.handover.push(Committed::Item {
            owner: recipient,
            item: MailItem {
                seq,
                kind: ItemKind::Message,
                message_id: Bytes::copy_from_slice(&m.message_id),
                body: m.body.clone(),
                at: m.now,
                peer_handle: sender,
                group_id: None,
            },
        });
    }
    Ok(SendOutcome::Accepted {
        recipient,
        seq,
        accepted_at: m.now,
    })
}

/// Stores a group message: the body once in `bodies`, an entry for every
/// accepted recipient. Every recipient is looked up and locked in one
/// statement (in id order, which keeps two nodes' group sends from
/// deadlocking each other) before anything is written.
async fn send_group(tx: &mut Tx<'_>, m: &NewGroupMessage) -> Result<GroupSendOutcome, PgError> {
    let rows = tx
        .query(
            "SELECT id, handle, pending FROM accounts WHERE handle = ANY($1)
             ORDER BY id FOR NO KEY UPDATE",
            &[&m.recipients],
        )
        .await?;
    let mut found: HashMap<String, AccountId> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: AccountId = r.try_get(0)?;
        let stored: i64 = r.try_get(2)?;
        tx.locked.entry(id).or_insert(Some(stored));
        found.insert(r.try_get(1)?, id);
    }
    let mut accepted: Vec<AccountId> = Vec::with_capacity(m.recipients.len());
    let mut named: HashSet<AccountId> = HashSet::with_capacity(m.recipients.len());
    let mut refused = Vec::new();
    for handle in &m.recipients {
        let pending = |id: AccountId| tx.locked.get(&id).copied().flatten().unwrap_or(0);
        let why = match found.get(handle).copied() {
            None => Some(Refused::Unknown),
            Some(id) if id == m.sender => Some(Refused::Sender),
            Some(id) if pending(id) >= i64::from(m.max_pending) => Some(Refused::MailboxFull),
            Some(id) if named.contains(&id) => continue,
            Some(id) => {
                named.insert(id);
                accepted.push(id);
                None
            }
        };
        if let Some(why) = why {
            refused.push((handle.clone(), why));
        }
    }
    if accepted.is_empty() {
        return Ok(match seen(tx, m.sender, &m.message_id).await? {
            Some(accepted_at) => GroupSendOutcome::Duplicate { accepted_at },
            None => GroupSendOutcome::Accepted {
                accepted_at: m.now,
                entries: 0,
                refused,
            },
        });
    }
    if !log_sent(tx, m.sender, &m.message_id, m.now).await? {
        let accepted_at = seen(tx, m.sender, &m.message_id).await?.unwrap_or(m.now);
        return Ok(GroupSendOutcome::Duplicate { accepted_at });
    }
    let entries = i64::try_from(accepted.len()).unwrap_or(i64::MAX);
    let body_id: i64 = tx
        .one(
            "INSERT INTO bodies (group_id, body, refs) VALUES ($1, $2, $3) RETURNING id",
            &[&&m.group_id[..], &&m.body[..], &entries],
        )
        .await?
        .try_get(0)?;
    let stored = tx
        .query(
            "INSERT INTO mailbox (owner, seq, peer, message_id, body, created_at, expires_at,
                                  body_id)
             SELECT o, nextval('mailbox_seq'), $2, $3, ''::bytea, $4, $5, $6
             FROM unnest($1::bigint[]) WITH ORDINALITY AS t(o, n)
             RETURNING owner, seq",
            &[
                &accepted,
                &m.sender,
                &&m.message_id[..],
                &m.now.0,
                &m.expires_at.0,
                &body_id,
            ],
        )
        .await?;
    let mut entries_stored: Vec<(Seq, AccountId)> = Vec::with_capacity(stored.len());
    for r in &stored {
        entries_stored.push((seq_of(r.try_get(1)?), r.try_get(0)?));
    }
    entries_stored.sort_unstable();
    for &(_, owner) in &entries_stored {
        tx.add_pending(owner, 1);
    }
    if let Some(sender) = tx.handle_of(m.sender).await? {
        let message_id = Bytes::copy_from_slice(&m.message_id);
        let group_id = Bytes::copy_from_slice(&m.group_id);
        for (seq, owner) in entries_stored {
            tx.handover.push(Committed::Item {
                owner,
                item: MailItem {
                    seq,
                    kind: ItemKind::Message,
                    message_id: message_id.clone(),
                    body: m.body.clone(),
                    at: m.now,
                    peer_handle: sender.clone(),
                    group_id: Some(group_id.clone()),
                },
            });
        }
    }
    Ok(GroupSendOutcome::Accepted {
        accepted_at: m.now,
        entries: u32::try_from(accepted.len()).unwrap_or(u32::MAX),
        refused,
    })
}

/// Drops one reference to a group body, deleting it with its last.
async fn release_body(tx: &Tx<'_>, body_id: Option<i64>) -> Result<(), PgError> {
    let Some(id) = body_id else {
        return Ok(());
    };
    let deleted = tx
        .exec("DELETE FROM bodies WHERE id = $1 AND refs <= 1", &[&id])
        .await?;
    if deleted == 0 {
        tx.exec("UPDATE bodies SET refs = refs - 1 WHERE id = $1", &[&id])
            .await?;
    }
    Ok(())
}

/// Stores a receipt or expired notice for `owner` (locked first) and
/// returns its seq.
async fn insert_notice(
    tx: &mut Tx<'_>,
    owner: AccountId,
    kind: ItemKind,
    peer: AccountId,
    message_id: &[u8],
    (at, expires_at): (UnixMillis, UnixMillis),
) -> Result<Seq, PgError> {
    tx.lock(owner).await?;
    let row = tx
        .one(
            "INSERT INTO notices (owner, seq, kind, peer, message_id, at, expires_at)
             VALUES ($1, nextval('mailbox_seq'), $2, $3, $4, $5, $6) RETURNING seq",
            &[
                &owner,
                &kind.code(),
                &peer,
                &message_id,
                &at.0,
                &expires_at.0,
            ],
        )
        .await?;
    Ok(seq_of(row.try_get(0)?))
}

/// A message an ack deleted: (its place among the acked seqs, seq, peer,
/// message id, group body).
type AckedRow = (usize, i64, AccountId, Vec<u8>, Option<i64>);

async fn ack(
    tx: &mut Tx<'_>,
    account: AccountId,
    seqs: &[Seq],
    now: UnixMillis,
    notice_expires_at: UnixMillis,
) -> Result<AckOutcome, PgError> {
    let mut out = AckOutcome::default();
    if seqs.is_empty() {
        return Ok(out);
    }
    tx.lock(account).await?;
    let wanted: Vec<i64> = seqs.iter().map(|s| i64_of(s.0)).collect();
    let rows = tx
        .query(
            "DELETE FROM mailbox WHERE owner = $1 AND seq = ANY($2)
             RETURNING seq, peer, message_id, body_id",
            &[&account, &wanted],
        )
        .await?;
    let mut messages: Vec<AckedRow> = Vec::with_capacity(rows.len());
    for r in &rows {
        let seq: i64 = r.try_get(0)?;
        let at = wanted.iter().position(|s| *s == seq).unwrap_or(usize::MAX);
        messages.push((at, seq, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
    }
    // Receipts in the order the seqs were acknowledged.
    messages.sort_unstable_by_key(|m| m.0);
    let rest: Vec<i64> = wanted
        .iter()
        .copied()
        .filter(|s| !messages.iter().any(|m| m.1 == *s))
        .collect();
    if !rest.is_empty() {
        out.notices = tx
            .exec(
                "DELETE FROM notices WHERE owner = $1 AND seq = ANY($2)",
                &[&account, &rest],
            )
            .await?;
    }
    let me = if messages.is_empty() {
        None
    } else {
        tx.handle_of(account).await?
    };
    for (_, _, peer, message_id, body_id) in messages {
        tx.add_pending(account, -1);
        release_body(tx, body_id).await?;
        let seq = insert_notice(
            tx,
            peer,
            ItemKind::Receipt,
            account,
            &message_id,
            (now, notice_expires_at),
        )
        .await?;
        out.messages += 1;
        let receipt = StoredReceipt {
            owner: peer,
            seq,
            message_id: Bytes::from(message_id),
            at: now,
        };
        if let Some(me) = &me {
            tx.handover.push(Committed::Item {
                owner: peer,
                item: MailItem {
                    seq,
                    kind: ItemKind::Receipt,
                    message_id: receipt.message_id.clone(),
                    body: Bytes::new(),
                    at: now,
                    peer_handle: me.clone(),
                    group_id: None,
                },
            });
        }
        out.receipts.push(receipt);
    }
    Ok(out)
}

async fn expire(
    tx: &mut Tx<'_>,
    now: UnixMillis,
    retention: std::time::Duration,
    notice_ttl: std::time::Duration,
) -> Result<ExpireOutcome, PgError> {
    let mut out = ExpireOutcome::default();
    let due = tx
        .query(
            "SELECT owner, seq FROM mailbox WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2",
            &[&now.0, &EXPIRE_BATCH],
        )
        .await?;
    let mut more = i64::try_from(due.len()).unwrap_or(i64::MAX) >= EXPIRE_BATCH;
    for r in &due {
        let owner: AccountId = r.try_get(0)?;
        let seq: i64 = r.try_get(1)?;
        tx.lock(owner).await?;
        // Gone meanwhile (acknowledged, or expired by another node).
        let Some(row) = tx
            .opt(
                "DELETE FROM mailbox WHERE owner = $1 AND seq = $2
                 RETURNING peer, message_id, body_id",
                &[&owner, &seq],
            )
            .await?
        else {
            continue;
        };
        let peer: AccountId = row.try_get(0)?;
        let message_id: Vec<u8> = row.try_get(1)?;
        tx.add_pending(owner, -1);
        release_body(tx, row.try_get(2)?).await?;
        insert_notice(
            tx,
            peer,
            ItemKind::Expired,
            owner,
            &message_id,
            (now, now.plus(notice_ttl)),
        )
        .await?;
        out.expired_messages += 1;
        if !out.notify.contains(&peer) {
            out.notify.push(peer);
            tx.handover.push(Committed::Wake(peer));
        }
    }
    out.dropped_notices = tx
        .exec(
            "DELETE FROM notices WHERE ctid IN (
                 SELECT ctid FROM notices WHERE expires_at <= $1 LIMIT $2)",
            &[&now.0, &EXPIRE_BATCH],
        )
        .await?;
    more |= i64::try_from(out.dropped_notices).unwrap_or(i64::MAX) >= EXPIRE_BATCH;
    out.more = more;
    tx.exec(
        "DELETE FROM sent WHERE accepted_at < $1",
        &[&now.minus(retention).0],
    )
    .await?;
    Ok(out)
}

async fn get_blob(tx: &Tx<'_>, id: &BlobId) -> Result<Option<BlobInfo>, PgError> {
    tx.opt(
        &format!("SELECT {BLOB_COLUMNS} FROM blobs WHERE id = $1"),
        &[&&id[..]],
    )
    .await?
    .map(|r| blob_from_row(&r))
    .transpose()
}

fn conflict_with(old: &BlobInfo, b: &NewBlob) -> BlobCreateOutcome {
    if old.owner != b.owner {
        BlobCreateOutcome::Conflict { other_owner: true }
    } else if old.size != b.size || old.sha256 != b.sha256 {
        BlobCreateOutcome::Conflict { other_owner: false }
    } else {
        BlobCreateOutcome::Existing(old.clone())
    }
}

/// Starts an upload. The owner's row is locked first, so that two nodes
/// cannot both fit an upload into the same room under the quota.
async fn blob_create(tx: &mut Tx<'_>, b: &NewBlob) -> Result<BlobCreateOutcome, PgError> {
    tx.lock(b.owner).await?;
    if let Some(old) = get_blob(tx, &b.id).await? {
        return Ok(conflict_with(&old, b));
    }
    let used: i64 = tx
        .one(
            "SELECT COALESCE(SUM(size), 0)::bigint FROM blobs WHERE owner = $1",
            &[&b.owner],
        )
        .await?
        .try_get(0)?;
    if u64::try_from(used).unwrap_or(0).saturating_add(b.size) > b.quota {
        return Ok(BlobCreateOutcome::OverQuota);
    }
    let n = tx
        .exec(
            &format!(
                "INSERT INTO blobs ({BLOB_COLUMNS})
                 VALUES ($1, $2, $3, $4, 0, $5, FALSE, $6, $7) ON CONFLICT DO NOTHING"
            ),
            &[
                &&b.id[..],
                &b.owner,
                &i64_of(b.size),
                &&b.sha256[..],
                &i64::from(b.recipients),
                &b.now.0,
                &b.expires_at.0,
            ],
        )
        .await?;
    if n == 0 {
        // Another node created the same id at the same moment.
        if let Some(old) = get_blob(tx, &b.id).await? {
            return Ok(conflict_with(&old, b));
        }
    }
    Ok(BlobCreateOutcome::Created(BlobInfo {
        id: b.id,
        owner: b.owner,
        size: b.size,
        sha256: b.sha256,
        offset: 0,
        recipients: b.recipients,
        finished: false,
        created_at: b.now,
        expires_at: b.expires_at,
    }))
}
