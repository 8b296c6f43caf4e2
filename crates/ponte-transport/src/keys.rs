//! Keys and per-side settings: the handshake pattern, the static key pair,
//! and the client and server configurations.

use crate::{DEFAULT_HANDSHAKE_TIMEOUT, MAX_FRAME_LEN, NOISE_IK, NOISE_XX};
use snow::params::NoiseParams;
use std::fmt;
use std::time::Duration;
use zeroize::Zeroizing;

/// Handshake pattern chosen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pattern {
    /// `Noise_XX`: three messages; the client checks the server key after
    /// message 2.
    Xx,
    /// `Noise_IK`: two messages; the client must know the server key. The
    /// normal case: the server address carries the key.
    Ik,
}

impl Pattern {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Pattern::Xx => 1,
            Pattern::Ik => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Pattern::Xx),
            2 => Some(Pattern::Ik),
            _ => None,
        }
    }

    pub(crate) fn params(self) -> NoiseParams {
        let name = match self {
            Pattern::Xx => NOISE_XX,
            Pattern::Ik => NOISE_IK,
        };
        // Both names are constants known to snow; parsing cannot fail.
        #[allow(clippy::expect_used)]
        name.parse().expect("valid noise protocol name")
    }
}

/// A Noise static key pair (X25519). `Debug` shows only the public key.
#[derive(Clone)]
pub struct Keypair {
    pub(crate) secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &ponte_wire::address::encode_key(&self.public))
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl Keypair {
    /// Generates a fresh key pair from the OS random source.
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        let mut dh = default_dh();
        let mut rng = default_rng();
        dh.generate(&mut *rng);
        secret.copy_from_slice(dh.privkey());
        let mut public = [0u8; 32];
        public.copy_from_slice(dh.pubkey());
        Self { secret, public }
    }

    /// Rebuilds a key pair from its 32-byte secret (derives the public key).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let secret = Zeroizing::new(secret);
        let mut dh = default_dh();
        dh.set(&secret[..]);
        let mut public = [0u8; 32];
        public.copy_from_slice(dh.pubkey());
        Self { secret, public }
    }

    /// The public key (what a server address carries, what identifies a device).
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The secret key, for storing it (keep it private: file mode 0600).
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

pub(crate) fn default_dh() -> Box<dyn snow::types::Dh> {
    use snow::resolvers::CryptoResolver as _;
    // The default resolver always provides Curve25519.
    #[allow(clippy::expect_used)]
    snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("curve25519 available")
}

pub(crate) fn default_rng() -> Box<dyn snow::types::Random> {
    use snow::resolvers::CryptoResolver as _;
    #[allow(clippy::expect_used)]
    snow::resolvers::DefaultResolver
        .resolve_rng()
        .expect("rng available")
}

/// Client side settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// This device's Noise static key pair (identifies the device to the server).
    pub keypair: Keypair,
    /// The server's static public key (from `ponte://HOST:PORT#KEY`).
    pub server_key: [u8; 32],
    /// Handshake pattern; [`Pattern::Ik`] by default.
    pub pattern: Pattern,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// Cap on frames in both directions.
    pub max_frame_len: usize,
}

impl ClientConfig {
    /// IK, default timeout and frame cap.
    pub fn new(keypair: Keypair, server_key: [u8; 32]) -> Self {
        Self {
            keypair,
            server_key,
            pattern: Pattern::Ik,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_frame_len: MAX_FRAME_LEN,
        }
    }
}

/// Server side settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's static key pair.
    pub keypair: Keypair,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// Cap on frames in both directions.
    pub max_frame_len: usize,
}

impl ServerConfig {
    /// Default timeout and frame cap.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_frame_len: MAX_FRAME_LEN,
        }
    }
}
