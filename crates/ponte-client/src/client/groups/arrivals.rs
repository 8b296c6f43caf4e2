//! What arrives for a group: ops, logs and sender keys pairwise, group
//! messages from the server's fan-out, and what waits in `group_pending`.

use super::*;

impl Client {
    /// A group op or sender key that arrived pairwise from `sender`: the
    /// write to commit with the Olm message that carried it, a warning for
    /// the user, and the group to retry pending items for once committed.
    pub(in crate::client) fn pairwise_group(
        &self,
        sender: &str,
        payload: &Payload,
        key_changed: bool,
    ) -> Result<(GroupWrite, Option<String>, Option<GroupId>)> {
        let mut write = GroupWrite::default();
        if let Payload::GroupLog(ops) = payload {
            return self.take_log(sender, ops);
        }
        let (group, taken) = match payload {
            Payload::GroupOp(op) => (op.group, self.take_op(op, &mut write)?),
            Payload::SenderKey(key) => (
                key.group,
                self.take_sender_key(sender, key, key_changed, &mut write)?,
            ),
            _ => return Ok((write, None, None)),
        };
        Ok(match taken {
            Taken::Applied => (write, None, Some(group)),
            Taken::NotYet => {
                let (kind, bytes) = match payload {
                    Payload::GroupOp(op) => (
                        PendingKind::Op,
                        op.encode().map_err(ponte_e2e::Error::GroupOp)?,
                    ),
                    Payload::SenderKey(key) => (PendingKind::SenderKey, key.key_bytes().to_vec()),
                    _ => return Ok((GroupWrite::default(), None, None)),
                };
                write
                    .pending_add
                    .push((group, sender.to_owned(), kind, bytes));
                (write, None, None)
            }
            Taken::Refused(why) => (GroupWrite::default(), Some(why), None),
            Taken::Duplicate | Taken::Dropped => (GroupWrite::default(), None, None),
        })
    }

    /// A group's log (or part of it) from `sender`: every op applied in
    /// order in one write; from the first that does not follow yet, the
    /// rest wait; one that does not check is refused with the rest.
    fn take_log(
        &self,
        sender: &str,
        ops: &[SignedOp],
    ) -> Result<(GroupWrite, Option<String>, Option<GroupId>)> {
        let mut write = GroupWrite::default();
        let Some(group) = ops.first().map(|op| op.group) else {
            return Ok((write, None, None));
        };
        if ops.iter().any(|op| op.group != group) {
            return Ok((
                write,
                Some(format!(
                    "refused a group log from {sender}: it mixes groups"
                )),
                None,
            ));
        }
        let mut record = self.store().group(&group)?;
        let mut applied = false;
        for (at, op) in ops.iter().enumerate() {
            let Some(rec) = &mut record else {
                let state = match op.op {
                    GroupOp::Create { .. } => GroupState::from_create(op),
                    _ => Err(OpError::ChainMismatch),
                };
                match state {
                    Ok(state) => {
                        write.ops.push((1, op.clone()));
                        record = Some(GroupRecord {
                            status: GroupStatus::Joining,
                            state,
                            ops: vec![op.clone()],
                        });
                        applied = true;
                        continue;
                    }
                    Err(OpError::ChainMismatch) => {
                        self.hold(&mut write, sender, &ops[at..])?;
                        break;
                    }
                    Err(e) => {
                        return Ok((
                            GroupWrite::default(),
                            Some(format!(
                                "refused a change to group g:{} from {sender}: {e}",
                                group.to_hex()
                            )),
                            None,
                        ))
                    }
                }
            };
            let hash = op.hash().map_err(ponte_e2e::Error::GroupOp)?;
            if rec.has_op(&hash) {
                continue;
            }
            match rec.state.apply(op) {
                Ok(after) => {
                    let mut status = rec.status;
                    self.effects(&rec.state, &after, op, false, &mut status, &mut write)?;
                    write.ops.push((after.version(), op.clone()));
                    rec.status = status;
                    rec.state = after;
                    rec.ops.push(op.clone());
                    applied = true;
                }
                Err(OpError::ChainMismatch) if !rec.has_op(&op.prev) => {
                    self.hold(&mut write, sender, &ops[at..])?;
                    break;
                }
                Err(e) => {
                    let warning = format!(
                        "refused a change to group {:?} (g:{}): {e}",
                        rec.state.title(),
                        group.to_hex()
                    );
                    return Ok((write_if(applied, write, rec), Some(warning), None));
                }
            }
        }
        Ok(match record {
            Some(rec) if applied => {
                write.group = Some((group, rec.status));
                write.title = Some(rec.state.title().to_owned());
                (write, None, Some(group))
            }
            _ => (write, None, None),
        })
    }

