//! The outbox: queueing a message (works offline), encrypting it to the
//! contact's session (claiming a pre-key for the first message), and
//! flushing it to the server.

use super::{emit, is_fatal, unexpected, Client, Display, Event};
use crate::connection::{Connection, REQUEST_TIMEOUT};
use crate::store::{IdentityCheck, MessageView, OutboxKind};
use crate::{ClientError, Report, Result, ServerCode};
use bytes::Bytes;
use ponte_e2e::{Envelope, MessageId, Payload, PublicIdentity, Session};
use ponte_wire::messages::{
    client_frame, key_signing_string, server_frame, validate_handle, ClaimKey, SendMessage,
};
use std::collections::BTreeSet;

/// The outcome of `send`.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The message as stored (status queued, sent...).
    pub message: MessageView,
    /// Why it is still queued, if it is.
    pub note: Option<String>,
    /// This very send found that the contact's identity key changed (and
    /// flagged it): the message is held in the outbox, neither sent nor
    /// lost, and goes out only after `verify --confirm`. Treat it as the
    /// refusal later sends get ([`ClientError::KeyChanged`]).
    pub key_changed: bool,
}

impl Client {
    /// Write a message into the outbox (works offline).
    pub fn queue_text(&self, peer: &str, text: &str) -> Result<MessageId> {
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
        self.store().queue_text(peer, text)
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

    /// Send everything in the outbox. Items for contacts whose key changed
    /// are held (reported once); a recipient whose mailbox is full is held
    /// for this flush; a temporary server refusal (`UNAVAILABLE`, e.g. its
    /// disk is full, or `RATE_LIMITED`) stops the flush with a warning and
    /// [`Flush::Deferred`]: the rest stays queued, in order, and the
    /// connection stays usable for receiving. A permanent refusal marks the
    /// message failed.
    pub(super) async fn flush_outbox(
        &mut self,
        conn: &mut Connection,
        events: &mut Display<'_>,
    ) -> Result<Flush> {
        let mut held = BTreeSet::new();
        let mut failed_peers = BTreeSet::new();
        let mut unknown_peers = BTreeSet::new();
        let outbox = self.store().outbox()?;
        // Before encrypting to a known contact over an existing session,
        // ask the directory whether their identity is still the one we
        // trust (once per contact and flush): a changed key must stop us
        // even when no new session is needed.
        let to_encrypt: BTreeSet<String> = outbox
            .iter()
            .filter(|i| i.ciphertext.is_none())
            .map(|i| i.peer.clone())
            .collect();
        for peer in to_encrypt {
            if self.store().contact(&peer)?.is_none() {
                continue; // first contact: the claim below records it
            }
            match self.lookup_identity(conn, &peer).await {
                Ok(identity) => {
                    self.store().observe_identity(&peer, &identity)?;
                }
                Err(ClientError::Server { .. }) => {} // handled per item below
                Err(e) => return Err(e),
            }
        }
        for item in outbox {
            if unknown_peers.contains(&item.peer) {
                self.store().mark_failed(&item.peer, &item.id)?;
                continue;
            }
            if held.contains(&item.peer) || failed_peers.contains(&item.peer) {
                continue;
            }
            let ciphertext = match item.ciphertext.clone() {
                Some(c) => c,
                None => {
                    let changed = self.check_not_changed(&item.peer).err();
                    let session = match changed {
                        Some(e) => Err(e),
                        None => self.outbound_session(conn, &item.peer).await,
                    };
                    let mut session = match session {
                        Ok(s) => s,
                        Err(ClientError::KeyChanged(p)) => {
                            if self.warned_held.insert(p.clone()) {
                                emit(
                                    events,
                                    Event::Warning(ClientError::KeyChanged(p.clone()).to_string()),
                                )?;
                            }
                            held.insert(p);
                            continue;
                        }
                        Err(ClientError::Server {
                            code: ServerCode::UnknownHandle,
                            detail,
                        }) => {
                            emit(
                                events,
                                Event::Warning(format!(
                                    "{}: no such user on the server ({detail})",
                                    item.peer
                                )),
                            )?;
                            self.store().mark_failed(&item.peer, &item.id)?;
                            unknown_peers.insert(item.peer.clone());
                            continue;
                        }
                        Err(ClientError::Server {
                            code: ServerCode::NoKeys,
                            detail,
                        }) => {
                            emit(
                                events,
                                Event::Warning(format!(
                                    "{} has no keys on the server yet ({detail}); kept queued",
                                    item.peer
                                )),
                            )?;
                            failed_peers.insert(item.peer.clone());
                            continue;
                        }
                        Err(e) if e.is_temporary_refusal() => {
                            self.warn_deferred(events, &e)?;
                            return Ok(Flush::Deferred);
                        }
                        Err(e) => return Err(e),
                    };
                    let payload = match &item.kind {
                        OutboxKind::Text(t) => Payload::Text(t.clone()),
                        OutboxKind::ReadReceipt(ids) => Payload::ReadReceipt(ids.clone()),
                    };
                    let envelope = Envelope {
                        id: item.id,
                        sent_at_ms: item.sent_at_ms,
                        payload,
                    };
                    let ct = session.encrypt(&envelope.encode()?).to_bytes();
                    self.store()
                        .save_encrypted(&item.id, &item.peer, &session, &ct)?;
                    ct
                }
            };
            let body = client_frame::Body::Send(SendMessage {
                message_id: Bytes::copy_from_slice(&item.id.0),
                recipient: item.peer.clone(),
                body: Bytes::from(ciphertext),
            });
            match conn.request(body, REQUEST_TIMEOUT).await {
                Ok(server_frame::Body::SendAck(_)) => {
                    self.store().mark_sent(&item.peer, &item.id)?
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
                    emit(
                        events,
                        Event::Warning(format!(
                            "{}'s mailbox on the server is full ({detail}); kept queued",
                            item.peer
                        )),
                    )?;
                    failed_peers.insert(item.peer.clone());
                }
                Err(e) if e.is_temporary_refusal() => {
                    self.warn_deferred(events, &e)?;
                    return Ok(Flush::Deferred);
                }
                Err(e) => return Err(e),
            }
        }
        self.warned_deferred = None;
        Ok(Flush::Done)
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
        let id = self.queue_text(peer, text)?;
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
        let note = match (note, warnings.is_empty()) {
            (n, true) => n,
            (None, false) => Some(warnings.join("; ")),
            (Some(n), false) => Some(format!("{n}; {}", warnings.join("; "))),
        };
        let message = self
            .store()
            .message(peer, true, &id)?
            .ok_or(ClientError::Corrupt("sent message vanished"))?;
        self.store().mark_status_shown(peer, &id)?;
        // queue_text refused a contact already flagged, so a flag now means
        // this send's directory check (or key claim) found the change.
        let key_changed = self
            .store()
            .contact(peer)?
            .is_some_and(|c| c.changed_identity.is_some());
        Ok(SendOutcome {
            message,
            note,
            key_changed,
        })
    }

    /// `send` fails with `e`, which retrying does not fix (the server holds
    /// another key, the account is gone, ...): the message just queued is
    /// marked failed, so it never goes out later behind the user's back
    /// (they were told it failed, and will likely type it again).
    fn give_up(&self, peer: &str, id: &MessageId, e: ClientError) -> ClientError {
        if let Err(mark) = self.store().mark_failed(peer, id) {
            tracing::warn!("cannot mark the message failed: {mark}");
        }
        e
    }
}

/// How a flush of the outbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    /// Everything that could go out went out (some items may be held).
    Done,
    /// The server refused for now; the rest waits for a later flush.
    Deferred,
}
