//! The NATS reference: a minimal client of the NATS core text protocol
//! (`CONNECT`, `PUB`, `SUB`, `MSG`, `PING`/`PONG`) over tokio, and the same
//! loads as for ponte (idle connections, publisher/subscriber pairs).
//!
//! Only what the bench needs is parsed; a control line is capped at 4 KiB
//! and a payload at 1 MiB before anything is buffered for it.

use super::common::{self, LoadResult, Phase};
use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use futures::{FutureExt as _, StreamExt as _};
use std::ops::Range;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

/// Longest control line accepted.
const MAX_LINE: usize = 4096;
/// Largest payload accepted.
const MAX_PAYLOAD: usize = 1 << 20;
/// Messages per write (and per flush PING when unpaced).
const PUB_BATCH: usize = 64;
/// Deadline of connecting and the first PING/PONG.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A server operation, as far as the bench cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `MSG subject sid [reply] len`: the payload's range in the parsed buffer.
    Msg(Range<usize>),
    /// `PING`: answer `PONG`.
    Ping,
    /// `PONG`: a flush completed.
    Pong,
    /// `+OK`, `INFO …`: nothing to do.
    Other,
    /// `-ERR …`.
    Err(String),
}

/// Parses one operation at the start of `buf`: `Ok(None)` when more bytes
/// are needed, else the operation and how many bytes it used.
pub fn parse(buf: &[u8]) -> anyhow::Result<Option<(Op, usize)>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_LINE {
            bail!("control line over {MAX_LINE} bytes");
        }
        return Ok(None);
    };
    if eol > MAX_LINE {
        bail!("control line over {MAX_LINE} bytes");
    }
    let line = std::str::from_utf8(&buf[..eol]).context("control line not UTF-8")?;
    let mut words = line.split_ascii_whitespace();
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let op = match verb.as_str() {
        "MSG" => {
            let args: Vec<&str> = words.collect();
            if !(3..=4).contains(&args.len()) {
                bail!("bad MSG line {line:?}");
            }
            let len: usize = args[args.len() - 1].parse().context("MSG length")?;
            if len > MAX_PAYLOAD {
                bail!("payload of {len} bytes");
            }
            let start = eol + 2;
            let end = start + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                bail!("payload not followed by CRLF");
            }
            return Ok(Some((Op::Msg(start..end), end + 2)));
        }
        "PING" => Op::Ping,
        "PONG" => Op::Pong,
        "+OK" | "INFO" => Op::Other,
        "-ERR" => Op::Err(line.to_owned()),
        _ => bail!("unknown operation {line:?}"),
    };
    Ok(Some((op, eol + 2)))
}

/// A connected NATS client, split into halves.
#[derive(Debug)]
pub struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

impl Conn {
    /// Connects, sends `CONNECT` and waits for the `PONG` of a `PING`.
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let work = async {
            let sock = TcpStream::connect(addr).await?;
            let _ = sock.set_nodelay(true);
            let (rd, wr) = sock.into_split();
            let mut c = Conn {
                rd,
                wr,
                buf: BytesMut::with_capacity(4096),
            };
            c.wr.write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"name\":\"ponte-bench\"}\r\nPING\r\n",
            )
            .await?;
            c.flush_wait().await?;
            anyhow::Ok(c)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, work)
            .await
            .context("NATS connect timed out")?
    }

    /// Reads until a `PONG` (answering the server's `PING`s).
    async fn flush_wait(&mut self) -> anyhow::Result<()> {
        loop {
            match self.next().await? {
                (Op::Pong, _) => return Ok(()),
                (Op::Ping, _) => self.wr.write_all(b"PONG\r\n").await?,
                (Op::Err(e), _) => bail!("NATS: {e}"),
                _ => {}
            }
        }
    }

    /// Subscribes and waits until the server has processed it.
    pub async fn subscribe(&mut self, subject: &str) -> anyhow::Result<()> {
        self.wr
            .write_all(format!("SUB {subject} 1\r\nPING\r\n").as_bytes())
            .await?;
        self.flush_wait().await
    }

    /// The next operation and, for `MSG`, its payload. Cancel-safe.
    pub async fn next(&mut self) -> anyhow::Result<(Op, Bytes)> {
        loop {
            if let Some((op, used)) = parse(&self.buf)? {
                let chunk = self.buf.split_to(used).freeze();
                let payload = match &op {
                    Op::Msg(r) => chunk.slice(r.clone()),
                    _ => Bytes::new(),
                };
                return Ok((op, payload));
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                bail!("NATS server closed the connection");
            }
        }
    }

    /// The next operation if one is already buffered or readable now.
    fn next_now(&mut self) -> Option<anyhow::Result<(Op, Bytes)>> {
        self.next().now_or_never()
    }
}

