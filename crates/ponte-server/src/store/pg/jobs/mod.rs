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
pub(super) use tx::{Tx, FLUSH_PENDING};

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn seq_of(v: i64) -> Seq {
    Seq(u64::try_from(v).unwrap_or(0))
}

/// Locks, before any job runs, every account row the batch's jobs will
/// lock, in id order and in one statement: the recipients of its sends,
/// the acknowledging accounts with the senders their receipts go to, the
/// owners of key uploads and new blobs. Locked one by one as the jobs came,
/// two nodes' batches took the same rows in different orders (a send
/// locks its recipient, that recipient's ack on the other node locks it
/// and then the sender) and deadlocked; PostgreSQL broke each deadlock
/// after `deadlock_timeout` and the batch ran again, which put seconds on
/// cross-node delivery under load. (The expiry job still locks as it goes:
/// it runs rarely and retries like any batch.) The senders the acked
/// messages came from are found by the same statement: one round trip for
/// the whole batch, however many acks it holds.
pub(super) async fn lock_all(tx: &mut Tx<'_>, works: &[&Work]) -> Result<(), PgError> {
    let mut ids: Vec<AccountId> = Vec::new();
    let mut handles: Vec<String> = Vec::new();
    let mut acked = Acked::default();
    for w in works {
        match w {
            Work::Send(m) => handles.push(m.recipient.clone()),
            Work::SendGroup(m) => handles.extend(m.recipients.iter().cloned()),
            Work::Ack { account, seqs, .. } if !seqs.is_empty() => {
                ids.push(*account);
                for s in seqs {
                    acked.owners.push(*account);
                    acked.seqs.push(i64_of(s.0));
                }
            }
            Work::Upload { account, .. } => ids.push(*account),
            Work::BlobCreate(b) => ids.push(b.owner),
            _ => {}
        }
    }
    if ids.is_empty() && handles.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    handles.sort_unstable();
    handles.dedup();
    tx.lock_many(&ids, &handles, &acked).await
}

/// Mailbox items being acknowledged (owner and seq, pairwise), whose
/// senders [`Tx::lock_many`] locks too.
#[derive(Debug, Default)]
pub(super) struct Acked {
    pub owners: Vec<AccountId>,
    pub seqs: Vec<i64>,
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
