//! The stealth relay's camouflage: a TLS 1.3 first flight that carries an
//! authentication tag, and the TLS record framing of the stream after it.
//! No I/O: the caller owns the sockets, the clock and the random source.
//!
//! A stealth relay listens where an ordinary HTTPS site would. A Ponte client
//! opens with a ClientHello shaped like a current Chrome's ([`template`]),
//! whose 32-byte session id is the tag ([`tag`]): it proves knowledge of the
//! link's [`Secret`] and carries the time. The relay parses the first record
//! ([`hello`]); a valid, fresh, unseen tag gets a reply shaped like a TLS 1.3
//! server's first flight whose server random proves the relay knows the
//! secret too, bound to the client's tag ([`reply`]). Noise then runs inside
//! application-data records ([`record`]). Anything else is handed to the
//! cover site by the relay, untouched (that is I/O, in `ponte-proxy`).
//!
//! ```text
//! client                                            relay
//!   record 0x16: ClientHello (Chrome template)  ->
//!     session_id = ts ^ mask(4) || HMAC(...)[0..28]
//!                                               <-  record 0x16: ServerHello
//!                                                     random = HMAC(..., client tag, flight)
//!                                               <-  record 0x14: ChangeCipherSpec
//!                                               <-  record 0x17: opaque, server-flight sized
//!   record 0x14: ChangeCipherSpec               ->
//!   records 0x17: Noise stream                 <->  records 0x17: Noise stream
//! ```
//!
//! The TLS layer is camouflage, not security: Noise inside still
//! authenticates the server end to end.
//!
//! With the feature `io`, [`stream`] adapts a tokio stream to the record
//! framing (the relay and the client share it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::fmt;

pub mod hello;
pub mod ja4;
pub mod record;
pub mod reply;
#[cfg(feature = "io")]
pub mod stream;
pub mod tag;
pub mod template;

#[cfg(test)]
mod tests;

/// Bytes in a link secret.
pub const SECRET_LEN: usize = 16;

/// A per-link secret: 16 random bytes, written in links and files as
/// unpadded base64url (22 characters). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// A secret from its bytes (the caller draws them from a CSPRNG).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Secret(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Reads the 22-character unpadded base64url text.
    pub fn from_text(text: &str) -> Result<Self, SecretError> {
        if text.len() != 22 {
            return Err(SecretError);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| SecretError)?;
        let bytes: [u8; SECRET_LEN] = bytes.try_into().map_err(|_| SecretError)?;
        Ok(Secret(bytes))
    }

    /// The 22-character unpadded base64url text.
    pub fn to_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A text that is not a link secret (22 characters of unpadded base64url).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a link secret: expected 22 characters of base64url")]
pub struct SecretError;
