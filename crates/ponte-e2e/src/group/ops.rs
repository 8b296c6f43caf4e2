//! Group state and the signed operations that change it.
//!
//! A group's state (title, members with their roles, a version counter)
//! changes only through a [`SignedOp`]: one [`GroupOp`] signed with the
//! Ed25519 identity key of a member allowed to make it. Every member's
//! client checks each op with [`GroupState::apply`] before taking it; the
//! server holds no member's key, so it can drop or delay ops but never
//! forge one.
//!
//! Ops form a hash chain: each names the SHA-256 of the previous op's
//! encoding ([`GroupState::head`]; all zeros for the create op), so they
//! apply in one order only, a replayed op no longer matches the head, and
//! two admins signing on the same head (a fork) are detected by whoever
//! receives the second.
//!
//! Encoding of a [`SignedOp`] (big-endian):
//!
//! ```text
//! +---------+----------+-----------+--------------+--------+----+---------+-----------+
//! | version | group id | prev hash | timestamp ms | signer | op | op body | signature |
//! |  0x01   | 16 bytes | 32 bytes  | u64          | 32 (1) | u8 |         | 64 bytes  |
//! +---------+----------+-----------+--------------+--------+----+---------+-----------+
//! (1) the signer's Ed25519 identity key
//! op 1 create:  title, member (the creator)
//! op 2 add:     member
//! op 3 remove:  ed25519 key (32)
//! op 4 promote: ed25519 key (32)
//! op 5 rename:  title
//! op 6 leave:   (empty)
//! title:  u16 length (<= MAX_TITLE_BYTES), UTF-8
//! member: u8 handle length (1..=MAX_HANDLE_BYTES), UTF-8 handle,
//!         curve25519 (32), ed25519 (32)
//! ```
//!
//! The signature covers `"ponte-group-op-v1" || every byte before it`.

use super::GroupId;
use crate::{Identity, PublicIdentity};
use sha2::{Digest, Sha256};

/// Most members in a group (the server's per-message recipient cap).
pub const MAX_MEMBERS: usize = 1024;
/// Longest group title, in bytes of UTF-8.
pub const MAX_TITLE_BYTES: usize = 256;
/// Longest member handle, in bytes (the server's handle cap).
pub const MAX_HANDLE_BYTES: usize = 32;
/// Longest encoded [`SignedOp`].
pub const MAX_OP_BYTES: usize =
    HEADER + 1 + 2 + MAX_TITLE_BYTES + 1 + MAX_HANDLE_BYTES + 64 + SIGNATURE;

const VERSION: u8 = 1;
const CONTEXT: &[u8] = b"ponte-group-op-v1";
const HEADER: usize = 1 + 16 + 32 + 8 + 32;
const SIGNATURE: usize = 64;

const OP_CREATE: u8 = 1;
const OP_ADD: u8 = 2;
const OP_REMOVE: u8 = 3;
const OP_PROMOTE: u8 = 4;
const OP_RENAME: u8 = 5;
const OP_LEAVE: u8 = 6;

/// Why an op was refused (or could not be built or decoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The encoding is truncated, too long or has an unknown version or op.
    #[error("malformed group op: {0}")]
    Malformed(&'static str),
    /// The signature does not verify against the named signer's key.
    #[error("group op signature does not verify")]
    BadSignature,
    /// The op names another group.
    #[error("group op is for another group")]
    WrongGroup,
    /// The op does not follow the current head: a replay, an op from a
    /// fork, or one that arrived before ops it depends on.
    #[error("group op does not follow the current state (replayed, forked or out of order)")]
    ChainMismatch,
    /// The signer is not a member (never was, left or was removed).
    #[error("signer is not a member of the group")]
    NotMember,
    /// The op needs an admin and the signer is a plain member.
    #[error("signer is not an admin of the group")]
    NotAdmin,
    /// A create op applied to an existing group, or another op used to start one.
    #[error("a group starts with exactly one create op, signed by its creator")]
    BadCreate,
    /// The member to add is already in the group.
    #[error("already a member")]
    AlreadyMember,
    /// The member to remove or promote is not in the group.
    #[error("no such member")]
    NoSuchMember,
    /// The member to promote is already an admin.
    #[error("already an admin")]
    AlreadyAdmin,
    /// The group would have members but no admin left.
    #[error("the last admin cannot leave or be removed while members remain")]
    LastAdmin,
    /// The group already has [`MAX_MEMBERS`] members.
    #[error("group is full ({MAX_MEMBERS} members)")]
    TooManyMembers,
    /// A title over [`MAX_TITLE_BYTES`].
    #[error("title too long ({0} bytes, at most {MAX_TITLE_BYTES})")]
    TitleTooLong(usize),
    /// A handle that is empty or over [`MAX_HANDLE_BYTES`].
    #[error("bad member handle")]
    BadHandle,
    /// A key that is not a valid Ed25519 point.
    #[error("invalid member key")]
    InvalidKey,
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// May add, remove and promote members and rename the group.
    Admin,
    /// May send messages and leave.
    Member,
}

