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
//!   │  preamble: version=0x01 (1 byte), pattern (1 byte)      │
//!   │            0x01 = XX, 0x02 = IK                         │
//!   │  u16 len ‖ handshake message 1        ───────────────►  │
//!   │  ◄──────────────────────────  u16 len ‖ handshake msg 2 │
//!   │  (XX only) u16 len ‖ handshake msg 3  ───────────────►  │
//!   │  u16 len ‖ transport message (ciphertext) …   ◄──────►  │
//! ```
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

use bytes::{Buf, Bytes, BytesMut};
use ponte_wire::frame::{self, Decoded, FrameError};
use snow::params::NoiseParams;
use snow::StatelessTransportState;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use zeroize::Zeroizing;

pub use ponte_wire::frame::MAX_FRAME_LEN;

/// Protocol version byte sent first by the client.
pub const PROTOCOL_VERSION: u8 = 1;
/// Noise protocol name for first contact.
pub const NOISE_XX: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Noise protocol name when the client knows the server key.
pub const NOISE_IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Prologue prefix mixed into the handshake hash (followed by the preamble).
pub const PROLOGUE: &[u8] = b"ponte-noise-v1";
/// Largest handshake message accepted (the real ones are under 100 bytes).
pub const MAX_HANDSHAKE_MSG: usize = 1024;
/// Largest Noise message on the wire.
pub const MAX_NOISE_MSG: usize = 65535;
/// Authentication tag length of ChaChaPoly.
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
    fn byte(self) -> u8 {
        match self {
            Pattern::Xx => 1,
            Pattern::Ik => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Pattern::Xx),
            2 => Some(Pattern::Ik),
            _ => None,
        }
    }

    fn params(self) -> NoiseParams {
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
    secret: Zeroizing<[u8; 32]>,
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

fn default_dh() -> Box<dyn snow::types::Dh> {
    use snow::resolvers::CryptoResolver as _;
    // The default resolver always provides Curve25519.
    #[allow(clippy::expect_used)]
    snow::resolvers::DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("curve25519 available")
}

fn default_rng() -> Box<dyn snow::types::Random> {
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

fn prologue(pattern: Pattern) -> Vec<u8> {
    let mut p = PROLOGUE.to_vec();
    p.push(PROTOCOL_VERSION);
    p.push(pattern.byte());
    p
}

/// Connects as a client over `io` (already connected to the server or to a
/// relay in front of it) and authenticates the server against
/// `cfg.server_key`.
pub async fn connect<S>(io: S, cfg: &ClientConfig) -> Result<Channel<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(cfg.handshake_timeout, client_handshake(io, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::HandshakeTimeout),
    }
}

/// Opens a TCP connection straight to the server named by `addr` (host,
/// port and key from `ponte://HOST:PORT#KEY`) and runs the IK handshake as
/// the device `keypair`. Connecting and the handshake share
/// [`DEFAULT_HANDSHAKE_TIMEOUT`]. To go through a relay, open the stream
/// yourself (TCP or TLS to the relay) and call [`connect`] with `addr.key`.
pub async fn connect_tcp(
    addr: &ponte_wire::address::ServerAddress,
    keypair: Keypair,
) -> Result<Channel<tokio::net::TcpStream>, TransportError> {
    let cfg = ClientConfig::new(keypair, addr.key);
    let target = addr.socket_addr_string();
    let work = async {
        let sock = tokio::net::TcpStream::connect(target.as_str()).await?;
        let _ = sock.set_nodelay(true);
        client_handshake(sock, &cfg).await
    };
    match tokio::time::timeout(cfg.handshake_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::HandshakeTimeout),
    }
}

/// Accepts a client over `io` (after any PROXY header has been consumed).
pub async fn accept<S>(io: S, cfg: &ServerConfig) -> Result<Channel<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with_prefix(io, &[], cfg).await
}

