//! The handshake: the preamble, XX and IK as client and server, each
//! under the configured timeout, ending in a [`Channel`].

use crate::cipher::CipherState;
use crate::keys::{builder, from_suite_byte, suite_byte};
use crate::{
    Channel, Cipher, ClientConfig, Keypair, Pattern, ServerConfig, TransportError,
    MAX_HANDSHAKE_MSG, PROLOGUE, PROTOCOL_VERSION,
};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

fn prologue(suite: u8) -> Vec<u8> {
    let mut p = PROLOGUE.to_vec();
    p.push(PROTOCOL_VERSION);
    p.push(suite);
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
/// [`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT). To go through a relay, open the stream
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
pub(crate) async fn fill<R: AsyncRead + Unpin>(
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
    let (pattern, cipher) = (cfg.pattern, cfg.cipher);
    let suite = suite_byte(pattern, cipher);
    let prologue = prologue(suite);
    let builder = builder(pattern, cipher)
        .local_private_key(&cfg.keypair.secret[..])
        .prologue(&prologue);
    let builder = match pattern {
        Pattern::Ik => builder.remote_public_key(&cfg.server_key),
        Pattern::Xx => builder,
    };
    let mut hs = builder
        .build_initiator()
        .map_err(TransportError::Handshake)?;
    let mut out = vec![PROTOCOL_VERSION, suite];
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
    let ciphers = split(&mut hs, cipher)?;
    Ok(Channel::new(
        io,
        ciphers,
        cfg.server_key,
        (pattern, cipher),
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
    let suite = rbuf[1];
    let (pattern, cipher) = from_suite_byte(suite).ok_or(TransportError::UnknownPattern(suite))?;
    rbuf.advance(2);
    let prologue = prologue(suite);
    let mut hs = builder(pattern, cipher)
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
    let ciphers = split(&mut hs, cipher)?;
    Ok(Channel::new(
        io,
        ciphers,
        remote,
        (pattern, cipher),
        rbuf,
        cfg.max_frame_len,
    ))
}

/// The finished handshake's split: this side's `(send, recv)` cipher
/// states (Noise's first key is the initiator's to send with, the second
/// the responder's). The raw keys are wiped once the states hold them.
pub(crate) fn split(
    hs: &mut snow::HandshakeState,
    cipher: Cipher,
) -> Result<(CipherState, CipherState), TransportError> {
    if !hs.is_handshake_finished() {
        return Err(TransportError::Handshake(snow::Error::State(
            snow::error::StateProblem::HandshakeNotFinished,
        )));
    }
    let (first, second) = hs.dangerously_get_raw_split();
    let (first, second) = (Zeroizing::new(first), Zeroizing::new(second));
    let (send, recv) = if hs.is_initiator() {
        (&first, &second)
    } else {
        (&second, &first)
    };
    Ok((
        CipherState::new(cipher, send)?,
        CipherState::new(cipher, recv)?,
    ))
}