/// One member: the handle messages are fanned out to, and the identity
/// whose Ed25519 key signs its ops and whose Olm sessions carry its keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// The member's server handle (recipient of the group's messages).
    pub handle: String,
    /// The member's device identity.
    pub identity: PublicIdentity,
}

impl Member {
    fn check(&self) -> Result<(), OpError> {
        if self.handle.is_empty() || self.handle.len() > MAX_HANDLE_BYTES {
            return Err(OpError::BadHandle);
        }
        PublicIdentity::from_slices(&self.identity.curve25519, &self.identity.ed25519)
            .map_err(|_| OpError::InvalidKey)?;
        Ok(())
    }
}

/// A change to a group.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupOp {
    /// Start the group; the creator (who signs) is its first admin.
    Create {
        /// The initial title.
        title: String,
        /// The creator.
        creator: Member,
    },
    /// Add a member (admin only).
    Add(Member),
    /// Remove the member with this Ed25519 key (admin only).
    Remove([u8; 32]),
    /// Make the member with this Ed25519 key an admin (admin only).
    Promote([u8; 32]),
    /// Change the title (admin only).
    Rename(String),
    /// The signer leaves.
    Leave,
}

impl std::fmt::Debug for GroupOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Titles are content: they stay out of logs and debug output.
        match self {
            GroupOp::Create { title, creator } => f
                .debug_struct("Create")
                .field("title_bytes", &title.len())
                .field("creator", &creator.handle)
                .finish(),
            GroupOp::Add(member) => f.debug_tuple("Add").field(&member.handle).finish(),
            GroupOp::Remove(key) => write!(f, "Remove({})", hex(key)),
            GroupOp::Promote(key) => write!(f, "Promote({})", hex(key)),
            GroupOp::Rename(title) => write!(f, "Rename({} bytes)", title.len()),
            GroupOp::Leave => f.write_str("Leave"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A [`GroupOp`] with its group, chain link, time and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedOp {
    /// The group it changes.
    pub group: GroupId,
    /// SHA-256 of the previous op's encoding (zeros for create).
    pub prev: [u8; 32],
    /// The signer's clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The signer's Ed25519 identity key.
    pub signer: [u8; 32],
    /// The change.
    pub op: GroupOp,
    signature: [u8; 64],
}

fn put_title(out: &mut Vec<u8>, title: &str) -> Result<(), OpError> {
    if title.len() > MAX_TITLE_BYTES {
        return Err(OpError::TitleTooLong(title.len()));
    }
    // Cannot truncate: bounded by MAX_TITLE_BYTES above.
    out.extend_from_slice(&(title.len() as u16).to_be_bytes());
    out.extend_from_slice(title.as_bytes());
    Ok(())
}

fn put_member(out: &mut Vec<u8>, member: &Member) -> Result<(), OpError> {
    member.check()?;
    // Cannot truncate: bounded by MAX_HANDLE_BYTES in `check`.
    out.push(member.handle.len() as u8);
    out.extend_from_slice(member.handle.as_bytes());
    out.extend_from_slice(&member.identity.curve25519);
    out.extend_from_slice(&member.identity.ed25519);
    Ok(())
}

/// A cursor over hostile bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], OpError> {
        if self.0.len() < n {
            return Err(OpError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], OpError> {
        self.take(N, what)?
            .try_into()
            .map_err(|_| OpError::Malformed(what))
    }

    fn utf8(&mut self, n: usize, what: &'static str) -> Result<String, OpError> {
        let raw = self.take(n, what)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| OpError::Malformed("not UTF-8"))
    }

    fn title(&mut self) -> Result<String, OpError> {
        let len = u16::from_be_bytes(self.array("truncated title length")?) as usize;
        if len > MAX_TITLE_BYTES {
            return Err(OpError::Malformed("title too long"));
        }
        self.utf8(len, "truncated title")
    }

    fn member(&mut self) -> Result<Member, OpError> {
        let [len] = self.array::<1>("truncated handle length")?;
        let len = len as usize;
        if len == 0 || len > MAX_HANDLE_BYTES {
            return Err(OpError::Malformed("bad handle length"));
        }
        let handle = self.utf8(len, "truncated handle")?;
        let curve25519 = self.array("truncated member key")?;
        let ed25519 = self.array("truncated member key")?;
        let member = Member {
            handle,
            identity: PublicIdentity {
                curve25519,
                ed25519,
            },
        };
        member
            .check()
            .map_err(|_| OpError::Malformed("bad member"))?;
        Ok(member)
    }
}

impl SignedOp {
    /// Sign `op` with `identity` on top of `prev` (checking caps).
    pub fn sign(
        identity: &Identity,
        group: GroupId,
        prev: [u8; 32],
        timestamp_ms: u64,
        op: GroupOp,
    ) -> Result<Self, OpError> {
        let mut signed = Self {
            group,
            prev,
            timestamp_ms,
            signer: identity.public().ed25519,
            op,
            signature: [0; 64],
        };
        let mut message = CONTEXT.to_vec();
        message.extend_from_slice(&signed.signed_bytes()?);
        signed.signature = identity.sign(&message);
        Ok(signed)
    }

    /// The bytes the signature covers (without the context string).
    fn signed_bytes(&self) -> Result<Vec<u8>, OpError> {
        let mut out = Vec::with_capacity(HEADER + 64);
        out.push(VERSION);
        out.extend_from_slice(&self.group.0);
        out.extend_from_slice(&self.prev);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.signer);
        match &self.op {
            GroupOp::Create { title, creator } => {
                out.push(OP_CREATE);
                put_title(&mut out, title)?;
                put_member(&mut out, creator)?;
            }
            GroupOp::Add(member) => {
                out.push(OP_ADD);
                put_member(&mut out, member)?;
            }
            GroupOp::Remove(key) => {
                out.push(OP_REMOVE);
                out.extend_from_slice(key);
            }
            GroupOp::Promote(key) => {
                out.push(OP_PROMOTE);
                out.extend_from_slice(key);
            }
            GroupOp::Rename(title) => {
                out.push(OP_RENAME);
                put_title(&mut out, title)?;
            }
            GroupOp::Leave => out.push(OP_LEAVE),
        }
        Ok(out)
    }

    /// Encode for the wire (an envelope of kind 6) or for storage.
    pub fn encode(&self) -> Result<Vec<u8>, OpError> {
        let mut out = self.signed_bytes()?;
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Decode (hostile input). Checks structure only; [`GroupState::apply`]
    /// checks the signature and the rules.
    pub fn decode(bytes: &[u8]) -> Result<Self, OpError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(OpError::Malformed("too long"));
        }
        let mut r = Reader(bytes);
        let [version] = r.array::<1>("truncated header")?;
        if version != VERSION {
            return Err(OpError::Malformed("unknown version"));
        }
        let group = GroupId(r.array("truncated header")?);
        let prev = r.array("truncated header")?;
        let timestamp_ms = u64::from_be_bytes(r.array("truncated header")?);
        let signer = r.array("truncated header")?;
        let [kind] = r.array::<1>("truncated op")?;
        let op = match kind {
            OP_CREATE => {
                let title = r.title()?;
                let creator = r.member()?;
                GroupOp::Create { title, creator }
            }
            OP_ADD => GroupOp::Add(r.member()?),
            OP_REMOVE => GroupOp::Remove(r.array("truncated key")?),
            OP_PROMOTE => GroupOp::Promote(r.array("truncated key")?),
            OP_RENAME => GroupOp::Rename(r.title()?),
            OP_LEAVE => GroupOp::Leave,
            _ => return Err(OpError::Malformed("unknown op")),
        };
        let signature = r.array("truncated signature")?;
        if !r.0.is_empty() {
            return Err(OpError::Malformed("trailing bytes"));
        }
        Ok(Self {
            group,
            prev,
            timestamp_ms,
            signer,
            op,
            signature,
        })
    }

    /// The Ed25519 key of the member this op takes out of the group (the
    /// target of a remove, the signer of a leave): after applying it, the
    /// caller drops that member's sender keys and rotates its own.
    pub fn removed(&self) -> Option<[u8; 32]> {
        match &self.op {
            GroupOp::Remove(key) => Some(*key),
            GroupOp::Leave => Some(self.signer),
            _ => None,
        }
    }

    /// SHA-256 of the encoding: the `prev` of the op that follows this one.
    pub fn hash(&self) -> Result<[u8; 32], OpError> {
        Ok(Sha256::digest(self.encode()?).into())
    }

    fn verify(&self, signer: &PublicIdentity) -> Result<(), OpError> {
        let mut message = CONTEXT.to_vec();
        message.extend_from_slice(&self.signed_bytes()?);
        signer
            .verify(&message, &self.signature)
            .map_err(|_| OpError::BadSignature)
    }
}

