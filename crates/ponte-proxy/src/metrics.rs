//! Relay metrics: aggregate counters only, never anything per client.
//!
//! Handles for a listener or upstream are looked up once at start
//! ([`ListenerMetrics`], [`UpstreamMetrics`]), so the data path only touches
//! atomics. The registry renders the Prometheus text format for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabel {
    listener: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    upstream: String,
    server: String,
}

/// Why a connection was refused or closed early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The global connection cap was reached.
    MaxConnections,
    /// The listener's connection cap was reached.
    ListenerMaxConnections,
    /// The source address has too many open connections.
    PerSourceConnections,
    /// The source address opens connections too fast.
    PerSourceRate,
    /// No upstream server could be reached.
    UpstreamUnavailable,
}

impl Refusal {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::ListenerMaxConnections => "listener_max_connections",
            Refusal::PerSourceConnections => "per_source_connections",
            Refusal::PerSourceRate => "per_source_rate",
            Refusal::UpstreamUnavailable => "upstream_unavailable",
        }
    }
    const ALL: [Refusal; 5] = [
        Refusal::MaxConnections,
        Refusal::ListenerMaxConnections,
        Refusal::PerSourceConnections,
        Refusal::PerSourceRate,
        Refusal::UpstreamUnavailable,
    ];
}

/// How a handshake (inbound PROXY header or TLS) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// Not complete within the handshake timeout.
    Timeout,
    /// Malformed, too long, or refused by the TLS stack.
    Invalid,
    /// The peer closed or reset the connection mid-handshake.
    Closed,
}

impl HandshakeFailure {
    fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Invalid => "invalid",
            HandshakeFailure::Closed => "closed",
        }
    }
    const ALL: [HandshakeFailure; 3] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Invalid,
        HandshakeFailure::Closed,
    ];
}

/// All relay metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Instant,
    open: Family<ListenerLabel, Gauge>,
    handshaking: Family<ListenerLabel, Gauge>,
    total: Family<ListenerLabel, Counter>,
    relayed: Family<ListenerLabel, Counter>,
    bytes: Family<BytesLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    tls_failures: Family<ReasonLabel, Counter>,
    proxy_failures: Family<ReasonLabel, Counter>,
    idle_timeouts: Family<ListenerLabel, Counter>,
    healthy: Family<ServerLabel, Gauge>,
    connect_failures: Family<ServerLabel, Counter>,
    connect_seconds: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    /// Errors from `accept(2)` itself (for example out of file descriptors).
    pub accept_errors: Counter,
    /// TLS certificate reloads, by outcome.
    pub cert_reloads: Family<ResultLabel, Counter>,
    /// Stealth listeners' counters, per link label.
    pub stealth: crate::stealth::StealthMetrics,
}

/// Outcome label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// "ok" or "error".
    pub result: &'static str,
}

