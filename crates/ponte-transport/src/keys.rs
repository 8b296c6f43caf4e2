//! Keys and per-side settings: the handshake pattern, the cipher, the
//! static key pair, and the client and server configurations.

use crate::{DEFAULT_HANDSHAKE_TIMEOUT, MAX_FRAME_LEN};
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

/// The channel's AEAD, chosen by the client and named in the preamble.
///
/// AES-256-GCM is several times faster than ChaCha20-Poly1305 where the
/// CPU has AES and carry-less multiply instructions (x86-64 AES-NI and
/// PCLMULQDQ, ARMv8 AES and PMULL: nearly every server, laptop and phone
/// of the last decade; 6.4 against 1.8 GB/s per core on the benchmark
/// machine, see docs/BENCHMARKS-server.md), and much slower in software,
/// where ChaCha20-Poly1305 is the better cipher. A server accepts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cipher {
    /// ChaCha20-Poly1305 (Noise `ChaChaPoly`): the cipher of every
    /// version, and the one for CPUs without AES instructions.
    ChaChaPoly,
    /// AES-256-GCM (Noise `AESGCM`), for CPUs with AES instructions.
    AesGcm,
}

impl Cipher {
    /// AES-256-GCM when this CPU has the instructions that make it fast,
    /// else ChaCha20-Poly1305.
    pub fn preferred() -> Self {
        if aes_in_hardware() {
            Cipher::AesGcm
        } else {
            Cipher::ChaChaPoly
        }
    }

    fn noise_name(self) -> &'static str {
        match self {
            Cipher::ChaChaPoly => "ChaChaPoly",
            Cipher::AesGcm => "AESGCM",
        }
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn aes_in_hardware() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_in_hardware() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_in_hardware() -> bool {
    false
}

/// The preamble's second byte: the pattern in the low bits (1 = XX,
/// 2 = IK), [`AESGCM_BIT`] set for AES-256-GCM. Versions before the
/// cipher choice sent (and accept) only 1 and 2.
pub(crate) const AESGCM_BIT: u8 = 0x10;

/// The preamble byte for `pattern` with `cipher`.
pub(crate) fn suite_byte(pattern: Pattern, cipher: Cipher) -> u8 {
    let p = match pattern {
        Pattern::Xx => 1,
        Pattern::Ik => 2,
    };
    match cipher {
        Cipher::ChaChaPoly => p,
        Cipher::AesGcm => p | AESGCM_BIT,
    }
}

/// The pattern and cipher a preamble byte names, if any.
pub(crate) fn from_suite_byte(b: u8) -> Option<(Pattern, Cipher)> {
    let cipher = if b & AESGCM_BIT != 0 {
        Cipher::AesGcm
    } else {
        Cipher::ChaChaPoly
    };
    let pattern = match b & !AESGCM_BIT {
        1 => Pattern::Xx,
        2 => Pattern::Ik,
        _ => return None,
    };
    Some((pattern, cipher))
}

/// A snow builder for `pattern` with `cipher`: the AEADs from ring, which
/// has assembly for both (AES-GCM with AES-NI and VAES, ChaCha20 with
/// AVX2), the key exchange and hash from snow's default resolver.
pub(crate) fn builder<'a>(pattern: Pattern, cipher: Cipher) -> snow::Builder<'a> {
    use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
    let pattern = match pattern {
        Pattern::Xx => "XX",
        Pattern::Ik => "IK",
    };
    let name = format!("Noise_{pattern}_25519_{}_BLAKE2s", cipher.noise_name());
    // The four names are built from parts snow knows; parsing cannot fail.
    #[allow(clippy::expect_used)]
    let params = name.parse().expect("valid noise protocol name");
    snow::Builder::with_resolver(
        params,
        Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        )),
    )
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
    /// The channel's cipher; [`Cipher::preferred`] by default.
    pub cipher: Cipher,
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
            cipher: Cipher::preferred(),
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