/// A group as every member's client sees it after checking each op.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupState {
    id: GroupId,
    title: String,
    /// In the order they joined.
    members: Vec<(Member, Role)>,
    version: u64,
    head: [u8; 32],
    updated_at_ms: u64,
}

impl std::fmt::Debug for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupState")
            .field("id", &self.id)
            .field("title_bytes", &self.title.len())
            .field("members", &self.members.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl GroupState {
    /// Start a new group with a random id: returns the state and the create
    /// op to send to members as they are added.
    pub fn create(
        creator: &Identity,
        handle: &str,
        title: &str,
        now_ms: u64,
    ) -> Result<(Self, SignedOp), OpError> {
        let op = GroupOp::Create {
            title: title.to_owned(),
            creator: Member {
                handle: handle.to_owned(),
                identity: creator.public(),
            },
        };
        let signed = SignedOp::sign(creator, GroupId::random(), [0; 32], now_ms, op)?;
        let state = Self::from_create(&signed)?;
        Ok((state, signed))
    }

    /// The state a create op (received from another member) describes.
    pub fn from_create(op: &SignedOp) -> Result<Self, OpError> {
        let GroupOp::Create { title, creator } = &op.op else {
            return Err(OpError::BadCreate);
        };
        if op.prev != [0; 32] || creator.identity.ed25519 != op.signer {
            return Err(OpError::BadCreate);
        }
        if title.len() > MAX_TITLE_BYTES {
            return Err(OpError::TitleTooLong(title.len()));
        }
        creator.check()?;
        op.verify(&creator.identity)?;
        Ok(Self {
            id: op.group,
            title: title.clone(),
            members: vec![(creator.clone(), Role::Admin)],
            version: 1,
            head: op.hash()?,
            updated_at_ms: op.timestamp_ms,
        })
    }

    /// Rebuild a group from its ops, create first (as stored by a member,
    /// or as received by a new member), checking every one.
    pub fn replay<'a>(ops: impl IntoIterator<Item = &'a SignedOp>) -> Result<Self, OpError> {
        let mut ops = ops.into_iter();
        let mut state = Self::from_create(ops.next().ok_or(OpError::BadCreate)?)?;
        for op in ops {
            state = state.apply(op)?;
        }
        Ok(state)
    }

    /// Sign `op` as `identity` on top of this state. The result is what
    /// [`GroupState::apply`] accepts (if the rules allow it) and what the
    /// caller sends to every member.
    pub fn propose(
        &self,
        identity: &Identity,
        now_ms: u64,
        op: GroupOp,
    ) -> Result<SignedOp, OpError> {
        SignedOp::sign(identity, self.id, self.head, now_ms, op)
    }

    /// Check `op` against this state (signature, signer's role, chain,
    /// caps) and return the state after it.
    pub fn apply(&self, op: &SignedOp) -> Result<Self, OpError> {
        if op.group != self.id {
            return Err(OpError::WrongGroup);
        }
        if op.prev != self.head {
            return Err(OpError::ChainMismatch);
        }
        let (signer, signer_role) = self.find(&op.signer).ok_or(OpError::NotMember)?;
        op.verify(&signer.identity)?;
        let mut next = self.clone();
        let admin = signer_role == Role::Admin;
        let require_admin = || {
            if admin {
                Ok(())
            } else {
                Err(OpError::NotAdmin)
            }
        };
        match &op.op {
            GroupOp::Create { .. } => return Err(OpError::BadCreate),
            GroupOp::Add(member) => {
                require_admin()?;
                member.check()?;
                if self.find(&member.identity.ed25519).is_some()
                    || self.members.iter().any(|(m, _)| m.handle == member.handle)
                {
                    return Err(OpError::AlreadyMember);
                }
                if self.members.len() >= MAX_MEMBERS {
                    return Err(OpError::TooManyMembers);
                }
                next.members.push((member.clone(), Role::Member));
            }
            GroupOp::Remove(key) => {
                require_admin()?;
                next.remove(key)?;
            }
            GroupOp::Promote(key) => {
                require_admin()?;
                let entry = next
                    .members
                    .iter_mut()
                    .find(|(m, _)| &m.identity.ed25519 == key)
                    .ok_or(OpError::NoSuchMember)?;
                if entry.1 == Role::Admin {
                    return Err(OpError::AlreadyAdmin);
                }
                entry.1 = Role::Admin;
            }
            GroupOp::Rename(title) => {
                require_admin()?;
                if title.len() > MAX_TITLE_BYTES {
                    return Err(OpError::TitleTooLong(title.len()));
                }
                next.title = title.clone();
            }
            GroupOp::Leave => next.remove(&op.signer)?,
        }
        next.version += 1;
        next.head = op.hash()?;
        next.updated_at_ms = op.timestamp_ms;
        Ok(next)
    }

    fn remove(&mut self, key: &[u8; 32]) -> Result<(), OpError> {
        let at = self
            .members
            .iter()
            .position(|(m, _)| &m.identity.ed25519 == key)
            .ok_or(OpError::NoSuchMember)?;
        self.members.remove(at);
        let admins = self
            .members
            .iter()
            .filter(|(_, r)| *r == Role::Admin)
            .count();
        if admins == 0 && !self.members.is_empty() {
            return Err(OpError::LastAdmin);
        }
        Ok(())
    }

    fn find(&self, ed25519: &[u8; 32]) -> Option<(&Member, Role)> {
        self.members
            .iter()
            .find(|(m, _)| &m.identity.ed25519 == ed25519)
            .map(|(m, r)| (m, *r))
    }

    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The current title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Members and roles, in the order they joined.
    pub fn members(&self) -> impl Iterator<Item = (&Member, Role)> {
        self.members.iter().map(|(m, r)| (m, *r))
    }

    /// The role of the member with this Ed25519 key, if a member.
    pub fn role_of(&self, ed25519: &[u8; 32]) -> Option<Role> {
        self.find(ed25519).map(|(_, r)| r)
    }

    /// The member with this handle, if any.
    pub fn member_by_handle(&self, handle: &str) -> Option<(&Member, Role)> {
        self.members
            .iter()
            .find(|(m, _)| m.handle == handle)
            .map(|(m, r)| (m, *r))
    }

    /// Number of ops applied (1 after create).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Hash of the last op applied: the `prev` of the next one.
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// Timestamp of the last op applied (the signer's clock).
    pub fn updated_at_ms(&self) -> u64 {
        self.updated_at_ms
    }
}

#[cfg(test)]
mod tests;
