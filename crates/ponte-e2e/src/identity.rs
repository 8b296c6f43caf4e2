//! Device identities and pre-keys.
//!
//! An [`Identity`] wraps a vodozemac `Account`: a long-term Curve25519
//! identity key (used in Olm's triple Diffie-Hellman) and a long-term Ed25519
//! signing key. Its public half is a [`PublicIdentity`], which is what the
//! server's directory hands out and what safety numbers are computed from.
//!
//! One-time keys and the fallback key are handed out as [`PreKey`]s. What
//! exactly a device signs for each pre-key (and for its registration) is the
//! protocol's business (`ponte_wire::messages::key_signing_string`): this
//! crate provides [`Identity::sign`] and [`PublicIdentity::verify`], and the
//! client checks a claimed pre-key's signature before
//! [`Identity::create_outbound_session`]. A server cannot substitute a
//! pre-key without also substituting the whole identity, which safety numbers
//! reveal.

use crate::session::{Ciphertext, Session};
use crate::{Error, Result};
use vodozemac::olm::{Account, AccountPickle, OlmMessage, SessionConfig};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

/// The public half of an identity: 32-byte Curve25519 and Ed25519 keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicIdentity {
    /// Curve25519 identity key (Olm's 3DH).
    pub curve25519: [u8; 32],
    /// Ed25519 signing key (signs pre-keys).
    pub ed25519: [u8; 32],
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicIdentity")
            .field("curve25519", &hex(&self.curve25519))
            .field("ed25519", &hex(&self.ed25519))
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PublicIdentity {
    /// Build from raw key bytes as received from the network, checking lengths
    /// and that the Ed25519 key is a valid point.
    pub fn from_slices(curve25519: &[u8], ed25519: &[u8]) -> Result<Self> {
        let curve25519: [u8; 32] = curve25519.try_into().map_err(|_| Error::InvalidKey)?;
        let ed25519: [u8; 32] = ed25519.try_into().map_err(|_| Error::InvalidKey)?;
        Ed25519PublicKey::from_slice(&ed25519).map_err(|_| Error::InvalidKey)?;
        Ok(Self {
            curve25519,
            ed25519,
        })
    }

    /// The 64 bytes `curve25519 || ed25519` (the form hashed into safety numbers).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.curve25519);
        out[32..].copy_from_slice(&self.ed25519);
        out
    }

    /// Verify an Ed25519 signature made by this identity's signing key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        let signing = Ed25519PublicKey::from_slice(&self.ed25519).map_err(|_| Error::InvalidKey)?;
        let signature = Ed25519Signature::from_slice(signature).map_err(|_| Error::BadSignature)?;
        signing
            .verify(message, &signature)
            .map_err(|_| Error::BadSignature)
    }
}

/// A one-time or fallback public key of this device, for upload.
#[derive(Clone, PartialEq, Eq)]
pub struct PreKey {
    /// The device's id for the key (vodozemac key id, base64 text as bytes).
    pub key_id: Vec<u8>,
    /// Curve25519 public key.
    pub public_key: [u8; 32],
    /// Whether this is the fallback key (used when one-time keys run out).
    pub fallback: bool,
}

impl std::fmt::Debug for PreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreKey")
            .field("key_id", &String::from_utf8_lossy(&self.key_id))
            .field("public_key", &hex(&self.public_key))
            .field("fallback", &self.fallback)
            .finish()
    }
}

