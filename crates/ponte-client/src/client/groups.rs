//! Groups: creating and changing them, sending to them, and what arrives
//! for them.
//!
//! - **Changes** (create, add, remove, promote, rename, leave) are ops
//!   signed with this device's identity ([`ponte_e2e::group`]), checked by
//!   applying them to the stored state first, and queued pairwise (Olm) to
//!   every member of the group before the change, a new member getting the
//!   whole log from create on. Each change is one transaction: the ops,
//!   the history notice and the outbox items.
//! - **Messages** are encrypted when queued with this device's Megolm
//!   sender session for the group ([`GroupSender`]); a new or rotated
//!   session's key goes to every member pairwise first (earlier in the
//!   outbox, so earlier at the server). The flush sends the one ciphertext
//!   with `SendGroupMessage` to the recipients that are still members. A
//!   removal drops the sender session: the next message starts a new one
//!   the removed member never gets.
//! - **Arrivals**: an op or sender key comes pairwise and is committed with
//!   the Olm session that carried it; a group message comes as a `Deliver`
//!   with `group_id`. Whatever depends on something not here yet (an op
//!   after one still in flight, the key of a message, a group whose log has
//!   not arrived) waits in `group_pending` and is retried whenever the group
//!   changes. An op whose signature, signer or chain does not check is
//!   refused with a warning.

use super::outbound::SendOutcome;
use super::{emit, is_fatal, Client, Display, Event};
use crate::connection::Connection;
use crate::store::{
    group_key, Conversation, GroupIncoming, GroupNotice, GroupOutgoing, GroupRecord, GroupStatus,
    GroupWrite, OutboxKind, PendingKind, UnixMillis,
};
use crate::{ClientError, Report, Result, ServerCode};
use ponte_e2e::envelope::MAX_LOG_OPS;
use ponte_e2e::group::{
    GroupCiphertext, GroupId, GroupOp, GroupSender, GroupState, Member, OpError, Role, SenderKey,
    SignedOp, MAX_MEMBERS,
};
use ponte_e2e::{Envelope, FileDescriptor, MessageId, Payload, PublicIdentity};
use ponte_wire::messages::validate_handle;

/// Shortest id prefix accepted after `g:`.
pub const MIN_GROUP_PREFIX: usize = 6;

/// One member as `group info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Their handle.
    pub handle: String,
    /// Whether they are an admin.
    pub admin: bool,
}

/// What `group info` and `group list` show.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's id.
    pub id: GroupId,
    /// Its title.
    pub title: String,
    /// Where this device stands.
    pub status: GroupStatus,
    /// Members in the order they joined.
    pub members: Vec<GroupMember>,
    /// This device's role (`None` once out of the group).
    pub role: Option<Role>,
    /// Number of changes since create (1 after create).
    pub version: u64,
}

impl GroupInfo {
    fn of(record: &GroupRecord, me: &[u8; 32]) -> Self {
        let state = &record.state;
        Self {
            id: state.id(),
            title: state.title().to_owned(),
            status: record.status,
            members: state
                .members()
                .map(|(m, r)| GroupMember {
                    handle: m.handle.clone(),
                    admin: r == Role::Admin,
                })
                .collect(),
            role: state.role_of(me),
            version: state.version(),
        }
    }

    /// The admins' handles.
    pub fn admins(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|m| m.admin)
            .map(|m| m.handle.as_str())
    }
}

/// What a group command did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupOutcome {
    /// The group after the change.
    pub info: GroupInfo,
    /// Why the change is still queued, if it is.
    pub note: Option<String>,
    /// What the flush found (one line each).
    pub warnings: Vec<String>,
}

/// What became of a group item that arrived.
enum Taken {
    /// Applied (the group changed or a key was added).
    Applied,
    /// Already had it.
    Duplicate,
    /// It depends on something not here yet.
    NotYet,
    /// Refused, with the reason for the user.
    Refused(String),
    /// Not for us any more (this device is out of the group): dropped quietly.
    Dropped,
}

fn now_ms() -> u64 {
    UnixMillis::now().0
}

