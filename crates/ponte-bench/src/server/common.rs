//! What the load-generator processes share: the phase clock, the result a
//! process reports on stdout (`RESULT {json}`), the payload timestamp, and
//! the stdin/stdout handshake with the orchestrator (`READY n`, `go`, EOF).

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::time::Instant;

/// Line prefix of a process's result.
pub const RESULT_PREFIX: &str = "RESULT ";
/// Line prefix of a process that is connected and waiting.
pub const READY_PREFIX: &str = "READY ";

/// Wall-clock nanoseconds since the Unix epoch: the timestamp written into
/// payloads (all processes run on one host and share the clock).
#[must_use]
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes the send timestamp into the first 8 bytes of `body`.
pub fn stamp(body: &mut [u8]) {
    if let Some(head) = body.get_mut(..8) {
        head.copy_from_slice(&now_ns().to_le_bytes());
    }
}

/// Reads the send timestamp from a payload (`None` if shorter than 8 bytes).
#[must_use]
pub fn read_stamp(body: &[u8]) -> Option<u64> {
    let head: [u8; 8] = body.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// The timing of one measured phase, from the moment the process got `go`.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// When sending starts (pacing origin).
    pub go: Instant,
    /// Wall clock at `go`: older payloads (left over from a previous phase)
    /// are not counted.
    pub go_ns: u64,
    /// Start of the counted window (after the warm-up).
    pub win_start: Instant,
    /// End of the window: everything stops.
    pub win_end: Instant,
}

impl Phase {
    /// A phase starting now.
    #[must_use]
    pub fn start(warmup: Duration, duration: Duration) -> Self {
        let go = Instant::now();
        Self {
            go,
            go_ns: now_ns(),
            win_start: go + warmup,
            win_end: go + warmup + duration,
        }
    }

    /// Whether `t` is inside the counted window.
    #[must_use]
    pub fn counts(&self, t: Instant) -> bool {
        t >= self.win_start && t < self.win_end
    }

    /// Length of the counted window, seconds.
    #[must_use]
    pub fn secs(&self) -> f64 {
        (self.win_end - self.win_start).as_secs_f64()
    }
}

/// What one load-generator process measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadResult {
    /// Messages received by receivers inside the window.
    pub delivered: u64,
    /// Durable acknowledgements (`SendAck`) received inside the window.
    pub acked: u64,
    /// Error answers and refused messages.
    pub errors: u64,
    /// Window length, seconds.
    pub secs: f64,
    /// One-way latencies (send → receive), microseconds, when recorded.
    pub lat_us: Vec<u32>,
    /// Send → `SendAck` (durably committed) latencies, microseconds, when
    /// recorded.
    #[serde(default)]
    pub ack_lat_us: Vec<u32>,
}

impl LoadResult {
    /// Adds another task's or process's counts.
    pub fn merge(&mut self, other: LoadResult) {
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.errors += other.errors;
        self.secs = self.secs.max(other.secs);
        self.lat_us.extend(other.lat_us);
        self.ack_lat_us.extend(other.ack_lat_us);
    }

    /// Records a message received at `now` that was stamped `sent_ns`.
    pub fn record(&mut self, phase: &Phase, now: Instant, sent_ns: Option<u64>, latency: bool) {
        let Some(sent_ns) = sent_ns else { return };
        if sent_ns < phase.go_ns || !phase.counts(now) {
            return;
        }
        self.delivered += 1;
        if latency {
            let us = now_ns().saturating_sub(sent_ns) / 1000;
            self.lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
}

/// Prints `READY n` and waits for a `go` line on stdin.
pub async fn ready_then_go(n: usize) -> anyhow::Result<()> {
    println!("{READY_PREFIX}{n}");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await.context("reading stdin")? {
            Some(l) if l.trim() == "go" => return Ok(()),
            Some(_) => continue,
            None => anyhow::bail!("stdin closed before go"),
        }
    }
}

/// Prints `READY n` and waits until stdin is closed.
pub async fn ready_then_hold(n: usize) -> anyhow::Result<()> {
    println!("{READY_PREFIX}{n}");
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while stdin.read(&mut buf).await.context("reading stdin")? > 0 {}
    Ok(())
}

/// Prints the result line.
pub fn print_result(r: &LoadResult) -> anyhow::Result<()> {
    println!("{RESULT_PREFIX}{}", serde_json::to_string(r)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stamp_round_trip() {
        let mut b = vec![0u8; 32];
        stamp(&mut b);
        let t = read_stamp(&b).unwrap();
        assert!(t > 0 && t <= now_ns());
        assert_eq!(read_stamp(&[1, 2, 3]), None);
    }

    #[test]
    fn record_counts_only_the_window_and_this_phase() {
        let p = Phase::start(Duration::from_secs(1), Duration::from_secs(2));
        let mut r = LoadResult::default();
        r.record(&p, p.go, Some(p.go_ns), true); // warm-up: not counted
        r.record(&p, p.win_start, Some(p.go_ns - 1), true); // older phase
        r.record(&p, p.win_start, Some(p.go_ns), true);
        r.record(&p, p.win_end, Some(p.go_ns), true); // past the end
        assert_eq!(r.delivered, 1);
        assert_eq!(r.lat_us.len(), 1);
        assert!((p.secs() - 2.0).abs() < 1e-9);
    }
}
