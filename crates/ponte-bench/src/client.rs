//! `ponte-bench client`: the load generators. The harness runs them as child
//! processes (so heavy tests can be spread over several processes, each under
//! the per-process file limit) and reads one JSON line from each.
//!
//! | test | per connection |
//! |---|---|
//! | `throughput` | send `D` + a byte stream for the duration, half-close, read the upstream's byte count |
//! | `connrate` | loop: connect, [TLS handshake], send `C` + 1 byte, read it back, read EOF |
//! | `latency` | send `E`, then ping-pong `--msg-size` bytes for the duration |
//! | `idle` | send `H`, read `h`; report readiness, hold until stdin closes |
//! | `ttfb` | loop: connect, send an untagged Chrome-shaped ClientHello (a prober's), time the first byte back, close |
//!
//! With `--stealth SECRET` every connection opens as a Ponte client does
//! through a stealth listener (tagged ClientHello, the relay's flight
//! checked, then TLS application-data records) before the test's bytes.

use crate::stats::LatencySummary;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Time allowed for one connect + handshake + first exchange.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Write size in the throughput test.
const CHUNK: usize = 64 * 1024;

/// Which load to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Test {
    /// Bulk bytes client -> upstream.
    Throughput,
    /// New connections per second.
    Connrate,
    /// Ping-pong round trips.
    Latency,
    /// Open and hold connections.
    Idle,
    /// Time to the first byte answering a prober's ClientHello.
    Ttfb,
}

/// Arguments of `ponte-bench client`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Address of the system under test.
    #[arg(long)]
    pub target: SocketAddr,
    /// Speak TLS (any certificate accepted).
    #[arg(long)]
    pub tls: bool,
    /// Which test.
    #[arg(long, value_enum)]
    pub test: Test,
    /// Connections (concurrency for `connrate`).
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Duration in milliseconds (ignored by `idle`).
    #[arg(long, default_value_t = 5000)]
    pub duration_ms: u64,
    /// Message size for `latency`.
    #[arg(long, default_value_t = 64)]
    pub msg_size: usize,
    /// Connection attempts in flight while `idle` opens its connections.
    #[arg(long, default_value_t = 64)]
    pub open_parallel: usize,
    /// Open each connection through a stealth listener with this link
    /// secret (22 characters of base64url).
    #[arg(long, value_name = "SECRET")]
    pub stealth: Option<String>,
    /// The TLS server name of stealth openings and `ttfb` probes.
    #[arg(long, default_value = "bench.example")]
    pub sni: String,
}

/// What one client process reports (one JSON line on stdout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientReport {
    /// Connections or operations that completed.
    pub ok: u64,
    /// Failures.
    pub errors: u64,
    /// First error seen, for the log.
    pub first_error: Option<String>,
    /// Payload bytes confirmed by the upstream (`throughput`).
    pub bytes: u64,
    /// Measured wall time in seconds.
    pub elapsed_s: f64,
    /// Operations (round trips, connections) completed in `elapsed_s`.
    pub ops: u64,
    /// Latency of each operation.
    pub latency: LatencySummary,
    /// Negotiated TLS cipher suite, if TLS.
    pub tls_suite: Option<String>,
}

/// Any byte stream the tests run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects (and handshakes, if `tls`, or opens the stealth layer) to
/// `target`.
pub struct Connector {
    target: SocketAddr,
    tls: Option<TlsConnector>,
    stealth: Option<(ponte_wire::stealth::Secret, String)>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// A connector for `target`.
    pub fn new(target: SocketAddr, tls: bool) -> Result<Self> {
        let tls = if tls {
            Some(TlsConnector::from(crate::tls::client_config()?))
        } else {
            None
        };
        Ok(Self {
            target,
            tls,
            stealth: None,
        })
    }

    /// Connections open the stealth layer with `secret`, naming `sni`.
    pub fn with_stealth(mut self, secret: &str, sni: &str) -> Result<Self> {
        let secret = ponte_wire::stealth::Secret::from_text(secret)?;
        self.stealth = Some((secret, sni.to_owned()));
        Ok(self)
    }

    /// Opens one connection; returns the stream and the negotiated suite.
    pub async fn connect(&self) -> Result<(Box<dyn Io>, Option<String>)> {
        let tcp = TcpStream::connect(self.target)
            .await
            .with_context(|| format!("connect {}", self.target))?;
        tcp.set_nodelay(true)?;
        if let Some((secret, sni)) = &self.stealth {
            let s = crate::stealth::open(tcp, secret, sni).await?;
            return Ok((Box::new(s), Some("stealth".to_owned())));
        }
        match &self.tls {
            None => Ok((Box::new(tcp), None)),
            Some(c) => {
                let s = c
                    .connect(crate::tls::server_name()?, tcp)
                    .await
                    .context("TLS handshake")?;
                let suite = s
                    .get_ref()
                    .1
                    .negotiated_cipher_suite()
                    .map(|cs| format!("{:?}", cs.suite()));
                Ok((Box::new(s), suite))
            }
        }
    }
}

