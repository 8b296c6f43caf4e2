//! Reads, each one statement (so one snapshot) on a pooled connection,
//! with prepared statements cached per connection.

use super::PgError;
use crate::store::types::*;
use crate::store::{BlobId, BlobInfo, BlobTotals};
use bytes::Bytes;
use deadpool_postgres::ClientWrapper;
use tokio_postgres::Row;

/// The columns of a blob row, in [`blob_from_row`]'s order.
pub(super) const BLOB_COLUMNS: &str =
    "id, owner, size, sha256, acked, recipients, finished, created_at, expires_at";

const ACCOUNT_COLUMNS: &str = "id, handle, noise_key, curve25519, ed25519, signature";

pub(super) fn arr32(v: Vec<u8>) -> [u8; 32] {
    <[u8; 32]>::try_from(v.as_slice()).unwrap_or([0; 32])
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(if v < 0 { 0 } else { u32::MAX })
}

/// An account from the first six columns of `r` ([`ACCOUNT_COLUMNS`]).
pub(super) fn account_from_row(r: &Row) -> Result<AccountInfo, PgError> {
    Ok(AccountInfo {
        id: r.try_get(0)?,
        handle: r.try_get(1)?,
        noise_key: arr32(r.try_get(2)?),
        curve25519: arr32(r.try_get(3)?),
        ed25519: arr32(r.try_get(4)?),
        signature: r.try_get(5)?,
    })
}

pub(super) fn blob_from_row(r: &Row) -> Result<BlobInfo, PgError> {
    let id: Vec<u8> = r.try_get(0)?;
    let sha: Vec<u8> = r.try_get(3)?;
    Ok(BlobInfo {
        id: id.as_slice().try_into().unwrap_or([0; 16]),
        owner: r.try_get(1)?,
        size: u64_of(r.try_get(2)?),
        sha256: sha.as_slice().try_into().unwrap_or([0; 32]),
        offset: u64_of(r.try_get(4)?),
        recipients: u32_of(r.try_get(5)?),
        finished: r.try_get(6)?,
        created_at: UnixMillis(r.try_get(7)?),
        expires_at: UnixMillis(r.try_get(8)?),
    })
}

/// The account of a device key with its key counts and waiting items, in
/// one statement.
pub(super) async fn login_info(
    c: &ClientWrapper,
    noise_key: &[u8; 32],
) -> Result<Option<LoginInfo>, PgError> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS},
                    (SELECT COUNT(*) FROM one_time_keys k WHERE k.account = a.id),
                    EXISTS (SELECT 1 FROM fallback_keys f WHERE f.account = a.id),
                    (SELECT COUNT(*) FROM mailbox m WHERE m.owner = a.id)
                  + (SELECT COUNT(*) FROM notices n WHERE n.owner = a.id)
             FROM accounts a WHERE noise_key = $1"
        ))
        .await?;
    let Some(r) = c.query_opt(&st, &[&&noise_key[..]]).await? else {
        return Ok(None);
    };
    Ok(Some(LoginInfo {
        account: account_from_row(&r)?,
        keys: KeyCounts {
            one_time_keys: u32_of(r.try_get(6)?),
            has_fallback: r.try_get(7)?,
        },
        pending: u32_of(r.try_get(8)?),
    }))
}

pub(super) async fn account_by_handle(
    c: &ClientWrapper,
    handle: &str,
) -> Result<Option<AccountInfo>, PgError> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE handle = $1"
        ))
        .await?;
    c.query_opt(&st, &[&handle])
        .await?
        .map(|r| account_from_row(&r))
        .transpose()
}

pub(super) async fn key_counts(
    c: &ClientWrapper,
    account: AccountId,
) -> Result<KeyCounts, PgError> {
    let st = c
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM one_time_keys WHERE account = $1),
                    EXISTS (SELECT 1 FROM fallback_keys WHERE account = $1)",
        )
        .await?;
    let r = c.query_one(&st, &[&account]).await?;
    Ok(KeyCounts {
        one_time_keys: u32_of(r.try_get(0)?),
        has_fallback: r.try_get(1)?,
    })
}

