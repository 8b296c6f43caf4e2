//! File metadata jobs: starting an upload (under the owner's quota),
//! advancing and finishing it, recording fetches, deleting.

use super::super::read::{blob_from_row, BLOB_COLUMNS};
use super::super::PgError;
use super::{i64_of, Tx};
use crate::store::types::*;
use crate::store::{BlobCreateOutcome, BlobId, BlobInfo, NewBlob};

pub(super) async fn get_blob(tx: &Tx<'_>, id: &BlobId) -> Result<Option<BlobInfo>, PgError> {
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
pub(super) async fn blob_create(
    tx: &mut Tx<'_>,
    b: &NewBlob,
) -> Result<BlobCreateOutcome, PgError> {
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

/// Moves an unfinished upload's stored offset from `from` to `to`; false
/// when it was not at `from` (or is finished, or gone).
pub(super) async fn blob_advance(
    tx: &Tx<'_>,
    id: &BlobId,
    from: u64,
    to: u64,
) -> Result<bool, PgError> {
    let n = tx
        .exec(
            "UPDATE blobs SET acked = $3
             WHERE id = $1 AND acked = $2 AND NOT finished",
            &[&&id[..], &i64_of(from), &i64_of(to)],
        )
        .await?;
    Ok(n == 1)
}

/// Marks a fully stored upload finished; false when it is not complete.
pub(super) async fn blob_finish(tx: &Tx<'_>, id: &BlobId) -> Result<bool, PgError> {
    let n = tx
        .exec(
            "UPDATE blobs SET finished = TRUE WHERE id = $1 AND acked = size",
            &[&&id[..]],
        )
        .await?;
    Ok(n == 1)
}

/// Records that `account` fetched the blob (once).
pub(super) async fn blob_fetched(
    tx: &Tx<'_>,
    id: &BlobId,
    account: AccountId,
) -> Result<(), PgError> {
    tx.exec(
        "INSERT INTO blob_fetches (blob, account) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
        &[&&id[..], &account],
    )
    .await?;
    Ok(())
}

/// Deletes the blobs' rows and their fetch records; how many blobs.
pub(super) async fn blob_delete(tx: &Tx<'_>, ids: &[BlobId]) -> Result<u64, PgError> {
    let ids: Vec<&[u8]> = ids.iter().map(|i| &i[..]).collect();
    let n = tx
        .exec("DELETE FROM blobs WHERE id = ANY($1)", &[&ids])
        .await?;
    tx.exec("DELETE FROM blob_fetches WHERE blob = ANY($1)", &[&ids])
        .await?;
    Ok(n)
}
