//! The stealth listener: to anyone without a link's secret, the relay is the
//! cover website; a Ponte client with the secret gets through to the
//! upstream, its stream inside TLS application-data records.
//!
//! The life of one connection ([`StealthListener::accept`]):
//!
//! 1. Connect to the cover at once ([`cover`]) and, at the same time, read
//!    the first flight: at most one TLS record of 16 KiB, within the
//!    handshake timeout.
//! 2. If the bytes are a ClientHello ([`ponte_wire::stealth::hello`]) whose
//!    tag verifies under a live secret ([`secrets`]) with a time inside the
//!    window and not before the relay started (the replay cache does not
//!    survive a restart), has never been seen ([`replay`]), and the secret has not
//!    expired nor reached its connection cap: answer with the tagged server
//!    flight and hand the connection on as a [`stream::RecordStream`]; the
//!    cover connection is dropped unused.
//! 3. Anything else, at the first byte that rules the connection out (not a
//!    handshake record, a length out of range, the client closing, the
//!    deadline, the cover speaking or closing first, a bad tag): write what was read to the cover and relay both
//!    ways. The relay sends nothing of its own and logs nothing about the
//!    client; only aggregate counters move.

pub mod cover;
pub mod replay;
pub mod secrets;
pub mod site;

/// The record stream adapter, shared with the client.
pub mod stream {
    pub use ponte_wire::stealth::stream::RecordStream;
}

use crate::config::HostPort;
use ponte_wire::stealth::{hello, reply, tag};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::RngCore as _;
use replay::ReplayCache;
use secrets::{LinkGuard, Secrets};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stream::RecordStream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The default secrets file name, beside the configuration file.
pub const DEFAULT_SECRETS: &str = "secrets.toml";

/// Where probes are handed: an HTTPS site at `HOST:PORT`, or `builtin`,
/// the relay's own small site ([`site`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoverSite {
    /// An existing HTTPS site.
    Remote(HostPort),
    /// The builtin static site, with the `[acme]` certificate when there is
    /// one.
    Builtin,
}

impl From<HostPort> for CoverSite {
    fn from(h: HostPort) -> Self {
        CoverSite::Remote(h)
    }
}

impl std::str::FromStr for CoverSite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "builtin" {
            return Ok(CoverSite::Builtin);
        }
        s.parse::<HostPort>()
            .map(CoverSite::Remote)
            .map_err(|e| format!("{e} (or `builtin` for the relay's own site)"))
    }
}

impl std::fmt::Display for CoverSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoverSite::Remote(h) => h.fmt(f),
            CoverSite::Builtin => f.write_str("builtin"),
        }
    }
}

