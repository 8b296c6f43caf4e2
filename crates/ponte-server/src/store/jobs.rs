//! The SQL of every write job (register, upload, claim, send, group send,
//! ack, expire, invites), run by the writer inside its batch transaction.

use super::read::{account_where, arr32, key_counts};
use super::types::*;
use super::write::{finisher, Finisher, WriterState};
use super::{CommitError, StoreError};
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// How a job ran inside the batch transaction.
pub(super) enum Ran {
    /// Its answer, given once the batch is durable.
    Done(Finisher),
    /// A statement failed outside a savepoint: the whole batch rolls back,
    /// and every job of it is answered with this error as the cause.
    Abort(Finisher, rusqlite::Error),
}

pub(super) enum Job {
    Register(NewAccount, Reply<RegisterOutcome>),
    Upload {
        account: AccountId,
        one_time: Vec<KeyRecord>,
        fallback: Option<KeyRecord>,
        max_one_time: u32,
        reply: Reply<UploadOutcome>,
    },
    Claim(String, Reply<ClaimOutcome>),
    Send(NewMessage, Reply<SendOutcome>),
    SendGroup(NewGroupMessage, Reply<GroupSendOutcome>),
    Ack {
        account: AccountId,
        seqs: Vec<Seq>,
        now: UnixMillis,
        notice_expires_at: UnixMillis,
        reply: Reply<AckOutcome>,
    },
    Expire {
        now: UnixMillis,
        retention: Duration,
        notice_ttl: Duration,
        /// Notices a reader found past their deadline: `(owner, seq)`.
        stale_notices: Vec<(AccountId, Seq)>,
        reply: Reply<ExpireOutcome>,
    },
    /// A job given as a closure, run in a savepoint (blob metadata).
    Savepoint(Box<dyn super::blobs::SavepointJob>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// Rows handled by one expiry sweep.
pub(super) const EXPIRE_BATCH: i64 = 2000;

/// Hash under which an invite token is stored.
pub(super) fn invite_hash(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ponte-invite-v1\n");
    h.update(token.as_bytes());
    h.finalize().into()
}

/// A fresh random invite token: 128 bits as 32 lowercase hex digits.
///
/// Hex rather than base64url: a base64url token starts with `-` one time in
/// 64, and a command line then reads it as a flag (`--invite -x…`). Hex is
/// also easier to read out over the phone. Tokens from older versions
/// (base64url) stay valid: the server only compares hashes.
pub(super) fn new_invite_token() -> String {
    use rand::RngCore as _;
    use std::fmt::Write as _;
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Answers `job` with `error` without running it.
pub(super) fn fail_job(job: Job, error: &Arc<CommitError>) {
    let e = || StoreError::CommitFailed(Arc::clone(error));
    match job {
        Job::Register(_, r) => drop(r.send(Err(e()))),
        Job::Upload { reply, .. } => drop(reply.send(Err(e()))),
        Job::Claim(_, r) => drop(r.send(Err(e()))),
        Job::Send(_, r) => drop(r.send(Err(e()))),
        Job::SendGroup(_, r) => drop(r.send(Err(e()))),
        Job::Ack { reply, .. } => drop(reply.send(Err(e()))),
        Job::Expire { reply, .. } => drop(reply.send(Err(e()))),
        Job::Savepoint(j) => j.fail(error),
    }
}

/// Runs `f` in a savepoint: kept when it returns `Ok((_, true))`, rolled
/// back otherwise (for jobs that may write and then refuse).
pub(super) fn in_savepoint<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> Result<(T, bool), rusqlite::Error>,
) -> Result<T, StoreError> {
    let exec = |sql: &str| c.prepare_cached(sql).and_then(|mut s| s.execute([]));
    exec("SAVEPOINT job")?;
    let r = f(c);
    let keep = matches!(r, Ok((_, true)));
    if keep {
        exec("RELEASE job")?;
    } else {
        exec("ROLLBACK TO job")?;
        exec("RELEASE job")?;
    }
    Ok(r?.0)
}

/// Wraps the result of a job that runs without a savepoint: a statement
/// error leaves the transaction half-changed, so it aborts the batch.
fn direct<T: Send + 'static>(reply: Reply<T>, r: Result<T, rusqlite::Error>) -> Ran {
    match r {
        Ok(v) => Ran::Done(finisher(reply, Ok(v))),
        // Answered with the batch's failure, which this error causes.
        Err(e) => Ran::Abort(
            Box::new(move |failure: Option<&Arc<CommitError>>| {
                let _ = reply.send(Err(match failure {
                    Some(f) => StoreError::CommitFailed(Arc::clone(f)),
                    None => StoreError::Task,
                }));
            }),
            e,
        ),
    }
}

/// Runs `job` in the open transaction; the items it stores for hand-over go
/// to the end of `handover`.
pub(super) fn run_job(
    c: &Connection,
    st: &mut WriterState,
    job: Job,
    handover: &mut Vec<Committed>,
) -> Ran {
    match job {
        Job::Register(a, reply) => {
            Ran::Done(finisher(reply, in_savepoint(c, |c| do_register(c, &a))))
        }
        Job::Upload {
            account,
            one_time,
            fallback,
            max_one_time,
            reply,
        } => Ran::Done(finisher(
            reply,
            in_savepoint(c, |c| {
                do_upload(c, account, &one_time, fallback.as_ref(), max_one_time)
            }),
        )),
        Job::Claim(handle, reply) => {
            Ran::Done(finisher(reply, in_savepoint(c, |c| do_claim(c, &handle))))
        }
        Job::Send(m, reply) => direct(reply, do_send(c, st, &m, handover)),
        Job::SendGroup(m, reply) => direct(reply, do_send_group(c, st, &m, handover)),
        Job::Ack {
            account,
            seqs,
            now,
            notice_expires_at,
            reply,
        } => direct(
            reply,
            do_ack(c, st, account, &seqs, now, notice_expires_at, handover),
        ),
        Job::Expire {
            now,
            retention,
            notice_ttl,
            stale_notices,
            reply,
        } => direct(
            reply,
            do_expire(c, st, now, retention, notice_ttl, &stale_notices, handover),
        ),
        Job::Savepoint(j) => Ran::Done(j.run(c)),
    }
}

fn do_register(c: &Connection, a: &NewAccount) -> Result<(RegisterOutcome, bool), rusqlite::Error> {
    let exists = |sql: &str, v: &dyn rusqlite::ToSql| -> Result<bool, rusqlite::Error> {
        Ok(c.prepare_cached(sql)?
            .query_row([v], |_| Ok(()))
            .optional()?
            .is_some())
    };
    if exists(
        "SELECT 1 FROM accounts WHERE noise_key = ?1",
        &&a.noise_key[..],
    )? {
        return Ok((RegisterOutcome::DeviceTaken, false));
    }
    if exists("SELECT 1 FROM accounts WHERE handle = ?1", &a.handle)? {
        return Ok((RegisterOutcome::HandleTaken, false));
    }
    if a.invite_required {
        let Some(token) = &a.invite else {
            return Ok((RegisterOutcome::InviteRequired, false));
        };
        let used = c.execute(
            "DELETE FROM invites WHERE token_hash = ?1",
            [&invite_hash(token)[..]],
        )?;
        if used == 0 {
            return Ok((RegisterOutcome::InviteInvalid, false));
        }
    }
    c.execute(
        "INSERT INTO accounts (handle, noise_key, curve25519, ed25519, signature, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            a.handle,
            &a.noise_key[..],
            &a.curve25519[..],
            &a.ed25519[..],
            a.signature,
            a.now
        ],
    )?;
    Ok((RegisterOutcome::Created(c.last_insert_rowid()), true))
}