    /// Hold `ops` until what they follow arrives.
    fn hold(&self, write: &mut GroupWrite, sender: &str, ops: &[SignedOp]) -> Result<()> {
        for op in ops {
            let bytes = op.encode().map_err(ponte_e2e::Error::GroupOp)?;
            write
                .pending_add
                .push((op.group, sender.to_owned(), PendingKind::Op, bytes));
        }
        Ok(())
    }

    /// Check `op` against the stored group and describe what it changes.
    fn take_op(&self, op: &SignedOp, write: &mut GroupWrite) -> Result<Taken> {
        let refused = |title: &str, e: &dyn std::fmt::Display| {
            Taken::Refused(format!(
                "refused a change to group {title:?} (g:{}): {e}",
                op.group.to_hex()
            ))
        };
        let Some(record) = self.store().group(&op.group)? else {
            if !matches!(op.op, GroupOp::Create { .. }) {
                return Ok(Taken::NotYet);
            }
            let state = match GroupState::from_create(op) {
                Ok(s) => s,
                Err(e) => return Ok(refused("(new)", &e)),
            };
            write.group = Some((state.id(), GroupStatus::Joining));
            write.title = Some(state.title().to_owned());
            write.ops.push((1, op.clone()));
            return Ok(Taken::Applied);
        };
        let hash = op.hash().map_err(ponte_e2e::Error::GroupOp)?;
        if record.has_op(&hash) {
            return Ok(Taken::Duplicate);
        }
        let title = record.state.title().to_owned();
        match record.state.apply(op) {
            Ok(after) => {
                let mut status = record.status;
                self.effects(&record.state, &after, op, false, &mut status, write)?;
                write.ops.push((after.version(), op.clone()));
                write.group = Some((after.id(), status));
                write.title = Some(after.title().to_owned());
                Ok(Taken::Applied)
            }
            Err(OpError::ChainMismatch) if !record.has_op(&op.prev) => Ok(Taken::NotYet),
            Err(e) => Ok(refused(&title, &e)),
        }
    }

    fn take_sender_key(
        &self,
        sender: &str,
        key: &SenderKey,
        key_changed: bool,
        write: &mut GroupWrite,
    ) -> Result<Taken> {
        let Some(record) = self.store().group(&key.group)? else {
            return Ok(Taken::NotYet);
        };
        match record.status {
            GroupStatus::Joining => return Ok(Taken::NotYet),
            GroupStatus::Removed | GroupStatus::Left => return Ok(Taken::Dropped),
            GroupStatus::Member => {}
        }
        let Some((m, _)) = record.state.member_by_handle(sender) else {
            return Ok(Taken::NotYet);
        };
        let title = record.state.title();
        if key_changed || !self.identity_matches(sender, &m.identity)? {
            return Ok(Taken::Refused(format!(
                "refused {sender}'s key for group {title:?}: it did not come from the identity \
                 the group's admin added"
            )));
        }
        let mut receiver = self.store().group_receiver(&key.group)?;
        if let Err(e) = receiver.add_sender_key(&record.state, &m.identity.ed25519, key) {
            return Ok(Taken::Refused(format!(
                "refused {sender}'s key for group {title:?}: {e}"
            )));
        }
        write.group = Some((key.group, record.status));
        write.receiver = Some(Some(receiver));
        Ok(Taken::Applied)
    }

    /// A group's timer that came pairwise (handed over to a member who
    /// joined, by the member who added them): `None` when it is to be
    /// committed as a setting with the message that carried it; otherwise
    /// the write to commit instead (holding it until the group arrives, or
    /// nothing when refused or dropped) and a warning for the user.
    pub(in crate::client) fn pairwise_group_timer(
        &self,
        sender: &str,
        envelope: &Envelope,
        key_changed: bool,
    ) -> Result<(Option<GroupWrite>, Option<String>)> {
        let Payload::TimerSetting(
            setting @ ponte_e2e::TimerSetting {
                group: Some(group), ..
            },
        ) = &envelope.payload
        else {
            return Ok((None, None));
        };
        Ok(match self.timer_from(group, sender, key_changed)? {
            Taken::Applied => (None, None),
            Taken::NotYet => {
                let held = [
                    &envelope.sent_at_ms.to_be_bytes()[..],
                    &envelope.id.0,
                    &setting.to_bytes(),
                ]
                .concat();
                let write = GroupWrite {
                    pending_add: vec![(*group, sender.to_owned(), PendingKind::Timer, held)],
                    ..GroupWrite::default()
                };
                (Some(write), None)
            }
            Taken::Refused(why) => (Some(GroupWrite::default()), Some(why)),
            Taken::Duplicate | Taken::Dropped => (Some(GroupWrite::default()), None),
        })
    }