impl Serialize for CoverSite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CoverSite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[listener.stealth]`: the listener is a stealth listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StealthConfig {
    /// The HTTPS site probes are handed to (`HOST:PORT`), or `builtin`.
    pub cover: CoverSite,
    /// The name the cover answers to; share links carry it and clients send
    /// it as their TLS server name.
    pub domain: String,
    /// The secrets file; relative paths are relative to the configuration
    /// file. Absent: `secrets.toml` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<PathBuf>,
    /// The builtin cover's folder of static files; relative paths are
    /// relative to the configuration file. Absent: one plain page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<PathBuf>,
}

impl StealthConfig {
    /// The secrets file for a configuration loaded from `config_file`.
    pub fn secrets_path(&self, config_file: Option<&Path>) -> PathBuf {
        let dir = config_file
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty());
        let name = self
            .secrets
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SECRETS));
        match dir {
            Some(d) if name.is_relative() => d.join(name),
            _ => name,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabel {
    listener: String,
    label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

/// Stealth metrics: per listener and per link label, aggregate only.
#[derive(Debug, Clone, Default)]
pub struct StealthMetrics {
    link_open: Family<LinkLabel, Gauge>,
    link_total: Family<LinkLabel, Counter>,
    cover: Family<ListenerLabel, Counter>,
    replays: Family<ListenerLabel, Counter>,
    cover_unreachable: Family<ListenerLabel, Counter>,
}

impl StealthMetrics {
    /// Registers the families.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "stealth_link_connections_open",
            "Authenticated stealth connections open now, by link label",
            self.link_open.clone(),
        );
        r.register(
            "stealth_link_connections",
            "Authenticated stealth connections, by link label",
            self.link_total.clone(),
        );
        r.register(
            "stealth_cover_connections",
            "Connections handed to the cover site",
            self.cover.clone(),
        );
        r.register(
            "stealth_replays",
            "First flights refused as replays (handed to the cover)",
            self.replays.clone(),
        );
        r.register(
            "stealth_cover_unreachable",
            "Connections closed because the cover site could not be reached",
            self.cover_unreachable.clone(),
        );
    }
}

/// A stealth listener's shared state.
#[derive(Debug)]
pub struct StealthListener {
    name: String,
    cover: HostPort,
    domain: String,
    secrets: Arc<Secrets>,
    replay: ReplayCache,
    metrics: StealthMetrics,
    connect_timeout: Duration,
    /// Tags older than the relay's start are refused: the replay cache
    /// starts empty, so a flight recorded before a restart must not pass.
    not_before: u32,
}

/// A connection after the first flight.
#[derive(Debug)]
pub enum Accepted {
    /// A client with a link's secret, answered; relay it to the upstream.
    Genuine(Box<RecordStream<TcpStream>>, Connection),
    /// Anyone else: relay the client to the cover (what it sent so far is
    /// already written there).
    Cover(TcpStream, TcpStream),
    /// Nothing to relay (the cover was unreachable).
    Closed,
}

/// An authenticated connection, counted against its link while it lives.
#[derive(Debug)]
pub struct Connection {
    guard: LinkGuard,
    open: Gauge,
}

impl Connection {
    /// Completes when the link's label is revoked.
    pub fn revoked(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.guard.link().revoked().clone().cancelled_owned()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

enum Decision {
    Check(usize),
    Cover,
}

/// Completes when the connected cover has bytes or its end of file to read;
/// never while it is not connected.
async fn cover_readable(cover: &Option<std::io::Result<TcpStream>>) {
    match cover {
        Some(Ok(c)) => {
            // A peek completes only on a byte, the end of file or an error
            // (readiness alone can be spurious).
            let mut byte = [0u8; 1];
            let _ = c.peek(&mut byte).await;
        }
        _ => std::future::pending().await,
    }
}

impl StealthListener {
    /// A listener's stealth state; `secrets` is shared by listeners that
    /// name the same file; `cover` is where probes go (the builtin site's
    /// loopback address for `cover = "builtin"`).
    pub fn new(
        name: &str,
        cfg: &StealthConfig,
        cover: HostPort,
        secrets: Arc<Secrets>,
        metrics: StealthMetrics,
        connect_timeout: Duration,
    ) -> Self {
        StealthListener {
            name: name.to_owned(),
            cover,
            domain: cfg.domain.clone(),
            secrets,
            replay: ReplayCache::new(),
            metrics,
            connect_timeout,
            not_before: secrets::now_unix() as u32,
        }
    }

    /// The name the cover answers to.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The secrets.
    pub fn secrets(&self) -> &Arc<Secrets> {
        &self.secrets
    }

    /// Per link label: open connections now and authenticated connections
    /// since start (aggregate counts for the status page).
    pub fn links(&self) -> Vec<(String, u32, u64)> {
        self.secrets
            .current()
            .links()
            .map(|l| {
                let key = LinkLabel {
                    listener: self.name.clone(),
                    label: l.label.clone(),
                };
                let total = self.metrics.link_total.get_or_create(&key).get();
                (l.label.clone(), l.open(), total)
            })
            .collect()
    }

    fn listener_label(&self) -> ListenerLabel {
        ListenerLabel {
            listener: self.name.clone(),
        }
    }

    /// Reads the first flight and decides (see the module docs). `early`
    /// holds bytes already read (after an inbound PROXY header).
    pub async fn accept(
        &self,
        mut client: TcpStream,
        early: Vec<u8>,
        deadline: Instant,
    ) -> Accepted {
        let cover_connect = cover::connect(&self.cover, self.connect_timeout);
        tokio::pin!(cover_connect);
        let mut cover: Option<std::io::Result<TcpStream>> = None;
        let mut buf = early;
        let cap = hello::RECORD_HEADER_LEN + hello::MAX_HELLO_RECORD;
        // Each round reads at least one byte, or ends: the record is capped.
        let decision = loop {
            match hello::peek(&buf) {
                hello::Peek::NotHello => break Decision::Cover,
                hello::Peek::Record(n) if buf.len() >= n => break Decision::Check(n),
                hello::Peek::Record(n) | hello::Peek::NeedMore(n) => {
                    let want = n.min(cap).saturating_sub(buf.len()).max(1);
                    let start = buf.len();
                    buf.resize(start + want, 0);
                    tokio::select! {
                        r = client.read(&mut buf[start..]) => {
                            let got = r.unwrap_or(0);
                            buf.truncate(start + got);
                            if got == 0 {
                                break Decision::Cover;
                            }
                        }
                        c = &mut cover_connect, if cover.is_none() => {
                            buf.truncate(start);
                            cover = Some(c);
                        }
                        _ = tokio::time::sleep_until(deadline) => {
                            buf.truncate(start);
                            break Decision::Cover;
                        }
                        // The cover spoke first or gave up (its own timeout):
                        // from here on the client talks to the cover.
                        _ = cover_readable(&cover) => {
                            buf.truncate(start);
                            break Decision::Cover;
                        }
                    }
                }
            }
        };
        if let Decision::Check(n) = decision {
            if let Some(ok) = self.authenticate(&buf[..n]) {
                let (flight, guard) = ok;
                let rest = buf.split_off(n);
                if client.write_all(&flight).await.is_err() {
                    return Accepted::Closed;
                }
                let label = LinkLabel {
                    listener: self.name.clone(),
                    label: guard.link().label.clone(),
                };
                self.metrics.link_total.get_or_create(&label).inc();
                let open = self.metrics.link_open.get_or_create(&label).clone();
                open.inc();
                let stream = RecordStream::new(client, rest);
                return Accepted::Genuine(Box::new(stream), Connection { guard, open });
            }
        }
        self.metrics
            .cover
            .get_or_create(&self.listener_label())
            .inc();
        let connected = match cover {
            Some(c) => c,
            None => cover_connect.await,
        };
        match connected {
            Ok(mut c) => {
                if cover::replay_prefix(&mut c, &buf).await.is_err() {
                    return Accepted::Closed;
                }
                Accepted::Cover(client, c)
            }
            Err(_) => {
                self.metrics
                    .cover_unreachable
                    .get_or_create(&self.listener_label())
                    .inc();
                tracing::debug!(listener = %self.name, "cover site unreachable");
                Accepted::Closed
            }
        }
    }

    /// Checks a complete first record; on success, the reply to send and the
    /// link's guard.
    fn authenticate(&self, record: &[u8]) -> Option<(Vec<u8>, LinkGuard)> {
        let h = hello::parse(record).ok()?;
        let set = self.secrets.current();
        if set.is_empty() {
            return None;
        }
        let now = secrets::now_unix();
        let v = tag::verify(&h, set.secrets(), now).ok()?;
        if (v.time.wrapping_sub(self.not_before) as i32) < 0 {
            return None;
        }
        if !self.replay.insert(&v.replay_key, v.time) {
            self.metrics
                .replays
                .get_or_create(&self.listener_label())
                .inc();
            return None;
        }
        let guard = set.admit(v.secret, now)?;
        let secret = set.secret(v.secret)?;
        let sid: [u8; 32] = h.session_id.try_into().ok()?;
        let mut rng = rand::thread_rng();
        let flight = reply::build(&reply::TLS13_SERVER, &sid, secret, &mut |b: &mut [u8]| {
            rng.fill_bytes(b)
        });
        Some((flight, guard))
    }
}
