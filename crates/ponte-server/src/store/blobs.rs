//! Blob metadata: the `blobs` table (one row per upload, finished or not)
//! and `blob_fetches` (which accounts read a blob to its end), their write
//! jobs and reads. The bytes live in files under `DATA_DIR/blobs/` (the
//! server's `blobs` module); a row is the truth about how many of them were
//! acknowledged, so a file longer than its row's offset (a crash mid-append)
//! is cut back to it on the next append.
//!
//! Write jobs run as [`SavepointJob`]s: a closure over the connection run
//! in a savepoint of the writer's batch, answered once the batch is
//! durable.

use super::jobs::{in_savepoint, Reply};
use super::types::{AccountId, UnixMillis};
use super::write::{finisher, Finisher};
use super::{CommitError, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::sync::Arc;

/// A blob's id: the uploader's 16 random bytes.
pub type BlobId = [u8; 16];

/// The tables, created by the schema migration to version 3.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY,
    owner INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    offset INTEGER NOT NULL,
    recipients INTEGER NOT NULL,
    finished INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_owner ON blobs(owner);
CREATE INDEX IF NOT EXISTS blobs_expiry ON blobs(expires_at);
CREATE TABLE IF NOT EXISTS blob_fetches (
    blob BLOB NOT NULL,
    account INTEGER NOT NULL,
    PRIMARY KEY (blob, account)
) WITHOUT ROWID;
";

/// An upload to start.
#[derive(Debug, Clone)]
pub struct NewBlob {
    pub id: BlobId,
    pub owner: AccountId,
    /// Declared ciphertext size.
    pub size: u64,
    pub sha256: [u8; 32],
    /// Accounts other than the owner that will fetch it (0: until expiry).
    pub recipients: u32,
    pub now: UnixMillis,
    pub expires_at: UnixMillis,
    /// The owner's quota: the declared sizes of all its blobs, finished or
    /// not, may not exceed it.
    pub quota: u64,
}

/// One upload or finished blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    pub owner: AccountId,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Bytes acknowledged so far.
    pub offset: u64,
    pub recipients: u32,
    /// The hash checked out: downloadable.
    pub finished: bool,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCreateOutcome {
    /// A new upload.
    Created(BlobInfo),
    /// The owner created this id before, with the same size and hash.
    Existing(BlobInfo),
    /// The id is another account's, or this account's with another size
    /// or hash.
    Conflict {
        /// Whether the id belongs to another account.
        other_owner: bool,
    },
    /// The owner's blobs would exceed its quota; nothing stored.
    OverQuota,
}

/// Stored blobs, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobTotals {
    /// Finished blobs.
    pub finished: u64,
    /// Bytes of finished blobs plus bytes acknowledged of unfinished ones.
    pub bytes: u64,
}

/// A write job given as a closure, run in a savepoint of the writer's
/// batch (kept when it returns `(_, true)`).
pub(super) trait SavepointJob: Send {
    fn run(self: Box<Self>, c: &Connection) -> Finisher;
    fn fail(self: Box<Self>, error: &Arc<CommitError>);
}

struct Op<T, F> {
    reply: Reply<T>,
    f: F,
}

impl<T, F> SavepointJob for Op<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<(T, bool), rusqlite::Error> + Send,
{
    fn run(self: Box<Self>, c: &Connection) -> Finisher {
        let Op { reply, f } = *self;
        finisher(reply, in_savepoint(c, f))
    }

    fn fail(self: Box<Self>, error: &Arc<CommitError>) {
        let _ = self
            .reply
            .send(Err(StoreError::CommitFailed(Arc::clone(error))));
    }
}

/// Boxes `f` as a savepoint job answering `reply`.
pub(super) fn job<T, F>(reply: Reply<T>, f: F) -> Box<dyn SavepointJob>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<(T, bool), rusqlite::Error> + Send + 'static,
{
    Box::new(Op { reply, f })
}

const COLUMNS: &str =
    "id, owner, size, sha256, offset, recipients, finished, created_at, expires_at";

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_row(r: &Row<'_>) -> Result<BlobInfo, rusqlite::Error> {
    let id: Vec<u8> = r.get(0)?;
    let sha: Vec<u8> = r.get(3)?;
    Ok(BlobInfo {
        id: id.as_slice().try_into().unwrap_or([0; 16]),
        owner: r.get(1)?,
        size: u64_of(r.get(2)?),
        sha256: sha.as_slice().try_into().unwrap_or([0; 32]),
        offset: u64_of(r.get(4)?),
        recipients: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        finished: r.get::<_, i64>(6)? != 0,
        created_at: r.get(7)?,
        expires_at: r.get(8)?,
    })
}

/// The row of `id`.
pub(super) fn get(c: &Connection, id: &BlobId) -> Result<Option<BlobInfo>, rusqlite::Error> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM blobs WHERE id = ?1"))?
        .query_row([&id[..]], from_row)
        .optional()
}

