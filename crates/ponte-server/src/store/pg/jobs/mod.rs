//! The SQL of every write job, run by the writer inside its batch
//! transaction ([`Tx`]). Before anything is added to a mailbox its owner's
//! `accounts` row is locked (see the module docs of `store::pg`); the
//! locked rows' `pending` counts are kept in memory for the batch and
//! written back once, before the commit.
//!
//! - `tx`: the transaction, its statement helpers and account locks;
//! - `accounts`: registration, key uploads, key claims;
//! - `send`: 1:1 and group messages, with the dedup log;
//! - `acks`: acknowledgements (receipts) and expiry (expired notices);
//! - `blobs`: file metadata.

mod accounts;
mod acks;
mod blobs;
mod send;
mod tx;

use super::write::{Done, Work};
use super::PgError;
use crate::store::types::*;
pub(super) use tx::Tx;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn seq_of(v: i64) -> Seq {
    Seq(u64::try_from(v).unwrap_or(0))
}

/// Runs one job in the open transaction.
pub(super) async fn run(tx: &mut Tx<'_>, work: &Work) -> Result<Done, PgError> {
    Ok(match work {
        Work::Register(a) => {
            tx.simple("SAVEPOINT job").await?;
            let out = accounts::register(tx, a).await?;
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
            let out =
                accounts::upload(tx, *account, one_time, fallback.as_ref(), *max_one_time).await?;
            tx.savepoint_end(matches!(out, UploadOutcome::Stored(_)))
                .await?;
            Done::Upload(out)
        }
        Work::Claim(handle) => Done::Claim(accounts::claim(tx, handle).await?),
        Work::Send(m) => Done::Send(send::send(tx, m).await?),
        Work::SendGroup(m) => Done::Group(send::send_group(tx, m).await?),
        Work::Ack {
            account,
            seqs,
            now,
            notice_expires_at,
        } => Done::Ack(acks::ack(tx, *account, seqs, *now, *notice_expires_at).await?),
        Work::Expire {
            now,
            retention,
            notice_ttl,
        } => Done::Expire(acks::expire(tx, *now, *retention, *notice_ttl).await?),
        Work::BlobCreate(b) => Done::BlobCreate(blobs::blob_create(tx, b).await?),
        Work::BlobAdvance(id, from, to) => {
            Done::Flag(blobs::blob_advance(tx, id, *from, *to).await?)
        }
        Work::BlobFinish(id) => Done::Flag(blobs::blob_finish(tx, id).await?),
        Work::BlobFetched(id, account) => {
            blobs::blob_fetched(tx, id, *account).await?;
            Done::Unit
        }
        Work::BlobDelete(ids) => Done::Count(blobs::blob_delete(tx, ids).await?),
    })
}