fn op_refused(title: &str, e: OpError) -> ClientError {
    ClientError::Invalid(match e {
        OpError::NotAdmin => format!("only an admin of {title:?} can do that"),
        OpError::LastAdmin => format!(
            "you are the last admin of {title:?}: promote another member first \
             (`ponte group promote GROUP HANDLE`)"
        ),
        OpError::NotMember => format!("you are not a member of {title:?}"),
        other => format!("group {title:?}: {other}"),
    })
}

/// The member with `handle` in `state` (an error naming the group if none).
fn member<'a>(state: &'a GroupState, handle: &str) -> Result<&'a Member> {
    state
        .member_by_handle(handle)
        .map(|(m, _)| m)
        .ok_or_else(|| {
            ClientError::Invalid(format!("{handle} is not a member of {:?}", state.title()))
        })
}

/// The write of the ops of a log applied before one was refused (they
/// checked; the group is where they took it), or nothing.
fn write_if(applied: bool, mut write: GroupWrite, rec: &GroupRecord) -> GroupWrite {
    if !applied {
        return GroupWrite::default();
    }
    write.group = Some((rec.id(), rec.status));
    write.title = Some(rec.state.title().to_owned());
    write
}

fn handle_of(state: &GroupState, key: &[u8; 32]) -> Option<String> {
    state
        .members()
        .find(|(m, _)| &m.identity.ed25519 == key)
        .map(|(m, _)| m.handle.clone())
}

impl Client {
    fn my_key(&self) -> [u8; 32] {
        self.identity.public().ed25519
    }

