//! History and the outbox: queueing, encrypting and the ticks of outgoing
//! messages; committing incoming ones (deduplicated, with their read
//! receipts); what is new to show.

use super::groups::{self, FLAG_GROUP_NOTICE};
use super::{
    aad, row_key, save_identity, save_session, Incoming, IncomingContent, MessageView, OutboxItem,
    OutboxKind, Status, Store, UnixMillis, Update, FLAG_UNVERIFIED_KEY_CHANGE,
};
use crate::atrest::ProfileKey;
use crate::{ClientError, Result};
use ponte_e2e::group::{GroupId, SenderKey, SignedOp};
use ponte_e2e::{MessageId, Session};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

impl Store {
    // ------------------------------------------------------------ outgoing

    /// Write a text message: history (status queued) and outbox, atomically.
    pub fn queue_text(&self, peer: &str, text: &str) -> Result<MessageId> {
        self.queue_reply(peer, text, None)
    }

    /// [`Store::queue_text`] for a message that replies to (quotes)
    /// `reply_to` in the same conversation.
    pub fn queue_reply(
        &self,
        peer: &str,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        let id = MessageId::random();
        let now = UnixMillis::now();
        let tx = self.conn.unchecked_transaction()?;
        let body = self.key.seal(
            &aad("messages", "body", &row_key(peer, true, &id)),
            text.as_bytes(),
        );
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status, shown_status,
             reply_to) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?5, ?6)",
            params![
                peer,
                id.0.to_vec(),
                body,
                now,
                Status::Queued.to_i64(),
                reply_to.map(|r| r.0.to_vec())
            ],
        )?;
        insert_outbox(
            &tx,
            &self.key,
            &id,
            peer,
            &OutboxKind::Text(text.into()),
            now,
        )?;
        super::expiry::stamp_outgoing(&tx, peer, &id, now)?;
        tx.commit()?;
        Ok(id)
    }

    /// One message, by peer, direction and id.
    pub fn message(
        &self,
        peer: &str,
        outgoing: bool,
        id: &MessageId,
    ) -> Result<Option<MessageView>> {
        let out = i64::from(outgoing);
        let id_bytes = id.0.to_vec();
        let mut views = select_views(
            &self.conn,
            &self.key,
            "peer = ?1 AND outgoing = ?2 AND id = ?3",
            &[&peer, &out, &id_bytes],
        )?;
        Ok(views.pop())
    }

    /// Mark an outgoing message's current status as shown (the caller printed it).
    pub fn mark_status_shown(&self, peer: &str, id: &MessageId) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET shown_status = status WHERE peer = ?1 AND outgoing = 1 AND id = ?2",
            params![peer, id.0.to_vec()],
        )?;
        Ok(())
    }

    /// Whether there are read receipts or texts waiting to go out.
    pub fn outbox_len(&self) -> Result<usize> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// How many of the outbox entries `ids` are still waiting (not sent,
    /// and not given up), counting no further than `up_to`. The entries
    /// are looked at from the last: those go out last.
    pub fn outbox_waiting(&self, ids: &[MessageId], up_to: usize) -> Result<usize> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM outbox WHERE id = ?1")?;
        let mut n = 0;
        for id in ids.iter().rev() {
            if n >= up_to {
                break;
            }
            let found: i64 = stmt.query_row([id.0.to_vec()], |r| r.get(0))?;
            n += usize::from(found > 0);
        }
        Ok(n)
    }

    /// Everything waiting in the outbox, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxItem>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, peer, kind, payload, sent_at_ms, ciphertext,
             (SELECT timer_ms FROM messages m
              WHERE m.peer = outbox.peer AND m.outgoing = 1 AND m.id = outbox.id),
             (SELECT reply_to FROM messages m
              WHERE m.peer = outbox.peer AND m.outgoing = 1 AND m.id = outbox.id)
             FROM outbox ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, UnixMillis>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<Vec<u8>>>(7)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, peer, kind, payload, sent_at, ciphertext, timer_ms, reply_to) in rows {
            let id = MessageId::from_slice(&id).ok_or(ClientError::Corrupt("outbox id"))?;
            let plain = self
                .key
                .open(&aad("outbox", "payload", &id.0), &payload)
                .map_err(|_| ClientError::Corrupt("outbox payload"))?;
            let kind = match kind {
                1 => OutboxKind::Text(
                    String::from_utf8(plain).map_err(|_| ClientError::Corrupt("outbox text"))?,
                ),
                3 => OutboxKind::File(
                    ponte_e2e::FileDescriptor::from_bytes(&plain)
                        .map_err(|_| ClientError::Corrupt("outbox file"))?,
                ),
                4 => OutboxKind::GroupOp(Box::new(
                    SignedOp::decode(&plain)
                        .map_err(|_| ClientError::Corrupt("outbox group op"))?,
                )),
                5 => {
                    let (group, key) =
                        split_group(&plain).ok_or(ClientError::Corrupt("outbox sender key"))?;
                    OutboxKind::SenderKey(
                        SenderKey::from_parts(group, key)
                            .map_err(|_| ClientError::Corrupt("outbox sender key"))?,
                    )
                }
                7 => OutboxKind::GroupLog(
                    decode_ops(&plain).ok_or(ClientError::Corrupt("outbox group log"))?,
                ),
                6 => OutboxKind::Group(
                    split_group(&plain)
                        .filter(|(_, rest)| rest.is_empty())
                        .ok_or(ClientError::Corrupt("outbox group message"))?
                        .0,
                ),
                8 => OutboxKind::TimerSetting(
                    ponte_e2e::TimerSetting::from_bytes(&plain)
                        .map_err(|_| ClientError::Corrupt("outbox timer setting"))?,
                ),
                _ => OutboxKind::ReadReceipt(
                    plain
                        .chunks_exact(16)
                        .filter_map(MessageId::from_slice)
                        .collect(),
                ),
            };
            out.push(OutboxItem {
                id,
                peer,
                kind,
                sent_at,
                ciphertext,
                timer: super::expiry::timer_from_ms(timer_ms),
                reply_to: reply_to.as_deref().and_then(MessageId::from_slice),
            });
        }
        Ok(out)
    }

    /// Store the ciphertexts of outbox items together with the states of
    /// the sessions that produced them (one transaction: a crash can never
    /// leave a ciphertext whose ratchet step is lost, or the reverse).
    pub fn save_encrypted(
        &self,
        sessions: &[(&str, &Session)],
        ciphertexts: &[(&MessageId, &[u8])],
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        for (peer, session) in sessions {
            save_session(&tx, &self.key, peer, session)?;
        }
        for (id, ciphertext) in ciphertexts {
            tx.execute(
                "UPDATE outbox SET ciphertext = ?2 WHERE id = ?1",
                params![id.0.to_vec(), ciphertext],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Save a new outbound session together with the identity (unchanged for
    /// outbound, but kept symmetric with inbound).
    pub fn save_session(&self, peer: &str, session: &Session) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        save_session(&tx, &self.key, peer, session)?;
        tx.commit()?;
        Ok(())
    }

    /// The server made an outbox item durable: remove it, tick "sent".
    pub fn mark_sent(&self, peer: &str, id: &MessageId) -> Result<()> {
        self.mark_all_sent(&[(peer, id)])
    }

    /// [`Store::mark_sent`] for several items, in one transaction.
    pub fn mark_all_sent(&self, items: &[(&str, &MessageId)]) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        for (peer, id) in items {
            tx.execute("DELETE FROM outbox WHERE id = ?1", [id.0.to_vec()])?;
            advance(&tx, peer, id, Status::Sent)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drop an outbox item the server refused for good (unknown recipient,
    /// too large): it leaves the outbox and the message is marked failed.
    pub fn mark_failed(&self, peer: &str, id: &MessageId) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM outbox WHERE id = ?1", [id.0.to_vec()])?;
        tx.execute(
            "UPDATE messages SET status = ?4 WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND status < ?3",
            params![peer, id.0.to_vec(), Status::Delivered.to_i64(), Status::Failed.to_i64()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The recipient's device acknowledged (server receipt): "delivered".
    pub fn mark_delivered(&self, peer: &str, id: &MessageId) -> Result<()> {
        advance(&self.conn, peer, id, Status::Delivered)
    }

    /// The server expired an undelivered message.
    pub fn mark_expired(&self, peer: &str, id: &MessageId) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET status = ?4 WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND status < ?3",
            params![peer, id.0.to_vec(), Status::Delivered.to_i64(), Status::Expired.to_i64()],
        )?;
        Ok(())
    }

    // ------------------------------------------------------------ incoming

    /// Whether an incoming end-to-end message id from `peer` was processed.
    pub fn seen(&self, peer: &str, id: &MessageId) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM inbox_seen WHERE peer = ?1 AND id = ?2",
                params![peer, id.0.to_vec()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Commit one decrypted incoming message atomically: the session (and
    /// the identity when an inbound session used up a one-time key), the dedup
    /// marker, and its effect (a text into history, or read ticks). Returns
    /// false if it had already been processed (nothing changed).
    pub fn commit_incoming(&self, incoming: &Incoming<'_>) -> Result<bool> {
        self.commit_incoming_with_timer(incoming, None)
    }

    /// [`Store::commit_incoming`] for a message that carries a
    /// disappearing timer in its envelope: its clock starts when it is
    /// first displayed.
    pub fn commit_incoming_with_timer(
        &self,
        incoming: &Incoming<'_>,
        timer: Option<ponte_e2e::Timer>,
    ) -> Result<bool> {
        self.commit_incoming_with(incoming, timer, None)
    }

    /// [`Store::commit_incoming_with_timer`] for a message that may reply
    /// to (quote) another of the same conversation: `reply_to`, kept for
    /// a text or a file.
    pub fn commit_incoming_with(
        &self,
        incoming: &Incoming<'_>,
        timer: Option<ponte_e2e::Timer>,
        reply_to: Option<MessageId>,
    ) -> Result<bool> {
        let tx = self.conn.unchecked_transaction()?;
        if let Some(identity) = incoming.identity {
            save_identity(&tx, &self.key, identity)?;
        }
        save_session(&tx, &self.key, incoming.peer, incoming.session)?;
        let fresh = tx.execute(
            "INSERT OR IGNORE INTO inbox_seen(peer, id) VALUES (?1, ?2)",
            params![incoming.peer, incoming.id.0.to_vec()],
        )? == 1;
        let mut evicted = false;
        if fresh {
            match incoming.content {
                IncomingContent::Text(text) => {
                    let body = self.key.seal(
                        &aad(
                            "messages",
                            "body",
                            &row_key(incoming.peer, false, &incoming.id),
                        ),
                        text.as_bytes(),
                    );
                    tx.execute(
                        "INSERT OR IGNORE INTO messages(peer, outgoing, id, body, sent_at_ms,
                         received_at_ms, status, flags) VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            incoming.peer,
                            incoming.id.0.to_vec(),
                            body,
                            incoming.sent_at,
                            UnixMillis::now(),
                            Status::Received.to_i64(),
                            if incoming.key_changed {
                                FLAG_UNVERIFIED_KEY_CHANGE
                            } else {
                                0
                            },
                        ],
                    )?;
                }
                IncomingContent::ReadReceipt(ids) => {
                    for id in ids {
                        advance(&tx, incoming.peer, id, Status::Read)?;
                    }
                    groups::group_read(&tx, incoming.peer, ids)?;
                }
                IncomingContent::Group(change) => {
                    evicted = groups::write_group(&tx, &self.key, change)?.0;
                }
                IncomingContent::File(fd) => {
                    insert_message(&tx, &self.key, incoming, &fd.caption)?;
                    super::files::insert_file(
                        &tx,
                        &self.key,
                        incoming.peer,
                        false,
                        &incoming.id,
                        fd,
                        super::FileState::Pending,
                        None,
                    )?;
                }
                IncomingContent::TimerSetting(setting) => {
                    super::expiry::commit_setting(&tx, &self.key, incoming, setting)?;
                }
            }
            super::expiry::stamp_incoming(&tx, incoming, timer)?;
            if let (Some(to), IncomingContent::Text(_) | IncomingContent::File(_)) =
                (reply_to, &incoming.content)
            {
                tx.execute(
                    "UPDATE messages SET reply_to = ?3 WHERE peer = ?1 AND outgoing = 0 AND id = ?2",
                    params![incoming.peer, incoming.id.0.to_vec(), to.0.to_vec()],
                )?;
            }
        }
        tx.commit()?;
        if evicted {
            self.forget_cached_groups();
        }
        Ok(fresh)
    }

    // ------------------------------------------------------------ display

    /// What is new since the last call: incoming messages never shown and
    /// outgoing messages whose tick changed. Incoming messages returned here
    /// count as displayed: they are marked so and a read receipt is queued
    /// for each sender (exactly once on screen).
    pub fn take_updates(&self) -> Result<Vec<Update>> {
        let tx = self.conn.unchecked_transaction()?;
        let views = select_views(&tx, &self.key, "shown_status <> status", &[])?;
        let mut updates = Vec::with_capacity(views.len());
        let mut displayed = Vec::new();
        for v in views {
            if v.outgoing {
                updates.push(Update::Status(v));
            } else {
                // A group notice is not a message: no read receipt.
                if !v.group_notice {
                    displayed.push((v.peer.clone(), v.id));
                }
                updates.push(Update::Message(v));
            }
        }
        tx.execute(
            "UPDATE messages SET shown_status = status WHERE shown_status <> status",
            [],
        )?;
        super::expiry::start_clocks(&tx, &displayed)?;
        queue_receipts(&tx, &self.key, &displayed)?;
        tx.commit()?;
        Ok(updates)
    }

    /// What is new, as [`Store::take_updates`] finds it, but without marking
    /// anything: the caller displays the updates, then passes the ones it
    /// really displayed to [`Store::mark_shown`]. An update that could not
    /// be displayed (stdout closed, a crash before printing) is therefore
    /// found again by the next call.
    pub fn unshown_updates(&self) -> Result<Vec<Update>> {
        let views = select_views(&self.conn, &self.key, "shown_status <> status", &[])?;
        Ok(views
            .into_iter()
            .map(|v| {
                if v.outgoing {
                    Update::Status(v)
                } else {
                    Update::Message(v)
                }
            })
            .collect())
    }

    /// Record that these messages were displayed with the status each view
    /// carries: an outgoing tick is no longer new, and an incoming message
    /// displayed for the first time is marked so and gets its read receipt
    /// queued (once, however often it is displayed).
    pub fn mark_shown<'a>(&self, views: impl IntoIterator<Item = &'a MessageView>) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let mut displayed = Vec::new();
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
            // An unreadable message was not read, and a group notice is
            // not a message: no read receipt.
            if changed > 0 && !v.outgoing && !v.unreadable && !v.group_notice {
                displayed.push((v.peer.clone(), v.id));
            }
        }
        super::expiry::start_clocks(&tx, &displayed)?;
        queue_receipts(&tx, &self.key, &displayed)?;
        tx.commit()?;
        Ok(())
    }

    /// The conversation with `peer`, oldest first, without marking anything
    /// (see [`Store::history`] for the marking variant). Group messages
    /// from `peer` are in the group's conversation, not here.
    pub fn conversation(&self, peer: &str) -> Result<Vec<MessageView>> {
        select_views(
            &self.conn,
            &self.key,
            "peer = ?1 AND group_id IS NULL",
            &[&peer],
        )
    }

    /// A message of `with` by id, either way (what a reply quotes).
    pub fn find_message(
        &self,
        with: &super::Conversation,
        id: &MessageId,
    ) -> Result<Option<MessageView>> {
        let id = id.0.to_vec();
        let mut views = match with {
            super::Conversation::Contact(peer) => select_views(
                &self.conn,
                &self.key,
                "peer = ?1 AND group_id IS NULL AND id = ?2",
                &[peer, &id],
            )?,
            super::Conversation::Group(g) => {
                let gid = g.0.to_vec();
                select_views(
                    &self.conn,
                    &self.key,
                    "group_id = ?1 AND id = ?2",
                    &[&gid, &id],
                )?
            }
        };
        Ok(views.pop())
    }

    /// The message `v` replies to, if it replies to one that is here.
    pub fn quoted(&self, v: &MessageView) -> Result<Option<MessageView>> {
        let Some(to) = &v.reply_to else {
            return Ok(None);
        };
        let with = match &v.group {
            Some(g) => super::Conversation::Group(*g),
            None => super::Conversation::Contact(v.peer.clone()),
        };
        self.find_message(&with, to)
    }

    /// A group's conversation (messages both ways and changes to the
    /// group), oldest first, without marking anything.
    pub fn group_conversation(&self, group: &GroupId) -> Result<Vec<MessageView>> {
        let id = group.0.to_vec();
        select_views(&self.conn, &self.key, "group_id = ?1", &[&id])
    }

    /// The conversation with `peer`, oldest first. Printing it counts as
    /// displaying it: unseen incoming messages are marked displayed and read
    /// receipts are queued for them.
    pub fn history(&self, peer: &str) -> Result<Vec<MessageView>> {
        let tx = self.conn.unchecked_transaction()?;
        let views = select_views(&tx, &self.key, "peer = ?1 AND group_id IS NULL", &[&peer])?;
        let unseen: Vec<(String, MessageId)> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM messages WHERE peer = ?1 AND outgoing = 0 AND shown_status <> status
                 AND group_id IS NULL",
            )?;
            let ids: Vec<Vec<u8>> = stmt
                .query_map([peer], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            ids.iter()
                .filter_map(|i| MessageId::from_slice(i))
                // An unreadable message was not read: no read receipt.
                .filter(|i| {
                    !views
                        .iter()
                        .any(|v| v.unreadable && !v.outgoing && v.id == *i)
                })
                .map(|i| (peer.to_owned(), i))
                .collect()
        };
        tx.execute(
            "UPDATE messages SET shown_status = status WHERE peer = ?1 AND outgoing = 0
             AND group_id IS NULL",
            [peer],
        )?;
        super::expiry::start_clocks(&tx, &unseen)?;
        queue_receipts(&tx, &self.key, &unseen)?;
        tx.commit()?;
        Ok(views)
    }
}

