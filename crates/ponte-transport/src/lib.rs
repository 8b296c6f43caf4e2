//! The Noise channel between a Ponte client and a Ponte server, over any
//! tokio byte stream (TCP, TLS through a relay, an in-memory duplex).
//!
//! - [`connect`] / [`connect_tcp`] (client) and [`accept`] /
//!   [`accept_with_prefix`] (server) run the handshake under a timeout and
//!   return a [`Channel`].
//! - A [`Channel`] sends and receives application frames (protobuf messages,
//!   see `ponte_wire::frame`); [`Channel::split`] gives a reader and a writer
//!   half for concurrent use.
//! - [`Keypair`] is a Noise static (X25519) key pair whose `Debug` hides the
//!   secret.
//!
//! # Wire format
//!
//! ```text
//! client                                                   server
//!   │  [PROXY header]  (only when a relay added one)          │
//!   │  preamble: version=0x01 (1 byte), suite (1 byte)        │
//!   │            0x01 = XX, 0x02 = IK (ChaChaPoly)            │
//!   │            0x11 = XX, 0x12 = IK (AESGCM)                │
//!   │  u16 len ‖ handshake message 1        ───────────────►  │
//!   │  ◄──────────────────────────  u16 len ‖ handshake msg 2 │
//!   │  (XX only) u16 len ‖ handshake msg 3  ───────────────►  │
//!   │  u16 len ‖ transport message (ciphertext) …   ◄──────►  │
//! ```
//!
//! The Noise protocol names are `Noise_{XX,IK}_25519_{ChaChaPoly,AESGCM}_BLAKE2s`;
//! the client picks the cipher ([`Cipher::preferred`]: AES-256-GCM where
//! the CPU has AES instructions), the server accepts both. A server from
//! before the choice knows only `0x01` and `0x02` and closes on the others
//! without answering; the Ponte client then tries again with ChaChaPoly.
//!
//! All lengths are big-endian. The Noise prologue is `"ponte-noise-v1"`
//! followed by the two preamble bytes, so tampering with them fails the
//! handshake. Handshake payloads are empty. A handshake message longer than
//! [`MAX_HANDSHAKE_MSG`] is refused before it is read. In IK, when the server
//! cannot decrypt message 1 (the client expects another server key), it
//! answers a zero length (`00 00`) and closes; the client reports
//! [`TransportError::ServerKeyMismatch`]. In XX, the client compares the
//! server's static key from message 2 with the expected one before sending
//! message 3.
//!
//! The decrypted transport messages form one byte stream that carries
//! application frames (`u32 len ‖ protobuf`, capped at `max_frame_len`); a
//! frame may span several Noise messages (each at most 65,535 bytes on the
//! wire, 65,519 of plaintext).

#![forbid(unsafe_code)]

use ponte_wire::frame::FrameError;
use std::io;
use std::time::Duration;
use thiserror::Error;

pub use ponte_wire::frame::MAX_FRAME_LEN;

/// Protocol version byte sent first by the client.
pub const PROTOCOL_VERSION: u8 = 1;
/// Prologue prefix mixed into the handshake hash (followed by the preamble).
pub const PROLOGUE: &[u8] = b"ponte-noise-v1";
/// Largest handshake message accepted (the real ones are under 100 bytes).
pub const MAX_HANDSHAKE_MSG: usize = 1024;
/// Largest Noise message on the wire.
pub const MAX_NOISE_MSG: usize = 65535;
/// Authentication tag length of both ciphers.
pub const TAG_LEN: usize = 16;
/// Largest plaintext carried by one Noise transport message.
pub const MAX_NOISE_PLAINTEXT: usize = MAX_NOISE_MSG - TAG_LEN;
/// Default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the Noise channel.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not finish within the timeout.
    #[error("noise handshake timed out")]
    HandshakeTimeout,
    /// The server does not hold the expected static key: a different server,
    /// a re-keyed server, or a man in the middle. Never connect anyway.
    #[error("server key mismatch: the server at this address is not the expected one")]
    ServerKeyMismatch {
        /// The key the client expected (from the server address).
        expected: [u8; 32],
        /// The key the server presented (known with XX; `None` with IK).
        actual: Option<[u8; 32]>,
    },
    /// The client's preamble names another protocol version.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The client's preamble names an unknown handshake pattern.
    #[error("unknown handshake pattern {0}")]
    UnknownPattern(u8),
    /// A handshake message is longer than [`MAX_HANDSHAKE_MSG`] (or empty where
    /// that is not allowed).
    #[error("bad handshake message length {0}")]
    HandshakeLength(usize),
    /// The peer answered in another protocol (its first bytes say which):
    /// the address or route leads to some other service.
    #[error("the other end does not speak Ponte: {0}")]
    NotPonte(&'static str),
    /// Noise rejected a handshake message.
    #[error("noise handshake failed: {0}")]
    Handshake(snow::Error),
    /// A transport message failed authentication or was too short.
    #[error("noise transport message failed to decrypt")]
    Decrypt,
    /// A frame exceeds the cap.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the stream in the middle of a message or handshake.
    #[error("connection closed mid-message")]
    UnexpectedEof,
    /// Local error encrypting (should not happen).
    #[error("noise encryption failed: {0}")]
    Encrypt(snow::Error),
    /// A frame could not be decoded as the expected protobuf message.
    #[error("malformed protobuf frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

mod channel;
mod cipher;
mod handshake;
mod keys;

pub use channel::{Channel, ChannelReader, ChannelWriter};
pub use handshake::{accept, accept_with_prefix, connect, connect_tcp};
pub use keys::{Cipher, ClientConfig, Keypair, Pattern, ServerConfig};
