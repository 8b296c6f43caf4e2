//! Ponte end-to-end encryption, pure and without I/O.
//!
//! What lives where:
//! - [`identity`]: a device identity ([`Identity`], a vodozemac Olm account:
//!   Curve25519 identity key + Ed25519 signing key), one-time and fallback
//!   keys ([`PreKey`]) for upload to the server's directory, signatures,
//!   and session creation (outbound from a claimed pre-key, inbound from a
//!   pre-key message).
//! - [`session`]: an Olm [`Session`] (double ratchet) and the [`Ciphertext`]
//!   that travels through the server.
//! - [`envelope`]: the versioned, padded plaintext [`Envelope`] inside each
//!   ciphertext (message id, sent_at, text, read receipt, file
//!   descriptor, group text, sender key or group op).
//! - [`group`]: groups: membership as signed, hash-chained operations
//!   ([`group::GroupState`], [`group::SignedOp`]) and messages under
//!   rotating Megolm sender keys ([`group::GroupSender`],
//!   [`group::GroupReceiver`]).
//! - [`file`]: file encryption (a key per file, chunked ChaCha20-Poly1305
//!   STREAM, size padding, ciphertext SHA-256) and file-name sanitising.
//! - [`safety`]: 60-digit [`SafetyNumber`]s and their QR payload.
//!
//! Secrets leave this crate only as vodozemac pickles encrypted with a
//! 32-byte key the caller supplies (the client derives it from its profile
//! key). Nothing here logs, reads files or opens sockets. Errors keep
//! vodozemac's typed reasons as their `source`.

#![forbid(unsafe_code)]

pub mod envelope;
pub mod file;
pub mod group;
pub mod identity;
pub mod safety;
pub mod session;

pub use envelope::{
    Envelope, Extensions, FileDescriptor, MessageId, Payload, Timer, TimerSetting, MAX_TEXT_BYTES,
};
pub use file::{FileError, FileKey};
pub use identity::{Identity, PreKey, PublicIdentity};
pub use safety::SafetyNumber;
pub use session::{Ciphertext, Session, MAX_CIPHERTEXT_BYTES};

/// Errors from the end-to-end layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A public key had the wrong length or was not a valid point.
    #[error("invalid public key")]
    InvalidKey,
    /// A signature does not verify against the signer's Ed25519 key.
    #[error("signature does not verify")]
    BadSignature,
    /// A ciphertext could not be parsed (truncated, unknown version or type, too long).
    #[error("malformed ciphertext: {0}")]
    MalformedCiphertext(&'static str),
    /// Decryption failed: the ciphertext was forged, replayed or belongs to
    /// another session (vodozemac's reason is the source).
    #[error("decryption failed")]
    Decryption(#[source] vodozemac::olm::DecryptionError),
    /// An inbound session could not be created from a pre-key message
    /// (vodozemac's reason is the source).
    #[error("cannot create inbound session")]
    SessionCreation(#[source] vodozemac::olm::SessionCreationError),
    /// An inbound session can only be created from a pre-key message.
    #[error("cannot create inbound session: not a pre-key message")]
    NotPreKey,
    /// A decrypted plaintext is not a valid envelope.
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(&'static str),
    /// A text message exceeds [`MAX_TEXT_BYTES`].
    #[error("message text too long ({0} bytes, at most {MAX_TEXT_BYTES})")]
    TextTooLong(usize),
    /// A group message or sender key could not be parsed (truncated, unknown
    /// version, too long, not a group envelope).
    #[error("malformed group message: {0}")]
    MalformedGroupMessage(&'static str),
    /// A group message, sender key or envelope names another group.
    #[error("group message is for another group")]
    WrongGroup,
    /// The sender of a group message or key is not a member of the group.
    #[error("sender is not a member of the group")]
    NotGroupMember,
    /// No sender key from this member for the message's Megolm session
    /// (never received, dropped after removal, or sent after a rotation the
    /// receiver was not given the key for).
    #[error("unknown group session")]
    UnknownGroupSession,
    /// Megolm decryption failed: forged, or before the index the receiver's
    /// key starts at (vodozemac's reason is the source).
    #[error("group decryption failed")]
    GroupDecryption(#[source] vodozemac::megolm::DecryptionError),
    /// A group op could not be encoded.
    #[error("group op: {0}")]
    GroupOp(#[source] group::OpError),
    /// A pickle could not be decrypted or parsed (wrong key or corrupted).
    #[error("cannot unpickle")]
    Pickle(#[source] vodozemac::PickleError),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