/// Opens `count` idle connections and holds them until stdin closes.
pub async fn idle(addr: &str, count: u32, concurrency: usize) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<Conn>> = futures::stream::iter(0..count)
        .map(|_| Conn::connect(addr))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let held: Vec<Conn> = results.into_iter().collect::<anyhow::Result<_>>()?;
    common::ready_then_hold(held.len()).await?;
    drop(held);
    Ok(())
}

/// `pairs` publisher/subscriber pairs on subjects `bench.<first+p>`.
#[allow(clippy::too_many_arguments)]
pub async fn traffic(
    addr: &str,
    first: u32,
    pairs: u32,
    rate: f64,
    window: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let mut pubs = Vec::new();
    let mut subs = Vec::new();
    for p in 0..pairs {
        let subject = format!("bench.{}", first + p);
        let mut s = Conn::connect(addr).await?;
        s.subscribe(&subject).await?;
        subs.push(s);
        pubs.push((Conn::connect(addr).await?, subject));
    }
    common::ready_then_go(pubs.len() + subs.len()).await?;
    let phase = Phase::start(warmup, duration);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, subject) in pubs {
        tasks.spawn(publisher(c, subject, phase, rate, window, size));
    }
    for c in subs {
        tasks.spawn(subscriber(c, phase, rate > 0.0));
    }
    let mut total = LoadResult {
        secs: phase.secs(),
        ..LoadResult::default()
    };
    while let Some(r) = tasks.join_next().await {
        total.merge(r.context("NATS task panicked")??);
    }
    Ok(total)
}

async fn subscriber(mut c: Conn, phase: Phase, latency: bool) -> anyhow::Result<LoadResult> {
    let mut res = LoadResult::default();
    loop {
        let first = tokio::select! {
            r = c.next() => r?,
            _ = sleep_until(phase.win_end) => break,
        };
        let mut op = Some(Ok(first));
        let mut pong = false;
        for _ in 0..1024 {
            let Some(r) = op.take() else { break };
            match r? {
                (Op::Msg(_), payload) => {
                    res.record(
                        &phase,
                        Instant::now(),
                        common::read_stamp(&payload),
                        latency,
                    );
                }
                (Op::Ping, _) => pong = true,
                (Op::Err(e), _) => bail!("NATS: {e}"),
                _ => {}
            }
            op = c.next_now();
        }
        if pong {
            c.wr.write_all(b"PONG\r\n").await?;
        }
    }
    Ok(res)
}

