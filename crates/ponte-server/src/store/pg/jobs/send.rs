//! Sending: the dedup log, 1:1 messages and group messages (each
//! recipient's row locked before its seq is taken).

use super::super::PgError;
use super::{seq_of, Tx};
use crate::store::types::*;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};

/// The dedup log's accept time of `(sender, message_id)`, if seen.
pub(super) async fn seen(
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
pub(super) async fn log_sent(
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

pub(super) async fn send(tx: &mut Tx<'_>, m: &NewMessage) -> Result<SendOutcome, PgError> {
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
    // The dedup log's entry and the mailbox row in one statement (one
    // round trip): the mailbox row, and its seq, only if the entry is new.
    let row = tx
        .opt(
            "WITH logged AS (
                 INSERT INTO sent (sender, message_id, accepted_at) VALUES ($2, $3, $5)
                 ON CONFLICT DO NOTHING RETURNING 1
             )
             INSERT INTO mailbox (owner, seq, peer, message_id, body, created_at, expires_at)
             SELECT $1::bigint, nextval('mailbox_seq'), $2::bigint, $3::bytea, $4::bytea,
                    $5::bigint, $6::bigint
             FROM logged RETURNING seq",
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
    let Some(row) = row else {
        let accepted_at = seen(tx, m.sender, &m.message_id).await?.unwrap_or(m.now);
        return Ok(SendOutcome::Duplicate { accepted_at });
    };
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
pub(super) async fn send_group(
    tx: &mut Tx<'_>,
    m: &NewGroupMessage,
) -> Result<GroupSendOutcome, PgError> {
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
