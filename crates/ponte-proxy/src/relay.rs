//! The data path: copy bytes both ways between a client and its upstream.
//!
//! This is the relay's core, so it is our own code rather than
//! `tokio::io::copy_bidirectional` (which keeps two buffers for the whole life
//! of a connection, cannot splice, and has neither idle nor half-close
//! timeouts). It is one small hand-written state machine per connection,
//! polled by the connection's task:
//!
//! - **Memory.** An idle connection holds no buffer: a direction takes one
//!   (or, between plain sockets on Linux, a pipe) when its source becomes
//!   readable and gives it back as soon as the source has nothing more. The
//!   whole relay state is a few hundred bytes.
//! - **System calls.** A read that returns less than it asked for has emptied
//!   the socket, so the direction goes back to waiting without the extra
//!   `read` that would only say `EAGAIN` (the readiness is cleared inside
//!   tokio's `try_io`, race-free).
//! - **Zero copy.** Bulk transfers between two plain sockets on Linux move
//!   socket -> pipe -> socket inside the kernel with `splice(2)`; a direction
//!   switches to splicing when a read fills the largest buffer and back to
//!   buffers when traffic turns small (a pipe costs two syscalls per chunk,
//!   more than a read and a write for a short message).
//! - **Buffers grow** from `buffer_size` to `max_buffer_size` while reads keep
//!   filling them, so bulk transfers make few system calls.
//! - **Half close.** When one side finishes sending, the relay shuts down
//!   writing towards the other and lets the other direction run on for at
//!   most `half_close` (1 s in the official config).
//! - **Idle timeout.** No byte in either direction for `idle` closes both;
//!   one timer per connection, re-armed lazily from a "last read" instant.
//! - **Fairness.** A direction yields to the scheduler after a bounded
//!   number of reads in one poll.

use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Data path settings.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Close after this long without a byte either way.
    pub idle: Duration,
    /// After one direction ends, the other may run on this long.
    pub half_close: Duration,
    /// First buffer size of a direction.
    pub buffer_size: usize,
    /// Largest buffer a busy direction grows to.
    pub max_buffer_size: usize,
    /// Use `splice(2)` between plain sockets (Linux).
    pub splice: bool,
}

/// How a relayed connection ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Both sides finished sending.
    Finished,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// One side finished and the other did not within the half-close timeout.
    HalfCloseTimeout,
    /// A socket error (reset, broken pipe …).
    Error(io::Error),
}

/// Byte counters of one listener.
#[derive(Debug, Clone)]
pub struct ByteCounters {
    /// Client to upstream.
    pub up: Counter,
    /// Upstream to client.
    pub down: Counter,
}

/// Reads per direction per poll before yielding to other tasks.
const MAX_ROUNDS: u32 = 16;

