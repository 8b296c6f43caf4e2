//! The requests a client sends inside the Noise channel, one module per
//! request (the layout of mini-redis' `cmd/`). Each implements [`Request`]
//! for its decoded message: an async fn from the request and a [`Context`]
//! to `Result<Reply, Refusal>`, with no access to the session. The session
//! (`session.rs`) decides from the trait's constants whether the request
//! needs a login and whether it runs in place or alongside others, and turns
//! the outcome into frames.
//!
//! A new request is one new file here and one line in the session's
//! dispatch.

mod ack;
mod claim_key;
mod download;
mod login;
mod lookup_identity;
mod ping;
mod register;
mod send;
mod send_group;
mod upload;
mod upload_keys;

use crate::session::Window;
use crate::store::{AccountInfo, KeyCounts, StoreError};
use crate::Shared;
use bytes::Bytes;
use ed25519_dalek::{Signature, VerifyingKey};
use ponte_wire::messages::{server_frame, ErrorCode};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// How the session runs a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runs {
    /// Awaited before the next frame is read: requests whose outcome
    /// changes the session (register, login) and reads.
    InPlace,
    /// Started, then answered whenever it completes, while the session goes
    /// on (up to `max_requests_in_flight`): database writes, which answer as
    /// they commit. What a request checks before its first wait is answered
    /// in place all the same.
    Alongside,
}

/// One kind of request.
pub(crate) trait Request: Send + Sized + 'static {
    /// Whether only a logged-in device may send it (answered
    /// `NOT_AUTHENTICATED` otherwise).
    const NEEDS_LOGIN: bool = true;
    /// How the session runs it.
    const RUNS: Runs;

    /// Bookkeeping on the session's delivery window before the request
    /// runs (an ack settles the pushes it acknowledges). Returns whether the
    /// session should push more of the mailbox once the request is started.
    fn settle(&mut self, _window: &mut Window) -> bool {
        false
    }

    /// Runs the request.
    fn run(self, cx: Context) -> impl Future<Output = Result<Reply, Refusal>> + Send + 'static;
}

/// The device on the other end of a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    /// The device's Noise static key (its identity to the server).
    pub device_key: [u8; 32],
    /// The client address for rate limiting (PROXY-reported when present).
    pub source_ip: IpAddr,
    /// The socket's peer (a relay, or the client itself).
    pub peer_ip: IpAddr,
}

/// What a request may use: the server's shared state, who sent it, and the
/// account it is logged in as.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub shared: Arc<Shared>,
    pub peer: Peer,
    pub account: Option<Arc<AccountInfo>>,
}

impl Context {
    /// The logged-in account (the session only runs a request that needs
    /// one after login; `NOT_AUTHENTICATED` otherwise all the same).
    pub fn account(&self) -> Result<&Arc<AccountInfo>, Refusal> {
        self.account
            .as_ref()
            .ok_or(Refusal::new(ErrorCode::NotAuthenticated, "log in first"))
    }
}

/// A request's successful outcome.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Answer with this body.
    Answer(server_frame::Body),
    /// Nothing to answer (an ack).
    Silent,
    /// The device is logged in (only from requests run in place).
    Online(Box<Online>),
}

/// A login's outcome: the session goes online as `account` (unless it
/// already is), answers, pushes the key count and then the mailbox.
#[derive(Debug)]
pub(crate) struct Online {
    pub account: AccountInfo,
    pub answer: server_frame::Body,
    /// The key counts, or `None` for the session to read them.
    pub keys: Option<KeyCounts>,
}

/// A request refused: the protocol's error code, a detail for the client,
/// and the message id a refused send is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub detail: &'static str,
    pub message_id: Option<Bytes>,
}

impl Refusal {
    pub fn new(code: ErrorCode, detail: &'static str) -> Self {
        Self {
            code,
            detail,
            message_id: None,
        }
    }

    /// The same refusal, about message `id`.
    pub fn about(self, id: Bytes) -> Self {
        Self {
            message_id: Some(id),
            ..self
        }
    }

    /// The store failed: logged (with what failed), and the client is told
    /// to try again later.
    pub fn unavailable(what: &str, e: &StoreError) -> Self {
        tracing::warn!("{what} failed: {}", crate::Chain(e));
        Self::new(ErrorCode::Unavailable, "try again later")
    }
}

pub(crate) fn arr<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.try_into().ok()
}

/// Whether `signature` is `ed25519`'s signature of `message` (strict).
pub(crate) fn verify(ed25519: &[u8; 32], message: &str, signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(ed25519) else {
        return false;
    };
    let Some(sig) = arr::<64>(signature) else {
        return false;
    };
    key.verify_strict(message.as_bytes(), &Signature::from_bytes(&sig))
        .is_ok()
}