fn connect_histogram() -> Histogram {
    // 0.5 ms .. ~4 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 14,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every family.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("ponte_proxy"),
            started: Instant::now(),
            open: Family::default(),
            handshaking: Family::default(),
            total: Family::default(),
            relayed: Family::default(),
            bytes: Family::default(),
            refused: Family::default(),
            tls_failures: Family::default(),
            proxy_failures: Family::default(),
            idle_timeouts: Family::default(),
            healthy: Family::default(),
            connect_failures: Family::default(),
            connect_seconds: Family::new_with_constructor(connect_histogram),
            accept_errors: Counter::default(),
            cert_reloads: Family::default(),
            stealth: Default::default(),
        };
        let r = &mut m.registry;
        r.register(
            "connections_open",
            "Connections relaying now (handshakes done, upstream connected)",
            m.open.clone(),
        );
        r.register(
            "connections_handshaking",
            "Connections accepted and still in their handshakes (PROXY header, TLS, upstream connect)",
            m.handshaking.clone(),
        );
        r.register("connections", "Connections accepted", m.total.clone());
        r.register(
            "connections_relayed",
            "Connections that finished their handshakes and were relayed",
            m.relayed.clone(),
        );
        r.register(
            "bytes",
            "Bytes relayed (direction=upstream: client to server; downstream: server to client)",
            m.bytes.clone(),
        );
        r.register(
            "refused",
            "Connections refused or closed early, by reason",
            m.refused.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Failed inbound TLS handshakes, by kind",
            m.tls_failures.clone(),
        );
        r.register(
            "proxy_header_failures",
            "Missing or malformed inbound PROXY headers, by kind",
            m.proxy_failures.clone(),
        );
        r.register(
            "idle_timeouts",
            "Connections closed for inactivity",
            m.idle_timeouts.clone(),
        );
        r.register(
            "upstream_healthy",
            "1 when the upstream server passed its last check",
            m.healthy.clone(),
        );
        r.register(
            "upstream_connect_failures",
            "Failed connections to an upstream server",
            m.connect_failures.clone(),
        );
        r.register(
            "upstream_connect_seconds",
            "Time to connect to an upstream",
            m.connect_seconds.clone(),
        );
        r.register(
            "accept_errors",
            "Errors from accept(2)",
            m.accept_errors.clone(),
        );
        r.register(
            "tls_cert_reloads",
            "Certificate reloads, by result",
            m.cert_reloads.clone(),
        );
        m.stealth.register(r);
        m
    }

    /// Seconds since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Handles for one listener (creates its series at zero, so they show up).
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let l = ListenerLabel {
            listener: name.to_owned(),
        };
        let bytes = |direction| {
            self.bytes
                .get_or_create(&BytesLabel {
                    listener: name.to_owned(),
                    direction,
                })
                .clone()
        };
        let reason = |fam: &Family<ReasonLabel, Counter>, reason| {
            fam.get_or_create(&ReasonLabel {
                listener: name.to_owned(),
                reason,
            })
            .clone()
        };
        ListenerMetrics {
            open: self.open.get_or_create(&l).clone(),
            handshaking: self.handshaking.get_or_create(&l).clone(),
            total: self.total.get_or_create(&l).clone(),
            relayed: self.relayed.get_or_create(&l).clone(),
            bytes_up: bytes("upstream"),
            bytes_down: bytes("downstream"),
            refused: Refusal::ALL.map(|r| reason(&self.refused, r.as_str())),
            tls: HandshakeFailure::ALL.map(|k| reason(&self.tls_failures, k.as_str())),
            proxy: HandshakeFailure::ALL.map(|k| reason(&self.proxy_failures, k.as_str())),
            idle_timeouts: self.idle_timeouts.get_or_create(&l).clone(),
        }
    }

    /// Handles for one upstream and its servers.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            connect_seconds: self
                .connect_seconds
                .get_or_create(&UpstreamLabel {
                    upstream: name.to_owned(),
                })
                .clone(),
        }
    }

    /// Handles for one upstream server.
    pub fn server(&self, upstream: &str, server: &str) -> ServerMetrics {
        let l = ServerLabel {
            upstream: upstream.to_owned(),
            server: server.to_owned(),
        };
        ServerMetrics {
            healthy: self.healthy.get_or_create(&l).clone(),
            connect_failures: self.connect_failures.get_or_create(&l).clone(),
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Per-listener handles.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Connections relaying (handshakes done, upstream connected).
    pub open: Gauge,
    /// Connections accepted and still in their handshakes.
    pub handshaking: Gauge,
    /// Accepted connections.
    pub total: Counter,
    /// Connections that finished their handshakes and were relayed.
    pub relayed: Counter,
    /// Client to upstream bytes.
    pub bytes_up: Counter,
    /// Upstream to client bytes.
    pub bytes_down: Counter,
    refused: [Counter; 5],
    tls: [Counter; 3],
    proxy: [Counter; 3],
    /// Idle timeouts.
    pub idle_timeouts: Counter,
}

impl ListenerMetrics {
    /// Count a refusal.
    pub fn refuse(&self, r: Refusal) {
        let i = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.refused[i].inc();
    }
    /// Count a failed TLS handshake.
    pub fn tls_failed(&self, k: HandshakeFailure) {
        let i = HandshakeFailure::ALL
            .iter()
            .position(|x| *x == k)
            .unwrap_or(0);
        self.tls[i].inc();
    }
    /// Count a failed PROXY header.
    pub fn proxy_failed(&self, k: HandshakeFailure) {
        let i = HandshakeFailure::ALL
            .iter()
            .position(|x| *x == k)
            .unwrap_or(0);
        self.proxy[i].inc();
    }
}

/// Per-upstream handles.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    /// Connect latency.
    pub connect_seconds: Histogram,
}

/// Per-server handles.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    /// 1 when healthy.
    pub healthy: Gauge,
    /// Failed connects.
    pub connect_failures: Counter,
}