/// Like [`accept`], when bytes of the stream were already read (for example
/// past the end of a PROXY header): they are processed first.
pub async fn accept_with_prefix<S>(
    io: S,
    prefix: &[u8],
    cfg: &ServerConfig,
) -> Result<Channel<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(cfg.handshake_timeout, server_handshake(io, prefix, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::HandshakeTimeout),
    }
}

/// Reads until `buf` holds at least `n` bytes. `Ok(false)` on EOF before that.
async fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    n: usize,
) -> Result<bool, io::Error> {
    while buf.len() < n {
        buf.reserve(n - buf.len());
        if io.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a length prefix too large for a handshake message most likely is:
/// the start of another protocol's answer ("HTTP/1.1 …", a TLS record).
fn other_protocol(first: [u8; 2]) -> Option<&'static str> {
    match first {
        [b'H', b'T'] => Some("it answered like an HTTP server"),
        [0x15 | 0x16, 0x03] => Some(
            "it answered with TLS (for a TLS relay, use a tls:// route; a server address is plain)",
        ),
        [a, b] if a.is_ascii_graphic() && (b.is_ascii_graphic() || b == b' ') => {
            Some("it answered with text")
        }
        _ => None,
    }
}

async fn read_handshake_msg<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    allow_empty: bool,
) -> Result<Bytes, TransportError> {
    if !fill(io, buf, 2).await? {
        return Err(TransportError::UnexpectedEof);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len > MAX_HANDSHAKE_MSG {
        return Err(match other_protocol([buf[0], buf[1]]) {
            Some(what) => TransportError::NotPonte(what),
            None => TransportError::HandshakeLength(len),
        });
    }
    if len == 0 && !allow_empty {
        return Err(TransportError::HandshakeLength(len));
    }
    if !fill(io, buf, 2 + len).await? {
        return Err(TransportError::UnexpectedEof);
    }
    buf.advance(2);
    Ok(buf.split_to(len).freeze())
}

fn push_handshake_msg(
    hs: &mut snow::HandshakeState,
    out: &mut Vec<u8>,
) -> Result<(), TransportError> {
    let mut msg = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(TransportError::Handshake)?;
    let len = u16::try_from(n).map_err(|_| TransportError::HandshakeLength(n))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&msg[..n]);
    Ok(())
}

fn remote_key(hs: &snow::HandshakeState) -> Option<[u8; 32]> {
    hs.get_remote_static().and_then(|k| k.try_into().ok())
}

async fn client_handshake<S>(mut io: S, cfg: &ClientConfig) -> Result<Channel<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let pattern = cfg.pattern;
    let prologue = prologue(pattern);
    let builder = snow::Builder::new(pattern.params())
        .local_private_key(&cfg.keypair.secret[..])
        .prologue(&prologue);
    let builder = match pattern {
        Pattern::Ik => builder.remote_public_key(&cfg.server_key),
        Pattern::Xx => builder,
    };
    let mut hs = builder
        .build_initiator()
        .map_err(TransportError::Handshake)?;
    let mut out = vec![PROTOCOL_VERSION, pattern.byte()];
    push_handshake_msg(&mut hs, &mut out)?;
    io.write_all(&out).await?;
    io.flush().await?;

    let mut rbuf = BytesMut::with_capacity(256);
    let msg2 = read_handshake_msg(&mut io, &mut rbuf, pattern == Pattern::Ik).await?;
    if msg2.is_empty() {
        // IK rejected: the server could not decrypt our first message.
        return Err(TransportError::ServerKeyMismatch {
            expected: cfg.server_key,
            actual: None,
        });
    }
    let mut scratch = [0u8; MAX_HANDSHAKE_MSG];
    hs.read_message(&msg2, &mut scratch)
        .map_err(TransportError::Handshake)?;
    let actual = remote_key(&hs);
    if actual != Some(cfg.server_key) {
        return Err(TransportError::ServerKeyMismatch {
            expected: cfg.server_key,
            actual,
        });
    }
    if pattern == Pattern::Xx {
        let mut out = Vec::with_capacity(128);
        push_handshake_msg(&mut hs, &mut out)?;
        io.write_all(&out).await?;
        io.flush().await?;
    }
    let transport = hs
        .into_stateless_transport_mode()
        .map_err(TransportError::Handshake)?;
    Ok(Channel::new(
        io,
        transport,
        cfg.server_key,
        pattern,
        rbuf,
        cfg.max_frame_len,
    ))
}

