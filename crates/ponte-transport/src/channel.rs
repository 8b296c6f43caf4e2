//! An established channel: Noise transport messages carrying a byte stream
//! of application frames, whole or split into a reader and a writer half.

use crate::cipher::{CipherState, Sealing, MSG_LEN_PREFIX};
use crate::handshake::fill;
use crate::{Cipher, Pattern, TransportError, TAG_LEN};
use bytes::{Buf, Bytes, BytesMut};
use ponte_wire::frame::{self, Decoded};
use std::fmt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// A receive buffer that grew past this (a large frame went through) is
/// dropped once it is empty, instead of keeping its peak size for the life
/// of the connection: one 64 KiB message would otherwise pin about 170 KiB
/// per idle connection.
const SHRINK_ABOVE: usize = 16 * 1024;

/// Receiving state of a channel (cancel-safe: nothing is consumed until a
/// whole Noise message is buffered).
struct RecvState {
    cipher: CipherState,
    /// Ciphertext bytes read but not yet decrypted.
    rbuf: BytesMut,
    /// Decrypted bytes not yet returned as frames.
    pbuf: BytesMut,
    /// Bytes the frame at the front of `pbuf` still lacks (0 between
    /// frames, and before its length prefix is whole).
    lacking: usize,
    /// `rbuf` was enlarged for a frame spanning Noise messages; it goes
    /// back to a small one once that frame is whole and nothing waits in it.
    rbuf_big: bool,
    max_frame_len: usize,
}

impl RecvState {
    /// Returns the next whole frame already decrypted, if any.
    fn take_frame(&mut self) -> Result<Option<Bytes>, TransportError> {
        match frame::decode(&self.pbuf, self.max_frame_len)? {
            Decoded::Complete { consumed, .. } => {
                self.lacking = 0;
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
                if self.rbuf_big && self.rbuf.is_empty() {
                    self.rbuf = BytesMut::with_capacity(256);
                    self.rbuf_big = false;
                }
                Ok(Some(f.freeze()))
            }
            Decoded::Incomplete { needed } => {
                // Exact once the length prefix is whole (a lower bound
                // before, of at most 4 bytes).
                self.lacking = needed;
                Ok(None)
            }
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
            // Need another Noise message. In the middle of a frame that
            // spans several, read whole messages (and what follows) per
            // call rather than a small prefix first.
            if self.lacking > frame::LEN_PREFIX && !self.rbuf_big {
                self.rbuf.reserve(2 + crate::MAX_NOISE_MSG);
                self.rbuf_big = true;
            }
            if !fill(io, &mut self.rbuf, MSG_LEN_PREFIX).await? {
                if self.rbuf.is_empty() && self.pbuf.is_empty() {
                    return Ok(None);
                }
                return Err(TransportError::UnexpectedEof);
            }
            let len = usize::from(u16::from_be_bytes([self.rbuf[0], self.rbuf[1]]));
            if len < TAG_LEN {
                return Err(TransportError::Decrypt);
            }
            let wire = MSG_LEN_PREFIX + len;
            if !fill(io, &mut self.rbuf, wire).await? {
                return Err(TransportError::UnexpectedEof);
            }
            let start = self.pbuf.len();
            // Room for the rest of the frame at once, so a frame spanning
            // messages is not copied each time the buffer grows.
            self.pbuf.reserve(len.max(self.lacking));
            // The one copy: the ciphertext goes after the plaintext so far
            // and is opened there.
            self.pbuf
                .extend_from_slice(&self.rbuf[MSG_LEN_PREFIX..wire]);
            let n = self.cipher.open_in_place(&mut self.pbuf[start..])?;
            self.pbuf.truncate(start + n);
            self.rbuf.advance(wire);
            if !self.rbuf_big
                && self.rbuf.is_empty()
                && (wire > SHRINK_ABOVE || self.rbuf.capacity() > SHRINK_ABOVE)
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
    cipher: CipherState,
    max_frame_len: usize,
}

impl SendState {
    async fn send_frames<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        payloads: &[&[u8]],
    ) -> Result<(), TransportError> {
        // Every frame is checked before any is sealed: a refused batch
        // uses no nonce, and the channel goes on.
        for p in payloads {
            frame::prefix(p.len(), self.max_frame_len)?;
        }
        let plain_len = payloads.iter().map(|p| frame::LEN_PREFIX + p.len()).sum();
        let mut sealing = Sealing::new(&mut self.cipher, plain_len);
        for p in payloads {
            sealing.write(&frame::prefix(p.len(), self.max_frame_len)?)?;
            sealing.write(p)?;
        }
        let sealed = sealing.finish()?;
        io.write_all(&sealed).await?;
        io.flush().await?;
        Ok(())
    }

    async fn send_message<W: AsyncWrite + Unpin, M: prost::Message>(
        &mut self,
        io: &mut W,
        msg: &M,
    ) -> Result<(), TransportError> {
        self.send_frames(io, &[&msg.encode_to_vec()]).await
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
    cipher: Cipher,
}

impl<S> fmt::Debug for Channel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("pattern", &self.pattern)
            .field("cipher", &self.cipher)
            .field(
                "remote_static",
                &ponte_wire::address::encode_key(&self.remote_static),
            )
            .finish_non_exhaustive()
    }
}

impl<S> Channel<S> {
    /// `(send, recv)`: this side's two cipher states from the handshake's
    /// split.
    pub(crate) fn new(
        io: S,
        (send, recv): (CipherState, CipherState),
        remote_static: [u8; 32],
        (pattern, cipher): (Pattern, Cipher),
        leftover: BytesMut,
        max_frame_len: usize,
    ) -> Self {
        Self {
            io,
            recv: RecvState {
                cipher: recv,
                rbuf: leftover,
                pbuf: BytesMut::new(),
                lacking: 0,
                rbuf_big: false,
                max_frame_len,
            },
            send: SendState {
                cipher: send,
                max_frame_len,
            },
            remote_static,
            pattern,
            cipher,
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

    /// The cipher the client chose.
    pub fn cipher(&self) -> Cipher {
        self.cipher
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
