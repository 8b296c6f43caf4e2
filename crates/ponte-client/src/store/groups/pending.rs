//! What waits in `group_pending` until the group (or the key) it needs
//! arrives.

use super::*;

impl Store {
    /// Hold an item until its group (or the key it needs) arrives; the
    /// oldest of the group's pending items go beyond
    /// [`MAX_PENDING_PER_GROUP`]. The delivery id is marked seen with it.
    pub fn add_pending(
        &self,
        group: &GroupId,
        sender: &str,
        kind: PendingKind,
        payload: &[u8],
        delivered_id: Option<&MessageId>,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let sealed = self.key.seal(&pending_aad(group, sender), payload);
        tx.execute(
            "INSERT INTO group_pending(group_id, sender, kind, payload, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                group.0.to_vec(),
                sender,
                kind.to_i64(),
                sealed,
                UnixMillis::now()
            ],
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
        if let Some(id) = delivered_id {
            tx.execute(
                "INSERT OR IGNORE INTO inbox_seen(peer, id) VALUES (?1, ?2)",
                params![sender, id.0.to_vec()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The items waiting for `group`, oldest first (an item that does not
    /// open is dropped).
    pub fn pending(&self, group: &GroupId) -> Result<Vec<PendingItem>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, sender, kind, payload FROM group_pending WHERE group_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([group.0.to_vec()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, sender, kind, sealed) in rows {
            let Ok(payload) = self.key.open(&pending_aad(group, &sender), &sealed) else {
                self.conn
                    .execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
                continue;
            };
            out.push(PendingItem {
                seq,
                group: *group,
                sender,
                kind: PendingKind::from_i64(kind)?,
                payload,
            });
        }
        Ok(out)
    }

    /// A group's timer that waited in `group_pending` applies now (its
    /// sender is a current member): its notice, the group's timer if it is
    /// the latest setting, and the pending row gone (one transaction).
    pub fn commit_pending_group_timer(
        &self,
        seq: i64,
        sender: &str,
        id: &MessageId,
        sent_at: UnixMillis,
        group: &GroupId,
        timer: Option<ponte_e2e::Timer>,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
        crate::store::expiry::insert_notice(
            &tx,
            &self.key,
            sender,
            false,
            id,
            timer,
            sent_at,
            Some(group),
        )?;
        crate::store::expiry::apply_setting(&tx, &Conversation::Group(*group), timer, sent_at, id)?;
        tx.commit()?;
        Ok(())
    }

    /// Drop a pending item (refused, or it can never apply).
    pub fn drop_pending(&self, seq: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM group_pending WHERE seq = ?1", [seq])?;
        Ok(())
    }
}