fn do_upload(
    c: &Connection,
    account: AccountId,
    one_time: &[KeyRecord],
    fallback: Option<&KeyRecord>,
    max_one_time: u32,
) -> Result<(UploadOutcome, bool), rusqlite::Error> {
    {
        let mut ins = c.prepare_cached(
            "INSERT OR IGNORE INTO one_time_keys (account, key_id, public_key, signature)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for k in one_time {
            ins.execute(params![account, k.key_id, &k.public_key[..], k.signature])?;
        }
    }
    if let Some(k) = fallback {
        c.execute(
            "INSERT OR REPLACE INTO fallback_keys (account, key_id, public_key, signature)
             VALUES (?1, ?2, ?3, ?4)",
            params![account, k.key_id, &k.public_key[..], k.signature],
        )?;
    }
    let counts = key_counts(c, account)?;
    if counts.one_time_keys > max_one_time {
        return Ok((UploadOutcome::LimitExceeded, false));
    }
    Ok((UploadOutcome::Stored(counts), true))
}

fn do_claim(c: &Connection, handle: &str) -> Result<(ClaimOutcome, bool), rusqlite::Error> {
    let Some(owner) = account_where(c, "handle = ?1", &handle)? else {
        return Ok((ClaimOutcome::UnknownHandle, false));
    };
    let otk = c
        .prepare_cached(
            "SELECT rowid, key_id, public_key, signature FROM one_time_keys
             WHERE account = ?1 ORDER BY rowid LIMIT 1",
        )?
        .query_row([owner.id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                KeyRecord {
                    key_id: r.get(1)?,
                    public_key: arr32(r.get(2)?),
                    signature: r.get(3)?,
                },
            ))
        })
        .optional()?;
    let (key, fallback) = match otk {
        Some((rowid, key)) => {
            c.execute("DELETE FROM one_time_keys WHERE rowid = ?1", [rowid])?;
            (key, false)
        }
        None => {
            let fb = c
                .prepare_cached(
                    "SELECT key_id, public_key, signature FROM fallback_keys WHERE account = ?1",
                )?
                .query_row([owner.id], |r| {
                    Ok(KeyRecord {
                        key_id: r.get(0)?,
                        public_key: arr32(r.get(1)?),
                        signature: r.get(2)?,
                    })
                })
                .optional()?;
            match fb {
                Some(k) => (k, true),
                None => return Ok((ClaimOutcome::NoKeys, false)),
            }
        }
    };
    let remaining = key_counts(c, owner.id)?.one_time_keys;
    Ok((
        ClaimOutcome::Claimed(Box::new(Claimed {
            owner,
            key,
            fallback,
            remaining,
        })),
        true,
    ))
}

