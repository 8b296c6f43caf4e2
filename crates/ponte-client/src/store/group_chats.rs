//! Groups as a chat window shows them: one summary per group in the chat
//! list, pages of a group's conversation, and its unread messages read
//! when the chat is opened (read receipts to each sender, pairwise, which
//! the sender counts in its `group_receipts`).
//!
//! An incoming group message is a `messages` row with the sender as
//! `peer` and `group_id` set; a chat window that reported it marked it in
//! `unread` under the sender's handle (see `chats`). This module reads
//! them by `group_id`, so a sender's 1:1 chat and their group messages
//! stay apart.

use super::chats::{ensure, ChatSummary, ConversationPage, MAX_PAGE};
use super::groups::FLAG_GROUP_NOTICE;
use super::messages::{queue_receipts, select_views};
use super::{group_key, GroupStatus, MessageView, Store};
use crate::{ClientError, Result};
use ponte_e2e::group::GroupId;
use ponte_e2e::MessageId;
use rusqlite::params;

impl Store {
    /// One summary per group this device is or was in, with the `seq` of
    /// its newest message (for ordering the chat list).
    pub(super) fn group_summaries(&self) -> Result<Vec<(Option<i64>, ChatSummary)>> {
        ensure(&self.conn)?;
        let mut out = Vec::new();
        for g in self.groups()? {
            let id = g.id();
            let gid = id.0.to_vec();
            let last_seq: Option<i64> = self.conn.query_row(
                "SELECT MAX(seq) FROM messages WHERE group_id = ?1",
                [&gid],
                |r| r.get(0),
            )?;
            let last = match last_seq {
                Some(seq) => select_views(&self.conn, &self.key, "seq = ?1", &[&seq])?.pop(),
                None => None,
            };
            // Changes to the group and timer settings are lines in it, not
            // unread messages.
            let unread: i64 = self.conn.query_row(
                "SELECT (SELECT COUNT(*) FROM unread u CROSS JOIN messages m
                         ON m.peer = u.peer AND m.outgoing = 0 AND m.id = u.id
                         WHERE m.group_id = ?1 AND m.flags & ?2 = 0)
                      + (SELECT COUNT(*) FROM messages INDEXED BY messages_unshown
                         WHERE group_id = ?1 AND outgoing = 0 AND shown_status <> status
                         AND flags & ?2 = 0)",
                params![gid, FLAG_GROUP_NOTICE | super::expiry::FLAG_TIMER_NOTICE],
                |r| r.get(0),
            )?;
            out.push((
                last_seq,
                ChatSummary {
                    peer: group_key(&id),
                    last,
                    unread: usize::try_from(unread).unwrap_or(0),
                    key_changed: false,
                    verified: false,
                    group: Some(id),
                    title: Some(g.state.title().to_owned()),
                    group_status: Some(g.status),
                },
            ));
        }
        Ok(out)
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) messages of a group's
    /// conversation (both ways, and its notices) older than `before`
    /// (`None`: the newest), oldest first. Nothing is marked.
    pub fn group_page(
        &self,
        group: &GroupId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<ConversationPage> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(ClientError::Invalid(format!(
                "a page holds 1 to {MAX_PAGE} messages"
            )));
        }
        let gid = group.0.to_vec();
        let before = before.unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(1);
        let seqs: Vec<i64> = {
            let mut stmt = self.conn.prepare(
                "SELECT seq FROM messages WHERE group_id = ?1 AND seq < ?2
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![gid, before, limit + 1], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        let more = seqs.len() > usize::try_from(limit).unwrap_or(0);
        let page: &[i64] = if more { &seqs[..seqs.len() - 1] } else { &seqs };
        let Some(&oldest) = page.last() else {
            return Ok(ConversationPage {
                messages: Vec::new(),
                older: None,
            });
        };
        let messages = select_views(
            &self.conn,
            &self.key,
            "group_id = ?1 AND seq >= ?2 AND seq < ?3",
            &[&gid, &oldest, &before],
        )?;
        Ok(ConversationPage {
            messages,
            older: more.then_some(oldest),
        })
    }

    /// The user opened a group's chat: its incoming messages are read.
    /// Queues a read receipt to each sender for their messages not read
    /// before (notices of changes get none) and returns how many.
    pub fn mark_group_read(&self, group: &GroupId) -> Result<usize> {
        ensure(&self.conn)?;
        let gid = group.0.to_vec();
        // Immediate, as for a contact's chat (another connection writes).
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let rows: Vec<(String, Vec<u8>, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT m.peer, m.id, m.flags FROM messages m
                 WHERE m.group_id = ?1 AND m.outgoing = 0 AND (m.shown_status <> m.status
                   OR EXISTS (SELECT 1 FROM unread u WHERE u.peer = m.peer AND u.id = m.id))",
            )?;
            let rows = stmt
                .query_map([&gid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        // An unreadable message was not read: no receipt for it.
        let unreadable: Vec<MessageId> = select_views(
            &tx,
            &self.key,
            "group_id = ?1 AND outgoing = 0 AND shown_status <> status",
            &[&gid],
        )?
        .into_iter()
        .filter(|v: &MessageView| v.unreadable)
        .map(|v| v.id)
        .collect();
        let mut displayed = Vec::new();
        for (peer, id, flags) in &rows {
            tx.execute(
                "DELETE FROM unread WHERE peer = ?1 AND id = ?2",
                params![peer, id],
            )?;
            let Some(id) = MessageId::from_slice(id) else {
                continue;
            };
            if flags & FLAG_GROUP_NOTICE == 0 && !unreadable.contains(&id) {
                displayed.push((peer.clone(), id));
            }
        }
        tx.execute(
            "UPDATE messages SET shown_status = status WHERE group_id = ?1 AND outgoing = 0",
            [&gid],
        )?;
        displayed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1 .0.cmp(&b.1 .0)));
        displayed.dedup();
        super::expiry::start_clocks(&tx, &displayed)?;
        queue_receipts(&tx, &self.key, &displayed)?;
        tx.commit()?;
        Ok(displayed.len())
    }

    /// Whether this device is a member of the group now (a chat window
    /// offers sending only then).
    pub fn group_status(&self, group: &GroupId) -> Result<Option<GroupStatus>> {
        Ok(self.group(group)?.map(|g| g.status))
    }
}