async fn server_handshake<S>(
    mut io: S,
    prefix: &[u8],
    cfg: &ServerConfig,
) -> Result<Channel<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rbuf = BytesMut::with_capacity(256);
    rbuf.extend_from_slice(prefix);
    if !fill(&mut io, &mut rbuf, 2).await? {
        return Err(TransportError::UnexpectedEof);
    }
    if rbuf[0] != PROTOCOL_VERSION {
        return Err(TransportError::UnsupportedVersion(rbuf[0]));
    }
    let pattern = Pattern::from_byte(rbuf[1]).ok_or(TransportError::UnknownPattern(rbuf[1]))?;
    rbuf.advance(2);
    let prologue = prologue(pattern);
    let mut hs = snow::Builder::new(pattern.params())
        .local_private_key(&cfg.keypair.secret[..])
        .prologue(&prologue)
        .build_responder()
        .map_err(TransportError::Handshake)?;
    let mut scratch = [0u8; MAX_HANDSHAKE_MSG];
    let msg1 = read_handshake_msg(&mut io, &mut rbuf, false).await?;
    if let Err(e) = hs.read_message(&msg1, &mut scratch) {
        if pattern == Pattern::Ik {
            // Tell the client its idea of our key is wrong (see module docs).
            // Best effort: the connection is dropped either way.
            let _ = io.write_all(&[0, 0]).await;
            let _ = io.flush().await;
        }
        return Err(TransportError::Handshake(e));
    }
    let mut out = Vec::with_capacity(128);
    push_handshake_msg(&mut hs, &mut out)?;
    io.write_all(&out).await?;
    io.flush().await?;
    if pattern == Pattern::Xx {
        let msg3 = read_handshake_msg(&mut io, &mut rbuf, false).await?;
        hs.read_message(&msg3, &mut scratch)
            .map_err(TransportError::Handshake)?;
    }
    let remote = remote_key(&hs).ok_or(TransportError::HandshakeLength(0))?;
    let transport = hs
        .into_stateless_transport_mode()
        .map_err(TransportError::Handshake)?;
    Ok(Channel::new(
        io,
        transport,
        remote,
        pattern,
        rbuf,
        cfg.max_frame_len,
    ))
}

/// A receive buffer that grew past this (a large frame went through) is
/// dropped once it is empty, instead of keeping its peak size for the life
/// of the connection: one 64 KiB message would otherwise pin about 170 KiB
/// per idle connection.
const SHRINK_ABOVE: usize = 16 * 1024;

/// Receiving state of a channel (cancel-safe: nothing is consumed until a
/// whole Noise message is buffered).
struct RecvState {
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    /// Ciphertext bytes read but not yet decrypted.
    rbuf: BytesMut,
    /// Decrypted bytes not yet returned as frames.
    pbuf: BytesMut,
    max_frame_len: usize,
}

impl RecvState {
    /// Returns the next whole frame already decrypted, if any.
    fn take_frame(&mut self) -> Result<Option<Bytes>, TransportError> {
        match frame::decode(&self.pbuf, self.max_frame_len)? {
            Decoded::Complete { consumed, .. } => {
                let mut f = self.pbuf.split_to(consumed);
                f.advance(frame::LEN_PREFIX);
                // (`capacity()` after a split or an advance counts only what
                // is left past the cursor; the allocation is still the big
                // one, so decide by the size of what went through.)
                if self.pbuf.is_empty() && consumed > SHRINK_ABOVE {
                    // The frame keeps its part of the allocation alive
                    // only as long as the caller holds it.
                    self.pbuf = BytesMut::new();
                }
                Ok(Some(f.freeze()))
            }
            Decoded::Incomplete { .. } => Ok(None),
        }
    }

