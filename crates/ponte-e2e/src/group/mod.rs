//! Groups: membership as signed operations, messages under Megolm sender keys.
//!
//! - [`ops`]: [`GroupState`] and the [`SignedOp`]s (create, add, remove,
//!   promote, rename, leave) that every member checks and applies in chain
//!   order.
//! - [`megolm`]: [`GroupSender`] (this device's rotating Megolm session for
//!   one group) and [`GroupReceiver`] (the other members' sessions), and the
//!   [`GroupCiphertext`] the server fans out.
//!
//! Sender keys and ops travel pairwise, inside Olm sessions, as envelopes of
//! kinds 5 and 6 ([`crate::envelope`]); a group message's body goes once to
//! the server (`SendGroupMessage`) as a [`GroupCiphertext`] whose Megolm
//! plaintext is an envelope of kind 4.

pub mod megolm;
pub mod ops;

pub use megolm::{GroupCiphertext, GroupOutbound, GroupPlaintext, GroupSender, SenderKey};
pub use megolm::{GroupReceiver, MAX_SESSION_AGE_MS, MAX_SESSION_MESSAGES};
pub use ops::{GroupOp, GroupState, Member, OpError, Role, SignedOp, MAX_MEMBERS};

/// A group's 16-byte random id (the server's opaque `group_id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Lower-case hex (32 characters).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parse 32 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        crate::MessageId::from_hex(s).map(|id| Self(id.0))
    }
}

impl std::fmt::Debug for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupId({})", self.to_hex())
    }
}
