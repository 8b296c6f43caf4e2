//! Taking messages out of mailboxes: acknowledgements (with their
//! delivery receipts) and expiry (with its expired notices; it also
//! clears full rate-limit buckets), and the group bodies they release.

use super::super::PgError;
use super::{i64_of, seq_of, Tx};
use crate::store::jobs::EXPIRE_BATCH;
use crate::store::types::*;
use bytes::Bytes;

/// Drops one reference to a group body, deleting it with its last.
pub(super) async fn release_body(tx: &Tx<'_>, body_id: Option<i64>) -> Result<(), PgError> {
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
pub(super) async fn insert_notice(
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

/// Stores the receipts from `from` for `messages` (their senders locked
/// first) in one statement; their seqs, in the order of `messages`.
async fn insert_receipts(
    tx: &Tx<'_>,
    from: AccountId,
    messages: &[AckedRow],
    (at, expires_at): (UnixMillis, UnixMillis),
) -> Result<Vec<Seq>, PgError> {
    let peers: Vec<AccountId> = messages.iter().map(|m| m.2).collect();
    let ids: Vec<&[u8]> = messages.iter().map(|m| m.3.as_slice()).collect();
    // The seqs are taken once (a materialized CTE) and returned with the
    // place of each receipt, so that each is matched to its message
    // whatever order the rows are inserted in.
    let rows = tx
        .query(
            "WITH r AS MATERIALIZED (
                 SELECT t.peer, t.message_id, t.n, nextval('mailbox_seq') AS seq
                 FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS t(peer, message_id, n)
             ), stored AS (
                 INSERT INTO notices (owner, seq, kind, peer, message_id, at, expires_at)
                 SELECT r.peer, r.seq, $3, $4, r.message_id, $5, $6 FROM r
             )
             SELECT n, seq FROM r",
            &[
                &peers,
                &ids,
                &ItemKind::Receipt.code(),
                &from,
                &at.0,
                &expires_at.0,
            ],
        )
        .await?;
    let mut seqs = vec![Seq(0); messages.len()];
    for r in &rows {
        let n: i64 = r.try_get(0)?;
        let place = usize::try_from(n - 1).unwrap_or(usize::MAX);
        if let Some(slot) = seqs.get_mut(place) {
            *slot = seq_of(r.try_get(1)?);
        }
    }
    Ok(seqs)
}

pub(super) async fn ack(
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
    // Messages and notices in one statement (one round trip): a seq is
    // either, never both (one sequence numbers them all). A notice's row
    // comes back with a null sender.
    let rows = tx
        .query(
            "WITH m AS (
                 DELETE FROM mailbox WHERE owner = $1 AND seq = ANY($2)
                 RETURNING seq, peer, message_id, body_id
             ), n AS (
                 DELETE FROM notices WHERE owner = $1 AND seq = ANY($2) RETURNING seq
             )
             SELECT seq, peer, message_id, body_id FROM m
             UNION ALL
             SELECT seq, NULL, NULL, NULL FROM n",
            &[&account, &wanted],
        )
        .await?;
    let mut messages: Vec<AckedRow> = Vec::with_capacity(rows.len());
    for r in &rows {
        let seq: i64 = r.try_get(0)?;
        let Some(peer) = r.try_get::<_, Option<AccountId>>(1)? else {
            out.notices += 1;
            continue;
        };
        let at = wanted.iter().position(|s| *s == seq).unwrap_or(usize::MAX);
        messages.push((at, seq, peer, r.try_get(2)?, r.try_get(3)?));
    }
    // Receipts in the order the seqs were acknowledged.
    messages.sort_unstable_by_key(|m| m.0);
    let me = if messages.is_empty() {
        None
    } else {
        tx.handle_of(account).await?
    };
    for (_, _, peer, _, body_id) in &messages {
        tx.add_pending(account, -1);
        release_body(tx, *body_id).await?;
        // Locked already with the batch (`lock_all`): no statement.
        tx.lock(*peer).await?;
    }
    let receipt_seqs = insert_receipts(tx, account, &messages, (now, notice_expires_at)).await?;
    for ((_, _, peer, message_id, _), seq) in messages.into_iter().zip(receipt_seqs) {
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

pub(super) async fn expire(
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
    // Rate-limit buckets that are full again are the same as no row.
    tx.exec(super::super::limits::DELETE_FULL, &[&EXPIRE_BATCH])
        .await?;
    Ok(out)
}