    async fn recv_frame<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<Option<Bytes>, TransportError> {
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(Some(f));
            }
            // Need another Noise message.
            if !fill(io, &mut self.rbuf, 2).await? {
                if self.rbuf.is_empty() && self.pbuf.is_empty() {
                    return Ok(None);
                }
                return Err(TransportError::UnexpectedEof);
            }
            let len = usize::from(u16::from_be_bytes([self.rbuf[0], self.rbuf[1]]));
            if len < TAG_LEN {
                return Err(TransportError::Decrypt);
            }
            if !fill(io, &mut self.rbuf, 2 + len).await? {
                return Err(TransportError::UnexpectedEof);
            }
            let start = self.pbuf.len();
            self.pbuf.resize(start + len, 0);
            let n = self
                .noise
                .read_message(self.nonce, &self.rbuf[2..2 + len], &mut self.pbuf[start..])
                .map_err(|_| TransportError::Decrypt)?;
            self.pbuf.truncate(start + n);
            self.nonce = self.nonce.wrapping_add(1);
            self.rbuf.advance(2 + len);
            if self.rbuf.is_empty()
                && (2 + len > SHRINK_ABOVE || self.rbuf.capacity() > SHRINK_ABOVE)
            {
                self.rbuf = BytesMut::with_capacity(256);
            }
        }
    }

    fn capacity(&self) -> usize {
        self.rbuf.capacity() + self.pbuf.capacity()
    }
}

/// Sending state of a channel.
struct SendState {
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    max_frame_len: usize,
}

impl SendState {
    fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, TransportError> {
        let chunks = plain.len().div_ceil(MAX_NOISE_PLAINTEXT).max(1);
        let mut out = vec![0u8; plain.len() + chunks * (2 + TAG_LEN)];
        let mut at = 0;
        // Encrypt straight into the output: no scratch buffer per message.
        for chunk in plain.chunks(MAX_NOISE_PLAINTEXT) {
            let room = &mut out[at + 2..at + 2 + chunk.len() + TAG_LEN];
            let n = self
                .noise
                .write_message(self.nonce, chunk, room)
                .map_err(TransportError::Encrypt)?;
            self.nonce = self.nonce.wrapping_add(1);
            let len = u16::try_from(n).map_err(|_| TransportError::HandshakeLength(n))?;
            out[at..at + 2].copy_from_slice(&len.to_be_bytes());
            at += 2 + n;
        }
        out.truncate(at);
        Ok(out)
    }

    async fn send_frames<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        payloads: &[&[u8]],
    ) -> Result<(), TransportError> {
        let mut plain = Vec::new();
        for p in payloads {
            frame::encode(p, self.max_frame_len, &mut plain)?;
        }
        let sealed = self.seal(&plain)?;
        io.write_all(&sealed).await?;
        io.flush().await?;
        Ok(())
    }

    async fn send_message<W: AsyncWrite + Unpin, M: prost::Message>(
        &mut self,
        io: &mut W,
        msg: &M,
    ) -> Result<(), TransportError> {
        let mut plain = Vec::new();
        frame::encode_message(msg, self.max_frame_len, &mut plain)?;
        let sealed = self.seal(&plain)?;
        io.write_all(&sealed).await?;
        io.flush().await?;
        Ok(())
    }
}

/// An established Noise channel carrying frames.
///
/// `recv_*` methods are cancel-safe (usable in `tokio::select!`); `send_*`
/// methods are not (a cancelled send may leave a partial message: drop the
/// channel then).
pub struct Channel<S> {
    io: S,
    recv: RecvState,
    send: SendState,
    remote_static: [u8; 32],
    pattern: Pattern,
}

impl<S> fmt::Debug for Channel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("pattern", &self.pattern)
            .field(
                "remote_static",
                &ponte_wire::address::encode_key(&self.remote_static),
            )
            .finish_non_exhaustive()
    }
}