/// The history row of an incoming message with `text`.
fn insert_message(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    incoming: &Incoming<'_>,
    text: &str,
) -> Result<()> {
    let body = key.seal(
        &aad(
            "messages",
            "body",
            &row_key(incoming.peer, false, &incoming.id),
        ),
        text.as_bytes(),
    );
    tx.execute(
        "INSERT OR IGNORE INTO messages(peer, outgoing, id, body, sent_at_ms,
         received_at_ms, status, flags) VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            incoming.peer,
            incoming.id.0.to_vec(),
            body,
            incoming.sent_at,
            UnixMillis::now(),
            Status::Received.to_i64(),
            if incoming.key_changed {
                FLAG_UNVERIFIED_KEY_CHANGE
            } else {
                0
            },
        ],
    )?;
    Ok(())
}

pub(super) fn insert_outbox(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    id: &MessageId,
    peer: &str,
    kind: &OutboxKind,
    sent_at: UnixMillis,
) -> Result<()> {
    let (kind_code, plain) = match kind {
        OutboxKind::Text(t) => (1, t.as_bytes().to_vec()),
        OutboxKind::ReadReceipt(ids) => (2, ids.iter().flat_map(|i| i.0).collect::<Vec<u8>>()),
        OutboxKind::File(fd) => (3, fd.to_bytes()?),
        OutboxKind::TimerSetting(t) => (8, t.to_bytes()),
        OutboxKind::GroupOp(op) => (4, op.encode().map_err(ponte_e2e::Error::GroupOp)?),
        OutboxKind::SenderKey(k) => (5, [&k.group.0[..], k.key_bytes()].concat()),
        OutboxKind::Group(g) => (6, g.0.to_vec()),
        OutboxKind::GroupLog(ops) => (7, encode_ops(ops)?),
    };
    let payload = key.seal(&aad("outbox", "payload", &id.0), &plain);
    tx.execute(
        "INSERT INTO outbox(id, peer, kind, payload, sent_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id.0.to_vec(), peer, kind_code, payload, sent_at],
    )?;
    Ok(())
}

