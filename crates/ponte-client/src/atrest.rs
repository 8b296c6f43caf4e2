//! Encryption at rest: the profile key and per-field sealing.
//!
//! Every profile has one 32-byte *profile key*. It comes either from a
//! passphrase (Argon2id with a random 16-byte salt and the parameters stored
//! in the profile) or, when the user chose no passphrase, from a random key
//! kept in the file `profile.key` (mode 0600) next to the database, as
//! desktop messengers do. Two subkeys are derived from it with HKDF-SHA256:
//!
//! - the *field key*: ChaCha20-Poly1305 over each secret field (message text,
//!   receipt lists, the Noise private key). A sealed field is
//!   `nonce (12 random bytes) || ciphertext || tag`, with associated data
//!   naming the table, column and row, so a sealed value cannot be moved to
//!   another row unnoticed;
//! - the *pickle key*: handed to vodozemac to encrypt account and session
//!   pickles;
//! - the *search key*: HMAC-SHA256 key of the search index's terms (see
//!   `store::search`): a word is indexed as a keyed hash, never as text.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Argon2id cost parameters (stored in the profile so they can change later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// OWASP's recommended Argon2id setting (19 MiB, 2 passes, 1 lane).
    pub const DEFAULT: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    pub(crate) fn encode(&self) -> String {
        format!(
            "argon2id:m={},t={},p={}",
            self.memory_kib, self.iterations, self.parallelism
        )
    }

    pub(crate) fn decode(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("argon2id:")?;
        let mut m = None;
        let mut t = None;
        let mut p = None;
        for part in rest.split(',') {
            let (k, v) = part.split_once('=')?;
            let v: u32 = v.parse().ok()?;
            match k {
                "m" => m = Some(v),
                "t" => t = Some(v),
                "p" => p = Some(v),
                _ => return None,
            }
        }
        // Refuse absurd stored values (a tampered profile must not make us
        // allocate gigabytes): at most 1 GiB, 16 passes, 8 lanes.
        let params = Self {
            memory_kib: m?,
            iterations: t?,
            parallelism: p?,
        };
        (params.memory_kib <= 1024 * 1024 && params.iterations <= 16 && params.parallelism <= 8)
            .then_some(params)
    }
}

/// The profile key and its subkeys. Zeroed on drop; `Debug` shows nothing.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ProfileKey {
    field: [u8; 32],
    pickle: [u8; 32],
    search: [u8; 32],
}

impl std::fmt::Debug for ProfileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProfileKey(..)")
    }
}

/// Why sealing or unsealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The sealed value is shorter than a nonce and tag.
    #[error("sealed value truncated")]
    Truncated,
    /// Authentication failed: wrong key, tampered data, or moved to another row.
    #[error("sealed value does not authenticate (wrong key or tampered)")]
    Authentication,
    /// Argon2 rejected the parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

impl ProfileKey {
    /// Derive subkeys from 32 bytes of master key material.
    pub fn from_master(master: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"ponte-profile-v1"), master);
        let mut key = Self {
            field: [0; 32],
            pickle: [0; 32],
            search: [0; 32],
        };
        // `expand` only fails above 8160 bytes of output; 32 cannot fail.
        let _ = hk.expand(b"fields", &mut key.field);
        let _ = hk.expand(b"pickles", &mut key.pickle);
        let _ = hk.expand(b"search", &mut key.search);
        key
    }

    /// Derive from a passphrase with Argon2id.
    pub fn from_passphrase(
        passphrase: &str,
        salt: &[u8],
        params: KdfParams,
    ) -> Result<Self, SealError> {
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(
                params.memory_kib,
                params.iterations,
                params.parallelism,
                Some(32),
            )
            .map_err(|e| SealError::Kdf(e.to_string()))?,
        );
        let mut master = [0u8; 32];
        argon
            .hash_password_into(passphrase.as_bytes(), salt, &mut master)
            .map_err(|e| SealError::Kdf(e.to_string()))?;
        let key = Self::from_master(&master);
        master.zeroize();
        Ok(key)
    }

    /// The key vodozemac encrypts pickles with.
    pub fn pickle_key(&self) -> &[u8; 32] {
        &self.pickle
    }

    /// The search index's name for `term`: HMAC-SHA256 under the search
    /// key, truncated to 16 bytes. Equal terms get equal names (that is
    /// what makes it an index); nothing else about the term shows.
    pub fn search_term(&self, term: &[u8]) -> [u8; 16] {
        // HKDF-Expand with the search key as PRK is HMAC-SHA256(key,
        // term || 0x01): a keyed PRF, without another dependency.
        let mut out = [0u8; 16];
        if let Ok(hk) = Hkdf::<Sha256>::from_prk(&self.search) {
            // 16 bytes of output cannot fail.
            let _ = hk.expand(term, &mut out);
        }
        out
    }

    /// Encrypt `plaintext`; `aad` binds it to its place (table/column/row).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.field));
        let nonce: [u8; 12] = rand::random();
        let mut out = nonce.to_vec();
        // Encryption with a valid key and in-memory buffers cannot fail.
        match cipher.encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        ) {
            Ok(ct) => out.extend_from_slice(&ct),
            Err(_) => out.clear(),
        }
        out
    }

    /// Decrypt a value made by [`ProfileKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 12 + 16 {
            return Err(SealError::Truncated);
        }
        let (nonce, ct) = sealed.split_at(12);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.field));
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| SealError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seal_open_and_binding() {
        let key = ProfileKey::from_master(&[1; 32]);
        let sealed = key.seal(b"messages/body/1", b"hello");
        assert_eq!(key.open(b"messages/body/1", &sealed).unwrap(), b"hello");
        assert!(key.open(b"messages/body/2", &sealed).is_err());
        assert!(ProfileKey::from_master(&[2; 32])
            .open(b"messages/body/1", &sealed)
            .is_err());
        assert!(key.open(b"x", &sealed[..10]).is_err());
        // Random nonces: sealing twice gives different bytes.
        assert_ne!(sealed, key.seal(b"messages/body/1", b"hello"));
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn passphrase_derivation() {
        let small = KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let a = ProfileKey::from_passphrase("correct horse", b"0123456789abcdef", small).unwrap();
        let b = ProfileKey::from_passphrase("correct horse", b"0123456789abcdef", small).unwrap();
        let c = ProfileKey::from_passphrase("wrong horse", b"0123456789abcdef", small).unwrap();
        let sealed = a.seal(b"", b"x");
        assert!(b.open(b"", &sealed).is_ok());
        assert!(c.open(b"", &sealed).is_err());
        assert_ne!(a.pickle_key(), c.pickle_key());
    }

    #[test]
    fn params_roundtrip_and_caps() {
        let p = KdfParams::DEFAULT;
        assert_eq!(KdfParams::decode(&p.encode()), Some(p));
        assert_eq!(KdfParams::decode("argon2id:m=99999999,t=1,p=1"), None);
        assert_eq!(KdfParams::decode("scrypt:m=1"), None);
        assert_eq!(KdfParams::decode("argon2id:m=1,t=1"), None);
    }
}
