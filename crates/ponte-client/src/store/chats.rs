//! Chats as a chat window shows them: one summary per conversation (last
//! message, unread count), a page of a conversation, and unread state kept
//! apart from "reported".
//!
//! The CLI counts an incoming message as read once it printed it. A chat
//! window reports a message as soon as it arrives (the chat list shows it)
//! but the user reads it only when they open the chat: a client that runs
//! with [`crate::Client::set_read_when_opened`] marks what it reported with
//! [`Store::mark_notified`] (no read receipt, the message joins the
//! `unread` table) and sends the read receipts when the chat is opened
//! ([`Store::mark_chat_read`]).
//!
//! Table `unread` (created on first use): `(peer, id)` of incoming
//! messages reported but not read yet. Handles and ids only, no text.

use super::messages::{queue_receipts, select_views};
use super::{MessageView, Store};
use crate::{ClientError, Result};
use ponte_e2e::MessageId;
use rusqlite::{params, Connection};

const SCHEMA_UNREAD: &str = "
CREATE TABLE IF NOT EXISTS unread (
    peer TEXT NOT NULL,
    id BLOB NOT NULL,
    PRIMARY KEY (peer, id)
);
";

/// Most messages one page of a conversation holds.
pub const MAX_PAGE: usize = 1000;

/// One conversation in the chat list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatSummary {
    /// The contact, or the group's conversation key `g:HEX`.
    pub peer: String,
    /// For a group: its id.
    pub group: Option<ponte_e2e::group::GroupId>,
    /// For a group: its title, as this device last knew it.
    pub title: Option<String>,
    /// For a group: where this device stands in it.
    pub group_status: Option<super::GroupStatus>,
    /// The newest message, if any.
    pub last: Option<MessageView>,
    /// Incoming messages not read yet.
    pub unread: usize,
    /// The contact's identity key changed and was not re-verified.
    pub key_changed: bool,
    /// The user compared safety numbers and confirmed.
    pub verified: bool,
}

/// A page of a conversation, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConversationPage {
    /// The messages.
    pub messages: Vec<MessageView>,
    /// Pass as `before` for the page of older messages (`None`: this page
    /// starts the conversation).
    pub older: Option<i64>,
}

pub(super) fn ensure(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA_UNREAD)?;
    Ok(())
}

/// Drops the unread mark of a message that is being deleted (disappearing
/// messages); nothing when no chat window ever made the table.
pub(super) fn forget_unread(conn: &Connection, peer: &str, id: &MessageId) -> Result<()> {
    ensure(conn)?;
    conn.execute(
        "DELETE FROM unread WHERE peer = ?1 AND id = ?2",
        rusqlite::params![peer, id.0.to_vec()],
    )?;
    Ok(())
}