/// A device identity: the private keys of one device (a vodozemac account).
pub struct Identity {
    account: Account,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity with random keys.
    pub fn generate() -> Self {
        Self {
            account: Account::new(),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicIdentity {
        let keys = self.account.identity_keys();
        PublicIdentity {
            curve25519: keys.curve25519.to_bytes(),
            ed25519: *keys.ed25519.as_bytes(),
        }
    }

    /// Sign arbitrary bytes with the Ed25519 identity key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.account.sign(message).to_bytes()
    }

    /// The number of one-time keys a client should keep published.
    pub fn max_published_one_time_keys(&self) -> usize {
        self.account.max_number_of_one_time_keys()
    }

    /// Generate `count` new one-time keys and return every unpublished one.
    /// They stay "unpublished" until [`Identity::mark_published`] is called
    /// after a successful upload, so a failed upload is simply retried.
    pub fn generate_one_time_keys(&mut self, count: usize) -> Vec<PreKey> {
        self.account.generate_one_time_keys(count);
        self.unpublished_one_time_keys()
    }

    /// The one-time keys generated but not yet marked published.
    pub fn unpublished_one_time_keys(&self) -> Vec<PreKey> {
        let mut keys: Vec<PreKey> = self
            .account
            .one_time_keys()
            .into_iter()
            .map(|(id, key)| PreKey {
                key_id: id.to_base64().into_bytes(),
                public_key: key.to_bytes(),
                fallback: false,
            })
            .collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        keys
    }

    /// Generate a new fallback key and return it. The previous fallback key
    /// stays usable until the next rotation, so in-flight pre-key messages
    /// still decrypt.
    pub fn rotate_fallback_key(&mut self) -> Option<PreKey> {
        self.account.generate_fallback_key();
        self.unpublished_fallback_key()
    }

    /// The current fallback key if it has not been marked published.
    pub fn unpublished_fallback_key(&self) -> Option<PreKey> {
        self.account
            .fallback_key()
            .into_iter()
            .next()
            .map(|(id, key)| PreKey {
                key_id: id.to_base64().into_bytes(),
                public_key: key.to_bytes(),
                fallback: true,
            })
    }

    /// Mark every generated one-time key and the fallback key as published.
    pub fn mark_published(&mut self) {
        self.account.mark_keys_as_published();
    }

    /// Start a session with a contact from one of their pre-keys (claimed from
    /// the server). The caller checks the pre-key's signature first.
    pub fn create_outbound_session(
        &self,
        their_identity: &PublicIdentity,
        their_prekey: &[u8; 32],
    ) -> Result<Session> {
        let identity_key = Curve25519PublicKey::from_bytes(their_identity.curve25519);
        let one_time_key = Curve25519PublicKey::from_bytes(*their_prekey);
        let session = self.account.create_outbound_session(
            SessionConfig::version_2(),
            identity_key,
            one_time_key,
        );
        Ok(Session::from_vodozemac(session))
    }

    /// Create a session from a pre-key message sent by the owner of
    /// `their_identity` and return it with the decrypted plaintext. The used
    /// one-time key is removed from this identity, so the caller must persist
    /// the identity and the session together.
    pub fn create_inbound_session(
        &mut self,
        their_identity: &PublicIdentity,
        ciphertext: &Ciphertext,
    ) -> Result<(Session, Vec<u8>)> {
        let OlmMessage::PreKey(message) = ciphertext.to_olm()? else {
            return Err(Error::NotPreKey);
        };
        let identity_key = Curve25519PublicKey::from_bytes(their_identity.curve25519);
        let result = self
            .account
            .create_inbound_session(identity_key, &message)
            .map_err(Error::SessionCreation)?;
        Ok((Session::from_vodozemac(result.session), result.plaintext))
    }

    /// The Curve25519 identity key a pre-key message claims to come from, if
    /// `ciphertext` is a pre-key message.
    pub fn prekey_sender(ciphertext: &Ciphertext) -> Option<[u8; 32]> {
        match ciphertext.to_olm().ok()? {
            OlmMessage::PreKey(m) => Some(m.identity_key().to_bytes()),
            OlmMessage::Normal(_) => None,
        }
    }

    /// Serialize, encrypted with `key` (vodozemac pickle: AES-256-CBC + HMAC).
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        self.account.pickle().encrypt(key)
    }

    /// Restore from [`Identity::pickle`] output.
    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self> {
        let pickle = AccountPickle::from_encrypted(pickle, key).map_err(Error::Pickle)?;
        Ok(Self {
            account: Account::from_pickle(pickle),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn signatures_verify() {
        let bob = Identity::generate();
        let sig = bob.sign(b"hello");
        bob.public().verify(b"hello", &sig).unwrap();
        assert!(matches!(
            bob.public().verify(b"hellO", &sig),
            Err(Error::BadSignature)
        ));
        assert!(bob.public().verify(b"hello", &sig[..63]).is_err());
        assert!(Identity::generate()
            .public()
            .verify(b"hello", &sig)
            .is_err());
    }

    #[test]
    fn published_keys_are_not_returned_again() {
        let mut bob = Identity::generate();
        assert_eq!(bob.generate_one_time_keys(3).len(), 3);
        // Not yet published: a retry returns the same keys plus new ones.
        let keys = bob.generate_one_time_keys(2);
        assert_eq!(keys.len(), 5);
        assert!(keys.iter().all(|k| !k.fallback && !k.key_id.is_empty()));
        let fallback = bob.rotate_fallback_key().unwrap();
        assert!(fallback.fallback);
        bob.mark_published();
        assert!(bob.unpublished_one_time_keys().is_empty());
        assert!(bob.unpublished_fallback_key().is_none());
    }

    #[test]
    fn pickle_roundtrip_and_wrong_key() {
        let id = Identity::generate();
        let key = [7u8; 32];
        let pickle = id.pickle(&key);
        let back = Identity::from_pickle(&pickle, &key).unwrap();
        assert_eq!(back.public(), id.public());
        assert!(Identity::from_pickle(&pickle, &[8u8; 32]).is_err());
    }

    #[test]
    fn public_identity_rejects_bad_lengths() {
        assert!(PublicIdentity::from_slices(&[0u8; 31], &[0u8; 32]).is_err());
        assert!(PublicIdentity::from_slices(&[0u8; 32], &[0u8; 33]).is_err());
        let id = Identity::generate().public();
        assert_eq!(
            PublicIdentity::from_slices(&id.curve25519, &id.ed25519).unwrap(),
            id
        );
    }
}