/// Runs one client process: the test, then one JSON line on stdout.
pub fn run(args: ClientArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run_test(&args))?;
    if args.test != Test::Idle {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn run_test(args: &ClientArgs) -> Result<ClientReport> {
    let mut conn = Connector::new(args.target, args.tls)?;
    if let Some(secret) = &args.stealth {
        conn = conn.with_stealth(secret, &args.sni)?;
    }
    let conn = Arc::new(conn);
    let duration = Duration::from_millis(args.duration_ms);
    match args.test {
        Test::Throughput => throughput(conn, args.conns, duration).await,
        Test::Connrate => connrate(conn, args.conns, duration).await,
        Test::Latency => latency(conn, args.conns, duration, args.msg_size).await,
        Test::Idle => idle(conn, args.conns, args.open_parallel).await,
        Test::Ttfb => crate::stealth::ttfb(args.target, &args.sni, args.conns, duration).await,
    }
}

fn note_error(report: &mut ClientReport, e: &anyhow::Error) {
    report.errors += 1;
    if report.first_error.is_none() {
        report.first_error = Some(format!("{e:#}"));
    }
}

/// Opens `n` connections concurrently, each already past `preamble`.
async fn open_all(conn: &Arc<Connector>, n: usize, mode: u8) -> (Vec<Box<dyn Io>>, ClientReport) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let conn = conn.clone();
        set.spawn(async move {
            tokio::time::timeout(SETUP_TIMEOUT, async {
                let (mut s, suite) = conn.connect().await?;
                s.write_all(&[mode]).await?;
                s.flush().await?;
                anyhow::Ok((s, suite))
            })
            .await
            .context("setup timed out")?
        });
    }
    let mut streams = Vec::with_capacity(n);
    let mut report = ClientReport::default();
    while let Some(res) = set.join_next().await {
        match res.context("task").and_then(|r| r) {
            Ok((s, suite)) => {
                report.tls_suite = report.tls_suite.take().or(suite);
                streams.push(s);
            }
            Err(e) => note_error(&mut report, &e),
        }
    }
    (streams, report)
}

