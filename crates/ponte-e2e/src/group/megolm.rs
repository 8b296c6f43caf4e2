//! Megolm sender keys: one outbound session per (device, group), inbound
//! sessions for every other member.
//!
//! Each member encrypts its group messages with its own [`GroupSender`] (a
//! vodozemac Megolm `GroupSession`: a hash ratchet plus an Ed25519 key that
//! signs every message) and hands the [`SenderKey`] (the session key at the
//! ratchet's current index) to each other member pairwise, inside its Olm
//! session, as an envelope of kind 5. Those members feed it to their
//! [`GroupReceiver`] for the group.
//!
//! A sender session is replaced ("rotated") after [`MAX_SESSION_MESSAGES`]
//! messages, after [`MAX_SESSION_AGE_MS`] (7 days: half of Signal's two
//! weeks, because a stolen ratchet state here reads everything later in its
//! session and Ponte's groups are small enough that sending a new key to
//! every member weekly is cheap), and whenever a member is removed or leaves
//! (the caller calls [`GroupSender::rotate`]). A removed member never gets
//! the new key, so it reads nothing sent afterwards; a new member gets the
//! key at the current index, from which the ratchet cannot be run
//! backwards, so it reads nothing sent before it joined.
//!
//! [`GroupCiphertext`] bytes (the body of `SendGroupMessage`):
//!
//! ```text
//! +---------+----------+------------+---------------------------------+
//! | version | group id | session id | vodozemac Megolm message bytes  |
//! |  0x01   | 16 bytes | 32 bytes   | (index, AES ciphertext, MAC,    |
//! |         |          |            |  Ed25519 signature)             |
//! +---------+----------+------------+---------------------------------+
//! ```
//!
//! The session id is the session's public Ed25519 key; the receiver looks a
//! session up by (sender's identity key, session id), so a session key can
//! only ever decrypt messages attributed to the member who sent it pairwise.

use super::{GroupId, GroupState};
use crate::envelope::{Envelope, Extensions};
use crate::session::MAX_CIPHERTEXT_BYTES;
use crate::{Error, Result};
use std::collections::HashMap;
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionKey,
};
use vodozemac::Ed25519PublicKey;

/// Messages one sender session encrypts before it is rotated.
pub const MAX_SESSION_MESSAGES: u32 = 100;
/// Age after which a sender session is rotated (7 days, in milliseconds).
pub const MAX_SESSION_AGE_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Inbound sessions kept per sender (older ones are dropped), so messages
/// still in flight across a few rotations decrypt, and a hostile member
/// cannot grow a receiver without bound.
pub const MAX_SESSIONS_PER_SENDER: usize = 8;
/// Longest encoded session key accepted (vodozemac's are 229 bytes).
pub const MAX_SENDER_KEY_BYTES: usize = 512;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 16 + 32;

fn session_id_bytes(base64: &str) -> Result<[u8; 32]> {
    Ed25519PublicKey::from_base64(base64)
        .map(|k| *k.as_bytes())
        .map_err(|_| Error::InvalidKey)
}

/// A Megolm session key for one group, as sent pairwise (envelope kind 5).
#[derive(Clone, PartialEq, Eq)]
pub struct SenderKey {
    /// The group the key is for.
    pub group: GroupId,
    key: Vec<u8>,
}

impl std::fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key itself is a secret.
        f.debug_struct("SenderKey")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl SenderKey {
    /// Parse received bytes (hostile input): length capped, then decoded and
    /// its signature checked by vodozemac.
    pub fn from_parts(group: GroupId, key: &[u8]) -> Result<Self> {
        if key.len() > MAX_SENDER_KEY_BYTES {
            return Err(Error::MalformedGroupMessage("sender key too long"));
        }
        SessionKey::from_bytes(key).map_err(|_| Error::MalformedGroupMessage("bad sender key"))?;
        Ok(Self {
            group,
            key: key.to_vec(),
        })
    }

    /// The encoded vodozemac session key.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key
    }

    fn session_key(&self) -> Result<SessionKey> {
        SessionKey::from_bytes(&self.key)
            .map_err(|_| Error::MalformedGroupMessage("bad sender key"))
    }
}

/// An encrypted group message: what the server stores once and fans out.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupCiphertext {
    /// The group (the same id the server sees as `group_id`).
    pub group: GroupId,
    session_id: [u8; 32],
    message: Vec<u8>,
}

impl std::fmt::Debug for GroupCiphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCiphertext")
            .field("group", &self.group)
            .field("len", &self.message.len())
            .finish()
    }
}