pub(super) async fn mailbox_len(c: &ClientWrapper, account: AccountId) -> Result<u32, PgError> {
    let st = c
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM mailbox WHERE owner = $1)
                  + (SELECT COUNT(*) FROM notices WHERE owner = $1)",
        )
        .await?;
    Ok(u32_of(c.query_one(&st, &[&account]).await?.try_get(0)?))
}

/// Messages and notices of `owner` after `after`, merged in seq order, in
/// one statement: one snapshot (see the module docs of `store::pg` for why
/// that holds every item below the highest seq returned).
pub(super) async fn fetch_mailbox(
    c: &ClientWrapper,
    owner: AccountId,
    after: Seq,
    limit: usize,
) -> Result<Vec<MailItem>, PgError> {
    let lim = i64::try_from(limit).unwrap_or(i64::MAX);
    let after = i64::try_from(after.0).unwrap_or(i64::MAX);
    let st = c
        .prepare_cached(
            "SELECT * FROM (
                 (SELECT m.seq, 0::bigint AS kind, m.message_id,
                         COALESCE(b.body, m.body) AS body, m.created_at AS at, a.handle,
                         b.group_id
                  FROM mailbox m JOIN accounts a ON a.id = m.peer
                  LEFT JOIN bodies b ON b.id = m.body_id
                  WHERE m.owner = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3)
                 UNION ALL
                 (SELECT n.seq, n.kind, n.message_id, ''::bytea, n.at, a.handle, NULL::bytea
                  FROM notices n JOIN accounts a ON a.id = n.peer
                  WHERE n.owner = $1 AND n.seq > $2 ORDER BY n.seq LIMIT $3)
             ) AS items ORDER BY seq LIMIT $3",
        )
        .await?;
    let rows = c.query(&st, &[&owner, &after, &lim]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(kind) = ItemKind::from_code(r.try_get(1)?) else {
            continue;
        };
        out.push(MailItem {
            seq: Seq(u64_of(r.try_get(0)?)),
            kind,
            message_id: Bytes::from(r.try_get::<_, Vec<u8>>(2)?),
            body: Bytes::from(r.try_get::<_, Vec<u8>>(3)?),
            at: UnixMillis(r.try_get(4)?),
            peer_handle: r.try_get(5)?,
            group_id: r.try_get::<_, Option<Vec<u8>>>(6)?.map(Bytes::from),
        });
    }
    Ok(out)
}

pub(super) async fn blob(c: &ClientWrapper, id: &BlobId) -> Result<Option<BlobInfo>, PgError> {
    let st = c
        .prepare_cached(&format!("SELECT {BLOB_COLUMNS} FROM blobs WHERE id = $1"))
        .await?;
    c.query_opt(&st, &[&&id[..]])
        .await?
        .map(|r| blob_from_row(&r))
        .transpose()
}

/// Up to `limit` blobs to delete: expired, or finished and read to the end
/// by as many accounts other than the owner as it was created for.
pub(super) async fn blobs_due(
    c: &ClientWrapper,
    now: UnixMillis,
    limit: usize,
) -> Result<Vec<BlobId>, PgError> {
    let lim = i64::try_from(limit).unwrap_or(i64::MAX);
    let st = c
        .prepare_cached(
            "(SELECT id FROM blobs WHERE expires_at <= $1 LIMIT $2)
             UNION
             (SELECT b.id FROM blobs b WHERE b.finished AND b.recipients > 0
                AND b.recipients <= (SELECT COUNT(*) FROM blob_fetches f
                                     WHERE f.blob = b.id AND f.account <> b.owner)
              LIMIT $2)",
        )
        .await?;
    let mut out = Vec::new();
    for r in c.query(&st, &[&now.0, &lim]).await? {
        let v: Vec<u8> = r.try_get(0)?;
        if let Ok(id) = <BlobId>::try_from(v.as_slice()) {
            out.push(id);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

pub(super) async fn blob_totals(c: &ClientWrapper) -> Result<BlobTotals, PgError> {
    let st = c
        .prepare_cached(
            "SELECT COUNT(*) FILTER (WHERE finished), COALESCE(SUM(acked), 0)::bigint FROM blobs",
        )
        .await?;
    let r = c.query_one(&st, &[]).await?;
    Ok(BlobTotals {
        finished: u64_of(r.try_get(0)?),
        bytes: u64_of(r.try_get(1)?),
    })
}
