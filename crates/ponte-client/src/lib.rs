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
//! - [`error`]: [`ClientError`], the server's refusal codes and close
//!   reasons as enums, and [`Report`] to print an error with its causes;
//! - [`connection`]: one authenticated connection to a server over a route
//!   (Noise transport, protobuf requests and pushes);
//! - [`lock`]: the profile lock (`ponte app` holds the profile alone);
//! - [`client`]: the operations the CLI exposes (register, send, sync,
//!   listen, history, contacts, verify) on top of all the above.
//!
//! Nothing sensitive is logged: tracing events name handles and message ids
//! at most, never text.

#![forbid(unsafe_code)]

pub mod atrest;
pub mod client;
pub mod connection;
pub mod error;
pub mod lock;
pub mod profile;
pub mod route;
pub mod stealth;
pub mod store;

pub use client::Client;
pub use profile::Profile;

pub use error::{ClientError, CloseCode, Report, ServerCode};
pub use store::{
    Contact, Conversation, FileSummary, MessageView, Notice, Status, UnixMillis, Update,
};

/// Result alias.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
