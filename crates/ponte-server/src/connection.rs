//! One accepted TCP connection, up to its session and around it: the
//! optional PROXY header, the Noise handshake (`ponte-transport`) within
//! the handshake timeout, the socket wrapper that notes write progress
//! ([`Watched`]), and the writer task that drains the session's queue of
//! encoded frames into the socket.
//!
//! Tasks per connection: the session's (see `session`) and the writer. A
//! write during which the socket accepts no byte for `write_stall_timeout`
//! ends the writer, which reports the stall through the queue; the session
//! then closes as `slow_consumer`, whatever the client still sends. At the
//! end the writer gets 2 s to flush (the close frame included); one still
//! stuck is aborted and the socket reset, so the connection really closes.

use crate::metrics::CloseCause;
use crate::outbox;
use crate::session::Session;
use crate::Shared;
use ponte_transport::{ChannelReader, ChannelWriter, TransportError};
use ponte_wire::proxy_header;
use prost::Message as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout_at;
use tracing::Instrument as _;

/// The session's half of the Noise channel.
pub(crate) type Reader = ChannelReader<ReadHalf<Watched>>;
type Writer = ChannelWriter<WriteHalf<Watched>>;

/// When the socket last accepted bytes, shared by a connection's stream and
/// its writer task.
#[derive(Debug)]
pub(crate) struct WriteProgress {
    start: tokio::time::Instant,
    /// Milliseconds after `start` of the last write that accepted a byte.
    last_ms: AtomicU64,
    /// Reset the connection when the socket is dropped (a stalled peer:
    /// a plain close would leave the unsent bytes in the kernel).
    reset: AtomicBool,
}

