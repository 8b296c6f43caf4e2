//! Group messages in the history: queueing outgoing ones with their
//! recipients, committing incoming ones, and the per-member ticks.

use super::*;

impl Store {
    /// Queue an outgoing group text: its history row (with the message it
    /// replies to, if any), its recipients, the sender keys to hand out
    /// first and the ciphertext in the outbox, with the sender session that
    /// made it (one transaction).
    pub fn queue_group_text(
        &self,
        out: &GroupOutgoing<'_>,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let peer = group_key(&out.group);
        let now = UnixMillis::now();
        let body = self.key.seal(
            &aad("messages", "body", &row_key(&peer, true, &out.id)),
            text.as_bytes(),
        );
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status, shown_status, group_id,
             reply_to) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
            params![
                peer,
                out.id.0.to_vec(),
                body,
                now,
                Status::Queued.to_i64(),
                out.group.0.to_vec(),
                reply_to.map(|r| r.0.to_vec())
            ],
        )?;
        insert_group_send(&tx, &self.key, out, now)?;
        crate::store::expiry::stamp_outgoing(&tx, &peer, &out.id, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Queue an outgoing group file whose encrypted copy is at `encrypted`
    /// (its history row, with the message it replies to if any, and `files`
    /// row); it goes out once uploaded ([`Store::group_file_uploaded`]).
    pub fn queue_group_file(
        &self,
        group: &GroupId,
        fd: &FileDescriptor,
        encrypted: &std::path::Path,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        let id = MessageId::random();
        let peer = group_key(group);
        let now = UnixMillis::now();
        let tx = self.conn.unchecked_transaction()?;
        let body = self.key.seal(
            &aad("messages", "body", &row_key(&peer, true, &id)),
            fd.caption.as_bytes(),
        );
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status, shown_status, group_id,
             reply_to) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
            params![
                peer,
                id.0.to_vec(),
                body,
                now,
                Status::Queued.to_i64(),
                group.0.to_vec(),
                reply_to.map(|r| r.0.to_vec())
            ],
        )?;
        insert_file(
            &tx,
            &self.key,
            &peer,
            true,
            &id,
            fd,
            FileState::Upload,
            Some(encrypted),
        )?;
        crate::store::expiry::stamp_outgoing(&tx, &peer, &id, now)?;
        tx.commit()?;
        Ok(id)
    }

    /// The blob of an outgoing group file is on the server: the file row
    /// moves on and the Megolm message carrying its descriptor goes into
    /// the outbox (one transaction).
    pub fn group_file_uploaded(&self, out: &GroupOutgoing<'_>) -> Result<()> {
        let peer = group_key(&out.group);
        let tx = self.conn.unchecked_transaction()?;
        let changed = tx.execute(
            "UPDATE files SET state = ?4, path = NULL WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND state = ?3",
            params![
                peer,
                out.id.0.to_vec(),
                FileState::Upload.to_i64(),
                FileState::Uploaded.to_i64()
            ],
        )?;
        if changed == 1 {
            insert_group_send(&tx, &self.key, out, UnixMillis::now())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Who an outgoing group message still goes to: its recipients at
    /// send time that are still members. `None` when this device is no
    /// longer a member (the message must not go out).
    pub fn group_recipients(&self, group: &GroupId, id: &MessageId) -> Result<Option<Vec<String>>> {
        let Some(record) = self.group(group)? else {
            return Ok(None);
        };
        if record.status != GroupStatus::Member {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT member FROM group_receipts WHERE id = ?1 ORDER BY rowid")?;
        let members: Vec<String> = stmt
            .query_map([id.0.to_vec()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(
            members
                .into_iter()
                .filter(|m| record.state.member_by_handle(m).is_some())
                .collect(),
        ))
    }

    /// The server refused these recipients of a group message: they no
    /// longer count in its ticks.
    pub fn group_refused(&self, id: &MessageId, members: &[String]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        for m in members {
            tx.execute(
                "DELETE FROM group_receipts WHERE id = ?1 AND member = ?2",
                params![id.0.to_vec(), m],
            )?;
        }
        settle(&tx, id)?;
        tx.commit()?;
        Ok(())
    }

    /// A recipient of an outgoing group message has it on their device.
    pub fn group_delivered(&self, member: &str, id: &MessageId) -> Result<()> {
        group_receipt(&self.conn, member, id, RECEIPT_DELIVERED)
    }

    /// The server dropped a recipient's copy of an outgoing group message
    /// undelivered (its retention ran out). Only a copy not yet delivered
    /// can expire; once every recipient's copy did, the message is expired.
    pub fn group_expired(&self, member: &str, id: &MessageId) -> Result<()> {
        let changed = self.conn.execute(
            "UPDATE group_receipts SET state = ?3 WHERE id = ?1 AND member = ?2 AND state = ?4",
            params![id.0.to_vec(), member, RECEIPT_EXPIRED, RECEIPT_SENT],
        )?;
        if changed > 0 {
            settle(&self.conn, id)?;
        }
        Ok(())
    }

    /// Commit a decrypted group message: its history row (and file row),
    /// the inbound sessions, the dedup markers, and the pending row it came
    /// from (one transaction). False if it was already stored.
    pub fn commit_group_incoming(&self, m: &GroupIncoming<'_>) -> Result<bool> {
        let tx = self.conn.unchecked_transaction()?;
        save_pickle(
            &tx,
            &m.group,
            ROLE_RECEIVER,
            &m.receiver.pickle(self.key.pickle_key()),
        )?;
        if let Some(seq) = m.pending {
            tx.execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
        }
        tx.execute(
            "INSERT OR IGNORE INTO inbox_seen(peer, id) VALUES (?1, ?2)",
            params![m.sender, m.delivered_id.0.to_vec()],
        )?;
        let fresh = tx.execute(
            "INSERT OR IGNORE INTO inbox_seen(peer, id) VALUES (?1, ?2)",
            params![m.sender, m.id.0.to_vec()],
        )? == 1
            || m.delivered_id == m.id;
        let exists = tx
            .query_row(
                "SELECT 1 FROM messages WHERE peer = ?1 AND outgoing = 0 AND id = ?2",
                params![m.sender, m.id.0.to_vec()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        let stored = fresh && !exists;
        if let (true, Some(timer)) = (stored, m.timer_set) {
            // A member set the group's timer: a notice, and the group's
            // timer if it is the latest setting.
            crate::store::expiry::insert_notice(
                &tx,
                &self.key,
                m.sender,
                false,
                &m.id,
                timer,
                m.sent_at,
                Some(&m.group),
            )?;
            crate::store::expiry::apply_setting(
                &tx,
                &Conversation::Group(m.group),
                timer,
                m.sent_at,
                &m.id,
            )?;
        } else if stored {
            let body = self.key.seal(
                &aad("messages", "body", &row_key(m.sender, false, &m.id)),
                m.text.as_bytes(),
            );
            tx.execute(
                "INSERT OR IGNORE INTO messages(peer, outgoing, id, body, sent_at_ms,
                 received_at_ms, status, group_id, timer_ms, reply_to)
                 VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    m.sender,
                    m.id.0.to_vec(),
                    body,
                    m.sent_at,
                    UnixMillis::now(),
                    Status::Received.to_i64(),
                    m.group.0.to_vec(),
                    crate::store::expiry::timer_ms(m.timer),
                    m.reply_to.map(|r| r.0.to_vec())
                ],
            )?;
            if let Some(fd) = m.file {
                insert_file(
                    &tx,
                    &self.key,
                    m.sender,
                    false,
                    &m.id,
                    fd,
                    FileState::Pending,
                    None,
                )?;
            }
        }
        tx.commit()?;
        Ok(stored)
    }
}

/// A read receipt from `member` for these of our messages: group messages
/// among them move their per-member state.
pub(in crate::store) fn group_read(
    conn: &Connection,
    member: &str,
    ids: &[MessageId],
) -> Result<()> {
    for id in ids {
        group_receipt(conn, member, id, RECEIPT_READ)?;
    }
    Ok(())
}

fn group_receipt(conn: &Connection, member: &str, id: &MessageId, to: i64) -> Result<()> {
    let changed = conn.execute(
        "UPDATE group_receipts SET state = ?3 WHERE id = ?1 AND member = ?2 AND state < ?3",
        params![id.0.to_vec(), member, to],
    )?;
    if changed > 0 {
        settle(conn, id)?;
    }
    Ok(())
}

/// Move an outgoing group message's status to what its recipients' states
/// add up to: delivered once every one has it, read once every one
/// displayed it, expired once every one's copy expired (never backwards;
/// nothing before it is sent). A copy that expired for some recipients
/// keeps the message from ever showing delivered: they never had it.
pub(super) fn settle(conn: &Connection, id: &MessageId) -> Result<()> {
    let t = ticks(conn, id)?;
    let to = if t.of == 0 {
        return Ok(());
    } else if t.expired == t.of {
        Status::Expired
    } else if t.read_by == t.of {
        Status::Read
    } else if t.delivered_to == t.of {
        Status::Delivered
    } else {
        return Ok(());
    };
    conn.execute(
        "UPDATE messages SET status = ?2 WHERE outgoing = 1 AND id = ?1 AND group_id IS NOT NULL
         AND status >= ?3 AND status < ?2",
        params![id.0.to_vec(), to.to_i64(), Status::Sent.to_i64()],
    )?;
    Ok(())
}

/// The ticks of an outgoing group message.
pub(in crate::store) fn ticks(conn: &Connection, id: &MessageId) -> Result<GroupTicks> {
    let (total, delivered, read, expired): (i64, i64, i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(state >= ?2), 0), COALESCE(SUM(state >= ?3), 0),
                COALESCE(SUM(state = ?4), 0)
         FROM group_receipts WHERE id = ?1",
        params![
            id.0.to_vec(),
            RECEIPT_DELIVERED,
            RECEIPT_READ,
            RECEIPT_EXPIRED
        ],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let n = |v: i64| u32::try_from(v).unwrap_or(0);
    Ok(GroupTicks {
        delivered_to: n(delivered),
        read_by: n(read),
        of: n(total),
        expired: n(expired),
    })
}

pub(super) fn save_pickle(
    tx: &Transaction<'_>,
    group: &GroupId,
    role: i64,
    pickle: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO group_keys(group_id, role, pickle) VALUES (?1, ?2, ?3)
         ON CONFLICT(group_id, role) DO UPDATE SET pickle = excluded.pickle",
        params![group.0.to_vec(), role, pickle],
    )?;
    Ok(())
}

pub(in crate::store) fn insert_group_send(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    out: &GroupOutgoing<'_>,
    now: UnixMillis,
) -> Result<()> {
    let peer = group_key(&out.group);
    save_pickle(
        tx,
        &out.group,
        ROLE_SENDER,
        &out.sender.pickle(key.pickle_key()),
    )?;
    for (to, kind) in &out.keys {
        insert_outbox(tx, key, &MessageId::random(), to, kind, now)?;
    }
    for member in out.recipients {
        tx.execute(
            "INSERT OR IGNORE INTO group_receipts(id, member, group_id, state) VALUES (?1, ?2, ?3, ?4)",
            params![out.id.0.to_vec(), member, out.group.0.to_vec(), RECEIPT_SENT],
        )?;
    }
    insert_outbox(tx, key, &out.id, &peer, &OutboxKind::Group(out.group), now)?;
    tx.execute(
        "UPDATE outbox SET ciphertext = ?2 WHERE id = ?1",
        params![out.id.0.to_vec(), out.ciphertext],
    )?;
    Ok(())
}
