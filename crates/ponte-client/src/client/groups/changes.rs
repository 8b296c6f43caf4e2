//! Changes to a group: create, add, remove, promote, rename, leave, each
//! signed, checked against the stored state and queued pairwise.

use super::*;

impl Client {
    /// The identities of `handles` from the directory, each checked against
    /// what this profile trusts (a changed key is refused).
    async fn members_from_directory(
        &mut self,
        conn: &mut Connection,
        handles: &[String],
    ) -> Result<Vec<Member>> {
        let mut out: Vec<Member> = Vec::with_capacity(handles.len());
        for handle in handles {
            validate_handle(handle)
                .map_err(|e| ClientError::Invalid(format!("{handle:?}: {e}")))?;
            if *handle == self.handle {
                return Err(ClientError::Invalid(
                    "you are in the group already; name the others".into(),
                ));
            }
            if out.iter().any(|m| m.handle == *handle) {
                continue;
            }
            self.check_not_changed(handle)?;
            let identity = match self.lookup_identity(conn, handle).await {
                Ok(i) => i,
                Err(ClientError::Server {
                    code: ServerCode::UnknownHandle,
                    ..
                }) => {
                    return Err(ClientError::Invalid(format!(
                        "{handle}: no such user on the server"
                    )))
                }
                Err(e) => return Err(e),
            };
            if self.store().observe_identity(handle, &identity)?
                == crate::store::IdentityCheck::Changed
            {
                return Err(ClientError::KeyChanged(handle.clone()));
            }
            out.push(Member {
                handle: handle.clone(),
                identity,
            });
        }
        Ok(out)
    }

