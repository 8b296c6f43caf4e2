//! The transport half of Noise: one [`CipherState`] per direction, run
//! with ring directly, and [`Sealing`], which lays a send's plaintext out
//! as the Noise messages it becomes.
//!
//! snow runs the handshake; its split keys are taken raw
//! (`dangerously_get_raw_split`) and used here, because snow's transport
//! API copies every message from an input buffer into an output buffer
//! (which the caller must first zero) before it seals or opens it there.
//! On the data path of a file transfer that was two extra passes over
//! every byte at each end. Here a message is sealed and opened in place,
//! exactly as Noise specifies its `CipherState` (Noise revision 34, §5.1):
//! empty associated data, a 64-bit counter nonce that starts at 0 and
//! never repeats (2^64-1 is reserved, so a counter that reaches it fails),
//! encoded for AESGCM as 32 zero bits then the counter big-endian, for
//! ChaChaPoly as 32 zero bits then the counter little-endian. The tests
//! check that both directions agree with snow's own transport, byte for
//! byte.

use crate::{Cipher, TransportError, MAX_NOISE_PLAINTEXT, TAG_LEN};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use std::fmt;

/// Bytes of the length before each Noise transport message.
pub(crate) const MSG_LEN_PREFIX: usize = 2;

/// One direction's Noise cipher state: the key and the next nonce.
pub(crate) struct CipherState {
    /// Boxed: a key schedule is about a kilobyte, and a channel (two of
    /// them) lives in every connection's future.
    key: Box<LessSafeKey>,
    cipher: Cipher,
    nonce: u64,
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState")
            .field("cipher", &self.cipher)
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl CipherState {
    /// A cipher state with `key` (one half of the handshake's split) and
    /// nonce 0.
    pub(crate) fn new(cipher: Cipher, key: &[u8; 32]) -> Result<Self, TransportError> {
        let alg = match cipher {
            Cipher::AesGcm => &aead::AES_256_GCM,
            Cipher::ChaChaPoly => &aead::CHACHA20_POLY1305,
        };
        // (Both take 32-byte keys: this does not fail.)
        let key =
            UnboundKey::new(alg, key).map_err(|_| TransportError::Handshake(snow::Error::Input))?;
        Ok(Self {
            key: Box::new(LessSafeKey::new(key)),
            cipher,
            nonce: 0,
        })
    }

    /// The next nonce, or `None` once the counter reached Noise's
    /// reserved 2^64-1.
    fn next_nonce(&mut self) -> Option<Nonce> {
        if self.nonce == u64::MAX {
            return None;
        }
        let mut n = [0u8; aead::NONCE_LEN];
        n[4..].copy_from_slice(&match self.cipher {
            Cipher::AesGcm => self.nonce.to_be_bytes(),
            Cipher::ChaChaPoly => self.nonce.to_le_bytes(),
        });
        self.nonce += 1;
        Some(Nonce::assume_unique_for_key(n))
    }

    /// Encrypts `in_out` in place and returns the tag that follows it on
    /// the wire.
    pub(crate) fn seal_in_place(
        &mut self,
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], TransportError> {
        let nonce = self
            .next_nonce()
            .ok_or(TransportError::Encrypt(snow::Error::State(
                snow::error::StateProblem::Exhausted,
            )))?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), in_out)
            .map_err(|_| TransportError::Encrypt(snow::Error::Input))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts a message (ciphertext and tag) in place: its plaintext is
    /// then the first returned-many bytes of `in_out`.
    pub(crate) fn open_in_place(&mut self, in_out: &mut [u8]) -> Result<usize, TransportError> {
        let nonce = self.next_nonce().ok_or(TransportError::Decrypt)?;
        self.key
            .open_in_place(nonce, Aad::empty(), in_out)
            .map(|plain| plain.len())
            .map_err(|_| TransportError::Decrypt)
    }
}

/// A send's plaintext, sealed into Noise transport messages as it is
/// written: each message's plaintext goes straight into the output,
/// after room for its length, and is sealed there once it holds
/// [`MAX_NOISE_PLAINTEXT`] bytes or the send ends; its tag follows it.
/// So the bytes of a send are copied once, into the buffer the socket
/// writes from.
pub(crate) struct Sealing<'c> {
    cipher: &'c mut CipherState,
    out: Vec<u8>,
    /// Where the plaintext of the message being filled starts, if one is.
    open: Option<usize>,
}

impl<'c> Sealing<'c> {
    /// Starts a send of `plain_len` bytes of plaintext (to size the
    /// output; a wrong guess costs a reallocation, nothing else).
    pub(crate) fn new(cipher: &'c mut CipherState, plain_len: usize) -> Self {
        let messages = plain_len.div_ceil(MAX_NOISE_PLAINTEXT).max(1);
        Self {
            cipher,
            out: Vec::with_capacity(plain_len + messages * (MSG_LEN_PREFIX + TAG_LEN)),
            open: None,
        }
    }

    /// Appends `data` to the send's plaintext.
    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<(), TransportError> {
        while !data.is_empty() {
            let start = match self.open {
                Some(start) if self.out.len() - start < MAX_NOISE_PLAINTEXT => start,
                Some(_) => {
                    self.seal()?;
                    continue;
                }
                None => {
                    self.out.extend_from_slice(&[0; MSG_LEN_PREFIX]);
                    let start = self.out.len();
                    self.open = Some(start);
                    start
                }
            };
            let room = MAX_NOISE_PLAINTEXT - (self.out.len() - start);
            let (now, rest) = data.split_at(room.min(data.len()));
            self.out.extend_from_slice(now);
            data = rest;
        }
        Ok(())
    }

    /// Seals the message being filled, if one is.
    fn seal(&mut self) -> Result<(), TransportError> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        let tag = self.cipher.seal_in_place(&mut self.out[start..])?;
        self.out.extend_from_slice(&tag);
        let len = u16::try_from(self.out.len() - start)
            .map_err(|_| TransportError::HandshakeLength(self.out.len() - start))?;
        self.out[start - MSG_LEN_PREFIX..start].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// The send's bytes for the wire: nothing if nothing was written.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, TransportError> {
        self.seal()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests;