impl WriteProgress {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            reset: AtomicBool::new(false),
        }
    }

    fn record(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The TCP stream of a connection, noting when a write accepts bytes: the
/// transport writes a batch of frames with one `write_all`, and only the
/// stream sees whether that write is moving at all.
#[derive(Debug)]
pub(crate) struct Watched {
    inner: TcpStream,
    progress: Arc<WriteProgress>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.progress.reset.load(Ordering::Relaxed) {
            // SO_LINGER 0: the close sends RST and the kernel frees the
            // send buffer now, instead of probing a zero window for minutes.
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.record();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.record();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
/// Runs one accepted TCP connection to its end.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    pre_login: crate::prelogin::Slot,
) {
    shared.metrics.connections_open.inc();
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    // A span per connection: its number only, never the client's address.
    let span = tracing::debug_span!("conn", id = conn_id);
    let cause = run(&shared, sock, peer, conn_id, pre_login)
        .instrument(span)
        .await;
    tracing::debug!(conn = conn_id, reason = cause.label(), "connection closed");
    shared.metrics.connections_open.dec();
    shared.metrics.closed(cause);
}

async fn run(
    shared: &Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    pre_login: crate::prelogin::Slot,
) -> CloseCause {
    // Boxed: the handshake's state is freed once it is done instead of
    // sitting in every connection's future for its whole life.
    let progress = Arc::new(WriteProgress::new());
    let (channel, claimed) = match Box::pin(establish(shared, sock, &progress)).await {
        Ok(v) => v,
        Err(cause) => return cause,
    };
    shared.metrics.sessions_open.inc();
    shared.metrics.handshake(channel.cipher());
    let device_key = channel.remote_static();
    let (reader, writer) = channel.split();
    let (out, rx) = outbox::outbox(shared.cfg.outbound_queue.max(1));
    let writer_task = tokio::spawn(write_loop(
        writer,
        rx,
        Arc::clone(&progress),
        shared.cfg.write_stall_timeout,
    ));
    let mut session = Session::new(
        Arc::clone(shared),
        conn_id,
        device_key,
        claimed.unwrap_or(peer.ip()),
        peer.ip(),
        out,
        pre_login,
    );
    let cause = session.serve(reader).await;
    if let Some(reason) = cause.close_frame() {
        let frame = crate::frames::close(reason, cause.label());
        session.queue_last(frame.encode_to_vec());
    }
    session.logout();
    session.logout();
    drop(session);
    // Let the writer flush (the Close frame included), briefly. A writer
    // still stuck on a peer that does not read is aborted: that drops the
    // socket, so the connection really closes.
    let grace = tokio::time::Duration::from_secs(2);
    let mut writer_task = writer_task;
    if tokio::time::timeout(grace, &mut writer_task).await.is_err() {
        tracing::debug!(conn = conn_id, "writer did not finish in time");
        progress.reset.store(true, Ordering::Relaxed);
        writer_task.abort();
    }
    shared.metrics.sessions_open.dec();
    cause
}

/// The optional PROXY header and the Noise handshake, within the handshake
/// timeout. Returns the channel and the advisory client address.
async fn establish(
    shared: &Shared,
    mut sock: TcpStream,
    progress: &Arc<WriteProgress>,
) -> Result<(ponte_transport::Channel<Watched>, Option<IpAddr>), CloseCause> {
    let _ = sock.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + shared.cfg.handshake_timeout;
    let stop = shared.stop.clone();
    let header = tokio::select! {
        _ = stop.cancelled() => return Err(CloseCause::Shutdown),
        r = timeout_at(deadline, read_proxy_header(&mut sock)) => r,
    };
    let (prefix, claimed) = match header {
        Err(_) => return Err(CloseCause::HandshakeTimeout),
        Ok(Err(cause)) => return Err(cause),
        Ok(Ok(v)) => v,
    };
    let mut tcfg = ponte_transport::ServerConfig::new(shared.keypair.clone());
    tcfg.handshake_timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    tcfg.max_frame_len = shared.cfg.max_frame_len;
    let sock = Watched {
        inner: sock,
        progress: Arc::clone(progress),
    };
    let accepted = tokio::select! {
        _ = stop.cancelled() => return Err(CloseCause::Shutdown),
        r = ponte_transport::accept_with_prefix(sock, &prefix, &tcfg) => r,
    };
    match accepted {
        Ok(c) => Ok((c, claimed)),
        Err(TransportError::HandshakeTimeout) => Err(CloseCause::HandshakeTimeout),
        Err(TransportError::UnexpectedEof) => Err(CloseCause::HandshakeEof),
        Err(_) => Err(CloseCause::HandshakeFailed),
    }
}

/// Reads a PROXY header if the stream starts with one (our preamble starts
/// with the version byte 0x01; a PROXY header with 'P' or '\r'). Returns
/// the bytes read past it and the advisory client address.
async fn read_proxy_header(sock: &mut TcpStream) -> Result<(Vec<u8>, Option<IpAddr>), CloseCause> {
    let mut reader = proxy_header::HeaderReader::optional();
    loop {
        let n = sock
            .read(reader.unfilled())
            .await
            .map_err(|_| CloseCause::ReadError)?;
        match reader.advance(n) {
            Ok(proxy_header::Step::NeedMore) => {}
            Ok(proxy_header::Step::Done(got)) => {
                let claimed = got.header.and_then(|h| h.tcp_source()).map(|a| a.ip());
                return Ok((got.rest, claimed));
            }
            Err(proxy_header::ReadError::Closed) => return Err(CloseCause::HandshakeEof),
            Err(_) => return Err(CloseCause::ProxyHeaderInvalid),
        }
    }
}

/// Drains the outbound queue into the socket, several frames per write.
///
/// A write during which the socket accepts no byte for `stall` ends the
/// task: the queue reports the stall (the session then closes the
/// connection as a slow consumer), and returning drops the frames and
/// their plaintext and ciphertext copies at once.
async fn write_loop(
    mut w: Writer,
    mut rx: outbox::Receiver,
    progress: Arc<WriteProgress>,
    stall: Duration,
) {
    while let Some(encoded) = rx.take(64).await {
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let started = tokio::time::Instant::now();
        let send = w.send_frames(&refs);
        tokio::pin!(send);
        let sent = loop {
            let moved = progress.last().max(started);
            tokio::select! {
                r = &mut send => break r,
                _ = tokio::time::sleep_until(moved + stall) => {
                    if progress.last().max(started) + stall <= tokio::time::Instant::now() {
                        tracing::debug!("socket accepted nothing for {stall:?}: stalled");
                        progress.reset.store(true, Ordering::Relaxed);
                        rx.stalled();
                        return;
                    }
                }
            }
        };
        if let Err(e) = sent {
            tracing::debug!("write failed: {e}");
            return;
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An idle connection's memory is mostly its two tasks' futures: keep
    /// them small (the handshake and the handlers are boxed, so their state
    /// exists only while they run).
    #[tokio::test]
    async fn connection_futures_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        let server = crate::Server::bind(cfg, None).await.unwrap();
        let shared = Arc::clone(&server.shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (sock, peer) = listener.accept().await.unwrap();
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let slot = shared.pre_login.enter(peer.ip()).unwrap();
        let conn = handle(Arc::clone(&shared), sock, peer, permit, slot);
        let conn_size = std::mem::size_of_val(&conn);
        drop(conn);
        // 1,784 B when measured (the session itself 240 B). Unboxed, the
        // handshake and the request handlers would add over 1 KiB.
        eprintln!(
            "connection future {conn_size} B, session {} B",
            std::mem::size_of::<Session>()
        );
        assert!(conn_size <= 2048, "connection future is {conn_size} B");
    }
}