    /// Whether a group's timer setting from `sender` applies: only from a
    /// current member, under the identity the group's admin added.
    fn timer_from(&self, group: &GroupId, sender: &str, key_changed: bool) -> Result<Taken> {
        let Some(record) = self.store().group(group)? else {
            return Ok(Taken::NotYet);
        };
        match record.status {
            GroupStatus::Joining => return Ok(Taken::NotYet),
            GroupStatus::Removed | GroupStatus::Left => return Ok(Taken::Dropped),
            GroupStatus::Member => {}
        }
        let title = record.state.title();
        let Some((m, _)) = record.state.member_by_handle(sender) else {
            tracing::warn!(%sender, "group timer setting from a non-member refused");
            return Ok(Taken::Refused(format!(
                "refused a disappearing-messages setting for group {title:?} from {sender}, \
                 who is not a member"
            )));
        };
        if key_changed || !self.identity_matches(sender, &m.identity)? {
            tracing::warn!(%sender, "group timer setting under another key refused");
            return Ok(Taken::Refused(format!(
                "refused {sender}'s disappearing-messages setting for group {title:?}: it did \
                 not come from the identity the group's admin added"
            )));
        }
        Ok(Taken::Applied)
    }

    /// A held group timer (see [`Client::pairwise_group_timer`]), again.
    fn retry_group_timer(
        &self,
        group: &GroupId,
        item: &crate::store::PendingItem,
    ) -> Result<Taken> {
        let parts = item.payload.split_at_checked(8).and_then(|(at, rest)| {
            let (id, setting) = rest.split_at_checked(16)?;
            Some((
                u64::from_be_bytes(at.try_into().ok()?),
                MessageId::from_slice(id)?,
                ponte_e2e::TimerSetting::from_bytes(setting).ok()?,
            ))
        });
        let Some((sent_at, id, setting)) = parts else {
            return Ok(Taken::Dropped);
        };
        if setting.group != Some(*group) {
            return Ok(Taken::Dropped);
        }
        let taken = self.timer_from(group, &item.sender, false)?;
        if matches!(taken, Taken::Applied) {
            self.store().commit_pending_group_timer(
                item.seq,
                &item.sender,
                &id,
                UnixMillis(sent_at),
                group,
                setting.timer,
            )?;
        }
        Ok(taken)
    }

    /// A group message pushed by the server (`Deliver` with `group_id`):
    /// decrypted and committed, held until its key or group arrives, or
    /// dropped with a warning. An error means it must not be acknowledged.
    pub(in crate::client) fn handle_group_deliver(
        &mut self,
        sender: &str,
        message_id: &[u8],
        group_id: &[u8],
        body: &[u8],
        events: &mut Display<'_>,
    ) -> Result<()> {
        let Some(delivered) = MessageId::from_slice(message_id) else {
            return emit(
                events,
                Event::Warning(format!("dropped a group message from {sender}: bad id")),
            );
        };
        if self.store().seen(sender, &delivered)? {
            return Ok(());
        }
        let Some(group) = <[u8; 16]>::try_from(group_id).ok().map(GroupId) else {
            return emit(
                events,
                Event::Warning(format!(
                    "dropped a group message from {sender}: bad group id"
                )),
            );
        };
        match GroupCiphertext::from_bytes(body) {
            Ok(ct) if ct.group == group => {}
            _ => {
                return emit(
                    events,
                    Event::Warning(format!("dropped a malformed group message from {sender}")),
                )
            }
        }
        match self.take_group_message(&group, sender, body, delivered, None)? {
            Taken::NotYet => {
                // Held with the id it was delivered under (marked seen now).
                let held = [&delivered.0[..], body].concat();
                self.store().add_pending(
                    &group,
                    sender,
                    PendingKind::Message,
                    &held,
                    Some(&delivered),
                )?;
                Ok(())
            }
            Taken::Refused(why) => emit(events, Event::Warning(why)),
            _ => Ok(()),
        }
    }

