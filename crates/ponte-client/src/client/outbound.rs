//! The outbox: queueing a message (works offline), encrypting it to the
//! contact's session (claiming a pre-key for the first message), and
//! flushing it to the server.

use super::{emit, is_fatal, unexpected, Client, Display, Event};
use crate::connection::{Connection, REQUEST_TIMEOUT};
use crate::store::{Conversation, IdentityCheck, MessageView, OutboxItem, OutboxKind, Store};
use crate::{ClientError, Report, Result, ServerCode};
use bytes::Bytes;
use ponte_e2e::{Envelope, MessageId, Payload, PublicIdentity, Session};
use ponte_wire::messages::{
    client_frame, key_signing_string, server_frame, validate_handle, ClaimKey, SendGroupMessage,
    SendMessage,
};
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Most sends in flight on one connection: the server's default
/// `max_requests_in_flight` (a server set lower stops reading meanwhile,
/// which only slows the flush).
pub const MAX_SENDS_IN_FLIGHT: usize = 32;

/// The outcome of `send`.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The message as stored (status queued, sent...).
    pub message: MessageView,
    /// Why it is still queued (or failed), if it is.
    pub note: Option<String>,
    /// What the flush found about messages to other contacts, one line
    /// each (another's mailbox is full...); what it found about this
    /// contact's is in `note`. Another contact's identity key change is
    /// not among them: it is said where that contact is concerned
    /// (sending to them, `sync`, `contacts`, `verify`).
    pub warnings: Vec<String>,
    /// This very send found that the contact's identity key changed (and
    /// flagged it): the message is held in the outbox, neither sent nor
    /// lost, and goes out only after `verify --confirm`. Treat it as the
    /// refusal later sends get ([`ClientError::KeyChanged`]).
    pub key_changed: bool,
}

impl Client {
    /// Write a message into the outbox (works offline).
    pub fn queue_text(&self, peer: &str, text: &str) -> Result<MessageId> {
        self.queue_reply(peer, text, None)
    }

    /// [`Client::queue_text`] for a reply: the message quotes `reply_to`,
    /// which must be a message of the conversation with `peer` here.
    pub fn queue_reply(
        &self,
        peer: &str,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        validate_handle(peer)
            .map_err(|e| ClientError::Invalid(format!("recipient {peer:?}: {e}")))?;
        if peer == self.handle {
            return Err(ClientError::Invalid(
                "you cannot send a message to yourself".into(),
            ));
        }
        if text.is_empty() {
            return Err(ClientError::Invalid("empty message".into()));
        }
        if text.len() > ponte_e2e::MAX_TEXT_BYTES {
            return Err(ClientError::Invalid(format!(
                "message too long ({} bytes, at most {})",
                text.len(),
                ponte_e2e::MAX_TEXT_BYTES
            )));
        }
        self.check_not_changed(peer)?;
        self.check_reply(&Conversation::contact(peer), reply_to)?;
        self.store().queue_reply(peer, text, reply_to)
    }

    /// The session to encrypt to `peer` with: the most recent one, or a new
    /// one from a claimed pre-key.
    async fn outbound_session(&mut self, conn: &mut Connection, peer: &str) -> Result<Session> {
        if let Some(s) = self.store().sessions(peer)?.into_iter().next() {
            return Ok(s);
        }
        let body = client_frame::Body::ClaimKey(ClaimKey {
            handle: peer.to_owned(),
        });
        let server_frame::Body::ClaimedKey(claimed) = conn.request(body, REQUEST_TIMEOUT).await?
        else {
            return Err(unexpected("ClaimKey"));
        };
        let keys = claimed
            .identity
            .ok_or_else(|| ClientError::Protocol("claimed key without identity".into()))?;
        let identity = PublicIdentity::from_slices(&keys.curve25519, &keys.ed25519)?;
        let key = claimed
            .key
            .ok_or_else(|| ClientError::Protocol("claimed key missing".into()))?;
        let public_key: [u8; 32] = key
            .public_key
            .as_ref()
            .try_into()
            .map_err(|_| ponte_e2e::Error::InvalidKey)?;
        identity.verify(
            key_signing_string(&key.key_id, &public_key, claimed.fallback).as_bytes(),
            &key.signature,
        )?;
        if self.store().observe_identity(peer, &identity)? == IdentityCheck::Changed {
            return Err(ClientError::KeyChanged(peer.to_owned()));
        }
        let session = self
            .identity
            .create_outbound_session(&identity, &public_key)?;
        self.store().save_session(peer, &session)?;
        Ok(session)
    }