async fn publisher(
    mut c: Conn,
    subject: String,
    phase: Phase,
    rate: f64,
    window: usize,
    size: usize,
) -> anyhow::Result<LoadResult> {
    let mut res = LoadResult::default();
    let mut sent: u64 = 0;
    let mut pings_out = 0usize;
    let max_pings = (window / PUB_BATCH).max(1);
    let mut payload = vec![0u8; size.max(8)];
    let header = format!("PUB {subject} {}\r\n", payload.len());
    let mut out = Vec::with_capacity(PUB_BATCH * (header.len() + payload.len() + 2) + 8);
    loop {
        let now = Instant::now();
        if now >= phase.win_end {
            break;
        }
        let n = if rate > 0.0 {
            let due = (rate * (now - phase.go).as_secs_f64()) as u64 + 1;
            usize::try_from(due.saturating_sub(sent))
                .unwrap_or(usize::MAX)
                .min(PUB_BATCH)
        } else if pings_out < max_pings {
            PUB_BATCH
        } else {
            0
        };
        if n > 0 {
            out.clear();
            for _ in 0..n {
                common::stamp(&mut payload);
                out.extend_from_slice(header.as_bytes());
                out.extend_from_slice(&payload);
                out.extend_from_slice(b"\r\n");
            }
            if rate <= 0.0 {
                out.extend_from_slice(b"PING\r\n");
                pings_out += 1;
            }
            c.wr.write_all(&out).await?;
            sent += n as u64;
            if rate <= 0.0 && pings_out < max_pings {
                continue;
            }
        }
        let next_due = (rate > 0.0).then(|| phase.go + Duration::from_secs_f64(sent as f64 / rate));
        let first = tokio::select! {
            r = c.next() => r?,
            _ = async { if let Some(t) = next_due { sleep_until(t).await } }, if next_due.is_some() => continue,
            _ = sleep_until(phase.win_end) => break,
        };
        let mut op = Some(Ok(first));
        for _ in 0..1024 {
            let Some(r) = op.take() else { break };
            match r? {
                (Op::Pong, _) => pings_out = pings_out.saturating_sub(1),
                (Op::Ping, _) => c.wr.write_all(b"PONG\r\n").await?,
                (Op::Err(e), _) => {
                    res.errors += 1;
                    bail!("NATS: {e}");
                }
                _ => {}
            }
            op = c.next_now();
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_msg_with_and_without_reply() {
        let b = b"MSG bench.1 1 5\r\nhello\r\nPING\r\n";
        let (op, used) = parse(b).unwrap().unwrap();
        assert_eq!(op, Op::Msg(17..22));
        assert_eq!(&b[17..22], b"hello");
        assert_eq!(parse(&b[used..]).unwrap().unwrap(), (Op::Ping, 6));
        let b = b"MSG s 9 inbox.x 2\r\nhi\r\n";
        let (op, used) = parse(b).unwrap().unwrap();
        assert_eq!(op, Op::Msg(19..21));
        assert_eq!(used, b.len());
    }

    #[test]
    fn waits_for_incomplete_input() {
        assert_eq!(parse(b"MSG bench.1 1 5\r\nhel").unwrap(), None);
        assert_eq!(parse(b"MSG bench.1 1 5\r\nhello").unwrap(), None);
        assert_eq!(parse(b"PO").unwrap(), None);
        assert_eq!(parse(b"").unwrap(), None);
    }

    #[test]
    fn other_operations() {
        assert_eq!(parse(b"+OK\r\n").unwrap().unwrap(), (Op::Other, 5));
        assert_eq!(parse(b"INFO {\"a\":1}\r\n").unwrap().unwrap().0, Op::Other);
        assert_eq!(parse(b"PONG\r\n").unwrap().unwrap(), (Op::Pong, 6));
        let (op, _) = parse(b"-ERR 'Slow Consumer'\r\n").unwrap().unwrap();
        assert!(matches!(op, Op::Err(ref s) if s.contains("Slow Consumer")));
    }

    #[test]
    fn refuses_hostile_input() {
        assert!(parse(b"MSG a 1 99999999999\r\n").is_err());
        assert!(parse(b"MSG a\r\n").is_err());
        assert!(parse(b"MSG a 1 2\r\nhiXX").is_err());
        assert!(parse(b"BOGUS\r\n").is_err());
        assert!(parse(&vec![b'x'; MAX_LINE + 1]).is_err());
    }
}