    /// Create a group titled `title` with this device (admin) and `handles`.
    /// Needs the server (the members' identities come from its directory);
    /// the ops and keys then go out like messages.
    pub async fn group_create(&mut self, title: &str, handles: &[String]) -> Result<GroupOutcome> {
        // The group's state and keys, from reading them to writing them back.
        let _keys = self.hold_keys().await?;
        if title.trim().is_empty() {
            return Err(ClientError::Invalid("a group needs a title".into()));
        }
        if handles.len() >= MAX_MEMBERS {
            return Err(ClientError::Invalid(format!(
                "a group has at most {MAX_MEMBERS} members"
            )));
        }
        let (mut conn, _) = self.login().await?;
        let members = self.members_from_directory(&mut conn, handles).await?;
        let now = now_ms();
        let (mut state, create) = GroupState::create(&self.identity, &self.handle, title, now)
            .map_err(|e| op_refused(title, e))?;
        let mut ops = vec![create];
        for m in &members {
            let op = state
                .propose(&self.identity, now, GroupOp::Add(m.clone()))
                .and_then(|op| {
                    state = state.apply(&op)?;
                    Ok(op)
                })
                .map_err(|e| op_refused(title, e))?;
            ops.push(op);
        }
        let id = state.id();
        let sender = GroupSender::new(id, now);
        let mut write = GroupWrite {
            group: Some((id, GroupStatus::Member)),
            title: Some(title.to_owned()),
            ..GroupWrite::default()
        };
        for m in &members {
            for chunk in ops.chunks(MAX_LOG_OPS) {
                write
                    .outbox
                    .push((m.handle.clone(), OutboxKind::GroupLog(chunk.to_vec())));
            }
            write
                .outbox
                .push((m.handle.clone(), OutboxKind::SenderKey(sender.sender_key())));
        }
        write.ops = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| (i as u64 + 1, op))
            .collect();
        write.sender = Some(Some(sender));
        let names: Vec<&str> = members.iter().map(|m| m.handle.as_str()).collect();
        write.notices.push(GroupNotice {
            by: self.handle.clone(),
            text: if names.is_empty() {
                format!("{} created the group {title:?}", self.handle)
            } else {
                format!(
                    "{} created the group {title:?} with {}",
                    self.handle,
                    names.join(", ")
                )
            },
            shown: true,
        });
        self.store().write_group(&write)?;
        let (note, warnings) = self.flush_on(Some(conn)).await?;
        Ok(GroupOutcome {
            info: self.group_info(&id)?,
            note,
            warnings,
        })
    }

    /// Add `handles` to a group (admins only). Needs the server for their
    /// identities.
    pub async fn group_add(&mut self, group: &GroupId, handles: &[String]) -> Result<GroupOutcome> {
        // The group's state and keys, from reading them to writing them back.
        let _keys = self.hold_keys().await?;
        let record = self.member_group(group)?;
        let title = record.state.title().to_owned();
        if record.state.role_of(&self.my_key()) != Some(Role::Admin) {
            return Err(op_refused(&title, OpError::NotAdmin));
        }
        let fresh: Vec<String> = handles
            .iter()
            .filter(|h| record.state.member_by_handle(h).is_none())
            .cloned()
            .collect();
        if let Some(already) = handles
            .iter()
            .find(|h| record.state.member_by_handle(h).is_some())
        {
            return Err(ClientError::Invalid(format!(
                "{already} is already a member of {title:?}"
            )));
        }
        let (mut conn, _) = self.login().await?;
        let members = self.members_from_directory(&mut conn, &fresh).await?;
        let ops: Vec<GroupOp> = members.iter().cloned().map(GroupOp::Add).collect();
        let write = self.local_change(&record, ops)?;
        self.store().write_group(&write)?;
        let (note, warnings) = self.flush_on(Some(conn)).await?;
        Ok(GroupOutcome {
            info: self.group_info(group)?,
            note,
            warnings,
        })
    }

    /// Remove members (admins only).
    pub async fn group_remove(
        &mut self,
        group: &GroupId,
        handles: &[String],
    ) -> Result<GroupOutcome> {
        // The group's state and keys, from reading them to writing them back.
        let _keys = self.hold_keys().await?;
        let record = self.member_group(group)?;
        let mut ops = Vec::new();
        for h in handles {
            if *h == self.handle {
                return Err(ClientError::Invalid(
                    "to leave a group, use `ponte group leave`".into(),
                ));
            }
            ops.push(GroupOp::Remove(member(&record.state, h)?.identity.ed25519));
        }
        self.change(&record, ops).await
    }

    /// Make members admins (admins only).
    pub async fn group_promote(
        &mut self,
        group: &GroupId,
        handles: &[String],
    ) -> Result<GroupOutcome> {
        // The group's state and keys, from reading them to writing them back.
        let _keys = self.hold_keys().await?;
        let record = self.member_group(group)?;
        let mut ops = Vec::new();
        for h in handles {
            ops.push(GroupOp::Promote(member(&record.state, h)?.identity.ed25519));
        }
        self.change(&record, ops).await
    }

    /// Rename a group (admins only).
    pub async fn group_rename(&mut self, group: &GroupId, title: &str) -> Result<GroupOutcome> {
        // The group's state and keys, from reading them to writing them back.
        let _keys = self.hold_keys().await?;
        if title.trim().is_empty() {
            return Err(ClientError::Invalid("a group needs a title".into()));
        }
        let record = self.member_group(group)?;
        self.change(&record, vec![GroupOp::Rename(title.to_owned())])
            .await
    }

    /// Leave a group (the last admin must promote someone first).
    pub async fn group_leave(&mut self, group: &GroupId) -> Result<GroupOutcome> {
        // The group's state and keys, from reading them to writing them back.
        let _keys = self.hold_keys().await?;
        let record = self.member_group(group)?;
        self.change(&record, vec![GroupOp::Leave]).await
    }

    /// Sign, check, store and send changes that need no directory look-up.
    async fn change(&mut self, record: &GroupRecord, ops: Vec<GroupOp>) -> Result<GroupOutcome> {
        let write = self.local_change(record, ops)?;
        self.store().write_group(&write)?;
        let (note, warnings) = self.flush_on(None).await?;
        Ok(GroupOutcome {
            info: self.group_info(&record.id())?,
            note,
            warnings,
        })
    }

    /// The write for ops this device signs on `record`: each applied to the
    /// state first (so what the rules refuse is refused here), the ops sent
    /// to every member before the change (a removed one learns of it), a
    /// new member given the whole log and this device's sender key.
    fn local_change(&self, record: &GroupRecord, ops: Vec<GroupOp>) -> Result<GroupWrite> {
        let title = record.state.title().to_owned();
        let me = self.my_key();
        let before = record.state.clone();
        let mut state = record.state.clone();
        let mut status = record.status;
        let mut write = GroupWrite::default();
        let mut signed = Vec::new();
        for op in ops {
            let op = state
                .propose(&self.identity, now_ms(), op)
                .map_err(|e| op_refused(&title, e))?;
            let after = state.apply(&op).map_err(|e| op_refused(&title, e))?;
            self.effects(&state, &after, &op, true, &mut status, &mut write)?;
            write.ops.push((after.version(), op.clone()));
            signed.push(op);
            state = after;
        }
        // Every member before the change gets the new ops; a new member
        // gets the whole log first, then this device's sender key.
        let log: Vec<SignedOp> = record.ops.iter().chain(&signed).cloned().collect();
        let sender = match &write.sender {
            Some(s) => s.as_ref().map(GroupSender::sender_key),
            None => self
                .store()
                .group_sender(&state.id())?
                .map(|s| s.sender_key()),
        };
        // The group's timer goes with the group to who joins (as set, at
        // the time it was set); nothing when it was never set or is off.
        let timer = match self
            .store()
            .timer_setting(&Conversation::Group(state.id()))?
        {
            Some((Some(t), at)) => Some((t, at)),
            _ => None,
        };
        let mut outbox = Vec::new();
        for (m, _) in state.members() {
            if m.identity.ed25519 == me || before.role_of(&m.identity.ed25519).is_some() {
                continue;
            }
            for chunk in log.chunks(MAX_LOG_OPS) {
                outbox.push((m.handle.clone(), OutboxKind::GroupLog(chunk.to_vec())));
            }
            if let Some(key) = &sender {
                outbox.push((m.handle.clone(), OutboxKind::SenderKey(key.clone())));
            }
            if let Some((t, at)) = timer {
                let setting = ponte_e2e::TimerSetting {
                    group: Some(state.id()),
                    timer: Some(t),
                };
                write.timers.push((m.handle.clone(), setting, at));
            }
        }
        for (m, _) in before.members() {
            if m.identity.ed25519 == me {
                continue;
            }
            for op in &signed {
                outbox.push((m.handle.clone(), OutboxKind::GroupOp(Box::new(op.clone()))));
            }
        }
        outbox.append(&mut write.outbox);
        write.outbox = outbox;
        write.group = Some((state.id(), status));
        write.title = Some(state.title().to_owned());
        for n in &mut write.notices {
            n.shown = true;
        }
        Ok(write)
    }

    /// What applying `op` (taking `before` to `after`) means for this
    /// device, added to `write`: its standing, the history notice, contacts
    /// for new members, its sender key for a member who joined (when the
    /// change came from someone else), and on a removal the departed
    /// member's sessions dropped and this device's own sender session with
    /// them (the next message starts a new one).
    pub(super) fn effects(
        &self,
        before: &GroupState,
        after: &GroupState,
        op: &SignedOp,
        by_me: bool,
        status: &mut GroupStatus,
        write: &mut GroupWrite,
    ) -> Result<()> {
        let me = self.my_key();
        let was_member = before.role_of(&me).is_some();
        let is_member = after.role_of(&me).is_some();
        let by = handle_of(before, &op.signer).unwrap_or_else(|| "someone".into());
        let name = |key: &[u8; 32]| {
            if *key == me {
                "you".to_owned()
            } else {
                handle_of(before, key)
                    .or_else(|| handle_of(after, key))
                    .unwrap_or_else(|| "someone".into())
            }
        };
        let text = match &op.op {
            GroupOp::Add(m) if m.identity.ed25519 == me => {
                format!("{by} added you to {:?}", after.title())
            }
            GroupOp::Add(m) => format!("{by} added {}", m.handle),
            GroupOp::Remove(k) => format!("{by} removed {}", name(k)),
            GroupOp::Promote(k) => format!("{by} made {} an admin", name(k)),
            GroupOp::Rename(t) => format!("{by} renamed the group to {t:?}"),
            GroupOp::Leave => format!("{by} left"),
            _ => format!("{by} changed the group"),
        };
        if is_member || was_member {
            write.notices.push(GroupNotice {
                by: by.clone(),
                text,
                shown: by_me,
            });
        }
        if is_member {
            *status = GroupStatus::Member;
        } else if was_member {
            *status = if matches!(op.op, GroupOp::Leave) {
                GroupStatus::Left
            } else {
                GroupStatus::Removed
            };
        }
        if is_member && !was_member {
            // Just added: every member is someone to talk to.
            for (m, _) in after.members() {
                if m.identity.ed25519 != me {
                    write.contacts.push((m.handle.clone(), m.identity));
                }
            }
        }
        if let GroupOp::Add(m) = &op.op {
            if m.identity.ed25519 != me && is_member {
                write.contacts.push((m.handle.clone(), m.identity));
                if !by_me {
                    if let Some(sender) = self.store().group_sender(&after.id())? {
                        if self.identity_matches(&m.handle, &m.identity)? {
                            write.outbox.push((
                                m.handle.clone(),
                                OutboxKind::SenderKey(sender.sender_key()),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(gone) = op.removed() {
            if gone == me {
                write.sender = Some(None);
                write.receiver = Some(None);
                write.forget = true;
            } else {
                let mut receiver = match write.receiver.take() {
                    Some(Some(r)) => r,
                    _ => self.store().group_receiver(&after.id())?,
                };
                receiver.remove_sender(&gone);
                write.receiver = Some(Some(receiver));
                write.sender = Some(None);
                if let Some(h) = handle_of(before, &gone) {
                    write.gone.push(h);
                }
            }
        }
        Ok(())
    }

    /// Queue a signed op for one member, pairwise, as it is (to hand a
    /// member the log again, or for tools). It is not checked here: the
    /// receiver checks it like any op and refuses, with a warning, what
    /// does not follow its state or is not signed by someone allowed.
    pub fn queue_group_op(&self, peer: &str, op: &SignedOp) -> Result<()> {
        validate_handle(peer).map_err(|e| ClientError::Invalid(format!("{peer:?}: {e}")))?;
        self.store().write_group(&GroupWrite {
            outbox: vec![(peer.to_owned(), OutboxKind::GroupOp(Box::new(op.clone())))],
            ..GroupWrite::default()
        })
    }
}
