//! The data path: copy bytes both ways between a client and its upstream.
//!
//! This is the relay's core, so it is our own code rather than
//! `tokio::io::copy_bidirectional`, which holds two buffers for the whole life
//! of a connection and knows neither idle nor half-close timeouts:
//!
//! - **Memory.** An idle connection holds no buffer at all. Plain TCP legs wait
//!   for readiness first and only then take a buffer (or, on Linux, a pipe
//!   for `splice(2)`), drain it, and give it back. A busy direction grows its
//!   buffer from `buffer_size` up to `max_buffer_size` while reads keep
//!   filling it, so bulk transfers make few system calls.
//! - **Zero copy.** Between two plain TCP sockets on Linux the bytes move
//!   socket -> pipe -> socket inside the kernel. Pipes come from a small
//!   per-thread pool and are held only while bytes are in flight.
//! - **Half close.** When one side finishes sending, the relay shuts down
//!   writing towards the other side and lets the other direction run on for
//!   at most `half_close` (1 s in the official config).
//! - **Idle timeout.** No byte in either direction for `idle` closes both.
//!
//! Both directions run in the connection's one task; the activity clock is a
//! relaxed atomic read by a single timer, so the copy loops never touch a timer.

use prometheus_client::metrics::counter::Counter;
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// Last activity, in milliseconds since `base`.
#[derive(Debug)]
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Relay between two plain TCP sockets.
pub async fn relay_tcp(
    client: TcpStream,
    upstream: TcpStream,
    opts: RelayOptions,
    counters: &ByteCounters,
) -> Outcome {
    let act = Activity::new();
    let (c, u) = (&client, &upstream);
    #[cfg(target_os = "linux")]
    if opts.splice {
        let up = splice_dir(c, u, &act, &counters.up);
        let down = splice_dir(u, c, &act, &counters.down);
        return drive(up, down, || shut(u), || shut(c), &act, opts).await;
    }
    let (mut cw, mut uw) = (TcpRef(c), TcpRef(u));
    let up = tcp_to(c, &mut uw, &act, &counters.up, opts);
    let down = tcp_to(u, &mut cw, &act, &counters.down, opts);
    drive(up, down, || shut(u), || shut(c), &act, opts).await
}

/// Relay between a client stream (TLS) and a plain TCP upstream.
pub async fn relay_stream<S>(
    client: S,
    upstream: TcpStream,
    opts: RelayOptions,
    counters: &ByteCounters,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Send,
{
    let act = Activity::new();
    let (mut cr, cw) = tokio::io::split(client);
    let cw = tokio::sync::Mutex::new(cw);
    let u = &upstream;
    let up = stream_to_tcp(&mut cr, u, &act, &counters.up, opts);
    let down = async {
        let mut w = cw.lock().await;
        tcp_to(u, &mut *w, &act, &counters.down, opts).await
    };
    let close_client = || async {
        let mut w = cw.lock().await;
        let _ = w.shutdown().await;
    };
    // The client side's shutdown is async (TLS close_notify); run it inline.
    let up = pin!(up);
    let down = pin!(down);
    drive_async(up, down, || shut(u), close_client, &act, opts).await
}

fn shut(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

async fn drive<A, B>(
    up: A,
    down: B,
    end_up: impl FnOnce(),
    end_down: impl FnOnce(),
    act: &Activity,
    opts: RelayOptions,
) -> Outcome
where
    A: std::future::Future<Output = io::Result<()>>,
    B: std::future::Future<Output = io::Result<()>>,
{
    drive_async(
        pin!(up),
        pin!(down),
        end_up,
        || async move { end_down() },
        act,
        opts,
    )
    .await
}

/// Run both directions until both end, an error, or a timeout.
async fn drive_async<A, B, F>(
    mut up: std::pin::Pin<&mut A>,
    mut down: std::pin::Pin<&mut B>,
    end_up: impl FnOnce(),
    end_down: impl FnOnce() -> F,
    act: &Activity,
    opts: RelayOptions,
) -> Outcome
where
    A: std::future::Future<Output = io::Result<()>>,
    B: std::future::Future<Output = io::Result<()>>,
    F: std::future::Future<Output = ()>,
{
    let mut end_up = Some(end_up);
    let mut end_down = Some(end_down);
    let (mut up_done, mut down_done) = (false, false);
    let mut half_close_at: Option<Instant> = None;
    let timer = tokio::time::sleep(opts.idle);
    let mut timer = pin!(timer);
    loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                if let Err(e) = r { return Outcome::Error(e); }
                up_done = true;
                if let Some(f) = end_up.take() { f(); }
            }
            r = &mut down, if !down_done => {
                if let Err(e) = r { return Outcome::Error(e); }
                down_done = true;
                if let Some(f) = end_down.take() { f().await; }
            }
            _ = &mut timer => {
                let now = Instant::now();
                if let Some(t) = half_close_at {
                    if now >= t { return Outcome::HalfCloseTimeout; }
                }
                let idle_at = act.last() + opts.idle;
                if now >= idle_at { return Outcome::IdleTimeout; }
                let next = half_close_at.map_or(idle_at, |t| t.min(idle_at));
                timer.as_mut().reset(next);
                continue;
            }
        }
        if up_done && down_done {
            return Outcome::Finished;
        }
        if half_close_at.is_none() {
            let t = Instant::now() + opts.half_close;
            half_close_at = Some(t);
            if t < timer.deadline() {
                timer.as_mut().reset(t);
            }
        }
    }
}