impl<S> Channel<S> {
    fn new(
        io: S,
        transport: StatelessTransportState,
        remote_static: [u8; 32],
        pattern: Pattern,
        leftover: BytesMut,
        max_frame_len: usize,
    ) -> Self {
        let noise = Arc::new(transport);
        Self {
            io,
            recv: RecvState {
                noise: Arc::clone(&noise),
                nonce: 0,
                rbuf: leftover,
                pbuf: BytesMut::new(),
                max_frame_len,
            },
            send: SendState {
                noise,
                nonce: 0,
                max_frame_len,
            },
            remote_static,
            pattern,
        }
    }

    /// The peer's Noise static public key: on the server, the client
    /// device's key (its identity for login); on the client, the server key.
    pub fn remote_static(&self) -> [u8; 32] {
        self.remote_static
    }

    /// The handshake pattern used.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    /// Receives one frame payload; `Ok(None)` when the peer closed cleanly
    /// between frames. Cancel-safe.
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>, TransportError> {
        self.recv.recv_frame(&mut self.io).await
    }

    /// Receives and decodes one protobuf message. Cancel-safe.
    pub async fn recv<M: prost::Message + Default>(&mut self) -> Result<Option<M>, TransportError> {
        match self.recv_frame().await? {
            Some(f) => Ok(Some(M::decode(f)?)),
            None => Ok(None),
        }
    }

    /// Bytes of memory the receive buffers reserve now (for memory
    /// accounting and tests): small between frames, even after a large one.
    pub fn recv_buffer_capacity(&self) -> usize {
        self.recv.capacity()
    }

    /// Sends one frame payload (already-encoded protobuf).
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        self.send.send_frames(&mut self.io, &[payload]).await
    }

    /// Encodes and sends one protobuf message.
    pub async fn send<M: prost::Message>(&mut self, msg: &M) -> Result<(), TransportError> {
        self.send.send_message(&mut self.io, msg).await
    }

    /// Shuts down the write side of the stream.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.io.shutdown().await?;
        Ok(())
    }

    /// Splits into independently usable reader and writer halves.
    pub fn split(self) -> (ChannelReader<ReadHalf<S>>, ChannelWriter<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.io);
        (
            ChannelReader {
                io: r,
                recv: self.recv,
                remote_static: self.remote_static,
            },
            ChannelWriter {
                io: w,
                send: self.send,
            },
        )
    }
}

/// The receiving half of a [`Channel`].
pub struct ChannelReader<R> {
    io: R,
    recv: RecvState,
    remote_static: [u8; 32],
}

impl<R> fmt::Debug for ChannelReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReader").finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> ChannelReader<R> {
    /// See [`Channel::recv_frame`]. Cancel-safe.
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>, TransportError> {
        self.recv.recv_frame(&mut self.io).await
    }

    /// See [`Channel::recv`]. Cancel-safe.
    pub async fn recv<M: prost::Message + Default>(&mut self) -> Result<Option<M>, TransportError> {
        match self.recv_frame().await? {
            Some(f) => Ok(Some(M::decode(f)?)),
            None => Ok(None),
        }
    }

    /// The peer's Noise static public key.
    pub fn remote_static(&self) -> [u8; 32] {
        self.remote_static
    }
}

/// The sending half of a [`Channel`].
pub struct ChannelWriter<W> {
    io: W,
    send: SendState,
}

impl<W> fmt::Debug for ChannelWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelWriter").finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin> ChannelWriter<W> {
    /// See [`Channel::send_frame`].
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        self.send.send_frames(&mut self.io, &[payload]).await
    }

    /// Sends several frames with one write (fewer syscalls when batching).
    pub async fn send_frames(&mut self, payloads: &[&[u8]]) -> Result<(), TransportError> {
        self.send.send_frames(&mut self.io, payloads).await
    }

    /// See [`Channel::send`].
    pub async fn send<M: prost::Message>(&mut self, msg: &M) -> Result<(), TransportError> {
        self.send.send_message(&mut self.io, msg).await
    }

    /// Shuts down the write side of the stream.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.io.shutdown().await?;
        Ok(())
    }
}