pub(super) fn create(
    c: &Connection,
    b: &NewBlob,
) -> Result<(BlobCreateOutcome, bool), rusqlite::Error> {
    if let Some(old) = get(c, &b.id)? {
        let outcome = if old.owner != b.owner {
            BlobCreateOutcome::Conflict { other_owner: true }
        } else if old.size != b.size || old.sha256 != b.sha256 {
            BlobCreateOutcome::Conflict { other_owner: false }
        } else {
            BlobCreateOutcome::Existing(old)
        };
        return Ok((outcome, false));
    }
    let used: i64 = c
        .prepare_cached("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE owner = ?1")?
        .query_row([b.owner], |r| r.get(0))?;
    if u64_of(used).saturating_add(b.size) > b.quota {
        return Ok((BlobCreateOutcome::OverQuota, false));
    }
    c.prepare_cached(&format!(
        "INSERT INTO blobs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, 0, ?5, 0, ?6, ?7)"
    ))?
    .execute(params![
        &b.id[..],
        b.owner,
        i64_of(b.size),
        &b.sha256[..],
        b.recipients,
        b.now,
        b.expires_at
    ])?;
    let info = BlobInfo {
        id: b.id,
        owner: b.owner,
        size: b.size,
        sha256: b.sha256,
        offset: 0,
        recipients: b.recipients,
        finished: false,
        created_at: b.now,
        expires_at: b.expires_at,
    };
    Ok((BlobCreateOutcome::Created(info), true))
}

/// Moves an unfinished upload's offset from `from` to `to`; false (nothing
/// changed) when it is not at `from`.
pub(super) fn advance(
    c: &Connection,
    id: &BlobId,
    from: u64,
    to: u64,
) -> Result<(bool, bool), rusqlite::Error> {
    let n = c
        .prepare_cached(
            "UPDATE blobs SET offset = ?3 WHERE id = ?1 AND offset = ?2 AND finished = 0",
        )?
        .execute(params![&id[..], i64_of(from), i64_of(to)])?;
    Ok((n == 1, n == 1))
}

/// Marks a complete upload finished; false when it is not complete.
pub(super) fn finish(c: &Connection, id: &BlobId) -> Result<(bool, bool), rusqlite::Error> {
    let n = c
        .prepare_cached("UPDATE blobs SET finished = 1 WHERE id = ?1 AND offset = size")?
        .execute([&id[..]])?;
    Ok((n == 1, n == 1))
}

/// Records that `account` read `id` to its end.
pub(super) fn fetched(
    c: &Connection,
    id: &BlobId,
    account: AccountId,
) -> Result<((), bool), rusqlite::Error> {
    c.prepare_cached("INSERT OR IGNORE INTO blob_fetches (blob, account) VALUES (?1, ?2)")?
        .execute(params![&id[..], account])?;
    Ok(((), true))
}

/// Deletes the rows of `ids`; returns how many blobs were deleted.
pub(super) fn delete(c: &Connection, ids: &[BlobId]) -> Result<(u64, bool), rusqlite::Error> {
    let mut n = 0u64;
    for id in ids {
        n += c
            .prepare_cached("DELETE FROM blobs WHERE id = ?1")?
            .execute([&id[..]])? as u64;
        c.prepare_cached("DELETE FROM blob_fetches WHERE blob = ?1")?
            .execute([&id[..]])?;
    }
    Ok((n, true))
}

/// Up to `limit` blobs to delete: expired (finished or not), or finished
/// and read to the end by as many accounts other than the owner as it was
/// created for.
pub(super) fn due(
    c: &Connection,
    now: UnixMillis,
    limit: usize,
) -> Result<Vec<BlobId>, rusqlite::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    let mut push = |v: Vec<u8>| {
        if let Ok(id) = <BlobId>::try_from(v.as_slice()) {
            out.push(id);
        }
    };
    for v in c
        .prepare_cached("SELECT id FROM blobs WHERE expires_at <= ?1 LIMIT ?2")?
        .query_map(params![now, limit], |r| r.get::<_, Vec<u8>>(0))?
    {
        push(v?);
    }
    for v in c
        .prepare_cached(
            "SELECT b.id FROM blobs b WHERE b.finished = 1 AND b.recipients > 0
               AND b.recipients <= (SELECT COUNT(*) FROM blob_fetches f
                                    WHERE f.blob = b.id AND f.account <> b.owner)
             LIMIT ?1",
        )?
        .query_map([limit], |r| r.get::<_, Vec<u8>>(0))?
    {
        push(v?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

pub(super) fn totals(c: &Connection) -> Result<BlobTotals, rusqlite::Error> {
    c.prepare_cached("SELECT COALESCE(SUM(finished), 0), COALESCE(SUM(offset), 0) FROM blobs")?
        .query_row([], |r| {
            Ok(BlobTotals {
                finished: u64_of(r.get(0)?),
                bytes: u64_of(r.get(1)?),
            })
        })
}