    /// Decrypt and commit one group message (from a push or from pending).
    fn take_group_message(
        &self,
        group: &GroupId,
        sender: &str,
        body: &[u8],
        delivered: MessageId,
        pending: Option<i64>,
    ) -> Result<Taken> {
        let Ok(ct) = GroupCiphertext::from_bytes(body) else {
            return Ok(Taken::Refused(format!(
                "dropped a malformed group message from {sender}"
            )));
        };
        let Some(record) = self.store().group(group)? else {
            return Ok(Taken::NotYet);
        };
        match record.status {
            GroupStatus::Joining => return Ok(Taken::NotYet),
            GroupStatus::Removed | GroupStatus::Left => return Ok(Taken::Dropped),
            GroupStatus::Member => {}
        }
        let title = record.state.title();
        let Some((m, _)) = record.state.member_by_handle(sender) else {
            // A removed member's client that does not know yet, or anyone
            // else: whatever it is (a text, a timer setting), refused.
            tracing::warn!(%sender, "group message from a non-member refused");
            return Ok(Taken::Refused(format!(
                "dropped a message to group {title:?} from {sender}, who is not a member"
            )));
        };
        let mut receiver = self.store().group_receiver(group)?;
        let plain = match receiver.decrypt(&record.state, &m.identity.ed25519, &ct) {
            Ok(p) => p,
            Err(ponte_e2e::Error::UnknownGroupSession) => return Ok(Taken::NotYet),
            Err(e) => {
                return Ok(Taken::Refused(format!(
                    "could not decrypt a message to group {title:?} from {sender} ({}); dropped",
                    Report(&e)
                )))
            }
        };
        let envelope = plain.envelope;
        let reply_to = plain.extensions.reply_to;
        if envelope.id != delivered && self.store().seen(sender, &envelope.id)? {
            // The same message again under another id (a replay): once is enough.
            return Ok(Taken::Duplicate);
        }
        let (text, file, timer_set) = match &envelope.payload {
            Payload::GroupText { text, .. } => (text.as_str(), None, None),
            Payload::GroupFile { file, .. } => (file.caption.as_str(), Some(file), None),
            // A member set the group's timer (the sender is a member: checked above).
            Payload::TimerSetting(ponte_e2e::TimerSetting {
                group: Some(g),
                timer,
            }) if g == group => ("", None, Some(*timer)),
            _ => {
                return Ok(Taken::Refused(format!(
                    "dropped a message to group {title:?} from {sender}: not a group message"
                )))
            }
        };
        self.store().commit_group_incoming(&GroupIncoming {
            group: *group,
            sender,
            delivered_id: delivered,
            id: envelope.id,
            sent_at: UnixMillis(envelope.sent_at_ms),
            text,
            file,
            receiver: &receiver,
            pending,
            timer: envelope.timer,
            timer_set,
            // A quote is kept for a text or a file, never for a setting.
            reply_to: reply_to.filter(|_| timer_set.is_none()),
        })?;
        Ok(Taken::Applied)
    }

    /// Retry what waits for `group` until nothing more applies (bounded by
    /// the pending items' cap per round, a few rounds).
    pub(in crate::client) fn retry_pending(
        &mut self,
        group: GroupId,
        events: &mut Display<'_>,
    ) -> Result<()> {
        for _ in 0..8 {
            let mut progress = false;
            for item in self.store().pending(&group)? {
                let taken = match item.kind {
                    PendingKind::Op => match SignedOp::decode(&item.payload) {
                        Ok(op) if op.group == group => {
                            let mut write = GroupWrite::default();
                            let taken = self.take_op(&op, &mut write)?;
                            if matches!(taken, Taken::Applied) {
                                write.pending_done.push(item.seq);
                                self.store().write_group(&write)?;
                            }
                            taken
                        }
                        _ => Taken::Dropped,
                    },
                    PendingKind::SenderKey => match SenderKey::from_parts(group, &item.payload) {
                        Ok(key) => {
                            let mut write = GroupWrite::default();
                            let taken =
                                self.take_sender_key(&item.sender, &key, false, &mut write)?;
                            if matches!(taken, Taken::Applied) {
                                write.pending_done.push(item.seq);
                                self.store().write_group(&write)?;
                            }
                            taken
                        }
                        Err(_) => Taken::Dropped,
                    },
                    PendingKind::Timer => self.retry_group_timer(&group, &item)?,
                    PendingKind::Message => {
                        // The id it was delivered under, then its body.
                        let parts = item
                            .payload
                            .split_at_checked(16)
                            .and_then(|(id, body)| Some((MessageId::from_slice(id)?, body)));
                        match parts {
                            Some((id, body)) => self.take_group_message(
                                &group,
                                &item.sender,
                                body,
                                id,
                                Some(item.seq),
                            )?,
                            None => Taken::Dropped,
                        }
                    }
                };
                match taken {
                    Taken::Applied => progress = true,
                    Taken::NotYet => {}
                    Taken::Refused(why) => {
                        self.store().drop_pending(item.seq)?;
                        emit(events, Event::Warning(why))?;
                    }
                    Taken::Duplicate | Taken::Dropped => self.store().drop_pending(item.seq)?,
                }
            }
            if !progress {
                break;
            }
        }
        Ok(())
    }
}
