//! Changes to a group: create, add, remove, promote, rename, leave, each
//! signed, checked against the stored state and queued pairwise.
//!
//! Each change is made in two steps: it is written into the profile (the
//! ops, the notice, the outbox items: [`Client::queue_group_change`]), and
//! the outbox is flushed. The methods named after the changes
//! ([`Client::group_add`] …) do both on a connection of their own, new
//! members' keys from the server's directory; a process beside the one
//! holding the profile's connection (`ponte group` beside `ponte listen`),
//! or the app's page beside the app's connection, does only the first,
//! new members' keys from the contacts, and lets the holder send
//! ([`Client::group_change_by_holder`]), as `send` does.

use super::*;

/// A change to a group, for [`Client::queue_group_change`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupChange {
    /// Create a group with this title (this device its admin) and these
    /// members.
    Create {
        /// The group's title.
        title: String,
        /// The members' handles (not this device's).
        members: Vec<String>,
    },
    /// Add these handles (admins only).
    Add(Vec<String>),
    /// Remove these members (admins only).
    Remove(Vec<String>),
    /// Make these members admins (admins only).
    Promote(Vec<String>),
    /// Change the title (admins only).
    Rename(String),
    /// Leave the group (the last admin promotes someone first).
    Leave,
}

impl GroupChange {
    /// The handles whose identities the change needs (new members).
    pub fn new_members(&self) -> &[String] {
        match self {
            Self::Create { members, .. } => members,
            Self::Add(handles) => handles,
            _ => &[],
        }
    }
}

/// A create named with a group, or a change without one.
fn wrong_target() -> ClientError {
    ClientError::Invalid("a group is created without an id, and changed with one".into())
}

/// A group change written into the profile, waiting in the outbox for
/// the process that holds the connection ([`Client::group_change_by_holder`]).
#[derive(Debug, Clone)]
pub struct QueuedChange {
    /// The group changed (or created).
    pub group: GroupId,
    /// Its outbox entries.
    pub(in crate::client) queued: Vec<MessageId>,
}

impl Client {
    /// Whether `handle` may be a new member of a group (a valid handle, not
    /// this device's, no key change waiting for verification); `false`
    /// when `so_far` has it already.
    fn new_member_ok(&self, handle: &str, so_far: &[Member]) -> Result<bool> {
        validate_handle(handle).map_err(|e| ClientError::Invalid(format!("{handle:?}: {e}")))?;
        if handle == self.handle {
            return Err(ClientError::Invalid(
                "you are in the group already; name the others".into(),
            ));
        }
        if so_far.iter().any(|m| m.handle == handle) {
            return Ok(false);
        }
        self.check_not_changed(handle)?;
        Ok(true)
    }