impl GroupCiphertext {
    /// Serialize for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.message.len());
        out.push(VERSION);
        out.extend_from_slice(&self.group.0);
        out.extend_from_slice(&self.session_id);
        out.extend_from_slice(&self.message);
        out
    }

    /// Parse wire bytes (hostile input: capped, version checked, the Megolm
    /// structure decoded).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CIPHERTEXT_BYTES {
            return Err(Error::MalformedGroupMessage("too long"));
        }
        if bytes.len() < HEADER {
            return Err(Error::MalformedGroupMessage("truncated"));
        }
        if bytes[0] != VERSION {
            return Err(Error::MalformedGroupMessage("unknown version"));
        }
        let mut group = [0u8; 16];
        group.copy_from_slice(&bytes[1..17]);
        let mut session_id = [0u8; 32];
        session_id.copy_from_slice(&bytes[17..HEADER]);
        let message = bytes[HEADER..].to_vec();
        MegolmMessage::from_bytes(&message)
            .map_err(|_| Error::MalformedGroupMessage("invalid Megolm message"))?;
        Ok(Self {
            group: GroupId(group),
            session_id,
            message,
        })
    }
}

/// What [`GroupSender::encrypt`] produced.
#[derive(Debug)]
pub struct GroupOutbound {
    /// Set when the session was rotated for this message: send this key to
    /// every other member (pairwise) before the ciphertext.
    pub rotated: Option<SenderKey>,
    /// The message for `SendGroupMessage`.
    pub ciphertext: GroupCiphertext,
}

/// This device's outbound Megolm session for one group.
pub struct GroupSender {
    group: GroupId,
    session: GroupSession,
    created_at_ms: u64,
}

impl std::fmt::Debug for GroupSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSender")
            .field("group", &self.group)
            .field("index", &self.session.message_index())
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

impl GroupSender {
    /// A fresh session for `group`.
    pub fn new(group: GroupId, now_ms: u64) -> Self {
        Self {
            group,
            session: GroupSession::new(SessionConfig::version_2()),
            created_at_ms: now_ms,
        }
    }

    /// The key at the current index: send it to a member who joins (they
    /// cannot read what was sent before) and to everyone after a rotation.
    pub fn sender_key(&self) -> SenderKey {
        SenderKey {
            group: self.group,
            key: self.session.session_key().to_bytes(),
        }
    }

    /// Messages encrypted with the current session.
    pub fn message_index(&self) -> u32 {
        self.session.message_index()
    }

    /// Whether the current session is due for rotation (count or age).
    pub fn needs_rotation(&self, now_ms: u64) -> bool {
        self.session.message_index() >= MAX_SESSION_MESSAGES
            || now_ms.saturating_sub(self.created_at_ms) >= MAX_SESSION_AGE_MS
    }

    /// Replace the session (after a member was removed or left, or when
    /// due) and return the new key for the remaining members.
    pub fn rotate(&mut self, now_ms: u64) -> SenderKey {
        *self = Self::new(self.group, now_ms);
        self.sender_key()
    }

    /// Encrypt a group envelope (kind 4, group text, or kind 8, group
    /// file), rotating first if the session is due.
    pub fn encrypt(&mut self, envelope: &Envelope, now_ms: u64) -> Result<GroupOutbound> {
        self.encrypt_with(envelope, &Extensions::default(), now_ms)
    }

    /// [`GroupSender::encrypt`] with envelope extensions after the body
    /// (a reply's quoted id), encoded as in a pairwise envelope.
    pub fn encrypt_with(
        &mut self,
        envelope: &Envelope,
        extensions: &Extensions,
        now_ms: u64,
    ) -> Result<GroupOutbound> {
        match envelope.payload.group_message() {
            Some(group) if group == self.group => {}
            Some(_) => return Err(Error::WrongGroup),
            None => return Err(Error::MalformedGroupMessage("not a group message")),
        }
        let plaintext = envelope.encode_with(extensions)?;
        let rotated = self.needs_rotation(now_ms).then(|| self.rotate(now_ms));
        let message = self.session.encrypt(&plaintext);
        Ok(GroupOutbound {
            rotated,
            ciphertext: GroupCiphertext {
                group: self.group,
                session_id: session_id_bytes(&self.session.session_id())?,
                message: message.to_bytes(),
            },
        })
    }

    /// Serialize, the session encrypted with `key`.
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        format!(
            "{}.{}.{}",
            self.group.to_hex(),
            self.created_at_ms,
            self.session.pickle().encrypt(key)
        )
    }

    /// Restore from [`GroupSender::pickle`] output.
    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self> {
        let mut parts = pickle.splitn(3, '.');
        let (Some(group), Some(created), Some(session)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::MalformedGroupMessage("bad sender pickle"));
        };
        let group =
            GroupId::from_hex(group).ok_or(Error::MalformedGroupMessage("bad sender pickle"))?;
        let created_at_ms = created
            .parse()
            .map_err(|_| Error::MalformedGroupMessage("bad sender pickle"))?;
        let session = GroupSessionPickle::from_encrypted(session, key).map_err(Error::Pickle)?;
        Ok(Self {
            group,
            session: GroupSession::from_pickle(session),
            created_at_ms,
        })
    }
}

/// The other members' inbound Megolm sessions for one group, by the
/// sender's Ed25519 identity key and session id.
pub struct GroupReceiver {
    group: GroupId,
    /// Per sender, oldest first.
    sessions: HashMap<[u8; 32], Vec<([u8; 32], InboundGroupSession)>>,
}

