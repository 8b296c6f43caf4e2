//! Account jobs: registration (with its invite), key uploads and key
//! claims.

use super::super::read::{account_from_row, arr32, key_counts};
use super::super::PgError;
use super::Tx;
use crate::store::jobs::invite_hash;
use crate::store::types::*;
use tokio_postgres::Row;

pub(super) async fn device_taken(tx: &Tx<'_>, noise_key: &[u8; 32]) -> Result<bool, PgError> {
    let key = &noise_key[..];
    Ok(tx
        .opt("SELECT 1 FROM accounts WHERE noise_key = $1", &[&key])
        .await?
        .is_some())
}

pub(super) async fn register(tx: &mut Tx<'_>, a: &NewAccount) -> Result<RegisterOutcome, PgError> {
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

pub(super) async fn upload(
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

pub(super) async fn claim(tx: &mut Tx<'_>, handle: &str) -> Result<ClaimOutcome, PgError> {
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