impl Store {
    /// Record that these updates were reported to a chat window: an
    /// outgoing tick is no longer new; an incoming message is no longer new
    /// either but stays unread (no read receipt) until
    /// [`Store::mark_chat_read`].
    pub fn mark_notified<'a>(
        &self,
        views: impl IntoIterator<Item = &'a MessageView>,
    ) -> Result<()> {
        ensure(&self.conn)?;
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        for v in views {
            let changed = tx.execute(
                "UPDATE messages SET shown_status = ?4
                 WHERE peer = ?1 AND outgoing = ?2 AND id = ?3 AND shown_status <> ?4",
                params![
                    v.peer,
                    i64::from(v.outgoing),
                    v.id.0.to_vec(),
                    v.status.to_i64()
                ],
            )?;
            if changed > 0 && !v.outgoing && !v.unreadable {
                tx.execute(
                    "INSERT OR IGNORE INTO unread(peer, id) VALUES (?1, ?2)",
                    params![v.peer, v.id.0.to_vec()],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The user opened the chat with `peer`: every incoming message in it
    /// is read. Queues one read receipt for those not read before (merged
    /// per peer as for the CLI) and returns how many there were.
    pub fn mark_chat_read(&self, peer: &str) -> Result<usize> {
        ensure(&self.conn)?;
        // Immediate: it reads, then writes, while another connection (the
        // one that receives) may commit in between; a deferred transaction
        // would then fail with "database is locked" instead of waiting.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let mut ids: Vec<Vec<u8>> = {
            // Group messages from `peer` are read in their group's chat.
            let mut stmt = tx.prepare(
                "SELECT u.id FROM unread u WHERE u.peer = ?1 AND NOT EXISTS
                 (SELECT 1 FROM messages m WHERE m.peer = u.peer AND m.outgoing = 0
                  AND m.id = u.id AND m.group_id IS NOT NULL)",
            )?;
            let rows = stmt
                .query_map([peer], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        // Reported to nobody yet (arrived a moment ago): read all the same.
        let fresh = select_views(
            &tx,
            &self.key,
            "peer = ?1 AND outgoing = 0 AND shown_status <> status AND group_id IS NULL",
            &[&peer],
        )?;
        ids.extend(
            fresh
                .iter()
                .filter(|v| !v.unreadable)
                .map(|v| v.id.0.to_vec()),
        );
        tx.execute(
            "UPDATE messages SET shown_status = status WHERE peer = ?1 AND outgoing = 0
             AND group_id IS NULL",
            [peer],
        )?;
        for id in &ids {
            tx.execute(
                "DELETE FROM unread WHERE peer = ?1 AND id = ?2",
                params![peer, id],
            )?;
        }
        let mut displayed: Vec<(String, MessageId)> = ids
            .iter()
            .filter_map(|i| MessageId::from_slice(i))
            .map(|i| (peer.to_owned(), i))
            .collect();
        displayed.sort_by_key(|d| d.1 .0);
        displayed.dedup();
        super::expiry::start_clocks(&tx, &displayed)?;
        queue_receipts(&tx, &self.key, &displayed)?;
        tx.commit()?;
        Ok(displayed.len())
    }

    /// Every conversation (contacts, peers with messages, and groups),
    /// the one with the newest message first; contacts without messages
    /// last, by name.
    pub fn chat_summaries(&self) -> Result<Vec<ChatSummary>> {
        ensure(&self.conn)?;
        // Each peer with messages and the newest of them, found through the
        // index on (peer, seq) with a few lookups per peer: grouping the
        // whole table read every message (about 90 ms of the chat list's
        // 95 ms at 100,000 messages). A peer heard only in groups has no
        // chat of its own.
        let mut peers: Vec<(String, Option<i64>)> = {
            let mut stmt = self.conn.prepare(
                "WITH RECURSIVE p(peer) AS (
                     SELECT MIN(peer) FROM messages
                     UNION ALL
                     SELECT (SELECT MIN(peer) FROM messages WHERE peer > p.peer) FROM p
                     WHERE p.peer IS NOT NULL)
                 SELECT peer, (SELECT seq FROM messages m
                               WHERE m.peer = p.peer AND m.group_id IS NULL
                               ORDER BY seq DESC LIMIT 1)
                 FROM p WHERE peer IS NOT NULL",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?)))?
                .filter(|r| !matches!(r, Ok((_, None))))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        // Contacts without messages.
        {
            let mut stmt = self.conn.prepare("SELECT handle FROM contacts")?;
            let handles = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let known: std::collections::HashSet<&str> =
                peers.iter().map(|(p, _)| p.as_str()).collect();
            let more: Vec<String> = handles
                .into_iter()
                .filter(|h| !known.contains(h.as_str()))
                .collect();
            peers.extend(more.into_iter().map(|h| (h, None)));
        }
        let mut out = Vec::with_capacity(peers.len());
        let mut order = Vec::with_capacity(peers.len());
        for (peer, last_seq) in peers {
            let last = match last_seq {
                Some(seq) => select_views(&self.conn, &self.key, "seq = ?1", &[&seq])?.pop(),
                None => None,
            };
            let unread: i64 = self.conn.query_row(
                // A timer setting is a line in the chat, not an unread message.
                "SELECT (SELECT COUNT(*) FROM unread u CROSS JOIN messages m
                         ON m.peer = u.peer AND m.outgoing = 0 AND m.id = u.id
                         WHERE u.peer = ?1 AND m.group_id IS NULL AND m.flags & ?2 = 0)
                      + (SELECT COUNT(*) FROM messages INDEXED BY messages_unshown
                         WHERE peer = ?1 AND outgoing = 0 AND shown_status <> status
                         AND group_id IS NULL AND flags & ?2 = 0)",
                params![peer, super::expiry::FLAG_TIMER_NOTICE],
                |r| r.get(0),
            )?;
            let contact = self.contact(&peer)?;
            order.push(last_seq.unwrap_or(-1));
            out.push(ChatSummary {
                unread: usize::try_from(unread).unwrap_or(0),
                key_changed: contact
                    .as_ref()
                    .is_some_and(|c| c.changed_identity.is_some()),
                verified: contact.as_ref().is_some_and(|c| c.verified),
                peer,
                last,
                group: None,
                title: None,
                group_status: None,
            });
        }
        for (last_seq, summary) in self.group_summaries()? {
            order.push(last_seq.unwrap_or(-1));
            out.push(summary);
        }
        let mut indexed: Vec<(i64, ChatSummary)> = order.into_iter().zip(out).collect();
        indexed.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.peer.cmp(&b.1.peer)));
        Ok(indexed.into_iter().map(|(_, c)| c).collect())
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) messages with `peer` older than
    /// the cursor `before` (from [`ConversationPage::older`]; `None`: the
    /// newest), oldest first. Nothing is marked.
    pub fn conversation_page(
        &self,
        peer: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<ConversationPage> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(ClientError::Invalid(format!(
                "a page holds 1 to {MAX_PAGE} messages"
            )));
        }
        let before = before.unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(1);
        let seqs: Vec<i64> = {
            let mut stmt = self.conn.prepare(
                "SELECT seq FROM messages WHERE peer = ?1 AND group_id IS NULL AND seq < ?2
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![peer, before, limit + 1], |r| r.get(0))?
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
            "peer = ?1 AND group_id IS NULL AND seq >= ?2 AND seq < ?3",
            &[&peer, &oldest, &before],
        )?;
        Ok(ConversationPage {
            messages,
            older: more.then_some(oldest),
        })
    }

    /// Messages (texts and files, not receipts) waiting in the outbox.
    pub fn waiting_out(&self) -> Result<usize> {
        let n: i64 =
            self.conn
                .query_row("SELECT COUNT(*) FROM outbox WHERE kind <> 2", [], |r| {
                    r.get(0)
                })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::profile::{KeySource, Profile};

    #[test]
    fn the_chat_list_has_each_peer_newest_first_then_contacts_without_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = Profile::create(&tmp.path().join("p"), KeySource::KeyFile).unwrap();
        let store = profile.store();
        store.queue_text("bob", "first to bob").unwrap();
        store.queue_text("carol", "to carol").unwrap();
        store.queue_text("bob", "newest, to bob").unwrap();
        // dave is heard only in a group: no chat of his own. erin is a
        // contact with no messages: listed last.
        store
            .conn
            .execute(
                "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status, group_id)
                 VALUES ('dave', 0, x'0d', x'00', 1, 9, x'01')",
                [],
            )
            .unwrap();
        // Keys that decode: 32 bytes each, the Ed25519 base point.
        let ed = format!("58{}", "66".repeat(31));
        store
            .conn
            .execute(
                &format!(
                    "INSERT INTO contacts(handle, curve25519, ed25519, first_seen_ms)
                     VALUES ('erin', zeroblob(32), x'{ed}', 1)"
                ),
                [],
            )
            .unwrap();
        let chats = store.chat_summaries().unwrap();
        let peers: Vec<&str> = chats.iter().map(|c| c.peer.as_str()).collect();
        assert_eq!(peers, ["bob", "carol", "erin"]);
        assert_eq!(chats[0].last.as_ref().unwrap().text, "newest, to bob");
        assert_eq!(chats[1].last.as_ref().unwrap().text, "to carol");
        assert!(chats[2].last.is_none());
        assert!(chats.iter().all(|c| c.unread == 0));
    }
}
