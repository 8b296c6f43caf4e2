//! One group's changes written in one transaction ([`GroupWrite`]).

use super::*;

/// Write `change` inside the caller's transaction: true when it made
/// room by forgetting groups being joined, and the ids of the outbox
/// entries it wrote.
pub(in crate::store) fn write_group(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    change: &GroupWrite,
) -> Result<(bool, Vec<MessageId>)> {
    let now = UnixMillis::now();
    for (group, sender, kind, payload) in &change.pending_add {
        let sealed = key.seal(&pending_aad(group, sender), payload);
        tx.execute(
            "INSERT INTO group_pending(group_id, sender, kind, payload, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![group.0.to_vec(), sender, kind.to_i64(), sealed, now],
        )?;
        tx.execute(
            "DELETE FROM group_pending WHERE group_id = ?1 AND seq NOT IN
             (SELECT seq FROM group_pending WHERE group_id = ?1 ORDER BY seq DESC LIMIT ?2)",
            params![group.0.to_vec(), MAX_PENDING_PER_GROUP],
        )?;
        tx.execute(
            "DELETE FROM group_pending WHERE seq NOT IN
             (SELECT seq FROM group_pending ORDER BY seq DESC LIMIT ?1)",
            [MAX_PENDING_TOTAL],
        )?;
    }
    for (handle, identity) in &change.contacts {
        tx.execute(
            "INSERT OR IGNORE INTO contacts(handle, curve25519, ed25519, first_seen_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                handle,
                identity.curve25519.to_vec(),
                identity.ed25519.to_vec(),
                now
            ],
        )?;
    }
    let mut queued = Vec::with_capacity(change.outbox.len() + change.timers.len());
    for (to, kind) in &change.outbox {
        let id = MessageId::random();
        insert_outbox(tx, key, &id, to, kind, now)?;
        queued.push(id);
    }
    for (to, setting, set_at) in &change.timers {
        let kind = OutboxKind::TimerSetting(*setting);
        let id = MessageId::random();
        insert_outbox(tx, key, &id, to, &kind, *set_at)?;
        queued.push(id);
    }
    let Some((group, status)) = change.group else {
        return Ok((false, queued));
    };
    let mut evicted = false;
    let gid = group.0.to_vec();
    tx.execute(
        "INSERT INTO groups(id, status, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET status = excluded.status, updated_ms = excluded.updated_ms",
        params![gid, status.to_i64(), now],
    )?;
    if status == GroupStatus::Joining {
        // Groups this device is being added to but is not in (yet): a
        // stranger can start any number; the least recently changed go.
        let stale: Vec<Vec<u8>> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM groups WHERE status = ?1
                 ORDER BY updated_ms DESC, rowid DESC LIMIT -1 OFFSET ?2",
            )?;
            let ids = stmt
                .query_map(
                    params![GroupStatus::Joining.to_i64(), MAX_JOINING_GROUPS],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            ids
        };
        for id in stale {
            evicted = true;
            for table in ["group_ops", "group_pending", "group_keys"] {
                tx.execute(&format!("DELETE FROM {table} WHERE group_id = ?1"), [&id])?;
            }
            tx.execute("DELETE FROM groups WHERE id = ?1", [&id])?;
        }
    }
    if let Some(title) = &change.title {
        let sealed = key.seal(&aad("groups", "title", &group.0), title.as_bytes());
        tx.execute(
            "UPDATE groups SET title = ?2 WHERE id = ?1",
            params![gid, sealed],
        )?;
    }
    for (version, op) in &change.ops {
        if *version > MAX_OPS_PER_GROUP {
            return Err(ClientError::Invalid(format!(
                "a group keeps at most {MAX_OPS_PER_GROUP} changes"
            )));
        }
        let bytes = op.encode().map_err(ponte_e2e::Error::GroupOp)?;
        let sealed = key.seal(&op_aad(&group, *version), &bytes);
        tx.execute(
            "INSERT INTO group_ops(group_id, version, op) VALUES (?1, ?2, ?3)",
            params![gid, i64::try_from(*version).unwrap_or(i64::MAX), sealed],
        )?;
    }
    match &change.sender {
        Some(Some(sender)) => {
            save_pickle(tx, &group, ROLE_SENDER, &sender.pickle(key.pickle_key()))?
        }
        Some(None) => {
            tx.execute(
                "DELETE FROM group_keys WHERE group_id = ?1 AND role = ?2",
                params![gid, ROLE_SENDER],
            )?;
        }
        None => {}
    }
    match &change.receiver {
        Some(Some(receiver)) => save_pickle(
            tx,
            &group,
            ROLE_RECEIVER,
            &receiver.pickle(key.pickle_key()),
        )?,
        Some(None) => {
            tx.execute(
                "DELETE FROM group_keys WHERE group_id = ?1 AND role = ?2",
                params![gid, ROLE_RECEIVER],
            )?;
        }
        None => {}
    }
    for notice in &change.notices {
        let id = MessageId::random();
        let body = key.seal(
            &aad("messages", "body", &row_key(&notice.by, false, &id)),
            notice.text.as_bytes(),
        );
        let status = Status::Received.to_i64();
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, received_at_ms, status,
             shown_status, flags, group_id) VALUES (?1, 0, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8)",
            params![
                notice.by,
                id.0.to_vec(),
                body,
                now,
                status,
                if notice.shown { status } else { -1 },
                FLAG_GROUP_NOTICE,
                gid
            ],
        )?;
    }
    for member in &change.gone {
        let ids: Vec<Vec<u8>> = {
            let mut stmt =
                tx.prepare("SELECT id FROM group_receipts WHERE group_id = ?1 AND member = ?2")?;
            let ids = stmt
                .query_map(params![gid, member], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            ids
        };
        tx.execute(
            "DELETE FROM group_receipts WHERE group_id = ?1 AND member = ?2",
            params![gid, member],
        )?;
        for id in ids.iter().filter_map(|i| MessageId::from_slice(i)) {
            settle(tx, &id)?;
        }
    }
    for seq in &change.pending_done {
        tx.execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
    }
    if change.forget {
        tx.execute("DELETE FROM group_pending WHERE group_id = ?1", [&gid])?;
        tx.execute("DELETE FROM group_keys WHERE group_id = ?1", [&gid])?;
    }
    Ok((evicted, queued))
}