    /// Send everything in the outbox, up to [`MAX_SENDS_IN_FLIGHT`] sends
    /// in flight on the connection (answers matched by request id, in the
    /// order the server commits them), so a long outbox drains in a few
    /// round trips rather than one per message.
    ///
    /// First, once per contact: their identity is checked against the
    /// directory and a session is opened (a pre-key claimed) where none
    /// exists. Items for contacts whose key changed are held (reported
    /// once); a contact unknown to the server fails its messages; one with
    /// no keys yet keeps them queued. Then the sends: a recipient whose
    /// mailbox is full is held for this flush (said once); a temporary
    /// server refusal (`UNAVAILABLE`, e.g. its disk is full, or
    /// `RATE_LIMITED`) starts no further send, waits for the answers in
    /// flight and ends with one warning and [`Flush::Deferred`]: the rest
    /// stays queued, in order, and the connection stays usable for
    /// receiving. A permanent refusal marks that message failed.
    ///
    /// The recipient sees one sender's messages in the order they were
    /// sent: the server assigns mailbox seqs in the order a connection's
    /// sends arrive. (Messages already in flight when a refusal comes may
    /// still be accepted, ahead of the refused one that goes out later;
    /// each carries its send time.)
    pub(super) async fn flush_outbox(
        &mut self,
        conn: &mut Connection,
        events: &mut Display<'_>,
    ) -> Result<Flush> {
        // The sessions are read, advanced and written back in this flush.
        let _keys = self.hold_keys().await?;
        let outbox = self.store().outbox()?;
        let mut blocked = match self.prepare_sessions(conn, &outbox, events).await? {
            Some(blocked) => blocked,
            None => return Ok(Flush::Deferred),
        };
        let mut sessions: HashMap<String, Session> = HashMap::new();
        let mut in_flight: HashMap<u64, usize> = HashMap::new();
        let mut mailbox_full = BTreeSet::new();
        let mut refused: Option<ClientError> = None;
        let mut next = 0;
        loop {
            // The next sends, up to the limit in flight; what is encrypted
            // now is stored (one transaction) before any of it leaves.
            let mut batch: Vec<(usize, Vec<u8>)> = Vec::new();
            let mut fresh = Vec::new();
            while refused.is_none()
                && in_flight.len() + batch.len() < MAX_SENDS_IN_FLIGHT
                && next < outbox.len()
            {
                let index = next;
                next += 1;
                let item = &outbox[index];
                match blocked.get(&item.peer) {
                    Some(&(from, Blocked::Unknown)) if index >= from => {
                        self.store().mark_failed(&item.peer, &item.id)?;
                        continue;
                    }
                    Some(&(from, _)) if index >= from => continue,
                    _ => {}
                }
                if mailbox_full.contains(&item.peer) {
                    continue;
                }
                let ciphertext = match &item.ciphertext {
                    Some(c) => c.clone(),
                    None => match encrypt(self.store(), &mut sessions, item)? {
                        Some(c) => {
                            fresh.push(index);
                            c
                        }
                        // The session vanished (removed by another process
                        // of this profile): held, as for no keys.
                        None => {
                            blocked.insert(item.peer.clone(), (index, Blocked::Held));
                            continue;
                        }
                    },
                };
                batch.push((index, ciphertext));
            }
            if !fresh.is_empty() {
                let touched: BTreeSet<&str> =
                    fresh.iter().map(|&i| outbox[i].peer.as_str()).collect();
                let states: Vec<(&str, &Session)> = touched
                    .into_iter()
                    .filter_map(|p| sessions.get(p).map(|s| (p, s)))
                    .collect();
                let ciphertexts: Vec<(&MessageId, &[u8])> = batch
                    .iter()
                    .filter(|(i, _)| fresh.contains(i))
                    .map(|(i, c)| (&outbox[*i].id, c.as_slice()))
                    .collect();
                self.store().save_encrypted(&states, &ciphertexts)?;
            }
            for (index, ciphertext) in batch {
                let item = &outbox[index];
                let body = match &item.kind {
                    OutboxKind::Group(group) => {
                        // To its recipients that are still members; not at
                        // all once this device is out of the group.
                        match self.store().group_recipients(group, &item.id)? {
                            None => {
                                self.store().mark_failed(&item.peer, &item.id)?;
                                continue;
                            }
                            Some(r) if r.is_empty() => {
                                self.store().mark_sent(&item.peer, &item.id)?;
                                continue;
                            }
                            Some(recipients) => client_frame::Body::SendGroup(SendGroupMessage {
                                message_id: Bytes::copy_from_slice(&item.id.0),
                                group_id: Bytes::copy_from_slice(&group.0),
                                recipients,
                                body: Bytes::from(ciphertext),
                            }),
                        }
                    }
                    _ => client_frame::Body::Send(SendMessage {
                        message_id: Bytes::copy_from_slice(&item.id.0),
                        recipient: item.peer.clone(),
                        body: Bytes::from(ciphertext),
                    }),
                };
                in_flight.insert(conn.start(body).await?, index);
            }
            if in_flight.is_empty() {
                break;
            }
            // Wait for one answer, then take every one already here; the
            // sends they acknowledge are marked in one transaction.
            let mut sent = Vec::new();
            let mut wait = REQUEST_TIMEOUT;
            while let Some((request_id, answer)) = conn.next_response(wait).await? {
                wait = Duration::ZERO;
                // An answer to an abandoned request (none here): ignore it.
                let Some(index) = in_flight.remove(&request_id) else {
                    continue;
                };
                let item = &outbox[index];
                match answer {
                    Ok(server_frame::Body::SendAck(_)) => {
                        sent.push((item.peer.as_str(), &item.id));
                        // An answer to a send that left before the mailbox
                        // was found full says nothing about it now.
                        if !mailbox_full.contains(&item.peer) {
                            self.warned_full.remove(&item.peer);
                        }
                    }
                    Ok(server_frame::Body::GroupSendAck(ack)) => {
                        sent.push((item.peer.as_str(), &item.id));
                        if !ack.refused.is_empty() {
                            let handles: Vec<String> =
                                ack.refused.iter().map(|r| r.handle.clone()).collect();
                            self.store().group_refused(&item.id, &handles)?;
                            emit(
                                events,
                                Event::Warning(format!(
                                    "the server did not take a group message for {} (no such \
                                     user, or a full mailbox)",
                                    handles.join(", ")
                                )),
                            )?;
                        }
                    }
                    Ok(_) => return Err(unexpected("SendMessage")),
                    Err(ClientError::Server {
                        code:
                            code @ (ServerCode::UnknownRecipient
                            | ServerCode::TooLarge
                            | ServerCode::InvalidArgument),
                        detail,
                    }) => {
                        emit(
                            events,
                            Event::Warning(format!(
                                "message to {} refused by the server: {code} ({detail})",
                                item.peer
                            )),
                        )?;
                        self.store().mark_failed(&item.peer, &item.id)?;
                    }
                    Err(ClientError::Server {
                        code: ServerCode::MailboxFull,
                        detail,
                    }) => {
                        mailbox_full.insert(item.peer.clone());
                        if self.warned_full.insert(item.peer.clone()) {
                            emit(
                                events,
                                Event::Warning(format!(
                                    "{}'s mailbox on the server is full ({detail}); kept queued",
                                    item.peer
                                )),
                            )?;
                        }
                    }
                    Err(e) if e.is_temporary_refusal() => {
                        refused.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
                if in_flight.is_empty() {
                    break;
                }
            }
            if wait == REQUEST_TIMEOUT {
                return Err(ClientError::Disconnected(format!(
                    "no response within {REQUEST_TIMEOUT:?}"
                )));
            }
            self.store().mark_all_sent(&sent)?;
        }
        if let Some(e) = refused {
            self.warn_deferred(events, &e)?;
            return Ok(Flush::Deferred);
        }
        self.warned_deferred = None;
        Ok(Flush::Done)
    }

    /// The per-contact round trips before the sends: a directory check for
    /// each known contact with something to encrypt (a changed key must
    /// stop us even when no new session is needed), then a session for
    /// each of them. Returns the contacts whose items cannot go out, with
    /// the outbox index from which they are blocked, or `None` when the
    /// server refused for now (said once; the flush is deferred).
    async fn prepare_sessions(
        &mut self,
        conn: &mut Connection,
        outbox: &[OutboxItem],
        events: &mut Display<'_>,
    ) -> Result<Option<HashMap<String, (usize, Blocked)>>> {
        // Each contact with something to encrypt, at its first such item.
        let mut to_encrypt: Vec<(usize, &str)> = Vec::new();
        for (index, item) in outbox.iter().enumerate() {
            if item.ciphertext.is_none() && !to_encrypt.iter().any(|(_, p)| *p == item.peer) {
                to_encrypt.push((index, &item.peer));
            }
        }
        for &(_, peer) in &to_encrypt {
            if self.store().contact(peer)?.is_none() {
                continue; // first contact: the claim below records it
            }
            match self.lookup_identity(conn, peer).await {
                Ok(identity) => {
                    self.store().observe_identity(peer, &identity)?;
                }
                Err(ClientError::Server { .. }) => {} // handled below
                Err(e) => return Err(e),
            }
        }
        let mut blocked = HashMap::new();
        for (index, peer) in to_encrypt {
            let session = match self.check_not_changed(peer) {
                Err(e) => Err(e),
                Ok(()) => self.outbound_session(conn, peer).await.map(drop),
            };
            let block = match session {
                Ok(()) => continue,
                Err(ClientError::KeyChanged(p)) => {
                    if self.warned_held.insert(p.clone()) {
                        emit(
                            events,
                            Event::Warning(ClientError::KeyChanged(p).to_string()),
                        )?;
                    }
                    Blocked::Held
                }
                Err(ClientError::Server {
                    code: ServerCode::UnknownHandle,
                    detail,
                }) => {
                    emit(
                        events,
                        Event::Warning(format!("{peer}: no such user on the server ({detail})")),
                    )?;
                    Blocked::Unknown
                }
                Err(ClientError::Server {
                    code: ServerCode::NoKeys,
                    detail,
                }) => {
                    emit(
                        events,
                        Event::Warning(format!(
                            "{peer} has no keys on the server yet ({detail}); kept queued"
                        )),
                    )?;
                    Blocked::Held
                }
                Err(e) if e.is_temporary_refusal() => {
                    self.warn_deferred(events, &e)?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            blocked.insert(peer.to_owned(), (index, block));
        }
        Ok(Some(blocked))
    }

    /// Says that the outbox waits because of `e`, unless that was the last
    /// thing said about it.
    fn warn_deferred(&mut self, events: &mut Display<'_>, e: &ClientError) -> Result<()> {
        let text = format!("kept in the outbox: {}", Report(e));
        if self.warned_deferred.as_deref() != Some(text.as_str()) {
            emit(events, Event::Warning(text.clone()))?;
            self.warned_deferred = Some(text);
        }
        Ok(())
    }

    /// Queue a message and try to deliver it to the server right away. If
    /// the server cannot be reached, the message stays queued (not an
    /// error): the outcome says so.
    pub async fn send(&mut self, peer: &str, text: &str) -> Result<SendOutcome> {
        self.send_reply(peer, text, None).await
    }

    /// [`Client::send`] for a reply to (a quote of) `reply_to`.
    pub async fn send_reply(
        &mut self,
        peer: &str,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<SendOutcome> {
        self.warned_full.clear();
        let id = self.queue_reply(peer, text, reply_to)?;
        // Messages held for other contacts whose key changed stay held
        // without a word here: the warning belongs to those contacts.
        let mut silenced = Vec::new();
        for contact in self.store().contacts()? {
            if contact.changed_identity.is_some()
                && contact.handle != peer
                && self.warned_held.insert(contact.handle.clone())
            {
                silenced.push(contact.handle);
            }
        }
        let mut warnings = Vec::new();
        let note = match self.login().await {
            Ok((mut conn, _)) => {
                let mut sink = |e: Event| {
                    if let Event::Warning(w) = e {
                        warnings.push(w);
                    }
                    Ok(())
                };
                match self.flush_outbox(&mut conn, &mut sink).await {
                    Ok(_) => None,
                    Err(e) if is_fatal(&e) => return Err(self.give_up(peer, &id, e)),
                    Err(e) => Some(format!("kept in the outbox: {}", Report(&e))),
                }
            }
            Err(
                e @ (ClientError::Unreachable(_)
                | ClientError::Disconnected(_)
                | ClientError::Closed { .. }),
            ) => Some(format!(
                "server unreachable, message queued for the next connection ({})",
                Report(&e)
            )),
            Err(e) if is_fatal(&e) => return Err(self.give_up(peer, &id, e)),
            // A refusal for now (the server is busy or out of space): it
            // waits in the outbox like an unreachable server's.
            Err(e) => Some(format!("kept in the outbox: {}", Report(&e))),
        };
        for handle in silenced {
            self.warned_held.remove(&handle);
        }
        self.send_outcome(peer, &id, note, warnings)
    }

    /// What a send of message `id` to `peer` reports: the message as
    /// stored, why it is queued or failed (`note` and what the flush said
    /// about this contact's messages), what the flush said about others,
    /// and whether the contact's identity key has changed (queueing
    /// refused a contact already flagged, so a flag now means this send's
    /// directory check or key claim found the change).
    pub(super) fn send_outcome(
        &self,
        peer: &str,
        id: &MessageId,
        note: Option<String>,
        warnings: Vec<String>,
    ) -> Result<SendOutcome> {
        let (about_this, warnings): (Vec<String>, Vec<String>) =
            warnings.into_iter().partition(|w| concerns(w, peer));
        let note = match (note, about_this.is_empty()) {
            (n, true) => n,
            (None, false) => Some(about_this.join("; ")),
            (Some(n), false) => Some(format!("{n}; {}", about_this.join("; "))),
        };
        let message = self
            .store()
            .message(peer, true, id)?
            .ok_or(ClientError::Corrupt("sent message vanished"))?;
        self.store().mark_status_shown(peer, id)?;
        let key_changed = self
            .store()
            .contact(peer)?
            .is_some_and(|c| c.changed_identity.is_some());
        Ok(SendOutcome {
            message,
            note,
            warnings,
            key_changed,
        })
    }

    /// `send` fails with `e`, which retrying does not fix (the server holds
    /// another key, the account is gone, ...): the message just queued is
    /// marked failed, so it never goes out later behind the user's back
    /// (they were told it failed, and will likely type it again).
    fn give_up(&mut self, peer: &str, id: &MessageId, e: ClientError) -> ClientError {
        if let Err(mark) = self.store().mark_failed(peer, id) {
            tracing::warn!("cannot mark the message failed: {mark}");
        }
        if let Err(forget) = self.forget_route_after(&e) {
            tracing::warn!("cannot update the last route: {forget}");
        }
        e
    }
}

/// Whether the flush's warning `w` concerns the messages to `peer` (or the
/// whole outbox, held back by a refusal for now), by the way each such
/// warning in this module starts.
fn concerns(w: &str, peer: &str) -> bool {
    w.starts_with("kept in the outbox: ")
        || w.starts_with(&ClientError::KeyChanged(peer.to_owned()).to_string())
        || [
            format!("{peer}'s mailbox "),
            format!("{peer}: "),
            format!("{peer} has "),
            format!("message to {peer} refused"),
        ]
        .iter()
        .any(|p| w.starts_with(p.as_str()))
}

/// Why a contact's items do not go out in this flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    /// Kept queued: their key changed, or they have no keys yet.
    Held,
    /// The server has no such user: their messages fail.
    Unknown,
}

/// How a flush of the outbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    /// Everything that could go out went out (some items may be held).
    Done,
    /// The server refused for now; the rest waits for a later flush.
    Deferred,
}

/// Encrypt `item` with the contact's latest session (kept, advanced, in
/// `sessions` for the rest of the flush); `None` when there is no session
/// with the contact. The caller stores the ciphertext with the session
/// before it leaves: after a crash or a lost answer the same bytes go
/// again, and the server and the recipient drop the copy by its message id.
fn encrypt(
    store: &Store,
    sessions: &mut HashMap<String, Session>,
    item: &OutboxItem,
) -> Result<Option<Vec<u8>>> {
    let session = match sessions.entry(item.peer.clone()) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => match store.sessions(&item.peer)?.into_iter().next() {
            Some(stored) => e.insert(stored),
            None => return Ok(None),
        },
    };
    let payload = match &item.kind {
        OutboxKind::Text(t) => Payload::Text(t.clone()),
        OutboxKind::ReadReceipt(ids) => Payload::ReadReceipt(ids.clone()),
        OutboxKind::File(fd) => Payload::File(fd.clone()),
        OutboxKind::TimerSetting(t) => Payload::TimerSetting(*t),
        OutboxKind::GroupOp(op) => Payload::GroupOp(op.clone()),
        OutboxKind::GroupLog(ops) => Payload::GroupLog(ops.clone()),
        OutboxKind::SenderKey(key) => Payload::SenderKey(key.clone()),
        // Encrypted (Megolm) when queued: without its ciphertext it is corrupt.
        OutboxKind::Group(_) => {
            return Err(ClientError::Corrupt("group message without ciphertext"))
        }
    };
    let envelope = Envelope {
        timer: item.timer,
        id: item.id,
        sent_at_ms: item.sent_at.0,
        payload,
    };
    let extensions = match item.reply_to {
        Some(to) => ponte_e2e::Extensions::reply(to),
        None => ponte_e2e::Extensions::default(),
    };
    Ok(Some(
        session
            .encrypt(&envelope.encode_with(&extensions)?)
            .to_bytes(),
    ))
}