/// Ops as a u16 length before each (how the outbox keeps a group log).
fn encode_ops(ops: &[SignedOp]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for op in ops {
        let bytes = op.encode().map_err(ponte_e2e::Error::GroupOp)?;
        // Bounded by MAX_OP_BYTES (every field of an encodable op is capped).
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

fn decode_ops(mut bytes: &[u8]) -> Option<Vec<SignedOp>> {
    let mut ops = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_at_checked(2)?;
        let len = u16::from_be_bytes(len.try_into().ok()?) as usize;
        let (op, rest) = rest.split_at_checked(len)?;
        ops.push(SignedOp::decode(op).ok()?);
        bytes = rest;
    }
    Some(ops)
}

/// A group id (16 bytes) and what follows it.
fn split_group(bytes: &[u8]) -> Option<(GroupId, &[u8])> {
    let (id, rest) = bytes.split_at_checked(16)?;
    Some((GroupId(id.try_into().ok()?), rest))
}

/// Queue one read receipt per peer (chunked to the envelope's cap),
/// merged with the peer's receipts still waiting unencrypted.
pub(super) fn queue_receipts(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    displayed: &[(String, MessageId)],
) -> Result<()> {
    let mut by_peer: std::collections::BTreeMap<&str, Vec<MessageId>> = Default::default();
    for (peer, id) in displayed {
        by_peer.entry(peer.as_str()).or_default().push(*id);
    }
    for (peer, mut ids) in by_peer {
        // Merge with receipts for this peer that have not been encrypted
        // yet, so a burst of displayed messages costs one receipt.
        let pending: Vec<(i64, Vec<u8>, Vec<u8>)> = {
            let mut stmt = tx.prepare(
                "SELECT seq, id, payload FROM outbox
                 WHERE peer = ?1 AND kind = 2 AND ciphertext IS NULL",
            )?;
            let rows = stmt
                .query_map([peer], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        let mut earlier = Vec::new();
        for (seq, id, payload) in pending {
            let Some(plain) = key.open(&aad("outbox", "payload", &id), &payload).ok() else {
                continue; // leave an unreadable row alone
            };
            earlier.extend(plain.chunks_exact(16).filter_map(MessageId::from_slice));
            tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        }
        earlier.append(&mut ids);
        let ids = earlier;
        for chunk in ids.chunks(ponte_e2e::envelope::MAX_RECEIPT_IDS) {
            insert_outbox(
                tx,
                key,
                &MessageId::random(),
                peer,
                &OutboxKind::ReadReceipt(chunk.to_vec()),
                UnixMillis::now(),
            )?;
        }
    }
    Ok(())
}

fn advance(conn: &Connection, peer: &str, id: &MessageId, to: Status) -> Result<()> {
    conn.execute(
        "UPDATE messages SET status = ?4 WHERE peer = ?1 AND outgoing = 1 AND id = ?2
         AND (status < ?4 OR status = ?3)",
        params![peer, id.0.to_vec(), Status::Expired.to_i64(), to.to_i64()],
    )?;
    Ok(())
}

pub(super) fn select_views(
    conn: &Connection,
    key: &ProfileKey,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<MessageView>> {
    let sql = format!(
        "SELECT peer, outgoing, id, body, sent_at_ms, status, flags, timer_ms, expires_at_ms,
                group_id, reply_to
         FROM messages WHERE {filter} ORDER BY seq"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? != 0,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, UnixMillis>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<UnixMillis>>(8)?,
                r.get::<_, Option<Vec<u8>>>(9)?,
                r.get::<_, Option<Vec<u8>>>(10)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    let mut titles: std::collections::HashMap<GroupId, Option<String>> = Default::default();
    for (peer, outgoing, id, body, sent_at, status, flags, timer_ms, expires_at, group, reply_to) in
        rows
    {
        let group = group
            .map(|g| g.try_into().map(GroupId))
            .transpose()
            .map_err(|_| ClientError::Corrupt("message group id"))?;
        let id = MessageId::from_slice(&id).ok_or(ClientError::Corrupt("message id"))?;
        // A row whose text does not open stays closed (no text) and is
        // marked, so one damaged row does not hide the others.
        let text = key
            .open(
                &aad("messages", "body", &row_key(&peer, outgoing, &id)),
                &body,
            )
            .ok()
            .and_then(|t| String::from_utf8(t).ok());
        let (timer, notice) =
            super::expiry::view_parts(flags, timer_ms, text.as_deref().unwrap_or(""));
        // A notice's body is what it says, not text; one that does not
        // parse is unreadable.
        let unreadable_body = match notice {
            Some(None) => text.is_none(),
            Some(Some(_)) => false,
            None => true,
        };
        let text = text.filter(|_| notice == Some(None));
        // A file row that does not open marks the message the same way.
        let (file, file_unreadable) = match super::files::summary(conn, key, &peer, outgoing, &id) {
            Ok(file) => (file, false),
            Err(ClientError::Corrupt(_)) => (None, true),
            Err(e) => return Err(e),
        };
        out.push(MessageView {
            id,
            peer,
            outgoing,
            unreadable: unreadable_body || file_unreadable,
            text: text.unwrap_or_default(),
            sent_at,
            status: Status::from_i64(status),
            key_changed: flags & FLAG_UNVERIFIED_KEY_CHANGE != 0,
            file,
            timer,
            expires_at,
            notice: notice.flatten(),
            ticks: match group {
                Some(_) if outgoing => Some(groups::ticks(conn, &id)?),
                _ => None,
            },
            group_title: match group {
                Some(g) => match titles.get(&g) {
                    Some(t) => t.clone(),
                    None => {
                        let t = groups::title(conn, key, &g)?;
                        titles.insert(g, t.clone());
                        t
                    }
                },
                None => None,
            },
            group,
            group_notice: flags & FLAG_GROUP_NOTICE != 0,
            reply_to: reply_to.as_deref().and_then(MessageId::from_slice),
        });
    }
    Ok(out)
}
