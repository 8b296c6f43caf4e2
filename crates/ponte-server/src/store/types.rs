//! The store's domain types: accounts, keys, messages, mailbox items, and
//! the outcome of every job.

use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Row id of an account.
pub type AccountId = i64;

/// A mailbox item's sequence number: one sequence for every kind of item
/// and every mailbox, handed out in commit order and never reused; the key
/// of an ack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    /// Below every item: a mailbox read from the start is one after it.
    pub const ZERO: Seq = Seq(0);
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A point in time: milliseconds since the Unix epoch, as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// Now, by the system clock.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        UnixMillis(ms)
    }

    /// `d` later (saturating).
    pub fn plus(self, d: Duration) -> Self {
        UnixMillis(self.0.saturating_add(millis(d)))
    }

    /// `d` earlier (saturating).
    pub fn minus(self, d: Duration) -> Self {
        UnixMillis(self.0.saturating_sub(millis(d)))
    }

    /// As the protocol carries it (unsigned; a time before the epoch is 0).
    pub fn to_wire(self) -> u64 {
        u64::try_from(self.0).unwrap_or(0)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Kinds of mailbox items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A message for the owner.
    Message,
    /// The owner's message was delivered to `peer`.
    Receipt,
    /// The owner's message to `peer` expired undelivered.
    Expired,
}

impl ItemKind {
    pub(super) fn code(self) -> i64 {
        match self {
            ItemKind::Message => 0,
            ItemKind::Receipt => 1,
            ItemKind::Expired => 2,
        }
    }

    pub(super) fn from_code(c: i64) -> Option<Self> {
        match c {
            0 => Some(ItemKind::Message),
            1 => Some(ItemKind::Receipt),
            2 => Some(ItemKind::Expired),
            _ => None,
        }
    }
}

/// An account as stored.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    /// Row id.
    pub id: AccountId,
    /// Handle.
    pub handle: String,
    /// Device Noise static public key.
    pub noise_key: [u8; 32],
    /// Curve25519 identity key.
    pub curve25519: [u8; 32],
    /// Ed25519 signing key.
    pub ed25519: [u8; 32],
    /// Registration signature.
    pub signature: Vec<u8>,
}

/// What a login needs, read in one go.
#[derive(Debug, Clone)]
pub struct LoginInfo {
    /// The device's account.
    pub account: AccountInfo,
    /// Its key counts.
    pub keys: KeyCounts,
    /// Mailbox items waiting (messages, receipts, notices).
    pub pending: u32,
}

/// A public key with its signature.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The device's key id.
    pub key_id: Vec<u8>,
    /// Curve25519 public key.
    pub public_key: [u8; 32],
    /// Ed25519 signature (64 bytes).
    pub signature: Vec<u8>,
}

/// A registration request.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Handle (already syntax-checked).
    pub handle: String,
    /// Device Noise static key.
    pub noise_key: [u8; 32],
    /// Curve25519 identity key.
    pub curve25519: [u8; 32],
    /// Ed25519 key.
    pub ed25519: [u8; 32],
    /// Verified registration signature.
    pub signature: Vec<u8>,
    /// Invite token given, if any.
    pub invite: Option<String>,
    /// Whether an invite is required.
    pub invite_required: bool,
    /// Now.
    pub now: UnixMillis,
}

/// Result of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// Created.
    Created(AccountId),
    /// Handle already in use.
    HandleTaken,
    /// This device key already has an account.
    DeviceTaken,
    /// Invite-only and no token.
    InviteRequired,
    /// Unknown or used token.
    InviteInvalid,
}

/// One-time key count and fallback presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCounts {
    /// Unclaimed one-time keys.
    pub one_time_keys: u32,
    /// Fallback key on file.
    pub has_fallback: bool,
}

/// Result of a key upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Stored.
    Stored(KeyCounts),
    /// Would exceed the per-device one-time key limit; nothing stored.
    LimitExceeded,
}

/// A claimed key.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The account whose key was claimed.
    pub owner: AccountInfo,
    /// The key.
    pub key: KeyRecord,
    /// Whether it is the fallback key.
    pub fallback: bool,
    /// One-time keys left for the owner.
    pub remaining: u32,
}

/// Result of a claim.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// A key.
    Claimed(Box<Claimed>),
    /// No account with that handle.
    UnknownHandle,
    /// Neither one-time nor fallback key.
    NoKeys,
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Sender.
    pub sender: AccountId,
    /// Client message id.
    pub message_id: [u8; 16],
    /// Recipient handle.
    pub recipient: String,
    /// Ciphertext.
    pub body: Bytes,
    /// Now.
    pub now: UnixMillis,
    /// When it expires.
    pub expires_at: UnixMillis,
    /// Mailbox limit.
    pub max_pending: u32,
}

