//! Sending to a group: texts and files encrypted with this device's
//! Megolm sender session.

use super::*;

impl Client {
    /// Send to a conversation: a contact or a group.
    pub async fn send_to(&mut self, to: &Conversation, text: &str) -> Result<SendOutcome> {
        match to {
            Conversation::Contact(peer) => self.send(peer, text).await,
            Conversation::Group(group) => self.send_group(group, text).await,
        }
    }

    /// Queue a group text and try to deliver it right away (an unreachable
    /// server leaves it queued, as for [`Client::send`]).
    pub async fn send_group(&mut self, group: &GroupId, text: &str) -> Result<SendOutcome> {
        self.warned_full.clear();
        let id = self.queue_group_text(group, text)?;
        let (note, warnings) = self.flush_on(None).await?;
        self.send_outcome(&group_key(group), &id, note, warnings)
    }

    /// Encrypt a group text with this device's sender session and queue it
    /// (works offline).
    pub fn queue_group_text(&self, group: &GroupId, text: &str) -> Result<MessageId> {
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
        let id = MessageId::random();
        let envelope = Envelope {
            timer: None,
            id,
            sent_at_ms: now_ms(),
            payload: Payload::GroupText {
                group: *group,
                text: text.to_owned(),
            },
        };
        self.encrypt_for_group(group, &envelope, |store, out| {
            store.queue_group_text(out, text)
        })?;
        Ok(id)
    }

    /// Encrypt `envelope` for the group's current members and write it with
    /// `write` (one transaction in the store): the sender session (new or
    /// rotated when due, its key queued pairwise for every recipient first).
    fn encrypt_for_group(
        &self,
        group: &GroupId,
        envelope: &Envelope,
        write: impl FnOnce(&crate::store::Store, &GroupOutgoing<'_>) -> Result<()>,
    ) -> Result<()> {
        let record = self.member_group(group)?;
        let me = self.my_key();
        let now = now_ms();
        let mut recipients = Vec::new();
        let mut missing = Vec::new();
        for (m, _) in record.state.members() {
            if m.identity.ed25519 == me {
                continue;
            }
            if !self.identity_matches(&m.handle, &m.identity)? {
                // The directory's key for them is not the one the group's
                // admin signed: nothing goes to them until that is settled.
                tracing::warn!(member = %m.handle, "group member's key differs; skipped");
                continue;
            }
            if self.store().contact(&m.handle)?.is_none() {
                missing.push((m.handle.clone(), m.identity));
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
        let out = sender.encrypt(envelope, now)?;
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
        )
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
        let sent_at = self
            .store()
            .message(&peer, true, id)?
            .map(|m| m.sent_at.0)
            .unwrap_or_else(now_ms);
        let envelope = Envelope {
            timer: None,
            id: *id,
            sent_at_ms: sent_at,
            payload: Payload::GroupFile {
                group: *group,
                file: fd.clone(),
            },
        };
        match self.encrypt_for_group(group, &envelope, |store, out| {
            store.group_file_uploaded(out)
        }) {
            Ok(()) => Ok(()),
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
    /// once that many fetched it).
    pub(in crate::client) fn group_file_recipients(&self, group: &GroupId) -> Result<u32> {
        let record = self.member_group(group)?;
        let n = record.state.members().count().saturating_sub(1);
        Ok(u32::try_from(n.max(1)).unwrap_or(u32::MAX))
    }
}