async fn throughput(conn: Arc<Connector>, n: usize, duration: Duration) -> Result<ClientReport> {
    let (streams, mut report) = open_all(&conn, n, b'D').await;
    if streams.is_empty() {
        bail!("no connection: {:?}", report.first_error);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for mut s in streams {
        set.spawn(async move {
            let chunk = vec![0x5au8; CHUNK];
            while Instant::now() < deadline {
                s.write_all(&chunk).await?;
            }
            s.flush().await?;
            s.shutdown().await?;
            let mut count = [0u8; 8];
            tokio::time::timeout(SETUP_TIMEOUT, s.read_exact(&mut count))
                .await
                .context("waiting for the upstream's byte count")??;
            anyhow::Ok((u64::from_be_bytes(count), start.elapsed()))
        });
    }
    let mut last = Duration::ZERO;
    while let Some(res) = set.join_next().await {
        match res.context("task").and_then(|r| r) {
            Ok((bytes, at)) => {
                report.ok += 1;
                report.bytes += bytes;
                last = last.max(at);
            }
            Err(e) => note_error(&mut report, &e),
        }
    }
    report.elapsed_s = last.as_secs_f64();
    report.ops = report.ok;
    Ok(report)
}

async fn connrate(
    conn: Arc<Connector>,
    workers: usize,
    duration: Duration,
) -> Result<ClientReport> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let conn = conn.clone();
        set.spawn(async move {
            let mut local = ClientReport::default();
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let one = tokio::time::timeout(SETUP_TIMEOUT, async {
                    let (mut s, suite) = conn.connect().await?;
                    s.write_all(b"Cx").await?;
                    s.flush().await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.context("reading echo")?;
                    if b[0] != b'x' {
                        bail!("wrong byte echoed");
                    }
                    // Let the far side close first; a TLS peer may or may not
                    // send close_notify, both are fine.
                    let mut rest = [0u8; 16];
                    let _ = s.read(&mut rest).await;
                    anyhow::Ok(suite)
                })
                .await
                .context("connection timed out")
                .and_then(|r| r);
                match one {
                    Ok(suite) => {
                        local.ok += 1;
                        local.tls_suite = local.tls_suite.take().or(suite);
                        samples.push(micros(t0.elapsed()));
                    }
                    Err(e) => {
                        note_error(&mut local, &e);
                        // Do not spin on a refused port.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (local, samples)
        });
    }
    let mut report = ClientReport::default();
    let mut all = Vec::new();
    while let Some(res) = set.join_next().await {
        let (local, samples) = res.context("task")?;
        merge(&mut report, local);
        all.extend(samples);
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    report.ops = report.ok;
    report.latency = LatencySummary::from_samples(&mut all);
    Ok(report)
}

async fn latency(
    conn: Arc<Connector>,
    n: usize,
    duration: Duration,
    msg_size: usize,
) -> Result<ClientReport> {
    let (streams, mut report) = open_all(&conn, n, b'E').await;
    if streams.is_empty() {
        bail!("no connection: {:?}", report.first_error);
    }
    let msg_size = msg_size.clamp(1, 1 << 20);
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for mut s in streams {
        set.spawn(async move {
            let msg = vec![0x42u8; msg_size];
            let mut back = vec![0u8; msg_size];
            let mut samples = Vec::with_capacity(1 << 14);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                s.write_all(&msg).await?;
                s.flush().await?;
                tokio::time::timeout(SETUP_TIMEOUT, s.read_exact(&mut back))
                    .await
                    .context("echo timed out")??;
                samples.push(micros(t0.elapsed()));
            }
            let _ = s.shutdown().await;
            anyhow::Ok(samples)
        });
    }
    let mut all = Vec::new();
    while let Some(res) = set.join_next().await {
        match res.context("task").and_then(|r| r) {
            Ok(samples) => {
                report.ok += 1;
                all.extend(samples);
            }
            Err(e) => note_error(&mut report, &e),
        }
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    report.ops = all.len() as u64;
    report.latency = LatencySummary::from_samples(&mut all);
    Ok(report)
}

/// Opens `n` held connections, prints a readiness line, holds them until
/// standard input closes.
async fn idle(conn: Arc<Connector>, n: usize, parallel: usize) -> Result<ClientReport> {
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let conn = conn.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let permit = sem.acquire_owned().await?;
            let s = tokio::time::timeout(SETUP_TIMEOUT * 2, async {
                let (mut s, _) = conn.connect().await?;
                s.write_all(b"H").await?;
                s.flush().await?;
                let mut ack = [0u8; 1];
                s.read_exact(&mut ack)
                    .await
                    .context("waiting for hold ack")?;
                if ack[0] != b'h' {
                    bail!("wrong hold ack");
                }
                anyhow::Ok(s)
            })
            .await
            .context("setup timed out")??;
            drop(permit);
            anyhow::Ok(s)
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut report = ClientReport::default();
    while let Some(res) = set.join_next().await {
        match res.context("task").and_then(|r| r) {
            Ok(s) => held.push(s),
            Err(e) => note_error(&mut report, &e),
        }
    }
    report.ok = held.len() as u64;
    report.elapsed_s = start.elapsed().as_secs_f64();
    println!("{}", serde_json::to_string(&report)?);
    // Hold until the harness closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    drop(held);
    Ok(report)
}

pub(crate) fn merge(into: &mut ClientReport, from: ClientReport) {
    into.ok += from.ok;
    into.errors += from.errors;
    if into.first_error.is_none() {
        into.first_error = from.first_error;
    }
    if into.tls_suite.is_none() {
        into.tls_suite = from.tls_suite;
    }
}

pub(crate) fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::upstream::{accept_loop, bind};

    /// An in-process upstream: plain (no header) and TLS listeners.
    async fn upstream() -> (SocketAddr, SocketAddr) {
        let plain = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tls = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addrs = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
        let cert = crate::tls::SelfSigned::generate().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(cert.cert_der, cert.key_der).unwrap(),
        );
        tokio::spawn(accept_loop(plain, false, None));
        tokio::spawn(accept_loop(tls, false, Some(acceptor)));
        addrs
    }

    // These check that each generator completes and counts what the upstream
    // confirmed; they assert nothing about speed.
    #[tokio::test]
    async fn throughput_counts_confirmed_bytes_plain_and_tls() {
        let (plain, tls) = upstream().await;
        for (addr, is_tls) in [(plain, false), (tls, true)] {
            let conn = Arc::new(Connector::new(addr, is_tls).unwrap());
            let r = throughput(conn, 2, Duration::from_millis(50))
                .await
                .unwrap();
            assert_eq!((r.ok, r.errors), (2, 0), "{r:?}");
            // At least one chunk per connection was written and confirmed.
            assert!(r.bytes >= 2 * CHUNK as u64, "{r:?}");
            assert_eq!(r.tls_suite.is_some(), is_tls);
        }
    }

    #[tokio::test]
    async fn connrate_and_latency_complete_operations() {
        let (plain, tls) = upstream().await;
        for (addr, is_tls) in [(plain, false), (tls, true)] {
            let conn = Arc::new(Connector::new(addr, is_tls).unwrap());
            let r = connrate(conn.clone(), 2, Duration::from_millis(50))
                .await
                .unwrap();
            assert!(r.ok >= 2 && r.errors == 0, "{r:?}");
            assert_eq!(r.latency.count, r.ok);
            let r = latency(conn, 3, Duration::from_millis(50), 64)
                .await
                .unwrap();
            assert!(r.ops >= 3 && r.errors == 0, "{r:?}");
            assert!(r.latency.p50_us <= r.latency.p99_us);
        }
    }

    #[tokio::test]
    async fn refused_target_is_reported_not_panicked() {
        let addr = bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .local_addr()
            .unwrap(); // listener dropped: nothing listens there any more
        let conn = Arc::new(Connector::new(addr, false).unwrap());
        assert!(throughput(conn, 1, Duration::from_millis(10))
            .await
            .is_err());
    }
}