/// The dedup log's accept time of `(sender, message_id)`, if it was seen.
fn seen(
    c: &Connection,
    sender: AccountId,
    message_id: &[u8; 16],
) -> Result<Option<UnixMillis>, rusqlite::Error> {
    c.prepare_cached("SELECT accepted_at FROM sent WHERE sender = ?1 AND message_id = ?2")?
        .query_row(params![sender, &message_id[..]], |r| r.get(0))
        .optional()
}

/// Enters `(sender, message_id)` in the dedup log; `false` if it was there.
fn log_sent(
    c: &Connection,
    sender: AccountId,
    message_id: &[u8; 16],
    now: UnixMillis,
) -> Result<bool, rusqlite::Error> {
    let fresh = c
        .prepare_cached(
            "INSERT INTO sent (sender, message_id, accepted_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![sender, &message_id[..], now])?;
    Ok(fresh > 0)
}

/// Stores a message. Checks come before writes, so a refused send changes
/// nothing; three statements on the common path (recipient lookup, dedup
/// insert, mailbox insert).
fn do_send(
    c: &Connection,
    st: &mut WriterState,
    m: &NewMessage,
    handover: &mut Vec<Committed>,
) -> Result<SendOutcome, rusqlite::Error> {
    let recipient = c
        .prepare_cached("SELECT id FROM accounts WHERE handle = ?1")?
        .query_row([&m.recipient], |r| r.get::<_, i64>(0))
        .optional()?;
    let refused = match recipient {
        None => Some(SendOutcome::UnknownRecipient),
        Some(r) if st.pending(r) >= m.max_pending => Some(SendOutcome::MailboxFull),
        Some(_) => None,
    };
    // A retry of a message that was accepted is acknowledged again even if
    // the mailbox filled up since.
    if let Some(refused) = refused {
        return Ok(match seen(c, m.sender, &m.message_id)? {
            Some(accepted_at) => SendOutcome::Duplicate { accepted_at },
            None => refused,
        });
    }
    let Some(recipient) = recipient else {
        return Ok(SendOutcome::UnknownRecipient);
    };
    if !log_sent(c, m.sender, &m.message_id, m.now)? {
        let accepted_at = seen(c, m.sender, &m.message_id)?.unwrap_or(m.now);
        return Ok(SendOutcome::Duplicate { accepted_at });
    }
    let seq = st.alloc_seq(c)?;
    c.prepare_cached(
        "INSERT INTO mailbox (owner, seq, peer, message_id, body, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        recipient,
        seq,
        m.sender,
        &m.message_id[..],
        &m.body[..],
        m.now,
        m.expires_at
    ])?;
    st.add_pending(recipient);
    // A sender without an account row is not read back either (reads join
    // on it): nothing to hand over.
    if let Some(sender) = st.handle_of(c, m.sender)? {
        handover.push(Committed::Item {
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

/// Stores a group message: its body once in `bodies`, counting the entries
/// that refer to it, and one mailbox entry per accepted recipient. Every
/// recipient is looked up and checked before anything is written; the
/// refused ones are listed and the others stored. The entries handed over
/// share one body (`Bytes`), as they share one row.
fn do_send_group(
    c: &Connection,
    st: &mut WriterState,
    m: &NewGroupMessage,
    handover: &mut Vec<Committed>,
) -> Result<GroupSendOutcome, rusqlite::Error> {
    let mut accepted: Vec<AccountId> = Vec::with_capacity(m.recipients.len());
    let mut named: HashSet<AccountId> = HashSet::with_capacity(m.recipients.len());
    let mut refused = Vec::new();
    {
        let mut lookup = c.prepare_cached("SELECT id FROM accounts WHERE handle = ?1")?;
        for handle in &m.recipients {
            let id = lookup
                .query_row([handle], |r| r.get::<_, AccountId>(0))
                .optional()?;
            let why = match id {
                None => Some(Refused::Unknown),
                Some(id) if id == m.sender => Some(Refused::Sender),
                Some(id) if st.pending(id) >= m.max_pending => Some(Refused::MailboxFull),
                // Named twice: one entry is enough.
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
    }
    if accepted.is_empty() {
        // As for 1:1: a retry of an accepted message is acknowledged again
        // even if every mailbox filled up since.
        return Ok(match seen(c, m.sender, &m.message_id)? {
            Some(accepted_at) => GroupSendOutcome::Duplicate { accepted_at },
            None => GroupSendOutcome::Accepted {
                accepted_at: m.now,
                entries: 0,
                refused,
            },
        });
    }
    if !log_sent(c, m.sender, &m.message_id, m.now)? {
        let accepted_at = seen(c, m.sender, &m.message_id)?.unwrap_or(m.now);
        return Ok(GroupSendOutcome::Duplicate { accepted_at });
    }
    let entries = u32::try_from(accepted.len()).unwrap_or(u32::MAX);
    c.prepare_cached("INSERT INTO bodies (group_id, body, refs) VALUES (?1, ?2, ?3)")?
        .execute(params![&m.group_id[..], &m.body[..], entries])?;
    let body_id = c.last_insert_rowid();
    let sender = st.handle_of(c, m.sender)?;
    let message_id = Bytes::copy_from_slice(&m.message_id);
    let group_id = Bytes::copy_from_slice(&m.group_id);
    for recipient in accepted {
        let seq = st.alloc_seq(c)?;
        c.prepare_cached(
            "INSERT INTO mailbox (owner, seq, peer, message_id, body, created_at, expires_at,
                                  body_id)
             VALUES (?1, ?2, ?3, ?4, X'', ?5, ?6, ?7)",
        )?
        .execute(params![
            recipient,
            seq,
            m.sender,
            &m.message_id[..],
            m.now,
            m.expires_at,
            body_id
        ])?;
        st.add_pending(recipient);
        if let Some(sender) = &sender {
            handover.push(Committed::Item {
                owner: recipient,
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
        entries,
        refused,
    })
}

/// Drops one reference to a group body (an entry was acknowledged or
/// expired), deleting the body with its last reference.
fn release_body(c: &Connection, body_id: Option<i64>) -> Result<(), rusqlite::Error> {
    let Some(id) = body_id else {
        return Ok(());
    };
    let deleted = c
        .prepare_cached("DELETE FROM bodies WHERE id = ?1 AND refs <= 1")?
        .execute([id])?;
    if deleted == 0 {
        c.prepare_cached("UPDATE bodies SET refs = refs - 1 WHERE id = ?1")?
            .execute([id])?;
    }
    Ok(())
}

/// Stores a receipt or expired notice for `owner` and returns its seq.
#[allow(clippy::too_many_arguments)]
fn insert_notice(
    c: &Connection,
    st: &mut WriterState,
    owner: AccountId,
    kind: ItemKind,
    peer: AccountId,
    message_id: &[u8],
    now: UnixMillis,
    expires_at: UnixMillis,
) -> Result<Seq, rusqlite::Error> {
    let seq = st.alloc_seq(c)?;
    c.prepare_cached(
        "INSERT INTO notices (owner, seq, kind, peer, message_id, at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        owner,
        seq,
        kind.code(),
        peer,
        message_id,
        now,
        expires_at
    ])?;
    Ok(seq)
}

/// Deletes acknowledged items of `account`; each message becomes a receipt
/// for its sender. Seqs of other owners or already gone are ignored.
fn do_ack(
    c: &Connection,
    st: &mut WriterState,
    account: AccountId,
    seqs: &[Seq],
    now: UnixMillis,
    notice_expires_at: UnixMillis,
    handover: &mut Vec<Committed>,
) -> Result<AckOutcome, rusqlite::Error> {
    let mut out = AckOutcome::default();
    // The acknowledging account's handle, looked up at its first message.
    let mut me: Option<Option<String>> = None;
    for &seq in seqs {
        let message = c
            .prepare_cached(
                "DELETE FROM mailbox WHERE owner = ?1 AND seq = ?2
                 RETURNING peer, message_id, body_id",
            )?
            .query_row(params![account, seq], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            })
            .optional()?;
        let Some((peer, message_id, body_id)) = message else {
            out.notices += c
                .prepare_cached("DELETE FROM notices WHERE owner = ?1 AND seq = ?2")?
                .execute(params![account, seq])? as u64;
            continue;
        };
        st.sub_pending(account);
        release_body(c, body_id)?;
        let receipt_seq = insert_notice(
            c,
            st,
            peer,
            ItemKind::Receipt,
            account,
            &message_id,
            now,
            notice_expires_at,
        )?;
        out.messages += 1;
        let receipt = StoredReceipt {
            owner: peer,
            seq: receipt_seq,
            message_id: Bytes::from(message_id),
            at: now,
        };
        let me = match &me {
            Some(me) => me,
            None => me.insert(st.handle_of(c, account)?),
        };
        if let Some(me) = me {
            handover.push(Committed::Item {
                owner: peer,
                item: MailItem {
                    seq: receipt.seq,
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

fn do_expire(
    c: &Connection,
    st: &mut WriterState,
    now: UnixMillis,
    retention: Duration,
    notice_ttl: Duration,
    stale_notices: &[(AccountId, Seq)],
    handover: &mut Vec<Committed>,
) -> Result<ExpireOutcome, rusqlite::Error> {
    let mut out = ExpireOutcome::default();
    type Row = (AccountId, Seq, AccountId, Vec<u8>, Option<i64>);
    let rows: Vec<Row> = {
        let mut stmt = c.prepare_cached(
            "SELECT owner, seq, peer, message_id, body_id FROM mailbox
             WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
        )?;
        let it = stmt.query_map(params![now, EXPIRE_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        it.collect::<Result<_, _>>()?
    };
    out.more = rows.len() as i64 >= EXPIRE_BATCH || stale_notices.len() as i64 >= EXPIRE_BATCH;
    for (owner, seq, peer, message_id, body_id) in rows {
        c.prepare_cached("DELETE FROM mailbox WHERE owner = ?1 AND seq = ?2")?
            .execute(params![owner, seq])?;
        st.sub_pending(owner);
        release_body(c, body_id)?;
        insert_notice(
            c,
            st,
            peer,
            ItemKind::Expired,
            owner,
            &message_id,
            now,
            now.plus(notice_ttl),
        )?;
        out.expired_messages += 1;
        if !out.notify.contains(&peer) {
            out.notify.push(peer);
            // Notices are not handed over: the owner's connection reads its
            // mailbox, woken in commit order like any hand-over.
            handover.push(Committed::Wake(peer));
        }
    }
    for &(owner, seq) in stale_notices {
        out.dropped_notices += c
            .prepare_cached(
                "DELETE FROM notices WHERE owner = ?1 AND seq = ?2 AND expires_at <= ?3",
            )?
            .execute(params![owner, seq, now])? as u64;
    }
    c.prepare_cached("DELETE FROM sent WHERE accepted_at < ?1")?
        .execute([now.minus(retention)])?;
    Ok(out)
}