/// One end of a relayed connection.
trait Endpoint {
    /// The plain socket, when this end is one (splice needs both ends plain).
    fn tcp(&self) -> Option<&TcpStream>;
    /// Read into the spare capacity of `buf`. `Ok(0)` is end of stream.
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>)
        -> Poll<io::Result<usize>>;
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>>;
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Stop sending (FIN; for TLS close_notify first).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Endpoint for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            let room = buf.capacity() - buf.len();
            let before = buf.len();
            let mut short = false;
            let r = self.try_io(Interest::READABLE, || {
                let n = self.try_read_buf(buf)?;
                if n > 0 && n < room {
                    // The socket is empty: clear readiness now, with the
                    // readiness observed before this read.
                    short = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match r {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if short {
                        return Poll::Ready(Ok(buf.len() - before));
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            match self.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The peer may already be gone; there is nothing to report then.
        let _ = socket2::SockRef::from(&*self).shutdown(Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// Any byte stream (the client's TLS session).
struct Stream<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin> Endpoint for Stream<S> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(Pin::new(&mut self.0), cx, buf)
    }
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// State of one direction.
#[derive(Debug, Default)]
struct Dir {
    /// Bytes read and not yet written are `buf[pos..]`. No capacity when idle.
    buf: Vec<u8>,
    pos: u32,
    /// Current buffer size.
    cur: u32,
    /// Written but not yet flushed (TLS).
    unflushed: bool,
    /// Source finished.
    eof: bool,
    #[cfg(target_os = "linux")]
    splice: SpliceDir,
}

impl Dir {
    fn new(opts: &RelayOptions) -> Dir {
        Dir {
            cur: opts.buffer_size as u32,
            ..Dir::default()
        }
    }

    /// Nothing in flight: give the buffer (and pipe) back.
    fn release(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
        #[cfg(target_os = "linux")]
        self.splice.release();
    }

    /// Move bytes from `src` to `dst` until the source would block (Pending)
    /// or has ended and everything is written and shut down (Ready).
    #[allow(clippy::too_many_arguments)] // the relay's fields, borrowed apart
    fn poll<A: Endpoint, B: Endpoint>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut A,
        dst: &mut B,
        opts: &RelayOptions,
        count: &Counter,
        last: &mut Instant,
        other_done: bool,
    ) -> Poll<io::Result<()>> {
        let mut rounds = 0;
        loop {
            while (self.pos as usize) < self.buf.len() {
                let n = ready!(dst.poll_write(cx, &self.buf[self.pos as usize..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                // At most the buffer's length (<= 1 MiB, checked in config).
                self.pos += n as u32;
                self.unflushed = true;
            }
            self.buf.clear();
            self.pos = 0;
            #[cfg(target_os = "linux")]
            if let (Some(s), Some(d)) = (src.tcp(), dst.tcp()) {
                ready!(self.splice.poll_drain(cx, d))?;
                if self.splice.active && !self.eof {
                    if rounds >= MAX_ROUNDS {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    rounds += 1;
                    match ready!(self.splice.poll_fill(cx, s, opts)) {
                        Ok(0) => self.eof = true,
                        Ok(n) => {
                            count.inc_by(n as u64);
                            *last = Instant::now();
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    continue;
                }
            }
            if self.unflushed {
                ready!(dst.poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.eof {
                self.release();
                if other_done && dst.tcp().is_some() {
                    // Both ways are finished: closing the socket sends the
                    // FIN, a shutdown(2) first would be a wasted call.
                    return Poll::Ready(Ok(()));
                }
                return dst.poll_shutdown(cx);
            }
            if rounds >= MAX_ROUNDS {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            rounds += 1;
            if self.buf.capacity() < self.cur as usize {
                self.buf = Vec::with_capacity(self.cur as usize);
            }
            let room = self.buf.capacity();
            match src.poll_read_buf(cx, &mut self.buf) {
                Poll::Pending => {
                    self.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    count.inc_by(n as u64);
                    *last = Instant::now();
                    if n == room {
                        if (self.cur as usize) < opts.max_buffer_size {
                            self.cur = (self.cur * 2).min(opts.max_buffer_size as u32);
                        } else {
                            #[cfg(target_os = "linux")]
                            if opts.splice && src.tcp().is_some() && dst.tcp().is_some() {
                                self.splice.active = true;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Relay between two plain TCP sockets.
pub fn relay_tcp<'a>(
    client: TcpStream,
    upstream: TcpStream,
    opts: &'a RelayOptions,
    counters: &'a ByteCounters,
) -> impl Future<Output = Outcome> + 'a {
    Relay::new(client, upstream, opts, counters)
}

/// Relay between a client byte stream (TLS) and a plain TCP upstream.
pub fn relay_stream<'a, S>(
    client: S,
    upstream: TcpStream,
    opts: &'a RelayOptions,
    counters: &'a ByteCounters,
) -> impl Future<Output = Outcome> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + 'a,
{
    Relay::new(Stream(client), upstream, opts, counters)
}

pin_project_lite::pin_project! {
    /// The relay state of one connection: this is what an established
    /// connection costs beyond its sockets, so it is kept a plain struct
    /// (an `async fn` would hold several copies of its locals).
    struct Relay<'a, C> {
        client: C,
        upstream: TcpStream,
        up: Dir,
        down: Dir,
        up_done: bool,
        down_done: bool,
        last: Instant,
        half_close_at: Option<Instant>,
        opts: &'a RelayOptions,
        counters: &'a ByteCounters,
        #[pin]
        timer: tokio::time::Sleep,
    }
}

impl<'a, C: Endpoint> Relay<'a, C> {
    fn new(
        client: C,
        upstream: TcpStream,
        opts: &'a RelayOptions,
        counters: &'a ByteCounters,
    ) -> Self {
        Relay {
            client,
            upstream,
            up: Dir::new(opts),
            down: Dir::new(opts),
            up_done: false,
            down_done: false,
            last: Instant::now(),
            half_close_at: None,
            opts,
            counters,
            timer: tokio::time::sleep(opts.idle),
        }
    }
}

impl<C: Endpoint> Future for Relay<'_, C> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut me = self.project();
        let opts: &RelayOptions = me.opts;
        if !*me.up_done {
            match me.up.poll(
                cx,
                me.client,
                me.upstream,
                opts,
                &me.counters.up,
                me.last,
                *me.down_done,
            ) {
                Poll::Ready(Ok(())) => *me.up_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Outcome::Error(e)),
                Poll::Pending => {}
            }
        }
        if !*me.down_done {
            match me.down.poll(
                cx,
                me.upstream,
                me.client,
                opts,
                &me.counters.down,
                me.last,
                *me.up_done,
            ) {
                Poll::Ready(Ok(())) => *me.down_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Outcome::Error(e)),
                Poll::Pending => {}
            }
        }
        if *me.up_done && *me.down_done {
            return Poll::Ready(Outcome::Finished);
        }
        if (*me.up_done || *me.down_done) && me.half_close_at.is_none() {
            let at = Instant::now() + opts.half_close;
            *me.half_close_at = Some(at);
            if at < me.timer.deadline() {
                me.timer.as_mut().reset(at);
            }
        }
        while me.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if me.half_close_at.is_some_and(|t| now >= t) {
                return Poll::Ready(Outcome::HalfCloseTimeout);
            }
            let idle_at = *me.last + opts.idle;
            if now >= idle_at {
                return Poll::Ready(Outcome::IdleTimeout);
            }
            let next = me.half_close_at.map_or(idle_at, |t| t.min(idle_at));
            me.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

#[cfg(target_os = "linux")]
mod pipes {
    use crate::sys::Pipe;
    use std::cell::RefCell;

    /// Pipes kept per thread for reuse; more are closed when returned.
    const POOL_MAX: usize = 64;

    thread_local! {
        static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> std::io::Result<Pipe> {
        match POOL.with(|p| p.borrow_mut().pop()) {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Return an empty pipe.
    pub fn put(p: Pipe) {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(p);
            }
        });
    }
}

/// Largest amount moved into the pipe at once (the default pipe capacity).
#[cfg(target_os = "linux")]
const SPLICE_CHUNK: usize = 64 * 1024;

/// Splice state of one direction.
#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
struct SpliceDir {
    /// Bulk mode: move bytes through a pipe.
    active: bool,
    pipe: Option<crate::sys::Pipe>,
    /// Bytes in the pipe (at most one pipe's capacity).
    in_pipe: u32,
}

#[cfg(target_os = "linux")]
impl SpliceDir {
    /// Return the pipe to the pool, unless it still holds bytes.
    fn release(&mut self) {
        if self.in_pipe == 0 {
            if let Some(p) = self.pipe.take() {
                pipes::put(p);
            }
        }
    }

    /// Write out what is in the pipe.
    fn poll_drain(&mut self, cx: &mut Context<'_>, dst: &TcpStream) -> Poll<io::Result<()>> {
        use std::os::fd::AsRawFd;
        while self.in_pipe > 0 {
            let Some(pipe) = &self.pipe else {
                return Poll::Ready(Err(io::Error::other("splice state without a pipe")));
            };
            ready!(dst.poll_write_ready(cx))?;
            let (from, left) = (crate::sys::fd(&pipe.read), self.in_pipe as usize);
            match dst.try_io(Interest::WRITABLE, || {
                crate::sys::splice(from, dst.as_raw_fd(), left)
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.in_pipe -= n as u32,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Move what the socket has into the (empty) pipe. `Ok(0)` is end of stream.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        opts: &RelayOptions,
    ) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd;
        loop {
            if src.poll_read_ready(cx)?.is_pending() {
                self.release();
                return Poll::Pending;
            }
            let pipe = match &self.pipe {
                Some(p) => p,
                None => self.pipe.insert(pipes::take()?),
            };
            let into = crate::sys::fd(&pipe.write);
            let mut short = false;
            let r = src.try_io(Interest::READABLE, || {
                let n = crate::sys::splice(src.as_raw_fd(), into, SPLICE_CHUNK)?;
                if n > 0 && n < SPLICE_CHUNK {
                    short = true;
                    self.in_pipe = n as u32;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && short => self.in_pipe as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            };
            self.in_pipe = n as u32;
            if n > 0 && n < opts.buffer_size {
                // Small traffic: buffers are cheaper than a pipe.
                self.active = false;
            }
            return Poll::Ready(Ok(n));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn opts(splice: bool) -> RelayOptions {
        RelayOptions {
            idle: Duration::from_secs(200),
            half_close: Duration::from_secs(1),
            buffer_size: 4096,
            max_buffer_size: 65536,
            splice,
        }
    }

    fn counters() -> ByteCounters {
        ByteCounters {
            up: Counter::default(),
            down: Counter::default(),
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client <-> [relay c_in | u_out] <-> server
    async fn run_transfer(splice: bool) {
        let (mut client, c_in) = pair().await;
        let (u_out, mut server) = pair().await;
        let ctr = counters();
        let ctr2 = ctr.clone();
        let relay = tokio::spawn(async move { relay_tcp(c_in, u_out, &opts(splice), &ctr2).await });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&d2).await.unwrap();
            client.shutdown().await.unwrap();
            // The other direction keeps flowing after our FIN.
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        server.write_all(b"reply after client FIN").await.unwrap();
        server.shutdown().await.unwrap();
        let back = writer.await.unwrap();
        assert_eq!(back, b"reply after client FIN");
        assert!(matches!(relay.await.unwrap(), Outcome::Finished));
        assert_eq!(ctr.up.get(), data.len() as u64);
        assert_eq!(ctr.down.get(), 22);
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close_buffered() {
        run_transfer(false).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn copies_both_ways_with_half_close_splice() {
        run_transfer(true).await;
    }

    /// Many small request/response exchanges (the chat pattern) stay exact.
    #[tokio::test]
    async fn ping_pong_small_messages() {
        for splice in [false, true] {
            let (mut client, c_in) = pair().await;
            let (u_out, mut server) = pair().await;
            let ctr = counters();
            let ctr2 = ctr.clone();
            let relay =
                tokio::spawn(async move { relay_tcp(c_in, u_out, &opts(splice), &ctr2).await });
            for i in 0..500u32 {
                let msg = i.to_be_bytes();
                client.write_all(&msg).await.unwrap();
                let mut got = [0u8; 4];
                server.read_exact(&mut got).await.unwrap();
                assert_eq!(got, msg);
                server.write_all(&got).await.unwrap();
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(got, msg);
            }
            drop(client);
            drop(server);
            relay.await.unwrap();
            assert_eq!(ctr.up.get(), 2000);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_closes() {
        for splice in [false, true] {
            let (_client, c_in) = pair().await;
            let (u_out, _server) = pair().await;
            let ctr = counters();
            let start = Instant::now();
            let out = relay_tcp(c_in, u_out, &opts(splice), &ctr).await;
            assert!(matches!(out, Outcome::IdleTimeout), "{out:?}");
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(200) && waited < Duration::from_secs(202));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_the_idle_timeout() {
        let (mut client, c_in) = pair().await;
        let (u_out, mut server) = pair().await;
        let ctr = counters();
        let relay = tokio::spawn(async move {
            let start = Instant::now();
            let out = relay_tcp(c_in, u_out, &opts(false), &ctr).await;
            (out, start.elapsed())
        });
        tokio::time::sleep(Duration::from_secs(150)).await;
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).await.unwrap();
        let (out, waited) = relay.await.unwrap();
        assert!(matches!(out, Outcome::IdleTimeout));
        assert!(waited >= Duration::from_secs(350), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn half_close_times_out_after_one_second() {
        let (mut client, c_in) = pair().await;
        let (u_out, _server) = pair().await;
        let ctr = counters();
        client.shutdown().await.unwrap();
        let start = Instant::now();
        let out = relay_tcp(c_in, u_out, &opts(true), &ctr).await;
        assert!(matches!(out, Outcome::HalfCloseTimeout), "{out:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn generic_stream_path_copies_and_half_closes() {
        let (mut client, c_in) = pair().await;
        let (u_out, mut server) = pair().await;
        let ctr = counters();
        let ctr2 = ctr.clone();
        let relay =
            tokio::spawn(async move { relay_stream(c_in, u_out, &opts(false), &ctr2).await });
        let data = vec![7u8; 200_000];
        client.write_all(&data).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), data.len());
        server.write_all(b"late").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"late");
        assert!(matches!(relay.await.unwrap(), Outcome::Finished));
        assert_eq!(ctr.up.get(), 200_000);
    }

    /// The per-connection state stays small: it is what an idle user costs.
    #[tokio::test]
    async fn relay_future_is_small() {
        let (a, _x) = pair().await;
        let (b, _y) = pair().await;
        let ctr = counters();
        let o = opts(true);
        let f = relay_tcp(a, b, &o, &ctr);
        assert!(
            std::mem::size_of_val(&f) <= 448,
            "{}",
            std::mem::size_of_val(&f)
        );
    }
}