    /// A conversation from the command line: `g:ID` (the id, or at least
    /// [`MIN_GROUP_PREFIX`] of its first hex digits) or `g:TITLE` when one
    /// group of this profile has that title; anything else is a handle.
    pub fn resolve(&self, arg: &str) -> Result<Conversation> {
        let Some(rest) = arg.strip_prefix("g:") else {
            validate_handle(arg).map_err(|e| ClientError::Invalid(format!("{arg:?}: {e}")))?;
            return Ok(Conversation::Contact(arg.to_owned()));
        };
        let groups = self.store().groups()?;
        let lower = rest.to_ascii_lowercase();
        if lower.len() >= MIN_GROUP_PREFIX && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&GroupRecord> = groups
                .iter()
                .filter(|g| g.id().to_hex().starts_with(&lower))
                .collect();
            if let [one] = hits.as_slice() {
                return Ok(Conversation::Group(one.id()));
            }
        }
        let titled: Vec<&GroupRecord> = groups.iter().filter(|g| g.state.title() == rest).collect();
        match titled.as_slice() {
            [one] => Ok(Conversation::Group(one.id())),
            [] => Err(ClientError::Invalid(format!(
                "no group {arg:?} in this profile (see `ponte group list`)"
            ))),
            _ => Err(ClientError::Invalid(format!(
                "{} groups are called {rest:?}: name one by its id (g:ID, see `ponte group list`)",
                titled.len()
            ))),
        }
    }

    /// A group of this profile (not one it is only being added to).
    fn known_group(&self, group: &GroupId) -> Result<GroupRecord> {
        match self.store().group(group)? {
            Some(g) if g.status != GroupStatus::Joining => Ok(g),
            _ => Err(ClientError::Invalid(format!(
                "no group g:{} in this profile",
                group.to_hex()
            ))),
        }
    }

    /// A group this device is a member of (else why not).
    fn member_group(&self, group: &GroupId) -> Result<GroupRecord> {
        let g = self.known_group(group)?;
        match g.status {
            GroupStatus::Member => Ok(g),
            GroupStatus::Removed => Err(ClientError::Invalid(format!(
                "you were removed from {:?}: you cannot send to it or change it",
                g.state.title()
            ))),
            _ => Err(ClientError::Invalid(format!(
                "you left {:?}: you cannot send to it or change it",
                g.state.title()
            ))),
        }
    }

    /// Every group of this profile, oldest first.
    pub fn groups(&self) -> Result<Vec<GroupInfo>> {
        let me = self.my_key();
        Ok(self
            .store()
            .groups()?
            .iter()
            .map(|g| GroupInfo::of(g, &me))
            .collect())
    }

    /// One group.
    pub fn group_info(&self, group: &GroupId) -> Result<GroupInfo> {
        Ok(GroupInfo::of(&self.known_group(group)?, &self.my_key()))
    }

    // ------------------------------------------------------------ changes

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
        let record = self.member_group(group)?;
        let mut ops = Vec::new();
        for h in handles {
            ops.push(GroupOp::Promote(member(&record.state, h)?.identity.ed25519));
        }
        self.change(&record, ops).await
    }

    /// Rename a group (admins only).
    pub async fn group_rename(&mut self, group: &GroupId, title: &str) -> Result<GroupOutcome> {
        if title.trim().is_empty() {
            return Err(ClientError::Invalid("a group needs a title".into()));
        }
        let record = self.member_group(group)?;
        self.change(&record, vec![GroupOp::Rename(title.to_owned())])
            .await
    }

    /// Leave a group (the last admin must promote someone first).
    pub async fn group_leave(&mut self, group: &GroupId) -> Result<GroupOutcome> {
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
    fn effects(
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

    /// Whether the identity this profile trusts for `handle` is `identity`
    /// (true when it has none yet: the group's signed op introduces it).
    fn identity_matches(&self, handle: &str, identity: &PublicIdentity) -> Result<bool> {
        Ok(match self.store().contact(handle)? {
            Some(c) => c.identity == *identity && c.changed_identity.is_none(),
            None => true,
        })
    }

    /// Flush the outbox on `conn` (or a new connection): what to tell the
    /// user. An unreachable server leaves everything queued (a note).
    async fn flush_on(
        &mut self,
        conn: Option<Connection>,
    ) -> Result<(Option<String>, Vec<String>)> {
        let mut warnings = Vec::new();
        let conn = match conn {
            Some(c) => Ok(c),
            None => self.login().await.map(|(c, _)| c),
        };
        let note = match conn {
            Ok(mut conn) => {
                let mut sink = |e: Event| {
                    if let Event::Warning(w) = e {
                        warnings.push(w);
                    }
                    Ok(())
                };
                match self.flush_outbox(&mut conn, &mut sink).await {
                    Ok(_) => None,
                    Err(e) if is_fatal(&e) => return Err(e),
                    Err(e) => Some(format!("kept in the outbox: {}", Report(&e))),
                }
            }
            Err(
                e @ (ClientError::Unreachable(_)
                | ClientError::Disconnected(_)
                | ClientError::Closed { .. }),
            ) => Some(format!(
                "server unreachable, queued for the next connection ({})",
                Report(&e)
            )),
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => Some(format!("kept in the outbox: {}", Report(&e))),
        };
        Ok((note, warnings))
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

    // ------------------------------------------------------------ sending

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
    pub(super) fn group_file_uploaded(
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
    pub(super) fn group_file_recipients(&self, group: &GroupId) -> Result<u32> {
        let record = self.member_group(group)?;
        let n = record.state.members().count().saturating_sub(1);
        Ok(u32::try_from(n.max(1)).unwrap_or(u32::MAX))
    }

    // ------------------------------------------------------------ arrivals

    /// A group op or sender key that arrived pairwise from `sender`: the
    /// write to commit with the Olm message that carried it, a warning for
    /// the user, and the group to retry pending items for once committed.
    pub(super) fn pairwise_group(
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

    /// A group message pushed by the server (`Deliver` with `group_id`):
    /// decrypted and committed, held until its key or group arrives, or
    /// dropped with a warning. An error means it must not be acknowledged.
    pub(super) fn handle_group_deliver(
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
        if envelope.id != delivered && self.store().seen(sender, &envelope.id)? {
            // The same message again under another id (a replay): once is enough.
            return Ok(Taken::Duplicate);
        }
        let (text, file) = match &envelope.payload {
            Payload::GroupText { text, .. } => (text.as_str(), None),
            Payload::GroupFile { file, .. } => (file.caption.as_str(), Some(file)),
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
        })?;
        Ok(Taken::Applied)
    }

    /// Retry what waits for `group` until nothing more applies (bounded by
    /// the pending items' cap per round, a few rounds).
    pub(super) fn retry_pending(&mut self, group: GroupId, events: &mut Display<'_>) -> Result<()> {
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
