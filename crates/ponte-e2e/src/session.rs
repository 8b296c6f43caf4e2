//! Olm sessions and the ciphertext format that travels through the server.
//!
//! Ciphertext bytes (what the server stores and forwards, opaque to it):
//!
//! ```text
//! +---------+------+---------------------------------------+
//! | version | type | vodozemac Olm message bytes           |
//! |  0x01   | 0|1  | (0 = pre-key message, 1 = normal)     |
//! +---------+------+---------------------------------------+
//!   1 byte   1 byte  at most MAX_CIPHERTEXT_BYTES - 2
//! ```

use crate::{Error, Result};
use vodozemac::olm::{OlmMessage, SessionPickle};

/// Upper bound on a ciphertext, checked before parsing.
pub const MAX_CIPHERTEXT_BYTES: usize = 64 * 1024;

const CIPHERTEXT_VERSION: u8 = 1;

/// An encrypted Olm message.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext {
    prekey: bool,
    body: Vec<u8>,
}

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ciphertext")
            .field("prekey", &self.prekey)
            .field("len", &self.body.len())
            .finish()
    }
}

impl Ciphertext {
    /// Whether this is a pre-key message (the first messages of a session,
    /// able to create the session on the receiving side).
    pub fn is_prekey(&self) -> bool {
        self.prekey
    }

    /// Serialize for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 2);
        out.push(CIPHERTEXT_VERSION);
        out.push(if self.prekey { 0 } else { 1 });
        out.extend_from_slice(&self.body);
        out
    }

    /// Parse wire bytes (hostile input: length capped, version and type checked,
    /// and the Olm structure decoded).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_CIPHERTEXT_BYTES {
            return Err(Error::MalformedCiphertext("too long"));
        }
        let [version, kind, body @ ..] = bytes else {
            return Err(Error::MalformedCiphertext("truncated"));
        };
        if *version != CIPHERTEXT_VERSION {
            return Err(Error::MalformedCiphertext("unknown version"));
        }
        let prekey = match kind {
            0 => true,
            1 => false,
            _ => return Err(Error::MalformedCiphertext("unknown message type")),
        };
        let ciphertext = Self {
            prekey,
            body: body.to_vec(),
        };
        ciphertext.to_olm()?;
        Ok(ciphertext)
    }

    pub(crate) fn to_olm(&self) -> Result<OlmMessage> {
        OlmMessage::from_parts(if self.prekey { 0 } else { 1 }, &self.body)
            .map_err(|_| Error::MalformedCiphertext("invalid Olm message"))
    }

    fn from_olm(message: &OlmMessage) -> Self {
        let (kind, body) = message.to_parts();
        Self {
            prekey: kind == 0,
            body,
        }
    }
}

/// An Olm session (double ratchet) with one device of a contact.
pub struct Session {
    inner: vodozemac::olm::Session,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.session_id())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn from_vodozemac(inner: vodozemac::olm::Session) -> Self {
        Self { inner }
    }

    /// Globally unique session id (base64), shared by both ends.
    pub fn session_id(&self) -> String {
        self.inner.session_id()
    }

    /// Whether `ciphertext` is a pre-key message that belongs to this session
    /// (the peer keeps sending pre-key messages until it hears back).
    pub fn matches_prekey(&self, ciphertext: &Ciphertext) -> bool {
        match ciphertext.to_olm() {
            Ok(OlmMessage::PreKey(m)) => m.session_id() == self.session_id(),
            _ => false,
        }
    }

    /// Whether this session has received a message from the peer (after
    /// which our own messages are normal, not pre-key, messages).
    pub fn has_received_message(&self) -> bool {
        self.inner.has_received_message()
    }

    /// Encrypt a plaintext (normally an encoded [`crate::Envelope`]).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Ciphertext {
        Ciphertext::from_olm(&self.inner.encrypt(plaintext))
    }

    /// Decrypt a ciphertext. A failed attempt leaves the session usable.
    pub fn decrypt(&mut self, ciphertext: &Ciphertext) -> Result<Vec<u8>> {
        let message = ciphertext.to_olm()?;
        self.inner.decrypt(&message).map_err(Error::Decryption)
    }

    /// Serialize, encrypted with `key`.
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        self.inner.pickle().encrypt(key)
    }

    /// Restore from [`Session::pickle`] output.
    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self> {
        let pickle = SessionPickle::from_encrypted(pickle, key).map_err(Error::Pickle)?;
        Ok(Self {
            inner: vodozemac::olm::Session::from_pickle(pickle),
        })
    }
}
