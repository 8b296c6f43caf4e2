//! The Ponte client library.
//!
//! What lives where:
//! - [`profile`]: the profile directory (where it is, creating and opening
//!   it, the passphrase or key file that unlocks it);
//! - [`atrest`]: the profile key and per-field encryption at rest;
//! - [`store`]: the SQLite database: identity, contacts, sessions, history,
//!   outbox, tick states, deduplication;
//! - [`route`]: how bytes reach the server ([`route::Route`]: direct TCP,
//!   or through a relay over `tcp://` / `tls://` / stealth), relay URLs
//!   and share links, and the happy-eyeballs race between routes;
//! - [`stealth`]: the opening of a stealth relay route (a Chrome-shaped
//!   ClientHello carrying the link's tag, the relay's tag checked);
//! - [`connection`]: one authenticated connection to a server over a route
//!   (Noise transport, protobuf requests and pushes);
//! - [`client`]: the operations the CLI exposes (register, send, sync,
//!   listen, history, contacts, verify) on top of all the above.
//!
//! Nothing sensitive is logged: tracing events name handles and message ids
//! at most, never text.

#![forbid(unsafe_code)]

pub mod atrest;
pub mod client;
pub mod connection;
pub mod profile;
pub mod route;
pub mod stealth;
pub mod store;

pub use client::Client;
pub use profile::Profile;

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::Db(e)
    }
}
pub use store::{Contact, MessageView, Status, Update};

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The database failed. (The cause is part of the message, so it is
    /// not also a `source`: a report of the error chain would say it twice.)
    #[error("profile database: {0}")]
    Db(rusqlite::Error),
    /// A file operation on the profile failed (the OS error is in the
    /// message, not a `source`, for the same reason).
    #[error("{context}: {error}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// Stored data did not decrypt or parse.
    #[error("profile data is corrupt or was tampered with ({0})")]
    Corrupt(&'static str),
    /// The passphrase does not unlock the profile.
    #[error("wrong passphrase for this profile")]
    WrongPassphrase,
    /// The profile is protected by a passphrase and none was given.
    #[error(
        "this profile is protected by a passphrase: set PONTE_PASSPHRASE or run in a terminal"
    )]
    PassphraseRequired,
    /// No profile (or no registered account) at this location.
    #[error("no registered profile in {0} (run `ponte register` first)")]
    NotRegistered(String),
    /// `register` on a profile that already has an account.
    #[error("the profile in {0} is already registered as {1}")]
    AlreadyRegistered(String, String),
    /// A contact handle is unknown locally.
    #[error("unknown contact {0}")]
    UnknownContact(String),
    /// A contact's identity key changed; sending is refused until re-verified.
    #[error(
        "SECURITY: {0}'s identity key has CHANGED. Messages to {0} are held until you compare \
         safety numbers (`ponte verify {0}`) and confirm (`ponte verify {0} --confirm`)"
    )]
    KeyChanged(String),
    /// End-to-end layer error.
    #[error("end-to-end encryption: {0}")]
    E2e(#[from] ponte_e2e::Error),
    /// The server address is malformed.
    #[error("server address: {0}")]
    Address(String),
    /// Could not reach the server over any route.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server did not prove the key in its address (wrong server, or a
    /// relay or network attacker in the middle).
    #[error("the server at this address does not hold the key in the address: refusing to talk to it ({0})")]
    ServerKeyMismatch(String),
    /// The server answered a request with an error.
    #[error("server refused: {code} ({detail})")]
    Server {
        /// Protocol error code name.
        code: String,
        /// Server's explanation (for humans).
        detail: String,
    },
    /// The server closed or broke the connection.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The encrypted bytes did not authenticate: something on the route (a
    /// relay, or the network) altered, replayed or injected data. The
    /// connection is dropped; nothing it carried was trusted.
    #[error("TAMPERING: {0}")]
    Tampered(String),
    /// The server broke the protocol.
    #[error("protocol violation by server: {0}")]
    Protocol(String),
    /// A bad argument (handle syntax, empty text...).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