/// Buffer sizing for one direction: grows while reads fill it.
#[derive(Debug)]
struct Sizer {
    cur: usize,
    max: usize,
}

impl Sizer {
    fn new(opts: &RelayOptions) -> Self {
        Sizer {
            cur: opts.buffer_size,
            max: opts.max_buffer_size.max(opts.buffer_size),
        }
    }
    fn filled(&mut self, n: usize, cap: usize) {
        if n == cap && self.cur < self.max {
            self.cur = (self.cur * 2).min(self.max);
        }
    }
}

/// `AsyncWrite` over a shared `&TcpStream`, so that both directions of a
/// connection can borrow the same sockets without splitting them.
struct TcpRef<'a>(&'a TcpStream);

impl AsyncWrite for TcpRef<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return std::task::Poll::Ready(r),
            }
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        shut(self.0);
        std::task::Poll::Ready(Ok(()))
    }
}

/// Copy from a plain TCP socket. Waits for readability without a buffer,
/// then reads everything available into one, writes it on, and frees it.
async fn tcp_to<W: AsyncWrite + Unpin>(
    src: &TcpStream,
    dst: &mut W,
    act: &Activity,
    count: &Counter,
    opts: RelayOptions,
) -> io::Result<()> {
    let mut sizer = Sizer::new(&opts);
    loop {
        src.readable().await?;
        let mut buf = Vec::new();
        let mut wrote = false;
        loop {
            buf.resize(sizer.cur, 0);
            match src.try_read(&mut buf) {
                Ok(0) => {
                    if wrote {
                        dst.flush().await?;
                    }
                    return Ok(());
                }
                Ok(n) => {
                    act.touch();
                    count.inc_by(n as u64);
                    dst.write_all(&buf[..n]).await?;
                    wrote = true;
                    sizer.filled(n, buf.len());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if wrote {
            dst.flush().await?;
        }
    }
}

async fn write_all_tcp(dst: &TcpStream, data: &[u8]) -> io::Result<()> {
    TcpRef(dst).write_all(data).await
}

async fn stream_to_tcp<R: AsyncRead + Unpin>(
    src: &mut R,
    dst: &TcpStream,
    act: &Activity,
    count: &Counter,
    opts: RelayOptions,
) -> io::Result<()> {
    // A TLS stream cannot be polled for readiness without a buffer, so this
    // direction keeps one; it starts small and grows only under load.
    let mut sizer = Sizer::new(&opts);
    let mut buf = vec![0u8; sizer.cur];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        act.touch();
        count.inc_by(n as u64);
        write_all_tcp(dst, &buf[..n]).await?;
        sizer.filled(n, buf.len());
        if buf.len() < sizer.cur {
            buf.resize(sizer.cur, 0);
        }
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

#[cfg(target_os = "linux")]
async fn splice_dir(
    src: &TcpStream,
    dst: &TcpStream,
    act: &Activity,
    count: &Counter,
) -> io::Result<()> {
    use crate::sys::{fd, splice};
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    loop {
        src.readable().await?;
        let pipe = pipes::take()?;
        let res: io::Result<bool> = async {
            loop {
                let n = match src.try_io(Interest::READABLE, || {
                    splice(sfd, fd(&pipe.write), SPLICE_CHUNK)
                }) {
                    Ok(0) => return Ok(false),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e),
                };
                act.touch();
                count.inc_by(n as u64);
                let mut left = n;
                while left > 0 {
                    match dst.try_io(Interest::WRITABLE, || splice(fd(&pipe.read), dfd, left)) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(m) => left -= m,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        .await;
        match res {
            Ok(more) => {
                // The pipe is empty on every Ok path: give it back.
                pipes::put(pipe);
                if !more {
                    return Ok(());
                }
            }
            // A pipe that may still hold bytes is dropped (closed), never reused.
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
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
        let relay = tokio::spawn(async move { relay_tcp(c_in, u_out, opts(splice), &ctr2).await });
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

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_closes() {
        for splice in [false, true] {
            let (_client, c_in) = pair().await;
            let (u_out, _server) = pair().await;
            let ctr = counters();
            let start = Instant::now();
            let out = relay_tcp(c_in, u_out, opts(splice), &ctr).await;
            assert!(matches!(out, Outcome::IdleTimeout), "{out:?}");
            let waited = start.elapsed();
            assert!(waited >= Duration::from_secs(200) && waited < Duration::from_secs(202));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn half_close_times_out_after_one_second() {
        let (mut client, c_in) = pair().await;
        let (u_out, _server) = pair().await;
        let ctr = counters();
        client.shutdown().await.unwrap();
        let start = Instant::now();
        let out = relay_tcp(c_in, u_out, opts(true), &ctr).await;
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
            tokio::spawn(async move { relay_stream(c_in, u_out, opts(false), &ctr2).await });
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
}
