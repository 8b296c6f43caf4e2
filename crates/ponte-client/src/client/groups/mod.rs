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

mod arrivals;
mod changes;
pub use changes::{GroupChange, QueuedChange};
mod send;

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
    /// The identity key this profile has for them (a change waiting for
    /// `verify --confirm`, or one confirmed since) is not the one the
    /// admin-signed membership names: sending to the group is refused
    /// while the change waits, and skips them once confirmed.
    pub key_changed: bool,
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
    /// The group's disappearing-messages timer (`None`: off).
    pub timer: Option<ponte_e2e::Timer>,
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
                    key_changed: false,
                })
                .collect(),
            role: state.role_of(me),
            version: state.version(),
            timer: None,
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
        self.store()
            .groups()?
            .iter()
            .map(|g| self.info_of(g))
            .collect()
    }

    /// One group.
    pub fn group_info(&self, group: &GroupId) -> Result<GroupInfo> {
        let record = self.known_group(group)?;
        self.info_of(&record)
    }

    /// What `group info` shows of `record`: with the group's timer, and
    /// each member's key checked against the one the membership names.
    fn info_of(&self, record: &GroupRecord) -> Result<GroupInfo> {
        let me = self.my_key();
        let mut info = GroupInfo::of(record, &me);
        info.timer = self.store().timer(&Conversation::Group(record.id()))?;
        for (member, (m, _)) in info.members.iter_mut().zip(record.state.members()) {
            member.key_changed =
                m.identity.ed25519 != me && !self.identity_matches(&m.handle, &m.identity)?;
        }
        Ok(info)
    }

    /// A line for each group (of which this device is a member) that
    /// `handle` is in, once `handle`'s identity key was seen to change.
    pub(in crate::client) fn group_key_change_warnings(&self, handle: &str) -> Result<Vec<String>> {
        Ok(self
            .store()
            .groups()?
            .iter()
            .filter(|g| g.status == GroupStatus::Member)
            .filter(|g| g.state.member_by_handle(handle).is_some())
            .map(|g| {
                format!(
                    "{handle} is in the group {:?}: sending to it is held until you verify \
                     {handle} (`ponte verify {handle}`)",
                    g.state.title()
                )
            })
            .collect())
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
}
