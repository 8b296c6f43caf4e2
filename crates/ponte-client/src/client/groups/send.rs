//! Sending to a group: texts, files and timer settings encrypted with
//! this device's Megolm sender session. A reply's quoted id rides in the
//! Megolm plaintext as an envelope extension, as it does pairwise.
//!
//! Before encrypting, every member's identity as this profile trusts it is
//! compared with the one in the admin-signed membership: a change waiting
//! for `verify --confirm` refuses the send ([`ClientError::KeyChanged`]),
//! as a 1:1 send to that contact is refused; a confirmed key that is not
//! the one the membership names gets nothing (the send says so) until an
//! admin adds that member again.

use super::*;
use ponte_e2e::Extensions;

impl Client {
    /// Send to a conversation: a contact or a group.
    pub async fn send_to(&mut self, to: &Conversation, text: &str) -> Result<SendOutcome> {
        self.send_reply_to(to, text, None).await
    }

    /// [`Client::send_to`] for a reply to (a quote of) `reply_to`, a
    /// message of that conversation.
    pub async fn send_reply_to(
        &mut self,
        to: &Conversation,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<SendOutcome> {
        match to {
            Conversation::Contact(peer) => self.send_reply(peer, text, reply_to).await,
            Conversation::Group(group) => self.send_group_reply(group, text, reply_to).await,
        }
    }

    /// Queue a group text and try to deliver it right away (an unreachable
    /// server leaves it queued, as for [`Client::send`]).
    pub async fn send_group(&mut self, group: &GroupId, text: &str) -> Result<SendOutcome> {
        self.send_group_reply(group, text, None).await
    }

    /// [`Client::send_group`] for a reply to (a quote of) `reply_to`, a
    /// message of the group from any member.
    pub async fn send_group_reply(
        &mut self,
        group: &GroupId,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<SendOutcome> {
        self.warned_full.clear();
        let (id, skipped) = self.queue_group_text_skipping(group, text, reply_to)?;
        let (note, mut warnings) = self.flush_on(None).await?;
        warnings.extend(skipped);
        self.send_outcome(&group_key(group), &id, note, warnings)
    }

    /// Set a group's disappearing-messages timer (`None`: off), as any
    /// current member may: a notice in the group's history, the group's
    /// timer here at once, and the setting in the group's Megolm channel
    /// to every member (queued when the server is unreachable).
    pub(in crate::client) async fn set_group_timer(
        &mut self,
        group: &GroupId,
        timer: Option<ponte_e2e::Timer>,
    ) -> Result<SendOutcome> {
        self.warned_full.clear();
        let (id, skipped) = self.queue_group_timer_skipping(group, timer)?;
        let (note, mut warnings) = self.flush_on(None).await?;
        warnings.extend(skipped);
        self.send_outcome(&group_key(group), &id, note, warnings)
    }

    /// Encrypt the setting of `group`'s timer (`None`: off) for the group
    /// and queue it, without sending it: it applies here at once, and the
    /// process holding the connection sends it ([`Client::sent_by_holder`]
    /// reads the outcome).
    pub fn queue_group_timer(
        &self,
        group: &GroupId,
        timer: Option<ponte_e2e::Timer>,
    ) -> Result<MessageId> {
        self.queue_group_timer_skipping(group, timer)
            .map(|(id, _)| id)
    }

    /// [`Client::queue_group_timer`], and why members were skipped.
    fn queue_group_timer_skipping(
        &self,
        group: &GroupId,
        timer: Option<ponte_e2e::Timer>,
    ) -> Result<(MessageId, Vec<String>)> {
        let id = MessageId::random();
        let sent_at = now_ms();
        let envelope = Envelope {
            timer: None,
            id,
            sent_at_ms: sent_at,
            payload: Payload::TimerSetting(ponte_e2e::TimerSetting {
                group: Some(*group),
                timer,
            }),
        };
        let skipped = self.encrypt_for_group(
            group,
            &envelope,
            &Extensions::default(),
            true,
            |store, out| store.queue_group_timer(out, timer, UnixMillis(sent_at)),
        )?;
        Ok((id, skipped))
    }

    /// Encrypt a group text with this device's sender session and queue it
    /// (works offline).
    pub fn queue_group_text(&self, group: &GroupId, text: &str) -> Result<MessageId> {
        self.queue_group_reply(group, text, None)
    }

    /// [`Client::queue_group_text`] for a reply: the message quotes
    /// `reply_to`, which must be a message of the group here (sent by
    /// this device or received from any member).
    pub fn queue_group_reply(
        &self,
        group: &GroupId,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        self.queue_group_text_skipping(group, text, reply_to)
            .map(|(id, _)| id)
    }

    /// [`Client::queue_group_reply`], and why members were skipped.
    fn queue_group_text_skipping(
        &self,
        group: &GroupId,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<(MessageId, Vec<String>)> {
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
        if reply_to.is_some() {
            // Not a member: say that, rather than that the quote is not here.
            self.member_group(group)?;
            self.check_reply(&Conversation::Group(*group), reply_to)?;
        }
        let id = MessageId::random();
        let envelope = Envelope {
            // The group's timer now; the store stamps our copy with it too.
            timer: self.store().timer(&Conversation::Group(*group))?,
            id,
            sent_at_ms: now_ms(),
            payload: Payload::GroupText {
                group: *group,
                text: text.to_owned(),
            },
        };
        let extensions = reply_extensions(reply_to.copied());
        let skipped =
            self.encrypt_for_group(group, &envelope, &extensions, true, |store, out| {
                store.queue_group_text(out, text, reply_to)
            })?;
        Ok((id, skipped))
    }

    /// Encrypt `envelope` (with `extensions` after its body) for the
    /// group's current members and write it with `write` (one transaction
    /// in the store): the sender session (new or
    /// rotated when due, its key queued pairwise for every recipient first).
    /// With `hold`, refused while a member's key change waits for
    /// verification (without: that member is skipped, for a file already
    /// accepted); returns a line for each member skipped (see the module
    /// documentation).
    fn encrypt_for_group(
        &self,
        group: &GroupId,
        envelope: &Envelope,
        extensions: &Extensions,
        hold: bool,
        write: impl FnOnce(&crate::store::Store, &GroupOutgoing<'_>) -> Result<()>,
    ) -> Result<Vec<String>> {
        // The sender session is read, advanced and written back.
        let _keys = self.hold_keys_blocking()?;
        let record = self.member_group(group)?;
        let me = self.my_key();
        let now = now_ms();
        let mut recipients = Vec::new();
        let mut missing = Vec::new();
        let mut skipped = Vec::new();
        for (m, _) in record.state.members() {
            if m.identity.ed25519 == me {
                continue;
            }
            match self.store().contact(&m.handle)? {
                None => missing.push((m.handle.clone(), m.identity)),
                Some(c) if c.changed_identity.is_some() && hold => {
                    // As a 1:1 send is refused: verify first.
                    return Err(ClientError::KeyChanged(m.handle.clone()));
                }
                Some(c) if c.identity != m.identity || c.changed_identity.is_some() => {
                    // The key this profile has for them is not the one the
                    // group's admin signed: nothing goes to them until an
                    // admin adds them again.
                    tracing::warn!(member = %m.handle, "group member's key differs; skipped");
                    skipped.push(format!(
                        "{} was left out of this message to {:?}: their identity key is not \
                         the one the group's admin added (see `ponte group info`)",
                        m.handle,
                        record.state.title()
                    ));
                    continue;
                }
                Some(_) => {}
            }
            recipients.push(m.handle.clone());
        }
        if !missing.is_empty() {
            self.store().write_group(&GroupWrite {
                group: Some((*group, record.status)),
                contacts: missing,
                ..GroupWrite::default()
            })?;
        }
        let (mut sender, mut new_key) = match self.store().group_sender(group)? {
            Some(s) => (s, None),
            None => {
                let s = GroupSender::new(*group, now);
                let key = s.sender_key();
                (s, Some(key))
            }
        };
        if sender.needs_rotation(now) {
            new_key = Some(sender.rotate(now));
        }
        let out = sender.encrypt_with(envelope, extensions, now)?;
        let key = out.rotated.or(new_key);
        let keys = key
            .map(|k| {
                recipients
                    .iter()
                    .map(|r| (r.clone(), OutboxKind::SenderKey(k.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let bytes = out.ciphertext.to_bytes();
        write(
            self.store(),
            &GroupOutgoing {
                group: *group,
                id: envelope.id,
                ciphertext: &bytes,
                recipients: &recipients,
                sender: &sender,
                keys,
            },
        )?;
        Ok(skipped)
    }

    /// The blob of a group file is uploaded: encrypt its descriptor for the
    /// group and queue the message.
    pub(in crate::client) fn group_file_uploaded(
        &self,
        group: &GroupId,
        id: &MessageId,
        fd: &FileDescriptor,
    ) -> Result<()> {
        let peer = group_key(group);
        // Its time, timer and quoted message as written when it was queued.
        let (sent_at, timer, reply_to) = self
            .store()
            .message(&peer, true, id)?
            .map(|m| (m.sent_at.0, m.timer, m.reply_to))
            .unwrap_or_else(|| (now_ms(), None, None));
        let envelope = Envelope {
            timer,
            id: *id,
            sent_at_ms: sent_at,
            payload: Payload::GroupFile {
                group: *group,
                file: fd.clone(),
            },
        };
        let extensions = reply_extensions(reply_to);
        match self.encrypt_for_group(group, &envelope, &extensions, false, |store, out| {
            store.group_file_uploaded(out)
        }) {
            Ok(_skipped) => Ok(()),
            Err(e @ ClientError::Invalid(_)) => {
                // No longer a member: the file never goes out.
                self.store().file_abandoned(&peer, id)?;
                self.store().mark_failed(&peer, id)?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// How many accounts a group file is for (the server deletes the blob
    /// once that many fetched it). Refused, as a group text is, while a
    /// member's key change waits for `verify --confirm`: a file is checked
    /// when it is queued, before it is encrypted and uploaded (one already
    /// queued skips that member when it goes, see [`Self::encrypt_for_group`]).
    pub(in crate::client) fn group_file_recipients(&self, group: &GroupId) -> Result<u32> {
        let record = self.member_group(group)?;
        let me = self.my_key();
        for (m, _) in record.state.members() {
            if m.identity.ed25519 == me {
                continue;
            }
            if let Some(c) = self.store().contact(&m.handle)? {
                if c.changed_identity.is_some() {
                    return Err(ClientError::KeyChanged(m.handle.clone()));
                }
            }
        }
        let n = record.state.members().count().saturating_sub(1);
        Ok(u32::try_from(n.max(1)).unwrap_or(u32::MAX))
    }
}

/// The extensions of a message that replies to `reply_to` (none if `None`).
fn reply_extensions(reply_to: Option<MessageId>) -> Extensions {
    reply_to.map(Extensions::reply).unwrap_or_default()
}