    /// The identities of `handles` from the server's directory, on `conn`
    /// (opened here when first needed), each checked against what this
    /// profile trusts (a changed key is refused).
    async fn members_from_directory(
        &mut self,
        conn: &mut Option<Connection>,
        handles: &[String],
    ) -> Result<Vec<Member>> {
        let mut out: Vec<Member> = Vec::with_capacity(handles.len());
        for handle in handles {
            if !self.new_member_ok(handle, &out)? {
                continue;
            }
            let conn = match conn {
                Some(conn) => conn,
                None => conn.insert(self.login().await?.0),
            };
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

    /// The identities of `handles` as the profile's contacts have them (no
    /// server): a handle that is not a contact yet is refused.
    fn members_from_contacts(&self, handles: &[String]) -> Result<Vec<Member>> {
        let mut out: Vec<Member> = Vec::with_capacity(handles.len());
        for handle in handles {
            if !self.new_member_ok(handle, &out)? {
                continue;
            }
            let Some(contact) = self.store().contact(handle)? else {
                return Err(ClientError::Invalid(format!(
                    "{handle} is not a contact of this profile yet (their key comes from \
                     the server's directory)"
                )));
            };
            out.push(Member {
                handle: handle.clone(),
                identity: contact.identity,
            });
        }
        Ok(out)
    }

    /// Whether every one of `handles` is a contact whose key this profile
    /// holds, so that a group change adding them needs no server (see
    /// [`Client::queue_group_change`]).
    pub fn knows_all(&self, handles: &[String]) -> Result<bool> {
        for handle in handles {
            if self.store().contact(handle)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Create a group titled `title` with this device (admin) and `handles`.
    /// Needs the server (the members' identities come from its directory);
    /// the ops and keys then go out like messages.
    pub async fn group_create(&mut self, title: &str, handles: &[String]) -> Result<GroupOutcome> {
        let change = GroupChange::Create {
            title: title.to_owned(),
            members: handles.to_vec(),
        };
        self.group_change(None, &change).await
    }

    /// Add `handles` to a group (admins only). Needs the server for their
    /// identities.
    pub async fn group_add(&mut self, group: &GroupId, handles: &[String]) -> Result<GroupOutcome> {
        self.group_change(Some(group), &GroupChange::Add(handles.to_vec()))
            .await
    }

    /// Remove members (admins only).
    pub async fn group_remove(
        &mut self,
        group: &GroupId,
        handles: &[String],
    ) -> Result<GroupOutcome> {
        self.group_change(Some(group), &GroupChange::Remove(handles.to_vec()))
            .await
    }

    /// Make members admins (admins only).
    pub async fn group_promote(
        &mut self,
        group: &GroupId,
        handles: &[String],
    ) -> Result<GroupOutcome> {
        self.group_change(Some(group), &GroupChange::Promote(handles.to_vec()))
            .await
    }

    /// Rename a group (admins only).
    pub async fn group_rename(&mut self, group: &GroupId, title: &str) -> Result<GroupOutcome> {
        self.group_change(Some(group), &GroupChange::Rename(title.to_owned()))
            .await
    }

    /// Leave a group (the last admin must promote someone first).
    pub async fn group_leave(&mut self, group: &GroupId) -> Result<GroupOutcome> {
        self.group_change(Some(group), &GroupChange::Leave).await
    }

    /// Write `change` to `group` (`None` for a create) into the profile
    /// without the server, for the process holding the connection to send
    /// (follow it with [`Client::group_change_by_holder`]; in the process
    /// holding it, its connection sends the change). New members' keys
    /// come from the profile's contacts: a handle that is not a contact is
    /// refused ([`Client::knows_all`] tells beforehand). Waits for the
    /// profile's keys without an executor (as [`Client::queue_group_text`]
    /// does).
    pub fn queue_group_change(
        &self,
        group: Option<&GroupId>,
        change: &GroupChange,
    ) -> Result<QueuedChange> {
        self.check_change(group, change)?;
        let members = self.members_from_contacts(change.new_members())?;
        let _keys = self.hold_keys_blocking()?;
        self.write_change(group, change, members)
    }

    /// Make `change` to `group` (`None` for a create) and send it on a
    /// connection of this client's own (new members' keys come from the
    /// server's directory).
    pub async fn group_change(
        &mut self,
        group: Option<&GroupId>,
        change: &GroupChange,
    ) -> Result<GroupOutcome> {
        self.check_change(group, change)?;
        let mut conn = None;
        let members = self
            .members_from_directory(&mut conn, change.new_members())
            .await?;
        let queued = {
            let _keys = self.hold_keys().await?;
            self.write_change(group, change, members)?
        };
        let (note, warnings) = self.flush_on(conn).await?;
        Ok(GroupOutcome {
            info: self.group_info(&queued.group)?,
            note,
            warnings,
        })
    }

    /// What can be refused about `change` before anything is asked of
    /// the server (it is checked again when it is written).
    fn check_change(&self, group: Option<&GroupId>, change: &GroupChange) -> Result<()> {
        match (group, change) {
            (None, GroupChange::Create { title, members }) => {
                if title.trim().is_empty() {
                    return Err(ClientError::Invalid("a group needs a title".into()));
                }
                if members.len() >= MAX_MEMBERS {
                    return Err(ClientError::Invalid(format!(
                        "a group has at most {MAX_MEMBERS} members"
                    )));
                }
                Ok(())
            }
            (Some(group), GroupChange::Add(handles)) => {
                let record = self.member_group(group)?;
                let title = record.state.title();
                if record.state.role_of(&self.my_key()) != Some(Role::Admin) {
                    return Err(op_refused(title, OpError::NotAdmin));
                }
                if let Some(already) = handles
                    .iter()
                    .find(|h| record.state.member_by_handle(h).is_some())
                {
                    return Err(ClientError::Invalid(format!(
                        "{already} is already a member of {title:?}"
                    )));
                }
                Ok(())
            }
            (Some(_), GroupChange::Rename(title)) if title.trim().is_empty() => {
                Err(ClientError::Invalid("a group needs a title".into()))
            }
            (Some(_), GroupChange::Create { .. }) | (None, _) => Err(wrong_target()),
            (Some(_), _) => Ok(()),
        }
    }

    /// Check, sign and write `change`, with its new members' identities
    /// (`members`), while the caller holds the profile's keys: the group's
    /// state is read here, so the change applies to the state as it is.
    fn write_change(
        &self,
        group: Option<&GroupId>,
        change: &GroupChange,
        members: Vec<Member>,
    ) -> Result<QueuedChange> {
        let group = match (group, change) {
            (None, GroupChange::Create { title, .. }) => {
                let (group, write) = self.create_write(title, &members)?;
                let queued = self.store().write_group(&write)?;
                return Ok(QueuedChange { group, queued });
            }
            (Some(_), GroupChange::Create { .. }) | (None, _) => return Err(wrong_target()),
            (Some(group), _) => group,
        };
        let record = self.member_group(group)?;
        let ops = match change {
            GroupChange::Add(_) => members.into_iter().map(GroupOp::Add).collect(),
            GroupChange::Remove(handles) => {
                let mut ops = Vec::new();
                for h in handles {
                    if *h == self.handle {
                        return Err(ClientError::Invalid(
                            "to leave a group, use `ponte group leave`".into(),
                        ));
                    }
                    ops.push(GroupOp::Remove(member(&record.state, h)?.identity.ed25519));
                }
                ops
            }
            GroupChange::Promote(handles) => handles
                .iter()
                .map(|h| Ok(GroupOp::Promote(member(&record.state, h)?.identity.ed25519)))
                .collect::<Result<_>>()?,
            GroupChange::Rename(title) => vec![GroupOp::Rename(title.clone())],
            GroupChange::Leave => vec![GroupOp::Leave],
            GroupChange::Create { .. } => return Err(wrong_target()),
        };
        let write = self.local_change(&record, ops)?;
        let queued = self.store().write_group(&write)?;
        Ok(QueuedChange {
            group: record.id(),
            queued,
        })
    }

    /// The write that creates a group titled `title` with this device
    /// (admin) and `members`.
    fn create_write(&self, title: &str, members: &[Member]) -> Result<(GroupId, GroupWrite)> {
        let now = now_ms();
        let (mut state, create) = GroupState::create(&self.identity, &self.handle, title, now)
            .map_err(|e| op_refused(title, e))?;
        let mut ops = vec![create];
        for m in members {
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
        for m in members {
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
        Ok((id, write))
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
        })?;
        Ok(())
    }
}