/// Result of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored.
    Accepted {
        /// Recipient account.
        recipient: AccountId,
        /// Mailbox seq.
        seq: Seq,
        /// Accept time.
        accepted_at: UnixMillis,
    },
    /// Same sender and message id seen before: not stored again.
    Duplicate {
        /// First accept time.
        accepted_at: UnixMillis,
    },
    /// No such handle.
    UnknownRecipient,
    /// Recipient's mailbox is full.
    MailboxFull,
}

/// A group message to store: one body for every recipient.
#[derive(Debug, Clone)]
pub struct NewGroupMessage {
    /// Sender.
    pub sender: AccountId,
    /// Client message id.
    pub message_id: [u8; 16],
    /// The group's opaque id, stored with each entry for its recipient.
    pub group_id: [u8; 16],
    /// Recipient handles, each once.
    pub recipients: Vec<String>,
    /// Ciphertext, stored once.
    pub body: Bytes,
    /// Now.
    pub now: UnixMillis,
    /// When the entries expire.
    pub expires_at: UnixMillis,
    /// Mailbox limit of each recipient.
    pub max_pending: u32,
}

/// Why one recipient of a group message did not get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No account has this handle.
    Unknown,
    /// The recipient's mailbox is full.
    MailboxFull,
    /// The sender itself.
    Sender,
}

/// Result of a group send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSendOutcome {
    /// Stored once, with an entry for every recipient not refused; when
    /// every recipient was refused nothing was stored (`entries` is 0) and
    /// the id stays unused.
    Accepted {
        /// Accept time.
        accepted_at: UnixMillis,
        /// Mailbox entries stored.
        entries: u32,
        /// Recipients refused, in request order.
        refused: Vec<(String, Refused)>,
    },
    /// Same sender and message id seen before: nothing stored.
    Duplicate {
        /// First accept time.
        accepted_at: UnixMillis,
    },
}

/// A delivery receipt stored by an acknowledgement, for pushing it to its
/// owner (the original sender) without reading it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    /// The original sender, who gets the receipt.
    pub owner: AccountId,
    /// The receipt's seq in the owner's mailbox.
    pub seq: Seq,
    /// The delivered message's id.
    pub message_id: Bytes,
    /// Delivery time.
    pub at: UnixMillis,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Messages deleted (a receipt was queued for each sender).
    pub messages: u64,
    /// Receipts and notices deleted.
    pub notices: u64,
    /// The receipts stored, in seq order.
    pub receipts: Vec<StoredReceipt>,
}

impl AckOutcome {
    /// Accounts that got a receipt, each once, in the receipts' order.
    pub fn notified(&self) -> Vec<AccountId> {
        let mut out: Vec<AccountId> = Vec::new();
        for r in &self.receipts {
            if !out.contains(&r.owner) {
                out.push(r.owner);
            }
        }
        out
    }
}

/// What an expiry sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireOutcome {
    /// Messages that expired (a notice was queued for each sender).
    pub expired_messages: u64,
    /// Receipts/notices dropped uncollected.
    pub dropped_notices: u64,
    /// Accounts that got a notice.
    pub notify: Vec<AccountId>,
    /// The sweep hit its per-run limit; run again.
    pub more: bool,
}

/// A mailbox item to push.
#[derive(Debug, Clone)]
pub struct MailItem {
    /// Sequence number (the ack key).
    pub seq: Seq,
    /// Kind.
    pub kind: ItemKind,
    /// Message id.
    pub message_id: Bytes,
    /// Body (messages only).
    pub body: Bytes,
    /// Accepted / delivered / expired time.
    pub at: UnixMillis,
    /// The other party's handle.
    pub peer_handle: String,
    /// The group a message was sent to (`None` for 1:1 messages and
    /// notices).
    pub group_id: Option<Bytes>,
}

/// What a committed batch hands to the [`Sink`](super::Sink), in commit
/// order.
#[derive(Debug, Clone)]
pub enum Committed {
    /// A mailbox item stored for `owner` (a message, or a delivery receipt):
    /// pushed from memory if the owner is online.
    Item {
        /// Whose mailbox holds it.
        owner: AccountId,
        /// The item, as a read of the mailbox would return it.
        item: MailItem,
    },
    /// Items were stored for this account that are not handed over
    /// (expired notices): its connection reads its mailbox.
    Wake(AccountId),
}