impl std::fmt::Debug for GroupReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupReceiver")
            .field("group", &self.group)
            .field("senders", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// A decrypted group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlaintext {
    /// The envelope (kind 4 or 8, its group checked).
    pub envelope: Envelope,
    /// The extensions after its body (unknown ones skipped).
    pub extensions: Extensions,
    /// Megolm's message index within the sender's session.
    pub message_index: u32,
}

impl GroupReceiver {
    /// An empty receiver for `group`.
    pub fn new(group: GroupId) -> Self {
        Self {
            group,
            sessions: HashMap::new(),
        }
    }

    fn check_member(&self, state: &GroupState, sender: &[u8; 32]) -> Result<()> {
        if state.id() != self.group {
            return Err(Error::WrongGroup);
        }
        state
            .role_of(sender)
            .map(|_| ())
            .ok_or(Error::NotGroupMember)
    }

    /// Take a sender key that arrived pairwise, over the Olm session with the
    /// identity whose Ed25519 key is `sender`; refused unless that identity
    /// is a member in `state`. A key for a session already known is ignored
    /// (the first one received decrypts the most).
    pub fn add_sender_key(
        &mut self,
        state: &GroupState,
        sender: &[u8; 32],
        key: &SenderKey,
    ) -> Result<()> {
        self.check_member(state, sender)?;
        if key.group != self.group {
            return Err(Error::WrongGroup);
        }
        let session = InboundGroupSession::new(&key.session_key()?, SessionConfig::version_2());
        let id = session_id_bytes(&session.session_id())?;
        let list = self.sessions.entry(*sender).or_default();
        if list.iter().any(|(known, _)| *known == id) {
            return Ok(());
        }
        if list.len() >= MAX_SESSIONS_PER_SENDER {
            list.remove(0);
        }
        list.push((id, session));
        Ok(())
    }

    /// Forget every session of a member who left or was removed.
    pub fn remove_sender(&mut self, sender: &[u8; 32]) {
        self.sessions.remove(sender);
    }

    /// Decrypt a message the server attributes to `sender` (the Ed25519
    /// identity key of the member `Deliver.sender` names in `state`);
    /// refused unless `sender` is a member in `state`. The caller
    /// deduplicates by the envelope's message id (Megolm does not detect
    /// replays).
    pub fn decrypt(
        &mut self,
        state: &GroupState,
        sender: &[u8; 32],
        ciphertext: &GroupCiphertext,
    ) -> Result<GroupPlaintext> {
        self.check_member(state, sender)?;
        if ciphertext.group != self.group {
            return Err(Error::WrongGroup);
        }
        let session = self
            .sessions
            .get_mut(sender)
            .and_then(|list| list.iter_mut().find(|(id, _)| *id == ciphertext.session_id))
            .map(|(_, s)| s)
            .ok_or(Error::UnknownGroupSession)?;
        let message = MegolmMessage::from_bytes(&ciphertext.message)
            .map_err(|_| Error::MalformedGroupMessage("invalid Megolm message"))?;
        let decrypted = session.decrypt(&message).map_err(Error::GroupDecryption)?;
        let (envelope, extensions) = Envelope::decode_with(&decrypted.plaintext)?;
        match envelope.payload.group_message() {
            Some(group) if group == self.group => {}
            Some(_) => return Err(Error::WrongGroup),
            None => return Err(Error::MalformedGroupMessage("not a group message")),
        }
        Ok(GroupPlaintext {
            envelope,
            extensions,
            message_index: decrypted.message_index,
        })
    }

    /// Serialize, each session encrypted with `key`: one line per session,
    /// `sender-hex session-hex pickle`, after the group's hex id.
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        let mut out = self.group.to_hex();
        for (sender, list) in &self.sessions {
            for (id, session) in list {
                out.push('\n');
                out.push_str(&hex(sender));
                out.push(' ');
                out.push_str(&hex(id));
                out.push(' ');
                out.push_str(&session.pickle().encrypt(key));
            }
        }
        out
    }

    /// Restore from [`GroupReceiver::pickle`] output.
    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self> {
        const BAD: Error = Error::MalformedGroupMessage("bad receiver pickle");
        let mut lines = pickle.lines();
        let group = lines.next().and_then(GroupId::from_hex).ok_or(BAD)?;
        let mut receiver = Self::new(group);
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            let (Some(sender), Some(id), Some(session)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(BAD);
            };
            let sender = unhex32(sender).ok_or(BAD)?;
            let id = unhex32(id).ok_or(BAD)?;
            let session =
                InboundGroupSessionPickle::from_encrypted(session, key).map_err(Error::Pickle)?;
            let list = receiver.sessions.entry(sender).or_default();
            if list.len() >= MAX_SESSIONS_PER_SENDER {
                return Err(BAD);
            }
            list.push((id, InboundGroupSession::from_pickle(session)));
        }
        Ok(receiver)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
